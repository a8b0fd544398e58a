//! Commands that talk to a running manager over mutually authenticated gRPC: `nodes`,
//! `policies`, `events`.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, Context as _, Result};
use clap::Args;
use tonic::transport::{Channel, Endpoint};
use varmor_rpc::tls::{client_config, host_of_url};
use varmor_rpc::v1;
use varmor_rpc::v1::control_plane_client::ControlPlaneClient;

/// Where the manager is and which operator certificate to use.
#[derive(Debug, Args, Clone)]
pub struct Connection {
    /// The manager's gRPC address.
    #[arg(long, env = "VARMOR_MANAGER", default_value = "https://127.0.0.1:9443")]
    manager: String,
    /// The manager's state directory, to take `ca.crt`, `admin.crt` and `admin.key` from.
    #[arg(
        long,
        env = "VARMOR_STATE_DIR",
        default_value = "/var/lib/varmor/manager"
    )]
    state_dir: PathBuf,
    /// The CA bundle (default: STATE_DIR/ca.crt).
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// The operator certificate (default: STATE_DIR/admin.crt).
    #[arg(long)]
    cert_file: Option<PathBuf>,
    /// The operator key (default: STATE_DIR/admin.key).
    #[arg(long)]
    key_file: Option<PathBuf>,
}

impl Connection {
    fn read(&self, explicit: &Option<PathBuf>, default: &str) -> Result<String> {
        let path = explicit
            .clone()
            .unwrap_or_else(|| self.state_dir.join(default));
        std::fs::read_to_string(&path).with_context(|| {
            format!("cannot read {} (give --state-dir of the manager, or --ca-file/--cert-file/--key-file)", path.display())
        })
    }

    async fn connect(&self) -> Result<ControlPlaneClient<Channel>> {
        let ca = self.read(&self.ca_file, "ca.crt")?;
        let cert = self.read(&self.cert_file, "admin.crt")?;
        let key = self.read(&self.key_file, "admin.key")?;
        let tls = client_config(&ca, Some((&cert, &key)), &host_of_url(&self.manager));
        let channel = Endpoint::from_shared(self.manager.clone())
            .with_context(|| format!("invalid manager address {:?}", self.manager))?
            .tls_config(tls)?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .with_context(|| format!("cannot connect to the manager at {}", self.manager))?;
        Ok(ControlPlaneClient::new(channel))
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn status_error(e: tonic::Status) -> anyhow::Error {
    anyhow!("{}: {}", e.code(), e.message())
}

fn ago(t: Option<&prost_types::Timestamp>) -> String {
    let Some(t) = t else { return "-".into() };
    let then = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(t.seconds).unwrap_or(0));
    match SystemTime::now().duration_since(then) {
        Ok(d) if d.as_secs() < 120 => format!("{}s ago", d.as_secs()),
        Ok(d) if d.as_secs() < 7200 => format!("{}m ago", d.as_secs() / 60),
        Ok(d) => format!("{}h ago", d.as_secs() / 3600),
        Err(_) => "in the future".into(),
    }
}

fn capability(c: Option<&v1::EnforcerCapability>) -> &'static str {
    match c {
        Some(c) if c.available => "yes",
        Some(_) => "no",
        None => "?",
    }
}

/// `varmorctl nodes`: every node the manager knows.
pub fn nodes(conn: &Connection, json: bool, out: &mut dyn Write) -> Result<i32> {
    let nodes = runtime()?.block_on(async {
        let mut c = conn.connect().await?;
        c.list_nodes(v1::ListNodesRequest {})
            .await
            .map_err(status_error)
    })?;
    let nodes = nodes.into_inner().nodes;
    if json {
        let v: Vec<serde_json::Value> = nodes.iter().map(node_json).collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(0);
    }
    writeln!(
        out,
        "{:<24} {:<10} {:<9} {:<9} {:<5} {:<8} {:<9} {:>8} {:>8}",
        "NODE",
        "CONNECTED",
        "EXPECTED",
        "APPARMOR",
        "BPF",
        "SECCOMP",
        "LAST-SEEN",
        "EVENTS",
        "DROPPED"
    )?;
    for n in &nodes {
        let caps = n.capabilities.as_ref();
        writeln!(
            out,
            "{:<24} {:<10} {:<9} {:<9} {:<5} {:<8} {:<9} {:>8} {:>8}",
            n.name,
            n.connected,
            n.expected,
            capability(caps.and_then(|c| c.apparmor.as_ref())),
            capability(caps.and_then(|c| c.bpf.as_ref())),
            capability(caps.and_then(|c| c.seccomp.as_ref())),
            ago(n.last_seen.as_ref()),
            n.events_received,
            n.events_dropped
        )?;
    }
    for n in &nodes {
        let caps = n.capabilities.as_ref();
        for (name, c) in [
            ("AppArmor", caps.and_then(|c| c.apparmor.as_ref())),
            ("BPF", caps.and_then(|c| c.bpf.as_ref())),
            ("Seccomp", caps.and_then(|c| c.seccomp.as_ref())),
        ] {
            if let Some(c) = c.filter(|c| !c.available) {
                writeln!(out, "{}: {name} unavailable: {}", n.name, c.reason)?;
            }
        }
    }
    Ok(0)
}

fn node_json(n: &v1::Node) -> serde_json::Value {
    let cap = |c: Option<&v1::EnforcerCapability>| {
        c.map(|c| serde_json::json!({"available": c.available, "reason": c.reason}))
    };
    let caps = n.capabilities.as_ref();
    serde_json::json!({
        "name": n.name,
        "connected": n.connected,
        "expected": n.expected,
        "agentVersion": n.agent_version,
        "capabilities": {
            "appArmor": cap(caps.and_then(|c| c.apparmor.as_ref())),
            "bpf": cap(caps.and_then(|c| c.bpf.as_ref())),
            "seccomp": cap(caps.and_then(|c| c.seccomp.as_ref())),
        },
        "eventsReceived": n.events_received,
        "lastEventSequence": n.last_event_sequence,
        "eventsDropped": n.events_dropped,
        "profiles": n.profiles.iter().map(|p| serde_json::json!({
            "profileName": p.profile_name,
            "revision": p.revision,
            "results": p.results.iter().map(result_json).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

fn result_json(r: &v1::EnforcerResult) -> serde_json::Value {
    serde_json::json!({
        "enforcer": v1::Enforcer::try_from(r.enforcer).map(|e| e.as_str_name()).unwrap_or("?"),
        "status": v1::ResultStatus::try_from(r.status).map(|s| s.as_str_name()).unwrap_or("?"),
        "message": r.message,
    })
}

/// `varmorctl policies`: every policy with its status, and the sources that failed.
pub fn policies(conn: &Connection, json: bool, out: &mut dyn Write) -> Result<i32> {
    let resp = runtime()?.block_on(async {
        let mut c = conn.connect().await?;
        c.list_policies(v1::ListPoliciesRequest {})
            .await
            .map_err(status_error)
    })?;
    let resp = resp.into_inner();
    if json {
        let v = serde_json::json!({
            "policies": resp.policies.iter().map(|p| {
                let st = p.status.clone().unwrap_or_default();
                serde_json::json!({
                    "profileName": p.profile_name,
                    "source": p.source,
                    "revision": p.revision,
                    "enforcer": p.enforcer,
                    "mode": p.mode,
                    "phase": st.phase,
                    "ready": st.ready,
                    "desired": st.desired,
                    "current": st.current,
                    "conditions": st.conditions.iter().map(|c| serde_json::json!({
                        "type": c.r#type, "status": c.status, "reason": c.reason, "message": c.message,
                    })).collect::<Vec<_>>(),
                    "errors": p.errors.iter().map(|e| serde_json::json!({"path": e.path, "reason": e.reason})).collect::<Vec<_>>(),
                    "warnings": p.warnings,
                })
            }).collect::<Vec<_>>(),
            "errors": resp.errors.iter().map(|e| serde_json::json!({
                "source": e.source,
                "errors": e.errors.iter().map(|e| serde_json::json!({"path": e.path, "reason": e.reason})).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(0);
    }
    writeln!(
        out,
        "{:<40} {:<20} {:<16} {:<11} {:<6} {:>7} {:>9}",
        "PROFILE", "ENFORCER", "MODE", "PHASE", "READY", "NODES", "REVISION"
    )?;
    for p in &resp.policies {
        let st = p.status.clone().unwrap_or_default();
        writeln!(
            out,
            "{:<40} {:<20} {:<16} {:<11} {:<6} {:>7} {:>9}",
            p.profile_name,
            p.enforcer,
            p.mode,
            st.phase,
            st.ready,
            format!("{}/{}", st.current, st.desired),
            p.revision
        )?;
    }
    for p in &resp.policies {
        let st = p.status.clone().unwrap_or_default();
        for c in st
            .conditions
            .iter()
            .filter(|c| c.status == "False" && !c.message.is_empty())
        {
            writeln!(
                out,
                "{}: {} {}: {}",
                p.profile_name, c.r#type, c.reason, c.message
            )?;
        }
        for e in &p.errors {
            writeln!(
                out,
                "{} ({}): invalid, previous version kept: {}: {}",
                p.profile_name, p.source, e.path, e.reason
            )?;
        }
    }
    for s in &resp.errors {
        for e in &s.errors {
            writeln!(out, "{}: {}: {}", s.source, e.path, e.reason)?;
        }
    }
    Ok(0)
}

/// Filters of `varmorctl events`.
#[derive(Debug, Args, Clone)]
pub struct EventArgs {
    /// Keep streaming new events (otherwise stop after --timeout without events).
    #[arg(long, short)]
    follow: bool,
    /// Only events from this node.
    #[arg(long)]
    node: Option<String>,
    /// Only events of this namespace.
    #[arg(long)]
    namespace: Option<String>,
    /// Only events of this policy.
    #[arg(long)]
    policy: Option<String>,
    /// Only events whose action contains this (DENIED, AUDIT, ALLOWED).
    #[arg(long)]
    action: Option<String>,
    /// Without --follow: stop when no event arrived for this many seconds.
    #[arg(long, default_value = "2")]
    timeout: u64,
}

/// `varmorctl events`: the cluster-wide violation stream, one JSON object per line (the
/// fields of violations.log).
pub fn events(conn: &Connection, args: &EventArgs, out: &mut dyn Write) -> Result<i32> {
    runtime()?.block_on(async {
        let mut c = conn.connect().await?;
        let filter = v1::EventFilter {
            node_name: args.node.clone().unwrap_or_default(),
            namespace: args.namespace.clone().unwrap_or_default(),
            policy: args.policy.clone().unwrap_or_default(),
            action: args.action.clone().unwrap_or_default(),
        };
        let mut stream = c
            .watch_events(v1::WatchEventsRequest {
                filter: Some(filter),
            })
            .await
            .map_err(status_error)?
            .into_inner();
        loop {
            let next = if args.follow {
                stream.message().await
            } else {
                match tokio::time::timeout(Duration::from_secs(args.timeout), stream.message())
                    .await
                {
                    Ok(m) => m,
                    Err(_) => return Ok(0),
                }
            };
            match next.map_err(status_error)? {
                Some(e) => {
                    writeln!(out, "{}", serde_json::to_string(&event_json(&e))?)?;
                    out.flush()?;
                }
                None => return Ok(0),
            }
        }
    })
}

/// An event in the violations.log field names.
pub fn event_json(e: &v1::Event) -> serde_json::Value {
    let event: serde_json::Value =
        serde_json::from_str(&e.event_json).unwrap_or(serde_json::Value::Null);
    serde_json::json!({
        "sequence": e.sequence,
        "nodeName": e.node_name,
        "podUID": e.pod_uid,
        "podName": e.pod_name,
        "podNamespace": e.pod_namespace,
        "containerID": e.container_id,
        "containerName": e.container_name,
        "image": e.image,
        "pid": e.pid,
        "mntNsID": e.mnt_ns_id,
        "eventTimestamp": e.time.as_ref().map(|t| t.seconds).unwrap_or_default(),
        "enforcer": match v1::Enforcer::try_from(e.enforcer) {
            Ok(v1::Enforcer::Apparmor) => "AppArmor",
            Ok(v1::Enforcer::Bpf) => "BPF",
            Ok(v1::Enforcer::Seccomp) => "Seccomp",
            _ => "",
        },
        "action": e.action,
        "profileName": e.profile_name,
        "policyKind": e.policy_kind,
        "policyName": e.policy_name,
        "policyNamespace": e.policy_namespace,
        "event": event,
    })
}
