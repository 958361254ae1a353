//! # Size budgets and reuse: the image-size / baseline tradeoff, checked
//!
//! A VM image that is too big loads slowly and makes VM creation fail; a base that is too thin is
//! reused too little. A recipe's `[policy]` and per-layer `budget`s say where the line is:
//!
//! - a budget per layer and per image (uncompressed bytes: what a VM disk or a container holds);
//! - `min-shared`: of each image's bytes, the fraction in layers it shares with at least one other
//!   image of the recipe must reach this floor (the **baseline** fraction, bytes in layers *every*
//!   image shares, is reported beside it);
//! - `per-version-budget`: what each version adds on top of the shared layers.
//!
//! [`evaluate`] turns layer sizes into [`Verdicts`]; when a check fails, [`advise`] says what to
//! move where: the biggest files and directories of the offending layer, the files that are
//! byte-identical in several per-version layers (and the bytes a shared layer would save), and
//! what the base carries that no image uses at run time (docs, man pages, locales).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::layer::FileInfo;
use crate::support::error::BadInput;
use crate::support::suggest::nearest;
pub use crate::support::units::Size;
use crate::support::units::human;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Enforce {
    /// A broken budget fails the build; nothing is published.
    #[default]
    Fail,
    /// A broken budget is reported; the build goes on.
    Warn,
}

/// The checks of a recipe (after command-line overrides).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Policy {
    pub enforce: Enforce,
    pub image_budget: Option<Size>,
    pub min_shared: Option<f64>,
    pub per_version_budget: Option<Size>,
    /// By layer family: `base`, `jdk-<name>`, a `[[layer]]` name, `hadoop-dist`.
    pub layer_budgets: BTreeMap<String, Size>,
}

impl Policy {
    /// Applies `--image-budget`, `--layer-budget NAME=SIZE` and `--min-shared` overrides
    /// (parsed by the command line); a layer name the recipe does not have is refused.
    pub fn with_overrides(
        mut self,
        o: &Overrides,
        families: &BTreeSet<String>,
    ) -> Result<Policy, BadInput> {
        if let Some(s) = o.image_budget {
            self.image_budget = Some(s);
        }
        if let Some(r) = o.min_shared {
            self.min_shared = Some(r);
        }
        for (name, size) in &o.layer_budgets {
            if !families.contains(name) {
                let names: Vec<&str> = families.iter().map(String::as_str).collect();
                let hint = nearest(name, &names)
                    .map(|n| format!(" Did you mean {n:?}?"))
                    .unwrap_or_default();
                return Err(BadInput(format!(
                    "--layer-budget: no layer {name:?} in this recipe (layers: {}).{hint}",
                    names.join(", ")
                )));
            }
            self.layer_budgets.insert(name.clone(), *size);
        }
        Ok(self)
    }

    pub fn is_empty(&self) -> bool {
        self.image_budget.is_none()
            && self.min_shared.is_none()
            && self.per_version_budget.is_none()
            && self.layer_budgets.is_empty()
    }
}

/// Command-line overrides (parsed by `cli`).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub image_budget: Option<Size>,
    /// (layer family, budget).
    pub layer_budgets: Vec<(String, Size)>,
    pub min_shared: Option<f64>,
}

/// One layer of one image, as the checks see it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct LayerSize {
    /// Identity (digest, or plan key when not built yet).
    pub id: String,
    pub name: String,
    pub family: String,
    /// Uncompressed bytes (the tar stream); None when unknown (not built, no estimate).
    pub bytes: Option<u64>,
    /// Compressed bytes on disk, when built.
    pub stored: Option<u64>,
    /// True when the size is an estimate (plan before a build).
    #[serde(default)]
    pub estimated: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct ImageSizes {
    pub name: String,
    pub layers: Vec<LayerSize>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct Check {
    /// `layer`, `image`, `min-shared` or `per-version`.
    pub kind: String,
    /// The layer or image checked.
    pub subject: String,
    pub value: f64,
    pub limit: f64,
    /// Limit minus value for budgets, value minus floor for `min-shared` (negative: broken).
    pub headroom: f64,
    /// `true` passed, `false` broken, `null` unknown: a layer it needs is not built yet (and
    /// what is known does not already break it). See `waits-for`.
    pub ok: Option<bool>,
    /// The value is (partly) an estimate (plan before a build).
    pub estimated: bool,
    /// The layers whose size is unknown until they are built (`base`, a JDK…), when `ok` is null.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waits_for: Option<String>,
}

impl Check {
    pub fn broken(&self) -> bool {
        self.ok == Some(false)
    }

    /// `ok`, `BROKEN` or `unknown`, for people.
    pub fn verdict(&self) -> &'static str {
        match self.ok {
            Some(true) => "ok",
            Some(false) => "BROKEN",
            None => "unknown",
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct ImageStats {
    pub name: String,
    pub bytes: u64,
    pub shared_bytes: u64,
    pub shared_fraction: f64,
    pub baseline_bytes: u64,
    pub baseline_fraction: f64,
    pub own_bytes: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct PairShare {
    pub a: String,
    pub b: String,
    /// Stored (compressed) bytes of the blobs both images hold.
    pub on_disk: u64,
    /// Uncompressed bytes of their common layer-chain prefix (what Docker and containerd reuse).
    pub by_chain: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct Verdicts {
    pub enforce: Enforce,
    pub checks: Vec<Check>,
    pub images: Vec<ImageStats>,
    pub pairs: Vec<PairShare>,
    pub advice: Vec<String>,
}

impl Verdicts {
    pub fn broken(&self) -> Vec<&Check> {
        self.checks.iter().filter(|c| c.broken()).collect()
    }

    /// The checks that cannot be decided until more layers are built.
    pub fn unknown(&self) -> Vec<&Check> {
        self.checks.iter().filter(|c| c.ok.is_none()).collect()
    }
}

/// Computes every check and the sharing statistics of a recipe's version images.
pub fn evaluate(policy: &Policy, images: &[ImageSizes]) -> Verdicts {
    let users: BTreeMap<&str, usize> = {
        let mut m = BTreeMap::new();
        for img in images {
            let distinct: BTreeSet<&str> = img.layers.iter().map(|l| l.id.as_str()).collect();
            for id in distinct {
                *m.entry(id).or_insert(0) += 1;
            }
        }
        m
    };
    let n = images.len();
    let mut checks = Vec::new();
    let mut stats = Vec::new();
    let mut seen_layers = BTreeSet::new();
    for img in images {
        let est = img.layers.iter().any(|l| l.estimated);
        let bytes_of = |l: &LayerSize| l.bytes.unwrap_or(0);
        let is_shared = |l: &LayerSize| users[l.id.as_str()] >= 2;
        let unknown_in = |pick: &dyn Fn(&LayerSize) -> bool| -> Option<String> {
            let names: Vec<&str> = img
                .layers
                .iter()
                .filter(|l| l.bytes.is_none() && pick(l))
                .map(|l| l.name.as_str())
                .collect();
            (!names.is_empty()).then(|| names.join(", "))
        };
        let total: u64 = img.layers.iter().map(bytes_of).sum();
        let shared: u64 = img
            .layers
            .iter()
            .filter(|l| is_shared(l))
            .map(bytes_of)
            .sum();
        let baseline: u64 = img
            .layers
            .iter()
            .filter(|l| users[l.id.as_str()] == n && n >= 2)
            .map(bytes_of)
            .sum();
        let own = total - shared;
        let frac = |x: u64| {
            if total == 0 {
                0.0
            } else {
                x as f64 / total as f64
            }
        };
        stats.push(ImageStats {
            name: img.name.clone(),
            bytes: total,
            shared_bytes: shared,
            shared_fraction: frac(shared),
            baseline_bytes: baseline,
            baseline_fraction: frac(baseline),
            own_bytes: own,
        });
        if let Some(b) = policy.image_budget {
            let waits = unknown_in(&|_| true);
            checks.push(budget("image", &img.name, total, b, est, waits));
        }
        if let Some(m) = policy.min_shared
            && n >= 2
        {
            let f = frac(shared);
            let waits = unknown_in(&|_| true);
            checks.push(Check {
                kind: "min-shared".into(),
                subject: img.name.clone(),
                value: f,
                limit: m,
                headroom: f - m,
                // A fraction with an unknown part can go either way.
                ok: if waits.is_some() { None } else { Some(f >= m) },
                estimated: est,
                waits_for: waits,
            });
        }
        if let Some(b) = policy.per_version_budget {
            let waits = unknown_in(&|l| !is_shared(l));
            checks.push(budget("per-version", &img.name, own, b, est, waits));
        }
        for l in &img.layers {
            if let Some(b) = policy.layer_budgets.get(&l.family)
                && seen_layers.insert(l.id.clone())
            {
                let waits = l.bytes.is_none().then(|| l.name.clone());
                checks.push(budget(
                    "layer",
                    &l.name,
                    bytes_of(l),
                    *b,
                    l.estimated,
                    waits,
                ));
            }
        }
    }
    let mut pairs = Vec::new();
    for (i, a) in images.iter().enumerate() {
        for b in &images[i + 1..] {
            let bi: BTreeSet<&str> = b.layers.iter().map(|l| l.id.as_str()).collect();
            let mut seen = BTreeSet::new();
            let on_disk = a
                .layers
                .iter()
                .filter(|l| bi.contains(l.id.as_str()) && seen.insert(l.id.as_str()))
                .map(|l| l.stored.unwrap_or(0))
                .sum();
            let by_chain = a
                .layers
                .iter()
                .zip(&b.layers)
                .take_while(|(x, y)| x.id == y.id)
                .map(|(x, _)| x.bytes.unwrap_or(0))
                .sum();
            pairs.push(PairShare {
                a: a.name.clone(),
                b: b.name.clone(),
                on_disk,
                by_chain,
            });
        }
    }
    Verdicts {
        enforce: policy.enforce,
        checks,
        images: stats,
        pairs,
        advice: vec![],
    }
}

/// A budget check of `value` bytes, of which the layers in `waits` are not known yet: sizes only
/// grow, so a known part over the limit is broken already; under it, the check waits.
fn budget(
    kind: &str,
    subject: &str,
    value: u64,
    limit: Size,
    estimated: bool,
    waits: Option<String>,
) -> Check {
    let ok = match (value <= limit.0, &waits) {
        (false, _) => Some(false),
        (true, None) => Some(true),
        (true, Some(_)) => None,
    };
    Check {
        kind: kind.into(),
        subject: subject.into(),
        value: value as f64,
        limit: limit.0 as f64,
        headroom: limit.0 as f64 - value as f64,
        ok,
        estimated,
        waits_for: if ok.is_none() { waits } else { None },
    }
}

/// A broken budget with `enforce = "fail"`: the build stops before the store is touched.
#[derive(Debug, thiserror::Error)]
#[error("{}", describe(.0))]
pub struct BudgetExceeded(pub Verdicts);

/// People-readable lines for the broken checks and the advice.
pub fn describe(v: &Verdicts) -> String {
    let mut lines = Vec::new();
    for c in v.broken() {
        let est = if c.estimated { " (estimated)" } else { "" };
        lines.push(match c.kind.as_str() {
            "min-shared" => format!(
                "image {}: only {:.1}% of its bytes are in shared layers, below min-shared {:.1}%{est}",
                c.subject,
                c.value * 100.0,
                c.limit * 100.0
            ),
            "per-version" => format!(
                "image {}: adds {} of its own on top of the shared layers, over per-version-budget {}{est}",
                c.subject,
                human(c.value as u64),
                human(c.limit as u64)
            ),
            kind => format!(
                "{kind} {}: {} is over its budget {} by {}{est}",
                c.subject,
                human(c.value as u64),
                human(c.limit as u64),
                human((-c.headroom) as u64)
            ),
        });
    }
    let mut s = format!(
        "{} budget check(s) failed:\n  {}",
        lines.len(),
        lines.join("\n  ")
    );
    if !v.advice.is_empty() {
        s.push_str("\nwhat to move where:\n  ");
        s.push_str(&v.advice.join("\n  "));
    }
    s
}

/// What to move where, for the broken checks. `files` lists the files of layers by name (the
/// offending layers and the per-version layers).
pub fn advise(
    verdicts: &Verdicts,
    images: &[ImageSizes],
    files: &BTreeMap<String, Vec<FileInfo>>,
    base_excludes_docs: Option<bool>,
) -> Vec<String> {
    let mut out = Vec::new();
    let mut explained = BTreeSet::new();
    let mut explain_layer = |out: &mut Vec<String>, layer: &str| {
        if !explained.insert(layer.to_string()) {
            return;
        }
        let Some(fs) = files.get(layer) else { return };
        let mut biggest: Vec<&FileInfo> = fs.iter().collect();
        biggest.sort_by(|a, b| b.size.cmp(&a.size).then(a.path.cmp(&b.path)));
        let list: Vec<String> = biggest
            .iter()
            .take(5)
            .map(|f| format!("/{} ({})", f.path, human(f.size)))
            .collect();
        out.push(format!("layer {layer}: biggest files: {}", list.join(", ")));
        let mut dirs: BTreeMap<String, u64> = BTreeMap::new();
        for f in fs {
            let parts: Vec<&str> = f.path.split('/').collect();
            if parts.len() > 1 {
                let d = parts[..parts.len().saturating_sub(1).min(3)].join("/");
                *dirs.entry(d).or_insert(0) += f.size;
            }
        }
        let mut dirs: Vec<(String, u64)> = dirs.into_iter().collect();
        dirs.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let list: Vec<String> = dirs
            .iter()
            .take(5)
            .map(|(d, s)| format!("/{d} ({})", human(*s)))
            .collect();
        out.push(format!(
            "layer {layer}: biggest directories: {}",
            list.join(", ")
        ));
    };
    let broken = verdicts.broken();
    for c in &broken {
        match c.kind.as_str() {
            "layer" => explain_layer(&mut out, &c.subject),
            "image" => {
                if let Some(img) = images.iter().find(|i| i.name == c.subject) {
                    let mut ls: Vec<&LayerSize> = img.layers.iter().collect();
                    ls.sort_by_key(|l| std::cmp::Reverse(l.bytes.unwrap_or(0)));
                    let list: Vec<String> = ls
                        .iter()
                        .take(3)
                        .map(|l| format!("{} ({})", l.name, human(l.bytes.unwrap_or(0))))
                        .collect();
                    out.push(format!(
                        "image {}: {} over budget; its biggest layers: {}",
                        img.name,
                        human((-c.headroom) as u64),
                        list.join(", ")
                    ));
                    if let Some(l) = ls.first() {
                        explain_layer(&mut out, &l.name);
                    }
                }
            }
            _ => {}
        }
    }
    // Files byte-identical in several per-version layers belong in a shared layer.
    if broken
        .iter()
        .any(|c| c.kind == "min-shared" || c.kind == "per-version")
    {
        let per_version: Vec<(&String, &Vec<FileInfo>)> = files
            .iter()
            .filter(|(name, _)| is_per_version(name, images))
            .collect();
        let mut by_content: BTreeMap<(String, [u8; 32]), Vec<&str>> = BTreeMap::new();
        let mut sizes = BTreeMap::new();
        for (layer, fs) in &per_version {
            for f in fs.iter() {
                if let Some(h) = f.sha256 {
                    by_content
                        .entry((f.path.clone(), h))
                        .or_default()
                        .push(layer.as_str());
                    sizes.insert((f.path.clone(), h), f.size);
                }
            }
        }
        let mut dups: Vec<(u64, String, usize)> = by_content
            .into_iter()
            .filter(|(_, ls)| ls.len() >= 2)
            .map(|(k, ls)| (sizes[&k] * (ls.len() as u64 - 1), k.0, ls.len()))
            .collect();
        dups.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        if dups.is_empty() {
            out.push("no file is byte-identical across the per-version layers: the per-version bytes are truly per version; raise the budget or move the version-specific payload (e.g. the release tarball) out with [dist] mode = \"mount\" or \"first-boot\"".into());
        } else {
            let total: u64 = dups.iter().map(|d| d.0).sum();
            let list: Vec<String> = dups
                .iter()
                .take(8)
                .map(|(s, p, n)| format!("/{p} (in {n} layers, saves {})", human(*s)))
                .collect();
            out.push(format!(
                "{} file(s) are byte-identical in several per-version layers; moving them into a shared layer saves {}: {}",
                dups.len(),
                human(total),
                list.join(", ")
            ));
        }
    }
    // What the base carries that no image uses at run time.
    if !broken.is_empty()
        && base_excludes_docs == Some(false)
        && let Some(fs) = files.get("base")
    {
        let docs: u64 = fs
            .iter()
            .filter(|f| {
                [
                    "usr/share/doc/",
                    "usr/share/man/",
                    "usr/share/locale/",
                    "usr/share/info/",
                ]
                .iter()
                .any(|p| f.path.starts_with(p))
            })
            .filter(|f| !f.path.ends_with("/copyright"))
            .map(|f| f.size)
            .sum();
        if docs > 0 {
            out.push(format!("base: {} of docs, man pages, locales and info no image uses at run time: set exclude-docs = true in [base]", human(docs)));
        }
    }
    out
}

fn is_per_version(layer: &str, images: &[ImageSizes]) -> bool {
    let users = images
        .iter()
        .filter(|i| i.layers.iter().any(|l| l.name == layer))
        .count();
    users == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units_and_refuse_nonsense() {
        assert_eq!("450MiB".parse::<Size>().unwrap(), Size(450 << 20));
        assert_eq!("1.5GiB".parse::<Size>().unwrap(), Size(3 << 29));
        assert_eq!("2GB".parse::<Size>().unwrap(), Size(2_000_000_000));
        assert_eq!("1000".parse::<Size>().unwrap(), Size(1000));
        assert!("-1MiB".parse::<Size>().unwrap_err().contains("negative"));
        assert!(
            "12 parsecs"
                .parse::<Size>()
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!(crate::support::units::parse_ratio("1.5").is_err());
        assert_eq!(crate::support::units::parse_ratio("0.6").unwrap(), 0.6);
    }

    fn layer(id: &str, bytes: u64) -> LayerSize {
        LayerSize {
            id: id.into(),
            name: id.into(),
            family: id.trim_end_matches(char::is_numeric).into(),
            bytes: Some(bytes),
            stored: Some(bytes / 2),
            estimated: false,
        }
    }

    #[test]
    fn shared_and_baseline_fractions() {
        let imgs = vec![
            ImageSizes {
                name: "a".into(),
                layers: vec![layer("base", 80), layer("x", 10), layer("conf1", 10)],
            },
            ImageSizes {
                name: "b".into(),
                layers: vec![layer("base", 80), layer("x", 10), layer("conf2", 10)],
            },
            ImageSizes {
                name: "c".into(),
                layers: vec![layer("base", 80), layer("conf3", 20)],
            },
        ];
        let p = Policy {
            min_shared: Some(0.85),
            per_version_budget: Some(Size(15)),
            ..Default::default()
        };
        let v = evaluate(&p, &imgs);
        assert_eq!(v.images[0].shared_fraction, 0.9);
        assert_eq!(v.images[0].baseline_fraction, 0.8);
        assert_eq!(v.images[2].shared_fraction, 0.8);
        let broken: Vec<(&str, &str)> = v
            .broken()
            .iter()
            .map(|c| (c.kind.as_str(), c.subject.as_str()))
            .collect();
        assert_eq!(broken, [("min-shared", "c"), ("per-version", "c")]);
        assert_eq!(v.pairs[0].by_chain, 90);
        assert_eq!(v.pairs[1].by_chain, 80);
    }
}
