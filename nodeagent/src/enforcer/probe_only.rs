//! AppArmor and BPF-LSM as far as this version goes: the kernel probe, and truthful results.

use varmor_policy::proto::RevisedBundle;

use super::{probe, Capability, Enforcer, EnforcerKind, Outcome, Probe};
use crate::host::HostFs;

/// An enforcer whose kernel support is probed but whose loader is not built yet. It answers
/// `UNAVAILABLE` with the probe's reason when the kernel lacks support, and `FAILED` ("not
/// implemented in this version") when it has it: it never claims a profile is enforced.
#[derive(Debug, Clone)]
pub struct ProbeOnlyEnforcer {
    kind: EnforcerKind,
    probe: Probe,
}

impl ProbeOnlyEnforcer {
    /// AppArmor, probed on `host`.
    pub fn apparmor(host: &HostFs) -> Self {
        Self::with_probe(EnforcerKind::AppArmor, probe::apparmor(host))
    }

    /// BPF-LSM, probed on `host`.
    pub fn bpf(host: &HostFs) -> Self {
        Self::with_probe(EnforcerKind::Bpf, probe::bpf_lsm(host))
    }

    /// An enforcer of `kind` with a given probe result.
    pub fn with_probe(kind: EnforcerKind, probe: Probe) -> Self {
        ProbeOnlyEnforcer { kind, probe }
    }

    fn not_implemented(&self) -> String {
        format!(
            "the {} loader is not implemented in this version of varmor-agent ({})",
            self.kind, self.probe.reason
        )
    }
}

#[async_trait::async_trait]
impl Enforcer for ProbeOnlyEnforcer {
    fn kind(&self) -> EnforcerKind {
        self.kind
    }

    fn capability(&self) -> Capability {
        Capability {
            available: false,
            reason: if self.probe.supported {
                self.not_implemented()
            } else {
                self.probe.reason.clone()
            },
        }
    }

    async fn apply(&self, _bundle: &RevisedBundle) -> Outcome {
        if self.probe.supported {
            Outcome::failed(self.not_implemented())
        } else {
            Outcome::unavailable(self.probe.reason.clone())
        }
    }

    async fn remove(&self, _profile: &str) -> Outcome {
        Outcome::removed(format!("nothing was loaded by {}", self.kind))
    }
}
