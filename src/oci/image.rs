//! # OCI documents: image configs, manifests and index entries
//!
//! Everything here is a pure function of content inputs: the layers' digests, the recipe's epoch
//! and labels. The git revision and the build time never enter a manifest or a config (they
//! would change digests for no content change); the revision goes on the index instead.

use std::collections::HashMap;

use anyhow::Result;
use oci_spec::image::{
    ANNOTATION_CREATED, ANNOTATION_DESCRIPTION, ANNOTATION_REF_NAME, ANNOTATION_SOURCE,
    ANNOTATION_TITLE, ANNOTATION_VERSION, Arch, ConfigBuilder, Descriptor, DescriptorBuilder,
    HistoryBuilder, ImageConfigurationBuilder, ImageManifestBuilder, MediaType, Os,
    PlatformBuilder, RootFsBuilder,
};

use crate::oci::record::LayerRecord;
use crate::oci::store::{ANNOTATION_IMAGE_NAME, BlobInfo, Store};
use crate::support::hash::canonical_json;

/// The label every Hadoop image's config carries.
pub const LABEL_HADOOP_VERSION: &str = "hadoop.version";
pub const LABEL_JDK: &str = "io.strata.jdk";
pub const LABEL_JDK_UNSUPPORTED: &str = "io.strata.jdk.unsupported";
pub const LABEL_PRIVATE_KEY: &str = "io.strata.carries-private-key";
pub const LABEL_KEY_FINGERPRINT: &str = "io.strata.ssh-key.fingerprint";
/// `boot` on images built with `[ssh] deliver = "boot"`: the private key is installed at boot
/// (absent on images that carry it).
pub const LABEL_SSH_DELIVER: &str = "io.strata.ssh.deliver";
pub const ANNOTATION_LAYER_NAME: &str = "io.strata.layer";

/// RFC 3339 of a Unix time.
pub fn rfc3339(epoch: u64) -> String {
    chrono::DateTime::from_timestamp(epoch as i64, 0)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// What an image is made of.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// `recipe:tag`: the image's `org.opencontainers.image.ref.name` and `io.strata.image.name`.
    pub name: String,
    pub layers: Vec<LayerRecord>,
    pub env: Vec<String>,
    pub cmd: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub labels: HashMap<String, String>,
    pub annotations: HashMap<String, String>,
    pub epoch: u64,
}

/// The stored documents of one image.
#[derive(Debug, Clone)]
pub struct WrittenImage {
    pub manifest: BlobInfo,
    pub config: BlobInfo,
    pub index_entry: Descriptor,
    /// Blobs that were in the store with the wrong bytes and have been rewritten.
    pub repaired: Vec<oci_spec::image::Digest>,
}

/// Writes an image's config and manifest blobs; returns its index entry.
pub fn write_image(store: &Store, spec: &ImageSpec) -> Result<WrittenImage> {
    let created = rfc3339(spec.epoch);
    let mut cfg = ConfigBuilder::default()
        .env(spec.env.clone())
        .labels(spec.labels.clone());
    if let Some(c) = &spec.cmd {
        cfg = cfg.cmd(c.clone());
    }
    if let Some(e) = &spec.entrypoint {
        cfg = cfg.entrypoint(e.clone());
    }
    if let Some(w) = &spec.working_dir {
        cfg = cfg.working_dir(w.clone());
    }
    if let Some(u) = &spec.user {
        cfg = cfg.user(u.clone());
    }
    let history = spec
        .layers
        .iter()
        .map(|l| {
            HistoryBuilder::default()
                .created(created.clone())
                .created_by(format!("strata: layer {}", l.name))
                .build()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let config = ImageConfigurationBuilder::default()
        .created(created.clone())
        .architecture(Arch::Amd64)
        .os(Os::Linux)
        .config(cfg.build()?)
        .rootfs(
            RootFsBuilder::default()
                .typ("layers")
                .diff_ids(
                    spec.layers
                        .iter()
                        .map(|l| l.diff_id.to_string())
                        .collect::<Vec<_>>(),
                )
                .build()?,
        )
        .history(history)
        .build()?;
    let mut repaired = Vec::new();
    let (config_blob, fixed) = store.put_blob_checked(&canonical_json(&config)?)?;
    if fixed {
        repaired.push(config_blob.digest.clone());
    }
    let layers = spec
        .layers
        .iter()
        .map(|l| {
            let mut d = Descriptor::new(l.media_type.clone(), l.size, l.digest.clone());
            d.set_annotations(Some(HashMap::from([(
                ANNOTATION_LAYER_NAME.to_string(),
                l.name.clone(),
            )])));
            d
        })
        .collect::<Vec<_>>();
    let mut annotations = spec.annotations.clone();
    annotations.insert(ANNOTATION_CREATED.into(), created);
    annotations.insert(ANNOTATION_TITLE.into(), spec.name.clone());
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(Descriptor::new(
            MediaType::ImageConfig,
            config_blob.size,
            config_blob.digest.clone(),
        ))
        .layers(layers)
        .annotations(annotations)
        .build()?;
    let (manifest_blob, fixed) = store.put_blob_checked(&canonical_json(&manifest)?)?;
    if fixed {
        repaired.push(manifest_blob.digest.clone());
    }
    let index_entry = DescriptorBuilder::default()
        .media_type(MediaType::ImageManifest)
        .digest(manifest_blob.digest.clone())
        .size(manifest_blob.size)
        .platform(
            PlatformBuilder::default()
                .architecture(Arch::Amd64)
                .os(Os::Linux)
                .build()?,
        )
        .annotations(HashMap::from([
            (ANNOTATION_REF_NAME.to_string(), spec.name.clone()),
            (ANNOTATION_IMAGE_NAME.to_string(), spec.name.clone()),
        ]))
        .build()?;
    Ok(WrittenImage {
        manifest: manifest_blob,
        config: config_blob,
        index_entry,
        repaired,
    })
}

/// Standard manifest annotations for an image.
pub fn standard_annotations(
    version: Option<&str>,
    source: Option<&str>,
    description: Option<&str>,
) -> HashMap<String, String> {
    let mut a = HashMap::new();
    if let Some(v) = version {
        a.insert(ANNOTATION_VERSION.to_string(), v.to_string());
    }
    if let Some(s) = source {
        a.insert(ANNOTATION_SOURCE.to_string(), s.to_string());
    }
    if let Some(d) = description {
        a.insert(ANNOTATION_DESCRIPTION.to_string(), d.to_string());
    }
    a
}

/// The full name of an index entry: `io.strata.image.name`, else the ref name, else the digest.
pub fn entry_name(d: &Descriptor) -> String {
    let a = d.annotations().as_ref();
    a.and_then(|a| {
        a.get(ANNOTATION_IMAGE_NAME)
            .or_else(|| a.get(ANNOTATION_REF_NAME))
    })
    .cloned()
    .unwrap_or_else(|| d.digest().to_string())
}

/// Splits `name:tag`.
pub fn split_name(full: &str) -> (&str, &str) {
    full.rsplit_once(':').unwrap_or((full, "latest"))
}
