//! `ArmorProfileModel`: the behaviour model of a workload and the profiles built from it.

// kube's printcolumn(...) attributes repeat keys such as `type_`, which clippy reports as
// duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::NodeCondition;

/// The fields of an ArmorProfileModel (kube's `no_spec` puts them at the top level, as in
/// vArmor).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "crd.varmor.org",
    version = "v1beta1",
    kind = "ArmorProfileModel",
    namespaced,
    no_spec,
    status = "ArmorProfileModelStatus",
    derive = "PartialEq",
    doc = "ArmorProfileModel stores the behaviour model of a workload and the profiles generated from it",
    printcolumn(name = "STORAGE-TYPE", type_ = "string", json_path = ".storageType"),
    printcolumn(
        name = "DESIRED",
        type_ = "integer",
        json_path = ".status.desiredNumber"
    ),
    printcolumn(
        name = "COMPLETED",
        type_ = "integer",
        json_path = ".status.completedNumber"
    ),
    printcolumn(name = "READY", type_ = "boolean", json_path = ".status.ready"),
    printcolumn(
        name = "AGE",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ArmorProfileModelFields {
    /// storageType says where the data lives: CRDInternal (this object) or LocalDisk (the
    /// manager's state directory, when the object would be too large).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_type: Option<StorageType>,
    /// data holds the behaviour model and the generated profiles.
    #[serde(default)]
    pub data: ArmorProfileModelData,
}

/// Where the model data is stored.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum StorageType {
    /// In the ArmorProfileModel object.
    CRDInternal,
    /// In the manager's local state directory.
    LocalDisk,
}

/// The behaviour model and the profiles built from it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArmorProfileModelData {
    /// dynamicResult is the behaviour observed during BehaviorModeling.
    #[serde(default)]
    pub dynamic_result: DynamicResult,
    /// profile holds the profiles generated from the model.
    #[serde(default)]
    pub profile: ModelProfiles,
}

/// Profiles generated from a behaviour model.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelProfiles {
    /// appArmor is the deny-by-default AppArmor profile text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_armor: Option<String>,
    /// seccomp is the deny-by-default OCI seccomp profile (JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seccomp: Option<String>,
}

/// Behaviour observed during modeling, per enforcer.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DynamicResult {
    /// appArmor data, from AppArmor complain-mode events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_armor: Option<AppArmorBehavior>,
    /// bpf data, from BPF complain-mode events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpf: Option<BpfBehavior>,
    /// seccomp data: the syscalls used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seccomp: Option<SeccompBehavior>,
}

/// AppArmor behaviour data.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppArmorBehavior {
    /// profiles seen in the events.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub profiles: Vec<String>,
    /// executions are the executables run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub executions: Vec<String>,
    /// files accessed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileBehavior>,
    /// capabilities used.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
    /// networks (sockets) created.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<NetworkBehavior>,
    /// ptraces performed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ptraces: Vec<PtraceBehavior>,
    /// signals sent or received.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signals: Vec<SignalBehavior>,
    /// unhandled holds the raw text of other events.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unhandled: Vec<String>,
}

/// A file access in the model.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FileBehavior {
    /// path of the file.
    pub path: String,
    /// owner is true when the file was owned by the accessing user.
    #[serde(default)]
    pub owner: bool,
    /// permissions used (subset of "mrwalk").
    #[serde(default)]
    pub permissions: Vec<String>,
    /// oldPath is the source of a rename or link.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub old_path: String,
}

/// A socket in the AppArmor model.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkBehavior {
    /// family (domain) of the socket.
    pub family: String,
    /// sockType of the socket.
    #[serde(default)]
    pub sock_type: String,
    /// protocol of the socket.
    #[serde(default)]
    pub protocol: String,
}

/// A ptrace access in the AppArmor model.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PtraceBehavior {
    /// peer profile.
    pub peer: String,
    /// permissions used.
    #[serde(default)]
    pub permissions: Vec<String>,
}

/// A signal in the AppArmor model.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SignalBehavior {
    /// peer profile.
    pub peer: String,
    /// permissions used (send, receive).
    #[serde(default)]
    pub permissions: Vec<String>,
    /// signals sent or received.
    #[serde(default)]
    pub signals: Vec<String>,
}

/// BPF behaviour data (collected for advice; no profile is generated from it).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BpfBehavior {
    /// executions are the executables run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub executions: Vec<String>,
    /// files accessed, with permissions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<BpfFileBehavior>,
    /// capabilities used.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
    /// network activity.
    #[serde(default)]
    pub network: BpfNetworkBehavior,
    /// ptrace accesses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ptraces: Vec<BpfPtraceBehavior>,
    /// mounts performed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<BpfMountBehavior>,
}

/// A file access in the BPF model.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BpfFileBehavior {
    /// path of the file.
    pub path: String,
    /// permissions used (read, write, append, exec, ...).
    #[serde(default)]
    pub permissions: Vec<String>,
}

/// Network activity in the BPF model.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BpfNetworkBehavior {
    /// sockets created.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sockets: Vec<BpfSocketBehavior>,
    /// egresses are connect(2) destinations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egresses: Vec<BpfEgressBehavior>,
}

/// A socket in the BPF model.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BpfSocketBehavior {
    /// domain of the socket (e.g. AF_INET).
    pub domain: String,
    /// type of the socket (e.g. SOCK_STREAM).
    #[serde(rename = "type")]
    pub type_: String,
    /// protocol of the socket (e.g. IPPROTO_TCP).
    pub protocol: String,
}

/// A connect(2) destination in the BPF model.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BpfEgressBehavior {
    /// ip of the destination.
    pub ip: String,
    /// ports used.
    #[serde(default)]
    pub ports: Vec<u16>,
}

/// A ptrace access in the BPF model.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BpfPtraceBehavior {
    /// external is true when the peer is outside the container.
    pub external: bool,
    /// permissions used (trace, read, traceby, readby).
    #[serde(default)]
    pub permissions: Vec<String>,
}

/// A mount in the BPF model.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BpfMountBehavior {
    /// path (source) of the mount.
    pub path: String,
    /// type is the filesystem type.
    #[serde(rename = "type")]
    pub type_: String,
    /// flags used.
    #[serde(default)]
    pub flags: Vec<String>,
}

/// Seccomp behaviour data.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SeccompBehavior {
    /// syscalls used.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub syscalls: Vec<String>,
}

/// ArmorProfileModelStatus counts the agents that reported their data.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArmorProfileModelStatus {
    /// desiredNumber of agent reports.
    #[serde(default)]
    pub desired_number: i32,
    /// completedNumber of agent reports received.
    #[serde(default)]
    pub completed_number: i32,
    /// ready is true when the profiles were generated.
    #[serde(default)]
    pub ready: bool,
    /// conditions hold one entry per node that failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<NodeCondition>,
}
