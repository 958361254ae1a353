//! # Sources: where a layer's entries come from
//!
//! [`base`] makes base and JDK root filesystems (mmdebstrap, tarballs) reproducible and cached,
//! every stage starting from the one before and [`debs`] sharing one download of each package;
//! [`fetch`] brings pinned downloads into the cache; [`render`] turns a layer directory with
//! templates into entries; [`accounts`] merges the recipe's user into the base's account files;
//! [`keys`] finds or generates the cluster SSH key pair.

pub mod accounts;
pub mod base;
pub mod debs;
pub mod fetch;
pub mod keys;
pub mod render;
