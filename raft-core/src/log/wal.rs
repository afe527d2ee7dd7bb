//! The durable write-ahead log: append, truncate, purge, recovery.
//!
//! [`Wal`] is the single writer; [`View`] is the state readers share (what entries exist, where
//! each lives on disk, a cache of the newest decoded entries, the vote). The writer updates the
//! view only after the bytes are written, so a reader never sees an entry it cannot read back.
//!
//! Record payloads are the postcard encoding of [`WalRecord`]: a log entry, a "committed" marker,
//! or a `Synced` record vouching for what was durable (synced.rs). Markers are appended in front
//! of the next batch of entries rather than written on their own, so persisting the commit index
//! costs no extra I/O; it is advisory (openraft only uses it to replay the state machine faster
//! after a restart).

use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::fs;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::RwLock;
use std::sync::RwLockReadGuard;
use std::sync::RwLockWriteGuard;
use std::sync::atomic::Ordering;

use serde::Deserialize;
use serde::Serialize;

use super::LogError;
use super::LogStatsCounters;
use super::flusher::Flusher;
use super::flusher::Waiter;
use super::meta::Meta;
use super::record::Framing;
use super::record::Salt;
use super::recovery;
use super::recovery::Recovered;
use super::recovery::Tail;
use super::runs::LeaderRuns;
use super::segment;
use super::segment::Segment;
use super::sim::Simulation;
use super::synced::SyncedMark;
use crate::codec;
use crate::disk::DiskEntry;
use crate::disk::DiskLogId;
use crate::disk::DiskVote;
use crate::fsutil;
use crate::fsutil::at;
use crate::types::Entry;
use crate::types::LogId;
use crate::types::NodeId;
use crate::types::Vote;

/// Tuning of the durable log. Start from [`WalOptions::default`] and adjust with the `with_*`
/// methods.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WalOptions {
    /// Bytes preallocated per segment file. A segment is sealed when the next entry does not
    /// fit; an entry larger than this gets a segment of its own. Default 64 MiB.
    pub segment_size: u64,
    /// How many of the newest entries are kept decoded in memory, so replication to followers
    /// that are nearly caught up never reads the disk. Default 8192.
    pub cache_entries: usize,
    /// Most bytes of entries (as written to the log) that cache holds; whichever bound is
    /// reached first evicts the oldest. Default 64 MiB: 8192 small entries fit, while 1 MiB
    /// values keep 64 of them rather than 8 GiB.
    pub cache_bytes: usize,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_size: 64 << 20,
            cache_entries: 8192,
            cache_bytes: 64 << 20,
        }
    }
}

impl WalOptions {
    /// Sets the bytes preallocated per segment file (default 64 MiB, at least 4096); see
    /// [`WalOptions::segment_size`].
    #[must_use]
    pub fn with_segment_size(mut self, bytes: u64) -> WalOptions {
        self.segment_size = bytes;
        self
    }

    /// Sets how many of the newest entries stay decoded in memory (default 8192).
    #[must_use]
    pub fn with_cache_entries(mut self, entries: usize) -> WalOptions {
        self.cache_entries = entries;
        self
    }

    /// Sets the most bytes of entries the in-memory cache holds (default 64 MiB).
    #[must_use]
    pub fn with_cache_bytes(mut self, bytes: usize) -> WalOptions {
        self.cache_bytes = bytes;
        self
    }
}

/// One record's payload.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum WalRecord<'a> {
    /// A log entry.
    Entry(DiskEntry<'a>),
    /// Entries up to this log id are known to be committed.
    Committed(DiskLogId),
    /// The segment holding this record was durable up to this offset (an fdatasync covering
    /// it had completed) when the record was framed: the bytes before it were synced, so damage
    /// there is corruption, not a tail a power cut left unfinished (recovery.rs). Every segment
    /// this version creates starts with one, the first batch after an append's fdatasync
    /// completes carries one, and so does a clean close.
    Synced(u64),
}

/// Where an entry's record lives.
#[derive(Debug, Clone, Copy)]
pub(super) struct Loc {
    /// First index of the segment (its key in [`View::segments`]).
    pub segment: u64,
    /// Offset of the record header in the segment file.
    pub offset: u64,
    /// Payload length.
    pub len: u32,
}

impl Loc {
    /// The offset just past the record, in a segment framed as `framing`.
    fn end(&self, framing: Framing) -> u64 {
        self.offset + framing.header_len() as u64 + self.len as u64
    }
}

/// An open segment as readers see it.
pub(crate) struct SegmentFile {
    pub(super) file: Arc<File>,
    /// How its records are framed (from its header).
    pub(super) framing: Framing,
}

/// What readers see of the log.
pub(crate) struct View {
    pub(super) vote: Option<Vote>,
    pub(super) purged: Option<LogId>,
    /// The last entry's log id, or `purged` when no entry is left.
    pub(super) last: Option<LogId>,
    pub(super) segments: BTreeMap<u64, SegmentFile>,
    /// Index of `locs[0]`.
    pub(super) first: u64,
    pub(super) locs: VecDeque<Loc>,
    /// The leader of every live entry, as runs: `(first index, leader)` in index order, one per
    /// change of leader, the last reaching the last entry (after a purge, the first may start
    /// before `first`): one per leader the live log spans, usually few and never more than its
    /// entries, so a log id a peer names is checked against the log without reading it.
    leaders: LeaderRuns,
    /// Decoded copies of the newest entries with their record sizes; `cache[0]` has index
    /// `cache_first`.
    cache: VecDeque<(Entry, usize)>,
    pub(super) cache_first: u64,
    cache_cap: usize,
    /// The sum of the cached entries' record sizes, and its bound.
    cache_size: usize,
    cache_cap_bytes: usize,
    /// How many times the tail has been cut: a reader that reads a run of entries under
    /// several locks knows it is one run of one log while this stays put.
    cuts: u64,
}

impl View {
    pub(super) fn new(opts: &WalOptions) -> View {
        View {
            vote: None,
            purged: None,
            last: None,
            segments: BTreeMap::new(),
            first: 0,
            locs: VecDeque::new(),
            leaders: LeaderRuns::default(),
            cache: VecDeque::new(),
            cache_first: 0,
            cache_cap: opts.cache_entries,
            cache_size: 0,
            cache_cap_bytes: opts.cache_bytes,
            cuts: 0,
        }
    }

    /// How many times the tail has been cut (see `cuts`).
    pub fn cuts(&self) -> u64 {
        self.cuts
    }

    /// One past the last live entry.
    fn end(&self) -> u64 {
        self.first + self.locs.len() as u64
    }

    pub fn vote(&self) -> Option<Vote> {
        self.vote
    }

    pub fn purged(&self) -> Option<LogId> {
        self.purged
    }

    pub fn last(&self) -> Option<LogId> {
        self.last
    }

    /// The log id of the entry at `index`: a live entry's, or the purged log id at its index;
    /// `None` for any other index.
    pub fn id_at(&self, index: u64) -> Option<LogId> {
        if let Some(p) = self.purged
            && p.index == index
        {
            return Some(p);
        }
        if index < self.first || index >= self.end() {
            return None;
        }
        self.leaders.id_at(index)
    }

    pub(super) fn push(&mut self, loc: Loc, entry: Entry) {
        if self.locs.is_empty() {
            self.first = entry.log_id.index;
            self.leaders.clear();
        }
        self.leaders
            .push(entry.log_id.index, entry.log_id.leader_id);
        if self.cache.is_empty() {
            self.cache_first = entry.log_id.index;
        }
        self.last = Some(entry.log_id);
        self.locs.push_back(loc);
        if self.cache_cap > 0 {
            let size = loc.len as usize;
            self.cache.push_back((entry, size));
            self.cache_size += size;
            while self.cache.len() > self.cache_cap || self.cache_size > self.cache_cap_bytes {
                self.pop_cached();
            }
        }
    }

    /// Entries and bytes (as written) the cache holds now.
    #[cfg(test)]
    pub(super) fn cached(&self) -> (usize, usize) {
        (self.cache.len(), self.cache_size)
    }

    /// Evicts the oldest cached entry.
    fn pop_cached(&mut self) {
        if let Some((_, size)) = self.cache.pop_front() {
            self.cache_size -= size;
            self.cache_first += 1;
        }
    }

    /// Reads the live entries with index in `[start, end)`, clamped to what exists.
    pub fn read_range(&self, start: u64, end: u64) -> io::Result<Vec<Entry>> {
        let start = start.max(self.first);
        let end = end.min(self.end());
        let mut out = Vec::with_capacity(end.saturating_sub(start) as usize);
        for index in start..end {
            out.push(self.read(index)?);
        }
        Ok(out)
    }

    fn read(&self, index: u64) -> io::Result<Entry> {
        if index >= self.cache_first
            && let Some((e, _)) = self.cache.get((index - self.cache_first) as usize)
        {
            return Ok(e.clone());
        }
        let loc = self.locs[(index - self.first) as usize];
        let seg = self.segments.get(&loc.segment).ok_or_else(|| {
            io::Error::other(format!("segment {} of entry {index} is gone", loc.segment))
        })?;
        let header_len = seg.framing.header_len();
        let mut buf = vec![0u8; header_len + loc.len as usize];
        seg.file.read_exact_at(&mut buf, loc.offset)?;
        let damaged = |why: String| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "log entry {index} in segment {} at offset {} is damaged: {why}",
                    segment::file_name(loc.segment),
                    loc.offset
                ),
            )
        };
        if !seg.framing.verify(&buf) {
            return Err(damaged("checksum mismatch".into()));
        }
        match codec::decode::<WalRecord>(&buf[header_len..]) {
            Ok(WalRecord::Entry(e)) if e.log_id.index == index => e.into_entry().map_err(damaged),
            Ok(_) => Err(damaged("record is not this entry".into())),
            Err(e) => Err(damaged(e.to_string())),
        }
    }

    /// Drops the entries from `index` on; `kept` is the log id of the entry before it, as the
    /// caller named it (the new last entry, if any is left).
    fn truncate_from(&mut self, index: u64, kept: Option<LogId>) {
        self.cuts += 1;
        let keep = index.saturating_sub(self.first) as usize;
        self.locs.truncate(keep);
        self.leaders.cut_from(index);
        let keep_cache = index.saturating_sub(self.cache_first) as usize;
        while self.cache.len() > keep_cache {
            if let Some((_, size)) = self.cache.pop_back() {
                self.cache_size -= size;
            }
        }
        self.last = match self.locs.is_empty() {
            true => self.purged,
            false => self.cache.back().map(|(e, _)| e.log_id).or(kept),
        };
    }

    fn purge_to(&mut self, upto: LogId) {
        while self.first <= upto.index && !self.locs.is_empty() {
            self.locs.pop_front();
            self.first += 1;
        }
        if self.locs.is_empty() {
            self.first = upto.index + 1;
            self.leaders.clear();
        }
        self.leaders.drop_before(self.first);
        while self.cache_first <= upto.index && !self.cache.is_empty() {
            self.pop_cached();
        }
        if self.cache.is_empty() {
            self.cache_first = upto.index + 1;
        }
        self.purged = Some(upto);
        if self.locs.is_empty() {
            self.last = Some(upto);
        }
    }
}

/// Shared, lockable view of the log.
#[derive(Clone)]
pub(crate) struct SharedView(Arc<RwLock<View>>);

impl SharedView {
    pub fn read(&self) -> RwLockReadGuard<'_, View> {
        crate::sync::read(&self.0)
    }

    /// Whether nobody holds the lock now (a writer could take it at once).
    #[cfg(test)]
    pub fn is_free(&self) -> bool {
        self.0.try_write().is_ok()
    }

    fn write(&self) -> RwLockWriteGuard<'_, View> {
        crate::sync::write(&self.0)
    }
}

/// The segment being appended to: always one of this version's format, never an `RKWAL001`
/// segment.
pub(super) struct Active {
    pub seg: Segment,
    /// The segment's salt, which every record written to it is framed with (the writer's only
    /// copy of it; readers have theirs in [`View::segments`]).
    pub salt: Salt,
    pub write_offset: u64,
    pub capacity: u64,
    pub entries: u64,
}

/// The durable log's writer. See the module docs of `log` for the format.
pub(crate) struct Wal {
    dir: PathBuf,
    opts: WalOptions,
    view: SharedView,
    active: Option<Active>,
    meta: Meta,
    /// The newest commit index handed to [`Wal::save_committed`].
    committed: Option<LogId>,
    /// The newest commit index written as a record.
    committed_written: Option<LogId>,
    /// How far the active segment is known durable, as reported by appends' waiters.
    synced: SyncedMark,
    /// The mark's current epoch (only this writer starts a new one).
    synced_epoch: u64,
    /// The furthest offset of the active segment a `Synced` record was written for.
    testified: u64,
    /// Where batches are framed, reused; see [`Wal::keep_buf`].
    buf: Vec<u8>,
    stats: Arc<LogStatsCounters>,
    /// Simulated faults and power loss; installed only by builds with the `testing` feature.
    sim: Option<Simulation>,
    // Declared before the lock so it is dropped (flushing) while the directory is still locked.
    flusher: Flusher,
    _lock: File,
}

impl Wal {
    /// Opens (or creates) the log in `dir` for node `node_id`, recovering what is on disk:
    /// every checksum is verified, a torn tail of the last segment (or holes past what its
    /// `Synced` records vouch for) is cut back to the last valid record, and damage anywhere
    /// else is refused with [`LogError::Corrupt`].
    pub fn open(
        dir: &Path,
        node_id: NodeId,
        opts: WalOptions,
        stats: Arc<LogStatsCounters>,
    ) -> Result<Wal, LogError> {
        fsutil::ensure_dir(dir)?;
        let lock_path = dir.join("LOCK");
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(at("open", &lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(LogError::Locked {
                    dir: dir.to_path_buf(),
                });
            }
            Err(fs::TryLockError::Error(e)) => return Err(at("lock", &lock_path)(e).into()),
        }

        let meta = match Meta::load(dir)? {
            Some(m) if m.node_id != node_id => {
                return Err(LogError::WrongNode {
                    dir: dir.to_path_buf(),
                    expected: node_id,
                    found: m.node_id,
                });
            }
            Some(m) => m,
            None => {
                // Meta is written before the first segment, so segments without it mean the
                // file was lost: starting afresh would forget this node's vote (it could vote
                // twice in one term) and the purge point.
                let segments = super::segment::list(dir)?;
                if !segments.is_empty() {
                    return Err(super::meta::lost(
                        dir,
                        format_args!("the log holds {} segment(s)", segments.len()),
                    ));
                }
                let m = Meta {
                    node_id,
                    vote: None,
                    purged: None,
                };
                m.store(dir)?;
                m
            }
        };

        let Recovered {
            view,
            tail,
            committed,
        } = recovery::recover(dir, &opts, &meta)?;

        let recovered: u64 = view
            .locs
            .iter()
            .map(|l| {
                let header = view
                    .segments
                    .get(&l.segment)
                    .map_or(0, |s| s.framing.header_len());
                header as u64 + l.len as u64
            })
            .sum();
        stats.recovered.store(recovered, Ordering::Relaxed);
        // Sealed segments were made durable whole when they were sealed; of the last one, only
        // its header is known durable until it is synced below.
        let sim = cfg!(feature = "testing").then(|| {
            Simulation::new(
                view.segments.keys().copied(),
                tail.as_ref()
                    .map(|t| (t.seg.first_index, segment::HEADER_LEN)),
            )
        });
        Self::make_durable(dir, tail.as_ref(), sim.as_ref())?;
        // What recovery kept is durable now: the first batch appended testifies to it.
        let synced = SyncedMark::default();
        let (mut synced_epoch, mut testified) = (0, 0);
        if let Some(t) = &tail {
            synced_epoch = synced.restart(t.seg.first_index, t.end);
            testified = t.testified;
        }
        // New records go only to segments of this version's format: a last segment of the
        // earlier format stays as it is, and the next append starts a new segment.
        let active = tail.and_then(|t| {
            let Framing::Salted(salt) = t.framing else {
                return None;
            };
            Some(Active {
                seg: t.seg,
                salt,
                write_offset: t.end,
                capacity: opts.segment_size,
                entries: t.entries,
            })
        });
        let flusher = Flusher::spawn(format!("raftkit-wal-{node_id}"), stats.clone(), sim.clone())
            .map_err(|e| LogError::Io(at("start flusher for", dir)(e)))?;
        Ok(Wal {
            dir: dir.to_path_buf(),
            opts,
            view: SharedView(Arc::new(RwLock::new(view))),
            active,
            meta,
            committed,
            committed_written: committed,
            synced,
            synced_epoch,
            testified,
            buf: Vec::new(),
            stats,
            sim,
            flusher,
            _lock: lock,
        })
    }

    /// Makes what recovery found durable before the log is used: the last segment is
    /// fdatasynced, then the meta file and the directory are fsynced.
    ///
    /// After a crash of the process (not of the machine), the page cache still holds writes the
    /// flusher never synced, and recovery reads them back like any other; openraft then treats the
    /// entries as durable — a follower acknowledges them to the leader without writing them
    /// again. Syncing here makes that true before anything relies on it. Sealed segments need
    /// nothing: each was fdatasynced before the next one was created. The directory sync covers
    /// a segment created, a meta file renamed or a segment removed just before the crash.
    fn make_durable(
        dir: &Path,
        tail: Option<&Tail>,
        sim: Option<&Simulation>,
    ) -> Result<(), LogError> {
        if let Some(t) = tail {
            t.seg
                .file
                .sync_data()
                .map_err(at("fdatasync", &t.seg.path))?;
            if let Some(sim) = sim {
                sim.durable(t.seg.first_index, t.end);
            }
        }
        let meta_path = dir.join(super::meta::FILE_NAME);
        File::open(&meta_path)
            .and_then(|f| f.sync_all())
            .map_err(at("fsync", &meta_path))?;
        fsutil::sync_dir(dir)?;
        Ok(())
    }

    /// The simulation of disk faults and power loss, if this build installs one.
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    pub fn simulation(&self) -> Option<&Simulation> {
        self.sim.as_ref()
    }

    /// The state readers share.
    pub fn view(&self) -> SharedView {
        self.view.clone()
    }

    /// The commit index recovered at open or last saved.
    pub fn committed(&self) -> Option<LogId> {
        self.committed
    }

    /// Records the commit index; it is written in front of the next appended batch.
    pub fn save_committed(&mut self, committed: Option<LogId>) {
        self.committed = committed;
    }

    /// Saves the vote durably. Everything appended before is made durable first, so the vote
    /// never becomes durable ahead of entries that were appended earlier.
    ///
    /// Refused with [`LogError::Failed`] once the log has failed; a failure here fails it.
    pub async fn save_vote(&mut self, vote: &Vote) -> Result<(), LogError> {
        self.refuse_if_failed()?;
        if let Some(a) = &self.active {
            let r = self.flusher.barrier(&a.seg).await;
            self.record_failure(r)?;
        }
        let mut meta = self.meta.clone();
        meta.vote = Some(DiskVote::from(vote));
        let r = self.store_meta(meta);
        self.record_failure(r)?;
        self.view.write().vote = Some(*vote);
        Ok(())
    }

    /// Refuses with [`LogError::Failed`] once the log has failed.
    fn refuse_if_failed(&self) -> Result<(), LogError> {
        match self.flusher.failure() {
            Some(earlier) => Err(LogError::Failed { earlier }),
            None => Ok(()),
        }
    }

    /// Fails the log for good if `r` is the failure of a write, an fdatasync or any other file
    /// operation ([`LogError::fails_the_log`]): after one, the writer's state (its write offset,
    /// the segments it holds) may not match the disk, and what was written may not be durable.
    /// The failure becomes the log's failed state, and the caller gets it as well. A refused
    /// entry ([`LogError::OutOfOrder`], [`LogError::Encode`]) is the caller's and leaves the log
    /// as it was.
    fn record_failure<T>(&self, r: Result<T, LogError>) -> Result<T, LogError> {
        match r {
            Err(e) if e.fails_the_log() => {
                let for_caller = e.clone();
                self.flusher.fail(e);
                Err(for_caller)
            }
            r => r,
        }
    }

    /// Appends `entries`, which must continue the log without a gap. Returns once the records
    /// are written (readable); `waiter` runs once they are durable.
    ///
    /// Refused with [`LogError::Failed`] once the log has failed; a failed write or fdatasync
    /// here fails it.
    pub fn append(
        &mut self,
        entries: impl IntoIterator<Item = Entry>,
        waiter: Waiter,
    ) -> Result<(), LogError> {
        self.refuse_if_failed()?;
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let segment = self.active.as_ref().map(|a| a.seg.first_index);
        let framed = (self.testified, self.committed_written);
        let result = self.append_inner(entries, &mut buf);
        self.keep_buf(buf);
        if result.is_err() && self.active.as_ref().map(|a| a.seg.first_index) == segment {
            // Nothing was written (a refused batch, or an encoding error), or the log failed:
            // the markers framed into the batch are to be framed again. Framing one twice is
            // harmless; a `Synced` record's offset always comes from the mark.
            (self.testified, self.committed_written) = framed;
        }
        self.record_failure(result)?;
        // Once durable, the records vouch for themselves (the next batch says so), and the
        // simulated disk keeps them through a power cut.
        let waiter: Waiter = match &self.active {
            Some(a) => {
                let (mark, epoch) = (self.synced.clone(), self.synced_epoch);
                let (segment, end) = (a.seg.first_index, a.write_offset);
                let sim = self.sim.clone();
                Box::new(move |r: std::io::Result<()>| {
                    if r.is_ok() {
                        mark.advance(epoch, segment, end);
                        if let Some(sim) = &sim {
                            sim.durable(segment, end);
                        }
                    }
                    waiter(r)
                })
            }
            None => waiter,
        };
        self.flusher
            .enqueue(self.active.as_ref().map(|a| &a.seg), waiter);
        Ok(())
    }

    /// Keeps `buf` for the next batch, shrunk back to [`KEEP_BUF_BYTES`] if one large batch grew
    /// it past that: a single 64 MiB write must not hold 64 MiB for the life of the log.
    fn keep_buf(&mut self, mut buf: Vec<u8>) {
        if buf.capacity() > KEEP_BUF_BYTES {
            buf.clear();
            buf.shrink_to(KEEP_BUF_BYTES);
        }
        self.buf = buf;
    }

    /// The framing buffer's capacity, for tests of its bound.
    #[cfg(test)]
    pub fn buf_capacity(&self) -> usize {
        self.buf.capacity()
    }

    fn expected_next(&self) -> Option<u64> {
        let v = self.view.read();
        match (v.locs.is_empty(), v.purged) {
            (false, _) => Some(v.end()),
            (true, Some(p)) => Some(p.index + 1),
            (true, None) => None,
        }
    }

    fn append_inner(
        &mut self,
        entries: impl IntoIterator<Item = Entry>,
        buf: &mut Vec<u8>,
    ) -> Result<(), LogError> {
        let mut next = self.expected_next();
        // Entries framed into `buf` but not yet written: (entry, offset in buf, payload len).
        let mut pending: Vec<(Entry, usize, u32)> = Vec::new();
        self.frame_committed(buf)?;
        self.frame_synced(buf)?;
        for entry in entries {
            let index = entry.log_id.index;
            if let Some(n) = next
                && index != n
            {
                return Err(LogError::OutOfOrder {
                    expected: n,
                    got: index,
                });
            }
            next = Some(index + 1);
            let salt = match &self.active {
                Some(a) => a.salt,
                None => {
                    let a = self.new_segment(index)?;
                    let salt = a.salt;
                    self.active = Some(a);
                    salt
                }
            };
            let rel = buf.len();
            let len = Framing::Salted(salt)
                .append_framed(buf, |b| {
                    codec::encode_into(&WalRecord::Entry(DiskEntry::from(&entry)), b)
                })
                .map_err(|e| LogError::Encode(e.to_string()))?
                .map_err(|e| LogError::Encode(format!("entry {index}: {e}")))?;
            let needs_roll = match &self.active {
                Some(a) => {
                    a.write_offset + buf.len() as u64 > a.capacity
                        && (a.entries > 0 || !pending.is_empty())
                }
                None => false,
            };
            if needs_roll {
                let mut tail = buf.split_off(rel);
                self.write_active(buf, &mut pending)?;
                self.seal_active()?;
                let next_segment = self.new_segment(index)?;
                // The entry was framed for the full segment's salt; re-key it for the new one.
                next_segment.salt.restamp(&mut tail);
                self.active = Some(next_segment);
                *buf = tail;
                pending.push((entry, 0, len as u32));
            } else {
                pending.push((entry, rel, len as u32));
            }
        }
        self.write_active(buf, &mut pending)
    }

    /// Frames a commit marker for the active segment into `buf` if there is one and the saved
    /// commit index is newer than the last one written.
    fn frame_committed(&mut self, buf: &mut Vec<u8>) -> Result<(), LogError> {
        let (Some(c), Some(a)) = (self.committed, &self.active) else {
            return Ok(());
        };
        if self.committed_written.is_some_and(|w| w.index >= c.index) {
            return Ok(());
        }
        frame(a.salt, &WalRecord::Committed(DiskLogId::from(&c)), buf)?;
        self.committed_written = Some(c);
        Ok(())
    }

    /// Frames a `Synced` record for the active segment into `buf` if an fdatasync has made more
    /// of it durable than the last such record says.
    fn frame_synced(&mut self, buf: &mut Vec<u8>) -> Result<(), LogError> {
        let Some(a) = &self.active else {
            return Ok(());
        };
        let newer = self.synced.of(a.seg.first_index);
        if let Some(offset) = newer.filter(|&o| o > self.testified) {
            frame(a.salt, &WalRecord::Synced(offset), buf)?;
            self.testified = offset;
        }
        Ok(())
    }

    /// Writes `buf` at the active segment's write offset and publishes `pending` to readers.
    fn write_active(
        &mut self,
        buf: &[u8],
        pending: &mut Vec<(Entry, usize, u32)>,
    ) -> Result<(), LogError> {
        if buf.is_empty() {
            return Ok(());
        }
        let Some(a) = &mut self.active else {
            return Err(LogError::Encode("no active segment to write to".into()));
        };
        if let Some(sim) = &self.sim {
            sim.before_write().map_err(at("write", &a.seg.path))?;
        }
        a.seg
            .file
            .write_all_at(buf, a.write_offset)
            .map_err(at("write", &a.seg.path))?;
        let base = a.write_offset;
        a.write_offset += buf.len() as u64;
        a.entries += pending.len() as u64;
        let segment = a.seg.first_index;
        self.stats
            .entries
            .fetch_add(pending.len() as u64, Ordering::Relaxed);
        self.stats
            .bytes
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        let mut view = self.view.write();
        for (entry, rel, len) in pending.drain(..) {
            let loc = Loc {
                segment,
                offset: base + rel as u64,
                len,
            };
            view.push(loc, entry);
        }
        Ok(())
    }

    /// Makes the active segment durable before a newer one receives records, so a crash can
    /// only ever tear the last segment. The fdatasync is the flusher's, like every other of a
    /// segment, so its failure fails the log.
    fn seal_active(&mut self) -> Result<(), LogError> {
        if let Some(a) = &self.active {
            self.flusher.barrier_blocking(&a.seg)?;
            if let Some(sim) = &self.sim {
                sim.durable(a.seg.first_index, a.write_offset);
            }
        }
        Ok(())
    }

    fn new_segment(&mut self, first_index: u64) -> Result<Active, LogError> {
        if let Some(sim) = &self.sim {
            let tmp = self
                .dir
                .join(format!("{}.tmp", segment::file_name(first_index)));
            sim.before_write().map_err(at("preallocate", &tmp))?;
        }
        // Its first record vouches for its header: a segment holding a `Synced` record was
        // written by a version that writes them, so recovery may cut holes a power cut left in
        // it past what they vouch for. Durable with the header, like the header it covers.
        let (seg, salt, write_offset) =
            Segment::create(&self.dir, first_index, self.opts.segment_size, |salt| {
                let mut first = Vec::new();
                frame(salt, &WalRecord::Synced(segment::HEADER_LEN), &mut first)?;
                Ok(first)
            })?;
        self.view.write().segments.insert(
            first_index,
            SegmentFile {
                file: seg.file.clone(),
                framing: Framing::Salted(salt),
            },
        );
        // A fresh segment has no commit marker yet.
        self.committed_written = None;
        if let Some(sim) = &self.sim {
            // Created durably: its header and first record, and its name (the directory was
            // fsynced).
            sim.reset(first_index, write_offset);
            sim.dir_synced();
        }
        self.testified = write_offset;
        Ok(Active {
            seg,
            salt,
            write_offset,
            capacity: self.opts.segment_size,
            entries: 0,
        })
    }

    /// Removes every entry after `keep` (all live entries if `None`), durably: whole segments
    /// first (and the directory is fsynced), then the segment that keeps a part is cut and
    /// fsynced. A crash at any point leaves the old log or a prefix of it.
    ///
    /// Refused with [`LogError::Failed`] once the log has failed; a failure here fails it, so
    /// that nothing is written after a cut that may be only half made.
    pub fn truncate_after(&mut self, keep: Option<LogId>) -> Result<(), LogError> {
        self.refuse_if_failed()?;
        let r = self.truncate_inner(keep);
        self.record_failure(r)
    }

    fn truncate_inner(&mut self, keep: Option<LogId>) -> Result<(), LogError> {
        let (first, end, first_removed) = {
            let v = self.view.read();
            let first_removed = keep.map_or(0, |k| k.index + 1).max(v.first);
            (v.first, v.end(), first_removed)
        };
        if first_removed >= end {
            return Ok(());
        }
        // The entries leave the readers' view before any file is touched: a reader never finds
        // one whose segment is gone or cut. (The view keeps where the surviving entries are.)
        let keep_loc = (first_removed > first)
            .then(|| self.view.read().locs[(first_removed - 1 - first) as usize]);
        self.view.write().truncate_from(first_removed, keep);
        if let Some(keep_loc) = keep_loc {
            let later: Vec<u64> = self
                .view
                .read()
                .segments
                .range(keep_loc.segment + 1..)
                .rev()
                .map(|(k, _)| *k)
                .collect();
            // Later segments go first, and their removal is made durable before the kept one is
            // cut: a crash in between leaves the old log or a prefix of it, never a cut segment
            // followed by later ones (a gap, which recovery refuses).
            if !later.is_empty() {
                for s in later {
                    self.remove_segment(s)?;
                }
                self.sync_dir()?;
            }
            let path = self.dir.join(segment::file_name(keep_loc.segment));
            let (seg, framing) = Segment::open(&path, keep_loc.segment)?;
            let end_offset = keep_loc.end(framing);
            seg.file
                .set_len(end_offset)
                .map_err(at("truncate", &path))?;
            if let Some(sim) = &self.sim {
                sim.before_write().map_err(at("preallocate", &path))?;
            }
            fsutil::preallocate(&seg.file, self.opts.segment_size.max(end_offset))
                .map_err(at("preallocate", &path))?;
            if let Some(sim) = &self.sim {
                sim.before_sync().map_err(at("fsync", &path))?;
            }
            seg.file.sync_all().map_err(at("fsync", &path))?;
            if let Some(sim) = &self.sim {
                sim.reset(keep_loc.segment, end_offset);
            }
            // Everything the cut segment keeps is durable now; reports of appends made before
            // the cut no longer count.
            self.synced_epoch = self.synced.restart(keep_loc.segment, end_offset);
            self.testified = 0;
            self.view.write().segments.insert(
                keep_loc.segment,
                SegmentFile {
                    file: seg.file.clone(),
                    framing,
                },
            );
            // Appends continue in this segment unless it is of the earlier format; then the
            // next append starts a new one.
            self.active = match framing {
                Framing::Salted(salt) => Some(Active {
                    entries: first_removed - keep_loc.segment,
                    seg,
                    salt,
                    write_offset: end_offset,
                    capacity: self.opts.segment_size,
                }),
                Framing::Legacy => None,
            };
        } else {
            // No live entry survives; what else the segments hold is purged.
            let all: Vec<u64> = self.view.read().segments.keys().rev().copied().collect();
            for s in all {
                self.remove_segment(s)?;
            }
            self.active = None;
            self.sync_dir()?;
            self.synced_epoch = self.synced.restart(0, 0);
        }
        // Commit markers written after the cut are gone with it.
        self.committed_written = None;
        Ok(())
    }

    /// Forgets entries up to and including `upto` and deletes the segments that hold nothing
    /// newer. The purge point is made durable first.
    ///
    /// Refused with [`LogError::Failed`] once the log has failed; a failure here fails it.
    pub fn purge(&mut self, upto: LogId) -> Result<(), LogError> {
        self.refuse_if_failed()?;
        let r = self.purge_inner(upto);
        self.record_failure(r)
    }

    fn purge_inner(&mut self, upto: LogId) -> Result<(), LogError> {
        if self
            .view
            .read()
            .purged
            .is_some_and(|p| p.index >= upto.index)
        {
            return Ok(());
        }
        let mut meta = self.meta.clone();
        meta.purged = Some(DiskLogId::from(&upto));
        self.store_meta(meta)?;

        let empty = {
            let mut v = self.view.write();
            v.purge_to(upto);
            v.locs.is_empty()
        };
        let keys: Vec<u64> = self.view.read().segments.keys().copied().collect();
        let mut removed = false;
        for (i, s) in keys.iter().enumerate() {
            let fully_purged = match keys.get(i + 1) {
                Some(next) => next - 1 <= upto.index,
                None => empty,
            };
            if fully_purged {
                self.remove_segment(*s)?;
                removed = true;
            }
        }
        if empty {
            self.active = None;
        }
        if removed {
            self.sync_dir()?;
        }
        Ok(())
    }

    /// Makes the directory entries of the log durable (created, renamed, removed files).
    fn sync_dir(&self) -> Result<(), LogError> {
        if let Some(sim) = &self.sim {
            sim.before_dir_sync()
                .map_err(at("sync directory", &self.dir))?;
        }
        fsutil::sync_dir(&self.dir)?;
        if let Some(sim) = &self.sim {
            sim.dir_synced();
        }
        Ok(())
    }

    /// Replaces the meta file with `meta`, durably (the directory is fsynced after the rename).
    fn store_meta(&mut self, meta: Meta) -> Result<(), LogError> {
        meta.store(&self.dir)?;
        if let Some(sim) = &self.sim {
            sim.dir_synced();
        }
        self.meta = meta;
        Ok(())
    }

    fn remove_segment(&mut self, first_index: u64) -> Result<(), LogError> {
        let path = self.dir.join(segment::file_name(first_index));
        let removed = self.view.write().segments.remove(&first_index);
        if self
            .active
            .as_ref()
            .is_some_and(|a| a.seg.first_index == first_index)
        {
            self.active = None;
        }
        fs::remove_file(&path).map_err(at("remove", &path))?;
        if let (Some(sim), Some(r)) = (&self.sim, removed) {
            sim.removed(first_index, path, r.file);
        }
        Ok(())
    }

    /// Writes the pending commit marker and waits until everything is durable. Once the log
    /// has failed it writes nothing and returns [`LogError::Failed`]: the writer's position may
    /// be past the end of what is on disk, and a record written there would follow a hole.
    pub fn sync(&mut self) -> Result<(), LogError> {
        self.refuse_if_failed()?;
        if self.active.is_some() {
            let mut buf = std::mem::take(&mut self.buf);
            buf.clear();
            let res = self
                .frame_committed(&mut buf)
                .and_then(|_| self.write_active(&buf, &mut Vec::new()));
            self.keep_buf(buf);
            self.record_failure(res)?;
        }
        if let Some(a) = &self.active {
            self.flusher.barrier_blocking(&a.seg)?;
        }
        // Testify to all of it, so that no record of a log closed cleanly is taken for an
        // unfinished tail (recovery.rs): one more small write and fdatasync, on close only.
        if let Some(a) = &self.active
            && a.write_offset > self.testified
        {
            let offset = a.write_offset;
            let mut buf = std::mem::take(&mut self.buf);
            buf.clear();
            let res = frame(a.salt, &WalRecord::Synced(offset), &mut buf)
                .and_then(|_| self.write_active(&buf, &mut Vec::new()));
            self.keep_buf(buf);
            self.record_failure(res)?;
            self.testified = offset;
            if let Some(a) = &self.active {
                self.flusher.barrier_blocking(&a.seg)?;
            }
        }
        Ok(())
    }
}

impl Wal {
    /// Closes the log as a power cut would: nothing queued is synced, and every segment is cut
    /// back to what is known durable.
    fn lose_power(&mut self, sim: &Simulation) {
        self.flusher.abandon();
        let segments: Vec<(u64, Arc<File>)> = self
            .view
            .read()
            .segments
            .iter()
            .map(|(k, s)| (*k, s.file.clone()))
            .collect();
        sim.lose_power(&segments);
        tracing::info!(dir = %self.dir.display(), "write-ahead log closed by a simulated power loss");
    }
}

/// Most capacity the framing buffer keeps between batches: batches of small writes (dozens of KiB)
/// reuse it; a larger batch allocates its own.
const KEEP_BUF_BYTES: usize = 1 << 20;

/// Frames `record` with `salt` at the end of `buf`.
fn frame(salt: Salt, record: &WalRecord, buf: &mut Vec<u8>) -> Result<(), LogError> {
    Framing::Salted(salt)
        .append_framed(buf, |b| codec::encode_into(record, b))
        .map_err(|e| LogError::Encode(e.to_string()))?
        .map_err(|e| LogError::Encode(e.to_string()))?;
    Ok(())
}

impl Drop for Wal {
    fn drop(&mut self) {
        if let Some(sim) = self.sim.clone()
            && sim.power_is_cut()
        {
            self.lose_power(&sim);
            return;
        }
        match self.sync() {
            Ok(()) => {}
            Err(LogError::Failed { earlier }) => {
                tracing::warn!(%earlier, "the write-ahead log failed earlier; nothing is written on close");
            }
            Err(e) => tracing::warn!(error = %e, "could not flush the write-ahead log on close"),
        }
    }
}
