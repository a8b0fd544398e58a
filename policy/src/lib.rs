//! `varmor-policy`: the vArmor policy API, its validation, the built-in rule catalog and the
//! compiler from a policy to the profiles each kernel enforcer loads.
//!
//! The crate is pure: no async runtime, no network, no file-system writes.

pub mod api;
pub mod crd;
pub mod automaton;
pub mod glob;
pub mod names;
mod serde_tables;
pub mod catalog;
