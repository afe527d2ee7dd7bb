//! The bridge from the user's [`StateMachine`] to openraft's `RaftStateMachine`.
//!
//! It decodes each committed command, consults the client session table, calls
//! [`StateMachine::apply`], encodes the output and sends it back to the waiting writer. It also
//! builds snapshots (taking the user's point-in-time handle on the apply path, serialising it on a
//! blocking thread) and installs them.
//!
//! The user's state lives in [`SmShared`] behind a read-write lock, so reads run on the caller's
//! task concurrently with each other and only exclude applies for as long as the read closure
//! runs.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::RwLock;
use std::sync::RwLockReadGuard;
use std::sync::RwLockWriteGuard;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use bytes::Bytes;
use futures_util::Stream;
use futures_util::StreamExt;
use openraft::OptionalSend;
use openraft::RaftSnapshotBuilder;
use openraft::storage::EntryResponder;
use openraft::storage::RaftStateMachine;

use crate::codec;
use crate::session;
use crate::session::SessionTable;
use crate::snapshot;
use crate::snapshot::ApplyExtra;
use crate::snapshot::SnapshotData;
use crate::snapshot::SnapshotStore;
use crate::state_machine::ApplyContext;
use crate::state_machine::StateMachine;
use crate::types::ApplyError;
use crate::types::LogId;
use crate::types::NodeId;
use crate::types::Payload;
use crate::types::Proposal;
use crate::types::Response;
use crate::types::Session;
use crate::types::SessionCapacity;
use crate::types::Snapshot;
use crate::types::SnapshotMeta;
use crate::types::StoredMembership;
use crate::types::TypeConfig;

/// Everything the apply layer keeps, under one lock.
pub(crate) struct SmState<S> {
    pub user: S,
    sessions: SessionTable,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    /// The time of the last timed entry applied (ms since the epoch; 0 before any): an entry
    /// stamped earlier applies at this time instead, so applied times never decrease. And the
    /// members' incarnation bindings.
    extra: ApplyExtra,
    /// Set when a write's output was too large to return (see `SmState::output`), for the
    /// session that wrote it to record it as too large to keep.
    output_too_large: bool,
    /// Output bytes the entry being applied may still return (see `SmState::keep`).
    output_room: usize,
}

impl<S> SmState<S> {
    fn new(user: S) -> Self {
        SmState {
            user,
            sessions: SessionTable::default(),
            last_applied: None,
            membership: StoredMembership::default(),
            extra: ApplyExtra::default(),
            output_too_large: false,
            output_room: 0,
        }
    }
}

impl<S: StateMachine> SmState<S> {
    /// The time of the state as applied so far (see [`ApplyContext::time_ms`]).
    pub fn time_ms(&self) -> u64 {
        self.extra.time_ms
    }

    /// The index of the last entry applied to this state.
    pub fn applied_index(&self) -> Option<u64> {
        self.last_applied.map(|id| id.index)
    }

    /// The session table (capacity included), for tests comparing replicas.
    #[cfg(any(test, feature = "testing"))]
    pub fn sessions(&self) -> &SessionTable {
        &self.sessions
    }

    /// The context of the entry at `index` stamped `time` (`None`: unstamped).
    fn context(&mut self, index: u64, time: Option<u64>) -> ApplyContext {
        let time = time.map(|t| {
            self.extra.time_ms = self.extra.time_ms.max(t);
            self.extra.time_ms
        });
        ApplyContext::new(index, time)
    }

    fn apply_proposal(&mut self, proposal: Proposal, index: u64) -> Response {
        self.output_room = self.max_output();
        match proposal {
            Proposal::Write(command) => {
                let ctx = self.context(index, None);
                self.apply_command(&command, &ctx)
            }
            Proposal::TimedWrite(time, command) => {
                let ctx = self.context(index, Some(time));
                self.apply_command(&command, &ctx)
            }
            Proposal::SessionWrite(s, command) => {
                let ctx = self.context(index, None);
                self.apply_in_session(s, &command, &ctx, false)
            }
            Proposal::TimedSessionWrite(s, time, command) => {
                let ctx = self.context(index, Some(time));
                self.apply_in_session(s, &command, &ctx, false)
            }
            Proposal::LegacySessionWrite(s, command) => {
                let ctx = self.context(index, None);
                self.apply_in_session(s, &command, &ctx, true)
            }
            Proposal::TimedBatch(session, time, commands) => {
                let ctx = self.context(index, Some(time));
                match session {
                    None => self.apply_batch(&commands, &ctx),
                    Some(s) => {
                        self.in_session(s, &ctx, false, |sm| sm.apply_batch(&commands, &ctx))
                    }
                }
            }
            Proposal::Combined(time, requests) => {
                let ctx = self.context(index, Some(time));
                let responses: Vec<Response> = requests
                    .iter()
                    .zip(0..)
                    .map(|(r, position)| {
                        let ctx = ctx.at_position(position);
                        let response = match r.session {
                            None => self.apply_command(&r.command, &ctx),
                            Some(s) => self.apply_in_session(s, &r.command, &ctx, false),
                        };
                        // Recorded (above) as built; returned only if the entry has room.
                        self.keep(response).unwrap_or_else(|r| r)
                    })
                    .collect();
                envelope(&responses)
            }
            Proposal::RegisterSession => {
                let id = self.sessions.register(index);
                self.output(&id)
            }
            Proposal::RegisterKeyedSession(key) => {
                let id = self.sessions.register_keyed(index, key);
                self.output(&id)
            }
            Proposal::CloseSession(id) => {
                self.sessions.close(id);
                Response::Empty
            }
            Proposal::BindIncarnation(id, incarnation) => {
                let bound = *self.extra.bindings.entry(id).or_insert(incarnation);
                if bound == incarnation {
                    tracing::info!(node = id, incarnation = %format!("{incarnation:016x}"), "incarnation bound");
                }
                Response::Empty
            }
            Proposal::SetSessionCapacity(c) => {
                self.sessions.set_capacity(c);
                tracing::info!(capacity = ?self.sessions.capacity(), "session capacity set");
                Response::Empty
            }
        }
    }

    fn apply_in_session(
        &mut self,
        s: Session,
        command: &[u8],
        ctx: &ApplyContext,
        legacy: bool,
    ) -> Response {
        self.in_session(s, ctx, legacy, |sm| sm.apply_command(command, ctx))
    }

    /// Runs `apply` once for session `s`'s sequence: a retry gets the recorded response.
    fn in_session(
        &mut self,
        s: Session,
        ctx: &ApplyContext,
        legacy: bool,
        apply: impl FnOnce(&mut Self) -> Response,
    ) -> Response {
        if let Some(answer) = session::answer_without_applying(&self.sessions, s, legacy) {
            return answer;
        }
        self.output_too_large = false;
        let response = apply(self);
        if std::mem::take(&mut self.output_too_large) {
            // What the table would have kept had the output been built whole.
            self.sessions.record_too_large(s, ctx.index());
        } else {
            self.sessions.record(s, response.clone(), ctx.index());
        }
        response
    }

    /// Applies a batch's commands in order; its output is every command's response, encoded.
    fn apply_batch(&mut self, commands: &[Bytes], ctx: &ApplyContext) -> Response {
        let responses: Vec<Response> = commands
            .iter()
            .zip(0..)
            .map(|(c, position)| {
                let response = self.apply_command(c, &ctx.at_position(position));
                self.keep(response).unwrap_or_else(|refused| {
                    // The batch's whole output passes the bound, so a session keeps none of it.
                    self.output_too_large = true;
                    refused
                })
            })
            .collect();
        envelope(&responses)
    }

    fn apply_command(&mut self, command: &[u8], ctx: &ApplyContext) -> Response {
        match codec::decode_input::<S::Command>(command) {
            Err(e) => Response::Rejected(ApplyError::InvalidCommand(e.to_string())),
            Ok(cmd) => {
                let out = self.user.apply_at(cmd, ctx);
                self.output(&out)
            }
        }
    }

    /// `value` encoded as a write's output, unless that is longer than the room left in its
    /// entry (at first [`SmState::max_output`]) and than the session table's largest kept
    /// response: then the write (which *was* applied) answers [`ApplyError::OutputEncoding`],
    /// and no more than that was built. Every replica encodes every write's output, so an
    /// output many times the size of its command (a transaction reading one large value a
    /// thousand times) would otherwise cost each of them its full size. A session records such
    /// a write as it records any response too large to keep, so the table is the same as if
    /// the output had been built whole.
    fn output<T: serde::Serialize + ?Sized>(&mut self, value: &T) -> Response {
        let max = self.output_room.max(self.max_kept_response());
        match codec::encode_within(value, max) {
            Ok(Some(b)) => Response::Output(b.into()),
            Ok(None) => {
                self.output_too_large = true;
                Response::Rejected(ApplyError::OutputEncoding(format!(
                    "the output is larger than {max} bytes, the most a write returns"
                )))
            }
            Err(e) => Response::Rejected(ApplyError::OutputEncoding(e.to_string())),
        }
    }

    /// The most output one entry returns: [`MAX_OUTPUT_BYTES`], or the session table's
    /// largest kept response if that is larger.
    fn max_output(&self) -> usize {
        MAX_OUTPUT_BYTES.max(self.max_kept_response())
    }

    fn max_kept_response(&self) -> usize {
        usize::try_from(self.sessions.capacity().max_response_bytes).unwrap_or(usize::MAX)
    }

    /// `response` as one of several in an entry (a batch's or a combined entry's), if the
    /// entry's outputs so far leave room for it; else (`Err`) a refusal in its place. The
    /// outputs of one entry together stay within [`SmState::max_output`], however many
    /// writes share it, and the refusal of one leaves the others' outputs whole. A session
    /// still records a refused output as built: one within the table's per-response limit
    /// is kept (a retry gets it), and a larger one is recorded as too large, as ever.
    fn keep(&mut self, response: Response) -> Result<Response, Response> {
        match response {
            Response::Output(b) if b.len() > self.output_room => {
                Err(Response::Rejected(ApplyError::OutputEncoding(format!(
                    "the outputs of the writes in this log entry pass {} bytes, the most one entry returns",
                    self.max_output()
                ))))
            }
            Response::Output(b) => {
                self.output_room -= b.len();
                Ok(Response::Output(b))
            }
            other => Ok(other),
        }
    }
}

/// The responses of an entry's writes, encoded as its output. Not bounded again: each was
/// kept within the entry's room (see `SmState::keep`).
fn envelope(responses: &[Response]) -> Response {
    match codec::encode(responses) {
        Ok(b) => Response::Output(b.into()),
        Err(e) => Response::Rejected(ApplyError::OutputEncoding(e.to_string())),
    }
}

/// The largest output a write returns (see `SmState::output`): 64 MiB, the default largest
/// command, which is also about what one message between nodes carries back.
const MAX_OUTPUT_BYTES: usize = 64 << 20;

/// The user's state machine and the apply layer's bookkeeping, shared with readers.
pub(crate) struct SmShared<S> {
    state: RwLock<SmState<S>>,
    /// Set while the user's `restore` runs, and left set if it fails or panics part-way: the
    /// state is then incomplete and must not be read (the node has stopped with a storage
    /// error). Readers look at it once they hold the state's lock, which a restore holds
    /// throughout.
    restore_failed: AtomicBool,
    /// Set when the user's `apply` panicked: the state is part-way through an entry, and the
    /// node has stopped with a storage error. Readers look at it as at `restore_failed`.
    apply_failed: AtomicBool,
    /// True while a snapshot is restored, which holds the state's write lock throughout
    /// (seconds, for a large state): readers wait for it to end (`restore_over`), without
    /// holding a thread.
    restoring: AtomicBool,
    restore_over: tokio::sync::Notify,
    /// The session table's size and bounds as last applied, readable without the state's lock
    /// (which a restore holds for as long as it runs).
    open_sessions: AtomicUsize,
    session_capacity: Mutex<SessionCapacity>,
    /// `SmState::time_ms`, readable without the lock (by the leader stamping a write).
    applied_time: AtomicU64,
    /// A copy of the applied incarnation bindings, read by every internal RPC without taking
    /// the state's lock (changed only when a binding is applied or a snapshot installed).
    bindings: RwLock<BTreeMap<NodeId, u64>>,
}

/// The message a panic carried, if it is text.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message")
}

/// Takes the user's point-in-time handle. A panic in the user's `snapshot` becomes an error that
/// names it: `snapshot` only reads the state, so the state is as it was and the node goes on
/// (a snapshot build fails and is retried; a backup fails).
fn take_handle<S: StateMachine>(user: &S) -> Result<S::Snapshot, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| user.snapshot())).map_err(|panic| {
        let why = format!(
            "the state machine panicked taking a snapshot handle: {}",
            panic_text(panic.as_ref())
        );
        tracing::error!("{why}");
        why
    })
}

/// Marks a restore over when dropped: after it succeeded, failed or panicked.
struct Restoring<'a, S>(&'a SmShared<S>);

impl<S> Drop for Restoring<'_, S> {
    fn drop(&mut self) {
        self.0.set_restoring(false);
    }
}

impl<S> SmShared<S> {
    pub fn new(user: S) -> Arc<Self> {
        Arc::new(SmShared {
            state: RwLock::new(SmState::new(user)),
            restore_failed: AtomicBool::new(false),
            apply_failed: AtomicBool::new(false),
            restoring: AtomicBool::new(false),
            restore_over: tokio::sync::Notify::new(),
            open_sessions: AtomicUsize::new(0),
            session_capacity: Mutex::new(SessionTable::default().capacity()),
            applied_time: AtomicU64::new(0),
            bindings: RwLock::default(),
        })
    }

    /// Why the state must not be read, if it must not: a snapshot restore that failed part-way,
    /// or an `apply` that panicked part-way.
    pub fn broken(&self) -> Option<&'static str> {
        if self.restore_failed.load(Ordering::Acquire) {
            Some(
                "a snapshot restore failed part-way; the node has stopped and its state is not served",
            )
        } else if self.apply_failed.load(Ordering::Acquire) {
            Some(
                "the state machine panicked applying an entry; the node has stopped and its state is not served",
            )
        } else {
            None
        }
    }

    /// How many client sessions are open, as last applied; never waits for a restore.
    pub fn open_sessions(&self) -> usize {
        self.open_sessions.load(Ordering::Relaxed)
    }

    /// The session table's bounds, as last applied; never waits for a restore.
    pub fn session_capacity(&self) -> SessionCapacity {
        *crate::sync::lock(&self.session_capacity)
    }

    /// Takes note of the session table's figures after it may have changed.
    fn note_sessions(&self, sessions: &SessionTable, capacity_too: bool) {
        self.open_sessions.store(sessions.len(), Ordering::Relaxed);
        if capacity_too {
            *crate::sync::lock(&self.session_capacity) = sessions.capacity();
        }
    }

    /// Whether a snapshot is being restored.
    pub fn restoring(&self) -> bool {
        self.restoring.load(Ordering::Acquire)
    }

    /// Says whether a restore runs, to readers checking and to readers waiting.
    fn set_restoring(&self, restoring: bool) {
        self.restoring.store(restoring, Ordering::Release);
        if !restoring {
            self.restore_over.notify_waiters();
        }
    }

    /// Returns once no snapshot is being restored. A reader calls it before taking the state's
    /// lock, so that it waits for a restore as a task, not as a blocked thread; one that comes
    /// in just as a restore starts still waits on the lock.
    pub async fn restored(&self) {
        loop {
            // Registered before the flag is read, so an end signalled in between is not missed.
            let mut over = std::pin::pin!(self.restore_over.notified());
            over.as_mut().enable();
            if !self.restoring() {
                return;
            }
            over.await;
        }
    }

    /// The time of the last timed entry applied (see [`SmState::time_ms`]).
    pub fn applied_time(&self) -> u64 {
        self.applied_time.load(Ordering::Relaxed)
    }

    /// The incarnation bound to member `id`, as applied here.
    pub fn binding(&self, id: NodeId) -> Option<u64> {
        crate::sync::read(&self.bindings).get(&id).copied()
    }

    fn set_bindings(&self, bindings: &BTreeMap<NodeId, u64>) {
        *crate::sync::write(&self.bindings) = bindings.clone();
    }

    /// Read access for queries. A panic inside a read closure must not wedge the node, so a
    /// poisoned lock is recovered (the state itself is only mutated by `apply`, which does not
    /// panic across the lock unless the user's `apply` does).
    pub fn read(&self) -> RwLockReadGuard<'_, SmState<S>> {
        crate::sync::read(&self.state)
    }

    fn write(&self) -> RwLockWriteGuard<'_, SmState<S>> {
        crate::sync::write(&self.state)
    }
}

impl<S: StateMachine> SmShared<S> {
    /// What a backup is made of, taken together under the lock: the user's point-in-time
    /// handle, the metadata it covers (applied log id and membership) and the session table;
    /// or why the state must not be read ([`SmShared::broken`]), or why the handle could not be
    /// taken.
    pub fn backup_parts(&self) -> Result<(S::Snapshot, SnapshotMeta, SessionTable, u64), String> {
        let st = self.read();
        if let Some(why) = self.broken() {
            return Err(why.to_string());
        }
        Ok((
            take_handle(&st.user)?,
            SnapshotMeta {
                last_log_id: st.last_applied,
                last_membership: st.membership.clone(),
            },
            st.sessions.clone(),
            st.extra.time_ms,
        ))
    }
}

/// First pause after a failed snapshot; it doubles on every failure in a row.
const SNAPSHOT_RETRY_MIN: Duration = Duration::from_secs(1);
/// Longest pause between snapshot attempts after failures.
const SNAPSHOT_RETRY_MAX: Duration = Duration::from_secs(300);

/// Snapshot failures: how many, the last one, and when to try again.
///
/// A snapshot that fails (a full disk, a state machine that cannot serialise) must not stop the
/// node: the node keeps applying and serving from its log, logs the failure, counts it and tries
/// again after a pause that doubles up to [`SNAPSHOT_RETRY_MAX`].
#[derive(Default)]
pub(crate) struct SnapshotHealth {
    failures: AtomicU64,
    built: AtomicU64,
    last_build_micros: AtomicU64,
    last_bytes: AtomicU64,
    state: Mutex<Backoff>,
    /// A caller asked for a snapshot now ([`Node::snapshot`](crate::Node::snapshot)): the next
    /// build does not wait out a failure's pause.
    forced: AtomicBool,
    /// Woken at each failure, for callers waiting on a build.
    failed: tokio::sync::Notify,
    /// Woken as each build starts.
    started: tokio::sync::Notify,
}

#[derive(Default)]
struct Backoff {
    retry_at: Option<Instant>,
    pause: Duration,
    last_error: Option<String>,
}

/// What a node reports about its snapshots.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotStats {
    /// Snapshots that failed since the node started.
    pub failures: u64,
    /// The last failure, while no snapshot has succeeded since.
    pub last_error: Option<String>,
    /// Snapshots this node built since it started (not counting ones it received).
    pub built: u64,
    /// How long the last snapshot built here took, once one was.
    pub last_duration: Option<Duration>,
    /// Size in bytes of the last snapshot built here, once one was.
    pub last_bytes: Option<u64>,
}

impl SnapshotHealth {
    fn lock(&self) -> std::sync::MutexGuard<'_, Backoff> {
        crate::sync::lock(&self.state)
    }

    /// Whether a policy snapshot should wait (a recent failure's pause has not passed, and no
    /// caller asked for one since).
    fn waiting(&self) -> bool {
        !self.forced.swap(false, Ordering::Relaxed)
            && self.lock().retry_at.is_some_and(|t| Instant::now() < t)
    }

    /// Lets the next build run even during a failure's pause.
    pub(crate) fn force_next(&self) {
        self.forced.store(true, Ordering::Relaxed);
    }

    /// Failures since the node started.
    pub(crate) fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Resolves at the next failure (once polled, or [`Notified::enable`]d).
    ///
    /// [`Notified::enable`]: tokio::sync::futures::Notified::enable
    pub(crate) fn next_failure(&self) -> tokio::sync::futures::Notified<'_> {
        self.failed.notified()
    }

    /// Resolves when the next build starts (once polled, or enabled).
    pub(crate) fn next_start(&self) -> tokio::sync::futures::Notified<'_> {
        self.started.notified()
    }

    fn failed(&self, error: &io::Error) {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let mut b = self.lock();
        b.pause = (b.pause * 2).clamp(SNAPSHOT_RETRY_MIN, SNAPSHOT_RETRY_MAX);
        b.retry_at = Some(Instant::now() + b.pause);
        b.last_error = Some(error.to_string());
        tracing::error!(%error, failures, retry_in = ?b.pause, "snapshot failed; the node keeps serving from its log and will try again");
        drop(b);
        self.failed.notify_waiters();
    }

    fn succeeded(&self, took: Duration, bytes: u64) {
        self.last_build_micros
            .store(took.as_micros() as u64, Ordering::Relaxed);
        self.last_bytes.store(bytes, Ordering::Relaxed);
        self.built.fetch_add(1, Ordering::Relaxed);
        *self.lock() = Backoff::default();
    }

    /// Counters for metrics.
    pub fn stats(&self) -> SnapshotStats {
        SnapshotStats {
            failures: self.failures.load(Ordering::Relaxed),
            last_error: self.lock().last_error.clone(),
            built: self.built.load(Ordering::Relaxed),
            last_duration: (self.built.load(Ordering::Relaxed) > 0)
                .then(|| Duration::from_micros(self.last_build_micros.load(Ordering::Relaxed))),
            last_bytes: (self.built.load(Ordering::Relaxed) > 0)
                .then(|| self.last_bytes.load(Ordering::Relaxed)),
        }
    }
}

/// openraft's view of the user's state machine.
pub(crate) struct Applier<S> {
    shared: Arc<SmShared<S>>,
    store: Arc<SnapshotStore>,
    health: Arc<SnapshotHealth>,
}

impl<S: StateMachine> Applier<S> {
    pub fn new(
        shared: Arc<SmShared<S>>,
        store: Arc<SnapshotStore>,
        health: Arc<SnapshotHealth>,
    ) -> Self {
        Applier {
            shared,
            store,
            health,
        }
    }
}

/// Builds one snapshot from a point-in-time handle, off the apply path.
pub(crate) struct Builder<S: StateMachine> {
    // `Mutex` only to make the builder `Sync` without asking users for a `Sync` handle. An
    // error if the user's `snapshot` panicked.
    handle: Mutex<Option<Result<S::Snapshot, String>>>,
    meta: SnapshotMeta,
    sessions: SessionTable,
    extra: ApplyExtra,
    store: Arc<SnapshotStore>,
    health: Arc<SnapshotHealth>,
}

impl<S: StateMachine> RaftSnapshotBuilder<TypeConfig> for Builder<S> {
    type SnapshotData = SnapshotData;

    /// Builds the snapshot; on failure, reports it and hands openraft the previous snapshot (or
    /// an empty one covering nothing), which it ignores as not newer — so a failure never stops
    /// the node.
    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let started = Instant::now();
        match self.try_build().await {
            Ok(s) => {
                self.health.succeeded(started.elapsed(), s.snapshot.len());
                Ok(s)
            }
            Err(e) => {
                self.health.failed(&e);
                let store = self.store.clone();
                let previous = tokio::task::spawn_blocking(move || store.current())
                    .await
                    .ok()
                    .and_then(|r| r.ok())
                    .flatten();
                Ok(match previous {
                    Some((meta, snapshot)) => Snapshot { meta, snapshot },
                    None => Snapshot {
                        meta: SnapshotMeta::default(),
                        snapshot: SnapshotData::empty(),
                    },
                })
            }
        }
    }
}

impl<S: StateMachine> Builder<S> {
    async fn try_build(&mut self) -> Result<Snapshot, io::Error> {
        let handle = crate::sync::lock(&self.handle)
            .take()
            .ok_or_else(|| io::Error::other("snapshot builder used twice"))?
            .map_err(io::Error::other)?;
        let meta = self.meta.clone();
        let sessions = self.sessions.clone();
        let extra = self.extra.clone();
        let store = self.store.clone();
        let m = meta.clone();
        let data = tokio::task::spawn_blocking(move || {
            store.write(&m, &sessions, &extra, |w| S::write_snapshot(handle, w))
        })
        .await
        .map_err(|e| io::Error::other(format!("snapshot writer task failed: {e}")))??;
        tracing::info!(last_log_id = ?meta.last_log_id, bytes = data.len(), "snapshot built");
        Ok(Snapshot {
            meta,
            snapshot: data,
        })
    }
}

impl<S: StateMachine> RaftStateMachine<TypeConfig> for Applier<S> {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = Builder<S>;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let st = self.shared.read();
        Ok((st.last_applied, st.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let response = {
                let mut st = self.shared.write();
                st.last_applied = Some(entry.log_id);
                match entry.payload {
                    Payload::Blank => Response::Empty,
                    Payload::Normal(p) => {
                        let binds = matches!(p, Proposal::BindIncarnation(..));
                        let bounds = matches!(p, Proposal::SetSessionCapacity(..));
                        let index = entry.log_id.index;
                        let applied =
                            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                st.apply_proposal(p, index)
                            }));
                        let r = match applied {
                            Ok(r) => r,
                            // The user's code panicked part-way: the state is neither before
                            // nor after the entry. Marked (under the lock, so no reader sees
                            // the state first) and the engine stopped with a storage error.
                            Err(panic) => {
                                self.shared.apply_failed.store(true, Ordering::Release);
                                let why = format!(
                                    "the state machine panicked applying entry {}: {}",
                                    entry.log_id,
                                    panic_text(panic.as_ref())
                                );
                                tracing::error!(
                                    "{why}; the node stops and serves nothing of its state until it is fixed and restarted"
                                );
                                return Err(io::Error::other(why));
                            }
                        };
                        self.shared.note_sessions(&st.sessions, bounds);
                        self.shared
                            .applied_time
                            .store(st.extra.time_ms, Ordering::Relaxed);
                        if binds {
                            self.shared.set_bindings(&st.extra.bindings);
                        }
                        r
                    }
                    Payload::Membership(m) => {
                        st.membership = StoredMembership::new(Some(entry.log_id), m);
                        Response::Empty
                    }
                }
            };
            if let Some(r) = responder {
                r.send(response);
            }
        }
        Ok(())
    }

    async fn try_create_snapshot_builder(&mut self, force: bool) -> Option<Builder<S>> {
        if !force && self.health.waiting() {
            return None;
        }
        let builder = self.get_snapshot_builder().await;
        self.health.started.notify_waiters();
        Some(builder)
    }

    async fn get_snapshot_builder(&mut self) -> Builder<S> {
        let st = self.shared.read();
        Builder {
            handle: Mutex::new(Some(take_handle(&st.user))),
            meta: SnapshotMeta {
                last_log_id: st.last_applied,
                last_membership: st.membership.clone(),
            },
            sessions: st.sessions.clone(),
            extra: st.extra.clone(),
            store: self.store.clone(),
            health: self.health.clone(),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        data: SnapshotData,
    ) -> Result<(), io::Error> {
        let shared = self.shared.clone();
        let store = self.store.clone();
        let meta = meta.clone();
        tokio::task::spawn_blocking(move || -> Result<(), io::Error> {
            let parsed = snapshot::parse(&data)?;
            // Before anything is applied: another cluster's snapshot leaves the state as it is.
            store.check_cluster(&data, parsed.cluster, true)?;
            if parsed.meta != meta {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "snapshot contents ({:?}) do not match its announced metadata ({:?})",
                        parsed.meta.last_log_id, meta.last_log_id
                    ),
                ));
            }
            {
                // Readers wait as tasks until the restore is over, whichever way it ends.
                shared.set_restoring(true);
                let _restored = Restoring(&shared);
                let mut st = shared.write();
                // Buffered: the data is read with positioned reads, one system call each.
                let mut input = io::BufReader::with_capacity(64 << 10, parsed.user_data(&data));
                // Marked before `restore` runs, under the lock readers take first: a restore
                // that panics part-way leaves the mark (and a poisoned lock) behind.
                shared.restore_failed.store(true, Ordering::Release);
                if let Err(e) = st.user.restore(&mut input) {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("state machine restore failed: {e}"),
                    ));
                }
                shared.restore_failed.store(false, Ordering::Release);
                st.sessions = parsed.sessions;
                shared.note_sessions(&st.sessions, true);
                shared
                    .applied_time
                    .store(parsed.extra.time_ms, Ordering::Relaxed);
                shared.set_bindings(&parsed.extra.bindings);
                st.extra = parsed.extra;
                st.last_applied = meta.last_log_id;
                st.membership = meta.last_membership.clone();
            }
            store.adopt(&meta, data)?;
            tracing::info!(last_log_id = ?meta.last_log_id, "snapshot installed");
            Ok(())
        })
        .await
        .map_err(|e| io::Error::other(format!("snapshot install task failed: {e}")))?
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let store = self.store.clone();
        let current = tokio::task::spawn_blocking(move || store.current())
            .await
            .map_err(|e| io::Error::other(format!("snapshot load task failed: {e}")))??;
        Ok(current.map(|(meta, snapshot)| Snapshot { meta, snapshot }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Request, SessionCapacity};
    use std::io::{Read, Write};

    /// A state machine whose output is as many bytes as its command asks for.
    struct Sized;

    impl StateMachine for Sized {
        type Command = usize;
        type Output = String;
        type Snapshot = ();
        fn apply(&mut self, n: usize) -> String {
            "x".repeat(n)
        }
        fn snapshot(&self) {}
        fn write_snapshot(_: (), _: &mut dyn Write) -> io::Result<()> {
            Ok(())
        }
        fn restore(&mut self, _: &mut dyn Read) -> io::Result<()> {
            Ok(())
        }
    }

    const MIB: usize = 1 << 20;

    /// A state machine that answers each write with the `(index, position)` it was applied at.
    struct Places;

    impl StateMachine for Places {
        type Command = ();
        type Output = (u64, u32);
        type Snapshot = ();
        fn apply(&mut self, (): ()) -> (u64, u32) {
            unreachable!("applied through apply_at")
        }
        fn apply_at(&mut self, (): (), ctx: &ApplyContext) -> (u64, u32) {
            (ctx.index(), ctx.position())
        }
        fn snapshot(&self) {}
        fn write_snapshot(_: (), _: &mut dyn Write) -> io::Result<()> {
            Ok(())
        }
        fn restore(&mut self, _: &mut dyn Read) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn writes_sharing_an_entry_each_have_their_own_position() {
        let mut st = SmState::new(Places);
        let unit: Bytes = codec::encode(&()).unwrap().into();
        let place = |r: Response| -> (u64, u32) {
            match r {
                Response::Output(b) => codec::decode(&b).unwrap(),
                other => panic!("expected an output, got {other:?}"),
            }
        };
        let places =
            |r: Response| -> Vec<(u64, u32)> { responses(r).into_iter().map(place).collect() };
        let requests = (0..3)
            .map(|_| Request {
                session: None,
                command: unit.clone(),
            })
            .collect();
        let combined = st.apply_proposal(Proposal::Combined(1_000, requests), 7);
        assert_eq!(places(combined), [(7, 0), (7, 1), (7, 2)]);
        let batch = Proposal::TimedBatch(None, 1_000, vec![unit.clone(), unit.clone()]);
        assert_eq!(places(st.apply_proposal(batch, 8)), [(8, 0), (8, 1)]);
        assert_eq!(place(st.apply_proposal(Proposal::Write(unit), 9)), (9, 0));
    }

    fn state(max_response_bytes: u64) -> SmState<Sized> {
        let mut st = SmState::new(Sized);
        let capacity = SessionCapacity::new(100, 256 << 20, max_response_bytes);
        st.apply_proposal(Proposal::SetSessionCapacity(capacity), 1);
        st
    }

    fn command(n: usize) -> Bytes {
        codec::encode(&n).unwrap().into()
    }

    fn in_session(client_id: u64, n: usize) -> Request {
        Request {
            session: Some(Session {
                client_id,
                sequence: 1,
            }),
            command: command(n),
        }
    }

    /// The responses an entry's encoded output carries.
    fn responses(r: Response) -> Vec<Response> {
        match r {
            Response::Output(b) => codec::decode(&b).unwrap(),
            other => panic!("expected an output, got {other:?}"),
        }
    }

    fn output_len(r: &Response) -> Option<usize> {
        match r {
            Response::Output(b) => Some(b.len()),
            _ => None,
        }
    }

    fn refused(r: &Response) -> bool {
        matches!(r, Response::Rejected(ApplyError::OutputEncoding(_)))
    }

    /// The session table had every output been built and returned whole.
    fn table_built_whole(max_response_bytes: u64, outputs: &[(u64, usize)]) -> SessionTable {
        let mut t = state(max_response_bytes).sessions;
        for &(client_id, _) in outputs {
            t.register(client_id);
        }
        for &(client_id, n) in outputs {
            let whole = codec::encode(&"x".repeat(n)).unwrap();
            let s = Session {
                client_id,
                sequence: 1,
            };
            t.record(s, Response::Output(whole.into()), 10);
        }
        t
    }

    #[test]
    fn one_large_output_in_a_combined_entry_leaves_the_others_whole() {
        for max_response_bytes in [1 << 20, 48 << 20] {
            let mut st = state(max_response_bytes);
            for id in [2, 3, 4] {
                st.apply_proposal(Proposal::RegisterSession, id);
            }
            let requests = vec![
                in_session(2, 40 * MIB),
                in_session(3, 40 * MIB),
                Request {
                    session: None,
                    command: command(10),
                },
                in_session(4, 100),
            ];
            let entry = st.apply_proposal(Proposal::Combined(0, requests), 10);
            let whole = output_len(&entry).unwrap();
            assert!(
                whole < MAX_OUTPUT_BYTES + 4096,
                "entry output {whole} bytes"
            );
            let r = responses(entry);
            assert_eq!(output_len(&r[0]), Some(40 * MIB + 4));
            assert!(refused(&r[1]), "no room for a second 40 MiB: {:?}", r[1]);
            assert_eq!(
                output_len(&r[2]),
                Some(11),
                "small writes keep their outputs"
            );
            assert_eq!(
                output_len(&r[3]),
                Some(101),
                "{max_response_bytes}: {:?}",
                r[3]
            );

            let expected = table_built_whole(
                max_response_bytes,
                &[(2, 40 * MIB), (3, 40 * MIB), (4, 100)],
            );
            assert_eq!(
                codec::encode(&st.sessions).unwrap(),
                codec::encode(&expected).unwrap(),
                "the table is as if every output had been returned whole"
            );
            // A retry of the refused write gets what its session kept.
            let retry =
                Proposal::SessionWrite(in_session(3, 40 * MIB).session.unwrap(), command(1));
            let again = st.apply_proposal(retry, 11);
            if max_response_bytes >= 40 << 20 {
                assert_eq!(output_len(&again), Some(40 * MIB + 4));
            } else {
                assert!(matches!(
                    again,
                    Response::Rejected(ApplyError::ResponseNotKept { .. })
                ));
            }
        }
    }

    #[test]
    fn a_batch_past_the_bound_is_answered_in_part_and_kept_as_too_large() {
        let mut st = state(1 << 20);
        st.apply_proposal(Proposal::RegisterSession, 2);
        let s = Session {
            client_id: 2,
            sequence: 1,
        };
        let batch = vec![command(40 * MIB), command(40 * MIB), command(5)];
        let entry = st.apply_proposal(Proposal::TimedBatch(Some(s), 0, batch), 10);
        let r = responses(entry);
        assert_eq!(output_len(&r[0]), Some(40 * MIB + 4));
        assert!(refused(&r[1]), "{:?}", r[1]);
        assert_eq!(output_len(&r[2]), Some(6));
        let again = st.apply_proposal(Proposal::TimedBatch(Some(s), 0, vec![command(1)]), 11);
        assert!(
            matches!(
                again,
                Response::Rejected(ApplyError::ResponseNotKept { .. })
            ),
            "the batch's whole output passed the table's limit, as it would built whole: {again:?}"
        );
    }
}
