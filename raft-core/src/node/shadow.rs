//! What the log will be when openraft takes a request of a replication stream: the log as it is,
//! changed by the stream's earlier requests that openraft has not answered yet.
//!
//! openraft reads a stream ahead: it takes the next request as soon as the one before is queued,
//! not once it is handled. A request's commit index is judged against the log openraft will have
//! when it takes the request ([`crate::validate::limit_commit`]); read as it is when the request
//! arrives, a request that cuts the log, queued just ahead, would go unseen. So each stream keeps
//! a [`Shadow`] of what its unanswered requests make of the log:
//! - when every request it forwarded has been answered, the log is what openraft has (a refused
//!   request is answered after its cut, a taken one after its entries are written);
//! - while the unanswered requests are all from one leader, each continuing the log as the ones
//!   before it leave it, the log will be the log as it is below the first index they write, then
//!   their entries. An honest leader's stream is always such a chain;
//! - after anything else (a request that does not continue the log, which openraft refuses and
//!   may cut it for, another leader's request, a chain of more leaders than [`MAX_RUNS`], or a
//!   request naming a log id that cannot be in one log with the largest commit index the stream
//!   has let through), nothing is known until every request is answered, and commit indexes are
//!   dropped until then. (openraft takes an entry at or below its commit index as held without
//!   comparing it, so such a request's entries may not be written.)
//!
//! Each stream is judged on its own, and single requests against the log as it is: requests of
//! one leader arriving at once on several streams (heartbeats have their own) or as concurrent
//! single requests can still change the log, or openraft's commit index, between the check and
//! openraft. Closing that needs openraft to leave the commit index alone for a request it
//! refuses.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

use crate::log::LogIds;
use crate::transport::rpc;
use crate::types::LeaderId;
use crate::types::LogId;
use crate::types::Vote;
use crate::validate;

/// The most runs of one leader's entries a chain keeps: a chain spanning more leaders' entries
/// (a follower catching up across many terms) waits for answers instead.
const MAX_RUNS: usize = 64;

/// The entries a chain of unanswered requests writes.
#[derive(Debug, Clone, Default)]
struct Chain {
    /// The leader vote of every request in the chain, once one has been forwarded.
    vote: Option<Vote>,
    /// The first index the chain writes: the log below it is the log as it is now.
    from: u64,
    /// The chain's entries from `from` on, as runs of `(first index, leader)`, up to `last`.
    runs: VecDeque<(u64, LeaderId)>,
    last: u64,
}

impl Chain {
    /// No request in flight: the log as it is.
    fn settled() -> Chain {
        Chain {
            vote: None,
            from: u64::MAX,
            runs: VecDeque::new(),
            last: 0,
        }
    }

    fn at(&self, index: u64, log: &LogIds) -> Option<LogId> {
        if index < self.from {
            return log.at(index);
        }
        if index > self.last {
            return None;
        }
        let run = self.runs.partition_point(|(first, _)| *first <= index);
        let (_, leader) = self.runs.get(run.checked_sub(1)?)?;
        Some(LogId::new(*leader, index))
    }

    /// The chain once openraft has taken `req`, which continues it.
    fn extend(&mut self, req: &rpc::AppendEntriesRequest) {
        self.vote = Some(req.vote);
        let (Some(first), Some(last)) = (req.entries.first(), req.entries.last()) else {
            // An entry-less request changes nothing.
            return;
        };
        let start = first.log_id.index;
        if start <= self.from {
            self.from = start;
            self.runs.clear();
        } else {
            while self.runs.back().is_some_and(|(i, _)| *i >= start) {
                self.runs.pop_back();
            }
        }
        for e in &req.entries {
            if self
                .runs
                .back()
                .is_none_or(|(_, leader)| *leader != e.log_id.leader_id)
            {
                self.runs.push_back((e.log_id.index, e.log_id.leader_id));
            }
        }
        self.last = last.log_id.index;
    }
}

/// One replication stream's view of what its requests make of the log (see the module docs).
pub(super) struct Shadow {
    log: LogIds,
    /// `None` when nothing is known until every forwarded request is answered.
    chain: Option<Chain>,
    /// The largest commit index the stream has let through: openraft's may be that far ahead of
    /// what its metrics show.
    committed: Option<LogId>,
    forwarded: u64,
    answered: Arc<AtomicU64>,
}

impl Shadow {
    pub(super) fn new(log: LogIds) -> Shadow {
        Shadow {
            log,
            chain: Some(Chain::settled()),
            committed: None,
            forwarded: 0,
            answered: Arc::default(),
        }
    }

    /// The counter of the stream's answers: the stream adds one for each answer openraft gives.
    pub(super) fn answers(&self) -> Arc<AtomicU64> {
        self.answered.clone()
    }

    /// Limits the commit index of `req`, the stream's next request, as
    /// [`validate::limit_commit`] does against the log openraft will have when it takes it, and
    /// counts it as forwarded. `known` is the commit index openraft's metrics show.
    pub(super) fn forward(&mut self, req: &mut rpc::AppendEntriesRequest, known: Option<LogId>) {
        // Answers are counted after openraft has handled the request, and what it wrote is in
        // the log's view by then.
        if self.answered.load(Ordering::Acquire) == self.forwarded {
            self.chain = Some(Chain::settled());
        }
        self.forwarded += 1;
        let committed = std::cmp::max(self.committed, known);
        self.chain = match self.chain.take() {
            Some(mut chain)
                if chain.vote.is_none_or(|v| v == req.vote)
                    && validate::fits(req, committed.as_ref()) =>
            {
                let continues = validate::limit_commit(req, |index| chain.at(index, &self.log));
                if continues {
                    chain.extend(req);
                }
                (continues && chain.runs.len() <= MAX_RUNS).then_some(chain)
            }
            _ => {
                req.leader_commit = None;
                None
            }
        };
        self.committed = std::cmp::max(self.committed, req.leader_commit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::LogStore;
    use crate::types;
    use crate::types::Entry;
    use crate::types::Payload;

    const VOTE: u64 = 3;

    fn entry(term: u64, index: u64) -> Entry {
        Entry {
            log_id: types::log_id(term, 1, index),
            payload: Payload::Blank,
        }
    }

    fn req(
        prev: Option<(u64, u64)>,
        entries: &[(u64, u64)],
        commit: Option<(u64, u64)>,
    ) -> rpc::AppendEntriesRequest {
        rpc::AppendEntriesRequest {
            vote: Vote::new_committed(VOTE, 1),
            prev_log_id: prev.map(|(t, i)| types::log_id(t, 1, i)),
            leader_commit: commit.map(|(t, i)| types::log_id(t, 1, i)),
            entries: entries.iter().map(|(t, i)| entry(*t, *i)).collect(),
        }
    }

    /// A shadow of an in-memory log holding (1, 0), (1, 1) and (2, 2).
    fn shadow() -> Shadow {
        let mut log = LogStore::memory();
        let entries = vec![entry(1, 0), entry(1, 1), entry(2, 2)];
        log.append_with(entries, |r| assert!(r.is_ok()))
            .expect("appends");
        Shadow::new(log.ids())
    }

    fn commit_after(shadow: &mut Shadow, mut r: rpc::AppendEntriesRequest) -> Option<(u64, u64)> {
        shadow.forward(&mut r, None);
        r.leader_commit.map(|c| (c.leader_id.term, c.index))
    }

    #[test]
    fn a_request_queued_behind_a_cut_keeps_no_commit_index() {
        let mut s = shadow();
        // Refused: its previous log id is another entry's. openraft cuts the log at index 1.
        assert_eq!(commit_after(&mut s, req(Some((3, 1)), &[], None)), None);
        // Checked before the cut is made: the log still holds (2, 2).
        assert_eq!(
            commit_after(&mut s, req(Some((2, 2)), &[], Some((2, 2)))),
            None
        );
        // Once both are answered, the log is read as it is again.
        s.answers().fetch_add(2, Ordering::Release);
        assert_eq!(
            commit_after(&mut s, req(Some((2, 2)), &[], Some((2, 2)))),
            Some((2, 2))
        );
    }

    #[test]
    fn a_pipelined_chain_keeps_its_commit_indexes() {
        let mut s = shadow();
        let steps = [
            (
                req(Some((2, 2)), &[(3, 3), (3, 4)], Some((2, 2))),
                Some((2, 2)),
            ),
            (req(Some((3, 4)), &[(3, 5)], Some((3, 4))), Some((3, 4))),
            // An entry-less request with a commit past what the chain wrote: limited to its
            // previous log id.
            (req(Some((3, 5)), &[], Some((3, 9))), Some((3, 5))),
            // Rewriting the chain's own entry 5: continues (previous log id (3, 4)). A commit
            // index among its own entries waits for a request that follows them.
            (
                req(Some((3, 4)), &[(3, 5), (3, 6)], Some((3, 6))),
                Some((3, 4)),
            ),
            // Entry 6 of another leader than the chain wrote: does not continue.
            (req(Some((2, 6)), &[], Some((2, 6))), None),
            // And nothing is known until the chain is answered.
            (req(Some((3, 6)), &[], Some((3, 6))), None),
        ];
        for (i, (r, want)) in steps.into_iter().enumerate() {
            assert_eq!(commit_after(&mut s, r), want, "step {i}");
        }
    }

    #[test]
    fn a_commit_index_the_chain_rewrites_is_judged_by_the_chain() {
        let mut s = shadow();
        // Rewrites index 2 (held as (2, 2)) with (3, 2), then adds (3, 3).
        let rewrite = req(Some((1, 1)), &[(3, 2), (3, 3)], None);
        assert_eq!(commit_after(&mut s, rewrite), None);
        // Checked before the rewrite is made, but (2, 2) is not what the log will hold.
        assert_eq!(
            commit_after(&mut s, req(Some((3, 3)), &[], Some((2, 2)))),
            None
        );
        assert_eq!(
            commit_after(&mut s, req(Some((3, 3)), &[], Some((3, 2)))),
            Some((3, 2))
        );
    }

    #[test]
    fn another_leaders_request_in_a_chain_keeps_no_commit_index() {
        let mut s = shadow();
        assert_eq!(
            commit_after(&mut s, req(Some((2, 2)), &[(3, 3)], Some((2, 2)))),
            Some((2, 2))
        );
        let mut other = req(Some((3, 3)), &[], Some((3, 3)));
        other.vote = Vote::new_committed(VOTE + 1, 2);
        assert_eq!(commit_after(&mut s, other), None);
    }

    #[test]
    fn a_request_contradicting_a_commit_the_stream_let_through_ends_the_chain() {
        let mut s = shadow();
        assert_eq!(
            commit_after(&mut s, req(Some((2, 2)), &[(3, 3), (3, 4)], None)),
            None
        );
        assert_eq!(
            commit_after(&mut s, req(Some((3, 4)), &[], Some((3, 4)))),
            Some((3, 4))
        );
        // (4, 3) cannot be in one log with (3, 4): openraft, having committed (3, 4), would take
        // it as held and not write it.
        assert_eq!(
            commit_after(&mut s, req(Some((2, 2)), &[(4, 3)], None)),
            None
        );
        assert_eq!(
            commit_after(&mut s, req(Some((4, 3)), &[], Some((4, 3)))),
            None
        );
    }
}
