//! # Layers: file trees in, deterministic tar streams out
//!
//! A layer is a list of [`Entry`]s. Whatever produced them (a source directory with templates, a
//! Debian root filesystem, a release tarball, a computed difference), [`write_tar`] turns them into
//! the same bytes on any machine:
//!
//! - entries sorted by path (byte order, so every parent comes before its children);
//! - ustar headers, with a PAX record only where ustar cannot hold a value (long paths and link
//!   names, big ids or sizes, extended attributes), never a host user or group name;
//! - every mtime set to the recipe's epoch (`SOURCE_DATE_EPOCH`), no atime or ctime;
//! - modes, owners and contents exactly as the entry declares them (host modes, umask and
//!   timestamps never leak in: source trees are read for their bytes only);
//! - hard links point at the first member of their group in sorted order.
//!
//! Input tarballs are read without being extracted, and checked by [`TarPolicy`]: `..` and
//! absolute paths, links leaving the tree, paths that pass through a symlink of the same archive
//! and (for release tarballs) device nodes are refused with the offending entry named.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use sha2::{Digest as _, Sha256};

pub mod compress;
pub mod pipeline;
mod read;
mod write;

pub use read::{
    FileInfo, TarPolicy, blob_files, clean_tar_path, diff_trees, for_each_in_tar, read_tar_file,
    relink_hardlinks,
};
pub use write::{TarStats, append_entries, write_tar};

/// Bumped whenever the bytes [`write_tar`] produces for the same entries change; part of every
/// layer cache key.
pub const TAR_FORMAT: &str = "strata-tar-v1";

/// Prefix of an OCI whiteout file.
pub const WHITEOUT_PREFIX: &str = ".wh.";

/// Files of this size or more are never taken for a private key (key files are small).
pub const PRIVATE_KEY_SCAN_MAX: u64 = 64 * 1024;

/// True for a file's content that looks like a PEM or OpenSSH private key.
pub fn looks_like_private_key(data: &[u8]) -> bool {
    (data.len() as u64) < PRIVATE_KEY_SCAN_MAX
        && memchr::memmem::find(data, b"PRIVATE KEY-----").is_some()
}

/// Where a regular file's bytes come from.
#[derive(Debug, Clone)]
pub enum Content {
    Bytes(Arc<Vec<u8>>),
    /// `len` bytes at `offset` of a file (an entry inside an input tarball).
    Range {
        file: Arc<PathBuf>,
        offset: u64,
        len: u64,
    },
    /// A whole file on disk (read when the layer is written; `len` checked then).
    Path {
        path: PathBuf,
        len: u64,
    },
}

impl Content {
    pub fn bytes(data: impl Into<Vec<u8>>) -> Self {
        Content::Bytes(Arc::new(data.into()))
    }

    pub fn len(&self) -> u64 {
        match self {
            Content::Bytes(b) => b.len() as u64,
            Content::Range { len, .. } | Content::Path { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Streams the content into `out`.
    pub fn copy_to(&self, out: &mut dyn Write) -> Result<()> {
        match self {
            Content::Bytes(b) => out.write_all(b)?,
            Content::Range { file, offset, len } => {
                let mut f =
                    File::open(file.as_path()).with_context(|| format!("opening {file:?}"))?;
                f.seek(SeekFrom::Start(*offset))?;
                let n = io::copy(&mut f.take(*len), out)?;
                if n != *len {
                    crate::bad!(
                        "{file:?} is shorter than expected ({n} of {len} bytes at {offset})"
                    );
                }
            }
            Content::Path { path, len } => {
                let f = File::open(path).with_context(|| format!("opening {path:?}"))?;
                let n = io::copy(&mut f.take(*len + 1), out)?;
                if n != *len {
                    // The source tree changed under strata: a failure, not bad input.
                    bail!("{path:?} changed while the layer was written ({n} != {len} bytes)");
                }
            }
        }
        Ok(())
    }

    /// SHA-256 of the content (used in cache keys and diffs).
    pub fn sha256(&self) -> Result<[u8; 32]> {
        let mut h = Sha256::new();
        self.copy_to(&mut h)?;
        Ok(h.finalize().into())
    }

    pub fn read_all(&self) -> Result<Vec<u8>> {
        let mut v = Vec::with_capacity(self.len() as usize);
        self.copy_to(&mut v)?;
        Ok(v)
    }
}

#[derive(Debug, Clone)]
pub enum Kind {
    File(Content),
    Dir,
    Symlink(String),
    /// Target path, relative to the layer root like every path here.
    Hardlink(String),
    Char(u32, u32),
    Block(u32, u32),
    Fifo,
}

/// One file-system object of a layer. `path` is relative (`etc/passwd`), without `./`, a leading
/// slash or a trailing slash.
#[derive(Debug, Clone)]
pub struct Entry {
    pub path: String,
    pub kind: Kind,
    /// Permission bits including setuid/setgid/sticky.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub xattrs: Vec<(String, Vec<u8>)>,
}

impl Entry {
    pub fn dir(path: &str, mode: u32, uid: u32, gid: u32) -> Self {
        Entry {
            path: path.into(),
            kind: Kind::Dir,
            mode,
            uid,
            gid,
            xattrs: vec![],
        }
    }

    pub fn file(path: &str, content: Content, mode: u32, uid: u32, gid: u32) -> Self {
        Entry {
            path: path.into(),
            kind: Kind::File(content),
            mode,
            uid,
            gid,
            xattrs: vec![],
        }
    }

    pub fn symlink(path: &str, target: &str) -> Self {
        Entry {
            path: path.into(),
            kind: Kind::Symlink(target.into()),
            mode: 0o777,
            uid: 0,
            gid: 0,
            xattrs: vec![],
        }
    }

    /// An OCI whiteout that deletes `path` from the layers below.
    pub fn whiteout(path: &str) -> Self {
        let (dir, name) = match path.rsplit_once('/') {
            Some((d, n)) => (format!("{d}/"), n),
            None => (String::new(), path),
        };
        Entry::file(
            &format!("{dir}{WHITEOUT_PREFIX}{name}"),
            Content::bytes(vec![]),
            0o644,
            0,
            0,
        )
    }

    pub fn is_dir(&self) -> bool {
        matches!(self.kind, Kind::Dir)
    }

    /// Size of the content (0 for everything but regular files).
    pub fn size(&self) -> u64 {
        match &self.kind {
            Kind::File(c) => c.len(),
            _ => 0,
        }
    }

    /// A one-line, content-free description of the metadata, for keys and diffs.
    pub fn meta_key(&self) -> String {
        let kind = match &self.kind {
            Kind::File(c) => format!("f{}", c.len()),
            Kind::Dir => "d".into(),
            Kind::Symlink(t) => format!("l>{t}"),
            Kind::Hardlink(t) => format!("h>{t}"),
            Kind::Char(a, b) => format!("c{a},{b}"),
            Kind::Block(a, b) => format!("b{a},{b}"),
            Kind::Fifo => "p".into(),
        };
        let mut x = String::new();
        for (k, v) in &self.xattrs {
            x.push_str(&format!(" {k}={}", hex::encode(v)));
        }
        format!(
            "{} {} {:o} {}:{}{}",
            self.path, kind, self.mode, self.uid, self.gid, x
        )
    }
}

/// Checks a relative path for the shape every layer path must have.
pub fn check_relative(path: &str) -> Result<()> {
    if path.is_empty() {
        crate::bad!("empty path");
    }
    if path.starts_with('/') {
        crate::bad!("absolute path {path:?}");
    }
    for comp in path.split('/') {
        match comp {
            "" => crate::bad!("empty component in {path:?}"),
            "." | ".." => crate::bad!("path {path:?} contains {comp:?}"),
            _ => {}
        }
        if comp.contains('\0') {
            crate::bad!("path {path:?} contains a NUL byte");
        }
    }
    Ok(())
}

/// Sorts entries by path, rejects duplicates, and adds missing parent directories (root-owned,
/// 0755), so every layer lists each directory it writes into.
pub fn normalize(mut entries: Vec<Entry>) -> Result<Vec<Entry>> {
    entries.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
    for w in entries.windows(2) {
        if w[0].path == w[1].path {
            crate::bad!("two entries for the same path {:?}", w[0].path);
        }
    }
    let present: HashSet<&str> = entries.iter().map(|e| e.path.as_str()).collect();
    let mut missing = BTreeMap::new();
    for e in &entries {
        let mut p = e.path.as_str();
        while let Some((parent, _)) = p.rsplit_once('/') {
            if present.contains(parent) || missing.contains_key(parent) {
                break;
            }
            missing.insert(parent.to_string(), ());
            p = parent;
        }
    }
    if !missing.is_empty() {
        entries.extend(missing.into_keys().map(|p| Entry::dir(&p, 0o755, 0, 0)));
        entries.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_bytes(entries: Vec<Entry>, epoch: u64) -> Vec<u8> {
        let entries = normalize(entries).unwrap();
        let mut out = Vec::new();
        write_tar(&entries, epoch, &mut out).unwrap();
        out
    }

    #[test]
    fn same_entries_in_any_order_give_the_same_bytes() {
        let a = vec![
            Entry::file("etc/b", Content::bytes("b"), 0o644, 0, 0),
            Entry::file("etc/a", Content::bytes("a"), 0o600, 1000, 1000),
            Entry::symlink("opt/hadoop", "hadoop-3.3.6"),
        ];
        let mut b = a.clone();
        b.reverse();
        assert_eq!(tar_bytes(a, 1), tar_bytes(b, 1));
    }

    #[test]
    fn parents_are_added_and_sorted_first() {
        let e = normalize(vec![Entry::file("a/b/c", Content::bytes("x"), 0o644, 0, 0)]).unwrap();
        let paths: Vec<_> = e.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["a", "a/b", "a/b/c"]);
    }

    #[test]
    fn long_names_and_xattrs_round_trip() {
        let long = format!("{}/file", "d".repeat(300));
        let mut e = Entry::file(&long, Content::bytes("x"), 0o755, 0, 0);
        e.xattrs.push(("security.capability".into(), vec![1, 2, 3]));
        let bytes = tar_bytes(vec![e], 7);
        let mut found = false;
        for_each_in_tar(&bytes[..], |p, h, _| {
            if p == long {
                found = true;
                assert_eq!(h.mtime().unwrap(), 7);
            }
            Ok(())
        })
        .unwrap();
        assert!(found, "the long name must survive");
    }

    #[test]
    fn clean_tar_path_refuses_escapes() {
        assert_eq!(clean_tar_path("./etc/x").unwrap().as_deref(), Some("etc/x"));
        assert_eq!(clean_tar_path("./").unwrap(), None);
        assert!(clean_tar_path("/etc/passwd").is_err());
        assert!(clean_tar_path("a/../../x").is_err());
    }

    #[test]
    fn whiteout_names() {
        assert_eq!(Entry::whiteout("etc/x").path, "etc/.wh.x");
        assert_eq!(Entry::whiteout("x").path, ".wh.x");
    }

    #[test]
    fn diff_finds_changes_and_removals() {
        let lower = normalize(vec![
            Entry::file("etc/keep", Content::bytes("1"), 0o644, 0, 0),
            Entry::file("etc/change", Content::bytes("1"), 0o644, 0, 0),
            Entry::file("etc/gone", Content::bytes("1"), 0o644, 0, 0),
        ])
        .unwrap();
        let upper = normalize(vec![
            Entry::file("etc/keep", Content::bytes("1"), 0o644, 0, 0),
            Entry::file("etc/change", Content::bytes("2"), 0o644, 0, 0),
            Entry::file("usr/new", Content::bytes("n"), 0o755, 0, 0),
        ])
        .unwrap();
        let d = diff_trees(&lower, &upper).unwrap();
        let paths: Vec<_> = d.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            ["etc", "etc/.wh.gone", "etc/change", "usr", "usr/new"]
        );
    }

    #[test]
    fn hardlinks_point_at_the_first_member() {
        let mut e = vec![
            Entry::file("z/data", Content::bytes("x"), 0o755, 0, 0),
            Entry {
                path: "a/link".into(),
                kind: Kind::Hardlink("z/data".into()),
                mode: 0o755,
                uid: 0,
                gid: 0,
                xattrs: vec![],
            },
        ];
        relink_hardlinks(&mut e).unwrap();
        assert!(matches!(e[1].kind, Kind::File(_)));
        assert!(matches!(&e[0].kind, Kind::Hardlink(t) if t == "a/link"));
    }
}
