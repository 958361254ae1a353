//! # Raw recipe → validated model
//!
//! [`validate`] checks a raw recipe against itself and the Hadoop catalogue, one function per
//! section, in the order the sections are read. It does no I/O, so unit tests can run it on
//! inline TOML with any root: relative paths are only joined to the project root as written.
//! [`resolve_paths`], which `recipe::load` calls right after it, is the one step that looks at
//! the file system: the project root, `[base] path` and the layer directories.

use std::collections::{BTreeMap, BTreeSet};
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

/// Checks a raw recipe against itself and the catalogue (no I/O: see [`resolve_paths`]).
pub fn validate(
    file: &Path,
    src: &str,
    raw: &RawRecipe,
    root: &Path,
    catalogue: &Catalogue,
) -> Result<Recipe, Located> {
    let cx = Ctx { file, src };
    let (name, versions, epoch) = header(&cx, raw.recipe.get_ref(), catalogue)?;
    let base = base(&cx, &raw.base, root)?;
    let jdks = jdks(&cx, &raw.jdk, &base, root)?;
    let lines = lines(&cx, raw, &versions, &jdks, catalogue)?;
    let user = user(&cx, raw.user.as_ref())?;
    let layers = layers(&cx, raw, root)?;
    let ssh = ssh(&cx, raw.ssh.as_ref(), &layers, root)?;
    let dist = dist(&cx, raw.dist.as_ref(), &versions, catalogue, root)?;
    let policy = policy(&cx, raw)?;
    let disk = disk(&cx, raw.disk.as_ref(), &base)?;
    let publish = publish(&cx, raw.publish.as_ref())?;
    let header = raw.recipe.get_ref();
    Ok(Recipe {
        file: file.to_path_buf(),
        // As written until `resolve_paths` makes it canonical.
        root: root.to_path_buf(),
        name,
        description: header.description.clone(),
        versions,
        epoch,
        compression: header.compression.unwrap_or(Compression::Gzip),
        source_url: header.source.clone(),
        excludes_docs: match &base {
            Base::Mmdebstrap { exclude_docs, .. } => Some(*exclude_docs),
            _ => None,
        },
        base,
        jdks,
        lines,
        user,
        ssh,
        layers,
        dist,
        vars: serde_json::to_value(&raw.vars).unwrap_or(serde_json::Value::Null),
        image: image(raw.image.as_ref()),
        policy,
        disk,
        publish,
        epoch_source: EpochSource::Recipe,
        catalogue: catalogue.clone(),
    })
}

/// A recipe path: absolute as written, relative to the project root otherwise.
fn resolve(root: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        root.join(p)
    }
}

/// `[recipe]`: the image name, the versions to build and the epoch.
fn header(
    cx: &Ctx,
    header: &RawHeader,
    catalogue: &Catalogue,
) -> Result<(String, Vec<String>, u64), Located> {
    let name = header.name.get_ref().clone();
    if !valid_name_component(&name) {
        return Err(cx.err(
            header.name.span(),
            "recipe.name",
            format!(
                "{name:?} is not a valid image name: a Docker repository name, i.e. lowercase letters and digits joined by single `.`, `_`, `__` or dashes (e.g. hadoop-lab)"
            ),
        ));
    }
    let versions = versions(cx, &header.versions, &name, catalogue)?;
    let epoch = *header.epoch.get_ref();
    if !(0..=MAX_EPOCH as i64).contains(&epoch) {
        return Err(cx.err(
            header.epoch.span(),
            "recipe.epoch",
            format!("must be a Unix time from 0 to {MAX_EPOCH} (2242-03-16, the last a tar header holds)"),
        ));
    }
    Ok((name, versions, epoch as u64))
}

/// `versions`: `"all"` of the catalogue, or a list of catalogue versions, each once (a version
/// is an image name).
fn versions(
    cx: &Ctx,
    versions: &Spanned<RawVersions>,
    name: &str,
    catalogue: &Catalogue,
) -> Result<Vec<String>, Located> {
    let list = match versions.get_ref() {
        RawVersions::All(s) if s == "all" => catalogue.versions(),
        RawVersions::All(s) => {
            return Err(cx.err(
                versions.span(),
                "recipe.versions",
                format!("expected \"all\" or a list of versions, found {s:?}"),
            ));
        }
        RawVersions::List(list) => {
            let mut seen = BTreeSet::new();
            for v in list {
                if catalogue.get(v).is_none() {
                    let known = catalogue.versions();
                    let refs: Vec<&str> = known.iter().map(|s| s.as_str()).collect();
                    let mut e = cx.err(
                        versions.span(),
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
                        versions.span(),
                        "recipe.versions",
                        format!("version {v:?} is listed twice: it would give two images named {name}:{v}"),
                    ));
                }
            }
            list.clone()
        }
    };
    if list.is_empty() {
        return Err(cx.err(versions.span(), "recipe.versions", "no versions to build"));
    }
    Ok(list)
}

/// `[base]`: mmdebstrap with Debian defaults, or a tarball or OCI layout at `path` (whether it
/// exists is for [`resolve_paths`]).
fn base(cx: &Ctx, raw: &Spanned<RawBase>, root: &Path) -> Result<Base, Located> {
    let rb = raw.get_ref();
    match rb.source.get_ref().as_str() {
        "mmdebstrap" => Ok(mmdebstrap(rb)),
        "oci" if rb.image.is_some() => {
            let img = rb.image.as_ref().expect("checked");
            let s = img.get_ref();
            if rb.path.is_some() || rb.reference.is_some() {
                return Err(cx.err(
                    img.span(),
                    "base.image",
                    "give either `image` (a registry) or `path` (and `ref`, a local layout), not both",
                ));
            }
            if s.is_empty() || !s.contains('/') || s.chars().any(|c| c.is_whitespace()) {
                return Err(cx.err(
                    img.span(),
                    "base.image",
                    format!("{s:?} is not an image reference: REGISTRY/REPO[:TAG][@sha256:…]"),
                ));
            }
            Ok(Base::OciRegistry { image: s.clone() })
        }
        "tarball" | "oci" => {
            let Some(p) = &rb.path else {
                return Err(cx.err(
                    raw.span(),
                    "base.path",
                    "a tarball base needs `path`; an oci base `path` (a layout) or `image` (a registry)",
                ));
            };
            let path = resolve(root, p.get_ref());
            Ok(if rb.source.get_ref() == "tarball" {
                Base::Tarball {
                    path,
                    sha256: rb.sha256.clone(),
                }
            } else {
                Base::Oci {
                    path,
                    reference: rb.reference.clone().unwrap_or_else(|| "latest".into()),
                }
            })
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
            Err(e)
        }
    }
}

/// An mmdebstrap base: bookworm, minbase, the Debian mirror and its security updates by default.
fn mmdebstrap(rb: &RawBase) -> Base {
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

/// `[jdk.<name>]`, by name.
fn jdks(
    cx: &Ctx,
    raw: &BTreeMap<String, Spanned<RawJdk>>,
    base: &Base,
    root: &Path,
) -> Result<BTreeMap<String, Jdk>, Located> {
    let mut jdks = BTreeMap::new();
    for (jname, rj) in raw {
        jdks.insert(jname.clone(), jdk(cx, jname, rj, base, root)?);
    }
    Ok(jdks)
}

/// One JDK: Debian packages (on an mmdebstrap base) or a pinned tarball, never both.
fn jdk(
    cx: &Ctx,
    jname: &str,
    rj: &Spanned<RawJdk>,
    base: &Base,
    root: &Path,
) -> Result<Jdk, Located> {
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
                (None, Some(p)) => Origin::Path(resolve(root, p)),
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
    if !j.java_home.starts_with('/') || j.java_home.split('/').any(|c| c == "..") {
        return Err(cx.err(
            rj.span(),
            &format!("{key}.java-home"),
            "must be an absolute path in the image, without '..'",
        ));
    }
    Ok(Jdk {
        name: jname.to_string(),
        java_version: j.java_version,
        java_home: j.java_home.clone(),
        source,
    })
}

/// `[lines."<line>"]`: every line of the chosen versions needs a JDK, and it must be supported
/// unless the recipe accepts it, saying why.
fn lines(
    cx: &Ctx,
    raw: &RawRecipe,
    versions: &[String],
    jdks: &BTreeMap<String, Jdk>,
    catalogue: &Catalogue,
) -> Result<BTreeMap<String, LineChoice>, Located> {
    let mut lines = BTreeMap::new();
    for (line, rl) in &raw.lines {
        lines.insert(line.clone(), line_choice(cx, line, rl, jdks, catalogue)?);
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
    Ok(lines)
}

/// The JDK of one line: a recipe JDK, of a Java version the catalogue says the line runs on.
fn line_choice(
    cx: &Ctx,
    line: &str,
    rl: &Spanned<RawLine>,
    jdks: &BTreeMap<String, Jdk>,
    catalogue: &Catalogue,
) -> Result<LineChoice, Located> {
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
    Ok(LineChoice {
        jdk: jdk.name.clone(),
        accept_unsupported: l.accept_unsupported.clone(),
        jvm_flags: l.jvm_flags.clone(),
    })
}

/// `[user]`: `hadoop`, 1000:1000, by default.
fn user(cx: &Ctx, ru: Option<&RawUser>) -> Result<User, Located> {
    let text = |f: Option<&Spanned<String>>, key: &str, default: &str| -> Result<String, Located> {
        let Some(v) = f else {
            return Ok(default.into());
        };
        let s = v.get_ref();
        // Account files are `:`-separated lines: either would forge fields or whole accounts.
        if s.contains(':') || s.contains('\n') || s.contains('\r') || s.contains('\0') {
            return Err(cx.err(
                v.span(),
                key,
                format!("{s:?} contains ':', a newline or NUL, which /etc/passwd cannot hold"),
            ));
        }
        Ok(s.clone())
    };
    let name = text(ru.and_then(|u| u.name.as_ref()), "user.name", "hadoop")?;
    if let Some(v) = ru.and_then(|u| u.name.as_ref())
        && !valid_user_name(&name)
    {
        return Err(cx.err(
            v.span(),
            "user.name",
            format!(
                "{name:?} is not a valid user name: 1 to 32 of a-z, 0-9, '_', '-' (first a letter \
                 or '_'), as Debian's useradd accepts; and not root"
            ),
        ));
    }
    let home = text(
        ru.and_then(|u| u.home.as_ref()),
        "user.home",
        "/home/hadoop",
    )?;
    let shell = text(ru.and_then(|u| u.shell.as_ref()), "user.shell", "/bin/bash")?;
    for (v, key, value) in [
        (ru.and_then(|u| u.home.as_ref()), "user.home", &home),
        (ru.and_then(|u| u.shell.as_ref()), "user.shell", &shell),
    ] {
        if let Some(v) = v
            && (!value.starts_with('/') || value.split('/').any(|c| c == ".."))
        {
            return Err(cx.err(
                v.span(),
                key,
                format!("{value:?} must be an absolute path without '..'"),
            ));
        }
    }
    let id = |f: Option<&Spanned<u32>>, key: &str| -> Result<u32, Located> {
        match f {
            None => Ok(1000),
            Some(v) if *v.get_ref() == 0 => Err(cx.err(
                v.span(),
                key,
                "0 is root's: the lab user must be an ordinary account",
            )),
            Some(v) => Ok(*v.get_ref()),
        }
    };
    Ok(User {
        name,
        uid: id(ru.and_then(|u| u.uid.as_ref()), "user.uid")?,
        gid: id(ru.and_then(|u| u.gid.as_ref()), "user.gid")?,
        home,
        shell,
        reuse_existing: ru.and_then(|u| u.reuse_existing).unwrap_or(false),
    })
}

/// Debian's default `NAME_REGEX` for useradd (`^[a-z][-a-z0-9_]*$`, plus a leading `_`), at
/// most 32 characters; `root` is refused (the image would lose its uid-0 account).
fn valid_user_name(n: &str) -> bool {
    let mut chars = n.chars();
    n.len() <= 32
        && n != "root"
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// `[[layer]]`: names (unique, not reserved) and roles. The directories are only joined to the
/// root here; [`resolve_paths`] checks them.
fn layers(cx: &Ctx, raw: &RawRecipe, root: &Path) -> Result<Vec<LayerSpec>, Located> {
    let mut layers = Vec::new();
    let mut names = BTreeSet::new();
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
        layers.push(LayerSpec {
            name: lname.clone(),
            dir: resolve(root, l.dir.get_ref()),
            per_version: l.per_version,
            accounts: l.accounts,
            disk_only: l.disk_only,
        });
    }
    // Rules about the set of layers have no one place in the file: they point at [recipe].
    let refuse = |key: &str, msg: &str| Err(cx.err(raw.recipe.span(), key, msg));
    if layers.iter().filter(|l| l.accounts).count() > 1 {
        return refuse("layer.accounts", "only one layer may carry the accounts");
    }
    if layers.iter().any(|l| l.accounts && l.per_version) {
        return refuse(
            "layer.accounts",
            "the accounts layer is shared: it cannot be per-version",
        );
    }
    if layers
        .iter()
        .any(|l| l.disk_only && (l.per_version || l.accounts))
    {
        return refuse(
            "layer.disk-only",
            "a disk-only layer is shared: it cannot be per-version or carry the accounts",
        );
    }
    Ok(layers)
}

/// `[ssh]`: the key's path (as written; `source::keys` reads it) and how nodes get the private
/// half. Delivery at boot needs the layer that carries the user and its public key.
fn ssh(cx: &Ctx, raw: Option<&RawSsh>, layers: &[LayerSpec], root: &Path) -> Result<Ssh, Located> {
    let Some(rs) = raw else {
        return Ok(Ssh::default());
    };
    let deliver = match &rs.deliver {
        None => KeyDelivery::Image,
        Some(d) => match d.get_ref().as_str() {
            "image" => KeyDelivery::Image,
            "boot" => KeyDelivery::Boot,
            other => {
                let mut e = cx.err(
                    d.span(),
                    "ssh.deliver",
                    format!("unknown delivery {other:?}: expected \"image\" (the private key is in the image) or \"boot\" (installed at boot from user data or a secret file)"),
                );
                e.hint =
                    nearest(other, &KeyDelivery::NAMES).map(|n| format!("did you mean {n:?}?"));
                return Err(e);
            }
        },
    };
    if let (KeyDelivery::Boot, Some(d)) = (deliver, &rs.deliver)
        && !layers.iter().any(|l| l.accounts)
    {
        return Err(cx.err(
            d.span(),
            "ssh.deliver",
            "delivery at boot needs a [[layer]] with `accounts = true`: it carries the user, its public key and the script that installs the private key",
        ));
    }
    Ok(Ssh {
        key: rs.key.as_deref().map(|k| resolve(root, k)),
        deliver,
    })
}

/// `[dist]`: how images get the Hadoop release, and its pinned sha512 per version (from the
/// recipe or the catalogue) unless a shared volume holds it.
fn dist(
    cx: &Ctx,
    raw: Option<&Spanned<RawDist>>,
    versions: &[String],
    catalogue: &Catalogue,
    root: &Path,
) -> Result<Option<Dist>, Located> {
    let Some(rd) = raw else {
        return Ok(None);
    };
    let d = rd.get_ref();
    let mode = dist_mode(cx, rd)?;
    if d.url.is_some() && d.path.is_some() {
        return Err(cx.err(rd.span(), "dist", "give `url` or `path`, not both"));
    }
    for (v, s) in &d.sha512 {
        check_sha512(s).map_err(|m| cx.err(rd.span(), &format!("dist.sha512.\"{v}\""), m))?;
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
    Ok(Some(Dist {
        mode,
        url: d.url.clone(),
        path: d
            .path
            .as_ref()
            .map(|p| resolve(root, p).to_string_lossy().into_owned()),
        sha512: d
            .sha512
            .iter()
            .map(|(k, v)| (k.clone(), v.to_lowercase()))
            .collect(),
    }))
}

/// `[dist] mode`: bake, first-boot, or mount (which needs `source`).
fn dist_mode(cx: &Ctx, rd: &Spanned<RawDist>) -> Result<DistMode, Located> {
    let d = rd.get_ref();
    match d.mode.get_ref().as_str() {
        "bake" => Ok(DistMode::Bake),
        "first-boot" => Ok(DistMode::FirstBoot),
        "mount" => match &d.source {
            Some(src) => Ok(DistMode::Mount {
                source: src.clone(),
            }),
            None => Err(cx.err(
                rd.span(),
                "dist.source",
                "mount mode needs `source`: \"LABEL=<fs label>\" or \"<server>:/<export>\"",
            )),
        },
        other => {
            let mut e = cx.err(
                d.mode.span(),
                "dist.mode",
                format!("unknown mode {other:?}: expected \"bake\", \"mount\" or \"first-boot\""),
            );
            e.hint = nearest(other, &["bake", "mount", "first-boot"])
                .map(|n| format!("did you mean {n:?}?"));
            Err(e)
        }
    }
}

/// `[policy]` (budgets, reuse floor, enforcement) and the `budget` of each layer family.
fn policy(cx: &Ctx, raw: &RawRecipe) -> Result<Policy, Located> {
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
            policy.image_budget = Some(size(cx, b, "policy.image-budget")?);
        }
        if let Some(b) = &p.per_version_budget {
            policy.per_version_budget = Some(size(cx, b, "policy.per-version-budget")?);
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
    policy.layer_budgets = layer_budgets(cx, raw)?;
    Ok(policy)
}

/// Budgets by layer family: `base`, `jdk-<name>`, each `[[layer]]`, `hadoop-dist`.
fn layer_budgets(
    cx: &Ctx,
    raw: &RawRecipe,
) -> Result<BTreeMap<String, crate::policy::Size>, Located> {
    let mut budgets = BTreeMap::new();
    if let Some(b) = &raw.base.get_ref().budget {
        budgets.insert("base".into(), size(cx, b, "base.budget")?);
    }
    for (jname, rj) in &raw.jdk {
        if let Some(b) = &rj.get_ref().budget {
            budgets.insert(
                format!("jdk-{jname}"),
                size(cx, b, &format!("jdk.{jname}.budget"))?,
            );
        }
    }
    for rl in &raw.layer {
        if let Some(b) = &rl.get_ref().budget {
            budgets.insert(
                rl.get_ref().name.get_ref().clone(),
                size(cx, b, "layer.budget")?,
            );
        }
    }
    if let Some(rd) = &raw.dist
        && let Some(b) = &rd.get_ref().budget
    {
        budgets.insert("hadoop-dist".into(), size(cx, b, "dist.budget")?);
    }
    Ok(budgets)
}

/// A size (budget, disk size), located at its value.
fn size(cx: &Ctx, v: &Spanned<RawSize>, key: &str) -> Result<crate::policy::Size, Located> {
    v.get_ref().parse().map_err(|m| cx.err(v.span(), key, m))
}

/// `[disk]`: what bootable disks add (packages need an mmdebstrap base).
fn disk(
    cx: &Ctx,
    raw: Option<&Spanned<RawDisk>>,
    base: &Base,
) -> Result<Option<DiskSpec>, Located> {
    let Some(rd) = raw else {
        return Ok(None);
    };
    let d = rd.get_ref();
    if !d.packages.is_empty() && !matches!(base, Base::Mmdebstrap { .. }) {
        return Err(cx.err(
            rd.span(),
            "disk.packages",
            "disk-only packages need an mmdebstrap base",
        ));
    }
    let budget = match &d.budget {
        Some(b) => Some(size(cx, b, "disk.budget")?),
        None => None,
    };
    let disk_size = match &d.size {
        Some(sz) => Some(size(cx, sz, "disk.size")?),
        None => None,
    };
    Ok(Some(DiskSpec {
        packages: d.packages.clone(),
        size: disk_size,
        cmdline: d.cmdline.clone(),
        budget,
    }))
}

/// `[publish]`: Glance properties and how many images of a name stay visible.
fn publish(cx: &Ctx, raw: Option<&Spanned<RawPublish>>) -> Result<PublishSpec, Located> {
    let Some(rp) = raw else {
        return Ok(PublishSpec::default());
    };
    let p = rp.get_ref();
    let mut spec = PublishSpec {
        tags: p.tags.clone(),
        ..PublishSpec::default()
    };
    if let Some(m) = &p.min_ram {
        spec.min_ram = Some(size(cx, m, "publish.min-ram")?);
    }
    if let Some(k) = &p.keep {
        let n = *k.get_ref();
        if !(1..=1000).contains(&n) {
            return Err(cx.err(
                k.span(),
                "publish.keep",
                format!("{n} is not between 1 and 1000 (how many images of a name stay visible)"),
            ));
        }
        spec.keep = n as usize;
    }
    if let Some(f) = &p.firmware {
        spec.uefi = match f.get_ref().as_str() {
            "bios" => false,
            "uefi" => true,
            other => {
                return Err(cx.err(
                    f.span(),
                    "publish.firmware",
                    format!("{other:?} is not \"bios\" or \"uefi\""),
                ));
            }
        };
    }
    if let Some(b) = &p.disk_bus {
        let bus = b.get_ref().as_str();
        if !["virtio", "scsi", "ide", "sata"].contains(&bus) {
            return Err(cx.err(
                b.span(),
                "publish.disk-bus",
                format!("{bus:?} is not one of virtio, scsi, ide, sata"),
            ));
        }
        spec.disk_bus = bus.to_owned();
    }
    for t in &p.tags {
        if t.is_empty() || t.len() > 255 {
            return Err(cx.err(
                rp.span(),
                "publish.tags",
                format!("tag {t:?} must be 1 to 255 characters (Glance's limit)"),
            ));
        }
    }
    Ok(spec)
}

/// `[image]`: the runtime settings of every image's config.
fn image(ri: Option<&RawImage>) -> ImageSettings {
    ri.map(|i| ImageSettings {
        cmd: i.cmd.clone(),
        entrypoint: i.entrypoint.clone(),
        env: i.env.clone(),
        working_dir: i.working_dir.clone(),
        user: i.user.clone(),
    })
    .unwrap_or_default()
}

/// Checks a validated recipe's paths on disk and makes the root and the layer directories
/// canonical: `[base] path` must exist, and each layer directory must exist, be a directory and
/// stay inside the project root (a symlink out of it is refused). `raw` is the recipe `recipe`
/// was validated from, for the spans.
pub(crate) fn resolve_paths(
    recipe: &mut Recipe,
    file: &Path,
    src: &str,
    raw: &RawRecipe,
) -> Result<(), Located> {
    let cx = Ctx { file, src };
    if let (Base::Tarball { path, .. } | Base::Oci { path, .. }, Some(p)) =
        (&recipe.base, &raw.base.get_ref().path)
    {
        // A device or a FIFO would be read (and hashed) forever: a tarball is a regular file,
        // an OCI layout a directory.
        let (ok, want) = match &recipe.base {
            Base::Tarball { .. } => (path.is_file(), "a regular file (a tar)"),
            _ => (path.is_dir(), "a directory (an OCI image layout)"),
        };
        if !path.exists() {
            return Err(cx.err(
                p.span(),
                "base.path",
                format!("{} does not exist", path.display()),
            ));
        }
        if !ok {
            return Err(cx.err(
                p.span(),
                "base.path",
                format!("{} is not {want}", path.display()),
            ));
        }
    }
    let canon_root = recipe.root.canonicalize().map_err(|e| {
        cx.err(
            raw.recipe.span(),
            "recipe.root",
            format!("project root {} is not usable: {e}", recipe.root.display()),
        )
    })?;
    // `validate` made one LayerSpec per [[layer]], in order.
    for (layer, rl) in recipe.layers.iter_mut().zip(&raw.layer) {
        let l = rl.get_ref();
        let dir = &layer.dir;
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
        layer.dir = canon;
    }
    recipe.root = canon_root;
    Ok(())
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

/// A Docker/OCI repository path component (distribution's grammar, at most 128 characters):
/// runs of lowercase letters and digits joined by `.`, `_`, `__` or any number of `-`; so `a..b`,
/// `a._b` and `a___b` are refused.
pub fn valid_name_component(s: &str) -> bool {
    if s.is_empty() || s.len() > 128 {
        return false;
    }
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let mut rest = s;
    loop {
        let run = rest.find(|c: char| !alnum(c)).unwrap_or(rest.len());
        if run == 0 {
            return false;
        }
        rest = &rest[run..];
        if rest.is_empty() {
            return true;
        }
        let sep = rest.find(alnum).unwrap_or(rest.len());
        let ok = matches!(&rest[..sep], "." | "_" | "__") || rest[..sep].chars().all(|c| c == '-');
        if !ok {
            return false;
        }
        rest = &rest[sep..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A valid recipe of six lines; cases append sections to it (their first line is 7).
    const MIN: &str = "[recipe]\nname = \"t\"\nversions = [\"3.3.6\"]\nepoch = 1\n[base]\nsource = \"mmdebstrap\"\n";

    /// A JDK of Java 11 from Debian packages, lines 7-10 after [`MIN`].
    const JDK: &str = "[jdk.j11]\njava-version = 11\njava-home = \"/usr/lib/jvm/j11\"\npackages = [\"openjdk-11-jdk-headless\"]\n";

    const SHA: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    /// The repo's catalogue (reading it is the test's I/O, not validate's).
    fn catalogue() -> Catalogue {
        Catalogue::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("hadoop-versions")).unwrap()
    }

    /// Validates `src` with a project root that does not exist: validation must not look.
    fn check(src: &str) -> Result<Recipe, Located> {
        check_at(Path::new("/nonexistent/strata-project"), src)
    }

    fn check_at(root: &Path, src: &str) -> Result<Recipe, Located> {
        let file = Path::new("recipes/t.toml");
        let raw = parse(file, src).unwrap_or_else(|e| panic!("parse: {e}\n{src}"));
        validate(file, src, &raw, root, &catalogue())
    }

    #[test]
    fn versions_of_the_wrong_type_say_what_is_expected() {
        let src = header_with("\"t\"", "3.3", "1");
        let e = parse(Path::new("recipes/t.toml"), &src).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("recipes/t.toml:3"), "{msg}");
        assert!(
            msg.contains("\"all\" or a list of version strings") && !msg.contains("RawVersions"),
            "{msg}"
        );
    }

    /// A header of `name`, `versions` and `epoch` (lines 2-4) and an mmdebstrap `[base]`.
    fn header_with(name: &str, versions: &str, epoch: &str) -> String {
        format!(
            "[recipe]\nname = {name}\nversions = {versions}\nepoch = {epoch}\n[base]\nsource = \"mmdebstrap\"\n"
        )
    }

    /// [`MIN`] and more sections.
    fn with(extra: &str) -> String {
        format!("{MIN}{extra}")
    }

    /// [`MIN`]'s header and `[base]` (line 5) holding `rest`.
    fn base_with(rest: &str) -> String {
        format!("{}{rest}", &MIN[..MIN.find("source").unwrap()])
    }

    /// (what, recipe, key, line, fragment of the message, hint)
    type Case = (
        &'static str,
        String,
        &'static str,
        usize,
        &'static str,
        Option<&'static str>,
    );

    /// Validates each case; fails listing every case that is accepted or refused otherwise.
    fn expect(cases: Vec<Case>) {
        let mut wrong = Vec::new();
        for (what, src, key, line, fragment, hint) in &cases {
            match check(src) {
                Ok(_) => wrong.push(format!("{what}: accepted\n{src}")),
                Err(e) => {
                    if (e.key.as_str(), e.line) != (*key, *line)
                        || !e.message.contains(fragment)
                        || e.hint.as_deref() != *hint
                    {
                        wrong.push(format!(
                            "{what}: got key {:?} line {} hint {:?}: {}\nwant key {key:?} line {line} hint {hint:?}: …{fragment}…",
                            e.key, e.line, e.hint, e.message
                        ));
                    }
                }
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
    }

    /// `[recipe]`: name, versions, epoch.
    #[test]
    fn header_errors() {
        expect(vec![
            (
                "bad name",
                header_with("\"T\"", "[\"3.3.6\"]", "1"),
                "recipe.name",
                2,
                "\"T\" is not a valid image name",
                None,
            ),
            (
                "unknown version",
                header_with("\"t\"", "[\"3.3.7\"]", "1"),
                "recipe.versions",
                3,
                "unknown Hadoop version \"3.3.7\": the catalogue",
                Some("did you mean \"3.3.6\"?"),
            ),
            (
                "duplicate version",
                header_with("\"t\"", "[\"3.3.6\", \"3.3.6\"]", "1"),
                "recipe.versions",
                3,
                "version \"3.3.6\" is listed twice: it would give two images named t:3.3.6",
                None,
            ),
            (
                "versions neither all nor a list",
                header_with("\"t\"", "\"every\"", "1"),
                "recipe.versions",
                3,
                "expected \"all\" or a list of versions, found \"every\"",
                None,
            ),
            (
                "no versions",
                header_with("\"t\"", "[]", "1"),
                "recipe.versions",
                3,
                "no versions to build",
                None,
            ),
            (
                "negative epoch",
                header_with("\"t\"", "\"all\"", "-1"),
                "recipe.epoch",
                4,
                "must be a Unix time from 0 to 8589934591",
                None,
            ),
            (
                "epoch past tar",
                header_with("\"t\"", "\"all\"", "8589934592"),
                "recipe.epoch",
                4,
                "the last a tar header holds",
                None,
            ),
        ]);
    }

    /// `[base]`: source and path.
    #[test]
    fn base_errors() {
        expect(vec![
            (
                "unknown base source",
                base_with("source = \"mmdebstrp\"\n"),
                "base.source",
                6,
                "unknown base source \"mmdebstrp\"",
                Some("did you mean \"mmdebstrap\"?"),
            ),
            (
                "tarball base without path",
                base_with("source = \"tarball\"\n"),
                "base.path",
                5,
                "a tarball base needs `path`",
                None,
            ),
            (
                "oci base without path",
                base_with("source = \"oci\"\n"),
                "base.path",
                5,
                "an oci base `path` (a layout) or `image` (a registry)",
                None,
            ),
            (
                "oci image and path",
                base_with("source = \"oci\"\nimage = \"r.example/x:1\"\npath = \"p\"\n"),
                "base.image",
                7,
                "not both",
                None,
            ),
            (
                "oci image not a reference",
                base_with("source = \"oci\"\nimage = \"x\"\n"),
                "base.image",
                7,
                "is not an image reference",
                None,
            ),
        ]);
    }

    /// `[jdk.*]`: name, source, checksum, java-home, and packages only on mmdebstrap.
    #[test]
    fn jdk_errors() {
        expect(vec![
            (
                "bad JDK name",
                with("[jdk.J11]\njava-version = 11\njava-home = \"/j\"\npackages = [\"x\"]\n"),
                "jdk.J11",
                7,
                "JDK names use lowercase",
                None,
            ),
            (
                "JDK with packages and tarball",
                with(&format!(
                    "{JDK}tarball = {{ url = \"http://x/j.tgz\", sha512 = \"{SHA}\" }}\n"
                )),
                "jdk.j11",
                7,
                "give either `packages` (Debian) or `tarball`, not both or neither",
                None,
            ),
            (
                "JDK with neither",
                with("[jdk.j11]\njava-version = 11\njava-home = \"/j\"\n"),
                "jdk.j11",
                7,
                "not both or neither",
                None,
            ),
            (
                "JDK tarball with url and path",
                with(&format!(
                    "[jdk.j11]\njava-version = 11\njava-home = \"/j\"\ntarball = {{ url = \"http://x/j.tgz\", path = \"j.tgz\", sha512 = \"{SHA}\" }}\n"
                )),
                "jdk.j11.tarball",
                7,
                "give exactly one of `url` or `path`",
                None,
            ),
            (
                "JDK tarball bad sha512",
                with(
                    "[jdk.j11]\njava-version = 11\njava-home = \"/j\"\ntarball = { path = \"j.tgz\", sha512 = \"abc\" }\n",
                ),
                "jdk.j11.tarball.sha512",
                7,
                "expected 128 hex digits, found 3 characters",
                None,
            ),
            (
                "java-home not absolute",
                with(
                    "[jdk.j11]\njava-version = 11\njava-home = \"usr/lib/jvm/j11\"\npackages = [\"x\"]\n",
                ),
                "jdk.j11.java-home",
                7,
                "must be an absolute path in the image",
                None,
            ),
            (
                "java-home with ..",
                with(
                    "[jdk.j11]\njava-version = 11\njava-home = \"/usr/../x\"\npackages = [\"x\"]\n",
                ),
                "jdk.j11.java-home",
                7,
                "without '..'",
                None,
            ),
            (
                "Debian JDK on a tarball base",
                base_with(&format!(
                    "source = \"tarball\"\npath = \"Cargo.toml\"\n{JDK}"
                )),
                "jdk.j11.packages",
                8,
                "a JDK from Debian packages needs an mmdebstrap base",
                None,
            ),
        ]);
    }

    /// `[lines.*]`: a known JDK, a known line, a supported pairing, a line per version.
    #[test]
    fn lines_errors() {
        expect(vec![
            (
                "unknown JDK in lines",
                with(&format!("{JDK}[lines.\"3.3\"]\njdk = \"j1\"\n")),
                "lines.\"3.3\".jdk",
                12,
                "no [jdk.j1] in this recipe (have: j11)",
                Some("did you mean \"j11\"?"),
            ),
            (
                "unsupported pairing",
                with(
                    "[jdk.j17]\njava-version = 17\njava-home = \"/j\"\npackages = [\"x\"]\n[lines.\"3.3\"]\njdk = \"j17\"\n",
                ),
                "lines.\"3.3\"",
                11,
                "Hadoop 3.3 supports Java 8, 11 at run time, but JDK \"j17\" is Java 17",
                Some(
                    "pick a supported JDK, or accept the pairing with `accept-unsupported = \"<why>\"` in [lines.\"3.3\"]",
                ),
            ),
            (
                "line not in the catalogue",
                with(&format!("{JDK}[lines.\"9.9\"]\njdk = \"j11\"\n")),
                "lines.\"9.9\"",
                11,
                "no Hadoop version of line 9.9 in the catalogue",
                None,
            ),
            (
                "missing line for a version",
                with(JDK),
                "lines",
                1,
                "Hadoop 3.3.6 needs a JDK: add [lines.\"3.3\"]",
                None,
            ),
        ]);
    }

    /// `[[layer]]`: names and roles.
    #[test]
    fn layer_errors() {
        expect(vec![
            (
                "reserved layer name",
                with("[[layer]]\nname = \"jdk\"\ndir = \"layers/user-env\"\n"),
                "layer.name",
                8,
                "\"jdk\" is not a valid layer name (reserved: base, jdk, hadoop-dist)",
                None,
            ),
            (
                "bad layer name",
                with("[[layer]]\nname = \"User\"\ndir = \"layers/user-env\"\n"),
                "layer.name",
                8,
                "\"User\" is not a valid layer name",
                None,
            ),
            (
                "duplicate layer name",
                with(
                    "[[layer]]\nname = \"a\"\ndir = \"layers/user-env\"\n[[layer]]\nname = \"a\"\ndir = \"layers/vm\"\n",
                ),
                "layer.name",
                11,
                "two layers are named \"a\"",
                None,
            ),
            (
                "two accounts layers",
                with(
                    "[[layer]]\nname = \"a\"\ndir = \"layers/user-env\"\naccounts = true\n[[layer]]\nname = \"b\"\ndir = \"layers/vm\"\naccounts = true\n",
                ),
                "layer.accounts",
                1,
                "only one layer may carry the accounts",
                None,
            ),
            (
                "accounts per-version",
                with(
                    "[[layer]]\nname = \"a\"\ndir = \"layers/user-env\"\naccounts = true\nper-version = true\n",
                ),
                "layer.accounts",
                1,
                "the accounts layer is shared: it cannot be per-version",
                None,
            ),
            (
                "disk-only per-version",
                with(
                    "[[layer]]\nname = \"a\"\ndir = \"layers/vm\"\ndisk-only = true\nper-version = true\n",
                ),
                "layer.disk-only",
                1,
                "a disk-only layer is shared: it cannot be per-version or carry the accounts",
                None,
            ),
            (
                "disk-only accounts",
                with(
                    "[[layer]]\nname = \"a\"\ndir = \"layers/vm\"\ndisk-only = true\naccounts = true\n",
                ),
                "layer.disk-only",
                1,
                "cannot be per-version or carry the accounts",
                None,
            ),
        ]);
    }

    /// `[ssh]`: the delivery of the private key.
    #[test]
    fn ssh_errors() {
        const ACCOUNTS: &str =
            "[[layer]]\nname = \"a\"\ndir = \"layers/user-env\"\naccounts = true\n";
        expect(vec![
            (
                "unknown delivery",
                with(&format!("{ACCOUNTS}[ssh]\ndeliver = \"boots\"\n")),
                "ssh.deliver",
                12,
                "unknown delivery \"boots\": expected \"image\" (the private key is in the image) or \"boot\"",
                Some("did you mean \"boot\"?"),
            ),
            (
                "delivery at boot without an accounts layer",
                with("[ssh]\ndeliver = \"boot\"\n"),
                "ssh.deliver",
                8,
                "delivery at boot needs a [[layer]] with `accounts = true`",
                None,
            ),
        ]);
    }

    #[test]
    fn ssh_delivery_of_another_type_is_refused_by_the_parser() {
        let src = with("[ssh]\ndeliver = true\n");
        let e = parse(Path::new("recipes/t.toml"), &src).unwrap_err();
        assert_eq!(e.line, 8, "{e}");
        assert!(e.message.contains("expected a string"), "{e}");
    }

    #[test]
    fn ssh_delivery_values_and_default() {
        const ACCOUNTS: &str =
            "[[layer]]\nname = \"a\"\ndir = \"layers/user-env\"\naccounts = true\n";
        for (extra, want) in [
            ("", KeyDelivery::Image),
            ("[ssh]\nkey = \"k\"\n", KeyDelivery::Image),
            ("[ssh]\ndeliver = \"image\"\n", KeyDelivery::Image),
            ("[ssh]\ndeliver = \"boot\"\n", KeyDelivery::Boot),
        ] {
            let r = check(&with(&format!("{ACCOUNTS}{extra}"))).unwrap();
            assert_eq!(r.ssh.deliver, want, "{extra}");
            assert_eq!(r.settings().ssh.deliver, want);
        }
        let r = check(&with("[ssh]\nkey = \"keys/k\"\n")).unwrap();
        assert_eq!(
            r.ssh.key.as_deref(),
            Some(Path::new("/nonexistent/strata-project/keys/k"))
        );
    }

    /// `[dist]`: mode, source, url or path, pinned checksums.
    #[test]
    fn dist_errors() {
        expect(vec![
            (
                "dist mount without source",
                with("[dist]\nmode = \"mount\"\n"),
                "dist.source",
                7,
                "mount mode needs `source`",
                None,
            ),
            (
                "unknown dist mode",
                with("[dist]\nmode = \"baked\"\n"),
                "dist.mode",
                8,
                "unknown mode \"baked\": expected \"bake\", \"mount\" or \"first-boot\"",
                Some("did you mean \"bake\"?"),
            ),
            (
                "dist url and path",
                with("[dist]\nmode = \"bake\"\nurl = \"http://x/h.tgz\"\npath = \"h.tgz\"\n"),
                "dist",
                7,
                "give `url` or `path`, not both",
                None,
            ),
            (
                "dist bad sha512",
                with("[dist]\nmode = \"bake\"\n[dist.sha512]\n\"3.3.6\" = \"xyz\"\n"),
                "dist.sha512.\"3.3.6\"",
                7,
                "expected 128 hex digits, found 3 characters",
                None,
            ),
            (
                "unpinned bake version",
                header_with("\"t\"", "[\"3.4.1\"]", "1") + "[dist]\nmode = \"bake\"\n",
                "dist.sha512",
                7,
                "no pinned sha512 for Hadoop 3.4.1: add it under [dist.sha512]",
                None,
            ),
            (
                "unpinned first-boot version",
                header_with("\"t\"", "[\"3.3.6\", \"3.4.1\"]", "1")
                    + "[dist]\nmode = \"first-boot\"\n",
                "dist.sha512",
                7,
                "no pinned sha512 for Hadoop 3.4.1",
                None,
            ),
        ]);
    }

    /// `[policy]` and every `budget`.
    #[test]
    fn policy_errors() {
        expect(vec![
            (
                "budget with an unknown unit",
                with("[policy]\nimage-budget = \"12 parsecs\"\n"),
                "policy.image-budget",
                8,
                "unknown unit \"parsecs\"",
                None,
            ),
            (
                "negative budget",
                with("[policy]\nper-version-budget = -5\n"),
                "policy.per-version-budget",
                8,
                "-5: a size cannot be negative",
                None,
            ),
            (
                "min-shared out of range",
                with("[policy]\nmin-shared = 1.5\n"),
                "policy.min-shared",
                8,
                "1.5 is outside 0–1",
                None,
            ),
            (
                "enforce bad value",
                with("[policy]\nenforce = \"maybe\"\n"),
                "policy.enforce",
                8,
                "\"maybe\": expected \"fail\" or \"warn\"",
                None,
            ),
            (
                "bad base budget",
                base_with("source = \"mmdebstrap\"\nbudget = \"lots\"\n"),
                "base.budget",
                7,
                "\"lots\" is not a size",
                None,
            ),
            (
                "bad JDK budget",
                with(&format!(
                    "{JDK}budget = -1\n[lines.\"3.3\"]\njdk = \"j11\"\n"
                )),
                "jdk.j11.budget",
                11,
                "negative",
                None,
            ),
            (
                "bad layer budget",
                with("[[layer]]\nname = \"a\"\ndir = \"layers/user-env\"\nbudget = \"1 parsec\"\n"),
                "layer.budget",
                10,
                "unknown unit",
                None,
            ),
            (
                "bad dist budget",
                with("[dist]\nmode = \"bake\"\nbudget = -2\n"),
                "dist.budget",
                9,
                "negative",
                None,
            ),
        ]);
    }

    /// `[disk]`: packages only on mmdebstrap, sizes.
    #[test]
    fn disk_errors() {
        expect(vec![
            (
                "disk packages on a tarball base",
                base_with(
                    "source = \"tarball\"\npath = \"Cargo.toml\"\n[disk]\npackages = [\"linux-image-amd64\"]\n",
                ),
                "disk.packages",
                8,
                "disk-only packages need an mmdebstrap base",
                None,
            ),
            (
                "bad disk size",
                with("[disk]\nsize = \"big\"\n"),
                "disk.size",
                8,
                "\"big\" is not a size",
                None,
            ),
            (
                "bad disk budget",
                with("[disk]\nbudget = -1\n"),
                "disk.budget",
                8,
                "negative",
                None,
            ),
        ]);
    }

    /// `[user]`: names as useradd takes them, no field that could forge passwd lines, no root.
    #[test]
    fn user_errors() {
        expect(vec![
            (
                "newline in the name",
                with("[user]\nname = \"x\\nroot::0:0::/:/bin/sh\"\n"),
                "user.name",
                8,
                "which /etc/passwd cannot hold",
                None,
            ),
            (
                "colon in the shell",
                with("[user]\nshell = \"/bin/sh:x\"\n"),
                "user.shell",
                8,
                "which /etc/passwd cannot hold",
                None,
            ),
            (
                "newline in the home",
                with("[user]\nhome = \"/home/x\\n\"\n"),
                "user.home",
                8,
                "which /etc/passwd cannot hold",
                None,
            ),
            (
                "root as the user",
                with("[user]\nname = \"root\"\n"),
                "user.name",
                8,
                "not a valid user name",
                None,
            ),
            (
                "upper case name",
                with("[user]\nname = \"Hadoop\"\n"),
                "user.name",
                8,
                "not a valid user name",
                None,
            ),
            (
                "relative home",
                with("[user]\nhome = \"home/hadoop\"\n"),
                "user.home",
                8,
                "absolute path",
                None,
            ),
            (
                "home with ..",
                with("[user]\nhome = \"/home/../etc\"\n"),
                "user.home",
                8,
                "without '..'",
                None,
            ),
            (
                "uid 0",
                with("[user]\nuid = 0\n"),
                "user.uid",
                8,
                "root's",
                None,
            ),
        ]);
        let ok = check(&with(
            "[user]\nname = \"_lab-user2\"\nhome = \"/srv/lab\"\nshell = \"/bin/sh\"\n",
        ))
        .unwrap();
        assert_eq!(ok.user.name, "_lab-user2");
    }

    #[test]
    fn defaults() {
        let r = check(MIN).unwrap();
        assert_eq!(
            r.user,
            User {
                name: "hadoop".into(),
                uid: 1000,
                gid: 1000,
                home: "/home/hadoop".into(),
                shell: "/bin/bash".into(),
                reuse_existing: false,
            }
        );
        let Base::Mmdebstrap {
            suite,
            variant,
            mirror,
            apt_sources,
            exclude_docs,
            ..
        } = &r.base
        else {
            panic!("{:?}", r.base)
        };
        assert_eq!(
            (suite.as_str(), variant.as_str(), mirror.as_str()),
            ("bookworm", "minbase", DEFAULT_MIRROR)
        );
        assert_eq!(
            apt_sources,
            &[
                "deb http://deb.debian.org/debian bookworm main",
                "deb http://deb.debian.org/debian-security bookworm-security main"
            ]
        );
        assert!(*exclude_docs);
        assert_eq!(r.excludes_docs, Some(true));
        assert_eq!(r.versions, ["3.3.6"]);
        assert_eq!(r.compression, Compression::Gzip);
        assert_eq!(r.policy, Policy::default());
        assert!(r.jdks.is_empty() && r.lines.is_empty() && r.layers.is_empty());
        assert!(r.dist.is_none() && r.disk.is_none());
        assert_eq!(r.image, ImageSettings::default());
    }

    /// A project on disk: `layers/a/` and a file `plain`, with a directory `outside` next to it.
    fn project() -> (tempfile::TempDir, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("project");
        std::fs::create_dir_all(root.join("layers/a")).unwrap();
        std::fs::create_dir_all(t.path().join("outside")).unwrap();
        std::fs::write(root.join("plain"), "x").unwrap();
        (t, root)
    }

    /// Validates and resolves paths, as `recipe::load` does.
    fn load_at(root: &Path, src: &str) -> Result<Recipe, Located> {
        let file = Path::new("recipes/t.toml");
        let raw = parse(file, src).unwrap();
        let mut r = validate(file, src, &raw, root, &catalogue())?;
        resolve_paths(&mut r, file, src, &raw)?;
        Ok(r)
    }

    #[test]
    fn paths_are_checked_on_disk_after_validation() {
        let (_t, root) = project();
        let layer = |dir: &str| with(&format!("[[layer]]\nname = \"a\"\ndir = \"{dir}\"\n"));
        let r = root.display();
        for (src, at, key, line, message) in [
            (
                layer("layers/none"),
                &*root,
                "layer.dir",
                9,
                format!("layer directory {r}/layers/none does not exist"),
            ),
            (
                layer("../outside"),
                &root,
                "layer.dir",
                9,
                format!(
                    "layer directory ../outside resolves to {}, outside the project root {}; refused",
                    root.parent()
                        .unwrap()
                        .canonicalize()
                        .unwrap()
                        .join("outside")
                        .display(),
                    root.canonicalize().unwrap().display()
                ),
            ),
            (
                layer("plain"),
                &root,
                "layer.dir",
                9,
                format!("{r}/plain is not a directory"),
            ),
            (
                base_with("source = \"tarball\"\npath = \"none.tar\"\n"),
                &root,
                "base.path",
                7,
                format!("{r}/none.tar does not exist"),
            ),
            (
                // A device would be hashed forever.
                base_with("source = \"tarball\"\npath = \"/dev/zero\"\n"),
                &root,
                "base.path",
                7,
                "/dev/zero is not a regular file (a tar)".to_string(),
            ),
            (
                base_with("source = \"tarball\"\npath = \"layers\"\n"),
                &root,
                "base.path",
                7,
                format!("{r}/layers is not a regular file (a tar)"),
            ),
            (
                base_with("source = \"oci\"\npath = \"plain\"\nref = \"x\"\n"),
                &root,
                "base.path",
                7,
                format!("{r}/plain is not a directory (an OCI image layout)"),
            ),
            (
                MIN.to_string(),
                &root.join("gone"),
                "recipe.root",
                1,
                format!(
                    "project root {r}/gone is not usable: No such file or directory (os error 2)"
                ),
            ),
        ] {
            let e = load_at(at, &src).unwrap_err();
            assert_eq!(
                (e.key.as_str(), e.line, e.message.as_str()),
                (key, line, message.as_str()),
                "{src}"
            );
        }
        let r = load_at(&root, &layer("layers/a")).unwrap();
        assert_eq!(r.root, root.canonicalize().unwrap());
        assert_eq!(
            r.layers[0].dir,
            root.join("layers/a").canonicalize().unwrap()
        );
    }

    #[test]
    fn validation_does_not_touch_the_disk() {
        let root = Path::new("/nonexistent/strata-project");
        let src = base_with(
            "source = \"tarball\"\npath = \"rootfs.tar\"\n[[layer]]\nname = \"a\"\ndir = \"layers/a\"\n",
        );
        let r = check_at(root, &src).unwrap();
        assert_eq!(r.root, root);
        assert_eq!(
            r.base,
            Base::Tarball {
                path: root.join("rootfs.tar"),
                sha256: None
            }
        );
        assert_eq!(r.layers[0].dir, root.join("layers/a"));
    }

    #[test]
    fn values_as_written_and_their_defaults() {
        let src = base_with(&format!(
            "source = \"oci\"\npath = \"/images/base\"\nbudget = \"10MiB\"\n\
             [jdk.j11]\njava-version = 11\njava-home = \"/j\"\n\
             tarball = {{ url = \"http://x/j.tgz\", sha512 = \"{}\" }}\n\
             [lines.\"3.3\"]\njdk = \"j11\"\n\
             [dist]\nmode = \"mount\"\nsource = \"LABEL=dist\"\npath = \"dist/h-{{version}}.tgz\"\n",
            SHA.to_uppercase()
        ));
        let r = check(&src).unwrap();
        let root = Path::new("/nonexistent/strata-project");
        assert_eq!(
            r.base,
            Base::Oci {
                path: "/images/base".into(),
                reference: "latest".into()
            }
        );
        assert_eq!(r.excludes_docs, None);
        assert_eq!(
            r.jdks["j11"].source,
            JdkSource::Tarball {
                origin: Origin::Url("http://x/j.tgz".into()),
                sha512: SHA.into(),
                strip_components: 1
            }
        );
        assert_eq!(r.lines["3.3"].jdk, "j11");
        let dist = r.dist.unwrap();
        assert_eq!(
            dist.mode,
            DistMode::Mount {
                source: "LABEL=dist".into()
            }
        );
        let path = root.join("dist/h-{version}.tgz");
        assert_eq!(dist.path.as_deref(), path.to_str());
        assert_eq!(
            r.policy.layer_budgets["base"],
            crate::policy::Size(10 << 20)
        );
        assert_eq!(
            security_mirror("http://mirror.example/ubuntu"),
            "http://mirror.example/ubuntu-security"
        );
    }

    #[test]
    fn names() {
        assert!(valid_name_component("hadoop-lab"));
        assert!(!valid_name_component("Hadoop"));
        assert!(!valid_name_component("-x"));
        assert!(valid_name_component("a--b.c_d__e"));
        for bad in ["a..b", "a._b", "a___b", "a.", "a/b", "a:b", "é", ""] {
            assert!(!valid_name_component(bad), "{bad:?}");
        }
        assert!(!valid_name_component(&"a".repeat(129)));
    }
}
