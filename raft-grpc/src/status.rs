//! How errors cross the wire.
//!
//! Every status a raftkit server produces carries the metadata key [`ERROR_KEY`] with a stable
//! code ([`ErrorCode`]), so clients never parse messages. A redirect adds [`LEADER_ID_KEY`] and
//! [`LEADER_ADDR_KEY`] when the leader is known.

use raft_core::ApplyError;
use raft_core::Error;
use raft_core::LeaderHint;
use raft_core::NodeId;
use tonic::Code;
use tonic::Status;
use tonic::metadata::MetadataValue;

/// Metadata key holding the [`ErrorCode`].
pub const ERROR_KEY: &str = "x-raftkit-error";
/// Metadata key holding the leader's node id, on redirects.
pub const LEADER_ID_KEY: &str = "x-raftkit-leader-id";
/// Metadata key holding the leader's address, on redirects.
pub const LEADER_ADDR_KEY: &str = "x-raftkit-leader-addr";

/// What went wrong, as a stable code in the [`ERROR_KEY`] metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The node is not the leader; see the leader metadata. Nothing was applied.
    NotLeader,
    /// The request timed out; a write may or may not have been applied.
    Timeout,
    /// Leadership changed while a write was in flight; it may or may not be applied.
    OutcomeUnknown,
    /// The node is shutting down.
    Shutdown,
    /// The leader could not reach a quorum.
    NoQuorum,
    /// The command or query does not decode as the state machine's type. Nothing was applied.
    InvalidCommand,
    /// The session cannot answer this sequence; start a new session.
    SessionExpired,
    /// The command was applied, but its output could not be encoded.
    OutputEncoding,
    /// A message or command exceeds a size limit.
    TooLarge,
    /// A membership change was refused.
    Membership,
    /// The node was already initialized.
    AlreadyInitialized,
    /// The request is malformed (bad payload, wrong target node, chunk out of order, …).
    InvalidRequest,
    /// A storage failure on the node.
    Storage,
    /// Any other failure on the node.
    Internal,
    /// The cluster's storage alarm is raised: the write was refused before it was proposed
    /// (nothing was applied). Reads and deletes still work; writes resume once space is freed.
    NoSpace,
    /// The call came from another cluster (its cluster id differs). Nothing was changed.
    WrongCluster,
    /// The call came from, or was meant for, a node whose data was wiped since its id joined the
    /// cluster: it must come back under a new id. Nothing was changed.
    WipedNode,
    /// The write's session is not open (expired from the session table, closed, or never
    /// registered): it was not applied now, but an earlier attempt may have been — the outcome
    /// is unknown. Register a new session before writing again.
    UnknownSession,
    /// The node is already doing this (a backup is being written), or is already receiving as
    /// many bytes of unfinished messages as it holds
    /// ([`GrpcOptions::max_receiving_bytes`](crate::GrpcOptions::max_receiving_bytes)); another
    /// node, or a later attempt, can serve it. Nothing was changed.
    Busy,
    /// A learner was added (the change took effect and stays) but did not catch up with the
    /// leader in time: it may be unreachable. Removing it undoes the add; retrying does not
    /// add it twice.
    LearnerNotCaughtUp,
}

impl ErrorCode {
    /// The code's wire form.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NotLeader => "not-leader",
            ErrorCode::Timeout => "timeout",
            ErrorCode::OutcomeUnknown => "outcome-unknown",
            ErrorCode::Shutdown => "shutdown",
            ErrorCode::NoQuorum => "no-quorum",
            ErrorCode::InvalidCommand => "invalid-command",
            ErrorCode::SessionExpired => "session-expired",
            ErrorCode::OutputEncoding => "output-encoding",
            ErrorCode::TooLarge => "too-large",
            ErrorCode::Membership => "membership",
            ErrorCode::AlreadyInitialized => "already-initialized",
            ErrorCode::InvalidRequest => "invalid-request",
            ErrorCode::Storage => "storage",
            ErrorCode::Internal => "internal",
            ErrorCode::NoSpace => "no-space",
            ErrorCode::WrongCluster => "wrong-cluster",
            ErrorCode::WipedNode => "wiped-node",
            ErrorCode::UnknownSession => "unknown-session",
            ErrorCode::Busy => "busy",
            ErrorCode::LearnerNotCaughtUp => "learner-not-caught-up",
        }
    }

    /// Every code.
    pub const ALL: [ErrorCode; 20] = {
        use ErrorCode::*;
        [
            NotLeader,
            Timeout,
            OutcomeUnknown,
            Shutdown,
            NoQuorum,
            InvalidCommand,
            SessionExpired,
            OutputEncoding,
            TooLarge,
            Membership,
            AlreadyInitialized,
            InvalidRequest,
            Storage,
            Internal,
            NoSpace,
            WrongCluster,
            WipedNode,
            UnknownSession,
            Busy,
            LearnerNotCaughtUp,
        ]
    };

    /// Parses a code's wire form.
    pub fn parse(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// The raftkit code of a status, if a raftkit server produced it.
    pub fn of(status: &Status) -> Option<ErrorCode> {
        status
            .metadata()
            .get(ERROR_KEY)?
            .to_str()
            .ok()
            .and_then(ErrorCode::parse)
    }
}

/// Builds a status with a raftkit error code.
pub fn status(grpc: Code, code: ErrorCode, message: impl Into<String>) -> Status {
    let mut s = Status::new(grpc, message);
    s.metadata_mut()
        .insert(ERROR_KEY, MetadataValue::from_static(code.as_str()));
    s
}

/// Whether a failure may clear up by itself (an election, a restart, a dropped connection), so
/// the same request is worth sending again, here or to another node. A raftkit status decides
/// by its code; a status without one (from tonic or the network, not from a raftkit node) is
/// transient when it means the connection, not the request, failed.
pub fn is_transient(s: &Status) -> bool {
    crate::RequestError::from(s).is_transient()
}

/// A redirect to the leader `hint` names (or to nobody, when it is unknown).
pub fn not_leader(hint: &LeaderHint) -> Status {
    let mut s = status(
        Code::FailedPrecondition,
        ErrorCode::NotLeader,
        format!("not the leader; {hint}"),
    );
    if let Some(id) = hint.id() {
        s.metadata_mut()
            .insert(LEADER_ID_KEY, MetadataValue::from(id));
    }
    if let Some(addr) = hint.addr().and_then(|a| a.parse::<MetadataValue<_>>().ok()) {
        s.metadata_mut().insert(LEADER_ADDR_KEY, addr);
    }
    s
}

/// The leader a redirect names (unknown when the status carries no leader metadata).
pub fn leader_hint(status: &Status) -> LeaderHint {
    let md = status.metadata();
    let id: Option<NodeId> = md
        .get(LEADER_ID_KEY)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let addr = md
        .get(LEADER_ADDR_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    LeaderHint::new(id, addr)
}

/// A node's error as the status a client receives.
pub fn from_error(e: &Error) -> Status {
    let msg = e.to_string();
    match e {
        Error::NotLeader(hint) => not_leader(hint),
        Error::Timeout(_) => status(Code::DeadlineExceeded, ErrorCode::Timeout, msg),
        Error::OutcomeUnknown { .. } => status(Code::Aborted, ErrorCode::OutcomeUnknown, msg),
        Error::Shutdown => status(Code::Unavailable, ErrorCode::Shutdown, msg),
        // Part of the batch applied: not a refusal, and not to be sent again as it is.
        Error::PartlyApplied { .. } => status(Code::Aborted, ErrorCode::OutcomeUnknown, msg),
        Error::NoQuorum => status(Code::Unavailable, ErrorCode::NoQuorum, msg),
        Error::Rejected(ApplyError::InvalidCommand(_)) | Error::Codec(_) => {
            status(Code::InvalidArgument, ErrorCode::InvalidCommand, msg)
        }
        Error::Rejected(ApplyError::SessionExpired { .. }) => {
            status(Code::FailedPrecondition, ErrorCode::SessionExpired, msg)
        }
        Error::Rejected(ApplyError::UnknownSession { .. }) => {
            status(Code::FailedPrecondition, ErrorCode::UnknownSession, msg)
        }
        Error::Rejected(ApplyError::OutputEncoding(_)) => {
            status(Code::Internal, ErrorCode::OutputEncoding, msg)
        }
        // Applied earlier, answer not kept: like an expired session, the session cannot answer
        // and retrying cannot change that (so not `OutcomeUnknown`, which clients retry).
        Error::Rejected(ApplyError::ResponseNotKept { .. }) => {
            status(Code::FailedPrecondition, ErrorCode::SessionExpired, msg)
        }
        Error::CommandTooLarge { .. } => status(Code::InvalidArgument, ErrorCode::TooLarge, msg),
        Error::Membership(_) => status(Code::FailedPrecondition, ErrorCode::Membership, msg),
        Error::AlreadyInitialized => {
            status(Code::AlreadyExists, ErrorCode::AlreadyInitialized, msg)
        }
        Error::Config(_) => status(Code::InvalidArgument, ErrorCode::InvalidRequest, msg),
        Error::Log(_) | Error::Snapshot(_) | Error::Storage(_) => {
            status(Code::Internal, ErrorCode::Storage, msg)
        }
        Error::Backup(raft_core::BackupError::Busy) => {
            status(Code::Unavailable, ErrorCode::Busy, msg)
        }
        Error::Fatal(_) | Error::Backup(_) => status(Code::Internal, ErrorCode::Internal, msg),
        Error::NoSpace { .. } => status(Code::ResourceExhausted, ErrorCode::NoSpace, msg),
        Error::LearnerNotCaughtUp { .. } => {
            status(Code::FailedPrecondition, ErrorCode::LearnerNotCaughtUp, msg)
        }
        // A kind this transport does not map yet is reported as what it is: unexpected.
        _ => status(Code::Internal, ErrorCode::Internal, msg),
    }
}

/// A malformed request.
pub fn invalid(message: impl Into<String>) -> Status {
    status(Code::InvalidArgument, ErrorCode::InvalidRequest, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(c.as_str()), Some(c));
        }
        assert_eq!(ErrorCode::parse("nonsense"), None);
    }

    #[test]
    fn all_lists_every_code() {
        // Adding a variant breaks this match, pointing here to add it to `ALL` too.
        let listed = |c: ErrorCode| match c {
            ErrorCode::NotLeader
            | ErrorCode::Timeout
            | ErrorCode::OutcomeUnknown
            | ErrorCode::Shutdown
            | ErrorCode::NoQuorum
            | ErrorCode::InvalidCommand
            | ErrorCode::SessionExpired
            | ErrorCode::OutputEncoding
            | ErrorCode::TooLarge
            | ErrorCode::Membership
            | ErrorCode::AlreadyInitialized
            | ErrorCode::InvalidRequest
            | ErrorCode::Storage
            | ErrorCode::Internal
            | ErrorCode::NoSpace
            | ErrorCode::WrongCluster
            | ErrorCode::WipedNode
            | ErrorCode::UnknownSession
            | ErrorCode::Busy
            | ErrorCode::LearnerNotCaughtUp => 1,
        };
        assert_eq!(ErrorCode::ALL.iter().map(|c| listed(*c)).sum::<usize>(), 20);
        let distinct: std::collections::HashSet<_> = ErrorCode::ALL.iter().collect();
        assert_eq!(distinct.len(), ErrorCode::ALL.len());
    }

    #[test]
    fn transient_failures_are_told_apart() {
        let transient = [
            status(Code::FailedPrecondition, ErrorCode::NotLeader, ""),
            status(Code::Aborted, ErrorCode::OutcomeUnknown, ""),
            status(Code::Unavailable, ErrorCode::NoQuorum, ""),
            Status::unavailable("connection refused"),
            Status::cancelled("Timeout expired"),
        ];
        for s in &transient {
            assert!(is_transient(s), "{s:?}");
        }
        let permanent = [
            status(Code::InvalidArgument, ErrorCode::InvalidCommand, ""),
            status(Code::FailedPrecondition, ErrorCode::SessionExpired, ""),
            // Retrying in the same session cannot help: it needs a new session.
            status(Code::FailedPrecondition, ErrorCode::UnknownSession, ""),
            // A raftkit code decides, whatever the gRPC code.
            status(Code::Internal, ErrorCode::Storage, ""),
            // A refusal for lack of space is final for this attempt: retrying cannot help.
            status(Code::ResourceExhausted, ErrorCode::NoSpace, ""),
            Status::invalid_argument("bad"),
            Status::permission_denied("no"),
        ];
        for s in &permanent {
            assert!(!is_transient(s), "{s:?}");
        }
    }

    #[test]
    fn redirects_carry_the_leader() {
        let hint = LeaderHint::new(Some(3), Some("10.0.0.3:7000".into()));
        let s = from_error(&Error::NotLeader(hint.clone()));
        assert_eq!(s.code(), Code::FailedPrecondition);
        assert_eq!(ErrorCode::of(&s), Some(ErrorCode::NotLeader));
        // The wire form: the code and the two metadata keys, as before.
        assert_eq!(
            s.message(),
            "not the leader; the leader is node 3 at 10.0.0.3:7000"
        );
        assert_eq!(s.metadata().get(LEADER_ID_KEY).unwrap(), "3");
        assert_eq!(s.metadata().get(LEADER_ADDR_KEY).unwrap(), "10.0.0.3:7000");
        assert_eq!(leader_hint(&s), hint);
        let unknown = from_error(&Error::NotLeader(LeaderHint::unknown()));
        assert_eq!(unknown.message(), "not the leader; the leader is unknown");
        assert_eq!(leader_hint(&unknown), LeaderHint::unknown());
    }
}
