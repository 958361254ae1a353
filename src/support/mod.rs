//! # Support: what every band uses, and nothing of strata's own
//!
//! Errors and exit codes ([`error`]), sizes for people ([`units`]), did-you-mean ([`suggest`]),
//! atomic file writes ([`fsx`]), hashing ([`hash`]), the one helper that runs external tools
//! ([`cmd`]), progress on stderr ([`progress`]), the TLS provider ([`tls`]) and test-only fault
//! injection ([`failpoint`]).
//! Nothing here imports another strata module.

pub mod cmd;
pub mod error;
pub mod failpoint;
pub mod fsx;
pub mod hash;
pub mod progress;
pub mod secret;
pub mod suggest;
pub mod tls;
pub mod units;
