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
/// the command — not on clocks, randomness, thread timing or the local node. (Something
/// time-dependent, like an expiry, is computed by the writer and put into the command.)
///
/// Snapshots come in two steps, so that the apply path never waits for I/O:
///
/// 1. [`snapshot`](StateMachine::snapshot) is called on the apply path and must be cheap: return a
///    point-in-time handle (a clone of a persistent map, an `Arc`, a copy of a small value).
/// 2. [`write_snapshot`](StateMachine::write_snapshot) runs later on a blocking thread and
///    serialises the handle to a `Write`. raftkit adds framing and a checksum around those bytes.
///
/// [`restore`](StateMachine::restore) replaces the whole state with what a snapshot holds; it is
/// called when a node installs a snapshot from the leader and when it restarts.
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
    type Command: Serialize + DeserializeOwned + Send + 'static;
    /// What applying a command returns to the writer.
    type Output: Serialize + DeserializeOwned + Send + 'static;
    /// A point-in-time view of the state, taken cheaply by [`StateMachine::snapshot`].
    type Snapshot: Send + 'static;

    /// Applies one committed command. Must be deterministic (see the trait docs).
    fn apply(&mut self, command: Self::Command) -> Self::Output;

    /// Takes a cheap point-in-time handle of the current state (runs on the apply path).
    fn snapshot(&self) -> Self::Snapshot;

    /// Serialises a handle taken by [`StateMachine::snapshot`] (runs off the apply path).
    fn write_snapshot(snapshot: Self::Snapshot, out: &mut dyn Write) -> io::Result<()>;

    /// Replaces the entire state with the bytes a [`StateMachine::write_snapshot`] produced.
    /// raftkit has verified their checksum before calling this.
    fn restore(&mut self, input: &mut dyn Read) -> io::Result<()>;

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
}

/// Writes `value` to `out` in raftkit's codec — a one-line `write_snapshot` for serde state.
///
/// The encoding streams through a 64 KiB buffer: a snapshot never holds a second, serialised
/// copy of the state in memory.
pub fn write_serde<T: Serialize + ?Sized>(value: &T, out: &mut dyn Write) -> io::Result<()> {
    let buffered = io::BufWriter::with_capacity(64 << 10, out);
    let mut buffered = postcard::to_io(value, buffered)
        .map_err(|e| io::Error::other(format!("snapshot serialisation failed: {e}")))?;
    buffered.flush()
}

/// Reads back what [`write_serde`] wrote — a one-line `restore` for serde state.
pub fn read_serde<T: DeserializeOwned>(input: &mut dyn Read) -> io::Result<T> {
    let mut bytes = Vec::new();
    input.read_to_end(&mut bytes)?;
    crate::codec::decode(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}
