//! Segment files: creation, header validation and scanning.
//!
//! A segment is named `<first index, 20 digits>.wal` after the index of the first entry it holds
//! and starts with a 24-byte header. The file is preallocated to the segment size and is zero
//! after the last record. There are two formats, told apart by the header's magic:
//!
//! ```text
//! RKWAL002  [magic][first index: u64 LE][salt: u32 LE][crc32c of the 20 bytes before: u32 LE]
//! RKWAL001  [magic][first index: u64 LE][crc32c of the 16 bytes before: u32 LE][0u32]
//! ```
//!
//! Every segment created is `RKWAL002`: its salt is drawn at random when it is created, and its
//! records are framed with it (`record.rs`, salted framing), so that no data written into the
//! segment can pass for one of its records. `RKWAL001` segments, written by earlier versions with
//! the legacy framing, are still opened and read exactly as before, but never appended to: the
//! first append after such a segment goes to a new `RKWAL002` segment (`wal.rs`).
//!
//! A segment only becomes visible under its final name once its header is durable (it is built
//! as `<name>.tmp`, fsynced, renamed, and the directory fsynced), so a visible segment with a bad
//! header is corruption, not a crash artefact.

use std::fs;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

use super::LogError;
use super::record;
use super::record::Framing;
use super::record::Parsed;
use super::record::Salt;
use crate::fsutil;
use crate::fsutil::at;

/// Magic of the segments written by this version: salted records.
const MAGIC: &[u8; 8] = b"RKWAL002";
/// Magic of the segments earlier versions wrote: legacy records.
const LEGACY_MAGIC: &[u8; 8] = b"RKWAL001";
/// Length of the segment header (both formats); the first record starts here.
pub(crate) const HEADER_LEN: u64 = 24;
const SUFFIX: &str = ".wal";

/// An open segment file. How its records are framed is returned beside it by
/// [`Segment::create`] and [`Segment::open`].
#[derive(Debug, Clone)]
pub(crate) struct Segment {
    /// Index of the first entry this segment holds (its name).
    pub first_index: u64,
    /// Shared, so that a copy of the segment (the flusher keeps one) costs no allocation.
    pub path: Arc<Path>,
    pub file: Arc<File>,
}

/// The file name of the segment whose first entry has `first_index`.
pub(crate) fn file_name(first_index: u64) -> String {
    format!("{first_index:020}{SUFFIX}")
}

/// The first index encoded in a segment file name, if `name` is one.
pub(crate) fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The header of a new segment for entries from `first_index` whose records are framed with
/// `salt`.
pub(crate) fn header(first_index: u64, salt: u32) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..16].copy_from_slice(&first_index.to_le_bytes());
    h[16..20].copy_from_slice(&salt.to_le_bytes());
    let crc = crc32c::crc32c(&h[..20]);
    h[20..24].copy_from_slice(&crc.to_le_bytes());
    h
}

/// The header earlier versions wrote for a segment of entries from `first_index`.
pub(crate) fn legacy_header(first_index: u64) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..8].copy_from_slice(LEGACY_MAGIC);
    h[8..16].copy_from_slice(&first_index.to_le_bytes());
    let crc = crc32c::crc32c(&h[..16]);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    h
}

/// The framing a segment header declares, if it is a valid header of either format for a segment
/// of entries from `first_index`; otherwise why not.
pub(crate) fn parse_header(
    h: &[u8; HEADER_LEN as usize],
    first_index: u64,
) -> Result<Framing, String> {
    let names =
        || format!("segment header does not match a segment starting at index {first_index}");
    if &h[..8] == MAGIC {
        let stored = u32::from_le_bytes([h[20], h[21], h[22], h[23]]);
        if crc32c::crc32c(&h[..20]) != stored || h[8..16] != first_index.to_le_bytes() {
            return Err(names());
        }
        let salt = u32::from_le_bytes([h[16], h[17], h[18], h[19]]);
        Ok(Framing::Salted(Salt::new(salt)))
    } else if &h[..8] == LEGACY_MAGIC {
        if *h != legacy_header(first_index) {
            return Err(names());
        }
        Ok(Framing::Legacy)
    } else {
        Err("not a write-ahead log segment of a known format (bad magic)".into())
    }
}

impl Segment {
    /// Creates a new `RKWAL002` segment for entries starting at `first_index`, with a fresh
    /// random salt, preallocated to `capacity` bytes, durably (file and directory entry) before
    /// returning. The records `first` frames with the salt follow the header, durable with it.
    /// Returns the segment, its salt and where the next record goes.
    pub fn create(
        dir: &Path,
        first_index: u64,
        capacity: u64,
        first: impl FnOnce(Salt) -> Result<Vec<u8>, LogError>,
    ) -> Result<(Segment, Salt, u64), LogError> {
        let name = file_name(first_index);
        let path = dir.join(&name);
        let tmp = dir.join(format!("{name}.tmp"));
        let salt: u32 = rand::random();
        let records = first(Salt::new(salt))?;
        let end = HEADER_LEN + records.len() as u64;
        {
            let mut f = File::create(&tmp).map_err(at("create", &tmp))?;
            f.write_all(&header(first_index, salt))
                .and_then(|()| f.write_all(&records))
                .map_err(at("write", &tmp))?;
            fsutil::preallocate(&f, capacity.max(end)).map_err(at("preallocate", &tmp))?;
            f.sync_all().map_err(at("fsync", &tmp))?;
        }
        fs::rename(&tmp, &path).map_err(at("rename", &tmp))?;
        fsutil::sync_dir(dir)?;
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(at("open", &path))?;
        let seg = Segment {
            first_index,
            path: path.into(),
            file: Arc::new(file),
        };
        Ok((seg, Salt::new(salt), end))
    }

    /// Opens an existing segment of either format and checks that its header matches its name.
    /// Returns the segment and how its records are framed, from its header.
    pub fn open(path: &Path, first_index: u64) -> Result<(Segment, Framing), LogError> {
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(at("open", path))?;
        let mut h = [0u8; HEADER_LEN as usize];
        file.read_exact_at(&mut h, 0)
            .map_err(|e| LogError::Corrupt {
                file: path.to_path_buf(),
                offset: 0,
                reason: format!("segment header unreadable: {e}"),
            })?;
        let framing = parse_header(&h, first_index).map_err(|reason| LogError::Corrupt {
            file: path.to_path_buf(),
            offset: 0,
            reason,
        })?;
        let seg = Segment {
            first_index,
            path: path.into(),
            file: Arc::new(file),
        };
        Ok((seg, framing))
    }

    /// Reads the whole file (header included) for scanning.
    pub fn read_all(&self) -> Result<Vec<u8>, LogError> {
        Ok(fs::read(&self.path).map_err(at("read", &self.path))?)
    }
}

/// Lists the segments in `dir` as `(first_index, path)`, sorted by first index. Leftover
/// temporary files from an interrupted segment creation are removed.
pub(crate) fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>, LogError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(at("list", dir))? {
        let entry = entry.map_err(at("list", dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(first) = parse_name(name) {
            out.push((first, entry.path()));
        } else if name.ends_with(".wal.tmp") {
            let p = entry.path();
            fs::remove_file(&p).map_err(at("remove", &p))?;
        }
    }
    out.sort();
    Ok(out)
}

/// One valid record found by [`scan`]: where it starts and its payload length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Found {
    pub offset: u64,
    pub len: usize,
}

/// How the run of valid records in a segment ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stop {
    /// Zeros follow the last record.
    End { offset: u64 },
    /// Bytes that are not a valid record start at `offset`.
    Invalid { offset: u64, reason: &'static str },
}

impl Stop {
    pub fn offset(&self) -> u64 {
        match self {
            Stop::End { offset } | Stop::Invalid { offset, .. } => *offset,
        }
    }
}

/// Walks the records of a segment's bytes (header included), framed as `framing`, until the
/// first non-record. Checksums each record once.
pub(crate) fn scan(bytes: &[u8], framing: Framing) -> (Vec<Found>, Stop) {
    scan_from(bytes, HEADER_LEN as usize, framing)
}

/// [`scan`] from offset `from` on.
pub(crate) fn scan_from(bytes: &[u8], from: usize, framing: Framing) -> (Vec<Found>, Stop) {
    let mut found = Vec::new();
    let mut pos = from;
    loop {
        if pos >= bytes.len() {
            return (found, Stop::End { offset: pos as u64 });
        }
        match framing.parse(&bytes[pos..]) {
            Parsed::Record { len } => {
                found.push(Found {
                    offset: pos as u64,
                    len,
                });
                pos += framing.header_len() + len;
            }
            Parsed::End => return (found, Stop::End { offset: pos as u64 }),
            Parsed::Invalid(reason) => {
                return (
                    found,
                    Stop::Invalid {
                        offset: pos as u64,
                        reason,
                    },
                );
            }
        }
    }
}

/// What a decoder made of a payload: whether it decodes, and how many of its bytes it read to
/// find out (the work the attempt cost).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Decoded {
    pub ok: bool,
    pub read: usize,
}

/// What a search for records after the end of a segment's valid run found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Later {
    /// No valid, decodable record starts after it.
    Nothing,
    /// One starts at this offset.
    Record(u64),
    /// The search of an `RKWAL001` segment used up its budget ([`LEGACY_SEARCH_FACTOR`]) before
    /// it could tell, after `examined` bytes decoded or checksummed.
    GaveUp { examined: u64 },
}

/// The search of an `RKWAL001` segment stops once it has decoded or checksummed this many times
/// the segment's length.
///
/// Legacy records can only be checked by checksumming their whole payload, so the search tries to
/// decode a candidate's payload first (a postcard decode of random bytes fails within a few
/// bytes) and checksums only payloads that decode. Bytes crafted to decode — a client's value
/// made of frames whose payloads are entries sized to the frame — still cost a decode and a
/// checksum of up to a segment's length each, at every offset; hence the budget. Honest data
/// (the remains of a torn record, zeros) costs a small fraction of it.
///
/// When the budget runs out, recovery refuses the log rather than cut the tail: the search could
/// not rule out valid records after the damage, and cutting them would silently drop entries this
/// node may have acknowledged — what Raft's safety rests on. A refusal is loud and local: the node
/// stops with [`LogError::Corrupt`], and is replaced from the others like a node whose data was
/// lost. `RKWAL002` segments need no budget: their search costs O(1) per offset whatever the data.
pub(crate) const LEGACY_SEARCH_FACTOR: u64 = 4;

/// Searches `bytes` (a segment framed as `framing`) after offset `from` for a valid record
/// whose payload `decodes` accepts. Used to tell a torn tail (nothing valid after the damage)
/// from damage in the middle of the log (valid records after it).
///
/// Cost: linear in the segment's length for `RKWAL002` segments, whatever the data — each
/// offset costs a 12-byte header check, and a payload is checksummed and decoded only behind a
/// header written with the segment's salt. For `RKWAL001` segments, at most about
/// [`LEGACY_SEARCH_FACTOR`] + 2 times the segment's length is decoded or checksummed before the
/// search returns [`Later::GaveUp`]. Zero runs are skipped quickly: a record's length field is
/// never all zero.
pub(crate) fn find_later_record(
    bytes: &[u8],
    from: usize,
    framing: Framing,
    decodes: impl Fn(&[u8]) -> Decoded,
) -> Later {
    let budget = LEGACY_SEARCH_FACTOR.saturating_mul(bytes.len() as u64);
    let mut examined = 0u64;
    let mut cursor = from + 1;
    while cursor < bytes.len() {
        let Some(nz) = bytes[cursor..].iter().position(|b| *b != 0) else {
            break;
        };
        let nz = cursor + nz;
        let start = nz.saturating_sub(3).max(cursor);
        for q in start..=nz {
            let candidate = &bytes[q..];
            match framing {
                Framing::Salted(salt) => {
                    // The header holds the non-zero byte at `nz`; once it matches the salt, only
                    // the length and the payload are left to check.
                    if salt.header_matches(candidate)
                        && let Parsed::Record { len } = framing.parse_after_header(candidate)
                        && decodes(&candidate[framing.header_len()..framing.header_len() + len]).ok
                    {
                        return Later::Record(q as u64);
                    }
                }
                Framing::Legacy => {
                    let Some(payload) = legacy_payload(candidate) else {
                        continue;
                    };
                    let decoded = decodes(payload);
                    examined += decoded.read as u64;
                    if decoded.ok {
                        examined += (record::LEGACY_HEADER_LEN + payload.len()) as u64;
                        if let Parsed::Record { .. } = framing.parse(candidate) {
                            return Later::Record(q as u64);
                        }
                    }
                    if examined > budget {
                        return Later::GaveUp { examined };
                    }
                }
            }
        }
        cursor = nz + 1;
    }
    Later::Nothing
}

/// The payload a legacy record at the start of `bytes` would have, if its length field is in
/// range and the payload fits in `bytes`; nothing is checksummed.
fn legacy_payload(bytes: &[u8]) -> Option<&[u8]> {
    let h = bytes.get(..record::LEGACY_HEADER_LEN)?;
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
    if len == 0 || len > record::MAX_PAYLOAD {
        return None;
    }
    bytes.get(record::LEGACY_HEADER_LEN..record::LEGACY_HEADER_LEN + len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(parse_name(&file_name(42)), Some(42));
        assert_eq!(parse_name("00000000000000000042.wal.tmp"), None);
        assert_eq!(parse_name("42.wal"), None);
        assert_eq!(parse_name("meta"), None);
    }

    #[test]
    fn create_then_open_checks_header() {
        let dir = tempfile::tempdir().unwrap();
        let (seg, salt, end) = Segment::create(dir.path(), 7, 4096, |_| Ok(vec![1, 2, 3])).unwrap();
        assert_eq!(seg.file.metadata().unwrap().len(), 4096);
        assert_eq!(end, HEADER_LEN + 3);
        let bytes = fs::read(&seg.path).unwrap();
        assert_eq!(
            &bytes[HEADER_LEN as usize..end as usize],
            &[1, 2, 3],
            "the first records follow the header"
        );
        assert_eq!(
            Segment::open(&seg.path, 7).unwrap().1,
            Framing::Salted(salt)
        );
        let err = Segment::open(&seg.path, 8).unwrap_err();
        assert!(matches!(err, LogError::Corrupt { offset: 0, .. }));
        assert_eq!(list(dir.path()).unwrap(), vec![(7, seg.path.to_path_buf())]);

        // Any damage to the header, the salt included, is refused.
        let good = fs::read(&seg.path).unwrap();
        for i in 0..HEADER_LEN as usize {
            let mut bad = good.clone();
            bad[i] ^= 0x20;
            fs::write(&seg.path, &bad).unwrap();
            let err = Segment::open(&seg.path, 7).unwrap_err();
            assert!(matches!(err, LogError::Corrupt { offset: 0, .. }), "{i}");
        }
    }

    #[test]
    fn every_segment_gets_its_own_salt() {
        let dir = tempfile::tempdir().unwrap();
        let framings: Vec<Framing> = (1..=8)
            .map(|i| {
                Framing::Salted(
                    Segment::create(dir.path(), i, 4096, |_| Ok(Vec::new()))
                        .unwrap()
                        .1,
                )
            })
            .collect();
        for (i, a) in framings.iter().enumerate() {
            for b in &framings[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn a_segment_of_the_earlier_format_opens_as_legacy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(file_name(3));
        let mut bytes = legacy_header(3).to_vec();
        bytes.resize(4096, 0);
        fs::write(&path, &bytes).unwrap();
        assert_eq!(Segment::open(&path, 3).unwrap().1, Framing::Legacy);
        assert!(Segment::open(&path, 4).is_err());
        bytes[..8].copy_from_slice(b"RKWAL009");
        fs::write(&path, &bytes).unwrap();
        let err = Segment::open(&path, 3).unwrap_err();
        assert!(err.to_string().contains("known format"), "{err}");
    }

    fn frame(framing: Framing, bytes: &mut Vec<u8>, payload: &[u8]) {
        let ok: Result<_, ()> = framing.append_framed(bytes, |b| {
            b.extend_from_slice(payload);
            Ok(())
        });
        ok.unwrap().unwrap();
    }

    fn any(payload: &[u8]) -> Decoded {
        Decoded {
            ok: true,
            read: payload.len(),
        }
    }

    fn none(_: &[u8]) -> Decoded {
        Decoded { ok: false, read: 1 }
    }

    #[test]
    fn finds_a_record_after_damage_but_not_in_zeros() {
        for framing in [Framing::Legacy, Framing::Salted(Salt::new(11))] {
            let mut bytes = vec![0u8; HEADER_LEN as usize];
            frame(framing, &mut bytes, b"first");
            let damaged = bytes.len();
            bytes.extend_from_slice(&[0xff; 5]);
            bytes.extend_from_slice(&[0u8; 100]);
            assert_eq!(
                find_later_record(&bytes, damaged, framing, any),
                Later::Nothing
            );
            let later = bytes.len();
            frame(framing, &mut bytes, b"second");
            bytes.extend_from_slice(&[0u8; 100]);
            assert_eq!(
                find_later_record(&bytes, damaged, framing, any),
                Later::Record(later as u64)
            );
            assert_eq!(
                find_later_record(&bytes, damaged, framing, none),
                Later::Nothing
            );
            let (found, stop) = scan(&bytes, framing);
            assert_eq!(found.len(), 1);
            assert!(matches!(stop, Stop::Invalid { offset, .. } if offset == damaged as u64));
        }
    }

    #[test]
    fn a_salted_search_checks_each_header_once() {
        let framing = Framing::Salted(Salt::new(21));
        let mut bytes = vec![0u8; HEADER_LEN as usize + 16];
        let at = bytes.len();
        frame(framing, &mut bytes, b"found");
        bytes.extend_from_slice(&[0u8; 16]);
        record::work::start(u64::MAX);
        let later = find_later_record(&bytes, HEADER_LEN as usize, framing, any);
        let checksummed = record::work::stop();
        assert_eq!(later, Later::Record(at as u64));
        // The record's first byte is the first non-zero one: the three offsets before it and its
        // own cost a header check (8 bytes) each, then its payload is checksummed once.
        assert_eq!(checksummed, 4 * 8 + 5);
    }

    #[test]
    fn a_salted_search_ignores_records_of_other_salts_and_formats() {
        let framing = Framing::Salted(Salt::new(1));
        let mut bytes = vec![0u8; HEADER_LEN as usize];
        bytes.push(0xff);
        frame(
            Framing::Salted(Salt::new(2)),
            &mut bytes,
            b"another segment's",
        );
        frame(Framing::Legacy, &mut bytes, b"an earlier version's");
        bytes.extend_from_slice(&[0u8; 16]);
        assert_eq!(
            find_later_record(&bytes, HEADER_LEN as usize, framing, any),
            Later::Nothing
        );
    }

    #[test]
    fn a_legacy_search_gives_up_within_its_budget() {
        // Frames of 1 KiB payloads every 12 bytes, all of which "decode": checking each in full
        // would cost ~1 KiB per offset.
        let mut bytes = vec![0u8; HEADER_LEN as usize];
        bytes.push(0xff);
        while bytes.len() < 64 << 10 {
            bytes.extend_from_slice(&1024u32.to_le_bytes());
            bytes.extend_from_slice(&[0xaa; 8]);
        }
        let len = bytes.len() as u64;
        match find_later_record(&bytes, HEADER_LEN as usize, Framing::Legacy, any) {
            Later::GaveUp { examined } => {
                assert!(examined > LEGACY_SEARCH_FACTOR * len, "{examined}");
                assert!(
                    examined <= LEGACY_SEARCH_FACTOR * len + 2 * 1032,
                    "{examined}"
                );
            }
            other => panic!("{other:?}"),
        }
        // Payloads that do not decode cost only what the decoder read.
        assert_eq!(
            find_later_record(&bytes, HEADER_LEN as usize, Framing::Legacy, none),
            Later::Nothing
        );
    }
}
