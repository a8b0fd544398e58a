//! The node's `Sync` session with the manager: one long-lived stream, reconnected with jittered
//! exponential backoff. On every (re)connect the agent says `Hello` (facts, capabilities, the
//! revisions it holds); the manager answers with a snapshot, then updates and removals; every
//! one of them is applied and acknowledged with per-enforcer results.

use std::sync::Arc;

use tokio::sync::watch;
use tokio_stream::wrappers::ReceiverStream;
use varmor_proto::v1;
use varmor_proto::v1::agent_message::Message as AgentMsg;
use varmor_proto::v1::manager_message::Message as ManagerMsg;

use crate::apply::Applier;
use crate::backoff::Backoff;
use crate::config::Config;
use crate::events::EventBuffer;
use crate::gateway::{self, GatewayError};
use crate::identity::NodeIdentity;
use crate::status::ConnectionStatus;

/// What the session and the event publisher share.
#[derive(Debug, Clone)]
pub(crate) struct SessionContext {
    pub config: Arc<Config>,
    pub identity: Arc<watch::Sender<Arc<NodeIdentity>>>,
    pub applier: Arc<Applier>,
    pub events: Arc<EventBuffer>,
    pub status: Arc<ConnectionStatus>,
    pub facts: v1::NodeFacts,
    /// The violation pipeline (for its sink counters); `None` in tests that build no pipeline.
    pub pipeline: Option<Arc<crate::violations::fanout::Pipeline>>,
}

impl SessionContext {
    fn hello(&self) -> v1::AgentMessage {
        v1::AgentMessage {
            message: Some(AgentMsg::Hello(v1::Hello {
                facts: Some(self.facts.clone()),
                capabilities: Some(self.applier.enforcers().capabilities()),
                held: self.applier.profiles().revisions(),
                agent_version: crate::AGENT_VERSION.to_string(),
            })),
        }
    }
}

/// Keeps the session up for as long as the agent runs.
pub(crate) async fn sync_loop(ctx: SessionContext, mut shutdown: watch::Receiver<bool>) {
    let node = ctx.config.node_name.clone();
    let mut backoff = Backoff::new(ctx.config.backoff);
    loop {
        let mut synced = false;
        let result = sync_once(&ctx, &mut shutdown, &mut synced).await;
        if *shutdown.borrow() {
            ctx.status.disconnected("the agent is stopping");
            return;
        }
        if synced {
            backoff.reset();
        }
        let error = match result {
            Ok(()) => return,
            Err(e) => e,
        };
        let delay = backoff.next_delay();
        tracing::warn!(node, error = %error, retry_in = ?delay, "manager session down; the held profiles stay in force");
        ctx.status.disconnected(error.to_string());
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => return,
        }
    }
}

async fn sync_once(
    ctx: &SessionContext,
    shutdown: &mut watch::Receiver<bool>,
    synced: &mut bool,
) -> Result<(), GatewayError> {
    let node = ctx.config.node_name.as_str();
    let url = ctx.config.manager_url.as_str();
    let identity = ctx.identity.borrow().clone();
    let mut client = gateway::connect(
        &ctx.config,
        &identity.ca_pem,
        Some((&identity.cert_pem, &identity.key_pem)),
    )
    .await?;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let closed = || GatewayError::Closed {
        url: url.to_string(),
        stream: "Sync",
    };
    let hello = ctx.hello();
    tx.send(hello).await.map_err(|_| closed())?;
    let mut stream = client
        .sync(ReceiverStream::new(rx))
        .await
        .map_err(|s| GatewayError::status(url, &s))?
        .into_inner();
    ctx.status.connected();
    tracing::info!(
        node,
        manager = url,
        held = ctx.applier.profiles().len(),
        "manager session up"
    );
    loop {
        let message = tokio::select! {
            _ = shutdown.changed() => return Ok(()),
            m = stream.message() => m.map_err(|s| GatewayError::status(url, &s))?,
        };
        let Some(message) = message else {
            return Err(closed());
        };
        let acks = match message.message {
            Some(ManagerMsg::Snapshot(s)) => {
                tracing::info!(node, bundles = s.bundles.len(), "snapshot received");
                let acks = ctx.applier.snapshot(s.bundles).await;
                *synced = true;
                acks
            }
            Some(ManagerMsg::Update(b)) => {
                tracing::info!(node, profile = %b.profile_name, revision = b.revision, "update received");
                vec![ctx.applier.apply(b).await]
            }
            Some(ManagerMsg::Removal(r)) => {
                tracing::info!(node, profile = %r.profile_name, revision = r.revision, "removal received");
                vec![ctx.applier.remove(&r.profile_name, Some(r.revision)).await]
            }
            None => {
                tracing::warn!(node, "empty message from the manager ignored");
                Vec::new()
            }
        };
        for ack in acks {
            tx.send(v1::AgentMessage {
                message: Some(AgentMsg::Ack(ack)),
            })
            .await
            .map_err(|_| closed())?;
        }
    }
}
