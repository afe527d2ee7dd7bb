//! The replicated log's storage: a durable segmented write-ahead log, and an in-memory log.
//!
//! [`LogStore`] is what a [`Node`](crate::Node) hands to openraft; it is either
//! [`LogStore::open`] (durable) or [`LogStore::memory`]. It is public so that benchmarks and
//! tools can drive the log directly.
//!
//! # On-disk format
//!
//! A log directory holds:
//!
//! ```text
//! LOCK                         advisory lock: one process per directory
//! meta                         node id, vote, purge point (meta.rs)
//! 00000000000000000001.wal     segments, named after their first entry's index (segment.rs)
//! 00000000000000004711.wal
//! ```
//!
//! A segment is a 24-byte header followed by framed records. Every segment this version creates
//! is of format `RKWAL002` (segment.rs, record.rs):
//!
//! ```text
//! header: "RKWAL002" [first index: u64 LE][salt: u32 LE][crc32c of the 20 bytes before: u32 LE]
//! record: [len: u32 LE][crc32c(payload): u32 LE][crc32c(salt ++ len ++ payload crc): u32 LE][payload]
//! ```
//!
//! The salt is a random number drawn when the segment is created and stored only in its header,
//! so no client data written into a segment can contain one of its valid records, and whether a
//! record can start at an offset is decided from 12 bytes. Segments of the earlier format
//! `RKWAL001` (records `[len][crc32c(len ++ payload)][payload]`, no salt) are still opened and
//! read as before, but never appended to: after opening or truncating back into one, the next
//! append starts a new `RKWAL002` segment. That closes the earlier format's weakness — a client
//! value embedding a valid legacy record — for everything written from then on, and keeps one
//! writer in the code.
//!
//! The payload is the postcard encoding of `WalRecord` (wal.rs): a log entry (log id and payload,
//! in the stable forms of `disk.rs`), a commit marker, or a `Synced` record saying how much of its
//! segment an fdatasync had made durable when it was written (synced.rs). Every segment this
//! version creates starts with one (durable with the header), the first batch written after an
//! append's fdatasync completes carries one, and a clean close ends with one. Earlier versions
//! wrote no `Synced` records and cannot read a log that holds them.
//! Segments are preallocated; the bytes after the last record are zero.
//!
//! # Durability
//!
//! * `append` writes records with one `pwrite` and returns; the flusher thread (flusher.rs)
//!   fdatasyncs and only then runs openraft's IO callback. One fdatasync acknowledges every append
//!   that queued up while the previous one ran (group commit).
//! * A segment is fdatasynced before the next one receives records, so only the last segment can
//!   have a torn tail.
//! * The vote and the purge point live in `meta`, replaced atomically (temp file, fsync, rename,
//!   fsync directory). Saving a vote first makes every earlier append durable.
//! * `truncate_after` takes the removed entries out of readers' view, deletes the later segments
//!   and fsyncs the directory, then cuts the segment that keeps a part and fsyncs it, before
//!   returning: a crash leaves the old log or a prefix of it, and a reader never finds an entry
//!   whose file is gone or cut. `purge` records the purge point and then deletes whole segments.
//! * The first failed write, fdatasync or file operation fails the log for good (`LogError::Failed`
//!   for every later append, truncation, purge and vote), and nothing more is written, not even
//!   on close. The fdatasyncs of appended records, sealing included, all run on the flusher
//!   thread, so none of their failures goes unseen (flusher.rs).
//! * Opening makes what it recovered durable before returning (fdatasync of the last segment,
//!   fsync of `meta` and of the directory): after a crash of the process, recovery can read
//!   writes that were never synced from the page cache, and openraft treats what the log returns
//!   as durable.
//!
//! # Recovery
//!
//! Opening verifies every record's checksum and that indexes run without gaps. A torn tail of the
//! last segment — damaged bytes with nothing valid after them — is cut back to the last valid
//! record, and so is damage followed by valid records past what the segment's `Synced` records
//! vouch for (below). Other damage followed by valid records, damage in a sealed segment, or an
//! entry out of sequence is refused with [`LogError::Corrupt`], naming the file and the offset.
//!
//! Telling a torn tail from damage followed by valid records takes a search of every offset after
//! the damage. In `RKWAL002` segments it costs O(1) per offset whatever the bytes are, and client
//! data cannot fake a record. In `RKWAL001` segments its cost is bounded (about six times the
//! segment's size); a search that reaches the bound refuses the log rather than cut it, with a
//! [`LogError::Corrupt`] that says so (recovery.rs, segment.rs).
//!
//! Under power loss a disk may persist a later page of the unsynced tail but not an earlier one,
//! which looks like damage followed by valid records. The last segment's `Synced` records tell the
//! two apart: damage at or past the furthest offset they vouch for is cut there like a torn tail;
//! damage before it is corruption and refused. Only a record written after the damage can vouch
//! for it, since a record only vouches for bytes before itself. What an fdatasync made durable
//! but no record vouches for yet — the appends of the last fdatasync round or two before the
//! node stopped or went idle, which were acknowledged — is treated like a torn tail, as the last
//! record always was: a hole there (silent damage to synced data, followed by valid records) is
//! cut rather than refused, and those entries are lost on this node. A segment without `Synced`
//! records (an earlier version's) is refused as before.

mod fault;
mod flusher;
mod memory;
mod meta;
mod power;
mod record;
mod recovery;
pub(crate) mod runs;
mod segment;
mod sim;
mod synced;
mod wal;

use std::fmt::Debug;
use std::io;
use std::ops::Bound;
use std::ops::RangeBounds;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

use openraft::OptionalSend;
use openraft::RaftLogReader;
use openraft::storage::IOFlushed;
use openraft::storage::LogState;
use openraft::storage::RaftLogStorage;

#[cfg(feature = "testing")]
pub use self::fault::FaultSwitch;
use self::memory::MemLog;
#[cfg(feature = "testing")]
pub use self::power::PowerSwitch;
use self::wal::SharedView;
use self::wal::Wal;
pub use self::wal::WalOptions;

pub(crate) use self::meta::lost as meta_lost;

/// Whether the log in `dir` has its meta file (a log that was ever opened has one).
pub(crate) fn has_meta(dir: &std::path::Path) -> Result<bool, LogError> {
    Ok(self::meta::Meta::load(dir)?.is_some())
}
pub use crate::fsutil::PathError;
use crate::types::Entry;
use crate::types::LogId;
use crate::types::NodeId;
use crate::types::TypeConfig;
use crate::types::Vote;

/// Everything that can go wrong in the log's storage. A clone of an I/O failure has the same
/// kind and OS error code (see [`PathError`]'s `Clone`).
#[derive(Debug, Clone, thiserror::Error)]
pub enum LogError {
    /// A file operation failed.
    #[error(transparent)]
    Io(#[from] PathError),
    /// The log on disk is damaged somewhere other than its tail (a torn tail, or holes past what
    /// the last segment's records vouch for); the node must not start.
    #[error("write-ahead log is corrupt: {file} at offset {offset}: {reason}")]
    Corrupt {
        /// The damaged file.
        file: PathBuf,
        /// Byte offset of the damage in that file.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The directory holds another node's log.
    #[error("{dir} holds the log of node {found}, not node {expected}")]
    WrongNode {
        /// The log directory.
        dir: PathBuf,
        /// The node id this process was started as.
        expected: NodeId,
        /// The node id recorded in the directory.
        found: NodeId,
    },
    /// Another process (or another node in this process) has the directory open.
    #[error("{dir} is in use by another process or node")]
    Locked {
        /// The log directory.
        dir: PathBuf,
    },
    /// An append would leave a gap or go backwards.
    #[error("append out of order: expected entry {expected}, got {got}")]
    OutOfOrder {
        /// The index the log expected next.
        expected: u64,
        /// The index it was given.
        got: u64,
    },
    /// A record could not be encoded (for example, an entry over the size limit).
    #[error("cannot encode a log record: {0}")]
    Encode(String),
    /// A write, an fdatasync or a file operation of the log failed earlier; `earlier` is that
    /// first failure, as it happened. From then on the log accepts no writes, truncations, purges
    /// or votes, and writes nothing more on close: after a failed fdatasync nothing written before
    /// can be trusted to be durable, and after a failed write the writer's position may not match
    /// the file. What is durable is recovered when the log is opened again. As an [`io::Error`]
    /// it has the kind of the first failure.
    #[error("write-ahead log refuses writes after an earlier failure: {earlier}")]
    Failed {
        /// The first failure (the same one for every refusal of this log).
        earlier: Arc<LogError>,
    },
}

impl LogError {
    /// The kind of [`io::Error`] this error becomes: the file operation's for
    /// [`LogError::Io`], and the first failure's for [`LogError::Failed`].
    pub(crate) fn io_kind(&self) -> io::ErrorKind {
        match self {
            LogError::Io(p) => p.source.kind(),
            LogError::Corrupt { .. } => io::ErrorKind::InvalidData,
            LogError::OutOfOrder { .. } | LogError::Encode(_) => io::ErrorKind::InvalidInput,
            LogError::Failed { earlier } => earlier.io_kind(),
            LogError::WrongNode { .. } | LogError::Locked { .. } => io::ErrorKind::Other,
        }
    }

    /// Whether this error fails the log for good: the failure of a write, an fdatasync or any
    /// other file operation (or damage found while cutting a segment). A refused entry
    /// ([`LogError::OutOfOrder`], [`LogError::Encode`]) is the caller's and leaves the log as it
    /// was; a refusal ([`LogError::Failed`]) reports a failure already recorded.
    pub(crate) fn fails_the_log(&self) -> bool {
        !matches!(
            self,
            LogError::OutOfOrder { .. } | LogError::Encode(_) | LogError::Failed { .. }
        )
    }
}

impl From<LogError> for io::Error {
    fn from(e: LogError) -> Self {
        io::Error::new(e.io_kind(), e)
    }
}

/// Counters the durable log keeps (all zero for the in-memory log).
#[derive(Debug, Default)]
pub(crate) struct LogStatsCounters {
    entries: AtomicU64,
    bytes: AtomicU64,
    fsyncs: AtomicU64,
    fsync_micros: AtomicU64,
    flush_batches: AtomicU64,
    recovered: AtomicU64,
    /// Flusher rounds by duration: `fsync_buckets[i]` counts rounds that took at most
    /// [`FSYNC_BUCKETS_SECONDS`]`[i]` (and more than the bound before); the last, longer ones.
    fsync_buckets: [AtomicU64; FSYNC_BUCKETS_SECONDS.len() + 1],
}

/// Upper bounds, in seconds, of the buckets of [`LogStats::fsync_histogram`]: from 100 µs (a
/// disk with a power-safe write cache) to 1 s (a disk in trouble).
pub const FSYNC_BUCKETS_SECONDS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

impl LogStatsCounters {
    /// Counts one flusher round that took `micros`.
    pub(crate) fn record_flush(&self, micros: u64) {
        self.fsync_micros.fetch_add(micros, Ordering::Relaxed);
        self.flush_batches.fetch_add(1, Ordering::Relaxed);
        let seconds = micros as f64 / 1e6;
        let bucket = FSYNC_BUCKETS_SECONDS
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(FSYNC_BUCKETS_SECONDS.len());
        self.fsync_buckets[bucket].fetch_add(1, Ordering::Relaxed);
    }
}

/// A snapshot of the log's counters since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Entries appended.
    pub entries: u64,
    /// Bytes written to segments.
    pub bytes: u64,
    /// fdatasync calls (by the flusher and when sealing segments).
    pub fsyncs: u64,
    /// Total time spent in the flusher's fdatasync calls, in microseconds.
    pub fsync_micros: u64,
    /// Flusher rounds; each round acknowledges every append queued before it.
    pub flush_batches: u64,
    /// Bytes of the entry records the log held when it was opened. With `bytes`, an upper
    /// bound on the log's size on disk (before preallocation) since it was opened.
    pub recovered_bytes: u64,
    /// Flusher rounds by how long their fdatasync calls took: `fsync_histogram[i]` counts the
    /// rounds that took at most [`FSYNC_BUCKETS_SECONDS`]`[i]` and more than the bound before;
    /// the last element counts those over one second. Not cumulative.
    pub fsync_histogram: [u64; FSYNC_BUCKETS_SECONDS.len() + 1],
}

impl LogStatsCounters {
    fn snapshot(&self) -> LogStats {
        LogStats {
            entries: self.entries.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            fsyncs: self.fsyncs.load(Ordering::Relaxed),
            fsync_micros: self.fsync_micros.load(Ordering::Relaxed),
            flush_batches: self.flush_batches.load(Ordering::Relaxed),
            recovered_bytes: self.recovered.load(Ordering::Relaxed),
            fsync_histogram: std::array::from_fn(|i| self.fsync_buckets[i].load(Ordering::Relaxed)),
        }
    }
}

enum Backend {
    Durable(Box<Wal>),
    Memory(MemLog),
}

/// The log openraft runs on: durable or in memory.
pub struct LogStore {
    backend: Backend,
    stats: Arc<LogStatsCounters>,
    append_budget: usize,
}

/// A reader of a [`LogStore`], used by openraft's replication and apply tasks.
#[derive(Clone)]
pub struct LogReader {
    backend: ReaderBackend,
    append_budget: usize,
}

/// What a node's log holds, as its RPC handler checks a peer's request against it: the log ids
/// of the entries as they are now (appended entries show before they are durable).
#[derive(Clone)]
pub(crate) struct LogIds(ReaderBackend);

impl LogIds {
    /// The log id of the entry at `index`, or the last purged log id at its index; `None` for
    /// an index before it or past the last entry.
    pub(crate) fn at(&self, index: u64) -> Option<LogId> {
        match &self.0 {
            ReaderBackend::Durable(view) => view.read().id_at(index),
            ReaderBackend::Memory(m) => m.id_at(index),
        }
    }
}

#[derive(Clone)]
enum ReaderBackend {
    Durable(SharedView),
    Memory(MemLog),
}

/// Creates the empty log of node `node_id` in `dir`, holding only `vote`: how a node restored
/// from a backup starts, so that its first election is for a term above the backup's. Refuses a
/// directory that already has a log.
pub(crate) fn create_with_vote(dir: &Path, node_id: NodeId, vote: &Vote) -> Result<(), LogError> {
    crate::fsutil::ensure_dir(dir)?;
    if meta::Meta::load(dir)?.is_some() {
        return Err(LogError::Io(crate::fsutil::at(
            "create",
            &dir.join(meta::FILE_NAME),
        )(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "a log already exists here",
        ))));
    }
    meta::Meta {
        node_id,
        vote: Some(crate::disk::DiskVote::from(vote)),
        purged: None,
    }
    .store(dir)
}

impl LogStore {
    /// Opens the durable log in `dir` as node `node_id`, creating it if needed and recovering
    /// whatever a crash left behind. Fails with [`LogError::Corrupt`] on damage other than a tail
    /// a crash or power cut left (torn, or with holes past what the log vouches for),
    /// [`LogError::WrongNode`] if the directory belongs to another node, and
    /// [`LogError::Locked`] if it is already open.
    pub fn open(
        dir: impl AsRef<Path>,
        node_id: NodeId,
        opts: WalOptions,
    ) -> Result<LogStore, LogError> {
        let stats = Arc::new(LogStatsCounters::default());
        let wal = Wal::open(dir.as_ref(), node_id, opts, stats.clone())?;
        Ok(LogStore {
            backend: Backend::Durable(Box::new(wal)),
            stats,
            append_budget: usize::MAX,
        })
    }

    /// The last purged entry's log id, if any entry was purged.
    pub(crate) fn purged(&self) -> Option<LogId> {
        match &self.backend {
            Backend::Durable(wal) => wal.view().read().purged(),
            Backend::Memory(m) => m.state().0,
        }
    }

    /// A live view of the log ids this log holds (see [`LogIds`]).
    pub(crate) fn ids(&self) -> LogIds {
        LogIds(self.reader_backend())
    }

    fn reader_backend(&self) -> ReaderBackend {
        match &self.backend {
            Backend::Durable(wal) => ReaderBackend::Durable(wal.view()),
            Backend::Memory(m) => ReaderBackend::Memory(m.clone()),
        }
    }

    /// A fresh, empty log in memory.
    pub fn memory() -> LogStore {
        LogStore {
            backend: Backend::Memory(MemLog::default()),
            stats: Arc::default(),
            append_budget: usize::MAX,
        }
    }

    /// The switch that makes this log close as if the power failed (durable logs only).
    #[cfg(feature = "testing")]
    pub fn power_switch(&self) -> Option<PowerSwitch> {
        match &self.backend {
            Backend::Durable(wal) => wal.simulation().map(|s| s.power_switch()),
            Backend::Memory(_) => None,
        }
    }

    /// The switch that makes this log's writes fail as on a full disk (durable logs only).
    #[cfg(feature = "testing")]
    pub fn fault_switch(&self) -> Option<FaultSwitch> {
        match &self.backend {
            Backend::Durable(wal) => wal.simulation().map(|s| s.fault_switch()),
            Backend::Memory(_) => None,
        }
    }

    /// Bounds the bytes of entries one replication message carries (see
    /// [`Config::max_append_bytes`](crate::Config)): readers made after this call return at most
    /// this many bytes of entries from `limited_get_log_entries`, but always at least one entry.
    pub fn set_append_budget(&mut self, bytes: usize) {
        self.append_budget = bytes.max(1);
    }

    /// Counters since the log was opened.
    pub fn stats(&self) -> LogStats {
        self.stats.snapshot()
    }

    /// A handle that reads the counters while the log is owned by a running node.
    pub fn stats_handle(&self) -> LogStatsHandle {
        LogStatsHandle(self.stats.clone())
    }

    /// Appends entries and calls `done` once they are durable. The same as openraft's
    /// [`RaftLogStorage::append`], with a plain closure instead of openraft's callback type.
    pub fn append_with(
        &mut self,
        entries: impl IntoIterator<Item = Entry>,
        done: impl FnOnce(io::Result<()>) + Send + 'static,
    ) -> Result<(), LogError> {
        match &mut self.backend {
            Backend::Durable(wal) => wal.append(entries, Box::new(done)),
            Backend::Memory(m) => {
                m.append(entries)?;
                done(Ok(()));
                Ok(())
            }
        }
    }
}

/// Reads a log's counters from anywhere.
#[derive(Clone)]
pub struct LogStatsHandle(Arc<LogStatsCounters>);

impl LogStatsHandle {
    /// Counters since the log was opened.
    pub fn get(&self) -> LogStats {
        self.0.snapshot()
    }
}

fn bounds(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(s) => *s,
        Bound::Excluded(s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(e) => e.saturating_add(1),
        Bound::Excluded(e) => *e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

/// Bytes a replicated entry costs on the wire, an upper bound: its commands, plus room for its
/// log id, session and framing, and for each further write of an entry that carries several
/// (a combined entry, a [`Node::write_many`](crate::Node::write_many) batch), that write's
/// session and length. A membership entry is counted as 4 KiB.
pub fn entry_cost(entry: &Entry) -> usize {
    match &entry.payload {
        openraft::EntryPayload::Normal(p) => p
            .command_len()
            .saturating_add(p.framing_beyond_first())
            .saturating_add(ENTRY_FRAMING),
        openraft::EntryPayload::Blank => ENTRY_FRAMING,
        openraft::EntryPayload::Membership(_) => 4096,
    }
}

/// What an entry adds to its command on the wire, at most (log id, session, lengths).
pub const ENTRY_FRAMING: usize = 128;

/// The largest entry the log holds, encoded, in bytes (256 MiB): a node refuses to start with a
/// [`Config::max_command_bytes`](crate::Config::max_command_bytes) whose entries could exceed it.
pub const MAX_ENTRY_BYTES: usize = record::MAX_PAYLOAD;

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let (start, end) = bounds(&range);
        match &self.backend {
            ReaderBackend::Durable(view) => view.read().read_range(start, end),
            ReaderBackend::Memory(m) => Ok(m.read_range(start, end)),
        }
    }

    /// At most [`LogStore::set_append_budget`] bytes of entries (by [`entry_cost`]), and never
    /// fewer than one: what openraft sends in one replication message.
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, io::Error> {
        let budget = self.append_budget;
        let mut out = Vec::new();
        let mut total = 0usize;
        // Takes `e` if it fits in the budget (the first entry always does).
        let take = |e: Entry, out: &mut Vec<Entry>, total: &mut usize| {
            *total = total.saturating_add(entry_cost(&e));
            let fits = out.is_empty() || *total <= budget;
            if fits {
                out.push(e);
            }
            fits
        };
        match &self.backend {
            // In chunks sized by what the budget has left over the entries' average so far:
            // small entries go many at a time, and a run of large ones is read one by one, never
            // whole only to be cut. Each chunk takes the read lock on its own, so appends wait
            // for one chunk's reads from disk at most, not for a whole budget of them (a
            // follower catching up from old entries would otherwise hold up every write). The
            // chunks stay one run of one log: once the tail was cut, or the head purged past
            // the next entry, what was read so far is returned, as a read under one lock that
            // ended there would have.
            ReaderBackend::Durable(view) => {
                let mut index = start;
                let mut chunk = 1u64;
                let mut cuts = None;
                'read: while index < end {
                    let hi = index.saturating_add(chunk).min(end);
                    #[cfg(test)]
                    tests::before_chunk(view);
                    let entries = {
                        let v = view.read();
                        if *cuts.get_or_insert(v.cuts()) != v.cuts() {
                            break;
                        }
                        v.read_range(index, hi)?
                    };
                    let gap = entries.first().is_some_and(|e| e.log_id.index != index);
                    if !out.is_empty() && (entries.is_empty() || gap) {
                        break; // the log ends (or was purged) here
                    }
                    for e in entries {
                        if !take(e, &mut out, &mut total) {
                            break 'read;
                        }
                    }
                    index = hi;
                    if let Some(avg) = total.checked_div(out.len()) {
                        chunk = (budget.saturating_sub(total) / avg.max(1)).clamp(1, 64) as u64;
                    }
                }
            }
            ReaderBackend::Memory(m) => {
                for e in m.read_range(start, end) {
                    if !take(e, &mut out, &mut total) {
                        break;
                    }
                }
            }
        }
        Ok(out)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(match &self.backend {
            ReaderBackend::Durable(view) => view.read().vote(),
            ReaderBackend::Memory(m) => m.vote(),
        })
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let (purged, last) = match &self.backend {
            Backend::Durable(wal) => {
                let view = wal.view();
                let v = view.read();
                (v.purged(), v.last())
            }
            Backend::Memory(m) => m.state(),
        };
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> LogReader {
        LogReader {
            backend: self.reader_backend(),
            append_budget: self.append_budget,
        }
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        match &mut self.backend {
            Backend::Durable(wal) => wal.save_vote(vote).await?,
            Backend::Memory(m) => m.save_vote(vote),
        }
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        match &mut self.backend {
            Backend::Durable(wal) => wal.save_committed(committed),
            Backend::Memory(m) => m.save_committed(committed),
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(match &self.backend {
            Backend::Durable(wal) => wal.committed(),
            Backend::Memory(m) => m.committed(),
        })
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.append_with(entries, move |r| callback.io_completed(r))?;
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        match &mut self.backend {
            Backend::Durable(wal) => wal.truncate_after(last_log_id)?,
            Backend::Memory(m) => m.truncate_after(last_log_id),
        }
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        match &mut self.backend {
            Backend::Durable(wal) => wal.purge(log_id)?,
            Backend::Memory(m) => m.purge(log_id),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
