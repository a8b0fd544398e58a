//! `VarmorPolicy` and `VarmorClusterPolicy`.

// kube's printcolumn(...) attributes repeat keys such as `type_`, which clippy reports as
// duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::is_false;

/// Declares the spec struct of one policy kind. Both kinds share every field; kube's derive
/// needs one spec struct per kind, so the field list lives here once.
macro_rules! policy_spec {
    ($(#[$meta:meta])* $name:ident) => {
        #[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
        $(#[$meta])*
        #[serde(rename_all = "camelCase")]
        pub struct $name {
            /// target specifies the workloads and their containers you want to harden.
            pub target: Target,
            /// policy specifies which enforcer, mode and rules you want to use to apply to the
            /// target.
            pub policy: Policy,
            /// updateExistingWorkloads is used to indicate whether to perform a rolling update on
            /// target existing workloads, thus enabling or disabling the protection of the target
            /// workloads when policies are created or deleted. Only Deployment, StatefulSet and
            /// DaemonSet workloads are updated. Default is false.
            #[serde(default, skip_serializing_if = "is_false")]
            pub update_existing_workloads: bool,
        }
    };
}

policy_spec! {
    /// VarmorPolicySpec describes the desired policy used to harden the target workloads in the
    /// policy's namespace.
    #[kube(
        group = "crd.varmor.org",
        version = "v1beta1",
        kind = "VarmorPolicy",
        namespaced,
        shortname = "vpol",
        status = "VarmorPolicyStatus",
        derive = "PartialEq",
        doc = "VarmorPolicy hardens the selected workloads of its namespace with AppArmor, BPF and/or Seccomp",
        printcolumn(name = "ENFORCER", type_ = "string", json_path = ".spec.policy.enforcer"),
        printcolumn(name = "MODE", type_ = "string", json_path = ".spec.policy.mode"),
        printcolumn(name = "TARGET-KIND", type_ = "string", json_path = ".spec.target.kind"),
        printcolumn(name = "TARGET-NAME", type_ = "string", json_path = ".spec.target.name"),
        printcolumn(name = "TARGET-SELECTOR", type_ = "string", json_path = ".spec.target.selector", priority = "1"),
        printcolumn(name = "PROFILE-NAME", type_ = "string", json_path = ".status.profileName", priority = "1"),
        printcolumn(name = "READY", type_ = "boolean", json_path = ".status.ready"),
        printcolumn(name = "STATUS", type_ = "string", json_path = ".status.phase"),
        printcolumn(name = "AGE", type_ = "date", json_path = ".metadata.creationTimestamp")
    )]
    VarmorPolicySpec
}

policy_spec! {
    /// VarmorClusterPolicySpec describes the desired policy used to harden the target workloads
    /// in every namespace.
    #[kube(
        group = "crd.varmor.org",
        version = "v1beta1",
        kind = "VarmorClusterPolicy",
        shortname = "vcpol",
        status = "VarmorPolicyStatus",
        derive = "PartialEq",
        doc = "VarmorClusterPolicy hardens the selected workloads of every namespace with AppArmor, BPF and/or Seccomp",
        printcolumn(name = "ENFORCER", type_ = "string", json_path = ".spec.policy.enforcer"),
        printcolumn(name = "MODE", type_ = "string", json_path = ".spec.policy.mode"),
        printcolumn(name = "TARGET-KIND", type_ = "string", json_path = ".spec.target.kind"),
        printcolumn(name = "TARGET-NAME", type_ = "string", json_path = ".spec.target.name"),
        printcolumn(name = "TARGET-SELECTOR", type_ = "string", json_path = ".spec.target.selector", priority = "1"),
        printcolumn(name = "PROFILE-NAME", type_ = "string", json_path = ".status.profileName", priority = "1"),
        printcolumn(name = "READY", type_ = "boolean", json_path = ".status.ready"),
        printcolumn(name = "STATUS", type_ = "string", json_path = ".status.phase"),
        printcolumn(name = "AGE", type_ = "date", json_path = ".metadata.creationTimestamp")
    )]
    VarmorClusterPolicySpec
}

impl From<VarmorClusterPolicySpec> for VarmorPolicySpec {
    fn from(s: VarmorClusterPolicySpec) -> Self {
        VarmorPolicySpec {
            target: s.target,
            policy: s.policy,
            update_existing_workloads: s.update_existing_workloads,
        }
    }
}

impl From<VarmorPolicySpec> for VarmorClusterPolicySpec {
    fn from(s: VarmorPolicySpec) -> Self {
        VarmorClusterPolicySpec {
            target: s.target,
            policy: s.policy,
            update_existing_workloads: s.update_existing_workloads,
        }
    }
}

/// The kind of workload a policy targets.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum TargetKind {
    /// apps/v1 Deployment.
    Deployment,
    /// apps/v1 StatefulSet.
    StatefulSet,
    /// apps/v1 DaemonSet.
    DaemonSet,
    /// v1 Pod.
    Pod,
}

impl TargetKind {
    /// Every accepted value, in documentation order.
    pub const ALL: [TargetKind; 4] = [
        TargetKind::Deployment,
        TargetKind::StatefulSet,
        TargetKind::DaemonSet,
        TargetKind::Pod,
    ];

    /// The JSON spelling of the kind.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::Deployment => "Deployment",
            TargetKind::StatefulSet => "StatefulSet",
            TargetKind::DaemonSet => "DaemonSet",
            TargetKind::Pod => "Pod",
        }
    }
}

/// Target specifies the workloads and their containers to harden.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    /// kind is the type of workloads to protect.
    /// Available values: Deployment, StatefulSet, DaemonSet, Pod.
    pub kind: TargetKind,
    /// name selects one workload by name. The name field and selector field are mutually
    /// exclusive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// containers are the names of the containers to protect. If empty, every container of the
    /// workload is protected (excluding initContainers and ephemeralContainers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<String>,
    /// selector is a label selector which selects workloads by their own labels. The selector
    /// field and name field are mutually exclusive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

/// The protection mode of a policy.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum PolicyMode {
    /// No mandatory access control rules: every operation is allowed.
    AlwaysAllow,
    /// The container runtime's default profile (containerd's `cri-containerd.apparmor.d`).
    RuntimeDefault,
    /// Built-in and custom rules for allow-by-default protection.
    EnhanceProtect,
    /// Observe the workload and build a behaviour model.
    BehaviorModeling,
    /// Deny-by-default profiles from a behaviour model or a custom profile.
    DefenseInDepth,
}

impl PolicyMode {
    /// Every accepted value, in documentation order.
    pub const ALL: [PolicyMode; 5] = [
        PolicyMode::AlwaysAllow,
        PolicyMode::RuntimeDefault,
        PolicyMode::EnhanceProtect,
        PolicyMode::BehaviorModeling,
        PolicyMode::DefenseInDepth,
    ];

    /// The JSON spelling of the mode.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyMode::AlwaysAllow => "AlwaysAllow",
            PolicyMode::RuntimeDefault => "RuntimeDefault",
            PolicyMode::EnhanceProtect => "EnhanceProtect",
            PolicyMode::BehaviorModeling => "BehaviorModeling",
            PolicyMode::DefenseInDepth => "DefenseInDepth",
        }
    }
}

impl std::fmt::Display for PolicyMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Policy specifies which enforcer, mode and rules apply to the target.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    /// enforcer is the security mechanism used for mandatory access control.
    /// Available values: AppArmor, BPF, Seccomp, AppArmorBPF, AppArmorSeccomp, BPFSeccomp,
    /// AppArmorBPFSeccomp (matched case-insensitively).
    pub enforcer: String,
    /// mode is the protection mode.
    /// Available values: AlwaysAllow, RuntimeDefault, EnhanceProtect, BehaviorModeling,
    /// DefenseInDepth.
    pub mode: PolicyMode,
    /// enhanceProtect configures the EnhanceProtect mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enhance_protect: Option<EnhanceProtect>,
    /// modelingOptions configures the BehaviorModeling mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modeling_options: Option<ModelingOptions>,
    /// defenseInDepth configures the DefenseInDepth mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defense_in_depth: Option<DefenseInDepth>,
}

/// EnhanceProtect configures built-in and custom rules for allow-by-default protection.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnhanceProtect {
    /// hardeningRules are the built-in hardening rules to use.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hardening_rules: Vec<String>,
    /// attackProtectionRules are the built-in attack protection rules to use.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attack_protection_rules: Vec<AttackProtectionRules>,
    /// vulMitigationRules are the built-in vulnerability mitigation rules to use.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vul_mitigation_rules: Vec<String>,
    /// appArmorRawRules are custom AppArmor rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub app_armor_raw_rules: Vec<AppArmorRawRules>,
    /// bpfRawRules are custom BPF rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpf_raw_rules: Option<BpfRawRules>,
    /// syscallRawRules are custom syscall blocklist rules for the Seccomp enforcer, in the OCI
    /// runtime-spec `LinuxSyscall` format.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub syscall_raw_rules: Vec<LinuxSyscall>,
    /// privileged marks the policy as being for privileged containers: the AppArmor and BPF
    /// profiles are built on top of AlwaysAllow instead of RuntimeDefault. Default is false.
    #[serde(default, skip_serializing_if = "is_false")]
    pub privileged: bool,
    /// auditViolations logs the actions that violate the rules to
    /// /var/log/varmor/violations.log on the host. Default is false.
    #[serde(default, skip_serializing_if = "is_false")]
    pub audit_violations: bool,
    /// allowViolations allows the actions that violate the rules instead of blocking them, and
    /// logs them. Default is false.
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_violations: bool,
}

/// AttackProtectionRules selects built-in attack protection rules, optionally only for some
/// executables.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AttackProtectionRules {
    /// rules is the list of built-in attack protection rules to use.
    pub rules: Vec<String>,
    /// targets are the full paths of the executables the rules apply to. Only the AppArmor
    /// enforcer honours targets; the other enforcers skip entries that have targets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<String>,
}

/// AppArmorRawRules holds custom AppArmor rules, optionally only for some executables.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppArmorRawRules {
    /// rules are custom AppArmor rules in AppArmor syntax.
    pub rules: String,
    /// targets are the full paths of the executables the rules apply to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<String>,
}

/// BpfRawRules holds custom BPF rules.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BpfRawRules {
    /// files are the file access control rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileRule>,
    /// processes are the process (exec) access control rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<FileRule>,
    /// network holds the socket and egress rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkRule>,
    /// ptrace restricts ptrace-based access.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ptrace: Option<PtraceRule>,
    /// mounts are the mount point access control rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<MountRule>,
}

/// FileRule matches files (or executables) by pattern.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FileRule {
    /// pattern (at most 128 bytes) matches file paths or, without a `/`, file names.
    pub pattern: String,
    /// permissions to restrict. Available values: all(*), read(r), write(w), append(a),
    /// exec(x, e).
    pub permissions: Vec<String>,
}

/// NetworkRule holds socket and egress rules.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkRule {
    /// sockets match socket(2) calls.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sockets: Vec<NetworkSocketRule>,
    /// egress matches connect(2) calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<NetworkEgressRule>,
}

/// NetworkSocketRule matches socket(2) calls by domain, type or protocol.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkSocketRule {
    /// domains are the communication domains (unix, inet, inet6, netlink, packet, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<String>,
    /// types are the communication semantics (stream, dgram, raw, ...). Mutually exclusive
    /// with protocols.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub types: Vec<String>,
    /// protocols are the protocols (icmp, tcp, udp). Mutually exclusive with types.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub protocols: Vec<String>,
}

/// NetworkEgressRule matches connect(2) calls by destination.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkEgressRule {
    /// toDestinations match IPs or CIDRs, with ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_destinations: Vec<Destination>,
    /// toServices match Kubernetes services and their endpoints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_services: Vec<Service>,
    /// toPods match pods, with ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_pods: Vec<Pod>,
}

/// Destination matches an IP (or one of the entities pod-self, unspecified, localhost) or a
/// CIDR, with ports.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Destination {
    /// ip is an IP address, or pod-self, unspecified or localhost. Mutually exclusive with
    /// cidr.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// cidr is an IP block. Mutually exclusive with ip.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
    /// ports restricts the rule to these ports; empty means every port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
}

/// Service selects Kubernetes services by name or label selector.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    /// namespace of the services; empty selects every namespace (with serviceSelector).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// name of the service. Mutually exclusive with serviceSelector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// serviceSelector selects services by label. Mutually exclusive with name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_selector: Option<LabelSelector>,
}

/// Pod selects pods by label, with ports.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Pod {
    /// namespace of the pods; empty selects every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// podSelector selects pods by label.
    pub pod_selector: LabelSelector,
    /// ports restricts the rule to these ports; empty means every port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
}

/// Port is a port or an inclusive port range.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Port {
    /// port number, in [1, 65535].
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
    /// endPort, when set, makes the rule match the range port..=endPort. It must be in
    /// [1, 65535] and not less than port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub end_port: Option<u16>,
}

/// PtraceRule restricts ptrace-based access.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PtraceRule {
    /// strictMode restricts ptrace between processes of the same container too. Default is
    /// false: only access across the container boundary is restricted.
    #[serde(default, skip_serializing_if = "is_false")]
    pub strict_mode: bool,
    /// permissions to restrict. Available values: all(*), trace, traceby, read, readby.
    pub permissions: Vec<String>,
}

/// MountRule matches mount(2), umount(2) and move_mount(2) calls.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MountRule {
    /// sourcePattern (at most 128 bytes) matches the source of mount(2), the target of
    /// umount(2) and the from_pathname of move_mount(2).
    pub source_pattern: String,
    /// fstype (at most 16 bytes) is the filesystem type, or `*` for any type.
    pub fstype: String,
    /// flags are the mount flags to match, named as in AppArmor's mount rules.
    pub flags: Vec<String>,
}

/// LinuxSyscall is the OCI runtime-spec syscall rule.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LinuxSyscall {
    /// names of the syscalls.
    pub names: Vec<String>,
    /// action taken when the rule matches, e.g. SCMP_ACT_ERRNO, SCMP_ACT_LOG.
    pub action: String,
    /// errnoRet is the errno returned with SCMP_ACT_ERRNO.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno_ret: Option<u32>,
    /// args are conditions on the syscall arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<LinuxSeccompArg>,
}

/// LinuxSeccompArg is a condition on one syscall argument.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LinuxSeccompArg {
    /// index of the argument, 0 to 5.
    #[schemars(range(max = 5))]
    pub index: u32,
    /// value compared with the argument.
    pub value: u64,
    /// valueTwo is the second value of SCMP_CMP_MASKED_EQ (the expected result).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub value_two: u64,
    /// op is the comparison, e.g. SCMP_CMP_EQ, SCMP_CMP_MASKED_EQ.
    pub op: String,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// ModelingOptions configures the BehaviorModeling mode.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelingOptions {
    /// duration of the modeling, in minutes.
    pub duration: i64,
}

/// Which source a DefenseInDepth profile comes from.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum ProfileType {
    /// The profile generated by the BehaviorModeling mode (stored in the ArmorProfileModel).
    BehaviorModel,
    /// The profile in the customProfile field.
    Custom,
}

/// DefenseInDepth configures deny-by-default protection.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DefenseInDepth {
    /// appArmor selects the AppArmor profile and extra rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_armor: Option<AppArmorProfile>,
    /// seccomp selects the Seccomp profile and extra rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seccomp: Option<SeccompProfile>,
    /// allowViolations allows and logs violations instead of blocking them (AppArmor complain
    /// mode, SCMP_ACT_LOG). Default is false.
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_violations: bool,
}

/// AppArmorProfile selects a deny-by-default AppArmor profile.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppArmorProfile {
    /// profileType is BehaviorModel or Custom.
    pub profile_type: ProfileType,
    /// customProfile is the AppArmor profile text used with profileType Custom. Its profile
    /// name must equal the policy's profile name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_profile: Option<String>,
    /// appArmorRawRules are added at the end of the profile.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub app_armor_raw_rules: Vec<AppArmorRawRules>,
}

/// SeccompProfile selects a deny-by-default Seccomp profile.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SeccompProfile {
    /// profileType is BehaviorModel or Custom.
    pub profile_type: ProfileType,
    /// customProfile is the OCI seccomp profile (JSON) used with profileType Custom.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_profile: Option<String>,
    /// syscallRawRules are appended to the profile.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub syscall_raw_rules: Vec<LinuxSyscall>,
}

/// The processing phase of a policy.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum PolicyPhase {
    /// Waiting for the agents to load the profile.
    Pending,
    /// BehaviorModeling is collecting data.
    Modeling,
    /// BehaviorModeling has finished.
    Completed,
    /// Every expected agent loaded the profile.
    Protecting,
    /// At least one agent failed; see the conditions.
    Error,
    /// Declared by vArmor, not set by it.
    Failed,
    /// Declared by vArmor, not set by it.
    Unknown,
}

impl PolicyPhase {
    /// The JSON spelling of the phase.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyPhase::Pending => "Pending",
            PolicyPhase::Modeling => "Modeling",
            PolicyPhase::Completed => "Completed",
            PolicyPhase::Protecting => "Protecting",
            PolicyPhase::Error => "Error",
            PolicyPhase::Failed => "Failed",
            PolicyPhase::Unknown => "Unknown",
        }
    }
}

/// VarmorPolicyStatus is the observed state of a policy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VarmorPolicyStatus {
    /// profileName is the name of the generated profiles: varmor-{namespace}-{name}, or
    /// varmor-cluster-{varmorNamespace}-{name} for cluster policies.
    #[serde(default)]
    pub profile_name: String,
    /// conditions of the policy (Created, Updated, Ready).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<VarmorPolicyCondition>,
    /// ready is true when every expected node loaded the profile.
    #[serde(default)]
    pub ready: bool,
    /// phase is the processing phase: Pending, Modeling, Completed, Protecting or Error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<PolicyPhase>,
}

/// VarmorPolicyCondition is one condition of a policy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VarmorPolicyCondition {
    /// type of the condition: Created, Updated or Ready.
    #[serde(rename = "type")]
    pub type_: String,
    /// status of the condition: True, False or Unknown.
    pub status: String,
    /// lastTransitionTime is when the condition last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    /// reason is the machine-readable reason of the last transition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// message is a human-readable description of the last transition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
