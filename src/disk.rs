//! # Bootable disks: an image's layers as one hybrid BIOS/UEFI qcow2, without root
//!
//! `strata disk IMAGE` reads the store alone: the image's layers plus what its disk adds (the
//! disk-only package layer with the kernel and systemd, and disk-only layers such as `vm`),
//! recorded at build time.
//!
//! 1. **Flatten** the layers in order (whiteouts applied; `/etc/passwd`, `group`, `shadow` and
//!    `gshadow` merged by name, since the disk layer adds system users the accounts layer's copy
//!    does not know) into one tar: what the recipe's versions share first, the per-version rest
//!    last, so every version's disk starts with the same bytes.
//! 2. **Root filesystem**: `mke2fs -t ext4 -d rootfs.tar` (e2fsprogs ≥ 1.47.1) with a UUID and
//!    hash seed derived from the image digest and `SOURCE_DATE_EPOCH`: the same image gives the
//!    same bytes. Size: content plus a margin, or `[disk] size`.
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
//! `--boot-test` boots the disk under QEMU (TCG; KVM where it works) on BIOS and on UEFI, reads
//! the serial console for the `STRATA-BOOT-CHECK` line the `vm` layer prints once boot is done,
//! and for a `login:` prompt; the result is kept beside the disk, keyed by the image digest.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use oci_spec::image::Digest;
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::inspect::View;
use crate::layer::{self, Content, Entry, Kind, TarPolicy};
use crate::progress::Progress;

pub const DISKS_DIR: &str = "disks";
const SECTOR: u64 = 512;
const BIOS_BOOT_START: u64 = 2048;
const BIOS_BOOT_SECTORS: u64 = 2048;
const ESP_START: u64 = BIOS_BOOT_START + BIOS_BOOT_SECTORS;
const ESP_SECTORS: u64 = 64 * 2048; // 64 MiB
const ROOT_START: u64 = ESP_START + ESP_SECTORS;
const GRUB_DIR: &str = "/usr/lib/grub/i386-pc";
const EFI_STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";
const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
pub const CHECK_MARKER: &str = "STRATA-BOOT-CHECK";
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

#[derive(Debug, Clone)]
pub struct Options {
    pub output: PathBuf,
    pub image: String,
    pub boot_test: bool,
    pub firmware: Vec<String>,
    pub quiet: bool,
    pub boot_timeout: Duration,
    /// Boot-test on a copy grown to this size, as a flavor's disk would be (checks growfs).
    pub flavor_disk: Option<u64>,
    /// Also write a per-version overlay backed by the recipe's shared base disk.
    pub overlay: bool,
    /// Overrides `[disk] budget` (the virtual size), for experiments.
    pub disk_budget: Option<u64>,
    /// qcow2 compression: None (fastest to write and boot), `zlib` (every QEMU reads it) or
    /// `zstd` (needs QEMU ≥ 5.1 on every compute host).
    pub compress: Option<String>,
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

#[derive(Debug, Serialize, serde::Deserialize, Clone)]
#[serde(rename_all = "kebab-case")]
pub struct BootResult {
    pub firmware: String,
    pub passed: bool,
    pub seconds_to_login: Option<f64>,
    pub check: BTreeMap<String, String>,
    pub problems: Vec<String>,
    pub console_log: PathBuf,
    /// The disk size the test grew the disk to, if any.
    pub flavor_disk: Option<u64>,
}

/// Runs an external tool through the one helper (command and stderr tail in the error).
fn tool(cmd: Command) -> Result<()> {
    crate::cmd::run(cmd, |_| {})
}

/// A 16-byte id derived from the image digest and a purpose, as a UUID string.
fn derived_uuid(ident: &str, purpose: &str) -> String {
    let h = Sha256::digest(format!("{ident}/{purpose}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&h[..16]);
    b[6] = (b[6] & 0x0f) | 0x40; // version 4 layout
    b[8] = (b[8] & 0x3f) | 0x80;
    let x = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &x[..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..]
    )
}

/// Flattens layer tars (lowest first): whiteouts applied, account databases merged by name.
/// Returns (head, tail): what the `shared` layers give (and every directory a shared layer has),
/// then what only the other layers give; each part sorted, parents before children.
pub fn flatten_split(layer_tars: &[PathBuf], shared: &[bool]) -> Result<(Vec<Entry>, Vec<Entry>)> {
    let mut fs: BTreeMap<String, (Entry, bool)> = BTreeMap::new();
    let mut shared_dirs: std::collections::HashSet<String> = Default::default();
    let mut accounts: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (li, tar) in layer_tars.iter().enumerate() {
        let is_shared = shared.get(li).copied().unwrap_or(true);
        let entries = layer::read_tar_file(
            tar,
            TarPolicy {
                allow_devices: true,
            },
        )?;
        for e in entries {
            let name = e.path.rsplit('/').next().unwrap_or("");
            let parent = e.path.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
            if name == ".wh..wh..opq" {
                let prefix = format!("{parent}/");
                fs.retain(|p, _| !p.starts_with(&prefix));
                continue;
            }
            if let Some(gone) = name.strip_prefix(layer::WHITEOUT_PREFIX) {
                let path = if parent.is_empty() {
                    gone.to_string()
                } else {
                    format!("{parent}/{gone}")
                };
                let prefix = format!("{path}/");
                fs.retain(|p, _| p != &path && !p.starts_with(&prefix));
                continue;
            }
            if e.is_dir() && is_shared {
                shared_dirs.insert(e.path.clone());
            }
            if crate::accounts::BaseAccounts::FILES.contains(&e.path.as_str())
                && let Kind::File(c) = &e.kind
            {
                let text = String::from_utf8_lossy(&c.read_all()?).into_owned();
                let merged = accounts.entry(e.path.clone()).or_default();
                for line in text.lines().filter(|l| !l.is_empty()) {
                    let key = line.split(':').next().unwrap_or("").to_string();
                    match merged
                        .iter()
                        .position(|m| m.split(':').next() == Some(key.as_str()))
                    {
                        Some(i) => merged[i] = line.to_string(),
                        None => merged.push(line.to_string()),
                    }
                }
                let mut e = e.clone();
                e.kind = Kind::File(Content::bytes(format!("{}\n", merged.join("\n"))));
                let from_shared = is_shared && fs.get(&e.path).is_none_or(|x| x.1);
                fs.insert(e.path.clone(), (e, from_shared));
                continue;
            }
            if !e.is_dir() {
                // A non-directory replaces whatever was there, subtree included.
                let prefix = format!("{}/", e.path);
                fs.retain(|p, _| !p.starts_with(&prefix));
            }
            fs.insert(e.path.clone(), (e, is_shared));
        }
    }
    let present: std::collections::HashSet<String> = fs.keys().cloned().collect();
    let (mut head, mut tail) = (Vec::new(), Vec::new());
    for (path, (e, from_shared)) in fs {
        if let Kind::Hardlink(t) = &e.kind
            && !present.contains(t)
        {
            bail!("{path}: hard link to {t}, which an upper layer removed");
        }
        if from_shared || shared_dirs.contains(&path) {
            head.push(e);
        } else {
            tail.push(e);
        }
    }
    // A tail hard link may point into the head; a head one must not point into the tail.
    let tail_paths: std::collections::HashSet<String> =
        tail.iter().map(|e| e.path.clone()).collect();
    let mut moved = Vec::new();
    head.retain(|e| match &e.kind {
        Kind::Hardlink(t) if tail_paths.contains(t) => {
            moved.push(e.clone());
            false
        }
        _ => true,
    });
    tail.extend(moved);
    layer::relink_hardlinks(&mut head)?;
    let head = layer::normalize(head)?;
    tail.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
    Ok((head, tail))
}

/// Follows a symlink chain inside flattened entries (`vmlinuz` → `boot/vmlinuz-…`).
fn resolve<'a>(entries: &'a BTreeMap<&str, &'a Entry>, path: &str) -> Option<&'a Entry> {
    let mut p = path.trim_start_matches('/').to_string();
    for _ in 0..8 {
        let e = entries.get(p.as_str())?;
        match &e.kind {
            Kind::Symlink(t) if t.starts_with('/') => p = t.trim_start_matches('/').to_string(),
            Kind::Symlink(t) => {
                let dir = p
                    .rsplit_once('/')
                    .map(|(d, _)| format!("{d}/"))
                    .unwrap_or_default();
                p = format!("{dir}{t}");
            }
            _ => return Some(e),
        }
    }
    None
}

fn file_bytes(entries: &BTreeMap<&str, &Entry>, path: &str, what: &str) -> Result<Vec<u8>> {
    match resolve(entries, path).map(|e| &e.kind) {
        Some(Kind::File(c)) => c.read_all(),
        _ => Err(crate::BadInput(format!(
            "the image has no {what} (/{path}): a bootable disk needs a kernel; add e.g. linux-image-cloud-amd64 to [disk] packages"
        ))
        .into()),
    }
}

/// Builds a Unified Kernel Image; the PE timestamp and checksum are fixed for reproducibility.
fn build_uki(
    work: &Path,
    kernel: &[u8],
    initrd: &[u8],
    osrel: &[u8],
    cmdline: &str,
    epoch: u64,
) -> Result<PathBuf> {
    let files = [
        ("osrel", osrel),
        ("cmdline", cmdline.as_bytes()),
        ("linux", kernel),
        ("initrd", initrd),
    ];
    for (n, d) in &files {
        std::fs::write(work.join(n), d)?;
    }
    // Place the new sections after the stub's last one, page-aligned.
    let mut objdump = Command::new("objdump");
    objdump.args(["-h", "-w", EFI_STUB]);
    let out = crate::cmd::output(objdump)?;
    let mut end = 0u64;
    for l in String::from_utf8_lossy(&out).lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() >= 7 && f[0].chars().all(|c| c.is_ascii_digit()) {
            let size = u64::from_str_radix(f[2], 16).unwrap_or(0);
            let vma = u64::from_str_radix(f[3], 16).unwrap_or(0);
            end = end.max(vma + size);
        }
    }
    if end == 0 {
        bail!("cannot read the sections of {EFI_STUB} (install systemd-boot-efi)");
    }
    let align = |x: u64| (x + 0xfff) & !0xfff;
    let mut cmd = Command::new("objcopy");
    let mut at = align(end);
    for (n, d) in &files {
        cmd.arg("--add-section")
            .arg(format!(".{n}={}", work.join(n).display()));
        cmd.arg("--change-section-vma")
            .arg(format!(".{n}=0x{at:x}"));
        at = align(at + d.len() as u64);
    }
    let uki = work.join("BOOTX64.EFI");
    cmd.arg(EFI_STUB).arg(&uki);
    tool(cmd)?;
    let mut d = std::fs::read(&uki)?;
    let pe = u32::from_le_bytes(d[0x3c..0x40].try_into()?) as usize;
    d[pe + 8..pe + 12].copy_from_slice(&(epoch as u32).to_le_bytes()); // COFF TimeDateStamp
    d[pe + 24 + 64..pe + 24 + 68].copy_from_slice(&0u32.to_le_bytes()); // CheckSum (unused by UEFI)
    std::fs::write(&uki, d)?;
    Ok(uki)
}

/// Writes GRUB's boot.img code into the MBR and core.img into the BIOS boot partition.
fn install_grub_bios(disk: &Path, work: &Path, cmdline: &str) -> Result<()> {
    let cfg = work.join("grub-embedded.cfg");
    std::fs::write(
        &cfg,
        format!(
            "insmod part_gpt\ninsmod ext2\nset root=(hd0,gpt3)\nlinux /vmlinuz {cmdline}\ninitrd /initrd.img\nboot\n"
        ),
    )?;
    let core = work.join("core.img");
    let mut c = Command::new("grub-mkimage");
    c.args(["-O", "i386-pc", "-o"])
        .arg(&core)
        .arg("-c")
        .arg(&cfg)
        .args(["-p", "(hd0,gpt3)/boot/grub"]);
    c.args(["biosdisk", "part_gpt", "ext2", "linux", "normal", "echo"]);
    tool(c)?;
    let boot = std::fs::read(format!("{GRUB_DIR}/boot.img"))
        .context("reading GRUB's boot.img (install grub-pc-bin)")?;
    let mut core = std::fs::read(&core)?;
    let sectors = core.len().div_ceil(SECTOR as usize);
    if sectors as u64 > BIOS_BOOT_SECTORS {
        bail!(
            "GRUB core.img is {sectors} sectors, the BIOS boot partition holds {BIOS_BOOT_SECTORS}"
        );
    }
    core.resize(sectors * SECTOR as usize, 0);
    // diskboot.img's blocklist (last 12 bytes of core.img's first sector): where the rest is.
    core[0x1f4..0x1fc].copy_from_slice(&(BIOS_BOOT_START + 1).to_le_bytes());
    core[0x1fc..0x1fe].copy_from_slice(&((sectors - 1) as u16).to_le_bytes());
    core[0x1fe..0x200].copy_from_slice(&0x820u16.to_le_bytes());
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)?;
    let mut mbr = [0u8; 512];
    f.read_exact(&mut mbr)?;
    mbr[..440].copy_from_slice(&boot[..440]); // code only: the protective MBR's table stays
    mbr[0x5c..0x64].copy_from_slice(&BIOS_BOOT_START.to_le_bytes()); // kernel sector
    mbr[0x64] = 0xff; // boot from the drive the BIOS booted
    mbr[0x66..0x68].copy_from_slice(&0x9090u16.to_le_bytes()); // skip the floppy check
    use std::io::Seek;
    f.seek(std::io::SeekFrom::Start(0))?;
    f.write_all(&mbr)?;
    f.seek(std::io::SeekFrom::Start(BIOS_BOOT_START * SECTOR))?;
    f.write_all(&core)?;
    f.sync_all()?;
    Ok(())
}

/// Counts what passes through (to know where the tail of the root tar starts).
struct CountingWriter<W: Write> {
    inner: W,
    n: u64,
}

impl<W: Write> CountingWriter<W> {
    fn bytes_written(&self) -> u64 {
        self.n
    }
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let k = self.inner.write(b)?;
        self.n += k as u64;
        Ok(k)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// What the boot loaders load.
struct Boot<'a> {
    kernel: &'a [u8],
    initrd: &'a [u8],
    osrel: &'a [u8],
    extra_cmdline: &'a str,
    epoch: u64,
}

/// Root file system from `rootfs` (a tar), GPT, ESP with the UKI, GRUB for BIOS: a raw disk in
/// `w`. Returns its path and its size in sectors.
fn assemble(
    w: &Path,
    label: &str,
    rootfs: &Path,
    root_size: u64,
    ident: &str,
    boot: &Boot,
) -> Result<(PathBuf, u64)> {
    let epoch = boot.epoch;
    let root_uuid = derived_uuid(ident, "root");
    let root_img = w.join(format!("{label}-root.img"));
    std::fs::File::create(&root_img)?.set_len(root_size)?;
    let mut c = Command::new("mke2fs");
    c.env("SOURCE_DATE_EPOCH", epoch.to_string())
        .env("E2FSPROGS_FAKE_TIME", epoch.to_string())
        .args(["-q", "-F", "-t", "ext4", "-L", "root", "-U", &root_uuid])
        .arg("-E")
        .arg(format!("hash_seed={root_uuid},root_owner=0:0"))
        .arg("-d")
        .arg(rootfs)
        .arg(&root_img);
    tool(c)
        .context("making the root file system (mke2fs ≥ 1.47.1 with libarchive reads a tarball)")?;

    let root_sectors = root_size / SECTOR;
    let total = ROOT_START + root_sectors + 2048;
    let raw = w.join(format!("{label}.raw"));
    std::fs::File::create(&raw)?.set_len(total * SECTOR)?;
    let script = format!(
        "label: gpt\nlabel-id: {}\nfirst-lba: 2048\n\
         start={BIOS_BOOT_START}, size={BIOS_BOOT_SECTORS}, type=21686148-6449-6E6F-744E-656564454649, uuid={}, name=\"bios\"\n\
         start={ESP_START}, size={ESP_SECTORS}, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid={}, name=\"esp\"\n\
         start={ROOT_START}, size={root_sectors}, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, uuid={}, name=\"root\"\n",
        derived_uuid(ident, "gpt"),
        derived_uuid(ident, "bios"),
        derived_uuid(ident, "esp"),
        derived_uuid(ident, "root-part"),
    );
    let parts = w.join(format!("{label}.sfdisk"));
    std::fs::write(&parts, &script)?;
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg("exec sfdisk -q --no-reread --no-tell-kernel \"$0\" < \"$1\"")
        .arg(&raw)
        .arg(&parts);
    tool(c).context("partitioning with sfdisk")?;
    write_at(&raw, &root_img, ROOT_START)?;
    std::fs::remove_file(&root_img)?;

    let cmdline = format!(
        "root=UUID={root_uuid} rw console=tty0 console=ttyS0,115200{}",
        boot.extra_cmdline
    );
    let uki = build_uki(w, boot.kernel, boot.initrd, boot.osrel, &cmdline, epoch)?;
    let esp = w.join(format!("{label}-esp.img"));
    let vol_id = &derived_uuid(ident, "esp-fat").replace('-', "")[..8];
    let mut c = Command::new("mkfs.fat");
    c.env("SOURCE_DATE_EPOCH", epoch.to_string())
        .args(["-C", "-n", "ESP", "-i", vol_id, "--invariant"])
        .arg(&esp)
        .arg((ESP_SECTORS * SECTOR / 1024).to_string());
    tool(c)?;
    std::fs::File::options()
        .write(true)
        .open(&uki)?
        .set_modified(std::time::UNIX_EPOCH + Duration::from_secs(epoch))?;
    let mut c = Command::new("mmd");
    c.env("SOURCE_DATE_EPOCH", epoch.to_string())
        .arg("-i")
        .arg(&esp)
        .args(["::/EFI", "::/EFI/BOOT"]);
    tool(c)?;
    let mut c = Command::new("mcopy");
    c.env("SOURCE_DATE_EPOCH", epoch.to_string())
        .arg("-m")
        .arg("-i")
        .arg(&esp)
        .arg(&uki)
        .arg("::/EFI/BOOT/BOOTX64.EFI");
    tool(c)?;
    write_at(&raw, &esp, ESP_START)?;
    std::fs::remove_file(&esp)?;
    install_grub_bios(&raw, w, &cmdline)?;
    Ok((raw, total))
}

fn write_at(disk: &Path, image: &Path, start_sector: u64) -> Result<()> {
    use std::io::Seek;
    let mut out = std::fs::OpenOptions::new().write(true).open(disk)?;
    out.seek(std::io::SeekFrom::Start(start_sector * SECTOR))?;
    let mut src = std::fs::File::open(image)?;
    std::io::copy(&mut src, &mut out)?;
    out.sync_all()?;
    Ok(())
}

/// `strata disk IMAGE [--boot-test]`.
pub fn disk(opts: &Options) -> Result<DiskReport> {
    let progress = Progress::new(opts.quiet);
    for t in TOOLS {
        crate::cmd::require(t)?;
    }
    let v = View::open(&opts.output)?;
    let (name, desc) = v.find(&opts.image)?;
    let rec = v
        .record
        .images
        .iter()
        .find(|i| i.name == name)
        .with_context(|| format!("the store record lacks {name}"))?;
    let manifest = v.manifest(&desc)?;
    let digest = desc.digest().clone();
    let settings = v
        .record
        .recipes
        .get(crate::oci::split_name(&name).0)
        .cloned()
        .unwrap_or_default();
    let epoch = settings.get("epoch").and_then(|e| e.as_u64()).unwrap_or(0);
    let disk_spec: Option<crate::recipe::DiskSpec> = settings
        .get("disk")
        .cloned()
        .and_then(|d| serde_json::from_value(d).ok());
    if disk_spec.is_none() {
        return Err(crate::BadInput(format!(
            "{name} has no disk settings: its recipe needs a [disk] table (with a kernel in `packages`, unless the base has one) to make bootable disks"
        ))
        .into());
    }

    let disks = opts.output.join(DISKS_DIR);
    std::fs::create_dir_all(&disks)?;
    let stem = name.replace(':', "_");
    let work = tempfile::Builder::new()
        .prefix(".tmp-disk-")
        .tempdir_in(&disks)?;
    let w = work.path();

    // 1. Flatten. The layers several versions share (and the disk layers) come first in the
    //    root file system's tar, the per-version rest last: mke2fs places data in tar order, so
    //    every version's disk starts as the same bytes and an overlay on the shared base disk
    //    is small. Ids (UUIDs, seeds) come from the shared part, for the same reason.
    let task = progress.task(format!("{name}: flattening layers"), None);
    let mut tars = Vec::new();
    let n_image = manifest.layers().len();
    let layer_digests: Vec<(Digest, String)> = manifest
        .layers()
        .iter()
        .map(|l| (l.digest().clone(), l.media_type().to_string()))
        .chain(rec.disk_layers.iter().filter_map(|d| {
            let dg: Digest = d.parse().ok()?;
            let media = v.record.layers.get(d).map(|l| l.media_type.clone())?;
            Some((dg, media))
        }))
        .collect();
    if layer_digests.len() != n_image + rec.disk_layers.len() {
        bail!("the store record lacks a disk layer of {name}: rebuild it");
    }
    let mut shared = Vec::new();
    for (i, (d, media)) in layer_digests.iter().enumerate() {
        let path = w.join(format!("layer-{i}.tar"));
        let f = std::io::BufReader::new(v.store.open_blob(d)?);
        let mut r = crate::compress::Compression::reader_for(
            &oci_spec::image::MediaType::from(media.as_str()),
            f,
        )?;
        let mut out = std::fs::File::create(&path)?;
        std::io::copy(&mut r, &mut out).with_context(|| format!("decompressing {d}"))?;
        tars.push(path);
        let used_by = v
            .record
            .layers
            .get(&d.to_string())
            .map(|l| l.shared_by.len())
            .unwrap_or(0);
        shared.push(i >= n_image || used_by > 1);
    }
    let ident = {
        let mut h = Sha256::new();
        h.update(crate::oci::split_name(&name).0.as_bytes());
        for ((d, _), s) in layer_digests.iter().zip(&shared) {
            if *s {
                h.update(d.to_string().as_bytes());
            }
        }
        hex::encode(h.finalize())
    };
    let (head, tail) = flatten_split(&tars, &shared)?;
    let rootfs = w.join("rootfs.tar");
    let base_rootfs = w.join("base-rootfs.tar");
    // One pass: the head's size (the shared base disk's content) is where the tail starts.
    let (shared_used, used) = {
        let mut f = CountingWriter {
            inner: std::io::BufWriter::new(std::fs::File::create(&rootfs)?),
            n: 0,
        };
        let mut b = tar::Builder::new(&mut f);
        let mut head_end = 0;
        for (k, part) in [&head, &tail].into_iter().enumerate() {
            layer::append_entries(&mut b, part, epoch)?;
            if k == 0 {
                b.get_mut().flush()?;
                head_end = b.get_ref().bytes_written();
            }
        }
        b.finish()?;
        drop(b);
        f.flush()?;
        (head_end + 1024, f.n)
    };
    task.finish(format!(
        "{} entries ({} per version), {}",
        head.len() + tail.len(),
        tail.len(),
        crate::build::human(used)
    ));
    // The layer tars stay until the end: the entries read from them by offset (the overlay's
    // base disk is written from them too); the work directory goes with them.

    // 2.–5. Root file system, GPT, UEFI and BIOS boot.
    let mib = 1u64 << 20;
    // One size for every version of the recipe (their overlays share a base disk): the shared
    // content, its margin, and 16 MiB for what a version adds, unless a version adds more.
    let auto = (shared_used + shared_used / 4 + 272 * mib)
        .max(used + used / 4 + 256 * mib)
        .div_ceil(mib)
        * mib;
    let root_size = match disk_spec.as_ref().and_then(|d| d.size) {
        Some(s) if s.0 < used + 64 * mib => {
            return Err(crate::BadInput(format!(
                "[disk] size {} is smaller than the content ({}) plus 64 MiB of file-system overhead",
                crate::build::human(s.0),
                crate::build::human(used)
            ))
            .into());
        }
        Some(s) => s.0.div_ceil(mib) * mib,
        None => auto,
    };
    let by_path: BTreeMap<&str, &Entry> = head
        .iter()
        .chain(&tail)
        .map(|e| (e.path.as_str(), e))
        .collect();
    let kernel = file_bytes(&by_path, "vmlinuz", "kernel")?;
    let initrd = file_bytes(&by_path, "initrd.img", "initramfs")?;
    let osrel = file_bytes(&by_path, "etc/os-release", "os-release").unwrap_or_default();
    drop(by_path);
    let mut extra = String::new();
    for a in disk_spec
        .as_ref()
        .map(|d| d.cmdline.clone())
        .unwrap_or_default()
    {
        extra.push(' ');
        extra.push_str(&a);
    }
    let boot = Boot {
        kernel: &kernel,
        initrd: &initrd,
        osrel: &osrel,
        extra_cmdline: &extra,
        epoch,
    };
    let task = progress.task(
        format!("{name}: root file system, partitions, boot loaders"),
        None,
    );
    let budget = opts
        .disk_budget
        .map(crate::policy::Size)
        .or(disk_spec.as_ref().and_then(|d| d.budget));
    if let Some(budget) = budget {
        let virtual_size = (ROOT_START + root_size / SECTOR + 2048) * SECTOR;
        if virtual_size > budget.0 {
            let check = crate::policy::Check {
                kind: "disk".into(),
                subject: name.clone(),
                value: virtual_size as f64,
                limit: budget.0 as f64,
                headroom: budget.0 as f64 - virtual_size as f64,
                ok: false,
                estimated: false,
            };
            let advice = vec![format!(
                "the root file system holds {} ({} of it shared by the recipe's versions): right-size the base or the disk packages (`strata report` names the biggest files), or raise [disk] budget",
                crate::build::human(used),
                crate::build::human(shared_used)
            )];
            let v = crate::policy::Verdicts {
                enforce: crate::policy::Enforce::Fail,
                checks: vec![check],
                images: vec![],
                pairs: vec![],
                advice,
            };
            return Err(crate::policy::BudgetExceeded(v).into());
        }
    }
    let (raw, total) = assemble(w, "disk", &rootfs, root_size, &ident, &boot)?;
    std::fs::remove_file(&rootfs)?;
    task.finish(crate::build::human(root_size));

    // 6. qcow2.
    let task = progress.task(format!("{name}: qcow2"), None);
    let tmp_qcow = w.join("disk.qcow2");
    let mut c = Command::new("qemu-img");
    c.args(["convert", "-q", "-f", "raw", "-O", "qcow2"]);
    match opts.compress.as_deref() {
        None => {}
        Some(kind @ ("zlib" | "zstd")) => {
            c.arg("-c")
                .arg("-o")
                .arg(format!("compression_type={kind}"));
        }
        Some(other) => {
            return Err(
                crate::BadInput(format!("--compress {other}: expected zlib or zstd")).into(),
            );
        }
    }
    c.arg(&raw).arg(&tmp_qcow);
    tool(c)?;
    let mut c = Command::new("qemu-img");
    c.args(["check", "-q"]).arg(&tmp_qcow);
    tool(c).context("qemu-img check of the new disk")?;
    let dest = disks.join(format!("{stem}.qcow2"));
    std::fs::rename(&tmp_qcow, &dest)?;
    let qcow2_bytes = std::fs::metadata(&dest)?.len();
    task.finish(crate::build::human(qcow2_bytes));
    let overlay = if opts.overlay {
        // The shared base disk (once per recipe and shared layers), then this version as a
        // small overlay on it. Backing files are named relative to disks/.
        let base_name = format!(
            "{}_base-{}.qcow2",
            crate::oci::split_name(&name).0,
            &ident[..12]
        );
        let base_path = disks.join(&base_name);
        if !base_path.exists() {
            let task = progress.task(format!("{name}: shared base disk {base_name}"), None);
            let mut b = std::io::BufWriter::new(std::fs::File::create(&base_rootfs)?);
            layer::write_tar(&head, epoch, &mut b)?;
            b.flush()?;
            drop(b);
            let (base_raw, _) = assemble(w, "base", &base_rootfs, root_size, &ident, &boot)?;
            std::fs::remove_file(&base_rootfs)?;
            let tmp = w.join("base.qcow2");
            let mut c = Command::new("qemu-img");
            c.args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
                .arg(&base_raw)
                .arg(&tmp);
            tool(c)?;
            std::fs::rename(&tmp, &base_path)?;
            std::fs::remove_file(&base_raw)?;
            task.finish(crate::build::human(std::fs::metadata(&base_path)?.len()));
        }
        // An empty overlay on the flattened disk, rebased onto the base disk: qemu-img compares
        // the two cluster by cluster and keeps only what differs. Beside the base disk, so the
        // relative backing name resolves; renamed when complete.
        let tmp_name = format!("{}overlay-{stem}.qcow2", crate::store::TMP_PREFIX);
        let tmp = disks.join(&tmp_name);
        let flat_name = format!("{stem}.qcow2");
        let mut c = Command::new("qemu-img");
        c.current_dir(&disks).args([
            "create", "-q", "-f", "qcow2", "-b", &flat_name, "-F", "qcow2", &tmp_name,
        ]);
        let mut r = Command::new("qemu-img");
        r.current_dir(&disks)
            .args(["rebase", "-q", "-b", &base_name, "-F", "qcow2", &tmp_name]);
        if let Err(e) = tool(c).and_then(|_| tool(r)) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        let ov = disks.join(format!("{stem}.overlay.qcow2"));
        std::fs::rename(&tmp, &ov)?;
        Some((ov, base_path))
    } else {
        None
    };
    let virtual_size = total * SECTOR;
    let mut report = DiskReport {
        image: name.clone(),
        manifest: digest.to_string(),
        disk: dest.clone(),
        qcow2_bytes,
        virtual_size,
        min_disk_gib: virtual_size.div_ceil(1 << 30),
        root_used_bytes: used,
        boot_tests: vec![],
        overlay: overlay.as_ref().map(|o| o.0.clone()),
        overlay_bytes: match &overlay {
            Some((o, _)) => Some(std::fs::metadata(o)?.len()),
            None => None,
        },
        base_disk: overlay.map(|o| o.1),
    };
    if opts.boot_test {
        for fw in &opts.firmware {
            let log = disks.join(format!("{stem}.{fw}.console.log"));
            let mut r = match opts.flavor_disk {
                None => boot_test(&dest, fw, &log, opts.boot_timeout, &progress)?,
                Some(size) => {
                    // A copy grown like a flavor's disk: the root must grow to fill it.
                    let grown = w.join("flavor.qcow2");
                    std::fs::copy(&dest, &grown)?;
                    let mut c = Command::new("qemu-img");
                    c.args(["resize", "-q"]).arg(&grown).arg(size.to_string());
                    tool(c)?;
                    let mut r = boot_test(&grown, fw, &log, opts.boot_timeout, &progress)?;
                    let mib: u64 = r
                        .check
                        .get("rootfs-mib")
                        .and_then(|m| m.parse().ok())
                        .unwrap_or(0);
                    let want = size.saturating_sub(virtual_size) + root_size * 9 / 10;
                    if mib * (1 << 20) < want {
                        r.problems.push(format!(
                            "the root file system is {mib} MiB: it did not grow to the {} disk",
                            crate::build::human(size)
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
        crate::store::atomic_write(
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
                "boot test of {name} failed: {} (console logs beside {})",
                failed.join(" | "),
                dest.display()
            );
        }
    }
    Ok(report)
}

/// Boots a disk under QEMU (a throw-away snapshot) and reads the console.
pub fn boot_test(
    disk: &Path,
    firmware: &str,
    log: &Path,
    timeout: Duration,
    progress: &Progress,
) -> Result<BootResult> {
    crate::cmd::require("qemu-system-x86_64")?;
    let task = progress.task(format!("boot test ({firmware}, TCG)"), None);
    let _ = std::fs::remove_file(log);
    let vars = tempfile::NamedTempFile::new()?;
    let mut c = Command::new("qemu-system-x86_64");
    c.args([
        "-accel",
        "tcg",
        "-m",
        "2048",
        "-smp",
        "2",
        "-nographic",
        "-monitor",
        "none",
    ])
    .arg("-serial")
    .arg(format!("file:{}", log.display()))
    .arg("-drive")
    .arg(format!("file={},if=virtio,snapshot=on", disk.display()))
    .args(["-nic", "user,model=virtio-net-pci"]);
    match firmware {
        "bios" => {}
        "uefi" => {
            std::fs::copy(OVMF_VARS, vars.path()).context("OVMF firmware (install ovmf)")?;
            c.args(["-machine", "q35"])
                .arg("-drive")
                .arg(format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"))
                .arg("-drive")
                .arg(format!(
                    "if=pflash,format=raw,file={}",
                    vars.path().display()
                ));
        }
        other => bail!("unknown firmware {other:?}: bios or uefi"),
    }
    c.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let start = Instant::now();
    let mut child = c.spawn().context("starting qemu-system-x86_64")?;
    let mut login = None;
    let mut check_line = None;
    while start.elapsed() < timeout {
        std::thread::sleep(Duration::from_millis(500));
        let text = String::from_utf8_lossy(&std::fs::read(log).unwrap_or_default()).into_owned();
        if login.is_none() && text.contains("login:") {
            login = Some(start.elapsed().as_secs_f64());
        }
        if check_line.is_none() {
            check_line = text
                .lines()
                .find(|l| l.contains(CHECK_MARKER))
                .map(|l| l.to_string());
        }
        if login.is_some() && check_line.is_some() {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            bail!("qemu exited early ({status}): {}", err.trim());
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let mut check = BTreeMap::new();
    if let Some(l) = &check_line {
        let l = &l[l.find(CHECK_MARKER).unwrap_or(0) + CHECK_MARKER.len()..];
        for kv in l.split_whitespace() {
            if let Some((k, v)) = kv.split_once('=') {
                check.insert(k.to_string(), v.to_string());
            }
        }
    }
    let mut problems = Vec::new();
    if login.is_none() {
        problems.push(format!(
            "no login: prompt on the serial console within {}s",
            timeout.as_secs()
        ));
    }
    if check_line.is_none() {
        problems.push("the boot check never reported".into());
    }
    let want = [
        ("state", "running"),
        ("failed", "none"),
        ("user", "ok"),
        ("env", "ok"),
        ("java", "ok"),
        ("sshd", "active"),
        ("configs", "ok"),
    ];
    if check_line.is_some() {
        for (k, v) in want {
            if check.get(k).map(String::as_str) != Some(v) {
                problems.push(format!(
                    "{k}={} (want {v})",
                    check.get(k).map(String::as_str).unwrap_or("?")
                ));
            }
        }
    }
    let passed = problems.is_empty();
    task.finish(if passed {
        format!("passed, login in {:.0}s", login.unwrap_or(0.0))
    } else {
        format!("FAILED: {}", problems.join("; "))
    });
    Ok(BootResult {
        firmware: firmware.into(),
        passed,
        seconds_to_login: login,
        check,
        problems,
        console_log: log.to_path_buf(),
        flavor_disk: None,
    })
}
