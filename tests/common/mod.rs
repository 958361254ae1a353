//! Shared helpers of the integration tests: run the real `strata` binary in temp dirs, make the
//! tiny reference project (a small rootfs and JDK tarball made here, the repo's layers and
//! catalogue), snapshot a store's bytes, check for tools.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use strata::layer::{Content, Entry, Kind};

pub const EPOCH: u64 = 1_700_000_000;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture_key() -> PathBuf {
    repo().join("tests/fixtures/ssh/id_ed25519")
}

/// True if `tool` is installed. Without it a test skips, saying why; with CI=true it fails.
pub fn require(tool: &str) -> bool {
    if strata::cmd::have(tool) {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "{tool} is missing (install {}): with CI=true this fails instead of skipping",
            strata::cmd::package_of(tool)
        );
    }
    eprintln!("SKIPPED: {tool} is not installed (run scripts/install-deps)");
    false
}

/// The strata binary with a clean, test-controlled environment.
pub fn strata(cache: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_strata"));
    c.env("STRATA_CACHE", cache)
        .env("STRATA_SSH_KEY", fixture_key())
        .env_remove("SOURCE_DATE_EPOCH")
        .env("CI", "true"); // plain progress lines
    c
}

pub fn run(mut c: Command) -> Output {
    let out = c.output().expect("strata runs");
    out
}

pub fn ok(c: Command) -> Output {
    let dbg = format!("{c:?}");
    let out = run(c);
    assert!(
        out.status.success(),
        "{dbg} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Copies a directory tree (files and dirs; symlinks as symlinks).
pub fn copy_tree(from: &Path, to: &Path) {
    for e in walkdir::WalkDir::new(from) {
        let e = e.unwrap();
        let rel = e.path().strip_prefix(from).unwrap();
        let dest = to.join(rel);
        let ft = e.file_type();
        if ft.is_dir() {
            std::fs::create_dir_all(&dest).unwrap();
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(e.path()).unwrap(), &dest).unwrap();
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

fn file(path: &str, data: &str, mode: u32, uid: u32, gid: u32) -> Entry {
    Entry::file(
        path,
        Content::bytes(data.as_bytes().to_vec()),
        mode,
        uid,
        gid,
    )
}

/// A tiny root filesystem with what a real one has: accounts, a dpkg status, a device node, a
/// setuid binary, an absolute symlink and a hard link.
pub fn tiny_rootfs_entries() -> Vec<Entry> {
    let mut e = vec![
        Entry::dir("bin", 0o755, 0, 0),
        Entry::dir("dev", 0o755, 0, 0),
        Entry::dir("etc", 0o755, 0, 0),
        Entry::dir("tmp", 0o1777, 0, 0),
        Entry::dir("usr/bin", 0o755, 0, 0),
        Entry::dir("var/lib/dpkg", 0o755, 0, 0),
        file(
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n",
            0o644,
            0,
            0,
        ),
        file(
            "etc/group",
            "root:x:0:\ndaemon:x:1:\nshadow:x:42:\n",
            0o644,
            0,
            0,
        ),
        file(
            "etc/shadow",
            "root:*:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n",
            0o640,
            0,
            42,
        ),
        file(
            "etc/gshadow",
            "root:*::\ndaemon:*::\nshadow:*::\n",
            0o640,
            0,
            42,
        ),
        file(
            "etc/os-release",
            "ID=tiny\nPRETTY_NAME=\"tiny test rootfs\"\n",
            0o644,
            0,
            0,
        ),
        file("bin/sh", "#!/bin/sh\necho tiny\n", 0o755, 0, 0),
        file("usr/bin/passwd", "setuid binary stand-in\n", 0o4755, 0, 0),
        file(
            "var/lib/dpkg/status",
            "Package: base-files\nStatus: install ok installed\nVersion: 12.4\n\nPackage: tiny-tools\nStatus: install ok installed\nVersion: 1.0-1\n",
            0o644,
            0,
            0,
        ),
        Entry::symlink("etc/localtime", "/usr/share/zoneinfo/Etc/UTC"),
        Entry {
            path: "dev/null".into(),
            kind: Kind::Char(1, 3),
            mode: 0o666,
            uid: 0,
            gid: 0,
            xattrs: vec![],
        },
        Entry {
            path: "usr/bin/sh-link".into(),
            kind: Kind::Hardlink("bin/sh".into()),
            mode: 0o755,
            uid: 0,
            gid: 0,
            xattrs: vec![],
        },
    ];
    e.sort_by(|a, b| a.path.cmp(&b.path));
    e
}

/// Writes entries as an uncompressed tar (deterministic), in the given order.
pub fn write_tar(path: &Path, entries: &[Entry]) {
    let mut f = std::fs::File::create(path).unwrap();
    strata::layer::write_tar(entries, EPOCH, &mut f).unwrap();
}

/// Writes entries as a .tar.gz (fixed gzip header).
pub fn write_tar_gz(path: &Path, entries: &[Entry]) {
    let mut tar = Vec::new();
    strata::layer::write_tar(entries, EPOCH, &mut tar).unwrap();
    write_gz(path, &tar);
}

pub fn write_gz(path: &Path, data: &[u8]) {
    use std::io::Write;
    let f = std::fs::File::create(path).unwrap();
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(f, flate2::Compression::new(6));
    gz.write_all(data).unwrap();
    gz.finish().unwrap();
}

pub fn sha512_hex(path: &Path) -> String {
    strata::fetch::sha512_file(path).unwrap()
}

/// A tiny JDK tarball: jdk-11/bin/java that prints a version.
pub fn tiny_jdk_entries() -> Vec<Entry> {
    vec![
        Entry::dir("jdk-11", 0o755, 0, 0),
        Entry::dir("jdk-11/bin", 0o755, 0, 0),
        file(
            "jdk-11/bin/java",
            "#!/bin/sh\necho 'openjdk version \"11.0.99\" (tiny test JDK)'\n",
            0o755,
            0,
            0,
        ),
        file("jdk-11/release", "JAVA_VERSION=\"11.0.99\"\n", 0o644, 0, 0),
    ]
}

/// The tiny reference project: the repo's layers and catalogue, a tiny rootfs and JDK.
pub struct Project {
    pub dir: tempfile::TempDir,
}

pub const TINY_VERSIONS: &str = r#"["2.10.2", "3.3.6"]"#;

impl Project {
    pub fn new() -> Project {
        Self::with_versions(TINY_VERSIONS)
    }

    pub fn with_versions(versions: &str) -> Project {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        copy_tree(&repo().join("layers"), &root.join("layers"));
        copy_tree(
            &repo().join("hadoop-versions"),
            &root.join("hadoop-versions"),
        );
        std::fs::create_dir_all(root.join("inputs")).unwrap();
        std::fs::create_dir_all(root.join("recipes")).unwrap();
        write_tar(&root.join("inputs/rootfs.tar"), &tiny_rootfs_entries());
        write_tar_gz(&root.join("inputs/jdk.tar.gz"), &tiny_jdk_entries());
        let sha = sha512_hex(&root.join("inputs/jdk.tar.gz"));
        let recipe = TINY_RECIPE
            .replace("@VERSIONS@", versions)
            .replace("@JDK_SHA512@", &sha);
        std::fs::write(root.join("recipes/tiny.toml"), recipe).unwrap();
        Project { dir }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn recipe(&self) -> PathBuf {
        self.root().join("recipes/tiny.toml")
    }

    pub fn edit_recipe(&self, f: impl FnOnce(String) -> String) {
        let s = std::fs::read_to_string(self.recipe()).unwrap();
        std::fs::write(self.recipe(), f(s)).unwrap();
    }

    /// `strata build` of the tiny recipe into `out` with its own cache under the project.
    pub fn build(&self, out: &Path) -> Command {
        let mut c = strata(&self.root().join("cache"));
        c.arg("build")
            .arg(self.recipe())
            .arg("-o")
            .arg(out)
            .arg("--json");
        c
    }
}

pub const TINY_RECIPE: &str = r#"
[recipe]
name = "tiny"
versions = @VERSIONS@
epoch = 1700000000

[base]
source = "tarball"
path = "inputs/rootfs.tar"

[jdk.tiny-11]
java-version = 11
java-home = "/usr/lib/jvm/tiny-11"
tarball = { path = "inputs/jdk.tar.gz", sha512 = "@JDK_SHA512@" }

[lines."2.10"]
jdk = "tiny-11"
accept-unsupported = "test fixture"
[lines."3.3"]
jdk = "tiny-11"

[[layer]]
name = "user-env"
dir = "layers/user-env"
accounts = true

[[layer]]
name = "hadoop-conf"
dir = "layers/hadoop-conf"
per-version = true

[vars]
namenode_host = "namenode"
resourcemanager_host = "resourcemanager"
historyserver_host = "historyserver"
replication = 1
data_root = "/var/lib/hadoop"
log_root = "/var/log/hadoop"
workers = ["localhost"]

[image]
cmd = ["/usr/local/lib/strata/bin/strata-node"]
"#;

/// Every file under a directory with its size and SHA-256 (to prove a store did not change).
pub fn snapshot(dir: &Path) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    if !dir.exists() {
        return m;
    }
    for e in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let e = e.unwrap();
        let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
        if e.file_type().is_file() {
            let data = std::fs::read(e.path()).unwrap();
            use sha2::Digest;
            m.insert(
                rel,
                format!(
                    "{} {}",
                    data.len(),
                    hex::encode(sha2::Sha256::digest(&data))
                ),
            );
        } else {
            m.insert(rel, "dir".into());
        }
    }
    m
}

/// `name → manifest digest` from a store's index.
pub fn index_digests(store: &Path) -> BTreeMap<String, String> {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.join("index.json")).unwrap()).unwrap();
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["annotations"]["io.strata.image.name"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                m["digest"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Reads a JSON blob of a store.
pub fn blob_json(store: &Path, digest: &str) -> serde_json::Value {
    let hex = digest.trim_start_matches("sha256:");
    serde_json::from_slice(&std::fs::read(store.join("blobs/sha256").join(hex)).unwrap()).unwrap()
}

/// The files of a gzip layer blob: path → (mode, uid, gid, content).
pub fn layer_files(store: &Path, digest: &str) -> BTreeMap<String, (u32, u64, u64, Vec<u8>)> {
    use std::io::Read;
    let hex = digest.trim_start_matches("sha256:");
    let f = std::fs::File::open(store.join("blobs/sha256").join(hex)).unwrap();
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(f));
    let mut out = BTreeMap::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let p = e
            .path()
            .unwrap()
            .display()
            .to_string()
            .trim_end_matches('/')
            .to_string();
        let h = e.header().clone();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        out.insert(
            p,
            (h.mode().unwrap(), h.uid().unwrap(), h.gid().unwrap(), data),
        );
    }
    out
}

/// The manifest of an image by full name.
pub fn manifest(store: &Path, name: &str) -> serde_json::Value {
    let d = index_digests(store);
    blob_json(store, &d[name])
}
