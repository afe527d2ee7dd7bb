//! Client sessions: exactly-once application of retried writes.
//!
//! The table remembers, per client id, the last sequence number applied and the response it
//! produced. A write stamped with a [`Session`] is
//!
//! * applied if its sequence is newer than the remembered one (or the client is new and starts at
//!   sequence 1),
//! * answered with the remembered response if it repeats the remembered sequence — a retry,
//! * refused with [`ApplyError::SessionExpired`] otherwise: an older sequence, or an unknown client
//!   past sequence 1 (its session was evicted, so a retry can no longer be recognised).
//!
//! The table is bounded in clients and in bytes: when either bound is reached, the client whose
//! last write is oldest (by log index) is evicted. A response larger than the per-response bound
//! is not kept whole: the table remembers only that the sequence was applied, and a retry of it
//! is answered with [`ApplyError::ResponseNotKept`] — "applied earlier, answer unknown" — never
//! with a wrong answer. Every decision depends only on the log and the configuration, so all
//! replicas agree. The table is part of every snapshot, whose header it therefore bounds.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use serde::Deserialize;
use serde::Serialize;

use crate::types::ApplyError;
use crate::types::Response;
use crate::types::Session;

/// What the table says about an incoming stamped write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Check {
    /// Apply it.
    Fresh,
    /// A retry of the last write: answer with this.
    Duplicate(Response),
    /// Cannot be answered safely.
    Expired,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Remembered {
    sequence: u64,
    response: Response,
    /// Log index of the write that produced `response`; orders eviction.
    index: u64,
}

/// Bytes a remembered client costs besides its response (ids, sequence, index, tree nodes).
const ENTRY_OVERHEAD: usize = 64;

/// What one remembered response costs, in bytes.
fn cost(response: &Response) -> usize {
    ENTRY_OVERHEAD
        + match response {
            Response::Output(b) => b.len(),
            Response::Empty => 0,
            Response::Rejected(e) => e.to_string().len(),
        }
}

/// How large the table may grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SessionLimits {
    /// Most clients remembered.
    pub clients: usize,
    /// Most bytes of remembered responses (plus a fixed overhead per client).
    pub bytes: usize,
    /// Largest response kept whole.
    pub response_bytes: usize,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            clients: 10_000,
            bytes: 64 << 20,
            response_bytes: 1 << 20,
        }
    }
}

/// The bounded table of client sessions.
///
/// The serialised form (in snapshots) is the clients and their responses; the byte limits come
/// from the node's configuration and the byte count is recomputed on restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SessionTable {
    capacity: usize,
    clients: BTreeMap<u64, Remembered>,
    /// `(index, client_id)` of every remembered client, oldest first.
    by_age: BTreeSet<(u64, u64)>,
    #[serde(skip)]
    max_bytes: Option<(usize, usize)>,
    /// What the remembered responses cost now (see [`cost`]).
    #[serde(skip)]
    bytes: usize,
}

impl SessionTable {
    /// An empty table within `limits` (at least one client).
    pub fn new(limits: SessionLimits) -> SessionTable {
        let mut t = SessionTable {
            capacity: 1,
            clients: BTreeMap::new(),
            by_age: BTreeSet::new(),
            max_bytes: None,
            bytes: 0,
        };
        t.set_limits(limits);
        t
    }

    /// Bytes the remembered responses cost now.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    fn limits(&self) -> (usize, usize) {
        let d = SessionLimits::default();
        self.max_bytes.unwrap_or((d.bytes, d.response_bytes))
    }

    /// Number of remembered clients.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// Decides what to do with a write stamped `session`.
    pub fn check(&self, session: Session) -> Check {
        match self.clients.get(&session.client_id) {
            None if session.sequence == 1 => Check::Fresh,
            None => Check::Expired,
            Some(r) if session.sequence > r.sequence => Check::Fresh,
            Some(r) if session.sequence == r.sequence => Check::Duplicate(r.response.clone()),
            Some(_) => Check::Expired,
        }
    }

    /// Remembers `response` as the answer to `session`, applied at log `index`. A response
    /// larger than the per-response limit is replaced by [`ApplyError::ResponseNotKept`].
    pub fn record(&mut self, session: Session, response: Response, index: u64) {
        let (max_bytes, max_response) = self.limits();
        let response = if cost(&response) - ENTRY_OVERHEAD > max_response {
            Response::Rejected(ApplyError::ResponseNotKept {
                client_id: session.client_id,
                sequence: session.sequence,
            })
        } else {
            response
        };
        if let Some(old) = self.clients.remove(&session.client_id) {
            self.by_age.remove(&(old.index, session.client_id));
            self.bytes -= cost(&old.response);
        }
        let new_cost = cost(&response);
        while self.clients.len() >= self.capacity || self.bytes + new_cost > max_bytes {
            let Some((idx, client)) = self.by_age.pop_first() else {
                break;
            };
            tracing::debug!(
                client,
                last_index = idx,
                "client session expired from a full session table"
            );
            if let Some(old) = self.clients.remove(&client) {
                self.bytes -= cost(&old.response);
            }
        }
        self.bytes += new_cost;
        self.by_age.insert((index, session.client_id));
        self.clients.insert(
            session.client_id,
            Remembered {
                sequence: session.sequence,
                response,
                index,
            },
        );
    }

    /// Changes the limits (taking effect on the next write) and recounts the bytes. Used after
    /// restoring a snapshot written under another configuration.
    pub fn set_limits(&mut self, limits: SessionLimits) {
        self.capacity = limits.clients.max(1);
        self.max_bytes = Some((limits.bytes, limits.response_bytes));
        self.bytes = self.clients.values().map(|r| cost(&r.response)).sum();
    }
}

/// Decides and records in one step: returns `Some(answer)` when the write must not be applied.
pub(crate) fn answer_without_applying(table: &SessionTable, session: Session) -> Option<Response> {
    match table.check(session) {
        Check::Fresh => None,
        Check::Duplicate(r) => Some(r),
        Check::Expired => Some(Response::Rejected(ApplyError::SessionExpired {
            client_id: session.client_id,
            sequence: session.sequence,
        })),
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn s(client_id: u64, sequence: u64) -> Session {
        Session {
            client_id,
            sequence,
        }
    }

    fn lim(clients: usize) -> SessionLimits {
        SessionLimits {
            clients,
            ..SessionLimits::default()
        }
    }

    fn out(b: &'static [u8]) -> Response {
        Response::Output(Bytes::from_static(b))
    }

    #[test]
    fn retries_get_the_remembered_answer() {
        let mut t = SessionTable::new(lim(10));
        assert_eq!(t.check(s(1, 1)), Check::Fresh);
        t.record(s(1, 1), out(b"a"), 5);
        assert_eq!(t.check(s(1, 1)), Check::Duplicate(out(b"a")));
        assert_eq!(t.check(s(1, 2)), Check::Fresh);
        t.record(s(1, 2), out(b"b"), 6);
        assert_eq!(t.check(s(1, 1)), Check::Expired);
        assert_eq!(t.check(s(1, 2)), Check::Duplicate(out(b"b")));
    }

    #[test]
    fn unknown_clients_must_start_at_one() {
        let t = SessionTable::new(lim(10));
        assert_eq!(t.check(s(9, 1)), Check::Fresh);
        assert_eq!(t.check(s(9, 2)), Check::Expired);
    }

    #[test]
    fn oldest_client_is_evicted_when_full() {
        let mut t = SessionTable::new(lim(2));
        t.record(s(1, 1), out(b"a"), 1);
        t.record(s(2, 1), out(b"b"), 2);
        t.record(s(1, 2), out(b"c"), 3); // client 1 is now the newest
        t.record(s(3, 1), out(b"d"), 4); // evicts client 2
        assert_eq!(t.len(), 2);
        assert_eq!(t.check(s(2, 1)), Check::Fresh, "client 2 was forgotten");
        assert_eq!(t.check(s(2, 2)), Check::Expired);
        assert_eq!(t.check(s(1, 2)), Check::Duplicate(out(b"c")));
        assert_eq!(t.check(s(3, 1)), Check::Duplicate(out(b"d")));
    }

    #[test]
    fn bytes_are_bounded_and_large_responses_are_not_kept() {
        let limits = SessionLimits {
            clients: 1_000,
            bytes: 10 * (ENTRY_OVERHEAD + 100),
            response_bytes: 100,
        };
        let mut t = SessionTable::new(limits);
        let big = Response::Output(Bytes::from(vec![7u8; 10_000]));
        t.record(s(1, 1), big, 1);
        assert!(t.bytes() < 1_000, "the large response was not kept");
        assert_eq!(
            t.check(s(1, 1)),
            Check::Duplicate(Response::Rejected(ApplyError::ResponseNotKept {
                client_id: 1,
                sequence: 1
            })),
            "a retry learns the write was applied but not its answer"
        );
        for c in 2..100u64 {
            t.record(s(c, 1), Response::Output(Bytes::from(vec![1u8; 100])), c);
            assert!(t.bytes() <= limits.bytes, "{} bytes", t.bytes());
        }
        assert_eq!(t.len(), 10, "as many clients as fit in the byte limit");
        assert_eq!(
            t.check(s(99, 1)),
            Check::Duplicate(Response::Output(Bytes::from(vec![1u8; 100])))
        );
        assert_eq!(t.check(s(2, 2)), Check::Expired, "the oldest went first");
        // The byte count survives a snapshot round trip.
        let mut restored: SessionTable =
            crate::codec::decode(&crate::codec::encode(&t).unwrap()).unwrap();
        restored.set_limits(limits);
        assert_eq!(restored.bytes(), t.bytes());
    }
}
