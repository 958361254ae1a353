//! # Downloads into the content-addressed cache
//!
//! Release and JDK tarballs come over HTTP(S) or from a local path, land in
//! `cache/downloads/sha512/<hex>` only once their SHA-512 equals the pinned one, and are
//! decompressed once into `cache/tars/` so layers can reference their members by offset. A
//! wrong checksum, a truncated download or something that is not a (compressed) tar is refused
//! with the URL, the expected and the found values; nothing half-written is left behind.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha512};

use crate::support::error::ChecksumMismatch;

use crate::cache::Cache;
use crate::recipe::Origin;
use crate::support::fsx::TMP_PREFIX;
use crate::support::progress::Progress;

/// Returns the verified download of `origin` from the cache, fetching it if needed.
pub fn fetch(cache: &Cache, origin: &Origin, sha512: &str, progress: &Progress) -> Result<PathBuf> {
    let dir = cache.root.join("downloads/sha512");
    let dest = dir.join(sha512);
    if dest.is_file() {
        return Ok(dest);
    }
    let mut tmp = tempfile::Builder::new()
        .prefix(TMP_PREFIX)
        .tempfile_in(&dir)?;
    let task = progress.task(format!("fetching {origin}"), None);
    let mut hasher = Sha512::new();
    {
        let mut reader: Box<dyn Read> = match origin {
            Origin::Path(p) => {
                Box::new(File::open(p).with_context(|| format!("opening {}", p.display()))?)
            }
            Origin::Url(u) if u.starts_with("file://") => {
                let p = &u["file://".len()..];
                Box::new(File::open(p).with_context(|| format!("opening {p}"))?)
            }
            Origin::Url(u) => {
                let resp = ureq::get(u)
                    .call()
                    .with_context(|| format!("downloading {u}"))?;
                Box::new(resp.into_body().into_reader())
            }
        };
        let mut buf = vec![0u8; 1 << 20];
        let out = tmp.as_file_mut();
        loop {
            let n = reader
                .read(&mut buf)
                .with_context(|| format!("reading {origin}"))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])?;
            task.inc(n as u64);
        }
        out.sync_all()?;
    }
    let found = hex::encode(hasher.finalize());
    if found != sha512 {
        task.finish("checksum mismatch");
        return Err(ChecksumMismatch {
            what: origin.to_string(),
            algorithm: "sha512",
            expected: sha512.into(),
            found,
        }
        .into());
    }
    tmp.persist(&dest)?;
    task.finish("verified");
    Ok(dest)
}

/// The uncompressed tar of a verified download (gzip, zstd or plain), made once.
pub fn unpacked_tar(cache: &Cache, download: &Path, sha512: &str) -> Result<PathBuf> {
    let dest = cache.root.join("tars").join(format!("{sha512}.tar"));
    if dest.is_file() {
        return Ok(dest);
    }
    let mut f = crate::support::fsx::open(download)?;
    let mut magic = [0u8; 4];
    let n = f.read(&mut magic)?;
    drop(f);
    let f = crate::support::fsx::open(download)?;
    let mut reader: Box<dyn Read> = match &magic[..n] {
        [0x1f, 0x8b, ..] => Box::new(flate2::read::MultiGzDecoder::new(io::BufReader::new(f))),
        [0x28, 0xb5, 0x2f, 0xfd] => Box::new(zstd::Decoder::new(f)?),
        [0xfd, b'7', b'z', b'X'] => bail!(
            "{}: xz tarballs are not supported; use .tar.gz or .tar.zst",
            download.display()
        ),
        _ => Box::new(f),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(TMP_PREFIX)
        .tempfile_in(dest.parent().expect("tars dir"))?;
    if let Err(e) = io::copy(&mut reader, tmp.as_file_mut()) {
        crate::bad!(
            "{}: cannot decompress it ({e}): the download is truncated or corrupt",
            download.display()
        );
    }
    tmp.persist(&dest)?;
    Ok(dest)
}

/// The entries of a pinned release or JDK tarball: fetched (or found) in the cache, checked,
/// decompressed once, read in place under the rules for foreign tarballs (no device nodes).
pub fn tarball_entries(
    cache: &Cache,
    origin: &Origin,
    sha512: &str,
    progress: &Progress,
    what: &str,
) -> Result<Vec<crate::layer::Entry>> {
    let dl = fetch(cache, origin, sha512, progress)?;
    let tar = unpacked_tar(cache, &dl, sha512)?;
    crate::layer::read_tar_file(
        &tar,
        crate::layer::TarPolicy {
            allow_devices: false,
        },
    )
    .with_context(|| format!("{what} {origin}"))
}
