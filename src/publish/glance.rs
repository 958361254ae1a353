//! # Glance v2, typed: the calls publish and preflight make
//!
//! Models carry the fields strata reads; custom properties land in [`Image::properties`]. Lists
//! follow `next` links and, asked for hidden images, make the second query Glance needs
//! (`os_hidden=true` lists only hidden ones). Uploads stream the file with an explicit
//! `Content-Length` (uwsgi front ends answer chunked bodies with 411) and never hold it in memory.

use std::collections::BTreeMap;
use std::io::Read;
use std::time::Duration;

use anyhow::{Context, Result};
use reqwest::blocking::Body;
use serde::Deserialize;
use serde_json::Value;

use super::session::{CloudError, Session};

/// An image as Glance shows it.
#[derive(Debug, Clone, Deserialize)]
pub struct Image {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    pub status: String,
    #[serde(default)]
    pub visibility: String,
    #[serde(default)]
    pub os_hidden: bool,
    #[serde(default)]
    pub protected: bool,
    #[serde(default)]
    pub disk_format: Option<String>,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub virtual_size: Option<u64>,
    #[serde(default)]
    pub os_hash_algo: Option<String>,
    #[serde(default)]
    pub os_hash_value: Option<String>,
    #[serde(default)]
    pub min_disk: Option<u64>,
    #[serde(default)]
    pub min_ram: Option<u64>,
    #[serde(default)]
    pub created_at: String,
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Everything else: the custom properties (strings).
    #[serde(flatten)]
    pub properties: BTreeMap<String, Value>,
}

impl Image {
    pub fn prop(&self, key: &str) -> Option<&str> {
        self.properties.get(key).and_then(Value::as_str)
    }
}

#[derive(Deserialize)]
struct Page {
    images: Vec<Image>,
    next: Option<String>,
}

/// What `create` found.
pub enum Created {
    New(Box<Image>),
    /// 409: an image with this id exists (or existed: ids of deleted images stay taken).
    IdTaken,
}

impl Session {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.image_url)
    }

    /// Every image matching `filters`, hidden ones too when `hidden`.
    pub fn list_images(&self, filters: &[(&str, &str)], hidden: bool) -> Result<Vec<Image>> {
        let mut out = vec![];
        for os_hidden in if hidden {
            &[false, true][..]
        } else {
            &[false][..]
        } {
            let mut q: Vec<(String, String)> = filters
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            if *os_hidden {
                q.push(("os_hidden".into(), "true".into()));
            }
            q.push(("limit".into(), "100".into()));
            let mut url = self.url("/images");
            let mut first = true;
            loop {
                let r = self.retrying("GET", &url, true, || {
                    let r = self.authed(self.client().get(&url));
                    if first { r.query(&q) } else { r }
                })?;
                let page: Page = r
                    .json()
                    .with_context(|| format!("reading the image list from {url}"))?;
                out.extend(page.images);
                match page.next {
                    // `next` is "/v2/images?marker=…" with the filters kept.
                    Some(n) => {
                        let root = self.image_url.trim_end_matches("/v2");
                        url = format!("{root}{n}");
                        first = false;
                    }
                    None => break,
                }
            }
        }
        Ok(out)
    }

    /// The image, or None when Glance does not know it (404).
    pub fn image(&self, id: &str) -> Result<Option<Image>> {
        let url = self.url(&format!("/images/{id}"));
        match self.retrying("GET", &url, true, || self.authed(self.client().get(&url))) {
            Ok(r) => {
                Ok(Some(r.json().with_context(|| {
                    format!("reading image {id} from {url}")
                })?))
            }
            Err(e) if is_status(&e, 404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates an image record (queued). The body carries its own id, so a retry is safe.
    pub fn create(&self, body: &Value) -> Result<Created> {
        let url = self.url("/images");
        match self.retrying("POST", &url, true, || {
            self.authed(self.client().post(&url)).json(body)
        }) {
            Ok(r) => Ok(Created::New(Box::new(
                r.json().context("reading the created image from Glance")?,
            ))),
            Err(e) if is_status(&e, 409) => Ok(Created::IdTaken),
            Err(e) => Err(e),
        }
    }

    /// Streams `len` bytes of `reader` into the image (`PUT /file`), or into its staging area
    /// (`PUT /stage`) for an interoperable import.
    pub fn upload(
        &self,
        id: &str,
        reader: impl Read + Send + 'static,
        len: u64,
        stage: bool,
    ) -> Result<()> {
        let url = self.url(&format!(
            "/images/{id}/{}",
            if stage { "stage" } else { "file" }
        ));
        // An answer is due `timeout` after the last byte; allow one second per MiB to send.
        let timeout = self.timeout + Duration::from_secs(len >> 20);
        // Sent once (`retry` false): the body is a stream that cannot be read twice.
        let body = std::cell::Cell::new(Some(Body::sized(reader, len)));
        self.retrying("PUT", &url, false, || {
            let r = self
                .authed(self.client().put(&url))
                .header("Content-Type", "application/octet-stream")
                .header("Content-Length", len)
                .timeout(timeout);
            match body.take() {
                Some(b) => r.body(b),
                None => r,
            }
        })?;
        Ok(())
    }

    /// Starts a `glance-direct` import of the staged data.
    pub fn import(&self, id: &str) -> Result<()> {
        let url = self.url(&format!("/images/{id}/import"));
        let body = serde_json::json!({ "method": { "name": "glance-direct" } });
        self.retrying("POST", &url, false, || {
            self.authed(self.client().post(&url)).json(&body)
        })?;
        Ok(())
    }

    /// Deletes an image; one already gone is fine. Right after a cut upload Glance may still
    /// be closing the image's data and answer 500 or 409 for a moment: retried with backoff.
    pub fn delete(&self, id: &str) -> Result<()> {
        let url = self.url(&format!("/images/{id}"));
        let mut delay = Duration::from_millis(500);
        for attempt in 1..=5 {
            match self.retrying("DELETE", &url, true, || {
                self.authed(self.client().delete(&url))
            }) {
                Ok(_) => return Ok(()),
                Err(e) if is_status(&e, 404) => return Ok(()),
                Err(e) if attempt < 5 && (is_status(&e, 500) || is_status(&e, 409)) => {
                    std::thread::sleep(delay);
                    delay *= 2;
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!("the last attempt returns")
    }

    /// Applies a JSON patch (`[{"op": "replace", "path": "/os_hidden", "value": true}]`).
    pub fn patch(&self, id: &str, ops: &Value) -> Result<Image> {
        let url = self.url(&format!("/images/{id}"));
        let body = serde_json::to_vec(ops)?;
        let r = self.retrying("PATCH", &url, true, || {
            self.authed(self.client().patch(&url))
                .header(
                    "Content-Type",
                    "application/openstack-images-v2.1-json-patch",
                )
                .body(body.clone())
        })?;
        r.json()
            .with_context(|| format!("reading image {id} after PATCH"))
    }

    /// Shares the image with a project (`visibility: shared`).
    pub fn add_member(&self, id: &str, project: &str) -> Result<()> {
        let url = self.url(&format!("/images/{id}/members"));
        let body = serde_json::json!({ "member": project });
        match self.retrying("POST", &url, true, || {
            self.authed(self.client().post(&url)).json(&body)
        }) {
            Ok(_) => Ok(()),
            Err(e) if is_status(&e, 409) => Ok(()), // already a member
            Err(e) => Err(e),
        }
    }

    /// The import methods the cloud offers (`/v2/info/import`).
    pub fn import_methods(&self) -> Result<Vec<String>> {
        let v: Value = self.get_json("/info/import")?;
        Ok(v.pointer("/import-methods/value")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default())
    }

    /// A GET that may be 404 (an API the deployment does not enable).
    pub fn get_optional(&self, path: &str) -> Result<Option<Value>> {
        match self.get_json::<Value>(path) {
            Ok(v) => Ok(Some(v)),
            Err(e) if is_status(&e, 404) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Whether an error chain holds a [`CloudError`] with this status.
pub fn is_status(e: &anyhow::Error, status: u16) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<CloudError>())
        .any(|c| c.status() == Some(status))
}
