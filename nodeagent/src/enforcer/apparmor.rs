//! The AppArmor enforcer: writes each bundle's profile text into a directory of its own and
//! loads it into the kernel with `apparmor_parser`.
//!
//! * **Support.** AppArmor is usable when the module is enabled
//!   (`/sys/module/apparmor/parameters/enabled` is `Y`), its securityfs directory
//!   `/sys/kernel/security/apparmor` exists (both under the [`HostFs`] root) and an
//!   `apparmor_parser` is found: the configured one ([`AppArmorOptions::parser`]), else the
//!   first on `$PATH` or in `/usr/local/sbin`, `/usr/sbin`, `/sbin`. Each missing piece is the
//!   reason reported in the node's capabilities and in `UNAVAILABLE` results. The parser runs in
//!   the agent's own file system: it needs the AppArmor base files it includes
//!   (`/etc/apparmor.d/tunables/global`, `abstractions/base`; Debian's `apparmor` package).
//! * **Where.** `<dir>/<profile>`, default [`AppArmorEnforcer::DEFAULT_DIR`]
//!   (`/var/lib/varmor/apparmor` under the host root), configurable. It is deliberately not
//!   under `/etc/apparmor.d`: the distribution's `apparmor.service` would load stale profiles
//!   at boot; the agent loads what it holds when it starts, and containers that name a profile
//!   the kernel does not have yet fail to be created rather than run unconfined.
//! * **Loading.** `apparmor_parser --replace --skip-cache --subdomainfs <securityfs> [-C] FILE`.
//!   The text is first written to a temporary file next to the profile's file and loaded from
//!   there; only when the parser succeeded is it renamed over the profile's file. A rejected
//!   profile therefore changes nothing: the old file and the profile loaded before stay in
//!   force, and the outcome carries the parser's stderr. `-C` (complain) is passed when the
//!   bundle says so (BehaviorModeling, DefenseInDepth with `allowViolations`); the compiled
//!   text carries `flags=(…,complain)` too. The binary cache is skipped: loads are
//!   reproducible and nothing is left in `/var/cache/apparmor`, at the price of compiling each
//!   profile at every agent start. A text equal to the file whose profile the kernel lists in
//!   the expected mode is not loaded again.
//! * **Reload semantics.** The container runtime attaches the profile when it creates a
//!   container (`apparmor_profile` in the CRI request, `process.apparmorProfile` in OCI).
//!   Replacing a loaded profile changes the rules of the tasks already confined by it at once,
//!   so a changed profile is `APPLIED` (unlike seccomp, whose filter is copied into the
//!   container).
//! * **Removal.** `apparmor_parser --remove` with the profile's file (its child profiles go with
//!   it), falling back to writing the name into `<securityfs>/.remove` when the file is missing
//!   or cannot be parsed; then the file is deleted. A profile that is neither loaded nor stored
//!   is `REMOVED` too.
//! * **Consistency across restarts.** At creation the enforcer lists the profile files in its
//!   directory. Once the agent has re-applied the bundles it holds, it calls
//!   [`AppArmorEnforcer::remove_orphans`]: every file found at start that no `apply` or
//!   `remove` has touched since belongs to a policy the agent no longer holds and is unloaded
//!   and deleted (temporary files left by a crash are deleted too).
//! * **Never blocking the runtime.** The parser runs as a `tokio::process::Command` with a
//!   timeout ([`AppArmorOptions::timeout`]); a parser that does not finish is killed and the
//!   request fails. Requests are serialized by one lock, so the directory and the kernel see one
//!   change at a time.
//! * **Limits.** Profiles loaded into the kernel whose file was deleted behind the agent's back
//!   are not found by the orphan sweep (only the directory is listed). AppArmor mediates only
//!   tasks that run confined: a process that was already running before its container's profile
//!   was first loaded is not confined by this enforcer.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use varmor_policy::bundle::AppArmorProfile;
use varmor_policy::proto::RevisedBundle;

use super::{probe, Capability, Enforcer, EnforcerKind, Outcome, Probe};
use crate::fsutil;
use crate::host::HostFs;

/// Where `apparmor_parser` is looked for after `$PATH` (a service's `$PATH` may lack `sbin`).
const PARSER_DIRS: [&str; 3] = ["/usr/local/sbin", "/usr/sbin", "/sbin"];

/// The securityfs directory of AppArmor, on the host.
const SECURITYFS: &str = "/sys/kernel/security/apparmor";

/// Settings of the AppArmor enforcer; `Default` gives the agent's defaults.
#[derive(Debug, Clone)]
pub struct AppArmorOptions {
    /// Where profile files are kept; default [`AppArmorEnforcer::DEFAULT_DIR`] under the host
    /// root.
    pub dir: Option<PathBuf>,
    /// The `apparmor_parser` to run; default: the first found on `$PATH` or in
    /// `/usr/local/sbin`, `/usr/sbin`, `/sbin`.
    pub parser: Option<PathBuf>,
    /// How long one `apparmor_parser` run may take before it is killed.
    pub timeout: Duration,
}

impl Default for AppArmorOptions {
    fn default() -> Self {
        AppArmorOptions {
            dir: None,
            parser: None,
            timeout: Duration::from_secs(120),
        }
    }
}

/// Loads AppArmor profiles with `apparmor_parser` and keeps their files in a directory.
#[derive(Debug)]
pub struct AppArmorEnforcer {
    probe: Probe,
    parser: Result<PathBuf, String>,
    dir: PathBuf,
    securityfs: PathBuf,
    timeout: Duration,
    state: tokio::sync::Mutex<State>,
}

/// Bookkeeping for the orphan sweep.
#[derive(Debug, Default)]
struct State {
    /// Profile files in the directory when the enforcer was created.
    found_at_start: BTreeSet<String>,
    /// Temporary files (crash leftovers) in the directory when the enforcer was created.
    temp_at_start: Vec<PathBuf>,
    /// Profiles applied or removed since.
    touched: BTreeSet<String>,
}

/// How the parser is asked to load a profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Load {
    Enforce,
    Complain,
}

impl Load {
    fn kernel_mode(self) -> &'static str {
        match self {
            Load::Enforce => "enforce",
            Load::Complain => "complain",
        }
    }
}

impl AppArmorEnforcer {
    /// The default profile directory (under the host root).
    pub const DEFAULT_DIR: &'static str = "/var/lib/varmor/apparmor";

    /// Probes AppArmor on `host`, finds `apparmor_parser` and lists the profile directory.
    pub fn for_host(host: &HostFs, options: AppArmorOptions) -> Self {
        let dir = options
            .dir
            .clone()
            .unwrap_or_else(|| host.path(Self::DEFAULT_DIR));
        let (found_at_start, temp_at_start) = list_dir(&dir);
        AppArmorEnforcer {
            probe: probe::apparmor(host),
            parser: find_parser(options.parser.as_deref()),
            dir,
            securityfs: host.path(SECURITYFS),
            timeout: options.timeout,
            state: tokio::sync::Mutex::new(State {
                found_at_start,
                temp_at_start,
                touched: BTreeSet::new(),
            }),
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

    /// The `apparmor_parser` used, or why none was found.
    pub fn parser(&self) -> Result<&Path, &str> {
        self.parser.as_deref().map_err(String::as_str)
    }

    /// Whether the kernel lists `profile`, and in which mode (`enforce`, `complain`, …), from
    /// `<securityfs>/profiles`. An error when the list cannot be read.
    pub fn loaded_mode(&self, profile: &str) -> io::Result<Option<String>> {
        let list = std::fs::read_to_string(self.securityfs.join("profiles"))?;
        Ok(list.lines().find_map(|line| {
            let (name, mode) = line.rsplit_once(" (")?;
            (name == profile).then(|| mode.trim_end_matches(')').to_string())
        }))
    }

    /// Unloads and deletes every profile whose file was in the directory when the enforcer was
    /// created and that no `apply` or `remove` has touched since, and deletes temporary files
    /// left by a crash. The agent calls it once, after it re-applied the bundles it holds; the
    /// result lists each orphan with what happened to it.
    pub async fn remove_orphans(&self) -> Vec<(String, Outcome)> {
        let mut state = self.state.lock().await;
        for tmp in std::mem::take(&mut state.temp_at_start) {
            if let Err(e) = fsutil::remove_durable(&tmp) {
                tracing::warn!(enforcer = "AppArmor", file = %tmp.display(), error = %e, "cannot delete a temporary file");
            }
        }
        let orphans: Vec<String> = state
            .found_at_start
            .difference(&state.touched)
            .cloned()
            .collect();
        state.found_at_start.clear();
        let mut out = Vec::new();
        for profile in orphans {
            let outcome = self.remove_locked(&mut state, &profile).await;
            tracing::info!(
                enforcer = "AppArmor",
                profile,
                status = outcome.status.as_str(),
                message = outcome.message,
                "profile left from an earlier run that no held bundle uses"
            );
            out.push((profile, outcome));
        }
        out
    }

    fn unavailable_reason(&self) -> Option<String> {
        if !self.probe.supported {
            return Some(self.probe.reason.clone());
        }
        self.parser.as_ref().err().cloned()
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
        if profile.contains('\0') || profile.chars().any(char::is_whitespace) {
            return bad("it contains a NUL byte or white space");
        }
        if fsutil::is_temp_name(profile) {
            return bad("it looks like one of the agent's temporary files");
        }
        Ok(self.file_of(profile))
    }

    async fn apply_locked(&self, profile: &str, aa: &AppArmorProfile) -> Outcome {
        let file = match self.checked_file_of(profile) {
            Ok(f) => f,
            Err(e) => return Outcome::failed(e),
        };
        if aa.name != profile {
            return Outcome::failed(format!(
                "the bundle's AppArmor profile is named {:?}, not {profile:?} like the bundle; \
                 nothing was loaded",
                aa.name
            ));
        }
        let load = if aa.complain || declares_complain(&aa.text, profile) {
            Load::Complain
        } else {
            Load::Enforce
        };
        let previous = match read_if_exists(&file) {
            Ok(p) => p,
            Err(e) => return Outcome::failed(format!("cannot read {}: {e}", file.display())),
        };
        let loaded = self.loaded_mode(profile).ok().flatten();
        if previous.as_deref() == Some(aa.text.as_bytes())
            && loaded.as_deref() == Some(load.kernel_mode())
        {
            return Outcome::applied(format!(
                "{profile} is loaded ({}) and {} is up to date",
                load.kernel_mode(),
                file.display()
            ));
        }
        if let Err(e) = std::fs::create_dir_all(&self.dir) {
            return Outcome::failed(format!(
                "cannot create the AppArmor profile directory {}: {e}",
                self.dir.display()
            ));
        }
        let tmp = match fsutil::write_temp(&file, aa.text.as_bytes(), 0o644) {
            Ok(t) => t,
            Err(e) => return Outcome::failed(format!("cannot write {}: {e}", file.display())),
        };
        let mut args: Vec<OsString> = vec![
            "--replace".into(),
            "--skip-cache".into(),
            "--subdomainfs".into(),
            self.securityfs.clone().into(),
        ];
        if load == Load::Complain {
            args.push("--complain".into());
        }
        args.push(tmp.clone().into());
        if let Err(e) = self.run_parser(&args).await {
            let _ = std::fs::remove_file(&tmp);
            let kept = match (&previous, &loaded) {
                (Some(_), Some(mode)) => format!(
                    "{} and the profile loaded before ({mode}) stay in force",
                    file.display()
                ),
                (Some(_), None) => format!("{} was left as it was", file.display()),
                (None, Some(mode)) => {
                    format!("the profile loaded before ({mode}) stays in force")
                }
                (None, None) => "nothing was loaded".to_string(),
            };
            return Outcome::failed(format!(
                "cannot load AppArmor profile {profile}: {e}; {kept}"
            ));
        }
        if let Err(e) = fsutil::rename_durable(&tmp, &file) {
            let _ = std::fs::remove_file(&tmp);
            return Outcome::failed(format!(
                "{profile} was loaded but cannot be stored as {}: {e}; it is loaded again at \
                 the next update",
                file.display()
            ));
        }
        let mode = load.kernel_mode();
        match loaded {
            Some(_) => Outcome::applied(format!(
                "replaced {profile} ({mode}) from {}; processes confined by it follow the new \
                 rules at once",
                file.display()
            )),
            None => Outcome::applied(format!(
                "loaded {profile} ({mode}) from {}; containers created with it are confined",
                file.display()
            )),
        }
    }

    async fn remove_locked(&self, state: &mut State, profile: &str) -> Outcome {
        let file = match self.checked_file_of(profile) {
            Ok(f) => f,
            Err(e) => return Outcome::failed(e),
        };
        state.touched.insert(profile.to_string());
        let stored = file.exists();
        let unloaded = if self.unavailable_reason().is_some() {
            // Nothing can be loaded in a kernel without AppArmor: only the file goes.
            "AppArmor is not available here, so nothing was loaded".to_string()
        } else {
            match self.unload(profile, &file, stored).await {
                Ok(m) => m,
                Err(e) => {
                    return Outcome::failed(format!(
                        "cannot unload AppArmor profile {profile}: {e}; {} was kept",
                        file.display()
                    ))
                }
            }
        };
        match fsutil::remove_durable(&file) {
            Ok(true) => Outcome::removed(format!("{unloaded}; deleted {}", file.display())),
            Ok(false) => Outcome::removed(format!("{unloaded}; {} did not exist", file.display())),
            Err(e) => Outcome::failed(format!(
                "{unloaded}, but cannot delete {}: {e}",
                file.display()
            )),
        }
    }

    /// Unloads `profile` from the kernel; says what was done.
    async fn unload(&self, profile: &str, file: &Path, stored: bool) -> Result<String, String> {
        match self.loaded_mode(profile) {
            Ok(None) => return Ok(format!("{profile} was not loaded")),
            Err(e) if !stored => {
                return Ok(format!(
                    "{profile} has no file and the kernel's list {} cannot be read ({e}): \
                     nothing to unload",
                    self.securityfs.join("profiles").display()
                ))
            }
            _ => {}
        }
        let parser_error = if stored {
            let args: Vec<OsString> = vec![
                "--remove".into(),
                "--skip-cache".into(),
                "--subdomainfs".into(),
                self.securityfs.clone().into(),
                file.as_os_str().to_owned(),
            ];
            match self.run_parser(&args).await {
                Ok(_) => return Ok(format!("unloaded {profile}")),
                Err(e) => Some(e),
            }
        } else {
            None
        };
        // The file is missing or the parser refused it: name the profile to the kernel.
        let remove = self.securityfs.join(".remove");
        // Never create the file: outside securityfs that would only hide the failure.
        let written = std::fs::OpenOptions::new()
            .write(true)
            .open(&remove)
            .and_then(|mut f| std::io::Write::write_all(&mut f, profile.as_bytes()));
        match written {
            Ok(()) => Ok(format!("unloaded {profile} through {}", remove.display())),
            Err(_) if matches!(self.loaded_mode(profile), Ok(None)) => {
                Ok(format!("{profile} was not loaded"))
            }
            Err(e) => Err(match parser_error {
                Some(p) => format!("{p}; writing its name to {} failed: {e}", remove.display()),
                None => format!("writing its name to {} failed: {e}", remove.display()),
            }),
        }
    }

    /// Runs the parser with `args`; the error says how it failed, with its stderr.
    async fn run_parser(&self, args: &[OsString]) -> Result<String, String> {
        let parser = self.parser.as_ref().map_err(Clone::clone)?;
        let shown = || {
            let mut s = parser.display().to_string();
            for a in args {
                s.push(' ');
                s.push_str(&a.to_string_lossy());
            }
            s
        };
        let child = tokio::process::Command::new(parser)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output();
        let out = match tokio::time::timeout(self.timeout, child).await {
            Err(_) => {
                return Err(format!(
                    "`{}` did not finish within {:?} and was killed",
                    shown(),
                    self.timeout
                ))
            }
            Ok(Err(e)) => return Err(format!("cannot run `{}`: {e}", shown())),
            Ok(Ok(out)) => out,
        };
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if out.status.success() {
            tracing::debug!(enforcer = "AppArmor", command = %shown(), stderr, "apparmor_parser succeeded");
            Ok(stderr)
        } else {
            Err(format!(
                "`{}` failed ({}): {}",
                shown(),
                out.status,
                if stderr.is_empty() {
                    "no output on stderr"
                } else {
                    &stderr
                }
            ))
        }
    }
}

#[async_trait::async_trait]
impl Enforcer for AppArmorEnforcer {
    fn kind(&self) -> EnforcerKind {
        EnforcerKind::AppArmor
    }

    fn capability(&self) -> Capability {
        match self.unavailable_reason() {
            Some(reason) => Capability {
                available: false,
                reason,
            },
            None => Capability {
                available: true,
                reason: format!(
                    "{}; apparmor_parser at {}; profiles in {}",
                    self.probe.reason,
                    self.parser
                        .as_ref()
                        .map_or_else(|e| e.clone(), |p| p.display().to_string()),
                    self.dir.display()
                ),
            },
        }
    }

    async fn apply(&self, bundle: &RevisedBundle) -> Outcome {
        if let Some(reason) = self.unavailable_reason() {
            return Outcome::unavailable(reason);
        }
        let profile = &bundle.bundle.profile_name;
        let Some(aa) = &bundle.bundle.apparmor else {
            return Outcome::failed(
                "the policy uses AppArmor but the bundle has no AppArmor profile",
            );
        };
        let mut state = self.state.lock().await;
        state.touched.insert(profile.clone());
        self.apply_locked(profile, aa).await
    }

    async fn remove(&self, profile: &str) -> Outcome {
        let mut state = self.state.lock().await;
        self.remove_locked(&mut state, profile).await
    }
}

/// Whether the text's profile `name` declares the `complain` flag.
fn declares_complain(text: &str, name: &str) -> bool {
    text.lines().any(|line| {
        let line = line.trim_start();
        let Some(rest) = line.strip_prefix("profile ") else {
            return false;
        };
        let rest = rest.trim_start();
        let Some(rest) = rest.strip_prefix(name) else {
            return false;
        };
        if !rest.starts_with(char::is_whitespace) {
            return false;
        }
        rest.split_once("flags=(")
            .and_then(|(_, f)| f.split_once(')'))
            .is_some_and(|(flags, _)| flags.split(',').any(|f| f.trim() == "complain"))
    })
}

/// The parser to use: the configured one when it is an executable file, else a search.
fn find_parser(configured: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(p) = configured {
        return if is_executable(p) {
            Ok(p.to_path_buf())
        } else {
            Err(format!(
                "the configured apparmor_parser {} is not an executable file",
                p.display()
            ))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(PARSER_DIRS.iter().map(PathBuf::from))
        .map(|d| d.join("apparmor_parser"))
        .find(|p| is_executable(p))
        .ok_or_else(|| {
            format!(
                "apparmor_parser was not found on $PATH or in {} (install the apparmor package)",
                PARSER_DIRS.join(", ")
            )
        })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The profile files and the temporary files in `dir` (nothing when it does not exist).
fn list_dir(dir: &Path) -> (BTreeSet<String>, Vec<PathBuf>) {
    let mut profiles = BTreeSet::new();
    let mut temps = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (profiles, temps);
    };
    for entry in entries.flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        if fsutil::is_temp_name(&name) {
            temps.push(entry.path());
        } else if !name.starts_with('.') {
            profiles.insert(name);
        }
    }
    (profiles, temps)
}

fn read_if_exists(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complain_is_read_from_the_profiles_own_header() {
        let text = "abi <abi/3.0>,\nprofile varmor-a-b flags=(attach_disconnected,mediate_deleted,complain) {\n}\n";
        assert!(declares_complain(text, "varmor-a-b"));
        assert!(!declares_complain(text, "varmor-a"), "another profile");
        let enforce = "profile varmor-a-b flags=(attach_disconnected,mediate_deleted) {\n  profile child_0 flags=(complain) {\n  }\n}\n";
        assert!(!declares_complain(enforce, "varmor-a-b"), "a child's flag");
        assert!(!declares_complain(
            "profile varmor-a-b {\n}\n",
            "varmor-a-b"
        ));
    }

    #[test]
    fn a_configured_parser_must_be_executable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("apparmor_parser");
        let e = find_parser(Some(&p)).expect_err("missing");
        assert!(
            e.contains("not an executable file") && e.contains("apparmor_parser"),
            "{e}"
        );
        std::fs::write(&p, "#!/bin/sh\n").expect("write");
        assert!(find_parser(Some(&p)).is_err(), "not executable");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        assert_eq!(find_parser(Some(&p)).expect("found"), p);
    }

    #[test]
    fn the_directory_listing_separates_profiles_and_temporary_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("varmor-a-b"), "x").expect("write");
        std::fs::write(dir.path().join(".varmor-a-b.tmp-1-2"), "x").expect("write");
        std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
        let (profiles, temps) = list_dir(dir.path());
        assert_eq!(profiles.into_iter().collect::<Vec<_>>(), ["varmor-a-b"]);
        assert_eq!(temps, [dir.path().join(".varmor-a-b.tmp-1-2")]);
        let (profiles, temps) = list_dir(&dir.path().join("missing"));
        assert!(profiles.is_empty() && temps.is_empty());
    }
}
