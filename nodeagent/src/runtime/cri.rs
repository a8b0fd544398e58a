//! Pods through the CRI `RuntimeService` (our subset in `proto/cri/runtime/v1`): the pod's
//! annotations, identity and addresses for a sandbox id, as vArmor reads them.
//!
//! A pod's annotations cannot change while its sandbox lives (CRI returns those the sandbox was
//! created with), so each pod is asked for once and cached until its sandbox container exits.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tonic::transport::Channel;
use varmor_proto::cri;
use varmor_proto::cri::runtime_service_client::RuntimeServiceClient;

use super::{connect, timed, PodInfo, RuntimeError};

/// A CRI client with a cache of pods by sandbox id.
#[derive(Debug)]
pub struct CriClient {
    socket: PathBuf,
    timeout: Duration,
    channel: Option<Channel>,
    pods: HashMap<String, Arc<PodInfo>>,
}

impl CriClient {
    /// A client for the CRI server on `socket`; it connects on first use.
    pub fn new(socket: PathBuf, timeout: Duration) -> Self {
        CriClient {
            socket,
            timeout,
            channel: None,
            pods: HashMap::new(),
        }
    }

    /// The pod of sandbox `sandbox_id`.
    pub async fn pod(&mut self, sandbox_id: &str) -> Result<Arc<PodInfo>, RuntimeError> {
        if let Some(p) = self.pods.get(sandbox_id) {
            return Ok(p.clone());
        }
        let channel = match &self.channel {
            Some(c) => c.clone(),
            None => {
                let c = connect(&self.socket, self.timeout).await?;
                self.channel = Some(c.clone());
                c
            }
        };
        let call = || format!("CRI PodSandboxStatus({sandbox_id})");
        let response = timed(call, self.timeout, async {
            RuntimeServiceClient::new(channel)
                .pod_sandbox_status(cri::PodSandboxStatusRequest {
                    pod_sandbox_id: sandbox_id.to_string(),
                    verbose: false,
                })
                .await
                .map_err(|s| RuntimeError::call(call(), s))
        })
        .await;
        let response = match response {
            Ok(r) => r.into_inner(),
            Err(e) => {
                // A broken connection is made again on the next call.
                let not_found = matches!(
                    &e,
                    RuntimeError::Call { status, .. } if status.code() == tonic::Code::NotFound
                );
                if !not_found {
                    self.channel = None;
                }
                return Err(e);
            }
        };
        let status = response.status.ok_or_else(|| {
            RuntimeError::call(
                call(),
                tonic::Status::internal("the response holds no status"),
            )
        })?;
        let pod = Arc::new(pod_info(status));
        self.pods.insert(sandbox_id.to_string(), pod.clone());
        Ok(pod)
    }

    /// Forgets the pod of a sandbox that is gone.
    pub fn forget(&mut self, sandbox_id: &str) {
        self.pods.remove(sandbox_id);
    }

    /// Forgets every pod (after a reconnection: sandboxes may have gone meanwhile).
    pub fn clear(&mut self) {
        self.pods.clear();
        self.channel = None;
    }
}

/// The pod of a sandbox status: its identity, annotations, and its addresses unless it uses
/// the node's network namespace (as vArmor, which sets no pod IPs for hostNetwork pods).
pub fn pod_info(status: cri::PodSandboxStatus) -> PodInfo {
    let meta = status.metadata.unwrap_or_default();
    let host_network = status
        .linux
        .and_then(|l| l.namespaces)
        .and_then(|n| n.options)
        .is_some_and(|o| o.network == cri::NamespaceMode::Node as i32);
    let ips = match status.network {
        Some(net) if !host_network => std::iter::once(net.ip)
            .chain(net.additional_ips.into_iter().map(|p| p.ip))
            .filter_map(|ip| ip.parse::<IpAddr>().ok())
            .collect(),
        _ => Vec::new(),
    };
    PodInfo {
        name: meta.name,
        namespace: meta.namespace,
        uid: meta.uid,
        annotations: status.annotations.into_iter().collect(),
        ips,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(network: cri::NamespaceMode) -> cri::PodSandboxStatus {
        cri::PodSandboxStatus {
            id: "sb1".into(),
            metadata: Some(cri::PodSandboxMetadata {
                name: "web-0".into(),
                uid: "u-1".into(),
                namespace: "demo".into(),
                attempt: 0,
            }),
            network: Some(cri::PodSandboxNetworkStatus {
                ip: "10.1.2.3".into(),
                additional_ips: vec![
                    cri::PodIp {
                        ip: "fd00::3".into(),
                    },
                    cri::PodIp {
                        ip: "not an ip".into(),
                    },
                ],
            }),
            linux: Some(cri::LinuxPodSandboxStatus {
                namespaces: Some(cri::Namespace {
                    options: Some(cri::NamespaceOption {
                        network: network as i32,
                        ..Default::default()
                    }),
                }),
            }),
            annotations: [("a".to_string(), "b".to_string())].into(),
            ..Default::default()
        }
    }

    #[test]
    fn pod_identity_annotations_and_addresses() {
        let p = pod_info(status(cri::NamespaceMode::Pod));
        assert_eq!(
            (p.name.as_str(), p.namespace.as_str(), p.uid.as_str()),
            ("web-0", "demo", "u-1")
        );
        assert_eq!(p.annotations.get("a").map(String::as_str), Some("b"));
        assert_eq!(
            p.ips,
            vec![
                "10.1.2.3".parse::<IpAddr>().unwrap(),
                "fd00::3".parse::<IpAddr>().unwrap()
            ]
        );
    }

    #[test]
    fn host_network_pods_have_no_pod_addresses() {
        let p = pod_info(status(cri::NamespaceMode::Node));
        assert!(p.ips.is_empty());
        assert_eq!(p.name, "web-0");
    }
}
