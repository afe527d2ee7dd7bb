//! Prometheus metrics on `--metrics-addr`: requests by command, write latency, the node's raft
//! state and its write-ahead log.

use std::net::SocketAddr;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use raft_core::Role;

use crate::cluster::Running;

/// Serves `/metrics` on `addr` and keeps the raft gauges of `nodes` current.
pub fn install(
    addr: SocketAddr,
    nodes: Vec<raft_core::Node<crate::store::Store>>,
) -> Result<(), String> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            for node in &nodes {
                let m = node.metrics();
                let id = m.id.to_string();
                let role = match m.role {
                    Role::Leader => 1.0,
                    Role::Follower => 2.0,
                    Role::Candidate => 3.0,
                    Role::Learner => 4.0,
                    Role::Shutdown => 0.0,
                };
                metrics::gauge!("raft_role", "node" => id.clone()).set(role);
                metrics::gauge!("raft_term", "node" => id.clone()).set(m.term as f64);
                let idx = |i: Option<u64>| i.map_or(-1.0, |i| i as f64);
                metrics::gauge!("raft_last_log_index", "node" => id.clone())
                    .set(idx(m.last_log_index));
                metrics::gauge!("raft_commit_index", "node" => id.clone()).set(idx(m.commit_index));
                metrics::gauge!("raft_applied_index", "node" => id.clone())
                    .set(idx(m.applied_index));
                let wal = node.log_stats();
                metrics::counter!("wal_fsyncs_total", "node" => id.clone()).absolute(wal.fsyncs);
                metrics::gauge!("wal_fsync_seconds_total", "node" => id.clone())
                    .set(wal.fsync_micros as f64 / 1e6);
                metrics::gauge!(
                    "wal_fsync_seconds_avg",
                    "node" => id.clone()
                )
                .set(if wal.flush_batches == 0 {
                    0.0
                } else {
                    wal.fsync_micros as f64 / wal.flush_batches as f64 / 1e6
                });
                metrics::counter!("wal_entries_total", "node" => id).absolute(wal.entries);
            }
        }
    });
    Ok(())
}

/// The nodes of a set of running ones.
pub fn nodes(running: &[Running]) -> Vec<raft_core::Node<crate::store::Store>> {
    running.iter().map(|r| r.node.node().clone()).collect()
}
