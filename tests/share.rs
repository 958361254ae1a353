//! The share tests: `strata push` and `strata pull` against a real registry (Debian's
//! docker-registry, distribution 2.8, started by `tests/registry/up` on 127.0.0.1), read
//! independently by skopeo; anonymous, htpasswd basic auth and bearer tokens from a token
//! issuer the test starts. strata itself runs with a PATH that has neither skopeo nor docker.
//! Faults a real registry will not produce on demand (a connection cut mid-blob, 503s on a
//! manifest push, a 202 answer to a mount) come from the proxy in `common::proxy`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use common::proxy::{Fault, Proxy, Rule};
use common::registry::{Auth, PASSWORD, Registry, USER};
use common::*;
use serde_json::Value;

const IMAGE: &str = "hadoop-lab:3.3.6";

/// A PATH for strata's own push and pull: an empty directory (no skopeo, no docker; push and
/// pull need no tool).
fn bare_path() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().unwrap()).path()
}

/// strata on `store`, with no tool on PATH and no registry credentials from the environment.
fn share(store: &Path, args: &[&str]) -> Command {
    let mut c = strata(&store.join("no-cache"));
    c.env("PATH", bare_path())
        .env_remove("STRATA_REGISTRY_USER")
        .env_remove("STRATA_REGISTRY_PASSWORD")
        .env("DOCKER_CONFIG", store.join("no-docker-config"))
        .arg("-o")
        .arg(store)
        .args(args);
    c
}

/// Runs with `input` on stdin.
fn with_stdin(mut c: Command, input: &str) -> Output {
    use std::io::Write;
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// `skopeo inspect --raw` digest of a tag, as an independent reader sees it.
fn skopeo_digest(reference: &str) -> String {
    let out = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--format", "{{.Digest}}"])
        .arg(format!("docker://{reference}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "skopeo: {}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn names(store: &Path) -> Vec<String> {
    let mut c = strata(&store.join("no-cache"));
    c.args(["ls", "--json", "-o"]).arg(store);
    let mut v: Vec<String> = json(&ok(c))
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

struct Lab {
    store: PathBuf,
    disk_sha256: String,
}

/// The lab store (built once per run, shared with tests/lab.rs and tests/publish.rs: a no-op
/// when they ran first) and 3.3.6's disk.
fn lab() -> Option<&'static Lab> {
    static LAB: OnceLock<Option<Lab>> = OnceLock::new();
    LAB.get_or_init(|| {
        if !require("mmdebstrap")
            || !require("skopeo")
            || !strata::disk::TOOLS.iter().all(|t| require(t))
        {
            return None;
        }
        let (store, cache) = lab_store();
        let disk = lab_disk(&store, &cache, IMAGE);
        Some(Lab {
            store,
            disk_sha256: disk["sha256"].as_str().unwrap().to_string(),
        })
    })
    .as_ref()
}

#[test]
fn lab_push_all_is_what_skopeo_sees_a_second_push_sends_nothing_and_pull_gives_the_same_disk() {
    let Some(lab) = lab() else { return };
    let Some(reg) = Registry::start(Auth::Anonymous) else {
        return;
    };
    let repo_ref = format!("{}/team/hadoop-lab", reg.host);
    let push = |extra: &[&str]| {
        let mut args = vec![
            "push",
            "--all",
            &repo_ref,
            "--insecure",
            "--allow-private-key",
            "--json",
        ];
        args.extend_from_slice(extra);
        json(&ok(share(&lab.store, &args)))
    };
    let first = push(&[]);
    let index = index_digests(&lab.store);
    assert_eq!(first["images"].as_array().unwrap().len(), index.len());
    assert!(first["blobs"]["sent"].as_u64().unwrap() > 0, "{first:#}");
    for (name, digest) in &index {
        let tag = name.rsplit_once(':').unwrap().1;
        // skopeo, an independent reader, sees the store's manifest digest under both tags.
        assert_eq!(
            &skopeo_digest(&format!("{repo_ref}:{tag}")),
            digest,
            "{name}"
        );
        let immutable = format!("{tag}-{}", &digest[7..19]);
        assert_eq!(
            &skopeo_digest(&format!("{repo_ref}:{immutable}")),
            digest,
            "{name}"
        );
    }
    assert!(
        index.contains_key("hadoop-lab:base"),
        "the shared part is an image too"
    );

    let puts_before = reg.count("PUT", "/blobs/uploads/") + reg.count("PATCH", "/blobs/uploads/");
    let second = push(&[]);
    assert_eq!(second["blobs"]["sent"], 0, "{second:#}");
    assert_eq!(second["blobs"]["bytes-sent"], 0, "{second:#}");
    assert_eq!(second["manifests"]["pushed"], 0, "{second:#}");
    assert_eq!(
        reg.count("PUT", "/blobs/uploads/") + reg.count("PATCH", "/blobs/uploads/"),
        puts_before,
        "the second push sent no blob"
    );

    // Pull every image into an empty directory: a full store.
    let dir = tempfile::tempdir().unwrap();
    let pulled = dir.path().join("pulled");
    let refs: Vec<String> = index
        .keys()
        .map(|n| format!("{repo_ref}:{}", n.rsplit_once(':').unwrap().1))
        .collect();
    let mut args = vec!["pull", "--insecure", "--json"];
    args.extend(refs.iter().map(String::as_str));
    let rep = json(&ok(share(&pulled, &args)));
    assert!(
        rep["images"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["extras"] == true),
        "{rep:#}"
    );
    assert_eq!(
        index_digests(&pulled),
        index,
        "same names, same manifest digests"
    );
    assert_eq!(names(&pulled), names(&lab.store));
    let mut c = strata(&dir.path().join("cache"));
    c.args(["verify", "-o"]).arg(&pulled);
    ok(c);
    for args in [
        &["report", "--json"][..],
        &["inspect", IMAGE],
        &["export", IMAGE, "--oci-archive"],
    ] {
        let mut c = strata(&dir.path().join("cache"));
        c.args(args);
        if args[0] == "export" {
            c.arg(dir.path().join("3.3.6.tar"));
        }
        c.arg("-o").arg(&pulled);
        ok(c);
    }
    let mut c = strata(&dir.path().join("cache"));
    c.args(["disk", IMAGE, "-q", "--json", "-o"]).arg(&pulled);
    ok(c);
    let rec: Value = serde_json::from_slice(
        &std::fs::read(pulled.join("disks/hadoop-lab_3.3.6.disk.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        rec["sha256"],
        lab.disk_sha256.as_str(),
        "pull then disk gives CI's qcow2"
    );
    // A second pull fetches nothing.
    let again = json(&ok(share(&pulled, &args)));
    assert_eq!(again["blobs-fetched"], 0, "{again:#}");
}

/// A tiny store of two versions (fast to build, no disk tools).
fn tiny() -> (Project, PathBuf) {
    let project = Project::new();
    let store = project.root().join("output");
    ok(project.build(&store));
    (project, store)
}

fn push_json(store: &Path, target: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "push",
        "--all",
        target,
        "--insecure",
        "--allow-private-key",
        "--json",
    ];
    args.extend_from_slice(extra);
    run(share(store, &args))
}

#[test]
fn a_cut_blob_upload_is_retried_and_a_second_run_resends_nothing() {
    let Some(reg) = Registry::start(Auth::Anonymous) else {
        return;
    };
    let (_p, store) = tiny();
    let proxy = Proxy::start(reg.host.parse().unwrap());
    let host = proxy.url().trim_start_matches("http://").to_string();
    // The first blob upload is cut after 100 bytes of its body.
    proxy.add(Rule::new("PUT", "/blobs/uploads/", Fault::CutAfterRequestBytes(100)).times(1));
    let out = push_json(&store, &format!("{host}/tiny"), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rep = json(&out);
    let blobs = rep["blobs"]["sent"].as_u64().unwrap();
    assert_eq!(proxy.faults_applied(), 1);
    let puts = |p: &Proxy| {
        p.requests()
            .iter()
            .filter(|s| s.method == "PUT" && s.target.contains("/blobs/uploads/"))
            .count() as u64
    };
    assert_eq!(puts(&proxy), blobs + 1, "only the cut blob was sent twice");
    assert!(
        stderr(&out).contains("sending it again"),
        "{}",
        stderr(&out)
    );
    // Every tag is there, as skopeo reads it.
    if require("skopeo") {
        for (name, digest) in index_digests(&store) {
            let tag = name.rsplit_once(':').unwrap().1;
            assert_eq!(skopeo_digest(&format!("{}/tiny:{tag}", reg.host)), digest);
        }
    }
    // A second run sends no blob at all.
    let before = puts(&proxy);
    let again = json(&ok(share(
        &store,
        &[
            "push",
            "--all",
            &format!("{host}/tiny"),
            "--insecure",
            "--allow-private-key",
            "--json",
        ],
    )));
    assert_eq!(again["blobs"]["sent"], 0);
    assert_eq!(puts(&proxy), before);
    // Pulls into one store, one after the other: the second merges into the first's index and
    // record (shared blobs are not fetched again).
    let dir = tempfile::tempdir().unwrap();
    ok(share(
        dir.path(),
        &["pull", "--insecure", &format!("{}/tiny:2.10.2", reg.host)],
    ));
    let second = json(&ok(share(
        dir.path(),
        &[
            "pull",
            "--insecure",
            "--json",
            &format!("{}/tiny:3.3.6", reg.host),
        ],
    )));
    assert!(second["blobs-present"].as_u64().unwrap() > 0, "{second:#}");
    let all = index_digests(&store);
    let pulled = index_digests(dir.path());
    assert_eq!(pulled.len(), 2);
    for (name, digest) in &pulled {
        assert_eq!(&all[name], digest);
    }
    let mut c = strata(&dir.path().join("cache"));
    c.args(["verify", "-o"]).arg(dir.path());
    ok(c);
    let mut c = strata(&dir.path().join("cache"));
    c.args(["inspect", "tiny:2.10.2", "-o"]).arg(dir.path());
    ok(c);
}

#[test]
fn a_manifest_push_answered_503_is_retried_and_a_lasting_one_fails_then_a_rerun_completes() {
    let Some(reg) = Registry::start(Auth::Anonymous) else {
        return;
    };
    let (_p, store) = tiny();
    let proxy = Proxy::start(reg.host.parse().unwrap());
    let host = proxy.url().trim_start_matches("http://").to_string();
    proxy.add(Rule::new("PUT", "/manifests/", Fault::Status503Times(2)));
    let out = push_json(&store, &format!("{host}/tiny"), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(proxy.faults_applied(), 2);

    // A registry that keeps answering 503: a clear failure, exit 1.
    proxy.add(Rule::new("PUT", "/manifests/", Fault::Status503Times(1000)));
    let out = push_json(&store, &format!("{host}/other"), &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("503") && err.contains("/manifests/"), "{err}");
    // The rerun, the registry healthy again: blobs are there, only manifests go.
    proxy.clear();
    let before = proxy.requests().len();
    let rep = json(&ok(share(
        &store,
        &[
            "push",
            "--all",
            &format!("{host}/other"),
            "--insecure",
            "--allow-private-key",
            "--json",
        ],
    )));
    assert_eq!(rep["blobs"]["sent"], 0, "{rep:#}");
    assert!(rep["manifests"]["pushed"].as_u64().unwrap() > 0);
    let resent = proxy.requests()[before..]
        .iter()
        .filter(|s| s.target.contains("/blobs/uploads/"))
        .count();
    assert_eq!(resent, 0, "no upload session on the rerun");
}

#[test]
fn a_mount_answered_202_uses_the_opened_upload_and_a_201_mount_sends_nothing() {
    let Some(reg) = Registry::start(Auth::Anonymous) else {
        return;
    };
    let (_p, store) = tiny();
    // One image under a tag of one's choice, and its immutable tag; pulled back by digest.
    let digest = index_digests(&store)["tiny:3.3.6"].clone();
    let rep = json(&ok(share(
        &store,
        &[
            "push",
            "tiny:3.3.6",
            &format!("{}/single:candidate", reg.host),
            "--insecure",
            "--allow-private-key",
            "--json",
        ],
    )));
    let immutable = format!("candidate-{}", &digest[7..19]);
    assert_eq!(
        rep["images"][0]["tags"],
        serde_json::json!(["candidate", immutable])
    );
    if require("skopeo") {
        for tag in ["candidate", immutable.as_str()] {
            assert_eq!(skopeo_digest(&format!("{}/single:{tag}", reg.host)), digest);
        }
    }
    let by_digest = tempfile::tempdir().unwrap();
    ok(share(
        by_digest.path(),
        &[
            "pull",
            "--insecure",
            &format!("{}/single@{digest}", reg.host),
        ],
    ));
    assert_eq!(index_digests(by_digest.path())["tiny:3.3.6"], digest);

    ok(share(
        &store,
        &[
            "push",
            "--all",
            &format!("{}/src", reg.host),
            "--insecure",
            "--allow-private-key",
        ],
    ));
    // A real mount: 201, nothing sent.
    let rep = json(&ok(share(
        &store,
        &[
            "push",
            "--all",
            &format!("{}/mounted", reg.host),
            "--mount-from",
            "src",
            "--insecure",
            "--allow-private-key",
            "--json",
        ],
    )));
    assert_eq!(rep["blobs"]["sent"], 0, "{rep:#}");
    assert!(rep["blobs"]["mounted"].as_u64().unwrap() > 0, "{rep:#}");
    // A mount the registry cannot do (the proxy names a repository without the blobs): it
    // answers 202 with an upload session, which strata uses — one POST per blob.
    let proxy = Proxy::start(reg.host.parse().unwrap());
    let host = proxy.url().trim_start_matches("http://").to_string();
    proxy.add(Rule::new(
        "POST",
        "from=src",
        Fault::RewriteTarget {
            from: "from=src".into(),
            to: "from=nowhere".into(),
        },
    ));
    let rep = json(&ok(share(
        &store,
        &[
            "push",
            "--all",
            &format!("{host}/fresh"),
            "--mount-from",
            "src",
            "--insecure",
            "--allow-private-key",
            "--json",
        ],
    )));
    let sent = rep["blobs"]["sent"].as_u64().unwrap();
    assert!(sent > 0 && rep["blobs"]["mounted"] == 0, "{rep:#}");
    let reqs = proxy.requests();
    let posts = reqs.iter().filter(|s| s.method == "POST").count() as u64;
    assert_eq!(posts, sent, "each 202 session was used, none opened again");
    assert_eq!(proxy.faults_applied() as u64, sent);
    // What the registry holds is right: pull it back and verify.
    let dir = tempfile::tempdir().unwrap();
    let refs: Vec<String> = index_digests(&store)
        .keys()
        .map(|n| format!("{}/fresh:{}", reg.host, n.rsplit_once(':').unwrap().1))
        .collect();
    let mut args = vec!["pull", "--insecure"];
    args.extend(refs.iter().map(String::as_str));
    ok(share(dir.path(), &args));
    assert_eq!(index_digests(dir.path()), index_digests(&store));
    let mut c = strata(&dir.path().join("cache"));
    c.args(["verify", "-o"]).arg(dir.path());
    ok(c);
}

#[test]
fn chunked_uploads_send_patches_and_pull_back_the_same_bytes() {
    let Some(reg) = Registry::start(Auth::Anonymous) else {
        return;
    };
    let (_p, store) = tiny();
    let rep = json(&ok(share(
        &store,
        &[
            "push",
            "--all",
            &format!("{}/chunked", reg.host),
            "--chunk-size",
            "4KiB",
            "--insecure",
            "--allow-private-key",
            "--json",
        ],
    )));
    assert!(rep["blobs"]["sent"].as_u64().unwrap() > 0);
    let biggest = rep["blobs"]["bytes-total"].as_u64().unwrap();
    assert!(biggest > 8192, "the tiny store has a blob over two chunks");
    assert!(
        reg.count("PATCH", "/blobs/uploads/") > rep["blobs"]["sent"].as_u64().unwrap() as usize,
        "more PATCHes than blobs: some blob went in several chunks"
    );
    let dir = tempfile::tempdir().unwrap();
    let (name, digest) = index_digests(&store).into_iter().next_back().unwrap();
    let tag = name.rsplit_once(':').unwrap().1.to_string();
    ok(share(
        dir.path(),
        &["pull", "--insecure", &format!("{}/chunked:{tag}", reg.host)],
    ));
    assert_eq!(index_digests(dir.path())[&name], digest);
    let mut c = strata(&dir.path().join("cache"));
    c.args(["verify", "-o"]).arg(dir.path());
    ok(c);

    // A chunk cut mid-way: the session is asked how much it holds (GET, `Range`). Distribution
    // refuses to go on with a session whose state token names another offset than the bytes it
    // kept from the cut chunk (404 BLOB_UPLOAD_INVALID), so the blob then goes again in a new
    // session — that one blob only.
    let proxy = Proxy::start(reg.host.parse().unwrap());
    let host = proxy.url().trim_start_matches("http://").to_string();
    proxy.add(
        Rule::new(
            "PATCH",
            "/blobs/uploads/",
            Fault::CutAfterRequestBytes(1000),
        )
        .times(1),
    );
    let rep = json(&ok(share(
        &store,
        &[
            "push",
            "--all",
            &format!("{host}/resumed"),
            "--chunk-size",
            "4KiB",
            "--insecure",
            "--allow-private-key",
            "--json",
        ],
    )));
    assert_eq!(proxy.faults_applied(), 1);
    let reqs = proxy.requests();
    assert!(
        reqs.iter()
            .any(|s| s.method == "GET" && s.target.contains("/blobs/uploads/")),
        "the upload's offset was asked: {reqs:#?}"
    );
    let posts = reqs.iter().filter(|s| s.method == "POST").count() as u64;
    let sent = rep["blobs"]["sent"].as_u64().unwrap();
    assert!(
        posts == sent || posts == sent + 1,
        "resumed, or that one blob alone sent again: {reqs:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    ok(share(
        dir.path(),
        &["pull", "--insecure", &format!("{}/resumed:{tag}", reg.host)],
    ));
    let mut c = strata(&dir.path().join("cache"));
    c.args(["verify", "-o"]).arg(dir.path());
    ok(c);
}

#[test]
fn basic_auth_from_flags_env_and_docker_config_and_refusals_never_echo_the_password() {
    let Some(reg) = Registry::start(Auth::Htpasswd) else {
        return;
    };
    let (_p, store) = tiny();
    let target = format!("{}/auth", reg.host);
    // No credentials: refused, exit 6, saying how to give them.
    let out = push_json(&store, &target, &[]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--password-stdin"),
        "{}",
        stderr(&out)
    );
    // A wrong password: refused, and not echoed.
    let mut c = share(
        &store,
        &[
            "push",
            "--all",
            &target,
            "--insecure",
            "--allow-private-key",
        ],
    );
    c.args(["--username", USER, "--password-stdin"]);
    let out = with_stdin(c, "wrong-Passw0rd-xyz\n");
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains("wrong-Passw0rd-xyz")
            && !String::from_utf8_lossy(&out.stdout).contains("wrong-Passw0rd-xyz")
    );
    assert!(stderr(&out).contains(USER), "{}", stderr(&out));
    // The right one, from stdin.
    let mut c = share(
        &store,
        &[
            "push",
            "--all",
            &target,
            "--insecure",
            "--allow-private-key",
            "--json",
        ],
    );
    c.args(["--username", USER, "--password-stdin"]);
    let out = with_stdin(c, &format!("{PASSWORD}\n"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!String::from_utf8_lossy(&out.stdout).contains(PASSWORD));
    assert!(!stderr(&out).contains(PASSWORD));
    // From the environment, pulling.
    let dir = tempfile::tempdir().unwrap();
    let (name, _) = index_digests(&store).into_iter().next_back().unwrap();
    let tag = name.rsplit_once(':').unwrap().1.to_string();
    let mut c = share(
        dir.path(),
        &["pull", "--insecure", &format!("{target}:{tag}")],
    );
    c.env("STRATA_REGISTRY_USER", USER)
        .env("STRATA_REGISTRY_PASSWORD", PASSWORD);
    ok(c);
    // From Docker's config (auths, base64 user:password).
    let cfg = tempfile::tempdir().unwrap();
    let auth = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
    };
    std::fs::write(
        cfg.path().join("config.json"),
        format!(r#"{{"auths": {{"{}": {{"auth": "{auth}"}}}}}}"#, reg.host),
    )
    .unwrap();
    let dir2 = tempfile::tempdir().unwrap();
    let mut c = share(
        dir2.path(),
        &["pull", "--insecure", &format!("{target}:{tag}")],
    );
    c.env("DOCKER_CONFIG", cfg.path());
    ok(c);
    assert_eq!(index_digests(dir2.path()), index_digests(dir.path()));
    // From a credential helper (credHelpers for this host, then credsStore for any), run as
    // Docker runs it: `docker-credential-NAME get` with the host on stdin.
    let helpers = tempfile::tempdir().unwrap();
    let helper = helpers.path().join("docker-credential-strata-test");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\nread server\n[ \"$server\" = \"{}\" ] || {{ echo 'credentials not found in native keychain'; exit 1; }}\nprintf '{{\"ServerURL\":\"%s\",\"Username\":\"{USER}\",\"Secret\":\"{PASSWORD}\"}}' \"$server\"\n",
            reg.host
        ),
    )
    .unwrap();
    std::fs::set_permissions(&helper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    for config in [
        format!(r#"{{"credHelpers": {{"{}": "strata-test"}}}}"#, reg.host),
        r#"{"credsStore": "strata-test"}"#.to_string(),
    ] {
        std::fs::write(cfg.path().join("config.json"), &config).unwrap();
        let dir3 = tempfile::tempdir().unwrap();
        let mut c = share(
            dir3.path(),
            &["pull", "--insecure", &format!("{target}:{tag}")],
        );
        c.env("DOCKER_CONFIG", cfg.path())
            .env("PATH", helpers.path());
        let out = run(c);
        assert!(out.status.success(), "{config}: {}", stderr(&out));
        assert_eq!(index_digests(dir3.path()), index_digests(dir.path()));
    }
    // A helper that has nothing for the host: anonymous, and the registry's refusal says how to
    // log in (exit 6).
    let other_host = reg.host.replace("127.0.0.1", "localhost");
    let mut c = share(
        dir.path(),
        &["pull", "--insecure", &format!("{other_host}/auth:{tag}")],
    );
    c.env("DOCKER_CONFIG", cfg.path())
        .env("PATH", helpers.path());
    let out = run(c);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(stderr(&out).contains("docker login"), "{}", stderr(&out));
}

#[test]
fn token_auth_scopes_a_mount_for_both_repositories() {
    let Some(reg) = Registry::start(Auth::Token) else {
        return;
    };
    let (_p, store) = tiny();
    let run_with_creds = |args: &[&str], dir: &Path| {
        let mut c = share(dir, args);
        c.env("STRATA_REGISTRY_USER", USER)
            .env("STRATA_REGISTRY_PASSWORD", PASSWORD);
        run(c)
    };
    let out = run_with_creds(
        &[
            "push",
            "--all",
            &format!("{}/team/src", reg.host),
            "--insecure",
            "--allow-private-key",
        ],
        &store,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run_with_creds(
        &[
            "push",
            "--all",
            &format!("{}/team/dst", reg.host),
            "--mount-from",
            "team/src",
            "--insecure",
            "--allow-private-key",
            "--json",
        ],
        &store,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let rep = json(&out);
    assert!(rep["blobs"]["mounted"].as_u64().unwrap() > 0, "{rep:#}");
    assert_eq!(rep["blobs"]["sent"], 0, "{rep:#}");
    let tokens = reg.token_requests();
    assert!(
        tokens.iter().any(|t| {
            let s = t["scopes"].as_array().unwrap();
            s.contains(&"repository:team/dst:pull,push".into())
                && s.contains(&"repository:team/src:pull".into())
        }),
        "one token for both repositories of the mount: {tokens:#?}"
    );
    assert!(tokens.iter().all(|t| !t.to_string().contains(PASSWORD)));
    // Pull with a token; anonymous is refused (exit 6).
    let dir = tempfile::tempdir().unwrap();
    let (name, _) = index_digests(&store).into_iter().next_back().unwrap();
    let tag = name.rsplit_once(':').unwrap().1.to_string();
    let r = format!("{}/team/dst:{tag}", reg.host);
    let out = run_with_creds(&["pull", "--insecure", &r], dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(share(dir.path(), &["pull", "--insecure", &r]));
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
}

#[test]
fn bad_input_says_what_to_do() {
    let Some(reg) = Registry::start(Auth::Anonymous) else {
        return;
    };
    let (_p, store) = tiny();
    let target = format!("{}/tiny", reg.host);
    // A malformed reference: exit 2.
    for bad in [
        "127.0.0.1:5000/Tiny",
        "127.0.0.1:5000/tiny:",
        "127.0.0.1:5000/a b",
    ] {
        let out = run(share(&store, &["push", "--all", bad, "--insecure"]));
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", stderr(&out));
        assert!(stderr(&out).contains("REGISTRY/REPO"), "{}", stderr(&out));
    }
    // An image that is not in the store: exit 2 with a suggestion.
    let out = run(share(
        &store,
        &["push", "tiny:3.3.7", &target, "--insecure"],
    ));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("Did you mean tiny:3.3.6"),
        "{}",
        stderr(&out)
    );
    // A key-carrying image without --allow-private-key: exit 2 before any network call (the
    // registry named does not exist).
    let out = run(share(
        &store,
        &["push", "--all", "127.0.0.1:1/tiny", "--insecure"],
    ));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--allow-private-key"),
        "{}",
        stderr(&out)
    );
    // An unreachable registry: exit 1 naming the URL and what to check.
    let out = push_json(&store, "127.0.0.1:1/tiny", &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("127.0.0.1:1") && err.contains("running") && err.contains("--insecure"),
        "{err}"
    );
    // TLS against a plain-HTTP registry: the same hint.
    let out = run(share(
        &store,
        &["push", "--all", &target, "--allow-private-key"],
    ));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("--insecure"), "{}", stderr(&out));

    ok(share(
        &store,
        &[
            "push",
            "--all",
            &target,
            "--insecure",
            "--allow-private-key",
        ],
    ));
    // A tag that does not exist: exit 2, with the tags it has.
    let dir = tempfile::tempdir().unwrap();
    let pulled = dir.path().join("p");
    let out = run(share(
        &pulled,
        &["pull", "--insecure", &format!("{target}:3.3.7")],
    ));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("3.3.6"), "{}", stderr(&out));
    assert!(
        !pulled.exists(),
        "no store is made for a tag that is not there"
    );
    // A pull without a tag: exit 2.
    let out = run(share(&pulled, &["pull", "--insecure", &target]));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));

    // A blob whose bytes the registry serves wrong: exit 3, nothing written.
    let index = index_digests(&store);
    let digest = &index["tiny:3.3.6"];
    let manifest = blob_json(&store, digest);
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let data = reg.blob_data(&layer);
    let mut bytes = std::fs::read(&data).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&data, bytes).unwrap();
    let out = run(share(
        &pulled,
        &["pull", "--insecure", &format!("{target}:3.3.6")],
    ));
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains(&layer), "{}", stderr(&out));
    assert!(
        !pulled.join("index.json").exists(),
        "no index after a failed pull"
    );
    let hex = layer.trim_start_matches("sha256:");
    let leftovers: Vec<_> = std::fs::read_dir(pulled.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n == hex || n.starts_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "nothing half-written: {leftovers:?}");

    // A manifest of a media type the registry rejects: exit 6, explained.
    let odd = tempfile::tempdir().unwrap();
    copy_tree(&store, odd.path());
    let p = odd.path().join("index.json");
    let text = std::fs::read_to_string(&p).unwrap().replace(
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.example.unknown+json",
    );
    std::fs::write(&p, text).unwrap();
    let out = run(share(
        odd.path(),
        &[
            "push",
            "tiny:3.3.6",
            &format!("{}/odd:x", reg.host),
            "--insecure",
            "--allow-private-key",
        ],
    ));
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("media type") || stderr(&out).contains("MANIFEST"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_final_put_whose_answer_is_lost_is_headed_not_sent_again() {
    let Some(reg) = Registry::start(Auth::Anonymous) else {
        return;
    };
    let (_p, store) = tiny();
    let proxy = Proxy::start(reg.host.parse().unwrap());
    let host = proxy.url().trim_start_matches("http://").to_string();
    // The registry stores the blob; its answer comes after strata gave up waiting.
    proxy.add(
        Rule::new(
            "PUT",
            "/blobs/uploads/",
            Fault::DelayResponse(std::time::Duration::from_secs(4)),
        )
        .times(1),
    );
    let out = push_json(
        &store,
        &format!("{host}/lost"),
        &["--registry-timeout", "1"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let rep = json(&out);
    assert_eq!(proxy.faults_applied(), 1);
    assert!(
        stderr(&out).contains("but the registry has it"),
        "{}",
        stderr(&out)
    );
    let reqs = proxy.requests();
    let puts = reqs
        .iter()
        .filter(|s| s.method == "PUT" && s.target.contains("/blobs/uploads/"))
        .count() as u64;
    assert_eq!(
        puts,
        rep["blobs"]["sent"].as_u64().unwrap(),
        "the blob whose answer was lost was HEADed, found, and not sent again: {reqs:?}"
    );
}

#[test]
fn an_image_pushed_by_another_tool_is_pulled_without_a_record_and_a_docker_manifest_is_refused() {
    let Some(reg) = Registry::start(Auth::Anonymous) else {
        return;
    };
    if !require("skopeo") {
        return;
    }
    let (_p, store) = tiny();
    let digest = index_digests(&store)["tiny:3.3.6"].clone();
    let copy = |format: &str, tag: &str| {
        let out = Command::new("skopeo")
            .args(["copy", "-q", "--dest-tls-verify=false", "--format", format])
            .arg(format!("oci:{}:tiny:3.3.6", store.display()))
            .arg(format!("docker://{}/other:{tag}", reg.host))
            .output()
            .unwrap();
        assert!(out.status.success(), "skopeo copy: {}", stderr(&out));
    };
    copy("oci", "oci");
    copy("v2s2", "docker");
    let dir = tempfile::tempdir().unwrap();
    let rep = json(&ok(share(
        dir.path(),
        &[
            "pull",
            "--insecure",
            "--json",
            &format!("{}/other:oci", reg.host),
        ],
    )));
    assert_eq!(rep["images"][0]["extras"], false, "{rep:#}");
    assert_eq!(rep["images"][0]["name"], "other:oci");
    assert_eq!(
        index_digests(dir.path())["other:oci"],
        digest,
        "the same bytes"
    );
    let mut c = strata(&dir.path().join("cache"));
    c.args(["verify", "-o"]).arg(dir.path());
    ok(c);
    let out = run(share(
        dir.path(),
        &["pull", "--insecure", &format!("{}/other:docker", reg.host)],
    ));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("Docker v2"), "{}", stderr(&out));
}

#[test]
fn a_pull_that_would_mix_settings_of_one_recipe_is_refused() {
    let Some(reg) = Registry::start(Auth::Anonymous) else {
        return;
    };
    let (_p, store) = tiny();
    ok(share(
        &store,
        &[
            "push",
            "--all",
            &format!("{}/tiny", reg.host),
            "--insecure",
            "--allow-private-key",
        ],
    ));
    // The same recipe built here with another epoch: other settings.
    let local = Project::new();
    local.edit_recipe(|r| r.replace("epoch = 1700000000", "epoch = 1700000001"));
    let here = local.root().join("output");
    ok(local.build(&here));
    let before = std::fs::read(here.join("index.json")).unwrap();
    let out = run(share(
        &here,
        &["pull", "--insecure", &format!("{}/tiny:3.3.6", reg.host)],
    ));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("other settings") && err.contains("tiny:2.10.2"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(here.join("index.json")).unwrap(),
        before,
        "the index is unchanged"
    );
    // Pulling every image of the recipe replaces them all: accepted.
    let refs: Vec<String> = index_digests(&store)
        .keys()
        .map(|n| format!("{}/tiny:{}", reg.host, n.rsplit_once(':').unwrap().1))
        .collect();
    let mut args = vec!["pull", "--insecure"];
    args.extend(refs.iter().map(String::as_str));
    ok(share(&here, &args));
    assert_eq!(index_digests(&here), index_digests(&store));
}

#[test]
fn a_download_cut_midway_is_fetched_again_and_the_store_verifies() {
    let Some(reg) = Registry::start(Auth::Anonymous) else {
        return;
    };
    let (_p, store) = tiny();
    ok(share(
        &store,
        &[
            "push",
            "--all",
            &format!("{}/tiny", reg.host),
            "--insecure",
            "--allow-private-key",
        ],
    ));
    let proxy = Proxy::start(reg.host.parse().unwrap());
    let host = proxy.url().trim_start_matches("http://").to_string();
    // The download of the largest layer stops after its head and a few bytes of its body.
    let manifest = blob_json(&store, &index_digests(&store)["tiny:3.3.6"]);
    let largest = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .max_by_key(|l| l["size"].as_u64().unwrap())
        .unwrap();
    assert!(largest["size"].as_u64().unwrap() > 2000, "{largest}");
    let digest = largest["digest"].as_str().unwrap();
    proxy.add(Rule::new("GET", digest, Fault::CutResponseAfterBytes(600)).times(1));
    let dir = tempfile::tempdir().unwrap();
    let out = run(share(
        dir.path(),
        &[
            "pull",
            "--insecure",
            "--json",
            &format!("{host}/tiny:3.3.6"),
        ],
    ));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(proxy.faults_applied(), 1);
    assert!(
        stderr(&out).contains("fetching it again"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        index_digests(dir.path())["tiny:3.3.6"],
        index_digests(&store)["tiny:3.3.6"]
    );
    let mut c = strata(&dir.path().join("cache"));
    c.args(["verify", "-o"]).arg(dir.path());
    ok(c);
}

/// `[base] source = "oci"` from a registry: a recipe built on `tiny:base` pulled from the
/// registry gives the same images as the same recipe built on the same image from a local
/// layout; `plan` writes nothing and says the base is not pulled until a build pulls it; a tag
/// the registry lacks and a malformed reference are bad input.
#[test]
fn a_base_image_from_a_registry_builds_the_same_images_as_from_a_layout() {
    let Some(reg) = Registry::start(Auth::Anonymous) else {
        return;
    };
    let (project, store) = tiny();
    let repo = format!("{}/tiny-bases", reg.host);
    let o = push_json(&store, &repo, &[]);
    assert!(o.status.success(), "{}", stderr(&o));

    // The same recipe twice: on the layout, and on the registry's copy (each its own cache).
    let recipe_on = |base: &str| -> Project {
        let p = Project::new();
        p.edit_recipe(|s| {
            let at = s.find("[base]").unwrap();
            let end = at + s[at..].find("\n[jdk").unwrap();
            format!(
                "{}[base]\nsource = \"oci\"\n{base}\n[user]\nreuse-existing = true\n{}",
                &s[..at],
                &s[end..]
            )
        });
        p
    };
    let on = |base: &str, out: &str, cache: &str| -> (Output, PathBuf) {
        let p = recipe_on(base);
        let out = project.root().join(out);
        let mut c = strata(&project.root().join(cache));
        c.env("PATH", bare_path())
            .args(["build", "--json", "--insecure", "-o"])
            .arg(&out)
            .arg(p.recipe());
        (run(c), out)
    };
    let local = format!("path = \"{}\"\nref = \"tiny:base\"", store.display());
    let (o, from_layout) = on(&local, "from-layout", "cache-a");
    assert!(o.status.success(), "{}", stderr(&o));
    let remote = format!("image = \"{repo}:base\"");
    // Before any build: plan asks no registry and writes nothing; the layers on the base wait.
    let p = recipe_on(&remote);
    let mut c = strata(&project.root().join("cache-b"));
    c.args(["plan", "--json"]).arg(p.recipe());
    let o = run(c);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(json(&o)["base-ready"], false, "{}", json(&o));
    assert!(
        !project.root().join("cache-b").exists(),
        "plan wrote nothing"
    );
    let (o, from_registry) = on(&remote, "from-registry", "cache-b");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        index_digests(&from_registry),
        index_digests(&from_layout),
        "the same base bytes give the same images"
    );
    assert!(
        project.root().join("cache-b/oci-bases/refs").is_dir(),
        "pulled into the cache"
    );

    // A tag the registry lacks; a reference that is not one.
    let (o, _) = on(&format!("image = \"{repo}:nope\""), "x1", "cache-c");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("no such image"), "{}", stderr(&o));
    let (o, _) = on("image = \"not a reference\"", "x2", "cache-c");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("base.image"), "{}", stderr(&o));

    // The registry gone: the copy pulled before builds the same images, with a warning; a
    // cache that never pulled it fails, naming the registry.
    drop(reg);
    let (o, again) = on(&remote, "again", "cache-b");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("pulled before"), "{}", stderr(&o));
    assert_eq!(index_digests(&again), index_digests(&from_layout));
    let (o, _) = on(&remote, "x3", "cache-d");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("cannot reach the registry"),
        "{}",
        stderr(&o)
    );
}
