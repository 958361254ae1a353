//! The cloud test setup itself, against the real services it starts: Glance alone (uploads,
//! hashes, import methods, hidden images, the fixture's own listing and reset) and behind
//! Keystone (tokens, 401 without one, 403 for a member asking for public, the application
//! credential), the generated clouds.yaml read by openstacksdk, the fault proxy in front of the
//! real Glance, and a deployment that stops when dropped.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::cloud::{Cloud, LAB, LAB_APPCRED, LAB_MEMBER, LAB_NOAUTH, Mode};
use common::proxy::{Fault, Proxy, Rule};
use serde_json::{Value, json};

const OCTET: &str = "application/octet-stream";

/// A small valid qcow2 (Glance checks that the bytes are the declared format).
fn small_qcow2(dir: &Path) -> Option<std::path::PathBuf> {
    if !common::require("qemu-img") {
        return None;
    }
    let path = dir.join("small.qcow2");
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&path)
        .arg("1M")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::stderr(&out));
    Some(path)
}

fn create(cloud: &Cloud, name: &str, extra: Value) -> Value {
    let mut body = json!({"name": name, "disk_format": "qcow2", "container_format": "bare"});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let (status, img) = cloud.call_json("POST", "/v2/images", Some(&body));
    assert_eq!(status, 201, "create: {img}");
    img
}

/// Lists images with openstacksdk (from the cloud venv) through the generated clouds.yaml, for
/// each named cloud (one Python start for all): the reference client reads it as we mean it.
/// Returns (image count, image endpoint) per cloud.
fn openstacksdk_list(cloud: &Cloud, names: &[&str]) -> Vec<(usize, String)> {
    let venv = common::cloud::venv().unwrap();
    let script = "import sys, openstack\n\
                  for name in sys.argv[1:]:\n\
                  \x20   c = openstack.connect(cloud=name)\n\
                  \x20   print(len(list(c.image.images())), c.image.get_endpoint())\n";
    let mut cmd = Command::new(venv.join("bin/python"));
    cmd.args(["-W", "ignore", "-c", script]).args(names);
    cloud.configure(&mut cmd, names[0]);
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "openstacksdk with clouds {names:?}: {}",
        common::stderr(&out)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (n, endpoint) = l.split_once(' ').unwrap();
            (n.parse().unwrap(), endpoint.to_string())
        })
        .collect()
}

#[test]
fn noauth_glance_uploads_hashes_lists_hidden_and_resets() {
    let Some(cloud) = Cloud::shared(Mode::NoAuth) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let Some(qcow2) = small_qcow2(dir.path()) else {
        return;
    };
    assert!(
        cloud.images_all().is_empty(),
        "shared() lends an empty cloud"
    );

    let img = create(&cloud, "smoke", json!({}));
    assert_eq!(img["status"], "queued");
    let id = img["id"].as_str().unwrap();
    let data = std::fs::read(&qcow2).unwrap();
    let (status, body) = cloud.call(
        "PUT",
        &format!("/v2/images/{id}/file"),
        Some((OCTET, &data)),
    );
    assert_eq!(status, 204, "upload: {body}");
    let img = cloud.image(id).unwrap();
    assert_eq!(img["status"], "active");
    assert_eq!(img["os_hash_algo"], "sha512");
    assert_eq!(img["os_hash_value"], common::sha512_hex(&qcow2));
    assert_eq!(img["size"], data.len());
    assert_eq!(img["virtual_size"], 1 << 20);
    assert_eq!(img["owner"], cloud.project_id.as_str());

    // A second upload to an active image is refused; so is a wrong content type. (A few bytes:
    // Glance answers these before reading the body, and closes; a large body would meet a broken
    // pipe instead of the answer.)
    let (status, _) = cloud.call(
        "PUT",
        &format!("/v2/images/{id}/file"),
        Some((OCTET, b"refused")),
    );
    assert_eq!(status, 409);
    let other = create(&cloud, "smoke-2", json!({}));
    let other_id = other["id"].as_str().unwrap();
    let (status, _) = cloud.call(
        "PUT",
        &format!("/v2/images/{other_id}/file"),
        Some(("text/plain", b"refused")),
    );
    assert_eq!(status, 415);

    let (status, info) = cloud.call_json("GET", "/v2/info/import", None);
    assert_eq!(status, 200);
    let methods = info["import-methods"]["value"].as_array().unwrap();
    assert!(methods.contains(&json!("glance-direct")), "{info}");

    // Hidden images: out of the plain list, in images_all.
    let hidden = create(&cloud, "smoke-hidden", json!({"os_hidden": true}));
    let (_, plain) = cloud.call_json("GET", "/v2/images", None);
    let plain: Vec<&Value> = plain["images"].as_array().unwrap().iter().collect();
    assert!(plain.iter().all(|i| i["id"] != hidden["id"]));
    let all: BTreeMap<String, String> = cloud
        .images_all()
        .iter()
        .map(|i| {
            (
                i["name"].as_str().unwrap().into(),
                i["status"].as_str().unwrap().into(),
            )
        })
        .collect();
    let expected = [
        ("smoke", "active"),
        ("smoke-2", "queued"),
        ("smoke-hidden", "queued"),
    ];
    let expected: BTreeMap<String, String> = expected
        .map(|(n, s)| (n.into(), s.into()))
        .into_iter()
        .collect();
    assert_eq!(all, expected);

    // Pagination: more images than one page.
    for i in 0..3 {
        create(&cloud, &format!("page-{i}"), json!({}));
    }
    let (_, page) = cloud.call_json("GET", "/v2/images?limit=2", None);
    assert!(page["next"].is_string(), "Glance pages: {page}");
    assert_eq!(cloud.images_all().len(), 6);

    // The reference client reads clouds.yaml as meant (auth_type none + endpoint override).
    let [(n, endpoint)] = &openstacksdk_list(&cloud, &[LAB_NOAUTH])[..] else {
        panic!("one line per cloud")
    };
    assert_eq!(*n, 5, "openstacksdk lists the non-hidden images");
    assert!(endpoint.starts_with(&cloud.glance_url), "{endpoint}");

    // A protected image too is removed by delete_all.
    create(&cloud, "smoke-protected", json!({"protected": true}));
    cloud.delete_all();
    assert!(cloud.images_all().is_empty());

    // Deleted ids stay taken until purged.
    let (status, _) = cloud.call_json(
        "POST",
        "/v2/images",
        Some(
            &json!({"id": id, "name": "again", "disk_format": "qcow2", "container_format": "bare"}),
        ),
    );
    assert_eq!(status, 409, "a deleted image's id is still taken");
    cloud.purge_deleted();
    create(&cloud, "again", json!({"id": id}));
}

#[test]
fn keystone_tokens_401_403_and_application_credential() {
    let Some(cloud) = Cloud::shared(Mode::Keystone) else {
        return;
    };
    let t = Instant::now();
    let admin = cloud.token().expect("the admin's password token");
    eprintln!("admin token in {:?}", t.elapsed());
    let (status, _) = cloud.call_as(Some(&admin), "GET", "/v2/images", None);
    assert_eq!(status, 200);

    let (status, body) = cloud.call_as(None, "GET", "/v2/images", None);
    assert_eq!(status, 401, "no token: {body}");

    let member = cloud.member.clone().unwrap();
    let member_token = cloud.password_token(&member).unwrap();
    let body = br#"{"name": "pub", "disk_format": "qcow2", "container_format": "bare", "visibility": "public"}"#;
    let (status, text) = cloud.call_as(
        Some(&member_token),
        "POST",
        "/v2/images",
        Some(("application/json", body)),
    );
    assert_eq!(status, 403, "a member asking for public: {text}");
    let body = br#"{"name": "priv", "disk_format": "qcow2", "container_format": "bare"}"#;
    let (status, text) = cloud.call_as(
        Some(&member_token),
        "POST",
        "/v2/images",
        Some(("application/json", body)),
    );
    assert_eq!(status, 201, "a member's private image: {text}");
    // The admin's listing sees the member's image.
    assert_eq!(cloud.images_all().len(), 1);

    let app = cloud
        .app_credential_token()
        .expect("the app credential's token");
    let (status, list) = cloud.call_as(Some(&app), "GET", "/v2/images", None);
    assert_eq!(status, 200, "{list}");

    let mut wrong = member.clone();
    wrong.password = Some("not-the-password".into());
    let (status, _) = cloud.password_token(&wrong).unwrap_err();
    assert_eq!(status, 401);

    // The reference client reads the three clouds through the catalog (RegionOne's endpoint,
    // not RegionTwo's dead one).
    let names = [LAB, LAB_MEMBER, LAB_APPCRED];
    for (name, (n, endpoint)) in names.iter().zip(openstacksdk_list(&cloud, &names)) {
        assert_eq!(n, 1, "cloud {name}");
        assert!(
            endpoint.starts_with(&cloud.glance_url),
            "cloud {name}: {endpoint}"
        );
    }
}

#[test]
fn the_fault_proxy_in_front_of_the_real_glance() {
    let Some(cloud) = Cloud::shared(Mode::NoAuth) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let Some(qcow2) = small_qcow2(dir.path()) else {
        return;
    };
    let data = std::fs::read(&qcow2).unwrap();
    let proxy = Proxy::start(cloud.glance_addr());
    let url = proxy.url();

    // Untouched: the upload goes through whole, with a Content-Length (no chunk framing).
    let img = create(&cloud, "via-proxy", json!({}));
    let id = img["id"].as_str().unwrap();
    let path = format!("/v2/images/{id}/file");
    let (status, _) = cloud.call_to(&url, None, "PUT", &path, Some((OCTET, &data)));
    assert_eq!(status, 204);
    assert_eq!(
        proxy.requests().last().unwrap().body_bytes,
        data.len() as u64
    );
    assert_eq!(cloud.image(id).unwrap()["status"], "active");

    // Cut mid-upload: the client gets an error, Glance keeps the image queued with no data.
    proxy.add(Rule::new("PUT", "/file", Fault::CutAfterRequestBytes(10_000)).times(1));
    let img = create(&cloud, "cut", json!({}));
    let id = img["id"].as_str().unwrap();
    let path = format!("/v2/images/{id}/file");
    let r = cloud.try_call_to(&url, None, "PUT", &path, Some((OCTET, &data)));
    assert!(r.is_err(), "a cut upload is an error: {r:?}");
    let deadline = Instant::now() + Duration::from_secs(15);
    let img = loop {
        let img = cloud.image(id).unwrap();
        if img["status"] == "queued" || Instant::now() > deadline {
            break img;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(img["status"], "queued", "{img}");
    assert_eq!(img["size"], Value::Null);

    // 503 twice: never reaches Glance; the third create does.
    proxy.add(Rule::new("POST", "/v2/images", Fault::Status503Times(2)));
    let body = br#"{"name": "after-503", "disk_format": "qcow2", "container_format": "bare"}"#;
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let (s, _) = cloud.call_to(
            &url,
            None,
            "POST",
            "/v2/images",
            Some(("application/json", body)),
        );
        statuses.push(s);
    }
    assert_eq!(statuses, [503, 503, 201]);
    let names: BTreeSet<String> = cloud
        .images_all()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        names,
        ["after-503", "cut", "via-proxy"].map(String::from).into()
    );
}

#[test]
fn an_owned_cloud_stops_when_dropped() {
    let Some(cloud) = Cloud::start(Mode::NoAuth) else {
        return;
    };
    let pid = cloud.json["pids"]["glance"].as_u64().unwrap();
    let watchdog = cloud.json["pids"]["watchdog"].as_u64().unwrap();
    let (status, _) = cloud.call_json("GET", "/v2/images", None);
    assert_eq!(status, 200);
    let state = cloud.state.clone();
    drop(cloud);
    for p in [pid, watchdog] {
        assert!(
            !Path::new(&format!("/proc/{p}")).exists()
                || std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| s
                    .rsplit(')')
                    .next()
                    .unwrap()
                    .trim_start()
                    .starts_with('Z')),
            "process {p} still runs after drop"
        );
    }
    assert!(!state.exists(), "a passing test's state is removed");
}
