//! The seam where tests simulate disk faults and power loss.
//!
//! The write-ahead log reports to a [`Simulation`] at each point where a real disk can fail or
//! lose data: before a record write or a segment preallocation, before each of the flusher's
//! fdatasyncs and directory fsyncs, when bytes become durable, when a segment is created, cut
//! back or removed, and when the log closes.
//!
//! Directory entries follow the weakest rule POSIX allows: a segment's removal is durable only
//! once the directory has been fsynced after it. A power loss before that brings the segment
//! back, holding what of it was durable. The log that ships carries none, so each point costs one untaken branch;
//! builds with the `testing` feature install one at open. Either way the log's layout and code
//! paths are the same, so the log under test is the log that ships.

use std::fs;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;

use super::fault::FaultSwitch;
use super::power::DurableExtents;
use super::power::PowerSwitch;
use super::segment;

/// Simulated faults and power loss for one log, with the switches tests hold.
#[derive(Clone, Default)]
pub(crate) struct Simulation {
    power: PowerSwitch,
    fault: FaultSwitch,
    durable: DurableExtents,
    /// Segments removed since the directory was last fsynced.
    unlinked: Arc<Mutex<Vec<Unlinked>>>,
}

/// A removed segment whose removal is not durable yet.
struct Unlinked {
    path: PathBuf,
    /// Still open, so its contents outlive the directory entry.
    file: Arc<File>,
    /// Bytes of it known durable when it was removed.
    durable: u64,
}

impl Simulation {
    /// A simulation for a log whose recovered `segments` are durable whole, except `last.0`, of
    /// which only the first `last.1` bytes are known durable. (The log opens with its last
    /// segment known durable only as far as its header, and reports the rest once it has synced
    /// it: a crashed process can leave unsynced writes in the page cache for recovery to find.)
    pub fn new(segments: impl IntoIterator<Item = u64>, last: Option<(u64, u64)>) -> Simulation {
        let sim = Simulation::default();
        for s in segments {
            sim.durable.set(s, u64::MAX);
        }
        if let Some((segment, len)) = last {
            sim.durable.set(segment, len);
        }
        sim
    }

    /// The switch that makes the log close as if the power failed.
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    pub fn power_switch(&self) -> PowerSwitch {
        self.power.clone()
    }

    /// The switch that makes the log's writes or fdatasyncs fail.
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    pub fn fault_switch(&self) -> FaultSwitch {
        self.fault.clone()
    }

    /// Before a record write or a segment preallocation: fails while the disk is "full".
    pub fn before_write(&self) -> io::Result<()> {
        self.fault.check()
    }

    /// Before an fdatasync: fails while fdatasyncs are made to fail.
    pub fn before_sync(&self) -> io::Result<()> {
        self.fault.check_sync()
    }

    /// Before an fsync of the log's directory: fails while directory fsyncs are made to fail.
    pub fn before_dir_sync(&self) -> io::Result<()> {
        self.fault.check_dir_sync()
    }

    /// The log's directory was fsynced: every removal before is durable.
    pub fn dir_synced(&self) {
        crate::sync::lock(&self.unlinked).clear();
    }

    /// At least `len` bytes of `segment` are now durable.
    pub fn durable(&self, segment: u64, len: u64) {
        self.durable.extend(segment, len);
    }

    /// `segment` now holds exactly `len` durable bytes (created, or cut back and synced).
    pub fn reset(&self, segment: u64, len: u64) {
        self.durable.set(segment, len);
    }

    /// `segment`, at `path` and still open as `file`, was deleted; the deletion is durable once
    /// the directory is fsynced.
    pub fn removed(&self, segment: u64, path: PathBuf, file: Arc<File>) {
        let durable = self.durable.get(segment).unwrap_or(segment::HEADER_LEN);
        self.durable.remove(segment);
        crate::sync::lock(&self.unlinked).push(Unlinked {
            path,
            file,
            durable,
        });
    }

    /// Whether the log must close as a power cut would instead of flushing.
    pub fn power_is_cut(&self) -> bool {
        self.power.is_cut()
    }

    /// Cuts every segment back to what is known durable, and brings back every segment whose
    /// removal was not, as a machine that lost power would find them. Called on close after the
    /// flusher was abandoned.
    pub fn lose_power(&self, segments: &[(u64, Arc<File>)]) {
        for u in crate::sync::lock(&self.unlinked).drain(..) {
            if let Err(e) = u.restore() {
                tracing::warn!(error = %e, path = %u.path.display(), "simulated power loss could not bring back a segment");
            }
        }
        for (first, file) in segments {
            let keep = self.durable.get(*first).unwrap_or(segment::HEADER_LEN);
            if keep == u64::MAX {
                continue;
            }
            let len = file.metadata().map(|m| m.len()).unwrap_or(0);
            if keep < len
                && let Err(e) = file.set_len(keep)
            {
                tracing::warn!(error = %e, "simulated power loss could not cut a segment");
            }
        }
    }
}

impl Unlinked {
    /// Writes the durable part of the removed segment back under its name.
    fn restore(&self) -> io::Result<()> {
        let len = self.durable.min(self.file.metadata()?.len());
        let mut bytes = vec![0u8; usize::try_from(len).map_err(io::Error::other)?];
        self.file.read_exact_at(&mut bytes, 0)?;
        fs::write(&self.path, bytes)
    }
}
