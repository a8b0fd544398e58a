//! Helpers for tests that run the real binaries: where they are, free ports, processes that
//! are killed when the test ends, and clients with the operator certificate.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint};
use varmor_rpc::tls::client_config;

/// The directory holding the workspace's binaries (`target/debug` or `target/release`): the
/// parent of the directory holding the running test executable.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target directory")
        .to_path_buf()
}

/// The path of a workspace binary; fails with a hint when it was not built.
pub fn binary(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: build the workspace first (`cargo build --workspace`)",
        p.display()
    );
    p
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf()
}

/// A loopback address with a port that was free a moment ago.
pub fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// A child process that is killed (and reaped) when dropped; its output goes to a log file.
#[derive(Debug)]
pub struct Proc {
    child: Option<Child>,
    /// Where stdout and stderr go.
    pub log: PathBuf,
    name: String,
}

impl Proc {
    /// Starts `program args`, logging into `log`.
    pub fn start(name: &str, program: &Path, args: &[String], log: PathBuf) -> Proc {
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(program)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        Proc {
            child: Some(child),
            log,
            name: name.to_string(),
        }
    }

    /// Kills it with SIGKILL (no chance to clean up) and waits.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops it with SIGTERM and waits up to 10 s.
    pub fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Its log so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The name given at start.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `f` every 50 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A gRPC channel to `addr` with the operator certificate of a manager state directory.
pub async fn admin_channel(state_dir: &Path, addr: SocketAddr) -> Result<Channel, String> {
    let read =
        |f: &str| std::fs::read_to_string(state_dir.join(f)).map_err(|e| format!("{f}: {e}"));
    let tls = client_config(
        &read("ca.crt")?,
        Some((&read("admin.crt")?, &read("admin.key")?)),
        "127.0.0.1",
    );
    Endpoint::from_shared(format!("https://{addr}"))
        .map_err(|e| e.to_string())?
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))
}

/// A manager process on a temporary state directory and policy directory.
#[derive(Debug)]
pub struct Manager {
    /// The process.
    pub proc: Proc,
    /// Its address.
    pub addr: SocketAddr,
    /// Its state directory.
    pub state_dir: PathBuf,
    /// Its policy directory.
    pub policy_dir: PathBuf,
}

impl Manager {
    /// Starts `varmor-manager` and waits until it accepts connections.
    pub fn start(root: &Path, addr: SocketAddr) -> Manager {
        let state_dir = root.join("manager");
        let policy_dir = root.join("policies");
        std::fs::create_dir_all(&policy_dir).expect("policy dir");
        let args = vec![
            "--policy-dir".into(),
            policy_dir.display().to_string(),
            "--state-dir".into(),
            state_dir.display().to_string(),
            "--listen".into(),
            addr.to_string(),
        ];
        let proc = Proc::start(
            "manager",
            &binary("varmor-manager"),
            &args,
            root.join(format!("manager-{}.log", addr.port())),
        );
        let mut m = Manager {
            proc,
            addr,
            state_dir,
            policy_dir,
        };
        m.wait_ready();
        m
    }

    /// Waits until the join token exists and the port accepts TCP connections.
    pub fn wait_ready(&mut self) {
        let ok = wait_for(Duration::from_secs(20), || {
            (self.state_dir.join("join-token").exists()
                && std::net::TcpStream::connect(self.addr).is_ok())
            .then_some(())
        });
        assert!(
            ok.is_some(),
            "the manager did not start:\n{}",
            self.proc.output()
        );
    }

    /// `https://ADDR`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }
}

/// Runs `varmorctl ARGS --manager URL --state-dir DIR` and returns (exit code, stdout, stderr).
pub fn varmorctl(m: &Manager, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(binary("varmorctl"))
        .args(args)
        .arg("--manager")
        .arg(m.url())
        .arg("--state-dir")
        .arg(&m.state_dir)
        .output()
        .expect("run varmorctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Starts `varmor-agent` for `node` against `m`, with its own state dir under `root`.
pub fn start_agent(
    root: &Path,
    m: &Manager,
    node: &str,
    listen: SocketAddr,
    extra: &[String],
) -> Proc {
    let dir = root.join(format!("agent-{node}"));
    std::fs::create_dir_all(&dir).expect("agent dir");
    let mut args = vec![
        "--manager".into(),
        m.url(),
        "--node-name".into(),
        node.into(),
        "--ca-file".into(),
        m.state_dir.join("ca.crt").display().to_string(),
        "--join-token-file".into(),
        m.state_dir.join("join-token").display().to_string(),
        "--state-dir".into(),
        dir.join("state").display().to_string(),
        "--listen".into(),
        listen.to_string(),
        "--seccomp-dir".into(),
        dir.join("seccomp").display().to_string(),
        // Each agent its own violations.log; the host's audit records are not theirs.
        "--violations-log".into(),
        dir.join("violations.log").display().to_string(),
        "--no-audit-records".into(),
    ];
    args.extend_from_slice(extra);
    Proc::start(
        node,
        &binary("varmor-agent"),
        &args,
        root.join(format!("agent-{node}.log")),
    )
}
