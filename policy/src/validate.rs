//! Semantic validation of policies (being written).

use crate::api::{VarmorPolicySpec, VarmorPolicyStatus};
use crate::document::PolicyDocument;
use crate::error::FieldErrors;

/// Every semantic problem of a spec, with JSON paths starting at `spec`.
pub fn validate_spec(_spec: &VarmorPolicySpec) -> FieldErrors {
    FieldErrors::new()
}

/// Every semantic problem of a parsed document.
pub fn validate_document(doc: &PolicyDocument) -> FieldErrors {
    validate_spec(&doc.spec())
}

/// Problems with changing `old` into `new` (immutable target, enforcer changes, leaving
/// BehaviorModeling while modeling), given the policy's current status.
pub fn validate_update(
    _old: &VarmorPolicySpec,
    _new: &VarmorPolicySpec,
    _status: Option<&VarmorPolicyStatus>,
) -> FieldErrors {
    FieldErrors::new()
}
