//! # Producing layers: entries → deterministic tar → compressor → blob, in one streaming pass
//!
//! A layer whose key has a record in the cache, and whose cached blob still has its digest, is
//! not rebuilt. Others are written as tar → diff_id hash ∥ compressor → blob hash →
//! `cache/blobs`, every stage at once ([`pipeline`]), and their facts recorded under the key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use anyhow::{Context, Result, bail};

use crate::cache::Cache;
use crate::layer::compress::{self, Compression};
use crate::layer::{self, Entry, pipeline};
use crate::oci::record::LayerFacts;
use crate::oci::store::{ANNOTATION_IMAGE_NAME, BlobWriter, Store};
use crate::source::base::{self, BaseInfo};
use crate::support::failpoint;
use crate::support::hash::CountingReader;
use crate::support::progress::Progress;
use crate::support::units::human;
use oci_spec::image::ANNOTATION_REF_NAME;

use super::plan::{Plan, Producer};

/// Layers built at once (each also compresses on several threads).
const BUILDERS: usize = 2;

/// A layer's facts, its blob, and whether this build built it.
pub(crate) type Ensured = (LayerFacts, PathBuf, bool);

/// Every layer of `needed`, built or found in the cache, in `needed`'s order.
///
/// The layers not in the cache are built [`BUILDERS`] at a time, each on whichever builder is
/// free. One builder at a time gathers its layer's inputs ([`Builders::inputs`]), so mmdebstrap
/// never runs twice at once (the JDK and disk layers share its cache directories) and downloads
/// come one after the other, as in a sequential build; the writing of layers (tar, hashes,
/// compression) overlaps. After a failure no other layer is started, and the error of the first
/// failed layer in `needed`'s order is returned.
pub(crate) fn ensure_layers(
    plan: &Plan,
    needed: &[usize],
    cache: &Cache,
    progress: &Progress,
) -> Result<Vec<Ensured>> {
    let mut found: Vec<Option<Ensured>> = vec![None; needed.len()];
    let mut todo = Vec::new();
    for (pos, &idx) in needed.iter().enumerate() {
        let pl = &plan.layers[idx];
        if let Producer::Imported(rec, blob) = &pl.producer {
            found[pos] = Some((rec.clone(), blob.clone(), false));
        } else if let Some((rec, blob)) = cached_layer(cache, &pl.key, &pl.name, progress)? {
            found[pos] = Some((rec, blob, false));
        } else {
            todo.push(pos);
        }
    }
    let b = Builders {
        inputs: Mutex::new(()),
        failed: AtomicBool::new(false),
        next: AtomicUsize::new(0),
    };
    let made: Mutex<Vec<Option<Result<Built>>>> =
        Mutex::new((0..needed.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..BUILDERS.min(todo.len()) {
            s.spawn(|| {
                while let Some(&pos) = todo.get(b.next.fetch_add(1, Ordering::SeqCst)) {
                    let r = build_layer(plan, needed[pos], cache, progress, &b);
                    let r = match r {
                        Ok(None) => return,
                        Ok(Some(built)) => Ok(built),
                        Err(e) => {
                            b.failed.store(true, Ordering::SeqCst);
                            Err(e)
                        }
                    };
                    made.lock().expect("no builder panicked")[pos] = Some(r);
                }
            });
        }
    });
    let made = made.into_inner().expect("no builder panicked");
    for (slot, r) in found.iter_mut().zip(made) {
        match r {
            Some(Ok((rec, blob))) => *slot = Some((rec, blob, true)),
            Some(Err(e)) => return Err(e),
            None => {}
        }
    }
    found
        .into_iter()
        .map(|f| f.context("internal: a layer was neither found nor built"))
        .collect()
}

/// What the builders of [`ensure_layers`] share.
struct Builders {
    /// Held while a layer's inputs are gathered (mmdebstrap, downloads, tarballs read).
    inputs: Mutex<()>,
    /// A layer failed: no other starts.
    failed: AtomicBool,
    /// The next layer to take.
    next: AtomicUsize,
}

/// A layer's facts and its blob.
type Built = (LayerFacts, PathBuf);

/// Builds one layer into the cache; `None` when it was not started because another one failed.
fn build_layer(
    plan: &Plan,
    idx: usize,
    cache: &Cache,
    progress: &Progress,
    b: &Builders,
) -> Result<Option<Built>> {
    let pl = &plan.layers[idx];
    let rec_path = cache.layer_record_path(&pl.key);
    let (entries, packages) = {
        let _turn = b.inputs.lock().unwrap_or_else(PoisonError::into_inner);
        if b.failed.load(Ordering::SeqCst) {
            return Ok(None);
        }
        // Marked failed before the next builder takes its turn.
        entries_of(plan, &pl.producer, cache, progress)
            .inspect_err(|_| b.failed.store(true, Ordering::SeqCst))?
    };
    let entries = layer::normalize(entries)?;
    let rec = write_layer(plan, &pl.name, &entries, packages, cache, progress)?;
    if plan.needs_rootfs(idx)
        && let Some(p) = &plan.base
    {
        p.check_unchanged(cache)?;
    }
    cache.write_json(&rec_path, &rec)?;
    let path = cache.blob_dir().join(rec.digest.digest());
    Ok(Some((rec, path)))
}

/// The layer the cache holds under `key`, if its record is there and its blob intact. Checked at
/// each reuse (a `stat` when the memo knows the file unchanged): a corrupt cached blob is
/// removed (then rebuilt or fetched), never copied into a store.
pub(crate) fn cached_layer(
    cache: &Cache,
    key: &str,
    name: &str,
    progress: &Progress,
) -> Result<Option<(LayerFacts, PathBuf)>> {
    let Some(rec) = cache.read_json::<LayerFacts>(&cache.layer_record_path(key)) else {
        return Ok(None);
    };
    let blob = cache.blob_dir().join(rec.digest.digest());
    if !std::fs::metadata(&blob).is_ok_and(|m| m.len() == rec.size) {
        return Ok(None);
    }
    if cache.blob_is(&blob, &rec.digest)? {
        return Ok(Some((rec, blob)));
    }
    progress.say(format!(
        "layer {name}: the cached blob {} is corrupt: rebuilding it",
        rec.digest
    ));
    crate::support::fsx::remove_file(&blob)?;
    Ok(None)
}

/// The entries of a layer (and the Debian packages it installs).
fn entries_of(
    plan: &Plan,
    producer: &Producer,
    cache: &Cache,
    progress: &Progress,
) -> Result<(Vec<Entry>, base::Packages)> {
    let recipe = plan.recipe;
    let epoch = recipe.epoch;
    Ok(match producer {
        Producer::Rootfs => {
            let p = plan.base.as_ref().context("the base was not prepared")?;
            (
                p.rootfs_entries(epoch).with_context(|| {
                    format!("reading the root filesystem {}", p.rootfs.display())
                })?,
                p.info.packages.clone(),
            )
        }
        Producer::Jdk(name) => {
            let jdk = &recipe.jdks[name];
            base::jdk_entries(
                cache,
                jdk,
                &recipe.base,
                plan.base.as_ref(),
                epoch,
                progress,
            )?
        }
        Producer::Entries(e) => (e.clone(), vec![]),
        Producer::Disk(jdk) => {
            let p = plan.base.as_ref().context("the base was not prepared")?;
            let disk = recipe.disk.as_ref().context("no [disk] in the recipe")?;
            let jdk = jdk.as_ref().map(|j| &recipe.jdks[j]);
            base::disk_entries(cache, &recipe.base, jdk, &disk.packages, p, epoch, progress)?
        }
        Producer::Dist {
            version,
            origin,
            sha512,
        } => {
            let what = format!("Hadoop {version} release tarball");
            let raw =
                crate::source::fetch::tarball_entries(cache, origin, sha512, progress, &what)?;
            (
                base::reroot(raw, 1, &format!("opt/hadoop-{version}"))?,
                vec![],
            )
        }
        Producer::Imported(..) => unreachable!("reused as they are"),
        Producer::Pending(why, _) => bail!("internal: a layer was left pending ({why})"),
    })
}

/// Writes entries as a layer blob into the cache: tar → diff_id → compressor → blob digest.
fn write_layer(
    plan: &Plan,
    name: &str,
    entries: &[Entry],
    packages: Vec<(String, String)>,
    cache: &Cache,
    progress: &Progress,
) -> Result<LayerFacts> {
    let recipe = plan.recipe;
    let total: u64 = entries.iter().map(|e| e.size()).sum();
    let task = progress.task(format!("layer {name}"), Some(total));
    let mut blob = BlobWriter::new(&cache.blob_dir())?;
    let packed = pipeline::pack(
        recipe.compression,
        compress::worker_count(),
        &mut blob,
        &|n| task.inc(n),
        |out| {
            let stats = layer::write_tar(entries, recipe.epoch, out)?;
            failpoint::hit("layer-write");
            Ok(stats)
        },
    )?;
    let (diff_id, uncompressed, stats) = (packed.diff_id, packed.uncompressed, packed.made);
    let info = blob.commit()?;
    cache.remember(
        &cache.blob_dir().join(info.digest.digest()),
        info.digest.digest(),
    )?;
    task.finish(format!(
        "{} entries, {} → {}",
        stats.entries,
        human(uncompressed),
        human(info.size)
    ));
    Ok(LayerFacts {
        digest: info.digest,
        diff_id,
        size: info.size,
        uncompressed_size: uncompressed,
        media_type: recipe.compression.media_type(),
        entries: stats.entries,
        file_bytes: stats.file_bytes,
        packages,
        private_key: stats.private_key,
    })
}

/// Reads the layers of an OCI image layout used as a base.
pub(crate) fn import_oci_base(path: &Path, reference: &str) -> Result<Vec<(LayerFacts, PathBuf)>> {
    let store = Store::open(path).with_context(|| format!("OCI base {}", path.display()))?;
    let index = store.read_index()?;
    let entry = find_base_entry(&index, reference)
        .with_context(|| format!("OCI base {}", path.display()))?;
    let manifest = store.read_manifest(entry.digest())?;
    let config: oci_spec::image::ImageConfiguration =
        serde_json::from_slice(&store.read_blob_checked(manifest.config().digest())?)
            .with_context(|| format!("OCI base {}: parsing its config", path.display()))?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != manifest.layers().len() {
        bail!(
            "OCI base {}: config lists {} diff_ids for {} layers",
            path.display(),
            diff_ids.len(),
            manifest.layers().len()
        );
    }
    let mut out = Vec::new();
    for (l, diff) in manifest.layers().iter().zip(diff_ids) {
        let blob = store.blob_path(l.digest());
        if !store.has_blob(l.digest(), l.size()) {
            bail!(
                "OCI base {}: layer blob {} is missing or has the wrong size",
                path.display(),
                l.digest()
            );
        }
        out.push((
            LayerFacts {
                digest: l.digest().clone(),
                diff_id: diff
                    .parse()
                    .with_context(|| format!("OCI base {}: diff_id {diff:?}", path.display()))?,
                size: l.size(),
                uncompressed_size: 0,
                media_type: l.media_type().clone(),
                entries: 0,
                file_bytes: 0,
                packages: vec![],
                private_key: false,
            },
            blob,
        ));
    }
    Ok(out)
}

/// The entry of an OCI base's index named `reference`: by its `ref.name` or strata's full name,
/// else by the tag after the last `:` of either when only one entry has it (`base` for
/// `tiny:base`, as strata named its images before the ref names became `recipe:tag`).
fn find_base_entry<'a>(
    index: &'a oci_spec::image::ImageIndex,
    reference: &str,
) -> Result<&'a oci_spec::image::Descriptor> {
    let names = |m: &oci_spec::image::Descriptor| -> Vec<String> {
        let a = m.annotations().clone().unwrap_or_default();
        [ANNOTATION_REF_NAME, ANNOTATION_IMAGE_NAME]
            .iter()
            .filter_map(|k| a.get(*k).cloned())
            .collect()
    };
    let exact: Vec<_> = index
        .manifests()
        .iter()
        .filter(|m| names(m).iter().any(|n| n == reference))
        .collect();
    if let [one] = exact.as_slice() {
        return Ok(one);
    }
    let by_tag: Vec<_> = index
        .manifests()
        .iter()
        .filter(|m| {
            names(m)
                .iter()
                .any(|n| n.rsplit_once(':').is_some_and(|(_, t)| t == reference))
        })
        .collect();
    match (exact.len(), by_tag.as_slice()) {
        (0, [one]) => Ok(one),
        (0, []) => {
            Err(crate::support::error::BadInput(format!("no image named {reference:?}")).into())
        }
        _ => Err(crate::support::error::BadInput(format!(
            "{reference:?} names several images: give the full name (recipe:tag)"
        ))
        .into()),
    }
}

/// The account files and packages of an OCI base (read from its layers once, then cached when
/// the cache is writable).
pub(crate) fn oci_base_info(
    cache: &Cache,
    ident: &str,
    layers: &[(LayerFacts, PathBuf)],
) -> Result<BaseInfo> {
    let path = cache.base_dir(&format!("oci-{ident}")).join("info.json");
    if let Some(info) = cache.read_json::<BaseInfo>(&path) {
        return Ok(info);
    }
    let wanted = [
        "etc/passwd",
        "etc/group",
        "etc/shadow",
        "etc/gshadow",
        "var/lib/dpkg/status",
    ];
    let mut found: BTreeMap<String, Entry> = BTreeMap::new();
    let mut java = Vec::new();
    let mut sizes = BTreeMap::new();
    for (rec, blob) in layers {
        let f = crate::support::fsx::open(blob)?;
        let r = Compression::reader_for(&rec.media_type, std::io::BufReader::new(f))?;
        let mut counted = CountingReader { inner: r, n: 0 };
        layer::for_each_in_tar(&mut counted, |p, h, data| {
            if p == base::JAVA_LINK || (p.starts_with("usr/lib/jvm/") && p.ends_with("/bin/java")) {
                java.push(Entry::symlink(p, "?"));
            }
            if wanted.contains(&p) && h.entry_type().is_file() {
                let mut buf = Vec::new();
                std::io::Read::read_to_end(data, &mut buf)?;
                let e = Entry::file(
                    p,
                    layer::Content::bytes(buf),
                    h.mode()? & 0o7777,
                    h.uid()? as u32,
                    h.gid()? as u32,
                );
                found.insert(p.to_string(), e);
            }
            Ok(())
        })
        .with_context(|| format!("reading OCI base layer {}", rec.digest))?;
        sizes.insert(rec.digest.to_string(), counted.n);
    }
    let entries: Vec<Entry> = found.into_values().collect();
    let info = BaseInfo {
        packages: base::dpkg_packages(&entries)?,
        accounts: crate::source::accounts::BaseAccounts::from_entries(&entries)?,
        java_homes: Some(base::java_homes(&java)),
        layer_sizes: sizes,
    };
    if cache.writable() {
        cache.write_json(&path, &info)?;
    }
    Ok(info)
}
