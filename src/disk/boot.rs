//! # Boot test: the disk under QEMU (TCG), read from its serial console
//!
//! For an image that takes its SSH key at boot, the test also delivers the key on a config
//! drive and logs in with it ([`super::config_drive`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::support::progress::Progress;

use super::Firmware;
use super::config_drive::{self, KeyDeliveryResult, KeyTest};

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
    /// Images with `[ssh] deliver = "boot"`: the key delivered on a config drive, and the login.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_delivery: Option<KeyDeliveryResult>,
}

/// The boot check's `key=value` pairs, and what is wrong: no login prompt, no check line, or
/// a value other than the one a healthy node reports.
fn read_check(
    check_line: Option<&str>,
    login: Option<f64>,
    timeout: Duration,
) -> (BTreeMap<String, String>, Vec<String>) {
    let mut check = BTreeMap::new();
    if let Some(l) = check_line {
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
    (check, problems)
}

/// Boots a disk under QEMU (a throw-away snapshot) and reads the console; with `key`, delivers
/// it on a config drive and logs in with it once the guest is up.
pub fn boot_test(
    disk: &Path,
    firmware: Firmware,
    log: &Path,
    timeout: Duration,
    key: Option<&KeyTest>,
    progress: &Progress,
) -> Result<BootResult> {
    crate::support::cmd::require("qemu-system-x86_64")?;
    let what = if key.is_some() {
        ", key on a config drive"
    } else {
        ""
    };
    let task = progress.task(format!("boot test ({firmware}, TCG{what})"), None);
    // The config drive and the host's copy of the key live here until the test ends.
    let key_dir = tempfile::tempdir().context("creating a temp dir for the config drive")?;
    let delivery = match key {
        Some(kt) => Some(config_drive::prepare(kt, key_dir.path())?),
        None => None,
    };
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
    .arg(format!("file={},if=virtio,snapshot=on", disk.display()));
    match &delivery {
        Some(d) => c.args(config_drive::qemu_args(d)),
        None => c.args(["-nic", "user,model=virtio-net-pci"]),
    };
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
    // Logged in while the guest runs: only once it is up (else there is nothing to log into).
    let key_delivery = match (key, &delivery) {
        (Some(kt), Some(d)) if login.is_some() && check_line.is_some() => {
            let text =
                String::from_utf8_lossy(&std::fs::read(log).unwrap_or_default()).into_owned();
            Some(config_drive::check_login(kt, d, &text))
        }
        _ => None,
    };
    qemu.stop();
    let (check, mut problems) = read_check(check_line.as_deref(), login, timeout);
    if let (Some(kt), Some(kd)) = (key, &key_delivery) {
        problems.extend(kd.problems(&kt.user.name));
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
        key_delivery,
    })
}
