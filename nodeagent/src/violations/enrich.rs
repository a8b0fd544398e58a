//! Enrichment: every event leaves the agent with the node, the container and its pod, the
//! profile and the policy it comes from.
//!
//! Sources know different things: a BPF event carries the mount namespace and the profile's
//! slot (hence the profile name), an AppArmor record the confining profile and the PID, a
//! seccomp record only the PID. The [`Enricher`] fills in the rest:
//!
//! * the mount namespace from `/proc/<pid>/ns/mnt` when the source only knows the PID (a
//!   process that already exited keeps the fields the source gave);
//! * the container (ID, name, image, pod UID/name/namespace) by mount namespace, from the
//!   [`ContainerRegistry`] the binder maintains;
//! * the profile from the container's binding when the source does not name it, and the
//!   policy (kind, name, namespace) from the held bundle of that profile. An AppArmor child
//!   profile (`parent//child`) belongs to its parent's policy.
//!
//! Lookups use indexes rebuilt only when the registry or the held profiles change, so the
//! cost per event is two hash lookups.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use varmor_proto::v1;

use crate::containers::{ContainerEntry, ContainerRegistry};
use crate::host::HostFs;
use crate::profiles::HeldProfiles;
use crate::runtime::containerd::mount_namespace;

/// What a container contributes to its events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct ContainerFields {
    id: String,
    name: String,
    image: String,
    pod_uid: String,
    pod_name: String,
    pod_namespace: String,
    profile: Option<String>,
}

impl ContainerFields {
    fn of(e: &ContainerEntry) -> Self {
        ContainerFields {
            id: e.info.id.clone(),
            name: e.info.name.clone(),
            image: e.info.image.clone(),
            pod_uid: e.info.pod_uid.clone(),
            pod_name: e.info.pod_name.clone(),
            pod_namespace: e.info.pod_namespace.clone(),
            profile: e.profile.clone(),
        }
    }
}

/// The policy of a profile.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct PolicyFields {
    kind: &'static str,
    name: String,
    namespace: String,
}

#[derive(Debug, Default)]
struct Indexes {
    containers_generation: Option<u64>,
    by_mnt_ns: HashMap<u32, ContainerFields>,
    profiles_generation: Option<u64>,
    policies: HashMap<String, PolicyFields>,
}

/// Fills in the node, container, pod, profile and policy fields of events.
#[derive(Debug)]
pub struct Enricher {
    node: String,
    host: HostFs,
    containers: Arc<ContainerRegistry>,
    profiles: Arc<HeldProfiles>,
    profile_changes: tokio::sync::watch::Receiver<u64>,
    indexes: Mutex<Indexes>,
    exited: Option<ExitedLookup>,
}

/// The mount namespace of a process that already exited (see [`crate::exits`]).
#[derive(Clone)]
pub struct ExitedLookup(pub Arc<dyn Fn(u32) -> Option<u32> + Send + Sync>);

impl std::fmt::Debug for ExitedLookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExitedLookup")
    }
}

/// The name of a policy kind in events (`policyKind` of violations.log).
pub fn policy_kind_name(kind: i32) -> &'static str {
    match v1::PolicyKind::try_from(kind) {
        Ok(v1::PolicyKind::VarmorClusterPolicy) => "VarmorClusterPolicy",
        _ => "VarmorPolicy",
    }
}

impl Enricher {
    /// An enricher for `node`, reading `/proc` under `host`.
    pub fn new(
        node: impl Into<String>,
        host: HostFs,
        containers: Arc<ContainerRegistry>,
        profiles: Arc<HeldProfiles>,
    ) -> Self {
        let profile_changes = profiles.subscribe();
        Enricher {
            node: node.into(),
            host,
            containers,
            profiles,
            profile_changes,
            indexes: Mutex::new(Indexes::default()),
            exited: None,
        }
    }

    /// Where to look for the mount namespace of a process `/proc` no longer knows.
    pub fn with_exited(mut self, lookup: ExitedLookup) -> Self {
        self.exited = Some(lookup);
        self
    }

    /// Fills in what `event` lacks. Fields the source set are kept, except the node name,
    /// which is always this node's.
    pub fn enrich(&self, event: &mut v1::Event) {
        event.node_name.clone_from(&self.node);
        if event.mnt_ns_id == 0 && event.pid != 0 {
            if let Ok(ns) = mount_namespace(&self.host, event.pid) {
                event.mnt_ns_id = ns;
            } else if let Some(ns) = self.exited.as_ref().and_then(|f| (f.0)(event.pid)) {
                event.mnt_ns_id = ns;
            }
        }
        let mut ix = self.indexes.lock().unwrap_or_else(PoisonError::into_inner);
        self.refresh(&mut ix);
        if let Some(c) = ix.by_mnt_ns.get(&event.mnt_ns_id) {
            fill(&mut event.container_id, &c.id);
            fill(&mut event.container_name, &c.name);
            fill(&mut event.image, &c.image);
            fill(&mut event.pod_uid, &c.pod_uid);
            fill(&mut event.pod_name, &c.pod_name);
            fill(&mut event.pod_namespace, &c.pod_namespace);
            if event.profile_name.is_empty() {
                if let Some(p) = &c.profile {
                    event.profile_name.clone_from(p);
                }
            }
        }
        // An AppArmor child profile belongs to its parent's policy.
        let profile = event
            .profile_name
            .split("//")
            .next()
            .unwrap_or_default()
            .to_string();
        if let Some(p) = ix.policies.get(&profile) {
            if event.policy_name.is_empty() {
                event.policy_kind = p.kind.to_string();
                event.policy_name.clone_from(&p.name);
                event.policy_namespace.clone_from(&p.namespace);
            }
        }
    }

    fn refresh(&self, ix: &mut Indexes) {
        let generation = self.containers.generation();
        if ix.containers_generation != Some(generation) {
            ix.by_mnt_ns = self
                .containers
                .list()
                .iter()
                .filter(|e| e.info.mnt_ns_id != 0)
                .map(|e| (e.info.mnt_ns_id, ContainerFields::of(e)))
                .collect();
            ix.containers_generation = Some(generation);
        }
        let generation = *self.profile_changes.borrow();
        if ix.profiles_generation != Some(generation) {
            ix.policies = self
                .profiles
                .list()
                .into_iter()
                .filter_map(|h| h.bundle)
                .map(|b| {
                    let id = b.identity.unwrap_or_default();
                    (
                        b.profile_name,
                        PolicyFields {
                            kind: policy_kind_name(id.kind),
                            name: id.name,
                            namespace: id.namespace,
                        },
                    )
                })
                .collect();
            ix.profiles_generation = Some(generation);
        }
    }
}

fn fill(field: &mut String, value: &str) {
    if field.is_empty() {
        field.push_str(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::containers::{Binding, ContainerInfo};

    fn registry_with(mnt_ns: u32, profile: Option<&str>) -> Arc<ContainerRegistry> {
        let r = Arc::new(ContainerRegistry::new());
        r.upsert(ContainerEntry {
            info: ContainerInfo {
                id: "c1".into(),
                name: "web".into(),
                image: "docker.io/library/busybox:latest".into(),
                pid: 4242,
                mnt_ns_id: mnt_ns,
                pod_name: "web-0".into(),
                pod_namespace: "demo".into(),
                pod_uid: "uid-1".into(),
                ..Default::default()
            },
            profile: profile.map(str::to_string),
            binding: Binding::Bound,
            message: String::new(),
            binding_latency_us: 0,
        });
        r
    }

    fn profiles_with(
        profile: &str,
        kind: v1::PolicyKind,
    ) -> (tempfile::TempDir, Arc<HeldProfiles>) {
        let dir = tempfile::tempdir().unwrap();
        let held = HeldProfiles::load(dir.path().to_path_buf()).unwrap();
        held.put(
            profile,
            v1::HeldBundle {
                bundle: Some(v1::ProfileBundle {
                    profile_name: profile.into(),
                    identity: Some(v1::PolicyIdentity {
                        kind: kind as i32,
                        namespace: "demo".into(),
                        name: "web-policy".into(),
                    }),
                    revision: 1,
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .unwrap();
        (dir, Arc::new(held))
    }

    #[test]
    fn a_bpf_event_gets_its_container_pod_and_policy() {
        let (_d, profiles) = profiles_with("varmor-demo-web-policy", v1::PolicyKind::VarmorPolicy);
        let e = Enricher::new(
            "node-a",
            HostFs::new("/nonexistent-host"),
            registry_with(4026532000, Some("varmor-demo-web-policy")),
            profiles,
        );
        let mut ev = v1::Event {
            mnt_ns_id: 4026532000,
            pid: 77,
            profile_name: "varmor-demo-web-policy".into(),
            ..Default::default()
        };
        e.enrich(&mut ev);
        assert_eq!(ev.node_name, "node-a");
        assert_eq!(ev.container_id, "c1");
        assert_eq!(ev.container_name, "web");
        assert_eq!(ev.image, "docker.io/library/busybox:latest");
        assert_eq!(
            (
                ev.pod_uid.as_str(),
                ev.pod_name.as_str(),
                ev.pod_namespace.as_str()
            ),
            ("uid-1", "web-0", "demo")
        );
        assert_eq!(ev.policy_kind, "VarmorPolicy");
        assert_eq!(ev.policy_name, "web-policy");
        assert_eq!(ev.policy_namespace, "demo");
    }

    #[test]
    fn a_seccomp_record_takes_the_profile_of_the_container_and_child_profiles_their_parent() {
        let (_d, profiles) = profiles_with(
            "varmor-cluster-demo-web-policy",
            v1::PolicyKind::VarmorClusterPolicy,
        );
        let containers = registry_with(99, Some("varmor-cluster-demo-web-policy"));
        let e = Enricher::new(
            "node-a",
            HostFs::new("/nonexistent-host"),
            containers.clone(),
            profiles,
        );
        let mut ev = v1::Event {
            mnt_ns_id: 99,
            ..Default::default()
        };
        e.enrich(&mut ev);
        assert_eq!(ev.profile_name, "varmor-cluster-demo-web-policy");
        assert_eq!(ev.policy_kind, "VarmorClusterPolicy");

        let mut child = v1::Event {
            profile_name: "varmor-cluster-demo-web-policy//curl".into(),
            ..Default::default()
        };
        e.enrich(&mut child);
        assert_eq!(child.profile_name, "varmor-cluster-demo-web-policy//curl");
        assert_eq!(child.policy_name, "web-policy");
        assert!(
            child.container_id.is_empty(),
            "no container has namespace 0"
        );

        // A container that goes away is no longer found (the index follows the registry).
        containers.remove("c1");
        let mut later = v1::Event {
            mnt_ns_id: 99,
            ..Default::default()
        };
        e.enrich(&mut later);
        assert!(later.container_id.is_empty());
    }

    #[test]
    fn a_process_that_exited_is_found_through_the_exit_lookup() {
        // PID 0x7fff_fff0 has no /proc entry (above pid_max).
        let gone = 0x7fff_fff0;
        let (_d, profiles) = profiles_with("varmor-demo-x", v1::PolicyKind::VarmorPolicy);
        let e = Enricher::new("n", HostFs::new("/"), registry_with(99, None), profiles)
            .with_exited(ExitedLookup(Arc::new(move |pid| {
                (pid == gone).then_some(99)
            })));
        let mut ev = v1::Event {
            pid: gone,
            ..Default::default()
        };
        e.enrich(&mut ev);
        assert_eq!(ev.mnt_ns_id, 99);
        assert_eq!(ev.container_id, "c1");
        let mut other = v1::Event {
            pid: gone - 1,
            ..Default::default()
        };
        e.enrich(&mut other);
        assert_eq!(other.mnt_ns_id, 0);
        assert!(other.container_id.is_empty());
    }

    #[test]
    fn the_mount_namespace_is_read_from_proc_when_only_the_pid_is_known() {
        let ns = mount_namespace(&HostFs::new("/"), std::process::id()).unwrap();
        let (_d, profiles) = profiles_with("varmor-demo-x", v1::PolicyKind::VarmorPolicy);
        let e = Enricher::new("n", HostFs::new("/"), registry_with(ns, None), profiles);
        let mut ev = v1::Event {
            pid: std::process::id(),
            ..Default::default()
        };
        e.enrich(&mut ev);
        assert_eq!(ev.mnt_ns_id, ns);
        assert_eq!(ev.container_id, "c1");
        assert!(ev.profile_name.is_empty(), "the container is not bound");
    }
}
