//! `varmor-rpc`: the gRPC edge shared by the manager, the node agent and varmorctl.
//!
//! * conversions of the domain types live in `varmor_policy::proto` (feature `proto`);
//! * [`tls`]: TLS 1.3 with client certificates, certificate identities and authorization;
//! * [`service`]: what every server registers besides its own services (reflection, health);
//! * [`metrics`]: the Prometheus `/metrics` endpoint and a parser of its text.

pub mod metrics;
pub mod service;
pub mod tls;

pub use varmor_proto::v1;
