//! # Image references: `REGISTRY/REPO[:TAG][@DIGEST]`
//!
//! The grammar of the distribution spec, kept to what strata needs: the first path component is
//! the registry when it looks like a host (has a `.` or a `:`, or is `localhost`); otherwise the
//! registry is Docker Hub (`registry-1.docker.io`) and a one-component repository gets
//! `library/`. Repository components are lower case (`[a-z0-9]+` joined by `.`, `_`, `__` or
//! dashes), a tag is `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`, a digest is parsed by oci-spec.
//! Anything else is bad input (exit 2) that says what was expected.

use std::fmt;
use std::str::FromStr;

use oci_spec::image::Digest;

use crate::support::error::BadInput;

/// The registry behind references that name none.
pub const DOCKER_HUB: &str = "registry-1.docker.io";

/// A parsed reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `host[:port]`.
    pub registry: String,
    /// `team/hadoop-lab`.
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl Reference {
    /// The tag or digest a manifest request names (the digest wins when both are given).
    pub fn reference(&self) -> Option<String> {
        match (&self.digest, &self.tag) {
            (Some(d), _) => Some(d.to_string()),
            (None, Some(t)) => Some(t.clone()),
            (None, None) => None,
        }
    }

    /// The same repository with another tag (and no digest).
    pub fn with_tag(&self, tag: &str) -> Reference {
        Reference {
            tag: Some(tag.to_string()),
            digest: None,
            ..self.clone()
        }
    }

    /// `REGISTRY/REPO` without tag or digest.
    pub fn repo_name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

fn bad(s: &str, why: impl fmt::Display) -> BadInput {
    BadInput(format!(
        "{s:?} is not an image reference ({why}); expected REGISTRY/REPO[:TAG][@sha256:DIGEST], \
         e.g. registry.example.org:5000/team/hadoop-lab:3.3.6"
    ))
}

/// Whether `tag` is a valid tag.
pub fn valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// One repository path component: `[a-z0-9]+` joined by `.`, `_`, `__` or runs of `-`.
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric() {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        let ch = b[i];
        if ch.is_ascii_lowercase() || ch.is_ascii_digit() {
            i += 1;
            continue;
        }
        // A separator: `.`, `_`, `__` or one or more `-`, followed by an alphanumeric.
        let start = i;
        match ch {
            b'.' => i += 1,
            b'_' => i += if b.get(i + 1) == Some(&b'_') { 2 } else { 1 },
            b'-' => {
                while b.get(i) == Some(&b'-') {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start
            || !b
                .get(i)
                .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        {
            return false;
        }
    }
    true
}

fn looks_like_host(c: &str) -> bool {
    c.contains('.') || c.contains(':') || c == "localhost"
}

fn valid_host(h: &str) -> bool {
    let (host, port) = match h.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (h, None),
    };
    !host.is_empty()
        && host
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'[' | b']'))
        && port.is_none_or(|p| !p.is_empty() && p.parse::<u16>().is_ok())
}

impl FromStr for Reference {
    type Err = BadInput;

    fn from_str(s: &str) -> Result<Self, BadInput> {
        if s.is_empty() || s.len() > 4096 || s.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(bad(s, "empty, too long, or holding spaces"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((rest, d)) => {
                let d: Digest = d
                    .parse()
                    .map_err(|e| bad(s, format!("bad digest {d:?}: {e}")))?;
                (rest, Some(d))
            }
            None => (s, None),
        };
        // The tag follows the last ':' that comes after the last '/'.
        let slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[slash..].rfind(':') {
            Some(i) => (&rest[..slash + i], Some(&rest[slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(t) = tag
            && !valid_tag(t)
        {
            return Err(bad(
                s,
                format!("bad tag {t:?}: letters, digits, '_', '.', '-', at most 128"),
            ));
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest)) if looks_like_host(first) => (first.to_string(), rest.to_string()),
            Some(_) => (DOCKER_HUB.to_string(), name.to_string()),
            None => (DOCKER_HUB.to_string(), format!("library/{name}")),
        };
        if !valid_host(&registry) {
            return Err(bad(s, format!("bad registry host {registry:?}")));
        }
        if repository.is_empty() || repository.len() > 255 {
            return Err(bad(s, "no repository"));
        }
        if let Some(c) = repository.split('/').find(|c| !valid_component(c)) {
            return Err(bad(
                s,
                format!(
                    "bad repository component {c:?}: lower-case letters and digits joined by \
                     '.', '_' or '-'"
                ),
            ));
        }
        Ok(Reference {
            registry,
            repository,
            tag: tag.map(str::to_string),
            digest,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse() {
        let d = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
        for (s, reg, repo, tag, dig) in [
            ("127.0.0.1:5000/lab", "127.0.0.1:5000", "lab", None, false),
            (
                "reg.example.org/team/hadoop-lab:3.3.6",
                "reg.example.org",
                "team/hadoop-lab",
                Some("3.3.6"),
                false,
            ),
            (
                "localhost/a_b/c__d/e--f:x",
                "localhost",
                "a_b/c__d/e--f",
                Some("x"),
                false,
            ),
            ("busybox", DOCKER_HUB, "library/busybox", None, false),
            ("team/lab:base", DOCKER_HUB, "team/lab", Some("base"), false),
        ] {
            let r: Reference = s.parse().unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(
                (r.registry.as_str(), r.repository.as_str()),
                (reg, repo),
                "{s}"
            );
            assert_eq!(r.tag.as_deref(), tag, "{s}");
            assert_eq!(r.digest.is_some(), dig, "{s}");
        }
        let r: Reference = format!("h:1/r:t@{d}").parse().unwrap();
        assert_eq!(r.reference().unwrap(), d);
        assert_eq!(r.to_string(), format!("h:1/r:t@{d}"));
    }

    #[test]
    fn malformed_references_are_bad_input_saying_why() {
        for (s, why) in [
            ("", "empty"),
            ("h:5000/Lab", "repository component"),
            ("h:5000/lab:", "bad tag"),
            ("h:5000/lab:-x", "bad tag"),
            ("h:5000/lab@sha256:xyz", "bad digest"),
            ("h:99999/lab", "registry host"),
            ("h:5000/", "repository"),
            ("h:5000/a//b", "repository component"),
            ("h:5000/a b", "spaces"),
            ("h:5000/a-/b", "repository component"),
        ] {
            let e = s.parse::<Reference>().expect_err(s).to_string();
            assert!(e.contains(why) && e.contains("REGISTRY/REPO"), "{s}: {e}");
        }
    }
}
