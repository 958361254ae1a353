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
use std::time::Duration;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha512};

use crate::support::error::ChecksumMismatch;

use crate::cache::Cache;
use crate::recipe::Origin;
use crate::support::fsx::TMP_PREFIX;
use crate::support::progress::Progress;

/// Seconds to wait for a connection to a download server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Seconds a download may go without a byte (before the answer's headers, or between reads of its
/// body) before the try is abandoned. `STRATA_READ_TIMEOUT` overrides it (the tests use 1-2 s).
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Tries per download: a silent or stalled server fails the build within about two minutes
/// (3 × 30 s plus the pauses between tries).
const TRIES: u32 = 3;

fn read_timeout() -> Duration {
    std::env::var("STRATA_READ_TIMEOUT")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&s| s > 0)
        .map_or(READ_TIMEOUT, Duration::from_secs)
}

/// Returns the verified download of `origin` from the cache, fetching it if needed.
pub fn fetch(cache: &Cache, origin: &Origin, sha512: &str, progress: &Progress) -> Result<PathBuf> {
    let dir = cache.root.join("downloads/sha512");
    let dest = dir.join(sha512);
    if dest.is_file() {
        return Ok(dest);
    }
    let task = progress.task(format!("fetching {origin}"), None);
    let (tmp, found) = match origin {
        Origin::Path(p) => copy_hashed(&dir, &crate::support::fsx::open_input(p)?, origin, &task)?,
        Origin::Url(u) if u.starts_with("file://") => {
            let p = Path::new(&u["file://".len()..]);
            copy_hashed(&dir, &crate::support::fsx::open_input(p)?, origin, &task)?
        }
        Origin::Url(u) => download(&dir, u, &task)?,
    };
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

/// Copies a local file into a temp file in `dir`, hashing it.
fn copy_hashed(
    dir: &Path,
    file: &File,
    origin: &Origin,
    task: &crate::support::progress::Task,
) -> Result<(tempfile::NamedTempFile, String)> {
    let mut tmp = temp_in(dir)?;
    let hex = stream(&mut &*file, tmp.as_file_mut(), task)
        .with_context(|| format!("reading {origin}"))?;
    Ok((tmp, hex))
}

/// Downloads `url` into a temp file in `dir` with bounded waits: [`TRIES`] tries, each with a
/// connect timeout and a read timeout that fires when the server goes quiet, whether before its
/// answer or in the middle of the body. A 4xx answer is not retried. (reqwest's blocking client
/// has no idle timeout, only a whole-request one, which a large release would outlast: the async
/// client on a one-thread runtime does.)
fn download(
    dir: &Path,
    url: &str,
    task: &crate::support::progress::Task,
) -> Result<(tempfile::NamedTempFile, String)> {
    let read = read_timeout();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the download runtime")?;
    crate::support::tls::init();
    let client = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(read)
        .build()
        .context("making the HTTP client")?;
    let mut last = None;
    for attempt in 1..=TRIES {
        if attempt > 1 {
            std::thread::sleep(Duration::from_secs(1 << (attempt - 2)));
        }
        let mut tmp = temp_in(dir)?;
        match rt.block_on(download_once(&client, url, tmp.as_file_mut(), task)) {
            Ok(hex) => return Ok((tmp, hex)),
            Err(e) => {
                let status = e.downcast_ref::<reqwest::Error>().and_then(|e| e.status());
                if status.is_some_and(|s| s.is_client_error()) {
                    return Err(e).with_context(|| format!("downloading {url}"));
                }
                last = Some(e);
            }
        }
    }
    let e = last.expect("at least one try");
    Err(e).with_context(|| {
        format!(
            "downloading {url}: gave up after {TRIES} tries (connect timeout {}s, {}s without a \
             byte); check that the server answers, or download the file and give its path",
            CONNECT_TIMEOUT.as_secs(),
            read.as_secs()
        )
    })
}

async fn download_once(
    client: &reqwest::Client,
    url: &str,
    out: &mut File,
    task: &crate::support::progress::Task,
) -> Result<String> {
    let mut resp = client.get(url).send().await?.error_for_status()?;
    let mut hasher = Sha512::new();
    while let Some(chunk) = resp.chunk().await? {
        hasher.update(&chunk);
        out.write_all(&chunk)?;
        task.inc(chunk.len() as u64);
    }
    out.sync_all()?;
    Ok(hex::encode(hasher.finalize()))
}

fn temp_in(dir: &Path) -> Result<tempfile::NamedTempFile> {
    crate::support::fsx::create_dir_all(dir)?;
    tempfile::Builder::new()
        .prefix(TMP_PREFIX)
        .tempfile_in(dir)
        .with_context(|| format!("creating a temp file in {}", dir.display()))
}

/// Copies `reader` to `out` (synced), returning the hex SHA-512 of what passed.
fn stream(
    reader: &mut dyn Read,
    out: &mut File,
    task: &crate::support::progress::Task,
) -> io::Result<String> {
    let mut hasher = Sha512::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])?;
        task.inc(n as u64);
    }
    out.sync_all()?;
    Ok(hex::encode(hasher.finalize()))
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
            allow_setid: false,
        },
    )
    .with_context(|| format!("{what} {origin}"))
}
