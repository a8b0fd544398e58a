//! Which policy a profile comes from, and the profile name derived from it.

use serde::{Deserialize, Serialize};

/// Longest accepted profile name (vArmor's limit; also the Kubernetes label-value limit).
pub const MAX_PROFILE_NAME_LEN: usize = 63;

/// The two policy kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PolicyKind {
    /// A namespaced `VarmorPolicy`.
    VarmorPolicy,
    /// A cluster-scoped `VarmorClusterPolicy`.
    VarmorClusterPolicy,
}

impl PolicyKind {
    /// The kind name.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::VarmorPolicy => "VarmorPolicy",
            PolicyKind::VarmorClusterPolicy => "VarmorClusterPolicy",
        }
    }
}

/// The identity of a policy: enough to name its profile and to attribute events to it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyIdentity {
    /// The kind.
    pub kind: PolicyKind,
    /// The policy's namespace; for a cluster policy, the namespace vArmor runs in.
    pub namespace: String,
    /// The policy's name.
    pub name: String,
}

impl PolicyIdentity {
    /// A namespaced policy.
    pub fn namespaced(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        PolicyIdentity {
            kind: PolicyKind::VarmorPolicy,
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// A cluster policy; `varmor_namespace` is where vArmor runs (`varmor` by default).
    pub fn cluster(varmor_namespace: impl Into<String>, name: impl Into<String>) -> Self {
        PolicyIdentity {
            kind: PolicyKind::VarmorClusterPolicy,
            namespace: varmor_namespace.into(),
            name: name.into(),
        }
    }

    /// The profile name: `varmor-{namespace}-{name}` or `varmor-cluster-{namespace}-{name}`,
    /// lower case.
    pub fn profile_name(&self) -> String {
        match self.kind {
            PolicyKind::VarmorPolicy => format!("varmor-{}-{}", self.namespace, self.name),
            PolicyKind::VarmorClusterPolicy => {
                format!("varmor-cluster-{}-{}", self.namespace, self.name)
            }
        }
        .to_ascii_lowercase()
    }
}

/// What the compiler needs to know about the node a bundle is for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeFacts {
    /// Disk device names of the node (from `/proc/partitions`, e.g. `sda`, `nvme0n1`). `None`
    /// when unknown: the disk-device rules then use a pattern that covers the usual device
    /// names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_devices: Option<Vec<String>>,
}

/// Patterns for disk devices when the node's list is unknown.
pub const DEFAULT_DISK_DEVICE_PATTERNS: &[&str] = &[
    "sd[a-z]*",
    "vd[a-z]*",
    "hd[a-z]*",
    "xvd[a-z]*",
    "nvme[0-9]*",
    "mmcblk[0-9]*",
    "dm-[0-9]*",
];

impl NodeFacts {
    /// The device names (or patterns) the disk-device rules cover, each relative to `/dev/`.
    pub fn disk_device_names(&self) -> Vec<String> {
        match &self.disk_devices {
            Some(d) => d.clone(),
            None => DEFAULT_DISK_DEVICE_PATTERNS
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }
    }

    /// Disk device names from the text of `/proc/partitions` (whole disks and partitions).
    pub fn parse_proc_partitions(text: &str) -> Vec<String> {
        text.lines()
            .skip_while(|l| !l.trim_start().starts_with("major"))
            .skip(1)
            .filter_map(|l| l.split_whitespace().nth(3))
            .filter(|name| {
                name.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            })
            .map(str::to_string)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_names() {
        assert_eq!(
            PolicyIdentity::namespaced("demo", "web").profile_name(),
            "varmor-demo-web"
        );
        assert_eq!(
            PolicyIdentity::cluster("varmor", "Demo").profile_name(),
            "varmor-cluster-varmor-demo"
        );
    }

    #[test]
    fn proc_partitions() {
        let text = "major minor  #blocks  name\n\n 254        0   52428800 vda\n 254        1   52427759 vda1\n   7        0      1024 loop0\n";
        assert_eq!(
            NodeFacts::parse_proc_partitions(text),
            ["vda", "vda1", "loop0"]
        );
    }
}
