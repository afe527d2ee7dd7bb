//! The one error type of the public API.

use std::time::Duration;

use crate::backup::BackupError;
use crate::codec::CodecError;
use crate::leader::LeaderHint;
use crate::log::LogError;
use crate::snapshot::SnapshotError;
use crate::types::ApplyError;
use crate::types::NodeId;

/// Everything a [`Node`](crate::Node) operation can fail with.
///
/// For writes the variants say whether the command may have taken effect
/// ([`Error::may_have_applied`]). [`Error::Timeout`], [`Error::OutcomeUnknown`] and
/// [`Error::Shutdown`] leave it open: retry those with the same [`Session`](crate::Session) to get
/// exactly-once application. A write whose session cannot answer it
/// ([`ApplyError::UnknownSession`], [`ApplyError::SessionExpired`],
/// [`ApplyError::ResponseNotKept`]) is not applied now, but an earlier attempt may have been:
/// open a new session before writing again. A storage or engine failure leaves the outcome
/// unknown too, since the entry may have reached other nodes before this one failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// This node is not the leader. The write was not accepted; send it to the leader the
    /// [`LeaderHint`] names (when this node knows it).
    #[error("not the leader; {0}")]
    NotLeader(LeaderHint),
    /// The operation did not finish in time. A write may or may not take effect.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// Leadership changed while the write was in flight; it may or may not take effect.
    #[error("leadership changed while the write was in flight; it may or may not be applied")]
    OutcomeUnknown {
        /// The new leader, if known.
        leader: Option<NodeId>,
    },
    /// The node is shut down (or stopped after a fatal error).
    #[error("the node is shut down")]
    Shutdown,
    /// A batch ([`Node::write_many`](crate::Node::write_many)) was applied, but command
    /// `index` of it was refused with `error` (its bytes do not decode): every other command
    /// of the batch **was applied**. Do not send the batch again as it is.
    #[error("command {index} of the batch was not applied ({error}); the others were")]
    PartlyApplied {
        /// The position of the refused command in the batch.
        index: usize,
        /// Why it was refused.
        error: ApplyError,
    },
    /// A linearizable read could not confirm leadership with a quorum.
    #[error("could not reach a quorum to confirm leadership")]
    NoQuorum,
    /// raftkit could not apply the command, or cannot answer for it, the same way on every
    /// replica: the command bytes do not decode, its session is unknown or forgot the answer,
    /// or the output does not encode ([`ApplyError`] says which, and whether an earlier attempt
    /// may have been applied). It never means that your state machine refused the command:
    /// [`StateMachine::apply`](crate::StateMachine::apply) cannot fail, and a business error
    /// belongs in its `Output` (for example `Output = Result<T, E>`).
    #[error(transparent)]
    Rejected(#[from] ApplyError),
    /// A command or output could not be encoded or decoded.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The write-ahead log failed or is corrupt.
    #[error(transparent)]
    Log(#[from] LogError),
    /// A snapshot could not be read, written or verified.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// A backup could not be written, or a node did not start on a data directory that a
    /// restore is filling or left half built.
    #[error(transparent)]
    Backup(#[from] BackupError),
    /// A storage failure reported by the consensus engine; the node has stopped.
    #[error("storage failure: {0}")]
    Storage(String),
    /// `initialize` was called on a node that already has state.
    #[error(
        "the node is already initialized; a restart recovers from disk and needs no initialize"
    )]
    AlreadyInitialized,
    /// A membership change was refused. Nothing was changed.
    #[error("membership change refused: {0}")]
    Membership(String),
    /// Node `id` was added as a learner (the change is committed and stays), but it did not
    /// receive the log within `waited`: it may be unreachable at `addr`, or still catching up.
    /// It remains a member that the leader keeps trying to reach until it is removed
    /// ([`Node::remove_node`](crate::Node::remove_node)); retrying the add does not add it twice.
    #[error(
        "node {id} was added as a learner at {addr} but has not caught up within {waited:?} (is {addr} reachable from the leader?); it stays a member until it is removed"
    )]
    LearnerNotCaughtUp {
        /// The learner.
        id: NodeId,
        /// The address it was added at.
        addr: String,
        /// How long the leader waited for it.
        waited: Duration,
    },
    /// The encoded command exceeds [`Config::max_command_bytes`](crate::Config::max_command_bytes).
    #[error("command of {size} bytes exceeds the limit of {limit} bytes")]
    CommandTooLarge {
        /// The encoded command's size.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The consensus engine stopped unexpectedly.
    #[error("consensus engine failure: {0}")]
    Fatal(String),
    /// The write was refused before it was proposed: the cluster's storage alarm is raised, by
    /// a disk or by a process's memory (see [`QuotaOptions`](crate::QuotaOptions)). Nothing was
    /// applied. Reads, and commands the state machine allows during the alarm (deletes), still
    /// work; writes resume by themselves once the node is back within its limits.
    #[error(
        "no space: node {node} is out of storage or memory ({reason}); writes that grow the state are refused until it is freed"
    )]
    NoSpace {
        /// The node whose alarm is raised.
        node: NodeId,
        /// What it measured.
        reason: String,
    },
}

impl Error {
    /// Whether a failed write may have been applied (its outcome is unknown): true for
    /// timeouts, leadership changes in flight, shutdowns, storage and engine failures, a write
    /// applied whose output did not encode, a learner added that has not caught up (its
    /// addition did take effect), and writes whose session cannot answer them (an
    /// earlier attempt may have been applied, and a retry can no longer be recognised); false
    /// for refusals that happen before anything is proposed (not the leader, a command that
    /// does not decode, too large, no space, …).
    pub fn may_have_applied(&self) -> bool {
        match self {
            Error::Timeout(_)
            | Error::OutcomeUnknown { .. }
            | Error::Shutdown
            | Error::Log(_)
            | Error::Snapshot(_)
            | Error::Storage(_)
            | Error::Fatal(_)
            | Error::PartlyApplied { .. }
            | Error::LearnerNotCaughtUp { .. } => true,
            Error::Rejected(e) => !matches!(e, ApplyError::InvalidCommand(_)),
            Error::NotLeader(_)
            | Error::NoQuorum
            | Error::Codec(_)
            | Error::Backup(_)
            | Error::AlreadyInitialized
            | Error::Membership(_)
            | Error::CommandTooLarge { .. }
            | Error::Config(_)
            | Error::NoSpace { .. } => false,
        }
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_refusals_before_proposing_say_not_applied() {
        let (client_id, sequence) = (7, 3);
        let unknown = [
            Error::Timeout(Duration::from_secs(1)),
            Error::OutcomeUnknown { leader: None },
            Error::Shutdown,
            Error::Storage("disk".into()),
            Error::Fatal("engine".into()),
            Error::Rejected(ApplyError::SessionExpired {
                client_id,
                sequence,
            }),
            Error::Rejected(ApplyError::ResponseNotKept {
                client_id,
                sequence,
            }),
            Error::Rejected(ApplyError::UnknownSession {
                client_id,
                sequence,
            }),
            Error::Rejected(ApplyError::OutputEncoding("too deep".into())),
            Error::LearnerNotCaughtUp {
                id: 5,
                addr: "n5:1".into(),
                waited: Duration::from_secs(1),
            },
        ];
        for e in &unknown {
            assert!(e.may_have_applied(), "{e}");
        }
        let refused = [
            Error::NotLeader(LeaderHint::unknown()),
            Error::NoQuorum,
            Error::Rejected(ApplyError::InvalidCommand("garbage".into())),
            Error::CommandTooLarge { size: 2, limit: 1 },
            Error::NoSpace {
                node: 1,
                reason: "full".into(),
            },
            Error::Membership("no".into()),
            Error::AlreadyInitialized,
        ];
        for e in &refused {
            assert!(!e.may_have_applied(), "{e}");
        }
    }
}
