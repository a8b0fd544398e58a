//! The containers the agent sees and how each is bound to a profile.
//!
//! The binder ([`crate::binder`]) fills this registry from the container runtime watcher
//! ([`crate::runtime`]); `NodeState/ListContainers` reads it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use varmor_proto::v1;

/// The binding state of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    /// Confined by its profile.
    Bound,
    /// No profile selects it.
    Unbound,
    /// Its profile is not held (yet).
    Pending,
    /// Binding failed; the message says why.
    Failed,
}

impl Binding {
    /// The name shown in `ListContainers`.
    pub fn as_str(self) -> &'static str {
        match self {
            Binding::Bound => "Bound",
            Binding::Unbound => "Unbound",
            Binding::Pending => "Pending",
            Binding::Failed => "Failed",
        }
    }
}

/// A container as the runtime describes it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContainerInfo {
    /// The runtime's container id.
    pub id: String,
    /// The container name (in Kubernetes, the pod's container name).
    pub name: String,
    /// The image reference.
    pub image: String,
    /// The init process.
    pub pid: u32,
    /// The mount namespace id (the inode of `/proc/<pid>/ns/mnt`); BPF-LSM keys profiles by it.
    pub mnt_ns_id: u32,
    /// The pod, when the container belongs to one.
    pub pod_name: String,
    /// The pod's namespace.
    pub pod_namespace: String,
    /// The pod's UID.
    pub pod_uid: String,
    /// Container labels (standalone targets match them).
    pub labels: HashMap<String, String>,
    /// The containerd namespace (`k8s.io` for Kubernetes, `default` for `ctr`).
    pub runtime_namespace: String,
    /// The OCI annotations of the container's spec (CRI writes `io.kubernetes.cri.*` here).
    pub annotations: HashMap<String, String>,
    /// The pod's IP addresses (from CRI); empty outside a pod or with the host's network.
    pub pod_ips: Vec<std::net::IpAddr>,
}

/// A container and its binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerEntry {
    /// What the runtime says.
    pub info: ContainerInfo,
    /// The profile bound to it, if any.
    pub profile: Option<String>,
    /// The binding state.
    pub binding: Binding,
    /// Details of the binding state.
    pub message: String,
    /// Microseconds from the task start event to the binding.
    pub binding_latency_us: u64,
}

impl ContainerEntry {
    /// The `NodeState` message.
    pub fn to_proto(&self) -> v1::Container {
        let i = &self.info;
        v1::Container {
            id: i.id.clone(),
            name: i.name.clone(),
            image: i.image.clone(),
            pid: i.pid,
            mnt_ns_id: i.mnt_ns_id,
            pod_name: i.pod_name.clone(),
            pod_namespace: i.pod_namespace.clone(),
            pod_uid: i.pod_uid.clone(),
            labels: i.labels.clone(),
            profile_name: self.profile.clone().unwrap_or_default(),
            binding: self.binding.as_str().to_string(),
            binding_message: self.message.clone(),
            binding_latency_us: self.binding_latency_us,
        }
    }
}

/// The containers of the node, by id.
#[derive(Debug, Default)]
pub struct ContainerRegistry {
    containers: Mutex<BTreeMap<String, ContainerEntry>>,
    /// Counts changes, so readers that index the containers (event enrichment) know when to
    /// rebuild their index.
    generation: AtomicU64,
}

impl ContainerRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a container.
    pub fn upsert(&self, entry: ContainerEntry) {
        self.lock().insert(entry.info.id.clone(), entry);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Forgets a container; returns it.
    pub fn remove(&self, id: &str) -> Option<ContainerEntry> {
        let old = self.lock().remove(id);
        self.generation.fetch_add(1, Ordering::Release);
        old
    }

    /// Changes whenever a container is added, changed or removed.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// How many containers are bound to a profile now (without copying the registry).
    pub fn bound_count(&self) -> usize {
        self.lock()
            .values()
            .filter(|e| e.binding == Binding::Bound)
            .count()
    }

    /// Every container, ordered by id.
    pub fn list(&self) -> Vec<ContainerEntry> {
        self.lock().values().cloned().collect()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, ContainerEntry>> {
        self.containers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, binding: Binding) -> ContainerEntry {
        ContainerEntry {
            info: ContainerInfo {
                id: id.into(),
                ..Default::default()
            },
            profile: None,
            binding,
            message: String::new(),
            binding_latency_us: 0,
        }
    }

    #[test]
    fn bound_count_and_generation_follow_the_changes() {
        let r = ContainerRegistry::new();
        let g0 = r.generation();
        r.upsert(entry("a", Binding::Bound));
        r.upsert(entry("b", Binding::Pending));
        r.upsert(entry("c", Binding::Bound));
        assert_eq!(r.bound_count(), 2);
        assert!(r.generation() > g0);
        let g1 = r.generation();
        r.remove("a");
        assert_eq!(r.bound_count(), 1);
        assert!(r.generation() > g1);
    }
}
