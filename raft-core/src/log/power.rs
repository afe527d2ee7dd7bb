//! Simulated power loss, for tests (installed by builds with the feature `testing`).
//!
//! The log tracks, per segment, how far its contents are known durable (an fdatasync completed
//! after they were written). Cutting the [`PowerSwitch`] before the log closes makes it close
//! the way a machine that lost power would: queued writes are never synced, and every segment is
//! cut back to its durable length — what a disk could have lost is lost.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;

/// Makes a durable log close as if the power failed. Cloned from the log before it is handed to
/// a node.
#[derive(Clone, Default, Debug)]
pub struct PowerSwitch(Arc<AtomicBool>);

impl PowerSwitch {
    /// The next close of the log loses everything not yet durable.
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    pub fn cut(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub(crate) fn is_cut(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// How many bytes of each segment (by first index) are known durable.
#[derive(Clone, Default)]
pub(crate) struct DurableExtents(Arc<Mutex<BTreeMap<u64, u64>>>);

impl DurableExtents {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, u64>> {
        crate::sync::lock(&self.0)
    }

    /// At least `len` bytes of `segment` are durable.
    pub fn extend(&self, segment: u64, len: u64) {
        let mut m = self.lock();
        let e = m.entry(segment).or_insert(0);
        *e = (*e).max(len);
    }

    /// Exactly `len` bytes of `segment` exist and are durable (after a truncation).
    pub fn set(&self, segment: u64, len: u64) {
        self.lock().insert(segment, len);
    }

    pub fn remove(&self, segment: u64) {
        self.lock().remove(&segment);
    }

    pub fn get(&self, segment: u64) -> Option<u64> {
        self.lock().get(&segment).copied()
    }
}
