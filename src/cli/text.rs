//! # Results as terminal text
//!
//! One function per command, each a pure function of the command's result (the same result
//! `--json` prints), so the dispatch only chooses between the two.

use std::fmt::Write as _;
use std::path::Path;

use crate::build::{BuildReport, Origin, PlanReport};
use crate::disk::DiskReport;
use crate::inspect::{DiffReport, ExportReport, GcReport, Inspection, LsRow, VerifyReport};
use crate::policy::Verdicts;
use crate::report::Report;
use crate::support::units::{human, percent};

/// The first 12 hex digits of a digest.
fn short(d: &str) -> &str {
    let hex = d.trim_start_matches("sha256:");
    &hex[..hex.len().min(12)]
}

fn opt_human(n: Option<u64>) -> String {
    n.map(human).unwrap_or_else(|| "-".into())
}

pub fn build(rep: &BuildReport) -> String {
    let mut s = String::new();
    for i in &rep.images {
        let key = if i.carries_private_key {
            "  [carries the cluster SSH private key]"
        } else if i.keys_at_boot {
            "  [SSH private key delivered at boot]"
        } else {
            ""
        };
        let _ = writeln!(
            s,
            "{:<28} {}  {:>10}{key}",
            i.name,
            short(&i.manifest),
            human(i.size)
        );
    }
    let mut remote: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for l in rep.layers.iter().filter(|l| l.from == Origin::Remote) {
        remote
            .entry(l.reference.as_deref().unwrap_or("?"))
            .or_default()
            .push(&l.name);
    }
    for (from, names) in &remote {
        let _ = writeln!(s, "from the remote cache {from}: {}", names.join(", "));
    }
    let from_remote = if rep.layers_remote > 0 {
        format!(", {} from a remote cache", rep.layers_remote)
    } else {
        String::new()
    };
    let _ = writeln!(
        s,
        "{} images, {} layers ({} built, {} cached{from_remote}) in {:.1}s → {}",
        rep.images.len(),
        rep.layers_total,
        rep.layers_built,
        rep.layers_cached,
        rep.seconds,
        rep.output.display()
    );
    if let Some(c) = &rep.cache_to {
        let _ = write!(
            s,
            "remote cache {}: {} layers written ({} blobs sent, {}; {} mounted), {} there already",
            c.reference,
            c.layers_pushed,
            c.blobs_uploaded,
            human(c.bytes_sent),
            c.blobs_mounted,
            c.layers_present
        );
        if let Some(b) = c.base_facts {
            let _ = write!(s, "; base facts {b}");
        }
        s.push('\n');
        if !c.skipped_private_key.is_empty() {
            let _ = writeln!(
                s,
                "not written (they hold the cluster's private key; --allow-private-key): {}",
                c.skipped_private_key.join(", ")
            );
        }
    }
    for w in &rep.cache_warnings {
        let _ = writeln!(s, "warning: {w}");
    }
    for r in &rep.repaired_blobs {
        let _ = writeln!(s, "repaired blob {r} (it was damaged in the store)");
    }
    s
}

pub fn plan(rep: &PlanReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "epoch {} (from {})", rep.epoch, rep.epoch_source);
    if !rep.base_ready {
        s.push_str(
            "base: not built yet (the first build runs mmdebstrap); keys marked * are provisional \
             and the checks that need the base's size are unknown until then\n",
        );
    }
    let _ = writeln!(
        s,
        "{:<24} {:<8} {:>10} {:>10}  used by",
        "LAYER", "STATE", "SIZE", "UNPACKED"
    );
    for l in &rep.layers {
        let state = match (l.cached, l.only_with_disks) {
            (true, _) => "cached",
            (false, true) => "--disks",
            (false, false) => "build",
        };
        let mark = if l.provisional { "*" } else { "" };
        let _ = writeln!(
            s,
            "{:<24} {:<8} {:>10} {:>10}  {} image(s){}",
            format!("{}{mark}", l.name),
            state,
            opt_human(l.size),
            opt_human(l.uncompressed_size),
            l.used_by.len(),
            l.pending
                .as_ref()
                .map(|p| format!(" (waits: {p})"))
                .unwrap_or_default()
        );
    }
    s.push('\n');
    let _ = writeln!(
        s,
        "{:<22} {:>10} {:>9} {:>9}  (estimated until built)",
        "IMAGE", "BYTES", "SHARED", "BASELINE"
    );
    for st in &rep.policy.images {
        let _ = writeln!(
            s,
            "{:<22} {:>10} {:>9} {:>9}",
            st.name,
            human(st.bytes),
            percent(st.shared_fraction),
            percent(st.baseline_fraction)
        );
    }
    if let Some(first) = rep.policy.pairs.first() {
        let same = rep
            .policy
            .pairs
            .iter()
            .all(|p| p.by_chain == first.by_chain && p.on_disk == first.on_disk);
        if same {
            let _ = writeln!(
                s,
                "every pair of images shares {} by chain, {} on disk",
                human(first.by_chain),
                human(first.on_disk)
            );
        } else {
            for p in &rep.policy.pairs {
                let _ = writeln!(
                    s,
                    "{} & {}: {} by chain, {} on disk",
                    p.a,
                    p.b,
                    human(p.by_chain),
                    human(p.on_disk)
                );
            }
        }
    }
    s.push_str(&checks(&rep.policy));
    s
}

/// Budget lines (shared by `plan` and `report`).
pub fn checks(v: &Verdicts) -> String {
    let mut s = String::new();
    if v.checks.is_empty() {
        s.push_str("no budgets set ([policy] and `budget` keys in the recipe, or --image-budget/--layer-budget/--min-shared)\n");
        return s;
    }
    let _ = writeln!(
        s,
        "{:<12} {:<24} {:>11} {:>11} {:>11}  VERDICT",
        "CHECK", "SUBJECT", "VALUE", "LIMIT", "HEADROOM"
    );
    for c in &v.checks {
        let (val, lim, head) = if c.kind == "min-shared" {
            (
                percent(c.value),
                percent(c.limit),
                format!("{:+.2}%", c.headroom * 100.0),
            )
        } else {
            let h = if c.headroom < 0.0 {
                format!("-{}", human((-c.headroom) as u64))
            } else {
                human(c.headroom as u64)
            };
            (human(c.value as u64), human(c.limit as u64), h)
        };
        let note = match (&c.waits_for, c.estimated) {
            (Some(w), _) => format!(" (waits for {w})"),
            (None, true) => " (estimate)".into(),
            _ => String::new(),
        };
        let _ = writeln!(
            s,
            "{:<12} {:<24} {:>11} {:>11} {:>11}  {}{note}",
            c.kind,
            c.subject,
            val,
            lim,
            head,
            c.verdict()
        );
    }
    let unknown = v.unknown().len();
    if unknown > 0 {
        let _ = writeln!(
            s,
            "{unknown} check(s) wait for layers not built yet: `strata build` settles them"
        );
    }
    if !v.advice.is_empty() {
        s.push_str("what to move where:\n");
        for a in &v.advice {
            let _ = writeln!(s, "  - {a}");
        }
    }
    s
}

pub fn report(reports: &Vec<Report>, html: Option<&Path>) -> String {
    let mut s = String::new();
    for r in reports {
        let floor = r.policy.min_shared;
        let _ = writeln!(s, "recipe {}", r.recipe);
        let _ = writeln!(
            s,
            "{:<22} {:>10} {:>10} {:>8} {:>9} {:>10}",
            "IMAGE", "BYTES", "STORED", "SHARED", "BASELINE", "OWN"
        );
        for (img, st) in r.images.iter().zip(&r.verdicts.images) {
            let mark = match floor {
                Some(f) if st.shared_fraction < f => " < min-shared",
                _ => "",
            };
            let _ = writeln!(
                s,
                "{:<22} {:>10} {:>10} {:>8} {:>9} {:>10}{mark}",
                img.name,
                human(img.bytes),
                human(img.stored),
                percent(st.shared_fraction),
                percent(st.baseline_fraction),
                human(st.own_bytes)
            );
        }
        s.push_str(&checks(&r.verdicts));
    }
    if let Some(file) = html {
        let _ = writeln!(s, "page: {}", file.display());
    }
    s
}

pub fn disk(rep: &DiskReport) -> String {
    let mut s = format!(
        "{} → {} ({} qcow2, {} virtual, min_disk {} GiB; root content {})\n",
        rep.image,
        rep.disk.display(),
        human(rep.qcow2_bytes),
        human(rep.virtual_size),
        rep.min_disk_gib,
        human(rep.root_used_bytes)
    );
    if let (Some(o), Some(b), Some(n)) = (&rep.overlay, &rep.base_disk, rep.overlay_bytes) {
        let _ = writeln!(
            s,
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
        let _ = writeln!(
            s,
            "boot test {}: {} {secs}",
            b.firmware,
            if b.passed { "passed" } else { "FAILED" }
        );
    }
    s
}

pub fn ls(rows: &[LsRow]) -> String {
    let mut s = format!(
        "{:<26} {:<12} {:>10} {:>10} {:>6}  JDK\n",
        "IMAGE", "DIGEST", "SIZE", "UNPACKED", "LAYERS"
    );
    for r in rows {
        let key = if r.carries_private_key {
            "  (carries private key)"
        } else if r.keys_at_boot {
            "  (key at boot)"
        } else {
            ""
        };
        let _ = writeln!(
            s,
            "{:<26} {:<12} {:>10} {:>10} {:>6}  {}{key}",
            r.name,
            short(&r.digest),
            human(r.size),
            opt_human(r.uncompressed_size),
            r.layers,
            r.jdk.clone().unwrap_or_default()
        );
    }
    s
}

pub fn inspect(i: &Inspection) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "image     {}", i.name);
    let _ = writeln!(s, "manifest  {}", i.manifest);
    let _ = writeln!(s, "config    {}", i.config);
    if let Some(c) = &i.created {
        let _ = writeln!(s, "created   {c}");
    }
    if i.carries_private_key {
        s.push_str("WARNING   carries the cluster SSH private key: never publish it publicly\n");
    }
    if i.keys_at_boot {
        s.push_str(
            "keys      only the public key: the private key is installed at boot from user data \
             (`strata publish` writes it) or /run/secrets/strata-ssh-key\n",
        );
    }
    for (k, v) in &i.labels {
        let _ = writeln!(s, "label     {k}={v}");
    }
    let _ = writeln!(
        s,
        "\n{:<3} {:<22} {:<12} {:>10} {:>10}  shared with",
        "#", "LAYER", "DIGEST", "SIZE", "UNPACKED"
    );
    for (n, l) in i.layers.iter().enumerate() {
        let shared = if l.shared_with.is_empty() {
            "-".to_string()
        } else {
            format!(
                "{} image(s): {}",
                l.shared_with.len(),
                l.shared_with.join(", ")
            )
        };
        let _ = writeln!(
            s,
            "{:<3} {:<22} {:<12} {:>10} {:>10}  {shared}",
            n,
            l.name.as_deref().unwrap_or("?"),
            short(&l.digest),
            human(l.size),
            opt_human(l.uncompressed_size)
        );
    }
    if !i.packages.is_empty() {
        let _ = writeln!(s, "\n{} Debian packages:", i.packages.len());
        let line: Vec<String> = i.packages.iter().map(|(p, v)| format!("{p} {v}")).collect();
        for chunk in line.chunks(3) {
            let row: String = chunk.iter().map(|x| format!("{x:<40}")).collect();
            let _ = writeln!(s, "  {}", row.trim_end());
        }
    }
    match &i.smoke {
        Some(sm) => {
            let verdict = if sm.passed {
                match sm.checks.get("hadoop").map(String::as_str) {
                    Some("absent") => "passed (Hadoop was not in the container)".to_string(),
                    _ => "passed".to_string(),
                }
            } else {
                format!("FAILED ({})", sm.problems.join("; "))
            };
            let _ = writeln!(
                s,
                "\nSmoke test in a container: {verdict}  ({}, {})",
                sm.time, sm.engine
            );
        }
        None => {
            let _ = writeln!(
                s,
                "\nSmoke test in a container: not run on this build (strata run {} --smoke)",
                i.name
            );
        }
    }
    if !i.publications.is_empty() {
        let _ = writeln!(s, "\nPublished:");
        for p in &i.publications {
            let _ = writeln!(
                s,
                "  {}  cloud {}  {} {} ({}, {}, disk {})",
                p.time,
                p.cloud,
                p.glance_name,
                p.glance_id,
                p.outcome,
                p.visibility,
                short(p.disk_sha256.as_ref())
            );
        }
    }
    s
}

pub fn diff(d: &DiffReport) -> String {
    let mut s = format!("--- {}\n+++ {}\n", d.a, d.b);
    for l in &d.layers {
        let na = l.a.as_deref().unwrap_or("(none)");
        let nb = l.b.as_deref().unwrap_or("(none)");
        if l.shared {
            let _ = writeln!(s, "layer {}: {na}: same blob", l.position);
            continue;
        }
        let _ = writeln!(
            s,
            "layer {}: {na} → {nb}: {} added, {} removed, {} changed",
            l.position,
            l.added.len(),
            l.removed.len(),
            l.changed.len()
        );
        for p in &l.removed {
            let _ = writeln!(s, "  - /{p}");
        }
        for p in &l.added {
            let _ = writeln!(s, "  + /{p}");
        }
        for p in &l.changed {
            let _ = writeln!(s, "  ~ /{p}");
        }
    }
    s
}

pub fn verify(rep: &VerifyReport) -> String {
    let mut s = format!(
        "{} blobs ({}) re-hashed, {} images checked, {} layers decompressed\n",
        rep.blobs,
        human(rep.bytes),
        rep.images,
        rep.layers_decompressed
    );
    if rep.temp_files > 0 || rep.unreferenced_blobs > 0 || rep.unreferenced_damaged > 0 {
        let _ = writeln!(
            s,
            "note: {} temp file(s) of interrupted writes, {} unreferenced blob(s), {} damaged entr(ies) no image uses: harmless; `strata gc` removes them",
            rep.temp_files, rep.unreferenced_blobs, rep.unreferenced_damaged
        );
    }
    for r in &rep.repaired {
        let _ = writeln!(s, "repaired: {r}");
    }
    for p in &rep.problems {
        let _ = writeln!(s, "PROBLEM: {p}");
    }
    if rep.problems.is_empty() {
        s.push_str("ok\n");
    }
    s
}

pub fn gc(rep: &GcReport) -> String {
    let verb = if rep.dry_run {
        "would remove"
    } else {
        "removed"
    };
    format!(
        "{verb} {} blob(s) ({}) and {} temp file(s); kept {}\n",
        rep.removed_blobs,
        human(rep.removed_bytes),
        rep.removed_temp_files,
        rep.kept_blobs
    )
}

pub fn export(rep: &ExportReport) -> String {
    format!(
        "{} image(s), {} blobs ({}) → {}\n",
        rep.images.len(),
        rep.blobs,
        human(rep.bytes),
        rep.file.display()
    )
}

pub fn load(rep: &crate::publish::docker::LoadReport) -> String {
    let mut s = String::new();
    for i in &rep.images {
        let _ = writeln!(s, "{}  loaded  (image id {})", i.image, short(&i.id));
    }
    let _ = writeln!(
        s,
        "{} into {} in {:.1}s",
        human(rep.bytes),
        rep.engine,
        rep.seconds
    );
    s
}

pub fn run(rep: &crate::publish::docker::RunReport) -> String {
    let mut s = String::new();
    if let Some(sm) = &rep.smoke {
        let verdict = if sm.passed { "passed" } else { "FAILED" };
        let _ = writeln!(s, "smoke test of {}: {verdict}", rep.image);
        for (k, v) in &sm.checks {
            let _ = writeln!(s, "  {k:<14} {v}");
        }
        let _ = writeln!(s, "recorded for manifest {}", short(sm.manifest.as_ref()));
    }
    if let Some(id) = &rep.container {
        let short_id = &id[..id.len().min(12)];
        let _ = writeln!(s, "{short_id}");
        let _ = writeln!(
            s,
            "  {} runs detached on the host network; follow it: docker logs -f {short_id}; \
             a shell: docker exec -it {short_id} su - hadoop; stop it: docker rm -f {short_id}",
            rep.image
        );
    }
    if rep.container.is_some() || rep.smoke.is_some() {
        for m in &rep.mounts {
            let _ = writeln!(s, "  mount: {m}");
        }
        for n in &rep.notes {
            let _ = writeln!(s, "  note: {n}");
        }
    }
    s
}

pub fn publish(rep: &crate::publish::PublishReport) -> String {
    use crate::publish::Outcome;
    let mut s = String::new();
    for i in &rep.images {
        let what = match i.outcome {
            Outcome::Created => "published",
            Outcome::AlreadyPublished => "already published (nothing uploaded)",
            Outcome::PublishedByAnotherRun => "published by another run at the same time",
            Outcome::WouldCreate => "would be published (dry run)",
        };
        let _ = writeln!(
            s,
            "{} → {} {} on {}: {what}",
            i.image,
            i.glance_name,
            i.glance_id.as_deref().unwrap_or("(new id)"),
            rep.cloud
        );
        if i.outcome == Outcome::Created {
            let _ = writeln!(
                s,
                "  {} sent in {:.1}s ({}/s), {}, visibility {}",
                human(i.bytes_sent),
                i.seconds,
                human((i.bytes_sent as f64 / i.seconds.max(0.001)) as u64),
                i.verified.as_deref().unwrap_or("not verified"),
                i.visibility
            );
        }
        if let Some(c) = &i.converted {
            let _ = writeln!(
                s,
                "  the cloud converted it to {} on import (size {}): not corruption",
                c.disk_format,
                c.size.map(human).unwrap_or("unknown".into())
            );
        }
        if i.outcome == Outcome::WouldCreate && !i.properties.is_empty() {
            let props: Vec<String> = i
                .properties
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let _ = writeln!(
                s,
                "  visibility {}, properties: {}",
                i.visibility,
                props.join(" ")
            );
        }
        let _ = writeln!(s, "  boot test of this disk: {}", i.boot_test);
        let verb = if rep.dry_run { "would hide" } else { "hidden" };
        if !i.hidden.is_empty() {
            let _ = writeln!(s, "  older images {verb}: {}", i.hidden.join(", "));
        }
        let verb = if rep.dry_run {
            "would delete"
        } else {
            "deleted"
        };
        if !i.pruned.is_empty() {
            let _ = writeln!(
                s,
                "  older images {verb} (--prune): {}",
                i.pruned.join(", ")
            );
        }
        if !i.kept.is_empty() {
            let _ = writeln!(s, "  older images left visible: {}", i.kept.join(", "));
        }
        if let Some(u) = &i.user_data {
            let _ = writeln!(
                s,
                "  keys at boot: openstack server create --image {} --user-data {} …",
                i.glance_name,
                u.display()
            );
        }
    }
    s
}

pub fn preflight(rep: &crate::publish::preflight::PreflightReport) -> String {
    use crate::publish::preflight::{Check, Verdict};
    let mut s = String::new();
    let _ = writeln!(
        s,
        "preflight {} on cloud {} ({})",
        rep.image, rep.cloud, rep.image_endpoint
    );
    let line = |s: &mut String, c: &Check, indent: &str| {
        let tag = match c.verdict {
            Verdict::Pass => "pass   ",
            Verdict::Fail => "FAIL   ",
            Verdict::Unknown => "unknown",
        };
        let _ = writeln!(s, "{indent}[{tag}] {}: {}", c.title, c.found);
        if let Some(a) = &c.advice {
            let _ = writeln!(s, "{indent}          → {a}");
        }
    };
    for c in &rep.checks {
        line(&mut s, c, "  ");
        if c.id == "flavors" {
            for f in &rep.flavors {
                let _ = writeln!(
                    s,
                    "      {:<20} {:>7} MiB {:>5} GiB  {}",
                    f.flavor.name,
                    f.flavor.ram_mib,
                    f.flavor.disk_gib,
                    match (f.fits, f.flavor.disk_gib) {
                        (true, 0) => "fits (boots from a volume)",
                        (true, _) => "fits",
                        (false, _) => "does not fit",
                    }
                );
            }
        }
    }
    let _ = writeln!(
        s,
        "{} passed, {} failed, {} unknown{}",
        rep.passed,
        rep.failed,
        rep.unknown,
        rep.flavor_source
            .as_deref()
            .map(|f| format!(" (flavors from {f})"))
            .unwrap_or_default()
    );
    s
}

pub fn push(rep: &crate::share::push::PushReport) -> String {
    let mut s = String::new();
    for i in &rep.images {
        s.push_str(&format!(
            "{} → {}/{}:{} ({})\n",
            i.name,
            rep.registry,
            rep.repository,
            i.tags.join(", :"),
            i.manifest
        ));
    }
    let b = &rep.blobs;
    s.push_str(&format!(
        "blobs: {} sent ({}), {} mounted, {} already there; manifests: {} pushed, {} already there\n",
        b.sent,
        human(b.bytes_sent),
        b.mounted,
        b.present,
        rep.manifests.pushed,
        rep.manifests.present
    ));
    s
}

pub fn pull(rep: &crate::share::pull::PullReport) -> String {
    let mut s = String::new();
    for i in &rep.images {
        s.push_str(&format!(
            "{} → {} ({}){}\n",
            i.reference,
            i.name,
            i.manifest,
            if i.extras {
                ""
            } else {
                " — no strata record: disk, report and export need an image pushed by strata"
            }
        ));
    }
    s.push_str(&format!(
        "blobs: {} fetched ({}), {} already in {}\n",
        rep.blobs_fetched,
        human(rep.bytes_fetched),
        rep.blobs_present,
        rep.store.display()
    ));
    s
}
