//! Prometheus metrics over plain HTTP, shared by the manager and the node agent.
//!
//! * [`serve`] answers `GET /metrics` (and `HEAD`) with the text of a
//!   [`prometheus_client::registry::Registry`], `404` for every other path and `405` for other
//!   methods, until a shutdown future resolves; [`MetricsServer`] is the same with a handle
//!   that binds, reports the bound address and stops.
//! * The format follows the scraper's `Accept` header ([`Format::negotiate`]): OpenMetrics
//!   1.0 when it asks for `application/openmetrics-text` (Prometheus does by default), the
//!   Prometheus text format 0.0.4 otherwise (`curl`). Counters carry the `_total` suffix in
//!   both.
//! * [`Exposition::parse`] reads either text back, for tests and tools.
//!
//! The endpoint has no TLS and no authentication: bind it to loopback or a pod-internal
//! address. At most [`MAX_CONNECTIONS`] connections are served at once (further ones wait in
//! the listen backlog) and a client has [`HEADER_TIMEOUT`] to send its request headers.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ACCEPT, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

/// The one path that is served.
pub const PATH: &str = "/metrics";
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 32;
/// How long a client may take to send its request headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open connections get to finish at shutdown before they are closed.
const GRACE: Duration = Duration::from_secs(2);

/// The `Content-Type` of OpenMetrics text 1.0.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The `Content-Type` of the Prometheus text format 0.0.4.
pub const PROMETHEUS_CONTENT_TYPE: &str =
    prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// A text exposition format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 text (`# EOF` at the end, `# UNIT` lines).
    OpenMetrics,
    /// The Prometheus text format 0.0.4.
    Prometheus,
}

impl Format {
    /// The format for a request's `Accept` header: OpenMetrics when the header lists
    /// `application/openmetrics-text` with a quality above zero and at least that of
    /// `text/plain`; the Prometheus text format otherwise (also without a header).
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Prometheus;
        };
        let mut openmetrics: Option<f32> = None;
        let mut plain: f32 = 0.0;
        for range in accept.split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
                .and_then(|(_, v)| v.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            match media.as_str() {
                "application/openmetrics-text" => {
                    openmetrics = Some(openmetrics.map_or(q, |o| o.max(q)));
                }
                "text/plain" => plain = plain.max(q),
                _ => {}
            }
        }
        match openmetrics {
            Some(q) if q > 0.0 && q >= plain => Format::OpenMetrics,
            _ => Format::Prometheus,
        }
    }

    /// The `Content-Type` of a response in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
            Format::Prometheus => PROMETHEUS_CONTENT_TYPE,
        }
    }
}

/// The text of every metric in `registry`. Fails only when a collector fails.
pub fn encode(registry: &Registry, format: Format) -> Result<String, std::fmt::Error> {
    let mut out = String::with_capacity(4096);
    match format {
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, registry)?,
        Format::Prometheus => {
            prometheus_client::encoding::prometheus_text::encode(&mut out, registry)?
        }
    }
    Ok(out)
}

/// Errors of the metrics endpoint.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The listen address cannot be bound.
    #[error("cannot listen for metrics on {addr}: {cause}")]
    Bind {
        /// The address (`--metrics-listen`).
        addr: SocketAddr,
        /// Why.
        cause: io::Error,
    },
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn respond(registry: &Registry, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path() != PATH {
        return plain(
            StatusCode::NOT_FOUND,
            "not found: metrics are at /metrics\n",
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed: use GET /metrics\n",
        );
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let format = Format::negotiate(req.headers().get(ACCEPT).and_then(|v| v.to_str().ok()));
    match encode(registry, format) {
        Ok(text) => {
            let mut r = Response::new(Full::new(Bytes::from(text)));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(format.content_type()),
            );
            r
        }
        Err(_) => {
            tracing::error!("a metrics collector failed; scrape answered with 500");
            plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "a metrics collector failed; see the log\n",
            )
        }
    }
}

/// Serves `registry` on `listener` until `shutdown` resolves; then stops accepting, lets open
/// connections finish their request (at most 2 s) and returns. Accept errors are logged and
/// retried, never fatal.
pub async fn serve<F>(listener: TcpListener, registry: Arc<Registry>, shutdown: F)
where
    F: Future<Output = ()> + Send,
{
    let (stop_tx, stop_rx) = watch::channel(false);
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            p = limit.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            a = listener.accept() => a,
        };
        while conns.try_join_next().is_some() {}
        let (tcp, peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let registry = registry.clone();
        let mut stop = stop_rx.clone();
        conns.spawn(async move {
            let _permit = permit;
            let service = service_fn(move |req: Request<Incoming>| {
                let response = respond(&registry, &req);
                async move { Ok::<_, Infallible>(response) }
            });
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let conn = builder.serve_connection(TokioIo::new(tcp), service);
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                () = async { let _ = stop.wait_for(|s| *s).await.map(|_| ()); } => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(peer = %peer, error = %e, "metrics: connection ended with an error");
            }
        });
    }
    drop(listener);
    stop_tx.send_replace(true);
    let drained =
        tokio::time::timeout(GRACE, async { while conns.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::debug!("metrics: closing connections still open after the grace period");
        conns.abort_all();
    }
}

/// A running metrics endpoint; dropping it stops the server too (without waiting).
#[derive(Debug)]
pub struct MetricsServer {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Binds `addr` (port 0 picks a free port) and serves `registry` there.
    pub async fn start(addr: SocketAddr, registry: Arc<Registry>) -> Result<Self, MetricsError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|cause| MetricsError::Bind { addr, cause })?;
        let local_addr = listener
            .local_addr()
            .map_err(|cause| MetricsError::Bind { addr, cause })?;
        let (stop, mut rx) = watch::channel(false);
        let task = tokio::spawn(serve(listener, registry, async move {
            let _ = rx.wait_for(|s| *s).await.map(|_| ());
        }));
        tracing::info!(addr = %local_addr, "serving Prometheus metrics at /metrics");
        Ok(MetricsServer {
            local_addr,
            stop,
            task: Some(task),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, lets open connections finish and waits until the port is released.
    pub async fn shutdown(mut self) {
        self.stop.send_replace(true);
        if let Some(task) = self.task.take() {
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "metrics server task failed");
            }
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// One sample of an exposition: a series name (with its `_total`, `_bucket`, ... suffix),
/// its labels and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The series name.
    pub name: String,
    /// The labels.
    pub labels: BTreeMap<String, String>,
    /// The value.
    pub value: f64,
}

/// A parse error of exposition text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("metrics text line {line}: {reason}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

/// Parsed exposition text (OpenMetrics or Prometheus 0.0.4): the samples and the declared
/// type of each family.
#[derive(Debug, Clone, Default)]
pub struct Exposition {
    /// Every sample, in text order.
    pub samples: Vec<Sample>,
    /// `# TYPE` declarations: family name to type (`counter`, `gauge`, `histogram`, ...).
    pub types: BTreeMap<String, String>,
    /// Whether the text ended with OpenMetrics' `# EOF`.
    pub eof: bool,
}

impl Exposition {
    /// Parses the text of a scrape. Exemplars and timestamps are accepted and ignored.
    pub fn parse(text: &str) -> Result<Exposition, ParseError> {
        let mut out = Exposition::default();
        for (i, line) in text.lines().enumerate() {
            let err = |reason: String| ParseError {
                line: i + 1,
                reason,
            };
            if out.eof {
                return Err(err("text after # EOF".into()));
            }
            if line.is_empty() {
                continue;
            }
            if let Some(comment) = line.strip_prefix('#') {
                let comment = comment.trim_start();
                if comment == "EOF" {
                    out.eof = true;
                } else if let Some(rest) = comment.strip_prefix("TYPE ") {
                    let (name, kind) = rest
                        .split_once(' ')
                        .ok_or_else(|| err(format!("TYPE without a type: {line:?}")))?;
                    out.types.insert(name.to_string(), kind.trim().to_string());
                }
                continue;
            }
            out.samples.push(parse_sample(line).map_err(err)?);
        }
        Ok(out)
    }

    /// The value of the sample named `name` whose labels are exactly `labels`.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && s.labels.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
            })
            .map(|s| s.value)
    }

    /// Every sample named `name`.
    pub fn series<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.name == name)
    }
}

fn is_name_char(c: char, first: bool) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':' || (!first && c.is_ascii_digit())
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line
        .char_indices()
        .find(|&(i, c)| !is_name_char(c, i == 0))
        .map_or(line.len(), |(i, _)| i);
    if name_end == 0 {
        return Err(format!("expected a metric name: {line:?}"));
    }
    let name = line[..name_end].to_string();
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices().peekable();
        let consumed = loop {
            while chars.peek().is_some_and(|&(_, c)| c == ',' || c == ' ') {
                chars.next();
            }
            let Some(&(start, c)) = chars.peek() else {
                return Err(format!("unterminated label set: {line:?}"));
            };
            if c == '}' {
                break start + 1;
            }
            let mut key_end = start;
            while let Some(&(i, c)) = chars.peek() {
                if c == '=' {
                    key_end = i;
                    break;
                }
                if !is_name_char(c, i == start) {
                    return Err(format!("bad label name in {line:?}"));
                }
                chars.next();
            }
            let key = after[start..key_end].to_string();
            if key.is_empty() {
                return Err(format!("empty label name in {line:?}"));
            }
            chars.next(); // '='
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err(format!("label {key} has no quoted value: {line:?}"));
            }
            let mut value = String::new();
            loop {
                match chars.next() {
                    Some((_, '"')) => break,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c)) => value.push(c),
                        None => return Err(format!("unterminated label value: {line:?}")),
                    },
                    Some((_, c)) => value.push(c),
                    None => return Err(format!("unterminated label value: {line:?}")),
                }
            }
            if labels.insert(key.clone(), value).is_some() {
                return Err(format!("label {key} appears twice: {line:?}"));
            }
        };
        rest = &after[consumed..];
    }
    let value_text = rest
        .split_whitespace()
        .next()
        .ok_or_else(|| format!("sample without a value: {line:?}"))?;
    let value = match value_text {
        "+Inf" | "Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v
            .parse::<f64>()
            .map_err(|_| format!("value {v:?} is not a number: {line:?}"))?,
    };
    Ok(Sample {
        name,
        labels,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_follows_the_accept_header() {
        assert_eq!(Format::negotiate(None), Format::Prometheus);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Prometheus);
        // Prometheus' default scrape protocols.
        assert_eq!(
            Format::negotiate(Some(
                "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
            )),
            Format::OpenMetrics
        );
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text;q=0, text/plain")),
            Format::Prometheus
        );
        assert_eq!(
            Format::negotiate(Some("text/plain;q=0.9, application/openmetrics-text;q=0.5")),
            Format::Prometheus
        );
    }

    #[test]
    fn samples_parse_with_escapes_and_special_values() {
        let text = "# HELP a_total An a.\n# TYPE a counter\na_total{node_name=\"n\\\"1\",x=\"a\\\\b\\nc\"} 3\nb +Inf\nc{} 1.5e3 1700000000\n# EOF\n";
        let e = Exposition::parse(text).expect("parses");
        assert!(e.eof);
        assert_eq!(e.types.get("a").map(String::as_str), Some("counter"));
        assert_eq!(
            e.get("a_total", &[("node_name", "n\"1"), ("x", "a\\b\nc")]),
            Some(3.0)
        );
        assert_eq!(e.get("a_total", &[("node_name", "n\"1")]), None);
        assert_eq!(e.get("b", &[]), Some(f64::INFINITY));
        assert_eq!(e.get("c", &[]), Some(1500.0));
    }

    #[test]
    fn bad_text_names_the_line() {
        let e = Exposition::parse("ok 1\nbad{x=1} 2\n").expect_err("unquoted value");
        assert_eq!(e.line, 2);
        assert!(e.to_string().contains("no quoted value"), "{e}");
        let e = Exposition::parse("a 1\n# EOF\nb 2\n").expect_err("after EOF");
        assert_eq!(e.line, 3);
        let e = Exposition::parse("a one\n").expect_err("not a number");
        assert!(e.reason.contains("not a number"), "{e}");
    }
}
