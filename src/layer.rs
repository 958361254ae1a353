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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use sha2::{Digest as _, Sha256};

/// Bumped whenever the bytes [`write_tar`] produces for the same entries change; part of every
/// layer cache key.
pub const TAR_FORMAT: &str = "strata-tar-v1";

/// Prefix of an OCI whiteout file.
pub const WHITEOUT_PREFIX: &str = ".wh.";

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
                    crate::bad!(
                        "{path:?} changed while the layer was written ({n} != {len} bytes)"
                    );
                }
            }
        }
        Ok(())
    }

    /// SHA-256 of the content (used in cache keys and diffs).
    pub fn sha256(&self) -> Result<[u8; 32]> {
        let mut h = HashWriter(Sha256::new());
        self.copy_to(&mut h)?;
        Ok(h.0.finalize().into())
    }

    pub fn read_all(&self) -> Result<Vec<u8>> {
        let mut v = Vec::with_capacity(self.len() as usize);
        self.copy_to(&mut v)?;
        Ok(v)
    }
}

struct HashWriter(Sha256);
impl Write for HashWriter {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.update(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
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

/// Counts what a written tar holds.
#[derive(Debug, Default, Clone, Copy)]
pub struct TarStats {
    pub entries: u64,
    pub file_bytes: u64,
}

/// Writes `entries` (already [`normalize`]d) as a deterministic tar stream.
pub fn write_tar(entries: &[Entry], epoch: u64, out: &mut dyn Write) -> Result<TarStats> {
    let mut stats = TarStats::default();
    let mut b = tar::Builder::new(out);
    for e in entries {
        append_entry(&mut b, e, epoch).with_context(|| format!("writing {:?} to tar", e.path))?;
        stats.entries += 1;
        stats.file_bytes += e.size();
    }
    b.finish()?;
    Ok(stats)
}

/// Appends entries to a tar builder (the caller finishes it): for writing several parts as one
/// stream.
pub fn append_entries<W: Write>(
    b: &mut tar::Builder<W>,
    entries: &[Entry],
    epoch: u64,
) -> Result<()> {
    for e in entries {
        append_entry(b, e, epoch).with_context(|| format!("writing {:?} to tar", e.path))?;
    }
    Ok(())
}

const USTAR_ID_MAX: u32 = 0o7777777;
const USTAR_SIZE_MAX: u64 = 0o77777777777;

fn append_entry<W: Write>(b: &mut tar::Builder<W>, e: &Entry, epoch: u64) -> Result<()> {
    check_relative(&e.path)?;
    let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
    let mut h = tar::Header::new_ustar();
    let name = if e.is_dir() {
        format!("{}/", e.path)
    } else {
        e.path.clone()
    };
    if h.set_path(&name).is_err() || name.len() > 255 {
        pax.push(("path".into(), name.as_bytes().to_vec()));
        h.set_path(truncated_name(&name))?;
    }
    let (ty, size) = match &e.kind {
        Kind::File(c) => (tar::EntryType::Regular, c.len()),
        Kind::Dir => (tar::EntryType::Directory, 0),
        Kind::Symlink(_) => (tar::EntryType::Symlink, 0),
        Kind::Hardlink(_) => (tar::EntryType::Link, 0),
        Kind::Char(..) => (tar::EntryType::Char, 0),
        Kind::Block(..) => (tar::EntryType::Block, 0),
        Kind::Fifo => (tar::EntryType::Fifo, 0),
    };
    h.set_entry_type(ty);
    h.set_mode(e.mode & 0o7777);
    for (key, id) in [("uid", e.uid), ("gid", e.gid)] {
        if id > USTAR_ID_MAX {
            pax.push((key.into(), id.to_string().into_bytes()));
        }
    }
    h.set_uid(u64::from(e.uid.min(USTAR_ID_MAX)));
    h.set_gid(u64::from(e.gid.min(USTAR_ID_MAX)));
    if size > USTAR_SIZE_MAX {
        pax.push(("size".into(), size.to_string().into_bytes()));
        h.set_size(0);
    } else {
        h.set_size(size);
    }
    h.set_mtime(epoch);
    match &e.kind {
        Kind::Symlink(t) | Kind::Hardlink(t) => {
            if t.is_empty() {
                crate::bad!("link without a target");
            }
            if t.len() > 100 || h.set_link_name_literal(t).is_err() {
                pax.push(("linkpath".into(), t.as_bytes().to_vec()));
                h.set_link_name_literal(&t[..floor_char(t, 100)])?;
            }
        }
        Kind::Char(maj, min) | Kind::Block(maj, min) => {
            h.set_device_major(*maj)?;
            h.set_device_minor(*min)?;
        }
        _ => {}
    }
    for (k, v) in &e.xattrs {
        pax.push((format!("SCHILY.xattr.{k}"), v.clone()));
    }
    if !pax.is_empty() {
        pax.sort();
        b.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))?;
    }
    h.set_cksum();
    match &e.kind {
        Kind::File(c) => {
            // Stream the content through the builder without buffering it whole.
            let mut reader = ContentReader::new(c)?;
            b.append(&h, &mut reader)?;
            reader.check_done()?;
        }
        _ => b.append(&h, io::empty())?,
    }
    Ok(())
}

fn floor_char(s: &str, max: usize) -> usize {
    let mut i = max.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// A short ustar name for an entry whose real name is carried in a PAX record.
fn truncated_name(name: &str) -> String {
    let h = hex::encode(&Sha256::digest(name.as_bytes())[..8]);
    format!("PaxHeaders/{h}")
}

/// Reads a [`Content`] as a stream (for the tar builder).
struct ContentReader {
    inner: Box<dyn Read>,
    want: u64,
    got: u64,
    what: String,
}

impl ContentReader {
    fn new(c: &Content) -> Result<Self> {
        let (inner, what): (Box<dyn Read>, String) = match c {
            Content::Bytes(b) => (
                Box::new(io::Cursor::new(Arc::clone(b).to_vec())),
                "bytes".into(),
            ),
            Content::Range { file, offset, len } => {
                let mut f =
                    File::open(file.as_path()).with_context(|| format!("opening {file:?}"))?;
                f.seek(SeekFrom::Start(*offset))?;
                (
                    Box::new(io::BufReader::with_capacity(256 << 10, f).take(*len)),
                    format!("{file:?}"),
                )
            }
            Content::Path { path, len } => {
                let f = File::open(path).with_context(|| format!("opening {path:?}"))?;
                (Box::new(f.take(*len)), format!("{path:?}"))
            }
        };
        Ok(ContentReader {
            inner,
            want: c.len(),
            got: 0,
            what,
        })
    }

    fn check_done(&self) -> Result<()> {
        if self.got != self.want {
            crate::bad!(
                "{} gave {} bytes, expected {}",
                self.what,
                self.got,
                self.want
            );
        }
        Ok(())
    }
}

impl Read for ContentReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.got += n as u64;
        Ok(n)
    }
}

/// What an input tarball may contain.
#[derive(Debug, Clone, Copy)]
pub struct TarPolicy {
    /// Device nodes and FIFOs are allowed (a root filesystem has them; a release tarball must not).
    pub allow_devices: bool,
}

/// Reads the entries of an uncompressed tar FILE without extracting it: contents stay in the
/// file and are referenced by offset. Enforces `policy` and the path rules of the module docs.
pub fn read_tar_file(path: &Path, policy: TarPolicy) -> Result<Vec<Entry>> {
    let file = Arc::new(path.to_path_buf());
    let f = File::open(path).with_context(|| format!("opening {path:?}"))?;
    let mut ar = tar::Archive::new(io::BufReader::with_capacity(1 << 20, f));
    let mut out = Vec::new();
    let mut symlinks: HashSet<String> = HashSet::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for item in ar
        .entries()
        .with_context(|| format!("reading tar {path:?}"))?
    {
        let mut ent = match item {
            Ok(e) => e,
            Err(e) => crate::bad!("{path:?}: {e}: not a tar archive, or a truncated one"),
        };
        let raw_path = String::from_utf8(ent.path_bytes().into_owned())
            .map_err(|_| anyhow::anyhow!("{path:?}: an entry name is not UTF-8"))?;
        let Some(rel) =
            clean_tar_path(&raw_path).with_context(|| format!("{path:?}: entry {raw_path:?}"))?
        else {
            continue; // the root directory itself
        };
        // A path that passes through a symlink of the archive would write outside the tree
        // when unpacked.
        let mut prefix = rel.as_str();
        while let Some((parent, _)) = prefix.rsplit_once('/') {
            if symlinks.contains(parent) {
                crate::bad!(
                    "{path:?}: entry {raw_path:?} passes through the symlink {parent:?}; refused"
                );
            }
            prefix = parent;
        }
        let hdr = ent.header();
        let mode = hdr.mode().unwrap_or(0o644) & 0o7777;
        let uid = hdr.uid().unwrap_or(0) as u32;
        let gid = hdr.gid().unwrap_or(0) as u32;
        let link = ent
            .link_name_bytes()
            .map(|b| String::from_utf8_lossy(&b).into_owned());
        let ty = hdr.entry_type();
        let kind = match ty {
            tar::EntryType::Regular | tar::EntryType::Continuous => Kind::File(Content::Range {
                file: Arc::clone(&file),
                offset: ent.raw_file_position(),
                len: ent.size(),
            }),
            tar::EntryType::Directory => Kind::Dir,
            tar::EntryType::Symlink => {
                let t = link
                    .filter(|t| !t.is_empty())
                    .with_context(|| format!("{path:?}: symlink {raw_path:?} has no target"))?;
                symlinks.insert(rel.clone());
                Kind::Symlink(t)
            }
            tar::EntryType::Link => {
                let t = link.unwrap_or_default();
                let Some(target) = clean_tar_path(&t).ok().flatten() else {
                    crate::bad!(
                        "{path:?}: hard link {raw_path:?} points outside the tree ({t:?}); refused"
                    );
                };
                if !seen.contains_key(&target) {
                    crate::bad!(
                        "{path:?}: hard link {raw_path:?} points at {t:?}, which is not an earlier entry of the archive; refused"
                    );
                }
                Kind::Hardlink(target)
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                if !policy.allow_devices {
                    crate::bad!(
                        "{path:?}: entry {raw_path:?} is a device node or FIFO; refused in this tarball"
                    );
                }
                let maj = hdr.device_major().ok().flatten().unwrap_or(0);
                let min = hdr.device_minor().ok().flatten().unwrap_or(0);
                match ty {
                    tar::EntryType::Char => Kind::Char(maj, min),
                    tar::EntryType::Block => Kind::Block(maj, min),
                    _ => Kind::Fifo,
                }
            }
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => continue,
            other => crate::bad!("{path:?}: entry {raw_path:?} has unsupported type {other:?}"),
        };
        let mut xattrs = Vec::new();
        if let Some(exts) = ent.pax_extensions()? {
            for ext in exts {
                let ext = ext?;
                if let Ok(k) = ext.key()
                    && let Some(name) = k.strip_prefix("SCHILY.xattr.")
                {
                    xattrs.push((name.to_string(), ext.value_bytes().to_vec()));
                }
            }
        }
        xattrs.sort();
        let e = Entry {
            path: rel.clone(),
            kind,
            mode,
            uid,
            gid,
            xattrs,
        };
        if let Some(&i) = seen.get(&rel) {
            out[i] = e; // a later entry replaces an earlier one, as tar extraction would
        } else {
            seen.insert(rel, out.len());
            out.push(e);
        }
    }
    Ok(out)
}

/// Turns a tar member name into a layer path: strips `./` and trailing slashes; `None` for the
/// root itself; refuses `..` and absolute names.
pub fn clean_tar_path(raw: &str) -> Result<Option<String>> {
    if raw.starts_with('/') {
        crate::bad!("absolute path {raw:?}; refused");
    }
    let parts: Vec<&str> = raw
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    if parts.contains(&"..") {
        crate::bad!("path {raw:?} contains `..`; refused");
    }
    if parts.is_empty() {
        return Ok(None);
    }
    Ok(Some(parts.join("/")))
}

/// Rewrites hard links so that each group's first member in sorted order holds the data and the
/// others link to it (tar readers need the target before the link).
pub fn relink_hardlinks(entries: &mut [Entry]) -> Result<()> {
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in entries.iter() {
        if let Kind::Hardlink(t) = &e.kind {
            groups.entry(t.clone()).or_default().push(e.path.clone());
        }
    }
    if groups.is_empty() {
        return Ok(());
    }
    let index: HashMap<String, usize> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| (e.path.clone(), i))
        .collect();
    for (target, links) in groups {
        let ti = *index
            .get(&target)
            .with_context(|| format!("hard link target {target:?} is missing"))?;
        if matches!(entries[ti].kind, Kind::Hardlink(_)) {
            crate::bad!("hard link target {target:?} is itself a hard link");
        }
        let mut members = links.clone();
        members.push(target.clone());
        members.sort();
        let leader = members[0].clone();
        if leader == target {
            continue;
        }
        let li = index[&leader];
        let mut data = entries[ti].clone();
        data.path = leader.clone();
        entries[li] = data;
        for m in members.iter().skip(1) {
            let i = index[m];
            let mut link = entries[ti].clone();
            link.path = m.clone();
            link.kind = Kind::Hardlink(leader.clone());
            entries[i] = link;
        }
    }
    Ok(())
}

/// The difference `upper − lower` as layer entries: what is new or changed in `upper`, with
/// parent directories, and a whiteout for what `upper` removed.
pub fn diff_trees(lower: &[Entry], upper: &[Entry]) -> Result<Vec<Entry>> {
    let lower_map: HashMap<&str, &Entry> = lower.iter().map(|e| (e.path.as_str(), e)).collect();
    let upper_paths: HashSet<&str> = upper.iter().map(|e| e.path.as_str()).collect();
    let mut out = Vec::new();
    let mut changed: HashSet<String> = HashSet::new();
    for e in upper {
        let same = match lower_map.get(e.path.as_str()) {
            None => false,
            Some(l) => {
                l.meta_key() == e.meta_key()
                    && match (&l.kind, &e.kind) {
                        (Kind::File(a), Kind::File(b)) => a.sha256()? == b.sha256()?,
                        _ => true,
                    }
            }
        };
        if !same {
            changed.insert(e.path.clone());
            out.push(e.clone());
        }
    }
    // Hard links whose group gained a member must carry the data too: keep the whole group.
    let mut extra = Vec::new();
    for e in upper {
        if let Kind::Hardlink(t) = &e.kind
            && changed.contains(&e.path)
            && !changed.contains(t)
            && let Some(target) = upper.iter().find(|x| &x.path == t)
        {
            extra.push(target.clone());
            changed.insert(t.clone());
        }
    }
    out.extend(extra);
    // Parents of changed entries, with their metadata from `upper`.
    let upper_map: HashMap<&str, &Entry> = upper.iter().map(|e| (e.path.as_str(), e)).collect();
    let mut parents = BTreeMap::new();
    for p in &changed {
        let mut cur = p.as_str();
        while let Some((parent, _)) = cur.rsplit_once('/') {
            if changed.contains(parent) || parents.contains_key(parent) {
                break;
            }
            if let Some(e) = upper_map.get(parent) {
                parents.insert(parent.to_string(), (*e).clone());
            }
            cur = parent;
        }
    }
    out.extend(parents.into_values());
    // Whiteouts for removed paths (only the topmost removed path of a removed subtree).
    for l in lower {
        if upper_paths.contains(l.path.as_str()) {
            continue;
        }
        let parent_gone = l
            .path
            .rsplit_once('/')
            .is_some_and(|(parent, _)| !upper_paths.contains(parent));
        if !parent_gone {
            out.push(Entry::whiteout(&l.path));
        }
    }
    normalize(out)
}

/// Streams the entries of an (uncompressed) layer tar, calling `f` for each with its content.
/// Used to compare, flatten and inspect stored layers.
pub fn for_each_in_tar(
    reader: impl Read,
    mut f: impl FnMut(&str, &tar::Header, &mut dyn Read) -> Result<()>,
) -> Result<()> {
    let mut ar = tar::Archive::new(reader);
    for item in ar.entries()? {
        let mut ent = item?;
        let p = String::from_utf8_lossy(&ent.path_bytes()).into_owned();
        let p = p.trim_end_matches('/').trim_start_matches("./").to_string();
        let hdr = ent.header().clone();
        f(&p, &hdr, &mut ent)?;
    }
    Ok(())
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
