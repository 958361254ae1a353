//! # export: images as one OCI archive that `docker load` reads too
//!
//! The archive itself (OCI layout + Docker's `manifest.json`) is [`crate::oci::archive`]; this
//! writes it to a file through a temp name in the same directory.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::oci::archive::Archive;
use crate::oci::view::View;
use crate::support::fsx::TMP_PREFIX;

#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ExportReport {
    pub file: PathBuf,
    pub images: Vec<String>,
    pub blobs: usize,
    pub bytes: u64,
}

/// Writes the chosen images (all when none is named) as one tar: an OCI image layout plus
/// Docker's `manifest.json`. Deterministic: the same images give the same archive bytes.
pub fn export_oci_archive(root: &Path, images: &[String], file: &Path) -> Result<ExportReport> {
    let v = View::open(root)?;
    let archive = Archive::plan(&v, images)?;
    let dir = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    crate::support::fsx::create_dir_all(dir)?;
    let tmp = tempfile::Builder::new()
        .prefix(TMP_PREFIX)
        .tempfile_in(dir)?;
    {
        let mut out = std::io::BufWriter::new(tmp.as_file());
        archive.write_to(&v, &mut out)?;
        out.flush()?;
    }
    tmp.as_file().sync_all()?;
    tmp.persist(file)
        .with_context(|| format!("writing {}", file.display()))?;
    Ok(ExportReport {
        file: file.to_path_buf(),
        images: archive.images.iter().map(|(n, _)| n.clone()).collect(),
        blobs: archive.blobs.len(),
        bytes: archive.blob_bytes(),
    })
}
