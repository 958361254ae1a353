//! # Bases and JDKs: root filesystems made reproducible
//!
//! The base is a Debian root filesystem made by `mmdebstrap` with `SOURCE_DATE_EPOCH` (or a
//! rootfs tarball, or the layers of an existing OCI image). It is cached by its inputs under
//! `cache/base/<key>/` (an uncompressed tarball is not copied there but read where it is, named
//! by its SHA-256), so it is built once; `--refresh-base` builds it again to take security
//! updates. Two mmdebstrap runs are byte-identical once the few install-time artefacts are dealt
//! with ([`normalize_rootfs`]): SSH host keys are removed (made at first boot), `machine-id` is
//! emptied, the JVM's class-data-sharing archive (`classes.jsa`, dumped at install time, different
//! every run) is dropped, and the Java `cacerts` keystore gets fixed entry dates.
//!
//! A JDK from Debian packages is the difference between the base and the base plus the JDK's
//! packages, built by a second mmdebstrap run with the same arguments that starts from the base's
//! root filesystem (unpacked by a setup hook, so apt installs only the JDK and what it needs):
//! whatever it adds or changes (and a whiteout for what it removes) becomes the JDK layer, shared
//! by every version using it. The disk packages are a third run, started from the base + JDK.
//! Every run shares the cache's Debian packages ([`debs`]): each is downloaded once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::cache::Cache;
use crate::layer::{self, Content, Entry, Kind, TarPolicy};
use crate::recipe::{Base, Jdk, JdkSource};
use crate::source::accounts::BaseAccounts;
use crate::source::debs;
use crate::support::hash::key_of;
use crate::support::progress::Progress;

/// Facts about a base, kept beside its rootfs in the cache.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct BaseInfo {
    pub packages: Vec<(String, String)>,
    pub accounts: BaseAccounts,
    /// Java homes found in the base (`usr/lib/jvm/*` with `bin/java`, and `opt/java`), for
    /// recipes without a JDK layer.
    #[serde(default)]
    pub java_homes: Option<Vec<String>>,
    /// Uncompressed size of each layer of an OCI base, by digest.
    #[serde(default)]
    pub layer_sizes: std::collections::BTreeMap<String, u64>,
}

/// The key of a base's inputs (its content, for tarball bases).
pub fn base_key(base: &Base, epoch: u64, tar_sha256: Option<&str>) -> String {
    key_of(&serde_json::json!({
        "kind": "base-rootfs",
        "base": base,
        "epoch": epoch,
        "tarball-sha256": tar_sha256,
        "normalize": NORMALIZE_VERSION,
    }))
}

/// Bumped when [`normalize_rootfs`] changes.
const NORMALIZE_VERSION: u32 = 1;

/// Where one mmdebstrap run starts and which package cache it shares.
#[derive(Default)]
pub struct Stage<'a> {
    /// An earlier stage's root filesystem tar, unpacked before apt runs: the run installs only
    /// what that stage lacks (its own `sources.list` is kept, which names every stage's sources).
    pub from: Option<&'a Path>,
    /// The package cache's exchange ([`debs`]): verified packages in, downloads out.
    pub debs: Option<&'a debs::Exchange>,
}

/// The environment variable the setup hook reads the earlier stage's tar from (a path in a
/// hook's shell text would need quoting).
const FROM_ENV: &str = "STRATA_STAGE_FROM";

/// The mmdebstrap command for a base (plus extra packages and sources, for JDK layers).
pub fn mmdebstrap_command(
    base: &Base,
    extra_packages: &[String],
    extra_sources: &[String],
    epoch: u64,
    out: &Path,
    stage: &Stage,
) -> Result<Command> {
    let Base::Mmdebstrap {
        suite,
        variant,
        apt_sources,
        packages,
        exclude_docs,
        proxy,
        ..
    } = base
    else {
        bail!("not an mmdebstrap base");
    };
    let mut cmd = Command::new("mmdebstrap");
    cmd.env("SOURCE_DATE_EPOCH", epoch.to_string());
    cmd.arg(format!("--variant={variant}"));
    let mut all: Vec<String> = packages.clone();
    all.extend(extra_packages.iter().cloned());
    if !all.is_empty() {
        cmd.arg(format!("--include={}", all.join(",")));
    }
    if *exclude_docs {
        for p in [
            "/usr/share/man/*",
            "/usr/share/doc/*",
            "/usr/share/info/*",
            "/usr/share/locale/*",
            "/usr/share/lintian/*",
        ] {
            cmd.arg(format!("--dpkgopt=path-exclude={p}"));
        }
        // Licences stay: they must travel with the binaries.
        cmd.arg("--dpkgopt=path-include=/usr/share/doc/*/copyright");
        // Some maintainer scripts (openjdk's update-alternatives) write into man1 even so.
        cmd.arg("--essential-hook=mkdir -p \"$1\"/usr/share/man/man1");
    }
    if let Some(p) = proxy {
        cmd.arg(format!("--aptopt=Acquire::http::Proxy \"{p}\""));
    }
    if let Some(from) = stage.from {
        // /dev is mmdebstrap's own; sources.list is the one setup wrote (every stage's sources).
        cmd.env(FROM_ENV, from);
        cmd.arg(format!(
            "--setup-hook=tar -C \"$1\" --exclude=./dev --exclude=./etc/apt/sources.list -xpf \"${FROM_ENV}\""
        ));
    }
    if let Some(ex) = stage.debs {
        // Keep the essential packages in the archive until sync-out (the cleanup empties it).
        cmd.arg("--skip=essential/unlink");
        cmd.arg("--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives/");
        cmd.arg(format!(
            "--setup-hook=sync-in {} /var/cache/apt/archives/",
            ex.inbox.display()
        ));
        cmd.arg(format!(
            "--customize-hook=sync-out /var/cache/apt/archives {}",
            ex.outbox.display()
        ));
    }
    cmd.arg("--customize-hook=rm -f \"$1\"/etc/ssh/ssh_host_*");
    cmd.arg("--customize-hook=if [ -e \"$1\"/etc/machine-id ]; then : > \"$1\"/etc/machine-id; fi");
    cmd.arg(suite).arg(out);
    for s in apt_sources.iter().chain(extra_sources) {
        cmd.arg(s);
    }
    Ok(cmd)
}

/// One mmdebstrap run: the base's arguments plus a stage's packages and sources, started from
/// an earlier stage's root filesystem (or from nothing).
struct Run<'a> {
    base: &'a Base,
    packages: &'a [String],
    sources: &'a [String],
    from: Option<&'a Path>,
    epoch: u64,
}

/// Runs mmdebstrap into `dest` (through a temp file, renamed when complete), sharing the cache's
/// Debian packages ([`debs`]).
fn run_mmdebstrap(
    cache: &Cache,
    run: &Run,
    dest: &Path,
    what: &str,
    progress: &Progress,
) -> Result<()> {
    let task = progress.task(format!("mmdebstrap: {what}"), None);
    let dir = dest.parent().expect("dest has a parent");
    crate::support::fsx::create_dir_all(dir)?;
    let tmp = dir.join(format!(".tmp-{}.tar", std::process::id()));
    let exchange = debs::exchange(cache, progress)?;
    let stage = Stage {
        from: run.from,
        debs: exchange.as_ref(),
    };
    let cmd = mmdebstrap_command(run.base, run.packages, run.sources, run.epoch, &tmp, &stage)?;
    if let Err(e) = crate::support::cmd::run(cmd, |l| task.detail(l.trim_start_matches("I: "))) {
        let _ = std::fs::remove_file(&tmp);
        task.finish("failed");
        return Err(e);
    }
    let added = match &exchange {
        Some(ex) => debs::take_back(cache, ex)?,
        None => 0,
    };
    crate::support::fsx::rename(&tmp, dest)?;
    task.finish(format!("done ({added} packages downloaded into the cache)"));
    Ok(())
}

/// A prepared base: its rootfs tar and its facts.
#[derive(Debug, Clone)]
pub struct PreparedBase {
    pub key: String,
    /// In the cache, or the user's own uncompressed tarball (see `in_place`).
    pub rootfs: PathBuf,
    pub info: BaseInfo,
    /// The SHA-256 (hex) named by `key` when `rootfs` is the user's uncompressed tarball, read
    /// in place rather than copied: what is read from it is checked against this afterwards
    /// ([`PreparedBase::check_unchanged`]).
    pub in_place: Option<String>,
    /// Its entries, when they were read while it was prepared (for its facts): the rootfs layer
    /// takes them instead of reading the tar again.
    pub entries: ReadEntries,
}

/// The entries of a root filesystem, once read ([`PreparedBase::entries`]).
#[derive(Clone, Default)]
pub struct ReadEntries(Arc<OnceLock<Vec<Entry>>>);

impl std::fmt::Debug for ReadEntries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.get() {
            Some(e) => write!(f, "ReadEntries({} entries)", e.len()),
            None => f.write_str("ReadEntries(not read)"),
        }
    }
}

impl PreparedBase {
    /// The entries of the root filesystem ([`read_rootfs`]), read once.
    pub fn rootfs_entries(&self, epoch: u64) -> Result<Vec<Entry>> {
        if let Some(e) = self.entries.0.get() {
            return Ok(e.clone());
        }
        read_rootfs(&self.rootfs, epoch)
    }

    /// Fails if the user's tarball read in place no longer holds the bytes its key names (edited
    /// since it was hashed): what was just read from it must not be kept under that key. A
    /// `stat` when the file is unchanged (the cache's memo, [`Cache::file_sha256`]).
    pub fn check_unchanged(&self, cache: &Cache) -> Result<()> {
        let Some(want) = &self.in_place else {
            return Ok(());
        };
        if cache.file_sha256(&self.rootfs)? != *want {
            bail!(
                "the base tarball {} changed while strata read it: build again",
                self.rootfs.display()
            );
        }
        Ok(())
    }
}

/// Where the root filesystem of the base under `key` is (made or not): the user's tarball itself
/// when it is an uncompressed tar, read in place; else `cache/base/<key>/rootfs.tar`.
pub fn rootfs_path(cache: &Cache, base: &Base, key: &str) -> Result<PathBuf> {
    Ok(match read_in_place(base)? {
        Some(path) => path.to_path_buf(),
        None => cache.base_dir(key).join("rootfs.tar"),
    })
}

/// The user's tarball, when the base is an uncompressed tarball (read in place).
pub fn read_in_place(base: &Base) -> Result<Option<&Path>> {
    Ok(match base {
        Base::Tarball { path, .. } if compression_of(path)?.is_none() => Some(path),
        _ => None,
    })
}

/// Makes sure the base's rootfs is there (building it with mmdebstrap, or decompressing a
/// compressed tarball into the cache, if needed). An uncompressed tarball is read in place: its
/// identity is the SHA-256 in `key`, checked again here through the cache's memo. `read`: its
/// entries ([`read_rootfs`]) when the caller read them already (while it hashed the tarball).
pub fn ensure_base(
    cache: &Cache,
    base: &Base,
    key: &str,
    epoch: u64,
    (refresh, read): (bool, Option<Vec<Entry>>),
    progress: &Progress,
) -> Result<PreparedBase> {
    let dir = cache.base_dir(key);
    let rootfs = rootfs_path(cache, base, key)?;
    let info_path = dir.join("info.json");
    let in_place = match base {
        Base::Tarball { path, .. } if rootfs == *path => {
            let sha = cache.file_sha256(path)?;
            if base_key(base, epoch, Some(&sha)) != key {
                bail!(
                    "the base tarball {} changed while strata read it: build again",
                    path.display()
                );
            }
            Some(sha)
        }
        _ => None,
    };
    if !refresh
        && rootfs.is_file()
        && let Some(info) = cache.read_json::<BaseInfo>(&info_path)
    {
        return Ok(PreparedBase {
            key: key.into(),
            rootfs,
            info,
            in_place,
            entries: ReadEntries::default(),
        });
    }
    match base {
        Base::Mmdebstrap { .. } => {
            let run = Run {
                base,
                packages: &[],
                sources: &[],
                from: None,
                epoch,
            };
            run_mmdebstrap(cache, &run, &rootfs, "base root filesystem", progress)?;
        }
        Base::Tarball { .. } if in_place.is_some() => {}
        Base::Tarball { path, .. } => {
            crate::support::fsx::create_dir_all(&dir)?;
            let tmp = dir.join(format!(".tmp-{}.tar", std::process::id()));
            let _ = std::fs::remove_file(&tmp);
            let res = decompress(path, &tmp);
            if let Err(e) = res {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
            crate::support::fsx::rename(&tmp, &rootfs)?;
        }
        Base::Oci { .. } | Base::OciRegistry { .. } => bail!("an OCI base has no rootfs tarball"),
    }
    let entries = match read.filter(|_| in_place.is_some()) {
        Some(entries) => entries,
        None => read_rootfs(&rootfs, epoch).with_context(|| match base {
            Base::Tarball { path, .. } => format!("reading the base tarball {}", path.display()),
            _ => format!("reading the root filesystem {}", rootfs.display()),
        })?,
    };
    let info = BaseInfo {
        packages: dpkg_packages(&entries)?,
        accounts: BaseAccounts::from_entries(&entries)?,
        java_homes: Some(java_homes(&entries)),
        layer_sizes: Default::default(),
    };
    let prepared = PreparedBase {
        key: key.into(),
        rootfs,
        info,
        in_place,
        entries: ReadEntries(Arc::new(OnceLock::from(entries))),
    };
    prepared.check_unchanged(cache)?;
    cache.write_json(&info_path, &prepared.info)?;
    Ok(prepared)
}

/// The compression of a tarball, from its first bytes: gzip, zstd, or none (a plain tar).
fn compression_of(path: &Path) -> Result<Option<crate::layer::compress::Compression>> {
    use crate::layer::compress::Compression;
    use std::io::Read;
    let mut magic = [0u8; 4];
    let n = std::fs::File::open(path)
        .with_context(|| format!("opening {}", path.display()))?
        .read(&mut magic)?;
    Ok(match &magic[..n] {
        [0x1f, 0x8b, ..] => Some(Compression::Gzip),
        [0x28, 0xb5, 0x2f, 0xfd] => Some(Compression::Zstd),
        _ => None,
    })
}

/// Decompresses a gzip or zstd rootfs tarball to `dest`: the cache's one copy, read in place by
/// offset.
fn decompress(src: &Path, dest: &Path) -> Result<()> {
    let f = std::io::BufReader::with_capacity(1 << 20, crate::support::fsx::open(src)?);
    let compression = compression_of(src)?.context("not a compressed tarball")?;
    let mut reader = crate::layer::compress::Compression::reader_for(&compression.media_type(), f)?;
    let mut out = crate::support::fsx::create(dest)?;
    if let Err(e) = std::io::copy(&mut reader, &mut out) {
        crate::bad!(
            "{}: cannot decompress it ({e}): truncated or corrupt",
            src.display()
        );
    }
    Ok(())
}

/// The Java homes of a root filesystem: `opt/java` if present, and each `usr/lib/jvm/<jdk>` with a
/// `bin/java`.
pub fn java_homes(entries: &[Entry]) -> Vec<String> {
    let mut out: Vec<String> = entries
        .iter()
        .filter_map(|e| e.path.strip_suffix("/bin/java"))
        .filter(|home| home.starts_with("usr/lib/jvm/") && home.matches('/').count() == 3)
        .map(|h| format!("/{h}"))
        .collect();
    if entries.iter().any(|e| e.path == JAVA_LINK) {
        out.insert(0, format!("/{JAVA_LINK}"));
    }
    out
}

/// Reads a root filesystem tar into normalized layer entries.
pub fn read_rootfs(tar: &Path, epoch: u64) -> Result<Vec<Entry>> {
    let entries = layer::read_tar_file(
        tar,
        TarPolicy {
            allow_devices: true,
            allow_setid: true,
        },
    )?;
    let mut entries = normalize_rootfs(entries, epoch)?;
    layer::relink_hardlinks(&mut entries)?;
    layer::normalize(entries)
}

/// Drops or fixes the install-time artefacts that differ between two identical installs.
pub fn normalize_rootfs(entries: Vec<Entry>, epoch: u64) -> Result<Vec<Entry>> {
    let mut out = Vec::with_capacity(entries.len());
    for mut e in entries {
        if e.path.starts_with("usr/lib/jvm/") && e.path.ends_with(".jsa") {
            continue; // CDS archive: regenerated by the JVM on demand, differs every dump
        }
        if e.path.starts_with("etc/ssh/ssh_host_") {
            continue; // host keys: made at first boot, never shipped
        }
        if e.path == "etc/ssl/certs/java/cacerts"
            && let Kind::File(c) = &e.kind
        {
            let data = c.read_all()?;
            if let Some(fixed) = normalize_jks(&data, epoch.saturating_mul(1000), "changeit") {
                e.kind = Kind::File(Content::bytes(fixed));
            }
        }
        out.push(e);
    }
    Ok(out)
}

/// Rewrites the entry dates of a JKS keystore to `date_ms` and recomputes its integrity digest.
/// Returns None when the data is not a JKS keystore with `password` (left as it is).
pub fn normalize_jks(data: &[u8], date_ms: u64, password: &str) -> Option<Vec<u8>> {
    use sha1::{Digest, Sha1};
    if data.len() < 32 || data[..4] != [0xfe, 0xed, 0xfe, 0xed] {
        return None;
    }
    let body_len = data.len() - 20;
    let mac = |body: &[u8]| -> [u8; 20] {
        let mut h = Sha1::new();
        for c in password.encode_utf16() {
            h.update(c.to_be_bytes());
        }
        h.update(b"Mighty Aphrodite");
        h.update(body);
        h.finalize().into()
    };
    if mac(&data[..body_len]) != data[body_len..] {
        return None;
    }
    let mut out = data[..body_len].to_vec();
    let be32 = |b: &[u8], at: usize| -> Option<u32> {
        Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
    };
    let be16 = |b: &[u8], at: usize| -> Option<usize> {
        Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?) as usize)
    };
    if be32(&out, 4)? != 2 {
        return None;
    }
    let count = be32(&out, 8)?;
    let mut pos = 12;
    for _ in 0..count {
        let tag = be32(&out, pos)?;
        pos += 4;
        pos += 2 + be16(&out, pos)?; // alias
        out.get_mut(pos..pos + 8)?
            .copy_from_slice(&date_ms.to_be_bytes());
        pos += 8;
        match tag {
            2 => {
                pos += 2 + be16(&out, pos)?; // cert type
                pos += 4 + be32(&out, pos)? as usize;
            }
            1 => {
                pos += 4 + be32(&out, pos)? as usize; // protected key
                let chain = be32(&out, pos)?;
                pos += 4;
                for _ in 0..chain {
                    pos += 2 + be16(&out, pos)?;
                    pos += 4 + be32(&out, pos)? as usize;
                }
            }
            _ => return None,
        }
    }
    if pos != body_len {
        return None;
    }
    let m = mac(&out);
    out.extend_from_slice(&m);
    Some(out)
}

/// The installed packages (name, version) from `var/lib/dpkg/status`.
pub fn dpkg_packages(entries: &[Entry]) -> Result<Vec<(String, String)>> {
    let Some(e) = entries.iter().find(|e| e.path == "var/lib/dpkg/status") else {
        return Ok(vec![]);
    };
    let Kind::File(c) = &e.kind else {
        return Ok(vec![]);
    };
    Ok(parse_dpkg_status(&String::from_utf8_lossy(&c.read_all()?)))
}

pub fn parse_dpkg_status(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for para in text.split("\n\n") {
        let field = |name: &str| {
            para.lines()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
        };
        let (Some(p), Some(v), Some(s)) = (field("Package:"), field("Version:"), field("Status:"))
        else {
            continue;
        };
        if s.ends_with(" installed") {
            out.push((p, v));
        }
    }
    out.sort();
    out
}

/// The key of a JDK layer's inputs.
pub fn jdk_key(jdk: &Jdk, base_key: &str) -> String {
    let packages = matches!(jdk.source, JdkSource::Packages { .. });
    let mut inputs = serde_json::json!({
        "kind": "jdk",
        "jdk": jdk,
        // A package JDK is a difference against the base; a tarball JDK is not.
        "base": packages.then_some(base_key),
        "normalize": NORMALIZE_VERSION,
    });
    if packages {
        inputs["stages"] = STAGES_VERSION.into();
    }
    key_of(&inputs)
}

/// Bumped when how a stage's root filesystem is made changes: 2 = each stage (JDK, disk
/// packages) starts from the previous stage's root filesystem instead of installing everything
/// again (the layers' bytes differ: dpkg's `status-old`, debconf's `*.dat-old`, apt's
/// `extended_states` order).
const STAGES_VERSION: u32 = 2;

/// Debian packages as (name, version).
pub type Packages = Vec<(String, String)>;

/// Stable path every image's JAVA_HOME points through.
pub const JAVA_LINK: &str = "opt/java";

/// The rootfs of the base plus a package JDK (cached; the JDK layer is its difference with the
/// base, and the disk layer is computed against it).
fn ensure_jdk_rootfs(
    cache: &Cache,
    jdk: &Jdk,
    base: &Base,
    prepared: &PreparedBase,
    (pkgs, apt_sources): (&[String], &[String]),
    epoch: u64,
    progress: &Progress,
) -> Result<PathBuf> {
    let key = jdk_key(jdk, &prepared.key);
    let upper = cache.base_dir(&format!("jdk-{key}")).join("rootfs.tar");
    if !upper.is_file() {
        let what = format!("base + JDK {}", jdk.name);
        let run = Run {
            base,
            packages: pkgs,
            sources: apt_sources,
            from: Some(&prepared.rootfs),
            epoch,
        };
        run_mmdebstrap(cache, &run, &upper, &what, progress)?;
    }
    Ok(upper)
}

/// The disk-only package layer: what `[disk] packages` (kernel, systemd, …) add on top of the
/// base and the image's JDK, as a difference computed by one more mmdebstrap run.
pub fn disk_entries(
    cache: &Cache,
    base: &Base,
    jdk: Option<&Jdk>,
    disk_packages: &[String],
    prepared: &PreparedBase,
    epoch: u64,
    progress: &Progress,
) -> Result<(Vec<Entry>, Packages)> {
    let (mut pkgs, mut sources) = (Vec::new(), Vec::new());
    let lower_tar = match jdk.map(|j| (j, &j.source)) {
        Some((
            j,
            JdkSource::Packages {
                packages,
                apt_sources,
            },
        )) => {
            pkgs.extend(packages.iter().cloned());
            sources.extend(apt_sources.iter().cloned());
            ensure_jdk_rootfs(
                cache,
                j,
                base,
                prepared,
                (packages, apt_sources),
                epoch,
                progress,
            )?
        }
        _ => prepared.rootfs.clone(),
    };
    pkgs.extend(disk_packages.iter().cloned());
    let key = key_of(&serde_json::json!({
        "kind": "disk-rootfs", "base": prepared.key, "packages": pkgs, "sources": sources,
        "normalize": NORMALIZE_VERSION, "stages": STAGES_VERSION,
    }));
    let upper = cache.base_dir(&format!("disk-{key}")).join("rootfs.tar");
    if !upper.is_file() {
        let run = Run {
            base,
            packages: &pkgs,
            sources: &sources,
            from: Some(&lower_tar),
            epoch,
        };
        run_mmdebstrap(cache, &run, &upper, "base + JDK + disk packages", progress)?;
    }
    let lower = read_rootfs(&lower_tar, epoch)
        .with_context(|| format!("reading the root filesystem {}", lower_tar.display()))?;
    let upper_entries = read_rootfs(&upper, epoch)
        .with_context(|| format!("reading the root filesystem {}", upper.display()))?;
    let lower_pk: BTreeMap<_, _> = dpkg_packages(&lower)?.into_iter().collect();
    let packages = dpkg_packages(&upper_entries)?
        .into_iter()
        .filter(|(p, v)| lower_pk.get(p) != Some(v))
        .collect();
    Ok((layer::diff_trees(&lower, &upper_entries)?, packages))
}

/// The entries of a JDK layer, with the installed package list.
pub fn jdk_entries(
    cache: &Cache,
    jdk: &Jdk,
    base: &Base,
    prepared: Option<&PreparedBase>,
    epoch: u64,
    progress: &Progress,
) -> Result<(Vec<Entry>, Packages)> {
    let mut packages = vec![];
    let mut entries = match &jdk.source {
        JdkSource::Packages {
            packages: pkgs,
            apt_sources,
        } => {
            let prepared = prepared.context("a package JDK needs the base root filesystem")?;
            let upper = ensure_jdk_rootfs(
                cache,
                jdk,
                base,
                prepared,
                (pkgs, apt_sources),
                epoch,
                progress,
            )?;
            let lower = read_rootfs(&prepared.rootfs, epoch).with_context(|| {
                format!("reading the root filesystem {}", prepared.rootfs.display())
            })?;
            let upper_entries = read_rootfs(&upper, epoch)
                .with_context(|| format!("reading the root filesystem {}", upper.display()))?;
            let lower_pk: BTreeMap<_, _> = prepared.info.packages.iter().cloned().collect();
            packages = dpkg_packages(&upper_entries)?
                .into_iter()
                .filter(|(p, v)| lower_pk.get(p) != Some(v))
                .collect();
            layer::diff_trees(&lower, &upper_entries)?
        }
        JdkSource::Tarball {
            origin,
            sha512,
            strip_components,
        } => {
            let raw = crate::source::fetch::tarball_entries(
                cache,
                origin,
                sha512,
                progress,
                "JDK tarball",
            )?;
            reroot(
                raw,
                *strip_components,
                jdk.java_home.trim_start_matches('/'),
            )?
        }
    };
    entries.retain(|e| e.path != JAVA_LINK);
    entries.push(Entry::symlink(JAVA_LINK, &jdk.java_home));
    Ok((entries, packages))
}

/// Moves tarball entries under `prefix`, dropping `strip` leading components (and entries that
/// had no more than that); hard link targets follow.
pub fn reroot(entries: Vec<Entry>, strip: usize, prefix: &str) -> Result<Vec<Entry>> {
    let move_path = |p: &str| -> Option<String> {
        let parts: Vec<&str> = p.split('/').collect();
        if parts.len() <= strip {
            return None;
        }
        Some(format!("{prefix}/{}", parts[strip..].join("/")))
    };
    let mut out = Vec::new();
    for mut e in entries {
        let Some(p) = move_path(&e.path) else {
            continue;
        };
        e.path = p;
        if let Kind::Hardlink(t) = &e.kind {
            let nt = move_path(t).with_context(|| {
                format!("hard link {} points at {t}, outside what is kept", e.path)
            })?;
            e.kind = Kind::Hardlink(nt);
        }
        out.push(e);
    }
    if out.is_empty() {
        crate::bad!("the tarball has nothing below {strip} leading path component(s)");
    }
    // Parents of the prefix.
    let mut acc = String::new();
    for comp in prefix.split('/') {
        if !acc.is_empty() {
            acc.push('/');
        }
        acc.push_str(comp);
        if !out.iter().any(|e| e.path == acc) {
            out.push(Entry::dir(&acc, 0o755, 0, 0));
        }
    }
    let mut out = layer::normalize(out)?;
    layer::relink_hardlinks(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_status_lists_installed_packages() {
        let s = "Package: a\nStatus: install ok installed\nVersion: 1\n\nPackage: b\nStatus: deinstall ok config-files\nVersion: 2\n";
        assert_eq!(
            parse_dpkg_status(s),
            vec![("a".to_string(), "1".to_string())]
        );
    }

    #[test]
    fn jks_dates_are_rewritten_and_digest_kept_valid() {
        use sha1::{Digest, Sha1};
        // A keystore with one trusted certificate entry.
        let mut body = vec![0xfe, 0xed, 0xfe, 0xed, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 2];
        body.extend_from_slice(&[0, 1, b'a']);
        body.extend_from_slice(&12345u64.to_be_bytes());
        body.extend_from_slice(&[0, 5]);
        body.extend_from_slice(b"X.509");
        body.extend_from_slice(&[0, 0, 0, 3, 1, 2, 3]);
        let mac = |b: &[u8]| {
            let mut h = Sha1::new();
            for c in "changeit".encode_utf16() {
                h.update(c.to_be_bytes());
            }
            h.update(b"Mighty Aphrodite");
            h.update(b);
            h.finalize().to_vec()
        };
        let mut ks = body.clone();
        ks.extend(mac(&body));
        let fixed = normalize_jks(&ks, 1000, "changeit").unwrap();
        let n = fixed.len() - 20;
        assert_eq!(&fixed[15 + 4..15 + 12], &1000u64.to_be_bytes());
        assert_eq!(fixed[n..].to_vec(), mac(&fixed[..n]));
        assert!(normalize_jks(&ks, 1000, "wrong").is_none());
    }

    #[test]
    fn reroot_strips_and_prefixes() {
        let e = vec![
            Entry::dir("hadoop-1.0", 0o755, 0, 0),
            Entry::file("hadoop-1.0/bin/x", Content::bytes("x"), 0o755, 0, 0),
        ];
        let out = reroot(e, 1, "opt/hadoop-1.0").unwrap();
        let paths: Vec<_> = out.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "opt",
                "opt/hadoop-1.0",
                "opt/hadoop-1.0/bin",
                "opt/hadoop-1.0/bin/x"
            ]
        );
    }
}
