//! `varmor-policy`: the vArmor policy API, its validation, the built-in rule catalog and the
//! compiler from a policy to the profiles each kernel enforcer loads.
//!
//! The crate is pure: no async runtime, no network, no file-system writes.

pub mod api;
pub mod automaton;
pub mod bundle;
pub mod catalog;
pub mod compile;
pub mod crd;
pub mod document;
pub mod enforcer;
pub mod error;
pub mod glob;
pub mod identity;
pub mod names;
mod serde_tables;
pub mod validate;

pub use bundle::ProfileBundle;
pub use compile::{compile, compile_with_model};
pub use document::{parse_documents, PolicyDocument};
pub use error::{FieldError, FieldErrors};
pub use identity::{NodeFacts, PolicyIdentity};
pub mod decide;
#[cfg(feature = "proto")]
pub mod proto;
