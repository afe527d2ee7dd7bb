//! The metrics listener (`--metrics-addr`): Prometheus metrics at `/metrics` — requests by
//! command, write latency, the node's raft state, its write-ahead log and its storage — and the
//! Kubernetes probes:
//!
//! * `/healthz` (liveness): 200 while every node's consensus engine runs; 503 once one has
//!   stopped (the process exits then anyway).
//! * `/readyz` (readiness): 200 when every node runs, knows a leader and no storage alarm is
//!   raised (its own, or on the leader a voter's); 503 with the reason otherwise, e.g. under
//!   NOSPACE, when the node would refuse writes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use hyper::Response;
use hyper::StatusCode;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::rt::TokioTimer;
use metrics_exporter_prometheus::PrometheusBuilder;
use metrics_exporter_prometheus::PrometheusHandle;
use raft_core::Role;
use tokio::net::TcpListener;

use crate::cluster::Running;
use crate::store::Store;

type Node = raft_core::Node<Store>;

/// A probe or scrape that takes longer than this is cut off.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr` and keeps the gauges of `nodes`
/// current.
pub async fn install(addr: SocketAddr, nodes: Vec<Node>) -> Result<(), String> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?;
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
    tokio::spawn(update_gauges(nodes.clone(), handle.clone()));
    tokio::spawn(serve(listener, nodes, handle));
    Ok(())
}

async fn serve(listener: TcpListener, nodes: Vec<Node>, handle: PrometheusHandle) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (nodes, handle) = (nodes.clone(), handle.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let reply = answer(&req, &nodes, &handle);
                async move { Ok::<_, Infallible>(reply) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(REQUEST_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(REQUEST_TIMEOUT * 6, conn).await;
        });
    }
}

fn answer(
    req: &Request<Incoming>,
    nodes: &[Node],
    handle: &PrometheusHandle,
) -> Response<Full<Bytes>> {
    let (status, body) = match req.uri().path() {
        "/metrics" => (StatusCode::OK, handle.render()),
        "/healthz" => match stopped(nodes) {
            None => (StatusCode::OK, "ok\n".to_string()),
            Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
        },
        "/readyz" => match stopped(nodes).or_else(|| not_ready(nodes)) {
            None => (StatusCode::OK, "ready\n".to_string()),
            Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
        },
        _ => (
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz or /readyz\n".to_string(),
        ),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}

/// Why a node is not live, if one is not.
fn stopped(nodes: &[Node]) -> Option<String> {
    nodes
        .iter()
        .find(|n| n.role() == Role::Shutdown)
        .map(|n| format!("node {} has stopped", n.id()))
}

/// Why a running node is not ready, if one is not.
fn not_ready(nodes: &[Node]) -> Option<String> {
    nodes.iter().find_map(|n| {
        let s = n.storage();
        if let Some(why) = s.local_alarm {
            return Some(format!("node {}: NOSPACE: {why}", n.id()));
        }
        if let Some((peer, why)) = s.peer_alarms.iter().next() {
            return Some(format!("node {}: NOSPACE on voter {peer}: {why}", n.id()));
        }
        n.leader()
            .is_none()
            .then(|| format!("node {}: no leader known", n.id()))
    })
}

async fn update_gauges(nodes: Vec<Node>, handle: PrometheusHandle) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        handle.run_upkeep();
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
            metrics::gauge!("raft_last_log_index", "node" => id.clone()).set(idx(m.last_log_index));
            metrics::gauge!("raft_commit_index", "node" => id.clone()).set(idx(m.commit_index));
            metrics::gauge!("raft_applied_index", "node" => id.clone()).set(idx(m.applied_index));
            metrics::gauge!("raft_snapshot_index", "node" => id.clone()).set(idx(m.snapshot_index));
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
            metrics::counter!("wal_entries_total", "node" => id.clone()).absolute(wal.entries);
            metrics::counter!("raft_snapshot_failures_total", "node" => id.clone())
                .absolute(node.snapshot_stats().failures);
            let s = node.storage();
            if let Some(u) = s.usage {
                metrics::gauge!("storage_used_bytes", "node" => id.clone())
                    .set(u.used_bytes as f64);
                metrics::gauge!("storage_free_bytes", "node" => id.clone())
                    .set(u.free_bytes as f64);
                metrics::gauge!("storage_total_bytes", "node" => id.clone())
                    .set(u.total_bytes as f64);
            }
            metrics::gauge!("storage_nospace_alarm", "node" => id.clone())
                .set(if s.local_alarm.is_some() { 1.0 } else { 0.0 });
            metrics::gauge!("storage_refusing_writes", "node" => id).set(if s.refusing_writes {
                1.0
            } else {
                0.0
            });
        }
    }
}

/// The nodes of a set of running ones.
pub fn nodes(running: &[Running]) -> Vec<Node> {
    running.iter().map(|r| r.node.node().clone()).collect()
}
