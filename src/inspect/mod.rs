//! # Reading a store: ls, inspect, diff, verify, gc, export
//!
//! Readers take no lock: they read `index.json` once (it is replaced atomically) and follow it.
//! `gc` takes the store's lock, like `build`.

mod export;
mod show;
mod verify;

pub use export::{ExportReport, export_oci_archive};
pub use show::{DiffReport, Inspection, LsRow, diff, inspect, ls};
pub use verify::{GcReport, VerifyReport, damaged, gc, repair, verify};
