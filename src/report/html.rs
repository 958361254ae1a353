//! # The `--html` page: one self-contained file, for people
//!
//! [`html`] turns the reports into a view (this module: the folded matrix, the picture's
//! geometry, the tallies) and renders it with `page.html.j2`, embedded in the binary. The
//! template's name ends in `.html.j2`, so minijinja's default auto-escape callback (by name, the
//! `.j2` ignored) escapes every value for HTML; nothing here escapes by hand.
//!
//! What people read is rounded: sizes in KiB/MiB/GiB, fractions in %. The exact numbers stay on
//! the page, in `title` tooltips and in `data-*` attributes (`data-key` names the number,
//! `data-value` holds it as `--json` writes it), which the tests and scripts read.
//!
//! The version × layer matrix keeps one column per shared layer (one blob, several images) and
//! folds the layers only one image uses into one column per layer family (`hadoop-conf`,
//! `hadoop-dist`…): each image's cell there names its own layer and its size. So the matrix of
//! the default lab has five columns (base, JDK, user-env, hadoop-dist, hadoop-conf) however many
//! versions it builds, not one per layer.

use std::path::Path;

use anyhow::Result;
use minijinja::{Environment, UndefinedBehavior};
use serde::Serialize;

use super::{Report, ReportImage, ReportLayer};
use crate::policy::{Check, Enforce};
use crate::support::units::{human, percent};

const TEMPLATE_NAME: &str = "page.html.j2";
const TEMPLATE: &str = include_str!("page.html.j2");

/// Shared layers, the same layer in the same colour in the picture and the matrix.
const SHARED_COLOURS: [&str; 6] = [
    "#1f5fbf", "#3d7fe0", "#6b9ff0", "#2b4f8a", "#9fc0f7", "#4a6fa5",
];
/// Families of per-version layers.
const OWN_COLOURS: [&str; 4] = ["#e8781a", "#f4b068", "#b85a0e", "#d99a5b"];

/// The picture's geometry (SVG user units; the page scales it down to fit).
const PICTURE_WIDTH: f64 = 940.0;
const LABEL_WIDTH: f64 = 150.0;
const TOTAL_WIDTH: f64 = 80.0;
const ROW_HEIGHT: f64 = 24.0;
const BAR_HEIGHT: f64 = 18.0;

/// One self-contained HTML page for all reports (inline CSS and SVG, no script, no network).
pub fn html(reports: &[Report], store: &Path) -> Result<String> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.add_filter("bytes", bytes);
    env.add_filter("signed_bytes", signed_bytes);
    env.add_filter("percent", percent);
    env.add_filter("signed_percent", signed_percent);
    env.add_template(TEMPLATE_NAME, TEMPLATE)?;
    let page = Page {
        store: store.display().to_string(),
        recipes: reports.iter().map(RecipeView::new).collect(),
    };
    Ok(env.get_template(TEMPLATE_NAME)?.render(&page)?)
}

/// Bytes for people (`f64`: budgets and headroom are `f64` in the verdicts, and can be negative).
fn bytes(v: f64) -> String {
    if v < 0.0 {
        format!("-{}", human(-v as u64))
    } else {
        human(v as u64)
    }
}

fn signed_bytes(v: f64) -> String {
    if v < 0.0 {
        bytes(v)
    } else {
        format!("+{}", bytes(v))
    }
}

/// A difference of fractions (percentage points), written `+1.23%` as the terminal table does.
fn signed_percent(v: f64) -> String {
    format!("{:+.2}%", v * 100.0)
}

#[derive(Serialize)]
struct Page<'a> {
    store: String,
    recipes: Vec<RecipeView<'a>>,
}

#[derive(Serialize)]
struct RecipeView<'a> {
    recipe: &'a str,
    enforce: Enforce,
    min_shared: Option<f64>,
    /// Stored bytes of the recipe's blobs, each once (what the store holds).
    stored_once: u64,
    /// Stored bytes if every image had its own copy of every layer.
    stored_unshared: u64,
    shared_layers: usize,
    own_layers: usize,
    layers: &'a [ReportLayer],
    columns: Vec<Column<'a>>,
    images: Vec<ImageRow<'a>>,
    picture: Picture<'a>,
    checks: Vec<CheckRow<'a>>,
    tally: Tally,
    advice: &'a [String],
}

/// A column of the matrix: one shared layer, or a family of per-version layers folded together.
#[derive(Serialize)]
struct Column<'a> {
    folded: bool,
    /// The layer's name, or the family's.
    name: &'a str,
    colour: &'static str,
    /// The shared layer (not folded), and how many images have it.
    layer: Option<&'a ReportLayer>,
    users: usize,
    /// The per-version layers folded here, and the range of their sizes.
    count: usize,
    min_bytes: u64,
    max_bytes: u64,
}

#[derive(Serialize)]
struct ImageRow<'a> {
    name: &'a str,
    bytes: u64,
    stored: u64,
    shared_bytes: u64,
    shared_fraction: f64,
    baseline_bytes: u64,
    baseline_fraction: f64,
    own_bytes: u64,
    below_floor: bool,
    /// Per column, the image's layers in it (none, or usually one).
    cells: Vec<Vec<&'a ReportLayer>>,
}

#[derive(Serialize)]
struct Picture<'a> {
    width: f64,
    height: f64,
    bar_height: f64,
    bars: Vec<Bar<'a>>,
}

#[derive(Serialize)]
struct Bar<'a> {
    image: &'a str,
    bytes: u64,
    y: f64,
    text_y: f64,
    total_x: f64,
    blocks: Vec<Block<'a>>,
}

#[derive(Serialize)]
struct Block<'a> {
    x: f64,
    width: f64,
    colour: &'static str,
    layer: &'a ReportLayer,
    users: usize,
}

#[derive(Serialize)]
struct CheckRow<'a> {
    kind: &'a str,
    subject: &'a str,
    /// `min-shared` compares fractions; the others compare bytes.
    fraction: bool,
    value: f64,
    limit: f64,
    headroom: f64,
    /// `ok`, `broken` or `unknown` (the CSS class).
    state: &'static str,
    /// `ok`, `BROKEN` or `unknown`, as the terminal writes it.
    verdict: &'static str,
    estimated: bool,
    waits_for: Option<&'a str>,
}

#[derive(Serialize, Default)]
struct Tally {
    ok: usize,
    broken: usize,
    unknown: usize,
}

impl<'a> RecipeView<'a> {
    fn new(r: &'a Report) -> RecipeView<'a> {
        let columns = columns(&r.layers);
        let images = r
            .images
            .iter()
            .zip(&r.verdicts.images)
            .map(|(img, stats)| ImageRow {
                name: &img.name,
                bytes: stats.bytes,
                stored: img.stored,
                shared_bytes: stats.shared_bytes,
                shared_fraction: stats.shared_fraction,
                baseline_bytes: stats.baseline_bytes,
                baseline_fraction: stats.baseline_fraction,
                own_bytes: stats.own_bytes,
                below_floor: r
                    .policy
                    .min_shared
                    .is_some_and(|f| stats.shared_fraction < f),
                cells: columns.iter().map(|c| cell(c, img, &r.layers)).collect(),
            })
            .collect();
        let checks: Vec<CheckRow> = r.verdicts.checks.iter().map(CheckRow::new).collect();
        let mut tally = Tally::default();
        for c in &checks {
            match c.state {
                "ok" => tally.ok += 1,
                "broken" => tally.broken += 1,
                _ => tally.unknown += 1,
            }
        }
        let shared_layers = r.layers.iter().filter(|l| is_shared(l)).count();
        RecipeView {
            recipe: &r.recipe,
            enforce: r.policy.enforce,
            min_shared: r.policy.min_shared,
            stored_once: r.layers.iter().map(|l| l.stored).sum(),
            stored_unshared: r.images.iter().map(|i| i.stored).sum(),
            shared_layers,
            own_layers: r.layers.len() - shared_layers,
            layers: &r.layers,
            picture: picture(r, &columns),
            columns,
            images,
            checks,
            tally,
            advice: &r.verdicts.advice,
        }
    }
}

fn is_shared(l: &ReportLayer) -> bool {
    l.used_by.len() > 1
}

/// The matrix's columns, in the order the images first use the layers: each shared layer, and
/// one per family of the layers a single image uses.
fn columns(layers: &[ReportLayer]) -> Vec<Column<'_>> {
    let mut cols: Vec<Column> = Vec::new();
    let (mut shared, mut own) = (0, 0);
    for l in layers {
        if is_shared(l) {
            cols.push(Column {
                folded: false,
                name: &l.name,
                colour: SHARED_COLOURS[shared % SHARED_COLOURS.len()],
                layer: Some(l),
                users: l.used_by.len(),
                count: 1,
                min_bytes: l.bytes,
                max_bytes: l.bytes,
            });
            shared += 1;
        } else if let Some(c) = cols.iter_mut().find(|c| c.folded && c.name == l.family) {
            c.count += 1;
            c.min_bytes = c.min_bytes.min(l.bytes);
            c.max_bytes = c.max_bytes.max(l.bytes);
        } else {
            cols.push(Column {
                folded: true,
                name: &l.family,
                colour: OWN_COLOURS[own % OWN_COLOURS.len()],
                layer: None,
                users: 1,
                count: 1,
                min_bytes: l.bytes,
                max_bytes: l.bytes,
            });
            own += 1;
        }
    }
    cols
}

/// Does column `c` hold layer `l`?
fn holds(c: &Column, l: &ReportLayer) -> bool {
    match c.layer {
        Some(shared) => shared.digest == l.digest,
        None => !is_shared(l) && l.family == c.name,
    }
}

/// The image's layers in column `c`.
fn cell<'a>(c: &Column, img: &ReportImage, layers: &'a [ReportLayer]) -> Vec<&'a ReportLayer> {
    img.layers
        .iter()
        .filter_map(|name| layers.iter().find(|l| &l.name == name))
        .filter(|l| holds(c, l))
        .collect()
}

/// One bar per image, one block per layer, widths by uncompressed bytes, coloured as the
/// layer's matrix column.
fn picture<'a>(r: &'a Report, columns: &[Column]) -> Picture<'a> {
    let bar_width = PICTURE_WIDTH - LABEL_WIDTH - TOTAL_WIDTH;
    let max = r.images.iter().map(|i| i.bytes).max().unwrap_or(1).max(1) as f64;
    let tenth = |v: f64| (v * 10.0).round() / 10.0;
    let bars = r
        .images
        .iter()
        .enumerate()
        .map(|(row, img)| {
            let y = row as f64 * ROW_HEIGHT + 4.0;
            let mut x = LABEL_WIDTH;
            let mut blocks = Vec::new();
            for name in &img.layers {
                let Some(l) = r.layers.iter().find(|l| &l.name == name) else {
                    continue;
                };
                let width = (l.bytes as f64 / max * bar_width).max(2.0);
                let colour = columns
                    .iter()
                    .find(|c| holds(c, l))
                    .map_or(OWN_COLOURS[0], |c| c.colour);
                blocks.push(Block {
                    x: tenth(x),
                    width: tenth(width),
                    colour,
                    layer: l,
                    users: l.used_by.len(),
                });
                x += width;
            }
            Bar {
                image: &img.name,
                bytes: img.bytes,
                y,
                text_y: y + 14.0,
                total_x: tenth(x + 6.0),
                blocks,
            }
        })
        .collect();
    Picture {
        width: PICTURE_WIDTH,
        bar_height: BAR_HEIGHT,
        height: r.images.len() as f64 * ROW_HEIGHT + 8.0,
        bars,
    }
}

impl<'a> CheckRow<'a> {
    fn new(c: &'a Check) -> CheckRow<'a> {
        CheckRow {
            kind: &c.kind,
            subject: &c.subject,
            fraction: c.kind == "min-shared",
            value: c.value,
            limit: c.limit,
            headroom: c.headroom,
            state: match c.ok {
                Some(true) => "ok",
                Some(false) => "broken",
                None => "unknown",
            },
            verdict: c.verdict(),
            estimated: c.estimated,
            waits_for: c.waits_for.as_deref(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{self, ImageSizes, LayerSize, Policy, Size};

    /// An image's layers: (name, family, uncompressed bytes).
    type Layers<'a> = Vec<(&'a str, &'a str, u64)>;

    /// A report as `report` would give it: `images` by name, each with its layers (name, family,
    /// uncompressed bytes); a layer is one blob wherever the same name appears.
    fn report(recipe: &str, policy: Policy, images: &[(&str, Layers)]) -> Report {
        let sizes: Vec<ImageSizes> = images
            .iter()
            .map(|(name, ls)| ImageSizes {
                name: name.to_string(),
                layers: ls
                    .iter()
                    .map(|(l, family, bytes)| LayerSize {
                        id: crate::support::hash::sha256_of(l.as_bytes()).to_string(),
                        name: l.to_string(),
                        family: family.to_string(),
                        bytes: Some(*bytes),
                        stored: Some(bytes / 3),
                        estimated: false,
                    })
                    .collect(),
            })
            .collect();
        let verdicts = policy::evaluate(&policy, &sizes);
        let mut layers: Vec<ReportLayer> = Vec::new();
        for l in sizes.iter().flat_map(|i| &i.layers) {
            if !layers.iter().any(|r| r.digest == l.id) {
                layers.push(ReportLayer {
                    name: l.name.clone(),
                    family: l.family.clone(),
                    digest: l.id.clone(),
                    bytes: l.bytes.unwrap(),
                    stored: l.stored.unwrap(),
                    used_by: sizes
                        .iter()
                        .filter(|i| i.layers.iter().any(|x| x.id == l.id))
                        .map(|i| i.name.clone())
                        .collect(),
                });
            }
        }
        Report {
            recipe: recipe.into(),
            images: sizes.iter().map(super::super::report_image).collect(),
            layers,
            policy,
            verdicts,
        }
    }

    /// The default lab's shape: nine versions over base, JDK and user-env, each with its own
    /// release and configuration layers.
    fn lab() -> Report {
        let versions = [
            "2.7.7", "2.8.5", "2.9.2", "2.10.2", "3.1.4", "3.2.4", "3.3.6", "3.4.0", "3.4.1",
        ];
        let names: Vec<(String, String, String)> = versions
            .iter()
            .map(|v| {
                (
                    format!("hadoop-lab:{v}"),
                    format!("hadoop-dist-{v}"),
                    format!("hadoop-conf-{v}"),
                )
            })
            .collect();
        let images: Vec<(&str, Layers)> = names
            .iter()
            .enumerate()
            .map(|(i, (img, dist, conf))| {
                (
                    img.as_str(),
                    vec![
                        ("base", "base", 96 << 20),
                        ("jdk-openjdk-11", "jdk-openjdk-11", 182 << 20),
                        ("user-env", "user-env", 40 << 10),
                        (dist.as_str(), "hadoop-dist", (250 + 40 * i as u64) << 20),
                        (conf.as_str(), "hadoop-conf", (30 + i as u64) << 10),
                    ],
                )
            })
            .collect();
        let policy = Policy {
            image_budget: Some(Size(1 << 30)),
            min_shared: Some(0.4),
            ..Policy::default()
        };
        report("hadoop-lab", policy, &images)
    }

    /// Two versions, every kind of check, one broken, one unknown, advice.
    fn tiny() -> Report {
        let shared = |v: Vec<(&'static str, &'static str, u64)>| {
            let mut all = vec![
                ("base", "base", 312_320),
                ("jdk-tiny-11", "jdk-tiny-11", 10_240),
                ("user-env", "user-env", 41_472),
            ];
            all.extend(v);
            all
        };
        let policy = Policy {
            image_budget: Some(Size(1 << 20)),
            min_shared: Some(0.9),
            per_version_budget: Some(Size(16 << 10)),
            layer_budgets: [("user-env".to_string(), Size(64 << 10))].into(),
            ..Policy::default()
        };
        let mut r = report(
            "tiny",
            policy,
            &[
                (
                    "tiny:2.10.2",
                    shared(vec![("hadoop-conf-2.10.2", "hadoop-conf", 14_848)]),
                ),
                (
                    "tiny:3.3.6",
                    shared(vec![("hadoop-conf-3.3.6", "hadoop-conf", 22_016)]),
                ),
            ],
        );
        // What a plan before the JDK is built would say of one check.
        let c = r
            .verdicts
            .checks
            .iter_mut()
            .find(|c| c.kind == "image" && c.subject == "tiny:3.3.6")
            .unwrap();
        c.ok = None;
        c.waits_for = Some("jdk-tiny-11".into());
        r.verdicts.advice = vec![
            "layer hadoop-conf-3.3.6: biggest files: /etc/hadoop/yarn-site.xml (6.1 KiB)".into(),
        ];
        r
    }

    fn page(r: &Report) -> String {
        html(std::slice::from_ref(r), Path::new("/srv/strata/output")).unwrap()
    }

    #[test]
    fn the_page_of_a_small_report() {
        let r = tiny();
        assert!(r.verdicts.checks.iter().any(|c| c.broken()), "one broken");
        insta::with_settings!({
            snapshot_path => concat!(env!("CARGO_MANIFEST_DIR"), "/tests/snapshots"),
            prepend_module_to_snapshot => false,
        }, {
            insta::assert_snapshot!("report-page", page(&r));
        });
    }

    #[test]
    fn per_version_layers_fold_into_one_column_per_family() {
        let r = lab();
        assert_eq!((r.images.len(), r.layers.len()), (9, 21));
        let cols = columns(&r.layers);
        let names: Vec<(&str, bool, usize)> =
            cols.iter().map(|c| (c.name, c.folded, c.count)).collect();
        assert_eq!(
            names,
            [
                ("base", false, 1),
                ("jdk-openjdk-11", false, 1),
                ("user-env", false, 1),
                ("hadoop-dist", true, 9),
                ("hadoop-conf", true, 9),
            ]
        );
        // Each image's cell names its own layer.
        let img = &r.images[3];
        let own: Vec<&str> = cols
            .iter()
            .flat_map(|c| cell(c, img, &r.layers))
            .map(|l| l.name.as_str())
            .collect();
        assert_eq!(
            own,
            [
                "base",
                "jdk-openjdk-11",
                "user-env",
                "hadoop-dist-2.10.2",
                "hadoop-conf-2.10.2"
            ]
        );
        let html = page(&r);
        assert_eq!(html.matches("<th class=\"layer").count(), 5);
    }

    #[test]
    fn numbers_read_as_sizes_and_percentages_and_stay_exact_in_attributes() {
        let r = tiny();
        let html = page(&r);
        let st = &r.verdicts.images[0];
        assert!(html.contains(&format!(
            "data-key=\"shared-fraction\" data-value=\"{}\"",
            st.shared_fraction
        )));
        assert!(html.contains(&percent(st.shared_fraction)));
        assert!(html.contains(&format!("data-value=\"{}\"", r.images[0].bytes)));
        assert!(html.contains(&human(r.images[0].bytes)));
        // No long fraction and no raw byte count reaches the text people read.
        let text = visible_text(&html);
        assert!(!text.contains(&st.shared_fraction.to_string()), "{text}");
        for n in r
            .images
            .iter()
            .map(|i| i.bytes)
            .chain(r.layers.iter().map(|l| l.bytes))
        {
            assert!(!text.contains(&n.to_string()), "{n} in {text}");
        }
    }

    #[test]
    fn every_value_is_escaped() {
        let mut r = tiny();
        r.recipe = "<script>alert(\"x\")</script>&".into();
        r.verdicts.advice = vec!["move <b> & \"c\"".into()];
        let html = page(&r);
        assert!(
            !html.contains("<script>") && !html.contains("<b>"),
            "{html}"
        );
        assert!(html.contains("&lt;script&gt;") && html.contains("&amp;"));
    }

    #[test]
    fn the_page_stands_alone() {
        let html = page(&lab());
        for banned in ["<script", "src=", "href=", "@import", "url("] {
            assert!(!html.contains(banned), "{banned}");
        }
    }

    /// The page's text outside tags and attributes, without tooltips (SVG `title` elements).
    fn visible_text(html: &str) -> String {
        let mut body = html[html.find("<body").unwrap()..].to_string();
        while let Some(start) = body.find("<title>") {
            let end = body[start..].find("</title>").unwrap() + start;
            body.replace_range(start..end, "");
        }
        let mut out = String::new();
        let mut in_tag = false;
        for ch in body.chars() {
            match ch {
                '<' => in_tag = true,
                '>' => {
                    in_tag = false;
                    out.push(' ');
                }
                c if !in_tag => out.push(c),
                _ => {}
            }
        }
        out
    }
}
