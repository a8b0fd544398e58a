//! `ArmorProfile`: the internal object that carries a policy's compiled profiles.
//!
//! In a cluster the manager writes one ArmorProfile per policy (owned by the policy, named
//! like the profile) so that `kubectl get armorprofiles` shows what every node was asked to
//! load and how many nodes loaded it. Agents never read it: they receive the same content as a
//! profile bundle over their gRPC session.

// kube's printcolumn(...) attributes repeat keys such as `type_`, which clippy reports as
// duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{PolicyMode, Target};

/// ArmorProfileSpec is the compiled form of one policy.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "crd.varmor.org",
    version = "v1beta1",
    kind = "ArmorProfile",
    namespaced,
    status = "ArmorProfileStatus",
    derive = "PartialEq",
    doc = "ArmorProfile holds the profiles compiled from a VarmorPolicy or VarmorClusterPolicy (internal)",
    printcolumn(name = "PROFILE", type_ = "string", json_path = ".spec.profile.name"),
    printcolumn(
        name = "ENFORCER",
        type_ = "string",
        json_path = ".spec.profile.enforcer"
    ),
    printcolumn(name = "MODE", type_ = "string", json_path = ".spec.profile.mode"),
    printcolumn(
        name = "DESIRED",
        type_ = "integer",
        json_path = ".status.desiredNumberLoaded"
    ),
    printcolumn(
        name = "CURRENT",
        type_ = "integer",
        json_path = ".status.currentNumberLoaded"
    ),
    printcolumn(
        name = "AGE",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ArmorProfileSpec {
    /// target copied from the policy.
    pub target: Target,
    /// profile holds the compiled profiles.
    pub profile: ArmorProfileContent,
    /// behaviorModeling says whether modeling is running and for how long.
    #[serde(default)]
    pub behavior_modeling: BehaviorModeling,
    /// updateExistingWorkloads copied from the policy.
    #[serde(default)]
    pub update_existing_workloads: bool,
}

/// The compiled profiles of one policy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArmorProfileContent {
    /// name of the profile (varmor-{namespace}-{name} or varmor-cluster-{ns}-{name}).
    pub name: String,
    /// enforcer, normalised (e.g. AppArmorBPFSeccomp).
    pub enforcer: String,
    /// mode of the policy that produced the profile.
    pub mode: PolicyMode,
    /// content is the AppArmor profile text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// bpfContent is the BPF rule set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown_object")]
    pub bpf_content: Option<serde_json::Value>,
    /// seccompContent is the OCI seccomp profile (JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seccomp_content: Option<String>,
}

/// BehaviorModeling says whether modeling is running and for how long.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BehaviorModeling {
    /// enable is true while modeling runs.
    #[serde(default)]
    pub enable: bool,
    /// duration of the modeling, in minutes.
    #[serde(default)]
    pub duration: i64,
}

/// ArmorProfileStatus counts the nodes that loaded the profile.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArmorProfileStatus {
    /// desiredNumberLoaded is the number of nodes expected to load the profile.
    #[serde(default)]
    pub desired_number_loaded: i32,
    /// currentNumberLoaded is the number of nodes that loaded it.
    #[serde(default)]
    pub current_number_loaded: i32,
    /// conditions hold one entry per node that failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<NodeCondition>,
}

/// A per-node condition of an ArmorProfile or ArmorProfileModel.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeCondition {
    /// type of the condition (Ready).
    #[serde(rename = "type")]
    pub type_: String,
    /// status of the condition: True, False or Unknown.
    pub status: String,
    /// lastTransitionTime is when the condition last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    /// reason of the last transition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// message describing the last transition (the node's error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// nodeName is the node the condition is about.
    pub node_name: String,
}

pub(crate) fn preserve_unknown_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}
