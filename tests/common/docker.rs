//! # A real, private Docker engine for the tests
//!
//! Debian's `dockerd` (docker.io 20.10, API 1.41), started by `tests/docker/up` once per test
//! binary on its own socket, data root and exec root under `target/tmp/docker` (no bridge, no
//! iptables: containers use the host network or none), and stopped by the watchdog `up` starts
//! when the test binary exits. Needs root and `dockerd`: without them a test skips, saying why;
//! with `CI=true` it fails instead.
//!
//! Tests take turns ([`Engine::shared`] returns a guard): they load, run and remove the same
//! images. The `docker` CLI is the tests' independent reader ([`Engine::docker`]); strata
//! itself runs with `docker` absent from its PATH ([`Engine::strata`]).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard, OnceLock};

use serde_json::Value;

pub struct Engine {
    pub state: PathBuf,
    /// `unix://…/docker.sock`
    pub host: String,
    /// `tcp://127.0.0.1:PORT`, the same engine over plain HTTP on loopback.
    pub tcp_host: String,
    /// An empty directory: strata's PATH, so it cannot shell out to docker.
    no_tools: tempfile::TempDir,
}

/// The shared engine, lent to one test at a time.
pub struct Turn {
    pub engine: &'static Engine,
    _turn: MutexGuard<'static, ()>,
}

impl std::ops::Deref for Turn {
    type Target = Engine;
    fn deref(&self) -> &Engine {
        self.engine
    }
}

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output().expect("id runs");
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

impl Engine {
    /// The engine of this test binary, started on first use. None: skipped (no root, no
    /// dockerd or docker CLI; a failure with CI=true).
    pub fn shared() -> Option<Turn> {
        static ENGINE: OnceLock<Option<Engine>> = OnceLock::new();
        static TURN: Mutex<()> = Mutex::new(());
        let engine = ENGINE
            .get_or_init(|| {
                if !super::require("dockerd") || !super::require("docker") {
                    return None;
                }
                if !is_root() {
                    let why = "dockerd needs root (CI runs as root)";
                    assert!(!ci(), "{why}; with CI=true this fails instead of skipping");
                    eprintln!("SKIPPED: {why}");
                    return None;
                }
                let state = Path::new(env!("CARGO_TARGET_TMPDIR")).join("docker");
                if state.join("docker.json").exists() {
                    // A previous run's watchdog stopped it; make sure.
                    let _ = Command::new(super::repo().join("tests/docker/down"))
                        .arg(&state)
                        .output();
                }
                let out = Command::new(super::repo().join("tests/docker/up"))
                    .arg(&state)
                    .arg("--watch-pid")
                    .arg(std::process::id().to_string())
                    .output()
                    .expect("tests/docker/up runs");
                assert!(
                    out.status.success(),
                    "tests/docker/up {} failed:\n{}",
                    state.display(),
                    String::from_utf8_lossy(&out.stderr)
                );
                let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
                Some(Engine {
                    host: doc["host"].as_str().unwrap().to_string(),
                    tcp_host: doc["tcp_host"].as_str().unwrap().to_string(),
                    state,
                    no_tools: tempfile::tempdir().unwrap(),
                })
            })
            .as_ref()?;
        let turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
        Some(Turn {
            engine,
            _turn: turn,
        })
    }

    /// strata against this engine, with no `docker` on its PATH.
    pub fn strata(&self, cache: &Path, store: &Path) -> Command {
        let mut c = super::strata(cache);
        c.env("DOCKER_HOST", &self.host)
            .env("PATH", self.no_tools.path())
            .arg("-o")
            .arg(store);
        c
    }

    /// The docker CLI against this engine (the tests' independent reader).
    pub fn docker(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .env("DOCKER_HOST", &self.host)
            .args(args)
            .output()
            .expect("docker runs")
    }

    /// `docker image inspect NAME`, None when the engine lacks it.
    pub fn image(&self, name: &str) -> Option<Value> {
        let out = self.docker(&["image", "inspect", name]);
        if !out.status.success() {
            return None;
        }
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        Some(v[0].clone())
    }

    /// Removes images from the engine (absent ones are fine).
    pub fn remove_images(&self, names: &[&str]) {
        for n in names {
            let _ = self.docker(&["image", "rm", "-f", n]);
        }
    }

    /// Containers strata started (any state), by id.
    pub fn strata_containers(&self) -> Vec<String> {
        let out = self.docker(&["ps", "-aq", "--no-trunc", "--filter", "label=io.strata.run"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }
}
