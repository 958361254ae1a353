//! # The Hadoop version catalogue
//!
//! `hadoop-versions/X.Y.Z.toml` holds, for one release, the facts the config templates need:
//! default ports per property, workers vs slaves, the env variable names its scripts read, the
//! Java versions it runs on, the properties its setup docs require for YARN + MapReduce, and the
//! release tarball with its published sha512. Every fact carries a `source` (repository, path,
//! commit) so a reviewer can check it; `hadoop-versions/README.md` says how they were read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Facts {
    pub version: String,
    pub line: String,
    pub git_tag: String,
    pub git_commit: String,
    pub dist: DistFacts,
    pub java: JavaFacts,
    pub layout: LayoutFacts,
    pub env: EnvFacts,
    #[serde(default)]
    pub port: Vec<Port>,
    #[serde(default)]
    pub required: Vec<Required>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DistFacts {
    pub url: String,
    #[serde(default)]
    pub sha512: Option<String>,
    #[serde(default)]
    pub checksum_source: Option<String>,
    #[serde(default)]
    pub sha512_note: Option<String>,
    #[serde(default)]
    pub source: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct JavaFacts {
    pub runtime: Vec<u32>,
    pub source: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LayoutFacts {
    pub workers_file: String,
    pub env_files: Vec<String>,
    pub log4j: String,
    pub source: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct EnvFacts {
    pub java_home: String,
    pub heap: String,
    #[serde(default)]
    pub heap_min: Option<String>,
    pub heap_unit: String,
    pub pid_dir: String,
    pub log_dir: String,
    pub opts: String,
    #[serde(default)]
    pub yarn_pid_dir: Option<String>,
    #[serde(default)]
    pub yarn_log_dir: Option<String>,
    #[serde(default)]
    pub mapred_pid_dir: Option<String>,
    #[serde(default)]
    pub mapred_log_dir: Option<String>,
    pub source: String,
    #[serde(default)]
    pub daemon_opts: RoleVars,
    #[serde(default)]
    pub daemon_heap: RoleVars,
    #[serde(default)]
    pub daemon_users: RoleVars,
}

/// Variable names per daemon role (`namenode = "HDFS_NAMENODE_OPTS"`), with their source.
/// Templates see only the roles.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct RoleVars {
    #[serde(default, skip_serializing)]
    pub source: Option<String>,
    #[serde(flatten)]
    pub roles: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Port {
    pub name: String,
    pub property: String,
    pub default: String,
    pub port: u16,
    pub file: String,
    pub source: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Required {
    pub file: String,
    pub property: String,
    pub value: String,
    pub source: String,
}

/// The port names every catalogue file must define.
pub const PORT_NAMES: &[&str] = &[
    "namenode-rpc",
    "namenode-http",
    "namenode-https",
    "secondary-http",
    "datanode",
    "datanode-http",
    "datanode-ipc",
    "rm-scheduler",
    "rm-tracker",
    "rm-address",
    "rm-admin",
    "rm-webapp",
    "nm-localizer",
    "nm-webapp",
    "jobhistory",
    "jobhistory-webapp",
    "shuffle",
];

impl Facts {
    pub fn port(&self, name: &str) -> Option<u16> {
        self.port.iter().find(|p| p.name == name).map(|p| p.port)
    }

    /// Ports by name, for templates.
    pub fn ports(&self) -> BTreeMap<String, u16> {
        self.port.iter().map(|p| (p.name.clone(), p.port)).collect()
    }

    pub fn major(&self) -> u32 {
        self.version
            .split('.')
            .next()
            .and_then(|m| m.parse().ok())
            .unwrap_or(0)
    }

    fn check(&self, file: &Path) -> Result<()> {
        let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        if stem != self.version {
            crate::bad!(
                "{}: version {:?} does not match the file name",
                file.display(),
                self.version
            );
        }
        if line_of(&self.version) != self.line {
            crate::bad!(
                "{}: line {:?} does not match version {}",
                file.display(),
                self.line,
                self.version
            );
        }
        for name in PORT_NAMES {
            if self.port(name).is_none() {
                crate::bad!("{}: no [[port]] named {name:?}", file.display());
            }
        }
        if !["workers", "slaves"].contains(&self.layout.workers_file.as_str()) {
            crate::bad!(
                "{}: layout.workers-file must be \"workers\" or \"slaves\"",
                file.display()
            );
        }
        if let Some(s) = &self.dist.sha512
            && (s.len() != 128 || !s.chars().all(|c| c.is_ascii_hexdigit()))
        {
            crate::bad!("{}: dist.sha512 is not 128 hex digits", file.display());
        }
        Ok(())
    }
}

/// `3.3.6` → `3.3`.
pub fn line_of(version: &str) -> String {
    version.split('.').take(2).collect::<Vec<_>>().join(".")
}

/// Orders versions numerically.
pub fn version_key(v: &str) -> Vec<u64> {
    v.split('.').map(|p| p.parse().unwrap_or(0)).collect()
}

#[derive(Debug, Clone)]
pub struct Catalogue {
    pub dir: PathBuf,
    pub releases: BTreeMap<String, Facts>,
}

impl Catalogue {
    pub fn load_dir(dir: &Path) -> Result<Catalogue> {
        let rd = std::fs::read_dir(dir)
            .with_context(|| format!("reading the Hadoop catalogue {}", dir.display()))?;
        let mut releases = BTreeMap::new();
        for e in rd {
            let p = e?.path();
            if p.extension().and_then(|x| x.to_str()) != Some("toml") {
                continue;
            }
            let src =
                std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
            let facts = parse(&p, &src)?;
            releases.insert(facts.version.clone(), facts);
        }
        if releases.is_empty() {
            crate::bad!(
                "the Hadoop catalogue {} holds no *.toml file",
                dir.display()
            );
        }
        Ok(Catalogue {
            dir: dir.to_path_buf(),
            releases,
        })
    }

    /// All versions, oldest first.
    pub fn versions(&self) -> Vec<String> {
        let mut v: Vec<String> = self.releases.keys().cloned().collect();
        v.sort_by_key(|v| version_key(v));
        v
    }

    pub fn get(&self, version: &str) -> Option<&Facts> {
        self.releases.get(version)
    }

    /// The releases of one line (`3.3`), oldest first.
    pub fn line(&self, line: &str) -> Vec<&Facts> {
        let mut v: Vec<&Facts> = self.releases.values().filter(|f| f.line == line).collect();
        v.sort_by_key(|f| version_key(&f.version));
        v
    }
}

/// Parses one catalogue file (no I/O).
pub fn parse(file: &Path, src: &str) -> Result<Facts> {
    let facts: Facts =
        toml::from_str(src).map_err(|e| crate::support::error::toml_error(file, src, &e))?;
    facts.check(file)?;
    Ok(facts)
}

/// JVM flags Hadoop lines built for Java 8 need when run on a newer JDK (module access that
/// Java 9+ closes; the same opens Hadoop itself added for Java 17 in HADOOP-17177).
pub fn compat_jvm_flags(supported: &[u32], java: u32) -> Vec<String> {
    if java < 9 || supported.iter().any(|&s| s >= java) {
        return vec![];
    }
    [
        "--add-opens=java.base/java.lang=ALL-UNNAMED",
        "--add-opens=java.base/java.lang.reflect=ALL-UNNAMED",
        "--add-opens=java.base/java.io=ALL-UNNAMED",
        "--add-opens=java.base/java.net=ALL-UNNAMED",
        "--add-opens=java.base/java.nio=ALL-UNNAMED",
        "--add-opens=java.base/java.util=ALL-UNNAMED",
        "--add-opens=java.base/java.util.concurrent=ALL-UNNAMED",
        "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED",
        "--add-opens=java.base/sun.security.x509=ALL-UNNAMED",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_ordering() {
        assert_eq!(line_of("3.3.6"), "3.3");
        let mut v = vec!["3.10.0", "2.7.7", "3.4.1"];
        v.sort_by_key(|v| version_key(v));
        assert_eq!(v, ["2.7.7", "3.4.1", "3.10.0"]);
    }

    #[test]
    fn compat_flags_only_when_unsupported() {
        assert!(compat_jvm_flags(&[8, 11], 11).is_empty());
        assert!(!compat_jvm_flags(&[8], 11).is_empty());
        assert!(compat_jvm_flags(&[8], 8).is_empty());
    }
}
