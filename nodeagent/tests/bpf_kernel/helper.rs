//! The process the kernel tests confine: it makes its own mount (and UTS) namespace, enters a
//! prepared root with chroot, and then performs one access per command read from stdin,
//! answering `@@<errno>` (0 for success) on stdout. It is this test binary run again with
//! `VARMOR_KT_HELPER=1`.
//!
//! Commands (space separated, paths never contain spaces, `-` is an empty string):
//! `open FLAGS PATH`, `openat_deep DEPTH NAME`, `exec PATH`, `socket D T P`,
//! `connect FAMILY IP PORT` (pre-created UDP socket), `tcp IP PORT`, `cap N`,
//! `mount SRC TARGET FSTYPE FLAGS`, `umount PATH`, `move_mount FROM TO`, `mkdir PATH`,
//! `premount PATH`, `link OLD NEW`, `rename OLD NEW`, `symlink TARGET NEW`, `unlink PATH`,
//! `kcmp PID`, `vmread PID`, `loop_start PATH`, `loop_stop`.

use std::ffi::CString;
use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

fn cs(s: &str) -> CString {
    CString::new(if s == "-" { "" } else { s }).expect("no NUL")
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn ret(r: i64) -> i32 {
    if r < 0 {
        errno()
    } else {
        0
    }
}

/// Runs `f` in a forked child (same namespaces) and returns the errno it exits with.
fn in_child(f: impl FnOnce() -> i32) -> i32 {
    // SAFETY: the child only makes syscalls and exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let code = f();
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    unsafe { libc::waitpid(pid, &mut status, 0) };
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        255
    }
}

/// Clears capabilities from the calling process's effective set (no capability is needed to
/// lower it), so a check cannot fall back on them.
fn drop_effective(caps: &[u32]) {
    let mut header = [0x2008_0522u32, 0];
    let mut data = [0u32; 6];
    unsafe {
        libc::syscall(libc::SYS_capget, header.as_mut_ptr(), data.as_mut_ptr());
        for c in caps {
            data[(*c / 32) as usize * 3] &= !(1 << (c % 32));
        }
        libc::syscall(libc::SYS_capset, header.as_mut_ptr(), data.as_ptr());
    }
}

/// A process that sleeps until the helper dies.
fn sleeper(uid: u32) -> i32 {
    let parent = unsafe { libc::getpid() };
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        unsafe {
            // It holds none of the helper's descriptors: a socket the helper binds later (port
            // 80 for CAP_NET_BIND_SERVICE) must be released when the helper closes it.
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            if uid != 0 {
                libc::setgid(uid);
                libc::setuid(uid);
            }
            // After the uid change, which clears the parent-death signal.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if libc::getppid() != parent {
                libc::_exit(0);
            }
            loop {
                libc::pause();
            }
        }
    }
    pid
}

struct Helper {
    udp4: i32,
    udp6: i32,
    /// Opened before the chroot (-1 when unavailable): `ns_last_pid` (CAP_CHECKPOINT_RESTORE), an epoll instance and its fdinfo
    /// (CAP_BLOCK_SUSPEND), audit netlink sockets for requests and for the log group
    /// (CAP_AUDIT_WRITE, CAP_AUDIT_CONTROL, CAP_AUDIT_READ), a message queue of another user
    /// (CAP_IPC_OWNER).
    ns_last_pid: i32,
    epoll: i32,
    epoll_info: i32,
    audit: i32,
    audit_mc: i32,
    foreign_msq: i32,
    /// A UDP socket already bound to a device: binding it again needs CAP_NET_RAW.
    bound: i32,
    pool: Vec<i32>,
    foreign: i32,
    counter: u32,
    looper: Option<Looper>,
}

/// A background loop: its stop flag and the thread returning (attempts, denials).
type Looper = (Arc<AtomicBool>, std::thread::JoinHandle<(u64, u64)>);

/// The capability triggers: a syscall that asks for the capability (and for no other one).
fn cap_trigger(h: &mut Helper, cap: u32) -> i32 {
    h.counter += 1;
    let n = h.counter;
    unsafe {
        match cap {
            0 => {
                let p = cs(&format!("/capwork/chown{n}"));
                let fd = libc::open(p.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o644);
                libc::close(fd);
                ret(libc::chown(p.as_ptr(), 1234, u32::MAX) as i64)
            }
            1 => {
                let p = cs("/capwork/secret0000");
                let fd = libc::open(p.as_ptr(), libc::O_WRONLY);
                if fd >= 0 {
                    libc::close(fd);
                    0
                } else {
                    errno()
                }
            }
            2 => ret(libc::syscall(libc::SYS_open_by_handle_at, -1, 0usize, 0)),
            3 => {
                let p = cs("/capwork/foreign");
                ret(libc::chmod(p.as_ptr(), 0o640) as i64)
            }
            5 => ret(libc::kill(h.foreign, 0) as i64),
            6 => in_child(|| ret(libc::setgroups(0, std::ptr::null()) as i64)),
            7 => in_child(|| ret(libc::setuid(1234) as i64)),
            8 => in_child(|| ret(libc::prctl(libc::PR_CAPBSET_DROP, 40, 0, 0, 0) as i64)),
            10 => {
                let Some(fd) = h.pool.pop() else { return 254 };
                let addr = libc::sockaddr_in {
                    sin_family: libc::AF_INET as u16,
                    sin_port: 80u16.to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes([127, 0, 0, 1]),
                    },
                    sin_zero: [0; 8],
                };
                let r = libc::bind(
                    fd,
                    &addr as *const _ as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_in>() as u32,
                );
                let e = ret(r as i64);
                libc::close(fd);
                e
            }
            12 => {
                let fd = h.udp4;
                in_child(|| {
                    drop_effective(&[13]);
                    let v: i32 = 7;
                    ret(libc::setsockopt(
                        fd,
                        libc::SOL_SOCKET,
                        libc::SO_PRIORITY,
                        &v as *const _ as *const libc::c_void,
                        4,
                    ) as i64)
                })
            }
            13 => {
                let dev = b"lo\0";
                ret(libc::setsockopt(
                    h.bound,
                    libc::SOL_SOCKET,
                    libc::SO_BINDTODEVICE,
                    dev.as_ptr() as *const libc::c_void,
                    3,
                ) as i64)
            }
            14 => in_child(|| {
                let lim = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim);
                let page = [0u8; 4096];
                ret(libc::mlock(page.as_ptr() as *const libc::c_void, 4096) as i64)
            }),
            16 => {
                let name = cs("varmor_no_such_module");
                ret(libc::syscall(libc::SYS_delete_module, name.as_ptr(), 0))
            }
            17 => in_child(|| ret(libc::syscall(libc::SYS_ioperm, 0x80usize, 1usize, 1))),
            18 => in_child(|| {
                let p = cs("/");
                ret(libc::chroot(p.as_ptr()) as i64)
            }),
            19 => ret(libc::syscall(
                libc::SYS_kcmp,
                libc::getpid(),
                h.foreign,
                0,
                0,
                0,
            )),
            20 => ret(libc::syscall(libc::SYS_acct, 0usize)),
            21 => {
                let name = b"varmor-kt";
                ret(libc::sethostname(name.as_ptr() as *const libc::c_char, name.len()) as i64)
            }
            22 => ret(libc::syscall(
                libc::SYS_reboot,
                0xfee1deadu32 as i64,
                672274793i64,
                0i64, // LINUX_REBOOT_CMD_CAD_OFF
                0usize,
            )),
            23 => in_child(|| ret(libc::setpriority(libc::PRIO_PROCESS, 0, -5) as i64)),
            24 => in_child(|| {
                let low = libc::rlimit {
                    rlim_cur: 512,
                    rlim_max: 1024,
                };
                libc::setrlimit(libc::RLIMIT_NOFILE, &low);
                let high = libc::rlimit {
                    rlim_cur: 512,
                    rlim_max: 2048,
                };
                ret(libc::setrlimit(libc::RLIMIT_NOFILE, &high) as i64)
            }),
            25 => {
                let mut tx: libc::timex = std::mem::zeroed();
                libc::adjtimex(&mut tx);
                let tick = tx.tick;
                let mut set: libc::timex = std::mem::zeroed();
                set.modes = libc::ADJ_TICK;
                set.tick = tick;
                ret(libc::adjtimex(&mut set) as i64)
            }
            26 => in_child(|| {
                libc::setsid();
                ret(libc::syscall(libc::SYS_vhangup))
            }),
            27 => {
                let p = cs(&format!("/capwork/node{n}"));
                ret(libc::mknod(p.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(1, 3)) as i64)
            }
            31 => {
                let p = cs("/capwork/fcap");
                let name = cs("security.capability");
                // VFS_CAP_REVISION_2 with CAP_NET_BIND_SERVICE permitted.
                let mut v = [0u8; 20];
                v[0..4].copy_from_slice(&0x0200_0000u32.to_le_bytes());
                v[4..8].copy_from_slice(&(1u32 << 10).to_le_bytes());
                ret(libc::setxattr(
                    p.as_ptr(),
                    name.as_ptr(),
                    v.as_ptr() as *const libc::c_void,
                    v.len(),
                    0,
                ) as i64)
            }
            34 => in_child(|| {
                drop_effective(&[21]);
                ret(libc::syscall(libc::SYS_syslog, 10, 0usize, 0))
            }),
            35 => {
                let fd = libc::timerfd_create(libc::CLOCK_REALTIME_ALARM, 0);
                if fd >= 0 {
                    libc::close(fd);
                    0
                } else {
                    errno()
                }
            }
            39 => in_child(|| {
                // CAP_SYS_ADMIN would do instead of CAP_BPF: take it out of the way.
                drop_effective(&[21]);
                // BPF_MAP_CREATE of a one-entry array.
                let mut attr = [0u32; 30];
                attr[0] = 2; // BPF_MAP_TYPE_ARRAY
                attr[1] = 4;
                attr[2] = 4;
                attr[3] = 1;
                let fd = libc::syscall(libc::SYS_bpf, 0, attr.as_ptr(), 120);
                if fd >= 0 {
                    libc::close(fd as i32);
                    0
                } else {
                    errno()
                }
            }),
            4 => {
                // chmod g+s of a file whose group the caller is not in: without CAP_FSETID the
                // kernel silently clears the bit (reported here as EPERM).
                let p = cs("/capwork/sgid");
                if libc::chmod(p.as_ptr(), 0o2755) != 0 {
                    return errno();
                }
                let mut st: libc::stat = std::mem::zeroed();
                libc::stat(p.as_ptr(), &mut st);
                libc::chmod(p.as_ptr(), 0o755);
                if st.st_mode & libc::S_ISGID == 0 {
                    libc::EPERM
                } else {
                    0
                }
            }
            9 => {
                // FS_IOC_SETFLAGS with FS_IMMUTABLE_FL (tmpfs supports it since 6.0).
                let p = cs(&format!("/capwork/immutable{n}"));
                let fd = libc::open(p.as_ptr(), libc::O_CREAT | libc::O_RDONLY, 0o644);
                if fd < 0 {
                    return errno();
                }
                const FS_IOC_SETFLAGS: libc::c_ulong = 0x4008_6602;
                let mut flags: i32 = 0x10;
                let r = ret(libc::ioctl(fd, FS_IOC_SETFLAGS, &mut flags) as i64);
                if r == 0 {
                    flags = 0;
                    libc::ioctl(fd, FS_IOC_SETFLAGS, &mut flags);
                }
                libc::close(fd);
                r
            }
            15 => {
                // IPC_STAT of a queue created by another user with mode 0600 (EACCES).
                if h.foreign_msq < 0 {
                    return 252;
                }
                let mut ds: libc::msqid_ds = std::mem::zeroed();
                ret(libc::msgctl(h.foreign_msq, libc::IPC_STAT, &mut ds) as i64)
            }
            28 => {
                // A read lease on a file the caller does not own (EACCES).
                let p = cs("/capwork/foreign");
                let fd = libc::open(p.as_ptr(), libc::O_RDONLY);
                if fd < 0 {
                    return errno();
                }
                let r = ret(libc::fcntl(fd, libc::F_SETLEASE, libc::F_RDLCK) as i64);
                if r == 0 {
                    libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK);
                }
                libc::close(fd);
                r
            }
            // The audit requests run in the helper itself: the kernel checks the socket's
            // opener credential, which must be the task's own.
            29 => audit_request(h.audit, 1005, b"varmor-kt\0"), // AUDIT_USER
            30 => audit_request(h.audit, 1000, &[]),            // AUDIT_GET
            36 => {
                // EPOLLWAKEUP without CAP_BLOCK_SUSPEND is silently dropped (reported as
                // EPERM): read the registered events back from fdinfo.
                if h.epoll < 0 || h.epoll_info < 0 {
                    return 252;
                }
                let mut ev = libc::epoll_event {
                    events: (libc::EPOLLIN | libc::EPOLLWAKEUP) as u32,
                    u64: 0,
                };
                if libc::epoll_ctl(h.epoll, libc::EPOLL_CTL_ADD, h.udp4, &mut ev) != 0 {
                    return errno();
                }
                let mut buf = [0u8; 512];
                let n = libc::pread(
                    h.epoll_info,
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    0,
                );
                libc::epoll_ctl(h.epoll, libc::EPOLL_CTL_DEL, h.udp4, &mut ev);
                if n <= 0 {
                    return 251;
                }
                let text = String::from_utf8_lossy(&buf[..n as usize]);
                let events = text
                    .lines()
                    .find(|l| l.starts_with("tfd:"))
                    .and_then(|l| l.split_whitespace().skip_while(|w| *w != "events:").nth(1))
                    .and_then(|w| u32::from_str_radix(w, 16).ok());
                match events {
                    Some(e) if e & libc::EPOLLWAKEUP as u32 != 0 => 0,
                    Some(_) => libc::EPERM,
                    None => 251,
                }
            }
            37 => {
                // Joining the audit log multicast group.
                if h.audit_mc < 0 {
                    return 252;
                }
                let mut sa: libc::sockaddr_nl = std::mem::zeroed();
                let mut len = std::mem::size_of::<libc::sockaddr_nl>() as u32;
                libc::getsockname(
                    h.audit_mc,
                    &mut sa as *mut _ as *mut libc::sockaddr,
                    &mut len,
                );
                sa.nl_groups = 1; // AUDIT_NLGRP_READLOG
                ret(libc::bind(
                    h.audit_mc,
                    &sa as *const _ as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_nl>() as u32,
                ) as i64)
            }
            38 => in_child(|| {
                // perf_event_open needs CAP_PERFMON (or CAP_SYS_ADMIN, taken out of the way)
                // under Debian's perf_event_paranoid.
                drop_effective(&[21]);
                let mut attr = [0u64; 16];
                attr[0] = 1 | (128 << 32); // PERF_TYPE_SOFTWARE, size
                attr[1] = 9; // PERF_COUNT_SW_DUMMY
                attr[5] = 1; // disabled
                let fd = libc::syscall(libc::SYS_perf_event_open, attr.as_ptr(), 0, -1, -1, 0);
                if fd >= 0 {
                    libc::close(fd as i32);
                    0
                } else {
                    errno()
                }
            }),
            40 => {
                // Writing ns_last_pid (its own value back) needs CAP_CHECKPOINT_RESTORE (or
                // CAP_SYS_ADMIN, taken out of the way).
                if h.ns_last_pid < 0 {
                    return 252;
                }
                let fd = h.ns_last_pid;
                in_child(|| {
                    drop_effective(&[21]);
                    let mut buf = [0u8; 32];
                    let n = libc::pread(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0);
                    if n <= 0 {
                        return 251;
                    }
                    ret(libc::pwrite(fd, buf.as_ptr() as *const libc::c_void, n as usize, 0) as i64)
                })
            }
            _ => 253,
        }
    }
}

/// Sends one audit netlink request with an acknowledgement and returns the errno the kernel
/// acknowledges it with (251 when no acknowledgement came).
fn audit_request(fd: i32, kind: u16, payload: &[u8]) -> i32 {
    if fd < 0 {
        return 252;
    }
    let len = 16 + payload.len();
    let mut msg = vec![0u8; (len + 3) & !3];
    msg[0..4].copy_from_slice(&(len as u32).to_ne_bytes());
    msg[4..6].copy_from_slice(&kind.to_ne_bytes());
    msg[6..8].copy_from_slice(&(1u16 | 4).to_ne_bytes()); // NLM_F_REQUEST | NLM_F_ACK
    msg[8..12].copy_from_slice(&1u32.to_ne_bytes());
    msg[16..len].copy_from_slice(payload);
    unsafe {
        let mut to: libc::sockaddr_nl = std::mem::zeroed();
        to.nl_family = libc::AF_NETLINK as u16;
        let r = libc::sendto(
            fd,
            msg.as_ptr() as *const libc::c_void,
            msg.len(),
            0,
            &to as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        );
        if r < 0 {
            return errno();
        }
        // The kernel answers within sendto: every reply is queued already.
        let mut buf = [0u8; 8192];
        for _ in 0..8 {
            let n = libc::recv(
                fd,
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                libc::MSG_DONTWAIT,
            );
            if n < 0 {
                return 251;
            }
            let mut at = 0usize;
            while at + 16 <= n as usize {
                let l = u32::from_ne_bytes(buf[at..at + 4].try_into().expect("4 bytes")) as usize;
                let t = u16::from_ne_bytes(buf[at + 4..at + 6].try_into().expect("2 bytes"));
                if t == 2 && at + 20 <= n as usize {
                    // NLMSG_ERROR: a negative errno, 0 for an acknowledgement.
                    let e = i32::from_ne_bytes(buf[at + 16..at + 20].try_into().expect("4 bytes"));
                    return -e;
                }
                if l < 16 {
                    break;
                }
                at += (l + 3) & !3;
            }
        }
    }
    251
}

/// Opens what some capability triggers need from outside the root (before the chroot).
fn outside_fds() -> (i32, i32, i32, i32, i32, i32) {
    unsafe {
        let nlp = cs("/proc/sys/kernel/ns_last_pid");
        let ns_last_pid = libc::open(nlp.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        let epoll = libc::epoll_create1(libc::EPOLL_CLOEXEC);
        let epoll_info = if epoll >= 0 {
            let p = cs(&format!("/proc/self/fdinfo/{epoll}"));
            libc::open(p.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC)
        } else {
            -1
        };
        let audit_socket = || {
            let fd = libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 9);
            if fd >= 0 {
                let mut sa: libc::sockaddr_nl = std::mem::zeroed();
                sa.nl_family = libc::AF_NETLINK as u16;
                libc::bind(
                    fd,
                    &sa as *const _ as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_nl>() as u32,
                );
            }
            fd
        };
        let audit = audit_socket();
        let audit_mc = audit_socket();
        // A message queue created by uid 1234 with mode 0600, its id sent through a pipe.
        let mut pipe = [0i32; 2];
        libc::pipe(pipe.as_mut_ptr());
        let pid = libc::fork();
        if pid == 0 {
            libc::setgid(1234);
            libc::setuid(1234);
            let id = libc::msgget(libc::IPC_PRIVATE, libc::IPC_CREAT | 0o600);
            libc::write(pipe[1], &id as *const i32 as *const libc::c_void, 4);
            libc::_exit(0);
        }
        let mut id: i32 = -1;
        libc::read(pipe[0], &mut id as *mut i32 as *mut libc::c_void, 4);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
        libc::close(pipe[0]);
        libc::close(pipe[1]);
        (ns_last_pid, epoll, epoll_info, audit, audit_mc, id)
    }
}

/// The capabilities [`cap_trigger`] can exercise.
pub const TRIGGERED_CAPS: &[u32] = &[
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26,
    27, 28, 29, 30, 31, 34, 35, 36, 37, 38, 39, 40,
];

/// The capabilities no trigger can exercise, and why.
pub const UNTRIGGERABLE_CAPS: &[(u32, &str)] = &[
    (
        11,
        "CAP_NET_BROADCAST is declared but never checked by Linux",
    ),
    (
        32,
        "CAP_MAC_OVERRIDE is only checked by SMACK, which this kernel does not run",
    ),
    (
        33,
        "nothing asks the LSM capable hook for CAP_MAC_ADMIN on this kernel: AppArmor checks \
         it for policy loads with cap_capable() directly (policy_ns_capable; a write to \
         .load from a denied container got past it and failed later with EPROTONOSUPPORT), \
         and SELinux and Smack, the other users, are not running",
    ),
];

fn sockaddr(family: &str, ip: &str, port: u16) -> (libc::sockaddr_in6, u32) {
    unsafe {
        if family == "4" {
            let a: std::net::Ipv4Addr = ip.parse().expect("ipv4");
            let mut s: libc::sockaddr_in = std::mem::zeroed();
            s.sin_family = libc::AF_INET as u16;
            s.sin_port = port.to_be();
            s.sin_addr.s_addr = u32::from_ne_bytes(a.octets());
            let mut out: libc::sockaddr_in6 = std::mem::zeroed();
            std::ptr::copy_nonoverlapping(
                &s as *const _ as *const u8,
                &mut out as *mut _ as *mut u8,
                std::mem::size_of::<libc::sockaddr_in>(),
            );
            (out, std::mem::size_of::<libc::sockaddr_in>() as u32)
        } else {
            let a: std::net::Ipv6Addr = ip.parse().expect("ipv6");
            let mut s: libc::sockaddr_in6 = std::mem::zeroed();
            s.sin6_family = libc::AF_INET6 as u16;
            s.sin6_port = port.to_be();
            s.sin6_addr.s6_addr = a.octets();
            (s, std::mem::size_of::<libc::sockaddr_in6>() as u32)
        }
    }
}

fn run(h: &mut Helper, words: &[&str]) -> String {
    let e = |r: i32| r.to_string();
    unsafe {
        match words {
            ["open", flags, path] => {
                let p = cs(path);
                let fd = libc::open(p.as_ptr(), flags.parse::<i32>().expect("flags"));
                if fd >= 0 {
                    libc::close(fd);
                    e(0)
                } else {
                    e(errno())
                }
            }
            ["openat_deep", depth, name] => {
                // Walk down DEPTH components named like NAME, relatively, then open "leaf".
                let d: usize = depth.parse().expect("depth");
                let dir = cs(name);
                let root = cs("/deep");
                let mut fd = libc::open(root.as_ptr(), libc::O_PATH | libc::O_DIRECTORY);
                for _ in 0..d {
                    let next = libc::openat(fd, dir.as_ptr(), libc::O_PATH | libc::O_DIRECTORY);
                    libc::close(fd);
                    fd = next;
                    if fd < 0 {
                        return format!("setup {}", errno());
                    }
                }
                let leaf = cs("leaf");
                let f = libc::openat(fd, leaf.as_ptr(), libc::O_RDONLY);
                let r = if f >= 0 {
                    libc::close(f);
                    0
                } else {
                    errno()
                };
                libc::close(fd);
                e(r)
            }
            ["exec", path] => {
                let p = cs(path);
                let argv = [p.as_ptr(), std::ptr::null()];
                let envp: [*const libc::c_char; 1] = [std::ptr::null()];
                libc::execve(p.as_ptr(), argv.as_ptr(), envp.as_ptr());
                e(errno())
            }
            ["socket", d, t, p] => {
                let fd = libc::socket(
                    d.parse().expect("d"),
                    t.parse().expect("t"),
                    p.parse().expect("p"),
                );
                if fd >= 0 {
                    libc::close(fd);
                    e(0)
                } else {
                    e(errno())
                }
            }
            ["connect", family, ip, port] => {
                let (sa, len) = sockaddr(family, ip, port.parse().expect("port"));
                let fd = if *family == "4" { h.udp4 } else { h.udp6 };
                let r = libc::connect(fd, &sa as *const _ as *const libc::sockaddr, len);
                e(ret(r as i64))
            }
            ["tcp", family, ip, port] => {
                let (sa, len) = sockaddr(family, ip, port.parse().expect("port"));
                let Some(fd) = h.pool.pop() else {
                    return e(254);
                };
                let _ = family;
                let r = libc::connect(fd, &sa as *const _ as *const libc::sockaddr, len);
                let out = ret(r as i64);
                libc::close(fd);
                e(out)
            }
            ["cap", n] => e(cap_trigger(h, n.parse().expect("cap"))),
            ["mount", src, target, fstype, flags] => {
                let s = cs(src);
                let t = cs(target);
                let f = cs(fstype);
                let r = libc::mount(
                    if *src == "-" {
                        std::ptr::null()
                    } else {
                        s.as_ptr()
                    },
                    t.as_ptr(),
                    if *fstype == "-" {
                        std::ptr::null()
                    } else {
                        f.as_ptr()
                    },
                    flags.parse().expect("flags"),
                    std::ptr::null(),
                );
                e(ret(r as i64))
            }
            ["umount", path] => {
                let p = cs(path);
                e(ret(libc::umount2(p.as_ptr(), 0) as i64))
            }
            ["move_mount", from, to] => {
                let f = cs(from);
                let t = cs(to);
                e(ret(libc::syscall(
                    libc::SYS_move_mount,
                    libc::AT_FDCWD,
                    f.as_ptr(),
                    libc::AT_FDCWD,
                    t.as_ptr(),
                    0,
                )))
            }
            ["mkdir", path] => {
                let p = cs(path);
                e(ret(libc::mkdir(p.as_ptr(), 0o755) as i64))
            }
            ["premount", path] => {
                let p = cs(path);
                let t = cs("tmpfs");
                e(ret(
                    libc::mount(t.as_ptr(), p.as_ptr(), t.as_ptr(), 0, std::ptr::null()) as i64,
                ))
            }
            ["link", old, new] => {
                let (o, n) = (cs(old), cs(new));
                e(ret(libc::link(o.as_ptr(), n.as_ptr()) as i64))
            }
            ["rename", old, new] => {
                let (o, n) = (cs(old), cs(new));
                e(ret(libc::rename(o.as_ptr(), n.as_ptr()) as i64))
            }
            ["symlink", target, new] => {
                let (o, n) = (cs(target), cs(new));
                e(ret(libc::symlink(o.as_ptr(), n.as_ptr()) as i64))
            }
            ["unlink", path] => {
                let p = cs(path);
                e(ret(libc::unlink(p.as_ptr()) as i64))
            }
            ["kcmp", pid] => e(ret(libc::syscall(
                libc::SYS_kcmp,
                libc::getpid(),
                pid.parse::<i32>().expect("pid"),
                0,
                0,
                0,
            ))),
            ["vmread", pid] => {
                let mut buf = [0u8; 8];
                let local = libc::iovec {
                    iov_base: buf.as_mut_ptr() as *mut libc::c_void,
                    iov_len: 8,
                };
                let remote = libc::iovec {
                    iov_base: 0x1000 as *mut libc::c_void,
                    iov_len: 8,
                };
                let r = libc::process_vm_readv(pid.parse().expect("pid"), &local, 1, &remote, 1, 0);
                e(ret(r as i64))
            }
            ["loop_start", path] => {
                // Opens PATH for reading again and again in a thread (same namespaces) until
                // `loop_stop`, which answers "<tries> <successes>".
                let p = cs(path);
                let stop = Arc::new(AtomicBool::new(false));
                let s2 = stop.clone();
                let t = std::thread::spawn(move || {
                    let (mut tries, mut ok) = (0u64, 0u64);
                    while !s2.load(Ordering::Relaxed) {
                        let fd = libc::open(p.as_ptr(), libc::O_RDONLY);
                        tries += 1;
                        if fd >= 0 {
                            ok += 1;
                            libc::close(fd);
                        }
                        // About a thousand opens a second: steady load that leaves the
                        // emulated CPUs to the agent being restarted.
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                    (tries, ok)
                });
                h.looper = Some((stop, t));
                e(0)
            }
            ["loop_stop"] => match h.looper.take() {
                Some((stop, t)) => {
                    stop.store(true, Ordering::Relaxed);
                    let (tries, ok) = t.join().expect("loop thread");
                    format!("{tries} {ok}")
                }
                None => "no-loop".into(),
            },
            _ => "bad-command".into(),
        }
    }
}

/// Sets up the namespace and root, then serves commands until stdin closes.
pub fn main() {
    let root = std::env::var("VARMOR_KT_ROOT").expect("VARMOR_KT_ROOT");
    let mnt;
    let fds;
    unsafe {
        assert_eq!(
            libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWUTS),
            0,
            "unshare"
        );
        mnt = std::fs::read_link("/proc/thread-self/ns/mnt")
            .map(|l| l.to_string_lossy().into_owned())
            .unwrap_or_default();
        let slash = cs("/");
        assert_eq!(
            libc::mount(
                std::ptr::null(),
                slash.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null()
            ),
            0,
            "make / private"
        );
        fds = outside_fds();
        let r = cs(&root);
        assert_eq!(libc::chroot(r.as_ptr()), 0, "chroot {root}");
        assert_eq!(libc::chdir(slash.as_ptr()), 0, "chdir");
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
    let udp4 = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    let udp6 = unsafe { libc::socket(libc::AF_INET6, libc::SOCK_DGRAM, 0) };
    let bound = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    unsafe {
        let dev = b"lo\0";
        libc::setsockopt(
            bound,
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            dev.as_ptr() as *const libc::c_void,
            3,
        );
    }
    let pool: Vec<i32> = (0..128)
        .map(|_| unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) })
        .collect();
    let same = sleeper(0);
    let foreign = sleeper(1234);
    let (ns_last_pid, epoll, epoll_info, audit, audit_mc, foreign_msq) = fds;
    let mut h = Helper {
        udp4,
        udp6,
        ns_last_pid,
        epoll,
        epoll_info,
        audit,
        audit_mc,
        foreign_msq,
        bound,
        pool,
        foreign,
        counter: 0,
        looper: None,
    };
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "@@ready {} {} {same} {foreign}",
        std::process::id(),
        mnt
    )
    .expect("stdout");
    out.flush().expect("flush");
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let words: Vec<&str> = line.split(' ').collect();
        let answer = run(&mut h, &words);
        writeln!(out, "@@{answer}").expect("stdout");
        out.flush().expect("flush");
    }
}
