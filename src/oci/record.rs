//! # The store record: what later commands need, typed and versioned
//!
//! `build` writes one JSON blob into the store and names it from the index's
//! `io.strata.record` annotation (never from a manifest: the record changes without changing an
//! image). It holds, per recipe, the settings `disk`, `report`, `export` and `publish` need
//! without the recipe file ([`RecipeSettings`]); per image, its layers by digest and what its
//! disk adds; per layer, its facts and names.
//!
//! The record carries its own media type ([`RECORD_MEDIA_TYPE`]). A record without one was
//! written by strata before the record was versioned (v1): it has the same shape and is read as
//! it is. A record of a media type this strata does not know is refused, saying to rebuild.

use std::collections::BTreeMap;

use anyhow::Result;
use oci_spec::image::{Digest, MediaType};
use serde::{Deserialize, Serialize};

use crate::recipe::Settings as RecipeSettings;
use crate::support::error::Damaged;

/// The media type of today's record.
pub const RECORD_MEDIA_TYPE: &str = "application/vnd.strata.record.v2+json";

/// The content facts of a built layer: what the cache remembers under the layer's key, and what
/// the store record keeps of it (with its names).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct LayerFacts {
    pub digest: Digest,
    pub diff_id: Digest,
    /// Stored (compressed) bytes.
    pub size: u64,
    /// Bytes of the uncompressed tar stream.
    pub uncompressed_size: u64,
    pub media_type: MediaType,
    pub entries: u64,
    pub file_bytes: u64,
    /// Debian packages this layer installed (`name`, `version`), for the base and package JDKs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packages: Vec<(String, String)>,
    /// The layer holds a private key (the cluster's SSH key).
    #[serde(default)]
    pub private_key: bool,
}

/// A layer of the store record: its facts, and what the recipe calls it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct LayerRecord {
    pub name: String,
    /// What budgets call it (`base`, `jdk-<name>`, a `[[layer]]` name, `hadoop-dist`).
    #[serde(default)]
    pub family: String,
    /// Images of the recipe that carry this layer.
    #[serde(default)]
    pub shared_by: Vec<String>,
    #[serde(flatten)]
    pub facts: LayerFacts,
}

impl std::ops::Deref for LayerRecord {
    type Target = LayerFacts;
    fn deref(&self) -> &LayerFacts {
        &self.facts
    }
}

/// One image of the store record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct ImageRecord {
    pub name: String,
    pub tag: String,
    pub hadoop_version: Option<String>,
    pub manifest: Digest,
    pub config: Digest,
    pub jdk: Option<String>,
    pub layers: Vec<Digest>,
    pub carries_private_key: bool,
    /// Built with `[ssh] deliver = "boot"`: only the public key is in it (left out when false,
    /// so records of other images keep their bytes).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keys_at_boot: bool,
    /// What the image's bootable disk adds (disk-only packages and layers), by digest; the blobs
    /// are in the store, reached through this record.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disk_layers: Vec<Digest>,
}

impl ImageRecord {
    /// The recipe this image was built from (`hadoop-lab` of `hadoop-lab:3.3.6`).
    pub fn recipe(&self) -> &str {
        crate::oci::image::split_name(&self.name).0
    }
}

/// The store record: what later commands need without the recipe.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct StoreRecord {
    /// [`RECORD_MEDIA_TYPE`]; absent in records written before the record was versioned.
    #[serde(default)]
    pub media_type: Option<String>,
    /// Each recipe's settings as built, by recipe name.
    pub recipes: BTreeMap<String, RecipeSettings>,
    pub images: Vec<ImageRecord>,
    /// Keyed by layer digest (`sha256:…`).
    pub layers: BTreeMap<String, LayerRecord>,
}

impl Default for StoreRecord {
    fn default() -> Self {
        StoreRecord {
            media_type: Some(RECORD_MEDIA_TYPE.into()),
            recipes: BTreeMap::new(),
            images: Vec::new(),
            layers: BTreeMap::new(),
        }
    }
}

impl StoreRecord {
    /// Parses a record blob: today's format, or the unversioned one before it (same shape).
    pub fn parse(data: &[u8], digest: &Digest) -> Result<StoreRecord> {
        let value: serde_json::Value = serde_json::from_slice(data)
            .map_err(|e| Damaged(vec![format!("store record {digest} is not JSON: {e}")]))?;
        let media = value.get("media-type").and_then(|m| m.as_str());
        match media {
            None | Some(RECORD_MEDIA_TYPE) => {}
            Some(other) => anyhow::bail!(
                "the store record {digest} has media type {other:?}, which this strata does not \
                 read (written by a newer version?): rebuild the store with `strata build -o DIR`"
            ),
        }
        let mut record: StoreRecord = serde_json::from_value(value).map_err(|e| {
            anyhow::anyhow!(
                "the store record {digest} cannot be read ({e}): it was written by an older \
                 strata in a form this one does not know; rebuild the store with `strata build -o DIR`"
            )
        })?;
        record.media_type = Some(RECORD_MEDIA_TYPE.into());
        Ok(record)
    }

    /// A layer's record by digest.
    pub fn layer(&self, digest: &Digest) -> Option<&LayerRecord> {
        self.layers.get(&digest.to_string())
    }

    /// An image's record by full name.
    pub fn image(&self, name: &str) -> Option<&ImageRecord> {
        self.images.iter().find(|i| i.name == name)
    }

    /// The settings of the recipe an image was built from.
    pub fn settings_of(&self, image: &str) -> Option<&RecipeSettings> {
        self.recipes.get(crate::oci::image::split_name(image).0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(data: &[u8]) -> Digest {
        crate::support::hash::sha256_of(data)
    }

    /// The record the previous strata wrote for the default lab (no media type, settings as
    /// untyped JSON then): read as it is, every field typed.
    #[test]
    fn a_record_written_before_versioning_is_read() {
        let data = include_bytes!("../../tests/fixtures/record-v1-lab.json");
        let r = StoreRecord::parse(data, &digest(data)).unwrap();
        let s = r.settings_of("hadoop-lab:3.3.6").unwrap();
        assert_eq!(s.epoch, 1_700_000_000);
        assert_eq!(s.epoch_source, crate::recipe::EpochSource::Recipe);
        assert!(s.disk.as_ref().is_some_and(|d| !d.packages.is_empty()));
        let img = r.image("hadoop-lab:3.3.6").unwrap();
        assert_eq!(img.layers.len(), 5);
        assert!(!img.disk_layers.is_empty());
        for d in img.layers.iter().chain(&img.disk_layers) {
            assert!(r.layer(d).is_some(), "{d}");
        }
        assert_eq!(r.media_type.as_deref(), Some(RECORD_MEDIA_TYPE));
    }

    #[test]
    fn a_record_of_an_unknown_format_is_refused_saying_to_rebuild() {
        let data = br#"{"media-type": "application/vnd.strata.record.v9+json", "recipes": {}, "images": [], "layers": {}}"#;
        let e = StoreRecord::parse(data, &digest(data))
            .unwrap_err()
            .to_string();
        assert!(e.contains("v9") && e.contains("rebuild"), "{e}");
        let data = br#"{"recipes": {"x": {"epoch": "soon"}}, "images": [], "layers": {}}"#;
        let e = StoreRecord::parse(data, &digest(data))
            .unwrap_err()
            .to_string();
        assert!(e.contains("rebuild"), "{e}");
    }

    #[test]
    fn todays_record_round_trips() {
        let data = include_bytes!("../../tests/fixtures/record-v1-lab.json");
        let r = StoreRecord::parse(data, &digest(data)).unwrap();
        let again = crate::support::hash::canonical_json(&r).unwrap();
        let back = StoreRecord::parse(&again, &digest(&again)).unwrap();
        assert_eq!(r, back);
        assert!(String::from_utf8_lossy(&again).contains(RECORD_MEDIA_TYPE));
    }
}
