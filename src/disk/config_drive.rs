//! # Key delivery in the boot test: a config drive in, an SSH login out
//!
//! An image built with `[ssh] deliver = "boot"` carries only the public key. Its boot test
//! proves the private key arrives the way OpenStack delivers user data: the test makes a
//! config drive as Nova does (a vfat file system labelled `config-2` holding
//! `openstack/latest/user_data`, here the document [`keys::user_data`] writes), attaches it to
//! the VM beside the disk, forwards a host port to the guest's sshd, and once the guest is up
//! logs in as the user with the cluster key. Over that session it checks that `strata-ssh-key`
//! installed the delivered key (`~/.ssh/id_ed25519` of the user, 0600 in a 0700 directory, the
//! key whose public half the image carries) and that the user can log in with it in turn
//! (to the node itself, as Hadoop's scripts log into workers).
//!
//! Made without root or loop devices: `mkfs.fat -C` + mtools, as the ESP is.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::recipe::User;
use crate::source::keys::{self, ClusterKey};
use crate::support::cmd;

/// The file-system label Nova gives config drives (and cloud-init looks for).
pub const CONFIG_DRIVE_LABEL: &str = "config-2";
/// Where user data sits on a config drive.
pub const USER_DATA_PATH: &str = "openstack/latest/user_data";
/// The tools a key-delivery boot test runs beyond the disk's (mkfs.fat, mmd, mcopy).
pub const TOOLS: [&str; 1] = ["ssh"];

/// How long the test keeps trying to log in once the guest is up (sshd may still be starting;
/// each try may take seconds under TCG).
const LOGIN_WINDOW: Duration = Duration::from_secs(45);

/// What a key-delivery boot test delivers: the image's cluster key, for its user.
pub struct KeyTest {
    pub key: ClusterKey,
    pub user: User,
}

/// The files of one key-delivery boot: the config drive, the key for the host's ssh, the port.
pub(crate) struct Delivery {
    pub drive: PathBuf,
    identity: PathBuf,
    pub port: u16,
}

/// What the key-delivery part of a boot test found (kept in the boot-test JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct KeyDeliveryResult {
    /// How the key was delivered: `config-drive`.
    pub via: String,
    /// The fingerprint of the delivered key (never the key).
    pub fingerprint: String,
    /// What `strata-ssh-key` said on the console.
    pub console: Option<String>,
    /// sshd accepted the delivered key for the user.
    pub login: bool,
    pub seconds_to_ssh: Option<f64>,
    pub attempts: u32,
    /// What the session found: key-mode, key-owner, dir-mode, key-matches, self-login.
    pub check: BTreeMap<String, String>,
}

/// Writes the config drive and the host's copy of the key into `work`, and picks a free port.
pub(crate) fn prepare(kt: &KeyTest, work: &Path) -> Result<Delivery> {
    use std::os::unix::fs::OpenOptionsExt;
    let secret = |p: &Path, bytes: &[u8]| -> Result<()> {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(p)
            .with_context(|| format!("creating {p:?}"))?;
        f.write_all(bytes).with_context(|| format!("writing {p:?}"))
    };
    let user_data = work.join("user_data");
    secret(&user_data, keys::user_data(&kt.key, &kt.user).as_bytes())?;
    let identity = work.join("id_cluster");
    secret(&identity, kt.key.private_pem().as_bytes())?;
    let drive = work.join("config-drive.img");
    let mut c = Command::new("mkfs.fat");
    c.args(["-C", "-n", CONFIG_DRIVE_LABEL])
        .arg(&drive)
        .arg("1024");
    cmd::run(c, |_| {}).context("making the config drive")?;
    let mut c = Command::new("mmd");
    c.arg("-i")
        .arg(&drive)
        .args(["::/openstack", "::/openstack/latest"]);
    cmd::run(c, |_| {})?;
    let mut c = Command::new("mcopy");
    c.arg("-i")
        .arg(&drive)
        .arg(&user_data)
        .arg(format!("::/{USER_DATA_PATH}"));
    cmd::run(c, |_| {})?;
    crate::support::fsx::remove_file(&user_data)?;
    // A free port now; QEMU binds it a moment later (another process taking it in between makes
    // QEMU exit with the reason).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("finding a free port for the guest's sshd")?
        .port();
    Ok(Delivery {
        drive,
        identity,
        port,
    })
}

/// The QEMU arguments that attach the config drive (after the disk, so the disk stays the
/// first) and the user-mode NIC with the forwarded port.
pub(crate) fn qemu_args(d: &Delivery) -> Vec<String> {
    vec![
        "-drive".into(),
        format!(
            "file={},format=raw,if=virtio,readonly=on",
            d.drive.display()
        ),
        "-nic".into(),
        format!(
            "user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:{}-:22",
            d.port
        ),
    ]
}

/// What the session runs as the user: one `key=value` per line.
const SESSION: &str = r#"k="$HOME/.ssh/id_ed25519"
echo "key-mode=$(stat -c %a "$k" 2>/dev/null || echo missing)"
echo "key-owner=$(stat -c %U "$k" 2>/dev/null || echo missing)"
echo "dir-mode=$(stat -c %a "$HOME/.ssh" 2>/dev/null || echo missing)"
echo "key-public=$(ssh-keygen -y -f "$k" 2>/dev/null | cut -d' ' -f1,2 | tr ' ' '_')"
if ssh -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
    -o ConnectTimeout=10 -o IdentitiesOnly=yes -o LogLevel=ERROR -i "$k" 127.0.0.1 true \
    </dev/null 2>/dev/null; then echo self-login=ok; else echo self-login=failed; fi
"#;

/// Logs into the running guest with the delivered key, retrying within [`LOGIN_WINDOW`]; then
/// checks what the session reports. `console` is the console log so far.
pub(crate) fn check_login(kt: &KeyTest, d: &Delivery, console: &str) -> KeyDeliveryResult {
    let start = Instant::now();
    let mut attempts = 0;
    let mut last_error = String::new();
    let mut out = None;
    while start.elapsed() < LOGIN_WINDOW {
        attempts += 1;
        let mut c = Command::new("ssh");
        c.arg("-i")
            .arg(&d.identity)
            .arg("-p")
            .arg(d.port.to_string())
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "ConnectTimeout=10",
                "-o",
                "LogLevel=ERROR",
            ])
            .arg(format!("{}@127.0.0.1", kt.user.name))
            .arg(SESSION);
        match cmd::output(c) {
            Ok(o) => {
                out = Some(String::from_utf8_lossy(&o).into_owned());
                break;
            }
            Err(e) => {
                last_error = format!("{e:#}");
                std::thread::sleep(Duration::from_secs(2));
            }
        }
    }
    let mut check = BTreeMap::new();
    let login = out.is_some();
    if let Some(o) = &out {
        for l in o.lines() {
            if let Some((k, v)) = l.split_once('=') {
                check.insert(k.to_string(), v.to_string());
            }
        }
        let public = check.remove("key-public").unwrap_or_default();
        let matches = public.replace('_', " ") == kt.key.public_key_only();
        check.insert("key-matches".into(), matches.to_string());
    } else {
        check.insert("ssh-error".into(), last_error);
    }
    KeyDeliveryResult {
        via: "config-drive".into(),
        fingerprint: kt.key.fingerprint.clone(),
        console: script_line(console),
        login,
        seconds_to_ssh: login.then(|| start.elapsed().as_secs_f64()),
        attempts,
        check,
    }
}

/// What `strata-ssh-key` said on the console: the line saying it installed the key, else its
/// first line.
fn script_line(console: &str) -> Option<String> {
    const TAG: &str = "strata-ssh-key:";
    let said: Vec<&str> = console
        .lines()
        .filter_map(|l| l.find(TAG).map(|i| l[i..].trim()))
        .collect();
    said.iter()
        .find(|l| l.contains("installed"))
        .or(said.first())
        .map(|l| l.to_string())
}

impl KeyDeliveryResult {
    /// What is wrong, for the boot test's problems (empty when the key arrived and works).
    pub fn problems(&self, user: &str) -> Vec<String> {
        if !self.login {
            return vec![format!(
                "sshd did not accept the delivered key for {user} within {}s: {}",
                LOGIN_WINDOW.as_secs(),
                self.check
                    .get("ssh-error")
                    .map(String::as_str)
                    .unwrap_or("?")
            )];
        }
        let want = [
            ("key-mode", "600"),
            ("key-owner", user),
            ("dir-mode", "700"),
            ("key-matches", "true"),
            ("self-login", "ok"),
        ];
        let mut p: Vec<String> = want
            .iter()
            .filter(|(k, v)| self.check.get(*k).map(String::as_str) != Some(*v))
            .map(|(k, v)| {
                format!(
                    "delivered key: {k}={} (want {v})",
                    self.check.get(*k).map(String::as_str).unwrap_or("?")
                )
            })
            .collect();
        if !self
            .console
            .as_deref()
            .is_some_and(|c| c.contains("from the config drive"))
        {
            p.push(format!(
                "strata-ssh-key did not say it installed the key from the config drive (console: {})",
                self.console.as_deref().unwrap_or("nothing")
            ));
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(console: &str, pairs: &[(&str, &str)]) -> KeyDeliveryResult {
        KeyDeliveryResult {
            via: "config-drive".into(),
            fingerprint: "SHA256:x".into(),
            console: script_line(console),
            login: true,
            seconds_to_ssh: Some(1.0),
            attempts: 1,
            check: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    const GOOD: [(&str, &str); 5] = [
        ("key-mode", "600"),
        ("key-owner", "hadoop"),
        ("dir-mode", "700"),
        ("key-matches", "true"),
        ("self-login", "ok"),
    ];

    const INSTALLED: &str = "[   13.5] strata-ssh-key[286]: strata-ssh-key: installed the cluster key (SHA256:x) from the config drive's user data (/dev/vdb) into /home/hadoop/.ssh/id_ed25519\n";

    #[test]
    fn a_delivered_key_passes_only_when_everything_holds() {
        assert_eq!(
            result(INSTALLED, &GOOD).problems("hadoop"),
            Vec::<String>::new()
        );
        // The key never arrived: sshd still lets the user in (authorized_keys is baked), but
        // the session finds no key and cannot log in further.
        let console = "strata-ssh-key: no cluster key found (secret config-drive metadata): …\n";
        let missing = [
            ("key-mode", "missing"),
            ("key-owner", "missing"),
            ("dir-mode", "700"),
            ("key-matches", "false"),
            ("self-login", "failed"),
        ];
        let p = result(console, &missing).problems("hadoop");
        assert_eq!(p.len(), 5, "{p:#?}");
        assert!(p[0].contains("key-mode=missing (want 600)"), "{p:#?}");
        assert!(
            p[4].contains("console: strata-ssh-key: no cluster key found"),
            "{p:#?}"
        );
        // Wrong mode, or a key from elsewhere.
        let mut loose = GOOD;
        loose[0] = ("key-mode", "644");
        assert_eq!(result(INSTALLED, &loose).problems("hadoop").len(), 1);
        let secret = INSTALLED.replace(
            "the config drive's user data (/dev/vdb)",
            "the secret file x",
        );
        assert_eq!(result(&secret, &GOOD).problems("hadoop").len(), 1);
        // No login at all.
        let mut r = result(INSTALLED, &[("ssh-error", "Connection refused")]);
        r.login = false;
        let p = r.problems("hadoop");
        assert!(
            p[0].contains("sshd did not accept the delivered key for hadoop"),
            "{p:?}"
        );
        assert!(p[0].contains("Connection refused"), "{p:?}");
    }

    #[test]
    fn qemu_gets_the_drive_after_the_disk_and_the_forwarded_port() {
        let d = Delivery {
            drive: "/w/config-drive.img".into(),
            identity: "/w/id".into(),
            port: 2222,
        };
        assert_eq!(
            qemu_args(&d),
            [
                "-drive",
                "file=/w/config-drive.img,format=raw,if=virtio,readonly=on",
                "-nic",
                "user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:2222-:22"
            ]
        );
    }
}
