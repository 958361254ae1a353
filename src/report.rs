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

use crate::build::human;
use crate::inspect::{Damaged, View};
use crate::policy::{self, ImageSizes, LayerSize, Overrides, Policy, Verdicts};

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
            .filter(|i| i.hadoop_version.is_some() && crate::oci::split_name(&i.name).0 == recipe)
            .collect();
        let layer = |d: &String| {
            v.record
                .layers
                .get(d)
                .with_context(|| format!("the store record lacks layer {d}"))
        };
        let mut sizes = Vec::new();
        let mut report_images = Vec::new();
        let mut order: Vec<String> = Vec::new();
        for img in &images {
            let mut ls = Vec::new();
            for d in &img.layers {
                let l = layer(d)?;
                if !order.contains(d) {
                    order.push(d.clone());
                }
                ls.push(LayerSize {
                    id: d.clone(),
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
        let recorded: Policy = settings
            .get("policy")
            .cloned()
            .map(serde_json::from_value)
            .transpose()?
            .unwrap_or_default();
        let policy = recorded.with_overrides(overrides, &families)?;
        let mut verdicts = policy::evaluate(&policy, &sizes);
        if !verdicts.broken().is_empty() {
            let mut files = BTreeMap::new();
            for d in &order {
                let l = layer(d)?;
                let digest: Digest = d.parse()?;
                let per_version = l.shared_by.len() <= 1;
                let wanted = l.family == "base"
                    || per_version
                    || verdicts.broken().iter().any(|c| c.subject == l.name);
                if wanted {
                    files.insert(
                        l.name.clone(),
                        crate::inspect::blob_files(
                            &v.store.blob_path(&digest),
                            &l.media_type,
                            per_version,
                        )?,
                    );
                }
            }
            let excludes_docs = settings.get("excludes-docs").and_then(|x| x.as_bool());
            verdicts.advice = policy::advise(&verdicts, &sizes, &files, excludes_docs);
        }
        let layers = order
            .iter()
            .map(|d| {
                let l = layer(d)?;
                Ok(ReportLayer {
                    name: l.name.clone(),
                    family: l.family.clone(),
                    digest: d.clone(),
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
                let (d, _) =
                    crate::store::hash_reader(std::io::BufReader::with_capacity(1 << 20, f))?;
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

/// The verdicts as terminal lines.
pub fn text(r: &Report) -> String {
    let mut s = String::new();
    let floor = r.policy.min_shared;
    let _ = writeln!(s, "recipe {}", r.recipe);
    let _ = writeln!(
        s,
        "{:<22} {:>10} {:>10} {:>8} {:>9} {:>10}",
        "IMAGE", "BYTES", "STORED", "SHARED", "BASELINE", "OWN"
    );
    for (img, st) in r.images.iter().zip(&r.verdicts.images) {
        let mark = match floor {
            Some(f) if st.shared_fraction < f => " < min-shared",
            _ => "",
        };
        let _ = writeln!(
            s,
            "{:<22} {:>10} {:>10} {:>7.2}% {:>8.2}% {:>10}{mark}",
            img.name,
            human(img.bytes),
            human(img.stored),
            st.shared_fraction * 100.0,
            st.baseline_fraction * 100.0,
            human(st.own_bytes)
        );
    }
    s.push_str(&checks_text(&r.verdicts));
    s
}

/// Budget lines (shared with `plan`).
pub fn checks_text(v: &Verdicts) -> String {
    let mut s = String::new();
    if v.checks.is_empty() {
        s.push_str("no budgets set ([policy] and `budget` keys in the recipe, or --image-budget/--layer-budget/--min-shared)\n");
        return s;
    }
    let _ = writeln!(
        s,
        "{:<12} {:<24} {:>11} {:>11} {:>11}  VERDICT",
        "CHECK", "SUBJECT", "VALUE", "LIMIT", "HEADROOM"
    );
    for c in &v.checks {
        let (val, lim, head) = if c.kind == "min-shared" {
            (
                format!("{:.2}%", c.value * 100.0),
                format!("{:.2}%", c.limit * 100.0),
                format!("{:+.2}%", c.headroom * 100.0),
            )
        } else {
            let h = if c.headroom < 0.0 {
                format!("-{}", human((-c.headroom) as u64))
            } else {
                human(c.headroom as u64)
            };
            (human(c.value as u64), human(c.limit as u64), h)
        };
        let verdict = if c.ok { "ok" } else { "BROKEN" };
        let est = if c.estimated { " (estimate)" } else { "" };
        let _ = writeln!(
            s,
            "{:<12} {:<24} {:>11} {:>11} {:>11}  {verdict}{est}",
            c.kind, c.subject, val, lim, head
        );
    }
    if !v.advice.is_empty() {
        s.push_str("what to move where:\n");
        for a in &v.advice {
            let _ = writeln!(s, "  - {a}");
        }
    }
    s
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One self-contained HTML page for all reports.
pub fn html(reports: &[Report], store: &Path) -> String {
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
                    if c.ok { "ok" } else { "broken" },
                    if c.ok { "ok" } else { "BROKEN" }
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
    h
}
