//! # Commit: the only step that touches the store
//!
//! Under the store's lock: layer blobs are copied in from the cache (each checked against its
//! digest, a damaged one in the store replaced), configs and manifests
//! written, the store record merged with what the store already holds (other recipes' images,
//! and with `--only` the recipe's other versions) and `index.json` replaced last. Any error
//! before this point leaves the store exactly as it was.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::Result;
use oci_spec::image::{ANNOTATION_REVISION, Descriptor, ImageIndexBuilder, MediaType};

use crate::cache::Cache;
use crate::oci::image::{self as oci, ImageSpec};
use crate::oci::record::{ImageRecord, LayerFacts, LayerRecord, StoreRecord};
use crate::oci::store::{ANNOTATION_RECORD, BlobInfo, INDEX_JSON, Store};
use crate::recipe::KeyDelivery;
use crate::recipe::hadoop::version_key;
use crate::source::{base, keys};
use crate::support::cmd;
use crate::support::error::Damaged;
use crate::support::hash::canonical_json;
use crate::support::progress::Progress;

use super::ImageSummary;
use super::plan::{Plan, PlannedImage};

/// What the commit wrote.
pub(crate) struct Committed {
    pub images: Vec<ImageSummary>,
    pub index_changed: bool,
    /// Blobs found damaged in the store and rewritten.
    pub repaired: Vec<String>,
}

/// Writes the plan's images into the store at `output`; `built` holds every needed layer's
/// facts and blob.
pub(crate) fn commit(
    plan: &Plan,
    built: &HashMap<usize, (LayerFacts, PathBuf)>,
    opts: &super::Options,
    cache: &Cache,
    revision: Revision,
    progress: &Progress,
) -> Result<Committed> {
    let output = &opts.output;
    let store = Store::ensure(output)?;
    let _lock = store.lock(|| {
        progress.say(format!(
            "waiting for another strata process to finish with {}",
            output.display()
        ))
    })?;
    store.clean_temp()?;
    store.ensure_layout()?;
    let old_index = if output.join(INDEX_JSON).exists() {
        Some(store.read_index()?)
    } else {
        None
    };
    let old_record = match &old_index {
        Some(i) => store.read_record(i).unwrap_or_else(|e| {
            progress.say(format!(
                "warning: the store record cannot be read ({e:#}): a new one is written"
            ));
            StoreRecord::default()
        }),
        None => StoreRecord::default(),
    };
    let mut repaired = import_layers(&store, built, cache)?;
    let layer_record = |idx: usize| -> LayerRecord {
        let pl = &plan.layers[idx];
        LayerRecord {
            name: pl.name.clone(),
            family: pl.family.clone(),
            shared_by: vec![],
            facts: built[&idx].0.clone(),
        }
    };
    let mut entries = Vec::new();
    let mut images = Vec::new();
    let mut summaries = Vec::new();
    for img in &plan.images {
        let layers: Vec<LayerRecord> = img.layers.iter().map(|&i| layer_record(i)).collect();
        let carries_key = layers.iter().any(|l| l.private_key);
        let keys_at_boot = keys_at_boot(plan, img);
        let spec = image_spec(plan, img, &layers, carries_key, keys_at_boot);
        let written = oci::write_image(&store, &spec)?;
        repaired.extend(written.repaired.iter().map(|d| d.to_string()));
        for d in [&written.config.digest, &written.manifest.digest] {
            cache.keep_copy(&store.blob_path(d), d)?;
        }
        summaries.push(ImageSummary {
            name: img.name.clone(),
            manifest: written.manifest.digest.to_string(),
            size: layers.iter().map(|l| l.size).sum(),
            layers: layers.iter().map(|l| l.name.clone()).collect(),
            carries_private_key: carries_key,
            keys_at_boot,
        });
        let disk_layers = img
            .version
            .as_ref()
            .and_then(|v| plan.disk_layers.get(v))
            .map(|ls| ls.iter().map(|&i| built[&i].0.digest.clone()).collect())
            .unwrap_or_default();
        images.push(ImageRecord {
            name: img.name.clone(),
            tag: img.tag.clone(),
            hadoop_version: img.version.clone(),
            manifest: written.manifest.digest.clone(),
            config: written.config.digest.clone(),
            jdk: img
                .version
                .as_ref()
                .and_then(|v| plan.recipe.jdk_for(v).map(|j| j.name.clone())),
            layers: layers.iter().map(|l| l.digest.clone()).collect(),
            carries_private_key: carries_key,
            keys_at_boot,
            disk_layers,
        });
        entries.push(written.index_entry);
    }
    let new_layers = plan.needed().into_iter().map(layer_record).collect();
    let record = merge_record(plan, old_record, images, new_layers);
    let fresh: BTreeSet<String> = entries.iter().map(|d| d.digest().to_string()).collect();
    let manifests = merge_index(old_index.as_ref(), entries);
    // The images kept from the old index must be whole too: the build leaves a store that
    // passes `verify`, or fails with the index unchanged.
    let kept = manifests
        .iter()
        .filter(|d| !fresh.contains(&d.digest().to_string()));
    match check_kept(&store, cache, kept) {
        Err(e) if opts.repairing => progress.say(format!("warning: {e:#}")),
        r => r?,
    }
    let (record_blob, fixed) = store.put_blob_checked(&canonical_json(&record)?)?;
    if fixed {
        repaired.push(record_blob.digest.to_string());
    }
    cache.keep_copy(&store.blob_path(&record_blob.digest), &record_blob.digest)?;
    for d in &repaired {
        progress.say(format!("repaired blob {d} (it was damaged in the store)"));
    }
    let mut annotations = HashMap::from([(
        ANNOTATION_RECORD.to_string(),
        record_blob.digest.to_string(),
    )]);
    if let Some(rev) = revision.join().ok().flatten() {
        annotations.insert(ANNOTATION_REVISION.to_string(), rev);
    }
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(manifests)
        .annotations(annotations)
        .build()?;
    let index_changed = store.write_index(&index)?;
    Ok(Committed {
        images: summaries,
        index_changed,
        repaired,
    })
}

/// Every blob of the images a build keeps from the old index is present, of its size and
/// digest (layers through the memo); else a [`Damaged`] error naming the image and the blob.
fn check_kept<'a>(
    store: &Store,
    cache: &Cache,
    kept: impl Iterator<Item = &'a Descriptor>,
) -> Result<()> {
    let mut problems = Vec::new();
    for d in kept {
        let name = oci::entry_name(d);
        let mut blob_ok =
            |what: &str, digest: &oci_spec::image::Digest, size: u64| -> Result<bool> {
                let p = store.blob_path(digest);
                let ok = store.has_blob(digest, size) && cache.blob_is(&p, digest)?;
                if !ok {
                    problems.push(format!(
                        "{name}: {what} blob {digest} is missing or damaged"
                    ));
                }
                Ok(ok)
            };
        if !blob_ok("manifest", d.digest(), d.size())? {
            continue;
        }
        let m = store.read_manifest(d.digest())?;
        blob_ok("config", m.config().digest(), m.config().size())?;
        for l in m.layers() {
            blob_ok("layer", l.digest(), l.size())?;
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    problems.push(
        "nothing was changed: run `strata verify --repair` (with the recipe of those images to \
         rebuild what the cache cannot restore)"
            .into(),
    );
    Err(Damaged(problems).into())
}

/// Copies into the store every layer blob it lacks or holds damaged (checked against its digest;
/// a `stat` when the cache's memo knows the store's file unchanged). Returns the damaged ones it
/// replaced.
fn import_layers(
    store: &Store,
    built: &HashMap<usize, (LayerFacts, PathBuf)>,
    cache: &Cache,
) -> Result<Vec<String>> {
    let mut repaired = Vec::new();
    let mut done = BTreeSet::new();
    for (rec, blob) in built.values() {
        if !done.insert(rec.digest.to_string()) {
            continue;
        }
        let dest = store.blob_path(&rec.digest);
        // A blob an older strata hard-linked from the cache is intact but shares its file: it is
        // replaced by a copy too.
        let linked = std::fs::symlink_metadata(&dest).is_ok_and(|m| m.nlink() > 1);
        if !linked && store.has_blob(&rec.digest, rec.size) && cache.blob_is(&dest, &rec.digest)? {
            continue;
        }
        if !linked && std::fs::symlink_metadata(&dest).is_ok() {
            repaired.push(rec.digest.to_string());
        }
        let info = BlobInfo {
            digest: rec.digest.clone(),
            size: rec.size,
        };
        store.copy_blob_in(blob, &info)?;
        cache.remember(&dest, rec.digest.digest())?;
    }
    Ok(repaired)
}

/// The new record: the old one's other images and recipes, this build's images and layers, and
/// which images share each layer.
fn merge_record(
    plan: &Plan,
    old: StoreRecord,
    images: Vec<ImageRecord>,
    new_layers: Vec<LayerRecord>,
) -> StoreRecord {
    let replaced: BTreeSet<&str> = images.iter().map(|i| i.name.as_str()).collect();
    let mut record = StoreRecord {
        recipes: old.recipes,
        images: old
            .images
            .into_iter()
            .filter(|i| !replaced.contains(i.name.as_str()))
            .collect(),
        ..StoreRecord::default()
    };
    record
        .recipes
        .insert(plan.recipe.name.clone(), plan.recipe.settings());
    record.images.extend(images);
    record
        .images
        .sort_by_key(|i| (i.recipe().to_string(), version_key(&i.tag), i.tag.clone()));
    let mut all_layers: BTreeMap<String, LayerRecord> = old.layers;
    for r in new_layers {
        all_layers.insert(r.digest.to_string(), r);
    }
    let referenced: BTreeSet<String> = record
        .images
        .iter()
        .flat_map(|i| i.layers.iter().chain(&i.disk_layers))
        .map(|d| d.to_string())
        .collect();
    for (d, mut r) in all_layers {
        if referenced.contains(&d) {
            r.shared_by = record
                .images
                .iter()
                .filter(|i| i.hadoop_version.is_some() && i.layers.contains(&r.digest))
                .map(|i| i.name.clone())
                .collect();
            record.layers.insert(d, r);
        }
    }
    record
}

/// The index entries: the old index's images this build does not replace, and the new ones,
/// ordered by recipe and version.
fn merge_index(old: Option<&oci_spec::image::ImageIndex>, new: Vec<Descriptor>) -> Vec<Descriptor> {
    let replaced: BTreeSet<String> = new.iter().map(oci::entry_name).collect();
    let mut manifests: Vec<Descriptor> = old
        .map(|i| i.manifests().clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|d| !replaced.contains(&oci::entry_name(d)))
        .collect();
    manifests.extend(new);
    manifests.sort_by_key(|d| {
        let name = oci::entry_name(d);
        let (repo, tag) = oci::split_name(&name);
        (repo.to_string(), version_key(tag), tag.to_string())
    });
    manifests
}

/// The image takes its cluster key at boot: the recipe says so and the image has the accounts.
pub(crate) fn keys_at_boot(plan: &Plan, img: &PlannedImage) -> bool {
    plan.recipe.ssh.deliver == KeyDelivery::Boot
        && plan.accounts_layer.is_some_and(|a| img.layers.contains(&a))
}

/// An image's config and manifest inputs.
fn image_spec(
    plan: &Plan,
    img: &PlannedImage,
    layers: &[LayerRecord],
    carries_key: bool,
    keys_at_boot: bool,
) -> ImageSpec {
    let recipe = plan.recipe;
    let mut env: BTreeMap<String, String> = BTreeMap::from([
        ("PATH".into(), "/opt/hadoop/bin:/opt/hadoop/sbin:/opt/java/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()),
        ("JAVA_HOME".into(), format!("/{}", base::JAVA_LINK)),
        ("HADOOP_HOME".into(), "/opt/hadoop".into()),
        ("HADOOP_CONF_DIR".into(), "/etc/hadoop".into()),
    ]);
    let mut labels = HashMap::new();
    if let Some(v) = &img.version {
        env.insert("HADOOP_VERSION".into(), v.clone());
        labels.insert(oci::LABEL_HADOOP_VERSION.to_string(), v.clone());
        if let Some(jdk) = recipe.jdk_for(v) {
            labels.insert(
                oci::LABEL_JDK.to_string(),
                format!("{} (Java {})", jdk.name, jdk.java_version),
            );
        }
        if let Some(why) = recipe
            .line_choice(v)
            .and_then(|c| c.accept_unsupported.as_ref())
        {
            labels.insert(oci::LABEL_JDK_UNSUPPORTED.to_string(), why.clone());
        }
    }
    for (k, v) in &recipe.image.env {
        env.insert(k.clone(), v.clone());
    }
    if carries_key || keys_at_boot {
        labels.insert(oci::LABEL_PRIVATE_KEY.to_string(), carries_key.to_string());
        if let Some(k) = &plan.cluster_key {
            labels.insert(
                oci::LABEL_KEY_FINGERPRINT.to_string(),
                k.fingerprint.clone(),
            );
        }
    }
    let mut entrypoint = recipe.image.entrypoint.clone();
    if keys_at_boot {
        labels.insert(
            oci::LABEL_SSH_DELIVER.to_string(),
            KeyDelivery::Boot.to_string(),
        );
        // In a container the key comes from a mounted secret: the script installs it, then runs
        // the recipe's entrypoint and command.
        let mut e = vec![format!("/{}", keys::BOOT_SCRIPT)];
        e.extend(entrypoint.unwrap_or_default());
        entrypoint = Some(e);
    }
    ImageSpec {
        name: img.name.clone(),
        layers: layers.to_vec(),
        env: env.into_iter().map(|(k, v)| format!("{k}={v}")).collect(),
        cmd: recipe.image.cmd.clone(),
        entrypoint,
        working_dir: recipe.image.working_dir.clone(),
        user: recipe.image.user.clone(),
        labels,
        annotations: oci::standard_annotations(
            img.version.as_deref(),
            recipe.source_url.as_deref(),
            recipe.description.as_deref(),
        ),
        epoch: recipe.epoch,
    }
}

/// The checkout's revision, being found by a thread of its own.
pub(crate) type Revision = std::thread::JoinHandle<Option<String>>;

/// Starts finding the revision of the checkout holding `root` (see [`git_revision`]).
pub(crate) fn revision(root: &Path) -> Revision {
    let root = root.to_path_buf();
    std::thread::spawn(move || git_revision(&root))
}

/// The checkout's revision (`-dirty` with local changes), if the recipe is in a git work tree
/// and git is installed.
fn git_revision(root: &Path) -> Option<String> {
    // (Two git processes, ~5 ms: started by `revision` while the build plans and packs.)
    if !cmd::have("git") {
        return None;
    }
    let mut c = std::process::Command::new("git");
    c.arg("-C").arg(root).args(["rev-parse", "HEAD"]);
    let out = cmd::output(c).ok()?;
    let mut rev = String::from_utf8_lossy(&out).trim().to_string();
    let mut c = std::process::Command::new("git");
    c.arg("-C")
        .arg(root)
        .args(["status", "--porcelain", "--untracked-files=no"]);
    if !cmd::output(c).ok()?.is_empty() {
        rev.push_str("-dirty");
    }
    Some(rev)
}
