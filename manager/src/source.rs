//! Where policies come from: one seam, [`PolicySource`], so the Kubernetes source can sit
//! next to the directory source.
//!
//! A source reports the raw text of each policy document it holds, named by a source name
//! (a file path here; `namespace/name` for Kubernetes objects later), and when it goes away.
//! The manager parses, validates and compiles; the source only reads.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use notify::event::{AccessKind, AccessMode, EventKind};
use notify::Watcher;
use tokio::sync::{mpsc, Notify};

use crate::Error;

/// What a source reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceEvent {
    /// A document appeared or changed.
    Upsert {
        /// The source name.
        source: String,
        /// The raw text.
        text: String,
    },
    /// A document exists but cannot be read; the last good version stays in force.
    Unreadable {
        /// The source name.
        source: String,
        /// Why.
        reason: String,
    },
    /// A document went away.
    Delete {
        /// The source name.
        source: String,
    },
    /// Every document that existed when the source started was reported. Until then the
    /// manager does not send snapshots, so a restarted manager never tells agents to drop
    /// profiles it simply has not read yet.
    Synced,
}

/// A place policies come from.
pub trait PolicySource: Send + fmt::Debug + 'static {
    /// A name for logs, e.g. `directory /etc/varmor/policies`.
    fn name(&self) -> String;

    /// Reports the documents, then their changes, until `events` is closed. An error ends
    /// the source (the manager logs it and keeps what it has).
    fn run(
        self: Box<Self>,
        events: mpsc::Sender<SourceEvent>,
    ) -> BoxFuture<'static, Result<(), Error>>;
}

/// Largest policy file read.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Policies from the files of one directory: one policy per `.yaml`, `.yml` or `.json`
/// file. Hidden files (starting with `.`) and sub-directories are ignored. Changes are seen
/// through file-system notifications, with a full rescan every `rescan` as a fallback.
#[derive(Debug, Clone)]
pub struct DirectorySource {
    dir: PathBuf,
    rescan: Duration,
    debounce: Duration,
}

impl DirectorySource {
    /// Watches `dir`; rescans every `rescan`.
    pub fn new(dir: impl Into<PathBuf>, rescan: Duration) -> Self {
        DirectorySource {
            dir: dir.into(),
            rescan,
            // Editors write in several steps; one short pause reads the end result.
            debounce: Duration::from_millis(15),
        }
    }
}

/// What a scan found in one file.
type Found = Result<String, String>;

/// Reads every policy file of `dir`.
fn scan(dir: &Path) -> std::io::Result<BTreeMap<String, Found>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let ext = Path::new(&name)
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase());
        if !matches!(ext.as_deref(), Some("yaml" | "yml" | "json")) {
            continue;
        }
        let path = dir.join(&name);
        // Follows symlinks (ConfigMap mounts are symlinks).
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            // Removed between listing and reading.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                out.insert(
                    path.display().to_string(),
                    Err(format!("cannot read the file: {e}")),
                );
                continue;
            }
        };
        if !meta.is_file() {
            continue;
        }
        let found = if meta.len() > MAX_FILE_BYTES {
            Err(format!(
                "the file is {} bytes; policy files are limited to {MAX_FILE_BYTES} bytes",
                meta.len()
            ))
        } else {
            read_limited(&path)
        };
        out.insert(path.display().to_string(), found);
    }
    Ok(out)
}

fn read_limited(path: &Path) -> Found {
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => return Err(format!("cannot read the file: {e}")),
    };
    let mut bytes = Vec::new();
    if let Err(e) = f.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes) {
        return Err(format!("cannot read the file: {e}"));
    }
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(format!(
            "policy files are limited to {MAX_FILE_BYTES} bytes"
        ));
    }
    String::from_utf8(bytes).map_err(|e| format!("the file is not UTF-8 text: {e}"))
}

/// The events that turn `known` into `now`.
fn diff(known: &BTreeMap<String, Found>, now: &BTreeMap<String, Found>) -> Vec<SourceEvent> {
    let mut out = Vec::new();
    for (source, found) in now {
        if known.get(source) == Some(found) {
            continue;
        }
        out.push(match found {
            Ok(text) => SourceEvent::Upsert {
                source: source.clone(),
                text: text.clone(),
            },
            Err(reason) => SourceEvent::Unreadable {
                source: source.clone(),
                reason: reason.clone(),
            },
        });
    }
    for source in known.keys().filter(|s| !now.contains_key(*s)) {
        out.push(SourceEvent::Delete {
            source: source.clone(),
        });
    }
    out
}

impl PolicySource for DirectorySource {
    fn name(&self) -> String {
        format!("directory {}", self.dir.display())
    }

    fn run(
        self: Box<Self>,
        events: mpsc::Sender<SourceEvent>,
    ) -> BoxFuture<'static, Result<(), Error>> {
        Box::pin(async move {
            let name = self.name();
            if !self.dir.is_dir() {
                return Err(Error::Source {
                    source_name: name,
                    reason: "not a directory (create it, or point --policy-dir at one)".into(),
                });
            }
            let kick = Arc::new(Notify::new());
            let k = kick.clone();
            let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                match res {
                    // Our own reads open the files; only writes and directory changes matter.
                    Ok(ev) => match ev.kind {
                        EventKind::Access(AccessKind::Close(AccessMode::Write)) => k.notify_one(),
                        EventKind::Access(_) => {}
                        _ => k.notify_one(),
                    },
                    Err(e) => tracing::warn!(error = %e, "file-system notification error"),
                }
            });
            let _watcher = match watcher {
                Ok(mut w) => match w.watch(&self.dir, notify::RecursiveMode::NonRecursive) {
                    Ok(()) => Some(w),
                    Err(e) => {
                        tracing::warn!(source = %name, error = %e, rescan = ?self.rescan, "cannot watch the policy directory; relying on periodic rescans");
                        None
                    }
                },
                Err(e) => {
                    tracing::warn!(source = %name, error = %e, "cannot watch the policy directory; relying on periodic rescans");
                    None
                }
            };
            let mut known: BTreeMap<String, Found> = BTreeMap::new();
            let mut synced = false;
            let mut tick = tokio::time::interval(self.rescan);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut scan_failed = false;
            loop {
                let dir = self.dir.clone();
                let result = tokio::task::spawn_blocking(move || scan(&dir))
                    .await
                    .map_err(|e| Error::Source {
                        source_name: name.clone(),
                        reason: format!("scan task failed: {e}"),
                    })?;
                match result {
                    Ok(now) => {
                        if scan_failed {
                            tracing::info!(source = %name, "policy directory readable again");
                            scan_failed = false;
                        }
                        for ev in diff(&known, &now) {
                            if events.send(ev).await.is_err() {
                                return Ok(());
                            }
                        }
                        known = now;
                        if !synced {
                            synced = true;
                            if events.send(SourceEvent::Synced).await.is_err() {
                                return Ok(());
                            }
                        }
                    }
                    Err(e) => {
                        // Keep every policy: a directory that vanished for a moment (a
                        // remount, a ConfigMap swap) must not unload protection.
                        if !scan_failed {
                            tracing::warn!(source = %name, error = %e, "cannot list the policy directory; keeping the loaded policies");
                            scan_failed = true;
                        }
                    }
                }
                tokio::select! {
                    _ = kick.notified() => {
                        tokio::time::sleep(self.debounce).await;
                    }
                    _ = tick.tick() => {}
                    _ = events.closed() => return Ok(()),
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffs() {
        let a: BTreeMap<String, Found> = BTreeMap::from([
            ("a".into(), Ok("1".into())),
            ("b".into(), Ok("2".into())),
            ("c".into(), Err("too big".into())),
        ]);
        let b: BTreeMap<String, Found> = BTreeMap::from([
            ("a".into(), Ok("1".into())),
            ("b".into(), Ok("3".into())),
            ("d".into(), Ok("4".into())),
        ]);
        assert_eq!(
            diff(&a, &b),
            [
                SourceEvent::Upsert {
                    source: "b".into(),
                    text: "3".into()
                },
                SourceEvent::Upsert {
                    source: "d".into(),
                    text: "4".into()
                },
                SourceEvent::Delete { source: "c".into() },
            ]
        );
    }

    #[test]
    fn scans_only_policy_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a.yaml"), "x").expect("write");
        std::fs::write(dir.path().join("b.JSON"), "y").expect("write");
        std::fs::write(dir.path().join(".a.yaml.swp"), "z").expect("write");
        std::fs::write(dir.path().join("notes.txt"), "z").expect("write");
        std::fs::create_dir(dir.path().join("sub.yaml")).expect("mkdir");
        let found = scan(dir.path()).expect("scan");
        let names: Vec<_> = found
            .keys()
            .map(|k| {
                Path::new(k)
                    .file_name()
                    .expect("name")
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        assert_eq!(names, ["a.yaml", "b.JSON"]);
    }

    #[tokio::test]
    async fn reports_files_then_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a.yaml"), "one").expect("write");
        let (tx, mut rx) = mpsc::channel(16);
        let src = Box::new(DirectorySource::new(dir.path(), Duration::from_secs(60)));
        let task = tokio::spawn(src.run(tx));
        let a = dir.path().join("a.yaml").display().to_string();
        assert_eq!(
            rx.recv().await,
            Some(SourceEvent::Upsert {
                source: a.clone(),
                text: "one".into()
            })
        );
        assert_eq!(rx.recv().await, Some(SourceEvent::Synced));
        // Written whole, as a deployment tool would (a plain write may be seen half done).
        std::fs::write(dir.path().join(".a.tmp"), "two").expect("write");
        std::fs::rename(dir.path().join(".a.tmp"), dir.path().join("a.yaml")).expect("rename");
        let next = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("notified without waiting for the rescan");
        assert_eq!(
            next,
            Some(SourceEvent::Upsert {
                source: a.clone(),
                text: "two".into()
            })
        );
        std::fs::remove_file(dir.path().join("a.yaml")).expect("rm");
        let next = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("deletion seen");
        assert_eq!(next, Some(SourceEvent::Delete { source: a }));
        drop(rx);
        task.await.expect("join").expect("source ends cleanly");
    }

    #[tokio::test]
    async fn a_missing_directory_is_an_error() {
        let (tx, _rx) = mpsc::channel(1);
        let src = Box::new(DirectorySource::new(
            "/nonexistent/varmor",
            Duration::from_secs(1),
        ));
        let err = src.run(tx).await.expect_err("missing dir");
        assert!(err.to_string().contains("/nonexistent/varmor"), "{err}");
    }
}
