//! # Bootable disks: an image's layers as one hybrid BIOS/UEFI qcow2, without root
//!
//! `strata disk IMAGE` reads the store alone: the image's layers plus what its disk adds (the
//! disk-only package layer with the kernel and systemd, and disk-only layers such as `vm`),
//! recorded at build time.
//!
//! 1. **Flatten** ([`flatten`]) the layers in order into one tar: what the recipe's versions
//!    share first, the per-version rest last, so every version's disk starts with the same bytes.
//! 2. **Root filesystem** ([`assemble`]): `mke2fs -t ext4 -d rootfs.tar` (e2fsprogs ≥ 1.47.1)
//!    with a UUID and hash seed derived from the shared layers and the epoch: the same image
//!    gives the same bytes. Size: content plus a margin, or `[disk] size`.
//! 3. **GPT** made with `sfdisk` in a plain file with fixed GUIDs: a BIOS boot partition, an EFI
//!    system partition, the root.
//! 4. **UEFI**: a Unified Kernel Image (`objcopy` + systemd's `linuxx64.efi.stub`, its PE
//!    timestamp fixed) as `EFI/BOOT/BOOTX64.EFI` on a FAT made by `mkfs.fat --invariant` + mtools.
//! 5. **BIOS**: `grub-mkimage -O i386-pc` with an embedded config that boots the same kernel;
//!    GRUB's `boot.img` code goes into the protective MBR and `core.img` into the BIOS boot
//!    partition, with the sector pointers patched here (what grub-install would do).
//! 6. `qemu-img convert -O qcow2`, `qemu-img check`; written to a temp name, renamed at the end.
//!    `--overlay` also writes the recipe's shared base disk (once; same size and ids as every
//!    version's disk) and this version as an overlay on it: an empty overlay on the flattened
//!    disk, `qemu-img rebase`d onto the base, keeps only the clusters that differ (≈1 MiB).
//!
//! `--boot-test` ([`boot`]) boots the disk under QEMU (TCG; KVM where it works) on BIOS and on
//! UEFI, reads the serial console for the `STRATA-BOOT-CHECK` line the `vm` layer prints once
//! boot is done, and for a `login:` prompt; the result is kept beside the disk. An image built
//! with `[ssh] deliver = "boot"` gets its cluster key on a config drive in that test, and the
//! test logs in with it ([`config_drive`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use oci_spec::image::{Digest, MediaType};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::layer::{self, Entry};
use crate::oci::disks::{self, DiskRecord};
use crate::oci::image::{LABEL_KEY_FINGERPRINT, LABEL_SSH_DELIVER, split_name};
use crate::oci::view::View;
use crate::policy::{BudgetExceeded, Check, Enforce, Verdicts};
use crate::recipe::{DiskSpec, KeyDelivery};
use crate::source::keys;
use crate::support::cmd;
use crate::support::error::BadInput;
use crate::support::fsx::{self, TMP_PREFIX};
use crate::support::hash::CountingWriter;
use crate::support::progress::Progress;
use crate::support::units::human;

pub mod assemble;
pub mod boot;
pub mod config_drive;
pub mod flatten;

use assemble::{Boot, ROOT_START, SECTOR};
pub use boot::{BootResult, CHECK_MARKER, boot_test};
pub use flatten::flatten_split;

pub use crate::oci::disks::DISKS_DIR;
/// The tools a disk build runs (the boot test adds `qemu-system-x86_64`).
pub const TOOLS: [&str; 8] = [
    "mke2fs",
    "sfdisk",
    "mkfs.fat",
    "mcopy",
    "mmd",
    "grub-mkimage",
    "objcopy",
    "qemu-img",
];

/// The firmware a boot test starts the disk with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Firmware {
    /// SeaBIOS: OpenStack's default.
    Bios,
    /// OVMF (`hw_firmware_type=uefi` in Glance).
    Uefi,
}

impl std::fmt::Display for Firmware {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
        })
    }
}

/// qcow2 cluster compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum QcowCompression {
    /// Any QEMU reads it; slow to write.
    Zlib,
    /// Needs QEMU ≥ 5.1 on every compute host.
    Zstd,
}

impl QcowCompression {
    fn name(self) -> &'static str {
        match self {
            QcowCompression::Zlib => "zlib",
            QcowCompression::Zstd => "zstd",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub output: PathBuf,
    pub image: String,
    pub boot_test: bool,
    pub firmware: Vec<Firmware>,
    pub quiet: bool,
    pub boot_timeout: Duration,
    /// Boot-test on a copy grown to this size, as a flavor's disk would be (checks growfs).
    pub flavor_disk: Option<u64>,
    /// Also write a per-version overlay backed by the recipe's shared base disk.
    pub overlay: bool,
    /// Overrides `[disk] budget` (the virtual size), for experiments.
    pub disk_budget: Option<u64>,
    /// qcow2 compression: None (fastest to write and boot).
    pub compress: Option<QcowCompression>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct DiskReport {
    pub image: String,
    pub manifest: String,
    pub disk: PathBuf,
    pub qcow2_bytes: u64,
    pub virtual_size: u64,
    /// Glance's `min_disk`: the virtual size rounded up to GiB.
    pub min_disk_gib: u64,
    pub root_used_bytes: u64,
    pub boot_tests: Vec<BootResult>,
    /// `--overlay`: this version as an overlay on the shared base disk.
    pub overlay: Option<PathBuf>,
    pub overlay_bytes: Option<u64>,
    pub base_disk: Option<PathBuf>,
}

/// Runs an external tool through the one helper (command and stderr tail in the error).
fn tool(c: Command) -> Result<()> {
    cmd::run(c, |_| {})
}

/// What a disk is made of, read from the store.
struct Source {
    name: String,
    digest: Digest,
    epoch: u64,
    spec: DiskSpec,
    /// Every layer in order (the image's, then the disk's) with its media type, and whether
    /// several versions share it.
    layers: Vec<(Digest, MediaType, bool)>,
    /// The image takes its cluster key at boot: what the boot test delivers.
    keys_at_boot: Option<KeysAtBoot>,
}

/// What the store says of an image that takes its cluster key at boot.
struct KeysAtBoot {
    fingerprint: String,
    user: crate::recipe::User,
    /// The recipe's `[ssh] key`, as recorded.
    key: Option<PathBuf>,
}

impl KeysAtBoot {
    /// The image's own key, found as the build found it, for the boot test to deliver.
    fn key_test(&self, name: &str) -> Result<config_drive::KeyTest> {
        let key = keys::for_image(split_name(name).0, self.key.as_deref(), &self.fingerprint)
            .with_context(|| format!("the boot test of {name} delivers its cluster key"))?;
        Ok(config_drive::KeyTest {
            key,
            user: self.user.clone(),
        })
    }
}

/// Finds the image, its recipe's settings and its disk layers in the store record.
fn source(v: &View, query: &str) -> Result<Source> {
    let (name, desc) = v.find(query)?;
    let rec = v.record.image(&name).with_context(|| {
        format!("the store record lacks {name}: rebuild it with `strata build`")
    })?;
    let settings = v
        .record
        .settings_of(&name)
        .with_context(|| format!("the store record lacks the settings of {name}'s recipe"))?;
    let Some(spec) = settings.disk.clone() else {
        return Err(BadInput(format!(
            "{name} has no disk settings: its recipe needs a [disk] table (with a kernel in `packages`, unless the base has one) to make bootable disks"
        ))
        .into());
    };
    if !spec.packages.is_empty() && rec.disk_layers.is_empty() {
        return Err(BadInput(format!(
            "{name} was built without what its disk adds ([disk] packages): run `strata build --disks` with its recipe ({}) into this store, then `strata disk {name}` again",
            rec.recipe()
        ))
        .into());
    }
    let manifest = v.manifest(&desc)?;
    let labels = v
        .config(&manifest)?
        .config()
        .as_ref()
        .and_then(|c| c.labels().clone())
        .unwrap_or_default();
    let keys_at_boot = match (
        labels.get(LABEL_SSH_DELIVER).map(String::as_str),
        labels.get(LABEL_KEY_FINGERPRINT),
    ) {
        (Some("boot"), Some(fp)) => Some(KeysAtBoot {
            fingerprint: fp.clone(),
            user: settings.user.clone(),
            key: (settings.ssh.deliver == KeyDelivery::Boot)
                .then(|| settings.ssh.key.clone())
                .flatten(),
        }),
        (Some("boot"), None) => {
            bail!(
                "{name} takes its SSH key at boot but its config names no key fingerprint ({LABEL_KEY_FINGERPRINT}): rebuild it"
            )
        }
        _ => None,
    };
    let mut layers = Vec::new();
    for l in manifest.layers() {
        let shared = v
            .record
            .layer(l.digest())
            .is_some_and(|r| r.shared_by.len() > 1);
        layers.push((l.digest().clone(), l.media_type().clone(), shared));
    }
    for d in &rec.disk_layers {
        let r = v.record.layer(d).with_context(|| {
            format!("the store record lacks disk layer {d} of {name}: rebuild it")
        })?;
        layers.push((d.clone(), r.media_type.clone(), true));
    }
    Ok(Source {
        name,
        digest: desc.digest().clone(),
        epoch: settings.epoch,
        spec,
        layers,
        keys_at_boot,
    })
}

/// The flattened root file system, written as one tar.
struct Rootfs {
    head: Vec<Entry>,
    tar: PathBuf,
    /// Bytes of the tar that every version shares (its head) and in all.
    shared_used: u64,
    used: u64,
}

/// Step 1: decompress the layers into `w`, flatten them, write the root tar (head first).
fn flatten_into(v: &View, src: &Source, w: &Path) -> Result<(Rootfs, Vec<Entry>)> {
    let mut tars = Vec::new();
    let mut shared = Vec::new();
    for (i, (d, media, s)) in src.layers.iter().enumerate() {
        let path = w.join(format!("layer-{i}.tar"));
        let f = std::io::BufReader::new(v.store.open_blob(d)?);
        let mut r = crate::layer::compress::Compression::reader_for(media, f)?;
        let mut out = fsx::create(&path)?;
        std::io::copy(&mut r, &mut out)
            .with_context(|| format!("decompressing {d} into {path:?}"))?;
        tars.push(path);
        shared.push(*s);
    }
    let (head, tail) = flatten_split(&tars, &shared)?;
    let tar = w.join("rootfs.tar");
    // One pass: the head's size (the shared base disk's content) is where the tail starts.
    let mut f = CountingWriter {
        inner: std::io::BufWriter::new(fsx::create(&tar)?),
        n: 0,
    };
    let mut b = tar::Builder::new(&mut f);
    layer::append_entries(&mut b, &head, src.epoch)?;
    b.get_mut().flush()?;
    let head_end = b.get_ref().n;
    layer::append_entries(&mut b, &tail, src.epoch)?;
    b.finish().with_context(|| format!("writing {tar:?}"))?;
    drop(b);
    f.flush().with_context(|| format!("writing {tar:?}"))?;
    let rootfs = Rootfs {
        head,
        tar,
        shared_used: head_end + 1024,
        used: f.n,
    };
    Ok((rootfs, tail))
}

/// One root size for every version of the recipe (their overlays share a base disk): the shared
/// content, its margin, and 16 MiB for what a version adds, unless a version adds more.
fn root_size(spec: &DiskSpec, r: &Rootfs) -> Result<u64> {
    let mib = 1u64 << 20;
    let auto = (r.shared_used + r.shared_used / 4 + 272 * mib)
        .max(r.used + r.used / 4 + 256 * mib)
        .div_ceil(mib)
        * mib;
    match spec.size {
        Some(s) if s.0 < r.used + 64 * mib => Err(BadInput(format!(
            "[disk] size {} is smaller than the content ({}) plus 64 MiB of file-system overhead",
            human(s.0),
            human(r.used)
        ))
        .into()),
        Some(s) => Ok(s.0.div_ceil(mib) * mib),
        None => Ok(auto),
    }
}

/// Fails with exit 5 before anything is written when the virtual size breaks the budget.
fn check_budget(name: &str, budget: Option<u64>, virtual_size: u64, r: &Rootfs) -> Result<()> {
    let Some(budget) = budget else {
        return Ok(());
    };
    if virtual_size <= budget {
        return Ok(());
    }
    let check = Check {
        kind: "disk".into(),
        subject: name.to_string(),
        value: virtual_size as f64,
        limit: budget as f64,
        headroom: budget as f64 - virtual_size as f64,
        ok: Some(false),
        estimated: false,
        waits_for: None,
    };
    let advice = vec![format!(
        "the root file system holds {} ({} of it shared by the recipe's versions): right-size the base or the disk packages (`strata report` names the biggest files), or raise [disk] budget",
        human(r.used),
        human(r.shared_used)
    )];
    let v = Verdicts {
        enforce: Enforce::Fail,
        checks: vec![check],
        images: vec![],
        pairs: vec![],
        advice,
    };
    Err(BudgetExceeded(v).into())
}

/// The kernel, initramfs and os-release of the flattened tree.
fn boot_files(head: &[Entry], tail: &[Entry]) -> Result<(Vec<u8>, Vec<u8>, Vec<u8>)> {
    let by_path: std::collections::BTreeMap<&str, &Entry> = head
        .iter()
        .chain(tail)
        .map(|e| (e.path.as_str(), e))
        .collect();
    let kernel = flatten::file_bytes(&by_path, "vmlinuz", "kernel")?;
    let initrd = flatten::file_bytes(&by_path, "initrd.img", "initramfs")?;
    // Debian's /etc/os-release is a link to /usr/lib/os-release.
    let osrel = flatten::file_bytes(&by_path, "etc/os-release", "os-release")
        .ok()
        .filter(|b| !b.is_empty())
        .or_else(|| flatten::file_bytes(&by_path, "usr/lib/os-release", "os-release").ok())
        .unwrap_or_default();
    Ok((kernel, initrd, osrel))
}

/// Ids (UUIDs, seeds) come from the recipe and its shared layers, so every version's disk
/// starts as the same bytes.
fn disk_ident(src: &Source) -> String {
    let mut h = Sha256::new();
    h.update(split_name(&src.name).0.as_bytes());
    for (d, _, shared) in &src.layers {
        if *shared {
            h.update(d.to_string().as_bytes());
        }
    }
    hex::encode(h.finalize())
}

/// `qemu-img convert` of a raw disk to qcow2, then `qemu-img check`.
fn to_qcow2(raw: &Path, out: &Path, compress: Option<QcowCompression>) -> Result<()> {
    let mut c = Command::new("qemu-img");
    c.args(["convert", "-q", "-f", "raw", "-O", "qcow2"]);
    if let Some(kind) = compress {
        c.arg("-c")
            .arg("-o")
            .arg(format!("compression_type={}", kind.name()));
    }
    c.arg(raw).arg(out);
    tool(c)?;
    let mut c = Command::new("qemu-img");
    c.args(["check", "-q"]).arg(out);
    tool(c).context("qemu-img check of the new disk")
}

/// `strata disk IMAGE [--boot-test]`.
pub fn disk(opts: &Options) -> Result<DiskReport> {
    let progress = Progress::new(opts.quiet);
    for t in TOOLS {
        cmd::require(t)?;
    }
    if opts.boot_test {
        cmd::require("qemu-system-x86_64")?;
    }
    let v = View::open(&opts.output)?;
    let src = source(&v, &opts.image)?;
    let name = src.name.clone();
    // Found before any work: the boot test of an image that takes its key at boot delivers it.
    let key_test = match (&src.keys_at_boot, opts.boot_test) {
        (Some(k), true) => {
            for t in config_drive::TOOLS {
                cmd::require(t)?;
            }
            Some(k.key_test(&name)?)
        }
        _ => None,
    };
    let disks = opts.output.join(DISKS_DIR);
    fsx::create_dir_all(&disks)?;
    let stem = name.replace(':', "_");
    let work = tempfile::Builder::new()
        .prefix(&format!("{TMP_PREFIX}disk-"))
        .tempdir_in(&disks)
        .with_context(|| format!("creating a work directory in {disks:?}"))?;
    let w = work.path();

    let task = progress.task(format!("{name}: flattening layers"), None);
    let (rootfs, tail) = flatten_into(&v, &src, w)?;
    task.finish(format!(
        "{} entries ({} per version), {}",
        rootfs.head.len() + tail.len(),
        tail.len(),
        human(rootfs.used)
    ));
    let root_size = root_size(&src.spec, &rootfs)?;
    let (kernel, initrd, osrel) = boot_files(&rootfs.head, &tail)?;
    let guest_agent = rootfs
        .head
        .iter()
        .chain(&tail)
        .any(|e| e.path == "usr/sbin/qemu-ga" || e.path == "usr/bin/qemu-ga");
    drop(tail);
    let extra: String = src.spec.cmdline.iter().map(|a| format!(" {a}")).collect();
    let boot = Boot {
        kernel: &kernel,
        initrd: &initrd,
        osrel: &osrel,
        extra_cmdline: &extra,
        epoch: src.epoch,
    };
    let budget = opts.disk_budget.or(src.spec.budget.map(|b| b.0));
    let planned_size = (ROOT_START + root_size / SECTOR + 2048) * SECTOR;
    check_budget(&name, budget, planned_size, &rootfs)?;

    let ident = disk_ident(&src);
    let task = progress.task(
        format!("{name}: root file system, partitions, boot loaders"),
        None,
    );
    let (raw, total) = assemble::assemble(w, "disk", &rootfs.tar, root_size, &ident, &boot)?;
    fsx::remove_file(&rootfs.tar)?;
    task.finish(human(root_size));

    let task = progress.task(format!("{name}: qcow2"), None);
    let tmp_qcow = w.join("disk.qcow2");
    to_qcow2(&raw, &tmp_qcow, opts.compress)?;
    let dest = disks.join(format!("{stem}.qcow2"));
    fsx::rename(&tmp_qcow, &dest)?;
    let qcow2_bytes = fsx::metadata(&dest)?.len();
    task.finish(human(qcow2_bytes));
    let virtual_size = total * SECTOR;
    record_disk(&opts.output, &src, &dest, &osrel, virtual_size, guest_agent)?;

    let overlay = if opts.overlay {
        let o = Overlay {
            disks: &disks,
            w,
            stem: &stem,
            name: &name,
            ident: &ident,
            root_size,
        };
        Some(o.write(&rootfs, &boot, &progress)?)
    } else {
        None
    };
    let mut report = DiskReport {
        image: name.clone(),
        manifest: src.digest.to_string(),
        disk: dest.clone(),
        qcow2_bytes,
        virtual_size,
        min_disk_gib: virtual_size.div_ceil(1 << 30),
        root_used_bytes: rootfs.used,
        boot_tests: vec![],
        overlay_bytes: match &overlay {
            Some((o, _)) => Some(fsx::metadata(o)?.len()),
            None => None,
        },
        overlay: overlay.as_ref().map(|o| o.0.clone()),
        base_disk: overlay.map(|o| o.1),
    };
    if opts.boot_test {
        let t = BootTests {
            disks: &disks,
            stem: &stem,
            w,
            root_size,
            key: key_test.as_ref(),
        };
        t.run(opts, &mut report, &progress)?;
    }
    Ok(report)
}

/// Writes the disk's record (what `publish` reads) beside it.
fn record_disk(
    store: &Path,
    src: &Source,
    disk: &Path,
    osrel: &[u8],
    virtual_size: u64,
    guest_agent: bool,
) -> Result<()> {
    let (sha256, sha512, bytes) = crate::support::hash::sha256_and_sha512(fsx::open(disk)?)
        .with_context(|| format!("hashing {disk:?}"))?;
    let osrel = String::from_utf8_lossy(osrel);
    let field = |key: &str| {
        osrel.lines().find_map(|l| {
            l.strip_prefix(key)
                .and_then(|r| r.strip_prefix('='))
                .map(|v| v.trim_matches('"').to_owned())
        })
    };
    let rec = DiskRecord {
        image: src.name.clone(),
        manifest: src.digest.clone(),
        file: disk
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default(),
        sha256,
        sha512: Some(sha512),
        bytes,
        mtime: disks::mtime_of(disk)?,
        virtual_size,
        min_disk_gib: virtual_size.div_ceil(1 << 30),
        os_distro: field("ID"),
        os_version: field("VERSION_ID"),
        guest_agent,
    };
    disks::write_record(store, &rec)
}

/// The shared base disk (once per recipe and shared layers) and a version as an overlay on it.
struct Overlay<'a> {
    disks: &'a Path,
    w: &'a Path,
    stem: &'a str,
    name: &'a str,
    ident: &'a str,
    root_size: u64,
}

impl Overlay<'_> {
    /// Returns (overlay, base disk). Backing files are named relative to `disks/`.
    fn write(
        &self,
        rootfs: &Rootfs,
        boot: &Boot,
        progress: &Progress,
    ) -> Result<(PathBuf, PathBuf)> {
        let base_name = format!(
            "{}_base-{}.qcow2",
            split_name(self.name).0,
            &self.ident[..12]
        );
        let base_path = self.disks.join(&base_name);
        if !base_path.exists() {
            let task = progress.task(format!("{}: shared base disk {base_name}", self.name), None);
            let base_rootfs = self.w.join("base-rootfs.tar");
            let mut b = std::io::BufWriter::new(fsx::create(&base_rootfs)?);
            layer::write_tar(&rootfs.head, boot.epoch, &mut b)?;
            b.flush()
                .with_context(|| format!("writing {base_rootfs:?}"))?;
            drop(b);
            let (base_raw, _) = assemble::assemble(
                self.w,
                "base",
                &base_rootfs,
                self.root_size,
                self.ident,
                boot,
            )?;
            fsx::remove_file(&base_rootfs)?;
            let tmp = self.w.join("base.qcow2");
            let mut c = Command::new("qemu-img");
            c.args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
                .arg(&base_raw)
                .arg(&tmp);
            tool(c)?;
            fsx::rename(&tmp, &base_path)?;
            fsx::remove_file(&base_raw)?;
            task.finish(human(fsx::metadata(&base_path)?.len()));
        }
        // An empty overlay on the flattened disk, rebased onto the base disk: qemu-img compares
        // the two cluster by cluster and keeps only what differs. Beside the base disk, so the
        // relative backing name resolves; renamed when complete.
        let tmp_name = format!("{TMP_PREFIX}overlay-{}.qcow2", self.stem);
        let tmp = self.disks.join(&tmp_name);
        let flat_name = format!("{}.qcow2", self.stem);
        let mut c = Command::new("qemu-img");
        c.current_dir(self.disks).args([
            "create", "-q", "-f", "qcow2", "-b", &flat_name, "-F", "qcow2", &tmp_name,
        ]);
        let mut r = Command::new("qemu-img");
        r.current_dir(self.disks)
            .args(["rebase", "-q", "-b", &base_name, "-F", "qcow2", &tmp_name]);
        if let Err(e) = tool(c).and_then(|_| tool(r)) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        let ov = self.disks.join(format!("{}.overlay.qcow2", self.stem));
        fsx::rename(&tmp, &ov)?;
        Ok((ov, base_path))
    }
}

/// Where the boot tests of one disk run, and the key they deliver.
struct BootTests<'a> {
    disks: &'a Path,
    stem: &'a str,
    w: &'a Path,
    root_size: u64,
    key: Option<&'a config_drive::KeyTest>,
}

impl BootTests<'_> {
    /// Boots the disk on each firmware (on a grown copy with `--flavor-disk`), records the
    /// results beside it, and fails when one did not pass.
    fn run(&self, opts: &Options, report: &mut DiskReport, progress: &Progress) -> Result<()> {
        let BootTests {
            disks,
            stem,
            w,
            root_size,
            key,
        } = *self;
        for &fw in &opts.firmware {
            let log = disks.join(format!("{stem}.{fw}.console.log"));
            let mut r = match opts.flavor_disk {
                None => boot_test(&report.disk, fw, &log, opts.boot_timeout, key, progress)?,
                Some(size) => {
                    // A copy grown like a flavor's disk: the root must grow to fill it.
                    let grown = w.join("flavor.qcow2");
                    std::fs::copy(&report.disk, &grown)
                        .with_context(|| format!("copying {:?} to {grown:?}", report.disk))?;
                    let mut c = Command::new("qemu-img");
                    c.args(["resize", "-q"]).arg(&grown).arg(size.to_string());
                    tool(c)?;
                    let mut r = boot_test(&grown, fw, &log, opts.boot_timeout, key, progress)?;
                    let mib: u64 = r
                        .check
                        .get("rootfs-mib")
                        .and_then(|m| m.parse().ok())
                        .unwrap_or(0);
                    let want = size.saturating_sub(report.virtual_size) + root_size * 9 / 10;
                    if mib * (1 << 20) < want {
                        r.problems.push(format!(
                            "the root file system is {mib} MiB: it did not grow to the {} disk",
                            human(size)
                        ));
                        r.passed = false;
                    }
                    r
                }
            };
            r.flavor_disk = opts.flavor_disk;
            report.boot_tests.push(r);
        }
        let results = disks.join(format!("{stem}.boot-test.json"));
        fsx::atomic_write(
            &results,
            &serde_json::to_vec_pretty(
                &serde_json::json!({"manifest": report.manifest, "results": report.boot_tests}),
            )?,
        )?;
        let failed: Vec<String> = report
            .boot_tests
            .iter()
            .filter(|r| !r.passed)
            .map(|r| format!("{}: {}", r.firmware, r.problems.join("; ")))
            .collect();
        if !failed.is_empty() {
            bail!(
                "boot test of {} failed: {} (console logs beside {})",
                report.image,
                failed.join(" | "),
                report.disk.display()
            );
        }
        Ok(())
    }
}
