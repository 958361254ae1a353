//! # `strata pull`: images from a registry into a store
//!
//! For each reference: the manifest (verified against the digest asked for or the one the
//! registry names), its config and layers, and — when the image was pushed by strata — its
//! extras (see [`super`]): the store record and the disk-only layers. Blobs stream into temp
//! files of `blobs/sha256`, hashed as they come, renamed only when digest and size match
//! (a mismatch is exit 3 and leaves nothing). With the store's lock held, the record is merged
//! (the pulled images, their recipes' settings, their layers) and `index.json` is written last,
//! atomically, as a build commits: a failed pull leaves the store as it was.

use std::collections::BTreeSet;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use oci_spec::image::{
    Arch, Descriptor, DescriptorBuilder, Digest, ImageIndex, ImageIndexBuilder, ImageManifest,
    MediaType, Os, PlatformBuilder,
};
use serde::Serialize;

use super::{bounded, extras_tag, with_bytes};
use crate::oci::image::entry_name;
use crate::oci::record::{ImageRecord, StoreRecord};
use crate::oci::store::{ANNOTATION_IMAGE_NAME, ANNOTATION_RECORD, Store};
use crate::registry::manifest::{DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};
use crate::registry::{Client, Reference};
use crate::support::error::BadInput;
use crate::support::hash::canonical_json;
use crate::support::progress::Progress;
use crate::support::suggest::nearest;
use crate::support::units::human;

#[derive(Debug, Clone)]
pub struct Options {
    pub output: PathBuf,
    pub refs: Vec<String>,
    pub jobs: usize,
    pub registry: crate::registry::Options,
    pub quiet: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct PulledImage {
    pub reference: String,
    /// The name in the store (`hadoop-lab:3.3.6`).
    pub name: String,
    pub manifest: Digest,
    /// The strata extras were there: record and disk layers came along.
    pub extras: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct PullReport {
    pub store: PathBuf,
    pub images: Vec<PulledImage>,
    pub blobs_fetched: u64,
    pub blobs_present: u64,
    pub bytes_fetched: u64,
}

/// One image as the registry serves it.
struct Remote {
    reference: Reference,
    manifest: Vec<u8>,
    digest: Digest,
    parsed: ImageManifest,
    /// The extras' record (its descriptor) and disk layers.
    record: Option<Descriptor>,
    disk_layers: Vec<Descriptor>,
}

fn parse_refs(refs: &[String]) -> Result<Vec<Reference>> {
    if refs.is_empty() {
        crate::bad!("name what to pull: REGISTRY/REPO:TAG (e.g. 127.0.0.1:5000/lab:3.3.6)");
    }
    refs.iter()
        .map(|s| {
            let r: Reference = s.parse()?;
            if r.reference().is_none() {
                crate::bad!("{s}: name a tag or a digest (e.g. {s}:3.3.6)");
            }
            Ok(r)
        })
        .collect()
}

/// The manifest a reference names, and its extras' descriptors.
fn resolve(client: &Client, r: &Reference) -> Result<Remote> {
    let repo = &r.repository;
    let reference = r.reference().expect("checked");
    let Some(m) = client.get_manifest(repo, &reference)? else {
        let mut tags = client.list_tags(repo).unwrap_or_default();
        tags.retain(|t| !t.ends_with(super::EXTRAS_SUFFIX));
        let names: Vec<&str> = tags.iter().map(String::as_str).collect();
        let hint = nearest(&reference, &names)
            .map(|n| format!(" Did you mean {n}?"))
            .unwrap_or_default();
        let have = if tags.is_empty() {
            format!(
                "{} has no tags (is the repository name right?)",
                r.repo_name()
            )
        } else {
            format!(
                "it has: {}",
                tags.iter().take(20).cloned().collect::<Vec<_>>().join(", ")
            )
        };
        return Err(BadInput(format!("{r}: no such tag or manifest; {have}.{hint}")).into());
    };
    match m.media_type.as_str() {
        OCI_MANIFEST => {}
        OCI_INDEX | DOCKER_LIST => crate::bad!(
            "{r} is an image index (several platforms); strata pulls image manifests: name one \
             by its digest"
        ),
        DOCKER_MANIFEST => crate::bad!(
            "{r} is a Docker v2 manifest; strata stores OCI images (push it with strata, or \
             convert it with `skopeo copy --format oci`)"
        ),
        other => crate::bad!("{r}: unexpected manifest media type {other:?}"),
    }
    let parsed: ImageManifest =
        serde_json::from_slice(&m.bytes).with_context(|| format!("parsing the manifest of {r}"))?;
    let mut remote = Remote {
        reference: r.clone(),
        manifest: m.bytes,
        digest: m.digest,
        parsed,
        record: None,
        disk_layers: vec![],
    };
    if let Some(x) = client.get_manifest(repo, &extras_tag(&remote.digest))? {
        let extras: ImageManifest = serde_json::from_slice(&x.bytes)
            .with_context(|| format!("parsing the strata extras of {r}"))?;
        let subject = extras.subject().as_ref().map(|s| s.digest().clone());
        if subject.as_ref() != Some(&remote.digest) {
            anyhow::bail!(
                "the strata extras of {r} ({}) name another image ({subject:?}): push it again",
                x.digest
            );
        }
        remote.record = Some(extras.config().clone());
        remote.disk_layers = extras.layers().clone();
    }
    Ok(remote)
}

/// `strata pull`.
pub fn pull(opts: &Options) -> Result<PullReport> {
    let refs = parse_refs(&opts.refs)?;
    let progress = Progress::new(opts.quiet);
    let mut clients: HashMap<String, Client> = HashMap::new();
    for r in &refs {
        if !clients.contains_key(&r.registry) {
            let client = Client::new(&r.registry, &opts.registry, &progress)?;
            client.ping()?;
            clients.insert(r.registry.clone(), client);
        }
    }
    // The manifests first: a reference the registry does not have creates no store.
    let mut remotes = Vec::new();
    for r in &refs {
        let remote = resolve(&clients[&r.registry], r)?;
        progress.say(format!(
            "{r}: {}{}",
            remote.digest,
            if remote.record.is_some() {
                " (with strata extras)"
            } else {
                ""
            }
        ));
        remotes.push(remote);
    }
    let store = Store::ensure(&opts.output)?;
    let _lock = store.lock(|| progress.say("waiting for another strata using the store…"))?;
    store.ensure_layout()?;
    store.clean_temp()?;
    // Every blob, once: (registry, repository, digest, size).
    let mut seen = BTreeSet::new();
    let mut blobs: Vec<(String, String, Descriptor)> = Vec::new();
    for x in &remotes {
        let all = std::iter::once(x.parsed.config())
            .chain(x.parsed.layers())
            .chain(&x.disk_layers);
        for d in all {
            if seen.insert(d.digest().to_string()) {
                blobs.push((
                    x.reference.registry.clone(),
                    x.reference.repository.clone(),
                    d.clone(),
                ));
            }
        }
    }
    let present = blobs
        .iter()
        .filter(|(_, _, d)| store.has_blob(d.digest(), d.size()))
        .count() as u64;
    let total: u64 = blobs.iter().map(|(_, _, d)| d.size()).sum();
    progress.say(format!(
        "{} blob(s), {}; {present} already in the store",
        blobs.len(),
        human(total)
    ));
    let got = AtomicU64::new(0);
    let dir = store.blob_dir();
    with_bytes(&progress, "fetching blobs".into(), total, &got, || {
        bounded(&blobs, opts.jobs, |(reg, repo, d)| {
            clients[reg].fetch_blob(repo, d.digest(), d.size(), &dir, &got)?;
            Ok(())
        })
    })?;
    // The pushed records go to a temp dir (outside the store, whose cleanup removes only
    // files): the store keeps only the merged record.
    let records = tempfile::tempdir().context("creating a temp dir")?;
    for x in &remotes {
        if let Some(d) = &x.record {
            clients[&x.reference.registry].fetch_blob(
                &x.reference.repository,
                d.digest(),
                d.size(),
                records.path(),
                &got,
            )?;
        }
    }
    let images = commit(&store, &remotes, records.path())?;
    Ok(PullReport {
        store: opts.output.clone(),
        images,
        blobs_fetched: blobs.len() as u64 - present,
        blobs_present: present,
        bytes_fetched: got.load(Ordering::SeqCst),
    })
}

/// Writes the manifests, merges the record, and writes the index last.
fn commit(store: &Store, remotes: &[Remote], records: &Path) -> Result<Vec<PulledImage>> {
    let old_index: Option<ImageIndex> = store
        .root
        .join(crate::oci::store::INDEX_JSON)
        .is_file()
        .then(|| store.read_index())
        .transpose()?;
    let mut record = match &old_index {
        Some(i) => store.read_record(i)?,
        None => StoreRecord::default(),
    };
    let mut entries: Vec<Descriptor> = old_index
        .as_ref()
        .map(|i| i.manifests().clone())
        .unwrap_or_default();
    let old_recipes = record.recipes.clone();
    let mut pulled = Vec::new();
    for x in remotes {
        let (info, _) = store.put_blob_checked(&x.manifest)?;
        debug_assert_eq!(info.digest, x.digest);
        let image = match &x.record {
            Some(d) => {
                let data = crate::support::fsx::read(&records.join(d.digest().digest()))?;
                let remote = StoreRecord::parse(&data, d.digest())?;
                Some(merge(&mut record, &remote, &x.digest, &x.reference)?)
            }
            None => None,
        };
        let name = match &image {
            Some(i) => i.name.clone(),
            None => {
                let last = x.reference.repository.rsplit('/').next().unwrap_or("image");
                let tag = x
                    .reference
                    .tag
                    .clone()
                    .unwrap_or_else(|| x.digest.digest()[..12].to_string());
                format!("{last}:{tag}")
            }
        };
        let entry = DescriptorBuilder::default()
            .media_type(MediaType::ImageManifest)
            .digest(x.digest.clone())
            .size(info.size)
            .platform(
                PlatformBuilder::default()
                    .architecture(Arch::Amd64)
                    .os(Os::Linux)
                    .build()?,
            )
            .annotations(std::collections::HashMap::from([
                // Both the full name, as a build writes them (`oci::store`).
                (
                    oci_spec::image::ANNOTATION_REF_NAME.to_string(),
                    name.clone(),
                ),
                (ANNOTATION_IMAGE_NAME.to_string(), name.clone()),
            ]))
            .build()?;
        match entries.iter_mut().find(|e| entry_name(e) == name) {
            Some(e) => *e = entry,
            None => entries.push(entry),
        }
        pulled.push(PulledImage {
            reference: x.reference.to_string(),
            name,
            manifest: x.digest.clone(),
            extras: x.record.is_some(),
        });
    }
    same_settings(&old_recipes, &record, &pulled)?;
    let (record_blob, _) = store.put_blob_checked(&canonical_json(&record)?)?;
    let mut annotations = old_index
        .as_ref()
        .and_then(|i| i.annotations().clone())
        .unwrap_or_default();
    annotations.insert(
        ANNOTATION_RECORD.to_string(),
        record_blob.digest.to_string(),
    );
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(entries)
        .annotations(annotations)
        .build()?;
    store.write_index(&index)?;
    Ok(pulled)
}

/// One recipe, one set of settings per store: images of a recipe this pull did not replace,
/// built with other settings than the pulled ones, would read the new settings (and make other
/// disks). Refused, saying what to do.
fn same_settings(
    old: &std::collections::BTreeMap<String, crate::recipe::Settings>,
    record: &StoreRecord,
    pulled: &[PulledImage],
) -> Result<()> {
    for (recipe, before) in old {
        if record.recipes.get(recipe) == Some(before) {
            continue;
        }
        let stale: Vec<&str> = record
            .images
            .iter()
            .filter(|i| i.recipe() == recipe && !pulled.iter().any(|p| p.name == i.name))
            .map(|i| i.name.as_str())
            .collect();
        if !stale.is_empty() {
            return Err(BadInput(format!(
                "the pulled images of recipe {recipe:?} were built with other settings than this                  store's {}: pull into another store (-o DIR), or pull those images too",
                stale.join(", ")
            ))
            .into());
        }
    }
    Ok(())
}

/// Takes the pulled image's part of the remote record into the local one.
fn merge(
    local: &mut StoreRecord,
    remote: &StoreRecord,
    manifest: &Digest,
    reference: &Reference,
) -> Result<ImageRecord> {
    let img = remote
        .images
        .iter()
        .find(|i| &i.manifest == manifest)
        .with_context(|| {
            format!("the strata record pushed with {reference} does not describe its manifest {manifest}: push it again")
        })?
        .clone();
    if let Some(s) = remote.recipes.get(img.recipe()) {
        local.recipes.insert(img.recipe().to_string(), s.clone());
    }
    // Layer records as the build wrote them, `shared-by` included: a disk lays out the layers
    // every version shares apart from the rest, so the pulled disk is the one CI made only
    // with the builder's view of sharing.
    for d in img.layers.iter().chain(&img.disk_layers) {
        if let Some(l) = remote.layer(d) {
            local.layers.insert(d.to_string(), l.clone());
        }
    }
    local.images.retain(|i| i.name != img.name);
    local.images.push(img.clone());
    Ok(img)
}
