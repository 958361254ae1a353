//! # Which cloud, and how to log in: `clouds.yaml`, `secure.yaml` and `OS_*`, as openstacksdk reads them
//!
//! - `--cloud NAME` (or `OS_CLOUD`) picks a cloud from `clouds.yaml`, found as the `openstack`
//!   CLI finds it: `OS_CLIENT_CONFIG_FILE`, else the first of `./`, `~/.config/openstack/`,
//!   `/etc/openstack/` holding `clouds.yaml` (or `.yml`, `.json`). `secure.yaml` beside it (or
//!   `OS_CLIENT_SECURE_FILE`) is merged over it: that is where passwords usually live.
//! - Without a cloud name, the `OS_*` variables (`OS_AUTH_URL`, `OS_USERNAME`, `OS_PASSWORD`,
//!   `OS_PROJECT_NAME`, …, `OS_APPLICATION_CREDENTIAL_ID`/`_SECRET`, `OS_AUTH_TYPE`,
//!   `OS_IMAGE_ENDPOINT_OVERRIDE`) describe it, as openstacksdk's `envvars` cloud does.
//! - Keys strata does not use are ignored, as openstacksdk does. Passwords, secrets and tokens
//!   are [`Secret`]s: never printed, never serialised, and a malformed one is reported without
//!   its value.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Deserialize;

use crate::support::error::{BadInput, Located};
pub use crate::support::secret::Secret;
use crate::support::suggest::nearest;

/// `clouds.<name>.auth` (and its `OS_*` twins).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Auth {
    pub auth_url: Option<String>,
    pub username: Option<String>,
    pub user_id: Option<String>,
    pub password: Option<Secret>,
    pub user_domain_name: Option<String>,
    pub user_domain_id: Option<String>,
    pub project_name: Option<String>,
    pub project_id: Option<String>,
    pub project_domain_name: Option<String>,
    pub project_domain_id: Option<String>,
    pub domain_name: Option<String>,
    pub domain_id: Option<String>,
    pub application_credential_id: Option<String>,
    pub application_credential_name: Option<String>,
    pub application_credential_secret: Option<Secret>,
    pub token: Option<Secret>,
}

/// One entry of `clouds:` — the keys strata uses; others are ignored.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RawCloud {
    pub auth: Auth,
    pub auth_type: Option<String>,
    pub region_name: Option<String>,
    pub interface: Option<String>,
    pub image_endpoint_override: Option<String>,
    pub verify: Option<bool>,
    pub cacert: Option<String>,
    pub api_timeout: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
struct CloudsFile {
    #[serde(default)]
    clouds: BTreeMap<String, RawCloud>,
}

/// How strata logs in.
#[derive(Debug, Clone, PartialEq)]
pub enum Method {
    Password,
    ApplicationCredential,
    Token,
    /// `auth_type: none`: a Glance without Keystone, at `image_endpoint_override`.
    None,
}

/// A cloud, resolved: where its Keystone is, who logs in, which endpoint to use.
#[derive(Debug, Clone)]
pub struct Cloud {
    /// The cloud's name (`envvars` for `OS_*`), for messages and the publish record.
    pub name: String,
    /// Where it was read from, for messages.
    pub source: String,
    pub method: Method,
    pub auth: Auth,
    pub region: Option<String>,
    /// `public` (default), `internal` or `admin`.
    pub interface: String,
    pub image_endpoint_override: Option<String>,
    pub verify: bool,
    pub cacert: Option<PathBuf>,
}

const NAMES: [&str; 3] = ["clouds.yaml", "clouds.yml", "clouds.json"];
const SECURE_NAMES: [&str; 3] = ["secure.yaml", "secure.yml", "secure.json"];

/// The directories openstacksdk searches, in order.
fn search_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![PathBuf::from(".")];
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME") {
        dirs.push(PathBuf::from(x).join("openstack"));
    }
    if let Some(h) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(h).join(".config/openstack"));
    }
    dirs.push(PathBuf::from("/etc/openstack"));
    dirs
}

fn find(env: &str, names: &[&str]) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Some(PathBuf::from(p));
    }
    search_dirs()
        .into_iter()
        .flat_map(|d| names.iter().map(move |n| d.join(n)))
        .find(|p| p.is_file())
}

/// Parses one clouds/secure file; a YAML or type error names the file, line and key.
pub fn parse_file(text: &str, file: &Path) -> Result<BTreeMap<String, RawCloud>> {
    let parsed: CloudsFile = serde_yaml::from_str(text).map_err(|e| {
        let (line, column) = e
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((0, 0));
        // serde_yaml prefixes type errors with the path of the key ("clouds.lab.auth: …").
        let msg = e.to_string();
        let (key, message) = match msg.split_once(": ") {
            Some((k, m)) if !k.contains(' ') => (k.to_owned(), m.to_owned()),
            _ => (String::new(), msg.clone()),
        };
        let message = message
            .split(" at line ")
            .next()
            .unwrap_or(&message)
            .to_owned();
        Located {
            file: file.to_path_buf(),
            line,
            column,
            key,
            message,
            hint: Some(
                "see https://docs.openstack.org/openstacksdk/latest/user/config/configuration.html"
                    .into(),
            ),
        }
    })?;
    Ok(parsed.clouds)
}

fn read(path: &Path) -> Result<BTreeMap<String, RawCloud>> {
    let text = crate::support::error::read_text(path, "the cloud configuration")?;
    parse_file(&text, path)
}

/// Overlays `secure` values on `base` (what openstacksdk does with `secure.yaml`).
fn merge(base: &mut RawCloud, secure: RawCloud) {
    macro_rules! over {
        ($($f:ident).+) => {
            if secure.$($f).+.is_some() {
                base.$($f).+ = secure.$($f).+.clone();
            }
        };
    }
    over!(auth.auth_url);
    over!(auth.username);
    over!(auth.user_id);
    over!(auth.password);
    over!(auth.user_domain_name);
    over!(auth.user_domain_id);
    over!(auth.project_name);
    over!(auth.project_id);
    over!(auth.project_domain_name);
    over!(auth.project_domain_id);
    over!(auth.domain_name);
    over!(auth.domain_id);
    over!(auth.application_credential_id);
    over!(auth.application_credential_name);
    over!(auth.application_credential_secret);
    over!(auth.token);
    over!(auth_type);
    over!(region_name);
    over!(interface);
    over!(image_endpoint_override);
    over!(verify);
    over!(cacert);
    over!(api_timeout);
}

/// Finds the cloud to use: `name` (from `--cloud` or `OS_CLOUD`) in clouds.yaml, else `OS_*`.
pub fn resolve(name: Option<&str>) -> Result<Cloud> {
    let name = name
        .map(str::to_owned)
        .or_else(|| std::env::var("OS_CLOUD").ok().filter(|s| !s.is_empty()));
    match name {
        Some(name) => from_files(&name),
        None => from_env(),
    }
}

fn from_files(name: &str) -> Result<Cloud> {
    let Some(path) = find("OS_CLIENT_CONFIG_FILE", &NAMES) else {
        return Err(BadInput(format!(
            "cloud {name:?}: no clouds.yaml found (looked in OS_CLIENT_CONFIG_FILE, ./, \
             ~/.config/openstack/, /etc/openstack/); write one (openstack's clouds.yaml format) \
             or set the OS_* variables and leave --cloud out"
        ))
        .into());
    };
    let mut clouds = read(&path)?;
    let secure = find("OS_CLIENT_SECURE_FILE", &SECURE_NAMES)
        .or_else(|| {
            let dir = path.parent()?;
            SECURE_NAMES
                .iter()
                .map(|n| dir.join(n))
                .find(|p| p.is_file())
        })
        .filter(|p| p.is_file());
    if let Some(s) = &secure {
        for (n, c) in read(s)? {
            if let Some(base) = clouds.get_mut(&n) {
                merge(base, c);
            }
        }
    }
    let Some(raw) = clouds.remove(name) else {
        let known: Vec<&str> = clouds.keys().map(String::as_str).collect();
        let hint = nearest(name, &known)
            .map(|n| format!(" (did you mean {n:?}?)"))
            .unwrap_or_default();
        return Err(BadInput(format!(
            "no cloud {name:?} in {path:?}{hint}; known clouds: {}",
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        ))
        .into());
    };
    let source = match &secure {
        Some(s) => format!("{} (+ {})", path.display(), s.display()),
        None => path.display().to_string(),
    };
    finish(name, source, raw)
}

fn env(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.is_empty())
}

fn from_env() -> Result<Cloud> {
    let auth = Auth {
        auth_url: env("OS_AUTH_URL"),
        username: env("OS_USERNAME"),
        user_id: env("OS_USER_ID"),
        password: env("OS_PASSWORD").map(Secret::new),
        user_domain_name: env("OS_USER_DOMAIN_NAME"),
        user_domain_id: env("OS_USER_DOMAIN_ID"),
        project_name: env("OS_PROJECT_NAME").or_else(|| env("OS_TENANT_NAME")),
        project_id: env("OS_PROJECT_ID").or_else(|| env("OS_TENANT_ID")),
        project_domain_name: env("OS_PROJECT_DOMAIN_NAME"),
        project_domain_id: env("OS_PROJECT_DOMAIN_ID"),
        domain_name: env("OS_DOMAIN_NAME"),
        domain_id: env("OS_DOMAIN_ID"),
        application_credential_id: env("OS_APPLICATION_CREDENTIAL_ID"),
        application_credential_name: env("OS_APPLICATION_CREDENTIAL_NAME"),
        application_credential_secret: env("OS_APPLICATION_CREDENTIAL_SECRET").map(Secret::new),
        token: env("OS_TOKEN").map(Secret::new),
    };
    let raw = RawCloud {
        auth,
        auth_type: env("OS_AUTH_TYPE"),
        region_name: env("OS_REGION_NAME"),
        interface: env("OS_INTERFACE").or_else(|| env("OS_ENDPOINT_TYPE")),
        image_endpoint_override: env("OS_IMAGE_ENDPOINT_OVERRIDE"),
        verify: env("OS_INSECURE").map(|v| !matches!(v.as_str(), "1" | "true" | "True")),
        cacert: env("OS_CACERT"),
        api_timeout: None,
    };
    if raw.auth.auth_url.is_none() && raw.image_endpoint_override.is_none() {
        let known = find("OS_CLIENT_CONFIG_FILE", &NAMES)
            .and_then(|p| read(&p).ok())
            .map(|c| c.into_keys().collect::<Vec<_>>().join(", "))
            .filter(|s| !s.is_empty());
        return Err(BadInput(format!(
            "no cloud given: pass --cloud NAME (or set OS_CLOUD){}, or set OS_AUTH_URL and \
             the other OS_* variables (an openrc file does)",
            known
                .map(|k| format!("; clouds.yaml has: {k}"))
                .unwrap_or_default()
        ))
        .into());
    }
    finish("envvars", "OS_* environment variables".into(), raw)
}

/// Checks the auth settings are complete for their method; names the missing key.
fn finish(name: &str, source: String, raw: RawCloud) -> Result<Cloud> {
    let missing = |key: &str| -> anyhow::Error {
        BadInput(format!("cloud {name:?} ({source}): `{key}` is missing")).into()
    };
    let kind =
        raw.auth_type
            .as_deref()
            .unwrap_or(if raw.auth.application_credential_secret.is_some() {
                "v3applicationcredential"
            } else if raw.auth.token.is_some() && raw.auth.password.is_none() {
                "v3token"
            } else {
                "password"
            });
    let method = match kind {
        "password" | "v3password" => Method::Password,
        "v3applicationcredential" | "applicationcredential" | "application_credential" => {
            Method::ApplicationCredential
        }
        "token" | "v3token" => Method::Token,
        "none" | "noauth" => Method::None,
        other => {
            return Err(BadInput(format!(
                "cloud {name:?} ({source}): auth_type {other:?} is not supported by strata; \
                 use password, v3applicationcredential, token or none"
            ))
            .into());
        }
    };
    let a = &raw.auth;
    match method {
        Method::None => {
            if raw.image_endpoint_override.is_none() {
                return Err(missing(
                    "image_endpoint_override (auth_type none has no catalog)",
                ));
            }
        }
        _ => {
            if a.auth_url.is_none() {
                return Err(missing("auth.auth_url"));
            }
        }
    }
    match method {
        Method::Password => {
            if a.username.is_none() && a.user_id.is_none() {
                return Err(missing("auth.username"));
            }
            if a.password.is_none() {
                return Err(missing(
                    "auth.password (in clouds.yaml, secure.yaml or OS_PASSWORD)",
                ));
            }
        }
        Method::ApplicationCredential => {
            if a.application_credential_id.is_none() && a.application_credential_name.is_none() {
                return Err(missing("auth.application_credential_id"));
            }
            if a.application_credential_secret.is_none() {
                return Err(missing("auth.application_credential_secret"));
            }
        }
        Method::Token => {
            if a.token.is_none() {
                return Err(missing("auth.token"));
            }
        }
        Method::None => {}
    }
    let interface = raw
        .interface
        .clone()
        .unwrap_or_else(|| "public".into())
        .trim_end_matches("URL")
        .to_owned();
    if !["public", "internal", "admin"].contains(&interface.as_str()) {
        return Err(BadInput(format!(
            "cloud {name:?} ({source}): interface {interface:?} is not public, internal or admin"
        ))
        .into());
    }
    Ok(Cloud {
        name: name.to_owned(),
        source,
        method,
        auth: raw.auth,
        region: raw.region_name,
        interface,
        image_endpoint_override: raw.image_endpoint_override,
        verify: raw.verify.unwrap_or(true),
        cacert: raw.cacert.map(PathBuf::from),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLOUDS: &str = "\
clouds:
  lab:
    auth:
      auth_url: http://127.0.0.1:5000/v3
      username: admin
      password: s3cret-pw
      project_name: lab
      user_domain_name: Default
      project_domain_name: Default
    region_name: RegionOne
    interface: internal
    some_future_key: ignored
  noauth:
    auth_type: none
    image_endpoint_override: http://127.0.0.1:9292
";

    #[test]
    fn clouds_yaml_is_read_and_unknown_keys_are_ignored() {
        let c = parse_file(CLOUDS, Path::new("clouds.yaml")).unwrap();
        let lab = finish("lab", "t".into(), c["lab"].clone()).unwrap();
        assert_eq!(lab.method, Method::Password);
        assert_eq!(lab.interface, "internal");
        assert_eq!(lab.region.as_deref(), Some("RegionOne"));
        assert_eq!(lab.auth.password.as_ref().unwrap().expose(), "s3cret-pw");
        let n = finish("noauth", "t".into(), c["noauth"].clone()).unwrap();
        assert_eq!(n.method, Method::None);
    }

    #[test]
    fn secrets_never_show_in_debug_or_errors() {
        let c = parse_file(CLOUDS, Path::new("clouds.yaml")).unwrap();
        let lab = finish("lab", "t".into(), c["lab"].clone()).unwrap();
        assert!(!format!("{lab:?}").contains("s3cret-pw"));
        // A password of the wrong YAML type is still taken, never quoted in an error.
        let odd = "clouds:\n  x:\n    auth:\n      auth_url: http://k\n      username: u\n      password: 123456789\n";
        let c = parse_file(odd, Path::new("c.yaml")).unwrap();
        assert_eq!(c["x"].auth.password.as_ref().unwrap().expose(), "123456789");
        // A malformed file names file, line and key.
        let bad = "clouds:\n  x:\n    auth:\n      auth_url: [1, 2]\n";
        let e = parse_file(bad, Path::new("c.yaml")).unwrap_err();
        let l = e.downcast_ref::<Located>().unwrap();
        assert_eq!(l.line, 4, "{l:?}");
        assert!(l.key.contains("auth_url"), "{l:?}");
    }

    #[test]
    fn incomplete_clouds_name_the_missing_key() {
        let table = [
            ("auth:\n  username: u\n  password: p\n", "auth.auth_url"),
            (
                "auth:\n  auth_url: http://k\n  password: p\n",
                "auth.username",
            ),
            (
                "auth:\n  auth_url: http://k\n  username: u\n",
                "auth.password",
            ),
            (
                "auth_type: v3applicationcredential\nauth:\n  auth_url: http://k\n  application_credential_id: x\n",
                "application_credential_secret",
            ),
            ("auth_type: none\n", "image_endpoint_override"),
            (
                "auth_type: kerberos\nauth:\n  auth_url: http://k\n",
                "not supported",
            ),
        ];
        for (yaml, want) in table {
            let text = format!(
                "clouds:\n  c:\n{}",
                yaml.lines()
                    .map(|l| format!("    {l}\n"))
                    .collect::<String>()
            );
            let c = parse_file(&text, Path::new("c.yaml")).unwrap();
            let e = finish("c", "t".into(), c["c"].clone()).unwrap_err();
            assert!(format!("{e:#}").contains(want), "{yaml}: {e:#}");
        }
    }

    #[test]
    fn secure_yaml_overrides_clouds_yaml() {
        let mut c = parse_file(CLOUDS, Path::new("clouds.yaml")).unwrap();
        let s = parse_file(
            "clouds:\n  lab:\n    auth:\n      password: from-secure\n",
            Path::new("secure.yaml"),
        )
        .unwrap();
        let base = c.get_mut("lab").unwrap();
        merge(base, s["lab"].clone());
        assert_eq!(base.auth.password.as_ref().unwrap().expose(), "from-secure");
        assert_eq!(base.auth.username.as_deref(), Some("admin"));
    }
}
