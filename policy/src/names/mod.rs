//! Name tables shared by validation, the compiler and event decoding: capabilities, socket
//! domains/types/protocols, mount flags, file and ptrace permissions, syscalls.
//!
//! Numbers are the Linux UAPI values (x86_64); permission bits are the AppArmor-compatible
//! values vArmor's BPF enforcer uses.

mod syscalls;

/// Capability names (without the `CAP_` prefix, lower case) indexed by capability number.
pub const CAPABILITIES: [&str; 41] = [
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
    "net_bind_service",
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
];

/// The highest capability number (`CAP_LAST_CAP`).
pub const CAP_LAST_CAP: u32 = 40;

/// A mask with every capability bit 0..=CAP_LAST_CAP set.
pub const ALL_CAPABILITIES: u64 = (1u64 << (CAP_LAST_CAP + 1)) - 1;

/// The capability number of a name such as `sys_admin`, `SYS_ADMIN` or `CAP_SYS_ADMIN`.
pub fn capability_number(name: &str) -> Option<u32> {
    let lower = name.to_ascii_lowercase();
    let bare = lower
        .strip_prefix("cap_")
        .unwrap_or(&lower)
        .replace('-', "_");
    CAPABILITIES
        .iter()
        .position(|c| *c == bare)
        .map(|i| i as u32)
}

/// The capability name of a number, e.g. 21 -> `sys_admin`.
pub fn capability_name(number: u32) -> Option<&'static str> {
    CAPABILITIES.get(number as usize).copied()
}

/// The names of the capabilities set in a mask, in number order.
pub fn capability_names(mask: u64) -> Vec<&'static str> {
    (0..=CAP_LAST_CAP)
        .filter(|n| mask & (1u64 << n) != 0)
        .filter_map(capability_name)
        .collect()
}

/// Socket domains (`AF_*`) accepted in `sockets[].domains`, with their numbers.
pub const SOCKET_DOMAINS: &[(&str, u32)] = &[
    ("unix", 1),
    ("inet", 2),
    ("ax25", 3),
    ("ipx", 4),
    ("appletalk", 5),
    ("netrom", 6),
    ("bridge", 7),
    ("atmpvc", 8),
    ("x25", 9),
    ("inet6", 10),
    ("rose", 11),
    ("netbeui", 13),
    ("security", 14),
    ("key", 15),
    ("netlink", 16),
    ("packet", 17),
    ("ash", 18),
    ("econet", 19),
    ("atmsvc", 20),
    ("rds", 21),
    ("sna", 22),
    ("irda", 23),
    ("pppox", 24),
    ("wanpipe", 25),
    ("llc", 26),
    ("ib", 27),
    ("mpls", 28),
    ("can", 29),
    ("tipc", 30),
    ("bluetooth", 31),
    ("iucv", 32),
    ("rxrpc", 33),
    ("isdn", 34),
    ("phonet", 35),
    ("ieee802154", 36),
    ("caif", 37),
    ("alg", 38),
    ("nfc", 39),
    ("vsock", 40),
    ("kcm", 41),
    ("qipcrtr", 42),
    ("smc", 43),
    ("xdp", 44),
    ("mctp", 45),
];

/// `AF_MAX`: every domain number is below it.
pub const AF_MAX: u32 = 46;

/// Socket types (`SOCK_*`) accepted in `sockets[].types`.
pub const SOCKET_TYPES: &[(&str, u32)] = &[
    ("stream", 1),
    ("dgram", 2),
    ("raw", 3),
    ("rdm", 4),
    ("seqpacket", 5),
    ("dccp", 6),
    ("packet", 10),
];

/// Protocols accepted in `sockets[].protocols`, each with the `IPPROTO_*` numbers it covers
/// (`icmp` covers ICMP and ICMPv6).
pub const SOCKET_PROTOCOLS: &[(&str, &[u32])] =
    &[("icmp", &[1, 58]), ("tcp", &[6]), ("udp", &[17])];

/// The number of a socket domain name (`inet`, `AF_INET`, ...).
pub fn socket_domain(name: &str) -> Option<u32> {
    let lower = name.to_ascii_lowercase();
    let bare = lower.strip_prefix("af_").unwrap_or(&lower);
    SOCKET_DOMAINS
        .iter()
        .find(|(n, _)| *n == bare)
        .map(|(_, v)| *v)
}

/// The name of a socket domain number, e.g. 2 -> `inet`.
pub fn socket_domain_name(number: u32) -> Option<&'static str> {
    SOCKET_DOMAINS
        .iter()
        .find(|(_, v)| *v == number)
        .map(|(n, _)| *n)
}

/// The number of a socket type name.
pub fn socket_type(name: &str) -> Option<u32> {
    let lower = name.to_ascii_lowercase();
    let bare = lower.strip_prefix("sock_").unwrap_or(&lower);
    SOCKET_TYPES
        .iter()
        .find(|(n, _)| *n == bare)
        .map(|(_, v)| *v)
}

/// The name of a socket type number.
pub fn socket_type_name(number: u32) -> Option<&'static str> {
    SOCKET_TYPES
        .iter()
        .find(|(_, v)| *v == number)
        .map(|(n, _)| *n)
}

/// The protocol numbers covered by a protocol name.
pub fn socket_protocol(name: &str) -> Option<&'static [u32]> {
    let lower = name.to_ascii_lowercase();
    let bare = lower.strip_prefix("ipproto_").unwrap_or(&lower);
    SOCKET_PROTOCOLS
        .iter()
        .find(|(n, _)| *n == bare)
        .map(|(_, v)| *v)
}

/// The name of an IP protocol number (the ones socket rules can name, plus ICMPv6).
pub fn socket_protocol_name(number: u32) -> Option<&'static str> {
    match number {
        1 => Some("icmp"),
        6 => Some("tcp"),
        17 => Some("udp"),
        58 => Some("icmpv6"),
        _ => None,
    }
}

/// File permission bits (AppArmor-compatible values, as in vArmor's BPF enforcer).
pub mod perm {
    /// Execute (bprm check, or an open for exec).
    pub const EXEC: u32 = 0x1;
    /// Write (includes truncation).
    pub const WRITE: u32 = 0x2;
    /// Read.
    pub const READ: u32 = 0x4;
    /// Append.
    pub const APPEND: u32 = 0x8;
    /// Create.
    pub const CREATE: u32 = 0x10;
    /// Rename (either side).
    pub const RENAME: u32 = 0x80;
    /// Link / symlink creation.
    pub const LINK: u32 = 0x40000;

    /// Every permission bit with a name.
    pub const NAMED: [(u32, &str); 7] = [
        (EXEC, "exec"),
        (WRITE, "write"),
        (READ, "read"),
        (APPEND, "append"),
        (CREATE, "create"),
        (RENAME, "rename"),
        (LINK, "link"),
    ];

    /// The names of the bits of a mask, in the order of [`NAMED`].
    pub fn names(mask: u32) -> Vec<&'static str> {
        NAMED
            .iter()
            .filter(|(b, _)| mask & b != 0)
            .map(|(_, n)| *n)
            .collect()
    }
}

/// The bits of one `permissions` entry of a `FileRule`, or `None` when the name is unknown.
///
/// `write` implies `append` (an append is a write), `all` is read, write, append and exec.
pub fn file_permission(name: &str) -> Option<u32> {
    Some(match name.to_ascii_lowercase().as_str() {
        "all" | "*" => perm::READ | perm::WRITE | perm::APPEND | perm::EXEC,
        "read" | "r" => perm::READ,
        "write" | "w" => perm::WRITE | perm::APPEND,
        "append" | "a" => perm::APPEND,
        "exec" | "x" | "e" => perm::EXEC,
        _ => return None,
    })
}

/// Accepted file permission spellings, for error messages.
pub const FILE_PERMISSION_NAMES: &[&str] = &[
    "all", "*", "read", "r", "write", "w", "append", "a", "exec", "x", "e",
];

/// Ptrace permission bits.
pub mod ptrace {
    /// Tracing (or writing) another process.
    pub const TRACE: u32 = 0x2;
    /// Reading another process.
    pub const READ: u32 = 0x4;
    /// Being traced by another process.
    pub const TRACEBY: u32 = 0x8;
    /// Being read by another process.
    pub const READBY: u32 = 0x10;
    /// Every ptrace permission.
    pub const ALL: u32 = TRACE | READ | TRACEBY | READBY;

    /// The names of the bits of a mask.
    pub fn names(mask: u32) -> Vec<&'static str> {
        [
            (TRACE, "trace"),
            (READ, "read"),
            (TRACEBY, "traceby"),
            (READBY, "readby"),
        ]
        .iter()
        .filter(|(b, _)| mask & b != 0)
        .map(|(_, n)| *n)
        .collect()
    }
}

/// The bits of one ptrace permission name.
pub fn ptrace_permission(name: &str) -> Option<u32> {
    Some(match name.to_ascii_lowercase().as_str() {
        "all" | "*" => ptrace::ALL,
        "trace" => ptrace::TRACE,
        "read" => ptrace::READ,
        "traceby" => ptrace::TRACEBY,
        "readby" => ptrace::READBY,
        _ => return None,
    })
}

/// Accepted ptrace permission spellings, for error messages.
pub const PTRACE_PERMISSION_NAMES: &[&str] = &["all", "*", "trace", "traceby", "read", "readby"];

/// Linux mount flags (`MS_*`) and the pseudo flag for umount.
pub mod mount {
    /// MS_RDONLY.
    pub const RDONLY: u32 = 1;
    /// MS_NOSUID.
    pub const NOSUID: u32 = 2;
    /// MS_NODEV.
    pub const NODEV: u32 = 4;
    /// MS_NOEXEC.
    pub const NOEXEC: u32 = 8;
    /// MS_SYNCHRONOUS.
    pub const SYNCHRONOUS: u32 = 16;
    /// MS_REMOUNT.
    pub const REMOUNT: u32 = 32;
    /// MS_MANDLOCK.
    pub const MANDLOCK: u32 = 64;
    /// MS_DIRSYNC.
    pub const DIRSYNC: u32 = 128;
    /// Pseudo flag for umount(2) (unused by Linux mount flags; vArmor's `AA_MAY_UMOUNT`).
    pub const UMOUNT: u32 = 0x200;
    /// MS_NOATIME.
    pub const NOATIME: u32 = 1024;
    /// MS_NODIRATIME.
    pub const NODIRATIME: u32 = 2048;
    /// MS_BIND.
    pub const BIND: u32 = 4096;
    /// MS_MOVE.
    pub const MOVE: u32 = 8192;
    /// MS_REC.
    pub const REC: u32 = 16384;
    /// MS_SILENT.
    pub const SILENT: u32 = 32768;
    /// MS_UNBINDABLE.
    pub const UNBINDABLE: u32 = 1 << 17;
    /// MS_PRIVATE.
    pub const PRIVATE: u32 = 1 << 18;
    /// MS_SLAVE.
    pub const SLAVE: u32 = 1 << 19;
    /// MS_SHARED.
    pub const SHARED: u32 = 1 << 20;
    /// MS_RELATIME.
    pub const RELATIME: u32 = 1 << 21;
    /// MS_I_VERSION.
    pub const I_VERSION: u32 = 1 << 23;
    /// MS_STRICTATIME.
    pub const STRICTATIME: u32 = 1 << 24;
    /// Every bit.
    pub const ALL: u32 = 0xFFFF_FFFF;

    /// Flags that make a mount(2) call a remount, bind or propagation change: for these the
    /// filesystem type is compared as `none`.
    pub const NON_NEW_MOUNT: u32 =
        REMOUNT | BIND | SHARED | PRIVATE | SLAVE | UNBINDABLE | MOVE | UMOUNT;

    /// Names of the bits of a mask (the forward names).
    pub fn names(mask: u32) -> Vec<&'static str> {
        [
            (RDONLY, "ro"),
            (NOSUID, "nosuid"),
            (NODEV, "nodev"),
            (NOEXEC, "noexec"),
            (SYNCHRONOUS, "sync"),
            (REMOUNT, "remount"),
            (MANDLOCK, "mand"),
            (DIRSYNC, "dirsync"),
            (UMOUNT, "umount"),
            (NOATIME, "noatime"),
            (NODIRATIME, "nodiratime"),
            (BIND, "bind"),
            (MOVE, "move"),
            (REC, "rec"),
            (SILENT, "silent"),
            (UNBINDABLE, "unbindable"),
            (PRIVATE, "private"),
            (SLAVE, "slave"),
            (SHARED, "shared"),
            (RELATIME, "relatime"),
            (I_VERSION, "iversion"),
            (STRICTATIME, "strictatime"),
        ]
        .iter()
        .filter(|(b, _)| mask & b != 0)
        .map(|(_, n)| *n)
        .collect()
    }
}

/// The (forward, reverse) flag bits of one mount flag name.
///
/// A forward bit matches when the call sets it; a reverse bit matches when the call does *not*
/// set it (so `rw` matches every mount without `MS_RDONLY`).
pub fn mount_flag(name: &str) -> Option<(u32, u32)> {
    use mount::*;
    // The one-letter aliases are case-sensitive: `r` is read-only, `R` is rbind.
    match name {
        "r" => return Some((RDONLY, 0)),
        "w" => return Some((0, RDONLY)),
        "B" => return Some((BIND, 0)),
        "M" => return Some((MOVE, 0)),
        "R" => return Some((BIND | REC, 0)),
        _ if name.len() == 1 && name != "*" => return None,
        _ => {}
    }
    Some(match name.to_ascii_lowercase().as_str() {
        "all" | "*" => (ALL, ALL),
        "ro" | "read-only" => (RDONLY, 0),
        "rw" => (0, RDONLY),
        "suid" => (0, NOSUID),
        "nosuid" => (NOSUID, 0),
        "dev" => (0, NODEV),
        "nodev" => (NODEV, 0),
        "exec" => (0, NOEXEC),
        "noexec" => (NOEXEC, 0),
        "sync" => (SYNCHRONOUS, 0),
        "async" => (0, SYNCHRONOUS),
        "mand" => (MANDLOCK, 0),
        "nomand" => (0, MANDLOCK),
        "dirsync" => (DIRSYNC, 0),
        "atime" => (0, NOATIME),
        "noatime" => (NOATIME, 0),
        "diratime" => (0, NODIRATIME),
        "nodiratime" => (NODIRATIME, 0),
        "silent" => (SILENT, 0),
        "loud" => (0, SILENT),
        "relatime" => (RELATIME, 0),
        "norelatime" => (0, RELATIME),
        "iversion" => (I_VERSION, 0),
        "noiversion" => (0, I_VERSION),
        "strictatime" => (STRICTATIME, 0),
        "nostrictatime" => (0, STRICTATIME),
        "remount" => (REMOUNT, 0),
        "bind" => (BIND, 0),
        "move" => (MOVE, 0),
        "rbind" => (BIND | REC, 0),
        "make-unbindable" | "unbindable" => (UNBINDABLE, 0),
        "make-private" | "private" => (PRIVATE, 0),
        "make-slave" | "slave" => (SLAVE, 0),
        "make-shared" | "shared" => (SHARED, 0),
        "make-runbindable" | "runbindable" => (BIND | REC | UNBINDABLE, 0),
        "make-rprivate" | "rprivate" => (BIND | REC | PRIVATE, 0),
        "make-rslave" | "rslave" => (BIND | REC | SLAVE, 0),
        "make-rshared" | "rshared" => (BIND | REC | SHARED, 0),
        "umount" => (UMOUNT, 0),
        _ => return None,
    })
}

/// Accepted mount flag spellings, for error messages and suggestions.
pub const MOUNT_FLAG_NAMES: &[&str] = &[
    "all",
    "*",
    "ro",
    "r",
    "read-only",
    "rw",
    "w",
    "suid",
    "nosuid",
    "dev",
    "nodev",
    "exec",
    "noexec",
    "sync",
    "async",
    "mand",
    "nomand",
    "dirsync",
    "atime",
    "noatime",
    "diratime",
    "nodiratime",
    "silent",
    "loud",
    "relatime",
    "norelatime",
    "iversion",
    "noiversion",
    "strictatime",
    "nostrictatime",
    "remount",
    "bind",
    "B",
    "move",
    "M",
    "rbind",
    "R",
    "make-unbindable",
    "unbindable",
    "make-private",
    "private",
    "make-slave",
    "slave",
    "make-shared",
    "shared",
    "make-runbindable",
    "make-rprivate",
    "make-rslave",
    "make-rshared",
    "umount",
];

/// Whether a syscall name is known (any architecture).
pub fn is_known_syscall(name: &str) -> bool {
    syscalls::SYSCALLS.binary_search(&name).is_ok()
}

/// Every known syscall name, sorted.
pub fn syscall_names() -> &'static [&'static str] {
    syscalls::SYSCALLS
}

/// Seccomp actions of the OCI runtime spec.
pub const SECCOMP_ACTIONS: &[&str] = &[
    "SCMP_ACT_KILL",
    "SCMP_ACT_KILL_PROCESS",
    "SCMP_ACT_KILL_THREAD",
    "SCMP_ACT_TRAP",
    "SCMP_ACT_ERRNO",
    "SCMP_ACT_TRACE",
    "SCMP_ACT_ALLOW",
    "SCMP_ACT_LOG",
    "SCMP_ACT_NOTIFY",
];

/// Seccomp argument comparison operators of the OCI runtime spec.
pub const SECCOMP_OPERATORS: &[&str] = &[
    "SCMP_CMP_NE",
    "SCMP_CMP_LT",
    "SCMP_CMP_LE",
    "SCMP_CMP_EQ",
    "SCMP_CMP_GE",
    "SCMP_CMP_GT",
    "SCMP_CMP_MASKED_EQ",
];

/// The closest candidate to `input`, if it is close enough to be a likely typo.
pub fn suggest<'a>(input: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let input = input.to_ascii_lowercase();
    let mut best: Option<(f64, &str)> = None;
    for c in candidates {
        let score = strsim::jaro_winkler(&input, &c.to_ascii_lowercase());
        if best.is_none_or(|(s, _)| score > s) {
            best = Some((score, c));
        }
    }
    best.filter(|(s, _)| *s >= 0.8).map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_numbers_match_linux() {
        assert_eq!(capability_number("CAP_SYS_ADMIN"), Some(21));
        assert_eq!(capability_number("net_raw"), Some(13));
        assert_eq!(capability_number("checkpoint-restore"), Some(40));
        assert_eq!(capability_number("nope"), None);
        assert_eq!(ALL_CAPABILITIES.count_ones(), 41);
    }

    #[test]
    fn syscall_table_is_sorted_and_complete() {
        assert!(syscall_names().windows(2).all(|w| w[0] < w[1]));
        for s in [
            "unshare",
            "splice",
            "fchmodat2",
            "bpf",
            "setsockopt",
            "userfaultfd",
            "clone3",
        ] {
            assert!(is_known_syscall(s), "{s}");
        }
        assert!(!is_known_syscall("unshar"));
    }

    #[test]
    fn mount_flag_reverse_semantics() {
        assert_eq!(mount_flag("rw"), Some((0, mount::RDONLY)));
        assert_eq!(mount_flag("R"), Some((mount::BIND | mount::REC, 0)));
        assert_eq!(mount_flag("r"), Some((mount::RDONLY, 0)));
        assert_eq!(mount_flag("b"), None);
        assert_eq!(mount_flag("bogus"), None);
    }

    #[test]
    fn suggestions_catch_typos_only() {
        assert_eq!(
            suggest("nosiud", MOUNT_FLAG_NAMES.iter().copied()),
            Some("nosuid")
        );
        assert_eq!(suggest("zzzzzz", MOUNT_FLAG_NAMES.iter().copied()), None);
    }
}
