//! # strata
//!
//! Declarative recipes into reproducible, content-addressed OCI images, one per Hadoop version,
//! sharing every common layer. See `README.md` for the picture and `DESIGN` notes in each module:
//! [`recipe`] (TOML → model), [`hadoop`] (version catalogue), [`render`] (layer directories and
//! templates), [`layer`] (deterministic tar), [`compress`], [`base`] (mmdebstrap, JDKs),
//! [`accounts`], [`keys`], [`fetch`], [`cache`], [`store`] (the OCI layout), [`oci`], [`build`],
//! [`inspect`] (ls, inspect, diff, verify, gc, export).

pub mod accounts;
pub mod base;
pub mod build;
pub mod cache;
pub mod cli;
pub mod cmd;
pub mod compress;
pub mod disk;
pub mod fetch;
pub mod hadoop;
pub mod inspect;
pub mod keys;
pub mod layer;
pub mod oci;
pub mod policy;
pub mod progress;
pub mod recipe;
pub mod render;
pub mod report;
pub mod store;

/// Exit codes (documented in `strata --help`).
pub mod exit {
    /// Something failed (a tool, the network, the disk).
    pub const FAILURE: u8 = 1;
    /// The input is wrong: recipe, catalogue, template, arguments, tarball contents.
    pub const BAD_INPUT: u8 = 2;
    /// A checksum did not match (download, base tarball).
    pub const CHECKSUM: u8 = 3;
    /// `verify` found a damaged store.
    pub const DAMAGED: u8 = 4;
    /// A size budget or the reuse floor is broken (`enforce = "fail"`).
    pub const BUDGET: u8 = 5;
}

/// Picks the exit code for an error chain.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if cause.downcast_ref::<recipe::RecipeError>().is_some() {
            return exit::BAD_INPUT;
        }
        if cause.downcast_ref::<fetch::ChecksumMismatch>().is_some() {
            return exit::CHECKSUM;
        }
        if cause.downcast_ref::<inspect::Damaged>().is_some() {
            return exit::DAMAGED;
        }
        if cause.downcast_ref::<policy::BudgetExceeded>().is_some() {
            return exit::BUDGET;
        }
        if cause.downcast_ref::<BadInput>().is_some() {
            return exit::BAD_INPUT;
        }
    }
    exit::FAILURE
}

/// Returns a [`BadInput`] error (exit code 2) from the enclosing function.
#[macro_export]
macro_rules! bad {
    ($($arg:tt)*) => {
        return Err($crate::BadInput(format!($($arg)*)).into())
    };
}

/// A TOML parse error of `file`, located by line, as [`BadInput`] (exit code 2).
pub fn toml_error(file: &std::path::Path, src: &str, e: &toml::de::Error) -> anyhow::Error {
    let line = e
        .span()
        .map(|s| src[..s.start].matches('\n').count() + 1)
        .unwrap_or(1);
    BadInput(format!("{}:{line}: {}", file.display(), e.message())).into()
}

/// An input error that is not located in a recipe (an unknown image name, a bad tarball entry).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

/// Fault injection for tests: with `STRATA_FAILPOINT=<name>`, the process stops at that point
/// (says so on stderr and sleeps) so a test can kill it there. Names: `layer-write` (a layer blob
/// half written into the cache), `store-blob` (a blob temp file in the store), `index-write`
/// (the new index written to its temp file, not yet renamed).
pub fn failpoint(name: &str) {
    if std::env::var("STRATA_FAILPOINT").is_ok_and(|v| v == name) {
        eprintln!("strata: failpoint {name} reached");
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}
