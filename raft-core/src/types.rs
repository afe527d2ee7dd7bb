//! The concrete types raftkit runs openraft with.
//!
//! Everything that openraft is generic over is fixed here once, so that the rest of raftkit — and
//! every user — deals with plain types: a log entry carries an opaque, already-encoded user
//! command ([`Request`]) and applying it yields opaque encoded output ([`Response`]). The user's
//! own `Command`/`Output` types are encoded and decoded at the edges (see `apply.rs` and
//! `node.rs`), so the log, the transport and the snapshot code are not generic at all.
//!
//! The aliases of openraft types here (`Entry`, `LogId`, `Vote`, `Membership`, …) are for
//! transports and follow the pinned openraft version; see the stability note of
//! [`crate::transport`].

use std::fmt;

use bytes::Bytes;
use serde::Deserialize;
use serde::Serialize;

/// Identifies a node in a cluster. Chosen by the operator; stable across restarts.
pub type NodeId = u64;

/// A client session stamp that makes a write idempotent.
///
/// A client opens a session with [`Node::register_session`](crate::Node::register_session),
/// which returns its `client_id`, and numbers its writes `1, 2, 3, …`. When a write is retried
/// with the same `(client_id, sequence)` — because a reply was lost or a leader changed — the
/// state machine returns the output it remembered instead of applying the command twice. One
/// client id must have at most one write outstanding at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Session {
    /// The session's id: the log index of the entry that opened it.
    pub client_id: u64,
    /// The number of this write within the session, starting at 1 and increasing by one.
    pub sequence: u64,
}

impl Session {
    /// A random key to register one session with (see
    /// [`Node::register_session_keyed`](crate::Node::register_session_keyed)); never 0, which
    /// transports take as "no key".
    pub fn random_key() -> u64 {
        loop {
            let key = rand::random::<u64>();
            if key != 0 {
                return key;
            }
        }
    }
}

/// A user write as a transport hands it over: the encoded command and an optional session stamp
/// (of a session opened with [`Node::register_session`](crate::Node::register_session)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The session stamp for exactly-once application, if the writer uses sessions.
    pub session: Option<Session>,
    /// The user's command, encoded with [`crate::codec`].
    pub command: Bytes,
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.session {
            Some(s) => write!(
                f,
                "request({} bytes, session {}#{})",
                self.command.len(),
                s.client_id,
                s.sequence
            ),
            None => write!(f, "request({} bytes)", self.command.len()),
        }
    }
}

/// What a normal log entry carries. Internal to raftkit's log; transports pass it through.
///
/// The serde form is the log's data format and is versioned by variant: the first two variants
/// have exactly the bytes the first format's `Request { session, command }` had (an `Option` tag
/// `0`/`1`, then the session and the command), so logs written by earlier versions still decode
/// — and still apply under the rules they were written with. New kinds are appended at the end;
/// an entry costs one tag byte more than its command and session, as before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Proposal {
    /// A write without a session: applied every time it is committed.
    Write(Bytes),
    /// A write stamped with a session under the first format's rules, where an unknown client
    /// at sequence 1 started a session implicitly. Only read back from logs written by earlier
    /// versions; raftkit no longer proposes it.
    LegacySessionWrite(Session, Bytes),
    /// A write in a session opened by [`Proposal::RegisterSession`]: applied at most once, and
    /// refused with [`ApplyError::UnknownSession`] if the session is not open.
    SessionWrite(Session, Bytes),
    /// Opens a session; its client id is the entry's log index, returned as the output.
    RegisterSession,
    /// Closes the session of this client id (a no-op if it is not open).
    CloseSession(u64),
    /// Sets the cluster-wide bounds of the session table.
    SetSessionCapacity(SessionCapacity),
    /// A write without a session, stamped with the leader's clock (ms since the Unix epoch)
    /// when it was proposed; applied at that time (see [`crate::ApplyContext`]).
    TimedWrite(u64, Bytes),
    /// A write in a session (as [`Proposal::SessionWrite`]), stamped with the leader's clock.
    TimedSessionWrite(Session, u64, Bytes),
    /// Binds a member id to the incarnation of its data directory (see
    /// [`crate::incarnation`]); ignored if the id is bound already.
    BindIncarnation(NodeId, u64),
    /// Several writes in one entry (see [`Node::write_many`](crate::Node::write_many)), stamped
    /// with the leader's clock: applied in order at that time, each with its own output; the
    /// entry's output is the encoded `Vec<Response>`. With a session, the whole batch is one
    /// sequence of it: applied at most once, a retry answered with the recorded outputs.
    TimedBatch(Option<Session>, u64, Vec<Bytes>),
    /// Independent writes that queued at a busy leader, in one entry, stamped with the
    /// leader's clock: applied in order at that time, each under its own session (if any) as
    /// if it were an entry of its own; the entry's output is the encoded `Vec<Response>`.
    Combined(u64, Vec<Request>),
    /// Opens a session registered with a key the client chose, unless a session opened with
    /// that key is still open; the output is the session's client id (the entry's log index
    /// for a new one). See [`Node::register_session_keyed`](crate::Node::register_session_keyed).
    RegisterKeyedSession(u64),
}

impl Proposal {
    /// The user command this entry carries, if it carries exactly one.
    pub fn command(&self) -> Option<&Bytes> {
        match self {
            Proposal::Write(c)
            | Proposal::LegacySessionWrite(_, c)
            | Proposal::SessionWrite(_, c)
            | Proposal::TimedWrite(_, c)
            | Proposal::TimedSessionWrite(_, _, c) => Some(c),
            _ => None,
        }
    }

    /// What the writes after the first of an entry that carries several add to it encoded,
    /// beyond their commands, at most: each of a combined entry's its session stamp and length
    /// ([`COMBINED_WRITE_FRAMING`]), each of a batch's its length ([`BATCH_COMMAND_FRAMING`]).
    pub(crate) fn framing_beyond_first(&self) -> usize {
        let (writes, each) = match self {
            Proposal::TimedBatch(_, _, commands) => (commands.len(), BATCH_COMMAND_FRAMING),
            Proposal::Combined(_, requests) => (requests.len(), COMBINED_WRITE_FRAMING),
            _ => return 0,
        };
        writes.saturating_sub(1).saturating_mul(each)
    }

    /// The bytes of user commands this entry carries (all of a batch's).
    pub fn command_len(&self) -> usize {
        match self {
            Proposal::TimedBatch(_, _, commands) => commands.iter().map(Bytes::len).sum(),
            Proposal::Combined(_, requests) => requests.iter().map(|r| r.command.len()).sum(),
            other => other.command().map_or(0, Bytes::len),
        }
    }
}

/// What a write of a combined entry adds to it beyond its command, at most: an option tag, two
/// varint numbers of up to 10 bytes (its session) and its length.
const COMBINED_WRITE_FRAMING: usize = 32;
/// What a command of a batch adds to it beyond itself, at most: its length, a varint.
const BATCH_COMMAND_FRAMING: usize = 8;

impl Proposal {
    /// The entry a leader proposes for `r`, stamped with its clock's `time_ms`.
    pub fn stamped(r: Request, time_ms: u64) -> Self {
        match r.session {
            None => Proposal::TimedWrite(time_ms, r.command),
            Some(s) => Proposal::TimedSessionWrite(s, time_ms, r.command),
        }
    }
}

impl From<Request> for Proposal {
    /// An entry without a time stamp, as versions before leader-stamped time wrote them.
    fn from(r: Request) -> Self {
        match r.session {
            None => Proposal::Write(r.command),
            Some(s) => Proposal::SessionWrite(s, r.command),
        }
    }
}

impl fmt::Display for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Proposal::Write(c) | Proposal::TimedWrite(_, c) => {
                write!(f, "write({} bytes)", c.len())
            }
            Proposal::LegacySessionWrite(s, c)
            | Proposal::SessionWrite(s, c)
            | Proposal::TimedSessionWrite(s, _, c) => write!(
                f,
                "write({} bytes, session {}#{})",
                c.len(),
                s.client_id,
                s.sequence
            ),
            Proposal::RegisterSession => write!(f, "register-session"),
            Proposal::RegisterKeyedSession(key) => write!(f, "register-session(key {key:016x})"),
            Proposal::CloseSession(id) => write!(f, "close-session({id})"),
            Proposal::SetSessionCapacity(c) => write!(f, "set-session-capacity({c:?})"),
            Proposal::BindIncarnation(id, inc) => write!(f, "bind-incarnation({id}, {inc:016x})"),
            Proposal::TimedBatch(session, _, commands) => {
                write!(
                    f,
                    "batch({} writes, {} bytes",
                    commands.len(),
                    self.command_len()
                )?;
                match session {
                    Some(s) => write!(f, ", session {}#{})", s.client_id, s.sequence),
                    None => write!(f, ")"),
                }
            }
            Proposal::Combined(_, requests) => write!(
                f,
                "combined({} writes, {} bytes)",
                requests.len(),
                self.command_len()
            ),
        }
    }
}

/// The cluster-wide bounds of the client session table. Part of the replicated state (and of
/// snapshots), so every replica evicts the same sessions: set from the initializing node's
/// [`Config`](crate::Config) once, and changed with
/// [`Node::set_session_capacity`](crate::Node::set_session_capacity).
///
/// Made with [`SessionCapacity::new`] or from [`SessionCapacity::default`] with the `with_*`
/// methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SessionCapacity {
    /// Most open sessions; opening one more closes the one whose last write is oldest.
    pub max_sessions: u64,
    /// Most bytes of remembered responses (plus 64 bytes per session); at most
    /// 768 MiB (a snapshot header holds the table).
    pub max_bytes: u64,
    /// Largest response kept whole for a retry; a retry of a write whose response was larger is
    /// answered with [`ApplyError::ResponseNotKept`].
    pub max_response_bytes: u64,
}

impl Default for SessionCapacity {
    /// 10 000 sessions, 64 MiB, 1 MiB per response.
    fn default() -> Self {
        SessionCapacity {
            max_sessions: 10_000,
            max_bytes: 64 << 20,
            max_response_bytes: 1 << 20,
        }
    }
}

impl SessionCapacity {
    /// At most `max_sessions` sessions remembering `max_bytes` of responses, none larger than
    /// `max_response_bytes`. Out-of-range values are clamped when the capacity is applied.
    pub fn new(max_sessions: u64, max_bytes: u64, max_response_bytes: u64) -> SessionCapacity {
        SessionCapacity {
            max_sessions,
            max_bytes,
            max_response_bytes,
        }
    }

    /// Sets the most open sessions (default 10 000).
    #[must_use]
    pub fn with_max_sessions(mut self, sessions: u64) -> SessionCapacity {
        self.max_sessions = sessions;
        self
    }

    /// Sets the most bytes of remembered responses (default 64 MiB, at most 768 MiB).
    #[must_use]
    pub fn with_max_bytes(mut self, bytes: u64) -> SessionCapacity {
        self.max_bytes = bytes;
        self
    }

    /// Sets the largest response kept whole for a retry (default 1 MiB).
    #[must_use]
    pub fn with_max_response_bytes(mut self, bytes: u64) -> SessionCapacity {
        self.max_response_bytes = bytes;
        self
    }
}

/// The result of applying one log entry, as it travels back to the writer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The command was applied (now, or earlier for a retried duplicate); the user's encoded output.
    Output(Bytes),
    /// The entry carried no user command (a blank or membership entry).
    Empty,
    /// The entry was not applied, or its output could not be encoded; every replica agrees.
    Rejected(ApplyError),
}

impl Response {
    /// The user's output, or why there is none: a rejection as [`Error::Rejected`], and an
    /// entry that should have carried an output but did not (`what`) as [`Error::Fatal`].
    pub(crate) fn into_output(self, what: &str) -> crate::Result<Bytes> {
        match self {
            Response::Output(b) => Ok(b),
            Response::Rejected(e) => Err(crate::Error::Rejected(e)),
            Response::Empty => Err(crate::Error::Fatal(format!("{what} produced no output"))),
        }
    }
}

/// Why the apply layer could not return a command's output. Every replica decides the same way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// The command bytes do not decode as the state machine's `Command` type; nothing was applied.
    #[error("the command does not decode as this state machine's command type: {0}")]
    InvalidCommand(String),
    /// The session no longer remembers this sequence: it is older than the last one applied, or
    /// the session expired from the bounded session table. Nothing was applied now; an earlier
    /// attempt may have been. The client must start a new session.
    #[error(
        "session {client_id} cannot answer sequence {sequence}: it is older than the last applied sequence or the session expired"
    )]
    SessionExpired {
        /// The client id of the session.
        client_id: u64,
        /// The sequence number that could not be answered.
        sequence: u64,
    },
    /// The command *was applied*, but its output could not be encoded.
    #[error("the command was applied but its output could not be encoded: {0}")]
    OutputEncoding(String),
    /// A retry of a write that was applied earlier, whose response was too large for the session
    /// table to keep (see [`Config::max_session_response_bytes`](crate::Config)). The write is not
    /// applied again; its answer is unknown.
    #[error(
        "session {client_id} sequence {sequence} was applied earlier, but its response was too large to keep: the outcome is unknown"
    )]
    ResponseNotKept {
        /// The client id of the session.
        client_id: u64,
        /// The sequence number whose response was not kept.
        sequence: u64,
    },
    /// The write names a session that is not open: never registered, closed, or evicted from
    /// the bounded session table. It was not applied now — and never is applied as a fresh
    /// write — but an earlier attempt of it may have been: the outcome is unknown. Register a
    /// new session and decide whether to write again.
    #[error(
        "session {client_id} expired (sequence {sequence} not applied now; an earlier attempt may have been): the outcome is unknown; register a new session"
    )]
    UnknownSession {
        /// The client id the write named.
        client_id: u64,
        /// The sequence number of the write.
        sequence: u64,
    },
}

openraft::declare_raft_types!(
    /// The openraft type configuration raftkit is built on. Transport implementations name it;
    /// applications never need to.
    pub TypeConfig:
        D = Proposal,
        R = Response,
        NodeId = NodeId,
        Node = openraft::BasicNode,
);

/// openraft's log id under [`TypeConfig`].
pub type LogId = openraft::LogId<openraft::impls::leader_id_adv::LeaderId<u64, NodeId>>;
/// openraft's vote under [`TypeConfig`].
pub type Vote = openraft::impls::Vote<openraft::impls::leader_id_adv::LeaderId<u64, NodeId>>;
/// openraft's log entry under [`TypeConfig`].
pub type Entry = openraft::Entry<openraft::impls::leader_id_adv::LeaderId<u64, NodeId>, Payload>;
/// openraft's entry payload under [`TypeConfig`].
pub type Payload = openraft::EntryPayload<Proposal, NodeId, openraft::BasicNode>;
/// openraft's membership under [`TypeConfig`].
pub type Membership = openraft::Membership<NodeId, openraft::BasicNode>;
/// openraft's stored membership (membership plus the log id it was written at).
pub type StoredMembership = openraft::StoredMembership<
    openraft::impls::leader_id_adv::LeaderId<u64, NodeId>,
    NodeId,
    openraft::BasicNode,
>;
/// openraft's snapshot metadata under [`TypeConfig`].
pub type SnapshotMeta = openraft::SnapshotMeta<
    openraft::impls::leader_id_adv::LeaderId<u64, NodeId>,
    NodeId,
    openraft::BasicNode,
>;
/// A leader id (term and node) under [`TypeConfig`].
pub type LeaderId = openraft::impls::leader_id_adv::LeaderId<u64, NodeId>;

/// Builds a log id from its parts.
pub(crate) fn log_id(term: u64, node_id: NodeId, index: u64) -> LogId {
    openraft::LogId::new(LeaderId { term, node_id }, index)
}
/// A snapshot as openraft passes it around: metadata and a handle to the bytes.
pub type Snapshot = openraft::storage::Snapshot<
    LeaderId,
    NodeId,
    openraft::BasicNode,
    crate::snapshot::SnapshotData,
>;
