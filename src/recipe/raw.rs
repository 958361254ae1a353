//! # The recipe as written: exactly the TOML, checked for types and key names only

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use crate::layer::compress::Compression;
use crate::support::error::{Located, toml_error};
use crate::support::units::Size;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawRecipe {
    pub recipe: Spanned<RawHeader>,
    pub base: Spanned<RawBase>,
    #[serde(default)]
    pub jdk: BTreeMap<String, Spanned<RawJdk>>,
    #[serde(default)]
    pub lines: BTreeMap<String, Spanned<RawLine>>,
    #[serde(default)]
    pub user: Option<RawUser>,
    #[serde(default)]
    pub ssh: Option<RawSsh>,
    #[serde(default)]
    pub layer: Vec<Spanned<RawLayer>>,
    #[serde(default)]
    pub dist: Option<Spanned<RawDist>>,
    #[serde(default)]
    pub vars: BTreeMap<String, toml::Value>,
    #[serde(default)]
    pub image: Option<RawImage>,
    #[serde(default)]
    pub policy: Option<Spanned<RawPolicy>>,
    #[serde(default)]
    pub disk: Option<Spanned<RawDisk>>,
    #[serde(default)]
    pub publish: Option<Spanned<RawPublish>>,
}

/// `[publish]`: how disks of this recipe go to Glance.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawPublish {
    /// Glance's `min_ram`: what a node of this recipe needs.
    #[serde(default)]
    pub min_ram: Option<Spanned<RawSize>>,
    /// How many images of one name stay visible; older ones are hidden.
    #[serde(default)]
    pub keep: Option<Spanned<i64>>,
    /// `bios` (OpenStack's default) or `uefi` (sets `hw_firmware_type=uefi`).
    #[serde(default)]
    pub firmware: Option<Spanned<String>>,
    /// `hw_disk_bus`: virtio (default) or scsi.
    #[serde(default)]
    pub disk_bus: Option<Spanned<String>>,
    /// Glance tags of every published image.
    #[serde(default)]
    pub tags: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawPolicy {
    #[serde(default)]
    pub enforce: Option<Spanned<String>>,
    #[serde(default)]
    pub image_budget: Option<Spanned<RawSize>>,
    #[serde(default)]
    pub min_shared: Option<Spanned<f64>>,
    #[serde(default)]
    pub per_version_budget: Option<Spanned<RawSize>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawImage {
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawHeader {
    pub name: Spanned<String>,
    pub versions: Spanned<RawVersions>,
    pub epoch: Spanned<i64>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub compression: Option<Compression>,
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub root: Option<String>,
    #[serde(default)]
    pub catalogue: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "\"all\" or a list of version strings such as [\"3.3.6\", \"3.4.1\"]"
)]
pub enum RawVersions {
    All(String),
    List(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawBase {
    pub source: Spanned<String>,
    #[serde(default)]
    pub budget: Option<Spanned<RawSize>>,
    // mmdebstrap
    #[serde(default)]
    pub suite: Option<String>,
    #[serde(default)]
    pub variant: Option<String>,
    #[serde(default)]
    pub mirror: Option<String>,
    #[serde(default)]
    pub apt_sources: Option<Vec<String>>,
    #[serde(default)]
    pub packages: Vec<String>,
    #[serde(default)]
    pub exclude_docs: Option<bool>,
    #[serde(default)]
    pub proxy: Option<String>,
    // tarball / oci
    #[serde(default)]
    pub path: Option<Spanned<String>>,
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default, rename = "ref")]
    pub reference: Option<String>,
    /// oci: an image in a registry (`REGISTRY/REPO:TAG` or `@sha256:…`) instead of a layout.
    #[serde(default)]
    pub image: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawJdk {
    #[serde(default)]
    pub budget: Option<Spanned<RawSize>>,
    pub java_version: u32,
    pub java_home: String,
    #[serde(default)]
    pub packages: Vec<String>,
    #[serde(default)]
    pub apt_sources: Vec<String>,
    #[serde(default)]
    pub tarball: Option<RawDownload>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawDownload {
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    pub sha512: String,
    #[serde(default)]
    pub strip_components: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawLine {
    pub jdk: Spanned<String>,
    #[serde(default)]
    pub accept_unsupported: Option<String>,
    #[serde(default)]
    pub jvm_flags: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawUser {
    #[serde(default)]
    pub name: Option<Spanned<String>>,
    #[serde(default)]
    pub uid: Option<Spanned<u32>>,
    #[serde(default)]
    pub gid: Option<Spanned<u32>>,
    #[serde(default)]
    pub home: Option<Spanned<String>>,
    #[serde(default)]
    pub shell: Option<Spanned<String>>,
    #[serde(default)]
    pub reuse_existing: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawSsh {
    #[serde(default)]
    pub key: Option<String>,
    /// `"image"` (the default) or `"boot"`.
    #[serde(default)]
    pub deliver: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawLayer {
    pub name: Spanned<String>,
    pub dir: Spanned<String>,
    #[serde(default)]
    pub per_version: bool,
    #[serde(default)]
    pub accounts: bool,
    #[serde(default)]
    pub budget: Option<Spanned<RawSize>>,
    /// Only in disks (VMs), not in the container images.
    #[serde(default)]
    pub disk_only: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawDisk {
    /// Debian packages only disks get (kernel, systemd, …): one layer shared by every disk.
    #[serde(default)]
    pub packages: Vec<String>,
    /// The root filesystem size (default: content plus a margin).
    #[serde(default)]
    pub size: Option<Spanned<RawSize>>,
    /// Extra kernel command-line arguments.
    #[serde(default)]
    pub cmdline: Vec<String>,
    /// Budget on the disk's virtual size (what `min_disk` follows).
    #[serde(default)]
    pub budget: Option<Spanned<RawSize>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawDist {
    pub mode: Spanned<String>,
    #[serde(default)]
    pub budget: Option<Spanned<RawSize>>,
    /// mount: what holds the releases (`LABEL=…` or `server:/export`).
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub sha512: BTreeMap<String, String>,
}

/// A size in TOML: a string with a unit, or a number of bytes.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawSize {
    Text(String),
    Bytes(i64),
}

impl RawSize {
    pub fn parse(&self) -> Result<Size, String> {
        match self {
            RawSize::Text(s) => s.parse(),
            RawSize::Bytes(n) if *n < 0 => Err(format!("{n}: a size cannot be negative")),
            RawSize::Bytes(n) => Ok(Size(*n as u64)),
        }
    }
}

/// Parses recipe text (no I/O).
pub fn parse(file: &Path, src: &str) -> Result<RawRecipe, Located> {
    toml::from_str::<RawRecipe>(src).map_err(|e| toml_error(file, src, &e))
}
