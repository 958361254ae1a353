//! # Manifests: PUT byte for byte, GET with the Accept list registries need
//!
//! A manifest is sent exactly as the store holds it, so the registry serves the store's digest;
//! the answer's `Docker-Content-Digest` is checked against the digest of the bytes. A `GET`
//! asks for OCI and Docker v2 manifests and indexes ([`ACCEPT_MANIFESTS`]) — without the OCI index type
//! some registries answer 404 for an index — and verifies the bytes against the digest asked
//! for, or against `Docker-Content-Digest`. A `PUT` answered `MANIFEST_BLOB_UNKNOWN` (a
//! registry whose blob store is eventually consistent) is retried with backoff.

use std::time::Duration;

use anyhow::{Context, Result};
use std::collections::BTreeMap;

use oci_spec::image::{Descriptor, Digest};
use reqwest::header::{ACCEPT, CONTENT_TYPE};

use super::auth::scope;
use super::client::{Client, Retry, error_of};
use crate::support::error::ChecksumMismatch;
use crate::support::hash::{canonical_json, sha256_of};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// What a manifest GET accepts.
pub const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.manifest.v1+json, \
application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.docker.distribution.manifest.list.v2+json";

const DIGEST_HEADER: &str = "Docker-Content-Digest";

/// An OCI artifact manifest (image-spec 1.1): `artifactType`, a config of its own media type,
/// layers, an optional `subject` and annotations; canonical JSON (sorted keys), so the same
/// inputs give the same digest on every machine. The descriptors' media types are as given.
pub fn artifact_manifest(
    artifact_type: &str,
    config: &Descriptor,
    layers: &[Descriptor],
    subject: Option<&Descriptor>,
    annotations: &BTreeMap<String, String>,
) -> Result<Vec<u8>> {
    let desc = |d: &Descriptor| {
        serde_json::json!({
            "mediaType": d.media_type().to_string(),
            "digest": d.digest().to_string(),
            "size": d.size(),
        })
    };
    let mut m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": desc(config),
        "layers": layers.iter().map(desc).collect::<Vec<_>>(),
    });
    if let Some(s) = subject {
        m["subject"] = desc(s);
    }
    if !annotations.is_empty() {
        m["annotations"] = serde_json::to_value(annotations)?;
    }
    canonical_json(&m)
}

/// A manifest as the registry served it.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub media_type: String,
    pub bytes: Vec<u8>,
    pub digest: Digest,
}

impl Client {
    /// PUTs a manifest under `reference` (a tag or its digest); returns its digest.
    pub fn put_manifest(
        &self,
        repository: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Digest> {
        let digest = sha256_of(bytes);
        let url = self.url(repository, &format!("manifests/{reference}"));
        let scopes = [scope(repository, true)];
        let mut delay = Duration::from_millis(500);
        for attempt in 1..=4 {
            let r = self.send("PUT", &url, &scopes, Retry::Idempotent, &|h| {
                Ok(h.put(&url)
                    .header(CONTENT_TYPE, media_type)
                    .body(bytes.to_vec()))
            })?;
            let status = r.status().as_u16();
            if status == 201 || status == 200 {
                let answered = r
                    .headers()
                    .get(DIGEST_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                if let Some(a) = answered
                    && a != digest.to_string()
                {
                    anyhow::bail!(
                        "{url}: the registry stored the manifest as {a}, not {digest}: it \
                         rewrote it; strata needs a registry that keeps manifests byte for byte"
                    );
                }
                return Ok(digest);
            }
            if status == 400 && attempt < 4 {
                let text = r.text().unwrap_or_default();
                if error_of(&text).0 == "MANIFEST_BLOB_UNKNOWN" {
                    std::thread::sleep(delay);
                    delay *= 2;
                    continue;
                }
                let (code, message) = error_of(&text);
                return Err(super::RegistryError::Status {
                    method: "PUT".into(),
                    url,
                    status,
                    hint: format!(
                        "{} refused a manifest of type {media_type}: it needs a registry that \
                         stores OCI image manifests (distribution 2.7+, Harbor, Zot, GHCR…)",
                        self.host
                    ),
                    code,
                    message,
                }
                .into());
            }
            return Err(self.status_error("PUT", &url, r));
        }
        unreachable!("the last try returns")
    }

    /// The digest a tag points at, if it exists.
    pub fn head_manifest(&self, repository: &str, reference: &str) -> Result<Option<Digest>> {
        let url = self.url(repository, &format!("manifests/{reference}"));
        let scopes = [scope(repository, false)];
        let r = self.send("HEAD", &url, &scopes, Retry::Idempotent, &|h| {
            Ok(h.head(&url).header(ACCEPT, ACCEPT_MANIFESTS))
        })?;
        match r.status().as_u16() {
            200 => Ok(r
                .headers()
                .get(DIGEST_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())),
            404 => Ok(None),
            _ => Err(self.status_error("HEAD", &url, r)),
        }
    }

    /// The repository's tags (empty when the repository does not exist).
    pub fn list_tags(&self, repository: &str) -> Result<Vec<String>> {
        #[derive(serde::Deserialize)]
        struct Tags {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let url = self.url(repository, "tags/list");
        let scopes = [scope(repository, false)];
        let r = self.send(
            "GET",
            &url,
            &scopes,
            Retry::Idempotent,
            &|h| Ok(h.get(&url)),
        )?;
        match r.status().as_u16() {
            200 => {}
            404 => return Ok(vec![]),
            _ => return Err(self.status_error("GET", &url, r)),
        }
        let t: Tags = r
            .json()
            .with_context(|| format!("reading the tag list from {url}"))?;
        Ok(t.tags.unwrap_or_default())
    }

    /// GETs a manifest by tag or digest (None: the registry has no such manifest).
    pub fn get_manifest(&self, repository: &str, reference: &str) -> Result<Option<Fetched>> {
        let url = self.url(repository, &format!("manifests/{reference}"));
        let scopes = [scope(repository, false)];
        let r = self.send("GET", &url, &scopes, Retry::Idempotent, &|h| {
            Ok(h.get(&url).header(ACCEPT, ACCEPT_MANIFESTS))
        })?;
        match r.status().as_u16() {
            200 => {}
            404 => return Ok(None),
            _ => return Err(self.status_error("GET", &url, r)),
        }
        let media_type = r
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        let answered: Option<Digest> = r
            .headers()
            .get(DIGEST_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let bytes = r
            .bytes()
            .with_context(|| format!("reading the manifest from {url}"))?
            .to_vec();
        let digest = sha256_of(&bytes);
        let expected = reference.parse::<Digest>().ok().or(answered);
        if let Some(e) = expected
            && e != digest
        {
            return Err(ChecksumMismatch {
                what: format!("manifest {url}"),
                algorithm: "sha256",
                expected: e.to_string(),
                found: digest.to_string(),
            }
            .into());
        }
        Ok(Some(Fetched {
            media_type,
            bytes,
            digest,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::image::MediaType;

    #[test]
    fn an_artifact_manifest_is_canonical_and_names_its_subject() {
        let d = |b: &[u8]| {
            Descriptor::new(
                MediaType::Other("application/x-test".into()),
                b.len() as u64,
                sha256_of(b),
            )
        };
        let ann = BTreeMap::from([("k".to_string(), "v".to_string())]);
        let a = artifact_manifest(
            "application/x-art",
            &d(b"c"),
            &[d(b"l")],
            Some(&d(b"s")),
            &ann,
        )
        .unwrap();
        let b = artifact_manifest(
            "application/x-art",
            &d(b"c"),
            &[d(b"l")],
            Some(&d(b"s")),
            &ann,
        )
        .unwrap();
        assert_eq!(a, b);
        let v: serde_json::Value = serde_json::from_slice(&a).unwrap();
        assert_eq!(v["artifactType"], "application/x-art");
        assert_eq!(v["mediaType"], OCI_MANIFEST);
        assert_eq!(v["subject"]["digest"], sha256_of(b"s").to_string());
        assert_eq!(v["config"]["mediaType"], "application/x-test");
        let m: oci_spec::image::ImageManifest = serde_json::from_slice(&a).unwrap();
        assert_eq!(m.layers().len(), 1);
    }
}
