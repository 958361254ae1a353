//! # A logged-in connection to a cloud: Keystone v3 tokens, the catalog, requests with retries
//!
//! Every request has a timeout (connect 10 s; `--timeout` for an answer, default 60 s; an
//! upload gets that plus one second per MiB). GET, DELETE and PATCH, and creates that carry
//! their own id, are retried with backoff (0.5, 1, 2, 4 s) on 502/503/504 and on a dropped or
//! refused connection; a 401 on a password or application-credential login logs in again once.
//! Tokens and secrets are never put into an error or a log line: errors carry the method, the
//! URL (no query secrets exist in Glance's API), the status and the server's message.

use std::time::Duration;

use anyhow::{Context, Result};
use reqwest::StatusCode;
use reqwest::blocking::{Client, RequestBuilder, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::cloud::{Cloud, Method, Secret};
use crate::support::progress::Progress;

/// A request the cloud refused or could not answer; the exit code depends on it.
#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    /// The cloud answered with an error status.
    #[error("{method} {url}: {status}: {message}{}", hint.as_ref().map(|h| format!("\n  hint: {h}")).unwrap_or_default())]
    Status {
        method: String,
        url: String,
        status: u16,
        message: String,
        hint: Option<String>,
    },
    /// No answer in time, or the connection failed after every retry.
    #[error("{method} {url}: {message}")]
    Unreachable {
        method: String,
        url: String,
        message: String,
    },
}

impl CloudError {
    pub fn status(&self) -> Option<u16> {
        match self {
            CloudError::Status { status, .. } => Some(*status),
            CloudError::Unreachable { .. } => None,
        }
    }
}

/// A connection to one cloud's image service.
pub struct Session {
    pub cloud: Cloud,
    client: Client,
    token: Option<Secret>,
    /// The Glance endpoint, ending in `/v2`.
    pub image_url: String,
    /// The project the token is scoped to (None without Keystone).
    pub project_id: Option<String>,
    /// Nova's endpoint when the catalog lists one (for flavors in preflight).
    pub compute_url: Option<String>,
    pub timeout: Duration,
    progress: Progress,
}

#[derive(Deserialize)]
struct TokenBody {
    token: Token,
}

#[derive(Deserialize)]
struct Token {
    #[serde(default)]
    catalog: Vec<Service>,
    project: Option<IdName>,
}

#[derive(Deserialize)]
struct IdName {
    id: String,
}

#[derive(Deserialize)]
struct Service {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    endpoints: Vec<Endpoint>,
}

#[derive(Deserialize)]
struct Endpoint {
    interface: String,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    region_id: Option<String>,
    url: String,
}

/// The Glance v2 root of an endpoint: the catalog lists it with or without a version.
fn image_v2(url: &str) -> String {
    let u = url.trim_end_matches('/');
    if u.ends_with("/v2") {
        u.to_owned()
    } else {
        format!("{u}/v2")
    }
}

/// The Keystone v3 root of an `auth_url` (given with or without `/v3`).
fn identity_v3(url: &str) -> String {
    let u = url.trim_end_matches('/');
    if u.ends_with("/v3") {
        u.to_owned()
    } else {
        format!("{u}/v3")
    }
}

/// The server's own words: Glance and Keystone put them in different places.
fn message_of(body: &str) -> String {
    if let Ok(v) = serde_json::from_str::<Value>(body) {
        for p in [
            "/error/message",
            "/message",
            "/badRequest/message",
            "/itemNotFound/message",
        ] {
            if let Some(m) = v.pointer(p).and_then(Value::as_str) {
                return m.trim().to_owned();
            }
        }
    }
    // HTML or text: the visible words, shortened.
    let text: String = body
        .split('<')
        .map(|s| s.split_once('>').map(|(_, t)| t).unwrap_or(s))
        .collect::<Vec<_>>()
        .join(" ");
    let words: Vec<&str> = text.split_whitespace().collect();
    let s = words.join(" ");
    s.chars().take(300).collect()
}

fn hint_for(status: u16, what: &str) -> Option<String> {
    match status {
        401 => Some(format!(
            "the cloud did not accept the credentials ({what}): check the user, project and \
             password (or the application credential) in clouds.yaml / secure.yaml / OS_*; \
             a token may have expired"
        )),
        403 => Some(
            "the user lacks the role for this (e.g. public or community visibility needs an \
             admin); ask the cloud's admins or choose --visibility private|shared"
                .into(),
        ),
        400 => Some(
            "the cloud refused the request as invalid: a disk format or property it does not \
             accept? `strata preflight IMAGE --cloud NAME` checks the formats it takes"
                .into(),
        ),
        413 => Some("the image is bigger than the project's image quota allows".into()),
        415 => Some("the cloud refused the disk format or the content type".into()),
        _ => None,
    }
}

impl Session {
    /// Logs in (unless `auth_type: none`) and finds the image endpoint.
    pub fn open(cloud: Cloud, timeout: Duration, progress: &Progress) -> Result<Session> {
        crate::support::tls::init();
        let mut b = Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(timeout)
            .user_agent(concat!("strata/", env!("CARGO_PKG_VERSION")));
        if !cloud.verify {
            b = b.danger_accept_invalid_certs(true);
        }
        if let Some(ca) = &cloud.cacert {
            let pem = crate::support::fsx::read(ca)?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .with_context(|| format!("reading the CA certificate {ca:?}"))?;
            b = b.add_root_certificate(cert);
        }
        let client = b.build().context("making the HTTP client")?;
        let mut s = Session {
            image_url: String::new(),
            compute_url: None,
            project_id: None,
            token: None,
            client,
            cloud,
            timeout,
            progress: progress.clone(),
        };
        if s.cloud.method == Method::None {
            s.image_url = image_v2(
                s.cloud
                    .image_endpoint_override
                    .as_deref()
                    .unwrap_or_default(),
            );
        } else {
            s.login()?;
        }
        Ok(s)
    }

    fn login(&mut self) -> Result<()> {
        let c = &self.cloud;
        let a = &c.auth;
        let domain = |name: &Option<String>, id: &Option<String>| match (id, name) {
            (Some(id), _) => json!({ "id": id }),
            (None, Some(n)) => json!({ "name": n }),
            (None, None) => match (&a.domain_id, &a.domain_name) {
                (Some(id), _) => json!({ "id": id }),
                (None, Some(n)) => json!({ "name": n }),
                (None, None) => json!({ "id": "default" }),
            },
        };
        let user = || {
            let mut u = json!({});
            if let Some(id) = &a.user_id {
                u["id"] = json!(id);
            } else {
                u["name"] = json!(a.username);
                u["domain"] = domain(&a.user_domain_name, &a.user_domain_id);
            }
            u
        };
        let scope = || -> Option<Value> {
            if let Some(id) = &a.project_id {
                Some(json!({ "project": { "id": id } }))
            } else {
                a.project_name.as_ref().map(|n| {
                    json!({ "project": { "name": n,
                        "domain": domain(&a.project_domain_name, &a.project_domain_id) } })
                })
            }
        };
        let secret = |s: &Option<Secret>| s.as_ref().map(|s| s.expose().to_owned());
        let mut body = match c.method {
            Method::Password => {
                let mut u = user();
                u["password"] = json!(secret(&a.password));
                json!({ "auth": { "identity": { "methods": ["password"],
                    "password": { "user": u } } } })
            }
            Method::ApplicationCredential => {
                let mut ac = json!({ "secret": secret(&a.application_credential_secret) });
                if let Some(id) = &a.application_credential_id {
                    ac["id"] = json!(id);
                } else {
                    ac["name"] = json!(a.application_credential_name);
                    ac["user"] = user();
                }
                json!({ "auth": { "identity": { "methods": ["application_credential"],
                    "application_credential": ac } } })
            }
            Method::Token => json!({ "auth": { "identity": { "methods": ["token"],
                    "token": { "id": secret(&a.token) } } } }),
            Method::None => return Ok(()),
        };
        if c.method != Method::ApplicationCredential
            && let Some(s) = scope()
        {
            body["auth"]["scope"] = s;
        }
        let url = format!(
            "{}/auth/tokens",
            identity_v3(a.auth_url.as_deref().unwrap_or_default())
        );
        let what = format!("cloud {:?} from {}", c.name, c.source);
        let resp = self
            .retrying("POST", &url, true, || self.client.post(&url).json(&body))
            .map_err(|e| {
                // Keystone answers 404 for a token it does not know (expired, revoked).
                if c.method == Method::Token && super::glance::is_status(&e, 404) {
                    CloudError::Status {
                        method: "POST".into(),
                        url: url.clone(),
                        status: 401,
                        message: "Keystone does not know this token: it expired or was revoked"
                            .into(),
                        hint: Some(
                            "get a new one (`openstack token issue`) or use password or \
                             application-credential auth"
                                .into(),
                        ),
                    }
                    .into()
                } else {
                    e
                }
            })
            .with_context(|| format!("logging in to Keystone ({what})"))?;
        let token = resp
            .headers()
            .get("X-Subject-Token")
            .and_then(|v| v.to_str().ok())
            .map(Secret::new)
            .with_context(|| format!("Keystone at {url} answered without X-Subject-Token"))?;
        let t: TokenBody = resp
            .json()
            .with_context(|| format!("reading Keystone's token from {url}"))?;
        let pick = |kind: &str| -> Option<String> {
            let svc = t.token.catalog.iter().find(|s| s.kind == kind)?;
            svc.endpoints
                .iter()
                .filter(|e| e.interface == self.cloud.interface)
                .find(|e| match &self.cloud.region {
                    Some(r) => e.region.as_ref() == Some(r) || e.region_id.as_ref() == Some(r),
                    None => true,
                })
                .map(|e| e.url.clone())
        };
        self.image_url = match (&self.cloud.image_endpoint_override, pick("image")) {
            (Some(o), _) => image_v2(o),
            (None, Some(u)) => image_v2(&u),
            (None, None) => anyhow::bail!(
                "the catalog of cloud {:?} has no image service on the {} interface{}; \
                 set `image_endpoint_override` or another `interface`/`region_name`",
                self.cloud.name,
                self.cloud.interface,
                self.cloud
                    .region
                    .as_ref()
                    .map(|r| format!(" in region {r}"))
                    .unwrap_or_default()
            ),
        };
        self.compute_url = pick("compute").map(|u| u.trim_end_matches('/').to_owned());
        self.project_id = t.token.project.map(|p| p.id);
        self.token = Some(token);
        Ok(())
    }

    /// Adds the token (when there is one) to a request.
    pub fn authed(&self, r: RequestBuilder) -> RequestBuilder {
        let r = r.header("Accept", "application/json");
        match &self.token {
            Some(t) => r.header("X-Auth-Token", t.expose()),
            None => r,
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Sends a request made by `make` (again on a retry); a non-success status is a
    /// [`CloudError`]. `retry`: safe to send twice.
    pub fn retrying(
        &self,
        method: &str,
        url: &str,
        retry: bool,
        make: impl Fn() -> RequestBuilder,
    ) -> Result<Response> {
        let tries = if retry { 5 } else { 1 };
        let mut delay = Duration::from_millis(500);
        for attempt in 1..=tries {
            let last = attempt == tries;
            match make().send() {
                Ok(r) if r.status().is_success() => return Ok(r),
                Ok(r)
                    if !last
                        && matches!(
                            r.status(),
                            StatusCode::BAD_GATEWAY
                                | StatusCode::SERVICE_UNAVAILABLE
                                | StatusCode::GATEWAY_TIMEOUT
                        ) =>
                {
                    self.progress.say(format!(
                        "{method} {url}: {}; retrying in {:.1}s ({attempt}/{})",
                        r.status(),
                        delay.as_secs_f64(),
                        tries - 1
                    ));
                }
                Ok(r) => {
                    let status = r.status().as_u16();
                    let body = r.text().unwrap_or_default();
                    return Err(CloudError::Status {
                        method: method.into(),
                        url: url.into(),
                        status,
                        message: message_of(&body),
                        hint: hint_for(status, &format!("cloud {:?}", self.cloud.name)),
                    }
                    .into());
                }
                Err(e) if !last && (e.is_connect() || e.is_request() || e.is_body()) => {
                    self.progress.say(format!(
                        "{method} {url}: {}; retrying in {:.1}s ({attempt}/{})",
                        short(&e),
                        delay.as_secs_f64(),
                        tries - 1
                    ));
                }
                Err(e) => {
                    return Err(CloudError::Unreachable {
                        method: method.into(),
                        url: url.into(),
                        message: if e.is_timeout() {
                            format!(
                                "no answer within {}s (--timeout); is the cloud up and reachable?",
                                self.timeout.as_secs()
                            )
                        } else {
                            short(&e)
                        },
                    }
                    .into());
                }
            }
            std::thread::sleep(delay);
            delay *= 2;
        }
        unreachable!("the last attempt returns")
    }

    /// A GET on the image service, decoded.
    pub fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        let url = format!("{}{path}", self.image_url);
        let r = self.retrying("GET", &url, true, || self.authed(self.client.get(&url)))?;
        r.json()
            .with_context(|| format!("reading the answer of GET {url}"))
    }
}

fn short(e: &dyn std::error::Error) -> String {
    crate::support::error::chain_line(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_normalised() {
        assert_eq!(image_v2("http://g:9292"), "http://g:9292/v2");
        assert_eq!(image_v2("http://g:9292/v2/"), "http://g:9292/v2");
        assert_eq!(identity_v3("http://k:5000"), "http://k:5000/v3");
        assert_eq!(identity_v3("http://k:5000/v3/"), "http://k:5000/v3");
    }

    #[test]
    fn server_messages_are_found_in_json_and_html() {
        assert_eq!(
            message_of(
                r#"{"error": {"code": 401, "message": "The request you have made requires authentication."}}"#
            ),
            "The request you have made requires authentication."
        );
        assert_eq!(
            message_of(
                "<html><body><h1>409 Conflict</h1>Image ID abc already exists.</body></html>"
            ),
            "409 Conflict Image ID abc already exists."
        );
    }
}
