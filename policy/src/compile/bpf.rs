//! BPF back end (being written).

use super::Context;
use crate::bundle::BpfProfile;
use crate::error::FieldErrors;

/// Builds the BPF rule set of a policy.
pub fn compile(ctx: &Context<'_>, _warnings: &mut Vec<String>) -> Result<BpfProfile, FieldErrors> {
    let mut e = FieldErrors::new();
    e.push("spec.policy.enforcer", format!("the BPF back end is not built yet ({})", ctx.profile_name));
    Err(e)
}
