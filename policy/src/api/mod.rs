//! The `crd.varmor.org/v1beta1` API: `VarmorPolicy`, `VarmorClusterPolicy`, and the internal
//! `ArmorProfile` / `ArmorProfileModel` kinds.
//!
//! Field names, types, optionality and defaults follow the vArmor interface specification;
//! YAML written for vArmor deserializes into these types unchanged.

mod armorprofile;
mod model;
mod policy;

pub use armorprofile::*;
pub use model::*;
pub use policy::*;

/// API group of every kind in this module.
pub const GROUP: &str = "crd.varmor.org";
/// API version of every kind in this module.
pub const VERSION: &str = "v1beta1";
/// `apiVersion` string of every kind in this module.
pub const API_VERSION: &str = "crd.varmor.org/v1beta1";

pub(crate) fn is_false(b: &bool) -> bool {
    !*b
}
