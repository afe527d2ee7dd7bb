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
//!   may cut it for, another leader's request, or a chain of more leaders than [`MAX_RUNS`]),
//!   nothing is known until every request is answered, and commit indexes are dropped until then.
//!
//! The chain says what openraft writes if it takes the requests; it may not. It refuses a
//! request of an older vote than its own, and takes an entry at or below its commit index as
//! held without comparing it (its metrics, which the handler's checks read, can show an older
//! commit index than it has). Neither cuts the log, so a commit index is kept only if the log
//! holds it now as well: an entry the log holds at or below a continuing request's previous log
//! id is still there when openraft takes the request. A commit naming an entry this node has not
//! written yet waits for a later request or heartbeat.
//!
//! Each stream is judged on its own, and single requests against the log as it is: requests of
//! one leader arriving at once on several streams (heartbeats have their own) or as concurrent
//! single requests can still cut the log between the check and openraft. Closing that needs
//! openraft to leave the commit index alone for a request it refuses.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

use crate::log::LogIds;
use crate::log::runs::LeaderRuns;
use crate::transport::rpc;
use crate::types::LogId;
use crate::types::Vote;
use crate::validate;

/// The most runs of one leader's entries a chain keeps: a chain spanning more leaders' entries
/// (a follower catching up across many terms) waits for answers instead.
const MAX_RUNS: usize = 64;

/// The largest commit index let through to openraft from the newest leader vote, on any path.
///
/// openraft's metrics show a commit only after the loop that made it, and a stream's next request
/// is checked before the one ahead of it is handled, so a request can be checked against an older
/// commit than openraft will have. openraft takes an entry at or below its commit as held, and a
/// debug check of it stops the node on an entry that cannot be in one log with the commit. A
/// leader never contradicts its own commit, so its requests are also checked against this.
#[derive(Default)]
pub(super) struct LetThrough(std::sync::Mutex<Option<(Vote, LogId)>>);

impl LetThrough {
    /// `known` with the largest commit let through from `vote` counted as committed.
    pub(super) fn known(&self, vote: &Vote, mut known: validate::Known) -> validate::Known {
        if let Some((v, c)) = *crate::sync::lock(&self.0)
            && v == *vote
        {
            known.committed = std::cmp::max(known.committed, Some(c));
        }
        known
    }

    /// Records the commit index of `req`, about to be forwarded.
    pub(super) fn record(&self, req: &rpc::AppendEntriesRequest) {
        let Some(commit) = req.leader_commit else {
            return;
        };
        let mut g = crate::sync::lock(&self.0);
        match *g {
            Some((v, c)) if v == req.vote && c >= commit => {}
            Some((v, _)) if v != req.vote && !validate::at_least(&req.vote, &v) => {}
            _ => *g = Some((req.vote, commit)),
        }
    }
}

/// The entries a chain of unanswered requests writes.
#[derive(Debug, Clone, Default)]
struct Chain {
    /// The leader vote of every request in the chain, once one has been forwarded.
    vote: Option<Vote>,
    /// The first index the chain writes: the log below it is the log as it is now.
    from: u64,
    /// The chain's entries from `from` on, as runs of `(first index, leader)`, up to `last`.
    runs: LeaderRuns,
    last: u64,
}

impl Chain {
    /// No request in flight: the log as it is.
    fn settled() -> Chain {
        Chain {
            vote: None,
            from: u64::MAX,
            runs: LeaderRuns::default(),
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
        self.runs.id_at(index)
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
            self.runs.cut_from(start);
        }
        for e in &req.entries {
            self.runs.push(e.log_id.index, e.log_id.leader_id);
        }
        self.last = last.log_id.index;
    }
}

/// One replication stream's view of what its requests make of the log (see the module docs).
pub(super) struct Shadow {
    log: LogIds,
    /// `None` when nothing is known until every forwarded request is answered.
    chain: Option<Chain>,
    forwarded: u64,
    answered: Arc<AtomicU64>,
}

impl Shadow {
    pub(super) fn new(log: LogIds) -> Shadow {
        Shadow {
            log,
            chain: Some(Chain::settled()),
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
    /// counts it as forwarded.
    pub(super) fn forward(&mut self, req: &mut rpc::AppendEntriesRequest) {
        // Answers are counted after openraft has handled the request, and what it wrote is in
        // the log's view by then.
        if self.answered.load(Ordering::Acquire) == self.forwarded {
            self.chain = Some(Chain::settled());
        }
        self.forwarded += 1;
        self.chain = match self.chain.take() {
            Some(mut chain) if chain.vote.is_none_or(|v| v == req.vote) => {
                let continues = validate::limit_commit(req, |index| chain.at(index, &self.log));
                // And the log holds it now (see the module docs).
                if req
                    .leader_commit
                    .is_some_and(|c| self.log.at(c.index) != Some(c))
                {
                    req.leader_commit = None;
                }
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
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;
    use openraft::storage::RaftLogStorage;

    use super::*;
    use crate::log::LogStore;
    use crate::types;
    use crate::types::Entry;
    use crate::types::Payload;

    const VOTE: u64 = 5;

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

    /// A stream's shadow of an in-memory log holding (1, 0), (1, 1) and (2, 2).
    struct Stream {
        log: LogStore,
        shadow: Shadow,
    }

    impl Stream {
        fn new() -> Stream {
            let mut log = LogStore::memory();
            let entries = vec![entry(1, 0), entry(1, 1), entry(2, 2)];
            log.append_with(entries, |r| assert!(r.is_ok()))
                .expect("appends");
            let shadow = Shadow::new(log.ids());
            Stream { log, shadow }
        }

        /// Forwards `r` and returns the commit index it keeps.
        fn send(&mut self, mut r: rpc::AppendEntriesRequest) -> Option<(u64, u64)> {
            self.shadow.forward(&mut r);
            r.leader_commit.map(|c| (c.leader_id.term, c.index))
        }

        /// Writes `r`'s entries after its previous log id, as openraft does when it takes it
        /// (before it answers).
        fn take(&mut self, r: rpc::AppendEntriesRequest) {
            let cut = self.log.truncate_after(r.prev_log_id).now_or_never();
            assert!(matches!(cut, Some(Ok(()))));
            self.log
                .append_with(r.entries, |r| assert!(r.is_ok()))
                .expect("appends");
        }
    }

    #[test]
    fn a_request_queued_behind_a_cut_keeps_no_commit_index() {
        let mut s = Stream::new();
        // Refused: its previous log id is another entry's. openraft cuts the log at index 1.
        assert_eq!(s.send(req(Some((3, 1)), &[], None)), None);
        // Checked before the cut is made: the log still holds (2, 2).
        assert_eq!(s.send(req(Some((2, 2)), &[], Some((2, 2)))), None);
        // Once both are answered, the log is read as it is again.
        s.shadow.answers().fetch_add(2, Ordering::Release);
        assert_eq!(s.send(req(Some((2, 2)), &[], Some((2, 2)))), Some((2, 2)));
    }

    #[test]
    fn a_pipelined_chain_keeps_its_commit_indexes() {
        let mut s = Stream::new();
        let first = || req(Some((2, 2)), &[(3, 3), (3, 4)], Some((2, 2)));
        assert_eq!(s.send(first()), Some((2, 2)));
        // The chain says the log will hold (3, 4), but it does not yet.
        assert_eq!(s.send(req(Some((3, 4)), &[(3, 5)], Some((3, 4)))), None);
        s.take(first());
        s.take(req(Some((3, 4)), &[(3, 5)], None));
        let steps = [
            (req(Some((3, 5)), &[], Some((3, 4))), Some((3, 4))),
            // A commit index past the previous log id: limited to it.
            (req(Some((3, 5)), &[], Some((3, 9))), Some((3, 5))),
            // Rewriting the chain's own entry 5 continues (previous log id (3, 4)). A commit
            // index among its own entries waits for a request that follows them.
            (
                req(Some((3, 4)), &[(3, 5), (3, 6)], Some((3, 6))),
                Some((3, 4)),
            ),
            // Entry 6 of another leader than the chain wrote: does not continue.
            (req(Some((2, 6)), &[], Some((2, 6))), None),
            // And nothing is known until the chain is answered.
            (req(Some((3, 5)), &[], Some((3, 5))), None),
        ];
        for (i, (r, want)) in steps.into_iter().enumerate() {
            assert_eq!(s.send(r), want, "step {i}");
        }
    }

    #[test]
    fn a_commit_index_the_chain_rewrites_is_judged_by_the_chain() {
        let mut s = Stream::new();
        // Rewrites index 2 (held as (2, 2)) with (3, 2), then adds (3, 3).
        let rewrite = || req(Some((1, 1)), &[(3, 2), (3, 3)], None);
        assert_eq!(s.send(rewrite()), None);
        // Checked before the rewrite is made, but (2, 2) is not what the log will hold.
        assert_eq!(s.send(req(Some((3, 3)), &[], Some((2, 2)))), None);
        s.take(rewrite());
        assert_eq!(s.send(req(Some((3, 3)), &[], Some((3, 2)))), Some((3, 2)));
    }

    #[test]
    fn another_leaders_request_in_a_chain_keeps_no_commit_index() {
        let mut s = Stream::new();
        assert_eq!(
            s.send(req(Some((2, 2)), &[(3, 3)], Some((2, 2)))),
            Some((2, 2))
        );
        let mut other = req(Some((2, 2)), &[], Some((2, 2)));
        other.vote = Vote::new_committed(VOTE + 1, 2);
        assert_eq!(s.send(other), None);
    }

    #[test]
    fn a_commit_index_of_an_entry_openraft_takes_as_held_is_dropped() {
        let mut s = Stream::new();
        let two = || req(Some((2, 2)), &[(3, 3), (3, 4)], None);
        assert_eq!(s.send(two()), None);
        s.take(two());
        assert_eq!(s.send(req(Some((3, 4)), &[], Some((3, 4)))), Some((3, 4)));
        // Entry (4, 3) at an index openraft has committed: it takes it as held and does not
        // write it, so the log keeps (3, 3) where the chain says (4, 3).
        assert_eq!(s.send(req(Some((2, 2)), &[(4, 3)], None)), None);
        assert_eq!(s.send(req(Some((4, 3)), &[], Some((4, 3)))), None);
    }
}
