//! Kernel audit records of AppArmor and Seccomp, parsed into typed records.
//!
//! One parser reads the three shapes in which the kernel's audit text reaches us:
//!
//! * `/var/log/audit/audit.log` (auditd): `type=AVC msg=audit(1700000000.123:456): apparmor=...`,
//!   `type=SECCOMP msg=audit(...): ...`, optionally prefixed by `node=host ` and followed by
//!   auditd's enriched part after a `0x1d` byte (ignored);
//! * the kernel log (`/dev/kmsg`, `dmesg`, syslog): `6,1234,5678,-;audit: type=1400 audit(...): ...`;
//! * raw netlink audit messages: the message type number and the body `audit(...): ...`
//!   ([`parse_netlink`]).
//!
//! AppArmor records are type 1400 (`AVC`) with an `apparmor=` key (SELinux writes type 1400
//! too, without it), or the legacy 1500-1507 `APPARMOR_*` types; `USER_AVC` (1107) comes from
//! user space and is not ours. Seccomp records are type 1326 (`SECCOMP`).
//!
//! The record's [`AuditRecord::event`] is the `event` object of `violations.log` (reference
//! §8.2) with exactly vArmor's keys and JSON types:
//!
//! * AppArmor: the fields libapparmor fills in, every key always present (`""` or `0` when the
//!   record has no such field). `version` is 1 (libapparmor's "syntax v2"), `event` is
//!   libapparmor's record type (1 error, 2 audit, 3 allowed, 4 denied, 5 hint, 6 status; 0 for an
//!   unknown `apparmor=` value), `errorCode` is the positive errno (`error=-13` gives 13), and
//!   `netProtocol` is the protocol's name (`6` gives `tcp`) as libapparmor writes it.
//! * Seccomp: `auditID`, `epoch`, `subj`, `pid`, `comm`, `exe`, `syscall`, the syscall as its
//!   name for the record's `arch` when libseccomp knows it, else the number.
//!
//! Names that the kernel must escape (spaces, quotes, non-ASCII) arrive as bare upper-case
//! hex (`name=2F746D702F6120622063` is `/tmp/a b c`); they are decoded. A line that holds
//! several records yields each of them ([`parse_line_all`]). No input makes the parser panic.

use std::fmt;

use libseccomp::{ScmpArch, ScmpSyscall};
use serde_json::{json, Map, Value};
use varmor_proto::v1;

/// Which enforcer produced an audit record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuditKind {
    /// An AppArmor record (type 1400/AVC with `apparmor=`, or 1500-1507).
    AppArmor,
    /// A Seccomp record (type 1326/SECCOMP).
    Seccomp,
}

impl AuditKind {
    /// The `enforcer` value of `violations.log`: `AppArmor` or `Seccomp`.
    pub fn enforcer_name(self) -> &'static str {
        match self {
            AuditKind::AppArmor => "AppArmor",
            AuditKind::Seccomp => "Seccomp",
        }
    }
}

impl fmt::Display for AuditKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.enforcer_name())
    }
}

/// One AppArmor or Seccomp audit record.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    /// The enforcer that wrote the record.
    pub kind: AuditKind,
    /// AppArmor: the `apparmor=` value verbatim (`DENIED`, `AUDIT`, `ALLOWED`, also `KILLED`,
    /// `HINT`, `STATUS`, `ERROR` from the kernel). Seccomp, from `code`: `AUDIT|ALLOWED` for
    /// `SECCOMP_RET_LOG`, `ALLOWED` for `SECCOMP_RET_ALLOW`, `AUDIT` for `TRACE`/`USER_NOTIF`,
    /// `DENIED` for `ERRNO`, `TRAP` and the `KILL` actions.
    pub action: String,
    /// The audit stamp's seconds since the Unix epoch.
    pub epoch_secs: u64,
    /// The audit stamp's milliseconds (0-999).
    pub epoch_millis: u32,
    /// The audit stamp's serial number.
    pub serial: u64,
    /// The process (thread group) the record is about.
    pub pid: u32,
    /// AppArmor: the confining profile (`profile=`, or `label=`), `parent//child` for child
    /// profiles. `None` for Seccomp.
    pub profile: Option<String>,
    /// The `event` object of `violations.log` (see the module documentation).
    pub event: Value,
}

impl AuditRecord {
    /// The audit id `"<secs>.<millis>:<serial>"`, as the kernel prints it.
    pub fn audit_id(&self) -> String {
        format!(
            "{}.{:03}:{}",
            self.epoch_secs, self.epoch_millis, self.serial
        )
    }

    /// The pipeline's event: time, PID, enforcer, action, the profile (AppArmor) and
    /// `event_json`; the enricher fills in the container, pod and policy.
    pub fn to_event(&self) -> v1::Event {
        v1::Event {
            time: Some(prost_types::Timestamp {
                seconds: i64::try_from(self.epoch_secs).unwrap_or(i64::MAX),
                nanos: (self.epoch_millis.min(999) * 1_000_000) as i32,
            }),
            pid: self.pid,
            enforcer: match self.kind {
                AuditKind::AppArmor => v1::Enforcer::Apparmor,
                AuditKind::Seccomp => v1::Enforcer::Seccomp,
            } as i32,
            action: self.action.clone(),
            profile_name: self.profile.clone().unwrap_or_default(),
            event_json: self.event.to_string(),
            ..Default::default()
        }
    }

    /// Whether the record reports an access decision (as opposed to AppArmor's `STATUS`,
    /// `HINT` and `ERROR` records, e.g. a profile load).
    pub fn is_violation(&self) -> bool {
        match self.kind {
            AuditKind::Seccomp => true,
            AuditKind::AppArmor => {
                matches!(
                    self.action.as_str(),
                    "DENIED" | "AUDIT" | "ALLOWED" | "KILLED"
                )
            }
        }
    }
}

/// Why an audit record of ours could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditParseError {
    /// The record has no usable structure (no `audit(...)` stamp, unterminated quote, ...).
    #[error("malformed {kind} audit record: {reason}")]
    Malformed {
        /// The record type as written (`AVC`, `1326`, ...).
        kind: String,
        /// What is wrong.
        reason: String,
    },
    /// A field the record must have is missing.
    #[error("{kind} audit record has no `{field}` field")]
    MissingField {
        /// The record type as written.
        kind: String,
        /// The kernel's key name.
        field: &'static str,
    },
    /// A field has a value that cannot be what the kernel writes.
    #[error("{kind} audit record: field `{field}` = {value:?}: {reason}")]
    InvalidField {
        /// The record type as written.
        kind: String,
        /// The kernel's key name.
        field: String,
        /// The value as written (at most 64 characters).
        value: String,
        /// What is wrong.
        reason: String,
    },
}

/// Audit record type numbers (linux/audit.h).
const AUDIT_SECCOMP: u16 = 1326;
const AUDIT_AVC: u16 = 1400;
const AUDIT_APPARMOR_FIRST: u16 = 1500;
const AUDIT_APPARMOR_LAST: u16 = 1507;

/// Parses one line; `Ok(None)` when it holds no AppArmor or Seccomp record. With several
/// records in the line, the first of ours is returned (see [`parse_line_all`] for all).
pub fn parse_line(line: &str) -> Result<Option<AuditRecord>, AuditParseError> {
    parse_line_all(line).into_iter().next().transpose()
}

/// Parses every AppArmor and Seccomp record in `text` (one or more lines, each with zero or
/// more records), in order; records of other types are skipped.
pub fn parse_line_all(text: &str) -> Vec<Result<AuditRecord, AuditParseError>> {
    let mut out = Vec::new();
    for line in text.split('\n') {
        // auditd's enriched format appends interpreted fields after a group separator.
        let line = line.split('\x1d').next().unwrap_or("");
        let starts = record_starts(line);
        for (i, start) in starts.iter().enumerate() {
            let end = starts.get(i + 1).map_or(line.len(), |next| next.type_at);
            let Some(class) = classify(start.type_value) else {
                continue;
            };
            let result = match start.stamp_at {
                Some(stamp_at) => parse_body(class, start.type_value, &line[stamp_at..end]),
                None => Err(AuditParseError::Malformed {
                    kind: start.type_value.to_string(),
                    reason: "no `audit(<secs>.<millis>:<serial>)` stamp after the type".into(),
                }),
            };
            if let Some(result) = result.transpose() {
                out.push(result);
            }
        }
    }
    out
}

/// Parses a netlink audit message: its type (`nlmsg_type`) and body (`audit(...): ...`,
/// possibly NUL-terminated). `Ok(None)` for types that are not AppArmor or Seccomp.
pub fn parse_netlink(msg_type: u16, body: &[u8]) -> Result<Option<AuditRecord>, AuditParseError> {
    let type_value = msg_type.to_string();
    let Some(class) = classify(&type_value) else {
        return Ok(None);
    };
    let end = body.iter().position(|&b| b == 0).unwrap_or(body.len());
    let text = String::from_utf8_lossy(&body[..end]);
    let text = text.trim_start();
    let text = text.split(['\n', '\x1d']).next().unwrap_or("");
    if !text.starts_with("audit(") {
        return Err(AuditParseError::Malformed {
            kind: type_value,
            reason: "netlink body does not start with `audit(`".into(),
        });
    }
    parse_body(class, &type_value, text)
}

/// The name of syscall `nr` on the audit architecture `arch` (`AUDIT_ARCH_*`, e.g.
/// `0xc000003e` for x86_64), from libseccomp's tables; `None` when unknown.
pub fn syscall_name(arch: u32, nr: i64) -> Option<String> {
    const X32_BIT: i64 = 0x4000_0000;
    let (scmp_arch, nr) = match arch {
        0xc000_003e if nr & X32_BIT != 0 => (ScmpArch::X32, nr),
        0xc000_003e => (ScmpArch::X8664, nr),
        0x4000_0003 => (ScmpArch::X86, nr),
        0xc000_00b7 => (ScmpArch::Aarch64, nr),
        0x4000_0028 => (ScmpArch::Arm, nr),
        0xc000_0015 => (ScmpArch::Ppc64Le, nr),
        0x8000_0015 => (ScmpArch::Ppc64, nr),
        0x8000_0016 => (ScmpArch::S390X, nr),
        0xc000_00f3 => (ScmpArch::Riscv64, nr),
        _ => return None,
    };
    let nr = i32::try_from(nr).ok()?;
    if nr < 0 {
        return None;
    }
    ScmpSyscall::from(nr).get_name_by_arch(scmp_arch).ok()
}

/// Where a record starts in a line: its `type=` token and the `audit(` stamp after it.
#[derive(Debug)]
struct RecordStart<'a> {
    type_at: usize,
    type_value: &'a str,
    stamp_at: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// 1400/AVC: AppArmor only with an `apparmor=` key.
    Avc,
    /// 1500-1507: AppArmor's own legacy types.
    AppArmorLegacy,
    Seccomp,
}

fn classify(type_value: &str) -> Option<Class> {
    if let Ok(n) = type_value.parse::<u16>() {
        return match n {
            AUDIT_AVC => Some(Class::Avc),
            AUDIT_SECCOMP => Some(Class::Seccomp),
            AUDIT_APPARMOR_FIRST..=AUDIT_APPARMOR_LAST => Some(Class::AppArmorLegacy),
            _ => None,
        };
    }
    match type_value {
        "AVC" => Some(Class::Avc),
        "SECCOMP" => Some(Class::Seccomp),
        t if t.starts_with("APPARMOR_") => Some(Class::AppArmorLegacy),
        _ => None,
    }
}

/// Finds every `type=X` token (at a token boundary) and whether `msg=audit(` or `audit(`
/// follows it.
fn record_starts(line: &str) -> Vec<RecordStart<'_>> {
    let bytes = line.as_bytes();
    let mut starts = Vec::new();
    let mut from = 0;
    while let Some(rel) = line.get(from..).and_then(|rest| rest.find("type=")) {
        let at = from + rel;
        from = at + 5;
        let boundary = at == 0 || matches!(bytes[at - 1], b' ' | b'\t' | b':' | b';' | b']');
        if !boundary {
            continue;
        }
        let value_end = line[from..]
            .find(|c: char| c.is_ascii_whitespace())
            .map_or(line.len(), |i| from + i);
        let type_value = &line[from..value_end];
        let after = line[value_end..].trim_start();
        let after_at = line.len() - after.len();
        let stamp_at = if after.starts_with("msg=audit(") {
            Some(after_at + 4)
        } else if after.starts_with("audit(") {
            Some(after_at)
        } else {
            None
        };
        // A `type=` without a stamp is a record start only if it is one of ours (so the
        // caller can report it); otherwise it is some other text.
        if stamp_at.is_some() || classify(type_value).is_some() {
            starts.push(RecordStart {
                type_at: at,
                type_value,
                stamp_at,
            });
        }
        from = value_end.max(from);
    }
    starts
}

/// A field value as written: quoted values keep their inner text.
#[derive(Debug, Clone, Copy)]
struct RawValue<'a> {
    text: &'a str,
    quoted: bool,
}

struct Fields<'a> {
    kind: &'a str,
    pairs: Vec<(&'a str, RawValue<'a>)>,
}

impl<'a> Fields<'a> {
    /// The last value of `key` (later values win, as in libapparmor).
    fn raw(&self, key: &str) -> Option<RawValue<'a>> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v)
    }

    /// A string field; bare hex of an escapable field is decoded.
    fn string(&self, key: &str) -> Option<String> {
        self.raw(key).map(|v| decode_value(key, v))
    }

    fn string_or_empty(&self, key: &str) -> String {
        self.string(key).unwrap_or_default()
    }

    fn invalid(&self, field: &str, value: &str, reason: &str) -> AuditParseError {
        AuditParseError::InvalidField {
            kind: self.kind.to_string(),
            field: field.to_string(),
            value: value.chars().take(64).collect(),
            reason: reason.to_string(),
        }
    }

    /// An unsigned number field; `-N` (an id printed with `%d`) wraps as a 32-bit id.
    fn unsigned(&self, key: &str) -> Result<Option<u64>, AuditParseError> {
        let Some(v) = self.raw(key) else {
            return Ok(None);
        };
        let text = v.text;
        if let Ok(n) = text.parse::<u64>() {
            return Ok(Some(n));
        }
        match text.parse::<i64>() {
            Ok(n) if n >= i64::from(i32::MIN) => Ok(Some(u64::from(n as i32 as u32))),
            _ => Err(self.invalid(key, text, "not an unsigned decimal number")),
        }
    }

    fn unsigned_or_zero(&self, key: &str) -> Result<u64, AuditParseError> {
        Ok(self.unsigned(key)?.unwrap_or(0))
    }

    fn pid(&self) -> Result<u32, AuditParseError> {
        let Some(v) = self.raw("pid") else {
            return Err(AuditParseError::MissingField {
                kind: self.kind.to_string(),
                field: "pid",
            });
        };
        v.text
            .parse::<u32>()
            .map_err(|_| self.invalid("pid", v.text, "not a process id"))
    }
}

/// Keys whose values the kernel writes with `audit_log_untrustedstring` or as labels: bare
/// (unquoted) values of these are hex.
fn hex_escapable(key: &str) -> bool {
    matches!(
        key,
        "name"
            | "name2"
            | "target"
            | "srcname"
            | "comm"
            | "exe"
            | "profile"
            | "label"
            | "peer"
            | "peer_label"
            | "peer_profile"
            | "namespace"
            | "fstype"
            | "attribute"
            | "addr"
            | "peer_addr"
            | "path"
            | "interface"
            | "member"
            | "bus"
    )
}

fn decode_value(key: &str, v: RawValue<'_>) -> String {
    if !v.quoted && hex_escapable(key) {
        if let Some(bytes) = decode_hex(v.text) {
            return String::from_utf8_lossy(&bytes).into_owned();
        }
    }
    v.text.to_string()
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.is_empty() || text.len() % 2 != 0 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    text.as_bytes()
        .chunks(2)
        .map(|pair| {
            let s = std::str::from_utf8(pair).ok()?;
            u8::from_str_radix(s, 16).ok()
        })
        .collect()
}

/// Splits `key=value` pairs: values may be `"quoted"`, `'quoted'`, or `(parenthesised)`.
/// Words without `=` are skipped.
fn split_fields<'a>(
    kind: &str,
    text: &'a str,
) -> Result<Vec<(&'a str, RawValue<'a>)>, AuditParseError> {
    let mut pairs = Vec::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            return Ok(pairs);
        }
        let word_end = rest
            .find(|c: char| c.is_ascii_whitespace() || c == '=')
            .unwrap_or(rest.len());
        if !rest[word_end..].starts_with('=') {
            rest = &rest[word_end..];
            continue;
        }
        let key = &rest[..word_end];
        let after = &rest[word_end + 1..];
        let (value, consumed) = match after.chars().next() {
            Some(q @ ('"' | '\'')) => match after[1..].find(q) {
                Some(close) => (
                    RawValue {
                        text: &after[1..1 + close],
                        quoted: true,
                    },
                    close + 2,
                ),
                None => {
                    return Err(AuditParseError::Malformed {
                        kind: kind.to_string(),
                        reason: format!("unterminated quote in the value of `{key}`"),
                    })
                }
            },
            Some('(') => {
                let mut depth = 0usize;
                let mut end = after.len();
                for (i, c) in after.char_indices() {
                    match c {
                        '(' => depth += 1,
                        ')' => {
                            depth = depth.saturating_sub(1);
                            if depth == 0 {
                                end = i + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                // Anything glued after the closing parenthesis belongs to the value.
                let tail = after[end..]
                    .find(|c: char| c.is_ascii_whitespace())
                    .map_or(after.len(), |i| end + i);
                (
                    RawValue {
                        text: &after[..tail],
                        quoted: false,
                    },
                    tail,
                )
            }
            _ => {
                let mut end = after
                    .find(|c: char| c.is_ascii_whitespace())
                    .unwrap_or(after.len());
                // An AppArmor security context is printed bare with its mode after a space:
                // `subj=varmor-demo-web (enforce)`. A following `(word)` without `=` belongs
                // to the value.
                let next = after[end..].trim_start();
                if next.starts_with('(') {
                    if let Some(close) = next.find(')') {
                        if !next[..close].contains(['=', ' ']) {
                            end = after.len() - next.len() + close + 1;
                        }
                    }
                }
                (
                    RawValue {
                        text: &after[..end],
                        quoted: false,
                    },
                    end,
                )
            }
        };
        if !key.is_empty() {
            pairs.push((key, value));
        }
        rest = &after[consumed..];
    }
}

struct Stamp {
    secs: u64,
    millis: u32,
    serial: u64,
}

/// Parses `audit(<secs>.<frac>:<serial>)` and returns the stamp and the text after `):`.
fn parse_stamp<'a>(kind: &str, text: &'a str) -> Result<(Stamp, &'a str), AuditParseError> {
    let bad = |value: &str, reason: &str| AuditParseError::InvalidField {
        kind: kind.to_string(),
        field: "audit".into(),
        value: value.chars().take(64).collect(),
        reason: reason.to_string(),
    };
    let inner_start = "audit(".len();
    let Some(close) = text.find(')') else {
        return Err(bad(text, "the stamp has no closing parenthesis"));
    };
    let inner = text.get(inner_start..close).unwrap_or("");
    let Some((time, serial)) = inner.split_once(':') else {
        return Err(bad(inner, "expected <secs>.<millis>:<serial>"));
    };
    let (secs, frac) = time.split_once('.').unwrap_or((time, ""));
    let secs = secs
        .parse::<u64>()
        .map_err(|_| bad(inner, "the seconds are not a number"))?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(inner, "the fraction of a second is not a number"));
    }
    // Milliseconds from the first three fraction digits, padded: ".5" is 500 ms.
    let mut millis = 0u32;
    for i in 0..3 {
        let digit = frac.as_bytes().get(i).map_or(0, |b| u32::from(b - b'0'));
        millis = millis * 10 + digit;
    }
    let serial = serial
        .parse::<u64>()
        .map_err(|_| bad(inner, "the serial is not a number"))?;
    let rest = &text[close + 1..];
    let rest = rest.strip_prefix(':').unwrap_or(rest);
    Ok((
        Stamp {
            secs,
            millis,
            serial,
        },
        rest,
    ))
}

/// Parses a record body `audit(...): key=value ...` of a classified type; `Ok(None)` for an
/// AVC record that is not AppArmor's.
fn parse_body(
    class: Class,
    kind: &str,
    text: &str,
) -> Result<Option<AuditRecord>, AuditParseError> {
    let (stamp, rest) = parse_stamp(kind, text)?;
    if class == Class::Avc && !rest.contains("apparmor=") {
        return Ok(None);
    }
    let fields = Fields {
        kind,
        pairs: split_fields(kind, rest)?,
    };
    match class {
        Class::Seccomp => seccomp_record(&fields, stamp).map(Some),
        // An AVC without `apparmor=` is SELinux's.
        Class::Avc if fields.raw("apparmor").is_none() => Ok(None),
        Class::Avc | Class::AppArmorLegacy => apparmor_record(&fields, stamp).map(Some),
    }
}

fn seccomp_record(f: &Fields<'_>, stamp: Stamp) -> Result<AuditRecord, AuditParseError> {
    let pid = f.pid()?;
    let Some(code) = f.raw("code") else {
        return Err(AuditParseError::MissingField {
            kind: f.kind.to_string(),
            field: "code",
        });
    };
    let code_value = parse_hex_u32(code.text)
        .ok_or_else(|| f.invalid("code", code.text, "not a hexadecimal number"))?;
    let action = seccomp_action(code_value)
        .ok_or_else(|| f.invalid("code", code.text, "not a seccomp action"))?;
    let Some(nr) = f.raw("syscall") else {
        return Err(AuditParseError::MissingField {
            kind: f.kind.to_string(),
            field: "syscall",
        });
    };
    let nr_value = nr
        .text
        .parse::<i64>()
        .map_err(|_| f.invalid("syscall", nr.text, "not a syscall number"))?;
    let arch = match f.raw("arch") {
        Some(a) => Some(
            parse_hex_u32(a.text)
                .ok_or_else(|| f.invalid("arch", a.text, "not a hexadecimal audit architecture"))?,
        ),
        None => None,
    };
    let syscall = arch
        .and_then(|a| syscall_name(a, nr_value))
        .unwrap_or_else(|| nr_value.to_string());
    let event = json!({
        "auditID": format!("{}.{:03}:{}", stamp.secs, stamp.millis, stamp.serial),
        "epoch": stamp.secs,
        "subj": f.string_or_empty("subj"),
        "pid": u64::from(pid),
        "comm": f.string_or_empty("comm"),
        "exe": f.string_or_empty("exe"),
        "syscall": syscall,
    });
    Ok(AuditRecord {
        kind: AuditKind::Seccomp,
        action: action.to_string(),
        epoch_secs: stamp.secs,
        epoch_millis: stamp.millis,
        serial: stamp.serial,
        pid,
        profile: None,
        event,
    })
}

fn parse_hex_u32(text: &str) -> Option<u32> {
    let digits = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text);
    u32::from_str_radix(digits, 16).ok()
}

/// The violation action of a seccomp return code (`SECCOMP_RET_ACTION_FULL` part).
fn seccomp_action(code: u32) -> Option<&'static str> {
    match code & 0xffff_0000 {
        0x8000_0000 | 0x0000_0000 | 0x0003_0000 | 0x0005_0000 => Some("DENIED"), // KILL_PROCESS, KILL_THREAD, TRAP, ERRNO
        0x7fc0_0000 | 0x7ff0_0000 => Some("AUDIT"), // USER_NOTIF, TRACE
        0x7ffc_0000 => Some("AUDIT|ALLOWED"),       // LOG
        0x7fff_0000 => Some("ALLOWED"),             // ALLOW
        _ => None,
    }
}

/// libapparmor's `aa_record_event_type` of an `apparmor=` value.
fn apparmor_event_type(value: &str) -> u32 {
    match value {
        "ERROR" => 1,
        "AUDIT" => 2,
        "ALLOWED" => 3,
        "DENIED" | "KILLED" => 4,
        "HINT" => 5,
        "STATUS" => 6,
        _ => 0,
    }
}

/// The legacy `APPARMOR_*` record types carry the decision in the type.
fn legacy_action(kind: &str) -> Option<&'static str> {
    let n = kind.parse::<u16>().ok();
    Some(match (kind, n) {
        ("APPARMOR_AUDIT", _) | (_, Some(1501)) => "AUDIT",
        ("APPARMOR_ALLOWED", _) | (_, Some(1502)) => "ALLOWED",
        ("APPARMOR_DENIED", _) | (_, Some(1503)) => "DENIED",
        ("APPARMOR_HINT", _) | (_, Some(1504)) => "HINT",
        ("APPARMOR_STATUS", _) | (_, Some(1505)) => "STATUS",
        ("APPARMOR_ERROR", _) | (_, Some(1506)) => "ERROR",
        ("APPARMOR_KILL", _) | (_, Some(1507)) => "KILLED",
        _ => return None,
    })
}

/// The protocol name libapparmor writes for an IP protocol number.
fn protocol_name(text: &str) -> String {
    let name = match text.parse::<u32>() {
        Ok(0) => "ip",
        Ok(1) => "icmp",
        Ok(2) => "igmp",
        Ok(4) => "ipencap",
        Ok(6) => "tcp",
        Ok(17) => "udp",
        Ok(41) => "ipv6",
        Ok(47) => "gre",
        Ok(50) => "esp",
        Ok(51) => "ah",
        Ok(58) => "ipv6-icmp",
        Ok(132) => "sctp",
        Ok(136) => "udplite",
        Ok(255) => "raw",
        _ => return text.to_string(),
    };
    name.to_string()
}

fn apparmor_record(f: &Fields<'_>, stamp: Stamp) -> Result<AuditRecord, AuditParseError> {
    let action = match f.raw("apparmor") {
        Some(v) => v.text.to_string(),
        None => legacy_action(f.kind).unwrap_or("AUDIT").to_string(),
    };
    if action.is_empty() {
        return Err(f.invalid("apparmor", "", "empty decision"));
    }
    let pid = f.pid()?;
    let profile = f.string("profile").or_else(|| f.string("label"));
    let peer_profile = f.string("peer_profile").or_else(|| f.string("peer_label"));
    // The kernel writes the capability's name as `capname`; libapparmor reports it as `name`.
    let name = f.string("name").or_else(|| f.string("capname"));
    // `target` (exec/link/rename/change_profile target) is libapparmor's `name2`.
    let name2 = f.string("name2").or_else(|| f.string("target"));
    let requested = f
        .string("requested_mask")
        .or_else(|| f.string("requested"))
        .or_else(|| f.string("mask"));
    let denied = f.string("denied_mask").or_else(|| f.string("denied"));
    let error_code = match f.raw("error") {
        Some(v) => {
            let n = v
                .text
                .parse::<i64>()
                .map_err(|_| f.invalid("error", v.text, "not an errno number"))?;
            i32::try_from(n.unsigned_abs())
                .map_err(|_| f.invalid("error", v.text, "errno out of range"))?
        }
        None => 0,
    };

    let mut event = Map::new();
    let mut put = |key: &str, value: Value| {
        event.insert(key.to_string(), value);
    };
    put("version", json!(1));
    put("event", json!(apparmor_event_type(&action)));
    put("pid", json!(u64::from(pid)));
    put("peerPID", json!(f.unsigned_or_zero("peer_pid")?));
    put("task", json!(f.unsigned_or_zero("task")?));
    put("magicToken", json!(f.unsigned_or_zero("magic_token")?));
    put("epoch", json!(stamp.secs as i64));
    put("auditSubID", json!(stamp.serial as u32));
    put("bitMask", json!(0));
    put(
        "auditID",
        json!(format!(
            "{}.{:03}:{}",
            stamp.secs, stamp.millis, stamp.serial
        )),
    );
    put("operation", json!(f.string_or_empty("operation")));
    put("deniedMask", json!(denied.unwrap_or_default()));
    put("requestedMask", json!(requested.unwrap_or_default()));
    put("fsuid", json!(f.unsigned_or_zero("fsuid")?));
    put("ouid", json!(f.unsigned_or_zero("ouid")?));
    put("profile", json!(profile.clone().unwrap_or_default()));
    put("peerProfile", json!(peer_profile.unwrap_or_default()));
    put("comm", json!(f.string_or_empty("comm")));
    put("name", json!(name.unwrap_or_default()));
    put("name2", json!(name2.unwrap_or_default()));
    put("namespace", json!(f.string_or_empty("namespace")));
    put("attribute", json!(f.string_or_empty("attribute")));
    put("parent", json!(f.unsigned_or_zero("parent")?));
    put("info", json!(f.string_or_empty("info")));
    put("peerInfo", json!(f.string_or_empty("peer_info")));
    put("errorCode", json!(error_code));
    put("activeHat", json!(f.string_or_empty("hat")));
    put("netFamily", json!(f.string_or_empty("family")));
    put(
        "netProtocol",
        json!(f
            .raw("protocol")
            .map(|v| protocol_name(v.text))
            .unwrap_or_default()),
    );
    put("netSockType", json!(f.string_or_empty("sock_type")));
    put("netLocalAddr", json!(f.string_or_empty("laddr")));
    put("netLocalPort", json!(f.unsigned_or_zero("lport")?));
    put("netForeignAddr", json!(f.string_or_empty("faddr")));
    put("netForeignPort", json!(f.unsigned_or_zero("fport")?));
    put("dbusBus", json!(f.string_or_empty("bus")));
    put("dbusPath", json!(f.string_or_empty("path")));
    put("dbusInterface", json!(f.string_or_empty("interface")));
    put("dbusMember", json!(f.string_or_empty("member")));
    put("signal", json!(f.string_or_empty("signal")));
    put("peer", json!(f.string_or_empty("peer")));
    put("fsType", json!(f.string_or_empty("fstype")));
    put("flags", json!(f.string_or_empty("flags")));
    put("srcName", json!(f.string_or_empty("srcname")));

    Ok(AuditRecord {
        kind: AuditKind::AppArmor,
        action,
        epoch_secs: stamp.secs,
        epoch_millis: stamp.millis,
        serial: stamp.serial,
        pid,
        profile,
        event: Value::Object(event),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selinux_avc_and_user_avc_are_not_ours() {
        let selinux = r#"type=AVC msg=audit(1700000000.123:456): avc:  denied  { read } for  pid=1 comm="x" scontext=a tcontext=b tclass=file permissive=0"#;
        assert_eq!(parse_line(selinux), Ok(None));
        let user = r#"type=USER_AVC msg=audit(1700000000.123:456): pid=1 uid=0 msg='apparmor="DENIED" operation="dbus_method_call" bus="system"'"#;
        assert_eq!(parse_line(user), Ok(None));
        assert_eq!(parse_line("6,1,2,-;eth0: link up"), Ok(None));
        assert_eq!(parse_line(""), Ok(None));
    }

    #[test]
    fn stamp_fraction_is_milliseconds() {
        let r = parse_line("audit: type=1326 audit(1700000000.5:9): pid=3 syscall=39 arch=c000003e code=0x7ffc0000")
            .unwrap()
            .unwrap();
        assert_eq!(
            (r.epoch_secs, r.epoch_millis, r.serial),
            (1_700_000_000, 500, 9)
        );
        assert_eq!(r.audit_id(), "1700000000.500:9");
    }

    #[test]
    fn hex_only_for_bare_escapable_values() {
        let r = parse_line(r#"type=1400 audit(1.000:1): apparmor="DENIED" operation="open" profile=6120622F63 name="ABCD" comm=6120 pid=1 signal=kill"#)
            .unwrap()
            .unwrap();
        assert_eq!(r.profile.as_deref(), Some("a b/c"));
        assert_eq!(r.event["name"], "ABCD");
        assert_eq!(r.event["comm"], "a ");
        assert_eq!(r.event["signal"], "kill");
    }

    #[test]
    fn errors_name_the_field() {
        let err =
            parse_line("type=1326 audit(1.0:1): pid=abc code=0x7ffc0000 syscall=1").unwrap_err();
        assert!(err.to_string().contains("`pid`"), "{err}");
        let err = parse_line("type=1326 audit(1.0:1): pid=1 syscall=1").unwrap_err();
        assert_eq!(
            err,
            AuditParseError::MissingField {
                kind: "1326".into(),
                field: "code"
            }
        );
        let err = parse_line("type=SECCOMP msg=audit(x.0:1): pid=1").unwrap_err();
        assert!(
            matches!(err, AuditParseError::InvalidField { ref field, .. } if field == "audit"),
            "{err}"
        );
        let err = parse_line("type=SECCOMP pid=1").unwrap_err();
        assert!(matches!(err, AuditParseError::Malformed { .. }), "{err}");
    }

    #[test]
    fn apparmor_context_with_mode_is_one_value() {
        let r = parse_line("type=1326 audit(1.0:1): subj=varmor-demo-web (enforce) pid=7 comm=\"a\" exe=(null) arch=c000003e syscall=39 code=0x7ffc0000")
            .unwrap()
            .unwrap();
        assert_eq!(r.event["subj"], "varmor-demo-web (enforce)");
        assert_eq!(r.event["exe"], "(null)");
        assert_eq!(r.pid, 7);
    }

    #[test]
    fn to_event_carries_the_record() {
        let r = parse_line(r#"type=AVC msg=audit(1700000000.250:3): apparmor="DENIED" operation="open" profile="p//c" name="/x" pid=5 comm="c""#)
            .unwrap()
            .unwrap();
        let e = r.to_event();
        assert_eq!(
            e.time,
            Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 250_000_000
            })
        );
        assert_eq!(
            (e.pid, e.enforcer, e.action.as_str()),
            (5, v1::Enforcer::Apparmor as i32, "DENIED")
        );
        assert_eq!(e.profile_name, "p//c");
        let back: Value = serde_json::from_str(&e.event_json).unwrap();
        assert_eq!(back, r.event);
    }

    #[test]
    fn netlink_body() {
        let body = b"audit(1700000001.042:77): auid=4294967295 uid=0 gid=0 ses=4294967295 subj=unconfined pid=42 comm=\"sh\" exe=\"/bin/busybox\" sig=0 arch=c000003e syscall=39 compat=0 ip=0x7f code=0x7ffc0000\0";
        let r = parse_netlink(1326, body).unwrap().unwrap();
        assert_eq!(r.pid, 42);
        assert_eq!(r.event["syscall"], "getpid");
        assert_eq!(r.event["subj"], "unconfined");
        assert_eq!(
            parse_netlink(1300, b"audit(1.0:1): arch=c000003e").unwrap(),
            None
        );
        assert!(parse_netlink(1326, b"garbage").is_err());
    }
}
