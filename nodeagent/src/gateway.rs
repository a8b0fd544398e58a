//! Connections to the manager's `AgentGateway` over mutually authenticated TLS.

use std::error::Error as _;

use tonic::transport::{Channel, Endpoint};
use varmor_proto::v1::agent_gateway_client::AgentGatewayClient;

use crate::config::Config;
use crate::error::AgentError;

/// The largest message the agent accepts from the manager (bundles carry BPF tables).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// A failure talking to the manager. All of them are retried; the caller decides whether a
/// status code is fatal (see [`is_rejection`]).
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// No connection (TCP, TLS or HTTP/2).
    #[error("cannot connect to the manager at {url}: {detail}")]
    Connect {
        /// The manager.
        url: String,
        /// The transport error and its causes.
        detail: String,
    },
    /// The manager answered with an error status.
    #[error("the manager at {url} answered {code:?}: {message}")]
    Rpc {
        /// The manager.
        url: String,
        /// The status code.
        code: tonic::Code,
        /// The manager's message.
        message: String,
    },
    /// The manager ended a stream.
    #[error("the manager at {url} closed the {stream} stream")]
    Closed {
        /// The manager.
        url: String,
        /// Which stream.
        stream: &'static str,
    },
}

impl GatewayError {
    /// An error status from `url`.
    pub fn status(url: &str, status: &tonic::Status) -> Self {
        GatewayError::Rpc {
            url: url.to_string(),
            code: status.code(),
            message: status.message().to_string(),
        }
    }
}

/// Whether a status means the manager refused the request for good (a wrong credential, a
/// removed node) rather than a passing failure worth retrying.
pub fn is_rejection(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unauthenticated
            | tonic::Code::PermissionDenied
            | tonic::Code::InvalidArgument
            | tonic::Code::FailedPrecondition
            | tonic::Code::NotFound
            | tonic::Code::Unimplemented
    )
}

/// The manager URL with an `https` scheme; `http` is refused (no plaintext anywhere).
pub fn manager_endpoint(url: &str) -> Result<String, AgentError> {
    let url = url.trim();
    if url.is_empty() {
        return Err(AgentError::Config("--manager is empty".into()));
    }
    match url.split_once("://") {
        None => Ok(format!("https://{url}")),
        Some(("https", rest)) if !rest.is_empty() => Ok(url.to_string()),
        Some((scheme, _)) => Err(AgentError::Config(format!(
            "--manager {url:?}: the scheme must be https (got {scheme:?}); the manager is only \
             reachable over mutual TLS"
        ))),
    }
}

/// A message with the chain of causes of an error.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
        source = cause.source();
    }
    s
}

/// A client of the manager's gateway that trusts `ca_pem` and presents `identity` (certificate
/// and key PEM) when given.
pub async fn connect(
    config: &Config,
    ca_pem: &str,
    identity: Option<(&str, &str)>,
) -> Result<AgentGatewayClient<Channel>, GatewayError> {
    let url = manager_endpoint(&config.manager_url).map_err(|e| GatewayError::Connect {
        url: config.manager_url.clone(),
        detail: e.to_string(),
    })?;
    let connect_err = |e: tonic::transport::Error| GatewayError::Connect {
        url: url.clone(),
        detail: e
            .source()
            .map_or_else(|| e.to_string(), |_| error_chain(&e)),
    };
    let tls = varmor_rpc::tls::client_config(ca_pem, identity, &varmor_rpc::tls::host_of_url(&url));
    let channel = Endpoint::from_shared(url.clone())
        .map_err(connect_err)?
        .tls_config(tls)
        .map_err(connect_err)?
        .connect_timeout(config.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(config.keepalive_interval)
        .keep_alive_timeout(config.keepalive_timeout)
        .keep_alive_while_idle(true)
        .connect()
        .await
        .map_err(connect_err)?;
    Ok(AgentGatewayClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_https_only() {
        assert_eq!(
            manager_endpoint("10.0.0.1:9443").expect("ok"),
            "https://10.0.0.1:9443"
        );
        assert_eq!(
            manager_endpoint("https://m:9443").expect("ok"),
            "https://m:9443"
        );
        let e = manager_endpoint("http://m:9443").expect_err("plaintext");
        assert!(e.to_string().contains("https"), "{e}");
    }
}
