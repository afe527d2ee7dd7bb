//! `kv-bench`: a closed-loop load generator for Redis-protocol and etcd servers, used by
//! `bench/compare.sh` to load etcd and by the CI smoke test to load kv.
//!
//! N clients each send one request, wait for the answer, and send the next, for a fixed time or
//! number of requests. Every latency is recorded (hdrhistogram, microseconds); the report gives
//! throughput, p50/p90/p99/p99.9/max and errors as a table and as JSON, and a chart of
//! throughput and tail latency per second as SVG — stalls during elections show there.

mod client;
mod report;

/// The etcd v3 KV client the benchmark uses to load etcd.
#[allow(clippy::all, missing_docs)]
mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use bytes::Bytes;
use clap::Parser;
use clap::ValueEnum;
use rand::Rng;
use rand::SeedableRng;
use rand::rngs::StdRng;

pub use self::report::Report;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(BenchArgs::parse()).await {
        Ok(_) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kv-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// What protocol the target speaks.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Redis (RESP2): SET and GET.
    Resp,
    /// etcd's v3 gRPC KV API: Put and linearizable Range.
    Etcd,
}

/// Load a Redis-protocol or etcd server and report throughput and latency.
#[derive(Parser, Debug, Clone)]
#[command(version, about, long_about = None)]
pub struct BenchArgs {
    /// The protocol of the target.
    #[arg(long, value_enum, default_value_t = Protocol::Resp)]
    pub protocol: Protocol,
    /// Addresses of the target (host:port, comma separated); clients are spread over them.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:6379")]
    pub addrs: Vec<String>,
    /// Concurrent clients, each with its own connection (etcd: 16 clients share one).
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// How long to run, in seconds (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Stop after this many requests instead.
    #[arg(long)]
    pub requests: Option<u64>,
    /// Seconds of load before measuring starts.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Bytes per value.
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// Distinct keys.
    #[arg(long, default_value_t = 100_000)]
    pub keys: u64,
    /// Fraction of requests that are reads (0.0 to 1.0).
    #[arg(long, default_value_t = 0.0)]
    pub reads: f64,
    /// A name for the results.
    #[arg(long)]
    pub label: Option<String>,
    /// Also write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Also draw throughput and latency over time as SVG here.
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// Print the result as CSV in `redis-benchmark --csv`'s columns instead of a table.
    #[arg(long)]
    pub csv: bool,
    /// No progress line.
    #[arg(long)]
    pub quiet: bool,
}

/// One measured request.
#[derive(Clone, Copy)]
pub(crate) struct Sample {
    /// Microseconds since measuring started, at completion.
    pub at_us: u64,
    pub latency_us: u64,
    pub ok: bool,
}

/// Runs the benchmark and prints (and writes) the report.
pub async fn run(args: BenchArgs) -> Result<Report, String> {
    if args.addrs.is_empty() || args.clients == 0 {
        return Err("need at least one address and one client".into());
    }
    if !(0.0..=1.0).contains(&args.reads) {
        return Err("--reads must be between 0.0 and 1.0".into());
    }
    let value = Bytes::from(vec![b'x'; args.value_size]);
    let mut connector = client::Connector::default();
    let mut conns = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        let addr = &args.addrs[i % args.addrs.len()];
        conns.push(connector.connect(args.protocol, addr, i).await?);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let warmup = Duration::from_secs_f64(args.warmup.max(0.0));
    let start = Instant::now();
    let measure_from = start + warmup;
    let budget = args.requests;

    let mut tasks = Vec::new();
    for (i, mut conn) in conns.into_iter().enumerate() {
        let (stop, done, value) = (stop.clone(), done.clone(), value.clone());
        let (keys, reads) = (args.keys.max(1), args.reads);
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(i as u64);
            let mut samples = Vec::new();
            let mut key = Vec::with_capacity(24);
            while !stop.load(Ordering::Relaxed) {
                key.clear();
                // Writing into the reused buffer: no allocation per request.
                let _ = write!(key, "key:{:012}", rng.random_range(0..keys));
                let read = reads > 0.0 && rng.random_bool(reads);
                let t0 = Instant::now();
                let ok = if read {
                    conn.get(&key).await
                } else {
                    conn.set(&key, &value).await
                };
                let now = Instant::now();
                if now >= measure_from {
                    samples.push(Sample {
                        at_us: (now - measure_from).as_micros() as u64,
                        latency_us: (now - t0).as_micros() as u64,
                        ok: ok.is_ok(),
                    });
                    let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                    if budget.is_some_and(|b| n >= b) {
                        stop.store(true, Ordering::Relaxed);
                    }
                }
            }
            samples
        }));
    }

    // Progress, and the end of a timed run.
    let run_for = Duration::from_secs_f64(args.duration.max(0.1));
    let mut last = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tick.tick().await;
        let elapsed = start.elapsed();
        let n = done.load(Ordering::Relaxed);
        if !args.quiet {
            let phase = if elapsed < warmup {
                "warming up"
            } else {
                "measuring"
            };
            eprint!(
                "\r  {:>5.1}s {phase:<10} {:>9} ops/s  {:>10} done",
                elapsed.as_secs_f64(),
                n - last,
                n
            );
        }
        last = n;
        if stop.load(Ordering::Relaxed) || (budget.is_none() && elapsed >= warmup + run_for) {
            stop.store(true, Ordering::Relaxed);
            break;
        }
    }
    if !args.quiet {
        eprintln!();
    }
    let mut samples = Vec::new();
    for t in tasks {
        samples.extend(t.await.map_err(|e| format!("client task failed: {e}"))?);
    }
    let measured = samples.iter().map(|s| s.at_us).max().unwrap_or(0);
    let report = Report::build(&args, &samples, Duration::from_micros(measured.max(1)));
    if args.csv {
        println!("{}", report.csv());
    } else {
        println!("{}", report.table());
    }
    if let Some(path) = &args.json {
        std::fs::write(path, report.json())
            .map_err(|e| format!("write {}: {e}", path.display()))?;
    }
    if let Some(path) = &args.svg {
        std::fs::write(path, report.svg()).map_err(|e| format!("write {}: {e}", path.display()))?;
    }
    Ok(report)
}
