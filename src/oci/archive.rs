//! # Image archives: an OCI layout plus Docker's `manifest.json`, as one tar stream
//!
//! ```text
//! blobs/sha256/<hex>   every manifest, config and layer of the chosen images (sorted)
//! index.json           the chosen images' index entries (names annotated as in the store)
//! manifest.json        Docker's list: Config, RepoTags ["hadoop-lab:3.3.6"], Layers
//! oci-layout
//! ```
//!
//! Docker before 25 cannot load a pure OCI archive; `manifest.json` lets Docker 20.10 load the
//! same bytes (`docker load -i`), and the images appear under their full names. The tar is
//! deterministic (ustar headers, mode 0644/0755, mtime = the newest recipe epoch), so the same
//! images give the same bytes. [`Archive::write_to`] streams into any writer: `strata export`
//! writes a file, `strata load` a pipe into the engine's request body (no temp file).

use std::collections::BTreeSet;
use std::io::{Read, Write};

use anyhow::{Context, Result};
use oci_spec::image::{Descriptor, Digest, ImageIndex, ImageIndexBuilder, MediaType};
use serde::Serialize;

use crate::oci::image::entry_name;
use crate::oci::view::View;
use crate::support::hash::canonical_json;

/// Docker's `manifest.json` entry.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifest {
    config: String,
    repo_tags: Vec<String>,
    layers: Vec<String>,
}

/// What an archive of some images of a store holds, before any byte is written.
pub struct Archive {
    /// The images, by full name, with their index entries.
    pub images: Vec<(String, Descriptor)>,
    /// Every blob (hex digest, size), sorted.
    pub blobs: BTreeSet<(String, u64)>,
    /// Media types of the chosen images' layers (zstd layers need Docker 23+).
    pub layer_media_types: BTreeSet<String>,
    docker: Vec<DockerManifest>,
    index: ImageIndex,
    epoch: u64,
}

impl Archive {
    /// The chosen images (all when `images` is empty) of the store `v`: names, tags or
    /// manifest digests, as `View::find` takes them (an unknown one is bad input, with the
    /// nearest name).
    pub fn plan(v: &View, images: &[String]) -> Result<Archive> {
        let chosen: Vec<(String, Descriptor)> = if images.is_empty() {
            v.index
                .manifests()
                .iter()
                .map(|d| (entry_name(d), d.clone()))
                .collect()
        } else {
            images.iter().map(|q| v.find(q)).collect::<Result<_>>()?
        };
        let mut blobs = BTreeSet::new();
        let mut layer_media_types = BTreeSet::new();
        let mut docker = Vec::new();
        for (name, d) in &chosen {
            let m = v.manifest(d)?;
            blobs.insert((d.digest().digest().to_string(), d.size()));
            blobs.insert((m.config().digest().digest().to_string(), m.config().size()));
            for l in m.layers() {
                blobs.insert((l.digest().digest().to_string(), l.size()));
                layer_media_types.insert(l.media_type().to_string());
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
        Ok(Archive {
            images: chosen,
            blobs,
            layer_media_types,
            docker,
            index,
            epoch,
        })
    }

    /// Bytes of the blobs (the archive is this plus headers and the small documents).
    pub fn blob_bytes(&self) -> u64 {
        self.blobs.iter().map(|(_, s)| s).sum()
    }

    /// Whether any layer is zstd-compressed.
    pub fn has_zstd_layers(&self) -> bool {
        self.layer_media_types.iter().any(|m| m.ends_with("+zstd"))
    }

    /// Writes the archive as a tar into `out`, blobs read from the store of `v`.
    pub fn write_to(&self, v: &View, out: &mut dyn Write) -> Result<()> {
        let mut b = tar::Builder::new(out);
        let epoch = self.epoch;
        let add = |b: &mut tar::Builder<&mut dyn Write>,
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
            b.append(&h, data)
                .with_context(|| format!("writing {path} into the archive"))?;
            Ok(())
        };
        let docker_json = serde_json::to_vec(&self.docker)?;
        let index_json = canonical_json(&self.index)?;
        let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
        add(&mut b, "blobs/", &mut std::io::empty(), 0, true)?;
        add(&mut b, "blobs/sha256/", &mut std::io::empty(), 0, true)?;
        for (hex, size) in &self.blobs {
            let d: Digest = format!("sha256:{hex}").parse()?;
            let mut f = v.store.open_blob(&d)?;
            add(&mut b, &format!("blobs/sha256/{hex}"), &mut f, *size, false)?;
        }
        for (path, data) in [
            ("index.json", &index_json[..]),
            ("manifest.json", &docker_json[..]),
            ("oci-layout", &layout[..]),
        ] {
            add(&mut b, path, &mut &data[..], data.len() as u64, false)?;
        }
        b.finish().context("finishing the archive")?;
        Ok(())
    }
}
