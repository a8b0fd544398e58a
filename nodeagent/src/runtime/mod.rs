//! The container runtime, as the binder needs it: which containers run on this node, with
//! their init PID, mount namespace, labels, annotations and (in Kubernetes) pod.
//!
//! [`containerd::Watcher`] talks to containerd's gRPC API: at start (and after every
//! reconnection) it lists the running tasks, then follows the task events (`/tasks/create`,
//! `/tasks/start`, `/tasks/exit`, `/tasks/delete`). In Kubernetes mode it also reads each
//! container's pod through the CRI `RuntimeService` on the same socket ([`cri`]), for the
//! annotations the webhook writes. It reports [`RuntimeEvent`]s; the
//! [`binder`](crate::binder) decides the profiles.
//!
//! The agent must see the host's PID namespace: the PIDs containerd reports are read under
//! `<host-root>/proc`.

pub mod containerd;
pub mod cri;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::containers::ContainerInfo;

pub use containerd::Watcher;

/// containerd's socket on a stock installation.
pub const DEFAULT_CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";

/// Annotation and label keys the agent reads.
pub mod keys {
    /// OCI annotation (CRI): `sandbox` for a pod's sandbox (pause) container, else `container`.
    pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
    /// OCI annotation (CRI): the id of the container's pod sandbox.
    pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
    /// OCI annotation (CRI): the container's name in the pod spec.
    pub const CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
    /// OCI annotation (CRI): the pod's name.
    pub const SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
    /// OCI annotation (CRI): the pod's namespace.
    pub const SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
    /// OCI annotation (CRI, containerd 1.7+): the pod's UID.
    pub const SANDBOX_UID: &str = "io.kubernetes.cri.sandbox-uid";
    /// OCI annotation (CRI): the image as the pod spec names it.
    pub const IMAGE_NAME: &str = "io.kubernetes.cri.image-name";
    /// Container label (kubelet, and usable on standalone containers): the pod's name.
    pub const POD_NAME_LABEL: &str = "io.kubernetes.pod.name";
    /// Container label: the pod's namespace.
    pub const POD_NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
    /// Container label: the pod's UID.
    pub const POD_UID_LABEL: &str = "io.kubernetes.pod.uid";
    /// Container label (kubelet): the container's name.
    pub const CONTAINER_NAME_LABEL: &str = "io.kubernetes.container.name";
    /// Container label (nerdctl): the container's name.
    pub const NERDCTL_NAME_LABEL: &str = "nerdctl/name";
    /// Container label: a container name for standalone containers (`ctr run --label name=web`).
    pub const NAME_LABEL: &str = "name";
}

/// How the agent decides which profile confines a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// By the pod annotations the webhook writes, read through CRI (as vArmor does).
    Kubernetes,
    /// By matching each bundle's target against the container's labels and name.
    Standalone,
}

impl Mode {
    /// The flag value.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Kubernetes => "kubernetes",
            Mode::Standalone => "standalone",
        }
    }

    /// The containerd namespaces watched when none are configured: `k8s.io` in Kubernetes,
    /// every namespace standalone (`ctr` and nerdctl use `default`).
    pub fn default_namespaces(self) -> Vec<String> {
        match self {
            Mode::Kubernetes => vec!["k8s.io".to_string()],
            Mode::Standalone => Vec::new(),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "kubernetes" => Ok(Mode::Kubernetes),
            "standalone" => Ok(Mode::Standalone),
            _ => Err(format!(
                "unknown mode {s:?}: expected kubernetes or standalone"
            )),
        }
    }
}

/// Settings of the container runtime watcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// How containers are bound to profiles.
    pub mode: Mode,
    /// containerd's gRPC socket (as the agent sees it; not under the host root).
    pub containerd_socket: PathBuf,
    /// The containerd namespaces to watch; empty means every namespace.
    pub namespaces: Vec<String>,
    /// The CRI socket; `None` means containerd's socket (its CRI plugin serves there).
    pub cri_socket: Option<PathBuf>,
    /// How long one containerd or CRI call (or connecting) may take.
    pub request_timeout: Duration,
}

impl RuntimeConfig {
    /// The defaults for `mode`: containerd at its stock socket, the mode's namespaces.
    pub fn new(mode: Mode) -> Self {
        RuntimeConfig {
            mode,
            containerd_socket: PathBuf::from(DEFAULT_CONTAINERD_SOCKET),
            namespaces: mode.default_namespaces(),
            cri_socket: None,
            request_timeout: Duration::from_secs(5),
        }
    }

    /// The socket CRI calls go to.
    pub fn cri_socket(&self) -> &Path {
        self.cri_socket
            .as_deref()
            .unwrap_or(&self.containerd_socket)
    }

    /// Whether events and tasks of containerd namespace `ns` are watched.
    pub fn watches(&self, ns: &str) -> bool {
        self.namespaces.is_empty() || self.namespaces.iter().any(|n| n == ns)
    }
}

/// A pod as CRI describes it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodInfo {
    /// The pod's name.
    pub name: String,
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's UID.
    pub uid: String,
    /// The pod's annotations (the webhook's profile annotations among them).
    pub annotations: BTreeMap<String, String>,
    /// The pod's addresses; empty when the pod uses the node's network namespace.
    pub ips: Vec<std::net::IpAddr>,
}

/// What is known of a container's pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pod {
    /// Not a Kubernetes container, or standalone mode (no CRI lookup).
    None,
    /// The pod, from CRI.
    Found(Arc<PodInfo>),
    /// A Kubernetes container whose pod could not be read; why.
    Unknown(String),
}

/// A running container as the watcher saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// What the runtime says about it.
    pub info: ContainerInfo,
    /// Its pod.
    pub pod: Pod,
}

impl Observed {
    /// The key the binder tracks it by: containerd ids are unique per namespace.
    pub fn key(&self) -> (String, String) {
        (self.info.runtime_namespace.clone(), self.info.id.clone())
    }
}

/// What the watcher reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeEvent {
    /// Every running container of the watched namespaces, at start and after each
    /// reconnection; containers missing from it are gone.
    Listed(Vec<Observed>),
    /// A task started; `at` is the event's timestamp (set by the runtime's shim when the task
    /// started), the start of the binding latency.
    Started {
        /// The container.
        container: Box<Observed>,
        /// When the runtime reported the start.
        at: SystemTime,
    },
    /// A container's init process exited or its task was deleted.
    Exited {
        /// The containerd namespace.
        namespace: String,
        /// The container id.
        id: String,
    },
}

/// Errors of the runtime watcher.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The socket could not be reached.
    #[error("cannot connect to {socket}: {source}")]
    Connect {
        /// The socket.
        socket: PathBuf,
        /// Why.
        source: tonic::transport::Error,
    },
    /// A call failed.
    #[error("{call} failed: {status}")]
    Call {
        /// The call, e.g. `containerd Tasks.List in k8s.io`.
        call: String,
        /// The gRPC status (message and code).
        status: Box<tonic::Status>,
    },
    /// A call or connection did not finish in time.
    #[error("{call} timed out after {timeout:?}")]
    Timeout {
        /// What timed out.
        call: String,
        /// The limit.
        timeout: Duration,
    },
    /// The event stream ended.
    #[error("containerd closed the event stream")]
    StreamClosed,
    /// The container's init process could not be inspected under the host root.
    #[error("cannot read the mount namespace of pid {pid} at {path}: {reason}")]
    MountNamespace {
        /// The process.
        pid: u32,
        /// The path read.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The binder stopped.
    #[error("the binder stopped")]
    BinderGone,
}

impl RuntimeError {
    pub(crate) fn call(call: impl Into<String>, status: tonic::Status) -> Self {
        RuntimeError::Call {
            call: call.into(),
            status: Box::new(status),
        }
    }
}

/// Runs `fut` with a time limit; `call` names it in the error.
pub(crate) async fn timed<T>(
    call: impl FnOnce() -> String,
    limit: Duration,
    fut: impl std::future::Future<Output = Result<T, RuntimeError>>,
) -> Result<T, RuntimeError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => Err(RuntimeError::Timeout {
            call: call(),
            timeout: limit,
        }),
    }
}

/// Connects to a gRPC server on a unix socket, within `limit`.
pub(crate) async fn connect(
    socket: &Path,
    limit: Duration,
) -> Result<tonic::transport::Channel, RuntimeError> {
    timed(
        || format!("connecting to {}", socket.display()),
        limit,
        async {
            containerd_client::connect(socket)
                .await
                .map_err(|source| RuntimeError::Connect {
                    socket: socket.to_path_buf(),
                    source,
                })
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_and_their_namespaces() {
        assert_eq!("kubernetes".parse::<Mode>(), Ok(Mode::Kubernetes));
        assert_eq!("standalone".parse::<Mode>(), Ok(Mode::Standalone));
        assert!("k8s".parse::<Mode>().unwrap_err().contains("kubernetes"));
        let k = RuntimeConfig::new(Mode::Kubernetes);
        assert!(k.watches("k8s.io") && !k.watches("default"));
        assert_eq!(k.cri_socket(), Path::new(DEFAULT_CONTAINERD_SOCKET));
        let s = RuntimeConfig::new(Mode::Standalone);
        assert!(s.watches("k8s.io") && s.watches("default"));
    }
}
