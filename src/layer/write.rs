//! # The deterministic tar writer (see the module doc of [`crate::layer`])

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use anyhow::{Context, Result};
use sha2::{Digest as _, Sha256};

use super::{Content, Entry, Kind, check_relative, looks_like_private_key};

/// Counts what a written tar holds.
#[derive(Debug, Default, Clone, Copy)]
pub struct TarStats {
    pub entries: u64,
    pub file_bytes: u64,
    /// A regular file looks like a private key ([`looks_like_private_key`]).
    pub private_key: bool,
}

/// Writes `entries` (already [`normalize`]d) as a deterministic tar stream.
pub fn write_tar(entries: &[Entry], epoch: u64, out: &mut dyn Write) -> Result<TarStats> {
    let mut stats = TarStats::default();
    let mut b = tar::Builder::new(out);
    let mut copier = Copier::default();
    for e in entries {
        stats.private_key |= append_entry(&mut b, e, epoch, &mut copier)
            .with_context(|| format!("writing {:?} to tar", e.path))?;
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
    let mut copier = Copier::default();
    for e in entries {
        append_entry(b, e, epoch, &mut copier)
            .with_context(|| format!("writing {:?} to tar", e.path))?;
    }
    Ok(())
}

const USTAR_ID_MAX: u32 = 0o7777777;
const USTAR_SIZE_MAX: u64 = 0o77777777777;

/// Appends one entry; returns whether it is a file that looks like a private key.
fn append_entry<W: Write>(
    b: &mut tar::Builder<W>,
    e: &Entry,
    epoch: u64,
    copier: &mut Copier,
) -> Result<bool> {
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
            // What `tar::Builder::append` writes (header, data, zeroes to a 512-byte block), with
            // the data read in large blocks.
            let out = b.get_mut();
            out.write_all(h.as_bytes())?;
            let key = copier.copy(c, out)?;
            let pad = (512 - c.len() % 512) % 512;
            out.write_all(&[0u8; 512][..pad as usize])?;
            Ok(key)
        }
        _ => {
            b.append(&h, io::empty())?;
            Ok(false)
        }
    }
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

/// Bytes read from a file at a time.
const READ_BLOCK: usize = 1 << 20;

/// Copies [`Content`]s into a tar stream in large reads, keeping the last file open (the
/// contents of an input tarball are read one after the other from the same file).
#[derive(Default)]
struct Copier {
    buf: Vec<u8>,
    open: Option<(Arc<std::path::PathBuf>, File)>,
}

impl Copier {
    /// Writes exactly `c.len()` bytes of `c` to `out`, or fails naming the source; returns
    /// whether they look like a private key. A file smaller than a read block is read whole
    /// before it is written (so that it is looked at in one piece).
    fn copy(&mut self, c: &Content, out: &mut dyn Write) -> Result<bool> {
        type ReadFn<'f> = Box<dyn FnMut(&mut [u8], u64) -> io::Result<usize> + 'f>;
        let Copier { buf, open } = self;
        let (what, mut read): (&dyn std::fmt::Debug, ReadFn) = match c {
            Content::Bytes(b) => {
                out.write_all(b)?;
                return Ok(looks_like_private_key(b));
            }
            Content::Range { file, offset, .. } => {
                if !open.as_ref().is_some_and(|(p, _)| Arc::ptr_eq(p, file)) {
                    let f =
                        File::open(file.as_path()).with_context(|| format!("opening {file:?}"))?;
                    *open = Some((Arc::clone(file), f));
                }
                let f = &open.as_ref().expect("opened above").1;
                (file, Box::new(move |b, done| f.read_at(b, offset + done)))
            }
            Content::Path { path, .. } => {
                let mut f = File::open(path).with_context(|| format!("opening {path:?}"))?;
                (path, Box::new(move |b, _| f.read(b)))
            }
        };
        let len = c.len();
        let buf = block(buf, len);
        let (mut done, mut key) = (0u64, false);
        while done < len {
            let want = (len - done).min(buf.len() as u64) as usize;
            let mut got = 0;
            while got < want {
                let n = read(&mut buf[got..want], done + got as u64)
                    .with_context(|| format!("reading {what:?}"))?;
                if n == 0 {
                    crate::bad!("{what:?} gave {} bytes, expected {len}", done + got as u64);
                }
                got += n;
            }
            key |= looks_like_private_key(&buf[..got]) && got as u64 == len;
            out.write_all(&buf[..got])?;
            done += got as u64;
        }
        Ok(key)
    }
}

/// The read buffer, at least 64 KiB and at most [`READ_BLOCK`] (`want` when smaller).
fn block(buf: &mut Vec<u8>, want: u64) -> &mut [u8] {
    let size = want.clamp(64 << 10, READ_BLOCK as u64) as usize;
    if buf.len() < size {
        buf.resize(size, 0);
    }
    &mut buf[..size]
}
