//! The built-in rule catalog: every rule name of `hardeningRules`, `attackProtectionRules` and
//! `vulMitigationRules`, its aliases, and what it contributes on each enforcer.
//!
//! The content follows vArmor's generators. Where our BPF enforcer can express more (exact
//! patterns, several globs per pattern), the BPF rules use the same patterns as the AppArmor
//! rules instead of vArmor's approximations; those places say so.
//!
//! Names are matched after lower-casing and replacing `_` by `-` (as vArmor does). Unlike
//! vArmor, an unknown name is an error (see [`lookup`] and validation), not silently ignored.

use crate::names::{self, mount, perm, ptrace};

/// Which list of `enhanceProtect` a rule belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Category {
    /// `hardeningRules`.
    Hardening,
    /// `attackProtectionRules[].rules`.
    AttackProtection,
    /// `vulMitigationRules`.
    VulMitigation,
}

impl Category {
    /// The JSON field name of the list.
    pub fn field(self) -> &'static str {
        match self {
            Category::Hardening => "hardeningRules",
            Category::AttackProtection => "attackProtectionRules",
            Category::VulMitigation => "vulMitigationRules",
        }
    }
}

/// One AppArmor line of a built-in rule; the qualifier (`audit`, `deny`) is prefixed when the
/// profile is rendered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppArmorLine {
    /// A rule written as is after the qualifier, e.g. `capability sys_admin,`.
    Rule(&'static str),
    /// An exec-and-read rule on a path: `PATH rx,` with `deny`, `PATH rix,` without (AppArmor
    /// needs an exec mode on allow rules).
    Exec(&'static str),
    /// `/dev/<disk> rw,` for every disk device of the node.
    DiskDeviceFiles,
    /// `mount /dev/<disk>,` for every disk device of the node.
    DiskDeviceMounts,
}

/// One BPF rule of a built-in rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BpfFragment {
    /// File access rule.
    File {
        /// Path pattern.
        pattern: &'static str,
        /// Permission bits ([`perm`]).
        permissions: u32,
    },
    /// Exec (bprm) rule.
    Exec {
        /// Path pattern of the executable.
        pattern: &'static str,
    },
    /// Capability rule.
    Capabilities(u64),
    /// Socket creation rule; zero masks are wildcards.
    Socket {
        /// `1 << AF_*` bits.
        domains: u64,
        /// `1 << SOCK_*` bits.
        types: u64,
        /// `1 << IPPROTO_*` bits.
        protocols: u64,
    },
    /// connect(2) to an address, every port.
    Connect(&'static str),
    /// connect(2) to a Kubernetes service (ClusterIPs and endpoints), resolved by the manager.
    ServiceEgress {
        /// Namespace of the service.
        namespace: &'static str,
        /// Name of the service.
        name: &'static str,
    },
    /// Ptrace rule.
    Ptrace {
        /// Permission bits ([`ptrace`]).
        permissions: u32,
        /// Deny within the container too (otherwise only across the container boundary).
        strict: bool,
    },
    /// Mount rule.
    Mount {
        /// Source pattern.
        source: &'static str,
        /// Filesystem type, `*` for any, `none` for bind/remount/move/umount.
        fstype: &'static str,
        /// Flags that match when set.
        flags: u32,
        /// Flags that match when not set.
        reverse_flags: u32,
        /// Only emitted for `privileged: true` policies: without it the RuntimeDefault base
        /// already denies every new mount.
        privileged_only: bool,
    },
    /// File rule on every disk device of the node (`/dev/<disk>`).
    DiskDeviceFiles {
        /// Permission bits.
        permissions: u32,
    },
    /// Mount rule on every disk device of the node, privileged policies only.
    DiskDeviceMounts,
}

/// One seccomp syscall entry of a built-in rule (the action is set by the compiler).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeccompEntry {
    /// Syscall names.
    pub names: &'static [&'static str],
    /// Argument conditions `(index, value, value_two, op)`.
    pub args: &'static [(u32, u64, u64, &'static str)],
    /// `Some(errno)`: the entry always answers `SCMP_ACT_ERRNO` with this errno, whatever the
    /// violation settings. It is not a violation but a way to make the C library use a call
    /// seccomp can filter (`clone3` answered `ENOSYS` makes glibc fall back to `clone`).
    pub errno: Option<u32>,
}

/// A built-in rule and its content on each enforcer.
#[derive(Clone, Copy, Debug)]
pub struct BuiltinRule {
    /// Canonical name.
    pub name: &'static str,
    /// Other accepted names.
    pub aliases: &'static [&'static str],
    /// Which list it belongs to.
    pub category: Category,
    /// One-line description.
    pub summary: &'static str,
    /// AppArmor lines (empty: AppArmor ignores the rule).
    pub apparmor: &'static [AppArmorLine],
    /// BPF rules (empty: BPF ignores the rule).
    pub bpf: &'static [BpfFragment],
    /// Seccomp entries (empty: Seccomp ignores the rule).
    pub seccomp: &'static [SeccompEntry],
}

impl BuiltinRule {
    /// Whether the rule does something on AppArmor.
    pub fn supports_apparmor(&self) -> bool {
        !self.apparmor.is_empty()
    }
    /// Whether the rule does something on BPF.
    pub fn supports_bpf(&self) -> bool {
        !self.bpf.is_empty()
    }
    /// Whether the rule does something on Seccomp.
    pub fn supports_seccomp(&self) -> bool {
        !self.seccomp.is_empty()
    }
}

/// Normalizes a rule name as vArmor does: lower case, `_` becomes `-`.
pub fn normalize(name: &str) -> String {
    name.trim().to_ascii_lowercase().replace('_', "-")
}

/// Finds a rule by name or alias (after [`normalize`]).
pub fn lookup(name: &str) -> Option<&'static BuiltinRule> {
    let n = normalize(name);
    all()
        .iter()
        .find(|r| r.name == n || r.aliases.contains(&n.as_str()))
}

/// Every name and alias of a category, for suggestions.
pub fn names_in(category: Category) -> impl Iterator<Item = &'static str> {
    all()
        .iter()
        .filter(move |r| r.category == category)
        .flat_map(|r| std::iter::once(r.name).chain(r.aliases.iter().copied()))
}

/// Every rule of the catalog.
pub fn all() -> &'static [BuiltinRule] {
    &CATALOG
}

const RWA: u32 = perm::READ | perm::WRITE | perm::APPEND;
const WA: u32 = perm::WRITE | perm::APPEND;
const R: u32 = perm::READ;

/// Flags of a "new mount of any kind" rule: everything but umount.
const NEW_MOUNT_FLAGS: u32 = mount::ALL & !mount::UMOUNT;
/// Flags of a "new filesystem mount" rule: everything but remount, bind, propagation changes,
/// move and umount.
const NEW_FS_FLAGS: u32 = mount::ALL & !mount::NON_NEW_MOUNT;
/// bind, rbind, remount, move and umount: the ways to reuse an existing mount.
const REUSE_FLAGS: u32 = mount::BIND | mount::REC | mount::REMOUNT | mount::MOVE | mount::UMOUNT;

const fn cap(n: u32) -> u64 {
    1u64 << n
}

const fn caps(list: &[u32]) -> u64 {
    let mut m = 0u64;
    let mut i = 0;
    while i < list.len() {
        m |= 1u64 << list[i];
        i += 1;
    }
    m
}

const fn dom(n: u32) -> u64 {
    1u64 << n
}

// Capability numbers.
const CHOWN: u32 = 0;
const DAC_OVERRIDE: u32 = 1;
const DAC_READ_SEARCH: u32 = 2;
const FOWNER: u32 = 3;
const FSETID: u32 = 4;
const KILL: u32 = 5;
const SETGID: u32 = 6;
const SETUID: u32 = 7;
const SETPCAP: u32 = 8;
const LINUX_IMMUTABLE: u32 = 9;
const NET_BIND_SERVICE: u32 = 10;
const NET_BROADCAST: u32 = 11;
const NET_ADMIN: u32 = 12;
const NET_RAW: u32 = 13;
const IPC_LOCK: u32 = 14;
const IPC_OWNER: u32 = 15;
const SYS_MODULE: u32 = 16;
const SYS_RAWIO: u32 = 17;
const SYS_CHROOT: u32 = 18;
const SYS_PTRACE: u32 = 19;
const SYS_PACCT: u32 = 20;
const SYS_ADMIN: u32 = 21;
const SYS_BOOT: u32 = 22;
const SYS_NICE: u32 = 23;
const SYS_RESOURCE: u32 = 24;
const SYS_TIME: u32 = 25;
const SYS_TTY_CONFIG: u32 = 26;
const MKNOD: u32 = 27;
const LEASE: u32 = 28;
const AUDIT_WRITE: u32 = 29;
const AUDIT_CONTROL: u32 = 30;
const SETFCAP: u32 = 31;
const MAC_OVERRIDE: u32 = 32;
const MAC_ADMIN: u32 = 33;
const SYSLOG: u32 = 34;
const WAKE_ALARM: u32 = 35;
const BLOCK_SUSPEND: u32 = 36;
const AUDIT_READ: u32 = 37;
const PERFMON: u32 = 38;
const BPF: u32 = 39;
const CHECKPOINT_RESTORE: u32 = 40;

/// The 27 capabilities of `disable-cap-privileged`: everything containerd does not grant by
/// default.
const PRIVILEGED_CAPS: &[u32] = &[
    DAC_READ_SEARCH,
    LINUX_IMMUTABLE,
    NET_BROADCAST,
    NET_ADMIN,
    IPC_LOCK,
    IPC_OWNER,
    SYS_MODULE,
    SYS_RAWIO,
    SYS_PTRACE,
    SYS_PACCT,
    SYS_ADMIN,
    SYS_BOOT,
    SYS_NICE,
    SYS_RESOURCE,
    SYS_TIME,
    SYS_TTY_CONFIG,
    LEASE,
    AUDIT_CONTROL,
    MAC_OVERRIDE,
    MAC_ADMIN,
    SYSLOG,
    WAKE_ALARM,
    BLOCK_SUSPEND,
    AUDIT_READ,
    PERFMON,
    BPF,
    CHECKPOINT_RESTORE,
];

macro_rules! cap_lines {
    ($($name:literal),* $(,)?) => {
        &[$(AppArmorLine::Rule(concat!("capability ", $name, ","))),*]
    };
}

/// AppArmor lines for every capability except net_bind_service (vArmor lists them one by one
/// so that net_bind_service stays allowed).
const ALL_BUT_NET_BIND_SERVICE_LINES: &[AppArmorLine] = cap_lines!(
    "chown",
    "dac_override",
    "dac_read_search",
    "fowner",
    "fsetid",
    "kill",
    "setgid",
    "setuid",
    "setpcap",
    "linux_immutable",
    "net_broadcast",
    "net_admin",
    "net_raw",
    "ipc_lock",
    "ipc_owner",
    "sys_module",
    "sys_rawio",
    "sys_chroot",
    "sys_ptrace",
    "sys_pacct",
    "sys_admin",
    "sys_boot",
    "sys_nice",
    "sys_resource",
    "sys_time",
    "sys_tty_config",
    "mknod",
    "lease",
    "audit_write",
    "audit_control",
    "setfcap",
    "mac_override",
    "mac_admin",
    "syslog",
    "wake_alarm",
    "block_suspend",
    "audit_read",
    "perfmon",
    "bpf",
    "checkpoint_restore",
);

const PRIVILEGED_CAP_LINES: &[AppArmorLine] = cap_lines!(
    "dac_read_search",
    "linux_immutable",
    "net_broadcast",
    "net_admin",
    "ipc_lock",
    "ipc_owner",
    "sys_module",
    "sys_rawio",
    "sys_ptrace",
    "sys_pacct",
    "sys_admin",
    "sys_boot",
    "sys_nice",
    "sys_resource",
    "sys_time",
    "sys_tty_config",
    "lease",
    "audit_control",
    "mac_override",
    "mac_admin",
    "syslog",
    "wake_alarm",
    "block_suspend",
    "audit_read",
    "perfmon",
    "bpf",
    "checkpoint_restore",
);

macro_rules! disable_cap {
    ($name:literal, $aa:literal, $num:expr) => {
        BuiltinRule {
            name: concat!("disable-cap-", $name),
            aliases: &[],
            category: Category::Hardening,
            summary: concat!("deny the ", $aa, " capability"),
            apparmor: &[AppArmorLine::Rule(concat!("capability ", $aa, ","))],
            bpf: &[BpfFragment::Capabilities(cap($num))],
            seccomp: &[],
        }
    };
}

macro_rules! exec_rule {
    ($name:literal, $summary:literal, [$($path:literal),+]) => {
        BuiltinRule {
            name: $name,
            aliases: &[],
            category: Category::AttackProtection,
            summary: $summary,
            apparmor: &[$(AppArmorLine::Exec($path)),+],
            bpf: &[$(BpfFragment::Exec { pattern: $path }),+],
            seccomp: &[],
        }
    };
}

macro_rules! metadata_rule {
    ($name:literal, $aliases:expr, $summary:literal, [$($ip:literal),+]) => {
        BuiltinRule {
            name: $name,
            aliases: $aliases,
            category: Category::AttackProtection,
            summary: $summary,
            apparmor: &[],
            bpf: &[$(BpfFragment::Connect($ip)),+],
            seccomp: &[],
        }
    };
}

macro_rules! socket_rule {
    ($name:literal, $aliases:expr, $summary:literal, $aa:literal, $d:expr, $t:expr, $p:expr) => {
        BuiltinRule {
            name: $name,
            aliases: $aliases,
            category: Category::AttackProtection,
            summary: $summary,
            apparmor: &[AppArmorLine::Rule($aa)],
            bpf: &[BpfFragment::Socket {
                domains: $d,
                types: $t,
                protocols: $p,
            }],
            seccomp: &[],
        }
    };
}

// Seccomp constants.
const CLONE_NEWUSER: u64 = 0x1000_0000;
/// The errno that tells the C library a syscall does not exist.
const ENOSYS: u32 = 38;
const BPF_PROG_LOAD: u64 = 5;
const SOL_SOCKET: u64 = 1;
const SO_ATTACH_FILTER: u64 = 26;
const SO_ATTACH_REUSEPORT_CBPF: u64 = 51;
const S_IXUSR: u64 = 0o100;
const S_IXGRP: u64 = 0o010;
const S_IXOTH: u64 = 0o001;
const S_ISUID: u64 = 0o4000;
const S_ISGID: u64 = 0o2000;

/// `(index, mask, mask, MASKED_EQ)` for each mode bit: several conditions on the same index are
/// OR-ed by runc (and by our seccomp loader), so any of the bits matches.
macro_rules! mode_bits {
    ($idx:literal, [$($bit:expr),+]) => {
        &[$(($idx, $bit, $bit, "SCMP_CMP_MASKED_EQ")),+]
    };
}

static CATALOG: [BuiltinRule; 98] = [
    // ---------------------------------------------------------------- hardening
    BuiltinRule {
        name: "disallow-write-core-pattern",
        aliases: &[],
        category: Category::Hardening,
        summary: "deny writing /proc/sys/kernel/core_pattern (host code execution)",
        apparmor: &[AppArmorLine::Rule("/proc/sys/kernel/core_pattern w,")],
        bpf: &[BpfFragment::File { pattern: "/proc/sys/kernel/core_pattern", permissions: WA }],
        seccomp: &[],
    },
    BuiltinRule {
        name: "disallow-mount-securityfs",
        aliases: &[],
        category: Category::Hardening,
        summary: "deny mounting securityfs",
        apparmor: &[AppArmorLine::Rule("mount fstype=securityfs,")],
        bpf: &[BpfFragment::Mount {
            source: "**",
            fstype: "securityfs",
            flags: NEW_FS_FLAGS,
            reverse_flags: mount::ALL,
            privileged_only: true,
        }],
        seccomp: &[],
    },
    BuiltinRule {
        name: "disallow-mount-procfs",
        aliases: &[],
        category: Category::Hardening,
        summary: "deny mounting procfs and reusing /proc mounts (bind, rbind, move, remount, umount)",
        apparmor: &[
            AppArmorLine::Rule("mount fstype=proc,"),
            AppArmorLine::Rule("mount options in (bind,rbind,move) /proc** -> /**,"),
            AppArmorLine::Rule("mount options in (remount,bind,rbind) -> /proc**,"),
        ],
        bpf: &[
            BpfFragment::Mount {
                source: "**",
                fstype: "proc",
                flags: NEW_FS_FLAGS,
                reverse_flags: mount::ALL,
                privileged_only: true,
            },
            BpfFragment::Mount {
                source: "/proc**",
                fstype: "none",
                flags: REUSE_FLAGS,
                reverse_flags: 0,
                privileged_only: false,
            },
        ],
        seccomp: &[],
    },
    BuiltinRule {
        name: "disallow-write-release-agent",
        aliases: &[],
        category: Category::Hardening,
        summary: "deny writing cgroup v1 release_agent files",
        apparmor: &[AppArmorLine::Rule("/sys/fs/cgroup/**/release_agent w,")],
        bpf: &[BpfFragment::File { pattern: "/sys/fs/cgroup/**/release_agent", permissions: WA }],
        seccomp: &[],
    },
    BuiltinRule {
        name: "disallow-mount-cgroupfs",
        aliases: &[],
        category: Category::Hardening,
        summary: "deny mounting cgroupfs and reusing /sys mounts",
        apparmor: &[
            AppArmorLine::Rule("mount fstype=cgroup,"),
            AppArmorLine::Rule("mount options in (bind,rbind,move) /sys/fs/cgroup** -> /**,"),
            AppArmorLine::Rule("mount options in (rbind) /sys** -> /**,"),
            AppArmorLine::Rule("mount options in (remount,bind,rbind) -> /sys/fs/cgroup**,"),
        ],
        bpf: &[
            BpfFragment::Mount {
                source: "**",
                fstype: "cgroup",
                flags: NEW_FS_FLAGS,
                reverse_flags: mount::ALL,
                privileged_only: true,
            },
            BpfFragment::Mount {
                source: "/sys**",
                fstype: "none",
                flags: REUSE_FLAGS,
                reverse_flags: 0,
                privileged_only: false,
            },
        ],
        seccomp: &[],
    },
    BuiltinRule {
        name: "disallow-debug-disk-device",
        aliases: &[],
        category: Category::Hardening,
        summary: "deny reading and writing the host's disk devices",
        apparmor: &[AppArmorLine::DiskDeviceFiles],
        bpf: &[BpfFragment::DiskDeviceFiles { permissions: RWA }],
        seccomp: &[],
    },
    BuiltinRule {
        name: "disallow-mount-disk-device",
        aliases: &[],
        category: Category::Hardening,
        summary: "deny mounting the host's disk devices",
        apparmor: &[AppArmorLine::DiskDeviceMounts],
        bpf: &[BpfFragment::DiskDeviceMounts],
        seccomp: &[],
    },
    BuiltinRule {
        name: "disallow-mount",
        aliases: &[],
        category: Category::Hardening,
        summary: "deny every mount (already part of the default for non-privileged policies)",
        apparmor: &[AppArmorLine::Rule("mount,")],
        bpf: &[BpfFragment::Mount {
            source: "**",
            fstype: "*",
            flags: NEW_MOUNT_FLAGS,
            reverse_flags: mount::ALL,
            privileged_only: true,
        }],
        seccomp: &[],
    },
    BuiltinRule {
        name: "disallow-umount",
        aliases: &[],
        category: Category::Hardening,
        summary: "deny every umount",
        apparmor: &[AppArmorLine::Rule("umount,")],
        bpf: &[BpfFragment::Mount {
            source: "**",
            fstype: "none",
            flags: mount::UMOUNT,
            reverse_flags: 0,
            privileged_only: false,
        }],
        seccomp: &[],
    },
    BuiltinRule {
        name: "disallow-insmod",
        aliases: &[],
        category: Category::Hardening,
        summary: "deny loading kernel modules (CAP_SYS_MODULE)",
        apparmor: &[AppArmorLine::Rule("capability sys_module,")],
        bpf: &[BpfFragment::Capabilities(cap(SYS_MODULE))],
        seccomp: &[],
    },
    BuiltinRule {
        name: "disallow-load-bpf-prog",
        aliases: &["disallow-load-ebpf"],
        category: Category::Hardening,
        summary: "deny loading privileged eBPF programs (CAP_SYS_ADMIN, CAP_BPF)",
        apparmor: &[
            AppArmorLine::Rule("capability sys_admin,"),
            AppArmorLine::Rule("capability bpf,"),
        ],
        bpf: &[BpfFragment::Capabilities(caps(&[SYS_ADMIN, BPF]))],
        seccomp: &[],
    },
    BuiltinRule {
        name: "disallow-access-procfs-root",
        aliases: &[],
        category: Category::Hardening,
        summary: "deny reading other processes through procfs (ptrace read across the container boundary)",
        apparmor: &[AppArmorLine::Rule("ptrace read,")],
        bpf: &[BpfFragment::Ptrace { permissions: ptrace::READ, strict: false }],
        seccomp: &[],
    },
    BuiltinRule {
        name: "disallow-access-kallsyms",
        aliases: &[],
        category: Category::Hardening,
        summary: "deny reading /proc/kallsyms",
        apparmor: &[AppArmorLine::Rule("/proc/kallsyms r,")],
        bpf: &[BpfFragment::File { pattern: "/proc/kallsyms", permissions: R }],
        seccomp: &[],
    },
    BuiltinRule {
        name: "disable-cap-all",
        aliases: &[],
        category: Category::Hardening,
        summary: "deny every capability",
        apparmor: &[AppArmorLine::Rule("capability,")],
        bpf: &[BpfFragment::Capabilities(names::ALL_CAPABILITIES)],
        seccomp: &[],
    },
    BuiltinRule {
        name: "disable-cap-all-except-net-bind-service",
        aliases: &[],
        category: Category::Hardening,
        summary: "deny every capability except net_bind_service",
        apparmor: ALL_BUT_NET_BIND_SERVICE_LINES,
        bpf: &[BpfFragment::Capabilities(names::ALL_CAPABILITIES & !cap(NET_BIND_SERVICE))],
        seccomp: &[],
    },
    BuiltinRule {
        name: "disable-cap-privileged",
        aliases: &[],
        category: Category::Hardening,
        summary: "deny the 27 capabilities that containerd does not grant by default",
        apparmor: PRIVILEGED_CAP_LINES,
        bpf: &[BpfFragment::Capabilities(caps(PRIVILEGED_CAPS))],
        seccomp: &[],
    },
    disable_cap!("chown", "chown", CHOWN),
    disable_cap!("dac-override", "dac_override", DAC_OVERRIDE),
    disable_cap!("dac-read-search", "dac_read_search", DAC_READ_SEARCH),
    disable_cap!("fowner", "fowner", FOWNER),
    disable_cap!("fsetid", "fsetid", FSETID),
    disable_cap!("kill", "kill", KILL),
    disable_cap!("setgid", "setgid", SETGID),
    disable_cap!("setuid", "setuid", SETUID),
    disable_cap!("setpcap", "setpcap", SETPCAP),
    disable_cap!("linux-immutable", "linux_immutable", LINUX_IMMUTABLE),
    disable_cap!("net-bind-service", "net_bind_service", NET_BIND_SERVICE),
    disable_cap!("net-broadcast", "net_broadcast", NET_BROADCAST),
    disable_cap!("net-admin", "net_admin", NET_ADMIN),
    disable_cap!("net-raw", "net_raw", NET_RAW),
    disable_cap!("ipc-lock", "ipc_lock", IPC_LOCK),
    disable_cap!("ipc-owner", "ipc_owner", IPC_OWNER),
    disable_cap!("sys-module", "sys_module", SYS_MODULE),
    disable_cap!("sys-rawio", "sys_rawio", SYS_RAWIO),
    disable_cap!("sys-chroot", "sys_chroot", SYS_CHROOT),
    disable_cap!("sys-ptrace", "sys_ptrace", SYS_PTRACE),
    disable_cap!("sys-pacct", "sys_pacct", SYS_PACCT),
    disable_cap!("sys-admin", "sys_admin", SYS_ADMIN),
    disable_cap!("sys-boot", "sys_boot", SYS_BOOT),
    disable_cap!("sys-nice", "sys_nice", SYS_NICE),
    disable_cap!("sys-resource", "sys_resource", SYS_RESOURCE),
    disable_cap!("sys-time", "sys_time", SYS_TIME),
    disable_cap!("sys-tty-config", "sys_tty_config", SYS_TTY_CONFIG),
    disable_cap!("mknod", "mknod", MKNOD),
    disable_cap!("lease", "lease", LEASE),
    disable_cap!("audit-write", "audit_write", AUDIT_WRITE),
    disable_cap!("audit-control", "audit_control", AUDIT_CONTROL),
    disable_cap!("setfcap", "setfcap", SETFCAP),
    disable_cap!("mac-override", "mac_override", MAC_OVERRIDE),
    disable_cap!("mac-admin", "mac_admin", MAC_ADMIN),
    disable_cap!("syslog", "syslog", SYSLOG),
    disable_cap!("wake-alarm", "wake_alarm", WAKE_ALARM),
    disable_cap!("block-suspend", "block_suspend", BLOCK_SUSPEND),
    disable_cap!("audit-read", "audit_read", AUDIT_READ),
    disable_cap!("perfmon", "perfmon", PERFMON),
    disable_cap!("bpf", "bpf", BPF),
    disable_cap!("checkpoint-restore", "checkpoint_restore", CHECKPOINT_RESTORE),
    BuiltinRule {
        name: "disallow-abuse-user-ns",
        aliases: &[],
        category: Category::Hardening,
        summary: "deny CAP_SYS_ADMIN, which user namespaces would otherwise grant",
        apparmor: &[AppArmorLine::Rule("capability sys_admin,")],
        bpf: &[BpfFragment::Capabilities(cap(SYS_ADMIN))],
        seccomp: &[],
    },
    BuiltinRule {
        name: "disallow-create-user-ns",
        aliases: &[],
        category: Category::Hardening,
        summary: "deny creating user namespaces with unshare(2) and clone(2); clone3(2) gets ENOSYS",
        apparmor: &[],
        bpf: &[],
        // vArmor covers unshare only; clone(CLONE_NEWUSER) is the same operation, and clone3
        // (whose flags seccomp cannot read) is refused with ENOSYS.
        seccomp: &[
            SeccompEntry {
                errno: None,
                names: &["unshare"],
                args: &[(0, CLONE_NEWUSER, CLONE_NEWUSER, "SCMP_CMP_MASKED_EQ")],
            },
            SeccompEntry {
                errno: None,
                names: &["clone"],
                args: &[(0, CLONE_NEWUSER, CLONE_NEWUSER, "SCMP_CMP_MASKED_EQ")],
            },
            // clone3 keeps its flags in memory, which seccomp cannot read: it answers ENOSYS,
            // and glibc falls back to clone, filtered above (what moby's default profile does).
            SeccompEntry { errno: Some(ENOSYS), names: &["clone3"], args: &[] },
        ],
    },
    BuiltinRule {
        name: "disallow-load-all-bpf-prog",
        aliases: &[],
        category: Category::Hardening,
        summary: "deny bpf(BPF_PROG_LOAD) for every program type",
        apparmor: &[],
        bpf: &[],
        seccomp: &[SeccompEntry { errno: None, names: &["bpf"], args: &[(0, BPF_PROG_LOAD, 0, "SCMP_CMP_EQ")] }],
    },
    BuiltinRule {
        name: "disallow-load-bpf-via-setsockopt",
        aliases: &[],
        category: Category::Hardening,
        summary: "deny attaching classic BPF filters with setsockopt(2)",
        apparmor: &[],
        bpf: &[],
        seccomp: &[
            SeccompEntry {
                errno: None,
                names: &["setsockopt"],
                args: &[
                    (1, SOL_SOCKET, 0, "SCMP_CMP_EQ"),
                    (2, SO_ATTACH_FILTER, 0, "SCMP_CMP_EQ"),
                ],
            },
            SeccompEntry {
                errno: None,
                names: &["setsockopt"],
                args: &[
                    (1, SOL_SOCKET, 0, "SCMP_CMP_EQ"),
                    (2, SO_ATTACH_REUSEPORT_CBPF, 0, "SCMP_CMP_EQ"),
                ],
            },
        ],
    },
    BuiltinRule {
        name: "disallow-userfaultfd-creation",
        aliases: &[],
        category: Category::Hardening,
        summary: "deny userfaultfd(2)",
        apparmor: &[],
        bpf: &[],
        seccomp: &[SeccompEntry { errno: None, names: &["userfaultfd"], args: &[] }],
    },
    // ---------------------------------------------------------------- attack protection
    BuiltinRule {
        name: "mitigate-sa-leak",
        aliases: &[],
        category: Category::AttackProtection,
        summary: "deny reading the service account token",
        apparmor: &[
            AppArmorLine::Rule("/run/secrets/kubernetes.io/serviceaccount/** r,"),
            AppArmorLine::Rule("/var/run/secrets/kubernetes.io/serviceaccount/** r,"),
        ],
        bpf: &[
            BpfFragment::File { pattern: "/run/secrets/kubernetes.io/serviceaccount/**", permissions: R },
            BpfFragment::File { pattern: "/var/run/secrets/kubernetes.io/serviceaccount/**", permissions: R },
        ],
        seccomp: &[],
    },
    BuiltinRule {
        name: "mitigate-disk-device-number-leak",
        aliases: &[],
        category: Category::AttackProtection,
        summary: "deny reading the host's disk device numbers",
        apparmor: &[
            AppArmorLine::Rule("/proc/partitions r,"),
            AppArmorLine::Rule("/proc/**/mountinfo r,"),
        ],
        bpf: &[
            BpfFragment::File { pattern: "/proc/partitions", permissions: R },
            BpfFragment::File { pattern: "/proc/**/mountinfo", permissions: R },
        ],
        seccomp: &[],
    },
    BuiltinRule {
        name: "mitigate-overlayfs-leak",
        aliases: &[],
        category: Category::AttackProtection,
        summary: "deny reading the overlayfs paths of the container's root",
        apparmor: &[
            AppArmorLine::Rule("/proc/**/mounts r,"),
            AppArmorLine::Rule("/proc/**/mountinfo r,"),
        ],
        bpf: &[
            BpfFragment::File { pattern: "/proc/**/mounts", permissions: R },
            BpfFragment::File { pattern: "/proc/**/mountinfo", permissions: R },
        ],
        seccomp: &[],
    },
    BuiltinRule {
        name: "mitigate-host-ip-leak",
        aliases: &[],
        category: Category::AttackProtection,
        summary: "deny reading the ARP table",
        apparmor: &[AppArmorLine::Rule("/proc/**/net/arp r,")],
        bpf: &[BpfFragment::File { pattern: "/proc/**/net/arp", permissions: R }],
        seccomp: &[],
    },
    metadata_rule!(
        "block-access-to-metadata-service",
        &["disallow-metadata-service"],
        "deny connecting to the cloud metadata services (AWS, Volcengine)",
        ["169.254.169.254", "fd00:ec2::254", "100.96.0.96"]
    ),
    metadata_rule!(
        "block-access-to-aws-metadata-service",
        &[],
        "deny connecting to the AWS metadata service",
        ["169.254.169.254", "fd00:ec2::254"]
    ),
    metadata_rule!(
        "block-access-to-volc-metadata-service",
        &[],
        "deny connecting to the Volcengine metadata service",
        ["100.96.0.96"]
    ),
    metadata_rule!(
        "block-access-to-alibaba-metadata-service",
        &[],
        "deny connecting to the Alibaba Cloud metadata service",
        ["100.100.100.200"]
    ),
    metadata_rule!(
        "block-access-to-oci-metadata-service",
        &[],
        "deny connecting to the Oracle Cloud metadata service",
        ["192.0.0.192"]
    ),
    BuiltinRule {
        name: "block-access-to-kube-apiserver",
        aliases: &[],
        category: Category::AttackProtection,
        summary: "deny connecting to the Kubernetes API server (service default/kubernetes)",
        apparmor: &[],
        bpf: &[BpfFragment::ServiceEgress { namespace: "default", name: "kubernetes" }],
        seccomp: &[],
    },
    BuiltinRule {
        name: "block-access-to-container-runtime",
        aliases: &[],
        category: Category::AttackProtection,
        summary: "deny access to the container runtime sockets",
        apparmor: &[
            AppArmorLine::Rule("/**/containerd.sock rw,"),
            AppArmorLine::Rule("/**/docker.sock rw,"),
            AppArmorLine::Rule("/**/crio.sock rw,"),
        ],
        bpf: &[
            BpfFragment::File { pattern: "/**/containerd.sock", permissions: RWA },
            BpfFragment::File { pattern: "/**/docker.sock", permissions: RWA },
            BpfFragment::File { pattern: "/**/crio.sock", permissions: RWA },
        ],
        seccomp: &[],
    },
    BuiltinRule {
        name: "disable-write-etc",
        aliases: &[],
        category: Category::AttackProtection,
        summary: "deny writing under /etc",
        apparmor: &[AppArmorLine::Rule("/etc/** wl,")],
        bpf: &[BpfFragment::File { pattern: "/etc/**", permissions: WA }],
        seccomp: &[],
    },
    BuiltinRule {
        name: "disable-access-passwd",
        aliases: &[],
        category: Category::AttackProtection,
        summary: "deny reading and writing /etc/passwd",
        apparmor: &[AppArmorLine::Rule("/etc/passwd rw,")],
        bpf: &[BpfFragment::File { pattern: "/etc/passwd", permissions: RWA }],
        seccomp: &[],
    },
    BuiltinRule {
        name: "disable-access-shadow",
        aliases: &[],
        category: Category::AttackProtection,
        summary: "deny reading and writing /etc/shadow",
        apparmor: &[AppArmorLine::Rule("/etc/shadow rw,")],
        bpf: &[BpfFragment::File { pattern: "/etc/shadow", permissions: RWA }],
        seccomp: &[],
    },
    BuiltinRule {
        name: "disable-access-ssh-dir",
        aliases: &[],
        category: Category::AttackProtection,
        summary: "deny access to .ssh directories",
        apparmor: &[AppArmorLine::Rule("/**/.ssh/** rw,")],
        // vArmor's BPF patterns allow one '**', so it approximates with `/**/.ssh` and
        // `/root/.ssh/**`; ours match what the AppArmor rule matches, plus the directory.
        bpf: &[
            BpfFragment::File { pattern: "/**/.ssh", permissions: RWA },
            BpfFragment::File { pattern: "/**/.ssh/**", permissions: RWA },
        ],
        seccomp: &[],
    },
    BuiltinRule {
        name: "disable-write-skills",
        aliases: &[],
        category: Category::AttackProtection,
        summary: "deny writing under skills directories (AI agent skill files)",
        apparmor: &[AppArmorLine::Rule("/**/skills/** w,")],
        // vArmor has no BPF version (its patterns cannot express it).
        bpf: &[BpfFragment::File { pattern: "/**/skills/**", permissions: WA }],
        seccomp: &[],
    },
    exec_rule!("disable-busybox", "deny running busybox", ["/**/busybox"]),
    exec_rule!("disable-shell", "deny running sh, bash and dash", ["/**/sh", "/**/bash", "/**/dash"]),
    exec_rule!("disable-wget", "deny running wget", ["/**/wget"]),
    exec_rule!("disable-curl", "deny running curl", ["/**/curl"]),
    exec_rule!("disable-chmod", "deny running chmod", ["/**/chmod"]),
    exec_rule!("disable-su-sudo", "deny running su and sudo", ["/**/su", "/**/sudo"]),
    BuiltinRule {
        name: "disable-chmod-x-bit",
        aliases: &[],
        category: Category::AttackProtection,
        summary: "deny setting execute bits with chmod(2) and friends",
        apparmor: &[],
        bpf: &[],
        seccomp: &[
            SeccompEntry { errno: None, names: &["chmod"], args: mode_bits!(1, [S_IXUSR, S_IXGRP, S_IXOTH]) },
            SeccompEntry { errno: None, names: &["fchmod"], args: mode_bits!(1, [S_IXUSR, S_IXGRP, S_IXOTH]) },
            SeccompEntry { errno: None, names: &["fchmodat"], args: mode_bits!(2, [S_IXUSR, S_IXGRP, S_IXOTH]) },
            SeccompEntry { errno: None, names: &["fchmodat2"], args: mode_bits!(2, [S_IXUSR, S_IXGRP, S_IXOTH]) },
        ],
    },
    BuiltinRule {
        name: "disable-chmod-s-bit",
        aliases: &[],
        category: Category::AttackProtection,
        summary: "deny setting setuid and setgid bits with chmod(2) and friends",
        apparmor: &[],
        bpf: &[],
        seccomp: &[
            SeccompEntry { errno: None, names: &["chmod"], args: mode_bits!(1, [S_ISUID, S_ISGID]) },
            SeccompEntry { errno: None, names: &["fchmod"], args: mode_bits!(1, [S_ISUID, S_ISGID]) },
            SeccompEntry { errno: None, names: &["fchmodat"], args: mode_bits!(2, [S_ISUID, S_ISGID]) },
            SeccompEntry { errno: None, names: &["fchmodat2"], args: mode_bits!(2, [S_ISUID, S_ISGID]) },
        ],
    },
    socket_rule!(
        "disable-network",
        &[],
        "deny creating sockets of any domain",
        "network,",
        (1u64 << names::AF_MAX) - 1,
        0,
        0
    ),
    socket_rule!("disable-inet", &["disable-ipv4"], "deny IPv4 sockets", "network inet,", dom(2), 0, 0),
    socket_rule!("disable-inet6", &["disable-ipv6"], "deny IPv6 sockets", "network inet6,", dom(10), 0, 0),
    socket_rule!(
        "disable-unix-domain-socket",
        &[],
        "deny unix domain sockets",
        "network unix,",
        dom(1),
        0,
        0
    ),
    socket_rule!(
        "disable-icmp",
        &[],
        "deny ICMP and ICMPv6 sockets",
        "network icmp,",
        0,
        0,
        (1u64 << 1) | (1u64 << 58)
    ),
    socket_rule!("disable-tcp", &[], "deny TCP sockets", "network tcp,", 0, 0, 1u64 << 6),
    socket_rule!("disable-udp", &[], "deny UDP sockets", "network udp,", 0, 0, 1u64 << 17),
    // ---------------------------------------------------------------- vulnerability mitigation
    BuiltinRule {
        name: "cgroups-lxcfs-escape-mitigation",
        aliases: &[],
        category: Category::VulMitigation,
        summary: "deny writing cgroup control files reachable through lxcfs (release_agent, devices)",
        apparmor: &[
            AppArmorLine::Rule("/**/release_agent w,"),
            AppArmorLine::Rule("/**/devices/devices.allow w,"),
            AppArmorLine::Rule("/**/devices/**/devices.allow w,"),
            AppArmorLine::Rule("/**/devices/cgroup.procs w,"),
            AppArmorLine::Rule("/**/devices/**/cgroup.procs w,"),
            AppArmorLine::Rule("/**/devices/tasks w,"),
            AppArmorLine::Rule("/**/devices/**/tasks w,"),
        ],
        // vArmor's BPF version blocks every devices.allow, cgroup.procs and tasks file; ours
        // matches the AppArmor paths (`/**/` also matches zero directories).
        bpf: &[
            BpfFragment::File { pattern: "/**/release_agent", permissions: WA },
            BpfFragment::File { pattern: "/**/devices/**/devices.allow", permissions: WA },
            BpfFragment::File { pattern: "/**/devices/**/cgroup.procs", permissions: WA },
            BpfFragment::File { pattern: "/**/devices/**/tasks", permissions: WA },
        ],
        seccomp: &[],
    },
    BuiltinRule {
        name: "runc-override-mitigation",
        aliases: &[],
        category: Category::VulMitigation,
        summary: "deny overwriting the runc binary (CVE-2019-5736)",
        apparmor: &[AppArmorLine::Rule("/**/runc w,")],
        bpf: &[BpfFragment::File { pattern: "/**/runc", permissions: WA }],
        seccomp: &[],
    },
    BuiltinRule {
        name: "dirty-pipe-mitigation",
        aliases: &[],
        category: Category::VulMitigation,
        summary: "deny splice(2) (CVE-2022-0847)",
        apparmor: &[],
        bpf: &[],
        seccomp: &[SeccompEntry { errno: None, names: &["splice"], args: &[] }],
    },
    BuiltinRule {
        name: "ingress-nightmare-mitigation",
        aliases: &[],
        category: Category::VulMitigation,
        summary: "deny connecting to the ingress-nginx admission webhook (CVE-2025-1974)",
        apparmor: &[],
        bpf: &[
            BpfFragment::ServiceEgress {
                namespace: "ingress-nginx",
                name: "ingress-nginx-controller-admission",
            },
            BpfFragment::ServiceEgress {
                namespace: "kube-system",
                name: "ingress-nginx-controller-admission",
            },
        ],
        seccomp: &[],
    },
    BuiltinRule {
        name: "copy-fail-mitigation",
        aliases: &[],
        category: Category::VulMitigation,
        summary: "deny AF_ALG sockets (CVE-2026-31431)",
        apparmor: &[AppArmorLine::Rule("network alg,")],
        bpf: &[BpfFragment::Socket { domains: dom(38), types: 0, protocols: 0 }],
        seccomp: &[],
    },
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn names_are_unique_and_normalized() {
        let mut seen = HashSet::new();
        for r in all() {
            for n in std::iter::once(r.name).chain(r.aliases.iter().copied()) {
                assert_eq!(n, normalize(n), "{n} is not normalized");
                assert!(seen.insert(n), "{n} is listed twice");
            }
            assert!(
                r.supports_apparmor() || r.supports_bpf() || r.supports_seccomp(),
                "{} does nothing on every enforcer",
                r.name
            );
        }
    }

    #[test]
    fn lookup_normalizes_and_resolves_aliases() {
        assert_eq!(
            lookup("DISABLE_CAP_NET_RAW").map(|r| r.name),
            Some("disable-cap-net-raw")
        );
        assert_eq!(
            lookup("disallow-load-ebpf").map(|r| r.name),
            Some("disallow-load-bpf-prog")
        );
        assert_eq!(lookup("disable-ipv4").map(|r| r.name), Some("disable-inet"));
        assert!(lookup("disable-everything").is_none());
    }

    #[test]
    fn one_disable_cap_rule_per_capability() {
        for (n, c) in names::CAPABILITIES.iter().enumerate() {
            let r = lookup(&format!("disable-cap-{c}")).expect(c);
            assert_eq!(r.bpf, &[BpfFragment::Capabilities(1u64 << n)]);
        }
        assert_eq!(caps(PRIVILEGED_CAPS).count_ones(), 27);
        assert_eq!(ALL_BUT_NET_BIND_SERVICE_LINES.len(), 40);
        assert_eq!(PRIVILEGED_CAP_LINES.len(), 27);
    }

    #[test]
    fn bpf_patterns_parse() {
        for r in all() {
            for f in r.bpf {
                let p = match f {
                    BpfFragment::File { pattern, .. } | BpfFragment::Exec { pattern } => pattern,
                    BpfFragment::Mount { source, .. } => source,
                    _ => continue,
                };
                crate::glob::Pattern::parse(p).unwrap_or_else(|e| panic!("{}: {p}: {e}", r.name));
            }
        }
    }
}
