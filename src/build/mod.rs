//! # Build: recipe → plan → layers → images → one atomic index update
//!
//! 1. **Prepare** ([`plan::Inputs::prepare`]): the base root filesystem (cached by its inputs)
//!    and the cluster key exist — or only the base's facts, known from a remote cache
//!    ([`remote`]). `strata plan` skips this and reads what is there
//!    ([`plan::Inputs::look`]): a plan writes nothing anywhere.
//! 2. **Plan** ([`plan::make_plan`], pure): every layer once, with its key; each image's list.
//!    With `--cache-from`, every needed layer the local cache lacks and a remote cache holds is
//!    fetched into the local cache; a base known by its facts alone is made only if a layer on
//!    it is in no cache.
//! 3. **Budgets** ([`budget::check`]): the same check for `plan` and `build`.
//! 4. **Produce** ([`produce`]): each layer not in the cache, in one streaming pass, two at once.
//! 5. **Commit** ([`commit`]): only now is the store touched, under its lock; `index.json` last.
//!    Any error before this point (a bad recipe, template, download or tarball, a broken budget)
//!    leaves the store exactly as it was.
//! 6. **Share** (`--cache-to`, [`remote`]): what the remote cache lacks is written to it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Result;
use serde::Serialize;

use crate::cache::Cache;
use crate::oci::record::LayerFacts;
use crate::policy::{BudgetExceeded, Enforce, Overrides, Verdicts};
use crate::recipe::{EpochSource, Recipe};
use crate::support::progress::Progress;

pub mod budget;
mod commit;
mod oci_base;
pub mod plan;
mod produce;
pub mod remote;

use budget::Known;
use plan::{Inputs, Producer, make_plan};

/// Options of `strata build` and `strata plan` (the recipe is loaded by the caller).
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub output: PathBuf,
    /// The cache directory (default [`Cache::default_dir`]).
    pub cache: Option<PathBuf>,
    pub no_cache: bool,
    pub refresh_base: bool,
    pub only: Vec<String>,
    pub quiet: bool,
    /// `--image-budget`, `--layer-budget`, `--min-shared`.
    pub overrides: Overrides,
    /// `verify --repair RECIPE`: images of other recipes found damaged do not stop this build
    /// (each recipe given rebuilds its own; the final `verify` says what remains).
    pub repairing: bool,
    /// `--cache-from`, `--cache-to`: remote layer caches ([`remote`]).
    pub remote: remote::RemoteOptions,
    /// `--disks`: build the disk-only package layers even when no cache holds them.
    pub disks: bool,
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
    /// From the local cache (and an OCI base's layers, reused as they are).
    pub layers_cached: usize,
    /// Fetched from a remote cache (`--cache-from`).
    pub layers_remote: usize,
    /// Every layer of the build and where it came from.
    pub layers: Vec<LayerOrigin>,
    /// What `--cache-to` wrote.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_to: Option<remote::CachePush>,
    /// Remote caches that could not be read (each layer concerned was built here).
    pub cache_warnings: Vec<String>,
    /// `--cache-to` could not write the cache: the command fails after reporting.
    #[serde(skip)]
    pub cache_to_failure: Option<anyhow::Error>,
    pub index_changed: bool,
    /// Blobs that were damaged in the store (other bytes under their digest) and were rewritten.
    pub repaired_blobs: Vec<String>,
    pub seconds: f64,
    /// The timestamp of every layer, config and the base, and where it came from.
    pub epoch: u64,
    pub epoch_source: EpochSource,
    /// Budgets and sharing (absent when the recipe sets no policy).
    pub policy: Option<Verdicts>,
}

/// Where a layer of the build came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// Built by this build.
    Built,
    /// In the local cache.
    Cached,
    /// Fetched from a remote cache.
    Remote,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct LayerOrigin {
    pub name: String,
    pub key: String,
    pub digest: String,
    pub from: Origin,
    /// The remote cache (`REGISTRY/REPO`) it came from.
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ImageSummary {
    pub name: String,
    pub manifest: String,
    pub size: u64,
    pub layers: Vec<String>,
    pub carries_private_key: bool,
    /// `[ssh] deliver = "boot"`: the private key is installed at boot, not carried.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub keys_at_boot: bool,
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

/// `strata build`: every image of the recipe (or of `--only`) into the store.
pub fn build(recipe: &Recipe, opts: &Options) -> Result<BuildReport> {
    let start = Instant::now();
    let progress = Progress::new(opts.quiet);
    progress.say(format!(
        "epoch {} ({}, {})",
        recipe.epoch,
        crate::oci::image::rfc3339(recipe.epoch),
        recipe.epoch_source
    ));
    plan::selected(recipe, &opts.only)?;
    let revision = commit::revision(&recipe.root);
    let cache = open_cache(opts)?;
    let remote = remote::Remote::open(&opts.remote, &progress)?;
    let known = |key: &str| remote.base_facts(key, &cache);
    let inputs = Inputs::prepare(
        recipe,
        &cache,
        opts.refresh_base,
        &known,
        &opts.remote.registry,
        &progress,
    )?;
    let (plan, origins) = plan_with_remote(recipe, opts, inputs, &cache, &remote, &progress)?;

    // Every layer the selected images need, built or found, before the store is touched.
    let needed = plan.needed();
    let mut layers_built = 0;
    let mut built: HashMap<usize, (LayerFacts, PathBuf)> = HashMap::new();
    let mut layers = Vec::new();
    let order: Vec<usize> = needed.iter().copied().collect();
    let ensured = produce::ensure_layers(&plan, &order, &cache, &progress)?;
    for (&idx, (rec, blob, was_built)) in order.iter().zip(ensured) {
        layers_built += usize::from(was_built);
        let pl = &plan.layers[idx];
        layers.push(LayerOrigin {
            name: pl.name.clone(),
            key: pl.key.clone(),
            digest: rec.digest.to_string(),
            from: match (was_built, origins.get(&pl.key)) {
                (true, _) => Origin::Built,
                (false, Some(_)) => Origin::Remote,
                (false, None) => Origin::Cached,
            },
            reference: origins.get(&pl.key).filter(|_| !was_built).cloned(),
        });
        built.insert(idx, (rec, blob));
    }
    let layers_remote = layers.iter().filter(|l| l.from == Origin::Remote).count();

    refuse_keys_in_boot_images(&plan, &built)?;

    // Budgets: checked before anything is published.
    let verdicts = budget::check(
        &plan,
        &opts.overrides,
        |i| {
            let rec = &built[&i].0;
            Known {
                id: rec.digest.to_string(),
                bytes: Some(rec.uncompressed_size),
                stored: Some(rec.size),
                estimated: false,
            }
        },
        |i| {
            built
                .get(&i)
                .map(|(c, p)| (p.clone(), c.media_type.clone()))
        },
    )?;
    if !verdicts.broken().is_empty() {
        if verdicts.enforce == Enforce::Fail {
            return Err(BudgetExceeded(verdicts).into());
        }
        for line in crate::policy::describe(&verdicts).lines() {
            progress.say(format!("warning: {line}"));
        }
    }

    let committed = commit::commit(&plan, &built, opts, &cache, revision, &progress)?;
    let (cache_to, cache_to_failure) = match remote.push(&plan, &built, &origins, &cache) {
        Some((rep, err)) => (Some(rep), err),
        None => (None, None),
    };
    let report = BuildReport {
        recipe: recipe.name.clone(),
        output: opts.output.clone(),
        images: committed.images,
        layers_total: needed.len(),
        layers_built,
        layers_cached: needed.len() - layers_built - layers_remote,
        layers_remote,
        layers,
        cache_to,
        cache_warnings: remote.warnings(),
        cache_to_failure,
        index_changed: committed.index_changed,
        repaired_blobs: committed.repaired,
        seconds: start.elapsed().as_secs_f64(),
        epoch: recipe.epoch,
        epoch_source: recipe.epoch_source,
        // Absent when the recipe sets no budget.
        policy: (!verdicts.checks.is_empty()).then_some(verdicts),
    };
    progress.say(format!(
        "{} images in {}: {} layers ({} built, {} from cache, {} from a remote cache)",
        report.images.len(),
        opts.output.display(),
        report.layers_total,
        report.layers_built,
        report.layers_cached,
        report.layers_remote
    ));
    Ok(report)
}

/// The plan, with every needed layer a remote cache holds fetched into the local cache (by
/// key: the cache it came from). A base known only by its facts is made here (mmdebstrap)
/// only when a layer on it is in no cache; if the base made here is not the one the facts
/// describe, the layers on it get other keys: planned and looked up again.
fn plan_with_remote<'r>(
    recipe: &'r Recipe,
    opts: &Options,
    inputs: Inputs,
    cache: &Cache,
    remote: &remote::Remote,
    progress: &Progress,
) -> Result<(plan::Plan<'r>, HashMap<String, String>)> {
    let mut plan = make_plan(recipe, inputs, &opts.only)?;
    let mut origins = remote.fetch_missing(&plan, cache)?;
    leave_out_unbuilt_disks(&mut plan, opts, cache, progress)?;
    let Some(known) = plan.base_facts.clone().filter(|_| plan.base.is_none()) else {
        return Ok((plan, origins));
    };
    let mut missing = Vec::new();
    for idx in plan.needed() {
        let pl = &plan.layers[idx];
        if plan.needs_rootfs(idx)
            && produce::cached_layer(cache, &pl.key, &pl.name, progress)?.is_none()
        {
            missing.push(pl.name.clone());
        }
    }
    if missing.is_empty() {
        return Ok((plan, origins));
    }
    progress.say(format!(
        "no cache holds {}: making the base's root filesystem here",
        missing.join(", ")
    ));
    let (prepared, identity) = plan::prepare_base(recipe, &known.key, cache, progress)?;
    if identity == known.identity {
        plan.base = Some(prepared);
        return Ok((plan, origins));
    }
    progress.say(format!(
        "warning: the base made here ({}) is not the one the cache's facts describe ({}):          the layers on it are planned again",
        &identity[..12.min(identity.len())],
        &known.identity[..12.min(known.identity.len())]
    ));
    let inputs = Inputs {
        base: plan::BaseState::Ready(prepared, identity),
        key: plan.cluster_key.take(),
    };
    plan = make_plan(recipe, inputs, &opts.only)?;
    origins.extend(remote.fetch_missing(&plan, cache)?);
    leave_out_unbuilt_disks(&mut plan, opts, cache, progress)?;
    Ok((plan, origins))
}

/// Without `--disks`, a version's disk layers stay in the plan only when no disk-only package
/// layer of it would have to be built (one more mmdebstrap run): the cache (or a remote cache,
/// fetched just before) holds them. Its images are the same either way; their record then names
/// no disk layers, and `strata disk` asks for `build --disks`.
fn leave_out_unbuilt_disks(
    plan: &mut plan::Plan,
    opts: &Options,
    cache: &Cache,
    progress: &Progress,
) -> Result<()> {
    if opts.disks {
        return Ok(());
    }
    let mut unbuilt = std::collections::BTreeSet::new();
    for layers in plan.disk_layers.values() {
        for &idx in layers {
            let pl = &plan.layers[idx];
            if matches!(pl.producer, Producer::Disk(_))
                && produce::cached_layer(cache, &pl.key, &pl.name, progress)?.is_none()
            {
                unbuilt.insert(idx);
            }
        }
    }
    plan.disk_layers
        .retain(|_, layers| !layers.iter().any(|i| unbuilt.contains(i)));
    Ok(())
}

/// An image built to take its key at boot must hold no private key at all: a layer directory
/// that holds one (a key file copied into it by hand) fails the build, naming the layer.
fn refuse_keys_in_boot_images(
    plan: &plan::Plan,
    built: &HashMap<usize, (LayerFacts, PathBuf)>,
) -> Result<()> {
    for img in plan.images.iter().filter(|i| commit::keys_at_boot(plan, i)) {
        if let Some(&i) = img.layers.iter().find(|i| built[i].0.private_key) {
            crate::bad!(
                "{}: [ssh] deliver = \"boot\" promises images without a private key, but layer {} holds one: remove it from the layer",
                img.name,
                plan.layers[i].name
            );
        }
    }
    Ok(())
}

/// What `strata plan` prints.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct PlanReport {
    pub recipe: String,
    pub base_ready: bool,
    pub epoch: u64,
    pub epoch_source: EpochSource,
    pub layers: Vec<PlanLayer>,
    pub images: Vec<PlanImage>,
    /// Budget verdicts, sharing per image and per pair (estimated where nothing is built yet;
    /// unknown where a layer is not built and cannot be estimated).
    pub policy: Verdicts,
}

impl PlanReport {
    /// The error that sets the exit code when a budget is broken and the recipe enforces it.
    pub fn budget_error(&self) -> Option<BudgetExceeded> {
        let v = &self.policy;
        (!v.broken().is_empty() && v.enforce == Enforce::Fail).then(|| BudgetExceeded(v.clone()))
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct PlanLayer {
    pub name: String,
    pub key: String,
    /// The key depends on something not built yet; the first build settles it.
    pub provisional: bool,
    pub cached: bool,
    /// Not cached, and made only by `build --disks` (what a bootable disk adds: one more
    /// mmdebstrap run).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub only_with_disks: bool,
    /// Why this layer cannot be made before `build` prepares its inputs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending: Option<String>,
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

/// `strata plan`: what would be built and what is cached, without building or writing anything.
pub fn plan(recipe: &Recipe, opts: &Options) -> Result<PlanReport> {
    let cache = if opts.no_cache {
        Cache::nothing()
    } else {
        Cache::read_only(&opts.cache.clone().unwrap_or_else(Cache::default_dir))
    };
    let inputs = Inputs::look(recipe, &cache)?;
    let base_ready = !matches!(inputs.base, plan::BaseState::Unbuilt { .. });
    let plan = make_plan(recipe, inputs, &opts.only)?;
    // Each layer's cache record, read once.
    let records: Vec<Option<LayerFacts>> = plan
        .layers
        .iter()
        .map(|l| match &l.producer {
            Producer::Imported(r, _) => Some(r.clone()),
            _ if l.provisional => None,
            _ => cache.read_json::<LayerFacts>(&cache.layer_record_path(&l.key)),
        })
        .collect();
    let cached = |i: usize| records[i].clone();
    // What only a disk needs waits for `build --disks` while a disk-packages layer is not cached.
    let disks_wait = plan
        .disk_layers
        .values()
        .flatten()
        .any(|&i| matches!(plan.layers[i].producer, Producer::Disk(_)) && records[i].is_none());
    let disk_only: std::collections::BTreeSet<usize> =
        plan.disk_layers.values().flatten().copied().collect();
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
            let rec = cached(i);
            PlanLayer {
                name: l.name.clone(),
                key: l.key.clone(),
                provisional: l.provisional,
                cached: rec.is_some(),
                only_with_disks: rec.is_none() && disks_wait && disk_only.contains(&i),
                pending: match &l.producer {
                    Producer::Pending(why, _) => Some(why.clone()),
                    _ => None,
                },
                digest: rec.as_ref().map(|r| r.digest.to_string()),
                size: rec.as_ref().map(|r| r.size),
                uncompressed_size: rec.as_ref().map(|r| r.uncompressed_size),
                used_by: used.remove(&i).unwrap_or_default(),
            }
        })
        .collect();
    // Verdicts from what is known: cached layers exactly, directory layers estimated from their
    // rendered entries, the rest unknown until built.
    let known = |i: usize| -> Known {
        let l = &plan.layers[i];
        if let Some(r) = cached(i) {
            return Known {
                id: r.digest.to_string(),
                bytes: Some(r.uncompressed_size),
                stored: Some(r.size),
                estimated: false,
            };
        }
        let bytes = match &l.producer {
            Producer::Entries(e) | Producer::Pending(_, e) => Some(plan::estimate_tar_size(e)),
            _ => None,
        };
        Known {
            id: l.key.clone(),
            bytes,
            stored: None,
            estimated: bytes.is_some(),
        }
    };
    let blob_of = |i: usize| {
        let rec = cached(i)?;
        let blob = cache.blob_dir().join(rec.digest.digest());
        blob.exists().then_some((blob, rec.media_type))
    };
    let policy = budget::check(&plan, &opts.overrides, known, blob_of)?;
    Ok(PlanReport {
        recipe: recipe.name.clone(),
        base_ready,
        epoch: recipe.epoch,
        epoch_source: recipe.epoch_source,
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
        policy,
    })
}
