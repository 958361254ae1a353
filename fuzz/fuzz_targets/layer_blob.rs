//! OCI layer blobs (plain, gzip, zstd) as inspect and advice list them (`strata::fuzzing::layer_blob`).
#![no_main]
use std::sync::OnceLock;

static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let dir = DIR.get_or_init(|| tempfile::tempdir().expect("temp dir"));
    strata::fuzzing::layer_blob(&dir.path().join("input"), data);
});
