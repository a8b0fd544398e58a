//! Helpers for the in-process tests: a real manager on 127.0.0.1:0 with temporary
//! directories, and real clients over mutual TLS.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::Streaming;
use varmor_manager::{Config, Manager};
use varmor_proto::v1;
use varmor_proto::v1::agent_gateway_client::AgentGatewayClient;
use varmor_proto::v1::control_plane_client::ControlPlaneClient;
use varmor_proto::v1::manager_message::Message as ManagerMsg;

/// How long a test waits for something that should take milliseconds.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// Logs to the test output (`RUST_LOG=debug cargo test` for more).
pub fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_test_writer()
        .try_init();
}

/// Temporary policy and state directories.
pub struct Dirs {
    _root: tempfile::TempDir,
    pub policies: PathBuf,
    pub state: PathBuf,
}

impl Dirs {
    pub fn new() -> Self {
        let root = tempfile::tempdir().expect("tempdir");
        let policies = root.path().join("policies");
        let state = root.path().join("state");
        std::fs::create_dir(&policies).expect("mkdir");
        Dirs {
            _root: root,
            policies,
            state,
        }
    }

    /// Writes a policy file whole (temporary file and rename), as deployment tools do.
    pub fn write_policy(&self, name: &str, text: &str) {
        let tmp = self.policies.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).expect("write policy");
        std::fs::rename(&tmp, self.policies.join(name)).expect("rename policy");
    }

    pub fn remove_policy(&self, name: &str) {
        std::fs::remove_file(self.policies.join(name)).expect("remove policy");
    }

    pub fn source(&self, name: &str) -> String {
        self.policies.join(name).display().to_string()
    }

    pub fn read_state(&self, name: &str) -> String {
        std::fs::read_to_string(self.state.join(name)).expect("state file")
    }
}

/// Starts a manager on a free loopback port.
pub async fn start(dirs: &Dirs) -> Manager {
    start_on(dirs, "127.0.0.1:0".parse().expect("addr")).await
}

/// Starts a manager on `addr`.
pub async fn start_on(dirs: &Dirs, addr: std::net::SocketAddr) -> Manager {
    let mut config = Config::new(&dirs.policies, &dirs.state, addr);
    config.hello_timeout = Duration::from_secs(2);
    let m = Manager::start(config).await.expect("manager starts");
    m.wait_policies_loaded().await.expect("policies loaded");
    m
}

fn url(m: &Manager) -> String {
    format!("https://127.0.0.1:{}", m.local_addr().port())
}

/// A TLS channel trusting `ca_pem`, presenting `identity` when given.
pub async fn channel(
    m: &Manager,
    ca_pem: &str,
    identity: Option<(&str, &str)>,
) -> Result<Channel, tonic::transport::Error> {
    let tls = varmor_rpc::tls::client_config(ca_pem, identity, "localhost");
    Endpoint::from_shared(url(m))?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
}

pub fn ca_pem(m: &Manager) -> String {
    std::fs::read_to_string(m.state_dir().join("ca.crt")).expect("ca.crt")
}

pub fn join_token(m: &Manager) -> String {
    std::fs::read_to_string(m.state_dir().join("join-token")).expect("join-token")
}

/// The operator client, with the admin certificate from the state directory.
pub async fn admin(m: &Manager) -> ControlPlaneClient<Channel> {
    let cert = std::fs::read_to_string(m.state_dir().join("admin.crt")).expect("admin.crt");
    let key = std::fs::read_to_string(m.state_dir().join("admin.key")).expect("admin.key");
    ControlPlaneClient::new(
        channel(m, &ca_pem(m), Some((&cert, &key)))
            .await
            .expect("admin connects"),
    )
}

/// A node's credentials.
#[derive(Clone)]
pub struct Node {
    pub name: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// A gateway client without a client certificate (what `Join` uses).
pub async fn anonymous_gateway(m: &Manager) -> AgentGatewayClient<Channel> {
    AgentGatewayClient::new(channel(m, &ca_pem(m), None).await.expect("connects"))
}

/// Joins with the token from the state directory.
pub async fn join(m: &Manager, name: &str) -> Node {
    let (key_pem, csr_pem) = varmor_rpc::tls::new_key_and_csr(name).expect("csr");
    let resp = anonymous_gateway(m)
        .await
        .join(v1::JoinRequest {
            node_name: name.into(),
            join_token: join_token(m),
            csr_pem,
            subject_alt_names: vec![],
        })
        .await
        .expect("join succeeds")
        .into_inner();
    assert_eq!(resp.ca_pem, ca_pem(m));
    Node {
        name: name.into(),
        cert_pem: resp.certificate_pem,
        key_pem,
    }
}

/// A gateway client with a node certificate.
pub async fn gateway(m: &Manager, node: &Node) -> AgentGatewayClient<Channel> {
    AgentGatewayClient::new(
        channel(m, &ca_pem(m), Some((&node.cert_pem, &node.key_pem)))
            .await
            .expect("node connects"),
    )
}

/// Node facts with these disk devices.
pub fn facts(disks: &[&str]) -> v1::NodeFacts {
    v1::NodeFacts {
        disk_devices: disks.iter().map(|d| d.to_string()).collect(),
        disk_devices_known: true,
        kernel_release: "6.1.0-test".into(),
        architecture: "x86_64".into(),
    }
}

/// Every enforcer available.
pub fn all_capabilities() -> v1::KernelCapabilities {
    let yes = Some(v1::EnforcerCapability {
        available: true,
        reason: String::new(),
    });
    v1::KernelCapabilities {
        apparmor: yes.clone(),
        bpf: yes.clone(),
        seccomp: yes,
    }
}

/// A simulated agent session.
pub struct Agent {
    pub tx: mpsc::Sender<v1::AgentMessage>,
    pub rx: Streaming<v1::ManagerMessage>,
}

impl Agent {
    /// Opens a Sync stream, sends the hello, returns the session and the snapshot.
    pub async fn connect(m: &Manager, node: &Node, facts: v1::NodeFacts) -> (Agent, v1::Snapshot) {
        let mut client = gateway(m, node).await;
        let (tx, rx) = mpsc::channel(16);
        tx.send(v1::AgentMessage {
            message: Some(v1::agent_message::Message::Hello(v1::Hello {
                facts: Some(facts),
                capabilities: Some(all_capabilities()),
                held: vec![],
                agent_version: "test".into(),
            })),
        })
        .await
        .expect("hello queued");
        let rx = client
            .sync(ReceiverStream::new(rx))
            .await
            .expect("sync accepted")
            .into_inner();
        let mut agent = Agent { tx, rx };
        match agent.next().await {
            ManagerMsg::Snapshot(s) => (agent, s),
            other => panic!("expected a snapshot first, got {other:?}"),
        }
    }

    /// The next message from the manager.
    pub async fn next(&mut self) -> ManagerMsg {
        tokio::time::timeout(PATIENCE, self.rx.message())
            .await
            .expect("a message within the patience")
            .expect("stream ok")
            .expect("stream open")
            .message
            .expect("message set")
    }

    /// Acks a revision with one result per enforcer.
    pub async fn ack(
        &self,
        profile: &str,
        revision: u64,
        results: &[(v1::Enforcer, v1::ResultStatus, &str)],
    ) {
        self.tx
            .send(v1::AgentMessage {
                message: Some(v1::agent_message::Message::Ack(v1::Ack {
                    profile_name: profile.into(),
                    revision,
                    results: results
                        .iter()
                        .map(|(e, s, m)| v1::EnforcerResult {
                            enforcer: *e as i32,
                            status: *s as i32,
                            message: m.to_string(),
                        })
                        .collect(),
                })),
            })
            .await
            .expect("ack queued");
    }
}

/// A VarmorPolicy `demo/<name>` on `enforcer` in EnhanceProtect with `rules` as hardening
/// rules (RuntimeDefault when there are none).
pub fn policy(name: &str, enforcer: &str, rules: &[&str]) -> String {
    let body = if rules.is_empty() {
        "    mode: RuntimeDefault\n".to_string()
    } else {
        format!(
            "    mode: EnhanceProtect\n    enhanceProtect:\n      hardeningRules:\n{}",
            rules
                .iter()
                .map(|r| format!("      - {r}\n"))
                .collect::<String>()
        )
    };
    format!(
        "apiVersion: crd.varmor.org/v1beta1\nkind: VarmorPolicy\nmetadata:\n  name: {name}\n  namespace: demo\nspec:\n  target:\n    kind: Deployment\n    name: {name}\n  policy:\n    enforcer: {enforcer}\n{body}"
    )
}

/// Polls until `f` is true.
pub async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if f().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One policy from ListPolicies.
pub async fn policy_info(
    admin: &mut ControlPlaneClient<Channel>,
    profile: &str,
) -> Option<v1::PolicyInfo> {
    admin
        .list_policies(v1::ListPoliciesRequest {})
        .await
        .expect("list policies")
        .into_inner()
        .policies
        .into_iter()
        .find(|p| p.profile_name == profile)
}

pub fn state_path(m: &Manager, name: &str) -> PathBuf {
    Path::new(m.state_dir()).join(name)
}
