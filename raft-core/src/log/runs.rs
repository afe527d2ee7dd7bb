//! The leaders of consecutive log entries, kept as one `(first index, leader)` pair per change of
//! leader: one per leader the entries span, so a log id is named without reading the entries.

use std::collections::VecDeque;

use crate::types::LeaderId;
use crate::types::LogId;

/// The leader of each of a run of consecutive entries (see the module docs). It knows nothing of
/// where the entries end: the caller asks only for indexes it holds.
#[derive(Debug, Clone, Default)]
pub(crate) struct LeaderRuns(VecDeque<(u64, LeaderId)>);

impl LeaderRuns {
    /// Adds the entry at `index`, the one after the last added, written by `leader`.
    pub(crate) fn push(&mut self, index: u64, leader: LeaderId) {
        if self.0.back().is_none_or(|(_, l)| *l != leader) {
            self.0.push_back((index, leader));
        }
    }

    /// Forgets the entries from `index` on.
    pub(crate) fn cut_from(&mut self, index: u64) {
        while self.0.back().is_some_and(|(first, _)| *first >= index) {
            self.0.pop_back();
        }
    }

    /// Forgets the runs wholly before `first` (the first run kept may start before it).
    pub(crate) fn drop_before(&mut self, first: u64) {
        while self.0.get(1).is_some_and(|(start, _)| *start <= first) {
            self.0.pop_front();
        }
    }

    pub(crate) fn clear(&mut self) {
        self.0.clear();
    }

    /// How many runs there are.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// The log id of the entry at `index`: its leader is that of the last run starting at or
    /// before it.
    pub(crate) fn id_at(&self, index: u64) -> Option<LogId> {
        let run = self.0.partition_point(|(first, _)| *first <= index);
        let (_, leader) = self.0.get(run.checked_sub(1)?)?;
        Some(LogId::new(*leader, index))
    }
}
