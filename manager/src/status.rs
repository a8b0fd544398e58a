//! Policy status from per-node results, with vArmor's semantics (reference §1.4), made
//! explicit:
//!
//! * **expected nodes** are the nodes that joined and were not removed (`RemoveNode`);
//!   `desired` is their number;
//! * a node **loaded** the profile when its results for the *current* revision say APPLIED
//!   for every enforcer the policy uses (NEEDS_RESTART counts for seccomp, whose profile
//!   only applies to containers created later); `current` is the number of such nodes;
//! * a node **failed** when it reports FAILED or UNAVAILABLE for an enforcer the policy uses,
//!   or, before its first result for the current revision, when its hello said that enforcer
//!   is unavailable: a node that cannot enforce is an error with the reason, never a silent
//!   success;
//! * phase: `Error` when any expected node failed; otherwise for BehaviorModeling
//!   `Modeling` until `modelingOptions.duration` minutes after the policy was first loaded,
//!   then `Completed` (collecting and merging the modeling data comes in a later step);
//!   otherwise `Protecting` when every expected node loaded it, else `Pending`;
//! * `ready` when `current == desired`, `desired > 0` and no node failed; the `Ready`
//!   condition is True/AllAgentsReady, False/Processing, or False/Error with a message that
//!   names each failing node and its message.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use varmor_policy::enforcer::EnforcerSet;
use varmor_proto::v1;

use crate::state::{EnforcerKind, NodeRecord, ResultKind};

/// Phase names (the CRD's `status.phase`).
pub mod phase {
    /// Waiting for nodes.
    pub const PENDING: &str = "Pending";
    /// Every expected node enforces it.
    pub const PROTECTING: &str = "Protecting";
    /// A node failed.
    pub const ERROR: &str = "Error";
    /// BehaviorModeling, within the duration.
    pub const MODELING: &str = "Modeling";
    /// BehaviorModeling, after the duration.
    pub const COMPLETED: &str = "Completed";
}

/// The Ready condition as last computed, kept for its transition time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConditionMemo {
    /// True or False.
    pub status: String,
    /// The reason.
    pub reason: String,
    /// When status or reason last changed.
    pub since: SystemTime,
}

/// What the status is computed for.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// The profile name.
    pub profile: &'a str,
    /// The revision nodes must load.
    pub revision: u64,
    /// The policy's enforcers.
    pub enforcers: EnforcerSet,
    /// `modelingOptions.duration` for BehaviorModeling.
    pub modeling_minutes: Option<u64>,
    /// When the policy was first loaded.
    pub first_seen: SystemTime,
}

/// One node's problem with a profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The node.
    pub node: String,
    /// What failed, e.g. `BPF failed: the verifier rejected the program`.
    pub message: String,
}

/// The computed status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Computed {
    /// The phase.
    pub phase: &'static str,
    /// Whether every expected node loaded the current revision.
    pub ready: bool,
    /// Expected nodes.
    pub desired: u32,
    /// Expected nodes that loaded the current revision.
    pub current: u32,
    /// Failing nodes, in name order.
    pub failures: Vec<Failure>,
    /// Expected nodes still to report, in name order.
    pub waiting: Vec<String>,
    /// The Ready condition: status, reason, message.
    pub ready_status: &'static str,
    /// See `ready_status`.
    pub ready_reason: &'static str,
    /// See `ready_status`.
    pub ready_message: String,
}

enum NodeOutcome {
    Loaded,
    Pending,
    Failed(Vec<String>),
}

fn node_outcome(s: &Subject<'_>, rec: &NodeRecord) -> NodeOutcome {
    let used = EnforcerKind::ALL
        .into_iter()
        .filter(|e| e.in_set(s.enforcers));
    let mut failures = Vec::new();
    match rec
        .results
        .get(s.profile)
        .filter(|r| r.revision == s.revision)
    {
        Some(result) => {
            let mut all = true;
            for e in used {
                match result.results.iter().find(|r| r.enforcer == e) {
                    Some(r) => match r.status {
                        ResultKind::Applied => {}
                        ResultKind::NeedsRestart if e == EnforcerKind::Seccomp => {}
                        ResultKind::Failed => {
                            failures.push(format!("{} failed: {}", e.as_str(), or_none(&r.message)))
                        }
                        ResultKind::Unavailable => failures.push(format!(
                            "{} unavailable: {}",
                            e.as_str(),
                            or_none(&r.message)
                        )),
                        ResultKind::NeedsRestart | ResultKind::Removed => all = false,
                    },
                    None => all = false,
                }
            }
            if !failures.is_empty() {
                NodeOutcome::Failed(failures)
            } else if all {
                NodeOutcome::Loaded
            } else {
                NodeOutcome::Pending
            }
        }
        None => {
            if let Some(caps) = &rec.capabilities {
                for e in used {
                    if let Some(c) = caps.get(e).filter(|c| !c.available) {
                        failures.push(format!(
                            "{} unavailable: {}",
                            e.as_str(),
                            or_none(&c.reason)
                        ));
                    }
                }
            }
            if failures.is_empty() {
                NodeOutcome::Pending
            } else {
                NodeOutcome::Failed(failures)
            }
        }
    }
}

fn or_none(s: &str) -> &str {
    if s.is_empty() {
        "no reason given"
    } else {
        s
    }
}

/// Computes the status of a policy in force.
pub fn compute(s: &Subject<'_>, nodes: &BTreeMap<String, NodeRecord>, now: SystemTime) -> Computed {
    let mut desired = 0u32;
    let mut current = 0u32;
    let mut failures = Vec::new();
    let mut waiting = Vec::new();
    for (name, rec) in nodes.iter().filter(|(_, r)| r.expected) {
        desired += 1;
        match node_outcome(s, rec) {
            NodeOutcome::Loaded => current += 1,
            NodeOutcome::Pending => waiting.push(name.clone()),
            NodeOutcome::Failed(msgs) => failures.push(Failure {
                node: name.clone(),
                message: msgs.join(", "),
            }),
        }
    }
    let ready = failures.is_empty() && desired > 0 && current == desired;
    let phase = if !failures.is_empty() {
        phase::ERROR
    } else if let Some(minutes) = s.modeling_minutes {
        let end = s.first_seen + Duration::from_secs(minutes.saturating_mul(60));
        if now < end {
            phase::MODELING
        } else {
            phase::COMPLETED
        }
    } else if ready {
        phase::PROTECTING
    } else {
        phase::PENDING
    };
    let (ready_status, ready_reason, ready_message) = if !failures.is_empty() {
        (
            "False",
            "Error",
            format!(
                "the agents failed processing the profile {} (revision {}): {}",
                s.profile,
                s.revision,
                failures
                    .iter()
                    .map(|f| format!("node {}: {}", f.node, f.message))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        )
    } else if ready {
        (
            "True",
            "AllAgentsReady",
            format!(
                "all {desired} expected nodes loaded revision {}",
                s.revision
            ),
        )
    } else if desired == 0 {
        (
            "False",
            "Processing",
            "no node is expected to load the profile: no agent has joined, or every node was removed".to_string(),
        )
    } else {
        const SHOWN: usize = 5;
        let mut names = waiting
            .iter()
            .take(SHOWN)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        if waiting.len() > SHOWN {
            names.push_str(&format!(" and {} more", waiting.len() - SHOWN));
        }
        (
            "False",
            "Processing",
            format!(
                "{current} of {desired} expected nodes loaded revision {}; waiting for {names}",
                s.revision
            ),
        )
    };
    Computed {
        phase,
        ready,
        desired,
        current,
        failures,
        waiting,
        ready_status,
        ready_reason,
        ready_message,
    }
}

/// The status of a policy that has no good version: an error for every expected node.
pub fn compute_invalid(
    nodes: &BTreeMap<String, NodeRecord>,
    source: &str,
    errors: &str,
) -> Computed {
    let desired = nodes.values().filter(|r| r.expected).count() as u32;
    Computed {
        phase: phase::ERROR,
        ready: false,
        desired,
        current: 0,
        failures: Vec::new(),
        waiting: Vec::new(),
        ready_status: "False",
        ready_reason: "Error",
        ready_message: format!("the policy in {source} is invalid and was not loaded: {errors}"),
    }
}

/// Updates the Ready memo: the transition time moves only when status or reason change.
/// Returns whether the memo changed.
pub fn observe(memo: &mut Option<ConditionMemo>, c: &Computed, now: SystemTime) -> bool {
    match memo {
        Some(m) if m.status == c.ready_status && m.reason == c.ready_reason => false,
        _ => {
            *memo = Some(ConditionMemo {
                status: c.ready_status.to_string(),
                reason: c.ready_reason.to_string(),
                since: now,
            });
            true
        }
    }
}

/// A condition message.
pub fn condition(
    kind: &str,
    status: &str,
    reason: &str,
    message: String,
    since: SystemTime,
) -> v1::Condition {
    v1::Condition {
        r#type: kind.to_string(),
        status: status.to_string(),
        last_transition_time: Some(since.into()),
        reason: reason.to_string(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Capabilities, Capability, EnforcerOutcome, ProfileResult};

    const P: &str = "varmor-demo-web";

    fn subject(enforcers: EnforcerSet) -> Subject<'static> {
        Subject {
            profile: P,
            revision: 7,
            enforcers,
            modeling_minutes: None,
            first_seen: SystemTime::UNIX_EPOCH,
        }
    }

    fn ack(rec: &mut NodeRecord, revision: u64, results: &[(EnforcerKind, ResultKind, &str)]) {
        rec.results.insert(
            P.into(),
            ProfileResult {
                revision,
                results: results
                    .iter()
                    .map(|(e, s, m)| EnforcerOutcome {
                        enforcer: *e,
                        status: *s,
                        message: m.to_string(),
                    })
                    .collect(),
                at: SystemTime::UNIX_EPOCH,
            },
        );
    }

    fn nodes(names: &[&str]) -> BTreeMap<String, NodeRecord> {
        names
            .iter()
            .map(|n| (n.to_string(), NodeRecord::joined(SystemTime::UNIX_EPOCH)))
            .collect()
    }

    #[test]
    fn pending_until_every_expected_node_loaded_the_current_revision() {
        let s = subject(EnforcerSet::APPARMOR);
        let mut n = nodes(&["a", "b"]);
        let c = compute(&s, &n, SystemTime::now());
        assert_eq!(
            (c.phase, c.ready, c.desired, c.current),
            ("Pending", false, 2, 0)
        );
        assert_eq!(c.ready_reason, "Processing");
        assert!(
            c.ready_message.contains("waiting for a, b"),
            "{}",
            c.ready_message
        );
        ack(
            n.get_mut("a").expect("a"),
            7,
            &[(EnforcerKind::AppArmor, ResultKind::Applied, "")],
        );
        // An ack for an older revision does not count.
        ack(
            n.get_mut("b").expect("b"),
            6,
            &[(EnforcerKind::AppArmor, ResultKind::Applied, "")],
        );
        let c = compute(&s, &n, SystemTime::now());
        assert_eq!((c.phase, c.current), ("Pending", 1));
        ack(
            n.get_mut("b").expect("b"),
            7,
            &[(EnforcerKind::AppArmor, ResultKind::Applied, "")],
        );
        let c = compute(&s, &n, SystemTime::now());
        assert_eq!((c.phase, c.ready, c.current), ("Protecting", true, 2));
        assert_eq!((c.ready_status, c.ready_reason), ("True", "AllAgentsReady"));
    }

    #[test]
    fn a_failing_node_is_an_error_naming_it() {
        let s = subject(EnforcerSet {
            apparmor: true,
            bpf: true,
            seccomp: false,
        });
        let mut n = nodes(&["a", "b"]);
        ack(
            n.get_mut("a").expect("a"),
            7,
            &[
                (EnforcerKind::AppArmor, ResultKind::Applied, ""),
                (EnforcerKind::Bpf, ResultKind::Applied, ""),
            ],
        );
        ack(
            n.get_mut("b").expect("b"),
            7,
            &[
                (EnforcerKind::AppArmor, ResultKind::Applied, ""),
                (
                    EnforcerKind::Bpf,
                    ResultKind::Unavailable,
                    "the kernel has no BPF LSM",
                ),
            ],
        );
        let c = compute(&s, &n, SystemTime::now());
        assert_eq!((c.phase, c.ready, c.current), ("Error", false, 1));
        assert_eq!(c.ready_reason, "Error");
        assert!(
            c.ready_message
                .contains("node b: BPF unavailable: the kernel has no BPF LSM"),
            "{}",
            c.ready_message
        );
    }

    #[test]
    fn a_node_without_the_enforcer_fails_before_its_first_ack() {
        let s = subject(EnforcerSet::BPF);
        let mut n = nodes(&["a"]);
        n.get_mut("a").expect("a").capabilities = Some(Capabilities {
            bpf: Some(Capability {
                available: false,
                reason: "bpf is not in /sys/kernel/security/lsm".into(),
            }),
            ..Capabilities::default()
        });
        let c = compute(&s, &n, SystemTime::now());
        assert_eq!(c.phase, "Error");
        assert!(c.ready_message.contains("/sys/kernel/security/lsm"));
    }

    #[test]
    fn seccomp_needs_restart_counts_as_loaded_but_not_for_others() {
        let mut n = nodes(&["a"]);
        ack(
            n.get_mut("a").expect("a"),
            7,
            &[(EnforcerKind::Seccomp, ResultKind::NeedsRestart, "")],
        );
        assert!(compute(&subject(EnforcerSet::SECCOMP), &n, SystemTime::now()).ready);
        ack(
            n.get_mut("a").expect("a"),
            7,
            &[(EnforcerKind::AppArmor, ResultKind::NeedsRestart, "")],
        );
        assert!(!compute(&subject(EnforcerSet::APPARMOR), &n, SystemTime::now()).ready);
    }

    #[test]
    fn removed_nodes_are_not_waited_for() {
        let s = subject(EnforcerSet::APPARMOR);
        let mut n = nodes(&["a", "silent"]);
        ack(
            n.get_mut("a").expect("a"),
            7,
            &[(EnforcerKind::AppArmor, ResultKind::Applied, "")],
        );
        assert!(!compute(&s, &n, SystemTime::now()).ready);
        n.get_mut("silent").expect("silent").expected = false;
        let c = compute(&s, &n, SystemTime::now());
        assert_eq!(
            (c.phase, c.ready, c.desired, c.current),
            ("Protecting", true, 1, 1)
        );
        // With no expected node at all, nothing is ready.
        n.get_mut("a").expect("a").expected = false;
        let c = compute(&s, &n, SystemTime::now());
        assert_eq!((c.phase, c.ready, c.desired), ("Pending", false, 0));
    }

    #[test]
    fn modeling_then_completed_after_the_duration() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let s = Subject {
            modeling_minutes: Some(10),
            first_seen: start,
            ..subject(EnforcerSet::APPARMOR)
        };
        let n = nodes(&["a"]);
        assert_eq!(
            compute(&s, &n, start + Duration::from_secs(599)).phase,
            "Modeling"
        );
        assert_eq!(
            compute(&s, &n, start + Duration::from_secs(600)).phase,
            "Completed"
        );
    }

    #[test]
    fn transition_times_move_only_on_change() {
        let s = subject(EnforcerSet::APPARMOR);
        let mut n = nodes(&["a"]);
        let mut memo = None;
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(10);
        assert!(observe(&mut memo, &compute(&s, &n, t0), t0));
        let t1 = t0 + Duration::from_secs(5);
        assert!(!observe(&mut memo, &compute(&s, &n, t1), t1));
        assert_eq!(memo.as_ref().expect("memo").since, t0);
        ack(
            n.get_mut("a").expect("a"),
            7,
            &[(EnforcerKind::AppArmor, ResultKind::Applied, "")],
        );
        assert!(observe(&mut memo, &compute(&s, &n, t1), t1));
        assert_eq!(memo.as_ref().expect("memo").since, t1);
    }
}
