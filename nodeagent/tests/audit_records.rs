//! AppArmor and Seccomp audit records: the parser on real record formats (audit.log, kmsg,
//! netlink), the file sources (tailing across rotation and truncation, kmsg-format files,
//! the choice of source), and a live check that this kernel delivers `SCMP_ACT_LOG` records.
//!
//! The live test skips with the reason when the host cannot deliver records (no privileges,
//! logging of the `log` action switched off); `VARMOR_REQUIRE_KERNEL_TESTS=1` turns a skip
//! into a failure.

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use proptest::prelude::*;
use serde_json::Value;
use varmor_agent::violations::audit::{
    parse_line, parse_line_all, parse_netlink, AuditKind, AuditParseError, AuditRecord,
};
use varmor_agent::violations::kernlog::{self, AuditSource, KernLogConfig, SourceKind};

/// vArmor's `AppArmorEvent` keys (reference §8.2).
const APPARMOR_KEYS: [&str; 43] = [
    "version",
    "event",
    "pid",
    "peerPID",
    "task",
    "magicToken",
    "epoch",
    "auditSubID",
    "bitMask",
    "auditID",
    "operation",
    "deniedMask",
    "requestedMask",
    "fsuid",
    "ouid",
    "profile",
    "peerProfile",
    "comm",
    "name",
    "name2",
    "namespace",
    "attribute",
    "parent",
    "info",
    "peerInfo",
    "errorCode",
    "activeHat",
    "netFamily",
    "netProtocol",
    "netSockType",
    "netLocalAddr",
    "netLocalPort",
    "netForeignAddr",
    "netForeignPort",
    "dbusBus",
    "dbusPath",
    "dbusInterface",
    "dbusMember",
    "signal",
    "peer",
    "fsType",
    "flags",
    "srcName",
];
const SECCOMP_KEYS: [&str; 7] = ["auditID", "epoch", "subj", "pid", "comm", "exe", "syscall"];

fn keys(event: &Value) -> BTreeSet<String> {
    event
        .as_object()
        .expect("event is an object")
        .keys()
        .cloned()
        .collect()
}

fn one(line: &str) -> AuditRecord {
    match parse_line(line) {
        Ok(Some(record)) => {
            let expected: BTreeSet<String> = match record.kind {
                AuditKind::AppArmor => APPARMOR_KEYS.iter().map(|k| k.to_string()).collect(),
                AuditKind::Seccomp => SECCOMP_KEYS.iter().map(|k| k.to_string()).collect(),
            };
            assert_eq!(keys(&record.event), expected, "event keys of {line}");
            record
        }
        other => panic!("expected a record from {line}: {other:?}"),
    }
}

const P: &str = "varmor-demo-web";

// ---- AppArmor: one real-format line per operation class -----------------------------------

#[test]
fn apparmor_file_open_denied() {
    let r = one(&format!(
        r#"type=AVC msg=audit(1700000000.123:456): apparmor="DENIED" operation="open" class="file" profile="{P}" name="/etc/shadow" pid=4242 comm="cat" requested_mask="r" denied_mask="r" fsuid=0 ouid=0"#
    ));
    assert_eq!(r.kind, AuditKind::AppArmor);
    assert_eq!(r.action, "DENIED");
    assert_eq!(
        (r.epoch_secs, r.epoch_millis, r.serial, r.pid),
        (1_700_000_000, 123, 456, 4242)
    );
    assert_eq!(r.profile.as_deref(), Some(P));
    assert!(r.is_violation());
    let e = &r.event;
    assert_eq!(e["version"], 1);
    assert_eq!(e["event"], 4);
    assert_eq!(e["pid"], 4242);
    assert_eq!(e["epoch"], 1_700_000_000i64);
    assert_eq!(e["auditSubID"], 456);
    assert_eq!(e["auditID"], "1700000000.123:456");
    assert_eq!(e["operation"], "open");
    assert_eq!(e["name"], "/etc/shadow");
    assert_eq!(e["comm"], "cat");
    assert_eq!(e["requestedMask"], "r");
    assert_eq!(e["deniedMask"], "r");
    assert_eq!(e["profile"], P);
    assert_eq!(e["fsuid"], 0);
    assert_eq!(e["netLocalPort"], 0);
    assert_eq!(e["peer"], "");
}

#[test]
fn apparmor_exec_in_a_child_profile_with_a_target() {
    let r = one(&format!(
        r#"type=AVC msg=audit(1700000001.002:7): apparmor="AUDIT" operation="exec" class="file" info="no new privs" error=-1 profile="{P}//null-/bin/sh" name="/usr/bin/wget" pid=77 comm="sh" requested_mask="x" denied_mask="x" fsuid=1000 ouid=0 target="{P}//null-/usr/bin/wget""#
    ));
    assert_eq!(r.action, "AUDIT");
    assert_eq!(r.event["event"], 2);
    assert_eq!(
        r.profile.as_deref(),
        Some(format!("{P}//null-/bin/sh").as_str())
    );
    assert_eq!(r.event["name2"], format!("{P}//null-/usr/bin/wget"));
    assert_eq!(r.event["info"], "no new privs");
    assert_eq!(r.event["errorCode"], 1);
    assert_eq!(r.event["fsuid"], 1000);
    assert_eq!(r.event["epoch"], 1_700_000_001i64);
    assert_eq!(r.epoch_millis, 2);
}

#[test]
fn apparmor_link_and_rename() {
    let link = one(&format!(
        r#"type=AVC msg=audit(1700000002.000:8): apparmor="DENIED" operation="link" class="file" profile="{P}" name="/tmp/evil" pid=8 comm="ln" requested_mask="l" denied_mask="l" fsuid=0 ouid=0 target="/etc/passwd""#
    ));
    assert_eq!(link.event["operation"], "link");
    assert_eq!(link.event["name"], "/tmp/evil");
    assert_eq!(link.event["name2"], "/etc/passwd");
    let src = one(&format!(
        r#"type=AVC msg=audit(1700000002.000:9): apparmor="DENIED" operation="rename_src" class="file" profile="{P}" name="/etc/hosts" pid=9 comm="mv" requested_mask="wrd" denied_mask="wd" fsuid=0 ouid=0"#
    ));
    assert_eq!(src.event["operation"], "rename_src");
    assert_eq!(src.event["requestedMask"], "wrd");
    assert_eq!(src.event["deniedMask"], "wd");
    let dest = one(&format!(
        r#"type=AVC msg=audit(1700000002.000:10): apparmor="ALLOWED" operation="rename_dest" class="file" profile="{P}" name="/tmp/hosts" pid=9 comm="mv" requested_mask="wc" denied_mask="wc" fsuid=0 ouid=4294967295"#
    ));
    assert_eq!(dest.action, "ALLOWED");
    assert_eq!(dest.event["event"], 3);
    assert_eq!(dest.event["ouid"], 4_294_967_295u64);
}

#[test]
fn apparmor_capability_name_is_the_capname() {
    let r = one(&format!(
        r#"type=AVC msg=audit(1700000003.500:11): apparmor="DENIED" operation="capable" class="cap" profile="{P}" pid=11 comm="ping" capability=13  capname="net_raw""#
    ));
    assert_eq!(r.event["operation"], "capable");
    assert_eq!(r.event["name"], "net_raw");
}

#[test]
fn apparmor_network_create_and_connect() {
    let create = one(&format!(
        r#"type=AVC msg=audit(1700000004.000:12): apparmor="DENIED" operation="create" class="net" profile="{P}" pid=12 comm="ping" family="inet" sock_type="raw" protocol=1 requested_mask="create" denied_mask="create""#
    ));
    assert_eq!(create.event["netFamily"], "inet");
    assert_eq!(create.event["netSockType"], "raw");
    assert_eq!(create.event["netProtocol"], "icmp");
    assert_eq!(create.event["requestedMask"], "create");
    let connect = one(&format!(
        r#"type=AVC msg=audit(1700000004.000:13): apparmor="DENIED" operation="connect" class="net" info="failed af match" error=-13 profile="{P}" pid=13 comm="curl" laddr=10.0.0.5 lport=40000 faddr=169.254.169.254 fport=80 family="inet" sock_type="stream" protocol=6 requested="connect" denied="connect""#
    ));
    let e = &connect.event;
    assert_eq!(e["netLocalAddr"], "10.0.0.5");
    assert_eq!(e["netLocalPort"], 40000);
    assert_eq!(e["netForeignAddr"], "169.254.169.254");
    assert_eq!(e["netForeignPort"], 80);
    assert_eq!(e["netProtocol"], "tcp");
    assert_eq!(e["errorCode"], 13);
    assert_eq!(e["requestedMask"], "connect");
    assert_eq!(e["deniedMask"], "connect");
}

#[test]
fn apparmor_ptrace_and_signal() {
    let ptrace = one(&format!(
        r#"type=AVC msg=audit(1700000005.000:14): apparmor="DENIED" operation="ptrace" class="ptrace" profile="{P}" pid=14 comm="strace" requested_mask="trace" denied_mask="trace" peer="unconfined""#
    ));
    assert_eq!(ptrace.event["peer"], "unconfined");
    assert_eq!(ptrace.event["deniedMask"], "trace");
    let signal = one(&format!(
        r#"type=AVC msg=audit(1700000005.000:15): apparmor="DENIED" operation="signal" class="signal" profile="{P}" pid=15 comm="kill" requested_mask="send" denied_mask="send" signal=kill peer="{P}//child""#
    ));
    assert_eq!(signal.event["signal"], "kill");
    assert_eq!(signal.event["peer"], format!("{P}//child"));
}

#[test]
fn apparmor_mount_family() {
    let mount = one(&format!(
        r#"type=AVC msg=audit(1700000006.000:16): apparmor="DENIED" operation="mount" class="mount" info="failed mntpnt match" error=-13 profile="{P}" name="/mnt/" pid=16 comm="mount" fstype="tmpfs" srcname="tmpfs" flags="rw, nosuid""#
    ));
    assert_eq!(mount.event["fsType"], "tmpfs");
    assert_eq!(mount.event["srcName"], "tmpfs");
    assert_eq!(mount.event["flags"], "rw, nosuid");
    assert_eq!(mount.event["name"], "/mnt/");
    let umount = one(&format!(
        r#"type=AVC msg=audit(1700000006.000:17): apparmor="DENIED" operation="umount" class="mount" info="failed perms check" error=-13 profile="{P}" name="/proc/" pid=17 comm="umount""#
    ));
    assert_eq!(umount.event["operation"], "umount");
    let remount = one(&format!(
        r#"type=AVC msg=audit(1700000006.000:18): apparmor="DENIED" operation="remount" class="mount" info="failed flags match" error=-13 profile="{P}" name="/" pid=18 comm="mount" flags="ro, remount""#
    ));
    assert_eq!(remount.event["flags"], "ro, remount");
    let pivot = one(&format!(
        r#"type=AVC msg=audit(1700000006.000:19): apparmor="DENIED" operation="pivotroot" class="mount" profile="{P}" name="/newroot/" pid=19 comm="pivot_root" srcname="/newroot/old/""#
    ));
    assert_eq!(pivot.event["operation"], "pivotroot");
    assert_eq!(pivot.event["srcName"], "/newroot/old/");
}

#[test]
fn apparmor_change_profile() {
    let r = one(&format!(
        r#"type=AVC msg=audit(1700000007.000:20): apparmor="DENIED" operation="change_profile" class="file" info="label not found" error=-2 profile="{P}" name="other" pid=20 comm="aa-exec" target="other""#
    ));
    assert_eq!(r.event["operation"], "change_profile");
    assert_eq!(r.event["name"], "other");
    assert_eq!(r.event["name2"], "other");
    assert_eq!(r.event["errorCode"], 2);
}

#[test]
fn apparmor_hex_encoded_names_are_decoded() {
    // The kernel writes names with spaces (or quotes, or non-ASCII) as bare upper-case hex.
    let r = one(&format!(
        r#"type=AVC msg=audit(1700000008.000:21): apparmor="DENIED" operation="open" class="file" profile="{P}" name=2F746D702F6120622063 pid=21 comm=6D7920636F6D6D requested_mask="w" denied_mask="w" fsuid=0 ouid=0"#
    ));
    assert_eq!(r.event["name"], "/tmp/a b c");
    assert_eq!(r.event["comm"], "my comm");
}

#[test]
fn apparmor_status_records_are_not_violations() {
    let r = one(
        r#"type=AVC msg=audit(1700000009.000:22): apparmor="STATUS" operation="profile_load" profile="unconfined" name="varmor-demo-web" pid=22 comm="apparmor_parser""#,
    );
    assert_eq!(r.action, "STATUS");
    assert_eq!(r.event["event"], 6);
    assert!(!r.is_violation());
}

#[test]
fn kmsg_and_syslog_forms() {
    let kmsg = one(&format!(
        r#"5,1234,5678901,-;audit: type=1400 audit(1700000010.321:23): apparmor="DENIED" operation="open" class="file" profile="{P}" name="/etc/shadow" pid=23 comm="cat" requested_mask="r" denied_mask="r" fsuid=0 ouid=0"#
    ));
    assert_eq!((kmsg.pid, kmsg.serial, kmsg.epoch_millis), (23, 23, 321));
    let dmesg = one(&format!(
        r#"[ 1234.567890] audit: type=1400 audit(1700000010.321:24): apparmor="DENIED" operation="open" class="file" profile="{P}" name="/x" pid=24 comm="cat" requested_mask="r" denied_mask="r" fsuid=0 ouid=0"#
    ));
    assert_eq!(dmesg.pid, 24);
    // auditd with a node name and the enriched format (interpreted fields after 0x1d).
    let enriched = one(&format!(
        "node=worker-1 type=AVC msg=audit(1700000010.321:25): apparmor=\"DENIED\" operation=\"open\" class=\"file\" profile=\"{P}\" name=\"/y\" pid=25 comm=\"cat\" requested_mask=\"r\" denied_mask=\"r\" fsuid=0 ouid=0\x1dFSUID=\"root\" OUID=\"root\""
    ));
    assert_eq!(enriched.event["name"], "/y");
    assert_eq!(enriched.event["ouid"], 0);
}

#[test]
fn several_records_in_one_line() {
    let line = format!(
        r#"type=SYSCALL msg=audit(1700000011.000:26): arch=c000003e syscall=2 success=no pid=26 comm="cat" type=AVC msg=audit(1700000011.000:26): apparmor="DENIED" operation="open" profile="{P}" name="/a" pid=26 comm="cat" requested_mask="r" denied_mask="r" fsuid=0 ouid=0 type=SECCOMP msg=audit(1700000011.000:27): pid=27 comm="x" exe="/x" sig=0 arch=c000003e syscall=39 compat=0 ip=0x1 code=0x7ffc0000"#
    );
    let all = parse_line_all(&line);
    assert_eq!(all.len(), 2, "{all:?}");
    let apparmor = all[0].as_ref().expect("apparmor record");
    assert_eq!(
        (
            apparmor.kind,
            apparmor.serial,
            apparmor.event["name"].as_str()
        ),
        (AuditKind::AppArmor, 26, Some("/a"))
    );
    let seccomp = all[1].as_ref().expect("seccomp record");
    assert_eq!((seccomp.kind, seccomp.pid), (AuditKind::Seccomp, 27));
    // The first record's fields do not leak into the next one.
    assert_eq!(apparmor.event["comm"], "cat");
    assert_eq!(
        parse_line(&line).unwrap().unwrap().kind,
        AuditKind::AppArmor
    );
}

// ---- Seccomp ------------------------------------------------------------------------------

#[test]
fn seccomp_log_errno_and_kill_codes() {
    let base = |code: &str, syscall: u32| {
        format!(
            r#"audit: type=1326 audit(1700000012.250:28): auid=4294967295 uid=0 gid=0 ses=4294967295 subj=unconfined pid=123 comm="sh" exe="/bin/busybox" sig=0 arch=c000003e syscall={syscall} compat=0 ip=0x7f5a2b3c4d5e code={code}"#
        )
    };
    let log = one(&base("0x7ffc0000", 272));
    assert_eq!(log.kind, AuditKind::Seccomp);
    assert_eq!(log.action, "AUDIT|ALLOWED");
    assert_eq!(log.pid, 123);
    assert_eq!(log.profile, None);
    assert_eq!(
        log.event,
        serde_json::json!({"auditID":"1700000012.250:28","epoch":1_700_000_012u64,"subj":"unconfined","pid":123,"comm":"sh","exe":"/bin/busybox","syscall":"unshare"})
    );
    assert_eq!(one(&base("0x50001", 39)).action, "DENIED");
    assert_eq!(one(&base("0x50001", 39)).event["syscall"], "getpid");
    assert_eq!(one(&base("0x80000000", 59)).action, "DENIED");
    assert_eq!(one(&base("0x80000000", 59)).event["syscall"], "execve");
    assert_eq!(one(&base("0x0", 59)).action, "DENIED");
    assert_eq!(one(&base("0x7fff0000", 59)).action, "ALLOWED");
    assert_eq!(one(&base("0x7ff00000", 59)).action, "AUDIT");
    // Unknown architecture: the number.
    let other = one(&base("0x7ffc0000", 272).replace("arch=c000003e", "arch=12345678"));
    assert_eq!(other.event["syscall"], "272");
    // auditd's spelling and a missing subj.
    let auditd = one(
        r#"type=SECCOMP msg=audit(1700000012.250:29): auid=0 uid=0 gid=0 ses=1 pid=5 comm=2F62696E2F6120622063 exe="/bin/x" sig=31 arch=c000003e syscall=101 compat=0 ip=0x1 code=0x80000000"#,
    );
    assert_eq!(auditd.event["subj"], "");
    assert_eq!(auditd.event["comm"], "/bin/a b c");
    assert_eq!(auditd.event["syscall"], "ptrace");
}

#[test]
fn seccomp_errors_name_the_field() {
    let err = parse_line("type=1326 audit(1.0:1): pid=1 arch=c000003e syscall=39 code=0x12340000")
        .unwrap_err();
    match &err {
        AuditParseError::InvalidField { field, .. } => assert_eq!(field, "code"),
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("not a seccomp action"), "{err}");
    let err =
        parse_line("type=1326 audit(1.0:1): pid=1 arch=zz syscall=39 code=0x7ffc0000").unwrap_err();
    assert!(err.to_string().contains("`arch`"), "{err}");
    let err =
        parse_line("type=1326 audit(1.0:1): arch=c000003e syscall=39 code=0x7ffc0000").unwrap_err();
    assert_eq!(
        err,
        AuditParseError::MissingField {
            kind: "1326".into(),
            field: "pid"
        }
    );
    let err =
        parse_line(r#"type=AVC msg=audit(1.0:1): apparmor="DENIED" name="/unterminated pid=1"#)
            .unwrap_err();
    assert!(err.to_string().contains("unterminated quote"), "{err}");
}

#[test]
fn netlink_messages() {
    let r = parse_netlink(
        1400,
        br#"audit(1700000013.001:30): apparmor="DENIED" operation="open" profile="p" name="/n" pid=30 comm="c" requested_mask="r" denied_mask="r" fsuid=0 ouid=0"#,
    )
    .unwrap()
    .unwrap();
    assert_eq!(
        (r.kind, r.pid, r.epoch_millis),
        (AuditKind::AppArmor, 30, 1)
    );
    // EOE, SYSCALL, USER_AVC: not ours.
    assert_eq!(parse_netlink(1320, b"audit(1.0:1): ").unwrap(), None);
    assert_eq!(
        parse_netlink(1107, br#"audit(1.0:1): pid=1 msg='apparmor="DENIED"'"#).unwrap(),
        None
    );
}

// ---- never panics -------------------------------------------------------------------------

const REAL: [&str; 4] = [
    r#"type=AVC msg=audit(1700000000.123:456): apparmor="DENIED" operation="connect" class="net" info="x" error=-13 profile="p//c" pid=13 comm="curl" laddr=10.0.0.5 lport=40000 faddr=1.2.3.4 fport=80 family="inet" sock_type="stream" protocol=6 requested_mask="connect" denied_mask="connect" name=2F746D70 exe=(null)"#,
    r#"6,99,100,-;audit: type=1326 audit(1700000012.250:28): auid=4294967295 uid=0 gid=0 ses=4294967295 subj=unconfined pid=123 comm="sh" exe="/bin/busybox" sig=0 arch=c000003e syscall=272 compat=0 ip=0x7f code=0x7ffc0000"#,
    r#"node=n type=SECCOMP msg=audit(1.5:2): pid=5 comm=2F62 exe="/x" arch=c000003e syscall=101 code=0x80000000 type=AVC msg=audit(1.5:3): apparmor="STATUS" pid=1"#,
    r#"type=AVC msg=audit(1700000006.000:16): apparmor="DENIED" operation="mount" profile="p" name="/mnt/" pid=16 comm="mount" fstype="tmpfs" srcname="tmpfs" flags="rw, nosuid" peer_pid=3 task=4 magic_token=5 parent=6 fsuid=-1"#,
];

fn check_invariants(text: &str) {
    for result in parse_line_all(text) {
        match result {
            Ok(record) => {
                let n = record.event.as_object().map_or(0, |o| o.len());
                match record.kind {
                    AuditKind::AppArmor => assert_eq!(n, APPARMOR_KEYS.len()),
                    AuditKind::Seccomp => assert_eq!(n, SECCOMP_KEYS.len()),
                }
                assert!(record.epoch_millis < 1000);
                assert!(!record.action.is_empty());
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        check_invariants(&text);
        let _ = parse_netlink(1326, text.as_bytes());
        let _ = parse_netlink(1400, text.as_bytes());
    }

    #[test]
    fn audit_shaped_text_never_panics(text in r#"(type=(AVC|1400|1326|SECCOMP|APPARMOR_DENIED) |msg=|audit\(|[0-9.:]{1,6}\)?:? |[a-z_]{1,8}=|"|\(|\)|[0-9A-F]{1,6}| |\x1d|\n|é){0,40}"#) {
        check_invariants(&text);
    }

    #[test]
    fn mutated_real_lines_never_panic(
        which in 0..REAL.len(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..4, any::<char>()), 1..8),
    ) {
        let mut chars: Vec<char> = REAL[which].chars().collect();
        for (at, op, c) in edits {
            if chars.is_empty() {
                break;
            }
            let i = at.index(chars.len());
            match op {
                0 => chars[i] = c,
                1 => chars.insert(i, c),
                2 => { chars.remove(i); }
                _ => chars.truncate(i),
            }
        }
        let text: String = chars.into_iter().collect();
        check_invariants(&text);
        let _ = parse_netlink(1326, text.as_bytes());
    }
}

// ---- the file sources ---------------------------------------------------------------------

fn file_config(audit_log: Option<PathBuf>, kmsg: Option<PathBuf>) -> KernLogConfig {
    KernLogConfig {
        netlink: false,
        audit_log,
        kmsg,
        poll_interval: Duration::from_millis(20),
        ..KernLogConfig::default()
    }
}

fn append(path: &Path, text: &str) {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open for append");
    f.write_all(text.as_bytes()).expect("append");
}

fn seccomp_line(pid: u32) -> String {
    format!(
        "type=SECCOMP msg=audit(1700000020.000:{pid}): auid=0 uid=0 gid=0 ses=1 subj=unconfined pid={pid} comm=\"t\" exe=\"/t\" sig=0 arch=c000003e syscall=39 compat=0 ip=0x1 code=0x7ffc0000\n"
    )
}

async fn next_pid(source: &mut AuditSource) -> u32 {
    tokio::time::timeout(Duration::from_secs(5), source.next())
        .await
        .expect("a record within 5 s")
        .expect("the source is running")
        .pid
}

#[tokio::test]
async fn audit_log_is_tailed_across_rotation_and_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    append(&log, &seccomp_line(1)); // history: not delivered
    let mut source = kernlog::open(&file_config(Some(log.clone()), None))
        .await
        .expect("open");
    assert_eq!(source.info().kind, SourceKind::AuditLog);
    assert_eq!(source.info().location, log.display().to_string());

    append(&log, &seccomp_line(2));
    assert_eq!(next_pid(&mut source).await, 2);

    // A line written in two parts is one record.
    let line = seccomp_line(3);
    let (a, b) = line.split_at(40);
    append(&log, a);
    tokio::time::sleep(Duration::from_millis(100)).await;
    append(&log, b);
    assert_eq!(next_pid(&mut source).await, 3);

    // Rotation: auditd renames the file, a late write lands in the old one, a new file starts.
    fs::rename(&log, dir.path().join("audit.log.1")).unwrap();
    append(&dir.path().join("audit.log.1"), &seccomp_line(4));
    tokio::time::sleep(Duration::from_millis(100)).await;
    append(&log, &format!("{}{}", seccomp_line(5), seccomp_line(6)));
    assert_eq!(next_pid(&mut source).await, 4);
    assert_eq!(next_pid(&mut source).await, 5);
    assert_eq!(next_pid(&mut source).await, 6);

    // Truncation in place (copytruncate).
    tokio::time::sleep(Duration::from_millis(100)).await;
    fs::write(&log, "").unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    append(&log, &seccomp_line(7));
    assert_eq!(next_pid(&mut source).await, 7);

    // Unparsable records of ours are counted, others ignored.
    append(&log, "type=SECCOMP msg=audit(1.0:1): pid=oops code=0x7ffc0000 syscall=1\ntype=SYSCALL msg=audit(1.0:1): pid=1\n");
    append(&log, &seccomp_line(8));
    assert_eq!(next_pid(&mut source).await, 8);
    let counters = source.counters();
    assert_eq!(counters.records, 7);
    assert_eq!(counters.parse_errors, 1);
    assert!(counters.reopens >= 2, "{counters:?}");
}

#[tokio::test]
async fn kmsg_format_file_and_the_choice_of_source() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-audit.log");
    let kmsg = dir.path().join("kmsg");
    fs::write(&kmsg, "6,1,100,-;old record\n").unwrap();
    let mut source = kernlog::open(&file_config(Some(missing.clone()), Some(kmsg.clone())))
        .await
        .expect("open");
    let info = source.info().clone();
    assert_eq!(info.kind, SourceKind::Kmsg);
    assert_eq!(info.passed_over.len(), 1);
    assert_eq!(info.passed_over[0].0, SourceKind::AuditLog);
    assert!(info.passed_over[0].1.contains("no-audit.log"), "{info}");
    append(
        &kmsg,
        "6,2,200,-;eth0: link up\n5,3,300,-;audit: type=1326 audit(1700000030.000:3): auid=0 uid=0 gid=0 ses=1 pid=31 comm=\"k\" exe=\"/k\" sig=0 arch=c000003e syscall=39 compat=0 ip=0x1 code=0x7ffc0000\n SUBSYSTEM=none\n",
    );
    assert_eq!(next_pid(&mut source).await, 31);

    let err = kernlog::open(&file_config(
        Some(missing.clone()),
        Some(dir.path().join("no-kmsg")),
    ))
    .await
    .unwrap_err();
    assert_eq!(err.tried.len(), 2);
    let text = err.to_string();
    assert!(
        text.contains("no-audit.log") && text.contains("no-kmsg"),
        "{text}"
    );
    let none = kernlog::open(&file_config(None, None)).await.unwrap_err();
    assert!(none.to_string().contains("enables no source"), "{none}");
}

// ---- live: does this kernel deliver SCMP_ACT_LOG records? ---------------------------------

const LIVE: &str = "live_seccomp_log_records_arrive";
const CHILD_ENV: &str = "VARMOR_AUDIT_SECCOMP_LOG_CHILD";

/// Runs only as the re-executed child of `live_seccomp_log_records_arrive`: loads a filter
/// that logs `getpid`, calls it, and exits.
#[test]
fn live_seccomp_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    use libseccomp::{ScmpAction, ScmpFilterContext, ScmpSyscall};
    let mut filter = ScmpFilterContext::new(ScmpAction::Allow).expect("filter");
    filter
        .add_rule(
            ScmpAction::Log,
            ScmpSyscall::from_name("getpid").expect("getpid"),
        )
        .expect("rule");
    filter.load().expect("load the seccomp filter");
    for _ in 0..3 {
        std::hint::black_box(std::process::id());
    }
    std::process::exit(0);
}

fn require_kernel_tests() -> bool {
    std::env::var("VARMOR_REQUIRE_KERNEL_TESTS").is_ok_and(|v| v == "1")
}

fn skip(test: &str, reason: &str) {
    if require_kernel_tests() {
        panic!("VARMOR_REQUIRE_KERNEL_TESTS=1 but {test} must skip: {reason}");
    }
    eprintln!("SKIP {test}: {reason}");
}

/// Waits for the child's `getpid` record; `Err` says what arrived instead.
async fn await_child_record(mut source: AuditSource, pid: u32) -> Result<AuditRecord, String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, source.next()).await {
            Ok(Some(record)) if record.pid == pid => return Ok(record),
            Ok(Some(record)) => seen.push(record.pid),
            Ok(None) => return Err("the source stopped".into()),
            Err(_) => {
                return Err(format!(
                    "no record of pid {pid} within 5 s ({} records of other pids; counters {:?})",
                    seen.len(),
                    source.counters()
                ))
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_seccomp_log_records_arrive() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let logged = fs::read_to_string("/proc/sys/kernel/seccomp/actions_logged").unwrap_or_default();
    if !logged.split_whitespace().any(|a| a == "log") {
        return skip(
            LIVE,
            &format!(
                "/proc/sys/kernel/seccomp/actions_logged ({:?}) does not include `log`",
                logged.trim()
            ),
        );
    }
    let netlink = kernlog::open(&KernLogConfig {
        audit_log: None,
        kmsg: None,
        ..KernLogConfig::default()
    })
    .await;
    let kmsg = kernlog::open(&KernLogConfig {
        netlink: false,
        audit_log: None,
        ..KernLogConfig::default()
    })
    .await;
    let mut opened = Vec::new();
    let mut reasons = Vec::new();
    for (name, source) in [("netlink", netlink), ("kmsg", kmsg)] {
        match source {
            Ok(source) => {
                eprintln!("live: {name}: {}", source.info());
                opened.push((name, source));
            }
            Err(e) => reasons.push(format!("{name}: {e}")),
        }
    }
    if opened.is_empty() {
        return skip(LIVE, &reasons.join("; "));
    }

    let exe = std::env::current_exe().expect("current exe");
    let mut child = std::process::Command::new(exe)
        .args([
            "--exact",
            "live_seccomp_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn the child");
    let pid = child.id();
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .expect("wait");
    assert!(
        status.success(),
        "the child failed to load its filter: {status}"
    );

    let mut received = 0;
    let waits: Vec<_> = opened
        .into_iter()
        .map(|(name, source)| (name, tokio::spawn(await_child_record(source, pid))))
        .collect();
    for (name, wait) in waits {
        match wait.await.unwrap() {
            Ok(record) => {
                eprintln!(
                    "live: {name}: {} {} {}",
                    record.audit_id(),
                    record.action,
                    record.event
                );
                assert_eq!(record.kind, AuditKind::Seccomp);
                assert_eq!(record.action, "AUDIT|ALLOWED");
                assert_eq!(record.event["syscall"], "getpid");
                assert_eq!(record.event["pid"], u64::from(pid));
                received += 1;
            }
            Err(why) => {
                eprintln!("live: {name}: {why}");
                reasons.push(format!("{name}: {why}"));
            }
        }
    }
    if received == 0 {
        skip(
            LIVE,
            &format!(
                "no source delivered the child's SCMP_ACT_LOG record: {}",
                reasons.join("; ")
            ),
        );
    }
}

/// The kmsg device: every record of a burst is read (one read returns one record), and audit
/// lines that user space writes to /dev/kmsg are recognised as forged and not delivered.
#[tokio::test]
async fn kmsg_device_reads_bursts_and_ignores_forged_records() {
    let config = KernLogConfig {
        netlink: false,
        audit_log: None,
        ..KernLogConfig::default()
    };
    let mut source = match kernlog::open(&config).await {
        Ok(source) => source,
        Err(e) => {
            return skip(
                "kmsg_device_reads_bursts_and_ignores_forged_records",
                &e.to_string(),
            )
        }
    };
    let mut writer = match OpenOptions::new().write(true).open("/dev/kmsg") {
        Ok(w) => w,
        Err(e) => {
            return skip(
                "kmsg_device_reads_bursts_and_ignores_forged_records",
                &format!("cannot write /dev/kmsg: {e}"),
            )
        }
    };
    for pid in 900_001..=900_004u32 {
        // One write is one record; "<5>" asks for level notice, the kernel adds LOG_USER.
        writer
            .write_all(format!("<5>audit: type=1326 audit(1700000040.000:{pid}): pid={pid} comm=\"f\" exe=\"/f\" sig=0 arch=c000003e syscall=39 compat=0 ip=0x1 code=0x7ffc0000\n").as_bytes())
            .expect("write /dev/kmsg");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while source.counters().forged < 4 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let counters = source.counters();
    assert_eq!(counters.forged, 4, "{counters:?}");
    assert_eq!(counters.records, 0, "{counters:?}");
    assert!(
        tokio::time::timeout(Duration::from_millis(100), source.next())
            .await
            .is_err(),
        "a forged record was delivered"
    );
}
