//! Kernel tests of the BPF-LSM enforcer. They need a kernel with BPF-LSM (run them with
//! `scripts/kernel-tests`, which boots one VM); elsewhere each test is skipped with the probe's
//! reason, and with `VARMOR_REQUIRE_KERNEL_TESTS=1` a skip is a failure.
//!
//! The confined process is this binary run again (`VARMOR_KT_HELPER=1`, see `helper.rs`): it
//! enters its own mount namespace and a prepared root, and the tests bind that namespace to a
//! profile and ask it to perform accesses. Expected verdicts come from the reference matcher
//! `varmor_policy::decide::decide`.
//!
//! `harness = false`: the helper must run on the main thread (a mount namespace belongs to a
//! thread, and ptrace targets are thread-group leaders).

#![allow(unsafe_code)]

#[path = "../bpf_support/mod.rs"]
mod bpf_support;
mod helper;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use varmor_agent::containers::ContainerInfo;
use varmor_agent::enforcer::bpf::events::BpfEvent;
use varmor_agent::enforcer::bpf::layout::*;
use varmor_agent::enforcer::bpf::{destroy_pins, probe, BpfEnforcer, BpfOptions};
use varmor_agent::enforcer::{Enforcer, ResultStatus};
use varmor_agent::HostFs;
use varmor_policy::bundle::{BpfProfile, RuleAction};
use varmor_policy::catalog::{self, BpfFragment};
use varmor_policy::decide::{decide, decide_with_tables, effective_protocol, Access, Decision};
use varmor_policy::glob::Pattern;
use varmor_policy::names::{mount, perm, ptrace};
use varmor_policy::proto::RevisedBundle;

use bpf_support::*;

const PIN_ROOT: &str = "/sys/fs/bpf/varmor-kt";

// ---- runner ---------------------------------------------------------------------------------

type TestFn = fn(&Ctx);

fn main() {
    if std::env::var_os("VARMOR_KT_HELPER").is_some() {
        helper::main();
        return;
    }
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let tests: &[(&str, TestFn)] = &[
        ("differential", differential),
        ("builtin_attacks", builtin_attacks),
        ("raw_rule_attacks", raw_rule_attacks),
        ("long_paths_fail_closed", long_paths_fail_closed),
        ("overlayfs_reports_once", overlayfs_reports_once),
        ("top_filter_mounts", top_filter_mounts),
        ("ns_index_entries", ns_index_entries),
        ("benign_runtime_default", benign_runtime_default),
        ("restart_under_load", restart_under_load),
    ];
    let require = std::env::var("VARMOR_REQUIRE_KERNEL_TESTS").as_deref() == Ok("1");
    let ready = kernel_ready();
    let mut failed = 0;
    let mut ran = 0;
    let mut ctx: Option<Ctx> = None;
    for (name, f) in tests {
        if !filter.is_empty() && !filter.iter().any(|x| name.contains(x.as_str())) {
            continue;
        }
        ran += 1;
        if let Err(reason) = &ready {
            if require {
                println!("test {name} ... FAILED (VARMOR_REQUIRE_KERNEL_TESTS=1): {reason}");
                failed += 1;
            } else {
                println!("test {name} ... skipped: {reason}");
            }
            continue;
        }
        let c = ctx.get_or_insert_with(Ctx::new);
        let start = Instant::now();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(c)));
        let secs = start.elapsed().as_secs_f64();
        match r {
            Ok(()) => println!("test {name} ... ok ({secs:.1}s)"),
            Err(_) => {
                println!("test {name} ... FAILED ({secs:.1}s)");
                failed += 1;
            }
        }
    }
    drop(ctx);
    if ready.is_ok() {
        let _ = destroy_pins(Path::new(PIN_ROOT));
    }
    println!(
        "\nkernel test result: {}. {ran} run, {failed} failed",
        if failed == 0 { "ok" } else { "FAILED" }
    );
    std::process::exit(if failed == 0 { 0 } else { 1 });
}

/// Whether BPF-LSM works here (mounting bpffs first inside the test VM).
fn kernel_ready() -> Result<(), String> {
    if std::env::var_os("VARMOR_IN_VM").is_some() {
        let host = HostFs::new("/");
        if !probe::is_bpffs(&host, Path::new("/sys/fs/bpf")) {
            let (src, dst, fs) = (cs("bpf"), cs("/sys/fs/bpf"), cs("bpf"));
            unsafe { libc::mount(src.as_ptr(), dst.as_ptr(), fs.as_ptr(), 0, std::ptr::null()) };
        }
        let _ = std::fs::write("/proc/sys/kernel/dmesg_restrict", "1");
        let _ = std::fs::write("/proc/sys/kernel/yama/ptrace_scope", "0");
        // Debian's level 3 checks CAP_SYS_ADMIN before CAP_PERFMON: at 2, perf_event_open asks
        // for CAP_PERFMON (the capability trigger of 38).
        let _ = std::fs::write("/proc/sys/kernel/perf_event_paranoid", "2");
    }
    if unsafe { libc::geteuid() } != 0 {
        return Err("the kernel tests need root".into());
    }
    let p = probe::probe(&HostFs::new("/"), Path::new(PIN_ROOT));
    if p.supported {
        Ok(())
    } else {
        Err(p.reason)
    }
}

/// What the tests share: one enforcer (loading the programs takes seconds under TCG) and a
/// runtime for its async API.
struct Ctx {
    e: BpfEnforcer,
    rt: tokio::runtime::Runtime,
    base: varmor_policy::ProfileBundle,
}

impl Ctx {
    fn new() -> Ctx {
        let _ = destroy_pins(Path::new(PIN_ROOT));
        let started = Instant::now();
        let e = BpfEnforcer::for_host(&HostFs::new("/"), options(PIN_ROOT));
        assert!(e.capability().available, "{}", e.capability().reason);
        println!(
            "  programs loaded and attached in {:.1}s",
            started.elapsed().as_secs_f64()
        );
        for p in e.programs() {
            println!(
                "  loaded {} (lsm/{}): {} verified instructions",
                p.name,
                p.hook,
                p.verified_instructions
                    .map_or_else(|| "?".to_string(), |n| n.to_string())
            );
        }
        let doc = varmor_policy::parse_documents(&policy_yaml("RuntimeDefault", ""))
            .into_iter()
            .next()
            .expect("doc")
            .expect("valid");
        let base = varmor_policy::compile(
            &doc.spec(),
            &varmor_policy::PolicyIdentity::namespaced("demo", "web"),
            &facts(),
        )
        .expect("compile");
        Ctx {
            e,
            rt: tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime"),
            base,
        }
    }

    fn apply(&self, name: &str, p: &BpfProfile) {
        let mut b = self.base.clone();
        b.profile_name = name.to_string();
        b.bpf = Some(p.clone());
        let o = self.rt.block_on(self.e.apply(&RevisedBundle {
            bundle: b,
            revision: 1,
        }));
        assert_eq!(o.status, ResultStatus::Applied, "{name}: {o:?}");
    }

    fn bind(&self, proc_: &Proc, profile: &str, pod_ips: &[IpAddr]) {
        let o = self.rt.block_on(self.e.bind(&proc_.info(pod_ips), profile));
        assert_eq!(o.status, ResultStatus::Applied, "{o:?}");
    }

    fn unbind(&self, proc_: &Proc) {
        self.rt.block_on(self.e.unbind(&proc_.info(&[])));
    }

    fn remove(&self, name: &str) {
        self.rt.block_on(self.e.remove(name));
    }

    fn events(&self) -> Vec<BpfEvent> {
        self.e.read_events().into_iter().map(|(e, _)| e).collect()
    }
}

fn options(root: &str) -> BpfOptions {
    BpfOptions {
        pin_root: PathBuf::from(root),
        event_thread: false,
        grace: Duration::ZERO,
    }
}

fn cs(s: &str) -> CString {
    CString::new(s).expect("no NUL")
}

// ---- roots and helper processes -------------------------------------------------------------

/// A tmpfs (or given) directory tree a helper chroots into.
struct Root {
    dir: PathBuf,
    mounted: bool,
}

impl Root {
    fn tmpfs(name: &str) -> Root {
        let dir = PathBuf::from(format!("/tmp/varmor-kt/{name}"));
        std::fs::create_dir_all(&dir).expect("mkdir root");
        let (s, d) = (cs("tmpfs"), cs(dir.to_str().expect("utf8")));
        let r = unsafe { libc::mount(s.as_ptr(), d.as_ptr(), s.as_ptr(), 0, std::ptr::null()) };
        assert_eq!(r, 0, "mount tmpfs at {}", dir.display());
        let root = Root { dir, mounted: true };
        root.standard();
        root
    }

    fn at(dir: PathBuf) -> Root {
        let root = Root {
            dir,
            mounted: false,
        };
        root.standard();
        root
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.join(p.trim_start_matches('/'))
    }

    fn dir(&self, p: &str) {
        std::fs::create_dir_all(self.path(p)).unwrap_or_else(|e| panic!("mkdir {p}: {e}"));
    }

    fn file(&self, p: &str, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        let path = self.path(p);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir parent");
        std::fs::write(&path, b"").unwrap_or_else(|e| panic!("create {p}: {e}"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    /// What every root has: the capability triggers' files and scratch directories.
    fn standard(&self) {
        for d in ["/capwork", "/lnk", "/mnt-t", "/deep", "/tmp"] {
            self.dir(d);
        }
        self.file("/capwork/secret0000", 0o000);
        self.file("/capwork/fcap", 0o644);
        self.file("/capwork/foreign", 0o644);
        let f = cs(self.path("/capwork/foreign").to_str().expect("utf8"));
        unsafe { libc::chown(f.as_ptr(), 1234, 1234) };
        // Group 1234, which the helper is not in (CAP_FSETID).
        self.file("/capwork/sgid", 0o755);
        let f = cs(self.path("/capwork/sgid").to_str().expect("utf8"));
        unsafe { libc::chown(f.as_ptr(), 0, 1234) };
    }

    /// Creates files and directories for a set of absolute paths: a path another one lies
    /// under is a directory, the others are files. Returns (files, dirs).
    fn tree(&self, paths: &[String]) -> (Vec<String>, Vec<String>) {
        let set: std::collections::BTreeSet<&str> = paths.iter().map(String::as_str).collect();
        let mut files = Vec::new();
        let mut dirs = Vec::new();
        for p in paths {
            let prefix = format!("{}/", p.trim_end_matches('/'));
            let is_dir = p == "/" || set.iter().any(|q| q.starts_with(&prefix));
            if is_dir {
                self.dir(p);
                dirs.push(p.clone());
            }
        }
        for p in paths {
            if dirs.contains(p) {
                continue;
            }
            if self.path(p).is_dir() {
                dirs.push(p.clone());
                continue;
            }
            self.file(p, 0o755);
            files.push(p.clone());
        }
        (files, dirs)
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        if self.mounted {
            let d = cs(self.dir.to_str().expect("utf8"));
            unsafe { libc::umount2(d.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// A helper process in its own mount namespace, chrooted into a root.
struct Proc {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pid: i32,
    ns: u32,
    /// A child of the helper in the same namespace.
    sibling: i32,
}

impl Proc {
    fn spawn(root: &Root) -> Proc {
        let mut child = Command::new(std::env::current_exe().expect("exe"))
            .env("VARMOR_KT_HELPER", "1")
            .env("VARMOR_KT_ROOT", &root.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn helper");
        let stdin = child.stdin.take().expect("stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let ready = read_answer(&mut stdout);
        let w: Vec<&str> = ready.split(' ').collect();
        assert_eq!(w[0], "ready", "helper: {ready}");
        let ns = varmor_agent::enforcer::bpf::parse_ns_link(w[2]).expect("mnt ns");
        Proc {
            child,
            stdin,
            stdout,
            pid: w[1].parse().expect("pid"),
            ns,
            sibling: w[3].parse().expect("pid"),
        }
    }

    fn call(&mut self, cmd: &str) -> String {
        writeln!(self.stdin, "{cmd}").expect("write");
        self.stdin.flush().expect("flush");
        read_answer(&mut self.stdout)
    }

    fn errno(&mut self, cmd: &str) -> i32 {
        let a = self.call(cmd);
        a.parse()
            .unwrap_or_else(|_| panic!("{cmd}: unexpected answer {a:?}"))
    }

    fn info(&self, pod_ips: &[IpAddr]) -> ContainerInfo {
        ContainerInfo {
            id: format!("helper-{}", self.pid),
            name: "helper".into(),
            pid: self.pid as u32,
            mnt_ns_id: self.ns,
            pod_ips: pod_ips.to_vec(),
            ..Default::default()
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_answer(r: &mut BufReader<ChildStdout>) -> String {
    let mut line = String::new();
    loop {
        line.clear();
        let n = r.read_line(&mut line).expect("read");
        assert!(n > 0, "the helper exited");
        if let Some(a) = line.trim_end().strip_prefix("@@") {
            return a.to_string();
        }
    }
}

// ---- expectations ---------------------------------------------------------------------------

fn denies(p: &BpfProfile, a: &Access) -> bool {
    decide(p, a).decision == Decision::Deny
}

fn event_name(p: &BpfProfile, a: &Access) -> Vec<&'static str> {
    decide(p, a).event.map(|e| e.as_str()).into_iter().collect()
}

fn open_flags(perms: u32) -> i32 {
    match perms {
        x if x == perm::READ => libc::O_RDONLY,
        x if x == perm::WRITE => libc::O_WRONLY,
        x if x == perm::READ | perm::WRITE => libc::O_RDWR,
        x if x == perm::APPEND => libc::O_WRONLY | libc::O_APPEND,
        x if x == perm::READ | perm::APPEND => libc::O_RDWR | libc::O_APPEND,
        other => panic!("no open flags for {other:#x}"),
    }
}

/// Whether the capability trigger of `cap` fails under `p` (some syscalls check more than one
/// capability, or a ptrace permission too).
fn cap_trigger_denied(p: &BpfProfile, cap: u32) -> bool {
    let c = |n| denies(p, &Access::Capability(n));
    match cap {
        19 => {
            c(19)
                || denies(
                    p,
                    &Access::Ptrace {
                        permission: ptrace::READ,
                        external: false,
                        peer_is_host: false,
                    },
                )
                || denies(
                    p,
                    &Access::Ptrace {
                        permission: ptrace::READBY,
                        external: false,
                        peer_is_host: false,
                    },
                )
        }
        _ => c(cap),
    }
}

/// The errno a denied capability trigger fails with.
fn cap_errno(cap: u32) -> i32 {
    match cap {
        1 | 10 | 15 | 23 | 28 | 38 => libc::EACCES,
        _ => libc::EPERM,
    }
}

/// One comparison of kernel and reference.
struct Tally {
    case: String,
    compared: usize,
    by_kind: BTreeMap<&'static str, usize>,
    /// Candidates per kind before sampling.
    offered: BTreeMap<&'static str, usize>,
    mismatches: Vec<String>,
}

impl Tally {
    fn offer(&mut self, kind: &'static str, n: usize) {
        *self.offered.entry(kind).or_default() += n;
    }

    fn new(case: &str) -> Tally {
        Tally {
            case: case.into(),
            compared: 0,
            by_kind: BTreeMap::new(),
            offered: BTreeMap::new(),
            mismatches: Vec::new(),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn check(
        &mut self,
        kind: &'static str,
        what: &str,
        want_deny: bool,
        deny_errno: i32,
        got: i32,
        want_ev: Vec<&'static str>,
        mut got_ev: Vec<&'static str>,
    ) {
        self.compared += 1;
        *self.by_kind.entry(kind).or_default() += 1;
        got_ev.sort_unstable();
        let mut want_ev = want_ev;
        want_ev.sort_unstable();
        let denied = got == deny_errno;
        if denied != want_deny || got_ev != want_ev {
            self.mismatches.push(format!(
                "{}: {kind} {what}: errno {got} (want {}), events {got_ev:?} (want {want_ev:?})",
                self.case,
                if want_deny {
                    format!("{deny_errno}")
                } else {
                    "not EPERM".into()
                },
            ));
        }
    }
}

fn actions(evs: &[BpfEvent], f: impl Fn(&BpfEvent) -> bool) -> Vec<&'static str> {
    evs.iter()
        .filter(|e| f(e))
        .map(|e| e.action_name())
        .collect()
}

// ---- the differential test ------------------------------------------------------------------

fn differential(ctx: &Ctx) {
    let mut total = 0;
    let mut offered_total = 0;
    let mut by_kind: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut mismatches = Vec::new();
    let mut cases = corpus();
    cases.push(thousand_rules_case());
    let per = per_outcome();
    println!(
        "  sampling: {} per kind and expected outcome (VARMOR_KT_FULL=1 for every access)",
        if per == usize::MAX {
            "all".to_string()
        } else {
            per.to_string()
        }
    );
    for case in &cases {
        let started = Instant::now();
        let t = differential_case(ctx, case, per);
        let offered: usize = t.offered.values().sum();
        println!(
            "  {}: {} accesses compared (of {offered} generated) in {:.1}s {:?}",
            case.name,
            t.compared,
            started.elapsed().as_secs_f64(),
            t.by_kind
        );
        total += t.compared;
        offered_total += offered;
        for (k, n) in t.by_kind {
            *by_kind.entry(k).or_default() += n;
        }
        mismatches.extend(t.mismatches);
    }
    println!(
        "  differential: {total} accesses (of {offered_total} generated) over {} profiles, {by_kind:?}",
        cases.len()
    );
    for kind in [
        "open",
        "open-dir",
        "exec",
        "capability",
        "socket",
        "connect",
        "ptrace",
        "link",
        "rename-onto",
        "rename-away",
        "symlink",
        "umount",
        "move_mount",
        "mount",
    ] {
        assert!(
            by_kind.get(kind).copied().unwrap_or(0) > 0,
            "the sample covers no {kind} access"
        );
    }
    assert!(
        mismatches.is_empty(),
        "{} mismatches:\n{}",
        mismatches.len(),
        mismatches[..mismatches.len().min(60)].join("\n")
    );
}

fn differential_case(ctx: &Ctx, case: &Case, per: usize) -> Tally {
    let p = &case.profile;
    let name = format!("kt-{}", case.name);
    let mut t = Tally::new(&case.name);
    // Candidates come from the rules' patterns (a handful of them when there are many); the
    // expected verdicts always come from the whole profile.
    let cand = candidates_of(p);
    let root = Root::tmpfs(&case.name);
    // Mount points for umount and move_mount, sampled by what umount and move_mount get.
    let mount_dirs_all: Vec<String> = mount_sources(&cand)
        .into_iter()
        .filter(|s| s.starts_with('/') && s.len() > 1 && s.len() < 200)
        .collect();
    t.offer("umount", mount_dirs_all.len());
    t.offer("move_mount", mount_dirs_all.len());
    let mount_dirs = sample(&case.name, "mount-dir", mount_dirs_all.clone(), per, |m| {
        (
            m.clone(),
            format!(
                "{}{}",
                outcome(p, &Access::Umount { path: m.clone() }),
                outcome(p, &Access::MoveMount { path: m.clone() })
            ),
        )
    });
    // Opens (path and permissions) and execs, sampled by the requested permissions, the
    // outcome and the path's length.
    let mut paths_all = paths_for(&cand);
    paths_all.retain(|x| !mount_dirs_all.iter().any(|m| x == m));
    let open_all: Vec<(String, u32)> = paths_all
        .iter()
        .flat_map(|x| OPEN_PERMS.iter().map(move |&perms| (x.clone(), perms)))
        .collect();
    t.offer("open", open_all.len());
    t.offer("exec", paths_all.len());
    let opens = sample(&case.name, "open", open_all, per, |(x, perms)| {
        let acc = Access::File {
            path: x.clone(),
            permissions: *perms,
        };
        (
            format!("{x} {perms}"),
            format!("{perms} {} {}", outcome(p, &acc), length_class(x)),
        )
    });
    let execs = sample(&case.name, "exec", paths_all, per, |x| {
        let acc = Access::Exec { path: x.clone() };
        (
            x.clone(),
            format!("{} {}", outcome(p, &acc), length_class(x)),
        )
    });
    let paths: Vec<String> = opens
        .iter()
        .map(|(x, _)| x.clone())
        .chain(execs.iter().cloned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let (files, dirs) = root.tree(&paths);
    for m in &mount_dirs {
        if !root.path(m).is_file() && !files.iter().any(|f| f.starts_with(&format!("{m}/"))) {
            root.dir(m);
        }
    }
    // Mount points must not hide one another.
    let umount_dirs: Vec<String> = mount_dirs
        .iter()
        .filter(|m| root.path(m).is_dir())
        .filter(|m| {
            !mount_dirs
                .iter()
                .any(|o| o != *m && m.starts_with(&format!("{o}/")))
        })
        .cloned()
        .collect();
    let mounts_all = mount_calls(&cand);
    t.offer("mount", mounts_all.len());
    let mounts = sample(
        &case.name,
        "mount",
        mounts_all,
        per,
        |(src, fstype, flags)| {
            let acc = Access::Mount {
                source: src.clone(),
                fstype: fstype.clone(),
                flags: *flags,
            };
            let typed = flags & (mount::BIND | mount::REMOUNT | mount::MOVE | PROPAGATION) == 0;
            (
                format!("{src} {fstype} {flags}"),
                format!("{} {typed}", outcome(p, &acc)),
            )
        },
    );
    for i in 0..mounts.len() + umount_dirs.len() + 2 {
        root.dir(&format!("/mnt-t/{i}"));
    }
    let link_all: Vec<String> = files.iter().filter(|f| f.len() < 200).cloned().collect();
    for k in ["link", "rename-onto", "rename-away", "symlink"] {
        t.offer(k, link_all.len());
    }
    let link_files = sample(
        &case.name,
        "link",
        link_all,
        per.min(LINK_PER_OUTCOME),
        |f| (f.clone(), link_outcome(p, f)),
    );
    for i in 0..link_files.len() {
        root.file(&format!("/lnk/src{i}"), 0o644);
    }
    let other_root = Root::tmpfs(&format!("{}-peer", case.name));
    let mut a = Proc::spawn(&root);
    let mut b = Proc::spawn(&other_root);
    ctx.apply(&name, p);
    ctx.bind(&a, &name, &case.pod_ips);
    ctx.events();

    // Files and programs.
    for path in &files {
        for &(_, perms) in opens.iter().filter(|(x, _)| x == path) {
            let acc = Access::File {
                path: path.clone(),
                permissions: perms,
            };
            let got = a.errno(&format!("open {} {path}", open_flags(perms)));
            let evs = ctx.events();
            t.check(
                "open",
                &format!("{path} {perms:#x}"),
                denies(p, &acc),
                libc::EPERM,
                got,
                event_name(p, &acc),
                actions(&evs, |e| e.kind == VA_EV_FILE && e.path == *path),
            );
        }
        if !execs.contains(path) {
            continue;
        }
        let acc = Access::Exec { path: path.clone() };
        let got = a.errno(&format!("exec {path}"));
        let evs = ctx.events();
        t.check(
            "exec",
            path,
            denies(p, &acc),
            libc::EPERM,
            got,
            event_name(p, &acc),
            actions(&evs, |e| e.kind == VA_EV_EXEC && e.path == *path),
        );
    }
    for path in &dirs {
        let acc = Access::File {
            path: path.clone(),
            permissions: perm::READ,
        };
        let got = a.errno(&format!("open {} {path}", libc::O_RDONLY));
        let evs = ctx.events();
        t.check(
            "open-dir",
            path,
            denies(p, &acc),
            libc::EPERM,
            got,
            event_name(p, &acc),
            actions(&evs, |e| e.kind == VA_EV_FILE && e.path == *path),
        );
    }

    // Capabilities.
    t.offer("capability", helper::TRIGGERED_CAPS.len());
    let caps = sample(
        &case.name,
        "capability",
        helper::TRIGGERED_CAPS.to_vec(),
        per,
        |&cap| {
            (
                cap.to_string(),
                format!(
                    "{} {:?}",
                    cap_trigger_denied(p, cap),
                    event_name(p, &Access::Capability(cap))
                ),
            )
        },
    );
    for cap in caps {
        let acc = Access::Capability(cap);
        let got = a.errno(&format!("cap {cap}"));
        let evs = ctx.events();
        let mut got_ev = actions(&evs, |e| e.kind == VA_EV_CAPABILITY && e.perms == cap);
        got_ev.dedup();
        t.check(
            "capability",
            &cap.to_string(),
            cap_trigger_denied(p, cap),
            cap_errno(cap),
            got,
            event_name(p, &acc),
            got_ev,
        );
    }

    // Sockets.
    let all = sockets();
    t.offer("socket", all.len());
    let socks = sample(&case.name, "socket", all, per, |&(d, ty, pr)| {
        let acc = Access::Socket {
            domain: d,
            type_: ty,
            protocol: pr,
        };
        (format!("{d}/{ty}/{pr}"), outcome(p, &acc))
    });
    for (d, ty, pr) in socks {
        let acc = Access::Socket {
            domain: d,
            type_: ty,
            protocol: pr,
        };
        let mut want = denies(p, &acc);
        let raw = d == 17 || ((d == 2 || d == 10) && ty & 0xf == 3);
        if !want && raw && denies(p, &Access::Capability(13)) {
            want = true;
        }
        let got = a.errno(&format!("socket {d} {ty} {pr}"));
        let evs = ctx.events();
        let ep = effective_protocol(d, ty, pr);
        t.check(
            "socket",
            &format!("{d}/{ty}/{pr}"),
            want,
            libc::EPERM,
            got,
            event_name(p, &acc),
            actions(&evs, |e| {
                e.kind == VA_EV_SOCKET && e.a == d && e.b == ty & 0xf && e.c == ep
            }),
        );
    }

    // connect(2).
    let mut all = Vec::new();
    for address in addresses_for(&cand, &case.pod_ips) {
        for port in ports_for(&cand) {
            all.push((address, port));
        }
    }
    t.offer("connect", all.len());
    let conns = sample(&case.name, "connect", all, per, |&(address, port)| {
        let acc = Access::Connect {
            address,
            port,
            pod_addresses: case.pod_ips.clone(),
        };
        (
            format!("{address}:{port}"),
            format!("{} {}", outcome(p, &acc), address.is_ipv4()),
        )
    });
    {
        for (address, port) in conns {
            let acc = Access::Connect {
                address,
                port,
                pod_addresses: case.pod_ips.clone(),
            };
            let family = if address.is_ipv4() { "4" } else { "6" };
            let got = a.errno(&format!("connect {family} {address} {port}"));
            let evs = ctx.events();
            t.check(
                "connect",
                &format!("{address}:{port}"),
                denies(p, &acc),
                libc::EPERM,
                got,
                event_name(p, &acc),
                actions(&evs, |e| e.kind == VA_EV_CONNECT),
            );
        }
    }

    // ptrace: (tracer, target) pairs across the container boundary and inside it.
    ptrace_cases(ctx, p, &mut t, &mut a, &mut b);
    // link, rename, symlink: the old name is checked with every permission (a new name for a
    // file would give every access to it), the new one with write.
    link_cases(ctx, p, &mut t, &mut a, &link_files);

    // Mounts: the mount points for umount are made unconfined (they hide what is under them,
    // so after the file tests), then umount, move_mount and mount(2) are tried.
    ctx.unbind(&a);
    for m in &umount_dirs {
        assert_eq!(a.errno(&format!("premount {m}")), 0, "premount {m}");
    }
    ctx.bind(&a, &name, &case.pod_ips);
    ctx.events();
    let sys_admin_denied = denies(p, &Access::Capability(21));
    for m in &umount_dirs {
        let acc = Access::Umount { path: m.clone() };
        let got = a.errno(&format!("umount {m}"));
        let evs = ctx.events();
        let want_ev = if sys_admin_denied {
            vec![]
        } else {
            event_name(p, &acc)
        };
        t.check(
            "umount",
            m,
            sys_admin_denied || denies(p, &acc),
            libc::EPERM,
            got,
            want_ev,
            actions(&evs, |e| e.kind == VA_EV_MOUNT && e.path == *m),
        );
    }
    for (i, m) in umount_dirs.iter().enumerate() {
        let acc = Access::MoveMount { path: m.clone() };
        let to = format!("/mnt-t/{}", mounts.len() + i);
        let got = a.errno(&format!("move_mount {m} {to}"));
        let evs = ctx.events();
        let want_ev = if sys_admin_denied {
            vec![]
        } else {
            event_name(p, &acc)
        };
        t.check(
            "move_mount",
            m,
            sys_admin_denied || denies(p, &acc),
            libc::EPERM,
            got,
            want_ev,
            actions(&evs, |e| e.kind == VA_EV_MOUNT && e.path == *m),
        );
    }
    for (i, (src, fstype, flags)) in mounts.iter().enumerate() {
        let acc = Access::Mount {
            source: src.clone(),
            fstype: fstype.clone(),
            flags: *flags,
        };
        let target = format!("/mnt-t/{i}");
        let cmd = format!(
            "mount {} {target} {} {flags}",
            if src.is_empty() { "-" } else { src },
            if fstype.is_empty() { "-" } else { fstype }
        );
        let got = a.errno(&cmd);
        let evs = ctx.events();
        // mount(2) runs the sb_mount hook before it checks CAP_SYS_ADMIN (umount and
        // move_mount check the capability first): the mount rules report either way.
        let want_ev = event_name(p, &acc);
        t.check(
            "mount",
            &format!("{src:?} {fstype:?} {flags:#x}"),
            sys_admin_denied || denies(p, &acc),
            libc::EPERM,
            got,
            want_ev,
            actions(&evs, |e| e.kind == VA_EV_MOUNT),
        );
    }

    ctx.unbind(&a);
    ctx.remove(&name);
    t
}

/// How many candidates of each expected outcome the differential test keeps per profile and
/// kind; `VARMOR_KT_FULL=1` keeps every candidate (for local runs: it takes far longer than
/// the CI budget under emulation).
const PER_OUTCOME: usize = 2;

/// The same for the files link/rename/symlink are tried on (four calls each).
const LINK_PER_OUTCOME: usize = 1;

/// The propagation flags of mount(2).
const PROPAGATION: u32 = mount::PRIVATE | mount::SHARED | mount::SLAVE | mount::UNBINDABLE;

fn per_outcome() -> usize {
    if std::env::var("VARMOR_KT_FULL").as_deref() == Ok("1") {
        usize::MAX
    } else {
        PER_OUTCOME
    }
}

/// The expected outcome of an access, as a short string to group candidates by. It comes from
/// the table walk (`decide_with_tables`: thousands of candidates per profile, and the reference
/// parses every rule's pattern on every call, which takes minutes under emulation); the
/// accesses kept are checked against the reference `decide`, and the host test `bpf_tables`
/// shows the two agree on every candidate.
fn outcome(p: &BpfProfile, a: &Access) -> String {
    let (decision, event) = decide_with_tables(p, a);
    format!("{decision:?}/{event:?}")
}

/// Short paths, paths beyond one walk of the scratch window, paths of thousands of bytes.
fn length_class(path: &str) -> &'static str {
    match path.len() {
        0..=255 => "short",
        256..=1023 => "medium",
        _ => "long",
    }
}

/// What the profile says about a file as the old and as the new name of link and rename.
fn link_outcome(p: &BpfProfile, f: &str) -> String {
    let all = perm::READ | perm::WRITE | perm::APPEND | perm::EXEC;
    let mut sig = String::new();
    for perms in [
        all | perm::LINK,
        all | perm::RENAME,
        perm::WRITE | perm::RENAME,
        perm::WRITE | perm::LINK,
    ] {
        sig += &outcome(
            p,
            &Access::File {
                path: f.to_string(),
                permissions: perms,
            },
        );
    }
    sig
}

/// A deterministic sample: the items grouped by `key`'s second part (the expected outcome),
/// and from each group the `per` items whose id (`key`'s first part, with the case and kind)
/// hashes lowest, in their original order. Every outcome the candidates have is kept.
fn sample<T>(
    case: &str,
    kind: &str,
    items: Vec<T>,
    per: usize,
    key: impl Fn(&T) -> (String, String),
) -> Vec<T> {
    if per == usize::MAX {
        return items;
    }
    let mut groups: BTreeMap<String, Vec<(u64, usize)>> = BTreeMap::new();
    for (i, it) in items.iter().enumerate() {
        let (id, group) = key(it);
        groups
            .entry(group)
            .or_default()
            .push((fnv1a(&format!("{case}/{kind}/{id}")), i));
    }
    let mut keep = std::collections::BTreeSet::new();
    for g in groups.values_mut() {
        g.sort_unstable();
        keep.extend(g.iter().take(per).map(|&(_, i)| i));
    }
    items
        .into_iter()
        .enumerate()
        .filter(|(i, _)| keep.contains(i))
        .map(|(_, x)| x)
        .collect()
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The profile whose patterns make the candidate accesses: the profile itself, or for one
/// with many rules of a kind 16 of them spread over the list (first, last and between).
fn candidates_of(p: &BpfProfile) -> BpfProfile {
    fn thin<T: Clone>(v: &mut Vec<T>) {
        const MAX: usize = 64;
        const KEEP: usize = 16;
        if v.len() > MAX {
            let n = v.len();
            *v = (0..KEEP)
                .map(|i| v[i * (n - 1) / (KEEP - 1)].clone())
                .collect();
        }
    }
    let mut c = p.clone();
    thin(&mut c.files);
    thin(&mut c.mounts);
    thin(&mut c.egress);
    c
}

fn link_cases(ctx: &Ctx, p: &BpfProfile, t: &mut Tally, a: &mut Proc, link_files: &[String]) {
    let all = perm::READ | perm::WRITE | perm::APPEND | perm::EXEC;
    for (i, f) in link_files.iter().enumerate() {
        let side = |path: &str, perms: u32| Access::File {
            path: path.to_string(),
            permissions: perms,
        };
        // link(f, /lnk/aI)
        let new = format!("/lnk/a{i}");
        let steps = [
            side(f, all | perm::LINK),
            side(&new, perm::WRITE | perm::LINK),
        ];
        check_two_sided(
            t,
            "link",
            p,
            &steps,
            a.errno(&format!("link {f} {new}")),
            &ctx.events(),
            &[f.as_str(), new.as_str()],
        );
        // rename(/lnk/srcI, f): replaces f when allowed.
        let src = format!("/lnk/src{i}");
        let steps = [
            side(&src, all | perm::RENAME),
            side(f, perm::WRITE | perm::RENAME),
        ];
        check_two_sided(
            t,
            "rename-onto",
            p,
            &steps,
            a.errno(&format!("rename {src} {f}")),
            &ctx.events(),
            &[src.as_str(), f.as_str()],
        );
        // rename(f, /lnk/bI): removes f when allowed.
        let away = format!("/lnk/b{i}");
        let steps = [
            side(f, all | perm::RENAME),
            side(&away, perm::WRITE | perm::RENAME),
        ];
        let got = a.errno(&format!("rename {f} {away}"));
        check_two_sided(
            t,
            "rename-away",
            p,
            &steps,
            got,
            &ctx.events(),
            &[f.as_str(), away.as_str()],
        );
        if got == 0 {
            // symlink(t, f) now that f is gone.
            let steps = [side(f, perm::WRITE | perm::LINK)];
            check_two_sided(
                t,
                "symlink",
                p,
                &steps,
                a.errno(&format!("symlink target {f}")),
                &ctx.events(),
                &[f.as_str()],
            );
        }
    }
}

/// link/rename/symlink: the sides are checked in order and the first denial stops.
fn check_two_sided(
    t: &mut Tally,
    kind: &'static str,
    p: &BpfProfile,
    steps: &[Access],
    got: i32,
    evs: &[BpfEvent],
    paths: &[&str],
) {
    let mut want_deny = false;
    let mut want_ev = Vec::new();
    for s in steps {
        want_ev.extend(event_name(p, s));
        if denies(p, s) {
            want_deny = true;
            break;
        }
    }
    let got_ev = actions(evs, |e| {
        e.kind == VA_EV_FILE && paths.contains(&e.path.as_str())
    });
    t.check(
        kind,
        &paths.join(" -> "),
        want_deny,
        libc::EPERM,
        got,
        want_ev,
        got_ev,
    );
}

/// The mount(2) calls tried on a profile.
fn mount_calls(p: &BpfProfile) -> Vec<(String, String, u32)> {
    let mut out = Vec::new();
    for src in mount_sources(p) {
        for fstype in FSTYPES {
            for &flags in MOUNT_FLAGS {
                // Bind mounts need an existing source; the others ignore or check it after the
                // hook. Keep the set small: every source with every flag, every type once.
                if *fstype != "tmpfs" && flags != 0 {
                    continue;
                }
                out.push((src.clone(), fstype.to_string(), flags));
            }
        }
    }
    out
}

fn ptrace_cases(ctx: &Ctx, p: &BpfProfile, t: &mut Tally, a: &mut Proc, b: &mut Proc) {
    let me = std::process::id() as i32;
    let host_ns = std::fs::read_link("/proc/self/ns/mnt")
        .ok()
        .and_then(|l| varmor_agent::enforcer::bpf::parse_ns_link(&l.to_string_lossy()))
        .unwrap_or(0);
    let _ = host_ns;
    for (cmd, tracer_perm, traced_perm) in [
        ("kcmp", ptrace::READ, ptrace::READBY),
        ("vmread", ptrace::TRACE, ptrace::TRACEBY),
    ] {
        let pt = |permission, external, peer_is_host| Access::Ptrace {
            permission,
            external,
            peer_is_host,
        };
        // A -> its sibling (same container): both sides are A's profile.
        let sibling = a.sibling;
        let got = a.errno(&format!("{cmd} {sibling}"));
        let evs = ctx.events();
        let tracer = pt(tracer_perm, false, false);
        let traced = pt(traced_perm, false, false);
        let want = denies(p, &tracer) || denies(p, &traced);
        let mut want_ev = event_name(p, &tracer);
        want_ev.extend(event_name(p, &traced));
        t.check(
            "ptrace",
            &format!("{cmd} container->same container"),
            want,
            libc::EPERM,
            got,
            want_ev,
            actions(&evs, |e| e.kind == VA_EV_PTRACE),
        );
        // A -> another namespace (B) and -> the host (this process).
        for (target, what) in [
            (b.pid, "container->other container"),
            (me, "container->host"),
        ] {
            let got = a.errno(&format!("{cmd} {target}"));
            let evs = ctx.events();
            let tracer = pt(tracer_perm, true, false);
            t.check(
                "ptrace",
                &format!("{cmd} {what}"),
                denies(p, &tracer),
                libc::EPERM,
                got,
                event_name(p, &tracer),
                actions(&evs, |e| e.kind == VA_EV_PTRACE),
            );
        }
        // B -> A: A is the target of a peer in another (non-host) namespace.
        let got = b.errno(&format!("{cmd} {}", a.pid));
        let evs = ctx.events();
        let traced = pt(traced_perm, true, false);
        t.check(
            "ptrace",
            &format!("{cmd} other container->container"),
            denies(p, &traced),
            libc::EPERM,
            got,
            event_name(p, &traced),
            actions(&evs, |e| e.kind == VA_EV_PTRACE),
        );
        // The host -> A: never denied on the traced side.
        let got = host_ptrace(cmd, a.pid);
        let evs = ctx.events();
        let traced = pt(traced_perm, true, true);
        t.check(
            "ptrace",
            &format!("{cmd} host->container"),
            denies(p, &traced),
            libc::EPERM,
            got,
            event_name(p, &traced),
            actions(&evs, |e| e.kind == VA_EV_PTRACE),
        );
    }
}

fn host_ptrace(cmd: &str, pid: i32) -> i32 {
    unsafe {
        let r = if cmd == "kcmp" {
            libc::syscall(libc::SYS_kcmp, libc::getpid(), pid, 0, 0, 0)
        } else {
            let mut buf = [0u8; 8];
            let local = libc::iovec {
                iov_base: buf.as_mut_ptr() as *mut libc::c_void,
                iov_len: 8,
            };
            let remote = libc::iovec {
                iov_base: 0x1000 as *mut libc::c_void,
                iov_len: 8,
            };
            libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) as i64
        };
        if r < 0 {
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
        } else {
            0
        }
    }
}

// ---- attacks --------------------------------------------------------------------------------

/// One forbidden action: the helper command, the errno it fails with when denied, the event
/// kind and how to set it up.
#[derive(Debug, Clone)]
struct Attack {
    what: String,
    cmd: String,
    deny_errno: i32,
    kind: u32,
    /// Commands run (unconfined) before the profile is bound, in both helpers.
    setup: Vec<String>,
    /// Run by the host test process instead of the helper (ptrace of a host process).
    by_peer: bool,
}

fn attack(what: impl Into<String>, cmd: impl Into<String>, kind: u32) -> Attack {
    Attack {
        what: what.into(),
        cmd: cmd.into(),
        deny_errno: libc::EPERM,
        kind,
        setup: Vec::new(),
        by_peer: false,
    }
}

fn sample_matching(pattern: &str) -> Option<String> {
    let p = Pattern::parse(pattern).ok()?;
    pattern_samples(pattern)
        .into_iter()
        .filter_map(|s| normalize(&s))
        .find(|s| p.matches(s.as_bytes()))
}

fn first_bit(mask: u64, prefer: &[u32], max: u32) -> Option<u32> {
    prefer
        .iter()
        .copied()
        .find(|b| mask & (1 << b) != 0)
        .or_else(|| (1..max).find(|b| mask & (1 << b) != 0))
}

/// The attacks a built-in rule's BPF content is for.
fn attacks_for(frags: &[BpfFragment]) -> (Vec<Attack>, Vec<String>) {
    let mut out = Vec::new();
    let mut untestable = Vec::new();
    let mut n = 0;
    for f in frags {
        n += 1;
        match *f {
            BpfFragment::File {
                pattern,
                permissions,
            } => {
                let Some(path) = sample_matching(pattern) else {
                    untestable.push(format!("no sample path for {pattern}"));
                    continue;
                };
                let perms = [perm::READ, perm::WRITE, perm::APPEND]
                    .into_iter()
                    .find(|p| permissions & p != 0)
                    .unwrap_or(perm::READ);
                out.push(attack(
                    format!("open {path} {}", perm::names(perms).join(",")),
                    format!("open {} {path}", open_flags(perms)),
                    VA_EV_FILE,
                ));
            }
            BpfFragment::Exec { pattern } => {
                let Some(path) = sample_matching(pattern) else {
                    untestable.push(format!("no sample path for {pattern}"));
                    continue;
                };
                out.push(attack(
                    format!("exec {path}"),
                    format!("exec {path}"),
                    VA_EV_EXEC,
                ));
            }
            BpfFragment::DiskDeviceFiles { .. } => {
                out.push(attack(
                    "read /dev/vda",
                    format!("open {} /dev/vda", libc::O_RDONLY),
                    VA_EV_FILE,
                ));
            }
            BpfFragment::Capabilities(mask) => {
                let before = out.len();
                for &cap in helper::TRIGGERED_CAPS {
                    if mask & (1 << cap) != 0 {
                        let mut a = attack(
                            format!("use capability {cap}"),
                            format!("cap {cap}"),
                            VA_EV_CAPABILITY,
                        );
                        a.deny_errno = cap_errno(cap);
                        out.push(a);
                    }
                }
                if out.len() == before {
                    for (cap, why) in helper::UNTRIGGERABLE_CAPS {
                        if mask & (1 << cap) != 0 {
                            untestable.push(format!("capability {cap}: {why}"));
                        }
                    }
                }
            }
            BpfFragment::Socket {
                domains,
                types,
                protocols,
            } => {
                let d = if domains == 0 {
                    2
                } else {
                    first_bit(domains, &[2, 10, 1], 46).unwrap_or(2)
                };
                let mut ty = if types == 0 {
                    1
                } else {
                    first_bit(types, &[3, 2, 1], 11).unwrap_or(1)
                };
                let pr = if protocols == 0 {
                    0
                } else {
                    first_bit(protocols, &[1, 58, 6, 17], 64).unwrap_or(0)
                };
                if pr == 1 || pr == 58 {
                    ty = 3;
                }
                if d == 38 {
                    ty = 5;
                }
                if pr == 17 {
                    ty = 2;
                }
                let d = if pr == 58 { 10 } else { d };
                out.push(attack(
                    format!("socket({d}, {ty}, {pr})"),
                    format!("socket {d} {ty} {pr}"),
                    VA_EV_SOCKET,
                ));
            }
            BpfFragment::Connect(ip) => {
                let fam = if ip.contains(':') { "6" } else { "4" };
                out.push(attack(
                    format!("connect {ip}:80"),
                    format!("connect {fam} {ip} 80"),
                    VA_EV_CONNECT,
                ));
            }
            BpfFragment::ServiceEgress { namespace, name } => {
                untestable.push(format!("egress to Service {namespace}/{name} (resolved by the manager from the Kubernetes API)"));
            }
            BpfFragment::Ptrace { permissions, .. } => {
                if permissions & ptrace::READ != 0 {
                    let mut a = attack("read a host process (kcmp)", "kcmp HOST", VA_EV_PTRACE);
                    a.by_peer = false;
                    out.push(a);
                }
                if permissions & ptrace::TRACE != 0 {
                    out.push(attack(
                        "trace a host process (process_vm_readv)",
                        "vmread HOST",
                        VA_EV_PTRACE,
                    ));
                }
            }
            BpfFragment::Mount {
                source,
                fstype,
                flags,
                ..
            } => {
                let src = if source == "**" {
                    "/srcdir".to_string()
                } else {
                    sample_matching(source).unwrap_or_else(|| source.to_string())
                };
                let target = format!("/mnt-t/a{n}");
                if flags & mount::UMOUNT != 0
                    && fstype != "*"
                    && flags & !mount::UMOUNT & (mount::BIND | mount::REMOUNT | mount::MOVE) == 0
                {
                    let mut a = attack(
                        format!("umount {src}"),
                        format!("umount {src}"),
                        VA_EV_MOUNT,
                    );
                    a.setup = vec![format!("mkdir {src}"), format!("premount {src}")];
                    out.push(a);
                } else if fstype == "none" {
                    let mut a = attack(
                        format!("bind mount {src}"),
                        format!("mount {src} {target} - {}", mount::BIND),
                        VA_EV_MOUNT,
                    );
                    a.setup = vec![format!("mkdir {src}"), format!("mkdir {target}")];
                    out.push(a);
                    let mut u = attack(
                        format!("umount {src}"),
                        format!("umount {src}"),
                        VA_EV_MOUNT,
                    );
                    u.setup = vec![format!("mkdir {src}"), format!("premount {src}")];
                    if flags & mount::UMOUNT != 0 {
                        out.push(u);
                    }
                } else {
                    let fs = if fstype == "*" { "tmpfs" } else { fstype };
                    let mut a = attack(
                        format!("mount {fs} from {src}"),
                        format!("mount {src} {target} {fs} 0"),
                        VA_EV_MOUNT,
                    );
                    a.setup = vec![format!("mkdir {target}")];
                    out.push(a);
                }
            }
            BpfFragment::DiskDeviceMounts => {
                let target = format!("/mnt-t/d{n}");
                let mut a = attack(
                    "mount /dev/vda",
                    format!("mount /dev/vda {target} tmpfs 0"),
                    VA_EV_MOUNT,
                );
                a.setup = vec![format!("mkdir {target}")];
                out.push(a);
            }
        }
    }
    (out, untestable)
}

/// Two helpers in roots prepared for a set of attacks: A is bound to the profile under test,
/// B stays unconfined. One arena serves many profiles (spawning helpers and preparing roots
/// costs seconds under emulation).
struct Arena {
    a: Proc,
    b: Proc,
    _roots: (Root, Root),
}

impl Arena {
    fn new(name: &str, attacks: &[Attack]) -> Arena {
        let root_a = Root::tmpfs(&format!("{name}-in"));
        let root_b = Root::tmpfs(&format!("{name}-out"));
        for r in [&root_a, &root_b] {
            let paths: Vec<String> = attacks
                .iter()
                .filter(|a| a.cmd.starts_with("open ") || a.cmd.starts_with("exec "))
                .map(|a| a.cmd.rsplit(' ').next().expect("path").to_string())
                .chain(["/dev/vda".to_string()])
                .collect();
            r.tree(&paths);
            // The source of bind mounts and the mount point of umount attacks: a directory.
            r.dir("/srcdir");
        }
        Arena {
            a: Proc::spawn(&root_a),
            b: Proc::spawn(&root_b),
            _roots: (root_a, root_b),
        }
    }
}

/// Runs attacks in the arena's confined helper (A, bound to `name`) and its unconfined one (B):
/// each must fail with its errno and a DENIED event inside, and not fail that way outside.
/// Returns (attacks blocked, of which succeeded outside); failures go to `failures`.
fn run_attacks(
    ctx: &Ctx,
    arena: &mut Arena,
    name: &str,
    profile: &BpfProfile,
    attacks: &[Attack],
    report: &mut Vec<String>,
    failures: &mut Vec<String>,
) -> (usize, usize) {
    let (a, b) = (&mut arena.a, &mut arena.b);
    let me = std::process::id();
    for at in attacks {
        for s in &at.setup {
            a.call(s);
            b.call(s);
        }
    }
    ctx.apply(name, profile);
    ctx.bind(a, name, &[]);
    ctx.events();
    let (mut blocked, mut outside_ok) = (0, 0);
    for at in attacks {
        let cmd = at.cmd.replace("HOST", &me.to_string());
        let got = a.errno(&cmd);
        let evs = ctx.events();
        let denied_events = evs
            .iter()
            .filter(|e| e.kind == at.kind && e.action == VA_EVENT_DENIED && e.mnt_ns == a.ns)
            .count();
        let outside = b.errno(&cmd);
        ctx.events();
        report.push(format!(
            "    {name}: {}: inside errno {got}, DENIED events {denied_events}; outside errno {outside}",
            at.what
        ));
        let mut fail = |why: String| failures.push(format!("{name}: {}: {why}", at.what));
        if got != at.deny_errno {
            fail(format!(
                "not denied inside (errno {got}, want {})",
                at.deny_errno
            ));
        } else if denied_events == 0 {
            fail("denied without a DENIED event".into());
        } else if outside == at.deny_errno {
            fail(format!("fails outside the container too (errno {outside})"));
        } else {
            blocked += 1;
            if outside == 0 {
                outside_ok += 1;
            }
        }
    }
    ctx.unbind(a);
    ctx.remove(name);
    // The next profile starts from the same roots: mounts made for umount attacks go.
    for at in attacks {
        for s in &at.setup {
            if let Some(path) = s.strip_prefix("premount ") {
                for h in [&mut *a, &mut *b] {
                    for _ in 0..4 {
                        if h.errno(&format!("umount {path}")) != 0 {
                            break;
                        }
                    }
                }
            }
        }
    }
    (blocked, outside_ok)
}

fn builtin_attacks(ctx: &Ctx) {
    let mut rules = 0;
    let mut attacks_total = 0;
    let mut outside_ok = 0;
    let mut report = Vec::new();
    let mut failures = Vec::new();
    let mut untestable_all = Vec::new();
    let mut plans = Vec::new();
    for rule in catalog::all().iter().filter(|r| r.supports_bpf()) {
        let list = match rule.category {
            catalog::Category::Hardening => format!("      hardeningRules: [{}]\n", rule.name),
            catalog::Category::AttackProtection => format!(
                "      attackProtectionRules:\n      - rules: [{}]\n",
                rule.name
            ),
            catalog::Category::VulMitigation => {
                format!("      vulMitigationRules: [{}]\n", rule.name)
            }
        };
        let profile = profile_of(&policy_yaml(
            "EnhanceProtect",
            &format!("      privileged: true\n      auditViolations: true\n{list}"),
        ));
        let (attacks, untestable) = attacks_for(rule.bpf);
        for u in untestable {
            untestable_all.push(format!("{}: {u}", rule.name));
        }
        if attacks.is_empty() {
            continue;
        }
        plans.push((rule.name, profile, attacks));
    }
    let all: Vec<Attack> = plans.iter().flat_map(|p| p.2.iter().cloned()).collect();
    let mut arena = Arena::new("builtin", &all);
    for (rule, profile, attacks) in &plans {
        let (b, ok) = run_attacks(
            ctx,
            &mut arena,
            &format!("bi-{rule}"),
            profile,
            attacks,
            &mut report,
            &mut failures,
        );
        rules += 1;
        attacks_total += b;
        outside_ok += ok;
    }
    for r in &report {
        println!("{r}");
    }
    for u in &untestable_all {
        println!("    not attacked: {u}");
    }
    println!("  built-in rules attacked: {rules}, attacks denied inside: {attacks_total}, of which succeeded outside: {outside_ok}");
    assert!(
        failures.is_empty(),
        "{} attacks failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // Every rule has a local effect except egress to a Service (resolved by the manager) and
    // capabilities Linux never checks on this kernel.
    let untriggerable: u64 = helper::UNTRIGGERABLE_CAPS
        .iter()
        .fold(0, |m, (cap, _)| m | (1u64 << cap));
    let expected = catalog::all()
        .iter()
        .filter(|r| {
            r.supports_bpf()
                && r.bpf.iter().any(|f| match f {
                    BpfFragment::ServiceEgress { .. } => false,
                    BpfFragment::Capabilities(mask) => mask & !untriggerable != 0,
                    _ => true,
                })
        })
        .count();
    assert_eq!(
        rules, expected,
        "every BPF built-in rule with a local effect is attacked"
    );
}

fn raw_rule_attacks(ctx: &Ctx) {
    // A TCP listener on a local address: connecting is denied inside, works outside.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            drop(s)
        }
    });
    let rules = format!(
        "      privileged: true\n      auditViolations: true\n{}",
        RAW_RULES.replace(
            "            - ip: unspecified\n",
            &format!("            - ip: unspecified\n            - ip: 127.0.0.1\n              ports:\n              - port: {port}\n"),
        )
    );
    let profile = profile_of(&policy_yaml("EnhanceProtect", &rules));
    let o = |p: u32, path: &str| format!("open {} {path}", open_flags(p));
    let mut attacks = vec![
        attack("read /etc/passwd", o(perm::READ, "/etc/passwd"), VA_EV_FILE),
        attack(
            "write /srv/beta/conf/bq.yaml",
            o(perm::WRITE, "/srv/beta/conf/bq.yaml"),
            VA_EV_FILE,
        ),
        attack(
            "read /data/app7/x/y/id.key",
            o(perm::READ, "/data/app7/x/y/id.key"),
            VA_EV_FILE,
        ),
        attack(
            "append /etc/ssl/server.pem",
            o(perm::APPEND, "/etc/ssl/server.pem"),
            VA_EV_FILE,
        ),
        attack("exec /usr/sbin/arping", "exec /usr/sbin/arping", VA_EV_EXEC),
        attack("exec /bin/nc", "exec /bin/nc", VA_EV_EXEC),
        attack("exec /opt/tools/scan", "exec /opt/tools/scan", VA_EV_EXEC),
        attack("packet socket", "socket 17 3 0", VA_EV_SOCKET),
        attack("raw socket", "socket 2 3 6", VA_EV_SOCKET),
        attack("icmp socket", "socket 2 2 1", VA_EV_SOCKET),
        attack("udp6 socket", "socket 10 2 0", VA_EV_SOCKET),
        attack(
            format!("tcp connect 127.0.0.1:{port}"),
            format!("tcp 4 127.0.0.1 {port}"),
            VA_EV_CONNECT,
        ),
        attack(
            "connect 10.20.30.40",
            "connect 4 10.20.30.40 443",
            VA_EV_CONNECT,
        ),
        attack(
            "connect 192.168.7.7:22",
            "connect 4 192.168.7.7 22",
            VA_EV_CONNECT,
        ),
        attack(
            "connect [fd00:10::25]:8050",
            "connect 6 fd00:10::25 8050",
            VA_EV_CONNECT,
        ),
        attack("connect any:25", "connect 4 10.1.1.1 25", VA_EV_CONNECT),
        attack("trace a host process", "vmread HOST", VA_EV_PTRACE),
        attack(
            "bind mount /proc",
            format!("mount /proc /mnt-t/r1 - {}", mount::BIND),
            VA_EV_MOUNT,
        ),
        attack(
            "mount tmpfs ro",
            format!("mount tmpfs /mnt-t/r2 tmpfs {}", mount::RDONLY),
            VA_EV_MOUNT,
        ),
        attack(
            "mount sysfs rw",
            "mount sysfs /mnt-t/r3 sysfs 0",
            VA_EV_MOUNT,
        ),
        attack("umount /mnt/x", "umount /mnt/x", VA_EV_MOUNT),
        attack(
            "move_mount /mnt/y",
            "move_mount /mnt/y /mnt-t/r4",
            VA_EV_MOUNT,
        ),
    ];
    for a in attacks.iter_mut() {
        a.setup = match a.what.as_str() {
            "umount /mnt/x" => vec![
                "mkdir /mnt".into(),
                "mkdir /mnt/x".into(),
                "premount /mnt/x".into(),
            ],
            "move_mount /mnt/y" => vec![
                "mkdir /mnt".into(),
                "mkdir /mnt/y".into(),
                "premount /mnt/y".into(),
                "mkdir /mnt-t/r4".into(),
            ],
            w if w.starts_with("bind mount") => {
                vec!["mkdir /proc".into(), "mkdir /mnt-t/r1".into()]
            }
            w if w.starts_with("mount tmpfs") => vec!["mkdir /mnt-t/r2".into()],
            w if w.starts_with("mount sysfs") => vec!["mkdir /mnt-t/r3".into()],
            _ => vec![],
        };
    }
    let mut report = Vec::new();
    let mut failures = Vec::new();
    let mut arena = Arena::new("raw", &attacks);
    let (blocked, ok) = run_attacks(
        ctx,
        &mut arena,
        "raw",
        &profile,
        &attacks,
        &mut report,
        &mut failures,
    );
    drop(arena);
    for r in &report {
        println!("{r}");
    }
    assert!(
        failures.is_empty(),
        "{} attacks failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // Exact patterns are exact, and what is not named is allowed.
    let root = Root::tmpfs("raw-allowed");
    root.tree(&[
        "/etc/passwd-".into(),
        "/etc/passwdX".into(),
        "/usr/bin/ncat".into(),
        "/x/y/server.pem.bak".into(),
    ]);
    let mut a = Proc::spawn(&root);
    ctx.apply("raw2", &profile);
    ctx.bind(&a, "raw2", &[]);
    for cmd in [
        o(perm::READ, "/etc/passwd-"),
        o(perm::READ, "/etc/passwdX"),
        "exec /usr/bin/ncat".into(),
        o(perm::WRITE, "/x/y/server.pem.bak"),
        "mount sysfs /mnt-t ro-sysfs 1".replace("ro-sysfs", "sysfs"),
        "connect 4 10.20.30.41 443".into(),
        "connect 4 192.168.7.7 23".into(),
    ] {
        let got = a.errno(&cmd);
        assert_ne!(got, libc::EPERM, "{cmd} must be allowed");
    }
    ctx.unbind(&a);
    ctx.remove("raw2");
    println!("  raw rules: {blocked} attacks denied inside, {ok} of them succeeded outside");
}

fn long_paths_fail_closed(ctx: &Ctx) {
    let root = Root::tmpfs("long");
    // /deep/<250 x 17>/leaf: more than 4,095 bytes, reached with relative opens.
    let name = "n".repeat(250);
    deep_tree(&root.path("/deep"), &name, 17);
    // A rule under /deep: the path must be resolved to be decided (the top filter cannot tell).
    let profile = profile_of(&policy_yaml(
        "EnhanceProtect",
        "      privileged: true\n      bpfRawRules:\n        files:\n        - pattern: /deep/**\n          permissions: [write]\n",
    ));
    let mut a = Proc::spawn(&root);
    let mut b = Proc::spawn(&root);
    ctx.apply("long", &profile);
    ctx.bind(&a, "long", &[]);
    ctx.events();
    let got = a.errno(&format!("openat_deep 17 {name}"));
    let evs = ctx.events();
    assert_eq!(
        got,
        libc::EPERM,
        "a path the enforcer cannot resolve is denied"
    );
    let e = evs
        .iter()
        .find(|e| e.kind == VA_EV_FILE && e.mnt_ns == a.ns)
        .expect("an event");
    assert_eq!(e.action, VA_EVENT_DENIED);
    assert!(e.flags & VA_EVF_PATH_ERROR != 0);
    assert!(e.event_json()["reason"].is_string());
    // 15 levels (3,765 bytes) are resolved and allowed; outside, every depth works.
    assert_eq!(
        a.errno(&format!("openat_deep 15 {name}")),
        libc::ENOENT,
        "no leaf at 15: resolved, then ENOENT"
    );
    assert_eq!(b.errno(&format!("openat_deep 17 {name}")), 0);
    // Under RuntimeDefault no rule can match below /deep: the top filter decides from the
    // first component, so the long path is allowed without being resolved.
    ctx.apply("long", &profile_of(&policy_yaml("RuntimeDefault", "")));
    ctx.events();
    assert_eq!(a.errno(&format!("openat_deep 17 {name}")), 0);
    assert!(
        ctx.events().iter().all(|e| e.mnt_ns != a.ns),
        "no event for an open no rule can match"
    );
    ctx.unbind(&a);
    ctx.remove("long");
    println!(
        "  a 4,267-byte path: EPERM with a DENIED event (fail closed) when a rule lies under its \
         first component, allowed when none does; 3,765 bytes: resolved"
    );
}

/// Creates `depth` nested directories named `name` under `base` and a file `leaf` in the
/// deepest one, with relative `mkdirat`/`openat` calls: the whole path is longer than
/// `PATH_MAX`, which path-based calls refuse.
fn deep_tree(base: &Path, name: &str, depth: usize) {
    let n = cs(name);
    let mut fd = unsafe {
        libc::open(
            cs(base.to_str().expect("utf8")).as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY,
        )
    };
    assert!(
        fd >= 0,
        "open {}: {}",
        base.display(),
        std::io::Error::last_os_error()
    );
    for level in 0..depth {
        let next = unsafe {
            libc::mkdirat(fd, n.as_ptr(), 0o755);
            libc::openat(fd, n.as_ptr(), libc::O_PATH | libc::O_DIRECTORY)
        };
        assert!(
            next >= 0,
            "deep dirs, level {level}: {}",
            std::io::Error::last_os_error()
        );
        unsafe { libc::close(fd) };
        fd = next;
    }
    let leaf = cs("leaf");
    let f = unsafe { libc::openat(fd, leaf.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o644) };
    assert!(f >= 0, "leaf: {}", std::io::Error::last_os_error());
    unsafe {
        libc::close(f);
        libc::close(fd);
    }
}

/// The top filter (file_open reads only the first component of the path when no file rule can
/// match below it): the kernel's verdicts equal the full path's on the root mount, across a
/// mount on a top-level directory (the filter crosses it), a mount deeper down and a bind
/// mount of a subdirectory (the path is resolved instead), and for a file at the top level.
fn top_filter_mounts(ctx: &Ctx) {
    let root = Root::tmpfs("top");
    let mount_at = |src: &str, dir: &str, fstype: &str, flags: libc::c_ulong| {
        let (s, d, t) = (
            cs(src),
            cs(root.path(dir).to_str().expect("utf8")),
            cs(fstype),
        );
        let r = unsafe { libc::mount(s.as_ptr(), d.as_ptr(), t.as_ptr(), flags, std::ptr::null()) };
        assert_eq!(r, 0, "mount at {dir}: {}", std::io::Error::last_os_error());
    };
    for d in ["/vol", "/etc/sub", "/other", "/alias"] {
        root.dir(d);
    }
    mount_at("tmpfs", "/vol", "tmpfs", 0);
    mount_at("tmpfs", "/etc/sub", "tmpfs", 0);
    mount_at("tmpfs", "/other", "tmpfs", 0);
    let files = [
        "/vol/secret/x",
        "/vol/open",
        "/etc/sub/file",
        "/etc/shadow",
        "/etc/passwd",
        "/usr/lib/libc.so",
        "/other/secret/x",
        "/toplevel",
    ];
    for f in files {
        root.file(f, 0o644);
    }
    // /alias shows /vol/secret: its files' paths start with /alias.
    let src = root.path("/vol/secret");
    mount_at(src.to_str().expect("utf8"), "/alias", "", libc::MS_BIND);
    let rules = "      privileged: true\n      auditViolations: true\n      bpfRawRules:\n        files:\n        - pattern: /vol/secret/**\n          permissions: [read]\n        - pattern: /etc/sub/**\n          permissions: [read]\n        - pattern: /etc/shadow\n          permissions: [read]\n        - pattern: /toplevel\n          permissions: [read]\n";
    let profile = profile_of(&policy_yaml("EnhanceProtect", rules));
    let enc = varmor_agent::enforcer::bpf::encode::encode(&profile).expect("encode");
    assert_ne!(
        enc.header.flags & VA_HF_TOP_FILTER,
        0,
        "the profile gets the top filter"
    );
    let model = varmor_agent::enforcer::bpf::model::Model::new(&enc);
    let mut a = Proc::spawn(&root);
    ctx.apply("top", &profile);
    ctx.bind(&a, "top", &[]);
    let mut filtered = 0;
    let mut denied = 0;
    // Every file, and /vol/secret/x through the bind mount.
    for path in files.into_iter().chain(["/alias/x"]) {
        let access = Access::File {
            path: path.into(),
            permissions: perm::READ,
        };
        let want = if denies(&profile, &access) {
            libc::EPERM
        } else {
            0
        };
        denied += usize::from(want != 0);
        filtered += usize::from(model.top_says_no_rule(path));
        assert_eq!(
            a.errno(&format!("open {} {path}", libc::O_RDONLY)),
            want,
            "open {path}"
        );
    }
    assert_eq!(
        denied, 4,
        "the denials: /vol/secret, /etc/sub, /etc/shadow, /toplevel"
    );
    assert!(
        filtered >= 3,
        "the filter decides /usr, /other and /alias opens"
    );
    ctx.unbind(&a);
    ctx.remove("top");
    println!(
        "  top filter: 9 opens across 4 mounts, {denied} denied, {filtered} decided by the filter"
    );
}

/// The namespace index in front of v_containers: a bound container is found through its entry,
/// through the hash when the entry is shared with another namespace, and an entry naming
/// another namespace without the shared mark reads as not bound (the programs do consult the
/// index). The entries are overwritten here with map updates while the process is idle.
fn ns_index_entries(ctx: &Ctx) {
    use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData};
    use varmor_agent::enforcer::bpf::nsindex::{index_of, read, Lookup};
    let root = Root::tmpfs("nsi");
    root.file("/secret", 0o644);
    let rules = "      privileged: true\n      bpfRawRules:\n        files:\n        - pattern: /secret\n          permissions: [read]\n";
    let profile = profile_of(&policy_yaml("EnhanceProtect", rules));
    let mut a = Proc::spawn(&root);
    ctx.apply("nsi", &profile);
    ctx.bind(&a, "nsi", &[]);
    let dir = Path::new(PIN_ROOT).join(format!("v{VA_LAYOUT_VERSION}"));
    let pinned = |name: &str| {
        Map::from_map_data(MapData::from_pin(dir.join(name)).expect("pinned")).expect("a map")
    };
    let mut index: Array<MapData, u64> = Array::try_from(pinned("v_ns_index")).expect("an array");
    let containers: BpfHashMap<MapData, u32, [u8; CONTAINER_SIZE]> =
        BpfHashMap::try_from(pinned("v_containers")).expect("a hash");
    let slot = ContainerEntry::from_bytes(&containers.get(&a.ns, 0).expect("bound")).slot;
    let i = index_of(a.ns);
    let entry = index.get(&i, 0).expect("entry");
    assert_eq!(read(entry, a.ns), Lookup::Slot(slot), "entry {entry:#x}");
    let open = |a: &mut Proc| a.errno(&format!("open {} /secret", libc::O_RDONLY));
    assert_eq!(open(&mut a), libc::EPERM, "found through the index");
    let other = u64::from(a.ns.wrapping_add(VA_NS_INDEX_SIZE)) << 32;
    index
        .set(i, other | u64::from(VA_NSI_BOUND | VA_NSI_SHARED | 1), 0)
        .expect("set");
    assert_eq!(open(&mut a), libc::EPERM, "found through the hash");
    index
        .set(i, other | u64::from(VA_NSI_BOUND | 1), 0)
        .expect("set");
    assert_eq!(
        open(&mut a),
        0,
        "an entry naming another namespace: not bound"
    );
    index.set(i, entry, 0).expect("restore");
    assert_eq!(open(&mut a), libc::EPERM, "restored");
    ctx.unbind(&a);
    assert_eq!(
        index.get(&i, 0).expect("entry"),
        0,
        "unbinding clears the entry"
    );
    assert_eq!(open(&mut a), 0, "unbound");
    ctx.remove("nsi");
    println!(
        "  namespace index: direct entry, shared entry (hash), foreign entry, cleared on unbind"
    );
}

fn overlayfs_reports_once(ctx: &Ctx) {
    let base = Root::tmpfs("ovl");
    for d in ["lower/etc", "upper", "work", "merged"] {
        base.dir(d);
    }
    std::fs::write(base.path("lower/etc/passwd"), b"root:x:0:0\n").expect("passwd");
    std::fs::write(base.path("lower/etc/shadow"), b"root:*:1\n").expect("shadow");
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        base.path("lower").display(),
        base.path("upper").display(),
        base.path("work").display()
    );
    let (s, d, o) = (
        cs("overlay"),
        cs(base.path("merged").to_str().expect("utf8")),
        cs(&opts),
    );
    let r = unsafe {
        libc::mount(
            s.as_ptr(),
            d.as_ptr(),
            s.as_ptr(),
            0,
            o.as_ptr() as *const libc::c_void,
        )
    };
    assert_eq!(r, 0, "mount overlay: {}", std::io::Error::last_os_error());
    let merged = Root::at(base.path("merged"));
    let rules = "      privileged: true\n      auditViolations: true\n      allowViolations: true\n      bpfRawRules:\n        files:\n        - pattern: /etc/passwd\n          permissions: [read]\n";
    let mut profile = profile_of(&policy_yaml("EnhanceProtect", rules));
    let mut shadow = profile_of(&policy_yaml(
        "EnhanceProtect",
        &rules.replace("passwd", "shadow"),
    ));
    shadow.files[0].action = RuleAction::DenyAudit;
    profile.files.push(shadow.files[0].clone());
    let patterns: Vec<Pattern> = profile
        .files
        .iter()
        .map(|f| Pattern::parse(&f.pattern).expect("pattern"))
        .collect();
    profile.path_automaton =
        varmor_policy::automaton::Automaton::build(&patterns).expect("automaton");
    profile.path_verdicts =
        varmor_policy::compile::bpf::path_verdicts(&profile.files, &profile.path_automaton);
    let mut a = Proc::spawn(&merged);
    ctx.apply("ovl", &profile);
    ctx.bind(&a, "ovl", &[]);
    ctx.events();
    for _ in 0..3 {
        assert_eq!(a.errno(&format!("open {} /etc/passwd", libc::O_RDONLY)), 0);
        let evs = ctx.events();
        let audit: Vec<_> = evs
            .iter()
            .filter(|e| e.kind == VA_EV_FILE && e.path == "/etc/passwd")
            .collect();
        assert_eq!(
            audit.len(),
            1,
            "one AUDIT event per open on overlayfs: {audit:?}"
        );
        assert_eq!(audit[0].action, VA_EVENT_AUDIT);
        assert_eq!(
            a.errno(&format!("open {} /etc/shadow", libc::O_RDONLY)),
            libc::EPERM
        );
        let evs = ctx.events();
        assert_eq!(
            evs.iter()
                .filter(|e| e.kind == VA_EV_FILE
                    && e.path == "/etc/shadow"
                    && e.action == VA_EVENT_DENIED)
                .count(),
            1
        );
    }
    ctx.unbind(&a);
    ctx.remove("ovl");
    drop(a);
    drop(merged);
    let d = cs(base.path("merged").to_str().expect("utf8"));
    unsafe { libc::umount2(d.as_ptr(), libc::MNT_DETACH) };
    println!("  overlayfs: 3 audited opens -> 3 AUDIT events, 3 denied opens -> 3 DENIED events");
}

// ---- benign workload ------------------------------------------------------------------------

const BENIGN: &str = r#"set -e
B=/bin/busybox
W=/tmp/kt-benign
$B rm -rf $W; $B mkdir -p $W/www; cd $W
$B echo hello > a.txt
$B cat a.txt | $B grep -q hello
$B ls -la /etc > /dev/null
$B cp a.txt b.txt; $B mv b.txt c.txt; $B ln -s c.txt d.txt; $B cat d.txt > /dev/null
$B sed -i s/hello/world/ c.txt; $B grep -q world c.txt
$B awk '{print $1}' c.txt > /dev/null
$B sort /etc/passwd > /dev/null; $B wc -l /etc/passwd > /dev/null
$B tar czf x.tgz a.txt c.txt; $B tar tzf x.tgz > /dev/null
$B gzip -c a.txt > a.gz; $B gunzip -c a.gz > /dev/null
$B find . -name '*.txt' > /dev/null
$B ps > /dev/null; $B id > /dev/null; $B date > /dev/null; $B uname -a > /dev/null
$B env > /dev/null; $B sleep 0.1; $B md5sum a.txt > /dev/null; $B head -c 100 /dev/urandom > /dev/null
$B sh -c 'exit 0'
echo '<h1>benign</h1>' > www/index.html
$B httpd -f -p 127.0.0.1:18080 -h $W/www &
S=$!
for i in 1 2 3 4 5 6 7 8 9 10; do
  if $B wget -q -O - http://127.0.0.1:18080/index.html > page.html 2>/dev/null; then break; fi
  $B sleep 0.5
done
$B grep -q benign page.html
kill $S
cd /; $B rm -rf $W
echo BENIGN-OK
"#;

fn benign_runtime_default(ctx: &Ctx) {
    if !Path::new("/bin/busybox").exists() {
        panic!("/bin/busybox is missing (install busybox-static)");
    }
    std::fs::write("/tmp/kt-benign.sh", BENIGN).expect("script");
    // RuntimeDefault, with every rule auditing its denials so none can go unseen.
    let mut profile = profile_of(&policy_yaml("RuntimeDefault", ""));
    for r in &mut profile.files {
        r.action = RuleAction::DenyAudit;
    }
    for r in &mut profile.mounts {
        r.action = RuleAction::DenyAudit;
    }
    for r in &mut profile.ptrace {
        r.action = RuleAction::DenyAudit;
    }
    profile.path_verdicts =
        varmor_policy::compile::bpf::path_verdicts(&profile.files, &profile.path_automaton);
    ctx.apply("benign", &profile);
    let mut child = Command::new("unshare")
        .args([
            "--mount",
            "--uts",
            "--pid",
            "--fork",
            "--mount-proc",
            "/bin/busybox",
            "sh",
            "-c",
            "echo ready; read go; exec /bin/busybox sh /tmp/kt-benign.sh",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("unshare");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("ready");
    assert_eq!(line.trim(), "ready");
    let ns = std::fs::read_link(format!("/proc/{}/ns/mnt", child.id()))
        .ok()
        .and_then(|l| varmor_agent::enforcer::bpf::parse_ns_link(&l.to_string_lossy()))
        .expect("ns");
    let info = ContainerInfo {
        id: "benign".into(),
        mnt_ns_id: ns,
        ..Default::default()
    };
    let o = ctx.rt.block_on(ctx.e.bind(&info, "benign"));
    assert_eq!(o.status, ResultStatus::Applied);
    ctx.events();
    let mut stdin = child.stdin.take().expect("stdin");
    writeln!(stdin, "go").expect("go");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).expect("output");
    let status = child.wait().expect("wait");
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    let evs: Vec<BpfEvent> = ctx
        .events()
        .into_iter()
        .filter(|e| e.mnt_ns == ns)
        .collect();
    ctx.rt.block_on(ctx.e.unbind(&info));
    ctx.remove("benign");
    for e in &evs {
        println!("    event: {} {}", e.action_name(), e.event_json());
    }
    assert!(
        status.success() && rest.contains("BENIGN-OK"),
        "the workload failed: {status}\n{rest}\n{err}"
    );
    assert!(
        evs.iter().all(|e| e.action != VA_EVENT_DENIED),
        "denials in a benign run"
    );
    println!("  benign workload (busybox shell and tools, httpd + wget) under RuntimeDefault: exit 0, 0 denials");
}

// ---- restart ----------------------------------------------------------------------------------

fn restart_under_load(_ctx: &Ctx) {
    const ROOT: &str = "/sys/fs/bpf/varmor-kt-restart";
    let _ = destroy_pins(Path::new(ROOT));
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("rt");
    let phase = Instant::now();
    let e1 = BpfEnforcer::for_host(&HostFs::new("/"), options(ROOT));
    assert!(e1.capability().available, "{}", e1.capability().reason);
    println!(
        "  first agent: loaded in {:.1}s",
        phase.elapsed().as_secs_f64()
    );
    let profile = profile_of(&policy_yaml(
        "EnhanceProtect",
        "      privileged: true\n      auditViolations: true\n      bpfRawRules:\n        files:\n        - pattern: /etc/passwd\n          permissions: [read]\n",
    ));
    let doc = varmor_policy::parse_documents(&policy_yaml("RuntimeDefault", ""))
        .into_iter()
        .next()
        .expect("doc")
        .expect("valid");
    let mut b = varmor_policy::compile(
        &doc.spec(),
        &varmor_policy::PolicyIdentity::namespaced("demo", "web"),
        &facts(),
    )
    .expect("compile");
    b.profile_name = "restart".into();
    b.bpf = Some(profile);
    let bundle = RevisedBundle {
        bundle: b,
        revision: 7,
    };
    assert_eq!(rt.block_on(e1.apply(&bundle)).status, ResultStatus::Applied);
    let root = Root::tmpfs("restart");
    root.tree(&["/etc/passwd".into()]);
    let mut a = Proc::spawn(&root);
    let o = rt.block_on(e1.bind(&a.info(&[]), "restart"));
    assert_eq!(o.status, ResultStatus::Applied);
    assert_eq!(
        a.errno(&format!("open {} /etc/passwd", libc::O_RDONLY)),
        libc::EPERM
    );
    e1.read_events();
    assert_eq!(a.call("loop_start /etc/passwd"), "0");
    let started = Instant::now();

    // 1. The agent stops (the programs stay pinned) and a new one adopts the state.
    drop(e1);
    std::thread::sleep(Duration::from_millis(300));
    let phase = Instant::now();
    let e2 = BpfEnforcer::for_host(&HostFs::new("/"), options(ROOT));
    println!(
        "  restart: the new agent adopted the pinned state in {:.1}s",
        phase.elapsed().as_secs_f64()
    );
    assert!(
        e2.programs().iter().all(|p| p.adopted),
        "same build: links adopted"
    );
    assert_eq!(
        e2.bound(),
        vec![(a.ns, "restart".to_string())],
        "the container binding is adopted"
    );
    let o = rt.block_on(e2.apply(&bundle));
    assert!(
        o.message.contains("unchanged"),
        "the adopted profile is recognised: {o:?}"
    );
    let during: Vec<_> = e2
        .read_events()
        .into_iter()
        .filter(|(e, _)| e.mnt_ns == a.ns)
        .collect();
    assert!(
        !during.is_empty(),
        "events of the restart window are read by the new agent"
    );
    assert_eq!(during[0].1.profile_name, "restart");

    // 2. An upgrade: links pinned by another build are replaced without a gap.
    let links = Path::new(ROOT).join(format!("v{VA_LAYOUT_VERSION}/links"));
    for entry in std::fs::read_dir(&links).expect("links") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let (prog, _) = name.rsplit_once('-').expect("prog-id");
        std::fs::rename(&path, links.join(format!("{prog}-00000000000000ff")))
            .expect("rename link");
    }
    drop(e2);
    let phase = Instant::now();
    let e3 = BpfEnforcer::for_host(&HostFs::new("/"), options(ROOT));
    println!(
        "  upgrade: the new build loaded and replaced the links in {:.1}s",
        phase.elapsed().as_secs_f64()
    );
    assert!(
        e3.programs().iter().all(|p| !p.adopted),
        "another build: programs reloaded"
    );
    let left: Vec<String> = std::fs::read_dir(&links)
        .expect("links")
        .map(|e| e.expect("e").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        left.iter().all(|n| !n.ends_with("-00000000000000ff")),
        "old links removed: {left:?}"
    );
    assert_eq!(e3.bound(), vec![(a.ns, "restart".to_string())]);
    std::thread::sleep(Duration::from_millis(300));
    let counts = a.call("loop_stop");
    let (tries, ok) = counts.split_once(' ').expect("counts");
    let tries: u64 = tries.parse().expect("tries");
    let ok: u64 = ok.parse().expect("ok");
    println!(
        "  restart and upgrade under load: {tries} opens of a denied file over {:.1}s, {ok} succeeded",
        started.elapsed().as_secs_f64()
    );
    assert!(tries > 100, "the load ran");
    assert_eq!(ok, 0, "a denied open succeeded during a restart");
    drop(e3);
    let _ = destroy_pins(Path::new(ROOT));
}
