//! Each version's rendered etc/hadoop (from the default recipe) checked against that version's
//! catalogue facts, and pinned by snapshots (tests/snapshots/, reviewed like code).

use std::collections::BTreeMap;
use std::path::Path;

use strata::layer::Kind;
use strata::recipe::hadoop::Facts;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// path → content of the hadoop-conf layer of `version`, rendered with the lab recipe.
fn rendered(version: &str) -> (Facts, BTreeMap<String, String>, BTreeMap<String, String>) {
    let recipe = strata::recipe::load(&repo().join("recipes/lab.toml")).unwrap();
    let facts = recipe.catalogue.get(version).unwrap().clone();
    let spec = recipe.layers.iter().find(|l| l.per_version).unwrap();
    let recipe_value = serde_json::json!({"name": recipe.name, "epoch": recipe.epoch, "description": recipe.description});
    let cx = strata::build::plan::version_context(&recipe, &recipe_value, &facts);
    let entries = strata::source::render::render_dir(&spec.dir, &cx).unwrap();
    let mut files = BTreeMap::new();
    let mut links = BTreeMap::new();
    for e in entries {
        match &e.kind {
            Kind::File(c) => {
                files.insert(
                    e.path.clone(),
                    String::from_utf8(c.read_all().unwrap()).unwrap(),
                );
            }
            Kind::Symlink(t) => {
                links.insert(e.path.clone(), t.clone());
            }
            _ => {}
        }
    }
    (facts, files, links)
}

/// name → value of a Hadoop *-site.xml, checking it is well-formed XML.
fn properties(xml: &str) -> BTreeMap<String, String> {
    let doc = roxmltree::Document::parse(xml).unwrap_or_else(|e| panic!("not XML ({e}):\n{xml}"));
    let mut m = BTreeMap::new();
    for p in doc.descendants().filter(|n| n.has_tag_name("property")) {
        let get = |tag: &str| {
            p.children()
                .find(|c| c.has_tag_name(tag))
                .and_then(|c| c.text())
                .unwrap_or("")
                .to_string()
        };
        let name = get("name");
        assert!(
            m.insert(name.clone(), get("value")).is_none(),
            "{name} set twice"
        );
    }
    m
}

fn check_version(version: &str) {
    let (facts, files, links) = rendered(version);
    // Stable path to this version.
    assert_eq!(links["opt/hadoop"], format!("hadoop-{version}"));
    // workers (3.x) or slaves (2.x), as the catalogue says, and not the other.
    let wf = &facts.layout.workers_file;
    let other = if wf == "workers" { "slaves" } else { "workers" };
    assert!(
        files.contains_key(&format!("etc/hadoop/{wf}")),
        "{version}: {wf}"
    );
    assert!(
        !files.contains_key(&format!("etc/hadoop/{other}")),
        "{version}: no {other}"
    );
    // Every env file the version reads is there and is valid sh; each uses the `export` form.
    for f in &facts.layout.env_files {
        let text = files
            .get(&format!("etc/hadoop/{f}"))
            .unwrap_or_else(|| panic!("{version}: {f} missing"));
        let out = std::process::Command::new("sh")
            .arg("-n")
            .arg("-c")
            .arg(text)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{version}: {f} is not valid sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for l in text
            .lines()
            .filter(|l| l.contains('=') && !l.trim_start().starts_with('#'))
        {
            assert!(
                l.starts_with("export "),
                "{version}: {f}: {l:?} should use `export NAME=value`"
            );
        }
    }
    assert!(files.contains_key(&format!("etc/hadoop/{}", facts.layout.log4j)));
    let env = &files["etc/hadoop/hadoop-env.sh"];
    for var in [
        &facts.env.java_home,
        &facts.env.heap,
        &facts.env.pid_dir,
        &facts.env.log_dir,
        &facts.env.opts,
    ] {
        assert!(
            env.contains(&format!("export {var}=")),
            "{version}: hadoop-env.sh sets {var}"
        );
    }
    for var in facts.env.daemon_users.roles.values() {
        assert!(
            env.contains(&format!("export {var}=hadoop")),
            "{version}: {var}"
        );
    }
    // Heap is computed at start, in the unit the version expects.
    let heap_line = env
        .lines()
        .find(|l| l.starts_with(&format!("export {}=", facts.env.heap)))
        .unwrap();
    assert!(heap_line.contains("$(strata_heap_mb)"), "{heap_line}");
    assert_eq!(
        heap_line.ends_with(")m"),
        facts.env.heap_unit != "mb",
        "{version}: {heap_line}"
    );
    // Unsupported JDK: the flags it needs are there.
    if !facts.java.runtime.contains(&11) {
        assert!(
            env.contains("--add-opens=java.base/java.lang=ALL-UNNAMED"),
            "{version}"
        );
        assert!(
            env.contains("NOT a Java version Hadoop"),
            "{version}: says the pairing is unsupported"
        );
    } else {
        assert!(
            !env.contains("--add-opens"),
            "{version}: supported JDK, no flags"
        );
    }
    for var in [&facts.env.yarn_pid_dir, &facts.env.yarn_log_dir]
        .into_iter()
        .flatten()
    {
        assert!(
            files["etc/hadoop/yarn-env.sh"].contains(&format!("export {var}=")),
            "{version}: {var}"
        );
    }
    for var in [&facts.env.mapred_pid_dir, &facts.env.mapred_log_dir]
        .into_iter()
        .flatten()
    {
        assert!(
            files["etc/hadoop/mapred-env.sh"].contains(&format!("export {var}=")),
            "{version}: {var}"
        );
    }
    // Site files: well-formed, with this version's ports and required properties.
    let mut site = BTreeMap::new();
    for f in [
        "core-site.xml",
        "hdfs-site.xml",
        "yarn-site.xml",
        "mapred-site.xml",
        "capacity-scheduler.xml",
    ] {
        site.insert(f, properties(&files[&format!("etc/hadoop/{f}")]));
    }
    let rpc = facts.port("namenode-rpc").unwrap();
    assert_eq!(
        site["core-site.xml"]["fs.defaultFS"],
        format!("hdfs://namenode:{rpc}")
    );
    for p in &facts.port {
        let file = p.file.replace("-default", "-site");
        match p.name.as_str() {
            "namenode-rpc" => assert_eq!(
                site["hdfs-site.xml"]["dfs.namenode.rpc-address"],
                format!("namenode:{rpc}")
            ),
            "jobhistory" | "jobhistory-webapp" => {
                assert_eq!(
                    site["mapred-site.xml"][&p.property],
                    format!("historyserver:{}", p.port),
                    "{version}: {}",
                    p.name
                )
            }
            _ => {
                let v = site.get(file.as_str()).and_then(|s| s.get(&p.property));
                assert_eq!(v, Some(&p.default), "{version}: {} in {file}", p.property);
                assert!(
                    p.default.ends_with(&format!(":{}", p.port)) || p.default == p.port.to_string(),
                    "{version}: {} default {} vs port {}",
                    p.name,
                    p.default,
                    p.port
                );
            }
        }
    }
    for r in &facts.required {
        assert_eq!(
            site[r.file.as_str()].get(&r.property),
            Some(&r.value),
            "{version}: required {} in {}",
            r.property,
            r.file
        );
    }
    // NodeManager memory is filled at boot (marked), not frozen.
    assert!(files["etc/hadoop/yarn-site.xml"].contains("<!-- strata:boot nm-memory-mb -->"));

    let mut snap = String::new();
    for (path, text) in &files {
        snap.push_str(&format!("=== /{path}\n{text}"));
    }
    insta::assert_snapshot!(format!("hadoop-conf-{version}"), snap);
}

#[test]
fn v2_7_7() {
    check_version("2.7.7");
}
#[test]
fn v2_8_5() {
    check_version("2.8.5");
}
#[test]
fn v2_9_2() {
    check_version("2.9.2");
}
#[test]
fn v2_10_2() {
    check_version("2.10.2");
}
#[test]
fn v3_1_4() {
    check_version("3.1.4");
}
#[test]
fn v3_2_4() {
    check_version("3.2.4");
}
#[test]
fn v3_3_6() {
    check_version("3.3.6");
}
#[test]
fn v3_4_1() {
    check_version("3.4.1");
}

#[test]
fn the_catalogue_has_the_eight_releases_with_known_port_changes() {
    let cat = strata::recipe::hadoop::Catalogue::load_dir(&repo().join("hadoop-versions")).unwrap();
    assert_eq!(
        cat.versions(),
        [
            "2.7.7", "2.8.5", "2.9.2", "2.10.2", "3.1.4", "3.2.4", "3.3.6", "3.4.1"
        ]
    );
    // HDFS-9427 moved the NameNode web UI from 50070 to 9870 in 3.0.
    for v in cat.versions() {
        let f = cat.get(&v).unwrap();
        let want = if f.major() >= 3 { 9870 } else { 50070 };
        assert_eq!(f.port("namenode-http"), Some(want), "{v}");
        assert_eq!(f.port("rm-webapp"), Some(8088), "{v}");
    }
}
