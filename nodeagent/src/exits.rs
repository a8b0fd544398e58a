//! The exit tracker: which mount namespace a process that already exited lived in.
//!
//! The kernel writes an audit record (Seccomp `SCMP_ACT_LOG`, AppArmor) in the context of the
//! offending process, but the agent reads it a moment later; a short-lived process (a shell
//! command, a failed `unshare`) is often gone by then, and `/proc/<pid>/ns/mnt` with it. The
//! record carries only the PID, so without this the event could not be attributed to its
//! container (and a Seccomp record of an unknown process is dropped).
//!
//! `bpf-programs/exits.bpf.c` runs on the `sched_process_exit` raw tracepoint and keeps
//! `tgid → mount namespace` for processes outside the host's mount namespace in an LRU map of
//! 65,536 entries. A raw tracepoint (no tracefs needed), not an LSM program: it works on kernels without BPF-LSM.
//! Nothing is pinned: after an agent restart only exits seen by the new agent are known.

use aya::maps::{HashMap as BpfHashMap, MapData};
use aya::programs::RawTracePoint;
use aya::{Btf, Ebpf, EbpfLoader};

use crate::host::HostFs;

/// The compiled tracker (built by `build.rs` from `bpf-programs/exits.bpf.c`).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/exits.bpf.o"));

/// A loaded and attached exit tracker; detached when dropped.
pub struct ExitTracker {
    // Keeps the program attached.
    _ebpf: Ebpf,
    exited: BpfHashMap<MapData, u32, u32>,
}

impl std::fmt::Debug for ExitTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExitTracker").finish_non_exhaustive()
    }
}

impl ExitTracker {
    /// Loads the tracker; processes in the mount namespace of the host's PID 1 are not kept
    /// (when `/proc/1/ns/mnt` cannot be read, every exit is kept: the LRU map bounds it).
    /// The error says why it cannot run (no BTF, no permission, tracepoint missing).
    pub fn start(host: &HostFs) -> Result<ExitTracker, String> {
        let host_ns = std::fs::metadata(host.path("/proc/1/ns/mnt"))
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m) as u32)
            .unwrap_or(0);
        let btf = Btf::from_sys_fs().map_err(|e| format!("cannot read the kernel BTF: {e}"))?;
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&btf))
            .override_global("host_mnt_ns", &host_ns, true)
            .load(OBJECT)
            .map_err(|e| format!("cannot load the exit tracker: {e}"))?;
        let prog: &mut RawTracePoint = ebpf
            .program_mut("varmor_exit")
            .ok_or("the exit tracker's program is missing from its object")?
            .try_into()
            .map_err(|e| format!("the exit tracker's program is not a raw tracepoint: {e}"))?;
        prog.load()
            .map_err(|e| format!("the kernel refused the exit tracker: {e}"))?;
        prog.attach("sched_process_exit")
            .map_err(|e| format!("cannot attach to sched/sched_process_exit: {e}"))?;
        let map = ebpf
            .take_map("v_exited")
            .ok_or("the exit tracker's map is missing from its object")?;
        let exited = BpfHashMap::try_from(map).map_err(|e| format!("the exit map: {e}"))?;
        Ok(ExitTracker {
            _ebpf: ebpf,
            exited,
        })
    }

    /// The mount namespace of `pid` (a thread-group id) when it exited outside the host's
    /// mount namespace since the tracker started.
    pub fn mount_namespace(&self, pid: u32) -> Option<u32> {
        self.exited.get(&pid, 0).ok()
    }
}
