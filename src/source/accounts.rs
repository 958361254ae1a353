//! # Accounts: the recipe's user, merged with the base's, and the cluster SSH keys
//!
//! The accounts layer replaces `/etc/passwd`, `/etc/group`, `/etc/shadow` and `/etc/gshadow` with
//! the base's files plus the recipe's user (the base's owners and modes are kept), and adds the
//! user's home with `~/.ssh` (0700) holding the cluster key pair and `authorized_keys` (0600).
//! With `[ssh] deliver = "boot"` the private key is left out, and what installs it at boot is
//! added instead ([`keys::boot_entries`]).

use anyhow::Result;
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

/// Which account database a merge is for, to word its refusals.
#[derive(Clone, Copy)]
struct Db {
    file: &'static str,
    /// The recipe key of the id field (`user.uid`, `user.gid`) and its index in a line.
    id: Option<(&'static str, usize, u32)>,
}

/// Adds the recipe's `name:...` line to an account database. A line of the same name, or another
/// name holding the same id, is refused (bad input) unless `reuse` allows the same name (and the
/// id it holds there): its line is then replaced. An id held by another name is always refused.
fn merge_line(db: &str, name: &str, line: &str, at: Db, reuse: bool) -> Result<String> {
    let mut out = String::new();
    let mut present = false;
    for l in db.lines() {
        let fields: Vec<&str> = l.split(':').collect();
        if fields.first() == Some(&name) {
            if !reuse {
                crate::bad!(
                    "[user] name = {name:?}: the base's {} already has this account; choose \
                     another name, or set `reuse-existing = true` in [user] to take it over (its \
                     line is replaced)",
                    at.file
                );
            }
            present = true;
            out.push_str(line);
        } else {
            if let Some((key, idx, id)) = at.id
                && fields.get(idx).and_then(|f| f.parse::<u32>().ok()) == Some(id)
            {
                crate::bad!(
                    "[user] {} = {id}: already belongs to {:?} in the base's {}; choose another",
                    key.trim_start_matches("user."),
                    fields[0],
                    at.file
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
                Db {
                    file: "/etc/passwd",
                    id: Some(("user.uid", 2, user.uid)),
                },
                user.reuse_existing,
            )?,
        ),
        file(
            "etc/group",
            &group,
            merge_line(
                &group.text,
                n,
                &format!("{n}:x:{}:", user.gid),
                Db {
                    file: "/etc/group",
                    id: Some(("user.gid", 2, user.gid)),
                },
                user.reuse_existing,
            )?,
        ),
    ];
    if let Some(shadow) = &base.shadow {
        // `*`: no password login, but not locked, so key login works with or without PAM.
        out.push(file(
            "etc/shadow",
            shadow,
            merge_line(
                &shadow.text,
                n,
                &format!("{n}:*:{days}:0:99999:7:::"),
                Db {
                    file: "/etc/shadow",
                    id: None,
                },
                true,
            )?,
        ));
    }
    if let Some(gshadow) = &base.gshadow {
        out.push(file(
            "etc/gshadow",
            gshadow,
            merge_line(
                &gshadow.text,
                n,
                &format!("{n}:!::"),
                Db {
                    file: "/etc/gshadow",
                    id: None,
                },
                true,
            )?,
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

    const PASSWD: Db = Db {
        file: "/etc/passwd",
        id: Some(("user.uid", 2, 1000)),
    };

    #[test]
    fn merge_appends_and_refuses_taken_names_and_ids() {
        let db = "root:x:0:0:root:/root:/bin/bash\n";
        let line = "hadoop:x:1000:1000::/home/hadoop:/bin/bash";
        let m = merge_line(db, "hadoop", line, PASSWD, false).unwrap();
        assert_eq!(m, format!("{db}{line}\n"));
        let root = Db {
            id: Some(("user.uid", 2, 0)),
            ..PASSWD
        };
        let e = merge_line(db, "hadoop", "hadoop:x:0:0::/:/bin/sh", root, true).unwrap_err();
        assert!(e.is::<crate::support::error::BadInput>(), "{e:#}");
        assert!(
            format!("{e}").contains("uid = 0: already belongs to \"root\""),
            "{e}"
        );
        // A name the base has: refused unless reuse-existing, then replaced, not duplicated.
        let e = merge_line(&m, "hadoop", line, PASSWD, false).unwrap_err();
        assert!(format!("{e}").contains("reuse-existing = true"), "{e}");
        assert_eq!(merge_line(&m, "hadoop", line, PASSWD, true).unwrap(), m);
        // reuse-existing does not let the user take another account's id.
        let other = "other:x:1000:1000::/:/bin/sh\n";
        assert!(merge_line(other, "hadoop", line, PASSWD, true).is_err());
    }
}
