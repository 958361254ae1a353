//! `strata preflight` against a real Glance (alone, and behind a real Keystone).
//!
//! The store is the tiny reference recipe (with a `[publish]` section), built by the real
//! binary. A real disk needs a kernel (mmdebstrap), which the tiny recipe has not, so its "disk"
//! is a small qcow2 made by `qemu-img` with a disk record and a boot-test record written by
//! hand beside it, as `strata disk` writes them. `strata publish` puts it into Glance (with
//! every property), then preflight checks it with a flavors file in the openstackclient's
//! format; the test breaks the image in Glance itself (hides it behind a newer one, changes
//! its properties) and checks the verdicts and exit codes.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::cloud::{Cloud, LAB, LAB_NOAUTH, Mode};
use common::*;
use serde_json::{Value, json};

const IMAGE: &str = "tiny:3.3.6";
const GLANCE_NAME: &str = "tiny-3.3.6";
const PATCH: &str = "application/openstack-images-v2.1-json-patch";

/// `openstack flavor list --long -f json`, as openstackclient 7 writes it.
const FLAVORS: &str = r#"[
  {"ID": "1", "Name": "m1.tiny", "RAM": 512, "Disk": 1, "Ephemeral": 0, "VCPUs": 1,
   "Is Public": true, "Swap": 0, "RXTX Factor": 1.0, "Properties": {}},
  {"ID": "2", "Name": "m1.small", "RAM": 2048, "Disk": 20, "Ephemeral": 0, "VCPUs": 1,
   "Is Public": true, "Swap": 0, "RXTX Factor": 1.0, "Properties": {"hw:cpu_policy": "shared"}},
  {"ID": "3", "Name": "vol.medium", "RAM": 4096, "Disk": 0, "Ephemeral": 0, "VCPUs": 2,
   "Is Public": true, "Swap": 0, "RXTX Factor": 1.0, "Properties": {}}
]"#;

struct Tiny {
    project: Project,
    store: PathBuf,
    manifest: String,
    qcow2: PathBuf,
    flavors: PathBuf,
}

/// The tiny store, its hand-made disk (2 GiB virtual: min_disk 2) and a flavors file.
fn tiny() -> Option<Tiny> {
    if !require("qemu-img") {
        return None;
    }
    let project = Project::with_versions(r#"["3.3.6"]"#);
    project.edit_recipe(|s| {
        s + "\n[publish]\nmin-ram = \"2GiB\"\nfirmware = \"uefi\"\ndisk-bus = \"virtio\"\n"
    });
    let store = project.root().join("output");
    ok(project.build(&store));
    let manifest = index_digests(&store)[IMAGE].clone();

    let disks = store.join("disks");
    std::fs::create_dir_all(&disks).unwrap();
    let qcow2 = disks.join("tiny_3.3.6.qcow2");
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&qcow2)
        .arg("2G")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let meta = std::fs::metadata(&qcow2).unwrap();
    let mtime = meta
        .modified()
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (sha256, bytes) =
        strata::support::hash::hash_reader(std::fs::File::open(&qcow2).unwrap()).unwrap();
    // What `strata disk` writes beside a disk (oci::disks::DiskRecord, boot-test results).
    let record = json!({
        "image": IMAGE,
        "manifest": manifest,
        "file": "tiny_3.3.6.qcow2",
        "sha256": sha256.to_string(),
        "bytes": bytes,
        "mtime": mtime,
        "virtual-size": 2u64 << 30,
        "min-disk-gib": 2,
        "os-distro": "debian",
        "os-version": "12",
        "guest-agent": true,
    });
    std::fs::write(
        disks.join("tiny_3.3.6.disk.json"),
        serde_json::to_vec_pretty(&record).unwrap(),
    )
    .unwrap();
    let boot = json!({"manifest": manifest, "results": [
        {"firmware": "bios", "passed": true}, {"firmware": "uefi", "passed": true}]});
    std::fs::write(
        disks.join("tiny_3.3.6.boot-test.json"),
        serde_json::to_vec(&boot).unwrap(),
    )
    .unwrap();
    let flavors = project.root().join("flavors.json");
    std::fs::write(&flavors, FLAVORS).unwrap();
    Some(Tiny {
        project,
        store,
        manifest,
        qcow2,
        flavors,
    })
}

fn strata_for(t: &Tiny, cloud: &Cloud, name: &str) -> Command {
    let mut c = strata(&t.project.root().join("cache"));
    cloud.configure(&mut c, name);
    c
}

fn preflight(t: &Tiny, cloud: &Cloud, name: &str, args: &[&str]) -> Output {
    let mut c = strata_for(t, cloud, name);
    c.args(["preflight", IMAGE, "-o"]).arg(&t.store).args(args);
    run(c)
}

/// The exit code, with the output in the message when it is not the one expected.
fn exit_code(out: &Output, want: i32) {
    assert_eq!(
        out.status.code(),
        Some(want),
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(out)
    );
}

/// `id → verdict` of a `--json` report.
fn verdicts(rep: &Value) -> Vec<(String, String)> {
    rep["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["id"].as_str().unwrap().to_owned(),
                c["verdict"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn check<'a>(rep: &'a Value, id: &str) -> &'a Value {
    rep["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("no check {id} in {rep:#}"))
}

fn vs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

fn flavors_arg(t: &Tiny) -> String {
    t.flavors.display().to_string()
}

fn publish(t: &Tiny, cloud: &Cloud, name: &str) -> Value {
    let mut c = strata_for(t, cloud, name);
    c.args(["publish", IMAGE, "--json", "-o"]).arg(&t.store);
    json(&ok(c))
}

/// Creates and uploads an active image (the fixture's own call, not strata's).
fn upload_image(cloud: &Cloud, qcow2: &Path, props: Value) -> String {
    let mut body = json!({"name": GLANCE_NAME, "disk_format": "qcow2",
        "container_format": "bare"});
    body.as_object_mut()
        .unwrap()
        .extend(props.as_object().unwrap().clone());
    let (s, img) = cloud.call_json("POST", "/v2/images", Some(&body));
    assert_eq!(s, 201, "{img}");
    let id = img["id"].as_str().unwrap().to_owned();
    let data = std::fs::read(qcow2).unwrap();
    let (s, b) = cloud.call(
        "PUT",
        &format!("/v2/images/{id}/file"),
        Some(("application/octet-stream", &data)),
    );
    assert_eq!(s, 204, "{b}");
    id
}

fn patch(cloud: &Cloud, id: &str, ops: Value) {
    let body = serde_json::to_vec(&ops).unwrap();
    let (s, b) = cloud.call("PATCH", &format!("/v2/images/{id}"), Some((PATCH, &body)));
    assert_eq!(s, 200, "PATCH {id} {ops}: {b}");
}

#[test]
fn preflight_checks_a_published_image_flavors_and_the_cloud() {
    let Some(cloud) = Cloud::shared(Mode::NoAuth) else {
        return;
    };
    let Some(t) = tiny() else {
        return;
    };
    let f = flavors_arg(&t);

    // Not in Glance yet: the image check fails (and says how to publish); the flavor is
    // weighed from the disk record and the recipe; what needs the Glance image is unknown.
    let out = preflight(
        &t,
        &cloud,
        LAB_NOAUTH,
        &["--flavors", &f, "--flavor", "m1.small", "--json"],
    );
    exit_code(&out, 7);
    let rep = json(&out);
    assert_eq!(
        verdicts(&rep),
        vs(&[
            ("image", "fail"),
            ("flavor-disk", "pass"),
            ("flavor-ram", "pass"),
            ("quota", "unknown"),
            ("store", "pass"),
            ("disk-format", "pass"),
            ("firmware", "unknown"),
            ("disk-bus", "unknown"),
            ("guest-agent", "unknown"),
            ("boot-test", "pass"),
        ])
    );
    assert!(
        check(&rep, "image")["advice"]
            .as_str()
            .unwrap()
            .contains("strata publish tiny:3.3.6 --cloud lab-noauth"),
        "{rep:#}"
    );
    assert!(
        stderr(&out).contains("1 check(s) failed: image in Glance"),
        "{}",
        stderr(&out)
    );

    // Published by strata: every check passes; the quota is unknown (no Keystone limits:
    // /v2/info/usage answers an empty usage), which is not a failure.
    let pub_rep = publish(&t, &cloud, LAB_NOAUTH);
    let id = pub_rep["images"][0]["glance-id"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = preflight(
        &t,
        &cloud,
        LAB_NOAUTH,
        &["--flavors", &f, "--flavor", "m1.small", "--json"],
    );
    exit_code(&out, 0);
    let rep = json(&out);
    assert_eq!(
        verdicts(&rep),
        vs(&[
            ("image", "pass"),
            ("flavor-disk", "pass"),
            ("flavor-ram", "pass"),
            ("quota", "unknown"),
            ("store", "pass"),
            ("disk-format", "pass"),
            ("firmware", "pass"),
            ("disk-bus", "pass"),
            ("guest-agent", "pass"),
            ("boot-test", "pass"),
        ]),
        "{rep:#}"
    );
    assert_eq!(rep["glance-id"], id.as_str());
    assert_eq!(rep["manifest"], t.manifest.as_str());
    assert_eq!(
        (rep["passed"].as_u64(), rep["failed"].as_u64()),
        (Some(9), Some(0))
    );
    assert!(
        check(&rep, "quota")["found"]
            .as_str()
            .unwrap()
            .contains("empty"),
        "{rep:#}"
    );
    // The fixture's Glance is multi-store (enabled_backends fs:file): the image's data is in fs.
    assert!(
        check(&rep, "store")["found"]
            .as_str()
            .unwrap()
            .contains("in fs"),
        "{rep:#}"
    );
    assert!(
        check(&rep, "flavor-disk")["advice"]
            .as_str()
            .unwrap()
            .contains("grows to 20 GiB"),
        "{rep:#}"
    );

    // A flavor too small on both counts: exit 7, naming both.
    let out = preflight(
        &t,
        &cloud,
        LAB_NOAUTH,
        &["--flavors", &f, "--flavor", "m1.tiny", "--json"],
    );
    exit_code(&out, 7);
    let rep = json(&out);
    assert_eq!(check(&rep, "flavor-disk")["verdict"], "fail");
    assert_eq!(check(&rep, "flavor-ram")["verdict"], "fail");
    assert!(
        check(&rep, "flavor-ram")["advice"]
            .as_str()
            .unwrap()
            .contains("Nova refuses"),
        "{rep:#}"
    );
    assert!(
        stderr(&out).contains(
            "preflight of tiny:3.3.6 on cloud lab-noauth: 2 check(s) failed: flavor m1.tiny: \
             disk, flavor m1.tiny: RAM"
        ),
        "{}",
        stderr(&out)
    );

    // A disk-0 flavor boots from a volume: a pass, with how.
    let out = preflight(
        &t,
        &cloud,
        LAB_NOAUTH,
        &["--flavors", &f, "--flavor", "vol.medium", "--json"],
    );
    exit_code(&out, 0);
    let rep = json(&out);
    assert!(
        check(&rep, "flavor-disk")["advice"]
            .as_str()
            .unwrap()
            .contains("--boot-from-volume 2"),
        "{rep:#}"
    );

    // Every flavor of the file, as text: a checklist; two of three fit, which is enough.
    let out = preflight(&t, &cloud, LAB_NOAUTH, &["--flavors", &f]);
    exit_code(&out, 0);
    let text = String::from_utf8(out.stdout.clone()).unwrap();
    for want in [
        "preflight tiny:3.3.6 on cloud lab-noauth",
        "[pass   ] image in Glance: tiny-3.3.6",
        "[pass   ] flavors: 2 of 3 flavors fit: m1.small, vol.medium",
        "m1.tiny",
        "does not fit",
        "fits (boots from a volume)",
        "[unknown] image quota",
        "[pass   ] boot test",
        "8 passed, 0 failed, 1 unknown",
    ] {
        assert!(text.contains(want), "{want:?} not in:\n{text}");
    }

    // Bad input: a flavor that does not exist (the nearest names), exit 2; and a flavor to ask
    // Nova about on a cloud whose catalog has no compute.
    let out = preflight(
        &t,
        &cloud,
        LAB_NOAUTH,
        &["--flavors", &f, "--flavor", "m1.smal"],
    );
    exit_code(&out, 2);
    assert!(
        stderr(&out).contains("no flavor \"m1.smal\"")
            && stderr(&out).contains("Nearest: m1.small"),
        "{}",
        stderr(&out)
    );
    let out = preflight(&t, &cloud, LAB_NOAUTH, &["--flavor", "m1.small"]);
    exit_code(&out, 2);
    assert!(
        stderr(&out).contains("no compute service"),
        "{}",
        stderr(&out)
    );
    let bad = t.project.root().join("bad-flavors.json");
    std::fs::write(&bad, r#"[{"Name": "m1.x", "Disk": 1}]"#).unwrap();
    let out = preflight(
        &t,
        &cloud,
        LAB_NOAUTH,
        &["--flavors", bad.to_str().unwrap()],
    );
    exit_code(&out, 2);
    assert!(
        stderr(&out).contains("missing field `ram`"),
        "{}",
        stderr(&out)
    );

    // Nova's own key style works the same.
    let nova = t.project.root().join("nova-flavors.json");
    std::fs::write(
        &nova,
        r#"{"flavors": [{"id": "2", "name": "m1.small", "ram": 2048, "disk": 20, "vcpus": 1,
            "OS-FLV-EXT-DATA:ephemeral": 0, "os-flavor-access:is_public": true, "links": []}]}"#,
    )
    .unwrap();
    let out = preflight(
        &t,
        &cloud,
        LAB_NOAUTH,
        &[
            "--flavors",
            nova.to_str().unwrap(),
            "--flavor",
            "m1.small",
            "--json",
        ],
    );
    exit_code(&out, 0);

    // Broken in Glance: the image hidden behind a newer one of the same name, its firmware
    // property removed (the recipe asks UEFI), its bus changed, its agent claim removed.
    let newer = upload_image(&cloud, &t.qcow2, json!({"strata_image": "tiny:3.3.6"}));
    patch(
        &cloud,
        &id,
        json!([
            {"op": "replace", "path": "/os_hidden", "value": true},
            {"op": "remove", "path": "/hw_firmware_type"},
            {"op": "replace", "path": "/hw_disk_bus", "value": "ide"},
            {"op": "remove", "path": "/hw_qemu_guest_agent"},
        ]),
    );
    let out = preflight(
        &t,
        &cloud,
        LAB_NOAUTH,
        &["--flavors", &f, "--flavor", "m1.small", "--json"],
    );
    exit_code(&out, 7);
    let rep = json(&out);
    assert_eq!(
        rep["glance-id"],
        id.as_str(),
        "found by digest though hidden"
    );
    for (c, v) in [
        ("image", "fail"),
        ("firmware", "fail"),
        ("disk-bus", "fail"),
        ("guest-agent", "fail"),
        ("flavor-disk", "pass"),
        ("boot-test", "pass"),
    ] {
        assert_eq!(check(&rep, c)["verdict"], v, "{c}: {rep:#}");
    }
    let image = check(&rep, "image");
    assert!(
        image["found"].as_str().unwrap().contains("hidden")
            && image["found"]
                .as_str()
                .unwrap()
                .contains("openstack server create --image tiny-3.3.6"),
        "{image:#}"
    );
    assert!(
        image["advice"]
            .as_str()
            .unwrap()
            .contains(&format!("a newer image replaced it: {newer}")),
        "{image:#}"
    );
    assert!(
        check(&rep, "firmware")["advice"]
            .as_str()
            .unwrap()
            .contains("hw_firmware_type=uefi"),
        "{rep:#}"
    );

    // Unhidden, two visible images share the name: the launch by name is ambiguous (a pass
    // that says to launch by id).
    patch(
        &cloud,
        &id,
        json!([{"op": "replace", "path": "/os_hidden", "value": false}]),
    );
    let out = preflight(
        &t,
        &cloud,
        LAB_NOAUTH,
        &["--flavors", &f, "--flavor", "m1.small", "--json"],
    );
    exit_code(&out, 7);
    let rep = json(&out);
    let image = check(&rep, "image");
    assert_eq!(image["verdict"], "pass", "{image:#}");
    assert!(
        image["advice"].as_str().unwrap().contains("is ambiguous"),
        "{image:#}"
    );

    // Preflight reads; it never changes Glance.
    let all = cloud.images_all();
    assert_eq!(all.len(), 2, "{all:#?}");
}

#[test]
fn preflight_logs_in_through_keystone() {
    let Some(cloud) = Cloud::shared(Mode::Keystone) else {
        return;
    };
    let Some(t) = tiny() else {
        return;
    };
    let f = flavors_arg(&t);
    publish(&t, &cloud, LAB);
    let out = preflight(&t, &cloud, LAB, &["--flavors", &f, "--json"]);
    exit_code(&out, 0);
    let rep = json(&out);
    assert_eq!(check(&rep, "image")["verdict"], "pass", "{rep:#}");
    assert_eq!(check(&rep, "flavors")["verdict"], "pass", "{rep:#}");
    assert_eq!(rep["image-endpoint"], format!("{}/v2", cloud.glance_url));
    // The test deployment's catalog lists no compute: a flavor to ask Nova about is bad input.
    let out = preflight(&t, &cloud, LAB, &["--flavor", "m1.small"]);
    exit_code(&out, 2);
    assert!(
        stderr(&out).contains("no compute service"),
        "{}",
        stderr(&out)
    );
    // Never a secret in the output.
    let password = cloud.admin.password.clone().unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&password));
    assert!(!stderr(&out).contains(&password));
}
