//! Wiring: identity, held profiles, enforcers, the manager session, the event publisher, the
//! certificate renewal and the `NodeState` server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use varmor_proto::v1;

use crate::apply::Applier;
use crate::binder::{self, BinderHandle, LatencySummary};
use crate::config::Config;
use crate::containers::ContainerRegistry;
use crate::enforcer::{EnforcerKind, Enforcers};
use crate::error::AgentError;
use crate::events::{self, EventBuffer, Pushed};
use crate::gateway;
use crate::host::HostFs;
use crate::identity;
use crate::profiles::HeldProfiles;
use crate::server::{self, NodeStateService};
use crate::session::{self, SessionContext};
use crate::state::StateDir;
use crate::status::ConnectionStatus;

/// A running agent.
#[derive(Debug)]
pub struct Agent {
    ctx: SessionContext,
    containers: Arc<ContainerRegistry>,
    binder: Option<BinderHandle>,
    state_dir: StateDir,
    node_state_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// The kubelet's seccomp directory on the host.
pub const KUBELET_SECCOMP_DIR: &str = "/var/lib/kubelet/seccomp";

impl Agent {
    /// Starts an agent with the enforcers of this version for the host at `config.host_root`.
    pub async fn start(config: Config) -> Result<Agent, AgentError> {
        let host = HostFs::new(&config.host_root);
        let seccomp_dir = config
            .seccomp_dir
            .clone()
            .unwrap_or_else(|| host.path(KUBELET_SECCOMP_DIR));
        let enforcers = Enforcers::for_host(&host, seccomp_dir);
        Self::start_with(config, enforcers).await
    }

    /// Starts an agent with the given enforcers. Returns once the node has an identity, the held
    /// profiles are restored and `NodeState` listens; the manager session runs in the background.
    /// A rejected join token is an error; an unreachable manager is retried.
    pub async fn start_with(config: Config, enforcers: Enforcers) -> Result<Agent, AgentError> {
        if config.node_name.trim().is_empty() {
            return Err(AgentError::Config("--node-name is empty".into()));
        }
        gateway::manager_endpoint(&config.manager_url)?;
        let node = config.node_name.clone();
        let state_dir = StateDir::open(&config.state_dir)?;
        let status = Arc::new(ConnectionStatus::default());
        let (shutdown, shutdown_rx) = watch::channel(false);

        let id = identity::ensure(&config, &state_dir, &status, shutdown_rx.clone()).await?;
        let (identity_tx, identity_rx) = watch::channel(Arc::new(id));
        let identity_tx = Arc::new(identity_tx);

        for kind in EnforcerKind::ALL {
            let c = enforcers.capability(kind);
            tracing::info!(
                node,
                enforcer = kind.as_str(),
                available = c.available,
                reason = c.reason,
                "enforcer capability"
            );
        }
        let host = HostFs::new(&config.host_root);
        let facts = host.node_facts();
        let profiles = Arc::new(HeldProfiles::load(state_dir.bundles_dir())?);
        let applier = Arc::new(Applier::new(node.clone(), profiles, enforcers));
        if !applier.profiles().is_empty() {
            tracing::info!(
                node,
                profiles = applier.profiles().len(),
                "restoring the held profiles"
            );
            applier.restore().await;
        }
        let events = Arc::new(EventBuffer::open(
            node.clone(),
            config.event_buffer,
            Some(state_dir.event_sequence()),
        )?);
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| AgentError::Listen {
                    addr: config.listen,
                    source,
                })?;
        let node_state_addr = listener.local_addr().map_err(|source| AgentError::Listen {
            addr: config.listen,
            source,
        })?;

        let config = Arc::new(config);
        let ctx = SessionContext {
            config: config.clone(),
            identity: identity_tx.clone(),
            applier,
            events,
            status: status.clone(),
            facts,
        };
        let containers = Arc::new(ContainerRegistry::new());
        let service = NodeStateService::new(ctx.clone(), containers.clone());
        let mut tasks = Vec::new();
        // After the held profiles were restored: containers running now are bound at once.
        let binder = config.containers.clone().map(|runtime| {
            let (handle, spawned) = binder::spawn(
                node.clone(),
                runtime,
                host.clone(),
                config.backoff,
                ctx.applier.clone(),
                containers.clone(),
                shutdown_rx.clone(),
            );
            tasks.extend(spawned);
            handle
        });
        {
            let shutdown = shutdown_rx.clone();
            let node = node.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = server::serve(listener, service, identity_rx, shutdown).await {
                    tracing::error!(node, error = %e, "NodeState server stopped");
                }
            }));
        }
        // Kernel events of the enforcers (BPF-LSM) go into the event buffer.
        for enforcer in ctx.applier.enforcers().iter() {
            if let Some(mut rx) = enforcer.take_events() {
                let buffer = ctx.events.clone();
                let mut shutdown = shutdown_rx.clone();
                tasks.push(tokio::spawn(async move {
                    loop {
                        tokio::select! {
                            event = rx.recv() => match event {
                                Some(event) => {
                                    buffer.push(event);
                                }
                                None => break,
                            },
                            _ = shutdown.changed() => break,
                        }
                    }
                }));
            }
        }
        tasks.push(tokio::spawn(session::sync_loop(
            ctx.clone(),
            shutdown_rx.clone(),
        )));
        tasks.push(tokio::spawn(events::publish_loop(
            ctx.clone(),
            shutdown_rx.clone(),
        )));
        tasks.push(tokio::spawn(identity::renew_loop(
            config,
            state_dir.clone(),
            identity_tx,
            status,
            shutdown_rx,
        )));
        tracing::info!(node, listen = %node_state_addr, "agent started");
        Ok(Agent {
            ctx,
            containers,
            binder,
            state_dir,
            node_state_addr,
            shutdown,
            tasks,
        })
    }

    /// Where `NodeState` listens.
    pub fn node_state_addr(&self) -> SocketAddr {
        self.node_state_addr
    }

    /// The event buffer; event sources push into it.
    pub fn events(&self) -> &Arc<EventBuffer> {
        &self.ctx.events
    }

    /// Pushes one event (see [`EventBuffer::push`]).
    pub fn push_event(&self, event: v1::Event) -> Pushed {
        self.ctx.events.push(event)
    }

    /// The agent's state, as `GetState` returns it.
    pub fn state(&self) -> v1::AgentState {
        server::agent_state(&self.ctx)
    }

    /// The held bundles and their results.
    pub fn profiles(&self) -> Vec<v1::HeldBundle> {
        self.ctx.applier.profiles().list()
    }

    /// The container registry.
    pub fn containers(&self) -> &Arc<ContainerRegistry> {
        &self.containers
    }

    /// The binder (when containers are watched): binding latencies, and the entry point of a
    /// runtime hook.
    pub fn binder(&self) -> Option<&BinderHandle> {
        self.binder.as_ref()
    }

    /// The binding latencies so far (zero when containers are not watched).
    pub fn binding_latency(&self) -> LatencySummary {
        self.binder
            .as_ref()
            .map(|b| b.stats().summary())
            .unwrap_or_default()
    }

    /// The state directory.
    pub fn state_dir(&self) -> &StateDir {
        &self.state_dir
    }

    /// The current node certificate (PEM).
    pub fn certificate_pem(&self) -> String {
        self.ctx.identity.borrow().cert_pem.clone()
    }

    /// Stops every task (the held profiles stay loaded in the kernel) and persists the event
    /// sequence.
    pub async fn shutdown(self) {
        let node = self.ctx.config.node_name.clone();
        let _ = self.shutdown.send(true);
        for mut task in self.tasks {
            // Open WatchEvents streams keep a graceful server shutdown waiting: cut them.
            if tokio::time::timeout(Duration::from_secs(3), &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
        self.ctx.events.persist_next_sequence();
        tracing::info!(node, "agent stopped");
    }
}

/// Runs the agent until SIGINT or SIGTERM.
pub async fn run(config: Config) -> Result<(), AgentError> {
    let agent = tokio::select! {
        agent = Agent::start(config) => agent?,
        _ = wait_for_signal() => return Ok(()),
    };
    wait_for_signal().await;
    agent.shutdown().await;
    Ok(())
}

async fn wait_for_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
