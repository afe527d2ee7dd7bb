//! Write-ahead log throughput with concurrent appenders: how well group commit works.
//!
//! Each appender submits one 256-byte entry at a time and waits until it is durable before
//! submitting the next (a closed loop, like a client waiting for its write). A single writer
//! task owns the log — as openraft's core does — and appends each entry as it arrives; the
//! flusher acknowledges everything that queued up during the previous fdatasync.
//!
//!     cargo bench -p raft-core --bench wal [-- --seconds 5 --dir /path/on/the/disk/to/test]

use std::time::Duration;
use std::time::Instant;

use bytes::Bytes;
use raft_core::log::LogStore;
use raft_core::log::WalOptions;
use raft_core::types::Entry;
use raft_core::types::Payload;
use raft_core::types::Proposal;
use tokio::sync::mpsc;
use tokio::sync::oneshot;

const ENTRY_BYTES: usize = 256;

struct Args {
    seconds: f64,
    dir: Option<std::path::PathBuf>,
    appenders: Vec<usize>,
}

fn parse_args() -> Args {
    let mut args = Args {
        seconds: 3.0,
        dir: None,
        appenders: vec![1, 16, 64],
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seconds" => {
                args.seconds = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(args.seconds)
            }
            "--dir" => args.dir = it.next().map(Into::into),
            "--appenders" => {
                if let Some(v) = it.next() {
                    args.appenders = v.split(',').filter_map(|x| x.parse().ok()).collect();
                }
            }
            _ => {} // cargo bench passes `--bench`
        }
    }
    args
}

struct Outcome {
    entries: u64,
    fsyncs: u64,
    elapsed: Duration,
}

async fn run(appenders: usize, seconds: f64, base: &std::path::Path) -> Outcome {
    let dir = tempfile::tempdir_in(base).expect("temp dir");
    let mut log = LogStore::open(dir.path(), 1, WalOptions::default()).expect("open log");
    let stats = log.stats_handle();
    let (tx, mut rx) = mpsc::channel::<oneshot::Sender<std::io::Result<()>>>(appenders * 2);
    let payload = Bytes::from(vec![7u8; ENTRY_BYTES]);

    let writer = tokio::spawn(async move {
        let mut index = 0u64;
        while let Some(done) = rx.recv().await {
            let entry = Entry {
                log_id: raft_core::types::LogId::new(
                    raft_core::types::LeaderId {
                        term: 1,
                        node_id: 1,
                    },
                    index,
                ),
                payload: Payload::Normal(Proposal::Write(payload.clone())),
            };
            index += 1;
            log.append_with([entry], move |r| {
                let _ = done.send(r);
            })
            .expect("append");
        }
    });

    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let before = stats.get();
    let mut tasks = Vec::new();
    for _ in 0..appenders {
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                let (done_tx, done_rx) = oneshot::channel();
                if tx.send(done_tx).await.is_err() {
                    break;
                }
                done_rx.await.expect("flusher alive").expect("durable");
                n += 1;
            }
            n
        }));
    }
    drop(tx);
    let mut entries = 0;
    for t in tasks {
        entries += t.await.expect("appender");
    }
    let elapsed = start.elapsed();
    let after = stats.get();
    writer.await.expect("writer");
    Outcome {
        entries,
        fsyncs: after.fsyncs - before.fsyncs,
        elapsed,
    }
}

fn main() {
    let args = parse_args();
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "write-ahead log, {ENTRY_BYTES}-byte entries, {:.1} s per row, in {}",
        args.seconds,
        base.display()
    );
    println!(
        "{:>10} {:>12} {:>13} {:>16}",
        "appenders", "entries/s", "fdatasyncs/s", "entries/fsync"
    );
    for &n in &args.appenders {
        let o = rt.block_on(run(n, args.seconds, &base));
        let secs = o.elapsed.as_secs_f64();
        println!(
            "{:>10} {:>12.0} {:>13.0} {:>16.1}",
            n,
            o.entries as f64 / secs,
            o.fsyncs as f64 / secs,
            o.entries as f64 / o.fsyncs.max(1) as f64
        );
    }
}
