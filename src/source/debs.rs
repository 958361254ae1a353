//! # The Debian package cache: every `.deb` downloaded once
//!
//! Each mmdebstrap run (the base, the base + a JDK, + the disk packages) starts with the packages
//! the cache already holds in its `/var/cache/apt/archives` (mmdebstrap's `sync-in` hook) and
//! gives back what it downloaded (`sync-out`), so the three root filesystems share one download
//! of every package, and a second cache-cold build on the same cache downloads nothing.
//!
//! apt does **not** check the hash of a `.deb` it finds in its archive directory (only its size:
//! a same-size damaged file is unpacked and fails in dpkg, or worse, is installed). So the cache
//! checks them itself: a `.deb` enters the cache only as mmdebstrap gives it back (apt verified it
//! against the signed index when it downloaded it), with its SHA-256 beside it
//! (`<file>.deb.sha256`); before each run, every cached `.deb` is checked against that hash (a
//! `stat` when the [`Cache::file_sha256`] memo knows the file unchanged) and one that fails, or
//! has no hash, is removed, never offered to apt. Only verified files are linked into the
//! directory mmdebstrap syncs in.
//!
//! ```text
//! cache/debs/<name>_<version>_<arch>.deb          a package as apt downloaded it
//! cache/debs/<name>_<version>_<arch>.deb.sha256   its SHA-256 (hex) when it entered the cache
//! cache/debs/.tmp-in-<pid>-<n>/                   one run's verified links (removed after it)
//! cache/debs/.tmp-out-<pid>-<n>/                  what one run gives back (moved in, removed)
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::cache::Cache;
use crate::support::fsx;
use crate::support::progress::Progress;

/// The package cache's directory.
pub fn dir(cache: &Cache) -> PathBuf {
    cache.root.join("debs")
}

/// The two directories of one mmdebstrap run: verified packages in, downloaded packages out.
/// Both are removed when it is dropped.
pub struct Exchange {
    pub inbox: PathBuf,
    pub outbox: PathBuf,
}

impl Drop for Exchange {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.inbox);
        let _ = std::fs::remove_dir_all(&self.outbox);
    }
}

/// Prepares a run's exchange: every cached package that still has its recorded hash, linked
/// into a fresh directory (damaged or unrecorded ones are removed, with a warning). None when the
/// cache is not writable or its path cannot go into an mmdebstrap hook (whitespace): the run
/// then downloads everything itself.
pub fn exchange(cache: &Cache, progress: &Progress) -> Result<Option<Exchange>> {
    let dir = dir(cache);
    if !cache.writable() || dir.to_string_lossy().contains(char::is_whitespace) {
        return Ok(None);
    }
    fsx::create_dir_all(&dir)?;
    static RUN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tag = format!("{}-{n}", std::process::id());
    let ex = Exchange {
        inbox: dir.join(format!(".tmp-in-{tag}")),
        outbox: dir.join(format!(".tmp-out-{tag}")),
    };
    let _ = std::fs::remove_dir_all(&ex.inbox);
    let _ = std::fs::remove_dir_all(&ex.outbox);
    fsx::create_dir_all(&ex.inbox)?;
    fsx::create_dir_all(&ex.outbox)?;
    for deb in cached(&dir)? {
        let name = deb.file_name().expect("a file name");
        if verified(cache, &deb, progress)? {
            std::fs::hard_link(&deb, ex.inbox.join(name))
                .or_else(|_| std::fs::copy(&deb, ex.inbox.join(name)).map(|_| ()))
                .with_context(|| {
                    format!("linking {} into {}", deb.display(), ex.inbox.display())
                })?;
        }
    }
    Ok(Some(ex))
}

/// Moves what a successful run downloaded into the cache, each with its SHA-256; returns how
/// many packages were added.
pub fn take_back(cache: &Cache, ex: &Exchange) -> Result<usize> {
    let dir = dir(cache);
    let mut added = 0;
    for deb in cached(&ex.outbox)? {
        let name = deb.file_name().expect("a file name");
        let dest = dir.join(name);
        if dest.exists() {
            continue;
        }
        let hex = cache.file_sha256(&deb)?;
        fsx::atomic_write(&sidecar(&dest), hex.as_bytes())?;
        fsx::rename(&deb, &dest)?;
        cache.remember(&dest, &hex)?;
        added += 1;
    }
    Ok(added)
}

/// The `.deb` files of a directory (regular files only), sorted.
fn cached(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    for e in rd {
        let e = e.with_context(|| format!("reading {}", dir.display()))?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        let is_deb = name.ends_with(".deb") && !name.starts_with('.');
        if is_deb && e.file_type().is_ok_and(|t| t.is_file()) {
            out.push(e.path());
        }
    }
    out.sort();
    Ok(out)
}

fn sidecar(deb: &Path) -> PathBuf {
    let mut s = deb.as_os_str().to_owned();
    s.push(".sha256");
    PathBuf::from(s)
}

/// Whether a cached package still has the hash it entered the cache with; removes it (and its
/// hash) when not.
fn verified(cache: &Cache, deb: &Path, progress: &Progress) -> Result<bool> {
    let want = std::fs::read_to_string(sidecar(deb)).unwrap_or_default();
    let want = want.trim();
    let ok = want.len() == 64 && cache.file_sha256(deb)? == want;
    if !ok {
        progress.say(format!(
            "warning: {} is not the package the cache downloaded (damaged or unrecorded): removed, it will be downloaded again",
            deb.display()
        ));
        let _ = std::fs::remove_file(deb);
        let _ = std::fs::remove_file(sidecar(deb));
    }
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A package as mmdebstrap's sync-out hands it back.
    fn put(ex: &Exchange, name: &str, data: &[u8]) {
        std::fs::write(ex.outbox.join(name), data).unwrap();
    }

    #[test]
    fn packages_come_back_verified_and_damaged_ones_are_dropped() {
        let t = tempfile::tempdir().unwrap();
        let cache = Cache::open(t.path()).unwrap();
        let progress = Progress::new(true);
        let ex = exchange(&cache, &progress).unwrap().unwrap();
        put(&ex, "a_1_all.deb", b"package a");
        put(&ex, "b_1_all.deb", b"package b");
        assert_eq!(take_back(&cache, &ex).unwrap(), 2);
        drop(ex);
        // Same-size damage to one (apt would not notice it), and a file with no recorded hash.
        std::fs::write(dir(&cache).join("b_1_all.deb"), b"package c").unwrap();
        std::fs::write(dir(&cache).join("c_1_all.deb"), b"unrecorded").unwrap();
        let ex = exchange(&cache, &progress).unwrap().unwrap();
        let offered: Vec<_> = std::fs::read_dir(&ex.inbox)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(offered, ["a_1_all.deb"]);
        assert_eq!(
            std::fs::read(ex.inbox.join("a_1_all.deb")).unwrap(),
            b"package a"
        );
        assert!(!dir(&cache).join("b_1_all.deb").exists());
        assert!(!dir(&cache).join("c_1_all.deb").exists());
        // Nothing new comes back twice; the exchange leaves nothing behind.
        put(&ex, "a_1_all.deb", b"package a");
        assert_eq!(take_back(&cache, &ex).unwrap(), 0);
        let (inbox, outbox) = (ex.inbox.clone(), ex.outbox.clone());
        drop(ex);
        assert!(!inbox.exists() && !outbox.exists());
    }
}
