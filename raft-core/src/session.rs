//! Client sessions: exactly-once application of retried writes.
//!
//! A session has an explicit lifecycle, as in dragonboat: a client opens one with a replicated
//! [`Proposal::RegisterSession`](crate::types::Proposal) entry (its client id is that entry's log
//! index), numbers its writes `1, 2, 3, …` within it, and closes it with
//! [`Proposal::CloseSession`](crate::types::Proposal). The table remembers, per open session,
//! the last sequence applied and the response it produced. A write stamped with a [`Session`] is
//!
//! * applied if its sequence is newer than the remembered one,
//! * answered with the remembered response if it repeats the remembered sequence — a retry,
//! * refused with [`ApplyError::SessionExpired`] if it is older,
//! * refused with [`ApplyError::UnknownSession`] if the session is not open (never registered,
//!   closed or evicted) — whatever its sequence, so a retry after an eviction is never applied
//!   a second time as if it were fresh.
//!
//! A registration may carry a key the client chose
//! ([`Proposal::RegisterKeyedSession`](crate::types::Proposal)): while a session opened with that
//! key is open, registering with it again opens nothing and answers that session's id. So a
//! client that retries a registration whose outcome it never learned (a timeout, a leader
//! change) gets the session it may already have, instead of opening a second one that nobody
//! uses and that, in a full table, evicts another client's session.
//!
//! Entries written by earlier versions (`LegacySessionWrite`) keep the rule they were written
//! under: an unknown client at sequence 1 starts a session implicitly.
//!
//! The table is bounded in sessions and in bytes by a [`SessionCapacity`] that is itself
//! replicated state: when either bound is reached, the session whose last write (or
//! registration) is oldest by log index is evicted. A response larger than the per-response
//! bound is not kept whole: the table remembers only that the sequence was applied, and a retry
//! of it is answered with [`ApplyError::ResponseNotKept`] — "applied earlier, answer unknown" —
//! never with a wrong answer. Every decision depends only on the log, so all replicas agree.
//! The table, capacity included, is part of every snapshot, whose header it therefore bounds.
//!
//! Snapshot format: `(0, 2, capacity, sessions, keys)`, where `keys` maps the client id of
//! every session opened with a key to that key; a table without keyed sessions is written as
//! `(0, 1, capacity, sessions)`, the form versions before keyed registration read. The first
//! format began with the table's session count limit (never 0), then the sessions and an age
//! index; [`SessionTable`]'s decoder reads all three.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::fmt;

use serde::Deserialize;
use serde::Deserializer;
use serde::Serialize;
use serde::Serializer;
use serde::de::SeqAccess;
use serde::de::Visitor;

use crate::config::MAX_SESSION_BYTES;
use crate::types::ApplyError;
use crate::types::Response;
use crate::types::Session;
use crate::types::SessionCapacity;

/// What the table says about an incoming stamped write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Check {
    /// Apply it.
    Fresh,
    /// A retry of the last write: answer with this.
    Duplicate(Response),
    /// Older than the last write of its session.
    Expired,
    /// Its session is not open.
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Remembered {
    /// The last sequence applied; 0 for a session with no write yet.
    sequence: u64,
    response: Response,
    /// Log index of the entry that last touched the session; orders eviction.
    index: u64,
}

/// Bytes a remembered client costs besides its response (ids, sequence, index, tree nodes).
const ENTRY_OVERHEAD: usize = 64;

/// Version of the table's snapshot form without keyed sessions (see the module docs).
const FORMAT_UNKEYED: u64 = 1;

/// Version of the table's snapshot form with keyed sessions, the newest this version reads.
const FORMAT: u64 = 2;

/// What one remembered response costs, in bytes.
fn cost(response: &Response) -> usize {
    ENTRY_OVERHEAD
        + match response {
            Response::Output(b) => b.len(),
            Response::Empty => 0,
            Response::Rejected(e) => e.to_string().len(),
        }
}

fn to_usize(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

/// A capacity every replica can live with: at least one session, at most
/// [`MAX_SESSION_BYTES`] bytes. Applied the same way on every replica.
pub(crate) fn clamp(c: SessionCapacity) -> SessionCapacity {
    SessionCapacity {
        max_sessions: c.max_sessions.max(1),
        max_bytes: c.max_bytes.min(MAX_SESSION_BYTES as u64),
        max_response_bytes: c.max_response_bytes,
    }
}

/// Why an operator's capacity is refused ([`Node::set_session_capacity`](crate::Node), and a
/// [`Config`](crate::Config)'s initial one): a kept response larger than the whole table would
/// make room for itself by evicting every other session, and leave the table over its bound.
pub(crate) fn oversized_response(c: SessionCapacity) -> Option<String> {
    (c.max_response_bytes > c.max_bytes).then(|| {
        format!(
            "the largest response kept for a retry ({} bytes) must be at most the session table's bytes ({})",
            c.max_response_bytes, c.max_bytes
        )
    })
}

/// The bounded table of client sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SessionTable {
    capacity: SessionCapacity,
    clients: BTreeMap<u64, Remembered>,
    /// `(index, client_id)` of every remembered client, oldest first.
    by_age: BTreeSet<(u64, u64)>,
    /// What the remembered responses cost now (see [`cost`]).
    bytes: usize,
    /// The registration key of every open session opened with one, by client id.
    key_of: BTreeMap<u64, u64>,
    /// The same, by key.
    by_key: BTreeMap<u64, u64>,
}

impl Default for SessionTable {
    fn default() -> Self {
        SessionTable::new(SessionCapacity::default())
    }
}

impl SessionTable {
    /// An empty table within `capacity`.
    pub fn new(capacity: SessionCapacity) -> SessionTable {
        SessionTable {
            capacity: clamp(capacity),
            clients: BTreeMap::new(),
            by_age: BTreeSet::new(),
            bytes: 0,
            key_of: BTreeMap::new(),
            by_key: BTreeMap::new(),
        }
    }

    fn from_clients(
        capacity: SessionCapacity,
        clients: BTreeMap<u64, Remembered>,
        key_of: BTreeMap<u64, u64>,
    ) -> Self {
        let mut t = SessionTable::new(capacity);
        t.by_age = clients.iter().map(|(id, r)| (r.index, *id)).collect();
        t.bytes = clients.values().map(|r| cost(&r.response)).sum();
        // A key is kept only for an open session, and one key names one session.
        for (client, key) in key_of {
            if clients.contains_key(&client) && !t.by_key.contains_key(&key) {
                t.set_key(client, key);
            }
        }
        t.clients = clients;
        t
    }

    /// The table's bounds.
    pub fn capacity(&self) -> SessionCapacity {
        self.capacity
    }

    /// Bytes the remembered responses cost now.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Number of open sessions.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// Decides what to do with a write stamped `session`; `legacy` for entries written under
    /// the first format's implicit-start rule.
    pub fn check(&self, session: Session, legacy: bool) -> Check {
        match self.clients.get(&session.client_id) {
            None if legacy && session.sequence == 1 => Check::Fresh,
            None if legacy => Check::Expired,
            None => Check::Unknown,
            Some(r) if session.sequence > r.sequence => Check::Fresh,
            Some(r) if session.sequence == r.sequence && r.sequence > 0 => {
                Check::Duplicate(r.response.clone())
            }
            Some(_) => Check::Expired,
        }
    }

    /// Evicts the oldest sessions while `over` says the table is too full.
    fn evict_while(&mut self, over: impl Fn(&SessionTable) -> bool) {
        while over(self) {
            let Some((idx, client)) = self.by_age.pop_first() else {
                break;
            };
            tracing::debug!(
                client,
                last_index = idx,
                "client session expired from a full session table"
            );
            self.forget(client);
        }
    }

    fn remove(&mut self, client_id: u64) {
        if let Some(index) = self.forget(client_id) {
            self.by_age.remove(&(index, client_id));
        }
    }

    /// Drops a session's entry, its cost and its key (not its place in the age index), and
    /// returns the index it was last touched at.
    fn forget(&mut self, client_id: u64) -> Option<u64> {
        let old = self.clients.remove(&client_id)?;
        self.bytes -= cost(&old.response);
        if let Some(key) = self.key_of.remove(&client_id) {
            self.by_key.remove(&key);
        }
        Some(old.index)
    }

    /// Evicts the oldest sessions until a session whose response costs `new_cost` fits:
    /// `present` if it is in the table already (out of the age index, so never the one evicted,
    /// and counted as absent against the session limit).
    fn make_room(&mut self, new_cost: usize, present: bool) {
        let max = to_usize(self.capacity.max_sessions);
        let max_bytes = to_usize(self.capacity.max_bytes);
        self.evict_while(|t| {
            t.clients.len() - usize::from(present) >= max || t.bytes + new_cost > max_bytes
        });
    }

    fn insert(&mut self, client_id: u64, r: Remembered) {
        let new_cost = cost(&r.response);
        self.make_room(new_cost, false);
        self.bytes += new_cost;
        self.by_age.insert((r.index, client_id));
        self.clients.insert(client_id, r);
    }

    /// Opens a session registered by the entry at log `index`; its client id is `index`.
    pub fn register(&mut self, index: u64) -> u64 {
        self.remove(index);
        self.insert(
            index,
            Remembered {
                sequence: 0,
                response: Response::Empty,
                index,
            },
        );
        index
    }

    /// Opens a session registered by the entry at log `index` with `key`, as
    /// [`SessionTable::register`] does, unless a session opened with `key` is still open: then
    /// nothing changes and that session's client id is returned.
    pub fn register_keyed(&mut self, index: u64, key: u64) -> u64 {
        if let Some(&client) = self.by_key.get(&key) {
            return client;
        }
        let client = self.register(index);
        self.set_key(client, key);
        client
    }

    /// Closes a session (nothing happens if it is not open).
    pub fn close(&mut self, client_id: u64) {
        self.remove(client_id);
    }

    /// Changes the bounds, evicting the oldest sessions until the table fits.
    pub fn set_capacity(&mut self, capacity: SessionCapacity) {
        self.capacity = clamp(capacity);
        let max = to_usize(self.capacity.max_sessions);
        let max_bytes = to_usize(self.capacity.max_bytes);
        self.evict_while(|t| t.clients.len() > max || t.bytes > max_bytes);
    }

    /// Remembers `response` as the answer to `session`, applied at log `index`. A response
    /// larger than the per-response limit is replaced by [`ApplyError::ResponseNotKept`].
    pub fn record(&mut self, session: Session, response: Response, index: u64) {
        let too_large =
            cost(&response) - ENTRY_OVERHEAD > to_usize(self.capacity.max_response_bytes);
        self.remember(session, (!too_large).then_some(response), index);
    }

    /// Remembers that `session`'s write at `index` was applied and its response was larger
    /// than the per-response limit: exactly what [`SessionTable::record`] keeps for such a
    /// response, for one that was never built whole.
    pub fn record_too_large(&mut self, session: Session, index: u64) {
        self.remember(session, None, index);
    }

    /// Remembers `response`, or ([`None`]) that it was too large to keep.
    fn remember(&mut self, session: Session, response: Option<Response>, index: u64) {
        let response = response.unwrap_or(Response::Rejected(ApplyError::ResponseNotKept {
            client_id: session.client_id,
            sequence: session.sequence,
        }));
        let client = session.client_id;
        let Some(old) = self.clients.get(&client) else {
            // Only entries of the first format start a session by writing.
            self.insert(
                client,
                Remembered {
                    sequence: session.sequence,
                    response,
                    index,
                },
            );
            return;
        };
        // Updated in place, with the same evictions as removing the session and inserting it
        // anew (see `make_room`).
        let new_cost = cost(&response);
        self.by_age.remove(&(old.index, client));
        self.bytes -= cost(&old.response);
        self.make_room(new_cost, true);
        if let Some(r) = self.clients.get_mut(&client) {
            *r = Remembered {
                sequence: session.sequence,
                response,
                index,
            };
        }
        self.bytes += new_cost;
        self.by_age.insert((index, client));
    }

    /// Records that the open session `client` was registered with `key`.
    fn set_key(&mut self, client: u64, key: u64) {
        self.key_of.insert(client, key);
        self.by_key.insert(key, client);
    }
}

impl Serialize for SessionTable {
    fn serialize<Ser: Serializer>(&self, s: Ser) -> Result<Ser::Ok, Ser::Error> {
        if self.key_of.is_empty() {
            (0u64, FORMAT_UNKEYED, &self.capacity, &self.clients).serialize(s)
        } else {
            (0u64, FORMAT, &self.capacity, &self.clients, &self.key_of).serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for SessionTable {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = SessionTable;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a client session table")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<SessionTable, A::Error> {
                use serde::de::Error;
                let missing = || A::Error::custom("truncated session table");
                let head: u64 = seq.next_element()?.ok_or_else(missing)?;
                if head != 0 {
                    // The first format: the session limit, the sessions, an age index (rebuilt).
                    let clients = seq.next_element()?.ok_or_else(missing)?;
                    let _: BTreeSet<(u64, u64)> = seq.next_element()?.ok_or_else(missing)?;
                    let capacity = SessionCapacity {
                        max_sessions: head,
                        ..SessionCapacity::default()
                    };
                    return Ok(SessionTable::from_clients(
                        capacity,
                        clients,
                        BTreeMap::new(),
                    ));
                }
                let version: u64 = seq.next_element()?.ok_or_else(missing)?;
                if !(FORMAT_UNKEYED..=FORMAT).contains(&version) {
                    return Err(A::Error::custom(format!(
                        "session table format {version} is not one this version reads ({FORMAT_UNKEYED} to {FORMAT})"
                    )));
                }
                let capacity = seq.next_element()?.ok_or_else(missing)?;
                let clients = seq.next_element()?.ok_or_else(missing)?;
                let key_of = if version == FORMAT_UNKEYED {
                    BTreeMap::new()
                } else {
                    seq.next_element()?.ok_or_else(missing)?
                };
                Ok(SessionTable::from_clients(capacity, clients, key_of))
            }
        }
        d.deserialize_tuple(5, V)
    }
}

/// Returns `Some(answer)` when the write stamped `session` must not be applied.
pub(crate) fn answer_without_applying(
    table: &SessionTable,
    session: Session,
    legacy: bool,
) -> Option<Response> {
    let Session {
        client_id,
        sequence,
    } = session;
    match table.check(session, legacy) {
        Check::Fresh => None,
        Check::Duplicate(r) => Some(r),
        Check::Expired => Some(Response::Rejected(ApplyError::SessionExpired {
            client_id,
            sequence,
        })),
        Check::Unknown => Some(Response::Rejected(ApplyError::UnknownSession {
            client_id,
            sequence,
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

    fn lim(max_sessions: u64) -> SessionCapacity {
        SessionCapacity {
            max_sessions,
            ..SessionCapacity::default()
        }
    }

    fn out(b: &'static [u8]) -> Response {
        Response::Output(Bytes::from_static(b))
    }

    #[test]
    fn retries_get_the_remembered_answer() {
        let mut t = SessionTable::new(lim(10));
        let c = t.register(1);
        assert_eq!(t.check(s(c, 1), false), Check::Fresh);
        t.record(s(c, 1), out(b"a"), 5);
        assert_eq!(t.check(s(c, 1), false), Check::Duplicate(out(b"a")));
        assert_eq!(t.check(s(c, 2), false), Check::Fresh);
        t.record(s(c, 2), out(b"b"), 6);
        assert_eq!(t.check(s(c, 1), false), Check::Expired);
        assert_eq!(t.check(s(c, 2), false), Check::Duplicate(out(b"b")));
    }

    #[test]
    fn unknown_sessions_are_never_fresh() {
        let mut t = SessionTable::new(lim(10));
        assert_eq!(t.check(s(9, 1), false), Check::Unknown);
        assert_eq!(t.check(s(9, 2), false), Check::Unknown);
        let c = t.register(3);
        assert_eq!(
            t.check(s(c, 0), false),
            Check::Expired,
            "sequences start at 1"
        );
        t.close(c);
        assert_eq!(t.check(s(c, 1), false), Check::Unknown, "closed");
        // Entries of the first format keep their implicit start.
        assert_eq!(t.check(s(9, 1), true), Check::Fresh);
        assert_eq!(t.check(s(9, 2), true), Check::Expired);
    }

    #[test]
    fn oldest_session_is_evicted_when_full_and_never_comes_back() {
        let mut t = SessionTable::new(lim(2));
        let a = t.register(1);
        let b = t.register(2);
        t.record(s(a, 1), out(b"c"), 3); // a is now the newest
        let c = t.register(4); // evicts b
        assert_eq!(t.len(), 2);
        assert_eq!(t.check(s(b, 1), false), Check::Unknown, "b was evicted");
        assert_eq!(t.check(s(a, 1), false), Check::Duplicate(out(b"c")));
        assert_eq!(t.check(s(c, 1), false), Check::Fresh);
        t.set_capacity(lim(1));
        assert_eq!(t.len(), 1, "shrinking evicts");
        assert_eq!(t.check(s(a, 1), false), Check::Unknown);
        assert_eq!(t.capacity().max_sessions, 1);
        t.set_capacity(lim(0));
        assert_eq!(t.capacity().max_sessions, 1, "at least one session");
    }

    #[test]
    fn a_response_never_built_is_kept_as_one_too_large_to_keep() {
        let limits = SessionCapacity {
            max_response_bytes: 100,
            ..lim(10)
        };
        let (mut built, mut not_built) = (SessionTable::new(limits), SessionTable::new(limits));
        for t in [&mut built, &mut not_built] {
            t.register(1);
            t.record(s(1, 1), out(b"kept"), 2);
        }
        built.record(s(1, 2), Response::Output(Bytes::from(vec![7u8; 101])), 3);
        not_built.record_too_large(s(1, 2), 3);
        assert_eq!(built.bytes(), not_built.bytes());
        assert_eq!(
            crate::codec::encode(&built).unwrap(),
            crate::codec::encode(&not_built).unwrap(),
            "every replica holds the same table, whichever way it learned the size"
        );
    }

    #[test]
    fn bytes_are_bounded_and_large_responses_are_not_kept() {
        let limits = SessionCapacity {
            max_sessions: 1_000,
            max_bytes: 10 * (ENTRY_OVERHEAD as u64 + 100),
            max_response_bytes: 100,
        };
        let mut t = SessionTable::new(limits);
        let big = Response::Output(Bytes::from(vec![7u8; 10_000]));
        t.register(1);
        t.record(s(1, 1), big, 1);
        assert!(t.bytes() < 1_000, "the large response was not kept");
        assert_eq!(
            t.check(s(1, 1), false),
            Check::Duplicate(Response::Rejected(ApplyError::ResponseNotKept {
                client_id: 1,
                sequence: 1
            })),
            "a retry learns the write was applied but not its answer"
        );
        for c in 2..100u64 {
            t.register(c);
            t.record(s(c, 1), Response::Output(Bytes::from(vec![1u8; 100])), c);
            assert!(t.bytes() as u64 <= limits.max_bytes, "{} bytes", t.bytes());
        }
        assert_eq!(t.len(), 10, "as many clients as fit in the byte limit");
        assert_eq!(
            t.check(s(99, 1), false),
            Check::Duplicate(Response::Output(Bytes::from(vec![1u8; 100])))
        );
        assert_eq!(
            t.check(s(2, 2), false),
            Check::Unknown,
            "the oldest went first"
        );
        // The table, capacity and byte count included, survives a snapshot round trip.
        let restored: SessionTable =
            crate::codec::decode(&crate::codec::encode(&t).unwrap()).unwrap();
        assert_eq!(restored, t);
        assert_eq!(restored.bytes(), t.bytes());
    }

    #[test]
    fn a_key_opens_one_session_while_it_is_open() {
        let mut t = SessionTable::new(lim(10));
        assert_eq!(t.register_keyed(1, 77), 1);
        assert_eq!(t.register_keyed(5, 77), 1, "a retry gets the open session");
        assert_eq!(t.len(), 1);
        assert_eq!(t.register_keyed(6, 78), 6, "another key, another session");
        t.record(s(1, 1), out(b"a"), 7);
        assert_eq!(t.register_keyed(8, 77), 1, "writes keep the key");
        assert_eq!(t.check(s(1, 1), false), Check::Duplicate(out(b"a")));
        t.close(1);
        assert_eq!(t.register_keyed(9, 77), 9, "a closed session frees its key");
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn a_retried_registration_evicts_nobody() {
        let mut t = SessionTable::new(lim(2));
        let a = t.register(1);
        let b = t.register_keyed(2, 5);
        // The registration's outcome was unknown to its client, which tries again.
        assert_eq!(t.register_keyed(3, 5), b);
        assert_eq!(t.check(s(a, 1), false), Check::Fresh, "a is still open");
        // Eviction frees the key with its session.
        t.register(4);
        t.register(5);
        assert_eq!(t.check(s(b, 1), false), Check::Unknown, "b was evicted");
        assert_eq!(t.register_keyed(6, 5), 6);
    }

    #[test]
    fn keys_survive_a_snapshot_and_unkeyed_tables_keep_the_older_form() {
        let mut t = SessionTable::new(lim(10));
        t.register(1);
        let unkeyed = crate::codec::encode(&t).unwrap();
        assert_eq!(
            &unkeyed[..2],
            &[0, FORMAT_UNKEYED as u8],
            "readable by versions before keys"
        );
        t.register_keyed(2, 500);
        t.register_keyed(3, 600);
        t.close(3);
        let bytes = crate::codec::encode(&t).unwrap();
        assert_eq!(&bytes[..2], &[0, FORMAT as u8]);
        let mut restored: SessionTable = crate::codec::decode(&bytes).unwrap();
        assert_eq!(restored, t);
        assert_eq!(
            restored.register_keyed(4, 500),
            2,
            "the key still names its session"
        );
        assert_eq!(
            restored.register_keyed(5, 600),
            5,
            "a closed session's key is free"
        );
        let mut older: SessionTable = crate::codec::decode(&unkeyed).unwrap();
        assert_eq!(older.len(), 1);
        assert_eq!(older.register_keyed(2, 500), 2);
    }

    /// What recording did before it updated sessions in place: remove the session, insert it
    /// anew, and keep its key.
    fn record_by_reinserting(
        t: &mut SessionTable,
        session: Session,
        response: Response,
        index: u64,
    ) {
        let too_large = cost(&response) - ENTRY_OVERHEAD > to_usize(t.capacity.max_response_bytes);
        let response = if too_large {
            Response::Rejected(ApplyError::ResponseNotKept {
                client_id: session.client_id,
                sequence: session.sequence,
            })
        } else {
            response
        };
        let key = t.key_of.get(&session.client_id).copied();
        t.remove(session.client_id);
        t.insert(
            session.client_id,
            Remembered {
                sequence: session.sequence,
                response,
                index,
            },
        );
        if let Some(key) = key {
            t.set_key(session.client_id, key);
        }
    }

    #[test]
    fn recording_in_place_evicts_exactly_as_reinserting_did() {
        use rand::Rng;
        use rand::SeedableRng;
        for seed in 0..50u64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let limits = SessionCapacity {
                max_sessions: rng.random_range(1..8),
                max_bytes: rng.random_range(64..2_000),
                max_response_bytes: rng.random_range(0..600),
            };
            let (mut fast, mut reference) = (SessionTable::new(limits), SessionTable::new(limits));
            for index in 1..400u64 {
                let client = rng.random_range(1..index.min(12) + 1);
                match rng.random_range(0..10) {
                    0 => {
                        fast.register_keyed(index, client % 3);
                        reference.register_keyed(index, client % 3);
                    }
                    1 => {
                        fast.close(client);
                        reference.close(client);
                    }
                    2 if index % 50 == 0 => {
                        let c = SessionCapacity {
                            max_sessions: rng.random_range(1..8),
                            ..limits
                        };
                        fast.set_capacity(c);
                        reference.set_capacity(c);
                    }
                    _ => {
                        let open = fast.clients.keys().copied().collect::<Vec<_>>();
                        if open.is_empty() {
                            continue;
                        }
                        let c = open[rng.random_range(0..open.len())];
                        let sequence = fast.clients[&c].sequence + 1;
                        let response = out_of(rng.random_range(0..700));
                        fast.record(s(c, sequence), response.clone(), index);
                        record_by_reinserting(&mut reference, s(c, sequence), response, index);
                    }
                }
                assert_eq!(fast, reference, "seed {seed}, index {index}");
                assert_eq!(fast.bytes, reference.bytes, "seed {seed}, index {index}");
            }
        }
    }

    fn out_of(len: usize) -> Response {
        Response::Output(Bytes::from(vec![1u8; len]))
    }

    /// The first format's table, as it was serialised: limit, sessions, age index.
    #[derive(Serialize)]
    struct FirstFormat {
        capacity: usize,
        clients: BTreeMap<u64, Remembered>,
        by_age: BTreeSet<(u64, u64)>,
    }

    #[test]
    fn tables_of_the_first_format_still_decode() {
        let clients: BTreeMap<u64, Remembered> = [
            (
                77,
                Remembered {
                    sequence: 3,
                    response: out(b"x"),
                    index: 12,
                },
            ),
            (
                5,
                Remembered {
                    sequence: 1,
                    response: Response::Empty,
                    index: 9,
                },
            ),
        ]
        .into();
        let old = FirstFormat {
            capacity: 500,
            by_age: [(12, 77), (9, 5)].into(),
            clients,
        };
        let bytes = crate::codec::encode(&old).unwrap();
        let t: SessionTable = crate::codec::decode(&bytes).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t.capacity().max_sessions, 500);
        assert_eq!(t.check(s(77, 3), false), Check::Duplicate(out(b"x")));
        assert_eq!(t.check(s(77, 4), false), Check::Fresh);
        // The age index was rebuilt: the oldest (client 5) goes first.
        let mut t = t;
        t.set_capacity(lim(1));
        assert_eq!(t.check(s(5, 2), false), Check::Unknown);
        assert_eq!(t.check(s(77, 3), false), Check::Duplicate(out(b"x")));
        // A table from a newer format is refused, not misread.
        let newer = crate::codec::encode(&(0u64, FORMAT + 1)).unwrap();
        assert!(crate::codec::decode::<SessionTable>(&newer).is_err());
    }
}
