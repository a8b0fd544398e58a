//! `varmor-manager`: flags to [`varmor_manager::Config`], then the library.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::{Parser, ValueEnum};
use varmor_manager::{parse_duration, Config, Manager};

/// Log output format.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// The vArmor manager: serves policy bundles to node agents over mutually authenticated
/// gRPC (TLS 1.3) and aggregates their status.
#[derive(Debug, Parser)]
#[command(name = "varmor-manager", version)]
struct Args {
    /// Directory of policy files (one VarmorPolicy or VarmorClusterPolicy per .yaml/.yml/.json file).
    #[arg(long)]
    policy_dir: PathBuf,
    /// State directory: CA (ca.crt), join-token, admin.crt/admin.key, nodes, revisions, events.
    #[arg(long)]
    state_dir: PathBuf,
    /// Address of the gRPC server, e.g. 0.0.0.0:9443.
    #[arg(long)]
    listen: SocketAddr,
    /// Namespace vArmor runs in; names cluster policy profiles.
    #[arg(long, default_value = "varmor")]
    varmor_namespace: String,
    /// Lifetime of node certificates (e.g. 24h, 30m, 7d).
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    node_cert_lifetime: std::time::Duration,
    /// Extra DNS name or IP address for the server certificate (repeatable).
    #[arg(long = "tls-san")]
    tls_sans: Vec<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics (plain HTTP: bind loopback or a
    /// pod-internal address), e.g. 127.0.0.1:9445. Off by default.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn terminated() -> Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    init_tracing(args.log_format);
    let mut config = Config::new(args.policy_dir, args.state_dir, args.listen);
    config.varmor_namespace = args.varmor_namespace;
    config.node_cert_lifetime = args.node_cert_lifetime;
    config.tls_sans = args.tls_sans;
    config.metrics_listen = args.metrics_listen;
    let mut manager = Manager::start(config)
        .await
        .context("cannot start varmor-manager")?;
    tokio::select! {
        signal = terminated() => {
            tracing::info!(signal = signal?, "stopping");
            manager.shutdown().await.context("unclean shutdown")?;
        }
        r = manager.wait() => r.context("the gRPC server stopped")?,
    }
    Ok(())
}
