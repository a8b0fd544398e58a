//! Seccomp back end (being written).

use super::Context;
use crate::bundle::SeccompProfile;
use crate::error::FieldErrors;

/// Builds the seccomp setting of a policy.
pub fn compile(ctx: &Context<'_>) -> Result<SeccompProfile, FieldErrors> {
    let mut e = FieldErrors::new();
    e.push("spec.policy.enforcer", format!("the Seccomp back end is not built yet ({})", ctx.profile_name));
    Err(e)
}
