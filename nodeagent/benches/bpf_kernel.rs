//! BPF-LSM cost benchmark (not a test): per-operation cost of open(), execve() and connect()
//! loops in a process in its own mount namespace, under
//! * no program (unconfined),
//! * an empty LSM program on the same hooks (the floor),
//! * the enforcer attached, the process not confined (every other process on a node),
//! * the process confined by RuntimeDefault, by every built-in rule plus 1,024 raw file rules,
//!   and by 1, 64 and 1,024 raw rules per type (files, programs, egress);
//! * side by side, a baseline that matches the same 64 rules per type one by one with a fixed
//!   prefix and suffix compare (as vArmor does; `bpf-programs/baseline.bpf.c`).
//!
//! All are measured side by side in one run, in rounds: each round measures every
//! configuration (it loads the enforcer and removes it again), ratios are taken within a round
//! and the median over rounds is printed, so the emulator's speed drifting with other work on
//! the host cancels out. Printed: ratios to the unconfined cost, and overheads relative to the
//! floor's overhead and to the enforcer's cost for a process outside any container, and the
//! programs' own run time from the kernel's BPF statistics. The floor's overhead is a few % of
//! an open and drowns in the emulator's noise between configurations, so it is measured again
//! in many short blocks without and with the empty programs, interleaved, and as a lower bound
//! 16 times over (16 copies of the empty programs attached at once). Under emulation (TCG)
//! only ratios mean anything. Needs BPF-LSM: run it with `scripts/kernel-tests --bench` (or
//! `make bench-kernel`); elsewhere it prints why it cannot run.

#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use aya::maps::{Array, HashMap as BpfHashMap};
use aya::programs::Lsm;
use aya::{Btf, EbpfLoader};
use varmor_agent::containers::ContainerInfo;
use varmor_agent::enforcer::bpf::kernel::PROBE_OBJECT;
use varmor_agent::enforcer::bpf::{destroy_pins, probe, BpfEnforcer, BpfOptions};
use varmor_agent::enforcer::{Enforcer, ResultStatus};
use varmor_agent::HostFs;
use varmor_policy::bundle::BpfProfile;
use varmor_policy::catalog::{self, Category};
use varmor_policy::proto::RevisedBundle;
use varmor_policy::{compile, parse_documents, NodeFacts, PolicyIdentity, ProfileBundle};

const PIN_ROOT: &str = "/sys/fs/bpf/varmor-bench";
/// The linear-scan baseline (`bpf-programs/baseline.bpf.c`, built by the agent's build script).
static BASELINE_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/baseline.bpf.o"));
const SHORT: &str = "/bench/f.txt";
/// A 200-byte path.
fn long_path() -> String {
    format!(
        "/bench/{}/{}/{}/file.txt",
        "a".repeat(60),
        "b".repeat(60),
        "c".repeat(50)
    )
}

fn cs(s: &str) -> CString {
    CString::new(s).expect("no NUL")
}

// ---- the measured process -------------------------------------------------------------------

fn child_main() {
    let root = std::env::var("VARMOR_BENCH_ROOT").expect("root");
    unsafe {
        assert_eq!(libc::unshare(libc::CLONE_NEWNS), 0);
        let slash = cs("/");
        libc::mount(
            std::ptr::null(),
            slash.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        );
        let r = cs(&root);
        assert_eq!(libc::chroot(r.as_ptr()), 0);
        libc::chdir(slash.as_ptr());
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
    let udp = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    let mut out = std::io::stdout().lock();
    writeln!(out, "@@ready {}", std::process::id()).expect("stdout");
    out.flush().expect("flush");
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let w: Vec<&str> = line.split(' ').collect();
        let n: u64 = w[1].parse().expect("n");
        let start = Instant::now();
        unsafe {
            match w[0] {
                "open" => {
                    let p = cs(w[2]);
                    for _ in 0..n {
                        let fd = libc::open(p.as_ptr(), libc::O_RDONLY);
                        assert!(fd >= 0, "open {}", w[2]);
                        libc::close(fd);
                    }
                }
                "exec" => {
                    let p = cs("/bin/true");
                    for _ in 0..n {
                        let pid = libc::fork();
                        if pid == 0 {
                            let argv = [p.as_ptr(), std::ptr::null()];
                            let envp: [*const libc::c_char; 1] = [std::ptr::null()];
                            libc::execve(p.as_ptr(), argv.as_ptr(), envp.as_ptr());
                            libc::_exit(127);
                        }
                        let mut st = 0;
                        libc::waitpid(pid, &mut st, 0);
                        assert!(
                            libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0,
                            "exec failed"
                        );
                    }
                }
                "connect" => {
                    let sa = libc::sockaddr_in {
                        sin_family: libc::AF_INET as u16,
                        sin_port: 9u16.to_be(),
                        sin_addr: libc::in_addr {
                            s_addr: u32::from_ne_bytes([127, 0, 0, 1]),
                        },
                        sin_zero: [0; 8],
                    };
                    for _ in 0..n {
                        let r = libc::connect(udp, &sa as *const _ as *const libc::sockaddr, 16);
                        assert_eq!(r, 0, "connect");
                    }
                }
                other => panic!("unknown op {other}"),
            }
        }
        writeln!(out, "@@{}", start.elapsed().as_nanos() / u128::from(n)).expect("stdout");
        out.flush().expect("flush");
    }
}

struct Measured {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    ns: u32,
}

impl Measured {
    fn spawn(root: &Path) -> Measured {
        let mut child = Command::new(std::env::current_exe().expect("exe"))
            .env("VARMOR_BENCH_CHILD", "1")
            .env("VARMOR_BENCH_ROOT", root)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn");
        let stdin = child.stdin.take().expect("stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let ready = answer(&mut stdout);
        let pid: u32 = ready.trim_start_matches("ready ").parse().expect("pid");
        let ns = std::fs::read_link(format!("/proc/{pid}/ns/mnt"))
            .ok()
            .and_then(|l| varmor_agent::enforcer::bpf::parse_ns_link(&l.to_string_lossy()))
            .expect("ns");
        Measured {
            child,
            stdin,
            stdout,
            ns,
        }
    }

    fn run(&mut self, op: &str, n: u64, arg: &str) -> f64 {
        self.run_with_programs(op, n, arg).0
    }

    /// Runs `n` operations; returns the time per operation, the time our BPF programs ran per
    /// operation and how many times they ran per operation (from the kernel's BPF run-time
    /// statistics, which [`main`] enables).
    fn run_with_programs(&mut self, op: &str, n: u64, arg: &str) -> (f64, f64, f64) {
        let (t0, c0) = program_stats();
        writeln!(self.stdin, "{op} {n} {arg}").expect("write");
        self.stdin.flush().expect("flush");
        let t = answer(&mut self.stdout).parse().expect("ns");
        let (t1, c1) = program_stats();
        (
            t,
            t1.saturating_sub(t0) as f64 / n as f64,
            c1.saturating_sub(c0) as f64 / n as f64,
        )
    }
}

impl Drop for Measured {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The total run time (ns) and run count of every loaded BPF program named `varmor_*` (the
/// enforcer's, the empty floor programs and the linear-scan baseline), while run-time
/// statistics are enabled.
fn program_stats() -> (u64, u64) {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.name_as_str().is_some_and(|n| n.starts_with("varmor_")))
        .fold((0, 0), |(t, c), p| {
            (t + p.run_time().as_nanos() as u64, c + p.run_count())
        })
}

fn answer(r: &mut BufReader<ChildStdout>) -> String {
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            r.read_line(&mut line).expect("read") > 0,
            "the measured process exited"
        );
        if let Some(a) = line.trim_end().strip_prefix("@@") {
            return a.to_string();
        }
    }
}

// ---- profiles -------------------------------------------------------------------------------

fn compile_yaml(yaml: &str) -> ProfileBundle {
    let doc = parse_documents(yaml)
        .into_iter()
        .next()
        .expect("doc")
        .expect("valid");
    compile(
        &doc.spec(),
        &PolicyIdentity::namespaced("bench", "bench"),
        &NodeFacts {
            disk_devices: Some(vec!["vda".into()]),
        },
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn yaml(mode: &str, enhance: &str) -> String {
    let mut y = format!("apiVersion: crd.varmor.org/v1beta1\nkind: VarmorPolicy\nmetadata:\n  name: bench\n  namespace: bench\nspec:\n  target:\n    kind: Deployment\n    name: bench\n  policy:\n    enforcer: BPF\n    mode: {mode}\n");
    if !enhance.is_empty() {
        y.push_str("    enhanceProtect:\n");
        y.push_str(enhance);
    }
    y
}

/// Every built-in rule plus 1,024 raw file rules (the policy of the compile benchmark).
fn builtins_plus_1024() -> String {
    let names = |c: Category| {
        catalog::all()
            .iter()
            .filter(|r| r.category == c)
            .map(|r| r.name)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut e = format!(
        "      auditViolations: true\n      hardeningRules: [{}]\n      attackProtectionRules:\n      - rules: [{}]\n      vulMitigationRules: [{}]\n      bpfRawRules:\n        files:\n",
        names(Category::Hardening),
        names(Category::AttackProtection),
        names(Category::VulMitigation)
    );
    for i in 0..400 {
        e.push_str(&format!("        - pattern: /srv/app{i}/conf/secret.yaml\n          permissions: [read, write]\n"));
    }
    for i in 0..300 {
        e.push_str(&format!(
            "        - pattern: /data/tenant{i}/**\n          permissions: [read, write]\n"
        ));
    }
    for i in 0..200 {
        e.push_str(&format!(
            "        - pattern: /var/lib/app{i}/*.key\n          permissions: [read, write]\n"
        ));
    }
    for i in 0..124 {
        e.push_str(&format!("        - pattern: /home/user{i}/.config/**/*.token\n          permissions: [read, write]\n"));
    }
    yaml("EnhanceProtect", &e)
}

/// `n` raw rules of each kind: files, programs and egress destinations (none match the loops).
fn n_rules(n: usize) -> String {
    let mut e = String::from("      privileged: true\n      bpfRawRules:\n        files:\n");
    for i in 0..n {
        e.push_str(&format!(
            "        - pattern: /srv/app{i}/**/*.key\n          permissions: [read, write]\n"
        ));
    }
    e.push_str("        processes:\n");
    for i in 0..n {
        e.push_str(&format!(
            "        - pattern: /opt/tool{i}/*\n          permissions: [exec]\n"
        ));
    }
    e.push_str("        network:\n          egress:\n            toDestinations:\n");
    for i in 0..n {
        e.push_str(&format!("            - ip: 10.{}.{}.1\n", i / 256, i % 256));
    }
    yaml("EnhanceProtect", &e)
}

// ---- configurations -------------------------------------------------------------------------

/// The empty programs of the probe object (the floor), loaded once; attached and detached
/// without reloading, so the floor can be measured in short blocks interleaved with
/// unconfined ones. Detached when dropped.
struct EmptyPrograms {
    ebpf: aya::Ebpf,
    links: Vec<(&'static str, aya::programs::lsm::LsmLinkId)>,
}

const EMPTY_PROGRAMS: [(&str, &str); 3] = [
    ("varmor_empty_file_open", "file_open"),
    ("varmor_empty_bprm_check_security", "bprm_check_security"),
    ("varmor_empty_socket_connect", "socket_connect"),
];

impl EmptyPrograms {
    fn load() -> EmptyPrograms {
        let btf = Btf::from_sys_fs().expect("btf");
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&btf))
            .load(PROBE_OBJECT)
            .expect("probe object");
        for (name, hook) in EMPTY_PROGRAMS {
            let p: &mut Lsm = ebpf
                .program_mut(name)
                .expect("program")
                .try_into()
                .expect("lsm");
            p.load(hook, &btf).expect("load");
        }
        EmptyPrograms {
            ebpf,
            links: Vec::new(),
        }
    }

    fn program(&mut self, name: &str) -> &mut Lsm {
        self.ebpf
            .program_mut(name)
            .expect("program")
            .try_into()
            .expect("lsm")
    }

    fn attach(&mut self) {
        for (name, _) in EMPTY_PROGRAMS {
            let id = self.program(name).attach().expect("attach");
            self.links.push((name, id));
        }
    }

    fn detach(&mut self) {
        for (name, id) in std::mem::take(&mut self.links) {
            self.program(name).detach(id).expect("detach");
        }
    }
}

/// `pairs` pairs of `block` operations without and with every copy in `copies` attached,
/// interleaved (the order alternates, so a drift of the emulator's speed cancels within a
/// pair): the time per operation with the copies minus without, per pair.
fn interleaved(
    m: &mut Measured,
    copies: &mut [EmptyPrograms],
    op: &str,
    block: u64,
    arg: &str,
    pairs: usize,
) -> Vec<f64> {
    let mut timed = |attached: bool, m: &mut Measured| {
        if attached {
            copies.iter_mut().for_each(EmptyPrograms::attach);
        }
        let t = m.run(op, block, arg);
        if attached {
            copies.iter_mut().for_each(EmptyPrograms::detach);
        }
        t
    };
    (0..pairs)
        .map(|k| {
            if k % 2 == 0 {
                let without = timed(false, m);
                timed(true, m) - without
            } else {
                let with = timed(true, m);
                with - timed(false, m)
            }
        })
        .collect()
}

fn attach_empty() -> EmptyPrograms {
    let mut e = EmptyPrograms::load();
    e.attach();
    e
}

/// The baseline programs with `n` rules per type (the rules of [`n_rules`]), confining the
/// mount namespace `ns`; detached when dropped.
fn attach_baseline(n: usize, ns: u32) -> aya::Ebpf {
    const AFFIX: usize = 64;
    let btf = Btf::from_sys_fs().expect("btf");
    let mut ebpf = EbpfLoader::new()
        .btf(Some(&btf))
        .load(BASELINE_OBJECT)
        .expect("baseline object");
    // struct b_rule: prefix[64], suffix[64], plen, slen, perms, pad.
    let rule = |prefix: &str, suffix: &str, perms: u32| {
        let mut r = [0u8; 2 * AFFIX + 16];
        r[..prefix.len()].copy_from_slice(prefix.as_bytes());
        r[AFFIX..AFFIX + suffix.len()].copy_from_slice(suffix.as_bytes());
        r[2 * AFFIX..2 * AFFIX + 4].copy_from_slice(&(prefix.len() as u32).to_ne_bytes());
        r[2 * AFFIX + 4..2 * AFFIX + 8].copy_from_slice(&(suffix.len() as u32).to_ne_bytes());
        r[2 * AFFIX + 8..2 * AFFIX + 12].copy_from_slice(&perms.to_ne_bytes());
        r
    };
    {
        let mut files: Array<_, [u8; 2 * AFFIX + 16]> =
            Array::try_from(ebpf.map_mut("b_file_rules").expect("b_file_rules")).expect("array");
        for i in 0..n {
            // /srv/app{i}/**/*.key: prefix and suffix, as vArmor splits it.
            files
                .set(i as u32, rule(&format!("/srv/app{i}/"), ".key", 4 | 2), 0)
                .expect("file rule");
        }
    }
    {
        let mut execs: Array<_, [u8; 2 * AFFIX + 16]> =
            Array::try_from(ebpf.map_mut("b_exec_rules").expect("b_exec_rules")).expect("array");
        for i in 0..n {
            execs
                .set(i as u32, rule(&format!("/opt/tool{i}/"), "", 1), 0)
                .expect("exec rule");
        }
    }
    {
        // struct b_net_rule: addr, mask, port, pad.
        let mut nets: Array<_, [u32; 4]> =
            Array::try_from(ebpf.map_mut("b_net_rules").expect("b_net_rules")).expect("array");
        for i in 0..n {
            let addr = u32::from_be_bytes([10, (i / 256) as u8, (i % 256) as u8, 1]);
            nets.set(i as u32, [addr, u32::MAX, 0, 0], 0)
                .expect("egress rule");
        }
    }
    {
        let mut counts: Array<_, u32> =
            Array::try_from(ebpf.map_mut("b_counts").expect("b_counts")).expect("array");
        for k in 0..3 {
            counts.set(k, n as u32, 0).expect("count");
        }
    }
    {
        let mut containers: BpfHashMap<_, u32, u32> =
            BpfHashMap::try_from(ebpf.map_mut("b_containers").expect("b_containers"))
                .expect("hash");
        containers.insert(ns, 1, 0).expect("container");
    }
    for (name, hook) in [
        ("varmor_baseline_file_open", "file_open"),
        ("varmor_baseline_bprm_check_security", "bprm_check_security"),
        ("varmor_baseline_socket_connect", "socket_connect"),
    ] {
        let p: &mut Lsm = ebpf
            .program_mut(name)
            .expect("program")
            .try_into()
            .expect("lsm");
        p.load(hook, &btf)
            .unwrap_or_else(|e| panic!("load {name}: {e:?}"));
        p.attach().expect("attach");
    }
    ebpf
}

/// Pairs of interleaved blocks (unconfined, empty programs) per operation and round
/// (VARMOR_BENCH_FLOOR_PAIRS overrides it).
const FLOOR_PAIRS: usize = 40;
/// Pairs of interleaved blocks (unconfined, FLOOR_COPIES empty programs) per operation and
/// round.
const COPY_PAIRS: usize = 6;
/// Copies of the empty programs attached at once to measure the per-program cost.
const FLOOR_COPIES: usize = 16;

/// The median of the finite values (NaN when there are none).
fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(|a, b| a.partial_cmp(b).expect("number"));
    s[s.len() / 2]
}

fn main() {
    if std::env::var_os("VARMOR_BENCH_CHILD").is_some() {
        child_main();
        return;
    }
    if std::env::var_os("VARMOR_IN_VM").is_some() {
        let host = HostFs::new("/");
        if !probe::is_bpffs(&host, Path::new("/sys/fs/bpf")) {
            let (s, d) = (cs("bpf"), cs("/sys/fs/bpf"));
            unsafe { libc::mount(s.as_ptr(), d.as_ptr(), s.as_ptr(), 0, std::ptr::null()) };
        }
    }
    let p = probe::probe(&HostFs::new("/"), Path::new(PIN_ROOT));
    if !p.supported {
        println!("bpf benchmark not run: {}", p.reason);
        return;
    }
    let rounds: usize = std::env::var("VARMOR_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let floor_pair_count: usize = std::env::var("VARMOR_BENCH_FLOOR_PAIRS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(FLOOR_PAIRS)
        .max(1);
    let scale: u64 = std::env::var("VARMOR_BENCH_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);

    // The measured process's root: the files it opens and /bin/true.
    let root = PathBuf::from("/tmp/varmor-bench");
    let _ = std::fs::create_dir_all(&root);
    let (s, d) = (cs("tmpfs"), cs(root.to_str().expect("utf8")));
    unsafe { libc::mount(s.as_ptr(), d.as_ptr(), s.as_ptr(), 0, std::ptr::null()) };
    for p in [SHORT.to_string(), long_path()] {
        let f = root.join(p.trim_start_matches('/'));
        std::fs::create_dir_all(f.parent().expect("parent")).expect("mkdir");
        std::fs::write(&f, b"x").expect("file");
    }
    std::fs::create_dir_all(root.join("bin")).expect("bin");
    // A copy, not a link: the exec rules of the built-ins name busybox.
    std::fs::copy("/bin/busybox", root.join("bin/true"))
        .expect("busybox-static is needed at /bin/busybox");

    let profiles: Vec<(&str, BpfProfile)> = vec![
        (
            "RuntimeDefault",
            compile_yaml(&yaml("RuntimeDefault", "")).bpf.expect("bpf"),
        ),
        (
            "builtins+1024",
            compile_yaml(&builtins_plus_1024()).bpf.expect("bpf"),
        ),
        ("1 rule/type", compile_yaml(&n_rules(1)).bpf.expect("bpf")),
        (
            "64 rules/type",
            compile_yaml(&n_rules(64)).bpf.expect("bpf"),
        ),
        (
            "1024 rules/type",
            compile_yaml(&n_rules(1024)).bpf.expect("bpf"),
        ),
    ];
    let long = long_path();
    let mut ops: Vec<(&str, &str, u64, String)> = vec![
        ("open 12 B", "open", 20_000 * scale, SHORT.to_string()),
        ("open 200 B", "open", 20_000 * scale, long.clone()),
        ("execve", "exec", 200 * scale, String::new()),
        ("connect", "connect", 20_000 * scale, String::new()),
    ];
    // VARMOR_BENCH_OPS=connect,execve measures only those operations (by their loop name).
    if let Ok(only) = std::env::var("VARMOR_BENCH_OPS") {
        let only: Vec<&str> = only.split(',').map(str::trim).collect();
        ops.retain(|(_, op, ..)| only.contains(op));
        assert!(
            !ops.is_empty(),
            "VARMOR_BENCH_OPS={only:?} names no operation (open, exec, connect)"
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("rt");
    let mut m = Measured::spawn(&root);
    // results[config][op] = samples (ns per op)
    let mut results: BTreeMap<String, BTreeMap<&str, Vec<f64>>> = BTreeMap::new();
    // programs[config][op] = samples (ns of BPF program run time per op)
    let mut programs: BTreeMap<String, BTreeMap<&str, Vec<f64>>> = BTreeMap::new();
    // The kernel counts each program's run time while this descriptor is open.
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("BPF run-time statistics");
    // runs[op] = samples of how many times the empty programs ran per operation (hooks called).
    let mut runs: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut record = |config: &str, m: &mut Measured| {
        for (label, op, n, arg) in &ops {
            let (v, p, c) = m.run_with_programs(op, *n, arg);
            if config == "b empty LSM program" {
                runs.entry(label).or_default().push(c);
            }
            results
                .entry(config.to_string())
                .or_default()
                .entry(label)
                .or_default()
                .push(v);
            programs
                .entry(config.to_string())
                .or_default()
                .entry(label)
                .or_default()
                .push(p);
        }
    };
    // Every round measures every configuration: first those without the enforcer (unconfined,
    // the floor, the linear scan), then the enforcer is loaded (seconds under emulation), the
    // process is bound to each profile in turn, and the enforcer is removed again. Ratios are
    // taken within a round and the median over rounds is printed, so the emulator's speed
    // drifting over minutes (other work on the host) cancels out.
    let started = Instant::now();
    let base = compile_yaml(&yaml("RuntimeDefault", ""));
    let info = ContainerInfo {
        id: "bench".into(),
        mnt_ns_id: m.ns,
        ..Default::default()
    };
    let mut verified: Vec<(String, Option<u32>)> = Vec::new();
    // per_program[op] = per round, the trampoline's per-program cost (ns per op), a lower bound
    // of the floor's overhead.
    let mut per_program: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    // floor_pairs[op] = the floor's overhead (ns per op) of every interleaved pair, all rounds.
    let mut floor_pairs: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for round in 0..rounds {
        eprintln!(
            "round {}/{rounds} ({:.0}s)",
            round + 1,
            started.elapsed().as_secs_f64()
        );
        // Warm up caches once per round.
        m.run("open", 1000, SHORT);
        record("a unconfined", &mut m);
        {
            let _empty = attach_empty();
            record("b empty LSM program", &mut m);
        }
        // The floor's overhead is a few % of an open: the timings above swing more than that
        // between configurations. Two measures the noise cannot swamp, per operation:
        // * FLOOR_PAIRS short blocks without and with the empty programs, interleaved; the
        //   pairs of all rounds are pooled (drift cancels within a pair);
        // * a lower bound: FLOOR_COPIES copies attached at once, in interleaved blocks. Each
        //   copy adds the trampoline's per-program cost (enter, program, exit); the floor is
        //   that plus the trampoline's fixed part, and the difference is measured
        //   FLOOR_COPIES times above the noise.
        {
            let mut one = vec![EmptyPrograms::load()];
            let mut copies: Vec<EmptyPrograms> =
                (0..FLOOR_COPIES).map(|_| EmptyPrograms::load()).collect();
            for (label, op, n, arg) in &ops {
                floor_pairs.entry(label).or_default().extend(interleaved(
                    &mut m,
                    &mut one,
                    op,
                    (*n / 10).max(10),
                    arg,
                    floor_pair_count,
                ));
                let d = interleaved(&mut m, &mut copies, op, (*n / 4).max(10), arg, COPY_PAIRS);
                per_program
                    .entry(label)
                    .or_default()
                    .push(median(&d) / FLOOR_COPIES as f64);
            }
        }
        {
            let _baseline = attach_baseline(64, m.ns);
            record("e linear-scan baseline, 64 rules/type", &mut m);
        }
        let _ = destroy_pins(Path::new(PIN_ROOT));
        let e = BpfEnforcer::for_host(
            &HostFs::new("/"),
            BpfOptions {
                pin_root: PIN_ROOT.into(),
                event_thread: false,
                grace: Duration::ZERO,
            },
        );
        assert!(e.capability().available, "{}", e.capability().reason);
        verified = e
            .programs()
            .iter()
            .map(|p| (p.name.clone(), p.verified_instructions))
            .collect();
        for (i, (_, profile)) in profiles.iter().enumerate() {
            let mut b = base.clone();
            b.profile_name = format!("bench-{i}");
            b.bpf = Some(profile.clone());
            let o = rt.block_on(e.apply(&RevisedBundle {
                bundle: b,
                revision: 1,
            }));
            assert_eq!(o.status, ResultStatus::Applied, "{o:?}");
        }
        m.run("open", 1000, SHORT);
        record("c enforcer, process not confined", &mut m);
        for (i, (name, _)) in profiles.iter().enumerate() {
            let o = rt.block_on(e.bind(&info, &format!("bench-{i}")));
            assert_eq!(o.status, ResultStatus::Applied, "{o:?}");
            record(&format!("d{i} {name}"), &mut m);
            let _ = e.read_events();
        }
        rt.block_on(e.unbind(&info));
        drop(e);
        destroy_pins(Path::new(PIN_ROOT)).expect("detach");
    }
    eprintln!("measured in {:.0}s", started.elapsed().as_secs_f64());
    drop(m);
    let d = cs(root.to_str().expect("utf8"));
    unsafe { libc::umount2(d.as_ptr(), libc::MNT_DETACH) };

    // Per round: f(sample of config A, sample of config B, ...) for one operation.
    let per_round =
        |f: &dyn Fn(usize) -> f64| -> f64 { median(&(0..rounds).map(f).collect::<Vec<_>>()) };
    let sample = |config: &str, label: &str, round: usize| results[config][label][round];
    let u = "a unconfined";
    let fl = "b empty LSM program";
    println!(
        "\nBPF-LSM cost per operation; ratios taken within each of {rounds} rounds, median over rounds (TCG: only ratios mean anything)"
    );
    println!(
        "verifier instructions: {}",
        verified
            .iter()
            .map(|(n, v)| format!("{n}={}", v.map_or("?".into(), |x| x.to_string())))
            .collect::<Vec<_>>()
            .join(", ")
    );
    print!("{:<38}", "configuration");
    for (label, ..) in &ops {
        print!("{label:>26}");
    }
    println!();
    for config in results.keys() {
        print!("{:<38}", &config[2..]);
        for (label, ..) in &ops {
            let t = median(&results[config][*label]);
            let ratio = per_round(&|r| sample(config, label, r) / sample(u, label, r));
            print!("{:>26}", format!("{t:.0}ns {ratio:.3}x"));
        }
        println!();
    }
    println!("\nEach cell: median time per operation, and the median of the per-round ratios to unconfined.");
    let overhead =
        |config: &str, label: &str, r: usize| sample(config, label, r) - sample(u, label, r);
    println!("\nGoals: 1,024 rules <= 1.10x 1 rule; 64-rule overhead <= 2x the floor's and below the linear scan's.");
    println!(
        "{:<12}{:>18}{:>18}{:>26}{:>26}{:>26}",
        "operation",
        "floor ovh",
        "1,024 vs 1 rule",
        "64 rules ovh / floor ovh",
        "64 rules vs linear scan",
        "64 ovh / not-confined ovh"
    );
    let one = "d2 1 rule/type";
    let sixty_four = "d3 64 rules/type";
    let many = "d4 1024 rules/type";
    let scan = "e linear-scan baseline, 64 rules/type";
    let outside = "c enforcer, process not confined";
    for (label, ..) in &ops {
        println!(
            "{:<12}{:>18}{:>18}{:>26}{:>26}{:>26}",
            label,
            format!(
                "{:+.1}%",
                100.0 * per_round(&|r| overhead(fl, label, r) / sample(u, label, r))
            ),
            format!(
                "{:.3}x",
                per_round(&|r| sample(many, label, r) / sample(one, label, r))
            ),
            format!(
                "{:.2}x",
                per_round(&|r| overhead(sixty_four, label, r) / overhead(fl, label, r))
            ),
            format!(
                "{:.3}x",
                per_round(&|r| sample(sixty_four, label, r) / sample(scan, label, r))
            ),
            format!(
                "{:.2}x",
                per_round(&|r| overhead(sixty_four, label, r) / overhead(outside, label, r))
            ),
        );
    }
    // The programs' own run time: no syscall around it, so far less noise than the totals.
    println!(
        "\nBPF program run time per operation (kernel run-time statistics; the trampoline that calls \
         a program is not included), median over rounds:"
    );
    print!("{:<38}", "configuration");
    for (label, ..) in &ops {
        print!("{label:>14}");
    }
    println!();
    for config in programs.keys() {
        if config == u {
            continue;
        }
        print!("{:<38}", &config[2..]);
        for (label, ..) in &ops {
            print!(
                "{:>14}",
                format!("{:.0}ns", median(&programs[config][*label]))
            );
        }
        println!();
    }
    let prog = |config: &str, label: &str, r: usize| programs[config][label][r];
    println!(
        "{:<12}{:>18}{:>18}{:>22}{:>26}{:>30}",
        "operation",
        "1,024 vs 1 (op)",
        "1,024 vs 1 rule",
        "64 rules vs scan",
        "64 rules vs empty program",
        "64 rules, share of the op"
    );
    for (label, ..) in &ops {
        println!(
            "{:<12}{:>18}{:>18}{:>22}{:>26}{:>30}",
            label,
            format!(
                "{:.3}x",
                per_round(&|r| (sample(u, label, r) + prog(many, label, r))
                    / (sample(u, label, r) + prog(one, label, r)))
            ),
            format!(
                "{:.3}x",
                per_round(&|r| prog(many, label, r) / prog(one, label, r))
            ),
            format!(
                "{:.3}x",
                per_round(&|r| prog(sixty_four, label, r) / prog(scan, label, r))
            ),
            format!(
                "{:.2}x",
                per_round(&|r| prog(sixty_four, label, r) / prog(fl, label, r))
            ),
            format!(
                "{:.2}%",
                100.0 * per_round(&|r| prog(sixty_four, label, r) / sample(u, label, r))
            ),
        );
    }
    // The floor goal: the 64-rule profile's overhead is the floor's plus what its program runs
    // longer than the empty one (the trampoline is the same).
    println!("\nGoal: 64-rule overhead <= 2x the floor's (an empty program's) overhead");
    println!(
        "{:<12}{:>24}{:>26}{:>22}{:>26}{:>28}{:>12}{:>26}",
        "operation",
        "floor ovh (pairs)",
        "per-program cost",
        "64 rules - empty",
        "64 ovh / floor ovh",
        "at most (per-program)",
        "hooks/op",
        "at most (per hook call)"
    );
    // One open calls one hook (file_open): its per-program cost is the cost of one hook call.
    let per_call = per_program
        .get("open 12 B")
        .map(|v| median(v))
        .unwrap_or(f64::NAN);
    for (label, ..) in &ops {
        let extra = per_round(&|r| prog(sixty_four, label, r) - prog(fl, label, r));
        let floor = median(&floor_pairs[*label]);
        let lower = per_round(&|r| per_program[*label][r]);
        let unconfined = per_round(&|r| sample(u, label, r));
        let calls = median(&runs[*label]);
        let by_calls = calls * per_call;
        println!(
            "{:<12}{:>24}{:>26}{:>22}{:>26}{:>28}{:>12}{:>26}",
            label,
            format!("{floor:.0}ns {:+.1}%", 100.0 * floor / unconfined),
            format!("{lower:.0}ns {:+.1}%", 100.0 * lower / unconfined),
            format!("{extra:.0}ns"),
            format!("{:.2}x", (floor + extra) / floor),
            format!("{:.2}x", (lower + extra) / lower),
            format!("{calls:.1}"),
            format!("{:.2}x", (by_calls + extra) / by_calls),
        );
    }
    println!(
        "\nfloor ovh: the empty program's cost as a share of the unconfined operation; when it is \
         within the noise (a few %), \"ovh / floor ovh\" is not meaningful. \"64 ovh / not-confined ovh\": \
         the 64-rule profile's overhead as a multiple of the enforcer's cost for a process outside \
         any container (the namespace index lookup). \"1,024 vs 1 (op)\": the operation's cost with each \
         profile, as the unconfined time plus the program run time (the trampoline is the same \
         for both). \"floor ovh (pairs)\": the median over all rounds of {floor_pair_count} pairs \
         per round of short blocks without and with the empty programs, interleaved. \
         \"per-program cost\": the same with {FLOOR_COPIES} copies of the empty programs \
         attached at once ({COPY_PAIRS} pairs per round), over {FLOOR_COPIES}: what each \
         program attached to a hook costs (trampoline entry and exit, the empty program); the \
         floor costs that plus the trampoline's fixed part, so it is a lower bound of the \
         floor's overhead, measured {FLOOR_COPIES} times above the noise. \"64 rules - \
         empty\": program run times. \"64 ovh / floor ovh\": (floor + that) / floor; \"at \
         most\": the same with the lower bound, an upper bound of the ratio. \"hooks/op\": how \
         many times the empty programs ran per operation (an execve runs file_open for every \
         file the new program and its loader open); \"at most (per hook call)\": the ratio with \
         the floor taken as hooks/op times the per-program cost of open 12 B (one hook call, \
         measured clear of the noise), for operations whose own timings cannot show the floor \
         (execve: a few tens of µs in 10 ms)."
    );
}
