//! The replicated state: keys holding strings or hashes, with optional expiry times.
//!
//! Every write applies at one time (`now`, milliseconds since the Unix epoch): the time the
//! leader stamped on its log entry, or for entries of earlier versions the time the accepting
//! node stamped on the command. Relative expiries (`EX`, `PX`, `EXPIRE`) count from it. Applying
//! a write only ever consults that time — never the replica's clock — so every replica makes the
//! same decisions about expiry. Expired keys are invisible to reads, removed when a write touches them, and
//! swept by a periodic `PurgeExpired` write from the leader. An index of keys by expiry time
//! keeps the sweep and the leader's check for due keys proportional to the keys they find, not
//! to the size of the store.
//!
//! Keys are ordered by a stable 64-bit hash (then by the key), which gives `SCAN` a numeric
//! cursor with Redis' guarantee: a key present for the whole iteration is returned. A hash's
//! fields are ordered the same way, for `HSCAN`.
//!
//! Each write is numbered as it is applied, and each key remembers the number of the write that
//! last changed it (its *version*): `WATCH` reads versions and `EXEC` compares them when it is
//! applied, so a watched key changed by any client through any node aborts the transaction.
//!
//! The operations of each data type live in their own module: [`strings`], [`hash`] and
//! [`keys`] (commands that work on whole keys, whatever they hold).

mod glob;
mod hash;
mod keys;
mod list;
mod nesting;
mod reply;
mod set;
mod snapshot;
mod strings;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;
pub use glob::Glob;
pub(crate) use hash::HashMap;
use raft_core::ApplyContext;
use raft_core::Queryable;
use raft_core::ReadContext;
use raft_core::StateMachine;
pub use reply::Error;
pub use reply::Reply;
use serde::Deserialize;
use serde::Serialize;
pub use snapshot::StoreSnapshot;
pub use strings::parse_float;
pub use strings::parse_int;

use crate::slots::Slot;
use crate::slots::SlotMap;

/// What happens to a key's expiry when `SET` overwrites it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Expiry {
    /// Drop any expiry (plain `SET`).
    Clear,
    /// Keep the current expiry (`KEEPTTL`).
    Keep,
    /// Expire at this time, in ms since the epoch (`EXAT`, `PXAT`; `EX` and `PX` in entries of
    /// earlier versions, which resolved them with the accepting node's clock).
    At(u64),
    /// Expire this many ms after the time the write applies at (`EX`, `PX`, `SETEX`): the
    /// leader's stamped time, so every replica and every later read agree on the deadline.
    In(u64),
}

/// Most keys a `KEYS` queued in a transaction may examine (what one SCAN step examines): it
/// runs as one read under the state machine's lock, on every replica, and a store with more
/// keys answers it with an error (SCAN steps through any store).
pub const MAX_KEYS_IN_TRANSACTION: usize = 10_000;

/// A relative expiry (`EXPIRE`, `PEXPIRE`; may be negative) made absolute at `now`.
fn deadline_after(now: u64, ms: i64) -> u64 {
    (now as i64).saturating_add(ms).max(0) as u64
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

/// When `EXPIRE` may change a key's expiry (Redis 7's `NX`, `XX`, `GT`, `LT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExpireIf {
    /// Always.
    Always,
    /// Only if the key has no expiry.
    NoExpiry,
    /// Only if the key has an expiry.
    HasExpiry,
    /// Only if the new expiry is later than the current one (no expiry counts as infinite).
    Later,
    /// Only if the new expiry is sooner than the current one (no expiry counts as infinite).
    Sooner,
}

/// What `LCS` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LcsMode {
    /// The common subsequence itself.
    String,
    /// Its length.
    Len,
    /// The matching ranges, each at least `min_len` long, with their lengths if `with_len`.
    Idx { min_len: u64, with_len: bool },
}

/// A change to the store. (Variants are only ever appended: entries already in a log keep
/// their meaning.)
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
    /// `INCRBY` as earlier versions logged it: like [`WriteOp::IncrByStrict`], but a stored
    /// value with a `+`, leading zeros or "-0" counts as an integer, so entries already in a log
    /// apply as they did.
    IncrBy(Bytes, i64),
    /// `APPEND`: replies with the new length.
    Append(Bytes, Bytes),
    /// `MSET`.
    MSet(Vec<(Bytes, Bytes)>),
    /// `EXPIRE`/`PEXPIRE` (`Some(at)`) or `PERSIST` (`None`): replies 1 if the key exists (and,
    /// for `PERSIST`, had an expiry), else 0. An expiry in the past deletes the key.
    Expire { key: Bytes, at: Option<u64> },
    /// `FLUSHDB` and `FLUSHALL`.
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
    /// `EXPIRE`, `PEXPIRE`, `EXPIREAT`, `PEXPIREAT` with a condition: replies 1 if the expiry
    /// was set (or the key deleted by a time in the past), else 0.
    ExpireAt { key: Bytes, at: u64, when: ExpireIf },
    /// `GETEX`: the value, and its expiry changed (`Keep` leaves it, `Clear` is `PERSIST`).
    GetEx { key: Bytes, expiry: Expiry },
    /// `GETDEL`: the value, and the key removed.
    GetDel(Bytes),
    /// `MSETNX`: sets every pair only if no key exists; replies 1 or 0.
    MSetNx(Vec<(Bytes, Bytes)>),
    /// `INCRBYFLOAT` (the increment as `f64::to_bits`): replies with the new value.
    IncrByFloat { key: Bytes, by: u64 },
    /// `SETBIT`: replies with the bit's old value; refuses to grow the value past `max` bytes.
    SetBit {
        key: Bytes,
        offset: u64,
        bit: bool,
        max: u64,
    },
    /// `RENAME` (`nx: false`) and `RENAMENX`.
    Rename { from: Bytes, to: Bytes, nx: bool },
    /// `COPY`: replies 1 if copied, 0 if the destination exists and `replace` is off.
    Copy {
        from: Bytes,
        to: Bytes,
        replace: bool,
    },
    /// `HSET`/`HMSET` (`nx: false`; replies with the number of new fields) and `HSETNX`
    /// (`nx: true`; replies 1 if the field was added, else 0).
    HSet {
        key: Bytes,
        pairs: Vec<(Bytes, Bytes)>,
        nx: bool,
    },
    /// `HDEL`: replies with the number of fields removed; an emptied hash is removed.
    HDel { key: Bytes, fields: Vec<Bytes> },
    /// `HINCRBY` as earlier versions logged it: like [`WriteOp::HIncrByStrict`], but a field
    /// with a `+`, leading zeros or "-0" counts as an integer.
    HIncrBy { key: Bytes, field: Bytes, by: i64 },
    /// `HINCRBYFLOAT` (the increment as `f64::to_bits`): replies with the new value.
    HIncrByFloat { key: Bytes, field: Bytes, by: u64 },
    /// `EXEC`: the queued commands, applied together if no watched key changed; replies with
    /// each command's reply, or [`Reply::NilArray`] if a watched key changed.
    Exec {
        watched: Vec<Watched>,
        ops: Vec<Queued>,
    },
    /// `LPUSH`/`RPUSH` (`left` or not), `LPUSHX`/`RPUSHX` (`existing`): the new length.
    Push {
        key: Bytes,
        values: Vec<Bytes>,
        left: bool,
        existing: bool,
    },
    /// `LPOP`/`RPOP`, with an optional count.
    Pop {
        key: Bytes,
        left: bool,
        count: Option<u64>,
    },
    /// `SADD`: the number of members added.
    SAdd { key: Bytes, members: Vec<Bytes> },
    /// `SREM`: the number of members removed.
    SRem { key: Bytes, members: Vec<Bytes> },
    /// `EXPIRE … LT XX`: only if the key has an expiry and the new one is sooner.
    ExpireSoonerIfSet { key: Bytes, at: u64 },
    /// `SPOP key [count]`: members chosen from the write's number, the same on every replica.
    SPop { key: Bytes, count: Option<u64> },
    /// `EXPIRE`/`PEXPIRE`: `ms` after the write's applied time (which may already be past).
    ExpireIn { key: Bytes, ms: i64, when: ExpireIf },
    /// `EXPIRE … LT XX` with a relative time.
    ExpireSoonerIfSetIn { key: Bytes, ms: i64 },
    /// `INCRBY` (and `INCR`, `DECR`, `DECRBY`): replies with the new value; a stored value
    /// that is not an integer as Redis reads one (see [`parse_int`]) is refused.
    IncrByStrict { key: Bytes, by: i64 },
    /// `HINCRBY`: replies with the new value; a field that is not an integer as Redis reads one
    /// is refused.
    HIncrByStrict { key: Bytes, field: Bytes, by: i64 },
    /// `EXEC` as [`WriteOp::Exec`], with its reply bounded as it is built: once the replies so
    /// far hold more than [`MAX_EXEC_REPLY`] bytes, the rest of the commands still apply, and
    /// the transaction answers an error instead of its replies (see [`Store::exec`]).
    ExecBounded {
        watched: Vec<Watched>,
        ops: Vec<Queued>,
    },
    /// `EXEC` as [`WriteOp::ExecBounded`], under two more rules: a key watched while absent
    /// that was written since and has expired (not swept yet) also counts as changed, as in
    /// Redis; and the reads do at most [`MAX_EXEC_READ_WORK`] work. Entries of the older forms
    /// keep the rules they were written under (their replies are remembered by the session
    /// table, which is replicated state too).
    ExecStrict {
        watched: Vec<Watched>,
        ops: Vec<Queued>,
    },
}

/// The most bytes the replies of one transaction hold while they are built ([`Reply::footprint`]):
/// every replica builds them as it applies the transaction, so this bounds what one `EXEC` can
/// make each of them hold, however many large reads it queues.
pub const MAX_EXEC_REPLY: usize = 64 << 20;

/// The most work the reads of one transaction do, in keys or elements examined (a read that
/// walks a hash, list or set counts its elements; a string's bytes count one per 64, a
/// bit-range's bits one per 32, an `LCS` table's cells one per 16): about 50 ms of one core.
/// A `MATCH` pattern's steps count one per [`MATCH_STEPS_PER_UNIT`], once the read that took
/// them is answered: a pattern built to backtrack ends the transaction's reads after the one
/// that found it out. Each replica applies the transaction under the state machine's lock, so
/// this bounds how long one `EXEC` holds up every write, however many scans it queues. Once the
/// reads so far reach it, the rest of the commands still apply and the transaction answers an
/// error instead of its replies, as past [`MAX_EXEC_REPLY`].
pub const MAX_EXEC_READ_WORK: u64 = 1_000_000;

/// Steps of a `MATCH` pattern that cost about as much as examining one key.
const MATCH_STEPS_PER_UNIT: u64 = 16;

/// A key `WATCH`ed by a connection, as it was when watched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watched {
    /// The key.
    pub key: Bytes,
    /// Its version then (0 if it did not exist).
    pub version: u64,
    /// The number of the last write applied then.
    pub seen: u64,
}

/// One command of a transaction. Decoding refuses more than
/// [`MAX_NESTING`](nesting::MAX_NESTING) levels of transactions and replies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub enum Queued {
    /// A write.
    Write(WriteOp),
    /// A read, answered in its place in the transaction.
    Read(ReadOp),
    /// A command whose reply does not depend on the store (`PING`, `ECHO`).
    Reply(Reply),
}

nesting::bounded_nesting!(Queued);

/// A write as it travels through the log: the operation and when it was accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// Milliseconds since the Unix epoch, stamped by the node that accepted the command. Entries
    /// that carry the leader's time (all but those of earlier versions) apply at that instead.
    pub now: u64,
    /// The operation.
    pub op: WriteOp,
}

/// The type of value a key holds, as `TYPE` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// A byte string.
    String,
    /// A hash of fields to byte strings.
    Hash,
    /// A list of byte strings.
    List,
    /// A set of byte strings.
    Set,
}

impl Kind {
    /// The name `TYPE` and `SCAN … TYPE` use.
    pub fn name(self) -> &'static str {
        match self {
            Kind::String => "string",
            Kind::Hash => "hash",
            Kind::List => "list",
            Kind::Set => "set",
        }
    }
}

/// A question about the store. (Variants are only ever appended.)
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
    /// `GETRANGE`/`SUBSTR`, Redis' inclusive, negative-from-the-end offsets.
    GetRange {
        key: Bytes,
        start: i64,
        end: i64,
    },
    /// `GETBIT`.
    GetBit {
        key: Bytes,
        offset: u64,
    },
    /// `BITCOUNT [start end [BYTE|BIT]]`: `bits` counts the range in bits.
    BitCount {
        key: Bytes,
        range: Option<(i64, i64)>,
        bits: bool,
    },
    /// `LCS`.
    Lcs {
        a: Bytes,
        b: Bytes,
        mode: LcsMode,
    },
    /// `EXPIRETIME` (seconds) or `PEXPIRETIME` (milliseconds).
    ExpireTime {
        key: Bytes,
        millis: bool,
    },
    /// `TYPE`.
    Type(Bytes),
    /// `RANDOMKEY`.
    RandomKey,
    /// `SCAN … TYPE`.
    ScanKind {
        cursor: u64,
        pattern: Option<Bytes>,
        count: usize,
        kind: Kind,
    },
    HGet {
        key: Bytes,
        field: Bytes,
    },
    HMGet {
        key: Bytes,
        fields: Vec<Bytes>,
    },
    HGetAll(Bytes),
    HLen(Bytes),
    HStrlen {
        key: Bytes,
        field: Bytes,
    },
    HExists {
        key: Bytes,
        field: Bytes,
    },
    HKeys(Bytes),
    HVals(Bytes),
    /// `HRANDFIELD key [count [WITHVALUES]]`.
    HRandField {
        key: Bytes,
        count: Option<i64>,
        with_values: bool,
    },
    /// `HSCAN`: the cursor is the stable hash of the next field to return (0 to start), as
    /// `SCAN`'s is of the next key.
    HScan {
        key: Bytes,
        cursor: u64,
        pattern: Option<Bytes>,
        count: usize,
        novalues: bool,
    },
    /// For `WATCH`: the number of the last write applied, then each key's version (0 if absent).
    Versions(Vec<Bytes>),
    LLen(Bytes),
    LRange {
        key: Bytes,
        start: i64,
        end: i64,
    },
    LIndex {
        key: Bytes,
        index: i64,
    },
    SMembers(Bytes),
    SCard(Bytes),
    SIsMember {
        key: Bytes,
        member: Bytes,
    },
    /// `MEMORY USAGE`: about how many bytes the key takes, or nil.
    MemoryUsage(Bytes),
    /// A command whose arguments Redis checks only after looking up its key, and that has an
    /// argument wrong: a missing key answers `missing`, a key of another type than `kind`
    /// `WRONGTYPE`, and only a key of that type the argument's `error`.
    ArgumentError {
        key: Bytes,
        kind: Kind,
        missing: Reply,
        error: Reply,
    },
    /// `EXEC` of a transaction that queued no write: its reads in order, under the state's lock
    /// as one read, so nothing runs between them and no log entry is written. The watched keys
    /// and the bounds are those of [`WriteOp::ExecStrict`]. A queued write answers an error.
    Transaction {
        watched: Vec<Watched>,
        ops: Vec<Queued>,
    },
}

/// A read as it is sent: the question and the reader's time (for expiry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Query {
    /// Milliseconds since the Unix epoch on the node that sends the query; the read is answered
    /// at the time the leader ordered it instead.
    pub now: u64,
    /// The question.
    pub op: ReadOp,
}

/// What a key holds. A hash sits behind an `Arc`, so a snapshot sharing a shard shares the
/// hash too, and a write copies it only while a snapshot still holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Data {
    Str(Bytes),
    Hash(Arc<HashMap>),
    List(Arc<std::collections::VecDeque<Bytes>>),
    Set(Arc<BTreeSet<Bytes>>),
}

impl Data {
    fn kind(&self) -> Kind {
        match self {
            Data::Str(_) => Kind::String,
            Data::Hash(_) => Kind::Hash,
            Data::List(_) => Kind::List,
            Data::Set(_) => Kind::Set,
        }
    }

    /// About how many bytes the value takes (`MEMORY USAGE`).
    fn size(&self) -> usize {
        let each = |b: &Bytes| b.len() + 32;
        match self {
            Data::Str(s) => s.len(),
            Data::Hash(h) => h.iter().map(|(f, v)| each(f) + each(v)).sum(),
            Data::List(l) => l.iter().map(each).sum(),
            Data::Set(s) => s.iter().map(each).sum(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Value {
    data: Data,
    expires_at: Option<u64>,
    /// The number of the write that last changed this key.
    version: u64,
}

impl Value {
    fn live(&self, now: u64) -> bool {
        self.expires_at.is_none_or(|at| at > now)
    }

    fn string(data: Bytes) -> Value {
        Value {
            data: Data::Str(data),
            expires_at: None,
            version: 0,
        }
    }
}

/// A collection value: a hash, list or set.
trait Collection {
    fn is_empty(&self) -> bool;
}

impl Collection for HashMap {
    fn is_empty(&self) -> bool {
        HashMap::is_empty(self)
    }
}

impl Collection for std::collections::VecDeque<Bytes> {
    fn is_empty(&self) -> bool {
        std::collections::VecDeque::is_empty(self)
    }
}

impl Collection for BTreeSet<Bytes> {
    fn is_empty(&self) -> bool {
        BTreeSet::is_empty(self)
    }
}

/// The key-value store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Store {
    /// Copy-on-write shards: a snapshot handle costs O(shards), not O(keys).
    map: SlotMap<Value>,
    /// `(expires_at, slot)` for every value in `map` that has an expiry time.
    expiring: BTreeSet<(u64, Slot)>,
    /// How many writes have been applied: the version the current write gives what it changes.
    writes: u64,
    /// The highest version of any key removed so far: a key `WATCH`ed while absent may have
    /// been created and removed again since, if this passed the watch.
    removed: u64,
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

    /// Inserts or replaces a value as changed by the current write, keeping the expiry index
    /// in step.
    fn put(&mut self, slot: Slot, mut value: Value) {
        value.version = self.writes;
        let new = value.expires_at;
        match self.map.entry(slot) {
            std::collections::btree_map::Entry::Occupied(mut e) => {
                reindex(&mut self.expiring, e.key(), e.get().expires_at, new);
                e.insert(value);
            }
            std::collections::btree_map::Entry::Vacant(e) => {
                reindex(&mut self.expiring, e.key(), None, new);
                e.insert(value);
            }
        }
    }

    /// Removes a value, keeping the expiry index in step.
    fn take(&mut self, slot: &Slot) -> Option<Value> {
        let old = self.map.remove(slot)?;
        reindex(&mut self.expiring, slot, old.expires_at, None);
        self.removed = self.removed.max(old.version);
        Some(old)
    }

    fn live(&self, key: &Bytes, now: u64) -> Option<&Value> {
        self.map.get(&Slot::of(key)).filter(|v| v.live(now))
    }

    /// The string at `key`: `Ok(None)` if there is none, an error if the key holds another type.
    fn string(&self, key: &Bytes, now: u64) -> Result<Option<&Bytes>, Error> {
        match self.live(key, now).map(|v| &v.data) {
            None => Ok(None),
            Some(Data::Str(s)) => Ok(Some(s)),
            Some(_) => Err(Error::WrongType),
        }
    }

    /// The value at `slot` if it is live at `now`, to change: an expired one is dropped first,
    /// so a write sees it as absent. The value counts as changed by the current write.
    fn live_for_write(&mut self, slot: &Slot, now: u64) -> Option<&mut Value> {
        if self.map.get(slot).is_some_and(|v| !v.live(now)) {
            self.take(slot);
            return None;
        }
        let version = self.writes;
        let v = self.map.get_mut(slot)?;
        v.version = version;
        Some(v)
    }

    /// Changes the collection at `key` (created empty if absent) through `edit`; an emptied
    /// collection is removed. `open` finds the collection in a value of its type; the key must
    /// already be known to hold that type or nothing. A collection a snapshot still shares is
    /// copied first.
    fn edit<C: Clone + Default + Collection, T>(
        &mut self,
        key: Bytes,
        now: u64,
        open: fn(&mut Data) -> Option<&mut Arc<C>>,
        wrap: fn(Arc<C>) -> Data,
        edit: impl FnOnce(&mut C) -> T,
    ) -> T {
        let slot = Slot::new(key);
        let (out, empty) = match self
            .live_for_write(&slot, now)
            .and_then(|v| open(&mut v.data))
        {
            Some(c) => {
                let c = Arc::make_mut(c);
                let out = edit(c);
                (out, c.is_empty())
            }
            None => {
                let mut c = C::default();
                let out = edit(&mut c);
                if !c.is_empty() {
                    self.put(
                        slot.clone(),
                        Value {
                            data: wrap(Arc::new(c)),
                            expires_at: None,
                            version: 0,
                        },
                    );
                }
                (out, false)
            }
        };
        if empty {
            self.take(&slot);
        }
        out
    }

    /// The live value at `key` if it is of the type `open` accepts: `Ok(None)` if there is no
    /// key, an error if it holds another type.
    fn open<'a, C>(
        &'a self,
        key: &Bytes,
        now: u64,
        open: fn(&'a Data) -> Option<&'a C>,
    ) -> Result<Option<&'a C>, Error> {
        match self.live(key, now) {
            None => Ok(None),
            Some(v) => open(&v.data).map(Some).ok_or(Error::WrongType),
        }
    }

    fn write(&mut self, cmd: Command) -> Reply {
        self.writes += 1;
        self.apply_op(cmd.op, cmd.now)
    }

    fn apply_op(&mut self, op: WriteOp, now: u64) -> Reply {
        use strings::Integers::Lenient;
        use strings::Integers::Strict;
        match op {
            WriteOp::Set {
                key,
                value,
                expiry,
                condition,
                get,
            } => self.set(key, value, expiry, condition, get, now),
            WriteOp::Del(keys) => self.del(keys, now),
            WriteOp::IncrBy(key, by) => self.incr_by(key, by, Lenient, now),
            WriteOp::IncrByStrict { key, by } => self.incr_by(key, by, Strict, now),
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
                    self.put(Slot::new(k), Value::string(v));
                }
                Reply::Ok
            }
            WriteOp::Expire { key, at } => self.expire(key, at, now),
            WriteOp::ExpireAt { key, at, when } => self.expire_at(key, at, when, now),
            WriteOp::FlushDb => self.flush(),
            WriteOp::PurgeExpired { limit } => {
                let due: Vec<Slot> = self.due(now).take(limit).cloned().collect();
                for s in &due {
                    self.take(s);
                }
                Reply::Int(due.len() as i64)
            }
            WriteOp::GetEx { key, expiry } => self.get_ex(key, expiry, now),
            WriteOp::GetDel(key) => self.get_del(key, now),
            WriteOp::MSetNx(pairs) => self.mset_nx(pairs, now),
            WriteOp::IncrByFloat { key, by } => self.incr_by_float(key, f64::from_bits(by), now),
            WriteOp::SetBit {
                key,
                offset,
                bit,
                max,
            } => self.set_bit(key, offset, bit, max, now),
            WriteOp::Rename { from, to, nx } => self.rename(from, to, nx, now),
            WriteOp::Copy { from, to, replace } => self.copy(from, to, replace, now),
            WriteOp::HSet { key, pairs, nx } => self.hset(key, pairs, nx, now),
            WriteOp::HDel { key, fields } => self.hdel(key, fields, now),
            WriteOp::HIncrBy { key, field, by } => self.hincr_by(key, field, by, Lenient, now),
            WriteOp::HIncrByStrict { key, field, by } => self.hincr_by(key, field, by, Strict, now),
            WriteOp::HIncrByFloat { key, field, by } => {
                self.hincr_by_float(key, field, f64::from_bits(by), now)
            }
            WriteOp::Exec { watched, ops } => self.exec(watched, ops, now, None, false),
            WriteOp::ExecBounded { watched, ops } => {
                self.exec(watched, ops, now, Some(MAX_EXEC_REPLY), false)
            }
            WriteOp::ExecStrict { watched, ops } => {
                self.exec(watched, ops, now, Some(MAX_EXEC_REPLY), true)
            }
            WriteOp::Push {
                key,
                values,
                left,
                existing,
            } => self.push(key, values, left, existing, now),
            WriteOp::Pop { key, left, count } => self.pop(key, left, count, now),
            WriteOp::SAdd { key, members } => self.sadd(key, members, now),
            WriteOp::SRem { key, members } => self.srem(key, members, now),
            WriteOp::SPop { key, count } => self.spop(key, count, now),
            WriteOp::ExpireIn { key, ms, when } => {
                self.expire_at(key, deadline_after(now, ms), when, now)
            }
            WriteOp::ExpireSoonerIfSetIn { key, ms } => {
                self.expire_sooner_if_set(key, deadline_after(now, ms), now)
            }
            WriteOp::ExpireSoonerIfSet { key, at } => self.expire_sooner_if_set(key, at, now),
        }
    }

    /// `EXPIRE … LT XX`: moves a live key's expiry to `at` if it has one and `at` is sooner.
    fn expire_sooner_if_set(&mut self, key: Bytes, at: u64, now: u64) -> Reply {
        if self.live(&key, now).is_some_and(|v| v.expires_at.is_some()) {
            self.expire_at(key, at, ExpireIf::Sooner, now)
        } else {
            Reply::Int(0)
        }
    }

    /// `EXEC`: nothing if a watched key changed since it was watched, else every command in
    /// order, each with its own reply (an error in one does not stop the others, as in Redis).
    ///
    /// The reply is the entry's output, built on every replica. Once the replies built so far
    /// hold more than `max_reply` bytes (if it is bounded), the remaining commands still apply (the transaction is
    /// atomic) but no more replies are built, reads are skipped, and the transaction answers an
    /// error saying so: a transaction that queues many large reads cannot make every replica
    /// hold gigabytes. (raft-core bounds the encoded output as well.) With `strict`
    /// ([`WriteOp::ExecStrict`]), a watched absent key written and expired since counts as
    /// changed, and once the reads so far have done [`MAX_EXEC_READ_WORK`] work the rest are
    /// skipped the same way.
    fn exec(
        &mut self,
        watched: Vec<Watched>,
        ops: Vec<Queued>,
        now: u64,
        max_reply: Option<usize>,
        strict: bool,
    ) -> Reply {
        if self.watched_changed(&watched, now, strict) {
            return Reply::NilArray;
        }
        let mut run = ExecRun::new(ops.len(), max_reply, strict);
        for (i, op) in ops.into_iter().enumerate() {
            let full = run.full();
            let reply = match op {
                Queued::Write(op) => Some(self.apply_op(op, now)),
                Queued::Read(_) | Queued::Reply(_) if full => None,
                other => self.answer_queued(other, i, now, &mut run),
            };
            run.push(full, reply);
        }
        run.finish()
    }

    /// [`ReadOp::Transaction`]: a transaction without writes, answered as
    /// [`WriteOp::ExecStrict`] would answer it.
    fn exec_reads(&self, watched: &[Watched], ops: Vec<Queued>, now: u64) -> Reply {
        if self.watched_changed(watched, now, true) {
            return Reply::NilArray;
        }
        let mut run = ExecRun::new(ops.len(), Some(MAX_EXEC_REPLY), true);
        for (i, op) in ops.into_iter().enumerate() {
            let full = run.full();
            let reply = match op {
                Queued::Write(_) => Some(Reply::Error(
                    "ERR internal error: a write in a transaction sent as a read".into(),
                )),
                _ if full => None,
                other => self.answer_queued(other, i, now, &mut run),
            };
            run.push(full, reply);
        }
        run.finish()
    }

    /// Whether a watched key changed since it was watched. Under the `strict` rule
    /// ([`WriteOp::ExecStrict`]), a key written since the WATCH that has expired, and is not
    /// swept yet, changed too (swept or deleted, `removed` says so).
    fn watched_changed(&self, watched: &[Watched], now: u64, strict: bool) -> bool {
        watched.iter().any(|w| {
            let version = self.live(&w.key, now).map_or(0, |v| v.version);
            let written_since = || {
                strict
                    && self
                        .map
                        .get(&Slot::of(&w.key))
                        .is_some_and(|v| v.version > w.seen)
            };
            version != w.version || (version == 0 && (self.removed > w.seen || written_since()))
        })
    }

    /// The reply of the `i`th command of a transaction, a read or a fixed reply, counting its
    /// work in `run`; `None` if the reads' work bound is passed and it is skipped.
    fn answer_queued(&self, op: Queued, i: usize, now: u64, run: &mut ExecRun) -> Option<Reply> {
        let op = match op {
            Queued::Read(op) => op,
            Queued::Reply(r) => return Some(r),
            Queued::Write(_) => return None,
        };
        if run.strict {
            run.work = run.work.saturating_add(self.read_work(&op, now));
            if run.work > MAX_EXEC_READ_WORK {
                return None;
            }
        }
        // Random reads draw from the entry and their place in it, so every replica answers
        // alike.
        let seed = self.writes.wrapping_mul(0x9e37_79b9_7f4a_7c15)
            ^ now
            ^ (i as u64).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        let matched_before = glob::match_steps();
        let reply = self.answer(op, now, seed);
        // What its MATCH pattern cost, known only now: it counts against the reads after it.
        if run.strict {
            let steps = glob::match_steps().saturating_sub(matched_before);
            run.work = run.work.saturating_add(steps / MATCH_STEPS_PER_UNIT);
        }
        Some(reply)
    }

    /// At most how much work answering `op` takes (see [`MAX_EXEC_READ_WORK`]), found without
    /// doing it. Reads not counted here are bounded by their replies ([`MAX_EXEC_REPLY`]).
    fn read_work(&self, op: &ReadOp, now: u64) -> u64 {
        let bytes = |key: &Bytes| {
            self.string(key, now)
                .ok()
                .flatten()
                .map_or(0, |v| v.len() as u64)
        };
        // Elements of the collection at `key` (1 for a string): what reads that walk it visit.
        let elements = |key: &Bytes| {
            self.live(key, now).map_or(0, |v| match &v.data {
                Data::Str(_) => 1,
                Data::Hash(h) => h.len() as u64,
                Data::List(l) => l.len() as u64,
                Data::Set(s) => s.len() as u64,
            })
        };
        let one = 1;
        match op {
            // Past its own bound KEYS answers an error at once.
            ReadOp::Keys(_) if self.map.len() > MAX_KEYS_IN_TRANSACTION => one,
            ReadOp::Keys(_) => self.map.len() as u64,
            ReadOp::Scan { count, .. }
            | ReadOp::ScanKind { count, .. }
            | ReadOp::HScan { count, .. } => *count as u64,
            // It may step over keys that expired and are not swept yet.
            ReadOp::RandomKey => (self.expiring.len() as u64).saturating_add(one),
            ReadOp::HGetAll(key)
            | ReadOp::HKeys(key)
            | ReadOp::HVals(key)
            | ReadOp::SMembers(key)
            | ReadOp::MemoryUsage(key)
            | ReadOp::HRandField { key, .. }
            | ReadOp::LRange { key, .. } => elements(key).saturating_add(one),
            ReadOp::BitCount { key, bits, .. } => {
                if *bits {
                    bytes(key).saturating_mul(8) / 32
                } else {
                    bytes(key) / 64
                }
            }
            ReadOp::Lcs { a, b, .. } => {
                (bytes(a).saturating_add(1)).saturating_mul(bytes(b).saturating_add(1)) / 16
            }
            _ => one,
        }
    }

    fn flush(&mut self) -> Reply {
        // Only keys changed after a WATCH abort a transaction watching an absent key.
        let newest = self.map.iter().map(|(_, v)| v.version).max().unwrap_or(0);
        self.removed = self.removed.max(newest);
        self.map.clear();
        self.expiring.clear();
        Reply::Ok
    }

    fn read(&self, q: Query) -> Reply {
        self.answer(q.op, q.now, rand::random())
    }

    /// Answers `op` at `now`; `seed` draws what `RANDOMKEY` and `HRANDFIELD` pick.
    fn answer(&self, op: ReadOp, now: u64, seed: u64) -> Reply {
        match op {
            ReadOp::Get(key) => match self.string(&key, now) {
                Ok(v) => v.map_or(Reply::Nil, |v| Reply::Bulk(v.clone())),
                Err(e) => Reply::Fault(e),
            },
            ReadOp::MGet(keys) => Reply::Array(
                keys.iter()
                    .map(|k| match self.string(k, now) {
                        Ok(Some(v)) => Reply::Bulk(v.clone()),
                        _ => Reply::Nil,
                    })
                    .collect(),
            ),
            ReadOp::Exists(keys) => {
                Reply::Int(keys.iter().filter(|k| self.live(k, now).is_some()).count() as i64)
            }
            ReadOp::Strlen(key) => match self.string(&key, now) {
                Ok(v) => Reply::Int(v.map_or(0, |v| v.len() as i64)),
                Err(e) => Reply::Fault(e),
            },
            ReadOp::Ttl { key, millis } => self.ttl(&key, millis, now),
            ReadOp::ExpireTime { key, millis } => self.expire_time(&key, millis, now),
            ReadOp::Keys(pattern) => {
                // Outside transactions KEYS runs as SCAN steps; here it is one read, under the
                // lock, on every replica.
                if self.map.len() > MAX_KEYS_IN_TRANSACTION {
                    return Reply::error(format!(
                        "ERR KEYS inside a transaction examines at most {MAX_KEYS_IN_TRANSACTION} keys, and the store holds more; use SCAN"
                    ));
                }
                // One step over every key.
                match self.scan_keys(0, Some(&pattern), usize::MAX, None, now) {
                    Ok((_, keys)) => Reply::Array(keys),
                    Err(e) => Reply::error(e.to_string()),
                }
            }
            ReadOp::Scan {
                cursor,
                pattern,
                count,
            } => keys::scan_reply(self.scan_keys(cursor, pattern.as_ref(), count, None, now)),
            ReadOp::ScanKind {
                cursor,
                pattern,
                count,
                kind,
            } => keys::scan_reply(self.scan_keys(cursor, pattern.as_ref(), count, Some(kind), now)),
            // As in Redis, keys that expired but were not yet swept still count: the answer takes
            // O(shards), whatever the store's size.
            ReadOp::DbSize => Reply::Int(self.map.len() as i64),
            ReadOp::GetRange { key, start, end } => self.get_range(&key, start, end, now),
            ReadOp::GetBit { key, offset } => self.get_bit(&key, offset, now),
            ReadOp::BitCount { key, range, bits } => self.bit_count(&key, range, bits, now),
            ReadOp::Lcs { a, b, mode } => self.lcs(&a, &b, mode, now),
            ReadOp::Type(key) => Reply::Status(
                self.live(&key, now)
                    .map_or("none", |v| v.data.kind().name())
                    .to_string(),
            ),
            ReadOp::RandomKey => self.random_key(now, seed),
            ReadOp::Versions(keys) => {
                let mut out = Vec::with_capacity(keys.len() + 1);
                out.push(Reply::Int(self.writes as i64));
                for k in &keys {
                    out.push(Reply::Int(self.live(k, now).map_or(0, |v| v.version) as i64));
                }
                Reply::Array(out)
            }
            ReadOp::LLen(key) => self.llen(&key, now),
            ReadOp::LRange { key, start, end } => self.lrange(&key, start, end, now),
            ReadOp::LIndex { key, index } => self.lindex(&key, index, now),
            ReadOp::SMembers(key) => self.smembers(&key, now),
            ReadOp::SCard(key) => self.scard(&key, now),
            ReadOp::SIsMember { key, member } => self.sismember(&key, &member, now),
            ReadOp::Transaction { watched, ops } => self.exec_reads(&watched, ops, now),
            ReadOp::MemoryUsage(key) => self.live(&key, now).map_or(Reply::Nil, |v| {
                Reply::Int((key.len() + v.data.size() + 64) as i64)
            }),
            ReadOp::ArgumentError {
                key,
                kind,
                missing,
                error,
            } => match self.live(&key, now) {
                None => missing,
                Some(v) if v.data.kind() != kind => Reply::Fault(Error::WrongType),
                Some(_) => error,
            },
            ReadOp::HGet { .. }
            | ReadOp::HMGet { .. }
            | ReadOp::HGetAll(_)
            | ReadOp::HLen(_)
            | ReadOp::HStrlen { .. }
            | ReadOp::HExists { .. }
            | ReadOp::HKeys(_)
            | ReadOp::HVals(_)
            | ReadOp::HRandField { .. }
            | ReadOp::HScan { .. } => self.hash_read(op, now, seed),
        }
    }
}

/// Whether `op` only frees space (or only reads): what runs under the NOSPACE alarm.
/// The replies of a transaction as its commands run, within its bounds (see `Store::exec`).
struct ExecRun {
    replies: Vec<Reply>,
    /// Past this many bytes of replies, the rest are not built (`None`: unbounded, for entries
    /// written before the bound).
    max_reply: Option<usize>,
    held: usize,
    /// Whether reads count their work against [`MAX_EXEC_READ_WORK`].
    strict: bool,
    work: u64,
}

impl ExecRun {
    fn new(commands: usize, max_reply: Option<usize>, strict: bool) -> ExecRun {
        ExecRun {
            replies: Vec::with_capacity(commands),
            max_reply,
            held: 0,
            strict,
            work: 0,
        }
    }

    /// Whether a bound is passed: the commands after this still apply, but reply nothing.
    fn full(&self) -> bool {
        self.max_reply.is_some_and(|max| self.held > max) || self.work > MAX_EXEC_READ_WORK
    }

    /// Keeps a command's reply, unless the run was `full` before it ran.
    fn push(&mut self, full: bool, reply: Option<Reply>) {
        let Some(reply) = reply else { return };
        if full {
            return;
        }
        // Measured only where it is bounded: pipelined batches are not.
        if self.max_reply.is_some() {
            self.held = self.held.saturating_add(reply.footprint());
        }
        self.replies.push(reply);
    }

    fn finish(self) -> Reply {
        if let Some(max_reply) = self.max_reply
            && self.held > max_reply
        {
            return Reply::Error(format!(
                "ERR the transaction was applied, but its replies would take more than {max_reply} bytes and are not returned"
            ));
        }
        if self.work > MAX_EXEC_READ_WORK {
            return Reply::Error(format!(
                "ERR the transaction was applied, but its reads would examine more than {MAX_EXEC_READ_WORK} keys and are not answered; run large scans outside MULTI"
            ));
        }
        Reply::Array(self.replies)
    }
}

fn frees_space(op: &WriteOp) -> bool {
    match op {
        WriteOp::Del(_) | WriteOp::GetDel(_) | WriteOp::FlushDb | WriteOp::PurgeExpired { .. } => {
            true
        }
        WriteOp::Exec { ops, .. }
        | WriteOp::ExecBounded { ops, .. }
        | WriteOp::ExecStrict { ops, .. } => ops.iter().all(|q| match q {
            Queued::Write(op) => frees_space(op),
            Queued::Read(_) | Queued::Reply(_) => true,
        }),
        _ => false,
    }
}

impl StateMachine for Store {
    type Command = Command;
    type Output = Reply;
    type Snapshot = StoreSnapshot;

    fn apply(&mut self, cmd: Command) -> Reply {
        self.write(cmd)
    }

    /// Applies at the time the leader stamped on the entry; entries written before leader-stamped
    /// time apply at the time they carry.
    fn apply_at(&mut self, mut cmd: Command, ctx: &ApplyContext) -> Reply {
        if let Some(leader_time) = ctx.time_ms() {
            cmd.now = leader_time;
        }
        self.write(cmd)
    }

    fn snapshot(&self) -> StoreSnapshot {
        StoreSnapshot::of(self)
    }

    fn write_snapshot(
        snapshot: StoreSnapshot,
        out: &mut dyn std::io::Write,
    ) -> std::io::Result<()> {
        snapshot.write(out)
    }

    /// Drops the current state, then decodes the snapshot one key at a time: the peak memory of
    /// a restore is about the size of the restored store, not twice that. (On an error the node
    /// stops, so the store being left part-filled is never served.) Reads the current format
    /// and the string-only format before it; a snapshot of a newer format is refused with an
    /// error naming its version.
    fn restore(&mut self, input: &mut dyn std::io::Read) -> std::io::Result<()> {
        *self = Store::default();
        snapshot::restore(self, input)
    }

    /// Decodes the snapshot as `restore` would, one record at a time, keeping none.
    fn check_snapshot(input: &mut dyn std::io::Read) -> std::io::Result<()> {
        snapshot::check(input)
    }

    /// Under the NOSPACE alarm, what frees space still runs: `DEL`, `UNLINK`, `GETDEL`,
    /// `FLUSHDB`/`FLUSHALL` and the expiry sweep.
    /// A transaction or pipelined batch runs if every write in it is one of these.
    fn allowed_in_space_alarm(cmd: &Command) -> bool {
        frees_space(&cmd.op)
    }
}

impl Queryable for Store {
    type Query = Query;
    type Reply = Reply;

    fn query(&self, q: Query) -> Reply {
        self.read(q)
    }

    /// Answers at the time the leader ordered the read, not the serving node's clock.
    fn query_at(&self, mut q: Query, ctx: &ReadContext) -> Reply {
        q.now = ctx.time_ms();
        self.read(q)
    }
}
