//! # Docker: load a store's images into the local engine, run them
//!
//! `strata load IMAGE…` streams the images into the engine `DOCKER_HOST` names, as the archive
//! `strata export` writes (`oci::archive`: OCI layout + Docker's `manifest.json`,
//! which Docker 20.10 reads). The tar is produced by a thread into the request body: no temp
//! file, nothing read into memory. The engine's progress stream is read to its end and an
//! error item in it fails the load. zstd layers need Docker 23+: on an older engine strata
//! refuses such an image before sending anything. Images appear under their full names
//! (`hadoop-lab:3.3.6`); the engine's image id is the config digest.
//!
//! `strata run IMAGE [-- CMD…]` runs a container on the host network (how lab nodes with heavy
//! cluster traffic run), loading the image first when the engine lacks this build of it, with
//! - the release volume of a `[dist] mode = "mount"` image: `--dist DIR` (a directory holding
//!   `hadoop-X.Y.Z/`) bind-mounted read-only at `/srv/hadoop-dist`; without it an NFS source
//!   (`server:/export`) becomes a read-only NFS volume of Docker's local driver, and a
//!   `LABEL=…` source the host directory that volume is mounted on, if it is;
//! - the cluster key of a `[ssh] deliver = "boot"` image mounted read-only at
//!   `/run/secrets/strata-ssh-key` (never copied into an image or a layer).
//!
//! With CMD it streams the command's output, removes the container and passes its exit code
//! on. Without CMD the node starts detached with the image's command (a lab node is a daemon):
//! strata prints the container id and how to follow and stop it. `--smoke` checks a running
//! container ([`smoke`]) and records the result in the store (`oci::smoke`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType, MountVolumeOptions};
use oci_spec::image::Descriptor;
use serde::Serialize;

use crate::oci::archive::Archive;
use crate::oci::view::View;
use crate::recipe::{DIST_MOUNT, DistMode};
use crate::support::error::BadInput;
use crate::support::progress::Progress;

pub mod engine;
pub mod smoke;

use engine::Engine;

/// The load timeout when none is given: 5 minutes plus one second per MiB of blobs (a slow
/// disk unpacks ~1 MiB/s with room to spare), so a 1 GiB image gets 22 minutes.
pub fn default_load_timeout(bytes: u64) -> Duration {
    Duration::from_secs(300 + bytes / (1 << 20))
}

/// The oldest Docker that loads zstd-compressed layers.
pub const ZSTD_MIN_DOCKER: u32 = 23;

#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct LoadReport {
    pub engine: String,
    pub images: Vec<LoadedImage>,
    /// Bytes of blobs sent (the archive holds these plus small headers).
    pub bytes: u64,
    pub seconds: f64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct LoadedImage {
    pub image: String,
    /// The engine's image id: the config digest (the manifest digest on an engine with the
    /// containerd image store).
    pub id: String,
    pub manifest: String,
}

/// Loads `images` (all of the store when empty) into the engine.
pub fn load(
    store: &Path,
    images: &[String],
    timeout: Option<Duration>,
    quiet: bool,
) -> Result<LoadReport> {
    let v = View::open(store)?;
    let archive = Archive::plan(&v, images)?;
    let engine = Engine::connect()?;
    load_into(&engine, &v, &archive, timeout, &Progress::new(quiet))
}

fn load_into(
    engine: &Engine,
    v: &View,
    archive: &Archive,
    timeout: Option<Duration>,
    progress: &Progress,
) -> Result<LoadReport> {
    let names: Vec<&str> = archive.images.iter().map(|(n, _)| n.as_str()).collect();
    if archive.has_zstd_layers() && engine.major().is_some_and(|m| m < ZSTD_MIN_DOCKER) {
        return Err(BadInput(format!(
            "{} has zstd-compressed layers, which Docker loads from version {ZSTD_MIN_DOCKER} on; \
             the engine is {}. Upgrade the engine, or build the recipe with \
             `compression = \"gzip\"`",
            names.join(", "),
            engine.describe()
        ))
        .into());
    }
    let bytes = archive.blob_bytes();
    let timeout = timeout.unwrap_or_else(|| default_load_timeout(bytes));
    let task = progress.task(
        format!(
            "loading {} ({}) into {}",
            names.join(", "),
            crate::support::units::human(bytes),
            engine.describe()
        ),
        Some(bytes),
    );
    let start = Instant::now();
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(4);
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let loaded = std::thread::scope(|s| {
        let task = &task;
        let producer = s.spawn(move || {
            let mut w = ChannelWriter::new(tx, Some(task));
            let r = archive.write_to(v, &mut w).and_then(|()| w.finish());
            task.detail("sent; the engine is unpacking it");
            if let Err(e) = &r {
                // The engine then sees a broken body, not a short valid-looking archive.
                let _ =
                    w.tx.blocking_send(Err(std::io::Error::other(format!("{e:#}"))));
            }
            r
        });
        let loaded = engine.load(body, timeout);
        let produced = producer
            .join()
            .map_err(|_| anyhow::anyhow!("the archive writer panicked"))?;
        // A writer that failed on its own (a blob it could not read) says more than the
        // engine's view of a cut body; a writer cut off by the engine says less than the engine.
        if let Err(e) = produced {
            let cut_off = e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            });
            if !cut_off || loaded.is_ok() {
                return Err(e.context("streaming the archive to the engine"));
            }
        }
        loaded.with_context(|| format!("loading into {}", engine.describe()))
    })?;
    let mut images = vec![];
    for (name, d) in &archive.images {
        let config = v.manifest(d)?.config().digest().to_string();
        let id = engine.image_id(name)?.unwrap_or_default();
        if !is_this_build(&id, &config, d.digest().as_ref()) {
            anyhow::bail!(
                "after the load the engine's {name} is {} and not {config} (engine said: {})",
                if id.is_empty() { "absent" } else { &id },
                loaded.join("; ")
            );
        }
        images.push(LoadedImage {
            image: name.clone(),
            id,
            manifest: d.digest().to_string(),
        });
    }
    let seconds = start.elapsed().as_secs_f64();
    task.finish(format!("loaded in {seconds:.1}s"));
    Ok(LoadReport {
        engine: engine.describe(),
        images,
        bytes,
        seconds,
    })
}

/// Whether the engine's image id is this build's: the config digest (Docker's classic image
/// store) or the manifest digest (the containerd image store of newer engines).
fn is_this_build(id: &str, config: &str, manifest: &str) -> bool {
    id == config || id == manifest
}

/// A `Write` that sends 1 MiB chunks into the request body's channel (counted on `task`).
struct ChannelWriter<'a> {
    tx: tokio::sync::mpsc::Sender<std::io::Result<bytes::Bytes>>,
    buf: Vec<u8>,
    task: Option<&'a crate::support::progress::Task>,
}

const CHUNK: usize = 1 << 20;

impl<'a> ChannelWriter<'a> {
    fn new(
        tx: tokio::sync::mpsc::Sender<std::io::Result<bytes::Bytes>>,
        task: Option<&'a crate::support::progress::Task>,
    ) -> Self {
        ChannelWriter {
            tx,
            buf: Vec::with_capacity(CHUNK),
            task,
        }
    }

    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if let Some(t) = self.task {
            t.inc(self.buf.len() as u64);
        }
        let chunk = bytes::Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx.blocking_send(Ok(chunk)).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the engine stopped reading the archive",
            )
        })
    }

    fn finish(&mut self) -> Result<()> {
        self.send()?;
        Ok(())
    }
}

impl Write for ChannelWriter<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// ----------------------------------------------------------------------------------------- run

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub store: PathBuf,
    pub image: String,
    /// The command (empty: the image's own, detached).
    pub cmd: Vec<String>,
    /// A host directory holding `hadoop-X.Y.Z/`, mounted read-only at `/srv/hadoop-dist`.
    pub dist: Option<PathBuf>,
    /// `KEY=VALUE` for the container (e.g. `STRATA_ROLES=namenode,datanode`).
    pub env: Vec<String>,
    /// The container's name (detached runs).
    pub name: Option<String>,
    pub smoke: bool,
    pub load_timeout: Option<Duration>,
    pub quiet: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct RunReport {
    pub image: String,
    pub manifest: String,
    pub engine: String,
    /// Whether the image was loaded first.
    pub loaded: bool,
    /// Detached runs: the container, still running.
    pub container: Option<String>,
    /// Runs with a command: its exit code.
    pub exit_code: Option<i64>,
    /// The mounts given to the container (`host → container (ro)`, never a key's content).
    pub mounts: Vec<String>,
    /// What the user should know (no release volume, …).
    pub notes: Vec<String>,
    pub smoke: Option<crate::oci::smoke::SmokeRecord>,
}

/// A command run by `strata run IMAGE -- CMD` that exited non-zero: strata exits with its code.
#[derive(Debug, thiserror::Error)]
#[error("the command in {image} exited with {code}")]
pub struct ContainerExit {
    pub image: String,
    pub code: i64,
}

/// What a container of the image needs from the host: mounts, notes.
struct Setup {
    mounts: Vec<Mount>,
    described: Vec<String>,
    notes: Vec<String>,
}

/// `strata run`: see the module doc. `out`/`err` receive a command's output.
pub fn run(opts: &RunOptions, out: &mut dyn Write, err: &mut dyn Write) -> Result<RunReport> {
    let progress = Progress::new(opts.quiet);
    let v = View::open(&opts.store)?;
    let (name, desc) = v.find(&opts.image)?;
    let setup = setup(&v, &name, &desc, opts)?;
    let engine = Engine::connect()?;
    let config = v.manifest(&desc)?.config().digest().to_string();
    let id = engine.image_id(&name)?.unwrap_or_default();
    let loaded = if !is_this_build(&id, &config, desc.digest().as_ref()) {
        let archive = Archive::plan(&v, std::slice::from_ref(&name))?;
        load_into(&engine, &v, &archive, opts.load_timeout, &progress)?;
        true
    } else {
        false
    };
    for n in &setup.notes {
        progress.say(format!("note: {n}"));
    }
    let mut rep = RunReport {
        image: name.clone(),
        manifest: desc.digest().to_string(),
        engine: engine.describe(),
        loaded,
        container: None,
        exit_code: None,
        mounts: setup.described.clone(),
        notes: setup.notes.clone(),
        smoke: None,
    };
    let body = |cmd: Option<Vec<String>>, name: Option<String>| ContainerCreateBody {
        image: Some(rep.image.clone()),
        cmd,
        env: Some(opts.env.clone()),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        host_config: Some(HostConfig {
            network_mode: Some("host".into()),
            mounts: Some(setup.mounts.clone()),
            ..Default::default()
        }),
        labels: Some([("io.strata.run".to_string(), name.unwrap_or_default())].into()),
        ..Default::default()
    };
    if opts.smoke {
        let rec = smoke::smoke(&engine, &v, &name, &desc, body(None, None), &progress)?;
        crate::oci::smoke::write_record(&opts.store, &rec)?;
        let passed = rec.passed;
        rep.smoke = Some(rec);
        if !passed {
            return Err(smoke::SmokeFailed(rep).into());
        }
        return Ok(rep);
    }
    if opts.cmd.is_empty() {
        let mut b = body(None, opts.name.clone());
        b.attach_stdout = Some(false);
        b.attach_stderr = Some(false);
        if !opts.env.iter().any(|e| e.starts_with("STRATA_ROLES=")) {
            rep.notes.push(
                "no STRATA_ROLES: a lab node's strata-node then starts a login shell, which ends \
                 at once without a terminal; pass -e STRATA_ROLES=namenode,datanode,… to run daemons"
                    .into(),
            );
        }
        let id = create_named(&engine, b, opts.name.as_deref())?;
        engine.start(&id).inspect_err(|_| engine.remove(&id))?;
        rep.container = Some(id);
        return Ok(rep);
    }
    let id = engine.create(body(Some(opts.cmd.clone()), None))?;
    let code = engine.run_attached(&id, out, err);
    engine.remove(&id);
    let code = code?;
    rep.exit_code = Some(code);
    if code != 0 {
        return Err(ContainerExit { image: name, code }.into());
    }
    Ok(rep)
}

fn create_named(engine: &Engine, body: ContainerCreateBody, name: Option<&str>) -> Result<String> {
    match name {
        None => engine.create(body),
        Some(n) => engine.create_named(body, n),
    }
}

/// The mounts a container of `name` gets: the release volume and the key delivered at boot.
fn setup(v: &View, name: &str, desc: &Descriptor, opts: &RunOptions) -> Result<Setup> {
    let mut s = Setup {
        mounts: vec![],
        described: vec![],
        notes: vec![],
    };
    let settings = v.record.settings_of(name);
    let version = v.image_record(name).and_then(|r| r.hadoop_version.clone());
    let mount_source = settings.and_then(|s| match s.dist.as_ref().map(|d| &d.mode) {
        Some(DistMode::Mount { source }) => Some(source.clone()),
        _ => None,
    });
    if let Some(dir) = &opts.dist {
        let dir = std::fs::canonicalize(dir)
            .map_err(|e| BadInput(format!("--dist {}: {e}", dir.display())))?;
        if let Some(ver) = &version
            && !dir.join(format!("hadoop-{ver}/bin/hadoop")).exists()
        {
            s.notes.push(format!(
                "{} holds no hadoop-{ver}/bin/hadoop: the node starts without Hadoop",
                dir.display()
            ));
        }
        if mount_source.is_none() {
            s.notes.push(format!(
                "{name} does not take its release from a volume ([dist] mode is not \"mount\"); \
                 --dist is mounted anyway"
            ));
        }
        s.described
            .push(format!("{} → {DIST_MOUNT} (ro)", dir.display()));
        s.mounts.push(bind(&dir, DIST_MOUNT));
    } else if let Some(source) = mount_source {
        dist_from_source(&mut s, &source, version.as_deref());
    }
    if let Some(r) = v.image_record(name)
        && r.keys_at_boot
    {
        let fingerprint = v.key_fingerprint(name, desc)?;
        let from_recipe = settings.and_then(|s| s.ssh.key.clone());
        let key = crate::source::keys::for_image(r.recipe(), from_recipe.as_deref(), &fingerprint)?;
        let secret = crate::source::keys::SECRET_FILE;
        s.described.push(format!(
            "the cluster key {} ({fingerprint}) → {secret} (ro)",
            key.origin.display()
        ));
        s.mounts.push(bind(&key.origin, secret));
    }
    Ok(s)
}

/// The release volume from the recipe's `[dist] source`, without `--dist`.
fn dist_from_source(s: &mut Setup, source: &str, version: Option<&str>) {
    let what = version
        .map(|v| format!("hadoop-{v}"))
        .unwrap_or("the release".into());
    if let Some(label) = source.strip_prefix("LABEL=") {
        match mounted_label(label) {
            Some(dir) => {
                s.described
                    .push(format!("{} ({source}) → {DIST_MOUNT} (ro)", dir.display()));
                s.mounts.push(bind(&dir, DIST_MOUNT));
            }
            None => s.notes.push(format!(
                "the release volume {source} is not mounted on this host: the node starts \
                 without {what}; pass --dist DIR (a directory holding {what}/)"
            )),
        }
    } else if let Some((server, export)) = source.split_once(':') {
        s.described
            .push(format!("NFS {source} → {DIST_MOUNT} (ro)"));
        s.mounts.push(Mount {
            target: Some(DIST_MOUNT.into()),
            typ: Some(MountType::VOLUME),
            read_only: Some(true),
            volume_options: Some(MountVolumeOptions {
                driver_config: Some(bollard::models::MountVolumeOptionsDriverConfig {
                    name: Some("local".into()),
                    options: Some(
                        [
                            ("type".to_string(), "nfs".to_string()),
                            ("o".to_string(), format!("addr={server},ro,soft")),
                            ("device".to_string(), format!(":{export}")),
                        ]
                        .into(),
                    ),
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
}

/// Where the file system labelled `label` is mounted on this host, if it is.
fn mounted_label(label: &str) -> Option<PathBuf> {
    let dev = std::fs::canonicalize(format!("/dev/disk/by-label/{label}")).ok()?;
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (src, dir) = (f.next()?, f.next()?);
        (Path::new(src) == dev).then(|| PathBuf::from(dir.replace("\\040", " ")))
    })
}

fn bind(host: &Path, target: &str) -> Mount {
    Mount {
        target: Some(target.into()),
        source: Some(host.display().to_string()),
        typ: Some(MountType::BIND),
        read_only: Some(true),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn empty() -> Setup {
        Setup {
            mounts: vec![],
            described: vec![],
            notes: vec![],
        }
    }

    #[test]
    fn an_nfs_source_becomes_a_read_only_nfs_volume() {
        let mut s = empty();
        dist_from_source(&mut s, "nfs.lab:/export/hadoop", Some("3.3.6"));
        let m = &s.mounts[0];
        assert_eq!(m.target.as_deref(), Some(DIST_MOUNT));
        assert_eq!(m.typ, Some(MountType::VOLUME));
        assert_eq!(m.read_only, Some(true));
        let o = m
            .volume_options
            .as_ref()
            .and_then(|v| v.driver_config.as_ref())
            .and_then(|d| d.options.as_ref())
            .unwrap();
        assert_eq!(o["type"], "nfs");
        assert_eq!(o["device"], ":/export/hadoop");
        assert!(o["o"].starts_with("addr=nfs.lab,ro"), "{o:?}");
        assert!(s.notes.is_empty());
    }

    #[test]
    fn a_label_not_mounted_here_is_a_note_not_a_failure() {
        let mut s = empty();
        dist_from_source(&mut s, "LABEL=no-such-label-here", Some("3.3.6"));
        assert!(s.mounts.is_empty());
        assert!(
            s.notes[0].contains("LABEL=no-such-label-here") && s.notes[0].contains("--dist"),
            "{:?}",
            s.notes
        );
    }

    #[test]
    fn the_load_timeout_grows_with_the_image() {
        assert_eq!(default_load_timeout(0).as_secs(), 300);
        assert_eq!(default_load_timeout(1 << 30).as_secs(), 300 + 1024);
    }

    #[test]
    fn a_build_is_known_by_its_config_or_its_manifest() {
        assert!(is_this_build("sha256:c", "sha256:c", "sha256:m"));
        assert!(is_this_build("sha256:m", "sha256:c", "sha256:m"));
        assert!(!is_this_build("", "sha256:c", "sha256:m"));
        assert!(!is_this_build("sha256:old", "sha256:c", "sha256:m"));
    }

    #[test]
    fn the_channel_writer_sends_everything_in_order_in_bounded_chunks() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
        let data: Vec<u8> = (0..(3 * CHUNK + 17)).map(|i| (i % 251) as u8).collect();
        let mut w = ChannelWriter::new(tx, None);
        w.write_all(&data).unwrap();
        w.finish().unwrap();
        drop(w);
        let mut got = Vec::new();
        while let Ok(chunk) = rx.try_recv() {
            let chunk = chunk.unwrap();
            assert!(chunk.len() <= CHUNK);
            got.extend_from_slice(&chunk);
        }
        assert_eq!(got, data);
    }
}
