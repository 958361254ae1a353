//! # Blobs: HEAD, mount, upload, download
//!
//! [`Client::push_blob`] sends one blob the cheapest way the registry allows:
//! 1. `HEAD /v2/REPO/blobs/DIGEST`: there already (same size) → nothing sent.
//! 2. With a mount source: `POST …/blobs/uploads/?mount=DIGEST&from=SRC` (one token scoped
//!    `repository:SRC:pull` and `repository:REPO:pull,push`). **201** = mounted, nothing sent;
//!    **202** = the registry did not mount (the blob is not in SRC, or it does not mount) and
//!    opened an ordinary upload session instead, which is then used.
//! 3. Otherwise `POST …/blobs/uploads/` opens a session (202 + `Location`).
//! 4. The bytes: one `PUT LOCATION&digest=…` with the whole blob (monolithic), or with a chunk
//!    size, `PATCH`es of `Content-Range: START-END` no smaller than the registry's
//!    `OCI-Chunk-Min-Length`, each answering the next `Location`, then `PUT …&digest=`. A
//!    `PATCH` that failed is resumed from the offset the session reports (`GET LOCATION`,
//!    `Range: 0-N`).
//! 5. When the upload failed (a dropped connection, a 5xx, a timeout), the blob is HEADed
//!    before anything is sent again: the final PUT may have landed even though its answer was
//!    lost. Otherwise a new session starts, a bounded number of times.
//!
//! [`Client::fetch_blob`] streams a blob into a temp file of the target directory, hashing as
//! it goes, stops reading past the expected size, and renames it to its digest only when the
//! digest and size match; otherwise the temp file is removed and a [`ChecksumMismatch`]
//! (exit 3) says which blob. Nothing half-written is ever left under a blob's name.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use oci_spec::image::Digest;
use reqwest::blocking::Body;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use super::RegistryError;
use super::auth::scope;
use super::client::{Client, Retry};
use crate::support::error::ChecksumMismatch;
use crate::support::fsx::TMP_PREFIX;
use crate::support::hash::sha256_digest;

/// How a blob got into the repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BlobOutcome {
    /// It was there already.
    Present,
    /// Mounted from another repository of the registry.
    Mounted,
    /// Its bytes were sent.
    Uploaded,
}

/// A blob to push: where its bytes are, and what they must hash to.
#[derive(Debug, Clone)]
pub struct BlobSource<'a> {
    pub digest: &'a Digest,
    pub size: u64,
    pub path: &'a Path,
    /// A repository of the same registry to mount it from, when it may be there.
    pub mount_from: Option<&'a str>,
}

/// How to send bytes.
#[derive(Debug, Clone, Default)]
pub struct UploadOptions {
    /// Chunked upload with chunks of this size (raised to the registry's minimum); None:
    /// monolithic.
    pub chunk_size: Option<u64>,
    /// Bytes sent, counted as they go (progress).
    pub sent: Arc<AtomicU64>,
}

/// An opened upload session.
struct Session {
    location: String,
    min_chunk: u64,
}

enum Started {
    Mounted,
    Session(Session),
}

/// Reads from a file, counting what was read.
struct Counting {
    file: io::Take<File>,
    sent: Arc<AtomicU64>,
}

impl Read for Counting {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read(buf)?;
        self.sent.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Whether a failed upload is worth another try.
fn worth_retrying(e: &anyhow::Error) -> bool {
    e.chain().any(|c| match c.downcast_ref::<RegistryError>() {
        Some(RegistryError::Unreachable { .. }) => true,
        // A session the registry no longer knows: start a new one.
        Some(RegistryError::Status { status, code, .. }) => {
            *status >= 500 || (*status == 404 && code.starts_with("BLOB_UPLOAD"))
        }
        None => false,
    })
}

/// `URL` with `key=value` added to its query.
fn with_query(url: &str, key: &str, value: &str) -> Result<String> {
    let mut u = reqwest::Url::parse(url).with_context(|| format!("bad upload URL {url:?}"))?;
    u.query_pairs_mut().append_pair(key, value);
    Ok(u.to_string())
}

impl Client {
    /// The blob's size if the repository has it.
    pub fn head_blob(&self, repository: &str, digest: &Digest) -> Result<Option<u64>> {
        let url = self.url(repository, &format!("blobs/{digest}"));
        let scopes = [scope(repository, false)];
        let r = self.send("HEAD", &url, &scopes, Retry::Idempotent, &|h| {
            Ok(h.head(&url))
        })?;
        match r.status().as_u16() {
            200 => Ok(r
                .headers()
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())),
            404 => Ok(None),
            _ => Err(self.status_error("HEAD", &url, r)),
        }
    }

    /// Puts a blob into `repository` (see the module doc); says how it got there.
    pub fn push_blob(
        &self,
        repository: &str,
        blob: &BlobSource,
        up: &UploadOptions,
    ) -> Result<BlobOutcome> {
        if self.head_blob(repository, blob.digest)? == Some(blob.size) {
            return Ok(BlobOutcome::Present);
        }
        let tries: u64 = 3;
        let mut mount_from = blob.mount_from;
        for attempt in 1..=tries {
            let result = match self.start_upload(repository, blob.digest, mount_from)? {
                Started::Mounted => return Ok(BlobOutcome::Mounted),
                Started::Session(s) => self.upload(repository, blob, &s, up),
            };
            // One mount attempt is enough: the registry answered it already.
            mount_from = None;
            match result {
                Ok(()) => return Ok(BlobOutcome::Uploaded),
                Err(e) if attempt < tries && worth_retrying(&e) => {
                    let short = &blob.digest.digest()[..12];
                    if self.head_blob(repository, blob.digest)? == Some(blob.size) {
                        self.say(&format!(
                            "blob {short}: the upload failed ({e:#}) but the registry has it"
                        ));
                        return Ok(BlobOutcome::Uploaded);
                    }
                    self.say(&format!(
                        "blob {short}: the upload failed ({e:#}); sending it again ({attempt}/{})",
                        tries - 1
                    ));
                    std::thread::sleep(Duration::from_millis(500 * attempt));
                }
                Err(e) => {
                    return Err(e.context(format!(
                        "uploading blob {} ({} bytes) to {}/{repository}",
                        blob.digest, blob.size, self.host
                    )));
                }
            }
        }
        unreachable!("the last try returns")
    }

    /// Opens an upload session, or mounts.
    fn start_upload(
        &self,
        repository: &str,
        digest: &Digest,
        mount_from: Option<&str>,
    ) -> Result<Started> {
        let mut url = self.url(repository, "blobs/uploads/");
        let mut scopes = vec![scope(repository, true)];
        if let Some(from) = mount_from {
            url = with_query(&url, "mount", digest.as_ref())?;
            url = with_query(&url, "from", from)?;
            scopes.push(scope(from, false));
        }
        let r = self.send("POST", &url, &scopes, Retry::Idempotent, &|h| {
            Ok(h.post(&url).header(CONTENT_LENGTH, "0"))
        })?;
        match r.status().as_u16() {
            201 if mount_from.is_some() => Ok(Started::Mounted),
            202 => {
                let location = r
                    .headers()
                    .get(LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .context("the registry opened an upload without a Location")?;
                let min_chunk = r
                    .headers()
                    .get("OCI-Chunk-Min-Length")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                Ok(Started::Session(Session {
                    location: self.resolve(location)?,
                    min_chunk,
                }))
            }
            _ => Err(self.status_error("POST", &url, r)),
        }
    }

    /// Time allowed for sending `bytes`: the read timeout plus a second per MiB.
    fn upload_timeout(&self, bytes: u64) -> Duration {
        self.timeout() + Duration::from_secs(bytes >> 20)
    }

    fn body(&self, blob: &BlobSource, offset: u64, len: u64, up: &UploadOptions) -> Result<Body> {
        let mut f = File::open(blob.path).with_context(|| format!("opening {:?}", blob.path))?;
        f.seek(SeekFrom::Start(offset))?;
        Ok(Body::sized(
            Counting {
                file: f.take(len),
                sent: up.sent.clone(),
            },
            len,
        ))
    }

    fn upload(
        &self,
        repository: &str,
        blob: &BlobSource,
        s: &Session,
        up: &UploadOptions,
    ) -> Result<()> {
        let scopes = [scope(repository, true)];
        let digest = blob.digest.to_string();
        let (location, rest) = match up.chunk_size {
            None => (s.location.clone(), 0..blob.size),
            Some(c) => {
                let chunk = c.max(s.min_chunk).max(1);
                let loc = self.patch_chunks(repository, blob, s, chunk, up)?;
                (loc, blob.size..blob.size)
            }
        };
        let url = with_query(&location, "digest", &digest)?;
        let timeout = self.upload_timeout(rest.end - rest.start);
        let r = self.send("PUT", &url, &scopes, Retry::Never, &|h| {
            let body = self.body(blob, rest.start, rest.end - rest.start, up)?;
            Ok(h.put(&url)
                .timeout(timeout)
                .header(CONTENT_TYPE, "application/octet-stream")
                .body(body))
        })?;
        match r.status().as_u16() {
            201 | 204 => Ok(()),
            _ => Err(self.status_error("PUT", &url, r)),
        }
    }

    /// Sends the blob in PATCHes; returns the Location for the final PUT.
    fn patch_chunks(
        &self,
        repository: &str,
        blob: &BlobSource,
        s: &Session,
        chunk: u64,
        up: &UploadOptions,
    ) -> Result<String> {
        let scopes = [scope(repository, true)];
        let mut location = s.location.clone();
        let mut offset = 0;
        let mut resumes = 0;
        while offset < blob.size {
            let len = chunk.min(blob.size - offset);
            let url = location.clone();
            let end = offset + len - 1;
            let timeout = self.upload_timeout(len);
            let sent = self.send("PATCH", &url, &scopes, Retry::Never, &|h| {
                Ok(h.patch(&url)
                    .timeout(timeout)
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .header("Content-Range", format!("{offset}-{end}"))
                    .body(self.body(blob, offset, len, up)?))
            });
            let r = match sent {
                Ok(r) if r.status().as_u16() == 202 => r,
                Ok(r) => Err(self.status_error("PATCH", &url, r))?,
                Err(e) if resumes < 3 && worth_retrying(&e) => {
                    // Ask the session how much it holds, and go on from there.
                    resumes += 1;
                    match self.upload_offset(repository, &location)? {
                        Some((next, loc)) if next <= blob.size => {
                            offset = next;
                            location = loc;
                            continue;
                        }
                        _ => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            };
            if let Some(loc) = r.headers().get(LOCATION).and_then(|v| v.to_str().ok()) {
                location = self.resolve(loc)?;
            }
            offset += len;
        }
        Ok(location)
    }

    /// The next offset an upload session expects (`Range: 0-N` → N+1) and the Location to
    /// go on with (its state token names the offset), if the session still exists.
    fn upload_offset(&self, repository: &str, location: &str) -> Result<Option<(u64, String)>> {
        let scopes = [scope(repository, true)];
        let r = self.send("GET", location, &scopes, Retry::Idempotent, &|h| {
            Ok(h.get(location))
        })?;
        if r.status().as_u16() != 204 {
            return Ok(None);
        }
        let range = r
            .headers()
            .get("Range")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit_once('-'))
            .and_then(|(_, end)| end.parse::<u64>().ok());
        let next = match r.headers().get(LOCATION).and_then(|v| v.to_str().ok()) {
            Some(l) => self.resolve(l)?,
            None => location.to_string(),
        };
        Ok(Some((range.map_or(0, |end| end + 1), next)))
    }

    /// Downloads a blob into `dir/<hex>` (the layout of `blobs/sha256`), verified while
    /// streaming; returns its path. A blob already there with its size is kept.
    pub fn fetch_blob(
        &self,
        repository: &str,
        digest: &Digest,
        size: u64,
        dir: &Path,
        got: &AtomicU64,
    ) -> Result<PathBuf> {
        let dest = dir.join(digest.digest());
        if std::fs::metadata(&dest).is_ok_and(|m| m.len() == size) {
            return Ok(dest);
        }
        if digest.algorithm().as_ref() != "sha256" {
            return Err(crate::support::error::BadInput(format!(
                "blob {digest}: strata stores sha256 blobs only"
            ))
            .into());
        }
        let url = self.url(repository, &format!("blobs/{digest}"));
        let scopes = [scope(repository, false)];
        let mut tries = 0;
        loop {
            tries += 1;
            match self.fetch_once(&url, &scopes, digest, size, dir, got) {
                Ok(tmp) => {
                    tmp.persist(&dest)
                        .with_context(|| format!("renaming a blob into {dest:?}"))?;
                    return Ok(dest);
                }
                Err(e) if tries < 3 && worth_retrying(&e) => {
                    self.say(&format!(
                        "blob {}: the download failed ({e:#}); fetching it again ({tries}/2)",
                        &digest.digest()[..12]
                    ));
                    std::thread::sleep(Duration::from_millis(500 * tries));
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn fetch_once(
        &self,
        url: &str,
        scopes: &[String],
        digest: &Digest,
        size: u64,
        dir: &Path,
        got: &AtomicU64,
    ) -> Result<tempfile::NamedTempFile> {
        let mut r = self.send("GET", url, scopes, Retry::Idempotent, &|h| Ok(h.get(url)))?;
        match r.status().as_u16() {
            200 => {}
            404 => {
                return Err(crate::support::error::BadInput(format!(
                    "{url}: the registry does not have blob {digest} that the manifest names"
                ))
                .into());
            }
            _ => return Err(self.status_error("GET", url, r)),
        }
        let mut tmp = tempfile::Builder::new()
            .prefix(TMP_PREFIX)
            .tempfile_in(dir)
            .with_context(|| format!("creating a temp file in {dir:?}"))?;
        let mut hasher = Sha256::new();
        let mut n: u64 = 0;
        let mut buf = vec![0u8; 256 * 1024];
        {
            let mut out = io::BufWriter::with_capacity(1 << 20, tmp.as_file_mut());
            loop {
                let k = r.read(&mut buf).map_err(|e| RegistryError::Unreachable {
                    url: url.to_string(),
                    reason: format!("reading the blob after {n} bytes: {e}"),
                })?;
                if k == 0 {
                    break;
                }
                n += k as u64;
                if n > size {
                    break;
                }
                hasher.update(&buf[..k]);
                out.write_all(&buf[..k])
                    .with_context(|| format!("writing into {dir:?}"))?;
                got.fetch_add(k as u64, Ordering::Relaxed);
            }
            out.flush()?;
        }
        let found = sha256_digest(&hasher.finalize().into());
        if n != size || &found != digest {
            // The temp file is removed on drop: nothing stays.
            return Err(ChecksumMismatch {
                what: format!("blob pulled from {url}"),
                algorithm: "sha256",
                expected: format!("{digest} ({size} bytes)"),
                found: if n > size {
                    format!("more than {size} bytes")
                } else {
                    format!("{found} ({n} bytes)")
                },
            }
            .into());
        }
        tmp.as_file().sync_all()?;
        Ok(tmp)
    }
}
