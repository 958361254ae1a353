//! # `strata push`: a store's images into a registry repository
//!
//! For each image (one, or `--all`): the blobs it needs — config, layers, the disk-only layers
//! and the store record — each sent once however many images share it, at most `--jobs` at
//! once, each HEADed first (a second push sends nothing); then its manifest, byte for byte
//! from the store, under its version tag and under `VERSION-<12 hex of the digest>` (a tag
//! that never moves); then its extras (see [`super`]) whose `subject` is the manifest, so the
//! manifest goes first. An image that carries the cluster's private key is refused before any
//! network call unless `--allow-private-key`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use oci_spec::image::{Descriptor, Digest, MediaType};
use serde::Serialize;

use super::{EXTRAS_ARTIFACT_TYPE, bounded, extras_tag, with_bytes};
use crate::oci::image::split_name;
use crate::oci::record::RECORD_MEDIA_TYPE;
use crate::oci::store::ANNOTATION_RECORD;
use crate::oci::view::View;
use crate::registry::manifest::{OCI_MANIFEST, artifact_manifest};
use crate::registry::{BlobOutcome, BlobSource, Client, Reference, UploadOptions};
use crate::support::progress::Progress;
use crate::support::units::human;

#[derive(Debug, Clone)]
pub struct Options {
    pub output: PathBuf,
    /// The image to push; None with `--all`.
    pub image: Option<String>,
    /// `REGISTRY/REPO[:TAG]` (no tag with `--all`).
    pub target: String,
    pub jobs: usize,
    pub allow_private_key: bool,
    /// A repository of the same registry to mount blobs from.
    pub mount_from: Option<String>,
    /// Chunked uploads of this size; None: one PUT per blob.
    pub chunk_size: Option<u64>,
    pub registry: crate::registry::Options,
    pub quiet: bool,
}

/// One pushed image.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct PushedImage {
    pub name: String,
    pub manifest: Digest,
    /// Every tag now pointing at the manifest.
    pub tags: Vec<String>,
    /// The extras artifact and its tag.
    pub extras: Digest,
    pub extras_tag: String,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct BlobCounts {
    pub sent: u64,
    pub mounted: u64,
    pub present: u64,
    pub bytes_sent: u64,
    /// Bytes of every blob the images need.
    pub bytes_total: u64,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ManifestCounts {
    pub pushed: u64,
    pub present: u64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct PushReport {
    pub registry: String,
    pub repository: String,
    pub images: Vec<PushedImage>,
    pub blobs: BlobCounts,
    pub manifests: ManifestCounts,
}

/// An image chosen for the push, with what it needs.
struct Chosen {
    name: String,
    tag: String,
    entry: Descriptor,
    /// The extras: the record and the disk-only layers.
    record: Descriptor,
    disk_layers: Vec<Descriptor>,
}

/// A blob to send, and where it is.
struct Blob {
    digest: Digest,
    size: u64,
    path: PathBuf,
}

/// The target reference, checked against the mode.
fn target(opts: &Options) -> Result<Reference> {
    let r: Reference = opts.target.parse()?;
    if r.digest.is_some() {
        crate::bad!(
            "{}: push to a tag, not a digest (the digest is the manifest's own)",
            opts.target
        );
    }
    if opts.image.is_none() && r.tag.is_some() {
        crate::bad!(
            "{}: with --all name the repository only (each image is tagged with its version)",
            opts.target
        );
    }
    Ok(r)
}

/// The images to push, refusing key-carrying ones unless allowed.
fn choose(view: &View, opts: &Options, target: &Reference) -> Result<Vec<Chosen>> {
    let entries: Vec<(String, Descriptor)> = match &opts.image {
        Some(q) => vec![view.find(q)?],
        None => view
            .index
            .manifests()
            .iter()
            .map(|d| (crate::oci::image::entry_name(d), d.clone()))
            .collect(),
    };
    let record_digest: Digest = view
        .index
        .annotations()
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_RECORD))
        .with_context(|| {
            format!(
                "{} has no store record: rebuild it with `strata build -o {}`",
                view.store.root.display(),
                view.store.root.display()
            )
        })?
        .parse()?;
    let record_size = crate::support::fsx::metadata(&view.store.blob_path(&record_digest))?.len();
    let record = Descriptor::new(
        MediaType::Other(RECORD_MEDIA_TYPE.into()),
        record_size,
        record_digest,
    );
    // The image's own flag, or any of its layers' facts (a layer holding a private key).
    let carries_key = |name: &str| {
        view.image_record(name).is_some_and(|r| {
            r.carries_private_key
                || r.layers
                    .iter()
                    .chain(&r.disk_layers)
                    .any(|d| view.layer_record(d).is_some_and(|l| l.private_key))
        })
    };
    let keyed: Vec<&str> = entries
        .iter()
        .filter(|(n, _)| carries_key(n))
        .map(|(n, _)| n.as_str())
        .collect();
    if !keyed.is_empty() && !opts.allow_private_key {
        crate::bad!(
            "{} carr{} the cluster's SSH private key: pushing gives the key to everyone who can \
             pull from {}. Build with `[ssh] deliver = \"boot\"` (the key arrives at first boot), \
             or pass --allow-private-key if the registry is private and that is really meant",
            keyed.join(", "),
            if keyed.len() == 1 { "ies" } else { "y" },
            target.repo_name()
        );
    }
    let mut out = Vec::new();
    for (name, entry) in entries {
        let tag = match (&opts.image, &target.tag) {
            (Some(_), Some(t)) => t.clone(),
            _ => split_name(&name).1.to_string(),
        };
        let mut disk_layers = Vec::new();
        for d in view
            .image_record(&name)
            .map(|r| r.disk_layers.clone())
            .unwrap_or_default()
        {
            let l = view.layer_record(&d).with_context(|| {
                format!("the store record lacks disk layer {d} of {name}: rebuild the store")
            })?;
            disk_layers.push(Descriptor::new(l.media_type.clone(), l.size, d.clone()));
        }
        out.push(Chosen {
            name,
            tag,
            entry,
            record: record.clone(),
            disk_layers,
        });
    }
    Ok(out)
}

/// Every blob the chosen images need, once each.
fn blobs_of(view: &View, chosen: &[Chosen]) -> Result<Vec<Blob>> {
    let mut all: BTreeMap<String, Blob> = BTreeMap::new();
    let mut add = |d: &Descriptor| {
        all.entry(d.digest().to_string()).or_insert_with(|| Blob {
            digest: d.digest().clone(),
            size: d.size(),
            path: view.store.blob_path(d.digest()),
        });
    };
    for c in chosen {
        let m = view.manifest(&c.entry)?;
        add(m.config());
        m.layers().iter().for_each(&mut add);
        c.disk_layers.iter().for_each(&mut add);
        add(&c.record);
    }
    // Largest first: the long uploads start early and the small ones fill in.
    let mut v: Vec<Blob> = all.into_values().collect();
    v.sort_by(|a, b| {
        b.size
            .cmp(&a.size)
            .then(a.digest.digest().cmp(b.digest.digest()))
    });
    Ok(v)
}

/// The extras artifact of an image: config = the record, layers = the disk-only layers,
/// subject = the image manifest.
fn extras_manifest(c: &Chosen) -> Result<Vec<u8>> {
    artifact_manifest(
        EXTRAS_ARTIFACT_TYPE,
        &c.record,
        &c.disk_layers,
        Some(&c.entry),
        &BTreeMap::from([(
            crate::oci::store::ANNOTATION_IMAGE_NAME.to_string(),
            c.name.clone(),
        )]),
    )
}

/// `strata push`.
pub fn push(opts: &Options) -> Result<PushReport> {
    let target = target(opts)?;
    let view = View::open(&opts.output)?;
    let chosen = choose(&view, opts, &target)?;
    let blobs = blobs_of(&view, &chosen)?;
    let progress = Progress::new(opts.quiet);
    let client = Client::new(&target.registry, &opts.registry, &progress)?;
    client.ping()?;
    let repo = target.repository.as_str();
    let total: u64 = blobs.iter().map(|b| b.size).sum();
    progress.say(format!(
        "pushing {} image(s) to {}: {} blob(s), {}",
        chosen.len(),
        target.repo_name(),
        blobs.len(),
        human(total)
    ));
    let up = UploadOptions {
        chunk_size: opts.chunk_size,
        sent: Arc::new(AtomicU64::new(0)),
    };
    let done = AtomicU64::new(0);
    let outcomes = with_bytes(&progress, "sending blobs".into(), total, &up.sent, || {
        bounded(&blobs, opts.jobs, |b| {
            let outcome = client.push_blob(
                repo,
                &BlobSource {
                    digest: &b.digest,
                    size: b.size,
                    path: &b.path,
                    mount_from: opts.mount_from.as_deref(),
                },
                &up,
            )?;
            let n = done.fetch_add(1, Ordering::SeqCst) + 1;
            let what = match outcome {
                BlobOutcome::Present => "already there",
                BlobOutcome::Mounted => "mounted",
                BlobOutcome::Uploaded => "sent",
            };
            progress.say(format!(
                "blob {n}/{}: {} {} {what}",
                blobs.len(),
                &b.digest.digest()[..12],
                human(b.size)
            ));
            Ok(outcome)
        })
    })?;
    let mut counts = BlobCounts {
        bytes_total: total,
        bytes_sent: up.sent.load(Ordering::SeqCst),
        ..BlobCounts::default()
    };
    for o in &outcomes {
        match o {
            BlobOutcome::Present => counts.present += 1,
            BlobOutcome::Mounted => counts.mounted += 1,
            BlobOutcome::Uploaded => counts.sent += 1,
        }
    }
    let mut manifests = ManifestCounts::default();
    let mut images = Vec::new();
    for c in &chosen {
        images.push(push_manifests(
            &client,
            &view,
            repo,
            c,
            &mut manifests,
            &progress,
        )?);
    }
    Ok(PushReport {
        registry: target.registry.clone(),
        repository: target.repository.clone(),
        images,
        blobs: counts,
        manifests,
    })
}

/// Puts a manifest under a tag unless the tag already points at it.
fn put_tag(
    client: &Client,
    repo: &str,
    tag: &str,
    media_type: &str,
    bytes: &[u8],
    digest: &Digest,
    counts: &mut ManifestCounts,
) -> Result<()> {
    if client.head_manifest(repo, tag)?.as_ref() == Some(digest) {
        counts.present += 1;
        return Ok(());
    }
    let got = client.put_manifest(repo, tag, media_type, bytes)?;
    debug_assert_eq!(&got, digest);
    counts.pushed += 1;
    Ok(())
}

fn push_manifests(
    client: &Client,
    view: &View,
    repo: &str,
    c: &Chosen,
    counts: &mut ManifestCounts,
    progress: &Progress,
) -> Result<PushedImage> {
    let digest = c.entry.digest().clone();
    let bytes = view.store.read_blob_checked(&digest)?;
    let media_type = c.entry.media_type().to_string();
    let immutable = format!("{}-{}", c.tag, &digest.digest()[..12]);
    let immutable = if crate::registry::reference::valid_tag(&immutable) {
        immutable
    } else {
        // A tag near the 128-character limit: the digest alone.
        format!("sha256-{}", &digest.digest()[..12])
    };
    let tags = vec![c.tag.clone(), immutable];
    for t in &tags {
        put_tag(client, repo, t, &media_type, &bytes, &digest, counts)?;
    }
    let extras = extras_manifest(c)?;
    let extras_digest = crate::support::hash::sha256_of(&extras);
    let etag = extras_tag(&digest);
    put_tag(
        client,
        repo,
        &etag,
        OCI_MANIFEST,
        &extras,
        &extras_digest,
        counts,
    )?;
    progress.say(format!(
        "{} → {repo}:{} ({digest})",
        c.name,
        tags.join(", :")
    ));
    Ok(PushedImage {
        name: c.name.clone(),
        manifest: digest,
        tags,
        extras: extras_digest,
        extras_tag: etag,
    })
}
