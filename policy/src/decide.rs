//! The reference matcher: what a compiled BPF rule set does to one access.
//!
//! [`decide`] defines the semantics by going through the rules one by one; the BPF enforcer
//! must reach the same verdict with its tables, and [`decide_with_tables`] does what the kernel
//! does (automaton walk and verdict masks) so tests can compare the two.
//!
//! # Semantics
//!
//! * A profile in complain mode allows everything and reports every access as `ALLOWED`.
//! * Otherwise the rules that match the access are collected. If any of them denies, the access
//!   is denied (a deny always wins), with a `DENIED` event when a matching deny rule audits.
//!   Else a matching audit rule allows with an `AUDIT` event, else a matching complain rule
//!   allows with an `ALLOWED` event, else the access is allowed silently.
//! * Files and programs: a rule matches when its pattern matches the path ([`crate::glob`])
//!   and its permissions overlap the requested ones (a `read` rule also blocks `O_RDWR`).
//! * Capabilities: the rule's mask has the capability's bit.
//! * Sockets: every non-zero mask of the rule has the bit of the call's value. The type is
//!   taken without `SOCK_NONBLOCK`/`SOCK_CLOEXEC`, and protocol 0 of an `inet`/`inet6` stream
//!   or datagram socket counts as TCP or UDP, which is what the kernel picks.
//! * connect(2): IPv4-mapped IPv6 addresses are compared as IPv4; `pod-self` matches the pod's
//!   own addresses; no ports in the rule means every port.
//! * ptrace: a non-strict rule only matches a peer in another container (mount namespace); a
//!   tracer in the host's initial mount namespace is never denied on the traced side.
//! * mount(2): the fstype is compared as `none` for remount, bind, move and propagation
//!   changes; the rule matches when the fstype matches, the source matches its pattern, and the
//!   call sets one of its flags or leaves one of its reverse flags unset. umount(2) and
//!   move_mount(2) match on the forward flags `umount` and `move` only.

use std::net::IpAddr;

use serde::Serialize;

use crate::bundle::{BpfMode, BpfProfile, EgressAddress, MountRule, RuleAction, RuleOrigin};
use crate::glob::Pattern;
use crate::names::{mount, perm, ptrace};

/// One operation of a confined process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    /// Opening (or linking, renaming, ...) a file with these permission bits
    /// ([`crate::names::perm`]).
    File {
        /// The path as the process sees it.
        path: String,
        /// Requested permission bits.
        permissions: u32,
    },
    /// Executing a program.
    Exec {
        /// The program path.
        path: String,
    },
    /// Using a capability (its number).
    Capability(u32),
    /// socket(2).
    Socket {
        /// `AF_*`.
        domain: u32,
        /// `SOCK_*` (flags are ignored).
        type_: u32,
        /// `IPPROTO_*` as passed (0 = default).
        protocol: u32,
    },
    /// connect(2) to an IP address and port.
    Connect {
        /// Destination address.
        address: IpAddr,
        /// Destination port.
        port: u16,
        /// The pod's own addresses (for `pod-self` rules).
        pod_addresses: Vec<IpAddr>,
    },
    /// A ptrace access check.
    Ptrace {
        /// One of trace, read (this process acts) or traceby, readby (it is the target).
        permission: u32,
        /// Whether the peer is in another mount namespace (another container or the host).
        external: bool,
        /// Whether the peer is in the host's initial mount namespace.
        peer_is_host: bool,
    },
    /// mount(2).
    Mount {
        /// The source string.
        source: String,
        /// The filesystem type string.
        fstype: String,
        /// `MS_*` flags.
        flags: u32,
    },
    /// umount(2) of a mount point.
    Umount {
        /// The mount point.
        path: String,
    },
    /// move_mount(2) from a path.
    MoveMount {
        /// The path moved.
        path: String,
    },
}

/// Whether the access goes ahead.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Decision {
    /// Allowed.
    Allow,
    /// Denied with EPERM.
    Deny,
}

/// The event the access produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum EventAction {
    /// Denied and audited.
    #[serde(rename = "DENIED")]
    Denied,
    /// Allowed and audited.
    #[serde(rename = "AUDIT")]
    Audit,
    /// Allowed, reported because violations are allowed (or modeling).
    #[serde(rename = "ALLOWED")]
    Allowed,
}

impl EventAction {
    /// The name used in violation logs.
    pub fn as_str(self) -> &'static str {
        match self {
            EventAction::Denied => "DENIED",
            EventAction::Audit => "AUDIT",
            EventAction::Allowed => "ALLOWED",
        }
    }
}

/// The outcome of an access.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// Allow or deny.
    pub decision: Decision,
    /// The event, if any.
    pub event: Option<EventAction>,
    /// The rule that decided (none when nothing matched or in complain mode).
    pub rule: Option<RuleOrigin>,
    /// Every rule that matched, in profile order.
    pub matched: Vec<RuleOrigin>,
}

impl Verdict {
    fn allow_silently() -> Verdict {
        Verdict {
            decision: Decision::Allow,
            event: None,
            rule: None,
            matched: Vec::new(),
        }
    }
}

/// Combines the matching rules (in profile order) into a verdict: the first rule with the
/// strongest action decides (deny with audit, deny, audit, complain).
fn combine(matches: Vec<(RuleAction, &RuleOrigin)>) -> Verdict {
    const ORDER: [(RuleAction, Decision, Option<EventAction>); 4] = [
        (
            RuleAction::DenyAudit,
            Decision::Deny,
            Some(EventAction::Denied),
        ),
        (RuleAction::Deny, Decision::Deny, None),
        (RuleAction::Audit, Decision::Allow, Some(EventAction::Audit)),
        (
            RuleAction::Complain,
            Decision::Allow,
            Some(EventAction::Allowed),
        ),
    ];
    for (action, decision, event) in ORDER {
        if let Some((_, origin)) = matches.iter().find(|(a, _)| *a == action) {
            return Verdict {
                decision,
                event,
                rule: Some((*origin).clone()),
                matched: matches.iter().map(|(_, o)| (*o).clone()).collect(),
            };
        }
    }
    Verdict::allow_silently()
}

/// The string a mount rule's source pattern is matched against, and what else of the rule
/// must match, for mount(2), umount(2) and move_mount(2).
struct MountCheck<'a> {
    source: &'a str,
    /// `Some((fstype, flags))` for mount(2); `None` for umount/move_mount, which match on the
    /// forward flag `flag` only.
    mount: Option<(&'a str, u32)>,
    flag: u32,
}

impl<'a> MountCheck<'a> {
    fn of(access: &'a Access) -> Option<MountCheck<'a>> {
        match access {
            Access::Mount {
                source,
                fstype,
                flags,
            } => Some(MountCheck {
                source,
                mount: Some((effective_fstype(fstype, *flags), *flags)),
                flag: 0,
            }),
            Access::Umount { path } => Some(MountCheck {
                source: path,
                mount: None,
                flag: mount::UMOUNT,
            }),
            Access::MoveMount { path } => Some(MountCheck {
                source: path,
                mount: None,
                flag: mount::MOVE,
            }),
            _ => None,
        }
    }

    /// Whether the rule's fstype and flags match (its source pattern is checked apart).
    fn rule_matches(&self, r: &MountRule) -> bool {
        match self.mount {
            Some((fs, flags)) => {
                (flags & r.flags != 0 || !flags & r.reverse_flags != 0)
                    && (r.fstype == "*" || r.fstype == fs)
            }
            None => r.flags & self.flag != 0 && (r.fstype == "*" || r.fstype == "none"),
        }
    }
}

/// The socket type without `SOCK_NONBLOCK` / `SOCK_CLOEXEC`.
pub fn socket_type(type_: u32) -> u32 {
    type_ & 0xf
}

/// The protocol the kernel uses: 0 on an inet/inet6 stream or datagram socket means TCP or
/// UDP.
pub fn effective_protocol(domain: u32, type_: u32, protocol: u32) -> u32 {
    match (domain, socket_type(type_), protocol) {
        (2 | 10, 1, 0) => 6,
        (2 | 10, 2, 0) => 17,
        _ => protocol,
    }
}

/// IPv4-mapped IPv6 addresses as IPv4.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn address_matches(rule: &EgressAddress, ip: IpAddr, pod: &[IpAddr]) -> bool {
    let ip = canonical_ip(ip);
    match rule {
        EgressAddress::Any => true,
        EgressAddress::Ip(r) => canonical_ip(*r) == ip,
        EgressAddress::Cidr(net) => match (net, ip) {
            (ipnet::IpNet::V4(n), IpAddr::V4(a)) => n.contains(&a),
            (ipnet::IpNet::V6(n), IpAddr::V6(a)) => n.contains(&a),
            _ => false,
        },
        EgressAddress::PodSelf => pod.iter().any(|p| canonical_ip(*p) == ip),
        EgressAddress::Unspecified => ip.is_unspecified(),
    }
}

/// The fstype a mount(2) call is compared with.
pub fn effective_fstype(fstype: &str, flags: u32) -> &str {
    if flags & mount::NON_NEW_MOUNT != 0 {
        "none"
    } else {
        fstype
    }
}

fn pattern_matches(pattern: &str, input: &str) -> bool {
    Pattern::parse(pattern).is_ok_and(|p| p.matches(input.as_bytes()))
}

/// The reference verdict: goes through every rule.
pub fn decide(profile: &BpfProfile, access: &Access) -> Verdict {
    if profile.mode == BpfMode::Complain {
        return Verdict {
            decision: Decision::Allow,
            event: Some(EventAction::Allowed),
            rule: None,
            matched: Vec::new(),
        };
    }
    let mut m: Vec<(RuleAction, &RuleOrigin)> = Vec::new();
    match access {
        Access::File { path, permissions } => {
            for r in &profile.files {
                if r.permissions & permissions != 0 && pattern_matches(&r.pattern, path) {
                    m.push((r.action, &r.origin));
                }
            }
        }
        Access::Exec { path } => {
            for r in &profile.files {
                if r.permissions & perm::EXEC != 0 && pattern_matches(&r.pattern, path) {
                    m.push((r.action, &r.origin));
                }
            }
        }
        Access::Capability(cap) => {
            for r in &profile.capabilities {
                if *cap < 64 && r.capabilities & (1u64 << cap) != 0 {
                    m.push((r.action, &r.origin));
                }
            }
        }
        Access::Socket {
            domain,
            type_,
            protocol,
        } => {
            let t = socket_type(*type_);
            let p = effective_protocol(*domain, *type_, *protocol);
            let bit = |mask: u64, v: u32| mask == 0 || (v < 64 && mask & (1u64 << v) != 0);
            for r in &profile.sockets {
                if bit(r.domains, *domain) && bit(r.types, t) && bit(r.protocols, p) {
                    m.push((r.action, &r.origin));
                }
            }
        }
        Access::Connect {
            address,
            port,
            pod_addresses,
        } => {
            for r in &profile.egress {
                let port_ok = r.ports.is_empty()
                    || r.ports
                        .iter()
                        .any(|pr| pr.first <= *port && *port <= pr.last);
                if port_ok && address_matches(&r.address, *address, pod_addresses) {
                    m.push((r.action, &r.origin));
                }
            }
        }
        Access::Ptrace {
            permission,
            external,
            peer_is_host,
        } => {
            let traced_side = permission & (ptrace::TRACEBY | ptrace::READBY) != 0;
            if !(traced_side && *peer_is_host) {
                for r in &profile.ptrace {
                    if r.permissions & permission != 0 && (r.strict || *external) {
                        m.push((r.action, &r.origin));
                    }
                }
            }
        }
        Access::Mount { .. } | Access::Umount { .. } | Access::MoveMount { .. } => {
            if let Some(check) = MountCheck::of(access) {
                for r in &profile.mounts {
                    if check.rule_matches(r) && pattern_matches(&r.source, check.source) {
                        m.push((r.action, &r.origin));
                    }
                }
            }
        }
    }
    combine(m)
}

/// The verdict the way the BPF enforcer computes it: file and exec accesses walk the path
/// automaton and read the verdict masks; mount accesses walk the mount automaton and check only
/// the rules of the match set. Other accesses are the same as [`decide`]. Only the decision
/// and the event are compared with [`decide`] (the tables do not say which rule decided).
pub fn decide_with_tables(
    profile: &BpfProfile,
    access: &Access,
) -> (Decision, Option<EventAction>) {
    if profile.mode == BpfMode::Complain {
        return (Decision::Allow, Some(EventAction::Allowed));
    }
    let path_verdict = |path: &str, requested: u32| {
        // One accept row per walk; the kernel ORs the rows' masks.
        let mut v = crate::bundle::PathVerdict::default();
        for row in profile.path_automaton.accept_rows(path.as_bytes()) {
            let r = profile.path_verdicts[row];
            v.deny |= r.deny;
            v.deny_audit |= r.deny_audit;
            v.audit |= r.audit;
            v.complain |= r.complain;
        }
        if v.deny_audit & requested != 0 {
            (Decision::Deny, Some(EventAction::Denied))
        } else if v.deny & requested != 0 {
            (Decision::Deny, None)
        } else if v.audit & requested != 0 {
            (Decision::Allow, Some(EventAction::Audit))
        } else if v.complain & requested != 0 {
            (Decision::Allow, Some(EventAction::Allowed))
        } else {
            (Decision::Allow, None)
        }
    };
    match access {
        Access::File { path, permissions } => path_verdict(path, *permissions),
        Access::Exec { path } => path_verdict(path, perm::EXEC),
        Access::Mount { .. } | Access::Umount { .. } | Access::MoveMount { .. } => {
            let Some(check) = MountCheck::of(access) else {
                unreachable!("a mount access")
            };
            let m = profile
                .mount_automaton
                .run(check.source.as_bytes())
                .iter()
                .map(|&i| &profile.mounts[i as usize])
                .filter(|r| check.rule_matches(r))
                .map(|r| (r.action, &r.origin))
                .collect();
            let v = combine(m);
            (v.decision, v.event)
        }
        _ => {
            let v = decide(profile, access);
            (v.decision, v.event)
        }
    }
}
