//! # Layer source directories and templates
//!
//! A layer directory holds `root/` (the files, as they appear under `/` in the image) and an
//! optional `layer.toml` that declares what git cannot hold: owners, modes, symlinks and empty
//! directories. Files ending in `.j2` are minijinja templates, rendered with the recipe, the
//! Hadoop version's catalogue facts and the JDK choice (see [`Context`]); the suffix is dropped.
//!
//! ```toml
//! [defaults]                 # optional
//! owner = "root"             # "root", the recipe's user name, or "uid:gid"
//! file-mode = "0644"
//! dir-mode = "0755"
//!
//! [[attr]]                   # later matches win; `path` is a glob over paths under root/
//! path = "home/hadoop/**"
//! owner = "hadoop"
//! mode = "0600"              # or file-mode / dir-mode
//!
//! [[link]]                   # target is a template
//! path = "opt/hadoop"
//! target = "hadoop-{{ hadoop.version }}"
//!
//! [[dir]]
//! path = "var/log/hadoop"
//! owner = "hadoop"
//! mode = "0775"
//!
//! [[omit]]                   # leave a path out when the expression holds
//! path = "etc/hadoop/slaves"
//! when = "hadoop.layout['workers-file'] != 'slaves'"
//! ```
//!
//! Host modes, owners and timestamps are never read: the same checkout gives the same layer under
//! any umask. Symlinks inside `root/` are refused when they point outside the layer (absolute, or
//! `..` past its top): declare such links in `layer.toml` instead, where they are explicit.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, anyhow};
use serde::Deserialize;

use crate::layer::{Content, Entry, Kind, check_relative};
use crate::recipe::User;

pub const LAYER_TOML: &str = "layer.toml";
pub const ROOT_DIR: &str = "root";
pub const TEMPLATE_SUFFIX: &str = ".j2";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct LayerToml {
    #[serde(default)]
    defaults: Option<Attr>,
    #[serde(default)]
    attr: Vec<Attr>,
    #[serde(default)]
    link: Vec<Link>,
    #[serde(default)]
    dir: Vec<Attr>,
    #[serde(default)]
    omit: Vec<Omit>,
}

/// Leaves a path out when a condition (a template expression) holds, e.g. `slaves` on versions
/// that read `workers`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Omit {
    path: String,
    when: toml::Spanned<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Attr {
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    owner: Option<String>,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    file_mode: Option<String>,
    #[serde(default)]
    dir_mode: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Link {
    path: String,
    target: String,
}

/// What templates see.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Context {
    pub recipe: serde_json::Value,
    pub user: User,
    /// The version's catalogue facts plus `ports` (by name) and `major`; absent in shared layers.
    pub hadoop: Option<serde_json::Value>,
    /// `name`, `java_version`, `java_home`, `jvm_flags`, `unsupported`; absent in shared layers.
    pub jdk: Option<serde_json::Value>,
    pub vars: serde_json::Value,
}

/// Renders a layer directory into entries.
pub fn render_dir(dir: &Path, cx: &Context) -> Result<Vec<Entry>> {
    let spec_path = dir.join(LAYER_TOML);
    let (spec, spec_src) = read_spec(&spec_path)?;
    let tpl = Templates {
        env: template_env(),
        ctx: minijinja::Value::from_serialize(cx),
    };
    let attrs = Attrs::new(&spec, &spec_path, &cx.user)?;
    let mut entries = walk_root(dir, &attrs, &tpl)?;
    apply_spec(&spec, (&spec_path, &spec_src), &attrs, &tpl, &mut entries)?;
    Ok(entries)
}

/// `layer.toml` and its text, or an empty one when the directory has none.
fn read_spec(spec_path: &Path) -> Result<(LayerToml, String)> {
    if !spec_path.exists() {
        return Ok(Default::default());
    }
    let src = crate::support::error::read_text(spec_path, "layer spec")?;
    let spec =
        toml::from_str(&src).map_err(|e| crate::support::error::toml_error(spec_path, &src, &e))?;
    Ok((spec, src))
}

/// The template environment and what templates see.
struct Templates {
    env: minijinja::Environment<'static>,
    ctx: minijinja::Value,
}

impl Templates {
    fn render(&self, file: &Path, src: &str) -> Result<String> {
        render_template(&self.env, file, src, &self.ctx)
    }
}

/// Owners and modes by path: `[defaults]`, then every matching `[[attr]]` in order (later
/// matches win), then the entry's own declaration.
struct Attrs<'a> {
    spec_path: &'a Path,
    defaults: Attr,
    globs: Vec<(globset::GlobMatcher, Attr)>,
    user: &'a User,
}

impl<'a> Attrs<'a> {
    /// Compiles the `[[attr]]` globs (a bad one fails here, before any file is read).
    fn new(spec: &LayerToml, spec_path: &'a Path, user: &'a User) -> Result<Self> {
        let mut globs = Vec::new();
        for a in &spec.attr {
            let pat = a
                .path
                .as_deref()
                .ok_or_else(|| anyhow!("{}: [[attr]] needs `path`", spec_path.display()))?;
            let glob = globset::GlobBuilder::new(pat)
                .literal_separator(true)
                .build()
                .with_context(|| format!("{}: bad glob {pat:?}", spec_path.display()))?
                .compile_matcher();
            globs.push((glob, a.clone()));
        }
        Ok(Attrs {
            spec_path,
            defaults: spec.defaults.clone().unwrap_or_default(),
            globs,
            user,
        })
    }

    /// Mode, uid and gid of `path` (relative to `root/`).
    fn resolve(&self, path: &str, is_dir: bool, extra: Option<&Attr>) -> Result<(u32, u32, u32)> {
        let defaults = &self.defaults;
        let mut owner = defaults.owner.clone().unwrap_or_else(|| "root".into());
        let mut mode = if is_dir {
            defaults.dir_mode.clone().unwrap_or_else(|| "0755".into())
        } else {
            defaults.file_mode.clone().unwrap_or_else(|| "0644".into())
        };
        let matching = self
            .globs
            .iter()
            .filter(|(g, _)| g.is_match(path))
            .map(|(_, a)| a)
            .chain(extra);
        for a in matching {
            if let Some(o) = &a.owner {
                owner = o.clone();
            }
            let m = if is_dir {
                a.dir_mode.as_ref()
            } else {
                a.file_mode.as_ref()
            };
            if let Some(m) = m.or(a.mode.as_ref()) {
                mode = m.clone();
            }
        }
        let (uid, gid) = parse_owner(&owner, self.user)
            .with_context(|| format!("{}: owner of {path:?}", self.spec_path.display()))?;
        let mode = u32::from_str_radix(mode.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o7777)
            .ok_or_else(|| {
                anyhow!(
                    "{}: mode {mode:?} of {path:?} is not an octal mode",
                    self.spec_path.display()
                )
            })?;
        Ok((mode, uid, gid))
    }
}

/// The entries under `root/`, in file-name order (none when there is no `root/`).
fn walk_root(dir: &Path, attrs: &Attrs, tpl: &Templates) -> Result<Vec<Entry>> {
    let root = dir.join(ROOT_DIR);
    let mut entries = Vec::new();
    if !root.exists() {
        return Ok(entries);
    }
    let canon_root = root.canonicalize()?;
    if !canon_root.starts_with(dir.canonicalize()?) {
        crate::bad!(
            "{} leaves the layer directory through a symlink; refused",
            root.display()
        );
    }
    for item in walkdir::WalkDir::new(&root)
        .follow_links(false)
        .sort_by_file_name()
    {
        let item = item.with_context(|| format!("walking {}", root.display()))?;
        let rel = item.path().strip_prefix(&root)?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        entries.push(root_entry(&root, &item, rel, attrs, tpl)?);
    }
    Ok(entries)
}

/// One item under `root/`: a directory, a symlink that stays inside the layer, a template
/// (rendered, its suffix dropped) or a plain file (read later, at its path).
fn root_entry(
    root: &Path,
    item: &walkdir::DirEntry,
    rel: &Path,
    attrs: &Attrs,
    tpl: &Templates,
) -> Result<Entry> {
    let rel_str = rel
        .to_str()
        .ok_or_else(|| anyhow!("{}: file name is not UTF-8", item.path().display()))?;
    let ft = item.file_type();
    if ft.is_dir() {
        let (mode, uid, gid) = attrs.resolve(rel_str, true, None)?;
        Ok(Entry::dir(rel_str, mode, uid, gid))
    } else if ft.is_symlink() {
        let target = std::fs::read_link(item.path())
            .with_context(|| format!("reading the link {:?}", item.path()))?;
        check_link_inside(root, rel, &target).with_context(|| {
            format!(
                "{} is a symlink to {}",
                item.path().display(),
                target.display()
            )
        })?;
        let t = target
            .to_str()
            .ok_or_else(|| anyhow!("symlink target is not UTF-8"))?;
        Ok(Entry::symlink(rel_str, t))
    } else if ft.is_file() {
        if let Some(out) = rel_str.strip_suffix(TEMPLATE_SUFFIX) {
            if out.is_empty() || out.ends_with('/') {
                crate::bad!(
                    "{}: a template needs a name before `{TEMPLATE_SUFFIX}` (the file it renders \
                     to, e.g. `hosts{TEMPLATE_SUFFIX}`)",
                    item.path().display()
                );
            }
            let src = std::fs::read_to_string(item.path())
                .with_context(|| format!("reading template {}", item.path().display()))?;
            let text = tpl.render(item.path(), &src)?;
            let (mode, uid, gid) = attrs.resolve(out, false, None)?;
            Ok(Entry::file(out, Content::bytes(text), mode, uid, gid))
        } else {
            let len = item.metadata()?.len();
            let (mode, uid, gid) = attrs.resolve(rel_str, false, None)?;
            let content = Content::Path {
                path: item.path().to_path_buf(),
                len,
            };
            Ok(Entry::file(rel_str, content, mode, uid, gid))
        }
    } else {
        crate::bad!(
            "{}: only files, directories and symlinks belong in a layer directory",
            item.path().display()
        );
    }
}

/// What `layer.toml` declares on top of `root/`: `[[link]]`s, then `[[omit]]`s (which may drop
/// them too), then `[[dir]]`s (which replace an entry at their path).
fn apply_spec(
    spec: &LayerToml,
    (spec_path, spec_src): (&Path, &str),
    attrs: &Attrs,
    tpl: &Templates,
    entries: &mut Vec<Entry>,
) -> Result<()> {
    for l in &spec.link {
        check_relative(&l.path)
            .with_context(|| format!("{}: [[link]] path", spec_path.display()))?;
        let target = tpl.render(spec_path, &l.target)?;
        entries.push(Entry::symlink(&l.path, target.trim()));
    }
    for o in &spec.omit {
        // Rendered on the line `when` sits on in layer.toml, so an error names that line.
        let line = spec_src[..o.when.span().start].matches('\n').count();
        let test = format!(
            "{}{{% if {} %}}omit{{% endif %}}",
            "\n".repeat(line),
            o.when.get_ref()
        );
        if tpl.render(spec_path, &test)?.trim() == "omit" {
            entries.retain(|e| e.path != o.path && !e.path.starts_with(&format!("{}/", o.path)));
        }
    }
    for d in &spec.dir {
        let path = d
            .path
            .as_deref()
            .ok_or_else(|| anyhow!("{}: [[dir]] needs `path`", spec_path.display()))?;
        check_relative(path).with_context(|| format!("{}: [[dir]] path", spec_path.display()))?;
        let (mode, uid, gid) = attrs.resolve(path, true, Some(d))?;
        entries.retain(|e| e.path != path);
        entries.push(Entry::dir(path, mode, uid, gid));
    }
    Ok(())
}

/// Links followed while resolving one symlink before it counts as a loop (Linux's limit).
const MAX_LINK_HOPS: usize = 40;

/// A symlink at `rel` (relative to the layer's `root`) must resolve inside `root`, following the
/// symlinks of the layer it passes through: a chain of relative links (`a/b -> ..`, then
/// `c -> a/b/..`) that each look harmless can still climb out. What does not exist in the
/// layer (it will come from a lower layer) is resolved by name.
fn check_link_inside(root: &Path, rel: &Path, target: &Path) -> Result<()> {
    use std::collections::VecDeque;
    use std::ffi::OsString;
    use std::path::Component;
    /// One step of a path being resolved: up, or into a name (`.` is dropped).
    fn steps(p: &Path) -> impl Iterator<Item = Option<OsString>> + '_ {
        p.components().filter_map(|c| match c {
            Component::ParentDir => Some(None),
            Component::Normal(n) => Some(Some(n.to_os_string())),
            _ => None,
        })
    }
    if target.is_absolute() {
        crate::bad!(
            "absolute symlinks would point at the build host here; declare it in layer.toml [[link]] instead; refused"
        );
    }
    let mut at: Vec<OsString> = rel
        .parent()
        .map(|p| p.iter().map(|c| c.to_os_string()).collect())
        .unwrap_or_default();
    let mut todo: VecDeque<Option<OsString>> = steps(target).collect();
    let mut hops = 0;
    while let Some(step) = todo.pop_front() {
        let Some(name) = step else {
            if at.pop().is_none() {
                crate::bad!("the symlink escapes the layer directory through `..`; refused");
            }
            continue;
        };
        at.push(name);
        let here: PathBuf = at.iter().collect();
        let Ok(next) = std::fs::read_link(root.join(&here)) else {
            continue;
        };
        hops += 1;
        if hops > MAX_LINK_HOPS || next.is_absolute() {
            let why = if next.is_absolute() {
                "is absolute"
            } else {
                "loops"
            };
            crate::bad!(
                "the symlink resolves through {} (-> {}), which {why}; refused",
                here.display(),
                next.display()
            );
        }
        at.pop();
        for s in steps(&next).collect::<Vec<_>>().into_iter().rev() {
            todo.push_front(s);
        }
    }
    Ok(())
}

fn parse_owner(owner: &str, user: &User) -> Result<(u32, u32)> {
    if owner == "root" {
        return Ok((0, 0));
    }
    if owner == user.name {
        return Ok((user.uid, user.gid));
    }
    if let Some((u, g)) = owner.split_once(':')
        && let (Ok(u), Ok(g)) = (u.parse(), g.parse())
    {
        return Ok((u, g));
    }
    crate::bad!(
        "unknown owner {owner:?}: use \"root\", \"{}\" or \"uid:gid\"",
        user.name
    )
}

fn template_env() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.set_keep_trailing_newline(true);
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env
}

/// Renders one template; errors name the file and line.
fn render_template(
    env: &minijinja::Environment<'static>,
    file: &Path,
    src: &str,
    ctx: &minijinja::Value,
) -> Result<String> {
    let name = file.display().to_string();
    let located = |e: minijinja::Error| {
        let line = e.line().map(|l| format!(":{l}")).unwrap_or_default();
        let mut detail = e.detail().map(|d| format!(": {d}")).unwrap_or_default();
        // minijinja does not name what is undefined; the span of the expression does.
        if let Some(what) = e.range().and_then(|r| src.get(r))
            && !what.trim().is_empty()
        {
            detail.push_str(&format!(" (in `{}`)", what.trim()));
        }
        anyhow::Error::from(crate::support::error::BadInput(format!(
            "{name}{line}: template error: {}{detail}",
            e.kind()
        )))
    };
    env.render_named_str(&name, src, ctx).map_err(located)
}

/// The files of a layer directory that are inputs (for error messages and plans).
pub fn source_root(dir: &Path) -> PathBuf {
    dir.join(ROOT_DIR)
}

/// True if any entry is a regular file whose content looks like a private key.
/// (A layer written by [`crate::layer::write_tar`] learns the same as it is written.)
pub fn carries_private_key(entries: &[Entry]) -> bool {
    entries.iter().any(|e| match &e.kind {
        Kind::File(c) if c.len() < crate::layer::PRIVATE_KEY_SCAN_MAX => c
            .read_all()
            .is_ok_and(|b| crate::layer::looks_like_private_key(&b)),
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> User {
        User {
            name: "hadoop".into(),
            uid: 1000,
            gid: 1000,
            home: "/home/hadoop".into(),
            shell: "/bin/bash".into(),
            reuse_existing: false,
        }
    }

    fn cx() -> Context {
        Context {
            recipe: serde_json::json!({"name": "t"}),
            user: user(),
            hadoop: Some(serde_json::json!({"version": "3.3.6"})),
            jdk: None,
            vars: serde_json::json!({}),
        }
    }

    #[test]
    fn renders_templates_and_declared_attrs() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("root/etc/hadoop")).unwrap();
        std::fs::write(
            d.path().join("root/etc/hadoop/v.txt.j2"),
            "v={{ hadoop.version }}\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("layer.toml"),
            "[[attr]]\npath = \"etc/hadoop/*\"\nowner = \"hadoop\"\nmode = \"0600\"\n[[link]]\npath = \"opt/hadoop\"\ntarget = \"hadoop-{{ hadoop.version }}\"\n",
        )
        .unwrap();
        let e = render_dir(d.path(), &cx()).unwrap();
        let f = e.iter().find(|e| e.path == "etc/hadoop/v.txt").unwrap();
        assert_eq!((f.mode, f.uid), (0o600, 1000));
        assert_eq!(f.size(), "v=3.3.6\n".len() as u64);
        let l = e.iter().find(|e| e.path == "opt/hadoop").unwrap();
        assert!(matches!(&l.kind, Kind::Symlink(t) if t == "hadoop-3.3.6"));
    }

    #[test]
    fn template_errors_name_file_and_line() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("root")).unwrap();
        std::fs::write(d.path().join("root/x.j2"), "ok\n{{ nope.missing }}\n").unwrap();
        let err = render_dir(d.path(), &cx()).unwrap_err().to_string();
        assert!(err.contains("x.j2:2"), "{err}");
        assert!(
            err.contains("`nope.missing`"),
            "names what is undefined: {err}"
        );
    }

    #[test]
    fn a_template_without_a_name_and_a_bad_omit_are_located() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("root/etc")).unwrap();
        std::fs::write(d.path().join("root/etc/.j2"), "x\n").unwrap();
        let err = render_dir(d.path(), &cx()).unwrap_err().to_string();
        assert!(
            err.contains("etc/.j2") && err.contains("needs a name"),
            "{err}"
        );
        std::fs::remove_file(d.path().join("root/etc/.j2")).unwrap();
        std::fs::write(
            d.path().join("layer.toml"),
            "# a comment\n\n[[omit]]\npath = \"etc\"\nwhen = \"nope ==\"\n",
        )
        .unwrap();
        let err = format!("{:#}", render_dir(d.path(), &cx()).unwrap_err());
        assert!(err.contains("layer.toml:5"), "the line of `when`: {err}");
    }

    #[test]
    fn escaping_symlinks_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        assert!(check_link_inside(root, Path::new("a/b"), Path::new("../c")).is_ok());
        assert!(check_link_inside(root, Path::new("a/b"), Path::new("../../c")).is_err());
        assert!(check_link_inside(root, Path::new("a"), Path::new("/etc/passwd")).is_err());
    }

    #[test]
    fn a_chain_of_relative_symlinks_that_climbs_out_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("a")).unwrap();
        // Each looks harmless by itself: a/b -> .. is the root, c -> a/b/.. is "a".
        std::os::unix::fs::symlink("..", root.join("a/b")).unwrap();
        assert!(check_link_inside(root, Path::new("a/b"), Path::new("..")).is_ok());
        let e = check_link_inside(root, Path::new("c"), Path::new("a/b/..")).unwrap_err();
        assert!(e.to_string().contains("escapes"), "{e}");
        // A loop is refused, not followed forever.
        std::os::unix::fs::symlink("l2", root.join("l1")).unwrap();
        std::os::unix::fs::symlink("l1", root.join("l2")).unwrap();
        let e = check_link_inside(root, Path::new("x"), Path::new("l1/f")).unwrap_err();
        assert!(e.to_string().contains("loops"), "{e}");
        // A name the layer does not have resolves by name (a lower layer provides it).
        assert!(check_link_inside(root, Path::new("lib"), Path::new("usr/lib")).is_ok());
    }
}
