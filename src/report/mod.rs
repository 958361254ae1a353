//! # `strata report`: sizes, sharing and budgets of a built store
//!
//! Reads the store alone (the recipe's policy is in the store record), checks that every blob it
//! counts is present and intact, and gives per recipe: each image's bytes and shared/baseline
//! fractions against `min-shared`, every budget with its headroom, what each pair of images
//! shares (on disk and by chain), and advice for what is broken. As a terminal table, `--json`,
//! or `--html FILE`: one self-contained page (inline SVG and CSS, no script, no network) with a
//! picture of the version × layer matrix.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use oci_spec::image::Digest;
use serde::Serialize;

use crate::oci::view::View;
use crate::policy::{
    self, BudgetExceeded, Enforce, ImageSizes, LayerSize, Overrides, Policy, Verdicts,
};
use crate::support::error::Damaged;
use crate::support::units::human;

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
    let mut out = Vec::new();
    for (recipe, settings) in &v.record.recipes {
        let images: Vec<_> = v
            .record
            .images
            .iter()
            .filter(|i| {
                i.hadoop_version.is_some() && crate::oci::image::split_name(&i.name).0 == recipe
            })
            .collect();
        let layer = |d: &Digest| {
            v.record
                .layer(d)
                .with_context(|| format!("the store record lacks layer {d}"))
        };
        let mut sizes = Vec::new();
        let mut report_images = Vec::new();
        let mut order: Vec<Digest> = Vec::new();
        for img in &images {
            let mut ls = Vec::new();
            for d in &img.layers {
                let l = layer(d)?;
                if !order.contains(d) {
                    order.push(d.clone());
                }
                ls.push(LayerSize {
                    id: d.to_string(),
                    name: l.name.clone(),
                    family: l.family.clone(),
                    bytes: Some(l.uncompressed_size),
                    stored: Some(l.size),
                    estimated: false,
                });
            }
            report_images.push(ReportImage {
                name: img.name.clone(),
                bytes: ls.iter().map(|l| l.bytes.unwrap_or(0)).sum(),
                stored: ls.iter().map(|l| l.stored.unwrap_or(0)).sum(),
                layers: ls.iter().map(|l| l.name.clone()).collect(),
            });
            sizes.push(ImageSizes {
                name: img.name.clone(),
                layers: ls,
            });
        }
        let families: BTreeSet<String> = sizes
            .iter()
            .flat_map(|i| i.layers.iter().map(|l| l.family.clone()))
            .collect();
        let policy = settings
            .policy
            .clone()
            .with_overrides(overrides, &families)?;
        let mut verdicts = policy::evaluate(&policy, &sizes);
        if !verdicts.broken().is_empty() {
            let mut files = BTreeMap::new();
            for d in &order {
                let l = layer(d)?;
                let per_version = l.shared_by.len() <= 1;
                let wanted = l.family == "base"
                    || per_version
                    || verdicts.broken().iter().any(|c| c.subject == l.name);
                if wanted {
                    files.insert(
                        l.name.clone(),
                        crate::layer::blob_files(
                            &v.store.blob_path(d),
                            &l.media_type,
                            per_version,
                        )?,
                    );
                }
            }
            verdicts.advice = policy::advise(&verdicts, &sizes, &files, settings.excludes_docs);
        }
        let layers = order
            .iter()
            .map(|d| {
                let l = layer(d)?;
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
            .collect::<Result<Vec<_>>>()?;
        out.push(Report {
            recipe: recipe.clone(),
            images: report_images,
            layers,
            policy,
            verdicts,
        });
    }
    Ok(out)
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

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One self-contained HTML page for all reports.
pub fn html(reports: &[Report], store: &Path) -> Result<String> {
    let mut h = String::new();
    h.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>strata report</title>\n<style>\n");
    h.push_str("body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}\n");
    h.push_str("td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}td.l,th.l{text-align:left}\n");
    h.push_str(".ok{color:#17692b}.broken{color:#b00020;font-weight:bold}.cell{background:#dbe8ff;text-align:center}\n");
    h.push_str("</style></head><body>\n");
    let _ = writeln!(
        h,
        "<h1>strata report</h1><p>store <code>{}</code></p>",
        esc(&store.display().to_string())
    );
    for r in reports {
        let _ = writeln!(
            h,
            "<section data-recipe=\"{0}\"><h2>recipe {0}</h2>",
            esc(&r.recipe)
        );
        // The picture: one bar per image, one block per layer, width by bytes; shared layers
        // in blues (the same layer, the same colour), per-version ones in orange.
        let max = r.images.iter().map(|i| i.bytes).max().unwrap_or(1).max(1) as f64;
        let (label_w, bar_w, row_h) = (170.0, 760.0, 26.0);
        let height = row_h * r.images.len() as f64 + 40.0;
        let _ = writeln!(
            h,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" role=\"img\" aria-label=\"version by layer matrix\">",
            label_w + bar_w + 10.0
        );
        let palette = [
            "#1f5fbf", "#3d7fe0", "#6b9ff0", "#9fc0f7", "#c8dbfb", "#2b4f8a",
        ];
        let shared: BTreeMap<&str, usize> = r
            .layers
            .iter()
            .filter(|l| l.used_by.len() > 1)
            .enumerate()
            .map(|(i, l)| (l.digest.as_str(), i))
            .collect();
        for (row, img) in r.images.iter().enumerate() {
            let y = row as f64 * row_h + 10.0;
            let _ = writeln!(
                h,
                "<text x=\"0\" y=\"{}\" font-size=\"13\">{}</text>",
                y + 16.0,
                esc(&img.name)
            );
            let mut x = label_w;
            for lname in &img.layers {
                let Some(l) = r.layers.iter().find(|l| &l.name == lname) else {
                    continue;
                };
                let w = (l.bytes as f64 / max * bar_w).max(2.0);
                let fill = match shared.get(l.digest.as_str()) {
                    Some(i) => palette[i % palette.len()],
                    None => "#f08a24",
                };
                let _ = writeln!(
                    h,
                    "<rect x=\"{x:.1}\" y=\"{y}\" width=\"{w:.1}\" height=\"20\" fill=\"{fill}\" stroke=\"#fff\"><title>{} — {} ({} images)</title></rect>",
                    esc(&l.name),
                    human(l.bytes),
                    l.used_by.len()
                );
                x += w;
            }
        }
        let _ = writeln!(
            h,
            "<text x=\"{label_w}\" y=\"{}\" font-size=\"12\" fill=\"#555\">blue: layers shared by several images (one blob each); orange: per-version bytes; width: uncompressed bytes</text>",
            height - 8.0
        );
        h.push_str("</svg>\n");
        // Matrix: which image holds which layer.
        h.push_str("<table class=\"matrix\"><tr><th class=\"l\">image \\ layer</th>");
        for l in &r.layers {
            let _ = write!(
                h,
                "<th title=\"{}\">{}<br><small>{}</small></th>",
                esc(&l.digest),
                esc(&l.name),
                human(l.bytes)
            );
        }
        h.push_str("</tr>\n");
        for img in &r.images {
            let _ = write!(h, "<tr><td class=\"l\">{}</td>", esc(&img.name));
            for l in &r.layers {
                if img.layers.contains(&l.name) {
                    h.push_str("<td class=\"cell\">●</td>");
                } else {
                    h.push_str("<td></td>");
                }
            }
            h.push_str("</tr>\n");
        }
        h.push_str("</table>\n");
        // Sharing per image against the floor.
        let floor = r.policy.min_shared;
        h.push_str("<h3>Sharing</h3><table class=\"images\"><tr><th class=\"l\">image</th><th>bytes</th><th>stored</th><th>shared fraction</th><th>min-shared</th><th>baseline fraction</th><th>own bytes</th></tr>\n");
        for (img, st) in r.images.iter().zip(&r.verdicts.images) {
            let ok = floor.is_none_or(|f| st.shared_fraction >= f);
            let _ = writeln!(
                h,
                "<tr data-image=\"{0}\"><td class=\"l\">{0}</td><td data-key=\"bytes\">{1}</td><td data-key=\"stored\">{2}</td><td data-key=\"shared-fraction\" class=\"{3}\">{4:.6}</td><td data-key=\"min-shared\">{5}</td><td data-key=\"baseline-fraction\">{6:.6}</td><td data-key=\"own-bytes\">{7}</td></tr>",
                esc(&img.name),
                img.bytes,
                img.stored,
                if ok { "ok" } else { "broken" },
                st.shared_fraction,
                floor
                    .map(|f| format!("{f:.6}"))
                    .unwrap_or_else(|| "—".into()),
                st.baseline_fraction,
                st.own_bytes
            );
        }
        h.push_str("</table>\n<h3>Budgets</h3>\n");
        if r.verdicts.checks.is_empty() {
            h.push_str("<p>No budgets are set.</p>\n");
        } else {
            h.push_str("<table class=\"checks\"><tr><th class=\"l\">check</th><th class=\"l\">subject</th><th>value</th><th>limit</th><th>headroom</th><th class=\"l\">verdict</th></tr>\n");
            for c in &r.verdicts.checks {
                let _ = writeln!(
                    h,
                    "<tr data-check=\"{0}\" data-subject=\"{1}\"><td class=\"l\">{0}</td><td class=\"l\">{1}</td><td data-key=\"value\">{2}</td><td data-key=\"limit\">{3}</td><td data-key=\"headroom\">{4}</td><td class=\"l {5}\">{6}</td></tr>",
                    esc(&c.kind),
                    esc(&c.subject),
                    c.value,
                    c.limit,
                    c.headroom,
                    match c.ok {
                        Some(true) => "ok",
                        Some(false) => "broken",
                        None => "unknown",
                    },
                    c.verdict()
                );
            }
            h.push_str("</table>\n");
        }
        if !r.verdicts.advice.is_empty() {
            h.push_str("<h3>What to move where</h3><ul>\n");
            for a in &r.verdicts.advice {
                let _ = writeln!(h, "<li>{}</li>", esc(a));
            }
            h.push_str("</ul>\n");
        }
        h.push_str("</section>\n");
    }
    h.push_str("</body></html>\n");
    Ok(h)
}
