//! The Seccomp enforcer's file part: `Localhost` profiles are written where the container
//! runtime reads them (`<dir>/<profile>`), atomically.
//!
//! * **Where.** In Kubernetes the kubelet's seccomp root, [`SeccompEnforcer::KUBELET_DIR`]
//!   (pods name the file relative to it: `localhostProfile: <profile>`). Standalone, a
//!   directory of our own, [`SeccompEnforcer::STANDALONE_DIR`], named when a container is
//!   created: `ctr run --seccomp --seccomp-profile /var/lib/varmor/seccomp/<profile> ...`.
//! * **When it applies.** Seccomp is fixed when a container is created: the runtime reads the
//!   file then and copies it into the container's spec. A changed profile only reaches
//!   containers created afterwards, so it is `NEEDS_RESTART`, not `APPLIED`; running
//!   containers, and processes later started in them with `exec`, keep the filter they had.
//! * **Removal.** A deleted profile's file is removed; containers already running keep their
//!   filter, new containers that name the file fail to be created (the file is missing).
//! * **Runtime flags.** A profile's `flags` (`SECCOMP_FILTER_FLAG_LOG`, set by
//!   `auditViolations`) need runc 1.2 or later (or crun): runc 1.1 refuses to create a
//!   container whose profile has any (`seccomp flags are not yet supported by runc`). When the
//!   host's runc is known to be older, the flags are left out of the file and the outcome says
//!   so: violations are still blocked, only their logging is lost.
//! * **Unknown syscalls.** runc skips, without an error, every syscall name its libseccomp
//!   cannot resolve (a name newer than the library, or a typo in `syscallRawRules`), so such an
//!   entry filters nothing. The names are checked against the agent's libseccomp (the host's
//!   library, which Debian's runc links too) and the outcome names the ones it does not know.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use varmor_policy::bundle::SeccompProfile;
use varmor_policy::proto::RevisedBundle;

use super::{probe, Capability, Enforcer, EnforcerKind, Outcome, Probe};
use crate::fsutil;
use crate::host::HostFs;
use crate::runtime::Mode;

/// Where runc is looked for on the host, in `$PATH` order of a usual root shell.
const RUNC_PATHS: [&str; 6] = [
    "/usr/local/sbin/runc",
    "/usr/local/bin/runc",
    "/usr/sbin/runc",
    "/usr/bin/runc",
    "/sbin/runc",
    "/bin/runc",
];

/// Writes seccomp profiles into a directory.
#[derive(Debug, Clone)]
pub struct SeccompEnforcer {
    probe: Probe,
    dir: PathBuf,
    /// Why the container runtime refuses profiles that have `flags`, when it is known to.
    flags_rejected: Option<String>,
    /// Whether the runtime's seccomp library resolves a syscall name.
    known_syscall: fn(&str) -> bool,
}

impl SeccompEnforcer {
    /// The kubelet's seccomp root: Kubernetes `Localhost` profiles are relative to it.
    pub const KUBELET_DIR: &'static str = "/var/lib/kubelet/seccomp";

    /// The standalone default: containers name `<dir>/<profile>` when they are created.
    pub const STANDALONE_DIR: &'static str = "/var/lib/varmor/seccomp";

    /// Probes seccomp on `host` and whether the host's runc accepts profile flags; profiles go
    /// into `dir`.
    pub fn new(host: &HostFs, dir: PathBuf) -> Self {
        let mut e = Self::with_probe(probe::seccomp(host), dir);
        e.flags_rejected = runc_rejects_flags(host);
        e
    }

    /// With a given probe result (the runtime is assumed to accept profile flags).
    pub fn with_probe(probe: Probe, dir: PathBuf) -> Self {
        SeccompEnforcer {
            probe,
            dir,
            flags_rejected: None,
            known_syscall: libseccomp_knows,
        }
    }

    /// Uses `known` instead of the host's libseccomp to decide which syscall names the runtime
    /// can filter.
    pub fn with_syscall_resolver(mut self, known: fn(&str) -> bool) -> Self {
        self.known_syscall = known;
        self
    }

    /// Declares that the container runtime refuses profiles with `flags`, for `reason`: they
    /// are then left out of the files written.
    pub fn with_flags_rejected(mut self, reason: impl Into<String>) -> Self {
        self.flags_rejected = Some(reason.into());
        self
    }

    /// The default directory of profiles on `host` for an agent in `mode`.
    pub fn default_dir(host: &HostFs, mode: Mode) -> PathBuf {
        match mode {
            Mode::Kubernetes => host.path(Self::KUBELET_DIR),
            Mode::Standalone => host.path(Self::STANDALONE_DIR),
        }
    }

    /// The directory profiles are written to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of a profile.
    pub fn file_of(&self, profile: &str) -> PathBuf {
        self.dir.join(profile)
    }

    /// The file of a profile, or why the name cannot be a file in the directory.
    fn checked_file_of(&self, profile: &str) -> Result<PathBuf, String> {
        let bad = |why: &str| {
            Err(format!(
                "profile name {profile:?} cannot name a file in {}: {why}",
                self.dir.display()
            ))
        };
        if profile.is_empty() {
            return bad("it is empty");
        }
        if profile == "." || profile == ".." || profile.contains('/') {
            return bad("it must be a single path component");
        }
        if profile.contains('\0') {
            return bad("it contains a NUL byte");
        }
        if fsutil::is_temp_name(profile) {
            return bad("it looks like one of the agent's temporary files");
        }
        Ok(self.file_of(profile))
    }

    fn write_localhost(&self, profile: &str, json: &str) -> Outcome {
        let file = match self.checked_file_of(profile) {
            Ok(f) => f,
            Err(e) => return Outcome::failed(e),
        };
        let (content, note) = match self.content(json) {
            Ok(c) => c,
            Err(e) => {
                return Outcome::failed(format!(
                    "the bundle's seccomp profile {e}; {} was left as it was",
                    file.display()
                ))
            }
        };
        let note = note.map_or_else(String::new, |n| format!("; {n}"));
        let previous = match read_if_exists(&file) {
            Ok(p) => p,
            Err(e) => return Outcome::failed(format!("cannot read {}: {e}", file.display())),
        };
        if previous.as_deref() == Some(content.as_bytes()) {
            return Outcome::applied(format!("{} is up to date{note}", file.display()));
        }
        if let Err(e) = std::fs::create_dir_all(&self.dir) {
            return Outcome::failed(format!(
                "cannot create the seccomp profile directory {}: {e}",
                self.dir.display()
            ));
        }
        if let Err(e) = fsutil::write_atomic(&file, content.as_bytes(), 0o644) {
            return Outcome::failed(format!("cannot write {}: {e}", file.display()));
        }
        if previous.is_some() {
            Outcome::needs_restart(format!(
                "updated {}; containers started before keep the previous filter until they \
                 are restarted{note}",
                file.display()
            ))
        } else {
            Outcome::applied(format!(
                "wrote {}; containers created with it are confined{note}",
                file.display()
            ))
        }
    }

    /// The file content for a bundle's profile, and a note on what the runtime will not
    /// enforce as written (flags left out, unknown syscalls); an error says what is wrong with
    /// the profile.
    fn content(&self, json: &str) -> Result<(String, Option<String>), String> {
        let mut value: serde_json::Value =
            serde_json::from_str(json).map_err(|e| format!("is not valid JSON ({e})"))?;
        let Some(object) = value.as_object_mut() else {
            return Err("is not a JSON object".to_string());
        };
        if !object.get("defaultAction").is_some_and(|a| a.is_string()) {
            return Err("has no defaultAction (a string such as SCMP_ACT_ALLOW)".to_string());
        }
        let mut notes = Vec::new();
        let unknown = self.unknown_syscalls(object);
        if !unknown.is_empty() {
            notes.push(format!(
                "this host's libseccomp does not know the syscall(s) {}: the container runtime \
                 skips them, so they are not filtered",
                unknown.join(", ")
            ));
        }
        let flags = match (&self.flags_rejected, object.get("flags")) {
            (Some(reason), Some(serde_json::Value::Array(f))) if !f.is_empty() => {
                let flags = f
                    .iter()
                    .map(|f| f.as_str().map_or_else(|| f.to_string(), str::to_string))
                    .collect::<Vec<_>>()
                    .join(", ");
                Some((flags, reason))
            }
            _ => None,
        };
        let content = match flags {
            None => json.to_string(),
            Some((flags, reason)) => {
                notes.push(format!(
                    "left out the profile's flags ({flags}) because {reason}: violations are \
                     still blocked but not logged"
                ));
                object.remove("flags");
                serde_json::to_string(&value).expect("a serde_json::Value always serializes")
            }
        };
        Ok((content, (!notes.is_empty()).then(|| notes.join("; "))))
    }

    /// The syscall names of a profile's entries that the runtime's libseccomp cannot resolve,
    /// sorted, each once.
    fn unknown_syscalls(
        &self,
        profile: &serde_json::Map<String, serde_json::Value>,
    ) -> Vec<String> {
        let mut unknown: Vec<String> = profile
            .get("syscalls")
            .and_then(|s| s.as_array())
            .into_iter()
            .flatten()
            .filter_map(|entry| entry.get("names")?.as_array())
            .flatten()
            .filter_map(|name| name.as_str())
            .filter(|name| !(self.known_syscall)(name))
            .map(str::to_string)
            .collect();
        unknown.sort();
        unknown.dedup();
        unknown
    }

    fn use_runtime_default(&self, profile: &str) -> Outcome {
        let file = match self.checked_file_of(profile) {
            Ok(f) => f,
            Err(e) => return Outcome::failed(e),
        };
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

/// Whether the libseccomp this agent links (the host's) resolves `name` on the native
/// architecture.
fn libseccomp_knows(name: &str) -> bool {
    libseccomp::ScmpSyscall::from_name(name).is_ok()
}

fn read_if_exists(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Why the host's runc refuses seccomp profiles with `flags`, when it is found and older than
/// 1.2; `None` when it accepts them or cannot be asked (then the flags are kept).
fn runc_rejects_flags(host: &HostFs) -> Option<String> {
    let runc = RUNC_PATHS
        .iter()
        .map(|p| host.path(p))
        .find(|p| p.is_file())?;
    let out = Command::new(&runc)
        .arg("--version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = runc_version(&text)?;
    (version < (1, 2)).then(|| {
        format!(
            "{} is runc {}.{}, which refuses seccomp profile flags (runc 1.2 accepts them)",
            runc.display(),
            version.0,
            version.1
        )
    })
}

/// `(major, minor)` from the output of `runc --version` (`runc version 1.1.5+ds1`).
fn runc_version(output: &str) -> Option<(u32, u32)> {
    let rest = output
        .lines()
        .next()?
        .trim()
        .strip_prefix("runc version ")?;
    let rest = rest.trim_start_matches('v');
    let mut parts = rest.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
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
                let flags = self.flags_rejected.as_ref().map_or_else(String::new, |r| {
                    format!("; profile flags are left out because {r}")
                });
                format!(
                    "{}; profiles in {}{flags}",
                    self.probe.reason,
                    self.dir.display()
                )
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
        let file = match self.checked_file_of(profile) {
            Ok(f) => f,
            Err(e) => return Outcome::failed(e),
        };
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

    const ALLOW: &str = r#"{"defaultAction":"SCMP_ACT_ALLOW"}"#;

    fn bundle_named(
        name: &str,
        revision: u64,
        seccomp: v1::seccomp_profile::Kind,
    ) -> RevisedBundle {
        v1::ProfileBundle {
            profile_name: name.into(),
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

    fn bundle(revision: u64, seccomp: v1::seccomp_profile::Kind) -> RevisedBundle {
        bundle_named("varmor-demo-web", revision, seccomp)
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

        let o = e.apply(&bundle(1, localhost(ALLOW))).await;
        assert_eq!(o.status, ResultStatus::Applied, "{o:?}");
        assert_eq!(std::fs::read_to_string(&file).expect("file"), ALLOW);

        let o = e.apply(&bundle(1, localhost(ALLOW))).await;
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

        let o = e.apply(&bundle(6, localhost(ALLOW))).await;
        assert_eq!(o.status, ResultStatus::Applied, "{o:?}");
        assert!(file.exists());
        let o = e.remove("varmor-demo-web").await;
        assert_eq!(o.status, ResultStatus::Removed, "{o:?}");
        assert!(o.message.contains("deleted"), "{o:?}");
        assert!(!file.exists());
        let o = e.remove("varmor-demo-web").await;
        assert_eq!(o.status, ResultStatus::Removed, "{o:?}");
        assert!(o.message.contains("did not exist"), "{o:?}");
    }

    #[tokio::test]
    async fn profiles_that_are_not_seccomp_profiles_fail_and_keep_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = SeccompEnforcer::with_probe(supported(), dir.path().to_path_buf());
        let file = e.file_of("varmor-demo-web");
        e.apply(&bundle(1, localhost(ALLOW))).await;
        for (json, reason) in [
            ("[]", "is not a JSON object"),
            ("{}", "has no defaultAction"),
            (r#"{"defaultAction":1}"#, "has no defaultAction"),
        ] {
            let o = e.apply(&bundle(2, localhost(json))).await;
            assert_eq!(o.status, ResultStatus::Failed, "{json}: {o:?}");
            assert!(o.message.contains(reason), "{json}: {o:?}");
            assert!(o.message.contains("was left as it was"), "{json}: {o:?}");
            assert_eq!(std::fs::read_to_string(&file).expect("file"), ALLOW);
        }
    }

    #[tokio::test]
    async fn profile_names_that_are_not_one_file_name_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = SeccompEnforcer::with_probe(supported(), dir.path().join("seccomp"));
        for name in ["", ".", "..", "../escape", "a/b", ".x.tmp-1-2"] {
            let o = e.apply(&bundle_named(name, 1, localhost(ALLOW))).await;
            assert_eq!(o.status, ResultStatus::Failed, "{name:?}: {o:?}");
            assert!(o.message.contains("cannot name a file"), "{name:?}: {o:?}");
            let o = e.remove(name).await;
            assert_eq!(o.status, ResultStatus::Failed, "{name:?}: {o:?}");
        }
        assert!(!dir.path().join("escape").exists());
        assert!(!dir.path().join("seccomp").exists(), "nothing was written");
    }

    #[tokio::test]
    async fn flags_are_left_out_with_a_note_when_the_runtime_refuses_them() {
        const WITH_FLAGS: &str = r#"{"defaultAction":"SCMP_ACT_ALLOW","flags":["SECCOMP_FILTER_FLAG_LOG"],"syscalls":[{"names":["splice"],"action":"SCMP_ACT_ERRNO","errnoRet":1}]}"#;
        let dir = tempfile::tempdir().expect("tempdir");

        let keeps = SeccompEnforcer::with_probe(supported(), dir.path().join("a"));
        let o = keeps.apply(&bundle(1, localhost(WITH_FLAGS))).await;
        assert_eq!(o.status, ResultStatus::Applied, "{o:?}");
        assert_eq!(
            std::fs::read_to_string(keeps.file_of("varmor-demo-web")).expect("file"),
            WITH_FLAGS
        );

        let strips = SeccompEnforcer::with_probe(supported(), dir.path().join("b"))
            .with_flags_rejected("runc is 1.1");
        assert!(strips.capability().reason.contains("runc is 1.1"));
        let o = strips.apply(&bundle(1, localhost(WITH_FLAGS))).await;
        assert_eq!(o.status, ResultStatus::Applied, "{o:?}");
        assert!(
            o.message.contains("SECCOMP_FILTER_FLAG_LOG") && o.message.contains("runc is 1.1"),
            "{o:?}"
        );
        let written: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(strips.file_of("varmor-demo-web")).expect("file"),
        )
        .expect("json");
        let mut expected: serde_json::Value = serde_json::from_str(WITH_FLAGS).expect("json");
        expected.as_object_mut().expect("object").remove("flags");
        assert_eq!(written, expected, "only the flags are left out");
        let o = strips.apply(&bundle(2, localhost(WITH_FLAGS))).await;
        assert_eq!(o.status, ResultStatus::Applied, "unchanged: {o:?}");
        assert!(o.message.contains("up to date"), "{o:?}");

        let o = strips.apply(&bundle(3, localhost(ALLOW))).await;
        assert_eq!(o.status, ResultStatus::NeedsRestart, "{o:?}");
        assert!(!o.message.contains("flags"), "no flags, no note: {o:?}");
    }

    #[tokio::test]
    async fn syscalls_the_runtime_cannot_filter_are_named_in_the_outcome() {
        const PROFILE: &str = r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["fchmodat2","chmod"],"action":"SCMP_ACT_ERRNO"},{"names":["fchmodat2","mkdirr"],"action":"SCMP_ACT_ERRNO"}]}"#;
        let dir = tempfile::tempdir().expect("tempdir");
        let e = SeccompEnforcer::with_probe(supported(), dir.path().to_path_buf())
            .with_syscall_resolver(|name| name == "chmod");
        let o = e.apply(&bundle(1, localhost(PROFILE))).await;
        assert_eq!(o.status, ResultStatus::Applied, "{o:?}");
        assert!(
            o.message
                .contains("does not know the syscall(s) fchmodat2, mkdirr: the container"),
            "each unknown name once, sorted: {o:?}"
        );
        assert_eq!(
            std::fs::read_to_string(e.file_of("varmor-demo-web")).expect("file"),
            PROFILE,
            "the profile is written as it is"
        );

        let all_known = SeccompEnforcer::with_probe(supported(), dir.path().join("b"));
        let o = all_known.apply(&bundle(1, localhost(r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["splice"],"action":"SCMP_ACT_ERRNO"}]}"#))).await;
        assert!(!o.message.contains("does not know"), "{o:?}");
    }

    #[test]
    fn the_hosts_libseccomp_resolves_syscall_names() {
        assert!(libseccomp_knows("splice"));
        assert!(libseccomp_knows("unshare"));
        assert!(!libseccomp_knows("varmor_no_such_syscall"));
    }

    #[test]
    fn runc_versions_are_read_from_its_version_output() {
        let debian = "runc version 1.1.5+ds1\ncommit: 1.1.5+ds1-1+deb12u1\nspec: 1.0.2-dev\n";
        assert_eq!(runc_version(debian), Some((1, 1)));
        assert_eq!(runc_version("runc version 1.2.0-rc.1\n"), Some((1, 2)));
        assert_eq!(runc_version("runc version v1.10.3"), Some((1, 10)));
        assert_eq!(runc_version("crun version 1.8"), None);
        assert_eq!(runc_version(""), None);
    }

    #[test]
    fn the_hosts_runc_decides_whether_flags_are_kept() {
        use std::os::unix::fs::PermissionsExt;
        let fake = |version: &str| {
            let dir = tempfile::tempdir().expect("tempdir");
            let host = HostFs::new(dir.path());
            let runc = host.path("/usr/sbin/runc");
            std::fs::create_dir_all(runc.parent().expect("parent")).expect("mkdir");
            std::fs::write(&runc, format!("#!/bin/sh\necho 'runc version {version}'\n"))
                .expect("write");
            std::fs::set_permissions(&runc, std::fs::Permissions::from_mode(0o755)).expect("chmod");
            (dir, host)
        };
        let (_d, old) = fake("1.1.5+ds1");
        let reason = runc_rejects_flags(&old).expect("1.1 refuses flags");
        assert!(reason.contains("usr/sbin/runc is runc 1.1"), "{reason}");
        let (_d, new) = fake("1.2.0");
        assert_eq!(runc_rejects_flags(&new), None);
        let empty = tempfile::tempdir().expect("tempdir");
        assert_eq!(
            runc_rejects_flags(&HostFs::new(empty.path())),
            None,
            "no runc"
        );
    }

    #[test]
    fn the_default_directory_depends_on_the_mode() {
        let host = HostFs::new("/host");
        assert_eq!(
            SeccompEnforcer::default_dir(&host, Mode::Kubernetes),
            PathBuf::from("/host/var/lib/kubelet/seccomp")
        );
        assert_eq!(
            SeccompEnforcer::default_dir(&host, Mode::Standalone),
            PathBuf::from("/host/var/lib/varmor/seccomp")
        );
    }

    #[tokio::test]
    async fn unsupported_kernel_is_unavailable_with_the_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = SeccompEnforcer::new(&HostFs::new(dir.path()), dir.path().join("seccomp"));
        assert!(!e.capability().available);
        let o = e.apply(&bundle(1, localhost(ALLOW))).await;
        assert_eq!(o.status, ResultStatus::Unavailable);
        assert!(o.message.contains("actions_avail"), "{o:?}");
        assert!(!e.file_of("varmor-demo-web").exists());
    }
}
