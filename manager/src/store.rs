//! Files in the state directory: their names, atomic writes, and a background writer that
//! coalesces frequent changes into few writes.
//!
//! Every file is written whole to a temporary file in the same directory, synced, and renamed
//! over the old one, so a crash leaves either the old or the new version, never a torn one.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::de::DeserializeOwned;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::Error;

/// The CA certificate (PEM); agents and operators trust it.
pub const CA_CERT: &str = "ca.crt";
/// The CA private key (PEM, mode 0600).
pub const CA_KEY: &str = "ca.key";
/// The join token agents present in `Join` (mode 0600).
pub const JOIN_TOKEN: &str = "join-token";
/// The operator client certificate (URI SAN `varmor://admin/admin`).
pub const ADMIN_CERT: &str = "admin.crt";
/// The operator client key (mode 0600).
pub const ADMIN_KEY: &str = "admin.key";
/// The manager's gRPC server certificate.
pub const SERVER_CERT: &str = "server.crt";
/// The manager's gRPC server key (mode 0600).
pub const SERVER_KEY: &str = "server.key";
/// Joined nodes, their facts, capabilities and per-profile results.
pub const NODES: &str = "nodes.json";
/// The revision counter, per-policy revisions, content hashes, first-seen times and the last
/// good text of every policy.
pub const POLICIES: &str = "policies.json";
/// Per-node event sequence positions and counters.
pub const EVENTS: &str = "events.json";

/// Mode of files only the manager may read.
pub const PRIVATE: u32 = 0o600;
/// Mode of files anyone on the host may read.
pub const PUBLIC: u32 = 0o644;

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` to `path` atomically with file mode `mode`.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Error> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.tmp.{}.{}",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have narrowed the mode; public files must stay readable.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io("write", path, e));
    }
    Ok(())
}

/// Reads a file that may not exist yet.
pub fn read_optional(path: &Path) -> Result<Option<String>, Error> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("read", path, e)),
    }
}

/// Reads a JSON state file that may not exist yet.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, Error> {
    let Some(text) = read_optional(path)? else {
        return Ok(None);
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::BadStateFile {
            path: path.to_path_buf(),
            reason: format!(
                "not valid JSON state ({e}); fix or remove the file (removing it forgets that state)"
            ),
        })
}

/// Creates the state directory (mode 0700) if it does not exist.
pub fn ensure_dir(dir: &Path) -> Result<(), Error> {
    if !dir.exists() {
        fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io("set permissions of", dir, e))?;
    }
    Ok(())
}

/// The JSON documents of the state directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Doc {
    /// [`NODES`].
    Nodes,
    /// [`POLICIES`].
    Policies,
    /// [`EVENTS`].
    Events,
}

impl Doc {
    /// Every document.
    pub const ALL: [Doc; 3] = [Doc::Nodes, Doc::Policies, Doc::Events];

    /// The file name.
    pub fn file(self) -> &'static str {
        match self {
            Doc::Nodes => NODES,
            Doc::Policies => POLICIES,
            Doc::Events => EVENTS,
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// Produces the current content of a document: `(generation, bytes)`, or `None` when the
/// generation is not newer than the one given (already written).
pub type Snapshotter =
    Arc<dyn Fn(Doc, u64) -> Result<Option<(u64, Vec<u8>)>, String> + Send + Sync>;

#[derive(Debug, Clone, Default)]
struct Written {
    generation: u64,
    error: Option<String>,
}

#[derive(Debug)]
struct Writer {
    kick: Notify,
    done: watch::Sender<Written>,
}

/// Writes documents in the background: callers bump a generation under the state lock and
/// kick the writer, which serializes the newest state and writes it once, however many
/// changes came in meanwhile. Callers that must not go on before the change is on disk (event
/// positions before an ack, a revision before it is distributed) wait for their generation.
pub struct Persister {
    dir: PathBuf,
    snapshot: Snapshotter,
    writers: Vec<Arc<Writer>>,
    /// Per document: held while a file is written, with the generation on disk, so the
    /// background writer and a final flush never overwrite newer content with older.
    files: Arc<[Mutex<u64>; 3]>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Persister {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Persister")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// Writes the newest content of `doc` if it is newer than what is on disk.
fn write_newest(
    dir: &Path,
    snapshot: &Snapshotter,
    files: &[Mutex<u64>; 3],
    doc: Doc,
) -> Result<Option<u64>, (Option<u64>, String)> {
    let mut on_disk = files[doc.index()].lock().unwrap_or_else(|e| e.into_inner());
    let Some((generation, bytes)) = snapshot(doc, *on_disk).map_err(|e| (None, e))? else {
        return Ok(None);
    };
    write_atomic(&dir.join(doc.file()), &bytes, PRIVATE)
        .map_err(|e| (Some(generation), e.to_string()))?;
    *on_disk = generation;
    Ok(Some(generation))
}

impl Persister {
    /// Starts one writer task per document; `written` holds the generation already on disk
    /// for each document (as loaded).
    pub fn start(dir: PathBuf, snapshot: Snapshotter, written: [u64; 3]) -> Self {
        let files = Arc::new(written.map(Mutex::new));
        let mut writers = Vec::new();
        let mut tasks = Vec::new();
        for doc in Doc::ALL {
            let (done, _) = watch::channel(Written {
                generation: written[doc.index()],
                error: None,
            });
            let writer = Arc::new(Writer {
                kick: Notify::new(),
                done,
            });
            let w = writer.clone();
            let (dir, snap, files) = (dir.clone(), snapshot.clone(), files.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    w.kick.notified().await;
                    let (d, s, f) = (dir.clone(), snap.clone(), files.clone());
                    let result = tokio::task::spawn_blocking(move || write_newest(&d, &s, &f, doc))
                        .await
                        .map_err(|e| (None, e.to_string()))
                        .and_then(|r| r);
                    match result {
                        Ok(None) => {
                            // Nothing newer; report what is on disk (a flush may have
                            // written it).
                            let on_disk = *files[doc.index()].lock().unwrap_or_else(|e| e.into_inner());
                            w.done.send_if_modified(|d| {
                                let newer = on_disk > d.generation;
                                if newer {
                                    *d = Written { generation: on_disk, error: None };
                                }
                                newer
                            });
                        }
                        Ok(Some(generation)) => {
                            w.done.send_replace(Written { generation, error: None });
                        }
                        Err((generation, e)) => {
                            tracing::error!(file = %dir.join(doc.file()).display(), error = %e, "cannot persist state");
                            if let Some(generation) = generation {
                                w.done.send_replace(Written { generation, error: Some(e) });
                            }
                        }
                    }
                }
            }));
            writers.push(writer);
        }
        Persister {
            dir,
            snapshot,
            writers,
            files,
            tasks: Mutex::new(tasks),
        }
    }

    /// Schedules a write of `doc`.
    pub fn kick(&self, doc: Doc) {
        self.writers[doc.index()].kick.notify_one();
    }

    /// Schedules a write of `doc` and waits until generation `generation` (or a newer one) is
    /// on disk.
    pub async fn wait(&self, doc: Doc, generation: u64) -> Result<(), Error> {
        let writer = &self.writers[doc.index()];
        let mut rx = writer.done.subscribe();
        writer.kick.notify_one();
        loop {
            {
                let w = rx.borrow_and_update();
                if w.generation >= generation {
                    return match &w.error {
                        None => Ok(()),
                        Some(e) => Err(Error::Unavailable(format!(
                            "cannot persist {}: {e}",
                            doc.file()
                        ))),
                    };
                }
            }
            if rx.changed().await.is_err() {
                return Err(Error::Unavailable("the state writer stopped".into()));
            }
        }
    }

    /// Writes every document now, on the calling thread (for teardown, where nothing can be
    /// awaited).
    pub fn flush_blocking(&self) {
        for doc in Doc::ALL {
            if let Err((_, e)) = write_newest(&self.dir, &self.snapshot, &self.files, doc) {
                tracing::error!(file = %self.dir.join(doc.file()).display(), error = %e, "cannot persist state");
            }
        }
    }

    /// Stops the writer tasks (after a final [`Persister::wait`] for each document).
    pub fn stop(&self) {
        if let Ok(mut tasks) = self.tasks.lock() {
            for t in tasks.drain(..) {
                t.abort();
            }
        }
    }
}

impl Drop for Persister {
    fn drop(&mut self) {
        self.stop();
        self.flush_blocking();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writes_set_the_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("secret");
        write_atomic(&p, b"one", PRIVATE).expect("write");
        write_atomic(&p, b"two", PRIVATE).expect("overwrite");
        assert_eq!(fs::read_to_string(&p).expect("read"), "two");
        let mode = fs::metadata(&p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // No temporary files are left behind.
        assert_eq!(fs::read_dir(dir.path()).expect("ls").count(), 1);
    }

    #[test]
    fn unreadable_json_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("nodes.json");
        fs::write(&p, "{not json").expect("write");
        let err = read_json::<serde_json::Value>(&p).expect_err("bad json");
        assert!(err.to_string().contains("nodes.json"), "{err}");
        assert!(read_json::<serde_json::Value>(&dir.path().join("missing"))
            .expect("missing is fine")
            .is_none());
    }

    #[tokio::test]
    async fn the_writer_coalesces_and_reports_generations() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = Arc::new(Mutex::new((0u64, String::new())));
        let s = state.clone();
        let snapshot: Snapshotter = Arc::new(move |_doc, written| {
            let g = s.lock().expect("lock");
            Ok((g.0 > written).then(|| (g.0, g.1.clone().into_bytes())))
        });
        let p = Persister::start(dir.path().to_path_buf(), snapshot, [0; 3]);
        for i in 1..=50u64 {
            let mut g = state.lock().expect("lock");
            g.0 = i;
            g.1 = format!("{{\"n\":{i}}}");
            drop(g);
            p.kick(Doc::Events);
        }
        p.wait(Doc::Events, 50).await.expect("written");
        assert_eq!(
            fs::read_to_string(dir.path().join(EVENTS)).expect("read"),
            "{\"n\":50}"
        );
    }
}
