//! Standalone binding on a real containerd (private instance, busybox image, containers run
//! with `ctr`): containers found at start, containers bound on their start event with the
//! latency measured, unbound on exit, late bundles, removed bundles, a containerd restart, and
//! what `NodeState/ListContainers` shows.

mod common;
mod containers_fixture;

use std::time::Duration;

use common::*;
use containers_fixture::*;
use varmor_agent::{Agent, Mode, RuntimeConfig};
use varmor_proto::v1;
use varmor_proto::v1::node_state_client::NodeStateClient;

/// An agent in standalone mode watching the `default` namespace of `ctd`, with the observer as
/// its BPF enforcer.
async fn agent(
    gw: &std::sync::Arc<Gateway>,
    server: &GatewayServer,
    node: &Node,
    ctd: &Containerd,
    observer: &Observer,
) -> Agent {
    let mut config = node.config(&server.url());
    // /proc of the host: the container PIDs are read there.
    config.host_root = "/".into();
    let mut runtime = RuntimeConfig::new(Mode::Standalone);
    runtime.containerd_socket = ctd.socket.clone();
    runtime.namespaces = vec!["default".into()];
    config.containers = Some(runtime);
    let agent = Agent::start_with(config, observer.enforcers())
        .await
        .expect("agent starts");
    let _ = gw;
    agent
}

async fn list_containers(agent: &Agent, gw: &Gateway) -> Vec<v1::Container> {
    let (cert, key) = gw.ca.issue("varmor://admin/test", &[]);
    let channel = node_state_client(agent.node_state_addr(), &gw.ca.ca_pem, Some((&cert, &key)))
        .await
        .expect("NodeState");
    NodeStateClient::new(channel)
        .list_containers(v1::ListContainersRequest {})
        .await
        .expect("ListContainers")
        .into_inner()
        .containers
}

fn find<'a>(list: &'a [v1::Container], id: &str) -> &'a v1::Container {
    list.iter()
        .find(|c| c.id == id)
        .unwrap_or_else(|| panic!("{id} not in {list:#?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn containers_are_found_bound_on_start_with_latency_and_unbound_on_exit() {
    logs();
    let Some(ctd) = Containerd::start(&["default"]) else {
        return;
    };
    // Running before the agent starts.
    let pre_pid = ctd.run("default", "pre", &[("app", "web")], &[]);
    ctd.run("default", "other", &[("app", "db")], &[]);

    let gw = Gateway::new();
    gw.set_bundle(labelled_bundle("web", 1, "web"));
    let server = GatewayServer::start(gw.clone(), "127.0.0.1:0".parse().unwrap());
    let node = Node::new(&gw, "node-c");
    let observer = Observer::default();
    let agent = agent(&gw, &server, &node, &ctd, &observer).await;

    // Found at start and bound, with the mount namespace of its init process.
    eventually(20, "pre bound", || !observer.binds_of("pre").is_empty()).await;
    let Seen::Bind { container, profile } = &observer.binds_of("pre")[0] else {
        unreachable!()
    };
    assert_eq!(profile, "varmor-demo-web");
    assert_eq!(container.pid, pre_pid);
    assert_eq!(container.mnt_ns_id, mnt_ns_of(pre_pid));
    assert_ne!(container.mnt_ns_id, mnt_ns_of(std::process::id()));
    assert_eq!(container.labels.get("app").map(String::as_str), Some("web"));
    assert_eq!(container.runtime_namespace, "default");
    assert_eq!(container.image, ctd.image);
    eventually(10, "other listed", || {
        agent
            .containers()
            .list()
            .iter()
            .any(|c| c.info.id == "other")
    })
    .await;
    assert!(observer.binds_of("other").is_empty());

    // Containers started now are bound on their start event; the latency is measured.
    let mut latencies = Vec::new();
    for i in 0..10 {
        let id = format!("web-{i}");
        let pid = ctd.run("default", &id, &[("app", "web")], &[]);
        eventually(20, "bound on start", || !observer.binds_of(&id).is_empty()).await;
        let Seen::Bind { container, .. } = &observer.binds_of(&id)[0] else {
            unreachable!()
        };
        assert_eq!(container.mnt_ns_id, mnt_ns_of(pid));
        eventually(10, "entry bound", || {
            agent
                .containers()
                .list()
                .iter()
                .any(|c| c.info.id == id && c.binding_latency_us > 0)
        })
        .await;
        let entry = agent
            .containers()
            .list()
            .into_iter()
            .find(|c| c.info.id == id)
            .unwrap();
        latencies.push(entry.binding_latency_us);
    }
    let (min, median, max) = min_median_max(latencies.clone());
    eprintln!(
        "binding latency over {} container starts (task start event timestamp -> bind done): \
         min {min} µs, median {median} µs, max {max} µs",
        latencies.len()
    );
    let summary = agent.binding_latency();
    assert_eq!(summary.count, 10);
    assert_eq!((summary.min_us, summary.max_us), (min, max));
    // Generous: the event path is a few local RPCs; seconds would mean polling or a stall.
    assert!(median < 1_000_000, "median binding latency {median} µs");

    // ListContainers shows profiles, states and latencies.
    let list = list_containers(&agent, &gw).await;
    let pre = find(&list, "pre");
    assert_eq!(
        (pre.binding.as_str(), pre.profile_name.as_str()),
        ("Bound", "varmor-demo-web")
    );
    assert_eq!(
        pre.binding_latency_us, 0,
        "found running: no start event to measure from"
    );
    assert_eq!((pre.pid, pre.mnt_ns_id), (pre_pid, mnt_ns_of(pre_pid)));
    assert_eq!(pre.labels.get("app").map(String::as_str), Some("web"));
    let other = find(&list, "other");
    assert_eq!(other.binding, "Unbound");
    assert_eq!(other.profile_name, "");
    assert_eq!(other.binding_message, "no policy selects this container");
    let w0 = find(&list, "web-0");
    assert_eq!(w0.binding, "Bound");
    assert!(w0.binding_latency_us > 0);
    assert!(
        w0.binding_message.contains("bound by BPF"),
        "{}",
        w0.binding_message
    );

    // An exiting container is unbound (with the namespace it was bound with) and forgotten.
    let w1_ns = mnt_ns_of(ctd.pid("default", "web-1").unwrap());
    ctd.kill("default", "web-1");
    eventually(20, "web-1 unbound", || {
        !observer.unbinds_of("web-1").is_empty()
    })
    .await;
    let Seen::Unbind { container } = &observer.unbinds_of("web-1")[0] else {
        unreachable!()
    };
    assert_eq!(container.mnt_ns_id, w1_ns);
    eventually(10, "web-1 forgotten", || {
        !agent
            .containers()
            .list()
            .iter()
            .any(|c| c.info.id == "web-1")
    })
    .await;
    assert!(!list_containers(&agent, &gw)
        .await
        .iter()
        .any(|c| c.id == "web-1"));
    // Nothing else was unbound, nothing bound twice.
    assert_eq!(
        observer
            .seen()
            .iter()
            .filter(|s| matches!(s, Seen::Unbind { .. }))
            .count(),
        1
    );
    assert_eq!(observer.binds_of("pre").len(), 1);
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_late_bundle_binds_a_running_container_and_its_removal_unbinds_it() {
    logs();
    let Some(ctd) = Containerd::start(&["default"]) else {
        return;
    };
    let gw = Gateway::new();
    let server = GatewayServer::start(gw.clone(), "127.0.0.1:0".parse().unwrap());
    let node = Node::new(&gw, "node-d");
    let observer = Observer::default();
    let agent = agent(&gw, &server, &node, &ctd, &observer).await;
    gw.next_hello().await;

    let pid = ctd.run("default", "api", &[("app", "api")], &[]);
    eventually(20, "api seen", || {
        agent.containers().list().iter().any(|c| c.info.id == "api")
    })
    .await;
    assert_eq!(
        find(&list_containers(&agent, &gw).await, "api").binding,
        "Unbound"
    );

    // The bundle arrives after the container started (vArmor would miss it).
    gw.update(labelled_bundle("api", 1, "api"));
    gw.next_ack().await;
    eventually(10, "api bound", || !observer.binds_of("api").is_empty()).await;
    let Seen::Bind { container, profile } = &observer.binds_of("api")[0] else {
        unreachable!()
    };
    assert_eq!(profile, "varmor-demo-api");
    assert_eq!(container.mnt_ns_id, mnt_ns_of(pid));
    let c = list_containers(&agent, &gw).await;
    let api = find(&c, "api");
    assert_eq!(
        (api.binding.as_str(), api.profile_name.as_str()),
        ("Bound", "varmor-demo-api")
    );

    // A new revision that selects another label: unbound; and back.
    gw.update(labelled_bundle("api", 2, "other"));
    gw.next_ack().await;
    eventually(10, "api unbound", || observer.unbinds_of("api").len() == 1).await;
    gw.update(labelled_bundle("api", 3, "api"));
    gw.next_ack().await;
    eventually(10, "api bound again", || {
        observer.binds_of("api").len() == 2
    })
    .await;

    // The bundle is removed: unbound, shown Unbound.
    gw.remove("varmor-demo-api", 4);
    gw.next_ack().await;
    eventually(10, "api unbound", || observer.unbinds_of("api").len() == 2).await;
    let c = list_containers(&agent, &gw).await;
    let api = find(&c, "api");
    assert_eq!(
        (api.binding.as_str(), api.profile_name.as_str()),
        ("Unbound", "")
    );
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_containerd_restart_is_survived() {
    logs();
    let Some(mut ctd) = Containerd::start(&["default"]) else {
        return;
    };
    ctd.run("default", "keep", &[("app", "web")], &[]);
    let gone_pid = ctd.run("default", "gone", &[("app", "web")], &[]);
    let gw = Gateway::new();
    gw.set_bundle(labelled_bundle("web", 1, "web"));
    let server = GatewayServer::start(gw.clone(), "127.0.0.1:0".parse().unwrap());
    let node = Node::new(&gw, "node-e");
    let observer = Observer::default();
    let agent = agent(&gw, &server, &node, &ctd, &observer).await;
    eventually(20, "both bound", || {
        !observer.binds_of("keep").is_empty() && !observer.binds_of("gone").is_empty()
    })
    .await;

    // containerd goes away; meanwhile a container dies (no event can tell the agent).
    ctd.stop();
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &gone_pid.to_string()])
        .status();
    tokio::time::sleep(Duration::from_millis(500)).await;
    ctd.restart();

    // The agent reconnects and lists again: the dead one is unbound, the live one stays
    // bound (not bound twice), and new containers are bound on their events.
    eventually(30, "gone unbound after the re-list", || {
        !observer.unbinds_of("gone").is_empty()
    })
    .await;
    let pid = ctd.run("default", "after", &[("app", "web")], &[]);
    eventually(20, "after bound", || !observer.binds_of("after").is_empty()).await;
    let Seen::Bind { container, .. } = &observer.binds_of("after")[0] else {
        unreachable!()
    };
    assert_eq!(container.mnt_ns_id, mnt_ns_of(pid));
    assert_eq!(observer.binds_of("keep").len(), 1);
    assert!(observer.unbinds_of("keep").is_empty());
    let list = list_containers(&agent, &gw).await;
    assert_eq!(find(&list, "keep").binding, "Bound");
    assert_eq!(find(&list, "after").binding, "Bound");
    assert!(!list.iter().any(|c| c.id == "gone"));
    agent.shutdown().await;
}
