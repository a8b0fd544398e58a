//! The violation pipeline inside a running agent: an AppArmor audit record appended to the
//! audit log and an event reported by a source come out enriched (container, pod, policy) in
//! violations.log, at the manager, in `GetState`'s sink counters and in the Prometheus metrics.

mod common;

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use common::*;
use varmor_agent::containers::{Binding, ContainerEntry, ContainerInfo};
use varmor_agent::violations::kernlog::KernLogConfig;
use varmor_agent::violations::logfile::ViolationLogConfig;
use varmor_agent::Agent;
use varmor_proto::v1;

fn own_mount_namespace() -> u32 {
    u32::try_from(
        std::fs::metadata("/proc/self/ns/mnt")
            .expect("own mount namespace")
            .ino(),
    )
    .expect("32-bit inode")
}

fn log_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("every line is JSON"))
        .collect()
}

async fn scrape(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("request");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("response");
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_records_and_reported_events_reach_every_sink_enriched() {
    let gw = Gateway::new();
    gw.set_bundle(bundle("web", 1, &["bpf"], "v1"));
    let server = GatewayServer::start(gw.clone(), "127.0.0.1:0".parse().unwrap());
    let node = Node::new(&gw, "node-a");
    let logs = tempfile::tempdir().expect("tempdir");
    let violations = logs.path().join("violations.log");
    let audit_log = logs.path().join("audit.log");
    std::fs::write(&audit_log, "").expect("audit.log");

    // The enricher reads /proc/<pid>/ns/mnt under the host root: make it the real /proc.
    std::os::unix::fs::symlink("/proc", node.host_root().join("proc")).expect("proc link");
    let mut config = node.config(&server.url());
    let mut log = ViolationLogConfig::new("node-a", "varmor");
    log.path = violations.clone();
    config.violations.log = Some(log);
    config.violations.audit = Some(KernLogConfig {
        netlink: false,
        audit_log: Some(audit_log.clone()),
        kmsg: None,
        poll_interval: Duration::from_millis(50),
        ..KernLogConfig::default()
    });
    config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let agent = Agent::start_with(config, Recorders::new().enforcers())
        .await
        .expect("agent");
    gw.next_hello().await;
    gw.next_ack().await;

    // This test process plays the container: its mount namespace is the container's.
    let mnt_ns = own_mount_namespace();
    agent.containers().upsert(ContainerEntry {
        info: ContainerInfo {
            id: "c0ffee".into(),
            name: "web".into(),
            image: "localhost/varmor/busybox:latest".into(),
            pid: std::process::id(),
            mnt_ns_id: mnt_ns,
            pod_name: "web-0".into(),
            pod_namespace: "demo".into(),
            pod_uid: "uid-web-0".into(),
            ..Default::default()
        },
        profile: Some("varmor-demo-web".into()),
        binding: Binding::Bound,
        message: String::new(),
        binding_latency_us: 0,
    });

    // A BPF event as the enforcer reports it: mount namespace and profile only.
    agent.report(v1::Event {
        mnt_ns_id: mnt_ns,
        pid: 4242,
        enforcer: v1::Enforcer::Bpf as i32,
        action: "DENIED".into(),
        profile_name: "varmor-demo-web".into(),
        event_json: r#"{"type":"file","path":"/etc/shadow","permissions":["read"]}"#.into(),
        ..Default::default()
    });

    // An AppArmor record of a process in the container (this one), appended until the agent's
    // tail of the audit log (which starts at its end) has seen it.
    let pid = std::process::id();
    let line = format!(
        "type=AVC msg=audit(1700000000.123:456): apparmor=\"DENIED\" operation=\"open\" \
         class=\"file\" profile=\"varmor-demo-web\" name=\"/etc/shadow\" pid={pid} comm=\"cat\" \
         requested_mask=\"r\" denied_mask=\"r\" fsuid=0 ouid=0\n"
    );
    let mut found = None;
    for _ in 0..100 {
        std::fs::OpenOptions::new()
            .append(true)
            .open(&audit_log)
            .expect("open audit.log")
            .write_all(line.as_bytes())
            .expect("append");
        tokio::time::sleep(Duration::from_millis(100)).await;
        found = log_lines(&violations)
            .into_iter()
            .find(|l| l["enforcer"] == "AppArmor");
        if found.is_some() {
            break;
        }
    }
    let apparmor = found.expect("the AppArmor record reached violations.log");
    for (key, want) in [
        ("nodeName", "node-a"),
        ("containerID", "c0ffee"),
        ("containerName", "web"),
        ("podName", "web-0"),
        ("podNamespace", "demo"),
        ("podUID", "uid-web-0"),
        ("profileName", "varmor-demo-web"),
        ("policyKind", "VarmorPolicy"),
        ("policyName", "web"),
        ("policyNamespace", "demo"),
        ("action", "DENIED"),
    ] {
        assert_eq!(apparmor[key], want, "{key} in {apparmor}");
    }
    assert_eq!(apparmor["pid"], pid);
    assert_eq!(apparmor["mntNsID"], mnt_ns);
    assert_eq!(apparmor["event"]["operation"], "open", "{apparmor}");

    let bpf = log_lines(&violations)
        .into_iter()
        .find(|l| l["enforcer"] == "BPF")
        .expect("the BPF event in violations.log");
    assert_eq!(bpf["containerID"], "c0ffee");
    assert_eq!(bpf["policyName"], "web");
    assert_eq!(bpf["event"]["path"], "/etc/shadow");

    // The manager got both, enriched the same way.
    eventually(10, "the events at the manager", || {
        let accepted = gw.accepted.lock().unwrap();
        accepted
            .iter()
            .any(|e| e.enforcer == v1::Enforcer::Bpf as i32)
            && accepted
                .iter()
                .any(|e| e.enforcer == v1::Enforcer::Apparmor as i32)
    })
    .await;
    let accepted = gw.accepted.lock().unwrap().clone();
    assert!(accepted
        .iter()
        .all(|e| e.container_id == "c0ffee" && e.policy_name == "web"));

    // GetState counts every sink; the metrics count the events by enforcer and action.
    let state = agent.state();
    let names: Vec<&str> = state.sinks.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["upstream", "violations.log"], "{state:?}");
    let log_sink = &state.sinks[1];
    assert!(
        log_sink.written >= 2 && log_sink.dropped == 0,
        "{log_sink:?}"
    );
    let text = scrape(agent.metrics_addr().expect("metrics served")).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.lines()
            .any(|l| l
                .starts_with("varmor_agent_events_total{enforcer=\"BPF\",action=\"DENIED\"} 1")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l
                .starts_with("varmor_agent_events_total{enforcer=\"AppArmor\",action=\"DENIED\"}")),
        "{text}"
    );
    assert!(
        text.contains("varmor_agent_profile_loads_total{enforcer=\"BPF\",result=\"applied\"} 1"),
        "{text}"
    );
    agent.shutdown().await;
}
