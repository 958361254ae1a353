//! # The store: an OCI image layout that cannot be left half-written
//!
//! ```text
//! output/                       (-o/--output DIR)
//! ├── oci-layout                {"imageLayoutVersion":"1.0.0"}
//! ├── index.json                one manifest per image; written LAST, atomically
//! ├── blobs/sha256/<hex>        layers, configs, manifests, the store record; each written to a
//! │                             temp file in the same directory, hashed while streaming, fsynced,
//! │                             renamed into place
//! ├── blobs/sha256/.tmp-*       an interrupted write (ignored by readers, removed by the next
//! │                             build and by `gc`)
//! ├── .strata.lock              exclusive lock held by `build` and `gc`
//! ├── disks/                    qcow2 disks, their records and boot tests (`oci::disks`)
//! ├── publications.json         every publish to Glance (`oci::disks`)
//! └── smoke/<recipe>_<ver>.json the last `strata run --smoke` of an image (`oci::smoke`)
//! ```
//!
//! Every index entry carries `org.opencontainers.image.ref.name` and `io.strata.image.name`,
//! both the full name `recipe:version` (`hadoop-lab:3.3.6`, `hadoop-lab:base`). A store holds
//! images of several recipes, so the version alone would be ambiguous (umoci refuses such a
//! store's tag, skopeo silently takes one); the full name is unique in a store, is a valid OCI
//! `ref.name` (`:` is one of its separators) and a valid Docker reference (recipe names are
//! Docker repository names). skopeo and umoci split `DIR:REF` at the first colon, so
//! `skopeo inspect oci:out:hadoop-lab:3.3.6` and `umoci unpack --image out:hadoop-lab:3.3.6`
//! address one image. strata's own commands also take the bare version when it is unambiguous,
//! as stores written before this naming had it. The index's own annotations name the store
//! record (`io.strata.record`, a JSON blob: the recipe's settings for later commands, each
//! image's layers by name, the base's package list) and the git revision that built it.
//!
//! Commit order: blobs, one directory fsync, then `index.json` by rename. A reader therefore never
//! sees an index naming a missing blob, and a killed build leaves the previous index in force.
//!
//! Nothing on disk is trusted: a layer comes in by [`Store::copy_blob_in`] (a copy, hashed before
//! it is renamed into place; never a hard link to the cache), a small blob by
//! [`Store::put_blob_checked`] (which replaces one of the right size but other bytes), and
//! manifests, configs and the record are hashed before they are parsed
//! ([`Store::read_blob_checked`]): a damaged one is a `Damaged` error (exit 4), never followed.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use oci_spec::image::{Digest, ImageIndex, ImageManifest, MediaType};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::oci::record::StoreRecord;
use crate::support::error::Damaged;
use crate::support::failpoint;
use crate::support::fsx::{TMP_PREFIX, atomic_write, sync_dir};
use crate::support::hash::{canonical_json, hash_reader, sha256_digest, sha256_of};

pub const OCI_LAYOUT: &str = "oci-layout";
pub const INDEX_JSON: &str = "index.json";
pub const BLOBS: &str = "blobs/sha256";
pub const LOCK_FILE: &str = ".strata.lock";
/// What `oci-layout` holds.
pub const LAYOUT_BYTES: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;
/// Index-entry annotation with the full image name.
pub const ANNOTATION_IMAGE_NAME: &str = "io.strata.image.name";
/// Index annotation naming the store record blob.
pub const ANNOTATION_RECORD: &str = "io.strata.record";

/// What a finished blob write produced.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BlobInfo {
    pub digest: Digest,
    pub size: u64,
}

/// Streams a blob into a temp file in `blobs/sha256`, hashing as it goes; [`BlobWriter::commit`]
/// renames it to its digest.
pub struct BlobWriter {
    dir: PathBuf,
    tmp: tempfile::NamedTempFile,
    out: io::BufWriter<File>,
    hasher: Sha256,
    size: u64,
}

impl BlobWriter {
    pub fn new(blob_dir: &Path) -> Result<Self> {
        crate::support::fsx::create_dir_all(blob_dir)?;
        let tmp = tempfile::Builder::new()
            .prefix(TMP_PREFIX)
            .tempfile_in(blob_dir)
            .with_context(|| format!("creating a temp file in {blob_dir:?}"))?;
        let out = io::BufWriter::with_capacity(1 << 20, tmp.reopen()?);
        Ok(BlobWriter {
            dir: blob_dir.to_path_buf(),
            tmp,
            out,
            hasher: Sha256::new(),
            size: 0,
        })
    }

    /// Flushes, fsyncs and renames the blob into place; returns its digest and size.
    pub fn commit(mut self) -> Result<BlobInfo> {
        self.out.flush()?;
        self.out.get_ref().sync_all()?;
        let digest = sha256_digest(&self.hasher.finalize().into());
        let dest = self.dir.join(digest.digest());
        self.tmp
            .persist(&dest)
            .with_context(|| format!("renaming blob into {dest:?}"))?;
        Ok(BlobInfo {
            digest,
            size: self.size,
        })
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// An exclusive lock on a store, released on drop.
pub struct StoreLock {
    _file: File,
}

/// An opened store directory.
#[derive(Debug, Clone)]
pub struct Store {
    pub root: PathBuf,
}

impl Store {
    /// Creates the store's directories if missing; [`Store::ensure_layout`] writes `oci-layout`
    /// once the lock is held (another process's `clean_temp` must not see its temp file).
    pub fn ensure(root: &Path) -> Result<Store> {
        fs::create_dir_all(root.join(BLOBS)).with_context(|| format!("creating store {root:?}"))?;
        Ok(Store {
            root: root.to_path_buf(),
        })
    }

    /// Writes `oci-layout` if missing or not what it must be (call with the lock held).
    pub fn ensure_layout(&self) -> Result<()> {
        let layout = self.root.join(OCI_LAYOUT);
        if fs::read(&layout).is_ok_and(|b| b == LAYOUT_BYTES) {
            return Ok(());
        }
        if layout.is_dir() {
            fs::remove_dir_all(&layout).with_context(|| format!("removing {layout:?}"))?;
        }
        atomic_write(&layout, LAYOUT_BYTES)
    }

    /// Whether `oci-layout` says what an OCI image layout's must (`imageLayoutVersion` 1.x).
    pub fn layout_problem(&self) -> Option<String> {
        let layout = self.root.join(OCI_LAYOUT);
        let v: serde_json::Value = match fs::read(&layout)
            .map_err(anyhow::Error::from)
            .and_then(|b| Ok(serde_json::from_slice(&b)?))
        {
            Ok(v) => v,
            Err(e) => return Some(format!("{}: {e}", layout.display())),
        };
        match v.get("imageLayoutVersion").and_then(|v| v.as_str()) {
            Some(ver) if ver.starts_with("1.") => None,
            _ => Some(format!(
                "{}: no \"imageLayoutVersion\": \"1.0.0\" in it",
                layout.display()
            )),
        }
    }

    /// Opens an existing store; a clear error if there is none.
    pub fn open(root: &Path) -> Result<Store> {
        // A damaged `oci-layout` or `index.json` (garbage, a directory, one of them deleted) is
        // for `verify` to report (exit 4), not a reason to call the directory no store.
        let exists = |name: &str| fs::symlink_metadata(root.join(name)).is_ok();
        if !exists(OCI_LAYOUT) && !exists(INDEX_JSON) {
            return Err(crate::support::error::BadInput(format!(
                "{} is not a strata store (no oci-layout/index.json): run `strata build -o {}` first",
                root.display(),
                root.display()
            ))
            .into());
        }
        Ok(Store {
            root: root.to_path_buf(),
        })
    }

    pub fn blob_dir(&self) -> PathBuf {
        self.root.join(BLOBS)
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blob_dir().join(digest.digest())
    }

    pub fn has_blob(&self, digest: &Digest, size: u64) -> bool {
        fs::metadata(self.blob_path(digest)).is_ok_and(|m| m.len() == size)
    }

    /// Takes the store's exclusive lock, waiting (and saying so) if another process holds it.
    pub fn lock(&self, on_wait: impl FnOnce()) -> Result<StoreLock> {
        let path = self.root.join(LOCK_FILE);
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening lock {path:?}"))?;
        match f.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                on_wait();
                f.lock().with_context(|| format!("locking {path:?}"))?;
            }
            Err(fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {path:?}"));
            }
        }
        Ok(StoreLock { _file: f })
    }

    /// The temp files left by interrupted writes (in `blobs/sha256` and at the root).
    pub fn temp_files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for dir in [self.blob_dir(), self.root.clone()] {
            let Ok(rd) = fs::read_dir(&dir) else { continue };
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                    out.push(e.path());
                }
            }
        }
        out
    }

    /// Removes temp files left by an interrupted write (call with the lock held).
    pub fn clean_temp(&self) -> Result<u64> {
        let mut n = 0;
        for p in self.temp_files() {
            crate::support::fsx::remove_file(&p)?;
            n += 1;
        }
        Ok(n)
    }

    /// Writes a small blob (config, manifest, record) unless present with these very bytes: a
    /// blob of the right size but other bytes (damaged on disk) is replaced. Returns the blob and
    /// whether it replaced a damaged one.
    pub fn put_blob_checked(&self, data: &[u8]) -> Result<(BlobInfo, bool)> {
        let digest = sha256_of(data);
        let size = data.len() as u64;
        let path = self.blob_path(&digest);
        let present = fs::symlink_metadata(&path).ok();
        if present
            .as_ref()
            .is_some_and(|m| m.is_file() && m.len() == size)
            && fs::read(&path).is_ok_and(|old| old == data)
        {
            return Ok((BlobInfo { digest, size }, false));
        }
        self.make_room(&path)?;
        let mut w = BlobWriter::new(&self.blob_dir())?;
        w.write_all(data)?;
        w.flush()?;
        failpoint::hit("store-blob");
        let info = w.commit()?;
        debug_assert_eq!(info.digest, digest);
        Ok((BlobInfo { digest, size }, present.is_some()))
    }

    /// Something that is not a blob file where a blob goes (a directory, a symlink) is removed so
    /// the blob can be renamed into place.
    fn make_room(&self, path: &Path) -> Result<()> {
        match fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => fs::remove_dir_all(path)
                .with_context(|| format!("removing the directory {path:?} where a blob goes")),
            Ok(m) if !m.is_file() => crate::support::fsx::remove_file(path),
            _ => Ok(()),
        }
    }

    /// Copies a blob in from another file (the layer cache) and replaces whatever is at its
    /// name (call it when the store's copy is missing or damaged). Never a hard link: the store
    /// and the cache share no file, so damage in one cannot reach the other. The copy is
    /// `std::fs::copy` (`copy_file_range`: a reflink, no extra disk, on btrfs and XFS; an
    /// in-kernel copy elsewhere), then hashed: a copy whose bytes do not have `info`'s digest and
    /// size is refused, and nothing is renamed into place.
    pub fn copy_blob_in(&self, src: &Path, info: &BlobInfo) -> Result<()> {
        let dest = self.blob_path(&info.digest);
        let tmp = tempfile::Builder::new()
            .prefix(TMP_PREFIX)
            .tempfile_in(self.blob_dir())
            .with_context(|| format!("creating a temp file in {:?}", self.blob_dir()))?;
        fs::copy(src, tmp.path())
            .with_context(|| format!("copying {src:?} into {:?}", self.blob_dir()))?;
        let f = tmp.reopen()?;
        let (digest, size) = hash_reader(io::BufReader::with_capacity(1 << 20, &f))
            .with_context(|| format!("reading back {:?}", tmp.path()))?;
        if digest != info.digest || size != info.size {
            return Err(Damaged(vec![format!(
                "the blob {src:?} is corrupt: expected {} ({} bytes), found {digest} ({size} bytes)",
                info.digest, info.size,
            )])
            .into());
        }
        f.sync_all()
            .with_context(|| format!("syncing {:?}", tmp.path()))?;
        failpoint::hit("store-copy");
        self.make_room(&dest)?;
        tmp.persist(&dest)
            .with_context(|| format!("renaming blob into {dest:?}"))?;
        Ok(())
    }

    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>> {
        let p = self.blob_path(digest);
        fs::read(&p).with_context(|| format!("reading blob {digest} ({p:?})"))
    }

    /// Reads a small blob (manifest, config, record) and checks its digest: a damaged one is a
    /// [`Damaged`] error (exit 4), never parsed and followed.
    pub fn read_blob_checked(&self, digest: &Digest) -> Result<Vec<u8>> {
        let data = self
            .read_blob(digest)
            .map_err(|e| Damaged(vec![format!("{e:#}")]))?;
        let got = sha256_of(&data);
        if got != *digest {
            return Err(Damaged(vec![format!(
                "blob {digest} is corrupt (its bytes hash to {got}): run `strata verify --repair`"
            )])
            .into());
        }
        Ok(data)
    }

    pub fn open_blob(&self, digest: &Digest) -> Result<File> {
        let p = self.blob_path(digest);
        File::open(&p).with_context(|| format!("opening blob {digest} ({p:?})"))
    }

    /// The index; one that cannot be read or parsed is a [`Damaged`] error (exit 4).
    pub fn read_index(&self) -> Result<ImageIndex> {
        let p = self.root.join(INDEX_JSON);
        let data = fs::read(&p).map_err(|e| Damaged(vec![format!("reading {p:?}: {e}")]))?;
        serde_json::from_slice(&data).map_err(|e| {
            Damaged(vec![format!(
                "{} cannot be parsed ({e}): restore it from a backup, or move it aside and \
                 rebuild every recipe of the store",
                p.display()
            )])
            .into()
        })
    }

    /// Writes index.json atomically, after syncing the blob directory. Skips the write when the
    /// bytes are unchanged.
    pub fn write_index(&self, index: &ImageIndex) -> Result<bool> {
        let data = canonical_json(index)?;
        let p = self.root.join(INDEX_JSON);
        if fs::read(&p).is_ok_and(|old| old == data) {
            return Ok(false);
        }
        sync_dir(&self.blob_dir())?;
        let mut tmp = tempfile::Builder::new()
            .prefix(TMP_PREFIX)
            .tempfile_in(&self.root)?;
        tmp.write_all(&data)?;
        tmp.as_file().sync_all()?;
        failpoint::hit("index-write");
        tmp.persist(&p)
            .with_context(|| format!("renaming into {p:?}"))?;
        sync_dir(&self.root)?;
        Ok(true)
    }

    pub fn read_manifest(&self, digest: &Digest) -> Result<ImageManifest> {
        let data = self.read_blob_checked(digest)?;
        serde_json::from_slice(&data).with_context(|| format!("parsing manifest {digest}"))
    }

    /// The store record named by the index (empty if the store has none yet).
    pub fn read_record(&self, index: &ImageIndex) -> Result<StoreRecord> {
        let Some(d) = index
            .annotations()
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_RECORD))
        else {
            return Ok(StoreRecord::default());
        };
        let digest: Digest = d
            .parse()
            .with_context(|| format!("bad record digest {d:?}"))?;
        let data = self.read_blob_checked(&digest)?;
        StoreRecord::parse(&data, &digest)
    }

    /// Every blob the index reaches (manifests, configs, layers, the record and the disk layers
    /// it names).
    pub fn reachable(&self, index: &ImageIndex) -> Result<BTreeSet<String>> {
        let mut set = BTreeSet::new();
        for img in self.read_record(index)?.images {
            for d in img.disk_layers {
                set.insert(d.digest().to_string());
            }
        }
        if let Some(d) = index
            .annotations()
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_RECORD))
        {
            let d: Digest = d.parse()?;
            set.insert(d.digest().to_string());
        }
        for m in index.manifests() {
            set.insert(m.digest().digest().to_string());
            if *m.media_type() != MediaType::ImageManifest {
                continue;
            }
            let man = self.read_manifest(m.digest())?;
            set.insert(man.config().digest().digest().to_string());
            for l in man.layers() {
                set.insert(l.digest().digest().to_string());
            }
        }
        Ok(set)
    }

    /// Lists the blob files (hex names), excluding temp files.
    pub fn blob_names(&self) -> Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        let blobs = self.blob_dir();
        for e in fs::read_dir(&blobs).with_context(|| format!("reading {blobs:?}"))? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(TMP_PREFIX) {
                continue;
            }
            out.push((name, e.metadata()?.len()));
        }
        out.sort();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_writer_names_blobs_by_digest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::ensure(dir.path()).unwrap();
        let (info, _) = store.put_blob_checked(b"hello").unwrap();
        assert_eq!(
            info.digest.to_string(),
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert!(store.has_blob(&info.digest, 5));
        assert!(
            store
                .blob_names()
                .unwrap()
                .iter()
                .all(|(n, _)| !n.starts_with(TMP_PREFIX))
        );
    }
}
