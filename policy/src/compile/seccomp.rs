//! Seccomp back end: the OCI seccomp profile (`LinuxSeccomp` JSON, the file the kubelet hands
//! to the runtime as a `Localhost` profile) of a policy, or the runtime's own default.
//!
//! # What each mode produces
//!
//! | Mode | Profile |
//! |---|---|
//! | AlwaysAllow | `{"defaultAction":"SCMP_ACT_ALLOW"}` |
//! | RuntimeDefault | no file: [`SeccompProfile::RuntimeDefault`], the runtime's built-in profile |
//! | BehaviorModeling | `SCMP_ACT_LOG` by default, so the kernel reports every syscall, plus one entry allowing `open`, `openat`, `openat2`, `close`, `read`, `write` silently (they are too frequent to be worth logging) |
//! | EnhanceProtect | `SCMP_ACT_ALLOW` by default, one entry per seccomp entry of each selected built-in rule, then `syscallRawRules` |
//! | DefenseInDepth | the custom or behaviour-model profile with `defaultAction` set to `SCMP_ACT_ERRNO` (`SCMP_ACT_LOG` with `allowViolations`), then `syscallRawRules`; AlwaysAllow when `defenseInDepth.seccomp` is absent |
//!
//! Built-in rules whose attack protection entry has `targets` are skipped, as vArmor does:
//! seccomp cannot tell executables apart. `privileged` does not change the profile (vArmor's
//! webhook leaves privileged containers without the seccomp profile instead). The output is
//! deterministic and has no `architectures` field, so the runtime uses the native ones.
//!
//! # Where we differ from vArmor, on purpose
//!
//! * **Built-in rule actions.** `allowViolations: false` gives `SCMP_ACT_ERRNO` with an
//!   explicit `errnoRet: 1` (EPERM, runc's default, written out so every runtime returns the
//!   same errno). `allowViolations: true` gives `SCMP_ACT_LOG`. vArmor gives `SCMP_ACT_LOG`
//!   only when both `allowViolations` and `auditViolations` are set and blocks with
//!   `SCMP_ACT_ERRNO` when only `allowViolations` is set, which contradicts the switch's
//!   meaning.
//! * **`auditViolations` is honoured.** vArmor documents that seccomp cannot report denials.
//!   With `auditViolations: true` we set the profile flag `SECCOMP_FILTER_FLAG_LOG`, so the
//!   kernel logs every syscall the filter does not simply allow (denials included, as `type=1326`
//!   audit records) while the actions stay as they are. It needs a runtime that passes
//!   seccomp flags (runc 1.1 or later, crun). A profile that sets `flags` also replaces runc's
//!   implicit `SECCOMP_FILTER_FLAG_SPEC_ALLOW`, so the kernel's speculative store bypass
//!   mitigation stays on for those containers.
//! * **`syscallRawRules` are never merged into built-in entries.** Each name of a raw rule
//!   becomes its own entry with the user's action, `errnoRet` and args. vArmor appends the
//!   args of a raw rule to a built-in entry that has the same action and `errnoRet`; runc
//!   AND-s the conditions of one entry (or, when an index repeats, OR-s all of them), so the
//!   merged entry means something neither rule said: a raw rule can silently narrow, or a
//!   built-in rule silently widen. Separate entries are separate libseccomp rules, which are
//!   OR-ed, which is what was written. Entries that are exact duplicates of an earlier entry
//!   are dropped.
//! * **Contradictory rules are errors.** libseccomp cannot hold two rules for the same syscall
//!   whose conditions are equal, or one a subset of the other, with different actions: it
//!   either rejects the profile (so the container fails to start) or keeps only the more
//!   general or the first rule (so a rule silently does nothing). A raw rule that would do
//!   that to an earlier entry is reported at its field. Overlapping conditions on different
//!   arguments are not detected; the filter then decides by libseccomp's rule tree.
//!
//! The conditions are compared as runc hands them to libseccomp: one rule per name, holding
//! all of the entry's args, except that when an argument index appears more than once each
//! arg becomes a rule of its own (runc's `hasMultipleArgs`).

use std::str::FromStr;

use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder, LinuxSeccompBuilder,
    LinuxSeccompFilterFlag, LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};

use super::{Context, DEFENSE_IN_DEPTH, ENHANCE_PROTECT};
use crate::api::{self, PolicyMode, ProfileType};
use crate::bundle::SeccompProfile;
use crate::error::FieldErrors;

/// The errno of blocking entries: EPERM, what runc returns when `errnoRet` is absent.
pub const EPERM: u32 = 1;

/// Syscalls the BehaviorModeling profile allows without logging them.
pub const MODELING_UNLOGGED: [&str; 6] = ["open", "openat", "openat2", "close", "read", "write"];

/// The largest argument index of a syscall.
const MAX_ARG_INDEX: u32 = 5;

/// Every action name accepted in a profile, for error messages.
const ACTIONS: &str = "SCMP_ACT_KILL, SCMP_ACT_KILL_THREAD, SCMP_ACT_KILL_PROCESS, SCMP_ACT_TRAP, \
                       SCMP_ACT_ERRNO, SCMP_ACT_NOTIFY, SCMP_ACT_TRACE, SCMP_ACT_LOG, \
                       SCMP_ACT_ALLOW";

/// Every comparison name accepted in a profile, for error messages.
const OPERATORS: &str = "SCMP_CMP_NE, SCMP_CMP_LT, SCMP_CMP_LE, SCMP_CMP_EQ, SCMP_CMP_GE, \
                         SCMP_CMP_GT, SCMP_CMP_MASKED_EQ";

/// Builds the seccomp setting of a policy.
pub fn compile(ctx: &Context<'_>) -> Result<SeccompProfile, FieldErrors> {
    let profile = match ctx.mode {
        PolicyMode::RuntimeDefault => return Ok(SeccompProfile::RuntimeDefault),
        PolicyMode::AlwaysAllow => always_allow(),
        PolicyMode::BehaviorModeling => behavior_modeling(),
        PolicyMode::EnhanceProtect => enhance_protect(ctx)?,
        PolicyMode::DefenseInDepth => defense_in_depth(ctx)?,
    };
    let json = serde_json::to_string(&profile)
        .expect("a LinuxSeccomp always serializes: it has no maps and no custom serializers");
    Ok(SeccompProfile::Localhost { json })
}

/// `{"defaultAction":"SCMP_ACT_ALLOW"}`.
fn always_allow() -> LinuxSeccomp {
    profile(LinuxSeccompAction::ScmpActAllow, Vec::new(), false)
}

/// Log everything but the most frequent file syscalls.
fn behavior_modeling() -> LinuxSeccomp {
    let names = MODELING_UNLOGGED.iter().map(|s| s.to_string()).collect();
    let allow = syscall(names, LinuxSeccompAction::ScmpActAllow, None, Vec::new());
    profile(LinuxSeccompAction::ScmpActLog, vec![allow], false)
}

/// Allow by default; built-in entries and raw rules on top.
fn enhance_protect(ctx: &Context<'_>) -> Result<LinuxSeccomp, FieldErrors> {
    let (action, errno) = if ctx.allow_violations() {
        (LinuxSeccompAction::ScmpActLog, None)
    } else {
        (LinuxSeccompAction::ScmpActErrno, Some(EPERM))
    };
    let mut entries = Entries::default();
    for selected in ctx.builtins() {
        if !selected.targets.is_empty() {
            continue;
        }
        let origin = format!("{} ({})", selected.field, selected.rule.name);
        for e in selected.rule.seccomp {
            let names = e.names.iter().map(|s| s.to_string()).collect();
            let args = e
                .args
                .iter()
                .map(|&(index, value, two, op)| builtin_arg(index, value, two, op))
                .collect();
            let (action, errno) = match e.errno {
                Some(n) => (LinuxSeccompAction::ScmpActErrno, Some(n)),
                None => (action, errno),
            };
            entries.push(syscall(names, action, errno, args), &origin);
        }
    }
    let mut errors = FieldErrors::new();
    let rules_path = format!("{ENHANCE_PROTECT}.syscallRawRules");
    entries.push_raw_rules(&ctx.enhance.syscall_raw_rules, &rules_path, &mut errors);
    errors.into_result(())?;
    Ok(profile(
        LinuxSeccompAction::ScmpActAllow,
        entries.list,
        ctx.audit_violations(),
    ))
}

/// The custom or model profile made deny-by-default, raw rules appended.
fn defense_in_depth(ctx: &Context<'_>) -> Result<LinuxSeccomp, FieldErrors> {
    let did = ctx.spec.policy.defense_in_depth.as_ref();
    let Some(seccomp) = did.and_then(|d| d.seccomp.as_ref()) else {
        return Ok(always_allow());
    };
    let allow_violations = did.is_some_and(|d| d.allow_violations);
    let base_path = format!("{DEFENSE_IN_DEPTH}.seccomp");
    let mut errors = FieldErrors::new();
    let (text, field, source) = match seccomp.profile_type {
        ProfileType::Custom => match seccomp.custom_profile.as_deref() {
            Some(text) => (text, "customProfile", "the custom profile"),
            None => {
                errors.push(
                    format!("{base_path}.customProfile"),
                    "is required when profileType is Custom",
                );
                return Err(errors);
            }
        },
        ProfileType::BehaviorModel => match ctx.model.and_then(|m| m.seccomp.as_deref()) {
            Some(text) => (text, "profileType", "the behaviour model's profile"),
            None => {
                errors.push(
                    format!("{base_path}.profileType"),
                    "no behaviour model seccomp profile exists yet for this policy: run it in \
                     BehaviorModeling mode until modeling completes, or use profileType Custom",
                );
                return Err(errors);
            }
        },
    };
    let mut base = match parse_profile(text) {
        Ok(p) => p,
        Err(reason) => {
            let reason = match seccomp.profile_type {
                ProfileType::Custom => reason,
                ProfileType::BehaviorModel => {
                    format!("the behaviour model's seccomp profile is not valid: {reason}")
                }
            };
            errors.push(format!("{base_path}.{field}"), reason);
            return Err(errors);
        }
    };
    if allow_violations {
        base.set_default_action(LinuxSeccompAction::ScmpActLog);
        // An errno is meaningless with SCMP_ACT_LOG; runc would ignore it.
        base.set_default_errno_ret(None);
    } else {
        base.set_default_action(LinuxSeccompAction::ScmpActErrno);
    }
    let mut entries = Entries::default();
    for e in base.syscalls().clone().unwrap_or_default() {
        entries.push(e, source);
    }
    entries.push_raw_rules(
        &seccomp.syscall_raw_rules,
        &format!("{base_path}.syscallRawRules"),
        &mut errors,
    );
    errors.into_result(())?;
    base.set_syscalls((!entries.list.is_empty()).then_some(entries.list));
    Ok(base)
}

/// Parses an OCI seccomp profile; an error names the place in the profile.
fn parse_profile(text: &str) -> Result<LinuxSeccomp, String> {
    let mut de = serde_json::Deserializer::from_str(text);
    let profile: LinuxSeccomp = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            format!("not a valid OCI seccomp profile (JSON): {}", e.inner())
        } else {
            format!(
                "not a valid OCI seccomp profile (JSON): at {path}: {}",
                e.inner()
            )
        }
    })?;
    de.end()
        .map_err(|e| format!("not a valid OCI seccomp profile (JSON): {e}"))?;
    Ok(profile)
}

/// A profile with these entries (`syscalls` left out when empty).
fn profile(default: LinuxSeccompAction, entries: Vec<LinuxSyscall>, log: bool) -> LinuxSeccomp {
    let mut b = LinuxSeccompBuilder::default().default_action(default);
    if !entries.is_empty() {
        b = b.syscalls(entries);
    }
    if log {
        b = b.flags(vec![LinuxSeccompFilterFlag::SeccompFilterFlagLog]);
    }
    b.build().expect("every LinuxSeccomp field has a default")
}

/// One syscall entry (`args` left out when empty).
fn syscall(
    names: Vec<String>,
    action: LinuxSeccompAction,
    errno: Option<u32>,
    args: Vec<LinuxSeccompArg>,
) -> LinuxSyscall {
    let mut b = LinuxSyscallBuilder::default().names(names).action(action);
    if let Some(errno) = errno {
        b = b.errno_ret(errno);
    }
    if !args.is_empty() {
        b = b.args(args);
    }
    b.build().expect("every LinuxSyscall field has a default")
}

/// One argument condition; `valueTwo` left out when zero, as runtimes read it as zero then.
fn arg(index: u32, value: u64, value_two: u64, op: LinuxSeccompOperator) -> LinuxSeccompArg {
    let mut b = LinuxSeccompArgBuilder::default()
        .index(index as usize)
        .value(value)
        .op(op);
    if value_two != 0 {
        b = b.value_two(value_two);
    }
    b.build()
        .expect("every LinuxSeccompArg field has a default")
}

/// A condition of the catalog; its operator names are fixed, so a bad one is a catalog bug
/// that the catalog tests catch.
fn builtin_arg(index: u32, value: u64, value_two: u64, op: &str) -> LinuxSeccompArg {
    let op = LinuxSeccompOperator::from_str(op).expect("the catalog uses valid seccomp operators");
    arg(index, value, value_two, op)
}

/// What libseccomp does on a match, as runc computes it from an entry: the errno of ERRNO and
/// TRACE defaults to EPERM and is ignored for the other actions, and KILL means KILL_THREAD.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Effect {
    KillThread,
    KillProcess,
    Trap,
    Errno(u32),
    Notify,
    Trace(u32),
    Log,
    Allow,
}

impl Effect {
    fn of(action: LinuxSeccompAction, errno: Option<u32>) -> Effect {
        match action {
            LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
                Effect::KillThread
            }
            LinuxSeccompAction::ScmpActKillProcess => Effect::KillProcess,
            LinuxSeccompAction::ScmpActTrap => Effect::Trap,
            LinuxSeccompAction::ScmpActErrno => Effect::Errno(errno.unwrap_or(EPERM)),
            LinuxSeccompAction::ScmpActNotify => Effect::Notify,
            LinuxSeccompAction::ScmpActTrace => Effect::Trace(errno.unwrap_or(EPERM)),
            LinuxSeccompAction::ScmpActLog => Effect::Log,
            LinuxSeccompAction::ScmpActAllow => Effect::Allow,
        }
    }
}

impl std::fmt::Display for Effect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Effect::KillThread => f.write_str("SCMP_ACT_KILL_THREAD"),
            Effect::KillProcess => f.write_str("SCMP_ACT_KILL_PROCESS"),
            Effect::Trap => f.write_str("SCMP_ACT_TRAP"),
            Effect::Errno(e) => write!(f, "SCMP_ACT_ERRNO (errno {e})"),
            Effect::Notify => f.write_str("SCMP_ACT_NOTIFY"),
            Effect::Trace(e) => write!(f, "SCMP_ACT_TRACE ({e})"),
            Effect::Log => f.write_str("SCMP_ACT_LOG"),
            Effect::Allow => f.write_str("SCMP_ACT_ALLOW"),
        }
    }
}

/// A condition as libseccomp compares it: `(index, op, value, valueTwo)`.
type Condition = (usize, LinuxSeccompOperator, u64, u64);

/// One libseccomp rule: a syscall, the conditions (sorted) that must all hold, what it does,
/// and where it comes from.
#[derive(Debug)]
struct Rule {
    name: String,
    conditions: Vec<Condition>,
    effect: Effect,
    origin: String,
}

/// The libseccomp rules runc makes of an entry: one per name holding every condition, or,
/// when an index appears twice, one per name and condition.
fn runc_rules(entry: &LinuxSyscall, origin: &str) -> Vec<Rule> {
    let args = entry.args().clone().unwrap_or_default();
    let conditions: Vec<Condition> = args
        .iter()
        .map(|a| (a.index(), a.op(), a.value(), a.value_two().unwrap_or(0)))
        .collect();
    let repeated =
        (0..conditions.len()).any(|i| conditions[..i].iter().any(|c| c.0 == conditions[i].0));
    let groups: Vec<Vec<Condition>> = if repeated {
        conditions.iter().map(|c| vec![*c]).collect()
    } else {
        vec![conditions]
    };
    let effect = Effect::of(entry.action(), entry.errno_ret());
    let mut out = Vec::new();
    for name in entry.names() {
        for group in &groups {
            let mut conditions = group.clone();
            conditions.sort_by_key(|c| (c.0, c.1 as u32, c.2, c.3));
            out.push(Rule {
                name: name.clone(),
                conditions,
                effect,
                origin: origin.to_string(),
            });
        }
    }
    out
}

/// Whether every condition of `a` is also in `b`.
fn is_subset(a: &[Condition], b: &[Condition]) -> bool {
    a.iter().all(|c| b.contains(c))
}

/// The entries of a profile being built, with the libseccomp rules they become.
#[derive(Debug, Default)]
struct Entries {
    list: Vec<LinuxSyscall>,
    rules: Vec<Rule>,
}

impl Entries {
    /// Adds an entry unless it is an exact duplicate.
    fn push(&mut self, entry: LinuxSyscall, origin: &str) {
        if self.list.contains(&entry) {
            return;
        }
        self.rules.extend(runc_rules(&entry, origin));
        self.list.push(entry);
    }

    /// The first earlier rule that contradicts `rule`: same syscall, conditions equal or one a
    /// subset of the other, different effect.
    fn conflict(&self, rule: &Rule) -> Option<&Rule> {
        self.rules.iter().find(|r| {
            r.name == rule.name
                && r.effect != rule.effect
                && (is_subset(&r.conditions, &rule.conditions)
                    || is_subset(&rule.conditions, &r.conditions))
        })
    }

    /// Adds `syscallRawRules`, one entry per name, reporting bad values and contradictions at
    /// `path[i]`.
    fn push_raw_rules(&mut self, raw: &[api::LinuxSyscall], path: &str, errors: &mut FieldErrors) {
        for (i, rule) in raw.iter().enumerate() {
            let here = format!("{path}[{i}]");
            let Some((action, args)) = convert_raw(rule, &here, errors) else {
                continue;
            };
            for name in &rule.names {
                let entry = syscall(vec![name.clone()], action, rule.errno_ret, args.clone());
                if self.list.contains(&entry) {
                    continue;
                }
                let new = runc_rules(&entry, &here);
                let clash = new
                    .iter()
                    .find_map(|r| self.conflict(r).map(|old| (r, old)));
                if let Some((r, old)) = clash {
                    errors.push(
                        here.clone(),
                        format!(
                            "the rule for {:?} ({}) contradicts the rule from {} ({}): their \
                             conditions are equal or one includes the other, and libseccomp \
                             then rejects the profile or silently keeps only one of them",
                            r.name, r.effect, old.origin, old.effect
                        ),
                    );
                    break;
                }
                self.push(entry, &here);
            }
        }
    }
}

/// The action and args of a raw rule, or `None` after recording what is wrong.
fn convert_raw(
    rule: &api::LinuxSyscall,
    here: &str,
    errors: &mut FieldErrors,
) -> Option<(LinuxSeccompAction, Vec<LinuxSeccompArg>)> {
    let before = errors.len();
    let action = LinuxSeccompAction::from_str(&rule.action)
        .map_err(|_| {
            errors.push(
                format!("{here}.action"),
                format!(
                    "unknown seccomp action {:?}; must be one of {ACTIONS}",
                    rule.action
                ),
            )
        })
        .ok();
    let mut args = Vec::new();
    for (j, a) in rule.args.iter().enumerate() {
        if a.index > MAX_ARG_INDEX {
            errors.push(
                format!("{here}.args[{j}].index"),
                format!(
                    "{} is not an argument index: syscalls have arguments 0 to 5",
                    a.index
                ),
            );
        }
        match LinuxSeccompOperator::from_str(&a.op) {
            Ok(op) => args.push(arg(a.index, a.value, a.value_two, op)),
            Err(_) => errors.push(
                format!("{here}.args[{j}].op"),
                format!(
                    "unknown seccomp operator {:?}; must be one of {OPERATORS}",
                    a.op
                ),
            ),
        }
    }
    match action {
        Some(action) if errors.len() == before => Some((action, args)),
        _ => None,
    }
}
