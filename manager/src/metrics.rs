//! The manager's Prometheus metrics.
//!
//! Served at `GET /metrics` when `--metrics-listen ADDR` is set (see `manager/README.md`
//! for the table of every metric). Counters count since the manager started; gauges about
//! policies and sessions are computed from the state on each scrape, so they are never out
//! of date.
//!
//! | name | type | labels | meaning |
//! |---|---|---|---|
//! | `varmor_profile_processing_success_total` | counter | `node_name` | acks of a profile in force where every enforcer loaded it (APPLIED or NEEDS_RESTART) |
//! | `varmor_profile_processing_failure_total` | counter | `node_name` | acks of a profile in force with a FAILED or UNAVAILABLE enforcer |
//! | `varmor_profile_change_count_total` | counter | `node_name` | acks recorded: loads, failures and removals |
//! | `varmor_policies` | gauge | `phase` | policies by status phase (`Pending`, `Protecting`, `Error`, `Modeling`, `Completed`) |
//! | `varmor_agents_connected` | gauge | | nodes with a live Sync session |
//! | `varmor_events_received_total` | counter | `node_name` | events accepted from the node's event stream |
//! | `varmor_events_duplicates_total` | counter | `node_name` | events sent again (at or below the accepted sequence) and ignored |
//! | `varmor_events_missing_total` | counter | `node_name` | sequence numbers jumped over (never received) |
//! | `varmor_events_dropped_by_agents_total` | counter | `node_name` | events the agent reported dropping (its buffer was full) |
//! | `varmor_bundle_distribution_seconds` | histogram | | from a policy change to every expected node having acked the new revision |
//! | `varmor_tls_handshake_failures_total` | counter | `reason` | refused TLS handshakes (`certificate`, `protocol`, `alert`, `tls`, `io`, `timeout`) |
//! | `varmor_joins_rejected_total` | counter | `reason` | refused `Join` calls (`join_token`, `node_name`, `subject_alt_names`, `csr`, `internal`) |
//! | `varmor_build_info` | info (gauge 1) | `version` | the manager's version |

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use crate::shared::subject;
use crate::state::{NodeRecord, ResultKind, State};
use crate::status::{self, phase};
use crate::Error;

/// Buckets of [`ManagerMetrics::distribution`], in seconds: a few milliseconds on one host
/// up to minutes for a large cluster with a slow node.
pub const DISTRIBUTION_BUCKETS: [f64; 15] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// The label of per-node counters (vArmor's label name).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabel {
    /// The node.
    pub node_name: String,
}

/// The label of refusal counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// A short, stable reason.
    pub reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabel {
    phase: &'static str,
}

/// Every metric the manager updates; cheap to clone (the metrics are shared handles).
#[derive(Debug, Clone)]
pub struct ManagerMetrics {
    /// `varmor_profile_processing_success`.
    pub processing_success: Family<NodeLabel, Counter>,
    /// `varmor_profile_processing_failure`.
    pub processing_failure: Family<NodeLabel, Counter>,
    /// `varmor_profile_change_count`.
    pub profile_changes: Family<NodeLabel, Counter>,
    /// `varmor_events_received`.
    pub events_received: Family<NodeLabel, Counter>,
    /// `varmor_events_duplicates`.
    pub events_duplicates: Family<NodeLabel, Counter>,
    /// `varmor_events_missing`.
    pub events_missing: Family<NodeLabel, Counter>,
    /// `varmor_events_dropped_by_agents`.
    pub events_dropped_by_agents: Family<NodeLabel, Counter>,
    /// `varmor_bundle_distribution_seconds`.
    pub distribution: Histogram,
    /// `varmor_tls_handshake_failures`.
    pub tls_handshake_failures: Family<ReasonLabel, Counter>,
    /// `varmor_joins_rejected`.
    pub joins_rejected: Family<ReasonLabel, Counter>,
}

impl Default for ManagerMetrics {
    fn default() -> Self {
        ManagerMetrics::new()
    }
}

fn node(name: &str) -> NodeLabel {
    NodeLabel {
        node_name: name.to_string(),
    }
}

impl ManagerMetrics {
    /// Fresh metrics, all zero.
    pub fn new() -> Self {
        ManagerMetrics {
            processing_success: Family::default(),
            processing_failure: Family::default(),
            profile_changes: Family::default(),
            events_received: Family::default(),
            events_duplicates: Family::default(),
            events_missing: Family::default(),
            events_dropped_by_agents: Family::default(),
            distribution: Histogram::new(DISTRIBUTION_BUCKETS),
            tls_handshake_failures: Family::default(),
            joins_rejected: Family::default(),
        }
    }

    /// A registry with every metric, and the gauges computed from `state` on each scrape.
    pub fn registry(&self, state: Arc<Mutex<State>>) -> Registry {
        let mut r = Registry::default();
        r.register(
            "varmor_profile_processing_success",
            "Acks of a profile in force where every enforcer loaded it",
            self.processing_success.clone(),
        );
        r.register(
            "varmor_profile_processing_failure",
            "Acks of a profile in force where an enforcer failed or is unavailable",
            self.processing_failure.clone(),
        );
        r.register(
            "varmor_profile_change_count",
            "Acks recorded from a node: loads, failures and removals",
            self.profile_changes.clone(),
        );
        r.register(
            "varmor_events_received",
            "Events accepted from a node's event stream",
            self.events_received.clone(),
        );
        r.register(
            "varmor_events_duplicates",
            "Events a node sent again (at or below the accepted sequence), ignored",
            self.events_duplicates.clone(),
        );
        r.register(
            "varmor_events_missing",
            "Event sequence numbers a node jumped over",
            self.events_missing.clone(),
        );
        r.register(
            "varmor_events_dropped_by_agents",
            "Events a node's agent reported dropping because its buffer was full",
            self.events_dropped_by_agents.clone(),
        );
        r.register_with_unit(
            "varmor_bundle_distribution",
            "Time from a policy change until every expected node acked the new revision",
            Unit::Seconds,
            self.distribution.clone(),
        );
        r.register(
            "varmor_tls_handshake_failures",
            "Refused TLS handshakes on the gRPC port, by reason",
            self.tls_handshake_failures.clone(),
        );
        r.register(
            "varmor_joins_rejected",
            "Refused Join calls, by reason",
            self.joins_rejected.clone(),
        );
        r.register(
            "varmor_build",
            "The manager's version",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        r.register_collector(Box::new(StateCollector { state }));
        r
    }

    /// Counts an ack of `node`: `removed` when it reports the profile removed, else the
    /// per-enforcer results of a profile in force.
    pub(crate) fn ack(&self, node_name: &str, removed: bool, results: &[ResultKind]) {
        let label = node(node_name);
        self.profile_changes.get_or_create(&label).inc();
        if removed {
            return;
        }
        if results
            .iter()
            .any(|r| matches!(r, ResultKind::Failed | ResultKind::Unavailable))
        {
            self.processing_failure.get_or_create(&label).inc();
        } else if !results.is_empty()
            && results
                .iter()
                .all(|r| matches!(r, ResultKind::Applied | ResultKind::NeedsRestart))
        {
            self.processing_success.get_or_create(&label).inc();
        }
    }

    /// Counts what one event batch of `node_name` contributed.
    pub(crate) fn events(
        &self,
        node_name: &str,
        accepted: u64,
        duplicates: u64,
        missing: u64,
        dropped: u64,
    ) {
        let label = node(node_name);
        for (family, n) in [
            (&self.events_received, accepted),
            (&self.events_duplicates, duplicates),
            (&self.events_missing, missing),
            (&self.events_dropped_by_agents, dropped),
        ] {
            // Series appear with the node's first batch, even when it adds nothing.
            family.get_or_create(&label).inc_by(n);
        }
    }

    /// Counts a refused TLS handshake.
    pub fn tls_handshake_failed(&self, reason: &str) {
        self.tls_handshake_failures
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Counts a refused join.
    pub(crate) fn join_rejected(&self, error: &Error) {
        self.joins_rejected
            .get_or_create(&ReasonLabel {
                reason: join_reject_reason(error).to_string(),
            })
            .inc();
    }
}

/// The `reason` label of a refused join.
fn join_reject_reason(error: &Error) -> &'static str {
    match error {
        Error::BadJoinToken => "join_token",
        Error::InvalidArgument { field, .. } if field == "node_name" => "node_name",
        Error::InvalidArgument { field, .. } if field.starts_with("subject_alt_names") => {
            "subject_alt_names"
        }
        Error::InvalidArgument { field, .. } if field.starts_with("csr") => "csr",
        _ => "internal",
    }
}

/// Policy changes on their way to the nodes: each started when the manager accepts a new
/// revision and observed in the histogram once every expected node acked that revision
/// (loaded or failed). A newer revision replaces an unfinished one; a removal or the last
/// expected node going away forgets it.
#[derive(Debug)]
pub struct Rollouts {
    pending: HashMap<String, (u64, Instant)>,
    latency: Histogram,
}

impl Rollouts {
    /// Observes into `latency`.
    pub fn new(latency: Histogram) -> Self {
        Rollouts {
            pending: HashMap::new(),
            latency,
        }
    }

    /// A new revision of `profile` was accepted at `at`. Without expected nodes there is
    /// nothing to distribute and nothing is tracked.
    pub fn start(
        &mut self,
        profile: &str,
        revision: u64,
        at: Instant,
        nodes: &BTreeMap<String, NodeRecord>,
    ) {
        if nodes.values().any(|n| n.expected) {
            self.pending.insert(profile.to_string(), (revision, at));
        } else {
            self.pending.remove(profile);
        }
    }

    /// `profile` was removed.
    pub fn cancel(&mut self, profile: &str) {
        self.pending.remove(profile);
    }

    /// Observes the rollout of `profile` when every expected node acked its revision;
    /// returns how long it took.
    pub fn check(
        &mut self,
        profile: &str,
        nodes: &BTreeMap<String, NodeRecord>,
        now: Instant,
    ) -> Option<Duration> {
        let &(revision, started) = self.pending.get(profile)?;
        let mut expected = nodes.values().filter(|n| n.expected).peekable();
        if expected.peek().is_none() {
            self.pending.remove(profile);
            return None;
        }
        let all_acked = expected.all(|n| {
            n.results
                .get(profile)
                .is_some_and(|r| r.revision >= revision)
        });
        if !all_acked {
            return None;
        }
        self.pending.remove(profile);
        let took = now.saturating_duration_since(started);
        self.latency.observe(took.as_secs_f64());
        Some(took)
    }

    /// Profiles still on their way.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

/// Gauges read from the state on each scrape.
#[derive(Debug)]
struct StateCollector {
    state: Arc<Mutex<State>>,
}

const PHASES: [&str; 5] = [
    phase::PENDING,
    phase::PROTECTING,
    phase::ERROR,
    phase::MODELING,
    phase::COMPLETED,
];

impl StateCollector {
    /// Policies per phase (as `ListPolicies` shows them) and live sessions.
    fn read(&self) -> ([i64; 5], i64) {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = SystemTime::now();
        let mut counts = [0i64; 5];
        let mut count = |p: &str| {
            if let Some(i) = PHASES.iter().position(|x| *x == p) {
                counts[i] += 1;
            }
        };
        for p in state.catalog.policies() {
            count(status::compute(&subject(p), &state.nodes, now).phase);
        }
        // A policy that never had a valid version is listed in phase Error.
        for (_, s) in state.catalog.sources() {
            if s.errors.is_empty() || s.policy.is_some() || s.duplicate_of.is_some() {
                continue;
            }
            if let Some(identity) = &s.identity {
                if state.catalog.policy(&identity.profile_name()).is_none() {
                    count(phase::ERROR);
                }
            }
        }
        (counts, state.sessions.len() as i64)
    }
}

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let (counts, connected) = self.read();
        let policies = Family::<PhaseLabel, Gauge>::default();
        for (phase, n) in PHASES.iter().zip(counts) {
            policies.get_or_create(&PhaseLabel { phase }).set(n);
        }
        let m = encoder.encode_descriptor(
            "varmor_policies",
            "Policies by status phase.",
            None,
            policies.metric_type(),
        )?;
        policies.encode(m)?;
        let agents = ConstGauge::new(connected);
        let m = encoder.encode_descriptor(
            "varmor_agents_connected",
            "Nodes with a live Sync session.",
            None,
            agents.metric_type(),
        )?;
        agents.encode(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::ProfileResult;
    use varmor_rpc::metrics::{encode, Exposition, Format};

    /// The count and sum of a histogram, read through its exposition.
    fn observed(h: &Histogram) -> (f64, f64) {
        let mut r = Registry::default();
        r.register_with_unit("h", "h", Unit::Seconds, h.clone());
        let e =
            Exposition::parse(&encode(&r, Format::OpenMetrics).expect("encodes")).expect("parses");
        (
            e.get("h_seconds_count", &[]).expect("count"),
            e.get("h_seconds_sum", &[]).expect("sum"),
        )
    }

    fn nodes(spec: &[(&str, bool, Option<u64>)]) -> BTreeMap<String, NodeRecord> {
        spec.iter()
            .map(|(name, expected, acked)| {
                let mut n = NodeRecord::joined(SystemTime::UNIX_EPOCH);
                n.expected = *expected;
                if let Some(revision) = acked {
                    n.results.insert(
                        "p".into(),
                        ProfileResult {
                            revision: *revision,
                            results: vec![],
                            at: SystemTime::UNIX_EPOCH,
                        },
                    );
                }
                (name.to_string(), n)
            })
            .collect()
    }

    #[test]
    fn a_rollout_ends_when_every_expected_node_acked_the_revision() {
        let h = Histogram::new(DISTRIBUTION_BUCKETS);
        let mut r = Rollouts::new(h.clone());
        let t0 = Instant::now();
        r.start("p", 2, t0, &nodes(&[("a", true, None), ("b", true, None)]));
        // One node acked the new revision, another an old one; a removed node does not count.
        let n = nodes(&[
            ("a", true, Some(2)),
            ("b", true, Some(1)),
            ("c", false, None),
        ]);
        assert_eq!(r.check("p", &n, t0 + Duration::from_millis(5)), None);
        assert_eq!(observed(&h).0, 0.0);
        let n = nodes(&[
            ("a", true, Some(2)),
            ("b", true, Some(2)),
            ("c", false, None),
        ]);
        assert_eq!(
            r.check("p", &n, t0 + Duration::from_millis(30)),
            Some(Duration::from_millis(30))
        );
        let (count, sum) = observed(&h);
        assert_eq!(count, 1.0);
        assert!((sum - 0.03).abs() < 1e-9, "{sum}");
        // Observed once only.
        assert_eq!(r.check("p", &n, t0 + Duration::from_secs(1)), None);
        assert_eq!((observed(&h).0, r.pending()), (1.0, 0));
    }

    #[test]
    fn rollouts_without_nodes_or_after_removal_are_not_observed() {
        let h = Histogram::new(DISTRIBUTION_BUCKETS);
        let mut r = Rollouts::new(h.clone());
        let t0 = Instant::now();
        r.start("p", 1, t0, &nodes(&[("a", false, None)]));
        assert_eq!(r.pending(), 0);
        r.start("p", 1, t0, &nodes(&[("a", true, None)]));
        r.cancel("p");
        assert_eq!(r.check("p", &nodes(&[("a", true, Some(1))]), t0), None);
        // The only expected node was removed while waiting.
        r.start("p", 3, t0, &nodes(&[("a", true, None)]));
        assert_eq!(r.check("p", &nodes(&[("a", false, Some(3))]), t0), None);
        assert_eq!((observed(&h).0, r.pending()), (0.0, 0));
    }

    #[test]
    fn acks_are_classified() {
        let m = ManagerMetrics::new();
        m.ack(
            "n1",
            false,
            &[ResultKind::Applied, ResultKind::NeedsRestart],
        );
        m.ack("n1", false, &[ResultKind::Applied, ResultKind::Failed]);
        m.ack("n1", false, &[ResultKind::Unavailable]);
        m.ack("n1", true, &[ResultKind::Removed]);
        let get = |f: &Family<NodeLabel, Counter>| f.get_or_create(&node("n1")).get();
        assert_eq!(get(&m.processing_success), 1);
        assert_eq!(get(&m.processing_failure), 2);
        assert_eq!(get(&m.profile_changes), 4);
    }

    #[test]
    fn join_refusals_have_stable_reasons() {
        assert_eq!(join_reject_reason(&Error::BadJoinToken), "join_token");
        assert_eq!(
            join_reject_reason(&Error::invalid("node_name", "missing")),
            "node_name"
        );
        assert_eq!(
            join_reject_reason(&Error::invalid("subject_alt_names[0]", "x")),
            "subject_alt_names"
        );
        assert_eq!(join_reject_reason(&Error::invalid("csr_pem", "x")), "csr");
        assert_eq!(
            join_reject_reason(&Error::Config("disk".into())),
            "internal"
        );
    }
}
