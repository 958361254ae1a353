//! # `strata build`: its remote layer cache flags and its dispatch
//!
//! [`RemoteCacheArgs`] (`--cache-from`, `--cache-to`, `--allow-private-key` and the
//! [`RegistryArgs`] every registry command takes) become [`build::remote::RemoteOptions`];
//! [`build_command`] prints the report, then fails if `--cache-to` could not write the cache.

use anyhow::Result;
use clap::Args;

use super::{Cli, Command, RegistryArgs, load_recipe, options, print_json, show, text};
use crate::build;
use crate::policy::BudgetExceeded;

pub(super) const BUILD_HELP: &str = "\
A layer whose inputs did not change is taken from the cache; a no-op rebuild compresses nothing.
The store is updated atomically at the end: a failed build leaves it as it was.

Disks: what a bootable disk adds to an image ([disk] packages: the kernel, systemd…) is one more
mmdebstrap run, made only with --disks (or when the cache already holds it). `strata disk` and
`strata publish` need it: `strata build --disks` once, then `strata disk IMAGE`.

Remote layer cache: --cache-from REGISTRY/REPO looks up, by key, each layer the local cache lacks
and the base's facts, so a runner with an empty cache fetches what another runner built instead
of building it (no mmdebstrap when the cache holds the base and the layers on it). Every fetched
blob is checked (digest and size while it streams, then its uncompressed diff_id). A cache that
cannot be reached, refuses, or serves a corrupt blob is a warning: the layer is built here; a
cache never fails a build. --cache-to REGISTRY/REPO writes, after the build, every layer and the
base's facts the cache lacks, one tag per key (append-only: an existing tag is never rewritten);
a layer holding the cluster's private key only with --allow-private-key. A --cache-to failure
fails the command (exit 1, or 6 refused) after the store was committed. --json lists where each
layer came from (built, cached, remote). Whoever can push to the cache can put layers into later
builds: give CI write access, developers read access.

Exit codes: 0 built, 1 failure (a tool, network, disk; --cache-to could not write), 2 bad input
(a recipe, a malformed --cache-from/--cache-to reference), 3 a checksum mismatch, 4 a damaged
store, 5 a budget exceeded, 6 the --cache-to registry refused.";

/// The remote layer cache of `build`.
#[derive(Debug, Args, Clone, Default)]
pub struct RemoteCacheArgs {
    /// Take layers (and the base) from this remote layer cache, REGISTRY/REPO, when the local
    /// cache lacks them (repeatable: tried in order). Unreachable or refusing: a warning, the
    /// layers are built here.
    #[arg(long, value_name = "REGISTRY/REPO")]
    pub cache_from: Vec<String>,
    /// After the build, write every layer (and the base's facts) this remote layer cache lacks
    /// to it. A failure fails the command after the store is committed.
    #[arg(long, value_name = "REGISTRY/REPO")]
    pub cache_to: Option<String>,
    /// Write layers that hold the cluster's SSH private key to --cache-to too.
    #[arg(long, requires = "cache_to")]
    pub allow_private_key: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

impl RemoteCacheArgs {
    /// The build's remote cache options (a malformed reference is bad input, exit 2).
    pub fn options(&self) -> Result<build::remote::RemoteOptions> {
        use build::remote::parse_ref;
        let from = self
            .cache_from
            .iter()
            .map(|s| parse_ref("--cache-from", s))
            .collect::<Result<Vec<_>, _>>()?;
        let to = self
            .cache_to
            .as_deref()
            .map(|s| parse_ref("--cache-to", s))
            .transpose()?;
        // Also for a base image in a registry (`[base] image`), whether or not a cache is named.
        let registry = self.registry.options()?;
        Ok(build::remote::RemoteOptions {
            from,
            to,
            registry,
            allow_private_key: self.allow_private_key,
        })
    }
}

/// `strata build`: the recipe, the remote caches, the report; a `--cache-to` failure after it.
pub(super) fn build_command(cli: &Cli) -> Result<()> {
    let Command::Build {
        recipe,
        refresh_base,
        disks,
        remote,
    } = &cli.command
    else {
        unreachable!("build_command() is called for the build command")
    };
    let remote = remote.options()?;
    let r = load_recipe(&recipe.recipe)?;
    let opts = build::Options {
        remote,
        disks: *disks,
        ..options(cli, recipe, *refresh_base)
    };
    match build::build(&r, &opts) {
        Ok(mut rep) => {
            // The report first (CI sees what was built), then the cache's failure.
            let failure = rep.cache_to_failure.take();
            show(cli, &rep, text::build)?;
            failure.map_or(Ok(()), Err)
        }
        Err(e) => {
            // CI gets the verdicts as JSON even when the budget stops the build.
            if cli.json
                && let Some(b) = e.downcast_ref::<BudgetExceeded>()
            {
                print_json(&serde_json::json!({"error": "budget exceeded", "policy": b.0}))?;
            }
            Err(e)
        }
    }
}
