//! # Who strata is at a registry
//!
//! Credentials come, first found wins, from: `--username` with `--password-stdin`;
//! `STRATA_REGISTRY_USER` / `STRATA_REGISTRY_PASSWORD`; Docker's config (`$DOCKER_CONFIG/
//! config.json`, else `~/.docker/config.json`): `credHelpers[host]`, then `auths[host].auth`
//! (base64 `user:password`, or `username`/`password`), then `credsStore` — a helper runs as
//! `docker-credential-NAME get` with the host on stdin, as Docker runs it. With none, strata is
//! anonymous.
//!
//! The registry says how to authenticate in its `WWW-Authenticate` answer to a 401
//! ([`Challenge`]): `Basic` takes the credentials on every request; `Bearer` sends them to the
//! token realm with the `service` and the scopes the operation needs — for a cross-repository
//! mount both `repository:SRC:pull` and `repository:DST:pull,push` in one token — and the token
//! goes on the requests. Passwords and tokens are [`Secret`]s: never printed, never serialised.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use base64::Engine as _;
use serde::Deserialize;

use crate::support::error::BadInput;
pub use crate::support::secret::Secret;

/// A user name and password for one registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: Secret,
    /// Where they came from (for messages: `--username`, `STRATA_REGISTRY_USER`, a file…).
    pub from: String,
}

impl Credentials {
    /// `Basic base64(user:password)`.
    pub fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password.expose());
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

/// Where credentials are looked for.
#[derive(Debug, Clone, Default)]
pub struct CredentialSource {
    /// From the flags or the environment; used for every registry.
    pub explicit: Option<Credentials>,
    /// Docker's config file (None: do not read one).
    pub docker_config: Option<PathBuf>,
}

impl CredentialSource {
    /// Flags, then the environment, then Docker's config where it lives.
    pub fn from_env(explicit: Option<Credentials>) -> CredentialSource {
        let env_user = std::env::var("STRATA_REGISTRY_USER").ok();
        let env_pass = std::env::var("STRATA_REGISTRY_PASSWORD").ok();
        let explicit = explicit.or(match (env_user, env_pass) {
            (Some(u), Some(p)) if !u.is_empty() => Some(Credentials {
                username: u,
                password: Secret::new(p),
                from: "STRATA_REGISTRY_USER/STRATA_REGISTRY_PASSWORD".into(),
            }),
            _ => None,
        });
        let docker_config = std::env::var_os("DOCKER_CONFIG")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")))
            .map(|d| d.join("config.json"));
        CredentialSource {
            explicit,
            docker_config,
        }
    }

    /// The credentials for `host` (`host[:port]`), if any.
    pub fn for_registry(&self, host: &str) -> Result<Option<Credentials>> {
        if let Some(c) = &self.explicit {
            return Ok(Some(c.clone()));
        }
        match &self.docker_config {
            Some(p) if p.is_file() => docker_config_credentials(p, host),
            _ => Ok(None),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, DockerAuth>,
    #[serde(default)]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default)]
    creds_store: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct DockerAuth {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// `https://host:port/v1/` → `host:port` (Docker's config keys come in both forms).
fn normalize_host(key: &str) -> &str {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    k.split('/').next().unwrap_or(k)
}

/// Docker Hub's credentials are kept under its v1 index name.
fn config_keys(host: &str) -> Vec<&str> {
    if host == super::reference::DOCKER_HUB {
        vec![host, "index.docker.io", "docker.io"]
    } else {
        vec![host]
    }
}

fn docker_config_credentials(path: &Path, host: &str) -> Result<Option<Credentials>> {
    let data = crate::support::fsx::read(path)?;
    // Never quote the file's text in an error: it holds passwords.
    let config: DockerConfig = serde_json::from_slice(&data).map_err(|e| {
        BadInput(format!(
            "Docker's config {path:?} is not valid JSON (line {}, column {}); fix or move it, or \
             set DOCKER_CONFIG",
            e.line(),
            e.column()
        ))
    })?;
    let keys = config_keys(host);
    let from = |what: &str| format!("{} ({what})", path.display());
    for (k, helper) in &config.cred_helpers {
        if keys.contains(&normalize_host(k)) {
            return run_helper(helper, k, &from(&format!("credHelpers {helper}")));
        }
    }
    for (k, a) in &config.auths {
        if !keys.contains(&normalize_host(k)) {
            continue;
        }
        if let Some(auth) = a.auth.as_deref().filter(|s| !s.is_empty()) {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok());
            let Some((u, p)) = raw.as_deref().and_then(|r| r.split_once(':')) else {
                return Err(BadInput(format!(
                    "the `auth` of {k:?} in {path:?} is not base64 of user:password"
                ))
                .into());
            };
            return Ok(Some(Credentials {
                username: u.into(),
                password: Secret::new(p),
                from: from("auths"),
            }));
        }
        if let (Some(u), Some(p)) = (&a.username, &a.password) {
            return Ok(Some(Credentials {
                username: u.clone(),
                password: Secret::new(p.clone()),
                from: from("auths"),
            }));
        }
    }
    if let Some(store) = &config.creds_store {
        return run_helper(store, host, &from(&format!("credsStore {store}")));
    }
    Ok(None)
}

#[derive(Deserialize)]
struct HelperAnswer {
    #[serde(rename = "Username")]
    username: String,
    #[serde(rename = "Secret")]
    secret: String,
}

/// `docker-credential-NAME get` with the server on stdin; "not found" means anonymous.
fn run_helper(name: &str, server: &str, from: &str) -> Result<Option<Credentials>> {
    let tool = format!("docker-credential-{name}");
    let out = match crate::support::cmd::output_with_stdin(Command::new(&tool), server.as_bytes()) {
        Ok(out) => out,
        Err(e) if e.to_string().contains("credentials not found") => return Ok(None),
        Err(e) => {
            return Err(e).with_context(|| format!("asking {tool} for {server}'s credentials"));
        }
    };
    let a: HelperAnswer = serde_json::from_slice(&out)
        .map_err(|_| anyhow::anyhow!("{tool} answered something that is not its JSON"))?;
    if a.username == "<token>" {
        anyhow::bail!(
            "{tool} holds an identity token for {server} (OAuth refresh token), which strata does \
             not exchange: log in with a user name and password, or pass --username and \
             --password-stdin"
        );
    }
    Ok(Some(Credentials {
        username: a.username,
        password: Secret::new(a.secret),
        from: from.into(),
    }))
}

/// A parsed `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

impl Challenge {
    /// Parses `Bearer realm="…",service="…",scope="…"` or `Basic realm="…"`.
    pub fn parse(header: &str) -> Option<Challenge> {
        let (scheme, params) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
        let params = parse_params(params);
        match scheme.to_ascii_lowercase().as_str() {
            "basic" => Some(Challenge::Basic),
            "bearer" => Some(Challenge::Bearer {
                realm: params.get("realm")?.clone(),
                service: params.get("service").cloned(),
            }),
            _ => None,
        }
    }
}

/// `a="x, y",b=z` → {a: "x, y", b: z}: commas inside quotes belong to the value.
fn parse_params(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let (value, next) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"').unwrap_or(q.len());
            (q[..end].to_string(), q.get(end + 1..).unwrap_or(""))
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        out.insert(key, value);
        rest = next.trim_start_matches([',', ' ']);
    }
    out
}

/// The scope a token needs for a repository: `repository:NAME:pull` or `…:pull,push`.
pub fn scope(repository: &str, push: bool) -> String {
    let actions = if push { "pull,push" } else { "pull" };
    format!("repository:{repository}:{actions}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse() {
        assert_eq!(
            Challenge::parse(
                r#"Bearer realm="http://127.0.0.1:1/token",service="reg",scope="repository:a:pull,push""#
            ),
            Some(Challenge::Bearer {
                realm: "http://127.0.0.1:1/token".into(),
                service: Some("reg".into())
            })
        );
        assert_eq!(
            Challenge::parse(r#"Basic realm="basic-realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(Challenge::parse("Negotiate"), None);
    }

    #[test]
    fn docker_config_auths_and_secrets_stay_hidden() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
        std::fs::write(
            &p,
            format!(r#"{{"auths": {{"https://reg.example:5000/v1/": {{"auth": "{auth}"}}}}}}"#),
        )
        .unwrap();
        let src = CredentialSource {
            explicit: None,
            docker_config: Some(p.clone()),
        };
        let c = src.for_registry("reg.example:5000").unwrap().unwrap();
        assert_eq!(c.username, "alice");
        assert_eq!(c.password.expose(), "s3cret");
        assert!(!format!("{c:?}").contains("s3cret"));
        assert!(src.for_registry("other:5000").unwrap().is_none());
        std::fs::write(&p, r#"{"auths": {"x": {"auth": "s3cret-not-base64!"}}"#).unwrap();
        let e = src.for_registry("x").unwrap_err().to_string();
        assert!(!e.contains("s3cret"), "{e}");
    }
}
