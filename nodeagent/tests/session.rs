//! The Sync session: snapshots, updates and removals with per-enforcer acks, kernel probes,
//! held bundles across restarts, reconnection and resync by revision.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use common::*;
use varmor_agent::enforcer::Call;
use varmor_agent::{Agent, Capability, EnforcerKind, Outcome, RecordingEnforcer};
use varmor_proto::v1::{self, Enforcer as E, ResultStatus as S};

fn held(hello: &v1::Hello) -> BTreeMap<String, u64> {
    hello
        .held
        .iter()
        .map(|h| (h.profile_name.clone(), h.revision))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn snapshot_updates_and_removals_are_acked_per_enforcer() {
    let gw = Gateway::new();
    gw.set_bundle(bundle("a", 1, &["bpf", "seccomp"], "v1"));
    gw.set_bundle(bundle("b", 2, &["apparmor"], "v1"));
    let server = GatewayServer::start(gw.clone(), "127.0.0.1:0".parse().unwrap());
    let node = Node::new(&gw, "node-a");
    let mut rec = Recorders::new();
    rec.apparmor = RecordingEnforcer::with_capability(
        EnforcerKind::AppArmor,
        Capability {
            available: false,
            reason: "no AppArmor in this test kernel".into(),
        },
    );
    rec.seccomp.script(
        "varmor-demo-a",
        Outcome::needs_restart("changed; restart the containers"),
    );
    let agent = Agent::start_with(node.config(&server.url()), rec.enforcers())
        .await
        .expect("agent");

    let (_, hello) = gw.next_hello().await;
    assert!(hello.held.is_empty());
    let caps = hello.capabilities.expect("capabilities");
    assert!(!caps.apparmor.as_ref().unwrap().available);
    assert_eq!(
        caps.apparmor.unwrap().reason,
        "no AppArmor in this test kernel"
    );
    assert!(caps.bpf.unwrap().available);
    assert_eq!(hello.agent_version, varmor_agent::AGENT_VERSION);
    let facts = hello.facts.expect("facts");
    assert_eq!(facts.architecture, std::env::consts::ARCH);

    // The snapshot: one ack per bundle, one result per enforcer of the bundle.
    let acks = gw.acks(2).await;
    let a = &acks["varmor-demo-a"];
    assert_eq!(a.revision, 1);
    assert_eq!(a.results.len(), 2, "{a:?}");
    assert_eq!(result_of(a, E::Bpf).0, S::Applied);
    assert_eq!(
        result_of(a, E::Seccomp),
        (S::NeedsRestart, "changed; restart the containers".into())
    );
    let b = &acks["varmor-demo-b"];
    assert_eq!(b.revision, 2);
    assert_eq!(
        result_of(b, E::Apparmor),
        (S::Unavailable, "no AppArmor in this test kernel".into())
    );

    // An update that drops an enforcer: applied on one, removed from the other.
    gw.update(bundle("a", 3, &["bpf"], "v2"));
    let ack = gw.next_ack().await;
    assert_eq!(
        (ack.profile_name.as_str(), ack.revision),
        ("varmor-demo-a", 3)
    );
    assert_eq!(result_of(&ack, E::Bpf).0, S::Applied);
    assert_eq!(result_of(&ack, E::Seccomp).0, S::Removed);
    assert_eq!(rec.bpf.loaded()["varmor-demo-a"], 3);
    assert!(!rec.seccomp.loaded().contains_key("varmor-demo-a"));

    // A removal.
    gw.remove("varmor-demo-b", 4);
    let ack = gw.next_ack().await;
    assert_eq!(
        (ack.profile_name.as_str(), ack.revision),
        ("varmor-demo-b", 4)
    );
    assert_eq!(result_of(&ack, E::Apparmor).0, S::Removed);

    // A broken bundle keeps the held revision and is acked FAILED naming the field.
    let mut broken = bundle("a", 5, &["bpf"], "v3");
    broken.mode = "Sometimes".into();
    gw.update(broken);
    let ack = gw.next_ack().await;
    let (status, message) = result_of(&ack, E::Bpf);
    assert_eq!(status, S::Failed);
    assert!(
        message.contains("bundle.mode") && message.contains("revision 3 stays"),
        "{message}"
    );

    let profiles = agent.profiles();
    assert_eq!(profiles.len(), 1);
    assert_eq!(profiles[0].bundle.as_ref().unwrap().revision, 3);
    assert!(profiles[0].applied_at.is_some());
    let state = agent.state();
    assert!(state.manager_connected);
    assert_eq!((state.profiles, state.revision), (1, 3));
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_kernel_features_are_unavailable_with_the_probe_reason() {
    let gw = Gateway::new();
    gw.set_bundle(bundle("a", 1, &["apparmor", "bpf", "seccomp"], "v1"));
    let server = GatewayServer::start(gw.clone(), "127.0.0.1:0".parse().unwrap());
    let node = Node::new(&gw, "node-a");
    // The host root is an empty directory: no AppArmor, no BPF-LSM, no seccomp.
    let agent = Agent::start(node.config(&server.url()))
        .await
        .expect("agent");
    let (_, hello) = gw.next_hello().await;
    let caps = hello.capabilities.expect("capabilities");
    for (cap, file) in [
        (
            caps.apparmor.unwrap(),
            "/sys/module/apparmor/parameters/enabled",
        ),
        (caps.bpf.unwrap(), "/sys/kernel/security/lsm"),
        (
            caps.seccomp.unwrap(),
            "/proc/sys/kernel/seccomp/actions_avail",
        ),
    ] {
        assert!(!cap.available);
        assert!(cap.reason.contains(file), "{cap:?}");
    }
    let ack = gw.next_ack().await;
    for (kind, file) in [
        (E::Apparmor, "/sys/module/apparmor/parameters/enabled"),
        (E::Bpf, "/sys/kernel/security/lsm"),
        (E::Seccomp, "actions_avail"),
    ] {
        let (status, message) = result_of(&ack, kind);
        assert_eq!(status, S::Unavailable, "{kind:?}: {message}");
        assert!(message.contains(file), "{kind:?}: {message}");
    }
    assert!(!node.seccomp_dir().join("varmor-demo-a").exists());
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn supported_kernel_writes_seccomp_and_never_claims_unbuilt_loaders() {
    let gw = Gateway::new();
    gw.set_bundle(bundle("a", 1, &["apparmor", "bpf", "seccomp"], "v1"));
    let server = GatewayServer::start(gw.clone(), "127.0.0.1:0".parse().unwrap());
    let node = Node::new(&gw, "node-a");
    node.host_file("/sys/module/apparmor/parameters/enabled", "Y\n");
    node.host_dir("/sys/kernel/security/apparmor");
    node.host_file(
        "/sys/kernel/security/lsm",
        "lockdown,capability,apparmor,bpf",
    );
    node.host_file("/sys/kernel/btf/vmlinux", "");
    node.host_file(
        "/proc/sys/kernel/seccomp/actions_avail",
        "kill_process errno log allow",
    );
    node.host_file(
        "/proc/partitions",
        "major minor  #blocks  name\n\n 254 0 100 vda\n 254 1 99 vda1\n",
    );
    let agent = Agent::start(node.config(&server.url()))
        .await
        .expect("agent");
    let (_, hello) = gw.next_hello().await;
    let facts = hello.facts.unwrap();
    assert!(facts.disk_devices_known);
    assert_eq!(facts.disk_devices, ["vda", "vda1"]);
    let caps = hello.capabilities.unwrap();
    assert!(caps.seccomp.unwrap().available);
    // BPF-LSM is probed for real: the fake BTF above cannot be loaded, so the node reports
    // BPF unavailable with the loader's reason, and the BPF part of the bundle is refused.
    let bpf = caps.bpf.unwrap();
    assert!(!bpf.available, "{bpf:?}");
    assert!(
        !bpf.reason.is_empty() && !bpf.reason.contains("not implemented"),
        "{bpf:?}"
    );

    let ack = gw.next_ack().await;
    let (status, message) = result_of(&ack, E::Bpf);
    assert_eq!(status, S::Unavailable, "bpf: {message}");
    // AppArmor is loaded for real: with this machine's apparmor_parser the fake securityfs
    // refuses the profile (FAILED with the parser's stderr, nothing stored); without one the
    // node reports AppArmor unavailable and says why. Never APPLIED, never "not implemented".
    let apparmor_file = node
        .host_root()
        .join("var/lib/varmor/apparmor/varmor-demo-a");
    let (status, message) = result_of(&ack, E::Apparmor);
    assert!(!message.contains("not implemented"), "{message}");
    match status {
        S::Failed => {
            assert!(
                message.contains("apparmor_parser") && message.contains("nothing was loaded"),
                "apparmor: {message}"
            );
            assert!(caps.apparmor.as_ref().unwrap().available);
        }
        S::Unavailable => {
            assert!(
                message.contains("apparmor_parser was not found"),
                "{message}"
            );
            assert!(!caps.apparmor.as_ref().unwrap().available);
        }
        other => panic!("apparmor: {other:?} {message}"),
    }
    assert!(!apparmor_file.exists(), "a refused profile is not stored");
    assert_eq!(result_of(&ack, E::Seccomp).0, S::Applied);
    let file = node.seccomp_dir().join("varmor-demo-a");
    assert!(std::fs::read_to_string(&file).unwrap().contains("\"v1\""));

    gw.update(bundle("a", 2, &["apparmor", "bpf", "seccomp"], "v2"));
    let ack = gw.next_ack().await;
    let (status, message) = result_of(&ack, E::Seccomp);
    assert_eq!(
        status,
        S::NeedsRestart,
        "a changed seccomp profile needs a restart: {message}"
    );
    assert!(std::fs::read_to_string(&file).unwrap().contains("\"v2\""));

    gw.remove("varmor-demo-a", 3);
    let ack = gw.next_ack().await;
    assert_eq!(result_of(&ack, E::Seccomp).0, S::Removed);
    assert!(!file.exists());
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn held_bundles_survive_a_restart_and_the_snapshot_is_diffed_by_revision() {
    let gw = Gateway::new();
    gw.set_bundle(bundle("a", 1, &["bpf"], "v1"));
    gw.set_bundle(bundle("b", 2, &["bpf"], "v1"));
    gw.set_bundle(bundle("d", 3, &["bpf", "seccomp"], "v1"));
    let server = GatewayServer::start(gw.clone(), "127.0.0.1:0".parse().unwrap());
    let addr = server.addr;
    let node = Node::new(&gw, "node-a");
    let rec = Recorders::new();
    let agent = Agent::start_with(node.config(&server.url()), rec.enforcers())
        .await
        .expect("agent");
    gw.next_hello().await;
    gw.acks(3).await;
    agent.shutdown().await;
    server.stop();

    // The manager is away: a new agent restores what it held and keeps enforcing it.
    let rec = Recorders::new();
    let agent = Agent::start_with(node.config(&format!("https://{addr}")), rec.enforcers())
        .await
        .expect("agent restarts without the manager");
    assert_eq!(
        rec.bpf.loaded(),
        BTreeMap::from([
            ("varmor-demo-a".to_string(), 1),
            ("varmor-demo-b".to_string(), 2),
            ("varmor-demo-d".to_string(), 3)
        ]),
        "held bundles are loaded again at start"
    );
    let state = agent.state();
    assert!(!state.manager_connected);
    assert_eq!((state.profiles, state.revision), (3, 3));
    rec.bpf.clear_calls();
    rec.seccomp.clear_calls();

    // The manager comes back with: a removed, b changed, c new, d unchanged.
    gw.unset_bundle("varmor-demo-a");
    gw.set_bundle(bundle("b", 4, &["bpf"], "v2"));
    gw.set_bundle(bundle("c", 5, &["bpf"], "v1"));
    let _server = GatewayServer::start(gw.clone(), addr);
    let (_, hello) = gw.next_hello().await;
    assert_eq!(
        held(&hello),
        BTreeMap::from([
            ("varmor-demo-a".to_string(), 1),
            ("varmor-demo-b".to_string(), 2),
            ("varmor-demo-d".to_string(), 3)
        ]),
        "Hello reports the held revisions"
    );
    let acks = gw.acks(4).await;
    assert_eq!(acks["varmor-demo-a"].revision, 1);
    assert_eq!(result_of(&acks["varmor-demo-a"], E::Bpf).0, S::Removed);
    assert_eq!(acks["varmor-demo-b"].revision, 4);
    assert_eq!(result_of(&acks["varmor-demo-b"], E::Bpf).0, S::Applied);
    assert_eq!(acks["varmor-demo-c"].revision, 5);
    assert_eq!(
        acks["varmor-demo-d"].revision, 3,
        "unchanged bundles are acked again"
    );
    assert_eq!(result_of(&acks["varmor-demo-d"], E::Seccomp).0, S::Applied);

    let calls = rec.bpf.calls();
    assert!(calls.contains(&Call::Remove {
        profile: "varmor-demo-a".into()
    }));
    assert!(calls.contains(&Call::Apply {
        profile: "varmor-demo-b".into(),
        revision: 4
    }));
    assert!(calls.contains(&Call::Apply {
        profile: "varmor-demo-c".into(),
        revision: 5
    }));
    assert!(
        !calls
            .iter()
            .any(|c| matches!(c, Call::Apply { profile, .. } if profile == "varmor-demo-d")),
        "an unchanged bundle is not applied again: {calls:?}"
    );
    assert!(rec.seccomp.calls().is_empty());

    let mut files: Vec<String> = std::fs::read_dir(node.state_dir().join("bundles"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        ["varmor-demo-b.pb", "varmor-demo-c.pb", "varmor-demo-d.pb"]
    );
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reconnects_after_the_manager_goes_away_and_resyncs_by_revision() {
    let gw = Gateway::new();
    gw.set_bundle(bundle("a", 1, &["bpf"], "v1"));
    let server = GatewayServer::start(gw.clone(), "127.0.0.1:0".parse().unwrap());
    let addr = server.addr;
    let node = Node::new(&gw, "node-a");
    let rec = Recorders::new();
    let agent = Agent::start_with(node.config(&server.url()), rec.enforcers())
        .await
        .expect("agent");
    gw.next_hello().await;
    assert_eq!(gw.next_ack().await.revision, 1);
    eventually(5, "connected", || agent.state().manager_connected).await;

    server.stop();
    eventually(5, "the agent to notice", || {
        !agent.state().manager_connected
    })
    .await;
    let state = agent.state();
    assert!(!state.last_error.is_empty(), "{state:?}");
    assert_eq!(rec.bpf.loaded()["varmor-demo-a"], 1, "still enforced");
    // Several failed attempts while down (the backoff is capped at 300 ms in tests).
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;

    gw.set_bundle(bundle("a", 2, &["bpf"], "v2"));
    let _server = GatewayServer::start(gw.clone(), addr);
    let (_, hello) = gw.next_hello().await;
    assert_eq!(
        held(&hello),
        BTreeMap::from([("varmor-demo-a".to_string(), 1)])
    );
    let ack = gw.next_ack().await;
    assert_eq!(ack.revision, 2);
    assert_eq!(rec.bpf.loaded()["varmor-demo-a"], 2);
    eventually(5, "connected again", || agent.state().manager_connected).await;
    assert_eq!(gw.sessions.load(Ordering::SeqCst), 2);
    agent.shutdown().await;
}
