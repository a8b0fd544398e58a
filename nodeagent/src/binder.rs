//! Binding containers to profiles.
//!
//! The binder owns the node's container bindings. Its inputs are the runtime watcher's events
//! ([`RuntimeEvent`]: the running containers at start and after every reconnection, each task
//! start and exit) and every change of the held bundles; for each container it computes a
//! [`Plan`] (a pure function of the container and the held profiles), and makes the
//! enforcers' bindings match it: [`Enforcer::bind`](crate::Enforcer::bind) for each enforcer
//! of the profile that loaded it, [`Enforcer::unbind`](crate::Enforcer::unbind) when the
//! container exits or the profile no longer selects it. So:
//!
//! * a container that starts is bound on its `/tasks/start` event;
//! * a bundle that arrives after the container started binds it too (vArmor misses this), a
//!   removed bundle unbinds it, a changed bundle whose target no longer selects it unbinds it
//!   (and a container the new target selects is bound); containers that stay selected are not
//!   touched (no unbind/bind gap). Updating the rules of bound containers is the enforcer's
//!   `apply`;
//! * an exit unbinds at once (not at task delete): the kernel may reuse the mount namespace id.
//!
//! Which profile, by [`Mode`]:
//! * **Kubernetes** ([`kubernetes_selection`]): the pod annotations the webhook writes, as
//!   vArmor reads them;
//! * **standalone** ([`target_matches`]): each bundle's target against the container.
//!
//! # Binding latency, the window, and where a hook plugs in
//!
//! For every container bound on its start event the binder records the time from the event's
//! timestamp to the completed bind ([`LatencyStats`], and `binding_latency_us` in
//! `ListContainers`; containers found running, or bound because a bundle arrived later, have
//! no start to measure from and show 0). The path is short and does not poll: the watcher
//! inspects a task on `/tasks/create` already, so on `/tasks/start` only the bind remains;
//! what is left is mostly containerd's event delivery (about 1–4 ms on the test host, of 1–5 ms
//! in all).
//!
//! The event is published by containerd's shim after `runc start` returned, so the
//! container's process has already been running for a moment when the timestamp is taken: the
//! measured latency is a lower bound of the unconfined window, and no event can close it. (Nor
//! can binding on `/tasks/create`: vArmor tried, and its mount rules then hit runc's own setup,
//! its issue #97.) To close the window, a runtime hook must bind *before* the process runs and
//! make the runtime wait: an NRI plugin's `StartContainer` (or `PostCreateContainer`: the init
//! process exists in its mount namespace, blocked until start) or an OCI `startContainer` hook.
//! Such a hook builds an [`Observed`] for the container (as the watcher's `inspect` does) and
//! calls [`BinderHandle::bind_now`], which returns once the enforcers bound it; the
//! `/tasks/start` event for the same process that follows is then a no-op.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Instant, SystemTime};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use varmor_policy::api::Target;
use varmor_proto::v1;

use crate::apply::Applier;
use crate::config::BackoffConfig;
use crate::containers::{Binding, ContainerEntry, ContainerInfo, ContainerRegistry};
use crate::enforcer::{EnforcerKind, ResultStatus};
use crate::host::HostFs;
use crate::runtime::{Mode, Observed, Pod, RuntimeConfig, RuntimeEvent, Watcher};

/// How many recent latencies the quantiles are computed from.
const RECENT: usize = 4096;

/// Binding latencies: running totals, a log2 histogram, and the recent samples for quantiles.
/// (The Prometheus exporter reads [`LatencyStats::summary`] and [`LatencyStats::histogram`].)
#[derive(Debug, Default)]
pub struct LatencyStats {
    inner: Mutex<LatencyInner>,
    /// Also observed into the Prometheus histogram, once the agent set it.
    metrics: std::sync::OnceLock<crate::metrics::AgentMetrics>,
}

#[derive(Debug, Default)]
struct LatencyInner {
    count: u64,
    sum_us: u64,
    min_us: u64,
    max_us: u64,
    /// `buckets[i]` counts latencies below 2^i µs (and at least 2^(i-1)); the last is the rest.
    buckets: [u64; 32],
    recent: VecDeque<u64>,
}

/// A summary of binding latencies, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LatencySummary {
    /// How many bindings were measured.
    pub count: u64,
    /// The smallest.
    pub min_us: u64,
    /// The median of the recent ones.
    pub p50_us: u64,
    /// The 90th percentile of the recent ones.
    pub p90_us: u64,
    /// The 99th percentile of the recent ones.
    pub p99_us: u64,
    /// The largest.
    pub max_us: u64,
    /// The mean.
    pub mean_us: u64,
}

impl LatencyStats {
    /// Records one latency.
    pub fn record(&self, us: u64) {
        if let Some(m) = self.metrics.get() {
            m.binding_latency(std::time::Duration::from_micros(us));
        }
        let mut s = self.lock();
        s.min_us = if s.count == 0 { us } else { s.min_us.min(us) };
        s.max_us = s.max_us.max(us);
        s.count += 1;
        s.sum_us = s.sum_us.saturating_add(us);
        let bucket = (u64::BITS - us.leading_zeros()).min(31) as usize;
        s.buckets[bucket] += 1;
        if s.recent.len() == RECENT {
            s.recent.pop_front();
        }
        s.recent.push_back(us);
    }

    /// Also records every later latency in `metrics` (`varmor_agent_binding_latency_seconds`);
    /// only the first call has an effect.
    pub fn observe_into(&self, metrics: crate::metrics::AgentMetrics) {
        let _ = self.metrics.set(metrics);
    }

    /// The totals and the quantiles of the recent latencies.
    pub fn summary(&self) -> LatencySummary {
        let s = self.lock();
        let mut recent: Vec<u64> = s.recent.iter().copied().collect();
        recent.sort_unstable();
        let q = |p: usize| {
            if recent.is_empty() {
                0
            } else {
                recent[(recent.len() - 1) * p / 100]
            }
        };
        LatencySummary {
            count: s.count,
            min_us: s.min_us,
            p50_us: q(50),
            p90_us: q(90),
            p99_us: q(99),
            max_us: s.max_us,
            mean_us: s.sum_us.checked_div(s.count).unwrap_or(0),
        }
    }

    /// The histogram: (upper bound in µs, exclusive; count) per non-empty bucket, the last
    /// bucket's bound being `u64::MAX`.
    pub fn histogram(&self) -> Vec<(u64, u64)> {
        let s = self.lock();
        s.buckets
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(i, n)| (if i == 31 { u64::MAX } else { 1u64 << i }, *n))
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, LatencyInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Whether `target` selects container `c` in standalone mode (a pure function).
///
/// * `selector`: Kubernetes label-selector semantics against the container's labels (every
///   `matchLabels` pair, and every `matchExpressions` requirement: `In`, `NotIn`, `Exists`,
///   `DoesNotExist`; an unknown operator selects nothing; an empty selector selects all);
/// * `name`: the container's workload name, which is its pod name (label
///   `io.kubernetes.pod.name`) when it has one, else its container name;
/// * `containers`: when not empty, the container name must be listed. The container name is
///   the first of the labels `io.kubernetes.container.name`, `nerdctl/name`, `name`, else the
///   container id (see [`crate::runtime::containerd::container_info`]).
///
/// A target with neither a name nor a selector selects nothing. `kind` and the policy's
/// namespace are not checked: a standalone host has no workloads nor Kubernetes namespaces.
pub fn target_matches(target: &Target, c: &ContainerInfo) -> bool {
    let selected = match (&target.name, &target.selector) {
        (Some(name), _) => {
            let workload = if c.pod_name.is_empty() {
                &c.name
            } else {
                &c.pod_name
            };
            name == workload
                && target
                    .selector
                    .as_ref()
                    .is_none_or(|s| selector_matches(s, &c.labels))
        }
        (None, Some(selector)) => selector_matches(selector, &c.labels),
        (None, None) => false,
    };
    selected && (target.containers.is_empty() || target.containers.contains(&c.name))
}

/// Kubernetes label-selector semantics over `labels`.
pub fn selector_matches(selector: &LabelSelector, labels: &HashMap<String, String>) -> bool {
    let pairs = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let expressions = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    pairs && expressions
}

/// The annotation prefixes that name a container's profile, in the order vArmor reads them,
/// with the enforcer each one is for.
pub const PROFILE_ANNOTATIONS: [(EnforcerKind, &str); 4] = [
    (EnforcerKind::Bpf, "container.bpf.security.beta.varmor.org/"),
    (
        EnforcerKind::AppArmor,
        "container.apparmor.security.beta.kubernetes.io/",
    ),
    (
        EnforcerKind::AppArmor,
        "container.apparmor.security.beta.varmor.org/",
    ),
    (
        EnforcerKind::Seccomp,
        "container.seccomp.security.beta.varmor.org/",
    ),
];

/// What a pod's annotations say about one of its containers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KubeSelection {
    /// The profile: the first `localhost/varmor-…` value among [`PROFILE_ANNOTATIONS`].
    pub profile: Option<String>,
    /// The enforcers whose annotation names that profile.
    pub enforcers: BTreeSet<EnforcerKind>,
    /// The enforcers opted out with the value `unconfined`.
    pub unconfined: BTreeSet<EnforcerKind>,
}

/// The profile the webhook's pod annotations name for `container` (a pure function).
///
/// As vArmor: the first annotation of [`PROFILE_ANNOTATIONS`] (for this container) whose value
/// starts with `localhost/` names the profile. Unlike vArmor, only varmor profile names
/// (`varmor-…`) count, so a container with its own AppArmor profile is not shown waiting for a
/// varmor bundle that never comes. The value `unconfined` opts the container out of that
/// enforcer; an enforcer is bound only when its own annotation names the profile (the BPF
/// enforcer reads only the BPF annotation, as in vArmor).
pub fn kubernetes_selection(
    annotations: &BTreeMap<String, String>,
    container: &str,
) -> KubeSelection {
    let mut s = KubeSelection::default();
    let values: Vec<(EnforcerKind, &str)> = PROFILE_ANNOTATIONS
        .iter()
        .filter_map(|(kind, prefix)| {
            annotations
                .get(&format!("{prefix}{container}"))
                .map(|v| (*kind, v.as_str()))
        })
        .collect();
    for (kind, value) in &values {
        if *value == "unconfined" {
            s.unconfined.insert(*kind);
        }
    }
    s.profile = values.iter().find_map(|(_, v)| {
        v.strip_prefix("localhost/")
            .filter(|p| p.starts_with("varmor-"))
            .map(str::to_string)
    });
    if let Some(profile) = &s.profile {
        for (kind, value) in &values {
            if value.strip_prefix("localhost/") == Some(profile.as_str())
                && !s.unconfined.contains(kind)
            {
                s.enforcers.insert(*kind);
            }
        }
    }
    s
}

/// A held profile as the binder needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileView {
    /// The profile name.
    pub name: String,
    /// The bundle's revision.
    pub revision: u64,
    /// From a VarmorClusterPolicy (these win over namespaced ones, as in vArmor's webhook).
    pub cluster: bool,
    /// The target; `None` when the bundle's target cannot be read (it then selects nothing).
    pub target: Option<Target>,
    /// Each enforcer of the profile: `Ok` when it loaded the profile, else why not.
    pub enforcers: BTreeMap<EnforcerKind, Result<(), String>>,
}

impl ProfileView {
    /// The view of a held bundle.
    pub fn from_held(held: &v1::HeldBundle) -> Option<ProfileView> {
        let b = held.bundle.as_ref()?;
        let enforcers = EnforcerKind::ALL
            .into_iter()
            .filter(|k| k.is_in_proto(b.enforcers.as_ref()))
            .map(|k| {
                let result = held
                    .results
                    .iter()
                    .find(|r| r.enforcer == k.to_proto() as i32);
                let loaded = match result {
                    Some(r)
                        if r.status == ResultStatus::Applied.to_proto() as i32
                            || r.status == ResultStatus::NeedsRestart.to_proto() as i32 =>
                    {
                        Ok(())
                    }
                    Some(r) => Err(format!(
                        "not loaded ({}: {})",
                        v1::ResultStatus::try_from(r.status).map_or("UNKNOWN", |s| s.as_str_name()),
                        r.message
                    )),
                    None => Err("not loaded (no result)".to_string()),
                };
                (k, loaded)
            })
            .collect();
        Some(ProfileView {
            name: b.profile_name.clone(),
            revision: b.revision,
            cluster: b
                .identity
                .as_ref()
                .is_some_and(|i| i.kind == v1::PolicyKind::VarmorClusterPolicy as i32),
            target: b.target.clone().and_then(|t| Target::try_from(t).ok()),
            enforcers,
        })
    }
}

/// What a container's binding should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// No profile selects it; why.
    Unbound(String),
    /// Its profile is not held (yet).
    Pending {
        /// The profile.
        profile: String,
        /// Why it waits.
        reason: String,
    },
    /// Bind it with these enforcers.
    Bind {
        /// The profile.
        profile: String,
        /// The enforcers to bind with (each loaded the profile).
        enforcers: BTreeSet<EnforcerKind>,
        /// Things to tell (enforcers that did not load the profile, other matching profiles).
        notes: Vec<String>,
    },
    /// It cannot be bound; why.
    Fail {
        /// The profile, when known.
        profile: Option<String>,
        /// Why.
        reason: String,
    },
}

/// The binding of container `o` given the held profiles (a pure function).
pub fn plan(mode: Mode, o: &Observed, profiles: &BTreeMap<String, ProfileView>) -> Plan {
    match mode {
        Mode::Kubernetes => {
            let pod = match &o.pod {
                Pod::Found(p) => p,
                Pod::Unknown(why) => {
                    return Plan::Fail {
                        profile: None,
                        reason: why.clone(),
                    }
                }
                Pod::None => return Plan::Unbound("not a container of a Kubernetes pod".into()),
            };
            let s = kubernetes_selection(&pod.annotations, &o.info.name);
            let Some(profile) = s.profile else {
                return Plan::Unbound(if s.unconfined.is_empty() {
                    "no varmor profile annotation for this container".into()
                } else {
                    format!("opted out ({} unconfined)", kinds(&s.unconfined))
                });
            };
            let Some(view) = profiles.get(&profile) else {
                return Plan::Pending {
                    reason: format!("profile {profile} is not held on this node yet"),
                    profile,
                };
            };
            let wanted: BTreeSet<EnforcerKind> = s
                .enforcers
                .iter()
                .copied()
                .filter(|k| view.enforcers.contains_key(k))
                .collect();
            let mut notes: Vec<String> = s
                .unconfined
                .iter()
                .map(|k| format!("{k}: opted out (unconfined)"))
                .collect();
            if wanted.is_empty() {
                return Plan::Fail {
                    reason: format!(
                        "the annotations name {profile} for {}, which it does not use",
                        kinds(&s.enforcers)
                    ),
                    profile: Some(profile),
                };
            }
            bind_plan(view, &wanted, &mut notes)
        }
        Mode::Standalone => {
            let mut matching: Vec<&ProfileView> = profiles
                .values()
                .filter(|p| {
                    p.target
                        .as_ref()
                        .is_some_and(|t| target_matches(t, &o.info))
                })
                .collect();
            // As vArmor's webhook: cluster policies first; then a stable order.
            matching.sort_by(|a, b| b.cluster.cmp(&a.cluster).then(a.name.cmp(&b.name)));
            let Some(view) = matching.first() else {
                return Plan::Unbound("no policy selects this container".into());
            };
            let mut notes = Vec::new();
            if matching.len() > 1 {
                notes.push(format!(
                    "also selected by {} (the first match wins)",
                    matching[1..]
                        .iter()
                        .map(|p| p.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            let wanted = view.enforcers.keys().copied().collect();
            bind_plan(view, &wanted, &mut notes)
        }
    }
}

fn bind_plan(view: &ProfileView, wanted: &BTreeSet<EnforcerKind>, notes: &mut Vec<String>) -> Plan {
    let mut enforcers = BTreeSet::new();
    let mut not_loaded = Vec::new();
    for k in wanted {
        match view.enforcers.get(k) {
            Some(Ok(())) => {
                enforcers.insert(*k);
            }
            Some(Err(why)) => not_loaded.push(format!("{k}: {why}")),
            None => {}
        }
    }
    if enforcers.is_empty() {
        return Plan::Fail {
            profile: Some(view.name.clone()),
            reason: not_loaded.join("; "),
        };
    }
    notes.splice(0..0, not_loaded);
    Plan::Bind {
        profile: view.name.clone(),
        enforcers,
        notes: std::mem::take(notes),
    }
}

fn kinds(set: &BTreeSet<EnforcerKind>) -> String {
    set.iter()
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A container the binder follows.
#[derive(Debug)]
struct Tracked {
    observed: Observed,
    /// The profile the bound enforcers hold the container for.
    profile: Option<String>,
    bound: BTreeSet<EnforcerKind>,
    binding: Binding,
    message: String,
    latency_us: u64,
}

impl Tracked {
    fn entry(&self) -> ContainerEntry {
        ContainerEntry {
            info: self.observed.info.clone(),
            profile: self.profile.clone(),
            binding: self.binding,
            message: self.message.clone(),
            binding_latency_us: self.latency_us,
        }
    }
}

type Key = (String, String);

/// A request of a runtime hook: bind this container now and answer when done.
type HookRequest = (Observed, SystemTime, oneshot::Sender<ContainerEntry>);

/// A handle on a running binder.
#[derive(Debug, Clone)]
pub struct BinderHandle {
    hooks: mpsc::Sender<HookRequest>,
    stats: Arc<LatencyStats>,
}

impl BinderHandle {
    /// The binding latencies.
    pub fn stats(&self) -> &Arc<LatencyStats> {
        &self.stats
    }

    /// Binds a container that is about to start (from a runtime hook: NRI, OCI hook), and
    /// returns its entry once the enforcers bound it. `None` when the binder stopped.
    pub async fn bind_now(&self, container: Observed, at: SystemTime) -> Option<ContainerEntry> {
        let (tx, rx) = oneshot::channel();
        self.hooks.send((container, at, tx)).await.ok()?;
        rx.await.ok()
    }
}

/// The binder task's state.
#[derive(Debug)]
pub struct Binder {
    node: String,
    mode: Mode,
    applier: Arc<Applier>,
    registry: Arc<ContainerRegistry>,
    stats: Arc<LatencyStats>,
    profiles: BTreeMap<String, ProfileView>,
    tracked: HashMap<Key, Tracked>,
    events: mpsc::Receiver<RuntimeEvent>,
    hooks: mpsc::Receiver<HookRequest>,
}

impl Binder {
    /// A binder; the runtime watcher sends to the returned sender.
    pub fn new(
        node: impl Into<String>,
        mode: Mode,
        applier: Arc<Applier>,
        registry: Arc<ContainerRegistry>,
    ) -> (Binder, BinderHandle, mpsc::Sender<RuntimeEvent>) {
        let (events_tx, events) = mpsc::channel(1024);
        let (hooks_tx, hooks) = mpsc::channel(64);
        let stats = Arc::new(LatencyStats::default());
        (
            Binder {
                node: node.into(),
                mode,
                applier,
                registry,
                stats: stats.clone(),
                profiles: BTreeMap::new(),
                tracked: HashMap::new(),
                events,
                hooks,
            },
            BinderHandle {
                hooks: hooks_tx,
                stats,
            },
            events_tx,
        )
    }

    /// Runs until `shutdown` turns true or the runtime watcher stops. Bindings stay in place
    /// when the agent stops (enforcement must not lapse over an agent restart).
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut changes = self.applier.profiles().subscribe();
        changes.mark_changed();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.changed() => return,
                // Profile changes first: a start event handled after them sees the new bundles.
                r = changes.changed() => {
                    if r.is_err() {
                        return;
                    }
                    self.refresh_profiles();
                    self.reconcile_all().await;
                }
                request = self.hooks.recv() => {
                    let Some((container, at, reply)) = request else { continue };
                    let key = container.key();
                    self.started(container, Some(at)).await;
                    if let Some(t) = self.tracked.get(&key) {
                        let _ = reply.send(t.entry());
                    }
                }
                event = self.events.recv() => {
                    let Some(event) = event else { return };
                    self.handle(event).await;
                }
            }
        }
    }

    async fn handle(&mut self, event: RuntimeEvent) {
        match event {
            RuntimeEvent::Listed(containers) => {
                let listed: BTreeSet<Key> = containers.iter().map(Observed::key).collect();
                let gone: Vec<Key> = self
                    .tracked
                    .keys()
                    .filter(|k| !listed.contains(*k))
                    .cloned()
                    .collect();
                for key in gone {
                    self.exited(&key).await;
                }
                for c in containers {
                    self.started(c, None).await;
                }
            }
            RuntimeEvent::Started { container, at } => self.started(*container, Some(at)).await,
            RuntimeEvent::Exited { namespace, id } => self.exited(&(namespace, id)).await,
        }
    }

    fn refresh_profiles(&mut self) {
        self.profiles = self
            .applier
            .profiles()
            .list()
            .iter()
            .filter_map(ProfileView::from_held)
            .map(|v| (v.name.clone(), v))
            .collect();
    }

    async fn started(&mut self, container: Observed, at: Option<SystemTime>) {
        let key = container.key();
        if let Some(t) = self.tracked.get_mut(&key) {
            if t.observed.info.pid == container.info.pid {
                // Seen already (a listing and an event overlap, or a hook and its event).
                // Newer facts (a pod that CRI could not give before) are taken.
                if t.observed != container {
                    t.observed = container;
                    self.reconcile(&key).await;
                }
                return;
            }
            // The same id with another process: the old one is gone.
            self.exited(&key).await;
        }
        let received = Instant::now();
        self.tracked.insert(
            key.clone(),
            Tracked {
                observed: container,
                profile: None,
                bound: BTreeSet::new(),
                binding: Binding::Pending,
                message: String::new(),
                latency_us: 0,
            },
        );
        self.reconcile(&key).await;
        let Some(t) = self.tracked.get_mut(&key) else {
            return;
        };
        if let (Some(at), Binding::Bound) = (at, t.binding) {
            let latency = SystemTime::now().duration_since(at).unwrap_or_default();
            t.latency_us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
            self.stats.record(t.latency_us);
            self.registry.upsert(t.entry());
            tracing::info!(
                node = self.node,
                container = t.observed.info.id,
                profile = t.profile.as_deref().unwrap_or_default(),
                latency_us = t.latency_us,
                bind_us = u64::try_from(received.elapsed().as_micros()).unwrap_or(u64::MAX),
                "container bound on start"
            );
        }
    }

    async fn exited(&mut self, key: &Key) {
        let Some(mut t) = self.tracked.remove(key) else {
            return;
        };
        let all = t.bound.clone();
        self.unbind(&mut t, &all).await;
        self.registry.remove(&t.observed.info.id);
        tracing::debug!(
            node = self.node,
            container = t.observed.info.id,
            "container gone"
        );
    }

    async fn reconcile_all(&mut self) {
        let keys: Vec<Key> = self.tracked.keys().cloned().collect();
        for key in keys {
            self.reconcile(&key).await;
        }
    }

    /// Makes the container's bindings follow its plan.
    async fn reconcile(&mut self, key: &Key) {
        let Some(mut t) = self.tracked.remove(key) else {
            return;
        };
        let plan = plan(self.mode, &t.observed, &self.profiles);
        let (profile, wanted) = match &plan {
            Plan::Bind {
                profile, enforcers, ..
            } => (Some(profile.clone()), enforcers.clone()),
            Plan::Pending { profile, .. } => (Some(profile.clone()), BTreeSet::new()),
            Plan::Fail { profile, .. } => (profile.clone(), BTreeSet::new()),
            Plan::Unbound(_) => (None, BTreeSet::new()),
        };
        let release: BTreeSet<EnforcerKind> = if t.profile == profile {
            t.bound.difference(&wanted).copied().collect()
        } else {
            t.bound.clone()
        };
        self.unbind(&mut t, &release).await;
        t.profile = profile;
        let mut failures = Vec::new();
        let mut bound_now = Vec::new();
        if let Some(profile) = t.profile.clone() {
            for kind in wanted.difference(&t.bound.clone()) {
                let Some(enforcer) = self.applier.enforcers().get(*kind) else {
                    failures.push(format!("{kind}: this agent has no {kind} enforcer"));
                    continue;
                };
                let outcome = enforcer.bind(&t.observed.info, &profile).await;
                if outcome.status == ResultStatus::Applied {
                    t.bound.insert(*kind);
                    bound_now.push(*kind);
                    tracing::debug!(
                        node = self.node,
                        container = t.observed.info.id,
                        profile,
                        enforcer = kind.as_str(),
                        message = outcome.message,
                        "bound"
                    );
                } else {
                    tracing::warn!(
                        node = self.node,
                        container = t.observed.info.id,
                        profile,
                        enforcer = kind.as_str(),
                        status = outcome.status.as_str(),
                        message = outcome.message,
                        "bind failed"
                    );
                    failures.push(format!("{kind}: {}", outcome.message));
                }
            }
        }
        let (binding, message) = match plan {
            Plan::Bind { notes, .. } => {
                let mut parts = Vec::new();
                if failures.is_empty() {
                    parts.push(format!("bound by {}", kinds(&t.bound)));
                } else {
                    parts.push(format!("bind failed: {}", failures.join("; ")));
                    if !t.bound.is_empty() {
                        parts.push(format!("bound by {}", kinds(&t.bound)));
                    }
                }
                parts.extend(notes);
                let state = if failures.is_empty() {
                    Binding::Bound
                } else {
                    Binding::Failed
                };
                (state, parts.join("; "))
            }
            Plan::Pending { reason, .. } => (Binding::Pending, reason),
            Plan::Fail { reason, .. } => (Binding::Failed, reason),
            Plan::Unbound(reason) => (Binding::Unbound, reason),
        };
        if (binding, &message) != (t.binding, &t.message) {
            let container = t.observed.info.id.as_str();
            let profile = t.profile.as_deref().unwrap_or_default();
            if binding == Binding::Failed {
                tracing::warn!(
                    node = self.node,
                    container,
                    profile,
                    binding = binding.as_str(),
                    message,
                    "container binding"
                );
            } else {
                tracing::info!(
                    node = self.node,
                    container,
                    profile,
                    binding = binding.as_str(),
                    message,
                    "container binding"
                );
            }
        }
        t.binding = binding;
        t.message = message;
        if binding != Binding::Bound {
            t.latency_us = 0;
        }
        self.registry.upsert(t.entry());
        self.tracked.insert(key.clone(), t);
    }

    async fn unbind(&self, t: &mut Tracked, kinds: &BTreeSet<EnforcerKind>) {
        for kind in kinds {
            t.bound.remove(kind);
            let Some(enforcer) = self.applier.enforcers().get(*kind) else {
                continue;
            };
            let outcome = enforcer.unbind(&t.observed.info).await;
            tracing::debug!(
                node = self.node,
                container = t.observed.info.id,
                profile = t.profile.as_deref().unwrap_or_default(),
                enforcer = kind.as_str(),
                status = outcome.status.as_str(),
                message = outcome.message,
                "unbound"
            );
        }
    }
}

/// Starts the binder and the containerd watcher that feeds it.
pub(crate) fn spawn(
    node: String,
    runtime: RuntimeConfig,
    host: HostFs,
    backoff: BackoffConfig,
    applier: Arc<Applier>,
    registry: Arc<ContainerRegistry>,
    shutdown: watch::Receiver<bool>,
) -> (BinderHandle, Vec<JoinHandle<()>>) {
    let (binder, handle, events) = Binder::new(node.clone(), runtime.mode, applier, registry);
    let watcher = Watcher::new(node, runtime, host, backoff, events);
    let tasks = vec![
        tokio::spawn(binder.run(shutdown.clone())),
        tokio::spawn(watcher.run(shutdown)),
    ];
    (handle, tasks)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::enforcer::{Call, Enforcers, Outcome, RecordingEnforcer};
    use crate::profiles::HeldProfiles;
    use crate::runtime::PodInfo;

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn target(v: serde_json::Value) -> Target {
        serde_json::from_value(v).expect("target")
    }

    fn container(id: &str, name: &str, l: &[(&str, &str)]) -> ContainerInfo {
        ContainerInfo {
            id: id.into(),
            name: name.into(),
            pid: 100,
            mnt_ns_id: 4026532000,
            labels: labels(l),
            runtime_namespace: "default".into(),
            ..Default::default()
        }
    }

    #[test]
    fn label_selector_semantics() {
        let sel = |v: serde_json::Value| -> LabelSelector { serde_json::from_value(v).unwrap() };
        let l = labels(&[("app", "web"), ("tier", "front")]);
        assert!(selector_matches(&sel(json!({})), &l), "empty selects all");
        assert!(selector_matches(
            &sel(json!({"matchLabels": {"app": "web", "tier": "front"}})),
            &l
        ));
        assert!(!selector_matches(
            &sel(json!({"matchLabels": {"app": "web", "tier": "back"}})),
            &l
        ));
        let expr = |op: &str, values: &[&str]| {
            sel(json!({"matchExpressions": [{"key": "tier", "operator": op, "values": values}]}))
        };
        assert!(selector_matches(&expr("In", &["front", "x"]), &l));
        assert!(!selector_matches(&expr("In", &["back"]), &l));
        assert!(!selector_matches(&expr("In", &["front"]), &labels(&[])));
        assert!(selector_matches(&expr("NotIn", &["back"]), &l));
        assert!(!selector_matches(&expr("NotIn", &["front"]), &l));
        assert!(selector_matches(&expr("NotIn", &["front"]), &labels(&[])));
        assert!(selector_matches(&expr("Exists", &[]), &l));
        assert!(!selector_matches(&expr("Exists", &[]), &labels(&[])));
        assert!(selector_matches(&expr("DoesNotExist", &[]), &labels(&[])));
        assert!(!selector_matches(&expr("DoesNotExist", &[]), &l));
        assert!(!selector_matches(&expr("Matches", &["front"]), &l));
        // Labels and expressions together must all hold.
        let both = sel(json!({"matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["back"]}]}));
        assert!(!selector_matches(&both, &l));
    }

    #[test]
    fn targets_match_labels_names_and_containers() {
        let web = container("c1", "nginx", &[("app", "web")]);
        let by_label = target(json!({"kind": "Pod", "selector": {"matchLabels": {"app": "web"}}}));
        assert!(target_matches(&by_label, &web));
        assert!(!target_matches(
            &by_label,
            &container("c2", "nginx", &[("app", "db")])
        ));

        // containers: the container name must be listed.
        let only_sidecar = target(json!({"kind": "Pod", "containers": ["sidecar"],
            "selector": {"matchLabels": {"app": "web"}}}));
        assert!(!target_matches(&only_sidecar, &web));
        assert!(target_matches(
            &only_sidecar,
            &container("c3", "sidecar", &[("app", "web")])
        ));

        // name: the pod name when there is one, else the container name.
        let by_name = target(json!({"kind": "Deployment", "name": "nginx"}));
        assert!(target_matches(&by_name, &web));
        let mut in_pod = container("c4", "app", &[]);
        in_pod.pod_name = "nginx".into();
        assert!(target_matches(&by_name, &in_pod));
        in_pod.pod_name = "other".into();
        assert!(!target_matches(&by_name, &in_pod));

        // Neither name nor selector: nothing.
        assert!(!target_matches(&target(json!({"kind": "Pod"})), &web));
    }

    fn pod_annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn pod_annotations_name_the_profile_as_varmor_reads_them() {
        let a = pod_annotations(&[
            (
                "container.bpf.security.beta.varmor.org/app",
                "localhost/varmor-demo-web",
            ),
            (
                "container.apparmor.security.beta.varmor.org/app",
                "localhost/varmor-demo-web",
            ),
            (
                "container.seccomp.security.beta.varmor.org/app",
                "localhost/varmor-demo-web",
            ),
            ("container.bpf.security.beta.varmor.org/side", "unconfined"),
            (
                "container.seccomp.security.beta.varmor.org/side",
                "localhost/varmor-demo-web",
            ),
            (
                "container.apparmor.security.beta.kubernetes.io/own",
                "localhost/my-profile",
            ),
        ]);
        let s = kubernetes_selection(&a, "app");
        assert_eq!(s.profile.as_deref(), Some("varmor-demo-web"));
        assert_eq!(
            s.enforcers,
            [
                EnforcerKind::AppArmor,
                EnforcerKind::Bpf,
                EnforcerKind::Seccomp
            ]
            .into()
        );
        // The BPF opt-out leaves the other enforcers.
        let s = kubernetes_selection(&a, "side");
        assert_eq!(s.profile.as_deref(), Some("varmor-demo-web"));
        assert_eq!(s.enforcers, [EnforcerKind::Seccomp].into());
        assert_eq!(s.unconfined, [EnforcerKind::Bpf].into());
        // A non-varmor profile is not ours; another container's annotations are not this one's.
        assert_eq!(kubernetes_selection(&a, "own"), KubeSelection::default());
        assert_eq!(kubernetes_selection(&a, "ap"), KubeSelection::default());
        // vArmor's order: the BPF annotation comes first.
        let a = pod_annotations(&[
            (
                "container.apparmor.security.beta.kubernetes.io/c",
                "localhost/varmor-b",
            ),
            (
                "container.bpf.security.beta.varmor.org/c",
                "localhost/varmor-a",
            ),
        ]);
        let s = kubernetes_selection(&a, "c");
        assert_eq!(s.profile.as_deref(), Some("varmor-a"));
        assert_eq!(s.enforcers, [EnforcerKind::Bpf].into());
    }

    fn view(
        name: &str,
        cluster: bool,
        t: serde_json::Value,
        loaded: &[(EnforcerKind, bool)],
    ) -> ProfileView {
        ProfileView {
            name: name.into(),
            revision: 1,
            cluster,
            target: Some(target(t)),
            enforcers: loaded
                .iter()
                .map(|(k, ok)| {
                    (
                        *k,
                        if *ok {
                            Ok(())
                        } else {
                            Err("not loaded (UNAVAILABLE: no BPF-LSM)".into())
                        },
                    )
                })
                .collect(),
        }
    }

    fn views(v: Vec<ProfileView>) -> BTreeMap<String, ProfileView> {
        v.into_iter().map(|v| (v.name.clone(), v)).collect()
    }

    fn observed(info: ContainerInfo, pod: Pod) -> Observed {
        Observed { info, pod }
    }

    #[test]
    fn standalone_plans() {
        let web = observed(container("c1", "nginx", &[("app", "web")]), Pod::None);
        let sel = json!({"kind": "Pod", "selector": {"matchLabels": {"app": "web"}}});
        let bpf = EnforcerKind::Bpf;
        let aa = EnforcerKind::AppArmor;
        assert_eq!(
            plan(Mode::Standalone, &web, &views(vec![])),
            Plan::Unbound("no policy selects this container".into())
        );
        // A cluster policy wins over a namespaced one; the others are named.
        let p = plan(
            Mode::Standalone,
            &web,
            &views(vec![
                view("varmor-a-web", false, sel.clone(), &[(bpf, true)]),
                view(
                    "varmor-cluster-varmor-web",
                    true,
                    sel.clone(),
                    &[(bpf, true)],
                ),
            ]),
        );
        assert_eq!(
            p,
            Plan::Bind {
                profile: "varmor-cluster-varmor-web".into(),
                enforcers: [bpf].into(),
                notes: vec!["also selected by varmor-a-web (the first match wins)".into()],
            }
        );
        // Enforcers that did not load the profile are skipped with a note; none loaded fails.
        let p = plan(
            Mode::Standalone,
            &web,
            &views(vec![view(
                "varmor-a-web",
                false,
                sel.clone(),
                &[(aa, true), (bpf, false)],
            )]),
        );
        let Plan::Bind {
            enforcers, notes, ..
        } = p
        else {
            panic!("{p:?}")
        };
        assert_eq!(enforcers, [aa].into());
        assert!(
            notes[0].starts_with("BPF: not loaded (UNAVAILABLE"),
            "{notes:?}"
        );
        let p = plan(
            Mode::Standalone,
            &web,
            &views(vec![view("varmor-a-web", false, sel, &[(bpf, false)])]),
        );
        assert!(
            matches!(
                p,
                Plan::Fail {
                    profile: Some(_),
                    ..
                }
            ),
            "{p:?}"
        );
    }

    #[test]
    fn kubernetes_plans() {
        let info = container("c1", "app", &[]);
        let pod = |pairs: &[(&str, &str)]| {
            Pod::Found(Arc::new(PodInfo {
                name: "web-0".into(),
                namespace: "demo".into(),
                annotations: pod_annotations(pairs),
                ..Default::default()
            }))
        };
        let bpf_annotation = "container.bpf.security.beta.varmor.org/app";
        let held = views(vec![view(
            "varmor-demo-web",
            false,
            json!({"kind": "Deployment", "name": "web"}),
            &[(EnforcerKind::Bpf, true)],
        )]);
        let k = |p: Pod| plan(Mode::Kubernetes, &observed(info.clone(), p), &held);
        // The annotation decides, not the target (the webhook matched the target already).
        assert_eq!(
            k(pod(&[(bpf_annotation, "localhost/varmor-demo-web")])),
            Plan::Bind {
                profile: "varmor-demo-web".into(),
                enforcers: [EnforcerKind::Bpf].into(),
                notes: vec![]
            }
        );
        assert_eq!(
            k(pod(&[(bpf_annotation, "unconfined")])),
            Plan::Unbound("opted out (BPF unconfined)".into())
        );
        assert!(matches!(
            k(pod(&[(bpf_annotation, "localhost/varmor-demo-other")])),
            Plan::Pending { .. }
        ));
        assert!(matches!(k(pod(&[])), Plan::Unbound(_)));
        assert!(matches!(k(Pod::None), Plan::Unbound(_)));
        assert_eq!(
            k(Pod::Unknown("CRI down".into())),
            Plan::Fail {
                profile: None,
                reason: "CRI down".into()
            }
        );
    }

    #[test]
    fn latency_statistics() {
        let s = LatencyStats::default();
        assert_eq!(s.summary(), LatencySummary::default());
        for us in [300, 100, 200, 5000, 400] {
            s.record(us);
        }
        let sum = s.summary();
        assert_eq!((sum.count, sum.min_us, sum.max_us), (5, 100, 5000));
        assert_eq!(sum.p50_us, 300);
        assert_eq!(sum.mean_us, 1200);
        let h = s.histogram();
        assert_eq!(h.iter().map(|(_, n)| n).sum::<u64>(), 5);
        // 100 µs lies in [64, 128).
        assert!(h.contains(&(128, 1)), "{h:?}");
    }

    // The binder in process: real Applier and held profiles, in-memory enforcers.

    fn bundle(name: &str, revision: u64, selector_app: &str) -> v1::ProfileBundle {
        v1::ProfileBundle {
            profile_name: format!("varmor-demo-{name}"),
            identity: Some(v1::PolicyIdentity {
                kind: v1::PolicyKind::VarmorPolicy as i32,
                namespace: "demo".into(),
                name: name.into(),
            }),
            revision,
            target: Some(v1::Target {
                kind: "Pod".into(),
                selector: Some(v1::LabelSelector {
                    match_labels: [("app".to_string(), selector_app.to_string())].into(),
                    match_expressions: vec![],
                }),
                ..Default::default()
            }),
            enforcers: Some(v1::Enforcers {
                apparmor: false,
                bpf: true,
                seccomp: false,
            }),
            mode: "EnhanceProtect".into(),
            ..Default::default()
        }
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        applier: Arc<Applier>,
        registry: Arc<ContainerRegistry>,
        bpf: RecordingEnforcer,
        handle: BinderHandle,
        events: mpsc::Sender<RuntimeEvent>,
        _stop: watch::Sender<bool>,
    }

    impl Fixture {
        fn new(mode: Mode) -> Self {
            let dir = tempfile::tempdir().expect("tempdir");
            let profiles = Arc::new(HeldProfiles::load(dir.path().to_path_buf()).expect("load"));
            let bpf = RecordingEnforcer::new(EnforcerKind::Bpf);
            let enforcers = Enforcers::new([Arc::new(bpf.clone()) as Arc<dyn crate::Enforcer>]);
            let applier = Arc::new(Applier::new("n1", profiles, enforcers));
            let registry = Arc::new(ContainerRegistry::new());
            let (binder, handle, events) =
                Binder::new("n1", mode, applier.clone(), registry.clone());
            let (stop, stop_rx) = watch::channel(false);
            tokio::spawn(binder.run(stop_rx));
            Fixture {
                _dir: dir,
                applier,
                registry,
                bpf,
                handle,
                events,
                _stop: stop,
            }
        }

        async fn entry(&self, id: &str, want: Binding) -> ContainerEntry {
            for _ in 0..200 {
                if let Some(e) = self.registry.list().into_iter().find(|e| e.info.id == id) {
                    if e.binding == want {
                        return e;
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("{id} never became {want:?}: {:?}", self.registry.list());
        }

        fn binds(&self) -> Vec<Call> {
            self.bpf
                .calls()
                .into_iter()
                .filter(|c| matches!(c, Call::Bind { .. } | Call::Unbind { .. }))
                .collect()
        }
    }

    fn bind(id: &str, profile: &str) -> Call {
        Call::Bind {
            container: id.into(),
            profile: profile.into(),
        }
    }

    fn unbind(id: &str) -> Call {
        Call::Unbind {
            container: id.into(),
        }
    }

    #[tokio::test]
    async fn late_bundles_bind_removed_and_retargeted_bundles_unbind() {
        let f = Fixture::new(Mode::Standalone);
        let web = observed(container("c1", "web", &[("app", "web")]), Pod::None);
        f.events
            .send(RuntimeEvent::Listed(vec![web.clone()]))
            .await
            .unwrap();
        let e = f.entry("c1", Binding::Unbound).await;
        assert_eq!(e.profile, None);

        // The bundle arrives after the container started: it is bound.
        f.applier.apply(bundle("web", 1, "web")).await;
        let e = f.entry("c1", Binding::Bound).await;
        assert_eq!(e.profile.as_deref(), Some("varmor-demo-web"));
        assert_eq!(e.binding_latency_us, 0, "not bound on a start event");
        assert_eq!(f.binds(), vec![bind("c1", "varmor-demo-web")]);

        // A new revision with the same target: nothing to do.
        let mut b2 = bundle("web", 2, "web");
        b2.warnings = vec!["changed".into()];
        f.applier.apply(b2).await;
        // A new revision whose target no longer selects it: unbound.
        f.applier.apply(bundle("web", 3, "db")).await;
        f.entry("c1", Binding::Unbound).await;
        assert_eq!(f.binds(), vec![bind("c1", "varmor-demo-web"), unbind("c1")]);
        f.applier.apply(bundle("web", 4, "web")).await;
        f.entry("c1", Binding::Bound).await;
        // Removed: unbound.
        f.applier.remove("varmor-demo-web", Some(5)).await;
        f.entry("c1", Binding::Unbound).await;
        assert_eq!(f.binds().last(), Some(&unbind("c1")));
        assert_eq!(f.binds().len(), 4);
    }

    #[tokio::test]
    async fn starts_bind_with_latency_exits_unbind_and_duplicates_are_ignored() {
        let f = Fixture::new(Mode::Standalone);
        f.applier.apply(bundle("web", 1, "web")).await;
        let web = observed(container("c1", "web", &[("app", "web")]), Pod::None);
        let at = SystemTime::now() - Duration::from_millis(3);
        f.events
            .send(RuntimeEvent::Started {
                container: Box::new(web.clone()),
                at,
            })
            .await
            .unwrap();
        let e = f.entry("c1", Binding::Bound).await;
        assert!(e.binding_latency_us >= 3000, "{}", e.binding_latency_us);
        // A listing that shows it again (after a reconnection) changes nothing.
        f.events
            .send(RuntimeEvent::Listed(vec![web.clone()]))
            .await
            .unwrap();
        f.events
            .send(RuntimeEvent::Exited {
                namespace: "default".into(),
                id: "c1".into(),
            })
            .await
            .unwrap();
        for _ in 0..200 {
            if f.registry.list().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(f.registry.list().is_empty());
        assert_eq!(f.binds(), vec![bind("c1", "varmor-demo-web"), unbind("c1")]);
        assert_eq!(f.handle.stats().summary().count, 1);
    }

    #[tokio::test]
    async fn a_listing_forgets_containers_that_went_away() {
        let f = Fixture::new(Mode::Standalone);
        f.applier.apply(bundle("web", 1, "web")).await;
        let a = observed(container("a", "a", &[("app", "web")]), Pod::None);
        let b = observed(container("b", "b", &[("app", "web")]), Pod::None);
        f.events
            .send(RuntimeEvent::Listed(vec![a.clone(), b]))
            .await
            .unwrap();
        f.entry("b", Binding::Bound).await;
        f.events.send(RuntimeEvent::Listed(vec![a])).await.unwrap();
        for _ in 0..200 {
            if f.registry.list().len() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(f.registry.list().len(), 1);
        assert!(f.binds().contains(&unbind("b")));
        assert!(!f.binds().contains(&unbind("a")));
    }

    #[tokio::test]
    async fn a_hook_binds_before_returning_and_failures_are_shown() {
        let f = Fixture::new(Mode::Standalone);
        f.applier.apply(bundle("web", 1, "web")).await;
        let web = observed(container("c1", "web", &[("app", "web")]), Pod::None);
        let e = f
            .handle
            .bind_now(web.clone(), SystemTime::now())
            .await
            .expect("binder runs");
        assert_eq!(e.binding, Binding::Bound);
        assert_eq!(f.binds(), vec![bind("c1", "varmor-demo-web")]);
        // The start event of the same process that follows is a no-op.
        f.events
            .send(RuntimeEvent::Started {
                container: Box::new(web),
                at: SystemTime::now(),
            })
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(f.binds().len(), 1);

        // A profile its enforcer could not load: Failed, with the reason.
        f.bpf
            .script("varmor-demo-db", Outcome::failed("verifier says no"));
        f.applier.apply(bundle("db", 1, "db")).await;
        let db = observed(container("c2", "db", &[("app", "db")]), Pod::None);
        let e = f.handle.bind_now(db, SystemTime::now()).await.unwrap();
        assert_eq!(e.binding, Binding::Failed);
        assert!(e.message.contains("verifier says no"), "{}", e.message);
    }
}
