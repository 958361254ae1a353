//! # The build cache
//!
//! ```text
//! $STRATA_CACHE/                  default: $XDG_CACHE_HOME/strata, ~/.cache/strata
//! ├── base/<key>/rootfs.tar       a base root filesystem, keyed by its inputs (mmdebstrap args…)
//! ├── base/<key>/info.json        its package list and account files
//! ├── layers/<key>.json           a built layer: digest, diff_id, sizes (key = hash of inputs)
//! ├── blobs/sha256/<hex>          the compressed layer blobs, hard-linked into stores
//! ├── downloads/sha512/<hex>      downloads (release and JDK tarballs), verified
//! └── tars/<sha512>.tar           the same, decompressed, read in place (never extracted)
//! ```
//! Deleting the cache costs time, never correctness: every entry is re-derived from its inputs.
//! `--no-cache` builds into a fresh temporary cache.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Serialize, de::DeserializeOwned};

use crate::store::atomic_write;

pub const CACHE_ENV: &str = "STRATA_CACHE";

#[derive(Debug)]
pub struct Cache {
    pub root: PathBuf,
    /// Holds a `--no-cache` temporary cache alive.
    _temp: Option<tempfile::TempDir>,
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
            _temp: None,
        })
    }

    /// A throw-away cache (for `--no-cache`), next to `near` so blobs can be hard-linked.
    pub fn temporary(near: &Path) -> Result<Cache> {
        std::fs::create_dir_all(near)?;
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
        let data = std::fs::read(path).ok()?;
        serde_json::from_slice(&data).ok()
    }

    pub fn write_json<T: Serialize>(&self, path: &Path, v: &T) -> Result<()> {
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p)?;
        }
        atomic_write(path, &serde_json::to_vec_pretty(v)?)
    }
}

impl Cache {
    /// SHA-256 of a (large) input file, remembered by its path, size, mtime, inode and device so
    /// an unchanged file is hashed once (like git's index).
    pub fn file_sha256(&self, path: &Path) -> Result<String> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
        let stamp = key_of(&serde_json::json!([
            path.canonicalize().unwrap_or_else(|_| path.to_path_buf()),
            m.len(),
            m.mtime(),
            m.mtime_nsec(),
            m.ino(),
            m.dev()
        ]));
        let memo = self.root.join("filehash").join(&stamp);
        if let Ok(s) = std::fs::read_to_string(&memo)
            && s.len() == 64
        {
            return Ok(s);
        }
        let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let (d, _) = crate::store::hash_reader(std::io::BufReader::with_capacity(1 << 20, f))?;
        std::fs::create_dir_all(memo.parent().expect("filehash dir"))?;
        atomic_write(&memo, d.digest().as_bytes())?;
        Ok(d.digest().to_string())
    }
}

/// A stable key from parts: SHA-256 over their canonical JSON.
pub fn key_of<T: Serialize>(parts: &T) -> String {
    let data = crate::store::canonical_json(parts).expect("keys are plain data");
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(&data))
}
