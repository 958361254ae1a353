//! # Accounts: the recipe's user, merged with the base's, and the cluster SSH keys
//!
//! The accounts layer replaces `/etc/passwd`, `/etc/group`, `/etc/shadow` and `/etc/gshadow` with
//! the base's files plus the recipe's user (the base's owners and modes are kept), and adds the
//! user's home with `~/.ssh` (0700) holding the cluster key pair and `authorized_keys` (0600).
//! With `[ssh] deliver = "boot"` the private key is left out, and what installs it at boot is
//! added instead ([`keys::boot_entries`]).

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use crate::layer::{Content, Entry};
use crate::recipe::{KeyDelivery, User};
use crate::source::keys::{self, ClusterKey};

/// One account file of the base, as found there.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AccountFile {
    pub text: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// The base's account files (read when the base is prepared, kept in its cache record).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct BaseAccounts {
    pub passwd: Option<AccountFile>,
    pub group: Option<AccountFile>,
    pub shadow: Option<AccountFile>,
    pub gshadow: Option<AccountFile>,
}

impl BaseAccounts {
    pub const FILES: [&'static str; 4] = ["etc/passwd", "etc/group", "etc/shadow", "etc/gshadow"];

    /// Records the account files found among `entries`.
    pub fn from_entries(entries: &[Entry]) -> Result<Self> {
        let mut out = BaseAccounts::default();
        for e in entries {
            let slot = match e.path.as_str() {
                "etc/passwd" => &mut out.passwd,
                "etc/group" => &mut out.group,
                "etc/shadow" => &mut out.shadow,
                "etc/gshadow" => &mut out.gshadow,
                _ => continue,
            };
            if let crate::layer::Kind::File(c) = &e.kind {
                let text = String::from_utf8(c.read_all()?)?;
                *slot = Some(AccountFile {
                    text,
                    mode: e.mode,
                    uid: e.uid,
                    gid: e.gid,
                });
            }
        }
        Ok(out)
    }
}

/// Adds or checks a `name:...` line in an account database.
fn merge_line(db: &str, name: &str, line: &str, id_field: Option<(usize, u32)>) -> Result<String> {
    let mut out = String::new();
    let mut present = false;
    for l in db.lines() {
        let fields: Vec<&str> = l.split(':').collect();
        if fields.first() == Some(&name) {
            present = true;
            out.push_str(line);
        } else {
            if let Some((idx, id)) = id_field
                && fields.get(idx).and_then(|f| f.parse::<u32>().ok()) == Some(id)
            {
                bail!(
                    "id {id} already belongs to {:?} in the base; choose another uid/gid in [user]",
                    fields[0]
                );
            }
            out.push_str(l);
        }
        out.push('\n');
    }
    if !present {
        out.push_str(line);
        out.push('\n');
    }
    Ok(out)
}

/// The entries of the accounts layer.
pub fn entries(
    base: &BaseAccounts,
    user: &User,
    key: &ClusterKey,
    deliver: KeyDelivery,
    epoch: u64,
) -> Result<Vec<Entry>> {
    let days = epoch / 86_400;
    let n = &user.name;
    let def = |mode: u32, gid: u32| AccountFile {
        text: String::new(),
        mode,
        uid: 0,
        gid,
    };
    let passwd = base.passwd.clone().unwrap_or_else(|| def(0o644, 0));
    let group = base.group.clone().unwrap_or_else(|| def(0o644, 0));
    let mut out = vec![
        file(
            "etc/passwd",
            &passwd,
            merge_line(
                &passwd.text,
                n,
                &format!(
                    "{n}:x:{}:{}:Hadoop:{}:{}",
                    user.uid, user.gid, user.home, user.shell
                ),
                Some((2, user.uid)),
            )?,
        ),
        file(
            "etc/group",
            &group,
            merge_line(
                &group.text,
                n,
                &format!("{n}:x:{}:", user.gid),
                Some((2, user.gid)),
            )?,
        ),
    ];
    if let Some(shadow) = &base.shadow {
        // `*`: no password login, but not locked, so key login works with or without PAM.
        out.push(file(
            "etc/shadow",
            shadow,
            merge_line(&shadow.text, n, &format!("{n}:*:{days}:0:99999:7:::"), None)?,
        ));
    }
    if let Some(gshadow) = &base.gshadow {
        out.push(file(
            "etc/gshadow",
            gshadow,
            merge_line(&gshadow.text, n, &format!("{n}:!::"), None)?,
        ));
    }
    let home = user.home.trim_start_matches('/');
    let (u, g) = (user.uid, user.gid);
    out.push(Entry::dir(home, 0o755, u, g));
    out.push(Entry::dir(&format!("{home}/.ssh"), 0o700, u, g));
    match deliver {
        KeyDelivery::Image => out.push(Entry::file(
            &format!("{home}/{}", keys::PRIVATE_KEY_NAME),
            Content::bytes(key.private_openssh.clone()),
            0o600,
            u,
            g,
        )),
        KeyDelivery::Boot => out.extend(keys::boot_entries(key, user)),
    }
    let public = format!("{}\n", key.public_openssh.trim());
    out.push(Entry::file(
        &format!("{home}/{}.pub", keys::PRIVATE_KEY_NAME),
        Content::bytes(public.clone()),
        0o600,
        u,
        g,
    ));
    out.push(Entry::file(
        &format!("{home}/.ssh/authorized_keys"),
        Content::bytes(public),
        0o600,
        u,
        g,
    ));
    Ok(out)
}

fn file(path: &str, like: &AccountFile, text: String) -> Entry {
    Entry::file(path, Content::bytes(text), like.mode, like.uid, like.gid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_appends_and_refuses_taken_ids() {
        let db = "root:x:0:0:root:/root:/bin/bash\n";
        let m = merge_line(
            db,
            "hadoop",
            "hadoop:x:1000:1000::/home/hadoop:/bin/bash",
            Some((2, 1000)),
        )
        .unwrap();
        assert_eq!(m.lines().count(), 2);
        assert!(merge_line(db, "hadoop", "hadoop:x:0:0::/:/bin/sh", Some((2, 0))).is_err());
        // Idempotent: an existing line is replaced, not duplicated.
        let again = merge_line(
            &m,
            "hadoop",
            "hadoop:x:1000:1000::/home/hadoop:/bin/bash",
            Some((2, 1000)),
        )
        .unwrap();
        assert_eq!(again, m);
    }
}
