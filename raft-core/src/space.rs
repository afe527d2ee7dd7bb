//! The storage quota, the memory limit and the NOSPACE alarm.
//!
//! A node samples its data directory every [`QuotaOptions::check_interval`]: the bytes its
//! files occupy on disk (preallocated WAL segments count in full) and the free space of the file
//! system under it (`statvfs`). When usage exceeds [`QuotaOptions::max_used_bytes`] or free
//! space drops below [`QuotaOptions::min_free_bytes`], the node raises its **local alarm**; it
//! clears the alarm by itself once a sample is back within both limits. At the same interval it
//! reads its process's resident memory, and raises the same alarm while that is above
//! [`QuotaOptions::max_memory_bytes`]: a state that outgrows the memory of every replica at
//! once would otherwise have the kernel kill them all together.
//!
//! The alarm is **cluster-wide**: the leader refuses writes while it or any voter is in alarm,
//! so a cluster does not walk from one full disk to the next. The leader learns of its voters'
//! alarms from its transport, which asks each voter for its alarm once per check interval and
//! hands the answers to [`Node::report_peer_alarms`](crate::Node::report_peer_alarms) (raft-grpc
//! does this over its `Status` call). A voter that stops answering is forgotten after three
//! intervals: a node that cannot be reached does not take writes either.
//!
//! While the alarm is raised, writes whose command
//! [`StateMachine::allowed_in_space_alarm`](crate::StateMachine::allowed_in_space_alarm) accepts
//! (deletes, expiry sweeps) still go through, and so do reads, membership changes, snapshots and
//! log compaction. Everything else fails with [`Error::NoSpace`](crate::Error::NoSpace) before it
//! is proposed. The write path pays one atomic load; the sampling runs on its own task.

use std::collections::BTreeMap;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use crate::types::NodeId;

/// When a node raises its NOSPACE alarm. Part of [`Config`](crate::Config). Start from
/// [`QuotaOptions::default`] and adjust with the `with_*` methods.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct QuotaOptions {
    /// Raise the alarm when the file system holding the data directory has less than this many
    /// bytes free for unprivileged users. `0` disables the check. Default 256 MiB: room for the
    /// next preallocated WAL segment (64 MiB by default), a snapshot of a modest state and the
    /// writes accepted during one check interval. Raise it with the segment size and the size of
    /// your state.
    pub min_free_bytes: u64,
    /// Raise the alarm when the data directory's files occupy more than this many bytes on disk
    /// (preallocated segments count in full), like etcd's `--quota-backend-bytes`. `0` (the
    /// default) sets no limit of its own.
    pub max_used_bytes: u64,
    /// How often the data directory and the process's memory are measured, and how often the
    /// leader asks its voters for their alarms. Default 1 s. The reserve in `min_free_bytes`
    /// (and the room under the memory the process may use, for `max_memory_bytes`) must absorb
    /// the writes one or two intervals can bring.
    pub check_interval: Duration,
    /// Raise the alarm while this process's resident memory (RSS, read from
    /// `/proc/self/statm`; Linux only, elsewhere never measured) is above this many bytes, like
    /// Redis's `maxmemory` with the `noeviction` policy. `0` (the default) sets no limit. It
    /// counts everything the process holds: the state machine, the log's cache, client and
    /// transport buffers, memory the allocator keeps, and the embedding application's own.
    /// Every replica holds the same state, so set it on every node, below the memory each may
    /// use (its container's limit) by what a snapshot build or restore, and one or two check
    /// intervals of writes, can add. Changed at run time with
    /// [`Node::set_memory_limit`](crate::Node::set_memory_limit).
    pub max_memory_bytes: u64,
}

impl Default for QuotaOptions {
    fn default() -> Self {
        QuotaOptions {
            min_free_bytes: 256 << 20,
            max_used_bytes: 0,
            check_interval: Duration::from_secs(1),
            max_memory_bytes: 0,
        }
    }
}

impl QuotaOptions {
    /// Sets the free space below which the alarm is raised (default 256 MiB; `0`: no check);
    /// see [`QuotaOptions::min_free_bytes`].
    #[must_use]
    pub fn with_min_free_bytes(mut self, bytes: u64) -> QuotaOptions {
        self.min_free_bytes = bytes;
        self
    }

    /// Sets the most bytes the data directory may occupy (default `0`: no limit of its own);
    /// see [`QuotaOptions::max_used_bytes`].
    #[must_use]
    pub fn with_max_used_bytes(mut self, bytes: u64) -> QuotaOptions {
        self.max_used_bytes = bytes;
        self
    }

    /// Sets how often the data directory and the memory are measured (default 1 s; must not
    /// be zero).
    #[must_use]
    pub fn with_check_interval(mut self, interval: Duration) -> QuotaOptions {
        self.check_interval = interval;
        self
    }

    /// Sets the most resident memory the process may hold before writes that grow the state
    /// are refused (default `0`: no limit); see [`QuotaOptions::max_memory_bytes`].
    #[must_use]
    pub fn with_max_memory_bytes(mut self, bytes: u64) -> QuotaOptions {
        self.max_memory_bytes = bytes;
        self
    }
}

/// One measurement of a node's storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DiskUsage {
    /// Bytes the data directory's files occupy on disk (allocated blocks).
    pub used_bytes: u64,
    /// Bytes free for unprivileged users on the file system holding the data directory.
    pub free_bytes: u64,
    /// Size of that file system in bytes.
    pub total_bytes: u64,
}

/// A node's view of its storage, its memory and the cluster's alarms; see
/// [`Node::storage`](crate::Node::storage). Fields may be added.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct StorageStatus {
    /// The latest measurement (`None` for in-memory nodes and before the first sample).
    pub usage: Option<DiskUsage>,
    /// Why this node's own alarm is raised, if it is (its storage or its memory).
    pub local_alarm: Option<String>,
    /// The process's resident memory at the latest sample (`None` before the first, and where
    /// it cannot be read).
    pub memory_bytes: Option<u64>,
    /// The memory limit in force (`0`: none); see [`QuotaOptions::max_memory_bytes`].
    pub memory_limit_bytes: u64,
    /// On the leader: the voters whose alarm is raised, with why. Empty elsewhere.
    pub peer_alarms: BTreeMap<NodeId, String>,
    /// Whether this node refuses writes that grow the state (its own alarm or, on the leader, a
    /// voter's).
    pub refusing_writes: bool,
}

/// Measures `dir`: the blocks its files hold and the free space of its file system.
pub(crate) fn measure(dir: &Path) -> std::io::Result<DiskUsage> {
    let vfs = rustix::fs::statvfs(dir)?;
    let block = vfs.f_frsize.max(1);
    Ok(DiskUsage {
        used_bytes: dir_blocks(dir)?,
        free_bytes: vfs.f_bavail.saturating_mul(block),
        total_bytes: vfs.f_blocks.saturating_mul(block),
    })
}

/// This process's resident memory in bytes: the second field of `/proc/self/statm`, in pages.
pub(crate) fn resident_memory() -> std::io::Result<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages = statm
        .split_ascii_whitespace()
        .nth(1)
        .and_then(|f| f.parse::<u64>().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("/proc/self/statm reads {statm:?}"),
            )
        })?;
    Ok(pages.saturating_mul(rustix::param::page_size() as u64))
}

/// Bytes allocated to the files under `dir`, recursively. Files that vanish while it walks (a
/// purged segment, a replaced snapshot) are skipped, and so are subdirectories it may not read:
/// a data directory that is a mount point holds `lost+found`, readable by root only, and failing
/// the whole measurement for it would leave the node without its space alarm.
fn dir_blocks(dir: &Path) -> std::io::Result<u64> {
    blocks_under(dir, |d| std::fs::read_dir(d))
}

/// [`dir_blocks`], listing directories with `read_dir`.
fn blocks_under(
    dir: &Path,
    read_dir: impl Fn(&Path) -> std::io::Result<std::fs::ReadDir>,
) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0u64;
    let mut stack: Vec<PathBuf> = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) if d != dir => {
                tracing::debug!(dir = %d.display(), error = %e, "not counted in the data directory's usage");
                continue;
            }
            Err(e) => return Err(e),
        };
        for entry in entries {
            let Ok(entry) = entry else { continue };
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                total = total.saturating_add(meta.blocks().saturating_mul(512));
            }
        }
    }
    Ok(total)
}

/// `b` bytes for a person: `512 B`, `12.0 KiB`, `3.5 MiB`, `1.2 GiB`.
fn mib(b: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if b < 1024 {
        return format!("{b} B");
    }
    let mut v = b as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

impl QuotaOptions {
    /// Why `usage` breaks these limits, or `None` if it does not.
    pub(crate) fn judge(&self, usage: &DiskUsage) -> Option<String> {
        if self.min_free_bytes > 0 && usage.free_bytes < self.min_free_bytes {
            return Some(format!(
                "{} free on the data directory's file system, below the reserve of {}",
                mib(usage.free_bytes),
                mib(self.min_free_bytes)
            ));
        }
        if self.max_used_bytes > 0 && usage.used_bytes > self.max_used_bytes {
            return Some(format!(
                "the data directory uses {}, above the quota of {}",
                mib(usage.used_bytes),
                mib(self.max_used_bytes)
            ));
        }
        None
    }
}

#[derive(Default)]
struct State {
    usage: Option<DiskUsage>,
    /// Why the storage breaks its limits, at the latest sample.
    disk: Option<String>,
    /// The latest resident memory sample, and why it breaks the limit.
    memory: Option<u64>,
    memory_over: Option<String>,
    /// The alarm in force: `disk`, else `memory_over`.
    local: Option<String>,
    /// Voters in alarm, with why and when the leader last heard so.
    peers: BTreeMap<NodeId, (String, Instant)>,
}

/// Why `resident` bytes break a memory limit of `limit` (`0`: none), if they do.
fn judge_memory(resident: u64, limit: u64) -> Option<String> {
    (limit > 0 && resident > limit).then(|| {
        format!(
            "the process holds {} of memory, above its limit of {}",
            mib(resident),
            mib(limit)
        )
    })
}

/// The alarm state a node shares between its sampler, its transport and its write path.
#[derive(Default)]
pub(crate) struct Space {
    /// The write path's only check: `local || peers` is non-empty.
    refusing: AtomicBool,
    /// The memory limit in force ([`QuotaOptions::max_memory_bytes`], or as last set).
    memory_limit: AtomicU64,
    state: Mutex<State>,
    /// Free bytes to report instead of measuring (simulated full disks in tests).
    #[cfg(feature = "testing")]
    simulated_free: Mutex<Option<u64>>,
}

impl Space {
    fn lock(&self) -> MutexGuard<'_, State> {
        crate::sync::lock(&self.state)
    }

    /// Whether writes that grow the state are refused. One relaxed atomic load.
    pub fn refusing(&self) -> bool {
        self.refusing.load(Ordering::Relaxed)
    }

    fn update_flag(&self, s: &State) {
        self.refusing
            .store(s.local.is_some() || !s.peers.is_empty(), Ordering::Relaxed);
    }

    /// The alarm a refused write is told about: this node's own, else the lowest voter's.
    pub fn reason(&self, me: NodeId) -> (NodeId, String) {
        let s = self.lock();
        match (&s.local, s.peers.iter().next()) {
            (Some(r), _) => (me, r.clone()),
            (None, Some((id, (r, _)))) => (*id, r.clone()),
            (None, None) => (me, "the storage alarm was just cleared".into()),
        }
    }

    /// Whether this node's own storage breaks its limits at the latest sample (not its memory,
    /// not a voter's alarm).
    pub fn disk_alarm(&self) -> bool {
        self.lock().disk.is_some()
    }

    /// A space whose memory limit starts at `quota`'s.
    pub fn new(quota: &QuotaOptions) -> Space {
        let space = Space::default();
        space
            .memory_limit
            .store(quota.max_memory_bytes, Ordering::Relaxed);
        space
    }

    /// Records a sample of the storage and raises or clears the local alarm; logs every change.
    pub fn record(&self, me: NodeId, quota: &QuotaOptions, usage: DiskUsage) {
        let verdict = quota.judge(&usage);
        let mut s = self.lock();
        s.usage = Some(usage);
        s.disk = verdict;
        self.settle(me, &mut s);
    }

    /// Records a sample of the process's resident memory and raises or clears the local alarm.
    pub fn record_memory(&self, me: NodeId, resident: u64) {
        let mut s = self.lock();
        s.memory = Some(resident);
        s.memory_over = judge_memory(resident, self.memory_limit.load(Ordering::Relaxed));
        self.settle(me, &mut s);
    }

    /// Forgets the memory sample (it can no longer be read): the limit is not enforced until
    /// the next sample, rather than a stale one deciding.
    pub fn forget_memory(&self, me: NodeId) {
        let mut s = self.lock();
        s.memory = None;
        s.memory_over = None;
        self.settle(me, &mut s);
    }

    /// Changes the memory limit (`0`: none) and judges the latest sample against it at once.
    pub fn set_memory_limit(&self, me: NodeId, limit: u64) {
        let mut s = self.lock();
        self.memory_limit.store(limit, Ordering::Relaxed);
        s.memory_over = s.memory.and_then(|m| judge_memory(m, limit));
        self.settle(me, &mut s);
    }

    /// Sets the alarm in force from the storage and memory verdicts; logs every change.
    fn settle(&self, me: NodeId, s: &mut State) {
        let verdict = s.disk.clone().or_else(|| s.memory_over.clone());
        match (&s.local, &verdict) {
            (None, Some(why)) => {
                tracing::error!(node = me, reason = %why, "NOSPACE alarm raised: writes that grow the state are refused until space or memory is freed");
            }
            (Some(_), None) => {
                tracing::warn!(
                    node = me,
                    free_bytes = s.usage.map(|u| u.free_bytes),
                    used_bytes = s.usage.map(|u| u.used_bytes),
                    memory_bytes = s.memory,
                    "NOSPACE alarm cleared: writes resume"
                );
            }
            _ => {}
        }
        s.local = verdict;
        self.update_flag(s);
    }

    /// Takes in one round of the leader's questions to its voters: `answers` holds each voter
    /// that answered, with its alarm (`None`: no alarm). A voter that did not answer keeps the
    /// alarm it last reported until `expire` has passed since.
    pub fn report_peers(
        &self,
        me: NodeId,
        answers: BTreeMap<NodeId, Option<String>>,
        expire: Duration,
    ) {
        let now = Instant::now();
        let mut s = self.lock();
        for (id, answer) in answers {
            if id == me {
                continue;
            }
            match answer {
                Some(why) => {
                    if !s.peers.contains_key(&id) {
                        tracing::error!(node = me, peer = id, reason = %why, "a voter raised its NOSPACE alarm: this leader refuses writes that grow the state");
                    }
                    s.peers.insert(id, (why, now));
                }
                None => {
                    if s.peers.remove(&id).is_some() {
                        tracing::warn!(node = me, peer = id, "a voter's NOSPACE alarm cleared");
                    }
                }
            }
        }
        s.peers
            .retain(|_, (_, at)| now.duration_since(*at) < expire);
        self.update_flag(&s);
    }

    /// Forgets every voter's alarm (this node no longer leads).
    pub fn forget_peers(&self) {
        let mut s = self.lock();
        s.peers.clear();
        self.update_flag(&s);
    }

    /// What this node knows.
    pub fn status(&self) -> StorageStatus {
        let s = self.lock();
        StorageStatus {
            usage: s.usage,
            local_alarm: s.local.clone(),
            memory_bytes: s.memory,
            memory_limit_bytes: self.memory_limit.load(Ordering::Relaxed),
            peer_alarms: s
                .peers
                .iter()
                .map(|(id, (w, _))| (*id, w.clone()))
                .collect(),
            refusing_writes: s.local.is_some() || !s.peers.is_empty(),
        }
    }

    /// Measures `dir`, or reports the simulated free space if a test set one.
    pub fn sample(&self, dir: &Path) -> std::io::Result<DiskUsage> {
        #[allow(unused_mut)]
        let mut usage = measure(dir)?;
        #[cfg(feature = "testing")]
        if let Some(free) = *crate::sync::lock(&self.simulated_free) {
            usage.free_bytes = free;
        }
        Ok(usage)
    }

    /// Makes later samples report `free` bytes free (`None`: measure again).
    #[cfg(feature = "testing")]
    pub fn simulate_free(&self, free: Option<u64>) {
        *crate::sync::lock(&self.simulated_free) = free;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(free: u64, used: u64) -> DiskUsage {
        DiskUsage {
            used_bytes: used,
            free_bytes: free,
            total_bytes: 1 << 30,
        }
    }

    #[test]
    fn a_subdirectory_that_cannot_be_read_is_left_out_not_the_whole_measurement() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("wal")).unwrap();
        std::fs::write(root.join("wal").join("segment"), vec![1u8; 64 << 10]).unwrap();
        std::fs::create_dir(root.join("lost+found")).unwrap();
        std::fs::write(root.join("lost+found").join("x"), vec![1u8; 64 << 10]).unwrap();
        // As an unprivileged node sees a mount point's root-only lost+found.
        let denied = root.join("lost+found");
        let read_dir = |d: &Path| {
            if d == denied {
                return Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied));
            }
            std::fs::read_dir(d)
        };
        let counted = blocks_under(root, read_dir).unwrap();
        assert!(counted >= 64 << 10, "the log is counted: {counted}");
        assert!(counted < blocks_under(root, |d| std::fs::read_dir(d)).unwrap());
        // The data directory itself must be readable.
        let denied_root = blocks_under(root, |_| {
            Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied))
        });
        assert!(denied_root.is_err());
    }

    #[test]
    fn thresholds_raise_and_clear_the_alarm() {
        let q = QuotaOptions {
            min_free_bytes: 100,
            max_used_bytes: 1000,
            check_interval: Duration::from_secs(1),
            max_memory_bytes: 0,
        };
        let s = Space::default();
        s.record(1, &q, usage(500, 10));
        assert!(!s.refusing());
        s.record(1, &q, usage(99, 10));
        assert!(s.refusing());
        assert!(s.status().local_alarm.unwrap().contains("free"));
        s.record(1, &q, usage(100, 10));
        assert!(!s.refusing());
        s.record(1, &q, usage(500, 1001));
        assert!(s.status().local_alarm.unwrap().contains("quota"));
        s.record(1, &q, usage(500, 1000));
        assert!(!s.refusing());
        // Zero disables a limit.
        let off = QuotaOptions {
            min_free_bytes: 0,
            max_used_bytes: 0,
            ..q
        };
        s.record(1, &off, usage(0, u64::MAX));
        assert!(!s.refusing());
    }

    #[test]
    fn memory_over_its_limit_raises_the_alarm_until_freed_or_the_limit_moves() {
        let q = QuotaOptions::default().with_max_memory_bytes(1000);
        let s = Space::new(&q);
        s.record_memory(1, 1000);
        assert!(!s.refusing());
        s.record_memory(1, 1001);
        assert!(s.refusing());
        assert!(s.reason(1).1.contains("memory"), "{:?}", s.reason(1));
        s.record_memory(1, 900);
        assert!(!s.refusing());
        // A lower limit judges the latest sample at once; a higher one clears it at once.
        s.set_memory_limit(1, 800);
        assert!(s.refusing());
        assert_eq!(
            (s.status().memory_bytes, s.status().memory_limit_bytes),
            (Some(900), 800)
        );
        s.set_memory_limit(1, 0);
        assert!(!s.refusing());
        // A sample that can no longer be taken does not keep a stale verdict.
        s.set_memory_limit(1, 800);
        assert!(s.refusing());
        s.forget_memory(1);
        assert!(!s.refusing());
        assert_eq!(s.status().memory_bytes, None);
        s.record_memory(1, 900);
        // The storage's alarm and the memory's are separate: clearing one keeps the other.
        let q = q.with_min_free_bytes(100);
        s.set_memory_limit(1, 800);
        s.record(1, &q, usage(50, 10));
        s.record_memory(1, 10);
        assert!(s.refusing(), "the disk is still short");
        assert!(s.reason(1).1.contains("free"));
        s.record(1, &q, usage(500, 10));
        assert!(!s.refusing());
    }

    #[test]
    fn resident_memory_is_read_and_grows_with_what_the_process_touches() {
        let before = resident_memory().unwrap();
        // Other tests of this process may free memory meanwhile, but not 32 MiB of it.
        let touched = std::hint::black_box(vec![1u8; 64 << 20]);
        let after = resident_memory().unwrap();
        assert!(
            before > 0 && after >= before + (32 << 20),
            "{before} -> {after}"
        );
        drop(touched);
    }

    #[test]
    fn peer_alarms_refuse_until_cleared_or_expired() {
        let s = Space::default();
        let minute = Duration::from_secs(60);
        s.report_peers(1, [(2, Some("full".to_string()))].into(), minute);
        assert!(s.refusing());
        assert_eq!(s.reason(1), (2, "full".to_string()));
        // A voter that does not answer keeps its alarm until it expires…
        s.report_peers(1, BTreeMap::new(), minute);
        assert!(s.refusing());
        s.report_peers(1, BTreeMap::new(), Duration::ZERO);
        assert!(!s.refusing());
        // …one that answers without an alarm is cleared at once.
        s.report_peers(1, [(3, Some("full".to_string()))].into(), minute);
        assert!(s.refusing());
        s.report_peers(1, [(3, None)].into(), minute);
        assert!(!s.refusing());
        // A node's own id in a report is not a peer.
        s.report_peers(1, [(1, Some("full".to_string()))].into(), minute);
        assert!(!s.refusing());
        s.report_peers(1, [(2, Some("full".to_string()))].into(), minute);
        s.forget_peers();
        assert!(!s.refusing());
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(mib(1000), "1000 B");
        assert_eq!(mib(1536), "1.5 KiB");
        assert_eq!(mib(256 << 20), "256.0 MiB");
        assert_eq!(mib(3 << 30), "3.0 GiB");
    }

    #[test]
    fn measures_a_real_directory() {
        let dir = tempfile::tempdir().unwrap();
        let before = measure(dir.path()).unwrap();
        std::fs::write(dir.path().join("f"), vec![1u8; 1 << 20]).unwrap();
        let after = measure(dir.path()).unwrap();
        assert!(after.total_bytes > 0);
        assert!(
            after.used_bytes >= before.used_bytes + (1 << 20),
            "{before:?} -> {after:?}"
        );
    }
}
