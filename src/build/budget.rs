//! # Budgets of a plan: one check for `plan` and `build`
//!
//! `plan` knows some layers exactly (cached), some by estimate (rendered directories) and some
//! not at all (a base not built yet); `build` knows every layer. Both call [`check`] with what
//! they know; unknown sizes give unknown verdicts, never broken ones.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use anyhow::Result;
use oci_spec::image::MediaType;

use crate::layer::FileInfo;
use crate::policy::{self, ImageSizes, LayerSize, Overrides, Verdicts};

use super::plan::Plan;

/// What is known of one planned layer's size.
pub struct Known {
    /// Digest when built, else the plan key.
    pub id: String,
    /// Uncompressed bytes; None: unknown until built.
    pub bytes: Option<u64>,
    /// Stored (compressed) bytes, when built.
    pub stored: Option<u64>,
    pub estimated: bool,
}

/// The verdicts of the recipe's policy (with the command line's overrides) on what is known
/// (sharing statistics even when the recipe sets no budget). Advice is added for broken checks,
/// from the blobs `blob_of` can find.
pub fn check(
    plan: &Plan,
    overrides: &Overrides,
    known: impl Fn(usize) -> Known,
    blob_of: impl Fn(usize) -> Option<(PathBuf, MediaType)>,
) -> Result<Verdicts> {
    let recipe = plan.recipe;
    let policy = recipe
        .policy
        .clone()
        .with_overrides(overrides, &recipe.families())?;
    let sizes = image_sizes(plan, known);
    let mut v = policy::evaluate(&policy, &sizes);
    if !v.broken().is_empty() {
        let files = advice_files(plan, &v, &sizes, blob_of)?;
        v.advice = policy::advise(&v, &sizes, &files, recipe.excludes_docs);
    }
    Ok(v)
}

/// The sizes of the version images (not `<recipe>:base`).
fn image_sizes(plan: &Plan, known: impl Fn(usize) -> Known) -> Vec<ImageSizes> {
    plan.images
        .iter()
        .filter(|i| i.version.is_some())
        .map(|img| ImageSizes {
            name: img.name.clone(),
            layers: img
                .layers
                .iter()
                .map(|&i| {
                    let k = known(i);
                    LayerSize {
                        id: k.id,
                        name: plan.layers[i].name.clone(),
                        family: plan.layers[i].family.clone(),
                        bytes: k.bytes,
                        stored: k.stored.filter(|s| *s > 0),
                        estimated: k.estimated,
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
    blob_of: impl Fn(usize) -> Option<(PathBuf, MediaType)>,
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
                crate::layer::blob_files(&blob, &media, per_version)?,
            );
        }
    }
    Ok(out)
}
