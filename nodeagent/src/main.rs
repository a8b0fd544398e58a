//! `varmor-agent`: parses flags, sets up logging, runs the agent library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use varmor_agent::runtime::DEFAULT_CONTAINERD_SOCKET;
use varmor_agent::violations::kernlog::KernLogConfig;
use varmor_agent::violations::logfile::{parse_metadata, ViolationLogConfig};
use varmor_agent::violations::otlp::OtlpConfig;
use varmor_agent::{Config, HostFs, Mode, RuntimeConfig};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// The varmor node agent: joins the manager, receives profile bundles, enforces them, uploads
/// events, and serves NodeState to operators.
#[derive(Debug, Parser)]
#[command(name = "varmor-agent", version)]
struct Args {
    /// The manager's gateway URL, e.g. https://10.0.0.1:9443.
    #[arg(long, value_name = "URL")]
    manager: String,
    /// This node's name (the node certificate is bound to it).
    #[arg(long, value_name = "NAME")]
    node_name: String,
    /// The CA bundle that signs the manager's certificate (the manager's state-dir/ca.crt).
    #[arg(long, value_name = "FILE")]
    ca_file: PathBuf,
    /// The join token (the manager's state-dir/join-token); read only to join.
    #[arg(long, value_name = "FILE")]
    join_token_file: PathBuf,
    /// Where the agent keeps its certificate, the bundles it holds and the event sequence.
    #[arg(long, value_name = "DIR")]
    state_dir: PathBuf,
    /// Where the NodeState service listens.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9444")]
    listen: SocketAddr,
    /// The host's root file system (/proc, /sys, the kubelet's directories are read under it).
    #[arg(long, value_name = "DIR", default_value = "/")]
    host_root: PathBuf,
    /// How many events wait for the manager at most; more are dropped and counted.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    event_buffer: usize,
    /// Where seccomp profiles are written [default: <host-root>/var/lib/kubelet/seccomp in
    /// kubernetes mode, <host-root>/var/lib/varmor/seccomp in standalone mode].
    #[arg(long, value_name = "DIR")]
    seccomp_dir: Option<PathBuf>,
    /// An extra name (IP or DNS) for the node certificate, to reach NodeState by it.
    #[arg(long = "san", value_name = "NAME")]
    sans: Vec<String>,
    /// How containers are bound to profiles: by the pod annotations the webhook writes
    /// (kubernetes), or by matching policy targets against container labels (standalone).
    #[arg(long, value_enum, default_value_t = ModeArg::Standalone)]
    mode: ModeArg,
    /// containerd's gRPC socket.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_CONTAINERD_SOCKET)]
    containerd_socket: PathBuf,
    /// A containerd namespace to watch (repeat for several) [default: k8s.io in kubernetes
    /// mode, every namespace in standalone mode].
    #[arg(long = "containerd-namespace", value_name = "NS")]
    containerd_namespaces: Vec<String>,
    /// The CRI socket for pod annotations (kubernetes mode) [default: the containerd socket].
    #[arg(long, value_name = "FILE")]
    cri_socket: Option<PathBuf>,
    /// Do not watch containers (nothing is bound; profiles are still loaded).
    #[arg(long)]
    no_containers: bool,
    /// Where violations are written, one JSON object per line (vArmor's format), rotated.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/var/log/varmor/violations.log"
    )]
    violations_log: PathBuf,
    /// Do not write violations.log.
    #[arg(long)]
    no_violations_log: bool,
    /// Rotate violations.log before it would exceed this many MiB.
    #[arg(long, value_name = "MIB", default_value_t = 10)]
    violations_log_max_size: u64,
    /// How many rotated violations.log files to keep.
    #[arg(long, value_name = "N", default_value_t = 3)]
    violations_log_backups: usize,
    /// Extra keys for the `metadata` object of violations.log lines (a JSON object, as
    /// vArmor's auditEventMetadata).
    #[arg(long, value_name = "JSON", default_value = "")]
    audit_event_metadata: String,
    /// The namespace the agent runs in (`metadata.varmorNamespace` of violations.log).
    #[arg(long, value_name = "NS", default_value = "varmor")]
    varmor_namespace: String,
    /// Export every violation as an OTLP log record to this collector (gRPC),
    /// e.g. http://127.0.0.1:4317 or https://collector:4317.
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// A header (gRPC metadata) of OTLP requests, NAME=VALUE (repeat for several).
    #[arg(long = "otlp-header", value_name = "NAME=VALUE")]
    otlp_headers: Vec<String>,
    /// https:// collectors: the CA bundle that signs the collector's certificate.
    #[arg(long, value_name = "FILE")]
    otlp_ca_file: Option<PathBuf>,
    /// Do not read AppArmor and Seccomp audit records from the kernel (BPF events are still
    /// reported).
    #[arg(long)]
    no_audit_records: bool,
    /// auditd's log, read when the audit netlink socket is not available
    /// [default: <host-root>/var/log/audit/audit.log].
    #[arg(long, value_name = "FILE")]
    audit_log: Option<PathBuf>,
    /// Serve Prometheus metrics on this address (GET /metrics), e.g. 127.0.0.1:9446.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ModeArg {
    Kubernetes,
    Standalone,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The library's messages already carry their causes.
            eprintln!("varmor-agent: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let mut config = Config::new(
        args.manager,
        args.node_name,
        args.ca_file,
        args.join_token_file,
        args.state_dir,
        args.listen,
    );
    config.host_root = args.host_root;
    config.event_buffer = args.event_buffer;
    config.seccomp_dir = args.seccomp_dir;
    config.extra_sans = args.sans;
    if !args.no_containers {
        let mode = match args.mode {
            ModeArg::Kubernetes => Mode::Kubernetes,
            ModeArg::Standalone => Mode::Standalone,
        };
        let mut runtime = RuntimeConfig::new(mode);
        runtime.containerd_socket = args.containerd_socket;
        if !args.containerd_namespaces.is_empty() {
            runtime.namespaces = args.containerd_namespaces;
        }
        runtime.cri_socket = args.cri_socket;
        config.containers = Some(runtime);
    }
    let node = config.node_name.clone();
    if !args.no_violations_log {
        let mut log = ViolationLogConfig::new(node.clone(), args.varmor_namespace);
        log.path = args.violations_log;
        log.max_size = args
            .violations_log_max_size
            .checked_mul(1024 * 1024)
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                anyhow::anyhow!("--violations-log-max-size must be between 1 and 2^44 MiB")
            })?;
        log.max_backups = args.violations_log_backups;
        log.metadata = parse_metadata("--audit-event-metadata", &args.audit_event_metadata)?;
        config.violations.log = Some(log);
    }
    if let Some(endpoint) = args.otlp_endpoint {
        let mut otlp = OtlpConfig::new(endpoint, node);
        for h in &args.otlp_headers {
            otlp.headers.push(OtlpConfig::parse_header(h)?);
        }
        otlp.ca_file = args.otlp_ca_file;
        config.violations.otlp = Some(otlp);
    }
    if !args.no_audit_records {
        let host = HostFs::new(&config.host_root);
        config.violations.audit = Some(KernLogConfig {
            audit_log: Some(
                args.audit_log
                    .unwrap_or_else(|| host.path("/var/log/audit/audit.log")),
            ),
            kmsg: Some(host.path("/dev/kmsg")),
            ..KernLogConfig::default()
        });
    }
    config.metrics_listen = args.metrics_listen;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(varmor_agent::run(config))?;
    Ok(())
}
