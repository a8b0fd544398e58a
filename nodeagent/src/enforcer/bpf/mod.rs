//! The BPF-LSM enforcer.
//!
//! * [`encode`] turns a bundle's BPF rule set into a fixed header and a blob of 64-byte values
//!   (pure); [`model`] is a Rust model of the programs' decision over those tables, for tests.
//! * [`kernel`] is the only code that talks to the BPF subsystem: it loads
//!   `bpf-programs/varmor.bpf.c`, pins maps and links under `/sys/fs/bpf/varmor/v<layout>/`
//!   and adopts what an earlier agent pinned, so enforcement never stops across restarts.
//! * [`BpfEnforcer`] keeps the bookkeeping: a profile is loaded into a free *slot* (a version),
//!   its containers are repointed to it one map update each (atomic per container), and the old
//!   slot is freed after a grace period. Containers are keyed by their mount namespace.
//! * [`events`] decodes the ring buffer into the agent's events.
//!
//! See `bpf-programs/README.md` for the design of the programs and maps.

pub mod encode;
pub mod events;
pub mod kernel;
pub mod layout;
pub mod model;
pub mod nsindex;
pub mod probe;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use aya::maps::{MapData, RingBuf};
use tokio::sync::mpsc;
use varmor_policy::proto::RevisedBundle;
use varmor_proto::v1;

use super::{Capability, Enforcer, EnforcerKind, Outcome};
use crate::containers::ContainerInfo;
use crate::host::HostFs;
use encode::{encode, EncodedProfile};
use events::BpfEvent;
use kernel::{Kernel, KernelMaps, ProgramReport};
use layout::*;

/// Where the enforcer pins its programs and maps by default.
pub const PIN_ROOT: &str = "/sys/fs/bpf/varmor";

/// The most events one [`BpfEnforcer::read_events`] call returns.
pub const MAX_EVENTS_PER_READ: usize = 8_192;

/// Settings of the BPF enforcer.
#[derive(Debug, Clone)]
pub struct BpfOptions {
    /// The pin root (a directory on bpffs); the layout version is a subdirectory.
    pub pin_root: PathBuf,
    /// Read the ring buffer in a thread and deliver events through
    /// [`Enforcer::take_events`]; when false, [`BpfEnforcer::read_events`] drains it.
    pub event_thread: bool,
    /// How long a replaced profile version stays readable before its slot is freed (programs
    /// that looked the old slot up just before the switch finish with it).
    pub grace: Duration,
}

impl Default for BpfOptions {
    fn default() -> Self {
        BpfOptions {
            pin_root: PathBuf::from(PIN_ROOT),
            event_thread: true,
            grace: Duration::from_secs(1),
        }
    }
}

/// A profile loaded in a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Loaded {
    slot: u32,
    generation: u32,
    revision: u64,
    content_hash: u64,
    values: usize,
}

/// A bound container.
#[derive(Debug, Clone)]
struct Bound {
    profile: String,
    entry: ContainerEntry,
}

/// What the event reader needs to name things.
#[derive(Debug, Default)]
struct Directory {
    /// (slot, generation) -> profile name.
    profiles: HashMap<(u32, u32), String>,
    /// mount namespace -> container.
    containers: HashMap<u32, ContainerInfo>,
}

#[derive(Debug)]
struct State {
    maps: Box<dyn KernelMaps>,
    profiles: BTreeMap<String, Loaded>,
    /// mount namespace -> binding.
    containers: BTreeMap<u32, Bound>,
    free: BTreeSet<u32>,
    quarantine: VecDeque<(u32, Instant)>,
    next_generation: u32,
    grace: Duration,
}

/// The BPF-LSM enforcer.
pub struct BpfEnforcer {
    capability: Capability,
    state: Option<Arc<Mutex<State>>>,
    directory: Arc<RwLock<Directory>>,
    events_rx: Mutex<Option<mpsc::Receiver<v1::Event>>>,
    ring: Mutex<Option<RingBuf<MapData>>>,
    stop: Arc<AtomicBool>,
    dropped: Arc<AtomicU64>,
    programs: Vec<ProgramReport>,
    boot_time: SystemTime,
}

/// What adoption found in the pinned state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Adopted {
    /// Profiles (name, slot) found loaded.
    pub profiles: Vec<(String, u32)>,
    /// Containers (mount namespace, profile) found bound.
    pub containers: Vec<(u32, String)>,
    /// Container entries removed because their namespace is gone or their slot is not valid.
    pub removed: usize,
}

impl std::fmt::Debug for BpfEnforcer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BpfEnforcer")
            .field("capability", &self.capability)
            .field("programs", &self.programs)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The inode of a mount namespace link such as `mnt:[4026531841]`.
pub fn parse_ns_link(link: &str) -> Option<u32> {
    link.strip_prefix("mnt:[")?.strip_suffix(']')?.parse().ok()
}

/// The mount namespaces that have at least one process (`/proc/*/ns/mnt`).
pub fn live_mount_namespaces(host: &HostFs) -> Option<BTreeSet<u32>> {
    let proc_dir = host.path("/proc");
    let entries = std::fs::read_dir(&proc_dir).ok()?;
    let mut out = BTreeSet::new();
    for e in entries.flatten() {
        let name = e.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(link) = std::fs::read_link(e.path().join("ns/mnt")) {
            if let Some(ns) = parse_ns_link(&link.to_string_lossy()) {
                out.insert(ns);
            }
        }
    }
    Some(out)
}

impl BpfEnforcer {
    /// Probes the kernel and, when BPF-LSM works, opens (or adopts) the pinned state under
    /// `options.pin_root`. An enforcer that cannot run answers `UNAVAILABLE` with the reason.
    pub fn for_host(host: &HostFs, options: BpfOptions) -> BpfEnforcer {
        let p = probe::probe(host, &options.pin_root);
        if !p.supported {
            return Self::unavailable(p.reason);
        }
        let init_ns = std::fs::read_link(host.path("/proc/1/ns/mnt"))
            .ok()
            .and_then(|l| parse_ns_link(&l.to_string_lossy()))
            .unwrap_or(0);
        let mut kernel = match Kernel::open(&options.pin_root, init_ns) {
            Ok(k) => k,
            Err(e) => {
                return Self::unavailable(format!(
                    "{}; but loading the enforcer failed: {e}",
                    p.reason
                ))
            }
        };
        let ring = kernel.take_events();
        let programs = kernel.programs().to_vec();
        let boot_time = events::boot_time(&host.read("/proc/uptime").unwrap_or_default());
        let reason = format!(
            "{}; {} programs attached ({} adopted from a previous agent), pinned under {}",
            p.reason,
            programs.len(),
            programs.iter().filter(|p| p.adopted).count(),
            kernel.dir().display()
        );
        let mut e = Self::with_maps(Box::new(kernel), reason, options.grace);
        e.programs = programs;
        e.boot_time = boot_time;
        match e.adopt(Some(host)) {
            Ok(a) => tracing::info!(
                enforcer = "BPF",
                profiles = a.profiles.len(),
                containers = a.containers.len(),
                removed = a.removed,
                "adopted the pinned state"
            ),
            Err(err) => {
                tracing::warn!(enforcer = "BPF", error = %err, "cannot read the pinned state")
            }
        }
        if let Some(ring) = ring {
            if options.event_thread {
                e.start_event_thread(ring);
            } else {
                *lock(&e.ring) = Some(ring);
            }
        }
        e
    }

    /// An enforcer that cannot run here, for `reason`.
    pub fn unavailable(reason: impl Into<String>) -> BpfEnforcer {
        BpfEnforcer {
            capability: Capability {
                available: false,
                reason: reason.into(),
            },
            state: None,
            directory: Arc::default(),
            events_rx: Mutex::new(None),
            ring: Mutex::new(None),
            stop: Arc::default(),
            dropped: Arc::default(),
            programs: Vec::new(),
            boot_time: SystemTime::UNIX_EPOCH,
        }
    }

    /// An available enforcer over the given maps (tests use [`kernel::MemoryMaps`]).
    pub fn with_maps(
        maps: Box<dyn KernelMaps>,
        reason: impl Into<String>,
        grace: Duration,
    ) -> Self {
        let mut e = Self::unavailable(reason);
        e.capability.available = true;
        e.state = Some(Arc::new(Mutex::new(State {
            maps,
            profiles: BTreeMap::new(),
            containers: BTreeMap::new(),
            free: (1..VA_MAX_SLOTS).collect(),
            quarantine: VecDeque::new(),
            next_generation: 1,
            grace,
        })));
        e
    }

    /// The programs loaded or adopted at start (with verifier instruction counts).
    pub fn programs(&self) -> &[ProgramReport] {
        &self.programs
    }

    /// Events the event thread could not deliver because the agent's queue was full.
    pub fn dropped_events(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Takes over the pinned state: profiles in slots, bound containers. Entries of namespaces
    /// without processes (read from `host`'s `/proc`) or pointing at unknown slots are removed.
    pub fn adopt(&self, host: Option<&HostFs>) -> Result<Adopted, kernel::KernelError> {
        let Some(state) = &self.state else {
            return Ok(Adopted::default());
        };
        let mut s = lock(state);
        let mut out = Adopted::default();
        // The newest version of each profile wins; older ones (an update cut short) go.
        let slots = s.maps.slots()?;
        let mut best: BTreeMap<String, (u32, Header, SlotMeta)> = BTreeMap::new();
        for (slot, h, m) in &slots {
            if best
                .get(&m.name)
                .is_none_or(|(_, bh, _)| h.generation > bh.generation)
            {
                best.insert(m.name.clone(), (*slot, h.clone(), m.clone()));
            }
        }
        let name_of: HashMap<u32, String> = slots
            .iter()
            .map(|(slot, _, m)| (*slot, m.name.clone()))
            .collect();
        let mut dir = self
            .directory
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let mut max_gen = 0;
        for (name, (slot, h, m)) in &best {
            s.free.remove(slot);
            max_gen = max_gen.max(h.generation);
            s.profiles.insert(
                name.clone(),
                Loaded {
                    slot: *slot,
                    generation: h.generation,
                    revision: m.revision,
                    content_hash: m.content_hash,
                    values: h.blob_values as usize,
                },
            );
            dir.profiles.insert((*slot, h.generation), name.clone());
            out.profiles.push((name.clone(), *slot));
        }
        s.next_generation = s.next_generation.max(max_gen + 1);
        let live = host.and_then(live_mount_namespaces);
        for (ns, entry) in s.maps.containers()? {
            let alive = live.as_ref().is_none_or(|l| l.contains(&ns));
            let profile = name_of.get(&entry.slot).cloned();
            match profile.and_then(|n| best.get(&n).map(|b| (n, b.0))) {
                Some((name, slot)) if alive => {
                    if slot != entry.slot {
                        // Still on a superseded version: finish the switch.
                        s.maps
                            .set_container(ns, &ContainerEntry { slot, ..entry })?;
                    }
                    let entry = ContainerEntry { slot, ..entry };
                    let info = ContainerInfo {
                        mnt_ns_id: ns,
                        ..Default::default()
                    };
                    dir.containers.insert(ns, info);
                    s.containers.insert(
                        ns,
                        Bound {
                            profile: name.clone(),
                            entry,
                        },
                    );
                    out.containers.push((ns, name));
                }
                _ => {
                    s.maps.remove_container(ns)?;
                    out.removed += 1;
                }
            }
        }
        drop(dir);
        for (slot, _, _) in &slots {
            if !s.profiles.values().any(|l| l.slot == *slot) {
                s.maps.clear_slot(*slot)?;
            }
        }
        Ok(out)
    }

    fn start_event_thread(&self, mut ring: RingBuf<MapData>) {
        let (tx, rx) = mpsc::channel(4096);
        *lock(&self.events_rx) = Some(rx);
        let stop = self.stop.clone();
        let dropped = self.dropped.clone();
        let directory = self.directory.clone();
        let boot = self.boot_time;
        let spawned = std::thread::Builder::new()
            .name("varmor-bpf-events".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let mut any = false;
                    while let Some(item) = ring.next() {
                        any = true;
                        if let Some(ev) = BpfEvent::decode(&item) {
                            let e = to_event(&ev, &directory, boot);
                            log_event(&ev, &e);
                            if tx.try_send(e).is_err() {
                                dropped.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    if !any {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(enforcer = "BPF", error = %e, "cannot start the event reader");
        }
    }

    /// Reads what the ring buffer holds (when the enforcer was created without an event
    /// thread), at most [`MAX_EVENTS_PER_READ`] events: a container producing events as fast
    /// as they are read cannot keep the caller here forever.
    pub fn read_events(&self) -> Vec<(BpfEvent, v1::Event)> {
        let mut out = Vec::new();
        let mut ring = lock(&self.ring);
        if let Some(ring) = ring.as_mut() {
            while out.len() < MAX_EVENTS_PER_READ {
                let Some(item) = ring.next() else { break };
                if let Some(ev) = BpfEvent::decode(&item) {
                    let e = to_event(&ev, &self.directory, self.boot_time);
                    out.push((ev, e));
                }
            }
        }
        out
    }

    /// The slot a profile is loaded in.
    pub fn slot_of(&self, profile: &str) -> Option<u32> {
        let state = self.state.as_ref()?;
        lock(state).profiles.get(profile).map(|l| l.slot)
    }

    /// The bound containers: (mount namespace, profile).
    pub fn bound(&self) -> Vec<(u32, String)> {
        let Some(state) = &self.state else {
            return Vec::new();
        };
        lock(state)
            .containers
            .iter()
            .map(|(ns, b)| (*ns, b.profile.clone()))
            .collect()
    }

    fn apply_profile(&self, name: &str, revision: u64, encoded: EncodedProfile) -> Outcome {
        let Some(state) = &self.state else {
            return Outcome::unavailable(self.capability.reason.clone());
        };
        if name.len() > META_NAME_MAX {
            return Outcome::failed(format!(
                "the profile name is longer than {META_NAME_MAX} bytes"
            ));
        }
        let mut s = lock(state);
        s.release_quarantine(false);
        if let Some(cur) = s.profiles.get(name) {
            if cur.content_hash == encoded.content_hash {
                let slot = cur.slot;
                if let Some(l) = s.profiles.get_mut(name) {
                    l.revision = revision;
                }
                return Outcome::applied(format!(
                    "BPF tables unchanged (slot {slot}); {} containers bound",
                    s.bound_to(name).len()
                ));
            }
        }
        let Some(slot) = s.free.pop_first().or_else(|| {
            // Free slots still in their grace period rather than fail.
            s.release_quarantine(true);
            s.free.pop_first()
        }) else {
            return Outcome::failed(format!(
                "all {} profile slots are in use; remove profiles first",
                VA_MAX_SLOTS - 1
            ));
        };
        let generation = s.next_generation;
        s.next_generation += 1;
        let mut header = encoded.header.clone();
        header.generation = generation;
        let meta = SlotMeta {
            revision,
            content_hash: encoded.content_hash,
            generation,
            name: name.to_string(),
        };
        if let Err(e) = s.maps.write_slot(slot, &header, &encoded.blob, &meta) {
            let _ = s.maps.clear_slot(slot);
            s.free.insert(slot);
            return Outcome::failed(format!(
                "cannot load the BPF tables: {e}; the previous version stays in force"
            ));
        }
        self.directory
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .profiles
            .insert((slot, generation), name.to_string());
        // Repoint the containers, one atomic update each.
        let bound = s.bound_to(name);
        let mut moved: Vec<(u32, ContainerEntry)> = Vec::new();
        for (ns, old) in &bound {
            let entry = ContainerEntry { slot, ..*old };
            if let Err(e) = s.maps.set_container(*ns, &entry) {
                // Put the moved ones back on the previous version and give up.
                for (mns, back) in &moved {
                    let _ = s.maps.set_container(*mns, back);
                }
                let _ = s.maps.clear_slot(slot);
                s.free.insert(slot);
                return Outcome::failed(format!(
                    "cannot switch container (mount namespace {ns}) to the new tables: {e}; the \
                     previous version stays in force"
                ));
            }
            moved.push((*ns, *old));
        }
        for (ns, _) in &bound {
            if let Some(b) = s.containers.get_mut(ns) {
                b.entry.slot = slot;
            }
        }
        let previous = s.profiles.insert(
            name.to_string(),
            Loaded {
                slot,
                generation,
                revision,
                content_hash: encoded.content_hash,
                values: encoded.blob.len(),
            },
        );
        if let Some(prev) = previous {
            s.quarantine.push_back((prev.slot, Instant::now()));
        }
        Outcome::applied(format!(
            "loaded into slot {slot} ({} table values of 64 bytes); {} containers switched",
            encoded.blob.len(),
            bound.len()
        ))
    }
}

fn to_event(ev: &BpfEvent, directory: &RwLock<Directory>, boot: SystemTime) -> v1::Event {
    let dir = directory.read().unwrap_or_else(PoisonError::into_inner);
    let profile = dir
        .profiles
        .get(&(ev.slot, ev.generation))
        .cloned()
        .unwrap_or_default();
    let mut e = ev.to_proto(&profile, boot);
    if let Some(c) = dir.containers.get(&ev.mnt_ns) {
        e.container_id = c.id.clone();
        e.container_name = c.name.clone();
        e.image = c.image.clone();
        e.pod_name = c.pod_name.clone();
        e.pod_namespace = c.pod_namespace.clone();
        e.pod_uid = c.pod_uid.clone();
    }
    e
}

fn log_event(ev: &BpfEvent, e: &v1::Event) {
    if ev.action == VA_EVENT_ALLOWED {
        tracing::debug!(
            enforcer = "BPF",
            action = e.action,
            profile = e.profile_name,
            container = e.container_id,
            pid = e.pid,
            event = e.event_json,
            "BPF event"
        );
    } else {
        tracing::info!(
            enforcer = "BPF",
            action = e.action,
            profile = e.profile_name,
            container = e.container_id,
            pid = e.pid,
            event = e.event_json,
            "BPF event"
        );
    }
}

impl State {
    fn bound_to(&self, profile: &str) -> Vec<(u32, ContainerEntry)> {
        self.containers
            .iter()
            .filter(|(_, b)| b.profile == profile)
            .map(|(ns, b)| (*ns, b.entry))
            .collect()
    }

    /// Frees slots whose grace period is over (all of them with `all`).
    fn release_quarantine(&mut self, all: bool) {
        while let Some(&(slot, since)) = self.quarantine.front() {
            if !all && since.elapsed() < self.grace {
                break;
            }
            self.quarantine.pop_front();
            match self.maps.clear_slot(slot) {
                Ok(()) => {
                    self.free.insert(slot);
                }
                Err(e) => {
                    tracing::warn!(enforcer = "BPF", slot, error = %e, "cannot free a profile slot");
                }
            }
        }
    }
}

impl Drop for BpfEnforcer {
    fn drop(&mut self) {
        // The programs and maps stay pinned: only the reader stops.
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[async_trait::async_trait]
impl Enforcer for BpfEnforcer {
    fn kind(&self) -> EnforcerKind {
        EnforcerKind::Bpf
    }

    fn capability(&self) -> Capability {
        self.capability.clone()
    }

    async fn apply(&self, bundle: &RevisedBundle) -> Outcome {
        if self.state.is_none() {
            return Outcome::unavailable(self.capability.reason.clone());
        }
        let name = &bundle.bundle.profile_name;
        let Some(bpf) = &bundle.bundle.bpf else {
            return Outcome::failed("the bundle enables BPF but carries no BPF rule set");
        };
        match encode(bpf) {
            Ok(encoded) => self.apply_profile(name, bundle.revision, encoded),
            Err(e) => Outcome::failed(format!(
                "the BPF rule set cannot be loaded: {e}; the previous version stays in force"
            )),
        }
    }

    async fn remove(&self, profile: &str) -> Outcome {
        let Some(state) = &self.state else {
            return Outcome::removed("nothing was loaded by BPF");
        };
        let mut s = lock(state);
        s.release_quarantine(false);
        let Some(loaded) = s.profiles.remove(profile) else {
            return Outcome::removed(format!("{profile} was not loaded"));
        };
        let bound = s.bound_to(profile);
        for (ns, _) in &bound {
            if let Err(e) = s.maps.remove_container(*ns) {
                tracing::warn!(enforcer = "BPF", profile, mnt_ns = ns, error = %e, "cannot unbind a container");
            }
            s.containers.remove(ns);
        }
        s.quarantine.push_back((loaded.slot, Instant::now()));
        Outcome::removed(format!(
            "unloaded from slot {}; {} containers released",
            loaded.slot,
            bound.len()
        ))
    }

    async fn bind(&self, container: &ContainerInfo, profile: &str) -> Outcome {
        let Some(state) = &self.state else {
            return Outcome::unavailable(self.capability.reason.clone());
        };
        if container.mnt_ns_id == 0 {
            return Outcome::failed(format!(
                "container {} has no mount namespace id",
                container.id
            ));
        }
        let mut s = lock(state);
        let Some(slot) = s.profiles.get(profile).map(|l| l.slot) else {
            return Outcome::failed(format!("the BPF profile {profile} is not loaded"));
        };
        let entry = ContainerEntry::new(slot, &container.pod_ips);
        if let Err(e) = s.maps.set_container(container.mnt_ns_id, &entry) {
            return Outcome::failed(format!("cannot bind container {}: {e}", container.id));
        }
        s.containers.insert(
            container.mnt_ns_id,
            Bound {
                profile: profile.to_string(),
                entry,
            },
        );
        self.directory
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .containers
            .insert(container.mnt_ns_id, container.clone());
        Outcome::applied(format!(
            "mount namespace {} confined by {profile} (slot {slot})",
            container.mnt_ns_id
        ))
    }

    async fn unbind(&self, container: &ContainerInfo) -> Outcome {
        let Some(state) = &self.state else {
            return Outcome::removed("BPF keeps no state here");
        };
        let mut s = lock(state);
        if let Err(e) = s.maps.remove_container(container.mnt_ns_id) {
            return Outcome::failed(format!("cannot unbind container {}: {e}", container.id));
        }
        s.containers.remove(&container.mnt_ns_id);
        self.directory
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .containers
            .remove(&container.mnt_ns_id);
        Outcome::removed(format!("mount namespace {} released", container.mnt_ns_id))
    }

    fn take_events(&self) -> Option<mpsc::Receiver<v1::Event>> {
        lock(&self.events_rx).take()
    }
}

/// Removes every pinned program and map of this layout under `root`: enforcement stops. For
/// uninstalling and for tests.
pub fn destroy_pins(root: &Path) -> Result<(), kernel::KernelError> {
    Kernel::destroy(root)
}

#[cfg(test)]
mod tests;
