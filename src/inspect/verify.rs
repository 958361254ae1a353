//! # verify and gc: every blob re-hashed, every document checked; garbage removed under the lock

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use anyhow::{Context, Result};
use oci_spec::image::{Descriptor, Digest, ImageConfiguration, ImageManifest};
use serde::Serialize;

use crate::layer::compress::Compression;
use crate::oci::image::entry_name;
use crate::oci::store::{ANNOTATION_RECORD, Store};
use crate::support::error::Damaged;
use crate::support::fsx::TMP_PREFIX;
use crate::support::hash::hash_reader;

// ------------------------------------------------------------------------------------- verify

#[derive(Debug, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub struct VerifyReport {
    pub blobs: usize,
    pub bytes: u64,
    pub images: usize,
    pub layers_decompressed: usize,
    pub temp_files: usize,
    pub unreferenced_blobs: usize,
    pub problems: Vec<String>,
}

/// Re-hashes every blob, checks every manifest, config and diff_id.
pub fn verify(root: &Path) -> Result<VerifyReport> {
    let store = Store::open(root)?;
    let mut rep = VerifyReport::default();
    let mut present = BTreeSet::new();
    let blobs = store.blob_dir();
    for e in std::fs::read_dir(&blobs).with_context(|| format!("reading {blobs:?}"))? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(TMP_PREFIX) {
            rep.temp_files += 1;
            continue;
        }
        let (d, n) = hash_reader(std::io::BufReader::new(crate::support::fsx::open(
            &e.path(),
        )?))?;
        rep.blobs += 1;
        rep.bytes += n;
        if d.digest() != name {
            rep.problems
                .push(format!("blob {name} has digest {d} (corrupt)"));
        }
        present.insert(name);
    }
    let index = match store.read_index() {
        Ok(i) => i,
        Err(e) => {
            rep.problems.push(format!("index.json: {e:#}"));
            return finish(rep);
        }
    };
    let mut checked_layers: HashMap<String, Digest> = HashMap::new();
    let check_blob = |rep: &mut VerifyReport, what: &str, d: &Descriptor| -> bool {
        let p = store.blob_path(d.digest());
        match std::fs::metadata(&p) {
            Err(_) => {
                rep.problems
                    .push(format!("{what}: blob {} is missing", d.digest()));
                false
            }
            Ok(m) if m.len() != d.size() => {
                rep.problems.push(format!(
                    "{what}: blob {} is {} bytes, descriptor says {}",
                    d.digest(),
                    m.len(),
                    d.size()
                ));
                false
            }
            Ok(_) => true,
        }
    };
    if let Some(r) = index
        .annotations()
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_RECORD))
    {
        let ok = r
            .parse::<Digest>()
            .ok()
            .is_some_and(|d| present.contains(d.digest()));
        if !ok {
            rep.problems
                .push(format!("the store record {r} is missing"));
        }
    }
    for d in index.manifests() {
        let name = entry_name(d);
        rep.images += 1;
        if !check_blob(&mut rep, &name, d) {
            continue;
        }
        let m: ImageManifest = match store.read_manifest(d.digest()) {
            Ok(m) => m,
            Err(e) => {
                rep.problems.push(format!("{name}: {e:#}"));
                continue;
            }
        };
        if !check_blob(&mut rep, &format!("{name} config"), m.config()) {
            continue;
        }
        let cfg: ImageConfiguration = match store
            .read_blob(m.config().digest())
            .and_then(|b| Ok(serde_json::from_slice(&b)?))
        {
            Ok(c) => c,
            Err(e) => {
                rep.problems.push(format!("{name} config: {e:#}"));
                continue;
            }
        };
        if cfg.rootfs().diff_ids().len() != m.layers().len() {
            rep.problems.push(format!(
                "{name}: {} layers but {} diff_ids",
                m.layers().len(),
                cfg.rootfs().diff_ids().len()
            ));
            continue;
        }
        for (l, want) in m.layers().iter().zip(cfg.rootfs().diff_ids()) {
            if !check_blob(&mut rep, &format!("{name} layer"), l) {
                continue;
            }
            let key = l.digest().to_string();
            let got = match checked_layers.get(&key) {
                Some(d) => d.clone(),
                None => {
                    let f = std::io::BufReader::new(store.open_blob(l.digest())?);
                    let d = Compression::reader_for(l.media_type(), f)
                        .and_then(hash_reader)
                        .map(|(d, _)| d)
                        .with_context(|| format!("decompressing layer {key}"));
                    match d {
                        Ok(d) => {
                            rep.layers_decompressed += 1;
                            checked_layers.insert(key.clone(), d.clone());
                            d
                        }
                        Err(e) => {
                            rep.problems.push(format!("{name}: layer {key}: {e:#}"));
                            continue;
                        }
                    }
                }
            };
            if got.to_string() != *want {
                rep.problems.push(format!(
                    "{name}: layer {key} has diff_id {got}, config says {want}"
                ));
            }
        }
    }
    if let Ok(reach) = store.reachable(&index) {
        rep.unreferenced_blobs = present.iter().filter(|p| !reach.contains(*p)).count();
    }
    finish(rep)
}

fn finish(rep: VerifyReport) -> Result<VerifyReport> {
    Ok(rep)
}

/// Turns a report with problems into the error that sets the exit code.
pub fn damaged(rep: &VerifyReport) -> Result<()> {
    if rep.problems.is_empty() {
        Ok(())
    } else {
        Err(Damaged(rep.problems.clone()).into())
    }
}

// ----------------------------------------------------------------------------------------- gc

#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct GcReport {
    pub removed_blobs: usize,
    pub removed_bytes: u64,
    pub removed_temp_files: u64,
    pub kept_blobs: usize,
    pub dry_run: bool,
}

/// Removes blobs the index does not reach, and temp files of interrupted writes.
pub fn gc(root: &Path, dry_run: bool) -> Result<GcReport> {
    let store = Store::open(root)?;
    let _lock = store.lock(|| {
        eprintln!(
            "waiting for another strata process to finish with {}",
            root.display()
        )
    })?;
    let index = store.read_index()?;
    let reach = store.reachable(&index)?;
    let mut rep = GcReport {
        removed_blobs: 0,
        removed_bytes: 0,
        removed_temp_files: 0,
        kept_blobs: 0,
        dry_run,
    };
    for (name, size) in store.blob_names()? {
        if reach.contains(&name) {
            rep.kept_blobs += 1;
            continue;
        }
        rep.removed_blobs += 1;
        rep.removed_bytes += size;
        if !dry_run {
            crate::support::fsx::remove_file(&store.blob_dir().join(&name))?;
        }
    }
    if !dry_run {
        rep.removed_temp_files = store.clean_temp()?;
    }
    Ok(rep)
}
