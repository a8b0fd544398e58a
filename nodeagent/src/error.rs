//! The agent's errors.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Errors that stop the agent (at start) or that a caller of the library must handle.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The configuration cannot work.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A sink of the violation pipeline could not be opened.
    #[error("{0}")]
    Pipeline(#[from] crate::violations::fanout::PipelineError),
    /// The metrics endpoint could not be served.
    #[error("cannot serve metrics: {0}")]
    Metrics(String),
    /// A file could not be read.
    #[error("cannot read {what} {}: {source}", path.display())]
    Read {
        /// What the file holds.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file or directory could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The manager refused the join token: retrying cannot help.
    #[error(
        "the manager at {url} rejected the join token from {}: {message} ({code:?}); \
         check the token file, or remove it and give the node a new token",
        token_file.display()
    )]
    JoinRejected {
        /// The manager.
        url: String,
        /// The token file.
        token_file: PathBuf,
        /// The gRPC status code.
        code: tonic::Code,
        /// The manager's message.
        message: String,
    },
    /// The manager answered with a certificate the agent cannot use.
    #[error("the manager at {url} returned an unusable node certificate: {reason}")]
    BadCertificate {
        /// The manager.
        url: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// TLS material could not be used.
    #[error("TLS setup failed: {0}")]
    Tls(#[from] varmor_rpc::tls::TlsError),
    /// The `NodeState` listener could not be opened.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The agent was asked to stop before it was ready.
    #[error("stopped before the agent was ready")]
    Stopped,
}
