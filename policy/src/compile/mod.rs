//! The compiler: a policy spec, its identity and the node's facts in, a [`ProfileBundle`] out.
//!
//! Each enforcer has its own module; this one validates, works out what the modes and switches
//! mean, and selects the built-in rules, so the three back ends agree on those decisions.

pub mod apparmor;
pub mod bpf;
pub mod seccomp;

use crate::api::{EnhanceProtect, ModelProfiles, PolicyMode, VarmorPolicySpec};
use crate::bundle::{Modeling, ProfileBundle, RuleAction};
use crate::catalog::{self, BuiltinRule, Category};
use crate::enforcer::EnforcerSet;
use crate::error::FieldErrors;
use crate::identity::{NodeFacts, PolicyIdentity};

/// JSON path of `enhanceProtect`.
pub const ENHANCE_PROTECT: &str = "spec.policy.enhanceProtect";
/// JSON path of `defenseInDepth`.
pub const DEFENSE_IN_DEPTH: &str = "spec.policy.defenseInDepth";

/// Everything the back ends need, worked out once.
#[derive(Debug)]
pub struct Context<'a> {
    /// The policy spec.
    pub spec: &'a VarmorPolicySpec,
    /// The policy identity.
    pub identity: &'a PolicyIdentity,
    /// The profile name.
    pub profile_name: String,
    /// The node facts.
    pub facts: &'a NodeFacts,
    /// The behaviour model's profiles, for DefenseInDepth with `profileType: BehaviorModel`.
    pub model: Option<&'a ModelProfiles>,
    /// The enforcers.
    pub enforcers: EnforcerSet,
    /// The mode.
    pub mode: PolicyMode,
    /// `enhanceProtect`, or the empty default when absent.
    pub enhance: EnhanceProtect,
}

impl Context<'_> {
    /// `enhanceProtect.privileged`.
    pub fn privileged(&self) -> bool {
        self.enhance.privileged
    }

    /// `enhanceProtect.auditViolations`.
    pub fn audit_violations(&self) -> bool {
        self.enhance.audit_violations
    }

    /// `enhanceProtect.allowViolations`.
    pub fn allow_violations(&self) -> bool {
        self.enhance.allow_violations
    }

    /// What EnhanceProtect rules do on a match (BPF).
    pub fn rule_action(&self) -> RuleAction {
        RuleAction::from_flags(self.allow_violations(), self.audit_violations())
    }

    /// The built-in rules the policy selects, in profile order.
    pub fn builtins(&self) -> Vec<SelectedRule<'_>> {
        selected_builtins(&self.enhance)
    }
}

/// One built-in rule named by the policy.
#[derive(Debug, Clone)]
pub struct SelectedRule<'a> {
    /// The rule.
    pub rule: &'static BuiltinRule,
    /// JSON path of the name in the policy, e.g.
    /// `spec.policy.enhanceProtect.attackProtectionRules[1].rules[0]`.
    pub field: String,
    /// The `targets` of an attack protection entry (empty for the other lists).
    pub targets: &'a [String],
}

/// The built-in rules of `enhanceProtect`: hardening, then attack protection, then
/// vulnerability mitigation, each in the order written. Unknown names are skipped (validation
/// reports them).
pub fn selected_builtins(ep: &EnhanceProtect) -> Vec<SelectedRule<'_>> {
    let mut out = Vec::new();
    for (i, name) in ep.hardening_rules.iter().enumerate() {
        if let Some(rule) = catalog::lookup(name).filter(|r| r.category == Category::Hardening) {
            out.push(SelectedRule {
                rule,
                field: format!("{ENHANCE_PROTECT}.hardeningRules[{i}]"),
                targets: &[],
            });
        }
    }
    for (i, entry) in ep.attack_protection_rules.iter().enumerate() {
        for (j, name) in entry.rules.iter().enumerate() {
            if let Some(rule) =
                catalog::lookup(name).filter(|r| r.category == Category::AttackProtection)
            {
                out.push(SelectedRule {
                    rule,
                    field: format!("{ENHANCE_PROTECT}.attackProtectionRules[{i}].rules[{j}]"),
                    targets: &entry.targets,
                });
            }
        }
    }
    for (i, name) in ep.vul_mitigation_rules.iter().enumerate() {
        if let Some(rule) = catalog::lookup(name).filter(|r| r.category == Category::VulMitigation)
        {
            out.push(SelectedRule {
                rule,
                field: format!("{ENHANCE_PROTECT}.vulMitigationRules[{i}]"),
                targets: &[],
            });
        }
    }
    out
}

/// Compiles a policy for a node. The spec is validated first; every problem is returned
/// together.
pub fn compile(
    spec: &VarmorPolicySpec,
    identity: &PolicyIdentity,
    facts: &NodeFacts,
) -> Result<ProfileBundle, FieldErrors> {
    compile_with_model(spec, identity, facts, None)
}

/// [`compile`] with the profiles of the policy's behaviour model, which DefenseInDepth with
/// `profileType: BehaviorModel` needs.
pub fn compile_with_model(
    spec: &VarmorPolicySpec,
    identity: &PolicyIdentity,
    facts: &NodeFacts,
    model: Option<&ModelProfiles>,
) -> Result<ProfileBundle, FieldErrors> {
    crate::validate::validate_spec(spec).into_result(())?;
    let enforcers = EnforcerSet::parse(&spec.policy.enforcer).map_err(|reason| {
        let mut e = FieldErrors::new();
        e.push("spec.policy.enforcer", reason);
        e
    })?;
    let ctx = Context {
        spec,
        identity,
        profile_name: identity.profile_name(),
        facts,
        model,
        enforcers,
        mode: spec.policy.mode,
        enhance: spec.policy.enhance_protect.clone().unwrap_or_default(),
    };
    let mut errors = FieldErrors::new();
    let mut warnings = Vec::new();
    let apparmor = if enforcers.apparmor {
        apparmor::compile(&ctx).map_err(|e| errors.extend(e)).ok()
    } else {
        None
    };
    let bpf = if enforcers.bpf {
        bpf::compile(&ctx, &mut warnings)
            .map_err(|e| errors.extend(e))
            .ok()
    } else {
        None
    };
    let seccomp = if enforcers.seccomp {
        seccomp::compile(&ctx).map_err(|e| errors.extend(e)).ok()
    } else {
        None
    };
    warnings.extend(ignored_rule_warnings(&ctx));
    errors.into_result(())?;
    let modeling = match (ctx.mode, &spec.policy.modeling_options) {
        (PolicyMode::BehaviorModeling, Some(m)) => Some(Modeling {
            duration_minutes: u64::try_from(m.duration).unwrap_or(0),
        }),
        _ => None,
    };
    Ok(ProfileBundle {
        identity: identity.clone(),
        profile_name: ctx.profile_name.clone(),
        target: spec.target.clone(),
        enforcers,
        mode: ctx.mode,
        apparmor,
        bpf,
        seccomp,
        modeling,
        warnings,
    })
}

/// Warnings for built-in rules that none of the policy's enforcers implements, and for
/// `targets` that only AppArmor honours.
fn ignored_rule_warnings(ctx: &Context<'_>) -> Vec<String> {
    if ctx.mode != PolicyMode::EnhanceProtect {
        return Vec::new();
    }
    let e = ctx.enforcers;
    let mut out = Vec::new();
    for s in ctx.builtins() {
        let r = s.rule;
        let covered = (e.apparmor && r.supports_apparmor())
            || (e.bpf && r.supports_bpf() && s.targets.is_empty())
            || (e.seccomp && r.supports_seccomp() && s.targets.is_empty());
        if !covered {
            let mut supported = Vec::new();
            if r.supports_apparmor() {
                supported.push("AppArmor");
            }
            if r.supports_bpf() {
                supported.push("BPF");
            }
            if r.supports_seccomp() {
                supported.push("Seccomp");
            }
            let why = if !s.targets.is_empty() && !r.supports_apparmor() {
                "rules with targets apply only with the AppArmor enforcer".to_string()
            } else {
                format!("it is implemented by {} only", supported.join(", "))
            };
            out.push(format!(
                "{}: {:?} has no effect with enforcer {e}: {why}",
                s.field, r.name
            ));
        }
    }
    out
}
