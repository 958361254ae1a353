//! # One registry, spoken to over HTTP(S)
//!
//! [`Client::send`] is the one way a request goes out: it adds the authorization the scopes
//! need (fetching a bearer token for them first when the registry asked for tokens), answers a
//! 401 challenge once, and retries with backoff (0.5 s, doubling) on a connection error, a
//! timeout or a 5xx when the request is [`Retry::Idempotent`]. A request that must not be sent
//! twice blindly (an upload's final `PUT`) is [`Retry::Never`]: its caller checks what happened
//! (HEAD the blob) before sending again.
//!
//! Timeouts: connect 10 s; an answer within the read timeout (`Options::timeout`, 60 s); an
//! upload gets the read timeout plus a second per MiB it sends. TLS is verified; `--insecure`
//! speaks plain HTTP instead (a local registry).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result};
use reqwest::blocking::{Client as Http, RequestBuilder, Response};
use reqwest::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use serde::Deserialize;

use super::RegistryError;
use super::auth::{Challenge, CredentialSource, Credentials, Secret};
use crate::support::progress::Progress;

/// How to reach registries.
#[derive(Debug, Clone)]
pub struct Options {
    /// Plain HTTP instead of verified TLS.
    pub insecure: bool,
    pub credentials: CredentialSource,
    /// Bound on waiting for an answer (and on each read of a body).
    pub timeout: Duration,
    /// Extra tries after a failure that is worth another (5xx, dropped connection).
    pub retries: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            insecure: false,
            credentials: CredentialSource::default(),
            timeout: Duration::from_secs(60),
            retries: 4,
        }
    }
}

/// Whether a failed request may simply be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    Idempotent,
    Never,
}

#[derive(Default)]
struct AuthState {
    challenge: Option<Challenge>,
    /// Bearer tokens by scope set (sorted, space-joined).
    tokens: HashMap<String, Secret>,
}

/// A client of one registry.
pub struct Client {
    http: Http,
    /// `https://host:port` (or `http://` with --insecure).
    pub base: String,
    pub host: String,
    creds: Option<Credentials>,
    state: Mutex<AuthState>,
    opts: Options,
    progress: Progress,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<ErrorItem>,
}

#[derive(Deserialize)]
struct ErrorItem {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
}

/// A failed answer's distribution error code and message (`MANIFEST_INVALID`, "…").
pub fn error_of(body: &str) -> (String, String) {
    match serde_json::from_str::<ErrorBody>(body) {
        Ok(b) if !b.errors.is_empty() => (
            b.errors[0].code.clone(),
            b.errors
                .iter()
                .map(|e| e.message.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        ),
        _ => (
            String::new(),
            body.chars()
                .take(300)
                .collect::<String>()
                .trim()
                .to_string(),
        ),
    }
}

fn short(e: &dyn std::error::Error) -> String {
    crate::support::error::chain_line(e)
}

impl Client {
    pub fn new(host: &str, opts: &Options, progress: &Progress) -> Result<Client> {
        crate::support::tls::init();
        let http = Http::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(opts.timeout)
            .user_agent(concat!("strata/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("making the HTTP client")?;
        let scheme = if opts.insecure { "http" } else { "https" };
        let creds = opts.credentials.for_registry(host)?;
        Ok(Client {
            http,
            base: format!("{scheme}://{host}"),
            host: host.to_string(),
            creds,
            state: Mutex::default(),
            opts: opts.clone(),
            progress: progress.clone(),
        })
    }

    /// `GET /v2/`: one clear error before any work when the registry is unreachable, speaks
    /// no TLS, or refuses the credentials; learns how it authenticates (its challenge) once,
    /// before concurrent requests would each meet a 401.
    pub fn ping(&self) -> Result<()> {
        let url = format!("{}/v2/", self.base);
        let r = self.send("GET", &url, &[], Retry::Idempotent, &|h| Ok(h.get(&url)))?;
        match r.status().as_u16() {
            200 => Ok(()),
            404 => anyhow::bail!(
                "{url} answered 404: {} does not serve the OCI distribution API there",
                self.host
            ),
            _ => Err(self.status_error("GET", &url, r)),
        }
    }

    /// One line of progress.
    pub fn say(&self, msg: &str) {
        self.progress.say(msg);
    }

    /// The read timeout (uploads add to it).
    pub fn timeout(&self) -> Duration {
        self.opts.timeout
    }

    /// `BASE/v2/REPO/PATH`.
    pub fn url(&self, repository: &str, path: &str) -> String {
        format!("{}/v2/{repository}/{path}", self.base)
    }

    /// An absolute URL from a `Location` header (registries answer relative ones too).
    pub fn resolve(&self, location: &str) -> Result<String> {
        let base = reqwest::Url::parse(&self.base)?;
        Ok(base
            .join(location)
            .with_context(|| format!("the registry answered a bad Location {location:?}"))?
            .to_string())
    }

    fn authorization(&self, scopes: &[String]) -> Result<Option<String>> {
        let challenge = self.state.lock().unwrap().challenge.clone();
        match challenge {
            None => Ok(None),
            Some(Challenge::Basic) => Ok(self.creds.as_ref().map(Credentials::basic_header)),
            Some(Challenge::Bearer { realm, service }) => {
                let key = scope_key(scopes);
                if let Some(t) = self.state.lock().unwrap().tokens.get(&key) {
                    return Ok(Some(format!("Bearer {}", t.expose())));
                }
                let token = self.fetch_token(&realm, service.as_deref(), scopes)?;
                let header = format!("Bearer {}", token.expose());
                self.state.lock().unwrap().tokens.insert(key, token);
                Ok(Some(header))
            }
        }
    }

    /// Asks the token realm for a token with these scopes (credentials as Basic, if any).
    fn fetch_token(&self, realm: &str, service: Option<&str>, scopes: &[String]) -> Result<Secret> {
        let mut query: Vec<(&str, &str)> = Vec::new();
        if let Some(s) = service {
            query.push(("service", s));
        }
        for s in scopes {
            query.push(("scope", s));
        }
        let mut req = self.http.get(realm).query(&query);
        if let Some(c) = &self.creds {
            req = req.header(AUTHORIZATION, c.basic_header());
        }
        let resp = req.send().map_err(|e| RegistryError::Unreachable {
            url: realm.to_string(),
            reason: short(&e),
        })?;
        let status = resp.status().as_u16();
        if status != 200 {
            let (code, message) = error_of(&resp.text().unwrap_or_default());
            return Err(RegistryError::Status {
                method: "GET".into(),
                url: realm.to_string(),
                status,
                code,
                message,
                hint: self.refused_hint(status),
            }
            .into());
        }
        let t: TokenAnswer = resp
            .json()
            .with_context(|| format!("reading the token from {realm}"))?;
        t.token
            .or(t.access_token)
            .map(Secret::new)
            .ok_or_else(|| anyhow::anyhow!("the token realm {realm} answered no token"))
    }

    fn refused_hint(&self, status: u16) -> String {
        match (status, &self.creds) {
            (401, None) => format!(
                "{} wants credentials: pass --username with --password-stdin, set \
                 STRATA_REGISTRY_USER and STRATA_REGISTRY_PASSWORD, or `docker login {}`",
                self.host, self.host
            ),
            (401, Some(c)) => format!(
                "{} did not accept the credentials of user {:?} (from {}): check them",
                self.host, c.username, c.from
            ),
            (403, _) => format!(
                "the user lacks the permission for this at {}: ask for push (or pull) access",
                self.host
            ),
            _ => String::new(),
        }
    }

    /// Sends a request made by `make` (called again for every try), authorized for `scopes`.
    pub fn send(
        &self,
        method: &str,
        url: &str,
        scopes: &[String],
        retry: Retry,
        make: &dyn Fn(&Http) -> Result<RequestBuilder>,
    ) -> Result<Response> {
        let tries = match retry {
            Retry::Idempotent => self.opts.retries + 1,
            Retry::Never => 1,
        };
        let mut delay = Duration::from_millis(500);
        let mut challenged = false;
        let mut attempt = 1;
        loop {
            let mut req = make(&self.http)?;
            if let Some(h) = self.authorization(scopes)? {
                req = req.header(AUTHORIZATION, h);
            }
            let last = attempt >= tries;
            match req.send() {
                Ok(r) if r.status().as_u16() == 401 && !challenged => {
                    challenged = true;
                    let header = r
                        .headers()
                        .get(WWW_AUTHENTICATE)
                        .and_then(|v| v.to_str().ok())
                        .and_then(Challenge::parse);
                    match header {
                        Some(c) => {
                            let mut st = self.state.lock().unwrap();
                            st.challenge = Some(c);
                            st.tokens.clear();
                        }
                        None => return Err(self.status_error(method, url, r)),
                    }
                    continue;
                }
                Ok(r) if matches!(r.status().as_u16(), 401 | 403) => {
                    return Err(self.status_error(method, url, r));
                }
                // 5xx, and 429 (too many requests: the backoff is what it asks for).
                Ok(r) if (r.status().is_server_error() || r.status().as_u16() == 429) && !last => {
                    self.progress.say(format!(
                        "{method} {url}: {}; retrying in {:.1}s ({attempt}/{})",
                        r.status(),
                        delay.as_secs_f64(),
                        tries - 1
                    ));
                }
                Ok(r) => return Ok(r),
                Err(e) if tls_problem(&e).is_some() => {
                    return Err(RegistryError::Unreachable {
                        url: url.to_string(),
                        reason: format!("{} ({})", tls_problem(&e).unwrap_or(""), short(&e)),
                    }
                    .into());
                }
                Err(e)
                    if !last
                        && (e.is_connect() || e.is_request() || e.is_body() || e.is_timeout()) =>
                {
                    self.progress.say(format!(
                        "{method} {url}: {}; retrying in {:.1}s ({attempt}/{})",
                        short(&e),
                        delay.as_secs_f64(),
                        tries - 1
                    ));
                }
                Err(e) => {
                    let reason = if e.is_timeout() {
                        format!("no answer within {}s", self.opts.timeout.as_secs())
                    } else {
                        short(&e)
                    };
                    return Err(RegistryError::Unreachable {
                        url: url.to_string(),
                        reason,
                    }
                    .into());
                }
            }
            std::thread::sleep(delay);
            delay *= 2;
            attempt += 1;
        }
    }

    /// The error for an unexpected answer, with the registry's code and message.
    pub fn status_error(&self, method: &str, url: &str, r: Response) -> anyhow::Error {
        let status = r.status().as_u16();
        let (code, message) = error_of(&r.text().unwrap_or_default());
        let hint = match (status, code.as_str()) {
            (401 | 403, _) => self.refused_hint(status),
            (_, "MANIFEST_INVALID" | "UNSUPPORTED") | (415, _) => format!(
                "{} does not accept this manifest or media type: it needs a registry that \
                 serves OCI image manifests (distribution 2.7+, Harbor, Zot, GHCR…)",
                self.host
            ),
            _ => String::new(),
        };
        RegistryError::Status {
            method: method.into(),
            url: url.into(),
            status,
            code,
            message,
            hint,
        }
        .into()
    }
}

/// A TLS failure is not transient: no retry, and what it probably means.
fn tls_problem(e: &reqwest::Error) -> Option<&'static str> {
    let text = short(e);
    if text.contains("InvalidContentType") || text.contains("corrupt message") {
        Some("the registry does not speak TLS on this port")
    } else if text.contains("certificate") || text.contains("Certificate") {
        Some("the registry's TLS certificate is not trusted by this machine")
    } else {
        None
    }
}

fn scope_key(scopes: &[String]) -> String {
    let mut s = scopes.to_vec();
    s.sort();
    s.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distribution_errors_give_their_code_and_messages() {
        let (code, msg) = error_of(
            r#"{"errors":[{"code":"MANIFEST_BLOB_UNKNOWN","message":"blob unknown to registry","detail":"sha256:x"},{"code":"X","message":"second"}]}"#,
        );
        assert_eq!(code, "MANIFEST_BLOB_UNKNOWN");
        assert_eq!(msg, "blob unknown to registry; second");
        let (code, msg) = error_of("<html>502 Bad Gateway</html>");
        assert_eq!(code, "");
        assert!(msg.contains("502"));
    }

    #[test]
    fn scopes_key_tokens_whatever_their_order() {
        let a = scope_key(&["repository:b:pull".into(), "repository:a:pull,push".into()]);
        let b = scope_key(&["repository:a:pull,push".into(), "repository:b:pull".into()]);
        assert_eq!(a, b);
    }

    #[test]
    fn locations_resolve_against_the_registry() {
        let c = Client::new(
            "127.0.0.1:5000",
            &Options {
                insecure: true,
                ..Options::default()
            },
            &Progress::new(true),
        )
        .unwrap();
        assert_eq!(
            c.resolve("/v2/lab/blobs/uploads/u?_state=x").unwrap(),
            "http://127.0.0.1:5000/v2/lab/blobs/uploads/u?_state=x"
        );
        assert_eq!(
            c.resolve("https://other.example/upload/1").unwrap(),
            "https://other.example/upload/1"
        );
        assert_eq!(
            c.url("team/lab", "manifests/3.3.6"),
            "http://127.0.0.1:5000/v2/team/lab/manifests/3.3.6"
        );
    }
}
