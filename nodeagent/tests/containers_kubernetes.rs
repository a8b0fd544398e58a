//! Kubernetes binding: real containerd (namespace `k8s.io`, containers carrying the OCI
//! annotations containerd's CRI plugin writes) and a fake CRI `RuntimeService` on a unix socket
//! that returns the pod annotations the webhook writes. Proves the annotation-based binding,
//! the `unconfined` opt-out, sandbox containers skipped, the pod's identity and addresses, and
//! a pending profile bound when its bundle arrives.

mod common;
mod containers_fixture;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::*;
use containers_fixture::*;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};
use varmor_agent::{Agent, Mode, RuntimeConfig};
use varmor_proto::cri;
use varmor_proto::cri::runtime_service_server::{RuntimeService, RuntimeServiceServer};
use varmor_proto::v1;
use varmor_proto::v1::node_state_client::NodeStateClient;

/// A CRI runtime that knows some pods.
#[derive(Clone, Default)]
struct FakeCri {
    pods: Arc<Mutex<HashMap<String, cri::PodSandboxStatus>>>,
    calls: Arc<AtomicUsize>,
}

impl FakeCri {
    fn add_pod(&self, sandbox: &str, name: &str, ip: &str, annotations: &[(&str, &str)]) {
        self.pods.lock().unwrap().insert(
            sandbox.to_string(),
            cri::PodSandboxStatus {
                id: sandbox.into(),
                metadata: Some(cri::PodSandboxMetadata {
                    name: name.into(),
                    uid: format!("uid-{name}"),
                    namespace: "demo".into(),
                    attempt: 0,
                }),
                network: Some(cri::PodSandboxNetworkStatus {
                    ip: ip.into(),
                    additional_ips: vec![],
                }),
                annotations: annotations
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..Default::default()
            },
        );
    }

    fn serve(&self, socket: &Path) {
        let listener = tokio::net::UnixListener::bind(socket).expect("bind the CRI socket");
        let service = RuntimeServiceServer::new(self.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(UnixListenerStream::new(listener))
                .await
                .expect("fake CRI");
        });
    }
}

#[tonic::async_trait]
impl RuntimeService for FakeCri {
    async fn pod_sandbox_status(
        &self,
        request: Request<cri::PodSandboxStatusRequest>,
    ) -> Result<Response<cri::PodSandboxStatusResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let id = request.into_inner().pod_sandbox_id;
        let status = self
            .pods
            .lock()
            .unwrap()
            .get(&id)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("sandbox {id} not found")))?;
        Ok(Response::new(cri::PodSandboxStatusResponse {
            status: Some(status),
            info: HashMap::new(),
        }))
    }
}

/// The OCI annotations containerd's CRI plugin puts on a container of sandbox `sandbox`.
fn cri_annotations<'a>(sandbox: &'a str, name: &'a str, kind: &'a str) -> [(&'a str, &'a str); 3] {
    [
        ("io.kubernetes.cri.container-type", kind),
        ("io.kubernetes.cri.sandbox-id", sandbox),
        ("io.kubernetes.cri.container-name", name),
    ]
}

const BPF: &str = "container.bpf.security.beta.varmor.org/";

#[tokio::test(flavor = "multi_thread")]
async fn pod_annotations_read_through_cri_bind_and_unconfined_opts_out() {
    logs();
    let Some(ctd) = Containerd::start(&["k8s.io"]) else {
        return;
    };
    let fake = FakeCri::default();
    fake.add_pod(
        "sb-web",
        "web-0",
        "10.244.1.7",
        &[
            (&format!("{BPF}app"), "localhost/varmor-demo-web"),
            (&format!("{BPF}side"), "unconfined"),
        ],
    );
    fake.add_pod(
        "sb-late",
        "late-0",
        "10.244.1.8",
        &[(&format!("{BPF}app"), "localhost/varmor-demo-late")],
    );
    let cri_socket = ctd.dir.path().join("cri.sock");
    fake.serve(&cri_socket);

    // The pod's sandbox and its two containers; a second pod whose profile is not held yet.
    ctd.run(
        "k8s.io",
        "sb-web",
        &[],
        &cri_annotations("sb-web", "POD", "sandbox"),
    );
    let app_pid = ctd.run(
        "k8s.io",
        "web-app",
        &[],
        &cri_annotations("sb-web", "app", "container"),
    );
    ctd.run(
        "k8s.io",
        "web-side",
        &[],
        &cri_annotations("sb-web", "side", "container"),
    );
    ctd.run(
        "k8s.io",
        "late-app",
        &[],
        &cri_annotations("sb-late", "app", "container"),
    );
    // A container outside any pod in the Kubernetes namespace.
    ctd.run("k8s.io", "loose", &[], &[]);

    let gw = Gateway::new();
    // The webhook matched the target; the agent goes by the annotations alone.
    gw.set_bundle(bundle("web", 1, &["bpf"], "v1"));
    let server = GatewayServer::start(gw.clone(), "127.0.0.1:0".parse().unwrap());
    let node = Node::new(&gw, "node-k");
    let mut config = node.config(&server.url());
    config.host_root = "/".into();
    let mut runtime = RuntimeConfig::new(Mode::Kubernetes);
    runtime.containerd_socket = ctd.socket.clone();
    runtime.cri_socket = Some(cri_socket);
    assert_eq!(runtime.namespaces, ["k8s.io"]);
    config.containers = Some(runtime);
    let observer = Observer::default();
    let agent = Agent::start_with(config, observer.enforcers())
        .await
        .expect("agent");
    gw.next_hello().await;

    eventually(20, "web-app bound", || {
        !observer.binds_of("web-app").is_empty()
    })
    .await;
    let Seen::Bind { container, profile } = &observer.binds_of("web-app")[0] else {
        unreachable!()
    };
    assert_eq!(profile, "varmor-demo-web");
    assert_eq!(container.mnt_ns_id, mnt_ns_of(app_pid));
    assert_eq!(
        (
            container.name.as_str(),
            container.pod_name.as_str(),
            container.pod_namespace.as_str()
        ),
        ("app", "web-0", "demo")
    );
    assert_eq!(container.pod_uid, "uid-web-0");
    assert_eq!(
        container.pod_ips,
        vec!["10.244.1.7".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(container.runtime_namespace, "k8s.io");

    let list = |agent: &Agent| agent.containers().list();
    eventually(10, "all containers seen", || list(&agent).len() == 4).await;
    let by_id = |id: &str| {
        list(&agent)
            .into_iter()
            .find(|c| c.info.id == id)
            .unwrap_or_else(|| panic!("{id} not listed"))
    };
    // The sandbox container is not a workload: not listed at all.
    assert!(!list(&agent).iter().any(|c| c.info.id == "sb-web"));
    let side = by_id("web-side");
    assert_eq!(side.binding.as_str(), "Unbound");
    assert_eq!(side.message, "opted out (BPF unconfined)");
    assert!(observer.binds_of("web-side").is_empty());
    let loose = by_id("loose");
    assert_eq!(loose.binding.as_str(), "Unbound");
    assert_eq!(loose.message, "not a container of a Kubernetes pod");
    let late = by_id("late-app");
    assert_eq!(late.binding.as_str(), "Pending");
    assert_eq!(late.profile.as_deref(), Some("varmor-demo-late"));
    // One CRI call per pod: the second container of sb-web came from the cache.
    assert_eq!(fake.calls.load(Ordering::SeqCst), 2);

    // The pending profile's bundle arrives: its container is bound.
    gw.update(bundle("late", 1, &["bpf"], "v1"));
    gw.next_ack().await;
    eventually(10, "late-app bound", || {
        !observer.binds_of("late-app").is_empty()
    })
    .await;

    // A container started now in the running pod: bound on its start event.
    let pid = ctd.run(
        "k8s.io",
        "web-app2",
        &[],
        &cri_annotations("sb-web", "app", "container"),
    );
    eventually(20, "web-app2 bound", || {
        !observer.binds_of("web-app2").is_empty()
    })
    .await;
    let Seen::Bind { container, .. } = &observer.binds_of("web-app2")[0] else {
        unreachable!()
    };
    assert_eq!(container.mnt_ns_id, mnt_ns_of(pid));
    eventually(10, "latency measured", || {
        by_id("web-app2").binding_latency_us > 0
    })
    .await;
    eprintln!(
        "kubernetes binding latency (web-app2): {} µs",
        by_id("web-app2").binding_latency_us
    );

    // What an operator sees.
    let (cert, key) = gw.ca.issue("varmor://admin/test", &[]);
    let channel = node_state_client(agent.node_state_addr(), &gw.ca.ca_pem, Some((&cert, &key)))
        .await
        .expect("NodeState");
    let shown = NodeStateClient::new(channel)
        .list_containers(v1::ListContainersRequest {})
        .await
        .expect("ListContainers")
        .into_inner()
        .containers;
    let app = shown
        .iter()
        .find(|c| c.id == "web-app")
        .expect("web-app shown");
    assert_eq!(
        (
            app.binding.as_str(),
            app.profile_name.as_str(),
            app.pod_name.as_str()
        ),
        ("Bound", "varmor-demo-web", "web-0")
    );
    let late = shown
        .iter()
        .find(|c| c.id == "late-app")
        .expect("late-app shown");
    assert_eq!(late.binding, "Bound");

    // The pod's container exits: unbound.
    ctd.kill("k8s.io", "web-app");
    eventually(20, "web-app unbound", || {
        !observer.unbinds_of("web-app").is_empty()
    })
    .await;
    agent.shutdown().await;
}
