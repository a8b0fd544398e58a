//! The NodeState service: mTLS with the node certificate, admin-only handlers, reflection and
//! health, and what each call returns.

mod common;

use common::*;
use tokio_stream::StreamExt;
use varmor_agent::Agent;
use varmor_proto::v1;
use varmor_proto::v1::node_state_client::NodeStateClient;

#[tokio::test(flavor = "multi_thread")]
async fn node_state_refuses_nodes_and_serves_the_admin() {
    let gw = Gateway::new();
    gw.set_bundle(bundle("a", 7, &["bpf"], "v1"));
    let server = GatewayServer::start(gw.clone(), "127.0.0.1:0".parse().unwrap());
    let node = Node::new(&gw, "node-a");
    let agent = Agent::start_with(node.config(&server.url()), Recorders::new().enforcers())
        .await
        .expect("agent");
    gw.next_hello().await;
    gw.next_ack().await;
    let addr = agent.node_state_addr();

    // Without a client certificate the handshake fails.
    let no_cert = node_state_client(addr, &gw.ca.ca_pem, None).await;
    if let Ok(channel) = no_cert {
        let err = NodeStateClient::new(channel)
            .get_state(v1::GetStateRequest {})
            .await
            .expect_err("no client certificate");
        assert_ne!(err.code(), tonic::Code::Ok);
    }

    // A certificate from another CA fails the handshake too.
    let other = TestCa::new();
    let (oc, ok) = other.issue("varmor://admin/test", &["localhost"]);
    if let Ok(channel) = node_state_client(addr, &gw.ca.ca_pem, Some((&oc, &ok))).await {
        assert!(NodeStateClient::new(channel)
            .get_state(v1::GetStateRequest {})
            .await
            .is_err());
    }

    // A node certificate is refused by the handlers.
    let (nc, nk) = gw.ca.issue("varmor://node/node-b", &["localhost"]);
    let channel = node_state_client(addr, &gw.ca.ca_pem, Some((&nc, &nk)))
        .await
        .expect("TLS works with a node certificate");
    let err = NodeStateClient::new(channel)
        .get_state(v1::GetStateRequest {})
        .await
        .expect_err("a node may not read NodeState");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");

    // The admin certificate works; the server certificate is the node's (checked for 127.0.0.1).
    let (ac, ak) = gw.ca.issue("varmor://admin/test", &[]);
    let channel = node_state_client(addr, &gw.ca.ca_pem, Some((&ac, &ak)))
        .await
        .expect("admin connects");
    let mut client = NodeStateClient::new(channel.clone());
    let state = client
        .get_state(v1::GetStateRequest {})
        .await
        .expect("GetState")
        .into_inner();
    assert_eq!(state.node_name, "node-a");
    assert_eq!(state.manager_url, server.url());
    assert!(state.manager_connected);
    assert!(state.connection_changed_at.is_some());
    assert!(state.certificate_not_after.is_some());
    assert_eq!((state.profiles, state.revision), (1, 7));
    assert_eq!(state.event_buffer_capacity, 10_000);
    assert!(state.capabilities.unwrap().bpf.unwrap().available);
    assert_eq!(state.facts.unwrap().architecture, std::env::consts::ARCH);

    let profiles = client
        .list_profiles(v1::ListProfilesRequest {})
        .await
        .expect("ListProfiles")
        .into_inner()
        .profiles;
    assert_eq!(profiles.len(), 1);
    let p = &profiles[0];
    assert_eq!(p.bundle.as_ref().unwrap().profile_name, "varmor-demo-a");
    assert_eq!(p.results.len(), 1);
    assert_eq!(p.results[0].status, v1::ResultStatus::Applied as i32);
    assert!(p.applied_at.is_some());
    let one = client
        .get_profile(v1::GetProfileRequest {
            profile_name: "varmor-demo-a".into(),
        })
        .await
        .expect("GetProfile")
        .into_inner();
    assert_eq!(&one, p);
    let missing = client
        .get_profile(v1::GetProfileRequest {
            profile_name: "varmor-demo-zzz".into(),
        })
        .await
        .expect_err("not held");
    assert_eq!(missing.code(), tonic::Code::NotFound);
    assert!(client
        .list_containers(v1::ListContainersRequest {})
        .await
        .expect("ListContainers")
        .into_inner()
        .containers
        .is_empty());

    // WatchEvents: live, filtered.
    let mut events = client
        .watch_events(v1::WatchEventsRequest {
            filter: Some(v1::EventFilter {
                action: "DENIED".into(),
                ..Default::default()
            }),
        })
        .await
        .expect("WatchEvents")
        .into_inner();
    // The stream is registered once the response headers arrive; push after that.
    agent.push_event(v1::Event {
        action: "AUDIT".into(),
        ..Default::default()
    });
    agent.push_event(v1::Event {
        action: "DENIED".into(),
        pid: 42,
        ..Default::default()
    });
    let e = within(5, "a watched event", events.next())
        .await
        .expect("an event")
        .expect("ok");
    assert_eq!((e.action.as_str(), e.pid, e.sequence), ("DENIED", 42, 2));
    assert_eq!(e.node_name, "node-a");

    // Health and reflection are served (grpcurl needs both).
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "varmor.v1.NodeState".into(),
        })
        .await
        .expect("health")
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner();
    let answer = within(5, "the reflection answer", answers.next())
        .await
        .expect("an answer")
        .expect("ok");
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("unexpected reflection answer {answer:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.iter().any(|n| n == "varmor.v1.NodeState"),
        "{names:?}"
    );
    drop(events);
    agent.shutdown().await;
}
