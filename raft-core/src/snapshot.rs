//! Snapshot files: writing, checksumming, reading, receiving.
//!
//! # Format
//!
//! ```text
//! "RKSNAP02"                       8 bytes of magic: the format's version
//! cluster id present: u8           1 if the writer knew its cluster id, else 0
//! cluster id: u128 LE              16 bytes; zero when absent
//! header length: u32 LE
//! header                           postcard: last log id, membership, client session table,
//!                                  then (optional) the applied time: u64, ms since the epoch,
//!                                  then (optional) the incarnation bindings: map id -> u64
//! user data                        whatever StateMachine::write_snapshot wrote
//! crc32c: u32 LE                   over every byte before it
//! ```
//!
//! The cluster id says which cluster the snapshot belongs to, so a file copied into another
//! cluster's data directory, or sent to it, is refused with [`SnapshotError::WrongCluster`]
//! (naming both ids) before any of its data is applied; the node keeps its state and its files.
//! A node that has no cluster id yet adopts the one a snapshot it installs names. Every snapshot
//! is written in this format.
//!
//! The applied time (the time of the last entry applied, see [`crate::ApplyContext`]) and the
//! members' incarnation bindings (see [`crate::incarnation`]) follow the header's other fields
//! inside the header's length; a header that ends before them (written by earlier versions)
//! reads as time 0 and no bindings.
//!
//! The first format, `"RKSNAP01"`, is the same without the two cluster id fields. Such files are
//! still read and installed: they name no cluster, so they are accepted by any node (whose own
//! cluster id is left as it is), exactly as before cluster ids existed. The next snapshot the node
//! builds replaces it with an `RKSNAP02` file.
//!
//! # Memory
//!
//! Neither writing nor reading a snapshot holds it in memory: the user's bytes stream through a
//! 64 KiB buffer into the file, the checksum is verified in 1 MiB pieces, and
//! [`StateMachine::restore`](crate::StateMachine::restore) reads the user's bytes from a
//! [`Read`]. [`read_serde_each`](crate::read_serde_each) decodes a sequence one element at a
//! time, so a state machine can rebuild its state without a second, decoded copy of the snapshot
//! in memory.
//!
//! A durable node keeps its snapshots in `<data dir>/snapshots/` as `<sequence, 20 digits>.snap`.
//! The current snapshot is the one with the highest `(last log id, sequence)`: a slow build can be
//! renamed into place after a newer snapshot was installed, so the sequence alone does not say
//! which is newer. Older ones are deleted (and the directory fsynced) once a newer one is in
//! place, and at startup if a crash left them behind. A snapshot is written (or received) under a
//! temporary name, fsynced, checked, renamed and the directory fsynced, so a visible `.snap` file
//! is always complete; one that fails its checksum is corruption and refused.
//!
//! [`SnapshotData`] is a handle to one snapshot's bytes — an open file, or a buffer for in-memory
//! nodes — that a transport reads in chunks with [`SnapshotData::read_at`]; a receiving transport
//! writes chunks into a [`SnapshotSink`] and hands the finished data to the node. Neither side
//! needs the whole snapshot in memory.

use std::fs;
use std::fs::File;
use std::io;
use std::io::BufWriter;
use std::io::Read;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use serde::Deserialize;
use serde::Serialize;

use crate::cluster_id::ClusterId;
use crate::cluster_id::ClusterIdError;
use crate::cluster_id::ClusterIdentity;
use crate::codec;
use crate::disk::DiskLogId;
use crate::disk::DiskStoredMembership;
use crate::fsutil;
use crate::fsutil::PathError;
use crate::fsutil::at;
use crate::session::SessionTable;
use crate::types::LogId;
use crate::types::SnapshotMeta;

/// The first format: no cluster id. Read, never written.
const MAGIC_V1: &[u8; 8] = b"RKSNAP01";
/// The current format, with the cluster id.
const MAGIC_V2: &[u8; 8] = b"RKSNAP02";
/// Bytes before the header in the first format: magic and header length.
const PREFIX_V1: u64 = 8 + 4;
/// Bytes before the header in the current format: magic, cluster id flag and id, header length.
const PREFIX_V2: u64 = 8 + 1 + 16 + 4;
const SUFFIX: &str = ".snap";
/// How a snapshot being received from a leader is named until it is placed:
/// `recv-<store>-<seq>.tmp`; one being built is `build-<store>-<seq>.tmp`. `<store>` tells apart
/// the stores one process opens on a directory: a build or receive of a store that was shut down
/// may still be running when the next store starts on it, and must not write or delete the new
/// store's file of the same sequence.
const RECEIVED: &str = "recv-";
const BUILDING: &str = "build-";

/// Numbers the stores this process opens (see [`RECEIVED`]).
static STORES: AtomicU64 = AtomicU64::new(0);

const TRAILER_LEN: u64 = 4;
/// Upper bound on the header (membership and session table), so a damaged length cannot make a
/// reader allocate without limit.
const MAX_HEADER: u32 = 1 << 30;

/// A snapshot could not be written, read or verified.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// A file operation failed.
    #[error(transparent)]
    Io(#[from] PathError),
    /// The user's `write_snapshot` or `restore` failed.
    #[error("state machine snapshot I/O failed: {0}")]
    StateMachine(io::Error),
    /// The snapshot's bytes are damaged or not a raftkit snapshot.
    #[error("snapshot {what} is corrupt: {reason}")]
    Corrupt {
        /// The file, or "received snapshot" for one in memory.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// A received snapshot exceeds the configured size limit.
    #[error("snapshot is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// Another snapshot is being received; a node receives one at a time.
    #[error("another snapshot is being received")]
    Busy,
    /// The snapshot's announced size does not fit on this node's disk.
    #[error(
        "a snapshot of {size} bytes does not fit: {available} bytes are free (and {RECEIVE_MARGIN} must stay free)"
    )]
    NoSpace {
        /// The snapshot's announced size.
        size: u64,
        /// Free bytes on the snapshot directory's file system.
        available: u64,
    },
    /// More bytes arrived than the sender announced.
    #[error("the sender announced {announced} bytes but sent more")]
    LongerThanAnnounced {
        /// What the sender announced.
        announced: u64,
    },
    /// The snapshot belongs to another cluster; nothing of it was applied.
    #[error(
        "snapshot {what} belongs to cluster {theirs}, not to this node's cluster {ours}; refused"
    )]
    WrongCluster {
        /// The file, or "received in memory".
        what: String,
        /// This node's cluster.
        ours: ClusterId,
        /// The cluster the snapshot names.
        theirs: ClusterId,
    },
    /// The node could not store the cluster id a snapshot named.
    #[error("could not adopt the snapshot's cluster id: {0}")]
    ClusterId(#[source] ClusterIdError),
    /// The node has shut down: a snapshot built or received since is not kept, and the files in
    /// the snapshot directory are left as they were.
    #[error("the node has shut down; the snapshot was not kept")]
    Closed,
    /// A snapshot this node built failed; the text is the failure (also in the node's
    /// [`SnapshotStats`](crate::SnapshotStats)). The node goes on serving from its log.
    #[error("building the snapshot failed: {0}")]
    BuildFailed(String),
}

/// Bytes that must stay free on the disk after a received snapshot, for the log to go on.
pub const RECEIVE_MARGIN: u64 = 64 << 20;

impl From<SnapshotError> for io::Error {
    fn from(e: SnapshotError) -> Self {
        let kind = match &e {
            SnapshotError::Io(p) => p.source.kind(),
            SnapshotError::StateMachine(e) => e.kind(),
            SnapshotError::Corrupt { .. } => io::ErrorKind::InvalidData,
            SnapshotError::TooLarge { .. } | SnapshotError::LongerThanAnnounced { .. } => {
                io::ErrorKind::InvalidInput
            }
            SnapshotError::Busy => io::ErrorKind::WouldBlock,
            SnapshotError::NoSpace { .. } => io::ErrorKind::StorageFull,
            SnapshotError::WrongCluster { .. } => io::ErrorKind::PermissionDenied,
            SnapshotError::ClusterId(_) | SnapshotError::Closed | SnapshotError::BuildFailed(_) => {
                io::ErrorKind::Other
            }
        };
        io::Error::new(kind, e)
    }
}

#[derive(Clone)]
enum Source {
    File {
        file: Arc<File>,
        path: PathBuf,
        len: u64,
        /// Set for a snapshot received from a peer and not yet placed.
        received: Option<Arc<TempFile>>,
    },
    Memory(Bytes),
}

/// A snapshot file under its temporary name, deleted when dropped unless it was placed
/// ([`TempFile::place`]). So nothing stays behind of a build that failed or panicked, of a
/// receive that was abandoned, or of a snapshot received whole but never installed — refused by
/// the checks after receiving, dropped by the consensus engine because the log already covers
/// it or a newer term began. Each of those would otherwise keep its disk space until the node
/// restarts, and each resend of a refused snapshot would take as much again.
struct TempFile {
    path: PathBuf,
    placed: AtomicBool,
}

impl TempFile {
    fn new(path: PathBuf) -> TempFile {
        TempFile {
            path,
            placed: AtomicBool::new(false),
        }
    }

    /// Renames the file to `to`; from then on it is the caller's, and no longer deleted.
    fn place(&self, to: &Path) -> Result<(), SnapshotError> {
        fs::rename(&self.path, to).map_err(at("rename", &self.path))?;
        self.placed.store(true, Ordering::Relaxed);
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !*self.placed.get_mut() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// A handle to one snapshot's bytes. Cheap to clone; reading never loads it whole.
#[derive(Clone)]
pub struct SnapshotData {
    source: Source,
}

impl std::fmt::Debug for SnapshotData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.source {
            Source::File { path, len, .. } => {
                write!(f, "SnapshotData({}, {len} bytes)", path.display())
            }
            Source::Memory(b) => write!(f, "SnapshotData(memory, {} bytes)", b.len()),
        }
    }
}

impl SnapshotData {
    /// A copy of an in-memory snapshot's bytes.
    #[cfg(test)]
    fn memory_bytes_for_test(&self) -> Vec<u8> {
        match &self.source {
            Source::Memory(b) => b.to_vec(),
            Source::File { path, .. } => fs::read(path).unwrap_or_default(),
        }
    }

    /// No bytes at all: what a failed snapshot build reports when there is no older snapshot.
    pub(crate) fn empty() -> SnapshotData {
        SnapshotData {
            source: Source::Memory(Bytes::new()),
        }
    }

    /// The snapshot's size in bytes.
    pub fn len(&self) -> u64 {
        match &self.source {
            Source::File { len, .. } => *len,
            Source::Memory(b) => b.len() as u64,
        }
    }

    /// Whether the snapshot has no bytes at all (never true for a valid snapshot).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads up to `buf.len()` bytes at `offset`; returns how many were read (0 at the end).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let len = self.len();
        if offset >= len {
            return Ok(0);
        }
        let n = ((len - offset) as usize).min(buf.len());
        match &self.source {
            Source::File { file, .. } => file.read_exact_at(&mut buf[..n], offset)?,
            Source::Memory(b) => buf[..n].copy_from_slice(&b[offset as usize..offset as usize + n]),
        }
        Ok(n)
    }

    /// A sequential reader over the bytes in `[start, end)`.
    fn reader(&self, start: u64, end: u64) -> RangeReader<'_> {
        RangeReader {
            data: self,
            pos: start,
            end: end.min(self.len()),
        }
    }

    /// The error for a failed read of this snapshot. A disk error is not damage: for a file it
    /// is the failed read of that file; only a file that ends before its size is corrupt.
    fn read_error(&self, e: io::Error) -> SnapshotError {
        match &self.source {
            Source::File { path, .. } if e.kind() != io::ErrorKind::UnexpectedEof => {
                SnapshotError::Io(at("read", path)(e))
            }
            _ => SnapshotError::Corrupt {
                what: self.describe(),
                reason: format!("ended early: {e}"),
            },
        }
    }

    fn describe(&self) -> String {
        match &self.source {
            Source::File { path, .. } => path.display().to_string(),
            Source::Memory(_) => "received in memory".to_string(),
        }
    }

    /// The bytes of a snapshot held in memory (`None` for a file).
    #[cfg(feature = "testing")]
    pub(crate) fn memory_bytes(&self) -> Option<&Bytes> {
        match &self.source {
            Source::Memory(b) => Some(b),
            Source::File { .. } => None,
        }
    }

    /// Opens the snapshot file at `path` (not yet verified: see [`parse`]).
    pub(crate) fn from_file(path: PathBuf) -> Result<SnapshotData, SnapshotError> {
        let file = File::open(&path).map_err(at("open", &path))?;
        let len = file.metadata().map_err(at("stat", &path))?.len();
        Ok(SnapshotData {
            source: Source::File {
                file: Arc::new(file),
                path,
                len,
                received: None,
            },
        })
    }

    /// A snapshot just received into `file`, deleted with its last handle unless placed.
    fn received(file: TempFile) -> Result<SnapshotData, SnapshotError> {
        let mut data = SnapshotData::from_file(file.path.clone())?;
        let guard = Arc::new(file);
        if let Source::File { received, .. } = &mut data.source {
            *received = Some(guard);
        }
        Ok(data)
    }
}

struct RangeReader<'a> {
    data: &'a SnapshotData,
    pos: u64,
    end: u64,
}

impl Read for RangeReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = ((self.end - self.pos) as usize).min(buf.len());
        if want == 0 {
            return Ok(0);
        }
        let n = self.data.read_at(self.pos, &mut buf[..want])?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// The apply layer's replicated state besides the session table, kept in a snapshot's header
/// after the fields of earlier versions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ApplyExtra {
    /// The time of the last timed entry applied (ms since the epoch; 0: none).
    pub time_ms: u64,
    /// Each member's bound incarnation (see [`crate::incarnation`]).
    pub bindings: std::collections::BTreeMap<crate::types::NodeId, u64>,
}

/// The part of a snapshot raftkit itself writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Header {
    last_log_id: Option<DiskLogId>,
    membership: DiskStoredMembership,
    sessions: SessionTable,
}

/// A verified snapshot: its metadata, cluster, session table and where the user's bytes are.
pub(crate) struct Parsed {
    pub meta: SnapshotMeta,
    /// The cluster the snapshot belongs to; `None` for the first format, or a writer that had
    /// no cluster id yet.
    pub cluster: Option<ClusterId>,
    pub sessions: SessionTable,
    /// The crc32c in the trailer (verified).
    pub checksum: u32,
    /// The applied time and incarnation bindings (empty if the snapshot predates them).
    pub extra: ApplyExtra,
    user_start: u64,
    user_end: u64,
}

impl Parsed {
    /// A reader over the user's part of `data` (the data this was parsed from).
    pub fn user_data<'a>(&self, data: &'a SnapshotData) -> impl Read + 'a {
        data.reader(self.user_start, self.user_end)
    }
}

/// The fixed-size start of a snapshot: which format, which cluster, how long the header is.
struct Prefix {
    len: u64,
    cluster: Option<ClusterId>,
    header_len: u32,
}

/// Decodes the fixed-size start of a snapshot from its first bytes (fewer if it is shorter).
fn parse_prefix(head: &[u8]) -> Result<Prefix, String> {
    let magic = head.get(..8).ok_or("shorter than its magic")?;
    let (len, cluster) = if magic == MAGIC_V1 {
        (PREFIX_V1, None)
    } else if magic == MAGIC_V2 {
        let field = head.get(8..25).ok_or("ends inside its cluster id")?;
        let mut id = [0u8; 16];
        id.copy_from_slice(&field[1..]);
        let cluster = match field[0] {
            0 => None,
            1 => Some(ClusterId::from(u128::from_le_bytes(id))),
            other => return Err(format!("bad cluster id flag {other}")),
        };
        (PREFIX_V2, cluster)
    } else {
        return Err("not a raftkit snapshot (bad magic)".into());
    };
    let l = head
        .get(len as usize - 4..len as usize)
        .ok_or("ends inside its header length")?;
    let header_len = u32::from_le_bytes([l[0], l[1], l[2], l[3]]);
    Ok(Prefix {
        len,
        cluster,
        header_len,
    })
}

/// Verifies `data`'s checksum and decodes its header.
pub(crate) fn parse(data: &SnapshotData) -> Result<Parsed, SnapshotError> {
    let corrupt = |reason: String| SnapshotError::Corrupt {
        what: data.describe(),
        reason,
    };
    let io_err = |e: io::Error| data.read_error(e);
    let len = data.len();
    let mut head = [0u8; PREFIX_V2 as usize];
    let got = data.read_at(0, &mut head).map_err(io_err)?;
    let prefix = parse_prefix(&head[..got]).map_err(corrupt)?;
    if len < prefix.len + TRAILER_LEN {
        return Err(corrupt(format!("only {len} bytes")));
    }
    // Checksum of everything but the trailer, streamed.
    let mut crc = 0u32;
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    let body_end = len - TRAILER_LEN;
    while pos < body_end {
        let want = ((body_end - pos) as usize).min(buf.len());
        let n = data.read_at(pos, &mut buf[..want]).map_err(io_err)?;
        if n == 0 {
            return Err(corrupt("ended early".into()));
        }
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        pos += n as u64;
    }
    drop(buf);
    let mut trailer = [0u8; 4];
    data.read_at(body_end, &mut trailer).map_err(io_err)?;
    if u32::from_le_bytes(trailer) != crc {
        return Err(corrupt("checksum mismatch".into()));
    }

    let header_len = prefix.header_len;
    let user_start = prefix.len + header_len as u64;
    if header_len > MAX_HEADER || user_start > body_end {
        return Err(corrupt(format!("header length {header_len} does not fit")));
    }
    let mut header_bytes = vec![0u8; header_len as usize];
    data.read_at(prefix.len, &mut header_bytes)
        .map_err(io_err)?;
    let (header, rest): (Header, &[u8]) = codec::decode_prefix(&header_bytes)
        .map_err(|e| corrupt(format!("undecodable header: {e}")))?;
    let mut extra = ApplyExtra::default();
    if !rest.is_empty() {
        let (time_ms, rest): (u64, &[u8]) =
            codec::decode_prefix(rest).map_err(|e| corrupt(format!("undecodable time: {e}")))?;
        extra.time_ms = time_ms;
        if !rest.is_empty() {
            extra.bindings = codec::decode(rest)
                .map_err(|e| corrupt(format!("undecodable incarnations: {e}")))?;
        }
    }
    let last_membership = header
        .membership
        .to_stored()
        .map_err(|e| corrupt(format!("membership: {e}")))?;
    Ok(Parsed {
        meta: SnapshotMeta {
            last_log_id: header.last_log_id.map(LogId::from),
            last_membership,
        },
        cluster: prefix.cluster,
        sessions: header.sessions,
        checksum: crc,
        extra,
        user_start,
        user_end: body_end,
    })
}

/// Refuses a snapshot that names another cluster than `ours`, with
/// [`SnapshotError::WrongCluster`]. A snapshot that names no cluster (the first format) is
/// accepted. With `adopt`, a node without a cluster id takes the snapshot's (durably, so
/// blocking); without, it accepts it for now.
fn check_cluster(
    ours: &ClusterIdentity,
    what: &SnapshotData,
    theirs: Option<ClusterId>,
    adopt: bool,
) -> Result<(), SnapshotError> {
    let Some(theirs) = theirs else {
        return Ok(());
    };
    let wrong = |ours| SnapshotError::WrongCluster {
        what: what.describe(),
        ours,
        theirs,
    };
    match ours.get() {
        Some(ours) if ours == theirs => Ok(()),
        Some(ours) => Err(wrong(ours)),
        None if !adopt => Ok(()),
        None => ours.adopt(theirs).map_err(|e| match e {
            ClusterIdError::Mismatch { ours, .. } => wrong(ours),
            e => SnapshotError::ClusterId(e),
        }),
    }
}

/// A `Write` that checksums and counts what passes through it, and keeps the first error of
/// the writer it wraps: what the state machine's `write_snapshot` makes of that error, the
/// writer's own is what is reported.
struct CrcWriter<W> {
    inner: W,
    crc: u32,
    bytes: u64,
    failed: Option<io::Error>,
}

impl<W> CrcWriter<W> {
    fn new(inner: W) -> CrcWriter<W> {
        CrcWriter {
            inner,
            crc: 0,
            bytes: 0,
            failed: None,
        }
    }

    /// Keeps `e` if it is the writer's first error, and hands a copy of it on.
    fn keep(&mut self, e: io::Error) -> io::Error {
        // An interrupted write wrote nothing and is retried (`write_all` does): not a failure.
        if e.kind() == io::ErrorKind::Interrupted {
            return e;
        }
        let copy = io::Error::new(e.kind(), e.to_string());
        self.failed.get_or_insert(e);
        copy
    }
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf).map_err(|e| self.keep(e))?;
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush().map_err(|e| self.keep(e))
    }
}

/// Why writing a snapshot's bytes failed.
#[derive(Debug)]
pub(crate) enum WriteError {
    /// The writer the snapshot goes to failed (a disk error, a reader that left); the caller
    /// knows what that writer is.
    Output(io::Error),
    /// Anything else: the state machine's `write_snapshot`, or the header.
    Snapshot(SnapshotError),
}

impl WriteError {
    /// The error, with a failed output named as the file at `path`.
    fn at_file(self, path: &Path) -> SnapshotError {
        match self {
            WriteError::Output(e) => SnapshotError::Io(at("write", path)(e)),
            WriteError::Snapshot(e) => e,
        }
    }
}

/// Writes a complete snapshot to `out`: magic, cluster id, header, user data, checksum.
fn write_snapshot_bytes<W: Write>(
    out: W,
    cluster: Option<ClusterId>,
    meta: &SnapshotMeta,
    sessions: &SessionTable,
    extra: &ApplyExtra,
    write_user: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> Result<W, WriteError> {
    write_checksummed(out, cluster, meta, sessions, extra, write_user).map(|w| w.out)
}

/// What [`write_checksummed`] wrote: the writer back, the checksum in the trailer and the size.
pub(crate) struct Written<W> {
    pub out: W,
    pub checksum: u32,
    pub bytes: u64,
}

/// [`write_snapshot_bytes`], also returning the checksum it wrote in the trailer and the size.
/// A failure of `out` is [`WriteError::Output`], even when it reaches `write_user` first.
pub(crate) fn write_checksummed<W: Write>(
    out: W,
    cluster: Option<ClusterId>,
    meta: &SnapshotMeta,
    sessions: &SessionTable,
    extra: &ApplyExtra,
    write_user: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> Result<Written<W>, WriteError> {
    let header = Header {
        last_log_id: meta.last_log_id.as_ref().map(DiskLogId::from),
        membership: DiskStoredMembership::from(&meta.last_membership),
        sessions: sessions.clone(),
    };
    let encoding = |e| WriteError::Snapshot(SnapshotError::StateMachine(io::Error::other(e)));
    let mut header_bytes = codec::encode(&header).map_err(encoding)?;
    codec::encode_into(&extra.time_ms, &mut header_bytes)
        .and_then(|()| codec::encode_into(&extra.bindings, &mut header_bytes))
        .map_err(encoding)?;
    let header_len = u32::try_from(header_bytes.len())
        .ok()
        .filter(|l| *l <= MAX_HEADER)
        .ok_or_else(|| {
            WriteError::Snapshot(SnapshotError::StateMachine(io::Error::other(
                "snapshot header is too large",
            )))
        })?;
    let mut w = CrcWriter::new(out);
    let written = (|| {
        w.write_all(MAGIC_V2)?;
        w.write_all(&[u8::from(cluster.is_some())])?;
        w.write_all(&cluster.map_or(0, ClusterId::as_u128).to_le_bytes())?;
        w.write_all(&header_len.to_le_bytes())?;
        w.write_all(&header_bytes)
    })();
    written.map_err(|e| WriteError::Output(w.failed.take().unwrap_or(e)))?;
    if let Err(e) = write_user(&mut w) {
        return Err(match w.failed.take() {
            Some(output) => WriteError::Output(output),
            None => WriteError::Snapshot(SnapshotError::StateMachine(e)),
        });
    }
    // A state machine that went on past a failed write (ignored its error) would leave bytes
    // out that the checksum, taken over what was written, cannot notice.
    if let Some(output) = w.failed.take() {
        return Err(WriteError::Output(output));
    }
    let (crc, bytes) = (w.crc, w.bytes + TRAILER_LEN);
    let mut inner = w.inner;
    inner
        .write_all(&crc.to_le_bytes())
        .and_then(|()| inner.flush())
        .map_err(WriteError::Output)?;
    Ok(Written {
        out: inner,
        checksum: crc,
        bytes,
    })
}

#[derive(Clone)]
struct Current {
    seq: u64,
    meta: SnapshotMeta,
    data: SnapshotData,
}

/// Where a node keeps its snapshots: a directory, or memory.
pub(crate) struct SnapshotStore {
    dir: Option<PathBuf>,
    current: Mutex<Option<Current>>,
    loaded: Mutex<bool>,
    next_seq: AtomicU64,
    /// This store's number in the names of its temporary files (see [`RECEIVED`]).
    instance: u64,
    max_receive: u64,
    /// Set while a [`SnapshotSink`] is open: one receive at a time.
    receiving: Arc<AtomicBool>,
    /// The node's cluster: written into every snapshot, checked against every one read.
    cluster: Arc<ClusterIdentity>,
    /// Held from a snapshot's rename into place until older ones are deleted: a build and an
    /// install finishing at once would otherwise each delete the other's file, the current one
    /// included.
    placing: Mutex<()>,
    /// Set by [`SnapshotStore::close`]: nothing is placed or deleted any more.
    closed: AtomicBool,
}

/// A snapshot [`SnapshotStore::write`] has built, before it is placed.
enum Built<'a> {
    /// The bytes of a snapshot kept in memory.
    Memory(Vec<u8>),
    /// A temporary file in `dir`, written and fsynced, to be renamed into place.
    File { dir: &'a Path, tmp: TempFile },
}

fn seq_of(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SUFFIX)?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

impl SnapshotStore {
    /// A store in `dir` (created if missing) for a node of `cluster`. Temporary files left by a
    /// crash are removed, and the directory is fsynced before the store is used: a snapshot
    /// renamed into place just before a crash of the process is durable once this returns.
    pub fn open(
        dir: &Path,
        max_receive: u64,
        cluster: Arc<ClusterIdentity>,
    ) -> Result<SnapshotStore, SnapshotError> {
        fsutil::ensure_dir(dir)?;
        let mut max_seq = 0;
        for entry in fs::read_dir(dir).map_err(at("list", dir))? {
            let entry = entry.map_err(at("list", dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(seq) = seq_of(name) {
                max_seq = max_seq.max(seq);
            } else if name.ends_with(".tmp") {
                fsutil::remove_if_present(&entry.path())?;
            }
        }
        // A crash can come between a snapshot's rename and the directory fsync that makes the
        // rename durable. The file's bytes were fsynced before the rename, so this fsync is what
        // stands between the node using that snapshot (and purging its log up to it) and a power
        // loss taking the snapshot away.
        fsutil::sync_dir(dir)?;
        Ok(SnapshotStore {
            dir: Some(dir.to_path_buf()),
            current: Mutex::new(None),
            loaded: Mutex::new(false),
            next_seq: AtomicU64::new(max_seq + 1),
            instance: STORES.fetch_add(1, Ordering::Relaxed),
            max_receive,
            receiving: Arc::default(),
            cluster,
            placing: Mutex::new(()),
            closed: AtomicBool::new(false),
        })
    }

    /// A store for a node of `cluster` that keeps its one snapshot in memory.
    pub fn memory(max_receive: u64, cluster: Arc<ClusterIdentity>) -> SnapshotStore {
        SnapshotStore {
            dir: None,
            current: Mutex::new(None),
            loaded: Mutex::new(true),
            next_seq: AtomicU64::new(1),
            instance: STORES.fetch_add(1, Ordering::Relaxed),
            max_receive,
            receiving: Arc::default(),
            cluster,
            placing: Mutex::new(()),
            closed: AtomicBool::new(false),
        }
    }

    /// Stops placing and deleting snapshot files, once a placement under way has finished: a
    /// build or an install that outlives the node's shutdown (openraft does not wait for them)
    /// leaves the directory as it was, so a node started on it next is not raced. Blocking.
    pub fn close(&self) {
        let _placing = crate::sync::lock(&self.placing);
        self.closed.store(true, Ordering::Release);
    }

    /// [`SnapshotError::Closed`] once [`SnapshotStore::close`] has run. Checked with the
    /// placing lock held, and before deleting anything.
    fn check_open(&self) -> Result<(), SnapshotError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(SnapshotError::Closed);
        }
        Ok(())
    }

    /// Refuses a snapshot that names another cluster than this node's; see [`check_cluster`].
    pub fn check_cluster(
        &self,
        what: &SnapshotData,
        theirs: Option<ClusterId>,
        adopt: bool,
    ) -> Result<(), SnapshotError> {
        check_cluster(&self.cluster, what, theirs, adopt)
    }

    fn current_lock(&self) -> MutexGuard<'_, Option<Current>> {
        crate::sync::lock(&self.current)
    }

    /// The size of the current snapshot in bytes (0 if there is none, or it is not loaded yet).
    pub fn current_len(&self) -> u64 {
        self.current_lock().as_ref().map_or(0, |c| c.data.len())
    }

    /// The current snapshot, loading and verifying it from disk on first use.
    pub fn current(&self) -> Result<Option<(SnapshotMeta, SnapshotData)>, SnapshotError> {
        let mut loaded = crate::sync::lock(&self.loaded);
        if !*loaded {
            if let Some(dir) = &self.dir {
                let newest = self.newest_on_disk(dir)?;
                let mut cur = self.current_lock();
                if cur.is_none() {
                    *cur = newest;
                }
            }
            *loaded = true;
        }
        Ok(self
            .current_lock()
            .as_ref()
            .map(|c| (c.meta.clone(), c.data.clone())))
    }

    /// The snapshot to restore after a restart: the one covering the most of the log, not the one
    /// written last. A slow build can finish (and be renamed into place) after a newer snapshot
    /// was installed, and a crash can come before the older file is purged. The others are
    /// removed.
    fn newest_on_disk(&self, dir: &Path) -> Result<Option<Current>, SnapshotError> {
        let mut best: Option<Current> = None;
        for entry in fs::read_dir(dir).map_err(at("list", dir))? {
            let entry = entry.map_err(at("list", dir))?;
            let Some(seq) = entry.file_name().to_str().and_then(seq_of) else {
                continue;
            };
            let data = SnapshotData::from_file(entry.path())?;
            let parsed = parse(&data)?;
            // Before anything is chosen or purged: a foreign file stops the start, and the
            // node's own snapshots stay where they are.
            self.check_cluster(&data, parsed.cluster, false)?;
            let meta = parsed.meta;
            let key = (meta.last_log_id, seq);
            if best
                .as_ref()
                .is_none_or(|b| key > (b.meta.last_log_id, b.seq))
            {
                best = Some(Current { seq, meta, data });
            }
        }
        self.remove_all_but(dir, best.as_ref().map(|b| b.seq))?;
        Ok(best)
    }

    /// Writes a new snapshot and makes it current (unless a newer one became current meanwhile).
    /// Blocking: call from a blocking thread.
    pub fn write(
        &self,
        meta: &SnapshotMeta,
        sessions: &SessionTable,
        extra: &ApplyExtra,
        write_user: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> Result<SnapshotData, SnapshotError> {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        // Built outside the placing lock: writing a large state takes long, placing it does not.
        let built = match &self.dir {
            // Writing into memory cannot fail; whatever fails is the state machine's.
            None => Built::Memory(
                write_snapshot_bytes(
                    Vec::new(),
                    self.cluster.get(),
                    meta,
                    sessions,
                    extra,
                    write_user,
                )
                .map_err(|e| match e {
                    WriteError::Output(e) => SnapshotError::StateMachine(e),
                    WriteError::Snapshot(e) => e,
                })?,
            ),
            Some(dir) => {
                let tmp = TempFile::new(self.temp_path(dir, BUILDING, seq));
                let file = File::create(&tmp.path).map_err(at("create", &tmp.path))?;
                let out = BufWriter::new(file);
                let result = write_snapshot_bytes(
                    out,
                    self.cluster.get(),
                    meta,
                    sessions,
                    extra,
                    write_user,
                )
                .map_err(|e| e.at_file(&tmp.path))
                .and_then(|w| {
                    let file = w
                        .into_inner()
                        .map_err(|e| at("write", &tmp.path)(e.into_error()))?;
                    file.sync_all().map_err(at("fsync", &tmp.path))?;
                    Ok(())
                });
                // On failure the temporary file goes with `tmp`; so it does if the state
                // machine's `write_snapshot` panics.
                result?;
                Built::File { dir, tmp }
            }
        };
        let _placing = crate::sync::lock(&self.placing);
        // A store closed meanwhile places nothing; the built file goes with `built`.
        self.check_open()?;
        let data = match built {
            Built::Memory(bytes) => SnapshotData {
                source: Source::Memory(Bytes::from(bytes)),
            },
            Built::File { dir, tmp } => {
                let fin = dir.join(format!("{seq:020}{SUFFIX}"));
                tmp.place(&fin)?;
                fsutil::sync_dir(dir)?;
                SnapshotData::from_file(fin)?
            }
        };
        self.make_current(seq, meta.clone(), data.clone())?;
        Ok(data)
    }

    /// Makes a verified snapshot (built here or received from a leader) the current one: a
    /// received file is moved into place; older snapshots are deleted.
    pub fn adopt(&self, meta: &SnapshotMeta, data: SnapshotData) -> Result<(), SnapshotError> {
        if let Some(c) = self.current_lock().as_ref()
            && Self::same_file(&c.data, &data)
        {
            return Ok(());
        }
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let _placing = crate::sync::lock(&self.placing);
        // A received file that will never be placed goes with its last handle (`TempFile`).
        self.check_open()?;
        let data = match (&self.dir, &data.source) {
            (Some(dir), Source::File { path, received, .. }) => {
                let fin = dir.join(format!("{seq:020}{SUFFIX}"));
                match received {
                    Some(file) => file.place(&fin)?,
                    None => fs::rename(path, &fin).map_err(at("rename", path))?,
                }
                fsutil::sync_dir(dir)?;
                SnapshotData::from_file(fin)?
            }
            (Some(dir), Source::Memory(bytes)) => {
                let fin = format!("{seq:020}{SUFFIX}");
                fsutil::write_atomically(dir, &fin, bytes)?;
                SnapshotData::from_file(dir.join(fin))?
            }
            (None, _) => data,
        };
        self.make_current(seq, meta.clone(), data)
    }

    fn same_file(a: &SnapshotData, b: &SnapshotData) -> bool {
        match (&a.source, &b.source) {
            (Source::File { path: p1, .. }, Source::File { path: p2, .. }) => p1 == p2,
            (Source::Memory(x), Source::Memory(y)) => {
                x.as_ptr() == y.as_ptr() && x.len() == y.len()
            }
            _ => false,
        }
    }

    fn make_current(
        &self,
        seq: u64,
        meta: SnapshotMeta,
        data: SnapshotData,
    ) -> Result<(), SnapshotError> {
        let mut cur = self.current_lock();
        let newer = match cur.as_ref() {
            None => true,
            Some(c) => meta.last_log_id >= c.meta.last_log_id,
        };
        if newer {
            *cur = Some(Current { seq, meta, data });
        }
        let keep = cur.as_ref().map(|c| c.seq);
        drop(cur);
        if let Some(dir) = &self.dir {
            self.remove_all_but(dir, keep)?;
        }
        Ok(())
    }

    /// The temporary file of this store's snapshot `seq` in `dir`, being built or received
    /// (`kind`).
    fn temp_path(&self, dir: &Path, kind: &str, seq: u64) -> PathBuf {
        dir.join(format!("{kind}{}-{seq:020}.tmp", self.instance))
    }

    /// Deletes every snapshot but `keep`, and makes the deletions durable: a restart must not
    /// find a purged snapshot again.
    fn remove_all_but(&self, dir: &Path, keep: Option<u64>) -> Result<(), SnapshotError> {
        if self.check_open().is_err() {
            return Ok(());
        }
        let mut removed = false;
        for entry in fs::read_dir(dir).map_err(at("list", dir))? {
            let entry = entry.map_err(at("list", dir))?;
            if let Some(seq) = entry.file_name().to_str().and_then(seq_of)
                && Some(seq) != keep
            {
                removed |= fsutil::remove_if_present(&entry.path())?;
            }
        }
        if removed {
            fsutil::sync_dir(dir)?;
        }
        Ok(())
    }

    /// A sink to receive a snapshot into, of `size` bytes if the sender announced it. Fails with
    /// [`SnapshotError::Busy`] while another sink is open, and before anything is written with
    /// [`SnapshotError::TooLarge`] or [`SnapshotError::NoSpace`] for an announced size over the
    /// limit or beyond the free disk space.
    pub fn sink(&self, size: Option<u64>) -> Result<SnapshotSink, SnapshotError> {
        if let Some(size) = size {
            if size > self.max_receive {
                return Err(SnapshotError::TooLarge {
                    limit: self.max_receive,
                });
            }
            if let Some(dir) = &self.dir {
                let available = free_bytes(dir)?;
                if size.saturating_add(RECEIVE_MARGIN) > available {
                    return Err(SnapshotError::NoSpace { size, available });
                }
            }
        }
        if self.receiving.swap(true, Ordering::AcqRel) {
            return Err(SnapshotError::Busy);
        }
        let permit = ReceivePermit(self.receiving.clone());
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let target = match &self.dir {
            None => SinkTarget::Memory(Vec::new()),
            Some(dir) => {
                let tmp = TempFile::new(self.temp_path(dir, RECEIVED, seq));
                let file = File::create(&tmp.path).map_err(at("create", &tmp.path))?;
                SinkTarget::File {
                    writer: BufWriter::with_capacity(1 << 20, file),
                    tmp,
                }
            }
        };
        Ok(SnapshotSink {
            target,
            written: 0,
            limit: size.unwrap_or(self.max_receive).min(self.max_receive),
            announced: size,
            cluster: self.cluster.clone(),
            _permit: permit,
        })
    }
}

/// Free bytes (for an unprivileged writer) on the file system holding `dir`.
fn free_bytes(dir: &Path) -> Result<u64, SnapshotError> {
    let st = rustix::fs::statvfs(dir).map_err(|e| at("statvfs", dir)(e.into()))?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Held by an open sink; lets the next receive start once dropped.
struct ReceivePermit(Arc<AtomicBool>);

impl Drop for ReceivePermit {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

enum SinkTarget {
    /// A temporary file, deleted unless the finished snapshot is placed.
    File {
        writer: BufWriter<File>,
        tmp: TempFile,
    },
    Memory(Vec<u8>),
}

/// Receives a snapshot's bytes, in order, from a transport.
///
/// Write the chunks with [`SnapshotSink::write`], then call [`SnapshotSink::finish`], which makes
/// the bytes durable and verifies their checksum. A sink dropped before `finish` deletes what it
/// received.
pub struct SnapshotSink {
    target: SinkTarget,
    written: u64,
    limit: u64,
    announced: Option<u64>,
    cluster: Arc<ClusterIdentity>,
    _permit: ReceivePermit,
}

impl SnapshotSink {
    /// Bytes received so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Appends the next chunk. Fails if the total would exceed the node's snapshot size limit.
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), SnapshotError> {
        let total = self.written + chunk.len() as u64;
        if let Some(announced) = self.announced
            && total > announced
        {
            return Err(SnapshotError::LongerThanAnnounced { announced });
        }
        if total > self.limit {
            return Err(SnapshotError::TooLarge { limit: self.limit });
        }
        match &mut self.target {
            SinkTarget::Memory(v) => v.extend_from_slice(chunk),
            SinkTarget::File { writer, tmp } => {
                writer.write_all(chunk).map_err(at("write", &tmp.path))?;
            }
        }
        self.written = total;
        Ok(())
    }

    /// Makes the received bytes durable, verifies them and returns the snapshot. A snapshot that
    /// names another cluster than this node's is refused with [`SnapshotError::WrongCluster`]
    /// (and its bytes deleted).
    pub fn finish(self) -> Result<(SnapshotMeta, SnapshotData), SnapshotError> {
        let data = match self.target {
            SinkTarget::Memory(v) => SnapshotData {
                source: Source::Memory(Bytes::from(v)),
            },
            SinkTarget::File { writer, tmp } => {
                let file = writer
                    .into_inner()
                    .map_err(|e| at("write", &tmp.path)(e.into_error()))?;
                file.sync_all().map_err(at("fsync", &tmp.path))?;
                // From here the file belongs to the returned handle: renamed into place on
                // install, deleted with the handle's last clone otherwise.
                SnapshotData::received(tmp)?
            }
        };
        let parsed = parse(&data)?;
        check_cluster(&self.cluster, &data, parsed.cluster, false)?;
        Ok((parsed.meta, data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types;
    use crate::types::StoredMembership;

    /// A store for a node that has no cluster id yet.
    fn open_store(dir: &Path, max_receive: u64) -> Result<SnapshotStore, SnapshotError> {
        let cluster = Arc::new(ClusterIdentity::open(None).unwrap());
        SnapshotStore::open(dir, max_receive, cluster)
    }

    fn meta(index: u64) -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: Some(types::log_id(1, 1, index)),
            last_membership: StoredMembership::default(),
        }
    }

    fn write(store: &SnapshotStore, index: u64, body: &[u8]) -> SnapshotData {
        store
            .write(
                &meta(index),
                &SessionTable::default(),
                &ApplyExtra::default(),
                |w| w.write_all(body),
            )
            .unwrap()
    }

    fn body(data: &SnapshotData) -> Vec<u8> {
        let parsed = parse(data).unwrap();
        let mut out = Vec::new();
        parsed.user_data(data).read_to_end(&mut out).unwrap();
        out
    }

    /// A writer that takes `room` bytes, then fails as a full disk does.
    struct Full {
        room: usize,
    }

    impl Write for Full {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::Error::from(io::ErrorKind::StorageFull));
            }
            let n = buf.len().min(self.room);
            self.room -= n;
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_failing_output_is_not_the_state_machines_fault_and_is_named() {
        let write = |room: usize, user: fn(&mut dyn Write) -> io::Result<()>| {
            write_snapshot_bytes(
                Full { room },
                None,
                &meta(1),
                &SessionTable::default(),
                &ApplyExtra::default(),
                user,
            )
            .map(drop)
        };
        // The state machine's serialiser turns the writer's error into one of its own: the
        // writer's is still the one reported, as is a failure while writing the header.
        let rewords: fn(&mut dyn Write) -> io::Result<()> = |w| {
            w.write_all(&[7; 4096])
                .map_err(|_| io::Error::other("the serialize buffer is full"))
        };
        for room in [0, 10, 200, 4100] {
            match write(room, rewords) {
                Err(WriteError::Output(e)) => assert_eq!(e.kind(), io::ErrorKind::StorageFull),
                other => panic!("room {room}: {other:?}"),
            }
        }
        let path = Path::new("/data/snapshots/build-1.tmp");
        match write(0, rewords).unwrap_err().at_file(path) {
            SnapshotError::Io(e) => assert_eq!((e.op, e.path.as_path()), ("write", path)),
            other => panic!("{other:?}"),
        }
        // A failure of the state machine itself stays the state machine's.
        let fails: fn(&mut dyn Write) -> io::Result<()> = |_| Err(io::Error::other("no"));
        match write(1 << 20, fails) {
            Err(WriteError::Snapshot(SnapshotError::StateMachine(_))) => {}
            other => panic!("{other:?}"),
        }
        // An output that fails one large write, with `kind`, and takes everything else.
        struct FailsOnce(io::ErrorKind, bool);
        impl Write for FailsOnce {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                if buf.len() >= 4096 && !self.1 {
                    self.1 = true;
                    return Err(io::Error::from(self.0));
                }
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let write_once_failing = |kind, user: fn(&mut dyn Write) -> io::Result<()>| {
            write_snapshot_bytes(
                FailsOnce(kind, false),
                None,
                &meta(1),
                &SessionTable::default(),
                &ApplyExtra::default(),
                user,
            )
        };
        // A state machine that ignores the writer's error and reports success: the bytes lost
        // are not in the checksum, so only the recorded failure can tell.
        let ignores: fn(&mut dyn Write) -> io::Result<()> = |w| {
            let _ = w.write_all(&[7; 4096]);
            w.write_all(&[8; 16])
        };
        match write_once_failing(io::ErrorKind::StorageFull, ignores) {
            Err(WriteError::Output(e)) => assert_eq!(e.kind(), io::ErrorKind::StorageFull),
            other => panic!("{:?}", other.map(|w| w.1)),
        }
        // An interrupted write wrote nothing and `write_all` retries it: not a failure.
        let retried = write_once_failing(io::ErrorKind::Interrupted, |w| w.write_all(&[7; 4096]));
        assert!(
            retried.is_ok_and(|w| w.1),
            "the interrupted write was retried"
        );
    }

    /// A store shut down in this process may still be building: its temporary file can vanish
    /// between the next store's listing and its cleanup. That must not stop the next store.
    #[test]
    fn a_temporary_file_removed_by_its_owner_during_open_does_not_fail_the_open() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join(format!("{BUILDING}{}-1.tmp", u64::MAX));
        let stop = Arc::new(AtomicBool::new(false));
        let owner = {
            let (tmp, stop) = (tmp.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let _ = File::create(&tmp);
                    let _ = fs::remove_file(&tmp);
                }
            })
        };
        let failed = (0..2_000)
            .filter_map(|_| open_store(dir.path(), 0).err())
            .map(|e| e.to_string())
            .collect::<Vec<_>>();
        stop.store(true, Ordering::Relaxed);
        owner.join().unwrap();
        assert!(
            failed.is_empty(),
            "{} of 2000 opens failed: {:?}",
            failed.len(),
            failed.first()
        );
    }

    #[test]
    fn a_failed_read_is_an_io_error_naming_the_file_not_corruption() {
        let dir = tempfile::tempdir().unwrap();
        // Reading a directory fails (EISDIR) as a failing disk would: not with bytes.
        let data = SnapshotData {
            source: Source::File {
                file: Arc::new(File::open(dir.path()).unwrap()),
                path: dir.path().to_path_buf(),
                len: 100,
                received: None,
            },
        };
        match parse(&data) {
            Err(SnapshotError::Io(e)) => {
                assert_eq!((e.op, e.path.as_path()), ("read", dir.path()));
                assert_eq!(e.source.kind(), io::ErrorKind::IsADirectory);
            }
            other => panic!("{:?}", other.map(|p| p.checksum)),
        }
    }

    #[test]
    fn a_build_and_an_install_at_the_same_time_keep_the_current_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path(), u64::MAX).unwrap();
        let received = Bytes::from(
            write_snapshot_bytes(
                Vec::new(),
                None,
                &meta(1),
                &SessionTable::default(),
                &ApplyExtra::default(),
                |w| w.write_all(b"received"),
            )
            .unwrap(),
        );
        let rounds = 150;
        let together = std::sync::Barrier::new(3);
        // Failures are collected, not raised where they happen: every thread waits for every
        // round.
        let failures = Mutex::new(Vec::new());
        let fail = |what: String| failures.lock().unwrap().push(what);
        std::thread::scope(|s| {
            s.spawn(|| {
                for i in 0..rounds {
                    together.wait();
                    let built = store.write(
                        &meta(2 * i + 2),
                        &SessionTable::default(),
                        &ApplyExtra::default(),
                        |w| w.write_all(b"built"),
                    );
                    if let Err(e) = built {
                        fail(format!("round {i}: build: {e}"));
                    }
                    together.wait();
                }
            });
            s.spawn(|| {
                for i in 0..rounds {
                    together.wait();
                    let data = SnapshotData {
                        source: Source::Memory(received.clone()),
                    };
                    if let Err(e) = store.adopt(&meta(2 * i + 3), data) {
                        fail(format!("round {i}: install: {e}"));
                    }
                    together.wait();
                }
            });
            // Between rounds, the current snapshot's file is in the directory, alone.
            for i in 0..rounds {
                together.wait();
                together.wait();
                match store.current() {
                    Ok(Some((m, cur))) => {
                        let exists =
                            matches!(&cur.source, Source::File { path, .. } if path.exists());
                        let files = fs::read_dir(dir.path()).map_or(0, |d| d.count());
                        if m != meta(2 * i + 3) || !exists || files != 1 {
                            fail(format!(
                                "round {i}: current {m:?}, its file there: {exists}, {files} files"
                            ));
                        }
                    }
                    other => fail(format!("round {i}: {other:?}")),
                }
            }
        });
        let failures = failures.into_inner().unwrap();
        assert!(
            failures.is_empty(),
            "{} failures: {failures:#?}",
            failures.len()
        );
    }

    #[test]
    fn written_snapshots_verify_and_replace_older_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path(), u64::MAX).unwrap();
        assert!(store.current().unwrap().is_none());
        write(&store, 5, b"five");
        let d = write(&store, 9, b"nine");
        assert_eq!(body(&d), b"nine");
        let files: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(files.len(), 1, "older snapshot deleted");

        let reopened = open_store(dir.path(), u64::MAX).unwrap();
        let (m, d) = reopened.current().unwrap().unwrap();
        assert_eq!(m, meta(9));
        assert_eq!(body(&d), b"nine");
    }

    /// Puts a copy of `data` into `dir` under sequence `seq`, as a crash would leave a file that
    /// was renamed into place but not yet purged.
    fn leave_behind(dir: &Path, seq: u64, data: &SnapshotData) {
        let Source::File { path, .. } = &data.source else {
            panic!("a durable store writes files")
        };
        fs::copy(path, dir.join(format!("{seq:020}{SUFFIX}"))).unwrap();
    }

    #[test]
    fn restart_picks_the_snapshot_covering_the_most_log_not_the_last_written() {
        // A build of index 100 that finished (renamed, higher sequence) after index 200 was
        // installed, then a crash before the purge.
        let dir = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let store = open_store(dir.path(), u64::MAX).unwrap();
        write(&store, 200, b"two hundred");
        let old = write(
            &open_store(other.path(), u64::MAX).unwrap(),
            100,
            b"one hundred",
        );
        leave_behind(dir.path(), 99, &old);

        let reopened = open_store(dir.path(), u64::MAX).unwrap();
        let (m, d) = reopened.current().unwrap().unwrap();
        assert_eq!(m, meta(200));
        assert_eq!(body(&d), b"two hundred");
        let files: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(files.len(), 1, "the stale snapshot is purged on load");

        // Later writes still get sequences above every file seen, and a newer install wins.
        write(&reopened, 300, b"three hundred");
        let again = open_store(dir.path(), u64::MAX).unwrap();
        assert_eq!(again.current().unwrap().unwrap().0, meta(300));
    }

    #[test]
    fn a_crash_between_install_and_purge_keeps_the_installed_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path(), u64::MAX).unwrap();
        let older = write(&store, 50, b"fifty");
        let other = tempfile::tempdir().unwrap();
        let installed = write(&open_store(other.path(), u64::MAX).unwrap(), 80, b"eighty");
        // The installed file is in place; the older one was not purged yet.
        leave_behind(dir.path(), 7, &installed);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
        drop(older);

        let reopened = open_store(dir.path(), u64::MAX).unwrap();
        let (m, d) = reopened.current().unwrap().unwrap();
        assert_eq!(m, meta(80));
        assert_eq!(body(&d), b"eighty");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_flipped_bit_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path(), u64::MAX).unwrap();
        write(&store, 3, &[7u8; 1000]);
        let path = fs::read_dir(dir.path())
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let mut bytes = fs::read(&path).unwrap();
        bytes[500] ^= 1;
        fs::write(&path, &bytes).unwrap();
        let reopened = open_store(dir.path(), u64::MAX).unwrap();
        assert!(matches!(
            reopened.current(),
            Err(SnapshotError::Corrupt { .. })
        ));
    }

    #[test]
    fn received_in_chunks_and_adopted() {
        let src_dir = tempfile::tempdir().unwrap();
        let src = open_store(src_dir.path(), u64::MAX).unwrap();
        let data = write(&src, 4, &[3u8; 10_000]);

        let dst_dir = tempfile::tempdir().unwrap();
        let dst = open_store(dst_dir.path(), u64::MAX).unwrap();
        let mut sink = dst.sink(None).unwrap();
        let mut buf = [0u8; 999];
        let mut off = 0;
        loop {
            let n = data.read_at(off, &mut buf).unwrap();
            if n == 0 {
                break;
            }
            sink.write(&buf[..n]).unwrap();
            off += n as u64;
        }
        let (m, received) = sink.finish().unwrap();
        assert_eq!(m, meta(4));
        dst.adopt(&m, received).unwrap();
        let (_, cur) = dst.current().unwrap().unwrap();
        assert_eq!(body(&cur), vec![3u8; 10_000]);
        let names: Vec<String> = fs::read_dir(dst_dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 1);
        assert!(names[0].ends_with(".snap"), "{names:?}");
    }

    #[test]
    fn a_closed_store_places_and_deletes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path(), u64::MAX).unwrap();
        write(&store, 4, b"kept");
        let before = snap_files(dir.path());
        assert_eq!(before.len(), 1);
        // A received snapshot, whole, waiting to be installed when the node shuts down.
        let other = tempfile::tempdir().unwrap();
        write(&open_store(other.path(), u64::MAX).unwrap(), 9, b"newer");
        let mut sink = store.sink(None).unwrap();
        sink.write(&fs::read(&snap_files(other.path())[0]).unwrap())
            .unwrap();
        let (received_meta, received) = sink.finish().unwrap();

        store.close();
        // A build and an install that finish after the shutdown: neither is placed, and
        // neither deletes the snapshot a restart will read.
        let built = store.write(
            &meta(8),
            &SessionTable::default(),
            &ApplyExtra::default(),
            |w| w.write_all(b"late"),
        );
        assert!(matches!(built, Err(SnapshotError::Closed)), "{built:?}");
        let adopted = store.adopt(&received_meta, received);
        assert!(matches!(adopted, Err(SnapshotError::Closed)), "{adopted:?}");
        assert_eq!(
            snap_files(dir.path()),
            before,
            "the received file is removed, the kept snapshot stays"
        );
        let reopened = open_store(dir.path(), u64::MAX).unwrap();
        let (m, data) = reopened.current().unwrap().unwrap();
        assert_eq!((m, body(&data)), (meta(4), b"kept".to_vec()));
        assert_eq!(
            snap_files(dir.path()),
            before,
            "a restart keeps the directory as it was"
        );
    }

    #[test]
    fn abandoned_or_oversized_receives_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path(), 100).unwrap();
        let mut sink = store.sink(None).unwrap();
        sink.write(&[1u8; 60]).unwrap();
        assert!(matches!(
            sink.write(&[1u8; 60]),
            Err(SnapshotError::TooLarge { limit: 100 })
        ));
        drop(sink);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);

        let mut sink = store.sink(None).unwrap();
        sink.write(b"garbage that is not a snapshot").unwrap();
        assert!(matches!(sink.finish(), Err(SnapshotError::Corrupt { .. })));
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_received_snapshot_never_installed_takes_no_disk_once_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path(), u64::MAX).unwrap();
        let other = tempfile::tempdir().unwrap();
        write(&open_store(other.path(), u64::MAX).unwrap(), 9, b"sent");
        let bytes = fs::read(&snap_files(other.path())[0]).unwrap();
        let receive = || {
            let mut sink = store.sink(None).unwrap();
            sink.write(&bytes).unwrap();
            sink.finish().unwrap()
        };
        // Received whole, then refused by a later check, or not needed: every handle dropped.
        let (_, data) = receive();
        let clone = data.clone();
        drop(data);
        assert_eq!(snap_files(dir.path()).len(), 1, "a clone still reads it");
        drop(clone);
        assert_eq!(snap_files(dir.path()), Vec::<PathBuf>::new());
        // Received and installed: placed, and kept once the received handle is gone.
        let (received_meta, data) = receive();
        store.adopt(&received_meta, data).unwrap();
        let placed = snap_files(dir.path());
        assert_eq!(placed.len(), 1);
        assert!(placed[0].to_string_lossy().ends_with(SUFFIX), "{placed:?}");
        let reopened = open_store(dir.path(), u64::MAX).unwrap();
        let (m, data) = reopened.current().unwrap().unwrap();
        assert_eq!((m, body(&data)), (meta(9), b"sent".to_vec()));
    }

    #[test]
    fn a_panicking_write_snapshot_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path(), u64::MAX).unwrap();
        let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            store.write(
                &meta(3),
                &SessionTable::default(),
                &ApplyExtra::default(),
                |w| {
                    w.write_all(&[7u8; 100_000])?;
                    panic!("a state machine's write_snapshot panics");
                },
            )
        }));
        assert!(built.is_err(), "the panic reaches the caller");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
        // The store goes on: the next build is placed.
        write(&store, 4, b"after");
        assert_eq!(snap_files(dir.path()).len(), 1);
    }

    #[test]
    fn a_shut_down_stores_receive_leaves_the_next_stores_files_alone() {
        let dir = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        write(&open_store(other.path(), u64::MAX).unwrap(), 9, b"sent");
        let bytes = fs::read(&snap_files(other.path())[0]).unwrap();
        // A node shut down while a leader's snapshot was arriving; the next node on the same
        // directory starts, and receives the same snapshot again.
        let old = open_store(dir.path(), u64::MAX).unwrap();
        let mut late = old.sink(None).unwrap();
        late.write(&bytes[..10]).unwrap();
        old.close();
        let new = open_store(dir.path(), u64::MAX).unwrap();
        let mut sink = new.sink(None).unwrap();
        sink.write(&bytes).unwrap();
        // The old receive ends only now (its stream broke), deleting its own file.
        drop(late);
        let (m, data) = sink.finish().unwrap();
        new.adopt(&m, data).unwrap();
        let reopened = open_store(dir.path(), u64::MAX).unwrap();
        let (m, data) = reopened.current().unwrap().unwrap();
        assert_eq!((m, body(&data)), (meta(9), b"sent".to_vec()));
    }

    #[test]
    fn one_receive_at_a_time_and_announced_sizes_are_checked_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path(), 1 << 20).unwrap();
        let tmp_files = || fs::read_dir(dir.path()).unwrap().count();
        let first = store.sink(Some(100)).unwrap();
        assert!(matches!(store.sink(None), Err(SnapshotError::Busy)));
        drop(first);
        // Refused before a file is created.
        assert!(matches!(
            store.sink(Some(2 << 20)),
            Err(SnapshotError::TooLarge { .. })
        ));
        let huge = open_store(dir.path(), u64::MAX).unwrap();
        assert!(matches!(
            huge.sink(Some(u64::MAX / 2)),
            Err(SnapshotError::NoSpace { .. })
        ));
        assert_eq!(tmp_files(), 0);
        // A sender cannot send more than it announced.
        let mut sink = store.sink(Some(10)).unwrap();
        sink.write(&[0u8; 10]).unwrap();
        assert!(matches!(
            sink.write(&[0u8; 1]),
            Err(SnapshotError::LongerThanAnnounced { announced: 10 })
        ));
    }

    fn identity(id: Option<ClusterId>) -> Arc<ClusterIdentity> {
        let ident = ClusterIdentity::open(None).unwrap();
        if let Some(id) = id {
            ident.adopt(id).unwrap();
        }
        Arc::new(ident)
    }

    /// A snapshot file in the first format, as the writer before cluster ids made it.
    fn v1_bytes(index: u64, body: &[u8]) -> Vec<u8> {
        let header = Header {
            last_log_id: meta(index).last_log_id.as_ref().map(DiskLogId::from),
            membership: DiskStoredMembership::from(&meta(index).last_membership),
            sessions: SessionTable::default(),
        };
        let header = codec::encode(&header).unwrap();
        let mut out = MAGIC_V1.to_vec();
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(body);
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    fn snap_files(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_written_snapshot_names_its_cluster() {
        let a = ClusterId::random();
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path(), u64::MAX, identity(Some(a))).unwrap();
        let data = write(&store, 3, b"three");
        let parsed = parse(&data).unwrap();
        assert_eq!(parsed.cluster, Some(a));
        assert_eq!(
            &fs::read(&snap_files(dir.path())[0]).unwrap()[..8],
            MAGIC_V2
        );

        let other = tempfile::tempdir().unwrap();
        let anonymous = open_store(other.path(), u64::MAX).unwrap();
        assert_eq!(parse(&write(&anonymous, 3, b"x")).unwrap().cluster, None);
    }

    #[test]
    fn the_applied_time_and_bindings_round_trip_and_older_headers_read_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path(), u64::MAX).unwrap();
        let extra = ApplyExtra {
            time_ms: 1_234_567,
            bindings: [(1, 0xabc), (3, 0xdef)].into(),
        };
        let data = store
            .write(&meta(7), &SessionTable::default(), &extra, |w| {
                w.write_all(b"body")
            })
            .unwrap();
        let parsed = parse(&data).unwrap();
        assert_eq!((parsed.extra, body(&data)), (extra, b"body".to_vec()));
        let old = SnapshotData {
            source: Source::Memory(Bytes::from(v1_bytes(7, b"old"))),
        };
        assert_eq!(parse(&old).unwrap().extra, ApplyExtra::default());
    }

    #[test]
    fn a_first_format_file_still_loads_on_any_node() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(format!("{:020}{SUFFIX}", 4)),
            v1_bytes(12, b"old body"),
        )
        .unwrap();
        let b = ClusterId::random();
        let store = SnapshotStore::open(dir.path(), u64::MAX, identity(Some(b))).unwrap();
        let (m, d) = store.current().unwrap().unwrap();
        assert_eq!(m, meta(12));
        assert_eq!(body(&d), b"old body");
        assert_eq!(parse(&d).unwrap().cluster, None);
        store.check_cluster(&d, None, true).unwrap();
        assert_eq!(store.cluster.get(), Some(b), "the node keeps its id");

        // Received from a peer, too.
        let mut sink = store.sink(None).unwrap();
        sink.write(&v1_bytes(20, b"sent")).unwrap();
        let (m, d) = sink.finish().unwrap();
        assert_eq!(m, meta(20));
        assert_eq!(body(&d), b"sent");
    }

    #[test]
    fn another_clusters_snapshot_in_the_directory_stops_the_load_and_purges_nothing() {
        let (a, b) = (ClusterId::random(), ClusterId::random());
        let b_dir = tempfile::tempdir().unwrap();
        let b_store = SnapshotStore::open(b_dir.path(), u64::MAX, identity(Some(b))).unwrap();
        write(&b_store, 10, b"cluster b");
        let a_dir = tempfile::tempdir().unwrap();
        let a_store = SnapshotStore::open(a_dir.path(), u64::MAX, identity(Some(a))).unwrap();
        // Newer than B's own: without the check it would win and B's file would be purged.
        let foreign = write(&a_store, 99, b"cluster a");
        leave_behind(b_dir.path(), 50, &foreign);
        let before = snap_files(b_dir.path());
        assert_eq!(before.len(), 2);

        let reopened = SnapshotStore::open(b_dir.path(), u64::MAX, identity(Some(b))).unwrap();
        match reopened.current() {
            Err(SnapshotError::WrongCluster { ours, theirs, .. }) => {
                assert_eq!((ours, theirs), (b, a));
            }
            other => panic!(
                "expected WrongCluster, got {:?}",
                other.map(|c| c.map(|x| x.0))
            ),
        }
        let text = open_current_error(b_dir.path(), b);
        assert!(
            text.contains(&a.to_string()) && text.contains(&b.to_string()),
            "{text}"
        );
        assert_eq!(snap_files(b_dir.path()), before, "nothing deleted");

        // Once the operator removes the stray file, B's own snapshot is there as it was.
        fs::remove_file(b_dir.path().join(format!("{:020}{SUFFIX}", 50))).unwrap();
        let again = SnapshotStore::open(b_dir.path(), u64::MAX, identity(Some(b))).unwrap();
        let (m, d) = again.current().unwrap().unwrap();
        assert_eq!(m, meta(10));
        assert_eq!(body(&d), b"cluster b");
    }

    fn open_current_error(dir: &Path, id: ClusterId) -> String {
        let store = SnapshotStore::open(dir, u64::MAX, identity(Some(id))).unwrap();
        match store.current() {
            Err(e) => e.to_string(),
            Ok(_) => panic!("loaded"),
        }
    }

    #[test]
    fn another_clusters_snapshot_is_refused_on_receive_and_a_fresh_node_adopts_the_id() {
        let (a, b) = (ClusterId::random(), ClusterId::random());
        let a_store = SnapshotStore::memory(u64::MAX, identity(Some(a)));
        let sent = write(&a_store, 7, b"from a");
        let bytes = sent.memory_bytes_for_test();

        let b_dir = tempfile::tempdir().unwrap();
        let b_store = SnapshotStore::open(b_dir.path(), u64::MAX, identity(Some(b))).unwrap();
        let mut sink = b_store.sink(None).unwrap();
        sink.write(&bytes).unwrap();
        let err = sink.finish().unwrap_err();
        assert!(
            matches!(err, SnapshotError::WrongCluster { ours, theirs, .. } if ours == b && theirs == a),
            "{err}"
        );
        assert!(
            snap_files(b_dir.path()).is_empty(),
            "the received bytes are deleted"
        );
        assert!(b_store.current().unwrap().is_none());

        // A node without an id takes the snapshot's when it installs it.
        let fresh = SnapshotStore::memory(u64::MAX, identity(None));
        let mut sink = fresh.sink(None).unwrap();
        sink.write(&bytes).unwrap();
        let (_, data) = sink.finish().unwrap();
        fresh.check_cluster(&data, Some(a), true).unwrap();
        assert_eq!(fresh.cluster.get(), Some(a));
    }

    #[test]
    fn a_damaged_or_truncated_start_is_a_typed_error() {
        let good = {
            let store = SnapshotStore::memory(u64::MAX, identity(Some(ClusterId::random())));
            write(&store, 5, b"body").memory_bytes_for_test()
        };
        let load = |bytes: Vec<u8>| {
            parse(&SnapshotData {
                source: Source::Memory(Bytes::from(bytes)),
            })
        };
        load(good.clone()).unwrap();
        // Cut anywhere: never a panic, always Corrupt.
        for cut in 0..good.len() {
            assert!(
                matches!(
                    load(good[..cut].to_vec()),
                    Err(SnapshotError::Corrupt { .. })
                ),
                "cut at {cut}"
            );
        }
        // A damaged flag or header length, even with a checksum that matches.
        let with_crc = |mut bytes: Vec<u8>| {
            let end = bytes.len() - 4;
            let crc = crc32c::crc32c(&bytes[..end]);
            bytes[end..].copy_from_slice(&crc.to_le_bytes());
            bytes
        };
        let mut flag = good.clone();
        flag[8] = 7;
        let err = load(with_crc(flag)).err().unwrap();
        assert!(err.to_string().contains("flag"), "{err}");
        let mut len = good.clone();
        len[25..29].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            load(with_crc(len)),
            Err(SnapshotError::Corrupt { .. })
        ));
        let mut magic = good;
        magic[7] = b'9';
        let err = load(with_crc(magic)).err().unwrap();
        assert!(err.to_string().contains("magic"), "{err}");
    }
}
