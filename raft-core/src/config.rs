//! Node configuration with sensible defaults.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::Clock;
use crate::error::Error;
use crate::log::WalOptions;
use crate::space::QuotaOptions;
use crate::types::NodeId;

/// Upper bound of [`Config::max_session_bytes`]: the session table goes into a snapshot header,
/// which is limited to 1 GiB; the rest is room for the membership.
pub const MAX_SESSION_BYTES: usize = 768 << 20;

/// Where a node keeps its log and snapshots.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Storage {
    /// Durable: `<dir>/wal/` holds the write-ahead log, `<dir>/snapshots/` the snapshots. A node
    /// restarted on the same directory recovers its state without `initialize`.
    Dir(PathBuf),
    /// Nothing survives the process. For tests and caches.
    Memory,
}

/// How a node runs. Build with [`Config::durable`] or [`Config::in_memory`] and adjust with the
/// `with_*` methods; the fields stay readable.
///
/// ```
/// use std::time::Duration;
/// let config = raft_core::Config::in_memory(1)
///     .with_request_timeout(Duration::from_secs(5))
///     .with_max_command_bytes(1 << 20);
/// assert_eq!(config.max_command_bytes, 1 << 20);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// This node's id; stable across restarts and unique in the cluster.
    pub id: NodeId,
    /// Where state is kept.
    pub storage: Storage,
    /// A cluster name, checked nowhere but shown in logs.
    pub cluster_name: String,
    /// The leader sends a heartbeat this often. Default 50 ms.
    pub heartbeat_interval: Duration,
    /// A follower that hears nothing from a leader for a random time in
    /// `[election_timeout, 2 * election_timeout)` starts an election. Must exceed the heartbeat
    /// interval several times over. Default 400 ms.
    ///
    /// A follower also refuses to vote for `2 * election_timeout` after it last heard from a
    /// leader (the leader's lease), so when a leader crashes a new one takes over after between
    /// `2 * election_timeout` and about `4 * election_timeout`.
    pub election_timeout: Duration,
    /// Take a snapshot after this many entries have been applied since the last one; `0` never
    /// snapshots by count (see also [`Config::snapshot_log_bytes`], which snapshots by log size).
    /// Default 100 000 (etcd's default too): a snapshot writes the whole
    /// state, so taking one much more often costs more disk bandwidth and CPU than replaying the
    /// log it would save.
    pub snapshot_every: u64,
    /// After a snapshot, keep this many entries it already covers, so slightly lagging followers
    /// catch up from the log rather than by snapshot. Default 1 000.
    pub keep_after_snapshot: u64,
    /// How many client sessions the cluster keeps open for exactly-once writes. Default 10 000;
    /// the session whose last write is oldest is evicted first. Read only by
    /// [`Node::initialize`](crate::Node::initialize), which makes it (with the two byte bounds
    /// below) the cluster-wide [`SessionCapacity`](crate::SessionCapacity); every other node's
    /// value, and every later change of it, is ignored — change the capacity with
    /// [`Node::set_session_capacity`](crate::Node::set_session_capacity).
    pub max_sessions: usize,
    /// Upper bound for one `write`, `read` or membership call. Default 10 s.
    pub request_timeout: Duration,
    /// Largest snapshot this node accepts from a leader, in bytes. Default 64 GiB.
    pub max_snapshot_bytes: u64,
    /// Largest encoded command `write` accepts, in bytes. Default 64 MiB; at most 256 MiB less
    /// [`log::ENTRY_FRAMING`](crate::log::ENTRY_FRAMING), the largest entry the log holds.
    pub max_command_bytes: usize,
    /// Write-ahead log tuning, including the size of its preallocated segments
    /// ([`WalOptions::segment_size`]), which the storage quota counts in full.
    pub wal: WalOptions,
    /// Also take a snapshot once the log has grown by this many bytes since the last one, or by
    /// the size of the last snapshot if that is larger (so the log stays within about twice the
    /// state's size, and a large state is not rewritten for every few megabytes of log); `0`
    /// snapshots by entry count only. Default 64 MiB. With large values, [`Config::snapshot_every`]
    /// alone would let the log fill the disk long before a snapshot.
    pub snapshot_log_bytes: u64,
    /// The storage quota and NOSPACE alarm (durable nodes only); see [`QuotaOptions`].
    pub quota: QuotaOptions,
    /// Most bytes of log entries the leader puts in one AppendEntries message (or one message of
    /// a replication stream), counting each entry's command plus a fixed overhead. An entry larger
    /// than this still goes, alone. Default 8 MiB: far above what small writes batch to (300
    /// entries of a few hundred bytes), far below a transport's message limit.
    pub max_append_bytes: usize,
    /// Most bytes of responses the client session table remembers (plus 64 bytes per client);
    /// the client whose last write is oldest is forgotten first. Default 64 MiB. The table is in
    /// every snapshot's header, so this also bounds the header. Read only at initialize, like
    /// [`Config::max_sessions`].
    pub max_session_bytes: usize,
    /// Largest response the session table keeps for a retried write. A retry of a write whose
    /// response was larger gets [`ApplyError::ResponseNotKept`](crate::ApplyError) (applied,
    /// answer unknown) instead of the response. Default 1 MiB; at most
    /// [`Config::max_session_bytes`]. Read only at initialize, like [`Config::max_sessions`].
    pub max_session_response_bytes: usize,
    /// The clock this node stamps writes and reads with while it leads (see [`Clock`]).
    /// Default: [`SystemClock`](crate::SystemClock).
    pub clock: Arc<dyn Clock>,
    /// Write proposals the leader keeps in flight before further writes queue and are
    /// combined: when one completes, every write queued meanwhile (up to 16 KiB of commands, or
    /// [`Config::max_command_bytes`] if smaller) is proposed as one log entry, each write
    /// still applied under its own session with its own output. Under many concurrent writers
    /// this pays the per-entry costs (consensus, log record, replication, apply) once per batch;
    /// a write that finds a free slot is proposed at once, as its own entry. `0` proposes every
    /// write as its own entry. Default 4.
    pub combine_writes_after: usize,
}

impl Config {
    fn new(id: NodeId, storage: Storage) -> Config {
        Config {
            id,
            storage,
            cluster_name: "raftkit".to_string(),
            heartbeat_interval: Duration::from_millis(50),
            election_timeout: Duration::from_millis(400),
            snapshot_every: 100_000,
            keep_after_snapshot: 1_000,
            max_sessions: 10_000,
            request_timeout: Duration::from_secs(10),
            max_snapshot_bytes: 64 << 30,
            max_command_bytes: 64 << 20,
            wal: WalOptions::default(),
            snapshot_log_bytes: 64 << 20,
            quota: QuotaOptions::default(),
            max_append_bytes: 8 << 20,
            max_session_bytes: 64 << 20,
            max_session_response_bytes: 1 << 20,
            clock: Arc::new(crate::clock::SystemClock),
            combine_writes_after: 4,
        }
    }

    /// A node whose state survives restarts, kept under `dir`.
    pub fn durable(id: NodeId, dir: impl Into<PathBuf>) -> Config {
        Config::new(id, Storage::Dir(dir.into()))
    }

    /// A node that keeps everything in memory.
    pub fn in_memory(id: NodeId) -> Config {
        Config::new(id, Storage::Memory)
    }

    /// Sets the heartbeat interval and election timeout together (defaults 50 ms and 400 ms);
    /// the election timeout must be at least three heartbeat intervals.
    #[must_use]
    pub fn with_timing(mut self, heartbeat: Duration, election_timeout: Duration) -> Config {
        self.heartbeat_interval = heartbeat;
        self.election_timeout = election_timeout;
        self
    }

    /// Sets the snapshot policy: snapshot every `every` applied entries (`0`: never by count),
    /// keeping `keep` already-snapshotted entries in the log (defaults 100 000 and 1 000).
    #[must_use]
    pub fn with_snapshots(mut self, every: u64, keep: u64) -> Config {
        self.snapshot_every = every;
        self.keep_after_snapshot = keep;
        self
    }

    /// Sets the upper bound of each `write`, `read` or membership call (default 10 s; not zero).
    #[must_use]
    pub fn with_request_timeout(mut self, timeout: Duration) -> Config {
        self.request_timeout = timeout;
        self
    }

    /// Sets the write-ahead log options (default [`WalOptions::default`]).
    #[must_use]
    pub fn with_wal(mut self, wal: WalOptions) -> Config {
        self.wal = wal;
        self
    }

    /// Sets the log size since the last snapshot that triggers a new one (default 64 MiB; `0`: by
    /// count only); see [`Config::snapshot_log_bytes`].
    #[must_use]
    pub fn with_snapshot_log_bytes(mut self, bytes: u64) -> Config {
        self.snapshot_log_bytes = bytes;
        self
    }

    /// Sets the clock the node stamps writes and reads with while it leads (default
    /// [`SystemClock`](crate::SystemClock)).
    #[must_use]
    pub fn with_clock(mut self, clock: impl Clock) -> Config {
        self.clock = Arc::new(clock);
        self
    }

    /// Sets the storage quota (default [`QuotaOptions::default`]).
    #[must_use]
    pub fn with_quota(mut self, quota: QuotaOptions) -> Config {
        self.quota = quota;
        self
    }

    /// Sets the cluster name shown in logs (default `"raftkit"`).
    #[must_use]
    pub fn with_cluster_name(mut self, name: impl Into<String>) -> Config {
        self.cluster_name = name.into();
        self
    }

    /// Sets the heartbeat interval alone (default 50 ms); see [`Config::heartbeat_interval`].
    #[must_use]
    pub fn with_heartbeat_interval(mut self, interval: Duration) -> Config {
        self.heartbeat_interval = interval;
        self
    }

    /// Sets the election timeout alone (default 400 ms); see [`Config::election_timeout`].
    #[must_use]
    pub fn with_election_timeout(mut self, timeout: Duration) -> Config {
        self.election_timeout = timeout;
        self
    }

    /// Sets how many applied entries trigger a snapshot (default 100 000; `0`: never by count).
    #[must_use]
    pub fn with_snapshot_every(mut self, entries: u64) -> Config {
        self.snapshot_every = entries;
        self
    }

    /// Sets how many already-snapshotted entries stay in the log (default 1 000).
    #[must_use]
    pub fn with_keep_after_snapshot(mut self, entries: u64) -> Config {
        self.keep_after_snapshot = entries;
        self
    }

    /// Sets the session capacity a new cluster starts with (default 10 000); see
    /// [`Config::max_sessions`].
    #[must_use]
    pub fn with_max_sessions(mut self, sessions: usize) -> Config {
        self.max_sessions = sessions;
        self
    }

    /// Sets the largest snapshot accepted from a leader (default 64 GiB).
    #[must_use]
    pub fn with_max_snapshot_bytes(mut self, bytes: u64) -> Config {
        self.max_snapshot_bytes = bytes;
        self
    }

    /// Sets the largest encoded command `write` accepts (default 64 MiB).
    #[must_use]
    pub fn with_max_command_bytes(mut self, bytes: usize) -> Config {
        self.max_command_bytes = bytes;
        self
    }

    /// Sets how many write proposals the leader keeps in flight before combining the writes
    /// that queue behind them (default 4; `0`: never); see [`Config::combine_writes_after`].
    #[must_use]
    pub fn with_combine_writes_after(mut self, proposals: usize) -> Config {
        self.combine_writes_after = proposals;
        self
    }

    /// Sets the most bytes of entries in one replication message (default 8 MiB); see
    /// [`Config::max_append_bytes`].
    #[must_use]
    pub fn with_max_append_bytes(mut self, bytes: usize) -> Config {
        self.max_append_bytes = bytes;
        self
    }

    /// Sets the bytes of responses the session table of a new cluster remembers (default
    /// 64 MiB, at most 768 MiB); see [`Config::max_session_bytes`].
    #[must_use]
    pub fn with_max_session_bytes(mut self, bytes: usize) -> Config {
        self.max_session_bytes = bytes;
        self
    }

    /// Sets the largest response a new cluster's session table keeps for a retry (default
    /// 1 MiB); see [`Config::max_session_response_bytes`].
    #[must_use]
    pub fn with_max_session_response_bytes(mut self, bytes: usize) -> Config {
        self.max_session_response_bytes = bytes;
        self
    }

    /// Sets the clock from a shared handle; see [`Config::with_clock`].
    #[must_use]
    pub fn with_shared_clock(mut self, clock: Arc<dyn Clock>) -> Config {
        self.clock = clock;
        self
    }

    /// The session capacity [`Node::initialize`](crate::Node::initialize) gives a new cluster.
    pub(crate) fn session_capacity(&self) -> crate::SessionCapacity {
        crate::SessionCapacity {
            max_sessions: self.max_sessions as u64,
            max_bytes: self.max_session_bytes as u64,
            max_response_bytes: self.max_session_response_bytes as u64,
        }
    }

    /// Checks the settings and translates them for openraft.
    pub(crate) fn to_openraft(&self) -> Result<openraft::Config, Error> {
        let hb = self.heartbeat_interval.as_millis() as u64;
        let et = self.election_timeout.as_millis() as u64;
        if hb == 0 {
            return Err(Error::Config(
                "heartbeat_interval must be at least 1 ms".into(),
            ));
        }
        if et < 3 * hb {
            return Err(Error::Config(format!(
                "election_timeout ({et} ms) must be at least three heartbeat intervals ({hb} ms)"
            )));
        }
        if self.request_timeout.is_zero() {
            return Err(Error::Config("request_timeout must not be zero".into()));
        }
        if self.wal.segment_size < 4096 {
            return Err(Error::Config(
                "wal.segment_size must be at least 4096 bytes".into(),
            ));
        }
        if self.quota.check_interval.is_zero() {
            return Err(Error::Config(
                "quota.check_interval must not be zero".into(),
            ));
        }
        if let Some(why) = crate::session::oversized_response(self.session_capacity()) {
            return Err(Error::Config(why));
        }
        let largest_entry = self
            .max_command_bytes
            .saturating_add(crate::log::ENTRY_FRAMING);
        if largest_entry > crate::log::MAX_ENTRY_BYTES {
            return Err(Error::Config(format!(
                "max_command_bytes ({}) must be at most {}: the write-ahead log holds entries of up to {} bytes, and a command it could not hold would stop every leader it reached",
                self.max_command_bytes,
                crate::log::MAX_ENTRY_BYTES - crate::log::ENTRY_FRAMING,
                crate::log::MAX_ENTRY_BYTES
            )));
        }
        if self.max_append_bytes == 0 {
            return Err(Error::Config("max_append_bytes must not be zero".into()));
        }
        if self.max_session_bytes > MAX_SESSION_BYTES {
            return Err(Error::Config(format!(
                "max_session_bytes ({}) must be at most {MAX_SESSION_BYTES}: the session table must fit in a snapshot header",
                self.max_session_bytes
            )));
        }
        let policy = match self.snapshot_every {
            0 => openraft::SnapshotPolicy::Never,
            n => openraft::SnapshotPolicy::LogsSinceLast(n),
        };
        let cfg = openraft::Config {
            cluster_name: self.cluster_name.clone(),
            heartbeat_interval: hb,
            // openraft's default, pinned: every heartbeat is sent, also while replication flows.
            // A follower may at times take the leader's commit index from heartbeats only
            // (`validate::limit_commit`, `node::shadow`).
            heartbeat_min_interval: Some(0),
            election_timeout_min: et,
            election_timeout_max: 2 * et,
            snapshot_policy: policy,
            max_in_snapshot_log_to_keep: self.keep_after_snapshot,
            // Followers further behind than this get a snapshot rather than the log.
            replication_lag_threshold: self.snapshot_every.max(self.keep_after_snapshot).max(1000),
            install_snapshot_timeout: self.request_timeout.as_millis() as u64,
            // A node that returns from a restart must win an election like everyone else: the
            // commit index is persisted only as a hint.
            enable_leader_restore: Some(false),
            enable_pre_vote: Some(true),
            ..Default::default()
        };
        cfg.validate().map_err(|e| Error::Config(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::in_memory(1).to_openraft().unwrap();
        Config::durable(1, "/tmp/x").to_openraft().unwrap();
    }

    #[test]
    fn a_kept_response_larger_than_the_session_table_is_refused() {
        let c = Config::in_memory(1).with_max_session_bytes(1 << 20);
        assert!(
            c.clone()
                .with_max_session_response_bytes(1 << 20)
                .to_openraft()
                .is_ok()
        );
        let c = c.with_max_session_response_bytes((1 << 20) + 1);
        assert!(matches!(c.to_openraft(), Err(Error::Config(_))));
    }

    #[test]
    fn commands_the_log_cannot_hold_are_refused() {
        let largest = crate::log::MAX_ENTRY_BYTES - crate::log::ENTRY_FRAMING;
        let c = Config::durable(1, "/tmp/x").with_max_command_bytes(largest);
        assert!(c.to_openraft().is_ok());
        let c = c.with_max_command_bytes(largest + 1);
        assert!(matches!(c.to_openraft(), Err(Error::Config(_))));
        let c = c.with_max_command_bytes(usize::MAX);
        assert!(matches!(c.to_openraft(), Err(Error::Config(_))));
    }

    #[test]
    fn bad_timing_is_refused() {
        let c = Config::in_memory(1)
            .with_timing(Duration::from_millis(100), Duration::from_millis(200));
        assert!(matches!(c.to_openraft(), Err(Error::Config(_))));
    }
}
