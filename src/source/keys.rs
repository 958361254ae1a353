//! # The cluster SSH key pair
//!
//! Every node of a lab cluster logs into the others as the `hadoop` user with one key pair, which
//! the accounts layer carries. The private key is an input, looked up in this order:
//!
//! 1. `STRATA_SSH_KEY` (a path to an OpenSSH private key);
//! 2. `[ssh] key` in the recipe;
//! 3. the generated key `$STRATA_KEY_DIR/<recipe>/id_ed25519`, where `STRATA_KEY_DIR` defaults to
//!    `$XDG_DATA_HOME/strata/cluster-keys` (`~/.local/share/strata/cluster-keys`): created once
//!    with mode 0600 in a 0700 directory, outside `output/`, git and the cache, so later builds on
//!    the same machine give the same digests and deleting the cache never changes one.
//!
//! The key's bytes never reach a log, a report or a cache key (only its SHA-256 enters the
//! layer's content hash, like any other file), and the image's config says it carries one.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use ssh_key::{Algorithm, LineEnding, PrivateKey};

pub const KEY_ENV: &str = "STRATA_SSH_KEY";
pub const KEY_DIR_ENV: &str = "STRATA_KEY_DIR";

/// A loaded key pair.
pub struct ClusterKey {
    /// Where it came from (for messages; never the content).
    pub origin: PathBuf,
    pub private_openssh: Vec<u8>,
    pub public_openssh: String,
    pub fingerprint: String,
}

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterKey")
            .field("origin", &self.origin)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// The default place for generated keys.
pub fn default_key_dir() -> PathBuf {
    if let Some(d) = std::env::var_os(KEY_DIR_ENV) {
        return PathBuf::from(d);
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("/var/lib"));
    data.join("strata/cluster-keys")
}

/// Finds (or, the first time, generates) the cluster key for `recipe`.
pub fn cluster_key(recipe: &str, from_recipe: Option<&Path>) -> Result<ClusterKey> {
    if let Some(k) = find(recipe, from_recipe)? {
        return Ok(k);
    }
    let path = generated_path(recipe);
    generate(&path, recipe)?;
    load(&path)
}

/// Finds the cluster key for `recipe` without generating one (`strata plan` writes nothing):
/// None when the first build has yet to generate it.
pub fn find(recipe: &str, from_recipe: Option<&Path>) -> Result<Option<ClusterKey>> {
    if let Some(p) = std::env::var_os(KEY_ENV) {
        return load(Path::new(&p))
            .with_context(|| format!("loading the key named by {KEY_ENV}"))
            .map(Some);
    }
    if let Some(p) = from_recipe {
        return load(p)
            .context("loading the key named by [ssh] key in the recipe")
            .map(Some);
    }
    let path = generated_path(recipe);
    if !path.exists() {
        return Ok(None);
    }
    load(&path).map(Some)
}

fn generated_path(recipe: &str) -> PathBuf {
    default_key_dir().join(recipe).join("id_ed25519")
}

fn generate(path: &Path, recipe: &str) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let dir = path.parent().context("key path without a directory")?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let mut key = PrivateKey::random(&mut ssh_key::rand_core::OsRng, Algorithm::Ed25519)
        .context("generating an ed25519 key")?;
    key.set_comment(format!("hadoop@{recipe}"));
    let pem = key.to_openssh(LineEnding::LF)?;
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(pem.as_bytes())?;
        f.sync_all()?;
    }
    crate::support::fsx::rename(&tmp, path)?;
    eprintln!(
        "strata: generated the cluster SSH key {} (kept for later builds; set {KEY_ENV} to use another)",
        path.display()
    );
    Ok(())
}

/// Loads an OpenSSH private key (unencrypted: nodes log in unattended).
pub fn load(path: &Path) -> Result<ClusterKey> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let key = PrivateKey::from_openssh(&data)
        .map_err(|_| anyhow::anyhow!("{} is not an OpenSSH private key", path.display()))?;
    if key.is_encrypted() {
        bail!(
            "{} is encrypted: cluster nodes need an unencrypted key",
            path.display()
        );
    }
    let public_openssh = key.public_key().to_openssh()?;
    Ok(ClusterKey {
        origin: path.to_path_buf(),
        private_openssh: data,
        public_openssh,
        fingerprint: key.fingerprint(Default::default()).to_string(),
    })
}
