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
//! The table is bounded: when it is full, the client whose last write is oldest (by log index) is
//! evicted. Every decision depends only on the log, so all replicas agree. The table is part of
//! every snapshot.

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

/// The bounded table of client sessions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SessionTable {
    capacity: usize,
    clients: BTreeMap<u64, Remembered>,
    /// `(index, client_id)` of every remembered client, oldest first.
    by_age: BTreeSet<(u64, u64)>,
}

impl SessionTable {
    /// An empty table holding at most `capacity` clients (at least one).
    pub fn new(capacity: usize) -> SessionTable {
        SessionTable {
            capacity: capacity.max(1),
            clients: BTreeMap::new(),
            by_age: BTreeSet::new(),
        }
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

    /// Remembers `response` as the answer to `session`, applied at log `index`.
    pub fn record(&mut self, session: Session, response: Response, index: u64) {
        if let Some(old) = self.clients.remove(&session.client_id) {
            self.by_age.remove(&(old.index, session.client_id));
        } else {
            while self.clients.len() >= self.capacity {
                let Some((idx, client)) = self.by_age.pop_first() else {
                    break;
                };
                tracing::debug!(
                    client,
                    last_index = idx,
                    "client session expired from a full session table"
                );
                self.clients.remove(&client);
            }
        }
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

    /// Changes the capacity (taking effect on the next new client). Used after restoring a
    /// snapshot written under another configuration.
    pub fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity.max(1);
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

    fn out(b: &'static [u8]) -> Response {
        Response::Output(Bytes::from_static(b))
    }

    #[test]
    fn retries_get_the_remembered_answer() {
        let mut t = SessionTable::new(10);
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
        let t = SessionTable::new(10);
        assert_eq!(t.check(s(9, 1)), Check::Fresh);
        assert_eq!(t.check(s(9, 2)), Check::Expired);
    }

    #[test]
    fn oldest_client_is_evicted_when_full() {
        let mut t = SessionTable::new(2);
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
}
