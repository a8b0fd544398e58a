//! `violations.log`: one JSON object per line in vArmor's format, with size-based rotation.
//!
//! # Line format
//!
//! Every violation is one line with exactly these keys, in this order (vArmor writes them with
//! zerolog; reference §8.1):
//!
//! ```text
//! {"level":"warn","metadata":{..,"varmorNamespace":".."},"nodeName":"..","podUID":"..",
//!  "podName":"..","podNamespace":"..","containerID":"..","containerName":"..","image":"..",
//!  "pid":0,"mntNsID":0,"eventTimestamp":0,"enforcer":"BPF","action":"DENIED",
//!  "profileName":"..","policyKind":"..","policyName":"..","policyNamespace":"..",
//!  "event":{..},"time":"2025-01-02T03:04:05Z","message":"violation event"}
//! ```
//!
//! * `metadata` is the configured extra object with `varmorNamespace` set (it wins over an
//!   extra key of the same name), keys sorted as Go's `encoding/json` sorts map keys.
//! * `eventTimestamp` is the event's time in Unix seconds (the time of writing if it has none).
//! * `enforcer` is `AppArmor`, `BPF` or `Seccomp` (empty when unspecified).
//! * `event` is `event_json` embedded as JSON. An empty `event_json` becomes `{}`. When it is
//!   not valid JSON it is written as a JSON string instead and counted
//!   ([`ViolationLog::malformed`]), so no line is ever invalid.
//! * `time` is RFC 3339 in UTC with second precision, when the line was written.
//!
//! When events were lost before they reached the file (the pipeline's queue was full), a
//! marker line reports it once the file is written again:
//! `{"level":"warn","metadata":{..},"nodeName":"..","sink":"violations.log","dropped":12,
//! "time":"..","message":"events dropped"}`.
//!
//! # Rotation
//!
//! Before a line would make the file larger than `max_size` bytes (10 MiB by default, as
//! vArmor's lumberjack `MaxSize: 10`), the file is renamed to `violations.log.1`, an existing
//! `.1` to `.2` and so on; the oldest beyond `max_backups` (3 by default) is overwritten, so
//! exactly `max_backups` numbered backups exist after enough rotations. (lumberjack names its
//! backups with a timestamp instead; numbered names keep the set bounded and predictable for
//! log shippers that follow `violations.log*`.) A single line longer than `max_size` is written
//! to a fresh file on its own rather than refused. Backups numbered above `max_backups` (left
//! by an earlier, larger setting) are removed when the log opens.
//!
//! External rotation (logrotate renaming or removing the file, or truncating it in place) is
//! noticed after each [`ViolationLog::flush`]: the file at the path is reopened when it is not
//! the one being written any more.
//!
//! Writes go through a 64 KiB buffer; the caller flushes at the end of each batch.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::de::IgnoredAny;
use serde_json::{Map, Value as Json};
use varmor_proto::v1;

use crate::violations::json;

/// Where vArmor (and we) write violations on a node.
pub const DEFAULT_PATH: &str = "/var/log/varmor/violations.log";
/// Rotate before the file would exceed this many bytes (lumberjack's `MaxSize: 10`, MiB).
pub const DEFAULT_MAX_SIZE: u64 = 10 * 1024 * 1024;
/// Numbered backups kept next to the file.
pub const DEFAULT_MAX_BACKUPS: usize = 3;
/// The sink's name in counters and marker lines.
pub const SINK_NAME: &str = "violations.log";

const BUFFER_SIZE: usize = 64 * 1024;
const FILE_MODE: u32 = 0o600;

/// Errors of the violations log. Each names the file and what failed.
#[derive(Debug, thiserror::Error)]
pub enum LogFileError {
    /// The configuration cannot work.
    #[error("invalid violations log configuration: {0}")]
    Config(String),
    /// The extra metadata is not a JSON object.
    #[error("the audit event metadata ({what}) is not a JSON object: {reason}")]
    Metadata {
        /// Where the metadata came from (a flag or variable name).
        what: String,
        /// Why it was refused.
        reason: String,
    },
    /// The directory of the log could not be created.
    #[error("cannot create the directory {} of the violations log: {source}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The log could not be opened.
    #[error("cannot open the violations log {}: {source}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A write or flush failed.
    #[error("cannot write the violations log {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Rotation failed (the file keeps being written unrotated).
    #[error("cannot rotate the violations log {} to {}: {source}", from.display(), to.display())]
    Rotate {
        /// The file being moved.
        from: PathBuf,
        /// Where to.
        to: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// How and where the violations log is written.
#[derive(Debug, Clone)]
pub struct ViolationLogConfig {
    /// The file; its directory is created. Default [`DEFAULT_PATH`].
    pub path: PathBuf,
    /// Rotate before the file would exceed this many bytes. Default [`DEFAULT_MAX_SIZE`].
    pub max_size: u64,
    /// Numbered backups to keep (`<path>.1` is the newest). Default [`DEFAULT_MAX_BACKUPS`];
    /// 0 keeps none (the file is removed and started again).
    pub max_backups: usize,
    /// This node's name, for marker lines (violation lines take it from the event).
    pub node_name: String,
    /// The namespace the agent runs in, written as `metadata.varmorNamespace`.
    pub varmor_namespace: String,
    /// Extra keys of `metadata` (vArmor's Helm `auditEventMetadata`), see [`parse_metadata`].
    pub metadata: Map<String, Json>,
}

impl ViolationLogConfig {
    /// The defaults: [`DEFAULT_PATH`], 10 MiB, 3 backups, no extra metadata.
    pub fn new(node_name: impl Into<String>, varmor_namespace: impl Into<String>) -> Self {
        ViolationLogConfig {
            path: PathBuf::from(DEFAULT_PATH),
            max_size: DEFAULT_MAX_SIZE,
            max_backups: DEFAULT_MAX_BACKUPS,
            node_name: node_name.into(),
            varmor_namespace: varmor_namespace.into(),
            metadata: Map::new(),
        }
    }
}

/// Parses the extra metadata (vArmor's `AUDIT_EVENT_METADATA`): a JSON object; empty text is
/// no metadata. `what` names the source in the error (e.g. `"--audit-event-metadata"`).
pub fn parse_metadata(what: &str, text: &str) -> Result<Map<String, Json>, LogFileError> {
    if text.trim().is_empty() {
        return Ok(Map::new());
    }
    match serde_json::from_str::<Json>(text) {
        Ok(Json::Object(map)) => Ok(map),
        Ok(other) => Err(LogFileError::Metadata {
            what: what.to_string(),
            reason: format!("found {}", json_kind(&other)),
        }),
        Err(e) => Err(LogFileError::Metadata {
            what: what.to_string(),
            reason: e.to_string(),
        }),
    }
}

fn json_kind(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

/// vArmor's name of an enforcer in the log.
pub fn enforcer_name(enforcer: i32) -> &'static str {
    match v1::Enforcer::try_from(enforcer) {
        Ok(v1::Enforcer::Apparmor) => "AppArmor",
        Ok(v1::Enforcer::Bpf) => "BPF",
        Ok(v1::Enforcer::Seccomp) => "Seccomp",
        _ => "",
    }
}

#[derive(Debug)]
struct OpenFile {
    out: BufWriter<File>,
    dev: u64,
    ino: u64,
}

/// The writer of `violations.log`. Not thread-safe by itself: one task owns it.
#[derive(Debug)]
pub struct ViolationLog {
    config: ViolationLogConfig,
    /// `"metadata":{...}` serialized once.
    metadata: Vec<u8>,
    file: Option<OpenFile>,
    /// Bytes in the current file, including those still buffered.
    size: u64,
    line: Vec<u8>,
    clock: Rfc3339Clock,
    malformed: u64,
}

impl ViolationLog {
    /// Opens (creating the directory and the file) the log described by `config`.
    pub fn open(config: ViolationLogConfig) -> Result<Self, LogFileError> {
        if config.max_size == 0 {
            return Err(LogFileError::Config(
                "max_size must be at least 1 byte".into(),
            ));
        }
        if config.path.file_name().is_none() {
            return Err(LogFileError::Config(format!(
                "path {} has no file name",
                config.path.display()
            )));
        }
        // Sorted keys, as Go marshals a map; varmorNamespace always set.
        let mut sorted: std::collections::BTreeMap<&str, &Json> = config
            .metadata
            .iter()
            .map(|(k, v)| (k.as_str(), v))
            .collect();
        let ns = Json::String(config.varmor_namespace.clone());
        sorted.insert("varmorNamespace", &ns);
        let mut metadata = b"\"metadata\":".to_vec();
        serde_json::to_writer(&mut metadata, &sorted).map_err(|e| LogFileError::Metadata {
            what: "metadata".into(),
            reason: e.to_string(),
        })?;
        let mut log = ViolationLog {
            config,
            metadata,
            file: None,
            size: 0,
            line: Vec::with_capacity(1024),
            clock: Rfc3339Clock::default(),
            malformed: 0,
        };
        log.prune_backups();
        log.open_file()?;
        Ok(log)
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.config.path
    }

    /// Events so far whose `event_json` was not valid JSON (written as a string).
    pub fn malformed(&self) -> u64 {
        self.malformed
    }

    /// Buffers one violation line (see the module docs); rotates first when the line would
    /// make the file exceed `max_size`.
    pub fn write_event(&mut self, event: &v1::Event) -> Result<(), LogFileError> {
        let mut line = std::mem::take(&mut self.line);
        line.clear();
        if !self.format_event(event, &mut line) {
            self.malformed += 1;
        }
        let result = self.write_line(&line);
        self.line = line;
        result
    }

    /// Buffers the marker line that reports `count` events lost by sink `sink`.
    pub fn write_dropped(&mut self, sink: &str, count: u64) -> Result<(), LogFileError> {
        let mut line = std::mem::take(&mut self.line);
        line.clear();
        line.extend_from_slice(b"{\"level\":\"warn\",");
        line.extend_from_slice(&self.metadata);
        line.extend_from_slice(b",\"nodeName\":");
        put_str(&mut line, &self.config.node_name);
        line.extend_from_slice(b",\"sink\":");
        put_str(&mut line, sink);
        line.extend_from_slice(b",\"dropped\":");
        put_u64(&mut line, count);
        line.extend_from_slice(b",\"time\":\"");
        line.extend_from_slice(self.clock.now().1.as_bytes());
        line.extend_from_slice(b"\",\"message\":\"events dropped\"}\n");
        let result = self.write_line(&line);
        self.line = line;
        result
    }

    /// Writes what is buffered to the file, then reopens the path if the file was removed,
    /// renamed or replaced meanwhile (external rotation).
    pub fn flush(&mut self) -> Result<(), LogFileError> {
        let Some(f) = self.file.as_mut() else {
            return Ok(());
        };
        if let Err(source) = f.out.flush() {
            self.file = None;
            return Err(self.write_error(source));
        }
        let ours = f.out.get_ref().metadata();
        let current = fs::metadata(&self.config.path);
        match (ours, current) {
            (Ok(ours), Ok(current))
                if ours.dev() == current.dev() && ours.ino() == current.ino() =>
            {
                // Truncated in place (copytruncate): count from what is there now.
                self.size = ours.len();
                Ok(())
            }
            _ => {
                tracing::info!(
                    path = %self.config.path.display(),
                    "the violations log was moved or removed; reopening it"
                );
                self.file = None;
                self.open_file()
            }
        }
    }

    fn write_line(&mut self, line: &[u8]) -> Result<(), LogFileError> {
        if self.file.is_none() {
            self.open_file()?;
        }
        let len = line.len() as u64;
        if self.size > 0 && self.size.saturating_add(len) > self.config.max_size {
            self.rotate()?;
        }
        let f = self.file.as_mut().expect("opened above");
        if let Err(source) = f.out.write_all(line) {
            self.file = None;
            return Err(self.write_error(source));
        }
        self.size += len;
        Ok(())
    }

    fn write_error(&self, source: io::Error) -> LogFileError {
        LogFileError::Write {
            path: self.config.path.clone(),
            source,
        }
    }

    fn open_file(&mut self) -> Result<(), LogFileError> {
        let path = &self.config.path;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(|source| LogFileError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let open_err = |source| LogFileError::Open {
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(FILE_MODE)
            .open(path)
            .map_err(open_err)?;
        let meta = file.metadata().map_err(open_err)?;
        self.size = meta.len();
        self.file = Some(OpenFile {
            out: BufWriter::with_capacity(BUFFER_SIZE, file),
            dev: meta.dev(),
            ino: meta.ino(),
        });
        Ok(())
    }

    fn backup(&self, n: usize) -> PathBuf {
        let mut name = OsString::from(self.config.path.as_os_str());
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    fn rotate(&mut self) -> Result<(), LogFileError> {
        if let Some(mut f) = self.file.take() {
            if let Err(source) = f.out.flush() {
                return Err(self.write_error(source));
            }
            // Only rotate the file we were writing; if someone replaced it, start on theirs.
            let still_ours =
                fs::metadata(&self.config.path).is_ok_and(|m| m.dev() == f.dev && m.ino() == f.ino);
            if !still_ours {
                return self.open_file();
            }
        }
        let path = self.config.path.clone();
        if self.config.max_backups == 0 {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    self.open_file()?;
                    return Err(LogFileError::Rotate {
                        from: path,
                        to: PathBuf::from("(removed)"),
                        source,
                    });
                }
            }
            return self.open_file();
        }
        // The oldest goes first, so that no rename below replaces a file: ext4 (auto_da_alloc)
        // writes out the renamed file's data in the renaming thread when a rename replaces one,
        // which stalled this writer on every rotation.
        let oldest = self.backup(self.config.max_backups);
        match fs::remove_file(&oldest) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                self.open_file()?;
                return Err(LogFileError::Rotate {
                    from: oldest,
                    to: PathBuf::from("(removed)"),
                    source,
                });
            }
        }
        for n in (1..self.config.max_backups).rev() {
            let (from, to) = (self.backup(n), self.backup(n + 1));
            match fs::rename(&from, &to) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    self.open_file()?;
                    return Err(LogFileError::Rotate { from, to, source });
                }
            }
        }
        let first = self.backup(1);
        if let Err(source) = fs::rename(&path, &first) {
            if source.kind() != io::ErrorKind::NotFound {
                self.open_file()?;
                return Err(LogFileError::Rotate {
                    from: path,
                    to: first,
                    source,
                });
            }
        }
        self.open_file()
    }

    /// Removes numbered backups above `max_backups` (from an earlier, larger setting).
    fn prune_backups(&self) {
        let path = &self.config.path;
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
            return;
        };
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        let Ok(entries) = fs::read_dir(dir) else {
            return; // not there yet: nothing to prune
        };
        let prefix = format!("{}.", name.to_string_lossy());
        for entry in entries.flatten() {
            let file = entry.file_name();
            let Some(n) = file
                .to_str()
                .and_then(|f| f.strip_prefix(&prefix))
                .and_then(|n| n.parse::<usize>().ok())
            else {
                continue;
            };
            if n > self.config.max_backups {
                let extra = entry.path();
                if let Err(e) = fs::remove_file(&extra) {
                    tracing::warn!(path = %extra.display(), error = %e, "cannot remove an old backup of the violations log");
                }
            }
        }
    }

    /// Appends the line of `e` to `out`; false when `event_json` was not valid JSON.
    fn format_event(&mut self, e: &v1::Event, out: &mut Vec<u8>) -> bool {
        let (now_secs, now_text) = self.clock.now();
        out.extend_from_slice(b"{\"level\":\"warn\",");
        out.extend_from_slice(&self.metadata);
        for (key, value) in [
            (&b",\"nodeName\":"[..], &e.node_name),
            (b",\"podUID\":", &e.pod_uid),
            (b",\"podName\":", &e.pod_name),
            (b",\"podNamespace\":", &e.pod_namespace),
            (b",\"containerID\":", &e.container_id),
            (b",\"containerName\":", &e.container_name),
            (b",\"image\":", &e.image),
        ] {
            out.extend_from_slice(key);
            put_str(out, value);
        }
        out.extend_from_slice(b",\"pid\":");
        put_u64(out, e.pid.into());
        out.extend_from_slice(b",\"mntNsID\":");
        put_u64(out, e.mnt_ns_id.into());
        out.extend_from_slice(b",\"eventTimestamp\":");
        let secs = e.time.as_ref().map_or(now_secs, |t| t.seconds);
        put_u64(out, u64::try_from(secs).unwrap_or(0));
        out.extend_from_slice(b",\"enforcer\":\"");
        out.extend_from_slice(enforcer_name(e.enforcer).as_bytes());
        out.push(b'"');
        for (key, value) in [
            (&b",\"action\":"[..], &e.action),
            (b",\"profileName\":", &e.profile_name),
            (b",\"policyKind\":", &e.policy_kind),
            (b",\"policyName\":", &e.policy_name),
            (b",\"policyNamespace\":", &e.policy_namespace),
        ] {
            out.extend_from_slice(key);
            put_str(out, value);
        }
        out.extend_from_slice(b",\"event\":");
        let valid = put_event(out, &e.event_json);
        out.extend_from_slice(b",\"time\":\"");
        out.extend_from_slice(now_text.as_bytes());
        out.extend_from_slice(b"\",\"message\":\"violation event\"}\n");
        valid
    }
}

impl Drop for ViolationLog {
    fn drop(&mut self) {
        if let Some(f) = self.file.as_mut() {
            if let Err(e) = f.out.flush() {
                tracing::warn!(path = %self.config.path.display(), error = %e, "cannot flush the violations log");
            }
        }
    }
}

/// Appends the `event` value: the JSON as it is (compacted if it spans lines), `{}` when
/// empty, or a JSON string when it is not valid JSON (then returns false).
fn put_event(out: &mut Vec<u8>, json: &str) -> bool {
    let text = json.trim();
    if text.is_empty() {
        out.extend_from_slice(b"{}");
        return true;
    }
    // Validate without building a tree (the fast subset first); the common case is then a
    // plain copy.
    if json::parse(text, &mut json::Validate).is_err()
        && serde_json::from_str::<IgnoredAny>(text).is_err()
    {
        put_str(out, json);
        return false;
    }
    if text.bytes().any(|b| b == b'\n' || b == b'\r') {
        // Line breaks outside strings are whitespace; they must not split the record.
        match serde_json::from_str::<Json>(text)
            .ok()
            .and_then(|v| serde_json::to_vec(&v).ok())
        {
            Some(compact) => out.extend_from_slice(&compact),
            None => {
                put_str(out, json);
                return false;
            }
        }
    } else {
        out.extend_from_slice(text.as_bytes());
    }
    true
}

/// Per byte, how [`put_str`] writes it: 0 as it is, else the character after the backslash
/// (`u` for `\u00XX`).
const ESCAPE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        t[b] = b'u';
        b += 1;
    }
    t[0x08] = b'b';
    t[0x0c] = b'f';
    t[b'\n' as usize] = b'n';
    t[b'\r' as usize] = b'r';
    t[b'\t' as usize] = b't';
    t[b'"' as usize] = b'"';
    t[b'\\' as usize] = b'\\';
    t
};

/// Appends `s` as a JSON string (the escapes of Go's and serde's encoders for `"`, `\` and
/// control characters).
pub(crate) fn put_str(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape = ESCAPE[usize::from(b)];
        if escape == 0 {
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        if escape == b'u' {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]);
        } else {
            out.extend_from_slice(&[b'\\', escape]);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Appends `n` in decimal.
pub(crate) fn put_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// The current time as RFC 3339 text, formatted once per second.
#[derive(Debug, Default)]
struct Rfc3339Clock {
    secs: i64,
    text: String,
}

impl Rfc3339Clock {
    fn now(&mut self) -> (i64, &str) {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        if self.text.is_empty() || secs != self.secs {
            self.secs = secs;
            self.text = rfc3339_utc(secs);
        }
        (self.secs, &self.text)
    }
}

/// `secs` since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn rfc3339_utc(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_matches_known_instants() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(1_735_787_045), "2025-01-02T03:04:05Z");
        assert_eq!(rfc3339_utc(4_102_444_799), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn strings_escape_like_json_encoders() {
        let every_ascii: String = (0u8..0x80).map(char::from).collect();
        for s in [
            "plain",
            "q\"b\\s",
            "tab\tnl\nbell\u{7}",
            "ünï\u{2028}𝄞\u{7f}",
            "",
            &every_ascii,
        ] {
            let mut out = Vec::new();
            put_str(&mut out, s);
            assert_eq!(
                String::from_utf8(out.clone()).unwrap(),
                serde_json::to_string(s).unwrap(),
                "{s:?}"
            );
            assert_eq!(serde_json::from_slice::<String>(&out).unwrap(), s);
        }
        let mut out = Vec::new();
        for n in [0, 7, 10, 4_026_531_840, u64::MAX] {
            out.clear();
            put_u64(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
    }

    #[test]
    fn event_json_is_embedded_compacted_or_quoted() {
        let cases = [
            (r#"{"a":1}"#, r#"{"a":1}"#, true),
            ("", "{}", true),
            ("{\n \"a\": [1,\r\n 2]\n}", r#"{"a":[1,2]}"#, true),
            ("not json", r#""not json""#, false),
            (r#"{"a":1} trailing"#, r#""{\"a\":1} trailing""#, false),
        ];
        for (input, want, valid) in cases {
            let mut out = Vec::new();
            assert_eq!(put_event(&mut out, input), valid, "{input:?}");
            assert_eq!(String::from_utf8(out).unwrap(), want, "{input:?}");
        }
    }

    /// `put_event` as it was before the fast path: `serde_json` only.
    fn put_event_serde(out: &mut Vec<u8>, json: &str) -> bool {
        let text = json.trim();
        if text.is_empty() {
            out.extend_from_slice(b"{}");
            return true;
        }
        if serde_json::from_str::<IgnoredAny>(text).is_err() {
            put_str(out, json);
            return false;
        }
        if text.bytes().any(|b| b == b'\n' || b == b'\r') {
            match serde_json::from_str::<Json>(text)
                .ok()
                .and_then(|v| serde_json::to_vec(&v).ok())
            {
                Some(compact) => out.extend_from_slice(&compact),
                None => {
                    put_str(out, json);
                    return false;
                }
            }
        } else {
            out.extend_from_slice(text.as_bytes());
        }
        true
    }

    #[test]
    fn event_json_is_embedded_as_serde_json_would() {
        let (mut fast, mut general) = (Vec::new(), Vec::new());
        for text in json::tests::corpus() {
            fast.clear();
            general.clear();
            assert_eq!(
                put_event(&mut fast, &text),
                put_event_serde(&mut general, &text),
                "{text:?}"
            );
            assert_eq!(fast, general, "{text:?}");
        }
    }

    #[test]
    fn metadata_must_be_an_object() {
        assert!(parse_metadata("m", "").unwrap().is_empty());
        assert_eq!(
            parse_metadata("m", r#"{"cluster":"prod"}"#).unwrap()["cluster"],
            "prod"
        );
        let e = parse_metadata("AUDIT_EVENT_METADATA", "[1]").unwrap_err();
        assert_eq!(
            e.to_string(),
            "the audit event metadata (AUDIT_EVENT_METADATA) is not a JSON object: found an array"
        );
        assert!(parse_metadata("m", "{").is_err());
    }
}
