//! # A base image from a registry (`[base] source = "oci"`, `image = "REGISTRY/REPO:TAG"`)
//!
//! `build` pulls the image once into the cache as a one-image OCI layout named by its manifest
//! digest, `cache/oci-bases/<hex>/` (blobs verified while streaming, the index written last),
//! and remembers which digest the reference named in `cache/oci-bases/refs/<sha256 of the
//! reference>`; from there the base is an OCI layout like any other (`Base::Oci`). A reference
//! by digest (`@sha256:…`) pins the base and, once pulled, asks nothing; a tag is resolved
//! again on every build (one manifest request), so a moved tag gives a new base — and new layer
//! keys above it. An unreachable registry falls back, with a warning, to the copy pulled before.
//!
//! `plan` writes nothing and asks no registry: it uses the layout a build pulled for the same
//! reference, else the base is "not pulled yet" and the layers on it wait.
//!
//! OCI image manifests only (an OCI index is followed to its linux/amd64 manifest): Docker v2
//! manifests carry Docker's layer media types, which strata does not unpack — convert the image
//! first (`skopeo copy --format oci`).

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;

use anyhow::{Context, Result, bail};
use oci_spec::image::{
    Descriptor, DescriptorBuilder, ImageIndex, ImageIndexBuilder, ImageManifest, MediaType,
};

use crate::cache::Cache;
use crate::registry::manifest::{DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};
use crate::registry::{Client, Reference};
use crate::support::error::BadInput;
use crate::support::hash::sha256_of;
use crate::support::progress::Progress;

/// The name the pulled image has in its layout's index.
pub const REF_NAME: &str = "base";

fn dir(cache: &Cache) -> PathBuf {
    cache.root.join("oci-bases")
}

fn ref_memo(cache: &Cache, image: &str) -> PathBuf {
    dir(cache)
        .join("refs")
        .join(sha256_of(image.as_bytes()).digest())
}

fn parse(image: &str) -> Result<Reference> {
    let r: Reference = image
        .parse()
        .with_context(|| format!("[base] image = {image:?}"))?;
    if r.reference().is_none() {
        return Err(BadInput(format!(
            "[base] image = {image:?}: name a tag or a digest (REPO:TAG or REPO@sha256:…)"
        ))
        .into());
    }
    Ok(r)
}

/// The layout a build pulled for `image` before (for `plan`: reads only).
pub fn pulled(cache: &Cache, image: &str) -> Option<PathBuf> {
    let hex = std::fs::read_to_string(ref_memo(cache, image)).ok()?;
    let layout = dir(cache).join(hex.trim());
    layout
        .join(crate::oci::store::INDEX_JSON)
        .is_file()
        .then_some(layout)
}

/// Pulls `image` into the cache (unless its manifest is there) and returns the layout.
pub fn ensure(
    cache: &Cache,
    image: &str,
    opts: &crate::registry::Options,
    progress: &Progress,
) -> Result<PathBuf> {
    let r = parse(image)?;
    // Pinned by digest and pulled before: nothing to ask.
    if let Some(d) = &r.digest
        && let Some(layout) = pulled(cache, image)
        && layout.ends_with(d.digest())
    {
        return Ok(layout);
    }
    let wanted = r.reference().expect("parse checked");
    let asked = Client::new(&r.registry, opts, progress)
        .and_then(|c| Ok((c.get_manifest(&r.repository, &wanted)?, c)));
    let (fetched, client) = match asked {
        Ok(x) => x,
        // A tag pulled before: an unreachable registry does not stop the build.
        Err(e) if unreachable(&e) && pulled(cache, image).is_some() => {
            progress.say(format!(
                "warning: {e:#}; building on the copy of {image} pulled before"
            ));
            return Ok(pulled(cache, image).expect("checked"));
        }
        Err(e) => return Err(e),
    };
    let fetched = fetched.ok_or_else(|| {
        BadInput(format!(
            "[base] image = {image:?}: the registry has no such image"
        ))
    })?;
    let (media_type, bytes) = match fetched.media_type.as_str() {
        OCI_MANIFEST => (fetched.media_type, fetched.bytes),
        OCI_INDEX => {
            let index: ImageIndex = serde_json::from_slice(&fetched.bytes)
                .with_context(|| format!("[base] image {image}: its index"))?;
            let d = amd64(&index).with_context(|| format!("[base] image {image}"))?;
            let m = client
                .get_manifest(&r.repository, d.digest().as_ref())?
                .with_context(|| format!("[base] image {image}: manifest {}", d.digest()))?;
            (m.media_type, m.bytes)
        }
        DOCKER_MANIFEST | DOCKER_LIST => bail!(BadInput(format!(
            "[base] image {image} is a Docker v2 image: strata reads OCI images; convert it \
             (skopeo copy --format oci docker://… docker://…) and name that"
        ))),
        other => bail!("[base] image {image}: unexpected manifest type {other:?}"),
    };
    if media_type != OCI_MANIFEST {
        bail!("[base] image {image}: the index names a {media_type:?}, not an OCI manifest");
    }
    let digest = sha256_of(&bytes);
    let layout = dir(cache).join(digest.digest());
    if !layout.join(crate::oci::store::INDEX_JSON).is_file() {
        pull_into(&client, &r.repository, &bytes, &layout)
            .with_context(|| format!("pulling the base image {image}"))?;
    }
    crate::support::fsx::create_dir_all(&dir(cache).join("refs"))?;
    crate::support::fsx::atomic_write(&ref_memo(cache, image), digest.digest().as_bytes())?;
    Ok(layout)
}

fn unreachable(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<crate::registry::RegistryError>(),
            Some(crate::registry::RegistryError::Unreachable { .. })
        )
    })
}

/// The linux/amd64 manifest of an index.
fn amd64(index: &ImageIndex) -> Result<&Descriptor> {
    index
        .manifests()
        .iter()
        .find(|d| {
            d.platform().as_ref().is_some_and(|p| {
                p.os().to_string() == "linux" && p.architecture().to_string() == "amd64"
            })
        })
        .context("its index has no linux/amd64 image")
}

/// Fetches the config and the layers of `manifest` into a new layout at `layout` (made beside
/// it under a temp name, renamed into place when complete).
fn pull_into(client: &Client, repo: &str, manifest: &[u8], layout: &Path) -> Result<()> {
    let m: ImageManifest = serde_json::from_slice(manifest).context("parsing its manifest")?;
    let parent = layout.parent().expect("under oci-bases");
    crate::support::fsx::create_dir_all(parent)?;
    let tmp = tempfile::Builder::new()
        .prefix(crate::support::fsx::TMP_PREFIX)
        .tempdir_in(parent)?;
    let store = crate::oci::store::Store::ensure(tmp.path())?;
    let got = AtomicU64::new(0);
    for d in std::iter::once(m.config()).chain(m.layers()) {
        client.fetch_blob(repo, d.digest(), d.size(), &store.blob_dir(), &got)?;
    }
    let (info, _) = store.put_blob_checked(manifest)?;
    let entry = DescriptorBuilder::default()
        .media_type(MediaType::ImageManifest)
        .digest(info.digest)
        .size(info.size)
        .annotations([(
            oci_spec::image::ANNOTATION_REF_NAME.to_string(),
            REF_NAME.to_string(),
        )])
        .build()?;
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(vec![entry])
        .build()?;
    store.write_index(&index)?;
    let _ = std::fs::remove_dir_all(layout);
    crate::support::fsx::rename(&tmp.keep(), layout)
}
