//! Recipes: the TOML parser and the validator (`strata::fuzzing::recipe`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(src) = std::str::from_utf8(data) {
        strata::fuzzing::recipe(src);
    }
});
