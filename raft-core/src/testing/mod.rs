//! Run a cluster of real nodes in one process, and break it (feature `testing`).
//!
//! * [`Router`] — an in-process network that partitions, isolates, blocks one way, loses and
//!   delays messages, with a seeded generator so runs repeat.
//! * [`Cluster`] — starts N nodes on a router (durable, in temporary directories, or in memory),
//!   waits for a leader on metrics, crashes and restarts nodes from their data directories, and
//!   writes through whichever node leads.
//! * [`kv`] — a small replicated string map with a matching [`Workload`], for tests that need
//!   some state machine rather than their own.
//! * [`Sum`] — a running total, the smallest state machine, for tests of something else.
//! * [`snapshot_bytes`] — a snapshot file's bytes, for tests that send snapshots as a peer would.
//! * [`ManualClock`] — a clock a test sets by hand, to give nodes skewed clocks.
//! * [`eventually`] — waits for a condition nothing announces (a disk sample), with a bound.
//! * [`PanicWatch`] — the panics of every thread since it started, a node's tasks included.
//! * [`stop_before_teardown`] — stops nodes from a `Drop` impl before a multi-thread runtime ends.
//! * [`synth`] — generated key-value histories with a planted fault (or none), for testing and
//!   benchmarking the checker.
//!
//! ```no_run
//! # use raft_core::{StateMachine, testing::{Cluster, ClusterOptions}};
//! # async fn demo<S: StateMachine<Command = u64> + Default>() -> raft_core::Result<()> {
//! let mut cluster = Cluster::start(3, ClusterOptions::default(), |_| S::default()).await?;
//! let leader = cluster.wait_for_leader().await?;
//! cluster.router().isolate(leader);
//! let new_leader = cluster.wait_for_leader_among(&[1, 2, 3]).await?;
//! cluster.write(5).await?;
//! cluster.router().heal();
//! cluster.wait_converged().await?;
//! # Ok(()) }
//! ```

pub mod checker;
mod cluster;
pub mod driver;
pub mod history;
pub mod kv;
pub mod model;
mod nemesis;
mod panics;
mod router;
mod sum;
pub mod synth;

/// The random number generator crate the harness uses: [`Workload::generate`] takes its
/// `rand::rngs::StdRng`, so a workload written against this re-export always names the same
/// version the harness was built with.
pub use rand;

pub use self::checker::CheckResult;
pub use self::checker::Violation;
pub use self::checker::check;
pub use self::cluster::Cluster;
pub use self::cluster::ClusterOptions;
pub use self::cluster::address;
pub use self::cluster::lone_leader;
pub use self::driver::Attempt;
pub use self::driver::ClientOptions;
pub use self::driver::ReadMode;
pub use self::driver::Report;
pub use self::driver::RunOptions;
pub use self::driver::Target;
pub use self::driver::Workload;
pub use self::driver::run;
pub use self::driver::run_clients;
pub use self::history::History;
pub use self::history::Operation;
pub use self::history::Outcome;
pub use self::history::Pending;
pub use self::history::Recorder;
pub use self::model::KvMap;
pub use self::model::KvOp;
pub use self::model::KvResult;
pub use self::model::Model;
pub use self::model::Register;
pub use self::model::RegisterOp;
pub use self::model::RegisterResult;
pub use self::nemesis::Fault;
pub use self::nemesis::Nemesis;
pub use self::nemesis::Schedule;
pub use self::nemesis::Step;
pub use self::panics::PanicWatch;
pub use self::panics::stop_before_teardown;
pub use self::router::Router;
pub use self::router::RouterConnection;
pub use self::router::RouterTransport;
pub use self::sum::Sum;

/// Sends this process's logs to the test output, filtered by `RUST_LOG` (nothing by default).
/// Call it at the start of each test; calls after the first change nothing.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A [`Clock`](crate::Clock) that reads whatever the test last set; clones share the time.
#[derive(Debug, Clone, Default)]
pub struct ManualClock(std::sync::Arc<std::sync::atomic::AtomicU64>);

impl ManualClock {
    /// A clock reading `ms` (milliseconds since the Unix epoch).
    pub fn at(ms: u64) -> Self {
        ManualClock(std::sync::Arc::new(std::sync::atomic::AtomicU64::new(ms)))
    }

    /// Sets the time to `ms`.
    pub fn set(&self, ms: u64) {
        self.0.store(ms, std::sync::atomic::Ordering::Relaxed);
    }
}

impl crate::Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The bytes of a snapshot file for `meta` whose user part is what `user` writes, with an empty
/// session table and no cluster id: what a leader would stream to a follower. For tests that
/// play a peer.
pub fn snapshot_bytes(
    meta: &crate::types::SnapshotMeta,
    user: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>,
) -> Result<Vec<u8>, crate::snapshot::SnapshotError> {
    snapshot_bytes_of(None, meta, user)
}

/// [`snapshot_bytes`] for a snapshot that names `cluster` (none: a writer without a cluster id).
pub fn snapshot_bytes_of(
    cluster: Option<crate::ClusterId>,
    meta: &crate::types::SnapshotMeta,
    user: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>,
) -> Result<Vec<u8>, crate::snapshot::SnapshotError> {
    let identity = crate::cluster_id::ClusterIdentity::open(None)
        .map_err(crate::snapshot::SnapshotError::ClusterId)?;
    if let Some(id) = cluster {
        identity
            .adopt(id)
            .map_err(crate::snapshot::SnapshotError::ClusterId)?;
    }
    let store = crate::snapshot::SnapshotStore::memory(u64::MAX, std::sync::Arc::new(identity));
    let sessions = crate::session::SessionTable::default();
    let data = store.write(meta, &sessions, &Default::default(), user)?;
    Ok(data.memory_bytes().map(|b| b.to_vec()).unwrap_or_default())
}

/// Waits at most `limit` until `condition` holds, checking every 10 ms; [`Error::Timeout`]
/// otherwise. For conditions that no metrics change announces, such as a node's next disk
/// sample or another node's answer to the leader.
///
/// [`Error::Timeout`]: crate::Error::Timeout
pub async fn eventually(
    limit: std::time::Duration,
    condition: impl Fn() -> bool,
) -> crate::Result<()> {
    let deadline = tokio::time::Instant::now() + limit;
    while !condition() {
        if tokio::time::Instant::now() >= deadline {
            return Err(crate::Error::Timeout(limit));
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    Ok(())
}
