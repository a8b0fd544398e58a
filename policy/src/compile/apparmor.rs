//! AppArmor back end (being written).

use super::Context;
use crate::bundle::AppArmorProfile;
use crate::error::FieldErrors;

/// Renders the AppArmor profile of a policy.
pub fn compile(ctx: &Context<'_>) -> Result<AppArmorProfile, FieldErrors> {
    let mut e = FieldErrors::new();
    e.push("spec.policy.enforcer", format!("the AppArmor back end is not built yet ({})", ctx.profile_name));
    Err(e)
}
