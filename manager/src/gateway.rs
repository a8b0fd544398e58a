//! `AgentGateway`: joining, certificate renewal, the Sync session and event intake.
//!
//! Every call but `Join` needs a node certificate; the node name always comes from it.

use std::collections::{BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use futures::Stream;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use varmor_proto::v1;
use varmor_proto::v1::agent_message::Message as AgentMsg;
use varmor_proto::v1::manager_message::Message as ManagerMsg;
use varmor_rpc::tls::require_node;

use crate::catalog::Change;
use crate::events;
use crate::shared::{known_facts, refresh_all, refresh_policy, stopping, Shared};
use crate::state::{
    truncate, Capabilities, EnforcerKind, EnforcerOutcome, Facts, FactsKey, LiveSession,
    NodeRecord, ProfileResult, ResultKind, MAX_MESSAGE,
};
use crate::store::Doc;
use crate::Error;

/// Most disk devices a hello may list.
const MAX_DISK_DEVICES: usize = 1024;
/// Most held profiles a hello may list.
const MAX_HELD: usize = 65_536;
/// Messages queued to one agent before the session waits for it.
const OUTBOUND_QUEUE: usize = 32;

type Outbound<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The `AgentGateway` service.
#[derive(Debug, Clone)]
pub struct Gateway {
    shared: Arc<Shared>,
}

impl Gateway {
    /// The service over the shared state.
    pub fn new(shared: Arc<Shared>) -> Self {
        Gateway { shared }
    }
}

fn check_node_name(name: &str) -> Result<(), Error> {
    if name.is_empty() {
        return Err(Error::invalid("node_name", "missing"));
    }
    varmor_policy::document::check_dns_subdomain(name).map_err(|why| {
        Error::invalid(
            "node_name",
            format!("{why} (node names are Kubernetes DNS subdomain names)"),
        )
    })
}

/// Extra names may not claim another node's name.
fn check_requested_sans(
    state: &crate::state::State,
    node: &str,
    sans: &[String],
) -> Result<(), Error> {
    for (i, s) in sans.iter().enumerate() {
        let s = s.trim().to_ascii_lowercase();
        if s != node && state.nodes.contains_key(&s) {
            return Err(Error::invalid(
                format!("subject_alt_names[{i}]"),
                format!("{s:?} is the name of another node"),
            ));
        }
    }
    Ok(())
}

fn check_hello(h: &v1::Hello) -> Result<(), Error> {
    if let Some(f) = &h.facts {
        if f.disk_devices.len() > MAX_DISK_DEVICES {
            return Err(Error::invalid(
                "hello.facts.disk_devices",
                format!("at most {MAX_DISK_DEVICES} devices"),
            ));
        }
        for (i, d) in f.disk_devices.iter().enumerate() {
            if d.is_empty()
                || d.len() > 64
                || d.contains('/')
                || d.chars().any(|c| c.is_control() || c.is_whitespace())
            {
                return Err(Error::invalid(
                    format!("hello.facts.disk_devices[{i}]"),
                    format!("{d:?} is not a device name from /proc/partitions"),
                ));
            }
        }
        if f.kernel_release.len() > 256 || f.architecture.len() > 64 {
            return Err(Error::invalid(
                "hello.facts",
                "kernel release or architecture too long",
            ));
        }
    }
    if h.held.len() > MAX_HELD {
        return Err(Error::invalid(
            "hello.held",
            format!("at most {MAX_HELD} profiles"),
        ));
    }
    if h.agent_version.len() > 128 {
        return Err(Error::invalid(
            "hello.agent_version",
            "longer than 128 bytes",
        ));
    }
    Ok(())
}

/// Records an ack on the node named by the certificate.
fn record_ack(shared: &Shared, node: &str, ack: v1::Ack) {
    let now = SystemTime::now();
    let mut results = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, r) in ack.results.iter().enumerate() {
        let (Some(enforcer), Some(status)) = (
            EnforcerKind::from_proto(r.enforcer),
            ResultKind::from_proto(r.status),
        ) else {
            tracing::warn!(node, profile = %ack.profile_name, index = i, "ack result with an unknown enforcer or status; ignored");
            continue;
        };
        if !seen.insert(enforcer) {
            continue;
        }
        results.push(EnforcerOutcome {
            enforcer,
            status,
            message: truncate(&r.message, MAX_MESSAGE),
        });
    }
    let kinds: Vec<ResultKind> = results.iter().map(|r| r.status).collect();
    let mut state = shared.lock();
    let current = state.catalog.policy(&ack.profile_name).map(|p| p.revision);
    let Some(rec) = state.nodes.get_mut(node) else {
        return;
    };
    rec.last_seen = Some(now);
    let stored = rec.results.get(&ack.profile_name).map(|r| r.revision);
    if stored.is_some_and(|s| s > ack.revision) {
        tracing::debug!(node, profile = %ack.profile_name, revision = ack.revision, "ack for an older revision; ignored");
        return;
    }
    let removed = !results.is_empty() && results.iter().all(|r| r.status == ResultKind::Removed);
    match current {
        _ if removed => {
            rec.results.remove(&ack.profile_name);
        }
        None => {
            tracing::debug!(node, profile = %ack.profile_name, "ack for a profile that is not in force; ignored");
            return;
        }
        Some(cur) if ack.revision > cur => {
            tracing::warn!(node, profile = %ack.profile_name, revision = ack.revision, current = cur, "ack for a revision the manager never sent; ignored");
            return;
        }
        Some(_) => {
            for r in &results {
                match r.status {
                    ResultKind::Failed | ResultKind::Unavailable => tracing::warn!(
                        node,
                        profile = %ack.profile_name,
                        enforcer = r.enforcer.as_str(),
                        revision = ack.revision,
                        status = ?r.status,
                        message = %r.message,
                        "profile not enforced on node"
                    ),
                    _ => tracing::debug!(
                        node,
                        profile = %ack.profile_name,
                        enforcer = r.enforcer.as_str(),
                        revision = ack.revision,
                        status = ?r.status,
                        "ack"
                    ),
                }
            }
            rec.results.insert(
                ack.profile_name.clone(),
                ProfileResult {
                    revision: ack.revision,
                    results,
                    at: now,
                },
            );
        }
    }
    shared.metrics.ack(node, removed, &kinds);
    state.touch(Doc::Nodes);
    if refresh_policy(&mut state, &ack.profile_name, now) {
        state.touch(Doc::Policies);
        shared.persister.kick(Doc::Policies);
    }
    drop(state);
    shared.persister.kick(Doc::Nodes);
}

/// Every bundle for a node, in profile order.
fn snapshot(shared: &Shared, key: &FactsKey) -> (v1::Snapshot, HashMap<String, u64>) {
    let state = shared.lock();
    let mut sent = HashMap::new();
    let mut bundles = Vec::new();
    for p in state.catalog.policies() {
        if let Some(b) = state.catalog.bundle(&p.profile, key) {
            sent.insert(p.profile.clone(), b.revision);
            bundles.push((*b).clone());
        }
    }
    (v1::Snapshot { bundles }, sent)
}

struct Session {
    shared: Arc<Shared>,
    node: String,
    id: u64,
    key: FactsKey,
    sent: HashMap<String, u64>,
    tx: mpsc::Sender<Result<v1::ManagerMessage, Status>>,
}

impl Session {
    async fn send(&self, m: ManagerMsg) -> bool {
        self.tx
            .send(Ok(v1::ManagerMessage { message: Some(m) }))
            .await
            .is_ok()
    }

    async fn on_change(&mut self, ch: Change) -> bool {
        match ch {
            Change::Update { profile, revision } => {
                if self.sent.get(&profile).is_some_and(|r| *r >= revision) {
                    return true;
                }
                let Some(bundle) = self.shared.bundle_for(&profile, &self.key).await else {
                    // Removed again meanwhile; the removal follows.
                    return true;
                };
                self.sent.insert(profile.clone(), bundle.revision);
                tracing::debug!(node = %self.node, profile = %profile, revision = bundle.revision, "sending update");
                self.send(ManagerMsg::Update((*bundle).clone())).await
            }
            Change::Removal { profile, revision } => {
                if self.sent.remove(&profile).is_none() {
                    return true;
                }
                tracing::debug!(node = %self.node, profile = %profile, revision, "sending removal");
                self.send(ManagerMsg::Removal(v1::Removal {
                    profile_name: profile,
                    revision,
                }))
                .await
            }
        }
    }

    async fn resend_snapshot(&mut self) -> bool {
        self.shared.ensure_bundles(&self.key).await;
        let (snap, sent) = snapshot(&self.shared, &self.key);
        self.sent = sent;
        self.send(ManagerMsg::Snapshot(snap)).await
    }

    async fn run(
        mut self,
        mut inbound: Streaming<v1::AgentMessage>,
        mut changes: broadcast::Receiver<Change>,
        mut replaced: oneshot::Receiver<()>,
    ) {
        let mut shutdown = self.shared.shutdown.clone();
        let end: &str = loop {
            tokio::select! {
                _ = &mut replaced => {
                    let _ = self.tx.send(Err(Status::aborted(format!(
                        "replaced by a newer Sync session of node {}", self.node
                    )))).await;
                    break "replaced by a newer session";
                }
                _ = stopping(&mut shutdown) => {
                    let _ = self.tx.send(Err(Status::unavailable("the manager is shutting down"))).await;
                    break "manager shutting down";
                }
                _ = self.tx.closed() => break "agent went away",
                msg = inbound.message() => match msg {
                    Ok(Some(v1::AgentMessage { message: Some(AgentMsg::Ack(ack)) })) => {
                        record_ack(&self.shared, &self.node, ack);
                    }
                    Ok(Some(v1::AgentMessage { message: Some(AgentMsg::Hello(_)) })) => {
                        let _ = self.tx.send(Err(Status::invalid_argument(
                            "a Sync stream carries one hello, as its first message; start a new stream to send another",
                        ))).await;
                        break "second hello";
                    }
                    Ok(Some(v1::AgentMessage { message: None })) => {
                        tracing::debug!(node = %self.node, "empty agent message ignored");
                    }
                    Ok(None) => break "agent closed the stream",
                    Err(e) => {
                        tracing::debug!(node = %self.node, error = %e, "Sync stream error");
                        break "stream error";
                    }
                },
                ch = changes.recv() => match ch {
                    Ok(ch) => {
                        if !self.on_change(ch).await {
                            break "agent went away";
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(node = %self.node, skipped = n, "session fell behind the catalog changes; sending a full snapshot");
                        if !self.resend_snapshot().await {
                            break "agent went away";
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => break "manager shutting down",
                },
            }
        };
        let mut state = self.shared.lock();
        if state
            .sessions
            .get(&self.node)
            .is_some_and(|s| s.id == self.id)
        {
            state.sessions.remove(&self.node);
        }
        if let Some(rec) = state.nodes.get_mut(&self.node) {
            rec.last_seen = Some(SystemTime::now());
        }
        state.touch(Doc::Nodes);
        drop(state);
        self.shared.persister.kick(Doc::Nodes);
        tracing::info!(node = %self.node, reason = end, "node disconnected");
    }
}

#[tonic::async_trait]
impl v1::agent_gateway_server::AgentGateway for Gateway {
    async fn join(
        &self,
        request: Request<v1::JoinRequest>,
    ) -> Result<Response<v1::JoinResponse>, Status> {
        let peer = request.remote_addr();
        let r = request.into_inner();
        let node = r.node_name.trim().to_string();
        let refused = |e: Error| -> Status {
            self.shared.metrics.join_rejected(&e);
            e.into()
        };
        // The token first: a caller without it learns nothing else.
        if !self.shared.join_token.matches(&r.join_token) {
            tracing::warn!(node = %node, peer = ?peer, "join refused: wrong join token");
            return Err(refused(Error::BadJoinToken));
        }
        check_node_name(&node).map_err(refused)?;
        check_requested_sans(&self.shared.lock(), &node, &r.subject_alt_names).map_err(refused)?;
        let issued = self
            .shared
            .ca
            .issue_node(&node, &r.csr_pem, &r.subject_alt_names)
            .map_err(refused)?;
        let now = SystemTime::now();
        let generation = {
            let mut state = self.shared.lock();
            let rejoined = state.nodes.contains_key(&node);
            let rec = state
                .nodes
                .entry(node.clone())
                .or_insert_with(|| NodeRecord::joined(now));
            rec.expected = true;
            rec.removed_at = None;
            rec.cert_not_after = Some(issued.not_after);
            // A node that joins again lost its state, and with it its event sequence.
            if let Some(pos) = state.events.get_mut(&node) {
                pos.last_sequence = 0;
                state.touch(Doc::Events);
            }
            refresh_all(&mut state, now);
            tracing::info!(node = %node, rejoined, peer = ?peer, "node joined");
            state.touch(Doc::Nodes)
        };
        self.shared.persister.kick(Doc::Policies);
        self.shared.persister.kick(Doc::Events);
        self.shared.persist(Doc::Nodes, generation).await?;
        Ok(Response::new(v1::JoinResponse {
            certificate_pem: issued.cert_pem,
            ca_pem: self.shared.ca.ca_pem().to_string(),
            not_after: Some(issued.not_after.into()),
        }))
    }

    async fn renew(
        &self,
        request: Request<v1::RenewRequest>,
    ) -> Result<Response<v1::JoinResponse>, Status> {
        let node = require_node(&request)?;
        let r = request.into_inner();
        check_requested_sans(&self.shared.lock(), &node, &r.subject_alt_names)?;
        let issued = self
            .shared
            .ca
            .issue_node(&node, &r.csr_pem, &r.subject_alt_names)?;
        let now = SystemTime::now();
        let generation = {
            let mut state = self.shared.lock();
            let rec = state.nodes.entry(node.clone()).or_insert_with(|| {
                tracing::warn!(node = %node, "renewal from a node the manager did not know; recorded as joined");
                NodeRecord::joined(now)
            });
            rec.cert_not_after = Some(issued.not_after);
            rec.last_seen = Some(now);
            state.touch(Doc::Nodes)
        };
        self.shared.persist(Doc::Nodes, generation).await?;
        tracing::info!(node = %node, "node certificate renewed");
        Ok(Response::new(v1::JoinResponse {
            certificate_pem: issued.cert_pem,
            ca_pem: self.shared.ca.ca_pem().to_string(),
            not_after: Some(issued.not_after.into()),
        }))
    }

    type SyncStream = Outbound<v1::ManagerMessage>;

    async fn sync(
        &self,
        request: Request<Streaming<v1::AgentMessage>>,
    ) -> Result<Response<Self::SyncStream>, Status> {
        let node = require_node(&request)?;
        let shared = self.shared.clone();
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(shared.config.hello_timeout, inbound.message())
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!(
                    "no hello within {:?}: the first message of a Sync stream must be a hello",
                    shared.config.hello_timeout
                ))
            })??;
        let hello = match first {
            Some(v1::AgentMessage {
                message: Some(AgentMsg::Hello(h)),
            }) => h,
            Some(_) => {
                return Err(Status::invalid_argument(
                    "the first message of a Sync stream must be a hello",
                ))
            }
            None => return Err(Status::cancelled("the stream ended before the hello")),
        };
        check_hello(&hello)?;
        shared.wait_synced().await?;

        let now = SystemTime::now();
        let facts = hello.facts.as_ref().map(Facts::from_proto);
        let key = facts.as_ref().map(Facts::key).unwrap_or_default();
        let (replace_rx, id) = {
            let mut state = shared.lock();
            let known = state.nodes.contains_key(&node);
            let rec = state.nodes.entry(node.clone()).or_insert_with(|| {
                tracing::warn!(node = %node, "session from a node the manager did not know; recorded as joined");
                NodeRecord::joined(now)
            });
            if !rec.expected {
                tracing::info!(node = %node, "node was removed; its results do not count until it joins again");
            }
            let facts_changed = rec.facts != facts;
            let capabilities = hello.capabilities.as_ref().map(Capabilities::from_proto);
            // Capabilities decide errors before the first ack; a new node changes `desired`.
            let status_inputs_changed = !known || rec.capabilities != capabilities;
            rec.facts = facts;
            rec.capabilities = capabilities;
            rec.agent_version = hello.agent_version.clone();
            rec.last_seen = Some(now);
            if facts_changed {
                let keep = known_facts(&state).into_iter().collect();
                state.catalog.prune_facts(&keep);
            }
            state.next_session_id += 1;
            let id = state.next_session_id;
            let (tx, rx) = oneshot::channel();
            if let Some(mut old) = state.sessions.insert(
                node.clone(),
                LiveSession {
                    id,
                    replace: Some(tx),
                },
            ) {
                if let Some(r) = old.replace.take() {
                    let _ = r.send(());
                }
            }
            if status_inputs_changed {
                refresh_all(&mut state, now);
            }
            state.touch(Doc::Nodes);
            (rx, id)
        };
        shared.persister.kick(Doc::Nodes);
        shared.persister.kick(Doc::Policies);

        shared.ensure_bundles(&key).await;
        // Subscribe before the snapshot: a change after it is not lost, and one already in it
        // is skipped by revision.
        let changes = shared.changes.subscribe();
        let (snap, sent) = snapshot(&shared, &key);
        let held_current = hello
            .held
            .iter()
            .filter(|h| sent.get(&h.profile_name) == Some(&h.revision))
            .count();
        tracing::info!(
            node = %node,
            agent_version = %hello.agent_version,
            profiles = snap.bundles.len(),
            held = hello.held.len(),
            held_current,
            "node connected; snapshot sent"
        );
        let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
        let _ = tx
            .send(Ok(v1::ManagerMessage {
                message: Some(ManagerMsg::Snapshot(snap)),
            }))
            .await;
        let session = Session {
            shared: shared.clone(),
            node,
            id,
            key,
            sent,
            tx,
        };
        tokio::spawn(session.run(inbound, changes, replace_rx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type PublishEventsStream = Outbound<v1::EventAck>;

    async fn publish_events(
        &self,
        request: Request<Streaming<v1::EventBatch>>,
    ) -> Result<Response<Self::PublishEventsStream>, Status> {
        let node = require_node(&request)?;
        let mut inbound = request.into_inner();
        let shared = self.shared.clone();
        let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
        tokio::spawn(async move {
            let mut shutdown = shared.shutdown.clone();
            loop {
                let batch = tokio::select! {
                    _ = stopping(&mut shutdown) => {
                        let _ = tx.send(Err(Status::unavailable("the manager is shutting down"))).await;
                        break;
                    }
                    _ = tx.closed() => break,
                    m = inbound.message() => match m {
                        Ok(Some(b)) => b,
                        Ok(None) => break,
                        Err(e) => {
                            tracing::debug!(node = %node, error = %e, "event stream error");
                            break;
                        }
                    },
                };
                let reported_drops = batch.dropped;
                let (intake, generation) = {
                    let mut state = shared.lock();
                    if let Some(rec) = state.nodes.get_mut(&node) {
                        rec.last_seen = Some(SystemTime::now());
                    }
                    let pos = state.events.entry(node.clone()).or_default();
                    let intake = events::intake(pos, &node, batch);
                    (intake, state.touch(Doc::Events))
                };
                shared.metrics.events(
                    &node,
                    intake.accepted.len() as u64,
                    intake.duplicates,
                    intake.missing,
                    reported_drops,
                );
                if reported_drops > 0 {
                    tracing::warn!(node = %node, dropped = reported_drops, "agent dropped events while its buffer was full");
                }
                if intake.duplicates > 0 {
                    tracing::debug!(node = %node, duplicates = intake.duplicates, "duplicate events dropped");
                }
                // The position is on disk before the ack: an acked event is never taken twice.
                if let Err(e) = shared.persist(Doc::Events, generation).await {
                    let _ = tx.send(Err(e.into())).await;
                    break;
                }
                shared.events.publish(intake.accepted);
                if tx
                    .send(Ok(v1::EventAck {
                        up_to_sequence: intake.up_to,
                    }))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
