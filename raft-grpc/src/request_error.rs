//! [`RequestError`]: why a call to a node failed, in raftkit's terms rather than gRPC's.
//!
//! Every status a raftkit node produces carries an [`ErrorCode`]; this module turns such a
//! status (or one tonic produced when a call between nodes failed) into a typed error, so that
//! an application never matches on gRPC codes and never shows transport wording to its users.

use raft_core::LeaderHint;
use tonic::Code;
use tonic::Status;

use crate::status::ErrorCode;
use crate::status::leader_hint;

/// Why a call to a node failed: a [`LocalClient`](crate::LocalClient) call (which may have been
/// forwarded to the leader), or the last failure of a [`ClusterClient`](crate::ClusterClient)
/// operation.
///
/// For a write, each variant says whether it may have been applied
/// ([`RequestError::may_have_applied`]): *not applied* (a refusal before anything was proposed),
/// or *unknown* (it may still take effect). Retrying an unknown write in the same client session
/// applies it at most once. The messages are written for users and never carry transport
/// wording; [`RequestError::Transport`] keeps that in a separate field for logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The node does not lead and could not forward the call (forwarding is off, or the leader
    /// is unknown). Nothing was applied; the hint names the leader when the node knows it.
    #[error("not the leader; {0}")]
    NotLeader(LeaderHint),
    /// The leader could not reach a quorum (to confirm a read). Nothing changed.
    #[error("{0}")]
    NoQuorum(String),
    /// The node, or the leader the call was forwarded to, is shutting down. A write may or may
    /// not have been applied.
    #[error("{0}")]
    Shutdown(String),
    /// The call did not finish in time. A write may or may not have been applied.
    #[error("{0}")]
    Timeout(String),
    /// Leadership changed while the write was in flight; it may or may not be applied.
    #[error("{0}")]
    OutcomeUnknown(String),
    /// The call from this node to another one (the leader) failed in transit: a refused or reset
    /// connection, an HTTP/2 error. A write may or may not have been applied.
    #[error("the call failed in transit between nodes")]
    Transport {
        /// What the transport said, for logs only.
        detail: String,
        /// Whether the same call is worth sending again (a dropped connection, a deadline),
        /// rather than a failure that repeats (a malformed exchange).
        retriable: bool,
    },
    /// The command or query does not decode as the state machine's type. Nothing was applied.
    #[error("{0}")]
    InvalidCommand(String),
    /// The write's session cannot answer this sequence (it is older than the last one applied,
    /// or its answer was too large to keep): an earlier attempt may have been applied, so the
    /// outcome is unknown. Start a new session.
    #[error("{0}")]
    SessionExpired(String),
    /// The write's session is not open (evicted from the session table, closed, or never
    /// registered): not applied now, but an earlier attempt may have been — the outcome is
    /// unknown. Register a new session before writing again.
    #[error("{0}")]
    UnknownSession(String),
    /// The command or a message exceeds a size limit. Nothing was applied.
    #[error("{0}")]
    TooLarge(String),
    /// The cluster's storage alarm is raised: the write was refused before it was proposed.
    /// Nothing was applied; reads and deletes still work.
    #[error("{0}")]
    NoSpace(String),
    /// The caller's credentials were missing or refused. Nothing was applied.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller lacks the role the call needs. Nothing was applied.
    #[error("{0}")]
    PermissionDenied(String),
    /// The node is already doing this (a backup), or already holds its limit of unfinished
    /// messages; another node or a later attempt can serve it. Nothing changed.
    #[error("{0}")]
    Busy(String),
    /// A learner was added (the change took effect and stays a member) but did not catch up
    /// with the leader in time: it may be unreachable at the address it was given. Retrying
    /// does not add it twice; removing it undoes the add.
    #[error("{0}")]
    LearnerNotCaughtUp(String),
    /// A storage or internal failure on the node (or a write that was applied but whose output
    /// could not be encoded). A write may have been applied.
    #[error("{message}")]
    Internal {
        /// [`ErrorCode::Storage`], [`ErrorCode::OutputEncoding`] or [`ErrorCode::Internal`].
        code: ErrorCode,
        /// What failed.
        message: String,
    },
    /// Any other refusal (a membership change refused, a malformed request, another cluster, a
    /// wiped node, …): retrying will not help. Nothing was applied.
    #[error("{message}")]
    Refused {
        /// The raftkit code, when a raftkit node refused.
        code: Option<ErrorCode>,
        /// Why.
        message: String,
    },
}

impl RequestError {
    /// Whether the same call may succeed if sent again after a pause, here or on another node:
    /// the leader is changing, a node is restarting, a connection dropped, or a deadline passed.
    /// A write retried this way must keep its session to be applied at most once.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            RequestError::NotLeader(_)
                | RequestError::NoQuorum(_)
                | RequestError::Shutdown(_)
                | RequestError::Timeout(_)
                | RequestError::OutcomeUnknown(_)
                | RequestError::Busy(_)
                | RequestError::Transport {
                    retriable: true,
                    ..
                }
        )
    }

    /// Whether a failed write may have been applied (its outcome is unknown), as opposed to
    /// refused before anything was proposed.
    pub fn may_have_applied(&self) -> bool {
        matches!(
            self,
            RequestError::Shutdown(_)
                | RequestError::Timeout(_)
                | RequestError::OutcomeUnknown(_)
                | RequestError::Transport { .. }
                | RequestError::SessionExpired(_)
                | RequestError::UnknownSession(_)
                | RequestError::Internal { .. }
                | RequestError::LearnerNotCaughtUp(_)
        )
    }

    /// The raftkit code of the failure, when a raftkit node reported it (`None` for transport
    /// and authentication failures).
    pub fn code(&self) -> Option<ErrorCode> {
        Some(match self {
            RequestError::NotLeader(_) => ErrorCode::NotLeader,
            RequestError::NoQuorum(_) => ErrorCode::NoQuorum,
            RequestError::Shutdown(_) => ErrorCode::Shutdown,
            RequestError::Timeout(_) => ErrorCode::Timeout,
            RequestError::OutcomeUnknown(_) => ErrorCode::OutcomeUnknown,
            RequestError::InvalidCommand(_) => ErrorCode::InvalidCommand,
            RequestError::SessionExpired(_) => ErrorCode::SessionExpired,
            RequestError::UnknownSession(_) => ErrorCode::UnknownSession,
            RequestError::TooLarge(_) => ErrorCode::TooLarge,
            RequestError::NoSpace(_) => ErrorCode::NoSpace,
            RequestError::Busy(_) => ErrorCode::Busy,
            RequestError::LearnerNotCaughtUp(_) => ErrorCode::LearnerNotCaughtUp,
            RequestError::Internal { code, .. } => *code,
            RequestError::Refused { code, .. } => return *code,
            RequestError::Transport { .. }
            | RequestError::Unauthenticated(_)
            | RequestError::PermissionDenied(_) => return None,
        })
    }

    /// A short, fixed label of the failure's cause, for metrics: the [`ErrorCode`]'s wire form,
    /// or `transport`, `unauthenticated`, `permission-denied`, `refused`.
    pub fn reason(&self) -> &'static str {
        match (self, self.code()) {
            (_, Some(code)) => code.as_str(),
            (RequestError::Transport { .. }, None) => "transport",
            (RequestError::Unauthenticated(_), None) => "unauthenticated",
            (RequestError::PermissionDenied(_), None) => "permission-denied",
            (_, None) => "refused",
        }
    }
}

/// The typed form of a status a node, or tonic on the way to one, answered with.
impl From<&Status> for RequestError {
    fn from(s: &Status) -> RequestError {
        let message = s.message().to_string();
        let Some(code) = ErrorCode::of(s) else {
            return match s.code() {
                Code::Unauthenticated => RequestError::Unauthenticated(message),
                Code::PermissionDenied => RequestError::PermissionDenied(message),
                grpc => RequestError::Transport {
                    detail: s.to_string(),
                    // A failure of the connection, not of the request.
                    retriable: matches!(
                        grpc,
                        Code::Unavailable
                            | Code::Cancelled
                            | Code::DeadlineExceeded
                            | Code::Unknown
                            | Code::Aborted
                            | Code::Internal
                    ),
                },
            };
        };
        match code {
            ErrorCode::NotLeader => RequestError::NotLeader(leader_hint(s)),
            ErrorCode::NoQuorum => RequestError::NoQuorum(message),
            ErrorCode::Shutdown => RequestError::Shutdown(message),
            ErrorCode::Timeout => RequestError::Timeout(message),
            ErrorCode::OutcomeUnknown => RequestError::OutcomeUnknown(message),
            ErrorCode::InvalidCommand => RequestError::InvalidCommand(message),
            ErrorCode::SessionExpired => RequestError::SessionExpired(message),
            ErrorCode::UnknownSession => RequestError::UnknownSession(message),
            ErrorCode::TooLarge => RequestError::TooLarge(message),
            ErrorCode::NoSpace => RequestError::NoSpace(message),
            ErrorCode::Busy => RequestError::Busy(message),
            ErrorCode::LearnerNotCaughtUp => RequestError::LearnerNotCaughtUp(message),
            ErrorCode::Storage | ErrorCode::OutputEncoding | ErrorCode::Internal => {
                RequestError::Internal { code, message }
            }
            ErrorCode::Membership
            | ErrorCode::AlreadyInitialized
            | ErrorCode::InvalidRequest
            | ErrorCode::WrongCluster
            | ErrorCode::WipedNode => RequestError::Refused {
                code: Some(code),
                message,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use raft_core::ApplyError;
    use raft_core::Error;

    use super::*;
    use crate::status;

    #[test]
    fn every_code_keeps_its_meaning() {
        for code in ErrorCode::ALL {
            let s = status::status(Code::Internal, code, "why");
            let e = RequestError::from(&s);
            assert_eq!(e.code(), Some(code), "{e:?}");
            assert_eq!(e.reason(), code.as_str());
            // Worth retrying: the leader is changing, a node restarts, or a deadline passed.
            let transient = matches!(
                code,
                ErrorCode::NotLeader
                    | ErrorCode::Timeout
                    | ErrorCode::OutcomeUnknown
                    | ErrorCode::Shutdown
                    | ErrorCode::NoQuorum
                    | ErrorCode::Busy
            );
            assert_eq!(e.is_transient(), transient, "{code:?}");
            if code != ErrorCode::NotLeader {
                assert_eq!(e.to_string(), "why");
            }
        }
    }

    #[test]
    fn redirects_keep_the_hint_and_the_message() {
        let hint = LeaderHint::new(Some(2), Some("10.0.0.2:7000".into()));
        let s = status::from_error(&Error::NotLeader(hint.clone()));
        let e = RequestError::from(&s);
        assert_eq!(e, RequestError::NotLeader(hint));
        assert_eq!(e.to_string(), s.message());
        assert!(e.is_transient() && !e.may_have_applied());
    }

    #[test]
    fn outcomes_are_told_apart() {
        let unknown = [
            Error::Timeout(std::time::Duration::from_secs(1)),
            Error::OutcomeUnknown { leader: None },
            Error::Shutdown,
            Error::Storage("disk".into()),
            Error::Rejected(ApplyError::UnknownSession {
                client_id: 1,
                sequence: 2,
            }),
        ];
        for e in &unknown {
            let r = RequestError::from(&status::from_error(e));
            assert!(r.may_have_applied(), "{r:?}");
        }
        let refused = [
            Error::NotLeader(LeaderHint::unknown()),
            Error::NoQuorum,
            Error::CommandTooLarge { size: 9, limit: 8 },
            Error::NoSpace {
                node: 1,
                reason: "full".into(),
            },
            Error::Rejected(ApplyError::InvalidCommand("bad".into())),
        ];
        for e in &refused {
            let r = RequestError::from(&status::from_error(e));
            assert!(!r.may_have_applied(), "{r:?}");
        }
    }

    #[test]
    fn a_learner_left_behind_is_told_apart_and_not_retried() {
        let e = Error::LearnerNotCaughtUp {
            id: 5,
            addr: "n5:7000".into(),
            waited: std::time::Duration::from_secs(10),
        };
        let r = RequestError::from(&status::from_error(&e));
        assert!(matches!(r, RequestError::LearnerNotCaughtUp(_)), "{r:?}");
        assert_eq!(r.to_string(), e.to_string());
        // The add took effect: not a refusal, and not worth sending again.
        assert!(r.may_have_applied() && !r.is_transient());
    }

    #[test]
    fn transport_failures_hide_their_wording() {
        let cases = [
            (Status::unknown("h2 protocol error: http2 error"), true),
            (Status::unavailable("tcp connect error"), true),
            (Status::cancelled("Timeout expired"), true),
            (Status::invalid_argument("bad frame"), false),
        ];
        for (s, retriable) in cases {
            let e = RequestError::from(&s);
            assert_eq!(e.is_transient(), retriable, "{e:?}");
            assert!(e.may_have_applied());
            assert_eq!(e.reason(), "transport");
            assert_eq!(e.to_string(), "the call failed in transit between nodes");
        }
        let e = RequestError::from(&Status::permission_denied("needs admin"));
        assert_eq!(e, RequestError::PermissionDenied("needs admin".into()));
        assert!(!e.is_transient() && !e.may_have_applied());
    }
}
