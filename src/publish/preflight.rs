//! # Preflight: the launch checklist of an image on a cloud
//!
//! `strata preflight IMAGE --cloud lab [--flavor NAME] [--flavors FILE]` answers, before anyone
//! runs `openstack server create`, the questions behind "VM creation failed with an odd error":
//!
//! | check       | looks at                                   | fails when                       |
//! |-------------|--------------------------------------------|----------------------------------|
//! | image       | Glance, by `strata_image_digest`           | absent, not `active`, hidden     |
//! | flavor disk | `disk` vs `min_disk`, virtual size         | smaller (disk 0: a volume, pass) |
//! | flavor RAM  | `ram` vs `min_ram` (Glance's, recipe's)    | smaller                          |
//! | image quota | `/v2/info/usage` `image_size_total`        | over (`{}`, 404: unknown)        |
//! | store       | `/v2/info/stores` (404: one store, pass)   | image's store gone, read-only    |
//! | disk format | `/v2/schemas/image` `disk_format` enum     | no qcow2                         |
//! | firmware    | `hw_firmware_type` vs `[publish]`          | differs from the recipe          |
//! | disk bus    | `hw_disk_bus` vs `[publish]`               | differs; ide or sata             |
//! | guest agent | `hw_qemu_guest_agent` vs the disk record   | claims a missing agent, or not   |
//! | boot test   | the local disk's `*.boot-test.json`        | failed (never run: unknown)      |
//!
//! Each check is pass, fail or unknown, with what was found and what to do. Unknown is not a
//! failure: a cloud that does not say (no quota API, a 403) gets no verdict it did not earn.
//!
//! Flavors come from `--flavors FILE` (the JSON of `openstack flavor list --long -f json`, or
//! Nova's own `{"flavors": […]}`, capitalised or lower-case keys) or, for `--flavor NAME` without
//! a file, from Nova (`GET {compute}/flavors/detail`) when the catalog lists compute. With a
//! file and no `--flavor`, every flavor is weighed and the check fails only when none fits.
//!
//! The evaluation ([`evaluate`]) is a pure function of typed inputs ([`Inputs`]); [`preflight`]
//! only gathers them. Exit 0 when nothing fails, 7 ([`PreflightFailed`]) otherwise.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::glance::Image;
use super::session::Session;
use super::{cloud, glance_name, prop};
use crate::oci::disks::{self, DiskRecord};
use crate::oci::view::View;
use crate::recipe::PublishSpec;
use crate::support::error::{BadInput, Located, read_text};
use crate::support::progress::Progress;
use crate::support::suggest::nearest;
use crate::support::units::human;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
/// Disk buses the disk is known to boot from (the boot test uses virtio; the kernel has
/// virtio-scsi).
const GOOD_BUSES: [&str; 2] = ["virtio", "scsi"];
/// Nova follows `flavors_links` at most this many pages (a loop guard, 1000 flavors a page).
const MAX_FLAVOR_PAGES: usize = 100;

#[derive(Debug, Clone)]
pub struct Options {
    /// The store.
    pub output: PathBuf,
    /// `recipe:version`, a tag or a manifest digest.
    pub image: String,
    /// `--cloud` (else `OS_CLOUD`, else `OS_*`).
    pub cloud: Option<String>,
    /// The flavor to check (name or id).
    pub flavor: Option<String>,
    /// `openstack flavor list --long -f json` output.
    pub flavors: Option<PathBuf>,
    /// Bound on each answer from the cloud.
    pub timeout: Duration,
    pub quiet: bool,
}

/// A check's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Pass,
    Fail,
    /// The cloud did not say (or strata could not ask): not a failure.
    Unknown,
}

/// One line of the checklist.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Check {
    /// Stable id: `image`, `flavor-disk`, `flavor-ram`, `flavors`, `quota`, `store`,
    /// `disk-format`, `firmware`, `disk-bus`, `guest-agent`, `boot-test`.
    pub id: String,
    /// For people: `flavor m1.small: disk`.
    pub title: String,
    pub verdict: Verdict,
    /// What was found.
    pub found: String,
    /// What to do (a failure, an unknown), or a note worth knowing (a pass).
    pub advice: Option<String>,
}

impl Check {
    fn new(
        id: &str,
        title: impl Into<String>,
        verdict: Verdict,
        found: impl Into<String>,
    ) -> Check {
        Check {
            id: id.into(),
            title: title.into(),
            verdict,
            found: found.into(),
            advice: None,
        }
    }

    fn pass(id: &str, title: impl Into<String>, found: impl Into<String>) -> Check {
        Check::new(id, title, Verdict::Pass, found)
    }

    fn fail(id: &str, title: impl Into<String>, found: impl Into<String>) -> Check {
        Check::new(id, title, Verdict::Fail, found)
    }

    fn unknown(id: &str, title: impl Into<String>, found: impl Into<String>) -> Check {
        Check::new(id, title, Verdict::Unknown, found)
    }

    fn advice(mut self, a: impl Into<String>) -> Check {
        self.advice = Some(a.into());
        self
    }
}

/// A flavor, from either key style.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Flavor {
    pub id: Option<String>,
    pub name: String,
    pub ram_mib: u64,
    /// Root disk, GiB; 0 = the server boots from a volume.
    pub disk_gib: u64,
    pub vcpus: Option<u64>,
    pub ephemeral_gib: Option<u64>,
    pub is_public: Option<bool>,
    /// Extra specs: an object (openstackclient ≥ 5, Nova ≥ 2.61) or the older `k='v', …` text.
    pub properties: Option<Value>,
}

/// One flavor as `openstack flavor list --long -f json` or Nova's `/flavors/detail` writes it.
/// Unknown keys (`Swap`, `RXTX Factor`, `links`, …) are ignored, as openstacksdk does.
#[derive(Debug, Deserialize)]
struct RawFlavor {
    #[serde(default, alias = "ID")]
    id: Option<Value>,
    #[serde(alias = "Name")]
    name: String,
    #[serde(alias = "RAM")]
    ram: u64,
    #[serde(alias = "Disk")]
    disk: u64,
    #[serde(default, alias = "VCPUs")]
    vcpus: Option<u64>,
    #[serde(default, alias = "Ephemeral", alias = "OS-FLV-EXT-DATA:ephemeral")]
    ephemeral: Option<u64>,
    #[serde(default, alias = "Is Public", alias = "os-flavor-access:is_public")]
    is_public: Option<bool>,
    #[serde(default, alias = "Properties", alias = "extra_specs")]
    properties: Option<Value>,
}

impl From<RawFlavor> for Flavor {
    fn from(r: RawFlavor) -> Flavor {
        Flavor {
            id: r.id.map(|v| match v {
                Value::String(s) => s,
                other => other.to_string(),
            }),
            name: r.name,
            ram_mib: r.ram,
            disk_gib: r.disk,
            vcpus: r.vcpus,
            ephemeral_gib: r.ephemeral,
            is_public: r.is_public,
            properties: r.properties.filter(|p| !p.is_null()),
        }
    }
}

/// Parses a flavors file: a list (`openstack flavor list -f json`), Nova's `{"flavors": […]}`,
/// or one flavor (`openstack flavor show -f json`). Errors name the file, the line (for JSON
/// syntax) or the entry, and the key.
pub fn parse_flavors(src: &str, file: &Path) -> Result<Vec<Flavor>> {
    let v: Value = serde_json::from_str(src).map_err(|e| Located {
        file: file.to_path_buf(),
        line: e.line(),
        column: e.column(),
        key: String::new(),
        message: format!("not JSON: {e}"),
        hint: Some("give the output of `openstack flavor list --long -f json`".into()),
    })?;
    let entries = match v {
        Value::Array(a) => a,
        Value::Object(mut o) if o.contains_key("flavors") => match o.remove("flavors") {
            Some(Value::Array(a)) => a,
            _ => crate::bad!("{}: \"flavors\" is not a list", file.display()),
        },
        Value::Object(o) => vec![Value::Object(o)],
        _ => crate::bad!(
            "{}: expected a list of flavors (`openstack flavor list --long -f json`)",
            file.display()
        ),
    };
    if entries.is_empty() {
        crate::bad!(
            "{}: the list of flavors is empty (`openstack flavor list` shows only public \
             flavors by default: try `--all`)",
            file.display()
        );
    }
    entries
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let name = ["Name", "name"]
                .iter()
                .find_map(|k| e.get(*k).and_then(Value::as_str))
                .map(|n| format!(" ({n:?})"))
                .unwrap_or_default();
            serde_json::from_value::<RawFlavor>(e)
                .map(Flavor::from)
                .map_err(|err| {
                    BadInput(format!(
                        "{}: flavor {}{name}: {err} (keys as `openstack flavor list --long -f \
                         json` writes them — Name, RAM, Disk — or as Nova's API does — name, \
                         ram, disk)",
                        file.display(),
                        i + 1
                    ))
                    .into()
                })
        })
        .collect()
}

/// The flavor named (or with the id) `wanted`; else bad input listing the nearest names.
pub fn pick_flavor(flavors: &[Flavor], wanted: &str, source: &str) -> Result<Flavor> {
    if let Some(f) = flavors
        .iter()
        .find(|f| f.name == wanted)
        .or_else(|| flavors.iter().find(|f| f.id.as_deref() == Some(wanted)))
    {
        return Ok(f.clone());
    }
    let names: Vec<&str> = flavors.iter().map(|f| f.name.as_str()).collect();
    let near = nearest_names(wanted, &names, 3);
    let hint = if near.is_empty() {
        String::new()
    } else {
        format!(" Nearest: {}.", near.join(", "))
    };
    let shown: Vec<&str> = names.iter().take(30).copied().collect();
    let more = if names.len() > shown.len() {
        format!(" and {} more", names.len() - shown.len())
    } else {
        String::new()
    };
    Err(BadInput(format!(
        "no flavor {wanted:?} in {source}.{hint} Flavors there: {}{more}",
        shown.join(", ")
    ))
    .into())
}

/// Up to `n` candidates close to `word`, closest first.
fn nearest_names<'a>(word: &str, names: &[&'a str], n: usize) -> Vec<&'a str> {
    let mut left = names.to_vec();
    let mut out = vec![];
    while out.len() < n {
        match nearest(word, &left) {
            Some(b) => {
                out.push(b);
                left.retain(|x| *x != b);
            }
            None => break,
        }
    }
    out
}

/// An answer from an API the deployment may not enable.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Got(Value),
    /// 404: the API is not there.
    NotFound,
    /// Any other error (a 403, a timeout): the reason.
    Failed(String),
}

/// Which flavors to weigh.
#[derive(Debug, Clone, PartialEq)]
pub enum Flavors {
    /// No flavor given.
    None,
    /// `--flavor NAME`.
    One(Flavor),
    /// Every flavor of `--flavors FILE`.
    All(Vec<Flavor>),
}

/// Everything the checks look at, gathered by [`preflight`] (or written by a test).
#[derive(Debug, Clone)]
pub struct Inputs {
    /// The store's name of the image (`hadoop-lab:3.3.6`).
    pub image: String,
    pub manifest: String,
    pub cloud: String,
    pub spec: PublishSpec,
    /// The local disk's record, when the disk was made.
    pub disk: Option<DiskRecord>,
    /// The local disk's boot test for this manifest (None: never run).
    pub boot_test: Option<bool>,
    /// Glance images whose `strata_image_digest` is the manifest (hidden ones included).
    pub found: Vec<Image>,
    /// The project the token is scoped to.
    pub project_id: Option<String>,
    /// Visible images with the chosen image's name (what `--image NAME` would pick from).
    pub same_name: Vec<Image>,
    pub flavors: Flavors,
    /// `/v2/info/usage`.
    pub usage: Answer,
    /// `/v2/info/stores`.
    pub stores: Answer,
    /// `/v2/schemas/image`.
    pub schema: Answer,
}

/// How one flavor of a file fares.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct FlavorFit {
    pub flavor: Flavor,
    pub disk: Check,
    pub ram: Check,
    pub fits: bool,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct PreflightReport {
    pub image: String,
    pub manifest: String,
    pub cloud: String,
    pub image_endpoint: String,
    pub glance_name: String,
    /// The Glance image the checks are about (None: not in Glance).
    pub glance_id: Option<String>,
    /// Where the flavors came from (a file, Nova), if any.
    pub flavor_source: Option<String>,
    pub checks: Vec<Check>,
    /// With `--flavors FILE` and no `--flavor`: each flavor's fit.
    pub flavors: Vec<FlavorFit>,
    pub passed: usize,
    pub failed: usize,
    pub unknown: usize,
}

impl PreflightReport {
    /// Err([`PreflightFailed`]) when a check failed.
    pub fn verdict(&self) -> Result<()> {
        let failed: Vec<String> = self
            .checks
            .iter()
            .filter(|c| c.verdict == Verdict::Fail)
            .map(|c| c.title.clone())
            .collect();
        if failed.is_empty() {
            Ok(())
        } else {
            Err(PreflightFailed {
                image: self.image.clone(),
                cloud: self.cloud.clone(),
                failed,
            }
            .into())
        }
    }
}

/// A launch check failed (exit 7).
#[derive(Debug, thiserror::Error)]
#[error("preflight of {image} on cloud {cloud}: {} check(s) failed: {}", failed.len(), failed.join(", "))]
pub struct PreflightFailed {
    pub image: String,
    pub cloud: String,
    pub failed: Vec<String>,
}

/// Runs the checklist: reads the store and the flavors file (bad input before any network),
/// logs in, asks Glance (and Nova for a named flavor without a file), evaluates.
pub fn preflight(opts: &Options) -> Result<PreflightReport> {
    let progress = Progress::new(opts.quiet);
    let view = View::open(&opts.output)?;
    let (name, desc) = view.find(&opts.image)?;
    let manifest = desc.digest().clone();
    let spec = view
        .record
        .settings_of(&name)
        .map(|s| s.publish.clone())
        .unwrap_or_default();
    let disk = disks::read_record(&opts.output, &name)?;
    let boot_test = disks::boot_test_passed(&opts.output, &name, &manifest);

    let mut flavor_source = None;
    let mut flavors = match &opts.flavors {
        Some(file) => {
            let src = read_text(file, "flavors file")?;
            let all = parse_flavors(&src, file)?;
            flavor_source = Some(file.display().to_string());
            match &opts.flavor {
                Some(w) => Flavors::One(pick_flavor(&all, w, &file.display().to_string())?),
                None => Flavors::All(all),
            }
        }
        None => Flavors::None,
    };

    let cloud = cloud::resolve(opts.cloud.as_deref())?;
    let task = progress.task(format!("cloud {}: logging in", cloud.name), None);
    let session = Session::open(cloud, opts.timeout, &progress)?;
    task.finish(format!("image service at {}", session.image_url));

    if let (Some(w), None) = (&opts.flavor, &opts.flavors) {
        let Some(compute) = session.compute_url.clone() else {
            crate::bad!(
                "flavor {w:?}: the catalog of cloud {:?} has no compute service to ask; pass \
                 --flavors FILE (the output of `openstack flavor list --long -f json`)",
                session.cloud.name
            );
        };
        let all = nova_flavors(&session, &compute)?;
        let source = format!("Nova at {compute}");
        flavors = Flavors::One(pick_flavor(&all, w, &source)?);
        flavor_source = Some(source);
    }

    let found = session
        .list_images(&[(prop::IMAGE_DIGEST, manifest.as_ref())], true)
        .with_context(|| format!("looking up {name} in Glance by {}", prop::IMAGE_DIGEST))?;
    let chosen = choose(&found, session.project_id.as_deref());
    let same_name = match chosen.and_then(|i| i.name.clone()) {
        Some(n) => session
            .list_images(&[("name", n.as_str())], false)
            .with_context(|| format!("listing the visible images named {n}"))?,
        None => vec![],
    };
    let optional = |path: &str| match session.get_optional(path) {
        Ok(Some(v)) => Answer::Got(v),
        Ok(None) => Answer::NotFound,
        Err(e) => Answer::Failed(format!("{e:#}")),
    };
    let inputs = Inputs {
        image: name.clone(),
        manifest: manifest.to_string(),
        cloud: session.cloud.name.clone(),
        spec,
        disk,
        boot_test,
        same_name,
        project_id: session.project_id.clone(),
        flavors,
        usage: optional("/info/usage"),
        stores: optional("/info/stores"),
        schema: optional("/schemas/image"),
        found,
    };
    let (checks, fits) = evaluate(&inputs);
    let count = |v: Verdict| checks.iter().filter(|c| c.verdict == v).count();
    Ok(PreflightReport {
        glance_name: glance_name(&name),
        glance_id: choose(&inputs.found, inputs.project_id.as_deref()).map(|i| i.id.clone()),
        image: name,
        manifest: manifest.to_string(),
        cloud: session.cloud.name.clone(),
        image_endpoint: session.image_url.clone(),
        flavor_source,
        passed: count(Verdict::Pass),
        failed: count(Verdict::Fail),
        unknown: count(Verdict::Unknown),
        checks,
        flavors: fits,
    })
}

/// Every flavor Nova shows this project (`/flavors/detail`, following `flavors_links`).
fn nova_flavors(session: &Session, compute: &str) -> Result<Vec<Flavor>> {
    let mut url = format!("{compute}/flavors/detail");
    let mut out = vec![];
    for _ in 0..MAX_FLAVOR_PAGES {
        let r = session.retrying("GET", &url, true, || {
            session.authed(session.client().get(&url))
        })?;
        let page: Value = r
            .json()
            .with_context(|| format!("reading the flavors from {url}"))?;
        let list = page
            .get("flavors")
            .and_then(Value::as_array)
            .with_context(|| format!("{url} answered without a \"flavors\" list"))?;
        for f in list {
            let raw: RawFlavor = serde_json::from_value(f.clone())
                .with_context(|| format!("reading a flavor of {url}: {f}"))?;
            out.push(raw.into());
        }
        let next = page
            .get("flavors_links")
            .and_then(Value::as_array)
            .and_then(|l| {
                l.iter()
                    .find(|x| x.get("rel").and_then(Value::as_str) == Some("next"))
            })
            .and_then(|x| x.get("href").and_then(Value::as_str));
        match next {
            Some(n) if !list.is_empty() => url = n.to_owned(),
            _ => return Ok(out),
        }
    }
    anyhow::bail!("{compute}/flavors/detail: more than {MAX_FLAVOR_PAGES} pages of flavors")
}

/// The image the checks are about: active before not, visible before hidden, this project's
/// before another's, newest first.
pub fn choose<'a>(found: &'a [Image], project: Option<&str>) -> Option<&'a Image> {
    found.iter().max_by_key(|i| {
        (
            i.status == "active",
            !i.os_hidden,
            project.is_some() && i.owner.as_deref() == project,
            i.created_at.clone(),
        )
    })
}

/// All checks, in checklist order, and the per-flavor fits (with a file and no `--flavor`).
pub fn evaluate(x: &Inputs) -> (Vec<Check>, Vec<FlavorFit>) {
    let img = choose(&x.found, x.project_id.as_deref());
    let mut checks = vec![check_image(x, img)];
    let need = DiskNeed::of(img, x.disk.as_ref());
    let ram = RamNeed::of(img, &x.spec);
    let mut fits = vec![];
    match &x.flavors {
        Flavors::None => checks.push(
            Check::unknown("flavors", "flavor", "no flavor given").advice(
                "name one with --flavor NAME (asked of Nova), or weigh them all with --flavors \
                 FILE (`openstack flavor list --long -f json > flavors.json`)",
            ),
        ),
        Flavors::One(f) => {
            checks.push(check_flavor_disk(f, need, &x.image));
            checks.push(check_flavor_ram(f, ram));
        }
        Flavors::All(all) => {
            fits = all
                .iter()
                .map(|f| {
                    let disk = check_flavor_disk(f, need, &x.image);
                    let ram = check_flavor_ram(f, ram);
                    FlavorFit {
                        fits: disk.verdict != Verdict::Fail && ram.verdict != Verdict::Fail,
                        flavor: f.clone(),
                        disk,
                        ram,
                    }
                })
                .collect();
            checks.push(check_flavors(&fits, need, ram));
        }
    }
    let bytes = img
        .and_then(|i| i.size)
        .or(x.disk.as_ref().map(|d| d.bytes));
    checks.push(check_quota(&x.usage, bytes, img.is_some()));
    checks.push(check_store(&x.stores, img));
    checks.push(check_disk_format(&x.schema, img));
    checks.push(check_firmware(img, &x.spec));
    checks.push(check_disk_bus(img, &x.spec));
    checks.push(check_guest_agent(img, x.disk.as_ref()));
    checks.push(check_boot_test(x.boot_test, &x.image));
    (checks, fits)
}

const NOT_IN_GLANCE: &str = "the image is not in Glance: nothing to check";

/// The image: in Glance, `active`, not hidden; and whether `--image NAME` finds it.
pub fn check_image(x: &Inputs, img: Option<&Image>) -> Check {
    const ID: &str = "image";
    const T: &str = "image in Glance";
    let Some(img) = img else {
        return Check::fail(
            ID,
            T,
            format!(
                "no image on cloud {} has {} = {} (hidden images included)",
                x.cloud,
                prop::IMAGE_DIGEST,
                x.manifest
            ),
        )
        .advice(format!(
            "publish it: strata publish {} --cloud {}",
            x.image, x.cloud
        ));
    };
    let name = img.name.clone().unwrap_or_default();
    let what = format!("{name} ({}), {}", img.id, img.status);
    match img.status.as_str() {
        "active" => {}
        "deactivated" => {
            return Check::fail(ID, T, format!("{what}: an admin deactivated it"))
                .advice(format!("openstack image set --activate {}", img.id));
        }
        "queued" | "saving" | "uploading" | "importing" => {
            return Check::fail(ID, T, format!("{what}: its data is not (yet) there")).advice(
                format!(
                    "wait for a running publish, or publish again: strata publish {} --cloud {} \
                     (a stale queued image is deleted first)",
                    x.image, x.cloud
                ),
            );
        }
        _ => {
            return Check::fail(ID, T, format!("{what}: Nova boots only active images")).advice(
                format!(
                    "publish again: strata publish {} --cloud {}",
                    x.image, x.cloud
                ),
            );
        }
    }
    let visible: Vec<&Image> = x
        .same_name
        .iter()
        .filter(|i| i.status == "active" && !i.os_hidden)
        .collect();
    if img.os_hidden {
        let newer = visible
            .iter()
            .filter(|i| i.id != img.id)
            .max_by_key(|i| i.created_at.clone());
        let found = format!(
            "{what} but hidden (os_hidden): image lists, Horizon and `openstack server create \
             --image {name}` do not find it"
        );
        let advice = match newer {
            Some(n) => format!(
                "a newer image replaced it: {} ({}, created {}{}); launch that one, or this \
                 one by id (--image {}), or unhide it: openstack image set --unhidden {}",
                n.id,
                n.name.as_deref().unwrap_or(""),
                n.created_at,
                n.prop(prop::IMAGE)
                    .map(|i| format!(", {i}"))
                    .unwrap_or_default(),
                img.id,
                img.id
            ),
            None => format!(
                "no visible image is named {name}: launch it by id (--image {}) or unhide it: \
                 openstack image set --unhidden {}",
                img.id, img.id
            ),
        };
        return Check::fail(ID, T, found).advice(advice);
    }
    let c = Check::pass(
        ID,
        T,
        format!(
            "{what}, visible, visibility {}{}",
            img.visibility,
            img.size
                .map(|s| format!(", {}", human(s)))
                .unwrap_or_default()
        ),
    );
    if visible.len() > 1 {
        c.advice(format!(
            "{} visible images are named {name}: `--image {name}` is ambiguous (\"More than one \
             Image exists with the name\"); launch by id: --image {}",
            visible.len(),
            img.id
        ))
    } else {
        c
    }
}

/// What the flavor's root disk must hold, in GiB.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DiskNeed {
    pub gib: u64,
    /// Glance's `min_disk` (or the disk record's, before publishing).
    pub min_disk: u64,
    pub virtual_gib: u64,
}

impl DiskNeed {
    /// From the Glance image (what Nova enforces), else the local disk record.
    pub fn of(img: Option<&Image>, disk: Option<&DiskRecord>) -> Option<DiskNeed> {
        let min_disk = img
            .and_then(|i| i.min_disk)
            .filter(|m| *m > 0)
            .or(disk.map(|d| d.min_disk_gib));
        let virt = img
            .and_then(|i| i.virtual_size)
            .or(disk.map(|d| d.virtual_size));
        if min_disk.is_none() && virt.is_none() {
            return None;
        }
        let min_disk = min_disk.unwrap_or(0);
        let virtual_gib = virt.unwrap_or(0).div_ceil(GIB);
        Some(DiskNeed {
            gib: min_disk.max(virtual_gib),
            min_disk,
            virtual_gib,
        })
    }
}

/// The flavor's root disk against the image's `min_disk` and virtual size.
pub fn check_flavor_disk(f: &Flavor, need: Option<DiskNeed>, image: &str) -> Check {
    const ID: &str = "flavor-disk";
    let t = format!("flavor {}: disk", f.name);
    let Some(need) = need else {
        return Check::unknown(
            ID,
            t,
            "neither Glance nor the store knows the disk's size".to_string(),
        )
        .advice(format!("make the disk: strata disk {image}"));
    };
    let what = format!(
        "min_disk {} GiB, virtual size {} GiB",
        need.min_disk, need.virtual_gib
    );
    if f.disk_gib == 0 {
        return Check::pass(
            ID,
            t,
            format!("disk 0: the flavor boots from a volume (image needs {what})"),
        )
        .advice(format!(
            "create the server on a volume of at least {} GiB: openstack server create --flavor \
             {} --image IMAGE --boot-from-volume {} … (Nova refuses an image-backed boot on a \
             disk-0 flavor to non-admins)",
            need.gib, f.name, need.gib
        ));
    }
    if f.disk_gib >= need.gib {
        let c = Check::pass(ID, t, format!("disk {} GiB ≥ {what}", f.disk_gib));
        if f.disk_gib > need.gib {
            return c.advice(format!(
                "the root file system grows to {} GiB at first boot",
                f.disk_gib
            ));
        }
        return c;
    }
    Check::fail(ID, t, format!("disk {} GiB < {what}", f.disk_gib)).advice(format!(
        "Nova refuses it (\"Flavor's disk is too small for requested image\"): pick a flavor \
         with disk ≥ {} GiB (openstack flavor list --min-disk {}), or boot from a volume of at \
         least {} GiB",
        need.gib, need.gib, need.gib
    ))
}

/// What the flavor's RAM must be, MiB: Glance's `min_ram` (Nova enforces it) and the recipe's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RamNeed {
    pub glance_mib: Option<u64>,
    pub recipe_mib: Option<u64>,
}

impl RamNeed {
    pub fn of(img: Option<&Image>, spec: &PublishSpec) -> RamNeed {
        RamNeed {
            glance_mib: img.and_then(|i| i.min_ram),
            recipe_mib: spec.min_ram.map(|s| s.0.div_ceil(MIB)),
        }
    }

    fn mib(&self) -> u64 {
        self.glance_mib
            .unwrap_or(0)
            .max(self.recipe_mib.unwrap_or(0))
    }
}

/// The flavor's RAM against `min_ram`.
pub fn check_flavor_ram(f: &Flavor, need: RamNeed) -> Check {
    const ID: &str = "flavor-ram";
    let t = format!("flavor {}: RAM", f.name);
    let mib = need.mib();
    let of = match (need.glance_mib, need.recipe_mib) {
        (Some(g), Some(r)) if g != r => format!("min_ram {g} MiB in Glance, {r} MiB in the recipe"),
        (Some(g), _) if g > 0 => format!("min_ram {g} MiB"),
        (_, Some(r)) => format!("min_ram {r} MiB (the recipe's)"),
        _ => "no min_ram".into(),
    };
    if f.ram_mib >= mib {
        return Check::pass(ID, t, format!("{} MiB ≥ {of}", f.ram_mib));
    }
    let advice = if need.glance_mib.unwrap_or(0) > f.ram_mib {
        format!(
            "Nova refuses it (\"Flavor's memory is too small for requested image\"): pick a \
             flavor with RAM ≥ {mib} MiB (openstack flavor list --min-ram {mib})"
        )
    } else {
        format!(
            "Nova would start it, but the recipe says a node needs {mib} MiB (a Hadoop node \
             with less swaps or is killed): pick a flavor with RAM ≥ {mib} MiB"
        )
    };
    Check::fail(ID, t, format!("{} MiB < {of}", f.ram_mib)).advice(advice)
}

/// With a flavors file and no `--flavor`: passes when at least one flavor fits.
pub fn check_flavors(fits: &[FlavorFit], need: Option<DiskNeed>, ram: RamNeed) -> Check {
    const ID: &str = "flavors";
    let ok: Vec<&str> = fits
        .iter()
        .filter(|f| f.fits)
        .map(|f| f.flavor.name.as_str())
        .collect();
    let t = "flavors";
    if !ok.is_empty() {
        return Check::pass(
            ID,
            t,
            format!(
                "{} of {} flavors fit: {}",
                ok.len(),
                fits.len(),
                ok.join(", ")
            ),
        );
    }
    let unknown = fits
        .iter()
        .any(|f| f.disk.verdict == Verdict::Unknown || f.ram.verdict == Verdict::Unknown);
    if unknown && need.is_none() {
        return Check::unknown(ID, t, "the disk's size is not known").advice(
            fits.first()
                .and_then(|f| f.disk.advice.clone())
                .unwrap_or_default(),
        );
    }
    Check::fail(ID, t, format!("none of {} flavors fits", fits.len())).advice(format!(
        "the image needs a root disk of {} GiB (or a volume) and {} MiB of RAM: ask for such a \
         flavor, or use --flavors with `openstack flavor list --all --long -f json`",
        need.map(|n| n.gib.to_string()).unwrap_or("?".into()),
        ram.mib()
    ))
}

/// Whether the cloud reports an image quota, and whether the image fits in it.
pub fn check_quota(usage: &Answer, bytes: Option<u64>, in_glance: bool) -> Check {
    const ID: &str = "quota";
    const T: &str = "image quota";
    let no_quota = "ask the cloud's admins for the project's image quota (Keystone unified limits: \
                    openstack limit list --service glance)";
    let v = match usage {
        Answer::Got(v) => v,
        Answer::NotFound => {
            return Check::unknown(
                ID,
                T,
                "the cloud has no /v2/info/usage (Glance before Yoga)",
            )
            .advice(no_quota);
        }
        Answer::Failed(e) => {
            return Check::unknown(ID, T, format!("could not read /v2/info/usage: {e}"))
                .advice(no_quota);
        }
    };
    let u = v.get("usage").unwrap_or(v);
    let pair = |k: &str| -> Option<(i64, i64)> {
        let e = u.get(k)?;
        Some((e.get("usage")?.as_i64()?, e.get("limit")?.as_i64()?))
    };
    let Some((used, limit)) = pair("image_size_total") else {
        return Check::unknown(
            ID,
            T,
            "the cloud reports no image quota (/v2/info/usage is empty: Keystone limits are off)",
        )
        .advice(no_quota);
    };
    if limit < 0 {
        return Check::pass(ID, T, format!("{used} MiB used, no limit"));
    }
    let left = limit - used;
    let size_mib = bytes.map(|b| b.div_ceil(MIB) as i64);
    if in_glance {
        if used > limit {
            return Check::fail(
                ID,
                T,
                format!("{used} MiB used of {limit} MiB: over the quota"),
            )
            .advice(
                "snapshots of servers and new publishes will be refused (413): hide and delete \
                 old images (strata publish --prune) or ask for a larger image_size_total",
            );
        }
        let c = Check::pass(
            ID,
            T,
            format!("{used} of {limit} MiB used (this image counted), {left} MiB left"),
        );
        return match size_mib {
            Some(s) if s > left => c.advice(format!(
                "a snapshot of a server from this image ({s} MiB or more) would not fit"
            )),
            _ => c,
        };
    }
    let Some(size) = size_mib else {
        return Check::unknown(
            ID,
            T,
            format!("{used} of {limit} MiB used; the image's size is not known"),
        );
    };
    if let Some((count, count_limit)) = pair("image_count_total")
        && count_limit >= 0
        && count >= count_limit
    {
        return Check::fail(
            ID,
            T,
            format!("{count} of {count_limit} images: no room for one more"),
        )
        .advice(
            "delete old images (strata publish --prune) or ask for a larger image_count_total",
        );
    }
    if size <= left {
        Check::pass(
            ID,
            T,
            format!("publishing needs {size} MiB; {left} of {limit} MiB left"),
        )
    } else {
        Check::fail(
            ID,
            T,
            format!("publishing needs {size} MiB but only {left} of {limit} MiB are left"),
        )
        .advice(
            "Glance will refuse the upload (413): hide and delete old images (strata publish \
             --prune) or ask for a larger image_size_total",
        )
    }
}

/// The stores: 404 means a single-store cloud (a pass); a multi-store cloud must still hold
/// the image's store, and a new publish needs a writable default.
pub fn check_store(stores: &Answer, img: Option<&Image>) -> Check {
    const ID: &str = "store";
    const T: &str = "store";
    let v = match stores {
        Answer::NotFound => {
            return Check::pass(
                ID,
                T,
                "single-store cloud (/v2/info/stores is 404): images live in its one store",
            );
        }
        Answer::Failed(e) => {
            return Check::unknown(ID, T, format!("could not read /v2/info/stores: {e}"));
        }
        Answer::Got(v) => v,
    };
    let list: Vec<&Value> = v
        .get("stores")
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let ids: Vec<&str> = list
        .iter()
        .filter_map(|s| s.get("id").and_then(Value::as_str))
        .collect();
    if ids.is_empty() {
        return Check::unknown(ID, T, "/v2/info/stores lists no store");
    }
    let flag = |s: &Value, k: &str| {
        matches!(s.get(k), Some(Value::String(x)) if x == "true")
            || s.get(k) == Some(&Value::Bool(true))
    };
    let default = list
        .iter()
        .find(|s| flag(s, "default"))
        .and_then(|s| s.get("id").and_then(Value::as_str));
    if let Some(img) = img
        && let Some(held) = img.prop("stores")
    {
        let held: Vec<&str> = held.split(',').map(str::trim).collect();
        let gone: Vec<&str> = held.iter().copied().filter(|s| !ids.contains(s)).collect();
        if gone.len() == held.len() {
            return Check::fail(
                ID,
                T,
                format!(
                    "the image's data is in {} which the cloud no longer lists (stores: {})",
                    held.join(", "),
                    ids.join(", ")
                ),
            )
            .advice("publish it again; ask the admins what became of the store");
        }
        return Check::pass(
            ID,
            T,
            format!(
                "the image's data is in {} (cloud stores: {})",
                held.join(", "),
                ids.join(", ")
            ),
        );
    }
    match default {
        Some(d) => {
            let ro = list
                .iter()
                .any(|s| s.get("id").and_then(Value::as_str) == Some(d) && flag(s, "read-only"));
            if ro && img.is_none() {
                Check::fail(
                    ID,
                    T,
                    format!("the default store {d} is read-only: a publish cannot write to it"),
                )
                .advice("ask the admins for a writable default store")
            } else {
                Check::pass(ID, T, format!("stores {}, default {d}", ids.join(", ")))
            }
        }
        None => Check::pass(
            ID,
            T,
            format!("stores {} (none marked default)", ids.join(", ")),
        ),
    }
}

/// qcow2 among the disk formats the cloud accepts (`/v2/schemas/image`).
pub fn check_disk_format(schema: &Answer, img: Option<&Image>) -> Check {
    const ID: &str = "disk-format";
    const T: &str = "disk format";
    let held = img.and_then(|i| i.disk_format.clone());
    if let Some(f) = &held
        && f != "qcow2"
    {
        return Check::pass(
            ID,
            T,
            format!("Glance holds it as {f}: the cloud converted the qcow2 on import"),
        );
    }
    let v = match schema {
        Answer::Got(v) => v,
        Answer::NotFound => {
            return Check::unknown(ID, T, "the cloud has no /v2/schemas/image");
        }
        Answer::Failed(e) => {
            return Check::unknown(ID, T, format!("could not read /v2/schemas/image: {e}"));
        }
    };
    let Some(formats) = v
        .pointer("/properties/disk_format/enum")
        .and_then(Value::as_array)
    else {
        return Check::unknown(
            ID,
            T,
            "/v2/schemas/image does not list the disk formats (properties.disk_format.enum)",
        );
    };
    let formats: Vec<&str> = formats.iter().filter_map(Value::as_str).collect();
    if formats.contains(&"qcow2") {
        Check::pass(ID, T, format!("qcow2 is accepted ({})", formats.join(", ")))
    } else {
        Check::fail(
            ID,
            T,
            format!("the cloud accepts {}, not qcow2", formats.join(", ")),
        )
        .advice(
            "strata publishes qcow2: ask the admins to add qcow2 to [image_format] disk_formats, \
             or convert (qemu-img convert -O raw) and upload by hand",
        )
    }
}

/// `hw_firmware_type`: uefi only when the recipe asks for it (the disk boots both ways).
pub fn check_firmware(img: Option<&Image>, spec: &PublishSpec) -> Check {
    const ID: &str = "firmware";
    const T: &str = "firmware";
    let Some(img) = img else {
        return Check::unknown(ID, T, NOT_IN_GLANCE);
    };
    let fw = img.prop("hw_firmware_type");
    match (spec.uefi, fw) {
        (true, Some("uefi")) => Check::pass(
            ID,
            T,
            "hw_firmware_type=uefi, as the recipe asks (the disk also boots BIOS)",
        ),
        (false, None | Some("bios")) => Check::pass(
            ID,
            T,
            "BIOS (OpenStack's default), as the recipe asks (the disk also boots UEFI)",
        ),
        (true, None | Some("bios")) => Check::fail(
            ID,
            T,
            "the recipe asks for UEFI; the image boots BIOS (no hw_firmware_type=uefi)",
        )
        .advice(format!(
            "openstack image set --property hw_firmware_type=uefi --property \
             hw_machine_type=q35 {}",
            img.id
        )),
        (false, Some("uefi")) => Check::fail(
            ID,
            T,
            "hw_firmware_type=uefi, but the recipe asks for BIOS",
        )
        .advice(format!(
            "UEFI needs OVMF on every compute host, or the launch fails: openstack image unset \
             --property hw_firmware_type {}",
            img.id
        )),
        (_, Some(other)) => Check::fail(
            ID,
            T,
            format!("hw_firmware_type={other}: Nova knows bios and uefi"),
        )
        .advice(format!(
            "openstack image unset --property hw_firmware_type {}",
            img.id
        )),
    }
}

/// `hw_disk_bus`: the recipe's, and one the disk is known to boot from.
pub fn check_disk_bus(img: Option<&Image>, spec: &PublishSpec) -> Check {
    const ID: &str = "disk-bus";
    const T: &str = "disk bus";
    let Some(img) = img else {
        return Check::unknown(ID, T, NOT_IN_GLANCE);
    };
    let set = |b: &str| format!("openstack image set --property hw_disk_bus={b} {}", img.id);
    let bus = match img.prop("hw_disk_bus") {
        None if spec.disk_bus == "virtio" => {
            return Check::pass(
                ID,
                T,
                "hw_disk_bus not set: Nova's libvirt default, virtio, as the recipe asks",
            );
        }
        None => {
            return Check::fail(
                ID,
                T,
                format!(
                    "hw_disk_bus not set (virtio), the recipe asks {}",
                    spec.disk_bus
                ),
            )
            .advice(set(&spec.disk_bus));
        }
        Some(b) => b,
    };
    if bus != spec.disk_bus {
        return Check::fail(
            ID,
            T,
            format!("hw_disk_bus={bus}, the recipe asks {}", spec.disk_bus),
        )
        .advice(set(&spec.disk_bus));
    }
    if !GOOD_BUSES.contains(&bus) {
        return Check::fail(
            ID,
            T,
            format!("hw_disk_bus={bus}: an emulated controller the disk was not tested on"),
        )
        .advice(format!(
            "set `[publish] disk-bus = \"virtio\"` and publish again, or {}",
            set("virtio")
        ));
    }
    let c = Check::pass(ID, T, format!("hw_disk_bus={bus}, as the recipe asks"));
    if bus == "scsi" && img.prop("hw_scsi_model") != Some("virtio-scsi") {
        return c.advice(format!(
            "without hw_scsi_model=virtio-scsi Nova emulates an LSI controller: openstack image \
             set --property hw_scsi_model=virtio-scsi {}",
            img.id
        ));
    }
    c
}

/// Nova's boolean strings (oslo `bool_from_string`).
fn truthy(v: Option<&str>) -> bool {
    matches!(
        v.map(|s| s.trim().to_ascii_lowercase()).as_deref(),
        Some("yes" | "true" | "1" | "on" | "y" | "t")
    )
}

/// `hw_qemu_guest_agent` (and `os_require_quiesce`) only when the disk has the agent.
pub fn check_guest_agent(img: Option<&Image>, disk: Option<&DiskRecord>) -> Check {
    const ID: &str = "guest-agent";
    const T: &str = "guest agent";
    let Some(img) = img else {
        return Check::unknown(ID, T, NOT_IN_GLANCE);
    };
    let Some(disk) = disk else {
        return Check::unknown(
            ID,
            T,
            "no disk record in the store: whether the disk has qemu-guest-agent is not known",
        )
        .advice("make the disk: strata disk IMAGE");
    };
    let claims = truthy(img.prop("hw_qemu_guest_agent"));
    let quiesce = truthy(img.prop("os_require_quiesce"));
    match (disk.guest_agent, claims) {
        (true, true) => Check::pass(
            ID,
            T,
            format!(
                "hw_qemu_guest_agent=yes and the disk runs qemu-guest-agent{}",
                if quiesce {
                    "; snapshots are quiesced"
                } else {
                    ""
                }
            ),
        ),
        (false, false) if !quiesce => {
            Check::pass(ID, T, "no guest agent in the disk, none claimed")
        }
        (false, _) => Check::fail(
            ID,
            T,
            format!(
                "the image claims {}but the disk has no qemu-guest-agent",
                [
                    claims.then_some("hw_qemu_guest_agent=yes "),
                    quiesce.then_some("os_require_quiesce=yes "),
                ]
                .into_iter()
                .flatten()
                .collect::<String>()
            ),
        )
        .advice(format!(
            "snapshots wait for an agent that never answers (with os_require_quiesce they \
             fail): openstack image unset --property hw_qemu_guest_agent --property \
             os_require_quiesce {}",
            img.id
        )),
        (true, false) => Check::fail(
            ID,
            T,
            "the disk runs qemu-guest-agent but the image lacks hw_qemu_guest_agent=yes: Nova \
             gives it no channel",
        )
        .advice(format!(
            "snapshots of a node running jobs are not quiesced: openstack image set --property \
             hw_qemu_guest_agent=yes --property os_require_quiesce=yes {}",
            img.id
        )),
    }
}

/// The local disk's boot test for this build.
pub fn check_boot_test(passed: Option<bool>, image: &str) -> Check {
    const ID: &str = "boot-test";
    const T: &str = "boot test";
    match passed {
        Some(true) => Check::pass(
            ID,
            T,
            "the disk of this build booted on BIOS and UEFI and passed",
        ),
        Some(false) => {
            Check::fail(ID, T, "the disk of this build failed its boot test").advice(format!(
                "read the console logs beside the disk (DIR/disks/), fix, and run strata disk \
                 {image} --boot-test"
            ))
        }
        None => Check::unknown(ID, T, "not run for this build")
            .advice(format!("strata disk {image} --boot-test")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::support::units::Size;
    use serde_json::json;

    fn image(v: Value) -> Image {
        let mut base = json!({
            "id": "11111111-2222-8333-8444-555555555555",
            "name": "tiny-3.3.6",
            "status": "active",
            "visibility": "private",
            "os_hidden": false,
            "disk_format": "qcow2",
            "size": 300u64 << 20,
            "virtual_size": 3u64 << 30,
            "min_disk": 3,
            "min_ram": 2048,
            "created_at": "2026-12-01T00:00:00Z",
            "owner": "p1",
            "hw_disk_bus": "virtio",
            "hw_qemu_guest_agent": "yes",
            "os_require_quiesce": "yes",
        });
        for (k, val) in v.as_object().unwrap() {
            if val.is_null() {
                base.as_object_mut().unwrap().remove(k);
            } else {
                base[k] = val.clone();
            }
        }
        serde_json::from_value(base).unwrap()
    }

    fn disk(agent: bool) -> DiskRecord {
        let d: oci_spec::image::Digest =
            "sha256:0000000000000000000000000000000000000000000000000000000000000000"
                .parse()
                .unwrap();
        DiskRecord {
            image: "tiny:3.3.6".into(),
            manifest: d.clone(),
            file: "tiny_3.3.6.qcow2".into(),
            sha256: d,
            sha512: None,
            bytes: 300 << 20,
            mtime: 0,
            virtual_size: 3 << 30,
            min_disk_gib: 3,
            os_distro: Some("debian".into()),
            os_version: Some("12".into()),
            guest_agent: agent,
        }
    }

    fn flavor(name: &str, ram: u64, disk: u64) -> Flavor {
        Flavor {
            id: Some(format!("id-{name}")),
            name: name.into(),
            ram_mib: ram,
            disk_gib: disk,
            vcpus: Some(1),
            ephemeral_gib: Some(0),
            is_public: Some(true),
            properties: None,
        }
    }

    fn spec(uefi: bool, bus: &str, min_ram: Option<u64>) -> PublishSpec {
        PublishSpec {
            uefi,
            disk_bus: bus.into(),
            min_ram: min_ram.map(|m| Size(m << 20)),
            ..PublishSpec::default()
        }
    }

    fn inputs(found: Vec<Image>) -> Inputs {
        Inputs {
            image: "tiny:3.3.6".into(),
            manifest: "sha256:ab".into(),
            cloud: "lab".into(),
            spec: spec(false, "virtio", Some(2048)),
            disk: Some(disk(true)),
            boot_test: Some(true),
            same_name: found.clone(),
            found,
            project_id: Some("p1".into()),
            flavors: Flavors::One(flavor("m1.medium", 4096, 20)),
            usage: Answer::NotFound,
            stores: Answer::NotFound,
            schema: Answer::Got(
                json!({"properties": {"disk_format": {"enum": [null, "raw", "qcow2"]}}}),
            ),
        }
    }

    fn verdicts(checks: &[Check]) -> Vec<(&str, Verdict)> {
        checks.iter().map(|c| (c.id.as_str(), c.verdict)).collect()
    }

    use Verdict::{Fail, Pass, Unknown};

    /// The openstackclient's `flavor list --long -f json` (osc ≥ 5: Properties an object; older:
    /// a `k='v'` string; Swap "" on old microversions), Nova's `/flavors/detail`, and
    /// `flavor show -f json`: one typed list.
    #[test]
    fn flavors_parse_in_both_key_styles() {
        let osc = r#"[
          {"ID": "1", "Name": "m1.tiny", "RAM": 512, "Disk": 1, "Ephemeral": 0, "VCPUs": 1,
           "Is Public": true, "Swap": "", "RXTX Factor": 1.0, "Properties": {"hw:cpu_policy": "shared"}},
          {"ID": "2", "Name": "m1.small", "RAM": 2048, "Disk": 20, "Ephemeral": 0, "VCPUs": 1,
           "Is Public": true, "Swap": 0, "RXTX Factor": 1.0, "Properties": "hw:cpu_policy='shared'"},
          {"ID": "v1", "Name": "vol.large", "RAM": 8192, "Disk": 0, "Ephemeral": 0, "VCPUs": 4,
           "Is Public": false, "Swap": 0, "RXTX Factor": 1.0, "Properties": {}}
        ]"#;
        let nova = r#"{"flavors": [
          {"id": "1", "name": "m1.tiny", "ram": 512, "disk": 1, "vcpus": 1, "swap": "",
           "OS-FLV-EXT-DATA:ephemeral": 0, "os-flavor-access:is_public": true,
           "rxtx_factor": 1.0, "links": [], "extra_specs": {"hw:cpu_policy": "shared"}}
        ], "flavors_links": []}"#;
        let show = r#"{"id": 7, "name": "m1.tiny", "ram": 512, "disk": 1, "vcpus": 1,
          "OS-FLV-EXT-DATA:ephemeral": 0, "os-flavor-access:is_public": true,
          "properties": {"hw:cpu_policy": "shared"}, "description": null}"#;
        let p = Path::new("f.json");
        let a = parse_flavors(osc, p).unwrap();
        assert_eq!(a.len(), 3);
        assert_eq!(
            a[0],
            Flavor {
                id: Some("1".into()),
                name: "m1.tiny".into(),
                ram_mib: 512,
                disk_gib: 1,
                vcpus: Some(1),
                ephemeral_gib: Some(0),
                is_public: Some(true),
                properties: Some(json!({"hw:cpu_policy": "shared"})),
            }
        );
        assert_eq!(a[1].properties, Some(json!("hw:cpu_policy='shared'")));
        assert_eq!((a[2].disk_gib, a[2].is_public), (0, Some(false)));
        let b = parse_flavors(nova, p).unwrap();
        assert_eq!(b, vec![a[0].clone()]);
        let c = parse_flavors(show, p).unwrap();
        assert_eq!(c[0].id.as_deref(), Some("7"));
        assert_eq!((c[0].ram_mib, c[0].disk_gib), (512, 1));
    }

    #[test]
    fn bad_flavor_files_are_bad_input_naming_file_entry_and_key() {
        let p = Path::new("flavors.json");
        for (src, want) in [
            ("[{\"Name\": \"a\", \"RAM\": 1,", "flavors.json:1:"),
            (
                r#"[{"Name": "m1.x", "Disk": 1}]"#,
                "flavor 1 (\"m1.x\"): missing field `ram`",
            ),
            (
                r#"[{"Name": "a", "RAM": 1, "Disk": 1}, {"Name": "b", "RAM": "lots", "Disk": 1}]"#,
                "flavor 2 (\"b\"): invalid type: string \"lots\"",
            ),
            ("[]", "empty"),
            ("42", "expected a list"),
        ] {
            let e = parse_flavors(src, p).unwrap_err();
            assert_eq!(crate::cli::exit::code(&e), 2, "{src}: {e:#}");
            assert!(format!("{e:#}").contains(want), "{src}: {e:#}");
        }
    }

    #[test]
    fn a_missing_flavor_is_bad_input_with_the_nearest_names() {
        let all = vec![
            flavor("m1.small", 2048, 20),
            flavor("m1.smaller", 1024, 10),
            flavor("m1.large", 8192, 80),
            flavor("x9.huge", 65536, 500),
        ];
        let e = pick_flavor(&all, "m1.smal", "flavors.json").unwrap_err();
        assert_eq!(crate::cli::exit::code(&e), 2);
        let m = e.to_string();
        assert!(
            m.contains("no flavor \"m1.smal\" in flavors.json. Nearest: m1.small, m1.smaller"),
            "{m}"
        );
        assert!(m.contains("x9.huge"), "all names listed: {m}");
        assert_eq!(pick_flavor(&all, "m1.large", "f").unwrap().disk_gib, 80);
        assert_eq!(
            pick_flavor(&all, "id-x9.huge", "f").unwrap().name,
            "x9.huge"
        );
    }

    #[test]
    fn image_check_pass_fail_and_the_replacement_of_a_hidden_image() {
        let hidden = image(json!({"os_hidden": true}));
        let newer = image(
            json!({"id": "newer-id", "created_at": "2026-12-24T00:00:00Z",
            "strata_image": "tiny:3.3.6"}),
        );
        let twin = image(json!({"id": "twin-id", "created_at": "2026-11-01T00:00:00Z"}));
        // (what, found by digest, visible with its name, verdict, text)
        type Case = (&'static str, Vec<Image>, Vec<Image>, Verdict, &'static str);
        let cases: Vec<Case> = vec![
            (
                "absent",
                vec![],
                vec![],
                Fail,
                "strata publish tiny:3.3.6 --cloud lab",
            ),
            (
                "active",
                vec![image(json!({}))],
                vec![image(json!({}))],
                Pass,
                "visible",
            ),
            (
                "queued",
                vec![image(json!({"status": "queued"}))],
                vec![],
                Fail,
                "publish again",
            ),
            (
                "killed",
                vec![image(json!({"status": "killed"}))],
                vec![],
                Fail,
                "only active",
            ),
            (
                "deactivated",
                vec![image(json!({"status": "deactivated"}))],
                vec![],
                Fail,
                "--activate",
            ),
            (
                "hidden",
                vec![hidden.clone()],
                vec![newer.clone()],
                Fail,
                "replaced it: newer-id",
            ),
            (
                "hidden alone",
                vec![hidden.clone()],
                vec![],
                Fail,
                "--unhidden",
            ),
            (
                "ambiguous name",
                vec![image(json!({}))],
                vec![image(json!({})), twin],
                Pass,
                "ambiguous",
            ),
            // The active one wins over a queued leftover of another publish.
            (
                "best of two",
                vec![
                    image(json!({"id": "q", "status": "queued"})),
                    image(json!({})),
                ],
                vec![],
                Pass,
                "visible",
            ),
        ];
        for (what, found, same, want, text) in cases {
            let mut x = inputs(found);
            x.same_name = same;
            let img = choose(&x.found, Some("p1"));
            let c = check_image(&x, img);
            assert_eq!(c.verdict, want, "{what}: {c:?}");
            let all = format!("{} {}", c.found, c.advice.clone().unwrap_or_default());
            assert!(all.contains(text), "{what}: {all}");
        }
    }

    #[test]
    fn flavor_disk_and_ram_checks() {
        let img = image(json!({}));
        let need = DiskNeed::of(Some(&img), None);
        assert_eq!(need.map(|n| n.gib), Some(3));
        // A Glance image without min_disk falls back to the disk record, then the virtual size.
        let bare = image(json!({"min_disk": 0, "virtual_size": null}));
        assert_eq!(DiskNeed::of(Some(&bare), Some(&disk(true))).unwrap().gib, 3);
        assert_eq!(DiskNeed::of(None, None), None);
        let big = image(json!({"min_disk": 1, "virtual_size": (5u64 << 30) + 1}));
        assert_eq!(
            DiskNeed::of(Some(&big), None).unwrap().gib,
            6,
            "virtual size rounds up"
        );
        for (f, want, text) in [
            (flavor("fits", 4096, 3), Pass, "≥"),
            (flavor("roomy", 4096, 20), Pass, "grows to 20 GiB"),
            (flavor("small", 4096, 2), Fail, "--min-disk 3"),
            (flavor("volume", 4096, 0), Pass, "--boot-from-volume 3"),
        ] {
            let c = check_flavor_disk(&f, need, "tiny:3.3.6");
            assert_eq!(c.verdict, want, "{}: {c:?}", f.name);
            assert!(
                format!("{} {:?}", c.found, c.advice).contains(text),
                "{}: {c:?}",
                f.name
            );
        }
        assert_eq!(
            check_flavor_disk(&flavor("x", 1, 1), None, "tiny:3.3.6").verdict,
            Unknown
        );
        let glance = |g: Option<u64>, r: Option<u64>| RamNeed {
            glance_mib: g,
            recipe_mib: r,
        };
        for (ram, need, want, text) in [
            (2048, glance(Some(2048), None), Pass, "≥ min_ram 2048"),
            (1024, glance(Some(2048), None), Fail, "Nova refuses"),
            (
                2048,
                glance(Some(0), Some(4096)),
                Fail,
                "recipe says a node needs 4096",
            ),
            (512, glance(None, None), Pass, "no min_ram"),
            (
                4096,
                glance(Some(1024), Some(4096)),
                Pass,
                "1024 MiB in Glance, 4096 MiB in the recipe",
            ),
        ] {
            let c = check_flavor_ram(&flavor("f", ram, 10), need);
            assert_eq!(c.verdict, want, "{ram} {need:?}: {c:?}");
            assert!(
                format!("{} {:?}", c.found, c.advice).contains(text),
                "{c:?}"
            );
        }
    }

    #[test]
    fn every_flavor_of_a_file_is_weighed_and_one_fit_is_enough() {
        let mut x = inputs(vec![image(json!({}))]);
        x.flavors = Flavors::All(vec![
            flavor("m1.tiny", 512, 1),
            flavor("m1.medium", 4096, 20),
            flavor("vol", 4096, 0),
        ]);
        let (checks, fits) = evaluate(&x);
        let fl = checks.iter().find(|c| c.id == "flavors").unwrap();
        assert_eq!(fl.verdict, Pass, "{fl:?}");
        assert!(
            fl.found.contains("2 of 3 flavors fit: m1.medium, vol"),
            "{fl:?}"
        );
        assert_eq!(
            fits.iter().map(|f| f.fits).collect::<Vec<_>>(),
            [false, true, true]
        );
        x.flavors = Flavors::All(vec![flavor("m1.tiny", 512, 1)]);
        let (checks, _) = evaluate(&x);
        let fl = checks.iter().find(|c| c.id == "flavors").unwrap();
        assert_eq!(fl.verdict, Fail, "{fl:?}");
        assert!(fl.advice.as_ref().unwrap().contains("3 GiB"), "{fl:?}");
        x.flavors = Flavors::None;
        let (checks, _) = evaluate(&x);
        assert_eq!(checks[1].verdict, Unknown);
    }

    #[test]
    fn quota_checks() {
        let usage = |size: Value, count: Value| {
            Answer::Got(json!({"usage": {"image_size_total": size, "image_count_total": count}}))
        };
        let s = |u: i64, l: i64| json!({"usage": u, "limit": l});
        let mb = 300u64 << 20;
        for (what, answer, in_glance, want, text) in [
            ("404", Answer::NotFound, true, Unknown, "no /v2/info/usage"),
            ("{}", Answer::Got(json!({})), true, Unknown, "empty"),
            (
                "usage {}",
                Answer::Got(json!({"usage": {}})),
                false,
                Unknown,
                "empty",
            ),
            (
                "403",
                Answer::Failed("403 Forbidden".into()),
                true,
                Unknown,
                "403",
            ),
            (
                "in, room",
                usage(s(500, 1000), s(2, 10)),
                true,
                Pass,
                "500 MiB left",
            ),
            (
                "in, no room for a snapshot",
                usage(s(900, 1000), s(2, 10)),
                true,
                Pass,
                "snapshot",
            ),
            (
                "in, over",
                usage(s(1100, 1000), s(2, 10)),
                true,
                Fail,
                "over the quota",
            ),
            (
                "out, fits",
                usage(s(500, 1000), s(2, 10)),
                false,
                Pass,
                "needs 300 MiB; 500",
            ),
            (
                "out, too big",
                usage(s(800, 1000), s(2, 10)),
                false,
                Fail,
                "only 200 of 1000",
            ),
            (
                "out, count",
                usage(s(0, 1000), s(10, 10)),
                false,
                Fail,
                "10 of 10 images",
            ),
            (
                "unlimited",
                usage(s(5000, -1), s(2, -1)),
                false,
                Pass,
                "no limit",
            ),
        ] {
            let c = check_quota(&answer, Some(mb), in_glance);
            assert_eq!(c.verdict, want, "{what}: {c:?}");
            assert!(
                format!("{} {:?}", c.found, c.advice).contains(text),
                "{what}: {c:?}"
            );
        }
        assert_eq!(
            check_quota(&usage(s(0, 10), s(0, 10)), None, false).verdict,
            Unknown
        );
    }

    #[test]
    fn store_checks() {
        let multi = Answer::Got(json!({"stores": [
            {"id": "fast", "default": "true"}, {"id": "cheap"}, {"id": "web", "read-only": "true"}
        ]}));
        let ro =
            Answer::Got(json!({"stores": [{"id": "web", "default": "true", "read-only": "true"}]}));
        let held = |s: &str| image(json!({"stores": s}));
        for (what, answer, img, want, text) in [
            (
                "404 = single store",
                Answer::NotFound,
                Some(image(json!({}))),
                Pass,
                "single-store",
            ),
            ("error", Answer::Failed("503".into()), None, Unknown, "503"),
            (
                "held in a known store",
                multi.clone(),
                Some(held("cheap")),
                Pass,
                "in cheap",
            ),
            (
                "held in a gone store",
                multi.clone(),
                Some(held("old")),
                Fail,
                "no longer lists",
            ),
            (
                "not published, default",
                multi.clone(),
                None,
                Pass,
                "default fast",
            ),
            ("not published, read-only", ro, None, Fail, "read-only"),
            (
                "empty",
                Answer::Got(json!({"stores": []})),
                None,
                Unknown,
                "no store",
            ),
        ] {
            let c = check_store(&answer, img.as_ref());
            assert_eq!(c.verdict, want, "{what}: {c:?}");
            assert!(c.found.contains(text), "{what}: {c:?}");
        }
    }

    #[test]
    fn disk_format_checks() {
        let schema = |e: Value| Answer::Got(json!({"properties": {"disk_format": {"enum": e}}}));
        let img = image(json!({}));
        let raw = image(json!({"disk_format": "raw"}));
        for (what, answer, img, want, text) in [
            (
                "accepted",
                schema(json!([null, "raw", "qcow2"])),
                Some(&img),
                Pass,
                "qcow2 is accepted",
            ),
            (
                "refused",
                schema(json!([null, "raw", "iso"])),
                None,
                Fail,
                "accepts raw, iso",
            ),
            (
                "converted",
                schema(json!(["raw"])),
                Some(&raw),
                Pass,
                "converted",
            ),
            (
                "no enum",
                Answer::Got(json!({"properties": {}})),
                None,
                Unknown,
                "does not list",
            ),
            ("404", Answer::NotFound, None, Unknown, "no /v2/schemas"),
            (
                "error",
                Answer::Failed("timeout".into()),
                Some(&img),
                Unknown,
                "timeout",
            ),
        ] {
            let c = check_disk_format(&answer, img);
            assert_eq!(c.verdict, want, "{what}: {c:?}");
            assert!(c.found.contains(text), "{what}: {c:?}");
        }
    }

    #[test]
    fn firmware_bus_and_agent_follow_the_recipe_and_the_disk() {
        let uefi = image(json!({"hw_firmware_type": "uefi"}));
        let bios = image(json!({}));
        let odd = image(json!({"hw_firmware_type": "coreboot"}));
        for (what, img, s, want) in [
            ("bios/bios", Some(&bios), spec(false, "virtio", None), Pass),
            ("uefi/uefi", Some(&uefi), spec(true, "virtio", None), Pass),
            (
                "recipe uefi, image bios",
                Some(&bios),
                spec(true, "virtio", None),
                Fail,
            ),
            (
                "recipe bios, image uefi",
                Some(&uefi),
                spec(false, "virtio", None),
                Fail,
            ),
            (
                "unknown firmware",
                Some(&odd),
                spec(false, "virtio", None),
                Fail,
            ),
            ("not in glance", None, spec(false, "virtio", None), Unknown),
        ] {
            assert_eq!(check_firmware(img, &s).verdict, want, "{what}");
        }
        let bus = |b: Value| image(json!({"hw_disk_bus": b}));
        for (what, img, recipe, want, text) in [
            ("virtio", Some(bus(json!("virtio"))), "virtio", Pass, ""),
            (
                "unset, default virtio",
                Some(bus(Value::Null)),
                "virtio",
                Pass,
                "",
            ),
            (
                "unset, recipe scsi",
                Some(bus(Value::Null)),
                "scsi",
                Fail,
                "hw_disk_bus=scsi",
            ),
            (
                "scsi without model",
                Some(bus(json!("scsi"))),
                "scsi",
                Pass,
                "virtio-scsi",
            ),
            (
                "mismatch",
                Some(bus(json!("scsi"))),
                "virtio",
                Fail,
                "hw_disk_bus=virtio",
            ),
            (
                "ide",
                Some(bus(json!("ide"))),
                "ide",
                Fail,
                "disk-bus = \"virtio\"",
            ),
            ("not in glance", None, "virtio", Unknown, ""),
        ] {
            let c = check_disk_bus(img.as_ref(), &spec(false, recipe, None));
            assert_eq!(c.verdict, want, "{what}: {c:?}");
            assert!(c.advice.unwrap_or_default().contains(text), "{what}");
        }
        let agent = image(json!({}));
        let none = image(json!({"hw_qemu_guest_agent": null, "os_require_quiesce": null}));
        let quiesce_only = image(json!({"hw_qemu_guest_agent": null}));
        for (what, img, d, want) in [
            ("agent, claimed", Some(&agent), Some(disk(true)), Pass),
            (
                "no agent, none claimed",
                Some(&none),
                Some(disk(false)),
                Pass,
            ),
            ("claimed, absent", Some(&agent), Some(disk(false)), Fail),
            (
                "quiesce without agent",
                Some(&quiesce_only),
                Some(disk(false)),
                Fail,
            ),
            ("agent, not claimed", Some(&none), Some(disk(true)), Fail),
            ("no disk record", Some(&agent), None, Unknown),
            ("not in glance", None, Some(disk(true)), Unknown),
        ] {
            assert_eq!(check_guest_agent(img, d.as_ref()).verdict, want, "{what}");
        }
    }

    #[test]
    fn boot_test_verdicts() {
        assert_eq!(check_boot_test(Some(true), "t:1").verdict, Pass);
        assert_eq!(check_boot_test(Some(false), "t:1").verdict, Fail);
        let c = check_boot_test(None, "t:1");
        assert_eq!(c.verdict, Unknown);
        assert_eq!(c.advice.as_deref(), Some("strata disk t:1 --boot-test"));
    }

    #[test]
    fn a_clean_image_passes_everything_and_one_failure_is_exit_7() {
        let x = inputs(vec![image(json!({}))]);
        let (checks, _) = evaluate(&x);
        assert_eq!(
            verdicts(&checks),
            [
                ("image", Pass),
                ("flavor-disk", Pass),
                ("flavor-ram", Pass),
                ("quota", Unknown),
                ("store", Pass),
                ("disk-format", Pass),
                ("firmware", Pass),
                ("disk-bus", Pass),
                ("guest-agent", Pass),
                ("boot-test", Pass),
            ]
        );
        let report = |checks: Vec<Check>| PreflightReport {
            image: x.image.clone(),
            manifest: x.manifest.clone(),
            cloud: "lab".into(),
            image_endpoint: "http://g/v2".into(),
            glance_name: "tiny-3.3.6".into(),
            glance_id: None,
            flavor_source: None,
            checks,
            flavors: vec![],
            passed: 0,
            failed: 0,
            unknown: 0,
        };
        assert!(
            report(checks.clone()).verdict().is_ok(),
            "unknown is not a failure"
        );
        let mut x = x.clone();
        x.flavors = Flavors::One(flavor("m1.tiny", 512, 1));
        let e = report(evaluate(&x).0).verdict().unwrap_err();
        assert_eq!(crate::cli::exit::code(&e), 7);
        assert!(
            e.to_string()
                .contains("2 check(s) failed: flavor m1.tiny: disk, flavor m1.tiny: RAM"),
            "{e}"
        );
    }

    #[test]
    fn before_publishing_the_flavors_are_weighed_from_the_disk_record_and_recipe() {
        let mut x = inputs(vec![]);
        x.flavors = Flavors::One(flavor("m1.small", 1024, 2));
        let (checks, _) = evaluate(&x);
        assert_eq!(
            verdicts(&checks),
            [
                ("image", Fail),
                ("flavor-disk", Fail),
                ("flavor-ram", Fail),
                ("quota", Unknown),
                ("store", Pass),
                ("disk-format", Pass),
                ("firmware", Unknown),
                ("disk-bus", Unknown),
                ("guest-agent", Unknown),
                ("boot-test", Pass),
            ]
        );
        assert!(
            checks[2].found.contains("2048 MiB (the recipe's)"),
            "{:?}",
            checks[2]
        );
    }

    #[test]
    fn the_command_line_parses() {
        use clap::Parser;
        let cli = crate::cli::Cli::try_parse_from([
            "strata",
            "preflight",
            "tiny:3.3.6",
            "--cloud",
            "lab",
            "--flavor",
            "m1.small",
            "--flavors",
            "f.json",
            "--json",
        ])
        .unwrap();
        assert!(cli.json);
        let e = crate::cli::Cli::try_parse_from(["strata", "preflight"]).unwrap_err();
        assert_eq!(e.exit_code(), 2, "the image is required");
    }
}
