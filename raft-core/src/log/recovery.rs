//! Opening a log directory after a clean shutdown or a crash.
//!
//! Every segment is read and every record's checksum verified, except segments that hold only
//! purged entries (a purge a crash interrupted), which are deleted unread; the last segment is
//! read from the disk, not from the page cache (`fsutil::sync_and_uncache`). Entries must run
//! without gaps from the purge point on. The last segment may end in a torn tail — damaged bytes with nothing
//! valid after them — which is cut off and zeroed. So may damage followed by valid records in the
//! last segment, when it lies past everything the segment's `Synced` records say was durable: a
//! power cut that saved a later page of unsynced records but not an earlier one (`testimony`).
//! Anything else that is wrong (other damage followed by valid records, damage in a sealed
//! segment, an entry out of sequence, a record that checks but does not decode) is refused with
//! [`LogError::Corrupt`] naming the file and offset.
//!
//! Telling the two apart takes a search of every offset after the damage for a valid, decodable
//! record (`segment::find_later_record`). That search covers the torn record's own payload —
//! client data — so it must not find records there that were never written as records:
//!
//! * in `RKWAL002` segments, records are keyed by the segment's secret salt, so client data
//!   cannot contain one (short of a 2^-32 guess), and the search costs O(1) per offset;
//! * in `RKWAL001` segments (written by earlier versions), client data *can* contain a valid
//!   legacy record, as it always could; the search is bounded (`LEGACY_SEARCH_FACTOR`) and, when
//!   it gives up, the log is refused rather than cut. Such segments are never appended to, so
//!   only a tail written before the upgrade is exposed, once.
//!
//! Segments that hold only purged entries are deleted (finishing an interrupted purge), as is an
//! empty last segment (created just before a crash). What recovery keeps is made durable by
//! `Wal::open` before the log is used (see `wal.rs`).

use std::fs;
use std::path::Path;

use super::LogError;
use super::meta::Meta;
use super::record::Framing;
use super::segment;
use super::segment::Decoded;
use super::segment::LEGACY_SEARCH_FACTOR;
use super::segment::Later;
use super::segment::Segment;
use super::segment::Stop;
use super::wal::Loc;
use super::wal::SegmentFile;
use super::wal::View;
use super::wal::WalOptions;
use super::wal::WalRecord;
use crate::codec;
use crate::fsutil;
use crate::fsutil::at;
use crate::types::LogId;
use crate::types::Vote;

/// What recovery found.
pub(super) struct Recovered {
    pub view: View,
    /// The last segment, if any segment is left.
    pub tail: Option<Tail>,
    /// The newest commit marker.
    pub committed: Option<LogId>,
}

/// The last segment of a recovered log: where its valid records end, and how many entries it
/// holds (purged ones included).
pub(super) struct Tail {
    pub seg: Segment,
    /// How its records are framed, from its header.
    pub framing: Framing,
    pub end: u64,
    pub entries: u64,
    /// The furthest offset its kept `Synced` records say was durable (0 if none).
    pub testified: u64,
}

/// Whether `bytes` are all zero, compared a page at a time (a segment's unwritten tail can be
/// most of its 64 MiB).
fn all_zero(bytes: &[u8]) -> bool {
    const ZEROS: [u8; 4096] = [0; 4096];
    bytes.chunks(ZEROS.len()).all(|c| c == &ZEROS[..c.len()])
}

fn corrupt(file: &Path, offset: u64, reason: impl Into<String>) -> LogError {
    LogError::Corrupt {
        file: file.to_path_buf(),
        offset,
        reason: reason.into(),
    }
}

/// The furthest offset that the `Synced` records of a segment's bytes say was durable: those of
/// its valid run (`found`), and those of every valid record from `later` on, past the damage.
/// `None` if it holds none (written by an earlier version, which wrote none).
///
/// A `Synced` record is only written once an fdatasync covering its offset has completed, so
/// one found anywhere — even in the unsynced end — is true.
fn testimony(
    bytes: &[u8],
    found: &[segment::Found],
    later: u64,
    framing: Framing,
    decodes: &impl Fn(&[u8]) -> Decoded,
) -> Option<u64> {
    if matches!(framing, Framing::Legacy) {
        return None;
    }
    let synced_in = |records: &[segment::Found]| {
        records
            .iter()
            .filter_map(|f| {
                let start = f.offset as usize + framing.header_len();
                match codec::decode::<WalRecord>(&bytes[start..start + f.len]) {
                    Ok(WalRecord::Synced(offset)) => Some(offset),
                    _ => None,
                }
            })
            .max()
    };
    let mut best = synced_in(found);
    let mut at = later as usize;
    loop {
        // Each run holds at least the record at `at`, so the search moves on.
        let (run, stop) = segment::scan_from(bytes, at, framing);
        best = best.max(synced_in(&run));
        match segment::find_later_record(bytes, stop.offset() as usize, framing, decodes) {
            Later::Record(next) => at = next as usize,
            Later::Nothing | Later::GaveUp { .. } => return best,
        }
    }
}

/// Reads and verifies the segments in `dir`; see the module docs.
pub(super) fn recover(dir: &Path, opts: &WalOptions, meta: &Meta) -> Result<Recovered, LogError> {
    let mut view = View::new(opts);
    view.vote = meta.vote.map(Vote::from);
    view.purged = meta.purged.map(LogId::from);
    view.last = view.purged;
    if let Some(p) = view.purged {
        view.first = p.index + 1;
        view.cache_first = p.index + 1;
    }
    let purged_index = view.purged.map(|p| p.index);

    let listed = segment::list(dir)?;
    let mut committed: Option<LogId> = None;
    let mut prev_index: Option<u64> = None;
    let mut tail: Option<Tail> = None;
    // Segments to delete (purged, or created empty just before a crash): deleted only once the
    // whole log has been read and accepted, so a log that is refused is left as it was.
    let mut doomed: Vec<std::path::PathBuf> = Vec::new();
    let count = listed.len();
    let firsts: Vec<u64> = listed.iter().map(|(first, _)| *first).collect();
    for (i, (first, path)) in listed.into_iter().enumerate() {
        let is_last = i + 1 == count;
        // A segment followed by one that starts at or before the entry after the purge point
        // holds only purged entries: a purge that a crash interrupted, finished here without
        // reading it, so that damage in data the log no longer needs cannot stop the start.
        if let (Some(p), Some(next)) = (purged_index, firsts.get(i + 1))
            && next.saturating_sub(1) <= p
        {
            doomed.push(path);
            continue;
        }
        let (seg, framing) = Segment::open(&path, first)?;
        if is_last {
            // Only the last segment can hold records whose fdatasync failed (a segment is
            // sealed, and a failed seal fails the log, before the next one is created): read it
            // from the disk, not from pages the kernel kept after failing to write them.
            fsutil::sync_and_uncache(&seg.file).map_err(at("fdatasync", &path))?;
        }
        let bytes = seg.read_all()?;
        let (found, stop) = segment::scan(&bytes, framing);
        let decodes = |p: &[u8]| {
            let (decoded, read) = codec::decode_counting::<WalRecord>(p);
            Decoded {
                ok: decoded.is_ok(),
                read,
            }
        };
        let what = match &stop {
            Stop::End { .. } => "unwritten (zero) bytes",
            Stop::Invalid { reason, .. } => reason,
        };
        match segment::find_later_record(&bytes, stop.offset() as usize, framing, decodes) {
            Later::Nothing => {}
            Later::Record(later)
                if is_last
                    && let Some(synced) = testimony(&bytes, &found, later, framing, &decodes)
                    && synced <= stop.offset() =>
            {
                // The damage lies past everything the segment's records vouch for: a disk that
                // saved a later page of a write being synced but not an earlier one. What follows
                // was not synced, or was synced so lately that nothing vouches for it yet (the
                // exposure a damaged last record has always had); it is cut like a torn tail.
                tracing::warn!(
                    file = %path.display(), offset = stop.offset(), synced, later,
                    "cutting an unsynced tail with holes off the write-ahead log (a power cut \
                     while it was being written)"
                );
            }
            Later::Record(later) => {
                return Err(corrupt(
                    &path,
                    stop.offset(),
                    format!(
                        "{what}, yet a valid record follows at offset {later}: the log is damaged before its tail"
                    ),
                ));
            }
            Later::GaveUp { examined } => {
                return Err(corrupt(
                    &path,
                    stop.offset(),
                    format!(
                        "{what} in a segment of the earlier format (RKWAL001); the search for valid \
                         records after it gave up after examining {examined} bytes \
                         ({LEGACY_SEARCH_FACTOR} times the segment's size), so a torn tail cannot \
                         be told from damage before the tail and nothing is cut (see docs/disk.md \
                         on replacing a node that refuses to start over its log)"
                    ),
                ));
            }
        }
        let mut cut_at = None;
        if let Stop::Invalid { offset, reason } = &stop {
            if !is_last {
                return Err(corrupt(
                    &path,
                    *offset,
                    format!("{reason} in a sealed segment"),
                ));
            }
            tracing::warn!(
                file = %path.display(), offset, reason,
                "cutting a torn tail off the write-ahead log (a write interrupted by a crash)"
            );
            cut_at = Some(*offset);
        }
        if let Stop::End { offset } = &stop
            && is_last
            && !all_zero(&bytes[*offset as usize..])
        {
            // A write torn so that its first bytes never reached the disk but later ones did:
            // the log ends at the zeros, and what follows is zeroed too. Left in place, the next
            // appends would end inside it, and once their segment is sealed it would read as
            // damage there and stop the node from starting.
            tracing::warn!(
                file = %path.display(), offset,
                "zeroing the remains of a torn write after the end of the write-ahead log"
            );
            cut_at = Some(*offset);
        }

        let mut entries_here = 0u64;
        let mut testified = 0u64;
        let mut seg_last: Option<u64> = None;
        for f in &found {
            let start = f.offset as usize + framing.header_len();
            let payload = &bytes[start..start + f.len];
            let rec: WalRecord = codec::decode(payload).map_err(|e| {
                corrupt(
                    &path,
                    f.offset,
                    format!("checksum holds but the record does not decode: {e}"),
                )
            })?;
            match rec {
                // One written right at the offset it vouches for (a clean close, the first batch
                // after an idle spell, a new segment's first record) leaves nothing before it
                // unvouched, so the writer need not vouch again until more is written. (Only the
                // writer's choice uses this; `testimony` reads the offsets as written.)
                WalRecord::Synced(offset) if offset == f.offset => {
                    testified = testified.max(f.offset + (framing.header_len() + f.len) as u64);
                }
                WalRecord::Synced(offset) => testified = testified.max(offset),
                WalRecord::Committed(c) => {
                    let c = LogId::from(c);
                    if committed.is_none_or(|old| old.index < c.index) {
                        committed = Some(c);
                    }
                }
                WalRecord::Entry(e) => {
                    let index = e.log_id.index;
                    if entries_here == 0 && index != first {
                        return Err(corrupt(
                            &path,
                            f.offset,
                            format!(
                                "first entry has index {index} but the segment is named for {first}"
                            ),
                        ));
                    }
                    if let Some(p) = seg_last
                        && index != p + 1
                    {
                        return Err(corrupt(
                            &path,
                            f.offset,
                            format!("entry {index} follows entry {p}"),
                        ));
                    }
                    let live = purged_index.is_none_or(|p| index > p);
                    let must_follow = match purged_index {
                        Some(p) => index > p + 1,
                        None => true,
                    };
                    if entries_here == 0
                        && must_follow
                        && let Some(p) = prev_index
                        && index != p + 1
                    {
                        return Err(corrupt(
                            &path,
                            f.offset,
                            format!(
                                "gap in the log: entry {p} is followed by segment starting at {index}"
                            ),
                        ));
                    }
                    if live {
                        if view.locs.is_empty()
                            && let Some(p) = purged_index
                            && index != p + 1
                        {
                            return Err(corrupt(
                                &path,
                                f.offset,
                                format!(
                                    "gap in the log: entries are purged up to {p} but the next one is {index}"
                                ),
                            ));
                        }
                        let entry = e.into_entry().map_err(|why| {
                            corrupt(&path, f.offset, format!("entry {index}: {why}"))
                        })?;
                        let loc = Loc {
                            segment: first,
                            offset: f.offset,
                            len: f.len as u32,
                        };
                        view.push(loc, entry);
                    }
                    entries_here += 1;
                    seg_last = Some(index);
                    prev_index = Some(index);
                }
            }
        }

        let fully_purged = match (seg_last, purged_index) {
            (Some(l), Some(p)) => l <= p,
            (None, _) => true,
            (Some(_), None) => false,
        };
        if entries_here == 0 && !is_last {
            return Err(corrupt(
                &path,
                segment::HEADER_LEN,
                "a sealed segment holds no entries",
            ));
        }
        if fully_purged {
            // Finish an interrupted purge, or drop a segment created just before a crash.
            drop(seg);
            doomed.push(path);
            continue;
        }
        let end = cut_at.unwrap_or(stop.offset());
        if let Some(cut) = cut_at {
            seg.file.set_len(cut).map_err(at("truncate", &path))?;
            fsutil::preallocate(&seg.file, opts.segment_size.max(cut))
                .map_err(at("preallocate", &path))?;
            seg.file.sync_all().map_err(at("fsync", &path))?;
        }
        view.segments.insert(
            first,
            SegmentFile {
                file: seg.file.clone(),
                framing,
            },
        );
        if is_last {
            tail = Some(Tail {
                seg,
                framing,
                end,
                entries: entries_here,
                testified,
            });
        }
    }
    for path in &doomed {
        fs::remove_file(path).map_err(at("remove", path))?;
    }
    if !doomed.is_empty() {
        fsutil::sync_dir(dir)?;
    }
    // A commit marker can only name an entry written before it, so it never exceeds the
    // last entry; be defensive anyway, since openraft replays up to it on startup.
    if let (Some(c), Some(last)) = (committed, view.last)
        && c.index > last.index
    {
        tracing::warn!(committed = %c, last = %last, "ignoring a commit marker beyond the last log entry");
        committed = None;
    }
    Ok(Recovered {
        view,
        tail,
        committed,
    })
}
