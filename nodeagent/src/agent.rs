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
use crate::enforcer::{
    AppArmorEnforcer, AppArmorOptions, EnforcerKind, Enforcers, SeccompEnforcer,
};
use crate::error::AgentError;
use crate::events::{self, EventBuffer, Pushed};
use crate::gateway;
use crate::host::HostFs;
use crate::identity;
use crate::metrics::AgentMetrics;
use crate::profiles::HeldProfiles;
use crate::server::{self, NodeStateService};
use crate::session::{self, SessionContext};
use crate::state::StateDir;
use crate::status::ConnectionStatus;
use crate::violations::enrich::{Enricher, ExitedLookup};
use crate::violations::fanout::{Pipeline, PipelineConfig};
use crate::violations::kernlog::{self, KernLogConfig};
use varmor_rpc::metrics::MetricsServer;

/// A running agent.
#[derive(Debug)]
pub struct Agent {
    ctx: SessionContext,
    containers: Arc<ContainerRegistry>,
    binder: Option<BinderHandle>,
    state_dir: StateDir,
    node_state_addr: SocketAddr,
    pipeline: Arc<Pipeline>,
    sink: EventSink,
    metrics: AgentMetrics,
    metrics_server: Option<MetricsServer>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Where events of every source go: enriched, counted, then offered to every sink.
#[derive(Debug, Clone)]
struct EventSink {
    enricher: Arc<Enricher>,
    pipeline: Arc<Pipeline>,
    metrics: AgentMetrics,
}

impl EventSink {
    fn submit(&self, mut event: v1::Event) {
        self.enricher.enrich(&mut event);
        self.deliver(event);
    }

    /// Counts an enriched event and offers it to every sink.
    fn deliver(&self, event: v1::Event) {
        self.metrics.event(&event);
        self.pipeline.submit(event);
    }
}

/// Reads AppArmor and Seccomp audit records and submits those about our profiles: AppArmor
/// records of `varmor-*` profiles, Seccomp records of processes in containers bound to a
/// profile. A source that cannot be opened is retried (the reason is logged once per change).
async fn audit_loop(
    node: String,
    config: KernLogConfig,
    sink: EventSink,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut source = tokio::select! {
        s = kernlog::open(&config) => match s {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(node, error = %e, "AppArmor and Seccomp audit records cannot be read; their violations will not be reported");
                return;
            }
        },
        _ = shutdown.changed() => return,
    };
    tracing::info!(node, source = ?source.info(), "reading AppArmor and Seccomp audit records");
    loop {
        let record = tokio::select! {
            r = source.next() => r,
            _ = shutdown.changed() => return,
        };
        let Some(record) = record else { return };
        if !record.is_violation() {
            continue;
        }
        if let Some(profile) = &record.profile {
            if !profile.starts_with("varmor-") {
                continue;
            }
        }
        let mut event = record.to_event();
        sink.enricher.enrich(&mut event);
        if event.profile_name.is_empty() {
            // A seccomp record of a process no profile of ours confines.
            continue;
        }
        sink.deliver(event);
    }
}

/// The kubelet's seccomp directory on the host.
pub const KUBELET_SECCOMP_DIR: &str = "/var/lib/kubelet/seccomp";

impl Agent {
    /// Starts an agent with the enforcers of this version for the host at `config.host_root`.
    pub async fn start(config: Config) -> Result<Agent, AgentError> {
        let host = HostFs::new(&config.host_root);
        // Kubernetes: the kubelet's directory; standalone: ours (see SeccompEnforcer).
        let mode = config
            .containers
            .as_ref()
            .map_or(crate::runtime::Mode::Kubernetes, |c| c.mode);
        let seccomp_dir = config
            .seccomp_dir
            .clone()
            .unwrap_or_else(|| SeccompEnforcer::default_dir(&host, mode));
        let apparmor = Arc::new(AppArmorEnforcer::for_host(
            &host,
            AppArmorOptions::default(),
        ));
        let enforcers = Enforcers::for_host(&host, seccomp_dir, apparmor.clone());
        let agent = Self::start_with(config, enforcers).await?;
        // The held bundles were re-applied: AppArmor profiles of earlier runs that none of them
        // uses are unloaded.
        apparmor.remove_orphans().await;
        Ok(agent)
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
        let metrics = AgentMetrics::new();
        let profiles = Arc::new(HeldProfiles::load(state_dir.bundles_dir())?);
        let applier =
            Arc::new(Applier::new(node.clone(), profiles, enforcers).with_metrics(metrics.clone()));
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

        // The violation pipeline: every event goes to the manager (the buffer above), and to
        // violations.log and OTLP when configured, each with its own bounded queue.
        let mut pipeline_config = PipelineConfig::new(node.clone());
        pipeline_config.log = config.violations.log.clone();
        pipeline_config.otlp = config.violations.otlp.clone();
        let pipeline = Arc::new(Pipeline::start(pipeline_config, Some(events.clone()))?);
        {
            let p = pipeline.clone();
            metrics.watch_sinks(move || p.sink_stats());
        }
        let metrics_server = match config.metrics_listen {
            Some(addr) => Some(
                metrics
                    .serve(addr)
                    .await
                    .map_err(|e| AgentError::Metrics(format!("--metrics-listen {addr}: {e}")))?,
            ),
            None => None,
        };

        let config = Arc::new(config);
        let ctx = SessionContext {
            config: config.clone(),
            identity: identity_tx.clone(),
            applier,
            events,
            status: status.clone(),
            facts,
            pipeline: Some(pipeline.clone()),
        };
        let containers = Arc::new(ContainerRegistry::new());
        let mut enricher = Enricher::new(
            node.clone(),
            host.clone(),
            containers.clone(),
            ctx.applier.profiles().clone(),
        );
        if config.violations.audit.is_some() {
            // Audit records of processes that exited before they were read.
            match crate::exits::ExitTracker::start(&host) {
                Ok(tracker) => {
                    tracing::info!("exit tracker attached (raw tracepoint sched_process_exit)");
                    let tracker = Arc::new(std::sync::Mutex::new(tracker));
                    enricher = enricher.with_exited(ExitedLookup(Arc::new(move |pid| {
                        tracker
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .mount_namespace(pid)
                    })));
                }
                Err(reason) => tracing::warn!(
                    %reason,
                    "audit records of processes that exited before the agent read them cannot \
                     be attributed to their container"
                ),
            }
        }
        let enricher = Arc::new(enricher);
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
            handle.stats().observe_into(metrics.clone());
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
        let sink = EventSink {
            enricher: enricher.clone(),
            pipeline: pipeline.clone(),
            metrics: metrics.clone(),
        };
        // Kernel events of the enforcers (BPF-LSM) go through the pipeline.
        for enforcer in ctx.applier.enforcers().iter() {
            if let Some(mut rx) = enforcer.take_events() {
                let sink = sink.clone();
                let mut shutdown = shutdown_rx.clone();
                tasks.push(tokio::spawn(async move {
                    loop {
                        tokio::select! {
                            event = rx.recv() => match event {
                                Some(event) => sink.submit(event),
                                None => break,
                            },
                            _ = shutdown.changed() => break,
                        }
                    }
                }));
            }
        }
        // AppArmor and Seccomp audit records from the kernel.
        if let Some(audit) = config.violations.audit.clone() {
            tasks.push(tokio::spawn(audit_loop(
                node.clone(),
                audit,
                sink.clone(),
                shutdown_rx.clone(),
            )));
        }
        // Gauges that follow the state: bound containers, manager connection.
        {
            let metrics = metrics.clone();
            let containers = containers.clone();
            let status = status.clone();
            let mut shutdown = shutdown_rx.clone();
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tokio::select! {
                        _ = tick.tick() => {
                            let bound = containers.bound_count();
                            metrics.set_bound_containers(bound);
                            metrics.set_manager_connected(status.get().connected);
                        }
                        _ = shutdown.changed() => break,
                    }
                }
            }));
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
            pipeline,
            sink,
            metrics,
            metrics_server,
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

    /// The violation pipeline (its sinks and counters).
    pub fn pipeline(&self) -> &Arc<Pipeline> {
        &self.pipeline
    }

    /// Reports a violation as the kernel sources do: the event is enriched (node, container,
    /// pod, profile, policy), counted, and offered to every sink (the manager, violations.log,
    /// OTLP). For event sources outside the agent, e.g. a runtime hook.
    pub fn report(&self, event: v1::Event) {
        self.sink.submit(event);
    }

    /// The agent's Prometheus metrics.
    pub fn metrics(&self) -> &AgentMetrics {
        &self.metrics
    }

    /// Where `/metrics` is served, when it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_server.as_ref().map(|m| m.local_addr())
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
        // The queued sinks write what they hold (OTLP gets a moment to export).
        self.pipeline.shutdown(Duration::from_secs(2)).await;
        if let Some(m) = self.metrics_server {
            m.shutdown().await;
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
