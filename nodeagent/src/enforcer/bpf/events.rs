//! Events of the BPF programs: decoding the ring buffer records (`struct va_event`) and
//! turning them into the agent's `v1::Event` with vArmor's BPF `event` shapes (violations.log
//! §8.2 of the reference).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, SystemTime};

use serde_json::{json, Value as Json};
use varmor_policy::names::{self, mount, perm, ptrace};
use varmor_proto::v1;

use super::layout::*;

/// One decoded event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BpfEvent {
    /// `VA_EV_*`.
    pub kind: u32,
    /// `VA_EVENT_*` (DENIED 1, AUDIT 2, ALLOWED 4).
    pub action: u32,
    /// The container's mount namespace.
    pub mnt_ns: u32,
    /// The process (thread group) id.
    pub tgid: u32,
    /// `bpf_ktime_get_boot_ns`.
    pub ktime_ns: u64,
    /// The profile version.
    pub slot: u32,
    /// Its generation.
    pub generation: u32,
    /// `VA_EVF_*`.
    pub flags: u32,
    /// Permissions (file, exec, ptrace), the capability, or the mount flags.
    pub perms: u32,
    /// Socket domain, or connect family (4, 6).
    pub a: u32,
    /// Socket type, or connect port.
    pub b: u32,
    /// Socket protocol.
    pub c: u32,
    /// Connect address words.
    pub addr: [u32; 4],
    /// The path, mount source or mount point.
    pub path: String,
    /// The mount's filesystem type.
    pub fstype: String,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

impl BpfEvent {
    /// Decodes one ring-buffer record; `None` when it is too short.
    pub fn decode(b: &[u8]) -> Option<BpfEvent> {
        let head = VA_EV_OFF_PATH as usize;
        if b.len() < head {
            return None;
        }
        let path_len = (u32_at(b, 68) as usize).min(b.len() - head);
        let fstype = &b[72..104];
        let fs_end = fstype.iter().position(|&c| c == 0).unwrap_or(fstype.len());
        Some(BpfEvent {
            kind: u32_at(b, 0),
            action: u32_at(b, 4),
            mnt_ns: u32_at(b, 8),
            tgid: u32_at(b, 12),
            ktime_ns: u64::from_le_bytes(b[16..24].try_into().expect("8 bytes")),
            slot: u32_at(b, 24),
            generation: u32_at(b, 28),
            flags: u32_at(b, 32),
            perms: u32_at(b, 36),
            a: u32_at(b, 40),
            b: u32_at(b, 44),
            c: u32_at(b, 48),
            addr: [u32_at(b, 52), u32_at(b, 56), u32_at(b, 60), u32_at(b, 64)],
            path: String::from_utf8_lossy(&b[head..head + path_len]).into_owned(),
            fstype: String::from_utf8_lossy(&fstype[..fs_end]).into_owned(),
        })
    }

    /// `DENIED`, `AUDIT` or `ALLOWED`.
    pub fn action_name(&self) -> &'static str {
        match self.action {
            VA_EVENT_DENIED => "DENIED",
            VA_EVENT_AUDIT => "AUDIT",
            _ => "ALLOWED",
        }
    }

    /// The destination of a connect event.
    pub fn address(&self) -> Option<IpAddr> {
        match (self.kind, self.a) {
            (VA_EV_CONNECT, 4) => Some(IpAddr::V4(Ipv4Addr::from(self.addr[0]))),
            (VA_EV_CONNECT, 6) => {
                let mut o = [0u8; 16];
                for (k, w) in self.addr.iter().enumerate() {
                    o[4 * k..4 * k + 4].copy_from_slice(&w.to_be_bytes());
                }
                Some(IpAddr::V6(Ipv6Addr::from(o)))
            }
            _ => None,
        }
    }

    /// The `event` object of the violations log, in vArmor's BPF shapes.
    pub fn event_json(&self) -> Json {
        let mut v = match self.kind {
            VA_EV_CAPABILITY => json!({
                "operation": "Capability",
                "capability": names::capability_name(self.perms)
                    .map_or_else(|| self.perms.to_string(), str::to_string),
            }),
            VA_EV_FILE => json!({
                "operation": "File",
                "permissions": perm::names(self.perms),
                "path": self.path,
            }),
            VA_EV_EXEC => json!({
                "operation": "Bprm",
                "permissions": ["exec"],
                "path": self.path,
            }),
            VA_EV_SOCKET => json!({
                "operation": "Network",
                "type": "socket",
                "socket": {
                    "domain": names::socket_domain_name(self.a)
                        .map_or_else(|| self.a.to_string(), |n| format!("AF_{}", n.to_ascii_uppercase())),
                    "type": names::socket_type_name(self.b)
                        .map_or_else(|| self.b.to_string(), |n| format!("SOCK_{}", n.to_ascii_uppercase())),
                    "protocol": names::socket_protocol_name(self.c)
                        .map_or_else(|| self.c.to_string(), |n| format!("IPPROTO_{}", n.to_ascii_uppercase())),
                },
                "address": {"ip": "", "port": 0},
            }),
            VA_EV_CONNECT => json!({
                "operation": "Network",
                "type": "connect",
                "socket": {"domain": "", "type": "", "protocol": ""},
                "address": {
                    "ip": self.address().map(|a| a.to_string()).unwrap_or_default(),
                    "port": self.b,
                },
            }),
            VA_EV_PTRACE => json!({
                "operation": "Ptrace",
                "permission": ptrace::names(self.perms).join("|"),
                "external": self.flags & VA_EVF_EXTERNAL != 0,
            }),
            VA_EV_MOUNT => json!({
                "operation": "Mount",
                "path": self.path,
                "type": self.fstype,
                "flags": mount::names(self.perms),
            }),
            other => json!({ "operation": format!("unknown({other})") }),
        };
        if self.flags & VA_EVF_PATH_ERROR != 0 {
            v["reason"] = json!(
                "the path could not be resolved (longer than 4095 bytes or unreachable); denied"
            );
        }
        if self.flags & VA_EVF_TABLE_ERROR != 0 {
            v["reason"] = json!("the profile's tables could not be read; denied");
        }
        v
    }

    /// The text of [`Self::event_json`], written directly (the hot path of the violation
    /// pipeline: no `Value` tree, one buffer). Byte for byte what `event_json().to_string()`
    /// gives: keys in sorted order, serde_json's string escaping.
    pub fn event_json_text(&self) -> String {
        let mut o = JsonObject::with_capacity(96 + self.path.len());
        match self.kind {
            VA_EV_CAPABILITY => {
                match names::capability_name(self.perms) {
                    Some(n) => o.str("capability", n),
                    None => o.str("capability", &self.perms.to_string()),
                }
                o.str("operation", "Capability");
                self.reason(&mut o);
            }
            VA_EV_FILE | VA_EV_EXEC => {
                o.str(
                    "operation",
                    if self.kind == VA_EV_FILE {
                        "File"
                    } else {
                        "Bprm"
                    },
                );
                o.str("path", &self.path);
                if self.kind == VA_EV_FILE {
                    o.strs("permissions", &perm::names(self.perms));
                } else {
                    o.strs("permissions", &["exec"]);
                }
                self.reason(&mut o);
            }
            VA_EV_SOCKET => {
                o.raw("address", r#"{"ip":"","port":0}"#);
                o.str("operation", "Network");
                self.reason(&mut o);
                let name = |n: Option<&str>, prefix: &str, v: u32| {
                    n.map_or_else(
                        || v.to_string(),
                        |n| format!("{prefix}{}", n.to_ascii_uppercase()),
                    )
                };
                let mut sock = JsonObject::with_capacity(64);
                sock.str(
                    "domain",
                    &name(names::socket_domain_name(self.a), "AF_", self.a),
                );
                sock.str(
                    "protocol",
                    &name(names::socket_protocol_name(self.c), "IPPROTO_", self.c),
                );
                sock.str(
                    "type",
                    &name(names::socket_type_name(self.b), "SOCK_", self.b),
                );
                o.raw("socket", &sock.finish());
                o.str("type", "socket");
            }
            VA_EV_CONNECT => {
                let mut addr = JsonObject::with_capacity(48);
                addr.str(
                    "ip",
                    &self.address().map(|a| a.to_string()).unwrap_or_default(),
                );
                addr.raw("port", &self.b.to_string());
                o.raw("address", &addr.finish());
                o.str("operation", "Network");
                self.reason(&mut o);
                o.raw("socket", r#"{"domain":"","protocol":"","type":""}"#);
                o.str("type", "connect");
            }
            VA_EV_PTRACE => {
                o.raw(
                    "external",
                    if self.flags & VA_EVF_EXTERNAL != 0 {
                        "true"
                    } else {
                        "false"
                    },
                );
                o.str("operation", "Ptrace");
                o.str("permission", &ptrace::names(self.perms).join("|"));
                self.reason(&mut o);
            }
            VA_EV_MOUNT => {
                o.strs("flags", &mount::names(self.perms));
                o.str("operation", "Mount");
                o.str("path", &self.path);
                self.reason(&mut o);
                o.str("type", &self.fstype);
            }
            other => {
                o.str("operation", &format!("unknown({other})"));
                self.reason(&mut o);
            }
        }
        o.finish()
    }

    /// The `reason` key of [`Self::event_json`] (it sorts after every key written before it).
    fn reason(&self, o: &mut JsonObject) {
        if self.flags & VA_EVF_TABLE_ERROR != 0 {
            o.str("reason", "the profile's tables could not be read; denied");
        } else if self.flags & VA_EVF_PATH_ERROR != 0 {
            o.str(
                "reason",
                "the path could not be resolved (longer than 4095 bytes or unreachable); denied",
            );
        }
    }

    /// The agent's event. `boot_time` is the wall-clock time of boot (for `ktime_ns`).
    pub fn to_proto(&self, profile: &str, boot_time: SystemTime) -> v1::Event {
        v1::Event {
            time: Some((boot_time + Duration::from_nanos(self.ktime_ns)).into()),
            pid: self.tgid,
            mnt_ns_id: self.mnt_ns,
            enforcer: v1::Enforcer::Bpf as i32,
            action: self.action_name().to_string(),
            profile_name: profile.to_string(),
            event_json: self.event_json_text(),
            ..Default::default()
        }
    }
}

/// A JSON object written key by key, in the order given (callers give sorted keys).
struct JsonObject {
    out: Vec<u8>,
}

impl JsonObject {
    fn with_capacity(n: usize) -> Self {
        let mut out = Vec::with_capacity(n);
        out.push(b'{');
        JsonObject { out }
    }

    fn key(&mut self, k: &str) {
        if self.out.len() > 1 {
            self.out.push(b',');
        }
        self.quoted(k);
        self.out.push(b':');
    }

    fn quoted(&mut self, s: &str) {
        serde_json::to_writer(&mut self.out, s).expect("writing to a Vec");
    }

    fn str(&mut self, k: &str, v: &str) {
        self.key(k);
        self.quoted(v);
    }

    fn strs(&mut self, k: &str, v: &[&str]) {
        self.key(k);
        self.out.push(b'[');
        for (i, x) in v.iter().enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            self.quoted(x);
        }
        self.out.push(b']');
    }

    fn raw(&mut self, k: &str, json: &str) {
        self.key(k);
        self.out.extend_from_slice(json.as_bytes());
    }

    fn finish(mut self) -> String {
        self.out.push(b'}');
        String::from_utf8(self.out).expect("JSON written from str is UTF-8")
    }
}

/// The wall-clock time of boot, from `/proc/uptime` (boot-time clock, like the events').
pub fn boot_time(uptime: &str) -> SystemTime {
    let secs: f64 = uptime
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.0);
    SystemTime::now()
        .checked_sub(Duration::from_secs_f64(secs))
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: u32, action: u32, path: &str) -> Vec<u8> {
        let mut b = vec![0u8; VA_EV_OFF_PATH as usize];
        b[0..4].copy_from_slice(&kind.to_le_bytes());
        b[4..8].copy_from_slice(&action.to_le_bytes());
        b[8..12].copy_from_slice(&4026531840u32.to_le_bytes());
        b[12..16].copy_from_slice(&42u32.to_le_bytes());
        b[16..24].copy_from_slice(&5_000_000_000u64.to_le_bytes());
        b[68..72].copy_from_slice(&(path.len() as u32).to_le_bytes());
        b.extend_from_slice(path.as_bytes());
        b
    }

    #[test]
    fn the_direct_json_text_is_the_value_tree_text() {
        let paths = [
            "/etc/shadow",
            "",
            "/tmp/a \"quoted\" \\ back\u{1}\n\t\u{7f}/é/日本/\u{2028}",
            "/x/y (deleted)",
        ];
        let mut n = 0;
        for kind in [
            VA_EV_CAPABILITY,
            VA_EV_FILE,
            VA_EV_EXEC,
            VA_EV_SOCKET,
            VA_EV_CONNECT,
            VA_EV_PTRACE,
            VA_EV_MOUNT,
            77,
        ] {
            for flags in [
                0,
                VA_EVF_PATH_ERROR,
                VA_EVF_TABLE_ERROR,
                VA_EVF_PATH_ERROR | VA_EVF_TABLE_ERROR,
                VA_EVF_EXTERNAL,
            ] {
                for (i, path) in paths.iter().enumerate() {
                    for (perms, a, b, c) in [
                        (0u32, 0u32, 0u32, 0u32),
                        (21, 2, 3, 1),
                        (0x1f, 10, 443, 6),
                        (0xffff_ffff, 99, 99, 99),
                        (40, 4, 65535, 255),
                    ] {
                        let mut e =
                            BpfEvent::decode(&record(kind, VA_EVENT_DENIED, path)).expect("decode");
                        e.flags = flags;
                        e.perms = perms;
                        e.a = if kind == VA_EV_CONNECT {
                            [4, 6][i % 2]
                        } else {
                            a
                        };
                        e.b = b;
                        e.c = c;
                        e.addr = [0x0a00_0001, 0xfd00, 0, (i as u32) << 8];
                        e.fstype = ["tmpfs", "", "we\"ird"][i % 3].to_string();
                        assert_eq!(e.event_json_text(), e.event_json().to_string(), "{e:?}");
                        n += 1;
                    }
                }
            }
        }
        assert_eq!(n, 8 * 5 * 4 * 5);
    }

    #[test]
    fn file_events_have_varmors_shape() {
        let mut b = record(VA_EV_FILE, VA_EVENT_DENIED, "/etc/shadow");
        b[36..40].copy_from_slice(&(perm::READ | perm::WRITE).to_le_bytes());
        let e = BpfEvent::decode(&b).expect("decode");
        assert_eq!(e.path, "/etc/shadow");
        assert_eq!(e.tgid, 42);
        assert_eq!(e.action_name(), "DENIED");
        assert_eq!(
            e.event_json(),
            json!({"operation": "File", "permissions": ["write", "read"], "path": "/etc/shadow"})
        );
        let p = e.to_proto("varmor-demo-web", SystemTime::UNIX_EPOCH);
        assert_eq!(p.pid, 42);
        assert_eq!(p.mnt_ns_id, 4026531840);
        assert_eq!(p.enforcer, v1::Enforcer::Bpf as i32);
        assert_eq!(p.time.expect("time").seconds, 5);
        assert!(BpfEvent::decode(&b[..50]).is_none());
    }

    #[test]
    fn network_ptrace_and_mount_events() {
        let mut b = record(VA_EV_CONNECT, VA_EVENT_AUDIT, "");
        b[40..44].copy_from_slice(&4u32.to_le_bytes());
        b[44..48].copy_from_slice(&80u32.to_le_bytes());
        b[52..56].copy_from_slice(&0xa9fe_a9feu32.to_le_bytes());
        let e = BpfEvent::decode(&b).expect("decode");
        assert_eq!(
            e.event_json()["address"],
            json!({"ip": "169.254.169.254", "port": 80})
        );
        let mut b = record(VA_EV_SOCKET, VA_EVENT_DENIED, "");
        b[40..44].copy_from_slice(&2u32.to_le_bytes());
        b[44..48].copy_from_slice(&3u32.to_le_bytes());
        b[48..52].copy_from_slice(&1u32.to_le_bytes());
        let e = BpfEvent::decode(&b).expect("decode");
        assert_eq!(
            e.event_json()["socket"],
            json!({"domain": "AF_INET", "type": "SOCK_RAW", "protocol": "IPPROTO_ICMP"})
        );
        let mut b = record(VA_EV_PTRACE, VA_EVENT_DENIED, "");
        b[32..36].copy_from_slice(&VA_EVF_EXTERNAL.to_le_bytes());
        b[36..40].copy_from_slice(&ptrace::READ.to_le_bytes());
        let e = BpfEvent::decode(&b).expect("decode");
        assert_eq!(
            e.event_json(),
            json!({"operation": "Ptrace", "permission": "read", "external": true})
        );
        let mut b = record(VA_EV_MOUNT, VA_EVENT_DENIED, "/proc");
        b[36..40].copy_from_slice(&(mount::BIND | mount::REC).to_le_bytes());
        b[72..76].copy_from_slice(b"none");
        let e = BpfEvent::decode(&b).expect("decode");
        assert_eq!(e.fstype, "none");
        assert_eq!(e.event_json()["flags"], json!(["bind", "rec"]));
    }
}
