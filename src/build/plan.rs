//! # The plan: every layer once, each image's list, decided without writing anything
//!
//! [`make_plan`] is pure: it takes a validated [`Recipe`] and the [`Inputs`] that exist before
//! planning (the base's facts, the cluster key), renders every directory layer, and gives each
//! layer a key: the hash of its inputs (rendered entries and their content hashes, the base's
//! content identity, pinned checksums, the tar format, the compression and the epoch). What
//! cannot be known yet (a base not built, a key not generated) is marked pending, never guessed.
//!
//! [`Inputs::prepare`] (for `build`) makes the base and the key exist; [`Inputs::look`] (for
//! `plan`) only reads what is already there, from a read-only cache.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::cache::Cache;
use crate::layer::{self, Entry, Kind, TAR_FORMAT};
use crate::oci::record::LayerFacts;
use crate::recipe::hadoop::Facts;
use crate::recipe::{Base, DIST_MOUNT, DistMode, Origin, Recipe};
use crate::source::base::{self, BaseInfo, PreparedBase};
use crate::source::keys::{self, ClusterKey};
use crate::source::render::{self, Context as RenderContext};
use crate::support::error::BadInput;
use crate::support::hash::{hash_reader, key_of};
use crate::support::progress::Progress;

use super::produce::{import_oci_base, oci_base_info};

/// How a planned layer gets its entries.
pub(crate) enum Producer {
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
    /// Cannot be made before `build` prepares what it needs (the reason says what); its
    /// entries so far, for a size estimate.
    Pending(String, Vec<Entry>),
}

/// One layer of the plan.
pub struct PlannedLayer {
    pub name: String,
    /// What budgets name it by: `base`, `jdk-<name>`, the `[[layer]]` name, `hadoop-dist`.
    pub family: String,
    pub key: String,
    /// The key is provisional: it depends on something not built yet (the base, the key).
    pub provisional: bool,
    pub(crate) producer: Producer,
}

/// The plan: every distinct layer once, and each image's layer list (by index).
pub struct Plan<'r> {
    pub recipe: &'r Recipe,
    pub layers: Vec<PlannedLayer>,
    pub images: Vec<PlannedImage>,
    /// The layers a version's disk adds to its image (disk-only packages and layers), by version.
    pub disk_layers: BTreeMap<String, Vec<usize>>,
    /// The layer that carries the accounts and the cluster key (or, delivered at boot, only its
    /// public half).
    pub accounts_layer: Option<usize>,
    pub(crate) base: Option<PreparedBase>,
    pub(crate) cluster_key: Option<ClusterKey>,
    /// What is known of a mmdebstrap or tarball base (its key, identity and facts), built here
    /// or learnt from a remote cache; what `--cache-to` publishes under the base's key.
    pub(crate) base_facts: Option<KnownBase>,
}

pub struct PlannedImage {
    pub name: String,
    pub tag: String,
    pub version: Option<String>,
    pub layers: Vec<usize>,
}

impl Plan<'_> {
    /// Every layer the images and their disks need.
    pub fn needed(&self) -> BTreeSet<usize> {
        self.images
            .iter()
            .flat_map(|i| i.layers.iter().copied())
            .chain(self.disk_layers.values().flatten().copied())
            .collect()
    }

    /// Whether building layer `idx` reads the base's root filesystem (the rootfs layer, a
    /// package JDK and the disk packages are differences against it).
    pub(crate) fn needs_rootfs(&self, idx: usize) -> bool {
        match &self.layers[idx].producer {
            Producer::Rootfs | Producer::Disk(_) => true,
            Producer::Jdk(name) => matches!(
                self.recipe.jdks.get(name).map(|j| &j.source),
                Some(crate::recipe::JdkSource::Packages { .. })
            ),
            _ => false,
        }
    }
}

/// The facts of a mmdebstrap or tarball base without its root filesystem: enough to plan (every
/// key built on the base derives from `identity`; the accounts layer and the Java check read
/// `info`). Kept in the cache as `base/<key>/known.json` once learnt from a remote cache.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KnownBase {
    /// The base's input key ([`base::base_key`]).
    pub key: String,
    /// The SHA-256 of its root filesystem tar (the rootfs identity).
    pub identity: String,
    pub info: BaseInfo,
}

/// The file of a cache that remembers a base's facts learnt from a remote cache.
pub(crate) fn known_path(cache: &Cache, key: &str) -> PathBuf {
    cache.base_dir(key).join("known.json")
}

/// The state of the base before planning.
pub enum BaseState {
    /// A root filesystem in the cache, with its content identity (SHA-256).
    Ready(PreparedBase, String),
    /// Its facts, without its root filesystem (from a remote cache): made only if a layer built
    /// on it must be built here ([`prepare_base`]).
    Known(KnownBase),
    /// Not made yet (`plan` on a fresh machine): the layers built on it wait.
    Unbuilt { key: String },
    /// The layers of an OCI image layout, reused as they are.
    Oci {
        layers: Vec<(LayerFacts, PathBuf)>,
        info: BaseInfo,
        identity: String,
    },
}

/// What exists before planning.
pub struct Inputs {
    pub base: BaseState,
    pub key: Option<ClusterKey>,
}

impl Inputs {
    /// For `build`: makes the base (mmdebstrap, or the tarball into the cache) and the cluster
    /// key exist. A base whose root filesystem is not in the cache but whose facts are known
    /// (`known`: the cache's `known.json`, else a remote cache) is not made now: it is
    /// [`BaseState::Known`], made later only if a layer on it must be built here.
    pub fn prepare(
        recipe: &Recipe,
        cache: &Cache,
        refresh_base: bool,
        known: &dyn Fn(&str) -> Option<KnownBase>,
        registry: &crate::registry::Options,
        progress: &Progress,
    ) -> Result<Inputs> {
        let base = match &recipe.base {
            Base::Oci { path, reference } => oci_state(cache, path, reference)?,
            Base::OciRegistry { image } => {
                let layout = super::oci_base::ensure(cache, image, registry, progress)?;
                oci_state(cache, &layout, super::oci_base::REF_NAME)?
            }
            b => {
                let (key, read) = base_key_reading(recipe, cache)?;
                let dir = cache.base_dir(&key);
                let local = base::rootfs_path(cache, b, &key)?.is_file()
                    && cache
                        .read_json::<BaseInfo>(&dir.join("info.json"))
                        .is_some();
                let remembered = || {
                    cache
                        .read_json::<KnownBase>(&known_path(cache, &key))
                        .filter(|k| k.key == key)
                        .or_else(|| known(&key))
                };
                let known = if refresh_base || local {
                    None
                } else {
                    remembered()
                };
                match known {
                    Some(k) => BaseState::Known(k),
                    None => {
                        let p = base::ensure_base(
                            cache,
                            b,
                            &key,
                            recipe.epoch,
                            (refresh_base, read),
                            progress,
                        )?;
                        let ident = rootfs_identity(&p, true)?;
                        BaseState::Ready(p, ident)
                    }
                }
            }
        };
        let key = if recipe.layers.iter().any(|l| l.accounts) {
            Some(keys::cluster_key(&recipe.name, recipe.ssh.key.as_deref())?)
        } else {
            None
        };
        Ok(Inputs { base, key })
    }

    /// For `plan`: what is already there, read from a read-only cache; writes nothing.
    pub fn look(recipe: &Recipe, cache: &Cache) -> Result<Inputs> {
        let base = match &recipe.base {
            Base::Oci { path, reference } => oci_state(cache, path, reference)?,
            Base::OciRegistry { image } => match super::oci_base::pulled(cache, image) {
                Some(layout) => oci_state(cache, &layout, super::oci_base::REF_NAME)?,
                None => BaseState::Unbuilt {
                    key: format!("{image} (not pulled yet)"),
                },
            },
            b => {
                let key = base_key(recipe, cache)?;
                let dir = cache.base_dir(&key);
                let rootfs = base::rootfs_path(cache, b, &key)?;
                match cache.read_json::<BaseInfo>(&dir.join("info.json")) {
                    Some(info) if rootfs.is_file() => {
                        let in_place = match b {
                            Base::Tarball { path, .. } if rootfs == *path => {
                                Some(cache.file_sha256(path)?)
                            }
                            _ => None,
                        };
                        let p = PreparedBase {
                            key,
                            rootfs,
                            info,
                            in_place,
                            entries: Default::default(),
                        };
                        let ident = rootfs_identity(&p, false)?;
                        BaseState::Ready(p, ident)
                    }
                    _ => match cache
                        .read_json::<KnownBase>(&known_path(cache, &key))
                        .filter(|k| k.key == key)
                    {
                        Some(k) => BaseState::Known(k),
                        None => BaseState::Unbuilt { key },
                    },
                }
            }
        };
        let key = if recipe.layers.iter().any(|l| l.accounts) {
            keys::find(&recipe.name, recipe.ssh.key.as_deref())?
        } else {
            None
        };
        Ok(Inputs { base, key })
    }
}

/// Makes a known base's root filesystem exist after all (mmdebstrap, or the tarball into the
/// cache): for a layer on it that no cache holds. Returns it with its identity, which differs
/// from the known one when the base built here is not the one the remote cache's builder had.
pub(crate) fn prepare_base(
    recipe: &Recipe,
    key: &str,
    cache: &Cache,
    progress: &Progress,
) -> Result<(PreparedBase, String)> {
    let p = base::ensure_base(
        cache,
        &recipe.base,
        key,
        recipe.epoch,
        (false, None),
        progress,
    )?;
    let ident = rootfs_identity(&p, true)?;
    Ok((p, ident))
}

/// [`base_key`], and, for an uncompressed tarball base that must be hashed (the memo does not
/// know it), its entries read at the same time (two passes over the file at once, on two
/// cores): what preparing it needs next. The entries are dropped if the file changed in the
/// meantime (its ctime), and a failed read is left for the preparation to report.
fn base_key_reading(recipe: &Recipe, cache: &Cache) -> Result<(String, Option<Vec<Entry>>)> {
    let Some(path) = base::read_in_place(&recipe.base)?.filter(|p| !cache.knows(p)) else {
        return Ok((base_key(recipe, cache)?, None));
    };
    let stamp = || {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path)
            .ok()
            .map(|m| (m.dev(), m.ino(), m.len(), m.ctime(), m.ctime_nsec()))
    };
    let before = stamp();
    std::thread::scope(|s| {
        let read = s.spawn(|| base::read_rootfs(path, recipe.epoch));
        let key = base_key(recipe, cache)?;
        let read = read.join().expect("the tarball reader panicked").ok();
        Ok((key, read.filter(|_| before.is_some() && stamp() == before)))
    })
}

/// The cache key of a mmdebstrap or tarball base (a tarball is named by its content).
fn base_key(recipe: &Recipe, cache: &Cache) -> Result<String> {
    let tar_sha = match &recipe.base {
        Base::Tarball { path, sha256 } => {
            let d = cache.file_sha256(path)?;
            if let Some(want) = sha256
                && !want.eq_ignore_ascii_case(&d)
            {
                return Err(crate::support::error::ChecksumMismatch {
                    what: format!("base tarball {}", path.display()),
                    algorithm: "sha256",
                    expected: want.clone(),
                    found: d,
                }
                .into());
            }
            Some(d)
        }
        _ => None,
    };
    Ok(base::base_key(
        &recipe.base,
        recipe.epoch,
        tar_sha.as_deref(),
    ))
}

fn oci_state(cache: &Cache, path: &std::path::Path, reference: &str) -> Result<BaseState> {
    let mut layers = import_oci_base(path, reference)?;
    let identity = key_of(
        &layers
            .iter()
            .map(|(rec, _)| format!("oci-{}", rec.digest.digest()))
            .collect::<Vec<_>>(),
    );
    let info = oci_base_info(cache, &identity, &layers)?;
    for (rec, _) in &mut layers {
        rec.uncompressed_size = info
            .layer_sizes
            .get(&rec.digest.to_string())
            .copied()
            .unwrap_or(0);
    }
    Ok(BaseState::Oci {
        layers,
        info,
        identity,
    })
}

/// The content identity of a prepared base rootfs (its SHA-256, computed once and remembered
/// beside it when `remember`).
fn rootfs_identity(p: &PreparedBase, remember: bool) -> Result<String> {
    // The user's tarball, read in place: its SHA-256 is the one its key names.
    if let Some(sha) = &p.in_place {
        return Ok(sha.clone());
    }
    let marker = p.rootfs.with_file_name("rootfs.sha256");
    if let Ok(s) = std::fs::read_to_string(&marker) {
        return Ok(s.trim().to_string());
    }
    let f = crate::support::fsx::open(&p.rootfs)?;
    let (d, _) = hash_reader(std::io::BufReader::with_capacity(1 << 20, f))
        .with_context(|| format!("reading {:?}", p.rootfs))?;
    if remember {
        crate::support::fsx::atomic_write(&marker, d.digest().as_bytes())?;
    }
    Ok(d.digest().to_string())
}

/// The versions `--only` selects (all when empty); an unknown one is bad input.
pub fn selected<'r>(recipe: &'r Recipe, only: &[String]) -> Result<Vec<&'r String>, BadInput> {
    for v in only {
        if !recipe.versions.contains(v) {
            return Err(BadInput(format!(
                "--only {v}: the recipe {} builds {}",
                recipe.file.display(),
                recipe.versions.join(", ")
            )));
        }
    }
    Ok(recipe
        .versions
        .iter()
        .filter(|v| only.is_empty() || only.contains(v))
        .collect())
}

/// Builds the plan's layer table, each distinct key once.
struct Table<'r> {
    recipe: &'r Recipe,
    layers: Vec<PlannedLayer>,
    by_key: HashMap<String, usize>,
    /// The base's content identity, or a provisional one.
    base_ident: String,
    provisional_base: bool,
}

impl Table<'_> {
    fn key(&self, kind: &str, inputs: serde_json::Value) -> String {
        key_of(&serde_json::json!({
            "kind": kind, "inputs": inputs, "tar": TAR_FORMAT,
            "compression": self.recipe.compression.key(), "epoch": self.recipe.epoch,
        }))
    }

    fn add(
        &mut self,
        family: &str,
        name: String,
        key: String,
        provisional: bool,
        producer: Producer,
    ) -> usize {
        if let Some(&i) = self.by_key.get(&key) {
            return i;
        }
        self.layers.push(PlannedLayer {
            name,
            family: family.to_string(),
            key: key.clone(),
            provisional,
            producer,
        });
        self.by_key.insert(key, self.layers.len() - 1);
        self.layers.len() - 1
    }
}

/// Makes the plan: everything is decided and validated; nothing is written anywhere.
pub fn make_plan<'r>(recipe: &'r Recipe, inputs: Inputs, only: &[String]) -> Result<Plan<'r>> {
    let selected = selected(recipe, only)?;
    let (base_ident, provisional_base) = match &inputs.base {
        BaseState::Ready(_, ident) => (ident.clone(), false),
        BaseState::Known(k) => (k.identity.clone(), false),
        BaseState::Oci { identity, .. } => (identity.clone(), false),
        BaseState::Unbuilt { key } => (format!("unbuilt-{key}"), true),
    };
    let base_facts = match &inputs.base {
        BaseState::Ready(p, ident) => Some(KnownBase {
            key: p.key.clone(),
            identity: ident.clone(),
            info: p.info.clone(),
        }),
        BaseState::Known(k) => Some(k.clone()),
        _ => None,
    };
    let mut t = Table {
        recipe,
        layers: Vec::new(),
        by_key: HashMap::new(),
        base_ident,
        provisional_base,
    };
    let (base_layers, base_info, prepared) = plan_base(&mut t, inputs.base)?;
    check_base_java(recipe, &base_info)?;
    let jdk_layer = plan_jdks(&mut t);
    let (shared, disk_only, accounts_layer) = plan_shared(&mut t, &base_info, inputs.key.as_ref())?;
    let recipe_value = recipe_value(recipe);
    let mut images = Vec::new();
    let mut disk_layers = BTreeMap::new();
    for v in selected {
        let facts = recipe.catalogue.get(v).expect("validated");
        let mut list = base_layers.clone();
        if let Some(jdk) = recipe.jdk_for(v) {
            list.push(jdk_layer[&jdk.name]);
        }
        list.extend(&shared);
        list.extend(plan_version(&mut t, facts, &recipe_value)?);
        images.push(PlannedImage {
            name: recipe.image_name(v),
            tag: v.clone(),
            version: Some(v.clone()),
            layers: list,
        });
        if let Some(dl) = plan_disk(&mut t, v, &disk_only) {
            disk_layers.insert(v.clone(), dl);
        }
    }
    // `<recipe>:base`: the layers every version of the recipe shares, as an image of its own.
    let one_jdk: BTreeSet<_> = recipe
        .versions
        .iter()
        .map(|v| recipe.jdk_for(v).map(|j| j.name.clone()))
        .collect();
    let mut base_list = base_layers;
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
        layers: t.layers,
        images,
        disk_layers,
        accounts_layer,
        base: prepared,
        cluster_key: inputs.key,
        base_facts,
    })
}

/// The base's layers (one rootfs layer, or an OCI base's layers as they are).
fn plan_base(
    t: &mut Table,
    state: BaseState,
) -> Result<(Vec<usize>, Option<BaseInfo>, Option<PreparedBase>)> {
    match state {
        BaseState::Oci { layers, info, .. } => {
            let mut idx = Vec::new();
            for (i, (rec, blob)) in layers.into_iter().enumerate() {
                let key = format!("oci-{}", rec.digest.digest());
                let producer = Producer::Imported(rec, blob);
                idx.push(t.add("base", format!("base-{i}"), key, false, producer));
            }
            Ok((idx, Some(info), None))
        }
        state => {
            let (info, prepared) = match state {
                BaseState::Ready(p, _) => (Some(p.info.clone()), Some(p)),
                BaseState::Known(k) => (Some(k.info), None),
                _ => (None, None),
            };
            let key = t.key("base", serde_json::json!(t.base_ident));
            let prov = t.provisional_base;
            let i = t.add("base", "base".into(), key, prov, Producer::Rootfs);
            Ok((vec![i], info, prepared))
        }
    }
}

/// A recipe without a JDK relies on the base's /opt/java (JAVA_HOME of every image).
fn check_base_java(recipe: &Recipe, info: &Option<BaseInfo>) -> Result<()> {
    if !recipe.jdks.is_empty() {
        return Ok(());
    }
    let Some(homes) = info.as_ref().and_then(|i| i.java_homes.as_ref()) else {
        return Ok(());
    };
    if homes.iter().any(|h| h == &format!("/{}", base::JAVA_LINK)) {
        return Ok(());
    }
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

/// One layer per JDK in use, by JDK name.
fn plan_jdks(t: &mut Table) -> BTreeMap<String, usize> {
    let recipe = t.recipe;
    let mut out = BTreeMap::new();
    for v in &recipe.versions {
        let Some(jdk) = recipe.jdk_for(v) else {
            continue;
        };
        if out.contains_key(&jdk.name) {
            continue;
        }
        let key = t.key("jdk", serde_json::json!(base::jdk_key(jdk, &t.base_ident)));
        let name = format!("jdk-{}", jdk.name);
        let prov = t.provisional_base;
        let idx = t.add(
            &name,
            name.clone(),
            key,
            prov,
            Producer::Jdk(jdk.name.clone()),
        );
        out.insert(jdk.name.clone(), idx);
    }
    out
}

/// What templates see of the recipe.
fn recipe_value(recipe: &Recipe) -> serde_json::Value {
    serde_json::json!({"name": recipe.name, "epoch": recipe.epoch, "description": recipe.description})
}

/// The shared directory layers (the accounts layer among them): (in images, disk-only, the
/// accounts layer).
fn plan_shared(
    t: &mut Table,
    base_info: &Option<BaseInfo>,
    key: Option<&ClusterKey>,
) -> Result<(Vec<usize>, Vec<usize>, Option<usize>)> {
    let recipe = t.recipe;
    let (mut shared, mut disk_only, mut accounts) = (Vec::new(), Vec::new(), None);
    for spec in recipe.layers.iter().filter(|l| !l.per_version) {
        let cx = RenderContext {
            recipe: recipe_value(recipe),
            user: recipe.user.clone(),
            hadoop: None,
            jdk: None,
            vars: recipe.vars.clone(),
        };
        let mut entries =
            render::render_dir(&spec.dir, &cx).with_context(|| format!("layer {}", spec.name))?;
        let mut pending = None;
        if spec.accounts {
            match (key, base_info) {
                (Some(key), Some(info)) => {
                    let acc = crate::source::accounts::entries(
                        &info.accounts,
                        &recipe.user,
                        key,
                        recipe.ssh.deliver,
                        recipe.epoch,
                    )?;
                    let generated: BTreeSet<String> = acc.iter().map(|e| e.path.clone()).collect();
                    entries.retain(|e| !generated.contains(&e.path));
                    entries.extend(acc);
                }
                (None, _) => {
                    pending = Some("the cluster SSH key is generated by the first build".into())
                }
                (_, None) => {
                    pending = Some("the accounts merge into the base, not built yet".into())
                }
            }
        }
        let entries = layer::normalize(entries).with_context(|| format!("layer {}", spec.name))?;
        let mut inputs = serde_json::json!(entries_key(&entries)?);
        if spec.accounts {
            // The accounts depend on the base's own account files.
            inputs = serde_json::json!([inputs, t.base_ident]);
        }
        let key = t.key("dir", inputs);
        let (prov, producer) = match pending {
            Some(why) => (true, Producer::Pending(why, entries)),
            None => (
                spec.accounts && t.provisional_base,
                Producer::Entries(entries),
            ),
        };
        let idx = t.add(&spec.name, spec.name.clone(), key, prov, producer);
        if spec.accounts {
            accounts = Some(idx);
        }
        if spec.disk_only {
            disk_only.push(idx)
        } else {
            shared.push(idx)
        }
    }
    Ok((shared, disk_only, accounts))
}

/// A version's own layers: its Hadoop release (per `[dist]`) and its per-version directories.
fn plan_version(
    t: &mut Table,
    facts: &Facts,
    recipe_value: &serde_json::Value,
) -> Result<Vec<usize>> {
    let recipe = t.recipe;
    let v = &facts.version;
    let mut list = Vec::new();
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
                let key = t.key("dist", serde_json::json!({"sha512": sha512, "version": v}));
                let producer = Producer::Dist {
                    version: v.clone(),
                    origin,
                    sha512,
                };
                (key, producer)
            }
            mode => {
                let entries =
                    layer::normalize(dist_unit_entries(mode, v, &url, sha512.as_deref()))?;
                let key = t.key("dir", serde_json::json!(entries_key(&entries)?));
                (key, Producer::Entries(entries))
            }
        };
        list.push(t.add(
            "hadoop-dist",
            format!("hadoop-dist-{v}"),
            key,
            false,
            producer,
        ));
    }
    let cx = version_context(recipe, recipe_value, facts);
    for spec in recipe.layers.iter().filter(|l| l.per_version) {
        let what = || format!("layer {} for Hadoop {v}", spec.name);
        let entries = render::render_dir(&spec.dir, &cx).with_context(what)?;
        let entries = layer::normalize(entries).with_context(what)?;
        let key = t.key("dir", serde_json::json!(entries_key(&entries)?));
        let name = format!("{}-{v}", spec.name);
        list.push(t.add(&spec.name, name, key, false, Producer::Entries(entries)));
    }
    Ok(list)
}

/// What a version's disk adds: the disk-only packages layer and the disk-only directories.
fn plan_disk(t: &mut Table, v: &str, disk_only: &[usize]) -> Option<Vec<usize>> {
    let recipe = t.recipe;
    let disk = recipe.disk.as_ref()?;
    let mut dl = Vec::new();
    if !disk.packages.is_empty() {
        let jdk = recipe.jdk_for(v);
        let key = t.key(
            "disk",
            serde_json::json!({
                "base": t.base_ident,
                "jdk": jdk.map(|j| base::jdk_key(j, &t.base_ident)),
                "packages": disk.packages,
            }),
        );
        let producer = Producer::Disk(jdk.map(|j| j.name.clone()));
        let prov = t.provisional_base;
        dl.push(t.add("disk", "disk-packages".into(), key, prov, producer));
    }
    dl.extend(disk_only);
    Some(dl)
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
            let mut flags =
                crate::recipe::hadoop::compat_jvm_flags(&facts.java.runtime, jdk.java_version);
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

/// The size of the tar [`layer::write_tar`] would write for `entries` (headers and padding; PAX
/// records for long names are not counted).
pub fn estimate_tar_size(entries: &[Entry]) -> u64 {
    entries
        .iter()
        .map(|e| 512 + e.size().div_ceil(512) * 512)
        .sum::<u64>()
        + 1024
}
