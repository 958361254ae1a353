//! `layer.toml`: parsed and applied as a layer directory (`strata::fuzzing::layer_toml`).
#![no_main]
use std::sync::OnceLock;

static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let dir = DIR.get_or_init(|| tempfile::tempdir().expect("temp dir"));
    if let Ok(src) = std::str::from_utf8(data) {
        strata::fuzzing::layer_toml(dir.path(), src);
    }
});
