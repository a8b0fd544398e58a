//! Enforcers behind one small trait.
//!
//! The rest of the agent sees only [`Enforcer`]: load or update a profile from a bundle, unload
//! it, report whether the kernel can run it, and bind or unbind a container. Kernel-facing code
//! stays in the implementations; [`RecordingEnforcer`] is an in-memory one for tests.
//!
//! The Seccomp enforcer writes its profile files, the AppArmor enforcer loads its profiles with
//! `apparmor_parser`, BPF-LSM loads its programs; each answers `UNAVAILABLE` with the probe's
//! reason when the kernel lacks support — never `APPLIED` for something that is not enforced.

mod apparmor;
pub mod bpf;
pub mod probe;
mod probe_only;
mod recording;
mod seccomp;

use std::fmt;
use std::sync::Arc;

use varmor_policy::enforcer::EnforcerSet;
use varmor_policy::proto::RevisedBundle;
use varmor_proto::v1;

use crate::containers::ContainerInfo;
use crate::host::HostFs;

pub use apparmor::{AppArmorEnforcer, AppArmorOptions};
pub use bpf::{BpfEnforcer, BpfOptions};
pub use probe::Probe;
pub use probe_only::ProbeOnlyEnforcer;
pub use recording::{Call, RecordingEnforcer};
pub use seccomp::SeccompEnforcer;

/// The three enforcers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EnforcerKind {
    /// AppArmor profiles loaded with `apparmor_parser`.
    AppArmor,
    /// BPF-LSM programs.
    Bpf,
    /// Seccomp profiles for the container runtime.
    Seccomp,
}

impl EnforcerKind {
    /// Every kind, in a stable order.
    pub const ALL: [EnforcerKind; 3] = [
        EnforcerKind::AppArmor,
        EnforcerKind::Bpf,
        EnforcerKind::Seccomp,
    ];

    /// The name used in logs (`enforcer` field) and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            EnforcerKind::AppArmor => "AppArmor",
            EnforcerKind::Bpf => "BPF",
            EnforcerKind::Seccomp => "Seccomp",
        }
    }

    /// The proto enum.
    pub fn to_proto(self) -> v1::Enforcer {
        match self {
            EnforcerKind::AppArmor => v1::Enforcer::Apparmor,
            EnforcerKind::Bpf => v1::Enforcer::Bpf,
            EnforcerKind::Seccomp => v1::Enforcer::Seccomp,
        }
    }

    /// Whether a policy's enforcer set includes this kind.
    pub fn is_in(self, set: &EnforcerSet) -> bool {
        match self {
            EnforcerKind::AppArmor => set.apparmor,
            EnforcerKind::Bpf => set.bpf,
            EnforcerKind::Seccomp => set.seccomp,
        }
    }

    /// Whether the proto enforcer flags include this kind.
    pub fn is_in_proto(self, set: Option<&v1::Enforcers>) -> bool {
        set.is_some_and(|s| match self {
            EnforcerKind::AppArmor => s.apparmor,
            EnforcerKind::Bpf => s.bpf,
            EnforcerKind::Seccomp => s.seccomp,
        })
    }
}

impl fmt::Display for EnforcerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether an enforcer can work on this node, and why (not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capability {
    /// Profiles of this enforcer can be enforced here.
    pub available: bool,
    /// What was found, or why it is not available.
    pub reason: String,
}

impl Capability {
    /// The proto message.
    pub fn to_proto(&self) -> v1::EnforcerCapability {
        v1::EnforcerCapability {
            available: self.available,
            reason: self.reason.clone(),
        }
    }
}

/// What an enforcer made of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultStatus {
    /// The profile is loaded and enforced.
    Applied,
    /// Loading failed; the message says why.
    Failed,
    /// The node cannot run this enforcer; the message says why.
    Unavailable,
    /// Stored, but only containers created from now on get it.
    NeedsRestart,
    /// The profile was removed.
    Removed,
}

impl ResultStatus {
    /// The proto enum.
    pub fn to_proto(self) -> v1::ResultStatus {
        match self {
            ResultStatus::Applied => v1::ResultStatus::Applied,
            ResultStatus::Failed => v1::ResultStatus::Failed,
            ResultStatus::Unavailable => v1::ResultStatus::Unavailable,
            ResultStatus::NeedsRestart => v1::ResultStatus::NeedsRestart,
            ResultStatus::Removed => v1::ResultStatus::Removed,
        }
    }

    /// The name used in logs.
    pub fn as_str(self) -> &'static str {
        self.to_proto().as_str_name()
    }
}

/// The result of one enforcer for one request, with a message for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// What happened.
    pub status: ResultStatus,
    /// Details, or why it failed.
    pub message: String,
}

impl Outcome {
    /// An outcome.
    pub fn new(status: ResultStatus, message: impl Into<String>) -> Self {
        Outcome {
            status,
            message: message.into(),
        }
    }

    /// `APPLIED`.
    pub fn applied(message: impl Into<String>) -> Self {
        Self::new(ResultStatus::Applied, message)
    }

    /// `FAILED`.
    pub fn failed(message: impl Into<String>) -> Self {
        Self::new(ResultStatus::Failed, message)
    }

    /// `UNAVAILABLE`.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ResultStatus::Unavailable, message)
    }

    /// `NEEDS_RESTART`.
    pub fn needs_restart(message: impl Into<String>) -> Self {
        Self::new(ResultStatus::NeedsRestart, message)
    }

    /// `REMOVED`.
    pub fn removed(message: impl Into<String>) -> Self {
        Self::new(ResultStatus::Removed, message)
    }

    /// The proto result for enforcer `kind`.
    pub fn to_proto(&self, kind: EnforcerKind) -> v1::EnforcerResult {
        v1::EnforcerResult {
            enforcer: kind.to_proto() as i32,
            status: self.status.to_proto() as i32,
            message: self.message.clone(),
        }
    }
}

/// One enforcer. Implementations are called by one task at a time per profile; they must be
/// idempotent (the agent re-applies held bundles at start) and must keep a working profile
/// loaded when an update fails.
#[async_trait::async_trait]
pub trait Enforcer: Send + Sync + fmt::Debug {
    /// Which enforcer this is.
    fn kind(&self) -> EnforcerKind;

    /// Whether it can work on this node (probed when it was created).
    fn capability(&self) -> Capability;

    /// Loads or updates the profile of `bundle` (only called when the bundle's policy uses this
    /// enforcer).
    async fn apply(&self, bundle: &RevisedBundle) -> Outcome;

    /// Unloads `profile`; removing something that is not loaded is `REMOVED` too.
    async fn remove(&self, profile: &str) -> Outcome;

    /// Confines a running container with `profile`. Enforcers the container runtime applies at
    /// creation (AppArmor, Seccomp) need nothing here; BPF-LSM maps the container's mount
    /// namespace to the profile.
    async fn bind(&self, container: &ContainerInfo, profile: &str) -> Outcome {
        let _ = container;
        Outcome::applied(format!(
            "{} applies {profile} at container creation; nothing to bind",
            self.kind()
        ))
    }

    /// Releases a container (it exited or its profile went away).
    async fn unbind(&self, container: &ContainerInfo) -> Outcome {
        let _ = container;
        Outcome::removed(format!("{} keeps no per-container state", self.kind()))
    }

    /// The events the enforcer reports from the kernel (once; later calls return `None`).
    /// The agent forwards them into its event buffer.
    fn take_events(&self) -> Option<tokio::sync::mpsc::Receiver<v1::Event>> {
        None
    }
}

/// The agent's enforcers, at most one per kind.
#[derive(Debug, Clone, Default)]
pub struct Enforcers {
    list: Vec<Arc<dyn Enforcer>>,
}

impl Enforcers {
    /// The given enforcers; a later one of the same kind replaces an earlier one.
    pub fn new(enforcers: impl IntoIterator<Item = Arc<dyn Enforcer>>) -> Self {
        let mut list: Vec<Arc<dyn Enforcer>> = Vec::new();
        for e in enforcers {
            list.retain(|x| x.kind() != e.kind());
            list.push(e);
        }
        list.sort_by_key(|e| e.kind());
        Enforcers { list }
    }

    /// The enforcers of this agent version for a host: Seccomp writes profiles into
    /// `seccomp_dir`; BPF-LSM loads its programs when the kernel can run them (else it answers
    /// `UNAVAILABLE` with the probe's reason); AppArmor is the given enforcer (the agent keeps a
    /// handle to sweep its orphans, see [`AppArmorEnforcer::remove_orphans`]).
    pub fn for_host(
        host: &HostFs,
        seccomp_dir: std::path::PathBuf,
        apparmor: Arc<AppArmorEnforcer>,
    ) -> Self {
        Self::new([
            apparmor as Arc<dyn Enforcer>,
            Arc::new(BpfEnforcer::for_host(host, BpfOptions::default())) as Arc<dyn Enforcer>,
            Arc::new(SeccompEnforcer::new(host, seccomp_dir)) as Arc<dyn Enforcer>,
        ])
    }

    /// The enforcer of a kind.
    pub fn get(&self, kind: EnforcerKind) -> Option<&Arc<dyn Enforcer>> {
        self.list.iter().find(|e| e.kind() == kind)
    }

    /// Every enforcer.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Enforcer>> {
        self.list.iter()
    }

    /// The capability of a kind; a kind without an enforcer is unavailable.
    pub fn capability(&self, kind: EnforcerKind) -> Capability {
        self.get(kind).map_or_else(
            || Capability {
                available: false,
                reason: format!("this agent has no {kind} enforcer"),
            },
            |e| e.capability(),
        )
    }

    /// The capabilities as reported to the manager.
    pub fn capabilities(&self) -> v1::KernelCapabilities {
        v1::KernelCapabilities {
            apparmor: Some(self.capability(EnforcerKind::AppArmor).to_proto()),
            bpf: Some(self.capability(EnforcerKind::Bpf).to_proto()),
            seccomp: Some(self.capability(EnforcerKind::Seccomp).to_proto()),
        }
    }
}
