//! # OCI: the store, its documents and its record
//!
//! [`store`] is the on-disk OCI image layout (blobs, `index.json`, the lock) and how it is
//! written without ever being half-written; [`image`] makes image configs, manifests and index
//! entries; [`record`] is the typed, versioned store record (what later commands need without the
//! recipe); [`view`] is a read-only view of a store's images; [`archive`] streams images as one
//! tar (`export`, `load`); [`disks`] and [`smoke`] are what the store knows about its disks,
//! publications and container smoke tests.

pub mod archive;
pub mod disks;
pub mod image;
pub mod record;
pub mod smoke;
pub mod store;
pub mod view;
