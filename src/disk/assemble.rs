//! # Assembly: root file system, GPT, UEFI and BIOS boot, without root or loop devices

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use sha2::{Digest as _, Sha256};

use crate::support::cmd;

pub const SECTOR: u64 = 512;
const BIOS_BOOT_START: u64 = 2048;
const BIOS_BOOT_SECTORS: u64 = 2048;
const ESP_START: u64 = BIOS_BOOT_START + BIOS_BOOT_SECTORS;
const ESP_SECTORS: u64 = 64 * 2048; // 64 MiB
pub const ROOT_START: u64 = ESP_START + ESP_SECTORS;
const GRUB_DIR: &str = "/usr/lib/grub/i386-pc";
const EFI_STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";

/// Runs an external tool through the one helper (command and stderr tail in the error).
fn tool(cmd: Command) -> Result<()> {
    cmd::run(cmd, |_| {})
}

/// A 16-byte id derived from the image digest and a purpose, as a UUID string.
pub fn derived_uuid(ident: &str, purpose: &str) -> String {
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
        crate::support::fsx::write(&work.join(n), d)?;
    }
    // Place the new sections after the stub's last one, page-aligned.
    let mut objdump = Command::new("objdump");
    objdump.args(["-h", "-w", EFI_STUB]);
    let out = crate::support::cmd::output(objdump)?;
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
    let mut d = crate::support::fsx::read(&uki)?;
    let pe = u32::from_le_bytes(d[0x3c..0x40].try_into()?) as usize;
    d[pe + 8..pe + 12].copy_from_slice(&(epoch as u32).to_le_bytes()); // COFF TimeDateStamp
    d[pe + 24 + 64..pe + 24 + 68].copy_from_slice(&0u32.to_le_bytes()); // CheckSum (unused by UEFI)
    crate::support::fsx::write(&uki, d)?;
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
    let mut core = crate::support::fsx::read(&core)?;
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

/// What the boot loaders load.
pub struct Boot<'a> {
    pub kernel: &'a [u8],
    pub initrd: &'a [u8],
    pub osrel: &'a [u8],
    pub extra_cmdline: &'a str,
    pub epoch: u64,
}

/// Root file system from `rootfs` (a tar), GPT, ESP with the UKI, GRUB for BIOS: a raw disk in
/// `w`. Returns its path and its size in sectors.
pub fn assemble(
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
    crate::support::fsx::create(&root_img)?.set_len(root_size)?;
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
    crate::support::fsx::create(&raw)?.set_len(total * SECTOR)?;
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
    crate::support::fsx::write(&parts, &script)?;
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg("exec sfdisk -q --no-reread --no-tell-kernel \"$0\" < \"$1\"")
        .arg(&raw)
        .arg(&parts);
    tool(c).context("partitioning with sfdisk")?;
    write_at(&raw, &root_img, ROOT_START)?;
    crate::support::fsx::remove_file(&root_img)?;

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
    crate::support::fsx::remove_file(&esp)?;
    install_grub_bios(&raw, w, &cmdline)?;
    Ok((raw, total))
}

fn write_at(disk: &Path, image: &Path, start_sector: u64) -> Result<()> {
    use std::io::Seek;
    let mut out = std::fs::OpenOptions::new().write(true).open(disk)?;
    out.seek(std::io::SeekFrom::Start(start_sector * SECTOR))?;
    let mut src = crate::support::fsx::open(image)?;
    std::io::copy(&mut src, &mut out)?;
    out.sync_all()?;
    Ok(())
}
