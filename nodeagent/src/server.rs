//! The `NodeState` service for operators: TLS 1.3 with the node certificate as the server
//! certificate and the varmor CA for client certificates (required); every call needs the
//! admin identity. Reflection (v1 and v1alpha) and health are registered so `grpcurl` works.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::{BroadcastStream, ReceiverStream};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};
use varmor_proto::v1;
use varmor_proto::v1::node_state_server::{NodeState, NodeStateServer};
use varmor_rpc::tls::{require_admin, server_config, ClientAuth};

use crate::containers::ContainerRegistry;
use crate::identity::NodeIdentity;
use crate::session::SessionContext;

/// The `NodeState` handlers.
#[derive(Debug, Clone)]
pub struct NodeStateService {
    ctx: SessionContext,
    containers: Arc<ContainerRegistry>,
}

/// Errors of the handlers, mapped to gRPC statuses in one place.
#[derive(Debug, thiserror::Error)]
enum NodeStateError {
    #[error("profile {0:?} is not held on this node")]
    NoSuchProfile(String),
}

impl From<NodeStateError> for Status {
    fn from(e: NodeStateError) -> Self {
        match e {
            NodeStateError::NoSuchProfile(_) => Status::not_found(e.to_string()),
        }
    }
}

impl NodeStateService {
    pub(crate) fn new(ctx: SessionContext, containers: Arc<ContainerRegistry>) -> Self {
        NodeStateService { ctx, containers }
    }

    /// The agent's state as `GetState` returns it.
    pub fn state(&self) -> v1::AgentState {
        agent_state(&self.ctx)
    }
}

pub(crate) fn agent_state(ctx: &SessionContext) -> v1::AgentState {
    let conn = ctx.status.get();
    let counters = ctx.events.counters();
    let profiles = ctx.applier.profiles();
    v1::AgentState {
        node_name: ctx.config.node_name.clone(),
        agent_version: crate::AGENT_VERSION.to_string(),
        manager_url: ctx.config.manager_url.clone(),
        manager_connected: conn.connected,
        connection_changed_at: Some(conn.changed_at.into()),
        last_error: conn.last_error,
        capabilities: Some(ctx.applier.enforcers().capabilities()),
        facts: Some(ctx.facts.clone()),
        certificate_not_after: Some(ctx.identity.borrow().not_after.into()),
        profiles: u32::try_from(profiles.len()).unwrap_or(u32::MAX),
        revision: profiles.highest_revision(),
        events_produced: counters.produced,
        events_acked: counters.acked,
        events_buffered: counters.buffered,
        events_dropped: counters.dropped,
        event_buffer_capacity: counters.capacity,
        sinks: ctx
            .pipeline
            .as_ref()
            .map(|p| p.sink_stats())
            .unwrap_or_default(),
    }
}

fn matches(filter: &v1::EventFilter, e: &v1::Event) -> bool {
    (filter.node_name.is_empty() || filter.node_name == e.node_name)
        && (filter.namespace.is_empty()
            || filter.namespace == e.pod_namespace
            || filter.namespace == e.policy_namespace)
        && (filter.policy.is_empty() || filter.policy == e.policy_name)
        && (filter.action.is_empty()
            || e.action
                .to_ascii_uppercase()
                .contains(&filter.action.to_ascii_uppercase()))
}

type EventStream = Pin<Box<dyn Stream<Item = Result<v1::Event, Status>> + Send>>;

#[tonic::async_trait]
impl NodeState for NodeStateService {
    async fn get_state(
        &self,
        request: Request<v1::GetStateRequest>,
    ) -> Result<Response<v1::AgentState>, Status> {
        require_admin(&request)?;
        Ok(Response::new(self.state()))
    }

    async fn list_profiles(
        &self,
        request: Request<v1::ListProfilesRequest>,
    ) -> Result<Response<v1::ListProfilesResponse>, Status> {
        require_admin(&request)?;
        Ok(Response::new(v1::ListProfilesResponse {
            profiles: self.ctx.applier.profiles().list(),
        }))
    }

    async fn get_profile(
        &self,
        request: Request<v1::GetProfileRequest>,
    ) -> Result<Response<v1::HeldBundle>, Status> {
        require_admin(&request)?;
        let name = &request.get_ref().profile_name;
        let held = self
            .ctx
            .applier
            .profiles()
            .get(name)
            .ok_or_else(|| NodeStateError::NoSuchProfile(name.clone()))?;
        Ok(Response::new(held))
    }

    async fn list_containers(
        &self,
        request: Request<v1::ListContainersRequest>,
    ) -> Result<Response<v1::ListContainersResponse>, Status> {
        require_admin(&request)?;
        Ok(Response::new(v1::ListContainersResponse {
            containers: self
                .containers
                .list()
                .iter()
                .map(|c| c.to_proto())
                .collect(),
        }))
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        request: Request<v1::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        require_admin(&request)?;
        let filter = request.into_inner().filter.unwrap_or_default();
        let node = self.ctx.config.node_name.clone();
        let stream =
            BroadcastStream::new(self.ctx.events.subscribe()).filter_map(move |r| match r {
                Ok(e) if matches(&filter, &e) => Some(Ok(Arc::unwrap_or_clone(e))),
                Ok(_) => None,
                Err(BroadcastStreamRecvError::Lagged(n)) => {
                    tracing::warn!(
                        node,
                        skipped = n,
                        "a WatchEvents client is too slow; events skipped"
                    );
                    None
                }
            });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Serves `NodeState`, health and reflection on `listener` until `shutdown` turns true. The
/// server certificate follows `identity` (a renewed certificate is used for new connections).
pub(crate) async fn serve(
    listener: TcpListener,
    service: NodeStateService,
    identity: watch::Receiver<Arc<NodeIdentity>>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), tonic::transport::Error> {
    let (health_reporter, health) = varmor_rpc::service::health();
    health_reporter
        .set_serving::<NodeStateServer<NodeStateService>>()
        .await;
    let (reflection_v1, reflection_v1alpha) = varmor_rpc::service::reflection();
    let incoming = tls_incoming(listener, identity);
    tonic::transport::Server::builder()
        .add_service(NodeStateServer::new(service))
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        })
        .await
}

/// Accepts TCP connections and completes TLS handshakes concurrently with the current node
/// certificate. (`varmor_rpc::tls::tls_incoming` takes a fixed configuration; the agent's
/// certificate is renewed while it runs.)
fn tls_incoming(
    listener: TcpListener,
    mut identity: watch::Receiver<Arc<NodeIdentity>>,
) -> impl Stream<Item = Result<TlsStream<TcpStream>, io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        let mut current: Option<(Arc<NodeIdentity>, TlsAcceptor)> = None;
        loop {
            let (tcp, addr) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "NodeState accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if tx.is_closed() {
                return;
            }
            let id = identity.borrow_and_update().clone();
            let acceptor = match &current {
                Some((cached, acceptor)) if Arc::ptr_eq(cached, &id) => acceptor.clone(),
                _ => {
                    match server_config(&id.cert_pem, &id.key_pem, &id.ca_pem, ClientAuth::Required)
                    {
                        Ok(config) => {
                            let acceptor = TlsAcceptor::from(config);
                            current = Some((id, acceptor.clone()));
                            acceptor
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "cannot use the node certificate for NodeState");
                            continue;
                        }
                    }
                }
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => {
                        tracing::info!(peer = %addr, error = %e, "NodeState TLS handshake refused")
                    }
                    Err(_) => tracing::info!(peer = %addr, "NodeState TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_filters() {
        let e = v1::Event {
            node_name: "n1".into(),
            pod_namespace: "demo".into(),
            policy_name: "web".into(),
            action: "AUDIT|ALLOWED".into(),
            ..Default::default()
        };
        assert!(matches(&v1::EventFilter::default(), &e));
        assert!(matches(
            &v1::EventFilter {
                namespace: "demo".into(),
                policy: "web".into(),
                action: "allowed".into(),
                ..Default::default()
            },
            &e
        ));
        assert!(!matches(
            &v1::EventFilter {
                action: "DENIED".into(),
                ..Default::default()
            },
            &e
        ));
        assert!(!matches(
            &v1::EventFilter {
                node_name: "n2".into(),
                ..Default::default()
            },
            &e
        ));
    }
}
