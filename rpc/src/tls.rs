//! Mutual TLS for every varmor gRPC connection, and the identities certificates carry.
//!
//! * Servers accept TLS 1.3 only, with client certificates checked against the varmor CA.
//!   The manager's gateway lets a client without a certificate in (for `Join` only: every
//!   other handler asks [`peer`] for the verified identity); a certificate from another CA
//!   fails the handshake.
//! * Identity lives in a URI subject alternative name: `varmor://node/<name>` for node
//!   certificates, `varmor://admin/<name>` for operators, `varmor://server/<name>` for the
//!   manager's server certificate. Authorization reads only that, never a name claimed in a
//!   message.

use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};
use tonic::{Request, Status};

/// Errors of certificate handling.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file or string could not be parsed.
    #[error("cannot read {what}: {reason}")]
    Pem {
        /// What was being read.
        what: String,
        /// Why it failed.
        reason: String,
    },
    /// rcgen failed.
    #[error("certificate error: {0}")]
    Cert(#[from] rcgen::Error),
    /// rustls refused the configuration.
    #[error("TLS configuration error: {0}")]
    Config(String),
}

/// What a certificate's owner may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A node agent.
    Node,
    /// An operator.
    Admin,
    /// The manager's server certificate.
    Server,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Admin => "admin",
            Role::Server => "server",
        }
    }
}

/// The URI SAN that carries a role and a name.
pub fn identity_uri(role: Role, name: &str) -> String {
    format!("varmor://{}/{name}", role.as_str())
}

/// The verified identity of a caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// A node agent with its node name.
    Node(String),
    /// An operator.
    Admin(String),
}

/// The identity in a certificate (DER).
pub fn identity_of_certificate(der: &[u8]) -> Result<Peer, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("unreadable certificate: {e}"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("unreadable subject alternative names: {e}"))?
        .ok_or("the certificate has no subject alternative names")?;
    for name in &san.value.general_names {
        if let x509_parser::extensions::GeneralName::URI(uri) = name {
            if let Some(rest) = uri.strip_prefix("varmor://") {
                if let Some((role, name)) = rest.split_once('/') {
                    match role {
                        "node" if !name.is_empty() => return Ok(Peer::Node(name.to_string())),
                        "admin" if !name.is_empty() => return Ok(Peer::Admin(name.to_string())),
                        _ => {}
                    }
                }
            }
        }
    }
    Err("the certificate carries no varmor node or admin identity".to_string())
}

/// The verified identity of the caller of a request; `Unauthenticated` without a client
/// certificate.
pub fn peer<T>(req: &Request<T>) -> Result<Peer, Status> {
    let certs = req.peer_certs().ok_or_else(|| {
        Status::unauthenticated("a client certificate signed by the varmor CA is required")
    })?;
    let leaf = certs.first().ok_or_else(|| {
        Status::unauthenticated("a client certificate signed by the varmor CA is required")
    })?;
    identity_of_certificate(leaf.as_ref()).map_err(Status::permission_denied)
}

/// The node name of a caller that must be a node agent.
pub fn require_node<T>(req: &Request<T>) -> Result<String, Status> {
    match peer(req)? {
        Peer::Node(name) => Ok(name),
        Peer::Admin(_) => Err(Status::permission_denied(
            "this call is for node agents; use a node certificate",
        )),
    }
}

/// The name of a caller that must be an operator.
pub fn require_admin<T>(req: &Request<T>) -> Result<String, Status> {
    match peer(req)? {
        Peer::Admin(name) => Ok(name),
        Peer::Node(node) => Err(Status::permission_denied(format!(
            "this call needs an operator (admin) certificate; node {node:?} is not allowed"
        ))),
    }
}

/// A new private key (PEM) and a certificate signing request (PEM) for `common_name`.
pub fn new_key_and_csr(common_name: &str) -> Result<(String, String), TlsError> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
}

/// When a certificate (PEM) expires.
pub fn not_after(cert_pem: &str) -> Result<SystemTime, TlsError> {
    let der = first_cert_der(cert_pem, "certificate")?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| TlsError::Pem {
            what: "certificate".into(),
            reason: e.to_string(),
        })?;
    let secs = cert.validity().not_after.timestamp();
    Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0)))
}

fn first_cert_der(pem: &str, what: &str) -> Result<CertificateDer<'static>, TlsError> {
    certs_der(pem, what)?
        .into_iter()
        .next()
        .ok_or_else(|| TlsError::Pem {
            what: what.into(),
            reason: "no certificate in the PEM".into(),
        })
}

fn certs_der(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what: what.into(),
            reason: e.to_string(),
        })
}

fn key_der(pem: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| TlsError::Pem {
        what: "private key".into(),
        reason: e.to_string(),
    })
}

/// Whether a server asks for client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// A certificate is required to connect.
    Required,
    /// A certificate is verified when presented; handlers decide (the gateway's `Join`).
    Optional,
}

/// A TLS 1.3 server configuration with the varmor CA as the only client trust anchor.
pub fn server_config(
    cert_pem: &str,
    key_pem: &str,
    ca_pem: &str,
    client_auth: ClientAuth,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in certs_der(ca_pem, "CA bundle")? {
        roots.add(c).map_err(|e| TlsError::Config(e.to_string()))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    let verifier = match client_auth {
        ClientAuth::Required => verifier.build(),
        ClientAuth::Optional => verifier.allow_unauthenticated().build(),
    }
    .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            certs_der(cert_pem, "server certificate")?,
            key_der(key_pem)?,
        )
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts TCP connections and completes TLS handshakes concurrently; connections whose
/// handshake fails (no or untrusted certificate, wrong protocol) are logged and dropped, never
/// ending the stream. Feed the result to `tonic::transport::Server::serve_with_incoming`; the
/// accept loop ends (and the port is released) when the server drops the stream.
pub fn tls_incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> impl futures_core::Stream<Item = Result<TlsStream<TcpStream>, io::Error>> {
    tls_incoming_with(listener, move || config.clone())
}

/// [`tls_incoming`] with the configuration taken anew for each connection, so that a renewed
/// certificate is served without restarting the listener.
pub fn tls_incoming_with(
    listener: TcpListener,
    config: impl Fn() -> Arc<rustls::ServerConfig> + Send + 'static,
) -> impl futures_core::Stream<Item = Result<TlsStream<TcpStream>, io::Error>> {
    tls_incoming_observed(listener, config, |_| {})
}

/// Why a server-side TLS handshake did not complete.
#[derive(Debug)]
pub enum HandshakeFailure {
    /// The handshake failed (the cause from rustls, or the connection's I/O error).
    Failed(io::Error),
    /// The client did not finish the handshake within 10 s.
    TimedOut,
}

impl HandshakeFailure {
    /// A short, stable reason for metrics labels: `certificate` (missing or untrusted client
    /// certificate), `protocol` (not TLS 1.3, no common parameters, malformed messages),
    /// `alert` (the client refused, e.g. our certificate), `tls` (another TLS error), `io`
    /// (the connection broke) or `timeout`.
    pub fn reason(&self) -> &'static str {
        let HandshakeFailure::Failed(e) = self else {
            return "timeout";
        };
        let Some(tls) = e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) else {
            return "io";
        };
        match tls {
            rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => {
                "certificate"
            }
            rustls::Error::PeerIncompatible(_)
            | rustls::Error::PeerMisbehaved(_)
            | rustls::Error::InappropriateMessage { .. }
            | rustls::Error::InappropriateHandshakeMessage { .. }
            | rustls::Error::InvalidMessage(_)
            | rustls::Error::NoApplicationProtocol => "protocol",
            rustls::Error::AlertReceived(_) => "alert",
            _ => "tls",
        }
    }
}

impl std::fmt::Display for HandshakeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandshakeFailure::Failed(e) => write!(f, "{e}"),
            HandshakeFailure::TimedOut => f.write_str("timed out"),
        }
    }
}

/// [`tls_incoming_with`] that also reports every failed handshake to `on_failure` (after
/// logging it), e.g. to count it in a metric.
pub fn tls_incoming_observed(
    listener: TcpListener,
    config: impl Fn() -> Arc<rustls::ServerConfig> + Send + 'static,
    on_failure: impl Fn(&HandshakeFailure) + Send + Sync + 'static,
) -> impl futures_core::Stream<Item = Result<TlsStream<TcpStream>, io::Error>> {
    let on_failure = Arc::new(on_failure);
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = tx.closed() => return,
            };
            let (tcp, addr) = match accepted {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // gRPC messages are small and latency matters more than packet count.
            let _ = tcp.set_nodelay(true);
            let acceptor = TlsAcceptor::from(config());
            let tx = tx.clone();
            let on_failure = on_failure.clone();
            tokio::spawn(async move {
                let failure =
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
                    {
                        Ok(Ok(tls)) => {
                            let _ = tx.send(Ok(tls)).await;
                            return;
                        }
                        Ok(Err(e)) => HandshakeFailure::Failed(e),
                        Err(_) => HandshakeFailure::TimedOut,
                    };
                tracing::info!(peer = %addr, error = %failure, reason = failure.reason(), "TLS handshake refused");
                on_failure(&failure);
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Client TLS settings: trust only the varmor CA, present `identity` (certificate and key
/// PEM) when given, and expect the server certificate to name `server_name`.
pub fn client_config(
    ca_pem: &str,
    identity: Option<(&str, &str)>,
    server_name: &str,
) -> ClientTlsConfig {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name(server_name);
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    tls
}

/// The host part of a URL such as `https://10.0.0.1:9443`, for TLS server-name checks.
pub fn host_of_url(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6).to_string();
    }
    authority
        .rsplit_once(':')
        .map_or(authority, |(h, _)| h)
        .to_string()
}

/// Subject alternative names for a certificate: each entry becomes an IP address SAN when it
/// parses as one, a DNS SAN otherwise.
pub fn san_types(names: &[String]) -> Result<Vec<rcgen::SanType>, TlsError> {
    names
        .iter()
        .map(|n| match n.parse::<IpAddr>() {
            Ok(ip) => Ok(rcgen::SanType::IpAddress(ip)),
            Err(_) => Ok(rcgen::SanType::DnsName(n.clone().try_into().map_err(
                |e: rcgen::Error| TlsError::Config(format!("name {n:?}: {e}")),
            )?)),
        })
        .collect()
}

/// Reads a PKCS#8 key from PEM, for signing with rcgen.
pub fn key_pair(pem: &str) -> Result<rcgen::KeyPair, TlsError> {
    Ok(rcgen::KeyPair::from_pem(pem)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_of_urls() {
        assert_eq!(host_of_url("https://127.0.0.1:9443"), "127.0.0.1");
        assert_eq!(host_of_url("https://[::1]:9443/x"), "::1");
        assert_eq!(host_of_url("manager.example:443"), "manager.example");
        assert_eq!(host_of_url("https://manager"), "manager");
    }

    #[test]
    fn identities_come_from_uri_sans() {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        params.subject_alt_names.push(rcgen::SanType::URI(
            identity_uri(Role::Node, "n1").try_into().expect("uri"),
        ));
        let cert = params.self_signed(&key).expect("cert");
        assert_eq!(
            identity_of_certificate(cert.der()),
            Ok(Peer::Node("n1".into()))
        );
        let plain = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        assert!(identity_of_certificate(plain.der()).is_err());
    }
}
