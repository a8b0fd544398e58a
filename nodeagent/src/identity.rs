//! The node's identity: a certificate bound to the node name (URI SAN `varmor://node/NAME`),
//! obtained once with the join token and renewed with `Renew` when two thirds of its lifetime
//! have passed.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use varmor_proto::v1;
use varmor_rpc::tls::{identity_of_certificate, Peer};

use crate::backoff::Backoff;
use crate::config::{BackoffConfig, Config};
use crate::error::AgentError;
use crate::fsutil;
use crate::gateway::{self, GatewayError};
use crate::state::StateDir;
use crate::status::ConnectionStatus;

/// A node certificate with its key and the CA bundle, checked to belong together.
#[derive(Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    /// The node certificate (PEM).
    pub cert_pem: String,
    /// Its private key (PEM).
    pub key_pem: String,
    /// The CA bundle (PEM).
    pub ca_pem: String,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
}

impl std::fmt::Debug for NodeIdentity {
    // Never print the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl NodeIdentity {
    /// Checks that `cert_pem` is a certificate for node `node`, that `key_pem` is its key and
    /// that `ca_pem` holds a certificate.
    pub fn from_pems(
        node: &str,
        cert_pem: String,
        key_pem: String,
        ca_pem: String,
    ) -> Result<Self, String> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
            .map_err(|e| format!("the certificate is not PEM: {e}"))?;
        let cert = pem
            .parse_x509()
            .map_err(|e| format!("the certificate cannot be parsed: {e}"))?;
        match identity_of_certificate(&pem.contents)? {
            Peer::Node(name) if name == node => {}
            Peer::Node(name) => {
                return Err(format!(
                    "the certificate is for node {name:?}, not {node:?}"
                ))
            }
            Peer::Admin(name) => {
                return Err(format!(
                    "the certificate is an operator certificate ({name:?}), not a node's"
                ))
            }
        }
        let key = rcgen::KeyPair::from_pem(&key_pem)
            .map_err(|e| format!("the private key cannot be read: {e}"))?;
        if key.public_key_raw() != cert.public_key().subject_public_key.data.as_ref() {
            return Err("the private key does not belong to the certificate".into());
        }
        x509_parser::pem::parse_x509_pem(ca_pem.as_bytes())
            .map_err(|e| format!("the CA bundle is not PEM: {e}"))?;
        let time = |t: x509_parser::time::ASN1Time| {
            SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(t.timestamp()).unwrap_or(0))
        };
        Ok(NodeIdentity {
            not_before: time(cert.validity().not_before),
            not_after: time(cert.validity().not_after),
            cert_pem,
            key_pem,
            ca_pem,
        })
    }

    /// When to renew: two thirds into the lifetime.
    pub fn renew_at(&self) -> SystemTime {
        let lifetime = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_before + lifetime * 2 / 3
    }

    /// Whether the certificate has expired at `now`.
    pub fn expired_at(&self, now: SystemTime) -> bool {
        now >= self.not_after
    }
}

/// What the state directory holds.
#[derive(Debug)]
pub enum Stored {
    /// A usable identity.
    Valid(NodeIdentity),
    /// No certificate yet.
    Missing,
    /// Files that cannot be used, and why.
    Unusable(String),
}

/// Reads the identity from the state directory.
pub fn load(state: &StateDir, node: &str) -> Stored {
    let cert = state.node_crt();
    if !cert.exists() {
        return Stored::Missing;
    }
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
    };
    let files = (|| {
        Ok::<_, String>((
            read(&cert)?,
            read(&state.node_key())?,
            read(&state.ca_crt())?,
        ))
    })();
    let (cert_pem, key_pem, ca_pem) = match files {
        Ok(f) => f,
        Err(e) => return Stored::Unusable(e),
    };
    match NodeIdentity::from_pems(node, cert_pem, key_pem, ca_pem) {
        Ok(id) if id.expired_at(SystemTime::now()) => Stored::Unusable(format!(
            "{} expired at {}",
            cert.display(),
            rfc3339(id.not_after)
        )),
        Ok(id) => Stored::Valid(id),
        Err(e) => Stored::Unusable(format!("{}: {e}", cert.display())),
    }
}

/// Writes the identity into the state directory (the key with mode 0600).
pub fn store(state: &StateDir, id: &NodeIdentity) -> Result<(), AgentError> {
    for (path, bytes, mode) in [
        (state.node_key(), id.key_pem.as_bytes(), 0o600),
        (state.node_crt(), id.cert_pem.as_bytes(), 0o644),
        (state.ca_crt(), id.ca_pem.as_bytes(), 0o644),
    ] {
        fsutil::write_atomic(&path, bytes, mode)
            .map_err(|source| AgentError::Write { path, source })?;
    }
    Ok(())
}

/// The names requested for the node certificate besides the ones the manager always adds: the
/// node name, the listen address when it is specific, and the configured extras.
pub fn requested_sans(config: &Config) -> Vec<String> {
    let mut names = vec![config.node_name.clone()];
    if !config.listen.ip().is_unspecified() {
        names.push(config.listen.ip().to_string());
    }
    for n in &config.extra_sans {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    names
}

/// Why a join did not succeed.
#[derive(Debug)]
enum JoinFailure {
    /// Retrying cannot help.
    Fatal(AgentError),
    /// Retry later.
    Transient(GatewayError),
}

/// The identity from the state directory, or a new one from the manager (joining with the
/// token). Connection failures are retried with backoff; a rejected token is an error.
pub async fn ensure(
    config: &Config,
    state: &StateDir,
    status: &ConnectionStatus,
    mut shutdown: watch::Receiver<bool>,
) -> Result<NodeIdentity, AgentError> {
    let node = config.node_name.as_str();
    match load(state, node) {
        Stored::Valid(id) => {
            tracing::info!(
                node,
                not_after = %rfc3339(id.not_after),
                "using the node certificate from the state directory"
            );
            return Ok(id);
        }
        Stored::Missing => tracing::info!(node, "no node certificate yet; joining"),
        Stored::Unusable(reason) => {
            tracing::warn!(
                node,
                reason,
                "the stored node certificate is unusable; joining again"
            )
        }
    }
    let mut backoff = Backoff::new(config.backoff);
    loop {
        match join_once(config).await {
            Ok(id) => {
                store(state, &id)?;
                tracing::info!(
                    node,
                    not_after = %rfc3339(id.not_after),
                    dir = %state.root().display(),
                    "joined; node certificate stored"
                );
                return Ok(id);
            }
            Err(JoinFailure::Fatal(e)) => return Err(e),
            Err(JoinFailure::Transient(e)) => {
                let delay = backoff.next_delay();
                tracing::warn!(node, error = %e, retry_in = ?delay, "join failed; retrying");
                status.error(e.to_string());
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => return Err(AgentError::Stopped),
                }
            }
        }
    }
}

async fn join_once(config: &Config) -> Result<NodeIdentity, JoinFailure> {
    let read = |what, path: &Path| {
        std::fs::read_to_string(path).map_err(|source| {
            JoinFailure::Fatal(AgentError::Read {
                what,
                path: path.to_path_buf(),
                source,
            })
        })
    };
    let token = read("the join token", &config.join_token_file)?;
    let token = token.trim();
    if token.is_empty() {
        return Err(JoinFailure::Fatal(AgentError::Config(format!(
            "the join token file {} is empty",
            config.join_token_file.display()
        ))));
    }
    let bootstrap_ca = read("the CA bundle", &config.ca_file)?;
    let (key_pem, csr_pem) = varmor_rpc::tls::new_key_and_csr(&config.node_name)
        .map_err(|e| JoinFailure::Fatal(e.into()))?;
    let mut client = gateway::connect(config, &bootstrap_ca, None)
        .await
        .map_err(JoinFailure::Transient)?;
    let response = client
        .join(v1::JoinRequest {
            node_name: config.node_name.clone(),
            join_token: token.to_string(),
            csr_pem,
            subject_alt_names: requested_sans(config),
        })
        .await;
    let response = match response {
        Ok(r) => r.into_inner(),
        Err(s) if gateway::is_rejection(s.code()) => {
            return Err(JoinFailure::Fatal(AgentError::JoinRejected {
                url: config.manager_url.clone(),
                token_file: config.join_token_file.clone(),
                code: s.code(),
                message: s.message().to_string(),
            }))
        }
        Err(s) => {
            return Err(JoinFailure::Transient(GatewayError::status(
                &config.manager_url,
                &s,
            )))
        }
    };
    let ca_pem = if response.ca_pem.trim().is_empty() {
        bootstrap_ca
    } else {
        response.ca_pem
    };
    NodeIdentity::from_pems(&config.node_name, response.certificate_pem, key_pem, ca_pem).map_err(
        |reason| {
            JoinFailure::Fatal(AgentError::BadCertificate {
                url: config.manager_url.clone(),
                reason,
            })
        },
    )
}

/// Asks the manager for a fresh certificate with a new key, authenticating with `current`.
pub async fn renew_once(
    config: &Config,
    current: &NodeIdentity,
) -> Result<NodeIdentity, GatewayError> {
    let (key_pem, csr_pem) =
        varmor_rpc::tls::new_key_and_csr(&config.node_name).map_err(|e| GatewayError::Connect {
            url: config.manager_url.clone(),
            detail: format!("cannot create a key: {e}"),
        })?;
    let mut client = gateway::connect(
        config,
        &current.ca_pem,
        Some((&current.cert_pem, &current.key_pem)),
    )
    .await?;
    let response = client
        .renew(v1::RenewRequest {
            csr_pem,
            subject_alt_names: requested_sans(config),
        })
        .await
        .map_err(|s| GatewayError::status(&config.manager_url, &s))?
        .into_inner();
    let ca_pem = if response.ca_pem.trim().is_empty() {
        current.ca_pem.clone()
    } else {
        response.ca_pem
    };
    NodeIdentity::from_pems(&config.node_name, response.certificate_pem, key_pem, ca_pem).map_err(
        |reason| GatewayError::Rpc {
            url: config.manager_url.clone(),
            code: tonic::Code::Internal,
            message: format!("unusable renewed certificate: {reason}"),
        },
    )
}

/// Renews the node certificate at two thirds of its lifetime, for as long as the agent runs.
/// A new identity is stored and published on `identity` (new connections and the `NodeState`
/// server pick it up). Failures are retried with backoff; when the certificate expired
/// meanwhile, the agent joins again with its token.
pub async fn renew_loop(
    config: Arc<Config>,
    state: StateDir,
    identity: Arc<watch::Sender<Arc<NodeIdentity>>>,
    status: Arc<ConnectionStatus>,
    mut shutdown: watch::Receiver<bool>,
) {
    let node = config.node_name.as_str();
    let mut backoff = Backoff::new(BackoffConfig {
        initial: Duration::from_secs(1),
        max: config.renew_retry_max,
    });
    loop {
        let current = identity.borrow().clone();
        let wait = current
            .renew_at()
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            // re-evaluate now and then: the wall clock may jump
            .min(Duration::from_secs(600));
        if !wait.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(wait) => continue,
                _ = shutdown.changed() => return,
            }
        }
        let result = if current.expired_at(SystemTime::now()) {
            tracing::warn!(node, "the node certificate expired; joining again");
            join_once(&config).await.map_err(|e| match e {
                JoinFailure::Fatal(e) => e.to_string(),
                JoinFailure::Transient(e) => e.to_string(),
            })
        } else {
            renew_once(&config, &current)
                .await
                .map_err(|e| e.to_string())
        };
        match result.and_then(|id| store(&state, &id).map(|()| id).map_err(|e| e.to_string())) {
            Ok(id) => {
                tracing::info!(node, not_after = %rfc3339(id.not_after), "node certificate renewed");
                identity.send_replace(Arc::new(id));
                backoff.reset();
            }
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(node, error = %e, retry_in = ?delay, "certificate renewal failed");
                status.error(format!("certificate renewal failed: {e}"));
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    }
}

/// A time as RFC 3339 (UTC), for logs and messages.
pub fn rfc3339(t: SystemTime) -> String {
    let ts = prost_types::Timestamp::from(t);
    ts.to_string()
}
