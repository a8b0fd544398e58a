//! The exit tracker (`bpf-programs/exits.bpf.c`) on this kernel: a process that exits in a
//! mount namespace of its own is still attributed to that namespace afterwards, when
//! `/proc/<pid>` is gone; a process of the host's namespace is not kept. Needs root (BPF);
//! the tracepoint loads on kernels without BPF-LSM, so this runs on the host.

use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::{Duration, Instant};

use varmor_agent::exits::ExitTracker;
use varmor_agent::HostFs;

fn skip(reason: &str) {
    if std::env::var("VARMOR_REQUIRE_KERNEL_TESTS").is_ok_and(|v| v == "1") {
        panic!("VARMOR_REQUIRE_KERNEL_TESTS=1 but the exit tracker test must skip: {reason}");
    }
    eprintln!("SKIP exit tracker: {reason}");
}

fn mnt_ns(pid: u32) -> Option<u32> {
    std::fs::metadata(format!("/proc/{pid}/ns/mnt"))
        .ok()
        .map(|m| m.ino() as u32)
}

#[test]
fn an_exited_process_keeps_its_mount_namespace() {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false);
    if !root {
        return skip("loading BPF programs needs root");
    }
    let tracker = match ExitTracker::start(&HostFs::new("/")) {
        Ok(t) => t,
        Err(reason) => panic!("the exit tracker does not load on this kernel: {reason}"),
    };
    let host_ns = mnt_ns(1);
    let ours = mnt_ns(std::process::id()).expect("our mount namespace");

    // A process in a new mount namespace: its namespace is read while it runs.
    let mut child = Command::new("unshare")
        .args(["-m", "sh", "-c", "read x || true"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("unshare");
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(5);
    let ns = loop {
        match mnt_ns(pid) {
            Some(ns) if ns != ours => break ns,
            _ if Instant::now() > deadline => panic!("the child never entered a new namespace"),
            _ => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    assert_eq!(tracker.mount_namespace(pid), None, "not exited yet");
    drop(child.stdin.take());
    assert!(child.wait().expect("wait").success());
    assert!(mnt_ns(pid).is_none(), "/proc/{pid} is gone after the wait");
    assert_eq!(
        tracker.mount_namespace(pid),
        Some(ns),
        "the exited process is attributed to its namespace"
    );

    // A process of the host's namespace is not kept (when PID 1's namespace can be read).
    if host_ns == Some(ours) {
        let mut host = Command::new("true").spawn().expect("true");
        let hpid = host.id();
        host.wait().expect("wait");
        assert_eq!(tracker.mount_namespace(hpid), None);
    }
}
