//! `varmor-manager`: reads vArmor policies, compiles them into profile bundles, streams
//! them to node agents over mutually authenticated gRPC, and turns the agents' acks into
//! policy status.
//!
//! * [`source`]: where policies come from ([`source::PolicySource`]; the policy directory
//!   now, Kubernetes later);
//! * [`catalog`]: the policies in force, their revisions and compiled bundles;
//! * [`gateway`]: the `AgentGateway` service (join, renew, Sync, events);
//! * [`control`]: the `ControlPlane` service for operators;
//! * [`status`]: policy status from per-node results (vArmor's semantics);
//! * [`events`]: event intake with sequence checks, and the fan-out to watchers;
//! * [`metrics`]: the Prometheus metrics (`--metrics-listen`);
//! * [`ca`]: the CA, the join token and the certificates in the state directory;
//! * [`store`]: the state directory's files, written atomically;
//! * [`server`]: [`Manager`], which starts and stops all of it.
//!
//! Behaviour modeling: a BehaviorModeling policy's status moves from `Modeling` to
//! `Completed` when `modelingOptions.duration` has passed since the policy was first
//! loaded; collecting and merging the agents' modeling data comes in a later step.

pub mod ca;
pub mod catalog;
pub mod config;
pub mod control;
pub mod error;
pub mod events;
pub mod gateway;
pub mod metrics;
pub mod server;
mod shared;
pub mod source;
pub mod state;
pub mod status;
pub mod store;

pub use config::{parse_duration, Config};
pub use error::Error;
pub use server::Manager;
pub use source::{DirectorySource, PolicySource, SourceEvent};
