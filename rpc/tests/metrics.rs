//! The metrics endpoint over real HTTP on loopback, and the handshake-failure report of the
//! TLS listener that feeds the `tls_handshake_failures` metric.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use varmor_rpc::metrics::{Exposition, MetricsServer};

const PATIENCE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabel {
    node_name: String,
}

/// A plain HTTP/1.1 exchange: status, headers (lower-case names) and body.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

async fn http(addr: SocketAddr, method: &str, path: &str, accept: Option<&str>) -> Reply {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    let request =
        format!("{method} {path} HTTP/1.1\r\nHost: test\r\n{accept}Connection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.expect("send");
    let mut raw = Vec::new();
    tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut raw))
        .await
        .expect("reply within the patience")
        .expect("read");
    let text = String::from_utf8(raw).expect("utf-8 reply");
    let (head, body) = text.split_once("\r\n\r\n").expect("header end");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_string(),
    }
}

struct Fixture {
    requests: Family<NodeLabel, Counter>,
    depth: Gauge,
    latency: Histogram,
    registry: Arc<Registry>,
}

fn fixture() -> Fixture {
    let mut registry = Registry::default();
    let requests = Family::<NodeLabel, Counter>::default();
    let depth = Gauge::default();
    let latency = Histogram::new([0.001, 0.01, 0.1]);
    registry.register("test_requests", "Requests by node", requests.clone());
    registry.register("test_queue_depth", "Queued items", depth.clone());
    registry.register_with_unit("test_latency", "Latency", Unit::Seconds, latency.clone());
    Fixture {
        requests,
        depth,
        latency,
        registry: Arc::new(registry),
    }
}

#[tokio::test]
async fn scrapes_show_the_values_after_known_operations() {
    let f = fixture();
    let server = MetricsServer::start("127.0.0.1:0".parse().expect("addr"), f.registry.clone())
        .await
        .expect("metrics server starts");
    let addr = server.local_addr();

    f.requests
        .get_or_create(&NodeLabel {
            node_name: "n1".into(),
        })
        .inc_by(3);
    f.requests
        .get_or_create(&NodeLabel {
            node_name: "n\"2".into(),
        })
        .inc();
    f.depth.set(7);
    f.latency.observe(0.005);
    f.latency.observe(0.5);

    // What Prometheus asks for: OpenMetrics, ending with # EOF.
    let r = http(
        addr,
        "GET",
        "/metrics",
        Some("application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    let e = Exposition::parse(&r.body).expect("valid OpenMetrics text");
    assert!(e.eof, "OpenMetrics ends with # EOF:\n{}", r.body);
    assert_eq!(
        e.types.get("test_requests").map(String::as_str),
        Some("counter")
    );
    assert_eq!(
        e.get("test_requests_total", &[("node_name", "n1")]),
        Some(3.0)
    );
    assert_eq!(
        e.get("test_requests_total", &[("node_name", "n\"2")]),
        Some(1.0)
    );
    assert_eq!(e.get("test_queue_depth", &[]), Some(7.0));
    assert_eq!(
        e.types.get("test_latency_seconds").map(String::as_str),
        Some("histogram")
    );
    assert_eq!(e.get("test_latency_seconds_count", &[]), Some(2.0));
    assert_eq!(
        e.get("test_latency_seconds_bucket", &[("le", "0.01")]),
        Some(1.0)
    );
    assert_eq!(
        e.get("test_latency_seconds_bucket", &[("le", "+Inf")]),
        Some(2.0)
    );
    assert!((e.get("test_latency_seconds_sum", &[]).expect("sum") - 0.505).abs() < 1e-9);

    // What curl gets: the Prometheus text format, with the same values.
    f.requests
        .get_or_create(&NodeLabel {
            node_name: "n1".into(),
        })
        .inc();
    let r = http(addr, "GET", "/metrics", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let e = Exposition::parse(&r.body).expect("valid Prometheus text");
    assert!(!e.eof);
    assert_eq!(
        e.get("test_requests_total", &[("node_name", "n1")]),
        Some(4.0)
    );
    assert_eq!(e.get("test_latency_seconds_count", &[]), Some(2.0));

    // HEAD: the headers without the body.
    let r = http(addr, "HEAD", "/metrics", None).await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty(), "{}", r.body);

    server.shutdown().await;
}

#[tokio::test]
async fn other_paths_and_methods_are_refused() {
    let f = fixture();
    let server = MetricsServer::start("127.0.0.1:0".parse().expect("addr"), f.registry.clone())
        .await
        .expect("metrics server starts");
    let addr = server.local_addr();
    for path in ["/", "/metric", "/metrics/x", "/healthz"] {
        let r = http(addr, "GET", path, None).await;
        assert_eq!(r.status, 404, "{path}");
        assert!(r.body.contains("/metrics"), "{path}: {}", r.body);
    }
    let r = http(addr, "POST", "/metrics", None).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    // A query string does not change the path.
    let r = http(addr, "GET", "/metrics?x=1", None).await;
    assert_eq!(r.status, 200);
    server.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_idle_connections_and_releases_the_port() {
    let f = fixture();
    let server = MetricsServer::start("127.0.0.1:0".parse().expect("addr"), f.registry.clone())
        .await
        .expect("metrics server starts");
    let addr = server.local_addr();
    // A keep-alive connection that has been served once and then idles.
    let mut idle = TcpStream::connect(addr).await.expect("connect");
    idle.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .expect("send");
    let mut buf = vec![0u8; 64 * 1024];
    let n = tokio::time::timeout(PATIENCE, idle.read(&mut buf))
        .await
        .expect("reply")
        .expect("read");
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );

    let started = std::time::Instant::now();
    tokio::time::timeout(PATIENCE, server.shutdown())
        .await
        .expect("shutdown completes");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "an idle keep-alive connection must not hold up shutdown ({:?})",
        started.elapsed()
    );
    // The idle connection was closed by the server ...
    let mut rest = Vec::new();
    let read = tokio::time::timeout(PATIENCE, idle.read_to_end(&mut rest))
        .await
        .expect("the server closes the idle connection");
    if read.is_ok() {
        assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    }
    // ... and the port is free again.
    TcpListener::bind(addr)
        .await
        .expect("the port is released after shutdown");
}

#[tokio::test]
async fn binding_a_used_port_names_the_address() {
    let taken = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = taken.local_addr().expect("addr");
    let err = MetricsServer::start(addr, Arc::new(Registry::default()))
        .await
        .expect_err("address in use");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("cannot listen for metrics on {addr}: ")),
        "{text}"
    );
}

// ------------------------------------------------------------------------------------------
// Failed TLS handshakes are reported with a reason

fn self_signed() -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    let cert = params.self_signed(&key).expect("cert");
    (cert.pem(), key.serialize_pem())
}

async fn next(rx: &mut tokio::sync::mpsc::UnboundedReceiver<&'static str>) -> &'static str {
    tokio::time::timeout(PATIENCE, rx.recv())
        .await
        .expect("a failure is reported")
        .expect("channel open")
}

#[tokio::test]
async fn failed_handshakes_are_reported_with_their_reason() {
    let (cert, key) = self_signed();
    let config =
        varmor_rpc::tls::server_config(&cert, &key, &cert, varmor_rpc::tls::ClientAuth::Required)
            .expect("server config");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let _incoming = varmor_rpc::tls::tls_incoming_observed(
        listener,
        move || config.clone(),
        move |f| {
            let _ = tx.send(f.reason());
        },
    );

    // Not TLS at all.
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("send");
    assert_eq!(next(&mut rx).await, "protocol");
    drop(tcp);

    // The connection closes before the handshake.
    drop(TcpStream::connect(addr).await.expect("connect"));
    assert_eq!(next(&mut rx).await, "io");

    // TLS 1.3 without the client certificate the server requires.
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(cert.as_bytes()).expect("der"))
        .expect("root");
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("tls13")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    // With TLS 1.3 the client may finish its side first; the server refuses afterwards.
    let mut tls = connector.connect(name, tcp).await;
    if let Ok(s) = tls.as_mut() {
        let _ = s.write_all(b"x").await;
        let mut b = [0u8; 1];
        let _ = s.read(&mut b).await;
    }
    assert_eq!(next(&mut rx).await, "certificate");
}
