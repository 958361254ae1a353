//! `strata publish` against a real Glance (alone, and behind a real Keystone), with the lab's
//! real 3.3.6 disk; faults a real server will not produce on demand come from the proxy in
//! `common::proxy`. After every test the test lists Glance itself, hidden images included.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use common::cloud::{Cloud, LAB, LAB_APPCRED, LAB_MEMBER, LAB_NOAUTH, Mode};
use common::proxy::{Fault, Proxy, Rule};
use common::*;
use serde_json::{Value, json};

const IMAGE: &str = "hadoop-lab:3.3.6";
const GLANCE_NAME: &str = "hadoop-lab-3.3.6";

struct Lab {
    store: PathBuf,
    cache: PathBuf,
    disk: PathBuf,
    manifest: String,
}

/// The lab store (built once per run, shared with tests/lab.rs: a no-op when it ran first)
/// and 3.3.6's disk.
fn lab() -> Option<&'static Lab> {
    static LAB: OnceLock<Option<Lab>> = OnceLock::new();
    LAB.get_or_init(|| {
        if !require("mmdebstrap") || !strata::disk::TOOLS.iter().all(|t| require(t)) {
            return None;
        }
        let (store, cache) = lab_store();
        let manifest = index_digests(&store)[IMAGE].clone();
        lab_disk(&store, &cache, IMAGE);
        Some(Lab {
            disk: store.join("disks/hadoop-lab_3.3.6.qcow2"),
            manifest,
            store,
            cache,
        })
    })
    .as_ref()
}

fn publish(lab: &Lab, cloud: &Cloud, name: &str, args: &[&str]) -> Command {
    let mut c = strata(&lab.cache);
    cloud.configure(&mut c, name);
    c.args(["publish", "-o"]).arg(&lab.store).args(args);
    c
}

fn sha256_hex(path: &Path) -> String {
    let (d, _) = strata::support::hash::hash_reader(std::fs::File::open(path).unwrap()).unwrap();
    d.to_string()
}

fn active(all: &[Value]) -> Vec<&Value> {
    all.iter().filter(|i| i["status"] == "active").collect()
}

/// Glance holds exactly one image, active, of our disk (no duplicate, no leftover).
fn exactly_one_of_our_disk(cloud: &Cloud, lab: &Lab) -> Value {
    let all = cloud.images_all();
    assert_eq!(all.len(), 1, "Glance holds {all:#?}");
    let img = all[0].clone();
    assert_eq!(img["status"], "active", "{img:#}");
    assert_eq!(img["strata_disk_sha256"], sha256_hex(&lab.disk).as_str());
    img
}

#[test]
fn publish_uploads_verifies_sets_properties_and_is_idempotent() {
    let (Some(lab), Some(cloud)) = (lab(), Cloud::shared(Mode::NoAuth)) else {
        return;
    };
    let out = ok(publish(lab, &cloud, LAB_NOAUTH, &[IMAGE, "--json"]));
    let rep = json(&out);
    let r = &rep["images"][0];
    assert_eq!(r["outcome"], "created", "{rep:#}");
    assert_eq!(r["method"], "upload");
    let size = std::fs::metadata(&lab.disk).unwrap().len();
    assert_eq!(r["bytes-sent"], size);
    assert_eq!(r["verified"], "sha512 and size match");
    let img = exactly_one_of_our_disk(&cloud, lab);
    assert_eq!(r["glance-id"], img["id"]);
    assert_eq!(img["name"], GLANCE_NAME);
    assert_eq!(img["disk_format"], "qcow2");
    assert_eq!(img["container_format"], "bare");
    assert_eq!(img["visibility"], "private");
    assert_eq!(img["size"], size);
    assert_eq!(img["os_hash_algo"], "sha512");
    assert_eq!(img["os_hash_value"], sha512_hex(&lab.disk).as_str());
    assert_eq!(img["min_disk"], 1);
    assert_eq!(img["min_ram"], 4096);
    for (k, v) in [
        ("hadoop_version", "3.3.6"),
        ("strata_recipe", "hadoop-lab"),
        ("strata_image", IMAGE),
        ("strata_image_digest", lab.manifest.as_str()),
        ("strata_carries_private_key", "true"),
        ("os_type", "linux"),
        ("os_distro", "debian"),
        ("os_version", "12"),
        ("hw_disk_bus", "virtio"),
        ("hw_qemu_guest_agent", "yes"),
        ("os_require_quiesce", "yes"),
    ] {
        assert_eq!(img[k], v, "property {k}: {img:#}");
    }
    assert!(
        img.get("hw_firmware_type").is_none(),
        "the lab recipe says bios"
    );
    let tags: Vec<&str> = img["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(
        tags.contains(&"hadoop") && tags.contains(&"strata"),
        "{tags:?}"
    );

    // Again: the same bytes are there; nothing is sent, nothing new in Glance.
    let out = ok(publish(lab, &cloud, LAB_NOAUTH, &[IMAGE, "--json"]));
    let again = json(&out);
    assert_eq!(again["images"][0]["outcome"], "already-published");
    assert_eq!(again["images"][0]["bytes-sent"], 0);
    assert_eq!(again["images"][0]["glance-id"], img["id"]);
    exactly_one_of_our_disk(&cloud, lab);

    // The store remembers both; inspect shows them.
    let mut c = strata(&lab.cache);
    c.args(["inspect", IMAGE, "--json", "-o"]).arg(&lab.store);
    let pubs = json(&ok(c))["publications"].clone();
    let ours: Vec<&Value> = pubs
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| {
            p["glance-id"] == img["id"]
                && p["image-endpoint"] == format!("{}/v2", cloud.glance_url).as_str()
        })
        .collect();
    assert!(ours.len() >= 2, "{pubs:#}");
    assert_eq!(ours[0]["outcome"], "created");
    assert_eq!(ours[ours.len() - 1]["outcome"], "already-published");
}

/// Creates an "older build" of the lab image by hand (tiny raw data, active).
fn older_image(cloud: &Cloud, n: usize) -> String {
    let (s, v) = cloud.call_json(
        "POST",
        "/v2/images",
        Some(&json!({
            "name": GLANCE_NAME, "disk_format": "raw", "container_format": "bare",
            "strata_recipe": "hadoop-lab", "strata_image_digest": format!("sha256:{n:064}"),
        })),
    );
    assert_eq!(s, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    let (s, b) = cloud.call(
        "PUT",
        &format!("/v2/images/{id}/file"),
        Some((
            "application/octet-stream",
            format!("old build {n}").as_bytes(),
        )),
    );
    assert_eq!(s, 204, "{b}");
    // Glance's times are whole seconds: make the order of builds unambiguous.
    std::thread::sleep(Duration::from_millis(1100));
    id
}

#[test]
fn a_new_build_hides_older_images_beyond_keep_and_only_prune_deletes() {
    let (Some(lab), Some(cloud)) = (lab(), Cloud::shared(Mode::NoAuth)) else {
        return;
    };
    let old: Vec<String> = (1..=3).map(|n| older_image(&cloud, n)).collect();
    let out = ok(publish(
        lab,
        &cloud,
        LAB_NOAUTH,
        &[IMAGE, "--keep", "2", "--json"],
    ));
    let r = json(&out)["images"][0].clone();
    assert_eq!(r["outcome"], "created");
    assert_eq!(r["kept"], json!([old[2]]));
    let mut hidden: Vec<String> = serde_json::from_value(r["hidden"].clone()).unwrap();
    hidden.sort();
    let mut want = vec![old[0].clone(), old[1].clone()];
    want.sort();
    assert_eq!(hidden, want);
    let all = cloud.images_all();
    assert_eq!(all.len(), 4, "nothing deleted without --prune: {all:#?}");
    for img in &all {
        let id = img["id"].as_str().unwrap();
        let should_hide = old[..2].iter().any(|o| o == id);
        assert_eq!(img["os_hidden"], should_hide, "{img:#}");
    }
    // --dry-run --prune says what it would delete and changes nothing.
    let out = ok(publish(
        lab,
        &cloud,
        LAB_NOAUTH,
        &[IMAGE, "--keep", "1", "--prune", "--dry-run", "--json"],
    ));
    let r = json(&out)["images"][0].clone();
    assert_eq!(r["outcome"], "already-published");
    assert_eq!(r["pruned"].as_array().unwrap().len(), 3, "{r:#}");
    assert_eq!(cloud.images_all().len(), 4);
    // --prune deletes beyond keep.
    ok(publish(
        lab,
        &cloud,
        LAB_NOAUTH,
        &[IMAGE, "--keep", "1", "--prune"],
    ));
    exactly_one_of_our_disk(&cloud, lab);
}

#[test]
fn two_publishes_at_the_same_moment_make_one_image() {
    let (Some(lab), Some(cloud)) = (lab(), Cloud::shared(Mode::NoAuth)) else {
        return;
    };
    let a = publish(lab, &cloud, LAB_NOAUTH, &[IMAGE, "--json"]);
    let b = publish(lab, &cloud, LAB_NOAUTH, &[IMAGE, "--json"]);
    let spawn = |mut c: Command| {
        c.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (pa, pb) = (spawn(a), spawn(b));
    let (oa, ob) = (
        pa.wait_with_output().unwrap(),
        pb.wait_with_output().unwrap(),
    );
    for o in [&oa, &ob] {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let outcomes: Vec<String> = [&oa, &ob]
        .iter()
        .map(|o| json(o)["images"][0]["outcome"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        outcomes.iter().filter(|o| *o == "created").count(),
        1,
        "{outcomes:?}"
    );
    exactly_one_of_our_disk(&cloud, lab);
}

#[test]
fn a_cut_upload_a_503_storm_and_a_stalled_cloud_leave_no_leftover() {
    let (Some(lab), Some(cloud)) = (lab(), Cloud::shared(Mode::NoAuth)) else {
        return;
    };
    let proxy = Proxy::start(cloud.glance_addr());
    let via = cloud.clouds_yaml_via(&proxy.url());
    let run = |args: &[&str]| {
        let mut c = publish(lab, &cloud, LAB_NOAUTH, args);
        c.env("OS_CLIENT_CONFIG_FILE", &via);
        run(c)
    };
    // The connection drops 50 MiB into the upload: the image is deleted, a fresh one sent.
    proxy.add(Rule::new("PUT", "/file", Fault::CutAfterRequestBytes(50 << 20)).times(1));
    let out = run(&[IMAGE, "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(proxy.faults_applied(), 1);
    assert!(stderr(&out).contains("retrying"), "{}", stderr(&out));
    exactly_one_of_our_disk(&cloud, lab);

    // 503s on every call for a while: retried with backoff.
    cloud.delete_all();
    proxy.clear();
    proxy.add(Rule::new("*", "/v2/images", Fault::Status503Times(3)));
    let out = run(&[IMAGE, "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(json(&out)["images"][0]["outcome"], "created");
    exactly_one_of_our_disk(&cloud, lab);
    // The upload carried a Content-Length: its body is the file, byte for byte, no chunk
    // framing (uwsgi front ends answer chunked uploads with 411).
    let size = std::fs::metadata(&lab.disk).unwrap().len();
    let puts: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.method == "PUT" && r.target.ends_with("/file") && r.fault.is_none())
        .collect();
    assert!(
        !puts.is_empty() && puts.iter().all(|r| r.body_bytes == size),
        "{puts:?}"
    );

    // A front end that never answers the create: a clear timeout, exit 1, nothing in Glance.
    cloud.delete_all();
    proxy.clear();
    proxy.add(Rule::new(
        "POST",
        "/v2/images",
        Fault::StallFor(Duration::from_secs(60)),
    ));
    let out = run(&[IMAGE, "--timeout", "2"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no answer within 2s"),
        "{}",
        stderr(&out)
    );
    assert!(cloud.images_all().is_empty(), "{:#?}", cloud.images_all());

    // The create reaches Glance but its answer is lost: the image is deleted again.
    proxy.clear();
    proxy.add(Rule::new(
        "POST",
        "/v2/images",
        Fault::DelayResponse(Duration::from_secs(5)),
    ));
    let out = run(&[IMAGE, "--timeout", "2"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        active(&cloud.images_all()).is_empty() && cloud.images_all().is_empty(),
        "{:#?}",
        cloud.images_all()
    );
}

#[test]
fn glance_direct_import_when_asked() {
    let (Some(lab), Some(cloud)) = (lab(), Cloud::shared(Mode::NoAuth)) else {
        return;
    };
    let project = "0123456789abcdef0123456789abcdef";
    let out = ok(publish(
        lab,
        &cloud,
        LAB_NOAUTH,
        &[
            IMAGE,
            "--import",
            "--share",
            project,
            "--protected",
            "--json",
        ],
    ));
    let r = json(&out)["images"][0].clone();
    assert_eq!(r["method"], "glance-direct", "{r:#}");
    assert_eq!(r["verified"], "sha512 and size match");
    let img = exactly_one_of_our_disk(&cloud, lab);
    assert_eq!(img["visibility"], "shared", "--share implies shared");
    assert_eq!(img["protected"], true);
    let id = img["id"].as_str().unwrap();
    let (s, members) = cloud.call_json("GET", &format!("/v2/images/{id}/members"), None);
    assert_eq!(s, 200);
    assert_eq!(members["members"][0]["member_id"], project, "{members:#}");
}

#[test]
fn a_publish_killed_mid_upload_leaves_a_leftover_the_next_run_removes() {
    let (Some(lab), Some(cloud)) = (lab(), Cloud::shared(Mode::NoAuth)) else {
        return;
    };
    // The upload hangs (the proxy never forwards it) so the kill lands during it: Glance holds
    // the created image, queued, with no data.
    let proxy = Proxy::start(cloud.glance_addr());
    proxy.add(Rule::new(
        "PUT",
        "/file",
        Fault::StallFor(Duration::from_secs(60)),
    ));
    let via = cloud.clouds_yaml_via(&proxy.url());
    let mut c = publish(lab, &cloud, LAB_NOAUTH, &[IMAGE, "-q"]);
    c.env("OS_CLIENT_CONFIG_FILE", &via);
    let mut child = c.spawn().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !proxy.requests().iter().any(|r| r.method == "PUT") {
        assert!(std::time::Instant::now() < deadline, "no upload started");
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let left = cloud.images_all();
    assert!(
        left.len() == 1 && left[0]["status"] == "queued",
        "{left:#?}"
    );
    // The next run finds the id taken by a leftover, removes it and publishes once.
    let out = ok(publish(lab, &cloud, LAB_NOAUTH, &[IMAGE, "--json"]));
    assert_eq!(json(&out)["images"][0]["outcome"], "created");
    exactly_one_of_our_disk(&cloud, lab);
}

#[test]
fn keystone_password_appcred_and_refusals() {
    let (Some(lab), Some(cloud)) = (lab(), Cloud::shared(Mode::Keystone)) else {
        return;
    };
    // Password: the image endpoint comes from the catalog.
    let out = ok(publish(lab, &cloud, LAB, &[IMAGE, "--dry-run", "--json"]));
    let rep = json(&out);
    assert_eq!(rep["image-endpoint"], format!("{}/v2", cloud.glance_url));

    // A wrong password: 401 explained, exit 6, the password never shown.
    let yaml = std::fs::read_to_string(cloud.clouds_yaml()).unwrap();
    let pw = cloud.admin.password.clone().unwrap();
    let wrong = cloud.state.join("clouds-wrong.yaml");
    std::fs::write(&wrong, yaml.replace(&pw, "Wr0ng-Passw0rd-xyz")).unwrap();
    let mut c = publish(lab, &cloud, LAB, &[IMAGE]);
    c.env("OS_CLIENT_CONFIG_FILE", &wrong);
    let out = run(c);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(err.contains("401") && err.contains("credentials"), "{err}");
    assert!(
        !err.contains("Wr0ng-Passw0rd-xyz") && !err.contains(&pw),
        "{err}"
    );

    // An application credential publishes for real.
    let out = ok(publish(lab, &cloud, LAB_APPCRED, &[IMAGE, "--json"]));
    assert_eq!(json(&out)["images"][0]["outcome"], "created");
    let img = exactly_one_of_our_disk(&cloud, lab);
    assert_eq!(img["owner"], cloud.project_id.as_str());

    // A key-carrying image made public: refused before any call (exit 2).
    cloud.delete_all();
    let out = run(publish(
        lab,
        &cloud,
        LAB_MEMBER,
        &[IMAGE, "--visibility", "public"],
    ));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("private key"), "{}", stderr(&out));
    // …and with the flag, a member may still not publish publicly: Glance says 403 (exit 6).
    let out = run(publish(
        lab,
        &cloud,
        LAB_MEMBER,
        &[IMAGE, "--visibility", "public", "--allow-private-key"],
    ));
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(stderr(&out).contains("403"), "{}", stderr(&out));
    assert!(cloud.images_all().is_empty(), "{:#?}", cloud.images_all());

    // An unknown cloud lists the known ones (exit 2); so does no cloud at all.
    let out = run(publish(lab, &cloud, "lba", &[IMAGE]));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("did you mean \"lab\""),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("lab-appcred"), "{}", stderr(&out));

    // A malformed clouds.yaml: file, line and key.
    let bad = cloud.state.join("clouds-bad.yaml");
    std::fs::write(&bad, "clouds:\n  lab:\n    auth:\n      auth_url: [1, 2]\n").unwrap();
    let mut c = publish(lab, &cloud, LAB, &[IMAGE]);
    c.env("OS_CLIENT_CONFIG_FILE", &bad);
    let out = run(c);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("clouds-bad.yaml:4"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("auth_url"), "{}", stderr(&out));

    // A token that Keystone does not know: explained, exit 6.
    let tok = cloud.state.join("clouds-token.yaml");
    std::fs::write(
        &tok,
        format!(
            "clouds:\n  t:\n    auth_type: token\n    auth:\n      auth_url: {}\n      token: gAAAAA-expired-token\n      project_name: lab\n      project_domain_name: Default\n",
            cloud.auth_url.as_deref().unwrap()
        ),
    )
    .unwrap();
    let mut c = publish(lab, &cloud, "t", &[IMAGE]);
    c.env("OS_CLIENT_CONFIG_FILE", &tok);
    let out = run(c);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains("gAAAAA-expired-token"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn bad_input_names_what_to_do() {
    let (Some(lab), Some(cloud)) = (lab(), Cloud::shared(Mode::NoAuth)) else {
        return;
    };
    // An image the store does not have.
    let out = run(publish(lab, &cloud, LAB_NOAUTH, &["hadoop-lab:9.9.9"]));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    // A store that was never built.
    let empty = tempfile::tempdir().unwrap();
    let mut c = strata(&lab.cache);
    cloud.configure(&mut c, LAB_NOAUTH);
    c.args(["publish", IMAGE, "-o"]).arg(empty.path());
    let out = run(c);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("strata build"), "{}", stderr(&out));
    // Nothing named.
    let out = run(publish(lab, &cloud, LAB_NOAUTH, &[]));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(cloud.images_all().is_empty());
    // --all --dry-run: every image of the store, none uploaded.
    let out = ok(publish(
        lab,
        &cloud,
        LAB_NOAUTH,
        &["--all", "--dry-run", "--json"],
    ));
    let rep = json(&out);
    assert_eq!(rep["images"].as_array().unwrap().len(), 9, "{rep:#}");
    assert!(cloud.images_all().is_empty());
}

#[test]
fn a_cloud_that_converts_on_import_is_reported_not_called_corruption() {
    let Some(lab) = lab() else {
        return;
    };
    let Some(cloud) = Cloud::start_with(Mode::NoAuth, &["--convert-to", "raw"]) else {
        return;
    };
    let out = ok(publish(
        lab,
        &cloud,
        LAB_NOAUTH,
        &[IMAGE, "--import", "--json"],
    ));
    let r = json(&out)["images"][0].clone();
    assert_eq!(r["outcome"], "created", "{r:#}");
    assert_eq!(r["converted"]["disk-format"], "raw", "{r:#}");
    assert!(
        r["verified"].as_str().unwrap().contains("converted"),
        "{r:#}"
    );
    assert!(stderr(&out).is_empty() || !stderr(&out).contains("mismatch"));
    let all = cloud.images_all();
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(all[0]["disk_format"], "raw");
    assert_eq!(all[0]["status"], "active");
    // The store records the conversion.
    let mut c = strata(&lab.cache);
    c.args(["inspect", IMAGE, "--json", "-o"]).arg(&lab.store);
    let pubs = json(&ok(c))["publications"].clone();
    let last = pubs.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["outcome"], "converted", "{pubs:#}");
    // Publishing again: the converted image is found by its image digest; nothing is sent.
    let out = ok(publish(lab, &cloud, LAB_NOAUTH, &[IMAGE, "--json"]));
    assert_eq!(json(&out)["images"][0]["outcome"], "already-published");
}

#[test]
fn an_image_taking_its_key_at_boot_may_be_public_and_comes_with_its_user_data() {
    let (Some(lab), Some(cloud)) = (lab(), Cloud::shared(Mode::NoAuth)) else {
        return;
    };
    // The lab's public variant (tests/lab.rs builds it too), on the lab's cache.
    let dir = repo().join("target/lab-test");
    let store = dir.join("public-output");
    let recipe = lab_public_recipe(&dir);
    let mut c = strata(&lab.cache);
    c.arg("build")
        .arg(&recipe)
        .args(["--disks", "-q", "-o"])
        .arg(&store);
    ok(c);
    let keys = tempfile::tempdir().unwrap();
    let mut c = strata(&lab.cache);
    cloud.configure(&mut c, LAB_NOAUTH);
    c.env("STRATA_KEY_DIR", keys.path())
        .args([
            "publish",
            "hadoop-lab-public:3.3.6",
            "--visibility",
            "public",
            "--json",
            "-o",
        ])
        .arg(&store);
    let out = ok(c);
    let r = json(&out)["images"][0].clone();
    assert_eq!(r["outcome"], "created", "{r:#}");
    let all = cloud.images_all();
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(all[0]["visibility"], "public");
    assert_eq!(all[0]["strata_carries_private_key"], "false");
    // The user data to pass to `openstack server create --user-data`: the cluster key, 0600,
    // outside the store.
    let ud = PathBuf::from(r["user-data"].as_str().expect("a user-data path"));
    assert!(!ud.starts_with(&store), "{ud:?}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&ud).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let text = std::fs::read_to_string(&ud).unwrap();
    assert!(text.starts_with("#cloud-config"), "{text}");
    let key = std::fs::read_to_string(fixture_key()).unwrap();
    let body = key.lines().nth(1).unwrap();
    assert!(text.contains(body), "the user data holds the cluster key");
    // …and the key is in no output.
    assert!(!String::from_utf8_lossy(&out.stdout).contains(body));
    assert!(!stderr(&out).contains(body));
}

#[test]
fn a_cloud_that_refuses_qcow2_says_so_and_keeps_nothing() {
    let Some(lab) = lab() else {
        return;
    };
    let Some(cloud) = Cloud::start_with(Mode::NoAuth, &["--disk-formats", "raw,iso"]) else {
        return;
    };
    let out = run(publish(lab, &cloud, LAB_NOAUTH, &[IMAGE]));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(err.contains("400") && err.contains("qcow2"), "{err}");
    assert!(cloud.images_all().is_empty(), "{:#?}", cloud.images_all());
}

/// A tiny store (tests/common's project) with a hand-made qcow2 and disk record per image, as
/// `strata disk` writes them (a real disk needs a kernel, which the tiny recipe has not).
fn tiny_store_with_disks(versions: &str) -> (Project, PathBuf) {
    let project = Project::with_versions(versions);
    let store = project.root().join("output");
    ok(project.build(&store));
    let disks = store.join("disks");
    std::fs::create_dir_all(&disks).unwrap();
    for (i, (name, manifest)) in index_digests(&store).into_iter().enumerate() {
        let stem = name.replace(':', "_");
        let qcow2 = disks.join(format!("{stem}.qcow2"));
        // Different virtual sizes: different bytes per image.
        let out = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&qcow2)
            .arg(format!("{}G", i + 1))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let mtime = std::fs::metadata(&qcow2)
            .unwrap()
            .modified()
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let (sha256, sha512, bytes) =
            strata::support::hash::sha256_and_sha512(std::fs::File::open(&qcow2).unwrap()).unwrap();
        let record = json!({
            "image": name, "manifest": manifest, "file": format!("{stem}.qcow2"),
            "sha256": sha256.to_string(), "sha512": sha512, "bytes": bytes, "mtime": mtime,
            "virtual-size": ((i + 1) as u64) << 30, "min-disk-gib": i + 1,
            "os-distro": "debian", "os-version": "12", "guest-agent": false,
        });
        std::fs::write(
            disks.join(format!("{stem}.disk.json")),
            serde_json::to_vec_pretty(&record).unwrap(),
        )
        .unwrap();
    }
    (project, store)
}

#[test]
fn publish_all_sends_only_the_images_glance_does_not_hold() {
    let Some(cloud) = Cloud::shared(Mode::NoAuth) else {
        return;
    };
    if !require("qemu-img") {
        return;
    }
    let (project, store) = tiny_store_with_disks(TINY_VERSIONS);
    let names: Vec<String> = index_digests(&store).into_keys().collect();
    assert!(names.len() >= 2, "{names:?}");
    let cache = project.root().join("cache");
    let run_publish = |args: &[&str]| {
        let mut c = strata(&cache);
        cloud.configure(&mut c, LAB_NOAUTH);
        c.args(["publish", "--json", "-o"]).arg(&store).args(args);
        json(&ok(c))
    };
    // One of them first, as a release job would have done before.
    let first = run_publish(&[&names[0]]);
    assert_eq!(first["images"][0]["outcome"], "created");
    // --all: that one is left alone, every other one is sent.
    let all = run_publish(&["--all"]);
    let outcomes: Vec<(String, String)> = all["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["image"].as_str().unwrap().to_owned(),
                i["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(outcomes.len(), names.len(), "{outcomes:?}");
    for (name, outcome) in &outcomes {
        let want = if *name == names[0] {
            "already-published"
        } else {
            "created"
        };
        assert_eq!(outcome, want, "{name}: {outcomes:?}");
    }
    let images = cloud.images_all();
    assert_eq!(images.len(), names.len(), "{images:#?}");
    let mut in_glance: Vec<&str> = images
        .iter()
        .map(|i| i["strata_image"].as_str().unwrap())
        .collect();
    in_glance.sort();
    assert_eq!(
        in_glance,
        names.iter().map(String::as_str).collect::<Vec<_>>()
    );
    // Again: nothing to send.
    let again = run_publish(&["--all"]);
    for i in again["images"].as_array().unwrap() {
        assert_eq!(i["outcome"], "already-published", "{i:#}");
        assert_eq!(i["bytes-sent"], 0);
    }
    assert_eq!(cloud.images_all().len(), names.len());
}

#[test]
fn a_disk_corrupted_after_it_was_made_is_caught_and_nothing_stays_in_glance() {
    let Some(cloud) = Cloud::shared(Mode::NoAuth) else {
        return;
    };
    if !require("qemu-img") {
        return;
    }
    let (project, store) = tiny_store_with_disks(TINY_VERSIONS);
    let name = index_digests(&store).into_keys().next().unwrap();
    let qcow2 = store.join(format!("disks/{}.qcow2", name.replace(':', "_")));
    // Flip one byte, keeping size and modification time: silent corruption on disk.
    let mtime = std::fs::metadata(&qcow2).unwrap().modified().unwrap();
    let mut data = std::fs::read(&qcow2).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0xff;
    std::fs::write(&qcow2, &data).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&qcow2)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let mut c = strata(&project.root().join("cache"));
    cloud.configure(&mut c, LAB_NOAUTH);
    c.args(["publish", &name, "-o"]).arg(&store);
    let out = run(c);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("sha512"), "{}", stderr(&out));
    assert!(cloud.images_all().is_empty(), "{:#?}", cloud.images_all());
}
