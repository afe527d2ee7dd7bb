//! The replicated state: a map of byte strings with optional expiry times.
//!
//! Every write carries the time it was accepted (`now`, milliseconds since the Unix epoch),
//! stamped once by the node that took the command from the client. Applying a write only ever
//! consults that stamp — never the replica's clock — so every replica makes the same decisions
//! about expiry. Expired keys are invisible to reads, removed when a write touches them, and
//! swept by a periodic `PurgeExpired` write from the leader. An index of keys by expiry time
//! keeps the sweep and the leader's check for due keys proportional to the keys they find, not
//! to the size of the store.
//!
//! Keys are ordered by a stable 64-bit hash (then by the key), which gives `SCAN` a numeric
//! cursor with Redis' guarantee: a key present for the whole iteration is returned.

use std::collections::BTreeSet;
use std::collections::btree_map::Entry;
use std::io;
use std::io::Read;
use std::io::Write;

use bytes::Bytes;
use bytes::BytesMut;
use raft_core::Queryable;
use raft_core::StateMachine;
use serde::Deserialize;
use serde::Serialize;

use crate::slots::Slot;
use crate::slots::SlotMap;

/// A reply, shaped like a RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// `+OK`
    Ok,
    /// A null bulk string.
    Nil,
    /// An integer.
    Int(i64),
    /// A bulk string.
    Bulk(Bytes),
    /// An array.
    Array(Vec<Reply>),
    /// A map: a RESP3 map, or a flat array of keys and values in RESP2.
    Map(Vec<(Reply, Reply)>),
    /// An error (the text after `-`).
    Error(String),
}

/// What happens to a key's expiry when `SET` overwrites it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Expiry {
    /// Drop any expiry (plain `SET`).
    Clear,
    /// Keep the current expiry (`KEEPTTL`).
    Keep,
    /// Expire at this time, in ms since the epoch (`EX`, `PX`, `EXAT`, `PXAT`).
    At(u64),
}

/// When `SET` may write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Condition {
    /// Always.
    Always,
    /// Only if the key does not exist (`NX`).
    IfAbsent,
    /// Only if the key exists (`XX`).
    IfPresent,
}

/// A change to the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteOp {
    /// `SET` and its relatives; with `get`, replies with the old value.
    Set {
        key: Bytes,
        value: Bytes,
        expiry: Expiry,
        condition: Condition,
        get: bool,
    },
    /// `DEL`: replies with the number of keys removed.
    Del(Vec<Bytes>),
    /// `INCRBY` (and `INCR`, `DECR`, `DECRBY`): replies with the new value.
    IncrBy(Bytes, i64),
    /// `APPEND`: replies with the new length.
    Append(Bytes, Bytes),
    /// `MSET`.
    MSet(Vec<(Bytes, Bytes)>),
    /// `EXPIRE`/`PEXPIRE` (`Some(at)`) or `PERSIST` (`None`): replies 1 if the key exists (and,
    /// for `PERSIST`, had an expiry), else 0. An expiry in the past deletes the key.
    Expire { key: Bytes, at: Option<u64> },
    /// `FLUSHDB`.
    FlushDb,
    /// Removes up to `limit` expired keys (sent by the leader from time to time).
    PurgeExpired { limit: usize },
    /// `APPEND` that refuses to make a value longer than `max` bytes (`proto-max-bulk-len`):
    /// replies with the new length, or an error and no change.
    AppendAtMost { key: Bytes, suffix: Bytes, max: u64 },
    /// `SETRANGE`: overwrites the value from `offset` (padding with zero bytes), refusing to make
    /// it longer than `max` bytes; replies with the new length.
    SetRange {
        key: Bytes,
        offset: u64,
        value: Bytes,
        max: u64,
    },
}

/// A write as it travels through the log: the operation and when it was accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// Milliseconds since the Unix epoch, stamped by the node that accepted the command.
    pub now: u64,
    /// The operation.
    pub op: WriteOp,
}

/// A question about the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadOp {
    Get(Bytes),
    MGet(Vec<Bytes>),
    Exists(Vec<Bytes>),
    Strlen(Bytes),
    /// `TTL` (seconds) or `PTTL` (milliseconds).
    Ttl {
        key: Bytes,
        millis: bool,
    },
    Keys(Bytes),
    Scan {
        cursor: u64,
        pattern: Option<Bytes>,
        count: usize,
    },
    DbSize,
}

/// A read as it is sent: the question and the reader's time (for expiry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Query {
    /// Milliseconds since the Unix epoch on the node that serves the read.
    pub now: u64,
    /// The question.
    pub op: ReadOp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Value {
    data: Bytes,
    expires_at: Option<u64>,
}

impl Value {
    fn live(&self, now: u64) -> bool {
        self.expires_at.is_none_or(|at| at > now)
    }
}

/// The key-value store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Store {
    /// Copy-on-write shards: a snapshot handle costs O(shards), not O(keys).
    map: SlotMap<Value>,
    /// `(expires_at, slot)` for every value in `map` that has an expiry time.
    expiring: BTreeSet<(u64, Slot)>,
}

/// Keeps the expiry index in step with a value's expiry changing from `old` to `new`.
fn reindex(expiring: &mut BTreeSet<(u64, Slot)>, slot: &Slot, old: Option<u64>, new: Option<u64>) {
    if old == new {
        return;
    }
    if let Some(at) = old {
        expiring.remove(&(at, slot.clone()));
    }
    if let Some(at) = new {
        expiring.insert((at, slot.clone()));
    }
}

const WRONG_NUMBER: &str = "ERR value is not an integer or out of range";
const TOO_LONG: &str = "ERR string exceeds maximum allowed size (proto-max-bulk-len)";

impl Store {
    /// How many keys have expired at `now`, counting up to `limit`.
    pub fn expired_count(&self, now: u64, limit: usize) -> usize {
        self.due(now).take(limit).count()
    }

    /// Keys whose expiry time has come at `now`, soonest first.
    fn due(&self, now: u64) -> impl Iterator<Item = &Slot> {
        self.expiring
            .iter()
            .take_while(move |(at, _)| *at <= now)
            .map(|(_, slot)| slot)
    }

    /// Inserts or replaces a value, keeping the expiry index in step.
    fn put(&mut self, slot: Slot, value: Value) {
        let new = value.expires_at;
        match self.map.entry(slot) {
            Entry::Occupied(mut e) => {
                reindex(&mut self.expiring, e.key(), e.get().expires_at, new);
                e.insert(value);
            }
            Entry::Vacant(e) => {
                reindex(&mut self.expiring, e.key(), None, new);
                e.insert(value);
            }
        }
    }

    /// Removes a value, keeping the expiry index in step.
    fn take(&mut self, slot: &Slot) -> Option<Value> {
        let old = self.map.remove(slot)?;
        reindex(&mut self.expiring, slot, old.expires_at, None);
        Some(old)
    }

    fn live(&self, key: &Bytes, now: u64) -> Option<&Value> {
        self.map.get(&Slot::of(key)).filter(|v| v.live(now))
    }

    /// The value at `slot` if it is live at `now`; an expired one is dropped first, so a write
    /// sees it as absent.
    fn live_for_write(&mut self, slot: &Slot, now: u64) -> Option<&mut Value> {
        if self.map.get(slot).is_some_and(|v| !v.live(now)) {
            self.take(slot);
            return None;
        }
        self.map.get_mut(slot)
    }

    /// `APPEND`, in amortised O(appended bytes): the value's buffer grows by doubling and is
    /// extended in place while nothing else (a snapshot, a reply in flight) shares it.
    fn append(&mut self, key: Bytes, suffix: Bytes, max: u64, now: u64) -> Reply {
        let slot = Slot::of(&key);
        let len = match self.live_for_write(&slot, now) {
            Some(v) => {
                let len = v.data.len() + suffix.len();
                if len as u64 > max {
                    return Reply::Error(TOO_LONG.into());
                }
                let mut data = std::mem::take(&mut v.data)
                    .try_into_mut()
                    .unwrap_or_else(|shared| BytesMut::from(&shared[..]));
                if data.capacity() - data.len() < suffix.len() {
                    data.reserve(suffix.len().max(data.len()));
                }
                data.extend_from_slice(&suffix);
                v.data = data.freeze();
                len
            }
            None => {
                if suffix.len() as u64 > max {
                    return Reply::Error(TOO_LONG.into());
                }
                let len = suffix.len();
                self.put(
                    slot,
                    Value {
                        data: suffix,
                        expires_at: None,
                    },
                );
                len
            }
        };
        Reply::Int(len as i64)
    }

    /// `SETRANGE`, in place while nothing shares the value (see [`Store::append`]).
    fn set_range(&mut self, key: Bytes, offset: u64, value: Bytes, max: u64, now: u64) -> Reply {
        let slot = Slot::of(&key);
        let current = self.live_for_write(&slot, now).map_or(0, |v| v.data.len());
        if value.is_empty() {
            // Changes nothing, creates nothing (as in Redis).
            return Reply::Int(current as i64);
        }
        let Some(end) = offset.checked_add(value.len() as u64).filter(|e| *e <= max) else {
            return Reply::Error(TOO_LONG.into());
        };
        let (start, end) = (offset as usize, end as usize);
        let mut data = match self.live_for_write(&slot, now) {
            Some(v) => std::mem::take(&mut v.data)
                .try_into_mut()
                .unwrap_or_else(|shared| BytesMut::from(&shared[..])),
            None => BytesMut::new(),
        };
        if data.len() < end {
            data.resize(end, 0);
        }
        data[start..end].copy_from_slice(&value);
        let len = data.len();
        match self.live_for_write(&slot, now) {
            Some(v) => v.data = data.freeze(),
            None => self.put(
                slot,
                Value {
                    data: data.freeze(),
                    expires_at: None,
                },
            ),
        }
        Reply::Int(len as i64)
    }

    fn write(&mut self, cmd: Command) -> Reply {
        let now = cmd.now;
        match cmd.op {
            WriteOp::Set {
                key,
                value,
                expiry,
                condition,
                get,
            } => {
                // One lookup: the entry serves the condition, the old value and the update.
                let slot = Slot::new(key);
                let expiring = &mut self.expiring;
                let entry = self.map.entry(slot);
                let stored_expiry = match &entry {
                    Entry::Occupied(e) => e.get().expires_at,
                    Entry::Vacant(_) => None,
                };
                let old = match &entry {
                    Entry::Occupied(e) if e.get().live(now) => Some(e.get()),
                    _ => None,
                };
                let allowed = match condition {
                    Condition::Always => true,
                    Condition::IfAbsent => old.is_none(),
                    Condition::IfPresent => old.is_some(),
                };
                let old_expiry = old.and_then(|v| v.expires_at);
                let reply = match (get, allowed) {
                    (true, _) => old.map_or(Reply::Nil, |v| Reply::Bulk(v.data.clone())),
                    (false, true) => Reply::Ok,
                    (false, false) => Reply::Nil,
                };
                let expires_at = match expiry {
                    Expiry::Clear => None,
                    Expiry::Keep => old_expiry,
                    Expiry::At(at) => Some(at),
                };
                let was_live = old.is_some();
                let value = Value {
                    data: value,
                    expires_at,
                };
                if allowed && expires_at.is_none_or(|at| at > now) {
                    reindex(expiring, entry.key(), stored_expiry, expires_at);
                    match entry {
                        Entry::Occupied(mut e) => {
                            e.insert(value);
                        }
                        Entry::Vacant(v) => {
                            v.insert(value);
                        }
                    }
                } else if allowed || !was_live {
                    // Set to an expiry already past, or an expired value a write now sees as
                    // absent: either way the key is gone.
                    if let Entry::Occupied(e) = entry {
                        reindex(expiring, e.key(), stored_expiry, None);
                        e.remove();
                    }
                }
                reply
            }
            WriteOp::Del(keys) => {
                let mut n = 0;
                for k in keys {
                    // An expired value goes too, but does not count as deleted.
                    if self.take(&Slot::of(&k)).is_some_and(|v| v.live(now)) {
                        n += 1;
                    }
                }
                Reply::Int(n)
            }
            WriteOp::IncrBy(key, by) => {
                let slot = Slot::of(&key);
                let stored = self.live_for_write(&slot, now);
                let current = match &stored {
                    None => 0i64,
                    Some(v) => match std::str::from_utf8(&v.data)
                        .ok()
                        .and_then(|s| s.parse::<i64>().ok())
                    {
                        Some(n) => n,
                        None => return Reply::Error(WRONG_NUMBER.into()),
                    },
                };
                let Some(next) = current.checked_add(by) else {
                    return Reply::Error("ERR increment or decrement would overflow".into());
                };
                let data = Bytes::from(next.to_string());
                // In place when the key exists (its expiry stays), else a new key.
                match stored {
                    Some(v) => v.data = data,
                    None => self.put(
                        slot,
                        Value {
                            data,
                            expires_at: None,
                        },
                    ),
                }
                Reply::Int(next)
            }
            WriteOp::Append(key, suffix) => self.append(key, suffix, u64::MAX, now),
            WriteOp::AppendAtMost { key, suffix, max } => self.append(key, suffix, max, now),
            WriteOp::SetRange {
                key,
                offset,
                value,
                max,
            } => self.set_range(key, offset, value, max, now),
            WriteOp::MSet(pairs) => {
                for (k, v) in pairs {
                    self.put(
                        Slot::of(&k),
                        Value {
                            data: v,
                            expires_at: None,
                        },
                    );
                }
                Reply::Ok
            }
            WriteOp::Expire { key, at } => {
                let slot = Slot::of(&key);
                let Some(v) = self.live_for_write(&slot, now) else {
                    return Reply::Int(0);
                };
                let old = v.expires_at;
                match at {
                    None if old.is_none() => Reply::Int(0),
                    Some(at) if at <= now => {
                        self.take(&slot);
                        Reply::Int(1)
                    }
                    at => {
                        v.expires_at = at;
                        reindex(&mut self.expiring, &slot, old, at);
                        Reply::Int(1)
                    }
                }
            }
            WriteOp::FlushDb => {
                self.map.clear();
                self.expiring.clear();
                Reply::Ok
            }
            WriteOp::PurgeExpired { limit } => {
                let due: Vec<Slot> = self.due(now).take(limit).cloned().collect();
                for s in &due {
                    self.take(s);
                }
                Reply::Int(due.len() as i64)
            }
        }
    }

    fn read(&self, q: Query) -> Reply {
        let now = q.now;
        match q.op {
            ReadOp::Get(key) => self
                .live(&key, now)
                .map_or(Reply::Nil, |v| Reply::Bulk(v.data.clone())),
            ReadOp::MGet(keys) => Reply::Array(
                keys.iter()
                    .map(|k| {
                        self.live(k, now)
                            .map_or(Reply::Nil, |v| Reply::Bulk(v.data.clone()))
                    })
                    .collect(),
            ),
            ReadOp::Exists(keys) => {
                Reply::Int(keys.iter().filter(|k| self.live(k, now).is_some()).count() as i64)
            }
            ReadOp::Strlen(key) => {
                Reply::Int(self.live(&key, now).map_or(0, |v| v.data.len() as i64))
            }
            ReadOp::Ttl { key, millis } => match self.live(&key, now) {
                None => Reply::Int(-2),
                Some(Value {
                    expires_at: None, ..
                }) => Reply::Int(-1),
                Some(Value {
                    expires_at: Some(at),
                    ..
                }) => {
                    let left = at - now;
                    Reply::Int(if millis {
                        left as i64
                    } else {
                        left.div_ceil(1000) as i64
                    })
                }
            },
            ReadOp::Keys(pattern) => Reply::Array(
                self.map
                    .iter()
                    .filter(|(s, v)| v.live(now) && glob_match(&pattern, &s.1))
                    .map(|(s, _)| Reply::Bulk(s.1.clone()))
                    .collect(),
            ),
            ReadOp::Scan {
                cursor,
                pattern,
                count,
            } => {
                let mut keys = Vec::new();
                let mut next = 0;
                for (i, (slot, v)) in self.map.starting_at(cursor).enumerate() {
                    if i == count.max(1) {
                        next = slot.0;
                        break;
                    }
                    if v.live(now) && pattern.as_ref().is_none_or(|p| glob_match(p, &slot.1)) {
                        keys.push(Reply::Bulk(slot.1.clone()));
                    }
                }
                Reply::Array(vec![
                    Reply::Bulk(Bytes::from(next.to_string())),
                    Reply::Array(keys),
                ])
            }
            // As in Redis, keys that expired but were not yet swept still count: the answer takes
            // O(shards), whatever the store's size.
            ReadOp::DbSize => Reply::Int(self.map.len() as i64),
        }
    }
}

/// Redis glob patterns: `*`, `?`, `[abc]`, `[^a-z]`, `\x`.
pub fn glob_match(pattern: &[u8], s: &[u8]) -> bool {
    fn class(p: &[u8], c: u8) -> Option<(bool, usize)> {
        // p starts after '['; returns (matched, bytes consumed including ']').
        let mut i = 0;
        let negate = p.first() == Some(&b'^');
        if negate {
            i += 1;
        }
        let mut matched = false;
        while i < p.len() && p[i] != b']' {
            if p[i] == b'\\' && i + 1 < p.len() {
                matched |= p[i + 1] == c;
                i += 2;
            } else if i + 2 < p.len() && p[i + 1] == b'-' && p[i + 2] != b']' {
                let (lo, hi) = (p[i].min(p[i + 2]), p[i].max(p[i + 2]));
                matched |= (lo..=hi).contains(&c);
                i += 3;
            } else {
                matched |= p[i] == c;
                i += 1;
            }
        }
        (i < p.len()).then_some((matched != negate, i + 1))
    }
    let (mut p, mut t) = (0, 0);
    let (mut star_p, mut star_t) = (None::<usize>, 0);
    while t < s.len() {
        let advanced = match pattern.get(p) {
            Some(b'*') => {
                star_p = Some(p);
                star_t = t;
                p += 1;
                continue;
            }
            Some(b'?') => {
                p += 1;
                true
            }
            Some(b'[') => match class(&pattern[p + 1..], s[t]) {
                Some((true, used)) => {
                    p += 1 + used;
                    true
                }
                Some((false, _)) => false,
                None => {
                    // An unterminated class matches a literal '['.
                    let ok = s[t] == b'[';
                    p += 1;
                    ok
                }
            },
            Some(b'\\') if p + 1 < pattern.len() => {
                let ok = pattern[p + 1] == s[t];
                p += 2;
                ok
            }
            Some(c) => {
                let ok = *c == s[t];
                p += 1;
                ok
            }
            None => false,
        };
        if advanced {
            t += 1;
        } else if let Some(sp) = star_p {
            p = sp + 1;
            star_t += 1;
            t = star_t;
        } else {
            return false;
        }
    }
    pattern[p.min(pattern.len())..].iter().all(|c| *c == b'*')
}

/// A point-in-time view of the store's values, taken on the apply path for a snapshot; it
/// shares storage with the live store (see [`SlotMap`]): taking it copies 1024 shard pointers,
/// and serialising it walks the shards without any lock, so neither the apply path nor readers
/// wait for a snapshot, and no second copy of the values is made.
///
/// The snapshot's bytes are a sequence of `(key, value)` pairs, which [`Store::restore`] reads
/// back one at a time.
pub struct StoreSnapshot(SlotMap<Value>);

/// Serialises as a sequence of `(key, value)` pairs without collecting them first.
impl Serialize for StoreSnapshot {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        // The length up front: compact formats write it before the elements.
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for (slot, value) in self.0.iter() {
            seq.serialize_element(&(&slot.1, value))?;
        }
        seq.end()
    }
}

impl StateMachine for Store {
    type Command = Command;
    type Output = Reply;
    type Snapshot = StoreSnapshot;

    fn apply(&mut self, cmd: Command) -> Reply {
        self.write(cmd)
    }

    fn snapshot(&self) -> StoreSnapshot {
        StoreSnapshot(self.map.clone())
    }

    fn write_snapshot(snapshot: StoreSnapshot, out: &mut dyn Write) -> io::Result<()> {
        raft_core::write_serde(&snapshot, out)
    }

    /// Drops the current state, then decodes the snapshot one key at a time: the peak memory of
    /// a restore is about the size of the restored store, not twice that. (On an error the node
    /// stops, so the store being left part-filled is never served.)
    fn restore(&mut self, input: &mut dyn Read) -> io::Result<()> {
        *self = Store::default();
        raft_core::read_serde_each(input, |(key, value): (Bytes, Value)| {
            self.put(Slot::new(key), value);
            Ok(())
        })?;
        Ok(())
    }

    /// Under the NOSPACE alarm, what frees space still runs: `DEL`, `FLUSHDB` and the expiry
    /// sweep.
    fn allowed_in_space_alarm(cmd: &Command) -> bool {
        matches!(
            cmd.op,
            WriteOp::Del(_) | WriteOp::FlushDb | WriteOp::PurgeExpired { .. }
        )
    }
}

impl Queryable for Store {
    type Query = Query;
    type Reply = Reply;

    fn query(&self, q: Query) -> Reply {
        self.read(q)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn set(key: &str, value: &str, expiry: Expiry) -> WriteOp {
        WriteOp::Set {
            key: b(key),
            value: b(value),
            expiry,
            condition: Condition::Always,
            get: false,
        }
    }

    fn at(now: u64, op: WriteOp) -> Command {
        Command { now, op }
    }

    fn get(s: &Store, now: u64, key: &str) -> Reply {
        s.read(Query {
            now,
            op: ReadOp::Get(b(key)),
        })
    }

    #[test]
    fn expiry_follows_the_stamped_time() {
        let mut s = Store::default();
        s.write(at(1000, set("a", "1", Expiry::At(1500))));
        assert_eq!(get(&s, 1499, "a"), Reply::Bulk(b("1")));
        assert_eq!(get(&s, 1500, "a"), Reply::Nil);
        // A write at t=1600 sees it as gone.
        assert_eq!(s.write(at(1600, WriteOp::IncrBy(b("a"), 1))), Reply::Int(1));
        let ttl = s.read(Query {
            now: 1600,
            op: ReadOp::Ttl {
                key: b("a"),
                millis: false,
            },
        });
        assert_eq!(ttl, Reply::Int(-1));
    }

    #[test]
    fn set_conditions_and_get() {
        let mut s = Store::default();
        let nx = WriteOp::Set {
            key: b("k"),
            value: b("v1"),
            expiry: Expiry::Clear,
            condition: Condition::IfAbsent,
            get: false,
        };
        assert_eq!(s.write(at(0, nx.clone())), Reply::Ok);
        assert_eq!(s.write(at(0, nx)), Reply::Nil);
        let getset = WriteOp::Set {
            key: b("k"),
            value: b("v2"),
            expiry: Expiry::Clear,
            condition: Condition::IfPresent,
            get: true,
        };
        assert_eq!(s.write(at(0, getset)), Reply::Bulk(b("v1")));
        assert_eq!(get(&s, 0, "k"), Reply::Bulk(b("v2")));
    }

    #[test]
    fn set_sees_expired_values_as_absent() {
        let mut s = Store::default();
        let op = |value: &str, expiry, condition| WriteOp::Set {
            key: b("k"),
            value: b(value),
            expiry,
            condition,
            get: true,
        };
        s.write(at(0, op("v1", Expiry::At(100), Condition::Always)));
        // KEEPTTL on a live value keeps its expiry.
        assert_eq!(
            s.write(at(50, op("v2", Expiry::Keep, Condition::IfPresent))),
            Reply::Bulk(b("v1"))
        );
        assert_eq!(get(&s, 99, "k"), Reply::Bulk(b("v2")));
        // Once expired: XX fails and the key is gone, NX succeeds.
        assert_eq!(
            s.write(at(100, op("v3", Expiry::Clear, Condition::IfPresent))),
            Reply::Nil
        );
        assert_eq!(s.expired_count(100, 10), 0);
        assert_eq!(
            s.write(at(100, op("v4", Expiry::Keep, Condition::IfAbsent))),
            Reply::Nil
        );
        assert_eq!(get(&s, 10_000, "k"), Reply::Bulk(b("v4")));
        // An expiry already past deletes.
        assert_eq!(
            s.write(at(200, op("v5", Expiry::At(150), Condition::Always))),
            Reply::Bulk(b("v4"))
        );
        assert_eq!(get(&s, 200, "k"), Reply::Nil);
        assert_eq!(s.expired_count(200, 10), 0);
    }

    #[test]
    fn other_writes_see_expired_values_as_absent_and_keep_live_expiries() {
        let mut s = Store::default();
        let pttl = |s: &Store, now: u64, key: &str| {
            s.read(Query {
                now,
                op: ReadOp::Ttl {
                    key: b(key),
                    millis: true,
                },
            })
        };
        for k in ["n", "a", "d", "e"] {
            s.write(at(0, set(k, "5", Expiry::At(100))));
        }
        // Live: INCR and APPEND change the value and keep the expiry.
        assert_eq!(s.write(at(10, WriteOp::IncrBy(b("n"), 2))), Reply::Int(7));
        assert_eq!(
            s.write(at(10, WriteOp::Append(b("a"), b("x")))),
            Reply::Int(2)
        );
        assert_eq!(pttl(&s, 10, "n"), Reply::Int(90));
        assert_eq!(pttl(&s, 10, "a"), Reply::Int(90));
        assert_eq!(get(&s, 10, "a"), Reply::Bulk(b("5x")));
        // Expired: each write acts as if the key were absent.
        assert_eq!(s.write(at(100, WriteOp::IncrBy(b("n"), 2))), Reply::Int(2));
        assert_eq!(
            s.write(at(100, WriteOp::Append(b("a"), b("y")))),
            Reply::Int(1)
        );
        assert_eq!(s.write(at(100, WriteOp::Del(vec![b("d")]))), Reply::Int(0));
        let expire = WriteOp::Expire {
            key: b("e"),
            at: Some(500),
        };
        assert_eq!(s.write(at(100, expire)), Reply::Int(0));
        assert_eq!(
            pttl(&s, 100, "n"),
            Reply::Int(-1),
            "a fresh key has no expiry"
        );
        assert_eq!(pttl(&s, 100, "e"), Reply::Int(-2));
        assert_eq!(get(&s, 100, "a"), Reply::Bulk(b("y")));
        assert_eq!(s.map.len(), 2, "the expired keys were dropped");
        assert_index_consistent(&s);
    }

    #[test]
    fn a_snapshot_is_a_point_in_time_view() {
        let mut s = Store::default();
        for i in 0..1_000 {
            s.write(at(0, set(&format!("k{i}"), "old", Expiry::Clear)));
        }
        let then = s.clone();
        let snapshot = s.snapshot();
        // Writes after the handle was taken do not show in it.
        for i in 0..1_000 {
            s.write(at(1, set(&format!("k{i}"), "new", Expiry::Clear)));
        }
        s.write(at(1, WriteOp::Del(vec![b("k1")])));
        s.write(at(1, set("added", "v", Expiry::Clear)));
        let mut bytes = Vec::new();
        Store::write_snapshot(snapshot, &mut bytes).unwrap();
        let mut restored = Store::default();
        restored.restore(&mut bytes.as_slice()).unwrap();
        assert_eq!(restored, then);
        assert_eq!(get(&s, 1, "k2"), Reply::Bulk(b("new")));
    }

    #[test]
    fn incr_refuses_non_numbers_and_overflow() {
        let mut s = Store::default();
        s.write(at(0, set("n", "x", Expiry::Clear)));
        assert!(matches!(
            s.write(at(0, WriteOp::IncrBy(b("n"), 1))),
            Reply::Error(_)
        ));
        s.write(at(0, set("m", &i64::MAX.to_string(), Expiry::Clear)));
        assert!(matches!(
            s.write(at(0, WriteOp::IncrBy(b("m"), 1))),
            Reply::Error(_)
        ));
    }

    #[test]
    fn scan_returns_every_stable_key_once() {
        let mut s = Store::default();
        for i in 0..100 {
            s.write(at(0, set(&format!("key:{i}"), "v", Expiry::Clear)));
        }
        let mut seen = std::collections::BTreeSet::new();
        let mut cursor = 0;
        loop {
            let r = s.read(Query {
                now: 0,
                op: ReadOp::Scan {
                    cursor,
                    pattern: None,
                    count: 7,
                },
            });
            let Reply::Array(parts) = r else { panic!() };
            let (Reply::Bulk(c), Reply::Array(keys)) = (&parts[0], &parts[1]) else {
                panic!()
            };
            for k in keys {
                let Reply::Bulk(k) = k else { panic!() };
                seen.insert(k.clone());
            }
            // Keys added during the scan must not break it.
            s.write(at(0, set(&format!("new:{cursor}"), "v", Expiry::Clear)));
            cursor = std::str::from_utf8(c).unwrap().parse().unwrap();
            if cursor == 0 {
                break;
            }
        }
        for i in 0..100 {
            assert!(seen.contains(&b(&format!("key:{i}"))), "key:{i} missing");
        }
    }

    /// The expiry index holds exactly the values that have an expiry time.
    fn assert_index_consistent(s: &Store) {
        let expected: BTreeSet<(u64, Slot)> = s
            .map
            .iter()
            .filter_map(|(slot, v)| Some((v.expires_at?, slot.clone())))
            .collect();
        assert_eq!(s.expiring, expected);
    }

    #[test]
    fn expiry_index_follows_every_write() {
        let mut s = Store::default();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |n: u64| {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (seed >> 33) % n
        };
        let mut now = 1_000;
        for _ in 0..5_000 {
            now += next(5);
            let key = b(&format!("k{}", next(20)));
            let expiry = match next(3) {
                0 => Expiry::Clear,
                1 => Expiry::Keep,
                _ => Expiry::At(now + next(40) - 10),
            };
            let op = match next(9) {
                0..=2 => WriteOp::Set {
                    key,
                    value: b("7"),
                    expiry,
                    condition: [Condition::Always, Condition::IfAbsent, Condition::IfPresent]
                        [next(3) as usize],
                    get: next(2) == 0,
                },
                3 => WriteOp::Del(vec![key]),
                4 => WriteOp::IncrBy(key, 1),
                5 => WriteOp::Append(key, b("1")),
                6 => WriteOp::MSet(vec![(key, b("1"))]),
                7 => WriteOp::Expire {
                    key,
                    at: (next(2) == 0).then(|| now + next(40) - 10),
                },
                _ => WriteOp::PurgeExpired { limit: 3 },
            };
            s.write(at(now, op));
            assert_index_consistent(&s);
            let due = s
                .map
                .iter()
                .map(|(_, v)| v)
                .filter(|v| !v.live(now))
                .count();
            assert_eq!(s.expired_count(now, usize::MAX), due);
            let size = s.read(Query {
                now,
                op: ReadOp::DbSize,
            });
            assert_eq!(
                size,
                Reply::Int(s.map.len() as i64),
                "expired keys count until swept"
            );
        }
        s.write(at(now + 100, WriteOp::PurgeExpired { limit: usize::MAX }));
        assert_eq!(s.expired_count(now + 100, usize::MAX), 0);
        assert!(s.map.iter().map(|(_, v)| v).all(|v| v.live(now + 100)));
        assert_index_consistent(&s);

        // A restored snapshot rebuilds the index.
        s.write(at(now, set("later", "v", Expiry::At(now + 1_000))));
        let mut bytes = Vec::new();
        Store::write_snapshot(s.snapshot(), &mut bytes).unwrap();
        let mut restored = Store::default();
        restored.restore(&mut bytes.as_slice()).unwrap();
        assert_index_consistent(&restored);
        assert_eq!(restored, s);
    }

    #[test]
    fn append_grows_in_place_and_stops_at_the_limit() {
        let mut s = Store::default();
        let mut moves = 0;
        let mut last = std::ptr::null();
        let n = 100_000;
        for i in 0..n {
            let op = WriteOp::AppendAtMost {
                key: b("k"),
                suffix: b("0123456789"),
                max: 10 * n,
            };
            assert_eq!(s.write(at(0, op)), Reply::Int(10 * (i as i64 + 1)));
            let data = &s.map.get(&Slot::of(&b("k"))).unwrap().data;
            if data.as_ptr() != last {
                moves += 1;
                last = data.as_ptr();
            }
        }
        // Copying on every append would move the value 100,000 times (5 × 10^10 bytes copied);
        // doubling moves it about log2(10^6) times.
        assert!(moves <= 40, "the value moved {moves} times");
        // A snapshot sharing the value costs one copy, and the snapshot keeps its contents.
        let snapshot = s.snapshot();
        let op = |suffix: &str, max| WriteOp::AppendAtMost {
            key: b("k"),
            suffix: b(suffix),
            max,
        };
        assert_eq!(
            s.write(at(0, op("x", 10 * n + 1))),
            Reply::Int(10 * n as i64 + 1)
        );
        let mut bytes = Vec::new();
        Store::write_snapshot(snapshot, &mut bytes).unwrap();
        let mut restored = Store::default();
        restored.restore(&mut bytes.as_slice()).unwrap();
        assert_eq!(
            restored.read(Query {
                now: 0,
                op: ReadOp::Strlen(b("k"))
            }),
            Reply::Int(10 * n as i64)
        );
        // Past the limit: refused, unchanged.
        assert_eq!(
            s.write(at(0, op("y", 10 * n + 1))),
            Reply::Error(TOO_LONG.into())
        );
        assert_eq!(
            s.write(at(
                0,
                WriteOp::AppendAtMost {
                    key: b("new"),
                    suffix: b("abc"),
                    max: 2
                }
            )),
            Reply::Error(TOO_LONG.into())
        );
        assert_eq!(get(&s, 0, "new"), Reply::Nil);
        assert_eq!(
            s.read(Query {
                now: 0,
                op: ReadOp::Strlen(b("k"))
            }),
            Reply::Int(10 * n as i64 + 1)
        );
    }

    #[test]
    fn setrange_pads_overwrites_and_stops_at_the_limit() {
        let mut s = Store::default();
        let op = |offset, value: &str, max| WriteOp::SetRange {
            key: b("k"),
            offset,
            value: b(value),
            max,
        };
        assert_eq!(s.write(at(0, op(3, "ab", 100))), Reply::Int(5));
        assert_eq!(
            get(&s, 0, "k"),
            Reply::Bulk(Bytes::from_static(b"\0\0\0ab"))
        );
        assert_eq!(s.write(at(0, op(0, "xyz", 100))), Reply::Int(5));
        assert_eq!(get(&s, 0, "k"), Reply::Bulk(b("xyzab")));
        assert_eq!(
            s.write(at(0, op(99, "12", 100))),
            Reply::Error(TOO_LONG.into())
        );
        assert_eq!(
            s.write(at(0, op(u64::MAX, "1", u64::MAX))),
            Reply::Error(TOO_LONG.into()),
            "no overflow"
        );
        assert_eq!(get(&s, 0, "k"), Reply::Bulk(b("xyzab")), "unchanged");
        let empty = WriteOp::SetRange {
            key: b("none"),
            offset: 5,
            value: Bytes::new(),
            max: 100,
        };
        assert_eq!(s.write(at(0, empty)), Reply::Int(0));
        assert_eq!(get(&s, 0, "none"), Reply::Nil);
    }

    #[test]
    fn globs() {
        assert!(glob_match(b"*", b"anything"));
        assert!(glob_match(b"h?llo", b"hello"));
        assert!(glob_match(b"h*llo", b"heeeello"));
        assert!(glob_match(b"h[ae]llo", b"hallo"));
        assert!(!glob_match(b"h[^e]llo", b"hello"));
        assert!(glob_match(b"h[a-b]llo", b"hbllo"));
        assert!(glob_match(b"a\\*b", b"a*b"));
        assert!(!glob_match(b"a\\*b", b"axb"));
        assert!(!glob_match(b"abc", b"abcd"));
        assert!(glob_match(b"user:*:name", b"user:42:name"));
    }
}
