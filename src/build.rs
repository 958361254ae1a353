//! # Build: recipe → plan → layers → images → one atomic index update
//!
//! 1. **Plan.** Load the recipe and the catalogue, find the cluster key, prepare the base (cached
//!    by its inputs), render every directory layer, and give each layer a key: the hash of its
//!    inputs (rendered entries and their content hashes, the base's content identity, pinned
//!    checksums, the tar format, the compression and the epoch).
//! 2. **Layers.** A layer whose key has a record in the cache is not rebuilt. Others are written
//!    as deterministic tar → diff_id hash → compressor → blob hash → `cache/blobs`, in one
//!    streaming pass.
//! 3. **Commit.** Only now is the store touched, under its lock: layer blobs are hard-linked in,
//!    configs and manifests written, and `index.json` replaced last. Any error before this point
//!    (a bad recipe, template, download or tarball) leaves the store exactly as it was.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use oci_spec::image::{ANNOTATION_REVISION, ImageIndexBuilder, MediaType};
use serde::Serialize;

use crate::base::{self, BaseInfo, PreparedBase};
use crate::cache::{Cache, key_of};
use crate::hadoop::{Catalogue, Facts};
use crate::keys::{self, ClusterKey};
use crate::layer::{self, Entry, Kind, TAR_FORMAT};
use crate::oci::{self, ImageSpec};
use crate::policy::{BudgetExceeded, FileInfo, ImageSizes, LayerSize, Overrides, Verdicts};
use crate::progress::Progress;
use crate::recipe::{Base, DIST_MOUNT, DistMode, Origin, Recipe};
use crate::render::{self, Context as RenderContext};
use crate::store::{
    ANNOTATION_IMAGE_NAME, ANNOTATION_RECORD, BlobInfo, BlobWriter, ImageRecord, LayerFacts,
    LayerRecord, Store, StoreRecord, Tee, canonical_json,
};

/// Options of `strata build` and `strata plan`.
#[derive(Debug, Clone)]
pub struct Options {
    pub recipe: PathBuf,
    pub output: PathBuf,
    pub cache: Option<PathBuf>,
    pub no_cache: bool,
    pub refresh_base: bool,
    pub only: Vec<String>,
    pub quiet: bool,
    /// `--image-budget`, `--layer-budget`, `--min-shared`.
    pub overrides: Overrides,
}

/// How a planned layer gets its entries.
enum Producer {
    /// The base rootfs tar.
    Rootfs,
    /// A JDK (by name).
    Jdk(String),
    /// Already rendered entries (directory and accounts layers).
    Entries(Vec<Entry>),
    /// A Hadoop release tarball.
    Dist {
        version: String,
        origin: Origin,
        sha512: String,
    },
    /// A layer of an OCI base, reused as it is.
    Imported(LayerFacts, PathBuf),
    /// The disk-only packages over the base and this JDK (by name).
    Disk(Option<String>),
}

/// One layer of the plan.
pub struct PlannedLayer {
    pub name: String,
    /// What budgets name it by: `base`, `jdk-<name>`, the `[[layer]]` name, `hadoop-dist`.
    pub family: String,
    pub key: String,
    producer: Producer,
}

/// The plan: every distinct layer once, and each image's layer list (by index).
pub struct Plan {
    pub recipe: Recipe,
    pub catalogue: Catalogue,
    pub layers: Vec<PlannedLayer>,
    pub images: Vec<PlannedImage>,
    /// The layers a version's disk adds to its image (disk-only packages and layers), by version.
    pub disk_layers: BTreeMap<String, Vec<usize>>,
    base: Option<PreparedBase>,
    cluster_key: Option<ClusterKey>,
}

pub struct PlannedImage {
    pub name: String,
    pub tag: String,
    pub version: Option<String>,
    pub layers: Vec<usize>,
}

/// What `build` did, for people and for `--json`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct BuildReport {
    pub recipe: String,
    pub output: PathBuf,
    pub images: Vec<ImageSummary>,
    pub layers_total: usize,
    pub layers_built: usize,
    pub layers_cached: usize,
    pub index_changed: bool,
    pub seconds: f64,
    /// Budgets and sharing (absent when the recipe sets no policy).
    pub policy: Option<Verdicts>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ImageSummary {
    pub name: String,
    pub manifest: String,
    pub size: u64,
    pub layers: Vec<String>,
    pub carries_private_key: bool,
}

fn open_cache(opts: &Options) -> Result<Cache> {
    if opts.no_cache {
        let near = opts
            .output
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        return Cache::temporary(near);
    }
    Cache::open(&opts.cache.clone().unwrap_or_else(Cache::default_dir))
}

/// Makes the plan: everything is decided and validated; nothing touches the store.
pub fn make_plan(
    opts: &Options,
    cache: &Cache,
    progress: &Progress,
    prepare_base: bool,
) -> Result<Plan> {
    let (recipe, catalogue) = crate::recipe::load(&opts.recipe)?;
    for v in &opts.only {
        if !recipe.versions.contains(v) {
            bail!(
                "--only {v}: the recipe builds {}",
                recipe.versions.join(", ")
            );
        }
    }
    let compression = recipe.compression;
    let epoch = recipe.epoch;
    let fmt_key = |kind: &str, inputs: serde_json::Value| {
        key_of(&serde_json::json!({
            "kind": kind, "inputs": inputs, "tar": TAR_FORMAT, "compression": compression.key(), "epoch": epoch,
        }))
    };

    let mut layers: Vec<PlannedLayer> = Vec::new();
    let mut by_key: HashMap<String, usize> = HashMap::new();
    let mut add = |layers: &mut Vec<PlannedLayer>,
                   family: &str,
                   name: String,
                   key: String,
                   producer: Producer|
     -> usize {
        *by_key.entry(key.clone()).or_insert_with(|| {
            layers.push(PlannedLayer {
                name,
                family: family.to_string(),
                key,
                producer,
            });
            layers.len() - 1
        })
    };

    // Base.
    let mut base_layers = Vec::new();
    let mut prepared = None;
    let mut base_identity: Option<String> = None;
    let mut base_info = BaseInfo::default();
    match &recipe.base {
        Base::Oci { path, reference } => {
            let imported = import_oci_base(path, reference)?;
            for (i, (rec, blob)) in imported.into_iter().enumerate() {
                let key = format!("oci-{}", rec.digest.digest());
                base_layers.push(add(
                    &mut layers,
                    "base",
                    format!("base-{i}"),
                    key,
                    Producer::Imported(rec, blob),
                ));
            }
            let ident = key_of(
                &base_layers
                    .iter()
                    .map(|&i| layers[i].key.clone())
                    .collect::<Vec<_>>(),
            );
            base_info = oci_base_info(cache, &ident, &layers, &base_layers)?;
            for &i in &base_layers {
                if let Producer::Imported(rec, _) = &mut layers[i].producer {
                    rec.uncompressed_size = base_info
                        .layer_sizes
                        .get(&rec.digest.to_string())
                        .copied()
                        .unwrap_or(0);
                }
            }
            base_identity = Some(ident);
        }
        b => {
            let tar_sha = match b {
                Base::Tarball { path, sha256 } => {
                    let d = cache.file_sha256(path)?;
                    if let Some(want) = sha256
                        && !want.eq_ignore_ascii_case(&d)
                    {
                        bail!(
                            "checksum mismatch for base tarball {}: expected sha256 {want}, found {d}",
                            path.display()
                        );
                    }
                    Some(d)
                }
                _ => None,
            };
            let key = base::base_key(b, epoch, tar_sha.as_deref());
            if prepare_base || opts.refresh_base {
                let p = base::ensure_base(cache, b, &key, epoch, opts.refresh_base, progress)?;
                base_info = p.info.clone();
                base_identity = Some(rootfs_identity(&p)?);
                prepared = Some(p);
            } else if let Some(info) =
                cache.read_json::<BaseInfo>(&cache.base_dir(&key).join("info.json"))
            {
                let p = PreparedBase {
                    key: key.clone(),
                    rootfs: cache.base_dir(&key).join("rootfs.tar"),
                    info: info.clone(),
                };
                base_identity = Some(rootfs_identity(&p)?);
                base_info = info;
                prepared = Some(p);
            }
            let ident = base_identity
                .clone()
                .unwrap_or_else(|| format!("unbuilt-{key}"));
            base_layers.push(add(
                &mut layers,
                "base",
                "base".into(),
                fmt_key("base", serde_json::json!(ident)),
                Producer::Rootfs,
            ));
        }
    }
    let base_ident = base_identity.clone().unwrap_or_default();

    // A recipe without a JDK relies on the base's /opt/java (JAVA_HOME of every image).
    if recipe.jdks.is_empty()
        && let Some(homes) = &base_info.java_homes
        && !homes.iter().any(|h| h == &format!("/{}", base::JAVA_LINK))
    {
        let found = if homes.is_empty() {
            "no JDK at all".to_string()
        } else {
            format!("a JDK at {}", homes.join(", "))
        };
        crate::bad!(
            "the recipe has no [jdk], so the images use the base's Java at /{}, but the base has {found}: \
             add a [jdk] table, or make /{} a link to the base's JDK",
            base::JAVA_LINK,
            base::JAVA_LINK
        );
    }

    // JDKs in use.
    let mut jdk_layer = BTreeMap::new();
    for v in &recipe.versions {
        let Some(jdk) = recipe.jdk_for(v) else {
            continue;
        };
        if jdk_layer.contains_key(&jdk.name) {
            continue;
        }
        let key = fmt_key("jdk", serde_json::json!(base::jdk_key(jdk, &base_ident)));
        let idx = add(
            &mut layers,
            &format!("jdk-{}", jdk.name),
            format!("jdk-{}", jdk.name),
            key,
            Producer::Jdk(jdk.name.clone()),
        );
        jdk_layer.insert(jdk.name.clone(), idx);
    }

    // Directory layers.
    let cluster_key = if recipe.layers.iter().any(|l| l.accounts) {
        Some(keys::cluster_key(&recipe.name, recipe.ssh_key.as_deref())?)
    } else {
        None
    };
    let recipe_value = serde_json::json!({"name": recipe.name, "epoch": recipe.epoch, "description": recipe.description});
    let mut shared = Vec::new();
    let mut disk_only = Vec::new();
    for spec in recipe.layers.iter().filter(|l| !l.per_version) {
        let cx = RenderContext {
            recipe: recipe_value.clone(),
            user: recipe.user.clone(),
            hadoop: None,
            jdk: None,
            vars: recipe.vars.clone(),
        };
        let mut entries =
            render::render_dir(&spec.dir, &cx).with_context(|| format!("layer {}", spec.name))?;
        if spec.accounts {
            let key = cluster_key.as_ref().expect("loaded above");
            let acc = crate::accounts::entries(&base_info.accounts, &recipe.user, key, epoch)?;
            let generated: BTreeSet<String> = acc.iter().map(|e| e.path.clone()).collect();
            entries.retain(|e| !generated.contains(&e.path));
            entries.extend(acc);
        }
        let entries = layer::normalize(entries).with_context(|| format!("layer {}", spec.name))?;
        let mut inputs = serde_json::json!(entries_key(&entries)?);
        if spec.accounts {
            // The accounts depend on the base's own account files.
            inputs = serde_json::json!([inputs, base_ident]);
        }
        let key = fmt_key("dir", inputs);
        let idx = add(
            &mut layers,
            &spec.name,
            spec.name.clone(),
            key,
            Producer::Entries(entries),
        );
        if spec.disk_only {
            disk_only.push(idx)
        } else {
            shared.push(idx)
        }
    }

    // Images.
    let selected: Vec<&String> = recipe
        .versions
        .iter()
        .filter(|v| opts.only.is_empty() || opts.only.contains(v))
        .collect();
    let mut images = Vec::new();
    let mut disk_layers = BTreeMap::new();
    for v in selected {
        let facts = catalogue.get(v).expect("validated");
        let mut list = base_layers.clone();
        if let Some(jdk) = recipe.jdk_for(v) {
            list.push(jdk_layer[&jdk.name]);
        }
        list.extend(&shared);
        if let Some(dist) = &recipe.dist {
            let sha512 = dist
                .sha512
                .get(v)
                .cloned()
                .or_else(|| facts.dist.sha512.clone());
            let url = match &dist.url {
                Some(u) => u.replace("{version}", v),
                None => facts.dist.url.clone(),
            };
            let (key, producer) = match &dist.mode {
                DistMode::Bake => {
                    let sha512 = sha512.expect("validated: bake needs a pin");
                    let origin = match &dist.path {
                        Some(p) => Origin::Path(PathBuf::from(p.replace("{version}", v))),
                        None => Origin::Url(url),
                    };
                    let key = fmt_key("dist", serde_json::json!({"sha512": sha512, "version": v}));
                    (
                        key,
                        Producer::Dist {
                            version: v.clone(),
                            origin,
                            sha512,
                        },
                    )
                }
                mode => {
                    let entries =
                        layer::normalize(dist_unit_entries(mode, v, &url, sha512.as_deref()))?;
                    (
                        fmt_key("dir", serde_json::json!(entries_key(&entries)?)),
                        Producer::Entries(entries),
                    )
                }
            };
            list.push(add(
                &mut layers,
                "hadoop-dist",
                format!("hadoop-dist-{v}"),
                key,
                producer,
            ));
        }
        let cx = version_context(&recipe, &recipe_value, facts);
        for spec in recipe.layers.iter().filter(|l| l.per_version) {
            let entries = render::render_dir(&spec.dir, &cx)
                .with_context(|| format!("layer {} for Hadoop {v}", spec.name))?;
            let entries = layer::normalize(entries)
                .with_context(|| format!("layer {} for Hadoop {v}", spec.name))?;
            let key = fmt_key("dir", serde_json::json!(entries_key(&entries)?));
            list.push(add(
                &mut layers,
                &spec.name,
                format!("{}-{v}", spec.name),
                key,
                Producer::Entries(entries),
            ));
        }
        images.push(PlannedImage {
            name: recipe.image_name(v),
            tag: v.clone(),
            version: Some(v.clone()),
            layers: list,
        });
        if let Some(disk) = &recipe.disk {
            let mut dl = Vec::new();
            if !disk.packages.is_empty() {
                let jdk = recipe.jdk_for(v);
                let key = fmt_key(
                    "disk",
                    serde_json::json!({
                        "base": base_ident,
                        "jdk": jdk.map(|j| base::jdk_key(j, &base_ident)),
                        "packages": disk.packages,
                    }),
                );
                let producer = Producer::Disk(jdk.map(|j| j.name.clone()));
                dl.push(add(
                    &mut layers,
                    "disk",
                    "disk-packages".into(),
                    key,
                    producer,
                ));
            }
            dl.extend(&disk_only);
            disk_layers.insert(v.clone(), dl);
        }
    }
    // `<recipe>:base`: the layers every version of the recipe shares, as an image of its own.
    let one_jdk: BTreeSet<_> = recipe
        .versions
        .iter()
        .map(|v| recipe.jdk_for(v).map(|j| j.name.clone()))
        .collect();
    let mut base_list = base_layers.clone();
    if let [Some(only)] = one_jdk.iter().collect::<Vec<_>>().as_slice() {
        base_list.push(jdk_layer[only]);
    }
    base_list.extend(&shared);
    images.push(PlannedImage {
        name: format!("{}:base", recipe.name),
        tag: "base".into(),
        version: None,
        layers: base_list,
    });

    Ok(Plan {
        recipe,
        catalogue,
        layers,
        images,
        disk_layers,
        base: prepared,
        cluster_key,
    })
}

/// The sizes of the version images (not `<recipe>:base`), from what `size_of` knows of each
/// planned layer: (identity, uncompressed bytes, stored bytes, estimated).
fn image_sizes(
    plan: &Plan,
    size_of: impl Fn(usize) -> Option<(String, u64, u64, bool)>,
) -> Vec<ImageSizes> {
    plan.images
        .iter()
        .filter(|i| i.version.is_some())
        .map(|img| ImageSizes {
            name: img.name.clone(),
            layers: img
                .layers
                .iter()
                .map(|&i| {
                    let known = size_of(i);
                    LayerSize {
                        id: known
                            .as_ref()
                            .map(|k| k.0.clone())
                            .unwrap_or_else(|| plan.layers[i].key.clone()),
                        name: plan.layers[i].name.clone(),
                        family: plan.layers[i].family.clone(),
                        bytes: known.as_ref().map(|k| k.1),
                        stored: known.as_ref().map(|k| k.2).filter(|s| *s > 0),
                        estimated: known.as_ref().is_some_and(|k| k.3),
                    }
                })
                .collect(),
        })
        .collect()
}

/// The file lists advice needs: the layers named by broken checks, the biggest layer of an
/// image over budget, every per-version layer when sharing is short, and the base.
fn advice_files(
    plan: &Plan,
    v: &Verdicts,
    sizes: &[ImageSizes],
    blob_of: impl Fn(usize) -> Option<(PathBuf, String)>,
) -> Result<BTreeMap<String, Vec<FileInfo>>> {
    let mut wanted: BTreeSet<String> = BTreeSet::new();
    let sharing_short = v
        .broken()
        .iter()
        .any(|c| c.kind == "min-shared" || c.kind == "per-version");
    for c in v.broken() {
        match c.kind.as_str() {
            "layer" => {
                wanted.insert(c.subject.clone());
            }
            "image" => {
                if let Some(img) = sizes.iter().find(|i| i.name == c.subject)
                    && let Some(big) = img.layers.iter().max_by_key(|l| l.bytes.unwrap_or(0))
                {
                    wanted.insert(big.name.clone());
                }
            }
            _ => {}
        }
    }
    wanted.insert("base".into());
    let mut out = BTreeMap::new();
    for (i, l) in plan.layers.iter().enumerate() {
        let users = sizes
            .iter()
            .filter(|s| s.layers.iter().any(|x| x.name == l.name))
            .count();
        let per_version = users == 1;
        if !(wanted.contains(&l.name) || (sharing_short && per_version)) {
            continue;
        }
        if let Some((blob, media)) = blob_of(i) {
            out.insert(
                l.name.clone(),
                crate::inspect::blob_files(&blob, &media, per_version)?,
            );
        }
    }
    Ok(out)
}

/// The per-version part of the `mount` and `first-boot` modes: what the shared
/// `strata-hadoop-dist` script (user-env layer) reads at boot, and for `mount` the link from
/// /opt/hadoop-X.Y.Z into the mounted volume.
fn dist_unit_entries(
    mode: &DistMode,
    version: &str,
    url: &str,
    sha512: Option<&str>,
) -> Vec<Entry> {
    let mut env = format!(
        "# How this image gets Hadoop {version} (strata [dist]); read by strata-hadoop-dist at boot.\n\
         STRATA_DIST_VERSION={version}\nSTRATA_DIST_TARGET=/opt/hadoop-{version}\n"
    );
    let mut out = Vec::new();
    match mode {
        DistMode::Mount { source } => {
            env.push_str(&format!("STRATA_DIST_MODE=mount\nSTRATA_DIST_SOURCE={source}\nSTRATA_DIST_MOUNT={DIST_MOUNT}\n"));
            out.push(Entry::dir(DIST_MOUNT.trim_start_matches('/'), 0o755, 0, 0));
            out.push(Entry::symlink(
                &format!("opt/hadoop-{version}"),
                &format!("{DIST_MOUNT}/hadoop-{version}"),
            ));
        }
        DistMode::FirstBoot => {
            env.push_str(&format!(
                "STRATA_DIST_MODE=first-boot\nSTRATA_DIST_URL={url}\nSTRATA_DIST_SHA512={}\n",
                sha512.unwrap_or_default()
            ));
        }
        DistMode::Bake => {}
    }
    out.push(Entry::file(
        "etc/strata/hadoop-dist.env",
        layer::Content::bytes(env),
        0o644,
        0,
        0,
    ));
    out
}

/// The content identity of a prepared base rootfs (its SHA-256, computed once).
fn rootfs_identity(p: &PreparedBase) -> Result<String> {
    let marker = p.rootfs.with_file_name("rootfs.sha256");
    if let Ok(s) = std::fs::read_to_string(&marker) {
        return Ok(s.trim().to_string());
    }
    let (d, _) = crate::store::hash_reader(
        std::fs::File::open(&p.rootfs)
            .with_context(|| format!("opening {}", p.rootfs.display()))?,
    )?;
    crate::store::atomic_write(&marker, d.digest().as_bytes())?;
    Ok(d.digest().to_string())
}

/// A content key of rendered entries: metadata and content hashes, in order.
fn entries_key(entries: &[Entry]) -> Result<Vec<String>> {
    entries
        .iter()
        .map(|e| {
            Ok(match &e.kind {
                Kind::File(c) => format!("{} {}", e.meta_key(), hex::encode(c.sha256()?)),
                _ => e.meta_key(),
            })
        })
        .collect()
}

/// The template context of one Hadoop version.
pub fn version_context(
    recipe: &Recipe,
    recipe_value: &serde_json::Value,
    facts: &Facts,
) -> RenderContext {
    let jdk = match (
        recipe.jdk_for(&facts.version),
        recipe.line_choice(&facts.version),
    ) {
        (Some(jdk), Some(choice)) => {
            let mut flags = crate::hadoop::compat_jvm_flags(&facts.java.runtime, jdk.java_version);
            flags.extend(choice.jvm_flags.iter().cloned());
            serde_json::json!({
                "name": jdk.name,
                "java_version": jdk.java_version,
                "java_home": jdk.java_home,
                "jvm_flags": flags,
                "unsupported": choice.accept_unsupported,
            })
        }
        // The base provides Java at /opt/java; nothing is known of its version.
        _ => serde_json::json!({
            "name": "base", "java_version": null, "java_home": format!("/{}", base::JAVA_LINK),
            "jvm_flags": [], "unsupported": null,
        }),
    };
    let mut hadoop = serde_json::to_value(facts).expect("facts serialize");
    hadoop["ports"] = serde_json::to_value(facts.ports()).expect("ports serialize");
    hadoop["major"] = facts.major().into();
    RenderContext {
        recipe: recipe_value.clone(),
        user: recipe.user.clone(),
        hadoop: Some(hadoop),
        jdk: Some(jdk),
        vars: recipe.vars.clone(),
    }
}

/// The account files and packages of an OCI base (read from its layers once, then cached).
fn oci_base_info(
    cache: &Cache,
    ident: &str,
    layers: &[PlannedLayer],
    idxs: &[usize],
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
    for &i in idxs {
        let Producer::Imported(rec, blob) = &layers[i].producer else {
            continue;
        };
        let f = std::fs::File::open(blob)?;
        let r = crate::compress::Compression::reader_for(
            &MediaType::from(rec.media_type.as_str()),
            std::io::BufReader::new(f),
        )?;
        let counted = std::cell::Cell::new(0u64);
        let r = CountingReader {
            inner: r,
            n: &counted,
        };
        layer::for_each_in_tar(r, |p, h, data| {
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
        })?;
        sizes.insert(rec.digest.to_string(), counted.get());
    }
    let entries: Vec<Entry> = found.into_values().collect();
    let info = BaseInfo {
        packages: base::dpkg_packages(&entries)?,
        accounts: crate::accounts::BaseAccounts::from_entries(&entries)?,
        java_homes: Some(base::java_homes(&java)),
        layer_sizes: sizes,
    };
    cache.write_json(&path, &info)?;
    Ok(info)
}

struct CountingReader<'a, R> {
    inner: R,
    n: &'a std::cell::Cell<u64>,
}

impl<R: std::io::Read> std::io::Read for CountingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.n.set(self.n.get() + k as u64);
        Ok(k)
    }
}

/// Reads the layers of an OCI image layout used as a base.
fn import_oci_base(path: &Path, reference: &str) -> Result<Vec<(LayerFacts, PathBuf)>> {
    let store = Store::open(path).with_context(|| format!("OCI base {}", path.display()))?;
    let index = store.read_index()?;
    let entry = index
        .manifests()
        .iter()
        .find(|m| {
            m.annotations().as_ref().is_some_and(|a| {
                a.get(oci_spec::image::ANNOTATION_REF_NAME)
                    .map(String::as_str)
                    == Some(reference)
                    || a.get(ANNOTATION_IMAGE_NAME).map(String::as_str) == Some(reference)
            })
        })
        .with_context(|| format!("OCI base {}: no image named {reference:?}", path.display()))?;
    let manifest = store.read_manifest(entry.digest())?;
    let config: oci_spec::image::ImageConfiguration =
        serde_json::from_slice(&store.read_blob(manifest.config().digest())?)?;
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
                diff_id: diff.parse()?,
                size: l.size(),
                uncompressed_size: 0,
                media_type: l.media_type().to_string(),
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

/// Builds one layer (or finds it in the cache); returns its record and whether it was built.
fn ensure_layer(
    plan: &Plan,
    idx: usize,
    cache: &Cache,
    progress: &Progress,
    base_entries: &mut Option<Vec<Entry>>,
) -> Result<(LayerFacts, PathBuf, bool)> {
    let pl = &plan.layers[idx];
    if let Producer::Imported(rec, blob) = &pl.producer {
        return Ok((rec.clone(), blob.clone(), false));
    }
    let rec_path = cache.layer_record_path(&pl.key);
    if let Some(rec) = cache.read_json::<LayerFacts>(&rec_path) {
        let blob = cache.blob_dir().join(rec.digest.digest());
        if std::fs::metadata(&blob).is_ok_and(|m| m.len() == rec.size) {
            return Ok((rec, blob, false));
        }
    }
    let recipe = &plan.recipe;
    let epoch = recipe.epoch;
    let (entries, packages) = match &pl.producer {
        Producer::Rootfs => {
            let p = plan.base.as_ref().context("the base was not prepared")?;
            let entries = base::read_rootfs(&p.rootfs, epoch)?;
            *base_entries = Some(entries.clone());
            (entries, p.info.packages.clone())
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
            let raw = crate::fetch::tarball_entries(cache, origin, sha512, progress, &what)?;
            (
                base::reroot(raw, 1, &format!("opt/hadoop-{version}"))?,
                vec![],
            )
        }
        Producer::Imported(..) => unreachable!("handled above"),
    };
    let entries = layer::normalize(entries)?;
    let private_key = render::carries_private_key(&entries);
    let total: u64 = entries.iter().map(|e| e.size()).sum();
    let task = progress.task(format!("layer {}", pl.name), Some(total));
    let mut blob = BlobWriter::new(&cache.blob_dir())?;
    let (diff_id, uncompressed, stats) = {
        let mut comp = recipe.compression.writer(&mut blob)?;
        let mut tee = Tee::new(Counting {
            inner: &mut *comp,
            task: &task,
        });
        let stats = layer::write_tar(&entries, epoch, &mut tee)?;
        crate::failpoint("layer-write");
        let (d, n) = (tee.digest(), tee.size);
        comp.finish()?;
        (d, n, stats)
    };
    let info = blob.commit()?;
    let rec = LayerFacts {
        digest: info.digest.clone(),
        diff_id,
        size: info.size,
        uncompressed_size: uncompressed,
        media_type: recipe.compression.media_type().to_string(),
        entries: stats.entries,
        file_bytes: stats.file_bytes,
        packages,
        private_key,
    };
    cache.write_json(&rec_path, &rec)?;
    task.finish(format!(
        "{} entries, {} → {}",
        stats.entries,
        human(uncompressed),
        human(info.size)
    ));
    let path = cache.blob_dir().join(info.digest.digest());
    Ok((rec, path, true))
}

struct Counting<'a, W: std::io::Write + ?Sized> {
    inner: &'a mut W,
    task: &'a crate::progress::Task,
}

impl<W: std::io::Write + ?Sized> std::io::Write for Counting<'_, W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(b)?;
        self.task.inc(n as u64);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Bytes for people.
pub fn human(n: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

/// `strata build`.
pub fn build(opts: &Options) -> Result<BuildReport> {
    let start = Instant::now();
    let progress = Progress::new(opts.quiet);
    let cache = open_cache(opts)?;
    let plan = make_plan(opts, &cache, &progress, true)?;
    let recipe = &plan.recipe;

    // Every layer the selected images need, built or found, before the store is touched.
    let needed: BTreeSet<usize> = plan
        .images
        .iter()
        .flat_map(|i| i.layers.iter().copied())
        .chain(plan.disk_layers.values().flatten().copied())
        .collect();
    let mut built = 0;
    let mut records: HashMap<usize, (LayerFacts, PathBuf)> = HashMap::new();
    let mut base_entries = None;
    for &idx in &needed {
        let (rec, blob, was_built) =
            ensure_layer(&plan, idx, &cache, &progress, &mut base_entries)?;
        built += usize::from(was_built);
        records.insert(idx, (rec, blob));
    }
    drop(base_entries);

    // Budgets: checked before anything is published.
    let policy = recipe
        .policy
        .clone()
        .with_overrides(&opts.overrides, &recipe.families())?;
    let verdicts = if policy.is_empty() {
        None
    } else {
        let sizes = image_sizes(&plan, |i| {
            records
                .get(&i)
                .map(|(c, _)| (c.digest.to_string(), c.uncompressed_size, c.size, false))
        });
        let mut v = crate::policy::evaluate(&policy, &sizes);
        if !v.broken().is_empty() {
            let files = advice_files(&plan, &v, &sizes, |i| {
                records
                    .get(&i)
                    .map(|(c, p)| (p.clone(), c.media_type.clone()))
            })?;
            v.advice = crate::policy::advise(&v, &sizes, &files, recipe.excludes_docs);
            if policy.enforce == crate::policy::Enforce::Fail {
                return Err(BudgetExceeded(v).into());
            }
            for line in crate::policy::describe(&v).lines() {
                progress.say(format!("warning: {line}"));
            }
        }
        Some(v)
    };

    // Commit.
    let store = Store::ensure(&opts.output)?;
    let _lock = store.lock(|| {
        progress.say(format!(
            "waiting for another strata process to finish with {}",
            opts.output.display()
        ))
    })?;
    store.clean_temp()?;
    store.ensure_layout()?;
    let old_index = if opts.output.join(crate::store::INDEX_JSON).exists() {
        Some(store.read_index()?)
    } else {
        None
    };
    let old_record = match &old_index {
        Some(i) => store.read_record(i).unwrap_or_default(),
        None => StoreRecord::default(),
    };
    for (rec, blob) in records.values() {
        store.import_blob(
            blob,
            &BlobInfo {
                digest: rec.digest.clone(),
                size: rec.size,
            },
        )?;
    }
    // Which images of this build use each layer.
    let mut users: HashMap<usize, Vec<String>> = HashMap::new();
    for img in plan.images.iter().filter(|i| i.version.is_some()) {
        for &l in &img.layers {
            users.entry(l).or_default().push(img.tag.clone());
        }
    }
    let layer_record = |idx: usize| -> LayerRecord {
        let (c, _) = &records[&idx];
        LayerRecord {
            name: plan.layers[idx].name.clone(),
            family: plan.layers[idx].family.clone(),
            shared_by: users.get(&idx).cloned().unwrap_or_default(),
            facts: c.clone(),
        }
    };
    let mut new_entries = Vec::new();
    let mut new_images = Vec::new();
    let mut summaries = Vec::new();
    for img in &plan.images {
        let layers: Vec<LayerRecord> = img.layers.iter().map(|&i| layer_record(i)).collect();
        let carries_key = layers.iter().any(|l| l.private_key);
        let spec = image_spec(&plan, img, layers.clone(), carries_key);
        let written = oci::write_image(&store, &spec)?;
        summaries.push(ImageSummary {
            name: img.name.clone(),
            manifest: written.manifest.digest.to_string(),
            size: layers.iter().map(|l| l.size).sum(),
            layers: layers.iter().map(|l| l.name.clone()).collect(),
            carries_private_key: carries_key,
        });
        new_images.push(ImageRecord {
            name: img.name.clone(),
            tag: img.tag.clone(),
            hadoop_version: img.version.clone(),
            manifest: written.manifest.digest.clone(),
            config: written.config.digest.clone(),
            jdk: img
                .version
                .as_ref()
                .and_then(|v| recipe.jdk_for(v).map(|j| j.name.clone())),
            layers: layers.iter().map(|l| l.digest.to_string()).collect(),
            carries_private_key: carries_key,
            disk_layers: img
                .version
                .as_ref()
                .and_then(|v| plan.disk_layers.get(v))
                .map(|ls| {
                    ls.iter()
                        .map(|&i| records[&i].0.digest.to_string())
                        .collect()
                })
                .unwrap_or_default(),
        });
        new_entries.push(written.index_entry);
    }

    // Merge with what the store already holds: other recipes' images and, with --only, the
    // recipe's other versions stay.
    let replaced: BTreeSet<String> = new_images.iter().map(|i| i.name.clone()).collect();
    let mut manifests: Vec<_> = old_index
        .as_ref()
        .map(|i| i.manifests().clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|d| {
            let name = oci::entry_name(d);
            !replaced.contains(&name)
        })
        .collect();
    manifests.extend(new_entries);
    manifests.sort_by_key(|d| {
        let name = oci::entry_name(d);
        let (repo, tag) = oci::split_name(&name);
        (
            repo.to_string(),
            crate::hadoop::version_key(tag),
            tag.to_string(),
        )
    });
    let mut record = StoreRecord {
        recipes: old_record.recipes.clone(),
        images: old_record
            .images
            .into_iter()
            .filter(|i| !replaced.contains(&i.name))
            .collect(),
        layers: BTreeMap::new(),
    };
    record
        .recipes
        .insert(recipe.name.clone(), recipe.settings());
    record.images.extend(new_images);
    record.images.sort_by_key(|i| {
        (
            oci::split_name(&i.name).0.to_string(),
            crate::hadoop::version_key(&i.tag),
            i.tag.clone(),
        )
    });
    let mut all_layers: BTreeMap<String, LayerRecord> = old_record.layers;
    for &idx in &needed {
        let r = layer_record(idx);
        all_layers.insert(r.digest.to_string(), r);
    }
    let referenced: BTreeSet<&String> = record
        .images
        .iter()
        .flat_map(|i| i.layers.iter().chain(&i.disk_layers))
        .collect();
    for (d, mut r) in all_layers {
        if referenced.contains(&d) {
            r.shared_by = record
                .images
                .iter()
                .filter(|i| i.hadoop_version.is_some() && i.layers.contains(&d))
                .map(|i| i.name.clone())
                .collect();
            record.layers.insert(d, r);
        }
    }
    let record_blob = store.put_blob(&canonical_json(&record)?)?;
    let mut annotations = HashMap::from([(
        ANNOTATION_RECORD.to_string(),
        record_blob.digest.to_string(),
    )]);
    if let Some(rev) = git_revision(&recipe.root) {
        annotations.insert(ANNOTATION_REVISION.to_string(), rev);
    }
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(manifests)
        .annotations(annotations)
        .build()?;
    let changed = store.write_index(&index)?;
    let report = BuildReport {
        recipe: recipe.name.clone(),
        output: opts.output.clone(),
        images: summaries,
        layers_total: needed.len(),
        layers_built: built,
        layers_cached: needed.len() - built,
        index_changed: changed,
        seconds: start.elapsed().as_secs_f64(),
        policy: verdicts,
    };
    progress.say(format!(
        "{} images in {}: {} layers ({} built, {} from cache)",
        report.images.len(),
        opts.output.display(),
        report.layers_total,
        report.layers_built,
        report.layers_cached
    ));
    Ok(report)
}

fn image_spec(
    plan: &Plan,
    img: &PlannedImage,
    layers: Vec<LayerRecord>,
    carries_key: bool,
) -> ImageSpec {
    let recipe = &plan.recipe;
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
    if carries_key {
        labels.insert(oci::LABEL_PRIVATE_KEY.to_string(), "true".into());
        if let Some(k) = &plan.cluster_key {
            labels.insert(
                oci::LABEL_KEY_FINGERPRINT.to_string(),
                k.fingerprint.clone(),
            );
        }
    }
    ImageSpec {
        name: img.name.clone(),
        tag: img.tag.clone(),
        layers,
        env: env.into_iter().map(|(k, v)| format!("{k}={v}")).collect(),
        cmd: recipe.image.cmd.clone(),
        entrypoint: recipe.image.entrypoint.clone(),
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

/// The checkout's revision (`-dirty` with local changes), if the recipe is in a git work tree.
fn git_revision(root: &Path) -> Option<String> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let mut rev = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let st = std::process::Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .ok()?;
    if !st.stdout.is_empty() {
        rev.push_str("-dirty");
    }
    Some(rev)
}

/// What `strata plan` prints.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct PlanReport {
    pub recipe: String,
    pub base_ready: bool,
    pub layers: Vec<PlanLayer>,
    pub images: Vec<PlanImage>,
    /// Budget verdicts, sharing per image and per pair (estimated where nothing is built yet).
    pub policy: Verdicts,
    #[serde(skip)]
    pub enforce_fails: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct PlanLayer {
    pub name: String,
    pub key: String,
    pub cached: bool,
    pub digest: Option<String>,
    pub size: Option<u64>,
    pub uncompressed_size: Option<u64>,
    pub used_by: Vec<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct PlanImage {
    pub name: String,
    pub layers: Vec<String>,
}

/// `strata plan`: what would be built and what is cached, without building anything.
pub fn plan(opts: &Options) -> Result<PlanReport> {
    let progress = Progress::new(true);
    let cache = open_cache(opts)?;
    let plan = make_plan(opts, &cache, &progress, false)?;
    let mut used: HashMap<usize, Vec<String>> = HashMap::new();
    for img in &plan.images {
        for &l in &img.layers {
            used.entry(l).or_default().push(img.name.clone());
        }
    }
    let layers = plan
        .layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let rec = match &l.producer {
                Producer::Imported(r, _) => Some(r.clone()),
                _ => cache.read_json::<LayerFacts>(&cache.layer_record_path(&l.key)),
            };
            PlanLayer {
                name: l.name.clone(),
                key: l.key.clone(),
                cached: rec.is_some(),
                digest: rec.as_ref().map(|r| r.digest.to_string()),
                size: rec.as_ref().map(|r| r.size),
                uncompressed_size: rec.as_ref().map(|r| r.uncompressed_size),
                used_by: used.remove(&i).unwrap_or_default(),
            }
        })
        .collect();
    // Verdicts from what is known: cached layers exactly, directory layers estimated from their
    // rendered entries, the rest unknown until built.
    let policy = plan
        .recipe
        .policy
        .clone()
        .with_overrides(&opts.overrides, &plan.recipe.families())?;
    let known = |i: usize| -> Option<(String, u64, u64, bool)> {
        let l = &plan.layers[i];
        let rec = match &l.producer {
            Producer::Imported(r, _) => Some(r.clone()),
            _ => cache.read_json::<LayerFacts>(&cache.layer_record_path(&l.key)),
        };
        if let Some(r) = rec {
            return Some((r.digest.to_string(), r.uncompressed_size, r.size, false));
        }
        match &l.producer {
            Producer::Entries(e) => Some((l.key.clone(), estimate_tar_size(e), 0, true)),
            _ => None,
        }
    };
    let sizes = image_sizes(&plan, known);
    let mut verdicts = crate::policy::evaluate(&policy, &sizes);
    if !verdicts.broken().is_empty() {
        let files = advice_files(&plan, &verdicts, &sizes, |i| {
            let l = &plan.layers[i];
            let rec = cache.read_json::<LayerFacts>(&cache.layer_record_path(&l.key))?;
            let blob = cache.blob_dir().join(rec.digest.digest());
            blob.exists().then_some((blob, rec.media_type))
        })?;
        verdicts.advice =
            crate::policy::advise(&verdicts, &sizes, &files, plan.recipe.excludes_docs);
    }
    let enforce_fails =
        !verdicts.broken().is_empty() && policy.enforce == crate::policy::Enforce::Fail;
    Ok(PlanReport {
        recipe: plan.recipe.name.clone(),
        base_ready: plan.base.is_some() || matches!(plan.recipe.base, Base::Oci { .. }),
        layers,
        images: plan
            .images
            .iter()
            .map(|i| PlanImage {
                name: i.name.clone(),
                layers: i
                    .layers
                    .iter()
                    .map(|&l| plan.layers[l].name.clone())
                    .collect(),
            })
            .collect(),
        policy: verdicts,
        enforce_fails,
    })
}

/// The size of the tar [`layer::write_tar`] would write for `entries` (headers and padding; PAX
/// records for long names are not counted).
fn estimate_tar_size(entries: &[Entry]) -> u64 {
    entries
        .iter()
        .map(|e| 512 + e.size().div_ceil(512) * 512)
        .sum::<u64>()
        + 1024
}
