//! BPF back end: the rule set and tables the node agent loads into its BPF-LSM maps.
//!
//! What the rules mean is defined by [`crate::decide`]; this module only builds them:
//! * the RuntimeDefault base (unless `privileged`), then the built-in rules, then the raw
//!   rules, each tagged with the policy field it comes from;
//! * every file and exec pattern of the profile compiled into one [`Automaton`], with a
//!   [`PathVerdict`] per accepting row so the kernel decides with one table walk;
//! * every mount source pattern into a second automaton, whose match sets name the mount
//!   rules to check (fstype and flags) — the kernel never loops over unrelated rules.
//!
//! Differences from vArmor (see the crate docs of [`crate::glob`] for patterns): raw mount
//! rules are kept for non-privileged policies too (vArmor drops them; the RuntimeDefault base
//! already denies new mounts, but raw rules can also name umount and audit); rules of
//! `attackProtectionRules` entries that have `targets` are skipped, as in vArmor, because only
//! AppArmor can scope rules to an executable.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{Context, ENHANCE_PROTECT};
use crate::api::{Destination, NetworkSocketRule, PolicyMode, Port};
use crate::automaton::Automaton;
use crate::bundle::{
    BpfMode, BpfProfile, CapabilityRule, EgressAddress, EgressRule, EgressSelector, EgressTarget,
    MountRule, PathRule, PathVerdict, PortRange, PtraceRule, RuleAction, RuleOrigin, SocketRule,
};
use crate::catalog::BpfFragment;
use crate::error::FieldErrors;
use crate::glob::Pattern;
use crate::names::{self, mount, perm, ptrace};

/// Field name of the RuntimeDefault base rules in [`RuleOrigin::field`].
pub const RUNTIME_DEFAULT_ORIGIN: &str = "runtimeDefault";

/// Files the RuntimeDefault base protects (read, write, append).
const RUNTIME_DEFAULT_FILES: &[&str] = &[
    "/proc/sysrq-trigger",
    "/proc/**/mem",
    "/proc/kmem",
    "/proc/kcore",
    "/sys/firmware/**",
    "/sys/devices/virtual/powercap/**",
    "/sys/kernel/security/**",
];

/// Builds the BPF rule set of a policy.
pub fn compile(ctx: &Context<'_>, warnings: &mut Vec<String>) -> Result<BpfProfile, FieldErrors> {
    let mut b = Builder::default();
    let mode = match ctx.mode {
        PolicyMode::AlwaysAllow => BpfMode::Enforce,
        PolicyMode::RuntimeDefault => {
            b.runtime_default(RuleAction::Deny);
            BpfMode::Enforce
        }
        PolicyMode::EnhanceProtect => {
            let action = ctx.rule_action();
            if !ctx.privileged() {
                b.runtime_default(action);
            }
            b.builtins(ctx, action);
            b.raw_rules(ctx, action);
            BpfMode::Enforce
        }
        // Modeling observes: nothing is blocked and every hooked operation is reported.
        PolicyMode::BehaviorModeling => BpfMode::Complain,
        PolicyMode::DefenseInDepth => {
            let mut e = FieldErrors::new();
            e.push(
                "spec.policy.enforcer",
                "the DefenseInDepth mode is not supported by the BPF enforcer",
            );
            return Err(e);
        }
    };
    if !b.egress_selectors.is_empty() {
        warnings.push(
            "BPF egress rules on services or pods are resolved by the manager from the Kubernetes API; without it they match nothing".to_string(),
        );
    }
    b.finish(mode)
}

#[derive(Default)]
struct Builder {
    capabilities: Vec<CapabilityRule>,
    files: Vec<PathRule>,
    sockets: Vec<SocketRule>,
    egress: Vec<EgressRule>,
    egress_selectors: Vec<EgressSelector>,
    ptrace: Vec<PtraceRule>,
    mounts: Vec<MountRule>,
    errors: FieldErrors,
}

fn origin(field: impl Into<String>, builtin: Option<&str>) -> RuleOrigin {
    RuleOrigin {
        field: field.into(),
        builtin: builtin.map(str::to_string),
    }
}

impl Builder {
    fn runtime_default(&mut self, action: RuleAction) {
        let o = || origin(RUNTIME_DEFAULT_ORIGIN, None);
        for p in RUNTIME_DEFAULT_FILES {
            self.file(p, perm::READ | perm::WRITE | perm::APPEND, action, o());
        }
        // Every new mount and move; umount stays allowed.
        self.mount(
            "**",
            "*",
            mount::ALL & !mount::UMOUNT,
            mount::ALL,
            action,
            o(),
        );
        // Tracing or reading processes outside the container.
        self.ptrace.push(PtraceRule {
            permissions: ptrace::TRACE | ptrace::READ,
            strict: false,
            action,
            origin: o(),
        });
    }

    fn file(&mut self, pattern: &str, permissions: u32, action: RuleAction, origin: RuleOrigin) {
        self.files.push(PathRule {
            pattern: pattern.to_string(),
            permissions,
            action,
            origin,
        });
    }

    fn mount(
        &mut self,
        source: &str,
        fstype: &str,
        flags: u32,
        reverse: u32,
        action: RuleAction,
        origin: RuleOrigin,
    ) {
        self.mounts.push(MountRule {
            source: source.to_string(),
            fstype: fstype.to_string(),
            flags,
            reverse_flags: reverse,
            action,
            origin,
        });
    }

    fn builtins(&mut self, ctx: &Context<'_>, action: RuleAction) {
        for sel in ctx.builtins() {
            if !sel.targets.is_empty() {
                continue;
            }
            let o = || origin(sel.field.clone(), Some(sel.rule.name));
            for frag in sel.rule.bpf {
                match *frag {
                    BpfFragment::File {
                        pattern,
                        permissions,
                    } => self.file(pattern, permissions, action, o()),
                    BpfFragment::Exec { pattern } => self.file(pattern, perm::EXEC, action, o()),
                    BpfFragment::Capabilities(caps) => self.capabilities.push(CapabilityRule {
                        capabilities: caps,
                        action,
                        origin: o(),
                    }),
                    BpfFragment::Socket {
                        domains,
                        types,
                        protocols,
                    } => self.sockets.push(SocketRule {
                        domains,
                        types,
                        protocols,
                        action,
                        origin: o(),
                    }),
                    BpfFragment::Connect(ip) => match ip.parse::<IpAddr>() {
                        Ok(ip) => self.egress.push(EgressRule {
                            address: EgressAddress::Ip(ip),
                            ports: Vec::new(),
                            action,
                            origin: o(),
                        }),
                        Err(e) => self
                            .errors
                            .push(sel.field.clone(), format!("built-in address {ip:?}: {e}")),
                    },
                    BpfFragment::ServiceEgress { namespace, name } => {
                        self.egress_selectors.push(EgressSelector {
                            target: EgressTarget::Service {
                                namespace: Some(namespace.to_string()),
                                name: Some(name.to_string()),
                                selector: None,
                            },
                            ports: Vec::new(),
                            action,
                            origin: o(),
                        })
                    }
                    BpfFragment::Ptrace {
                        permissions,
                        strict,
                    } => self.ptrace.push(PtraceRule {
                        permissions,
                        strict,
                        action,
                        origin: o(),
                    }),
                    BpfFragment::Mount {
                        source,
                        fstype,
                        flags,
                        reverse_flags,
                        privileged_only,
                    } => {
                        if ctx.privileged() || !privileged_only {
                            self.mount(source, fstype, flags, reverse_flags, action, o());
                        }
                    }
                    BpfFragment::DiskDeviceFiles { permissions } => {
                        for dev in ctx.facts.disk_device_names() {
                            self.file(&format!("/dev/{dev}"), permissions, action, o());
                        }
                    }
                    BpfFragment::DiskDeviceMounts => {
                        if ctx.privileged() {
                            for dev in ctx.facts.disk_device_names() {
                                self.mount(
                                    &format!("/dev/{dev}"),
                                    "*",
                                    mount::ALL & !mount::UMOUNT,
                                    mount::ALL,
                                    action,
                                    o(),
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    fn raw_rules(&mut self, ctx: &Context<'_>, action: RuleAction) {
        let Some(raw) = &ctx.enhance.bpf_raw_rules else {
            return;
        };
        let base = format!("{ENHANCE_PROTECT}.bpfRawRules");
        for (list, rules) in [("files", &raw.files), ("processes", &raw.processes)] {
            for (i, r) in rules.iter().enumerate() {
                let permissions = r
                    .permissions
                    .iter()
                    .filter_map(|p| names::file_permission(p))
                    .fold(0, |a, b| a | b);
                self.file(
                    &r.pattern,
                    permissions,
                    action,
                    origin(format!("{base}.{list}[{i}]"), None),
                );
            }
        }
        if let Some(net) = &raw.network {
            for (i, s) in net.sockets.iter().enumerate() {
                let (domains, types, protocols) = socket_masks(s);
                self.sockets.push(SocketRule {
                    domains,
                    types,
                    protocols,
                    action,
                    origin: origin(format!("{base}.network.sockets[{i}]"), None),
                });
            }
            if let Some(egress) = &net.egress {
                for (i, d) in egress.to_destinations.iter().enumerate() {
                    let field = format!("{base}.network.egress.toDestinations[{i}]");
                    match destination_addresses(d) {
                        Ok(addrs) => {
                            let ports = port_ranges(&d.ports);
                            for address in addrs {
                                let rule = EgressRule {
                                    address,
                                    ports: ports.clone(),
                                    action,
                                    origin: origin(field.clone(), None),
                                };
                                // Identical destinations written twice are one rule.
                                if !self.egress.iter().any(|e| {
                                    e.address == rule.address
                                        && e.ports == rule.ports
                                        && e.action == rule.action
                                }) {
                                    self.egress.push(rule);
                                }
                            }
                        }
                        Err(reason) => self.errors.push(field, reason),
                    }
                }
                for (i, s) in egress.to_services.iter().enumerate() {
                    self.egress_selectors.push(EgressSelector {
                        target: EgressTarget::Service {
                            namespace: s.namespace.clone().filter(|n| !n.is_empty()),
                            name: s.name.clone().filter(|n| !n.is_empty()),
                            selector: s.service_selector.clone(),
                        },
                        ports: Vec::new(),
                        action,
                        origin: origin(format!("{base}.network.egress.toServices[{i}]"), None),
                    });
                }
                for (i, p) in egress.to_pods.iter().enumerate() {
                    self.egress_selectors.push(EgressSelector {
                        target: EgressTarget::Pod {
                            namespace: p.namespace.clone().filter(|n| !n.is_empty()),
                            selector: p.pod_selector.clone(),
                        },
                        ports: port_ranges(&p.ports),
                        action,
                        origin: origin(format!("{base}.network.egress.toPods[{i}]"), None),
                    });
                }
            }
        }
        if let Some(pt) = &raw.ptrace {
            let permissions = pt
                .permissions
                .iter()
                .filter_map(|p| names::ptrace_permission(p))
                .fold(0, |a, b| a | b);
            self.ptrace.push(PtraceRule {
                permissions,
                strict: pt.strict_mode,
                action,
                origin: origin(format!("{base}.ptrace"), None),
            });
        }
        for (i, m) in raw.mounts.iter().enumerate() {
            let (flags, reverse) = m
                .flags
                .iter()
                .filter_map(|f| names::mount_flag(f))
                .fold((0, 0), |(a, b), (f, r)| (a | f, b | r));
            self.mount(
                &m.source_pattern,
                &m.fstype,
                flags,
                reverse,
                action,
                origin(format!("{base}.mounts[{i}]"), None),
            );
        }
    }

    fn finish(mut self, mode: BpfMode) -> Result<BpfProfile, FieldErrors> {
        let mut errors = std::mem::take(&mut self.errors);
        let path_automaton = automaton(
            self.files.iter().map(|r| (r.pattern.as_str(), &r.origin)),
            "files",
            &mut errors,
        );
        let mount_automaton = automaton(
            self.mounts.iter().map(|r| (r.source.as_str(), &r.origin)),
            "mounts",
            &mut errors,
        );
        let (path_automaton, mount_automaton) = match (path_automaton, mount_automaton) {
            (Some(p), Some(m)) if errors.is_empty() => (p, m),
            _ => return Err(errors),
        };
        let path_verdicts = path_verdicts(&self.files, &path_automaton);
        Ok(BpfProfile {
            mode,
            capabilities: self.capabilities,
            files: self.files,
            path_automaton,
            path_verdicts,
            sockets: self.sockets,
            egress: self.egress,
            egress_selectors: self.egress_selectors,
            ptrace: self.ptrace,
            mounts: self.mounts,
            mount_automaton,
        })
    }
}

/// The automaton of some rules' patterns; problems are recorded against the rules' fields.
fn automaton<'a>(
    patterns: impl Iterator<Item = (&'a str, &'a RuleOrigin)>,
    what: &str,
    errors: &mut FieldErrors,
) -> Option<Automaton> {
    let mut parsed = Vec::new();
    let mut ok = true;
    for (p, o) in patterns {
        match Pattern::parse(p) {
            Ok(p) => parsed.push(p),
            Err(e) => {
                errors.push(o.field.clone(), format!("pattern {p:?}: {e}"));
                ok = false;
            }
        }
    }
    if !ok {
        return None;
    }
    match Automaton::build(&parsed) {
        Ok(a) => Some(a),
        Err(e) => {
            errors.push(
                format!("{ENHANCE_PROTECT}.bpfRawRules.{what}"),
                e.to_string(),
            );
            None
        }
    }
}

/// The verdict masks of every match set of `automaton`, whose pattern ids index `files`.
pub fn path_verdicts(files: &[PathRule], automaton: &Automaton) -> Vec<PathVerdict> {
    automaton
        .match_sets
        .iter()
        .map(|set| verdict(files, set))
        .collect()
}

/// The permission masks, per action, of the rules in a match set.
fn verdict(files: &[PathRule], set: &[u32]) -> PathVerdict {
    let mut v = PathVerdict::default();
    for &id in set {
        let r = &files[id as usize];
        let slot = match r.action {
            RuleAction::Deny => &mut v.deny,
            RuleAction::DenyAudit => &mut v.deny_audit,
            RuleAction::Audit => &mut v.audit,
            RuleAction::Complain => &mut v.complain,
        };
        *slot |= r.permissions;
    }
    v
}

/// Masks of a socket rule; `all`/`*` sets every bit of its kind.
fn socket_masks(s: &NetworkSocketRule) -> (u64, u64, u64) {
    let all = |v: &str| v == "all" || v == "*";
    let mut domains = 0u64;
    for d in &s.domains {
        if all(d) {
            domains |= (1u64 << names::AF_MAX) - 1;
        } else if let Some(n) = names::socket_domain(d) {
            domains |= 1u64 << n;
        }
    }
    let mut types = 0u64;
    for t in &s.types {
        if all(t) {
            types |= names::SOCKET_TYPES
                .iter()
                .fold(0, |m, (_, n)| m | 1u64 << n);
        } else if let Some(n) = names::socket_type(t) {
            types |= 1u64 << n;
        }
    }
    let mut protocols = 0u64;
    for p in &s.protocols {
        let nums: Vec<u32> = if all(p) {
            names::SOCKET_PROTOCOLS
                .iter()
                .flat_map(|(_, n)| n.iter().copied())
                .collect()
        } else {
            names::socket_protocol(p)
                .map(<[u32]>::to_vec)
                .unwrap_or_default()
        };
        for n in nums {
            protocols |= 1u64 << n;
        }
    }
    (domains, types, protocols)
}

/// The addresses of a destination: `localhost` is two rules (127.0.0.1 and ::1).
fn destination_addresses(d: &Destination) -> Result<Vec<EgressAddress>, String> {
    if let Some(cidr) = d.cidr.as_deref().filter(|c| !c.is_empty()) {
        return cidr
            .parse::<ipnet::IpNet>()
            .map(|n| vec![EgressAddress::Cidr(n.trunc())])
            .map_err(|e| format!("cidr {cidr:?}: {e}"));
    }
    match d.ip.as_deref().filter(|i| !i.is_empty()) {
        None => Ok(vec![EgressAddress::Any]),
        Some("pod-self") => Ok(vec![EgressAddress::PodSelf]),
        Some("unspecified") => Ok(vec![EgressAddress::Unspecified]),
        Some("localhost") => Ok(vec![
            EgressAddress::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            EgressAddress::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        ]),
        Some(ip) => ip
            .parse::<IpAddr>()
            .map(|ip| vec![EgressAddress::Ip(ip)])
            .map_err(|e| format!("ip {ip:?}: {e}")),
    }
}

/// Ports as sorted, merged inclusive ranges; empty means every port.
pub fn port_ranges(ports: &[Port]) -> Vec<PortRange> {
    let mut ranges: Vec<PortRange> = ports
        .iter()
        .map(|p| PortRange {
            first: p.port,
            last: p.end_port.unwrap_or(p.port).max(p.port),
        })
        .collect();
    ranges.sort();
    let mut merged: Vec<PortRange> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match merged.last_mut() {
            Some(last) if u32::from(r.first) <= u32::from(last.last) + 1 => {
                last.last = last.last.max(r.last)
            }
            _ => merged.push(r),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_are_merged_and_sorted() {
        let p = |port, end_port| Port { port, end_port };
        assert_eq!(
            port_ranges(&[
                p(443, None),
                p(80, Some(81)),
                p(82, None),
                p(8000, Some(9000)),
                p(8500, Some(8600))
            ]),
            vec![
                PortRange {
                    first: 80,
                    last: 82
                },
                PortRange {
                    first: 443,
                    last: 443
                },
                PortRange {
                    first: 8000,
                    last: 9000
                }
            ]
        );
        assert!(port_ranges(&[]).is_empty());
    }

    #[test]
    fn localhost_is_both_loopbacks() {
        let d = Destination {
            ip: Some("localhost".into()),
            ..Default::default()
        };
        assert_eq!(destination_addresses(&d).expect("ok").len(), 2);
        let d = Destination {
            cidr: Some("10.1.2.3/8".into()),
            ..Default::default()
        };
        assert_eq!(
            destination_addresses(&d).expect("ok"),
            vec![EgressAddress::Cidr("10.0.0.0/8".parse().expect("net"))]
        );
    }
}
