//! The agent's settings, built by the binary from its flags (and by tests directly).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Delays between reconnection attempts: exponential from `initial` to `max`, with jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffConfig {
    /// The first delay.
    pub initial: Duration,
    /// The largest delay.
    pub max: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(30),
        }
    }
}

/// Everything the agent needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// The manager's gateway, e.g. `https://10.0.0.1:9443`.
    pub manager_url: String,
    /// This node's name; the node certificate is bound to it.
    pub node_name: String,
    /// The CA bundle that signs the manager's server certificate (used to join; afterwards the
    /// CA the manager returned, stored in the state directory, is used).
    pub ca_file: PathBuf,
    /// The join token; read only when the agent has no valid node certificate.
    pub join_token_file: PathBuf,
    /// Where the agent keeps its identity, the bundles it holds and the event sequence.
    pub state_dir: PathBuf,
    /// Where the `NodeState` service listens (port 0 picks a free port).
    pub listen: SocketAddr,
    /// The root under which `/proc`, `/sys` and the kubelet's directories are found.
    pub host_root: PathBuf,
    /// How many events wait for the manager at most; more are dropped and counted.
    pub event_buffer: usize,
    /// Where seccomp profiles are written; default `<host-root>/var/lib/kubelet/seccomp` in
    /// Kubernetes mode (and when no containers are watched), `<host-root>/var/lib/varmor/seccomp`
    /// in standalone mode.
    pub seccomp_dir: Option<PathBuf>,
    /// Extra names (IP addresses or DNS names) for the node certificate, so operators can
    /// reach the `NodeState` service by them.
    pub extra_sans: Vec<String>,
    /// Reconnection delays.
    pub backoff: BackoffConfig,
    /// The longest delay between renewal attempts that failed.
    pub renew_retry_max: Duration,
    /// HTTP/2 keep-alive pings on manager connections, so a vanished manager is noticed.
    pub keepalive_interval: Duration,
    /// How long a keep-alive ping may stay unanswered.
    pub keepalive_timeout: Duration,
    /// How long to wait for a TCP + TLS connection to the manager.
    pub connect_timeout: Duration,
    /// The container runtime to watch and how containers are bound to profiles; `None`: no
    /// containers are watched (the binary always sets it).
    pub containers: Option<crate::runtime::RuntimeConfig>,
    /// The violation pipeline's extra sinks and the audit-record source (events always go to
    /// the manager).
    pub violations: ViolationsConfig,
    /// Where Prometheus metrics are served (`GET /metrics`); `None`: not served.
    pub metrics_listen: Option<SocketAddr>,
}

/// The violation pipeline besides the manager: `violations.log`, OpenTelemetry, and the kernel's
/// audit records (AppArmor and Seccomp). Everything is off by default; the binary turns the log
/// and the audit source on.
#[derive(Debug, Clone, Default)]
pub struct ViolationsConfig {
    /// `violations.log` (vArmor's format, rotated); `None`: no file.
    pub log: Option<crate::violations::logfile::ViolationLogConfig>,
    /// Export to an OTLP collector; `None`: no export.
    pub otlp: Option<crate::violations::otlp::OtlpConfig>,
    /// Read AppArmor and Seccomp audit records from the kernel; `None`: not read (BPF events
    /// come from the BPF enforcer regardless).
    pub audit: Option<crate::violations::kernlog::KernLogConfig>,
}

impl Config {
    /// A configuration with the defaults for everything but the required settings.
    pub fn new(
        manager_url: impl Into<String>,
        node_name: impl Into<String>,
        ca_file: impl Into<PathBuf>,
        join_token_file: impl Into<PathBuf>,
        state_dir: impl Into<PathBuf>,
        listen: SocketAddr,
    ) -> Self {
        Config {
            manager_url: manager_url.into(),
            node_name: node_name.into(),
            ca_file: ca_file.into(),
            join_token_file: join_token_file.into(),
            state_dir: state_dir.into(),
            listen,
            host_root: PathBuf::from("/"),
            event_buffer: 10_000,
            seccomp_dir: None,
            extra_sans: Vec::new(),
            backoff: BackoffConfig::default(),
            renew_retry_max: Duration::from_secs(300),
            keepalive_interval: Duration::from_secs(15),
            keepalive_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            containers: None,
            violations: ViolationsConfig::default(),
            metrics_listen: None,
        }
    }
}
