//! The metrics listener (`--metrics-addr`): Prometheus metrics at `/metrics` — requests by
//! command, write latency, the node's raft state, its write-ahead log and its storage — and the
//! Kubernetes probes:
//!
//! * `/healthz` (liveness): 200 while every node's consensus engine runs; 503 once one has
//!   stopped (the process exits then anyway).
//! * `/readyz` (readiness): 200 when every node runs, knows a leader, has applied all but at
//!   most `--ready-max-lag` of the entries it knows committed, and no storage alarm is raised
//!   (its own, or on the leader a voter's); 503 with the reason otherwise, e.g. under NOSPACE,
//!   when the node would refuse writes.
//!
//! Names follow Prometheus conventions: a unit suffix (`_seconds`, `_bytes`, `_entries`) and
//! `_total` on counters. Every series of a node carries its `node` label; the `kv_` series are
//! per process. `docs/operations.md` lists them with the alerts built on them.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
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
use metrics_exporter_prometheus::Matcher;
use metrics_exporter_prometheus::PrometheusBuilder;
use metrics_exporter_prometheus::PrometheusHandle;
use raft_core::Role;
use tokio::net::TcpListener;

use crate::cluster::Running;
use crate::store::Store;

type Node = raft_core::Node<Store>;

/// What each node's gRPC server counts, by node id.
type Servers = Vec<(raft_core::NodeId, Arc<raft_grpc::ServerStats>)>;

/// Upper bounds of `kv_write_duration_seconds`' buckets: from a fast local disk to a write
/// that waited through an election.
const WRITE_BUCKETS_SECONDS: [f64; 14] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
];

/// A probe or scrape that takes longer than this is cut off.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Most connections the metrics listener holds at once; one past it is closed as soon as it is
/// accepted. Scrapers and probes hold a few; without a bound, anyone who can reach the port
/// could take every file descriptor the process has, and the log's next segment with them.
const MAX_CONNECTIONS: usize = 32;

/// Most of [`MAX_CONNECTIONS`] one address may hold: it takes eight addresses to fill the port
/// (and keep probes out), not one. A scraper and a kubelet's two probes need three.
const MAX_CONNECTIONS_PER_IP: usize = 4;

/// The most bytes of a request hyper buffers: a probe's request line and headers.
const MAX_REQUEST_BYTES: usize = 16 << 10;

/// The metrics listener's flags.
#[derive(clap::Args, Debug, Clone)]
pub struct MetricsArgs {
    /// Serve Prometheus metrics, `/healthz` and `/readyz` at this address (e.g. 127.0.0.1:9100).
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,
    /// `/readyz` fails while a node has more than this many committed entries left to apply
    /// (it is catching up, and its local reads would be far behind).
    #[arg(long, default_value_t = 10_000)]
    pub ready_max_lag: u64,
}

/// The metrics listener, bound, with the recorder installed: made before the nodes start, so
/// that nothing they record (a client's first write may come at once) is lost.
pub struct Endpoint {
    listener: TcpListener,
    handle: PrometheusHandle,
    max_lag: u64,
}

/// Binds `--metrics-addr` and installs the metrics recorder; `None` without `--metrics-addr`
/// (nothing is recorded then).
pub async fn prepare(args: &MetricsArgs) -> Result<Option<Endpoint>, String> {
    let Some(addr) = args.metrics_addr else {
        return Ok(None);
    };
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?;
    // Write latency as a histogram (buckets aggregate across nodes; the exporter's default
    // would be a per-process summary).
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("kv_write_duration_seconds".into()),
            &WRITE_BUCKETS_SECONDS,
        )
        .map_err(|e| format!("cannot configure the metrics recorder: {e}"))?
        .install_recorder()
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
    // Counters of rare events, exported at zero from the start so that rates and alerts on
    // them have a series before the first event.
    for name in [
        "kv_protocol_errors_total",
        "kv_rejected_connections_total",
        "kv_output_limit_disconnects_total",
        "kv_client_memory_disconnects_total",
        "kv_auth_timeouts_total",
    ] {
        metrics::counter!(name).increment(0);
    }
    Ok(Some(Endpoint {
        listener,
        handle,
        max_lag: args.ready_max_lag,
    }))
}

impl Endpoint {
    /// Serves `/metrics`, `/healthz` and `/readyz` for the `running` nodes and keeps their
    /// gauges current.
    pub fn serve(self, running: &[Running]) {
        let nodes: Vec<Node> = running.iter().map(|r| r.node.node().clone()).collect();
        let servers = running
            .iter()
            .map(|r| (r.node.node().id(), r.node.stats().clone()))
            .collect();
        tokio::spawn(update_gauges(nodes.clone(), servers, self.handle.clone()));
        tokio::spawn(serve(self.listener, nodes, self.handle, self.max_lag));
    }
}

async fn serve(listener: TcpListener, nodes: Vec<Node>, handle: PrometheusHandle, max_lag: u64) {
    let limits = raft_grpc::ConnectionLimits::new(MAX_CONNECTIONS, MAX_CONNECTIONS_PER_IP);
    let mut full_logged = false;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(place) = limits.admit(peer.ip()) else {
            if !full_logged {
                tracing::warn!(%peer, "metrics listener: {MAX_CONNECTIONS} connections open, or {MAX_CONNECTIONS_PER_IP} from one address; closing new ones until some end");
                full_logged = true;
            }
            drop(stream);
            continue;
        };
        full_logged = false;
        let (nodes, handle) = (nodes.clone(), handle.clone());
        tokio::spawn(async move {
            let _place = place;
            let service = service_fn(move |req| {
                let reply = answer(&req, &nodes, &handle, max_lag);
                async move { Ok::<_, Infallible>(reply) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(REQUEST_TIMEOUT)
                .max_buf_size(MAX_REQUEST_BYTES)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(REQUEST_TIMEOUT * 6, conn).await;
        });
    }
}

fn answer(
    req: &Request<Incoming>,
    nodes: &[Node],
    handle: &PrometheusHandle,
    max_lag: u64,
) -> Response<Full<Bytes>> {
    let (status, body) = match req.uri().path() {
        "/metrics" => (StatusCode::OK, handle.render() + &fsync_histograms(nodes)),
        "/healthz" => match stopped(nodes) {
            None => (StatusCode::OK, "ok\n".to_string()),
            Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
        },
        "/readyz" => match stopped(nodes).or_else(|| not_ready(nodes, max_lag)) {
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
fn not_ready(nodes: &[Node], max_lag: u64) -> Option<String> {
    nodes.iter().find_map(|n| {
        let lag = apply_lag(&n.metrics());
        if lag > max_lag {
            return Some(format!(
                "node {}: {lag} committed entries not applied yet (more than --ready-max-lag {max_lag})",
                n.id()
            ));
        }
        let s = n.storage();
        if let Some(why) = s.local_alarm {
            return Some(format!("node {}: NOSPACE: {why}", n.id()));
        }
        if let Some((peer, why)) = s.peer_alarms.iter().next() {
            return Some(format!("node {}: NOSPACE on voter {peer}: {why}", n.id()));
        }
        (!n.leader().is_known())
            .then(|| format!("node {}: no leader known", n.id()))
    })
}

/// Committed entries a node has not applied yet.
fn apply_lag(m: &raft_core::Metrics) -> u64 {
    m.commit_index
        .unwrap_or(0)
        .saturating_sub(m.applied_index.unwrap_or(0))
}

/// `wal_fsync_duration_seconds`, a histogram the log keeps itself (the exporter's histograms
/// take samples; the log counts into fixed buckets on its flusher thread).
fn fsync_histograms(nodes: &[Node]) -> String {
    let mut out = String::from(
        "# HELP wal_fsync_duration_seconds Time of each write-ahead log flush round (its fdatasync calls).\n\
         # TYPE wal_fsync_duration_seconds histogram\n",
    );
    for node in nodes {
        let id = node.id();
        let stats = node.log_stats();
        let mut cumulative = 0;
        let bounds = raft_core::log::FSYNC_BUCKETS_SECONDS
            .iter()
            .map(|b| b.to_string());
        for (le, count) in bounds
            .chain(["+Inf".to_string()])
            .zip(stats.fsync_histogram)
        {
            cumulative += count;
            let _ = writeln!(
                out,
                "wal_fsync_duration_seconds_bucket{{node=\"{id}\",le=\"{le}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "wal_fsync_duration_seconds_sum{{node=\"{id}\"}} {}\n\
             wal_fsync_duration_seconds_count{{node=\"{id}\"}} {cumulative}",
            stats.fsync_micros as f64 / 1e6
        );
    }
    out
}

async fn update_gauges(nodes: Vec<Node>, servers: Servers, handle: PrometheusHandle) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // The leader each node saw at the last sample.
    let mut leaders: HashMap<raft_core::NodeId, Option<raft_core::NodeId>> = HashMap::new();
    loop {
        tick.tick().await;
        handle.run_upkeep();
        for node in &nodes {
            let m = node.metrics();
            let id = m.id.to_string();
            // Sampled once a second: two changes within one sample count as one.
            let changes = metrics::counter!("raft_leader_changes_total", "node" => id.clone());
            let seen = leaders.entry(m.id).or_insert(m.leader);
            if *seen != m.leader {
                *seen = m.leader;
                changes.increment(1);
            }
            metrics::gauge!("raft_apply_lag_entries", "node" => id.clone())
                .set(apply_lag(&m) as f64);
            metrics::gauge!("raft_sessions_open", "node" => id.clone())
                .set(node.open_sessions() as f64);
            let role = match m.role {
                Role::Leader => 1.0,
                Role::Follower => 2.0,
                Role::Candidate => 3.0,
                Role::Learner => 4.0,
                // Shutdown, and any role added later: not serving.
                _ => 0.0,
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
            let snap = node.snapshot_stats();
            metrics::counter!("raft_snapshot_failures_total", "node" => id.clone())
                .absolute(snap.failures);
            metrics::counter!("raft_snapshots_built_total", "node" => id.clone())
                .absolute(snap.built);
            if let (Some(took), Some(bytes)) = (snap.last_duration, snap.last_bytes) {
                metrics::gauge!("raft_snapshot_last_duration_seconds", "node" => id.clone())
                    .set(took.as_secs_f64());
                metrics::gauge!("raft_snapshot_last_size_bytes", "node" => id.clone())
                    .set(bytes as f64);
            }
            let s = node.storage();
            if let Some(u) = s.usage {
                metrics::gauge!("storage_used_bytes", "node" => id.clone())
                    .set(u.used_bytes as f64);
                metrics::gauge!("storage_free_bytes", "node" => id.clone())
                    .set(u.free_bytes as f64);
                metrics::gauge!("storage_total_bytes", "node" => id.clone())
                    .set(u.total_bytes as f64);
            }
            if let Some(resident) = s.memory_bytes {
                metrics::gauge!("memory_resident_bytes", "node" => id.clone()).set(resident as f64);
            }
            metrics::gauge!("memory_limit_bytes", "node" => id.clone())
                .set(s.memory_limit_bytes as f64);
            metrics::gauge!("storage_nospace_alarm", "node" => id.clone())
                .set(if s.local_alarm.is_some() { 1.0 } else { 0.0 });
            metrics::gauge!("storage_refusing_writes", "node" => id).set(if s.refusing_writes {
                1.0
            } else {
                0.0
            });
        }
        // Snapshots streamed to this node: chunks that keep arriving while no snapshot
        // completes are transfers cut off (a link slower than --raft-min-transfer-rate).
        for (id, stats) in &servers {
            let id = id.to_string();
            metrics::counter!("raft_snapshots_received_total", "node" => id.clone())
                .absolute(stats.snapshots_received());
            metrics::counter!("raft_snapshot_chunks_received_total", "node" => id)
                .absolute(stats.snapshot_chunks());
        }
    }
}
