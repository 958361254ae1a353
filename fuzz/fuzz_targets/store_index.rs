//! A store's `index.json`, opened as every command opens it (`strata::fuzzing::store_index`).
#![no_main]
use std::sync::OnceLock;

static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let dir = DIR.get_or_init(|| tempfile::tempdir().expect("temp dir"));
    strata::fuzzing::store_index(dir.path(), data);
});
