//! # Registry arguments and the push and pull commands
//!
//! [`RegistryArgs`] is the one set of flags for talking to a registry (`--insecure`, the
//! credentials, the timeout), flattened into every command that does (`push`, `pull`, and
//! `build --cache-from/--cache-to`); `push` and `pull` are dispatched from here.

use anyhow::Result;
use clap::Args;

use super::{Cli, Command, show, text};

/// How to reach a registry: shared by every command that talks to one (`push`, `pull`,
/// `build --cache-from/--cache-to`).
#[derive(Debug, Args, Clone, Default)]
pub struct RegistryArgs {
    /// Speak plain HTTP to the registry (a local one); TLS is verified otherwise.
    #[arg(long)]
    pub insecure: bool,
    /// The registry user (with --password-stdin) [else STRATA_REGISTRY_USER /
    /// STRATA_REGISTRY_PASSWORD, else Docker's config: DOCKER_CONFIG or ~/.docker/config.json].
    #[arg(long, value_name = "USER", requires = "password_stdin")]
    pub username: Option<String>,
    /// Read the registry password from stdin (one line), never from the command line.
    #[arg(long, requires = "username")]
    pub password_stdin: bool,
    /// Seconds to wait for each answer from the registry.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub registry_timeout: u64,
}

impl RegistryArgs {
    /// The client options; reads the password from stdin when asked.
    pub fn options(&self) -> Result<crate::registry::Options> {
        let explicit = match (&self.username, self.password_stdin) {
            (Some(u), true) => {
                let mut line = String::new();
                std::io::stdin()
                    .read_line(&mut line)
                    .map_err(|e| anyhow::anyhow!("reading the password from stdin: {e}"))?;
                let password = line.trim_end_matches(['\n', '\r']).to_string();
                if password.is_empty() {
                    return Err(crate::support::error::BadInput(
                        "--password-stdin: stdin held no password".into(),
                    )
                    .into());
                }
                Some(crate::registry::Credentials {
                    username: u.clone(),
                    password: crate::registry::Secret::new(password),
                    from: "--username/--password-stdin".into(),
                })
            }
            _ => None,
        };
        Ok(crate::registry::Options {
            insecure: self.insecure,
            credentials: crate::registry::CredentialSource::from_env(explicit),
            timeout: std::time::Duration::from_secs(self.registry_timeout),
            ..crate::registry::Options::default()
        })
    }
}

pub const PUSH_HELP: &str = "\
Each image's manifest goes byte for byte from the store, so the registry serves the store's
digest; it is tagged with its version (REPO:3.3.6; the shared part REPO:base) and with a tag that
never moves (REPO:3.3.6-<12 hex of the digest>). What a disk and the other commands need — the
store record and the disk-only layers — goes along as an OCI artifact whose subject is the image,
tagged REPO:sha256-<manifest hex>.strata, so `strata pull` gives a full store. Blobs the registry
has are not sent again: a second push sends nothing.

Credentials: --username with --password-stdin; STRATA_REGISTRY_USER and STRATA_REGISTRY_PASSWORD;
Docker's config (DOCKER_CONFIG or ~/.docker/config.json: auths, credHelpers, credsStore). Basic
and bearer-token registries both work. --insecure for a registry that speaks plain HTTP.

Exit codes: 0 pushed, 1 failure (network, registry unreachable), 2 bad input (a malformed
reference, an image not in the store, a key-carrying image without --allow-private-key), 6 the
registry refused (401, 403, a media type it rejects).";

pub const PULL_HELP: &str = "\
Every blob is verified while it streams and renamed into the store only when its digest matches;
index.json is written last, atomically: a failed pull leaves the store as it was. An image pushed
by strata comes with its store record and disk-only layers, so ls, inspect, verify, report,
export and disk work on the pulled store without the recipe.

Exit codes: 0 pulled, 1 failure (network, registry unreachable), 2 bad input (a malformed
reference, a tag the registry does not have), 3 a blob whose digest does not match (nothing
written), 6 the registry refused (401, 403).";

/// `strata push`: IMAGE REF, or --all REPO.
pub fn push(cli: &Cli) -> Result<()> {
    let Command::Push {
        args,
        all,
        jobs,
        allow_private_key,
        mount_from,
        chunk_size,
        registry,
    } = &cli.command
    else {
        unreachable!("push() is called for the push command")
    };
    let (image, target) = match (args.as_slice(), *all) {
        ([target], true) => (None, target.clone()),
        ([image, target], false) => (Some(image.clone()), target.clone()),
        ([_], false) => {
            return Err(crate::support::error::BadInput(
                "push IMAGE REGISTRY/REPO[:TAG], or push --all REGISTRY/REPO".into(),
            )
            .into());
        }
        _ => {
            return Err(crate::support::error::BadInput(
                "with --all name only the repository: push --all REGISTRY/REPO".into(),
            )
            .into());
        }
    };
    let rep = crate::share::push::push(&crate::share::push::Options {
        output: cli.output.clone(),
        image,
        target,
        jobs: *jobs as usize,
        allow_private_key: *allow_private_key,
        mount_from: mount_from.clone(),
        chunk_size: chunk_size.map(|s| s.0),
        registry: registry.options()?,
        quiet: cli.quiet,
    })?;
    show(cli, &rep, text::push)
}

/// `strata pull`: REF... into the store.
pub fn pull(cli: &Cli) -> Result<()> {
    let Command::Pull {
        refs,
        jobs,
        registry,
    } = &cli.command
    else {
        unreachable!("pull() is called for the pull command")
    };
    let rep = crate::share::pull::pull(&crate::share::pull::Options {
        output: cli.output.clone(),
        refs: refs.clone(),
        jobs: *jobs as usize,
        registry: registry.options()?,
        quiet: cli.quiet,
    })?;
    show(cli, &rep, text::pull)
}
