//! The fan-out of the violation pipeline: every submitted event goes to each sink at once —
//! the upstream [`EventBuffer`] (the manager's `PublishEvents` stream), `violations.log`
//! ([`ViolationLog`]) and, when configured, an OTLP collector ([`OtlpExporter`]).
//!
//! * [`Pipeline::submit`] never blocks and never waits for a sink: the upstream buffer is
//!   bounded and counts its own drops; each other sink has a bounded queue of its own, and an
//!   event that finds it full is dropped *for that sink only* and counted.
//! * One event is built once and shared (`Arc`) by the upstream buffer and the sink queues.
//! * `violations.log` is written by a dedicated thread (plain blocking file I/O, buffered,
//!   flushed after each batch; after a partial batch it lingers 1 ms so that a steady trickle
//!   costs one wakeup per millisecond, not one per event); OTLP by a Tokio task that batches by size and time and
//!   retries (see [`super::otlp`]). A stalled collector therefore fills only the OTLP queue.
//! * Drops are reported in-band once a sink writes again: a `"events dropped"` line in
//!   `violations.log`, a record with `varmor.dropped` in OTLP; upstream reports `dropped` in
//!   its next batch. [`Pipeline::sink_stats`] gives the counters for `NodeState/GetState`,
//!   [`Pipeline::sink_counters`] the live atomics for metrics.
//! * [`Pipeline::shutdown`] stops intake, lets each sink write what it holds (OTLP for at
//!   most the grace period) and flushes the file.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;
use varmor_proto::v1;

use crate::events::{EventBuffer, Pushed};
use crate::violations::logfile::{self, LogFileError, ViolationLog, ViolationLogConfig};
use crate::violations::otlp::{self, OtlpConfig, OtlpError, OtlpExporter};

/// The upstream sink's name in [`Pipeline::sink_stats`].
pub const UPSTREAM_SINK: &str = "upstream";
/// Default capacity of the `violations.log` queue.
pub const DEFAULT_LOG_QUEUE: usize = 65_536;
/// Default most lines the file writer takes per batch (one flush per batch).
pub const DEFAULT_LOG_BATCH: usize = 1024;

/// How long the file writer waits after a partial batch before it takes the next one.
const LOG_LINGER: Duration = Duration::from_millis(1);

/// Errors starting the pipeline.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The violations log could not be opened.
    #[error(transparent)]
    Log(#[from] LogFileError),
    /// The OTLP exporter could not be set up.
    #[error(transparent)]
    Otlp(#[from] OtlpError),
    /// A setting cannot work.
    #[error("invalid violation pipeline setting {field}: {reason}")]
    Config {
        /// The setting.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The writer thread could not be started.
    #[error("cannot start the violations log writer thread: {0}")]
    Thread(std::io::Error),
}

/// What the pipeline writes to.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// This node; set on events that have no `node_name`.
    pub node_name: String,
    /// `violations.log`; `None` writes no file.
    pub log: Option<ViolationLogConfig>,
    /// Events waiting for the file writer before new ones are dropped.
    pub log_queue: usize,
    /// The most lines written between two flushes.
    pub log_batch: usize,
    /// The OTLP collector; `None` exports nothing.
    pub otlp: Option<OtlpConfig>,
}

impl PipelineConfig {
    /// No file and no OTLP yet; default queue sizes.
    pub fn new(node_name: impl Into<String>) -> Self {
        PipelineConfig {
            node_name: node_name.into(),
            log: None,
            log_queue: DEFAULT_LOG_QUEUE,
            log_batch: DEFAULT_LOG_BATCH,
            otlp: None,
        }
    }
}

/// The live counters of one queued sink (`violations.log` or `otlp`): relaxed atomics, cheap
/// to update on every event and to read from a metrics scrape.
#[derive(Debug)]
pub struct SinkCounters {
    name: &'static str,
    capacity: u64,
    written: AtomicU64,
    dropped: AtomicU64,
    errors: AtomicU64,
    malformed: AtomicU64,
    queued: AtomicU64,
    /// Drops not yet reported in-band.
    unreported: AtomicU64,
    last_error: Mutex<String>,
}

impl SinkCounters {
    fn new(name: &'static str, capacity: usize) -> Self {
        SinkCounters {
            name,
            capacity: capacity as u64,
            written: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            unreported: AtomicU64::new(0),
            last_error: Mutex::new(String::new()),
        }
    }

    /// `violations.log` or `otlp`.
    pub fn name(&self) -> &'static str {
        self.name
    }
    /// Events delivered (written to the file / accepted by the collector).
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }
    /// Events lost: the queue was full, or a write or export failed for good.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
    /// Failed writes, flushes or export attempts.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
    /// `violations.log`: events whose `event_json` was not JSON (written as a string).
    pub fn malformed(&self) -> u64 {
        self.malformed.load(Ordering::Relaxed)
    }
    /// Events waiting in the queue.
    pub fn queued(&self) -> u64 {
        self.queued.load(Ordering::Relaxed)
    }
    /// The queue's capacity.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }
    /// The last error, empty if none.
    pub fn last_error(&self) -> String {
        lock(&self.last_error).clone()
    }

    fn drop_events(&self, n: u64) {
        let before = self.dropped.fetch_add(n, Ordering::Relaxed);
        self.unreported.fetch_add(n, Ordering::Relaxed);
        // Log at 1, 2, 4, 8, ... drops so a stuck sink does not flood the agent's log.
        if before.checked_ilog2() != (before + n).checked_ilog2() {
            tracing::warn!(
                sink = self.name,
                dropped = before + n,
                "violation sink is dropping events"
            );
        }
    }

    fn error(&self, attempts: u64, message: String) {
        self.errors.fetch_add(attempts, Ordering::Relaxed);
        *lock(&self.last_error) = message;
    }

    fn stats(&self) -> v1::SinkStats {
        v1::SinkStats {
            name: self.name.to_string(),
            written: self.written(),
            dropped: self.dropped(),
            errors: self.errors(),
            queued: self.queued(),
            capacity: self.capacity,
            last_error: self.last_error(),
            malformed: self.malformed(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Debug, Default)]
struct QueueState {
    items: VecDeque<Arc<v1::Event>>,
    closed: bool,
    /// The consumer thread waits on the condvar (a notify is a futex syscall; skip it
    /// otherwise).
    waiting: bool,
}

/// A bounded multi-producer queue with one consumer, which may be a thread (condvar) or a
/// task (notify). Producers wake the consumer when the queue becomes non-empty and when it
/// reaches `wake_at` (a full batch).
#[derive(Debug)]
struct Queue {
    state: Mutex<QueueState>,
    cond: Condvar,
    notify: Notify,
    wake_at: usize,
    counters: Arc<SinkCounters>,
}

impl Queue {
    fn new(counters: Arc<SinkCounters>, wake_at: usize) -> Self {
        Queue {
            state: Mutex::new(QueueState::default()),
            cond: Condvar::new(),
            notify: Notify::new(),
            wake_at: wake_at.max(1),
            counters,
        }
    }

    fn push(&self, event: Arc<v1::Event>) {
        let mut s = lock(&self.state);
        if s.closed || s.items.len() as u64 >= self.counters.capacity {
            drop(s);
            self.counters.drop_events(1);
            return;
        }
        s.items.push_back(event);
        let len = s.items.len();
        let waiting = s.waiting;
        drop(s);
        self.counters.queued.store(len as u64, Ordering::Relaxed);
        if waiting && (len == 1 || len == self.wake_at) {
            self.cond.notify_one();
        }
        if len == 1 || len == self.wake_at {
            self.notify.notify_one();
        }
    }

    fn close(&self) {
        lock(&self.state).closed = true;
        self.cond.notify_all();
        self.notify.notify_one();
    }

    fn len(&self) -> usize {
        lock(&self.state).items.len()
    }

    /// Moves up to `max` events into `out`; returns whether the queue is closed.
    fn drain_into(&self, s: &mut QueueState, max: usize, out: &mut Vec<Arc<v1::Event>>) -> bool {
        let n = s.items.len().min(max.saturating_sub(out.len()));
        out.extend(s.items.drain(..n));
        self.counters
            .queued
            .store(s.items.len() as u64, Ordering::Relaxed);
        s.closed
    }

    /// Blocks until there are events (moves up to `max` into `out`, returns true) or the queue
    /// is closed and empty (returns false).
    fn take_blocking(&self, max: usize, out: &mut Vec<Arc<v1::Event>>) -> bool {
        let mut s = lock(&self.state);
        while s.items.is_empty() && !s.closed {
            s.waiting = true;
            s = self.cond.wait(s).unwrap_or_else(PoisonError::into_inner);
            s.waiting = false;
        }
        self.drain_into(&mut s, max, out);
        !out.is_empty()
    }

    /// The async form of [`Queue::take_blocking`].
    async fn take(&self, max: usize, out: &mut Vec<Arc<v1::Event>>) -> bool {
        loop {
            {
                let mut s = lock(&self.state);
                let closed = self.drain_into(&mut s, max, out);
                if !out.is_empty() {
                    return true;
                }
                if closed {
                    return false;
                }
            }
            self.notify.notified().await;
        }
    }

    /// Adds events to `out` until it holds `max` or `wait` has passed (or the queue closed).
    async fn fill(&self, max: usize, wait: Duration, out: &mut Vec<Arc<v1::Event>>) {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            {
                let mut s = lock(&self.state);
                let closed = self.drain_into(&mut s, max, out);
                if out.len() >= max || closed {
                    return;
                }
            }
            if tokio::time::timeout_at(deadline, self.notify.notified())
                .await
                .is_err()
            {
                let mut s = lock(&self.state);
                self.drain_into(&mut s, max, out);
                return;
            }
        }
    }
}

enum Worker {
    Thread(thread::JoinHandle<()>),
    Task(tokio::task::JoinHandle<()>, Arc<Queue>),
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Worker::Thread(_) => "Worker::Thread",
            Worker::Task(..) => "Worker::Task",
        })
    }
}

/// The running pipeline. Share it (`Arc`) between the event sources; see the module docs.
#[derive(Debug)]
pub struct Pipeline {
    node_name: String,
    upstream: Option<Arc<EventBuffer>>,
    log: Option<Arc<Queue>>,
    otlp: Option<Arc<Queue>>,
    counters: Vec<Arc<SinkCounters>>,
    workers: Mutex<Vec<Worker>>,
}

impl Pipeline {
    /// Opens the sinks of `config` and starts their writers; `upstream` is the manager's event
    /// buffer (`None`: no upstream sink). With OTLP configured it must be called within a Tokio
    /// runtime (the export task is spawned on it).
    pub fn start(
        config: PipelineConfig,
        upstream: Option<Arc<EventBuffer>>,
    ) -> Result<Pipeline, PipelineError> {
        let mut counters = Vec::new();
        let mut workers = Vec::new();
        let log = match config.log {
            None => None,
            Some(log_config) => {
                for (field, value) in [
                    ("log_queue", config.log_queue),
                    ("log_batch", config.log_batch),
                ] {
                    if value == 0 {
                        return Err(PipelineError::Config {
                            field,
                            reason: "must be at least 1".into(),
                        });
                    }
                }
                let file = ViolationLog::open(log_config)?;
                let c = Arc::new(SinkCounters::new(logfile::SINK_NAME, config.log_queue));
                let queue = Arc::new(Queue::new(c.clone(), 1));
                let q = queue.clone();
                let batch = config.log_batch;
                let handle = thread::Builder::new()
                    .name("violations-log".into())
                    .spawn(move || log_writer(file, &q, batch))
                    .map_err(PipelineError::Thread)?;
                workers.push(Worker::Thread(handle));
                counters.push(c);
                Some(queue)
            }
        };
        let otlp = match config.otlp {
            None => None,
            Some(otlp_config) => {
                let exporter = OtlpExporter::new(&otlp_config)?;
                let c = Arc::new(SinkCounters::new(
                    otlp::SINK_NAME,
                    otlp_config.queue_capacity,
                ));
                let queue = Arc::new(Queue::new(c.clone(), otlp_config.batch_size));
                let task = tokio::spawn(otlp_writer(
                    exporter,
                    queue.clone(),
                    otlp_config.batch_size,
                    otlp_config.batch_timeout,
                ));
                workers.push(Worker::Task(task, queue.clone()));
                counters.push(c);
                Some(queue)
            }
        };
        Ok(Pipeline {
            node_name: config.node_name,
            upstream,
            log,
            otlp,
            counters,
            workers: Mutex::new(workers),
        })
    }

    /// Offers `event` to every sink without waiting (after [`Pipeline::shutdown`] the queued
    /// sinks count it as dropped). The node name and time are filled in when
    /// missing. Returns the upstream sequence number, `None` without upstream or when its
    /// buffer was full (the other sinks still get the event, with sequence 0).
    pub fn submit(&self, mut event: v1::Event) -> Option<u64> {
        if event.node_name.is_empty() {
            event.node_name.clone_from(&self.node_name);
        }
        if event.time.is_none() {
            event.time = Some(SystemTime::now().into());
        }
        if self.log.is_none() && self.otlp.is_none() {
            return match &self.upstream {
                Some(up) => match up.push(event) {
                    Pushed::Accepted(s) => Some(s),
                    Pushed::Dropped => None,
                },
                None => None,
            };
        }
        let (event, sequence) = match &self.upstream {
            // The buffer sets its node's name on what it accepts; when that is the name the
            // event already has, the other sinks share the buffer's copy.
            Some(up) if event.node_name == up.node() => match up.push_shared(event) {
                Ok(shared) => {
                    let s = shared.sequence;
                    (shared, Some(s))
                }
                Err(event) => (Arc::new(*event), None),
            },
            Some(up) => {
                let mut sequence = None;
                if let Pushed::Accepted(s) = up.push(event.clone()) {
                    event.sequence = s;
                    sequence = Some(s);
                }
                (Arc::new(event), sequence)
            }
            None => (Arc::new(event), None),
        };
        if let Some(q) = &self.log {
            q.push(event.clone());
        }
        if let Some(q) = &self.otlp {
            q.push(event);
        }
        sequence
    }

    /// The live counters of the queued sinks (`violations.log`, then `otlp`), for metrics.
    /// The upstream sink's are [`EventBuffer::counters`].
    pub fn sink_counters(&self) -> &[Arc<SinkCounters>] {
        &self.counters
    }

    /// One entry per configured sink: `upstream`, `violations.log`, `otlp`, in that order.
    pub fn sink_stats(&self) -> Vec<v1::SinkStats> {
        let mut out = Vec::with_capacity(3);
        if let Some(up) = &self.upstream {
            let c = up.counters();
            out.push(v1::SinkStats {
                name: UPSTREAM_SINK.into(),
                written: c.produced,
                dropped: c.dropped,
                errors: 0,
                queued: c.buffered,
                capacity: c.capacity,
                last_error: String::new(),
                malformed: 0,
            });
        }
        out.extend(self.counters.iter().map(|c| c.stats()));
        out
    }

    /// Stops intake and lets the sinks finish: the file writer writes and flushes all it holds;
    /// the OTLP task exports what it holds for at most `grace`, then is stopped and what it
    /// still held is counted as dropped.
    pub async fn shutdown(&self, grace: Duration) {
        for q in [&self.log, &self.otlp].into_iter().flatten() {
            q.close();
        }
        let workers = std::mem::take(&mut *lock(&self.workers));
        let deadline = tokio::time::Instant::now() + grace;
        for worker in workers {
            match worker {
                Worker::Thread(handle) => {
                    if tokio::task::spawn_blocking(move || handle.join())
                        .await
                        .map_or(true, |r| r.is_err())
                    {
                        tracing::error!("the violations log writer thread panicked");
                    }
                }
                Worker::Task(mut task, queue) => {
                    if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                        task.abort();
                        let left = queue.len() as u64;
                        tracing::warn!(
                            sink = otlp::SINK_NAME,
                            left,
                            "OTLP export did not finish within the shutdown grace period"
                        );
                        queue.counters.drop_events(left);
                    }
                }
            }
        }
    }
}

fn log_writer(mut file: ViolationLog, queue: &Queue, batch: usize) {
    let c = &queue.counters;
    let mut events = Vec::with_capacity(batch);
    while queue.take_blocking(batch, &mut events) {
        let taken = events.len();
        let mut pending = 0u64;
        for event in events.drain(..) {
            match file.write_event(&event) {
                Ok(()) => pending += 1,
                Err(e) => {
                    c.error(1, e.to_string());
                    c.drop_events(1);
                }
            }
        }
        let unreported = c.unreported.swap(0, Ordering::Relaxed);
        if unreported > 0 {
            if let Err(e) = file.write_dropped(logfile::SINK_NAME, unreported) {
                c.error(1, e.to_string());
                c.unreported.fetch_add(unreported, Ordering::Relaxed);
            }
        }
        match file.flush() {
            Ok(()) => {
                c.written.fetch_add(pending, Ordering::Relaxed);
            }
            Err(e) => {
                // What was buffered since the last flush may or may not be on disk.
                c.error(1, e.to_string());
                c.drop_events(pending);
            }
        }
        c.malformed.store(file.malformed(), Ordering::Relaxed);
        if taken < batch {
            // Let a few more arrive: one wakeup (and one write and flush) per millisecond at
            // most instead of one per event, which would cost a context switch each.
            thread::sleep(LOG_LINGER);
        }
    }
}

async fn otlp_writer(
    mut exporter: OtlpExporter,
    queue: Arc<Queue>,
    batch_size: usize,
    batch_timeout: Duration,
) {
    let c = queue.counters.clone();
    let exporter_endpoint = exporter.endpoint().to_string();
    let mut events = Vec::with_capacity(batch_size);
    while queue.take(batch_size, &mut events).await {
        if events.len() < batch_size && !batch_timeout.is_zero() {
            queue.fill(batch_size, batch_timeout, &mut events).await;
        }
        let n = events.len() as u64;
        let unreported = c.unreported.swap(0, Ordering::Relaxed);
        let mut on_failure = |status: &tonic::Status| {
            c.error(
                1,
                format!(
                    "export to {}: {:?}: {}",
                    exporter_endpoint,
                    status.code(),
                    status.message()
                ),
            );
        };
        let result = exporter.export(&events, unreported, &mut on_failure).await;
        events.clear();
        match result {
            Ok(done) => {
                c.written.fetch_add(done.accepted, Ordering::Relaxed);
                if done.rejected > 0 {
                    c.error(
                        0,
                        format!("the collector rejected {} record(s)", done.rejected),
                    );
                    c.drop_events(done.rejected);
                }
            }
            Err(e) => {
                tracing::warn!(endpoint = %exporter_endpoint, error = %e, records = n, "OTLP export failed; records dropped");
                *lock(&c.last_error) = e.to_string();
                c.unreported.fetch_add(unreported, Ordering::Relaxed);
                c.drop_events(n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: u32) -> v1::Event {
        v1::Event {
            pid: n,
            action: "DENIED".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_for_that_sink_only() {
        let c = Arc::new(SinkCounters::new("test", 2));
        let q = Queue::new(c.clone(), 1);
        for n in 0..5 {
            q.push(Arc::new(event(n)));
        }
        assert_eq!((c.dropped(), c.queued()), (3, 2));
        let mut out = Vec::new();
        assert!(q.take_blocking(10, &mut out));
        assert_eq!(out.iter().map(|e| e.pid).collect::<Vec<_>>(), [0, 1]);
        assert_eq!(c.queued(), 0);
        q.close();
        out.clear();
        assert!(!q.take_blocking(10, &mut out), "closed and empty");
        q.push(Arc::new(event(9)));
        assert_eq!(c.dropped(), 4, "a closed queue takes nothing");
        assert_eq!(c.unreported.load(Ordering::Relaxed), 4);
    }

    #[tokio::test]
    async fn the_sinks_get_what_they_got_before_sharing() {
        // The other sinks share the upstream copy only when it equals what they got before:
        // an event naming another node keeps its name there (upstream sets its own).
        let dir = tempfile::tempdir().expect("tempdir");
        let up = Arc::new(EventBuffer::open("n1", 2, None).expect("buffer"));
        let mut config = PipelineConfig::new("n1");
        let mut log = ViolationLogConfig::new("n1", "ns");
        log.path = dir.path().join("violations.log");
        config.log = Some(log);
        let p = Pipeline::start(config, Some(up.clone())).expect("start");
        let mut foreign = event(2);
        foreign.node_name = "n2".into();
        assert_eq!(p.submit(event(1)), Some(1));
        assert_eq!(p.submit(foreign), Some(2));
        assert_eq!(p.submit(event(3)), None, "upstream full");
        p.shutdown(Duration::from_secs(5)).await;
        let text = std::fs::read_to_string(dir.path().join("violations.log")).expect("log");
        let nodes: Vec<(String, u64)> = text
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("json");
                (
                    v["nodeName"].as_str().unwrap().to_string(),
                    v["pid"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            nodes,
            [("n1".into(), 1), ("n2".into(), 2), ("n1".into(), 3)]
        );
        let batch = up.next_batch().expect("batch");
        assert_eq!(
            batch
                .events
                .iter()
                .map(|e| (e.node_name.as_str(), e.sequence))
                .collect::<Vec<_>>(),
            [("n1", 1), ("n1", 2)]
        );
    }

    #[test]
    fn upstream_only_assigns_sequences() {
        let up = Arc::new(EventBuffer::open("n1", 2, None).expect("buffer"));
        let p = Pipeline::start(PipelineConfig::new("n1"), Some(up.clone())).expect("start");
        assert_eq!(p.submit(event(1)), Some(1));
        assert_eq!(p.submit(event(2)), Some(2));
        assert_eq!(p.submit(event(3)), None);
        let stats = p.sink_stats();
        assert_eq!(stats.len(), 1);
        assert_eq!(
            (
                stats[0].name.as_str(),
                stats[0].written,
                stats[0].dropped,
                stats[0].capacity
            ),
            (UPSTREAM_SINK, 2, 1, 2)
        );
    }
}
