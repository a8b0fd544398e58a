//! The agent's state directory.
//!
//! ```text
//! <state-dir>/            mode 0700
//!   node.key              the node's private key (PEM, mode 0600)
//!   node.crt              the node certificate (PEM)
//!   ca.crt                the CA bundle the manager returned (PEM)
//!   bundles/<profile>.pb  each held bundle with its per-enforcer results (varmor.v1.HeldBundle)
//!   events.seq            the next event sequence number (decimal)
//! ```
//!
//! Every file is replaced atomically, so a crash leaves the old or the new version.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::error::AgentError;

/// The paths of the state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// Opens (creating it if needed, mode 0700) the state directory.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, AgentError> {
        let root = root.into();
        let write_err = |path: &Path, source| AgentError::Write {
            path: path.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(&root).map_err(|e| write_err(&root, e))?;
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| write_err(&root, e))?;
        let s = StateDir { root };
        let bundles = s.bundles_dir();
        std::fs::create_dir_all(&bundles).map_err(|e| write_err(&bundles, e))?;
        Ok(s)
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The node's private key.
    pub fn node_key(&self) -> PathBuf {
        self.root.join("node.key")
    }

    /// The node certificate.
    pub fn node_crt(&self) -> PathBuf {
        self.root.join("node.crt")
    }

    /// The CA bundle from the manager.
    pub fn ca_crt(&self) -> PathBuf {
        self.root.join("ca.crt")
    }

    /// The held bundles.
    pub fn bundles_dir(&self) -> PathBuf {
        self.root.join("bundles")
    }

    /// The next event sequence number.
    pub fn event_sequence(&self) -> PathBuf {
        self.root.join("events.seq")
    }
}
