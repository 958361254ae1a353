//! # Recipes: raw TOML → a validated model
//!
//! A recipe (`recipes/*.toml`) says which Hadoop versions to build, from which base, with which
//! JDK per Hadoop line, and which layers to stack. Parsing happens in two steps, as in ripgrep's
//! low/high args: [`parse`] deserializes `raw` structs (kebab-case keys, unknown keys rejected)
//! from a `&str`, then [`validate`] turns them into a [`Recipe`] that cannot hold an invalid
//! state. Every error names the file, the line and the key, and for an unknown key suggests the
//! nearest valid one.
//!
//! Relative paths in a recipe resolve against the project root: the recipe file's directory
//! joined with `[recipe] root` (default `".."`, since recipes live in `recipes/`).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::compress::Compression;
use crate::hadoop::Catalogue;
use crate::policy::{Enforce, Policy, RawSize};

/// A recipe problem, located in its file.
#[derive(Debug, Clone, thiserror::Error)]
pub struct RecipeError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub key: String,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for RecipeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.column)?;
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        write!(f, "{}", self.message)?;
        if let Some(h) = &self.hint {
            write!(f, "\n  hint: {h}")?;
        }
        Ok(())
    }
}

/// Line and column (1-based) of a byte offset.
fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let before = &src[..offset.min(src.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, col)
}

/// The file and text being validated, to locate errors.
struct Ctx<'a> {
    file: &'a Path,
    src: &'a str,
}

impl Ctx<'_> {
    fn err(&self, span: std::ops::Range<usize>, key: &str, msg: impl Into<String>) -> RecipeError {
        let (line, column) = line_col(self.src, span.start);
        RecipeError {
            file: self.file.to_path_buf(),
            line,
            column,
            key: key.into(),
            message: msg.into(),
            hint: None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Raw form: exactly the TOML, nothing checked beyond types and key names.

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
#[serde(untagged)]
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
    pub name: Option<String>,
    #[serde(default)]
    pub uid: Option<u32>,
    #[serde(default)]
    pub gid: Option<u32>,
    #[serde(default)]
    pub home: Option<String>,
    #[serde(default)]
    pub shell: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawSsh {
    #[serde(default)]
    pub key: Option<String>,
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

// ---------------------------------------------------------------------------------------------
// Validated model.

pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
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
}

/// Where a download comes from.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    Url(String),
    Path(PathBuf),
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
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

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Jdk {
    pub name: String,
    pub java_version: u32,
    pub java_home: String,
    pub source: JdkSource,
}

/// The JDK chosen for one Hadoop line.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct LineChoice {
    pub jdk: String,
    /// Why an unsupported pairing is accepted (None: the pairing must be supported).
    pub accept_unsupported: Option<String>,
    pub jvm_flags: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub shell: String,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct LayerSpec {
    pub name: String,
    pub dir: PathBuf,
    pub per_version: bool,
    /// This layer carries the recipe's user accounts and the cluster SSH key pair.
    pub accounts: bool,
    /// Only in disks, not in container images.
    pub disk_only: bool,
}

/// What a bootable disk needs beyond the container image.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct DiskSpec {
    pub packages: Vec<String>,
    pub size: Option<crate::policy::Size>,
    pub cmdline: Vec<String>,
    #[serde(default)]
    pub budget: Option<crate::policy::Size>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Dist {
    pub mode: DistMode,
    /// `{version}` in url/path templates is replaced by the Hadoop version.
    pub url: Option<String>,
    pub path: Option<String>,
    pub sha512: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Recipe {
    #[serde(skip)]
    pub file: PathBuf,
    #[serde(skip)]
    pub root: PathBuf,
    pub name: String,
    pub description: Option<String>,
    pub versions: Vec<String>,
    pub epoch: u64,
    pub compression: Compression,
    pub source_url: Option<String>,
    pub base: Base,
    pub jdks: BTreeMap<String, Jdk>,
    pub lines: BTreeMap<String, LineChoice>,
    pub user: User,
    /// Explicit key path from the recipe (the environment and the default place are looked at
    /// by [`crate::keys`]).
    #[serde(skip)]
    pub ssh_key: Option<PathBuf>,
    pub layers: Vec<LayerSpec>,
    pub dist: Option<Dist>,
    pub vars: serde_json::Value,
    pub image: ImageSettings,
    pub policy: Policy,
    pub disk: Option<DiskSpec>,
    /// `[base] exclude-docs` (None for non-mmdebstrap bases), for advice.
    pub excludes_docs: Option<bool>,
}

/// How an image gets its Hadoop release.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
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
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ImageSettings {
    pub cmd: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub env: BTreeMap<String, String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
}

/// Reads and validates a recipe file.
pub fn load(path: &Path) -> anyhow::Result<(Recipe, Catalogue)> {
    use anyhow::Context;
    let src = std::fs::read_to_string(path)
        .with_context(|| format!("reading recipe {}", path.display()))?;
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
    let recipe = validate(path, &src, raw, &root, &catalogue)?;
    Ok((recipe, catalogue))
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

/// Parses recipe text (no I/O).
pub fn parse(file: &Path, src: &str) -> Result<RawRecipe, RecipeError> {
    toml::from_str::<RawRecipe>(src).map_err(|e| toml_error(file, src, &e))
}

/// Turns a toml/serde error into a located [`RecipeError`] with a "did you mean" hint.
fn toml_error(file: &Path, src: &str, e: &toml::de::Error) -> RecipeError {
    let (line, column) = e.span().map(|s| line_col(src, s.start)).unwrap_or((1, 1));
    let msg = e.message().trim().to_string();
    let mut key = String::new();
    let mut hint = None;
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        let bad = rest.split('`').next().unwrap_or("");
        key = bad.to_string();
        let expected: Vec<&str> = rest.split('`').skip(2).step_by(2).collect();
        if let Some(best) = nearest(bad, &expected) {
            hint = Some(format!("did you mean `{best}`?"));
        } else if !expected.is_empty() {
            hint = Some(format!("valid keys here: {}", expected.join(", ")));
        }
    } else if let Some(rest) = msg.strip_prefix("missing field `") {
        key = rest.split('`').next().unwrap_or("").to_string();
    }
    RecipeError {
        file: file.to_path_buf(),
        line,
        column,
        key,
        message: msg,
        hint,
    }
}

/// The candidate closest to `word`, if any is close enough to be a likely typo.
pub fn nearest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (strsim::damerau_levenshtein(word, c), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min()
        .map(|(_, c)| c)
}

/// Checks a raw recipe against itself, the file system and the catalogue.
pub fn validate(
    file: &Path,
    src: &str,
    raw: RawRecipe,
    root: &Path,
    catalogue: &Catalogue,
) -> Result<Recipe, RecipeError> {
    let cx = Ctx { file, src };
    let header = raw.recipe.get_ref();

    let name = header.name.get_ref().clone();
    if !valid_name_component(&name) {
        return Err(cx.err(
            header.name.span(),
            "recipe.name",
            format!(
                "{name:?} is not a valid image name (lowercase letters, digits, `-`, `.`, `_`)"
            ),
        ));
    }

    let versions = match header.versions.get_ref() {
        RawVersions::All(s) if s == "all" => catalogue.versions(),
        RawVersions::All(s) => {
            return Err(cx.err(
                header.versions.span(),
                "recipe.versions",
                format!("expected \"all\" or a list of versions, found {s:?}"),
            ));
        }
        RawVersions::List(list) => {
            let mut seen = std::collections::BTreeSet::new();
            for v in list {
                if catalogue.get(v).is_none() {
                    let known = catalogue.versions();
                    let refs: Vec<&str> = known.iter().map(|s| s.as_str()).collect();
                    let mut e = cx.err(
                        header.versions.span(),
                        "recipe.versions",
                        format!(
                            "unknown Hadoop version {v:?}: the catalogue ({}) has {}",
                            catalogue.dir.display(),
                            refs.join(", ")
                        ),
                    );
                    e.hint = nearest(v, &refs).map(|n| format!("did you mean {n:?}?"));
                    return Err(e);
                }
                if !seen.insert(v.clone()) {
                    return Err(cx.err(
                        header.versions.span(),
                        "recipe.versions",
                        format!("version {v:?} is listed twice: it would give two images named {name}:{v}"),
                    ));
                }
            }
            list.clone()
        }
    };
    if versions.is_empty() {
        return Err(cx.err(
            header.versions.span(),
            "recipe.versions",
            "no versions to build",
        ));
    }
    let epoch = *header.epoch.get_ref();
    if epoch < 0 {
        return Err(cx.err(
            header.epoch.span(),
            "recipe.epoch",
            "must be a Unix time ≥ 0",
        ));
    }

    let resolve = |p: &str| -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            root.join(p)
        }
    };

    // Base.
    let rb = raw.base.get_ref();
    let base = match rb.source.get_ref().as_str() {
        "mmdebstrap" => {
            let suite = rb.suite.clone().unwrap_or_else(|| "bookworm".into());
            let mirror = rb.mirror.clone().unwrap_or_else(|| DEFAULT_MIRROR.into());
            let apt_sources = rb.apt_sources.clone().unwrap_or_else(|| {
                vec![
                    format!("deb {mirror} {suite} main"),
                    format!("deb {} {suite}-security main", security_mirror(&mirror)),
                ]
            });
            Base::Mmdebstrap {
                suite,
                variant: rb.variant.clone().unwrap_or_else(|| "minbase".into()),
                mirror,
                apt_sources,
                packages: rb.packages.clone(),
                exclude_docs: rb.exclude_docs.unwrap_or(true),
                proxy: rb.proxy.clone(),
            }
        }
        "tarball" | "oci" => {
            let Some(p) = &rb.path else {
                return Err(cx.err(
                    raw.base.span(),
                    "base.path",
                    "a tarball or oci base needs `path`",
                ));
            };
            let path = resolve(p.get_ref());
            if !path.exists() {
                return Err(cx.err(
                    p.span(),
                    "base.path",
                    format!("{} does not exist", path.display()),
                ));
            }
            if rb.source.get_ref() == "tarball" {
                Base::Tarball {
                    path,
                    sha256: rb.sha256.clone(),
                }
            } else {
                Base::Oci {
                    path,
                    reference: rb.reference.clone().unwrap_or_else(|| "latest".into()),
                }
            }
        }
        other => {
            let mut e = cx.err(
                rb.source.span(),
                "base.source",
                format!(
                    "unknown base source {other:?}: expected \"mmdebstrap\", \"tarball\" or \"oci\""
                ),
            );
            e.hint = nearest(other, &["mmdebstrap", "tarball", "oci"])
                .map(|n| format!("did you mean {n:?}?"));
            return Err(e);
        }
    };

    // JDKs.
    let mut jdks = BTreeMap::new();
    for (jname, rj) in &raw.jdk {
        let j = rj.get_ref();
        let key = format!("jdk.{jname}");
        if !valid_name_component(jname) {
            return Err(cx.err(
                rj.span(),
                &key,
                "JDK names use lowercase letters, digits and `-`",
            ));
        }
        let source = match (&j.tarball, j.packages.is_empty()) {
            (Some(t), true) => {
                let origin = match (&t.url, &t.path) {
                    (Some(u), None) => Origin::Url(u.clone()),
                    (None, Some(p)) => Origin::Path(resolve(p)),
                    _ => {
                        return Err(cx.err(
                            rj.span(),
                            &format!("{key}.tarball"),
                            "give exactly one of `url` or `path`",
                        ));
                    }
                };
                check_sha512(&t.sha512)
                    .map_err(|m| cx.err(rj.span(), &format!("{key}.tarball.sha512"), m))?;
                JdkSource::Tarball {
                    origin,
                    sha512: t.sha512.to_lowercase(),
                    strip_components: t.strip_components.unwrap_or(1),
                }
            }
            (None, false) => {
                if !matches!(base, Base::Mmdebstrap { .. }) {
                    return Err(cx.err(rj.span(), &format!("{key}.packages"), "a JDK from Debian packages needs an mmdebstrap base; use `tarball` with this base"));
                }
                JdkSource::Packages {
                    packages: j.packages.clone(),
                    apt_sources: j.apt_sources.clone(),
                }
            }
            _ => {
                return Err(cx.err(
                    rj.span(),
                    &key,
                    "give either `packages` (Debian) or `tarball`, not both or neither",
                ));
            }
        };
        if !j.java_home.starts_with('/') {
            return Err(cx.err(
                rj.span(),
                &format!("{key}.java-home"),
                "must be an absolute path in the image",
            ));
        }
        jdks.insert(
            jname.clone(),
            Jdk {
                name: jname.clone(),
                java_version: j.java_version,
                java_home: j.java_home.clone(),
                source,
            },
        );
    }

    // JDK per Hadoop line: every line of the chosen versions needs one, and it must be supported
    // unless the recipe accepts it, saying why.
    let mut lines = BTreeMap::new();
    for (line, rl) in &raw.lines {
        let l = rl.get_ref();
        let key = format!("lines.\"{line}\"");
        let Some(jdk) = jdks.get(l.jdk.get_ref()) else {
            let names: Vec<&str> = jdks.keys().map(|s| s.as_str()).collect();
            let mut e = cx.err(
                l.jdk.span(),
                &format!("{key}.jdk"),
                format!(
                    "no [jdk.{}] in this recipe (have: {})",
                    l.jdk.get_ref(),
                    names.join(", ")
                ),
            );
            e.hint = nearest(l.jdk.get_ref(), &names).map(|n| format!("did you mean {n:?}?"));
            return Err(e);
        };
        let facts = catalogue.line(line);
        if facts.is_empty() {
            return Err(cx.err(
                rl.span(),
                &key,
                format!("no Hadoop version of line {line} in the catalogue"),
            ));
        }
        let supported = &facts[0].java.runtime;
        if !supported.contains(&jdk.java_version) && l.accept_unsupported.is_none() {
            let mut e = cx.err(
                rl.span(),
                &key,
                format!(
                    "Hadoop {line} supports Java {} at run time, but JDK {:?} is Java {}",
                    join_nums(supported),
                    jdk.name,
                    jdk.java_version
                ),
            );
            e.hint = Some(format!(
                "pick a supported JDK, or accept the pairing with `accept-unsupported = \"<why>\"` in [lines.\"{line}\"]"
            ));
            return Err(e);
        }
        lines.insert(
            line.clone(),
            LineChoice {
                jdk: jdk.name.clone(),
                accept_unsupported: l.accept_unsupported.clone(),
                jvm_flags: l.jvm_flags.clone(),
            },
        );
    }
    // A recipe without any [jdk] relies on its base for Java: no JDK layer, no per-line choice.
    for v in versions.iter().filter(|_| !jdks.is_empty()) {
        let line = crate::hadoop::line_of(v);
        if !lines.contains_key(&line) {
            return Err(cx.err(
                raw.recipe.span(),
                "lines",
                format!("Hadoop {v} needs a JDK: add [lines.\"{line}\"] with `jdk = \"<name>\"`"),
            ));
        }
    }

    let ru = raw.user.as_ref();
    let user = User {
        name: ru
            .and_then(|u| u.name.clone())
            .unwrap_or_else(|| "hadoop".into()),
        uid: ru.and_then(|u| u.uid).unwrap_or(1000),
        gid: ru.and_then(|u| u.gid).unwrap_or(1000),
        home: ru
            .and_then(|u| u.home.clone())
            .unwrap_or_else(|| "/home/hadoop".into()),
        shell: ru
            .and_then(|u| u.shell.clone())
            .unwrap_or_else(|| "/bin/bash".into()),
    };

    // Layers: directories must exist and stay inside the project root.
    let canon_root = root.canonicalize().map_err(|e| {
        cx.err(
            raw.recipe.span(),
            "recipe.root",
            format!("project root {} is not usable: {e}", root.display()),
        )
    })?;
    let mut layers = Vec::new();
    let mut names = std::collections::BTreeSet::new();
    for rl in &raw.layer {
        let l = rl.get_ref();
        let lname = l.name.get_ref();
        if !valid_name_component(lname) || ["base", "jdk", "hadoop-dist"].contains(&lname.as_str())
        {
            return Err(cx.err(
                l.name.span(),
                "layer.name",
                format!("{lname:?} is not a valid layer name (reserved: base, jdk, hadoop-dist)"),
            ));
        }
        if !names.insert(lname.clone()) {
            return Err(cx.err(
                l.name.span(),
                "layer.name",
                format!("two layers are named {lname:?}"),
            ));
        }
        let dir = resolve(l.dir.get_ref());
        let canon = dir.canonicalize().map_err(|_| {
            cx.err(
                l.dir.span(),
                "layer.dir",
                format!("layer directory {} does not exist", dir.display()),
            )
        })?;
        if !canon.starts_with(&canon_root) {
            return Err(cx.err(
                l.dir.span(),
                "layer.dir",
                format!(
                    "layer directory {} resolves to {}, outside the project root {}; refused",
                    l.dir.get_ref(),
                    canon.display(),
                    canon_root.display()
                ),
            ));
        }
        if !canon.is_dir() {
            return Err(cx.err(
                l.dir.span(),
                "layer.dir",
                format!("{} is not a directory", dir.display()),
            ));
        }
        layers.push(LayerSpec {
            name: lname.clone(),
            dir: canon,
            per_version: l.per_version,
            accounts: l.accounts,
            disk_only: l.disk_only,
        });
    }
    if layers.iter().filter(|l| l.accounts).count() > 1 {
        return Err(cx.err(
            raw.recipe.span(),
            "layer.accounts",
            "only one layer may carry the accounts",
        ));
    }
    if layers.iter().any(|l| l.accounts && l.per_version) {
        return Err(cx.err(
            raw.recipe.span(),
            "layer.accounts",
            "the accounts layer is shared: it cannot be per-version",
        ));
    }

    let dist = match &raw.dist {
        None => None,
        Some(rd) => {
            let d = rd.get_ref();
            let mode = match d.mode.get_ref().as_str() {
                "bake" => DistMode::Bake,
                "first-boot" => DistMode::FirstBoot,
                "mount" => match &d.source {
                    Some(src) => DistMode::Mount {
                        source: src.clone(),
                    },
                    None => {
                        return Err(cx.err(rd.span(), "dist.source", "mount mode needs `source`: \"LABEL=<fs label>\" or \"<server>:/<export>\""));
                    }
                },
                other => {
                    let mut e = cx.err(
                        d.mode.span(),
                        "dist.mode",
                        format!(
                            "unknown mode {other:?}: expected \"bake\", \"mount\" or \"first-boot\""
                        ),
                    );
                    e.hint = nearest(other, &["bake", "mount", "first-boot"])
                        .map(|n| format!("did you mean {n:?}?"));
                    return Err(e);
                }
            };
            if d.url.is_some() && d.path.is_some() {
                return Err(cx.err(rd.span(), "dist", "give `url` or `path`, not both"));
            }
            for (v, s) in &d.sha512 {
                check_sha512(s)
                    .map_err(|m| cx.err(rd.span(), &format!("dist.sha512.\"{v}\""), m))?;
            }
            for v in versions
                .iter()
                .filter(|_| !matches!(mode, DistMode::Mount { .. }))
            {
                let pinned = d.sha512.contains_key(v)
                    || catalogue
                        .get(v)
                        .and_then(|f| f.dist.sha512.as_ref())
                        .is_some();
                if !pinned {
                    return Err(cx.err(
                        rd.span(),
                        "dist.sha512",
                        format!("no pinned sha512 for Hadoop {v}: add it under [dist.sha512]"),
                    ));
                }
            }
            Some(Dist {
                mode,
                url: d.url.clone(),
                path: d
                    .path
                    .as_ref()
                    .map(|p| resolve(p).to_string_lossy().into_owned()),
                sha512: d
                    .sha512
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_lowercase()))
                    .collect(),
            })
        }
    };

    // Policy: budgets, reuse floor, enforcement.
    let size = |v: &Spanned<RawSize>, key: &str| -> Result<crate::policy::Size, RecipeError> {
        v.get_ref().parse().map_err(|m| cx.err(v.span(), key, m))
    };
    let mut policy = Policy::default();
    if let Some(rp) = &raw.policy {
        let p = rp.get_ref();
        if let Some(e) = &p.enforce {
            policy.enforce = match e.get_ref().as_str() {
                "fail" => Enforce::Fail,
                "warn" => Enforce::Warn,
                other => {
                    return Err(cx.err(
                        e.span(),
                        "policy.enforce",
                        format!("{other:?}: expected \"fail\" or \"warn\""),
                    ));
                }
            };
        }
        if let Some(b) = &p.image_budget {
            policy.image_budget = Some(size(b, "policy.image-budget")?);
        }
        if let Some(b) = &p.per_version_budget {
            policy.per_version_budget = Some(size(b, "policy.per-version-budget")?);
        }
        if let Some(m) = &p.min_shared {
            let r = *m.get_ref();
            if !(0.0..=1.0).contains(&r) {
                return Err(cx.err(
                    m.span(),
                    "policy.min-shared",
                    format!("{r} is outside 0–1 (a fraction of each image's bytes)"),
                ));
            }
            policy.min_shared = Some(r);
        }
    }
    if let Some(b) = &raw.base.get_ref().budget {
        policy
            .layer_budgets
            .insert("base".into(), size(b, "base.budget")?);
    }
    for (jname, rj) in &raw.jdk {
        if let Some(b) = &rj.get_ref().budget {
            policy.layer_budgets.insert(
                format!("jdk-{jname}"),
                size(b, &format!("jdk.{jname}.budget"))?,
            );
        }
    }
    for rl in &raw.layer {
        if let Some(b) = &rl.get_ref().budget {
            policy.layer_budgets.insert(
                rl.get_ref().name.get_ref().clone(),
                size(b, "layer.budget")?,
            );
        }
    }
    if let Some(rd) = &raw.dist
        && let Some(b) = &rd.get_ref().budget
    {
        policy
            .layer_budgets
            .insert("hadoop-dist".into(), size(b, "dist.budget")?);
    }
    let disk = match &raw.disk {
        None => None,
        Some(rd) => {
            let d = rd.get_ref();
            if !d.packages.is_empty() && !matches!(base, Base::Mmdebstrap { .. }) {
                return Err(cx.err(
                    rd.span(),
                    "disk.packages",
                    "disk-only packages need an mmdebstrap base",
                ));
            }
            let budget = match &d.budget {
                Some(b) => Some(size(b, "disk.budget")?),
                None => None,
            };
            let disk_size = match &d.size {
                Some(sz) => Some(size(sz, "disk.size")?),
                None => None,
            };
            Some(DiskSpec {
                packages: d.packages.clone(),
                size: disk_size,
                cmdline: d.cmdline.clone(),
                budget,
            })
        }
    };
    if layers
        .iter()
        .any(|l| l.disk_only && (l.per_version || l.accounts))
    {
        return Err(cx.err(
            raw.recipe.span(),
            "layer.disk-only",
            "a disk-only layer is shared: it cannot be per-version or carry the accounts",
        ));
    }
    let excludes_docs = match &base {
        Base::Mmdebstrap { exclude_docs, .. } => Some(*exclude_docs),
        _ => None,
    };

    let vars = serde_json::to_value(&raw.vars).unwrap_or(serde_json::Value::Null);
    let root = canon_root;
    Ok(Recipe {
        file: file.to_path_buf(),
        root,
        name,
        description: header.description.clone(),
        versions,
        epoch: epoch as u64,
        compression: header.compression.unwrap_or(Compression::Gzip),
        source_url: header.source.clone(),
        base,
        jdks,
        lines,
        user,
        ssh_key: raw.ssh.as_ref().and_then(|s| s.key.as_deref()).map(resolve),
        layers,
        dist,
        vars,
        image: raw
            .image
            .map(|i| ImageSettings {
                cmd: i.cmd,
                entrypoint: i.entrypoint,
                env: i.env,
                working_dir: i.working_dir,
                user: i.user,
            })
            .unwrap_or_default(),
        policy,
        disk,
        excludes_docs,
    })
}

fn security_mirror(mirror: &str) -> String {
    match mirror.strip_suffix("/debian") {
        Some(host) => format!("{host}/debian-security"),
        None => format!("{mirror}-security"),
    }
}

fn join_nums(v: &[u32]) -> String {
    v.iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn check_sha512(s: &str) -> Result<(), String> {
    if s.len() == 128 && s.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(format!(
            "expected 128 hex digits, found {} characters",
            s.len()
        ))
    }
}

/// Lowercase letters, digits, and `-._` not at the ends: valid in an OCI/Docker repository name.
pub fn valid_name_component(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-._".contains(c))
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars().last().is_some_and(|c| c.is_ascii_alphanumeric())
}

impl Recipe {
    /// The image name of one Hadoop version.
    pub fn image_name(&self, version: &str) -> String {
        format!("{}:{version}", self.name)
    }

    /// The JDK choice of a version's line (None: the recipe has no JDK; the base provides Java).
    pub fn line_choice(&self, version: &str) -> Option<&LineChoice> {
        self.lines.get(&crate::hadoop::line_of(version))
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
    pub fn settings(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "description": self.description,
            "versions": self.versions,
            "epoch": self.epoch,
            "compression": self.compression,
            "base": self.base,
            "jdks": self.jdks,
            "lines": self.lines,
            "user": self.user,
            "image": self.image,
            "policy": self.policy,
            "excludes-docs": self.excludes_docs,
            "dist": self.dist,
            "disk": self.disk,
        })
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

    #[test]
    fn nearest_ignores_far_words() {
        assert_eq!(nearest("packges", &["packages", "suite"]), Some("packages"));
        assert_eq!(nearest("zzzzzz", &["packages", "suite"]), None);
    }

    #[test]
    fn names() {
        assert!(valid_name_component("hadoop-lab"));
        assert!(!valid_name_component("Hadoop"));
        assert!(!valid_name_component("-x"));
    }

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("a\nbc\n", 3), (2, 2));
    }
}
