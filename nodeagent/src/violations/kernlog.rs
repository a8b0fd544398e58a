//! Reading AppArmor and Seccomp audit records from the kernel as they happen.
//!
//! [`open`] picks the first source that works, in this order:
//!
//! 1. the audit netlink multicast group `AUDIT_NLGRP_READLOG`: every record, whether or not
//!    auditd runs, without printk rate limits. Needs `CAP_AUDIT_READ`, and the agent must be in
//!    the host's network namespace (the kernel multicasts only there);
//! 2. tailing `/var/log/audit/audit.log` (auditd's file), following appends, rotation (the
//!    path names a new file) and truncation;
//! 3. `/dev/kmsg` from its end: the kernel prints audit records there only while no auditd is
//!    registered, and rate-limits them. When the ring buffer overwrote records before we read
//!    them (`EPIPE`), the gap in sequence numbers is counted as lost. Audit-looking lines that
//!    user space wrote to `/dev/kmsg` (facility other than the kernel's) are ignored and
//!    counted ([`AuditCounters::forged`]).
//!
//! [`SourceInfo`] says which source was chosen and why the earlier ones were passed over.
//! After the choice the source keeps going: a failing socket or file is reopened after a
//! jittered, growing delay (never a busy loop). Records flow through a bounded channel; when
//! the consumer is slow the reader waits, so the kernel side (socket buffer, ring buffer) is
//! where records are lost, and those losses are counted ([`AuditCounters::lost`]).
//!
//! Paths are configurable ([`KernLogConfig`]) so tests point the file sources at temporary
//! files; a regular file given as `kmsg` is tailed like a log with one kmsg record per line.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use netlink_sys::{protocols::NETLINK_AUDIT, AsyncSocket, AsyncSocketExt, TokioSocket};
use tokio::net::unix::pipe;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::audit::{parse_line_all, parse_netlink, AuditRecord};
use crate::backoff::Backoff;
use crate::config::BackoffConfig;

/// auditd's log file.
pub const DEFAULT_AUDIT_LOG: &str = "/var/log/audit/audit.log";
/// The kernel log device.
pub const DEFAULT_KMSG: &str = "/dev/kmsg";
/// The audit netlink multicast group that receives a copy of every record (linux/audit.h).
pub const AUDIT_NLGRP_READLOG: u32 = 1;

/// The longest line kept while waiting for its end; longer ones are dropped and counted as
/// parse errors (kernel audit records are below 9 KiB).
const MAX_LINE: usize = 1 << 20;
/// Read buffer for netlink datagrams and kmsg records (a kmsg read must fit one record).
const READ_BUFFER: usize = 1 << 16;

/// Which sources to try and how.
#[derive(Debug, Clone)]
pub struct KernLogConfig {
    /// Try the audit netlink multicast group first.
    pub netlink: bool,
    /// auditd's log to tail; `None` skips this source.
    pub audit_log: Option<PathBuf>,
    /// The kernel log device (or a regular file in kmsg format, for tests); `None` skips it.
    pub kmsg: Option<PathBuf>,
    /// Records buffered between the reader and the consumer.
    pub capacity: usize,
    /// How often a tailed file is checked for new lines, rotation and truncation.
    pub poll_interval: Duration,
    /// Delays between attempts to reopen a source that failed.
    pub backoff: BackoffConfig,
}

impl Default for KernLogConfig {
    fn default() -> Self {
        KernLogConfig {
            netlink: true,
            audit_log: Some(PathBuf::from(DEFAULT_AUDIT_LOG)),
            kmsg: Some(PathBuf::from(DEFAULT_KMSG)),
            capacity: 1024,
            poll_interval: Duration::from_millis(250),
            backoff: BackoffConfig {
                initial: Duration::from_millis(500),
                max: Duration::from_secs(30),
            },
        }
    }
}

/// A kind of audit record source, in order of preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceKind {
    /// The audit netlink multicast group `AUDIT_NLGRP_READLOG`.
    Netlink,
    /// auditd's log file.
    AuditLog,
    /// The kernel log (`/dev/kmsg`).
    Kmsg,
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SourceKind::Netlink => "audit netlink",
            SourceKind::AuditLog => "audit log",
            SourceKind::Kmsg => "kernel log",
        })
    }
}

/// Which source was chosen, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceInfo {
    /// The chosen source.
    pub kind: SourceKind,
    /// Where it reads: the multicast group or the path.
    pub location: String,
    /// Why this source is used (what it gives and what it lacks).
    pub reason: String,
    /// The sources tried before it, each with why it was not used.
    pub passed_over: Vec<(SourceKind, String)>,
}

impl fmt::Display for SourceInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at {}: {}", self.kind, self.location, self.reason)?;
        for (kind, why) in &self.passed_over {
            write!(f, "; not {kind}: {why}")?;
        }
        Ok(())
    }
}

/// No source could be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no audit record source is available: {}", describe(.tried))]
pub struct KernLogError {
    /// Every source tried, with why it failed (empty when the config enables none).
    pub tried: Vec<(SourceKind, String)>,
}

fn describe(tried: &[(SourceKind, String)]) -> String {
    if tried.is_empty() {
        return "the configuration enables no source".into();
    }
    tried
        .iter()
        .map(|(k, why)| format!("{k}: {why}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Counts of what a source has seen so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuditCounters {
    /// AppArmor and Seccomp records parsed and passed on.
    pub records: u64,
    /// Records of ours that could not be parsed (and over-long lines).
    pub parse_errors: u64,
    /// Records lost before we read them: kmsg records the ring overwrote (by sequence
    /// number), netlink buffer overruns (`ENOBUFS`, one each: the kernel does not say how many).
    pub lost: u64,
    /// Times the source was reopened after an error, or a tailed file after rotation.
    pub reopens: u64,
    /// Audit-looking records that user space wrote to `/dev/kmsg` (not the kernel's; ignored).
    pub forged: u64,
}

#[derive(Debug, Default)]
struct Counters {
    records: AtomicU64,
    parse_errors: AtomicU64,
    lost: AtomicU64,
    reopens: AtomicU64,
    forged: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> AuditCounters {
        AuditCounters {
            records: self.records.load(Ordering::Relaxed),
            parse_errors: self.parse_errors.load(Ordering::Relaxed),
            lost: self.lost.load(Ordering::Relaxed),
            reopens: self.reopens.load(Ordering::Relaxed),
            forged: self.forged.load(Ordering::Relaxed),
        }
    }

    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// A running source of audit records; dropping it stops the reader.
#[derive(Debug)]
pub struct AuditSource {
    rx: mpsc::Receiver<AuditRecord>,
    info: SourceInfo,
    counters: Arc<Counters>,
    task: JoinHandle<()>,
}

impl AuditSource {
    /// The next record; `None` only if the reader stopped (it does not on its own).
    pub async fn next(&mut self) -> Option<AuditRecord> {
        self.rx.recv().await
    }

    /// Which source is read, and why.
    pub fn info(&self) -> &SourceInfo {
        &self.info
    }

    /// What the source has seen so far.
    pub fn counters(&self) -> AuditCounters {
        self.counters.snapshot()
    }
}

impl Drop for AuditSource {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Opens the first source that works (see the module documentation) and starts reading it
/// on the current tokio runtime (call it from within one). Every record of ours is passed on,
/// including AppArmor `STATUS` records; see [`AuditRecord::is_violation`].
pub async fn open(config: &KernLogConfig) -> Result<AuditSource, KernLogError> {
    let mut tried = Vec::new();
    let counters = Arc::new(Counters::default());
    let (tx, rx) = mpsc::channel(config.capacity.max(1));
    let backoff = config.backoff;

    if config.netlink {
        match open_netlink() {
            Ok(fd) => {
                let info = SourceInfo {
                    kind: SourceKind::Netlink,
                    location: format!(
                        "NETLINK_AUDIT group {AUDIT_NLGRP_READLOG} (AUDIT_NLGRP_READLOG)"
                    ),
                    reason:
                        "joined the audit multicast group: every record, with or without auditd, \
                             no printk rate limit"
                            .into(),
                    passed_over: tried,
                };
                let task = tokio::spawn(run_netlink(fd, tx, counters.clone(), backoff));
                return Ok(started(rx, info, counters, task));
            }
            Err(why) => tried.push((SourceKind::Netlink, why)),
        }
    }

    if let Some(path) = &config.audit_log {
        match Tail::open(path, true) {
            Ok(tail) => {
                let info = SourceInfo {
                    kind: SourceKind::AuditLog,
                    location: path.display().to_string(),
                    reason: "tailing auditd's log (records arrive when auditd writes them)".into(),
                    passed_over: tried,
                };
                let task = tokio::spawn(run_tail(
                    tail,
                    config.poll_interval,
                    tx,
                    counters.clone(),
                    backoff,
                ));
                return Ok(started(rx, info, counters, task));
            }
            Err(e) => tried.push((
                SourceKind::AuditLog,
                format!("cannot open {}: {e}", path.display()),
            )),
        }
    }

    if let Some(path) = &config.kmsg {
        match open_kmsg(path) {
            Ok(Kmsg::Device(fd)) => {
                let info = SourceInfo {
                    kind: SourceKind::Kmsg,
                    location: path.display().to_string(),
                    reason:
                        "reading the kernel log from its end: records appear only while no auditd \
                             is registered and are rate-limited by printk"
                            .into(),
                    passed_over: tried,
                };
                let task = tokio::spawn(run_kmsg(fd, path.clone(), tx, counters.clone(), backoff));
                return Ok(started(rx, info, counters, task));
            }
            Ok(Kmsg::File(tail)) => {
                let info = SourceInfo {
                    kind: SourceKind::Kmsg,
                    location: path.display().to_string(),
                    reason: "tailing a regular file of kernel log lines".into(),
                    passed_over: tried,
                };
                let task = tokio::spawn(run_tail(
                    tail,
                    config.poll_interval,
                    tx,
                    counters.clone(),
                    backoff,
                ));
                return Ok(started(rx, info, counters, task));
            }
            Err(e) => {
                let hint = if e.kind() == io::ErrorKind::PermissionDenied {
                    " (reading the kernel log needs CAP_SYSLOG while kernel.dmesg_restrict is 1)"
                } else {
                    ""
                };
                tried.push((
                    SourceKind::Kmsg,
                    format!("cannot read {}: {e}{hint}", path.display()),
                ))
            }
        }
    }

    Err(KernLogError { tried })
}

fn started(
    rx: mpsc::Receiver<AuditRecord>,
    info: SourceInfo,
    counters: Arc<Counters>,
    task: JoinHandle<()>,
) -> AuditSource {
    tracing::info!(source = %info.kind, location = %info.location, reason = %info, "audit record source chosen");
    AuditSource {
        rx,
        info,
        counters,
        task,
    }
}

/// Parses every record in `text` and passes ours on; `false` when the consumer is gone.
async fn deliver(text: &str, tx: &mpsc::Sender<AuditRecord>, counters: &Counters) -> bool {
    for result in parse_line_all(text) {
        match result {
            Ok(record) => {
                Counters::add(&counters.records, 1);
                if tx.send(record).await.is_err() {
                    return false;
                }
            }
            Err(error) => {
                Counters::add(&counters.parse_errors, 1);
                tracing::debug!(%error, "unparsable audit record");
            }
        }
    }
    true
}

// ---- netlink ------------------------------------------------------------------------------

fn open_netlink() -> Result<TokioSocket, String> {
    // The kernel multicasts audit records only to sockets in the initial network namespace;
    // elsewhere joining works but nothing ever arrives.
    if let (Ok(own), Ok(init)) = (
        std::fs::read_link("/proc/self/ns/net"),
        std::fs::read_link("/proc/1/ns/net"),
    ) {
        if own != init {
            return Err(format!(
                "not in the host network namespace ({} vs {} of pid 1): the kernel multicasts audit \
                 records only in the initial one",
                own.display(),
                init.display()
            ));
        }
    }
    // TokioSocket is non-blocking and registered with the runtime.
    let mut socket = TokioSocket::new(NETLINK_AUDIT).map_err(|e| match e.raw_os_error() {
        Some(libc::EPROTONOSUPPORT) => {
            format!("the kernel has no audit support (CONFIG_AUDIT): {e}")
        }
        _ => format!("cannot create a NETLINK_AUDIT socket: {e}"),
    })?;
    socket
        .socket_mut()
        .bind_auto()
        .map_err(|e| format!("cannot bind the NETLINK_AUDIT socket: {e}"))?;
    socket
        .socket_ref()
        .add_membership(AUDIT_NLGRP_READLOG)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::EPERM) => format!("joining AUDIT_NLGRP_READLOG needs CAP_AUDIT_READ: {e}"),
            _ => format!("cannot join AUDIT_NLGRP_READLOG: {e}"),
        })?;
    Ok(socket)
}

async fn run_netlink(
    mut socket: TokioSocket,
    tx: mpsc::Sender<AuditRecord>,
    counters: Arc<Counters>,
    backoff: BackoffConfig,
) {
    let mut retry = Backoff::new(backoff);
    let mut buf: Vec<u8> = Vec::with_capacity(READ_BUFFER);
    loop {
        buf.clear();
        match socket.recv(&mut buf).await {
            Ok(()) => {
                retry.reset();
                if !deliver_netlink(&buf, &tx, &counters).await {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                Counters::add(&counters.lost, 1);
                tracing::warn!(
                    source = "audit netlink",
                    "socket buffer overrun: audit records lost"
                );
            }
            Err(e) => {
                tracing::warn!(source = "audit netlink", error = %e, "receive failed; reopening");
                socket = loop {
                    tokio::time::sleep(retry.next_delay()).await;
                    if tx.is_closed() {
                        return;
                    }
                    match open_netlink() {
                        Ok(fd) => break fd,
                        Err(why) => {
                            tracing::warn!(source = "audit netlink", reason = %why, "reopen failed")
                        }
                    }
                };
                Counters::add(&counters.reopens, 1);
            }
        }
    }
}

/// Walks the netlink messages of one datagram.
async fn deliver_netlink(buf: &[u8], tx: &mpsc::Sender<AuditRecord>, counters: &Counters) -> bool {
    const HEADER: usize = 16;
    let mut at = 0;
    while buf.len().saturating_sub(at) >= HEADER {
        let len = u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]) as usize;
        let msg_type = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
        // Each audit multicast datagram holds one record. Some kernels set nlmsg_len to the
        // payload's length only: then (or when the length is impossible) the record runs to
        // the end of the datagram.
        let payload_only = at == 0 && len + HEADER == buf.len();
        let end = if len < HEADER || at + len > buf.len() || payload_only {
            buf.len()
        } else {
            at + len
        };
        match parse_netlink(msg_type, &buf[at + HEADER..end]) {
            Ok(Some(record)) => {
                Counters::add(&counters.records, 1);
                if tx.send(record).await.is_err() {
                    return false;
                }
            }
            Ok(None) => {}
            Err(error) => {
                Counters::add(&counters.parse_errors, 1);
                tracing::debug!(%error, "unparsable audit netlink message");
            }
        }
        at = (end + 3) & !3;
    }
    true
}

// ---- /dev/kmsg ----------------------------------------------------------------------------

enum Kmsg {
    Device(pipe::Receiver),
    File(Tail),
}

fn open_kmsg(path: &Path) -> io::Result<Kmsg> {
    let meta = std::fs::metadata(path)?;
    if !meta.file_type().is_char_device() {
        return Tail::open(path, true).map(Kmsg::File);
    }
    open_kmsg_device(path).map(Kmsg::Device)
}

fn open_kmsg_device(path: &Path) -> io::Result<pipe::Receiver> {
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    // Records already in the ring are history: start with the next one.
    file.seek(SeekFrom::End(0))?;
    // /dev/kmsg is pollable and each read returns one record, like a pipe of datagrams:
    // tokio's pipe reader registers any such non-blocking fd without unsafe code.
    pipe::Receiver::from_file_unchecked(file)
}

async fn run_kmsg(
    mut fd: pipe::Receiver,
    path: PathBuf,
    tx: mpsc::Sender<AuditRecord>,
    counters: Arc<Counters>,
    backoff: BackoffConfig,
) {
    let mut retry = Backoff::new(backoff);
    let mut buf = vec![0u8; READ_BUFFER];
    let mut last_seq: Option<u64> = None;
    loop {
        // One read returns one record. Read until WouldBlock before waiting again: AsyncRead
        // would take a short read as "drained" and, with edge-triggered readiness, leave the
        // rest of a burst unread until the next record arrives.
        let result = match fd.readable().await {
            Ok(()) => fd.try_read(&mut buf),
            Err(e) => Err(e),
        };
        match result {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Ok(n) if n > 0 => {
                retry.reset();
                let text = String::from_utf8_lossy(&buf[..n]);
                let header = kmsg_header(&text);
                if let Some((_, seq)) = header {
                    if let Some(last) = last_seq {
                        let gap = seq.saturating_sub(last).saturating_sub(1);
                        if gap > 0 {
                            Counters::add(&counters.lost, gap);
                        }
                    }
                    last_seq = Some(seq);
                }
                // The first line is the record; continuation lines (" KEY=value") are metadata.
                let record = text.split('\n').next().unwrap_or("");
                // The kernel's own records have facility 0; whatever user space writes to
                // /dev/kmsg gets at least LOG_USER, so a forged audit line is recognisable.
                if header.is_some_and(|(prio, _)| prio >> 3 != 0) {
                    let forged = parse_line_all(record).len() as u64;
                    if forged > 0 {
                        Counters::add(&counters.forged, forged);
                        tracing::warn!(
                            source = "kernel log",
                            "ignored an audit record written to /dev/kmsg by user space"
                        );
                    }
                    continue;
                }
                if !deliver(record, &tx, &counters).await {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                // The ring overwrote records we had not read; the next read continues with the
                // oldest one left, and the sequence gap says how many were lost.
                if last_seq.is_none() {
                    Counters::add(&counters.lost, 1);
                }
                tracing::debug!(
                    source = "kernel log",
                    "ring buffer overwrote unread records"
                );
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => {
                let why = match other {
                    Ok(_) => "end of file".to_string(),
                    Err(e) => e.to_string(),
                };
                tracing::warn!(source = "kernel log", path = %path.display(), error = %why, "read failed; reopening");
                fd = loop {
                    tokio::time::sleep(retry.next_delay()).await;
                    if tx.is_closed() {
                        return;
                    }
                    match open_kmsg_device(&path) {
                        Ok(fd) => break fd,
                        Err(e) => {
                            tracing::warn!(source = "kernel log", path = %path.display(), error = %e, "reopen failed")
                        }
                    }
                };
                Counters::add(&counters.reopens, 1);
            }
        }
    }
}

/// The priority (facility << 3 | level) and sequence number of a kmsg record
/// `prio,seq,usec,flags;text`.
fn kmsg_header(record: &str) -> Option<(u32, u64)> {
    let (prefix, _) = record.split_once(';')?;
    let mut fields = prefix.split(',');
    let prio = fields.next()?.parse().ok()?;
    let seq = fields.next()?.parse().ok()?;
    Some((prio, seq))
}

// ---- tailing a file -----------------------------------------------------------------------

/// A followed file: the open handle, its identity, and the unfinished last line.
#[derive(Debug)]
struct Tail {
    path: PathBuf,
    file: Option<(File, (u64, u64))>,
    pos: u64,
    partial: Vec<u8>,
}

impl Tail {
    /// Opens `path`, at its end when `at_end` (existing lines are history).
    fn open(path: &Path, at_end: bool) -> io::Result<Tail> {
        let mut tail = Tail {
            path: path.to_path_buf(),
            file: None,
            pos: 0,
            partial: Vec::new(),
        };
        tail.reopen(at_end)?;
        Ok(tail)
    }

    fn reopen(&mut self, at_end: bool) -> io::Result<()> {
        let mut file = File::open(&self.path)?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        self.pos = if at_end {
            file.seek(SeekFrom::End(0))?
        } else {
            0
        };
        self.file = Some((file, (meta.dev(), meta.ino())));
        self.partial.clear();
        Ok(())
    }

    /// Reads what was appended; returns the complete lines.
    fn read_lines(&mut self, counters: &Counters) -> io::Result<Vec<String>> {
        let mut lines = Vec::new();
        let Some((file, _)) = &mut self.file else {
            return Ok(lines);
        };
        let mut chunk = [0u8; 8192];
        loop {
            let n = file.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            self.pos += n as u64;
            self.partial.extend_from_slice(&chunk[..n]);
            while let Some(nl) = self.partial.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.partial.drain(..=nl).collect();
                lines.push(String::from_utf8_lossy(&line[..nl]).into_owned());
            }
            if self.partial.len() > MAX_LINE {
                self.partial.clear();
                Counters::add(&counters.parse_errors, 1);
            }
        }
        Ok(lines)
    }

    /// After reading to the end: notices rotation (the path names another file, or none) and
    /// truncation. Returns the unfinished last line of a file rotated away.
    fn check_rotation(&mut self, counters: &Counters) -> io::Result<Option<String>> {
        let meta = match std::fs::metadata(&self.path) {
            Ok(meta) => meta,
            // Rotated away and not recreated yet: keep the old handle (writers may still append).
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let id = (meta.dev(), meta.ino());
        match &mut self.file {
            Some((_, current)) if *current == id => {
                if meta.len() < self.pos {
                    // Truncated in place (copytruncate): start over at its beginning.
                    if let Some((file, _)) = &mut self.file {
                        file.seek(SeekFrom::Start(0))?;
                    }
                    self.pos = 0;
                    self.partial.clear();
                    Counters::add(&counters.reopens, 1);
                }
                Ok(None)
            }
            _ => {
                let rest = std::mem::take(&mut self.partial);
                // A new file at the path: everything in it is new.
                self.reopen(false)?;
                Counters::add(&counters.reopens, 1);
                Ok((!rest.is_empty()).then(|| String::from_utf8_lossy(&rest).into_owned()))
            }
        }
    }
}

async fn run_tail(
    mut tail: Tail,
    poll: Duration,
    tx: mpsc::Sender<AuditRecord>,
    counters: Arc<Counters>,
    backoff: BackoffConfig,
) {
    let mut retry = Backoff::new(backoff);
    loop {
        let step = tail.read_lines(&counters).and_then(|mut lines| {
            if let Some(rest) = tail.check_rotation(&counters)? {
                lines.push(rest);
            }
            // Lines of the new file written before we noticed the rotation.
            lines.extend(tail.read_lines(&counters)?);
            Ok(lines)
        });
        let wait = match step {
            Ok(lines) => {
                retry.reset();
                for line in lines {
                    if !deliver(&line, &tx, &counters).await {
                        return;
                    }
                }
                poll
            }
            Err(e) => {
                tracing::warn!(path = %tail.path.display(), error = %e, "reading the audit log failed; reopening");
                tail.file = None;
                retry.next_delay().max(poll)
            }
        };
        tokio::time::sleep(wait).await;
        if tx.is_closed() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nlmsg(msg_type: u16, body: &[u8], len: Option<u32>) -> Vec<u8> {
        let len = len.unwrap_or((16 + body.len()) as u32);
        let mut out = Vec::new();
        out.extend_from_slice(&len.to_ne_bytes());
        out.extend_from_slice(&msg_type.to_ne_bytes());
        out.extend_from_slice(&[0u8; 10]);
        out.extend_from_slice(body);
        while out.len() % 4 != 0 {
            out.push(0);
        }
        out
    }

    const BODY: &[u8] = b"audit(1700000000.001:5): pid=9 comm=\"a\" exe=\"/a\" sig=0 arch=c000003e syscall=39 compat=0 ip=0x1 code=0x7ffc0000";

    async fn delivered(buf: &[u8]) -> (Vec<u32>, AuditCounters) {
        let (tx, mut rx) = mpsc::channel(16);
        let counters = Counters::default();
        assert!(deliver_netlink(buf, &tx, &counters).await);
        drop(tx);
        let mut pids = Vec::new();
        while let Some(r) = rx.recv().await {
            pids.push(r.pid);
        }
        (pids, counters.snapshot())
    }

    #[tokio::test]
    async fn netlink_datagrams_with_one_or_more_messages() {
        let mut two = nlmsg(1326, BODY, None);
        two.extend(nlmsg(1320, b"audit(1700000000.001:5): ", None));
        two.extend(nlmsg(
            1326,
            &BODY
                .iter()
                .map(|&b| if b == b'9' { b'8' } else { b })
                .collect::<Vec<_>>(),
            None,
        ));
        let (pids, counters) = delivered(&two).await;
        assert_eq!(pids, vec![9, 8]);
        assert_eq!(counters.records, 2);

        // nlmsg_len of the payload only, and an impossible length: the whole datagram.
        let payload_only = nlmsg(1326, BODY, Some(BODY.len() as u32));
        assert_eq!(
            payload_only.len(),
            BODY.len() + 16 + (4 - BODY.len() % 4) % 4
        );
        let (pids, _) =
            delivered(&nlmsg(1326, BODY, Some(BODY.len() as u32))[..16 + BODY.len()]).await;
        assert_eq!(pids, vec![9]);
        let (pids, _) = delivered(&nlmsg(1326, BODY, Some(u32::MAX))).await;
        assert_eq!(pids, vec![9]);

        // A short tail and garbage are counted, never a panic.
        let (pids, counters) = delivered(&nlmsg(1326, b"audit(x", None)).await;
        assert!(pids.is_empty());
        assert_eq!(counters.parse_errors, 1);
        let (pids, _) = delivered(&[1, 2, 3]).await;
        assert!(pids.is_empty());
    }

    #[test]
    fn kmsg_header_fields() {
        assert_eq!(kmsg_header("6,1234,5678,-;audit: x"), Some((6, 1234)));
        assert_eq!(kmsg_header("13,7,1,-,caller=T1;hello"), Some((13, 7)));
        assert_eq!(kmsg_header("no header"), None);
        assert_eq!(kmsg_header("a,b;x"), None);
    }
}
