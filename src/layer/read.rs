//! # Reading tarballs without extracting them, under a policy

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use oci_spec::image::MediaType;
use sha2::{Digest as _, Sha256};

use super::compress::Compression;
use super::{Content, Entry, Kind, normalize};

/// What an input tarball may contain.
#[derive(Debug, Clone, Copy)]
pub struct TarPolicy {
    /// Device nodes and FIFOs are allowed (a root filesystem has them; a release tarball must not).
    pub allow_devices: bool,
    /// setuid/setgid files are allowed (a root filesystem has `su` and `passwd`; a release or
    /// JDK tarball has no business granting root to whoever runs a file).
    pub allow_setid: bool,
}

/// Reads the entries of an uncompressed tar FILE without extracting it: contents stay in the
/// file and are referenced by offset. Enforces `policy` and the path rules of the module docs.
/// Refusals name the entry, not the file: the caller names the input as the user knows it (the
/// recipe's path or URL, not a copy in the cache).
pub fn read_tar_file(path: &Path, policy: TarPolicy) -> Result<Vec<Entry>> {
    let file = Arc::new(path.to_path_buf());
    let f = File::open(path).with_context(|| format!("opening {path:?}"))?;
    let mut ar = tar::Archive::new(Skipping(io::BufReader::with_capacity(1 << 20, f)));
    let mut out = Vec::new();
    let mut symlinks: HashSet<String> = HashSet::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for item in ar
        .entries_with_seek()
        .with_context(|| format!("reading tar {path:?}"))?
    {
        let mut ent = match item {
            Ok(e) => e,
            Err(e) => crate::bad!("{e}: not a tar archive, or a truncated one"),
        };
        let raw_path = String::from_utf8(ent.path_bytes().into_owned())
            .map_err(|_| anyhow::anyhow!("an entry name is not UTF-8"))?;
        let Some(rel) = clean_tar_path(&raw_path).with_context(|| format!("entry {raw_path:?}"))?
        else {
            continue; // the root directory itself
        };
        // A path that passes through a symlink of the archive would write outside the tree
        // when unpacked.
        let mut prefix = rel.as_str();
        while let Some((parent, _)) = prefix.rsplit_once('/') {
            if symlinks.contains(parent) {
                crate::bad!("entry {raw_path:?} passes through the symlink {parent:?}; refused");
            }
            prefix = parent;
        }
        let hdr = ent.header();
        let mode = hdr.mode().unwrap_or(0o644) & 0o7777;
        if !policy.allow_setid && mode & 0o6000 != 0 && hdr.entry_type().is_file() {
            crate::bad!(
                "entry {raw_path:?} is set{}id (mode {mode:04o}); refused in this \
                 tarball: a release or JDK has no setuid files (set the bit at boot if a daemon \
                 really needs it)",
                if mode & 0o4000 != 0 { "u" } else { "g" }
            );
        }
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
                    .with_context(|| format!("symlink {raw_path:?} has no target"))?;
                symlinks.insert(rel.clone());
                Kind::Symlink(t)
            }
            tar::EntryType::Link => {
                let t = link.unwrap_or_default();
                let Some(target) = clean_tar_path(&t).ok().flatten() else {
                    crate::bad!("hard link {raw_path:?} points outside the tree ({t:?}); refused");
                };
                if !seen.contains_key(&target) {
                    crate::bad!(
                        "hard link {raw_path:?} points at {t:?}, which is not an earlier entry of the archive; refused"
                    );
                }
                Kind::Hardlink(target)
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                if !policy.allow_devices {
                    crate::bad!(
                        "entry {raw_path:?} is a device node or FIFO; refused in this tarball"
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
            other => crate::bad!("entry {raw_path:?} has unsupported type {other:?}"),
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

/// A buffered reader whose forward seeks stay inside its buffer when they can: the tar reader
/// skips each member's data by seeking, which reads nothing for a big member and does not throw
/// the buffer away for a small one.
struct Skipping<R>(io::BufReader<R>);

impl<R: Read> Read for Skipping<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl<R: Read + Seek> Seek for Skipping<R> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        match pos {
            SeekFrom::Current(n) => {
                self.0.seek_relative(n)?;
                self.0.stream_position()
            }
            _ => self.0.seek(pos),
        }
    }
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

/// A file of a layer, for advice.
#[derive(Debug, Clone)]
pub struct FileInfo {
    pub path: String,
    pub size: u64,
    pub sha256: Option<[u8; 32]>,
}

/// The regular files of a layer blob with their sizes (and content hashes when asked), for advice.
pub fn blob_files(blob: &Path, media_type: &MediaType, hash: bool) -> Result<Vec<FileInfo>> {
    let f = std::io::BufReader::new(
        std::fs::File::open(blob).with_context(|| format!("opening {}", blob.display()))?,
    );
    let r = Compression::reader_for(media_type, f)?;
    let mut out = Vec::new();
    for_each_in_tar(r, |p, h, data| {
        if h.entry_type().is_file() {
            let sha256 = if hash {
                let mut hs = Sha256::new();
                std::io::copy(data, &mut hs)?;
                Some(hs.finalize().into())
            } else {
                None
            };
            out.push(FileInfo {
                path: p.to_string(),
                size: h.size()?,
                sha256,
            });
        }
        Ok(())
    })?;
    Ok(out)
}
