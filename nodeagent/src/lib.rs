//! `varmor-agent`: the node agent.
//!
//! The agent holds no Kubernetes credentials; its identity is a node certificate it gets once
//! from the manager with a join token ([`identity`]) and renews before it expires. It keeps one
//! long-lived `Sync` session with the manager ([`session`]) that delivers profile bundles,
//! applies them through the enforcers ([`enforcer`], one small trait, with the kernel behind a
//! [`host`] module whose root is configurable), persists what it holds ([`profiles`]) so it
//! keeps enforcing while the manager is away, uploads events with sequence numbers
//! ([`events`]), and serves the operator-facing `NodeState` service ([`server`]).
//!
//! [`Agent::start`] wires it all; the binary only parses flags.

pub mod agent;
pub mod apply;
pub mod backoff;
pub mod binder;
pub mod config;
pub mod containers;
pub mod enforcer;
pub mod error;
pub mod events;
pub mod exits;
pub mod fsutil;
pub mod gateway;
pub mod host;
pub mod identity;
pub mod metrics;
pub mod profiles;
pub mod runtime;
pub mod server;
pub mod session;
pub mod state;
pub mod status;
pub mod violations;

pub use agent::{run, Agent};
pub use binder::{BinderHandle, LatencyStats, LatencySummary};
pub use config::{BackoffConfig, Config};
pub use enforcer::{
    Capability, Enforcer, EnforcerKind, Enforcers, Outcome, RecordingEnforcer, ResultStatus,
};
pub use error::AgentError;
pub use events::{EventBuffer, Pushed};
pub use host::HostFs;
pub use runtime::{Mode, RuntimeConfig};

/// The agent's version, reported in `Hello` and `GetState`.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");
