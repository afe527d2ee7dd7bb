//! Simulated disk faults, for tests (feature `testing`).
//!
//! A [`FaultSwitch`] makes the log's writes fail the way a full disk makes them fail: every
//! later record write and segment preallocation returns `ENOSPC` until the switch is turned off.
//! Nothing written before is touched, so a test can check that a node whose disk filled up
//! stops loudly and recovers every acknowledged write after a restart.

use std::io;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;

/// Makes a durable log's writes fail with `ENOSPC`. Cloned from the log before it is handed to a
/// node.
#[derive(Clone, Default, Debug)]
pub struct FaultSwitch(Arc<AtomicBool>);

impl FaultSwitch {
    /// From now on (`true`) or no longer (`false`), writes fail as on a full disk.
    pub fn set_disk_full(&self, full: bool) {
        self.0.store(full, Ordering::SeqCst);
    }

    /// `Err(ENOSPC)` while the disk is simulated full.
    pub(crate) fn check(&self) -> io::Result<()> {
        if self.0.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(
                rustix::io::Errno::NOSPC.raw_os_error(),
            ));
        }
        Ok(())
    }
}
