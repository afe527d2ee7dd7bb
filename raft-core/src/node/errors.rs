//! The one place where openraft's errors become raftkit's [`Error`]: one function per openraft
//! error family, so every call site of the engine reports a condition the same way.

use openraft::errors::ClientWriteError;
use openraft::errors::Fatal;
use openraft::errors::ForwardToLeader;
use openraft::errors::InitializeError;
use openraft::errors::LinearizableReadError;
use openraft::errors::RaftError;

use crate::error::Error;
use crate::leader::LeaderHint;
use crate::types::TypeConfig;

/// The engine stopped: shut down ([`Error::Shutdown`]), a storage failure
/// ([`Error::Storage`]), or a panic inside it ([`Error::Fatal`]).
pub(crate) fn fatal(e: &Fatal<TypeConfig>) -> Error {
    match e {
        Fatal::Stopped => Error::Shutdown,
        Fatal::StorageError(s) => Error::Storage(s.to_string()),
        Fatal::Panicked => Error::Fatal("the consensus task panicked".into()),
    }
}

/// This node does not lead: [`Error::NotLeader`], naming the leader (and its address) if known.
pub(crate) fn forward_to_leader(f: &ForwardToLeader<TypeConfig>) -> Error {
    Error::NotLeader(LeaderHint::new(
        f.leader_id,
        f.leader_node.as_ref().map(|n| n.addr.clone()),
    ))
}

/// An API call's error: the engine's fatal errors as [`fatal`], the call's own with `api`.
fn raft<E>(e: RaftError<TypeConfig, E>, api: impl FnOnce(E) -> Error) -> Error {
    match e {
        RaftError::APIError(e) => api(e),
        RaftError::Fatal(f) => fatal(&f),
    }
}

/// `initialize` failed: the node already has state ([`Error::AlreadyInitialized`]) or is not
/// among the members it was given ([`Error::Config`]).
pub(crate) fn initialize(e: RaftError<TypeConfig, InitializeError<TypeConfig>>) -> Error {
    raft(e, |e| match e {
        InitializeError::NotAllowed(_) => Error::AlreadyInitialized,
        InitializeError::NotInMembers(e) => Error::Config(e.to_string()),
    })
}

/// Leadership could not be confirmed for a read: not the leader ([`Error::NotLeader`]) or no
/// quorum answered ([`Error::NoQuorum`]).
pub(crate) fn linearizable_read(
    e: RaftError<TypeConfig, LinearizableReadError<TypeConfig>>,
) -> Error {
    raft(e, |e| match e {
        LinearizableReadError::ForwardToLeader(f) => forward_to_leader(&f),
        LinearizableReadError::QuorumNotEnough(_) => Error::NoQuorum,
    })
}

/// A proposal was refused or lost. A proposal refused before it was appended is
/// [`Error::NotLeader`] or [`Error::Membership`]; one appended and then overwritten by another
/// leader is [`Error::OutcomeUnknown`] (it may yet have been committed elsewhere, never twice).
pub(crate) fn client_write(e: ClientWriteError<TypeConfig>) -> Error {
    match e {
        ClientWriteError::ForwardToLeader(f) => forward_to_leader(&f),
        ClientWriteError::LogEntryDiscarded(f) => Error::OutcomeUnknown {
            leader: f.leader_id,
        },
        ClientWriteError::ChangeMembershipError(e) => Error::Membership(e.to_string()),
        ClientWriteError::PreconditionFailed(e) => Error::Membership(e.to_string()),
    }
}
