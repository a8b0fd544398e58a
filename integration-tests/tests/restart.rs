//! Killing the manager in the middle of a session: agents keep their bundles, reconnect and
//! resync without help, the status comes back, and no event is lost or delivered twice.

use std::time::Duration;

use varmor_agent::config::Config;
use varmor_agent::events::Pushed;
use varmor_agent::Agent;
use varmor_integration_tests::{
    admin_channel, free_addr, repo, start_agent, varmorctl, wait_for, Manager,
};
use varmor_proto::v1;
use varmor_proto::v1::control_plane_client::ControlPlaneClient;

fn node(m: &Manager, rt: &tokio::runtime::Runtime, name: &str) -> Option<v1::Node> {
    rt.block_on(async {
        let ch = admin_channel(&m.state_dir, m.addr).await.ok()?;
        ControlPlaneClient::new(ch)
            .get_node(v1::GetNodeRequest { name: name.into() })
            .await
            .ok()
            .map(|r| r.into_inner())
    })
}

fn event(i: u64) -> v1::Event {
    v1::Event {
        enforcer: v1::Enforcer::Bpf as i32,
        action: "DENIED".into(),
        profile_name: "varmor-default-demo-seccomp".into(),
        policy_name: "demo-seccomp".into(),
        policy_namespace: "default".into(),
        pid: u32::try_from(i).unwrap_or(0),
        event_json: format!(
            r#"{{"operation":"File","permissions":["read"],"path":"/etc/shadow-{i}"}}"#
        ),
        ..Default::default()
    }
}

#[test]
fn manager_restart_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let addr = free_addr();
    let mut m = Manager::start(dir.path(), addr);
    std::fs::copy(
        repo().join("deploy/standalone/demo-seccomp.yaml"),
        m.policy_dir.join("demo-seccomp.yaml"),
    )
    .expect("copy");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");

    // One agent as a separate process, one in this process so the test can feed it events.
    let mut proc_agent = start_agent(dir.path(), &m, "node-p", free_addr(), &[]);
    let agent_dir = dir.path().join("agent-lib");
    let mut config = Config::new(
        m.url(),
        "node-lib",
        m.state_dir.join("ca.crt"),
        m.state_dir.join("join-token"),
        agent_dir.join("state"),
        free_addr(),
    );
    config.seccomp_dir = Some(agent_dir.join("seccomp"));
    config.event_buffer = 100_000;
    let agent: Agent = rt.block_on(Agent::start(config)).expect("agent starts");

    let ready = |m: &Manager| {
        let (_, out, _) = varmorctl(m, &["policies", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        let p = v["policies"]
            .as_array()?
            .iter()
            .find(|p| p["profileName"] == "varmor-default-demo-seccomp")?
            .clone();
        (p["phase"] == "Protecting" && p["current"] == 2).then_some(p)
    };
    assert!(
        wait_for(Duration::from_secs(30), || ready(&m)).is_some(),
        "not ready before the restart:\n{}",
        m.proc.output()
    );

    // Events flow steadily from another thread while the manager is killed (SIGKILL: no
    // chance to flush anything) and restarted on the same state directory, so batches are in
    // flight at the moment of the kill.
    const TOTAL: u64 = 4000;
    let m = std::thread::scope(|scope| {
        let pusher = scope.spawn(|| {
            for i in 1..=TOTAL {
                assert!(matches!(agent.push_event(event(i)), Pushed::Accepted(_)));
                std::thread::sleep(Duration::from_micros(500));
            }
        });
        std::thread::sleep(Duration::from_millis(400));
        m.proc.kill();
        let disconnected = wait_for(Duration::from_secs(20), || {
            (!agent.state().manager_connected).then_some(())
        });
        assert!(
            disconnected.is_some(),
            "the agent did not notice the manager went away"
        );
        std::thread::sleep(Duration::from_millis(300));
        let state = agent.state();
        assert!(
            state.events_buffered > 0,
            "events must wait in the buffer: {state:?}"
        );
        assert_eq!(
            agent.profiles().len(),
            1,
            "the agent keeps its bundle while the manager is away"
        );
        let m = Manager::start(dir.path(), addr);
        pusher.join().expect("pusher");
        m
    });

    // The agents reconnect by themselves, the status comes back, and every event arrived once.
    let back = wait_for(Duration::from_secs(60), || {
        let n = node(&m, &rt, "node-lib")?;
        (n.connected && n.last_event_sequence == TOTAL).then_some(n)
    });
    let n = back.unwrap_or_else(|| {
        panic!(
            "events did not all arrive: {:?}\n{}",
            node(&m, &rt, "node-lib"),
            m.proc.output()
        )
    });
    assert_eq!(n.events_received, TOTAL, "each event exactly once: {n:?}");
    assert_eq!(n.events_dropped, 0);
    assert!(
        wait_for(Duration::from_secs(30), || ready(&m)).is_some(),
        "status did not come back: {}",
        varmorctl(&m, &["policies"]).1
    );
    let p = node(&m, &rt, "node-p").expect("process agent known");
    assert!(p.connected, "the agent process reconnected: {p:?}");
    let s = agent.state();
    assert_eq!((s.events_acked, s.events_buffered), (TOTAL, 0), "{s:?}");
    rt.block_on(agent.shutdown());
    proc_agent.kill();
}
