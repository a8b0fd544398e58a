//! The agent's Prometheus metrics: [`AgentMetrics`], a cheap handle (clone it freely) with one
//! method per thing to count, and [`AgentMetrics::serve`] for the `GET /metrics` endpoint
//! (plain HTTP: bind loopback or a pod-internal address).
//!
//! | name | type | labels | meaning |
//! |---|---|---|---|
//! | `varmor_agent_events_total` | counter | `enforcer`, `action` | violation events the agent produced ([`AgentMetrics::event`]) |
//! | `varmor_agent_events_dropped_total` | counter | `sink` | events a sink dropped because its queue was full (`upstream`, `violations.log`, `otlp`), read from the pipeline on each scrape ([`AgentMetrics::watch_sinks`]) |
//! | `varmor_agent_sink_queue_depth` | gauge | `sink` | events waiting in a sink's queue (for `upstream`: not yet acked by the manager) |
//! | `varmor_agent_sink_queue_capacity` | gauge | `sink` | the size of that queue |
//! | `varmor_agent_profile_loads_total` | counter | `enforcer`, `result` | profile loads and removals by outcome: `applied`, `failed`, `unavailable`, `needs_restart`, `removed` ([`AgentMetrics::profile_load`]) |
//! | `varmor_agent_binding_latency_seconds` | histogram | | from a container's start to its binding to a profile; buckets 100 µs .. 10 s ([`AgentMetrics::binding_latency`]) |
//! | `varmor_agent_bound_containers` | gauge | | containers bound to a profile now ([`AgentMetrics::set_bound_containers`]) |
//! | `varmor_agent_manager_connected` | gauge | | 1 while the Sync session with the manager is up, else 0 ([`AgentMetrics::set_manager_connected`]) |
//! | `varmor_agent_build_info` | info (gauge 1) | `version` | the agent's version |
//!
//! Label values are bounded: `enforcer` is `AppArmor`, `BPF`, `Seccomp` or `unknown`;
//! `action` is the event's action in upper case (`DENIED`, `AUDIT`, `ALLOWED`, ...) when it
//! is at most 32 letters, `|` or `_`, else `OTHER`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use varmor_proto::v1;
use varmor_rpc::metrics::{MetricsError, MetricsServer};

use crate::enforcer::{EnforcerKind, ResultStatus};

/// Buckets of `varmor_agent_binding_latency_seconds`: 100 µs to 10 s, about 2.5x apart.
pub const BINDING_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Labels of `varmor_agent_events_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    /// `AppArmor`, `BPF`, `Seccomp` or `unknown`.
    pub enforcer: &'static str,
    /// The action, normalized (see the module docs).
    pub action: String,
}

/// Labels of `varmor_agent_profile_loads_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LoadLabels {
    /// `AppArmor`, `BPF` or `Seccomp`.
    pub enforcer: &'static str,
    /// `applied`, `failed`, `unavailable`, `needs_restart` or `removed`.
    pub result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkLabel {
    sink: String,
}

/// Where the per-sink counters come from on each scrape.
type SinkSource = Box<dyn Fn() -> Vec<v1::SinkStats> + Send + Sync>;

#[derive(Default)]
struct Sinks {
    source: Mutex<Option<SinkSource>>,
}

impl std::fmt::Debug for Sinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = self
            .source
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some();
        f.debug_struct("Sinks").field("source_set", &set).finish()
    }
}

/// The agent's metrics; clones share the same series.
#[derive(Debug, Clone)]
pub struct AgentMetrics {
    events: Family<EventLabels, Counter>,
    loads: Family<LoadLabels, Counter>,
    binding: Histogram,
    bound: Gauge,
    connected: Gauge,
    sinks: Arc<Sinks>,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        AgentMetrics::new()
    }
}

/// The `enforcer` label of a proto enforcer value.
fn enforcer_label(v: i32) -> &'static str {
    match v1::Enforcer::try_from(v) {
        Ok(v1::Enforcer::Apparmor) => EnforcerKind::AppArmor.as_str(),
        Ok(v1::Enforcer::Bpf) => EnforcerKind::Bpf.as_str(),
        Ok(v1::Enforcer::Seccomp) => EnforcerKind::Seccomp.as_str(),
        _ => "unknown",
    }
}

/// The `action` label: bounded, so a malformed event cannot create unbounded series.
fn action_label(action: &str) -> String {
    let ok = !action.is_empty()
        && action.len() <= 32
        && action
            .bytes()
            .all(|b| b.is_ascii_alphabetic() || b == b'|' || b == b'_');
    if ok {
        action.to_ascii_uppercase()
    } else {
        "OTHER".to_string()
    }
}

fn result_label(r: ResultStatus) -> &'static str {
    match r {
        ResultStatus::Applied => "applied",
        ResultStatus::Failed => "failed",
        ResultStatus::Unavailable => "unavailable",
        ResultStatus::NeedsRestart => "needs_restart",
        ResultStatus::Removed => "removed",
    }
}

impl AgentMetrics {
    /// Fresh metrics: counters zero, not connected, nothing bound.
    pub fn new() -> Self {
        AgentMetrics {
            events: Family::default(),
            loads: Family::default(),
            binding: Histogram::new(BINDING_BUCKETS),
            bound: Gauge::default(),
            connected: Gauge::default(),
            sinks: Arc::new(Sinks::default()),
        }
    }

    /// Counts one violation event the agent produced, by its enforcer and action.
    pub fn event(&self, event: &v1::Event) {
        self.events
            .get_or_create(&EventLabels {
                enforcer: enforcer_label(event.enforcer),
                action: action_label(&event.action),
            })
            .inc();
    }

    /// Counts one profile load (or removal) of `enforcer` with its outcome.
    pub fn profile_load(&self, enforcer: EnforcerKind, result: ResultStatus) {
        self.loads
            .get_or_create(&LoadLabels {
                enforcer: enforcer.as_str(),
                result: result_label(result),
            })
            .inc();
    }

    /// Records the time from a container's start to its binding (zero when it was bound
    /// before its first instruction).
    pub fn binding_latency(&self, latency: Duration) {
        self.binding.observe(latency.as_secs_f64());
    }

    /// Sets the number of containers bound to a profile now.
    pub fn set_bound_containers(&self, n: usize) {
        self.bound.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Sets whether the Sync session with the manager is up.
    pub fn set_manager_connected(&self, connected: bool) {
        self.connected.set(i64::from(connected));
    }

    /// Reads per-sink drops and queue depths from `source` on each scrape, e.g.
    /// `move || pipeline.sink_stats()`: the pipeline already counts them, so nothing is
    /// counted twice. Replaces an earlier source.
    pub fn watch_sinks(&self, source: impl Fn() -> Vec<v1::SinkStats> + Send + Sync + 'static) {
        *self
            .sinks
            .source
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Box::new(source));
    }

    /// A registry with every agent metric.
    pub fn registry(&self) -> Registry {
        let mut r = Registry::default();
        r.register(
            "varmor_agent_events",
            "Violation events the agent produced, by enforcer and action",
            self.events.clone(),
        );
        r.register(
            "varmor_agent_profile_loads",
            "Profile loads and removals, by enforcer and result",
            self.loads.clone(),
        );
        r.register_with_unit(
            "varmor_agent_binding_latency",
            "Time from a container's start to its binding to a profile",
            Unit::Seconds,
            self.binding.clone(),
        );
        r.register(
            "varmor_agent_bound_containers",
            "Containers bound to a profile",
            self.bound.clone(),
        );
        r.register(
            "varmor_agent_manager_connected",
            "1 while the Sync session with the manager is up",
            self.connected.clone(),
        );
        r.register(
            "varmor_agent_build",
            "The agent's version",
            Info::new(vec![("version", crate::AGENT_VERSION)]),
        );
        r.register_collector(Box::new(SinkCollector {
            sinks: self.sinks.clone(),
        }));
        r
    }

    /// Serves [`AgentMetrics::registry`] at `http://addr/metrics` until the returned server
    /// is shut down or dropped.
    pub async fn serve(&self, addr: SocketAddr) -> Result<MetricsServer, MetricsError> {
        MetricsServer::start(addr, Arc::new(self.registry())).await
    }
}

#[derive(Debug)]
struct SinkCollector {
    sinks: Arc<Sinks>,
}

impl Collector for SinkCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let stats = {
            let source = self
                .sinks
                .source
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            source.as_ref().map(|f| f()).unwrap_or_default()
        };
        let dropped = Family::<SinkLabel, Counter>::default();
        let depth = Family::<SinkLabel, Gauge>::default();
        let capacity = Family::<SinkLabel, Gauge>::default();
        for s in &stats {
            let label = SinkLabel {
                sink: s.name.clone(),
            };
            dropped.get_or_create(&label).inc_by(s.dropped);
            depth
                .get_or_create(&label)
                .set(i64::try_from(s.queued).unwrap_or(i64::MAX));
            capacity
                .get_or_create(&label)
                .set(i64::try_from(s.capacity).unwrap_or(i64::MAX));
        }
        let m = encoder.encode_descriptor(
            "varmor_agent_events_dropped",
            "Events a sink dropped because its queue was full.",
            None,
            dropped.metric_type(),
        )?;
        dropped.encode(m)?;
        let m = encoder.encode_descriptor(
            "varmor_agent_sink_queue_depth",
            "Events waiting in a sink's queue.",
            None,
            depth.metric_type(),
        )?;
        depth.encode(m)?;
        let m = encoder.encode_descriptor(
            "varmor_agent_sink_queue_capacity",
            "The size of a sink's queue.",
            None,
            capacity.metric_type(),
        )?;
        capacity.encode(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use varmor_rpc::metrics::Exposition;

    async fn scrape(addr: SocketAddr) -> Exposition {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await
            .expect("send");
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut raw))
            .await
            .expect("in time")
            .expect("read");
        let text = String::from_utf8(raw).expect("utf-8");
        let (head, body) = text.split_once("\r\n\r\n").expect("headers");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        Exposition::parse(body).unwrap_or_else(|e| panic!("{e}\n{body}"))
    }

    fn event(enforcer: v1::Enforcer, action: &str) -> v1::Event {
        v1::Event {
            enforcer: enforcer as i32,
            action: action.into(),
            ..Default::default()
        }
    }

    fn sink(name: &str, dropped: u64, queued: u64) -> v1::SinkStats {
        v1::SinkStats {
            name: name.into(),
            dropped,
            queued,
            capacity: 100,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_scrape_shows_every_family_after_known_operations() {
        let m = AgentMetrics::new();
        let server = m
            .serve("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("serves");
        let addr = server.local_addr();

        let e = scrape(addr).await;
        assert_eq!(
            e.get(
                "varmor_agent_build_info",
                &[("version", crate::AGENT_VERSION)]
            ),
            Some(1.0)
        );
        assert_eq!(e.get("varmor_agent_manager_connected", &[]), Some(0.0));

        let h = m.clone();
        h.event(&event(v1::Enforcer::Bpf, "DENIED"));
        h.event(&event(v1::Enforcer::Bpf, "DENIED"));
        h.event(&event(v1::Enforcer::Apparmor, "audit"));
        h.event(&event(v1::Enforcer::Unspecified, "drop table; --"));
        h.profile_load(EnforcerKind::Bpf, ResultStatus::Applied);
        h.profile_load(EnforcerKind::Seccomp, ResultStatus::Failed);
        h.profile_load(EnforcerKind::Seccomp, ResultStatus::Failed);
        h.binding_latency(Duration::ZERO);
        h.binding_latency(Duration::from_micros(700));
        h.binding_latency(Duration::from_secs(30));
        h.set_bound_containers(3);
        h.set_manager_connected(true);
        h.watch_sinks(|| vec![sink("upstream", 5, 7), sink("violations.log", 0, 1)]);

        let e = scrape(addr).await;
        // The Prometheus text format declares counters with their `_total` name.
        assert_eq!(
            e.types
                .get("varmor_agent_events_dropped_total")
                .map(String::as_str),
            Some("counter")
        );
        let ev = |enforcer, action| {
            e.get(
                "varmor_agent_events_total",
                &[("enforcer", enforcer), ("action", action)],
            )
        };
        assert_eq!(ev("BPF", "DENIED"), Some(2.0));
        assert_eq!(ev("AppArmor", "AUDIT"), Some(1.0));
        assert_eq!(ev("unknown", "OTHER"), Some(1.0));
        let load = |enforcer, result| {
            e.get(
                "varmor_agent_profile_loads_total",
                &[("enforcer", enforcer), ("result", result)],
            )
        };
        assert_eq!(load("BPF", "applied"), Some(1.0));
        assert_eq!(load("Seccomp", "failed"), Some(2.0));
        assert_eq!(load("BPF", "failed"), None);
        let bucket = |le| e.get("varmor_agent_binding_latency_seconds_bucket", &[("le", le)]);
        assert_eq!(bucket("0.0001"), Some(1.0));
        assert_eq!(bucket("0.001"), Some(2.0));
        assert_eq!(bucket("10"), Some(2.0));
        assert_eq!(bucket("+Inf"), Some(3.0));
        assert_eq!(
            e.get("varmor_agent_binding_latency_seconds_count", &[]),
            Some(3.0)
        );
        assert_eq!(e.get("varmor_agent_bound_containers", &[]), Some(3.0));
        assert_eq!(e.get("varmor_agent_manager_connected", &[]), Some(1.0));
        assert_eq!(
            e.get("varmor_agent_events_dropped_total", &[("sink", "upstream")]),
            Some(5.0)
        );
        assert_eq!(
            e.get(
                "varmor_agent_sink_queue_depth",
                &[("sink", "violations.log")]
            ),
            Some(1.0)
        );
        assert_eq!(
            e.get("varmor_agent_sink_queue_capacity", &[("sink", "upstream")]),
            Some(100.0)
        );

        // The sinks are read anew on each scrape.
        h.watch_sinks(|| vec![sink("upstream", 9, 0)]);
        h.set_manager_connected(false);
        let e = scrape(addr).await;
        assert_eq!(
            e.get("varmor_agent_events_dropped_total", &[("sink", "upstream")]),
            Some(9.0)
        );
        assert_eq!(
            e.get(
                "varmor_agent_sink_queue_depth",
                &[("sink", "violations.log")]
            ),
            None
        );
        assert_eq!(e.get("varmor_agent_manager_connected", &[]), Some(0.0));
        server.shutdown().await;
    }

    #[test]
    fn action_labels_are_bounded() {
        assert_eq!(action_label("DENIED"), "DENIED");
        assert_eq!(action_label("audit|allowed"), "AUDIT|ALLOWED");
        assert_eq!(action_label(""), "OTHER");
        assert_eq!(action_label("DENIED\n"), "OTHER");
        assert_eq!(action_label(&"A".repeat(33)), "OTHER");
    }
}
