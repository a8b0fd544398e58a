//! Semantic validation of policies: everything the CRD schema cannot express.
//!
//! [`crate::document`] already checks the structure of a document (unknown fields, types,
//! enum values, integer ranges, required fields, object names). This module checks what the
//! values mean, and reports **every** problem of a spec at once, each with the JSON path of
//! the field (`spec.policy.enhanceProtect.bpfRawRules.files[2].pattern`) and a lower-case
//! reason.
//!
//! The rules follow vArmor's admission checks (`ValidateAddPolicy`, `ValidateUpdatePolicy`)
//! and add the checks vArmor leaves to the enforcers, where a mistake shows up late (a profile
//! that fails to load on every node) or never (a misspelled built-in rule that vArmor silently
//! ignores, leaving the workload unprotected):
//!
//! * the content of every block present is checked, even when the mode ignores the block (a
//!   policy switched to `AlwaysAllow` keeps working when it is switched back);
//! * unknown built-in rule names, permissions, flags, socket names and syscall names are
//!   errors with a "did you mean" hint;
//! * BPF patterns, IPs, CIDRs and ports are checked here rather than by the compiler;
//! * a CIDR with host bits set is an error (vArmor silently masks them): `10.0.0.5/8` most
//!   likely means something else than the block `10.0.0.0/8` it denies.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::net::IpAddr;
use std::str::FromStr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::api::{
    AppArmorRawRules, AttackProtectionRules, BpfRawRules, DefenseInDepth, EnhanceProtect, FileRule,
    LinuxSyscall, MountRule, NetworkEgressRule, NetworkRule, Policy, PolicyMode, PolicyPhase, Port,
    ProfileType, PtraceRule, Target, VarmorPolicySpec, VarmorPolicyStatus,
};
use crate::catalog::{self, Category};
use crate::document::{check_dns_label, check_dns_subdomain, PolicyDocument};
use crate::enforcer::EnforcerSet;
use crate::error::FieldErrors;
use crate::glob::Pattern;
use crate::names::{self, suggest};

/// Most rules of one type (file and process rules together, socket rules, egress
/// destinations, mount rules) that one policy may hold. The BPF enforcer supports at least
/// 1,024 per type; the limit keeps a profile's automaton and maps to a bounded size.
pub const MAX_RULES_PER_TYPE: usize = 4096;

/// Longest accepted `fstype` of a mount rule, in bytes.
pub const MAX_FSTYPE_LEN: usize = 16;

const TARGET: &str = "spec.target";
const ENFORCER: &str = "spec.policy.enforcer";
const ENHANCE_PROTECT: &str = "spec.policy.enhanceProtect";
const MODELING_OPTIONS: &str = "spec.policy.modelingOptions";
const DEFENSE_IN_DEPTH: &str = "spec.policy.defenseInDepth";

/// The special values of `toDestinations[].ip`.
const IP_ENTITIES: [&str; 3] = ["pod-self", "unspecified", "localhost"];

/// Every semantic problem of a spec, with JSON paths starting at `spec`.
pub fn validate_spec(spec: &VarmorPolicySpec) -> FieldErrors {
    let mut v = Validator::default();
    v.target(&spec.target);
    let enforcers = match EnforcerSet::parse(&spec.policy.enforcer) {
        Ok(set) => Some(set),
        Err(reason) => {
            v.push(ENFORCER, reason);
            None
        }
    };
    v.mode_prerequisites(&spec.policy, enforcers);
    if let Some(ep) = &spec.policy.enhance_protect {
        v.enhance_protect(ep);
    }
    if let Some(did) = &spec.policy.defense_in_depth {
        v.defense_in_depth(did);
    }
    v.errs
}

/// Every semantic problem of a parsed document: [`validate_spec`], plus the checks that need
/// the policy's identity (the profile name declared by a custom AppArmor profile).
pub fn validate_document(doc: &PolicyDocument) -> FieldErrors {
    let spec = doc.spec();
    let mut errs = validate_spec(&spec);
    let custom = spec
        .policy
        .defense_in_depth
        .as_ref()
        .and_then(|d| d.app_armor.as_ref())
        .filter(|a| a.profile_type == ProfileType::Custom)
        .and_then(|a| a.custom_profile.as_deref());
    if let Some(text) = custom {
        // Syntax problems were reported by validate_spec; only a well-formed profile is named.
        if let Ok(scan) = scan_apparmor(text) {
            if let Some(reason) = custom_profile_name_error(doc, &scan.top_level_profiles) {
                errs.push(format!("{DEFENSE_IN_DEPTH}.appArmor.customProfile"), reason);
            }
        }
    }
    errs
}

/// The agent applies the profile named after the policy; a custom profile with another name
/// would be loaded but never attached to the workload.
fn custom_profile_name_error(doc: &PolicyDocument, declared: &[String]) -> Option<String> {
    if declared.is_empty() {
        return None;
    }
    let (matches, expected) = match doc.namespace() {
        Some(_) => {
            let expected = doc
                .identity(crate::document::DEFAULT_VARMOR_NAMESPACE)
                .profile_name();
            (declared.contains(&expected), expected)
        }
        None => {
            // The cluster profile name holds the namespace vArmor runs in, which the
            // document does not know: accept any.
            let suffix = format!("-{}", doc.name().to_ascii_lowercase());
            let ok = declared.iter().any(|d| {
                d.strip_prefix("varmor-cluster-")
                    .and_then(|rest| rest.strip_suffix(&suffix))
                    .is_some_and(|ns| !ns.is_empty())
            });
            (
                ok,
                format!(
                    "varmor-cluster-<vArmor namespace>-{}",
                    doc.name().to_ascii_lowercase()
                ),
            )
        }
    };
    if matches {
        return None;
    }
    Some(format!(
        "the profile is named {}, but the profile of this policy must be named {expected:?}: \
         the agent only attaches the profile with the policy's profile name",
        declared
            .iter()
            .map(|d| format!("{d:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// Problems with changing `old` into `new` (immutable target, enforcer changes, leaving
/// BehaviorModeling while modeling), given the policy's current status. The new spec itself
/// is checked by [`validate_spec`].
pub fn validate_update(
    old: &VarmorPolicySpec,
    new: &VarmorPolicySpec,
    status: Option<&VarmorPolicyStatus>,
) -> FieldErrors {
    let mut errs = FieldErrors::new();
    if old.target != new.target {
        errs.push(
            TARGET,
            "the target is immutable: delete the policy and create a new one to protect other \
             workloads",
        );
    }
    let modeling = status.and_then(|s| s.phase) == Some(PolicyPhase::Modeling);
    if modeling
        && old.policy.mode == PolicyMode::BehaviorModeling
        && new.policy.mode != PolicyMode::BehaviorModeling
    {
        errs.push(
            "spec.policy.mode",
            format!(
                "cannot change the mode from BehaviorModeling to {} while modeling is in \
                 progress (status.phase is Modeling); wait until the phase is Completed",
                new.policy.mode
            ),
        );
    }
    let (Ok(o), Ok(n)) = (
        EnforcerSet::parse(&old.policy.enforcer),
        EnforcerSet::parse(&new.policy.enforcer),
    ) else {
        // An unparsable new value is reported by validate_spec; an unparsable old value
        // cannot be compared.
        return errs;
    };
    if modeling && o != n {
        errs.push(
            ENFORCER,
            format!(
                "cannot change the enforcer from {o} to {n} while modeling is in progress \
                 (status.phase is Modeling); wait until the phase is Completed"
            ),
        );
        return errs;
    }
    if let Some(reason) = enforcer_change_error(o, n) {
        errs.push(ENFORCER, reason);
    }
    errs
}

/// vArmor's rule: enforcers may be added, and BPF may be removed on its own; AppArmor and
/// Seccomp can never be removed. With the bits AppArmor=1, BPF=2, Seccomp=4 a change is
/// rejected when `(new & old) != old && (new | BPF) != old`.
fn enforcer_change_error(old: EnforcerSet, new: EnforcerSet) -> Option<String> {
    let (ob, nb) = (old.bits(), new.bits());
    let bpf = EnforcerSet::BPF.bits();
    if nb & ob == ob || nb | bpf == ob {
        return None;
    }
    let removed = EnforcerSet::from_bits(ob & !nb);
    if removed.apparmor || removed.seccomp {
        let what = EnforcerSet {
            bpf: false,
            ..removed
        };
        let names = match (what.apparmor, what.seccomp) {
            (true, true) => "the AppArmor and Seccomp enforcers",
            (true, false) => "the AppArmor enforcer",
            _ => "the Seccomp enforcer",
        };
        return Some(format!(
            "cannot remove {names} ({old} -> {new}): an AppArmor profile or seccomp filter \
             already applied to a running container cannot be removed from it by the container \
             runtime, so only BPF can be removed; delete the policy and create it again instead"
        ));
    }
    let added = EnforcerSet::from_bits(nb & !ob);
    let via = EnforcerSet::from_bits(ob | nb);
    Some(format!(
        "cannot remove BPF and add {added} in one update ({old} -> {new}): BPF can only be \
         removed on its own; first change the enforcer to {via}, then to {new}"
    ))
}

#[derive(Default)]
struct Validator {
    errs: FieldErrors,
}

fn hint(s: Option<&str>) -> String {
    s.map(|s| format!("; did you mean {s:?}?"))
        .unwrap_or_default()
}

/// `path.key`, or `path["key"]` for keys that are not plain identifiers (as the structural
/// check in [`crate::document`] writes them).
fn key_path(path: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !key.as_bytes()[0].is_ascii_digit();
    if plain {
        format!("{path}.{key}")
    } else {
        format!("{path}[{key:?}]")
    }
}

impl Validator {
    fn push(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.errs.push(path, reason);
    }

    // ------------------------------------------------------------------------------ target

    fn target(&mut self, t: &Target) {
        let name = t.name.as_deref().filter(|n| !n.is_empty());
        match (name.is_some(), t.selector.is_some()) {
            (true, true) => self.push(
                TARGET,
                "name and selector are mutually exclusive; set only one of them",
            ),
            (false, false) => self.push(
                TARGET,
                "set either name (one workload) or selector (workloads by label)",
            ),
            _ => {}
        }
        if let Some(name) = name {
            if let Err(why) = check_dns_subdomain(name) {
                self.push(format!("{TARGET}.name"), why);
            }
        }
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, c) in t.containers.iter().enumerate() {
            let path = format!("{TARGET}.containers[{i}]");
            if c.is_empty() {
                self.push(path, "must not be empty");
                continue;
            }
            if let Err(why) = check_rfc1123_label(c, "container name") {
                self.push(&path, why);
            }
            match seen.entry(c.as_str()) {
                Entry::Occupied(first) => self.push(
                    path,
                    format!(
                        "duplicate container name {c:?} (also containers[{}])",
                        first.get()
                    ),
                ),
                Entry::Vacant(slot) => {
                    slot.insert(i);
                }
            }
        }
        if let Some(sel) = &t.selector {
            self.label_selector(&format!("{TARGET}.selector"), sel);
        }
    }

    fn label_selector(&mut self, path: &str, sel: &LabelSelector) {
        for (key, value) in sel.match_labels.iter().flatten() {
            let p = key_path(&format!("{path}.matchLabels"), key);
            if let Err(why) = check_label_key(key) {
                self.push(&p, why);
            }
            if let Err(why) = check_label_value(value) {
                self.push(&p, why);
            }
        }
        for (i, req) in sel.match_expressions.iter().flatten().enumerate() {
            let p = format!("{path}.matchExpressions[{i}]");
            if let Err(why) = check_label_key(&req.key) {
                self.push(format!("{p}.key"), why);
            }
            let values = req.values.as_deref().unwrap_or_default();
            match req.operator.as_str() {
                "In" | "NotIn" => {
                    if values.is_empty() {
                        self.push(
                            format!("{p}.values"),
                            format!(
                                "at least one value is required with operator {}",
                                req.operator
                            ),
                        );
                    }
                    for (j, v) in values.iter().enumerate() {
                        if let Err(why) = check_label_value(v) {
                            self.push(format!("{p}.values[{j}]"), why);
                        }
                    }
                }
                "Exists" | "DoesNotExist" => {
                    if !values.is_empty() {
                        self.push(
                            format!("{p}.values"),
                            format!("must be empty with operator {}", req.operator),
                        );
                    }
                }
                other => {
                    let ops = ["In", "NotIn", "Exists", "DoesNotExist"];
                    self.push(
                        format!("{p}.operator"),
                        format!(
                            "unknown operator {other:?}; must be one of In, NotIn, Exists, \
                             DoesNotExist{}",
                            hint(suggest(other, ops))
                        ),
                    );
                }
            }
        }
    }

    // ------------------------------------------------------------------------------ modes

    fn mode_prerequisites(&mut self, p: &Policy, enforcers: Option<EnforcerSet>) {
        match p.mode {
            PolicyMode::EnhanceProtect if p.enhance_protect.is_none() => {
                self.push(ENHANCE_PROTECT, "required when mode is EnhanceProtect");
            }
            PolicyMode::BehaviorModeling => match &p.modeling_options {
                None => self.push(
                    MODELING_OPTIONS,
                    "required when mode is BehaviorModeling (set duration, in minutes)",
                ),
                Some(m) if m.duration <= 0 => self.push(
                    format!("{MODELING_OPTIONS}.duration"),
                    format!("must be greater than 0 (minutes), found {}", m.duration),
                ),
                Some(_) => {}
            },
            PolicyMode::DefenseInDepth => {
                if let Some(e) = enforcers.filter(|e| e.bpf) {
                    self.push(
                        ENFORCER,
                        format!(
                            "the DefenseInDepth mode does not support the BPF enforcer (enforcer \
                             is {e}); use AppArmor, Seccomp or AppArmorSeccomp"
                        ),
                    );
                }
                match (&p.defense_in_depth, enforcers) {
                    (None, _) => {
                        self.push(DEFENSE_IN_DEPTH, "required when mode is DefenseInDepth")
                    }
                    (Some(d), Some(e)) if e.apparmor || e.seccomp => {
                        let usable = (e.apparmor && d.app_armor.is_some())
                            || (e.seccomp && d.seccomp.is_some());
                        if !usable {
                            let wanted = match (e.apparmor, e.seccomp) {
                                (true, true) => "appArmor or seccomp",
                                (true, false) => "appArmor",
                                _ => "seccomp",
                            };
                            self.push(
                                DEFENSE_IN_DEPTH,
                                format!(
                                    "no profile for the policy's enforcers ({e}): set {wanted} \
                                     with a profileType"
                                ),
                            );
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }

    // ------------------------------------------------------------------------------ enhanceProtect

    fn enhance_protect(&mut self, ep: &EnhanceProtect) {
        for (i, name) in ep.hardening_rules.iter().enumerate() {
            self.builtin(
                &format!("{ENHANCE_PROTECT}.hardeningRules[{i}]"),
                name,
                Category::Hardening,
            );
        }
        for (i, entry) in ep.attack_protection_rules.iter().enumerate() {
            self.attack_protection(
                &format!("{ENHANCE_PROTECT}.attackProtectionRules[{i}]"),
                entry,
            );
        }
        for (i, name) in ep.vul_mitigation_rules.iter().enumerate() {
            self.builtin(
                &format!("{ENHANCE_PROTECT}.vulMitigationRules[{i}]"),
                name,
                Category::VulMitigation,
            );
        }
        self.apparmor_raw_rules(
            &format!("{ENHANCE_PROTECT}.appArmorRawRules"),
            &ep.app_armor_raw_rules,
        );
        if let Some(bpf) = &ep.bpf_raw_rules {
            self.bpf_raw_rules(&format!("{ENHANCE_PROTECT}.bpfRawRules"), bpf);
        }
        self.syscall_rules(
            &format!("{ENHANCE_PROTECT}.syscallRawRules"),
            &ep.syscall_raw_rules,
        );
    }

    fn attack_protection(&mut self, path: &str, entry: &AttackProtectionRules) {
        if entry.rules.is_empty() {
            self.push(format!("{path}.rules"), "at least one rule is required");
        }
        for (j, name) in entry.rules.iter().enumerate() {
            self.builtin(
                &format!("{path}.rules[{j}]"),
                name,
                Category::AttackProtection,
            );
        }
        self.exec_targets(&format!("{path}.targets"), &entry.targets);
    }

    /// A built-in rule name in the list of `category`.
    fn builtin(&mut self, path: &str, name: &str, category: Category) {
        match catalog::lookup(name) {
            Some(rule) if rule.category == category => {}
            Some(rule) => self.push(
                path,
                format!(
                    "{name:?} is {}: list it under {}, not {}",
                    category_noun(rule.category),
                    category_list(rule.category),
                    category.field()
                ),
            ),
            None => {
                // The closest name of any list: a typo of a rule of another list gets the
                // rule and where it belongs.
                let normalized = catalog::normalize(name);
                let best = catalog::all()
                    .iter()
                    .flat_map(|r| {
                        std::iter::once(r.name)
                            .chain(r.aliases.iter().copied())
                            .map(move |n| (n, r.category))
                    })
                    .map(|(n, c)| (strsim::jaro_winkler(&normalized, n), n, c))
                    .filter(|(score, _, _)| *score >= 0.8)
                    .max_by(|a, b| a.0.total_cmp(&b.0));
                let hint = match best {
                    None => String::new(),
                    Some((_, n, c)) if c == category => format!("; did you mean {n:?}?"),
                    Some((_, n, c)) => format!(
                        "; did you mean {n:?} ({}, listed under {})?",
                        category_noun(c),
                        category_list(c)
                    ),
                };
                self.push(path, format!("unknown built-in rule {name:?}{hint}"));
            }
        }
    }

    /// `targets` of attack protection and AppArmor raw rules: executables that get their own
    /// AppArmor child profile through an exec transition (`<target> cx -> child,`).
    fn exec_targets(&mut self, path: &str, targets: &[String]) {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (j, t) in targets.iter().enumerate() {
            let p = format!("{path}[{j}]");
            if let Err(why) = check_exec_target(t) {
                self.push(p, why);
                continue;
            }
            match seen.entry(t.as_str()) {
                Entry::Occupied(first) => self.push(
                    p,
                    format!("duplicate target {t:?} (also targets[{}])", first.get()),
                ),
                Entry::Vacant(slot) => {
                    slot.insert(j);
                }
            }
        }
    }

    fn apparmor_raw_rules(&mut self, path: &str, rules: &[AppArmorRawRules]) {
        for (i, r) in rules.iter().enumerate() {
            let p = format!("{path}[{i}]");
            if r.rules.trim().is_empty() {
                self.push(format!("{p}.rules"), "must not be empty");
            } else if let Err(why) = scan_apparmor(&r.rules) {
                self.push(
                    format!("{p}.rules"),
                    format!("{why}: raw rules are inserted into the profile and must not close it or leave a block open"),
                );
            }
            self.exec_targets(&format!("{p}.targets"), &r.targets);
        }
    }

    // ------------------------------------------------------------------------------ BPF

    fn bpf_raw_rules(&mut self, path: &str, b: &BpfRawRules) {
        for (i, r) in b.files.iter().enumerate() {
            self.file_rule(&format!("{path}.files[{i}]"), r);
        }
        for (i, r) in b.processes.iter().enumerate() {
            self.file_rule(&format!("{path}.processes[{i}]"), r);
        }
        let paths = b.files.len() + b.processes.len();
        if paths > MAX_RULES_PER_TYPE {
            self.push(
                path,
                format!(
                    "too many file and process rules: {paths} (files and processes together); \
                     the limit is {MAX_RULES_PER_TYPE} per policy"
                ),
            );
        }
        if let Some(n) = &b.network {
            self.network(&format!("{path}.network"), n);
        }
        if let Some(pt) = &b.ptrace {
            self.ptrace(&format!("{path}.ptrace"), pt);
        }
        for (i, m) in b.mounts.iter().enumerate() {
            self.mount_rule(&format!("{path}.mounts[{i}]"), m);
        }
        self.limit(&format!("{path}.mounts"), b.mounts.len(), "mount rules");
    }

    fn limit(&mut self, path: &str, count: usize, what: &str) {
        if count > MAX_RULES_PER_TYPE {
            self.push(
                path,
                format!("too many {what}: {count}; the limit is {MAX_RULES_PER_TYPE} per policy"),
            );
        }
    }

    fn pattern(&mut self, path: String, pattern: &str) {
        if let Err(e) = Pattern::parse(pattern) {
            self.push(path, e.reason);
        }
    }

    fn file_rule(&mut self, path: &str, r: &FileRule) {
        self.pattern(format!("{path}.pattern"), &r.pattern);
        self.names(
            &format!("{path}.permissions"),
            &r.permissions,
            &NameKind {
                what: "permission",
                known: &|n| names::file_permission(n).is_some(),
                candidates: names::FILE_PERMISSION_NAMES,
                accepted: Some("all (*), read (r), write (w), append (a), exec (x, e)"),
            },
        );
    }

    /// A non-empty list of names, each known.
    fn names(&mut self, path: &str, list: &[String], kind: &NameKind<'_>) {
        if list.is_empty() {
            self.push(path, format!("at least one {} is required", kind.what));
        }
        self.known_names(path, list, kind);
    }

    /// A list of names, each known.
    fn known_names(&mut self, path: &str, list: &[String], kind: &NameKind<'_>) {
        for (j, n) in list.iter().enumerate() {
            if (kind.known)(n) {
                continue;
            }
            let accepted = kind
                .accepted
                .map(|a| format!("; must be one of {a}"))
                .unwrap_or_default();
            self.push(
                format!("{path}[{j}]"),
                format!(
                    "unknown {} {n:?}{accepted}{}",
                    kind.what,
                    hint(suggest(n, kind.candidates.iter().copied()))
                ),
            );
        }
    }

    fn network(&mut self, path: &str, n: &NetworkRule) {
        let domains: Vec<&str> = names::SOCKET_DOMAINS
            .iter()
            .map(|(n, _)| *n)
            .chain(["all"])
            .collect();
        let types: Vec<&str> = names::SOCKET_TYPES
            .iter()
            .map(|(n, _)| *n)
            .chain(["all"])
            .collect();
        let protocols: Vec<&str> = names::SOCKET_PROTOCOLS
            .iter()
            .map(|(n, _)| *n)
            .chain(["all"])
            .collect();
        let types_accepted = format!(
            "all (*), {}",
            names::SOCKET_TYPES
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        );
        for (i, s) in n.sockets.iter().enumerate() {
            let p = format!("{path}.sockets[{i}]");
            if s.domains.is_empty() && s.types.is_empty() && s.protocols.is_empty() {
                self.push(&p, "set at least one of domains, types or protocols");
            }
            if !s.types.is_empty() && !s.protocols.is_empty() {
                self.push(
                    &p,
                    "types and protocols are mutually exclusive; use one of them",
                );
            }
            self.known_names(
                &format!("{p}.domains"),
                &s.domains,
                &NameKind {
                    what: "socket domain",
                    known: &|n| is_all(n) || names::socket_domain(n).is_some(),
                    candidates: &domains,
                    accepted: None,
                },
            );
            self.known_names(
                &format!("{p}.types"),
                &s.types,
                &NameKind {
                    what: "socket type",
                    known: &|n| is_all(n) || names::socket_type(n).is_some(),
                    candidates: &types,
                    accepted: Some(&types_accepted),
                },
            );
            self.known_names(
                &format!("{p}.protocols"),
                &s.protocols,
                &NameKind {
                    what: "socket protocol",
                    known: &|n| is_all(n) || names::socket_protocol(n).is_some(),
                    candidates: &protocols,
                    accepted: Some("all (*), icmp, tcp, udp"),
                },
            );
        }
        self.limit(&format!("{path}.sockets"), n.sockets.len(), "socket rules");
        if let Some(e) = &n.egress {
            self.egress(&format!("{path}.egress"), e);
        }
    }

    fn egress(&mut self, path: &str, e: &NetworkEgressRule) {
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (i, d) in e.to_destinations.iter().enumerate() {
            let p = format!("{path}.toDestinations[{i}]");
            let key = match (&d.ip, &d.cidr) {
                (Some(_), Some(_)) => {
                    self.push(
                        &p,
                        "ip and cidr are mutually exclusive; use one destination for each",
                    );
                    None
                }
                (Some(ip), None) => self.ip(&format!("{p}.ip"), ip),
                (None, Some(cidr)) => self.cidr(&format!("{p}.cidr"), cidr),
                (None, None) if d.ports.is_empty() => {
                    self.push(
                        &p,
                        "set ip, cidr or ports: a destination without any of them matches every \
                         address and port, and would block all outgoing connections",
                    );
                    None
                }
                (None, None) => Some("any address".to_string()),
            };
            self.ports(&format!("{p}.ports"), &d.ports);
            if let Some(key) = key {
                match seen.entry(key) {
                    Entry::Occupied(first) => self.push(
                        &p,
                        format!(
                            "the same destination as toDestinations[{}]; merge their ports into \
                             one entry (overlapping destinations combine ports unpredictably)",
                            first.get()
                        ),
                    ),
                    Entry::Vacant(slot) => {
                        slot.insert(i);
                    }
                }
            }
        }
        self.limit(
            &format!("{path}.toDestinations"),
            e.to_destinations.len(),
            "egress destinations",
        );
        for (i, s) in e.to_services.iter().enumerate() {
            let p = format!("{path}.toServices[{i}]");
            let name = s.name.as_deref().filter(|n| !n.is_empty());
            let namespace = s.namespace.as_deref().filter(|n| !n.is_empty());
            match (name.is_some(), s.service_selector.is_some()) {
                (true, true) => self.push(
                    &p,
                    "name and serviceSelector are mutually exclusive; set only one",
                ),
                (false, false) => self.push(
                    &p,
                    "set name (with namespace) to select one service, or serviceSelector",
                ),
                (true, false) if namespace.is_none() => self.push(
                    format!("{p}.namespace"),
                    "required when name is set: a service is selected by namespace and name",
                ),
                _ => {}
            }
            if let Some(n) = name {
                if let Err(why) = check_rfc1035_label(n, "service name") {
                    self.push(format!("{p}.name"), why);
                }
            }
            if let Some(ns) = namespace {
                if let Err(why) = check_dns_label(ns) {
                    self.push(format!("{p}.namespace"), why);
                }
            }
            if let Some(sel) = &s.service_selector {
                self.label_selector(&format!("{p}.serviceSelector"), sel);
            }
        }
        for (i, pod) in e.to_pods.iter().enumerate() {
            let p = format!("{path}.toPods[{i}]");
            if let Some(ns) = pod.namespace.as_deref().filter(|n| !n.is_empty()) {
                if let Err(why) = check_dns_label(ns) {
                    self.push(format!("{p}.namespace"), why);
                }
            }
            self.label_selector(&format!("{p}.podSelector"), &pod.pod_selector);
            self.ports(&format!("{p}.ports"), &pod.ports);
        }
    }

    /// Checks `ip`; returns the key that identifies the destination.
    fn ip(&mut self, path: &str, ip: &str) -> Option<String> {
        if IP_ENTITIES.contains(&ip) {
            return Some(ip.to_string());
        }
        if let Ok(addr) = IpAddr::from_str(ip) {
            return Some(addr.to_string());
        }
        let extra = if ip.contains('/') {
            "; for an IP block use cidr instead".to_string()
        } else {
            hint(suggest(ip, IP_ENTITIES))
        };
        self.push(
            path,
            format!(
                "{ip:?} is not a valid IP address; use an IPv4 or IPv6 address, or pod-self, \
                 unspecified or localhost{extra}"
            ),
        );
        None
    }

    /// Checks `cidr`; returns the key that identifies the destination.
    fn cidr(&mut self, path: &str, cidr: &str) -> Option<String> {
        match ipnet::IpNet::from_str(cidr) {
            Ok(net) => {
                if net.addr() != net.network() {
                    self.push(
                        path,
                        format!(
                            "{cidr:?} has host bits set: it names the block {} (vArmor silently \
                             uses that block); write {} for the block, or use ip for the single \
                             address {}",
                            net.trunc(),
                            net.trunc(),
                            net.addr()
                        ),
                    );
                }
                Some(net.trunc().to_string())
            }
            Err(_) => {
                let extra = if IpAddr::from_str(cidr).is_ok() {
                    "; for a single address use ip instead"
                } else {
                    ""
                };
                self.push(
                    path,
                    format!(
                        "{cidr:?} is not a valid CIDR: write an address and a prefix length, e.g. \
                         10.0.0.0/8 or fd00::/8{extra}"
                    ),
                );
                None
            }
        }
    }

    fn ports(&mut self, path: &str, ports: &[Port]) {
        for (j, p) in ports.iter().enumerate() {
            if p.port == 0 {
                self.push(
                    format!("{path}[{j}].port"),
                    "must be between 1 and 65535, found 0",
                );
            }
            match p.end_port {
                Some(0) => self.push(
                    format!("{path}[{j}].endPort"),
                    "must be between 1 and 65535, found 0",
                ),
                Some(end) if end < p.port => self.push(
                    format!("{path}[{j}].endPort"),
                    format!(
                        "must be greater than or equal to port ({}), found {end}",
                        p.port
                    ),
                ),
                _ => {}
            }
        }
    }

    fn ptrace(&mut self, path: &str, pt: &PtraceRule) {
        self.names(
            &format!("{path}.permissions"),
            &pt.permissions,
            &NameKind {
                what: "ptrace permission",
                known: &|n| names::ptrace_permission(n).is_some(),
                candidates: names::PTRACE_PERMISSION_NAMES,
                accepted: Some("all (*), trace, traceby, read, readby"),
            },
        );
    }

    fn mount_rule(&mut self, path: &str, m: &MountRule) {
        self.pattern(format!("{path}.sourcePattern"), &m.source_pattern);
        if m.fstype.is_empty() {
            self.push(
                format!("{path}.fstype"),
                "must not be empty; use * for any filesystem type",
            );
        } else if m.fstype.len() > MAX_FSTYPE_LEN {
            self.push(
                format!("{path}.fstype"),
                format!(
                    "is {} bytes long; the limit is {MAX_FSTYPE_LEN}",
                    m.fstype.len()
                ),
            );
        } else if m
            .fstype
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            self.push(format!("{path}.fstype"), "must not contain whitespace");
        }
        self.names(
            &format!("{path}.flags"),
            &m.flags,
            &NameKind {
                what: "mount flag",
                known: &|n| names::mount_flag(n).is_some(),
                candidates: names::MOUNT_FLAG_NAMES,
                accepted: None,
            },
        );
    }

    // ------------------------------------------------------------------------------ seccomp

    fn syscall_rules(&mut self, path: &str, rules: &[LinuxSyscall]) {
        for (i, r) in rules.iter().enumerate() {
            let p = format!("{path}[{i}]");
            self.names(
                &format!("{p}.names"),
                &r.names,
                &NameKind {
                    what: "syscall",
                    known: &names::is_known_syscall,
                    candidates: names::syscall_names(),
                    accepted: None,
                },
            );
            let action_known = names::SECCOMP_ACTIONS.contains(&r.action.as_str());
            if !action_known {
                self.push(
                    format!("{p}.action"),
                    format!(
                        "unknown seccomp action {:?}; must be one of {}{}",
                        r.action,
                        names::SECCOMP_ACTIONS.join(", "),
                        hint(suggest(&r.action, names::SECCOMP_ACTIONS.iter().copied()))
                    ),
                );
            }
            if r.errno_ret.is_some()
                && action_known
                && !matches!(r.action.as_str(), "SCMP_ACT_ERRNO" | "SCMP_ACT_TRACE")
            {
                self.push(
                    format!("{p}.errnoRet"),
                    format!(
                        "only valid with action SCMP_ACT_ERRNO or SCMP_ACT_TRACE, not {}",
                        r.action
                    ),
                );
            }
            for (k, a) in r.args.iter().enumerate() {
                if a.index > 5 {
                    self.push(
                        format!("{p}.args[{k}].index"),
                        format!(
                            "must be between 0 and 5 (syscalls have 6 arguments), found {}",
                            a.index
                        ),
                    );
                }
                if !names::SECCOMP_OPERATORS.contains(&a.op.as_str()) {
                    self.push(
                        format!("{p}.args[{k}].op"),
                        format!(
                            "unknown seccomp operator {:?}; must be one of {}{}",
                            a.op,
                            names::SECCOMP_OPERATORS.join(", "),
                            hint(suggest(&a.op, names::SECCOMP_OPERATORS.iter().copied()))
                        ),
                    );
                }
            }
        }
    }

    // ------------------------------------------------------------------------------ defenseInDepth

    fn defense_in_depth(&mut self, d: &DefenseInDepth) {
        if let Some(a) = &d.app_armor {
            let p = format!("{DEFENSE_IN_DEPTH}.appArmor");
            if a.profile_type == ProfileType::Custom {
                match a.custom_profile.as_deref().filter(|t| !t.trim().is_empty()) {
                    None => self.push(
                        format!("{p}.customProfile"),
                        "required when profileType is Custom",
                    ),
                    Some(text) => match scan_apparmor(text) {
                        Err(why) => self.push(format!("{p}.customProfile"), why),
                        Ok(scan) if scan.top_level_profiles.is_empty() => self.push(
                            format!("{p}.customProfile"),
                            "must contain a profile block: profile NAME flags=(...) { ... } \
                             where NAME is the policy's profile name",
                        ),
                        Ok(_) => {}
                    },
                }
            }
            self.apparmor_raw_rules(&format!("{p}.appArmorRawRules"), &a.app_armor_raw_rules);
        }
        if let Some(s) = &d.seccomp {
            let p = format!("{DEFENSE_IN_DEPTH}.seccomp");
            if s.profile_type == ProfileType::Custom {
                match s.custom_profile.as_deref().filter(|t| !t.trim().is_empty()) {
                    None => self.push(
                        format!("{p}.customProfile"),
                        "required when profileType is Custom",
                    ),
                    Some(text) => {
                        if let Err(e) =
                            serde_json::from_str::<oci_spec::runtime::LinuxSeccomp>(text)
                        {
                            self.push(
                                format!("{p}.customProfile"),
                                format!("not a valid OCI seccomp profile (JSON): {e}"),
                            );
                        }
                    }
                }
            }
            self.syscall_rules(&format!("{p}.syscallRawRules"), &s.syscall_raw_rules);
        }
    }
}

/// How to check one list of names.
struct NameKind<'a> {
    what: &'a str,
    known: &'a dyn Fn(&str) -> bool,
    candidates: &'a [&'a str],
    accepted: Option<&'a str>,
}

fn is_all(n: &str) -> bool {
    n == "*" || n.eq_ignore_ascii_case("all")
}

fn category_noun(c: Category) -> &'static str {
    match c {
        Category::Hardening => "a hardening rule",
        Category::AttackProtection => "an attack protection rule",
        Category::VulMitigation => "a vulnerability mitigation rule",
    }
}

fn category_list(c: Category) -> &'static str {
    match c {
        Category::Hardening => "hardeningRules",
        Category::AttackProtection => "attackProtectionRules[].rules",
        Category::VulMitigation => "vulMitigationRules",
    }
}

/// An executable of `targets`: a literal, absolute, normalized file path that can be written
/// unquoted in an AppArmor exec rule.
fn check_exec_target(t: &str) -> Result<(), String> {
    if t.is_empty() {
        return Err("must not be empty".into());
    }
    if !t.starts_with('/') {
        return Err(format!(
            "{t:?} is not an absolute path; targets are full paths of executables, e.g. /usr/bin/curl"
        ));
    }
    if t.contains(['*', '?', '[', ']', '{', '}', '\\', '^']) || t.contains("@{") {
        return Err(format!(
            "{t:?} contains glob characters; targets are literal paths of executables (each \
             becomes an AppArmor exec transition), list every executable instead"
        ));
    }
    if t.chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, ',' | '"' | '#'))
    {
        return Err(format!(
            "{t:?} contains whitespace, a control character, ',', '\"' or '#', which AppArmor \
             rules cannot hold"
        ));
    }
    if t.ends_with('/') {
        return Err(format!("{t:?} names a directory; targets are executables"));
    }
    if t[1..]
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(format!(
            "{t:?} is not a normalized path (empty, '.' or '..' component); exec transitions \
             match the resolved path"
        ));
    }
    Ok(())
}

/// A Kubernetes label key: `[prefix/]name`, the prefix a DNS subdomain, the name at most 63
/// characters of `[A-Za-z0-9._-]` starting and ending with an alphanumeric character.
fn check_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if p.is_empty() || check_dns_subdomain(p).is_err() {
            return Err(format!(
                "label key {key:?} has an invalid prefix: it must be a DNS subdomain such as \
                 example.com"
            ));
        }
    }
    if name.is_empty() || name.len() > 63 || !label_chars_ok(name) {
        return Err(format!(
            "{key:?} is not a valid label key: the name part must be 1 to 63 characters of \
             letters, digits, '-', '_' and '.', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

/// A Kubernetes label value: empty, or at most 63 characters like a key's name part.
fn check_label_value(v: &str) -> Result<(), String> {
    if v.is_empty() || (v.len() <= 63 && label_chars_ok(v)) {
        return Ok(());
    }
    Err(format!(
        "{v:?} is not a valid label value: use at most 63 letters, digits, '-', '_' and '.', \
         starting and ending with a letter or digit"
    ))
}

fn label_chars_ok(s: &str) -> bool {
    let b = s.as_bytes();
    b.iter()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
}

/// RFC 1123 label (container names).
fn check_rfc1123_label(s: &str, what: &str) -> Result<(), String> {
    let b = s.as_bytes();
    let ok = s.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b.first().is_some_and(|c| c.is_ascii_alphanumeric())
        && b.last().is_some_and(|c| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a valid {what}: use at most 63 lower-case letters, digits and '-', \
             starting and ending with a letter or digit"
        ))
    }
}

/// RFC 1035 label (service names): an RFC 1123 label that starts with a letter.
fn check_rfc1035_label(s: &str, what: &str) -> Result<(), String> {
    check_rfc1123_label(s, what)?;
    if s.as_bytes()[0].is_ascii_digit() {
        return Err(format!(
            "{s:?} is not a valid {what}: it must start with a letter"
        ));
    }
    Ok(())
}

/// What a light scan of AppArmor text finds.
#[derive(Debug, Default)]
struct AppArmorScan {
    /// Names of the profiles declared with `profile NAME` outside any block.
    top_level_profiles: Vec<String>,
}

/// Scans AppArmor text for balanced braces (outside comments and quoted strings) and the
/// top-level `profile NAME` declarations. It is not a parser: apparmor_parser checks the
/// syntax on the node. This catches what a parser on the node cannot attribute to a field:
/// raw rules that close the profile they are inserted into and then add rules outside it.
fn scan_apparmor(text: &str) -> Result<AppArmorScan, String> {
    let mut scan = AppArmorScan::default();
    let mut open: Vec<usize> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let lineno = n + 1;
        let code = strip_apparmor_comment(line);
        if open.is_empty() {
            if let Some(name) = profile_declaration(code) {
                scan.top_level_profiles.push(name);
            }
        }
        let mut in_quote = false;
        let mut escaped = false;
        for c in code.chars() {
            if in_quote {
                match c {
                    _ if escaped => escaped = false,
                    '\\' => escaped = true,
                    '"' => in_quote = false,
                    _ => {}
                }
                continue;
            }
            match c {
                '"' => in_quote = true,
                '{' => open.push(lineno),
                '}' if open.pop().is_none() => {
                    return Err(format!("unbalanced '}}' on line {lineno}"));
                }
                _ => {}
            }
        }
    }
    if let Some(line) = open.last() {
        return Err(format!("the '{{' on line {line} is never closed"));
    }
    Ok(scan)
}

/// The line without its comment. `#` starts a comment at the start of a line or after
/// whitespace, except in `#include`.
fn strip_apparmor_comment(line: &str) -> &str {
    let mut in_quote = false;
    let mut prev_space = true;
    for (i, c) in line.char_indices() {
        if c == '"' {
            in_quote = !in_quote;
        } else if c == '#' && !in_quote && prev_space && !line[i..].starts_with("#include") {
            return &line[..i];
        }
        prev_space = c.is_whitespace();
    }
    line
}

/// `NAME` of a line `profile NAME ...`.
fn profile_declaration(code: &str) -> Option<String> {
    let rest = code.trim_start().strip_prefix("profile")?;
    if !rest.starts_with(char::is_whitespace) {
        return None;
    }
    let rest = rest.trim_start();
    let name = if let Some(quoted) = rest.strip_prefix('"') {
        quoted.split('"').next().unwrap_or_default()
    } else {
        rest.split(|c: char| c.is_whitespace() || c == '{')
            .next()
            .unwrap_or_default()
    };
    (!name.is_empty()).then(|| name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apparmor_scan_finds_profiles_and_unbalanced_braces() {
        let text = "abi <abi/3.0>,\n#include <tunables/global>\n# a comment with }\nprofile varmor-a-b flags=(attach_disconnected) {\n  /etc/{passwd,shadow} r, # }\n  \"/a b{\" r,\n  profile child { }\n}\n";
        let scan = scan_apparmor(text).expect("balanced");
        assert_eq!(scan.top_level_profiles, ["varmor-a-b"]);
        assert!(scan_apparmor("/etc/x r,\n}\nprofile evil {\n").is_err());
        let err = scan_apparmor("/etc/x r,\n}\n").expect_err("closes early");
        assert!(err.contains("line 2"), "{err}");
        assert!(scan_apparmor("/etc/{a,b r,\n")
            .expect_err("open")
            .contains("never closed"));
    }

    #[test]
    fn exec_targets() {
        assert!(check_exec_target("/usr/bin/curl").is_ok());
        for bad in [
            "curl",
            "/usr/bin/*",
            "/usr/bin/",
            "/usr/../bin/sh",
            "/a b",
            "/usr//bin/x",
            "",
        ] {
            assert!(check_exec_target(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn label_syntax() {
        assert!(check_label_key("app.kubernetes.io/name").is_ok());
        assert!(check_label_key("app").is_ok());
        assert!(check_label_key("-app").is_err());
        assert!(check_label_key("/app").is_err());
        assert!(check_label_value("").is_ok());
        assert!(check_label_value("v1.2_x").is_ok());
        assert!(check_label_value("a b").is_err());
    }

    #[test]
    fn enforcer_change_rule_matches_varmor_formula() {
        for o in 1..8u32 {
            for n in 1..8u32 {
                let rejected = (n & o) != o && (n | 2) != o;
                let got =
                    enforcer_change_error(EnforcerSet::from_bits(o), EnforcerSet::from_bits(n));
                assert_eq!(got.is_some(), rejected, "{o} -> {n}: {got:?}");
            }
        }
    }
}
