//! Events from agents: sequence checks, attribution, and the fan-out to watchers.
//!
//! Rules for the agent's stream (`PublishEvents`):
//! * the node name of every event is set from the agent's certificate;
//! * an event is accepted when its sequence number is above the highest one accepted for the
//!   node; anything else is a duplicate (typically re-sent after a reconnect) and is dropped;
//! * a jump over sequence numbers is logged and counted as missing;
//! * the position is persisted before the ack `EventAck{up_to_sequence}` is sent, so an
//!   acked event is never accepted twice, even across a manager restart;
//! * `Join` starts the node's sequence over (an agent that joins again lost its state);
//!   `Renew` does not.
//!
//! Watchers get accepted events through a bounded broadcast: intake never waits for a
//! watcher. A watcher that falls behind skips the events it missed, and the skip is counted
//! and logged.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::broadcast;
use varmor_proto::v1;

use crate::state::EventPosition;

/// What one batch contributed.
#[derive(Debug, Default)]
pub struct Intake {
    /// The accepted events, attributed to the node.
    pub accepted: Vec<v1::Event>,
    /// Events at or below the last accepted sequence.
    pub duplicates: u64,
    /// Sequence numbers jumped over.
    pub missing: u64,
    /// The highest accepted sequence, to ack.
    pub up_to: u64,
}

/// Accepts the new events of a batch from `node` and moves its position.
pub fn intake(pos: &mut EventPosition, node: &str, batch: v1::EventBatch) -> Intake {
    let mut out = Intake::default();
    pos.dropped = pos.dropped.saturating_add(batch.dropped);
    for mut e in batch.events {
        if e.sequence <= pos.last_sequence {
            out.duplicates += 1;
            continue;
        }
        let gap = e.sequence - pos.last_sequence - 1;
        if gap > 0 {
            tracing::warn!(
                node,
                after = pos.last_sequence,
                next = e.sequence,
                missing = gap,
                "event sequence gap"
            );
            out.missing += gap;
        }
        pos.last_sequence = e.sequence;
        e.node_name = node.to_string();
        out.accepted.push(e);
    }
    pos.received = pos.received.saturating_add(out.accepted.len() as u64);
    pos.duplicates = pos.duplicates.saturating_add(out.duplicates);
    pos.missing = pos.missing.saturating_add(out.missing);
    out.up_to = pos.last_sequence;
    out
}

/// Whether an event passes a watcher's filter (empty fields match everything; the action
/// matches when it contains the filter's action, ignoring case; the namespace matches the
/// policy's or the pod's namespace).
pub fn matches(f: &v1::EventFilter, e: &v1::Event) -> bool {
    (f.node_name.is_empty() || f.node_name == e.node_name)
        && (f.namespace.is_empty()
            || f.namespace == e.policy_namespace
            || f.namespace == e.pod_namespace)
        && (f.policy.is_empty() || f.policy == e.policy_name)
        && (f.action.is_empty()
            || e.action
                .to_ascii_uppercase()
                .contains(&f.action.to_ascii_uppercase()))
}

/// The fan-out of accepted events to watchers.
#[derive(Debug)]
pub struct EventHub {
    tx: broadcast::Sender<Arc<v1::Event>>,
    skipped: AtomicU64,
}

impl EventHub {
    /// A hub whose watchers may fall `capacity` events behind before they skip.
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity);
        EventHub {
            tx,
            skipped: AtomicU64::new(0),
        }
    }

    /// Sends events to every watcher; never waits.
    pub fn publish(&self, events: Vec<v1::Event>) {
        if self.tx.receiver_count() == 0 {
            return;
        }
        for e in events {
            let _ = self.tx.send(Arc::new(e));
        }
    }

    /// A new watcher.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<v1::Event>> {
        self.tx.subscribe()
    }

    /// Counts events a watcher skipped.
    pub fn count_skipped(&self, n: u64) -> u64 {
        self.skipped.fetch_add(n, Ordering::Relaxed) + n
    }

    /// Events skipped by slow watchers since start.
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: u64, node: &str) -> v1::Event {
        v1::Event {
            sequence: seq,
            node_name: node.into(),
            action: "DENIED".into(),
            ..Default::default()
        }
    }

    #[test]
    fn duplicates_are_dropped_and_gaps_counted() {
        let mut pos = EventPosition::default();
        let i = intake(
            &mut pos,
            "a",
            v1::EventBatch {
                events: vec![ev(1, "b"), ev(2, "b"), ev(3, "b")],
                dropped: 0,
            },
        );
        assert_eq!(i.accepted.len(), 3);
        assert!(i.accepted.iter().all(|e| e.node_name == "a"));
        assert_eq!(i.up_to, 3);
        // Re-sent after a reconnect, plus new ones with a gap.
        let i = intake(
            &mut pos,
            "a",
            v1::EventBatch {
                events: vec![ev(2, "a"), ev(3, "a"), ev(4, "a"), ev(7, "a")],
                dropped: 5,
            },
        );
        assert_eq!(
            i.accepted.iter().map(|e| e.sequence).collect::<Vec<_>>(),
            [4, 7]
        );
        assert_eq!((i.duplicates, i.missing, i.up_to), (2, 2, 7));
        assert_eq!(
            pos,
            EventPosition {
                last_sequence: 7,
                received: 5,
                dropped: 5,
                duplicates: 2,
                missing: 2
            }
        );
        // An empty batch acks the position again.
        let i = intake(&mut pos, "a", v1::EventBatch::default());
        assert_eq!(i.up_to, 7);
    }

    #[test]
    fn filters() {
        let mut e = ev(1, "n1");
        e.pod_namespace = "shop".into();
        e.policy_namespace = "shop".into();
        e.policy_name = "web".into();
        e.action = "AUDIT|ALLOWED".into();
        let f = |node: &str, ns: &str, policy: &str, action: &str| v1::EventFilter {
            node_name: node.into(),
            namespace: ns.into(),
            policy: policy.into(),
            action: action.into(),
        };
        assert!(matches(&f("", "", "", ""), &e));
        assert!(matches(&f("n1", "shop", "web", "allowed"), &e));
        assert!(!matches(&f("n2", "", "", ""), &e));
        assert!(!matches(&f("", "other", "", ""), &e));
        assert!(!matches(&f("", "", "api", ""), &e));
        assert!(!matches(&f("", "", "", "DENIED"), &e));
        e.policy_namespace = "varmor".into();
        assert!(matches(&f("", "varmor", "", ""), &e));
    }

    #[tokio::test]
    async fn a_watcher_that_never_reads_does_not_block_publishing() {
        let hub = EventHub::new(16);
        let mut slow = hub.subscribe();
        for i in 0..10_000u64 {
            hub.publish(vec![ev(i + 1, "a")]);
        }
        match slow.recv().await {
            Err(broadcast::error::RecvError::Lagged(n)) => assert_eq!(n, 10_000 - 16),
            other => panic!("expected a lag, got {other:?}"),
        }
    }
}
