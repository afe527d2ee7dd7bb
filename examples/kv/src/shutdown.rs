//! How a node process ends: on SIGTERM or SIGINT it stops its nodes within a bound, flushing
//! the write-ahead log first; when a node stops by itself (a storage failure such as a full
//! disk), the process exits non-zero so that a supervisor restarts it.

use std::time::Duration;

use clap::Args;
use futures_util::future::select_all;
use tokio::signal::unix::SignalKind;
use tokio::signal::unix::signal;

use crate::cluster::Running;

/// Process lifecycle flags.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct ShutdownArgs {
    /// On SIGTERM or SIGINT, how long to wait for the node to flush its log and stop before
    /// exiting anyway (every acknowledged write is durable already). A second signal exits at
    /// once.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
}

/// Parses `10s`, `500ms`, `2m` or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let bad = || format!("{s:?} is not a duration (for example 10s or 500ms)");
    let (num, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else {
        (t, 1.0)
    };
    let v: f64 = num.trim().parse().map_err(|_| bad())?;
    let d = Duration::try_from_secs_f64(v * scale).map_err(|_| bad())?;
    if d > LONGEST {
        return Err(format!(
            "{s:?} is longer than the longest duration taken ({} days)",
            LONGEST.as_secs() / 86_400
        ));
    }
    Ok(d)
}

/// The longest duration a flag takes: ten years, far past any timeout or interval, and short
/// enough that a deadline that far ahead is always a valid clock reading.
const LONGEST: Duration = Duration::from_secs(10 * 365 * 86_400);

/// Why the process is ending.
#[derive(Debug, thiserror::Error)]
pub enum Ended {
    /// A node stopped by itself: its storage failed. Exit non-zero so a supervisor restarts it.
    #[error("node {id} stopped: {error}; exiting so that it is restarted")]
    NodeFailed { id: u64, error: String },
    /// A node stopped without being asked to and without an error.
    #[error("node {id} stopped unexpectedly")]
    NodeStopped { id: u64 },
    /// The node did not stop within `--shutdown-timeout`.
    #[error("the node did not stop within {0:?}; exiting anyway")]
    Timeout(Duration),
    /// A second signal arrived while stopping.
    #[error("stopped by a second signal before the node finished stopping")]
    Interrupted,
    /// The signal handlers could not be installed.
    #[error("cannot handle signals: {0}")]
    Signals(std::io::Error),
}

/// Serves until a signal or a node failure, then stops every node. `Ok` after a clean stop on
/// a signal.
pub async fn serve_until_stopped(nodes: Vec<Running>, args: &ShutdownArgs) -> Result<(), Ended> {
    let mut term = signal(SignalKind::terminate()).map_err(Ended::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(Ended::Signals)?;
    let failed = select_all(nodes.iter().map(|n| {
        Box::pin(async move {
            let r = n.node.stopped().await;
            (n.spec.id, r)
        })
    }));
    let signalled = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
        ((id, result), _, _) = failed => {
            return Err(match result {
                Err(e) => {
                    tracing::error!(node = id, error = %e, "the node stopped after a storage failure; exiting");
                    Ended::NodeFailed { id, error: e.to_string() }
                }
                Ok(()) => Ended::NodeStopped { id },
            });
        }
    };
    tracing::info!(signal = signalled, timeout = ?args.shutdown_timeout, "stopping");
    // Each node stops serving (in-flight calls get a short drain, replication streams end at
    // once), then its consensus engine stops and its log is flushed and closed.
    let stop_all = async {
        for n in nodes {
            let (id, started) = (n.spec.id, std::time::Instant::now());
            match n.node.shutdown().await {
                Ok(()) => {
                    tracing::info!(node = id, took = ?started.elapsed(), "node stopped, log flushed")
                }
                Err(e) => tracing::warn!(node = id, error = %e, "stopping the node"),
            }
        }
    };
    tokio::select! {
        r = tokio::time::timeout(args.shutdown_timeout, stop_all) => {
            r.map_err(|_| Ended::Timeout(args.shutdown_timeout))
        }
        _ = term.recv() => Err(Ended::Interrupted),
        _ = int.recv() => Err(Ended::Interrupted),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1s").is_err());
        // Past what a deadline can be set to: refused, not a panic where it is used.
        assert!(parse_duration("1e19s").is_err());
        assert!(parse_duration("400000000s").is_err(), "12.7 years");
        assert_eq!(
            parse_duration("3650").map(|d| d.as_secs()),
            Ok(3650),
            "seconds"
        );
    }
}
