//! Tests of the log: openraft's storage suite, durability across reopen, crash recovery and a
//! model-based property test.

use std::cell::Cell;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::FutureExt;
use openraft::RaftLogReader;
use openraft::storage::RaftLogStorage;
use openraft::testing::log::StoreBuilder;
use openraft::testing::log::Suite;
use proptest::prelude::*;

use super::LogError;
use super::LogStore;
use super::WalOptions;
use super::record;
use super::segment;
use super::wal::SharedView;
use super::wal::WalRecord;
use crate::apply::Applier;
use crate::apply::SmShared;
use crate::disk::DiskEntry;
use crate::disk::DiskLogId;
use crate::snapshot::SnapshotStore;
use crate::testing::Sum;
use crate::types;
use crate::types::Entry;
use crate::types::LogId;
use crate::types::Payload;
use crate::types::Proposal;
use crate::types::TypeConfig;
use crate::types::Vote;

struct DurableBuilder;
struct MemoryBuilder;

fn no_cluster() -> Arc<crate::cluster_id::ClusterIdentity> {
    Arc::new(crate::cluster_id::ClusterIdentity::open(None).expect("in-memory cluster id"))
}

fn applier(store: SnapshotStore) -> Applier<Sum> {
    Applier::new(
        SmShared::new(Sum::default()),
        Arc::new(store),
        Arc::default(),
    )
}

impl StoreBuilder<TypeConfig, LogStore, Applier<Sum>, tempfile::TempDir> for DurableBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, Applier<Sum>), openraft::StorageError<TypeConfig>>
    {
        let dir = tempfile::tempdir().expect("temp dir");
        let opts = WalOptions {
            segment_size: 4096,
            cache_entries: 4,
            ..WalOptions::default()
        };
        let log = LogStore::open(dir.path().join("wal"), 0, opts).expect("open log");
        let snaps = SnapshotStore::open(&dir.path().join("snapshots"), u64::MAX, no_cluster())
            .expect("open snapshots");
        Ok((dir, log, applier(snaps)))
    }
}

impl StoreBuilder<TypeConfig, LogStore, Applier<Sum>> for MemoryBuilder {
    async fn build(
        &self,
    ) -> Result<((), LogStore, Applier<Sum>), openraft::StorageError<TypeConfig>> {
        Ok((
            (),
            LogStore::memory(),
            applier(SnapshotStore::memory(u64::MAX, no_cluster())),
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite_durable() {
    Suite::test_all(DurableBuilder).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite_memory() {
    Suite::test_all(MemoryBuilder).await.unwrap();
}

#[tokio::test]
async fn the_memory_log_names_the_log_id_at_each_index() {
    let mut log = LogStore::memory();
    let entries: Vec<Entry> = (0..8).map(|i| entry(1 + i / 5, i, 8)).collect();
    append(&mut log, entries).await;
    log.purge(types::log_id(1, 1, 2)).await.unwrap();
    log.truncate_after(Some(types::log_id(2, 1, 6)))
        .await
        .unwrap();
    let ids = log.ids();
    let got: Vec<Option<u64>> = (0..9)
        .map(|i| ids.at(i).map(|id| id.leader_id.term))
        .collect();
    // Purged below 2, the purged log id at 2, terms 1 and 2 up to 6, nothing after.
    let want = [
        None,
        None,
        Some(1),
        Some(1),
        Some(1),
        Some(2),
        Some(2),
        None,
        None,
    ];
    assert_eq!(got, want);
}

// ---- helpers ----------------------------------------------------------------------------

fn entry(term: u64, index: u64, size: usize) -> Entry {
    let payload = if size == 0 {
        Payload::Blank
    } else {
        Payload::Normal(Proposal::Write(Bytes::from(vec![
            (index % 251) as u8;
            size
        ])))
    };
    Entry {
        log_id: types::log_id(term, 1, index),
        payload,
    }
}

fn small_segments() -> WalOptions {
    WalOptions {
        segment_size: 4096,
        cache_entries: 3,
        ..WalOptions::default()
    }
}

fn open(dir: &Path) -> Result<LogStore, LogError> {
    LogStore::open(dir, 1, small_segments())
}

/// Appends and waits until the flusher acknowledges durability.
async fn append(log: &mut LogStore, entries: Vec<Entry>) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    log.append_with(entries, move |r| {
        let _ = tx.send(r);
    })
    .unwrap();
    rx.await.unwrap().unwrap();
}

async fn all_entries(log: &mut LogStore) -> Vec<Entry> {
    let mut r = log.get_log_reader().await;
    r.try_get_log_entries(0..u64::MAX).await.unwrap()
}

/// What the log must contain, kept by the tests alongside the real thing.
#[derive(Debug, Default, Clone)]
struct Model {
    entries: BTreeMap<u64, Entry>,
    purged: Option<LogId>,
    vote: Option<Vote>,
}

impl Model {
    fn last(&self) -> Option<LogId> {
        self.entries
            .values()
            .next_back()
            .map(|e| e.log_id)
            .or(self.purged)
    }

    async fn check(&self, log: &mut LogStore) {
        let st = log.get_log_state().await.unwrap();
        assert_eq!(st.last_purged_log_id, self.purged, "purged");
        assert_eq!(st.last_log_id, self.last(), "last log id");
        let got = all_entries(log).await;
        let want: Vec<Entry> = self.entries.values().cloned().collect();
        assert_eq!(got, want, "entries");
        let mut r = log.get_log_reader().await;
        assert_eq!(r.read_vote().await.unwrap(), self.vote, "vote");
        // The log ids a peer's request is checked against, at every index and one past the end.
        let ids = log.ids();
        for index in 0..self.last().map_or(1, |l| l.index + 2) {
            let want = match self.purged {
                Some(p) if p.index == index => Some(p),
                _ => self.entries.get(&index).map(|e| e.log_id),
            };
            assert_eq!(ids.at(index), want, "log id at {index}");
        }
    }
}

// ---- the entry cache ------------------------------------------------------------------------

#[tokio::test]
async fn the_entry_cache_is_bounded_in_bytes_as_well_as_in_entries() {
    let dir = tempfile::tempdir().unwrap();
    let opts = WalOptions {
        cache_entries: 1000,
        cache_bytes: 256 << 10,
        ..WalOptions::default()
    };
    let mut log = LogStore::open(dir.path(), 1, opts).unwrap();
    let cached = |log: &LogStore| match &log.backend {
        super::Backend::Durable(wal) => wal.view().read().cached(),
        super::Backend::Memory(_) => unreachable!("a durable log"),
    };
    // 40 entries of 64 KiB: 2.5 MiB written, at most 256 KiB of it cached.
    let written: Vec<Entry> = (1..=40).map(|i| entry(1, i, 64 << 10)).collect();
    for e in &written {
        append(&mut log, vec![e.clone()]).await;
        let (entries, bytes) = cached(&log);
        assert!(bytes <= 256 << 10, "{bytes} bytes cached");
        assert!(entries >= 1 || bytes == 0);
    }
    let (entries, _) = cached(&log);
    assert!(
        (2..=4).contains(&entries),
        "{entries} entries of 64 KiB cached"
    );
    // What fell out of the cache is read back from disk.
    assert_eq!(all_entries(&mut log).await, written);
}

// ---- reading while the log is written ------------------------------------------------------

/// What a test runs before each chunk a reader reads from disk.
type ChunkHook = Box<dyn FnMut(&SharedView)>;

thread_local! {
    /// Runs before each chunk a reader reads from disk (see
    /// `LogReader::limited_get_log_entries`), on the reader's thread.
    static BEFORE_CHUNK: RefCell<Option<ChunkHook>> = const { RefCell::new(None) };
}

pub(super) fn before_chunk(view: &SharedView) {
    BEFORE_CHUNK.with(|hook| {
        if let Some(f) = hook.borrow_mut().as_mut() {
            f(view);
        }
    });
}

/// Readers on other threads, reading entries a truncation removes (from disk: nothing is
/// cached), get those entries or fewer, never an error: the entries leave the readers' view
/// before their segments are deleted or cut.
#[test]
fn readers_never_see_a_truncation_half_made() {
    use std::sync::atomic::AtomicBool;
    use std::sync::atomic::Ordering;

    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let opts = WalOptions {
        cache_entries: 0,
        ..small_segments()
    };
    let mut log = LogStore::open(dir.path(), 1, opts).unwrap();
    let tail = |term: u64| {
        (101..=300)
            .map(move |i| entry(term, i, 100))
            .collect::<Vec<_>>()
    };
    rt.block_on(append(
        &mut log,
        (1..=100).map(|i| entry(1, i, 100)).collect(),
    ));
    rt.block_on(append(&mut log, tail(1)));
    let stop = Arc::new(AtomicBool::new(false));
    // The readers and the truncations start together.
    let start = Arc::new(std::sync::Barrier::new(3));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let mut reader = rt.block_on(log.get_log_reader());
            let (stop, start) = (stop.clone(), start.clone());
            std::thread::spawn(move || -> Result<(), String> {
                start.wait();
                let mut reads = 0;
                while reads == 0 || !stop.load(Ordering::Relaxed) {
                    let got = reader
                        .try_get_log_entries(95..301)
                        .now_or_never()
                        .expect("a read does not wait");
                    let got = got.map_err(|e| format!("read {reads}: {e}"))?;
                    if got.len() < 6 || got[0].log_id.index != 95 {
                        return Err(format!("read {reads}: lost kept entries"));
                    }
                    reads += 1;
                }
                Ok(())
            })
        })
        .collect();
    start.wait();
    for term in 2..40 {
        rt.block_on(log.truncate_after(Some(types::log_id(1, 1, 100))))
            .unwrap();
        rt.block_on(append(&mut log, tail(term)));
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().unwrap().unwrap();
    }
}

#[tokio::test]
async fn a_long_read_lets_writes_in_between_its_chunks_and_returns_one_run_of_one_log() {
    let dir = tempfile::tempdir().unwrap();
    // Three cached entries: the read goes to disk.
    let mut log = open(dir.path()).unwrap();
    let old: Vec<Entry> = (1..=200).map(|i| entry(1, i, 100)).collect();
    append(&mut log, old.clone()).await;
    let mut reader = log.get_log_reader().await;
    let log = Rc::new(RefCell::new(log));
    let chunks = Rc::new(Cell::new(0));
    let hook = {
        let (log, chunks) = (log.clone(), chunks.clone());
        move |view: &SharedView| {
            assert!(
                view.is_free(),
                "a reader holds the log's lock between its chunks"
            );
            chunks.set(chunks.get() + 1);
            if chunks.get() == 3 {
                // Between two chunks, a new leader's entries replace the tail from entry 30.
                let mut log = log.borrow_mut();
                log.truncate_after(Some(types::log_id(1, 1, 29)))
                    .now_or_never()
                    .expect("a truncation does not wait")
                    .unwrap();
                log.append_with((30..=200).map(|i| entry(2, i, 100)), |_| {})
                    .unwrap();
            }
        }
    };
    BEFORE_CHUNK.with(|h| *h.borrow_mut() = Some(Box::new(hook)));
    let got = reader.limited_get_log_entries(1, 201).await;
    BEFORE_CHUNK.with(|h| *h.borrow_mut() = None);
    let got = got.unwrap();
    assert!(chunks.get() >= 3, "read in {} chunks", chunks.get());
    // What was read before the tail changed, and nothing of the new tail after it.
    assert!(
        !got.is_empty() && old.starts_with(&got),
        "read {} entries, not a prefix of the log they started from",
        got.len()
    );
    // The log now holds the new tail.
    drop(reader);
    let mut log = Rc::try_unwrap(log)
        .ok()
        .expect("the hook is gone")
        .into_inner();
    let now = all_entries(&mut log).await;
    assert_eq!(now[..29], old[..29]);
    assert!(now[29..].iter().all(|e| e.log_id.leader_id.term == 2));
    assert_eq!(now.len(), 200);
}

// ---- durability across reopen ---------------------------------------------------------------

#[tokio::test]
async fn every_operation_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = Model::default();
    let mut log = open(dir.path()).unwrap();
    let mut most_segments = 0;

    // Each step mutates log and model alike, then the log is closed and reopened and compared.
    let steps: Vec<&str> = vec![
        "append 0..5",
        "vote 1",
        "append 5..40",
        "truncate 30",
        "append 31..45 term 2",
        "committed 20",
        "purge 10",
        "vote 2",
        "purge 33",
        "append 45..60 term 3",
        "truncate 40",
        "purge 40",
        "append 41..44 term 4",
    ];
    for step in steps {
        let words: Vec<&str> = step.split_whitespace().collect();
        match words[0] {
            "append" => {
                let (a, b) = words[1].split_once("..").unwrap();
                let term = if words.len() > 3 {
                    words[3].parse().unwrap()
                } else {
                    1
                };
                let entries: Vec<Entry> = (a.parse().unwrap()..b.parse().unwrap())
                    .map(|i: u64| entry(term, i, (i as usize * 37) % 700))
                    .collect();
                for e in &entries {
                    model.entries.insert(e.log_id.index, e.clone());
                }
                append(&mut log, entries).await;
            }
            "truncate" => {
                let k: u64 = words[1].parse().unwrap();
                let keep = model.entries[&k].log_id;
                model.entries.split_off(&(k + 1));
                log.truncate_after(Some(keep)).await.unwrap();
            }
            "purge" => {
                let k: u64 = words[1].parse().unwrap();
                let upto = model.entries[&k].log_id;
                model.entries = model.entries.split_off(&(k + 1));
                model.purged = Some(upto);
                log.purge(upto).await.unwrap();
            }
            "vote" => {
                let v = Vote::new_committed(words[1].parse().unwrap(), 1);
                model.vote = Some(v);
                log.save_vote(&v).await.unwrap();
            }
            "committed" => {
                let k: u64 = words[1].parse().unwrap();
                log.save_committed(Some(model.entries[&k].log_id))
                    .await
                    .unwrap();
            }
            other => unreachable!("{other}"),
        }
        model.check(&mut log).await;
        drop(log);
        log = open(dir.path()).unwrap();
        model.check(&mut log).await;
        most_segments = most_segments.max(segment::list(dir.path()).unwrap().len());
        if words[0] == "committed" {
            let c = log.read_committed().await.unwrap();
            assert_eq!(
                c.map(|c| c.index),
                Some(20),
                "the commit marker survives a reopen"
            );
        }
    }
    assert!(most_segments > 1, "small segments rolled over");
}

#[tokio::test]
async fn a_directory_is_one_node_and_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path()).unwrap();
    assert!(matches!(open(dir.path()), Err(LogError::Locked { .. })));
    drop(log);
    let err = LogStore::open(dir.path(), 2, small_segments())
        .err()
        .unwrap();
    assert!(
        matches!(
            err,
            LogError::WrongNode {
                expected: 2,
                found: 1,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn appends_out_of_order_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path()).unwrap();
    append(&mut log, vec![entry(1, 0, 10), entry(1, 1, 10)]).await;
    let err = log.append_with(vec![entry(1, 3, 10)], |_| {}).unwrap_err();
    assert!(matches!(
        err,
        LogError::OutOfOrder {
            expected: 2,
            got: 3
        }
    ));
    let err = log.append_with(vec![entry(1, 1, 10)], |_| {}).unwrap_err();
    assert!(matches!(
        err,
        LogError::OutOfOrder {
            expected: 2,
            got: 1
        }
    ));
}

#[tokio::test]
async fn one_fdatasync_acknowledges_many_appends() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = LogStore::open(dir.path(), 1, WalOptions::default()).unwrap();
    let mut waits = Vec::new();
    for i in 0..200 {
        let (tx, rx) = tokio::sync::oneshot::channel();
        log.append_with(vec![entry(1, i, 256)], move |r| {
            let _ = tx.send(r);
        })
        .unwrap();
        waits.push(rx);
    }
    for w in waits {
        w.await.unwrap().unwrap();
    }
    let stats = log.stats();
    assert_eq!(stats.entries, 200);
    assert!(
        stats.fsyncs < 200,
        "200 appends queued back to back must share fdatasyncs: {stats:?}"
    );
}

// ---- crash recovery -------------------------------------------------------------------------

/// Writes `n` entries (the last one large) and closes the log. Returns the last segment's path.
async fn write_log(dir: &Path, n: u64) -> std::path::PathBuf {
    let mut log = open(dir).unwrap();
    let entries: Vec<Entry> = (0..n)
        .map(|i| entry(1, i, if i + 1 == n { 300 } else { 200 }))
        .collect();
    append(&mut log, entries).await;
    drop(log);
    segment::list(dir).unwrap().last().unwrap().1.clone()
}

/// How the records of a segment file are framed, from its header.
fn framing_of(path: &Path) -> record::Framing {
    let bytes = fs::read(path).unwrap();
    let name = path.file_name().unwrap().to_str().unwrap();
    let first = segment::parse_name(name).unwrap();
    let header: [u8; segment::HEADER_LEN as usize] =
        bytes[..segment::HEADER_LEN as usize].try_into().unwrap();
    segment::parse_header(&header, first).unwrap()
}

/// Offsets and payload lengths of the records in a segment file.
fn records(path: &Path) -> Vec<segment::Found> {
    segment::scan(&fs::read(path).unwrap(), framing_of(path)).0
}

/// Zeroes the `Synced` record that closing the log wrote at the end of segment `seg`, if there is
/// one: the segment as a crash right after its last append leaves it, whose last record can still
/// be torn (after a clean close every record is testified durable, and damage is corruption).
fn as_if_crashed(seg: &Path) {
    use std::os::unix::fs::FileExt;
    let framing = framing_of(seg);
    let Some(last) = records(seg).last().copied() else {
        return;
    };
    let bytes = fs::read(seg).unwrap();
    let start = last.offset as usize + framing.header_len();
    if let Ok(WalRecord::Synced(_)) = crate::codec::decode(&bytes[start..start + last.len]) {
        let f = fs::OpenOptions::new().write(true).open(seg).unwrap();
        f.write_all_at(&vec![0u8; framing.header_len() + last.len], last.offset)
            .unwrap();
    }
}

fn copy_dir(from: &Path, to: &Path) {
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_name() != "LOCK" {
            fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[tokio::test]
async fn a_torn_final_record_is_cut_at_every_byte() {
    let original = tempfile::tempdir().unwrap();
    let n = 12;
    let last_seg = write_log(original.path(), n).await;
    let mut reference = open(original.path()).unwrap();
    let full = all_entries(&mut reference).await;
    drop(reference);
    as_if_crashed(&last_seg);
    let recs = records(&last_seg);
    let last = *recs.last().unwrap();
    let start = last.offset;
    let end = last.offset + (framing_of(&last_seg).header_len() + last.len) as u64;
    let seg_name = last_seg.file_name().unwrap().to_owned();
    assert_eq!(full.len() as u64, n);
    let prefix = &full[..full.len() - 1];

    for cut in start..end {
        for zero_fill in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            copy_dir(original.path(), dir.path());
            let path = dir.path().join(&seg_name);
            if zero_fill {
                // Preallocated space stays: the torn bytes are zeros up to the record's end.
                let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
                use std::os::unix::fs::FileExt;
                f.write_all_at(&vec![0u8; (end - cut) as usize], cut)
                    .unwrap();
            } else {
                fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .unwrap()
                    .set_len(cut)
                    .unwrap();
            }
            let mut log = open(dir.path())
                .unwrap_or_else(|e| panic!("cut at {cut} (zero fill {zero_fill}): {e}"));
            assert_eq!(
                all_entries(&mut log).await,
                prefix,
                "cut at {cut} (zero fill {zero_fill})"
            );
            // The log carries on from the valid prefix, and that survives another restart.
            let again = entry(2, n - 1, 50);
            append(&mut log, vec![again.clone()]).await;
            drop(log);
            let mut log = open(dir.path()).unwrap();
            let mut want = prefix.to_vec();
            want.push(again);
            assert_eq!(
                all_entries(&mut log).await,
                want,
                "after re-append, cut at {cut}"
            );
        }
    }
}

#[tokio::test]
async fn damage_before_the_tail_is_refused_with_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 40).await;
    assert_damage_before_the_tail_is_refused(dir.path());
}

#[tokio::test]
async fn damage_before_the_tail_of_a_legacy_log_is_refused_with_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let segments: Vec<(Option<LogId>, Vec<Entry>)> = (0..3)
        .map(|s| {
            (
                None,
                (s * 10..s * 10 + 10).map(|i| entry(1, i, 200)).collect(),
            )
        })
        .collect();
    write_legacy_log(dir.path(), &segments, 4096);
    assert_damage_before_the_tail_is_refused(dir.path());
}

/// Damage in the middle of the last segment of the log in `dir`, and at the end of a sealed one,
/// is refused with the file and offset; the log opens again once the damage is undone.
fn assert_damage_before_the_tail_is_refused(dir: &Path) {
    let segs = segment::list(dir).unwrap();
    assert!(segs.len() >= 2, "need a sealed segment: {segs:?}");
    let last_seg = segs.last().unwrap().1.clone();

    // 1. A flipped bit in a middle record of the last segment.
    let recs = records(&last_seg);
    let victim = recs[recs.len() / 2];
    let mut bytes = fs::read(&last_seg).unwrap();
    let original = bytes.clone();
    bytes[victim.offset as usize + framing_of(&last_seg).header_len() + 1] ^= 0x10;
    fs::write(&last_seg, &bytes).unwrap();
    match open(dir) {
        Err(LogError::Corrupt {
            file,
            offset,
            reason,
        }) => {
            assert_eq!(file, last_seg);
            assert_eq!(offset, victim.offset);
            assert!(reason.contains("valid record follows"), "{reason}");
        }
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("a damaged log was opened"),
    }
    let msg = open(dir).err().unwrap().to_string();
    assert!(
        msg.contains(last_seg.to_str().unwrap()) && msg.contains("offset"),
        "{msg}"
    );
    fs::write(&last_seg, &original).unwrap();
    drop(open(dir).unwrap());

    // 2. Damage at the very end of a sealed segment is not a torn tail.
    let sealed = &segs[0].1;
    let recs = records(sealed);
    let tail = *recs.last().unwrap();
    let mut bytes = fs::read(sealed).unwrap();
    bytes[tail.offset as usize + framing_of(sealed).header_len()] ^= 0x01;
    fs::write(sealed, &bytes).unwrap();
    match open(dir) {
        Err(LogError::Corrupt { file, offset, .. }) => {
            assert_eq!(&file, sealed);
            assert_eq!(offset, tail.offset);
        }
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("a damaged sealed segment was opened"),
    }
}

/// A log whose last segment holds a synced batch of five entries, then a batch of sixteen
/// 600-byte entries (over two pages) and, if `third`, one more batch, each appended once the one
/// before was durable; closed as a crash would leave it (no record written on close). Returns the
/// segment, the offsets the second batch spans, and the entries.
async fn three_batches(
    dir: &Path,
    third: bool,
) -> (std::path::PathBuf, std::ops::Range<u64>, Vec<Entry>) {
    let opts = WalOptions::default().with_segment_size(1 << 20);
    let mut log = LogStore::open(dir, 1, opts).unwrap();
    let first: Vec<Entry> = (0..5).map(|i| entry(1, i, 100)).collect();
    append(&mut log, first.clone()).await;
    let seg = segment::list(dir).unwrap()[0].1.clone();
    let second_at = records(&seg)
        .last()
        .map(|r| r.offset + (framing_of(&seg).header_len() + r.len) as u64)
        .unwrap();
    let second: Vec<Entry> = (5..21).map(|i| entry(1, i, 600)).collect();
    append(&mut log, second.clone()).await;
    let second_end = records(&seg)
        .last()
        .map(|r| r.offset + (framing_of(&seg).header_len() + r.len) as u64)
        .unwrap();
    let mut all = [first, second].concat();
    if third {
        let more = vec![entry(1, 21, 100)];
        append(&mut log, more.clone()).await;
        all.extend(more);
    }
    drop(log);
    as_if_crashed(&seg);
    (seg, second_at..second_end, all)
}

/// Zeroes the whole page after the first page boundary in `span` of the file at `path`, as a
/// disk that lost power can leave a write whose later page it saved. Returns the page's offset.
fn lose_a_page(path: &Path, span: &std::ops::Range<u64>) -> u64 {
    use std::os::unix::fs::FileExt;
    let page = span.start.div_ceil(4096) * 4096;
    assert!(
        page + 4096 < span.end,
        "the batch spans a whole page and more: {span:?}"
    );
    let f = fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&[0u8; 4096], page).unwrap();
    page
}

#[tokio::test]
async fn a_power_cut_that_saved_a_later_page_of_an_unsynced_batch_but_not_an_earlier_one_cuts_it() {
    // No record vouches for the second batch (synced here only to put its bytes in the file),
    // as after a power cut during its fdatasync: its records from the lost page on go.
    let dir = tempfile::tempdir().unwrap();
    let (seg, second, entries) = three_batches(dir.path(), false).await;
    let framing = framing_of(&seg);
    let bytes = fs::read(&seg).unwrap();
    let entry_ends: Vec<u64> = records(&seg)
        .iter()
        .filter(|r| {
            let at = r.offset as usize + framing.header_len();
            matches!(
                crate::codec::decode(&bytes[at..at + r.len]),
                Ok(WalRecord::Entry(_))
            )
        })
        .map(|r| r.offset + (framing.header_len() + r.len) as u64)
        .collect();
    assert_eq!(entry_ends.len(), entries.len());
    let page = lose_a_page(&seg, &second);
    // The first batch, and the second's entries whose records end before the lost page.
    let prefix = &entries[..entry_ends.iter().filter(|&&e| e <= page).count()];
    assert!(
        prefix.len() > 5 && prefix.len() < entries.len(),
        "{} entries kept",
        prefix.len()
    );
    let mut log = open(dir.path()).unwrap_or_else(|e| panic!("refused: {e}"));
    assert_eq!(all_entries(&mut log).await, prefix);
    drop(log);
    assert!(
        fs::read(&seg).unwrap()[page as usize..]
            .iter()
            .all(|&b| b == 0),
        "what followed the hole was cut"
    );
    assert_opens_with_the_prefix(dir.path(), prefix, "after the cut").await;
}

#[tokio::test]
async fn a_lost_page_of_a_batch_a_later_record_says_was_synced_is_refused() {
    // The third batch started after the second was durable and says so: damage in the second is
    // corruption of acknowledged records, however it looks.
    let dir = tempfile::tempdir().unwrap();
    let (seg, second, _) = three_batches(dir.path(), true).await;
    let page = lose_a_page(&seg, &second);
    let (file, offset) =
        refused_as_corrupt(dir.path(), "damage to records vouched durable was cut off");
    assert_eq!(file, seg);
    assert!(
        second.contains(&offset) && offset <= page,
        "offset {offset}, page at {page}"
    );
}

/// Opens the log in `dir`, which must be refused as corrupt (`what` says why otherwise);
/// returns the file and offset the refusal names.
fn refused_as_corrupt(dir: &Path, what: &str) -> (std::path::PathBuf, u64) {
    match open(dir) {
        Err(LogError::Corrupt { file, offset, .. }) => (file, offset),
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("{what}"),
    }
}

#[tokio::test]
async fn a_new_segments_first_batch_whose_first_page_was_lost_is_cut() {
    // A segment's header and first record are durable from its creation: a power cut during its
    // first batch's fdatasync can leave the first page as it was then and a later one saved.
    let dir = tempfile::tempdir().unwrap();
    let opts = WalOptions::default().with_segment_size(1 << 20);
    let mut log = LogStore::open(dir.path(), 1, opts).unwrap();
    append(&mut log, (0..16).map(|i| entry(1, i, 600)).collect()).await;
    drop(log);
    let seg = segment::list(dir.path()).unwrap()[0].1.clone();
    as_if_crashed(&seg);
    let framing = framing_of(&seg);
    let first = records(&seg)[0];
    let at = first.offset as usize + framing.header_len();
    let bytes = fs::read(&seg).unwrap();
    assert!(
        matches!(
            crate::codec::decode(&bytes[at..at + first.len]),
            Ok(WalRecord::Synced(segment::HEADER_LEN))
        ),
        "a segment starts by vouching for its header"
    );
    let vouched = at + first.len;
    assert!(
        bytes[4096..].iter().any(|&b| b != 0),
        "the batch goes past the first page"
    );
    {
        use std::os::unix::fs::FileExt;
        let f = fs::OpenOptions::new().write(true).open(&seg).unwrap();
        f.write_all_at(&vec![0u8; 4096 - vouched], vouched as u64)
            .unwrap();
    }
    assert_opens_with_the_prefix(dir.path(), &[], "first page lost").await;
}

#[tokio::test]
async fn holes_in_a_segment_without_synced_records_are_refused() {
    // A segment an earlier version wrote vouches for nothing: damage followed by valid records
    // there may be damage to synced records, and is refused as it always was.
    let dir = tempfile::tempdir().unwrap();
    super::meta::Meta {
        node_id: 1,
        vote: None,
        purged: None,
    }
    .store(dir.path())
    .unwrap();
    let salt = 0x5eed_1234;
    let framing = record::Framing::Salted(record::Salt::new(salt));
    let mut bytes = segment::header(0, salt).to_vec();
    for i in 0..16 {
        let framed: Result<_, crate::codec::CodecError> = framing.append_framed(&mut bytes, |b| {
            crate::codec::encode_into(&WalRecord::Entry(DiskEntry::from(&entry(1, i, 600))), b)
        });
        framed.unwrap().unwrap();
    }
    let span = segment::HEADER_LEN..bytes.len() as u64;
    bytes.resize(1 << 20, 0);
    let path = dir.path().join(segment::file_name(0));
    fs::write(&path, &bytes).unwrap();
    let mut log = open(dir.path()).unwrap();
    assert_eq!(
        all_entries(&mut log).await.len(),
        16,
        "the segment as written opens"
    );
    drop(log);
    fs::write(&path, &bytes).unwrap();
    let page = lose_a_page(&path, &span);
    let (file, offset) = refused_as_corrupt(
        dir.path(),
        "holes in a segment vouching for nothing were cut",
    );
    assert_eq!(file, path);
    assert!(offset <= page, "offset {offset}, page at {page}");
}

#[tokio::test]
async fn one_large_write_does_not_keep_its_framing_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let opts = WalOptions::default().with_segment_size(16 << 20);
    let mut log = LogStore::open(dir.path(), 1, opts).unwrap();
    let capacity = |log: &LogStore| match &log.backend {
        super::Backend::Durable(wal) => wal.buf_capacity(),
        super::Backend::Memory(_) => unreachable!("a durable log"),
    };
    append(&mut log, vec![entry(1, 0, 100)]).await;
    let small = capacity(&log);
    assert!(small > 0, "a small batch's buffer is kept for the next");
    append(&mut log, vec![entry(1, 1, 8 << 20)]).await;
    assert!(capacity(&log) <= 1 << 20, "{} bytes kept", capacity(&log));
    append(&mut log, vec![entry(1, 2, 100)]).await;
    assert!(capacity(&log) > 0 && capacity(&log) <= 1 << 20);
    assert_eq!(all_entries(&mut log).await.len(), 3);
}

#[tokio::test]
async fn a_missing_segment_is_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 40).await;
    let segs = segment::list(dir.path()).unwrap();
    assert!(segs.len() >= 3, "{segs:?}");
    fs::remove_file(&segs[1].1).unwrap();
    let err = open(dir.path()).err().unwrap();
    assert!(
        matches!(&err, LogError::Corrupt { reason, .. } if reason.contains("gap")),
        "{err}"
    );
}

// ---- records forged by client data, and the cost of telling a torn tail from damage ---------

/// Writes the log of node 1 as earlier versions did: a meta file and one `RKWAL001` segment of
/// `segment_size` bytes per element of `segments`, holding a commit marker (if given) and then
/// the entries, in the legacy framing.
fn write_legacy_log(dir: &Path, segments: &[(Option<LogId>, Vec<Entry>)], segment_size: usize) {
    super::meta::Meta {
        node_id: 1,
        vote: None,
        purged: None,
    }
    .store(dir)
    .unwrap();
    for (marker, entries) in segments {
        let first = entries[0].log_id.index;
        let mut bytes = segment::legacy_header(first).to_vec();
        let mut frame = |rec: &WalRecord| {
            let framed: Result<_, crate::codec::CodecError> = record::Framing::Legacy
                .append_framed(&mut bytes, |b| crate::codec::encode_into(rec, b));
            framed.unwrap().unwrap();
        };
        if let Some(c) = marker {
            frame(&WalRecord::Committed(DiskLogId::from(c)));
        }
        for e in entries {
            frame(&WalRecord::Entry(DiskEntry::from(e)));
        }
        assert!(bytes.len() <= segment_size, "{} bytes", bytes.len());
        bytes.resize(segment_size, 0);
        fs::write(dir.join(segment::file_name(first)), &bytes).unwrap();
    }
}

fn value_entry(term: u64, index: u64, value: Vec<u8>) -> Entry {
    Entry {
        log_id: types::log_id(term, 1, index),
        payload: Payload::Normal(Proposal::Write(Bytes::from(value))),
    }
}

/// The salt in the header of an `RKWAL002` segment.
fn salt_of(path: &Path) -> u32 {
    let bytes = fs::read(path).unwrap();
    assert_eq!(&bytes[..8], b"RKWAL002");
    u32::from_le_bytes(bytes[16..20].try_into().unwrap())
}

/// A commit marker framed as a record: in the legacy framing, or salted with `salt`.
fn marker_frame(salt: Option<u32>) -> Vec<u8> {
    let rec = WalRecord::Committed(DiskLogId {
        term: 1,
        node: 1,
        index: 1,
    });
    let mut out = Vec::new();
    let framing = match salt {
        None => record::Framing::Legacy,
        Some(s) => record::Framing::Salted(record::Salt::new(s)),
    };
    let framed: Result<_, crate::codec::CodecError> =
        framing.append_framed(&mut out, |b| crate::codec::encode_into(&rec, b));
    framed.unwrap().unwrap();
    out
}

/// Where `needle` first occurs in `hay` at or after `from`.
fn find(hay: &[u8], needle: &[u8], from: usize) -> usize {
    from + hay[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap()
}

#[tokio::test]
async fn the_remains_of_a_write_whose_start_was_lost_are_zeroed() {
    // The last record's header never reached the disk (still zero) but the rest of it did.
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path()).unwrap();
    let entries: Vec<Entry> = (0..5).map(|i| entry(1, i, 200)).collect();
    append(&mut log, entries.clone()).await;
    drop(log);
    let seg = segment::list(dir.path()).unwrap().last().unwrap().1.clone();
    as_if_crashed(&seg);
    let last = *records(&seg).last().unwrap();
    let header = framing_of(&seg).header_len() as u64;
    let end = last.offset + header + last.len as u64;
    tear(&seg, last.offset, last.offset + header, true);
    let remains =
        |path: &Path| fs::read(path).unwrap()[last.offset as usize..end as usize].to_vec();
    assert!(
        remains(&seg).iter().any(|&b| b != 0),
        "the torn record's body is on disk"
    );

    // Opening zeroes what follows the end, before any append could end inside it.
    let log = open(dir.path()).unwrap();
    assert!(
        remains(&seg).iter().all(|&b| b == 0),
        "the torn record's remains were zeroed"
    );
    drop(log);
    assert_opens_with_the_prefix(dir.path(), &entries[..4], "header lost").await;
}

/// Tears the record ending at `end` in the segment at `path` at byte `at`: the file is cut
/// there, or (the other way a torn write looks in a preallocated file) zeroed up to `end`.
fn tear(path: &Path, at: u64, end: u64, zero_fill: bool) {
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new().write(true).open(path).unwrap();
    if zero_fill {
        f.write_all_at(&vec![0u8; (end - at) as usize], at).unwrap();
    } else {
        f.set_len(at).unwrap();
    }
}

/// Opens the log in `dir`, whose last record was torn: it must hold exactly `prefix`, take an
/// append and keep both across a restart.
async fn assert_opens_with_the_prefix(dir: &Path, prefix: &[Entry], what: &str) {
    let mut log = open(dir).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(all_entries(&mut log).await, prefix, "{what}");
    let again = entry(2, prefix.len() as u64, 50);
    append(&mut log, vec![again.clone()]).await;
    drop(log);
    let mut log = open(dir).unwrap();
    let mut want = prefix.to_vec();
    want.push(again);
    assert_eq!(all_entries(&mut log).await, want, "after re-append, {what}");
}

/// Tears the last record of segment `seg` of the log in `original` at every byte of `cuts`
/// (`end` is where that record ends), both ways a torn write looks, each in a copy of the log:
/// every copy must open holding exactly `prefix`, take an append and survive a restart.
async fn assert_every_tear_opens(
    original: &Path,
    seg: &Path,
    cuts: std::ops::Range<u64>,
    end: u64,
    prefix: &[Entry],
    what: &str,
) {
    for cut in cuts {
        for zero_fill in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            copy_dir(original, dir.path());
            tear(
                &dir.path().join(seg.file_name().unwrap()),
                cut,
                end,
                zero_fill,
            );
            let what = format!("{what}, cut at {cut}, zero fill {zero_fill}");
            assert_opens_with_the_prefix(dir.path(), prefix, &what).await;
        }
    }
}

#[tokio::test]
async fn a_value_embedding_a_record_frame_is_cut_at_every_byte_past_the_frame() {
    // The value of the last entry carries a frame of a commit marker: in the legacy framing (the
    // 12 bytes `04000000 5513f834 01010101`), or salted with a salt other than its segment's, the
    // best a client who cannot read the disk can do.
    for legacy in [true, false] {
        let original = tempfile::tempdir().unwrap();
        let mut log = open(original.path()).unwrap();
        let prefix: Vec<Entry> = (0..5).map(|i| entry(1, i, 40)).collect();
        append(&mut log, prefix.clone()).await;
        let seg = segment::list(original.path())
            .unwrap()
            .last()
            .unwrap()
            .1
            .clone();
        let forged = match legacy {
            true => marker_frame(None),
            false => marker_frame(Some(salt_of(&seg) ^ 0x8000_0001)),
        };
        let mut value = vec![0xab; 20];
        value.extend_from_slice(&forged);
        value.extend_from_slice(&[0xcd; 16]);
        append(&mut log, vec![value_entry(1, 5, value)]).await;
        drop(log);
        as_if_crashed(&seg);

        let last = *records(&seg).last().unwrap();
        let end = last.offset + (framing_of(&seg).header_len() + last.len) as u64;
        let frame_end =
            (find(&fs::read(&seg).unwrap(), &forged, last.offset as usize) + forged.len()) as u64;
        let what = format!("legacy frame {legacy}");
        assert_every_tear_opens(original.path(), &seg, frame_end..end, end, &prefix, &what).await;
    }
}

#[tokio::test]
async fn only_a_frame_with_the_segments_own_salt_passes_for_a_record() {
    // What keeps client data from passing for a record is the salt's secrecy: a frame made with
    // it (which no client can make) is found after a torn record, and the log is refused.
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path()).unwrap();
    append(&mut log, (0..5).map(|i| entry(1, i, 40)).collect()).await;
    let seg = segment::list(dir.path()).unwrap().last().unwrap().1.clone();
    let forged = marker_frame(Some(salt_of(&seg)));
    let mut value = vec![0xab; 20];
    value.extend_from_slice(&forged);
    value.extend_from_slice(&[0xcd; 16]);
    append(&mut log, vec![value_entry(1, 5, value)]).await;
    drop(log);
    // The value's record, testified durable by the record the clean close wrote after it: a
    // record found after damage there means corruption, and only a frame with the segment's
    // salt is found.
    let recs = records(&seg);
    let last = recs[recs.len() - 2];
    let end = last.offset + (framing_of(&seg).header_len() + last.len) as u64;
    let frame_at = find(&fs::read(&seg).unwrap(), &forged, last.offset as usize) as u64;
    tear(&seg, frame_at + forged.len() as u64, end, true);
    match open(dir.path()) {
        Err(LogError::Corrupt { offset, reason, .. }) => {
            assert_eq!(offset, last.offset);
            assert!(
                reason.contains(&format!("valid record follows at offset {frame_at}")),
                "{reason}"
            );
        }
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("a frame with the segment's salt was not found"),
    }
}

#[tokio::test]
async fn a_legacy_log_opens_reads_takes_appends_in_a_new_segment_and_survives_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let segments: Vec<(Option<LogId>, Vec<Entry>)> = vec![
        (
            None,
            (0..10).map(|i| entry(1, i, i as usize * 30)).collect(),
        ),
        (None, (10..20).map(|i| entry(1, i, 100)).collect()),
        (
            Some(types::log_id(1, 1, 22)),
            (20..25).map(|i| entry(2, i, 0)).collect(),
        ),
    ];
    write_legacy_log(dir.path(), &segments, 8192);
    let legacy_files: Vec<(std::path::PathBuf, Vec<u8>)> = segment::list(dir.path())
        .unwrap()
        .into_iter()
        .map(|(_, p)| {
            let bytes = fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    let mut model = Model::default();
    for (_, entries) in &segments {
        for e in entries {
            model.entries.insert(e.log_id.index, e.clone());
        }
    }

    // Every entry and the commit marker read back.
    let mut log = open(dir.path()).unwrap();
    model.check(&mut log).await;
    assert_eq!(
        log.read_committed().await.unwrap(),
        Some(types::log_id(1, 1, 22))
    );

    // New entries go to a new segment of the new format; the old ones are left as they were.
    let more: Vec<Entry> = (25..30).map(|i| entry(3, i, 70)).collect();
    for e in &more {
        model.entries.insert(e.log_id.index, e.clone());
    }
    append(&mut log, more).await;
    model.check(&mut log).await;
    drop(log);
    for (p, bytes) in &legacy_files {
        assert_eq!(&fs::read(p).unwrap(), bytes, "{} changed", p.display());
    }
    let newest = segment::list(dir.path()).unwrap().last().unwrap().clone();
    assert_eq!(newest.0, 25);
    assert!(matches!(framing_of(&newest.1), record::Framing::Salted(_)));
    let mut log = open(dir.path()).unwrap();
    model.check(&mut log).await;

    // Truncating back into a legacy segment cuts it; the next append starts a new segment.
    let keep = model.entries[&17].log_id;
    model.entries.split_off(&18);
    log.truncate_after(Some(keep)).await.unwrap();
    let more: Vec<Entry> = (18..23).map(|i| entry(4, i, 10)).collect();
    for e in &more {
        model.entries.insert(e.log_id.index, e.clone());
    }
    append(&mut log, more).await;
    model.check(&mut log).await;
    let names: Vec<u64> = segment::list(dir.path())
        .unwrap()
        .into_iter()
        .map(|(first, _)| first)
        .collect();
    assert_eq!(names, vec![0, 10, 18]);
    assert_eq!(framing_of(&legacy_files[1].0), record::Framing::Legacy);

    // Purging drops the first legacy segment; everything survives a restart.
    let upto = model.entries[&12].log_id;
    model.entries = model.entries.split_off(&13);
    model.purged = Some(upto);
    log.purge(upto).await.unwrap();
    drop(log);
    let mut log = open(dir.path()).unwrap();
    model.check(&mut log).await;
}

/// A log in `dir` with 300 entries of 100 bytes, appended ten at a time over small segments;
/// the entries and the segments.
async fn three_hundred_entries(
    dir: &Path,
) -> (LogStore, Vec<Entry>, Vec<(u64, std::path::PathBuf)>) {
    let mut log = open(dir).unwrap();
    let entries: Vec<Entry> = (1..=300).map(|i| entry(1, i, 100)).collect();
    for batch in entries.chunks(10) {
        append(&mut log, batch.to_vec()).await;
    }
    let segs = segment::list(dir).unwrap();
    (log, entries, segs)
}

/// A crash between a purge's durable purge point and its deletions leaves segments of purged
/// entries only. Damage in one of them (data the log no longer needs) does not stop the start:
/// the purge is finished without reading it.
#[tokio::test]
async fn damage_in_a_segment_a_purge_left_behind_does_not_stop_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, entries, segs) = three_hundred_entries(dir.path()).await;
    assert!(segs.len() >= 4, "{} segments", segs.len());
    let (first_seg, first_path) = segs[0].clone();
    let left_behind = fs::read(&first_path).unwrap();
    // Purged up to the first entry of the third segment: the first two are deleted.
    let upto = entries[(segs[2].0 - 1) as usize].log_id;
    log.purge(upto).await.unwrap();
    drop(log);
    assert!(!first_path.exists());
    // As a crash before the deletion would leave it, and damaged inside a record.
    let mut damaged = left_behind;
    let at = segment::HEADER_LEN as usize + 40;
    damaged[at] ^= 0xff;
    fs::write(&first_path, &damaged).unwrap();

    let mut log = open(dir.path()).unwrap();
    assert!(!first_path.exists(), "segment {first_seg} is removed");
    let kept = all_entries(&mut log).await;
    assert_eq!(kept, entries[upto.index as usize..]);
}

#[tokio::test]
async fn a_torn_final_record_of_a_legacy_log_is_cut_at_every_byte() {
    let original = tempfile::tempdir().unwrap();
    let entries: Vec<Entry> = (0..6)
        .map(|i| entry(1, i, if i == 5 { 120 } else { 40 }))
        .collect();
    write_legacy_log(original.path(), &[(None, entries.clone())], 4096);
    let seg = segment::list(original.path()).unwrap()[0].1.clone();
    let last = *records(&seg).last().unwrap();
    let end = last.offset + (record::LEGACY_HEADER_LEN + last.len) as u64;
    let prefix = &entries[..5];
    assert_every_tear_opens(
        original.path(),
        &seg,
        last.offset..end,
        end,
        prefix,
        "legacy",
    )
    .await;
}

/// Bytes of random data, reproducibly.
fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    use rand::RngCore;
    use rand::SeedableRng;
    let mut v = vec![0u8; n];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// `n` bytes of frames that pass every check of the legacy format but the checksum, each
/// claiming a payload of `len` bytes: the first four bytes of the payload decode as a commit
/// marker, with the rest of it as trailing bytes.
fn cheap_legacy_frames(n: usize, len: u32) -> Vec<u8> {
    let mut unit = len.to_le_bytes().to_vec();
    unit.extend_from_slice(&[0x55, 0x13, 0xf8, 0x34, 1, 1, 1, 1]);
    unit.iter().copied().cycle().take(n).collect()
}

/// `n` bytes of legacy frames whose payloads *decode*: each is an entry whose value spans the
/// rest of its `len` bytes, so checking one costs a decode and a checksum of `len` bytes.
fn decodable_legacy_frames(n: usize, len: usize) -> Vec<u8> {
    let probe = value_entry(1, 1, vec![0; len]);
    let encoded = crate::codec::encode(&WalRecord::Entry(DiskEntry::from(&probe))).unwrap();
    // The encoding is a short prefix (tags, log id, value length) followed by the value.
    let prefix_len = encoded.len() - len;
    let payload_len = encoded.len() as u32;
    let mut unit = payload_len.to_le_bytes().to_vec();
    unit.extend_from_slice(&[0x11; 4]);
    unit.extend_from_slice(&encoded[..prefix_len]);
    unit.iter().copied().cycle().take(n).collect()
}

/// A value of 6 to 7 MiB mixing random bytes with frames crafted to pass as many of recovery's
/// cheap checks as possible: legacy frames (whose payloads decode, if `decodable`) and, given a
/// segment's salt, frames salted with another one.
fn adversarial_value(salt: Option<u32>, decodable: bool) -> Vec<u8> {
    const MIB: usize = 1 << 20;
    let mut value = random_bytes(2 * MIB, 1);
    value.extend(cheap_legacy_frames(MIB, 4 << 20));
    if decodable {
        value.extend(decodable_legacy_frames(MIB, 2 * MIB));
    }
    if let Some(salt) = salt {
        let other = record::Salt::new(salt ^ 0x0101_0101);
        let mut frames = Vec::new();
        while frames.len() < MIB {
            let at = frames.len();
            let framed: Result<_, ()> =
                record::Framing::Salted(other).append_framed(&mut frames, |b| {
                    b.extend_from_slice(&[1, 1, 1, 1]);
                    Ok(())
                });
            framed.unwrap().unwrap();
            // Claim 4 MiB of payload, as the frame of a long value would.
            frames[at..at + 4].copy_from_slice(&(4u32 << 20).to_le_bytes());
            other.restamp(&mut frames[at..]);
        }
        value.extend(frames);
    }
    value.extend(random_bytes(2 * MIB, 2));
    value
}

/// Tears the last record of the log in `dir` (segment `seg`) two thirds into its payload, with
/// zeros after it as in a preallocated file, and opens the log counting the bytes checksummed;
/// fails at once past `limit`. Returns the outcome and the count.
fn open_torn_counting(dir: &Path, seg: &Path, limit: u64) -> (Result<LogStore, LogError>, u64) {
    as_if_crashed(seg);
    let last = *records(seg).last().unwrap();
    let end = last.offset + (framing_of(seg).header_len() + last.len) as u64;
    tear(seg, last.offset + last.len as u64 * 2 / 3, end, true);
    record::work::start(limit);
    let opened = LogStore::open(dir, 1, WalOptions::default().with_segment_size(16 << 20));
    (opened, record::work::stop())
}

#[tokio::test]
async fn telling_a_torn_tail_from_damage_costs_linear_work_whatever_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let opts = WalOptions::default().with_segment_size(16 << 20);
    let mut log = LogStore::open(dir.path(), 1, opts).unwrap();
    let prefix: Vec<Entry> = (0..3).map(|i| entry(1, i, 100)).collect();
    append(&mut log, prefix.clone()).await;
    let seg = segment::list(dir.path()).unwrap()[0].1.clone();
    let value = adversarial_value(Some(salt_of(&seg)), true);
    append(&mut log, vec![value_entry(1, 3, value)]).await;
    drop(log);
    let file_len = fs::metadata(&seg).unwrap().len();

    // One pass over the valid records, the torn record's payload once, and an 8-byte header
    // check per offset after the damage: under ten times the segment's size.
    let (opened, checksummed) = open_torn_counting(dir.path(), &seg, 10 * file_len);
    let mut log = opened.unwrap();
    assert!(
        checksummed <= 10 * file_len,
        "{checksummed} bytes checksummed"
    );
    assert_eq!(all_entries(&mut log).await, prefix);
}

#[tokio::test]
async fn a_legacy_torn_tail_is_cut_at_bounded_cost() {
    // Random data and frames that fail to decode: cheap to rule out, and the tail is cut.
    let dir = tempfile::tempdir().unwrap();
    let file_len = 16usize << 20;
    let mut entries: Vec<Entry> = (0..3).map(|i| entry(1, i, 100)).collect();
    entries.push(value_entry(1, 3, adversarial_value(None, false)));
    write_legacy_log(dir.path(), &[(None, entries.clone())], file_len);
    let seg = segment::list(dir.path()).unwrap()[0].1.clone();
    let (opened, checksummed) = open_torn_counting(dir.path(), &seg, 2 * file_len as u64);
    let mut log = opened.unwrap();
    assert!(
        checksummed <= 2 * file_len as u64,
        "{checksummed} bytes checksummed"
    );
    assert_eq!(all_entries(&mut log).await, entries[..3]);
}

#[tokio::test]
async fn a_legacy_search_that_reaches_its_bound_refuses_the_log() {
    // Frames whose payloads decode cost a decode and a checksum each: the search gives up
    // within its bound and refuses, saying why, rather than cut what it could not rule out.
    let dir = tempfile::tempdir().unwrap();
    let file_len = 16usize << 20;
    let mut entries: Vec<Entry> = (0..3).map(|i| entry(1, i, 100)).collect();
    entries.push(value_entry(1, 3, adversarial_value(None, true)));
    write_legacy_log(dir.path(), &[(None, entries)], file_len);
    let seg = segment::list(dir.path()).unwrap()[0].1.clone();
    let bound = (segment::LEGACY_SEARCH_FACTOR + 2) * file_len as u64;
    let (opened, checksummed) = open_torn_counting(dir.path(), &seg, bound);
    match opened {
        Err(LogError::Corrupt { file, reason, .. }) => {
            assert_eq!(file, seg);
            assert!(reason.contains("gave up after examining"), "{reason}");
            let examined: u64 = reason
                .split("examining ")
                .nth(1)
                .and_then(|r| r.split(' ').next())
                .and_then(|n| n.parse().ok())
                .unwrap();
            assert!(examined <= bound, "{examined} bytes examined");
        }
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("a tail the search could not rule out was cut"),
    }
    assert!(checksummed <= bound, "{checksummed} bytes checksummed");
}

// ---- model-based property test --------------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    /// Append this many entries of these payload sizes, with the term bumped by `term_step`.
    Append {
        sizes: Vec<usize>,
        term_step: u64,
    },
    /// Truncate after the live entry at this fraction of the log (per mille).
    Truncate(u16),
    /// Purge up to the live entry at this fraction of the log (per mille).
    Purge(u16),
    Vote(u64),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (prop::collection::vec(prop_oneof![Just(0usize), 1usize..64, 64usize..2500], 1..12), 0u64..2)
            .prop_map(|(sizes, term_step)| Op::Append { sizes, term_step }),
        1 => (0u16..=1000).prop_map(Op::Truncate),
        1 => (0u16..=1000).prop_map(Op::Purge),
        1 => (1u64..5).prop_map(Op::Vote),
        2 => Just(Op::Reopen),
    ]
}

fn pick(model: &Model, per_mille: u16) -> Option<LogId> {
    let n = model.entries.len();
    if n == 0 {
        return None;
    }
    let i = (n - 1) * per_mille as usize / 1000;
    model.entries.values().nth(i).map(|e| e.log_id)
}

async fn run_ops(ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let mut model = Model::default();
    let mut log = open(dir.path()).unwrap();
    let mut term = 1;
    let mut vote_term = 0;
    for op in ops {
        match op {
            Op::Append { sizes, term_step } => {
                term += term_step;
                let next = model.last().map_or(0, |l| l.index + 1);
                let entries: Vec<Entry> = sizes
                    .iter()
                    .enumerate()
                    .map(|(i, s)| entry(term, next + i as u64, *s))
                    .collect();
                for e in &entries {
                    model.entries.insert(e.log_id.index, e.clone());
                }
                append(&mut log, entries).await;
            }
            Op::Truncate(p) => {
                if let Some(keep) = pick(&model, p) {
                    model.entries.split_off(&(keep.index + 1));
                    log.truncate_after(Some(keep)).await.unwrap();
                }
            }
            Op::Purge(p) => {
                if let Some(upto) = pick(&model, p) {
                    model.entries = model.entries.split_off(&(upto.index + 1));
                    model.purged = Some(upto);
                    log.purge(upto).await.unwrap();
                }
            }
            Op::Vote(step) => {
                vote_term += step;
                let v = Vote::new(vote_term, 1);
                model.vote = Some(v);
                log.save_vote(&v).await.unwrap();
            }
            Op::Reopen => {
                drop(log);
                log = open(dir.path()).unwrap();
            }
        }
        model.check(&mut log).await;
    }
    drop(log);
    let mut log = open(dir.path()).unwrap();
    model.check(&mut log).await;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn log_matches_a_model_through_reopens(ops in prop::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run_ops(ops));
    }
}

// ---- simulated power loss -------------------------------------------------------------------

#[cfg(feature = "testing")]
#[tokio::test]
async fn power_loss_keeps_exactly_what_was_acknowledged() {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    use std::sync::atomic::Ordering;

    for round in 0..40u64 {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path()).unwrap();
        let durable: Vec<Entry> = (0..5).map(|i| entry(1, i, 100)).collect();
        append(&mut log, durable.clone()).await;
        // Append more and cut the power at once: the flusher may or may not get to them.
        let acked = Arc::new(AtomicBool::new(false));
        let a = acked.clone();
        let tail: Vec<Entry> = (5..8).map(|i| entry(1, i, 100 + round as usize)).collect();
        log.append_with(tail.clone(), move |r| a.store(r.is_ok(), Ordering::SeqCst))
            .unwrap();
        log.power_switch().unwrap().cut();
        drop(log);

        let mut log = open(dir.path()).unwrap();
        let got = all_entries(&mut log).await;
        assert_eq!(&got[..5], &durable[..], "acknowledged entries survive");
        if acked.load(Ordering::SeqCst) {
            assert_eq!(&got[5..], &tail[..], "an acknowledged tail survives");
        } else {
            assert!(
                got.len() == 5 || got[5..] == tail[..],
                "a tail is all or nothing here: {}",
                got.len()
            );
        }
        // The log carries on after the loss.
        let next = got.len() as u64;
        append(&mut log, vec![entry(2, next, 10)]).await;
    }
}

/// A log in `dir` holding five synced entries and three more whose fdatasync failed: written
/// (in the page cache), never synced. Returns the log and both runs of entries.
#[cfg(feature = "testing")]
async fn with_an_unsynced_tail(dir: &std::path::Path) -> (LogStore, Vec<Entry>, Vec<Entry>) {
    let mut log = open(dir).unwrap();
    let synced: Vec<Entry> = (0..5).map(|i| entry(1, i, 100)).collect();
    append(&mut log, synced.clone()).await;
    log.fault_switch().unwrap().set_sync_fails(true);
    let unsynced: Vec<Entry> = (5..8).map(|i| entry(1, i, 100)).collect();
    let (tx, rx) = tokio::sync::oneshot::channel();
    log.append_with(unsynced.clone(), move |r| {
        let _ = tx.send(r);
    })
    .unwrap();
    assert!(rx.await.unwrap().is_err(), "the fdatasync failed");
    (log, synced, unsynced)
}

#[cfg(feature = "testing")]
#[tokio::test]
async fn a_new_segments_first_record_is_durable_with_its_header() {
    // Nothing after the segment's creation is ever synced (every fdatasync fails), then the
    // power goes: what the creation made durable is all that is left, and it vouches for the
    // header, so the holes a power cut leaves in the first batch can be told from damage.
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path()).unwrap();
    log.fault_switch().unwrap().set_sync_fails(true);
    let (tx, rx) = tokio::sync::oneshot::channel();
    log.append_with(vec![entry(1, 0, 100)], move |r| {
        let _ = tx.send(r);
    })
    .unwrap();
    assert!(rx.await.unwrap().is_err(), "the batch was never synced");
    log.power_switch().unwrap().cut();
    drop(log);
    let seg = segment::list(dir.path()).unwrap()[0].1.clone();
    let recs = records(&seg);
    assert_eq!(
        recs.len(),
        1,
        "only the segment's first record is left: {recs:?}"
    );
    let bytes = fs::read(&seg).unwrap();
    let at = recs[0].offset as usize + framing_of(&seg).header_len();
    assert!(matches!(
        crate::codec::decode(&bytes[at..at + recs[0].len]),
        Ok(WalRecord::Synced(segment::HEADER_LEN))
    ));
}

#[cfg(feature = "testing")]
#[tokio::test]
async fn a_power_cut_loses_what_was_never_synced() {
    // What makes the test above meaningful: the simulated power loss really drops bytes that
    // were written but never synced.
    let dir = tempfile::tempdir().unwrap();
    let (log, synced, _) = with_an_unsynced_tail(dir.path()).await;
    log.power_switch().unwrap().cut();
    drop(log);
    let mut log = open(dir.path()).unwrap();
    assert_eq!(all_entries(&mut log).await, synced);
}

#[cfg(feature = "testing")]
#[tokio::test]
async fn entries_recovered_after_a_process_crash_are_durable_once_open_returns() {
    // The process dies before the flusher's fdatasync succeeds.
    let dir = tempfile::tempdir().unwrap();
    let (log, synced, unsynced) = with_an_unsynced_tail(dir.path()).await;
    drop(log);

    // The restarted log finds every entry, and they are all durable by the time it is open:
    // a power loss right after keeps them.
    let all: Vec<Entry> = synced.iter().chain(&unsynced).cloned().collect();
    let mut log = open(dir.path()).unwrap();
    assert_eq!(all_entries(&mut log).await, all);
    log.power_switch().unwrap().cut();
    drop(log);
    let mut log = open(dir.path()).unwrap();
    assert_eq!(all_entries(&mut log).await, all);
}

// ---- a failed write fails the log for good -------------------------------------------------

/// The log error inside an error returned through openraft's storage traits.
#[cfg(feature = "testing")]
fn log_error(e: &std::io::Error) -> Option<&LogError> {
    e.get_ref().and_then(|i| i.downcast_ref::<LogError>())
}

/// The earlier failure a refusal names, if `e` is the log refusing because of one.
#[cfg(feature = "testing")]
fn refusal(e: &LogError) -> Option<&LogError> {
    match e {
        LogError::Failed { earlier } => Some(earlier),
        _ => None,
    }
}

/// Whether `e` is the failure of the file operation `op` on `path` with the OS error `errno`.
#[cfg(feature = "testing")]
fn failed_with(e: &LogError, op: &str, path: &Path, errno: rustix::io::Errno) -> bool {
    matches!(e, LogError::Io(p)
        if p.op == op && p.path == path && p.source.raw_os_error() == Some(errno.raw_os_error()))
}

#[cfg(feature = "testing")]
#[tokio::test]
async fn a_truncation_that_fails_half_way_leaves_a_log_that_opens() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path()).unwrap();
    let entries: Vec<Entry> = (0..6).map(|i| entry(1, i, 100)).collect();
    append(&mut log, entries.clone()).await;
    log.save_committed(Some(entries[5].log_id)).await.unwrap();
    // The segment is cut, then its fsync fails.
    let faults = log.fault_switch().unwrap();
    faults.set_sync_fails(true);
    let err = log
        .truncate_after(Some(entries[2].log_id))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("fsync"), "{err}");
    // The disk works again; closing the log must not write after the cut.
    faults.set_sync_fails(false);
    drop(log);

    let mut log = open(dir.path()).expect("the log opens after a failed truncation");
    assert_eq!(all_entries(&mut log).await, entries[..3]);
}

#[cfg(feature = "testing")]
#[tokio::test]
async fn a_failed_fdatasync_when_sealing_a_segment_fails_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path()).unwrap();
    append(&mut log, (0..3).map(|i| entry(1, i, 1000)).collect()).await;
    // The next batch fills the segment: sealing it fails.
    let faults = log.fault_switch().unwrap();
    faults.set_sync_fails(true);
    let err = log
        .append_with((3..6).map(|i| entry(1, i, 1000)), |_| {})
        .unwrap_err();
    assert!(err.to_string().contains("fdatasync"), "{err}");
    // The next fdatasync of the same file succeeds, as Linux reports a writeback error once;
    // the pages it covered may be lost all the same.
    faults.set_sync_fails(false);
    let next = log
        .get_log_state()
        .await
        .unwrap()
        .last_log_id
        .unwrap()
        .index
        + 1;
    let e = log
        .append_with(vec![entry(1, next, 10)], |_| {})
        .expect_err("the log refuses appends after a failed fdatasync");
    // The refusal carries the first failure itself: the sealed segment's fdatasync.
    let sealed = dir.path().join(segment::file_name(0));
    assert!(
        refusal(&e).is_some_and(|x| failed_with(x, "fdatasync", &sealed, rustix::io::Errno::IO)),
        "{e}"
    );
}

#[cfg(feature = "testing")]
#[tokio::test]
async fn after_a_failed_write_the_log_refuses_everything_and_writes_nothing_on_close() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path()).unwrap();
    let entries: Vec<Entry> = (0..4).map(|i| entry(1, i, 100)).collect();
    append(&mut log, entries.clone()).await;
    let faults = log.fault_switch().unwrap();
    faults.set_disk_full(true);
    let err = log.append_with(vec![entry(1, 4, 100)], |_| {}).unwrap_err();
    assert!(err.to_string().contains("No space left"), "{err}");
    // Space is freed: the log still refuses, naming the first failure.
    faults.set_disk_full(false);
    let e = log
        .append_with(vec![entry(1, 4, 100)], |_| {})
        .expect_err("append after a failed write");
    assert!(
        refusal(&e).is_some_and(|x| x.to_string().contains("No space left")),
        "{e}"
    );
    for (what, r) in [
        (
            "truncate",
            log.truncate_after(Some(entries[1].log_id)).await,
        ),
        ("purge", log.purge(entries[1].log_id).await),
        ("save_vote", log.save_vote(&Vote::new(2, 1)).await),
    ] {
        let e = r.expect_err(what);
        let earlier = log_error(&e).and_then(refusal);
        assert!(
            earlier.is_some_and(|x| x.to_string().contains("No space left")),
            "{what}: {e}"
        );
    }
    // Closing writes nothing, not even the commit marker it owes.
    log.save_committed(Some(entries[3].log_id)).await.unwrap();
    let segment = dir.path().join(segment::file_name(0));
    let before = fs::read(&segment).unwrap();
    drop(log);
    assert!(
        fs::read(&segment).unwrap() == before,
        "closing wrote to the log"
    );
    let mut log = open(dir.path()).unwrap();
    assert_eq!(all_entries(&mut log).await, entries);
}

#[cfg(feature = "testing")]
#[tokio::test]
async fn a_failed_log_reports_its_first_error_with_its_kind() {
    use rustix::io::Errno;
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path()).unwrap();
    let entries: Vec<Entry> = (0..2).map(|i| entry(1, i, 100)).collect();
    append(&mut log, entries.clone()).await;
    let faults = log.fault_switch().unwrap();
    faults.set_disk_full(true);
    let first = log.append_with(vec![entry(1, 2, 100)], |_| {}).unwrap_err();
    let segment = dir.path().join(segment::file_name(0));
    assert!(
        failed_with(&first, "write", &segment, Errno::NOSPC),
        "{first}"
    );
    faults.set_disk_full(false);
    // Through openraft's storage traits, every refusal is an io::Error of the first failure's
    // kind that carries the first failure itself.
    let enospc = std::io::Error::from_raw_os_error(Errno::NOSPC.raw_os_error()).kind();
    for (what, r) in [
        (
            "truncate",
            log.truncate_after(Some(entries[0].log_id)).await,
        ),
        ("purge", log.purge(entries[0].log_id).await),
        ("save_vote", log.save_vote(&Vote::new(2, 1)).await),
    ] {
        let e = r.expect_err(what);
        assert_eq!(e.kind(), enospc, "{what}: {e}");
        let earlier = log_error(&e).and_then(refusal);
        assert!(
            earlier.is_some_and(|x| failed_with(x, "write", &segment, Errno::NOSPC)),
            "{what}: {e}"
        );
    }
}

#[cfg(feature = "testing")]
#[tokio::test]
async fn a_power_loss_during_a_truncation_leaves_the_old_log_or_a_clean_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path()).unwrap();
    // Three entries a segment: entries 0..=2, 3..=5, 6..=8.
    let entries: Vec<Entry> = (0..9).map(|i| entry(1, i, 1000)).collect();
    for e in &entries {
        append(&mut log, vec![e.clone()]).await;
    }
    assert_eq!(
        fs::read_dir(dir.path()).unwrap().count(),
        5,
        "LOCK, meta, 3 segments"
    );
    // The power fails before the truncation's directory fsync completes: the removal of the
    // later segments is not durable.
    log.fault_switch().unwrap().set_dir_sync_fails(true);
    let err = log
        .truncate_after(Some(entries[4].log_id))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("sync directory"), "{err}");
    log.power_switch().unwrap().cut();
    drop(log);

    let mut log = open(dir.path()).expect("the log opens after a power loss in a truncation");
    let got = all_entries(&mut log).await;
    assert!(
        got == entries || got == entries[..5],
        "neither the old log nor the prefix: {} entries",
        got.len()
    );
}

/// A truncation knows the entry it keeps: its log id is what the caller names. With no cache,
/// the new last entry's id was read back from the disk, and a read that failed left the log
/// with no last entry while entries remained (`last_log_id` `None`), so the next append or
/// election started from a wrong state. Here every record past the segment's first bytes is
/// zeroed before the cut.
#[tokio::test]
async fn a_truncation_keeps_the_named_last_entry_without_reading_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let opts = WalOptions {
        cache_entries: 0,
        ..small_segments()
    };
    let mut log = LogStore::open(dir.path(), 1, opts.clone()).unwrap();
    append(&mut log, (1..=10).map(|i| entry(1, i, 100)).collect()).await;
    let segments = segment::list(dir.path()).unwrap();
    assert_eq!(segments.len(), 1, "{segments:?}");
    let path = segments[0].1.clone();
    {
        use std::os::unix::fs::FileExt;
        let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
        let len = f.metadata().unwrap().len();
        f.write_all_at(&vec![0u8; (len - 200) as usize], 200)
            .unwrap();
    }
    let keep = types::log_id(1, 1, 5);
    log.truncate_after(Some(keep)).await.unwrap();
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_log_id, Some(keep));
}

/// Recovery changes nothing in a log it refuses. A file named as the segment after the purge
/// point, but not a segment (a stray copy, a partial restore), is refused; the segment that
/// holds the live entries before it must still be there, so that removing the stray file
/// brings the log back. It was deleted on the strength of the stray file's name, before that
/// file was read.
#[tokio::test]
async fn a_refused_log_keeps_every_segment() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, entries, segs) = three_hundred_entries(dir.path()).await;
    assert!(segs.len() >= 3, "{} segments", segs.len());
    // Purged to the middle of the second segment, which still holds live entries.
    let (second, second_path) = segs[1].clone();
    let upto = entries[second as usize].log_id;
    log.purge(upto).await.unwrap();
    drop(log);
    assert!(second_path.exists());

    let stray = dir.path().join(segment::file_name(upto.index + 1));
    fs::write(&stray, b"not a segment").unwrap();
    assert!(
        open(dir.path()).is_err(),
        "a log with a stray segment file opens"
    );
    assert!(second_path.exists(), "segment {second} was removed");

    fs::remove_file(&stray).unwrap();
    let mut log = open(dir.path()).unwrap();
    assert_eq!(all_entries(&mut log).await, entries[upto.index as usize..]);
}
