//! # What the store knows about its disks and where they were published
//!
//! `disks/` beside the OCI layout holds each image's qcow2 (`hadoop-lab_3.3.6.qcow2`), its
//! boot-test results (`….boot-test.json`, console logs) and a [`DiskRecord`] (`….disk.json`):
//! which manifest the disk was made from, its sha256, sizes and the facts Glance properties
//! need. `publications.json` at the store's root lists every publish (cloud, Glance image id,
//! digests, time), newest last; `inspect` shows them. Both are replaced atomically.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use oci_spec::image::Digest;
use serde::{Deserialize, Serialize};

use crate::support::fsx;

/// The directory of disks inside a store.
pub const DISKS_DIR: &str = "disks";
/// The publish log at the store's root.
pub const PUBLICATIONS: &str = "publications.json";

/// A disk as `strata disk` wrote it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct DiskRecord {
    pub image: String,
    /// The image manifest the disk was made from: a newer build makes the disk stale.
    pub manifest: Digest,
    /// The qcow2's file name in `disks/`.
    pub file: String,
    pub sha256: Digest,
    /// SHA-512, hex: what Glance's `os_hash_value` is compared with (absent in records of an
    /// older strata: publish then hashes the file first).
    #[serde(default)]
    pub sha512: Option<String>,
    pub bytes: u64,
    /// The qcow2's modification time (seconds) when recorded: a changed file is noticed
    /// without re-hashing it.
    pub mtime: u64,
    pub virtual_size: u64,
    /// Glance's `min_disk`: the virtual size rounded up to GiB.
    pub min_disk_gib: u64,
    /// `ID` and `VERSION_ID` of the image's `/etc/os-release` (Glance's `os_distro`, `os_version`).
    pub os_distro: Option<String>,
    pub os_version: Option<String>,
    /// qemu-guest-agent is installed (Glance's `hw_qemu_guest_agent`).
    pub guest_agent: bool,
}

/// The file stem of an image's disk files (`hadoop-lab:3.3.6` → `hadoop-lab_3.3.6`).
pub fn stem(image: &str) -> String {
    image.replace(':', "_")
}

pub fn record_path(store: &Path, image: &str) -> PathBuf {
    store
        .join(DISKS_DIR)
        .join(format!("{}.disk.json", stem(image)))
}

pub fn disk_path(store: &Path, rec: &DiskRecord) -> PathBuf {
    store.join(DISKS_DIR).join(&rec.file)
}

pub fn mtime_of(path: &Path) -> Result<u64> {
    let m = fsx::metadata(path)?
        .modified()
        .with_context(|| format!("reading the modification time of {path:?}"))?;
    Ok(m.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0))
}

pub fn write_record(store: &Path, rec: &DiskRecord) -> Result<()> {
    fsx::atomic_write(
        &record_path(store, &rec.image),
        &serde_json::to_vec_pretty(rec)?,
    )
}

/// The image's disk record, if its disk was made (None: never made, or the record is from an
/// older strata and the disk must be made again).
pub fn read_record(store: &Path, image: &str) -> Result<Option<DiskRecord>> {
    let p = record_path(store, image);
    if !p.exists() {
        return Ok(None);
    }
    let data = fsx::read(&p)?;
    Ok(serde_json::from_slice(&data).ok())
}

/// Whether the recorded disk is there, made from `manifest`, and unchanged since.
pub fn is_current(store: &Path, rec: &DiskRecord, manifest: &Digest) -> bool {
    let path = disk_path(store, rec);
    &rec.manifest == manifest
        && std::fs::metadata(&path).is_ok_and(|m| m.len() == rec.bytes)
        && mtime_of(&path).is_ok_and(|t| t == rec.mtime)
}

/// Whether the boot test recorded beside the disk passed for this manifest (None: never run).
pub fn boot_test_passed(store: &Path, image: &str, manifest: &Digest) -> Option<bool> {
    let p = store
        .join(DISKS_DIR)
        .join(format!("{}.boot-test.json", stem(image)));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(p).ok()?).ok()?;
    if v.get("manifest")?.as_str()? != manifest.to_string() {
        return None;
    }
    let results = v.get("results")?.as_array()?;
    Some(
        !results.is_empty()
            && results
                .iter()
                .all(|r| r.get("passed").and_then(|p| p.as_bool()) == Some(true)),
    )
}

/// One publish, as recorded in the store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct Publication {
    pub cloud: String,
    pub image_endpoint: String,
    pub image: String,
    pub manifest: Digest,
    pub disk_sha256: Digest,
    pub glance_id: String,
    pub glance_name: String,
    pub visibility: String,
    /// `created`, `already-published` or `converted` (the cloud changed the format on import).
    pub outcome: String,
    /// RFC 3339, UTC.
    pub time: String,
}

pub fn read_publications(store: &Path) -> Result<Vec<Publication>> {
    let p = store.join(PUBLICATIONS);
    if !p.exists() {
        return Ok(vec![]);
    }
    serde_json::from_slice(&fsx::read(&p)?).with_context(|| format!("reading {p:?}"))
}

/// Appends a publication (the caller holds the store lock).
pub fn add_publication(store: &Path, p: Publication) -> Result<()> {
    let mut all = read_publications(store)?;
    all.push(p);
    fsx::atomic_write(&store.join(PUBLICATIONS), &serde_json::to_vec_pretty(&all)?)
}
