//! Joining, the stored identity, a rejected token, retries and renewal, over real mTLS.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use varmor_agent::{Agent, AgentError};

#[tokio::test(flavor = "multi_thread")]
async fn join_stores_the_certificate_and_is_not_repeated_on_restart() {
    let gw = Gateway::new();
    let server = GatewayServer::start(gw.clone(), "127.0.0.1:0".parse().unwrap());
    let node = Node::new(&gw, "node-a");

    let agent = Agent::start_with(node.config(&server.url()), Recorders::new().enforcers())
        .await
        .expect("agent starts");
    assert_eq!(gw.joins.load(Ordering::SeqCst), 1);
    let state = node.state_dir();
    assert_eq!(
        file_mode(&state.join("node.key")),
        0o600,
        "the key is private"
    );
    assert_eq!(file_mode(&state), 0o700);
    let cert = std::fs::read_to_string(state.join("node.crt")).expect("node.crt");
    assert_eq!(
        std::fs::read_to_string(state.join("ca.crt")).expect("ca.crt"),
        gw.ca.ca_pem
    );
    let der = x509_der(&cert);
    assert_eq!(
        varmor_rpc::tls::identity_of_certificate(&der),
        Ok(varmor_rpc::tls::Peer::Node("node-a".into()))
    );
    let (hello_node, _) = gw.next_hello().await;
    assert_eq!(
        hello_node, "node-a",
        "the session uses the node certificate"
    );
    agent.shutdown().await;

    // The token is not needed any more: a restart uses the stored certificate.
    std::fs::remove_file(node.token_file()).expect("remove token");
    let agent = Agent::start_with(node.config(&server.url()), Recorders::new().enforcers())
        .await
        .expect("agent restarts without a token");
    let (hello_node, _) = gw.next_hello().await;
    assert_eq!(hello_node, "node-a");
    assert_eq!(gw.joins.load(Ordering::SeqCst), 1, "no second join");
    assert_eq!(
        std::fs::read_to_string(state.join("node.crt")).expect("node.crt"),
        cert
    );
    agent.shutdown().await;
}

fn x509_der(pem: &str) -> Vec<u8> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("pem");
    p.contents
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rejected_token_is_a_clear_error() {
    let gw = Gateway::new();
    let server = GatewayServer::start(gw.clone(), "127.0.0.1:0".parse().unwrap());
    let node = Node::new(&gw, "node-a");
    std::fs::write(node.token_file(), "wrong-token\n").expect("token");

    let err = within(
        10,
        "the join to fail",
        Agent::start_with(node.config(&server.url()), Recorders::new().enforcers()),
    )
    .await
    .expect_err("a wrong token must fail");
    assert!(
        matches!(
            &err,
            AgentError::JoinRejected {
                code: tonic::Code::Unauthenticated,
                ..
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("rejected the join token"), "{msg}");
    assert!(
        msg.contains(&node.token_file().display().to_string()),
        "names the file: {msg}"
    );
    assert!(
        msg.contains("invalid join token"),
        "carries the manager's reason: {msg}"
    );
    assert!(!node.state_dir().join("node.crt").exists());
    assert_eq!(gw.joins.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_binary_exits_non_zero_with_the_message_on_a_rejected_token() {
    let gw = Gateway::new();
    let server = GatewayServer::start(gw.clone(), "127.0.0.1:0".parse().unwrap());
    let node = Node::new(&gw, "node-a");
    std::fs::write(node.token_file(), "wrong-token\n").expect("token");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_varmor-agent"))
        .arg("--manager")
        .arg(server.url())
        .args(["--node-name", "node-a", "--listen", "127.0.0.1:0"])
        .arg("--ca-file")
        .arg(node.dir.path().join("ca.crt"))
        .arg("--join-token-file")
        .arg(node.token_file())
        .arg("--state-dir")
        .arg(node.state_dir())
        .arg("--host-root")
        .arg(node.host_root())
        .kill_on_drop(true)
        .output();
    let out = within(20, "varmor-agent to exit", out).await.expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "exit status {:?}", out.status);
    assert!(
        stderr.contains("varmor-agent: error: the manager at")
            && stderr.contains("rejected the join token"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn join_retries_until_the_manager_is_up() {
    let gw = Gateway::new();
    let addr = free_addr();
    let node = Node::new(&gw, "node-a");
    let url = format!("https://{addr}");
    let start = tokio::spawn(Agent::start_with(
        node.config(&url),
        Recorders::new().enforcers(),
    ));
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !start.is_finished(),
        "the agent keeps trying while the manager is down"
    );
    let _server = GatewayServer::start(gw.clone(), addr);
    let agent = within(10, "the join", start)
        .await
        .expect("task")
        .expect("joined once the manager was up");
    assert_eq!(gw.joins.load(Ordering::SeqCst), 1);
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_certificate_is_renewed_at_two_thirds_of_its_lifetime() {
    let gw = Gateway::new();
    *gw.cert_lifetime.lock().unwrap() = Duration::from_secs(6);
    let server = GatewayServer::start(gw.clone(), "127.0.0.1:0".parse().unwrap());
    let node = Node::new(&gw, "node-a");
    let agent = Agent::start_with(node.config(&server.url()), Recorders::new().enforcers())
        .await
        .expect("agent starts");
    let first = agent.certificate_pem();
    *gw.cert_lifetime.lock().unwrap() = Duration::from_secs(3600);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(gw.renews.load(Ordering::SeqCst), 0, "too early to renew");
    eventually(8, "a renewal", || gw.renews.load(Ordering::SeqCst) == 1).await;
    eventually(2, "the new certificate", || {
        agent.certificate_pem() != first
    })
    .await;
    let stored = std::fs::read_to_string(node.state_dir().join("node.crt")).expect("node.crt");
    assert_eq!(
        stored,
        agent.certificate_pem(),
        "the renewed certificate is stored"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        gw.renews.load(Ordering::SeqCst),
        1,
        "the new one lives long: no more renewals"
    );
    agent.shutdown().await;
}
