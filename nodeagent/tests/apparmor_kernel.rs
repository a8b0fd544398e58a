//! Kernel tests of the AppArmor enforcer. They need a kernel with AppArmor (run them with
//! `scripts/kernel-tests apparmor`, which boots one VM); elsewhere each test is skipped with the
//! reason, and with `VARMOR_REQUIRE_KERNEL_TESTS=1` a skip is a failure.
//!
//! Every profile is compiled from a policy by `varmor_policy::compile` and loaded by the real
//! [`AppArmorEnforcer`]. A forbidden action is performed by this test binary run again as a
//! helper (`VARMOR_AA_HELPER=<action>`, entry point [`apparmor_helper_entry_point`]), under
//! `aa-exec -p <profile>`; it reports through its exit status whether the kernel refused
//! (`EACCES`/`EPERM`). Each built-in rule's action must be
//! * allowed unconfined,
//! * allowed under a control profile (the same policy without the rule), so the denial comes
//!   from the rule and not from confinement as such,
//! * denied under the rule's profile.
//!
//! Policies are `privileged: true` (the AlwaysAllow base: only the rule denies anything) with
//! `auditViolations: true` (so the kernel logs `apparmor="DENIED"`).

#![allow(unsafe_code)] // the helper performs raw syscalls through libc (setuid, capset, bpf, …)

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use varmor_agent::enforcer::{AppArmorEnforcer, AppArmorOptions, Enforcer, ResultStatus};
use varmor_agent::HostFs;
use varmor_policy::bundle::ProfileBundle;
use varmor_policy::catalog::{self, Category};
use varmor_policy::proto::RevisedBundle;
use varmor_policy::{NodeFacts, PolicyIdentity};

/// Where the tests keep their files: a tmpfs mounted for the run (xattrs, leases and inode
/// flags behave the same everywhere).
const WORK: &str = "/tmp/varmor-aa";
/// A stand-in disk device for the disk-device rules (the VM's root is 9p: no real disk).
const DISK: &str = "varmor-aa-disk";
const HELPER_ENV: &str = "VARMOR_AA_HELPER";

// ---- skipping -------------------------------------------------------------------------------

/// The enforcer on this kernel, or `None` (skip) with the reason printed; a skip fails when
/// `VARMOR_REQUIRE_KERNEL_TESTS=1`.
fn enforcer(dir: &Path) -> Option<AppArmorEnforcer> {
    let e = AppArmorEnforcer::for_host(
        &HostFs::new("/"),
        AppArmorOptions {
            dir: Some(dir.to_path_buf()),
            ..AppArmorOptions::default()
        },
    );
    let c = e.capability();
    let reason = if !c.available {
        Some(c.reason)
    } else if !Path::new("/usr/bin/aa-exec").exists() {
        Some("/usr/bin/aa-exec is missing (apt-get install apparmor)".to_string())
    } else if unsafe { libc::geteuid() } != 0 {
        Some("the AppArmor kernel tests must run as root".to_string())
    } else {
        None
    };
    match reason {
        None => Some(e),
        Some(r) if std::env::var("VARMOR_REQUIRE_KERNEL_TESTS").as_deref() == Ok("1") => {
            panic!("AppArmor kernel test cannot run (VARMOR_REQUIRE_KERNEL_TESTS=1): {r}")
        }
        Some(r) => {
            eprintln!("skipped: {r} (run scripts/kernel-tests apparmor)");
            None
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

// ---- policies -------------------------------------------------------------------------------

fn compile(yaml: &str) -> RevisedBundle {
    let doc = varmor_policy::parse_documents(yaml)
        .into_iter()
        .next()
        .expect("one document")
        .unwrap_or_else(|e| panic!("invalid policy:\n{e}\n{yaml}"));
    let bundle: ProfileBundle = varmor_policy::compile(
        &doc.spec(),
        &PolicyIdentity::namespaced("demo", doc.name()),
        &NodeFacts {
            disk_devices: Some(vec![DISK.to_string()]),
        },
    )
    .unwrap_or_else(|e| panic!("compile failed:\n{e}\n{yaml}"));
    RevisedBundle {
        bundle,
        revision: 1,
    }
}

/// A policy; `enhance` is the YAML body of `enhanceProtect` (indented six spaces).
fn policy(name: &str, mode: &str, enhance: &str) -> RevisedBundle {
    let body = if enhance.is_empty() {
        String::new()
    } else {
        format!("    enhanceProtect:\n{enhance}")
    };
    compile(&format!(
        "apiVersion: crd.varmor.org/v1beta1\nkind: VarmorPolicy\nmetadata:\n  name: {name}\n  \
         namespace: demo\nspec:\n  target:\n    kind: Deployment\n    name: x\n  policy:\n    \
         enforcer: AppArmor\n    mode: {mode}\n{body}"
    ))
}

/// An EnhanceProtect policy (privileged, audited) with the given built-in rules.
fn rules_policy(name: &str, rules: &[&catalog::BuiltinRule]) -> RevisedBundle {
    let of = |cat: Category| {
        rules
            .iter()
            .filter(|r| r.category == cat)
            .map(|r| r.name)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut lists = String::new();
    let hardening = of(Category::Hardening);
    if !hardening.is_empty() {
        lists += &format!("      hardeningRules: [{hardening}]\n");
    }
    let attack = of(Category::AttackProtection);
    if !attack.is_empty() {
        lists += &format!("      attackProtectionRules:\n      - rules: [{attack}]\n");
    }
    let vul = of(Category::VulMitigation);
    if !vul.is_empty() {
        lists += &format!("      vulMitigationRules: [{vul}]\n");
    }
    policy(
        name,
        "EnhanceProtect",
        &format!("      privileged: true\n      auditViolations: true\n{lists}"),
    )
}

fn apply(rt: &tokio::runtime::Runtime, e: &AppArmorEnforcer, b: &RevisedBundle) {
    let o = rt.block_on(e.apply(b));
    assert_eq!(
        o.status,
        ResultStatus::Applied,
        "{}: {}",
        b.bundle.profile_name,
        o.message
    );
}

fn kernel_profiles() -> String {
    std::fs::read_to_string("/sys/kernel/security/apparmor/profiles").expect("profile list")
}

// ---- the environment ------------------------------------------------------------------------

/// Files, mounts and processes the actions work on. Created once per test binary run.
struct Env {
    sleeper: u32,
}

fn env() -> &'static Env {
    static ENV: std::sync::OnceLock<Env> = std::sync::OnceLock::new();
    ENV.get_or_init(setup)
}

fn sh(cmd: &str) {
    let out = Command::new("/bin/sh")
        .args(["-c", cmd])
        .output()
        .expect("sh");
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn setup() -> Env {
    let w = WORK;
    sh(&format!(
        "set -e; mkdir -p {w}; mountpoint -q {w} || mount -t tmpfs -o mode=0755 varmor-aa {w}; \
         cd {w}; mkdir -p mnt bin t o home/.ssh skills devices/a cg run-secrets; \
         : > mnt-file; : > file; : > root000; chmod 000 root000; \
         : > owned1000; chown 1000:1000 owned1000; : > gid1000; chgrp 1000 gid1000; \
         : > containerd.sock; : > home/.ssh/id_rsa; : > skills/notes; : > release_agent; \
         for f in devices/devices.allow devices/a/devices.allow devices/cgroup.procs \
                  devices/a/cgroup.procs devices/tasks devices/a/tasks bin/runc; do : > $f; done; \
         for b in wget curl chmod su sudo; do cp /bin/true bin/$b; done; \
         cp /bin/busybox t/cat; cp /bin/busybox o/cat; \
         : > /etc/varmor-aa-file; : > /dev/{DISK}; \
         mkdir -p /run/secrets/kubernetes.io/serviceaccount; \
         echo token > /run/secrets/kubernetes.io/serviceaccount/token; \
         mkdir -p /sys/fs/cgroup/varmor-aa; \
         mountpoint -q /sys/fs/cgroup/varmor-aa || mount -t tmpfs varmor-aa-cg /sys/fs/cgroup/varmor-aa; \
         : > /sys/fs/cgroup/varmor-aa/release_agent; \
         echo 2 > /proc/sys/kernel/perf_event_paranoid; \
         echo 0 > /proc/sys/kernel/printk_ratelimit"
    ));
    // Without auditd the kernel prints audit records through printk_ratelimit() (10 per 5 s
    // by default); the built-in rule test alone produces hundreds, so the other tests' log
    // checks would race it. Interval 0 turns the limit off inside the test VM.
    let sleeper = Command::new("/bin/sleep")
        .arg("3600")
        .uid(1000)
        .gid(1000)
        .stdin(Stdio::null())
        .spawn()
        .expect("sleeper")
        .id();
    Env { sleeper }
}

// ---- running actions ------------------------------------------------------------------------

/// What the helper reported.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    /// The kernel allowed the action (or refused it for a reason other than permission).
    Allowed,
    /// `EACCES` or `EPERM` (or the silent equivalent, e.g. a setgid bit cleared).
    Denied(String),
    /// Something else went wrong.
    Error(String),
}

/// Runs `actions` in one helper process confined by `profile` (`None`: unconfined); each
/// action runs in a child of its own, so one action's effects (setuid, capset, chroot) do not
/// reach the next.
fn run_batch(profile: Option<&str>, actions: &[String]) -> Vec<Verdict> {
    if actions.is_empty() {
        return Vec::new();
    }
    let exe = std::env::current_exe().expect("current exe");
    let mut cmd = match profile {
        Some(p) => {
            let mut c = Command::new("/usr/bin/aa-exec");
            c.args(["-p", p, "--"]).arg(&exe);
            c
        }
        None => Command::new(&exe),
    };
    let mut child = cmd
        .args([
            "apparmor_helper_entry_point",
            "--exact",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ])
        .env(HELPER_ENV, actions.join(";"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the helper");
    let stderr = {
        use std::io::Read;
        let mut s = String::new();
        child
            .stderr
            .take()
            .expect("stderr")
            .read_to_string(&mut s)
            .expect("helper stderr");
        s
    };
    let status = child.wait().expect("helper status");
    let mut notes: BTreeMap<usize, String> = BTreeMap::new();
    let mut codes: BTreeMap<usize, i32> = BTreeMap::new();
    for line in stderr.lines() {
        let mut parts = line.splitn(3, ' ');
        let (tag, i, rest) = (parts.next(), parts.next(), parts.next().unwrap_or(""));
        let Some(i) = i.and_then(|i| i.parse::<usize>().ok()) else {
            continue;
        };
        match tag {
            Some("varmor-aa-note") => {
                notes.insert(i, rest.to_string());
            }
            Some("varmor-aa-result") => {
                codes.insert(i, rest.trim().parse().unwrap_or(-1));
            }
            _ => {}
        }
    }
    (0..actions.len())
        .map(|i| {
            let note = notes.get(&i).cloned().unwrap_or_default();
            match codes.get(&i) {
                Some(0) => Verdict::Allowed,
                Some(13) => Verdict::Denied(note),
                Some(c) => Verdict::Error(format!("exit {c}: {note}")),
                None => Verdict::Error(format!("no result (helper {status}): {stderr}")),
            }
        })
        .collect()
}

/// One action, in a helper of its own.
fn verdict(profile: Option<&str>, action: &str) -> Verdict {
    run_batch(profile, &[action.to_string()]).remove(0)
}

/// What each built-in AppArmor rule forbids, as helper actions; `allowed` actions must still
/// work under the rule's profile.
struct Check {
    denied: Vec<String>,
    allowed: Vec<String>,
}

fn check(denied: &[&str]) -> Check {
    Check {
        denied: denied.iter().map(|s| s.to_string()).collect(),
        allowed: Vec::new(),
    }
}

/// The actions of each built-in rule. A rule with an AppArmor part that is missing here makes
/// the test fail, unless it is in [`UNEXERCISABLE`].
fn checks(env: &Env) -> BTreeMap<&'static str, Check> {
    let w = WORK;
    let s = env.sleeper;
    let mut m: BTreeMap<&'static str, Check> = BTreeMap::new();
    let caps: &[(&str, &str)] = &[
        ("chown", "cap chown"),
        ("dac-override", "cap dac-override"),
        ("dac-read-search", "cap dac-read-search"),
        ("fowner", "cap fowner"),
        ("fsetid", "cap fsetid"),
        ("kill", "cap kill"),
        ("setgid", "cap setgid"),
        ("setuid", "cap setuid"),
        ("setpcap", "cap setpcap"),
        ("linux-immutable", "cap linux-immutable"),
        ("net-bind-service", "cap net-bind-service"),
        ("net-admin", "cap net-admin"),
        ("net-raw", "cap net-raw"),
        ("ipc-lock", "cap ipc-lock"),
        ("ipc-owner", "cap ipc-owner"),
        ("sys-module", "cap sys-module"),
        ("sys-rawio", "cap sys-rawio"),
        ("sys-chroot", "cap sys-chroot"),
        ("sys-ptrace", "cap sys-ptrace"),
        ("sys-pacct", "cap sys-pacct"),
        ("sys-admin", "cap sys-admin"),
        ("sys-boot", "cap sys-boot"),
        ("sys-nice", "cap sys-nice"),
        ("sys-resource", "cap sys-resource"),
        ("sys-time", "cap sys-time"),
        ("sys-tty-config", "cap sys-tty-config"),
        ("mknod", "cap mknod"),
        ("lease", "cap lease"),
        ("audit-write", "cap audit-write"),
        ("audit-control", "cap audit-control"),
        ("setfcap", "cap setfcap"),
        ("mac-admin", "cap mac-admin"),
        ("syslog", "cap syslog"),
        ("wake-alarm", "cap wake-alarm"),
        ("block-suspend", "cap block-suspend"),
        ("audit-read", "cap audit-read"),
        ("perfmon", "cap perfmon"),
        ("bpf", "cap bpf"),
        ("checkpoint-restore", "cap checkpoint-restore"),
    ];
    let cap_rule_names: BTreeMap<String, &'static str> = catalog::all()
        .iter()
        .map(|r| (r.name.to_string(), r.name))
        .collect();
    for (cap, action) in caps {
        let name = cap_rule_names[&format!("disable-cap-{cap}")];
        m.insert(name, check(&[&format!("{action} {s}")]));
    }
    m.insert(
        "disable-cap-all",
        check(&["cap chown", "cap net-raw", "cap sys-admin"]),
    );
    m.insert(
        "disable-cap-all-except-net-bind-service",
        Check {
            denied: vec!["cap chown".into(), "cap sys-admin".into()],
            allowed: vec!["cap net-bind-service".into()],
        },
    );
    m.insert(
        "disable-cap-privileged",
        Check {
            denied: vec!["cap sys-module".into(), "cap sys-admin".into()],
            allowed: vec!["cap chown".into()],
        },
    );
    m.insert("disallow-insmod", check(&["cap sys-module"]));
    m.insert("disallow-load-bpf-prog", check(&["bpf-load"]));
    m.insert("disallow-abuse-user-ns", check(&["cap sys-admin"]));
    m.insert(
        "disallow-write-core-pattern",
        check(&["openw /proc/sys/kernel/core_pattern"]),
    );
    m.insert(
        "disallow-mount-securityfs",
        check(&[&format!("mount securityfs securityfs {w}/mnt")]),
    );
    m.insert(
        "disallow-mount-procfs",
        check(&[
            &format!("mount proc proc {w}/mnt"),
            &format!("mount /proc none {w}/mnt bind"),
        ]),
    );
    m.insert(
        "disallow-write-release-agent",
        check(&["openw /sys/fs/cgroup/varmor-aa/release_agent"]),
    );
    m.insert(
        "disallow-mount-cgroupfs",
        check(&[
            &format!("mount cgroup cgroup {w}/mnt none,name=varmoraa"),
            &format!("mount /sys/fs/cgroup none {w}/mnt bind"),
        ]),
    );
    m.insert(
        "disallow-debug-disk-device",
        check(&[&format!("read /dev/{DISK}")]),
    );
    m.insert(
        "disallow-mount-disk-device",
        check(&[&format!("mount /dev/{DISK} none {w}/mnt-file bind")]),
    );
    m.insert(
        "disallow-mount",
        check(&[&format!("mount tmpfs tmpfs {w}/mnt")]),
    );
    m.insert("disallow-umount", check(&[&format!("umount {w}/mnt")]));
    m.insert(
        "disallow-access-procfs-root",
        check(&["readlink /proc/1/root"]),
    );
    m.insert("disallow-access-kallsyms", check(&["read /proc/kallsyms"]));
    m.insert(
        "mitigate-sa-leak",
        check(&["read /run/secrets/kubernetes.io/serviceaccount/token"]),
    );
    m.insert(
        "mitigate-disk-device-number-leak",
        check(&["read /proc/partitions", "read /proc/self/mountinfo"]),
    );
    m.insert(
        "mitigate-overlayfs-leak",
        check(&["read /proc/self/mounts", "read /proc/self/mountinfo"]),
    );
    m.insert("mitigate-host-ip-leak", check(&["read /proc/self/net/arp"]));
    m.insert(
        "block-access-to-container-runtime",
        check(&[&format!("read {w}/containerd.sock")]),
    );
    m.insert("disable-write-etc", check(&["openw /etc/varmor-aa-file"]));
    m.insert("disable-access-passwd", check(&["read /etc/passwd"]));
    m.insert("disable-access-shadow", check(&["read /etc/shadow"]));
    m.insert(
        "disable-access-ssh-dir",
        check(&[&format!("read {w}/home/.ssh/id_rsa")]),
    );
    m.insert(
        "disable-write-skills",
        check(&[&format!("openw {w}/skills/notes")]),
    );
    m.insert("disable-busybox", check(&["exec /bin/busybox true"]));
    m.insert(
        "disable-shell",
        check(&["exec /bin/sh -c true", "exec /bin/bash -c true"]),
    );
    for (rule, bins) in [
        ("disable-wget", &["wget"][..]),
        ("disable-curl", &["curl"]),
        ("disable-chmod", &["chmod"]),
        ("disable-su-sudo", &["su", "sudo"]),
    ] {
        let actions: Vec<String> = bins.iter().map(|b| format!("exec {w}/bin/{b}")).collect();
        m.insert(
            rule,
            Check {
                denied: actions,
                allowed: Vec::new(),
            },
        );
    }
    m.insert("disable-network", check(&["socket inet stream"]));
    m.insert("disable-inet", check(&["socket inet dgram"]));
    m.insert("disable-inet6", check(&["socket inet6 dgram"]));
    m.insert("disable-unix-domain-socket", check(&["socket unix stream"]));
    m.insert("disable-icmp", check(&["socket inet raw-icmp"]));
    m.insert("disable-tcp", check(&["socket inet stream"]));
    m.insert("disable-udp", check(&["socket inet dgram"]));
    m.insert(
        "cgroups-lxcfs-escape-mitigation",
        check(&[
            &format!("openw {w}/release_agent"),
            &format!("openw {w}/devices/devices.allow"),
            &format!("openw {w}/devices/a/devices.allow"),
            &format!("openw {w}/devices/cgroup.procs"),
            &format!("openw {w}/devices/a/cgroup.procs"),
            &format!("openw {w}/devices/tasks"),
            &format!("openw {w}/devices/a/tasks"),
        ]),
    );
    m.insert(
        "runc-override-mitigation",
        check(&[&format!("openw {w}/bin/runc")]),
    );
    m.insert("copy-fail-mitigation", check(&["socket alg seqpacket"]));
    m
}

/// Rules with an AppArmor part whose denial no process can observe on this kernel, and why.
const UNEXERCISABLE: &[(&str, &str)] = &[
    (
        "disable-cap-net-broadcast",
        "Linux checks CAP_NET_BROADCAST nowhere; the rule only loads",
    ),
    (
        "disable-cap-mac-override",
        "only Smack checks CAP_MAC_OVERRIDE; with AppArmor the rule only loads",
    ),
];

/// Unmounts what denied `umount` runs left on the test mount point.
fn unmount_leftovers() {
    while Command::new("/bin/umount")
        .arg(format!("{WORK}/mnt"))
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {}
}

/// A profile's verdicts: (action, verdict, must be denied), and a problem loading it.
type RuleResult = (String, Vec<(String, Verdict, bool)>, Option<String>);

/// One profile of the built-in rule test: its rules, and per action (rule, action, denied?).
struct Job {
    name: String,
    rules: Vec<&'static catalog::BuiltinRule>,
    expect: Vec<(&'static str, String, bool)>,
}

/// Capability rules that cover several capabilities: each gets a profile of its own. Every
/// other `disable-cap-<cap>` rule is in the capability family.
const CAP_SETS: &[&str] = &[
    "disable-cap-all",
    "disable-cap-all-except-net-bind-service",
    "disable-cap-privileged",
];

/// Families of rules whose effects are disjoint (none denies another's action), checked in
/// two cross-checked halves.
const FAMILIES: &[(&str, &[&str])] = &[
    (
        "exec",
        &[
            "disable-busybox",
            "disable-shell",
            "disable-wget",
            "disable-curl",
            "disable-chmod",
            "disable-su-sudo",
        ],
    ),
    (
        "file",
        &[
            "disallow-write-core-pattern",
            "disallow-write-release-agent",
            "disallow-debug-disk-device",
            "disallow-access-kallsyms",
            "mitigate-sa-leak",
            "mitigate-host-ip-leak",
            "block-access-to-container-runtime",
            "disable-write-etc",
            "disable-access-passwd",
            "disable-access-shadow",
            "disable-access-ssh-dir",
            "disable-write-skills",
            "runc-override-mitigation",
        ],
    ),
    (
        "mount",
        &[
            "disallow-mount-securityfs",
            "disallow-mount-procfs",
            "disallow-mount-cgroupfs",
            "disallow-mount-disk-device",
            "disallow-umount",
        ],
    ),
    (
        "socket",
        &[
            "disable-inet",
            "disable-inet6",
            "disable-unix-domain-socket",
            "copy-fail-mitigation",
        ],
    ),
    (
        "misc",
        &[
            "disallow-insmod",
            "disallow-load-bpf-prog",
            "disallow-access-procfs-root",
        ],
    ),
];

#[test]
fn apparmor_builtin_rules_deny_confined_and_allow_unconfined() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(e) = enforcer(dir.path()) else {
        return;
    };
    let env = env();
    let start = Instant::now();
    let checks = checks(env);
    let mut missing = Vec::new();
    let mut rules = Vec::new();
    let load_only = check(&[]);
    for rule in catalog::all().iter().filter(|r| r.supports_apparmor()) {
        match checks.get(rule.name) {
            Some(c) => rules.push((rule, c)),
            None if UNEXERCISABLE.iter().any(|(n, _)| *n == rule.name) => {
                rules.push((rule, &load_only))
            }
            None => missing.push(rule.name),
        }
    }
    assert!(
        missing.is_empty(),
        "built-in AppArmor rules without a kernel check: {missing:?}"
    );

    // Every action unconfined, and under the control profile (the same policy without rules).
    let mut all: Vec<String> = rules
        .iter()
        .flat_map(|(_, c)| c.denied.iter().cloned())
        .collect();
    all.sort();
    all.dedup();
    let rt = runtime();
    let control = policy(
        "aa-control",
        "EnhanceProtect",
        "      privileged: true\n      auditViolations: true\n",
    );
    apply(&rt, &e, &control);
    let control = control.bundle.profile_name.clone();
    let t = Instant::now();
    let unconfined = run_batch(None, &all);
    unmount_leftovers();
    eprintln!("{} actions unconfined in {:.1?}", all.len(), t.elapsed());
    let t = Instant::now();
    let controlled = run_batch(Some(&control), &all);
    unmount_leftovers();
    eprintln!(
        "{} actions under {control} in {:.1?}",
        all.len(),
        t.elapsed()
    );
    rt.block_on(e.remove(&control));
    let mut failures = Vec::new();
    for (action, (u, c)) in all.iter().zip(unconfined.iter().zip(&controlled)) {
        if *u != Verdict::Allowed || *c != Verdict::Allowed {
            failures.push(format!(
                "`{action}` must be allowed unconfined and under a profile without the rule: \
                 unconfined {u:?}, control {c:?}"
            ));
        }
    }
    let baseline = start.elapsed();

    // The rules' profiles, loaded by the enforcer. Rules of a family with disjoint effects
    // (one capability each; one path each; …) are split in two halves, each
    // loaded as one profile: a rule's action must be denied under its half and allowed under
    // the other, which also shows that no rule denies more than its own action. Every other
    // rule gets a profile of its own. Two workers with an enforcer each (the VM has two CPUs;
    // compiling a profile dominates).
    let mut jobs: Vec<Job> = Vec::new();
    let cap_family: Vec<&str> = rules
        .iter()
        .map(|(r, _)| r.name)
        .filter(|n| n.starts_with("disable-cap-") && !CAP_SETS.contains(n))
        .collect();
    let families: Vec<(&str, Vec<&str>)> = std::iter::once(("cap", cap_family))
        .chain(FAMILIES.iter().map(|(f, m)| (*f, m.to_vec())))
        .collect();
    for (family, names) in &families {
        let members: Vec<_> = rules
            .iter()
            .filter(|(r, _)| names.contains(&r.name))
            .collect();
        assert_eq!(members.len(), names.len(), "{family}: {names:?}");
        for half in 0..2 {
            let mut job = Job {
                name: format!("aa-{family}-half{half}"),
                rules: Vec::new(),
                expect: Vec::new(),
            };
            for (i, (rule, c)) in members.iter().enumerate() {
                let mine = i % 2 == half;
                if mine {
                    job.rules.push(*rule);
                }
                for a in &c.denied {
                    job.expect.push((rule.name, a.clone(), mine));
                }
            }
            jobs.push(job);
        }
    }
    let grouped: Vec<&str> = jobs
        .iter()
        .flat_map(|j| j.rules.iter().map(|r| r.name))
        .collect();
    for (rule, c) in &rules {
        if grouped.contains(&rule.name) {
            continue;
        }
        let mut expect: Vec<(&'static str, String, bool)> = c
            .denied
            .iter()
            .map(|a| (rule.name, a.clone(), true))
            .collect();
        expect.extend(c.allowed.iter().map(|a| (rule.name, a.clone(), false)));
        jobs.push(Job {
            name: format!("aa-{}", rule.name),
            rules: vec![*rule],
            expect,
        });
    }
    let load_time = std::sync::Mutex::new(Duration::ZERO);
    let results: std::sync::Mutex<Vec<RuleResult>> = std::sync::Mutex::new(Vec::new());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let worker_dirs = [
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    ];
    std::thread::scope(|scope| {
        for wd in &worker_dirs {
            let (jobs, next, results, load_time) = (&jobs, &next, &results, &load_time);
            scope.spawn(move || {
                let rt = runtime();
                let e = enforcer(wd.path()).expect("enforcer");
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(job) = jobs.get(i) else { break };
                    let b = rules_policy(&job.name, &job.rules);
                    let t = Instant::now();
                    let o = rt.block_on(e.apply(&b));
                    let loaded = t.elapsed();
                    *load_time.lock().unwrap() += loaded;
                    let profile = b.bundle.profile_name.as_str();
                    if o.status != ResultStatus::Applied {
                        results.lock().unwrap().push((
                            job.name.clone(),
                            Vec::new(),
                            Some(format!("not applied: {o:?}")),
                        ));
                        continue;
                    }
                    let actions: Vec<String> = job.expect.iter().map(|x| x.1.clone()).collect();
                    let got = run_batch(Some(profile), &actions);
                    eprintln!(
                        "{profile}: loaded in {loaded:.1?}, {} actions in {:.1?}",
                        actions.len(),
                        t.elapsed() - loaded
                    );
                    let o = rt.block_on(e.remove(profile));
                    let removed =
                        (o.status != ResultStatus::Removed).then(|| format!("not removed: {o:?}"));
                    let verdicts = job
                        .expect
                        .iter()
                        .zip(got)
                        .map(|((rule, a, deny), v)| (format!("{rule}: {a}"), v, *deny))
                        .collect();
                    results
                        .lock()
                        .unwrap()
                        .push((job.name.clone(), verdicts, removed));
                }
            });
        }
    });
    unmount_leftovers();
    let mut results = results.into_inner().unwrap();
    results.sort_by(|a, b| a.0.cmp(&b.0));
    let mut runs = 0;
    for (job, verdicts, problem) in &results {
        if let Some(p) = problem {
            failures.push(format!("{job}: {p}"));
        }
        for (action, v, must_deny) in verdicts {
            runs += 1;
            println!("{job:<42} {action:<70} {v:?}");
            let ok = if *must_deny {
                matches!(v, Verdict::Denied(_))
            } else {
                *v == Verdict::Allowed
            };
            if !ok {
                let want = if *must_deny { "denied" } else { "allowed" };
                failures.push(format!(
                    "profile {job}: `{action}` must be {want}, got {v:?}"
                ));
            }
        }
    }
    let loads = results.len() as u32;
    let load_time = load_time.into_inner().unwrap();
    println!(
        "{loads} profiles for {} rules loaded by the enforcer ({:.0?} each on average); {} actions \
         checked unconfined and under the control profile in {:.1?}; {runs} actions under the \
         rules; {:.1?} in all",
        rules.len(),
        load_time / loads.max(1),
        all.len(),
        baseline,
        start.elapsed()
    );
    for (rule, why) in UNEXERCISABLE {
        println!("{rule}: loaded but not exercised: {why}");
    }
    let denied = kernel_log_lines("apparmor=\"DENIED\"");
    println!(
        "kernel log: {} apparmor=\"DENIED\" records of varmor profiles; first: {:?}",
        denied.len(),
        denied.first()
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(loads as usize, jobs.len());
    assert!(
        !denied.is_empty(),
        "audit deny rules must log apparmor=\"DENIED\" in the kernel log"
    );
}

/// Lines of the kernel log that contain `needle` and name a varmor profile.
fn kernel_log_lines(needle: &str) -> Vec<String> {
    let out = Command::new("dmesg").output().expect("dmesg");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(needle) && l.contains("profile=\"varmor-"))
        .map(str::to_string)
        .collect()
}

#[test]
fn apparmor_targets_child_profiles_confine_only_the_named_executables() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(e) = enforcer(dir.path()) else {
        return;
    };
    let _ = env();
    let rt = runtime();
    let w = WORK;
    let b = policy(
        "aa-targets",
        "EnhanceProtect",
        &format!(
            "      privileged: true\n      auditViolations: true\n      attackProtectionRules:\n      \
             - rules: [disable-access-passwd]\n        targets: [{w}/t/cat]\n"
        ),
    );
    apply(&rt, &e, &b);
    let profile = b.bundle.profile_name.clone();
    assert!(
        kernel_profiles().contains(&format!("{profile}//child_0 (enforce)")),
        "{}",
        kernel_profiles()
    );
    let shell = |cmd: &str| {
        Command::new("/usr/bin/aa-exec")
            .args(["-p", &profile, "--", "/bin/busybox", "sh", "-c", cmd])
            .output()
            .expect("aa-exec")
    };
    let target = shell(&format!("{w}/t/cat /etc/passwd"));
    assert!(
        !target.status.success(),
        "the target is denied: {}",
        String::from_utf8_lossy(&target.stdout)
    );
    assert!(
        String::from_utf8_lossy(&target.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&target.stderr)
    );
    let other = shell(&format!("{w}/o/cat /etc/passwd"));
    assert!(
        other.status.success() && String::from_utf8_lossy(&other.stdout).contains("root:"),
        "the same binary at another path is not confined by the child: {other:?}"
    );
    assert_eq!(
        verdict(Some(&profile), "read /etc/passwd"),
        Verdict::Allowed,
        "the parent profile allows it"
    );
    let mut logged = kernel_log_lines(&format!("profile=\"{profile}//child_0\""));
    for _ in 0..5 {
        if !logged.is_empty() {
            break;
        }
        // A record can still be lost to the audit backlog while other tests flood it;
        // deny again and look again.
        std::thread::sleep(std::time::Duration::from_millis(500));
        let _ = shell(&format!("{w}/t/cat /etc/passwd"));
        logged = kernel_log_lines(&format!("profile=\"{profile}//child_0\""));
    }
    println!("child profile denials in the kernel log: {}", logged.len());
    assert!(!logged.is_empty(), "the child's audit deny is logged");
    rt.block_on(e.remove(&profile));
}

#[test]
fn apparmor_complain_mode_allows_and_logs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(e) = enforcer(dir.path()) else {
        return;
    };
    let _ = env();
    let rt = runtime();
    // BehaviorModeling: an empty profile in complain mode.
    let modeling = compile(
        "apiVersion: crd.varmor.org/v1beta1\nkind: VarmorPolicy\nmetadata:\n  name: aa-modeling\n  \
         namespace: demo\nspec:\n  target:\n    kind: Deployment\n    name: x\n  policy:\n    \
         enforcer: AppArmor\n    mode: BehaviorModeling\n    modelingOptions:\n      duration: 3\n",
    );
    assert!(modeling.bundle.apparmor.as_ref().unwrap().complain);
    apply(&rt, &e, &modeling);
    let profile = modeling.bundle.profile_name.clone();
    assert!(
        kernel_profiles().contains(&format!("{profile} (complain)")),
        "{}",
        kernel_profiles()
    );
    assert_eq!(
        verdict(Some(&profile), "read /etc/shadow"),
        Verdict::Allowed
    );
    let allowed = kernel_log_lines("apparmor=\"ALLOWED\"");
    assert!(
        allowed
            .iter()
            .any(|l| l.contains(&format!("profile=\"{profile}\""))),
        "complain mode logs ALLOWED: {allowed:?}"
    );
    rt.block_on(e.remove(&profile));

    // EnhanceProtect with allowViolations: the rule becomes an audit (allow) rule.
    let allow = policy(
        "aa-allow",
        "EnhanceProtect",
        "      privileged: true\n      allowViolations: true\n      auditViolations: true\n      \
         attackProtectionRules:\n      - rules: [disable-access-shadow]\n",
    );
    apply(&rt, &e, &allow);
    let profile = allow.bundle.profile_name.clone();
    assert_eq!(
        verdict(Some(&profile), "read /etc/shadow"),
        Verdict::Allowed
    );
    let audited = kernel_log_lines("apparmor=\"AUDIT\"");
    println!(
        "kernel log: ALLOWED records {}, AUDIT records {}",
        allowed.len(),
        audited.len()
    );
    assert!(
        audited
            .iter()
            .any(|l| l.contains(&format!("profile=\"{profile}\""))),
        "allowViolations + auditViolations logs AUDIT: {audited:?}"
    );
    rt.block_on(e.remove(&profile));
}

#[test]
fn apparmor_replace_reaches_running_tasks_and_remove_unloads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(e) = enforcer(dir.path()) else {
        return;
    };
    let _ = env();
    let rt = runtime();
    let open = policy(
        "aa-life",
        "EnhanceProtect",
        "      privileged: true\n      auditViolations: true\n",
    );
    apply(&rt, &e, &open);
    let profile = open.bundle.profile_name.clone();

    // A confined shell waits for a line, then reads /etc/passwd.
    let mut child = Command::new("/usr/bin/aa-exec")
        .args([
            "-p",
            &profile,
            "--",
            "/bin/busybox",
            "sh",
            "-c",
            "read x; cat /etc/passwd > /dev/null && echo READ || echo REFUSED",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("aa-exec");
    std::thread::sleep(Duration::from_millis(300));
    let mut closed = policy(
        "aa-life",
        "EnhanceProtect",
        "      privileged: true\n      auditViolations: true\n      attackProtectionRules:\n      \
         - rules: [disable-access-passwd]\n",
    );
    closed.revision = 2;
    let o = rt.block_on(e.apply(&closed));
    assert_eq!(o.status, ResultStatus::Applied, "{o:?}");
    assert!(o.message.contains("replaced"), "{o:?}");
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    }
    let out = child.wait_with_output().expect("wait");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "REFUSED",
        "the running task follows the replaced profile"
    );

    // A rejected update keeps the loaded profile.
    let mut broken = closed.clone();
    broken.revision = 3;
    let aa = broken.bundle.apparmor.as_mut().unwrap();
    aa.text = aa.text.replace("/etc/passwd rw,", "/etc/passwd rwzz,");
    let o = rt.block_on(e.apply(&broken));
    assert_eq!(o.status, ResultStatus::Failed, "{o:?}");
    assert!(o.message.contains("stay in force"), "{o:?}");
    assert!(matches!(
        verdict(Some(&profile), "read /etc/passwd"),
        Verdict::Denied(_)
    ));

    // Remove: the kernel no longer lists it; aa-exec cannot use it.
    let o = rt.block_on(e.remove(&profile));
    assert_eq!(o.status, ResultStatus::Removed, "{o:?}");
    assert!(
        !kernel_profiles().contains(&format!("{profile} (")),
        "{}",
        kernel_profiles()
    );
    assert!(!e.file_of(&profile).exists());
    assert!(matches!(
        verdict(Some(&profile), "read /etc/passwd"),
        Verdict::Error(_)
    ));

    // Orphans: a new enforcer on the same directory unloads what no held bundle re-applies.
    let kept = policy("aa-kept", "EnhanceProtect", "      privileged: true\n");
    let gone = policy("aa-gone", "EnhanceProtect", "      privileged: true\n");
    apply(&rt, &e, &kept);
    apply(&rt, &e, &gone);
    let e2 = enforcer(dir.path()).expect("enforcer");
    apply(&rt, &e2, &kept);
    let swept = rt.block_on(e2.remove_orphans());
    assert_eq!(swept.len(), 1, "{swept:?}");
    assert_eq!(swept[0].0, gone.bundle.profile_name);
    let list = kernel_profiles();
    assert!(
        !list.contains(&format!("{} (", gone.bundle.profile_name)),
        "{list}"
    );
    assert!(
        list.contains(&format!("{} (enforce)", kept.bundle.profile_name)),
        "{list}"
    );
    rt.block_on(e2.remove(&kept.bundle.profile_name));
}

// ---- the helper -----------------------------------------------------------------------------

/// Not a test: the entry point of the helper process (`VARMOR_AA_HELPER=<action>;<action>…`).
/// Each action runs in a forked child that exits 0 (allowed), 13 (denied) or 2 (another
/// error), killed by `SIGALRM` after 20 s; the results go to stderr as
/// `varmor-aa-result <index> <code>`. Without the variable it returns at once.
#[test]
fn apparmor_helper_entry_point() {
    let Ok(actions) = std::env::var(HELPER_ENV) else {
        return;
    };
    for (i, action) in actions.split(';').enumerate() {
        let words: Vec<&str> = action.split_whitespace().collect();
        // The child only makes syscalls and writes one line; the parent waits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            unsafe { libc::alarm(20) };
            let (code, note) = match perform(&words) {
                Ok(()) => (0, String::new()),
                Err(Failure::Denied(m)) => (13, m),
                Err(Failure::Other(m)) => (2, m),
            };
            eprintln!("varmor-aa-note {i} {note}");
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        let code = if pid < 0 || unsafe { libc::waitpid(pid, &mut status, 0) } != pid {
            -1
        } else if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            100 + libc::WTERMSIG(status)
        };
        eprintln!("varmor-aa-result {i} {code}");
    }
    std::process::exit(0);
}

enum Failure {
    Denied(String),
    Other(String),
}

/// The result of a syscall wrapper: `-1` with `errno` is a failure.
fn sys(what: &str, ret: i64) -> Result<i64, Failure> {
    if ret >= 0 {
        return Ok(ret);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) => Err(Failure::Denied(format!("{what}: {e}"))),
        _ => Err(Failure::Other(format!("{what}: {e}"))),
    }
}

/// Like [`sys`], but errors other than `EACCES`/`EPERM` mean the permission check passed (the
/// call was made to be refused later, e.g. for a bad argument).
fn sys_probe(what: &str, ret: i64) -> Result<(), Failure> {
    match sys(what, ret) {
        Ok(_) | Err(Failure::Other(_)) => Ok(()),
        Err(d) => Err(d),
    }
}

fn cstr(s: &str) -> CString {
    CString::new(s).expect("no NUL")
}

fn io_result<T>(what: &str, r: std::io::Result<T>) -> Result<T, Failure> {
    r.map_err(|e| match e.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) => Failure::Denied(format!("{what}: {e}")),
        _ => Failure::Other(format!("{what}: {e}")),
    })
}

fn perform(w: &[&str]) -> Result<(), Failure> {
    match w {
        ["read", path] => {
            use std::io::Read;
            let mut f = io_result(path, std::fs::File::open(path))?;
            let mut buf = [0u8; 1];
            io_result(path, f.read(&mut buf)).map(|_| ())
        }
        ["openw", path] => {
            io_result(path, std::fs::OpenOptions::new().write(true).open(path)).map(|_| ())
        }
        ["readlink", path] => io_result(path, std::fs::read_link(path)).map(|_| ()),
        ["exec", path, args @ ..] => {
            let status = io_result(path, Command::new(path).args(args).status())?;
            if status.success() {
                Ok(())
            } else {
                Err(Failure::Other(format!("{path} exited with {status}")))
            }
        }
        ["mount", src, fstype, target, rest @ ..] => {
            let bind = rest.first() == Some(&"bind");
            let data = rest.first().filter(|d| **d != "bind").map(|d| cstr(d));
            let flags = if bind { libc::MS_BIND } else { 0 };
            let r = unsafe {
                libc::mount(
                    cstr(src).as_ptr(),
                    cstr(target).as_ptr(),
                    cstr(fstype).as_ptr(),
                    flags,
                    data.as_ref()
                        .map_or(std::ptr::null(), |d| d.as_ptr().cast()),
                )
            };
            sys("mount", r.into())?;
            unsafe { libc::umount2(cstr(target).as_ptr(), libc::MNT_DETACH) };
            Ok(())
        }
        ["umount", target] => {
            let t = cstr(target);
            let (src, fstype) = (cstr("varmor-aa-umount"), cstr("tmpfs"));
            let r = unsafe {
                libc::mount(
                    src.as_ptr(),
                    t.as_ptr(),
                    fstype.as_ptr(),
                    0,
                    std::ptr::null(),
                )
            };
            match sys("mount before umount", r.into()) {
                Err(Failure::Denied(m)) => return Err(Failure::Other(m)),
                other => other?,
            };
            sys("umount", unsafe { libc::umount2(t.as_ptr(), 0) }.into()).map(|_| ())
        }
        ["socket", domain, kind] => {
            let domain = match *domain {
                "inet" => libc::AF_INET,
                "inet6" => libc::AF_INET6,
                "unix" => libc::AF_UNIX,
                "alg" => libc::AF_ALG,
                d => return Err(Failure::Other(format!("unknown domain {d}"))),
            };
            let (kind, proto) = match *kind {
                "stream" => (libc::SOCK_STREAM, 0),
                "dgram" => (libc::SOCK_DGRAM, 0),
                "seqpacket" => (libc::SOCK_SEQPACKET, 0),
                "raw-icmp" => (libc::SOCK_RAW, libc::IPPROTO_ICMP),
                k => return Err(Failure::Other(format!("unknown type {k}"))),
            };
            let fd = unsafe { libc::socket(domain, kind, proto) };
            // A family the kernel lacks (EAFNOSUPPORT) passed AppArmor's check.
            sys_probe("socket", fd.into())
        }
        ["bpf-load"] => bpf_load(),
        ["cap", name, rest @ ..] => capability(name, rest.first().copied()),
        _ => Err(Failure::Other(format!("unknown action {w:?}"))),
    }
}

/// Loads a two-instruction socket filter (`r0 = 0; exit`).
fn bpf_load() -> Result<(), Failure> {
    let insns: [u64; 2] = [0x0000_0000_0000_00b7, 0x0000_0000_0000_0095];
    let license = cstr("GPL");
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&1u32.to_ne_bytes()); // BPF_PROG_TYPE_SOCKET_FILTER
    attr[4..8].copy_from_slice(&2u32.to_ne_bytes());
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    let fd = unsafe { libc::syscall(libc::SYS_bpf, 5, attr.as_ptr(), attr.len()) };
    sys("bpf(BPF_PROG_LOAD)", fd).map(|_| ())
}

/// Removes `cap` from this thread's effective and permitted sets, so a check that also accepts
/// it (CAP_SYS_ADMIN stands in for CAP_BPF, CAP_PERFMON, …) tests only the other one.
fn drop_cap(cap: u32) -> Result<(), Failure> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mut h = Header {
        version: 0x2008_0522,
        pid: 0,
    };
    let mut d = [Data::default(); 2];
    sys("capget", unsafe {
        libc::syscall(libc::SYS_capget, &mut h as *mut Header, d.as_mut_ptr())
    })?;
    let (i, bit) = ((cap / 32) as usize, 1u32 << (cap % 32));
    d[i].effective &= !bit;
    d[i].permitted &= !bit;
    sys("capset", unsafe {
        libc::syscall(libc::SYS_capset, &mut h as *mut Header, d.as_ptr())
    })
    .map(|_| ())
}

/// The AppArmor-mediated operation of each capability; `arg` is the PID of a process of
/// another user.
fn capability(name: &str, arg: Option<&str>) -> Result<(), Failure> {
    let w = WORK;
    let other_pid: i32 = arg.and_then(|a| a.parse().ok()).unwrap_or(1);
    let path = |p: &str| cstr(&format!("{w}/{p}"));
    match name {
        "chown" => {
            let f = path("file");
            sys(
                "chown",
                unsafe { libc::chown(f.as_ptr(), 1000, u32::MAX) }.into(),
            )?;
            unsafe { libc::chown(f.as_ptr(), 0, u32::MAX) };
            Ok(())
        }
        "dac-override" => io_result(
            "open a mode-000 file for writing",
            std::fs::OpenOptions::new()
                .write(true)
                .open(format!("{w}/root000")),
        )
        .map(|_| ()),
        "dac-read-search" => {
            // open_by_handle_at checks CAP_DAC_READ_SEARCH before it looks at the handle.
            let mut handle = [0u8; 16];
            handle[0..4].copy_from_slice(&8u32.to_ne_bytes());
            handle[4..8].copy_from_slice(&1i32.to_ne_bytes());
            let r = unsafe {
                libc::syscall(
                    libc::SYS_open_by_handle_at,
                    libc::AT_FDCWD,
                    handle.as_ptr(),
                    libc::O_RDONLY,
                )
            };
            sys_probe("open_by_handle_at", r)
        }
        "fowner" => {
            let f = path("owned1000");
            sys("chmod", unsafe { libc::chmod(f.as_ptr(), 0o640) }.into()).map(|_| ())
        }
        "fsetid" => {
            // Without CAP_FSETID the kernel silently clears the setgid bit of a file whose
            // group the caller is not in.
            let f = path("gid1000");
            sys("chmod", unsafe { libc::chmod(f.as_ptr(), 0o2755) }.into())?;
            let mode = std::fs::metadata(format!("{w}/gid1000"))
                .map_err(|e| Failure::Other(e.to_string()))?
                .permissions()
                .mode();
            unsafe { libc::chmod(f.as_ptr(), 0o644) };
            if mode & 0o2000 == 0 {
                Err(Failure::Denied("the setgid bit was cleared".into()))
            } else {
                Ok(())
            }
        }
        "kill" => sys("kill", unsafe { libc::kill(other_pid, 0) }.into()).map(|_| ()),
        "setgid" => sys("setgid", unsafe { libc::setgid(1000) }.into()).map(|_| ()),
        "setuid" => sys("setuid", unsafe { libc::setuid(1000) }.into()).map(|_| ()),
        "setpcap" => sys(
            "prctl(PR_CAPBSET_DROP)",
            unsafe { libc::prctl(libc::PR_CAPBSET_DROP, 35, 0, 0, 0) }.into(),
        )
        .map(|_| ()),
        "linux-immutable" => {
            let f = io_result("open", std::fs::File::open(format!("{w}/file")))?;
            use std::os::fd::AsRawFd;
            let mut flags: libc::c_int = 0x10; // FS_IMMUTABLE_FL
            sys(
                "FS_IOC_SETFLAGS",
                unsafe { libc::ioctl(f.as_raw_fd(), 0x4008_6602, &mut flags) }.into(),
            )?;
            flags = 0;
            unsafe { libc::ioctl(f.as_raw_fd(), 0x4008_6602, &mut flags) };
            Ok(())
        }
        "net-bind-service" => {
            let l = std::net::TcpListener::bind("0.0.0.0:80");
            io_result("bind port 80", l).map(|_| ())
        }
        "net-admin" => {
            let fd = sys(
                "socket",
                unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) }.into(),
            )?;
            let size: libc::c_int = 1 << 16;
            sys(
                "SO_RCVBUFFORCE",
                unsafe {
                    libc::setsockopt(
                        fd as i32,
                        libc::SOL_SOCKET,
                        libc::SO_RCVBUFFORCE,
                        (&size as *const libc::c_int).cast(),
                        4,
                    )
                }
                .into(),
            )
            .map(|_| ())
        }
        "net-raw" => sys(
            "raw socket",
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) }.into(),
        )
        .map(|_| ()),
        "ipc-lock" => {
            let zero = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            sys(
                "setrlimit",
                unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &zero) }.into(),
            )?;
            let buf = vec![0u8; 8192];
            sys(
                "mlock",
                unsafe { libc::mlock(buf.as_ptr().cast(), 4096) }.into(),
            )
            .map(|_| ())
        }
        "ipc-owner" => {
            let id = sys(
                "msgget",
                unsafe { libc::msgget(libc::IPC_PRIVATE, libc::IPC_CREAT) }.into(),
            )? as i32;
            let mut buf = [0u8; 256];
            let r = unsafe { libc::msgctl(id, libc::IPC_STAT, buf.as_mut_ptr().cast()) };
            unsafe { libc::msgctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
            sys("msgctl(IPC_STAT) of a mode-000 queue", r.into()).map(|_| ())
        }
        "sys-module" => {
            let m = cstr("varmor_no_such_module");
            sys_probe("delete_module", unsafe {
                libc::syscall(libc::SYS_delete_module, m.as_ptr(), libc::O_NONBLOCK)
            })
        }
        "sys-rawio" => {
            sys("ioperm", unsafe { libc::ioperm(0x80, 1, 1) }.into())?;
            unsafe { libc::ioperm(0x80, 1, 0) };
            Ok(())
        }
        "sys-chroot" => {
            sys("chroot", unsafe { libc::chroot(cstr("/").as_ptr()) }.into()).map(|_| ())
        }
        "sys-ptrace" => io_result(
            "readlink /proc/<other user's pid>/root",
            std::fs::read_link(format!("/proc/{other_pid}/root")),
        )
        .map(|_| ()),
        "sys-pacct" => {
            sys("acct(NULL)", unsafe { libc::acct(std::ptr::null()) }.into()).map(|_| ())
        }
        "sys-admin" => {
            let mut name = [0u8; 65];
            sys(
                "gethostname",
                unsafe { libc::gethostname(name.as_mut_ptr().cast(), 64) }.into(),
            )?;
            let len = name.iter().position(|b| *b == 0).unwrap_or(0);
            sys(
                "sethostname",
                unsafe { libc::sethostname(name.as_ptr().cast(), len) }.into(),
            )
            .map(|_| ())
        }
        "sys-boot" => sys_probe("reboot with bad magic", unsafe {
            libc::syscall(libc::SYS_reboot, 0, 0, 0, 0)
        }),
        "sys-nice" => sys(
            "setpriority -1",
            unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, -1) }.into(),
        )
        .map(|_| ()),
        "sys-resource" => {
            let lower = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            let raise = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 1,
            };
            sys(
                "setrlimit",
                unsafe { libc::setrlimit(libc::RLIMIT_CORE, &lower) }.into(),
            )?;
            sys(
                "raise a hard limit",
                unsafe { libc::setrlimit(libc::RLIMIT_CORE, &raise) }.into(),
            )
            .map(|_| ())
        }
        "sys-time" => {
            let mut now = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut now) };
            sys(
                "clock_settime",
                unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &now) }.into(),
            )
            .map(|_| ())
        }
        "sys-tty-config" => {
            // No controlling terminal after setsid: vhangup only checks the capability.
            unsafe { libc::setsid() };
            sys("vhangup", unsafe { libc::vhangup() }.into()).map(|_| ())
        }
        "mknod" => {
            let p = path("node");
            sys(
                "mknod",
                unsafe { libc::mknod(p.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(1, 3)) }
                    .into(),
            )?;
            unsafe { libc::unlink(p.as_ptr()) };
            Ok(())
        }
        "lease" => {
            let f = io_result("open", std::fs::File::open(format!("{w}/owned1000")))?;
            use std::os::fd::AsRawFd;
            sys(
                "F_SETLEASE on another user's file",
                unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLEASE, libc::F_RDLCK) }.into(),
            )?;
            unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLEASE, libc::F_UNLCK) };
            Ok(())
        }
        "audit-write" => audit_request(1005, b"varmor apparmor kernel test\0"), // AUDIT_USER
        "audit-control" => audit_request(1000, b""),                            // AUDIT_GET
        "audit-read" => {
            let fd = sys(
                "socket",
                unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_AUDIT) }
                    .into(),
            )? as i32;
            let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
            addr.nl_family = libc::AF_NETLINK as u16;
            addr.nl_groups = 1; // AUDIT_NLGRP_READLOG
            sys(
                "bind to the audit log group",
                unsafe {
                    libc::bind(
                        fd,
                        (&addr as *const libc::sockaddr_nl).cast(),
                        std::mem::size_of::<libc::sockaddr_nl>() as u32,
                    )
                }
                .into(),
            )
            .map(|_| ())
        }
        "setfcap" => {
            let p = path("file");
            // struct vfs_cap_data, revision 2: permitted = CAP_NET_BIND_SERVICE.
            let mut v = [0u8; 20];
            v[0..4].copy_from_slice(&0x0200_0000u32.to_le_bytes());
            v[4..8].copy_from_slice(&(1u32 << 10).to_le_bytes());
            let n = cstr("security.capability");
            sys(
                "setxattr security.capability",
                unsafe { libc::setxattr(p.as_ptr(), n.as_ptr(), v.as_ptr().cast(), v.len(), 0) }
                    .into(),
            )?;
            unsafe { libc::removexattr(p.as_ptr(), n.as_ptr()) };
            Ok(())
        }
        "mac-admin" => {
            // Loading policy needs CAP_MAC_ADMIN; the garbage is refused afterwards.
            let f = io_result(
                "open .load",
                std::fs::OpenOptions::new()
                    .write(true)
                    .open("/sys/kernel/security/apparmor/.load"),
            )?;
            use std::io::Write;
            match (&f).write(b"not a policy") {
                Ok(_) => Ok(()),
                Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES) | Some(libc::EPERM)) => {
                    Err(Failure::Denied(format!("write .load: {e}")))
                }
                Err(_) => Ok(()),
            }
        }
        "syslog" => {
            drop_cap(21)?; // CAP_SYS_ADMIN also grants it
            sys(
                "syslog(SIZE_UNREAD)",
                unsafe { libc::klogctl(9, std::ptr::null_mut(), 0) }.into(),
            )
            .map(|_| ())
        }
        "wake-alarm" => sys_probe(
            "timerfd_create(CLOCK_REALTIME_ALARM)",
            unsafe { libc::timerfd_create(libc::CLOCK_REALTIME_ALARM, 0) }.into(),
        ),
        "block-suspend" => {
            // Without CAP_BLOCK_SUSPEND the kernel silently drops EPOLLWAKEUP; fdinfo shows it.
            let ep = sys("epoll_create1", unsafe { libc::epoll_create1(0) }.into())? as i32;
            let mut fds = [0i32; 2];
            sys("pipe", unsafe { libc::pipe(fds.as_mut_ptr()) }.into())?;
            let mut ev = libc::epoll_event {
                events: (libc::EPOLLIN | libc::EPOLLWAKEUP) as u32,
                u64: 0,
            };
            sys(
                "epoll_ctl",
                unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fds[0], &mut ev) }.into(),
            )?;
            let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{ep}"))
                .map_err(|e| Failure::Other(e.to_string()))?;
            let events = info
                .split_whitespace()
                .skip_while(|t| *t != "events:")
                .nth(1)
                .and_then(|v| u32::from_str_radix(v, 16).ok())
                .ok_or_else(|| Failure::Other(format!("no events in {info}")))?;
            if events & libc::EPOLLWAKEUP as u32 == 0 {
                Err(Failure::Denied("EPOLLWAKEUP was dropped".into()))
            } else {
                Ok(())
            }
        }
        "perfmon" => {
            drop_cap(21)?;
            let mut attr = [0u8; 128];
            attr[0..4].copy_from_slice(&1u32.to_ne_bytes()); // PERF_TYPE_SOFTWARE
            attr[4..8].copy_from_slice(&128u32.to_ne_bytes());
            let fd =
                unsafe { libc::syscall(libc::SYS_perf_event_open, attr.as_ptr(), -1, 0, -1, 0) };
            sys("perf_event_open on a CPU", fd).map(|_| ())
        }
        "bpf" => {
            drop_cap(21)?;
            bpf_load()
        }
        "checkpoint-restore" => {
            drop_cap(21)?;
            let current = std::fs::read_to_string("/proc/sys/kernel/ns_last_pid")
                .map_err(|e| Failure::Other(e.to_string()))?;
            io_result(
                "write ns_last_pid",
                std::fs::write("/proc/sys/kernel/ns_last_pid", current.trim()),
            )
        }
        other => Err(Failure::Other(format!("no action for capability {other}"))),
    }
}

/// Sends one audit netlink request and returns the kernel's answer.
fn audit_request(kind: u16, payload: &[u8]) -> Result<(), Failure> {
    let fd = sys(
        "socket",
        unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_AUDIT) }.into(),
    )? as i32;
    let len = 16 + payload.len();
    let mut msg = vec![0u8; len.div_ceil(4) * 4];
    msg[0..4].copy_from_slice(&(len as u32).to_ne_bytes());
    msg[4..6].copy_from_slice(&kind.to_ne_bytes());
    msg[6..8].copy_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16).to_ne_bytes());
    msg[8..12].copy_from_slice(&1u32.to_ne_bytes());
    msg[16..16 + payload.len()].copy_from_slice(payload);
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as u16;
    sys("sendto", unsafe {
        libc::sendto(
            fd,
            msg.as_ptr().cast(),
            len,
            0,
            (&addr as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    } as i64)?;
    let mut buf = vec![0u8; 8192];
    loop {
        let n = sys(
            "recv",
            unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) } as i64,
        )? as usize;
        let mut off = 0;
        while off + 16 <= n {
            let mlen = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
            let mtype = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().unwrap());
            if mtype == libc::NLMSG_ERROR as u16 {
                let err = i32::from_ne_bytes(buf[off + 16..off + 20].try_into().unwrap());
                return match -err {
                    0 => Ok(()),
                    libc::EPERM | libc::EACCES => Err(Failure::Denied(format!(
                        "audit request {kind}: errno {}",
                        -err
                    ))),
                    e => Err(Failure::Other(format!("audit request {kind}: errno {e}"))),
                };
            }
            if mlen < 16 {
                break;
            }
            off += mlen.div_ceil(4) * 4;
        }
    }
}
