//! OpenTelemetry export of violations: each event becomes one OTLP log record, sent in batches
//! to a collector's `LogsService/Export` over gRPC (`--otlp-endpoint`).
//!
//! # The record
//!
//! * `time_unix_nano`: the event's time (when the kernel reported it); `observed_time_unix_nano`:
//!   when the record was built.
//! * `severity_number`/`severity_text`: `WARN` for an action containing `DENIED`, `INFO` for
//!   `AUDIT`, `ALLOWED` and `AUDIT|ALLOWED`.
//! * `event_name`: `varmor.violation`.
//! * Attributes (semantic conventions where one exists): `k8s.node.name`, `k8s.pod.uid`,
//!   `k8s.pod.name`, `k8s.namespace.name`, `container.id`, `container.name`,
//!   `container.image.name`, `process.pid` (int); and `varmor.enforcer` (`AppArmor`, `BPF`,
//!   `Seccomp`), `varmor.action`, `varmor.profile`, `varmor.policy.kind`, `varmor.policy.name`,
//!   `varmor.policy.namespace`, `varmor.mnt_ns_id` (int), `varmor.sequence` (int; 0 when the
//!   upstream buffer had no room and gave the event no number). Empty strings are omitted,
//!   except `varmor.enforcer` and `varmor.action`, which are always present.
//! * Body: the enforcer-specific `event` object as a key-value list (nested objects and
//!   arrays kept as kvlists and arrays, so a collector can map it back to the same JSON as
//!   `violations.log`'s `event`). When `event_json` is not valid JSON the body is that text as
//!   a string. (Flattening into `varmor.event.<key>` attributes was rejected: nested arrays
//!   such as `permissions` do not flatten without inventing a convention.)
//! * Resource: `service.name=varmor-agent`, `service.version`, `host.name` and
//!   `k8s.node.name` (this node). Scope: `varmor-agent` with the agent's version.
//!
//! A batch that follows lost events carries one more record, body `events dropped`, severity
//! `WARN`, with attributes `varmor.dropped` (int, how many records were lost since the last
//! report), `varmor.sink=otlp` and `k8s.node.name`.
//!
//! # Delivery
//!
//! [`OtlpExporter::export`] sends one request per batch with the configured headers and
//! per-attempt timeout. The request is encoded once per batch, straight from the events into
//! protobuf bytes ([`OtlpExporter::encode_request`]; no `opentelemetry-proto` message tree,
//! which cost four to eight times as much, mostly in allocation), and those bytes are sent by every
//! attempt. `UNAVAILABLE`, `DEADLINE_EXCEEDED`, `RESOURCE_EXHAUSTED`, `ABORTED`
//! and `CANCELLED` (the OTLP spec's retryable codes; a collector that is down yields
//! `UNAVAILABLE`) are retried with jittered exponential backoff until
//! [`OtlpConfig::max_retry_time`] has passed since the first attempt; then the batch is given
//! up and counted. Other codes are not retried. `http://` endpoints use plain HTTP/2;
//! `https://` uses TLS with [`OtlpConfig::ca_file`] (default: the system bundle
//! [`SYSTEM_CA_BUNDLE`]) and an optional client certificate.

use std::borrow::Borrow;
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{
    any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::bytes::BufMut;
use serde::de::{Deserialize, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::codegen::Bytes;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue, MetadataMap};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Code;
use varmor_proto::v1;

use crate::backoff::Backoff;
use crate::config::BackoffConfig;
use crate::violations::json;
use crate::violations::logfile::enforcer_name;

/// The sink's name in counters.
pub const SINK_NAME: &str = "otlp";
/// The CA bundle used for `https://` endpoints when no `ca_file` is configured (Debian's).
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// The `event_name` of violation records.
pub const EVENT_NAME: &str = "varmor.violation";
/// The gRPC method of OTLP log export.
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";

/// Errors of the OTLP sink. Each names the setting or the endpoint.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    /// A setting cannot work.
    #[error("invalid OTLP setting {field}: {reason}")]
    Config {
        /// The setting (`endpoint`, `headers`, `batch_size`, ...).
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// A TLS file could not be read.
    #[error("cannot read the OTLP {what} {}: {source}", path.display())]
    Read {
        /// What the file is (`CA bundle`, `client certificate`, `client key`).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The collector refused or did not answer, after the retries.
    #[error("OTLP export to {endpoint} failed after {attempts} attempt(s): {code:?}: {message}")]
    Export {
        /// The endpoint.
        endpoint: String,
        /// Attempts made.
        attempts: u32,
        /// The last gRPC code.
        code: Code,
        /// The last message.
        message: String,
    },
}

/// Where and how violations are exported over OTLP/gRPC.
#[derive(Clone)]
pub struct OtlpConfig {
    /// The collector, `http://host:4317` or `https://host:4317`.
    pub endpoint: String,
    /// Extra request headers (gRPC metadata), e.g. `authorization`. Names are lower-cased.
    pub headers: Vec<(String, String)>,
    /// Per attempt: the time a request may take. Default 10 s.
    pub timeout: Duration,
    /// Connecting to the collector. Default 5 s.
    pub connect_timeout: Duration,
    /// The most records per request. Default 512.
    pub batch_size: usize,
    /// How long a record waits for more to fill its batch. Default 1 s.
    pub batch_timeout: Duration,
    /// Records waiting to be exported before new ones are dropped. Default 65,536, like the
    /// `violations.log` queue: 1.3 s of backlog at 50,000 events/s (16,384 lost events in the
    /// bench on a loaded core). A full queue holds that many events (about 1 KiB each).
    pub queue_capacity: usize,
    /// Backoff between attempts of one batch. Default 100 ms doubling up to 5 s.
    pub retry_backoff: BackoffConfig,
    /// Give a batch up when this much time passed since its first attempt. Default 60 s.
    pub max_retry_time: Duration,
    /// `https://` only: the CA bundle (PEM). Default [`SYSTEM_CA_BUNDLE`].
    pub ca_file: Option<PathBuf>,
    /// `https://` only: a client certificate and key (PEM files) for mutual TLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// This node, for the resource attributes.
    pub node_name: String,
}

impl fmt::Debug for OtlpConfig {
    // Header values are often credentials: show only their names.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtlpConfig")
            .field("endpoint", &self.endpoint)
            .field(
                "headers",
                &self.headers.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("batch_size", &self.batch_size)
            .field("batch_timeout", &self.batch_timeout)
            .field("queue_capacity", &self.queue_capacity)
            .field("retry_backoff", &self.retry_backoff)
            .field("max_retry_time", &self.max_retry_time)
            .field("ca_file", &self.ca_file)
            .field("client_cert", &self.client_cert)
            .field("node_name", &self.node_name)
            .finish()
    }
}

impl OtlpConfig {
    /// The defaults for `endpoint` on node `node_name`.
    pub fn new(endpoint: impl Into<String>, node_name: impl Into<String>) -> Self {
        OtlpConfig {
            endpoint: endpoint.into(),
            headers: Vec::new(),
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            batch_size: 512,
            batch_timeout: Duration::from_secs(1),
            queue_capacity: 65_536,
            retry_backoff: BackoffConfig {
                initial: Duration::from_millis(100),
                max: Duration::from_secs(5),
            },
            max_retry_time: Duration::from_secs(60),
            ca_file: None,
            client_cert: None,
            node_name: node_name.into(),
        }
    }

    /// Parses `--otlp-header name=value` flags into [`OtlpConfig::headers`].
    pub fn parse_header(text: &str) -> Result<(String, String), OtlpError> {
        let (name, value) = text.split_once('=').ok_or_else(|| OtlpError::Config {
            field: "headers",
            reason: format!("{text:?} is not name=value"),
        })?;
        Ok((name.trim().to_ascii_lowercase(), value.trim().to_string()))
    }

    fn check(&self) -> Result<(), OtlpError> {
        let bad = |field, reason: &str| {
            Err(OtlpError::Config {
                field,
                reason: reason.to_string(),
            })
        };
        if !(self.endpoint.starts_with("http://") || self.endpoint.starts_with("https://")) {
            return bad(
                "endpoint",
                &format!("{:?} must start with http:// or https://", self.endpoint),
            );
        }
        if self.batch_size == 0 {
            return bad("batch_size", "must be at least 1");
        }
        if self.queue_capacity == 0 {
            return bad("queue_capacity", "must be at least 1");
        }
        if self.timeout.is_zero() {
            return bad("timeout", "must be longer than 0");
        }
        Ok(())
    }
}

/// Sends batches of events to one collector. Connects lazily; the channel reconnects by itself.
#[derive(Debug)]
pub struct OtlpExporter {
    endpoint: String,
    client: tonic::client::Grpc<Channel>,
    /// The encoded request under construction (kept for its capacity).
    buf: Vec<u8>,
    headers: MetadataMap,
    timeout: Duration,
    retry_backoff: BackoffConfig,
    max_retry_time: Duration,
    node_name: String,
    resource: Resource,
    scope: InstrumentationScope,
}

/// What one successful [`OtlpExporter::export`] delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Exported {
    /// Violation records the collector accepted.
    pub accepted: u64,
    /// Violation records it rejected (OTLP partial success).
    pub rejected: u64,
    /// Attempts that failed before the one that worked.
    pub failed_attempts: u32,
}

impl OtlpExporter {
    /// Checks `config` and prepares the channel (no connection is made yet).
    pub fn new(config: &OtlpConfig) -> Result<Self, OtlpError> {
        config.check()?;
        let mut endpoint = Endpoint::from_shared(config.endpoint.clone())
            .map_err(|e| OtlpError::Config {
                field: "endpoint",
                reason: format!("{:?}: {e}", config.endpoint),
            })?
            .timeout(config.timeout)
            .connect_timeout(config.connect_timeout)
            .tcp_nodelay(true);
        if config.endpoint.starts_with("https://") {
            let ca_path = config
                .ca_file
                .clone()
                .unwrap_or_else(|| PathBuf::from(SYSTEM_CA_BUNDLE));
            let read = |what, path: &PathBuf| {
                std::fs::read(path).map_err(|source| OtlpError::Read {
                    what,
                    path: path.clone(),
                    source,
                })
            };
            let mut tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(read("CA bundle", &ca_path)?));
            if let Some((cert, key)) = &config.client_cert {
                tls = tls.identity(Identity::from_pem(
                    read("client certificate", cert)?,
                    read("client key", key)?,
                ));
            }
            endpoint = endpoint.tls_config(tls).map_err(|e| OtlpError::Config {
                field: "endpoint",
                reason: format!("TLS for {}: {e}", config.endpoint),
            })?;
        } else if config.ca_file.is_some() || config.client_cert.is_some() {
            return Err(OtlpError::Config {
                field: "endpoint",
                reason: format!(
                    "{} is plain http:// but a CA file or client certificate is set; use https://",
                    config.endpoint
                ),
            });
        }
        let mut headers = MetadataMap::new();
        for (name, value) in &config.headers {
            let key =
                AsciiMetadataKey::from_bytes(name.as_bytes()).map_err(|e| OtlpError::Config {
                    field: "headers",
                    reason: format!("{name:?} is not a valid header name: {e}"),
                })?;
            let value =
                AsciiMetadataValue::try_from(value.as_str()).map_err(|e| OtlpError::Config {
                    field: "headers",
                    reason: format!("the value of {name:?} is not a valid header value: {e}"),
                })?;
            headers.append(key, value);
        }
        let node = &config.node_name;
        Ok(OtlpExporter {
            endpoint: config.endpoint.clone(),
            client: tonic::client::Grpc::new(endpoint.connect_lazy()),
            buf: Vec::new(),
            headers,
            timeout: config.timeout,
            retry_backoff: config.retry_backoff,
            max_retry_time: config.max_retry_time,
            node_name: node.clone(),
            resource: Resource {
                attributes: vec![
                    kv_str("service.name", "varmor-agent"),
                    kv_str("service.version", crate::AGENT_VERSION),
                    kv_str("host.name", node),
                    kv_str("k8s.node.name", node),
                ],
                ..Default::default()
            },
            scope: InstrumentationScope {
                name: "varmor-agent".into(),
                version: crate::AGENT_VERSION.into(),
                ..Default::default()
            },
        })
    }

    /// The collector's address.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The request for `events`, with a marker record first when `dropped` > 0.
    pub fn request<'a>(
        &self,
        events: impl IntoIterator<Item = &'a v1::Event>,
        dropped: u64,
    ) -> ExportLogsServiceRequest {
        let observed = unix_nanos(SystemTime::now());
        let events = events.into_iter();
        let mut records = Vec::with_capacity(events.size_hint().0 + 1);
        if dropped > 0 {
            records.push(dropped_record(&self.node_name, dropped, observed));
        }
        records.extend(events.map(|e| log_record(e, observed)));
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(self.resource.clone()),
                scope_logs: vec![ScopeLogs {
                    scope: Some(self.scope.clone()),
                    log_records: records,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    /// The protobuf encoding of [`OtlpExporter::request`] for the same arguments, with
    /// `observed_time_unix_nano` = `observed`, written into `out` (cleared first) straight from
    /// the events.
    pub fn encode_request<'a>(
        &self,
        events: impl IntoIterator<Item = &'a v1::Event>,
        dropped: u64,
        observed: u64,
        out: &mut Vec<u8>,
    ) {
        out.clear();
        let resource_logs = wire::begin(out, 1);
        let resource = wire::begin(out, 1);
        prost::Message::encode_raw(&self.resource, out);
        wire::end(out, resource);
        let scope_logs = wire::begin(out, 2);
        let scope = wire::begin(out, 1);
        prost::Message::encode_raw(&self.scope, out);
        wire::end(out, scope);
        if dropped > 0 {
            let marker = wire::begin(out, 2);
            prost::Message::encode_raw(&dropped_record(&self.node_name, dropped, observed), out);
            wire::end(out, marker);
        }
        for e in events {
            write_log_record(out, 2, e, observed);
        }
        wire::end(out, scope_logs);
        wire::end(out, resource_logs);
    }

    /// Exports `events` (with a marker record first when `dropped` > 0), retrying the
    /// retryable codes with backoff until `max_retry_time`. The request is encoded once
    /// ([`OtlpExporter::encode_request`]) and the same bytes are sent by every attempt.
    /// `on_failure` sees each failed attempt as it happens (for live error counters).
    pub async fn export<E: Borrow<v1::Event> + Sync>(
        &mut self,
        events: &[E],
        dropped: u64,
        on_failure: &mut (dyn FnMut(&tonic::Status) + Send),
    ) -> Result<Exported, OtlpError> {
        let violations = events.len() as u64;
        let started = Instant::now();
        let mut backoff = Backoff::new(self.retry_backoff);
        let mut attempts = 0u32;
        let mut buf = std::mem::take(&mut self.buf);
        self.encode_request(
            events.iter().map(Borrow::borrow),
            dropped,
            unix_nanos(SystemTime::now()),
            &mut buf,
        );
        // The bytes move into the request (no copy); the next batch starts with room for as
        // much.
        self.buf = Vec::with_capacity(buf.len());
        let body = Bytes::from(buf);
        let codec = EncodedCodec { size: body.len() };
        loop {
            attempts += 1;
            let mut req = tonic::Request::new(body.clone());
            *req.metadata_mut() = self.headers.clone();
            req.set_timeout(self.timeout);
            let sent = match self.client.ready().await {
                Ok(()) => {
                    self.client
                        .unary(req, PathAndQuery::from_static(EXPORT_PATH), codec)
                        .await
                }
                Err(e) => Err(tonic::Status::unavailable(format!(
                    "the channel is not ready: {e}"
                ))),
            };
            let status = match sent {
                Ok(resp) => {
                    let rejected = resp
                        .into_inner()
                        .partial_success
                        .map_or(0, |p| u64::try_from(p.rejected_log_records).unwrap_or(0))
                        .min(violations);
                    return Ok(Exported {
                        accepted: violations - rejected,
                        rejected,
                        failed_attempts: attempts - 1,
                    });
                }
                Err(status) => status,
            };
            on_failure(&status);
            let retryable = matches!(
                status.code(),
                Code::Unavailable
                    | Code::DeadlineExceeded
                    | Code::ResourceExhausted
                    | Code::Aborted
                    | Code::Cancelled
            );
            let delay = backoff.next_delay();
            if !retryable || started.elapsed() + delay > self.max_retry_time {
                return Err(OtlpError::Export {
                    endpoint: self.endpoint.clone(),
                    attempts,
                    code: status.code(),
                    message: status.message().to_string(),
                });
            }
            tracing::debug!(
                endpoint = %self.endpoint,
                code = ?status.code(),
                message = status.message(),
                retry_in = ?delay,
                "OTLP export failed; retrying"
            );
            tokio::time::sleep(delay).await;
        }
    }
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn kv_str(key: &str, value: &str) -> KeyValue {
    kv(key, any_value::Value::StringValue(value.to_string()))
}

fn kv_int(key: &str, value: i64) -> KeyValue {
    kv(key, any_value::Value::IntValue(value))
}

/// The severity of an action: WARN when it was denied, INFO otherwise.
pub fn severity(action: &str) -> (SeverityNumber, &'static str) {
    if action.contains("DENIED") {
        (SeverityNumber::Warn, "WARN")
    } else {
        (SeverityNumber::Info, "INFO")
    }
}

/// The semantic-convention string attributes of an event, in record order (empty ones are left
/// out by the callers). Both the record tree and the direct encoder take them from here.
fn semconv_attributes(e: &v1::Event) -> [(&'static str, &String); 7] {
    [
        ("k8s.node.name", &e.node_name),
        ("k8s.pod.uid", &e.pod_uid),
        ("k8s.pod.name", &e.pod_name),
        ("k8s.namespace.name", &e.pod_namespace),
        ("container.id", &e.container_id),
        ("container.name", &e.container_name),
        ("container.image.name", &e.image),
    ]
}

/// The `varmor.*` attributes of the profile and policy, left out when empty (shared by the
/// record tree and the direct encoder, like [`semconv_attributes`]).
fn policy_attributes(e: &v1::Event) -> [(&'static str, &String); 4] {
    [
        ("varmor.profile", &e.profile_name),
        ("varmor.policy.kind", &e.policy_kind),
        ("varmor.policy.name", &e.policy_name),
        ("varmor.policy.namespace", &e.policy_namespace),
    ]
}

/// The log record of one violation (see the module docs).
pub fn log_record(e: &v1::Event, observed_time_unix_nano: u64) -> LogRecord {
    let mut attributes = Vec::with_capacity(18);
    for (key, value) in semconv_attributes(e) {
        if !value.is_empty() {
            attributes.push(kv_str(key, value));
        }
    }
    attributes.push(kv_int("process.pid", e.pid.into()));
    attributes.push(kv_str("varmor.enforcer", enforcer_name(e.enforcer)));
    attributes.push(kv_str("varmor.action", &e.action));
    for (key, value) in policy_attributes(e) {
        if !value.is_empty() {
            attributes.push(kv_str(key, value));
        }
    }
    attributes.push(kv_int("varmor.mnt_ns_id", e.mnt_ns_id.into()));
    attributes.push(kv_int(
        "varmor.sequence",
        i64::try_from(e.sequence).unwrap_or(i64::MAX),
    ));
    let (number, text) = severity(&e.action);
    let time = event_time(e);
    LogRecord {
        time_unix_nano: time,
        observed_time_unix_nano,
        severity_number: number as i32,
        severity_text: text.to_string(),
        body: Some(event_body(&e.event_json)),
        attributes,
        event_name: EVENT_NAME.to_string(),
        ..Default::default()
    }
}

/// The event's time in nanoseconds since the epoch (0 when unknown).
fn event_time(e: &v1::Event) -> u64 {
    e.time.as_ref().map_or(0, |t| {
        u64::try_from(t.seconds)
            .unwrap_or(0)
            .saturating_mul(1_000_000_000)
            .saturating_add(u64::try_from(t.nanos).unwrap_or(0))
    })
}

/// The record that reports `dropped` lost records.
pub fn dropped_record(node_name: &str, dropped: u64, now_unix_nano: u64) -> LogRecord {
    LogRecord {
        time_unix_nano: now_unix_nano,
        observed_time_unix_nano: now_unix_nano,
        severity_number: SeverityNumber::Warn as i32,
        severity_text: "WARN".into(),
        body: Some(AnyValue {
            value: Some(any_value::Value::StringValue("events dropped".into())),
        }),
        attributes: vec![
            kv_str("k8s.node.name", node_name),
            kv_str("varmor.sink", SINK_NAME),
            kv_int("varmor.dropped", i64::try_from(dropped).unwrap_or(i64::MAX)),
        ],
        event_name: "varmor.events_dropped".into(),
        ..Default::default()
    }
}

/// `event_json` as a body: the JSON value as an `AnyValue` (objects as kvlists), an empty
/// kvlist when empty, or the text as a string when it is not JSON.
pub fn event_body(json: &str) -> AnyValue {
    if json.trim().is_empty() {
        return AnyValue {
            value: Some(any_value::Value::KvlistValue(KeyValueList::default())),
        };
    }
    match serde_json::from_str::<JsonAny>(json) {
        Ok(JsonAny(v)) => v,
        Err(_) => AnyValue {
            value: Some(any_value::Value::StringValue(json.to_string())),
        },
    }
}

/// Deserializes JSON straight into an `AnyValue` (no intermediate `serde_json::Value`).
struct JsonAny(AnyValue);

impl<'de> Deserialize<'de> for JsonAny {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(JsonAnyVisitor).map(JsonAny)
    }
}

struct JsonAnyVisitor;

fn any(v: any_value::Value) -> AnyValue {
    AnyValue { value: Some(v) }
}

impl<'de> Visitor<'de> for JsonAnyVisitor {
    type Value = AnyValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<AnyValue, E> {
        Ok(any(any_value::Value::BoolValue(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<AnyValue, E> {
        Ok(any(any_value::Value::IntValue(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<AnyValue, E> {
        // Beyond i64 an exact integer is not representable; keep the digits as text.
        Ok(any(match i64::try_from(v) {
            Ok(i) => any_value::Value::IntValue(i),
            Err(_) => any_value::Value::StringValue(v.to_string()),
        }))
    }
    fn visit_f64<E>(self, v: f64) -> Result<AnyValue, E> {
        Ok(any(any_value::Value::DoubleValue(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<AnyValue, E> {
        Ok(any(any_value::Value::StringValue(v.to_string())))
    }
    fn visit_string<E>(self, v: String) -> Result<AnyValue, E> {
        Ok(any(any_value::Value::StringValue(v)))
    }
    fn visit_unit<E>(self) -> Result<AnyValue, E> {
        Ok(AnyValue { value: None })
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<AnyValue, A::Error> {
        let mut values = Vec::with_capacity(seq.size_hint().unwrap_or(4));
        while let Some(JsonAny(v)) = seq.next_element()? {
            values.push(v);
        }
        Ok(any(any_value::Value::ArrayValue(ArrayValue { values })))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<AnyValue, A::Error> {
        let mut values = Vec::with_capacity(map.size_hint().unwrap_or(4));
        while let Some((key, JsonAny(v))) = map.next_entry::<String, JsonAny>()? {
            values.push(KeyValue {
                key,
                value: Some(v),
                ..Default::default()
            });
        }
        Ok(any(any_value::Value::KvlistValue(KeyValueList { values })))
    }
}

/// Protobuf wire encoding of an `ExportLogsServiceRequest` written straight from the events
/// into one reusable buffer, without building the message tree (`opentelemetry-proto`'s
/// types allocate a `String` per attribute key and value and a node per JSON value; that
/// tree cost ~3 µs per event, most of it in `malloc`/`free`). The bytes decode to the same
/// message as [`OtlpExporter::request`] (a unit test holds them equal).
mod wire {
    /// Wire type of varints.
    const VARINT: u32 = 0;
    /// Wire type of fixed64 and double.
    const I64: u32 = 1;
    /// Wire type of length-delimited fields (strings, bytes, messages).
    const LEN: u32 = 2;

    pub fn varint(buf: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        buf.push(v as u8);
    }

    fn key(buf: &mut Vec<u8>, field: u32, wire_type: u32) {
        varint(buf, u64::from(field << 3 | wire_type));
    }

    /// A string field (always written, even when empty: used inside oneofs and by callers
    /// that skip empty values themselves).
    pub fn string(buf: &mut Vec<u8>, field: u32, s: &str) {
        key(buf, field, LEN);
        varint(buf, s.len() as u64);
        buf.extend_from_slice(s.as_bytes());
    }

    /// A varint field (`int64` as two's complement, like protobuf).
    pub fn int(buf: &mut Vec<u8>, field: u32, v: i64) {
        key(buf, field, VARINT);
        varint(buf, v as u64);
    }

    pub fn fixed64(buf: &mut Vec<u8>, field: u32, v: u64) {
        key(buf, field, I64);
        buf.extend_from_slice(&v.to_le_bytes());
    }

    pub fn double(buf: &mut Vec<u8>, field: u32, v: f64) {
        key(buf, field, I64);
        buf.extend_from_slice(&v.to_le_bytes());
    }

    /// Opens a message field; returns where its content starts, for [`end`].
    pub fn begin(buf: &mut Vec<u8>, field: u32) -> usize {
        key(buf, field, LEN);
        // One byte holds the length of most nested messages; `end` makes room when not.
        buf.push(0);
        buf.len()
    }

    /// Closes the message opened at `start`, writing its length before it.
    pub fn end(buf: &mut Vec<u8>, start: usize) {
        let len = buf.len() - start;
        if len < 0x80 {
            buf[start - 1] = len as u8;
            return;
        }
        // Longer: shift the content right by the extra length bytes (in place; a splice with
        // a temporary Vec cost an allocation per record).
        let mut prefix = [0u8; 10];
        let mut n = 0;
        let mut v = len as u64;
        while v >= 0x80 {
            prefix[n] = (v as u8) | 0x80;
            v >>= 7;
            n += 1;
        }
        prefix[n] = v as u8;
        n += 1;
        let end = buf.len();
        buf.resize(end + n - 1, 0);
        buf.copy_within(start..end, start + n - 1);
        buf[start - 1..start - 1 + n].copy_from_slice(&prefix[..n]);
    }

    /// `KeyValue { key, value: AnyValue { string_value } }` as field `field`.
    pub fn kv_str(buf: &mut Vec<u8>, field: u32, k: &str, v: &str) {
        let kv = begin(buf, field);
        string(buf, 1, k);
        let any = begin(buf, 2);
        string(buf, 1, v);
        end(buf, any);
        end(buf, kv);
    }

    /// `KeyValue { key, value: AnyValue { int_value } }` as field `field`.
    pub fn kv_int(buf: &mut Vec<u8>, field: u32, k: &str, v: i64) {
        let kv = begin(buf, field);
        string(buf, 1, k);
        let any = begin(buf, 2);
        int(buf, 3, v);
        end(buf, any);
        end(buf, kv);
    }
}

/// Writes the content of an `AnyValue` (its oneof field) for each JSON value it is fed.
struct AnyWriter<'a>(&'a mut Vec<u8>);

impl<'de> DeserializeSeed<'de> for AnyWriter<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for AnyWriter<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        wire::int(self.0, 2, i64::from(v));
        Ok(())
    }
    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        wire::int(self.0, 3, v);
        Ok(())
    }
    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        // As in `event_body`: beyond i64 the digits are kept as text.
        match i64::try_from(v) {
            Ok(i) => wire::int(self.0, 3, i),
            Err(_) => wire::string(self.0, 1, &v.to_string()),
        }
        Ok(())
    }
    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        wire::double(self.0, 4, v);
        Ok(())
    }
    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        wire::string(self.0, 1, v);
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let buf = self.0;
        let array = wire::begin(buf, 5);
        loop {
            let value = wire::begin(buf, 1);
            if seq.next_element_seed(AnyWriter(buf))?.is_none() {
                // The element opened for nothing: take its key and length byte back.
                buf.truncate(value - 2);
                break;
            }
            wire::end(buf, value);
        }
        wire::end(buf, array);
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let buf = self.0;
        let list = wire::begin(buf, 6);
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            let kv = wire::begin(buf, 1);
            wire::string(buf, 1, &key);
            let value = wire::begin(buf, 2);
            map.next_value_seed(AnyWriter(buf))?;
            wire::end(buf, value);
            wire::end(buf, kv);
        }
        wire::end(buf, list);
        Ok(())
    }
}

/// The fast path of [`AnyWriter`]: the same bytes for the JSON [`json::parse`] accepts.
struct FastAnyWriter<'a>(&'a mut Vec<u8>);

impl json::Visit for FastAnyWriter<'_> {
    fn bool(&mut self, v: bool) {
        wire::int(self.0, 2, i64::from(v));
    }
    fn int(&mut self, v: i64) {
        wire::int(self.0, 3, v);
    }
    fn str(&mut self, v: &str) {
        wire::string(self.0, 1, v);
    }
    fn open_array(&mut self) -> usize {
        wire::begin(self.0, 5)
    }
    fn close_array(&mut self, mark: usize) {
        wire::end(self.0, mark);
    }
    fn open_element(&mut self) -> usize {
        wire::begin(self.0, 1)
    }
    fn close_element(&mut self, mark: usize) {
        wire::end(self.0, mark);
    }
    fn open_object(&mut self) -> usize {
        wire::begin(self.0, 6)
    }
    fn close_object(&mut self, mark: usize) {
        wire::end(self.0, mark);
    }
    fn open_member(&mut self, key: &str) -> (usize, usize) {
        let kv = wire::begin(self.0, 1);
        wire::string(self.0, 1, key);
        (kv, wire::begin(self.0, 2))
    }
    fn close_member(&mut self, (kv, value): (usize, usize)) {
        wire::end(self.0, value);
        wire::end(self.0, kv);
    }
}

/// Writes `LogRecord.body` (field 5) for `json` as [`event_body`] builds it.
fn write_body(buf: &mut Vec<u8>, json: &str) {
    let body = wire::begin(buf, 5);
    if json.trim().is_empty() {
        let list = wire::begin(buf, 6);
        wire::end(buf, list);
    } else if json::parse(json, &mut FastAnyWriter(buf)).is_err() {
        buf.truncate(body);
        write_body_serde(buf, json);
    }
    wire::end(buf, body);
}

/// The content of the body for non-blank `json` through `serde_json` (any JSON).
fn write_body_serde(buf: &mut Vec<u8>, json: &str) {
    let body = buf.len();
    let mut de = serde_json::Deserializer::from_str(json);
    let ok = AnyWriter(buf).deserialize(&mut de).is_ok() && de.end().is_ok();
    if !ok {
        buf.truncate(body);
        wire::string(buf, 1, json);
    }
}

/// Writes one violation as a `LogRecord` (field `field` of its parent); see [`log_record`].
fn write_log_record(buf: &mut Vec<u8>, field: u32, e: &v1::Event, observed: u64) {
    let rec = wire::begin(buf, field);
    let time = event_time(e);
    if time != 0 {
        wire::fixed64(buf, 1, time);
    }
    let (number, text) = severity(&e.action);
    wire::int(buf, 2, number as i64);
    wire::string(buf, 3, text);
    write_body(buf, &e.event_json);
    for (key, value) in semconv_attributes(e) {
        if !value.is_empty() {
            wire::kv_str(buf, 6, key, value);
        }
    }
    wire::kv_int(buf, 6, "process.pid", e.pid.into());
    wire::kv_str(buf, 6, "varmor.enforcer", enforcer_name(e.enforcer));
    wire::kv_str(buf, 6, "varmor.action", &e.action);
    for (key, value) in policy_attributes(e) {
        if !value.is_empty() {
            wire::kv_str(buf, 6, key, value);
        }
    }
    wire::kv_int(buf, 6, "varmor.mnt_ns_id", e.mnt_ns_id.into());
    wire::kv_int(
        buf,
        6,
        "varmor.sequence",
        i64::try_from(e.sequence).unwrap_or(i64::MAX),
    );
    if observed != 0 {
        wire::fixed64(buf, 11, observed);
    }
    wire::string(buf, 12, EVENT_NAME);
    wire::end(buf, rec);
}

/// The gRPC codec of pre-encoded requests: sends the bytes as they are, decodes the
/// response with prost. `size` (the request's length) sizes tonic's send buffer so that it is
/// allocated once rather than grown from 8 KiB by doubling.
#[derive(Debug, Clone, Copy, Default)]
struct EncodedCodec {
    size: usize,
}

impl Codec for EncodedCodec {
    type Encode = Bytes;
    type Decode = ExportLogsServiceResponse;
    type Encoder = EncodedCodec;
    type Decoder = EncodedCodec;

    fn encoder(&mut self) -> Self::Encoder {
        *self
    }
    fn decoder(&mut self) -> Self::Decoder {
        EncodedCodec::default()
    }
}

impl Encoder for EncodedCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        // Room for the 5-byte gRPC frame header too; at least tonic's defaults (8 KiB buffer,
        // 32 KiB yield threshold).
        let size = self.size + 5;
        BufferSettings::new(size.max(8 << 10), size.max(32 << 10))
    }
}

impl Decoder for EncodedCodec {
    type Item = ExportLogsServiceResponse;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut DecodeBuf<'_>,
    ) -> Result<Option<ExportLogsServiceResponse>, tonic::Status> {
        prost::Message::decode(src)
            .map(Some)
            .map_err(|e| tonic::Status::internal(format!("undecodable OTLP response: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &AnyValue) -> &str {
        match &v.value {
            Some(any_value::Value::StringValue(s)) => s,
            other => panic!("not a string: {other:?}"),
        }
    }

    #[test]
    fn event_json_becomes_a_kvlist_body() {
        let body = event_body(
            r#"{"operation":"File","permissions":["read","write"],"n":-3,"big":18446744073709551615,"x":1.5,"ok":true,"none":null}"#,
        );
        let Some(any_value::Value::KvlistValue(list)) = body.value else {
            panic!("not a kvlist");
        };
        let keys: Vec<&str> = list.values.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(
            keys,
            ["operation", "permissions", "n", "big", "x", "ok", "none"]
        );
        let val = |i: usize| list.values[i].value.clone().expect("value").value;
        assert_eq!(s(list.values[0].value.as_ref().unwrap()), "File");
        let Some(any_value::Value::ArrayValue(a)) = val(1) else {
            panic!("not an array")
        };
        assert_eq!(
            a.values.iter().map(s).collect::<Vec<_>>(),
            ["read", "write"]
        );
        assert_eq!(val(2), Some(any_value::Value::IntValue(-3)));
        assert_eq!(
            val(3),
            Some(any_value::Value::StringValue("18446744073709551615".into()))
        );
        assert_eq!(val(4), Some(any_value::Value::DoubleValue(1.5)));
        assert_eq!(val(5), Some(any_value::Value::BoolValue(true)));
        assert_eq!(val(6), None);
        assert_eq!(s(&event_body("not json")), "not json");
        assert_eq!(
            event_body(" ").value,
            Some(any_value::Value::KvlistValue(KeyValueList::default()))
        );
    }

    #[test]
    fn the_direct_encoding_decodes_to_the_built_request() {
        let _rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let _guard = _rt.enter();
        let exporter =
            OtlpExporter::new(&OtlpConfig::new("http://127.0.0.1:1", "node-1")).expect("exporter");
        let long = "x".repeat(300);
        let bodies = [
            r#"{"operation":"File","permissions":["read","write"],"n":-3,"big":18446744073709551615,"x":1.5,"ok":true,"f":false,"none":null,"nested":{"a":[[],{},[null,0]]}}"#.to_string(),
            format!(r#"{{"path":"{long}","e":"é
"}}"#),
            "not json".into(),
            "{\"unterminated\": [1,".into(),
            "{} trailing".into(),
            " ".into(),
            String::new(),
            "null".into(),
            "7".into(),
        ];
        let events: Vec<v1::Event> = bodies
            .iter()
            .enumerate()
            .map(|(i, body)| v1::Event {
                node_name: "node-1".into(),
                pod_name: if i % 2 == 0 {
                    long.clone()
                } else {
                    String::new()
                },
                pod_namespace: "demo".into(),
                container_id: "c".repeat(64),
                action: ["DENIED", "AUDIT", "AUDIT|ALLOWED"][i % 3].into(),
                enforcer: i as i32 % 4,
                pid: if i == 0 { 0 } else { 1000 + i as u32 },
                mnt_ns_id: 4_026_531_840,
                sequence: if i == 1 { u64::MAX } else { i as u64 },
                time: (i != 2).then(|| prost_types::Timestamp {
                    seconds: 1_700_000_000 + i as i64,
                    nanos: 5,
                }),
                event_json: body.clone(),
                ..Default::default()
            })
            .collect();
        let mut buf = Vec::new();
        for dropped in [0, 3] {
            for n in [0, 1, events.len()] {
                let observed = 1_800_000_000_000_000_000;
                exporter.encode_request(&events[..n], dropped, observed, &mut buf);
                let decoded: ExportLogsServiceRequest =
                    prost::Message::decode(buf.as_slice()).expect("decodes");
                let mut built = exporter.request(&events[..n], dropped);
                for r in &mut built.resource_logs[0].scope_logs[0].log_records {
                    r.observed_time_unix_nano = observed;
                    if r.event_name != EVENT_NAME {
                        r.time_unix_nano = observed;
                    }
                }
                assert_eq!(decoded, built, "{n} events, {dropped} dropped");
            }
        }
    }

    #[test]
    fn the_fast_body_encoding_equals_serdes() {
        let (mut fast, mut general) = (Vec::new(), Vec::new());
        for text in json::tests::corpus() {
            fast.clear();
            write_body(&mut fast, &text);
            general.clear();
            let body = wire::begin(&mut general, 5);
            if text.trim().is_empty() {
                let list = wire::begin(&mut general, 6);
                wire::end(&mut general, list);
            } else {
                write_body_serde(&mut general, &text);
            }
            wire::end(&mut general, body);
            assert_eq!(fast, general, "{text:?}");
        }
    }

    #[test]
    fn lengths_of_every_size_encode_like_prost() {
        for len in [0, 1, 127, 128, 300, 16_383, 16_384, 2_097_151, 2_097_152] {
            let content = vec![b'x'; len];
            let mut ours = vec![7u8];
            let start = wire::begin(&mut ours, 5);
            ours.extend_from_slice(&content);
            wire::end(&mut ours, start);
            let mut want = vec![7u8];
            prost::encoding::bytes::encode(5, &content, &mut want);
            assert!(ours == want, "content of {len} bytes");
        }
    }

    #[test]
    fn severity_follows_the_action() {
        assert_eq!(severity("DENIED").1, "WARN");
        assert_eq!(severity("AUDIT").1, "INFO");
        assert_eq!(severity("AUDIT|ALLOWED").0, SeverityNumber::Info);
    }

    #[test]
    fn settings_are_checked_with_their_name() {
        let _rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let _guard = _rt.enter();
        let mut c = OtlpConfig::new("collector:4317", "n1");
        let e = OtlpExporter::new(&c).unwrap_err().to_string();
        assert!(
            e.contains("setting endpoint") && e.contains("http://"),
            "{e}"
        );
        c.endpoint = "http://collector:4317".into();
        c.headers = vec![("bad header".into(), "v".into())];
        let e = OtlpExporter::new(&c).unwrap_err().to_string();
        assert!(e.contains("setting headers"), "{e}");
        c.headers = vec![OtlpConfig::parse_header("Authorization = Bearer x").unwrap()];
        assert_eq!(c.headers[0].0, "authorization");
        c.batch_size = 0;
        let e = OtlpExporter::new(&c).unwrap_err().to_string();
        assert!(e.contains("batch_size"), "{e}");
        c.batch_size = 1;
        c.ca_file = Some("/nonexistent".into());
        let e = OtlpExporter::new(&c).unwrap_err().to_string();
        assert!(e.contains("plain http://"), "{e}");
        c.endpoint = "https://collector:4317".into();
        let e = OtlpExporter::new(&c).unwrap_err().to_string();
        assert!(e.contains("CA bundle /nonexistent"), "{e}");
        assert!(OtlpConfig::parse_header("novalue").is_err());
        assert!(
            !format!("{c:?}").contains("Bearer"),
            "header values stay out of logs"
        );
    }
}
