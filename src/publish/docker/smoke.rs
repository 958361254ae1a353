//! # `strata run --smoke`: a running container of the image, checked from inside
//!
//! The container runs under the image's entrypoint (so a key delivered at boot is installed),
//! on the host network with the same mounts as `strata run`, and boots as a lab node does
//! (`strata-boot`, `strata-hadoop-dist` when the image has them) before idling. Then, inside
//! it (docker exec), the checks of the disk boot test that make sense in a container:
//! - `user`: the recipe's user exists;
//! - `env`: its login shell has HADOOP_HOME, JAVA_HOME and HADOOP_CONF_DIR;
//! - `java`: `java -version` runs from that login environment;
//! - `hadoop`: `hadoop version` runs and names the image's version — or `absent` when the
//!   release is not in the container (a mount-mode image without its volume), not a failure;
//! - `shell-configs`: every `*.sh` of HADOOP_CONF_DIR passes `sh -n`;
//! - `configs`: every `*.xml` of HADOOP_CONF_DIR (copied out of the container) parses, and
//!   core-site.xml is among them;
//! - `key` (images taking their key at boot): the user's private key was installed, mode 0600.
//!
//! The result is recorded against the image's manifest (`oci::smoke`), shown by `inspect`.

use std::collections::BTreeMap;
use std::io::Read;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bollard::models::ContainerCreateBody;
use oci_spec::image::Descriptor;

use super::RunReport;
use super::engine::{Engine, short};
use crate::oci::smoke::SmokeRecord;
use crate::oci::view::View;
use crate::support::progress::Progress;

/// How long the container may take to boot before the checks.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// Written by the idle command once the boot scripts ran (in /tmp: the image's user may not
/// be root).
const READY: &str = "/tmp/.strata-smoke-ready";

/// `--smoke` found a problem: exit 1, with the report.
#[derive(Debug, thiserror::Error)]
#[error("the smoke test of {} failed: {}", .0.image, .0.smoke.as_ref().map(|s| s.problems.join("; ")).unwrap_or_default())]
pub struct SmokeFailed(pub RunReport);

/// Boots the node's scripts, marks it ready, idles until stopped.
fn idle_command() -> Vec<String> {
    let script = format!(
        "for s in strata-boot strata-hadoop-dist; do \
           p=/usr/local/lib/strata/bin/$s; [ -x \"$p\" ] && \"$p\" >/dev/null 2>&1; done; \
         touch {READY}; trap 'exit 0' TERM INT; while :; do sleep 1; done"
    );
    vec!["sh".into(), "-c".into(), script]
}

/// The checks run inside, as root: one `key=value` per line.
fn check_script(user: &str, home: &str, keys_at_boot: bool) -> String {
    let mut s = format!(
        r#"u={user}
if id "$u" >/dev/null 2>&1; then echo user=ok; else echo user=missing; fi
su - "$u" -s /bin/bash -c '
  for v in HADOOP_HOME JAVA_HOME HADOOP_CONF_DIR; do eval "x=\${{$v:-}}"; [ -n "$x" ] || echo "missing-env=$v"; done
  echo "conf-dir=${{HADOOP_CONF_DIR:-/etc/hadoop}}"
  if java -version >/dev/null 2>&1; then echo java=ok; else echo java=failed; fi
  if [ -x "${{HADOOP_HOME:-/opt/hadoop}}/bin/hadoop" ]; then
    v=$(hadoop version 2>/dev/null | head -n 1)
    case "$v" in "Hadoop "*) echo "hadoop=${{v#Hadoop }}";; *) echo hadoop=failed;; esac
  else echo hadoop=absent; fi
' </dev/null 2>&1
for f in ${{HADOOP_CONF_DIR:-/etc/hadoop}}/*.sh; do [ -e "$f" ] || continue; sh -n "$f" 2>/dev/null || echo "bad-shell=$f"; done
"#
    );
    if keys_at_boot {
        s.push_str(&format!(
            "k={home}/.ssh/id_ed25519; if [ -f \"$k\" ]; then echo \"key-mode=$(stat -c %a \"$k\")\"; else echo key-mode=absent; fi\n"
        ));
    }
    s
}

/// Runs the smoke test in a container made from `body` (removed afterwards).
pub fn smoke(
    engine: &Engine,
    v: &View,
    name: &str,
    desc: &Descriptor,
    mut body: ContainerCreateBody,
    progress: &Progress,
) -> Result<SmokeRecord> {
    let task = progress.task(format!("smoke test of {name} in a container"), None);
    let settings = v.record.settings_of(name);
    let (user, home) = settings
        .map(|s| (s.user.name.clone(), s.user.home.clone()))
        .unwrap_or_else(|| ("hadoop".into(), "/home/hadoop".into()));
    let record = v.image_record(name);
    let keys_at_boot = record.is_some_and(|r| r.keys_at_boot);
    let version = record.and_then(|r| r.hadoop_version.clone());
    body.cmd = Some(idle_command());
    body.attach_stdout = Some(false);
    body.attach_stderr = Some(false);
    let id = engine.create(body)?;
    let result = (|| {
        engine.start(&id)?;
        wait_ready(engine, &id)?;
        let script = check_script(&user, &home, keys_at_boot);
        let (code, out) = engine.exec(&id, vec!["sh".into(), "-c".into(), script])?;
        let mut checks = read_checks(&out, code, version.as_deref(), keys_at_boot);
        let conf_dir = out
            .lines()
            .find_map(|l| l.strip_prefix("conf-dir="))
            .unwrap_or("/etc/hadoop")
            .to_string();
        // `DIR/.`: the directory's contents even when DIR is a symlink (as `docker cp` does).
        let xml = engine.download(&id, &format!("{}/.", conf_dir.trim_end_matches('/')))?;
        checks.insert("configs".into(), check_xml(&xml)?);
        Ok::<_, anyhow::Error>(checks)
    })();
    engine.remove(&id);
    let checks = result.with_context(|| format!("smoke test in container {}", short(&id)))?;
    let problems: Vec<String> = checks
        .iter()
        .filter(|(k, v)| {
            !(v.as_str() == "ok" || (k.as_str() == "hadoop" && v.as_str() == "absent"))
        })
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    let passed = problems.is_empty();
    task.finish(if passed {
        "passed".to_string()
    } else {
        format!("FAILED: {}", problems.join("; "))
    });
    Ok(SmokeRecord {
        image: name.to_string(),
        manifest: desc.digest().clone(),
        passed,
        checks,
        problems,
        engine: engine.describe(),
        time: crate::oci::image::rfc3339(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        ),
    })
}

fn wait_ready(engine: &Engine, id: &str) -> Result<()> {
    let start = Instant::now();
    loop {
        let (code, _) = engine.exec(id, vec!["test".into(), "-e".into(), READY.into()])?;
        if code == 0 {
            return Ok(());
        }
        if start.elapsed() > BOOT_TIMEOUT {
            anyhow::bail!(
                "the container did not finish booting within {}s",
                BOOT_TIMEOUT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The checks from the script's lines: `ok` or what was found instead.
fn read_checks(
    out: &str,
    code: i64,
    version: Option<&str>,
    keys_at_boot: bool,
) -> BTreeMap<String, String> {
    let mut c = BTreeMap::new();
    let get = |k: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .map(str::to_string)
    };
    let all = |k: &str| -> Vec<String> {
        out.lines()
            .filter_map(|l| l.strip_prefix(&format!("{k}=")))
            .map(str::to_string)
            .collect()
    };
    if code != 0 {
        c.insert("script".into(), format!("exit {code}: {}", out.trim()));
    }
    c.insert("user".into(), get("user").unwrap_or("not checked".into()));
    let missing = all("missing-env");
    c.insert(
        "env".into(),
        if get("java").is_none() {
            format!("the login shell did not run: {}", out.trim())
        } else if missing.is_empty() {
            "ok".into()
        } else {
            format!("missing {}", missing.join(", "))
        },
    );
    c.insert("java".into(), get("java").unwrap_or("not checked".into()));
    let hadoop = match (get("hadoop"), version) {
        (Some(h), Some(v)) if h == v => "ok".to_string(),
        (Some(h), _) if h == "absent" => h,
        (Some(h), Some(v)) => format!("{h} (want {v})"),
        (Some(h), None) => {
            if h == "failed" {
                h
            } else {
                "ok".into()
            }
        }
        (None, _) => "not checked".into(),
    };
    c.insert("hadoop".into(), hadoop);
    let bad = all("bad-shell");
    c.insert(
        "shell-configs".into(),
        if bad.is_empty() {
            "ok".into()
        } else {
            format!("sh -n fails on {}", bad.join(", "))
        },
    );
    if keys_at_boot {
        c.insert(
            "key".into(),
            match get("key-mode").as_deref() {
                Some("600") => "ok".into(),
                Some("absent") | None => "not installed at boot".into(),
                Some(m) => format!("mode {m} (want 600)"),
            },
        );
    }
    c
}

/// Every `*.xml` of the configs tar parses; core-site.xml is there.
fn check_xml(tar_bytes: &[u8]) -> Result<String> {
    let mut ar = tar::Archive::new(tar_bytes);
    let mut bad = vec![];
    let mut seen = vec![];
    for e in ar
        .entries()
        .context("reading the configs copied out of the container")?
    {
        let mut e = e?;
        let path = e.path()?.to_string_lossy().into_owned();
        if !path.ends_with(".xml") || !e.header().entry_type().is_file() {
            continue;
        }
        let mut text = String::new();
        if e.read_to_string(&mut text).is_err() {
            bad.push(format!("{path} (not UTF-8)"));
            continue;
        }
        if let Err(err) = roxmltree::Document::parse(&text) {
            bad.push(format!("{path} ({err})"));
        }
        seen.push(path.rsplit('/').next().unwrap_or(&path).to_string());
    }
    Ok(if !bad.is_empty() {
        format!("do not parse: {}", bad.join(", "))
    } else if !seen.iter().any(|s| s == "core-site.xml") {
        "no core-site.xml".into()
    } else {
        "ok".into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_read_from_the_script_lines() {
        let out = "user=ok\nconf-dir=/etc/hadoop\njava=ok\nhadoop=absent\n";
        let c = read_checks(out, 0, Some("3.3.6"), false);
        assert_eq!(c["user"], "ok");
        assert_eq!(c["env"], "ok");
        assert_eq!(c["hadoop"], "absent");
        let out = "user=ok\nmissing-env=JAVA_HOME\njava=failed\nhadoop=3.3.5\nbad-shell=/etc/hadoop/x.sh\n";
        let c = read_checks(out, 0, Some("3.3.6"), true);
        assert_eq!(c["env"], "missing JAVA_HOME");
        assert_eq!(c["java"], "failed");
        assert_eq!(c["hadoop"], "3.3.5 (want 3.3.6)");
        assert!(c["shell-configs"].contains("x.sh"));
        assert_eq!(c["key"], "not installed at boot");
    }

    #[test]
    fn xml_that_does_not_parse_is_named() {
        let mut b = tar::Builder::new(Vec::new());
        for (p, d) in [
            ("hadoop/core-site.xml", &b"<configuration/>"[..]),
            ("hadoop/yarn-site.xml", b"<configuration>"),
        ] {
            let mut h = tar::Header::new_ustar();
            h.set_path(p).unwrap();
            h.set_size(d.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append(&h, d).unwrap();
        }
        let t = b.into_inner().unwrap();
        let r = check_xml(&t).unwrap();
        assert!(
            r.contains("yarn-site.xml") && !r.contains("core-site"),
            "{r}"
        );
    }
}
