//! Every read of the host (`/proc`, `/sys`, the kubelet's directories) goes through [`HostFs`],
//! whose root is configurable: the agent uses `/` (or the host's root mounted into its
//! container), tests a temporary directory.

use std::io;
use std::path::{Path, PathBuf};

use varmor_policy::identity::NodeFacts;
use varmor_proto::v1;

/// The host's file system under a root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFs {
    root: PathBuf,
}

impl HostFs {
    /// The host seen under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        HostFs { root: root.into() }
    }

    /// The root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the host path `abs` (e.g. `/proc/partitions`) is found.
    pub fn path(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }

    /// The content of the host file `abs`.
    pub fn read(&self, abs: &str) -> io::Result<String> {
        std::fs::read_to_string(self.path(abs))
    }

    /// Whether the host path `abs` exists.
    pub fn exists(&self, abs: &str) -> bool {
        self.path(abs).exists()
    }

    /// Whether the host path `abs` is a directory.
    pub fn is_dir(&self, abs: &str) -> bool {
        self.path(abs).is_dir()
    }

    /// What the manager's compiler needs to know about this node: disk devices from
    /// `/proc/partitions`, the kernel release and the architecture.
    pub fn node_facts(&self) -> v1::NodeFacts {
        let (disk_devices, disk_devices_known) = match self.read("/proc/partitions") {
            Ok(text) => (NodeFacts::parse_proc_partitions(&text), true),
            Err(e) => {
                tracing::warn!(
                    path = %self.path("/proc/partitions").display(),
                    error = %e,
                    "disk devices unknown; disk-device rules will use generic patterns"
                );
                (Vec::new(), false)
            }
        };
        let kernel_release = self
            .read("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        v1::NodeFacts {
            disk_devices,
            disk_devices_known,
            kernel_release,
            architecture: std::env::consts::ARCH.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_come_from_the_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let host = HostFs::new(dir.path());
        let facts = host.node_facts();
        assert!(!facts.disk_devices_known);
        std::fs::create_dir_all(host.path("/proc/sys/kernel")).expect("mkdir");
        std::fs::write(
            host.path("/proc/partitions"),
            "major minor  #blocks  name\n\n 254 0 1000 vda\n 254 1 999 vda1\n",
        )
        .expect("write");
        std::fs::write(host.path("/proc/sys/kernel/osrelease"), "6.1.0-test\n").expect("write");
        let facts = host.node_facts();
        assert!(facts.disk_devices_known);
        assert_eq!(facts.disk_devices, ["vda", "vda1"]);
        assert_eq!(facts.kernel_release, "6.1.0-test");
        assert_eq!(facts.architecture, std::env::consts::ARCH);
    }
}
