//! What every part of the running manager shares, and the policy engine that turns source
//! events into catalog changes for the agents.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use tokio::sync::{broadcast, mpsc, watch};
use varmor_proto::v1;

use crate::ca::{CertAuthority, JoinToken};
use crate::catalog::{self, Change, Policy};
use crate::events::EventHub;
use crate::metrics::ManagerMetrics;
use crate::source::SourceEvent;
use crate::state::{FactsKey, State};
use crate::status::{self, Subject};
use crate::store::{Doc, Persister};
use crate::{Config, Error};

/// The running manager's shared parts.
#[derive(Debug)]
pub struct Shared {
    /// The settings.
    pub config: Config,
    /// The CA.
    pub ca: CertAuthority,
    /// The join token.
    pub join_token: JoinToken,
    /// The state; never held across an await.
    pub state: Arc<Mutex<State>>,
    /// Writes the state files.
    pub persister: Persister,
    /// Catalog changes, to every Sync session.
    pub changes: broadcast::Sender<Change>,
    /// Accepted events, to every watcher.
    pub events: EventHub,
    /// True once the policy source listed what it had at start.
    pub synced: watch::Receiver<bool>,
    /// True once the manager is stopping.
    pub shutdown: watch::Receiver<bool>,
    /// The Prometheus metrics.
    pub metrics: ManagerMetrics,
}

/// Resolves once the manager is stopping.
pub async fn stopping(rx: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send; drop it here.
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
}

/// The status subject of a policy.
pub fn subject(p: &Policy) -> Subject<'_> {
    Subject {
        profile: &p.profile,
        revision: p.revision,
        enforcers: p.enforcers,
        modeling_minutes: p.modeling_minutes,
        first_seen: p.first_seen,
    }
}

impl Shared {
    /// Locks the state (a panic elsewhere does not make it unusable).
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until generation `generation` of `doc` is on disk.
    pub async fn persist(&self, doc: Doc, generation: u64) -> Result<(), Error> {
        self.persister.wait(doc, generation).await
    }

    /// Waits until the policy source listed what it had at start, or the manager stops.
    pub async fn wait_synced(&self) -> Result<(), Error> {
        let mut synced = self.synced.clone();
        let mut shutdown = self.shutdown.clone();
        tokio::select! {
            r = async { synced.wait_for(|s| *s).await.map(|_| ()) } => r.map_err(|_| Error::Unavailable("the manager is shutting down".into())),
            _ = stopping(&mut shutdown) => Err(Error::Unavailable("the manager is shutting down".into())),
        }
    }

    /// Compiles every bundle missing for `key` (outside the lock).
    pub async fn ensure_bundles(&self, key: &FactsKey) {
        // A policy may change while compiling; a few rounds catch up with it.
        for _ in 0..3 {
            let jobs = self.lock().catalog.missing_bundles(key);
            if jobs.is_empty() {
                return;
            }
            let k = key.clone();
            let compiled = tokio::task::spawn_blocking(move || {
                jobs.into_iter()
                    .map(|job| {
                        let result = job.compile(&k);
                        (job, result)
                    })
                    .collect::<Vec<_>>()
            })
            .await;
            let Ok(compiled) = compiled else { return };
            let mut state = self.lock();
            for (job, result) in compiled {
                match result {
                    Ok(bundle) => state.catalog.insert_bundle(&job, key.clone(), bundle),
                    Err(e) => {
                        tracing::error!(
                            profile = %job.profile,
                            facts = ?key,
                            error = %e,
                            "cannot compile for these node facts; the bundle for unknown facts is sent"
                        );
                        if let Some(b) = state.catalog.bundle(&job.profile, &FactsKey::UNKNOWN) {
                            state.catalog.insert_bundle(&job, key.clone(), (*b).clone());
                        }
                    }
                }
            }
        }
    }

    /// The bundle of `profile` for nodes with `key`, compiled if needed.
    pub async fn bundle_for(
        &self,
        profile: &str,
        key: &FactsKey,
    ) -> Option<Arc<v1::ProfileBundle>> {
        let missing = {
            let state = self.lock();
            let p = state.catalog.policy(profile)?;
            !p.bundles.contains_key(key)
        };
        if missing {
            self.ensure_bundles(key).await;
        }
        self.lock().catalog.bundle(profile, key)
    }
}

/// Recomputes the Ready condition of one policy; logs and returns whether it changed.
pub fn refresh_policy(state: &mut State, profile: &str, now: SystemTime) -> bool {
    let Some(p) = state.catalog.policy_mut(profile) else {
        return false;
    };
    let computed = status::compute(&subject(p), &state.nodes, now);
    let changed = status::observe(&mut p.ready, &computed, now);
    if changed {
        tracing::info!(
            profile = %p.profile,
            policy = %p.identity.name,
            revision = p.revision,
            phase = computed.phase,
            ready = computed.ready,
            reason = computed.ready_reason,
            message = %computed.ready_message,
            "policy status changed"
        );
    }
    if let Some(took) = state.rollouts.check(profile, &state.nodes, Instant::now()) {
        tracing::debug!(
            profile,
            seconds = took.as_secs_f64(),
            "every expected node acked the new revision"
        );
    }
    changed
}

/// Recomputes every policy's Ready condition; persists the memos when one changed.
pub fn refresh_all(state: &mut State, now: SystemTime) -> bool {
    let profiles: Vec<String> = state
        .catalog
        .policies()
        .map(|p| p.profile.clone())
        .collect();
    let mut changed = false;
    for p in profiles {
        changed |= refresh_policy(state, &p, now);
    }
    if changed {
        state.touch(Doc::Policies);
    }
    changed
}

/// The facts of every known node, for compiling ahead.
pub fn known_facts(state: &State) -> Vec<FactsKey> {
    let set: BTreeSet<FactsKey> = state.nodes.values().map(|n| n.facts_key()).collect();
    set.into_iter().collect()
}

/// Applies source events to the catalog and tells the sessions, until the source ends.
pub async fn run_engine(
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<SourceEvent>,
    synced_tx: watch::Sender<bool>,
) {
    let mut seen = BTreeSet::new();
    let mut synced = false;
    while let Some(ev) = rx.recv().await {
        match ev {
            SourceEvent::Upsert { source, text } => {
                if !synced {
                    seen.insert(source.clone());
                }
                handle_text(&shared, source, text).await;
            }
            SourceEvent::Unreadable { source, reason } => {
                if !synced {
                    seen.insert(source.clone());
                }
                shared
                    .lock()
                    .catalog
                    .unreadable(&source, &reason, SystemTime::now());
            }
            SourceEvent::Delete { source } => handle_delete(&shared, &source).await,
            SourceEvent::Synced => {
                // Policies restored from the state directory whose file is gone.
                let gone = shared.lock().catalog.sources_missing_from(&seen);
                for source in gone {
                    tracing::info!(source = %source, "policy file no longer exists");
                    handle_delete(&shared, &source).await;
                }
                synced = true;
                seen.clear();
                let count = shared.lock().catalog.policies().count();
                tracing::info!(policies = count, "initial policy listing complete");
                synced_tx.send_replace(true);
            }
        }
    }
    // The source ended: serve what is loaded.
    synced_tx.send_replace(true);
}

async fn handle_text(shared: &Shared, source: String, text: String) {
    let (facts, ns) = {
        let state = shared.lock();
        (
            known_facts(&state),
            state.catalog.varmor_namespace().to_string(),
        )
    };
    let evaluated =
        tokio::task::spawn_blocking(move || catalog::evaluate(&text, &ns, &facts)).await;
    let evaluated = match evaluated {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(source = %source, error = %e, "policy evaluation failed");
            return;
        }
    };
    let (changes, generation) = {
        let mut state = shared.lock();
        let now = SystemTime::now();
        let changes = state.catalog.apply(&source, evaluated, now);
        let generation = finish_changes(&mut state, &changes, now);
        (changes, generation)
    };
    publish(shared, changes, generation).await;
}

async fn handle_delete(shared: &Shared, source: &str) {
    let (changes, retry, generation) = {
        let mut state = shared.lock();
        let (changes, retry) = state.catalog.delete(source);
        let generation = finish_changes(&mut state, &changes, SystemTime::now());
        (changes, retry, generation)
    };
    publish(shared, changes, generation).await;
    for (source, text) in retry {
        Box::pin(handle_text(shared, source, text)).await;
    }
}

/// Forgets results of removed profiles and recomputes statuses; returns the generation of
/// `policies.json` to wait for before the changes go out.
fn finish_changes(state: &mut State, changes: &[Change], now: SystemTime) -> u64 {
    if changes.is_empty() {
        return 0;
    }
    let mut nodes_changed = false;
    let started = Instant::now();
    for ch in changes {
        match ch {
            Change::Update { profile, revision } => {
                state
                    .rollouts
                    .start(profile, *revision, started, &state.nodes)
            }
            Change::Removal { profile, .. } => state.rollouts.cancel(profile),
        }
    }
    for ch in changes {
        if let Change::Removal { profile, .. } = ch {
            for n in state.nodes.values_mut() {
                nodes_changed |= n.results.remove(profile).is_some();
            }
        }
    }
    if nodes_changed {
        state.touch(Doc::Nodes);
    }
    for ch in changes {
        if let Change::Update { profile, .. } = ch {
            refresh_policy(state, profile, now);
        }
    }
    state.touch(Doc::Policies)
}

/// Persists the new revisions, then tells the sessions: an agent never holds a revision the
/// manager could forget.
async fn publish(shared: &Shared, changes: Vec<Change>, generation: u64) {
    if changes.is_empty() {
        return;
    }
    if let Err(e) = shared.persist(Doc::Policies, generation).await {
        tracing::error!(error = %e, "cannot persist policy revisions; distributing anyway");
    }
    shared.persister.kick(Doc::Nodes);
    for ch in changes {
        // No receiver means no agent is connected.
        let _ = shared.changes.send(ch);
    }
}
