//! Simulated disk faults, for tests (installed by builds with the feature `testing`).
//!
//! A [`FaultSwitch`] makes the log's writes fail the way a full disk makes them fail — every
//! later record write and preallocation returns `ENOSPC` — or its fdatasyncs or directory fsyncs
//! fail with `EIO`, until the switch is turned off. Nothing written before is touched, so a test
//! can check that a node whose disk failed stops loudly and recovers every acknowledged write
//! after a restart.

use std::io;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;

/// Makes a durable log's writes fail with `ENOSPC`, or its fdatasyncs with `EIO`. Cloned from
/// the log before it is handed to a node.
#[derive(Clone, Default, Debug)]
pub struct FaultSwitch(Arc<Faults>);

#[derive(Default, Debug)]
struct Faults {
    full: AtomicBool,
    sync_fails: AtomicBool,
    dir_sync_fails: AtomicBool,
}

impl FaultSwitch {
    /// From now on (`true`) or no longer (`false`), writes fail as on a full disk.
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    pub fn set_disk_full(&self, full: bool) {
        self.0.full.store(full, Ordering::SeqCst);
    }

    /// From now on (`true`) or no longer (`false`), fdatasyncs fail with `EIO`.
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    pub fn set_sync_fails(&self, fails: bool) {
        self.0.sync_fails.store(fails, Ordering::SeqCst);
    }

    /// From now on (`true`) or no longer (`false`), fsyncs of the log's directory fail with
    /// `EIO`: whatever was created, renamed or removed in it since its last fsync is not durable.
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    pub fn set_dir_sync_fails(&self, fails: bool) {
        self.0.dir_sync_fails.store(fails, Ordering::SeqCst);
    }

    /// `Err(ENOSPC)` while the disk is simulated full.
    pub(crate) fn check(&self) -> io::Result<()> {
        if self.0.full.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(
                rustix::io::Errno::NOSPC.raw_os_error(),
            ));
        }
        Ok(())
    }

    /// `Err(EIO)` while fdatasyncs are simulated to fail.
    pub(crate) fn check_sync(&self) -> io::Result<()> {
        if self.0.sync_fails.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(
                rustix::io::Errno::IO.raw_os_error(),
            ));
        }
        Ok(())
    }

    /// `Err(EIO)` while directory fsyncs are simulated to fail.
    pub(crate) fn check_dir_sync(&self) -> io::Result<()> {
        if self.0.dir_sync_fails.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(
                rustix::io::Errno::IO.raw_os_error(),
            ));
        }
        Ok(())
    }
}
