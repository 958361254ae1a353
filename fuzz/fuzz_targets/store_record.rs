//! The store record blob (`strata::fuzzing::store_record`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    strata::fuzzing::store_record(data);
});
