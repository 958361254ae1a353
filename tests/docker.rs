//! `strata load` and `strata run` against a real Docker engine (Debian's docker.io 20.10, API
//! 1.41, private to this test binary: `common::docker`), with the lab's real 3.3.6 image from
//! the shared lab store. strata runs with `docker` absent from its PATH; the `docker` CLI is
//! the independent reader. Bad input (no engine, an unknown image, a zstd image for 20.10, an
//! archive the engine refuses) with tiny stores.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::docker::Engine;
use common::proxy::{Fault, Proxy, Rule};
use common::*;
use serde_json::Value;

const IMAGE: &str = "hadoop-lab:3.3.6";
const PUBLIC: &str = "hadoop-lab-public:3.3.6";
/// No strata call here may take longer (liveness, not speed).
const LIVENESS: Duration = Duration::from_secs(300);

struct Lab {
    store: PathBuf,
    cache: PathBuf,
    manifest: String,
    config: Value,
    config_digest: String,
}

/// The lab store (built once per run, shared with tests/lab.rs: a no-op when it ran first).
fn lab() -> Option<&'static Lab> {
    static LAB: OnceLock<Option<Lab>> = OnceLock::new();
    LAB.get_or_init(|| {
        if !require("mmdebstrap") {
            return None;
        }
        let (store, cache) = lab_store();
        let manifest = index_digests(&store)[IMAGE].clone();
        let m = blob_json(&store, &manifest);
        let config_digest = m["config"]["digest"].as_str().unwrap().to_string();
        Some(Lab {
            config: blob_json(&store, &config_digest),
            config_digest,
            manifest,
            store,
            cache,
        })
    })
    .as_ref()
}

/// Runs a command, killing it (and failing) after [`LIVENESS`].
fn run_bounded(mut c: Command) -> Output {
    let dbg = format!("{c:?}");
    let child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawns");
    let id = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(LIVENESS) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(id.to_string()).status();
            panic!("{dbg} did not end within {LIVENESS:?}");
        }
    }
}

fn ok_bounded(c: Command) -> Output {
    let dbg = format!("{c:?}");
    let out = run_bounded(c);
    assert!(
        out.status.success(),
        "{dbg} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn load_puts_the_image_under_its_name_with_the_stores_layers_and_docker_runs_it() {
    let (Some(lab), Some(engine)) = (lab(), Engine::shared()) else {
        return;
    };
    engine.remove_images(&[IMAGE]);
    assert!(engine.image(IMAGE).is_none());
    let mut c = engine.strata(&lab.cache, &lab.store);
    c.args(["load", IMAGE, "--json"]);
    let rep = json(&ok_bounded(c));
    assert!(
        rep["engine"].as_str().unwrap().contains("API 1.41"),
        "{rep:#}"
    );
    assert_eq!(rep["images"][0]["image"], IMAGE);
    assert_eq!(rep["images"][0]["id"], lab.config_digest.as_str());
    assert_eq!(rep["images"][0]["manifest"], lab.manifest.as_str());
    assert!(rep["bytes"].as_u64().unwrap() > 50 << 20, "{rep:#}");
    assert!(rep["seconds"].as_f64().unwrap() > 0.0);

    // The docker CLI's view: the name, the id, the layers' diff_ids, the config.
    let img = engine.image(IMAGE).expect("the engine has the image");
    assert_eq!(img["Id"], lab.config_digest.as_str());
    assert!(
        img["RepoTags"]
            .as_array()
            .unwrap()
            .contains(&Value::from(IMAGE)),
        "{:#}",
        img["RepoTags"]
    );
    assert_eq!(img["RootFS"]["Layers"], lab.config["rootfs"]["diff_ids"]);
    assert_eq!(img["Config"]["Cmd"], lab.config["config"]["Cmd"]);
    let out = engine.docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        IMAGE,
        "sh",
        "-c",
        "echo \"v=$HADOOP_VERSION\"; id -un 1000; /opt/java/bin/java -version 2>&1 | head -n 1",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("v=3.3.6\nhadoop\n"), "{text}");
    assert!(text.contains("openjdk version \"11."), "{text}");

    // --all: every image of the store (the one already there included), each under its name.
    let mut c = engine.strata(&lab.cache, &lab.store);
    c.args(["load", "--all", "--json"]);
    let rep = json(&ok_bounded(c));
    let digests = index_digests(&lab.store);
    let loaded = rep["images"].as_array().unwrap();
    assert_eq!(loaded.len(), digests.len(), "{rep:#}");
    for i in loaded {
        let name = i["image"].as_str().unwrap();
        let config = blob_json(&lab.store, &digests[name])["config"]["digest"].clone();
        let img = engine
            .image(name)
            .unwrap_or_else(|| panic!("{name} not in the engine"));
        assert_eq!(img["Id"], config, "{name}");
        assert_eq!(i["id"], config, "{name}");
    }
    let names: Vec<&str> = digests.keys().map(String::as_str).collect();
    engine.remove_images(&names);
}

#[test]
fn run_loads_when_missing_streams_the_output_passes_the_exit_code_and_removes_the_container() {
    let (Some(lab), Some(engine)) = (lab(), Engine::shared()) else {
        return;
    };
    engine.remove_images(&[IMAGE]);
    let before = engine.strata_containers();
    let mut c = engine.strata(&lab.cache, &lab.store);
    c.args([
        "run",
        IMAGE,
        "--",
        "sh",
        "-c",
        "echo out-line; echo err-line >&2; java -version 2>&1 | head -n 1; exit 7",
    ]);
    let out = run_bounded(c);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("out-line\n"), "{text}");
    assert!(text.contains("openjdk version"), "{text}");
    assert!(stderr(&out).contains("err-line"), "{}", stderr(&out));
    assert!(stderr(&out).contains("loading hadoop-lab:3.3.6"));
    assert_eq!(
        engine.image(IMAGE).expect("loaded first")["Id"],
        lab.config_digest.as_str()
    );
    assert_eq!(
        engine.strata_containers(),
        before,
        "the container is removed"
    );

    // The image is there now: no load; exit 0; --json keeps stdout for the document.
    let mut c = engine.strata(&lab.cache, &lab.store);
    c.args([
        "run",
        IMAGE,
        "--json",
        "--",
        "sh",
        "-c",
        "echo \"net=$(readlink /proc/self/ns/net)\"",
    ]);
    let out = ok_bounded(c);
    let rep = json(&out);
    assert_eq!(rep["loaded"], false, "{rep:#}");
    assert_eq!(rep["exit-code"], 0);
    // The host network: the container is in this process' network namespace.
    let host_net = std::fs::read_link("/proc/self/ns/net").unwrap();
    assert!(
        stderr(&out).contains(&format!("net={}\n", host_net.display())),
        "{} vs {host_net:?}",
        stderr(&out)
    );
}

/// A Hadoop release directory whose `bin/hadoop` answers `hadoop version` as `version`.
fn fake_release(dir: &Path, version: &str, says: &str) {
    let bin = dir.join(format!("hadoop-{version}/bin"));
    std::fs::create_dir_all(&bin).unwrap();
    let script =
        format!("#!/bin/sh\necho \"Hadoop {says}\"\necho \"Source code repository test\"\n");
    std::fs::write(bin.join("hadoop"), script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(bin.join("hadoop"), std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn smoke_checks_the_running_container_records_it_and_inspect_shows_it() {
    let (Some(lab), Some(engine)) = (lab(), Engine::shared()) else {
        return;
    };
    // A throw-away copy of the store's records: the smoke record is written beside them.
    let releases = tempfile::tempdir().unwrap();
    fake_release(releases.path(), "3.3.6", "3.3.6");
    let mut c = engine.strata(&lab.cache, &lab.store);
    c.args(["run", IMAGE, "--smoke", "--json", "--dist"])
        .arg(releases.path());
    let rep = json(&ok_bounded(c));
    let smoke = &rep["smoke"];
    assert_eq!(smoke["passed"], true, "{rep:#}");
    for k in ["user", "env", "java", "hadoop", "configs", "shell-configs"] {
        assert_eq!(smoke["checks"][k], "ok", "{k}: {rep:#}");
    }
    assert_eq!(smoke["manifest"], lab.manifest.as_str());
    assert!(
        rep["mounts"][0]
            .as_str()
            .unwrap()
            .contains("/srv/hadoop-dist (ro)")
    );
    let mut c = strata(&lab.cache);
    c.args(["inspect", IMAGE, "--json", "-o"]).arg(&lab.store);
    let i = json(&ok(c));
    assert_eq!(i["smoke"]["passed"], true);
    assert_eq!(i["smoke"]["manifest"], lab.manifest.as_str());

    // A release that is not the image's version fails the smoke test (exit 1), and the
    // record (and inspect) say so.
    let wrong = tempfile::tempdir().unwrap();
    fake_release(wrong.path(), "3.3.6", "3.3.5");
    let mut c = engine.strata(&lab.cache, &lab.store);
    c.args(["run", IMAGE, "--smoke", "--dist"])
        .arg(wrong.path());
    let out = run_bounded(c);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stdout(&out).contains("FAILED"), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("hadoop: 3.3.5 (want 3.3.6)"),
        "{}",
        stderr(&out)
    );
    let mut c = strata(&lab.cache);
    c.args(["inspect", IMAGE, "-o"]).arg(&lab.store);
    let text = stdout(&ok(c));
    assert!(text.contains("Smoke test in a container: FAILED"), "{text}");

    // Without the release volume, Hadoop is absent: not a failure of the image.
    let mut c = engine.strata(&lab.cache, &lab.store);
    c.args(["run", IMAGE, "--smoke", "--json"]);
    let rep = json(&ok_bounded(c));
    assert_eq!(rep["smoke"]["checks"]["hadoop"], "absent", "{rep:#}");
    assert!(
        rep["notes"][0]
            .as_str()
            .unwrap()
            .contains("LABEL=hadoop-dist"),
        "{rep:#}"
    );
    assert!(engine.strata_containers().is_empty());
}

#[test]
fn a_detached_node_runs_on_the_host_network_with_the_release_volume() {
    let (Some(lab), Some(engine)) = (lab(), Engine::shared()) else {
        return;
    };
    let releases = tempfile::tempdir().unwrap();
    fake_release(releases.path(), "3.3.6", "3.3.6");
    let mut c = engine.strata(&lab.cache, &lab.store);
    c.args([
        "run",
        IMAGE,
        "--json",
        "--name",
        "strata-test-node",
        "--dist",
    ])
    .arg(releases.path())
    .args(["-e", "STRATA_ROLES=none-here"]);
    let rep = json(&ok_bounded(c));
    let id = rep["container"]
        .as_str()
        .expect("a container id")
        .to_string();
    let out = engine.docker(&["container", "inspect", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    let ci: Value = serde_json::from_slice(&out.stdout).unwrap();
    let ci = &ci[0];
    assert_eq!(ci["Name"], "/strata-test-node");
    assert_eq!(ci["HostConfig"]["NetworkMode"], "host");
    let m = &ci["Mounts"][0];
    assert_eq!(m["Destination"], "/srv/hadoop-dist");
    assert_eq!(m["RW"], false);
    assert_eq!(
        m["Source"],
        releases.path().canonicalize().unwrap().to_str().unwrap()
    );
    assert!(
        ci["Config"]["Env"]
            .as_array()
            .unwrap()
            .contains(&Value::from("STRATA_ROLES=none-here"))
    );
    let out = engine.docker(&["rm", "-f", &id]);
    assert!(out.status.success());
}

#[test]
fn an_image_taking_its_key_at_boot_gets_the_key_mounted_and_installed() {
    let (Some(lab), Some(engine)) = (lab(), Engine::shared()) else {
        return;
    };
    let dir = repo().join("target/lab-test");
    let store = dir.join("public-output");
    let recipe = lab_public_recipe(&dir);
    let mut c = strata(&lab.cache);
    c.arg("build").arg(&recipe).args(["-q", "-o"]).arg(&store);
    ok(c);
    let mut c = engine.strata(&lab.cache, &store);
    c.args(["run", PUBLIC, "--smoke", "--json"]);
    let rep = json(&ok_bounded(c));
    assert_eq!(rep["smoke"]["checks"]["key"], "ok", "{rep:#}");
    let mount = rep["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|m| {
            m.as_str()
                .filter(|m| m.contains("/run/secrets/strata-ssh-key"))
        })
        .expect("the key is mounted");
    assert!(mount.ends_with("(ro)"), "{mount}");
    // The key itself never appears in the report.
    let key = std::fs::read_to_string(fixture_key()).unwrap();
    let body = key.lines().nth(1).unwrap();
    assert!(!rep.to_string().contains(body));
    // It is not in the image: a container without the mount has no private key.
    let out = engine.docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        PUBLIC,
        "sh",
        "-c",
        "ls /home/hadoop/.ssh/; test ! -e /home/hadoop/.ssh/id_ed25519",
    ]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    engine.remove_images(&[PUBLIC]);
}

#[test]
fn docker_host_over_tcp_is_honoured() {
    let Some(engine) = Engine::shared() else {
        return;
    };
    let (p, out) = tiny_store(|s| s);
    engine.remove_images(&["tiny:3.3.6"]);
    let mut c = engine.strata(&p.root().join("cache"), &out);
    c.env("DOCKER_HOST", &engine.tcp_host)
        .args(["load", "tiny:3.3.6", "--json"]);
    let rep = json(&ok_bounded(c));
    assert!(
        rep["engine"].as_str().unwrap().ends_with(&engine.tcp_host),
        "{rep:#}"
    );
    let config = manifest(&out, "tiny:3.3.6")["config"]["digest"].clone();
    // Seen through the unix socket: the same engine.
    assert_eq!(engine.image("tiny:3.3.6").expect("loaded")["Id"], config);
    engine.remove_images(&["tiny:3.3.6"]);
}

#[test]
fn a_stalled_or_cut_load_fails_clearly_within_its_timeout() {
    let Some(engine) = Engine::shared() else {
        return;
    };
    let (p, out) = tiny_store(|s| s);
    engine.remove_images(&["tiny:3.3.6"]);
    // Faults a real engine will not produce on demand, from the proxy in front of it.
    let upstream = engine
        .tcp_host
        .trim_start_matches("tcp://")
        .parse()
        .unwrap();
    let proxy = Proxy::start(upstream);
    let host = format!("tcp://{}", proxy.addr());
    proxy.add(Rule::new(
        "POST",
        "/images/load",
        Fault::StallFor(Duration::from_secs(120)),
    ));
    let mut c = engine.strata(&p.root().join("cache"), &out);
    c.env("DOCKER_HOST", &host)
        .args(["load", "tiny:3.3.6", "--timeout", "3"]);
    let start = Instant::now();
    let o = run_bounded(c);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("did not take the archive within 3s (--timeout SECS for more)"),
        "{}",
        stderr(&o)
    );
    assert!(start.elapsed() < Duration::from_secs(60));
    proxy.clear();
    proxy.add(Rule::new(
        "POST",
        "/images/load",
        Fault::CutAfterRequestBytes(4096),
    ));
    let mut c = engine.strata(&p.root().join("cache"), &out);
    c.env("DOCKER_HOST", &host).args(["load", "tiny:3.3.6"]);
    let o = run_bounded(c);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("the connection to the engine failed during the load"),
        "{}",
        stderr(&o)
    );
    assert_eq!(proxy.faults_applied(), 2);
    assert!(engine.image("tiny:3.3.6").is_none());
}

// ---------------------------------------------------------------------------------- bad input

fn tiny_store(edit: impl FnOnce(String) -> String) -> (Project, PathBuf) {
    let p = Project::with_versions(r#"["3.3.6"]"#);
    p.edit_recipe(edit);
    let out = p.root().join("out");
    ok(p.build(&out));
    (p, out)
}

#[test]
fn no_engine_is_a_clear_error_naming_docker_host_without_hanging() {
    let (p, out) = tiny_store(|s| s);
    let dir = tempfile::tempdir().unwrap();
    // A socket path that does not exist; a socket nobody listens on; a TCP port refused.
    let dead = dir.path().join("dead.sock");
    drop(std::os::unix::net::UnixListener::bind(&dead).unwrap());
    let hosts = [
        format!("unix://{}", dir.path().join("missing.sock").display()),
        format!("unix://{}", dead.display()),
        "tcp://127.0.0.1:1".to_string(),
    ];
    for host in hosts {
        for args in [
            &["load", "tiny:3.3.6"][..],
            &["run", "tiny:3.3.6", "--", "true"],
        ] {
            let mut c = strata(&p.root().join("cache"));
            c.env("DOCKER_HOST", &host).arg("-o").arg(&out).args(args);
            let start = Instant::now();
            let o = run_bounded(c);
            assert_eq!(o.status.code(), Some(1), "{host} {args:?}: {}", stderr(&o));
            let e = stderr(&o);
            assert!(
                e.contains("no Docker engine answers at") && e.contains(&host),
                "{e}"
            );
            assert!(e.contains("DOCKER_HOST") && e.contains("dockerd"), "{e}");
            assert!(start.elapsed() < Duration::from_secs(60), "{host}: slow");
        }
    }
    // A scheme strata does not speak is bad input.
    let mut c = strata(&p.root().join("cache"));
    c.env("DOCKER_HOST", "ssh://me@host")
        .args(["load", "tiny:3.3.6", "-o"])
        .arg(&out);
    let o = run(c);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn an_image_not_in_the_store_is_exit_2_with_the_nearest_name() {
    let (p, out) = tiny_store(|s| s);
    for args in [
        &["load", "tiny:3.3.7"][..],
        &["run", "tiny:3.3.7", "--", "true"],
        &["run", "tiny:3.3.7", "--smoke"],
    ] {
        let mut c = strata(&p.root().join("cache"));
        // Whatever the engine, the name is checked first.
        c.env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
            .arg("-o")
            .arg(&out)
            .args(args);
        let o = run(c);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("Did you mean tiny:3.3.6?"),
            "{}",
            stderr(&o)
        );
    }
    let mut c = strata(&p.root().join("cache"));
    c.args(["load", "-o"]).arg(&out);
    let o = run(c);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--all"), "{}", stderr(&o));
}

#[test]
fn a_zstd_image_is_refused_by_name_on_docker_20_before_anything_is_sent() {
    let Some(engine) = Engine::shared() else {
        return;
    };
    let (p, out) = tiny_store(|s| {
        s.replacen(
            "epoch = 1700000000\n",
            "epoch = 1700000000\ncompression = \"zstd\"\n",
            1,
        )
    });
    let m = manifest(&out, "tiny:3.3.6");
    assert!(
        m["layers"][0]["mediaType"]
            .as_str()
            .unwrap()
            .ends_with("+zstd")
    );
    let mut c = engine.strata(&p.root().join("cache"), &out);
    c.args(["load", "tiny:3.3.6"]);
    let o = run_bounded(c);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("zstd") && e.contains("version 23") && e.contains("Docker 20.10"),
        "{e}"
    );
    assert!(e.contains("compression = \"gzip\""), "{e}");
    assert!(engine.image("tiny:3.3.6").is_none());
}

#[test]
fn an_archive_the_engine_refuses_fails_with_the_engines_message() {
    let Some(engine) = Engine::shared() else {
        return;
    };
    let (p, out) = tiny_store(|s| s);
    // Damage the top layer's gzip stream in place (same size): the engine cannot unpack it.
    let m = manifest(&out, "tiny:3.3.6");
    let top = m["layers"].as_array().unwrap().last().unwrap()["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    let path = out.join("blobs/sha256").join(&top);
    let mut data = std::fs::read(&path).unwrap();
    let mid = data.len() / 2;
    for b in &mut data[mid..mid + 16] {
        *b ^= 0xff;
    }
    std::fs::write(&path, &data).unwrap();
    let mut c = engine.strata(&p.root().join("cache"), &out);
    c.args(["load", "tiny:3.3.6"]);
    let o = run_bounded(c);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("the engine refused the load: "), "{e}");
    // Debian's Docker 20.10 says so in its own words.
    assert!(e.contains("Error processing tar file"), "{e}");
    assert!(!e.contains("timeout"), "{e}");
    assert!(engine.image("tiny:3.3.6").is_none());
}
