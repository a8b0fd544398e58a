//! An in-memory enforcer for tests and demos.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use varmor_policy::proto::RevisedBundle;

use super::{Capability, Enforcer, EnforcerKind, Outcome, ResultStatus};
use crate::containers::ContainerInfo;

/// A call an enforcer received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// `apply` of a profile at a revision.
    Apply {
        /// The profile.
        profile: String,
        /// The bundle's revision.
        revision: u64,
    },
    /// `remove` of a profile.
    Remove {
        /// The profile.
        profile: String,
    },
    /// `bind` of a container.
    Bind {
        /// The container.
        container: String,
        /// The profile.
        profile: String,
    },
    /// `unbind` of a container.
    Unbind {
        /// The container.
        container: String,
    },
}

#[derive(Debug, Default)]
struct Recorded {
    calls: Vec<Call>,
    loaded: BTreeMap<String, u64>,
    scripted: HashMap<String, Outcome>,
}

/// Records every call and keeps the loaded profiles in memory. Clones share the record.
///
/// `apply` answers `UNAVAILABLE` with the capability's reason when it is not available, a
/// scripted outcome when one is set for the profile, `APPLIED` otherwise.
#[derive(Debug, Clone)]
pub struct RecordingEnforcer {
    kind: EnforcerKind,
    capability: Capability,
    state: Arc<Mutex<Recorded>>,
}

impl RecordingEnforcer {
    /// An available enforcer of `kind`.
    pub fn new(kind: EnforcerKind) -> Self {
        Self::with_capability(
            kind,
            Capability {
                available: true,
                reason: format!("in-memory {kind} enforcer"),
            },
        )
    }

    /// An enforcer of `kind` with the given capability.
    pub fn with_capability(kind: EnforcerKind, capability: Capability) -> Self {
        RecordingEnforcer {
            kind,
            capability,
            state: Arc::default(),
        }
    }

    /// The next `apply` of `profile` (and the ones after it) answers `outcome`.
    pub fn script(&self, profile: &str, outcome: Outcome) {
        self.lock().scripted.insert(profile.to_string(), outcome);
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// Forgets the calls so far (the loaded profiles stay).
    pub fn clear_calls(&self) {
        self.lock().calls.clear();
    }

    /// The loaded profiles and their revisions.
    pub fn loaded(&self) -> BTreeMap<String, u64> {
        self.lock().loaded.clone()
    }

    fn lock(&self) -> MutexGuard<'_, Recorded> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait::async_trait]
impl Enforcer for RecordingEnforcer {
    fn kind(&self) -> EnforcerKind {
        self.kind
    }

    fn capability(&self) -> Capability {
        self.capability.clone()
    }

    async fn apply(&self, bundle: &RevisedBundle) -> Outcome {
        let profile = bundle.bundle.profile_name.clone();
        let mut s = self.lock();
        s.calls.push(Call::Apply {
            profile: profile.clone(),
            revision: bundle.revision,
        });
        if !self.capability.available {
            return Outcome::unavailable(self.capability.reason.clone());
        }
        let outcome = s.scripted.get(&profile).cloned().unwrap_or_else(|| {
            Outcome::applied(format!("loaded revision {} in memory", bundle.revision))
        });
        if matches!(
            outcome.status,
            ResultStatus::Applied | ResultStatus::NeedsRestart
        ) {
            s.loaded.insert(profile, bundle.revision);
        }
        outcome
    }

    async fn remove(&self, profile: &str) -> Outcome {
        let mut s = self.lock();
        s.calls.push(Call::Remove {
            profile: profile.to_string(),
        });
        s.loaded.remove(profile);
        Outcome::removed("unloaded from memory")
    }

    async fn bind(&self, container: &ContainerInfo, profile: &str) -> Outcome {
        self.lock().calls.push(Call::Bind {
            container: container.id.clone(),
            profile: profile.to_string(),
        });
        Outcome::applied("bound in memory")
    }

    async fn unbind(&self, container: &ContainerInfo) -> Outcome {
        self.lock().calls.push(Call::Unbind {
            container: container.id.clone(),
        });
        Outcome::removed("unbound in memory")
    }
}
