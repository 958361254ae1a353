//! The store attacked the way a hostile user or a failing machine would (issue 10): SIGKILL at
//! many points of a build, each kind of damage to blobs, `index.json`, `oci-layout` and the
//! record followed by `verify`, `build` and `gc`, concurrent builds of two recipes into one store
//! with `gc` alongside, a full file system during a layer build, and one regression test per
//! finding. Tiny recipes only; every case asserts the exit code and what the store holds after.
//! Each campaign prints its counts (cases, clear refusals, wrong exit codes, hangs, store damage).

mod common;

use std::collections::BTreeSet;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Runs a command with a liveness limit (no test may hang): `None` if it had to be killed.
fn run_limited(mut c: Command, limit: Duration) -> Option<Output> {
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().expect("strata runs");
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return Some(child.wait_with_output().unwrap());
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// What a campaign saw; every count but `cases` and `refusals` must end at zero.
#[derive(Debug, Default)]
struct Tally {
    cases: usize,
    refusals: usize,
    wrong_exit: Vec<String>,
    hangs: Vec<String>,
    panics: Vec<String>,
    damage: Vec<String>,
}

impl Tally {
    /// Runs `c`, checks its exit code is `want` and that it did not panic or hang.
    fn expect(&mut self, case: &str, c: Command, want: i32) -> Option<Output> {
        self.cases += 1;
        let Some(o) = run_limited(c, Duration::from_secs(60)) else {
            self.hangs.push(case.into());
            return None;
        };
        if stderr(&o).contains("panicked") {
            self.panics.push(format!("{case}: {}", stderr(&o)));
        }
        let code = o.status.code().unwrap_or(-1);
        if code != want {
            self.wrong_exit.push(format!(
                "{case}: exit {code}, want {want}\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&o.stdout),
                stderr(&o)
            ));
        } else if want != 0 {
            self.refusals += 1;
        }
        Some(o)
    }

    fn check(&self, what: &str) {
        eprintln!(
            "{what}: {} cases, {} clear refusals, {} wrong exit codes, {} hangs, {} panics, {} store damage",
            self.cases,
            self.refusals,
            self.wrong_exit.len(),
            self.hangs.len(),
            self.panics.len(),
            self.damage.len()
        );
        assert!(
            self.wrong_exit.is_empty()
                && self.hangs.is_empty()
                && self.panics.is_empty()
                && self.damage.is_empty(),
            "{what}: {self:#?}"
        );
    }
}

fn cmd(cache: &Path, args: &[&str], out: &Path) -> Command {
    let mut c = strata(cache);
    c.args(args).arg("-o").arg(out);
    c
}

fn verify_code(cache: &Path, out: &Path) -> i32 {
    run(cmd(cache, &["verify"], out))
        .status
        .code()
        .unwrap_or(-1)
}

fn blob(out: &Path, digest: &str) -> PathBuf {
    out.join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

/// Flips one byte in place (same size, same inode: what a bad disk or a careless edit does).
fn flip(path: &Path, at: u64) {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .read(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(at)).unwrap();
    std::io::Read::read_exact(&mut f, &mut b).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&[b[0] ^ 0x55]).unwrap();
}

fn sha256_hex(path: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

/// The digests of one image: manifest, config, layers.
struct Parts {
    manifest: String,
    config: String,
    layers: Vec<String>,
}

fn parts(out: &Path, name: &str) -> Parts {
    let m = manifest(out, name);
    Parts {
        manifest: index_digests(out)[name].clone(),
        config: m["config"]["digest"].as_str().unwrap().to_string(),
        layers: m["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_string())
            .collect(),
    }
}

fn record_digest(out: &Path) -> String {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("index.json")).unwrap()).unwrap();
    index["annotations"]["io.strata.record"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The blob files of a store (names), to prove `gc` removed nothing it should keep.
fn blob_set(out: &Path) -> BTreeSet<String> {
    std::fs::read_dir(out.join("blobs/sha256"))
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A built tiny project: its pristine store and cache, to copy for each case.
struct Built {
    p: Project,
    store: PathBuf,
    cache: PathBuf,
}

fn built() -> Built {
    let p = Project::new();
    let store = p.root().join("pristine");
    ok(p.build(&store));
    let cache = p.root().join("cache");
    Built { p, store, cache }
}

impl Built {
    /// A fresh copy of the store and the cache under `name`.
    fn copy(&self, name: &str) -> (PathBuf, PathBuf) {
        let dir = self.p.root().join(name);
        let _ = std::fs::remove_dir_all(&dir);
        let (out, cache) = (dir.join("out"), dir.join("cache"));
        copy_tree(&self.store, &out);
        copy_tree(&self.cache, &cache);
        (out, cache)
    }

    fn build(&self, cache: &Path, out: &Path) -> Command {
        let mut c = strata(cache);
        c.arg("build").arg(self.p.recipe()).arg("-o").arg(out);
        c
    }
}

// ------------------------------------------------------------------------- finding 1: spread

#[test]
fn damage_in_a_store_never_reaches_the_cache_or_another_store() {
    let b = built();
    let (out, cache) = b.copy("one");
    let base = parts(&out, "tiny:3.3.6").layers[0].clone();
    let cached = blob(&cache, &base);
    let cached_before = sha256_hex(&cached);
    flip(&blob(&out, &base), 100);
    assert_eq!(
        sha256_hex(&cached),
        cached_before,
        "a byte flipped in the store must not change the cache's copy"
    );
    // A build into a new store from that cache is whole.
    let fresh = out.parent().unwrap().join("fresh");
    ok(b.build(&cache, &fresh));
    assert_eq!(verify_code(&cache, &fresh), 0, "the new store verifies");

    // A cached blob damaged in place (mtime set back, so only its ctime tells) is rebuilt at
    // reuse, never copied into a store.
    let f = std::fs::File::options().write(true).open(&cached).unwrap();
    let mtime = f.metadata().unwrap().modified().unwrap();
    flip(&cached, 50);
    f.set_modified(mtime).unwrap();
    drop(f);
    let other = out.parent().unwrap().join("other");
    let mut c = b.build(&cache, &other);
    c.arg("--json");
    let o = ok(c);
    assert!(
        stderr(&o).contains("is corrupt: rebuilding it"),
        "says it rebuilds: {}",
        stderr(&o)
    );
    assert_eq!(
        json(&o)["layers-built"],
        1,
        "only the damaged layer is rebuilt"
    );
    assert_eq!(verify_code(&cache, &other), 0, "the store verifies");
    assert_eq!(sha256_hex(&cached), base.trim_start_matches("sha256:"));

    // A store an older strata wrote (its blobs hard links into the cache) is unlinked by the
    // next build.
    let old = blob(&other, &base);
    std::fs::remove_file(&old).unwrap();
    std::fs::hard_link(&cached, &old).unwrap();
    ok(b.build(&cache, &other));
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(&old).unwrap().nlink(),
        1,
        "no longer shared"
    );
    assert_eq!(verify_code(&cache, &other), 0);
}

// -------------------------------------------------------------- finding 2: same-size damage

#[test]
fn a_build_repairs_same_size_damage_to_each_kind_of_blob() {
    let b = built();
    let p = parts(&b.store, "tiny:3.3.6");
    let kinds = [
        ("layer", p.layers[0].clone()),
        ("per-version layer", p.layers[3].clone()),
        ("config", p.config.clone()),
        ("manifest", p.manifest.clone()),
        ("record", record_digest(&b.store)),
    ];
    for (kind, digest) in kinds {
        let (out, cache) = b.copy(kind);
        flip(&blob(&out, &digest), 10);
        assert_eq!(verify_code(&cache, &out), 4, "{kind}: verify sees it");
        let mut c = b.build(&cache, &out);
        c.arg("--json");
        let r = json(&ok(c));
        assert!(
            r["repaired-blobs"]
                .as_array()
                .unwrap()
                .iter()
                .any(|d| d == &digest),
            "{kind}: the build says it repaired {digest}: {r}"
        );
        assert_eq!(verify_code(&cache, &out), 0, "{kind}: repaired by build");
        assert_eq!(index_digests(&out), index_digests(&b.store), "{kind}");
    }
}

#[test]
fn verify_repair_restores_from_the_cache_and_else_from_the_recipe() {
    let b = built();
    let (out, cache) = b.copy("repair");
    let p = parts(&out, "tiny:2.10.2");
    for d in [&p.manifest, &p.config, &p.layers[0], &p.layers[3]] {
        flip(&blob(&out, d), 5);
    }
    std::fs::write(out.join("oci-layout"), "garbage").unwrap();
    let c = cmd(
        &cache,
        &[
            "verify",
            "--repair",
            "--json",
            &format!("--cache={}", cache.display()),
        ],
        &out,
    );
    let r = json(&ok(c));
    assert_eq!(r["repaired"].as_array().unwrap().len(), 5, "{r}");
    assert_eq!(verify_code(&cache, &out), 0);

    // Without a cache the recipe rebuilds it; without either, exit 4 saying what to do.
    let empty = out.parent().unwrap().join("empty-cache");
    flip(&blob(&out, &p.manifest), 5);
    let empty_arg = format!("--cache={}", empty.display());
    let o = run(cmd(&cache, &["verify", "--repair", &empty_arg], &out));
    assert_eq!(o.status.code(), Some(4), "damage remains: {}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains(p.manifest.trim_start_matches("sha256:")),
        "{text}"
    );
    assert!(
        text.contains("strata build RECIPE"),
        "says what to do: {text}"
    );
    let mut c = cmd(&cache, &["verify", "--repair", &empty_arg], &out);
    c.arg(b.p.recipe());
    ok(c);
    assert_eq!(verify_code(&cache, &out), 0, "rebuilt by the recipe");
    assert_eq!(index_digests(&out), index_digests(&b.store));
}

// ------------------------------------------------------------------ finding 5: bounded epochs

#[test]
fn verify_refuses_a_created_time_that_is_not_rfc3339() {
    let b = built();
    let (out, cache) = b.copy("created");
    // An image whose config says year 10000 (what epoch 253402300800 used to write), with its
    // manifest and index entry made consistent: only `created` is wrong.
    let p = parts(&out, "tiny:3.3.6");
    let mut cfg = blob_json(&out, &p.config);
    cfg["created"] = "+10000-01-01T00:00:00Z".into();
    let cfg_bytes = serde_json::to_vec(&cfg).unwrap();
    let cfg_digest = write_blob(&out, &cfg_bytes);
    let mut m = blob_json(&out, &p.manifest);
    m["config"]["digest"] = cfg_digest.clone().into();
    m["config"]["size"] = cfg_bytes.len().into();
    let m_bytes = serde_json::to_vec(&m).unwrap();
    let m_digest = write_blob(&out, &m_bytes);
    edit_index(&out, |i| {
        for e in i["manifests"].as_array_mut().unwrap() {
            if e["digest"] == p.manifest.as_str() {
                e["digest"] = m_digest.clone().into();
                e["size"] = m_bytes.len().into();
            }
        }
    });
    let o = run(cmd(&cache, &["verify"], &out));
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("not an RFC 3339 time"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    // And the epochs that wrote such times are refused, naming the key.
    for (epoch, key) in [
        ("253402300800", "recipe.epoch"),
        ("9223372036854775807", "recipe.epoch"),
    ] {
        b.p.edit_recipe(|s| s.replace("epoch = 1700000000", &format!("epoch = {epoch}")));
        let o = run(b.build(&cache, &out));
        assert_eq!(o.status.code(), Some(2), "epoch {epoch}: {}", stderr(&o));
        assert!(
            stderr(&o).contains(key) && stderr(&o).contains("tiny.toml:"),
            "{}",
            stderr(&o)
        );
        b.p.edit_recipe(|s| s.replace(&format!("epoch = {epoch}"), "epoch = 1700000000"));
    }
    let mut c = b.build(&cache, &out);
    c.env("SOURCE_DATE_EPOCH", "253402300800");
    let o = run(c);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("SOURCE_DATE_EPOCH"), "{}", stderr(&o));
}

fn write_blob(out: &Path, data: &[u8]) -> String {
    use sha2::Digest;
    let hex = hex::encode(sha2::Sha256::digest(data));
    std::fs::write(out.join("blobs/sha256").join(&hex), data).unwrap();
    format!("sha256:{hex}")
}

fn edit_index(out: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = out.join("index.json");
    let mut i: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    f(&mut i);
    std::fs::write(&p, serde_json::to_vec(&i).unwrap()).unwrap();
}

// ------------------------------------------------------------ finding 6: names in a store

#[test]
fn two_recipes_in_one_store_have_unique_ref_names_the_oci_tools_accept() {
    let b = built();
    let (out, cache) = b.copy("two");
    b.p.edit_recipe(|s| s.replace("name = \"tiny\"", "name = \"other\""));
    ok(b.build(&cache, &out));
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("index.json")).unwrap()).unwrap();
    let refs: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            m["annotations"]["org.opencontainers.image.ref.name"]
                .as_str()
                .unwrap()
        })
        .collect();
    let unique: BTreeSet<&str> = refs.iter().copied().collect();
    assert_eq!(refs.len(), 6, "{refs:?}");
    assert_eq!(unique.len(), refs.len(), "ref names are unique: {refs:?}");
    assert!(
        unique.contains("tiny:3.3.6") && unique.contains("other:3.3.6"),
        "{refs:?}"
    );
    // strata's own commands still take the full name, and a bare version only when unambiguous.
    ok(cmd(&cache, &["inspect", "other:3.3.6"], &out));
    let o = run(cmd(&cache, &["inspect", "3.3.6"], &out));
    assert_eq!(o.status.code(), Some(2), "ambiguous: {}", stderr(&o));
    if require("skopeo") && require("umoci") {
        let want = index_digests(&out)["other:3.3.6"].clone();
        let mut s = Command::new("skopeo");
        s.arg("inspect")
            .arg(format!("oci:{}:other:3.3.6", out.display()));
        assert_eq!(
            json(&ok(s))["Digest"],
            want.as_str(),
            "skopeo finds the one image"
        );
        let mut u = Command::new("umoci");
        u.args(["unpack", "--rootless", "--image"])
            .arg(format!("{}:tiny:3.3.6", out.display()))
            .arg(out.parent().unwrap().join("unpacked"));
        ok(u);
    }
    // Names that are not Docker repository names are refused, naming the key.
    for bad in ["a..b", "Tiny", "a._b", "-x"] {
        b.p.edit_recipe(|s| s.replace("name = \"other\"", &format!("name = \"{bad}\"")));
        let o = run(b.build(&cache, &out));
        assert_eq!(o.status.code(), Some(2), "{bad}: {}", stderr(&o));
        assert!(stderr(&o).contains("recipe.name"), "{bad}: {}", stderr(&o));
        b.p.edit_recipe(|s| s.replace(&format!("name = \"{bad}\""), "name = \"other\""));
    }
}

// -------------------------------------------------------- finding 7: verify, gc, report gaps

#[test]
fn verify_gc_and_report_name_what_is_wrong() {
    let b = built();
    // blobs/ deleted: exit 4 naming the directory.
    let (out, cache) = b.copy("noblobs");
    std::fs::remove_dir_all(out.join("blobs")).unwrap();
    let o = run(cmd(&cache, &["verify"], &out));
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("blobs/sha256"));
    // A blob replaced by a directory: exit 4 naming its path.
    let (out, cache) = b.copy("dirblob");
    let layer = parts(&out, "tiny:3.3.6").layers[1].clone();
    let path = blob(&out, &layer);
    std::fs::remove_file(&path).unwrap();
    std::fs::create_dir(&path).unwrap();
    let o = run(cmd(&cache, &["verify"], &out));
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(&path.display().to_string()),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    // Damage in a blob no image uses is a note, not a problem (a build cannot be asked to fix
    // it; gc removes it).
    let (out, cache) = b.copy("unused");
    std::fs::write(out.join("blobs/sha256").join("ab".repeat(32)), "junk").unwrap();
    std::fs::create_dir(out.join("blobs/sha256").join("cd".repeat(32))).unwrap();
    let r = json(&ok(cmd(&cache, &["verify", "--json"], &out)));
    assert_eq!(r["unreferenced-damaged"], 2, "{r}");
    let r = json(&ok(cmd(&cache, &["gc", "--json"], &out)));
    assert_eq!(r["removed-blobs"], 2, "{r}");
    assert_eq!(verify_code(&cache, &out), 0);
    // Garbage in oci-layout.
    let (out, cache) = b.copy("layout");
    std::fs::write(out.join("oci-layout"), "{\"imageLayoutVersion\": 7}").unwrap();
    let o = run(cmd(&cache, &["verify"], &out));
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("oci-layout"));
    // A descriptor whose size is not its blob's: report fails too.
    let (out, cache) = b.copy("size");
    edit_index(&out, |i| {
        let e = &mut i["manifests"][1]["size"];
        *e = (e.as_u64().unwrap() + 1).into();
    });
    assert_eq!(verify_code(&cache, &out), 4);
    let o = run(cmd(&cache, &["report"], &out));
    assert_eq!(o.status.code(), Some(4), "report: {}", stderr(&o));
    // gc --dry-run counts every temp file gc then removes.
    let (out, cache) = b.copy("temps");
    for f in [
        out.join("blobs/sha256/.tmp-a"),
        out.join("blobs/sha256/.tmp-b"),
        out.join(".tmp-index"),
    ] {
        std::fs::write(f, "x").unwrap();
    }
    let dry = json(&ok(cmd(&cache, &["gc", "--dry-run", "--json"], &out)));
    let real = json(&ok(cmd(&cache, &["gc", "--json"], &out)));
    assert_eq!(real["removed-temp-files"], 3, "{real}");
    assert_eq!(
        dry["removed-temp-files"], real["removed-temp-files"],
        "{dry}"
    );
}

// ------------------------------------------------------- the corruption campaign (all kinds)

/// Each kind of damage, then `verify` (must exit 4), `gc` (must remove nothing reachable, and
/// refuse with 4 when it cannot know what is reachable) and `build` (repairs it, or refuses with
/// 4 leaving the store as it was), then `verify` again.
#[test]
fn every_kind_of_damage_then_verify_gc_and_build() {
    let b = built();
    let p = parts(&b.store, "tiny:3.3.6");
    let record = record_digest(&b.store);
    type Damage = Box<dyn Fn(&Path)>;
    let bytes_of = |d: &str| std::fs::metadata(blob(&b.store, d)).unwrap().len();
    let half = bytes_of(&p.layers[0]) / 2;
    let (l0, l3, cfg, man, rec) = (
        p.layers[0].clone(),
        p.layers[3].clone(),
        p.config.clone(),
        p.manifest.clone(),
        record.clone(),
    );
    let (l0b, cfgb, manb) = (l0.clone(), cfg.clone(), man.clone());
    // (name, damage, gc's exit, build's exit)
    let cases: Vec<(&str, Damage, i32, i32)> = vec![
        (
            "layer flipped",
            Box::new(move |o| flip(&blob(o, &l0), half)),
            0,
            0,
        ),
        (
            "per-version layer flipped",
            Box::new(move |o| flip(&blob(o, &l3), 3)),
            0,
            0,
        ),
        (
            "config flipped",
            Box::new(move |o| flip(&blob(o, &cfg), 3)),
            0,
            0,
        ),
        (
            "manifest flipped",
            Box::new(move |o| flip(&blob(o, &man), 3)),
            4,
            0,
        ),
        (
            "record flipped",
            Box::new(move |o| flip(&blob(o, &rec), 3)),
            4,
            0,
        ),
        (
            "layer truncated",
            Box::new(move |o| {
                let f = std::fs::File::options()
                    .write(true)
                    .open(blob(o, &l0b))
                    .unwrap();
                f.set_len(half).unwrap();
            }),
            0,
            0,
        ),
        (
            "config missing",
            Box::new(move |o| std::fs::remove_file(blob(o, &cfgb)).unwrap()),
            0,
            0,
        ),
        (
            "manifest replaced by a directory",
            Box::new(move |o| {
                std::fs::remove_file(blob(o, &manb)).unwrap();
                std::fs::create_dir(blob(o, &manb)).unwrap();
            }),
            4,
            0,
        ),
        (
            "blobs/ deleted",
            Box::new(|o| std::fs::remove_dir_all(o.join("blobs")).unwrap()),
            4,
            0,
        ),
        (
            "index.json garbage",
            Box::new(|o| std::fs::write(o.join("index.json"), "{\"manifests\": [").unwrap()),
            4,
            4,
        ),
        (
            "index.json replaced by a directory",
            Box::new(|o| {
                std::fs::remove_file(o.join("index.json")).unwrap();
                std::fs::create_dir(o.join("index.json")).unwrap();
            }),
            4,
            4,
        ),
        (
            "index.json entry size wrong",
            Box::new(|o| {
                edit_index(o, |i| {
                    let e = &mut i["manifests"][0]["size"];
                    *e = (e.as_u64().unwrap() + 7).into();
                })
            }),
            0,
            0,
        ),
        (
            "oci-layout garbage",
            Box::new(|o| std::fs::write(o.join("oci-layout"), "\u{0}\u{1}junk").unwrap()),
            0,
            0,
        ),
    ];
    let mut t = Tally::default();
    let good = index_digests(&b.store);
    for (i, (name, damage, gc_code, build_code)) in cases.iter().enumerate() {
        let (out, cache) = b.copy(&format!("case{i}"));
        let reachable = blob_set(&out);
        damage(&out);
        t.expect(
            &format!("{name}: verify"),
            cmd(&cache, &["verify"], &out),
            4,
        );
        let before_gc = blob_set(&out);
        t.expect(&format!("{name}: gc"), cmd(&cache, &["gc"], &out), *gc_code);
        let lost: Vec<_> = before_gc
            .intersection(&reachable)
            .filter(|n| !blob_set(&out).contains(*n))
            .collect();
        if !lost.is_empty() {
            t.damage
                .push(format!("{name}: gc removed reachable blobs {lost:?}"));
        }
        let before = snapshot(&out);
        t.expect(
            &format!("{name}: build"),
            b.build(&cache, &out),
            *build_code,
        );
        if *build_code == 0 {
            if verify_code(&cache, &out) != 0 || index_digests(&out) != good {
                t.damage
                    .push(format!("{name}: the build left a store that fails verify"));
            }
        } else if snapshot(&out) != before {
            t.damage
                .push(format!("{name}: a refused build changed the store"));
        }
    }
    t.check("damage campaign");
}

/// Damage to the cache (blobs, layer records, the memo) never reaches a store: a build into a
/// new store rebuilds what it must and gives the same digests.
#[test]
fn every_kind_of_cache_damage_then_a_build_into_a_new_store() {
    let b = built();
    let base = parts(&b.store, "tiny:3.3.6").layers[0].clone();
    type Damage = Box<dyn Fn(&Path)>;
    let each_file = |dir: &Path, f: &dyn Fn(&Path)| {
        for e in std::fs::read_dir(dir).unwrap() {
            f(&e.unwrap().path());
        }
    };
    let (b0, b1, b2) = (base.clone(), base.clone(), base.clone());
    let cases: Vec<(&str, Damage)> = vec![
        ("blob flipped", Box::new(move |c| flip(&blob(c, &b0), 7))),
        (
            "blob truncated",
            Box::new(move |c| {
                let f = std::fs::File::options()
                    .write(true)
                    .open(blob(c, &b1))
                    .unwrap();
                f.set_len(10).unwrap();
            }),
        ),
        (
            "blob deleted",
            Box::new(move |c| std::fs::remove_file(blob(c, &b2)).unwrap()),
        ),
        (
            "every layer record garbage",
            Box::new(move |c| each_file(&c.join("layers"), &|p| std::fs::write(p, "{").unwrap())),
        ),
        (
            "every memo garbage",
            Box::new(move |c| {
                each_file(&c.join("filehash"), &|p| {
                    std::fs::write(p, "z".repeat(64)).unwrap()
                })
            }),
        ),
        (
            "every blob flipped",
            Box::new(move |c| each_file(&c.join("blobs/sha256"), &|p| flip(p, 1))),
        ),
    ];
    let mut t = Tally::default();
    let good = index_digests(&b.store);
    for (i, (name, damage)) in cases.iter().enumerate() {
        let (out, cache) = b.copy(&format!("cache{i}"));
        damage(&cache);
        let fresh = out.parent().unwrap().join("fresh");
        t.expect(&format!("{name}: build"), b.build(&cache, &fresh), 0);
        if verify_code(&cache, &fresh) != 0 || index_digests(&fresh) != good {
            t.damage
                .push(format!("{name}: the new store is not the pristine one"));
        }
        // And the old store, rebuilt from that cache, stays whole.
        t.expect(&format!("{name}: rebuild"), b.build(&cache, &out), 0);
        if verify_code(&cache, &out) != 0 {
            t.damage.push(format!("{name}: the old store fails verify"));
        }
    }
    t.check("cache damage campaign");
}

// ---------------------------------------------------------------------- the SIGKILL campaign

/// SIGKILL at each failpoint and at a sweep of times through a build that rebuilds every layer
/// and image (a new epoch): after each kill the store verifies and holds the old index or the
/// new one, and the next build completes to the new one.
#[test]
fn sigkill_anywhere_leaves_the_old_or_the_new_index() {
    let b = built();
    let old_index = std::fs::read(b.store.join("index.json")).unwrap();
    let epoch = "1700000123";
    let rebuild = |cache: &Path, out: &Path| {
        let mut c = b.build(cache, out);
        c.env("SOURCE_DATE_EPOCH", epoch);
        c
    };
    // The new index, and how long the whole build takes.
    let (out, cache) = b.copy("reference");
    let start = Instant::now();
    ok(rebuild(&cache, &out));
    let full = start.elapsed();
    let new_index = std::fs::read(out.join("index.json")).unwrap();
    assert_ne!(old_index, new_index);

    let mut t = Tally::default();
    let mut kill_points: Vec<(String, Option<Duration>, Option<&str>)> = Vec::new();
    for fp in ["layer-write", "store-copy", "store-blob", "index-write"] {
        kill_points.push((format!("failpoint {fp}"), None, Some(fp)));
    }
    let steps = 24u32;
    for i in 0..=steps {
        let at = full * i / steps + Duration::from_millis(u64::from(i % 3));
        kill_points.push((format!("after {at:?}"), Some(at), None));
    }
    for (i, (what, after, fp)) in kill_points.into_iter().enumerate() {
        t.cases += 1;
        let (out, cache) = b.copy(&format!("kill{i}"));
        let mut c = rebuild(&cache, &out);
        c.stdout(Stdio::null()).stderr(Stdio::piped());
        if let Some(fp) = fp {
            c.env("STRATA_FAILPOINT", fp);
        }
        let mut child = c.spawn().unwrap();
        match (after, fp) {
            (Some(d), _) => std::thread::sleep(d),
            (None, Some(fp)) => wait_for_failpoint(&mut child, fp),
            _ => unreachable!(),
        }
        let _ = child.kill();
        let _ = child.wait();
        let v = run(cmd(&cache, &["verify"], &out));
        let index = std::fs::read(out.join("index.json")).unwrap_or_default();
        if v.status.code() != Some(0) {
            t.damage.push(format!(
                "{what}: verify after the kill: {}",
                String::from_utf8_lossy(&v.stdout)
            ));
        }
        if index != old_index && index != new_index {
            t.damage.push(format!(
                "{what}: the index is neither the old nor the new one"
            ));
        }
        t.expect(&format!("{what}: the next build"), rebuild(&cache, &out), 0);
        if std::fs::read(out.join("index.json")).unwrap_or_default() != new_index
            || verify_code(&cache, &out) != 0
        {
            t.damage
                .push(format!("{what}: the next build did not complete the store"));
        }
    }
    t.check("SIGKILL campaign");
}

/// `verify --repair` killed while it copies a blob back: the store is no worse (the index and
/// every intact blob unchanged) and the next `verify --repair` finishes the job.
#[test]
fn sigkill_during_a_repair_then_repair_again() {
    let b = built();
    let (out, cache) = b.copy("repair-kill");
    let p = parts(&out, "tiny:3.3.6");
    flip(&blob(&out, &p.layers[0]), 9);
    flip(&blob(&out, &p.manifest), 9);
    let index = std::fs::read(out.join("index.json")).unwrap();
    let cache_arg = format!("--cache={}", cache.display());
    let mut c = cmd(&cache, &["verify", "--repair", &cache_arg], &out);
    c.env("STRATA_FAILPOINT", "store-copy")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    wait_for_failpoint(&mut child, "store-copy");
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(std::fs::read(out.join("index.json")).unwrap(), index);
    let o = run(cmd(&cache, &["verify"], &out));
    assert_eq!(o.status.code(), Some(4), "still damaged, no worse");
    ok(cmd(&cache, &["verify", "--repair", &cache_arg], &out));
    assert_eq!(verify_code(&cache, &out), 0);
    assert_eq!(index_digests(&out), index_digests(&b.store));
}

fn wait_for_failpoint(child: &mut std::process::Child, fp: &str) {
    let err = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            if line.contains("failpoint") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("failpoint {fp} never reached"));
}

// -------------------------------------------------------------- concurrency: two recipes + gc

#[test]
fn concurrent_builds_of_two_recipes_with_gc_alongside() {
    let a = Project::new();
    let b = Project::new();
    b.edit_recipe(|s| s.replace("name = \"tiny\"", "name = \"twin\""));
    let out = a.root().join("shared-store");
    let mut t = Tally::default();
    for round in 0..3 {
        // Each round really builds: a new epoch for both.
        let epoch = format!("{}", 1_700_000_000 + round);
        let spawn = |p: &Project| {
            let mut c = p.build(&out);
            c.env("SOURCE_DATE_EPOCH", &epoch)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            c.spawn().unwrap()
        };
        let (mut ha, mut hb) = (spawn(&a), spawn(&b));
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline
            && (ha.try_wait().unwrap().is_none() || hb.try_wait().unwrap().is_none())
        {
            if out.join("index.json").exists() {
                let gc = cmd(&a.root().join("cache"), &["gc"], &out);
                t.expect(&format!("round {round}: gc"), gc, 0);
            } else {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        for (who, h) in [("tiny", ha), ("twin", hb)] {
            t.cases += 1;
            let o = h.wait_with_output().unwrap();
            if !o.status.success() {
                t.wrong_exit
                    .push(format!("round {round}: {who}: {}", stderr(&o)));
            }
        }
        t.expect(
            &format!("round {round}: gc after"),
            cmd(&a.root().join("cache"), &["gc"], &out),
            0,
        );
        let names: BTreeSet<String> = index_digests(&out).into_keys().collect();
        for n in ["tiny:3.3.6", "tiny:base", "twin:2.10.2", "twin:base"] {
            if !names.contains(n) {
                t.damage
                    .push(format!("round {round}: {n} missing: {names:?}"));
            }
        }
        if verify_code(&a.root().join("cache"), &out) != 0 {
            t.damage.push(format!("round {round}: verify fails"));
        }
    }
    t.check("concurrency");
}

// --------------------------------------------------------------- a full disk during a layer

/// A rootfs with 2 MiB that do not compress, so its layer cannot fit a nearly full file system.
fn big_rootfs(p: &Project) {
    let mut e = tiny_rootfs_entries();
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let data: Vec<u8> = (0..2 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    e.push(strata::layer::Entry::file(
        "usr/bin/big",
        strata::layer::Content::bytes(data),
        0o755,
        0,
        0,
    ));
    e.sort_by(|a, b| a.path.cmp(&b.path));
    write_tar(&p.root().join("inputs/rootfs.tar"), &e);
}

#[test]
fn a_full_file_system_during_a_layer_build_fails_and_leaves_the_store() {
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !is_root {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("mounting a small tmpfs needs root (CI runs as root)");
        }
        eprintln!("SKIPPED: mounting a small tmpfs needs root");
        return;
    }
    let p = Project::new();
    let out = p.root().join("out");
    ok(p.build(&out));
    big_rootfs(&p);
    let mnt = tempfile::tempdir().unwrap();
    let m = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(mnt.path())
        .status()
        .unwrap();
    assert!(m.success(), "mount tmpfs");
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _guard = Unmount(mnt.path());
    // 1: the cache (where layers are written) fills up: the base tarball is read in place, and
    // its layer (2 MiB) does not fit in the 1 MiB.
    let before = snapshot(&out);
    let mut c = strata(&mnt.path().join("cache"));
    c.arg("build").arg(p.recipe()).arg("-o").arg(&out);
    let o = run_limited(c, Duration::from_secs(60)).expect("no hang");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("No space left on device"),
        "{}",
        stderr(&o)
    );
    assert!(
        stderr(&o).contains("layer base…"),
        "fails in the layer: {}",
        stderr(&o)
    );
    assert_eq!(snapshot(&out), before, "the store is as it was");
    // 2: the store is on the full file system (the layer is built in a cache on disk; its copy
    // into the store does not fit in what the first part left).
    let store = mnt.path().join("store");
    copy_tree(&out, &store);
    let before = snapshot(&store);
    let o = run_limited(p.build(&store), Duration::from_secs(60)).expect("no hang");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("No space left on device"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        snapshot(&store),
        before,
        "the store is as it was, no temp file left"
    );
    assert_eq!(verify_code(&p.root().join("cache"), &store), 0);
}

// ------------------------------------------------- a base tarball edited under strata's feet

/// The base tarball is read in place, not copied into the cache: edited in place (same size,
/// mtime set back, so only its ctime tells), it is hashed again, gets another key, and its layer
/// is the one a fresh cache makes, never the old key's layer.
#[test]
fn a_base_tarball_edited_in_place_is_not_served_under_its_old_key() {
    let p = Project::new();
    let out = p.root().join("out");
    ok(p.build(&out));
    let old = parts(&out, "tiny:3.3.6").layers[0].clone();
    let tar = p.root().join("inputs/rootfs.tar");
    let mtime = std::fs::metadata(&tar).unwrap().modified().unwrap();
    let mut bytes = std::fs::read(&tar).unwrap();
    let at = bytes
        .windows(19)
        .position(|w| w == b"daemon:x:1:1:daemon")
        .expect("etc/passwd in the base tarball");
    bytes[at + 13..at + 19].copy_from_slice(b"DAEMON");
    let mut f = std::fs::OpenOptions::new().write(true).open(&tar).unwrap();
    f.write_all(&bytes).unwrap();
    f.set_modified(mtime).unwrap();
    drop(f);
    ok(p.build(&out));
    let new = parts(&out, "tiny:3.3.6").layers[0].clone();
    assert_ne!(new, old, "the edited base is a new layer");
    let fresh = p.root().join("fresh");
    let mut c = strata(&p.root().join("fresh-cache"));
    c.arg("build").arg(p.recipe()).arg("-o").arg(&fresh);
    ok(c);
    assert_eq!(
        parts(&fresh, "tiny:3.3.6").layers[0],
        new,
        "as a fresh cache makes it"
    );
    assert_eq!(verify_code(&p.root().join("cache"), &out), 0);
}
