//! The one trait a user implements: their replicated state.

use std::io;
use std::io::Read;
use std::io::Write;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The user's replicated state.
///
/// raftkit feeds every replica the same committed commands in the same order; `apply` must
/// therefore be **deterministic**: its effect and output may depend only on the current state and
/// the command — not on clocks, randomness, thread timing or the local node. Something
/// time-dependent, like an expiry, uses the time the leader stamped on the command: implement
/// [`apply_at`](StateMachine::apply_at) instead of relying on `apply` alone, and
/// [`Queryable::query_at`] for reads.
///
/// Snapshots come in two steps, so that the apply path never waits for I/O:
///
/// 1. [`snapshot`](StateMachine::snapshot) is called on the apply path and must be cheap: return a
///    point-in-time handle (a clone of a persistent map, an `Arc`, a copy of a small value).
/// 2. [`write_snapshot`](StateMachine::write_snapshot) runs later on a blocking thread and
///    serialises the handle to a `Write`. raftkit adds framing and a checksum around those bytes.
///
/// [`restore`](StateMachine::restore) replaces the whole state with what a snapshot holds; it is
/// called when a node installs a snapshot from the leader and when it restarts. It reads the
/// snapshot as a stream: decode it as you go ([`read_serde_each`] does so for a sequence) and a
/// restore needs memory for the state alone, not for the state and its snapshot besides.
///
/// ```
/// use std::io::{self, Read, Write};
/// use raft_core::StateMachine;
///
/// #[derive(Default)]
/// struct Counter(u64);
///
/// impl StateMachine for Counter {
///     type Command = u64;      // add this much
///     type Output = u64;       // the new total
///     type Snapshot = u64;
///
///     fn apply(&mut self, add: u64) -> u64 {
///         self.0 += add;
///         self.0
///     }
///     fn snapshot(&self) -> u64 {
///         self.0
///     }
///     fn write_snapshot(total: u64, out: &mut dyn Write) -> io::Result<()> {
///         out.write_all(&total.to_le_bytes())
///     }
///     fn restore(&mut self, input: &mut dyn Read) -> io::Result<()> {
///         let mut b = [0u8; 8];
///         input.read_exact(&mut b)?;
///         self.0 = u64::from_le_bytes(b);
///         Ok(())
///     }
/// }
/// ```
pub trait StateMachine: Send + Sync + 'static {
    /// A change to the state. Encoded into the log, so its serde form is part of your data format.
    ///
    /// Commands arrive as bytes from clients and are decoded on every replica as they apply.
    /// Bytes that do not decode are harmless: the write answers
    /// [`ApplyError::InvalidCommand`](crate::ApplyError::InvalidCommand), not applied. So does a
    /// value that nests more than [`codec::MAX_DEPTH`](crate::codec::MAX_DEPTH) (128) levels
    /// deep (each struct, tuple, sequence, map, enum, `Some` and newtype is a level): serde
    /// decodes by recursion, and a recursive type (an enum that holds itself, a JSON-like
    /// value) sent thousands of levels deep would otherwise overflow the stack and abort every
    /// replica. Your `apply` gets values within that bound; if it recurses over them, mind its
    /// own stack use. Queries are bounded the same way; outputs and snapshots are not (your
    /// state machine built them). The bound is part of the apply rules: a command deeper than
    /// 128 levels that versions before the bound applied is refused by versions with it, so in
    /// a rolling upgrade, and when a node replays such entries after upgrading, replicas can
    /// disagree on it. Upgrade before sending commands that deep, or not at all.
    type Command: Serialize + DeserializeOwned + Send + 'static;
    /// What applying a command returns to the writer.
    ///
    /// `apply` cannot fail: every replica must reach the same state, so a command that breaks a
    /// rule of yours is still applied (changing nothing) and says so in its output. Make the
    /// output a `Result` and the writer gets both layers, raftkit's and yours:
    ///
    /// ```
    /// # use std::io::{self, Read, Write};
    /// # use raft_core::StateMachine;
    /// #[derive(Default)]
    /// struct Account(u64);
    ///
    /// #[derive(serde::Serialize, serde::Deserialize, Debug)]
    /// enum Refused { Overdraft { balance: u64 } }
    ///
    /// impl StateMachine for Account {
    ///     type Command = i64; // deposit (or withdraw, if negative)
    ///     type Output = Result<u64, Refused>; // the new balance, or why nothing changed
    ///     type Snapshot = u64;
    ///     fn apply(&mut self, amount: i64) -> Result<u64, Refused> {
    ///         let balance = self.0.checked_add_signed(amount)
    ///             .ok_or(Refused::Overdraft { balance: self.0 })?;
    ///         self.0 = balance;
    ///         Ok(balance)
    ///     }
    ///     # fn snapshot(&self) -> u64 { self.0 }
    ///     # fn write_snapshot(b: u64, out: &mut dyn Write) -> io::Result<()> { raft_core::write_serde(&b, out) }
    ///     # fn restore(&mut self, input: &mut dyn Read) -> io::Result<()> { self.0 = raft_core::read_serde(input)?; Ok(()) }
    /// }
    ///
    /// # async fn withdraw(node: &raft_core::Node<Account>) -> Result<(), Box<dyn std::error::Error>> {
    /// // The outer `?`: raftkit's error (not the leader, no quorum, …). The inner: yours.
    /// match node.write(-50).await? {
    ///     Ok(balance) => println!("balance {balance}"),
    ///     Err(Refused::Overdraft { balance }) => println!("only {balance} left; nothing changed"),
    /// }
    /// # Ok(()) }
    /// ```
    type Output: Serialize + DeserializeOwned + Send + 'static;
    /// A point-in-time view of the state, taken cheaply by [`StateMachine::snapshot`].
    type Snapshot: Send + 'static;

    /// Applies one committed command. Must be deterministic (see the trait docs).
    ///
    /// Must not panic: a panic leaves the state part-way through the command. The node then
    /// stops at once with [`Error::Storage`](crate::Error::Storage) ("the state machine panicked
    /// applying entry …", logged as an error), refuses reads of that state, and stops again at
    /// the same entry when restarted — as does every replica, since they apply the same command.
    /// Refuse a command you cannot apply with an output that says so instead.
    fn apply(&mut self, command: Self::Command) -> Self::Output;

    /// Applies one committed command knowing where it is in the log and the time the leader
    /// stamped on it ([`ApplyContext`]). The default calls [`apply`](StateMachine::apply);
    /// override it to use the time (for expiry, say). Must be deterministic like `apply`: every
    /// replica sees the same context for the same entry.
    fn apply_at(&mut self, command: Self::Command, ctx: &ApplyContext) -> Self::Output {
        let _ = ctx;
        self.apply(command)
    }

    /// Takes a cheap point-in-time handle of the current state (runs on the apply path).
    ///
    /// A panic here fails that snapshot (retried after a pause, like any failed build) or that
    /// backup, and is logged as an error; the node goes on, since reading the state left it as
    /// it was.
    fn snapshot(&self) -> Self::Snapshot;

    /// Serialises a handle taken by [`StateMachine::snapshot`] (runs off the apply path). An
    /// error or a panic fails that snapshot or backup; the node goes on.
    fn write_snapshot(snapshot: Self::Snapshot, out: &mut dyn Write) -> io::Result<()>;

    /// Replaces the entire state with the bytes a [`StateMachine::write_snapshot`] produced,
    /// read from `input` (buffered; reading it in small pieces is cheap). raftkit has verified
    /// their checksum, and that the snapshot belongs to this node's cluster, before calling this.
    ///
    /// On an error the node stops with a storage error and does not serve from this state, so
    /// `restore` may drop the old state first and fill the new one in place — which keeps the
    /// peak memory of an install at about the size of the new state.
    fn restore(&mut self, input: &mut dyn Read) -> io::Result<()>;

    /// Reads a snapshot's bytes as [`restore`](StateMachine::restore) would, without changing
    /// anything, and fails where `restore` would. A snapshot a peer sends is checked with it
    /// before it is installed: one that fails is refused and the node goes on as it was. A
    /// `restore` that fails part-way may have changed the state, so a failed install stops the
    /// node instead. Implement it (for example by decoding and dropping each record) to make a
    /// corrupt or forged snapshot harmless; the default accepts every snapshot.
    fn check_snapshot(input: &mut dyn Read) -> io::Result<()> {
        let _ = input;
        Ok(())
    }

    /// Whether `command` may still be written while the cluster's storage alarm is raised (see
    /// [`QuotaOptions`](crate::QuotaOptions)): commands that free space or do not grow the state
    /// — deletes, expiry sweeps — so an operator can make room. The default allows none. Only
    /// consulted while the alarm is raised.
    fn allowed_in_space_alarm(command: &Self::Command) -> bool {
        let _ = command;
        false
    }
}

/// A state machine that answers encoded queries, for reads that arrive over the network (the
/// gRPC `Read` call). In-process callers can use [`Node::read`](crate::Node::read) with a closure
/// instead and need not implement this.
pub trait Queryable: StateMachine {
    /// A question about the state. Sent over the network, so it is a serde type.
    type Query: Serialize + DeserializeOwned + Send + 'static;
    /// The answer.
    type Reply: Serialize + DeserializeOwned + Send + 'static;

    /// Answers `query` from the current state. Must not change the state.
    fn query(&self, query: Self::Query) -> Self::Reply;

    /// Answers `query` at the time the read was ordered ([`ReadContext`]). The default calls
    /// [`query`](Queryable::query); override it to decide time-dependent answers (has this key
    /// expired?) with the cluster's time rather than the local clock. Must not change the state.
    fn query_at(&self, query: Self::Query, ctx: &ReadContext) -> Self::Reply {
        let _ = ctx;
        self.query(query)
    }
}

/// What the apply layer knows about a committed entry besides its command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ApplyContext {
    index: u64,
    position: u32,
    time_ms: Option<u64>,
}

impl ApplyContext {
    /// A context for the entry at `index` with the given time, for its first (or only) write
    /// (for tests of a state machine).
    pub fn new(index: u64, time_ms: Option<u64>) -> Self {
        ApplyContext {
            index,
            position: 0,
            time_ms,
        }
    }

    /// The same context for the write at `position` in its entry (for tests of a state
    /// machine).
    #[must_use]
    pub fn at_position(self, position: u32) -> Self {
        ApplyContext { position, ..self }
    }

    /// The entry's log index. Writes that share an entry share it: writes combined under load
    /// ([`Config::combine_writes_after`](crate::Config)) and a
    /// [`Node::write_many`](crate::Node::write_many) batch. To number writes uniquely (a
    /// revision, an id), use `(index(), position())`.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// The write's place in its entry: 0 for the first (or only) write, then 1, 2, … in the
    /// order the entry applies them. `(index(), position())` is unique across the log and the
    /// same on every replica.
    pub fn position(&self) -> u32 {
        self.position
    }

    /// The entry's time, in milliseconds since the Unix epoch: the leader's clock when it
    /// proposed the entry, raised to the time of the entry before it if that was later, so the
    /// times of applied entries never decrease. The same on every replica. `None` for entries
    /// written by versions that did not stamp times; fall back to a time the command carries.
    pub fn time_ms(&self) -> Option<u64> {
        self.time_ms
    }
}

/// When a read was ordered, for time-dependent answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReadContext {
    time_ms: u64,
}

impl ReadContext {
    /// A context for a read at `time_ms` (for tests of a state machine).
    pub fn new(time_ms: u64) -> Self {
        ReadContext { time_ms }
    }

    /// The read's time, in milliseconds since the Unix epoch, never earlier than the time of
    /// the state it reads. For a linearizable read, the leader's clock when it confirmed its
    /// leadership for the read; for a lease read, the leader's clock when it checked its
    /// lease; for a local read, this node's clock. See [`Clock`](crate::Clock) for the
    /// assumption about clocks this rests on.
    pub fn time_ms(&self) -> u64 {
        self.time_ms
    }
}

/// Writes `value` to `out` in raftkit's codec — a one-line `write_snapshot` for serde state.
///
/// The encoding streams through a 64 KiB buffer: a snapshot never holds a second, serialised
/// copy of the state in memory. An error of `out` (a full disk, a closed pipe) is returned as
/// it is, with its kind and message; only a value that cannot be encoded gives an error of
/// its own.
pub fn write_serde<T: Serialize + ?Sized>(value: &T, out: &mut dyn Write) -> io::Result<()> {
    let mut keeping = KeepFirstError {
        inner: io::BufWriter::with_capacity(64 << 10, out),
        error: None,
    };
    let encoded = postcard::to_io(value, &mut keeping).map(drop);
    if let Some(e) = keeping.error.take() {
        return Err(e);
    }
    encoded.map_err(|e| io::Error::other(format!("snapshot serialisation failed: {e}")))?;
    keeping.inner.flush()
}

/// Passes writes through and keeps the first error: the encoder replaces a writer's error
/// with one of its own, which would hide the cause (a full disk, a closed pipe).
struct KeepFirstError<W: Write> {
    inner: W,
    error: Option<io::Error>,
}

impl<W: Write> Write for KeepFirstError<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf).map_err(|e| self.keep(e))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush().map_err(|e| self.keep(e))
    }
}

impl<W: Write> KeepFirstError<W> {
    /// Keeps `e` if it is the first error, and hands the encoder a stand-in.
    fn keep(&mut self, e: io::Error) -> io::Error {
        let stand_in = io::Error::new(e.kind(), "write failed");
        self.error.get_or_insert(e);
        stand_in
    }
}

/// Reads back what [`write_serde`] wrote — a one-line `restore` for serde state.
///
/// The bytes are decoded as they are read: only the value is built, never a second copy of the
/// snapshot's bytes. (The value itself is then whole in memory before `restore` can put it in
/// place; for a large collection, [`read_serde_each`] builds the state one element at a time.)
/// Bytes left after the value are an `InvalidData` error, as is an encoding that does not decode;
/// a stream that ends early is `UnexpectedEof`. Types that borrow from their input (`&str`,
/// `&[u8]`) cannot be read this way; use their owned forms.
pub fn read_serde<T: DeserializeOwned>(input: &mut dyn Read) -> io::Result<T> {
    let mut decoder = crate::codec::StreamDecoder::new(input);
    let value = decoder.next()?;
    if !decoder.at_end()? {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "bytes left after the snapshot's value",
        ));
    }
    Ok(value)
}

/// Reads back a sequence that [`write_serde`] wrote (a `Vec<T>`, a slice, any type serialised
/// as a sequence with a known length, or a map with `T = (K, V)`), handing each element to
/// `each` as soon as it is decoded. Returns how many elements there were.
///
/// This is the `restore` for state too large to hold twice: at most one element's encoding is in
/// memory besides what `each` keeps, so restoring a store of N bytes costs about N bytes, not 2N.
/// The count written before the elements is not trusted for allocation; a stream that ends
/// before it is complete is an `UnexpectedEof` error, bytes after the last element an
/// `InvalidData` one. An error from `each` stops the reading and is returned as it is.
///
/// ```
/// use std::collections::BTreeMap;
/// let map = BTreeMap::from([(1u32, "one".to_string()), (2, "two".to_string())]);
/// let mut bytes = Vec::new();
/// raft_core::write_serde(&map, &mut bytes).unwrap();
///
/// let mut restored = BTreeMap::new();
/// let n = raft_core::read_serde_each(&mut bytes.as_slice(), |(k, v): (u32, String)| {
///     restored.insert(k, v);
///     Ok(())
/// })
/// .unwrap();
/// assert_eq!((n, restored), (2, map));
/// ```
pub fn read_serde_each<T: DeserializeOwned>(
    input: &mut dyn Read,
    mut each: impl FnMut(T) -> io::Result<()>,
) -> io::Result<u64> {
    let mut decoder = crate::codec::StreamDecoder::new(input);
    let count: u64 = decoder.next()?;
    for _ in 0..count {
        each(decoder.next()?)?;
    }
    if !decoder.at_end()? {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "bytes left after the snapshot's last element",
        ));
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fails every write with `kind`, as a full disk or a closed pipe does.
    struct Failing(io::ErrorKind);

    impl Write for Failing {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::new(self.0, "the device said no"))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn write_serde_reports_the_writers_own_error() {
        let big: Vec<u64> = (0..100_000).collect();
        for kind in [io::ErrorKind::StorageFull, io::ErrorKind::BrokenPipe] {
            let err = write_serde(&big, &mut Failing(kind)).unwrap_err();
            assert_eq!(err.kind(), kind);
            assert_eq!(err.to_string(), "the device said no");
        }
        // A small value fails at the final flush, with the same error.
        let err = write_serde(&1u8, &mut Failing(io::ErrorKind::StorageFull)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
    }

    #[test]
    fn read_serde_refuses_trailing_and_missing_bytes() {
        let mut bytes = Vec::new();
        write_serde(&(5u64, "x".to_string()), &mut bytes).unwrap();
        let v: (u64, String) = read_serde(&mut bytes.as_slice()).unwrap();
        assert_eq!(v, (5, "x".into()));
        let mut longer = bytes.clone();
        longer.push(0);
        let err = read_serde::<(u64, String)>(&mut longer.as_slice()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let err = read_serde::<(u64, String)>(&mut &bytes[..bytes.len() - 1]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn read_serde_each_streams_a_sequence_and_checks_its_ends() {
        let items: Vec<(u32, Vec<u8>)> = (0..1000).map(|i| (i, vec![i as u8; 100])).collect();
        let mut bytes = Vec::new();
        write_serde(&items, &mut bytes).unwrap();
        let mut seen = Vec::new();
        let n = read_serde_each(&mut bytes.as_slice(), |x: (u32, Vec<u8>)| {
            seen.push(x);
            Ok(())
        })
        .unwrap();
        assert_eq!((n, &seen), (1000, &items));

        // Cut short: the elements before the cut were handed over, then an error.
        let mut got = 0;
        let err = read_serde_each(&mut &bytes[..bytes.len() / 2], |_: (u32, Vec<u8>)| {
            got += 1;
            Ok(())
        })
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(got > 0 && got < 1000, "{got}");

        // A count far beyond the bytes present is an error, not an allocation.
        let mut lying = Vec::new();
        write_serde(&u64::MAX, &mut lying).unwrap();
        let err = read_serde_each(&mut lying.as_slice(), |_: u8| Ok(())).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);

        // The callback's error stops the reading.
        let err = read_serde_each(&mut bytes.as_slice(), |_: (u32, Vec<u8>)| {
            Err(io::Error::other("full"))
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "full");
    }
}
