//! The violation sinks end to end: `violations.log` lines (every key, in vArmor's order, per
//! enforcer), rotation, drop markers, and OTLP export to a real OTLP/gRPC receiver (every
//! attribute; a stalled collector; a collector that comes up late), all through the fan-out
//! [`Pipeline`] with an upstream [`EventBuffer`].

mod otlp_support;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use otlp_support::records::Record;
use otlp_support::{attr, to_json, Receiver};
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::{json, Value as Json};
use varmor_agent::config::BackoffConfig;
use varmor_agent::enforcer::bpf::events::BpfEvent;
use varmor_agent::enforcer::bpf::layout::*;
use varmor_agent::violations::fanout::{Pipeline, PipelineConfig};
use varmor_agent::violations::logfile::{rfc3339_utc, ViolationLog, ViolationLogConfig};
use varmor_agent::violations::otlp::OtlpConfig;
use varmor_agent::EventBuffer;
use varmor_policy::names::{mount, perm, ptrace};
use varmor_proto::v1;

const NODE: &str = "node-a";
/// Boot at 1,700,000,000 s; records at ktime 5.25 s → event time 1,700,000,005.25 s.
const BOOT_SECS: u64 = 1_700_000_000;
const KTIME: u64 = 5_250_000_000;

/// The top-level keys of a line in order, with their values.
struct Ordered(Vec<(String, Json)>);

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Ordered;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Ordered, A::Error> {
                let mut out = Vec::new();
                while let Some(kv) = m.next_entry::<String, Json>()? {
                    out.push(kv);
                }
                Ok(Ordered(out))
            }
        }
        d.deserialize_map(V)
    }
}

impl Ordered {
    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_str()).collect()
    }
    fn get(&self, key: &str) -> &Json {
        &self
            .0
            .iter()
            .find(|(k, _)| k == key)
            .unwrap_or_else(|| panic!("no key {key}"))
            .1
    }
}

const LINE_KEYS: [&str; 21] = [
    "level",
    "metadata",
    "nodeName",
    "podUID",
    "podName",
    "podNamespace",
    "containerID",
    "containerName",
    "image",
    "pid",
    "mntNsID",
    "eventTimestamp",
    "enforcer",
    "action",
    "profileName",
    "policyKind",
    "policyName",
    "policyNamespace",
    "event",
    "time",
    "message",
];

fn with_pod(mut e: v1::Event, n: u32) -> v1::Event {
    e.node_name = NODE.into();
    e.pod_uid = format!("uid-{n}");
    e.pod_name = format!("web-{n}");
    e.pod_namespace = "demo".into();
    e.container_id = format!("c0ffee{n:04}");
    e.container_name = "nginx".into();
    e.image = "docker.io/library/nginx:1.27".into();
    e.policy_kind = "VarmorPolicy".into();
    e.policy_name = "web".into();
    e.policy_namespace = "demo".into();
    e
}

fn bpf(r: Record<'_>) -> v1::Event {
    let e = BpfEvent::decode(&r.bytes()).expect("decode the record");
    e.to_proto(
        "varmor-demo-web",
        UNIX_EPOCH + Duration::from_secs(BOOT_SECS),
    )
}

fn rec(kind: u32, action: u32) -> Record<'static> {
    Record {
        kind,
        action,
        mnt_ns: 4_026_532_000,
        tgid: 4242,
        ktime_ns: KTIME,
        ..Default::default()
    }
}

/// One event of every shape the log carries, with the `event` object expected for it.
fn corpus() -> Vec<(v1::Event, Json)> {
    let mut out = Vec::new();
    let mut push = |e: v1::Event, want: Json| {
        let n = out.len() as u32;
        out.push((with_pod(e, n), want));
    };
    push(
        bpf(Record {
            perms: perm::READ | perm::WRITE,
            path: "/etc/shadow",
            ..rec(VA_EV_FILE, VA_EVENT_DENIED)
        }),
        json!({"operation": "File", "permissions": ["write", "read"], "path": "/etc/shadow"}),
    );
    push(
        bpf(Record {
            path: "/bin/sh",
            ..rec(VA_EV_EXEC, VA_EVENT_AUDIT)
        }),
        json!({"operation": "Bprm", "permissions": ["exec"], "path": "/bin/sh"}),
    );
    push(
        bpf(Record {
            perms: 21,
            ..rec(VA_EV_CAPABILITY, VA_EVENT_DENIED)
        }),
        json!({"operation": "Capability", "capability": "sys_admin"}),
    );
    push(
        bpf(Record {
            a: 2,
            b: 3,
            c: 1,
            ..rec(VA_EV_SOCKET, VA_EVENT_DENIED)
        }),
        json!({"operation": "Network", "type": "socket",
               "socket": {"domain": "AF_INET", "type": "SOCK_RAW", "protocol": "IPPROTO_ICMP"},
               "address": {"ip": "", "port": 0}}),
    );
    push(
        bpf(Record {
            a: 4,
            b: 80,
            addr: [0xa9fe_a9fe, 0, 0, 0],
            ..rec(VA_EV_CONNECT, VA_EVENT_DENIED)
        }),
        json!({"operation": "Network", "type": "connect",
               "socket": {"domain": "", "type": "", "protocol": ""},
               "address": {"ip": "169.254.169.254", "port": 80}}),
    );
    push(
        bpf(Record {
            flags: VA_EVF_EXTERNAL,
            perms: ptrace::READ,
            ..rec(VA_EV_PTRACE, VA_EVENT_DENIED)
        }),
        json!({"operation": "Ptrace", "permission": "read", "external": true}),
    );
    push(
        bpf(Record {
            perms: mount::REMOUNT | mount::BIND,
            path: "/proc",
            fstype: "proc",
            ..rec(VA_EV_MOUNT, VA_EVENT_DENIED)
        }),
        json!({"operation": "Mount", "path": "/proc", "type": "proc", "flags": ["remount", "bind"]}),
    );
    let apparmor: Json = serde_json::from_str(
        r#"{"version":2,"event":4,"pid":3210,"peerPID":0,"task":0,"magicToken":0,
        "epoch":1700000007,"auditSubID":312,"bitMask":0,"auditID":"1700000007.123:312",
        "operation":"open","deniedMask":"r","requestedMask":"r","fsuid":0,"ouid":0,
        "profile":"varmor-demo-web","peerProfile":"","comm":"cat","name":"/etc/shadow",
        "name2":"","namespace":"","attribute":"","parent":0,"info":"","peerInfo":"",
        "errorCode":0,"activeHat":"","netFamily":"","netProtocol":"","netSockType":"",
        "netLocalAddr":"","netLocalPort":0,"netForeignAddr":"","netForeignPort":0,
        "dbusBus":"","dbusPath":"","dbusInterface":"","dbusMember":"","signal":"","peer":"",
        "fsType":"","flags":"","srcName":""}"#,
    )
    .expect("AppArmor event");
    push(
        v1::Event {
            time: Some((UNIX_EPOCH + Duration::from_secs(1_700_000_007)).into()),
            pid: 3210,
            mnt_ns_id: 4_026_532_001,
            enforcer: v1::Enforcer::Apparmor as i32,
            action: "DENIED".into(),
            profile_name: "varmor-demo-web".into(),
            event_json: apparmor.to_string(),
            ..Default::default()
        },
        apparmor,
    );
    let seccomp = json!({"auditID": "1700000008.5:77", "epoch": 1_700_000_008,
        "subj": "unconfined", "pid": 77, "comm": "unshare", "exe": "/usr/bin/unshare",
        "syscall": "unshare"});
    push(
        v1::Event {
            time: Some((UNIX_EPOCH + Duration::from_secs(1_700_000_008)).into()),
            pid: 77,
            mnt_ns_id: 4_026_532_002,
            enforcer: v1::Enforcer::Seccomp as i32,
            action: "AUDIT|ALLOWED".into(),
            profile_name: "varmor-demo-web".into(),
            event_json: seccomp.to_string(),
            ..Default::default()
        },
        seccomp,
    );
    out
}

fn log_config(dir: &Path) -> ViolationLogConfig {
    let mut c = ViolationLogConfig::new(NODE, "varmor");
    c.path = dir.join("varmor/violations.log");
    c.metadata = serde_json::from_str(r#"{"cluster":"prod","varmorNamespace":"overridden"}"#)
        .expect("metadata");
    c
}

fn lines(path: &Path) -> Vec<Ordered> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("line {l:?}: {e}")))
        .collect()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Whether `s` is `YYYY-MM-DDTHH:MM:SSZ` of a moment within the last few seconds.
fn is_recent_rfc3339(s: &str) -> bool {
    let now = now_secs() as i64;
    s.len() == 20 && (now - 5..=now + 1).any(|t| rfc3339_utc(t) == s)
}

fn check_line(line: &Ordered, e: &v1::Event, want_event: &Json) {
    assert_eq!(line.keys(), LINE_KEYS, "keys and their order");
    let enforcer = match v1::Enforcer::try_from(e.enforcer).unwrap() {
        v1::Enforcer::Apparmor => "AppArmor",
        v1::Enforcer::Bpf => "BPF",
        v1::Enforcer::Seccomp => "Seccomp",
        v1::Enforcer::Unspecified => "",
    };
    let want = [
        ("level", json!("warn")),
        (
            "metadata",
            json!({"cluster": "prod", "varmorNamespace": "varmor"}),
        ),
        ("nodeName", json!(NODE)),
        ("podUID", json!(e.pod_uid)),
        ("podName", json!(e.pod_name)),
        ("podNamespace", json!("demo")),
        ("containerID", json!(e.container_id)),
        ("containerName", json!("nginx")),
        ("image", json!("docker.io/library/nginx:1.27")),
        ("pid", json!(e.pid)),
        ("mntNsID", json!(e.mnt_ns_id)),
        ("eventTimestamp", json!(e.time.as_ref().unwrap().seconds)),
        ("enforcer", json!(enforcer)),
        ("action", json!(e.action)),
        ("profileName", json!("varmor-demo-web")),
        ("policyKind", json!("VarmorPolicy")),
        ("policyName", json!("web")),
        ("policyNamespace", json!("demo")),
        ("event", want_event.clone()),
        ("message", json!("violation event")),
    ];
    for (key, value) in want {
        assert_eq!(line.get(key), &value, "{key} of {want_event}");
    }
    let written = line.get("time").as_str().expect("time is a string");
    assert!(
        is_recent_rfc3339(written),
        "time {written} is RFC 3339 UTC of when the line was written"
    );
}

#[test]
fn every_key_in_order_for_every_enforcer() {
    let dir = tempfile::tempdir().unwrap();
    let config = log_config(dir.path());
    let path = config.path.clone();
    let mut log = ViolationLog::open(config).expect("open (creates the directory)");
    let corpus = corpus();
    for (e, _) in &corpus {
        log.write_event(e).expect("write");
    }
    let mut bad = corpus[0].0.clone();
    bad.event_json = "{\"operation\":\"File\", truncated".into();
    log.write_event(&bad).expect("write a malformed event");
    log.flush().expect("flush");
    assert_eq!(log.malformed(), 1);

    let got = lines(&path);
    assert_eq!(got.len(), corpus.len() + 1);
    for (line, (e, want)) in got.iter().zip(&corpus) {
        check_line(line, e, want);
    }
    // BPF times: boot + ktime, in whole seconds.
    assert_eq!(got[0].get("eventTimestamp"), &json!(BOOT_SECS + 5));
    assert_eq!(got[0].get("pid"), &json!(4242));
    assert_eq!(
        got.last().unwrap().get("event"),
        &json!("{\"operation\":\"File\", truncated"),
        "invalid event_json is kept as a string"
    );
    let mode = std::fs::metadata(&path).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(mode.permissions().mode() & 0o777, 0o600);
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn rotation_keeps_exactly_the_configured_backups() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = log_config(dir.path());
    config.max_size = 4096;
    config.max_backups = 3;
    let logdir = config.path.parent().unwrap().to_path_buf();
    std::fs::create_dir_all(&logdir).unwrap();
    // A leftover of an earlier, larger setting is removed at open.
    std::fs::write(logdir.join("violations.log.5"), b"old\n").unwrap();
    let path = config.path.clone();
    let mut log = ViolationLog::open(config).expect("open");
    let (template, _) = corpus().remove(0);
    for n in 0..300u32 {
        let mut e = template.clone();
        e.pid = n;
        log.write_event(&e).expect("write");
        if n % 7 == 0 {
            log.flush().expect("flush");
        }
    }
    log.flush().expect("flush");
    assert_eq!(
        files_in(&logdir),
        [
            "violations.log",
            "violations.log.1",
            "violations.log.2",
            "violations.log.3"
        ]
    );
    // Newest last: .3, .2, .1, the file; the pids are consecutive and end at 299.
    let mut pids = Vec::new();
    for name in [
        "violations.log.3",
        "violations.log.2",
        "violations.log.1",
        "violations.log",
    ] {
        let p = logdir.join(name);
        let size = std::fs::metadata(&p).unwrap().len();
        assert!(size <= 4096, "{name} is {size} bytes");
        if name != "violations.log" {
            assert!(
                size > 4096 - 700,
                "{name} was rotated only when full ({size} bytes)"
            );
        }
        pids.extend(lines(&p).iter().map(|l| l.get("pid").as_u64().unwrap()));
    }
    assert_eq!(*pids.last().unwrap(), 299);
    assert!(
        pids.windows(2).all(|w| w[1] == w[0] + 1),
        "no line lost or reordered within the kept files"
    );
    assert!(
        pids.len() > 12,
        "about 4 files of lines kept: {}",
        pids.len()
    );

    // External rotation: the file is moved away; after the next flush we write a new one.
    std::fs::rename(&path, logdir.join("moved")).unwrap();
    let mut e = template.clone();
    e.pid = 1000;
    log.write_event(&e).unwrap();
    log.flush().unwrap();
    e.pid = 1001;
    log.write_event(&e).unwrap();
    log.flush().unwrap();
    let now: Vec<u64> = lines(&path)
        .iter()
        .map(|l| l.get("pid").as_u64().unwrap())
        .collect();
    assert_eq!(now, [1001], "reopened after the move");
    // Removed: the same.
    std::fs::remove_file(&path).unwrap();
    log.flush().unwrap();
    e.pid = 1002;
    log.write_event(&e).unwrap();
    log.flush().unwrap();
    assert_eq!(lines(&path).len(), 1);
}

#[test]
fn no_backups_means_a_fresh_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = log_config(dir.path());
    config.max_size = 2048;
    config.max_backups = 0;
    let logdir = config.path.parent().unwrap().to_path_buf();
    let mut log = ViolationLog::open(config).expect("open");
    let (e, _) = corpus().remove(0);
    for _ in 0..50 {
        log.write_event(&e).unwrap();
    }
    log.flush().unwrap();
    assert_eq!(files_in(&logdir), ["violations.log"]);
    assert!(
        std::fs::metadata(logdir.join("violations.log"))
            .unwrap()
            .len()
            <= 2048
    );
}

fn otlp_config(endpoint: String) -> OtlpConfig {
    let mut c = OtlpConfig::new(endpoint, NODE);
    c.batch_size = 16;
    c.batch_timeout = Duration::from_millis(20);
    c.timeout = Duration::from_millis(300);
    c.connect_timeout = Duration::from_millis(300);
    c.retry_backoff = BackoffConfig {
        initial: Duration::from_millis(40),
        max: Duration::from_millis(300),
    };
    c.max_retry_time = Duration::from_secs(20);
    c.headers = vec![("x-tenant".into(), "team-a".into())];
    c
}

fn pipeline(
    dir: &Path,
    otlp: Option<OtlpConfig>,
    upstream_cap: usize,
) -> (Pipeline, Arc<EventBuffer>, PathBuf) {
    let up = Arc::new(EventBuffer::open(NODE, upstream_cap, None).expect("buffer"));
    let mut config = PipelineConfig::new(NODE);
    let log = log_config(dir);
    let path = log.path.clone();
    config.log = Some(log);
    config.otlp = otlp;
    let p = Pipeline::start(config, Some(up.clone())).expect("start the pipeline");
    (p, up, path)
}

async fn eventually(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn int(v: Option<&Any>) -> i64 {
    match v {
        Some(Any::IntValue(i)) => *i,
        other => panic!("not an int: {other:?}"),
    }
}

fn string(v: Option<&Any>) -> &str {
    match v {
        Some(Any::StringValue(s)) => s,
        other => panic!("not a string: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_records_carry_every_attribute() {
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (p, up, path) = pipeline(dir.path(), Some(otlp_config(receiver.endpoint())), 1000);
    let corpus = corpus();
    for (e, _) in &corpus {
        assert!(p.submit(e.clone()).is_some(), "upstream takes it");
    }
    receiver
        .wait_until(Duration::from_secs(10), "every record", |r| {
            r.len() == corpus.len()
        })
        .await;
    let got = receiver.received();
    for (i, (r, (e, want))) in got.iter().zip(&corpus).enumerate() {
        let res = &r.resource;
        assert_eq!(string(attr(res, "service.name")), "varmor-agent");
        assert_eq!(string(attr(res, "host.name")), NODE);
        assert_eq!(string(attr(res, "k8s.node.name")), NODE);
        assert_eq!(r.scope_name, "varmor-agent");
        let rec = &r.record;
        let a = &rec.attributes;
        let seq = i as i64 + 1;
        assert_eq!(
            int(attr(a, "varmor.sequence")),
            seq,
            "sequence from upstream"
        );
        for (key, value) in [
            ("k8s.node.name", NODE),
            ("k8s.pod.uid", e.pod_uid.as_str()),
            ("k8s.pod.name", &e.pod_name),
            ("k8s.namespace.name", "demo"),
            ("container.id", &e.container_id),
            ("container.name", "nginx"),
            ("container.image.name", "docker.io/library/nginx:1.27"),
            ("varmor.action", &e.action),
            ("varmor.profile", "varmor-demo-web"),
            ("varmor.policy.kind", "VarmorPolicy"),
            ("varmor.policy.name", "web"),
            ("varmor.policy.namespace", "demo"),
        ] {
            assert_eq!(string(attr(a, key)), value, "{key} of record {i}");
        }
        let enforcer = string(attr(a, "varmor.enforcer"));
        assert_eq!(
            enforcer,
            match i {
                7 => "AppArmor",
                8 => "Seccomp",
                _ => "BPF",
            }
        );
        assert_eq!(int(attr(a, "process.pid")), i64::from(e.pid));
        assert_eq!(int(attr(a, "varmor.mnt_ns_id")), i64::from(e.mnt_ns_id));
        assert_eq!(a.len(), 16, "no other attributes: {a:?}");
        let t = e.time.as_ref().unwrap();
        assert_eq!(
            rec.time_unix_nano,
            t.seconds as u64 * 1_000_000_000 + t.nanos as u64
        );
        if i == 0 {
            assert_eq!(rec.time_unix_nano, (BOOT_SECS * 1_000_000_000) + KTIME);
        }
        assert!(rec.observed_time_unix_nano / 1_000_000_000 >= now_secs() - 10);
        let (sev, text) = if e.action == "DENIED" {
            (13, "WARN")
        } else {
            (9, "INFO")
        };
        assert_eq!(
            (rec.severity_number, rec.severity_text.as_str()),
            (sev, text),
            "{}",
            e.action
        );
        assert_eq!(rec.event_name, "varmor.violation");
        assert_eq!(
            &to_json(rec.body.as_ref().expect("body")),
            want,
            "body of record {i}"
        );
    }
    p.shutdown(Duration::from_secs(5)).await;
    assert_eq!(lines(&path).len(), corpus.len());
    let stats = p.sink_stats();
    let names: Vec<&str> = stats.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["upstream", "violations.log", "otlp"]);
    for s in &stats {
        assert_eq!(
            (s.written, s.dropped),
            (corpus.len() as u64, 0),
            "{}",
            s.name
        );
    }
    assert_eq!(up.counters().produced, corpus.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_collector_drops_only_otlp_and_reports_it_later() {
    let receiver = Receiver::start().await;
    receiver.set_stalled(true);
    let dir = tempfile::tempdir().unwrap();
    let mut otlp = otlp_config(receiver.endpoint());
    otlp.queue_capacity = 50;
    otlp.max_retry_time = Duration::from_millis(700);
    let (p, up, path) = pipeline(dir.path(), Some(otlp), 10_000);
    let (template, _) = corpus().remove(0);
    const N: u64 = 2000;
    for n in 0..N {
        let mut e = template.clone();
        e.pid = n as u32;
        p.submit(e);
    }
    let otlp_stats = || p.sink_stats()[2].clone();
    // The file and upstream get every event while OTLP is stuck.
    eventually(
        "violations.log has every line",
        Duration::from_secs(10),
        || p.sink_stats()[1].written == N,
    )
    .await;
    assert_eq!(up.counters().produced, N);
    assert_eq!(up.counters().dropped, 0);
    assert_eq!(receiver.count(), 0);
    eventually("OTLP gave up its batches", Duration::from_secs(10), || {
        let s = otlp_stats();
        s.dropped + s.queued >= N - 16 && s.errors > 0
    })
    .await;
    let s = otlp_stats();
    assert!(s.dropped >= N - 50 - 16, "dropped {}", s.dropped);
    assert!(
        s.last_error.contains("Cancelled") || s.last_error.contains("DeadlineExceeded"),
        "{}",
        s.last_error
    );

    receiver.set_stalled(false);
    // What is still queued gets through, then a later event, with the drop report before it.
    eventually("the OTLP queue drained", Duration::from_secs(15), || {
        otlp_stats().queued == 0
    })
    .await;
    let mut e = template.clone();
    e.pid = 99_999;
    p.submit(e);
    receiver
        .wait_until(Duration::from_secs(15), "the last event", |r| {
            r.iter().any(|r| {
                matches!(
                    attr(&r.record.attributes, "process.pid"),
                    Some(Any::IntValue(99_999))
                )
            })
        })
        .await;
    p.shutdown(Duration::from_secs(5)).await;
    let got = receiver.received();
    let reported: i64 = got
        .iter()
        .filter_map(|r| attr(&r.record.attributes, "varmor.dropped").map(|v| int(Some(v))))
        .sum();
    let s = otlp_stats();
    assert_eq!(reported as u64, s.dropped, "every drop reported in-band");
    let markers: Vec<_> = got
        .iter()
        .filter(|r| attr(&r.record.attributes, "varmor.dropped").is_some())
        .collect();
    assert_eq!(
        string(attr(&markers[0].record.attributes, "varmor.sink")),
        "otlp"
    );
    assert_eq!(markers[0].record.severity_text, "WARN");
    let violations = (got.len() - markers.len()) as u64;
    assert_eq!(violations, s.written);
    assert_eq!(
        s.written + s.dropped,
        N + 1,
        "every event delivered or counted"
    );
    assert_eq!(lines(&path).len() as u64, N + 1, "the file has every event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_comes_up_late_gets_everything() {
    // A port with nobody listening yet.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let (p, _up, _path) = pipeline(dir.path(), Some(otlp_config(format!("http://{addr}"))), 100);
    let (template, _) = corpus().remove(0);
    for n in 0..40 {
        let mut e = template.clone();
        e.pid = n;
        p.submit(e);
    }
    eventually("failed attempts", Duration::from_secs(5), || {
        p.sink_stats()[2].errors >= 2
    })
    .await;
    assert_eq!(p.sink_stats()[2].written, 0);
    let receiver = Receiver::start_on(addr, true).await;
    receiver
        .wait_until(Duration::from_secs(15), "all 40 records", |r| r.len() == 40)
        .await;
    eventually("the exporter counted 40", Duration::from_secs(5), || {
        p.sink_stats()[2].written == 40
    })
    .await;
    assert_eq!(p.sink_stats()[2].dropped, 0);
    let pids: Vec<i64> = receiver
        .received()
        .iter()
        .map(|r| int(attr(&r.record.attributes, "process.pid")))
        .collect();
    assert_eq!(pids, (0..40).collect::<Vec<i64>>(), "in order, once each");
    p.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_log_queue_drops_and_writes_a_marker_line() {
    let dir = tempfile::tempdir().unwrap();
    let up = Arc::new(EventBuffer::open(NODE, 100_000, None).expect("buffer"));
    let mut config = PipelineConfig::new(NODE);
    let log = log_config(dir.path());
    let path = log.path.clone();
    config.log = Some(log);
    config.log_queue = 1;
    config.log_batch = 1;
    let p = Pipeline::start(config, Some(up.clone())).expect("start");
    let (template, _) = corpus().remove(0);
    const N: u64 = 20_000;
    for _ in 0..N {
        p.submit(template.clone());
    }
    p.shutdown(Duration::from_secs(5)).await;
    let s = p.sink_stats()[1].clone();
    assert!(
        s.dropped > 0,
        "a one-event queue cannot keep up with {N} events"
    );
    assert_eq!(s.written + s.dropped, N);
    assert_eq!(up.counters().produced, N, "upstream is not affected");
    let got = lines(&path);
    let markers: Vec<&Ordered> = got
        .iter()
        .filter(|l| l.get("message") == "events dropped")
        .collect();
    assert!(!markers.is_empty());
    assert_eq!(
        markers[0].keys(),
        ["level", "metadata", "nodeName", "sink", "dropped", "time", "message"]
    );
    assert_eq!(markers[0].get("sink"), "violations.log");
    let reported: u64 = markers
        .iter()
        .map(|m| m.get("dropped").as_u64().unwrap())
        .sum();
    // Drops after the last written batch are reported with the next one (none came).
    assert!(reported <= s.dropped && reported > 0);
    assert_eq!((got.len() - markers.len()) as u64, s.written);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bench_counting_receiver_counts_every_record_of_large_requests() {
    let receiver = Receiver::start_counting("127.0.0.1:0".parse().unwrap()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut otlp = otlp_config(receiver.endpoint());
    // Requests of well over 128 bytes per record and 16 KiB per batch: multi-byte lengths
    // at every level of the direct encoding.
    otlp.batch_size = 300;
    let (p, _up, _path) = pipeline(dir.path(), Some(otlp), 10_000);
    let corpus = corpus();
    const N: u64 = 1000;
    for n in 0..N {
        p.submit(corpus[n as usize % corpus.len()].0.clone());
    }
    eventually(
        "the receiver counted every record",
        Duration::from_secs(10),
        || receiver.count() == N,
    )
    .await;
    assert!(
        receiver.requests() >= N / 300,
        "{} requests",
        receiver.requests()
    );
    assert!(
        receiver.received().is_empty(),
        "counting only keeps nothing"
    );
    p.shutdown(Duration::from_secs(5)).await;
    let s = p.sink_stats()[2].clone();
    assert_eq!((s.written, s.dropped, s.errors), (N, 0, 0));
}
