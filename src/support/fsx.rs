//! # Files written whole or not at all
//!
//! Every file strata writes that a reader may see (store blobs, `index.json`, cache records,
//! reports, disks) goes to a temp file in the same directory first (named [`TMP_PREFIX`]…, so a
//! cleanup knows it), is fsynced, and renamed into place.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

/// Prefix of temp files; readers ignore them, `build` and `gc` remove leftovers.
pub const TMP_PREFIX: &str = ".tmp-";

/// Writes `data` to `path` atomically: temp file in the same directory, fsync, rename, fsync dir.
pub fn atomic_write(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().context("path without a parent")?;
    let mut tmp = tempfile::Builder::new()
        .prefix(TMP_PREFIX)
        .tempfile_in(dir)
        .with_context(|| format!("creating a temp file in {dir:?}"))?;
    tmp.write_all(data)
        .and_then(|_| tmp.as_file().sync_all())
        .with_context(|| format!("writing {:?}", tmp.path()))?;
    tmp.persist(path)
        .with_context(|| format!("renaming into {path:?}"))?;
    sync_dir(dir)
}

/// [`atomic_write`] for a user-given path (creates the directory, accepts a bare file name).
pub fn atomic_write_anywhere(path: &Path, data: &[u8]) -> Result<()> {
    let path = if path.parent().is_some_and(|p| !p.as_os_str().is_empty()) {
        path.to_path_buf()
    } else {
        Path::new(".").join(path)
    };
    let dir = path.parent().expect("has a parent");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {dir:?}"))?;
    atomic_write(&path, data)
}

/// fsyncs a directory (so a rename in it is durable).
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing directory {dir:?}"))
}

/// `create_dir_all` whose error names the directory.
pub fn create_dir_all(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating directory {dir:?}"))
}

/// Opens a file for reading; the error names it.
pub fn open(path: &Path) -> Result<File> {
    File::open(path).with_context(|| format!("opening {path:?}"))
}

/// Opens an input the user named: it must exist and be a regular file (a device such as
/// `/dev/zero` would be read forever, a directory not at all). Anything else is bad input.
pub fn open_input(path: &Path) -> Result<File> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => open(path),
        Ok(_) => crate::bad!("{}: not a regular file", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            crate::bad!("{}: no such file", path.display())
        }
        Err(e) => Err(e).with_context(|| format!("reading {path:?}")),
    }
}

/// Creates (truncates) a file for writing; the error names it.
pub fn create(path: &Path) -> Result<File> {
    File::create(path).with_context(|| format!("creating {path:?}"))
}

/// Reads a whole file; the error names it.
pub fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {path:?}"))
}

/// Writes a whole file (not atomically: work files only); the error names it.
pub fn write(path: &Path, data: impl AsRef<[u8]>) -> Result<()> {
    std::fs::write(path, data).with_context(|| format!("writing {path:?}"))
}

/// Renames; the error names both paths.
pub fn rename(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).with_context(|| format!("renaming {from:?} to {to:?}"))
}

/// Removes a file; the error names it.
pub fn remove_file(path: &Path) -> Result<()> {
    std::fs::remove_file(path).with_context(|| format!("removing {path:?}"))
}

/// A file's metadata; the error names it.
pub fn metadata(path: &Path) -> Result<std::fs::Metadata> {
    std::fs::metadata(path).with_context(|| format!("reading the metadata of {path:?}"))
}
