//! The compiled form of a policy: everything a node needs to enforce it.
//!
//! These are domain types; the gRPC layer converts them to protobuf at its edge.

use serde::{Deserialize, Serialize};

use crate::api::{PolicyMode, Target};
use crate::automaton::Automaton;
use crate::enforcer::EnforcerSet;
use crate::identity::PolicyIdentity;

/// Everything a node needs to enforce one policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProfileBundle {
    /// The policy the bundle comes from.
    pub identity: PolicyIdentity,
    /// The profile name (AppArmor profile, seccomp file and BPF profile key).
    pub profile_name: String,
    /// Which workloads and containers the profile applies to.
    pub target: Target,
    /// The enforcers of the policy.
    pub enforcers: EnforcerSet,
    /// The policy mode.
    pub mode: PolicyMode,
    /// The AppArmor profile, when the AppArmor enforcer is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apparmor: Option<AppArmorProfile>,
    /// The BPF rule set, when the BPF enforcer is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpf: Option<BpfProfile>,
    /// The seccomp setting, when the Seccomp enforcer is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seccomp: Option<SeccompProfile>,
    /// Modeling settings while the mode is BehaviorModeling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modeling: Option<Modeling>,
    /// Things the user should know that are not errors (e.g. a rule an enforcer ignores).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// BehaviorModeling settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Modeling {
    /// Duration of the modeling, in minutes.
    pub duration_minutes: u64,
}

/// An AppArmor profile.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppArmorProfile {
    /// Profile name (as declared in the text).
    pub name: String,
    /// The profile text, ready for `apparmor_parser`.
    pub text: String,
    /// Load in complain mode (`apparmor_parser -C`); the text carries the `complain` flag too.
    pub complain: bool,
}

/// The seccomp setting of a bundle.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "type")]
pub enum SeccompProfile {
    /// Use the container runtime's default profile (`seccompProfile.type: RuntimeDefault`).
    RuntimeDefault,
    /// Use this profile (`seccompProfile.type: Localhost`).
    Localhost {
        /// The OCI seccomp profile as JSON, as written to the kubelet's seccomp directory.
        json: String,
    },
}

impl SeccompProfile {
    /// The OCI profile of a `Localhost` setting.
    pub fn oci(&self) -> Option<oci_spec::runtime::LinuxSeccomp> {
        match self {
            SeccompProfile::RuntimeDefault => None,
            SeccompProfile::Localhost { json } => serde_json::from_str(json).ok(),
        }
    }
}

/// What a BPF rule does when it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RuleAction {
    /// Deny silently.
    Deny,
    /// Deny and emit a `DENIED` event.
    DenyAudit,
    /// Allow and emit an `AUDIT` event.
    Audit,
    /// Allow and emit an `ALLOWED` event (allowViolations without auditViolations).
    Complain,
}

impl RuleAction {
    /// Rule-mode bit: deny.
    pub const DENY_BIT: u32 = 0x1;
    /// Rule-mode bit: audit (emit an event).
    pub const AUDIT_BIT: u32 = 0x2;
    /// Rule-mode bit: complain (allow, emit an ALLOWED event).
    pub const COMPLAIN_BIT: u32 = 0x4;

    /// The action for `allowViolations` / `auditViolations`.
    pub fn from_flags(allow_violations: bool, audit_violations: bool) -> RuleAction {
        match (allow_violations, audit_violations) {
            (false, false) => RuleAction::Deny,
            (false, true) => RuleAction::DenyAudit,
            (true, true) => RuleAction::Audit,
            (true, false) => RuleAction::Complain,
        }
    }

    /// The rule-mode bits stored in the BPF maps.
    pub fn bits(self) -> u32 {
        match self {
            RuleAction::Deny => Self::DENY_BIT,
            RuleAction::DenyAudit => Self::DENY_BIT | Self::AUDIT_BIT,
            RuleAction::Audit => Self::AUDIT_BIT,
            RuleAction::Complain => Self::COMPLAIN_BIT,
        }
    }

    /// Whether the rule blocks the operation.
    pub fn denies(self) -> bool {
        matches!(self, RuleAction::Deny | RuleAction::DenyAudit)
    }
}

/// Profile-level mode of the BPF enforcer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BpfMode {
    /// Rules apply.
    Enforce,
    /// Nothing is blocked; every hooked operation emits an `ALLOWED` event (BehaviorModeling).
    Complain,
}

/// The BPF rule set of a profile, with the tables the kernel walks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BpfProfile {
    /// Enforce or complain.
    pub mode: BpfMode,
    /// Capability rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<CapabilityRule>,
    /// File and exec rules; their patterns are ids 0.. of `path_automaton`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<PathRule>,
    /// The automaton of the `files` patterns.
    pub path_automaton: Automaton,
    /// Decision masks for each match set of `path_automaton` (same order).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub path_verdicts: Vec<PathVerdict>,
    /// socket(2) rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sockets: Vec<SocketRule>,
    /// connect(2) rules with literal addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<EgressRule>,
    /// connect(2) rules on Kubernetes services or pods, for the manager to resolve into
    /// `egress` rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress_selectors: Vec<EgressSelector>,
    /// ptrace rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ptrace: Vec<PtraceRule>,
    /// mount, umount and move_mount rules; their source patterns are ids 0.. of
    /// `mount_automaton`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<MountRule>,
    /// The automaton of the `mounts` source patterns.
    pub mount_automaton: Automaton,
}

/// Where a rule comes from, for `explain` and for events.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleOrigin {
    /// JSON path of the policy field, or `runtimeDefault` for the base rules.
    pub field: String,
    /// Built-in rule name, when the rule comes from one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builtin: Option<String>,
}

impl std::fmt::Display for RuleOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.builtin {
            Some(b) => write!(f, "{} ({b})", self.field),
            None => f.write_str(&self.field),
        }
    }
}

/// A capability rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CapabilityRule {
    /// `1 << CAP_*` bits.
    pub capabilities: u64,
    /// What happens on a match.
    pub action: RuleAction,
    /// Where the rule comes from.
    pub origin: RuleOrigin,
}

/// A file or exec rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PathRule {
    /// The pattern ([`crate::glob`] syntax).
    pub pattern: String,
    /// Permission bits ([`crate::names::perm`]); `EXEC` applies to program execution.
    pub permissions: u32,
    /// What happens on a match.
    pub action: RuleAction,
    /// Where the rule comes from.
    pub origin: RuleOrigin,
}

/// The decision for the paths that end in one accepting state: for each action, the union of
/// the permission bits of the matching rules with that action.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PathVerdict {
    /// Permissions denied silently.
    pub deny: u32,
    /// Permissions denied with a DENIED event.
    pub deny_audit: u32,
    /// Permissions allowed with an AUDIT event.
    pub audit: u32,
    /// Permissions allowed with an ALLOWED event.
    pub complain: u32,
}

/// A socket(2) rule; a zero mask matches anything.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SocketRule {
    /// `1 << AF_*` bits.
    pub domains: u64,
    /// `1 << SOCK_*` bits.
    pub types: u64,
    /// `1 << IPPROTO_*` bits.
    pub protocols: u64,
    /// What happens on a match.
    pub action: RuleAction,
    /// Where the rule comes from.
    pub origin: RuleOrigin,
}

/// The destination of an egress rule.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind", content = "value")]
pub enum EgressAddress {
    /// Any address (a port-only rule).
    Any,
    /// One address.
    Ip(std::net::IpAddr),
    /// An address block.
    Cidr(ipnet::IpNet),
    /// The pod's own addresses (one IPv4 and one IPv6 at most), known only on the node.
    PodSelf,
    /// The unspecified addresses 0.0.0.0 and ::.
    Unspecified,
}

/// An inclusive port range; a single port has `first == last`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortRange {
    /// First port.
    pub first: u16,
    /// Last port.
    pub last: u16,
}

/// A connect(2) rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EgressRule {
    /// The destination.
    pub address: EgressAddress,
    /// Ports; empty means every port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortRange>,
    /// What happens on a match.
    pub action: RuleAction,
    /// Where the rule comes from.
    pub origin: RuleOrigin,
}

/// A connect(2) rule whose addresses the manager resolves from Kubernetes objects.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EgressSelector {
    /// What to resolve.
    pub target: EgressTarget,
    /// Ports (pods only); empty means every port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortRange>,
    /// What happens on a match.
    pub action: RuleAction,
    /// Where the rule comes from.
    pub origin: RuleOrigin,
}

/// The Kubernetes objects an egress selector names.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum EgressTarget {
    /// Services (their ClusterIPs and endpoint addresses and ports).
    Service {
        /// Namespace; `None` means every namespace.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        namespace: Option<String>,
        /// Service name (exclusive with `selector`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        /// Label selector (exclusive with `name`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        selector: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
    },
    /// Pods (their IPs).
    Pod {
        /// Namespace; `None` means every namespace.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        namespace: Option<String>,
        /// Label selector.
        selector: k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    },
}

/// A ptrace rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PtraceRule {
    /// Permission bits ([`crate::names::ptrace`]).
    pub permissions: u32,
    /// Also deny within the container (otherwise only across the container boundary). Tracers
    /// in the host's initial mount namespace are always allowed on the traced side.
    pub strict: bool,
    /// What happens on a match.
    pub action: RuleAction,
    /// Where the rule comes from.
    pub origin: RuleOrigin,
}

/// A mount rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MountRule {
    /// Pattern of the source (mount), target (umount) or from-path (move_mount).
    pub source: String,
    /// Filesystem type, or `*` for any.
    pub fstype: String,
    /// Flags that match when the call sets them.
    pub flags: u32,
    /// Flags that match when the call does not set them.
    pub reverse_flags: u32,
    /// What happens on a match.
    pub action: RuleAction,
    /// Where the rule comes from.
    pub origin: RuleOrigin,
}
