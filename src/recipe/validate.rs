//! # Raw recipe → validated model

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::hadoop::Catalogue;
use super::raw::*;
use super::*;
use crate::layer::compress::Compression;
use crate::policy::{Enforce, Policy};
use crate::support::error::Located;
use crate::support::suggest::nearest;

/// The file and text being validated, to locate errors.
struct Ctx<'a> {
    file: &'a Path,
    src: &'a str,
}

impl Ctx<'_> {
    fn err(&self, span: std::ops::Range<usize>, key: &str, msg: impl Into<String>) -> Located {
        Located::at(self.file, self.src, span.start, key, msg)
    }
}

/// Checks a raw recipe against itself, the file system and the catalogue.
pub fn validate(
    file: &Path,
    src: &str,
    raw: RawRecipe,
    root: &Path,
    catalogue: &Catalogue,
) -> Result<Recipe, Located> {
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
    if !(0..=MAX_EPOCH as i64).contains(&epoch) {
        return Err(cx.err(
            header.epoch.span(),
            "recipe.epoch",
            format!("must be a Unix time from 0 to {MAX_EPOCH} (2242-03-16, the last a tar header holds)"),
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
        let line = crate::recipe::hadoop::line_of(v);
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
    let size = |v: &Spanned<RawSize>, key: &str| -> Result<crate::policy::Size, Located> {
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
        epoch_source: EpochSource::Recipe,
        catalogue: catalogue.clone(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_name_component("hadoop-lab"));
        assert!(!valid_name_component("Hadoop"));
        assert!(!valid_name_component("-x"));
    }
}
