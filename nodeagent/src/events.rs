//! The event pipeline towards the manager: a bounded buffer with per-agent sequence numbers,
//! and the publisher that streams it over `PublishEvents`.
//!
//! * Sequence numbers are assigned at intake, start at 1 and increase by 1. The next number is
//!   persisted in `<state-dir>/events.seq` in blocks (one write per [`SEQUENCE_BLOCK`] events;
//!   the exact value at a clean shutdown), so numbers keep increasing across restarts; after a
//!   crash the next agent skips the rest of the block (a gap, never a reuse).
//! * Events stay in the buffer until the manager acknowledges them (`EventAck` is cumulative).
//!   After a reconnect everything not acknowledged is sent again; the manager ignores
//!   sequences it already accepted.
//! * When the buffer is full a new event is dropped (it gets no sequence number) and counted;
//!   the count goes to the manager in the next batch's `dropped` (again after a reconnect when
//!   that batch was not acknowledged) and shows in `GetState`.
//! * An accepted event is held once (`Arc`): the buffer, the live feed and the violation
//!   pipeline's other sinks share it ([`EventBuffer::push_shared`]); it is copied only into
//!   the batches sent to the manager.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use tokio::sync::{broadcast, watch, Notify};
use tokio_stream::wrappers::ReceiverStream;
use varmor_proto::v1;

use crate::backoff::Backoff;
use crate::error::AgentError;
use crate::fsutil;
use crate::gateway::{self, GatewayError};
use crate::session::SessionContext;

/// Sequence numbers reserved per write of `events.seq`.
pub const SEQUENCE_BLOCK: u64 = 1024;
/// The most events in one batch.
pub const MAX_BATCH: usize = 512;
/// The most batches sent and not yet acknowledged.
pub const MAX_IN_FLIGHT: usize = 8;

/// What happened to a pushed event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Buffered with this sequence number.
    Accepted(u64),
    /// The buffer was full; the event was counted as dropped.
    Dropped,
}

/// The pipeline's counters, as `GetState` shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EventCounters {
    /// Events accepted since the agent started.
    pub produced: u64,
    /// Events the manager acknowledged since the agent started.
    pub acked: u64,
    /// Events waiting for an acknowledgement.
    pub buffered: u64,
    /// Events dropped because the buffer was full, since the agent started.
    pub dropped: u64,
    /// The buffer's capacity.
    pub capacity: u64,
}

#[derive(Debug)]
struct Inner {
    queue: VecDeque<Arc<v1::Event>>,
    capacity: usize,
    next_sequence: u64,
    /// Sequences below this are covered by `events.seq`.
    reserved_until: u64,
    acked_up_to: u64,
    sent_up_to: u64,
    produced: u64,
    acked: u64,
    dropped: u64,
    unreported_drops: u64,
    /// Batches sent on the current stream and not acknowledged: (last sequence, drops carried).
    in_flight: VecDeque<(u64, u64)>,
}

/// The bounded event buffer. Push events with [`EventBuffer::push`]; the publisher drains it.
#[derive(Debug)]
pub struct EventBuffer {
    node: String,
    sequence_file: Option<PathBuf>,
    inner: Mutex<Inner>,
    notify: Notify,
    live: broadcast::Sender<Arc<v1::Event>>,
}

impl EventBuffer {
    /// A buffer of `capacity` events for node `node`, continuing the sequence stored in
    /// `sequence_file` (none: start at 1 and persist nothing).
    pub fn open(
        node: impl Into<String>,
        capacity: usize,
        sequence_file: Option<PathBuf>,
    ) -> Result<Self, AgentError> {
        if capacity == 0 {
            return Err(AgentError::Config(
                "--event-buffer must be at least 1".into(),
            ));
        }
        let next_sequence = match &sequence_file {
            None => 1,
            Some(path) => match std::fs::read_to_string(path) {
                Ok(text) => text.trim().parse::<u64>().map_err(|e| {
                    AgentError::Config(format!(
                        "{} does not hold a sequence number ({e}); remove it to start again at 1 \
                         (the manager will ignore numbers it has seen)",
                        path.display()
                    ))
                })?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => 1,
                Err(source) => {
                    return Err(AgentError::Read {
                        what: "the event sequence",
                        path: path.clone(),
                        source,
                    })
                }
            }
            .max(1),
        };
        let (live, _) = broadcast::channel(1024);
        Ok(EventBuffer {
            node: node.into(),
            sequence_file,
            inner: Mutex::new(Inner {
                queue: VecDeque::new(),
                capacity,
                next_sequence,
                reserved_until: next_sequence,
                acked_up_to: next_sequence - 1,
                sent_up_to: next_sequence - 1,
                produced: 0,
                acked: 0,
                dropped: 0,
                unreported_drops: 0,
                in_flight: VecDeque::new(),
            }),
            notify: Notify::new(),
            live,
        })
    }

    /// Adds an event: it gets the next sequence number, this node's name and (if unset) the
    /// current time. When the buffer is full the event is dropped and counted.
    pub fn push(&self, event: v1::Event) -> Pushed {
        match self.push_shared(event) {
            Ok(shared) => Pushed::Accepted(shared.sequence),
            Err(_) => Pushed::Dropped,
        }
    }

    /// [`EventBuffer::push`], returning the accepted event as the buffer holds it (with its
    /// sequence number and this node's name) so that other sinks can share it without a copy.
    /// When the buffer is full the event is counted as dropped and handed back unchanged
    /// (boxed: the rare path pays for the allocation, not every call for a large `Result`).
    pub fn push_shared(&self, mut event: v1::Event) -> Result<Arc<v1::Event>, Box<v1::Event>> {
        let mut s = self.lock();
        if s.queue.len() >= s.capacity {
            s.dropped += 1;
            s.unreported_drops += 1;
            let dropped = s.dropped;
            drop(s);
            if dropped.is_power_of_two() {
                tracing::warn!(node = %self.node, dropped, "event buffer full; dropping events");
            }
            self.notify.notify_one();
            return Err(Box::new(event));
        }
        let sequence = s.next_sequence;
        if sequence >= s.reserved_until {
            s.reserved_until = sequence + SEQUENCE_BLOCK;
            self.write_sequence(s.reserved_until);
        }
        s.next_sequence += 1;
        s.produced += 1;
        event.sequence = sequence;
        if event.node_name != self.node {
            event.node_name.clone_from(&self.node);
        }
        if event.time.is_none() {
            event.time = Some(SystemTime::now().into());
        }
        let event = Arc::new(event);
        s.queue.push_back(event.clone());
        drop(s);
        // Nobody watching is fine (and then nothing is sent).
        if self.live.receiver_count() > 0 {
            let _ = self.live.send(event.clone());
        }
        self.notify.notify_one();
        Ok(event)
    }

    /// This node's name, as accepted events carry it.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The counters.
    pub fn counters(&self) -> EventCounters {
        let s = self.lock();
        EventCounters {
            produced: s.produced,
            acked: s.acked,
            buffered: s.queue.len() as u64,
            dropped: s.dropped,
            capacity: s.capacity as u64,
        }
    }

    /// A live feed of accepted events (for `WatchEvents`).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<v1::Event>> {
        self.live.subscribe()
    }

    /// Writes the exact next sequence number (at a clean shutdown, so no block is skipped).
    pub fn persist_next_sequence(&self) {
        let mut s = self.lock();
        s.reserved_until = s.next_sequence;
        self.write_sequence(s.next_sequence);
    }

    fn write_sequence(&self, value: u64) {
        if let Some(path) = &self.sequence_file {
            if let Err(e) = fsutil::write_atomic(path, format!("{value}\n").as_bytes(), 0o600) {
                tracing::error!(
                    node = %self.node,
                    path = %path.display(),
                    error = %e,
                    "cannot persist the event sequence; numbers may repeat after a restart"
                );
            }
        }
    }

    /// The next batch to send on the current stream, if there is something to send and the
    /// in-flight window allows it.
    pub(crate) fn next_batch(&self) -> Option<v1::EventBatch> {
        let mut s = self.lock();
        if s.in_flight.len() >= MAX_IN_FLIGHT {
            return None;
        }
        let sent = s.sent_up_to;
        let start = s.queue.partition_point(|e| e.sequence <= sent);
        let events: Vec<v1::Event> = s
            .queue
            .iter()
            .skip(start)
            .take(MAX_BATCH)
            .map(|e| v1::Event::clone(e))
            .collect();
        if events.is_empty() && s.unreported_drops == 0 {
            return None;
        }
        let dropped = std::mem::take(&mut s.unreported_drops);
        if let Some(last) = events.last() {
            s.sent_up_to = last.sequence;
            let sent_up_to = s.sent_up_to;
            s.in_flight.push_back((sent_up_to, dropped));
        } else if s.sent_up_to > s.acked_up_to {
            // Drops only: they are confirmed with the acknowledgement of what was sent before.
            let sent_up_to = s.sent_up_to;
            s.in_flight.push_back((sent_up_to, dropped));
        }
        Some(v1::EventBatch { events, dropped })
    }

    /// The manager acknowledged every event up to `up_to`.
    pub(crate) fn ack(&self, up_to: u64) {
        let mut s = self.lock();
        let up_to = up_to.min(s.next_sequence - 1);
        if up_to <= s.acked_up_to {
            return;
        }
        s.acked_up_to = up_to;
        s.sent_up_to = s.sent_up_to.max(up_to);
        while s.queue.front().is_some_and(|e| e.sequence <= up_to) {
            s.queue.pop_front();
            s.acked += 1;
        }
        while s.in_flight.front().is_some_and(|(last, _)| *last <= up_to) {
            s.in_flight.pop_front();
        }
    }

    /// A new stream starts: everything not acknowledged is sent again, with the drops those
    /// batches carried.
    pub(crate) fn rewind(&self) {
        let mut s = self.lock();
        s.sent_up_to = s.acked_up_to;
        let carried: u64 = s.in_flight.drain(..).map(|(_, d)| d).sum();
        s.unreported_drops += carried;
    }

    async fn changed(&self) {
        self.notify.notified().await;
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Streams the buffer to the manager for as long as the agent runs, reconnecting with backoff.
pub(crate) async fn publish_loop(ctx: SessionContext, mut shutdown: watch::Receiver<bool>) {
    let node = ctx.config.node_name.clone();
    let mut backoff = Backoff::new(ctx.config.backoff);
    loop {
        let mut delivered = false;
        let result = publish_once(&ctx, &mut shutdown, &mut delivered).await;
        if *shutdown.borrow() {
            return;
        }
        if delivered {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        match result {
            Ok(()) => return,
            Err(e) => tracing::warn!(node, error = %e, retry_in = ?delay, "event stream down"),
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => return,
        }
    }
}

async fn publish_once(
    ctx: &SessionContext,
    shutdown: &mut watch::Receiver<bool>,
    delivered: &mut bool,
) -> Result<(), GatewayError> {
    let url = ctx.config.manager_url.as_str();
    let identity = ctx.identity.borrow().clone();
    let mut client = gateway::connect(
        &ctx.config,
        &identity.ca_pem,
        Some((&identity.cert_pem, &identity.key_pem)),
    )
    .await?;
    let events = &ctx.events;
    events.rewind();
    let (tx, rx) = tokio::sync::mpsc::channel(MAX_IN_FLIGHT * 2);
    let mut acks = client
        .publish_events(ReceiverStream::new(rx))
        .await
        .map_err(|s| GatewayError::status(url, &s))?
        .into_inner();
    let closed = || GatewayError::Closed {
        url: url.to_string(),
        stream: "PublishEvents",
    };
    tracing::debug!(node = %ctx.config.node_name, "event stream up");
    loop {
        while let Some(batch) = events.next_batch() {
            tracing::debug!(
                node = %ctx.config.node_name,
                events = batch.events.len(),
                dropped = batch.dropped,
                first = batch.events.first().map_or(0, |e| e.sequence),
                "sending events"
            );
            tx.send(batch).await.map_err(|_| closed())?;
        }
        tokio::select! {
            _ = shutdown.changed() => return Ok(()),
            ack = acks.message() => match ack {
                Ok(Some(a)) => {
                    events.ack(a.up_to_sequence);
                    *delivered = true;
                }
                Ok(None) => return Err(closed()),
                Err(s) => return Err(GatewayError::status(url, &s)),
            },
            _ = events.changed() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> v1::Event {
        v1::Event {
            action: "DENIED".into(),
            ..Default::default()
        }
    }

    #[test]
    fn sequences_acks_resends_and_drops() {
        let b = EventBuffer::open("n1", 3, None).expect("open");
        assert_eq!(b.push(event()), Pushed::Accepted(1));
        assert_eq!(b.push(event()), Pushed::Accepted(2));
        let batch = b.next_batch().expect("batch");
        assert_eq!(
            batch.events.iter().map(|e| e.sequence).collect::<Vec<_>>(),
            [1, 2]
        );
        assert_eq!(batch.events[0].node_name, "n1");
        assert!(b.next_batch().is_none(), "nothing new to send");
        assert_eq!(b.push(event()), Pushed::Accepted(3));
        assert_eq!(b.push(event()), Pushed::Dropped);
        // Sent but not acknowledged: a new stream sends 1..3 again with the drop.
        b.rewind();
        let batch = b.next_batch().expect("batch");
        assert_eq!(batch.events.len(), 3);
        assert_eq!(batch.dropped, 1);
        b.ack(2);
        assert_eq!(b.counters().buffered, 1);
        // The batch with the drop is not acknowledged yet: it travels again.
        b.rewind();
        let batch = b.next_batch().expect("batch");
        assert_eq!(
            batch.events.iter().map(|e| e.sequence).collect::<Vec<_>>(),
            [3]
        );
        assert_eq!(batch.dropped, 1);
        b.ack(3);
        b.rewind();
        assert!(
            b.next_batch().is_none(),
            "acknowledged events are not sent again"
        );
        let c = b.counters();
        assert_eq!(
            (c.produced, c.acked, c.buffered, c.dropped, c.capacity),
            (3, 3, 0, 1, 3)
        );
    }

    #[test]
    fn a_shared_push_holds_one_copy_and_hands_a_dropped_event_back() {
        let b = EventBuffer::open("n1", 1, None).expect("open");
        let mut e = event();
        e.node_name = "elsewhere".into();
        let shared = b.push_shared(e).expect("accepted");
        assert_eq!((shared.sequence, shared.node_name.as_str()), (1, "n1"));
        assert!(shared.time.is_some());
        // The buffer holds the very event the caller got.
        assert_eq!(Arc::strong_count(&shared), 2);
        let mut full = event();
        full.pid = 7;
        let back = b.push_shared(full.clone()).expect_err("buffer full");
        assert_eq!(*back, full, "handed back unchanged");
        assert_eq!(b.counters().dropped, 1);
        let batch = b.next_batch().expect("batch");
        assert_eq!(batch.events, [v1::Event::clone(&shared)]);
    }

    #[test]
    fn sequence_continues_after_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("events.seq");
        let b = EventBuffer::open("n1", 10, Some(file.clone())).expect("open");
        for _ in 0..5 {
            b.push(event());
        }
        // A crash: the next agent starts after the reserved block.
        let crashed = EventBuffer::open("n1", 10, Some(file.clone())).expect("reopen");
        assert_eq!(crashed.push(event()), Pushed::Accepted(1 + SEQUENCE_BLOCK));
        // A clean shutdown: no gap.
        crashed.persist_next_sequence();
        let clean = EventBuffer::open("n1", 10, Some(file)).expect("reopen");
        assert_eq!(clean.push(event()), Pushed::Accepted(2 + SEQUENCE_BLOCK));
    }
}
