//! Bad input: each case gets one clear error, a non-zero exit, and leaves the store exactly as it
//! was. Also the release tarball layer (`[dist]`) from a local HTTP server.

mod common;

use std::path::Path;

use common::*;

/// Builds once, applies `break_it`, rebuilds: checks the exit code, the message and that the
/// store did not change by a byte.
fn refused(break_it: impl FnOnce(&Project), code: i32, needles: &[&str]) {
    let p = Project::new();
    let out = p.root().join("out");
    ok(p.build(&out));
    let before = snapshot(&out);
    break_it(&p);
    let o = run(p.build(&out));
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(code), "exit code; stderr:\n{err}");
    for n in needles {
        assert!(err.contains(n), "the error should mention {n:?}:\n{err}");
    }
    assert_eq!(
        err.lines().filter(|l| l.starts_with("error:")).count(),
        1,
        "one error:\n{err}"
    );
    assert_eq!(
        snapshot(&out),
        before,
        "the store must be exactly as it was"
    );
}

fn set(p: &Project, from: &str, to: &str) {
    p.edit_recipe(|s| {
        assert!(s.contains(from), "fixture has {from:?}");
        s.replacen(from, to, 1)
    });
}

#[test]
fn unknown_key_names_file_line_and_the_nearest_key() {
    refused(
        |p| {
            set(
                p,
                "epoch = 1700000000",
                "epoch = 1700000000\ncompresion = \"gzip\"",
            )
        },
        2,
        &["tiny.toml:6:", "compresion", "did you mean `compression`?"],
    );
}

#[test]
fn malformed_toml_names_the_line() {
    refused(|p| set(p, "[base]", "[base\n"), 2, &["tiny.toml:7:"]);
}

#[test]
fn a_missing_layer_directory() {
    refused(
        |p| {
            set(
                p,
                "dir = \"layers/user-env\"",
                "dir = \"layers/no-such-layer\"",
            )
        },
        2,
        &["layer.dir", "layers/no-such-layer", "does not exist"],
    );
}

#[test]
fn a_layer_directory_outside_the_project() {
    refused(
        |p| {
            std::fs::create_dir_all(p.root().join("../outside-layer")).unwrap();
            set(p, "dir = \"layers/user-env\"", "dir = \"../outside-layer\"");
        },
        2,
        &["outside the project root", "refused"],
    );
}

#[test]
fn a_symlink_in_a_layer_that_escapes() {
    refused(
        |p| {
            std::os::unix::fs::symlink(
                "/etc/shadow",
                p.root().join("layers/user-env/root/etc/strata/evil"),
            )
            .unwrap();
        },
        2,
        &["evil", "refused"],
    );
}

#[test]
fn a_relative_symlink_that_climbs_out_of_the_layer() {
    refused(
        |p| {
            std::os::unix::fs::symlink(
                "../../../../../etc/passwd",
                p.root().join("layers/user-env/root/etc/strata/up"),
            )
            .unwrap();
        },
        2,
        &["escapes the layer directory", "refused"],
    );
}

#[test]
fn a_template_error_names_file_and_line() {
    refused(
        |p| {
            std::fs::write(
                p.root()
                    .join("layers/hadoop-conf/root/etc/hadoop/broken.txt.j2"),
                "fine\n{{ hadoop.no_such_fact.x }}\n",
            )
            .unwrap();
        },
        2,
        &["broken.txt.j2:2", "template error"],
    );
}

#[test]
fn an_unknown_hadoop_version() {
    refused(
        |p| {
            set(
                p,
                r#"versions = ["2.10.2", "3.3.6"]"#,
                r#"versions = ["2.10.2", "3.3.7"]"#,
            )
        },
        2,
        &[
            "unknown Hadoop version \"3.3.7\"",
            "did you mean \"3.3.6\"?",
        ],
    );
}

#[test]
fn a_duplicate_image_name() {
    refused(
        |p| {
            set(
                p,
                r#"versions = ["2.10.2", "3.3.6"]"#,
                r#"versions = ["3.3.6", "3.3.6"]"#,
            )
        },
        2,
        &["listed twice", "tiny:3.3.6"],
    );
}

#[test]
fn a_jdk_the_version_does_not_support() {
    refused(
        |p| set(p, "accept-unsupported = \"test fixture\"", ""),
        2,
        &[
            "Hadoop 2.10 supports Java 7, 8 at run time",
            "accept-unsupported",
        ],
    );
}

#[test]
fn a_checksum_mismatch() {
    refused(
        |p| {
            p.edit_recipe(|s| {
                let start = s.find("sha512 = \"").unwrap() + 10;
                format!("{}{}{}", &s[..start], "ab".repeat(64), &s[start + 128..])
            })
        },
        3,
        &["checksum mismatch", "expected sha512 abab", "found"],
    );
}

#[test]
fn a_base_tarball_whose_sha256_does_not_match_is_a_checksum_error() {
    refused(
        |p| {
            set(
                p,
                "path = \"inputs/rootfs.tar\"",
                &format!(
                    "path = \"inputs/rootfs.tar\"\nsha256 = \"{}\"",
                    "cd".repeat(32)
                ),
            )
        },
        3,
        &[
            "checksum mismatch",
            "base tarball",
            "expected sha256 cdcd",
            "found",
        ],
    );
}

#[test]
fn an_unknown_only_version_is_bad_input() {
    let p = Project::new();
    let out = p.root().join("out");
    ok(p.build(&out));
    let before = snapshot(&out);
    let mut c = p.build(&out);
    c.args(["--only", "9.9.9"]);
    let o = run(c);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--only 9.9.9"), "{}", stderr(&o));
    assert!(stderr(&o).contains("2.10.2, 3.3.6"), "{}", stderr(&o));
    assert_eq!(snapshot(&out), before);
}

#[test]
fn a_layer_file_that_changes_while_it_is_written_is_a_failure_not_bad_input() {
    // The source tree changing under strata is not the user's input being wrong: exit 1.
    let e = strata::layer::Content::Path {
        path: repo().join("Cargo.toml"),
        len: 1,
    }
    .read_all()
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("changed while the layer was written"),
        "{e}"
    );
    assert_eq!(strata::cli::exit::code(&e), 1);
}

#[test]
fn a_recipe_that_is_not_utf8_names_the_file_and_exits_2() {
    let p = Project::new();
    std::fs::write(p.recipe(), b"[recipe]\nname = \"\xff\"\n").unwrap();
    let o = run(p.build(&p.root().join("out")));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("tiny.toml") && stderr(&o).contains("UTF-8"),
        "{}",
        stderr(&o)
    );
}

/// A recipe with a `[dist]` layer served from a local HTTP server.
fn with_dist(p: &Project, make: impl Fn(&Path, &str)) {
    let srv = p.root().join("mirror");
    std::fs::create_dir_all(&srv).unwrap();
    let mut pins = String::new();
    for v in ["2.10.2", "3.3.6"] {
        let f = srv.join(format!("hadoop-{v}.tar.gz"));
        make(&f, v);
        pins.push_str(&format!("\"{v}\" = \"{}\"\n", sha512_hex(&f)));
    }
    let url = serve_dir(&srv);
    p.edit_recipe(|s| format!("{s}\n[dist]\nmode = \"bake\"\nurl = \"{url}/hadoop-{{version}}.tar.gz\"\n[dist.sha512]\n{pins}"));
}

#[test]
fn a_release_tarball_is_fetched_checked_and_repacked_under_opt() {
    let p = Project::new();
    with_dist(&p, good_dist);
    let out = p.root().join("out");
    let r = json(&ok(p.build(&out)));
    let names: Vec<String> = r["images"][1]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        names,
        [
            "base",
            "jdk-tiny-11",
            "user-env",
            "hadoop-dist-3.3.6",
            "hadoop-conf-3.3.6"
        ]
    );
    let m = manifest(&out, "tiny:3.3.6");
    let dist = layer_files(&out, m["layers"][3]["digest"].as_str().unwrap());
    assert!(
        dist.contains_key("opt/hadoop-3.3.6/bin/hadoop"),
        "{:?}",
        dist.keys().collect::<Vec<_>>()
    );
    assert!(
        dist.keys()
            .all(|k| k == "opt" || k.starts_with("opt/hadoop-3.3.6")),
        "nothing outside /opt/hadoop-3.3.6"
    );
    // Cached by content: the next build downloads nothing and builds nothing.
    let again = json(&ok(p.build(&out)));
    assert_eq!(again["layers-built"], 0);
}

/// A hostile tarball's entries for a version: (name, link target, kind d/f/l/h/c).
type Spec = fn(&str) -> Vec<(String, Option<String>, char)>;

fn hostile(entries: Spec) -> impl Fn(&Path, &str) {
    move |path: &Path, v: &str| {
        let spec = entries(v);
        let raw: Vec<Raw> = spec
            .iter()
            .map(|(n, l, k)| match k {
                'd' => Raw::Dir(n),
                'l' => Raw::Symlink(n, l.as_deref().unwrap()),
                'h' => Raw::Hardlink(n, l.as_deref().unwrap()),
                'c' => Raw::Char(n),
                's' => Raw::Setuid(n, b"x"),
                _ => Raw::File(n, b"x"),
            })
            .collect();
        raw_tar_gz(path, &raw);
    }
}

fn dist_refused(entries: Spec, needles: &[&str]) {
    refused(|p| with_dist(p, hostile(entries)), 2, needles);
}

#[test]
fn a_release_tarball_with_dotdot() {
    dist_refused(
        |v| {
            vec![
                (format!("hadoop-{v}/"), None, 'd'),
                (format!("hadoop-{v}/../../etc/evil"), None, 'f'),
            ]
        },
        &["`..`", "refused"],
    );
}

#[test]
fn a_release_tarball_with_an_absolute_entry() {
    dist_refused(
        |v| {
            vec![
                (format!("hadoop-{v}/"), None, 'd'),
                ("/etc/evil".into(), None, 'f'),
            ]
        },
        &["absolute path", "refused"],
    );
}

#[test]
fn a_release_tarball_with_a_hard_link_outside() {
    dist_refused(
        |v| {
            vec![
                (format!("hadoop-{v}/"), None, 'd'),
                (
                    format!("hadoop-{v}/shadow"),
                    Some("../../../etc/shadow".into()),
                    'h',
                ),
            ]
        },
        &["hard link", "refused"],
    );
}

/// Issue 10, finding 8: a setuid-root file in a release tarball was baked without a word.
#[test]
fn a_release_tarball_with_a_setuid_file() {
    dist_refused(
        |v| {
            vec![
                (format!("hadoop-{v}/"), None, 'd'),
                (format!("hadoop-{v}/bin/"), None, 'd'),
                (format!("hadoop-{v}/bin/container-executor"), None, 's'),
            ]
        },
        &["container-executor", "setuid", "refused"],
    );
}

#[test]
fn a_release_tarball_with_a_device_node() {
    dist_refused(
        |v| {
            vec![
                (format!("hadoop-{v}/"), None, 'd'),
                (format!("hadoop-{v}/sda"), None, 'c'),
            ]
        },
        &["device node", "refused"],
    );
}

#[test]
fn a_release_tarball_with_a_path_through_a_symlink() {
    dist_refused(
        |v| {
            vec![
                (format!("hadoop-{v}/"), None, 'd'),
                (format!("hadoop-{v}/etc"), Some("/etc".into()), 'l'),
                (format!("hadoop-{v}/etc/cron.d/evil"), None, 'f'),
            ]
        },
        &["passes through the symlink", "refused"],
    );
}

#[test]
fn a_truncated_release_tarball() {
    refused(
        |p| {
            with_dist(p, |path, v| {
                good_dist(path, v);
                let data = std::fs::read(path).unwrap();
                std::fs::write(path, &data[..data.len() / 2]).unwrap();
            })
        },
        2,
        &["truncated or corrupt"],
    );
}

#[test]
fn a_release_download_that_is_not_a_tarball() {
    refused(
        |p| {
            with_dist(p, |path, _| {
                std::fs::write(path, b"<html>404 from a captive portal</html>".repeat(20)).unwrap()
            })
        },
        2,
        &["not a tar"],
    );
}

#[test]
fn an_unknown_key_delivery_names_the_choices() {
    refused(
        |p| p.edit_recipe(|s| s + "\n[ssh]\ndeliver = \"boots\"\n"),
        2,
        &[
            "tiny.toml:",
            "ssh.deliver: unknown delivery \"boots\": expected \"image\"",
            "did you mean \"boot\"?",
        ],
    );
}

#[test]
fn a_private_key_in_a_layer_of_a_boot_delivery_image_is_refused() {
    refused(
        |p| {
            p.edit_recipe(|s| s + "\n[ssh]\ndeliver = \"boot\"\n");
            std::fs::copy(
                fixture_key(),
                p.root().join("layers/user-env/root/etc/strata/leaked-key"),
            )
            .unwrap();
        },
        2,
        &[
            "tiny:2.10.2: [ssh] deliver = \"boot\" promises images without a private key, but layer user-env holds one",
        ],
    );
}

/// A release server that accepts connections and then behaves badly: `Silent` never answers,
/// `Stalls` sends the headers and half the body, then goes quiet. Counts the connections.
#[derive(Clone, Copy)]
enum Misbehaves {
    Silent,
    Stalls,
}

fn misbehaving_server(how: Misbehaves) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{BufRead, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            count.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut r = std::io::BufReader::new(s.try_clone().unwrap());
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).unwrap_or(0) <= 2 {
                        break;
                    }
                }
                if let Misbehaves::Stalls = how {
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2000000\r\n\r\n");
                    let _ = s.write_all(&[0u8; 1_000_000]);
                }
                // Hold the connection open, quiet, far longer than strata waits.
                std::thread::sleep(std::time::Duration::from_secs(600));
                drop(s);
            });
        }
    });
    (format!("http://{addr}"), seen)
}

/// Issue 10, finding 4: a download server that goes quiet fails the build within bounded time
/// (connect and read timeouts, a few tries), naming the URL; the store is left as it was.
fn a_quiet_release_server_fails_the_build(how: Misbehaves) {
    let p = Project::new();
    let out = p.root().join("out");
    ok(p.build(&out));
    let before = snapshot(&out);
    let (url, seen) = misbehaving_server(how);
    let srv = p.root().join("pins");
    std::fs::create_dir_all(&srv).unwrap();
    let mut pins = String::new();
    for v in ["2.10.2", "3.3.6"] {
        let f = srv.join(format!("hadoop-{v}.tar.gz"));
        good_dist(&f, v);
        pins.push_str(&format!("\"{v}\" = \"{}\"\n", sha512_hex(&f)));
    }
    p.edit_recipe(|s| format!("{s}\n[dist]\nmode = \"bake\"\nurl = \"{url}/hadoop-{{version}}.tar.gz\"\n[dist.sha512]\n{pins}"));
    let mut c = p.build(&out);
    // One second without a byte abandons a try (30 s by default).
    c.env("STRATA_READ_TIMEOUT", "1");
    let started = std::time::Instant::now();
    let mut child = c
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Liveness: 3 tries of 1 s plus 1 + 2 s of pauses; a hang is killed and reported.
    let deadline = std::time::Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > deadline {
            child.kill().unwrap();
            panic!("strata still waits on a quiet server after {deadline:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert_eq!(
        o.status.code(),
        Some(1),
        "a network failure exits 1:\n{err}"
    );
    assert!(
        err.contains(&format!("{url}/hadoop-")) && err.contains("3 tries"),
        "the error names the URL and the tries:\n{err}"
    );
    assert_eq!(
        seen.load(std::sync::atomic::Ordering::SeqCst),
        3,
        "three tries, then strata gives up"
    );
    assert_eq!(
        snapshot(&out),
        before,
        "the store must be exactly as it was"
    );
}

#[test]
fn a_silent_release_server_fails_the_build_naming_the_url() {
    a_quiet_release_server_fails_the_build(Misbehaves::Silent);
}

#[test]
fn a_release_server_that_stalls_mid_body_fails_the_build_naming_the_url() {
    a_quiet_release_server_fails_the_build(Misbehaves::Stalls);
}

#[test]
fn a_base_path_that_is_a_device_is_bad_input() {
    refused(
        |p| {
            p.edit_recipe(|s| {
                let at = s.find("path = ").expect("fixture has a base path");
                let end = at + s[at..].find('\n').unwrap();
                format!("{}path = \"/dev/zero\"{}", &s[..at], &s[end..])
            })
        },
        2,
        &["/dev/zero", "regular file"],
    );
}

/// A tiny base whose accounts already hold `hadoop` (uid and gid 1000).
fn base_with_hadoop(p: &Project) {
    use strata::layer::{Content, Entry};
    let mut entries = tiny_rootfs_entries();
    for e in entries.iter_mut() {
        let extra = match e.path.as_str() {
            "etc/passwd" => "hadoop:x:1000:1000:old:/home/hadoop:/bin/sh\n",
            "etc/group" => "hadoop:x:1000:\n",
            _ => continue,
        };
        let strata::layer::Kind::File(c) = &e.kind else {
            panic!("{} is a file", e.path)
        };
        let text = format!(
            "{}{extra}",
            String::from_utf8(c.read_all().unwrap()).unwrap()
        );
        *e = Entry::file(
            &e.path,
            Content::bytes(text.into_bytes()),
            e.mode,
            e.uid,
            e.gid,
        );
    }
    write_tar(&p.root().join("inputs/rootfs.tar"), &entries);
}

/// Issue 10, finding 3: an account the base already has (name, uid or gid) is refused naming the
/// key, unless `reuse-existing = true` says to take it over.
#[test]
fn a_user_the_base_already_has_is_refused_unless_reuse_existing() {
    refused(
        base_with_hadoop,
        2,
        &["name = \"hadoop\"", "/etc/passwd", "reuse-existing = true"],
    );
    refused(
        |p| p.edit_recipe(|s| format!("{s}\n[user]\nuid = 1\n")),
        2,
        &["uid = 1", "\"daemon\""],
    );
    refused(
        |p| p.edit_recipe(|s| format!("{s}\n[user]\ngid = 42\n")),
        2,
        &["gid = 42", "\"shadow\"", "/etc/group"],
    );
    // Taken over on purpose: one hadoop line, the recipe's.
    let p = Project::new();
    let out = p.root().join("out");
    base_with_hadoop(&p);
    p.edit_recipe(|s| format!("{s}\n[user]\nreuse-existing = true\n"));
    ok(p.build(&out));
    let m = manifest(&out, "tiny:3.3.6");
    let mut passwd = None;
    for l in m["layers"].as_array().unwrap() {
        if let Some(f) = layer_files(&out, l["digest"].as_str().unwrap()).get("etc/passwd") {
            passwd = Some(String::from_utf8_lossy(&f.3).into_owned());
        }
    }
    let passwd = passwd.expect("a layer writes /etc/passwd");
    assert_eq!(
        passwd
            .lines()
            .filter(|l| l.starts_with("hadoop:"))
            .collect::<Vec<_>>(),
        ["hadoop:x:1000:1000:Hadoop:/home/hadoop:/bin/bash"],
        "{passwd}"
    );
}

/// Issue 10, finding 9: a refusal inside a base tarball names the recipe's path, once, not the
/// copy in the cache.
#[test]
fn a_hostile_base_tarball_is_named_as_the_recipe_names_it() {
    let p = Project::new();
    let out = p.root().join("out");
    let tar = p.root().join("inputs/rootfs.tar");
    let gz = p.root().join("inputs/evil.tar.gz");
    raw_tar_gz(&gz, &[Raw::Dir("etc/"), Raw::File("../outside", b"x")]);
    std::fs::rename(&gz, &tar).unwrap();
    let o = run(p.build(&out));
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("../outside"), "names the entry:\n{err}");
    assert_eq!(
        err.matches("inputs/rootfs.tar").count(),
        1,
        "names the recipe's path once:\n{err}"
    );
    assert!(!err.contains("/cache/"), "not the cache's copy:\n{err}");
    assert!(!out.exists(), "no store is made by a failed first build");
}
