//! `varmor-agent`: parses flags, sets up logging, runs the agent library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use varmor_agent::Config;

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
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
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
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(varmor_agent::run(config))?;
    Ok(())
}
