//! [`Node`]: one member of a replicated state machine.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering as AtomicOrdering;
use std::time::Duration;

use bytes::Bytes;
use openraft::BasicNode;
use openraft::ChangeMembers;
use openraft::Raft;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::errors::ChangeMembershipError;
use openraft::errors::ClientWriteError;
use openraft::errors::Fatal;
use openraft::errors::ForwardReason;
use openraft::errors::RaftError;
use openraft::raft::ClientWriteResponse;

use crate::addr::same_address;
use crate::apply::Applier;
use crate::apply::SmShared;
use crate::apply::SnapshotHealth;
use crate::apply::SnapshotStats;
use crate::backup::BackupInfo;
use crate::cluster_id::ClusterId;
use crate::cluster_id::ClusterIdentity;
use crate::codec;
use crate::config::Config;
use crate::config::Storage;
use crate::error::Error;
use crate::error::Result;
use crate::leader::LeaderHint;
use crate::log::LogStats;
use crate::log::LogStatsHandle;
use crate::log::LogStore;
use crate::metrics::Metrics;
use crate::metrics::MetricsWatch;
use crate::metrics::Role;
use crate::snapshot::SnapshotError;
use crate::snapshot::SnapshotStore;
use crate::space::Space;
use crate::space::StorageStatus;
use crate::state_machine::Queryable;
use crate::state_machine::ReadContext;
use crate::state_machine::StateMachine;
use crate::transport::Transport;
use crate::types::ApplyError;
use crate::types::NodeId;
use crate::types::Proposal;
use crate::types::Request;
use crate::types::Response;
use crate::types::Session;
use crate::types::SessionCapacity;
use crate::types::TypeConfig;

mod combine;
mod errors;
mod handler;
mod quorum;
mod shadow;
mod stop;
mod transport;

/// A log position that a linearizable read must wait for, issued by the leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct ReadIndex {
    /// The term of the leader that issued it.
    pub term: u64,
    /// The log index to be applied before reading.
    pub index: u64,
    /// The leader's clock (ms since the epoch) when it confirmed its leadership for this read:
    /// the time the read is ordered at, for expiry ([`ReadContext`]). 0 from a leader that
    /// predates read times; the read then happens at the time of the state it reads.
    #[serde(default)]
    pub time_ms: u64,
}

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Consistency {
    /// Linearizable: the leader confirms with a quorum that it still leads (ReadIndex), waits
    /// until it has applied everything committed before the read, then reads. Sees every write
    /// acknowledged before the read started. Only the leader serves it.
    #[default]
    Linearizable,
    /// Linearizable under a leader lease: skips the quorum round trip while the leader's lease
    /// (renewed by heartbeats) is valid, falling back to ReadIndex when it is not. Assumes clocks
    /// do not drift faster than the election timeout. Only the leader serves it. The read is
    /// ordered at the leader's clock when it checked its lease (see [`crate::Clock`]).
    Lease,
    /// Whatever this node has applied, on any node, with no coordination. May be stale.
    Local,
}

pub(crate) type RaftHandle<S> = Raft<TypeConfig, Applier<S>>;

/// How often a request waiting on the consensus engine checks that the engine still runs
/// (see [`Node::with_timeout`]).
const STOP_CHECK: Duration = Duration::from_secs(1);

/// How long [`Node::stopped`] waits for the snapshot store to close (for a placement under way
/// to finish) before it resolves anyway.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

/// How long [`Node::snapshot`] waits for a build to start before it asks again.
const RETRIGGER: Duration = Duration::from_millis(50);

pub(crate) struct Inner<S: StateMachine> {
    id: NodeId,
    config: Config,
    pub(crate) raft: RaftHandle<S>,
    sm: Arc<SmShared<S>>,
    snapshots: Arc<SnapshotStore>,
    snapshot_health: Arc<SnapshotHealth>,
    log_stats: LogStatsHandle,
    /// What the log holds, for checking a leader's requests against it.
    log_ids: crate::log::LogIds,
    /// Held while a peer's snapshot is checked and installed: the last log id of the last one
    /// installed (see `handler`).
    installed: Arc<tokio::sync::Mutex<Option<crate::types::LogId>>>,
    /// The largest commit index let through from the newest leader (see `shadow::LetThrough`).
    let_through: Arc<shadow::LetThrough>,
    space: Arc<Space>,
    cluster: Arc<ClusterIdentity>,
    /// Set while a backup is being written (one at a time).
    exporting: Arc<std::sync::atomic::AtomicBool>,
    /// The largest time this node has stamped on a write or a read (see [`Node::stamp`]).
    last_stamp: AtomicU64,
    /// This data directory's incarnation (see [`crate::incarnation`]).
    incarnation: u64,
    /// Members whose incarnation binding this node (as leader) is proposing now.
    binding: Arc<Mutex<BTreeSet<NodeId>>>,
    /// Writes queued behind the proposals in flight (see [`combine`]).
    combiner: combine::Combiner,
    /// Held while this node proposes a session capacity; `true` once a
    /// [`Node::set_session_capacity`] here may have been applied, after which the configured
    /// capacity an initialization proposes in the background is not proposed any more.
    capacity_set: tokio::sync::Mutex<bool>,
    /// The node's one stop (see [`stop::Stop`]).
    stop: stop::Stop,
    #[cfg(feature = "testing")]
    power: Option<crate::log::PowerSwitch>,
    #[cfg(feature = "testing")]
    fault: Option<crate::log::FaultSwitch>,
}

/// Decodes what an applied write returned. A failure is reported as the output's, so that the
/// caller learns the write was applied ([`Error::may_have_applied`]).
fn applied_output<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    codec::decode(bytes).map_err(|e| {
        Error::Rejected(ApplyError::OutputEncoding(format!(
            "it does not decode here: {e}"
        )))
    })
}

/// The responses of an entry that carries `n` writes (`what`: "a batch", …), in order.
fn responses_of(entry: Response, n: usize, what: &str) -> Result<Vec<Response>> {
    let responses: Vec<Response> = applied_output(&entry.into_output(what)?)?;
    if responses.len() != n {
        return Err(Error::Fatal(format!(
            "{what} of {n} writes produced {} outputs",
            responses.len()
        )));
    }
    Ok(responses)
}

/// One member of a replicated state machine. Cheap to clone; clones share the node.
///
/// ```no_run
/// # use raft_core::{Node, Config, StateMachine, Consistency};
/// # async fn demo<S: StateMachine<Command = u64>, T: raft_core::Transport>(sm: S, transport: T) -> raft_core::Result<()> {
/// let node = Node::start(Config::durable(1, "/var/lib/app/n1"), sm, transport).await?;
/// if !node.is_initialized().await? {
///     node.initialize([(1, "10.0.0.1:7000"), (2, "10.0.0.2:7000"), (3, "10.0.0.3:7000")]).await?;
/// }
/// let output = node.write(5).await?;
/// let value = node.read(Consistency::Linearizable, |sm| sm.snapshot()).await?;
/// # Ok(()) }
/// ```
pub struct Node<S: StateMachine> {
    inner: Arc<Inner<S>>,
}

impl<S: StateMachine> Clone for Node<S> {
    fn clone(&self) -> Self {
        Node {
            inner: self.inner.clone(),
        }
    }
}

impl<S: StateMachine> std::fmt::Debug for Node<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.inner.id)
            .finish_non_exhaustive()
    }
}

impl<S: StateMachine> Node<S> {
    /// Starts a node: opens (or creates) its storage, recovers its log and latest snapshot, and
    /// joins whatever cluster its stored membership names.
    ///
    /// A node with durable storage that ran before needs nothing else. A brand-new cluster is
    /// formed by calling [`Node::initialize`] on one node; a new node joining an existing cluster
    /// is added by the leader with [`Node::add_learner`].
    ///
    /// A data directory that a restore is filling, or that an interrupted restore left half
    /// built, is refused with [`Error::Backup`] ([`BackupError::RestoreRunning`] or
    /// [`BackupError::Interrupted`](crate::backup::BackupError::Interrupted)) before anything in
    /// it is read or created.
    ///
    /// [`BackupError::RestoreRunning`]: crate::backup::BackupError::RestoreRunning
    pub async fn start(
        config: Config,
        state_machine: S,
        transport: impl Transport,
    ) -> Result<Node<S>> {
        let raft_config = Arc::new(config.to_openraft()?);
        let id = config.id;
        // Before anything is read or created: no restore may be filling the directory.
        let _restore_guard = Self::guard_against_restore(&config.storage).await?;
        // The cluster id first: the snapshot store checks its files against it.
        let cluster = Arc::new(Self::open_cluster_id(&config.storage).await?);
        let incarnation = Self::open_incarnation(&config.storage).await?;
        let (log, snapshots) = match &config.storage {
            Storage::Dir(dir) => Self::open_storage(dir, &config, cluster.clone()).await?,
            Storage::Memory => (
                LogStore::memory(),
                SnapshotStore::memory(config.max_snapshot_bytes, cluster.clone()),
            ),
        };
        let mut log = log;
        log.set_append_budget(config.max_append_bytes);
        let snapshots = Arc::new(snapshots);
        let log_stats = log.stats_handle();
        let log_ids = log.ids();
        #[cfg(feature = "testing")]
        let power = log.power_switch();
        #[cfg(feature = "testing")]
        let fault = log.fault_switch();
        let sm = SmShared::new(state_machine);
        let snapshot_health = Arc::new(SnapshotHealth::default());
        let applier = Applier::new(sm.clone(), snapshots.clone(), snapshot_health.clone());
        // Every peer's answer is checked before openraft reads it (see `crate::answers`).
        let transport = crate::answers::CheckedTransport(transport);
        let raft = Raft::new(id, raft_config, transport, log, applier)
            .await
            .map_err(|e| errors::fatal(&e))?;
        let space = Arc::new(Space::new(&config.quota));
        let dir = match &config.storage {
            Storage::Dir(d) => Some(d.clone()),
            Storage::Memory => None,
        };
        let housekeeping = crate::housekeeping::Housekeeping {
            config: config.clone(),
            dir,
            space: space.clone(),
            log_stats: log_stats.clone(),
            snapshots: snapshots.clone(),
        };
        tracing::info!(node = id, "node started");
        let combiner = combine::Combiner::new(
            config.combine_writes_after,
            config.max_command_bytes.min(combine::COMBINED_BYTES),
            config.election_timeout,
        );
        let node = Node {
            inner: Arc::new(Inner {
                id,
                config,
                raft,
                sm,
                snapshots,
                snapshot_health,
                log_stats,
                log_ids,
                installed: Arc::default(),
                let_through: Arc::default(),
                space,
                cluster,
                exporting: Arc::default(),
                last_stamp: AtomicU64::new(0),
                incarnation,
                binding: Arc::default(),
                combiner,
                capacity_set: tokio::sync::Mutex::new(false),
                stop: stop::Stop::default(),
                #[cfg(feature = "testing")]
                power,
                #[cfg(feature = "testing")]
                fault,
            }),
        };
        // The task holds the node weakly, so dropping every handle still stops the node.
        tokio::spawn(housekeeping.run(Arc::downgrade(&node.inner)));
        Ok(node)
    }

    async fn open_storage(
        dir: &Path,
        config: &Config,
        cluster: Arc<ClusterIdentity>,
    ) -> Result<(LogStore, SnapshotStore)> {
        let wal_dir = dir.join("wal");
        let snap_dir = dir.join("snapshots");
        let (id, wal, max) = (config.id, config.wal.clone(), config.max_snapshot_bytes);
        tokio::task::spawn_blocking(move || -> Result<(LogStore, SnapshotStore)> {
            let snaps = SnapshotStore::open(&snap_dir, max, cluster)?;
            // Verify the current snapshot now, so a damaged one (or another cluster's) stops the
            // start with a clear error.
            let snapshot = snaps.current()?.and_then(|(meta, _)| meta.last_log_id);
            // A snapshot without the log's meta file means the file (or the whole log) was
            // lost. Refused before opening the log, which would write a fresh meta file: the
            // next start would then find one and forget this node's vote.
            if snapshot.is_some() && !crate::log::has_meta(&wal_dir)? {
                return Err(crate::log::meta_lost(
                    &wal_dir,
                    format_args!("{} holds a snapshot", snap_dir.display()),
                )
                .into());
            }
            let log = LogStore::open(&wal_dir, id, wal)?;
            check_storage_agrees(&snap_dir, log.purged(), snapshot)?;
            Ok((log, snaps))
        })
        .await
        .map_err(|e| Error::Fatal(format!("storage open task failed: {e}")))?
    }

    async fn guard_against_restore(storage: &Storage) -> Result<Option<crate::backup::StartGuard>> {
        let Storage::Dir(dir) = storage else {
            return Ok(None);
        };
        let dir = dir.clone();
        let guard = tokio::task::spawn_blocking(move || crate::backup::guard_start(&dir))
            .await
            .map_err(|e| Error::Fatal(format!("data directory check failed: {e}")))??;
        Ok(Some(guard))
    }

    async fn open_cluster_id(storage: &Storage) -> Result<ClusterIdentity> {
        let dir = match storage {
            Storage::Dir(dir) => Some(dir.clone()),
            Storage::Memory => None,
        };
        tokio::task::spawn_blocking(move || ClusterIdentity::open(dir.as_deref()))
            .await
            .map_err(|e| Error::Fatal(format!("cluster id task failed: {e}")))?
            .map_err(|e| Error::Storage(e.to_string()))
    }

    async fn open_incarnation(storage: &Storage) -> Result<u64> {
        let dir = match storage {
            Storage::Dir(dir) => Some(dir.clone()),
            Storage::Memory => None,
        };
        tokio::task::spawn_blocking(move || -> Result<u64> {
            // A log without its meta file has forgotten this node's vote (see
            // `crate::incarnation`).
            let log_kept = match &dir {
                Some(dir) => crate::log::has_meta(&dir.join("wal"))
                    .map_err(|e| Error::Storage(e.to_string()))?,
                None => true,
            };
            crate::incarnation::open(dir.as_deref(), log_kept)
                .map_err(|e| Error::Storage(e.to_string()))
        })
        .await
        .map_err(|e| Error::Fatal(format!("incarnation task failed: {e}")))?
    }

    /// This node's incarnation: drawn when its data directory was first used, new after a wipe
    /// (see [`crate::incarnation`]).
    pub fn incarnation(&self) -> u64 {
        self.inner.incarnation
    }

    /// The incarnation the cluster bound to member `id`, as this node has applied it.
    pub fn bound_incarnation(&self, id: NodeId) -> Option<u64> {
        self.inner.sm.binding(id)
    }

    /// The id of the cluster this node belongs to: drawn by [`Node::initialize`], learnt from
    /// the first accepted RPC on other nodes, stored with the node's data. `None` until then.
    pub fn cluster_id(&self) -> Option<ClusterId> {
        self.inner.cluster.get()
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// This node's role now. Cheaper than [`Node::metrics`] (no copying), for hot paths.
    pub fn role(&self) -> Role {
        Role::of(&self.inner.raft.metrics().borrow_watched())
    }

    /// The leader this node knows of, and its address if it is a member; cheaper than
    /// [`Node::metrics`]. The hint names no leader during an election or before this node has
    /// heard from one ([`LeaderHint::is_known`]).
    pub fn leader(&self) -> LeaderHint {
        let rx = self.inner.raft.metrics();
        let m = rx.borrow_watched();
        match m.current_leader {
            Some(l) => LeaderHint::new(Some(l), self.addr_in(&m, l)),
            None => LeaderHint::unknown(),
        }
    }

    fn addr_in(&self, m: &openraft::RaftMetrics<TypeConfig>, id: NodeId) -> Option<String> {
        m.membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.addr.clone())
    }

    /// The configuration the node was started with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Whether the node has cluster state (from `initialize`, from a leader, or from disk).
    pub async fn is_initialized(&self) -> Result<bool> {
        self.inner
            .raft
            .is_initialized()
            .await
            .map_err(|e| errors::fatal(&e))
    }

    /// Forms a new cluster with `members` (id and address each) as its voters. Call it on one
    /// node, once, when the cluster is first created; it fails with
    /// [`Error::AlreadyInitialized`] on a node that has any state.
    ///
    /// It also draws the cluster's id ([`Node::cluster_id`]), stored before the cluster forms;
    /// the other members learn it from this node's first RPC.
    pub async fn initialize<A: Into<String>>(
        &self,
        members: impl IntoIterator<Item = (NodeId, A)>,
    ) -> Result<()> {
        let members: BTreeMap<NodeId, BasicNode> = members
            .into_iter()
            .map(|(id, a)| (id, BasicNode::new(a.into())))
            .collect();
        if self.cluster_id().is_none() && !self.is_initialized().await? {
            let cluster = self.inner.cluster.clone();
            tokio::task::spawn_blocking(move || cluster.adopt(ClusterId::random()))
                .await
                .map_err(|e| Error::Fatal(format!("cluster id task failed: {e}")))?
                .map_err(|e| Error::Storage(e.to_string()))?;
        }
        match self.inner.raft.initialize(members).await {
            Ok(()) => {
                self.spawn_initial_session_capacity();
                Ok(())
            }
            Err(e) => Err(errors::initialize(e)),
        }
    }

    /// Makes this node's configured session capacity the cluster's, once it leads the cluster
    /// it just initialized (the initializing node is the first leader in practice: it is the
    /// only one that knows the membership). Runs in the background so that `initialize` does
    /// not wait for the other members to start. The default capacity needs no entry.
    fn spawn_initial_session_capacity(&self) {
        let capacity = crate::session::clamp(self.inner.config.session_capacity());
        if capacity == SessionCapacity::default() {
            return;
        }
        // Weak, so a dropped node is not kept alive by this task.
        let weak = Arc::downgrade(&self.inner);
        let patience = self.inner.config.request_timeout.saturating_mul(6);
        tokio::spawn(async move {
            let Some(inner) = weak.upgrade() else { return };
            let node = Node { inner };
            let led =
                tokio::time::timeout(patience, node.wait_raw(|m| m.current_leader.is_some())).await;
            let result = match led {
                Ok(true) if node.role() == Role::Leader => {
                    let set = node.inner.capacity_set.lock().await;
                    if *set {
                        // An explicit capacity came first: it stays.
                        return;
                    }
                    node.propose_session_capacity(capacity).await
                }
                Ok(false) => return,
                _ => Err(Error::NotLeader(LeaderHint::new(node.leader().id(), None))),
            };
            match result {
                Ok(()) => tracing::info!(
                    ?capacity,
                    "cluster session capacity set from this node's configuration"
                ),
                Err(error) => {
                    tracing::warn!(%error, ?capacity, "could not make the configured session capacity the cluster's; the default stays until set_session_capacity is called")
                }
            }
        });
    }

    /// Runs `fut` for at most the request timeout ([`Error::Timeout`] then). Past each
    /// [`STOP_CHECK`] of waiting it also checks whether the consensus engine has stopped, and
    /// if so fails at once with what stopped it ([`Error::Shutdown`] after a shutdown; the
    /// outcome of a write is then unknown). A request handed to the engine just as it stopped
    /// could otherwise wait for its whole timeout: tokio's bounded channel keeps a message
    /// pushed after its receiver's drop has emptied it, neither answered nor dropped, until
    /// the last sender goes, and openraft's handle keeps one for as long as the node lives.
    /// The check costs nothing while requests answer within [`STOP_CHECK`].
    async fn with_timeout<T>(&self, fut: impl Future<Output = Result<T>>) -> Result<T> {
        self.with_timeout_ticking(fut, || ()).await
    }

    /// [`Node::with_timeout`], also calling `tick` at each [`STOP_CHECK`] of waiting.
    async fn with_timeout_ticking<T>(
        &self,
        fut: impl Future<Output = Result<T>>,
        mut tick: impl FnMut(),
    ) -> Result<T> {
        let limit = self.inner.config.request_timeout;
        let mut now = tokio::time::Instant::now();
        // A timeout past what an instant can hold never ends.
        let deadline = now.checked_add(limit);
        let mut fut = std::pin::pin!(fut);
        loop {
            let next = now + STOP_CHECK;
            let check_at = deadline.map_or(next, |d| next.min(d));
            match tokio::time::timeout_at(check_at, &mut fut).await {
                Ok(r) => return r,
                Err(_) if deadline.is_some_and(|d| check_at >= d) => {
                    return Err(Error::Timeout(limit));
                }
                Err(_) => {
                    tick();
                    let stopped = self
                        .inner
                        .raft
                        .metrics()
                        .borrow_watched()
                        .running_state
                        .clone();
                    if let Err(e) = stopped {
                        // `fut` may be the caller that joins openraft's core (as a failed send
                        // does), and dropping it mid-join would make every other caller panic:
                        // the join is finished first, from a thread nothing cancels, while
                        // `fut` is still polled (it may finish it itself, or answer).
                        let joined = self
                            .inner
                            .stop
                            .shutdown(&self.inner.raft, &self.inner.snapshots);
                        tokio::select! {
                            r = &mut fut => return r,
                            _ = joined => {}
                        }
                        return Err(match e {
                            Fatal::Stopped => Error::Shutdown,
                            e => errors::fatal(&e),
                        });
                    }
                    now = check_at;
                }
            }
        }
    }

    /// Replicates `command`, applies it on every node and returns this node's output. Only the
    /// leader accepts writes; elsewhere it fails with [`Error::NotLeader`]. So does a leader
    /// that has heard from no quorum of voters for two election timeouts (cut off from the
    /// majority, which may have elected another leader): within an election timeout, or at
    /// once if its proposals in flight are stuck. The command was not proposed. A write already
    /// queued behind stuck proposals is refused the same way once that lease has lapsed: with
    /// the next write, or at its own check, once a second (with a request timeout longer than
    /// a second; otherwise it times out).
    ///
    /// Every node encodes every write's output, so outputs are bounded: one whose encoding
    /// passes 64 MiB (or [`Config::max_session_response_bytes`](crate::Config), if larger),
    /// or that does not fit beside the outputs of writes that shared its log entry, fails with
    /// [`ApplyError::OutputEncoding`](crate::ApplyError::OutputEncoding) although the command
    /// was applied. A retry in the same session gets the output if the session kept it.
    pub async fn write(&self, command: S::Command) -> Result<S::Output> {
        self.write_inner(None, &command).await
    }

    /// Like [`Node::write`], stamped with a client session opened by
    /// [`Node::register_session`]: a retry with the same `session` returns the first attempt's
    /// output instead of applying the command twice. A session that is not open (never
    /// registered, closed or evicted) fails with
    /// [`ApplyError::UnknownSession`](crate::ApplyError::UnknownSession) — the command is not
    /// applied now, but an earlier attempt may have been.
    pub async fn write_in_session(
        &self,
        session: Session,
        command: S::Command,
    ) -> Result<S::Output> {
        self.write_inner(Some(session), &command).await
    }

    /// Replicates `commands` as one log entry (one round of consensus, one fsync on each
    /// node), applies them in order on every node, and returns this node's outputs in the same
    /// order. Use it for writes that arrive together (a pipelined client, a queue of requests):
    /// a batch of `n` writes costs about what one write does. The commands together may be at
    /// most [`Config::max_command_bytes`](crate::Config) long ([`Error::CommandTooLarge`]
    /// otherwise, nothing proposed). An empty batch proposes nothing. Only the leader accepts
    /// writes; elsewhere it fails with [`Error::NotLeader`]. If an output cannot be encoded,
    /// or the outputs together pass the bound described at [`Node::write`], the call fails
    /// with [`ApplyError::OutputEncoding`](crate::ApplyError::OutputEncoding) although every
    /// command was applied. A command whose bytes do not decode on the replicas is refused
    /// alone: the call fails with [`Error::PartlyApplied`] naming it, the others applied (or
    /// with `InvalidCommand` if no command of the batch decodes, nothing applied).
    pub async fn write_many(&self, commands: Vec<S::Command>) -> Result<Vec<S::Output>> {
        self.write_many_inner(None, &commands).await
    }

    /// Like [`Node::write_many`], stamped with one sequence of a client session (as
    /// [`Node::write_in_session`]): the whole batch is applied at most once, and a retry
    /// with the same `session` returns the first attempt's outputs.
    pub async fn write_many_in_session(
        &self,
        session: Session,
        commands: Vec<S::Command>,
    ) -> Result<Vec<S::Output>> {
        self.write_many_inner(Some(session), &commands).await
    }

    async fn write_many_inner(
        &self,
        session: Option<Session>,
        commands: &[S::Command],
    ) -> Result<Vec<S::Output>> {
        if commands.is_empty() {
            return Ok(Vec::new());
        }
        let encoded = commands
            .iter()
            .map(|c| codec::encode(c).map(Bytes::from))
            .collect::<std::result::Result<Vec<Bytes>, _>>()?;
        // Each command's length prefix counts too, so many empty commands are bounded as well.
        let size: usize = encoded
            .iter()
            .map(|c| c.len() + combine::PER_WRITE_BYTES)
            .sum();
        let limit = self.inner.config.max_command_bytes;
        if size > limit {
            return Err(Error::CommandTooLarge { size, limit });
        }
        if self.inner.space.refusing() {
            for command in commands {
                self.check_space_of(command)?;
            }
        }
        let proposal = Proposal::TimedBatch(session, self.stamp(), encoded);
        let response = self.propose_internal(proposal).await?;
        let responses = responses_of(response, commands.len(), "a batch")?;
        // A command that does not decode is refused alone: unless every command was, the rest
        // of the batch applied, which the caller must not take for "nothing applied".
        let undecodable =
            |r: &Response| matches!(r, Response::Rejected(ApplyError::InvalidCommand(_)));
        if !responses.iter().all(undecodable)
            && let Some((index, error)) = responses.iter().enumerate().find_map(|(i, r)| match r {
                Response::Rejected(e @ ApplyError::InvalidCommand(_)) => Some((i, e.clone())),
                _ => None,
            })
        {
            return Err(Error::PartlyApplied { index, error });
        }
        responses
            .into_iter()
            .map(|r| applied_output(&r.into_output("a batched write")?))
            .collect()
    }

    async fn write_inner(
        &self,
        session: Option<Session>,
        command: &S::Command,
    ) -> Result<S::Output> {
        let bytes = codec::encode(command)?;
        let out = self
            .write_encoded(Request {
                session,
                command: Bytes::from(bytes),
            })
            .await?;
        applied_output(&out)
    }

    /// Opens a client session for exactly-once writes (one replicated entry) and returns its
    /// client id. Number the session's writes `1, 2, 3, …` with
    /// [`Node::write_in_session`], one at a time, and close it with
    /// [`Node::close_session`] when done. A session that is never closed is evicted when the
    /// cluster's [`SessionCapacity`] is reached; a write on it then fails with
    /// [`ApplyError::UnknownSession`](crate::ApplyError::UnknownSession). Every registration
    /// that applies opens a session, retries after an unknown outcome included; see
    /// [`Node::register_session_keyed`] for registrations that are retried.
    pub async fn register_session(&self) -> Result<u64> {
        let id = self
            .propose_internal(Proposal::RegisterSession)
            .await?
            .into_output("session registration")?;
        applied_output(&id)
    }

    /// Opens a client session as [`Node::register_session`] does, registered with `key`; while
    /// the session is open, registering with the same key again opens nothing and returns its
    /// client id. A caller that retries a registration whose outcome it did not learn (a
    /// timeout, a leader change) therefore keeps one session, where blind retries would open
    /// one per attempt and, in a full table, evict other clients' sessions. Draw the key at
    /// random for each session and keep it across the retries of its registration; a key
    /// shared by two callers hands both the same session.
    ///
    /// The entry is one that versions before keyed registration cannot read: in a rolling
    /// upgrade, upgrade the leader last.
    pub async fn register_session_keyed(&self, key: u64) -> Result<u64> {
        let id = self
            .propose_internal(Proposal::RegisterKeyedSession(key))
            .await?
            .into_output("session registration")?;
        applied_output(&id)
    }

    /// Closes the session `client_id` (one replicated entry); closing a session that is not
    /// open succeeds and changes nothing.
    pub async fn close_session(&self, client_id: u64) -> Result<()> {
        self.propose_internal(Proposal::CloseSession(client_id))
            .await
            .map(drop)
    }

    /// Sets the cluster-wide bounds of the session table (one replicated entry; an admin
    /// operation). Lowering them evicts the sessions whose last write is oldest. Fails with
    /// [`Error::Config`] for a capacity of no sessions, of more than 768 MiB, or that keeps
    /// responses larger than the whole table.
    pub async fn set_session_capacity(&self, capacity: SessionCapacity) -> Result<()> {
        if capacity != crate::session::clamp(capacity) {
            return Err(Error::Config(format!(
                "session capacity {capacity:?} must allow at least one session and at most {} bytes",
                crate::config::MAX_SESSION_BYTES
            )));
        }
        if let Some(why) = crate::session::oversized_response(capacity) {
            return Err(Error::Config(why));
        }
        let mut set = self.inner.capacity_set.lock().await;
        let result = self.propose_session_capacity(capacity).await;
        // A capacity that may have been applied replaces the configured one for good; one
        // refused (not the leader yet, say) leaves it to be proposed.
        if result
            .as_ref()
            .map_or_else(Error::may_have_applied, |()| true)
        {
            *set = true;
        }
        result
    }

    async fn propose_session_capacity(&self, capacity: SessionCapacity) -> Result<()> {
        self.propose_internal(Proposal::SetSessionCapacity(capacity))
            .await
            .map(drop)
    }

    /// The cluster's session capacity as this node has applied it. Never waits (for a
    /// snapshot being restored, say).
    pub fn session_capacity(&self) -> SessionCapacity {
        self.inner.sm.session_capacity()
    }

    /// How many client sessions are open, as this node has applied it. Never waits (for a
    /// snapshot being restored, say).
    pub fn open_sessions(&self) -> usize {
        self.inner.sm.open_sessions()
    }

    /// The encoded session table as this node has applied it, to compare replicas.
    #[cfg(feature = "testing")]
    pub fn session_table_bytes(&self) -> Result<Vec<u8>> {
        Ok(codec::encode(self.inner.sm.read().sessions())?)
    }

    async fn propose_internal(&self, proposal: Proposal) -> Result<Response> {
        Ok(self
            .propose(|| self.inner.raft.client_write(proposal.clone()))
            .await?
            .data)
    }

    /// The time to stamp on a write this node proposes or a read it orders, as leader: its
    /// clock, raised to the time of the state applied here and to every time stamped before, so
    /// that stamps never decrease (one clock read and one atomic per call).
    fn stamp(&self) -> u64 {
        let t = self.local_time();
        // Most calls within one millisecond find the stamp already there: a load then, and a
        // write to the shared line only when the time has moved on.
        let last = self.inner.last_stamp.load(AtomicOrdering::Relaxed);
        if t <= last {
            return last;
        }
        t.max(self.inner.last_stamp.fetch_max(t, AtomicOrdering::Relaxed))
    }

    /// This node's clock, raised to the time of the state applied here.
    fn local_time(&self) -> u64 {
        self.inner
            .config
            .clock
            .now_ms()
            .max(self.inner.sm.applied_time())
    }

    /// While the storage alarm is raised: lets through only what the state machine allows.
    fn check_space(&self, request: &Request) -> Result<()> {
        match codec::decode_input::<S::Command>(&request.command) {
            Ok(c) => self.check_space_of(&c),
            Err(_) => self.refuse_for_space(),
        }
    }

    fn check_space_of(&self, command: &S::Command) -> Result<()> {
        if S::allowed_in_space_alarm(command) {
            return Ok(());
        }
        self.refuse_for_space()
    }

    /// The refusal of a write under the storage alarm.
    fn refuse_for_space(&self) -> Result<()> {
        let (node, reason) = self.inner.space.reason(self.inner.id);
        Err(Error::NoSpace { node, reason })
    }

    /// This node's storage: the latest measurement of its data directory and of its process's
    /// memory, its own NOSPACE alarm, and (on the leader) the voters known to be in alarm. See
    /// [`QuotaOptions`](crate::QuotaOptions).
    pub fn storage(&self) -> StorageStatus {
        self.inner.space.status()
    }

    /// Changes the memory limit ([`QuotaOptions::max_memory_bytes`](crate::QuotaOptions::max_memory_bytes);
    /// `0`: none) from now on. The latest sample is judged against it at once: lowering it
    /// below the memory held raises the alarm now, raising it above clears it. Other nodes
    /// keep their own limits.
    pub fn set_memory_limit(&self, bytes: u64) {
        self.inner.space.set_memory_limit(self.inner.id, bytes);
    }

    /// Resolves when the node stops: `Ok(())` after [`Node::shutdown`], or the error that
    /// stopped it — a storage failure (a failed write or fdatasync, a full disk, corruption) or
    /// a crash of the consensus engine. A stopped node serves nothing; an application should
    /// await this and exit (or restart the node), so that a supervisor restarts it rather than
    /// leaving a node that answers every request with an error. By the time it resolves, the
    /// node's snapshot store is closed: a snapshot build or receive still under way places and
    /// deletes nothing, so a node restarted in the same process on the same data directory is
    /// not raced by the one that stopped. (A placement already under way is waited for, at most
    /// 10 s: on a disk whose fsync hangs, it resolves anyway and logs a warning.)
    pub async fn stopped(&self) -> Result<()> {
        let outcome = self.engine_stopped().await;
        // Closing waits for a snapshot placement under way; on a failing disk its fsync may
        // hang, and the caller must still learn that the node stopped (to exit, say).
        let snapshots = self.inner.snapshots.clone();
        let closing = tokio::task::spawn_blocking(move || snapshots.close());
        if tokio::time::timeout(CLOSE_WAIT, closing).await.is_err() {
            tracing::warn!(
                node = self.inner.id,
                "the stopped node's snapshot store did not close within {CLOSE_WAIT:?}: a snapshot \
                 is still being placed"
            );
        }
        outcome
    }

    /// Resolves when the consensus engine stops, with how it stopped (see [`Node::stopped`]).
    async fn engine_stopped(&self) -> Result<()> {
        // Waits on the server metrics, which change only with the role, leader, vote or
        // membership, not on the full metrics, which change with every write: a waiter there
        // would be woken (and its thread unparked) once per write. The engine drops every
        // metrics sender when it ends, so the wait also ends then; it records why it stopped in
        // the full metrics first.
        let all = self.inner.raft.metrics();
        let mut server = self.inner.raft.server_metrics();
        let outcome = || match all.borrow_watched().running_state.clone() {
            Ok(()) => None,
            Err(Fatal::Stopped) => Some(Ok(())),
            Err(e) => Some(Err(errors::fatal(&e))),
        };
        loop {
            if let Some(r) = outcome() {
                return r;
            }
            if server.changed().await.is_err() {
                // The engine is gone; without a recorded error it was shut down.
                return outcome().unwrap_or(Ok(()));
            }
        }
    }

    /// Runs `f` on the state machine at the requested consistency and returns its result.
    ///
    /// `Linearizable` and `Lease` reads are served by the leader; elsewhere they fail with
    /// [`Error::NotLeader`]. (A transport serves them on followers by asking the leader for a
    /// [`ReadIndex`] and calling [`Node::read_at`].)
    pub async fn read<T>(&self, consistency: Consistency, f: impl FnOnce(&S) -> T) -> Result<T> {
        self.read_timed(consistency, |sm, _| f(sm)).await
    }

    /// Like [`Node::read`], and `f` also learns when the read was ordered ([`ReadContext`]), to
    /// decide time-dependent answers (expiry) with the leader's time rather than a local clock.
    pub async fn read_timed<T>(
        &self,
        consistency: Consistency,
        f: impl FnOnce(&S, &ReadContext) -> T,
    ) -> Result<T> {
        if consistency == Consistency::Local {
            self.restored().await?;
            return self.read_local(self.local_time(), f);
        }
        let at = self.read_index(consistency).await?;
        self.read_at_timed(at, f).await
    }

    /// Answers `query` ([`Queryable::query_at`]) at `consistency`.
    pub async fn query(&self, consistency: Consistency, query: S::Query) -> Result<S::Reply>
    where
        S: Queryable,
    {
        self.read_timed(consistency, |sm, ctx| sm.query_at(query, ctx))
            .await
    }

    /// Waits, within the request timeout, until no snapshot is being restored: a reader then
    /// takes the state's lock without blocking its thread for the restore.
    async fn restored(&self) -> Result<()> {
        if !self.inner.sm.restoring() {
            return Ok(());
        }
        self.with_timeout(async {
            self.inner.sm.restored().await;
            Ok(())
        })
        .await
    }

    /// Runs `f` on the state at the later of `time_ms` and the state's own time.
    fn read_local<T>(&self, time_ms: u64, f: impl FnOnce(&S, &ReadContext) -> T) -> Result<T> {
        let st = self.inner.sm.read();
        if let Some(why) = self.inner.sm.broken() {
            return Err(Error::Storage(why.into()));
        }
        let ctx = ReadContext::new(time_ms.max(st.time_ms()));
        Ok(f(&st.user, &ctx))
    }

    /// Adds `id` at `addr` as a learner and waits until it holds the log as it was when the
    /// learner was added (by replication or a snapshot). Leader only.
    ///
    /// * `Ok(())` means `id` is a member at `addr` and, if it is a learner, holds that log. A
    ///   node that is already a voter at `addr` is left as it is; one that is already a learner
    ///   at `addr` is not added again, only waited for (so a retried call is safe).
    /// * An `id` that is a member at another address, or an `addr` that another member uses,
    ///   is refused with [`Error::Membership`] and nothing changes. Addresses are compared as
    ///   endpoints without a resolver, by [`same_address`](crate::same_address): IP addresses
    ///   by value (`[::1]:7000` is `[0:0::1]:7000`), ports as numbers, host names ignoring
    ///   case and a final dot; `localhost` and `127.0.0.1` differ.
    /// * If the learner was added but did not catch up within the request timeout (it is
    ///   unreachable, or far behind), this fails with [`Error::LearnerNotCaughtUp`]: it stays
    ///   a member until [`Node::remove_node`] removes it.
    ///
    /// A node whose id is bound to another incarnation (its data was wiped since) is let in as
    /// a member but refused on every message, so it never catches up; use
    /// [`Node::add_learner_as`] to be told at once.
    pub async fn add_learner(&self, id: NodeId, addr: impl Into<String>) -> Result<()> {
        self.add_learner_as(id, addr, None).await
    }

    /// [`Node::add_learner`] for a node that says which `incarnation` it is (its
    /// [`Node::incarnation`]), as a node joining by itself does: an id bound to another
    /// incarnation is refused (that node's data was wiped: it must join under a new id), and an
    /// unbound id is bound to `incarnation` before it is added. Every guarantee of
    /// [`Node::add_learner`] holds.
    pub async fn add_learner_as(
        &self,
        id: NodeId,
        addr: impl Into<String>,
        incarnation: Option<u64>,
    ) -> Result<()> {
        self.require_leader()?;
        let addr = addr.into();
        let already = membership_conflict(&self.metrics(), id, &addr)?;
        if let Some(incarnation) = incarnation {
            match self.inner.sm.binding(id) {
                Some(bound) if bound != incarnation => {
                    return Err(Error::Membership(format!(
                        "node id {id} belongs to another data directory (incarnation {bound:016x}, this node is {incarnation:016x}): its data was wiped; remove node {id} and join under a new id"
                    )));
                }
                Some(_) => {}
                None => {
                    self.propose_internal(Proposal::BindIncarnation(id, incarnation))
                        .await?;
                    if self.inner.sm.binding(id) != Some(incarnation) {
                        return Err(Error::Membership(format!(
                            "node id {id} was bound to another incarnation meanwhile; join under a new id"
                        )));
                    }
                }
            }
        }
        let target = match already {
            Some(Member::Voter) => {
                tracing::info!(node = id, %addr, "already a voter at this address; nothing to add");
                return Ok(());
            }
            Some(Member::Learner) => {
                tracing::info!(node = id, %addr, "already a learner at this address; waiting for it to catch up");
                self.metrics().commit_index
            }
            None => {
                let node = BasicNode::new(addr.clone());
                let added = self
                    .propose(|| self.inner.raft.add_learner(id, node.clone(), false))
                    .await?;
                // openraft keeps an existing member as it is: a concurrent add of the same id
                // at another address may have won.
                if let Some(other) = self.metrics().members.get(&id).filter(|a| **a != addr) {
                    return Err(Error::Membership(format!(
                        "node {id} was added at {other} meanwhile; remove it first, or use a new id"
                    )));
                }
                Some(added.log_id.index)
            }
        };
        let limit = self.inner.config.request_timeout;
        let waited = self
            .wait_for(limit, |m| {
                m.role != Role::Leader || m.replication.get(&id).copied().flatten() >= target
            })
            .await;
        match waited {
            Err(Error::Timeout(_)) => {
                return Err(Error::LearnerNotCaughtUp {
                    id,
                    addr,
                    waited: limit,
                });
            }
            other => {
                other?;
            }
        }
        match self.metrics() {
            m if m.role == Role::Leader => Ok(()),
            m => Err(Error::NotLeader(LeaderHint::new(m.leader, m.leader_addr))),
        }
    }

    /// Makes learner `id` a voter once it holds this leader's log as it is now, leaving every
    /// other member as it is. The change is incremental, so promotions of different learners
    /// racing each other all take effect (unlike [`Node::change_membership`], which replaces the
    /// whole voter set). A node that is already a voter is left alone. Leader only.
    ///
    /// Fails with [`Error::Membership`], changing nothing, when a majority of the voters the
    /// change leads to has not answered this leader in the last two election timeouts: the
    /// change could never commit, and no write after it either.
    pub async fn add_voter(&self, id: NodeId) -> Result<()> {
        self.require_leader()?;
        let m = self.metrics();
        if m.voters.contains(&id) {
            return Ok(());
        }
        if !m.learners.contains(&id) {
            return Err(Error::Membership(format!(
                "node {id} is not a learner: add it as a learner first"
            )));
        }
        let target = m.last_log_index;
        self.wait_for(self.inner.config.request_timeout, |m| {
            m.role != Role::Leader || m.replication.get(&id).copied().flatten() >= target
        })
        .await?;
        self.require_leader()?;
        let mut voters = m.voters;
        voters.insert(id);
        self.require_majority_answering(&voters).await?;
        let change = ChangeMembers::AddVoterIds([id].into());
        self.propose(|| self.inner.raft.change_membership(change.clone(), false))
            .await
            .map(|_| ())
    }

    /// Makes `voters` the voting members (each must already be a member, e.g. a caught-up
    /// learner). Removed voters leave the cluster. Runs joint consensus when needed and returns
    /// once the final config is committed. Leader only.
    ///
    /// Fails with [`Error::Membership`], changing nothing, when a majority of the voters the
    /// change leads to has not answered this leader in the last two election timeouts: the
    /// change could never commit, and no write after it either.
    pub async fn change_membership(&self, voters: impl IntoIterator<Item = NodeId>) -> Result<()> {
        self.require_leader()?;
        let voters: BTreeSet<NodeId> = voters.into_iter().collect();
        self.require_majority_answering(&voters).await?;
        self.propose(|| self.inner.raft.change_membership(voters.clone(), false))
            .await
            .map(|_| ())
    }

    /// Removes node `id` from the cluster, whether it is a voter (the rest stay voters) or a
    /// learner. The change is incremental, so removals and promotions racing each other all
    /// take effect. Leader only.
    ///
    /// Fails with [`Error::Membership`], changing nothing, when a majority of the voters the
    /// change leads to has not answered this leader in the last two election timeouts: the
    /// change could never commit, and no write after it either.
    pub async fn remove_node(&self, id: NodeId) -> Result<()> {
        self.require_leader()?;
        let m = self.metrics();
        let change = if m.voters.contains(&id) {
            if m.voters.len() == 1 {
                return Err(Error::Membership("cannot remove the last voter".into()));
            }
            let mut rest = m.voters.clone();
            rest.remove(&id);
            self.require_majority_answering(&rest).await?;
            // Applied to the configuration in force when it is proposed (after any change in
            // flight), not to the one read here: a whole voter set computed now would undo a
            // change that commits meanwhile.
            ChangeMembers::RemoveVoters([id].into())
        } else if m.learners.contains(&id) {
            ChangeMembers::RemoveNodes([id].into())
        } else {
            return Err(Error::Membership(format!("node {id} is not a member")));
        };
        self.propose(|| self.inner.raft.change_membership(change.clone(), false))
            .await
            .map(|_| ())
    }

    /// Whether this node leads but has heard from no quorum for two election timeouts: cut off
    /// from the majority, whose side may have elected another leader meanwhile.
    fn quorum_silent(&self) -> bool {
        let window = crate::metrics::answer_window(self.inner.config.election_timeout);
        crate::metrics::leads_without_quorum(&self.inner.raft.metrics().borrow_watched(), window)
    }

    /// Refuses at once on a running node that does not lead, naming the leader if it is known
    /// (and is another node). openraft would refuse a membership call too, but it logs each such
    /// refusal as an error. A stopped node is let through, so the call reports why it stopped.
    fn require_leader(&self) -> Result<()> {
        if matches!(self.role(), Role::Leader | Role::Shutdown) {
            return Ok(());
        }
        let leader = self.leader();
        Err(Error::NotLeader(if leader.id() == Some(self.inner.id) {
            LeaderHint::unknown()
        } else {
            leader
        }))
    }

    /// Runs a proposal (`propose` is called again for each attempt) within the request timeout,
    /// riding out the conditions that clear on their own on a healthy leader:
    ///
    /// * a leader just elected (or just back in touch with its quorum) refuses proposals until a
    ///   quorum acknowledges it — it gets an election timeout to get there; an isolated leader
    ///   never does, and the caller is told to look elsewhere;
    /// * a membership change waits for the one in flight, or for the leader's first entry, to
    ///   commit.
    ///
    /// Every retried condition rejects the proposal before it is appended, so retrying cannot
    /// apply anything twice.
    async fn propose<F, Fut>(&self, propose: F) -> Result<ClientWriteResponse<TypeConfig>>
    where
        F: Fn() -> Fut,
        Fut: Future<
            Output = std::result::Result<
                ClientWriteResponse<TypeConfig>,
                RaftError<TypeConfig, ClientWriteError<TypeConfig>>,
            >,
        >,
    {
        self.with_timeout(async {
            let lease_deadline = tokio::time::Instant::now() + self.inner.config.election_timeout;
            loop {
                // What the retry conditions below wait to see move. A retried proposal changes
                // other metrics itself, so waiting on "any change" would spin.
                let (acked, term, committed, membership) = {
                    let rx = self.inner.raft.metrics();
                    let m = rx.borrow_watched();
                    (
                        m.last_quorum_acked,
                        m.current_term,
                        m.local_committed,
                        *m.membership_config.log_id(),
                    )
                };
                let e = match propose().await {
                    Ok(r) => return Ok(r),
                    Err(RaftError::Fatal(f)) => return Err(errors::fatal(&f)),
                    Err(RaftError::APIError(e)) => e,
                };
                let error = match e {
                    ClientWriteError::ForwardToLeader(f)
                        if f.reason == ForwardReason::LeaseExpired
                            && tokio::time::Instant::now() < lease_deadline =>
                    {
                        // Wait for a quorum to acknowledge this leader (or for it to step down).
                        let _ = tokio::time::timeout_at(
                            lease_deadline,
                            self.wait_raw(|m| {
                                m.last_quorum_acked != acked || m.current_term != term
                            }),
                        )
                        .await;
                        continue;
                    }
                    // Another membership change is in flight; or (PreconditionFailed, which
                    // only openraft's own guard on the second step of a voter change can
                    // raise: raftkit passes no preconditions) another change came between the
                    // joint config this one committed and its final config. Both end once the
                    // other change commits; the change is then proposed again from the
                    // configuration in force, which is where an incremental change belongs.
                    ClientWriteError::ChangeMembershipError(
                        ChangeMembershipError::InProgress(_)
                        | ChangeMembershipError::UncommittedLeaderLog(_),
                    )
                    | ClientWriteError::PreconditionFailed(_) => {
                        // Wait for something to commit.
                        if !self
                            .wait_raw(|m| {
                                m.local_committed != committed
                                    || *m.membership_config.log_id() != membership
                                    || m.current_term != term
                            })
                            .await
                        {
                            return Err(Error::Shutdown);
                        }
                        continue;
                    }
                    e => errors::client_write(e),
                };
                return Err(error);
            }
        })
        .await
    }

    /// Waits until `condition` holds for openraft's metrics; `false` if the node stopped.
    async fn wait_raw(
        &self,
        condition: impl Fn(&openraft::RaftMetrics<TypeConfig>) -> bool,
    ) -> bool {
        let mut rx = self.inner.raft.metrics();
        loop {
            if condition(&rx.borrow_watched()) {
                return true;
            }
            if rx.changed().await.is_err() {
                return false;
            }
        }
    }

    /// Hands leadership to `to` and waits until this node sees `to` as leader. Leader only.
    pub async fn transfer_leader(&self, to: NodeId) -> Result<()> {
        self.require_leader()?;
        let m = self.metrics();
        if !m.voters.contains(&to) {
            return Err(Error::Membership(format!("node {to} is not a voter")));
        }
        if to == self.inner.id {
            return Ok(());
        }
        self.inner
            .raft
            .trigger()
            .transfer_leader(to)
            .await
            .map_err(|e| errors::fatal(&e))?;
        let limit = self.inner.config.request_timeout;
        self.wait_for(limit, |m| m.leader == Some(to))
            .await
            .map(|_| ())
    }

    /// Asks the node to take a snapshot now (regardless of the snapshot policy, and of the pause
    /// after a failed one) and waits until it covers everything applied when this was called.
    /// A build that fails meanwhile fails the call with
    /// [`SnapshotError::BuildFailed`](crate::snapshot::SnapshotError::BuildFailed).
    pub async fn snapshot(&self) -> Result<()> {
        // From the state itself: the metrics can lag behind what was applied, and a target
        // taken from them would let this return before covering a write already answered.
        let target = self.inner.sm.read().applied_index();
        let limit = self.inner.config.request_timeout;
        let health = &self.inner.snapshot_health;
        self.with_timeout(async {
            loop {
                let before = self.metrics().snapshot_index;
                if before >= target {
                    return Ok(());
                }
                let failed = health.next_failure();
                let mut failed = std::pin::pin!(failed);
                failed.as_mut().enable();
                let started = health.next_start();
                let mut started = std::pin::pin!(started);
                started.as_mut().enable();
                let failures = health.failures();
                health.force_next();
                let landed = self.wait_for(limit, |m| {
                    m.snapshot_index >= target || m.snapshot_index != before
                });
                let mut landed = std::pin::pin!(landed);
                // openraft ignores the trigger while it counts a build as running: one under
                // way (when it lands without covering `target`, the outer loop asks again), or
                // one that has just failed, until it has taken the result. So it is asked
                // again until a build starts.
                let mut building = false;
                loop {
                    if !building {
                        self.inner
                            .raft
                            .trigger()
                            .snapshot()
                            .await
                            .map_err(|e| errors::fatal(&e))?;
                    }
                    tokio::select! {
                        r = &mut landed => {
                            r?;
                            break;
                        }
                        () = &mut failed => break,
                        () = &mut started, if !building => building = true,
                        () = tokio::time::sleep(RETRIGGER), if !building => {}
                    }
                }
                if health.failures() > failures {
                    let reason = self.snapshot_stats().last_error.unwrap_or_default();
                    return Err(SnapshotError::BuildFailed(reason).into());
                }
            }
        })
        .await
    }

    /// Writes a consistent backup of the replicated state to `out` (see [`crate::backup`]) and
    /// returns what it covers, with the writer. Leader only, like a linearizable read: it
    /// confirms leadership with a quorum, waits until that read index is applied, then streams
    /// the state machine's point-in-time handle and the session table into `out` on a blocking
    /// thread, never holding the state in memory. The backup holds every write acknowledged
    /// before the call. Restore it with [`crate::backup::restore_data_dir`].
    pub async fn export_snapshot<W: std::io::Write + Send + 'static>(
        &self,
        out: W,
    ) -> Result<(BackupInfo, W)> {
        let at = self.read_index(Consistency::Linearizable).await?;
        self.export_snapshot_at(at, out).await
    }

    /// [`Node::export_snapshot`] on any node, at a read index obtained from the leader (with
    /// [`Node::read_index`] there): waits until this node has applied `at`, then exports.
    ///
    /// A node writes one backup at a time: while one is being written, another fails at once
    /// with [`BackupError::Busy`](crate::BackupError::Busy).
    pub async fn export_snapshot_at<W: std::io::Write + Send + 'static>(
        &self,
        at: ReadIndex,
        out: W,
    ) -> Result<(BackupInfo, W)> {
        let permit = crate::backup::ExportPermit::take(&self.inner.exporting)?;
        self.read_at(at, |_| ()).await?;
        let parts = self.inner.sm.backup_parts().map_err(Error::Storage)?;
        let cluster = self.cluster_id();
        tokio::task::spawn_blocking(move || {
            // Held until the writing ends, even if the caller stopped waiting.
            let _permit = permit;
            crate::backup::write::<S, W>(parts, cluster, out)
        })
        .await
        .map_err(|e| {
            if e.is_panic() {
                // The state machine's write_snapshot: that backup fails, the node goes on.
                Error::Storage(format!(
                    "the state machine panicked writing the backup: {e}"
                ))
            } else {
                Error::Fatal(format!("backup task failed: {e}"))
            }
        })?
        .map_err(Error::from)
    }

    /// The node's current state.
    pub fn metrics(&self) -> Metrics {
        let rx = self.inner.raft.metrics();
        let m = rx.borrow_watched();
        Metrics::from_raft(&m)
    }

    /// A live feed of this node's metrics, to wait on changes.
    pub fn subscribe(&self) -> MetricsWatch {
        MetricsWatch::new(self.inner.raft.metrics())
    }

    /// Waits until `condition` holds for the node's metrics, at most `timeout`; returns the
    /// metrics that satisfied it, or [`Error::Timeout`].
    pub async fn wait_for(
        &self,
        timeout: Duration,
        condition: impl Fn(&Metrics) -> bool,
    ) -> Result<Metrics> {
        let mut rx = self.inner.raft.metrics();
        let wait = async {
            loop {
                let m = Metrics::from_raft(&rx.borrow_watched());
                if condition(&m) {
                    return Ok(m);
                }
                if rx.changed().await.is_err() {
                    return Err(Error::Shutdown);
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .unwrap_or(Err(Error::Timeout(timeout)))
    }

    /// On the leader: waits until node `id` holds every entry that was committed when the call
    /// was made (replicated to it and durable there; it applies them right after), at most
    /// `timeout`. For promoting a learner once it has caught up, or for a test that reads from
    /// that node next. Fails with [`Error::NotLeader`] on another node or if leadership is lost
    /// meanwhile, with [`Error::Membership`] if `id` is not a member, and with
    /// [`Error::Timeout`].
    pub async fn wait_caught_up(&self, id: NodeId, timeout: Duration) -> Result<Metrics> {
        self.require_leader()?;
        let now = self.metrics();
        if now.role == Role::Shutdown {
            return Err(Error::Shutdown);
        }
        if id != now.id && !now.replication.contains_key(&id) {
            return Err(Error::Membership(format!("node {id} is not a member")));
        }
        let target = now.commit_index;
        let term = now.term;
        let m = self
            .wait_for(timeout, |m| {
                let matched = if id == m.id {
                    m.last_log_index
                } else {
                    m.replication.get(&id).copied().flatten()
                };
                m.role != Role::Leader || m.term != term || matched >= target
            })
            .await?;
        if m.role != Role::Leader || m.term != term {
            return Err(Error::NotLeader(LeaderHint::new(m.leader, m.leader_addr)));
        }
        Ok(m)
    }

    /// Snapshot failures since the node started. A failed snapshot does not stop the node: it
    /// is logged, counted here and retried after a pause that doubles from 1 s to 5 min.
    pub fn snapshot_stats(&self) -> SnapshotStats {
        self.inner.snapshot_health.stats()
    }

    /// Counters of the node's write-ahead log (zero for in-memory nodes).
    pub fn log_stats(&self) -> LogStats {
        self.inner.log_stats.get()
    }

    /// Stops the node as a power cut would (feature `testing`): consensus stops, and the log
    /// keeps only what was durable — appends not yet fdatasynced are lost. In-memory nodes just
    /// stop.
    #[cfg(feature = "testing")]
    pub async fn crash_losing_unsynced(&self) -> Result<()> {
        if let Some(p) = &self.inner.power {
            p.cut();
        }
        self.shutdown().await
    }

    /// From now on (`true`) or no longer (`false`), this node's log writes fail with `ENOSPC`,
    /// as on a full disk (feature `testing`; durable nodes only).
    #[cfg(feature = "testing")]
    pub fn simulate_disk_full(&self, full: bool) {
        if let Some(f) = &self.inner.fault {
            f.set_disk_full(full);
        }
    }

    /// From now on (`true`) or no longer (`false`), this node's log fdatasyncs fail with `EIO`
    /// (feature `testing`; durable nodes only).
    #[cfg(feature = "testing")]
    pub fn simulate_fsync_failure(&self, fails: bool) {
        if let Some(f) = &self.inner.fault {
            f.set_sync_fails(fails);
        }
    }

    /// Makes the storage quota's samples report `free` bytes free on the data directory's file
    /// system (`None`: measure it again) (feature `testing`). Takes effect at the next sample.
    #[cfg(feature = "testing")]
    pub fn simulate_free_bytes(&self, free: Option<u64>) {
        self.inner.space.simulate_free(free);
    }

    /// Stops the node: consensus stops, the log is flushed and closed, and from its return on
    /// no snapshot is placed or deleted (a build or an install still running is discarded, its
    /// temporary file removed), so a node can be started on the same data directory at once.
    /// Other clones of this node fail with [`Error::Shutdown`] afterwards.
    ///
    /// Consensus stops, and the snapshot store closes, even if the returned future is dropped
    /// before it resolves (a timeout around the shutdown): both are done on a thread of their
    /// own.
    pub async fn shutdown(&self) -> Result<()> {
        // openraft does not wait for a snapshot build or install under way: once the store is
        // closed, one that finishes places and deletes nothing, so a node started next on the
        // same data dir is not raced.
        self.inner
            .stop
            .shutdown(&self.inner.raft, &self.inner.snapshots)
            .await?;
        tracing::info!(node = self.inner.id, "node shut down");
        Ok(())
    }
}

/// Refuses a data dir whose log was purged past every snapshot in `snap_dir` (the purged entries
/// are lost). (A snapshot beside a log without its meta file is refused before the log is
/// opened.)
fn check_storage_agrees(
    snap_dir: &Path,
    purged: Option<crate::types::LogId>,
    snapshot: Option<crate::types::LogId>,
) -> Result<()> {
    if let Some(purged) = purged
        && snapshot.is_none_or(|s| s.index < purged.index)
    {
        return Err(crate::snapshot::SnapshotError::Corrupt {
            what: snap_dir.display().to_string(),
            reason: format!(
                "no snapshot covers the log purged up to index {} ({}): the purged entries \
                 are lost, so the node must not start; replace the node (docs/operations.md, \
                 \"Replace a failed node\")",
                purged.index,
                match snapshot {
                    Some(s) => format!("the newest ends at index {}", s.index),
                    None => "there is none".to_string(),
                }
            ),
        }
        .into());
    }
    Ok(())
}

/// What node `id` already is, at `addr`, in the membership `m` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Member {
    Voter,
    Learner,
}

/// Checks that `id` at `addr` can be added as a learner: `Ok(None)` for a new member,
/// `Ok(Some(_))` if it is already a member at `addr`, and [`Error::Membership`] if `id` is a
/// member at another address or another member uses `addr`.
fn membership_conflict(m: &Metrics, id: NodeId, addr: &str) -> Result<Option<Member>> {
    let role = |id: NodeId| {
        if m.voters.contains(&id) {
            Member::Voter
        } else {
            Member::Learner
        }
    };
    let name = |r: Member| match r {
        Member::Voter => "voter",
        Member::Learner => "learner",
    };
    if let Some(current) = m.members.get(&id) {
        if !same_address(current, addr) {
            return Err(Error::Membership(format!(
                "node {id} is already a {} at {current}; remove it first, or use a new id",
                name(role(id))
            )));
        }
        return Ok(Some(role(id)));
    }
    if let Some((other, stored)) = m.members.iter().find(|(_, a)| same_address(a, addr)) {
        let spelt = if stored == addr {
            String::new()
        } else {
            format!(", as {stored}")
        };
        return Err(Error::Membership(format!(
            "{addr} is already the address of node {other} (a {}{spelt}); give node {id} its own address",
            name(role(*other))
        )));
    }
    Ok(None)
}
