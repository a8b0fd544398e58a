//! `varmor-proto`: the `varmor.v1` gRPC schema (see `proto/varmor/v1/*.proto`) and the code
//! tonic and prost generate from it. Conversions to and from the domain types live in
//! `varmor-rpc`, at the edge.

#![allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    missing_debug_implementations
)]

/// The `varmor.v1` package.
pub mod v1 {
    tonic::include_proto!("varmor.v1");
}

/// The subset of the Kubernetes CRI (`runtime.v1`) the node agent calls (see
/// `proto/cri/runtime/v1/runtime.proto`).
pub mod cri {
    tonic::include_proto!("runtime.v1");
}

/// The encoded file descriptor set of the schema, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/varmor_descriptor.bin"));
