//! # Boot test: the disk under QEMU (TCG), read from its serial console

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::support::progress::Progress;

use super::Firmware;

const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
pub const CHECK_MARKER: &str = "STRATA-BOOT-CHECK";

/// What one boot test found.
#[derive(Debug, Serialize, Deserialize, Clone)]
#[serde(rename_all = "kebab-case")]
pub struct BootResult {
    pub firmware: Firmware,
    pub passed: bool,
    pub seconds_to_login: Option<f64>,
    pub check: BTreeMap<String, String>,
    pub problems: Vec<String>,
    pub console_log: PathBuf,
    /// The disk size the test grew the disk to, if any.
    pub flavor_disk: Option<u64>,
}

/// Boots a disk under QEMU (a throw-away snapshot) and reads the console.
pub fn boot_test(
    disk: &Path,
    firmware: Firmware,
    log: &Path,
    timeout: Duration,
    progress: &Progress,
) -> Result<BootResult> {
    crate::support::cmd::require("qemu-system-x86_64")?;
    let task = progress.task(format!("boot test ({firmware}, TCG)"), None);
    let _ = std::fs::remove_file(log);
    let vars =
        tempfile::NamedTempFile::new().context("creating a temp file for the UEFI variables")?;
    let mut c = Command::new("qemu-system-x86_64");
    c.args([
        "-accel",
        "tcg",
        "-m",
        "2048",
        "-smp",
        "2",
        "-nographic",
        "-monitor",
        "none",
    ])
    .arg("-serial")
    .arg(format!("file:{}", log.display()))
    .arg("-drive")
    .arg(format!("file={},if=virtio,snapshot=on", disk.display()))
    .args(["-nic", "user,model=virtio-net-pci"]);
    match firmware {
        Firmware::Bios => {}
        Firmware::Uefi => {
            std::fs::copy(OVMF_VARS, vars.path()).context("OVMF firmware (install ovmf)")?;
            c.args(["-machine", "q35"])
                .arg("-drive")
                .arg(format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"))
                .arg("-drive")
                .arg(format!(
                    "if=pflash,format=raw,file={}",
                    vars.path().display()
                ));
        }
    }
    let start = Instant::now();
    let mut qemu = crate::support::cmd::spawn(c)?;
    let mut login = None;
    let mut check_line = None;
    while start.elapsed() < timeout {
        std::thread::sleep(Duration::from_millis(500));
        let text = String::from_utf8_lossy(&std::fs::read(log).unwrap_or_default()).into_owned();
        if login.is_none() && text.contains("login:") {
            login = Some(start.elapsed().as_secs_f64());
        }
        if check_line.is_none() {
            check_line = text
                .lines()
                .find(|l| l.contains(CHECK_MARKER))
                .map(|l| l.to_string());
        }
        if login.is_some() && check_line.is_some() {
            break;
        }
        if let Some(status) = qemu.try_wait()? {
            return Err(qemu
                .ended_early(status)
                .context("qemu exited before the boot finished"));
        }
    }
    qemu.stop();
    let mut check = BTreeMap::new();
    if let Some(l) = &check_line {
        let l = &l[l.find(CHECK_MARKER).unwrap_or(0) + CHECK_MARKER.len()..];
        for kv in l.split_whitespace() {
            if let Some((k, v)) = kv.split_once('=') {
                check.insert(k.to_string(), v.to_string());
            }
        }
    }
    let mut problems = Vec::new();
    if login.is_none() {
        problems.push(format!(
            "no login: prompt on the serial console within {}s",
            timeout.as_secs()
        ));
    }
    if check_line.is_none() {
        problems.push("the boot check never reported".into());
    }
    let want = [
        ("state", "running"),
        ("failed", "none"),
        ("user", "ok"),
        ("env", "ok"),
        ("java", "ok"),
        ("sshd", "active"),
        ("configs", "ok"),
    ];
    if check_line.is_some() {
        for (k, v) in want {
            if check.get(k).map(String::as_str) != Some(v) {
                problems.push(format!(
                    "{k}={} (want {v})",
                    check.get(k).map(String::as_str).unwrap_or("?")
                ));
            }
        }
    }
    let passed = problems.is_empty();
    task.finish(if passed {
        format!("passed, login in {:.0}s", login.unwrap_or(0.0))
    } else {
        format!("FAILED: {}", problems.join("; "))
    });
    Ok(BootResult {
        firmware,
        passed,
        seconds_to_login: login,
        check,
        problems,
        console_log: log.to_path_buf(),
        flavor_disk: None,
    })
}
