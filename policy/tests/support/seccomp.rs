//! Loading an OCI seccomp profile into a real kernel filter, the way runc does, and running one
//! syscall under it in a child process.
//!
//! [`Filter::from_oci`] follows runc's `libcontainer/seccomp` (`InitSeccomp`, `matchCall`,
//! `getAction`): the default action and `defaultErrnoRet`; per entry and per name the action
//! (ERRNO and TRACE default to EPERM, KILL means KILL_THREAD); entries whose action equals the
//! default are skipped; names libseccomp does not know are skipped; one rule with every
//! condition AND-ed, except that when an argument index appears more than once each condition
//! becomes a rule of its own (OR-ed); flags `SECCOMP_FILTER_FLAG_LOG` and `..._SPEC_ALLOW` are
//! passed to seccomp(2), `..._TSYNC` is ignored. libseccomp compiles the rules to classic BPF
//! in the parent; [`run`] forks, and the child sets `NO_NEW_PRIVS`, loads the program with
//! seccomp(2), runs the [`Op`] and exits with its errno.
//!
//! The child of a fork in a multi-threaded test process may only make async-signal-safe
//! calls, so every buffer an operation needs is prepared before the fork and the child calls
//! nothing but raw syscalls and `_exit`.

// fork(2), seccomp(2) and the syscalls under test have no safe wrappers in our dependencies.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io::{Read, Seek};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompFilterFlag, LinuxSeccompOperator, LinuxSyscall,
};

const EPERM: i32 = libc::EPERM;

/// A seccomp program ready to load.
#[derive(Clone)]
pub struct Filter {
    program: Vec<libc::sock_filter>,
    flags: libc::c_ulong,
}

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filter")
            .field("instructions", &self.program.len())
            .field("flags", &self.flags)
            .finish()
    }
}

fn action(action: LinuxSeccompAction, errno: Option<u32>) -> Result<ScmpAction, String> {
    let code = |e: Option<u32>| e.map_or(EPERM, |e| e as i32);
    Ok(match action {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            ScmpAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActErrno => ScmpAction::Errno(code(errno)),
        LinuxSeccompAction::ScmpActTrace => ScmpAction::Trace(code(errno) as u16),
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
        LinuxSeccompAction::ScmpActNotify => {
            return Err("SCMP_ACT_NOTIFY needs a seccomp agent; the test loader has none".into())
        }
    })
}

fn condition(index: usize, op: LinuxSeccompOperator, value: u64, value_two: u64) -> ScmpArgCompare {
    let op = match op {
        LinuxSeccompOperator::ScmpCmpNe => ScmpCompareOp::NotEqual,
        LinuxSeccompOperator::ScmpCmpLt => ScmpCompareOp::Less,
        LinuxSeccompOperator::ScmpCmpLe => ScmpCompareOp::LessOrEqual,
        LinuxSeccompOperator::ScmpCmpEq => ScmpCompareOp::Equal,
        LinuxSeccompOperator::ScmpCmpGe => ScmpCompareOp::GreaterEqual,
        LinuxSeccompOperator::ScmpCmpGt => ScmpCompareOp::Greater,
        // runc passes (value, valueTwo): the mask, then the expected masked value.
        LinuxSeccompOperator::ScmpCmpMaskedEq => {
            return ScmpArgCompare::new(index as u32, ScmpCompareOp::MaskedEqual(value), value_two)
        }
    };
    ScmpArgCompare::new(index as u32, op, value)
}

/// runc's `matchCall` for one name of an entry.
fn match_call(
    ctx: &mut ScmpFilterContext,
    entry: &LinuxSyscall,
    name: &str,
    default: ScmpAction,
) -> Result<(), String> {
    let act = action(entry.action(), entry.errno_ret())?;
    if act == default {
        return Ok(()); // redundant; libseccomp would refuse it
    }
    let Ok(nr) = ScmpSyscall::from_name(name) else {
        return Ok(()); // unknown to libseccomp: runc skips it
    };
    let args = entry.args().clone().unwrap_or_default();
    let conds: Vec<ScmpArgCompare> = args
        .iter()
        .map(|a| condition(a.index(), a.op(), a.value(), a.value_two().unwrap_or(0)))
        .collect();
    let mut per_index = [0usize; 6];
    for a in &args {
        let slot = per_index
            .get_mut(a.index())
            .ok_or(format!("{name}: bad index {}", a.index()))?;
        *slot += 1;
    }
    let add = |ctx: &mut ScmpFilterContext, c: &[ScmpArgCompare]| {
        ctx.add_rule_conditional(act, nr, c)
            .map(|_| ())
            .map_err(|e| format!("adding the rule for {name}: {e}"))
    };
    if per_index.iter().any(|&n| n > 1) {
        for c in &conds {
            add(ctx, std::slice::from_ref(c))?;
        }
        Ok(())
    } else {
        add(ctx, &conds)
    }
}

impl Filter {
    /// Compiles a profile as runc would load it.
    pub fn from_oci(profile: &LinuxSeccomp) -> Result<Filter, String> {
        let default = action(profile.default_action(), profile.default_errno_ret())?;
        let mut flags: libc::c_ulong = 0;
        for f in profile.flags().clone().unwrap_or_default() {
            match f {
                LinuxSeccompFilterFlag::SeccompFilterFlagLog => {
                    flags |= libc::SECCOMP_FILTER_FLAG_LOG
                }
                LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => {
                    flags |= libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW
                }
                LinuxSeccompFilterFlag::SeccompFilterFlagTsync => {}
                other => return Err(format!("flag {other} is not supported by runc")),
            }
        }
        let mut ctx = ScmpFilterContext::new(default).map_err(|e| e.to_string())?;
        // As runc does: every listed architecture is added next to the native one.
        for arch in profile.architectures().clone().unwrap_or_default() {
            let name = serde_json::to_value(arch).map_err(|e| e.to_string())?;
            let name = name.as_str().unwrap_or_default().to_string();
            let arch: ScmpArch = name
                .parse()
                .map_err(|e| format!("architecture {name}: {e}"))?;
            if !ctx.is_arch_present(arch).map_err(|e| e.to_string())? {
                ctx.add_arch(arch)
                    .map_err(|e| format!("architecture {name}: {e}"))?;
            }
        }
        for entry in profile.syscalls().clone().unwrap_or_default() {
            for name in entry.names() {
                match_call(&mut ctx, &entry, name, default)?;
            }
        }
        let mut file = tempfile::tempfile().map_err(|e| e.to_string())?;
        ctx.export_bpf(&file)
            .map_err(|e| format!("exporting the filter: {e}"))?;
        let mut bytes = Vec::new();
        file.rewind()
            .and_then(|_| file.read_to_end(&mut bytes))
            .map_err(|e| e.to_string())?;
        let program = bytes
            .chunks_exact(8)
            .map(|c| libc::sock_filter {
                code: u16::from_ne_bytes([c[0], c[1]]),
                jt: c[2],
                jf: c[3],
                k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect();
        Ok(Filter { program, flags })
    }

    /// The JSON of a compiled policy's `Localhost` profile, compiled.
    pub fn from_json(json: &str) -> Result<Filter, String> {
        let profile: LinuxSeccomp = serde_json::from_str(json).map_err(|e| e.to_string())?;
        Filter::from_oci(&profile)
    }
}

/// How the operation ended in the child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The syscall succeeded.
    Ok,
    /// The syscall failed with this errno.
    Errno(i32),
    /// The child was killed by this signal (e.g. SIGSYS from SCMP_ACT_KILL/TRAP).
    Signal(i32),
    /// The filter could not be loaded (errno of seccomp(2)).
    LoadFailed,
    /// A setup step before the syscall under test failed.
    SetupFailed,
}

const EXIT_LOAD_FAILED: i32 = 250;
const EXIT_SETUP_FAILED: i32 = 251;

/// An operation whose syscall is tested. Every buffer it needs is built by its constructor,
/// before the fork.
#[derive(Debug)]
pub enum Op {
    /// unshare(flags).
    Unshare(libc::c_int),
    /// clone(flags | SIGCHLD); the new process exits at once.
    Clone(libc::c_ulong),
    /// chmod(path, mode), through glibc (the chmod syscall on x86_64).
    Chmod(CString, libc::mode_t),
    /// fchmod(fd, mode).
    Fchmod(OwnedFd, libc::mode_t),
    /// fchmodat(AT_FDCWD, path, mode).
    Fchmodat(CString, libc::mode_t),
    /// fchmodat2(AT_FDCWD, path, mode, 0) (Linux 6.6+).
    Fchmodat2(CString, libc::mode_t),
    /// splice of one byte from one pipe to another.
    Splice,
    /// userfaultfd(O_CLOEXEC).
    Userfaultfd,
    /// bpf(BPF_PROG_LOAD) of a two-instruction socket filter (`r0 = 0; exit`).
    BpfProgLoad(Box<BpfProg>),
    /// bpf(BPF_MAP_CREATE) of a one-element array.
    BpfMapCreate(Box<[u8; 128]>),
    /// setsockopt on a UDP socket with an int value 1.
    SetsockoptInt(libc::c_int, libc::c_int),
    /// setsockopt(SOL_SOCKET, name) with a one-instruction classic BPF program (accept all).
    SetsockoptFilter(libc::c_int, Box<SockProg>),
    /// socket(domain, SOCK_DGRAM, 0).
    Socket(libc::c_int),
    /// getpid().
    Getpid,
    /// getppid().
    Getppid,
}

/// The memory of a BPF_PROG_LOAD call.
#[derive(Debug)]
pub struct BpfProg {
    attr: [u8; 128],
    _insns: Box<[u64; 2]>,
    _license: CString,
}

/// The classic BPF program of a SO_ATTACH_FILTER call.
pub struct SockProg(Box<[libc::sock_filter; 1]>);

impl std::fmt::Debug for SockProg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SockProg(ret #0xffff)")
    }
}

fn put_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put_u64(buf: &mut [u8], at: usize, v: u64) {
    buf[at..at + 8].copy_from_slice(&v.to_ne_bytes());
}

impl Op {
    /// chmod on a path.
    pub fn chmod(path: &std::path::Path, mode: libc::mode_t) -> Op {
        Op::Chmod(cpath(path), mode)
    }

    /// fchmod on a file.
    pub fn fchmod(file: &std::fs::File, mode: libc::mode_t) -> Op {
        Op::Fchmod(file.try_clone().expect("dup").into(), mode)
    }

    /// fchmodat on a path.
    pub fn fchmodat(path: &std::path::Path, mode: libc::mode_t) -> Op {
        Op::Fchmodat(cpath(path), mode)
    }

    /// fchmodat2 on a path.
    pub fn fchmodat2(path: &std::path::Path, mode: libc::mode_t) -> Op {
        Op::Fchmodat2(cpath(path), mode)
    }

    /// bpf(BPF_PROG_LOAD) of a valid socket filter program.
    pub fn bpf_prog_load() -> Op {
        // BPF_MOV64_IMM(r0, 0) = opcode 0xb7; BPF_EXIT_INSN() = opcode 0x95.
        let insns = Box::new([0xb7u64.to_le(), 0x95u64.to_le()]);
        let license = CString::new("GPL").expect("no nul");
        let mut attr = [0u8; 128];
        put_u32(&mut attr, 0, 1); // prog_type = BPF_PROG_TYPE_SOCKET_FILTER
        put_u32(&mut attr, 4, 2); // insn_cnt
        put_u64(&mut attr, 8, insns.as_ptr() as u64); // insns
        put_u64(&mut attr, 16, license.as_ptr() as u64); // license
        Op::BpfProgLoad(Box::new(BpfProg {
            attr,
            _insns: insns,
            _license: license,
        }))
    }

    /// bpf(BPF_MAP_CREATE) of an array map.
    pub fn bpf_map_create() -> Op {
        let mut attr = Box::new([0u8; 128]);
        put_u32(&mut attr[..], 0, 2); // map_type = BPF_MAP_TYPE_ARRAY
        put_u32(&mut attr[..], 4, 4); // key_size
        put_u32(&mut attr[..], 8, 4); // value_size
        put_u32(&mut attr[..], 12, 1); // max_entries
        Op::BpfMapCreate(attr)
    }

    /// setsockopt(SOL_SOCKET, name) with an accept-all classic BPF program.
    pub fn attach_filter(name: libc::c_int) -> Op {
        // BPF_RET | BPF_K, 0xffff: accept the whole packet.
        let insns = Box::new([libc::sock_filter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: 0xffff,
        }]);
        Op::SetsockoptFilter(name, Box::new(SockProg(insns)))
    }

    /// Runs the syscall; in the child after the fork: raw syscalls only.
    fn run(&self) -> Result<(), i32> {
        // SAFETY: every pointer passed below points into memory owned by `self`, which the
        // fork copied; the calls do not keep the pointers.
        let r: libc::c_long = unsafe {
            match self {
                Op::Unshare(flags) => libc::unshare(*flags) as libc::c_long,
                Op::Clone(flags) => {
                    let pid = libc::syscall(
                        libc::SYS_clone,
                        *flags | libc::SIGCHLD as libc::c_ulong,
                        0,
                        0,
                        0,
                        0,
                    );
                    if pid == 0 {
                        libc::_exit(0);
                    }
                    if pid > 0 {
                        libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), 0);
                        0
                    } else {
                        pid
                    }
                }
                Op::Chmod(p, m) => libc::chmod(p.as_ptr(), *m) as libc::c_long,
                Op::Fchmod(fd, m) => libc::syscall(libc::SYS_fchmod, fd.as_raw_fd(), *m),
                Op::Fchmodat(p, m) => {
                    libc::syscall(libc::SYS_fchmodat, libc::AT_FDCWD, p.as_ptr(), *m)
                }
                Op::Fchmodat2(p, m) => {
                    libc::syscall(libc::SYS_fchmodat2, libc::AT_FDCWD, p.as_ptr(), *m, 0)
                }
                Op::Splice => {
                    let mut a = [0i32; 2];
                    let mut b = [0i32; 2];
                    if libc::pipe2(a.as_mut_ptr(), 0) != 0
                        || libc::pipe2(b.as_mut_ptr(), 0) != 0
                        || libc::write(a[1], b"x".as_ptr().cast(), 1) != 1
                    {
                        libc::_exit(EXIT_SETUP_FAILED);
                    }
                    let n =
                        libc::splice(a[0], std::ptr::null_mut(), b[1], std::ptr::null_mut(), 1, 0);
                    if n == 1 {
                        0
                    } else {
                        -1
                    }
                }
                Op::Userfaultfd => libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC),
                Op::BpfProgLoad(p) => {
                    libc::syscall(libc::SYS_bpf, 5, p.attr.as_ptr(), p.attr.len())
                }
                Op::BpfMapCreate(attr) => {
                    libc::syscall(libc::SYS_bpf, 0, attr.as_ptr(), attr.len())
                }
                Op::SetsockoptInt(level, name) => {
                    let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
                    if s < 0 {
                        libc::_exit(EXIT_SETUP_FAILED);
                    }
                    let one: libc::c_int = 1;
                    libc::setsockopt(
                        s,
                        *level,
                        *name,
                        (&one as *const libc::c_int).cast(),
                        std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                    ) as libc::c_long
                }
                Op::SetsockoptFilter(name, p) => {
                    let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
                    if s < 0 {
                        libc::_exit(EXIT_SETUP_FAILED);
                    }
                    let prog = libc::sock_fprog {
                        len: 1,
                        filter: p.0.as_ptr() as *mut libc::sock_filter,
                    };
                    libc::setsockopt(
                        s,
                        libc::SOL_SOCKET,
                        *name,
                        (&prog as *const libc::sock_fprog).cast(),
                        std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
                    ) as libc::c_long
                }
                Op::Socket(domain) => libc::socket(*domain, libc::SOCK_DGRAM, 0) as libc::c_long,
                Op::Getpid => libc::syscall(libc::SYS_getpid),
                Op::Getppid => libc::syscall(libc::SYS_getppid),
            }
        };
        if r < 0 {
            // SAFETY: reading the calling thread's errno.
            Err(unsafe { *libc::__errno_location() })
        } else {
            Ok(())
        }
    }
}

fn cpath(path: &std::path::Path) -> CString {
    use std::os::unix::ffi::OsStrExt;
    CString::new(path.as_os_str().as_bytes()).expect("path without nul")
}

/// Forks; the child loads `filter` (if any), runs `op` and reports how it ended.
pub fn run(filter: Option<&Filter>, op: &Op) -> Outcome {
    let prog = filter.map(|f| libc::sock_fprog {
        len: f.program.len() as u16,
        filter: f.program.as_ptr() as *mut libc::sock_filter,
    });
    let flags = filter.map_or(0, |f| f.flags);
    // SAFETY: the child only makes raw syscalls on memory prepared before the fork, then
    // `_exit`s; it never returns into Rust code that could take a lock.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        // SAFETY: see above.
        unsafe {
            if let Some(prog) = &prog {
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                    || libc::syscall(
                        libc::SYS_seccomp,
                        libc::SECCOMP_SET_MODE_FILTER,
                        flags,
                        prog as *const libc::sock_fprog,
                    ) != 0
                {
                    libc::_exit(EXIT_LOAD_FAILED);
                }
            }
            let code = match op.run() {
                Ok(()) => 0,
                Err(e) => e.clamp(1, EXIT_LOAD_FAILED - 1),
            };
            libc::_exit(code);
        }
    }
    wait(pid)
}

/// Waits for the child, killing it after 10 s (a filter that blocks exit would hang it).
fn wait(pid: libc::pid_t) -> Outcome {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut status = 0;
    loop {
        // SAFETY: waiting for our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            break;
        }
        assert!(r == 0, "waitpid: {}", std::io::Error::last_os_error());
        if Instant::now() > deadline {
            // SAFETY: killing and reaping our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            panic!("the child process did not exit within 10 s");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    if libc::WIFSIGNALED(status) {
        return Outcome::Signal(libc::WTERMSIG(status));
    }
    match libc::WEXITSTATUS(status) {
        0 => Outcome::Ok,
        EXIT_LOAD_FAILED => Outcome::LoadFailed,
        EXIT_SETUP_FAILED => Outcome::SetupFailed,
        e => Outcome::Errno(e),
    }
}

/// Whether this process can load seccomp filters in a child (kernel support, not already
/// forbidden by an outer filter), with the reason when not.
pub fn available() -> Result<(), String> {
    let allow_all = LinuxSeccomp::default(); // defaultAction SCMP_ACT_ALLOW
    let filter = Filter::from_oci(&allow_all).map_err(|e| format!("libseccomp: {e}"))?;
    match run(Some(&filter), &Op::Getpid) {
        Outcome::Ok => Ok(()),
        other => Err(format!(
            "loading an allow-all seccomp filter in a child gave {other:?}"
        )),
    }
}
