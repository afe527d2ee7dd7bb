//! Write combining: a leader keeps a few write proposals in flight; writes that arrive while
//! all of them are taken wait in a queue, and the queue goes out as one log entry when a
//! proposal completes.
//!
//! A lone writer, or a few, propose exactly as before: one entry per write, no waiting. Under
//! load (hundreds of concurrent writers, a follower forwarding its clients' writes) the
//! per-entry costs — the consensus engine's bookkeeping, the log record, the replication
//! message, the apply and the reply — are paid once per batch instead of once per write, while
//! each write keeps its own session check and its own output
//! ([`Proposal::Combined`]).
//!
//! The queue holds only writes whose callers still wait: a write whose caller gave up (its
//! request timed out or its future was dropped) is never proposed, and such writes are pruned
//! as the queue grows, in writes or in bytes, so callers that time out and retry under
//! overload do not pile up work for the log, nor hold their commands' memory.

use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use tokio::sync::oneshot;

use super::Node;
use crate::error::Error;
use crate::error::Result;
use crate::leader::LeaderHint;
use crate::state_machine::StateMachine;
use crate::types::Proposal;
use crate::types::Request;
use crate::types::Response;

/// Most bytes of commands in one combined entry: enough for the per-entry costs to vanish
/// behind the writes' own (dozens of small writes), small enough that the entries kept behind
/// a snapshot ([`Config::keep_after_snapshot`](crate::Config), counted in entries) stay small
/// too.
pub(super) const COMBINED_BYTES: usize = 16 << 10;

/// Per-write overhead counted against the entry size limit (a combined entry's and a
/// [`Node::write_many`] batch's), so that many tiny writes are bounded too.
pub(super) const PER_WRITE_BYTES: usize = 8;

/// Where a write goes: proposed by its caller, or queued for the next combined entry.
enum Joined {
    /// A proposal slot was free: the caller proposes `Request` itself and holds the slot.
    Propose(Request),
    /// All slots are taken: the write is queued; its response arrives here.
    Queued(oneshot::Receiver<Result<Response>>),
    /// All slots are taken and the write may not queue: not proposed. Nor are the writes that
    /// were queued, taken out of the queue here, to be refused the same way.
    Refused(Vec<Queued>),
}

/// A queued write and where its response goes.
struct Queued {
    request: Request,
    done: Sender,
}

type Sender = oneshot::Sender<Result<Response>>;

/// Queue length below which writes whose callers gave up are left for [`Combiner::release`]
/// to drop.
const PRUNE_AT_LEAST: usize = 64;

/// Queued bytes below which writes whose callers gave up are left for [`Combiner::release`]
/// to drop: a few large commands whose callers gave up must not stay queued until the queue is
/// [`PRUNE_AT_LEAST`] long (64 commands of 64 MiB).
const PRUNE_AT_LEAST_BYTES: usize = 1 << 20;

/// What a queued write counts for against the byte bounds.
fn size(q: &Request) -> usize {
    q.command.len() + PER_WRITE_BYTES
}

struct State {
    /// Proposals in flight (slots taken).
    in_flight: usize,
    /// When a proposal last ended (or the combiner began): a leader whose proposals end is
    /// not cut off, and writes that queue on it are not checked.
    ended: Instant,
    queue: Vec<Queued>,
    /// Queue length at which [`Combiner::join`] next drops the writes whose callers gave up:
    /// twice what was left after the last pruning, so pruning costs O(1) per write and the
    /// queue never holds more than twice its live writes (plus [`PRUNE_AT_LEAST`]).
    prune_at: usize,
    /// The queued writes' bytes ([`size`]), and the count at which [`Combiner::join`] next
    /// prunes: twice what was left after the last pruning, so the queue never holds more than
    /// twice its live writes' bytes (plus [`PRUNE_AT_LEAST_BYTES`] and the newest write).
    bytes: usize,
    prune_at_bytes: usize,
}

impl State {
    /// Drops queued writes whose callers stopped waiting (timed out or were cancelled). They
    /// were never proposed, so they are not applied; the caller was told the outcome is unknown
    /// ([`Error::Timeout`]), which covers "not applied".
    fn prune(&mut self) {
        self.queue.retain(|q| !q.done.is_closed());
        self.bytes = self.queue.iter().map(|q| size(&q.request)).sum();
        self.prune_at = (self.queue.len() * 2).max(PRUNE_AT_LEAST);
        self.prune_at_bytes = self.bytes.saturating_mul(2).max(PRUNE_AT_LEAST_BYTES);
    }
}

/// The queue of writes waiting for a proposal slot, and the slot count.
pub(crate) struct Combiner {
    /// Slots: proposals in flight before writes queue (0: never combine).
    slots: usize,
    /// How long no proposal may end before a write that would queue is checked.
    stall: Duration,
    /// Most bytes of commands in one combined entry.
    max_bytes: usize,
    state: Mutex<State>,
}

impl Combiner {
    /// `slots` proposals in flight, entries of at most `max_bytes`; a write that would queue
    /// after no proposal ended for `stall` is asked about ([`Combiner::join`]).
    pub fn new(slots: usize, max_bytes: usize, stall: Duration) -> Combiner {
        Combiner {
            slots,
            stall,
            max_bytes,
            state: Mutex::new(State {
                in_flight: 0,
                ended: Instant::now(),
                queue: Vec::new(),
                prune_at: PRUNE_AT_LEAST,
                bytes: 0,
                prune_at_bytes: PRUNE_AT_LEAST_BYTES,
            }),
        }
    }

    /// Takes a slot for `request`, or queues it behind the proposals in flight — unless no
    /// proposal has ended for the combiner's stall time and `refuse_queueing` says not to, then
    /// [`Joined::Refused`] with every write queued so far (the reason holds for them too). A
    /// write never overtakes one queued before it.
    fn join(&self, request: Request, refuse_queueing: impl FnOnce() -> bool) -> Joined {
        if self.slots == 0 {
            return Joined::Propose(request);
        }
        let mut st = crate::sync::lock(&self.state);
        if st.in_flight < self.slots && st.queue.is_empty() {
            st.in_flight += 1;
            return Joined::Propose(request);
        }
        if let Some(queued) = self.take_if_stalled(&mut st, refuse_queueing) {
            return Joined::Refused(queued);
        }
        let adding = size(&request);
        if st.queue.len() >= st.prune_at || st.bytes.saturating_add(adding) > st.prune_at_bytes {
            st.prune();
        }
        let (done, rx) = oneshot::channel();
        st.bytes = st.bytes.saturating_add(adding);
        st.queue.push(Queued { request, done });
        Joined::Queued(rx)
    }

    /// Every queued write, taken out of the queue, if no proposal has ended for the combiner's
    /// stall time and `refuse` then says to refuse them (not asked otherwise): they were never
    /// proposed, and are to be refused as not applied.
    fn take_if_stalled(
        &self,
        st: &mut State,
        refuse: impl FnOnce() -> bool,
    ) -> Option<Vec<Queued>> {
        if st.ended.elapsed() < self.stall || !refuse() {
            return None;
        }
        let queued = std::mem::take(&mut st.queue);
        st.prune();
        Some(queued)
    }

    /// [`Combiner::take_if_stalled`] for a queue that no new write comes to: the writes waiting
    /// in it ask now and then. `None` when nothing is queued (`refuse` is not asked).
    fn refuse_stalled(&self, refuse: impl FnOnce() -> bool) -> Option<Vec<Queued>> {
        let mut st = crate::sync::lock(&self.state);
        if st.queue.is_empty() {
            return None;
        }
        self.take_if_stalled(&mut st, refuse)
    }

    /// Gives back a slot. Returns the next batch if writes are queued: the slot passes to it,
    /// and the caller must propose it (or fail its writes, which also releases the slot).
    /// Writes whose callers gave up waiting are dropped, not proposed.
    fn release(&self) -> Option<Vec<Queued>> {
        if self.slots == 0 {
            return None;
        }
        let mut st = crate::sync::lock(&self.state);
        st.ended = Instant::now();
        loop {
            if st.queue.is_empty() {
                st.in_flight = st.in_flight.saturating_sub(1);
                return None;
            }
            // The live writes' bytes (bounded by `max_bytes`), and all that is taken.
            let mut bytes = 0;
            let mut taken_bytes = 0;
            let mut live = 0;
            let mut take = 0;
            for q in &st.queue {
                let size = size(&q.request);
                if q.done.is_closed() {
                    take += 1;
                    taken_bytes += size;
                    continue;
                }
                if live > 0 && bytes + size > self.max_bytes {
                    break;
                }
                bytes += size;
                live += 1;
                take += 1;
            }
            st.bytes = st.bytes.saturating_sub(taken_bytes + bytes);
            // A caller may have given up since it was counted: checked again as it is taken.
            let batch: Vec<Queued> = st
                .queue
                .drain(..take)
                .filter(|q| !q.done.is_closed())
                .collect();
            if !batch.is_empty() {
                return Some(batch);
            }
            // Every write taken had been given up: pass the slot on to the rest, if any.
        }
    }
}

impl<S: StateMachine> Node<S> {
    /// Proposes one write — at once if a slot is free, else combined with the writes queued
    /// with it — and returns its response.
    ///
    /// A leader that has heard from no quorum lately refuses a write that would queue, as not
    /// applied: its slots are held by proposals that cannot commit until they time out, and a
    /// queued write would wait that long only to be refused as not leading, or to time out
    /// with an unknown outcome. The writes already queued are refused with it (taken out of
    /// the queue under its lock, so never proposed). A write that finds a free slot is
    /// proposed, and openraft's lease check refuses it as quickly.
    ///
    /// A queued write that waits longer than a stop check (a second) asks the same question at
    /// each check, so the queue is refused once the lease has lapsed even if no new write comes
    /// to find it so.
    pub(super) async fn propose_combining(&self, request: Request) -> Result<Response> {
        match self.inner.combiner.join(request, || self.quorum_silent()) {
            Joined::Refused(queued) => {
                refuse_cut_off(queued);
                Err(cut_off())
            }
            Joined::Propose(request) => {
                let _slot = Slot { node: self };
                self.propose_stamped(request).await
            }
            Joined::Queued(rx) => {
                let ask = || {
                    if let Some(queued) =
                        self.inner.combiner.refuse_stalled(|| self.quorum_silent())
                    {
                        refuse_cut_off(queued);
                    }
                };
                self.with_timeout_ticking(async { rx.await.unwrap_or(Err(Error::Shutdown)) }, ask)
                    .await
            }
        }
    }

    /// Proposes one write as an entry of its own, stamped with this leader's clock.
    async fn propose_stamped(&self, request: Request) -> Result<Response> {
        self.propose_internal(Proposal::stamped(request, self.stamp()))
            .await
    }
}

/// A proposal slot, given back (or passed to the queued writes) when dropped — also when the
/// proposing future is cancelled.
struct Slot<'a, S: StateMachine> {
    node: &'a Node<S>,
}

impl<S: StateMachine> Drop for Slot<'_, S> {
    fn drop(&mut self) {
        let Some(batch) = self.node.inner.combiner.release() else {
            return;
        };
        // On the runtime of the write that ends here, where the writers waiting in the batch
        // most likely are too: their answers then wake them without crossing threads (proposing
        // on the node's own runtime instead cost the kv a third more context switches per write
        // at 64 clients, whose connections run apart from consensus).
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(propose_batch(self.node.clone(), batch));
            }
            // No runtime left to propose on: the node is going away.
            Err(_) => answer(senders(batch), Err(Error::Shutdown)),
        }
    }
}

/// Proposes queued writes, holding the slot they were given: one write as a plain entry,
/// several as one combined entry.
async fn propose_batch<S: StateMachine>(node: Node<S>, mut batch: Vec<Queued>) {
    let _slot = Slot { node: &node };
    if batch.len() == 1
        && let Some(q) = batch.pop()
    {
        let _ = q.done.send(node.propose_stamped(q.request).await);
        return;
    }
    let (requests, done): (Vec<Request>, Vec<_>) =
        batch.into_iter().map(|q| (q.request, q.done)).unzip();
    let n = requests.len();
    let outcome = node
        .propose_internal(Proposal::Combined(node.stamp(), requests))
        .await
        .and_then(|r| super::responses_of(r, n, "a combined entry"));
    answer(done, outcome);
}

/// Why a leader cut off from its quorum refuses writes: not applied, leader unknown.
fn cut_off() -> Error {
    Error::NotLeader(LeaderHint::unknown())
}

/// Refuses writes taken out of the queue of a leader cut off from its quorum ([`cut_off`]).
fn refuse_cut_off(queued: Vec<Queued>) {
    answer(senders(queued), Err(cut_off()));
}

fn senders(batch: Vec<Queued>) -> Vec<Sender> {
    batch.into_iter().map(|q| q.done).collect()
}

/// Sends each write of a combined entry its own response: `responses` in order, or a copy of
/// the entry's error.
fn answer(done: Vec<Sender>, outcome: Result<Vec<Response>>) {
    match outcome {
        Ok(responses) => {
            for (tx, r) in done.into_iter().zip(responses) {
                let _ = tx.send(Ok(r));
            }
        }
        Err(e) => {
            for tx in done {
                let _ = tx.send(Err(duplicate(&e)));
            }
        }
    }
}

/// The same failure for another writer of the same entry. Every variant a write can end with
/// is copied exactly. Snapshot and backup failures hold I/O errors and do not end writes; they
/// keep their message as a storage failure, whose outcome is unknown (the safe answer).
fn duplicate(e: &Error) -> Error {
    match e {
        Error::NotLeader(h) => Error::NotLeader(h.clone()),
        Error::Timeout(d) => Error::Timeout(*d),
        Error::OutcomeUnknown { leader } => Error::OutcomeUnknown { leader: *leader },
        Error::Shutdown => Error::Shutdown,
        Error::NoQuorum => Error::NoQuorum,
        Error::Rejected(a) => Error::Rejected(a.clone()),
        Error::PartlyApplied { index, error } => Error::PartlyApplied {
            index: *index,
            error: error.clone(),
        },
        Error::Storage(s) => Error::Storage(s.clone()),
        Error::Log(l) => Error::Log(l.clone()),
        Error::Codec(c) => Error::Codec(c.clone()),
        Error::AlreadyInitialized => Error::AlreadyInitialized,
        Error::Membership(s) => Error::Membership(s.clone()),
        Error::CommandTooLarge { size, limit } => Error::CommandTooLarge {
            size: *size,
            limit: *limit,
        },
        Error::Config(s) => Error::Config(s.clone()),
        Error::Fatal(s) => Error::Fatal(s.clone()),
        Error::NoSpace { node, reason } => Error::NoSpace {
            node: *node,
            reason: reason.clone(),
        },
        Error::LearnerNotCaughtUp { id, addr, waited } => Error::LearnerNotCaughtUp {
            id: *id,
            addr: addr.clone(),
            waited: *waited,
        },
        Error::Snapshot(_) | Error::Backup(_) => Error::Storage(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    /// Queues a write and keeps its caller waiting (the receiver is kept).
    fn queue(c: &Combiner, n: usize, waiting: &mut Vec<oneshot::Receiver<Result<Response>>>) {
        match joined(c, n) {
            Joined::Queued(rx) => waiting.push(rx),
            Joined::Propose(_) | Joined::Refused(_) => panic!("expected the write to queue"),
        }
    }

    /// `c.join` of a write of `n` bytes, never refused.
    fn joined(c: &Combiner, n: usize) -> Joined {
        c.join(req(n), || false)
    }

    fn req(n: usize) -> Request {
        Request {
            session: None,
            command: Bytes::from(vec![0u8; n]),
        }
    }

    #[test]
    fn writes_queue_only_when_every_slot_is_taken() {
        let c = Combiner::new(2, 1000, Duration::ZERO);
        let mut waiting = Vec::new();
        assert!(matches!(joined(&c, 1), Joined::Propose(_)));
        assert!(matches!(joined(&c, 1), Joined::Propose(_)));
        queue(&c, 1, &mut waiting);
        queue(&c, 1, &mut waiting);
        // The slot passes to the queued writes, both in one batch.
        assert_eq!(c.release().map(|b| b.len()), Some(2));
        assert!(c.release().is_none());
        // One slot in flight (the batch's): a new write takes the free one.
        assert!(matches!(joined(&c, 1), Joined::Propose(_)));
        queue(&c, 1, &mut waiting);
    }

    #[test]
    fn a_batch_is_bounded_by_bytes_but_takes_at_least_one_write() {
        let c = Combiner::new(1, 100, Duration::ZERO);
        let mut waiting = Vec::new();
        assert!(matches!(joined(&c, 1), Joined::Propose(_)));
        for n in [50, 30, 40, 500] {
            queue(&c, n, &mut waiting);
        }
        let sizes = |b: Option<Vec<Queued>>| {
            b.map(|b| {
                b.iter()
                    .map(|q| q.request.command.len())
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(sizes(c.release()), Some(vec![50, 30]));
        assert_eq!(sizes(c.release()), Some(vec![40]));
        assert_eq!(sizes(c.release()), Some(vec![500]));
        assert!(c.release().is_none());
        assert!(matches!(joined(&c, 1), Joined::Propose(_)));
    }

    #[test]
    fn writes_whose_callers_gave_up_are_not_proposed() {
        let c = Combiner::new(1, 1000, Duration::ZERO);
        assert!(matches!(joined(&c, 1), Joined::Propose(_)));
        let mut kept = Vec::new();
        for n in 0..6 {
            match joined(&c, n + 10) {
                // Every other caller stops waiting (its receiver is dropped).
                Joined::Queued(rx) if n % 2 == 0 => kept.push(rx),
                Joined::Queued(_) => {}
                Joined::Propose(_) | Joined::Refused(_) => panic!("the slot is taken"),
            }
        }
        let sizes: Vec<usize> = c
            .release()
            .unwrap_or_default()
            .iter()
            .map(|q| q.request.command.len())
            .collect();
        assert_eq!(sizes, vec![10, 12, 14]);
        // Only abandoned writes queued: the slot is given back, not passed to them.
        drop(kept);
        for _ in 0..3 {
            let _ = joined(&c, 1);
        }
        assert!(c.release().is_none(), "no live write to pass the slot to");
        assert!(c.release().is_none());
        assert!(matches!(joined(&c, 1), Joined::Propose(_)));
    }

    #[test]
    fn abandoned_writes_do_not_accumulate_while_the_slot_is_held() {
        let c = Combiner::new(1, 1 << 20, Duration::ZERO);
        assert!(matches!(joined(&c, 1), Joined::Propose(_)));
        let mut live = Vec::new();
        for n in 0..10_000 {
            if let Joined::Queued(rx) = joined(&c, 1)
                && n % 100 == 0
            {
                live.push(rx);
            }
        }
        let queued = crate::sync::lock(&c.state).queue.len();
        assert!(
            queued <= 2 * live.len() + 2 * PRUNE_AT_LEAST,
            "{queued} writes queued for {} live callers",
            live.len()
        );
        assert_eq!(c.release().map(|b| b.len()), Some(live.len()));
    }

    /// Large writes whose callers gave up do not stay queued until the queue is long: 63
    /// abandoned writes of 1 MiB leave at most about 2 MiB queued. Counted by length alone,
    /// all 63 MiB stayed (and 64 MiB commands would have held 4 GiB).
    #[test]
    fn abandoned_large_writes_are_dropped_by_their_bytes() {
        let c = Combiner::new(1, 16 << 10, Duration::ZERO);
        assert!(matches!(joined(&c, 1), Joined::Propose(_)));
        for _ in 0..63 {
            assert!(matches!(joined(&c, 1 << 20), Joined::Queued(_)));
        }
        let held: usize = crate::sync::lock(&c.state)
            .queue
            .iter()
            .map(|q| q.request.command.len())
            .sum();
        assert!(held <= 2 << 20, "{held} bytes queued for no live caller");
        assert!(c.release().is_none(), "no live write to pass the slot to");
    }

    #[test]
    fn zero_slots_never_queue() {
        let c = Combiner::new(0, 100, Duration::ZERO);
        for _ in 0..10 {
            assert!(matches!(joined(&c, 1), Joined::Propose(_)));
        }
        assert!(c.release().is_none());
    }

    #[test]
    fn a_write_that_would_queue_can_be_refused_instead() {
        let c = Combiner::new(1, 100, Duration::ZERO);
        let asked = std::cell::Cell::new(0);
        let refuse = || {
            asked.set(asked.get() + 1);
            true
        };
        assert!(matches!(c.join(req(1), refuse), Joined::Propose(_)));
        assert_eq!(asked.get(), 0, "a write with a free slot is not checked");
        assert!(matches!(c.join(req(1), refuse), Joined::Refused(q) if q.is_empty()));
        assert_eq!(asked.get(), 1);
        assert!(c.release().is_none(), "a refused write is not queued");
        // Writes queued before the refusal are handed back with it, and leave the queue.
        let c = Combiner::new(1, 100, Duration::ZERO);
        assert!(matches!(joined(&c, 1), Joined::Propose(_)));
        let mut waiting = Vec::new();
        queue(&c, 2, &mut waiting);
        queue(&c, 3, &mut waiting);
        match c.join(req(4), || true) {
            Joined::Refused(q) => assert_eq!(q.len(), 2),
            _ => panic!("expected a refusal"),
        }
        assert!(c.release().is_none(), "the queue was emptied");
        // A combiner whose proposals ended lately does not ask at all.
        let c = Combiner::new(1, 100, Duration::from_secs(3600));
        assert!(matches!(joined(&c, 1), Joined::Propose(_)));
        let asked = std::cell::Cell::new(false);
        let ask = || {
            asked.set(true);
            true
        };
        assert!(matches!(c.join(req(1), ask), Joined::Queued(_)));
        assert!(!asked.get(), "asked with proposals ending");
    }

    #[test]
    fn a_stalled_queue_is_taken_when_its_writes_ask() {
        // Nothing queued: nothing to ask about.
        let c = Combiner::new(1, 100, Duration::ZERO);
        assert!(matches!(joined(&c, 1), Joined::Propose(_)));
        assert!(
            c.refuse_stalled(|| panic!("asked with an empty queue"))
                .is_none()
        );
        // Queued writes are taken, and leave the queue, only when the answer is to refuse.
        let mut waiting = Vec::new();
        queue(&c, 2, &mut waiting);
        queue(&c, 3, &mut waiting);
        assert!(c.refuse_stalled(|| false).is_none());
        assert_eq!(c.refuse_stalled(|| true).map(|q| q.len()), Some(2));
        assert!(c.release().is_none(), "the queue was emptied");
        // A combiner whose proposals ended lately does not ask.
        let c = Combiner::new(1, 100, Duration::from_secs(3600));
        assert!(matches!(joined(&c, 1), Joined::Propose(_)));
        queue(&c, 2, &mut waiting);
        assert!(
            c.refuse_stalled(|| panic!("asked with proposals ending"))
                .is_none()
        );
    }

    #[test]
    fn every_writer_of_a_failed_entry_learns_the_failure() {
        let disk_full = || {
            let io = std::io::Error::from_raw_os_error(28);
            let at = crate::fsutil::at("fdatasync", std::path::Path::new("wal/x"));
            Error::Log(crate::log::LogError::Io(at(io)))
        };
        let undecodable = || Error::Codec(postcard::Error::DeserializeUnexpectedEnd.into());
        for failure in [Error::NoQuorum, disk_full(), undecodable()] {
            let c = Combiner::new(1, 100, Duration::ZERO);
            let _ = joined(&c, 1);
            let rxs: Vec<_> = (0..3)
                .map(|_| match joined(&c, 1) {
                    Joined::Queued(rx) => rx,
                    Joined::Propose(_) | Joined::Refused(_) => panic!("slot should be taken"),
                })
                .collect();
            let batch = c.release().unwrap_or_default();
            let expected = failure.to_string();
            answer(senders(batch), Err(failure));
            for mut rx in rxs {
                // The failure itself (its variant and, for the log, its I/O error's kind).
                match rx.try_recv() {
                    Ok(Err(Error::NoQuorum)) => assert_eq!(expected, Error::NoQuorum.to_string()),
                    Ok(Err(Error::Log(e))) => {
                        assert_eq!(e.io_kind(), std::io::ErrorKind::StorageFull);
                        assert_eq!(e.to_string(), expected);
                    }
                    Ok(Err(Error::Codec(e))) => assert_eq!(e.to_string(), expected),
                    other => panic!("{expected}: got {other:?}"),
                }
            }
        }
    }
}
