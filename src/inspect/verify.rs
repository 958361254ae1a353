//! # verify, repair and gc: every blob re-hashed, every document checked; damage restored from
//! the cache and garbage removed under the lock

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use anyhow::{Context, Result};
use oci_spec::image::{ANNOTATION_CREATED, Descriptor, Digest, ImageConfiguration, ImageManifest};
use serde::Serialize;

use crate::cache::Cache;
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
    /// Files in `blobs/sha256` no image uses that are damaged (other bytes than their name says,
    /// not a file): harmless, `gc` removes them.
    pub unreferenced_damaged: usize,
    pub problems: Vec<String>,
    /// `--repair`: the blobs restored (from the cache, or rebuilt by the recipes given).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub repaired: Vec<String>,
}

/// Re-hashes every blob, checks `oci-layout`, every manifest, config (its `created` too) and
/// diff_id. Damage is reported as problems (the caller turns them into exit 4), each naming the
/// file or blob.
pub fn verify(root: &Path) -> Result<VerifyReport> {
    let store = Store::open(root)?;
    let mut rep = VerifyReport::default();
    if let Some(p) = store.layout_problem() {
        rep.problems.push(p);
    }
    let (present, suspects) = hash_blobs(&store, &mut rep);
    let index = match store.read_index() {
        Ok(i) => i,
        Err(e) => {
            rep.problems.push(format!("{e:#}"));
            rep.problems.extend(suspects.into_values());
            return finish(rep);
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
        } else if let Err(e) = store.read_record(&index) {
            rep.problems.push(format!("the store record: {e:#}"));
        }
    }
    let mut checked_layers: HashMap<String, Digest> = HashMap::new();
    for d in index.manifests() {
        rep.images += 1;
        check_image(&store, &mut rep, d, &mut checked_layers);
    }
    // A damaged blob no image uses is a note (gc removes it); one an image uses, or any when
    // what is used cannot be known, a problem.
    let reach = store.reachable(&index).ok();
    if let Some(reach) = &reach {
        rep.unreferenced_blobs = present.iter().filter(|p| !reach.contains(*p)).count();
    }
    for (name, problem) in suspects {
        if reach.as_ref().is_some_and(|r| !r.contains(&name)) {
            rep.unreferenced_damaged += 1;
        } else {
            rep.problems.push(problem);
        }
    }
    finish(rep)
}

/// Hashes every file of `blobs/sha256`; returns the names present, and the damaged entries (a
/// directory or other non-file, bytes that do not hash to the name, unreadable) with the problem
/// naming each path. A missing or unreadable blob directory is a problem at once.
fn hash_blobs(
    store: &Store,
    rep: &mut VerifyReport,
) -> (BTreeSet<String>, BTreeMap<String, String>) {
    let mut present = BTreeSet::new();
    let mut suspects = BTreeMap::new();
    let blobs = store.blob_dir();
    let rd = match std::fs::read_dir(&blobs) {
        Ok(rd) => rd,
        Err(e) => {
            rep.problems
                .push(format!("{}: cannot be read ({e})", blobs.display()));
            return (present, suspects);
        }
    };
    for e in rd {
        let e = match e {
            Ok(e) => e,
            Err(err) => {
                rep.problems
                    .push(format!("{}: cannot be listed ({err})", blobs.display()));
                break;
            }
        };
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(TMP_PREFIX) {
            rep.temp_files += 1;
            continue;
        }
        let path = e.path();
        if !std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file()) {
            suspects.insert(name, format!("{} is not a regular file", path.display()));
            continue;
        }
        let hashed = crate::support::fsx::open(&path)
            .and_then(|f| Ok(hash_reader(std::io::BufReader::with_capacity(1 << 20, f))?));
        match hashed {
            Ok((d, n)) => {
                rep.blobs += 1;
                rep.bytes += n;
                if d.digest() != name {
                    suspects.insert(
                        name.clone(),
                        format!("blob {name} has digest {d} (corrupt)"),
                    );
                }
                present.insert(name);
            }
            Err(err) => {
                suspects.insert(
                    name,
                    format!("{}: cannot be read ({err:#})", path.display()),
                );
            }
        }
    }
    (present, suspects)
}

/// The blob a descriptor names is a regular file of its size; else a problem.
fn check_blob(store: &Store, rep: &mut VerifyReport, what: &str, d: &Descriptor) -> bool {
    let p = store.blob_path(d.digest());
    match std::fs::symlink_metadata(&p) {
        Err(_) => {
            rep.problems
                .push(format!("{what}: blob {} is missing", d.digest()));
            false
        }
        Ok(m) if !m.is_file() => {
            rep.problems.push(format!(
                "{what}: blob {} ({}) is not a regular file",
                d.digest(),
                p.display()
            ));
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
}

/// An image: its manifest, config (and `created`), and each layer's diff_id.
fn check_image(
    store: &Store,
    rep: &mut VerifyReport,
    d: &Descriptor,
    checked_layers: &mut HashMap<String, Digest>,
) {
    let name = entry_name(d);
    if !check_blob(store, rep, &name, d) {
        return;
    }
    let m: ImageManifest = match store.read_manifest(d.digest()) {
        Ok(m) => m,
        Err(e) => {
            rep.problems.push(format!("{name}: {e:#}"));
            return;
        }
    };
    if !check_blob(store, rep, &format!("{name} config"), m.config()) {
        return;
    }
    let cfg: ImageConfiguration = match store
        .read_blob_checked(m.config().digest())
        .and_then(|b| Ok(serde_json::from_slice(&b)?))
    {
        Ok(c) => c,
        Err(e) => {
            rep.problems.push(format!("{name} config: {e:#}"));
            return;
        }
    };
    let created = [
        ("config", cfg.created().clone()),
        (
            "manifest annotation",
            m.annotations()
                .as_ref()
                .and_then(|a| a.get(ANNOTATION_CREATED).cloned()),
        ),
    ];
    for (what, c) in created {
        if let Some(c) = c
            && chrono::DateTime::parse_from_rfc3339(&c).is_err()
        {
            rep.problems.push(format!(
                "{name}: the {what} `created` {c:?} is not an RFC 3339 time (OCI tools refuse it)"
            ));
        }
    }
    if cfg.rootfs().diff_ids().len() != m.layers().len() {
        rep.problems.push(format!(
            "{name}: {} layers but {} diff_ids",
            m.layers().len(),
            cfg.rootfs().diff_ids().len()
        ));
        return;
    }
    for (l, want) in m.layers().iter().zip(cfg.rootfs().diff_ids()) {
        if !check_blob(store, rep, &format!("{name} layer"), l) {
            continue;
        }
        let key = l.digest().to_string();
        let got = match checked_layers.get(&key) {
            Some(d) => d.clone(),
            None => {
                let d = store
                    .open_blob(l.digest())
                    .and_then(|f| {
                        Ok(Compression::reader_for(
                            l.media_type(),
                            std::io::BufReader::new(f),
                        )?)
                    })
                    .and_then(|r| Ok(hash_reader(r)?))
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

// ------------------------------------------------------------------------------------- repair

/// `verify --repair`, its first step: under the store's lock, `oci-layout` rewritten if it is
/// wrong, and every blob the index reaches that is missing, not a file, of the wrong size or
/// the wrong bytes copied back from the cache when the cache holds it intact (layers, configs,
/// manifests and records are all kept there). Returns what it restored; what it could not is
/// left for the caller's rebuild or final `verify`.
pub fn repair(root: &Path, cache: &Cache) -> Result<Vec<String>> {
    let store = Store::open(root)?;
    let _lock = store.lock(|| {
        eprintln!(
            "waiting for another strata process to finish with {}",
            root.display()
        )
    })?;
    let mut repaired = Vec::new();
    if store.layout_problem().is_some() {
        store.ensure_layout()?;
        repaired.push(crate::oci::store::OCI_LAYOUT.to_string());
    }
    crate::support::fsx::create_dir_all(&store.blob_dir())?;
    let index = store.read_index()?;
    let mut fix = |digest: &Digest, size: Option<u64>| -> Result<bool> {
        if blob_intact(&store, digest, size) {
            return Ok(true);
        }
        let src = cache.blob_dir().join(digest.digest());
        let size_ok = size.is_none_or(|n| std::fs::metadata(&src).is_ok_and(|m| m.len() == n));
        if !(size_ok && cache.blob_is(&src, digest)?) {
            return Ok(false);
        }
        let n = std::fs::metadata(&src)?.len();
        let info = crate::oci::store::BlobInfo {
            digest: digest.clone(),
            size: n,
        };
        store.copy_blob_in(&src, &info)?;
        repaired.push(digest.to_string());
        Ok(true)
    };
    if let Some(r) = index
        .annotations()
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_RECORD))
        && let Ok(d) = r.parse::<Digest>()
        && fix(&d, None)?
        && let Ok(record) = store.read_record(&index)
    {
        for img in &record.images {
            for d in &img.disk_layers {
                fix(d, record.layer(d).map(|l| l.size))?;
            }
        }
    }
    for d in index.manifests() {
        if !fix(d.digest(), Some(d.size()))? {
            continue;
        }
        let Ok(m) = store.read_manifest(d.digest()) else {
            continue;
        };
        fix(m.config().digest(), Some(m.config().size()))?;
        for l in m.layers() {
            fix(l.digest(), Some(l.size()))?;
        }
    }
    Ok(repaired)
}

/// The blob is a regular file of this size (when known) whose bytes have its digest.
fn blob_intact(store: &Store, digest: &Digest, size: Option<u64>) -> bool {
    let p = store.blob_path(digest);
    let Ok(m) = std::fs::symlink_metadata(&p) else {
        return false;
    };
    if !m.is_file() || size.is_some_and(|n| n != m.len()) {
        return false;
    }
    crate::support::fsx::open(&p)
        .ok()
        .and_then(|f| hash_reader(std::io::BufReader::with_capacity(1 << 20, f)).ok())
        .is_some_and(|(d, _)| d == *digest)
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
            let p = store.blob_dir().join(&name);
            if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
                std::fs::remove_dir_all(&p).with_context(|| format!("removing {p:?}"))?;
            } else {
                crate::support::fsx::remove_file(&p)?;
            }
        }
    }
    rep.removed_temp_files = if dry_run {
        store.temp_files().len() as u64
    } else {
        store.clean_temp()?
    };
    Ok(rep)
}
