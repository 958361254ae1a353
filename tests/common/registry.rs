//! # A real registry for the tests
//!
//! Debian's `docker-registry` (distribution 2.8) started by `tests/registry/up` on 127.0.0.1
//! with filesystem storage in a temp dir; stopped (by its pid, `tests/registry/down`) on drop.
//! Modes: anonymous, htpasswd basic auth, bearer tokens from `tests/registry/token-issuer`.
//! The registry's access log counts requests; its storage can be read (and damaged) directly.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{repo, require};

pub const USER: &str = "lab-ci";
pub const PASSWORD: &str = "s3cret-Registry-pw";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Auth {
    Anonymous,
    Htpasswd,
    Token,
}

pub struct Registry {
    state: tempfile::TempDir,
    /// `127.0.0.1:PORT`
    pub host: String,
}

impl Registry {
    /// Starts one (None: docker-registry is missing and this is not CI).
    pub fn start(auth: Auth) -> Option<Registry> {
        if !require("docker-registry") || (auth == Auth::Htpasswd && !require("htpasswd")) {
            return None;
        }
        let state = tempfile::tempdir().unwrap();
        let mut c = Command::new(repo().join("tests/registry/up"));
        c.arg(state.path());
        let cred = format!("{USER}:{PASSWORD}");
        match auth {
            Auth::Anonymous => {}
            Auth::Htpasswd => {
                c.args(["--htpasswd", &cred]);
            }
            Auth::Token => {
                c.args(["--token", &cred]);
            }
        }
        let out = c.output().expect("tests/registry/up runs");
        assert!(
            out.status.success(),
            "tests/registry/up failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let host = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Some(Registry { state, host })
    }

    pub fn state(&self) -> &Path {
        self.state.path()
    }

    /// The registry's log (access lines included).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.state().join("registry.log")).unwrap_or_default()
    }

    /// Access-log lines of requests with this method whose path contains `path`.
    pub fn count(&self, method: &str, path: &str) -> usize {
        let needle = format!("\"{method} ");
        self.log()
            .lines()
            .filter(|l| {
                l.find(&needle).is_some_and(|i| {
                    l[i + needle.len()..]
                        .split(' ')
                        .next()
                        .unwrap_or("")
                        .contains(path)
                })
            })
            .count()
    }

    /// The token issuer's log: one JSON document per token request.
    pub fn token_requests(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.state().join("token.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Where the registry keeps a blob's bytes.
    pub fn blob_data(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.state()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("tests/registry/down"))
            .arg(self.state())
            .status();
    }
}
