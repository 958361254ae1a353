//! # A real OpenStack image service for the tests
//!
//! Starts a real Glance 33 — alone (`Mode::NoAuth`, behind the small identity filter of
//! `tests/cloud/lab_identity.py`) or behind a real Keystone 30 (`Mode::Keystone`) — on
//! 127.0.0.1 with `tests/cloud/up`, from the venv `scripts/install-cloud` makes. Without that
//! venv a test skips, saying why; with `CI=true` it fails instead.
//!
//! ```text
//! STATE/                  a temp dir (Cloud::start) or target/tmp/cloud/<test>-<mode> (shared)
//! ├── cloud.json          what `up` made: endpoints, pids, users, passwords, app credential
//! ├── clouds.yaml         the clouds below, for the strata binary (OS_CLIENT_CONFIG_FILE)
//! ├── logs/               glance.log, keystone.log, one per setup command
//! ├── glance/             configs, sqlite, images/, staging/, tasks/
//! └── keystone/           configs, sqlite, fernet keys
//! ```
//!
//! clouds.yaml: `lab-noauth` (NoAuth: `auth_type: none` + `image_endpoint_override`); `lab`
//! (Keystone password, admin of project `lab`), `lab-member` (password, role member),
//! `lab-appcred` (`v3applicationcredential` of the member user).
//!
//! The fixture's own calls (`images_all`, `delete_all`, `get`, …) go straight to Glance with
//! `ureq`, as the admin (a token in Keystone mode): they are the test's independent view.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use serde_json::{Value, json};

/// Cloud names of the generated clouds.yaml.
pub const LAB: &str = "lab";
pub const LAB_MEMBER: &str = "lab-member";
pub const LAB_APPCRED: &str = "lab-appcred";
pub const LAB_NOAUTH: &str = "lab-noauth";

/// How long one fixture HTTP call may take (Glance answers small calls in milliseconds).
const HTTP_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Glance alone; every request is the admin of project `lab` (no token needed).
    NoAuth,
    /// Keystone + Glance behind keystonemiddleware: no token → 401.
    Keystone,
}

impl Mode {
    fn arg(self) -> &'static str {
        match self {
            Mode::NoAuth => "noauth",
            Mode::Keystone => "keystone",
        }
    }
}

/// A Keystone user of the deployment (NoAuth: the identity the filter sets, no password).
#[derive(Clone, Debug)]
pub struct User {
    pub name: String,
    pub id: String,
    pub password: Option<String>,
}

#[derive(Clone, Debug)]
pub struct AppCredential {
    pub id: String,
    pub secret: String,
    /// The user it belongs to (the member user).
    pub user: String,
}

/// A running deployment. `Cloud::start` owns it (stopped on drop); `Cloud::shared` lends one
/// per mode per test binary.
pub struct Cloud {
    pub mode: Mode,
    pub state: PathBuf,
    /// Glance's root URL, e.g. `http://127.0.0.1:40123` (the API is under `/v2`).
    pub glance_url: String,
    /// Keystone's root URL (Keystone mode).
    pub keystone_url: Option<String>,
    /// The identity v3 URL clouds.yaml uses as `auth_url` (Keystone mode).
    pub auth_url: Option<String>,
    pub region: String,
    pub project_name: String,
    pub project_id: String,
    /// Admin of project `lab` (roles admin, member, reader).
    pub admin: User,
    /// Role member of project `lab` (Keystone mode).
    pub member: Option<User>,
    /// The member user's application credential (Keystone mode).
    pub app_credential: Option<AppCredential>,
    /// Everything `up` wrote (cloud.json), for what the fields above do not carry.
    pub json: Value,
    venv: PathBuf,
    agent: ureq::Agent,
    admin_token: Mutex<Option<String>>,
    /// Owned clouds: the temp dir (kept, with its logs, when the test panicked).
    owned: Option<tempfile::TempDir>,
}

/// A shared cloud lent to one test at a time, emptied of images before the test gets it.
pub struct SharedCloud {
    cloud: &'static Cloud,
    _turn: MutexGuard<'static, ()>,
}

impl std::ops::Deref for SharedCloud {
    type Target = Cloud;
    fn deref(&self) -> &Cloud {
        self.cloud
    }
}

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// The cloud venv, if `scripts/install-cloud` made it. Otherwise the test skips (saying why),
/// or fails with CI=true.
pub fn venv() -> Option<PathBuf> {
    let out = Command::new(super::repo().join("scripts/install-cloud"))
        .arg("--path")
        .output()
        .expect("scripts/install-cloud --path runs");
    assert!(out.status.success(), "scripts/install-cloud --path failed");
    let venv = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    if venv.join(".complete").exists() {
        return Some(venv);
    }
    let why = format!(
        "no cloud venv at {} (Glance, Keystone): run scripts/install-cloud",
        venv.display()
    );
    if ci() {
        panic!("{why}; with CI=true this fails instead of skipping");
    }
    eprintln!("SKIPPED: {why}");
    None
}

impl Cloud {
    /// Starts a deployment of its own in a temp dir; stopped when dropped. None: skipped.
    pub fn start(mode: Mode) -> Option<Cloud> {
        let venv = venv()?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("strata-cloud-{}-", mode.arg()))
            .tempdir()
            .unwrap();
        let state = dir.path().join("state");
        let mut cloud = Cloud::up(mode, &venv, &state);
        cloud.owned = Some(dir);
        Some(cloud)
    }

    /// One deployment per mode for the whole test binary, lent to one test at a time (tests
    /// that use it run one after another) with no image left in Glance. Its state is
    /// `target/tmp/cloud/<test binary>-<mode>` (kept for its logs until the next run); a
    /// watchdog stops the servers when the test binary exits. None: skipped.
    pub fn shared(mode: Mode) -> Option<SharedCloud> {
        static NOAUTH: OnceLock<Cloud> = OnceLock::new();
        static KEYSTONE: OnceLock<Cloud> = OnceLock::new();
        static NOAUTH_TURN: Mutex<()> = Mutex::new(());
        static KEYSTONE_TURN: Mutex<()> = Mutex::new(());
        let (cell, turn) = match mode {
            Mode::NoAuth => (&NOAUTH, &NOAUTH_TURN),
            Mode::Keystone => (&KEYSTONE, &KEYSTONE_TURN),
        };
        // Each test that skips says so.
        let venv = venv()?;
        // A test that panicked while holding its turn poisons the lock; the next one still runs
        // (on a cloud emptied below).
        let turn = turn.lock().unwrap_or_else(|e| e.into_inner());
        let cloud = cell.get_or_init(|| {
            let state = Path::new(env!("CARGO_TARGET_TMPDIR"))
                .join("cloud")
                .join(format!("{}-{}", env!("CARGO_CRATE_NAME"), mode.arg()));
            if state.exists() {
                // A previous run's watchdog stopped its servers; make sure, then clear.
                if state.join("cloud.json").exists() {
                    Cloud::down(&venv, &state);
                }
                std::fs::remove_dir_all(&state).unwrap();
            }
            Cloud::up(mode, &venv, &state)
        });
        cloud.delete_all();
        Some(SharedCloud { cloud, _turn: turn })
    }

    fn up(mode: Mode, venv: &Path, state: &Path) -> Cloud {
        let out = Command::new(venv.join("bin/python"))
            .arg(super::repo().join("tests/cloud/up"))
            .arg(state)
            .arg(mode.arg())
            .arg("--venv")
            .arg(venv)
            .arg("--watch-pid")
            .arg(std::process::id().to_string())
            .output()
            .expect("tests/cloud/up runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "tests/cloud/up {} {} failed ({}):\n{stderr}",
            state.display(),
            mode.arg(),
            out.status
        );
        eprint!("{stderr}");
        let json: Value =
            serde_json::from_slice(&std::fs::read(state.join("cloud.json")).unwrap()).unwrap();
        let s = |v: &Value| v.as_str().map(str::to_string);
        let user = |v: &Value| User {
            name: s(&v["name"]).unwrap(),
            id: s(&v["id"]).unwrap(),
            password: s(&v["password"]),
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(HTTP_TIMEOUT))
            .build()
            .into();
        Cloud {
            mode,
            state: state.to_path_buf(),
            glance_url: s(&json["glance_url"]).unwrap(),
            keystone_url: s(&json["keystone_url"]),
            auth_url: s(&json["auth_url"]),
            region: s(&json["region"]).unwrap(),
            project_name: s(&json["project"]["name"]).unwrap(),
            project_id: s(&json["project"]["id"]).unwrap(),
            admin: user(&json["users"]["admin"]),
            member: json["users"].get("member").map(user),
            app_credential: json.get("application_credential").map(|c| AppCredential {
                id: s(&c["id"]).unwrap(),
                secret: s(&c["secret"]).unwrap(),
                user: s(&c["user"]).unwrap(),
            }),
            json,
            venv: venv.to_path_buf(),
            agent,
            admin_token: Mutex::new(None),
            owned: None,
        }
    }

    /// clouds.yaml of this deployment (see the module doc for its clouds).
    pub fn clouds_yaml(&self) -> PathBuf {
        self.state.join("clouds.yaml")
    }

    /// The cloud name a test uses by default: `lab-noauth` or `lab`.
    pub fn default_cloud(&self) -> &'static str {
        match self.mode {
            Mode::NoAuth => LAB_NOAUTH,
            Mode::Keystone => LAB,
        }
    }

    /// Glance's socket address (the upstream of a fault proxy).
    pub fn glance_addr(&self) -> SocketAddr {
        self.glance_url
            .trim_start_matches("http://")
            .parse()
            .expect("glance_url is http://IP:PORT")
    }

    /// A copy of clouds.yaml in which every cloud's image endpoint is `image_url` (a fault
    /// proxy in front of Glance); Keystone clouds still authenticate against Keystone.
    pub fn clouds_yaml_via(&self, image_url: &str) -> PathBuf {
        let text = std::fs::read_to_string(self.clouds_yaml()).unwrap();
        let mut out = String::new();
        for line in text.lines() {
            if line.trim_start().starts_with("image_endpoint_override:") {
                continue;
            }
            out.push_str(line);
            out.push('\n');
            // A cloud's key: two spaces of indent under `clouds:`.
            if line.starts_with("  ") && !line.starts_with("   ") && line.ends_with(':') {
                out.push_str(&format!("    image_endpoint_override: {image_url:?}\n"));
            }
        }
        let port = image_url.rsplit(':').next().unwrap_or("x");
        let path = self.state.join(format!("clouds-via-{port}.yaml"));
        std::fs::write(&path, out).unwrap();
        path
    }

    /// Points a command (the strata binary) at this deployment: its clouds.yaml and `cloud`,
    /// with no `OS_*` variable of the caller's environment leaking in.
    pub fn configure(&self, c: &mut Command, cloud: &str) {
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("OS_") {
                c.env_remove(k);
            }
        }
        c.env("OS_CLIENT_CONFIG_FILE", self.clouds_yaml())
            .env("OS_CLOUD", cloud);
    }

    /// A project-scoped token of the admin user (cached). None in NoAuth mode.
    pub fn token(&self) -> Option<String> {
        if self.mode == Mode::NoAuth {
            return None;
        }
        let mut t = self.admin_token.lock().unwrap_or_else(|e| e.into_inner());
        if t.is_none() {
            *t = Some(
                self.password_token(&self.admin)
                    .expect("the admin gets a token"),
            );
        }
        t.clone()
    }

    /// A project-scoped (project `lab`) password token, or Keystone's status and body.
    pub fn password_token(&self, user: &User) -> Result<String, (u16, String)> {
        let password = user.password.as_deref().expect("a Keystone user");
        self.issue_token(json!({
            "identity": {"methods": ["password"], "password": {"user": {
                "name": user.name, "domain": {"id": "default"}, "password": password}}},
            "scope": {"project": {"name": self.project_name, "domain": {"id": "default"}}}
        }))
    }

    /// A token from the application credential, or Keystone's status and body.
    pub fn app_credential_token(&self) -> Result<String, (u16, String)> {
        let c = self.app_credential.as_ref().expect("Keystone mode");
        self.issue_token(json!({
            "identity": {"methods": ["application_credential"],
                "application_credential": {"id": c.id, "secret": c.secret}}
        }))
    }

    fn issue_token(&self, auth: Value) -> Result<String, (u16, String)> {
        let url = format!(
            "{}/auth/tokens",
            self.auth_url.as_ref().expect("Keystone mode")
        );
        let body = serde_json::to_vec(&json!({ "auth": auth })).unwrap();
        let mut r = self
            .agent
            .post(&url)
            .header("Content-Type", "application/json")
            .send(&body[..])
            .unwrap_or_else(|e| panic!("POST {url}: {e}"));
        let status = r.status().as_u16();
        let text = r.body_mut().read_to_string().unwrap_or_default();
        if status != 201 {
            return Err((status, text));
        }
        Ok(r.headers()["X-Subject-Token"].to_str().unwrap().to_string())
    }

    /// One call to Glance as the admin: `path` under the Glance root (e.g. `/v2/images`),
    /// `body` as (content type, bytes). Returns the status and the body; never fails on a
    /// status. Use `call_as` for another token (or none).
    pub fn call(&self, method: &str, path: &str, body: Option<(&str, &[u8])>) -> (u16, String) {
        self.call_as(self.token().as_deref(), method, path, body)
    }

    /// `call` with the given token (None: no X-Auth-Token header).
    pub fn call_as(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<(&str, &[u8])>,
    ) -> (u16, String) {
        self.call_to(&self.glance_url, token, method, path, body)
    }

    /// `call_as` against another base URL (a fault proxy in front of Glance).
    pub fn call_to(
        &self,
        base: &str,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<(&str, &[u8])>,
    ) -> (u16, String) {
        self.try_call_to(base, token, method, path, body)
            .unwrap_or_else(|e| panic!("{method} {base}{path}: {e}"))
    }

    /// `call_to` that returns the transport error (a cut connection, a timeout) instead of
    /// panicking.
    pub fn try_call_to(
        &self,
        base: &str,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<(&str, &[u8])>,
    ) -> Result<(u16, String), ureq::Error> {
        let mut req = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{base}{path}"))
            .header("Accept", "application/json");
        if let Some(t) = token {
            req = req.header("X-Auth-Token", t);
        }
        let mut r = match body {
            // A byte body: ureq sends it with a Content-Length.
            Some((content_type, data)) => self.agent.run(
                req.header("Content-Type", content_type)
                    .body(data.to_vec())
                    .unwrap(),
            ),
            None => self.agent.run(req.body(()).unwrap()),
        }?;
        let status = r.status().as_u16();
        Ok((status, r.body_mut().read_to_string().unwrap_or_default()))
    }

    /// `call` for a JSON answer: the status and the parsed body (Null when empty or not JSON).
    pub fn call_json(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let data = body.map(|b| serde_json::to_vec(b).unwrap());
        let (status, text) = self.call(
            method,
            path,
            data.as_deref().map(|d| ("application/json", d)),
        );
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// One image by id (None when Glance answers 404).
    pub fn image(&self, id: &str) -> Option<Value> {
        match self.call_json("GET", &format!("/v2/images/{id}"), None) {
            (200, v) => Some(v),
            (404, _) => None,
            (s, v) => panic!("GET /v2/images/{id}: {s} {v}"),
        }
    }

    /// Every image Glance holds, in every status, hidden ones included (a plain list leaves
    /// out `os_hidden` images and `os_hidden=true` lists only them). Sorted by `created_at`,
    /// then name, then id: Glance's times are whole seconds, so the order of images created
    /// in the same second is not their creation order.
    pub fn images_all(&self) -> Vec<Value> {
        let mut all: Vec<Value> = Vec::new();
        for first in [
            "/v2/images?limit=100",
            "/v2/images?limit=100&os_hidden=true",
        ] {
            let mut next = Some(first.to_string());
            while let Some(path) = next.take() {
                let (status, page) = self.call_json("GET", &path, None);
                assert_eq!(status, 200, "GET {path}: {page}");
                for img in page["images"].as_array().unwrap() {
                    if !all.iter().any(|i| i["id"] == img["id"]) {
                        all.push(img.clone());
                    }
                }
                // `next` is a path from Glance's root, with the query of the first page.
                next = page["next"].as_str().map(str::to_string);
            }
        }
        let key = |i: &Value| {
            let s = |k: &str| i[k].as_str().unwrap_or("").to_string();
            (s("created_at"), s("name"), s("id"))
        };
        all.sort_by_key(key);
        all
    }

    /// Deletes every image (unprotecting protected ones first) and checks none is left.
    pub fn delete_all(&self) {
        for img in self.images_all() {
            let id = img["id"].as_str().unwrap();
            if img["protected"] == json!(true) {
                let patch = br#"[{"op": "replace", "path": "/protected", "value": false}]"#;
                let (s, body) = self.call(
                    "PATCH",
                    &format!("/v2/images/{id}"),
                    Some(("application/openstack-images-v2.1-json-patch", patch)),
                );
                assert_eq!(s, 200, "unprotect {id}: {body}");
            }
            let (s, body) = self.call("DELETE", &format!("/v2/images/{id}"), None);
            assert!(s == 204 || s == 404, "DELETE {id}: {s} {body}");
        }
        let left = self.images_all();
        assert!(left.is_empty(), "images left after delete_all: {left:#?}");
    }

    /// Removes deleted images' rows from Glance's database, so their ids can be used again
    /// (Glance keeps a deleted image's id taken). Takes ~3 s (two glance-manage runs).
    pub fn purge_deleted(&self) {
        // `db purge` leaves the images table itself to `db purge_images_table`.
        for command in ["purge", "purge_images_table"] {
            let out = Command::new(self.venv.join("bin/glance-manage"))
                .arg("--config-dir")
                .arg(self.state.join("glance"))
                .args(["db", command, "--age_in_days", "0", "--max_rows", "-1"])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "glance-manage db {command}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// The last lines of a server's log (`glance` or `keystone`), for assertion messages.
    pub fn log_tail(&self, server: &str, lines: usize) -> String {
        let text = std::fs::read_to_string(self.state.join("logs").join(format!("{server}.log")))
            .unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Stops the servers of a state directory (`tests/cloud/down`).
    fn down(venv: &Path, state: &Path) {
        let r = Command::new(venv.join("bin/python"))
            .arg(super::repo().join("tests/cloud/down"))
            .arg(state)
            .output();
        match r {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "tests/cloud/down {}: {}",
                state.display(),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("tests/cloud/down {}: {e}", state.display()),
        }
    }
}

impl Drop for Cloud {
    fn drop(&mut self) {
        Cloud::down(&self.venv, &self.state);
        if let Some(dir) = self.owned.take()
            && std::thread::panicking()
        {
            let kept = dir.keep();
            eprintln!("cloud state and logs kept in {}", kept.display());
        }
    }
}
