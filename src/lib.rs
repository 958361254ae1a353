//! # strata
//!
//! Declarative recipes into reproducible, content-addressed OCI images, one per Hadoop version,
//! sharing every common layer; the same layers as bootable disks. See `README.md` for the
//! picture; each module's doc says what it owns.
//!
//! ## Layout: folders by band, dependencies pointing down
//!
//! ```text
//! cli/        clap structs, one dispatch, text rendering, exit codes        (the only printer)
//!  │
//!  ├─▶ build/    plan (pure) → produce layers → commit to the store          ┐ commands: they
//!  ├─▶ inspect/  ls, inspect, diff, verify, gc, export                       │ never import
//!  ├─▶ report/   sizes, sharing, budgets; text, JSON, HTML page            │ each other
//!  ├─▶ disk/     flatten → ext4/GPT/UKI/GRUB → qcow2; boot test            │
//!  ├─▶ publish/  clouds.yaml + Keystone, Glance upload/verify/rotate,     │
//!  │             preflight, docker (load, run, smoke: bollard)               │
//!  └─▶ share/    push to and pull from an OCI registry                      ┘
//!        ▼
//! source/     where a layer's entries come from: base and JDK root filesystems (mmdebstrap,
//!             tarballs), downloads, directory templates, accounts, the cluster key
//!        ▼
//! cache/      layer records and blobs by input key; base root filesystems; downloads
//!        ▼
//! oci/        the store (an OCI image layout), image documents, the typed store record, a
//!             read-only view of the images, image archives (OCI + Docker's manifest.json),
//!             smoke records; beside it, same band: registry/, the OCI distribution client
//!             (references, auth, blobs, manifests; imports only support)
//!        ▼
//! recipe/     raw TOML → validated model; the Hadoop catalogue
//!        ▼
//! policy/     budgets, sharing, verdicts, advice
//!        ▼
//! layer/      entries, deterministic tar writer and reader, compression
//!        ▼
//! support/    errors and exit codes, units, did-you-mean, atomic files, hashing, the
//!             external-command helper, progress, test-only failpoints (imports nothing of strata)
//! ```
//!
//! A module may import any module drawn below it, never one above or beside it in the command
//! band. Only `cli` writes to stdout; only [`support::cmd`] spawns processes.

#![forbid(unsafe_code)]

pub mod build;
pub(crate) mod cache;
pub mod cli;
pub mod disk;
#[doc(hidden)]
pub mod fuzzing;
pub(crate) mod inspect;
pub mod layer;
pub(crate) mod oci;
pub(crate) mod policy;
pub mod publish;
pub mod recipe;
pub mod registry;
pub(crate) mod report;
pub mod share;
pub mod source;
pub mod support;
