//! The concrete types raftkit runs openraft with.
//!
//! Everything that openraft is generic over is fixed here once, so that the rest of raftkit — and
//! every user — deals with plain types: a log entry carries an opaque, already-encoded user
//! command ([`Request`]) and applying it yields opaque encoded output ([`Response`]). The user's
//! own `Command`/`Output` types are encoded and decoded at the edges (see `apply.rs` and
//! `node.rs`), so the log, the transport and the snapshot code are not generic at all.

use std::fmt;

use bytes::Bytes;
use serde::Deserialize;
use serde::Serialize;

/// Identifies a node in a cluster. Chosen by the operator; stable across restarts.
pub type NodeId = u64;

/// A client session stamp that makes a write idempotent.
///
/// A client picks a random `client_id` once and numbers its writes `1, 2, 3, …`. When a write is
/// retried with the same `(client_id, sequence)` — because a reply was lost or a leader changed —
/// the state machine returns the output it remembered instead of applying the command twice.
/// One client id must have at most one write outstanding at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Session {
    /// A random identifier the client chose for itself.
    pub client_id: u64,
    /// The number of this write within the session, starting at 1 and increasing by one.
    pub sequence: u64,
}

/// What a normal log entry carries: the user's encoded command and an optional session stamp.
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

/// Why the apply layer could not return a command's output. Every replica decides the same way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
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
}

openraft::declare_raft_types!(
    /// The openraft type configuration raftkit is built on. Transport implementations name it;
    /// applications never need to.
    pub TypeConfig:
        D = Request,
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
pub type Payload = openraft::EntryPayload<Request, NodeId, openraft::BasicNode>;
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
