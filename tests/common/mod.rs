//! Shared helpers of the integration tests: run the real `strata` binary in temp dirs, make the
//! tiny reference project (a small rootfs and JDK tarball made here, the repo's layers and
//! catalogue), snapshot a store's bytes, check for tools; a real Glance and Keystone (`cloud`)
//! and a fault proxy in front of them (`proxy`).
#![allow(dead_code)]

pub mod cloud;
pub mod docker;
pub mod proxy;
pub mod registry;

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
    if strata::support::cmd::have(tool) {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "{tool} is missing (install {}): with CI=true this fails instead of skipping",
            strata::support::cmd::package_of(tool)
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
    c.output().expect("strata runs")
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
    strata::support::hash::sha512_file(path).unwrap()
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

/// path → (mode, uid, gid, content) of a layer's files.
pub type LayerFiles = BTreeMap<String, (u32, u64, u64, Vec<u8>)>;

/// The files of a gzip layer blob.
pub fn layer_files(store: &Path, digest: &str) -> LayerFiles {
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

/// A tiny HTTP/1.0 file server on 127.0.0.1 (for release tarball downloads); serves `dir` until
/// the test process ends. Returns the base URL.
pub fn serve_dir(dir: &Path) -> String {
    use std::io::{BufRead, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let dir = dir.to_path_buf();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut line = String::new();
            let mut r = std::io::BufReader::new(s.try_clone().unwrap());
            if r.read_line(&mut line).is_err() {
                continue;
            }
            // Drain the headers.
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).unwrap_or(0) <= 2 {
                    break;
                }
            }
            let path = line
                .split_whitespace()
                .nth(1)
                .unwrap_or("/")
                .trim_start_matches('/')
                .to_string();
            match std::fs::read(dir.join(&path)) {
                Ok(data) => {
                    let _ = write!(
                        s,
                        "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\n\r\n",
                        data.len()
                    );
                    let _ = s.write_all(&data);
                }
                Err(_) => {
                    let _ = write!(s, "HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n");
                }
            }
        }
    });
    format!("http://{addr}")
}

/// A raw tar entry for hostile tarballs: names are written as given, unchecked.
pub enum Raw<'a> {
    File(&'a str, &'a [u8]),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    Char(&'a str),
    /// A setuid-root executable.
    Setuid(&'a str, &'a [u8]),
}

/// A .tar.gz with exactly these entries (bypassing every check, to test the reader's).
pub fn raw_tar_gz(path: &Path, entries: &[Raw]) {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        let (name, ty, link, data): (&str, tar::EntryType, Option<&str>, &[u8]) = match e {
            Raw::File(n, d) => (n, tar::EntryType::Regular, None, d),
            Raw::Dir(n) => (n, tar::EntryType::Directory, None, b""),
            Raw::Symlink(n, t) => (n, tar::EntryType::Symlink, Some(t), b""),
            Raw::Hardlink(n, t) => (n, tar::EntryType::Link, Some(t), b""),
            Raw::Char(n) => (n, tar::EntryType::Char, None, b""),
            Raw::Setuid(n, d) => (n, tar::EntryType::Regular, None, d),
        };
        let raw = h.as_old_mut();
        raw.name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(l) = link {
            raw.linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_entry_type(ty);
        let exec = matches!(ty, tar::EntryType::Directory) || name.contains("/bin/");
        h.set_mode(match e {
            Raw::Setuid(..) => 0o4755,
            _ if exec => 0o755,
            _ => 0o644,
        });
        h.set_size(data.len() as u64);
        h.set_mtime(EPOCH);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    let tar = b.into_inner().unwrap();
    write_gz(path, &tar);
}

/// A small, well-formed Hadoop release tarball.
pub fn good_dist(path: &Path, version: &str) {
    let top = format!("hadoop-{version}");
    let bin = format!("{top}/bin/hadoop");
    let lib = format!("{top}/share/hadoop/common/hadoop-common-{version}.jar");
    let lnk = format!("{top}/bin/hadoop-link");
    raw_tar_gz(
        path,
        &[
            Raw::Dir(&format!("{top}/")),
            Raw::Dir(&format!("{top}/bin/")),
            Raw::File(&bin, b"#!/bin/sh\necho Hadoop test\n"),
            Raw::Hardlink(&lnk, &bin),
            Raw::Dir(&format!("{top}/share/hadoop/common/")),
            Raw::File(&lib, b"PK fake jar"),
        ],
    );
}

/// recipes/lab.toml as a public variant: its own name, two versions, keys delivered at boot.
pub fn lab_public_recipe(dir: &Path) -> PathBuf {
    let lab = std::fs::read_to_string(repo().join("recipes/lab.toml")).unwrap();
    let mut src = lab.clone();
    for (from, to) in [
        (
            "[recipe]\n",
            format!("[recipe]\nroot = \"{}\"\n", repo().display()),
        ),
        (
            "name = \"hadoop-lab\"\n",
            "name = \"hadoop-lab-public\"\n".into(),
        ),
        (
            "versions = \"all\"",
            "versions = [\"3.3.6\", \"3.4.1\"]".into(),
        ),
    ] {
        assert!(
            src.contains(from),
            "recipes/lab.toml no longer has {from:?}"
        );
        src = src.replacen(from, &to, 1);
    }
    assert!(!lab.contains("[ssh]"), "recipes/lab.toml has [ssh] now");
    src.push_str("\n[ssh]\ndeliver = \"boot\"\n");
    let path = dir.join("lab-public.toml");
    std::fs::write(&path, src).unwrap();
    path
}

/// The lab store and its cache (`target/lab-test`): one lab build per test run, shared by the
/// lab, disk, publish, share and docker tests (a no-op when another test binary built it first).
/// Returns (store, cache).
pub fn lab_store() -> (PathBuf, PathBuf) {
    let dir = repo().join("target/lab-test");
    let (store, cache) = (dir.join("output"), dir.join("cache"));
    let mut c = strata(&cache);
    c.current_dir(repo())
        .args(["build", "--disks", "-q", "-o"])
        .arg(&store);
    ok(c);
    (store, cache)
}

/// The disk record of `image` in the lab store, made now unless one from this very image is
/// already there (the lab test or an earlier run made it).
pub fn lab_disk(store: &Path, cache: &Path, image: &str) -> serde_json::Value {
    let manifest = index_digests(store)[image].clone();
    let record = store.join(format!("disks/{}.disk.json", image.replace(':', "_")));
    let read = || -> Option<serde_json::Value> {
        serde_json::from_slice(&std::fs::read(&record).ok()?).ok()
    };
    if !read().is_some_and(|r| r["manifest"] == manifest.as_str()) {
        let mut c = strata(cache);
        c.args(["disk", image, "-q", "-o"]).arg(store);
        ok(c);
    }
    read().expect("the disk record")
}
