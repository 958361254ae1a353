//! # Container smoke tests, recorded against the image's manifest
//!
//! `strata run IMAGE --smoke` checks a running container of the image (the user and its login
//! environment, Java, the configs, Hadoop when the release is there) and records the result
//! beside the store's disks:
//!
//! ```text
//! output/smoke/hadoop-lab_3.3.6.json    the last smoke test of hadoop-lab:3.3.6 (SmokeRecord)
//! ```
//!
//! A record names the manifest it tested: a newer build of the image makes it stale, and
//! `inspect` then shows the image as not smoke-tested. Replaced atomically.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use oci_spec::image::Digest;
use serde::{Deserialize, Serialize};

use crate::support::fsx;

/// The directory of smoke records inside a store.
pub const SMOKE_DIR: &str = "smoke";

/// One smoke test of an image in a container.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct SmokeRecord {
    pub image: String,
    /// The manifest the tested image was loaded from.
    pub manifest: Digest,
    pub passed: bool,
    /// Each check: `ok`, or what was found instead.
    pub checks: BTreeMap<String, String>,
    pub problems: Vec<String>,
    /// The engine it ran on (`Docker 20.10.24 (API 1.41)`).
    pub engine: String,
    /// RFC 3339, UTC.
    pub time: String,
}

pub fn record_path(store: &Path, image: &str) -> PathBuf {
    store
        .join(SMOKE_DIR)
        .join(format!("{}.json", crate::oci::disks::stem(image)))
}

pub fn write_record(store: &Path, rec: &SmokeRecord) -> Result<()> {
    fsx::create_dir_all(&store.join(SMOKE_DIR))?;
    fsx::atomic_write(
        &record_path(store, &rec.image),
        &serde_json::to_vec_pretty(rec)?,
    )
}

/// The image's last smoke record, whatever manifest it tested (None: never run).
pub fn read_record(store: &Path, image: &str) -> Result<Option<SmokeRecord>> {
    let p = record_path(store, image);
    if !p.exists() {
        return Ok(None);
    }
    let data = fsx::read(&p)?;
    serde_json::from_slice(&data)
        .map(Some)
        .with_context(|| format!("reading the smoke record {p:?}"))
}

/// The smoke record of this very manifest (None: never run on this build of the image).
pub fn current(store: &Path, image: &str, manifest: &Digest) -> Option<SmokeRecord> {
    read_record(store, image)
        .ok()
        .flatten()
        .filter(|r| &r.manifest == manifest)
}
