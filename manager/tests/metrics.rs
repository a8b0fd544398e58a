//! The manager's `/metrics` endpoint, scraped over real HTTP while a simulated agent joins,
//! receives a policy change, acks it and publishes events.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use varmor_manager::{Config, Manager};
use varmor_proto::v1;
use varmor_proto::v1::manager_message::Message as ManagerMsg;
use varmor_proto::v1::{Enforcer, ResultStatus};
use varmor_rpc::metrics::Exposition;

const PROFILE: &str = "varmor-demo-web";

async fn start_with_metrics(dirs: &Dirs) -> Manager {
    let mut config = Config::new(
        &dirs.policies,
        &dirs.state,
        "127.0.0.1:0".parse().expect("addr"),
    );
    config.hello_timeout = Duration::from_secs(2);
    config.metrics_listen = Some("127.0.0.1:0".parse().expect("addr"));
    let m = Manager::start(config).await.expect("manager starts");
    m.wait_policies_loaded().await.expect("policies loaded");
    m
}

/// `GET /metrics` over a fresh HTTP/1.1 connection, parsed.
async fn scrape(addr: SocketAddr) -> Exposition {
    let mut tcp = TcpStream::connect(addr).await.expect("connect to /metrics");
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await
        .expect("send");
    let mut raw = Vec::new();
    tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut raw))
        .await
        .expect("scrape answered in time")
        .expect("read");
    let text = String::from_utf8(raw).expect("utf-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("headers end");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    Exposition::parse(body).unwrap_or_else(|e| panic!("{e}\n{body}"))
}

fn value(e: &Exposition, name: &str, labels: &[(&str, &str)]) -> f64 {
    e.get(name, labels).unwrap_or(0.0)
}

/// Scrapes until `name{labels}` has `want`.
async fn wait_for(addr: SocketAddr, name: &str, labels: &[(&str, &str)], want: f64) -> Exposition {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let e = scrape(addr).await;
        if value(&e, name, labels) == want {
            return e;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name}{labels:?} is {:?}, expected {want}",
            e.get(name, labels)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn next_update(agent: &mut Agent) -> v1::ProfileBundle {
    match agent.next().await {
        ManagerMsg::Update(b) => b,
        other => panic!("expected an update, got {other:?}"),
    }
}

#[tokio::test]
async fn counters_follow_acks_policy_changes_and_events() {
    logs();
    let dirs = Dirs::new();
    dirs.write_policy("web.yaml", &policy("web", "BPF", &[]));
    let m = start_with_metrics(&dirs).await;
    let addr = m.metrics_addr().expect("metrics are served");

    let e = scrape(addr).await;
    assert_eq!(
        e.get(
            "varmor_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    assert_eq!(e.get("varmor_agents_connected", &[]), Some(0.0));
    // No node yet: the policy waits.
    assert_eq!(e.get("varmor_policies", &[("phase", "Pending")]), Some(1.0));
    assert_eq!(
        e.get("varmor_policies", &[("phase", "Protecting")]),
        Some(0.0)
    );
    assert_eq!(
        e.types
            .get("varmor_bundle_distribution_seconds")
            .map(String::as_str),
        Some("histogram")
    );

    // An agent joins and loads the snapshot.
    let node = join(&m, "node-a").await;
    let (mut agent, snap) = Agent::connect(&m, &node, facts(&["sda"])).await;
    let first = snap.bundles.first().expect("the policy's bundle").revision;
    wait_for(addr, "varmor_agents_connected", &[], 1.0).await;
    agent
        .ack(
            PROFILE,
            first,
            &[(Enforcer::Bpf, ResultStatus::Applied, "")],
        )
        .await;
    let n = [("node_name", "node-a")];
    let e = wait_for(addr, "varmor_profile_processing_success_total", &n, 1.0).await;
    assert_eq!(value(&e, "varmor_profile_change_count_total", &n), 1.0);
    assert_eq!(
        value(&e, "varmor_profile_processing_failure_total", &n),
        0.0
    );
    // The Prometheus text format declares counters with their `_total` name.
    assert_eq!(
        e.types
            .get("varmor_profile_processing_success_total")
            .map(String::as_str),
        Some("counter")
    );
    assert_eq!(
        e.get("varmor_policies", &[("phase", "Protecting")]),
        Some(1.0)
    );
    assert_eq!(e.get("varmor_policies", &[("phase", "Pending")]), Some(0.0));
    // The policy was loaded before any node was expected: no rollout was measured.
    assert_eq!(
        value(&e, "varmor_bundle_distribution_seconds_count", &[]),
        0.0
    );

    // A policy change reaches the agent; its ack completes the rollout.
    dirs.write_policy("web.yaml", &policy("web", "BPF", &["disable-cap-net-raw"]));
    let second = next_update(&mut agent).await;
    assert!(second.revision > first);
    let e = scrape(addr).await;
    assert_eq!(e.get("varmor_policies", &[("phase", "Pending")]), Some(1.0));
    assert_eq!(
        value(&e, "varmor_bundle_distribution_seconds_count", &[]),
        0.0
    );
    agent
        .ack(
            PROFILE,
            second.revision,
            &[(Enforcer::Bpf, ResultStatus::Applied, "")],
        )
        .await;
    let e = wait_for(addr, "varmor_bundle_distribution_seconds_count", &[], 1.0).await;
    assert_eq!(
        value(&e, "varmor_profile_processing_success_total", &n),
        2.0
    );
    let took = value(&e, "varmor_bundle_distribution_seconds_sum", &[]);
    assert!(took > 0.0 && took < PATIENCE.as_secs_f64(), "{took}");
    eprintln!(
        "policy change -> every expected node acked: {:.1} ms",
        took * 1e3
    );
    assert_eq!(
        value(
            &e,
            "varmor_bundle_distribution_seconds_bucket",
            &[("le", "+Inf")]
        ),
        1.0
    );

    // The next revision fails on the node.
    dirs.write_policy(
        "web.yaml",
        &policy(
            "web",
            "BPF",
            &["disable-cap-net-raw", "disallow-access-kallsyms"],
        ),
    );
    let third = next_update(&mut agent).await;
    agent
        .ack(
            PROFILE,
            third.revision,
            &[(Enforcer::Bpf, ResultStatus::Failed, "verifier said no")],
        )
        .await;
    let e = wait_for(addr, "varmor_profile_processing_failure_total", &n, 1.0).await;
    assert_eq!(
        value(&e, "varmor_profile_processing_success_total", &n),
        2.0
    );
    assert_eq!(value(&e, "varmor_profile_change_count_total", &n), 3.0);
    assert_eq!(e.get("varmor_policies", &[("phase", "Error")]), Some(1.0));
    // A failed node acked too: the rollout is complete.
    assert_eq!(
        value(&e, "varmor_bundle_distribution_seconds_count", &[]),
        2.0
    );

    // Events: three new with two dropped, then two re-sent and one new.
    let event = |seq: u64| v1::Event {
        sequence: seq,
        action: "DENIED".into(),
        ..Default::default()
    };
    let mut gw = gateway(&m, &node).await;
    let (tx, rx) = mpsc::channel(4);
    tx.send(v1::EventBatch {
        events: vec![event(1), event(2), event(3)],
        dropped: 2,
    })
    .await
    .expect("queued");
    tx.send(v1::EventBatch {
        events: vec![event(2), event(3), event(4)],
        dropped: 0,
    })
    .await
    .expect("queued");
    let mut acks = gw
        .publish_events(ReceiverStream::new(rx))
        .await
        .expect("publish")
        .into_inner();
    for want in [3, 4] {
        let ack = tokio::time::timeout(PATIENCE, acks.message())
            .await
            .expect("ack in time")
            .expect("ok")
            .expect("ack");
        assert_eq!(ack.up_to_sequence, want);
    }
    let e = scrape(addr).await;
    assert_eq!(value(&e, "varmor_events_received_total", &n), 4.0);
    assert_eq!(value(&e, "varmor_events_duplicates_total", &n), 2.0);
    assert_eq!(value(&e, "varmor_events_dropped_by_agents_total", &n), 2.0);
    assert_eq!(value(&e, "varmor_events_missing_total", &n), 0.0);

    // The agent goes away.
    drop(agent);
    wait_for(addr, "varmor_agents_connected", &[], 0.0).await;

    m.shutdown().await.expect("clean shutdown");
    TcpListener::bind(addr)
        .await
        .expect("the metrics port is released at shutdown");
}

#[tokio::test]
async fn refused_joins_and_handshakes_are_counted() {
    logs();
    let dirs = Dirs::new();
    let m = start_with_metrics(&dirs).await;
    let addr = m.metrics_addr().expect("metrics are served");

    // A wrong join token, then a bad node name with the right one.
    let mut gw = anonymous_gateway(&m).await;
    let (_, csr_pem) = varmor_rpc::tls::new_key_and_csr("node-a").expect("csr");
    let status = gw
        .join(v1::JoinRequest {
            node_name: "node-a".into(),
            join_token: "wrong".into(),
            csr_pem: csr_pem.clone(),
            subject_alt_names: vec![],
        })
        .await
        .expect_err("wrong token");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    let _ = gw
        .join(v1::JoinRequest {
            node_name: "Not_A_Name".into(),
            join_token: join_token(&m),
            csr_pem,
            subject_alt_names: vec![],
        })
        .await
        .expect_err("bad node name");
    let e = scrape(addr).await;
    assert_eq!(
        value(
            &e,
            "varmor_joins_rejected_total",
            &[("reason", "join_token")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &e,
            "varmor_joins_rejected_total",
            &[("reason", "node_name")]
        ),
        1.0
    );

    // Plain text on the TLS port.
    let mut tcp = TcpStream::connect(m.local_addr()).await.expect("connect");
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("send");
    wait_for(
        addr,
        "varmor_tls_handshake_failures_total",
        &[("reason", "protocol")],
        1.0,
    )
    .await;
    m.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn metrics_are_off_by_default_and_a_taken_port_fails_the_start() {
    let dirs = Dirs::new();
    let m = start(&dirs).await;
    assert_eq!(m.metrics_addr(), None);
    m.shutdown().await.expect("clean shutdown");

    let taken = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let mut config = Config::new(
        &dirs.policies,
        &dirs.state,
        "127.0.0.1:0".parse().expect("addr"),
    );
    config.metrics_listen = Some(taken.local_addr().expect("addr"));
    let err = Manager::start(config)
        .await
        .expect_err("the metrics port is taken");
    let text = err.to_string();
    assert!(text.contains("--metrics-listen"), "{text}");
    assert!(text.contains("cannot listen for metrics on"), "{text}");
}
