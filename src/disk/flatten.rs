//! # Flattening: an image's layers as one root file system
//!
//! Layers are applied in order: whiteouts remove what is below, a non-directory replaces a
//! subtree, and `/etc/passwd`, `group`, `shadow` and `gshadow` are merged by name (the disk layer
//! adds system users the accounts layer's copy does not know).

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use crate::layer::{self, Content, Entry, Kind, TarPolicy};
use crate::source::accounts::BaseAccounts;
use crate::support::error::BadInput;

/// Flattens layer tars (lowest first): whiteouts applied, account databases merged by name.
/// Returns (head, tail): what the `shared` layers give (and every directory a shared layer has),
/// then what only the other layers give; each part sorted, parents before children.
pub fn flatten_split(layer_tars: &[PathBuf], shared: &[bool]) -> Result<(Vec<Entry>, Vec<Entry>)> {
    let mut fs: BTreeMap<String, (Entry, bool)> = BTreeMap::new();
    let mut shared_dirs: HashSet<String> = Default::default();
    let mut accounts: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (li, tar) in layer_tars.iter().enumerate() {
        let is_shared = shared.get(li).copied().unwrap_or(true);
        let entries = layer::read_tar_file(
            tar,
            TarPolicy {
                allow_devices: true,
                allow_setid: true,
            },
        )
        .with_context(|| format!("reading the layer {}", tar.display()))?;
        for e in entries {
            let name = e.path.rsplit('/').next().unwrap_or("");
            let parent = e.path.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
            if name == ".wh..wh..opq" {
                let prefix = format!("{parent}/");
                fs.retain(|p, _| !p.starts_with(&prefix));
                continue;
            }
            if let Some(gone) = name.strip_prefix(layer::WHITEOUT_PREFIX) {
                let path = if parent.is_empty() {
                    gone.to_string()
                } else {
                    format!("{parent}/{gone}")
                };
                let prefix = format!("{path}/");
                fs.retain(|p, _| p != &path && !p.starts_with(&prefix));
                continue;
            }
            if e.is_dir() && is_shared {
                shared_dirs.insert(e.path.clone());
            }
            if BaseAccounts::FILES.contains(&e.path.as_str())
                && let Kind::File(c) = &e.kind
            {
                let text = String::from_utf8_lossy(&c.read_all()?).into_owned();
                let merged = accounts.entry(e.path.clone()).or_default();
                for line in text.lines().filter(|l| !l.is_empty()) {
                    let key = line.split(':').next().unwrap_or("").to_string();
                    match merged
                        .iter()
                        .position(|m| m.split(':').next() == Some(key.as_str()))
                    {
                        Some(i) => merged[i] = line.to_string(),
                        None => merged.push(line.to_string()),
                    }
                }
                let mut e = e.clone();
                e.kind = Kind::File(Content::bytes(format!("{}\n", merged.join("\n"))));
                let from_shared = is_shared && fs.get(&e.path).is_none_or(|x| x.1);
                fs.insert(e.path.clone(), (e, from_shared));
                continue;
            }
            if !e.is_dir() {
                // A non-directory replaces whatever was there, subtree included.
                let prefix = format!("{}/", e.path);
                fs.retain(|p, _| !p.starts_with(&prefix));
            }
            fs.insert(e.path.clone(), (e, is_shared));
        }
    }
    let present: HashSet<String> = fs.keys().cloned().collect();
    let (mut head, mut tail) = (Vec::new(), Vec::new());
    for (path, (e, from_shared)) in fs {
        if let Kind::Hardlink(t) = &e.kind
            && !present.contains(t)
        {
            bail!("{path}: hard link to {t}, which an upper layer removed");
        }
        if from_shared || shared_dirs.contains(&path) {
            head.push(e);
        } else {
            tail.push(e);
        }
    }
    // A tail hard link may point into the head; a head one must not point into the tail.
    let tail_paths: HashSet<String> = tail.iter().map(|e| e.path.clone()).collect();
    let mut moved = Vec::new();
    head.retain(|e| match &e.kind {
        Kind::Hardlink(t) if tail_paths.contains(t) => {
            moved.push(e.clone());
            false
        }
        _ => true,
    });
    tail.extend(moved);
    layer::relink_hardlinks(&mut head)?;
    let head = layer::normalize(head)?;
    tail.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
    Ok((head, tail))
}

/// Follows a symlink chain inside flattened entries (`vmlinuz` → `boot/vmlinuz-…`).
fn resolve<'a>(entries: &'a BTreeMap<&str, &'a Entry>, path: &str) -> Option<&'a Entry> {
    let mut p = path.trim_start_matches('/').to_string();
    for _ in 0..8 {
        let e = entries.get(p.as_str())?;
        match &e.kind {
            Kind::Symlink(t) if t.starts_with('/') => p = t.trim_start_matches('/').to_string(),
            Kind::Symlink(t) => {
                let dir = p
                    .rsplit_once('/')
                    .map(|(d, _)| format!("{d}/"))
                    .unwrap_or_default();
                p = format!("{dir}{t}");
            }
            _ => return Some(e),
        }
    }
    None
}

pub fn file_bytes(entries: &BTreeMap<&str, &Entry>, path: &str, what: &str) -> Result<Vec<u8>> {
    match resolve(entries, path).map(|e| &e.kind) {
        Some(Kind::File(c)) => c.read_all(),
        _ => Err(BadInput(format!(
            "the image has no {what} (/{path}): a bootable disk needs a kernel; add e.g. linux-image-cloud-amd64 to [disk] packages"
        ))
        .into()),
    }
}
