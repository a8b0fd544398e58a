//! Compiles the .proto files with protox (no system protoc needed) and generates the tonic
//! client and server code, plus a file descriptor set for gRPC reflection.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/varmor/v1/bundle.proto",
        "proto/varmor/v1/events.proto",
        "proto/varmor/v1/gateway.proto",
        "proto/varmor/v1/control.proto",
        "proto/varmor/v1/node.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("varmor_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;

    // Our subset of the CRI (runtime.v1), which the agent calls on containerd's socket. Kept
    // out of the varmor descriptor set: it is not a varmor service.
    let cri = "proto/cri/runtime/v1/runtime.proto";
    println!("cargo:rerun-if-changed={cri}");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(protox::compile([cri], ["proto"])?)?;
    Ok(())
}
