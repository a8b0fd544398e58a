//! Conversions between the domain types and the `varmor.v1` messages (feature `proto`).
//!
//! The domain model stays free of protobuf; these impls are the edge. Domain to proto cannot
//! fail; proto to domain checks what the schema cannot (enum values, addresses, table sizes,
//! required messages) and names the wrong field.

use std::collections::BTreeMap;

use crate::api::{PolicyMode, Target, TargetKind};
use crate::automaton::Automaton;
use crate::bundle::{
    AppArmorProfile, BpfMode, BpfProfile, CapabilityRule, EgressAddress, EgressRule,
    EgressSelector, EgressTarget, Modeling, MountRule, PathRule, PathVerdict, PortRange,
    ProfileBundle, PtraceRule, RuleAction, RuleOrigin, SeccompProfile, SocketRule,
};
use crate::enforcer::EnforcerSet;
use crate::identity::{NodeFacts, PolicyIdentity, PolicyKind};
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use varmor_proto::v1;

/// A proto message that does not describe a valid domain value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct ConvertError {
    /// The proto field, e.g. `bundle.bpf.egress[2].address`.
    pub field: String,
    /// Why.
    pub reason: String,
}

fn bad(field: impl Into<String>, reason: impl Into<String>) -> ConvertError {
    ConvertError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// A bundle with the revision the manager gave it.
#[derive(Debug, Clone, PartialEq)]
pub struct RevisedBundle {
    /// The bundle.
    pub bundle: ProfileBundle,
    /// Its revision.
    pub revision: u64,
}

impl From<&RevisedBundle> for v1::ProfileBundle {
    fn from(r: &RevisedBundle) -> Self {
        let b = &r.bundle;
        v1::ProfileBundle {
            profile_name: b.profile_name.clone(),
            identity: Some((&b.identity).into()),
            revision: r.revision,
            target: Some((&b.target).into()),
            enforcers: Some(enforcers_to_proto(b.enforcers)),
            mode: b.mode.as_str().to_string(),
            apparmor: b.apparmor.as_ref().map(|a| v1::AppArmorProfile {
                name: a.name.clone(),
                text: a.text.clone(),
                complain: a.complain,
            }),
            bpf: b.bpf.as_ref().map(Into::into),
            seccomp: b.seccomp.as_ref().map(|s| v1::SeccompProfile {
                kind: Some(match s {
                    SeccompProfile::RuntimeDefault => {
                        v1::seccomp_profile::Kind::RuntimeDefault(v1::Empty {})
                    }
                    SeccompProfile::Localhost { json } => {
                        v1::seccomp_profile::Kind::LocalhostJson(json.clone())
                    }
                }),
            }),
            modeling: b.modeling.as_ref().map(|m| v1::Modeling {
                duration_minutes: m.duration_minutes,
            }),
            warnings: b.warnings.clone(),
        }
    }
}

impl TryFrom<v1::ProfileBundle> for RevisedBundle {
    type Error = ConvertError;

    fn try_from(p: v1::ProfileBundle) -> Result<Self, ConvertError> {
        let identity = p
            .identity
            .ok_or_else(|| bad("bundle.identity", "missing"))?
            .try_into()?;
        let target = p
            .target
            .ok_or_else(|| bad("bundle.target", "missing"))?
            .try_into()?;
        let enforcers = p.enforcers.map(enforcers_from_proto).unwrap_or_default();
        let mode = PolicyMode::ALL
            .into_iter()
            .find(|m| m.as_str() == p.mode)
            .ok_or_else(|| bad("bundle.mode", format!("unknown mode {:?}", p.mode)))?;
        let seccomp = match p.seccomp {
            None => None,
            Some(s) => Some(match s.kind {
                Some(v1::seccomp_profile::Kind::RuntimeDefault(_)) => {
                    SeccompProfile::RuntimeDefault
                }
                Some(v1::seccomp_profile::Kind::LocalhostJson(json)) => {
                    SeccompProfile::Localhost { json }
                }
                None => return Err(bad("bundle.seccomp.kind", "missing")),
            }),
        };
        let bpf = p.bpf.map(BpfProfile::try_from).transpose()?;
        Ok(RevisedBundle {
            revision: p.revision,
            bundle: ProfileBundle {
                identity,
                profile_name: p.profile_name,
                target,
                enforcers,
                mode,
                apparmor: p.apparmor.map(|a| AppArmorProfile {
                    name: a.name,
                    text: a.text,
                    complain: a.complain,
                }),
                bpf,
                seccomp,
                modeling: p.modeling.map(|m| Modeling {
                    duration_minutes: m.duration_minutes,
                }),
                warnings: p.warnings,
            },
        })
    }
}

/// Enforcers as the proto message.
pub fn enforcers_to_proto(e: EnforcerSet) -> v1::Enforcers {
    v1::Enforcers {
        apparmor: e.apparmor,
        bpf: e.bpf,
        seccomp: e.seccomp,
    }
}

/// Enforcers from the proto message.
pub fn enforcers_from_proto(e: v1::Enforcers) -> EnforcerSet {
    EnforcerSet {
        apparmor: e.apparmor,
        bpf: e.bpf,
        seccomp: e.seccomp,
    }
}

impl From<&PolicyIdentity> for v1::PolicyIdentity {
    fn from(i: &PolicyIdentity) -> Self {
        v1::PolicyIdentity {
            kind: match i.kind {
                PolicyKind::VarmorPolicy => v1::PolicyKind::VarmorPolicy,
                PolicyKind::VarmorClusterPolicy => v1::PolicyKind::VarmorClusterPolicy,
            } as i32,
            namespace: i.namespace.clone(),
            name: i.name.clone(),
        }
    }
}

impl TryFrom<v1::PolicyIdentity> for PolicyIdentity {
    type Error = ConvertError;

    fn try_from(p: v1::PolicyIdentity) -> Result<Self, ConvertError> {
        let kind = match v1::PolicyKind::try_from(p.kind) {
            Ok(v1::PolicyKind::VarmorPolicy) => PolicyKind::VarmorPolicy,
            Ok(v1::PolicyKind::VarmorClusterPolicy) => PolicyKind::VarmorClusterPolicy,
            _ => {
                return Err(bad(
                    "identity.kind",
                    format!("unknown policy kind {}", p.kind),
                ))
            }
        };
        Ok(PolicyIdentity {
            kind,
            namespace: p.namespace,
            name: p.name,
        })
    }
}

fn selector_to_proto(s: &meta::LabelSelector) -> v1::LabelSelector {
    v1::LabelSelector {
        match_labels: s
            .match_labels
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
        match_expressions: s
            .match_expressions
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|e| v1::LabelSelectorRequirement {
                key: e.key,
                operator: e.operator,
                values: e.values.unwrap_or_default(),
            })
            .collect(),
    }
}

fn selector_from_proto(s: v1::LabelSelector) -> meta::LabelSelector {
    meta::LabelSelector {
        match_labels: (!s.match_labels.is_empty())
            .then(|| s.match_labels.into_iter().collect::<BTreeMap<_, _>>()),
        match_expressions: (!s.match_expressions.is_empty()).then(|| {
            s.match_expressions
                .into_iter()
                .map(|e| meta::LabelSelectorRequirement {
                    key: e.key,
                    operator: e.operator,
                    values: (!e.values.is_empty()).then_some(e.values),
                })
                .collect()
        }),
    }
}

impl From<&Target> for v1::Target {
    fn from(t: &Target) -> Self {
        v1::Target {
            kind: t.kind.as_str().to_string(),
            name: t.name.clone().unwrap_or_default(),
            containers: t.containers.clone(),
            selector: t.selector.as_ref().map(selector_to_proto),
        }
    }
}

impl TryFrom<v1::Target> for Target {
    type Error = ConvertError;

    fn try_from(t: v1::Target) -> Result<Self, ConvertError> {
        let kind = TargetKind::ALL
            .into_iter()
            .find(|k| k.as_str() == t.kind)
            .ok_or_else(|| bad("target.kind", format!("unknown kind {:?}", t.kind)))?;
        Ok(Target {
            kind,
            name: (!t.name.is_empty()).then_some(t.name),
            containers: t.containers,
            selector: t.selector.map(selector_from_proto),
        })
    }
}

fn action_to_proto(a: RuleAction) -> i32 {
    (match a {
        RuleAction::Deny => v1::RuleAction::Deny,
        RuleAction::DenyAudit => v1::RuleAction::DenyAudit,
        RuleAction::Audit => v1::RuleAction::Audit,
        RuleAction::Complain => v1::RuleAction::Complain,
    }) as i32
}

fn action_from_proto(a: i32, field: &str) -> Result<RuleAction, ConvertError> {
    match v1::RuleAction::try_from(a) {
        Ok(v1::RuleAction::Deny) => Ok(RuleAction::Deny),
        Ok(v1::RuleAction::DenyAudit) => Ok(RuleAction::DenyAudit),
        Ok(v1::RuleAction::Audit) => Ok(RuleAction::Audit),
        Ok(v1::RuleAction::Complain) => Ok(RuleAction::Complain),
        _ => Err(bad(
            format!("{field}.action"),
            format!("unknown rule action {a}"),
        )),
    }
}

fn origin_to_proto(o: &RuleOrigin) -> v1::RuleOrigin {
    v1::RuleOrigin {
        field: o.field.clone(),
        builtin: o.builtin.clone().unwrap_or_default(),
    }
}

fn origin_from_proto(o: Option<v1::RuleOrigin>) -> RuleOrigin {
    let o = o.unwrap_or_default();
    RuleOrigin {
        field: o.field,
        builtin: (!o.builtin.is_empty()).then_some(o.builtin),
    }
}

fn ports_to_proto(p: &[PortRange]) -> Vec<v1::PortRange> {
    p.iter()
        .map(|r| v1::PortRange {
            first: r.first.into(),
            last: r.last.into(),
        })
        .collect()
}

fn ports_from_proto(p: Vec<v1::PortRange>, field: &str) -> Result<Vec<PortRange>, ConvertError> {
    p.into_iter()
        .map(|r| {
            let first = u16::try_from(r.first)
                .map_err(|_| bad(format!("{field}.ports"), "port above 65535"))?;
            let last = u16::try_from(r.last)
                .map_err(|_| bad(format!("{field}.ports"), "port above 65535"))?;
            Ok(PortRange { first, last })
        })
        .collect()
}

impl From<&Automaton> for v1::Automaton {
    fn from(a: &Automaton) -> Self {
        v1::Automaton {
            byte_classes: a.byte_classes.clone(),
            class_count: a.class_count,
            state_count: a.state_count,
            starts: a.starts.clone(),
            transitions: a.transitions.clone(),
            accept: a.accept.clone(),
            match_sets: a
                .match_sets
                .iter()
                .map(|m| v1::MatchSet {
                    patterns: m.clone(),
                })
                .collect(),
        }
    }
}

fn automaton_from_proto(a: Option<v1::Automaton>, field: &str) -> Result<Automaton, ConvertError> {
    let Some(a) = a else {
        return Ok(Automaton::empty());
    };
    let width = a.class_count as usize;
    let states = a.state_count as usize;
    if a.byte_classes.len() != 256 {
        return Err(bad(
            format!("{field}.byte_classes"),
            "must hold 256 entries",
        ));
    }
    if a.byte_classes.iter().any(|&c| c as usize >= width) {
        return Err(bad(
            format!("{field}.byte_classes"),
            "a class is not below class_count",
        ));
    }
    if a.transitions.len() != states * width || a.accept.len() != states {
        return Err(bad(
            field.to_string(),
            "table sizes do not match state_count and class_count",
        ));
    }
    if a.transitions
        .iter()
        .chain(&a.starts)
        .any(|&s| s as usize >= states)
    {
        return Err(bad(
            format!("{field}.transitions"),
            "a state is out of range",
        ));
    }
    if a.accept.iter().any(|&r| r as usize > a.match_sets.len()) {
        return Err(bad(
            format!("{field}.accept"),
            "a match set is out of range",
        ));
    }
    Ok(Automaton {
        byte_classes: a.byte_classes,
        class_count: a.class_count,
        state_count: a.state_count,
        starts: a.starts,
        transitions: a.transitions,
        accept: a.accept,
        match_sets: a.match_sets.into_iter().map(|m| m.patterns).collect(),
    })
}

impl From<&BpfProfile> for v1::BpfProfile {
    fn from(b: &BpfProfile) -> Self {
        v1::BpfProfile {
            complain: b.mode == BpfMode::Complain,
            capabilities: b
                .capabilities
                .iter()
                .map(|r| v1::CapabilityRule {
                    capabilities: r.capabilities,
                    action: action_to_proto(r.action),
                    origin: Some(origin_to_proto(&r.origin)),
                })
                .collect(),
            files: b
                .files
                .iter()
                .map(|r| v1::PathRule {
                    pattern: r.pattern.clone(),
                    permissions: r.permissions,
                    action: action_to_proto(r.action),
                    origin: Some(origin_to_proto(&r.origin)),
                })
                .collect(),
            path_automaton: Some((&b.path_automaton).into()),
            path_verdicts: b
                .path_verdicts
                .iter()
                .map(|v| v1::PathVerdict {
                    deny: v.deny,
                    deny_audit: v.deny_audit,
                    audit: v.audit,
                    complain: v.complain,
                })
                .collect(),
            sockets: b
                .sockets
                .iter()
                .map(|r| v1::SocketRule {
                    domains: r.domains,
                    types: r.types,
                    protocols: r.protocols,
                    action: action_to_proto(r.action),
                    origin: Some(origin_to_proto(&r.origin)),
                })
                .collect(),
            egress: b
                .egress
                .iter()
                .map(|r| v1::EgressRule {
                    address: Some(v1::EgressAddress {
                        kind: Some(match &r.address {
                            EgressAddress::Any => v1::egress_address::Kind::Any(v1::Empty {}),
                            EgressAddress::Ip(ip) => v1::egress_address::Kind::Ip(ip.to_string()),
                            EgressAddress::Cidr(net) => {
                                v1::egress_address::Kind::Cidr(net.to_string())
                            }
                            EgressAddress::PodSelf => {
                                v1::egress_address::Kind::PodSelf(v1::Empty {})
                            }
                            EgressAddress::Unspecified => {
                                v1::egress_address::Kind::Unspecified(v1::Empty {})
                            }
                        }),
                    }),
                    ports: ports_to_proto(&r.ports),
                    action: action_to_proto(r.action),
                    origin: Some(origin_to_proto(&r.origin)),
                })
                .collect(),
            egress_selectors: b
                .egress_selectors
                .iter()
                .map(|s| v1::EgressSelector {
                    target: Some(match &s.target {
                        EgressTarget::Service {
                            namespace,
                            name,
                            selector,
                        } => v1::egress_selector::Target::Service(v1::ServiceSelector {
                            namespace: namespace.clone().unwrap_or_default(),
                            name: name.clone().unwrap_or_default(),
                            selector: selector.as_ref().map(selector_to_proto),
                        }),
                        EgressTarget::Pod {
                            namespace,
                            selector,
                        } => v1::egress_selector::Target::Pod(v1::PodSelector {
                            namespace: namespace.clone().unwrap_or_default(),
                            selector: Some(selector_to_proto(selector)),
                        }),
                    }),
                    ports: ports_to_proto(&s.ports),
                    action: action_to_proto(s.action),
                    origin: Some(origin_to_proto(&s.origin)),
                })
                .collect(),
            ptrace: b
                .ptrace
                .iter()
                .map(|r| v1::PtraceRule {
                    permissions: r.permissions,
                    strict: r.strict,
                    action: action_to_proto(r.action),
                    origin: Some(origin_to_proto(&r.origin)),
                })
                .collect(),
            mounts: b
                .mounts
                .iter()
                .map(|r| v1::MountRule {
                    source: r.source.clone(),
                    fstype: r.fstype.clone(),
                    flags: r.flags,
                    reverse_flags: r.reverse_flags,
                    action: action_to_proto(r.action),
                    origin: Some(origin_to_proto(&r.origin)),
                })
                .collect(),
            mount_automaton: Some((&b.mount_automaton).into()),
        }
    }
}

impl TryFrom<v1::BpfProfile> for BpfProfile {
    type Error = ConvertError;

    fn try_from(b: v1::BpfProfile) -> Result<Self, ConvertError> {
        let f = "bundle.bpf";
        let capabilities = b
            .capabilities
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                Ok(CapabilityRule {
                    capabilities: r.capabilities,
                    action: action_from_proto(r.action, &format!("{f}.capabilities[{i}]"))?,
                    origin: origin_from_proto(r.origin),
                })
            })
            .collect::<Result<_, ConvertError>>()?;
        let files: Vec<PathRule> = b
            .files
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                Ok(PathRule {
                    pattern: r.pattern,
                    permissions: r.permissions,
                    action: action_from_proto(r.action, &format!("{f}.files[{i}]"))?,
                    origin: origin_from_proto(r.origin),
                })
            })
            .collect::<Result<_, ConvertError>>()?;
        let path_automaton =
            automaton_from_proto(b.path_automaton, &format!("{f}.path_automaton"))?;
        if path_automaton
            .match_sets
            .iter()
            .flatten()
            .any(|&id| id as usize >= files.len())
        {
            return Err(bad(
                format!("{f}.path_automaton.match_sets"),
                "a pattern id names no file rule",
            ));
        }
        if b.path_verdicts.len() != path_automaton.match_sets.len() {
            return Err(bad(
                format!("{f}.path_verdicts"),
                "one verdict per match set is required",
            ));
        }
        let sockets = b
            .sockets
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                Ok(SocketRule {
                    domains: r.domains,
                    types: r.types,
                    protocols: r.protocols,
                    action: action_from_proto(r.action, &format!("{f}.sockets[{i}]"))?,
                    origin: origin_from_proto(r.origin),
                })
            })
            .collect::<Result<_, ConvertError>>()?;
        let egress = b
            .egress
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                let field = format!("{f}.egress[{i}]");
                let address = match r.address.and_then(|a| a.kind) {
                    Some(v1::egress_address::Kind::Any(_)) => EgressAddress::Any,
                    Some(v1::egress_address::Kind::Ip(ip)) => {
                        EgressAddress::Ip(ip.parse().map_err(|e| {
                            bad(format!("{field}.address.ip"), format!("{ip:?}: {e}"))
                        })?)
                    }
                    Some(v1::egress_address::Kind::Cidr(c)) => {
                        EgressAddress::Cidr(c.parse().map_err(|e| {
                            bad(format!("{field}.address.cidr"), format!("{c:?}: {e}"))
                        })?)
                    }
                    Some(v1::egress_address::Kind::PodSelf(_)) => EgressAddress::PodSelf,
                    Some(v1::egress_address::Kind::Unspecified(_)) => EgressAddress::Unspecified,
                    None => return Err(bad(format!("{field}.address"), "missing")),
                };
                Ok(EgressRule {
                    address,
                    ports: ports_from_proto(r.ports, &field)?,
                    action: action_from_proto(r.action, &field)?,
                    origin: origin_from_proto(r.origin),
                })
            })
            .collect::<Result<_, ConvertError>>()?;
        let egress_selectors = b
            .egress_selectors
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                let field = format!("{f}.egress_selectors[{i}]");
                let non_empty = |s: String| (!s.is_empty()).then_some(s);
                let target = match s.target {
                    Some(v1::egress_selector::Target::Service(svc)) => EgressTarget::Service {
                        namespace: non_empty(svc.namespace),
                        name: non_empty(svc.name),
                        selector: svc.selector.map(selector_from_proto),
                    },
                    Some(v1::egress_selector::Target::Pod(pod)) => EgressTarget::Pod {
                        namespace: non_empty(pod.namespace),
                        selector: selector_from_proto(pod.selector.unwrap_or_default()),
                    },
                    None => return Err(bad(format!("{field}.target"), "missing")),
                };
                Ok(EgressSelector {
                    target,
                    ports: ports_from_proto(s.ports, &field)?,
                    action: action_from_proto(s.action, &field)?,
                    origin: origin_from_proto(s.origin),
                })
            })
            .collect::<Result<_, ConvertError>>()?;
        let ptrace = b
            .ptrace
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                Ok(PtraceRule {
                    permissions: r.permissions,
                    strict: r.strict,
                    action: action_from_proto(r.action, &format!("{f}.ptrace[{i}]"))?,
                    origin: origin_from_proto(r.origin),
                })
            })
            .collect::<Result<_, ConvertError>>()?;
        let mounts: Vec<MountRule> = b
            .mounts
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                Ok(MountRule {
                    source: r.source,
                    fstype: r.fstype,
                    flags: r.flags,
                    reverse_flags: r.reverse_flags,
                    action: action_from_proto(r.action, &format!("{f}.mounts[{i}]"))?,
                    origin: origin_from_proto(r.origin),
                })
            })
            .collect::<Result<_, ConvertError>>()?;
        let mount_automaton =
            automaton_from_proto(b.mount_automaton, &format!("{f}.mount_automaton"))?;
        if mount_automaton
            .match_sets
            .iter()
            .flatten()
            .any(|&id| id as usize >= mounts.len())
        {
            return Err(bad(
                format!("{f}.mount_automaton.match_sets"),
                "a pattern id names no mount rule",
            ));
        }
        Ok(BpfProfile {
            mode: if b.complain {
                BpfMode::Complain
            } else {
                BpfMode::Enforce
            },
            capabilities,
            files,
            path_automaton,
            path_verdicts: b
                .path_verdicts
                .into_iter()
                .map(|v| PathVerdict {
                    deny: v.deny,
                    deny_audit: v.deny_audit,
                    audit: v.audit,
                    complain: v.complain,
                })
                .collect(),
            sockets,
            egress,
            egress_selectors,
            ptrace,
            mounts,
            mount_automaton,
        })
    }
}

impl From<&NodeFacts> for v1::NodeFacts {
    fn from(f: &NodeFacts) -> Self {
        v1::NodeFacts {
            disk_devices: f.disk_devices.clone().unwrap_or_default(),
            disk_devices_known: f.disk_devices.is_some(),
            kernel_release: String::new(),
            architecture: String::new(),
        }
    }
}

impl From<&v1::NodeFacts> for NodeFacts {
    fn from(f: &v1::NodeFacts) -> Self {
        NodeFacts {
            disk_devices: f.disk_devices_known.then(|| f.disk_devices.clone()),
        }
    }
}

/// A validation error as the proto message.
pub fn field_error_to_proto(e: &crate::FieldError) -> v1::FieldError {
    v1::FieldError {
        path: e.path.clone(),
        reason: e.reason.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{compile, parse_documents};

    #[test]
    fn bundles_round_trip() {
        let yaml = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/examples/vpol-bpf-enhance-protect.yaml"
        ))
        .expect("example");
        let doc = parse_documents(&yaml).remove(0).expect("valid");
        let mut spec = doc.spec();
        spec.policy.enforcer = "AppArmorBPFSeccomp".into();
        let bundle = compile(
            &spec,
            &doc.identity("varmor"),
            &NodeFacts {
                disk_devices: Some(vec!["sda".into()]),
            },
        )
        .expect("compile");
        let revised = RevisedBundle {
            bundle,
            revision: 42,
        };
        let proto: v1::ProfileBundle = (&revised).into();
        let back = RevisedBundle::try_from(proto).expect("convert back");
        assert_eq!(back, revised);
    }

    #[test]
    fn broken_tables_are_rejected_with_the_field() {
        let mut a: v1::Automaton = (&Automaton::empty()).into();
        a.transitions = vec![7];
        let err =
            automaton_from_proto(Some(a), "bundle.bpf.path_automaton").expect_err("bad state");
        assert_eq!(err.field, "bundle.bpf.path_automaton.transitions");
    }
}
