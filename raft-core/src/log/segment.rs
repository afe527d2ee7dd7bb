//! Segment files: creation, header validation and scanning.
//!
//! A segment is named `<first index, 20 digits>.wal` after the index of the first entry it holds
//! and starts with a 24-byte header: the magic `RKWAL001`, the first index (u64 LE), CRC-32C of
//! those 16 bytes (u32 LE) and four zero bytes. Framed records follow (see `record.rs`). The file
//! is preallocated to the segment size and is zero after the last record.
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
use super::record::Parsed;
use crate::fsutil;
use crate::fsutil::at;

const MAGIC: &[u8; 8] = b"RKWAL001";
/// Length of the segment header; the first record starts here.
pub(crate) const HEADER_LEN: u64 = 24;
const SUFFIX: &str = ".wal";

/// An open segment file.
#[derive(Debug, Clone)]
pub(crate) struct Segment {
    /// Index of the first entry this segment holds (its name).
    pub first_index: u64,
    pub path: PathBuf,
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

fn header(first_index: u64) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..16].copy_from_slice(&first_index.to_le_bytes());
    let crc = crc32c::crc32c(&h[..16]);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    h
}

impl Segment {
    /// Creates a new segment for entries starting at `first_index`, preallocated to `capacity`
    /// bytes, durably (file and directory entry) before returning.
    pub fn create(dir: &Path, first_index: u64, capacity: u64) -> Result<Segment, LogError> {
        let name = file_name(first_index);
        let path = dir.join(&name);
        let tmp = dir.join(format!("{name}.tmp"));
        {
            let mut f = File::create(&tmp).map_err(at("create", &tmp))?;
            f.write_all(&header(first_index))
                .map_err(at("write", &tmp))?;
            fsutil::preallocate(&f, capacity.max(HEADER_LEN)).map_err(at("preallocate", &tmp))?;
            f.sync_all().map_err(at("fsync", &tmp))?;
        }
        fs::rename(&tmp, &path).map_err(at("rename", &tmp))?;
        fsutil::sync_dir(dir)?;
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(at("open", &path))?;
        Ok(Segment {
            first_index,
            path,
            file: Arc::new(file),
        })
    }

    /// Opens an existing segment and checks that its header matches its name.
    pub fn open(path: &Path, first_index: u64) -> Result<Segment, LogError> {
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
        if h != header(first_index) {
            return Err(LogError::Corrupt {
                file: path.to_path_buf(),
                offset: 0,
                reason: format!(
                    "segment header does not match a segment starting at index {first_index}"
                ),
            });
        }
        Ok(Segment {
            first_index,
            path: path.to_path_buf(),
            file: Arc::new(file),
        })
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

/// Walks the records of a segment's bytes (header included) until the first non-record.
pub(crate) fn scan(bytes: &[u8]) -> (Vec<Found>, Stop) {
    let mut found = Vec::new();
    let mut pos = HEADER_LEN as usize;
    loop {
        if pos >= bytes.len() {
            return (found, Stop::End { offset: pos as u64 });
        }
        match record::parse(&bytes[pos..]) {
            Parsed::Record { len } => {
                found.push(Found {
                    offset: pos as u64,
                    len,
                });
                pos += record::HEADER_LEN + len;
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

/// Finds the first offset after `from` where a valid record starts and `accept` approves its
/// payload. Used to tell a torn tail (nothing valid after the damage) from damage in the middle
/// of the log (valid records after it). Skips zero runs quickly: a record's length field is
/// never all zero.
pub(crate) fn find_later_record(
    bytes: &[u8],
    from: usize,
    accept: impl Fn(&[u8]) -> bool,
) -> Option<u64> {
    let mut cursor = from + 1;
    while cursor < bytes.len() {
        let nz = cursor + bytes[cursor..].iter().position(|b| *b != 0)?;
        let start = nz.saturating_sub(3).max(cursor);
        for q in start..=nz {
            if let Parsed::Record { len } = record::parse(&bytes[q..]) {
                let payload = &bytes[q + record::HEADER_LEN..q + record::HEADER_LEN + len];
                if accept(payload) {
                    return Some(q as u64);
                }
            }
        }
        cursor = nz + 1;
    }
    None
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
        let seg = Segment::create(dir.path(), 7, 4096).unwrap();
        assert_eq!(seg.file.metadata().unwrap().len(), 4096);
        Segment::open(&seg.path, 7).unwrap();
        let err = Segment::open(&seg.path, 8).unwrap_err();
        assert!(matches!(err, LogError::Corrupt { offset: 0, .. }));
        assert_eq!(list(dir.path()).unwrap(), vec![(7, seg.path.clone())]);
    }

    #[test]
    fn finds_a_record_after_damage_but_not_in_zeros() {
        let mut bytes = vec![0u8; HEADER_LEN as usize];
        let ok: Result<_, ()> = record::append_framed(&mut bytes, |b| {
            b.extend_from_slice(b"first");
            Ok(())
        });
        ok.unwrap().unwrap();
        let damaged = bytes.len();
        bytes.extend_from_slice(&[0xff; 5]);
        bytes.extend_from_slice(&[0u8; 100]);
        assert_eq!(find_later_record(&bytes, damaged, |_| true), None);
        let later = bytes.len();
        let ok: Result<_, ()> = record::append_framed(&mut bytes, |b| {
            b.extend_from_slice(b"second");
            Ok(())
        });
        ok.unwrap().unwrap();
        bytes.extend_from_slice(&[0u8; 100]);
        assert_eq!(
            find_later_record(&bytes, damaged, |_| true),
            Some(later as u64)
        );
        assert_eq!(find_later_record(&bytes, damaged, |_| false), None);
        let (found, stop) = scan(&bytes);
        assert_eq!(found.len(), 1);
        assert!(matches!(stop, Stop::Invalid { offset, .. } if offset == damaged as u64));
    }
}
