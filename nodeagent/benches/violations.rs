//! Violation pipeline throughput: ring-buffer record bytes → `BpfEvent::decode` → `to_proto`
//! → `Pipeline::submit` → all three sinks (upstream `EventBuffer` with no manager, so it only
//! fills; `violations.log` in a temporary directory; OTLP to a local receiver).
//!
//! Run: `cargo bench -p varmor-agent --bench violations`. To hold the pipeline to one core,
//! pin the process: `taskset -c 0 cargo bench -p varmor-agent --bench violations` (the
//! pipeline's Tokio runtime is current-thread; the file writer is its own thread, and the
//! receiver runs on another thread — pinned, all of them share the core). The bench prints the
//! CPUs it may use.
//!
//! Two measurements, side by side in one run:
//! 1. Throughput: N events submitted as fast as the producer can, queues sized to hold them
//!    all; time until every sink delivered all of them. Goal ≥ 200,000 events/s.
//! 2. Loss: 50,000 events/s offered for 5 s (paced in 1 ms steps), default queue sizes.
//!    Goal: no event lost in any sink.
//!
//! No enrichment (container/pod lookup) is done here: that is not part of the fan-out.

#[path = "../tests/otlp_support/mod.rs"]
mod otlp_support;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use otlp_support::records::Record;
use otlp_support::Receiver;
use varmor_agent::enforcer::bpf::events::BpfEvent;
use varmor_agent::enforcer::bpf::layout::*;
use varmor_agent::violations::fanout::{Pipeline, PipelineConfig};
use varmor_agent::violations::logfile::ViolationLogConfig;
use varmor_agent::violations::otlp::OtlpConfig;
use varmor_agent::EventBuffer;
use varmor_policy::names::perm;

const GOAL_RATE: f64 = 200_000.0;
const OFFERED_RATE: u64 = 50_000;
const OFFERED_SECS: u64 = 5;

/// A mix of record kinds, paths and pids, as the ring buffer would deliver them.
fn records() -> Vec<Vec<u8>> {
    let paths = [
        "/etc/shadow",
        "/proc/sys/kernel/core_pattern",
        "/var/run/secrets/kubernetes.io/serviceaccount/token",
        "/bin/sh",
    ];
    (0..1024u32)
        .map(|i| {
            let base = Record {
                action: if i % 4 == 0 {
                    VA_EVENT_AUDIT
                } else {
                    VA_EVENT_DENIED
                },
                mnt_ns: 4_026_532_000 + i % 64,
                tgid: 1000 + i,
                ktime_ns: 1_000_000_000 * u64::from(i),
                ..Default::default()
            };
            match i % 4 {
                0 | 1 => Record {
                    kind: VA_EV_FILE,
                    perms: perm::READ | perm::WRITE,
                    path: paths[(i / 4) as usize % paths.len()],
                    ..base
                },
                2 => Record {
                    kind: VA_EV_EXEC,
                    path: "/bin/sh",
                    ..base
                },
                _ => Record {
                    kind: VA_EV_CONNECT,
                    a: 4,
                    b: 80,
                    addr: [0xa9fe_a9fe, 0, 0, 0],
                    ..base
                },
            }
            .bytes()
        })
        .collect()
}

struct Setup {
    pipeline: Pipeline,
    upstream: Arc<EventBuffer>,
    _dir: tempfile::TempDir,
}

fn setup(endpoint: Option<String>, queue: Option<usize>) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let upstream = Arc::new(EventBuffer::open("bench-node", 4_000_000, None).expect("buffer"));
    let mut config = PipelineConfig::new("bench-node");
    let mut log = ViolationLogConfig::new("bench-node", "varmor");
    log.path = dir.path().join("violations.log");
    config.log = Some(log);
    if let Some(q) = queue {
        config.log_queue = q;
    }
    config.otlp = endpoint.map(|endpoint| {
        let mut otlp = OtlpConfig::new(endpoint, "bench-node");
        otlp.batch_timeout = Duration::from_millis(100);
        if let Some(q) = queue {
            otlp.queue_capacity = q;
        }
        otlp
    });
    let pipeline = Pipeline::start(config, Some(upstream.clone())).expect("pipeline");
    Setup {
        pipeline,
        upstream,
        _dir: dir,
    }
}

fn event(bytes: &[u8], boot: SystemTime) -> varmor_proto::v1::Event {
    BpfEvent::decode(bytes)
        .expect("decode")
        .to_proto("varmor-demo-web", boot)
}

/// Waits until every queued sink accounted for `n` events (written or dropped).
async fn drained(p: &Pipeline, n: u64) {
    loop {
        if p.sink_counters()
            .iter()
            .all(|c| c.written() + c.dropped() >= n)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn report(label: &str, p: &Pipeline) {
    for s in p.sink_stats() {
        println!(
            "  {label:<11} {:<15} written {:>9}  dropped {:>7}  errors {:>3}",
            s.name, s.written, s.dropped, s.errors
        );
    }
}

fn main() {
    let cpus = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Cpus_allowed_list"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    println!("violation pipeline bench; CPUs allowed: {cpus} (pin with taskset -c 0)");

    // The collector runs on its own thread and runtime.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("receiver runtime");
        rt.block_on(async {
            let r = Receiver::start_on("127.0.0.1:0".parse().unwrap(), false).await;
            tx.send(r.endpoint()).unwrap();
            std::future::pending::<()>().await;
            drop(r);
        });
    });
    let endpoint = rx.recv().expect("receiver endpoint");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let records = records();
    let boot = SystemTime::now() - Duration::from_secs(3600);

    rt.block_on(async {
        // Decode + to_proto alone, for the ratio.
        const N: u64 = 400_000;
        let t = Instant::now();
        let mut sink = 0usize;
        for i in 0..N as usize {
            sink += event(&records[i % records.len()], boot).event_json.len();
        }
        let decode_rate = N as f64 / t.elapsed().as_secs_f64();
        std::hint::black_box(sink);

        // The OTLP request alone: build (event JSON → kvlist, attributes) and encode.
        let exporter = varmor_agent::violations::otlp::OtlpExporter::new(&OtlpConfig::new(
            endpoint.clone(),
            "bench-node",
        ))
        .expect("exporter");
        let batch: Vec<_> = (0..512).map(|i| event(&records[i], boot)).collect();
        let t = Instant::now();
        let mut bytes = 0usize;
        let rounds = 200;
        for _ in 0..rounds {
            let req = exporter.request(batch.iter(), 0);
            bytes = prost::Message::encode_to_vec(&req).len();
        }
        let otlp_build_rate = (rounds * batch.len()) as f64 / t.elapsed().as_secs_f64();
        println!(
            "  OTLP build+encode only        {otlp_build_rate:>10.0} events/s ({bytes} bytes per 512)"
        );

        // Upstream and the file only, for the ratio.
        let s = setup(None, Some(N as usize));
        let t = Instant::now();
        for i in 0..N as usize {
            s.pipeline.submit(event(&records[i % records.len()], boot));
        }
        drained(&s.pipeline, N).await;
        let no_otlp_rate = N as f64 / t.elapsed().as_secs_f64();
        s.pipeline.shutdown(Duration::from_secs(10)).await;
        println!(
            "  upstream + violations.log     {no_otlp_rate:>10.0} events/s (no OTLP)"
        );

        // 1. Throughput.
        let s = setup(Some(endpoint.clone()), Some(N as usize));
        let t = Instant::now();
        for i in 0..N as usize {
            s.pipeline.submit(event(&records[i % records.len()], boot));
            if i % 1024 == 1023 {
                tokio::task::yield_now().await;
            }
        }
        let submitted = t.elapsed();
        drained(&s.pipeline, N).await;
        let all = t.elapsed();
        let rate = N as f64 / all.as_secs_f64();
        let submit_rate = N as f64 / submitted.as_secs_f64();
        println!("throughput, {N} events (queues hold them all):");
        println!(
            "  decode+to_proto only          {decode_rate:>10.0} events/s"
        );
        println!(
            "  producer (decode+submit)      {submit_rate:>10.0} events/s"
        );
        println!(
            "  delivered to all sinks        {rate:>10.0} events/s  = {:.2} x the goal of {GOAL_RATE:.0}/s",
            rate / GOAL_RATE
        );
        assert_eq!(s.upstream.counters().produced, N);
        report("throughput", &s.pipeline);
        s.pipeline.shutdown(Duration::from_secs(10)).await;

        // 2. Loss at the offered rate, default queues.
        let s = setup(Some(endpoint.clone()), None);
        let total = OFFERED_RATE * OFFERED_SECS;
        let per_ms = OFFERED_RATE / 1000;
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let t = Instant::now();
        let mut i = 0usize;
        while (i as u64) < total {
            tick.tick().await;
            for _ in 0..per_ms {
                s.pipeline.submit(event(&records[i % records.len()], boot));
                i += 1;
            }
        }
        let offered_for = t.elapsed();
        drained(&s.pipeline, total).await;
        let lost: u64 = s
            .pipeline
            .sink_stats()
            .iter()
            .map(|x| x.dropped)
            .sum();
        println!(
            "loss at {OFFERED_RATE} events/s offered for {:.2} s ({total} events): {lost} lost (goal 0) — {}",
            offered_for.as_secs_f64(),
            if lost == 0 { "met" } else { "NOT met" }
        );
        report("offered", &s.pipeline);
        s.pipeline.shutdown(Duration::from_secs(10)).await;
    });
}
