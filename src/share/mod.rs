//! # Share: push a store's images to a registry, pull them into a store
//!
//! `strata push` ([`push`]) and `strata pull` ([`pull`]) move images between a store and an
//! OCI registry through the [`crate::registry`] client, byte for byte: the registry serves the
//! store's manifest digests, and a pulled store is a full store (`ls`, `inspect`, `verify`,
//! `report`, `export`, `disk` work on it without the recipe).
//!
//! ## What a push leaves in the repository
//! ```text
//! REPO:3.3.6                      the image manifest, as the store holds it
//! REPO:3.3.6-<12 hex>             the same, under a tag that never moves (the manifest digest)
//! REPO:sha256-<hex>.strata        the image's strata extras: an OCI artifact manifest
//!                                 (artifactType application/vnd.strata.extras.v1), config = the
//!                                 store record blob, layers = the disk-only layers, subject =
//!                                 the image manifest
//! ```
//! distribution 2.8 (Debian's `docker-registry`) has no referrers API, so the extras are found
//! by the tag derived from the image's manifest digest — the fallback the OCI 1.1 distribution
//! spec describes for referrers, with a `.strata` suffix as cosign uses `.sig`. A registry that
//! speaks OCI 1.1 also lists the artifact among the image's referrers through `subject`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Result;

pub mod pull;
pub mod push;

/// The artifact type of an image's extras (record and disk layers).
pub const EXTRAS_ARTIFACT_TYPE: &str = "application/vnd.strata.extras.v1";
/// The tag suffix of the extras.
pub const EXTRAS_SUFFIX: &str = ".strata";

/// The tag of an image's extras: `sha256-<hex>.strata`.
pub fn extras_tag(manifest: &oci_spec::image::Digest) -> String {
    format!(
        "{}-{}{EXTRAS_SUFFIX}",
        manifest.algorithm().as_ref(),
        manifest.digest()
    )
}

/// Runs `f` while a progress task (a bar on a terminal) follows the bytes `counter` counts.
pub(crate) fn with_bytes<R>(
    progress: &crate::support::progress::Progress,
    msg: String,
    total: u64,
    counter: &std::sync::atomic::AtomicU64,
    f: impl FnOnce() -> Result<R>,
) -> Result<R> {
    let task = progress.task(msg, Some(total));
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let out = std::thread::scope(|s| {
        let task = &task;
        s.spawn(move || {
            let mut shown = 0;
            // Until `f` is done (the sender is dropped): no sleep to wait out at the end.
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                stopped.recv_timeout(std::time::Duration::from_millis(200))
            {
                let now = counter.load(Ordering::Relaxed);
                task.inc(now.saturating_sub(shown));
                shown = shown.max(now);
            }
        });
        let out = f();
        drop(stop);
        out
    });
    let bytes = counter.load(Ordering::Relaxed);
    task.finish(match &out {
        Ok(_) => crate::support::units::human(bytes),
        Err(_) => format!("failed after {}", crate::support::units::human(bytes)),
    });
    out
}

/// Runs `work` on every item with at most `jobs` at once; the first error stops the others
/// from starting new items and is returned. Results come back in the items' order.
pub(crate) fn bounded<T: Sync, R: Send>(
    items: &[T],
    jobs: usize,
    work: impl Fn(&T) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    let next = Mutex::new(0usize);
    let failed = AtomicBool::new(false);
    let results: Mutex<Vec<Option<R>>> = Mutex::new((0..items.len()).map(|_| None).collect());
    let first_error: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..jobs.clamp(1, items.len().max(1)) {
            s.spawn(|| {
                loop {
                    if failed.load(Ordering::SeqCst) {
                        return;
                    }
                    let i = {
                        let mut n = next.lock().unwrap();
                        let i = *n;
                        *n += 1;
                        i
                    };
                    let Some(item) = items.get(i) else { return };
                    match work(item) {
                        Ok(r) => results.lock().unwrap()[i] = Some(r),
                        Err(e) => {
                            failed.store(true, Ordering::SeqCst);
                            first_error.lock().unwrap().get_or_insert(e);
                            return;
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().unwrap() {
        return Err(e);
    }
    Ok(results
        .into_inner()
        .unwrap()
        .into_iter()
        .map(|r| r.expect("every item ran"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_keeps_order_and_stops_at_the_first_error() {
        let items: Vec<u32> = (0..20).collect();
        let out = bounded(&items, 4, |i| Ok(i * 2)).unwrap();
        assert_eq!(out, items.iter().map(|i| i * 2).collect::<Vec<_>>());
        let e = bounded(&items, 3, |i| {
            if *i == 5 {
                anyhow::bail!("item five")
            }
            Ok(*i)
        })
        .unwrap_err();
        assert_eq!(e.to_string(), "item five");
        assert!(
            bounded(&Vec::<u32>::new(), 4, |i| Ok(*i))
                .unwrap()
                .is_empty()
        );
    }
}
