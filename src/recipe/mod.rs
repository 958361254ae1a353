//! # Recipes: raw TOML → a validated model
//!
//! A recipe (`recipes/*.toml`) says which Hadoop versions to build, from which base, with which
//! JDK per Hadoop line, and which layers to stack. Parsing happens in two steps, as in ripgrep's
//! low/high args: [`parse`] deserializes `raw` structs (kebab-case keys, unknown keys rejected)
//! from a `&str`, then [`validate`] turns them into a [`Recipe`] that cannot hold an invalid
//! state, without I/O; last, [`load`] checks the recipe's paths on disk (the project root, the
//! base and the layer directories). Every error names the file, the line and the key, and for an
//! unknown key suggests the nearest valid one.
//!
//! Relative paths in a recipe resolve against the project root: the recipe file's directory
//! joined with `[recipe] root` (default `".."`, since recipes live in `recipes/`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::layer::compress::Compression;
use crate::policy::Policy;
use crate::support::error::BadInput;
use crate::support::units::Size;

pub mod hadoop;
pub mod raw;
mod validate;

pub use raw::parse;
pub use validate::validate;

use hadoop::Catalogue;

pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "source")]
pub enum Base {
    Mmdebstrap {
        suite: String,
        variant: String,
        mirror: String,
        /// Full `deb ...` lines; default: the suite and its security updates on `mirror`.
        apt_sources: Vec<String>,
        packages: Vec<String>,
        exclude_docs: bool,
        /// An HTTP proxy for apt; not part of any cache key (it does not change content).
        #[serde(skip)]
        proxy: Option<String>,
    },
    Tarball {
        path: PathBuf,
        sha256: Option<String>,
    },
    Oci {
        path: PathBuf,
        reference: String,
    },
    /// An OCI image in a registry (`[base] source = "oci"`, `image = "REGISTRY/REPO:TAG"`),
    /// pulled by `build` into the cache by its manifest digest.
    OciRegistry {
        image: String,
    },
}

/// Where a download comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    Url(String),
    Path(PathBuf),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Url(u) => f.write_str(u),
            Origin::Path(p) => write!(f, "{}", p.display()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JdkSource {
    /// Debian packages installed on top of the base (needs an mmdebstrap base).
    Packages {
        packages: Vec<String>,
        apt_sources: Vec<String>,
    },
    /// A pinned JDK tarball, re-packed under `java_home`.
    Tarball {
        origin: Origin,
        sha512: String,
        strip_components: usize,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Jdk {
    pub name: String,
    pub java_version: u32,
    pub java_home: String,
    pub source: JdkSource,
}

/// The JDK chosen for one Hadoop line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct LineChoice {
    pub jdk: String,
    /// Why an unsupported pairing is accepted (None: the pairing must be supported).
    pub accept_unsupported: Option<String>,
    pub jvm_flags: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub shell: String,
    /// The base may already have this account (name, and the uid/gid it holds there): its lines
    /// are replaced. Without it, a name, uid or gid the base already has is refused.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reuse_existing: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct LayerSpec {
    pub name: String,
    /// Canonical once [`load`] has checked it (exists, a directory, inside the project root).
    pub dir: PathBuf,
    pub per_version: bool,
    /// This layer carries the recipe's user accounts and the cluster SSH key pair.
    pub accounts: bool,
    /// Only in disks, not in container images.
    pub disk_only: bool,
}

/// What a bootable disk needs beyond the container image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct DiskSpec {
    pub packages: Vec<String>,
    pub size: Option<Size>,
    pub cmdline: Vec<String>,
    #[serde(default)]
    pub budget: Option<Size>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Dist {
    pub mode: DistMode,
    /// `{version}` in url/path templates is replaced by the Hadoop version.
    pub url: Option<String>,
    pub path: Option<String>,
    pub sha512: BTreeMap<String, String>,
}

/// How a recipe's disks are published to Glance (`[publish]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct PublishSpec {
    /// Glance's `min_ram`.
    pub min_ram: Option<Size>,
    /// How many images of one name stay visible (older ones are hidden, never deleted
    /// unless `--prune`).
    pub keep: usize,
    /// `hw_firmware_type=uefi` when true (the disk boots both ways).
    pub uefi: bool,
    pub disk_bus: String,
    pub tags: Vec<String>,
}

impl Default for PublishSpec {
    fn default() -> Self {
        PublishSpec {
            min_ram: None,
            keep: 3,
            uefi: false,
            disk_bus: "virtio".into(),
            tags: vec![],
        }
    }
}

/// A validated recipe, with the catalogue facts of its versions.
#[derive(Debug, Clone)]
pub struct Recipe {
    pub file: PathBuf,
    /// The project root: canonical once [`load`] has checked the paths on disk.
    pub root: PathBuf,
    pub name: String,
    pub description: Option<String>,
    pub versions: Vec<String>,
    /// Timestamps in layers, configs and the base: the recipe's `epoch`, or `SOURCE_DATE_EPOCH`
    /// when set ([`Recipe::apply_source_date_epoch`]).
    pub epoch: u64,
    pub epoch_source: EpochSource,
    pub compression: Compression,
    pub source_url: Option<String>,
    pub base: Base,
    pub jdks: BTreeMap<String, Jdk>,
    pub lines: BTreeMap<String, LineChoice>,
    pub user: User,
    /// `[ssh]`: the cluster key's path and how nodes get its private half.
    pub ssh: Ssh,
    pub layers: Vec<LayerSpec>,
    pub dist: Option<Dist>,
    pub vars: serde_json::Value,
    pub image: ImageSettings,
    pub policy: Policy,
    pub disk: Option<DiskSpec>,
    pub publish: PublishSpec,
    /// `[base] exclude-docs` (None for non-mmdebstrap bases), for advice.
    pub excludes_docs: Option<bool>,
    pub catalogue: Catalogue,
}

/// `[ssh]`: where the cluster key pair comes from and how nodes get its private half.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Ssh {
    /// Explicit key path from the recipe (the environment and the default place are looked at
    /// by the key source, `source::keys`).
    #[serde(default)]
    pub key: Option<PathBuf>,
    #[serde(default)]
    pub deliver: KeyDelivery,
}

impl Ssh {
    /// Today's behaviour, which the store record leaves out (so its bytes do not change).
    pub fn is_image(&self) -> bool {
        self.deliver == KeyDelivery::Image
    }
}

/// How nodes get the cluster's SSH private key (`[ssh] deliver`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyDelivery {
    /// The accounts layer carries it: images must stay private to the project.
    #[default]
    Image,
    /// Images carry only the public key and `authorized_keys`; `strata-ssh-key` installs the
    /// private key at boot from the instance's user data or a mounted secret file.
    Boot,
}

impl KeyDelivery {
    /// The values `[ssh] deliver` accepts.
    pub const NAMES: [&'static str; 2] = ["image", "boot"];

    pub fn name(self) -> &'static str {
        match self {
            KeyDelivery::Image => "image",
            KeyDelivery::Boot => "boot",
        }
    }
}

impl std::fmt::Display for KeyDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Where the epoch of a build came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EpochSource {
    /// `[recipe] epoch`.
    #[default]
    Recipe,
    /// The `SOURCE_DATE_EPOCH` environment variable (reproducible-builds.org), which overrides it.
    SourceDateEpoch,
}

impl std::fmt::Display for EpochSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EpochSource::Recipe => "the recipe's epoch",
            EpochSource::SourceDateEpoch => "SOURCE_DATE_EPOCH",
        })
    }
}

/// The largest epoch strata accepts: 2242-03-16, what a ustar header's 11 octal digits hold
/// (every tar reader, RFC 3339 and the OCI tools accept it).
pub const MAX_EPOCH: u64 = 0o77777777777;

/// The settings of a recipe that later commands need from the store alone (`disk`, `report`,
/// `export`, `publish`), kept in the store record. Same shape as the unversioned record's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Settings {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    pub versions: Vec<String>,
    pub epoch: u64,
    #[serde(default)]
    pub epoch_source: EpochSource,
    pub compression: Compression,
    pub base: Base,
    pub jdks: BTreeMap<String, Jdk>,
    pub lines: BTreeMap<String, LineChoice>,
    pub user: User,
    pub image: ImageSettings,
    pub policy: Policy,
    #[serde(default)]
    pub excludes_docs: Option<bool>,
    #[serde(default)]
    pub dist: Option<Dist>,
    #[serde(default)]
    pub disk: Option<DiskSpec>,
    /// Absent in records written before `[publish]` existed: the defaults.
    #[serde(default)]
    pub publish: PublishSpec,
    /// Recorded only for `deliver = "boot"`: the record of an `image` recipe keeps its bytes.
    #[serde(default, skip_serializing_if = "Ssh::is_image")]
    pub ssh: Ssh,
}

/// How an image gets its Hadoop release.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "mode")]
pub enum DistMode {
    /// The release tarball is a layer of the image.
    Bake,
    /// A shared volume (`LABEL=…` block device or `server:/export` NFS) holding
    /// `hadoop-X.Y.Z/` is mounted at [`DIST_MOUNT`] at boot; nothing of the release is baked.
    Mount { source: String },
    /// A oneshot unit fetches the tarball at first boot, checks its sha512 and unpacks it.
    FirstBoot,
}

/// Where the mount mode mounts the shared release volume.
pub const DIST_MOUNT: &str = "/srv/hadoop-dist";

/// The runtime settings of every image's config.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ImageSettings {
    pub cmd: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub env: BTreeMap<String, String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
}

/// Reads and validates a recipe file.
pub fn load(path: &Path) -> anyhow::Result<Recipe> {
    let src = crate::support::error::read_text(path, "recipe")?;
    let raw = parse(path, &src)?;
    let root = project_root(path, raw.recipe.get_ref().root.as_deref());
    let cat_dir = root.join(
        raw.recipe
            .get_ref()
            .catalogue
            .as_deref()
            .unwrap_or("hadoop-versions"),
    );
    let catalogue = Catalogue::load_dir(&cat_dir)?;
    let mut recipe = validate(path, &src, &raw, &root, &catalogue)?;
    validate::resolve_paths(&mut recipe, path, &src, &raw)?;
    Ok(recipe)
}

fn project_root(recipe_file: &Path, root: Option<&str>) -> PathBuf {
    let dir = recipe_file.parent().unwrap_or(Path::new("."));
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    dir.join(root.unwrap_or(".."))
}

impl Recipe {
    /// The image name of one Hadoop version.
    pub fn image_name(&self, version: &str) -> String {
        format!("{}:{version}", self.name)
    }

    /// The JDK choice of a version's line (None: the recipe has no JDK; the base provides Java).
    pub fn line_choice(&self, version: &str) -> Option<&LineChoice> {
        self.lines.get(&crate::recipe::hadoop::line_of(version))
    }

    pub fn jdk_for(&self, version: &str) -> Option<&Jdk> {
        self.line_choice(version).map(|c| &self.jdks[&c.jdk])
    }

    /// The layer families budgets can name: `base`, `jdk-<name>`, each `[[layer]]`, `hadoop-dist`.
    pub fn families(&self) -> std::collections::BTreeSet<String> {
        let mut f: std::collections::BTreeSet<String> = ["base".to_string()].into();
        f.extend(self.jdks.keys().map(|j| format!("jdk-{j}")));
        f.extend(self.layers.iter().map(|l| l.name.clone()));
        if self.dist.is_some() {
            f.insert("hadoop-dist".into());
        }
        f
    }

    /// Settings later commands need from the store alone.
    pub fn settings(&self) -> Settings {
        Settings {
            name: self.name.clone(),
            description: self.description.clone(),
            versions: self.versions.clone(),
            epoch: self.epoch,
            epoch_source: self.epoch_source,
            compression: self.compression,
            base: self.base.clone(),
            jdks: self.jdks.clone(),
            lines: self.lines.clone(),
            user: self.user.clone(),
            image: self.image.clone(),
            policy: self.policy.clone(),
            excludes_docs: self.excludes_docs,
            dist: self.dist.clone(),
            disk: self.disk.clone(),
            publish: self.publish.clone(),
            ssh: self.ssh.clone(),
        }
    }

    /// `SOURCE_DATE_EPOCH` (its value, when set) overrides the recipe's `epoch`, as
    /// reproducible-builds.org defines it. An empty value counts as unset.
    pub fn apply_source_date_epoch(&mut self, value: Option<&str>) -> Result<(), BadInput> {
        let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) else {
            return Ok(());
        };
        let epoch: u64 = v.parse().map_err(|_| {
            BadInput(format!(
                "SOURCE_DATE_EPOCH={v:?} is not a Unix time (seconds since 1970, e.g. 1700000000)"
            ))
        })?;
        if epoch > MAX_EPOCH {
            return Err(BadInput(format!(
                "SOURCE_DATE_EPOCH={epoch} is after 2242-03-16 ({MAX_EPOCH}), the last time a tar header holds"
            )));
        }
        self.epoch = epoch;
        self.epoch_source = EpochSource::SourceDateEpoch;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_names_line_and_nearest_key() {
        let src =
            "[recipe]\nname = \"x\"\nverions = \"all\"\nepoch = 1\n[base]\nsource = \"oci\"\n";
        let e = parse(Path::new("r.toml"), src).unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        assert_eq!(e.key, "verions");
        assert_eq!(e.hint.as_deref(), Some("did you mean `versions`?"), "{e}");
        assert!(e.to_string().starts_with("r.toml:3:"), "{e}");
    }
}
