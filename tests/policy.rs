//! Right-sized images: budgets that fail (or warn) with advice, the shared fraction, the three
//! Hadoop distribution modes, `strata report` (and its HTML page in headless Chromium).

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use common::*;

fn with_policy(p: &Project, policy: &str) {
    p.edit_recipe(|s| format!("{s}\n[policy]\n{policy}\n"));
}

fn image_stat<'a>(r: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    r["policy"]["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .unwrap()
}

#[test]
fn an_image_over_budget_fails_naming_the_layer_and_its_biggest_files() {
    let p = Project::new();
    with_policy(&p, "image-budget = \"30KiB\"");
    let out = p.root().join("out");
    let o = run(p.build(&out));
    let err = stderr(&o);
    assert_eq!(
        o.status.code(),
        Some(5),
        "budget exceeded exit code:\n{err}"
    );
    assert!(
        err.contains("image tiny:3.3.6:") && err.contains("over its budget 30.0 KiB"),
        "{err}"
    );
    assert!(
        err.contains("its biggest layers: user-env"),
        "names the layer: {err}"
    );
    assert!(
        err.contains("layer user-env: biggest files: /usr/local/lib/strata/bin/"),
        "names the files: {err}"
    );
    assert!(err.contains("biggest directories: /usr/local/lib"), "{err}");
    assert!(!out.exists(), "nothing is published when a budget fails");
    // --json still gives CI the verdicts.
    let j = json(&o);
    assert_eq!(j["error"], "budget exceeded");
    assert!(
        j["policy"]["checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["kind"] == "image" && c["ok"] == false)
    );

    // The same with enforce = "warn": built, with a warning.
    p.edit_recipe(|s| s.replace("[policy]\n", "[policy]\nenforce = \"warn\"\n"));
    let o = ok(p.build(&out));
    assert!(
        stderr(&o).contains("warning: ") && stderr(&o).contains("budget check(s) failed"),
        "{}",
        stderr(&o)
    );
    let j = json(&o);
    assert_eq!(j["images"].as_array().unwrap().len(), 3);
    // And a command-line override lifts the budget for an experiment.
    let mut c = p.build(&out);
    c.args(["--image-budget", "10MiB"]);
    p.edit_recipe(|s| s.replace("enforce = \"warn\"\n", ""));
    let j = json(&ok(c));
    assert!(
        j["policy"]["checks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["ok"] == true)
    );
}

#[test]
fn moving_a_duplicated_file_into_a_shared_layer_raises_the_shared_fraction_by_its_bytes() {
    let p = Project::new();
    with_policy(&p, "min-shared = 0.0");
    // A 100 000-byte file, byte-identical in both versions' hadoop-conf layers.
    let blob: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let conf_dir = p.root().join("layers/hadoop-conf/root/etc/strata");
    std::fs::create_dir_all(&conf_dir).unwrap();
    std::fs::write(conf_dir.join("shared-blob.bin"), &blob).unwrap();
    let out = p.root().join("out");
    let before = json(&ok(p.build(&out)));

    // The advice finds it when sharing falls short.
    let mut c = p.build(&p.root().join("out-strict"));
    c.args(["--min-shared", "0.999"]);
    let o = run(c);
    assert_eq!(o.status.code(), Some(5));
    assert!(
        stderr(&o).contains("/etc/strata/shared-blob.bin (in 2 layers, saves 97.7 KiB)"),
        "{}",
        stderr(&o)
    );

    // Move it into user-env (which has etc/strata already).
    std::fs::remove_dir_all(&conf_dir).unwrap();
    std::fs::write(
        p.root()
            .join("layers/user-env/root/etc/strata/shared-blob.bin"),
        &blob,
    )
    .unwrap();
    let after = json(&ok(p.build(&out)));

    // Independently: a tar entry is a 512-byte header plus the content padded to 512 bytes.
    let file_tar = 512 + (blob.len() as u64).div_ceil(512) * 512;
    let dir_tar = 512; // the etc/strata directory entry hadoop-conf no longer needs
    for name in ["tiny:2.10.2", "tiny:3.3.6"] {
        let (b, a) = (image_stat(&before, name), image_stat(&after, name));
        let n = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap();
        assert_eq!(
            n(a, "shared-bytes"),
            n(b, "shared-bytes") + file_tar,
            "{name}"
        );
        assert_eq!(
            n(a, "own-bytes"),
            n(b, "own-bytes") - file_tar - dir_tar,
            "{name}"
        );
        assert_eq!(n(a, "bytes"), n(b, "bytes") - dir_tar, "{name}");
        let want = n(a, "shared-bytes") as f64 / n(a, "bytes") as f64;
        assert!((a["shared-fraction"].as_f64().unwrap() - want).abs() < 1e-12);
        assert!(a["shared-fraction"].as_f64().unwrap() > b["shared-fraction"].as_f64().unwrap());
    }
}

fn dist_files(p: &Project, mode: &str) -> (LayerFiles, Vec<String>) {
    let pins = format!(
        "\"2.10.2\" = \"{}\"\n\"3.3.6\" = \"{}\"\n",
        "a".repeat(128),
        "b".repeat(128)
    );
    p.edit_recipe(|s| format!("{s}\n[dist]\n{mode}\nurl = \"http://mirror.invalid/hadoop-{{version}}.tar.gz\"\n[dist.sha512]\n{pins}"));
    let out = p.root().join("out");
    ok(p.build(&out));
    let m = manifest(&out, "tiny:3.3.6");
    let names: Vec<String> = m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            l["annotations"]["io.strata.layer"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let i = names.iter().position(|n| n == "hadoop-dist-3.3.6").unwrap();
    (
        layer_files(&out, m["layers"][i]["digest"].as_str().unwrap()),
        names,
    )
}

#[test]
fn mount_mode_carries_the_mount_and_nothing_of_the_release() {
    let p = Project::new();
    let (files, names) = dist_files(&p, "mode = \"mount\"\nsource = \"LABEL=hadoop-dist\"");
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
    let env = String::from_utf8(files["etc/strata/hadoop-dist.env"].3.clone()).unwrap();
    assert!(env.contains("STRATA_DIST_MODE=mount\nSTRATA_DIST_SOURCE=LABEL=hadoop-dist\nSTRATA_DIST_MOUNT=/srv/hadoop-dist\n"), "{env}");
    assert!(
        files.contains_key("opt/hadoop-3.3.6"),
        "the link into the volume"
    );
    assert!(
        files.keys().all(|k| !k.starts_with("opt/hadoop-3.3.6/")),
        "nothing of the release itself"
    );
    assert!(files.values().map(|f| f.3.len()).sum::<usize>() < 1024);
}

#[test]
fn first_boot_mode_carries_the_url_and_pin_for_the_unit() {
    let p = Project::new();
    let (files, _) = dist_files(&p, "mode = \"first-boot\"");
    let env = String::from_utf8(files["etc/strata/hadoop-dist.env"].3.clone()).unwrap();
    assert!(env.contains("STRATA_DIST_MODE=first-boot\nSTRATA_DIST_URL=http://mirror.invalid/hadoop-3.3.6.tar.gz\n"), "{env}");
    assert!(env.contains(&format!("STRATA_DIST_SHA512={}\n", "b".repeat(128))));
    assert!(!files.contains_key("opt/hadoop-3.3.6"));
    // The unit and its script are in the shared user-env layer, enabled.
    let out = p.root().join("out");
    let m = manifest(&out, "tiny:3.3.6");
    let user_env = layer_files(&out, m["layers"][2]["digest"].as_str().unwrap());
    let unit = String::from_utf8(
        user_env["etc/systemd/system/strata-hadoop-dist.service"]
            .3
            .clone(),
    )
    .unwrap();
    assert!(unit.contains("ConditionPathExists=/etc/strata/hadoop-dist.env"));
    assert!(
        user_env
            .contains_key("etc/systemd/system/multi-user.target.wants/strata-hadoop-dist.service")
    );
    let hadoop = String::from_utf8(
        user_env["etc/systemd/system/strata-hadoop.service"]
            .3
            .clone(),
    )
    .unwrap();
    assert!(
        hadoop.contains("ConditionPathExists=/opt/hadoop/bin/hadoop"),
        "daemons wait for the release"
    );
}

#[test]
fn bad_budgets_are_refused_naming_the_key() {
    for (policy, needles) in [
        (
            "image-budget = \"12 parsecs\"",
            vec!["policy.image-budget", "unknown unit \"parsecs\""],
        ),
        (
            "image-budget = \"-1MiB\"",
            vec!["policy.image-budget", "negative"],
        ),
        (
            "per-version-budget = -5",
            vec!["policy.per-version-budget", "negative"],
        ),
        ("min-shared = 1.5", vec!["policy.min-shared", "outside 0–1"]),
        ("enforce = \"maybe\"", vec!["policy.enforce"]),
    ] {
        let p = Project::new();
        with_policy(&p, policy);
        let o = run(p.build(&p.root().join("out")));
        assert_eq!(o.status.code(), Some(2), "{policy}: {}", stderr(&o));
        for n in needles {
            assert!(stderr(&o).contains(n), "{policy}: {n:?} in {}", stderr(&o));
        }
    }
    let p = Project::new();
    for (args, needle) in [
        (
            vec!["--layer-budget", "nope=1MiB"],
            "no layer \"nope\" in this recipe",
        ),
        (vec!["--layer-budget", "user-env"], "expected NAME=SIZE"),
        (vec!["--min-shared", "2"], "2 is outside 0–1"),
        (vec!["--image-budget", "lots"], "--image-budget"),
    ] {
        let mut c = p.build(&p.root().join("out"));
        c.args(&args);
        let o = run(c);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
    }
}

#[test]
fn plan_gives_the_same_verdicts_before_anything_is_built() {
    let p = Project::new();
    with_policy(&p, "image-budget = \"30KiB\"\nmin-shared = 0.5");
    let mut c = strata(&p.root().join("fresh-cache"));
    c.args(["plan", "--json"])
        .arg(p.recipe())
        .arg("-o")
        .arg(p.root().join("no-store"));
    let o = run(c);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    let j = json(&o);
    let broken: Vec<&str> = j["policy"]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] == false)
        .map(|c| c["kind"].as_str().unwrap())
        .collect();
    assert!(broken.contains(&"image"), "{j}");
    // Pairs: both versions share the base, JDK and user-env by chain.
    let pair = &j["policy"]["pairs"][0];
    assert_eq!(
        (pair["a"].as_str(), pair["b"].as_str()),
        (Some("tiny:2.10.2"), Some("tiny:3.3.6"))
    );
    assert!(!p.root().join("no-store").exists());
}

fn tiny_store_with_policy() -> (Project, std::path::PathBuf) {
    let p = Project::new();
    with_policy(
        &p,
        "image-budget = \"1MiB\"\nmin-shared = 0.5\nper-version-budget = \"64KiB\"",
    );
    let out = p.root().join("out");
    ok(p.build(&out));
    (p, out)
}

#[test]
fn report_reads_the_store_and_refuses_a_damaged_one() {
    let (p, out) = tiny_store_with_policy();
    let mut c = strata(&p.root().join("cache"));
    c.args(["report", "--json", "-o"]).arg(&out);
    let r = json(&ok(c));
    let r0 = &r[0];
    assert_eq!(r0["recipe"], "tiny");
    assert_eq!(r0["verdicts"]["images"].as_array().unwrap().len(), 2);
    assert!(
        r0["verdicts"]["checks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["ok"] == true)
    );
    // Overrides apply to the report too.
    let mut c = strata(&p.root().join("cache"));
    c.args(["report", "--image-budget", "1KiB", "-o"]).arg(&out);
    let o = run(c);
    assert_eq!(o.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&o.stdout).contains("BROKEN"));
    // A missing blob: named, non-zero.
    let conf = manifest(&out, "tiny:3.3.6")["layers"][3]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    std::fs::remove_file(out.join("blobs/sha256").join(&conf)).unwrap();
    let mut c = strata(&p.root().join("cache"));
    c.args(["report", "-o"]).arg(&out);
    let o = run(c);
    assert_eq!(o.status.code(), Some(4));
    assert!(
        stderr(&o).contains(&conf) && stderr(&o).contains("missing"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn the_report_page_renders_in_chromium_with_the_json_numbers() {
    if !require("chromium") {
        return;
    }
    let (p, out) = tiny_store_with_policy();
    let page = p.root().join("report.html");
    let mut c = strata(&p.root().join("cache"));
    c.args(["report", "--json", "--html"])
        .arg(&page)
        .arg("-o")
        .arg(&out);
    let r = json(&ok(c));
    let chromium = |extra: &[&str]| {
        let profile = tempfile::tempdir().unwrap();
        let mut c = Command::new("chromium");
        c.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(format!("file://{}", page.display()));
        let o = ok(c);
        drop(profile);
        o
    };
    let png = p.root().join("report.png");
    chromium(&[
        &format!("--screenshot={}", png.display()),
        "--window-size=1000,900",
    ]);
    let shot = std::fs::read(&png).unwrap();
    assert!(
        shot.starts_with(b"\x89PNG") && shot.len() > 10_000,
        "a real screenshot ({} bytes)",
        shot.len()
    );
    let dom = String::from_utf8(chromium(&["--dump-dom"]).stdout).unwrap();
    assert!(dom.contains("<svg") && dom.contains("version by layer matrix"));
    let tags = tags(&dom);
    let r0 = &r[0];

    // The exact numbers (data-value, by data-key) equal the JSON's, to the last digit.
    let images: BTreeMap<&str, BTreeMap<String, String>> = rows(&tags, "data-image")
        .into_iter()
        .map(|(t, cells)| (t.attrs["data-image"].as_str(), cells))
        .collect();
    let json_images = r0["verdicts"]["images"].as_array().unwrap();
    assert_eq!(images.len(), json_images.len());
    for img in json_images {
        let name = img["name"].as_str().unwrap();
        let row = &images[name];
        for key in ["shared-fraction", "baseline-fraction"] {
            let shown: f64 = row[key].parse().unwrap();
            assert_eq!(shown, img[key].as_f64().unwrap(), "{name} {key}");
        }
        for key in ["bytes", "own-bytes"] {
            let shown: u64 = row[key].parse().unwrap();
            assert_eq!(shown, img[key].as_u64().unwrap(), "{name} {key}");
        }
        let stored = r0["images"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == name)
            .unwrap()["stored"]
            .as_u64();
        assert_eq!(row["stored"].parse::<u64>().ok(), stored, "{name} stored");
        let floor: f64 = row["min-shared"].parse().unwrap();
        assert_eq!(Some(floor), r0["policy"]["min-shared"].as_f64());
    }
    let checks = r0["verdicts"]["checks"].as_array().unwrap();
    let check_rows = rows(&tags, "data-check");
    assert_eq!(check_rows.len(), checks.len());
    for (c, (row, cells)) in checks.iter().zip(&check_rows) {
        assert_eq!(row.attrs["data-check"], c["kind"].as_str().unwrap());
        assert_eq!(row.attrs["data-subject"], c["subject"].as_str().unwrap());
        let verdict = match c["ok"].as_bool() {
            Some(true) => "ok",
            Some(false) => "broken",
            None => "unknown",
        };
        assert_eq!(row.attrs["data-verdict"], verdict);
        for key in ["value", "limit", "headroom"] {
            let shown: f64 = cells[key].parse().unwrap();
            assert_eq!(shown, c[key].as_f64().unwrap(), "{} {key}", c["subject"]);
        }
    }

    // People read units and percentages, not byte counts and 18-digit fractions.
    let text = visible_text(&tags);
    assert!(text.contains(" KiB"), "{text}");
    assert!(text.contains('%'), "{text}");
    for img in json_images {
        let bytes = img["bytes"].as_u64().unwrap().to_string();
        assert!(!text.contains(&bytes), "raw {bytes} in the text: {text}");
        let pct = format!("{:.2}%", img["shared-fraction"].as_f64().unwrap() * 100.0);
        assert!(text.contains(&pct), "{pct} in {text}");
    }
    // (Digits after a digit and a dot: 2 in "99.01%" and in "2.10.2", 18 in a raw fraction.)
    let pieces: Vec<&str> = text.split('.').collect();
    let longest_fraction = pieces
        .windows(2)
        .filter(|w| w[0].ends_with(|c: char| c.is_ascii_digit()))
        .map(|w| w[1].chars().take_while(char::is_ascii_digit).count())
        .max()
        .unwrap_or(0);
    assert!(longest_fraction < 6, "a long fraction in the text: {text}");

    // The matrix: one column per shared layer, one per family of per-version layers, whose
    // cells name each image's own layer.
    let layers = r0["layers"].as_array().unwrap();
    let shared: Vec<&str> = layers
        .iter()
        .filter(|l| l["used-by"].as_array().unwrap().len() > 1)
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    let mut families: Vec<&str> = layers
        .iter()
        .filter(|l| l["used-by"].as_array().unwrap().len() == 1)
        .map(|l| l["family"].as_str().unwrap())
        .collect();
    families.dedup();
    assert_eq!(shared, ["base", "jdk-tiny-11", "user-env"]);
    assert_eq!(
        families,
        ["hadoop-conf"],
        "two hadoop-conf-X layers, one family"
    );
    let headers = |class: &str, attr: &str| -> Vec<String> {
        tags.iter()
            .filter(|t| t.name == "th" && t.attrs.get("class").is_some_and(|c| c.contains(class)))
            .map(|t| t.attrs[attr].clone())
            .collect()
    };
    assert_eq!(headers("shared", "data-layer"), shared);
    assert_eq!(headers("folded", "data-family"), families);
    let columns = tags
        .iter()
        .filter(|t| t.name == "th" && t.attrs.get("class").is_some_and(|c| c.starts_with("layer")))
        .count();
    assert_eq!(columns, shared.len() + families.len());
    assert!(
        columns < layers.len(),
        "{columns} columns for {} layers",
        layers.len()
    );
    for img in json_images {
        let name = img["name"].as_str().unwrap();
        let version = name.split(':').nth(1).unwrap();
        let start = tags
            .iter()
            .position(|t| t.attrs.get("data-matrix-row").is_some_and(|v| v == name))
            .unwrap();
        let own: Vec<&str> = tags[start..]
            .iter()
            .take_while(|t| t.name != "/tr")
            .filter(|t| t.name == "span" && t.attrs.contains_key("data-layer"))
            .map(|t| t.attrs["data-layer"].as_str())
            .collect();
        let conf = format!("hadoop-conf-{version}");
        assert_eq!(own, [conf.as_str()], "{name}");
    }
}

/// A tag of the dumped DOM (`/tr` for an end tag), its attributes, and the text after it up to
/// the next tag. Chromium writes every attribute value in double quotes.
struct Tag {
    name: String,
    attrs: BTreeMap<String, String>,
    text: String,
}

fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&nbsp;", "\u{a0}")
        .replace("&amp;", "&")
}

fn tags(dom: &str) -> Vec<Tag> {
    let mut out = Vec::new();
    for chunk in dom.split('<').skip(1) {
        let (inside, text) = chunk.split_once('>').unwrap_or((chunk, ""));
        let name_end = inside
            .find(|c: char| c.is_whitespace() || c == '/' && !inside.starts_with('/'))
            .unwrap_or(inside.len());
        let name = inside[..name_end].to_string();
        let mut attrs = BTreeMap::new();
        let mut rest = &inside[name_end..];
        loop {
            rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == '/');
            if rest.is_empty() {
                break;
            }
            let key_end = rest
                .find(|c: char| c == '=' || c.is_whitespace())
                .unwrap_or(rest.len());
            let key = rest[..key_end].to_string();
            rest = &rest[key_end..];
            let value = if let Some(v) = rest.strip_prefix("=\"") {
                let (v, after) = v.split_once('"').unwrap();
                rest = after;
                unescape(v)
            } else {
                String::new()
            };
            attrs.insert(key, value);
        }
        out.push(Tag {
            name,
            attrs,
            text: unescape(text),
        });
    }
    out
}

/// The rows (`tr`) that carry `attr`, in page order, with their cells' `data-value` by
/// `data-key`.
fn rows<'a>(tags: &'a [Tag], attr: &str) -> Vec<(&'a Tag, BTreeMap<String, String>)> {
    tags.iter()
        .enumerate()
        .filter(|(_, t)| t.name == "tr" && t.attrs.contains_key(attr))
        .map(|(i, t)| {
            let cells = tags[i + 1..]
                .iter()
                .take_while(|c| c.name != "/tr")
                .filter_map(|c| {
                    Some((
                        c.attrs.get("data-key")?.clone(),
                        c.attrs.get("data-value")?.clone(),
                    ))
                })
                .collect();
            (t, cells)
        })
        .collect()
}

/// What the page shows as text (not tooltips: `title` elements, nor the style sheet).
fn visible_text(tags: &[Tag]) -> String {
    tags.iter()
        .filter(|t| t.name != "title" && t.name != "style")
        .map(|t| t.text.as_str())
        .collect::<Vec<_>>()
        .join(" ")
}
