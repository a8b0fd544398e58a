//! The violation pipeline: sources (BPF ring buffer, AppArmor and Seccomp audit records),
//! enrichment (container, pod, profile, policy), and sinks (`violations.log`, the manager's
//! `PublishEvents` stream, OpenTelemetry), with bounded queues and counted drops.
//!
//! The record that flows through the pipeline is the wire type [`varmor_proto::v1::Event`]
//! (the enforcer-specific part is JSON in `event_json`), so every sink sees the same fields.

pub mod audit;
pub mod enrich;
pub mod fanout;
mod json;
pub mod kernlog;
pub mod logfile;
pub mod otlp;
