//! The counting `LogsService/Export` (see [`super::Receiver::start_counting`]): a hand-written
//! tonic service whose request type stops at the log records, which prost keeps as bytes.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;
use prost::bytes::Buf;
use tonic::body::Body;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http;
use tonic::codegen::BoxFuture;
use tonic::{Request, Response, Status};

use super::State;

const EXPORT: &str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";

/// `ExportLogsServiceRequest` down to `ScopeLogs.log_records`, which stay undecoded.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CountRequest {
    /// `resource_logs`.
    #[prost(message, repeated, tag = "1")]
    pub resource_logs: Vec<CountResourceLogs>,
}

/// `ResourceLogs` without its resource.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CountResourceLogs {
    /// `scope_logs`.
    #[prost(message, repeated, tag = "2")]
    pub scope_logs: Vec<CountScopeLogs>,
}

/// `ScopeLogs` without its scope; each record as its encoded bytes.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CountScopeLogs {
    /// `log_records`.
    #[prost(bytes = "bytes", repeated, tag = "2")]
    pub log_records: Vec<prost::bytes::Bytes>,
}

#[derive(Debug, Clone, Copy, Default)]
struct CountCodec;

impl Codec for CountCodec {
    type Encode = ExportLogsServiceResponse;
    type Decode = CountRequest;
    type Encoder = CountCodec;
    type Decoder = CountCodec;
    fn encoder(&mut self) -> CountCodec {
        CountCodec
    }
    fn decoder(&mut self) -> CountCodec {
        CountCodec
    }
}

impl Encoder for CountCodec {
    type Item = ExportLogsServiceResponse;
    type Error = Status;
    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        prost::Message::encode(&item, dst).map_err(|e| Status::internal(e.to_string()))
    }
}

impl Decoder for CountCodec {
    type Item = CountRequest;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<CountRequest>, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        prost::Message::decode(bytes)
            .map(Some)
            .map_err(|e| Status::invalid_argument(format!("not an OTLP logs request: {e}")))
    }
}

struct Count(Arc<State>);

impl tonic::server::UnaryService<CountRequest> for Count {
    type Response = ExportLogsServiceResponse;
    type Future = std::future::Ready<Result<Response<ExportLogsServiceResponse>, Status>>;
    fn call(&mut self, request: Request<CountRequest>) -> Self::Future {
        let n: usize = request
            .get_ref()
            .resource_logs
            .iter()
            .flat_map(|r| &r.scope_logs)
            .map(|s| s.log_records.len())
            .sum();
        self.0.requests.fetch_add(1, Ordering::SeqCst);
        self.0.records.fetch_add(n as u64, Ordering::SeqCst);
        std::future::ready(Ok(Response::new(ExportLogsServiceResponse::default())))
    }
}

/// The tonic service; serves only `Export`.
#[derive(Clone)]
pub(super) struct CountingServer(pub(super) Arc<State>);

impl tonic::server::NamedService for CountingServer {
    const NAME: &'static str = "opentelemetry.proto.collector.logs.v1.LogsService";
}

impl tonic::codegen::Service<http::Request<Body>> for CountingServer {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let state = self.0.clone();
        Box::pin(async move {
            if req.uri().path() != EXPORT {
                return Ok(Status::unimplemented(req.uri().path().to_string()).into_http());
            }
            let mut grpc = tonic::server::Grpc::new(CountCodec)
                .apply_max_message_size_config(Some(64 << 20), None);
            Ok(grpc.unary(Count(state), req).await)
        })
    }
}
