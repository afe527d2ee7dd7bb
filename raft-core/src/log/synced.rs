//! How far the segment being appended to is known durable, for the testimony records the writer
//! puts in the log (`WalRecord::Synced`).
//!
//! An append's waiter reports the offset its records end at once an fdatasync covering them has
//! completed; the writer's next batch then starts with a record saying "this segment was durable
//! up to here". Recovery reads them back to tell a tail that a power cut left with holes (past
//! what any record vouches for) from damage to records vouched durable (recovery.rs).
//!
//! Reports belong to an epoch: recovery and truncation, which make durable exactly what they keep,
//! start a new one, so that a late report from an append made before a truncation cannot claim
//! records written after it.

use std::sync::Arc;
use std::sync::Mutex;

#[derive(Debug, Default)]
struct Mark {
    epoch: u64,
    segment: u64,
    offset: u64,
}

/// Shared by the writer and the waiters of its appends.
#[derive(Debug, Clone, Default)]
pub(super) struct SyncedMark(Arc<Mutex<Mark>>);

impl SyncedMark {
    /// Records that segment `segment` is durable through `offset`, as reported for an append
    /// made in `epoch`; reports from an earlier epoch, or behind the mark, change nothing.
    pub fn advance(&self, epoch: u64, segment: u64, offset: u64) {
        let mut m = crate::sync::lock(&self.0);
        if m.epoch == epoch && (segment, offset) > (m.segment, m.offset) {
            m.segment = segment;
            m.offset = offset;
        }
    }

    /// Starts a new epoch in which `segment` is known durable through `offset` (0 when nothing
    /// is known), and returns it: appends made from now on report in it. The mark starts in
    /// epoch 0.
    pub fn restart(&self, segment: u64, offset: u64) -> u64 {
        let mut m = crate::sync::lock(&self.0);
        m.epoch += 1;
        m.segment = segment;
        m.offset = offset;
        m.epoch
    }

    /// How far `segment` is known durable, if anything of it is.
    pub fn of(&self, segment: u64) -> Option<u64> {
        let m = crate::sync::lock(&self.0);
        (m.segment == segment && m.offset > 0).then_some(m.offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_move_the_mark_forward_within_their_epoch_only() {
        let mark = SyncedMark::default();
        assert_eq!(mark.of(1), None);
        let e = 0;
        mark.advance(e, 1, 100);
        mark.advance(e, 1, 60);
        assert_eq!(
            mark.of(1),
            Some(100),
            "an older report does not move it back"
        );
        mark.advance(e, 5, 30);
        assert_eq!(
            mark.of(5),
            Some(30),
            "a later segment replaces an earlier one"
        );
        assert_eq!(mark.of(1), None);

        let later = mark.restart(5, 24);
        mark.advance(e, 5, 500);
        assert_eq!(
            mark.of(5),
            Some(24),
            "a report from before the restart is ignored"
        );
        mark.advance(later, 5, 500);
        assert_eq!(mark.of(5), Some(500));
    }
}
