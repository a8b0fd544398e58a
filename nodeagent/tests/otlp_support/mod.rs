//! A real OTLP/gRPC log receiver for tests and the bench: the `LogsService` of
//! `opentelemetry-proto` served by tonic on a loopback port. It keeps what it receives (or only
//! counts it), and can be told to stall (hold every request without answering until released)
//! to play a collector that does not keep up.
//!
//! [`Receiver::start_counting`] serves the same RPC but decodes each request only down to its
//! log records (kept as bytes) to count them: for the bench, where the collector's own
//! decoding (a full message tree, several allocations per attribute) is not the pipeline's
//! cost and would otherwise dominate a single-core measurement.

#![allow(dead_code)] // each test binary uses a different part

mod counting;
pub mod records;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use tokio::sync::{oneshot, Notify};
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

/// One received record with the resource attributes of its batch.
#[derive(Debug, Clone)]
pub struct Received {
    pub resource: Vec<KeyValue>,
    pub scope_name: String,
    pub record: LogRecord,
}

#[derive(Debug, Default)]
struct State {
    keep: bool,
    stalled: AtomicBool,
    release: Notify,
    requests: AtomicU64,
    records: AtomicU64,
    received: Mutex<Vec<Received>>,
    got: Notify,
}

struct Service(Arc<State>);

#[tonic::async_trait]
impl LogsService for Service {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        let s = &self.0;
        if s.stalled.load(Ordering::SeqCst) {
            // Hold the request until released; the client has timed out by then, so the
            // records are not taken.
            while s.stalled.load(Ordering::SeqCst) {
                let released = s.release.notified();
                if !s.stalled.load(Ordering::SeqCst) {
                    break;
                }
                released.await;
            }
            return Err(Status::unavailable("stalled"));
        }
        let req = request.into_inner();
        s.requests.fetch_add(1, Ordering::SeqCst);
        let mut n = 0;
        let mut kept = Vec::new();
        for rl in req.resource_logs {
            let resource = rl.resource.map(|r| r.attributes).unwrap_or_default();
            for sl in rl.scope_logs {
                let scope_name = sl.scope.map(|s| s.name).unwrap_or_default();
                n += sl.log_records.len() as u64;
                if s.keep {
                    kept.extend(sl.log_records.into_iter().map(|record| Received {
                        resource: resource.clone(),
                        scope_name: scope_name.clone(),
                        record,
                    }));
                }
            }
        }
        if s.keep {
            s.received.lock().unwrap().extend(kept);
        }
        s.records.fetch_add(n, Ordering::SeqCst);
        s.got.notify_waiters();
        Ok(Response::new(ExportLogsServiceResponse::default()))
    }
}

/// A running receiver; stops when dropped.
#[derive(Debug)]
pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<State>,
    stop: Option<oneshot::Sender<()>>,
}

impl Receiver {
    /// Starts on a free loopback port, keeping every record.
    pub async fn start() -> Receiver {
        Self::start_on("127.0.0.1:0".parse().unwrap(), true).await
    }

    /// Starts on `addr`; `keep` false only counts records (for the bench).
    pub async fn start_on(addr: SocketAddr, keep: bool) -> Receiver {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("bind the OTLP receiver to {addr}: {e}"));
        let state = Arc::new(State {
            keep,
            ..Default::default()
        });
        let svc =
            LogsServiceServer::new(Service(state.clone())).max_decoding_message_size(64 << 20);
        Self::serve(listener, state, svc)
    }

    /// Starts on `addr`, only counting records (see the module docs).
    pub async fn start_counting(addr: SocketAddr) -> Receiver {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("bind the OTLP receiver to {addr}: {e}"));
        let state = Arc::new(State::default());
        Self::serve(listener, state.clone(), counting::CountingServer(state))
    }

    fn serve<S>(listener: tokio::net::TcpListener, state: Arc<State>, svc: S) -> Receiver
    where
        S: tonic::codegen::Service<
                tonic::codegen::http::Request<tonic::body::Body>,
                Error = std::convert::Infallible,
                Response = tonic::codegen::http::Response<tonic::body::Body>,
            > + tonic::server::NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        // Like real collectors (Go's net package sets TCP_NODELAY; grpc-go grows its windows
        // with BDP estimation): without these, Nagle's algorithm and 64 KiB windows turn
        // every large export into several delayed round trips.
        let incoming = TcpListenerStream::new(listener).map(|conn| {
            let conn = conn?;
            conn.set_nodelay(true)?;
            Ok::<_, std::io::Error>(conn)
        });
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .initial_stream_window_size(Some(8 << 20))
                .initial_connection_window_size(Some(16 << 20))
                .add_service(svc)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await
                .expect("OTLP receiver");
        });
        Receiver {
            addr,
            state,
            stop: Some(stop),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Holds (true) or answers (false) requests.
    pub fn set_stalled(&self, stalled: bool) {
        self.state.stalled.store(stalled, Ordering::SeqCst);
        if !stalled {
            self.state.release.notify_waiters();
        }
    }

    /// Records received (counted even when not kept).
    pub fn count(&self) -> u64 {
        self.state.records.load(Ordering::SeqCst)
    }

    /// Requests answered.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// The records kept so far.
    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// Waits until `done(received records)` holds, or panics after `timeout`.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&[Received]) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let got = self.state.got.notified();
            if done(&self.state.received.lock().unwrap()) {
                return;
            }
            if tokio::time::timeout_at(deadline, got).await.is_err() {
                let n = self.state.received.lock().unwrap().len();
                panic!("OTLP receiver: {what} not seen within {timeout:?} ({n} records received)");
            }
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.set_stalled(false);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The value of attribute `key`, if present.
pub fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

/// An `AnyValue` as JSON (kvlists as objects), to compare bodies with `event_json`.
pub fn to_json(v: &AnyValue) -> serde_json::Value {
    use serde_json::Value as J;
    match &v.value {
        None => J::Null,
        Some(any_value::Value::StringValue(s)) => J::String(s.clone()),
        Some(any_value::Value::BoolValue(b)) => J::Bool(*b),
        Some(any_value::Value::IntValue(i)) => J::from(*i),
        Some(any_value::Value::DoubleValue(d)) => J::from(*d),
        Some(any_value::Value::ArrayValue(a)) => J::Array(a.values.iter().map(to_json).collect()),
        Some(any_value::Value::KvlistValue(l)) => J::Object(
            l.values
                .iter()
                .map(|kv| (kv.key.clone(), kv.value.as_ref().map_or(J::Null, to_json)))
                .collect(),
        ),
        Some(other) => panic!("unexpected AnyValue {other:?}"),
    }
}
