//! A log kept in memory: for tests and for nodes that do not need to survive a restart.
//!
//! It honours the same contract as the durable log — entries are readable once `append`
//! returns and the flush callback fires right away — but nothing outlives the process.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;

use super::LogError;
use crate::types::Entry;
use crate::types::LogId;
use crate::types::Vote;

#[derive(Default)]
struct Inner {
    vote: Option<Vote>,
    committed: Option<LogId>,
    purged: Option<LogId>,
    entries: BTreeMap<u64, Entry>,
}

/// The in-memory log. Clones share the same log.
#[derive(Clone, Default)]
pub(crate) struct MemLog {
    inner: Arc<Mutex<Inner>>,
}

impl MemLog {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        crate::sync::lock(&self.inner)
    }

    pub fn vote(&self) -> Option<Vote> {
        self.lock().vote
    }

    pub fn save_vote(&self, vote: &Vote) {
        self.lock().vote = Some(*vote);
    }

    pub fn committed(&self) -> Option<LogId> {
        self.lock().committed
    }

    pub fn save_committed(&self, committed: Option<LogId>) {
        self.lock().committed = committed;
    }

    /// `(last purged, last)` log ids.
    pub fn state(&self) -> (Option<LogId>, Option<LogId>) {
        let g = self.lock();
        let last = g
            .entries
            .values()
            .next_back()
            .map(|e| e.log_id)
            .or(g.purged);
        (g.purged, last)
    }

    /// The log id of the entry at `index`, or the purged log id at its index.
    pub fn id_at(&self, index: u64) -> Option<LogId> {
        let g = self.lock();
        match g.purged {
            Some(p) if p.index == index => Some(p),
            _ => g.entries.get(&index).map(|e| e.log_id),
        }
    }

    pub fn read_range(&self, start: u64, end: u64) -> Vec<Entry> {
        if start >= end {
            return Vec::new();
        }
        self.lock()
            .entries
            .range(start..end)
            .map(|(_, e)| e.clone())
            .collect()
    }

    pub fn append(&self, entries: impl IntoIterator<Item = Entry>) -> Result<(), LogError> {
        let mut g = self.lock();
        let mut next = match g.entries.keys().next_back() {
            Some(last) => Some(last + 1),
            None => g.purged.map(|p| p.index + 1),
        };
        for e in entries {
            let index = e.log_id.index;
            if let Some(n) = next
                && index != n
            {
                return Err(LogError::OutOfOrder {
                    expected: n,
                    got: index,
                });
            }
            next = Some(index + 1);
            g.entries.insert(index, e);
        }
        Ok(())
    }

    pub fn truncate_after(&self, keep: Option<LogId>) {
        let from = keep.map_or(0, |k| k.index + 1);
        self.lock().entries.split_off(&from);
    }

    pub fn purge(&self, upto: LogId) {
        let mut g = self.lock();
        if g.purged.is_some_and(|p| p.index >= upto.index) {
            return;
        }
        g.entries = g.entries.split_off(&(upto.index + 1));
        g.purged = Some(upto);
    }
}
