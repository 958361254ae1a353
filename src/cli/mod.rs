//! # Command line
//!
//! The clap structs, ONE dispatch to the library ([`run`]), the text rendering of results
//! ([`text`], apart from the dispatch) and the exit-code mapping ([`exit`]). Every command takes
//! `-o/--output DIR` (the store, default `output/`) and `--json` (one document on stdout;
//! progress stays on stderr). Values are parsed here, before any work: sizes, ratios, firmware
//! and compression names are refused with exit code 2 by clap itself.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use crate::build;
use crate::disk::{Firmware, QcowCompression};
use crate::policy::Overrides;
use crate::recipe::Recipe;
use crate::support::units::{Size, parse_ratio};
use crate::{inspect, report};

mod build_args;
pub mod exit;
pub mod share;
pub use build_args::RemoteCacheArgs;
pub use share::RegistryArgs;
pub mod text;

const AFTER_HELP: &str = "\
Quick start:
  strata build                      build recipes/lab.toml: one image per Hadoop version
  strata plan                       what a build would do, and the budgets, writing nothing
  strata ls                         the images, with digests and sizes
  strata inspect hadoop-lab:3.3.6   its layers, their sizes, which images share each
  strata diff hadoop-lab:3.3.6 hadoop-lab:3.4.1
  strata verify [--repair]          re-hash every blob, check every manifest (restore damage)
  strata disk hadoop-lab:3.3.6 --boot-test
  strata publish hadoop-lab:3.3.6 --cloud lab     upload its disk to Glance, verified
  strata push --all registry.example.org/team/hadoop-lab    every image, to a registry
  strata pull registry.example.org/team/hadoop-lab:3.3.6 -o lab    and back, byte for byte
  strata load hadoop-lab:3.3.6      into the local Docker engine (DOCKER_HOST)
  strata run hadoop-lab:3.3.6 -- java -version    a command in it, on the host network

Environment:
  SOURCE_DATE_EPOCH  overrides the recipe's `epoch`: timestamps in layers, configs and the
                     base. A per-commit value gives new digests on every commit.
  STRATA_CACHE       the build cache (default ~/.cache/strata)
  STRATA_SSH_KEY     the cluster's SSH private key (default: generated once under
                     ~/.local/share/strata/cluster-keys/<recipe>/)
  CI                 plain progress lines instead of bars
  DOCKER_HOST        the Docker engine for load and run (default unix:///var/run/docker.sock)
  OS_CLOUD, OS_CLIENT_CONFIG_FILE, OS_AUTH_URL, OS_*   the cloud for publish (as openstack's)
  STRATA_REGISTRY_USER, STRATA_REGISTRY_PASSWORD       registry credentials for push and pull
  DOCKER_CONFIG      where Docker's config.json is (registry credentials; default ~/.docker)

Exit codes: 0 ok, 1 failure (a tool, the network, the disk), 2 bad input (recipe, arguments,
template, tarball, clouds.yaml), 3 checksum mismatch, 4 damaged store (verify, report), 5 budget
exceeded, 6 the cloud or registry refused (401, 403, quota, format), 7 a preflight check failed.";

#[derive(Debug, Parser)]
#[command(name = "strata", version, about = "Build reproducible, content-addressed OCI images for many Hadoop versions from declarative recipes", after_help = AFTER_HELP)]
pub struct Cli {
    /// The store (an OCI image layout) every command reads or writes.
    #[arg(
        short,
        long,
        global = true,
        default_value = "output",
        value_name = "DIR"
    )]
    pub output: PathBuf,
    /// Print one machine-readable JSON document on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// No progress output.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct RecipeArgs {
    /// The recipe to build.
    #[arg(default_value = "recipes/lab.toml")]
    pub recipe: PathBuf,
    /// Build only this Hadoop version (repeatable); other images in the store stay.
    #[arg(long, value_name = "VERSION")]
    pub only: Vec<String>,
    /// The build cache directory [env: STRATA_CACHE; default ~/.cache/strata].
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// Ignore the cache: build everything in a throw-away cache.
    #[arg(long)]
    pub no_cache: bool,
    #[command(flatten)]
    pub policy: PolicyArgs,
}

/// Budget overrides, for experiments (the recipe's [policy] and `budget` keys otherwise).
#[derive(Debug, Args, Clone, Default)]
pub struct PolicyArgs {
    /// Budget of every image, uncompressed (e.g. 600MiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub image_budget: Option<Size>,
    /// Budget of one layer family: base, jdk-<name>, a [[layer]] name, hadoop-dist (repeatable).
    #[arg(long, value_name = "NAME=SIZE", value_parser = parse_layer_budget)]
    pub layer_budget: Vec<(String, Size)>,
    /// Floor on each image's fraction of bytes in layers shared with another image (0–1).
    #[arg(long, value_name = "RATIO", value_parser = parse_ratio)]
    pub min_shared: Option<f64>,
}

fn parse_size(s: &str) -> Result<Size, String> {
    s.parse()
}

fn parse_env(s: &str) -> Result<String, String> {
    match s.split_once('=') {
        Some((k, _)) if !k.is_empty() => Ok(s.to_string()),
        _ => Err(format!(
            "{s:?}: expected KEY=VALUE, e.g. STRATA_ROLES=namenode"
        )),
    }
}

fn parse_layer_budget(s: &str) -> Result<(String, Size), String> {
    let (name, size) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected NAME=SIZE, e.g. base=450MiB"))?;
    Ok((name.to_string(), size.parse()?))
}

impl PolicyArgs {
    pub fn overrides(&self) -> Overrides {
        Overrides {
            image_budget: self.image_budget,
            layer_budgets: self.layer_budget.clone(),
            min_shared: self.min_shared,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build every image of a recipe into the store.
    #[command(after_help = build_args::BUILD_HELP)]
    Build {
        #[command(flatten)]
        recipe: RecipeArgs,
        /// Build the base root filesystem again (takes Debian security updates).
        #[arg(long)]
        refresh_base: bool,
        /// Also build what each version's bootable disk adds (`[disk] packages`: kernel,
        /// systemd…, one more mmdebstrap run), needed by `strata disk` and `publish`. Without
        /// it, disk layers already in the cache are kept and the others are left out.
        #[arg(long)]
        disks: bool,
        #[command(flatten)]
        remote: RemoteCacheArgs,
    },
    /// Show what a build would do: every layer, its key, whether it is cached, and the budgets.
    #[command(
        after_help = "Writes nothing anywhere (no cache directory, no key, no mmdebstrap). What is \
not known before the base is built is shown as unknown; exits 5 only for a budget that is \
certainly broken. Layers only a bootable disk needs show `--disks` until `build --disks` makes them."
    )]
    Plan {
        #[command(flatten)]
        recipe: RecipeArgs,
    },
    /// Sizes, sharing and budgets of the built store: a table, --json, or a page with --html.
    #[command(
        after_help = "Exits 5 when a budget is broken and the recipe enforces it, 4 when a blob is \
missing or corrupt."
    )]
    Report {
        /// Also write a self-contained HTML page here.
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
        #[command(flatten)]
        policy: PolicyArgs,
    },
    /// Make a bootable qcow2 (BIOS and UEFI) of an image, and optionally boot-test it under QEMU.
    #[command(
        after_help = "The disk is written to DIR/disks/<recipe>_<version>.qcow2 (through a temp name). \
What the disk needs beyond the container image (kernel, systemd: the recipe's [disk]) was recorded at \
build time. --boot-test boots it on each firmware and checks: no failed units, the hadoop user and \
environment, java, sshd, the configs; for an image that takes its SSH key at boot ([ssh] deliver = \
\"boot\"), it also delivers the cluster key on a config-2 drive and logs in with it (the key: \
STRATA_SSH_KEY, or the one the build used). Results are kept beside the disk."
    )]
    Disk {
        /// `recipe:version`, a tag or a manifest digest.
        image: String,
        /// Boot the disk under QEMU and check it.
        #[arg(long)]
        boot_test: bool,
        /// Firmware to boot-test (repeatable).
        #[arg(long, value_enum, default_values = ["bios", "uefi"])]
        firmware: Vec<Firmware>,
        /// Seconds to wait for the login prompt and the boot check.
        #[arg(long, default_value_t = 300)]
        boot_timeout: u64,
        /// Boot-test a copy grown to this size, as a flavor's disk (e.g. 4GiB): the root must grow.
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        flavor_disk: Option<Size>,
        /// Also write a per-version overlay on the recipe's shared base disk (local development;
        /// Glance refuses backing files, so publish uses the flattened disk).
        #[arg(long)]
        overlay: bool,
        /// Budget on the disk's virtual size, overriding the recipe's [disk] budget.
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        disk_budget: Option<Size>,
        /// Compress the qcow2 (default: uncompressed, fastest to write and boot).
        #[arg(long, value_enum)]
        compress: Option<QcowCompression>,
    },
    /// Upload an image's bootable disk to OpenStack Glance: verified, idempotent, never
    /// overwriting.
    #[command(after_help = PUBLISH_HELP)]
    Publish {
        /// `recipe:version`, a tag or a manifest digest (repeatable); or --all.
        images: Vec<String>,
        /// Every image of the store whose bytes are not in Glance yet (what CI runs after a
        /// release).
        #[arg(long, conflicts_with = "images")]
        all: bool,
        /// A cloud of clouds.yaml (default: OS_CLOUD, else the OS_* variables).
        #[arg(long, env = "OS_CLOUD", value_name = "NAME")]
        cloud: Option<String>,
        /// Who may see the image.
        #[arg(long, value_enum, default_value = "private")]
        visibility: crate::publish::Visibility,
        /// Share with this project (an image member; implies --visibility shared). Repeatable.
        #[arg(long = "share", value_name = "PROJECT_ID")]
        members: Vec<String>,
        /// Mark the image protected (it cannot be deleted until unprotected).
        #[arg(long)]
        protected: bool,
        /// A Glance tag, on top of the recipe's [publish] tags. Repeatable.
        #[arg(long = "tag", value_name = "TAG")]
        tags: Vec<String>,
        /// Use the interoperable import (glance-direct) when the cloud offers it.
        #[arg(long)]
        import: bool,
        /// Say what would be created, hidden and left alone; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// How many images of one name stay visible (default: the recipe's [publish] keep, 3).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
        keep: Option<u32>,
        /// Delete older images beyond --keep instead of hiding them.
        #[arg(long)]
        prune: bool,
        /// Allow public or community visibility for an image carrying the cluster's private key.
        #[arg(long)]
        allow_private_key: bool,
        /// Seconds to wait for each answer from the cloud.
        #[arg(long, default_value_t = 60, value_name = "SECS")]
        timeout: u64,
        /// Seconds an image may stay in one state (queued, saving, importing) before strata
        /// gives up.
        #[arg(long, default_value_t = 600, value_name = "SECS")]
        wait: u64,
    },
    /// Push images to an OCI registry: `push IMAGE REGISTRY/REPO[:TAG]` or `push --all REGISTRY/REPO`.
    #[command(after_help = share::PUSH_HELP)]
    Push {
        /// The image (`recipe:version`, a tag or a manifest digest) and the target; with --all,
        /// the target repository alone.
        #[arg(value_name = "IMAGE REF", num_args = 1..=2, required = true)]
        args: Vec<String>,
        /// Every image of the store, each tagged with its version (`REPO:3.3.6`, `REPO:base`).
        #[arg(long)]
        all: bool,
        /// Blobs uploaded at once.
        #[arg(long, default_value_t = 4, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=64))]
        jobs: u64,
        /// Push an image that carries the cluster's SSH private key.
        #[arg(long)]
        allow_private_key: bool,
        /// A repository of the same registry holding some of the blobs: mounted, not sent.
        #[arg(long, value_name = "REPO")]
        mount_from: Option<String>,
        /// Upload in chunks of this size (PATCH; raised to the registry's minimum) instead of
        /// one PUT per blob.
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        chunk_size: Option<Size>,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Pull images from an OCI registry into the store (created if missing).
    #[command(after_help = share::PULL_HELP)]
    Pull {
        /// `REGISTRY/REPO:TAG` or `REGISTRY/REPO@sha256:…` (repeatable).
        #[arg(value_name = "REF", required = true)]
        refs: Vec<String>,
        /// Blobs downloaded at once.
        #[arg(long, default_value_t = 4, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=64))]
        jobs: u64,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// List the images of the store.
    Ls,
    /// Show an image: layers, sizes, which images share each layer, labels, packages.
    Inspect {
        /// `recipe:version`, a tag (`3.3.6`) or a manifest digest.
        image: String,
    },
    /// Which files differ between two images, layer by layer.
    Diff { a: String, b: String },
    /// Re-hash every blob and check every manifest, config and diff_id.
    #[command(
        after_help = "Exits 4 when the store is damaged, naming each blob or file. With \
--repair, every damaged or missing blob the cache still holds intact is copied back (layers, \
configs, manifests, records); the recipes given after --repair are then built into the store, \
which rewrites what the cache could not restore. The store is verified again at the end: exit 4 \
if damage remains, saying what (then run `strata build RECIPE -o DIR` with the recipe of those \
images)."
    )]
    Verify {
        /// Restore damaged blobs from the cache, then build the RECIPEs given.
        #[arg(long)]
        repair: bool,
        /// With --repair: recipes to build into the store for what the cache cannot restore.
        #[arg(requires = "repair", value_name = "RECIPE")]
        recipes: Vec<PathBuf>,
        /// The build cache directory [env: STRATA_CACHE; default ~/.cache/strata].
        #[arg(long, value_name = "DIR")]
        cache: Option<PathBuf>,
    },
    /// Remove blobs no image uses (and leftovers of interrupted writes).
    Gc {
        /// Only say what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
    /// Write images to an archive.
    Export {
        /// Images to export (default: all).
        images: Vec<String>,
        /// An OCI image layout as a tar; it also holds Docker's manifest.json, so `docker load`
        /// reads it.
        #[arg(long, value_name = "FILE", required = true)]
        oci_archive: PathBuf,
    },
    /// Load images into the local Docker engine (DOCKER_HOST), streamed, without docker's CLI.
    #[command(after_help = LOAD_HELP)]
    Load {
        /// `recipe:version`, a tag or a manifest digest (repeatable); or --all.
        images: Vec<String>,
        /// Every image of the store.
        #[arg(long, conflicts_with = "images")]
        all: bool,
        /// Seconds to wait for the engine to take the archive [default: 300 + 1 per MiB].
        #[arg(long, value_name = "SECS")]
        timeout: Option<u64>,
    },
    /// Run an image in the local Docker engine, on the host network, with the recipe's release
    /// volume and SSH key delivery; or smoke-test it (--smoke).
    #[command(after_help = RUN_HELP)]
    Run {
        /// `recipe:version`, a tag or a manifest digest.
        image: String,
        /// The command to run (after `--`); without it the node starts detached with the
        /// image's own command.
        #[arg(last = true, value_name = "CMD")]
        cmd: Vec<String>,
        /// A directory holding hadoop-X.Y.Z/, mounted read-only at /srv/hadoop-dist (for images
        /// built with [dist] mode = "mount").
        #[arg(long, value_name = "DIR")]
        dist: Option<PathBuf>,
        /// An environment variable for the container, e.g. STRATA_ROLES=namenode (repeatable).
        #[arg(short, long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
        env: Vec<String>,
        /// The container's name (detached runs).
        #[arg(long, value_name = "NAME", conflicts_with = "cmd")]
        name: Option<String>,
        /// Check the user environment, Java and the configs in a running container, record
        /// the result against the image's digest (shown by `strata inspect`), remove it.
        #[arg(long, conflicts_with_all = ["cmd", "name"])]
        smoke: bool,
        /// Seconds to wait for the engine to take the archive, when the image must be loaded.
        #[arg(long, value_name = "SECS")]
        timeout: Option<u64>,
    },
    /// Before launching: check that an image in Glance, a flavor and the cloud fit together.
    #[command(
        after_help = "Checks, each pass / fail / unknown with what to do: the image in \
Glance (by its strata_image_digest, hidden ones included), active and not hidden; flavor disk >= \
min_disk (disk 0: boot from a volume) and RAM >= min_ram; the image quota (/v2/info/usage); the \
store (/v2/info/stores); qcow2 among the accepted disk formats; hw_firmware_type, hw_disk_bus and \
hw_qemu_guest_agent against the recipe and the disk; the local boot test. --flavors takes the \
JSON of `openstack flavor list --long -f json`; --flavor without it asks Nova. With --flavors and \
no --flavor, every flavor is weighed and the check fails only when none fits.

Exit codes: 0 nothing failed (unknown is not a failure), 7 a check failed, 2 bad input (unknown \
image, cloud or flavor, a malformed flavors file), 6 the cloud refused (401, 403)."
    )]
    Preflight {
        /// `recipe:version`, a tag or a manifest digest.
        image: String,
        /// A cloud of clouds.yaml (default: OS_CLOUD, else the OS_* variables).
        #[arg(long, env = "OS_CLOUD", value_name = "NAME")]
        cloud: Option<String>,
        /// The flavor to check (name or id): looked up in --flavors, else asked of Nova.
        #[arg(long, value_name = "NAME")]
        flavor: Option<String>,
        /// The output of `openstack flavor list --long -f json` (Nova's lower-case keys too).
        #[arg(long, value_name = "FILE")]
        flavors: Option<PathBuf>,
        /// Seconds to wait for each answer from the cloud.
        #[arg(long, default_value_t = 60, value_name = "SECS")]
        timeout: u64,
    },
}

const PUBLISH_HELP: &str = "\
The disk (DIR/disks/<recipe>_<version>.qcow2) is made first when it is missing or older than the
image, as `strata disk` makes it. In Glance the image is named <recipe>-<version>
(hadoop-lab-3.3.6) and carries hadoop_version, strata_recipe, strata_image_digest,
strata_disk_sha256, os_distro, os_version, hw_* properties, min_disk and the recipe's min_ram.

An image whose bytes are already active in the project is not uploaded again (exit 0). A new build
of a name is a new image; once it is verified, older images of that name beyond --keep are hidden
(os_hidden), deleted only with --prune. After any failure Glance holds nothing new.

Auth is the openstack CLI's: clouds.yaml + secure.yaml (OS_CLIENT_CONFIG_FILE, ./,
~/.config/openstack/, /etc/openstack/), --cloud or OS_CLOUD, or the OS_* variables; password,
v3applicationcredential, token, or `auth_type: none` with `image_endpoint_override`.

Exit codes: 0 published or already there, 1 failure (network, timeout, a stuck image), 2 bad input
(unknown cloud, clouds.yaml, an image not built, a key-carrying image made public), 3 Glance's hash
or size differs from the disk (the image was deleted), 6 the cloud refused (401, 403, quota).";

const LOAD_HELP: &str = "\
The engine is the one DOCKER_HOST names (unix:///path/docker.sock, tcp://HOST:2375; default
unix:///var/run/docker.sock); the API version is negotiated (Docker 20.10 speaks 1.41). The
archive is what `strata export` writes (OCI layout + Docker's manifest.json), streamed into the
engine without a temp file. Images appear under their names (hadoop-lab:3.3.6); the engine's
image id is the config digest. zstd-compressed layers need Docker 23 or newer: an older engine is
refused before anything is sent.

Exit codes: 0 loaded, 1 no engine, the engine refused the archive, a timeout, 2 an image not in
the store, a zstd image for an engine older than 23.";

const RUN_HELP: &str = "\
Examples:
  strata run hadoop-lab:3.3.6 -- java -version        run a command, pass its exit code on
  strata run hadoop-lab:3.3.6 --dist /srv/releases -e STRATA_ROLES=namenode,datanode
                                                      a lab node, detached
  strata run hadoop-lab:3.3.6 --smoke                 check it, record the result

The container runs on the host network. The image is loaded first when the engine lacks this
build of it. For [dist] mode = \"mount\" images, --dist DIR (holding hadoop-X.Y.Z/) is mounted
read-only at /srv/hadoop-dist (without it: an NFS source of the recipe as an NFS volume, a LABEL=
source from where it is mounted on this host, else the node starts without Hadoop). Images built
with [ssh] deliver = \"boot\" get the cluster key mounted read-only at
/run/secrets/strata-ssh-key (STRATA_SSH_KEY, or the key the build used); it never enters an image.

With a command: its output is streamed, the container removed, and strata exits with the
command's exit code. Without: the node starts detached with the image's command (strata-node:
STRATA_ROLES picks the daemons); strata prints the container id, `docker logs -f ID` follows
it and `docker rm -f ID` stops it.";

// Only `cli` writes to stdout (the crate's lints refuse `print!` elsewhere).
#[allow(clippy::print_stdout)]
fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Loads a recipe the way every command does: validated, with `SOURCE_DATE_EPOCH` applied.
pub fn load_recipe(path: &std::path::Path) -> Result<Recipe> {
    let mut recipe = crate::recipe::load(path)?;
    let sde = std::env::var("SOURCE_DATE_EPOCH").ok();
    recipe.apply_source_date_epoch(sde.as_deref())?;
    Ok(recipe)
}

/// `verify --repair`: blobs back from the cache, then each recipe given built into the store.
fn repair_store(
    cli: &Cli,
    recipes: &[PathBuf],
    cache: Option<&std::path::Path>,
) -> Result<Vec<String>> {
    let dir = cache
        .map(PathBuf::from)
        .unwrap_or_else(crate::cache::Cache::default_dir);
    let mut repaired = inspect::repair(&cli.output, &crate::cache::Cache::read_only(&dir))?;
    for r in recipes {
        let recipe = load_recipe(r)?;
        let opts = build::Options {
            output: cli.output.clone(),
            cache: Some(dir.clone()),
            quiet: cli.quiet,
            repairing: true,
            ..build::Options::default()
        };
        repaired.extend(build::build(&recipe, &opts)?.repaired_blobs);
    }
    Ok(repaired)
}

fn options(cli: &Cli, r: &RecipeArgs, refresh_base: bool) -> build::Options {
    build::Options {
        remote: Default::default(),
        output: cli.output.clone(),
        cache: r.cache.clone(),
        no_cache: r.no_cache,
        refresh_base,
        only: r.only.clone(),
        quiet: cli.quiet,
        overrides: r.policy.overrides(),
        repairing: false,
        disks: false,
    }
}

/// Prints `text` or, with `--json`, the document.
#[allow(clippy::print_stdout)]
fn show<T: serde::Serialize>(cli: &Cli, v: &T, text: impl FnOnce(&T) -> String) -> Result<()> {
    if cli.json {
        print_json(v)
    } else {
        print!("{}", text(v));
        Ok(())
    }
}

/// `strata publish`: the images (or the whole store), the options, the report.
fn publish(cli: &Cli) -> Result<()> {
    let Command::Publish {
        images,
        all,
        cloud,
        visibility,
        members,
        protected,
        tags,
        import,
        dry_run,
        keep,
        prune,
        allow_private_key,
        timeout,
        wait,
    } = &cli.command
    else {
        unreachable!("publish() is called for the publish command")
    };
    let images = if *all {
        inspect::ls(&cli.output)?
            .into_iter()
            .map(|i| i.name)
            .collect()
    } else if images.is_empty() {
        return Err(crate::support::error::BadInput(
            "name the images to publish (e.g. hadoop-lab:3.3.6), or pass --all".into(),
        )
        .into());
    } else {
        images.clone()
    };
    let opts = crate::publish::Options {
        output: cli.output.clone(),
        cloud: cloud.clone(),
        visibility: *visibility,
        protected: *protected,
        members: members.clone(),
        tags: tags.clone(),
        import: *import,
        dry_run: *dry_run,
        prune: *prune,
        keep: keep.map(|k| k as usize),
        allow_private_key: *allow_private_key,
        timeout: std::time::Duration::from_secs(*timeout),
        wait: std::time::Duration::from_secs(*wait),
        quiet: cli.quiet,
    };
    let ensure_disk = |image: &str| ensure_disk(cli, image);
    let rep = crate::publish::publish(&opts, &images, &ensure_disk)?;
    show(cli, &rep, text::publish)
}

/// The image's disk, made (as `strata disk` makes it, without a boot test) when it is missing
/// or was made from another build of the image.
fn ensure_disk(cli: &Cli, image: &str) -> Result<crate::oci::disks::DiskRecord> {
    use crate::oci::disks;
    let manifest = crate::oci::view::View::open(&cli.output)?.find(image)?.1;
    if let Some(rec) = disks::read_record(&cli.output, image)?
        && disks::is_current(&cli.output, &rec, manifest.digest())
    {
        return Ok(rec);
    }
    crate::disk::disk(&crate::disk::Options {
        output: cli.output.clone(),
        image: image.to_owned(),
        boot_test: false,
        firmware: vec![],
        quiet: cli.quiet,
        boot_timeout: std::time::Duration::from_secs(300),
        flavor_disk: None,
        overlay: false,
        disk_budget: None,
        compress: None,
    })?;
    disks::read_record(&cli.output, image)?
        .ok_or_else(|| anyhow::anyhow!("`strata disk {image}` wrote no disk record"))
}

/// `strata run`: a command's output goes straight to stdout/stderr; the report after it.
fn run_container(cli: &Cli) -> Result<()> {
    let Command::Run {
        image,
        cmd,
        dist,
        env,
        name,
        smoke,
        timeout,
    } = &cli.command
    else {
        unreachable!("run_container() is called for the run command")
    };
    let opts = crate::publish::docker::RunOptions {
        store: cli.output.clone(),
        image: image.clone(),
        cmd: cmd.clone(),
        dist: dist.clone(),
        env: env.clone(),
        name: name.clone(),
        smoke: *smoke,
        load_timeout: timeout.map(std::time::Duration::from_secs),
        quiet: cli.quiet,
    };
    // With --json a command's output goes to stderr, so stdout holds only the document.
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    let out: &mut dyn std::io::Write = if cli.json { &mut err } else { &mut out };
    let mut err2 = std::io::stderr();
    match crate::publish::docker::run(&opts, out, &mut err2) {
        Ok(rep) => show(cli, &rep, text::run),
        Err(e) => {
            if let Some(f) = e.downcast_ref::<crate::publish::docker::smoke::SmokeFailed>() {
                show(cli, &f.0, text::run)?;
            }
            Err(e)
        }
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    match &cli.command {
        Command::Build { .. } => build_args::build_command(&cli),
        Command::Plan { recipe } => {
            let r = load_recipe(&recipe.recipe)?;
            let rep = build::plan(&r, &options(&cli, recipe, false))?;
            show(&cli, &rep, text::plan)?;
            match rep.budget_error() {
                Some(e) => Err(e.into()),
                None => Ok(()),
            }
        }
        Command::Report { html, policy } => {
            let reports = report::report(&cli.output, &policy.overrides())?;
            if let Some(file) = html {
                crate::support::fsx::atomic_write_anywhere(
                    file,
                    report::html(&reports, &cli.output)?.as_bytes(),
                )?;
            }
            show(&cli, &reports, |r| text::report(r, html.as_deref()))?;
            match report::budget_error(&reports) {
                Some(e) => Err(e.into()),
                None => Ok(()),
            }
        }
        Command::Disk {
            image,
            boot_test,
            firmware,
            boot_timeout,
            flavor_disk,
            overlay,
            disk_budget,
            compress,
        } => {
            let rep = crate::disk::disk(&crate::disk::Options {
                flavor_disk: flavor_disk.map(|s| s.0),
                overlay: *overlay,
                disk_budget: disk_budget.map(|s| s.0),
                compress: *compress,
                output: cli.output.clone(),
                image: image.clone(),
                boot_test: *boot_test,
                firmware: firmware.clone(),
                quiet: cli.quiet,
                boot_timeout: std::time::Duration::from_secs(*boot_timeout),
            })?;
            show(&cli, &rep, text::disk)
        }
        Command::Publish { .. } => publish(&cli),
        Command::Push { .. } => share::push(&cli),
        Command::Pull { .. } => share::pull(&cli),
        Command::Ls => show(&cli, &inspect::ls(&cli.output)?, |r| text::ls(r.as_slice())),
        Command::Inspect { image } => {
            show(&cli, &inspect::inspect(&cli.output, image)?, text::inspect)
        }
        Command::Diff { a, b } => show(&cli, &inspect::diff(&cli.output, a, b)?, text::diff),
        Command::Verify {
            repair,
            recipes,
            cache,
        } => {
            let repaired = if *repair {
                repair_store(&cli, recipes, cache.as_deref())?
            } else {
                vec![]
            };
            let mut rep = inspect::verify(&cli.output)?;
            rep.repaired = repaired;
            if *repair && !rep.problems.is_empty() {
                rep.problems.push(format!(
                    "not repaired: the cache does not hold these blobs intact; build the recipe \
                     of the damaged images into the store (`strata verify --repair RECIPE -o {}` \
                     or `strata build RECIPE -o {}`)",
                    cli.output.display(),
                    cli.output.display()
                ));
            }
            show(&cli, &rep, text::verify)?;
            inspect::damaged(&rep)
        }
        Command::Gc { dry_run } => show(&cli, &inspect::gc(&cli.output, *dry_run)?, text::gc),
        Command::Export {
            images,
            oci_archive,
        } => {
            let rep = inspect::export_oci_archive(&cli.output, images, oci_archive)?;
            show(&cli, &rep, text::export)
        }
        Command::Load {
            images,
            all,
            timeout,
        } => {
            if images.is_empty() && !*all {
                return Err(crate::support::error::BadInput(
                    "name the images to load (e.g. hadoop-lab:3.3.6), or pass --all".into(),
                )
                .into());
            }
            let rep = crate::publish::docker::load(
                &cli.output,
                images,
                timeout.map(std::time::Duration::from_secs),
                cli.quiet,
            )?;
            show(&cli, &rep, text::load)
        }
        Command::Run { .. } => run_container(&cli),
        Command::Preflight {
            image,
            cloud,
            flavor,
            flavors,
            timeout,
        } => {
            let rep = crate::publish::preflight::preflight(&crate::publish::preflight::Options {
                output: cli.output.clone(),
                image: image.clone(),
                cloud: cloud.clone(),
                flavor: flavor.clone(),
                flavors: flavors.clone(),
                timeout: std::time::Duration::from_secs(*timeout),
                quiet: cli.quiet,
            })?;
            show(&cli, &rep, text::preflight)?;
            rep.verdict()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("strata").chain(args.iter().copied()))
    }

    #[test]
    fn every_command_parses() {
        for args in [
            &["build"][..],
            &[
                "build",
                "r.toml",
                "--only",
                "3.3.6",
                "--no-cache",
                "--refresh-base",
            ],
            &[
                "build",
                "--image-budget",
                "600MiB",
                "--layer-budget",
                "base=450MiB",
            ],
            &["plan", "--min-shared", "0.9", "--json"],
            &["report", "--html", "r.html", "-o", "out"],
            &[
                "disk",
                "hadoop-lab:3.3.6",
                "--boot-test",
                "--firmware",
                "uefi",
            ],
            &[
                "disk",
                "x",
                "--flavor-disk",
                "4GiB",
                "--compress",
                "zstd",
                "--overlay",
            ],
            &["ls", "-q"],
            &["inspect", "3.3.6"],
            &["diff", "a", "b"],
            &["verify"],
            &["verify", "--repair", "recipes/lab.toml", "--cache", "c"],
            &["gc", "--dry-run"],
            &["export", "a", "--oci-archive", "x.tar"],
            &["push", "hadoop-lab:3.3.6", "reg:5000/lab:x", "--insecure"],
            &[
                "push",
                "--all",
                "reg:5000/lab",
                "--jobs",
                "8",
                "--chunk-size",
                "8MiB",
            ],
            &[
                "push",
                "--all",
                "r/l",
                "--username",
                "u",
                "--password-stdin",
            ],
            &[
                "pull",
                "reg:5000/lab:3.3.6",
                "reg:5000/lab:base",
                "--insecure",
            ],
            &["load", "hadoop-lab:3.3.6", "--timeout", "900"],
            &["load", "--all"],
            &["run", "x", "--", "sh", "-c", "exit 3"],
            &[
                "run",
                "x",
                "--dist",
                "/srv",
                "-e",
                "STRATA_ROLES=namenode",
                "--name",
                "n1",
            ],
            &["run", "x", "--smoke", "--json"],
        ] {
            parse(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        }
    }

    #[test]
    fn bad_values_are_refused_before_any_work() {
        for args in [
            &["disk", "x", "--compress", "lz4"][..],
            &["disk", "x", "--firmware", "coreboot"],
            &["disk", "x", "--flavor-disk", "4 parsecs"],
            &["disk", "x", "--disk-budget", "-1GiB"],
            &["build", "--image-budget", "lots"],
            &["build", "--layer-budget", "base"],
            &["plan", "--min-shared", "1.5"],
            &["export", "a"],
            &["load", "a", "--all"],
            &["run", "x", "-e", "NOVALUE"],
            &["run", "x", "--smoke", "--", "true"],
            &["run", "x", "--name", "n", "--", "true"],
            &["frobnicate"],
            &["push", "--all", "r/l", "--jobs", "0"],
            &["push", "--all", "r/l", "--username", "u"],
            &["push", "--all", "r/l", "--password-stdin"],
            &["push", "a", "b", "c"],
            &["pull"],
        ] {
            let e = parse(args).expect_err(&format!("{args:?} must be refused"));
            assert_eq!(e.exit_code(), 2, "{args:?}: {e}");
        }
    }

    #[test]
    fn typed_values_arrive_typed() {
        let cli = parse(&[
            "disk",
            "x",
            "--firmware",
            "bios",
            "--compress",
            "zlib",
            "--flavor-disk",
            "2GiB",
        ])
        .unwrap();
        let Command::Disk {
            firmware,
            compress,
            flavor_disk,
            ..
        } = cli.command
        else {
            panic!("not disk");
        };
        assert_eq!(firmware, [Firmware::Bios]);
        assert_eq!(compress, Some(QcowCompression::Zlib));
        assert_eq!(flavor_disk, Some(Size(2 << 30)));
        let cli = parse(&["plan", "--layer-budget", "base=1KiB", "--min-shared", "0.5"]).unwrap();
        let Command::Plan { recipe } = cli.command else {
            panic!("not plan");
        };
        let o = recipe.policy.overrides();
        assert_eq!(o.layer_budgets, [("base".to_string(), Size(1024))]);
        assert_eq!(o.min_shared, Some(0.5));
    }
}
