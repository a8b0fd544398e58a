//! Test fixtures: a CA made with rcgen, a fake `AgentGateway` over real mTLS that can be stopped
//! and restarted on the same port (it runs in its own runtime, so stopping it cuts every
//! connection like a dying process), and helpers to start agents.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, ExtendedKeyUsagePurpose,
    IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use varmor_agent::{BackoffConfig, Config, EnforcerKind, Enforcers, RecordingEnforcer};
use varmor_proto::v1;
use varmor_proto::v1::agent_gateway_server::{AgentGateway, AgentGatewayServer};
use varmor_proto::v1::manager_message::Message as ManagerMsg;

pub const TOKEN: &str = "join-token-for-tests";

/// Fails the test when `fut` does not finish within `secs` seconds.
pub async fn within<T>(secs: u64, what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {secs}s waiting for {what}"))
}

/// Polls `cond` until it holds.
pub async fn eventually(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    within(secs, what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// A CA and the certificates it issues, with the varmor identity scheme.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pub ca_pem: String,
}

impl TestCa {
    pub fn new() -> Self {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "varmor test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("CA");
        TestCa {
            ca_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    fn leaf_params(uri: &str, names: &[String], lifetime: Duration) -> CertificateParams {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        leaf_setup(&mut params, uri, names, lifetime);
        params
    }

    /// A certificate (PEM) and key (PEM) for `uri` (e.g. `varmor://admin/test`).
    pub fn issue(&self, uri: &str, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let params = Self::leaf_params(uri, &names, Duration::from_secs(3600));
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        (cert.pem(), key.serialize_pem())
    }

    /// Signs a CSR for node `node`, valid for `lifetime`.
    pub fn sign_node_csr(
        &self,
        csr_pem: &str,
        node: &str,
        requested: &[String],
        lifetime: Duration,
    ) -> Result<String, String> {
        let mut csr =
            CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| e.to_string())?;
        let mut names = vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ];
        for n in requested {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
        leaf_setup(
            &mut csr.params,
            &format!("varmor://node/{node}"),
            &names,
            lifetime,
        );
        Ok(csr
            .signed_by(&self.issuer)
            .map_err(|e| e.to_string())?
            .pem())
    }
}

fn leaf_setup(params: &mut CertificateParams, uri: &str, names: &[String], lifetime: Duration) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::seconds(1);
    params.not_after = now + time::Duration::try_from(lifetime).expect("lifetime");
    params.is_ca = IsCa::NoCa;
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.subject_alt_names = vec![SanType::URI(uri.to_string().try_into().expect("uri"))];
    params
        .subject_alt_names
        .extend(varmor_rpc::tls::san_types(names).expect("sans"));
}

/// A batch as the fake gateway received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenBatch {
    pub sequences: Vec<u64>,
    pub dropped: u64,
}

/// The fake manager's state; it outlives server restarts.
pub struct Gateway {
    pub ca: TestCa,
    server_cert: (String, String),
    pub cert_lifetime: Mutex<Duration>,
    pub joins: AtomicUsize,
    pub renews: AtomicUsize,
    pub sessions: AtomicUsize,
    /// What the node must hold: the snapshot of the next session.
    bundles: Mutex<BTreeMap<String, v1::ProfileBundle>>,
    current: Mutex<Option<mpsc::UnboundedSender<Result<v1::ManagerMessage, Status>>>>,
    hello_tx: mpsc::UnboundedSender<(String, v1::Hello)>,
    hello_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<(String, v1::Hello)>>,
    ack_tx: mpsc::UnboundedSender<(String, v1::Ack)>,
    ack_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<(String, v1::Ack)>>,
    batch_tx: mpsc::UnboundedSender<SeenBatch>,
    batch_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<SeenBatch>>,
    /// Whether event batches are acknowledged.
    pub ack_events: AtomicBool,
    /// Highest event sequence accepted, and the accepted events.
    pub accepted: Mutex<Vec<v1::Event>>,
    pub dropped_reported: AtomicUsize,
}

impl Gateway {
    pub fn new() -> Arc<Self> {
        let ca = TestCa::new();
        let server_cert = ca.issue("varmor://server/manager", &["localhost", "127.0.0.1"]);
        let (hello_tx, hello_rx) = mpsc::unbounded_channel();
        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        let (batch_tx, batch_rx) = mpsc::unbounded_channel();
        Arc::new(Gateway {
            ca,
            server_cert,
            cert_lifetime: Mutex::new(Duration::from_secs(24 * 3600)),
            joins: AtomicUsize::new(0),
            renews: AtomicUsize::new(0),
            sessions: AtomicUsize::new(0),
            bundles: Mutex::default(),
            current: Mutex::default(),
            hello_tx,
            hello_rx: tokio::sync::Mutex::new(hello_rx),
            ack_tx,
            ack_rx: tokio::sync::Mutex::new(ack_rx),
            batch_tx,
            batch_rx: tokio::sync::Mutex::new(batch_rx),
            ack_events: AtomicBool::new(true),
            accepted: Mutex::default(),
            dropped_reported: AtomicUsize::new(0),
        })
    }

    /// Sets a bundle for future snapshots without telling the connected agent.
    pub fn set_bundle(&self, b: v1::ProfileBundle) {
        self.bundles
            .lock()
            .unwrap()
            .insert(b.profile_name.clone(), b);
    }

    /// Removes a bundle from future snapshots without telling the connected agent.
    pub fn unset_bundle(&self, name: &str) {
        self.bundles.lock().unwrap().remove(name);
    }

    /// Sets a bundle and sends it to the connected agent as an update.
    pub fn update(&self, b: v1::ProfileBundle) {
        self.set_bundle(b.clone());
        self.send(ManagerMsg::Update(b));
    }

    /// Removes a bundle and tells the connected agent.
    pub fn remove(&self, name: &str, revision: u64) {
        self.unset_bundle(name);
        self.send(ManagerMsg::Removal(v1::Removal {
            profile_name: name.into(),
            revision,
        }));
    }

    fn send(&self, m: ManagerMsg) {
        let tx = self
            .current
            .lock()
            .unwrap()
            .clone()
            .expect("an agent session");
        tx.send(Ok(v1::ManagerMessage { message: Some(m) }))
            .expect("session open");
    }

    pub async fn next_hello(&self) -> (String, v1::Hello) {
        within(10, "a Hello", async {
            self.hello_rx.lock().await.recv().await
        })
        .await
        .expect("hello channel")
    }

    pub async fn next_ack(&self) -> v1::Ack {
        within(10, "an Ack", async {
            self.ack_rx.lock().await.recv().await
        })
        .await
        .expect("ack channel")
        .1
    }

    /// The next `n` acks, by profile name.
    pub async fn acks(&self, n: usize) -> BTreeMap<String, v1::Ack> {
        let mut m = BTreeMap::new();
        for _ in 0..n {
            let a = self.next_ack().await;
            m.insert(a.profile_name.clone(), a);
        }
        m
    }

    pub async fn next_batch(&self) -> SeenBatch {
        within(10, "an event batch", async {
            self.batch_rx.lock().await.recv().await
        })
        .await
        .expect("batch channel")
    }

    /// Waits up to `ms` for a batch; `None` when none came.
    pub async fn batch_within(&self, ms: u64) -> Option<SeenBatch> {
        tokio::time::timeout(Duration::from_millis(ms), async {
            self.batch_rx.lock().await.recv().await
        })
        .await
        .ok()
        .flatten()
    }

    pub fn accepted_sequences(&self) -> Vec<u64> {
        self.accepted
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.sequence)
            .collect()
    }
}

#[derive(Clone)]
struct Service(Arc<Gateway>);

type Stream<T> = UnboundedReceiverStream<Result<T, Status>>;

#[tonic::async_trait]
impl AgentGateway for Service {
    async fn join(
        &self,
        request: Request<v1::JoinRequest>,
    ) -> Result<Response<v1::JoinResponse>, Status> {
        let r = request.into_inner();
        if r.join_token != TOKEN {
            return Err(Status::unauthenticated("invalid join token"));
        }
        self.0.joins.fetch_add(1, Ordering::SeqCst);
        let lifetime = *self.0.cert_lifetime.lock().unwrap();
        let cert = self
            .0
            .ca
            .sign_node_csr(&r.csr_pem, &r.node_name, &r.subject_alt_names, lifetime)
            .map_err(Status::invalid_argument)?;
        Ok(Response::new(v1::JoinResponse {
            certificate_pem: cert,
            ca_pem: self.0.ca.ca_pem.clone(),
            not_after: None,
        }))
    }

    async fn renew(
        &self,
        request: Request<v1::RenewRequest>,
    ) -> Result<Response<v1::JoinResponse>, Status> {
        let node = varmor_rpc::tls::require_node(&request)?;
        let r = request.into_inner();
        self.0.renews.fetch_add(1, Ordering::SeqCst);
        let lifetime = *self.0.cert_lifetime.lock().unwrap();
        let cert = self
            .0
            .ca
            .sign_node_csr(&r.csr_pem, &node, &r.subject_alt_names, lifetime)
            .map_err(Status::invalid_argument)?;
        Ok(Response::new(v1::JoinResponse {
            certificate_pem: cert,
            ca_pem: self.0.ca.ca_pem.clone(),
            not_after: None,
        }))
    }

    type SyncStream = Stream<v1::ManagerMessage>;

    async fn sync(
        &self,
        request: Request<tonic::Streaming<v1::AgentMessage>>,
    ) -> Result<Response<Self::SyncStream>, Status> {
        let node = varmor_rpc::tls::require_node(&request)?;
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::unbounded_channel();
        let gw = self.0.clone();
        tokio::spawn(async move {
            let hello = match inbound.message().await {
                Ok(Some(v1::AgentMessage {
                    message: Some(v1::agent_message::Message::Hello(h)),
                })) => h,
                other => panic!("the first message must be a Hello, got {other:?}"),
            };
            gw.sessions.fetch_add(1, Ordering::SeqCst);
            let _ = gw.hello_tx.send((node.clone(), hello));
            let bundles = gw.bundles.lock().unwrap().values().cloned().collect();
            let _ = tx.send(Ok(v1::ManagerMessage {
                message: Some(ManagerMsg::Snapshot(v1::Snapshot { bundles })),
            }));
            *gw.current.lock().unwrap() = Some(tx);
            while let Ok(Some(m)) = inbound.message().await {
                if let Some(v1::agent_message::Message::Ack(a)) = m.message {
                    let _ = gw.ack_tx.send((node.clone(), a));
                }
            }
        });
        Ok(Response::new(UnboundedReceiverStream::new(rx)))
    }

    type PublishEventsStream = Stream<v1::EventAck>;

    async fn publish_events(
        &self,
        request: Request<tonic::Streaming<v1::EventBatch>>,
    ) -> Result<Response<Self::PublishEventsStream>, Status> {
        varmor_rpc::tls::require_node(&request)?;
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::unbounded_channel();
        let gw = self.0.clone();
        tokio::spawn(async move {
            while let Ok(Some(batch)) = inbound.message().await {
                let up_to = {
                    let mut accepted = gw.accepted.lock().unwrap();
                    let mut high = accepted.last().map_or(0, |e| e.sequence);
                    for e in &batch.events {
                        if e.sequence > high {
                            high = e.sequence;
                            accepted.push(e.clone());
                        }
                    }
                    high
                };
                gw.dropped_reported
                    .fetch_add(batch.dropped as usize, Ordering::SeqCst);
                let _ = gw.batch_tx.send(SeenBatch {
                    sequences: batch.events.iter().map(|e| e.sequence).collect(),
                    dropped: batch.dropped,
                });
                if gw.ack_events.load(Ordering::SeqCst) {
                    let _ = tx.send(Ok(v1::EventAck {
                        up_to_sequence: up_to,
                    }));
                }
            }
        });
        Ok(Response::new(UnboundedReceiverStream::new(rx)))
    }
}

/// A running fake gateway. Stopping it drops its runtime: every connection is cut.
pub struct GatewayServer {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl GatewayServer {
    /// Starts on `addr` (port 0: a free port).
    pub fn start(gw: Arc<Gateway>, addr: SocketAddr) -> Self {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
                addr_tx
                    .send(listener.local_addr().expect("addr"))
                    .expect("send addr");
                let config = varmor_rpc::tls::server_config(
                    &gw.server_cert.0,
                    &gw.server_cert.1,
                    &gw.ca.ca_pem,
                    varmor_rpc::tls::ClientAuth::Optional,
                )
                .expect("server config");
                let incoming = varmor_rpc::tls::tls_incoming(listener, config);
                let serve = tonic::transport::Server::builder()
                    .add_service(AgentGatewayServer::new(Service(gw)))
                    .serve_with_incoming(incoming);
                tokio::select! {
                    r = serve => r.expect("serve"),
                    _ = stop_rx => {}
                }
            });
            rt.shutdown_timeout(Duration::from_millis(100));
        });
        let addr = addr_rx.recv().expect("server address");
        GatewayServer {
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().expect("server thread");
        }
    }
}

impl Drop for GatewayServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A port that is free now (for a manager that starts later).
pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// Files and settings of one test node.
pub struct Node {
    pub dir: tempfile::TempDir,
    pub name: String,
}

impl Node {
    pub fn new(gw: &Gateway, name: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("ca.crt"), &gw.ca.ca_pem).expect("ca");
        std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).expect("token");
        std::fs::create_dir_all(dir.path().join("host")).expect("host root");
        Node {
            dir,
            name: name.into(),
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn host_root(&self) -> PathBuf {
        self.dir.path().join("host")
    }

    pub fn seccomp_dir(&self) -> PathBuf {
        self.dir.path().join("seccomp")
    }

    pub fn token_file(&self) -> PathBuf {
        self.dir.path().join("token")
    }

    pub fn config(&self, manager_url: &str) -> Config {
        let mut c = Config::new(
            manager_url,
            &self.name,
            self.dir.path().join("ca.crt"),
            self.token_file(),
            self.state_dir(),
            "127.0.0.1:0".parse().expect("addr"),
        );
        c.host_root = self.host_root();
        c.seccomp_dir = Some(self.seccomp_dir());
        c.backoff = BackoffConfig {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(300),
        };
        c.keepalive_interval = Duration::from_secs(1);
        c.keepalive_timeout = Duration::from_secs(1);
        c.connect_timeout = Duration::from_secs(2);
        c
    }

    /// Writes a host file under the host root.
    pub fn host_file(&self, path: &str, content: &str) {
        let p = self.host_root().join(path.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, content).expect("write");
    }

    pub fn host_dir(&self, path: &str) {
        std::fs::create_dir_all(self.host_root().join(path.trim_start_matches('/')))
            .expect("mkdir");
    }
}

/// In-memory enforcers, all available.
pub struct Recorders {
    pub apparmor: RecordingEnforcer,
    pub bpf: RecordingEnforcer,
    pub seccomp: RecordingEnforcer,
}

impl Recorders {
    pub fn new() -> Self {
        Recorders {
            apparmor: RecordingEnforcer::new(EnforcerKind::AppArmor),
            bpf: RecordingEnforcer::new(EnforcerKind::Bpf),
            seccomp: RecordingEnforcer::new(EnforcerKind::Seccomp),
        }
    }

    pub fn enforcers(&self) -> Enforcers {
        Enforcers::new([
            Arc::new(self.apparmor.clone()) as Arc<dyn varmor_agent::Enforcer>,
            Arc::new(self.bpf.clone()) as Arc<dyn varmor_agent::Enforcer>,
            Arc::new(self.seccomp.clone()) as Arc<dyn varmor_agent::Enforcer>,
        ])
    }
}

/// A bundle for profile `varmor-demo-{name}` with the given enforcers ("apparmor", "bpf",
/// "seccomp") at `revision`. `variant` changes the content without changing anything else.
pub fn bundle(name: &str, revision: u64, enforcers: &[&str], variant: &str) -> v1::ProfileBundle {
    let has = |e: &str| enforcers.contains(&e);
    v1::ProfileBundle {
        profile_name: format!("varmor-demo-{name}"),
        identity: Some(v1::PolicyIdentity {
            kind: v1::PolicyKind::VarmorPolicy as i32,
            namespace: "demo".into(),
            name: name.into(),
        }),
        revision,
        target: Some(v1::Target {
            kind: "Deployment".into(),
            name: name.into(),
            ..Default::default()
        }),
        enforcers: Some(v1::Enforcers {
            apparmor: has("apparmor"),
            bpf: has("bpf"),
            seccomp: has("seccomp"),
        }),
        mode: "EnhanceProtect".into(),
        apparmor: has("apparmor").then(|| v1::AppArmorProfile {
            name: format!("varmor-demo-{name}"),
            text: format!("profile varmor-demo-{name} {{ }} # {variant}"),
            complain: false,
        }),
        seccomp: has("seccomp").then(|| v1::SeccompProfile {
            kind: Some(v1::seccomp_profile::Kind::LocalhostJson(format!(
                r#"{{"defaultAction":"SCMP_ACT_ALLOW","variant":"{variant}"}}"#
            ))),
        }),
        warnings: vec![variant.to_string()],
        ..Default::default()
    }
}

/// The status of enforcer `kind` in an ack.
pub fn result_of(ack: &v1::Ack, kind: v1::Enforcer) -> (v1::ResultStatus, String) {
    let r = ack
        .results
        .iter()
        .find(|r| r.enforcer == kind as i32)
        .unwrap_or_else(|| panic!("no {kind:?} result in {ack:?}"));
    (
        v1::ResultStatus::try_from(r.status).expect("status"),
        r.message.clone(),
    )
}

/// A NodeState client presenting `identity` (certificate and key PEM), or none.
pub async fn node_state_client(
    addr: SocketAddr,
    ca_pem: &str,
    identity: Option<(&str, &str)>,
) -> Result<Channel, tonic::transport::Error> {
    let tls = varmor_rpc::tls::client_config(ca_pem, identity, "127.0.0.1");
    tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
        .expect("endpoint")
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
}

pub fn file_mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777
}
