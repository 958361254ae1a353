//! # A read-only view of a store's images
//!
//! Readers take no lock: they read `index.json` once (it is replaced atomically) and follow it.

use std::path::Path;

use anyhow::{Context, Result};
use oci_spec::image::{Descriptor, Digest, ImageConfiguration, ImageIndex, ImageManifest};

use crate::oci::image::{entry_name, split_name};
use crate::oci::record::{ImageRecord, LayerRecord, StoreRecord};
use crate::oci::store::Store;
use crate::support::error::BadInput;
use crate::support::suggest::nearest;

/// An opened store with its index and record.
pub struct View {
    pub store: Store,
    pub index: ImageIndex,
    pub record: StoreRecord,
}

impl View {
    pub fn open(root: &Path) -> Result<View> {
        let store = Store::open(root)?;
        let index = store.read_index()?;
        let record = store.read_record(&index)?;
        Ok(View {
            store,
            index,
            record,
        })
    }

    /// Finds an image by full name, by tag when unambiguous, or by manifest digest.
    pub fn find(&self, query: &str) -> Result<(String, Descriptor)> {
        let all: Vec<(String, &Descriptor)> = self
            .index
            .manifests()
            .iter()
            .map(|d| (entry_name(d), d))
            .collect();
        let hits: Vec<&(String, &Descriptor)> = all
            .iter()
            .filter(|(n, d)| {
                n == query
                    || split_name(n).1 == query
                    || d.digest().to_string() == query
                    || d.digest()
                        .digest()
                        .starts_with(query.trim_start_matches("sha256:"))
                        && query.len() >= 12
            })
            .collect();
        match hits.as_slice() {
            [(n, d)] => Ok((n.clone(), (*d).clone())),
            [] => {
                let names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
                let hint = nearest(query, &names)
                    .map(|n| format!(" Did you mean {n}?"))
                    .unwrap_or_default();
                Err(BadInput(format!(
                    "no image {query:?} in {}; it holds: {}.{hint}",
                    self.store.root.display(),
                    names.join(", ")
                ))
                .into())
            }
            many => Err(BadInput(format!(
                "{query:?} matches several images: {}",
                many.iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .into()),
        }
    }

    pub fn manifest(&self, d: &Descriptor) -> Result<ImageManifest> {
        self.store.read_manifest(d.digest())
    }

    pub fn config(&self, m: &ImageManifest) -> Result<ImageConfiguration> {
        let data = self.store.read_blob_checked(m.config().digest())?;
        serde_json::from_slice(&data)
            .with_context(|| format!("parsing config {}", m.config().digest()))
    }

    /// The fingerprint of the cluster key an image that takes its key at boot expects (its
    /// config's label), for `publish` and `run` to find the matching private key.
    pub fn key_fingerprint(&self, name: &str, d: &Descriptor) -> Result<String> {
        let m = self.manifest(d)?;
        let config = self.config(&m)?.config().clone().unwrap_or_default();
        config
            .labels()
            .as_ref()
            .and_then(|l| l.get(crate::oci::image::LABEL_KEY_FINGERPRINT))
            .cloned()
            .with_context(|| {
                format!("{name} takes its key at boot but has no key fingerprint label")
            })
    }

    pub fn image_record(&self, name: &str) -> Option<&ImageRecord> {
        self.record.image(name)
    }

    pub fn layer_record(&self, digest: &Digest) -> Option<&LayerRecord> {
        self.record.layer(digest)
    }
}
