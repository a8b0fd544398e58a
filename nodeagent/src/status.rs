//! The state of the manager connection, as `GetState` shows it.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

/// A snapshot of the connection state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionState {
    /// The Sync session is up.
    pub connected: bool,
    /// Since when it is up (or down).
    pub changed_at: SystemTime,
    /// The last error talking to the manager (kept after a reconnect, for the operator).
    pub last_error: String,
    /// Sessions started so far.
    pub sessions: u64,
}

/// The connection state, shared by the session and the `NodeState` service.
#[derive(Debug)]
pub struct ConnectionStatus {
    inner: Mutex<ConnectionState>,
}

impl Default for ConnectionStatus {
    fn default() -> Self {
        ConnectionStatus {
            inner: Mutex::new(ConnectionState {
                connected: false,
                changed_at: SystemTime::now(),
                last_error: String::new(),
                sessions: 0,
            }),
        }
    }
}

impl ConnectionStatus {
    /// The current state.
    pub fn get(&self) -> ConnectionState {
        self.lock().clone()
    }

    /// The session is up.
    pub fn connected(&self) {
        let mut s = self.lock();
        s.sessions += 1;
        if !s.connected {
            s.connected = true;
            s.changed_at = SystemTime::now();
        }
    }

    /// The session is down because of `error`.
    pub fn disconnected(&self, error: impl Into<String>) {
        let mut s = self.lock();
        s.last_error = error.into();
        if s.connected {
            s.connected = false;
            s.changed_at = SystemTime::now();
        }
    }

    /// Records an error that did not change the connection (e.g. a failed renewal).
    pub fn error(&self, error: impl Into<String>) {
        self.lock().last_error = error.into();
    }

    fn lock(&self) -> MutexGuard<'_, ConnectionState> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
