//! The BPF-LSM capability probe: the files say the LSM is active and BTF is present, the kernel
//! actually loads and attaches an LSM program that uses `bpf_loop` and a ring buffer, and bpffs
//! is mounted for the pins. Each failure names its reason.

use std::io;
use std::path::Path;

use aya::programs::Lsm;
use aya::{Btf, EbpfLoader};

use super::kernel::PROBE_OBJECT;
use crate::enforcer::probe::{self, Probe};
use crate::host::HostFs;

fn no(reason: String) -> Probe {
    Probe {
        supported: false,
        reason,
    }
}

/// Whether `dir` is on a bpf file system (from the host's `/proc/mounts`).
pub fn is_bpffs(host: &HostFs, dir: &Path) -> bool {
    let Ok(mounts) = host.read("/proc/self/mounts") else {
        return false;
    };
    mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        let (_, Some(point), Some(fstype)) = (f.next(), f.next(), f.next()) else {
            return false;
        };
        fstype == "bpf" && dir.starts_with(point)
    })
}

/// Probes BPF-LSM on this kernel; pins would go under `pin_root`.
pub fn probe(host: &HostFs, pin_root: &Path) -> Probe {
    let files = probe::bpf_lsm(host);
    if !files.supported {
        // Without securityfs the LSM list cannot be read: loading a program still tells.
        if !host.exists("/sys/kernel/security/lsm") && host.exists("/sys/kernel/btf/vmlinux") {
            return match load_and_attach() {
                Err(reason) => no(format!("{}; {reason}", files.reason)),
                Ok(()) => no(format!(
                    "{}; an LSM program loads, but BPF-LSM cannot be confirmed active",
                    files.reason
                )),
            };
        }
        return files;
    }
    if let Err(reason) = load_and_attach() {
        return no(format!("{}; but {reason}", files.reason));
    }
    if !is_bpffs(host, pin_root) {
        return no(format!(
            "{}; BPF-LSM programs load, but {} is not on a bpf file system, so programs and \
             maps cannot be pinned (mount it: mount -t bpf bpf /sys/fs/bpf)",
            files.reason,
            pin_root.display()
        ));
    }
    Probe {
        supported: true,
        reason: format!(
            "{}; an LSM program using bpf_loop and a ring buffer loaded and attached",
            files.reason
        ),
    }
}

fn refused(what: &str, e: &io::Error, log: &str) -> String {
    if e.raw_os_error() == Some(1) && log.trim().is_empty() {
        format!(
            "the kernel refused to {what} (EPERM with an empty verifier log): BPF trampolines \
             are blocked on this kernel (some virtualised kernels forbid them), so BPF-LSM \
             programs cannot run here"
        )
    } else {
        format!(
            "the kernel refused to {what}: {e}; verifier log: {}",
            log.trim()
        )
    }
}

fn load_and_attach() -> Result<(), String> {
    let btf = Btf::from_sys_fs().map_err(|e| format!("cannot read the kernel BTF: {e}"))?;
    let mut ebpf = EbpfLoader::new()
        .btf(Some(&btf))
        .load(PROBE_OBJECT)
        .map_err(|e| format!("cannot create the probe's maps (ring buffer): {e}"))?;
    let prog: &mut Lsm = ebpf
        .program_mut("varmor_probe")
        .ok_or("the probe program is missing from the object")?
        .try_into()
        .map_err(|e| format!("the probe program is not an LSM program: {e}"))?;
    if let Err(e) = prog.load("file_open", &btf) {
        return Err(match &e {
            aya::programs::ProgramError::LoadError {
                io_error,
                verifier_log,
            } => refused(
                "load a BPF-LSM program",
                io_error,
                &verifier_log.to_string(),
            ),
            other => format!("cannot load a BPF-LSM program: {other}"),
        });
    }
    let link = prog.attach().map_err(|e| {
        let text = e.to_string();
        if text.contains("Operation not permitted") || text.contains("os error 1") {
            refused(
                "attach a BPF-LSM program",
                &io::Error::from_raw_os_error(1),
                "",
            )
        } else {
            format!("cannot attach a BPF-LSM program: {text}")
        }
    })?;
    prog.detach(link)
        .map_err(|e| format!("cannot detach the probe program: {e}"))?;
    Ok(())
}
