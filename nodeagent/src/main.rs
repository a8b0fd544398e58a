//! `varmor-agent`: parses flags, sets up logging, runs the agent library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use varmor_agent::runtime::DEFAULT_CONTAINERD_SOCKET;
use varmor_agent::{Config, Mode, RuntimeConfig};

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
    /// Where seccomp profiles are written [default: <host-root>/var/lib/kubelet/seccomp].
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
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(varmor_agent::run(config))?;
    Ok(())
}
