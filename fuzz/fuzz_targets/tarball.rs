//! Release and base tarballs: the tar reader under both policies (`strata::fuzzing::tarball`).
#![no_main]
use std::sync::OnceLock;

static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let dir = DIR.get_or_init(|| tempfile::tempdir().expect("temp dir"));
    strata::fuzzing::tarball(&dir.path().join("input"), data);
});
