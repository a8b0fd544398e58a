//! The manager's state: nodes, their results and event positions, and the policy catalog,
//! with the JSON forms kept in the state directory.

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use varmor_proto::v1;

use crate::catalog::{Catalog, PoliciesFile};
use crate::metrics::Rollouts;
use crate::store::Doc;

/// An enforcer, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum EnforcerKind {
    /// AppArmor.
    AppArmor,
    /// BPF LSM.
    Bpf,
    /// Seccomp.
    Seccomp,
}

impl EnforcerKind {
    /// Every enforcer.
    pub const ALL: [EnforcerKind; 3] = [
        EnforcerKind::AppArmor,
        EnforcerKind::Bpf,
        EnforcerKind::Seccomp,
    ];

    /// The name users see.
    pub fn as_str(self) -> &'static str {
        match self {
            EnforcerKind::AppArmor => "AppArmor",
            EnforcerKind::Bpf => "BPF",
            EnforcerKind::Seccomp => "Seccomp",
        }
    }

    /// From the proto enum; `None` for unspecified or unknown values.
    pub fn from_proto(v: i32) -> Option<Self> {
        match v1::Enforcer::try_from(v).ok()? {
            v1::Enforcer::Apparmor => Some(EnforcerKind::AppArmor),
            v1::Enforcer::Bpf => Some(EnforcerKind::Bpf),
            v1::Enforcer::Seccomp => Some(EnforcerKind::Seccomp),
            v1::Enforcer::Unspecified => None,
        }
    }

    /// As the proto enum.
    pub fn to_proto(self) -> v1::Enforcer {
        match self {
            EnforcerKind::AppArmor => v1::Enforcer::Apparmor,
            EnforcerKind::Bpf => v1::Enforcer::Bpf,
            EnforcerKind::Seccomp => v1::Enforcer::Seccomp,
        }
    }

    /// Whether the set holds this enforcer.
    pub fn in_set(self, set: varmor_policy::enforcer::EnforcerSet) -> bool {
        match self {
            EnforcerKind::AppArmor => set.apparmor,
            EnforcerKind::Bpf => set.bpf,
            EnforcerKind::Seccomp => set.seccomp,
        }
    }
}

/// What happened with one enforcer of a bundle on a node, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ResultKind {
    /// Loaded and enforced.
    Applied,
    /// Loading failed.
    Failed,
    /// The node cannot run the enforcer.
    Unavailable,
    /// Stored; containers created from now on get it (seccomp).
    NeedsRestart,
    /// Removed.
    Removed,
}

impl ResultKind {
    /// From the proto enum; `None` for unspecified or unknown values.
    pub fn from_proto(v: i32) -> Option<Self> {
        match v1::ResultStatus::try_from(v).ok()? {
            v1::ResultStatus::Applied => Some(ResultKind::Applied),
            v1::ResultStatus::Failed => Some(ResultKind::Failed),
            v1::ResultStatus::Unavailable => Some(ResultKind::Unavailable),
            v1::ResultStatus::NeedsRestart => Some(ResultKind::NeedsRestart),
            v1::ResultStatus::Removed => Some(ResultKind::Removed),
            v1::ResultStatus::Unspecified => None,
        }
    }

    /// As the proto enum.
    pub fn to_proto(self) -> v1::ResultStatus {
        match self {
            ResultKind::Applied => v1::ResultStatus::Applied,
            ResultKind::Failed => v1::ResultStatus::Failed,
            ResultKind::Unavailable => v1::ResultStatus::Unavailable,
            ResultKind::NeedsRestart => v1::ResultStatus::NeedsRestart,
            ResultKind::Removed => v1::ResultStatus::Removed,
        }
    }
}

/// One enforcer's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnforcerOutcome {
    /// The enforcer.
    pub enforcer: EnforcerKind,
    /// The result.
    pub status: ResultKind,
    /// The agent's message.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// A node's latest result for one profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileResult {
    /// The revision the results are for.
    pub revision: u64,
    /// Per enforcer.
    pub results: Vec<EnforcerOutcome>,
    /// When the ack came.
    pub at: SystemTime,
}

/// Node facts, as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Facts {
    /// Disk devices; `None` when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_devices: Option<Vec<String>>,
    /// `uname -r`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kernel_release: String,
    /// The machine architecture.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub architecture: String,
}

impl Facts {
    /// From the hello.
    pub fn from_proto(f: &v1::NodeFacts) -> Self {
        Facts {
            disk_devices: f.disk_devices_known.then(|| f.disk_devices.clone()),
            kernel_release: f.kernel_release.clone(),
            architecture: f.architecture.clone(),
        }
    }

    /// As the proto message.
    pub fn to_proto(&self) -> v1::NodeFacts {
        v1::NodeFacts {
            disk_devices: self.disk_devices.clone().unwrap_or_default(),
            disk_devices_known: self.disk_devices.is_some(),
            kernel_release: self.kernel_release.clone(),
            architecture: self.architecture.clone(),
        }
    }

    /// What the compiler needs.
    pub fn key(&self) -> FactsKey {
        FactsKey(self.disk_devices.clone())
    }
}

/// The part of a node's facts that changes compiled bundles; bundles are compiled once per
/// distinct key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FactsKey(pub Option<Vec<String>>);

impl FactsKey {
    /// Unknown facts.
    pub const UNKNOWN: FactsKey = FactsKey(None);

    /// The compiler's facts.
    pub fn to_facts(&self) -> varmor_policy::NodeFacts {
        varmor_policy::NodeFacts {
            disk_devices: self.0.clone(),
        }
    }
}

/// Whether an enforcer works on a node, as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capability {
    /// Whether it works.
    pub available: bool,
    /// Why not, or what was found.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// A node's kernel capabilities, as stored; `None` fields were not reported.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Capabilities {
    /// AppArmor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apparmor: Option<Capability>,
    /// BPF LSM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpf: Option<Capability>,
    /// Seccomp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seccomp: Option<Capability>,
}

impl Capabilities {
    /// From the hello.
    pub fn from_proto(c: &v1::KernelCapabilities) -> Self {
        let one = |c: &Option<v1::EnforcerCapability>| {
            c.as_ref().map(|c| Capability {
                available: c.available,
                reason: truncate(&c.reason, MAX_MESSAGE),
            })
        };
        Capabilities {
            apparmor: one(&c.apparmor),
            bpf: one(&c.bpf),
            seccomp: one(&c.seccomp),
        }
    }

    /// As the proto message.
    pub fn to_proto(&self) -> v1::KernelCapabilities {
        let one = |c: &Option<Capability>| {
            c.as_ref().map(|c| v1::EnforcerCapability {
                available: c.available,
                reason: c.reason.clone(),
            })
        };
        v1::KernelCapabilities {
            apparmor: one(&self.apparmor),
            bpf: one(&self.bpf),
            seccomp: one(&self.seccomp),
        }
    }

    /// The reported capability of one enforcer.
    pub fn get(&self, e: EnforcerKind) -> Option<&Capability> {
        match e {
            EnforcerKind::AppArmor => self.apparmor.as_ref(),
            EnforcerKind::Bpf => self.bpf.as_ref(),
            EnforcerKind::Seccomp => self.seccomp.as_ref(),
        }
    }
}

/// Longest agent message kept (results, capability reasons).
pub const MAX_MESSAGE: usize = 2048;

/// Cuts `s` to at most `max` bytes at a character boundary.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// A node as the manager remembers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRecord {
    /// When it first joined.
    pub joined_at: SystemTime,
    /// Whether policies wait for it (false after `RemoveNode`, true again after a join).
    pub expected: bool,
    /// When it was removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed_at: Option<SystemTime>,
    /// The last message from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<SystemTime>,
    /// When its newest certificate expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_not_after: Option<SystemTime>,
    /// Facts from the last hello.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub facts: Option<Facts>,
    /// Capabilities from the last hello.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Capabilities>,
    /// The agent version from the last hello.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub agent_version: String,
    /// Latest result per profile.
    #[serde(default)]
    pub results: BTreeMap<String, ProfileResult>,
}

impl NodeRecord {
    /// A node that just joined.
    pub fn joined(now: SystemTime) -> Self {
        NodeRecord {
            joined_at: now,
            expected: true,
            removed_at: None,
            last_seen: None,
            cert_not_after: None,
            facts: None,
            capabilities: None,
            agent_version: String::new(),
            results: BTreeMap::new(),
        }
    }

    /// The facts bundles for this node are compiled with.
    pub fn facts_key(&self) -> FactsKey {
        self.facts.as_ref().map(Facts::key).unwrap_or_default()
    }
}

/// Where a node's event stream stands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventPosition {
    /// The highest accepted sequence number; the next accepted event must be above it.
    pub last_sequence: u64,
    /// Events accepted.
    pub received: u64,
    /// Events the agent reported dropping.
    pub dropped: u64,
    /// Events already accepted and sent again (dropped as duplicates).
    pub duplicates: u64,
    /// Sequence numbers that never arrived (skipped over by a later event).
    pub missing: u64,
}

/// `nodes.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct NodesFile {
    /// Every node that joined.
    pub nodes: BTreeMap<String, NodeRecord>,
}

/// `events.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct EventsFile {
    /// Per node.
    pub nodes: BTreeMap<String, EventPosition>,
}

/// A live Sync session.
#[derive(Debug)]
pub struct LiveSession {
    /// Distinguishes sessions of the same node.
    pub id: u64,
    /// Ends the session when a newer one of the same node starts.
    pub replace: Option<oneshot::Sender<()>>,
}

/// Everything the manager knows; guarded by one mutex that is never held across an await.
#[derive(Debug)]
pub struct State {
    /// Joined nodes.
    pub nodes: BTreeMap<String, NodeRecord>,
    /// Live Sync sessions by node.
    pub sessions: HashMap<String, LiveSession>,
    /// Event positions by node.
    pub events: BTreeMap<String, EventPosition>,
    /// Policies and their sources.
    pub catalog: Catalog,
    /// The generation of each document; bumped on every change to persist.
    pub generations: [u64; 3],
    /// The next session id.
    pub next_session_id: u64,
    /// Policy changes on their way to the nodes, for the distribution latency metric.
    pub rollouts: Rollouts,
}

impl State {
    /// Records a change of `doc`; returns the generation to wait for.
    pub fn touch(&mut self, doc: Doc) -> u64 {
        self.generations[doc.index()] += 1;
        self.generations[doc.index()]
    }

    /// The JSON of a document, when its generation is newer than `written`.
    pub fn snapshot(&self, doc: Doc, written: u64) -> Result<Option<(u64, Vec<u8>)>, String> {
        let generation = self.generations[doc.index()];
        if generation <= written {
            return Ok(None);
        }
        let bytes = match doc {
            Doc::Nodes => serde_json::to_vec_pretty(&NodesFileRef { nodes: &self.nodes }),
            Doc::Events => serde_json::to_vec_pretty(&EventsFileRef {
                nodes: &self.events,
            }),
            Doc::Policies => serde_json::to_vec_pretty(&PoliciesFile::from(&self.catalog)),
        }
        .map_err(|e| e.to_string())?;
        Ok(Some((generation, bytes)))
    }

    /// Whether a node has a live session.
    pub fn connected(&self, node: &str) -> bool {
        self.sessions.contains_key(node)
    }
}

#[derive(Serialize)]
struct NodesFileRef<'a> {
    nodes: &'a BTreeMap<String, NodeRecord>,
}

#[derive(Serialize)]
struct EventsFileRef<'a> {
    nodes: &'a BTreeMap<String, EventPosition>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_json() {
        let mut n = NodeRecord::joined(SystemTime::UNIX_EPOCH);
        n.facts = Some(Facts {
            disk_devices: Some(vec!["sda".into()]),
            ..Facts::default()
        });
        n.results.insert(
            "varmor-demo-web".into(),
            ProfileResult {
                revision: 3,
                results: vec![EnforcerOutcome {
                    enforcer: EnforcerKind::Bpf,
                    status: ResultKind::Failed,
                    message: "no BPF LSM".into(),
                }],
                at: SystemTime::UNIX_EPOCH,
            },
        );
        let file = NodesFile {
            nodes: BTreeMap::from([("n1".to_string(), n)]),
        };
        let text = serde_json::to_string(&file).expect("json");
        assert!(text.contains("\"FAILED\""), "{text}");
        let back: NodesFile = serde_json::from_str(&text).expect("parse");
        assert_eq!(back.nodes, file.nodes);
    }

    #[test]
    fn truncation_keeps_characters_whole() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("ééé", 3), "é…");
    }
}
