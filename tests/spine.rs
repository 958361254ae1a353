//! The build spine on the tiny reference project: reproducibility, pinned digests, the OCI tools,
//! caching, concurrency, and SIGKILL safety. Runs the real binary.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// The manifest digests of the tiny reference recipe. They change only when the bytes strata
/// writes change (tar format, compression, config or manifest shape, the repo's layers or
/// catalogue): review such a change like code, then update these.
const PINNED: &[(&str, &str)] = &[
    (
        "tiny:2.10.2",
        "sha256:4d3f98d31413e376db8160b366609c6f7f1288b3315a212779b3d14eb501a777",
    ),
    (
        "tiny:3.3.6",
        "sha256:e2fd916592c6b555760bf5cf782450430032390ae164d61bc98b646ee3013563",
    ),
    (
        "tiny:base",
        "sha256:6f9ba6b184ed256e243dbe7de797db1427e51f038bd07ee9640f233a4f9bb700",
    ),
];

fn build_ok(p: &Project, out: &Path) -> serde_json::Value {
    json(&ok(p.build(out)))
}

#[test]
fn builds_are_identical_across_dirs_caches_umask_tz_and_mtimes() {
    let a = Project::new();
    let b = Project::new();
    // Different file mtimes in b's inputs.
    for e in walkdir::WalkDir::new(b.root().join("layers")) {
        let e = e.unwrap();
        if e.file_type().is_file() {
            let f = std::fs::File::options().write(true).open(e.path()).unwrap();
            f.set_modified(
                std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_234_567),
            )
            .unwrap();
        }
    }
    let out_a = a.root().join("out-a");
    let out_b = b.root().join("nested/other-out");
    let ra = build_ok(&a, &out_a);
    // b: another umask and time zone, through a shell.
    let mut c = strata(&b.root().join("cache"));
    c.env("TZ", "Pacific/Kiritimati");
    let bin = env!("CARGO_BIN_EXE_strata");
    let mut sh = Command::new("sh");
    sh.arg("-c").arg(format!(
        "umask 077; exec {bin} build {} -o {} --json",
        b.recipe().display(),
        out_b.display()
    ));
    for (k, v) in c.get_envs() {
        if let Some(v) = v {
            sh.env(k, v);
        }
    }
    let rb = json(&ok(sh));
    assert_eq!(
        ra["layers-built"], rb["layers-built"],
        "both builds start from an empty cache"
    );
    let da = index_digests(&out_a);
    let db = index_digests(&out_b);
    assert_eq!(da.len(), 3, "two versions and tiny:base: {da:?}");
    assert_eq!(da, db, "same inputs must give the same manifest digests");

    let pinned: std::collections::BTreeMap<String, String> = PINNED
        .iter()
        .map(|(n, d)| (n.to_string(), d.to_string()))
        .collect();
    if pinned.values().any(|d| d == "PIN") {
        panic!("pin these digests in tests/spine.rs: {da:#?}");
    }
    assert_eq!(
        da, pinned,
        "the reference recipe's digests moved: if intended, review and re-pin"
    );
}

#[test]
fn every_image_passes_umoci_skopeo_and_the_schemas() {
    if !(require("umoci") && require("skopeo")) {
        return;
    }
    let p = Project::new();
    let out = p.root().join("out");
    build_ok(&p, &out);
    for (name, _) in index_digests(&out) {
        let tag = name.split_once(':').unwrap().1;
        let unpack = p.root().join(format!("unpack-{tag}"));
        // The ref name is the full name (recipe:tag): both tools split DIR:REF at the first ':'.
        let mut u = Command::new("umoci");
        u.args(["unpack", "--rootless", "--image"])
            .arg(format!("{}:{name}", out.display()))
            .arg(&unpack);
        ok(u);
        assert!(
            unpack.join("rootfs/etc/passwd").is_file(),
            "{name}: unpacked rootfs has /etc/passwd"
        );
        let mut s = Command::new("skopeo");
        s.arg("inspect")
            .arg(format!("oci:{}:{name}", out.display()));
        let info = json(&ok(s));
        assert_eq!(info["Architecture"], "amd64");
        if tag != "base" {
            assert_eq!(info["Labels"]["hadoop.version"], tag);
        }
    }
    let mut v = Command::new("/usr/bin/python3");
    v.arg(repo().join("tests/tools/validate_oci.py")).arg(&out);
    let o = ok(v);
    assert!(
        String::from_utf8_lossy(&o.stdout).starts_with("ok: 8 documents"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
}

#[test]
fn the_base_layer_is_one_blob_shared_by_every_image() {
    let p = Project::new();
    let out = p.root().join("out");
    build_ok(&p, &out);
    let names: Vec<String> = index_digests(&out).into_keys().collect();
    let firsts: std::collections::BTreeSet<String> = names
        .iter()
        .map(|n| {
            manifest(&out, n)["layers"][0]["digest"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        firsts.len(),
        1,
        "every image starts with the same base blob"
    );
    // Stored once: one file per distinct blob, and the blob directory holds no copies.
    let blobs = std::fs::read_dir(out.join("blobs/sha256")).unwrap().count();
    let mut distinct = std::collections::BTreeSet::new();
    for n in &names {
        let m = manifest(&out, n);
        distinct.insert(m["config"]["digest"].as_str().unwrap().to_string());
        for l in m["layers"].as_array().unwrap() {
            distinct.insert(l["digest"].as_str().unwrap().to_string());
        }
    }
    // + manifests + the store record
    assert_eq!(blobs, distinct.len() + names.len() + 1);
}

#[test]
fn a_noop_rebuild_builds_nothing_and_keeps_the_index() {
    let p = Project::new();
    let out = p.root().join("out");
    let first = build_ok(&p, &out);
    assert!(first["layers-built"].as_u64().unwrap() >= 4, "{first}");
    let before = snapshot(&out);
    let again = build_ok(&p, &out);
    assert_eq!(again["layers-built"], 0, "{again}");
    assert_eq!(again["index-changed"], false);
    assert_eq!(snapshot(&out), before, "a no-op rebuild writes nothing");
}

#[test]
fn one_changed_file_rebuilds_only_its_layer() {
    let p = Project::new();
    let out = p.root().join("out");
    build_ok(&p, &out);
    let before = index_digests(&out);
    let bashrc = p.root().join("layers/user-env/root/home/hadoop/.bashrc");
    let mut s = std::fs::read_to_string(&bashrc).unwrap();
    s.push_str("# a local change\n");
    std::fs::write(&bashrc, s).unwrap();
    let r = build_ok(&p, &out);
    assert_eq!(r["layers-built"], 1, "only user-env: {r}");
    let after = index_digests(&out);
    for (name, d) in &after {
        assert_ne!(
            &before[name], d,
            "{name} uses user-env, so its manifest changes"
        );
    }
}

#[test]
fn deleting_the_cache_does_not_change_a_digest() {
    let p = Project::new();
    let out1 = p.root().join("out1");
    build_ok(&p, &out1);
    std::fs::remove_dir_all(p.root().join("cache")).unwrap();
    let out2 = p.root().join("out2");
    build_ok(&p, &out2);
    assert_eq!(index_digests(&out1), index_digests(&out2));
}

#[test]
fn images_carry_accounts_keys_and_configs_with_declared_modes() {
    let p = Project::new();
    let out = p.root().join("out");
    build_ok(&p, &out);
    let m = manifest(&out, "tiny:3.3.6");
    let layers = m["layers"].as_array().unwrap();
    let names: Vec<&str> = layers
        .iter()
        .map(|l| l["annotations"]["io.strata.layer"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["base", "jdk-tiny-11", "user-env", "hadoop-conf-3.3.6"],
        "shared layers first"
    );
    let user_env = layer_files(&out, layers[2]["digest"].as_str().unwrap());
    let passwd = String::from_utf8(user_env["etc/passwd"].3.clone()).unwrap();
    assert!(
        passwd.starts_with("root:x:0:0:root:/root:/bin/sh\ndaemon:"),
        "base accounts kept:\n{passwd}"
    );
    assert!(passwd.contains("hadoop:x:1000:1000:Hadoop:/home/hadoop:/bin/bash\n"));
    let (mode, uid, gid, _) = &user_env["etc/shadow"];
    assert_eq!(
        (*mode, *uid, *gid),
        (0o640, 0, 42),
        "shadow keeps the base's owner and mode"
    );
    assert_eq!(user_env["home/hadoop/.ssh"].0 & 0o7777, 0o700);
    for f in ["id_ed25519", "id_ed25519.pub", "authorized_keys"] {
        let (mode, uid, gid, _) = &user_env[&format!("home/hadoop/.ssh/{f}")];
        assert_eq!((*mode & 0o7777, *uid, *gid), (0o600, 1000, 1000), "{f}");
    }
    let fixture_pub = std::fs::read_to_string(fixture_key().with_extension("pub")).unwrap();
    let auth = String::from_utf8(user_env["home/hadoop/.ssh/authorized_keys"].3.clone()).unwrap();
    assert_eq!(
        auth.split_whitespace().nth(1),
        fixture_pub.split_whitespace().nth(1)
    );
    assert_eq!(
        user_env["usr/local/lib/strata/bin/strata-boot"].0 & 0o7777,
        0o755
    );
    // The image says it carries a private key.
    let cfg = blob_json(&out, m["config"]["digest"].as_str().unwrap());
    assert_eq!(
        cfg["config"]["Labels"]["io.strata.carries-private-key"],
        "true"
    );
    // The tarball JDK sits under its java-home, with /opt/java pointing at it.
    let jdk = layer_files(&out, layers[1]["digest"].as_str().unwrap());
    assert!(
        jdk.contains_key("usr/lib/jvm/tiny-11/bin/java"),
        "{:?}",
        jdk.keys().collect::<Vec<_>>()
    );
    // The base keeps its device node, setuid bit and absolute symlink.
    let base = layer_files(&out, layers[0]["digest"].as_str().unwrap());
    assert_eq!(base["usr/bin/passwd"].0 & 0o7777, 0o4755);
    assert!(base.contains_key("dev/null"));
    let conf = layer_files(&out, layers[3]["digest"].as_str().unwrap());
    assert!(conf.contains_key("etc/hadoop/workers") && !conf.contains_key("etc/hadoop/slaves"));
    let conf2 = layer_files(
        &out,
        manifest(&out, "tiny:2.10.2")["layers"][3]["digest"]
            .as_str()
            .unwrap(),
    );
    assert!(conf2.contains_key("etc/hadoop/slaves") && !conf2.contains_key("etc/hadoop/workers"));
}

#[test]
fn the_private_key_never_reaches_logs_reports_or_cache_records() {
    let p = Project::new();
    let out = p.root().join("out");
    let build = ok(p.build(&out));
    let key = std::fs::read_to_string(fixture_key()).unwrap();
    let secret_line = key.lines().nth(1).unwrap().to_string();
    let mut texts = vec![
        String::from_utf8_lossy(&build.stdout).into_owned(),
        stderr(&build),
    ];
    for args in [vec!["ls"], vec!["inspect", "tiny:3.3.6"], vec!["plan"]] {
        let mut c = strata(&p.root().join("cache"));
        c.args(&args).arg("-o").arg(&out);
        if args[0] == "plan" {
            c.arg(p.recipe());
        }
        let o = ok(c);
        texts.push(String::from_utf8_lossy(&o.stdout).into_owned());
        texts.push(stderr(&o));
    }
    texts.push(std::fs::read_to_string(out.join("index.json")).unwrap());
    for e in walkdir::WalkDir::new(p.root().join("cache/layers")) {
        let e = e.unwrap();
        if e.file_type().is_file() {
            texts.push(std::fs::read_to_string(e.path()).unwrap());
        }
    }
    for t in &texts {
        assert!(
            !t.contains("PRIVATE KEY") && !t.contains(&secret_line),
            "the key leaked into:\n{t}"
        );
    }
}

#[test]
fn keys_delivered_at_boot_leave_only_the_public_key_in_images_and_cache() {
    let p = Project::new();
    let (out_image, out_boot) = (p.root().join("out-image"), p.root().join("out-boot"));
    build_ok(&p, &out_image);
    p.edit_recipe(|s| s + "\n[ssh]\ndeliver = \"boot\"\n");
    let r = build_ok(&p, &out_boot);
    assert_eq!(r["layers-built"], 1, "only the accounts layer is new: {r}");
    for i in r["images"].as_array().unwrap() {
        assert_eq!(i["carries-private-key"], false, "{i}");
        assert_eq!(i["keys-at-boot"], true, "{i}");
    }
    let m = manifest(&out_boot, "tiny:3.3.6");
    let user_env = layer_files(&out_boot, m["layers"][2]["digest"].as_str().unwrap());
    assert!(!user_env.contains_key("home/hadoop/.ssh/id_ed25519"));
    for f in ["id_ed25519.pub", "authorized_keys"] {
        let (mode, uid, gid, _) = &user_env[&format!("home/hadoop/.ssh/{f}")];
        assert_eq!((*mode & 0o7777, *uid, *gid), (0o600, 1000, 1000), "{f}");
    }
    assert_eq!(
        user_env["usr/local/lib/strata/bin/strata-ssh-key"].0 & 0o7777,
        0o755
    );
    assert!(
        user_env.contains_key("etc/systemd/system/multi-user.target.wants/strata-ssh-key.service")
    );
    let env = String::from_utf8(user_env["etc/strata/ssh-key.env"].3.clone()).unwrap();
    assert!(env.contains("STRATA_SSH_USER='hadoop'\n"), "{env}");
    assert!(
        env.contains("STRATA_SSH_KEY_PATH='/home/hadoop/.ssh/id_ed25519'\n"),
        "{env}"
    );
    let cfg = blob_json(&out_boot, m["config"]["digest"].as_str().unwrap());
    let image_cfg = blob_json(
        &out_image,
        manifest(&out_image, "tiny:3.3.6")["config"]["digest"]
            .as_str()
            .unwrap(),
    );
    let labels = &cfg["config"]["Labels"];
    assert_eq!(labels["io.strata.carries-private-key"], "false");
    assert_eq!(labels["io.strata.ssh.deliver"], "boot");
    assert_eq!(
        labels["io.strata.ssh-key.fingerprint"],
        image_cfg["config"]["Labels"]["io.strata.ssh-key.fingerprint"]
    );
    assert!(image_cfg["config"]["Labels"]["io.strata.ssh.deliver"].is_null());
    assert_eq!(
        cfg["config"]["Entrypoint"],
        serde_json::json!(["/usr/local/lib/strata/bin/strata-ssh-key"])
    );
    // The private key's own lines are in no layer of the boot store, no cache record and no
    // store document.
    let key = std::fs::read_to_string(fixture_key()).unwrap();
    let secret: Vec<&str> = key
        .lines()
        .skip(2)
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let mut texts = Vec::new();
    for (name, _) in index_digests(&out_boot) {
        for l in manifest(&out_boot, &name)["layers"].as_array().unwrap() {
            for (_, (.., data)) in layer_files(&out_boot, l["digest"].as_str().unwrap()) {
                texts.push(String::from_utf8_lossy(&data).into_owned());
            }
        }
    }
    for e in walkdir::WalkDir::new(p.root().join("cache/layers")) {
        let e = e.unwrap();
        if e.file_type().is_file() {
            texts.push(std::fs::read_to_string(e.path()).unwrap());
        }
    }
    for (_, d) in index_digests(&out_boot) {
        texts.push(blob_json(&out_boot, &d).to_string());
    }
    for t in &texts {
        for s in &secret {
            assert!(!t.contains(s), "the private key is in:\n{t}");
        }
    }
}

#[test]
fn concurrent_builds_on_one_store_both_succeed() {
    let p = Project::new();
    let out = p.root().join("out");
    let mut a = p.build(&out);
    let mut b = p.build(&out);
    let ha = a
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let hb = b
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (oa, ob) = (
        ha.wait_with_output().unwrap(),
        hb.wait_with_output().unwrap(),
    );
    assert!(oa.status.success(), "{}", stderr(&oa));
    assert!(ob.status.success(), "{}", stderr(&ob));
    let mut v = strata(&p.root().join("cache"));
    v.arg("verify").arg("-o").arg(&out);
    ok(v);
    assert_eq!(index_digests(&out).len(), 3);
}

/// Kills the real process at a failpoint; the store must verify and the next build complete.
fn kill_at(failpoint: &str, fresh_store: bool) {
    let p = Project::new();
    let out = p.root().join("out");
    if !fresh_store {
        build_ok(&p, &out);
        // Make the next build do real work.
        let bashrc = p.root().join("layers/user-env/root/home/hadoop/.bashrc");
        std::fs::write(
            &bashrc,
            format!("{}# changed\n", std::fs::read_to_string(&bashrc).unwrap()),
        )
        .unwrap();
    }
    let before = snapshot(&out);
    let mut c = p.build(&out);
    c.env("STRATA_FAILPOINT", failpoint)
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null());
    let mut child = c.spawn().unwrap();
    // Wait (bounded) for the failpoint message, then SIGKILL.
    let mut err = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(&mut err)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("failpoint") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(std::time::Duration::from_secs(120))
        .unwrap_or_else(|_| panic!("failpoint {failpoint} never reached"));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    if !fresh_store {
        let mut v = strata(&p.root().join("cache"));
        v.arg("verify").arg("-o").arg(&out).arg("--json");
        let rep = json(&ok(v));
        assert_eq!(rep["problems"].as_array().unwrap().len(), 0, "{rep}");
        // The old index is still in force.
        let after = snapshot(&out);
        assert_eq!(
            after.get("index.json"),
            before.get("index.json"),
            "the index was not half-replaced"
        );
    }
    let r = build_ok(&p, &out);
    assert!(r["images"].as_array().unwrap().len() == 3);
    let mut v = strata(&p.root().join("cache"));
    v.arg("verify").arg("-o").arg(&out);
    ok(v);
}

#[test]
fn sigkill_while_a_layer_blob_is_written() {
    kill_at("layer-write", false);
}

#[test]
fn sigkill_while_a_store_blob_is_written() {
    kill_at("store-blob", false);
}

#[test]
fn sigkill_while_the_index_is_written() {
    kill_at("index-write", false);
}

#[test]
fn verify_finds_a_corrupt_blob_and_gc_removes_garbage() {
    let p = Project::new();
    let out = p.root().join("out");
    build_ok(&p, &out);
    // Garbage: an unreferenced blob.
    std::fs::write(out.join("blobs/sha256").join("0".repeat(64)), b"junk").unwrap();
    let mut gc = strata(&p.root().join("cache"));
    gc.args(["gc", "--json", "-o"]).arg(&out);
    let r = json(&ok(gc));
    assert_eq!(r["removed-blobs"], 1, "{r}");
    // Corruption: flip a byte of the base layer.
    let base = manifest(&out, "tiny:3.3.6")["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    let path = out.join("blobs/sha256").join(&base);
    let mut data = std::fs::read(&path).unwrap();
    let n = data.len() / 2;
    data[n] ^= 0xff;
    std::fs::write(&path, data).unwrap();
    let mut v = strata(&p.root().join("cache"));
    v.arg("verify").arg("-o").arg(&out);
    let o = run(v);
    assert_eq!(o.status.code(), Some(4), "damaged store exit code");
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains(&base), "names the corrupt blob: {text}");
}

#[test]
fn ls_inspect_diff_and_export() {
    let p = Project::new();
    let out = p.root().join("out");
    build_ok(&p, &out);
    let cache = p.root().join("cache");
    let mut c = strata(&cache);
    c.args(["ls", "--json", "-o"]).arg(&out);
    let rows = json(&ok(c));
    let names: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["tiny:base", "tiny:2.10.2", "tiny:3.3.6"]);

    let mut c = strata(&cache);
    c.args(["inspect", "tiny:3.3.6", "--json", "-o"]).arg(&out);
    let i = json(&ok(c));
    let layers = i["layers"].as_array().unwrap();
    assert_eq!(layers[0]["name"], "base");
    let shared: Vec<&str> = layers[0]["shared-with"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(shared, ["tiny:base", "tiny:2.10.2"]);
    assert!(
        layers[3]["shared-with"].as_array().unwrap().is_empty(),
        "the per-version layer is its own"
    );
    let pk: Vec<(String, String)> = serde_json::from_value(i["packages"].clone()).unwrap();
    assert_eq!(
        pk,
        [
            ("base-files".to_string(), "12.4".to_string()),
            ("tiny-tools".into(), "1.0-1".into())
        ]
    );

    let mut c = strata(&cache);
    c.args(["diff", "tiny:2.10.2", "3.3.6", "--json", "-o"])
        .arg(&out);
    let d = json(&ok(c));
    let l = d["layers"].as_array().unwrap();
    assert_eq!(l[0]["shared"], true);
    assert_eq!(l[3]["shared"], false);
    let changed: Vec<&str> = l[3]["changed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert!(changed.contains(&"etc/hadoop/hdfs-site.xml"), "{changed:?}");
    let added: Vec<&str> = l[3]["added"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert!(added.contains(&"etc/hadoop/workers"), "{added:?}");

    // Unknown image: bad input (2) with the names it holds.
    let mut c = strata(&cache);
    c.args(["inspect", "tiny:9.9.9", "-o"]).arg(&out);
    let o = run(c);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("tiny:3.3.6"), "{}", stderr(&o));

    // Export: a deterministic archive that skopeo reads as an OCI archive.
    let a1 = p.root().join("a1.tar");
    let a2 = p.root().join("a2.tar");
    for a in [&a1, &a2] {
        let mut c = strata(&cache);
        c.args(["export", "tiny:3.3.6", "--oci-archive"])
            .arg(a)
            .arg("-o")
            .arg(&out);
        ok(c);
    }
    assert_eq!(std::fs::read(&a1).unwrap(), std::fs::read(&a2).unwrap());
    if require("skopeo") {
        let mut s = Command::new("skopeo");
        s.arg("inspect")
            .arg(format!("oci-archive:{}:tiny:3.3.6", a1.display()));
        let info = json(&ok(s));
        assert_eq!(info["Labels"]["hadoop.version"], "3.3.6");
    }
}

#[test]
fn an_oci_image_layout_can_be_the_base_and_its_layers_are_reused_as_they_are() {
    let p = Project::new();
    let first = p.root().join("first");
    build_ok(&p, &first);
    let base_layers: Vec<String> = manifest(&first, "tiny:base")["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    // A second recipe on top of tiny:base, with only the per-version layer of its own.
    let first_rel = first.strip_prefix(p.root()).unwrap().display().to_string();
    p.edit_recipe(|s| {
        let s = s.replace("name = \"tiny\"", "name = \"derived\"");
        let s = s.replace(
            "source = \"tarball\"\npath = \"inputs/rootfs.tar\"",
            &format!("source = \"oci\"\npath = \"{first_rel}\"\nref = \"base\""),
        );
        // The base already has the JDK and the user environment.
        let start = s.find("[jdk.tiny-11]").unwrap();
        let end = s.find("[[layer]]\nname = \"hadoop-conf\"").unwrap();
        format!("{}{}", &s[..start], &s[end..])
    });
    let out = p.root().join("derived");
    build_ok(&p, &out);
    let m = manifest(&out, "derived:3.3.6");
    let layers: Vec<String> = m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(layers.len(), base_layers.len() + 1);
    assert_eq!(
        layers[..base_layers.len()],
        base_layers[..],
        "the OCI base's blobs are reused byte for byte"
    );
    let mut v = strata(&p.root().join("cache"));
    v.arg("verify").arg("-o").arg(&out);
    ok(v);
}

#[test]
fn zstd_layers_verify_and_read_back() {
    let p = Project::new();
    p.edit_recipe(|s| {
        s.replace(
            "epoch = 1700000000",
            "epoch = 1700000000\ncompression = \"zstd\"",
        )
    });
    let out = p.root().join("out");
    build_ok(&p, &out);
    let m = manifest(&out, "tiny:3.3.6");
    for l in m["layers"].as_array().unwrap() {
        assert_eq!(
            l["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+zstd"
        );
    }
    // verify decompresses every layer and checks its diff_id.
    let mut v = strata(&p.root().join("cache"));
    v.args(["verify", "--json", "-o"]).arg(&out);
    let r = json(&ok(v));
    assert_eq!(r["layers-decompressed"].as_u64().unwrap(), 5, "{r}");
    if require("skopeo") {
        let mut s = std::process::Command::new("skopeo");
        s.arg("inspect")
            .arg(format!("oci:{}:tiny:3.3.6", out.display()));
        ok(s);
    }
}

#[test]
fn a_disk_needs_a_kernel_and_leaves_nothing_behind() {
    let p = Project::new();
    let out = p.root().join("out");
    build_ok(&p, &out);
    let cache = p.root().join("cache");
    // No [disk] in the recipe: a clear error.
    let mut c = strata(&cache);
    c.args(["disk", "tiny:3.3.6", "-o"]).arg(&out);
    let o = run(c);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("needs a [disk] table"),
        "{}",
        stderr(&o)
    );
    if !strata::disk::TOOLS.iter().all(|t| require(t)) {
        return;
    }
    // A [disk] without a kernel in the base: refused, no partial disk left behind.
    p.edit_recipe(|s| format!("{s}\n[disk]\ncmdline = [\"quiet\"]\n"));
    build_ok(&p, &out);
    let mut c = strata(&cache);
    c.args(["disk", "tiny:3.3.6", "-o"]).arg(&out);
    let o = run(c);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("needs a kernel"), "{}", stderr(&o));
    let left: Vec<_> = std::fs::read_dir(out.join("disks"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "nothing left in disks/: {left:?}");
    // A size smaller than the content: refused before anything is written.
    p.edit_recipe(|s| s.replace("cmdline = [\"quiet\"]", "size = \"1MiB\""));
    build_ok(&p, &out);
    let mut c = strata(&cache);
    c.args(["disk", "tiny:3.3.6", "-o"]).arg(&out);
    let o = run(c);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("is smaller than the content"),
        "{}",
        stderr(&o)
    );
    assert_eq!(std::fs::read_dir(out.join("disks")).unwrap().count(), 0);
    // An image that does not exist.
    let mut c = strata(&cache);
    c.args(["disk", "tiny:9.9.9", "-o"]).arg(&out);
    assert_eq!(run(c).status.code(), Some(2));
}

/// The mtimes of a gzip layer blob's entries.
fn layer_mtimes(store: &Path, digest: &str) -> std::collections::BTreeSet<u64> {
    let hex = digest.trim_start_matches("sha256:");
    let f = std::fs::File::open(store.join("blobs/sha256").join(hex)).unwrap();
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(f));
    ar.entries()
        .unwrap()
        .map(|e| e.unwrap().header().mtime().unwrap())
        .collect()
}

#[test]
fn source_date_epoch_overrides_the_recipe_epoch_everywhere_and_says_so() {
    let p = Project::new();
    let mut seen = std::collections::BTreeSet::new();
    for epoch in [1_800_000_000u64, 1_800_000_001] {
        let out = p.root().join(format!("out-{epoch}"));
        let mut c = p.build(&out);
        c.env("SOURCE_DATE_EPOCH", epoch.to_string());
        let o = ok(c);
        let r = json(&o);
        assert_eq!(r["epoch"], epoch, "{r}");
        assert_eq!(r["epoch-source"], "source-date-epoch", "{r}");
        assert!(
            stderr(&o).contains(&format!("epoch {epoch}"))
                && stderr(&o).contains("SOURCE_DATE_EPOCH"),
            "the progress says which epoch and why: {}",
            stderr(&o)
        );
        let digests = index_digests(&out);
        for (name, pinned) in PINNED {
            assert_ne!(&digests[*name], pinned, "{name} must change with the epoch");
            assert!(
                seen.insert(digests[*name].clone()),
                "{name}: a new digest per epoch"
            );
        }
        // Every layer's entries carry the chosen mtime; the config says when.
        let m = manifest(&out, "tiny:3.3.6");
        for l in m["layers"].as_array().unwrap() {
            let mtimes = layer_mtimes(&out, l["digest"].as_str().unwrap());
            assert_eq!(mtimes, [epoch].into(), "layer {}", l["digest"]);
        }
        let cfg = blob_json(&out, m["config"]["digest"].as_str().unwrap());
        let want = if epoch == 1_800_000_000 {
            "2027-01-15T08:00:00Z"
        } else {
            "2027-01-15T08:00:01Z"
        };
        assert_eq!(cfg["created"], want);
        // The store record keeps the epoch and where it came from.
        let index = serde_json::from_slice::<serde_json::Value>(
            &std::fs::read(out.join("index.json")).unwrap(),
        )
        .unwrap();
        let record = blob_json(
            &out,
            index["annotations"]["io.strata.record"].as_str().unwrap(),
        );
        assert_eq!(record["recipes"]["tiny"]["epoch"], epoch);
        assert_eq!(
            record["recipes"]["tiny"]["epoch-source"],
            "source-date-epoch"
        );
    }
    // Unset (or empty) gives the recipe's epoch and the pinned digests back.
    let out = p.root().join("out-recipe");
    let mut c = p.build(&out);
    c.env("SOURCE_DATE_EPOCH", "");
    let r = json(&ok(c));
    assert_eq!(r["epoch-source"], "recipe");
    let digests = index_digests(&out);
    for (name, pinned) in PINNED {
        assert_eq!(&digests[*name], pinned);
    }
    // A value that is not a Unix time is bad input, and nothing is written.
    for bad in ["soon", "-5", "99999999999999"] {
        let out = p.root().join("out-bad");
        let mut c = p.build(&out);
        c.env("SOURCE_DATE_EPOCH", bad);
        let o = run(c);
        assert_eq!(o.status.code(), Some(2), "{bad}: {}", stderr(&o));
        assert!(stderr(&o).contains("SOURCE_DATE_EPOCH"), "{}", stderr(&o));
        assert!(!out.exists());
    }
}

#[test]
fn plan_on_a_fresh_machine_writes_nothing_and_waits_for_the_base() {
    let home = tempfile::tempdir().unwrap();
    let cache = home.path().join("c");
    let out = home.path().join("out");
    let run_plan = |json_out: bool| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_strata"));
        c.current_dir(repo())
            .env("HOME", home.path())
            .env("STRATA_CACHE", &cache)
            .env("CI", "true")
            .env_remove("STRATA_SSH_KEY")
            .env_remove("STRATA_KEY_DIR")
            .env_remove("XDG_CACHE_HOME")
            .env_remove("XDG_DATA_HOME")
            .env_remove("SOURCE_DATE_EPOCH")
            .arg("plan")
            .arg("-o")
            .arg(&out);
        if json_out {
            c.arg("--json");
        }
        run(c)
    };
    let o = run_plan(true);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let j = json(&o);
    assert_eq!(j["base-ready"], false);
    let checks = j["policy"]["checks"].as_array().unwrap();
    assert!(!checks.is_empty(), "the lab recipe sets budgets: {j}");
    assert!(
        checks.iter().all(|c| c["ok"] != false),
        "nothing is broken before the base exists: {j}"
    );
    let unknown: Vec<_> = checks.iter().filter(|c| c["ok"].is_null()).collect();
    assert!(!unknown.is_empty(), "{j}");
    // What they wait for: the layers built from the mmdebstrap base.
    assert!(
        unknown.iter().all(|c| {
            let w = c["waits-for"].as_str().unwrap();
            w.contains("base") || w.contains("jdk-")
        }),
        "{j}"
    );
    let layer = |name: &str| {
        let layers = j["layers"].as_array().unwrap();
        layers.iter().find(|l| l["name"] == name).unwrap().clone()
    };
    // What only a disk needs waits for `build --disks`; the images' layers do not.
    assert_eq!(layer("disk-packages")["only-with-disks"], true, "{j}");
    assert_eq!(layer("vm")["only-with-disks"], true, "{j}");
    assert!(layer("base")["only-with-disks"].is_null(), "{j}");
    let user_env = layer("user-env");
    assert!(
        user_env["pending"].as_str().unwrap().contains("key"),
        "{user_env}"
    );
    let text = run_plan(false);
    assert_eq!(text.status.code(), Some(0), "{}", stderr(&text));
    let says = String::from_utf8_lossy(&text.stdout);
    assert!(says.contains("wait for layers not built yet"), "{says}");
    // Nothing was written: no cache, no key, no store, nothing in HOME.
    let left: Vec<_> = std::fs::read_dir(home.path()).unwrap().collect();
    assert!(left.is_empty(), "plan wrote {left:?}");
}
