//! The remote layer cache: `strata build --cache-from REF --cache-to REF` against a real
//! registry (Debian's docker-registry, started by `tests/registry/up` on 127.0.0.1). A second
//! runner with an empty local cache builds nothing and gets the first one's manifest digests;
//! the lab builds from the cache with no mmdebstrap on PATH; concurrent writers; a layer holding
//! the private key stays out; a corrupt remote blob and an unreachable cache are warnings, the
//! layer built here.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::registry::{Auth, Registry};
use common::*;
use serde_json::Value;

/// strata build of the tiny recipe into `out` with the cache `cache` and `extra` flags.
fn build(p: &Project, cache: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = strata(cache);
    c.env_remove("STRATA_REGISTRY_USER")
        .env_remove("STRATA_REGISTRY_PASSWORD")
        .env("DOCKER_CONFIG", cache.join("no-docker-config"))
        .arg("build")
        .arg(p.recipe())
        .arg("-o")
        .arg(out)
        .args(["--json", "--insecure", "--registry-timeout", "20"])
        .args(extra);
    c
}

fn tags(reg: &Registry, repo: &str) -> BTreeSet<String> {
    let url = format!("http://{}/v2/{repo}/tags/list", reg.host);
    let body = ureq::get(&url)
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let v: Value = serde_json::from_str(&body).unwrap();
    v["tags"]
        .as_array()
        .map(|a| a.iter().map(|t| t.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

fn layer<'a>(rep: &'a Value, name: &str) -> &'a Value {
    rep["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == name)
        .unwrap_or_else(|| panic!("no layer {name} in {rep:#}"))
}

fn verify(store: &Path) {
    let mut c = strata(&store.with_extension("verify-cache"));
    c.args(["verify", "-o"]).arg(store);
    ok(c);
}

/// The bases a cache made (each has its facts read from its root filesystem in `info.json`; the
/// test's uncompressed tarball base is read in place, not copied into the cache).
fn rootfs_in(cache: &Path) -> Vec<PathBuf> {
    walk_files(&cache.join("base"))
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == "info.json"))
        .collect()
}

fn walk_files(dir: &Path) -> Vec<PathBuf> {
    if !dir.exists() {
        return vec![];
    }
    walkdir::WalkDir::new(dir)
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file())
        .map(|e| e.path().to_path_buf())
        .collect()
}

#[test]
fn a_second_runner_with_an_empty_cache_builds_nothing_and_gets_the_same_digests() {
    let Some(reg) = Registry::start(Auth::Anonymous) else {
        return;
    };
    let cache_ref = format!("{}/strata-cache", reg.host);
    let p = Project::new();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let (cache1, cache2) = (dir.path().join("cache1"), dir.path().join("cache2"));

    let first = json(&ok(build(
        &p,
        &cache1,
        &a,
        &["--cache-to", &cache_ref, "--allow-private-key"],
    )));
    let total = first["layers-total"].as_u64().unwrap();
    assert_eq!(first["layers-built"], total, "{first:#}");
    assert_eq!(first["cache-to"]["layers-pushed"], total, "{first:#}");
    assert_eq!(first["cache-to"]["base-facts"], "pushed", "{first:#}");
    // One append-only tag per layer key, and the base's facts under its own key.
    let t = tags(&reg, "strata-cache");
    for l in first["layers"].as_array().unwrap() {
        assert!(
            t.contains(&format!("k-{}", l["key"].as_str().unwrap())),
            "{l}"
        );
    }
    assert_eq!(t.iter().filter(|t| t.starts_with("b-")).count(), 1, "{t:?}");
    assert_eq!(t.len() as u64, total + 1, "{t:?}");

    // The second runner reads the cache and writes another repository of the same registry:
    // the blobs are mounted from the cache, not sent.
    let mirror = format!("{}/mirror", reg.host);
    let second = json(&ok(build(
        &p,
        &cache2,
        &b,
        &[
            "--cache-from",
            &cache_ref,
            "--cache-to",
            &mirror,
            "--allow-private-key",
        ],
    )));
    assert_eq!(second["layers-built"], 0, "{second:#}");
    assert_eq!(second["layers-remote"], total, "{second:#}");
    for l in second["layers"].as_array().unwrap() {
        assert_eq!(l["from"], "remote", "{l}");
        assert_eq!(l["ref"], cache_ref.as_str(), "{l}");
    }
    assert_eq!(second["cache-to"]["layers-pushed"], total, "{second:#}");
    assert_eq!(second["cache-to"]["blobs-mounted"], total, "{second:#}");
    assert_eq!(second["cache-to"]["bytes-sent"], 0, "{second:#}");
    assert_eq!(tags(&reg, "mirror"), t);
    assert_eq!(index_digests(&b), index_digests(&a));
    verify(&b);
    // The base was never made on the second runner: only its facts came.
    assert!(rootfs_in(&cache2).is_empty(), "{:?}", rootfs_in(&cache2));
    assert_eq!(
        walk_files(&cache2.join("base"))
            .iter()
            .filter(|p| p.ends_with("known.json"))
            .count(),
        1
    );
    // A rebuild there without the remote: all local, still no base root filesystem.
    let third = json(&ok(build(&p, &cache2, &b, &[])));
    assert_eq!(third["layers-cached"], total, "{third:#}");
    assert_eq!(third["index-changed"], false, "{third:#}");
    assert!(rootfs_in(&cache2).is_empty());
    // And `plan` there sees the base and every layer.
    let mut c = strata(&cache2);
    c.args(["plan", "--json", "-o"]).arg(&b).arg(p.recipe());
    let plan = json(&ok(c));
    assert_eq!(plan["base-ready"], true, "{plan:#}");
    assert!(
        plan["layers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["cached"] == true),
        "{plan:#}"
    );

    // Writing again what is there writes nothing: every tag is HEADed, none rewritten.
    let puts = reg.count("PUT", "/manifests/");
    let again = json(&ok(build(&p, &cache2, &b, &["--cache-to", &cache_ref])));
    assert_eq!(again["cache-to"]["layers-pushed"], 0, "{again:#}");
    assert_eq!(again["cache-to"]["layers-present"], total - 1, "{again:#}");
    assert_eq!(again["cache-to"]["base-facts"], "present", "{again:#}");
    assert_eq!(
        again["cache-to"]["skipped-private-key"],
        serde_json::json!(["user-env"]),
        "without --allow-private-key the key's layer is not even looked at"
    );
    assert_eq!(reg.count("PUT", "/manifests/"), puts);
}

#[test]
fn a_layer_with_the_private_key_stays_out_of_the_cache_and_is_built_by_the_next_runner() {
    let Some(reg) = Registry::start(Auth::Anonymous) else {
        return;
    };
    let cache_ref = format!("{}/keys/cache", reg.host);
    let p = Project::new();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    // The tiny recipe delivers the key in the image ([ssh] deliver = "image" by default): the
    // accounts layer (user-env) carries it.
    let first = json(&ok(build(
        &p,
        &dir.path().join("c1"),
        &a,
        &["--cache-to", &cache_ref],
    )));
    assert!(
        first["images"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["carries-private-key"] == true)
    );
    assert_eq!(
        first["cache-to"]["skipped-private-key"],
        serde_json::json!(["user-env"]),
        "{first:#}"
    );
    let total = first["layers-total"].as_u64().unwrap();
    assert_eq!(first["cache-to"]["layers-pushed"], total - 1);
    let key = layer(&first, "user-env")["key"]
        .as_str()
        .unwrap()
        .to_string();
    let t = tags(&reg, "keys/cache");
    assert!(!t.contains(&format!("k-{key}")), "{t:?}");
    // Nothing the registry holds has the key in it (configs and manifests are plain JSON; the
    // layer blobs are compressed: a key layer would be there as a blob, and it is not).
    let pem = std::fs::read_to_string(fixture_key()).unwrap();
    let body = pem.lines().nth(1).unwrap();
    let blobs = walk_files(&reg.state().join("storage"));
    assert!(blobs.len() > 2 * total as usize);
    for f in &blobs {
        let data = std::fs::read(f).unwrap();
        assert!(
            !String::from_utf8_lossy(&data).contains(body),
            "{f:?} holds the key"
        );
    }
    let digests: BTreeSet<&str> = first["layers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["name"] != "user-env")
        .map(|l| l["digest"].as_str().unwrap())
        .collect();
    let key_digest = layer(&first, "user-env")["digest"].as_str().unwrap();
    assert!(!reg.blob_data(key_digest).exists());
    assert!(digests.iter().all(|d| reg.blob_data(d).exists()));

    // The next runner builds that one layer, from the same key: same images.
    let second = json(&ok(build(
        &p,
        &dir.path().join("c2"),
        &b,
        &["--cache-from", &cache_ref],
    )));
    assert_eq!(second["layers-built"], 1, "{second:#}");
    assert_eq!(second["layers-remote"], total - 1, "{second:#}");
    assert_eq!(layer(&second, "user-env")["from"], "built");
    assert_eq!(index_digests(&b), index_digests(&a));
}

#[test]
fn two_runners_writing_one_cache_at_once_both_succeed_and_leave_it_whole() {
    let Some(reg) = Registry::start(Auth::Anonymous) else {
        return;
    };
    let cache_ref = format!("{}/shared", reg.host);
    let p = Project::new();
    let dir = tempfile::tempdir().unwrap();
    let runs: Vec<_> = ["x", "y"]
        .iter()
        .map(|n| {
            let mut c = build(
                &p,
                &dir.path().join(format!("cache-{n}")),
                &dir.path().join(n),
                &["--cache-to", &cache_ref, "--allow-private-key"],
            );
            c.stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            c.spawn().unwrap()
        })
        .collect();
    let outs: Vec<Output> = runs
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    for o in &outs {
        assert!(o.status.success(), "{}", stderr(o));
    }
    let reps: Vec<Value> = outs.iter().map(json).collect();
    let total = reps[0]["layers-total"].as_u64().unwrap();
    let written: u64 = reps
        .iter()
        .map(|r| r["cache-to"]["layers-pushed"].as_u64().unwrap())
        .sum();
    assert!(written >= total, "{reps:#?}");
    assert_eq!(
        index_digests(&dir.path().join("x")),
        index_digests(&dir.path().join("y"))
    );
    let t = tags(&reg, "shared");
    assert_eq!(t.len() as u64, total + 1, "{t:?}");
    // Whole: a third runner gets every layer from it, and the same images.
    let z = dir.path().join("z");
    let third = json(&ok(build(
        &p,
        &dir.path().join("cache-z"),
        &z,
        &["--cache-from", &cache_ref],
    )));
    assert_eq!(third["layers-built"], 0, "{third:#}");
    assert_eq!(third["cache-warnings"], serde_json::json!([]));
    assert_eq!(index_digests(&z), index_digests(&dir.path().join("x")));
}

#[test]
fn a_corrupt_remote_blob_is_refused_and_that_layer_built_here() {
    let Some(reg) = Registry::start(Auth::Anonymous) else {
        return;
    };
    let cache_ref = format!("{}/c", reg.host);
    let p = Project::new();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let first = json(&ok(build(
        &p,
        &dir.path().join("c1"),
        &a,
        &["--cache-to", &cache_ref, "--allow-private-key"],
    )));
    // Other bytes, same size, under the JDK layer's digest in the registry's storage (which
    // serves what it has without checking).
    let jdk = layer(&first, "jdk-tiny-11");
    let digest = jdk["digest"].as_str().unwrap();
    let data = reg.blob_data(digest);
    let mut bytes = std::fs::read(&data).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&data, &bytes).unwrap();

    let second = json(&ok(build(
        &p,
        &dir.path().join("c2"),
        &b,
        &["--cache-from", &cache_ref],
    )));
    assert_eq!(second["layers-built"], 1, "{second:#}");
    assert_eq!(layer(&second, "jdk-tiny-11")["from"], "built");
    let warnings = second["cache-warnings"].to_string();
    assert!(
        warnings.contains(digest) && warnings.contains("jdk-tiny-11"),
        "{warnings}"
    );
    // Nothing corrupt stayed in the cache, and the images are the first runner's.
    assert_eq!(index_digests(&b), index_digests(&a));
    verify(&b);
    for f in walk_files(&dir.path().join("c2/blobs")) {
        let d = format!(
            "sha256:{}",
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
                std::fs::read(&f).unwrap()
            ))
        );
        assert!(f.ends_with(d.trim_start_matches("sha256:")), "{f:?}");
    }
}

#[test]
fn an_unreachable_cache_is_a_warning_and_a_malformed_one_bad_input() {
    let p = Project::new();
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let nowhere = format!("127.0.0.1:{port}/cache");
    let start = std::time::Instant::now();
    let out = ok(build(
        &p,
        &dir.path().join("c"),
        &dir.path().join("a"),
        &["--cache-from", &nowhere],
    ));
    let rep = json(&out);
    assert_eq!(rep["layers-built"], rep["layers-total"], "{rep:#}");
    let w = rep["cache-warnings"].as_array().unwrap();
    // The base's facts are asked once; then the cache is not asked again.
    assert_eq!(w.len(), 1, "{w:#?}");
    assert!(w[0].as_str().unwrap().contains("cannot reach"), "{w:#?}");
    assert!(stderr(&out).contains("warning: remote cache"));
    assert!(start.elapsed() < std::time::Duration::from_secs(60));
    verify(&dir.path().join("a"));

    // Writing to it fails the command after the store is committed, the report printed.
    let out = run(build(
        &p,
        &dir.path().join("c"),
        &dir.path().join("a2"),
        &["--cache-to", &nowhere],
    ));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let rep = json(&out);
    assert!(
        rep["cache-to"]["error"]
            .as_str()
            .unwrap()
            .contains("cannot reach"),
        "{rep:#}"
    );
    assert!(stderr(&out).contains("the images are built and in the store"));
    verify(&dir.path().join("a2"));

    for bad in [
        "127.0.0.1:5000/cache:latest",
        "127.0.0.1:5000/Cache",
        "h:99999/c",
    ] {
        for flag in ["--cache-from", "--cache-to"] {
            let out = run(build(
                &p,
                &dir.path().join("c"),
                &dir.path().join("x"),
                &[flag, bad],
            ));
            assert_eq!(out.status.code(), Some(2), "{flag} {bad}: {}", stderr(&out));
            assert!(stderr(&out).contains(flag), "{}", stderr(&out));
        }
    }
    assert!(!dir.path().join("x").exists(), "bad input builds nothing");
    let out = run(build(
        &p,
        &dir.path().join("c"),
        &dir.path().join("x"),
        &["--allow-private-key"],
    ));
    assert_eq!(
        out.status.code(),
        Some(2),
        "--allow-private-key needs --cache-to"
    );
}

#[test]
fn a_cold_runner_builds_the_lab_from_the_cache_without_mmdebstrap() {
    if !require("mmdebstrap") {
        return;
    }
    let Some(reg) = Registry::start(Auth::Anonymous) else {
        return;
    };
    let cache_ref = format!("{}/lab-cache", reg.host);
    // The shared lab store (built once per run, a no-op when tests/lab.rs or tests/share.rs
    // built it), its layers and base facts written to the cache as its build ends.
    let lab = repo().join("target/lab-test");
    let (store, lab_cache) = (lab.join("output"), lab.join("cache"));
    let mut c = strata(&lab_cache);
    c.current_dir(repo())
        .args(["build", "-q", "--json", "--insecure", "--allow-private-key"])
        .args(["--cache-to", &cache_ref, "-o"])
        .arg(&store);
    let warm = json(&ok(c));
    let total = warm["layers-total"].as_u64().unwrap();
    assert_eq!(warm["cache-to"]["layers-pushed"], total, "{warm:#}");
    assert_eq!(warm["cache-to"]["base-facts"], "pushed", "{warm:#}");

    // A runner with an empty cache, and an mmdebstrap that fails (and says it ran).
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let ran = dir.path().join("mmdebstrap-ran");
    let fake = bin.join("mmdebstrap");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\ntouch '{}'\necho 'mmdebstrap must not run' >&2\nexit 1\n",
            ran.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (cold, cold_cache) = (dir.path().join("out"), dir.path().join("cache"));
    let mut c = strata(&cold_cache);
    c.current_dir(repo())
        .env("PATH", &bin)
        .env("DOCKER_CONFIG", dir.path().join("no-docker-config"))
        .args([
            "build",
            "--json",
            "--insecure",
            "--cache-from",
            &cache_ref,
            "-o",
        ])
        .arg(&cold);
    let rep = json(&ok(c));
    assert!(!ran.exists(), "mmdebstrap ran");
    assert_eq!(rep["layers-built"], 0, "{rep:#}");
    assert_eq!(rep["layers-remote"], total, "{rep:#}");
    for name in ["base", "jdk-openjdk-11", "disk-packages"] {
        assert_eq!(layer(&rep, name)["from"], "remote", "{name}");
    }
    assert_eq!(index_digests(&cold), index_digests(&store));
    assert!(rootfs_in(&cold_cache).is_empty());
    verify(&cold);
}

/// A client of the test registry, through strata's own library.
fn client(reg: &Registry) -> strata::registry::Client {
    let opts = strata::registry::Options {
        insecure: true,
        ..Default::default()
    };
    strata::registry::Client::new(
        &reg.host,
        &opts,
        &strata::support::progress::Progress::new(true),
    )
    .unwrap()
}

/// Copies the base's facts entry of `from` into `to`, its identity replaced by `identity`:
/// facts that describe another base than the one the recipe makes here.
fn plant_base_facts(reg: &Registry, from: &str, to: &str, identity: &str) {
    use strata::build::remote::{BASE_ARTIFACT, BASE_MEDIA_TYPE};
    let c = client(reg);
    let tag = tags(reg, from)
        .into_iter()
        .find(|t| t.starts_with("b-"))
        .unwrap();
    let m = c.get_manifest(from, &tag).unwrap().unwrap();
    let m: Value = serde_json::from_slice(&m.bytes).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let digest: oci_spec::image::Digest = m["config"]["digest"].as_str().unwrap().parse().unwrap();
    let size = m["config"]["size"].as_u64().unwrap();
    let got = std::sync::atomic::AtomicU64::new(0);
    let path = c.fetch_blob(from, &digest, size, dir.path(), &got).unwrap();
    let mut facts: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    facts["identity"] = identity.into();
    let bytes = serde_json::to_vec(&facts).unwrap();
    let digest = strata::support::hash::sha256_of(&bytes);
    let path = dir.path().join("facts.json");
    std::fs::write(&path, &bytes).unwrap();
    c.push_blob(
        to,
        &strata::registry::BlobSource {
            digest: &digest,
            size: bytes.len() as u64,
            path: &path,
            mount_from: None,
        },
        &Default::default(),
    )
    .unwrap();
    let config = oci_spec::image::Descriptor::new(
        oci_spec::image::MediaType::Other(BASE_MEDIA_TYPE.into()),
        bytes.len() as u64,
        digest,
    );
    let manifest = strata::registry::manifest::artifact_manifest(
        BASE_ARTIFACT,
        &config,
        &[],
        None,
        &Default::default(),
    )
    .unwrap();
    c.put_manifest(
        to,
        &tag,
        strata::registry::manifest::OCI_MANIFEST,
        &manifest,
    )
    .unwrap();
}

#[test]
fn a_base_known_by_its_facts_is_made_here_only_when_a_layer_on_it_is_in_no_cache() {
    let Some(reg) = Registry::start(Auth::Anonymous) else {
        return;
    };
    let cache_ref = format!("{}/real", reg.host);
    let p = Project::new();
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let first = json(&ok(build(
        &p,
        &dir.path().join("c1"),
        &a,
        &["--cache-to", &cache_ref, "--allow-private-key"],
    )));
    let total = first["layers-total"].as_u64().unwrap();

    // Facts of another base under this base's key (read first): no layer on it anywhere, so
    // the base is made here; it is not the one the facts describe, so the layers are planned
    // again with its own identity, and then found in the second cache.
    plant_base_facts(&reg, "real", "other", &"0".repeat(64));
    let (b, c2) = (dir.path().join("b"), dir.path().join("c2"));
    let other = format!("{}/other", reg.host);
    let out = ok(build(
        &p,
        &c2,
        &b,
        &["--cache-from", &other, "--cache-from", &cache_ref],
    ));
    let rep = json(&out);
    assert!(
        stderr(&out).contains("is not the one the cache's facts describe"),
        "{}",
        stderr(&out)
    );
    assert_eq!(rep["layers-built"], 0, "{rep:#}");
    assert_eq!(rep["layers-remote"], total, "{rep:#}");
    assert_eq!(rootfs_in(&c2).len(), 1, "made here");
    assert_eq!(index_digests(&b), index_digests(&a));

    // The base layer's blob corrupt in the cache: the base is made here (the same base, so
    // every other layer still comes from the cache).
    let base_digest = layer(&first, "base")["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let data = reg.blob_data(&base_digest);
    let mut bytes = std::fs::read(&data).unwrap();
    let last = bytes.len() - 9;
    bytes[last] ^= 0x01;
    std::fs::write(&data, &bytes).unwrap();
    let (d, c3) = (dir.path().join("d"), dir.path().join("c3"));
    let out = ok(build(&p, &c3, &d, &["--cache-from", &cache_ref]));
    let rep = json(&out);
    assert!(
        stderr(&out).contains("no cache holds base: making the base's root filesystem here"),
        "{}",
        stderr(&out)
    );
    assert_eq!(rep["layers-built"], 1, "{rep:#}");
    assert_eq!(layer(&rep, "base")["from"], "built");
    assert_eq!(rep["layers-remote"], total - 1, "{rep:#}");
    assert_eq!(rootfs_in(&c3).len(), 1);
    assert_eq!(index_digests(&d), index_digests(&a));
    verify(&d);
}

#[test]
fn a_cache_behind_basic_auth_is_written_with_credentials_and_refused_without_them() {
    use common::registry::{PASSWORD, USER};
    let Some(reg) = Registry::start(Auth::Htpasswd) else {
        return;
    };
    let cache_ref = format!("{}/private/cache", reg.host);
    let p = Project::new();
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    // Credentials on stdin: written.
    let mut c = build(
        &p,
        &dir.path().join("c1"),
        &a,
        &["--cache-to", &cache_ref, "--allow-private-key"],
    );
    c.args(["--username", USER, "--password-stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    use std::io::Write;
    writeln!(child.stdin.take().unwrap(), "{PASSWORD}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let first = json(&out);
    let total = first["layers-total"].as_u64().unwrap();
    assert_eq!(first["cache-to"]["layers-pushed"], total, "{first:#}");

    // Without: the cache refuses to be read (a warning, built here) and to be written (exit 6
    // after the store is committed); the password is never shown.
    let b = dir.path().join("b");
    let out = run(build(
        &p,
        &dir.path().join("c2"),
        &b,
        &["--cache-from", &cache_ref, "--cache-to", &cache_ref],
    ));
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    let rep = json(&out);
    assert_eq!(rep["layers-built"], total, "{rep:#}");
    assert_eq!(
        rep["cache-warnings"].as_array().unwrap().len(),
        1,
        "{rep:#}"
    );
    assert!(
        rep["cache-warnings"][0].as_str().unwrap().contains("401"),
        "{rep:#}"
    );
    assert!(rep["cache-to"]["error"].as_str().unwrap().contains("401"));
    assert_eq!(index_digests(&b), index_digests(&a));
    // With them from the environment: read.
    let d = dir.path().join("d");
    let mut c = build(
        &p,
        &dir.path().join("c3"),
        &d,
        &["--cache-from", &cache_ref],
    );
    c.env("STRATA_REGISTRY_USER", USER)
        .env("STRATA_REGISTRY_PASSWORD", PASSWORD);
    let out = ok(c);
    let rep = json(&out);
    assert_eq!(rep["layers-built"], 0, "{rep:#}");
    for o in [&out.stdout, &out.stderr] {
        assert!(!String::from_utf8_lossy(o).contains(PASSWORD));
    }
}
