//! # export: images as one OCI archive that `docker load` reads too

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use oci_spec::image::{Descriptor, Digest, ImageIndexBuilder, MediaType};
use serde::Serialize;

use crate::oci::image::entry_name;
use crate::oci::view::View;
use crate::support::fsx::TMP_PREFIX;
use crate::support::hash::canonical_json;

// ------------------------------------------------------------------------------------- export

#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ExportReport {
    pub file: PathBuf,
    pub images: Vec<String>,
    pub blobs: usize,
    pub bytes: u64,
}

/// Docker's `manifest.json` entry (written beside the OCI layout so `docker load` of Docker
/// 20.10, which cannot read a pure OCI archive, loads the archive too).
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifest {
    config: String,
    repo_tags: Vec<String>,
    layers: Vec<String>,
}

/// Writes the chosen images (all when none is named) as one tar: an OCI image layout plus
/// Docker's `manifest.json`. Deterministic: the same images give the same archive bytes.
pub fn export_oci_archive(root: &Path, images: &[String], file: &Path) -> Result<ExportReport> {
    let v = View::open(root)?;
    let chosen: Vec<(String, Descriptor)> = if images.is_empty() {
        v.index
            .manifests()
            .iter()
            .map(|d| (entry_name(d), d.clone()))
            .collect()
    } else {
        images.iter().map(|q| v.find(q)).collect::<Result<_>>()?
    };
    let mut blobs: BTreeSet<(String, u64)> = BTreeSet::new();
    let mut docker = Vec::new();
    for (name, d) in &chosen {
        let m = v.manifest(d)?;
        blobs.insert((d.digest().digest().to_string(), d.size()));
        blobs.insert((m.config().digest().digest().to_string(), m.config().size()));
        for l in m.layers() {
            blobs.insert((l.digest().digest().to_string(), l.size()));
        }
        docker.push(DockerManifest {
            config: format!("blobs/sha256/{}", m.config().digest().digest()),
            repo_tags: vec![name.clone()],
            layers: m
                .layers()
                .iter()
                .map(|l| format!("blobs/sha256/{}", l.digest().digest()))
                .collect(),
        });
    }
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(chosen.iter().map(|(_, d)| d.clone()).collect::<Vec<_>>())
        .build()?;
    let epoch = v
        .record
        .recipes
        .values()
        .map(|r| r.epoch)
        .max()
        .unwrap_or(0);
    let dir = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    crate::support::fsx::create_dir_all(dir)?;
    let tmp = tempfile::Builder::new()
        .prefix(TMP_PREFIX)
        .tempfile_in(dir)?;
    let mut bytes = 0;
    {
        let mut out = std::io::BufWriter::new(tmp.as_file());
        let mut b = tar::Builder::new(&mut out);
        let add = |b: &mut tar::Builder<_>,
                   path: &str,
                   data: &mut dyn Read,
                   size: u64,
                   dir: bool|
         -> Result<()> {
            let mut h = tar::Header::new_ustar();
            h.set_path(path)?;
            h.set_entry_type(if dir {
                tar::EntryType::Directory
            } else {
                tar::EntryType::Regular
            });
            h.set_mode(if dir { 0o755 } else { 0o644 });
            h.set_size(size);
            h.set_mtime(epoch);
            h.set_cksum();
            b.append(&h, data)?;
            Ok(())
        };
        let docker_json = serde_json::to_vec(&docker)?;
        let index_json = canonical_json(&index)?;
        let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
        add(&mut b, "blobs/", &mut std::io::empty(), 0, true)?;
        add(&mut b, "blobs/sha256/", &mut std::io::empty(), 0, true)?;
        for (hex, size) in &blobs {
            let d: Digest = format!("sha256:{hex}").parse()?;
            let mut f = v.store.open_blob(&d)?;
            add(&mut b, &format!("blobs/sha256/{hex}"), &mut f, *size, false)?;
            bytes += size;
        }
        add(
            &mut b,
            "index.json",
            &mut &index_json[..],
            index_json.len() as u64,
            false,
        )?;
        add(
            &mut b,
            "manifest.json",
            &mut &docker_json[..],
            docker_json.len() as u64,
            false,
        )?;
        add(
            &mut b,
            "oci-layout",
            &mut &layout[..],
            layout.len() as u64,
            false,
        )?;
        b.finish()?;
        drop(b);
        out.flush()?;
    }
    tmp.as_file().sync_all()?;
    tmp.persist(file)
        .with_context(|| format!("writing {}", file.display()))?;
    Ok(ExportReport {
        file: file.to_path_buf(),
        images: chosen.into_iter().map(|(n, _)| n).collect(),
        blobs: blobs.len(),
        bytes,
    })
}
