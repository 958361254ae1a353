//! # The build cache
//!
//! ```text
//! $STRATA_CACHE/                  default: $XDG_CACHE_HOME/strata, ~/.cache/strata
//! ├── base/<key>/rootfs.tar       a base root filesystem, keyed by its inputs (mmdebstrap args…,
//! │                               a tarball's SHA-256); an uncompressed tarball base is not
//! │                               copied here but read in place, its key checked by `filehash`
//! ├── base/<key>/info.json        its package list and account files
//! ├── base/<key>/known.json       a base's facts learnt from a remote cache (its rootfs identity,
//! │                               packages, accounts), for planning without its rootfs
//! ├── layers/<key>.json           a built layer: digest, diff_id, sizes (key = hash of inputs)
//! ├── blobs/sha256/<hex>          the compressed layer blobs, copied (never linked) into stores
//! ├── filehash/<stamp>            memo: the SHA-256 of a file with this (path, device, inode,
//! │                               size, mtime, ctime); a changed file has another stamp
//! ├── debs/<pkg>.deb(.sha256)     Debian packages every mmdebstrap run shares, with the SHA-256
//! │                               each had when apt downloaded it (source/debs.rs)
//! ├── downloads/sha512/<hex>      downloads (release and JDK tarballs), verified
//! └── tars/<sha512>.tar           the same, decompressed, read in place (never extracted)
//! ```
//! Deleting the cache costs time, never correctness: every entry is re-derived from its inputs.
//!
//! The cache and a store share no file: a layer blob is copied into a store (hashed as it is
//! copied), so a byte flipped in a store never reaches the cache, nor through it another store.
//! A cached blob is checked against its digest each time it is reused ([`Cache::blob_is`]); the
//! `filehash` memo makes that check a `stat` for a file not touched since it was last hashed
//! (an in-place edit changes its ctime, which no user can set back), so a no-op rebuild stays
//! fast. A cached blob that fails the check is removed and the layer rebuilt.
//! `--no-cache` builds into a fresh temporary cache. `strata plan` reads the cache through
//! [`Cache::read_only`] (or [`Cache::nothing`] with `--no-cache`) and never writes to it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Serialize, de::DeserializeOwned};

use crate::support::fsx::atomic_write;
use crate::support::hash::{hash_reader, key_of};

pub const CACHE_ENV: &str = "STRATA_CACHE";

#[derive(Debug)]
pub struct Cache {
    pub root: PathBuf,
    access: Access,
    /// Holds a `--no-cache` temporary cache alive.
    _temp: Option<tempfile::TempDir>,
    /// This process's hashes by memo stamp: a file hashed once is not hashed again, even by a
    /// read-only cache (`plan`), which writes no memo.
    hashed: std::sync::Mutex<std::collections::HashMap<PathBuf, String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    ReadWrite,
    /// `strata plan`: reads what is there, writes nothing, creates nothing.
    ReadOnly,
    /// `strata plan --no-cache`: as if the cache were empty.
    Nothing,
}

impl Cache {
    pub fn default_dir() -> PathBuf {
        if let Some(d) = std::env::var_os(CACHE_ENV) {
            return PathBuf::from(d);
        }
        std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(|| PathBuf::from("/var/cache"))
            .join("strata")
    }

    pub fn open(dir: &Path) -> Result<Cache> {
        for sub in ["base", "layers", "blobs/sha256", "downloads/sha512", "tars"] {
            std::fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating cache directory {}", dir.join(sub).display()))?;
        }
        Ok(Cache {
            root: dir.to_path_buf(),
            access: Access::ReadWrite,
            _temp: None,
            hashed: Default::default(),
        })
    }

    /// The cache at `dir` for reading only (it may not exist): nothing is created or written.
    pub fn read_only(dir: &Path) -> Cache {
        Cache {
            root: dir.to_path_buf(),
            access: Access::ReadOnly,
            _temp: None,
            hashed: Default::default(),
        }
    }

    /// A cache that holds nothing and takes nothing (`plan --no-cache`).
    pub fn nothing() -> Cache {
        Cache {
            root: PathBuf::from("/nonexistent/strata-no-cache"),
            access: Access::Nothing,
            _temp: None,
            hashed: Default::default(),
        }
    }

    /// False for [`Cache::read_only`] and [`Cache::nothing`].
    pub fn writable(&self) -> bool {
        self.access == Access::ReadWrite
    }

    /// A throw-away cache (for `--no-cache`), next to `near` (the same file system as the store).
    pub fn temporary(near: &Path) -> Result<Cache> {
        crate::support::fsx::create_dir_all(near)?;
        let t = tempfile::Builder::new()
            .prefix(".strata-nocache-")
            .tempdir_in(near)?;
        let mut c = Cache::open(t.path())?;
        c._temp = Some(t);
        Ok(c)
    }

    pub fn blob_dir(&self) -> PathBuf {
        self.root.join("blobs/sha256")
    }

    pub fn base_dir(&self, key: &str) -> PathBuf {
        self.root.join("base").join(key)
    }

    pub fn layer_record_path(&self, key: &str) -> PathBuf {
        self.root.join("layers").join(format!("{key}.json"))
    }

    pub fn read_json<T: DeserializeOwned>(&self, path: &Path) -> Option<T> {
        if self.access == Access::Nothing {
            return None;
        }
        let data = crate::support::fsx::read(path).ok()?;
        serde_json::from_slice(&data).ok()
    }

    pub fn write_json<T: Serialize>(&self, path: &Path, v: &T) -> Result<()> {
        anyhow::ensure!(
            self.writable(),
            "internal: writing {path:?} into a read-only cache"
        );
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p).with_context(|| format!("creating {p:?}"))?;
        }
        atomic_write(path, &serde_json::to_vec_pretty(v)?)
    }
}

impl Cache {
    /// SHA-256 of a (large) file, remembered by its path, size, mtime, ctime, inode and device so
    /// an unchanged file is hashed once (like git's index; ctime catches an edit whose mtime was
    /// set back). A read-only cache uses the memo but does not write one.
    pub fn file_sha256(&self, path: &Path) -> Result<String> {
        let memo = self.memo_path(path)?;
        if let Some(s) = self.hashed.lock().expect("no hasher panicked").get(&memo) {
            return Ok(s.clone());
        }
        if self.access != Access::Nothing
            && let Ok(s) = std::fs::read_to_string(&memo)
            && s.len() == 64
            && s.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Ok(s);
        }
        let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let (d, _) = hash_reader(std::io::BufReader::with_capacity(1 << 20, f))?;
        self.write_memo(&memo, d.digest())?;
        let hex = d.digest().to_string();
        let mut hashed = self.hashed.lock().expect("no hasher panicked");
        hashed.insert(memo, hex.clone());
        Ok(hex)
    }

    /// True if the memo knows the SHA-256 of the file at `path` as it is now (then
    /// [`Cache::file_sha256`] is a `stat`).
    pub fn knows(&self, path: &Path) -> bool {
        self.access != Access::Nothing && self.memo_path(path).is_ok_and(|m| m.is_file())
    }

    /// Notes that the file at `path` (just written and hashed as it was written) has the SHA-256
    /// `hex`, so its next check is a `stat`.
    pub fn remember(&self, path: &Path, hex: &str) -> Result<()> {
        let memo = self.memo_path(path)?;
        self.write_memo(&memo, hex)
    }

    /// The memo file of `path` as it is now (its stamp).
    fn memo_path(&self, path: &Path) -> Result<PathBuf> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
        let stamp = key_of(&serde_json::json!([
            path.canonicalize().unwrap_or_else(|_| path.to_path_buf()),
            m.len(),
            m.mtime(),
            m.mtime_nsec(),
            m.ino(),
            m.dev(),
            m.ctime(),
            m.ctime_nsec()
        ]));
        Ok(self.root.join("filehash").join(stamp))
    }

    fn write_memo(&self, memo: &Path, hex: &str) -> Result<()> {
        if self.writable() {
            let dir = memo.parent().expect("filehash dir");
            std::fs::create_dir_all(dir).with_context(|| format!("creating {dir:?}"))?;
            write_unsynced(memo, hex.as_bytes())?;
        }
        Ok(())
    }

    /// Keeps a copy of a small store blob (config, manifest, record) in the cache's blob
    /// directory, unless there, so `strata verify --repair` can restore it; `src` must hold
    /// `digest`'s bytes (checked).
    pub fn keep_copy(&self, src: &Path, digest: &oci_spec::image::Digest) -> Result<()> {
        let dest = self.blob_dir().join(digest.digest());
        if !self.writable() || dest.exists() {
            return Ok(());
        }
        let data = crate::support::fsx::read(src)?;
        if crate::support::hash::sha256_of(&data) == *digest {
            write_unsynced(&dest, &data)?;
        }
        Ok(())
    }

    /// True if the regular file at `path` holds the blob `digest` (hashed unless the memo knows
    /// the file unchanged since it was last hashed). False for a missing file, a directory, or
    /// other bytes.
    pub fn blob_is(&self, path: &Path, digest: &oci_spec::image::Digest) -> Result<bool> {
        if !std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file()) {
            return Ok(false);
        }
        Ok(self.file_sha256(path)? == digest.digest())
    }
}

/// Whole or not at all (temp file, rename) but not fsynced: for the memo and the kept copies,
/// which are checked before use (a memo must be 64 hex digits and is compared with a digest; a
/// kept copy is hashed before it repairs anything), so a crash costs a re-hash, never a wrong
/// answer. Saves two fsyncs per file on every build that writes them.
fn write_unsynced(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().context("path without a parent")?;
    let mut tmp = tempfile::Builder::new()
        .prefix(crate::support::fsx::TMP_PREFIX)
        .tempfile_in(dir)
        .with_context(|| format!("creating a temp file in {dir:?}"))?;
    tmp.write_all(data)
        .with_context(|| format!("writing {:?}", tmp.path()))?;
    tmp.persist(path)
        .with_context(|| format!("renaming into {path:?}"))?;
    Ok(())
}
