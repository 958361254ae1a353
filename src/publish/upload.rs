//! # One image into Glance: look up, create, stream, wait, verify, rotate
//!
//! See the steps in the [`super`] module doc. Everything that can leave something behind in
//! Glance (a created image whose upload failed, was cut, timed out or did not verify) deletes
//! it before returning or retrying.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use sha2::Sha384;

use super::glance::{Created, Image};
use super::session::{CloudError, Session};
use super::{
    Conversion, ImageReport, Options, Outcome, Target, Visibility, derived_id, glance_name, ours,
    prop, properties,
};
use crate::oci::disks::{self, DiskRecord};
use crate::support::error::ChecksumMismatch;
use crate::support::fsx;
use crate::support::progress::{Progress, Task};

/// How many times a cut upload or a 5xx during the upload is retried (each with a fresh id).
const UPLOAD_RETRIES: u32 = 2;
/// How long an image found `queued` under our id may stay so before it counts as a leftover.
const QUEUED_GRACE: Duration = Duration::from_secs(10);

/// Publishes one image (or, with `--dry-run`, says what would happen).
pub(super) fn publish_one(
    session: &Session,
    opts: &Options,
    t: &Target,
    ensure_disk: &dyn Fn(&str) -> Result<DiskRecord>,
    progress: &Progress,
) -> Result<ImageReport> {
    let start = Instant::now();
    let visibility = if !opts.members.is_empty() && opts.visibility == Visibility::Private {
        Visibility::Shared
    } else {
        opts.visibility
    };
    let mut report = ImageReport {
        image: t.name.clone(),
        manifest: t.manifest.to_string(),
        glance_name: glance_name(&t.name),
        glance_id: None,
        outcome: Outcome::WouldCreate,
        visibility: visibility.as_str().into(),
        disk: None,
        disk_sha256: None,
        bytes_sent: 0,
        seconds: 0.0,
        verified: None,
        converted: None,
        boot_test: match disks::boot_test_passed(&opts.output, &t.name, &t.manifest) {
            Some(true) => "passed".into(),
            Some(false) => "failed".into(),
            None => "not run".into(),
        },
        hidden: vec![],
        pruned: vec![],
        kept: vec![],
        properties: Default::default(),
        user_data: None,
        method: None,
    };
    // The same image (by manifest) already active: nothing to make, nothing to send.
    if let Some(img) = find_active(session, prop::IMAGE_DIGEST, t.manifest.as_ref())? {
        return already(session, opts, t, report, &img, start, progress);
    }
    let disk = if opts.dry_run {
        match disks::read_record(&opts.output, &t.name)? {
            Some(d) if disks::is_current(&opts.output, &d, &t.manifest) => d,
            _ => {
                progress.say(format!(
                    "{}: its disk would be made first (`strata disk {}`)",
                    t.name, t.name
                ));
                report.seconds = start.elapsed().as_secs_f64();
                return Ok(report);
            }
        }
    } else {
        ensure_disk(&t.name)?
    };
    let path = disks::disk_path(&opts.output, &disk);
    report.disk = Some(path.clone());
    report.disk_sha256 = Some(disk.sha256.to_string());
    report.properties = properties(t, &disk);
    if let Some(img) = find_active(session, prop::DISK_SHA256, disk.sha256.as_ref())? {
        return already(session, opts, t, report, &img, start, progress);
    }
    if opts.dry_run {
        let (hidden, pruned, kept) = rotate(session, opts, t, None, None)?;
        (report.hidden, report.pruned, report.kept) = (hidden, pruned, kept);
        report.seconds = start.elapsed().as_secs_f64();
        return Ok(report);
    }
    let (img, outcome) = create_and_send(session, opts, t, &disk, &path, &mut report, progress)?;
    report.glance_id = Some(img.id.clone());
    report.outcome = outcome;
    for m in &opts.members {
        session.add_member(&img.id, m)?;
    }
    if opts.protected && !img.protected {
        session.patch(
            &img.id,
            &json!([{ "op": "replace", "path": "/protected", "value": true }]),
        )?;
    }
    let (hidden, pruned, kept) = rotate(session, opts, t, Some(&img.id), None)?;
    (report.hidden, report.pruned, report.kept) = (hidden, pruned, kept);
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// The bytes are in Glance already: nothing is sent. When that image is visible, the older
/// images of its name are still rotated (a `--prune` or a smaller `--keep` takes effect).
fn already(
    session: &Session,
    opts: &Options,
    t: &Target,
    mut report: ImageReport,
    img: &Image,
    start: Instant,
    p: &Progress,
) -> Result<ImageReport> {
    p.say(format!(
        "{}: already in Glance as {} ({}, {}): nothing uploaded",
        report.image,
        img.id,
        img.status,
        if img.os_hidden { "hidden" } else { "visible" }
    ));
    report.glance_id = Some(img.id.clone());
    report.outcome = Outcome::AlreadyPublished;
    report.visibility = img.visibility.clone();
    report.disk_sha256 = img.prop(prop::DISK_SHA256).map(str::to_owned);
    if !img.os_hidden {
        let newer_than = Some(img.created_at.as_str());
        let (hidden, pruned, kept) = rotate(session, opts, t, Some(&img.id), newer_than)?;
        (report.hidden, report.pruned, report.kept) = (hidden, pruned, kept);
    }
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// An active image of this project with `key == value`, hidden ones included.
fn find_active(session: &Session, key: &str, value: &str) -> Result<Option<Image>> {
    let found = session.list_images(&[(key, value)], true)?;
    Ok(found
        .into_iter()
        .filter(|i| ours(session, i) && i.prop(key) == Some(value))
        .find(|i| i.status == "active"))
}

/// Creates the image under a derived id and sends the disk; handles a concurrent run holding
/// the id, ids left taken by deleted images, leftovers, and retries of a cut upload.
fn create_and_send(
    session: &Session,
    opts: &Options,
    t: &Target,
    disk: &DiskRecord,
    path: &Path,
    report: &mut ImageReport,
    progress: &Progress,
) -> Result<(Image, Outcome)> {
    let sha = disk.sha256.to_string();
    let project = session
        .project_id
        .clone()
        // Without Keystone the project is the one Glance's own configuration gives.
        .unwrap_or_else(|| "no-keystone".to_owned());
    let mut failures = 0;
    let mut delay = Duration::from_secs(1);
    for n in 0..16 {
        let id = derived_id(&project, &sha, n);
        let body = create_body(t, disk, report, &id, opts);
        let created = match session.create(&body) {
            Ok(c) => c,
            Err(e) if !lost_answer(&e) => return Err(e),
            Err(e) => {
                // The create may have reached Glance even though its answer was lost.
                return Err(match session.delete(&id) {
                    Ok(()) => {
                        e.context(format!("image {id} deleted in case the create got through"))
                    }
                    Err(d) => e.context(format!(
                        "image {id} may exist: deleting it failed too ({d:#}); check with \
                         `openstack image show {id}`"
                    )),
                });
            }
        };
        match created {
            Created::New(_) => match send(session, opts, &id, path, disk, report, progress) {
                Ok(img) => return Ok((img, Outcome::Created)),
                Err(e) => {
                    let cleanup = session.delete(&id);
                    if let Err(d) = &cleanup {
                        return Err(e.context(format!(
                            "and deleting the failed image {id} failed too ({d:#}): delete it \
                             with `openstack image delete {id}`"
                        )));
                    }
                    if failures < UPLOAD_RETRIES && retryable(&e) {
                        failures += 1;
                        progress.say(format!(
                            "{}: upload failed ({:#}); image {id} deleted, retrying in {}s \
                             ({failures}/{UPLOAD_RETRIES})",
                            t.name,
                            e,
                            delay.as_secs()
                        ));
                        std::thread::sleep(delay);
                        delay *= 2;
                        continue;
                    }
                    return Err(
                        e.context(format!("image {id} was deleted: Glance holds no leftover"))
                    );
                }
            },
            Created::IdTaken => {
                if let Some(found) = held_by_another(session, opts, &id, &sha, progress)? {
                    return Ok(found);
                }
            }
        }
    }
    bail!("no free image id after 16 tries: too many deleted images of these bytes in this project")
}

/// The id is taken: by another run publishing the same bytes (wait for it), by a leftover
/// (delete it), or by a deleted image (its id stays taken). None: try the next id.
fn held_by_another(
    session: &Session,
    opts: &Options,
    id: &str,
    sha: &str,
    progress: &Progress,
) -> Result<Option<(Image, Outcome)>> {
    let Some(img) = session.image(id)? else {
        return Ok(None); // a deleted image's id
    };
    if img.prop(prop::DISK_SHA256) != Some(sha) {
        return Ok(None);
    }
    match img.status.as_str() {
        "active" => Ok(Some((img, Outcome::PublishedByAnotherRun))),
        "saving" | "importing" | "uploading" => {
            progress.say(format!(
                "image {id} is being uploaded by another run ({}): waiting for it",
                img.status
            ));
            let img = wait_active(session, id, opts.wait, progress)?;
            Ok(Some((img, Outcome::PublishedByAnotherRun)))
        }
        "queued" => {
            // Another run may be about to upload; a killed run left it for good.
            let started = Instant::now();
            while started.elapsed() < QUEUED_GRACE.min(opts.wait) {
                std::thread::sleep(Duration::from_millis(500));
                match session.image(id)? {
                    Some(i) if i.status == "queued" => continue,
                    Some(i) if i.status == "active" => {
                        return Ok(Some((i, Outcome::PublishedByAnotherRun)));
                    }
                    Some(_) => {
                        let img = wait_active(session, id, opts.wait, progress)?;
                        return Ok(Some((img, Outcome::PublishedByAnotherRun)));
                    }
                    None => return Ok(None),
                }
            }
            progress.say(format!(
                "image {id} is a leftover (queued, no data, {}s): deleting it",
                QUEUED_GRACE.as_secs()
            ));
            session.delete(id)?;
            Ok(None)
        }
        _ => Ok(None),
    }
}

fn create_body(
    t: &Target,
    disk: &DiskRecord,
    report: &ImageReport,
    id: &str,
    opts: &Options,
) -> Value {
    let mut tags = t.spec.tags.clone();
    tags.extend(opts.tags.iter().cloned());
    tags.sort();
    tags.dedup();
    let mut body = json!({
        "id": id,
        "name": report.glance_name,
        "disk_format": "qcow2",
        "container_format": "bare",
        "visibility": report.visibility,
        "min_disk": disk.min_disk_gib,
        "min_ram": t.spec.min_ram.map(|s| s.0.div_ceil(1 << 20)).unwrap_or(0),
        "tags": tags,
    });
    for (k, v) in &report.properties {
        body[k] = json!(v);
    }
    body
}

/// No answer came (a timeout or a dropped connection): the request may have been done.
fn lost_answer(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<CloudError>(),
            Some(CloudError::Unreachable { .. })
        )
    })
}

/// Whether a failed upload is worth another try (a dropped connection, a timeout, a 5xx).
fn retryable(e: &anyhow::Error) -> bool {
    e.chain().any(|c| match c.downcast_ref::<CloudError>() {
        Some(CloudError::Unreachable { .. }) => true,
        Some(CloudError::Status { status, .. }) => *status >= 500,
        None => false,
    })
}

/// The upload's body: the file read on a thread of its own in 1 MiB pieces (the HTTP client
/// reads its body 8 KiB at a time on its runtime thread). Nothing is hashed while sending: the
/// disk record's SHA-512 is what Glance's hash is compared with. Moves the progress bar.
struct Pipe {
    rx: std::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
    cur: Vec<u8>,
    pos: usize,
    task: Arc<Task>,
}

impl Pipe {
    /// Returns the pipe and the reading thread (its result: the bytes read).
    fn start(file: std::fs::File, task: Arc<Task>) -> (Pipe, std::thread::JoinHandle<u64>) {
        let (tx, rx) = std::sync::mpsc::sync_channel(4);
        let reader = std::thread::spawn(move || {
            let mut n = 0u64;
            let mut file = file;
            loop {
                let mut chunk = vec![0u8; 1 << 20];
                let got = match read_full(&mut file, &mut chunk) {
                    Ok(0) => break,
                    Ok(got) => got,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        break;
                    }
                };
                chunk.truncate(got);
                n += got as u64;
                if tx.send(Ok(chunk)).is_err() {
                    break; // the upload ended early
                }
            }
            n
        });
        let pipe = Pipe {
            rx,
            cur: vec![],
            pos: 0,
            task,
        };
        (pipe, reader)
    }
}

/// Reads until `buf` is full or the file ends.
fn read_full(f: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match f.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

impl Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    self.cur = chunk;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        self.task.inc(n as u64);
        Ok(n)
    }
}

/// Streams the disk (upload, or stage + import), waits for `active`, verifies.
fn send(
    session: &Session,
    opts: &Options,
    id: &str,
    path: &Path,
    disk: &DiskRecord,
    report: &mut ImageReport,
    progress: &Progress,
) -> Result<Image> {
    let file = fsx::open(path)?;
    let len = file
        .metadata()
        .with_context(|| format!("reading the size of {path:?}"))?
        .len();
    if len != disk.bytes {
        return Err(ChecksumMismatch {
            what: format!("size of {path:?} (changed since `strata disk` made it; make it again)"),
            algorithm: "size",
            expected: disk.bytes.to_string(),
            found: len.to_string(),
        }
        .into());
    }
    let import = opts.import && {
        let methods = session.import_methods()?;
        if !methods.iter().any(|m| m == "glance-direct") {
            progress.say(format!(
                "the cloud does not offer glance-direct import (it offers: {}); uploading directly",
                methods.join(", ")
            ));
        }
        methods.iter().any(|m| m == "glance-direct")
    };
    report.method = Some(if import { "glance-direct" } else { "upload" }.into());
    let task = Arc::new(progress.task(
        format!(
            "{}: {} to image {id}",
            report.image,
            if import { "staging" } else { "uploading" }
        ),
        Some(len),
    ));
    let (pipe, reader) = Pipe::start(file, task.clone());
    let sent = session.upload(id, pipe, len, import);
    let bytes = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the thread reading {path:?} panicked"))?;
    report.bytes_sent = bytes;
    match Arc::try_unwrap(task) {
        Ok(t) => t.finish(if sent.is_ok() { "sent" } else { "failed" }),
        Err(_) => progress.say("upload ended"),
    }
    sent?;
    if bytes != len {
        bail!("{path:?} changed while it was sent ({bytes} bytes read, {len} expected)");
    }
    if import {
        session.import(id)?;
    }
    let img = wait_active(session, id, opts.wait, progress)?;
    verify(&img, path, disk, report)?;
    Ok(img)
}

/// Compares what Glance computed with the disk record (made when `strata disk` wrote the file):
/// a file changed since, or bytes corrupted on the way, both differ. A conversion is
/// reported, not failed.
fn verify(img: &Image, path: &Path, disk: &DiskRecord, report: &mut ImageReport) -> Result<()> {
    let format = img.disk_format.clone().unwrap_or_default();
    if format != "qcow2" {
        report.verified = Some(format!(
            "not comparable: the cloud converted the image from qcow2 to {format} on import"
        ));
        report.converted = Some(Conversion {
            disk_format: format,
            size: img.size,
            os_hash_value: img.os_hash_value.clone(),
        });
        return Ok(());
    }
    if img.size != Some(disk.bytes) {
        return Err(ChecksumMismatch {
            what: format!("size of Glance image {}", img.id),
            algorithm: "size",
            expected: disk.bytes.to_string(),
            found: img.size.map(|s| s.to_string()).unwrap_or("none".into()),
        }
        .into());
    }
    let (Some(algo), Some(value)) = (&img.os_hash_algo, &img.os_hash_value) else {
        report.verified = Some("size matches; the cloud computes no os_hash_value".into());
        return Ok(());
    };
    let (name, local): (&'static str, String) = match algo.as_str() {
        "sha512" => (
            "sha512",
            match &disk.sha512 {
                Some(h) => h.clone(),
                None => crate::support::hash::sha512_file(path)?,
            },
        ),
        "sha256" => ("sha256", disk.sha256.digest().to_string()),
        "sha384" => ("sha384", hash_file::<Sha384>(path)?),
        other => {
            report.verified = Some(format!(
                "size matches; os_hash_algo {other} is not one strata computes"
            ));
            return Ok(());
        }
    };
    if !value.eq_ignore_ascii_case(&local) {
        return Err(ChecksumMismatch {
            what: format!(
                "Glance image {} (against the disk record: the file changed since `strata disk` \
                 made it, or bytes were corrupted on the way)",
                img.id
            ),
            algorithm: name,
            expected: local,
            found: value.clone(),
        }
        .into());
    }
    report.verified = Some(format!("{name} and size match"));
    Ok(())
}

fn hash_file<D: sha2::Digest + std::io::Write>(path: &Path) -> Result<String> {
    let mut h = D::new();
    std::io::copy(&mut fsx::open(path)?, &mut h).with_context(|| format!("hashing {path:?}"))?;
    Ok(hex::encode(h.finalize()))
}

/// Polls until `active`; each state may last at most `wait`.
pub(super) fn wait_active(
    session: &Session,
    id: &str,
    wait: Duration,
    progress: &Progress,
) -> Result<Image> {
    let mut state = String::new();
    let mut since = Instant::now();
    let mut delay = Duration::from_millis(200);
    loop {
        let img = session.image(id)?.with_context(|| {
            format!("image {id} disappeared while strata waited for it (deleted by someone?)")
        })?;
        match img.status.as_str() {
            "active" => return Ok(img),
            "killed" | "deleted" | "pending_delete" | "deactivated" => bail!(
                "Glance put image {id} in state {:?}: the upload or import failed on the server \
                 (its tasks: GET /v2/images/{id}/tasks)",
                img.status
            ),
            _ => {}
        }
        // A failed import puts the image back to `queued` and names the stores that failed.
        if let Some(failed) = img
            .prop("os_glance_failed_import")
            .filter(|f| !f.is_empty())
        {
            bail!(
                "the cloud's import of image {id} failed (os_glance_failed_import: {failed}); \
                 its tasks say why: GET /v2/images/{id}/tasks"
            );
        }
        if img.status != state {
            if !state.is_empty() {
                progress.say(format!("image {id}: {state} → {}", img.status));
            }
            state = img.status.clone();
            since = Instant::now();
        }
        if since.elapsed() > wait {
            bail!(
                "image {id} stuck in state {state:?} for {}s (--wait bounds each state); the \
                 cloud's image service or its import workers may be down",
                wait.as_secs()
            );
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

/// Hides (or with `--prune` deletes) this name's images beyond `keep`, newest first, `new`
/// (the image just published or found) counting as the newest; `newer_than`: only images
/// created no later than this time count as older. With `--dry-run` only says what it would
/// do. Returns (hidden, pruned, kept) ids.
fn rotate(
    session: &Session,
    opts: &Options,
    t: &Target,
    new: Option<&str>,
    newer_than: Option<&str>,
) -> Result<(Vec<String>, Vec<String>, Vec<String>)> {
    let name = glance_name(&t.name);
    let keep = opts.keep.unwrap_or(t.spec.keep).max(1);
    let mut older: Vec<Image> = session
        .list_images(&[("name", &name)], true)?
        .into_iter()
        .filter(|i| {
            ours(session, i)
                && Some(i.id.as_str()) != new
                && i.prop(prop::RECIPE) == Some(t.record.recipe())
                && newer_than.is_none_or(|n| i.created_at.as_str() <= n)
        })
        .collect();
    older.sort_by(|a, b| b.created_at.cmp(&a.created_at));
    let (mut hidden, mut pruned, mut kept) = (vec![], vec![], vec![]);
    // The new image is the newest: keep - 1 older ones stay visible.
    for (i, img) in older.into_iter().enumerate() {
        if i + 1 < keep {
            kept.push(img.id);
            continue;
        }
        if opts.prune && !img.protected {
            if !opts.dry_run {
                session.delete(&img.id)?;
            }
            pruned.push(img.id);
        } else if !img.os_hidden {
            if !opts.dry_run {
                session.patch(
                    &img.id,
                    &json!([{ "op": "replace", "path": "/os_hidden", "value": true }]),
                )?;
            }
            hidden.push(img.id);
        }
    }
    Ok((hidden, pruned, kept))
}
