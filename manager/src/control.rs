//! `ControlPlane`: what operators see and do. Every call needs the operator (admin)
//! certificate.

use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use futures::Stream;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use varmor_policy::proto::field_error_to_proto;
use varmor_proto::v1;
use varmor_rpc::tls::require_admin;

use crate::catalog::{render, SourceState};
use crate::events;
use crate::shared::{refresh_all, stopping, subject, Shared};
use crate::state::{FactsKey, NodeRecord, State};
use crate::status::{self, condition};
use crate::store::Doc;
use crate::Error;

/// The `ControlPlane` service.
#[derive(Debug, Clone)]
pub struct Control {
    shared: Arc<Shared>,
}

impl Control {
    /// The service over the shared state.
    pub fn new(shared: Arc<Shared>) -> Self {
        Control { shared }
    }
}

fn ts(t: SystemTime) -> prost_types::Timestamp {
    t.into()
}

/// A node as the proto message.
pub fn node_proto(state: &State, name: &str, rec: &NodeRecord) -> v1::Node {
    let pos = state.events.get(name).cloned().unwrap_or_default();
    v1::Node {
        name: name.to_string(),
        connected: state.connected(name),
        expected: rec.expected,
        joined_at: Some(ts(rec.joined_at)),
        last_seen: rec.last_seen.map(ts),
        certificate_not_after: rec.cert_not_after.map(ts),
        facts: rec.facts.as_ref().map(|f| f.to_proto()),
        capabilities: rec.capabilities.as_ref().map(|c| c.to_proto()),
        agent_version: rec.agent_version.clone(),
        profiles: rec
            .results
            .iter()
            .map(|(profile, r)| v1::NodeProfileStatus {
                profile_name: profile.clone(),
                revision: r.revision,
                results: r
                    .results
                    .iter()
                    .map(|o| v1::EnforcerResult {
                        enforcer: o.enforcer.to_proto() as i32,
                        status: o.status.to_proto() as i32,
                        message: o.message.clone(),
                    })
                    .collect(),
            })
            .collect(),
        events_received: pos.received,
        last_event_sequence: pos.last_sequence,
        events_dropped: pos.dropped,
    }
}

fn field_errors(src: Option<&SourceState>) -> Vec<v1::FieldError> {
    src.map(|s| {
        s.errors
            .iter()
            .map(field_error_to_proto)
            .collect::<Vec<_>>()
    })
    .unwrap_or_default()
}

/// Every policy with its status, and the sources that declare none.
pub fn list_policies(state: &mut State, now: SystemTime) -> v1::ListPoliciesResponse {
    // Transition times of changed conditions are persisted lazily (the caller kicks).
    refresh_all(state, now);
    let mut policies = Vec::new();
    for p in state.catalog.policies() {
        let src = state.catalog.source(&p.source);
        let computed = status::compute(&subject(p), &state.nodes, now);
        let since = p.ready.as_ref().map_or(now, |m| m.since);
        let mut conditions = vec![condition(
            "Created",
            "True",
            "Created",
            format!("loaded from {}", p.source),
            p.first_seen,
        )];
        match src.filter(|s| !s.errors.is_empty()) {
            Some(s) => conditions.push(condition(
                "Updated",
                "False",
                "Error",
                format!(
                    "the latest version of {} is invalid; revision {} stays in force: {}",
                    p.source,
                    p.revision,
                    render(&s.errors)
                ),
                s.errors_at.unwrap_or(now),
            )),
            None if p.updated_at > p.first_seen => conditions.push(condition(
                "Updated",
                "True",
                "Updated",
                format!("revision {}", p.revision),
                p.updated_at,
            )),
            None => {}
        }
        conditions.push(condition(
            "Ready",
            computed.ready_status,
            computed.ready_reason,
            computed.ready_message.clone(),
            since,
        ));
        policies.push(v1::PolicyInfo {
            identity: Some((&p.identity).into()),
            profile_name: p.profile.clone(),
            source: p.source.clone(),
            revision: p.revision,
            enforcer: p.enforcer_text.clone(),
            mode: p.mode.as_str().to_string(),
            status: Some(v1::PolicyStatus {
                phase: computed.phase.to_string(),
                ready: computed.ready,
                conditions,
                desired: computed.desired,
                current: computed.current,
            }),
            errors: field_errors(src),
            warnings: p.warnings.clone(),
        });
    }
    let mut errors = Vec::new();
    for (name, s) in state.catalog.sources() {
        if s.errors.is_empty() || s.policy.is_some() {
            continue;
        }
        match (&s.identity, &s.duplicate_of) {
            // A policy that never had a valid version: listed, in phase Error.
            (Some(identity), None) if state.catalog.policy(&identity.profile_name()).is_none() => {
                let text = render(&s.errors);
                let computed = status::compute_invalid(&state.nodes, name, &text);
                let since = s.errors_at.unwrap_or(now);
                policies.push(v1::PolicyInfo {
                    identity: Some(identity.into()),
                    profile_name: identity.profile_name(),
                    source: name.clone(),
                    revision: 0,
                    enforcer: s.enforcer.clone(),
                    mode: s.mode.clone(),
                    status: Some(v1::PolicyStatus {
                        phase: computed.phase.to_string(),
                        ready: false,
                        conditions: vec![
                            condition(
                                "Created",
                                "False",
                                "Error",
                                format!("the policy in {name} is invalid: {text}"),
                                since,
                            ),
                            condition(
                                "Ready",
                                computed.ready_status,
                                computed.ready_reason,
                                computed.ready_message,
                                since,
                            ),
                        ],
                        desired: computed.desired,
                        current: 0,
                    }),
                    errors: field_errors(Some(s)),
                    warnings: Vec::new(),
                });
            }
            _ => errors.push(v1::SourceError {
                source: name.clone(),
                errors: field_errors(Some(s)),
            }),
        }
    }
    policies.sort_by(|a, b| a.profile_name.cmp(&b.profile_name));
    v1::ListPoliciesResponse { policies, errors }
}

type Outbound<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl v1::control_plane_server::ControlPlane for Control {
    async fn list_nodes(
        &self,
        request: Request<v1::ListNodesRequest>,
    ) -> Result<Response<v1::ListNodesResponse>, Status> {
        require_admin(&request)?;
        let state = self.shared.lock();
        let nodes = state
            .nodes
            .iter()
            .map(|(name, rec)| node_proto(&state, name, rec))
            .collect();
        Ok(Response::new(v1::ListNodesResponse { nodes }))
    }

    async fn get_node(
        &self,
        request: Request<v1::GetNodeRequest>,
    ) -> Result<Response<v1::Node>, Status> {
        require_admin(&request)?;
        let name = request.into_inner().name;
        let state = self.shared.lock();
        let rec = state.nodes.get(&name).ok_or(Error::NotFound {
            what: "node",
            name: name.clone(),
        })?;
        Ok(Response::new(node_proto(&state, &name, rec)))
    }

    async fn remove_node(
        &self,
        request: Request<v1::RemoveNodeRequest>,
    ) -> Result<Response<v1::Node>, Status> {
        let admin = require_admin(&request)?;
        let name = request.into_inner().name;
        let now = SystemTime::now();
        let (node, generation) = {
            let mut state = self.shared.lock();
            let rec = state.nodes.get_mut(&name).ok_or(Error::NotFound {
                what: "node",
                name: name.clone(),
            })?;
            if rec.expected {
                rec.expected = false;
                rec.removed_at = Some(now);
                tracing::info!(node = %name, by = %admin, "node removed: policies no longer wait for it");
            }
            let generation = state.touch(Doc::Nodes);
            refresh_all(&mut state, now);
            let rec = state.nodes.get(&name).cloned().ok_or(Error::NotFound {
                what: "node",
                name: name.clone(),
            })?;
            (node_proto(&state, &name, &rec), generation)
        };
        self.shared.persister.kick(Doc::Policies);
        self.shared.persist(Doc::Nodes, generation).await?;
        Ok(Response::new(node))
    }

    async fn list_policies(
        &self,
        request: Request<v1::ListPoliciesRequest>,
    ) -> Result<Response<v1::ListPoliciesResponse>, Status> {
        require_admin(&request)?;
        let resp = list_policies(&mut self.shared.lock(), SystemTime::now());
        self.shared.persister.kick(Doc::Policies);
        Ok(Response::new(resp))
    }

    async fn get_bundle(
        &self,
        request: Request<v1::GetBundleRequest>,
    ) -> Result<Response<v1::ProfileBundle>, Status> {
        require_admin(&request)?;
        let r = request.into_inner();
        if r.profile_name.is_empty() {
            return Err(Error::invalid("profile_name", "missing").into());
        }
        let key = {
            let state = self.shared.lock();
            let key = if r.node_name.is_empty() {
                FactsKey::UNKNOWN
            } else {
                state
                    .nodes
                    .get(&r.node_name)
                    .ok_or(Error::NotFound {
                        what: "node",
                        name: r.node_name.clone(),
                    })?
                    .facts_key()
            };
            if state.catalog.policy(&r.profile_name).is_none() {
                let invalid = state.catalog.sources().find(|(_, s)| {
                    s.identity
                        .as_ref()
                        .is_some_and(|i| i.profile_name() == r.profile_name)
                        && !s.errors.is_empty()
                });
                return Err(match invalid {
                    Some((source, s)) => Error::FailedPrecondition(format!(
                        "profile {:?} has no valid version; {source}: {}",
                        r.profile_name,
                        render(&s.errors)
                    )),
                    None => Error::NotFound {
                        what: "profile",
                        name: r.profile_name.clone(),
                    },
                }
                .into());
            }
            key
        };
        let bundle =
            self.shared
                .bundle_for(&r.profile_name, &key)
                .await
                .ok_or(Error::NotFound {
                    what: "profile",
                    name: r.profile_name.clone(),
                })?;
        Ok(Response::new((*bundle).clone()))
    }

    type WatchEventsStream = Outbound<v1::Event>;

    async fn watch_events(
        &self,
        request: Request<v1::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let admin = require_admin(&request)?;
        let filter = request.into_inner().filter.unwrap_or_default();
        let mut rx = self.shared.events.subscribe();
        let shared = self.shared.clone();
        let (tx, out) = mpsc::channel(256);
        tokio::spawn(async move {
            let mut shutdown = shared.shutdown.clone();
            loop {
                tokio::select! {
                    _ = stopping(&mut shutdown) => {
                        let _ = tx.send(Err(Status::unavailable("the manager is shutting down"))).await;
                        break;
                    }
                    _ = tx.closed() => break,
                    r = rx.recv() => match r {
                        Ok(e) => {
                            if events::matches(&filter, &e)
                                && tx.send(Ok((*e).clone())).await.is_err()
                            {
                                break;
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            let total = shared.events.count_skipped(n);
                            tracing::warn!(by = %admin, skipped = n, skipped_total = total, "event watcher fell behind; it skips the events it missed");
                        }
                        Err(broadcast::error::RecvError::Closed) => break,
                    },
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out))))
    }
}
