//! The real binaries together on loopback: a manager with a policy directory, two agents, and
//! varmorctl.

use std::time::{Duration, Instant};

use varmor_integration_tests::{
    admin_channel, free_addr, repo, start_agent, varmorctl, wait_for, Manager,
};
use varmor_proto::v1;
use varmor_proto::v1::node_state_client::NodeStateClient;

fn copy_examples(m: &Manager) {
    for f in ["demo-seccomp.yaml", "demo-bpf-apparmor.yaml"] {
        std::fs::copy(
            repo().join("deploy/standalone").join(f),
            m.policy_dir.join(f),
        )
        .expect("copy example");
    }
}

/// The profiles an agent holds, through its NodeState service with the operator certificate.
fn held(m: &Manager, agent: std::net::SocketAddr) -> Option<Vec<(String, u64)>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let ch = admin_channel(&m.state_dir, agent).await.ok()?;
        let resp = NodeStateClient::new(ch)
            .list_profiles(v1::ListProfilesRequest {})
            .await
            .ok()?;
        Some(
            resp.into_inner()
                .profiles
                .into_iter()
                .filter_map(|h| h.bundle.map(|b| (b.profile_name, b.revision)))
                .collect(),
        )
    })
}

#[test]
fn manager_agents_and_varmorctl_work_together() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut m = Manager::start(dir.path(), free_addr());
    copy_examples(&m);
    let (addr_a, addr_b) = (free_addr(), free_addr());
    let mut a = start_agent(dir.path(), &m, "node-a", addr_a, &[]);
    let mut b = start_agent(dir.path(), &m, "node-b", addr_b, &[]);

    // Both agents join and connect.
    let nodes = wait_for(Duration::from_secs(30), || {
        let (code, out, _) = varmorctl(&m, &["nodes"]);
        (code == 0 && out.lines().filter(|l| l.contains(" true ")).count() >= 2).then_some(out)
    });
    assert!(
        nodes.is_some(),
        "agents did not connect\nmanager:\n{}\nagent a:\n{}",
        m.proc.output(),
        a.output()
    );

    // The seccomp policy is enforced on both nodes; the BPF/AppArmor one cannot be on this
    // kernel, and the status says so instead of claiming success.
    let policies = wait_for(Duration::from_secs(30), || {
        let (_, out, _) = varmorctl(&m, &["policies", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        let ps = v["policies"].as_array()?.clone();
        let seccomp = ps
            .iter()
            .find(|p| p["profileName"] == "varmor-default-demo-seccomp")?;
        let web = ps
            .iter()
            .find(|p| p["profileName"] == "varmor-default-web")?;
        (seccomp["phase"] == "Protecting" && seccomp["ready"] == true && web["phase"] != "Pending")
            .then_some((seccomp.clone(), web.clone()))
    });
    let (seccomp, web) = policies.unwrap_or_else(|| {
        panic!(
            "policies did not settle: {}",
            varmorctl(&m, &["policies"]).1
        )
    });
    assert_eq!(
        (seccomp["desired"].as_u64(), seccomp["current"].as_u64()),
        (Some(2), Some(2)),
        "{seccomp}"
    );
    if std::fs::read_to_string("/sys/kernel/security/lsm").map_or(true, |l| !l.contains("apparmor"))
    {
        assert_eq!(web["phase"], "Error", "{web}");
        let msg = web["conditions"].to_string();
        assert!(msg.contains("node-a") && msg.contains("node-b"), "{msg}");
    }
    let (_, text, _) = varmorctl(&m, &["policies"]);
    assert!(
        text.contains("varmor-default-demo-seccomp") && text.contains("2/2"),
        "{text}"
    );

    // A new policy reaches both agents quickly.
    let new = std::fs::read_to_string(repo().join("deploy/standalone/demo-seccomp.yaml"))
        .expect("example")
        .replace("name: demo-seccomp", "name: added");
    let started = Instant::now();
    std::fs::write(m.policy_dir.join("added.yaml"), &new).expect("write policy");
    let arrived = wait_for(Duration::from_secs(10), || {
        let has = |addr| {
            held(&m, addr).is_some_and(|h| h.iter().any(|(p, _)| p == "varmor-default-added"))
        };
        (has(addr_a) && has(addr_b)).then_some(started.elapsed())
    });
    let latency = arrived.expect("the new policy did not reach both agents");
    eprintln!("new policy reached both agents {latency:?} after the file was written");
    assert!(latency < Duration::from_secs(3), "{latency:?}");
    let rev = held(&m, addr_a)
        .and_then(|h| h.into_iter().find(|(p, _)| p == "varmor-default-added"))
        .map(|(_, r)| r);

    // An invalid version keeps the previous one and the error is visible.
    std::fs::write(
        m.policy_dir.join("added.yaml"),
        new.replace("dirty-pipe-mitigation", "dirty-pipe-mitigatoin"),
    )
    .expect("write");
    let shown = wait_for(Duration::from_secs(10), || {
        let (_, out, _) = varmorctl(&m, &["policies"]);
        out.contains("dirty-pipe-mitigatoin").then_some(out)
    });
    let shown = shown.expect("the invalid file's error was not reported");
    assert!(shown.contains("vulMitigationRules[0]"), "{shown}");
    std::thread::sleep(Duration::from_millis(500));
    let still = held(&m, addr_a)
        .and_then(|h| h.into_iter().find(|(p, _)| p == "varmor-default-added"))
        .map(|(_, r)| r);
    assert_eq!(still, rev, "the last good version must stay in force");

    // Deleting the file removes the profile from the agents.
    std::fs::remove_file(m.policy_dir.join("added.yaml")).expect("remove");
    let gone = wait_for(Duration::from_secs(10), || {
        held(&m, addr_b)
            .is_some_and(|h| h.iter().all(|(p, _)| p != "varmor-default-added"))
            .then_some(())
    });
    assert!(gone.is_some(), "the removed policy is still held");

    // The event stream answers (no events yet).
    let (code, _, err) = varmorctl(&m, &["events", "--timeout", "1"]);
    assert_eq!(code, 0, "{err}");
    assert!(a.running() && b.running() && m.proc.running());
}
