//! The containerd watcher.
//!
//! One session: connect, subscribe to the task events, list the running tasks of the watched
//! namespaces (subscribing first, so a task that starts during the listing is not missed; it
//! is reported twice at worst, and the binder treats that as one), then follow the events until
//! the stream breaks. On any error the session is made again after a jittered backoff, and
//! the new listing tells the binder which containers went away meanwhile.
//!
//! Each task is inspected on `/tasks/create`: one `Containers.Get` (labels, image, OCI spec
//! annotations), one `stat` of `/proc/<pid>/ns/mnt` (the init process already lives in the
//! container's mount namespace, waiting for start), and in Kubernetes mode one CRI
//! `PodSandboxStatus` per pod (cached). On `/tasks/start` the binder binds at once; a task
//! whose creation was missed is inspected then.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::time::SystemTime;

use containerd_client::events::{TaskCreate, TaskDelete, TaskExit, TaskStart};
use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::events_client::EventsClient;
use containerd_client::services::v1::namespaces_client::NamespacesClient;
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{
    Container, GetContainerRequest, ListNamespacesRequest, ListTasksRequest, PublishRequest,
    SubscribeRequest,
};
use containerd_client::types::v1::Status as TaskStatus;
use containerd_client::types::Envelope;
use prost::Message;
use tokio::sync::{mpsc, watch};
use tonic::transport::Channel;
use tonic::Request;

use super::cri::CriClient;
use super::{connect, keys, timed, Mode, Observed, Pod, RuntimeConfig, RuntimeError, RuntimeEvent};
use crate::backoff::Backoff;
use crate::config::BackoffConfig;
use crate::containers::ContainerInfo;
use crate::host::HostFs;

/// The task events the watcher follows. A task is inspected on `/tasks/create` already (its
/// init process then exists, in the container's mount namespace, waiting to be started), so on
/// `/tasks/start` only the bind remains to be done.
pub const TOPICS: [&str; 4] = [
    "/tasks/create",
    "/tasks/start",
    "/tasks/exit",
    "/tasks/delete",
];

/// What a session keeps between events.
#[derive(Debug)]
struct Caches {
    cri: CriClient,
    /// Containers inspected on `/tasks/create`, by (namespace, id), until they start or go.
    created: HashMap<(String, String), Observed>,
}

impl Caches {
    fn clear(&mut self) {
        self.cri.clear();
        self.created.clear();
    }
}

/// The topic of the event the agent publishes to learn that its subscription is in place.
pub const SYNC_TOPIC: &str = "/varmor/agent/sync";
const SYNC_TYPE: &str = "types.varmor.org/agent-sync";

/// Watches containerd and reports [`RuntimeEvent`]s.
#[derive(Debug)]
pub struct Watcher {
    node: String,
    config: RuntimeConfig,
    host: HostFs,
    backoff: BackoffConfig,
    events: mpsc::Sender<RuntimeEvent>,
}

impl Watcher {
    /// A watcher that sends its events to `events`.
    pub fn new(
        node: impl Into<String>,
        config: RuntimeConfig,
        host: HostFs,
        backoff: BackoffConfig,
        events: mpsc::Sender<RuntimeEvent>,
    ) -> Self {
        Watcher {
            node: node.into(),
            config,
            host,
            backoff,
            events,
        }
    }

    /// Watches until `shutdown` turns true (or the binder stops).
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let node = self.node.as_str();
        let socket = self.config.containerd_socket.display().to_string();
        let mut backoff = Backoff::new(self.backoff);
        let mut caches = Caches {
            cri: CriClient::new(
                self.config.cri_socket().to_path_buf(),
                self.config.request_timeout,
            ),
            created: HashMap::new(),
        };
        let mut failures = 0u32;
        loop {
            let mut listed = false;
            let result = self.session(&mut shutdown, &mut caches, &mut listed).await;
            if *shutdown.borrow() {
                return;
            }
            if listed {
                backoff.reset();
                failures = 0;
            }
            let error = match result {
                Ok(()) => return,
                Err(RuntimeError::BinderGone) => return,
                Err(e) => e,
            };
            failures += 1;
            let delay = backoff.next_delay();
            // The first failure of a run is worth a warning; repeating it every retry is not.
            if failures == 1 {
                tracing::warn!(
                    node, socket, error = %error, retry_in = ?delay,
                    "containerd watch down"
                );
            } else {
                tracing::debug!(
                    node, socket, error = %error, retry_in = ?delay,
                    "containerd watch still down"
                );
            }
            caches.clear();
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    async fn session(
        &self,
        shutdown: &mut watch::Receiver<bool>,
        caches: &mut Caches,
        listed: &mut bool,
    ) -> Result<(), RuntimeError> {
        let timeout = self.config.request_timeout;
        let channel = connect(&self.config.containerd_socket, timeout).await?;
        let mut stream = self.subscribe(&channel).await?;
        let containers = self.list(&channel, &mut caches.cri).await?;
        let count = containers.len();
        self.send(RuntimeEvent::Listed(containers)).await?;
        *listed = true;
        tracing::info!(
            node = self.node,
            socket = %self.config.containerd_socket.display(),
            mode = %self.config.mode,
            namespaces = ?self.config.namespaces,
            running = count,
            "watching containerd"
        );
        loop {
            let envelope = tokio::select! {
                _ = shutdown.changed() => return Ok(()),
                m = stream.message() => {
                    m.map_err(|s| RuntimeError::call("containerd event stream", s))?
                }
            };
            let Some(envelope) = envelope else {
                return Err(RuntimeError::StreamClosed);
            };
            self.handle(&channel, caches, envelope).await?;
        }
    }

    /// Subscribes to the task events and returns once containerd has registered the
    /// subscription, so that a listing made afterwards misses no start or exit.
    ///
    /// containerd answers a subscription (sends the response headers) only with its first
    /// event, so the agent publishes a sync event of its own until it comes back through the
    /// subscription; the watcher skips it.
    async fn subscribe(
        &self,
        channel: &Channel,
    ) -> Result<tonic::Streaming<Envelope>, RuntimeError> {
        let timeout = self.config.request_timeout;
        let filters = TOPICS
            .iter()
            .chain([&SYNC_TOPIC])
            .map(|t| format!("topic=={t:?}"))
            .collect();
        let mut client = EventsClient::new(channel.clone());
        let mut subscription = tokio::spawn(async move {
            client
                .subscribe(SubscribeRequest { filters })
                .await
                .map_err(|s| RuntimeError::call("containerd Events.Subscribe", s))
        });
        let namespace = self
            .config
            .namespaces
            .first()
            .map_or("default", String::as_str);
        let sync = PublishRequest {
            topic: SYNC_TOPIC.to_string(),
            event: Some(prost_types::Any {
                type_url: SYNC_TYPE.to_string(),
                value: self.node.as_bytes().to_vec(),
            }),
        };
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let call = || format!("containerd Events.Publish({SYNC_TOPIC}) in {namespace}");
            timed(call, timeout, async {
                EventsClient::new(channel.clone())
                    .publish(in_namespace(sync.clone(), namespace))
                    .await
                    .map_err(|s| RuntimeError::call(call(), s))
            })
            .await?;
            let wait = tokio::time::sleep(std::time::Duration::from_millis(100));
            tokio::select! {
                joined = &mut subscription => {
                    let response = joined.map_err(|_| RuntimeError::StreamClosed)??;
                    return Ok(response.into_inner());
                }
                _ = wait => {}
            }
            if tokio::time::Instant::now() >= deadline {
                subscription.abort();
                return Err(RuntimeError::Timeout {
                    call: "containerd Events.Subscribe".into(),
                    timeout,
                });
            }
        }
    }

    async fn handle(
        &self,
        channel: &Channel,
        caches: &mut Caches,
        envelope: Envelope,
    ) -> Result<(), RuntimeError> {
        let ns = envelope.namespace.as_str();
        if envelope.topic == SYNC_TOPIC || !self.config.watches(ns) {
            return Ok(());
        }
        let payload = envelope
            .event
            .as_ref()
            .map_or(&[][..], |a| a.value.as_slice());
        let key = |id: &str| (ns.to_string(), id.to_string());
        match envelope.topic.as_str() {
            "/tasks/create" => {
                let Ok(e) = TaskCreate::decode(payload) else {
                    return Ok(());
                };
                match self
                    .inspect(channel, &mut caches.cri, ns, &e.container_id, e.pid)
                    .await
                {
                    Ok(Some(o)) => {
                        caches.created.insert(key(&e.container_id), o);
                    }
                    Ok(None) => {}
                    // Inspected again on start.
                    Err(error) => tracing::debug!(
                        node = self.node,
                        container = e.container_id,
                        error = %error,
                        "created container not inspected"
                    ),
                }
            }
            "/tasks/start" => {
                let Ok(e) = TaskStart::decode(payload) else {
                    tracing::warn!(node = self.node, "undecodable /tasks/start event skipped");
                    return Ok(());
                };
                let at = envelope
                    .timestamp
                    .and_then(|t| SystemTime::try_from(t).ok())
                    .unwrap_or_else(SystemTime::now);
                let received = std::time::Instant::now();
                let inspected = match caches.created.remove(&key(&e.container_id)) {
                    Some(o) if o.info.pid == e.pid => Ok(Some(o)),
                    _ => {
                        self.inspect(channel, &mut caches.cri, ns, &e.container_id, e.pid)
                            .await
                    }
                };
                tracing::debug!(
                    node = self.node,
                    container = e.container_id,
                    delivery_us = micros(SystemTime::now().duration_since(at).unwrap_or_default())
                        .saturating_sub(micros(received.elapsed())),
                    inspect_us = micros(received.elapsed()),
                    "task start"
                );
                match inspected {
                    Ok(Some(container)) => {
                        self.send(RuntimeEvent::Started {
                            container: Box::new(container),
                            at,
                        })
                        .await?;
                    }
                    Ok(None) => {}
                    // Gone before it could be inspected (a short-lived task): its exit follows.
                    Err(error) => tracing::info!(
                        node = self.node,
                        container = e.container_id,
                        namespace = ns,
                        error = %error,
                        "started container not inspected"
                    ),
                }
            }
            "/tasks/exit" => {
                let Ok(e) = TaskExit::decode(payload) else {
                    return Ok(());
                };
                // Exits of exec'd processes carry the exec id; only the init process counts.
                if e.id.is_empty() || e.id == e.container_id {
                    caches.cri.forget(&e.container_id);
                    caches.created.remove(&key(&e.container_id));
                    self.exited(ns, e.container_id).await?;
                }
            }
            "/tasks/delete" => {
                let Ok(e) = TaskDelete::decode(payload) else {
                    return Ok(());
                };
                if e.id.is_empty() || e.id == e.container_id {
                    caches.cri.forget(&e.container_id);
                    caches.created.remove(&key(&e.container_id));
                    self.exited(ns, e.container_id).await?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    async fn exited(&self, namespace: &str, id: String) -> Result<(), RuntimeError> {
        self.send(RuntimeEvent::Exited {
            namespace: namespace.to_string(),
            id,
        })
        .await
    }

    async fn send(&self, event: RuntimeEvent) -> Result<(), RuntimeError> {
        self.events
            .send(event)
            .await
            .map_err(|_| RuntimeError::BinderGone)
    }

    /// Every running container of the watched namespaces.
    async fn list(
        &self,
        channel: &Channel,
        cri: &mut CriClient,
    ) -> Result<Vec<Observed>, RuntimeError> {
        let timeout = self.config.request_timeout;
        let namespaces = if self.config.namespaces.is_empty() {
            let call = || "containerd Namespaces.List".to_string();
            timed(call, timeout, async {
                NamespacesClient::new(channel.clone())
                    .list(ListNamespacesRequest::default())
                    .await
                    .map_err(|s| RuntimeError::call(call(), s))
            })
            .await?
            .into_inner()
            .namespaces
            .into_iter()
            .map(|n| n.name)
            .collect()
        } else {
            self.config.namespaces.clone()
        };
        let mut found = Vec::new();
        for ns in &namespaces {
            let call = || format!("containerd Tasks.List in {ns}");
            let tasks = timed(call, timeout, async {
                TasksClient::new(channel.clone())
                    .list(in_namespace(ListTasksRequest::default(), ns))
                    .await
                    .map_err(|s| RuntimeError::call(call(), s))
            })
            .await?
            .into_inner()
            .tasks;
            for t in tasks {
                let alive = matches!(
                    TaskStatus::try_from(t.status),
                    Ok(TaskStatus::Running | TaskStatus::Paused | TaskStatus::Pausing)
                );
                if !alive || t.pid == 0 {
                    continue;
                }
                // containerd 1.x fills only `id` (the init process's id is the container's).
                let id = if t.container_id.is_empty() {
                    &t.id
                } else {
                    &t.container_id
                };
                match self.inspect(channel, cri, ns, id, t.pid).await {
                    Ok(Some(o)) => found.push(o),
                    Ok(None) => {}
                    Err(e @ (RuntimeError::Timeout { .. } | RuntimeError::Connect { .. })) => {
                        return Err(e)
                    }
                    Err(error) => tracing::info!(
                        node = self.node,
                        container = id,
                        namespace = ns.as_str(),
                        error = %error,
                        "running container not inspected"
                    ),
                }
            }
        }
        Ok(found)
    }

    /// What the runtime says about container `id` whose init process is `pid`; `None` for a
    /// pod's sandbox container (nothing of the workload runs in it).
    async fn inspect(
        &self,
        channel: &Channel,
        cri: &mut CriClient,
        namespace: &str,
        id: &str,
        pid: u32,
    ) -> Result<Option<Observed>, RuntimeError> {
        let call = || format!("containerd Containers.Get({id}) in {namespace}");
        let container = timed(call, self.config.request_timeout, async {
            ContainersClient::new(channel.clone())
                .get(in_namespace(
                    GetContainerRequest { id: id.to_string() },
                    namespace,
                ))
                .await
                .map_err(|s| RuntimeError::call(call(), s))
        })
        .await?
        .into_inner()
        .container
        .ok_or_else(|| {
            RuntimeError::call(
                call(),
                tonic::Status::not_found("no container in the answer"),
            )
        })?;
        let annotations = spec_annotations(&container);
        if annotations.get(keys::CONTAINER_TYPE).map(String::as_str) == Some("sandbox") {
            return Ok(None);
        }
        let mnt_ns_id = mount_namespace(&self.host, pid)?;
        let pod = match (self.config.mode, annotations.get(keys::SANDBOX_ID)) {
            (Mode::Kubernetes, Some(sandbox)) => match cri.pod(sandbox).await {
                Ok(p) => Pod::Found(p),
                Err(e) => Pod::Unknown(format!("cannot read the pod through CRI: {e}")),
            },
            _ => Pod::None,
        };
        Ok(Some(Observed {
            info: container_info(container, annotations, namespace, pid, mnt_ns_id, &pod),
            pod,
        }))
    }
}

fn micros(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn in_namespace<T>(message: T, namespace: &str) -> Request<T> {
    let mut r = Request::new(message);
    if let Ok(v) = namespace.parse() {
        r.metadata_mut().insert("containerd-namespace", v);
    }
    r
}

/// The inode of `<host-root>/proc/<pid>/ns/mnt`: the mount namespace id BPF-LSM sees as
/// `task->nsproxy->mnt_ns->ns.inum`.
pub fn mount_namespace(host: &HostFs, pid: u32) -> Result<u32, RuntimeError> {
    let path = host.path(&format!("/proc/{pid}/ns/mnt"));
    let error = |reason: String| RuntimeError::MountNamespace {
        pid,
        path: path.clone(),
        reason,
    };
    let meta = std::fs::metadata(&path).map_err(|e| error(e.to_string()))?;
    u32::try_from(meta.ino()).map_err(|_| error(format!("inode {} exceeds 32 bits", meta.ino())))
}

/// The annotations of the container's OCI spec (stored as JSON in the container record).
pub fn spec_annotations(container: &Container) -> HashMap<String, String> {
    let Some(spec) = &container.spec else {
        return HashMap::new();
    };
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(&spec.value) else {
        return HashMap::new();
    };
    json.get("annotations")
        .and_then(|a| a.as_object())
        .map(|a| {
            a.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// A [`ContainerInfo`] from the container record, its OCI annotations and its pod.
///
/// The container's name is the first of: the CRI annotation `io.kubernetes.cri.container-name`,
/// the labels `io.kubernetes.container.name`, `nerdctl/name` and `name`, and the container id.
/// The pod comes from CRI, else from the CRI annotations, else from the
/// `io.kubernetes.pod.{name,namespace,uid}` labels.
pub fn container_info(
    container: Container,
    annotations: HashMap<String, String>,
    namespace: &str,
    pid: u32,
    mnt_ns_id: u32,
    pod: &Pod,
) -> ContainerInfo {
    let labels: HashMap<String, String> = container.labels.into_iter().collect();
    let first = |candidates: &[Option<&String>]| {
        candidates
            .iter()
            .flatten()
            .find(|v| !v.is_empty())
            .map(|v| v.to_string())
    };
    let name = first(&[
        annotations.get(keys::CONTAINER_NAME),
        labels.get(keys::CONTAINER_NAME_LABEL),
        labels.get(keys::NERDCTL_NAME_LABEL),
        labels.get(keys::NAME_LABEL),
    ])
    .unwrap_or_else(|| container.id.clone());
    let image = if container.image.is_empty() {
        annotations
            .get(keys::IMAGE_NAME)
            .cloned()
            .unwrap_or_default()
    } else {
        container.image
    };
    let (pod_name, pod_namespace, pod_uid, pod_ips) = match pod {
        Pod::Found(p) => (
            p.name.clone(),
            p.namespace.clone(),
            p.uid.clone(),
            p.ips.clone(),
        ),
        _ => (
            first(&[
                annotations.get(keys::SANDBOX_NAME),
                labels.get(keys::POD_NAME_LABEL),
            ])
            .unwrap_or_default(),
            first(&[
                annotations.get(keys::SANDBOX_NAMESPACE),
                labels.get(keys::POD_NAMESPACE_LABEL),
            ])
            .unwrap_or_default(),
            first(&[
                annotations.get(keys::SANDBOX_UID),
                labels.get(keys::POD_UID_LABEL),
            ])
            .unwrap_or_default(),
            Vec::new(),
        ),
    };
    ContainerInfo {
        id: container.id,
        name,
        image,
        pid,
        mnt_ns_id,
        pod_name,
        pod_namespace,
        pod_uid,
        labels,
        runtime_namespace: namespace.to_string(),
        annotations,
        pod_ips,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::runtime::PodInfo;

    fn record(labels: &[(&str, &str)], spec: &str) -> Container {
        Container {
            id: "c1".into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            image: "localhost/varmor/busybox:latest".into(),
            spec: Some(prost_types::Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
                value: spec.as_bytes().to_vec(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn annotations_come_from_the_oci_spec() {
        let c = record(
            &[],
            r#"{"ociVersion":"1.0.2","annotations":{"a":"b","n":1}}"#,
        );
        let a = spec_annotations(&c);
        assert_eq!(a.len(), 1);
        assert_eq!(a["a"], "b");
        assert!(spec_annotations(&record(&[], "not json")).is_empty());
        assert!(spec_annotations(&Container::default()).is_empty());
    }

    #[test]
    fn standalone_names_come_from_labels_then_the_id() {
        let info = container_info(
            record(&[("app", "web")], "{}"),
            HashMap::new(),
            "default",
            42,
            7,
            &Pod::None,
        );
        assert_eq!(info.name, "c1");
        assert_eq!(
            (info.pid, info.mnt_ns_id, info.runtime_namespace.as_str()),
            (42, 7, "default")
        );
        let info = container_info(
            record(
                &[
                    ("name", "plain"),
                    ("nerdctl/name", "nerd"),
                    ("io.kubernetes.pod.name", "p"),
                ],
                "{}",
            ),
            HashMap::new(),
            "default",
            1,
            1,
            &Pod::None,
        );
        assert_eq!(info.name, "nerd");
        assert_eq!(info.pod_name, "p");
    }

    #[test]
    fn kubernetes_containers_take_the_pod_from_cri() {
        let annotations: HashMap<String, String> = [
            (keys::CONTAINER_NAME, "app"),
            (keys::SANDBOX_ID, "sb"),
            (keys::SANDBOX_NAME, "from-annotation"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let pod = Pod::Found(Arc::new(PodInfo {
            name: "web-0".into(),
            namespace: "demo".into(),
            uid: "u".into(),
            ips: vec!["10.0.0.9".parse().unwrap()],
            ..Default::default()
        }));
        let info = container_info(record(&[], "{}"), annotations.clone(), "k8s.io", 1, 1, &pod);
        assert_eq!(
            (
                info.name.as_str(),
                info.pod_name.as_str(),
                info.pod_namespace.as_str()
            ),
            ("app", "web-0", "demo")
        );
        assert_eq!(info.pod_ips.len(), 1);
        let info = container_info(
            record(&[], "{}"),
            annotations,
            "k8s.io",
            1,
            1,
            &Pod::Unknown("down".into()),
        );
        assert_eq!(info.pod_name, "from-annotation");
    }

    #[test]
    fn mount_namespace_is_the_inode_of_ns_mnt() {
        let host = HostFs::new("/");
        let me = std::process::id();
        let id = mount_namespace(&host, me).expect("own mount namespace");
        let ino = std::fs::metadata("/proc/self/ns/mnt").expect("stat").ino();
        assert_eq!(u64::from(id), ino);
        let empty = tempfile::tempdir().expect("tempdir");
        let err = mount_namespace(&HostFs::new(empty.path()), me).unwrap_err();
        assert!(err.to_string().contains("ns/mnt"), "{err}");
    }
}
