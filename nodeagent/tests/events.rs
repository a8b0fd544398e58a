//! Event upload: sequence numbers, acknowledgements, resends after a reconnect, overflow.

mod common;

use std::sync::atomic::Ordering;

use common::*;
use varmor_agent::{Agent, Pushed};
use varmor_proto::v1;

fn denied(n: u32) -> v1::Event {
    v1::Event {
        pid: n,
        action: "DENIED".into(),
        enforcer: v1::Enforcer::Bpf as i32,
        profile_name: "varmor-demo-a".into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sequences_increase_and_acknowledged_events_are_not_resent() {
    let gw = Gateway::new();
    let server = GatewayServer::start(gw.clone(), "127.0.0.1:0".parse().unwrap());
    let addr = server.addr;
    let node = Node::new(&gw, "node-a");
    let agent = Agent::start_with(node.config(&server.url()), Recorders::new().enforcers())
        .await
        .expect("agent");
    gw.next_hello().await;
    for n in 1..=5 {
        assert_eq!(agent.push_event(denied(n)), Pushed::Accepted(u64::from(n)));
    }
    eventually(10, "5 events at the manager", || {
        gw.accepted_sequences().len() == 5
    })
    .await;
    assert_eq!(gw.accepted_sequences(), [1, 2, 3, 4, 5]);
    let accepted = gw.accepted.lock().unwrap().clone();
    assert!(accepted
        .iter()
        .all(|e| e.node_name == "node-a" && e.time.is_some()));
    assert_eq!(accepted[2].pid, 3);
    eventually(5, "the acks", || agent.state().events_acked == 5).await;
    assert_eq!(agent.state().events_buffered, 0);

    // The manager restarts: nothing acknowledged travels again.
    server.stop();
    while gw.batch_within(0).await.is_some() {}
    let _server = GatewayServer::start(gw.clone(), addr);
    gw.next_hello().await;
    assert_eq!(
        gw.batch_within(700).await,
        None,
        "acknowledged events are not resent"
    );
    assert_eq!(agent.push_event(denied(6)), Pushed::Accepted(6));
    assert_eq!(gw.next_batch().await.sequences, [6]);
    agent.shutdown().await;

    // An agent restart continues the sequence.
    let agent = Agent::start_with(
        node.config(&format!("https://{addr}")),
        Recorders::new().enforcers(),
    )
    .await
    .expect("agent restarts");
    assert_eq!(agent.push_event(denied(7)), Pushed::Accepted(7));
    eventually(10, "event 7", || gw.accepted_sequences().last() == Some(&7)).await;
    assert_eq!(
        gw.accepted_sequences(),
        [1, 2, 3, 4, 5, 6, 7],
        "no duplicate, no loss"
    );
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unacknowledged_batch_is_sent_again_after_a_reconnect() {
    let gw = Gateway::new();
    gw.ack_events.store(false, Ordering::SeqCst);
    let server = GatewayServer::start(gw.clone(), "127.0.0.1:0".parse().unwrap());
    let addr = server.addr;
    let node = Node::new(&gw, "node-a");
    let agent = Agent::start_with(node.config(&server.url()), Recorders::new().enforcers())
        .await
        .expect("agent");
    for n in 1..=3 {
        agent.push_event(denied(n));
    }
    let mut seen = Vec::new();
    while seen.len() < 3 {
        seen.extend(gw.next_batch().await.sequences);
    }
    assert_eq!(seen, [1, 2, 3]);
    assert_eq!(agent.state().events_buffered, 3, "kept until acknowledged");

    // The manager dies before acknowledging; when it is back, the same events come again.
    server.stop();
    gw.ack_events.store(true, Ordering::SeqCst);
    let _server = GatewayServer::start(gw.clone(), addr);
    let mut again = Vec::new();
    while again.len() < 3 {
        again.extend(gw.next_batch().await.sequences);
    }
    assert_eq!(again, [1, 2, 3]);
    eventually(5, "the acks", || agent.state().events_acked == 3).await;
    assert_eq!(agent.state().events_buffered, 0);
    assert_eq!(
        gw.accepted_sequences(),
        [1, 2, 3],
        "the manager saw each once"
    );
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn overflow_is_counted_and_reported_in_the_next_batch_and_in_get_state() {
    let gw = Gateway::new();
    let server = GatewayServer::start(gw.clone(), "127.0.0.1:0".parse().unwrap());
    let addr = server.addr;
    let node = Node::new(&gw, "node-a");
    let mut config = node.config(&server.url());
    config.event_buffer = 3;
    let agent = Agent::start_with(config, Recorders::new().enforcers())
        .await
        .expect("agent");
    gw.next_hello().await;
    server.stop();
    eventually(5, "disconnected", || !agent.state().manager_connected).await;

    let results: Vec<Pushed> = (1..=5).map(|n| agent.push_event(denied(n))).collect();
    assert_eq!(
        results,
        [
            Pushed::Accepted(1),
            Pushed::Accepted(2),
            Pushed::Accepted(3),
            Pushed::Dropped,
            Pushed::Dropped
        ]
    );
    let state = agent.state();
    assert_eq!(
        (
            state.events_produced,
            state.events_buffered,
            state.events_dropped,
            state.event_buffer_capacity
        ),
        (3, 3, 2, 3)
    );

    let _server = GatewayServer::start(gw.clone(), addr);
    let first = gw.next_batch().await;
    assert_eq!(first.sequences, [1, 2, 3]);
    assert_eq!(first.dropped, 2, "the drops travel with the next batch");
    eventually(5, "the acks", || agent.state().events_acked == 3).await;
    assert_eq!(gw.dropped_reported.load(Ordering::SeqCst), 2);
    // Reported once: later batches carry no drops.
    agent.push_event(denied(6));
    let next = gw.next_batch().await;
    assert_eq!((next.sequences.as_slice(), next.dropped), (&[4u64][..], 0));
    assert_eq!(agent.state().events_dropped, 2, "GetState keeps the total");
    agent.shutdown().await;
}
