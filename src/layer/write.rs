//! # The deterministic tar writer (see the module doc of [`crate::layer`])

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::sync::Arc;

use anyhow::{Context, Result};
use sha2::{Digest as _, Sha256};

use super::{Content, Entry, Kind, check_relative};

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
