//! The manager in-process, over real mutual TLS on loopback: joining and authorization,
//! distribution from the policy directory, status from acks, events, and restarts.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use varmor_proto::v1;
use varmor_proto::v1::agent_gateway_client::AgentGatewayClient;
use varmor_proto::v1::control_plane_client::ControlPlaneClient;
use varmor_proto::v1::manager_message::Message as ManagerMsg;
use varmor_proto::v1::{Enforcer, ResultStatus};

// ------------------------------------------------------------------------------------------
// Identity and authorization

#[tokio::test]
async fn join_needs_the_token_and_a_valid_node_name() {
    logs();
    let dirs = Dirs::new();
    let m = start(&dirs).await;
    let (_, csr) = varmor_rpc::tls::new_key_and_csr("n1").expect("csr");
    let mut gw = anonymous_gateway(&m).await;
    let err = gw
        .join(v1::JoinRequest {
            node_name: "n1".into(),
            join_token: "not-the-token".into(),
            csr_pem: csr.clone(),
            subject_alt_names: vec![],
        })
        .await
        .expect_err("bad token refused");
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("join token"), "{}", err.message());

    let err = gw
        .join(v1::JoinRequest {
            node_name: "Node_1".into(),
            join_token: join_token(&m),
            csr_pem: csr.clone(),
            subject_alt_names: vec![],
        })
        .await
        .expect_err("bad name refused");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("node_name:"), "{}", err.message());

    let err = gw
        .join(v1::JoinRequest {
            node_name: "n1".into(),
            join_token: join_token(&m),
            csr_pem: "garbage".into(),
            subject_alt_names: vec![],
        })
        .await
        .expect_err("bad CSR refused");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("csr_pem:"), "{}", err.message());

    // Nothing was recorded for the refused attempts.
    let mut admin = admin(&m).await;
    let nodes = admin
        .list_nodes(v1::ListNodesRequest {})
        .await
        .expect("list")
        .into_inner()
        .nodes;
    assert!(nodes.is_empty(), "{nodes:?}");

    let node = join(&m, "n1").await;
    let der = {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_slice(node.cert_pem.as_bytes()).expect("der")
    };
    assert_eq!(
        varmor_rpc::tls::identity_of_certificate(&der),
        Ok(varmor_rpc::tls::Peer::Node("n1".into()))
    );
    let n = admin
        .get_node(v1::GetNodeRequest { name: "n1".into() })
        .await
        .expect("joined node listed")
        .into_inner();
    assert!(n.expected && !n.connected);
    assert!(n.certificate_not_after.is_some());

    // Renewal needs the node certificate and keeps the name from it.
    let (_, csr) = varmor_rpc::tls::new_key_and_csr("whatever").expect("csr");
    let renewed = gateway(&m, &node)
        .await
        .renew(v1::RenewRequest {
            csr_pem: csr,
            subject_alt_names: vec![],
        })
        .await
        .expect("renewed")
        .into_inner();
    let der = {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_slice(renewed.certificate_pem.as_bytes())
            .expect("der")
    };
    assert_eq!(
        varmor_rpc::tls::identity_of_certificate(&der),
        Ok(varmor_rpc::tls::Peer::Node("n1".into()))
    );
    m.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn calls_without_a_client_certificate_are_refused() {
    logs();
    let dirs = Dirs::new();
    let m = start(&dirs).await;
    let mut gw = anonymous_gateway(&m).await;
    let (tx, rx) = mpsc::channel::<v1::AgentMessage>(1);
    drop(tx);
    let err = gw
        .sync(ReceiverStream::new(rx))
        .await
        .expect_err("sync refused");
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    let (tx, rx) = mpsc::channel::<v1::EventBatch>(1);
    drop(tx);
    let err = gw
        .publish_events(ReceiverStream::new(rx))
        .await
        .expect_err("events refused");
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = gw
        .renew(v1::RenewRequest::default())
        .await
        .expect_err("renew refused");
    assert_eq!(err.code(), Code::Unauthenticated);

    let mut cp = ControlPlaneClient::new(channel(&m, &ca_pem(&m), None).await.expect("connect"));
    let err = cp
        .list_nodes(v1::ListNodesRequest {})
        .await
        .expect_err("list refused");
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(
        err.message().contains("client certificate"),
        "{}",
        err.message()
    );
    m.shutdown().await.expect("shutdown");
}

/// A CA and a node certificate that have nothing to do with the manager.
fn foreign_node_identity(name: &str) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
    let ca_key = KeyPair::generate().expect("key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).expect("ca");
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(vec![name.to_string()]).expect("params");
    params.subject_alt_names.push(SanType::URI(
        format!("varmor://node/{name}").try_into().expect("uri"),
    ));
    let cert = params.signed_by(&key, &issuer).expect("cert");
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_in_the_handshake() {
    logs();
    let dirs = Dirs::new();
    let m = start(&dirs).await;
    join(&m, "n1").await;
    let (_, cert, key) = foreign_node_identity("n1");
    // The client trusts the right CA but presents a foreign certificate.
    let result = async {
        let ch = channel(&m, &ca_pem(&m), Some((&cert, &key))).await?;
        let mut cp = ControlPlaneClient::new(ch.clone());
        cp.list_nodes(v1::ListNodesRequest {})
            .await
            .map_err(|e| e.to_string())?;
        let mut gw = AgentGatewayClient::new(ch);
        gw.renew(v1::RenewRequest::default())
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, Box<dyn std::error::Error>>(())
    }
    .await;
    let err = result.expect_err("foreign certificate refused");
    eprintln!("foreign certificate refused with: {err:?}");
    // Refused by the TLS handshake (the server's alert), not by a handler.
    let text = format!("{err:?}");
    assert!(text.contains("UnknownCA"), "{text}");
    m.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn node_certificates_act_only_for_their_own_node() {
    logs();
    let dirs = Dirs::new();
    dirs.write_policy(
        "disks.yaml",
        &policy("disks", "AppArmor", &["disallow-debug-disk-device"]),
    );
    let m = start(&dirs).await;
    let a = join(&m, "node-a").await;
    let b = join(&m, "node-b").await;
    let mut admin = admin(&m).await;

    let (agent_a, snap_a) = Agent::connect(&m, &a, facts(&["sda", "sda1"])).await;
    let (agent_b, snap_b) = Agent::connect(&m, &b, facts(&["nvme0n1"])).await;
    // Each node's bundle is compiled for that node's facts (from its own hello).
    let text_a = &snap_a.bundles[0].apparmor.as_ref().expect("apparmor").text;
    let text_b = &snap_b.bundles[0].apparmor.as_ref().expect("apparmor").text;
    assert!(
        text_a.contains("/dev/sda") && !text_a.contains("nvme0n1"),
        "{text_a}"
    );
    assert!(
        text_b.contains("/dev/nvme0n1") && !text_b.contains("/dev/sda"),
        "{text_b}"
    );

    // Acks carry no node name: they land on the node of the certificate.
    let profile = "varmor-demo-disks";
    let revision = snap_a.bundles[0].revision;
    agent_a
        .ack(
            profile,
            revision,
            &[(Enforcer::Apparmor, ResultStatus::Applied, "")],
        )
        .await;
    eventually("the ack of node-a", || {
        let mut admin = admin.clone();
        async move {
            let n = admin
                .get_node(v1::GetNodeRequest {
                    name: "node-a".into(),
                })
                .await
                .expect("node-a")
                .into_inner();
            n.profiles.iter().any(|p| p.profile_name == profile)
        }
    })
    .await;
    let nb = admin
        .get_node(v1::GetNodeRequest {
            name: "node-b".into(),
        })
        .await
        .expect("node-b")
        .into_inner();
    assert!(nb.profiles.is_empty(), "node-b got node-a's ack: {nb:?}");
    assert!(nb.connected);
    drop(agent_b);
    eventually("node-b shown disconnected", || {
        let mut admin = admin.clone();
        async move {
            !admin
                .get_node(v1::GetNodeRequest {
                    name: "node-b".into(),
                })
                .await
                .expect("node-b")
                .into_inner()
                .connected
        }
    })
    .await;

    // Events are attributed to the certificate's node, whatever they claim.
    let mut watch = admin
        .watch_events(v1::WatchEventsRequest { filter: None })
        .await
        .expect("watch")
        .into_inner();
    let mut gw_a = gateway(&m, &a).await;
    let (tx, rx) = mpsc::channel(4);
    tx.send(v1::EventBatch {
        events: vec![v1::Event {
            sequence: 1,
            node_name: "node-b".into(),
            action: "DENIED".into(),
            ..Default::default()
        }],
        dropped: 0,
    })
    .await
    .expect("send");
    let mut acks = gw_a
        .publish_events(ReceiverStream::new(rx))
        .await
        .expect("publish")
        .into_inner();
    let ack = acks.message().await.expect("ack").expect("ack");
    assert_eq!(ack.up_to_sequence, 1);
    let e = tokio::time::timeout(PATIENCE, watch.message())
        .await
        .expect("event in time")
        .expect("ok")
        .expect("event");
    assert_eq!(e.node_name, "node-a");
    let nb = admin
        .get_node(v1::GetNodeRequest {
            name: "node-b".into(),
        })
        .await
        .expect("node-b")
        .into_inner();
    assert_eq!(nb.events_received, 0);
    let na = admin
        .get_node(v1::GetNodeRequest {
            name: "node-a".into(),
        })
        .await
        .expect("node-a")
        .into_inner();
    assert_eq!((na.events_received, na.last_event_sequence), (1, 1));
    drop(agent_a);
    m.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn operator_calls_need_the_admin_certificate_and_agent_calls_a_node_certificate() {
    logs();
    let dirs = Dirs::new();
    let m = start(&dirs).await;
    let a = join(&m, "node-a").await;
    let mut cp = ControlPlaneClient::new(
        channel(&m, &ca_pem(&m), Some((&a.cert_pem, &a.key_pem)))
            .await
            .expect("connect"),
    );
    for err in [
        cp.list_nodes(v1::ListNodesRequest {})
            .await
            .expect_err("refused"),
        cp.list_policies(v1::ListPoliciesRequest {})
            .await
            .expect_err("refused"),
        cp.remove_node(v1::RemoveNodeRequest {
            name: "node-a".into(),
        })
        .await
        .expect_err("refused"),
        cp.watch_events(v1::WatchEventsRequest { filter: None })
            .await
            .expect_err("refused"),
    ] {
        assert_eq!(err.code(), Code::PermissionDenied);
        assert!(err.message().contains("node-a"), "{}", err.message());
    }
    let cert = std::fs::read_to_string(dirs.state.join("admin.crt")).expect("admin.crt");
    let key = std::fs::read_to_string(dirs.state.join("admin.key")).expect("admin.key");
    let mut gw = AgentGatewayClient::new(
        channel(&m, &ca_pem(&m), Some((&cert, &key)))
            .await
            .expect("connect"),
    );
    let (tx, rx) = mpsc::channel::<v1::AgentMessage>(1);
    drop(tx);
    let err = gw
        .sync(ReceiverStream::new(rx))
        .await
        .expect_err("admin is not a node");
    assert_eq!(err.code(), Code::PermissionDenied);
    m.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    logs();
    let dirs = Dirs::new();
    let m = start(&dirs).await;
    let cert = std::fs::read_to_string(dirs.state.join("admin.crt")).expect("admin.crt");
    let key = std::fs::read_to_string(dirs.state.join("admin.key")).expect("admin.key");
    let ch = channel(&m, &ca_pem(&m), Some((&cert, &key)))
        .await
        .expect("connect");
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    for service in ["", "varmor.v1.AgentGateway", "varmor.v1.ControlPlane"] {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health")
            .into_inner();
        assert_eq!(
            r.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service}"
        );
    }
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    // The older v1alpha protocol (what many grpcurl builds speak) is served too.
    {
        use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
        use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
        let mut refl = ServerReflectionClient::new(ch.clone());
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut resp = refl
            .server_reflection_info(tokio_stream::iter(vec![req]))
            .await
            .expect("v1alpha reflection")
            .into_inner();
        let msg = resp.message().await.expect("ok").expect("response");
        let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else {
            panic!("unexpected reflection answer {msg:?}");
        };
        assert!(list
            .service
            .iter()
            .any(|s| s.name == "varmor.v1.ControlPlane"));
    }
    let mut refl = ServerReflectionClient::new(ch);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut resp = refl
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .expect("reflection")
        .into_inner();
    let msg = resp.message().await.expect("ok").expect("response");
    let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else {
        panic!("unexpected reflection answer {msg:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for want in [
        "varmor.v1.AgentGateway",
        "varmor.v1.ControlPlane",
        "grpc.health.v1.Health",
    ] {
        assert!(names.contains(&want), "{names:?}");
    }
    m.shutdown().await.expect("shutdown");
}

// ------------------------------------------------------------------------------------------
// Distribution

#[tokio::test]
async fn policy_files_reach_connected_agents_within_milliseconds() {
    logs();
    let dirs = Dirs::new();
    let m = start(&dirs).await;
    let node = join(&m, "node-a").await;
    let (mut agent, snap) = Agent::connect(&m, &node, facts(&["sda"])).await;
    assert!(snap.bundles.is_empty());
    let mut admin = admin(&m).await;
    let profile = "varmor-demo-web";

    // Add.
    let t0 = Instant::now();
    dirs.write_policy(
        "web.yaml",
        &policy("web", "AppArmor", &["disable-cap-net-raw"]),
    );
    let first = match agent.next().await {
        ManagerMsg::Update(b) => b,
        other => panic!("expected an update, got {other:?}"),
    };
    let latency = t0.elapsed();
    eprintln!("policy file added -> update on the agent's stream: {latency:?}");
    assert!(latency < Duration::from_secs(1), "took {latency:?}");
    assert_eq!(first.profile_name, profile);
    assert!(first.revision > 0);

    // Change.
    let t0 = Instant::now();
    dirs.write_policy(
        "web.yaml",
        &policy(
            "web",
            "AppArmor",
            &["disable-cap-net-raw", "disallow-access-kallsyms"],
        ),
    );
    let second = match agent.next().await {
        ManagerMsg::Update(b) => b,
        other => panic!("expected an update, got {other:?}"),
    };
    let latency = t0.elapsed();
    eprintln!("policy file changed -> update on the agent's stream: {latency:?}");
    assert!(latency < Duration::from_secs(1), "took {latency:?}");
    assert!(second.revision > first.revision);
    assert!(second
        .apparmor
        .as_ref()
        .expect("apparmor")
        .text
        .contains("kallsyms"));

    // Invalid: the previous bundle stays, the errors are visible with their field paths.
    dirs.write_policy(
        "web.yaml",
        &policy(
            "web",
            "AppArmor",
            &["disable-cap-net-raw", "disallow-acess-kallsyms"],
        ),
    );
    eventually("the invalid version's errors", || {
        let mut admin = admin.clone();
        async move {
            policy_info(&mut admin, profile)
                .await
                .is_some_and(|p| !p.errors.is_empty())
        }
    })
    .await;
    let info = policy_info(&mut admin, profile).await.expect("listed");
    assert_eq!(info.revision, second.revision);
    assert_eq!(
        info.errors[0].path,
        "spec.policy.enhanceProtect.hardeningRules[1]"
    );
    assert!(
        info.errors[0].reason.contains("disallow-access-kallsyms"),
        "{:?}",
        info.errors
    );
    let updated = info
        .status
        .as_ref()
        .expect("status")
        .conditions
        .iter()
        .find(|c| c.r#type == "Updated")
        .expect("Updated condition");
    assert_eq!(
        (updated.status.as_str(), updated.reason.as_str()),
        ("False", "Error")
    );
    let bundle = admin
        .get_bundle(v1::GetBundleRequest {
            profile_name: profile.into(),
            node_name: "node-a".into(),
        })
        .await
        .expect("bundle")
        .into_inner();
    assert_eq!(bundle.revision, second.revision);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), agent.rx.message())
            .await
            .is_err(),
        "an invalid file must not send anything"
    );

    // A second file declaring the same policy is an error naming the first.
    dirs.write_policy("copy.yaml", &policy("web", "AppArmor", &[]));
    let copy = dirs.source("copy.yaml");
    eventually("the duplicate's error", || {
        let mut admin = admin.clone();
        let copy = copy.clone();
        async move {
            admin
                .list_policies(v1::ListPoliciesRequest {})
                .await
                .expect("list")
                .into_inner()
                .errors
                .iter()
                .any(|e| e.source == copy)
        }
    })
    .await;
    let errors = admin
        .list_policies(v1::ListPoliciesRequest {})
        .await
        .expect("list")
        .into_inner()
        .errors;
    let dup = errors.iter().find(|e| e.source == copy).expect("dup");
    assert!(
        dup.errors[0].reason.contains(&dirs.source("web.yaml")),
        "{dup:?}"
    );
    dirs.remove_policy("copy.yaml");

    // Delete.
    dirs.remove_policy("web.yaml");
    let removal = match agent.next().await {
        ManagerMsg::Removal(r) => r,
        other => panic!("expected a removal, got {other:?}"),
    };
    assert_eq!(removal.profile_name, profile);
    assert!(removal.revision > second.revision);
    assert!(policy_info(&mut admin, profile).await.is_none());
    m.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_new_session_replaces_the_old_one_and_hello_comes_first() {
    logs();
    let dirs = Dirs::new();
    dirs.write_policy("web.yaml", &policy("web", "AppArmor", &[]));
    let m = start(&dirs).await;
    let node = join(&m, "node-a").await;
    let (mut first, snap) = Agent::connect(&m, &node, facts(&[])).await;
    assert_eq!(snap.bundles.len(), 1);
    let (_second, snap2) = Agent::connect(&m, &node, facts(&[])).await;
    assert_eq!(snap2.bundles.len(), 1);
    let end = tokio::time::timeout(PATIENCE, first.rx.message())
        .await
        .expect("old session ends");
    let err = end.expect_err("ends with a status");
    assert_eq!(err.code(), Code::Aborted);
    assert!(err.message().contains("replaced"), "{}", err.message());

    // The first message must be a hello.
    let mut gw = gateway(&m, &node).await;
    let (tx, rx) = mpsc::channel(1);
    tx.send(v1::AgentMessage {
        message: Some(v1::agent_message::Message::Ack(v1::Ack::default())),
    })
    .await
    .expect("send");
    let err = gw
        .sync(ReceiverStream::new(rx))
        .await
        .expect_err("ack first is refused");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("hello"), "{}", err.message());

    // A stream that never says hello is closed after the hello timeout.
    let (_tx, rx) = mpsc::channel::<v1::AgentMessage>(1);
    let t0 = Instant::now();
    let err = gw
        .sync(ReceiverStream::new(rx))
        .await
        .expect_err("silent stream is closed");
    assert_eq!(err.code(), Code::DeadlineExceeded);
    assert!(t0.elapsed() < PATIENCE);
    m.shutdown().await.expect("shutdown");
}

// ------------------------------------------------------------------------------------------
// Status

async fn status_of(
    admin: &mut ControlPlaneClient<tonic::transport::Channel>,
    profile: &str,
) -> v1::PolicyStatus {
    policy_info(admin, profile)
        .await
        .expect("listed")
        .status
        .expect("status")
}

fn ready_condition(s: &v1::PolicyStatus) -> &v1::Condition {
    s.conditions
        .iter()
        .find(|c| c.r#type == "Ready")
        .expect("Ready condition")
}

#[tokio::test]
async fn status_follows_the_acks_of_expected_nodes() {
    logs();
    let dirs = Dirs::new();
    dirs.write_policy(
        "web.yaml",
        &policy("web", "AppArmor", &["disable-cap-net-raw"]),
    );
    let m = start(&dirs).await;
    let profile = "varmor-demo-web";
    let mut admin = admin(&m).await;
    let s = status_of(&mut admin, profile).await;
    assert_eq!(
        (s.phase.as_str(), s.ready, s.desired),
        ("Pending", false, 0)
    );

    let a = join(&m, "node-a").await;
    let b = join(&m, "node-b").await;
    let (agent_a, snap) = Agent::connect(&m, &a, facts(&["sda"])).await;
    let (agent_b, _) = Agent::connect(&m, &b, facts(&["sda"])).await;
    let revision = snap.bundles[0].revision;
    let s = status_of(&mut admin, profile).await;
    assert_eq!((s.phase.as_str(), s.desired, s.current), ("Pending", 2, 0));

    agent_a
        .ack(
            profile,
            revision,
            &[(Enforcer::Apparmor, ResultStatus::Applied, "")],
        )
        .await;
    agent_b
        .ack(
            profile,
            revision,
            &[(
                Enforcer::Apparmor,
                ResultStatus::Failed,
                "apparmor_parser: syntax error in line 3",
            )],
        )
        .await;
    eventually("phase Error", || {
        let mut admin = admin.clone();
        async move { status_of(&mut admin, profile).await.phase == "Error" }
    })
    .await;
    let s = status_of(&mut admin, profile).await;
    assert!(!s.ready);
    assert_eq!(s.current, 1);
    let ready = ready_condition(&s);
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "Error")
    );
    assert!(
        ready
            .message
            .contains("node node-b: AppArmor failed: apparmor_parser: syntax error in line 3"),
        "{}",
        ready.message
    );
    assert!(!ready.message.contains("node-a"), "{}", ready.message);

    agent_b
        .ack(
            profile,
            revision,
            &[(Enforcer::Apparmor, ResultStatus::Applied, "")],
        )
        .await;
    eventually("phase Protecting", || {
        let mut admin = admin.clone();
        async move { status_of(&mut admin, profile).await.phase == "Protecting" }
    })
    .await;
    let s = status_of(&mut admin, profile).await;
    assert_eq!((s.ready, s.desired, s.current), (true, 2, 2));
    assert_eq!(ready_condition(&s).reason, "AllAgentsReady");

    // A node that joins and stays silent holds the policy in Pending ...
    join(&m, "node-c").await;
    let s = status_of(&mut admin, profile).await;
    assert_eq!(
        (s.phase.as_str(), s.ready, s.desired, s.current),
        ("Pending", false, 3, 2)
    );
    assert!(ready_condition(&s).message.contains("node-c"));
    // ... until the operator removes it.
    let removed = admin
        .remove_node(v1::RemoveNodeRequest {
            name: "node-c".into(),
        })
        .await
        .expect("removed")
        .into_inner();
    assert!(!removed.expected);
    let s = status_of(&mut admin, profile).await;
    assert_eq!(
        (s.phase.as_str(), s.ready, s.desired, s.current),
        ("Protecting", true, 2, 2)
    );
    m.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_node_that_cannot_run_an_enforcer_is_an_error() {
    logs();
    let dirs = Dirs::new();
    dirs.write_policy("web.yaml", &policy("web", "BPF", &[]));
    let m = start(&dirs).await;
    let profile = "varmor-demo-web";
    let a = join(&m, "node-a").await;
    let (agent, snap) = Agent::connect(&m, &a, facts(&["sda"])).await;
    agent
        .ack(
            profile,
            snap.bundles[0].revision,
            &[(
                Enforcer::Bpf,
                ResultStatus::Unavailable,
                "the kernel has no BPF LSM (bpf is not in /sys/kernel/security/lsm)",
            )],
        )
        .await;
    let mut admin = admin(&m).await;
    eventually("phase Error", || {
        let mut admin = admin.clone();
        async move { status_of(&mut admin, profile).await.phase == "Error" }
    })
    .await;
    let s = status_of(&mut admin, profile).await;
    assert!(!s.ready);
    assert!(ready_condition(&s)
        .message
        .contains("BPF unavailable: the kernel has no BPF LSM"));
    m.shutdown().await.expect("shutdown");
}

// ------------------------------------------------------------------------------------------
// Events

async fn publish(
    m: &varmor_manager::Manager,
    node: &Node,
    batches: Vec<v1::EventBatch>,
) -> Vec<u64> {
    let mut gw = gateway(m, node).await;
    let (tx, rx) = mpsc::channel(batches.len().max(1));
    let n = batches.len();
    for b in batches {
        tx.send(b).await.expect("send");
    }
    let mut acks = gw
        .publish_events(ReceiverStream::new(rx))
        .await
        .expect("publish")
        .into_inner();
    let mut out = Vec::new();
    for _ in 0..n {
        let a = tokio::time::timeout(PATIENCE, acks.message())
            .await
            .expect("ack in time")
            .expect("ok")
            .expect("ack");
        out.push(a.up_to_sequence);
    }
    out
}

fn event(seq: u64, action: &str, namespace: &str, policy: &str) -> v1::Event {
    v1::Event {
        sequence: seq,
        action: action.into(),
        pod_namespace: namespace.into(),
        policy_namespace: namespace.into(),
        policy_name: policy.into(),
        profile_name: format!("varmor-{namespace}-{policy}"),
        enforcer: Enforcer::Bpf as i32,
        ..Default::default()
    }
}

async fn collect(stream: &mut tonic::Streaming<v1::Event>, quiet: Duration) -> Vec<v1::Event> {
    let mut out = Vec::new();
    while let Ok(Some(Ok(Some(e)))) =
        tokio::time::timeout(quiet, async { Some(stream.message().await) }).await
    {
        out.push(e);
    }
    out
}

#[tokio::test]
async fn events_are_deduplicated_across_reconnects_and_filtered_for_watchers() {
    logs();
    let dirs = Dirs::new();
    let m = start(&dirs).await;
    let a = join(&m, "node-a").await;
    let b = join(&m, "node-b").await;
    let mut admin = admin(&m).await;
    let watch = |filter: v1::EventFilter| {
        let mut admin = admin.clone();
        async move {
            admin
                .watch_events(v1::WatchEventsRequest {
                    filter: Some(filter),
                })
                .await
                .expect("watch")
                .into_inner()
        }
    };
    let mut all = watch(v1::EventFilter::default()).await;
    let mut a_denied = watch(v1::EventFilter {
        node_name: "node-a".into(),
        action: "denied".into(),
        ..Default::default()
    })
    .await;
    let mut shop = watch(v1::EventFilter {
        namespace: "shop".into(),
        ..Default::default()
    })
    .await;
    let mut web = watch(v1::EventFilter {
        policy: "web".into(),
        ..Default::default()
    })
    .await;

    let acks = publish(
        &m,
        &a,
        vec![v1::EventBatch {
            events: vec![
                event(1, "DENIED", "shop", "web"),
                event(2, "AUDIT", "shop", "web"),
                event(3, "DENIED", "demo", "api"),
            ],
            dropped: 0,
        }],
    )
    .await;
    assert_eq!(acks, [3]);
    // The agent reconnects without having seen the ack and sends 2 and 3 again, then more.
    let acks = publish(
        &m,
        &a,
        vec![
            v1::EventBatch {
                events: vec![
                    event(2, "AUDIT", "shop", "web"),
                    event(3, "DENIED", "demo", "api"),
                    event(4, "AUDIT|ALLOWED", "shop", "web"),
                ],
                dropped: 2,
            },
            v1::EventBatch {
                events: vec![event(5, "DENIED", "shop", "web")],
                dropped: 0,
            },
        ],
    )
    .await;
    assert_eq!(acks, [4, 5]);
    // Node B's own sequence is independent.
    assert_eq!(
        publish(
            &m,
            &b,
            vec![v1::EventBatch {
                events: vec![event(1, "DENIED", "shop", "web")],
                dropped: 0
            }]
        )
        .await,
        [1]
    );

    let quiet = Duration::from_millis(300);
    let seqs = |v: &[v1::Event]| {
        v.iter()
            .map(|e| format!("{}:{}", e.node_name, e.sequence))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        seqs(&collect(&mut all, quiet).await),
        ["node-a:1", "node-a:2", "node-a:3", "node-a:4", "node-a:5", "node-b:1"]
    );
    assert_eq!(
        seqs(&collect(&mut a_denied, quiet).await),
        ["node-a:1", "node-a:3", "node-a:5"]
    );
    assert_eq!(
        seqs(&collect(&mut shop, quiet).await),
        ["node-a:1", "node-a:2", "node-a:4", "node-a:5", "node-b:1"]
    );
    assert_eq!(
        seqs(&collect(&mut web, quiet).await),
        ["node-a:1", "node-a:2", "node-a:4", "node-a:5", "node-b:1"]
    );
    let na = admin
        .get_node(v1::GetNodeRequest {
            name: "node-a".into(),
        })
        .await
        .expect("node-a")
        .into_inner();
    assert_eq!(
        (
            na.events_received,
            na.last_event_sequence,
            na.events_dropped
        ),
        (5, 5, 2)
    );
    // The position is on disk before the ack.
    let saved: serde_json::Value =
        serde_json::from_str(&dirs.read_state("events.json")).expect("events.json");
    assert_eq!(saved["nodes"]["node-a"]["lastSequence"], 5);

    // A node that joins again lost its state: its sequence starts over.
    let b = join(&m, "node-b").await;
    assert_eq!(
        publish(
            &m,
            &b,
            vec![v1::EventBatch {
                events: vec![event(1, "DENIED", "shop", "web")],
                dropped: 0
            }]
        )
        .await,
        [1]
    );
    let nb = admin
        .get_node(v1::GetNodeRequest {
            name: "node-b".into(),
        })
        .await
        .expect("node-b")
        .into_inner();
    assert_eq!((nb.events_received, nb.last_event_sequence), (2, 1));
    m.shutdown().await.expect("shutdown");
}

// ------------------------------------------------------------------------------------------
// Restart

#[tokio::test]
async fn state_comes_back_after_a_restart() {
    logs();
    let dirs = Dirs::new();
    dirs.write_policy(
        "web.yaml",
        &policy("web", "AppArmor", &["disable-cap-net-raw"]),
    );
    dirs.write_policy("api.yaml", &policy("api", "AppArmor", &[]));
    let profile = "varmor-demo-web";
    let m = start(&dirs).await;
    let ca_before = dirs.read_state("ca.crt");
    let token_before = dirs.read_state("join-token");
    let admin_before = dirs.read_state("admin.crt");
    let revisions_before = m.revisions();
    let a = join(&m, "node-a").await;
    let b = join(&m, "node-b").await;
    let (agent_a, snap) = Agent::connect(&m, &a, facts(&["sda"])).await;
    let (agent_b, _) = Agent::connect(&m, &b, facts(&["vda"])).await;
    for bundle in &snap.bundles {
        for agent in [&agent_a, &agent_b] {
            agent
                .ack(
                    &bundle.profile_name,
                    bundle.revision,
                    &[(Enforcer::Apparmor, ResultStatus::Applied, "")],
                )
                .await;
        }
    }
    let mut admin_client = admin(&m).await;
    eventually("Protecting before the restart", || {
        let mut admin = admin_client.clone();
        async move { status_of(&mut admin, profile).await.ready }
    })
    .await;
    assert_eq!(
        publish(
            &m,
            &a,
            vec![v1::EventBatch {
                events: vec![
                    event(1, "DENIED", "demo", "web"),
                    event(2, "DENIED", "demo", "web")
                ],
                dropped: 1,
            }]
        )
        .await,
        [2]
    );
    let ready_since =
        ready_condition(&status_of(&mut admin_client, profile).await).last_transition_time;
    drop((agent_a, agent_b, admin_client));
    let addr = m.local_addr();
    m.shutdown().await.expect("shutdown");

    // Restart on the same state directory and address.
    let m = start_on(&dirs, addr).await;
    assert_eq!(dirs.read_state("ca.crt"), ca_before);
    assert_eq!(dirs.read_state("join-token"), token_before);
    assert_eq!(dirs.read_state("admin.crt"), admin_before);
    assert_eq!(m.revisions(), revisions_before);
    let mut admin = admin(&m).await;
    let nodes = admin
        .list_nodes(v1::ListNodesRequest {})
        .await
        .expect("nodes")
        .into_inner()
        .nodes;
    assert_eq!(
        nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
        ["node-a", "node-b"]
    );
    assert!(nodes.iter().all(|n| n.expected && !n.connected));
    let na = &nodes[0];
    assert_eq!(
        (
            na.last_event_sequence,
            na.events_received,
            na.events_dropped
        ),
        (2, 2, 1)
    );
    assert_eq!(na.facts.as_ref().expect("facts").disk_devices, ["sda"]);
    // Status comes back from the saved results, with its transition time.
    let s = status_of(&mut admin, profile).await;
    assert_eq!(
        (s.phase.as_str(), s.ready, s.desired, s.current),
        ("Protecting", true, 2, 2)
    );
    assert_eq!(ready_condition(&s).last_transition_time, ready_since);

    // The agent reconnects with its certificate and resyncs: same revisions.
    let (_agent, snap2) = Agent::connect(&m, &a, facts(&["sda"])).await;
    let mut got: Vec<_> = snap2
        .bundles
        .iter()
        .map(|b| (b.profile_name.clone(), b.revision))
        .collect();
    got.sort();
    assert_eq!(got, revisions_before.into_iter().collect::<Vec<_>>());
    // Events it had sent before are not taken twice.
    assert_eq!(
        publish(
            &m,
            &a,
            vec![v1::EventBatch {
                events: vec![
                    event(2, "DENIED", "demo", "web"),
                    event(3, "DENIED", "demo", "web")
                ],
                dropped: 0,
            }]
        )
        .await,
        [3]
    );
    let na = admin
        .get_node(v1::GetNodeRequest {
            name: "node-a".into(),
        })
        .await
        .expect("node-a")
        .into_inner();
    assert_eq!((na.events_received, na.last_event_sequence), (3, 3));

    // A file that became invalid while the manager was down does not lose the policy.
    m.shutdown().await.expect("shutdown");
    dirs.write_policy(
        "web.yaml",
        "apiVersion: crd.varmor.org/v1beta1\nkind: VarmorPolicy\n",
    );
    let m = start(&dirs).await;
    let mut admin = common::admin(&m).await;
    let info = policy_info(&mut admin, profile)
        .await
        .expect("still listed");
    assert_eq!(
        info.revision,
        snap.bundles
            .iter()
            .find(|b| b.profile_name == profile)
            .expect("web")
            .revision
    );
    assert!(!info.errors.is_empty());
    m.shutdown().await.expect("shutdown");
}
