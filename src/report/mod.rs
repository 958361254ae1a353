//! # `strata report`: sizes, sharing and budgets of a built store
//!
//! Reads the store alone (the recipe's policy is in the store record), checks that every blob it
//! counts is present and intact, and gives per recipe: each image's bytes and shared/baseline
//! fractions against `min-shared`, every budget with its headroom, what each pair of images
//! shares (on disk and by chain), and advice for what is broken. As a terminal table, `--json`,
//! or `--html FILE`: one self-contained page (inline SVG and CSS, no script, no network) with a
//! picture of the version × layer matrix, rendered from a template by [`html`] (see `html.rs`).

mod html;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, Result};
use oci_spec::image::Digest;
use serde::Serialize;

use crate::layer::FileInfo;
use crate::oci::record::{ImageRecord, LayerRecord};
use crate::oci::view::View;
use crate::policy::{
    self, BudgetExceeded, Enforce, ImageSizes, LayerSize, Overrides, Policy, Verdicts,
};
use crate::recipe::Settings as RecipeSettings;
use crate::support::error::Damaged;

pub use html::html;

#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Report {
    pub recipe: String,
    pub images: Vec<ReportImage>,
    pub layers: Vec<ReportLayer>,
    pub policy: Policy,
    pub verdicts: Verdicts,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ReportImage {
    pub name: String,
    pub bytes: u64,
    pub stored: u64,
    pub layers: Vec<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ReportLayer {
    pub name: String,
    pub family: String,
    pub digest: String,
    pub bytes: u64,
    pub stored: u64,
    pub used_by: Vec<String>,
}

/// Builds the report of every recipe in the store.
pub fn report(root: &Path, overrides: &Overrides) -> Result<Vec<Report>> {
    let v = View::open(root)?;
    check_blobs(&v)?;
    v.record
        .recipes
        .iter()
        .map(|(recipe, settings)| recipe_report(&v, recipe, settings, overrides))
        .collect()
}

/// One recipe's report: its version images, their layers, and its policy's verdicts (with
/// advice when a check is broken).
fn recipe_report(
    v: &View,
    recipe: &str,
    settings: &RecipeSettings,
    overrides: &Overrides,
) -> Result<Report> {
    let images: Vec<&ImageRecord> = v
        .record
        .images
        .iter()
        .filter(|i| i.hadoop_version.is_some() && i.recipe() == recipe)
        .collect();
    let sizes = images
        .iter()
        .map(|i| image_sizes(v, i))
        .collect::<Result<Vec<_>>>()?;
    let families: BTreeSet<String> = sizes
        .iter()
        .flat_map(|i| i.layers.iter().map(|l| l.family.clone()))
        .collect();
    let policy = settings
        .policy
        .clone()
        .with_overrides(overrides, &families)?;
    let mut verdicts = policy::evaluate(&policy, &sizes);
    let order = layer_order(&images);
    if !verdicts.broken().is_empty() {
        let files = advice_files(v, &order, &verdicts)?;
        verdicts.advice = policy::advise(&verdicts, &sizes, &files, settings.excludes_docs);
    }
    Ok(Report {
        recipe: recipe.to_string(),
        images: sizes.iter().map(report_image).collect(),
        layers: report_layers(v, &order, &images)?,
        policy,
        verdicts,
    })
}

fn layer_record<'a>(v: &'a View, d: &Digest) -> Result<&'a LayerRecord> {
    v.record
        .layer(d)
        .with_context(|| format!("the store record lacks layer {d}"))
}

/// An image's layers as the checks see them (all built: exact sizes).
fn image_sizes(v: &View, img: &ImageRecord) -> Result<ImageSizes> {
    let layers = img
        .layers
        .iter()
        .map(|d| {
            let l = layer_record(v, d)?;
            Ok(LayerSize {
                id: d.to_string(),
                name: l.name.clone(),
                family: l.family.clone(),
                bytes: Some(l.uncompressed_size),
                stored: Some(l.size),
                estimated: false,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(ImageSizes {
        name: img.name.clone(),
        layers,
    })
}

fn report_image(s: &ImageSizes) -> ReportImage {
    ReportImage {
        name: s.name.clone(),
        bytes: s.layers.iter().map(|l| l.bytes.unwrap_or(0)).sum(),
        stored: s.layers.iter().map(|l| l.stored.unwrap_or(0)).sum(),
        layers: s.layers.iter().map(|l| l.name.clone()).collect(),
    }
}

/// The recipe's layers, each once, in the order the images first use them.
fn layer_order(images: &[&ImageRecord]) -> Vec<Digest> {
    let mut order: Vec<Digest> = Vec::new();
    for d in images.iter().flat_map(|i| &i.layers) {
        if !order.contains(d) {
            order.push(d.clone());
        }
    }
    order
}

/// The files the advice looks into, by layer name: the base, the per-version layers, and every
/// layer a broken check names.
fn advice_files(
    v: &View,
    order: &[Digest],
    verdicts: &Verdicts,
) -> Result<BTreeMap<String, Vec<FileInfo>>> {
    let mut files = BTreeMap::new();
    for d in order {
        let l = layer_record(v, d)?;
        let per_version = l.shared_by.len() <= 1;
        let wanted = l.family == "base"
            || per_version
            || verdicts.broken().iter().any(|c| c.subject == l.name);
        if wanted {
            files.insert(
                l.name.clone(),
                crate::layer::blob_files(&v.store.blob_path(d), &l.media_type, per_version)?,
            );
        }
    }
    Ok(files)
}

fn report_layers(v: &View, order: &[Digest], images: &[&ImageRecord]) -> Result<Vec<ReportLayer>> {
    order
        .iter()
        .map(|d| {
            let l = layer_record(v, d)?;
            Ok(ReportLayer {
                name: l.name.clone(),
                family: l.family.clone(),
                digest: d.to_string(),
                bytes: l.uncompressed_size,
                stored: l.size,
                used_by: images
                    .iter()
                    .filter(|i| i.layers.contains(d))
                    .map(|i| i.name.clone())
                    .collect(),
            })
        })
        .collect()
}

/// Every blob the index reaches must be present, of the right size and digest.
fn check_blobs(v: &View) -> Result<()> {
    let mut problems = Vec::new();
    let reach = v
        .store
        .reachable(&v.index)
        .map_err(|e| Damaged(vec![format!("{e:#}")]))?;
    for hex in reach {
        let p = v.store.blob_dir().join(&hex);
        match std::fs::File::open(&p) {
            Err(_) => problems.push(format!("blob sha256:{hex} is missing")),
            Ok(f) => {
                let (d, _) = crate::support::hash::hash_reader(std::io::BufReader::with_capacity(
                    1 << 20,
                    f,
                ))?;
                if d.digest() != hex {
                    problems.push(format!(
                        "blob sha256:{hex} is corrupt (its bytes hash to {d})"
                    ));
                }
            }
        }
    }
    // Each descriptor's size is its blob's: a tool that trusts the descriptor reads the wrong
    // number of bytes otherwise.
    for d in v.index.manifests() {
        let mut sized = vec![(d.digest().clone(), d.size())];
        if let Ok(m) = v.store.read_manifest(d.digest()) {
            sized.push((m.config().digest().clone(), m.config().size()));
            sized.extend(m.layers().iter().map(|l| (l.digest().clone(), l.size())));
        }
        for (digest, size) in sized {
            let p = v.store.blob_path(&digest);
            if let Ok(m) = std::fs::metadata(&p)
                && m.len() != size
            {
                problems.push(format!(
                    "blob {digest} is {} bytes, its descriptor says {size}",
                    m.len()
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Damaged(problems).into())
    }
}

/// The error that sets the exit code: a broken budget the recipe enforces.
pub fn budget_error(reports: &[Report]) -> Option<BudgetExceeded> {
    reports
        .iter()
        .find(|r| !r.verdicts.broken().is_empty() && r.policy.enforce == Enforce::Fail)
        .map(|r| BudgetExceeded(r.verdicts.clone()))
}
