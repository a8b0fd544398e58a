//! Fixtures of the container tests: a private containerd (its own config, root, state and
//! socket under a temporary directory) with the busybox image of `scripts/busybox-image`
//! imported, containers run with `ctr`, and an enforcer that records every bind and unbind
//! with the container as the agent described it.
//!
//! When containerd cannot be started here the tests skip and say why; with
//! `VARMOR_REQUIRE_KERNEL_TESTS=1` (CI) they fail instead.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use varmor_agent::containers::ContainerInfo;
use varmor_agent::{Capability, Enforcer, EnforcerKind, Enforcers, Outcome, RecordingEnforcer};
use varmor_policy::proto::RevisedBundle;
use varmor_proto::v1;

/// Skips the test (returns `None`) with `reason`, or fails it when system tests are required.
pub fn skip<T>(reason: &str) -> Option<T> {
    if std::env::var("VARMOR_REQUIRE_KERNEL_TESTS").as_deref() == Ok("1") {
        panic!("VARMOR_REQUIRE_KERNEL_TESTS=1 but this test cannot run: {reason}");
    }
    eprintln!("SKIPPED: {reason}");
    None
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository")
        .to_path_buf()
}

/// The busybox OCI archive (built once per test binary), or why it cannot be built.
pub fn busybox_image() -> Result<(PathBuf, String), String> {
    static IMAGE: OnceLock<Result<(PathBuf, String), String>> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let script = repo().join("scripts/busybox-image");
            let run = |args: &[&str]| -> Result<String, String> {
                let out = Command::new(&script)
                    .args(args)
                    .output()
                    .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
                if !out.status.success() {
                    return Err(format!(
                        "scripts/busybox-image failed: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    ));
                }
                Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
            };
            Ok((PathBuf::from(run(&[])?), run(&["--name"])?))
        })
        .clone()
}

fn which(bin: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
        .unwrap_or(false)
}

/// A private containerd.
pub struct Containerd {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    pub image: String,
    /// (namespace, id) of every container run, for the cleanup.
    created: Mutex<Vec<(String, String)>>,
}

impl Containerd {
    /// Starts containerd and imports the busybox image into `namespaces`; `None` (a skip) when
    /// this host cannot run it.
    pub fn start(namespaces: &[&str]) -> Option<Containerd> {
        for bin in ["containerd", "ctr", "runc", "containerd-shim-runc-v2"] {
            if !which(bin) {
                return skip(&format!(
                    "{bin} is not installed (scripts/install-deps installs containerd and runc)"
                ));
            }
        }
        let (archive, image) = match busybox_image() {
            Ok(i) => i,
            Err(e) => return skip(&e),
        };
        let dir = tempfile::Builder::new()
            .prefix("varmor-ctd")
            .tempdir()
            .expect("tempdir");
        let socket = dir.path().join("containerd.sock");
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
                 # The CRI plugin is not needed: a test serves its own CRI.\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n",
                root = dir.path().join("root").display(),
                state = dir.path().join("state").display(),
                sock = socket.display(),
            ),
        )
        .expect("config");
        let log = dir.path().join("containerd.log");
        let mut c = Containerd {
            dir,
            socket,
            config,
            log,
            child: None,
            image,
            created: Mutex::default(),
        };
        if let Err(e) = c.launch() {
            return skip(&e);
        }
        for ns in namespaces {
            let out = c.ctr(ns, &["images", "import", &archive.display().to_string()]);
            if !out.status.success() {
                return skip(&format!(
                    "ctr images import failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        Some(c)
    }

    fn launch(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start containerd: {e}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.socket.exists() && self.ctr("default", &["version"]).status.success() {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                return Err(format!("containerd exited ({status}): {}", self.log_tail()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("containerd did not come up: {}", self.log_tail()))
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Stops containerd (SIGTERM, as a service manager would); the containers keep running.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts containerd again with the same state; it recovers the running containers.
    pub fn restart(&mut self) {
        self.stop();
        self.launch().expect("containerd restarts");
    }

    /// Runs `ctr` against this containerd in namespace `ns`.
    pub fn ctr(&self, ns: &str, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .arg("--namespace")
            .arg(ns)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run ctr")
    }

    /// Runs a detached busybox container `id` in `ns` with labels and OCI annotations, running
    /// `sleep 600`; returns the init PID.
    pub fn run(
        &self,
        ns: &str,
        id: &str,
        labels: &[(&str, &str)],
        annotations: &[(&str, &str)],
    ) -> u32 {
        // Its own runc root: the default (/run/containerd/runc/<ns>) is shared by every
        // containerd on the host, and tests may run side by side.
        let runc_root = self.dir.path().join("runc").display().to_string();
        let mut args: Vec<String> = vec![
            "run".into(),
            "-d".into(),
            "--null-io".into(),
            "--runc-root".into(),
            runc_root,
        ];
        for (k, v) in labels {
            args.push("--label".into());
            args.push(format!("{k}={v}"));
        }
        for (k, v) in annotations {
            args.push("--annotation".into());
            args.push(format!("{k}={v}"));
        }
        args.extend([self.image.clone(), id.into(), "sleep".into(), "600".into()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.created
            .lock()
            .unwrap()
            .push((ns.to_string(), id.to_string()));
        let out = self.ctr(ns, &args);
        assert!(
            out.status.success(),
            "ctr run {id}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        );
        self.pid(ns, id).expect("a running task")
    }

    /// The PID of the task of `id`, from `ctr task ls`.
    pub fn pid(&self, ns: &str, id: &str) -> Option<u32> {
        let out = self.ctr(ns, &["task", "ls"]);
        String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3 && f[0] == id && f[2] == "RUNNING")
                .then(|| f[1].parse().ok())
                .flatten()
        })
    }

    /// Kills the task of `id` (its exit is what the agent sees).
    pub fn kill(&self, ns: &str, id: &str) {
        let out = self.ctr(ns, &["task", "kill", "--signal", "SIGKILL", id]);
        assert!(
            out.status.success(),
            "ctr task kill {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Deletes the task and the container of `id` (killing it first).
    pub fn remove(&self, ns: &str, id: &str) {
        let _ = self.ctr(ns, &["task", "delete", "--force", id]);
        let _ = self.ctr(ns, &["container", "delete", id]);
    }

    /// Runs `cmd` in a busybox container `id` in `ns` with extra `ctr run` options (given
    /// before the image, e.g. `--rm`, `-d`, `--seccomp`, `--mount ...`) and returns ctr's
    /// output: the command's output when attached. The container is removed at cleanup.
    pub fn run_with(&self, ns: &str, id: &str, options: &[&str], cmd: &[&str]) -> Output {
        let runc_root = self.dir.path().join("runc").display().to_string();
        let mut args: Vec<&str> = vec!["run", "--runc-root", &runc_root];
        args.extend_from_slice(options);
        args.push(&self.image);
        args.push(id);
        args.extend_from_slice(cmd);
        self.created
            .lock()
            .unwrap()
            .push((ns.to_string(), id.to_string()));
        self.ctr(ns, &args)
    }

    /// Runs `cmd` as process `exec_id` in the running container `id` (`ctr task exec`) and
    /// returns its output.
    pub fn exec(&self, ns: &str, id: &str, exec_id: &str, cmd: &[&str]) -> Output {
        let mut args = vec!["task", "exec", "--exec-id", exec_id, id];
        args.extend_from_slice(cmd);
        self.ctr(ns, &args)
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if self.child.is_some() {
            let created = std::mem::take(&mut *self.created.lock().unwrap());
            for (ns, id) in created {
                self.remove(&ns, &id);
            }
        }
        self.stop();
    }
}

/// The mount namespace id of `pid`, read directly.
pub fn mnt_ns_of(pid: u32) -> u32 {
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(format!("/proc/{pid}/ns/mnt"))
        .expect("stat ns/mnt")
        .ino();
    u32::try_from(ino).expect("32-bit inode")
}

/// A bind or unbind the [`Observer`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    Bind {
        container: ContainerInfo,
        profile: String,
    },
    Unbind {
        container: ContainerInfo,
    },
}

impl Seen {
    pub fn id(&self) -> &str {
        match self {
            Seen::Bind { container, .. } | Seen::Unbind { container } => &container.id,
        }
    }
}

/// A BPF enforcer that loads everything and records every bind and unbind with the container
/// as the agent passed it.
#[derive(Debug, Clone, Default)]
pub struct Observer {
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Observer {
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn binds_of(&self, id: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.id() == id && matches!(s, Seen::Bind { .. }))
            .collect()
    }

    pub fn unbinds_of(&self, id: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.id() == id && matches!(s, Seen::Unbind { .. }))
            .collect()
    }

    /// Every enforcer of an agent: this one for BPF, in-memory ones for the others.
    pub fn enforcers(&self) -> Enforcers {
        Enforcers::new([
            Arc::new(self.clone()) as Arc<dyn Enforcer>,
            Arc::new(RecordingEnforcer::new(EnforcerKind::AppArmor)) as Arc<dyn Enforcer>,
            Arc::new(RecordingEnforcer::new(EnforcerKind::Seccomp)) as Arc<dyn Enforcer>,
        ])
    }
}

#[async_trait::async_trait]
impl Enforcer for Observer {
    fn kind(&self) -> EnforcerKind {
        EnforcerKind::Bpf
    }

    fn capability(&self) -> Capability {
        Capability {
            available: true,
            reason: "test observer".into(),
        }
    }

    async fn apply(&self, bundle: &RevisedBundle) -> Outcome {
        Outcome::applied(format!("revision {} noted", bundle.revision))
    }

    async fn remove(&self, _profile: &str) -> Outcome {
        Outcome::removed("forgotten")
    }

    async fn bind(&self, container: &ContainerInfo, profile: &str) -> Outcome {
        self.seen.lock().unwrap().push(Seen::Bind {
            container: container.clone(),
            profile: profile.to_string(),
        });
        Outcome::applied("bound")
    }

    async fn unbind(&self, container: &ContainerInfo) -> Outcome {
        self.seen.lock().unwrap().push(Seen::Unbind {
            container: container.clone(),
        });
        Outcome::removed("unbound")
    }
}

/// A BPF bundle for profile `varmor-demo-{name}` whose target selects the label `app=<app>`.
pub fn labelled_bundle(name: &str, revision: u64, app: &str) -> v1::ProfileBundle {
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
                match_labels: [("app".to_string(), app.to_string())].into(),
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

/// min, median and max.
pub fn min_median_max(mut v: Vec<u64>) -> (u64, u64, u64) {
    v.sort_unstable();
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

/// Agent logs in the test output (`RUST_LOG=debug` for more).
pub fn logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}
