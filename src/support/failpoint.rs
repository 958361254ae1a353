//! # Fault injection, in test builds only
//!
//! With the `failpoints` cargo feature (enabled by `scripts/test`, never in a release build),
//! `STRATA_FAILPOINT=<name>` stops the process at that point (it says so on stderr and sleeps) so
//! a test can kill it there. Names: `layer-write` (a layer blob half written into the cache),
//! `store-blob` (a blob temp file in the store), `store-copy` (a layer copied into a store temp
//! file, hashed, not yet renamed), `index-write` (the new index written to its temp file, not yet
//! renamed). Without the feature, [`hit`] compiles to nothing.

/// Stops here forever when `STRATA_FAILPOINT` names this point (feature `failpoints` only).
#[cfg(feature = "failpoints")]
pub fn hit(name: &str) {
    if std::env::var("STRATA_FAILPOINT").is_ok_and(|v| v == name) {
        eprintln!("strata: failpoint {name} reached");
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}

/// Without the `failpoints` feature: nothing.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_name: &str) {}
