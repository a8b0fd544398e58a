//! Starting and stopping the manager: state, CA, policy source, engine and the gRPC server
//! on one TLS listener.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use varmor_proto::v1::agent_gateway_server::AgentGatewayServer;
use varmor_proto::v1::control_plane_server::ControlPlaneServer;
use varmor_rpc::metrics::MetricsServer;
use varmor_rpc::tls::{server_config, tls_incoming_observed, ClientAuth};

use crate::catalog::{Catalog, PoliciesFile};
use crate::control::Control;
use crate::events::EventHub;
use crate::gateway::Gateway;
use crate::metrics::{ManagerMetrics, Rollouts};
use crate::shared::{known_facts, run_engine, Shared};
use crate::source::{DirectorySource, PolicySource};
use crate::state::{EventsFile, NodesFile, State};
use crate::store::{self, Doc, Persister, Snapshotter};
use crate::{ca, Config, Error};

/// Largest message accepted from a client (a batch of events, a hello).
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// How far a Sync session may fall behind the catalog before it gets a full snapshot again.
const CHANGE_BACKLOG: usize = 1024;
/// How far an event watcher may fall behind before it skips events.
const EVENT_BACKLOG: usize = 4096;
/// How long open streams get to end at shutdown.
const GRACE: Duration = Duration::from_secs(5);

/// A running manager.
#[derive(Debug)]
pub struct Manager {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    shutdown_tx: watch::Sender<bool>,
    server: Option<JoinHandle<Result<(), Error>>>,
    tasks: Vec<JoinHandle<()>>,
    metrics: Option<MetricsServer>,
}

impl Manager {
    /// Starts a manager that reads policies from `config.policy_dir`.
    pub async fn start(config: Config) -> Result<Manager, Error> {
        if !config.policy_dir.is_dir() {
            return Err(Error::Config(format!(
                "--policy-dir {} is not a directory",
                config.policy_dir.display()
            )));
        }
        let source = DirectorySource::new(&config.policy_dir, config.rescan_interval);
        Manager::start_with_source(config, Box::new(source)).await
    }

    /// Starts a manager with any policy source.
    pub async fn start_with_source(
        config: Config,
        source: Box<dyn PolicySource>,
    ) -> Result<Manager, Error> {
        config.validate()?;
        let dir = config.state_dir.clone();
        store::ensure_dir(&dir)?;
        let creds = {
            let (dir, listen, sans, lifetime) = (
                dir.clone(),
                config.listen,
                config.tls_sans.clone(),
                config.node_cert_lifetime,
            );
            tokio::task::spawn_blocking(move || ca::load_or_create(&dir, listen, &sans, lifetime))
                .await
                .map_err(|e| Error::Config(format!("startup task failed: {e}")))??
        };

        let nodes: NodesFile = store::read_json(&dir.join(store::NODES))?.unwrap_or_default();
        let events: EventsFile = store::read_json(&dir.join(store::EVENTS))?.unwrap_or_default();
        let policies: PoliciesFile =
            store::read_json(&dir.join(store::POLICIES))?.unwrap_or_default();
        let metrics = ManagerMetrics::new();
        let mut state = State {
            nodes: nodes.nodes,
            sessions: HashMap::new(),
            events: events.nodes,
            catalog: Catalog::new(&config.varmor_namespace),
            generations: [0; 3],
            next_session_id: 0,
            rollouts: Rollouts::new(metrics.distribution.clone()),
        };
        let facts = known_facts(&state);
        let mut catalog =
            std::mem::replace(&mut state.catalog, Catalog::new(&config.varmor_namespace));
        let catalog = tokio::task::spawn_blocking(move || {
            catalog.restore(policies, &facts);
            catalog
        })
        .await
        .map_err(|e| Error::Config(format!("startup task failed: {e}")))?;
        state.catalog = catalog;
        tracing::info!(
            state_dir = %dir.display(),
            nodes = state.nodes.len(),
            policies = state.catalog.policies().count(),
            revision = state.catalog.counter(),
            "state loaded"
        );
        // Write every document once, in the current format.
        for doc in Doc::ALL {
            state.touch(doc);
        }
        let state = Arc::new(Mutex::new(state));
        let snap_state = state.clone();
        let snapshot: Snapshotter = Arc::new(move |doc, written| {
            snap_state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .snapshot(doc, written)
        });
        let persister = Persister::start(dir.clone(), snapshot, [0; 3]);
        for doc in Doc::ALL {
            persister.kick(doc);
        }

        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| Error::io("listen on", config.listen.to_string(), e))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| Error::io("listen on", config.listen.to_string(), e))?;
        let tls = server_config(
            &creds.server.cert_pem,
            &creds.server.key_pem,
            creds.ca.ca_pem(),
            ClientAuth::Optional,
        )
        .map_err(|e| Error::cert(dir.join(store::SERVER_CERT).display().to_string(), e))?;

        // Bound before anything runs, so a bad --metrics-listen fails the start.
        let metrics_server = match config.metrics_listen {
            Some(addr) => Some(
                MetricsServer::start(addr, Arc::new(metrics.registry(state.clone())))
                    .await
                    .map_err(|e| Error::Config(format!("--metrics-listen: {e}")))?,
            ),
            None => None,
        };

        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let (synced_tx, synced_rx) = watch::channel(false);
        let (changes, _) = broadcast::channel(CHANGE_BACKLOG);
        let shared = Arc::new(Shared {
            config: config.clone(),
            ca: creds.ca,
            join_token: creds.join_token,
            state,
            persister,
            changes,
            events: EventHub::new(EVENT_BACKLOG),
            synced: synced_rx,
            shutdown: shutdown_rx.clone(),
            metrics: metrics.clone(),
        });

        let mut tasks = Vec::new();
        let (src_tx, src_rx) = mpsc::channel(64);
        let source_name = source.name();
        tasks.push(tokio::spawn(async move {
            tracing::info!(source = %source_name, "policy source started");
            if let Err(e) = source.run(src_tx).await {
                tracing::error!(source = %source_name, error = %e, "policy source stopped; the loaded policies stay in force");
            }
        }));
        tasks.push(tokio::spawn(run_engine(shared.clone(), src_rx, synced_tx)));

        let (health_reporter, health) = varmor_rpc::service::health();
        health_reporter
            .set_serving::<AgentGatewayServer<Gateway>>()
            .await;
        health_reporter
            .set_serving::<ControlPlaneServer<Control>>()
            .await;
        let (reflection_v1, reflection_v1alpha) = varmor_rpc::service::reflection();
        let gateway = AgentGatewayServer::new(Gateway::new(shared.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
        let control = ControlPlaneServer::new(Control::new(shared.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
        let incoming = tls_incoming_observed(
            listener,
            move || tls.clone(),
            move |failure| metrics.tls_handshake_failed(failure.reason()),
        );
        let mut stop = shutdown_rx;
        let router = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(config.keepalive_interval))
            .http2_keepalive_timeout(Some(config.keepalive_timeout))
            .add_service(health)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(gateway)
            .add_service(control);
        let addr = local_addr.to_string();
        let server = tokio::spawn(async move {
            let _reporter = health_reporter;
            router
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
                .map_err(|cause| Error::Serve { addr, cause })
        });
        tracing::info!(
            addr = %local_addr,
            state_dir = %dir.display(),
            policy_dir = %config.policy_dir.display(),
            "varmor-manager serving AgentGateway and ControlPlane (mTLS, TLS 1.3)"
        );
        Ok(Manager {
            shared,
            local_addr,
            shutdown_tx,
            server: Some(server),
            tasks,
            metrics: metrics_server,
        })
    }

    /// The address the gRPC server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address metrics are served on (`GET /metrics`), when `metrics_listen` was set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(MetricsServer::local_addr)
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.shared.config.state_dir
    }

    /// Waits until the policy source listed what it had at start.
    pub async fn wait_policies_loaded(&self) -> Result<(), Error> {
        self.shared.wait_synced().await
    }

    /// The revision of every policy in force, by profile name.
    pub fn revisions(&self) -> BTreeMap<String, u64> {
        self.shared
            .lock()
            .catalog
            .policies()
            .map(|p| (p.profile.clone(), p.revision))
            .collect()
    }

    /// Runs until the server stops by itself (an error), or forever.
    pub async fn wait(&mut self) -> Result<(), Error> {
        match self.server.as_mut() {
            Some(h) => match h.await {
                Ok(r) => {
                    self.server = None;
                    r
                }
                Err(e) => Err(Error::Config(format!("server task failed: {e}"))),
            },
            None => Ok(()),
        }
    }

    /// Stops serving: ends every stream, waits a little for connections to close, and writes
    /// the state files.
    pub async fn shutdown(mut self) -> Result<(), Error> {
        tracing::info!("varmor-manager shutting down");
        self.shutdown_tx.send_replace(true);
        let mut result = Ok(());
        if let Some(server) = self.server.take() {
            match tokio::time::timeout(GRACE, server).await {
                Ok(Ok(r)) => result = r,
                Ok(Err(e)) => tracing::warn!(error = %e, "server task failed"),
                Err(_) => tracing::warn!("connections did not close within the grace period"),
            }
        }
        for t in self.tasks.drain(..) {
            t.abort();
        }
        if let Some(m) = self.metrics.take() {
            m.shutdown().await;
        }
        for doc in Doc::ALL {
            let generation = self.shared.lock().generations[doc.index()];
            if let Err(e) = self.shared.persist(doc, generation).await {
                tracing::error!(file = doc.file(), error = %e, "cannot write state at shutdown");
                result = Err(e);
            }
        }
        self.shared.persister.stop();
        result
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        self.shutdown_tx.send_replace(true);
        for t in &self.tasks {
            t.abort();
        }
        // Whatever was recorded is on disk when the manager is dropped; sessions that end
        // afterwards are written when the last of them lets go of the shared state.
        self.shared.persister.flush_blocking();
    }
}
