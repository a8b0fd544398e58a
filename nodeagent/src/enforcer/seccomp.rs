//! The Seccomp enforcer's file part: `Localhost` profiles are written where the container
//! runtime reads them (the kubelet's seccomp directory, `<dir>/<profile>`), atomically.
//!
//! Seccomp applies when a container is created, so a changed profile only reaches containers
//! created afterwards: that is `NEEDS_RESTART`, not `APPLIED`.

use std::io;
use std::path::{Path, PathBuf};

use varmor_policy::bundle::SeccompProfile;
use varmor_policy::proto::RevisedBundle;

use super::{probe, Capability, Enforcer, EnforcerKind, Outcome, Probe};
use crate::fsutil;
use crate::host::HostFs;

/// Writes seccomp profiles into a directory.
#[derive(Debug, Clone)]
pub struct SeccompEnforcer {
    probe: Probe,
    dir: PathBuf,
}

impl SeccompEnforcer {
    /// Probes seccomp on `host`; profiles go into `dir`.
    pub fn new(host: &HostFs, dir: PathBuf) -> Self {
        Self::with_probe(probe::seccomp(host), dir)
    }

    /// With a given probe result.
    pub fn with_probe(probe: Probe, dir: PathBuf) -> Self {
        SeccompEnforcer { probe, dir }
    }

    /// The file of a profile.
    pub fn file_of(&self, profile: &str) -> PathBuf {
        self.dir.join(profile)
    }

    fn write_localhost(&self, profile: &str, json: &str) -> Outcome {
        let file = self.file_of(profile);
        if let Err(e) = serde_json::from_str::<serde_json::Value>(json) {
            return Outcome::failed(format!(
                "the bundle's seccomp profile is not valid JSON ({e}); {} was left as it was",
                file.display()
            ));
        }
        let previous = match read_if_exists(&file) {
            Ok(p) => p,
            Err(e) => return Outcome::failed(format!("cannot read {}: {e}", file.display())),
        };
        if previous.as_deref() == Some(json.as_bytes()) {
            return Outcome::applied(format!("{} is up to date", file.display()));
        }
        if let Err(e) = std::fs::create_dir_all(&self.dir) {
            return Outcome::failed(format!("cannot create {}: {e}", self.dir.display()));
        }
        if let Err(e) = fsutil::write_atomic(&file, json.as_bytes(), 0o644) {
            return Outcome::failed(format!("cannot write {}: {e}", file.display()));
        }
        if previous.is_some() {
            Outcome::needs_restart(format!(
                "updated {}; containers started before keep the previous filter until they \
                 are restarted",
                file.display()
            ))
        } else {
            Outcome::applied(format!(
                "wrote {}; containers created with it are confined",
                file.display()
            ))
        }
    }

    fn use_runtime_default(&self, profile: &str) -> Outcome {
        let file = self.file_of(profile);
        match fsutil::remove_durable(&file) {
            Ok(true) => Outcome::needs_restart(format!(
                "the profile is now the runtime's default; removed {}; containers started \
                 before keep the previous filter until they are restarted",
                file.display()
            )),
            Ok(false) => {
                Outcome::applied("the container runtime's default profile; no file needed")
            }
            Err(e) => Outcome::failed(format!("cannot remove {}: {e}", file.display())),
        }
    }
}

fn read_if_exists(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[async_trait::async_trait]
impl Enforcer for SeccompEnforcer {
    fn kind(&self) -> EnforcerKind {
        EnforcerKind::Seccomp
    }

    fn capability(&self) -> Capability {
        Capability {
            available: self.probe.supported,
            reason: if self.probe.supported {
                format!("{}; profiles in {}", self.probe.reason, self.dir.display())
            } else {
                self.probe.reason.clone()
            },
        }
    }

    // The files are small: plain blocking writes keep this simple and are done in microseconds.
    async fn apply(&self, bundle: &RevisedBundle) -> Outcome {
        if !self.probe.supported {
            return Outcome::unavailable(self.probe.reason.clone());
        }
        let profile = &bundle.bundle.profile_name;
        match &bundle.bundle.seccomp {
            None => {
                Outcome::failed("the policy uses Seccomp but the bundle has no seccomp profile")
            }
            Some(SeccompProfile::RuntimeDefault) => self.use_runtime_default(profile),
            Some(SeccompProfile::Localhost { json }) => self.write_localhost(profile, json),
        }
    }

    async fn remove(&self, profile: &str) -> Outcome {
        let file = self.file_of(profile);
        match fsutil::remove_durable(&file) {
            Ok(true) => Outcome::removed(format!("deleted {}", file.display())),
            Ok(false) => Outcome::removed(format!("{} did not exist", file.display())),
            Err(e) => Outcome::failed(format!("cannot delete {}: {e}", file.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enforcer::ResultStatus;
    use varmor_proto::v1;

    fn bundle(revision: u64, seccomp: v1::seccomp_profile::Kind) -> RevisedBundle {
        v1::ProfileBundle {
            profile_name: "varmor-demo-web".into(),
            identity: Some(v1::PolicyIdentity {
                kind: v1::PolicyKind::VarmorPolicy as i32,
                namespace: "demo".into(),
                name: "web".into(),
            }),
            revision,
            target: Some(v1::Target {
                kind: "Deployment".into(),
                name: "web".into(),
                ..Default::default()
            }),
            enforcers: Some(v1::Enforcers {
                seccomp: true,
                ..Default::default()
            }),
            mode: "EnhanceProtect".into(),
            seccomp: Some(v1::SeccompProfile {
                kind: Some(seccomp),
            }),
            ..Default::default()
        }
        .try_into()
        .expect("valid bundle")
    }

    fn localhost(json: &str) -> v1::seccomp_profile::Kind {
        v1::seccomp_profile::Kind::LocalhostJson(json.into())
    }

    fn supported() -> Probe {
        Probe {
            supported: true,
            reason: "test".into(),
        }
    }

    #[tokio::test]
    async fn new_file_is_applied_changed_file_needs_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = SeccompEnforcer::with_probe(supported(), dir.path().join("seccomp"));
        let file = e.file_of("varmor-demo-web");

        let o = e
            .apply(&bundle(
                1,
                localhost(r#"{"defaultAction":"SCMP_ACT_ALLOW"}"#),
            ))
            .await;
        assert_eq!(o.status, ResultStatus::Applied, "{o:?}");
        assert_eq!(
            std::fs::read_to_string(&file).expect("file"),
            r#"{"defaultAction":"SCMP_ACT_ALLOW"}"#
        );

        let o = e
            .apply(&bundle(
                1,
                localhost(r#"{"defaultAction":"SCMP_ACT_ALLOW"}"#),
            ))
            .await;
        assert_eq!(o.status, ResultStatus::Applied, "same content: {o:?}");

        let o = e
            .apply(&bundle(2, localhost(r#"{"defaultAction":"SCMP_ACT_LOG"}"#)))
            .await;
        assert_eq!(o.status, ResultStatus::NeedsRestart, "{o:?}");
        assert!(o.message.contains("restarted"), "{o:?}");

        let o = e.apply(&bundle(3, localhost("{not json"))).await;
        assert_eq!(o.status, ResultStatus::Failed, "{o:?}");
        assert!(
            std::fs::read_to_string(&file)
                .expect("file")
                .contains("SCMP_ACT_LOG"),
            "a broken profile never replaces the working one"
        );

        let o = e
            .apply(&bundle(
                4,
                v1::seccomp_profile::Kind::RuntimeDefault(v1::Empty {}),
            ))
            .await;
        assert_eq!(o.status, ResultStatus::NeedsRestart, "{o:?}");
        assert!(!file.exists());
        let o = e
            .apply(&bundle(
                5,
                v1::seccomp_profile::Kind::RuntimeDefault(v1::Empty {}),
            ))
            .await;
        assert_eq!(o.status, ResultStatus::Applied, "{o:?}");

        e.apply(&bundle(6, localhost("{}"))).await;
        let o = e.remove("varmor-demo-web").await;
        assert_eq!(o.status, ResultStatus::Removed, "{o:?}");
        assert!(!file.exists());
    }

    #[tokio::test]
    async fn unsupported_kernel_is_unavailable_with_the_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = SeccompEnforcer::new(&HostFs::new(dir.path()), dir.path().join("seccomp"));
        assert!(!e.capability().available);
        let o = e.apply(&bundle(1, localhost("{}"))).await;
        assert_eq!(o.status, ResultStatus::Unavailable);
        assert!(o.message.contains("actions_avail"), "{o:?}");
        assert!(!e.file_of("varmor-demo-web").exists());
    }
}
