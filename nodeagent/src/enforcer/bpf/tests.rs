//! The enforcer's bookkeeping over in-memory maps: slots, atomic switches, grace periods,
//! failures that keep the previous version, and adoption of pinned state.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use varmor_policy::proto::RevisedBundle;
use varmor_policy::{compile, parse_documents, NodeFacts, PolicyIdentity};

use super::kernel::{KernelError, KernelMaps, MemoryMaps};
use super::layout::*;
use super::*;
use crate::enforcer::ResultStatus;

/// Maps shared with the test, so it can look inside while the enforcer owns them.
#[derive(Debug, Clone, Default)]
struct Shared(Arc<Mutex<MemoryMaps>>);

impl KernelMaps for Shared {
    fn write_slot(
        &mut self,
        slot: u32,
        h: &Header,
        b: &[Value],
        m: &SlotMeta,
    ) -> Result<(), KernelError> {
        self.0.lock().expect("lock").write_slot(slot, h, b, m)
    }
    fn clear_slot(&mut self, slot: u32) -> Result<(), KernelError> {
        self.0.lock().expect("lock").clear_slot(slot)
    }
    fn set_container(&mut self, ns: u32, e: &ContainerEntry) -> Result<(), KernelError> {
        self.0.lock().expect("lock").set_container(ns, e)
    }
    fn remove_container(&mut self, ns: u32) -> Result<(), KernelError> {
        self.0.lock().expect("lock").remove_container(ns)
    }
    fn containers(&self) -> Result<Vec<(u32, ContainerEntry)>, KernelError> {
        self.0.lock().expect("lock").containers()
    }
    fn slots(&self) -> Result<Vec<(u32, Header, SlotMeta)>, KernelError> {
        self.0.lock().expect("lock").slots()
    }
}

fn bundle(name: &str, mode: &str, revision: u64) -> RevisedBundle {
    let yaml = format!(
        "apiVersion: crd.varmor.org/v1beta1\nkind: VarmorPolicy\nmetadata:\n  name: {name}\n  namespace: demo\nspec:\n  target:\n    kind: Deployment\n    name: web\n  policy:\n    enforcer: BPF\n    mode: {mode}\n{}",
        if mode == "EnhanceProtect" {
            "    enhanceProtect:\n      hardeningRules: [disable-cap-all]\n"
        } else {
            ""
        }
    );
    let doc = parse_documents(&yaml)
        .into_iter()
        .next()
        .expect("doc")
        .expect("valid");
    let bundle = compile(
        &doc.spec(),
        &PolicyIdentity::namespaced("demo", name),
        &NodeFacts::default(),
    )
    .expect("compile");
    RevisedBundle { bundle, revision }
}

fn container(ns: u32) -> ContainerInfo {
    ContainerInfo {
        id: format!("c{ns}"),
        mnt_ns_id: ns,
        pod_ips: vec!["10.0.0.9".parse().expect("ip")],
        ..Default::default()
    }
}

fn enforcer(grace: Duration) -> (BpfEnforcer, Shared) {
    let maps = Shared::default();
    (
        BpfEnforcer::with_maps(Box::new(maps.clone()), "test maps", grace),
        maps,
    )
}

#[tokio::test]
async fn apply_bind_update_switches_every_container_and_frees_the_old_slot() {
    let (e, maps) = enforcer(Duration::ZERO);
    let b1 = bundle("web", "RuntimeDefault", 1);
    let name = b1.bundle.profile_name.clone();
    assert_eq!(e.apply(&b1).await.status, ResultStatus::Applied);
    let first = e.slot_of(&name).expect("slot");
    for ns in [11, 12] {
        let o = e.bind(&container(ns), &name).await;
        assert_eq!(o.status, ResultStatus::Applied, "{o:?}");
    }
    {
        let m = maps.0.lock().expect("lock");
        assert_eq!(m.containers[&11].slot, first);
        assert_eq!(m.containers[&11].pod_v4, 0x0a00_0009);
        assert_eq!(m.slots[&first].2.name, name);
    }
    // The same tables again: nothing moves.
    let o = e.apply(&bundle("web", "RuntimeDefault", 2)).await;
    assert!(o.message.contains("unchanged"), "{o:?}");
    assert_eq!(e.slot_of(&name), Some(first));
    // Changed tables: a new slot, both containers switched, the old slot freed after grace.
    let mut b3 = bundle("web", "EnhanceProtect", 3);
    b3.bundle.profile_name = name.clone();
    let o = e.apply(&b3).await;
    assert_eq!(o.status, ResultStatus::Applied, "{o:?}");
    assert!(o.message.contains("2 containers switched"), "{o:?}");
    let second = e.slot_of(&name).expect("slot");
    assert_ne!(first, second);
    {
        let m = maps.0.lock().expect("lock");
        assert!(m.containers.values().all(|c| c.slot == second));
        assert_eq!(
            m.containers[&12].pod_v4, 0x0a00_0009,
            "pod addresses survive a switch"
        );
        assert!(
            m.slots.contains_key(&first),
            "the old version stays for its grace period"
        );
    }
    // The next call releases it (grace is zero here).
    let other = bundle("other", "RuntimeDefault", 1);
    e.apply(&other).await;
    let m = maps.0.lock().expect("lock");
    assert!(m.slots.values().filter(|s| s.2.name == name).count() == 1);
    assert_eq!(
        e.slot_of(&other.bundle.profile_name),
        Some(first),
        "the freed slot is reused"
    );
}

#[tokio::test]
async fn a_failed_load_keeps_the_previous_version() {
    let (e, maps) = enforcer(Duration::from_secs(60));
    let b1 = bundle("web", "RuntimeDefault", 1);
    let name = b1.bundle.profile_name.clone();
    e.apply(&b1).await;
    e.bind(&container(5), &name).await;
    let slot = e.slot_of(&name).expect("slot");
    maps.0.lock().expect("lock").fail_next_write = true;
    let mut b2 = bundle("web", "EnhanceProtect", 2);
    b2.bundle.profile_name = name.clone();
    let o = e.apply(&b2).await;
    assert_eq!(o.status, ResultStatus::Failed);
    assert!(o.message.contains("previous version stays"), "{o:?}");
    assert_eq!(e.slot_of(&name), Some(slot));
    assert_eq!(maps.0.lock().expect("lock").containers[&5].slot, slot);
    // A bundle without BPF rules is refused the same way.
    let mut b3 = b2.clone();
    b3.bundle.bpf = None;
    assert_eq!(e.apply(&b3).await.status, ResultStatus::Failed);
    assert_eq!(e.slot_of(&name), Some(slot));
}

#[tokio::test]
async fn remove_releases_containers_and_bind_needs_a_loaded_profile() {
    let (e, maps) = enforcer(Duration::ZERO);
    let b = bundle("web", "RuntimeDefault", 1);
    let name = b.bundle.profile_name.clone();
    let o = e.bind(&container(7), &name).await;
    assert_eq!(o.status, ResultStatus::Failed);
    assert!(o.message.contains("not loaded"), "{o:?}");
    e.apply(&b).await;
    let o = e.bind(&container(0), &name).await;
    assert!(o.message.contains("no mount namespace"), "{o:?}");
    e.bind(&container(7), &name).await;
    e.bind(&container(8), &name).await;
    assert_eq!(e.unbind(&container(8)).await.status, ResultStatus::Removed);
    assert_eq!(e.bound(), vec![(7, name.clone())]);
    let o = e.remove(&name).await;
    assert_eq!(o.status, ResultStatus::Removed);
    assert!(maps.0.lock().expect("lock").containers.is_empty());
    assert!(e.slot_of(&name).is_none());
    assert_eq!(e.remove(&name).await.status, ResultStatus::Removed);
}

#[tokio::test]
async fn adoption_takes_the_newest_version_and_drops_what_is_stale() {
    let (e, maps) = enforcer(Duration::ZERO);
    let b = bundle("web", "RuntimeDefault", 1);
    let name = b.bundle.profile_name.clone();
    e.apply(&b).await;
    e.bind(&container(21), &name).await;
    let old = e.slot_of(&name).expect("slot");
    // Simulate an agent that died in the middle of an update: a newer version is written but
    // container 21 still points at the old one; a container points at a slot nobody knows.
    let mut newer = maps.0.lock().expect("lock").slots[&old].clone();
    newer.0.generation += 10;
    newer.2.generation += 10;
    maps.0.lock().expect("lock").slots.insert(900, newer);
    maps.0
        .lock()
        .expect("lock")
        .containers
        .insert(22, ContainerEntry::new(700, &[]));
    drop(e);
    let e2 = BpfEnforcer::with_maps(Box::new(maps.clone()), "test maps", Duration::ZERO);
    let a = e2.adopt(None).expect("adopt");
    assert_eq!(a.profiles, vec![(name.clone(), 900)]);
    assert_eq!(a.containers, vec![(21, name.clone())]);
    assert_eq!(a.removed, 1);
    {
        let m = maps.0.lock().expect("lock");
        assert_eq!(m.containers[&21].slot, 900, "the switch is finished");
        assert!(
            !m.slots.contains_key(&old),
            "the superseded version is freed"
        );
    }
    // The adopted profile is recognised: applying the same tables changes nothing.
    let o = e2.apply(&b).await;
    assert!(o.message.contains("unchanged"), "{o:?}");
}

#[tokio::test]
async fn an_unavailable_enforcer_says_why() {
    let e = BpfEnforcer::unavailable("BPF-LSM is not active");
    assert!(!e.capability().available);
    let o = e.apply(&bundle("web", "RuntimeDefault", 1)).await;
    assert_eq!(o.status, ResultStatus::Unavailable);
    assert!(o.message.contains("not active"));
    assert!(e.take_events().is_none());
}

#[test]
fn namespace_links_parse() {
    assert_eq!(parse_ns_link("mnt:[4026531841]"), Some(4026531841));
    assert_eq!(parse_ns_link("net:[1]"), None);
}
