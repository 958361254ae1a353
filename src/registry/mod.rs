//! # The OCI distribution client
//!
//! strata speaks the registry protocol itself (no skopeo, no Docker): [`reference`] parses
//! `REGISTRY/REPO[:TAG][@DIGEST]`, [`auth`] finds credentials and answers challenges,
//! [`client`] sends every request (timeouts, retries, tokens), [`blob`] HEADs, mounts, uploads
//! and downloads blobs, [`manifest`] puts and gets manifests byte for byte. It is used by the
//! `push` and `pull` commands and is meant for the remote layer cache too: every call takes a
//! repository and a digest or tag, never a store.
//!
//! [`RegistryError`] is what a caller branches on: an unreachable registry (exit 1, saying
//! whether it runs and about `--insecure`) and an answer with its status and the registry's
//! error code (401/403/400/415 map to exit 6, "refused").

pub mod auth;
pub mod blob;
pub mod client;
pub mod manifest;
pub mod reference;

pub use auth::{CredentialSource, Credentials, Secret};
pub use blob::{BlobOutcome, BlobSource, UploadOptions};
pub use client::{Client, Options};
pub use reference::Reference;

/// A registry request that failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(
        "cannot reach the registry at {url}: {reason}. Is the registry running and reachable? \
         (--insecure for a registry that speaks plain http)"
    )]
    Unreachable { url: String, reason: String },
    #[error("{method} {url}: {status}{}{}{}", if code.is_empty() { String::new() } else { format!(" {code}") }, if message.is_empty() { String::new() } else { format!(": {message}") }, if hint.is_empty() { String::new() } else { format!("\n  hint: {hint}") })]
    Status {
        method: String,
        url: String,
        status: u16,
        /// The distribution error code (`MANIFEST_INVALID`, `DENIED`…), if given.
        code: String,
        message: String,
        hint: String,
    },
}

impl RegistryError {
    /// The registry refused the request (authentication, permission, a format it rejects).
    pub fn refused(&self) -> bool {
        matches!(self, RegistryError::Status { status, .. } if matches!(status, 400 | 401 | 403 | 413 | 415))
    }
}
