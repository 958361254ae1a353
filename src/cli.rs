//! # Command line
//!
//! The clap structs and ONE dispatch to the library. Every command takes `-o/--output DIR` (the
//! store, default `output/`) and `--json` (one document on stdout; progress stays on stderr).

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use crate::build::{self, human};
use crate::inspect;

const AFTER_HELP: &str = "\
Quick start:
  strata build                      build recipes/lab.toml: one image per Hadoop version
  strata ls                         the images, with digests and sizes
  strata inspect hadoop-lab:3.3.6   its layers, their sizes, which images share each
  strata diff hadoop-lab:3.3.6 hadoop-lab:3.4.1
  strata verify                     re-hash every blob, check every manifest

Environment:
  SOURCE_DATE_EPOCH  timestamps in layers and configs (default: the recipe's `epoch`)
  STRATA_CACHE       the build cache (default ~/.cache/strata)
  STRATA_SSH_KEY     the cluster's SSH private key (default: generated once under
                     ~/.local/share/strata/cluster-keys/<recipe>/)
  CI                 plain progress lines instead of bars

Exit codes: 0 ok, 1 failure, 2 bad input (recipe, arguments, tarball), 3 checksum mismatch,
4 damaged store (verify), 5 budget exceeded.";

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
    #[arg(long, value_name = "SIZE")]
    pub image_budget: Option<String>,
    /// Budget of one layer family: base, jdk-<name>, a [[layer]] name, hadoop-dist (repeatable).
    #[arg(long, value_name = "NAME=SIZE")]
    pub layer_budget: Vec<String>,
    /// Floor on each image's fraction of bytes in layers shared with another image (0–1).
    #[arg(long, value_name = "RATIO")]
    pub min_shared: Option<String>,
}

impl PolicyArgs {
    pub fn overrides(&self) -> crate::policy::Overrides {
        crate::policy::Overrides {
            image_budget: self.image_budget.clone(),
            layer_budgets: self.layer_budget.clone(),
            min_shared: self.min_shared.clone(),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build every image of a recipe into the store.
    #[command(
        after_help = "A layer whose inputs did not change is taken from the cache; a no-op rebuild \
compresses nothing. The store is updated atomically at the end: a failed build leaves it as it was."
    )]
    Build {
        #[command(flatten)]
        recipe: RecipeArgs,
        /// Build the base root filesystem again (takes Debian security updates).
        #[arg(long)]
        refresh_base: bool,
    },
    /// Show what a build would do: every layer, its key, and whether it is cached.
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
environment, java, sshd, the configs; results are kept beside the disk."
    )]
    Disk {
        /// `recipe:version`, a tag or a manifest digest.
        image: String,
        /// Boot the disk under QEMU and check it.
        #[arg(long)]
        boot_test: bool,
        /// Firmware to boot-test (repeatable).
        #[arg(long, value_name = "bios|uefi", default_values = ["bios", "uefi"])]
        firmware: Vec<String>,
        /// Seconds to wait for the login prompt and the boot check.
        #[arg(long, default_value_t = 300)]
        boot_timeout: u64,
        /// Boot-test a copy grown to this size, as a flavor's disk (e.g. 4GiB): the root must grow.
        #[arg(long, value_name = "SIZE")]
        flavor_disk: Option<String>,
        /// Also write a per-version overlay on the recipe's shared base disk (local development;
        /// Glance refuses backing files, so publish uses the flattened disk).
        #[arg(long)]
        overlay: bool,
        /// Budget on the disk's virtual size, overriding the recipe's [disk] budget.
        #[arg(long, value_name = "SIZE")]
        disk_budget: Option<String>,
        /// Compress the qcow2: zlib (any QEMU), or zstd (QEMU >= 5.1 on every compute host).
        #[arg(long, value_name = "zlib|zstd")]
        compress: Option<String>,
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
    Verify,
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
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn options(cli: &Cli, r: &RecipeArgs, refresh_base: bool) -> build::Options {
    build::Options {
        recipe: r.recipe.clone(),
        output: cli.output.clone(),
        cache: r.cache.clone(),
        no_cache: r.no_cache,
        refresh_base,
        only: r.only.clone(),
        quiet: cli.quiet,
        overrides: r.policy.overrides(),
    }
}

fn short(d: &str) -> &str {
    let hex = d.trim_start_matches("sha256:");
    &hex[..hex.len().min(12)]
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    match &cli.command {
        Command::Build {
            recipe,
            refresh_base,
        } => {
            let rep = match build::build(&options(&cli, recipe, *refresh_base)) {
                Ok(r) => r,
                Err(e) => {
                    // CI gets the verdicts as JSON even when the budget stops the build.
                    if cli.json
                        && let Some(b) = e.downcast_ref::<crate::policy::BudgetExceeded>()
                    {
                        print_json(
                            &serde_json::json!({"error": "budget exceeded", "policy": b.0}),
                        )?;
                    }
                    return Err(e);
                }
            };
            if cli.json {
                return print_json(&rep);
            }
            for i in &rep.images {
                let key = if i.carries_private_key {
                    "  [carries the cluster SSH private key]"
                } else {
                    ""
                };
                println!(
                    "{:<28} {}  {:>10}{key}",
                    i.name,
                    short(&i.manifest),
                    human(i.size)
                );
            }
            println!(
                "{} images, {} layers ({} built, {} cached) in {:.1}s → {}",
                rep.images.len(),
                rep.layers_total,
                rep.layers_built,
                rep.layers_cached,
                rep.seconds,
                rep.output.display()
            );
        }
        Command::Plan { recipe } => {
            let rep = build::plan(&options(&cli, recipe, false))?;
            let fail = || -> Result<()> {
                if rep.enforce_fails {
                    return Err(crate::policy::BudgetExceeded(rep.policy.clone()).into());
                }
                Ok(())
            };
            if cli.json {
                print_json(&rep)?;
                return fail();
            }
            if !rep.base_ready {
                println!(
                    "base: not built yet (the first build runs mmdebstrap; keys of layers derived from it are provisional)"
                );
            }
            println!(
                "{:<24} {:<8} {:>10} {:>10}  used by",
                "LAYER", "STATE", "SIZE", "UNPACKED"
            );
            for l in &rep.layers {
                let size = l.size.map(human).unwrap_or_else(|| "-".into());
                let unc = l.uncompressed_size.map(human).unwrap_or_else(|| "-".into());
                let state = if l.cached { "cached" } else { "build" };
                println!(
                    "{:<24} {:<8} {:>10} {:>10}  {} image(s)",
                    l.name,
                    state,
                    size,
                    unc,
                    l.used_by.len()
                );
            }
            println!();
            println!(
                "{:<22} {:>10} {:>9} {:>9}  (estimated until built)",
                "IMAGE", "BYTES", "SHARED", "BASELINE"
            );
            for st in &rep.policy.images {
                println!(
                    "{:<22} {:>10} {:>8.2}% {:>8.2}%",
                    st.name,
                    human(st.bytes),
                    st.shared_fraction * 100.0,
                    st.baseline_fraction * 100.0
                );
            }
            if let Some(first) = rep.policy.pairs.first() {
                let same = rep
                    .policy
                    .pairs
                    .iter()
                    .all(|p| p.by_chain == first.by_chain && p.on_disk == first.on_disk);
                if same {
                    println!(
                        "every pair of images shares {} by chain, {} on disk",
                        human(first.by_chain),
                        human(first.on_disk)
                    );
                } else {
                    for p in &rep.policy.pairs {
                        println!(
                            "{} & {}: {} by chain, {} on disk",
                            p.a,
                            p.b,
                            human(p.by_chain),
                            human(p.on_disk)
                        );
                    }
                }
            }
            print!("{}", crate::report::checks_text(&rep.policy));
            fail()?;
        }
        Command::Report { html, policy } => {
            let reports = crate::report::report(&cli.output, &policy.overrides())?;
            if let Some(file) = html {
                crate::store::atomic_write_anywhere(
                    file,
                    crate::report::html(&reports, &cli.output).as_bytes(),
                )?;
            }
            if cli.json {
                print_json(&reports)?;
            } else {
                for r in &reports {
                    print!("{}", crate::report::text(r));
                }
                if let Some(file) = html {
                    println!("page: {}", file.display());
                }
            }
            for r in &reports {
                if !r.verdicts.broken().is_empty()
                    && r.policy.enforce == crate::policy::Enforce::Fail
                {
                    return Err(crate::policy::BudgetExceeded(r.verdicts.clone()).into());
                }
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
            let disk_budget = match disk_budget {
                Some(s) => Some(
                    s.parse::<crate::policy::Size>()
                        .map_err(|e| crate::BadInput(format!("--disk-budget: {e}")))?
                        .0,
                ),
                None => None,
            };
            let flavor_disk = match flavor_disk {
                Some(s) => Some(
                    s.parse::<crate::policy::Size>()
                        .map_err(|e| crate::BadInput(format!("--flavor-disk: {e}")))?
                        .0,
                ),
                None => None,
            };
            let rep = crate::disk::disk(&crate::disk::Options {
                flavor_disk,
                overlay: *overlay,
                disk_budget,
                compress: compress.clone(),
                output: cli.output.clone(),
                image: image.clone(),
                boot_test: *boot_test,
                firmware: firmware.clone(),
                quiet: cli.quiet,
                boot_timeout: std::time::Duration::from_secs(*boot_timeout),
            })?;
            if cli.json {
                return print_json(&rep);
            }
            println!(
                "{} → {} ({} qcow2, {} virtual, min_disk {} GiB; root content {})",
                rep.image,
                rep.disk.display(),
                human(rep.qcow2_bytes),
                human(rep.virtual_size),
                rep.min_disk_gib,
                human(rep.root_used_bytes)
            );
            if let (Some(o), Some(b), Some(n)) = (&rep.overlay, &rep.base_disk, rep.overlay_bytes) {
                println!(
                    "overlay {} ({}) on the shared base disk {}",
                    o.display(),
                    human(n),
                    b.display()
                );
            }
            for b in &rep.boot_tests {
                let secs = b
                    .seconds_to_login
                    .map(|s| format!("{s:.0}s to login"))
                    .unwrap_or_default();
                println!(
                    "boot test {}: {} {secs}",
                    b.firmware,
                    if b.passed { "passed" } else { "FAILED" }
                );
            }
        }
        Command::Ls => {
            let rows = inspect::ls(&cli.output)?;
            if cli.json {
                return print_json(&rows);
            }
            println!(
                "{:<26} {:<12} {:>10} {:>10} {:>6}  JDK",
                "IMAGE", "DIGEST", "SIZE", "UNPACKED", "LAYERS"
            );
            for r in rows {
                let unc = r.uncompressed_size.map(human).unwrap_or_else(|| "-".into());
                let key = if r.carries_private_key {
                    "  (carries private key)"
                } else {
                    ""
                };
                println!(
                    "{:<26} {:<12} {:>10} {:>10} {:>6}  {}{key}",
                    r.name,
                    short(&r.digest),
                    human(r.size),
                    unc,
                    r.layers,
                    r.jdk.unwrap_or_default()
                );
            }
        }
        Command::Inspect { image } => {
            let i = inspect::inspect(&cli.output, image)?;
            if cli.json {
                return print_json(&i);
            }
            println!("image     {}", i.name);
            println!("manifest  {}", i.manifest);
            println!("config    {}", i.config);
            if let Some(c) = &i.created {
                println!("created   {c}");
            }
            if i.carries_private_key {
                println!(
                    "WARNING   carries the cluster SSH private key: never publish it publicly"
                );
            }
            for (k, v) in &i.labels {
                println!("label     {k}={v}");
            }
            println!(
                "\n{:<3} {:<22} {:<12} {:>10} {:>10}  shared with",
                "#", "LAYER", "DIGEST", "SIZE", "UNPACKED"
            );
            for (n, l) in i.layers.iter().enumerate() {
                let unc = l.uncompressed_size.map(human).unwrap_or_else(|| "-".into());
                let shared = if l.shared_with.is_empty() {
                    "-".to_string()
                } else {
                    format!(
                        "{} image(s): {}",
                        l.shared_with.len(),
                        l.shared_with.join(", ")
                    )
                };
                println!(
                    "{:<3} {:<22} {:<12} {:>10} {:>10}  {shared}",
                    n,
                    l.name.as_deref().unwrap_or("?"),
                    short(&l.digest),
                    human(l.size),
                    unc
                );
            }
            if !i.packages.is_empty() {
                println!("\n{} Debian packages:", i.packages.len());
                let line: Vec<String> =
                    i.packages.iter().map(|(p, v)| format!("{p} {v}")).collect();
                for chunk in line.chunks(3) {
                    println!(
                        "  {}",
                        chunk
                            .iter()
                            .map(|s| format!("{s:<40}"))
                            .collect::<String>()
                            .trim_end()
                    );
                }
            }
        }
        Command::Diff { a, b } => {
            let d = inspect::diff(&cli.output, a, b)?;
            if cli.json {
                return print_json(&d);
            }
            println!("--- {}\n+++ {}", d.a, d.b);
            for l in &d.layers {
                let na = l.a.as_deref().unwrap_or("(none)");
                let nb = l.b.as_deref().unwrap_or("(none)");
                if l.shared {
                    println!("layer {}: {na}: same blob", l.position);
                    continue;
                }
                println!(
                    "layer {}: {na} → {nb}: {} added, {} removed, {} changed",
                    l.position,
                    l.added.len(),
                    l.removed.len(),
                    l.changed.len()
                );
                for p in &l.removed {
                    println!("  - /{p}");
                }
                for p in &l.added {
                    println!("  + /{p}");
                }
                for p in &l.changed {
                    println!("  ~ /{p}");
                }
            }
        }
        Command::Verify => {
            let rep = inspect::verify(&cli.output)?;
            if cli.json {
                print_json(&rep)?;
            } else {
                println!(
                    "{} blobs ({}) re-hashed, {} images checked, {} layers decompressed",
                    rep.blobs,
                    human(rep.bytes),
                    rep.images,
                    rep.layers_decompressed
                );
                if rep.temp_files > 0 || rep.unreferenced_blobs > 0 {
                    println!(
                        "note: {} temp file(s) of interrupted writes and {} unreferenced blob(s): harmless; `strata gc` removes them",
                        rep.temp_files, rep.unreferenced_blobs
                    );
                }
                for p in &rep.problems {
                    println!("PROBLEM: {p}");
                }
                if rep.problems.is_empty() {
                    println!("ok");
                }
            }
            inspect::damaged(&rep)?;
        }
        Command::Gc { dry_run } => {
            let rep = inspect::gc(&cli.output, *dry_run)?;
            if cli.json {
                return print_json(&rep);
            }
            let verb = if rep.dry_run {
                "would remove"
            } else {
                "removed"
            };
            println!(
                "{verb} {} blob(s) ({}) and {} temp file(s); kept {}",
                rep.removed_blobs,
                human(rep.removed_bytes),
                rep.removed_temp_files,
                rep.kept_blobs
            );
        }
        Command::Export {
            images,
            oci_archive,
        } => {
            let rep = inspect::export_oci_archive(&cli.output, images, oci_archive)?;
            if cli.json {
                return print_json(&rep);
            }
            println!(
                "{} image(s), {} blobs ({}) → {}",
                rep.images.len(),
                rep.blobs,
                human(rep.bytes),
                rep.file.display()
            );
        }
    }
    Ok(())
}
