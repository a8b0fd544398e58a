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
//! The collector runs three ways: in this process (a thread sharing the pinned core, so its
//! decoding of every record into prost's message tree is charged to the pipeline) and, when
//! the bench is pinned to CPU 0 of a machine with more CPUs, as a child process pinned to CPU 1
//! (like a real collector elsewhere), once decoding every record and once only counting them
//! (`Receiver::start_counting`: the pipeline's own cost, not bounded by one receiver core).
//! All are reported.
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
            "    {label:<11} {:<15} written {:>9}  dropped {:>7}  errors {:>3}",
            s.name, s.written, s.dropped, s.errors
        );
    }
}

/// Set in the child process that only serves the receiver.
const RECEIVER_ENV: &str = "VARMOR_BENCH_RECEIVER";

/// The receiver process: serves on a free port (decoding every record, or only counting them
/// when `counting`), prints the endpoint, and exits when its stdin closes (the bench ended).
fn serve_receiver(counting: bool) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("receiver runtime");
    rt.block_on(async {
        let addr = "127.0.0.1:0".parse().unwrap();
        let r = if counting {
            Receiver::start_counting(addr).await
        } else {
            Receiver::start_on(addr, false).await
        };
        println!("{}", r.endpoint());
        let _ = tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
        })
        .await;
        drop(r);
    });
}

/// Starts the receiver as a child process pinned to `cpu` (with `taskset`), like a collector
/// on another machine or core. Returns the child and its endpoint.
fn receiver_process(cpu: &str, counting: bool) -> Result<(std::process::Child, String), String> {
    use std::io::BufRead;
    let exe = std::env::current_exe().map_err(|e| format!("the bench executable: {e}"))?;
    let mut child = std::process::Command::new("taskset")
        .args(["-c", cpu])
        .arg(exe)
        .env(RECEIVER_ENV, if counting { "count" } else { "full" })
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("taskset -c {cpu} (the receiver process): {e}"))?;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .map_err(|e| format!("the receiver's endpoint: {e}"))?;
    if !line.starts_with("http://") {
        let _ = child.kill();
        return Err(format!("the receiver printed {line:?}, not its endpoint"));
    }
    Ok((child, line.trim().to_string()))
}

/// The two goals against the receiver at `endpoint`: throughput to all sinks, and loss at the
/// offered rate. Returns (events/s, events lost).
async fn measure(label: &str, endpoint: &str, records: &[Vec<u8>], boot: SystemTime) -> (f64, u64) {
    const N: u64 = 400_000;
    println!("receiver {label}:");
    // 1. Throughput.
    let s = setup(Some(endpoint.to_string()), Some(N as usize));
    let t = Instant::now();
    for i in 0..N as usize {
        s.pipeline.submit(event(&records[i % records.len()], boot));
        if i % 1024 == 1023 {
            tokio::task::yield_now().await;
        }
    }
    let submitted = t.elapsed();
    drained(&s.pipeline, N).await;
    let rate = N as f64 / t.elapsed().as_secs_f64();
    let submit_rate = N as f64 / submitted.as_secs_f64();
    println!("  throughput, {N} events (queues hold them all):");
    println!("    producer (decode+submit)      {submit_rate:>10.0} events/s");
    println!("    delivered to all sinks        {rate:>10.0} events/s");
    assert_eq!(s.upstream.counters().produced, N);
    report("throughput", &s.pipeline);
    s.pipeline.shutdown(Duration::from_secs(10)).await;

    // 2. Loss at the offered rate, default queues.
    let s = setup(Some(endpoint.to_string()), None);
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
    let lost: u64 = s.pipeline.sink_stats().iter().map(|x| x.dropped).sum();
    println!(
        "  loss at {OFFERED_RATE} events/s offered for {:.2} s ({total} events): {lost} lost",
        offered_for.as_secs_f64()
    );
    report("offered", &s.pipeline);
    s.pipeline.shutdown(Duration::from_secs(10)).await;
    (rate, lost)
}

fn main() {
    if let Some(mode) = std::env::var_os(RECEIVER_ENV) {
        serve_receiver(mode == "count");
        return;
    }
    let cpus = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Cpus_allowed_list"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    println!("violation pipeline bench; CPUs allowed: {cpus} (pin with taskset -c 0)");

    // The in-process collector runs on its own thread and runtime (sharing the pinned core).
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
    // The other collector: a process on another CPU than the pipeline's, when there is one.
    // (`available_parallelism` counts only the CPUs this process may use.)
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap_or_default();
    let others: Vec<_> = if online.trim() != "0" && cpus == "0" {
        [false, true]
            .into_iter()
            .filter_map(|counting| match receiver_process("1", counting) {
                Ok((child, endpoint)) => Some((counting, child, endpoint)),
                Err(e) => {
                    println!("  (no receiver process: {e})");
                    None
                }
            })
            .collect()
    } else {
        println!(
            "  (receiver process on another core skipped: needs >1 CPU and the bench pinned to CPU 0)"
        );
        Vec::new()
    };

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
        println!("  decode+to_proto only          {decode_rate:>10.0} events/s");

        // The OTLP request alone: the message tree (prost types) built and encoded, as the
        // exporter did before, and the direct encoding the exporter sends now.
        let exporter = varmor_agent::violations::otlp::OtlpExporter::new(&OtlpConfig::new(
            endpoint.clone(),
            "bench-node",
        ))
        .expect("exporter");
        let batch: Vec<_> = (0..512).map(|i| event(&records[i], boot)).collect();
        let rounds = 200;
        let t = Instant::now();
        let mut bytes = 0usize;
        for _ in 0..rounds {
            let req = exporter.request(batch.iter(), 0);
            bytes = prost::Message::encode_to_vec(&req).len();
        }
        let tree_rate = (rounds * batch.len()) as f64 / t.elapsed().as_secs_f64();
        println!(
            "  OTLP tree build+encode        {tree_rate:>10.0} events/s ({bytes} bytes per 512)"
        );
        let mut buf = Vec::new();
        let t = Instant::now();
        for _ in 0..rounds {
            exporter.encode_request(batch.iter(), 0, 1, &mut buf);
        }
        let direct_rate = (rounds * batch.len()) as f64 / t.elapsed().as_secs_f64();
        println!(
            "  OTLP direct encode (sent)     {direct_rate:>10.0} events/s ({} bytes per 512)",
            buf.len()
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
        println!("  upstream + violations.log     {no_otlp_rate:>10.0} events/s (no OTLP)");

        let mut results = vec![(
            "same core, full decode",
            measure(
                "in this process (same core), full decode",
                &endpoint,
                &records,
                boot,
            )
            .await,
        )];
        for (counting, _, other_endpoint) in &others {
            let (short, long) = if *counting {
                (
                    "CPU 1, counting only",
                    "in its own process on CPU 1, counting only",
                )
            } else {
                (
                    "CPU 1, full decode",
                    "in its own process on CPU 1, full decode",
                )
            };
            results.push((short, measure(long, other_endpoint, &records, boot).await));
        }
        println!("goals (all three sinks, pipeline on one core):");
        println!(
            "  {:<24} {:>34}   {:>30}",
            "receiver", "throughput (goal >= 200000/s)", "loss at 50000/s (goal 0)"
        );
        for (label, (rate, lost)) in &results {
            println!(
                "  {label:<24} {rate:>10.0}/s = {:>5.2} x goal {:>7}   {lost:>9} lost = {:>7}",
                rate / GOAL_RATE,
                if *rate >= GOAL_RATE { "met" } else { "NOT met" },
                if *lost == 0 { "met" } else { "NOT met" },
            );
        }
    });
    for (_, mut child, _) in others {
        drop(child.stdin.take());
        let _ = child.wait();
    }
}
