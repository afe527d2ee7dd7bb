//! Checks on what a peer sends, before it reaches the consensus engine or the log.
//!
//! openraft assumes its peers are honest raftkit nodes: it panics on some impossible inputs and
//! persists others (an entry naming a voter without an address is written to the log, and the node
//! then refuses to start). Every incoming request therefore passes through these checks in the
//! node's [`RpcHandler`](crate::transport::RpcHandler), so every transport — ours or one a user
//! writes — gets the same protection. A request that fails is refused with
//! [`RpcHandlerError::Invalid`] and changes nothing.
//!
//! The checks are those an honest leader always satisfies:
//! * entries are contiguous, starting right after `prev_log_id`, with leaders (term, then node
//!   id) that never go back and never pass the sender's vote;
//! * no index is `u64::MAX`, so `index + 1` never overflows anywhere downstream;
//! * every membership (in an entry or a snapshot) has at least one voter set, no empty voter set,
//!   and an address for every voter — exactly what recovery requires of the log;
//! * replication and snapshots carry an elected (committed) leader vote;
//! * no log id a request names (an entry, the previous or committed one, a candidate's last
//!   one, a snapshot's) is of a leader later than the sender's vote;
//! * no peer speaks as the receiving node (openraft asserts that a leader it hears from is not
//!   itself);
//! * no vote has a term past [`MAX_TERM`]: a node that took such a term would overflow `term + 1`
//!   at its next election (a panic in debug builds, a term going back to 0 in release builds).

use crate::disk::DiskMembership;
use crate::transport::RpcHandlerError;
use crate::transport::rpc;
use crate::types::LogId;
use crate::types::Membership;
use crate::types::NodeId;
use crate::types::Payload;
use crate::types::SnapshotMeta;
use crate::types::Vote;

fn invalid(msg: impl Into<String>) -> RpcHandlerError {
    RpcHandlerError::Invalid(msg.into())
}

/// The index after `id`, or an error if there is none.
fn next_index(id: &LogId) -> Result<u64, RpcHandlerError> {
    id.index
        .checked_add(1)
        .ok_or_else(|| invalid(format!("log index {} has no successor", id.index)))
}

/// Replication and snapshots come only from an elected leader, whose vote is committed; openraft
/// asserts as much and would otherwise treat the sender as leader.
fn from_leader(vote: &Vote, what: &str) -> Result<(), RpcHandlerError> {
    if !vote.committed {
        return Err(invalid(format!(
            "{what} from {vote}, which is not an elected leader's vote"
        )));
    }
    Ok(())
}

/// The largest term a request's vote may have. Each election raises a term by one, so no
/// honest cluster comes near it, and below it every node's `term + 1` has room.
pub(crate) const MAX_TERM: u64 = u64::MAX >> 1;

/// A request whose vote names the receiving node `me` as its sender, or has a term past
/// [`MAX_TERM`]: no honest peer sends one.
pub(crate) fn not_from_me(vote: &Vote, me: NodeId) -> Result<(), RpcHandlerError> {
    if vote.leader_id.node_id == me {
        return Err(invalid(format!(
            "a request from {vote} speaks as this node ({me})"
        )));
    }
    if vote.leader_id.term > MAX_TERM {
        return Err(invalid(format!(
            "a request from {vote} has a term past {MAX_TERM}, which no election reaches"
        )));
    }
    Ok(())
}

/// `id` must not name a leader later than the sender's vote. Leaders are ordered by term, then
/// by node id (several may lead in one term), and a leader's log holds only entries of leaders
/// up to itself; openraft asserts this of what it installs, so a term-only check would let a
/// forged snapshot from leader `(T, n)` that claims entries of `(T, n + 1)` stop the node.
fn not_after_vote(id: &LogId, vote: &Vote, what: &str) -> Result<(), RpcHandlerError> {
    if id.leader_id > vote.leader_id {
        return Err(invalid(format!(
            "{what} {id} is newer than the sender's vote {vote}"
        )));
    }
    Ok(())
}

/// A membership as recovery will read it back: at least one voter set, none empty, and an
/// address for every voter.
pub(crate) fn membership(m: &Membership) -> Result<(), RpcHandlerError> {
    let configs = m.get_joint_config();
    if configs.is_empty() {
        return Err(invalid("membership has no voter set"));
    }
    DiskMembership::from(m)
        .to_membership()
        .map(|_| ())
        .map_err(|e| invalid(format!("malformed membership: {e}")))
}

/// Checks a replication request (see the module docs).
pub(crate) fn append(req: &rpc::AppendEntriesRequest, me: NodeId) -> Result<(), RpcHandlerError> {
    not_from_me(&req.vote, me)?;
    from_leader(&req.vote, "replication")?;
    let (mut expected, mut leader) = match &req.prev_log_id {
        Some(prev) => {
            not_after_vote(prev, &req.vote, "previous log id")?;
            (next_index(prev)?, Some(prev.leader_id))
        }
        None => (0, None),
    };
    for e in &req.entries {
        if e.log_id.index != expected {
            return Err(invalid(format!(
                "entries out of sequence: index {} where {expected} was expected",
                e.log_id.index
            )));
        }
        // Leaders never go back along a log, and none is later than the sender.
        if Some(e.log_id.leader_id) < leader || e.log_id.leader_id > req.vote.leader_id {
            return Err(invalid(format!(
                "entry {} names an impossible leader ({})",
                e.log_id.index, e.log_id.leader_id
            )));
        }
        if let Payload::Membership(m) = &e.payload {
            membership(m).map_err(|err| invalid(format!("entry {}: {err}", e.log_id.index)))?;
        }
        leader = Some(e.log_id.leader_id);
        expected = next_index(&e.log_id)?;
    }
    if let Some(c) = &req.leader_commit {
        not_after_vote(c, &req.vote, "commit index")?;
        next_index(c)?;
        // With every log id the request names, not only its last: a commit at an index the
        // request holds under another leader contradicts the request itself.
        let named = req
            .prev_log_id
            .iter()
            .chain(req.entries.iter().map(|e| &e.log_id));
        for id in named {
            one_log(c, id).map_err(|e| invalid(format!("commit index: {e}")))?;
        }
    }
    Ok(())
}

/// Limits the commit index `req` carries to what this node can take whatever openraft makes of
/// the request, and says whether the request continues the log. `log` gives the log id of the
/// entry the log will hold at an index when openraft takes the request (the log as it is, or as
/// the requests ahead of it on its stream will leave it: see `node::shadow`).
///
/// openraft commits the lesser of the largest commit index it has received from the current
/// leader and the last log id it has accepted from that leader, for a request it refuses as well
/// as for one it takes, and what it has accepted does not go back when the same leader's
/// requests cut the log below it. An honest leader never cuts what it has sent; a forged or
/// broken one can, and openraft would then commit an index the log no longer holds (its own
/// state check stops the node). So a commit index is taken only:
/// - from a request that continues the log: one whose previous log id the log holds. openraft
///   refuses a request whose previous log id is missing or another entry's (above its own
///   commit), and may cut the log for it;
/// - up to the request's previous log id, and only if the log holds exactly that entry. The
///   commit then names an entry the log holds whatever openraft makes of the request: it takes
///   it (and writes only after the previous log id), or refuses it for an older vote and leaves
///   the log as it is. A commit index the log holds another entry for, or has purged, is
///   dropped: an honest leader's is then one this node committed already.
///
/// An honest leader's commit can only be delayed: a commit index among a request's own entries
/// waits for the next request or heartbeat, whose previous log id covers them.
pub(crate) fn limit_commit(
    req: &mut rpc::AppendEntriesRequest,
    log: impl Fn(u64) -> Option<LogId>,
) -> bool {
    let continues = req.prev_log_id.is_none_or(|p| log(p.index) == Some(p));
    req.leader_commit = match (req.leader_commit, req.prev_log_id) {
        (Some(commit), Some(prev)) if continues => {
            let commit = std::cmp::min(commit, prev);
            (log(commit.index) == Some(commit)).then_some(commit)
        }
        _ => None,
    };
    continues
}

/// Two log ids that can be in one log: a later index never has an earlier leader, and one index
/// has one leader. openraft commits the lesser of the leader's commit and the request's last log
/// id by log id order, so a pair that breaks this would commit (and apply) an index the log does
/// not hold.
fn one_log(a: &LogId, b: &LogId) -> Result<(), String> {
    use std::cmp::Ordering::*;
    let fits = match a.index.cmp(&b.index) {
        Less => a.leader_id <= b.leader_id,
        Equal => a.leader_id == b.leader_id,
        Greater => a.leader_id >= b.leader_id,
    };
    if fits {
        Ok(())
    } else {
        Err(format!("{a} and {b} cannot be in one log"))
    }
}

/// What the receiving node knows that every honest leader's log agrees with: its vote, and the
/// last log id it knows to be committed, read together from one metrics snapshot.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Known {
    pub(crate) vote: Vote,
    pub(crate) committed: Option<LogId>,
}

/// Whether `vote` is at least `current`, as openraft decides whether a sender may replicate or
/// install anything: an older or incomparable vote may not.
pub(crate) fn at_least(vote: &Vote, current: &Vote) -> bool {
    matches!(
        vote.partial_cmp(current),
        Some(std::cmp::Ordering::Greater | std::cmp::Ordering::Equal)
    )
}

/// Checks that each of `ids` can be in one log with `committed`, the log id the node knows to be
/// committed. openraft assumes so without looking: it takes entries at committed indexes as
/// matching, and panics on a snapshot that claims a committed index for another leader.
fn fits_committed<'a>(
    ids: impl IntoIterator<Item = &'a LogId>,
    committed: Option<&LogId>,
) -> Result<(), RpcHandlerError> {
    let Some(committed) = committed else {
        return Ok(());
    };
    for id in ids {
        one_log(id, committed).map_err(|e| {
            invalid(format!(
                "conflicts with what this node knows committed: {e}"
            ))
        })?;
    }
    Ok(())
}

/// Checks a replication request that this node's vote lets through against the log id it knows
/// to be committed ([`fits_committed`]): a leader elected at or after this node's vote holds
/// every entry committed before it, so each log id the request names (previous, entries,
/// commit) can be in one log with that committed id. A request from an older vote is left to
/// openraft, which refuses it and answers with the newer vote, as a deposed leader needs to
/// hear.
pub(crate) fn agrees_with_committed(
    req: &rpc::AppendEntriesRequest,
    known: &Known,
) -> Result<(), RpcHandlerError> {
    if !at_least(&req.vote, &known.vote) {
        return Ok(());
    }
    let named = req
        .prev_log_id
        .iter()
        .chain(req.entries.iter().map(|e| &e.log_id))
        .chain(req.leader_commit.iter());
    fits_committed(named, known.committed.as_ref())
}

/// Checks a snapshot's last log id against the log id this node knows to be committed
/// ([`fits_committed`]), whatever the sender's vote: a snapshot holds only entries its sender
/// applied, so they were committed, and any two committed log ids are in one log.
pub(crate) fn snapshot_agrees_with_committed(
    meta: &SnapshotMeta,
    known: &Known,
) -> Result<(), RpcHandlerError> {
    fits_committed(&meta.last_log_id, known.committed.as_ref())
        .map_err(|e| invalid(format!("snapshot: {e}")))
}

/// Checks a vote or pre-vote request.
pub(crate) fn vote(req: &rpc::VoteRequest, me: NodeId) -> Result<(), RpcHandlerError> {
    not_from_me(&req.vote, me)?;
    if let Some(last) = &req.last_log_id {
        not_after_vote(last, &req.vote, "candidate's last log id")?;
        next_index(last)?;
    }
    Ok(())
}

/// Checks a leadership transfer: sent by an elected leader other than this node, whose log
/// (the last log id the new leader must hold) is its own.
pub(crate) fn transfer_leader(
    req: &rpc::TransferLeaderRequest,
    me: NodeId,
) -> Result<(), RpcHandlerError> {
    not_from_me(req.from_leader(), me)?;
    from_leader(req.from_leader(), "leadership transfer")?;
    if let Some(last) = req.last_log_id() {
        not_after_vote(last, req.from_leader(), "transfer's last log id")?;
        next_index(last)?;
    }
    Ok(())
}

/// Checks a snapshot's metadata against the vote of the leader that sent it.
pub(crate) fn snapshot(
    vote: &Vote,
    meta: &SnapshotMeta,
    me: NodeId,
) -> Result<(), RpcHandlerError> {
    not_from_me(vote, me)?;
    from_leader(vote, "snapshot")?;
    if let Some(last) = &meta.last_log_id {
        not_after_vote(last, vote, "snapshot up to")?;
        next_index(last)?;
    }
    if let Some(id) = meta.last_membership.log_id() {
        not_after_vote(id, vote, "snapshot membership at")?;
        if meta.last_log_id.is_none_or(|last| *id > last) {
            return Err(invalid(format!(
                "snapshot membership at {id} is beyond the snapshot's last log id"
            )));
        }
    }
    if meta.last_membership.log_id().is_some() {
        membership(meta.last_membership.membership())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// The node the checked requests are sent to (no test request speaks as it).
    const ME: u64 = 99;
    use std::collections::BTreeMap;
    use std::collections::BTreeSet;

    use openraft::BasicNode;

    use super::*;
    use crate::types;
    use crate::types::Entry;
    use crate::types::LeaderId;
    use crate::types::Proposal;

    fn vote(term: u64) -> Vote {
        Vote {
            leader_id: LeaderId { term, node_id: 1 },
            committed: true,
        }
    }

    fn entry(term: u64, index: u64) -> Entry {
        Entry {
            log_id: types::log_id(term, 1, index),
            payload: Payload::Normal(Proposal::Write(bytes::Bytes::new())),
        }
    }

    fn req(
        vote_term: u64,
        prev: Option<(u64, u64)>,
        entries: Vec<Entry>,
    ) -> rpc::AppendEntriesRequest {
        rpc::AppendEntriesRequest {
            vote: vote(vote_term),
            prev_log_id: prev.map(|(t, i)| types::log_id(t, 1, i)),
            leader_commit: None,
            entries,
        }
    }

    /// A membership as a forged request could carry: serde does not validate, so a decoded
    /// membership can be anything.
    fn forged(configs: Vec<BTreeSet<u64>>, nodes: &[u64]) -> Membership {
        let nodes: BTreeMap<u64, BasicNode> =
            nodes.iter().map(|n| (*n, BasicNode::new("a:1"))).collect();
        let bytes = crate::codec::encode(&(configs, nodes)).expect("encodes");
        crate::codec::decode(&bytes).expect("decodes as a membership")
    }

    fn forged_membership(voters: &[u64], nodes: &[u64]) -> Membership {
        forged(vec![voters.iter().copied().collect()], nodes)
    }

    #[test]
    fn honest_requests_pass() {
        assert!(append(&req(2, Some((1, 4)), vec![entry(1, 5), entry(2, 6)]), ME).is_ok());
        assert!(append(&req(2, None, vec![entry(1, 0)]), ME).is_ok());
        assert!(append(&req(2, Some((2, 9)), vec![]), ME).is_ok());
    }

    #[test]
    fn terms_no_election_reaches_are_refused_in_every_request() {
        let at = |term| rpc::VoteRequest::new(vote(term), None);
        assert!(super::vote(&at(MAX_TERM), ME).is_ok());
        assert!(super::vote(&at(MAX_TERM + 1), ME).is_err());
        assert!(super::vote(&at(u64::MAX), ME).is_err());
        assert!(append(&req(MAX_TERM, None, vec![]), ME).is_ok());
        assert!(append(&req(u64::MAX, None, vec![]), ME).is_err());
        let meta = SnapshotMeta::default();
        assert!(snapshot(&vote(MAX_TERM), &meta, ME).is_ok());
        assert!(snapshot(&vote(u64::MAX), &meta, ME).is_err());
    }

    #[test]
    fn malformed_appends_are_refused() {
        // A gap, a term going back, a term beyond the vote, a previous id beyond the vote.
        assert!(append(&req(2, Some((1, 4)), vec![entry(1, 6)]), ME).is_err());
        assert!(append(&req(3, Some((2, 4)), vec![entry(1, 5)]), ME).is_err());
        assert!(append(&req(2, Some((1, 4)), vec![entry(3, 5)]), ME).is_err());
        assert!(append(&req(2, Some((3, 4)), vec![]), ME).is_err());
        // A vote that no election committed.
        let mut r = req(2, Some((1, 4)), vec![entry(1, 5)]);
        r.vote.committed = false;
        assert!(append(&r, ME).is_err());
        // Indexes with no successor.
        assert!(append(&req(2, Some((1, u64::MAX)), vec![]), ME).is_err());
        assert!(
            append(
                &req(2, Some((1, u64::MAX - 1)), vec![entry(1, u64::MAX)]),
                ME
            )
            .is_err()
        );
    }

    #[test]
    fn a_commit_index_must_fit_the_requests_log() {
        let with_commit = |prev, entries, term, index| {
            let mut r = req(3, prev, entries);
            r.leader_commit = Some(types::log_id(term, 1, index));
            r
        };
        // Honest: the commit is behind the last entry, at it, or ahead of it in a later term.
        assert!(append(&with_commit(None, vec![entry(1, 0), entry(2, 1)], 1, 0), ME).is_ok());
        assert!(append(&with_commit(None, vec![entry(1, 0), entry(2, 1)], 2, 1), ME).is_ok());
        assert!(append(&with_commit(Some((2, 4)), vec![], 3, 9), ME).is_ok());
        assert!(append(&with_commit(None, vec![], 3, 9), ME).is_ok());
        // Forged: a later index under an earlier leader, an earlier index under a later one, and
        // one index under two leaders.
        assert!(append(&with_commit(None, vec![entry(1, 0), entry(2, 1)], 0, 2), ME).is_err());
        assert!(append(&with_commit(Some((2, 4)), vec![], 3, 3), ME).is_err());
        assert!(append(&with_commit(Some((2, 4)), vec![], 1, 4), ME).is_err());
    }

    #[test]
    fn requests_must_agree_with_what_is_known_committed() {
        let known = Known {
            vote: vote(3),
            committed: Some(types::log_id(2, 1, 4)),
        };
        let check = |r: &rpc::AppendEntriesRequest| agrees_with_committed(r, &known);
        // Honest: the committed entry is in the leader's log, before or at what it sends.
        assert!(check(&req(3, Some((2, 4)), vec![entry(3, 5)])).is_ok());
        assert!(
            check(&req(
                3,
                Some((1, 2)),
                vec![entry(2, 3), entry(2, 4), entry(3, 5)]
            ))
            .is_ok()
        );
        assert!(check(&req(3, None, vec![entry(1, 0)])).is_ok());
        let mut r = req(3, Some((3, 7)), vec![]);
        r.leader_commit = Some(types::log_id(2, 1, 4));
        assert!(check(&r).is_ok());
        // Forged: a later leader's entry at a committed index, another leader at the committed
        // index, an earlier leader's commit past it.
        assert!(check(&req(3, None, vec![entry(3, 0)])).is_err());
        assert!(check(&req(3, Some((3, 4)), vec![])).is_err());
        let mut r = req(3, Some((2, 4)), vec![]);
        r.leader_commit = Some(types::log_id(1, 1, 6));
        assert!(check(&r).is_err());
        // An older vote is left to openraft, which refuses it and names the newer vote; with
        // nothing known committed there is nothing to agree with.
        assert!(check(&req(2, None, vec![entry(2, 0)])).is_ok());
        let unknown = Known {
            vote: vote(3),
            committed: None,
        };
        assert!(agrees_with_committed(&req(3, None, vec![entry(3, 0)]), &unknown).is_ok());
    }

    #[test]
    fn a_snapshot_must_agree_with_what_is_known_committed() {
        let snapshot = |term, index| SnapshotMeta {
            last_log_id: Some(types::log_id(term, 1, index)),
            last_membership: Default::default(),
        };
        // From any vote: an older one too, since a snapshot holds only committed entries.
        let known = Known {
            vote: vote(5),
            committed: Some(types::log_id(2, 1, 4)),
        };
        let check = |m: &SnapshotMeta| snapshot_agrees_with_committed(m, &known);
        assert!(check(&snapshot(2, 4)).is_ok());
        assert!(check(&snapshot(1, 3)).is_ok());
        assert!(check(&snapshot(3, 9)).is_ok());
        // The committed index, or one before it, claimed for a later leader.
        assert!(check(&snapshot(3, 4)).is_err());
        assert!(check(&snapshot(3, 2)).is_err());
    }

    #[test]
    fn memberships_must_be_recoverable() {
        let good = forged_membership(&[1, 2], &[1, 2, 3]);
        assert!(membership(&good).is_ok());
        let missing_addr = forged_membership(&[1, 2], &[1]);
        assert!(membership(&missing_addr).is_err());
        let empty_voters = forged_membership(&[], &[1]);
        assert!(membership(&empty_voters).is_err());
        let no_configs = forged(vec![], &[]);
        assert!(membership(&no_configs).is_err());

        let mut r = req(2, Some((1, 4)), vec![entry(1, 5)]);
        r.entries[0].payload = Payload::Membership(missing_addr);
        assert!(append(&r, ME).is_err());
    }

    #[test]
    fn a_commit_index_must_agree_with_every_entry_of_the_request() {
        // Entries of terms 1, 1, 2, 3, 4 at indexes 0..=4; the commit claims index 0 for term 4,
        // which fits the last entry but not the first.
        let entries = [(1, 0), (1, 1), (2, 2), (3, 3), (4, 4)].map(|(t, i)| entry(t, i));
        let mut r = req(4, None, entries.to_vec());
        r.leader_commit = Some(types::log_id(4, 1, 0));
        assert!(append(&r, ME).is_err());
        r.leader_commit = Some(types::log_id(1, 1, 0));
        assert!(append(&r, ME).is_ok());
        r.leader_commit = Some(types::log_id(2, 1, 2));
        assert!(append(&r, ME).is_ok());
    }

    #[test]
    fn log_ids_of_a_later_leader_of_the_same_term_are_refused() {
        // The sender leads as (term 2, node 1); (2, 3) is a later leader of the same term, and
        // (2, 0) an earlier one.
        let later = |index| types::log_id(2, 3, index);
        let earlier = |index| types::log_id(2, 0, index);
        let with = |prev: LogId, entries: Vec<LogId>, commit: Option<LogId>| {
            let mut r = req(2, None, vec![]);
            r.prev_log_id = Some(prev);
            r.entries = entries
                .into_iter()
                .map(|log_id| Entry {
                    log_id,
                    payload: Payload::Blank,
                })
                .collect();
            r.leader_commit = commit;
            append(&r, ME)
        };
        assert!(with(earlier(4), vec![earlier(5), types::log_id(2, 1, 6)], None).is_ok());
        assert!(with(later(4), vec![], None).is_err(), "previous log id");
        assert!(with(earlier(4), vec![later(5)], None).is_err(), "entry");
        assert!(with(earlier(4), vec![], Some(later(4))).is_err(), "commit");
        // Leaders along a log never go back, within a term too.
        let back = with(types::log_id(2, 1, 4), vec![earlier(5)], None);
        assert!(back.is_err(), "entries");

        let meta = |last| SnapshotMeta {
            last_log_id: Some(last),
            last_membership: Default::default(),
        };
        assert!(snapshot(&vote(2), &meta(earlier(9)), ME).is_ok());
        assert!(snapshot(&vote(2), &meta(later(9)), ME).is_err(), "snapshot");
        let r = rpc::VoteRequest::new(vote(2), Some(later(7)));
        assert!(super::vote(&r, ME).is_err(), "candidate's last log id");
    }

    #[test]
    fn votes_cannot_claim_a_newer_log_than_their_term() {
        let mut r = rpc::VoteRequest::new(vote(2), Some(types::log_id(3, 1, 7)));
        assert!(super::vote(&r, ME).is_err());
        r.last_log_id = Some(types::log_id(2, 1, 7));
        assert!(super::vote(&r, ME).is_ok());
        r.last_log_id = Some(types::log_id(2, 1, u64::MAX));
        assert!(super::vote(&r, ME).is_err());
    }

    #[test]
    fn a_commit_is_taken_only_from_a_request_that_continues_the_log() {
        // The log holds entries 2 and 3 of term 1, and was purged up to (1, 1).
        let log = |index: u64| (1..=3).contains(&index).then(|| types::log_id(1, 1, index));
        let two = || vec![entry(1, 4), entry(2, 5)];
        // (previous log id, entries, commit index, commit kept, continues, what)
        let cases = [
            (
                Some((1, 3)),
                two(),
                (2, 9),
                Some((1, 3)),
                true,
                "past its entries: its previous log id",
            ),
            (
                Some((1, 3)),
                two(),
                (1, 4),
                Some((1, 3)),
                true,
                "among its entries: its previous log id",
            ),
            (
                Some((1, 3)),
                Vec::new(),
                (2, 9),
                Some((1, 3)),
                true,
                "past its previous log id: that",
            ),
            (
                None,
                Vec::new(),
                (2, 9),
                None,
                true,
                "a request naming no entry commits none",
            ),
            (
                Some((2, 3)),
                Vec::new(),
                (2, 3),
                None,
                false,
                "a previous log id the log holds another entry for",
            ),
            (
                Some((1, 7)),
                Vec::new(),
                (1, 7),
                None,
                false,
                "a previous log id past the log",
            ),
            (
                Some((1, 3)),
                Vec::new(),
                (0, 2),
                None,
                true,
                "a commit index the log holds another entry for",
            ),
            (
                Some((1, 3)),
                Vec::new(),
                (1, 1),
                Some((1, 1)),
                true,
                "the purged log id",
            ),
            (
                Some((1, 3)),
                Vec::new(),
                (1, 2),
                Some((1, 2)),
                true,
                "an entry the log holds before the previous log id",
            ),
            (
                Some((1, 3)),
                Vec::new(),
                (1, 0),
                None,
                true,
                "a commit index the log has purged",
            ),
        ];
        for (prev, entries, (term, index), want, continues, what) in cases {
            let mut r = req(3, prev, entries);
            r.leader_commit = Some(types::log_id(term, 1, index));
            assert_eq!(limit_commit(&mut r, log), continues, "{what}: continues");
            let want = want.map(|(t, i)| types::log_id(t, 1, i));
            assert_eq!(r.leader_commit, want, "{what}");
        }
    }
}
