//! # Errors that decide the exit code
//!
//! Most failures are `anyhow` chains with context. The few a caller branches on are types:
//! [`BadInput`] and [`Located`] (exit 2), [`ChecksumMismatch`] (exit 3), [`Damaged`] (exit 4);
//! the budget verdict (exit 5) lives with the policy. `cli::exit` maps a chain to its code.

use std::fmt;
use std::path::{Path, PathBuf};

/// Exit codes (documented in `strata --help` and the README).
pub mod exit {
    /// Something failed (a tool, the network, the disk).
    pub const FAILURE: u8 = 1;
    /// The input is wrong: recipe, catalogue, template, arguments, tarball contents.
    pub const BAD_INPUT: u8 = 2;
    /// A checksum did not match (download, base tarball).
    pub const CHECKSUM: u8 = 3;
    /// The store is damaged (`verify`, `report`).
    pub const DAMAGED: u8 = 4;
    /// A size budget or the reuse floor is broken (`enforce = "fail"`).
    pub const BUDGET: u8 = 5;
    /// The cloud refused the request: authentication, permission, quota, format.
    pub const CLOUD_REFUSED: u8 = 6;
    /// `preflight`: a launch check failed.
    pub const PREFLIGHT: u8 = 7;
}

/// An input strata cannot use that is not located in a file by line (an unknown image name, a
/// bad tarball entry, a bad argument).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

/// Returns a [`BadInput`] error (exit code 2) from the enclosing function.
#[macro_export]
macro_rules! bad {
    ($($arg:tt)*) => {
        return Err($crate::support::error::BadInput(format!($($arg)*)).into())
    };
}

/// A problem located in an input file: file, line, column, the key, and a hint (e.g. the nearest
/// valid key). Recipes, `layer.toml` files and catalogue entries report through it.
#[derive(Debug, Clone, thiserror::Error)]
pub struct Located {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub key: String,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for Located {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.column)?;
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        write!(f, "{}", self.message)?;
        if let Some(h) = &self.hint {
            write!(f, "\n  hint: {h}")?;
        }
        Ok(())
    }
}

impl Located {
    /// An error at byte `offset` of `src` (the text of `file`).
    pub fn at(
        file: &Path,
        src: &str,
        offset: usize,
        key: &str,
        message: impl Into<String>,
    ) -> Self {
        let (line, column) = line_col(src, offset);
        Located {
            file: file.to_path_buf(),
            line,
            column,
            key: key.into(),
            message: message.into(),
            hint: None,
        }
    }

    pub fn with_hint(mut self, hint: Option<String>) -> Self {
        self.hint = hint;
        self
    }
}

/// Line and column (1-based) of a byte offset.
pub fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(src.len());
    while !src.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &src[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, col)
}

/// A TOML parse error of `file`, located by line and column, with a "did you mean" hint for an
/// unknown key.
pub fn toml_error(file: &Path, src: &str, e: &toml::de::Error) -> Located {
    let offset = e.span().map(|s| s.start).unwrap_or(0);
    let msg = e.message().trim().to_string();
    let mut key = String::new();
    let mut hint = None;
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        let bad = rest.split('`').next().unwrap_or("");
        key = bad.to_string();
        let expected: Vec<&str> = rest.split('`').skip(2).step_by(2).collect();
        if let Some(best) = crate::support::suggest::nearest(bad, &expected) {
            hint = Some(format!("did you mean `{best}`?"));
        } else if !expected.is_empty() {
            hint = Some(format!("valid keys here: {}", expected.join(", ")));
        }
    } else if let Some(rest) = msg.strip_prefix("missing field `") {
        key = rest.split('`').next().unwrap_or("").to_string();
    }
    Located::at(file, src, offset, &key, msg).with_hint(hint)
}

/// Reads a text input (recipe, catalogue entry, `layer.toml`): a missing file or one that is not
/// UTF-8 is bad input naming the file.
pub fn read_text(path: &Path, what: &str) -> anyhow::Result<String> {
    let data =
        std::fs::read(path).map_err(|e| BadInput(format!("reading {what} {path:?}: {e}")))?;
    String::from_utf8(data).map_err(|e| {
        BadInput(format!(
            "{what} {path:?} is not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ))
        .into()
    })
}

/// A checksum did not match what was pinned (exit 3).
#[derive(Debug, thiserror::Error)]
#[error("checksum mismatch for {what}: expected {algorithm} {expected}, found {found}")]
pub struct ChecksumMismatch {
    pub what: String,
    pub algorithm: &'static str,
    pub expected: String,
    pub found: String,
}

/// The store is damaged (exit 4): each problem names the blob or file.
#[derive(Debug, thiserror::Error)]
#[error("the store is damaged: {} problem(s); first: {}", .0.len(), .0.first().map(String::as_str).unwrap_or(""))]
pub struct Damaged(pub Vec<String>);

/// An error's chain on one line, each message once (HTTP clients repeat the URL and the cause).
pub fn chain_line(e: &dyn std::error::Error) -> String {
    let mut s = String::new();
    let mut cur: Option<&dyn std::error::Error> = Some(e);
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            if !s.is_empty() {
                s.push_str(": ");
            }
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("a\nbc\n", 3), (2, 2));
        assert_eq!(line_col("é\n", 1), (1, 1));
    }

    #[test]
    fn a_recipe_that_is_not_utf8_is_bad_input_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.toml");
        std::fs::write(&p, b"name = \"\xff\"").unwrap();
        let e = read_text(&p, "recipe").unwrap_err();
        assert!(e.downcast_ref::<BadInput>().is_some());
        assert!(e.to_string().contains("r.toml"), "{e}");
    }
}
