//! # Publish: a store's disks into Glance, verified, idempotent, never overwriting
//!
//! For each image ([`publish`]):
//! 1. **Look up by content.** An image of this project whose `strata_image_digest` is the
//!    image's manifest, or whose `strata_disk_sha256` is the disk's sha256, and that is
//!    `active` (hidden ones included): nothing is uploaded. The disk is made (by the caller's
//!    `ensure_disk`) only when needed, so `--all` after a release builds only the new disks.
//! 2. **Create with a derived id** ([`derived_id`]: project, disk sha256, attempt): two jobs
//!    publishing the same bytes at once get one image — the second create answers 409 and the
//!    second job waits for the first one's image. Ids of deleted images stay taken in Glance:
//!    the next attempt number gives the next id.
//! 3. **Upload** ([`upload`]) streamed with a `Content-Length`, hashing as it goes; or
//!    `glance-direct` import when asked and offered. Wait for `active`, bounded per state.
//! 4. **Verify** `size` and `os_hash_value` (the cloud's `os_hash_algo`) against the file. A
//!    cloud that converted the format on import is said plainly and recorded; any other
//!    mismatch deletes the image and fails (exit 3).
//! 5. **Rotate.** Older images of the same name beyond `[publish] keep` are hidden
//!    (`os_hidden`), deleted only with `--prune`. Every publish is recorded in the store.
//!
//! A failure after the create deletes what it created; a dropped upload or a 5xx is retried
//! with a fresh id. Glance is left with the new image or with nothing new.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use oci_spec::image::Digest;
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::oci::disks::{self, DiskRecord, Publication};
use crate::oci::record::ImageRecord;
use crate::oci::view::View;
use crate::recipe::PublishSpec;
use crate::support::error::BadInput;
use crate::support::progress::Progress;

pub mod cloud;
pub mod docker;
pub mod glance;
pub mod preflight;
pub mod session;
pub mod upload;

use glance::Image;
use session::Session;

/// Custom properties strata sets (all strings, as Glance requires).
pub mod prop {
    pub const IMAGE_DIGEST: &str = "strata_image_digest";
    pub const DISK_SHA256: &str = "strata_disk_sha256";
    pub const RECIPE: &str = "strata_recipe";
    pub const IMAGE: &str = "strata_image";
    pub const PRIVATE_KEY: &str = "strata_carries_private_key";
    pub const HADOOP_VERSION: &str = "hadoop_version";
}

/// Who may see a published image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Visibility {
    Private,
    Shared,
    Community,
    Public,
}

impl Visibility {
    pub fn as_str(self) -> &'static str {
        match self {
            Visibility::Private => "private",
            Visibility::Shared => "shared",
            Visibility::Community => "community",
            Visibility::Public => "public",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub output: PathBuf,
    /// `--cloud` (else `OS_CLOUD`, else `OS_*`).
    pub cloud: Option<String>,
    pub visibility: Visibility,
    pub protected: bool,
    /// Projects to share with (image members); implies `shared` visibility.
    pub members: Vec<String>,
    /// Tags on top of the recipe's `[publish] tags`.
    pub tags: Vec<String>,
    /// Use `glance-direct` import when the cloud offers it.
    pub import: bool,
    pub dry_run: bool,
    /// Delete (not only hide) older images of the same name beyond `keep`.
    pub prune: bool,
    /// Overrides `[publish] keep`.
    pub keep: Option<usize>,
    /// Allows public or community visibility for an image that carries a private key.
    pub allow_private_key: bool,
    /// Bound on each answer from the cloud.
    pub timeout: Duration,
    /// Bound on each state (`queued`, `saving`, `importing`, …) while waiting for `active`.
    pub wait: Duration,
    pub quiet: bool,
}

/// What happened to one image.
#[derive(Debug, Serialize, Clone, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Uploaded and verified.
    Created,
    /// The same bytes were already active in Glance: nothing uploaded.
    AlreadyPublished,
    /// Another run published the same bytes at the same time; this one waited for it.
    PublishedByAnotherRun,
    /// `--dry-run`: would upload.
    WouldCreate,
}

/// The cloud converted the image on import (e.g. qcow2 → raw for Ceph).
#[derive(Debug, Serialize, Clone)]
#[serde(rename_all = "kebab-case")]
pub struct Conversion {
    pub disk_format: String,
    pub size: Option<u64>,
    pub os_hash_value: Option<String>,
}

#[derive(Debug, Serialize, Clone)]
#[serde(rename_all = "kebab-case")]
pub struct ImageReport {
    pub image: String,
    pub manifest: String,
    pub glance_name: String,
    pub glance_id: Option<String>,
    pub outcome: Outcome,
    pub visibility: String,
    pub disk: Option<PathBuf>,
    pub disk_sha256: Option<String>,
    pub bytes_sent: u64,
    pub seconds: f64,
    /// `sha512 matches` or why it could not be checked.
    pub verified: Option<String>,
    pub converted: Option<Conversion>,
    /// `passed`, `failed` or `not run` (for the disk's manifest).
    pub boot_test: String,
    pub hidden: Vec<String>,
    pub pruned: Vec<String>,
    /// Older images of the name that stay visible (within `keep`).
    pub kept: Vec<String>,
    pub properties: std::collections::BTreeMap<String, String>,
    /// For keys delivered at boot: the file to pass to `openstack server create --user-data`.
    pub user_data: Option<PathBuf>,
    /// How the bytes went in: `upload` (`PUT /file`) or `glance-direct` (stage + import).
    pub method: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct PublishReport {
    pub cloud: String,
    pub image_endpoint: String,
    pub dry_run: bool,
    pub images: Vec<ImageReport>,
}

/// The documented Glance name of an image: `hadoop-lab:3.3.6` → `hadoop-lab-3.3.6`.
pub fn glance_name(image: &str) -> String {
    image.replace(':', "-")
}

/// The Glance id for a publish of `disk_sha256` in `project`, attempt `n`: a UUID (version 8,
/// RFC 9562) from a hash, so two runs publishing the same bytes pick the same id.
pub fn derived_id(project: &str, disk_sha256: &str, n: u32) -> String {
    let mut h = Sha256::new();
    h.update(b"strata-glance-id\0");
    h.update(project.as_bytes());
    h.update(b"\0");
    h.update(disk_sha256.as_bytes());
    h.update(b"\0");
    h.update(n.to_le_bytes());
    let d = h.finalize();
    let mut b: [u8; 16] = d[..16].try_into().expect("16 bytes");
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let x = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &x[0..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..32]
    )
}

/// What one image's publish works from.
struct Target<'a> {
    name: String,
    manifest: Digest,
    record: &'a ImageRecord,
    spec: PublishSpec,
    /// For images that take their key at boot: the key's fingerprint (image label), where the
    /// recipe said the key is, and the user.
    keys_at_boot: Option<KeysAtBoot>,
}

struct KeysAtBoot {
    fingerprint: String,
    key: Option<PathBuf>,
    user: crate::recipe::User,
}

/// Publishes `images` (full names or tags of the store at `opts.output`). `ensure_disk` makes
/// (or re-makes, when stale) an image's disk and returns its record; it is called only for
/// images whose bytes Glance does not hold yet.
pub fn publish(
    opts: &Options,
    images: &[String],
    ensure_disk: &dyn Fn(&str) -> Result<DiskRecord>,
) -> Result<PublishReport> {
    let progress = Progress::new(opts.quiet);
    let view = View::open(&opts.output)?;
    let mut targets = vec![];
    for q in images {
        let (name, desc) = view.find(q)?;
        let record = view.image_record(&name).with_context(|| {
            format!(
                "the store record has no entry for {name}: rebuild the store with `strata build`"
            )
        })?;
        let settings = view.record.settings_of(&name);
        let spec = settings.map(|s| s.publish.clone()).unwrap_or_default();
        check_visibility(opts, &name, record)?;
        let keys_at_boot = match settings {
            Some(s) if record.keys_at_boot => {
                let fingerprint = view.key_fingerprint(&name, &desc)?;

                Some(KeysAtBoot {
                    fingerprint,
                    key: s.ssh.key.clone(),
                    user: s.user.clone(),
                })
            }
            _ => None,
        };
        targets.push(Target {
            name,
            manifest: desc.digest().clone(),
            record,
            spec,
            keys_at_boot,
        });
    }
    let cloud = cloud::resolve(opts.cloud.as_deref())?;
    let task = progress.task(format!("cloud {}: logging in", cloud.name), None);
    let session = Session::open(cloud, opts.timeout, &progress)?;
    task.finish(format!("image service at {}", session.image_url));
    let mut report = PublishReport {
        cloud: session.cloud.name.clone(),
        image_endpoint: session.image_url.clone(),
        dry_run: opts.dry_run,
        images: vec![],
    };
    for t in &targets {
        let mut r = upload::publish_one(&session, opts, t, ensure_disk, &progress)
            .with_context(|| format!("publishing {} to cloud {}", t.name, session.cloud.name))?;
        if let Some(k) = &t.keys_at_boot
            && !opts.dry_run
        {
            let recipe = t.record.recipe();
            let key = crate::source::keys::for_image(recipe, k.key.as_deref(), &k.fingerprint)?;
            r.user_data = Some(crate::source::keys::write_user_data(recipe, &key, &k.user)?);
        }
        if !opts.dry_run {
            record(opts, &session, t, &r)?;
        }
        report.images.push(r);
    }
    Ok(report)
}

/// A key-carrying image is never made public or community without an explicit flag.
fn check_visibility(opts: &Options, name: &str, record: &ImageRecord) -> Result<()> {
    let wide = matches!(opts.visibility, Visibility::Public | Visibility::Community);
    if wide && record.carries_private_key && !opts.allow_private_key {
        return Err(BadInput(format!(
            "{name} carries the cluster's SSH private key: publishing it with visibility {} would \
             give the key to everyone who can list images. Build it with `[ssh] deliver = \"boot\"` \
             (keys at first boot from user data), publish it private or shared, or pass \
             --allow-private-key if that is really meant",
            opts.visibility.as_str()
        ))
        .into());
    }
    Ok(())
}

/// The properties every published image carries (strings, as Glance wants them).
fn properties(t: &Target, disk: &DiskRecord) -> std::collections::BTreeMap<String, String> {
    let mut p = std::collections::BTreeMap::new();
    let mut set = |k: &str, v: String| {
        p.insert(k.to_owned(), v);
    };
    set(prop::IMAGE_DIGEST, t.manifest.to_string());
    set(prop::DISK_SHA256, disk.sha256.to_string());
    set(prop::RECIPE, t.record.recipe().to_owned());
    set(prop::IMAGE, t.name.clone());
    set(prop::PRIVATE_KEY, t.record.carries_private_key.to_string());
    if let Some(v) = &t.record.hadoop_version {
        set(prop::HADOOP_VERSION, v.clone());
    }
    set("os_type", "linux".into());
    if let Some(d) = &disk.os_distro {
        set("os_distro", d.clone());
    }
    if let Some(v) = &disk.os_version {
        set("os_version", v.clone());
    }
    set("hw_disk_bus", t.spec.disk_bus.clone());
    if t.spec.uefi {
        set("hw_firmware_type", "uefi".into());
        set("hw_machine_type", "q35".into());
    }
    if disk.guest_agent {
        set("hw_qemu_guest_agent", "yes".into());
        set("os_require_quiesce", "yes".into());
    }
    p
}

/// Appends the publish to the store's record (under the store lock).
fn record(opts: &Options, session: &Session, t: &Target, r: &ImageReport) -> Result<()> {
    let (Some(id), Some(sha)) = (&r.glance_id, &r.disk_sha256) else {
        return Ok(());
    };
    let store = crate::oci::store::Store::open(&opts.output)?;
    let _lock = store.lock(|| {})?;
    disks::add_publication(
        &opts.output,
        Publication {
            cloud: session.cloud.name.clone(),
            image_endpoint: session.image_url.clone(),
            image: t.name.clone(),
            manifest: t.manifest.clone(),
            disk_sha256: sha.parse().context("the disk's sha256")?,
            glance_id: id.clone(),
            glance_name: r.glance_name.clone(),
            visibility: r.visibility.clone(),
            outcome: match (&r.outcome, &r.converted) {
                (_, Some(_)) => "converted".into(),
                (Outcome::Created, None) => "created".into(),
                (Outcome::PublishedByAnotherRun, None) => "published-by-another-run".into(),
                _ => "already-published".into(),
            },
            time: crate::oci::image::rfc3339(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
            ),
        },
    )
}

/// Images of this project only (lists also show other projects' public images).
fn ours(session: &Session, img: &Image) -> bool {
    match (&session.project_id, &img.owner) {
        (Some(p), Some(o)) => p == o,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_uuids_stable_and_distinct() {
        let a = derived_id("p1", "sha256:aa", 0);
        assert_eq!(a, derived_id("p1", "sha256:aa", 0));
        assert_ne!(a, derived_id("p1", "sha256:aa", 1));
        assert_ne!(a, derived_id("p2", "sha256:aa", 0));
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "8", "version 8: {a}");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"), "variant: {a}");
    }

    #[test]
    fn glance_names_follow_the_convention() {
        assert_eq!(glance_name("hadoop-lab:3.3.6"), "hadoop-lab-3.3.6");
    }
}
