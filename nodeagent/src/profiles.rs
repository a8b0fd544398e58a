//! The bundles the agent holds, persisted in `<state-dir>/bundles/<profile>.pb` (each a
//! `varmor.v1.HeldBundle`: the bundle as received, the per-enforcer results and when it was
//! applied), so that after a restart the agent keeps enforcing them and reports the right
//! revisions to the manager.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use prost::Message;
use varmor_policy::identity::MAX_PROFILE_NAME_LEN;
use varmor_proto::v1;

use crate::error::AgentError;
use crate::fsutil;

/// Whether `name` can name a profile (and so a file): lower-case letters, digits, `-` and `.`,
/// starting with a letter or digit, at most [`MAX_PROFILE_NAME_LEN`] bytes.
pub fn check_profile_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the profile name is empty".into());
    }
    if name.len() > MAX_PROFILE_NAME_LEN {
        return Err(format!(
            "the profile name {name:?} is longer than {MAX_PROFILE_NAME_LEN} bytes"
        ));
    }
    let ok_char = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.';
    if !name.bytes().all(ok_char) || !name.as_bytes()[0].is_ascii_alphanumeric() {
        return Err(format!(
            "the profile name {name:?} may only hold lower-case letters, digits, '-' and '.', \
             starting with a letter or digit"
        ));
    }
    Ok(())
}

/// The held bundles, in memory and on disk.
#[derive(Debug)]
pub struct HeldProfiles {
    dir: PathBuf,
    held: RwLock<BTreeMap<String, v1::HeldBundle>>,
    /// Counts changes, so the binder learns of new, changed and removed bundles without polling.
    changes: tokio::sync::watch::Sender<u64>,
}

impl HeldProfiles {
    /// Loads the held bundles from `dir`. Files that cannot be read are skipped with a warning
    /// (the manager sends the bundle again); they never stop the agent.
    pub fn load(dir: PathBuf) -> Result<Self, AgentError> {
        let mut held = BTreeMap::new();
        let entries = std::fs::read_dir(&dir).map_err(|source| AgentError::Read {
            what: "the held bundles in",
            path: dir.clone(),
            source,
        })?;
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if fsutil::is_temp_name(&name) {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let Some(profile) = name.strip_suffix(".pb") else {
                continue;
            };
            let decoded = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| v1::HeldBundle::decode(b.as_slice()).map_err(|e| e.to_string()));
            match decoded {
                Ok(h) if h.bundle.as_ref().is_some_and(|b| b.profile_name == profile) => {
                    held.insert(profile.to_string(), h);
                }
                Ok(_) => tracing::warn!(
                    path = %path.display(),
                    "held bundle skipped: it does not hold the bundle of profile {profile}"
                ),
                Err(e) => tracing::warn!(
                    path = %path.display(),
                    error = %e,
                    "held bundle skipped: cannot decode it"
                ),
            }
        }
        Ok(HeldProfiles {
            dir,
            held: RwLock::new(held),
            changes: tokio::sync::watch::Sender::new(0),
        })
    }

    /// Changes whenever a bundle is put or removed (after the enforcers applied it).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn file_of(&self, profile: &str) -> PathBuf {
        self.dir.join(format!("{profile}.pb"))
    }

    /// The held bundle of `profile`.
    pub fn get(&self, profile: &str) -> Option<v1::HeldBundle> {
        self.read().get(profile).cloned()
    }

    /// Every held bundle, ordered by profile name.
    pub fn list(&self) -> Vec<v1::HeldBundle> {
        self.read().values().cloned().collect()
    }

    /// The profile names held.
    pub fn names(&self) -> Vec<String> {
        self.read().keys().cloned().collect()
    }

    /// The profiles and revisions held, for `Hello`.
    pub fn revisions(&self) -> Vec<v1::HeldProfile> {
        self.read()
            .iter()
            .map(|(name, h)| v1::HeldProfile {
                profile_name: name.clone(),
                revision: h.bundle.as_ref().map_or(0, |b| b.revision),
            })
            .collect()
    }

    /// How many profiles are held.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// The highest revision held.
    pub fn highest_revision(&self) -> u64 {
        self.read()
            .values()
            .filter_map(|h| h.bundle.as_ref().map(|b| b.revision))
            .max()
            .unwrap_or(0)
    }

    /// Holds `held` (in memory, and on disk atomically). The profile name must have been
    /// checked with [`check_profile_name`].
    pub fn put(&self, profile: &str, held: v1::HeldBundle) -> Result<(), AgentError> {
        let path = self.file_of(profile);
        let result = fsutil::write_atomic(&path, &held.encode_to_vec(), 0o600)
            .map_err(|source| AgentError::Write { path, source });
        // In memory even when the write failed: it is what is enforced now.
        self.write().insert(profile.to_string(), held);
        self.changes.send_modify(|n| *n += 1);
        result
    }

    /// Forgets `profile`; returns what was held.
    pub fn remove(&self, profile: &str) -> Result<Option<v1::HeldBundle>, AgentError> {
        let old = self.write().remove(profile);
        self.changes.send_modify(|n| *n += 1);
        let path = self.file_of(profile);
        fsutil::remove_durable(&path).map_err(|source| AgentError::Write { path, source })?;
        Ok(old)
    }

    fn read(&self) -> RwLockReadGuard<'_, BTreeMap<String, v1::HeldBundle>> {
        self.held.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, BTreeMap<String, v1::HeldBundle>> {
        self.held.write().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_names_are_safe_file_names() {
        assert!(check_profile_name("varmor-demo-web").is_ok());
        assert!(check_profile_name("varmor-cluster-varmor-a.b").is_ok());
        for bad in [
            "",
            "../etc",
            "a/b",
            "Upper",
            "-x",
            ".hidden",
            &"a".repeat(64),
        ] {
            assert!(check_profile_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn held_bundles_survive_a_reload_and_bad_files_are_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = HeldProfiles::load(dir.path().to_path_buf()).expect("load");
        let held = v1::HeldBundle {
            bundle: Some(v1::ProfileBundle {
                profile_name: "varmor-a-b".into(),
                revision: 7,
                ..Default::default()
            }),
            results: vec![],
            applied_at: None,
        };
        p.put("varmor-a-b", held.clone()).expect("put");
        std::fs::write(dir.path().join("varmor-x-y.pb"), b"\xff\xff garbage").expect("write");
        let again = HeldProfiles::load(dir.path().to_path_buf()).expect("reload");
        assert_eq!(again.get("varmor-a-b"), Some(held));
        assert_eq!(again.len(), 1);
        assert_eq!(again.highest_revision(), 7);
        again.remove("varmor-a-b").expect("remove");
        assert!(HeldProfiles::load(dir.path().to_path_buf())
            .expect("reload")
            .get("varmor-a-b")
            .is_none());
    }
}
