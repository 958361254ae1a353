//! The default recipe (recipes/lab.toml) built for real, once, with mmdebstrap from the Debian
//! mirror; many checks on that one store (build once, test many).

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use common::*;

struct Lab {
    store: PathBuf,
    cache: PathBuf,
    report: serde_json::Value,
}

fn lab() -> Option<&'static Lab> {
    static LAB: OnceLock<Option<Lab>> = OnceLock::new();
    LAB.get_or_init(|| {
        if !require("mmdebstrap") {
            return None;
        }
        let dir = repo().join("target/lab-test");
        let store = dir.join("output");
        let cache = dir.join("cache");
        let _ = std::fs::remove_dir_all(&store);
        let mut c = strata(&cache);
        c.current_dir(repo())
            .args(["build", "--disks", "--json", "-o"])
            .arg(&store);
        let out = ok(c);
        Some(Lab {
            store,
            cache,
            report: json(&out),
        })
    })
    .as_ref()
}

const VERSIONS: [&str; 8] = [
    "2.7.7", "2.8.5", "2.9.2", "2.10.2", "3.1.4", "3.2.4", "3.3.6", "3.4.1",
];

/// Runs a command inside an unpacked rootfs, with /proc mounted as a container has it (in a
/// private mount namespace, so nothing leaks to the host).
fn in_root(root: &std::path::Path, args: &[&str]) -> Command {
    let mut c = Command::new("unshare");
    c.args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        "mount -t proc proc \"$0/proc\" && exec chroot \"$0\" \"$@\"",
    ])
    .arg(root)
    .args(args);
    c
}

/// Unpacks an image of the lab store (as root, owners kept) for chroot checks; None (skipped)
/// without umoci or root.
fn unpack_as_root(lab: &Lab, tag: &str, dir: &std::path::Path) -> Option<PathBuf> {
    if !require("umoci") {
        return None;
    }
    if !is_root() {
        eprintln!("SKIPPED: chroot needs root");
        return None;
    }
    let mut u = Command::new("umoci");
    u.args(["unpack", "--image"])
        .arg(format!("{}:hadoop-lab:{tag}", lab.store.display()))
        .arg(dir);
    ok(u);
    Some(dir.join("rootfs"))
}

fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

#[test]
fn lab_builds_one_image_per_version_sharing_base_jdk_and_user_env() {
    let Some(lab) = lab() else { return };
    let names: Vec<&str> = lab.report["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    let mut want: Vec<String> = VERSIONS.iter().map(|v| format!("hadoop-lab:{v}")).collect();
    want.push("hadoop-lab:base".into());
    assert_eq!(names, want);
    let shared: Vec<Vec<String>> = VERSIONS
        .iter()
        .map(|v| {
            manifest(&lab.store, &format!("hadoop-lab:{v}"))["layers"]
                .as_array()
                .unwrap()[..3]
                .iter()
                .map(|l| l["digest"].as_str().unwrap().to_string())
                .collect()
        })
        .collect();
    assert!(
        shared.windows(2).all(|w| w[0] == w[1]),
        "base, jdk and user-env are the same blobs in every version"
    );
    // The shared part is an image of its own, for publishing the base alone.
    let base = manifest(&lab.store, "hadoop-lab:base");
    let base_layers: Vec<String> = base["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(base_layers, shared[0]);
    // Stored once: the blob directory holds each distinct blob once, nothing else.
    let files: Vec<_> = std::fs::read_dir(lab.store.join("blobs/sha256"))
        .unwrap()
        .collect();
    let mut distinct = std::collections::BTreeSet::new();
    for (n, d) in index_digests(&lab.store) {
        distinct.insert(d.clone());
        let m = manifest(&lab.store, &n);
        distinct.insert(m["config"]["digest"].as_str().unwrap().to_string());
        for l in m["layers"].as_array().unwrap() {
            distinct.insert(l["digest"].as_str().unwrap().to_string());
        }
    }
    // + the store record, and the disk layers it names (kept for `strata disk`).
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(lab.store.join("index.json")).unwrap()).unwrap();
    let record = blob_json(
        &lab.store,
        index["annotations"]["io.strata.record"].as_str().unwrap(),
    );
    for img in record["images"].as_array().unwrap() {
        for d in img["disk-layers"].as_array().into_iter().flatten() {
            distinct.insert(d.as_str().unwrap().to_string());
        }
    }
    assert_eq!(files.len(), distinct.len() + 1, "+1: the store record");
}

#[test]
fn lab_images_pass_umoci_skopeo_and_the_schemas() {
    let Some(lab) = lab() else { return };
    if !(require("umoci") && require("skopeo")) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    for v in VERSIONS.iter().chain(&["base"]) {
        let dir = tmp.path().join(v);
        let mut u = Command::new("umoci");
        u.args(["unpack", "--rootless", "--image"])
            .arg(format!("{}:hadoop-lab:{v}", lab.store.display()))
            .arg(&dir);
        ok(u);
        let root = dir.join("rootfs");
        for f in [
            "etc/passwd",
            "home/hadoop/.bashrc",
            "usr/lib/jvm/java-11-openjdk-amd64/bin/java",
            "usr/local/lib/strata/bin/strata-boot",
        ] {
            assert!(root.join(f).exists(), "{v}: /{f}");
        }
        if *v != "base" {
            assert!(root.join("etc/hadoop/core-site.xml").is_file(), "{v}");
            assert_eq!(
                std::fs::read_link(root.join("opt/hadoop")).unwrap(),
                PathBuf::from(format!("hadoop-{v}"))
            );
        }
        assert!(
            !root.join("etc/ssh/ssh_host_ed25519_key").exists(),
            "{v}: no SSH host keys shipped"
        );
        std::fs::remove_dir_all(&dir).unwrap();
        let mut s = Command::new("skopeo");
        s.arg("inspect")
            .arg(format!("oci:{}:hadoop-lab:{v}", lab.store.display()));
        let info = json(&ok(s));
        if *v != "base" {
            assert_eq!(info["Labels"]["hadoop.version"], *v);
        }
    }
    let mut val = Command::new("/usr/bin/python3");
    val.arg(repo().join("tests/tools/validate_oci.py"))
        .arg(&lab.store);
    ok(val);
}

#[test]
fn lab_noop_rebuild_builds_nothing() {
    let Some(lab) = lab() else { return };
    // disks/ is left out: another test makes disks in this store meanwhile.
    let store_files = || {
        let mut m = snapshot(&lab.store);
        m.retain(|k, _| !k.starts_with("disks"));
        m
    };
    let before = store_files();
    let mut c = strata(&lab.cache);
    c.current_dir(repo())
        .args(["build", "--json", "-o"])
        .arg(&lab.store);
    let r = json(&ok(c));
    assert_eq!(r["layers-built"], 0, "{r}");
    assert_eq!(store_files(), before);
}

#[test]
fn lab_inspect_lists_the_base_packages_and_the_jdk() {
    let Some(lab) = lab() else { return };
    let mut c = strata(&lab.cache);
    c.args(["inspect", "hadoop-lab:3.3.6", "--json", "-o"])
        .arg(&lab.store);
    let i = json(&ok(c));
    let pk: Vec<(String, String)> = serde_json::from_value(i["packages"].clone()).unwrap();
    for want in [
        "openssh-server",
        "procps",
        "openjdk-11-jre-headless",
        "base-files",
    ] {
        assert!(
            pk.iter().any(|(p, v)| p == want && !v.is_empty()),
            "{want} in {pk:?}"
        );
    }
    assert!(
        !pk.iter().any(|(p, _)| p.starts_with("linux-image")),
        "no kernel in the container base"
    );
    assert_eq!(i["labels"]["io.strata.jdk"], "openjdk-11 (Java 11)");
    assert_eq!(i["carries-private-key"], true);
    let mut c = strata(&lab.cache);
    c.args(["inspect", "hadoop-lab:2.7.7", "--json", "-o"])
        .arg(&lab.store);
    let old = json(&ok(c));
    assert!(
        old["labels"]["io.strata.jdk.unsupported"]
            .as_str()
            .unwrap()
            .contains("no JDK 8")
    );
}

#[test]
fn lab_java_and_the_memory_derived_env_work_in_the_image() {
    let Some(lab) = lab() else { return };
    let tmp = tempfile::tempdir().unwrap();
    for v in ["2.7.7", "3.4.1"] {
        let dir = tmp.path().join(v);
        let Some(root) = unpack_as_root(lab, v, &dir) else {
            return;
        };
        let o = ok(in_root(&root, &["/opt/java/bin/java", "-version"]));
        assert!(stderr(&o).contains("11."), "{v}: {}", stderr(&o));
        // hadoop-env.sh computes the heap from the memory present now.
        let e = in_root(
            &root,
            &[
                "/bin/sh",
                "-c",
                ". /etc/hadoop/hadoop-env.sh; env | grep -E '^HADOOP_(HEAPSIZE|HEAPSIZE_MAX|PID_DIR)='",
            ],
        );
        let out = String::from_utf8(ok(e).stdout).unwrap();
        assert!(
            out.contains("HADOOP_PID_DIR=/var/lib/hadoop/hadoop-lab-"),
            "{v}: {out}"
        );
        let heap = out
            .lines()
            .find(|l| l.starts_with("HADOOP_HEAPSIZE"))
            .unwrap();
        let mb: u64 = heap
            .split('=')
            .nth(1)
            .unwrap()
            .trim_end_matches('m')
            .parse()
            .unwrap();
        assert!((256..=4096).contains(&mb), "{v}: {heap}");
        // The hadoop user owns its home and keys.
        let s = in_root(
            &root,
            &[
                "/usr/bin/stat",
                "-c",
                "%U %a",
                "/home/hadoop/.ssh",
                "/home/hadoop/.ssh/id_ed25519",
                "/home/hadoop/.ssh/authorized_keys",
            ],
        );
        let st = String::from_utf8(ok(s).stdout).unwrap();
        assert_eq!(st, "hadoop 700\nhadoop 600\nhadoop 600\n", "{v}");
        // strata-boot fills the NodeManager memory from what the node has.
        let mut b = in_root(&root, &["/usr/local/lib/strata/bin/strata-boot"]);
        b.env("STRATA_NM_MEMORY_MB", "1536");
        ok(b);
        let yarn = std::fs::read_to_string(root.join("etc/hadoop/yarn-site.xml")).unwrap();
        assert!(
            yarn.contains("<value>1536</value><!-- strata:boot nm-memory-mb -->"),
            "{v}"
        );
        assert!(
            root.join("etc/ssh/ssh_host_ed25519_key").exists(),
            "{v}: host keys made at boot"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn lab_rebuilt_from_scratch_gives_the_same_digests() {
    let Some(lab) = lab() else { return };
    // A second build from an empty cache: mmdebstrap runs again for the base and the JDK (the
    // JDK's run starts from the base's root filesystem; every package is downloaded once, into
    // the new cache's debs/). No disk packages without --disks.
    let tmp = tempfile::tempdir_in(repo().join("target")).unwrap();
    let (store, cache) = (tmp.path().join("output"), tmp.path().join("cache"));
    let build = |disks: bool| {
        let mut c = strata(&cache);
        c.current_dir(repo())
            .args(["build", "--json", "-o"])
            .arg(&store);
        if disks {
            c.arg("--disks");
        }
        json(&ok(c))
    };
    let r = build(false);
    assert_eq!(r["layers-cached"], 0, "{r}");
    let built = |r: &serde_json::Value| -> Vec<String> {
        let layers = r["layers"].as_array().unwrap().iter();
        let built = layers.filter(|l| l["from"] == "built");
        built
            .map(|l| l["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(
        !built(&r).iter().any(|n| n == "disk-packages" || n == "vm"),
        "a build without --disks makes no disk layer: {r}"
    );
    assert_eq!(
        index_digests(&store),
        index_digests(&lab.store),
        "mmdebstrap bases must be byte-identical"
    );
    // Every package the two runs installed is in the cache once, with its SHA-256 beside it.
    let debs: Vec<_> = std::fs::read_dir(cache.join("debs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    assert!(
        debs.len() > 100,
        "the base and the JDK install more: {debs:?}"
    );
    assert!(
        debs.iter()
            .any(|p| p.to_string_lossy().contains("openjdk-11"))
    );
    for d in &debs {
        let hex = std::fs::read_to_string(format!("{}.sha256", d.display())).unwrap();
        let data = std::fs::read(d).unwrap();
        assert_eq!(
            hex,
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&data)),
            "{}",
            d.display()
        );
    }
    // `strata disk` says how to get what the disk adds; --disks then builds only that.
    let mut c = strata(&cache);
    c.args(["disk", "hadoop-lab:3.4.1", "-q", "-o"]).arg(&store);
    let o = c.output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("strata build --disks"),
        "{}",
        stderr(&o)
    );
    let r = build(true);
    let mut disk_built = built(&r);
    disk_built.sort();
    assert_eq!(disk_built, ["disk-packages", "vm"], "{r}");
    // The disks of the two stores (built with separate caches) are byte-identical too.
    if disk_tools() {
        let mut disks = Vec::new();
        for (s, cache) in [(&lab.store, &lab.cache), (&store, &cache)] {
            let mut c = strata(cache);
            c.args(["disk", "hadoop-lab:3.4.1", "-q", "-o"]).arg(s);
            ok(c);
            disks.push(std::fs::read(s.join("disks/hadoop-lab_3.4.1.qcow2")).unwrap());
        }
        assert!(
            disks[0] == disks[1],
            "two disk builds from separately built stores differ"
        );
    }
}

#[test]
fn lab_dist_script_mounts_installs_and_refuses_at_boot() {
    let Some(lab) = lab() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let Some(root) = unpack_as_root(lab, "3.3.6", &tmp.path().join("node")) else {
        return;
    };
    let script = "/usr/local/lib/strata/bin/strata-hadoop-dist";
    // As built (mount mode), with no volume attached: boots cleanly and says why.
    let o = ok(in_root(&root, &[script]));
    assert!(
        stderr(&o).contains("the shared volume LABEL=hadoop-dist is absent"),
        "{}",
        stderr(&o)
    );

    // first-boot from a local mirror.
    let mirror = tmp.path().join("mirror");
    std::fs::create_dir_all(&mirror).unwrap();
    good_dist(&mirror.join("hadoop-3.3.6.tar.gz"), "3.3.6");
    let good = sha512_hex(&mirror.join("hadoop-3.3.6.tar.gz"));
    let url = serve_dir(&mirror);
    let env = |sha: &str, url: &str| {
        format!(
            "STRATA_DIST_VERSION=3.3.6\nSTRATA_DIST_TARGET=/opt/hadoop-3.3.6\nSTRATA_DIST_MODE=first-boot\nSTRATA_DIST_URL={url}\nSTRATA_DIST_SHA512={sha}\n"
        )
    };
    let env_file = root.join("etc/strata/hadoop-dist.env");
    // A wrong checksum is refused and nothing is installed.
    std::fs::write(
        &env_file,
        env(&"0".repeat(128), &format!("{url}/hadoop-3.3.6.tar.gz")),
    )
    .unwrap();
    let o = run(in_root(&root, &[script]));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("REFUSED") && stderr(&o).contains(&good),
        "{}",
        stderr(&o)
    );
    assert!(!root.join("opt/hadoop-3.3.6/bin/hadoop").exists());
    // An unreachable mirror: a clear message, not a failed unit.
    std::fs::write(
        &env_file,
        env(&good, "http://127.0.0.1:9/hadoop-3.3.6.tar.gz"),
    )
    .unwrap();
    let o = ok(in_root(&root, &[script]));
    assert!(stderr(&o).contains("is not reachable"), "{}", stderr(&o));
    // The right tarball is installed, and /opt/hadoop now resolves.
    std::fs::write(&env_file, env(&good, &format!("{url}/hadoop-3.3.6.tar.gz"))).unwrap();
    let o = ok(in_root(&root, &[script]));
    assert!(
        stderr(&o).contains("installed Hadoop 3.3.6"),
        "{}",
        stderr(&o)
    );
    let o = ok(in_root(&root, &["/opt/hadoop/bin/hadoop"]));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "Hadoop test\n");
}

fn disk_tools() -> bool {
    strata::disk::TOOLS
        .iter()
        .chain(&["qemu-system-x86_64"])
        .all(|t| require(t))
}

#[test]
fn lab_disk_boots_on_bios_and_uefi_with_no_failed_units() {
    let Some(lab) = lab() else { return };
    if !disk_tools() {
        return;
    }
    let mut c = strata(&lab.cache);
    // Booted as a flavor with a 2 GiB disk would: the root partition must grow to it.
    c.args([
        "disk",
        "hadoop-lab:3.3.6",
        "--boot-test",
        "--flavor-disk",
        "2GiB",
        "--overlay",
        "--json",
        "-o",
    ])
    .arg(&lab.store);
    let out = run(c);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert!(
        out.status.success(),
        "boot test failed: {}\n{r:#}",
        stderr(&out)
    );
    let tests = r["boot-tests"].as_array().unwrap();
    let fw: Vec<&str> = tests
        .iter()
        .map(|t| t["firmware"].as_str().unwrap())
        .collect();
    assert_eq!(fw, ["bios", "uefi"]);
    for t in tests {
        assert_eq!(t["passed"], true, "{t:#}");
        assert!(
            t.get("key-delivery").is_none(),
            "the image carries its key: nothing to deliver"
        );
        for (k, v) in [
            ("state", "running"),
            ("failed", "none"),
            ("user", "ok"),
            ("env", "ok"),
            ("java", "ok"),
            ("sshd", "active"),
            ("configs", "ok"),
            ("hadoop", "3.3.6"),
        ] {
            assert_eq!(t["check"][k], v, "{k} on {}", t["firmware"]);
        }
        let grown: u64 = t["check"]["rootfs-mib"].as_str().unwrap().parse().unwrap();
        assert!(
            grown > 1500,
            "the root file system grew to the 2 GiB disk: {grown} MiB"
        );
        let log = std::fs::read_to_string(t["console-log"].as_str().unwrap()).unwrap();
        assert!(
            log.contains("login:"),
            "the serial console shows a login prompt"
        );
    }
    // A plain qcow2 (Glance refuses backing files) that qemu-img checks clean; min_disk from it.
    let disk = r["disk"].as_str().unwrap();
    let info = Command::new("qemu-img")
        .args(["info", "--output=json", disk])
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["format"], "qcow2");
    assert!(info.get("backing-filename").is_none());
    let vsize = info["virtual-size"].as_u64().unwrap();
    assert_eq!(r["min-disk-gib"].as_u64().unwrap(), vsize.div_ceil(1 << 30));
    // The overlay on the shared base disk reads back the same as the flattened disk, and is small.
    let overlay = r["overlay"].as_str().unwrap();
    let cmp = Command::new("qemu-img")
        .args(["compare", overlay, disk])
        .output()
        .unwrap();
    assert!(
        cmp.status.success(),
        "{}",
        String::from_utf8_lossy(&cmp.stdout)
    );
    let ov_bytes = r["overlay-bytes"].as_u64().unwrap();
    assert!(
        ov_bytes < 16 << 20,
        "the overlay holds only what the version adds: {ov_bytes} bytes"
    );
    let info = Command::new("qemu-img")
        .args(["info", "--output=json", overlay])
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    let base = std::path::Path::new(r["base-disk"].as_str().unwrap())
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(info["backing-filename"], base.as_str());
    // The result is kept beside the disk, keyed by the image digest.
    let kept: serde_json::Value = serde_json::from_slice(
        &std::fs::read(lab.store.join("disks/hadoop-lab_3.3.6.boot-test.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(kept["manifest"], r["manifest"]);
}

#[test]
fn lab_disk_over_its_budget_fails_and_leaves_no_disk() {
    let Some(lab) = lab() else { return };
    if !disk_tools() {
        return;
    }
    let mut c = strata(&lab.cache);
    c.args(["disk", "hadoop-lab:2.7.7", "--disk-budget", "500MiB", "-o"])
        .arg(&lab.store);
    let o = run(c);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("disk hadoop-lab:2.7.7:")
            && stderr(&o).contains("over its budget 500.0 MiB"),
        "{}",
        stderr(&o)
    );
    assert!(
        !lab.store.join("disks/hadoop-lab_2.7.7.qcow2").exists(),
        "no partial disk"
    );
    // (Its work directory is removed too; not checked here: other tests make disks in this
    // store at the same time.)
}

#[test]
fn lab_disk_on_a_full_file_system_fails_cleanly() {
    let Some(lab) = lab() else { return };
    if !disk_tools() {
        return;
    }
    if !is_root() {
        eprintln!("SKIPPED: mounting a small tmpfs needs root");
        return;
    }
    // A copy of the store on a 600 MiB tmpfs: room for the store, not for a disk's work files.
    let mnt = tempfile::tempdir().unwrap();
    let m = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=600m", "tmpfs"])
        .arg(mnt.path())
        .status()
        .unwrap();
    assert!(m.success(), "mount tmpfs");
    struct Unmount<'a>(&'a std::path::Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _guard = Unmount(mnt.path());
    let store = mnt.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    for f in ["oci-layout", "index.json", "blobs"] {
        let st = Command::new("cp")
            .arg("-a")
            .arg(lab.store.join(f))
            .arg(&store)
            .status()
            .unwrap();
        assert!(st.success());
    }
    let mut c = strata(&lab.cache);
    c.args(["disk", "hadoop-lab:3.2.4", "-o"]).arg(&store);
    let o = run(c);
    assert!(
        !o.status.success(),
        "a full file system must fail the disk build"
    );
    assert!(
        stderr(&o).contains("No space left on device"),
        "says why: {}",
        stderr(&o)
    );
    let left: Vec<String> = std::fs::read_dir(store.join("disks"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        left.is_empty(),
        "no partial disk or work files left: {left:?}"
    );
}

// ------------------------------------------------------------------------------------------
// The lab with `[ssh] deliver = "boot"`: two versions (one alone would have no shared layers
// and break the per-version budget), built on the lab's cache (base, JDK and disk packages come
// from it; only the accounts layer and the versions' configs are new); 3.3.6 is boot-tested.

struct Public {
    store: PathBuf,
    cache: PathBuf,
    report: serde_json::Value,
}

const PUBLIC: &str = "hadoop-lab-public:3.3.6";

fn public() -> Option<&'static Public> {
    static PUBLIC: OnceLock<Option<Public>> = OnceLock::new();
    PUBLIC
        .get_or_init(|| {
            let lab = lab()?;
            let dir = repo().join("target/lab-test");
            let store = dir.join("public-output");
            let _ = std::fs::remove_dir_all(&store);
            let recipe = lab_public_recipe(&dir);
            let mut c = strata(&lab.cache);
            c.arg("build")
                .arg(&recipe)
                .args(["--disks", "--json", "-o"])
                .arg(&store);
            let start = std::time::Instant::now();
            let out = ok(c);
            eprintln!(
                "the public variant built in {:.1}s on the lab's cache",
                start.elapsed().as_secs_f64()
            );
            Some(Public {
                store,
                cache: lab.cache.clone(),
                report: json(&out),
            })
        })
        .as_ref()
}

fn config(store: &std::path::Path, name: &str) -> serde_json::Value {
    let m = manifest(store, name);
    blob_json(store, m["config"]["digest"].as_str().unwrap())
}

fn fixture_public_key() -> String {
    let p = std::fs::read_to_string(repo().join("tests/fixtures/ssh/id_ed25519.pub")).unwrap();
    p.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}

#[test]
fn lab_public_images_carry_only_the_public_key() {
    let Some(p) = public() else { return };
    let Some(lab) = lab() else { return };
    // Only what depends on the delivery or the recipe's name is new: the accounts layer and
    // the versions' configs.
    assert!(
        p.report["layers-built"].as_u64().unwrap() <= 3,
        "{:#}",
        p.report
    );
    let pm = manifest(&p.store, PUBLIC);
    let lm = manifest(&lab.store, "hadoop-lab:3.3.6");
    for i in [0, 1] {
        assert_eq!(
            pm["layers"][i]["digest"], lm["layers"][i]["digest"],
            "base and JDK are the lab's blobs"
        );
    }
    assert_ne!(pm["layers"][2]["digest"], lm["layers"][2]["digest"]);
    let key = std::fs::read_to_string(fixture_key()).unwrap();
    let private_lines: Vec<&str> = key
        .lines()
        .skip(2)
        .filter(|l| !l.starts_with("-----"))
        .collect();
    assert!(private_lines.len() >= 3);
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(p.store.join("index.json")).unwrap()).unwrap();
    let record = blob_json(
        &p.store,
        index["annotations"]["io.strata.record"].as_str().unwrap(),
    );
    let settings = &record["recipes"]["hadoop-lab-public"];
    assert_eq!(settings["ssh"]["deliver"], "boot", "{settings:#}");
    for name in [PUBLIC, "hadoop-lab-public:base"] {
        let cfg = config(&p.store, name);
        let labels = &cfg["config"]["Labels"];
        assert_eq!(labels["io.strata.carries-private-key"], "false", "{name}");
        assert_eq!(labels["io.strata.ssh.deliver"], "boot", "{name}");
        assert_eq!(
            labels["io.strata.ssh-key.fingerprint"],
            config(&lab.store, "hadoop-lab:3.3.6")["config"]["Labels"]["io.strata.ssh-key.fingerprint"],
            "{name}: the same cluster key"
        );
        assert_eq!(
            cfg["config"]["Entrypoint"],
            serde_json::json!(["/usr/local/lib/strata/bin/strata-ssh-key"]),
            "{name}: in a container the key comes from a mounted secret"
        );
        assert_eq!(
            cfg["config"]["Cmd"],
            serde_json::json!(["/usr/local/lib/strata/bin/strata-node"])
        );
        // No blob of the image holds the cluster's private key (its PEM lines past the
        // header every ed25519 key shares), and strata's own check finds no key in any layer.
        for l in manifest(&p.store, name)["layers"].as_array().unwrap() {
            let d = l["digest"].as_str().unwrap();
            for (path, (.., data)) in layer_files(&p.store, d) {
                let text = String::from_utf8_lossy(&data);
                for secret in &private_lines {
                    assert!(
                        !text.contains(secret),
                        "{name}: /{path} holds the private key"
                    );
                }
            }
            assert_eq!(record["layers"][d]["private-key"], false, "{name}: {d}");
        }
    }
    // The accounts layer: the public key and authorized_keys, the script, its unit (enabled)
    // and what it needs to know; no private key.
    let files = layer_files(&p.store, pm["layers"][2]["digest"].as_str().unwrap());
    assert!(!files.contains_key("home/hadoop/.ssh/id_ed25519"));
    for f in ["id_ed25519.pub", "authorized_keys"] {
        let (mode, uid, _, data) = &files[&format!("home/hadoop/.ssh/{f}")];
        assert_eq!((*mode, *uid), (0o600, 1000), "{f}");
        let want =
            std::fs::read_to_string(repo().join("tests/fixtures/ssh/id_ed25519.pub")).unwrap();
        assert_eq!(String::from_utf8_lossy(data).trim(), want.trim(), "{f}");
    }
    let (mode, uid, ..) = &files["usr/local/lib/strata/bin/strata-ssh-key"];
    assert_eq!((*mode, *uid), (0o755, 0));
    assert!(files.contains_key("etc/systemd/system/strata-ssh-key.service"));
    assert!(
        files.contains_key("etc/systemd/system/multi-user.target.wants/strata-ssh-key.service")
    );
    let env = String::from_utf8_lossy(&files["etc/strata/ssh-key.env"].3).into_owned();
    assert!(
        env.contains(&format!("STRATA_SSH_PUBLIC='{}'", fixture_public_key())),
        "{env}"
    );
    // ls and inspect say so.
    let mut c = strata(&p.cache);
    c.args(["inspect", PUBLIC, "--json", "-o"]).arg(&p.store);
    let i = json(&ok(c));
    assert_eq!(i["carries-private-key"], false);
    assert_eq!(i["keys-at-boot"], true);
    let mut c = strata(&p.cache);
    c.args(["ls", "-o"]).arg(&p.store);
    let ls = String::from_utf8(ok(c).stdout).unwrap();
    assert!(
        ls.lines()
            .any(|l| l.starts_with(PUBLIC) && l.contains("(key at boot)")),
        "{ls}"
    );
}

#[test]
fn lab_public_container_takes_its_key_from_a_mounted_secret() {
    let Some(p) = public() else { return };
    let tmp = tempfile::tempdir().unwrap();
    if !(require("umoci") && is_root()) {
        eprintln!("SKIPPED: chroot needs umoci and root");
        return;
    }
    let mut u = Command::new("umoci");
    u.args(["unpack", "--image"])
        .arg(format!("{}:{PUBLIC}", p.store.display()))
        .arg(tmp.path().join("node"));
    ok(u);
    let root = tmp.path().join("node/rootfs");
    let script = "/usr/local/lib/strata/bin/strata-ssh-key";
    let key = root.join("home/hadoop/.ssh/id_ed25519");
    // No secret: the container starts anyway, says why, and runs its command.
    let o = ok(in_root(&root, &[script, "echo", "node started"]));
    assert!(
        stderr(&o).contains("no cluster key found (secret config-drive)"),
        "{}",
        stderr(&o)
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout), "node started\n");
    assert!(!key.exists());
    // The key as a secret file (what `docker run --secret` / `-v KEY:/run/secrets/…:ro` give).
    std::fs::create_dir_all(root.join("run/secrets")).unwrap();
    std::fs::copy(fixture_key(), root.join("run/secrets/strata-ssh-key")).unwrap();
    let o = ok(in_root(&root, &[script, "echo", "node started"]));
    assert!(
        stderr(&o).contains("installed the cluster key (SHA256:")
            && stderr(&o).contains("from the secret file /run/secrets/strata-ssh-key"),
        "{}",
        stderr(&o)
    );
    assert!(!stderr(&o).contains("BEGIN"), "the key is never printed");
    assert_eq!(
        std::fs::read(&key).unwrap(),
        std::fs::read(fixture_key()).unwrap()
    );
    let s = in_root(
        &root,
        &[
            "/usr/bin/stat",
            "-c",
            "%U %a",
            "/home/hadoop/.ssh",
            "/home/hadoop/.ssh/id_ed25519",
        ],
    );
    assert_eq!(
        String::from_utf8(ok(s).stdout).unwrap(),
        "hadoop 700\nhadoop 600\n"
    );
}

#[test]
fn lab_public_disk_gets_its_key_from_a_config_drive() {
    let Some(p) = public() else { return };
    if !(disk_tools() && require("ssh") && require("ssh-keygen")) {
        return;
    }
    // Another key than the images': refused before any disk work.
    let tmp = tempfile::tempdir().unwrap();
    let other = tmp.path().join("other");
    let g = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other)
        .status()
        .unwrap();
    assert!(g.success());
    let mut c = strata(&p.cache);
    c.env("STRATA_SSH_KEY", &other)
        .args(["disk", PUBLIC, "--boot-test", "-o"])
        .arg(&p.store);
    let o = run(c);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("is not the key of hadoop-lab-public's images"),
        "{}",
        stderr(&o)
    );
    assert!(!p.store.join("disks/hadoop-lab-public_3.3.6.qcow2").exists());

    // BIOS only: the firmware does not change how the key arrives.
    let start = std::time::Instant::now();
    let mut c = strata(&p.cache);
    c.args([
        "disk",
        PUBLIC,
        "--boot-test",
        "--firmware",
        "bios",
        "--json",
        "-o",
    ])
    .arg(&p.store);
    let out = run(c);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert!(
        out.status.success(),
        "boot test failed: {}\n{r:#}",
        stderr(&out)
    );
    eprintln!(
        "disk + BIOS boot test with key delivery: {:.0}s",
        start.elapsed().as_secs_f64()
    );
    let t = &r["boot-tests"][0];
    assert_eq!(t["passed"], true, "{t:#}");
    assert_eq!(t["check"]["sshd"], "active");
    assert_eq!(
        t["check"]["failed"], "none",
        "strata-ssh-key never fails the boot"
    );
    let kd = &t["key-delivery"];
    assert_eq!(kd["via"], "config-drive", "{kd:#}");
    assert_eq!(kd["login"], true, "sshd accepted the delivered key: {kd:#}");
    for (k, v) in [
        ("key-mode", "600"),
        ("key-owner", "hadoop"),
        ("dir-mode", "700"),
        ("key-matches", "true"),
        ("self-login", "ok"),
    ] {
        assert_eq!(kd["check"][k], v, "{k}: {kd:#}");
    }
    assert!(
        kd["console"]
            .as_str()
            .unwrap()
            .contains("from the config drive's user data"),
        "{kd:#}"
    );
    let kept: serde_json::Value = serde_json::from_slice(
        &std::fs::read(p.store.join("disks/hadoop-lab-public_3.3.6.boot-test.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(kept["results"][0]["key-delivery"]["login"], true);
    let log = std::fs::read_to_string(t["console-log"].as_str().unwrap()).unwrap();
    assert!(
        !log.contains("PRIVATE KEY-----"),
        "the key never reaches the console"
    );
}
