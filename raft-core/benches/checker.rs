//! How fast the linearizability checker reaches each verdict on a history of the shape the
//! cluster tests record: 10,000 operations over 100 keys from 5 clients, valid, or with one
//! planted stale read or lost append (see `raft_core::testing::synth`).
//!
//!     cargo bench -p raft-core --bench checker [-- --ops 10000 --keys 100 --clients 5 --runs 9]
//!
//! Prints the median and the slowest of `--runs` checks per verdict; the target is under
//! 100 ms each in a release build on a 2-core machine.

use std::time::Duration;
use std::time::Instant;

use raft_core::testing::KvMap;
use raft_core::testing::check;
use raft_core::testing::synth;
use raft_core::testing::synth::Fault;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let ops = arg("--ops", 10_000);
    let keys = arg("--keys", 100);
    let clients = arg("--clients", 5);
    let runs = arg("--runs", 9).max(1);
    println!("{ops} operations, {keys} keys, {clients} clients, {runs} runs per verdict");
    println!("{:<12} {:>10} {:>10}  verdict", "history", "median", "max");
    for fault in [Fault::None, Fault::StaleRead, Fault::LostAppend] {
        let mut times: Vec<Duration> = Vec::with_capacity(runs);
        let mut verdict = String::new();
        for run in 0..runs {
            let history = synth::kv_history(run as u64, ops, keys, clients, fault);
            let started = Instant::now();
            let result = check::<KvMap>(&history, Duration::from_secs(60));
            times.push(started.elapsed());
            verdict = if result.is_linearizable() {
                "linearizable".into()
            } else if result.is_violation() {
                "violation".into()
            } else {
                format!("{result:?}")
            };
        }
        times.sort();
        println!(
            "{:<12} {:>10.1?} {:>10.1?}  {verdict}",
            format!("{fault:?}"),
            times[times.len() / 2],
            times[times.len() - 1]
        );
    }
}
