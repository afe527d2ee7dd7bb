//! Online backup and disaster recovery.
//!
//! A backup is a consistent copy of the replicated state at one log position:
//! [`Node::export_snapshot`](crate::Node::export_snapshot) writes it while the cluster keeps
//! serving, and [`restore_data_dir`] turns it into the data directory of a node of a **new**
//! cluster that holds exactly that state.
//!
//! # Format
//!
//! A backup file is a snapshot file in the current snapshot format (see [`crate::snapshot`]):
//! magic `RKSNAP02`, the cluster id of the cluster it was taken from, a header naming the last
//! log id it covers (term and index), the membership and the client session table, then the
//! state machine's own bytes, then a crc32c of everything before it. [`inspect`] verifies a file
//! and reports what it covers ([`BackupInfo`]).
//!
//! # Consistency
//!
//! An export first obtains a linearizable read index (the same quorum round a linearizable read
//! makes), waits until the exporting node has applied it, and then takes the state machine's
//! point-in-time handle ([`StateMachine::snapshot`]) together with the session table, under the
//! apply lock. So the backup holds every write acknowledged before the export started, and
//! possibly some that were acknowledged while it ran; it covers exactly the log prefix up to the
//! index it names. Session answers are included, so a client
//! retrying a write after a restore still gets it applied at most once.
//!
//! # Memory
//!
//! Neither export nor restore holds the state in memory: the export streams the user's bytes
//! from the handle into the writer (whose buffering is the caller's), and restore copies the
//! user's bytes from the verified file into the new snapshot through a 64 KiB buffer. The only
//! data held whole is the header (membership and session table, both bounded).
//!
//! # Restore
//!
//! [`restore_data_dir`] prepares the data directory of one node of the new cluster:
//!
//! * it refuses a directory that is not empty (`lost+found` aside, for a fresh volume), one
//!   another restore is filling, and one a node is starting on;
//! * it verifies the backup's checksum before writing anything, and with
//!   [`restore_data_dir_checked`] has the state machine read the state
//!   ([`StateMachine::check_snapshot`]) first too;
//! * it is atomic: the directory is built in a work directory on the same file system
//!   (`<data-dir>.restore-<pid>-<n>` beside a missing data directory, `.restore-<pid>-<n>`
//!   inside an existing empty one, under an exclusive `flock` on it), made durable, and only
//!   then put in place, by a rename that fails if the name was taken meanwhile, or by moving
//!   its entries in, the log last. A failed restore removes what it created; an interrupted
//!   one leaves its work directory, which the next restore removes, or, if it was stopped
//!   while moving entries in, a directory the next restore refuses with
//!   [`BackupError::Interrupted`]. [`Node::start`](crate::Node::start) refuses a directory a
//!   restore is filling, or one it left like that, with the same errors;
//! * the backup's checksum is taken again as its state is copied, so bytes that change
//!   between the two reads are refused ([`BackupError::Changed`]) rather than sealed under the
//!   new snapshot's checksum;
//! * it writes the backup's state as the node's current snapshot, with the log position the
//!   backup names and the **new** membership (`initial_members`, all voters), so the node starts
//!   already initialised: do not call [`Node::initialize`](crate::Node::initialize) on it (it
//!   would fail with [`Error::AlreadyInitialized`](crate::Error::AlreadyInitialized));
//! * it stores a vote for the backup's term, so the new cluster's first election is for a later
//!   term and its log continues after the backup's last entry;
//! * it gives the node a **new** cluster id, so a restored node can never exchange messages with
//!   the cluster the backup came from. By default the id is derived from the backup's checksum
//!   and the member list ([`restored_cluster_id`]): every node restored from the same file with
//!   the same `initial_members` gets the same id, without coordination. Pass an explicit id to
//!   restore the same backup into two separate clusters.
//!
//! Restore every member of the new cluster from the same file with the same `initial_members`,
//! then start them. A node added later receives the state the normal way (a snapshot from the
//! leader).

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::io::Write;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

use openraft::BasicNode;
use rustix::fs::FlockOperation;

use crate::cluster_id::ClusterId;
use crate::cluster_id::ClusterIdError;
use crate::cluster_id::ClusterIdentity;
use crate::fsutil;
use crate::fsutil::PathError;
use crate::fsutil::at;
use crate::log::LogError;
use crate::session::SessionTable;
use crate::snapshot;
use crate::snapshot::SnapshotData;
use crate::snapshot::SnapshotError;
use crate::snapshot::SnapshotStore;
use crate::state_machine::StateMachine;
use crate::types::LeaderId;
use crate::types::LogId;
use crate::types::Membership;
use crate::types::NodeId;
use crate::types::SnapshotMeta;
use crate::types::StoredMembership;
use crate::types::Vote;

/// What a backup covers: the log position, the cluster it was taken from, its size and checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupInfo {
    /// The last log index whose effects the backup holds.
    pub index: u64,
    /// The term of the entry at `index`.
    pub term: u64,
    /// The cluster the backup was taken from, if it had an id.
    pub cluster: Option<ClusterId>,
    /// The file's size in bytes.
    pub bytes: u64,
    /// The crc32c of every byte before the 4-byte trailer that holds it.
    pub checksum: u32,
}

/// What [`restore_data_dir`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// The backup that was restored.
    pub backup: BackupInfo,
    /// The new cluster's id, recorded in the data directory.
    pub cluster: ClusterId,
    /// The new cluster's voters.
    pub members: BTreeMap<NodeId, String>,
}

/// Why a backup could not be written, read or restored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// The target data directory already holds something; restore never overwrites a node.
    #[error(
        "data directory {} is not empty ({entry} is there); restore only into an empty or missing directory",
        dir.display()
    )]
    NotEmpty {
        /// The directory.
        dir: PathBuf,
        /// One of the entries found.
        entry: String,
    },
    /// The node to restore is not one of the initial members.
    #[error("node {id} is not among the initial members {members:?}")]
    NotAMember {
        /// The node's id.
        id: NodeId,
        /// The initial members' ids.
        members: Vec<NodeId>,
    },
    /// The cluster id asked for is the one the backup was taken from. A restored cluster must
    /// never exchange messages with that cluster, whose log holds other entries at the same
    /// positions; its id keeps them apart.
    #[error(
        "cluster id {cluster} is the id of the cluster the backup was taken from; a restored cluster needs its own (leave the id out to derive one from the backup and the members)"
    )]
    SameCluster {
        /// The id asked for.
        cluster: ClusterId,
    },
    /// The initial members do not form a valid membership.
    #[error("invalid initial members: {0}")]
    Members(String),
    /// The file is not a valid backup: damaged, truncated or not a raftkit snapshot.
    #[error("invalid backup: {0}")]
    Invalid(#[source] SnapshotError),
    /// Received backup bytes do not check out: their checksum or their size is wrong.
    #[error("backup is damaged: {0}")]
    Damaged(String),
    /// This node is already writing a backup; it writes one at a time (another node can serve
    /// one meanwhile).
    #[error("this node is already writing a backup; try another node or again later")]
    Busy,
    /// The backup covers no log entry (the cluster had applied nothing).
    #[error("the backup covers no log entry")]
    NothingApplied,
    /// Writing the backup, or the restored data, failed (or a node could not create or lock
    /// its data directory at start).
    #[error(transparent)]
    Io(#[from] PathError),
    /// Writing the backup to the caller's writer failed (or the state machine's
    /// `write_snapshot` did).
    #[error("writing the backup failed: {0}")]
    Write(#[source] io::Error),
    /// The restored snapshot could not be written.
    #[error("writing the restored snapshot failed: {0}")]
    Snapshot(#[source] SnapshotError),
    /// The restored node's log could not be created.
    #[error("creating the restored log failed: {0}")]
    Log(#[from] LogError),
    /// The new cluster id could not be stored.
    #[error("storing the new cluster id failed: {0}")]
    ClusterId(#[from] ClusterIdError),
    /// The state machine cannot read the state the backup holds (its checksum is right, so it
    /// was written that way, or by a newer version); nothing was written.
    #[error("the state in backup {} cannot be read: {source}", path.display())]
    Unreadable {
        /// The backup file.
        path: PathBuf,
        /// What the state machine's check reported.
        #[source]
        source: io::Error,
    },
    /// The backup's bytes changed between the restore's reads of them (a failing disk, or the
    /// file being rewritten); what was copied is not trusted, and nothing was put in place.
    #[error(
        "backup {} changed while it was restored (its bytes no longer match its checksum); nothing was restored",
        path.display()
    )]
    Changed {
        /// The backup file.
        path: PathBuf,
    },
    /// A restore into the data directory is running (it holds the directory's lock), so another
    /// restore, or a node's start, was refused; nothing was written.
    #[error("a restore into {} is running", dir.display())]
    RestoreRunning {
        /// The data directory.
        dir: PathBuf,
    },
    /// A node is opening the data directory (it holds the directory's lock while it starts),
    /// so a restore into it was refused; nothing was written.
    #[error("a node is starting on {}; restore only into a directory no node uses", dir.display())]
    NodeStarting {
        /// The data directory.
        dir: PathBuf,
    },
    /// The data directory holds what a restore that was interrupted (killed, or the machine
    /// stopped) left behind; it was not completed, so a node must not start from it.
    #[error(
        "data directory {} holds the remains of an interrupted restore ({leftover} is there); \
         remove everything in it but lost+found, then restore again",
        dir.display()
    )]
    Interrupted {
        /// The data directory.
        dir: PathBuf,
        /// The leftover that shows the restore did not complete.
        leftover: String,
    },
}

/// Held while a node writes a backup: one at a time per node, so backups cannot pile up
/// snapshot handles and blocking threads. Released on drop, when the writing has ended.
pub(crate) struct ExportPermit(Arc<std::sync::atomic::AtomicBool>);

impl ExportPermit {
    /// The permit, unless a backup is being written with `busy`.
    pub fn take(busy: &Arc<std::sync::atomic::AtomicBool>) -> Result<ExportPermit, BackupError> {
        if busy.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return Err(BackupError::Busy);
        }
        Ok(ExportPermit(busy.clone()))
    }
}

impl Drop for ExportPermit {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::Release);
    }
}

/// Writes a backup of the state in `parts` (taken by the apply layer) of a node of `cluster` to
/// `out`. Blocking: the state machine's `write_snapshot` runs here.
pub(crate) fn write<S: StateMachine, W: Write>(
    parts: (S::Snapshot, SnapshotMeta, SessionTable, u64),
    cluster: Option<ClusterId>,
    out: W,
) -> Result<(BackupInfo, W), BackupError> {
    let (handle, meta, sessions, time_ms) = parts;
    let Some(last) = meta.last_log_id else {
        return Err(BackupError::NothingApplied);
    };
    // The applied time travels, so a restored cluster's time does not go back before the
    // backup's. Incarnation bindings belong to the backed-up cluster's data directories, not
    // to the nodes a restore creates.
    let extra = snapshot::ApplyExtra {
        time_ms,
        bindings: Default::default(),
    };
    let written = snapshot::write_checksummed(out, cluster, &meta, &sessions, &extra, |w| {
        S::write_snapshot(handle, w)
    })
    .map_err(|e| match e {
        snapshot::WriteError::Output(e)
        | snapshot::WriteError::Snapshot(SnapshotError::StateMachine(e)) => BackupError::Write(e),
        snapshot::WriteError::Snapshot(other) => BackupError::Write(io::Error::other(other)),
    })?;
    let info = BackupInfo {
        index: last.index,
        term: last.leader_id.term,
        cluster,
        bytes: written.bytes,
        checksum: written.checksum,
    };
    Ok((info, written.out))
}

/// Checks a backup's bytes as they arrive, without keeping them: the crc32c of all but the last
/// four bytes must equal those four bytes (the format's trailer).
#[derive(Debug, Default)]
pub struct Verifier {
    crc: u32,
    tail: [u8; 4],
    tail_len: usize,
    bytes: u64,
}

impl Verifier {
    /// Takes the next bytes of the backup.
    pub fn update(&mut self, data: &[u8]) {
        self.bytes += data.len() as u64;
        if data.len() >= 4 {
            self.crc = crc32c::crc32c_append(self.crc, &self.tail[..self.tail_len]);
            let (body, tail) = data.split_at(data.len() - 4);
            self.crc = crc32c::crc32c_append(self.crc, body);
            self.tail.copy_from_slice(tail);
            self.tail_len = 4;
        } else {
            let mut joined = [0u8; 7];
            let n = self.tail_len + data.len();
            joined[..self.tail_len].copy_from_slice(&self.tail[..self.tail_len]);
            joined[self.tail_len..n].copy_from_slice(data);
            let keep = n.min(4);
            self.crc = crc32c::crc32c_append(self.crc, &joined[..n - keep]);
            self.tail[..keep].copy_from_slice(&joined[n - keep..n]);
            self.tail_len = keep;
        }
    }

    /// Bytes taken so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The checksum, if the bytes taken form a whole backup whose trailer matches it.
    pub fn finish(&self) -> Result<u32, BackupError> {
        if self.tail_len < 4 {
            return Err(BackupError::Damaged(format!("only {} bytes", self.bytes)));
        }
        let trailer = u32::from_le_bytes(self.tail);
        if trailer != self.crc {
            return Err(BackupError::Damaged(format!(
                "checksum {:08x} does not match the trailer {trailer:08x}",
                self.crc
            )));
        }
        Ok(self.crc)
    }
}

/// Verifies the backup at `path` (its checksum, streamed) and says what it covers.
pub fn inspect(path: &Path) -> Result<BackupInfo, BackupError> {
    open(path).map(|(info, _, _)| info)
}

fn open(path: &Path) -> Result<(BackupInfo, SnapshotData, snapshot::Parsed), BackupError> {
    let data = SnapshotData::from_file(path.to_path_buf()).map_err(|e| match e {
        SnapshotError::Io(p) => BackupError::Io(p),
        other => BackupError::Invalid(other),
    })?;
    let parsed = snapshot::parse(&data).map_err(BackupError::Invalid)?;
    let last = parsed.meta.last_log_id.ok_or(BackupError::NothingApplied)?;
    let info = BackupInfo {
        index: last.index,
        term: last.leader_id.term,
        cluster: parsed.cluster,
        bytes: data.len(),
        checksum: parsed.checksum,
    };
    Ok((info, data, parsed))
}

/// The id [`restore_data_dir`] gives the new cluster by default: a 128-bit FNV-1a hash of the
/// backup's checksum, size and log position, of the member list (ids and addresses), and of
/// where the restored log starts ([`RESTORE_INDEX_GAP`]). The same backup restored with the
/// same members gets the same id on every node; anything else differs — including a node
/// restored by a version whose log starts elsewhere, which the others then refuse as another
/// cluster's rather than replicate to a log that does not line up with theirs.
pub fn restored_cluster_id(backup: &BackupInfo, members: &BTreeMap<NodeId, String>) -> ClusterId {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013b;
    let mut h = OFFSET;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u128::from(*b);
            h = h.wrapping_mul(PRIME);
        }
    };
    eat(b"raftkit restore");
    eat(&RESTORE_INDEX_GAP.to_le_bytes());
    eat(&backup.checksum.to_le_bytes());
    eat(&backup.bytes.to_le_bytes());
    eat(&backup.index.to_le_bytes());
    eat(&backup.term.to_le_bytes());
    eat(&backup.cluster.map_or(0, ClusterId::as_u128).to_le_bytes());
    for (id, addr) in members {
        eat(&id.to_le_bytes());
        eat(&(addr.len() as u64).to_le_bytes());
        eat(addr.as_bytes());
    }
    ClusterId::from(h)
}

/// The name a restore's work directory starts with: beside a missing data directory it is
/// `<name>.restore-<pid>-<n>`, inside an empty one `.restore-<pid>-<n>`.
const WORK_MARK: &str = ".restore-";

/// Makes each work directory's name unique within the process as well.
static WORK_SEQ: AtomicU64 = AtomicU64::new(0);

/// Whether `entry` is the name of a work directory `work_name(prefix)` made: `prefix`, the mark,
/// then two decimal numbers joined by `-`. Nothing else is taken for a restore's, so an
/// operator's own `.restore-notes`, say, stays theirs.
fn is_work_name(entry: &str, prefix: &str) -> bool {
    let number = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    entry
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix(WORK_MARK))
        .and_then(|rest| rest.split_once('-'))
        .is_some_and(|(pid, seq)| number(pid) && number(seq))
}

fn work_name(prefix: &str) -> String {
    format!(
        "{prefix}{WORK_MARK}{}-{}",
        std::process::id(),
        WORK_SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// Takes `file`'s `flock` with `op`; `Ok(false)` if `op` does not wait and another open file
/// holds a lock that excludes it.
fn lock(file: &fs::File, path: &Path, op: FlockOperation) -> Result<bool, BackupError> {
    match rustix::fs::flock(file, op) {
        Ok(()) => Ok(true),
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => Ok(false),
        Err(e) => Err(at("lock", path)(e.into()).into()),
    }
}

/// Keeps restores out of a data directory while a node opens it; see [`guard_start`].
pub(crate) struct StartGuard {
    /// The directory, holding a shared `flock` until dropped.
    _dir: fs::File,
}

/// Checks, before a node opens `dir`, that no restore is filling it
/// ([`BackupError::RestoreRunning`]) and that none left it half built
/// ([`BackupError::Interrupted`]), and keeps a restore from starting into it until the guard is
/// dropped ([`BackupError::NodeStarting`]). A missing directory is created first, so a restore
/// that would rename one into place finds the name taken. A restore into an existing directory
/// holds an exclusive `flock` on it for its whole run; the guard holds a shared one, so nodes
/// do not exclude each other here (the log's own lock does that). Blocking.
pub(crate) fn guard_start(dir: &Path) -> Result<StartGuard, BackupError> {
    fsutil::ensure_dir(dir)?;
    let handle = fs::File::open(dir).map_err(at("open", dir))?;
    if !lock(&handle, dir, FlockOperation::NonBlockingLockShared)? {
        return Err(BackupError::RestoreRunning {
            dir: dir.to_path_buf(),
        });
    }
    for entry in fs::read_dir(dir).map_err(at("list", dir))? {
        let name = entry.map_err(at("list", dir))?.file_name();
        let name = name.to_string_lossy();
        if is_work_name(&name, "") {
            return Err(BackupError::Interrupted {
                dir: dir.to_path_buf(),
                leftover: name.into_owned(),
            });
        }
    }
    Ok(StartGuard { _dir: handle })
}

/// Prepares `data_dir` for node `id` of a new cluster of `initial_members` (id → raft address,
/// all voters) holding the state of the backup at `backup`; see the [module docs](self).
///
/// The cluster gets `cluster_id`, or [`restored_cluster_id`] when `None`. Refuses a data
/// directory that is not empty ([`BackupError::NotEmpty`]), one another restore is filling
/// ([`BackupError::RestoreRunning`]) or a node is starting on ([`BackupError::NodeStarting`]),
/// and a damaged backup ([`BackupError::Invalid`]) before
/// writing anything. The restore is atomic: the data directory is built in a work directory
/// and put in place only once it is complete and durable, so it either ends up complete or as
/// it was found (an interrupted restore leaves only its work directory, which the next restore
/// removes, or [`BackupError::Interrupted`] says what it left). Blocking.
///
/// The state machine's bytes are copied without being decoded; [`restore_data_dir_checked`]
/// has the state machine read them first.
pub fn restore_data_dir(
    backup: &Path,
    data_dir: &Path,
    id: NodeId,
    initial_members: &BTreeMap<NodeId, String>,
    cluster_id: Option<ClusterId>,
) -> Result<Restored, BackupError> {
    restore(backup, data_dir, id, initial_members, cluster_id, &|_| {
        Ok(())
    })
}

/// [`restore_data_dir`], after [`StateMachine::check_snapshot`] of `S` has read the state
/// in the backup: a backup whose checksum holds but whose state `S` cannot read (written by a
/// faulty or newer version) is refused with [`BackupError::Unreadable`] before anything is
/// written, instead of every restored node failing at start. The check streams the state, so
/// it needs no more memory than `S`'s check does.
pub fn restore_data_dir_checked<S: StateMachine>(
    backup: &Path,
    data_dir: &Path,
    id: NodeId,
    initial_members: &BTreeMap<NodeId, String>,
    cluster_id: Option<ClusterId>,
) -> Result<Restored, BackupError> {
    restore(
        backup,
        data_dir,
        id,
        initial_members,
        cluster_id,
        &S::check_snapshot,
    )
}

type Check<'a> = &'a dyn Fn(&mut dyn io::Read) -> io::Result<()>;

fn restore(
    backup: &Path,
    data_dir: &Path,
    id: NodeId,
    initial_members: &BTreeMap<NodeId, String>,
    cluster_id: Option<ClusterId>,
    check: Check<'_>,
) -> Result<Restored, BackupError> {
    if !initial_members.contains_key(&id) {
        return Err(BackupError::NotAMember {
            id,
            members: initial_members.keys().copied().collect(),
        });
    }
    // Refuse an occupied directory before reading the backup; an existing one stays locked.
    let target = Target::claim(data_dir)?;
    let (info, data, parsed) = open(backup)?;
    {
        let mut input = io::BufReader::with_capacity(64 << 10, parsed.user_data(&data));
        check(&mut input).map_err(|source| BackupError::Unreadable {
            path: backup.to_path_buf(),
            source,
        })?;
    }
    if let Some(asked) = cluster_id.filter(|asked| Some(*asked) == info.cluster) {
        return Err(BackupError::SameCluster { cluster: asked });
    }
    let cluster = cluster_id.unwrap_or_else(|| restored_cluster_id(&info, initial_members));
    target
        .fill(|work| write_restored(work, id, initial_members, cluster, backup, &data, &parsed))?;
    tracing::info!(
        index = info.index,
        term = info.term,
        cluster = %cluster,
        dir = %data_dir.display(),
        "data directory restored from a backup"
    );
    Ok(Restored {
        backup: info,
        cluster,
        members: initial_members.clone(),
    })
}

/// How far past the backup's last log index a restored cluster's log starts (2^40).
///
/// A client session's id is the log index of the entry that opened it, and the session table
/// travels in the backup. The cluster the backup came from went on opening sessions after it
/// was taken; had the restored log continued right after the backup, its new sessions would
/// get those same ids, and a client still holding one of them (its cluster restored at the
/// same addresses) would write in another client's session: its write taken as a duplicate and
/// answered with the other's output, or applied in the other's sequence. Past the gap, such a
/// client's session is unknown to the restored cluster, which says so
/// ([`ApplyError::UnknownSession`](crate::ApplyError::UnknownSession)). 2^40 entries is more
/// than a source cluster writes in years at 10,000 entries a second, and leaves 2^24 restores
/// of room in the log's 64-bit index.
pub const RESTORE_INDEX_GAP: u64 = 1 << 40;

/// The entries of a restored data directory, in the order they are moved into an existing
/// one: the log (with its vote) last.
const ENTRIES: [&str; 3] = ["snapshots", crate::cluster_id::FILE_NAME, "wal"];

/// Where a restore puts the data directory it builds.
enum Target {
    /// The data directory is missing: it is built beside it, on the same file system, and
    /// renamed into place (a rename that fails if the name exists by then).
    Missing { dir: PathBuf },
    /// The data directory exists and is empty (a mount point): it is built in a work
    /// directory inside it, whose entries are moved in, all under an exclusive lock on the
    /// data directory.
    Existing { dir: PathBuf, _lock: fs::File },
}

impl Target {
    /// Checks that `dir` is missing or empty (`lost+found` aside), and locks it if it exists.
    /// Removes the work directory of a restore that was interrupted before it moved anything.
    fn claim(dir: &Path) -> Result<Target, BackupError> {
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(Target::Missing {
                    dir: dir.to_path_buf(),
                });
            }
            Err(e) => return Err(at("list", dir)(e).into()),
        };
        drop(entries);
        let handle = fs::File::open(dir).map_err(at("open", dir))?;
        if !lock(&handle, dir, FlockOperation::NonBlockingLockExclusive)? {
            // Only a starting node holds the lock shared (see `guard_start`).
            let dir = dir.to_path_buf();
            return Err(
                if lock(&handle, &dir, FlockOperation::NonBlockingLockShared)? {
                    BackupError::NodeStarting { dir }
                } else {
                    BackupError::RestoreRunning { dir }
                },
            );
        }
        // Under the lock, a work directory is the leftover of a restore that was stopped.
        let mut leftovers = Vec::new();
        let mut other = None;
        for entry in fs::read_dir(dir).map_err(at("list", dir))? {
            let name = entry.map_err(at("list", dir))?.file_name();
            let name = name.to_string_lossy().into_owned();
            if name == "lost+found" {
                continue;
            }
            if is_work_name(&name, "") {
                leftovers.push(name);
            } else if other.is_none() {
                other = Some(name);
            }
        }
        match (other, leftovers.first()) {
            (Some(_), Some(leftover)) => Err(BackupError::Interrupted {
                dir: dir.to_path_buf(),
                leftover: leftover.clone(),
            }),
            (Some(entry), None) => Err(BackupError::NotEmpty {
                dir: dir.to_path_buf(),
                entry,
            }),
            (None, _) => {
                for name in &leftovers {
                    let p = dir.join(name);
                    fs::remove_dir_all(&p).map_err(at("remove", &p))?;
                }
                if !leftovers.is_empty() {
                    fsutil::sync_dir(dir)?;
                }
                Ok(Target::Existing {
                    dir: dir.to_path_buf(),
                    _lock: handle,
                })
            }
        }
    }

    /// Builds the data directory with `build` (given a work directory to fill and make
    /// durable) and puts it in place. On failure, removes what this call created.
    fn fill(self, build: impl FnOnce(&Path) -> Result<(), BackupError>) -> Result<(), BackupError> {
        match self {
            Target::Missing { dir } => fill_missing(&dir, build),
            Target::Existing { dir, _lock } => fill_existing(&dir, build),
        }
    }
}

/// Removes the work directories beside `dir` whose restore is gone: no process holds their
/// lock, and they hold something (a new one is locked before anything is written into it).
/// Best effort: one that cannot be removed is logged and left, as it does not stand in the
/// way of this restore.
fn remove_stale_work(dir: &Path) {
    let parent = fsutil::parent_of(dir);
    let Some(name) = dir.file_name().and_then(|n| n.to_str()) else {
        return;
    };
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        if !is_work_name(&entry.file_name().to_string_lossy(), name) {
            continue;
        }
        let p = entry.path();
        // Work directories of other restores may vanish meanwhile; only a stale one is
        // removed.
        let Ok(handle) = fs::File::open(&p) else {
            continue;
        };
        if matches!(
            lock(&handle, &p, FlockOperation::NonBlockingLockExclusive),
            Ok(true)
        ) && fs::read_dir(&p).is_ok_and(|mut e| e.next().is_some())
        {
            match fs::remove_dir_all(&p) {
                Ok(()) => tracing::info!(
                    dir = %p.display(),
                    "removed the work directory of an interrupted restore"
                ),
                Err(error) => tracing::warn!(
                    dir = %p.display(),
                    %error,
                    "cannot remove the work directory of an interrupted restore"
                ),
            }
        }
    }
}

fn fill_missing(
    dir: &Path,
    build: impl FnOnce(&Path) -> Result<(), BackupError>,
) -> Result<(), BackupError> {
    let Some(name) = dir.file_name().and_then(|n| n.to_str()) else {
        return Err(at("restore into", dir)(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the path names no directory",
        ))
        .into());
    };
    let parent = fsutil::parent_of(dir).to_path_buf();
    let created = fsutil::create_dir_all_durable(&parent)?;
    let result = (|| {
        remove_stale_work(dir);
        let work = parent.join(work_name(name));
        fs::create_dir(&work).map_err(at("create directory", &work))?;
        let placed = fs::File::open(&work)
            .map_err(at("open", &work))
            .map_err(BackupError::from)
            .and_then(|handle| {
                lock(&handle, &work, FlockOperation::LockExclusive)?;
                build(&work)?;
                rename_onto_missing(&work, dir)?;
                fsutil::sync_dir(&parent)?;
                Ok(())
            });
        if placed.is_err() {
            let _ = fs::remove_dir_all(&work);
        }
        placed
    })();
    if result.is_err() {
        for c in created.iter().rev() {
            let _ = fs::remove_dir(c);
        }
    }
    result
}

/// Renames the directory `from` to `to`, failing if `to` exists (even as an empty directory,
/// which a plain rename would replace).
fn rename_onto_missing(from: &Path, to: &Path) -> Result<(), BackupError> {
    use rustix::io::Errno;
    let cwd = rustix::fs::CWD;
    match rustix::fs::renameat_with(cwd, from, cwd, to, rustix::fs::RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        // Another restore (or anything else) took the name first.
        Err(e) if e == Errno::EXIST || e == Errno::NOTEMPTY => Err(taken(from, to, e.into())),
        // A file system without the flag: a plain rename still refuses a non-empty target.
        Err(e) if e == Errno::INVAL || e == Errno::NOSYS => match fs::rename(from, to) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(Errno::NOTEMPTY.raw_os_error()) => {
                Err(taken(from, to, e))
            }
            Err(e) => Err(at("rename", from)(e).into()),
        },
        Err(e) => Err(at("rename", from)(e.into()).into()),
    }
}

/// The error for a data directory `to` that appeared while the restore built `from`:
/// [`BackupError::NotEmpty`] naming what is in it, or the rename's error `e` if it is empty.
fn taken(from: &Path, to: &Path, e: io::Error) -> BackupError {
    let entry = fs::read_dir(to).ok().and_then(|entries| {
        entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .find(|n| n != "lost+found")
    });
    match entry {
        Some(entry) => BackupError::NotEmpty {
            dir: to.to_path_buf(),
            entry,
        },
        None => at("rename", from)(e).into(),
    }
}

fn fill_existing(
    dir: &Path,
    build: impl FnOnce(&Path) -> Result<(), BackupError>,
) -> Result<(), BackupError> {
    let work = dir.join(work_name(""));
    fs::create_dir(&work).map_err(at("create directory", &work))?;
    let mut moved = Vec::new();
    let result = (|| {
        build(&work)?;
        for name in ENTRIES {
            let (from, to) = (work.join(name), dir.join(name));
            fs::rename(&from, &to).map_err(at("rename", &from))?;
            moved.push(to);
        }
        fsutil::sync_dir(dir)?;
        fs::remove_dir(&work).map_err(at("remove", &work))?;
        fsutil::sync_dir(dir)?;
        Ok(())
    })();
    if result.is_err() {
        // Only what this restore created: the entries it moved in, and its work directory.
        for p in moved.iter().rev() {
            let _ = fs::remove_dir_all(p).or_else(|_| fs::remove_file(p));
        }
        let _ = fs::remove_dir_all(&work);
        let _ = fsutil::sync_dir(dir);
    }
    result
}

/// Reads `data` and feeds what it reads to a running crc32c; keeps the first read error, so
/// a failed read of the backup is told apart from a failed write of the copy.
struct Hashing<R> {
    inner: R,
    crc: u32,
    bytes: u64,
    failed: Option<io::Error>,
}

impl<R: io::Read> io::Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf).map_err(|e| {
            let copy = io::Error::new(e.kind(), e.to_string());
            self.failed.get_or_insert(e);
            copy
        })?;
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Whether the bytes of `data` before `user_bytes` bytes of user state (whose crc32c is
/// `user_crc`) and its trailer, together with those, still have the checksum `expected`.
fn still_matches(
    data: &SnapshotData,
    user_crc: u32,
    user_bytes: u64,
    expected: u32,
) -> io::Result<bool> {
    let Some(start) = data.len().checked_sub(4 + user_bytes) else {
        return Ok(false);
    };
    let mut crc = 0u32;
    let mut buf = vec![0u8; 64 << 10];
    let mut pos = 0u64;
    while pos < start {
        let want = ((start - pos) as usize).min(buf.len());
        let n = data.read_at(pos, &mut buf[..want])?;
        if n == 0 {
            return Ok(false);
        }
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        pos += n as u64;
    }
    let user_len = usize::try_from(user_bytes).map_err(io::Error::other)?;
    Ok(crc32c::crc32c_combine(crc, user_crc, user_len) == expected)
}

fn write_restored(
    data_dir: &Path,
    id: NodeId,
    initial_members: &BTreeMap<NodeId, String>,
    cluster: ClusterId,
    backup: &Path,
    data: &SnapshotData,
    parsed: &snapshot::Parsed,
) -> Result<(), BackupError> {
    let backup_last = parsed.meta.last_log_id.ok_or(BackupError::NothingApplied)?;
    // The restored cluster's log starts RESTORE_INDEX_GAP past the backup's last entry (see
    // there): its sessions get ids the source cluster never gave.
    let last = LogId {
        leader_id: backup_last.leader_id,
        index: backup_last
            .index
            .checked_add(RESTORE_INDEX_GAP)
            .ok_or_else(|| {
                BackupError::Invalid(SnapshotError::Corrupt {
                    what: backup.display().to_string(),
                    reason: format!("its last log index {} leaves no room", backup_last.index),
                })
            })?,
    };
    let voters: BTreeSet<NodeId> = initial_members.keys().copied().collect();
    let nodes: BTreeMap<NodeId, BasicNode> = initial_members
        .iter()
        .map(|(id, addr)| (*id, BasicNode::new(addr.clone())))
        .collect();
    // Every voter has a node entry, so this cannot fail; the error is still reported, not
    // unwrapped.
    let membership =
        Membership::new(vec![voters], nodes).map_err(|e| BackupError::Members(e.to_string()))?;
    let meta = SnapshotMeta {
        last_log_id: Some(last),
        last_membership: StoredMembership::new(Some(last), membership),
    };

    // The snapshot names the new cluster; the identity is stored for good only at the end.
    let identity = ClusterIdentity::open(None)?;
    identity.adopt(cluster)?;
    let store = SnapshotStore::open(&data_dir.join("snapshots"), u64::MAX, Arc::new(identity))
        .map_err(BackupError::Snapshot)?;
    // The user's bytes are read a second time here; their crc32c is taken as they are copied,
    // so bytes that changed since the checksum was verified are not sealed under a new one.
    let mut copied = (0u32, 0u64);
    let mut read_failed = None;
    let written = store.write(
        &meta,
        &parsed.sessions,
        &snapshot::ApplyExtra {
            time_ms: parsed.extra.time_ms,
            bindings: Default::default(),
        },
        |w| {
            let mut input = io::BufReader::with_capacity(
                64 << 10,
                Hashing {
                    inner: parsed.user_data(data),
                    crc: 0,
                    bytes: 0,
                    failed: None,
                },
            );
            let result = io::copy(&mut input, w);
            let hashed = input.into_inner();
            read_failed = hashed.failed;
            copied = (hashed.crc, hashed.bytes);
            result.map(drop)
        },
    );
    if let Some(e) = read_failed {
        return Err(at("read", backup)(e).into());
    }
    written.map_err(BackupError::Snapshot)?;
    let intact =
        still_matches(data, copied.0, copied.1, parsed.checksum).map_err(at("read", backup))?;
    if !intact {
        return Err(BackupError::Changed {
            path: backup.to_path_buf(),
        });
    }

    // A vote for the backup's term: the first election is for the next one, so every entry
    // the new cluster writes has a log id above the backup's.
    let vote = Vote {
        leader_id: LeaderId {
            term: last.leader_id.term,
            node_id: id,
        },
        committed: false,
    };
    crate::log::create_with_vote(&data_dir.join("wal"), id, &vote)?;
    ClusterIdentity::open(Some(data_dir))?.adopt(cluster)?;
    fsutil::sync_dir(data_dir)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verifier_accepts_a_whole_backup_in_any_pieces_and_nothing_else() {
        let mut file = b"some backup bytes of a certain length".to_vec();
        let crc = crc32c::crc32c(&file);
        file.extend_from_slice(&crc.to_le_bytes());
        for piece in 1..=file.len() {
            let mut v = Verifier::default();
            for c in file.chunks(piece) {
                v.update(c);
            }
            assert_eq!(v.finish().unwrap(), crc, "pieces of {piece}");
            assert_eq!(v.bytes(), file.len() as u64);
        }
        for cut in 0..file.len() {
            let mut v = Verifier::default();
            v.update(&file[..cut]);
            assert!(v.finish().is_err(), "cut at {cut}");
        }
        let mut flipped = file.clone();
        flipped[3] ^= 1;
        let mut v = Verifier::default();
        v.update(&flipped);
        assert!(matches!(v.finish(), Err(BackupError::Damaged(_))));
    }

    #[test]
    fn a_restore_is_refused_while_a_node_starts_on_its_directory() {
        let root = tempfile::tempdir().unwrap();
        let members = BTreeMap::from([(1, "n1:7000".to_string())]);
        // No backup file: a restore that gets past the directory fails reading it.
        let no_backup = root.path().join("no-backup");
        let restore = |dir: &Path| restore_data_dir(&no_backup, dir, 1, &members, None);
        for existing in [false, true] {
            let dir = root.path().join(format!("d-{existing}"));
            if existing {
                fs::create_dir(&dir).unwrap();
            }
            let guard = guard_start(&dir).unwrap();
            assert!(dir.is_dir(), "a missing directory is created and held");
            let err = restore(&dir).unwrap_err();
            assert!(
                matches!(&err, BackupError::NodeStarting { dir: d } if d == &dir),
                "{err}"
            );
            // Another node (or a restart) starting alongside is not refused here.
            let second = guard_start(&dir).unwrap();
            drop((guard, second));
            let err = restore(&dir).unwrap_err();
            assert!(
                matches!(&err, BackupError::Io(e) if e.source.kind() == io::ErrorKind::NotFound),
                "past the directory, to the backup: {err}"
            );
            assert_eq!(fs::read_dir(&dir).unwrap().count(), 0, "nothing written");
        }

        // A work directory alone (a restore stopped before it moved anything) is not started on.
        let dir = root.path().join("leftover");
        fs::create_dir_all(dir.join(".restore-7-0")).unwrap();
        assert!(matches!(
            guard_start(&dir),
            Err(BackupError::Interrupted { leftover, .. }) if leftover == ".restore-7-0"
        ));

        // Names that only look like one are the operator's own: a node starts beside them.
        let dir = root.path().join("dotfiles");
        for own in [
            ".restore-notes",
            ".restore-7",
            ".restore-7-",
            ".restore--0",
            ".restore-7-0x",
        ] {
            fs::create_dir_all(dir.join(own)).unwrap();
        }
        drop(guard_start(&dir).unwrap());
    }

    #[test]
    fn only_the_names_a_restore_makes_are_its_work() {
        for prefix in ["", "data"] {
            assert!(is_work_name(&work_name(prefix), prefix));
            assert!(is_work_name(&format!("{prefix}.restore-12-345"), prefix));
        }
        for (entry, prefix) in [
            (".restore-12-345", "data"),
            ("data.restore-12-345", ""),
            ("data2.restore-1-2", "data"),
            (".restore-", ""),
            (".restore-1-2-3", ""),
            (".restore-+1-2", ""),
            ("restore-1-2", ""),
        ] {
            assert!(!is_work_name(entry, prefix), "{entry:?} under {prefix:?}");
        }
    }
}
