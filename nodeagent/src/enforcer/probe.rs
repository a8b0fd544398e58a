//! Kernel feature probes, one per enforcer. They read only through [`HostFs`], so tests describe
//! a kernel with a few files in a temporary directory.

use crate::host::HostFs;

/// What a probe found: whether the kernel supports an enforcer, and the evidence or the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// The kernel supports it.
    pub supported: bool,
    /// What was found, or why it is not supported (naming the file).
    pub reason: String,
}

impl Probe {
    fn yes(reason: impl Into<String>) -> Self {
        Probe {
            supported: true,
            reason: reason.into(),
        }
    }

    fn no(reason: impl Into<String>) -> Self {
        Probe {
            supported: false,
            reason: reason.into(),
        }
    }
}

/// AppArmor: the module is enabled (`/sys/module/apparmor/parameters/enabled` is `Y`) and its
/// securityfs directory exists.
pub fn apparmor(host: &HostFs) -> Probe {
    const ENABLED: &str = "/sys/module/apparmor/parameters/enabled";
    const SECURITYFS: &str = "/sys/kernel/security/apparmor";
    match host.read(ENABLED) {
        Err(e) => {
            return Probe::no(format!(
                "AppArmor is not in this kernel: cannot read {} ({e})",
                host.path(ENABLED).display()
            ))
        }
        Ok(v) if v.trim() != "Y" => {
            return Probe::no(format!(
                "AppArmor is built in but disabled: {} is {:?} (boot with apparmor=1 and \
                 AppArmor in lsm=)",
                host.path(ENABLED).display(),
                v.trim()
            ))
        }
        Ok(_) => {}
    }
    if !host.is_dir(SECURITYFS) {
        return Probe::no(format!(
            "AppArmor is enabled but {} is missing (is securityfs mounted at \
             /sys/kernel/security?)",
            host.path(SECURITYFS).display()
        ));
    }
    Probe::yes(format!(
        "AppArmor enabled; securityfs at {}",
        host.path(SECURITYFS).display()
    ))
}

/// BPF-LSM: `bpf` is an active LSM (`/sys/kernel/security/lsm`) and the kernel has BTF
/// (`/sys/kernel/btf/vmlinux`), which CO-RE programs need.
pub fn bpf_lsm(host: &HostFs) -> Probe {
    const LSM: &str = "/sys/kernel/security/lsm";
    const BTF: &str = "/sys/kernel/btf/vmlinux";
    let lsms = match host.read(LSM) {
        Ok(v) => v,
        Err(e) => {
            return Probe::no(format!(
                "cannot read the active LSMs from {} ({e}); is securityfs mounted?",
                host.path(LSM).display()
            ))
        }
    };
    let lsms = lsms.trim();
    if !lsms.split(',').any(|l| l.trim() == "bpf") {
        return Probe::no(format!(
            "BPF-LSM is not active: {} lists {lsms:?} (boot with bpf in lsm=)",
            host.path(LSM).display()
        ));
    }
    if !host.exists(BTF) {
        return Probe::no(format!(
            "the kernel has no BTF: {} is missing (needs CONFIG_DEBUG_INFO_BTF)",
            host.path(BTF).display()
        ));
    }
    Probe::yes(format!(
        "active LSMs {lsms}; BTF at {}",
        host.path(BTF).display()
    ))
}

/// Seccomp: the kernel lists its filter actions (`/proc/sys/kernel/seccomp/actions_avail`), or
/// at least reports a seccomp mode for processes (`Seccomp:` in `/proc/self/status`).
pub fn seccomp(host: &HostFs) -> Probe {
    const ACTIONS: &str = "/proc/sys/kernel/seccomp/actions_avail";
    const STATUS: &str = "/proc/self/status";
    if let Ok(actions) = host.read(ACTIONS) {
        return Probe::yes(format!("seccomp filter actions: {}", actions.trim()));
    }
    match host.read(STATUS) {
        Ok(status) if status.lines().any(|l| l.starts_with("Seccomp:")) => Probe::yes(format!(
            "seccomp supported ({} has a Seccomp: line)",
            host.path(STATUS).display()
        )),
        Ok(_) => Probe::no(format!(
            "the kernel has no seccomp: neither {} nor a Seccomp: line in {}",
            host.path(ACTIONS).display(),
            host.path(STATUS).display()
        )),
        Err(e) => Probe::no(format!(
            "cannot tell whether the kernel has seccomp: {} is missing and {} cannot be \
             read ({e})",
            host.path(ACTIONS).display(),
            host.path(STATUS).display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn host_with(files: &[(&str, &str)], dirs: &[&str]) -> (tempfile::TempDir, HostFs) {
        let dir = tempfile::tempdir().expect("tempdir");
        let host = HostFs::new(dir.path());
        for d in dirs {
            fs::create_dir_all(host.path(d)).expect("mkdir");
        }
        for (p, content) in files {
            let path = host.path(p);
            fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            fs::write(path, content).expect("write");
        }
        (dir, host)
    }

    #[test]
    fn empty_host_supports_nothing_and_says_which_file() {
        let (_d, host) = host_with(&[], &[]);
        let a = apparmor(&host);
        assert!(!a.supported);
        assert!(
            a.reason.contains("/sys/module/apparmor/parameters/enabled"),
            "{a:?}"
        );
        let b = bpf_lsm(&host);
        assert!(!b.supported);
        assert!(b.reason.contains("/sys/kernel/security/lsm"), "{b:?}");
        let s = seccomp(&host);
        assert!(!s.supported);
        assert!(s.reason.contains("actions_avail"), "{s:?}");
    }

    #[test]
    fn apparmor_needs_y_and_securityfs() {
        let (_d, host) = host_with(&[("/sys/module/apparmor/parameters/enabled", "N\n")], &[]);
        let p = apparmor(&host);
        assert!(!p.supported && p.reason.contains("disabled"), "{p:?}");
        let (_d, host) = host_with(&[("/sys/module/apparmor/parameters/enabled", "Y\n")], &[]);
        let p = apparmor(&host);
        assert!(!p.supported && p.reason.contains("securityfs"), "{p:?}");
        let (_d, host) = host_with(
            &[("/sys/module/apparmor/parameters/enabled", "Y\n")],
            &["/sys/kernel/security/apparmor"],
        );
        assert!(apparmor(&host).supported);
    }

    #[test]
    fn bpf_needs_the_lsm_and_btf() {
        let (_d, host) = host_with(
            &[("/sys/kernel/security/lsm", "lockdown,capability,apparmor")],
            &[],
        );
        let p = bpf_lsm(&host);
        assert!(!p.supported && p.reason.contains("not active"), "{p:?}");
        let (_d, host) = host_with(&[("/sys/kernel/security/lsm", "capability,bpf\n")], &[]);
        let p = bpf_lsm(&host);
        assert!(!p.supported && p.reason.contains("BTF"), "{p:?}");
        let (_d, host) = host_with(
            &[
                ("/sys/kernel/security/lsm", "capability,bpf\n"),
                ("/sys/kernel/btf/vmlinux", "btf"),
            ],
            &[],
        );
        assert!(bpf_lsm(&host).supported);
    }

    #[test]
    fn seccomp_from_actions_or_status() {
        let (_d, host) = host_with(
            &[(
                "/proc/sys/kernel/seccomp/actions_avail",
                "kill_process errno log allow\n",
            )],
            &[],
        );
        let p = seccomp(&host);
        assert!(p.supported && p.reason.contains("errno"), "{p:?}");
        let (_d, host) = host_with(&[("/proc/self/status", "Name:\tx\nSeccomp:\t0\n")], &[]);
        assert!(seccomp(&host).supported);
        let (_d, host) = host_with(&[("/proc/self/status", "Name:\tx\n")], &[]);
        assert!(!seccomp(&host).supported);
    }
}
