//! The manager's errors, and the one place where they become gRPC statuses.

use std::io;
use std::path::PathBuf;

use tonic::Status;

/// Everything that can go wrong in the manager.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory operation failed.
    #[error("cannot {action} {}: {cause}", path.display())]
    Io {
        /// What was being done (`read`, `write`, `create`, ...).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause (in the message, so one line says it all).
        cause: io::Error,
    },
    /// A state file exists but cannot be used.
    #[error("{}: {reason}", path.display())]
    BadStateFile {
        /// The file.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// Certificate handling failed.
    #[error("{what}: {reason}")]
    Certificate {
        /// Which certificate or key.
        what: String,
        /// Why.
        reason: String,
    },
    /// The configuration is unusable.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The gRPC server failed.
    #[error("gRPC server on {addr}: {cause:?}")]
    Serve {
        /// The listen address.
        addr: String,
        /// The cause.
        cause: tonic::transport::Error,
    },
    /// The policy source failed.
    #[error("policy source {source_name}: {reason}")]
    Source {
        /// The source (e.g. `directory /etc/varmor/policies`).
        source_name: String,
        /// Why.
        reason: String,
    },

    // Errors of requests: each maps to one gRPC status code in `From<Error> for Status`.
    /// The join credential is wrong.
    #[error("the join token is not valid for this manager (read it from the manager's state dir file `join-token`)")]
    BadJoinToken,
    /// A request field is malformed.
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The request field.
        field: String,
        /// Why.
        reason: String,
    },
    /// Something named in a request does not exist.
    #[error("{what} {name:?} not found")]
    NotFound {
        /// The kind of thing (`node`, `profile`).
        what: &'static str,
        /// Its name.
        name: String,
    },
    /// The request cannot be served in the current state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The manager is shutting down or cannot persist state.
    #[error("{0}")]
    Unavailable(String),
}

impl Error {
    /// An I/O error with its file.
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, cause: io::Error) -> Self {
        Error::Io {
            action,
            path: path.into(),
            cause,
        }
    }

    /// A malformed request field.
    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// A certificate problem.
    pub(crate) fn cert(what: impl Into<String>, reason: impl ToString) -> Self {
        Error::Certificate {
            what: what.into(),
            reason: reason.to_string(),
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let message = e.to_string();
        match e {
            Error::BadJoinToken => Status::unauthenticated(message),
            Error::InvalidArgument { .. } => Status::invalid_argument(message),
            Error::NotFound { .. } => Status::not_found(message),
            Error::FailedPrecondition(_) => Status::failed_precondition(message),
            Error::Unavailable(_) => Status::unavailable(message),
            Error::Io { .. }
            | Error::BadStateFile { .. }
            | Error::Certificate { .. }
            | Error::Config(_)
            | Error::Serve { .. }
            | Error::Source { .. } => {
                tracing::error!(error = %message, "request failed");
                Status::internal(message)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(
            Status::from(Error::BadJoinToken).code(),
            tonic::Code::Unauthenticated
        );
        let s = Status::from(Error::invalid("csr_pem", "not a PEM request"));
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert_eq!(s.message(), "csr_pem: not a PEM request");
        assert_eq!(
            Status::from(Error::NotFound {
                what: "node",
                name: "n1".into()
            })
            .message(),
            "node \"n1\" not found"
        );
    }
}
