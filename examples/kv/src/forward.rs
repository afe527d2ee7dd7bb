//! Forwarding a connection's commands into the cluster: writes and reads through the node's
//! [`LocalClient`](raft_grpc::LocalClient) (which forwards to the leader), retried through
//! elections with [`Backoff`], and failures turned into Redis error replies.
//!
//! A reply never carries transport wording, and a write's reply says honestly whether it was
//! applied: `-CLUSTERDOWN …` (not applied), `-OOM …` and `-ERR …` (refused, not applied), or
//! `-TRYAGAIN the outcome is unknown: …` (it may have been applied).

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use raft_core::Consistency;
use raft_core::Session;
use raft_grpc::Backoff;
use raft_grpc::RequestError;

use crate::commands;
use crate::server::Ctx;
use crate::server::now_ms;
use crate::store::Command;
use crate::store::Query;
use crate::store::ReadOp;
use crate::store::Reply;

/// How long a command keeps retrying through elections before the client gets an error.
const RETRY_FOR: Duration = Duration::from_secs(10);

/// How a reply says a write's outcome is unknown (see [`failure`]). After one, the connection
/// registers a new session: the old one may not be able to answer again.
const OUTCOME_UNKNOWN: &str = "TRYAGAIN the outcome is unknown: ";

/// The Redis error a client gets for a call that failed for good. raftkit's messages are
/// written for users and are passed on; a failure in transit between nodes (connection reset,
/// HTTP/2 error) keeps its wording in the log: the client learns only that it may retry, and
/// for a write that the outcome is unknown. A write answers [`OUTCOME_UNKNOWN`] exactly when it
/// may have been applied ([`RequestError::may_have_applied`]).
fn failure(e: &RequestError, write: bool) -> Reply {
    let msg = e.to_string().replace(['\r', '\n'], " ");
    Reply::Error(match e {
        RequestError::Transport { detail, .. } => {
            tracing::debug!(%detail, "a call between nodes failed in transit");
            if write {
                format!("{OUTCOME_UNKNOWN}the request to the leader failed in transit")
            } else {
                "TRYAGAIN the read failed in transit between nodes; it changed nothing".to_string()
            }
        }
        // The connection's session was evicted (more clients than the session capacity): the
        // command was not applied now, but an earlier attempt of it may have been.
        RequestError::UnknownSession(_) if write => format!(
            "{OUTCOME_UNKNOWN}the connection's session expired from the cluster's session table; the command was not applied now, but an earlier attempt may have been"
        ),
        _ if write && e.may_have_applied() => format!("{OUTCOME_UNKNOWN}{msg}"),
        RequestError::NotLeader(_) | RequestError::NoQuorum(_) | RequestError::Shutdown(_) => {
            format!("CLUSTERDOWN {msg}")
        }
        // A read that timed out changed nothing; it may be sent again.
        RequestError::Timeout(_) => format!("TRYAGAIN {msg}"),
        // Redis answers a write over `maxmemory` with -OOM; clients already treat it as "this
        // write was refused, reads still work".
        RequestError::NoSpace(_) => format!("OOM command not allowed: {msg}"),
        // The leader refused this node's own credentials: a configuration fault between the
        // nodes, not the client's; nothing was applied.
        RequestError::Unauthenticated(_) | RequestError::PermissionDenied(_) => {
            format!("ERR the leader refused this node's forwarded call: {msg}")
        }
        _ => format!("ERR {msg}"),
    })
}

/// A write that failed for good.
pub(crate) struct Failed {
    /// What the client is told.
    pub reply: Reply,
    /// Whether the write may have been applied ([`RequestError::may_have_applied`]): its
    /// session may not be able to answer again.
    pub outcome_unknown: bool,
}

/// Sends `cmd` (stamped once, by the caller) until it succeeds or fails for good: a retry sends
/// the very same command, so it is applied at most once.
pub(crate) async fn write(ctx: &Ctx, session: Session, cmd: Command) -> Result<Reply, Failed> {
    attempts(true, || ctx.client.write_in_session(session, &cmd))
        .await
        .map_err(|e| {
            // Writes the cluster could not take or answer (not the state machine's own error
            // replies), by cause: a fixed set of labels.
            metrics::counter!("kv_write_failures_total", "reason" => e.reason()).increment(1);
            Failed {
                reply: failure(&e, true),
                outcome_unknown: e.may_have_applied(),
            }
        })
}

/// Answers `op` at the node's consistency.
pub(crate) async fn read(ctx: &Ctx, op: ReadOp) -> Reply {
    read_at(ctx, op, ctx.consistency).await
}

/// Answers `op` at `consistency`.
async fn read_at(ctx: &Ctx, op: ReadOp, consistency: Consistency) -> Reply {
    read_checked_at(ctx, op, consistency)
        .await
        .unwrap_or_else(|e| e)
}

/// Answers `op` at `consistency`, telling a read that failed (the reply says why) from one
/// that was answered.
pub(crate) async fn read_checked_at(
    ctx: &Ctx,
    op: ReadOp,
    consistency: Consistency,
) -> Result<Reply, Reply> {
    retrying_for(|| {
        let q = Query {
            now: now_ms(),
            op: op.clone(),
        };
        ctx.client.read(q, consistency)
    })
    .await
}

/// `KEYS` as a walk of SCAN steps, each holding the state machine for at most
/// [`commands::SCAN_STEP`] keys, so writes go on between steps. The first step is read at
/// `consistency`; the rest follow locally from there. Like SCAN, a key present for the
/// whole walk is returned; one written during it may or may not be.
///
/// `found` takes each step's keys, in order, as they come, and says whether the walk goes on.
/// The caller encodes them at once, so the node never holds the whole answer twice, and
/// stops the walk as soon as what it found no longer fits in what the client may be sent.
pub(crate) async fn keys(
    ctx: &Ctx,
    consistency: Consistency,
    pattern: Bytes,
    mut found: impl FnMut(Vec<Reply>) -> bool,
) -> Walk {
    let mut cursor = 0u64;
    let mut consistency = consistency;
    loop {
        let op = ReadOp::Scan {
            cursor,
            pattern: Some(pattern.clone()),
            count: commands::SCAN_STEP,
        };
        let step = read_at(ctx, op, consistency).await;
        let Reply::Array(mut parts) = step else {
            return Walk::Failed(step);
        };
        let (Some(Reply::Array(keys)), Some(Reply::Bulk(next))) = (parts.pop(), parts.pop()) else {
            return Walk::Failed(Reply::Error(
                "ERR internal error: malformed scan step".into(),
            ));
        };
        if !found(keys) {
            return Walk::Stopped;
        }
        cursor = std::str::from_utf8(&next)
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        if cursor == 0 {
            return Walk::Done;
        }
        consistency = Consistency::Local;
        tokio::task::yield_now().await;
    }
}

/// How a [`keys`] walk ended.
#[derive(Debug)]
pub(crate) enum Walk {
    /// Every key was found.
    Done,
    /// The caller stopped it.
    Stopped,
    /// A step failed: the reply says why.
    Failed(Reply),
}

/// Makes a call that changes nothing through [`attempts`]: what it answered, or the error
/// reply it failed with.
pub(crate) async fn retrying_for<T, F, Fut>(attempt: F) -> Result<T, Reply>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, RequestError>>,
{
    attempts(false, attempt)
        .await
        .map_err(|e| failure(&e, false))
}

/// Makes `attempt` until it succeeds, fails for good, or [`RETRY_FOR`] has passed, pausing
/// between attempts ([`Backoff`]: 20 ms, doubling up to 500 ms) while the cluster elects or
/// restarts. A write whose last attempt was refused after an earlier one may have been applied
/// fails as [`RequestError::OutcomeUnknown`]: the earlier attempt may still apply.
async fn attempts<T, F, Fut>(write: bool, mut attempt: F) -> Result<T, RequestError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, RequestError>>,
{
    let mut backoff = Backoff::new(RETRY_FOR);
    let mut in_doubt = false;
    loop {
        let e = match attempt().await {
            Ok(r) => return Ok(r),
            Err(e) => e,
        };
        if e.is_transient() && backoff.pause().await {
            tracing::debug!(error = ?e, write, "retried");
            in_doubt |= write && e.may_have_applied();
            continue;
        }
        if in_doubt && !e.may_have_applied() {
            return Err(RequestError::OutcomeUnknown(format!(
                "an earlier attempt may have been applied, and the last one failed: {e}"
            )));
        }
        return Err(e);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use raft_core::LeaderHint;
    use raft_grpc::status::ErrorCode;

    use super::*;

    /// Runs [`attempts`] over attempts that fail with `script`'s errors in turn, then succeed.
    async fn scripted(write: bool, script: Vec<RequestError>) -> Result<(), RequestError> {
        let script = Mutex::new(VecDeque::from(script));
        attempts(write, || {
            let next = script.lock().unwrap().pop_front();
            async move { next.map_or(Ok(()), Err) }
        })
        .await
    }

    #[tokio::test]
    async fn a_write_refused_after_an_attempt_in_doubt_is_outcome_unknown() {
        let doubts = [
            RequestError::Shutdown("the leader is shutting down".into()),
            RequestError::OutcomeUnknown("leader changed".into()),
            RequestError::Transport {
                detail: "connection reset".into(),
                retriable: true,
            },
        ];
        let refusals = [
            RequestError::NoSpace("full".into()),
            RequestError::Unauthenticated("who".into()),
            RequestError::TooLarge("big".into()),
        ];
        for doubt in &doubts {
            for refusal in &refusals {
                let e = scripted(true, vec![doubt.clone(), refusal.clone()])
                    .await
                    .unwrap_err();
                assert!(e.may_have_applied(), "{doubt:?} then {refusal:?}: {e:?}");
                let reply = text(failure(&e, true));
                assert!(reply.starts_with(OUTCOME_UNKNOWN), "{reply}");
            }
        }
        // Nothing in doubt before the refusal: it stands. And a read is never in doubt.
        let not_leader = RequestError::NotLeader(LeaderHint::unknown());
        let e = scripted(true, vec![not_leader, refusals[0].clone()])
            .await
            .unwrap_err();
        assert!(matches!(e, RequestError::NoSpace(_)), "{e:?}");
        let e = scripted(false, vec![doubts[0].clone(), refusals[0].clone()])
            .await
            .unwrap_err();
        assert!(matches!(e, RequestError::NoSpace(_)), "{e:?}");
    }

    fn text(r: Reply) -> String {
        match r {
            Reply::Error(e) => e,
            other => panic!("not an error reply: {other:?}"),
        }
    }

    #[test]
    fn transport_failures_are_retriable_and_never_show_transport_wording() {
        let transport = [
            "h2 protocol error: http2 error",
            "error trying to connect: tcp connect error: Connection refused",
            "operation was canceled: connection closed",
            "h2 protocol error: stream no longer needed",
        ]
        .map(|detail| RequestError::Transport {
            detail: detail.into(),
            retriable: true,
        });
        for e in &transport {
            assert!(e.is_transient());
            let w = text(failure(e, true));
            assert!(w.starts_with(OUTCOME_UNKNOWN), "{w}");
            let r = text(failure(e, false));
            assert!(r.starts_with("TRYAGAIN ") && !r.contains("unknown"), "{r}");
            for e in [w, r] {
                for word in ["h2", "http2", "tonic", "tcp", "canceled"] {
                    assert!(!e.contains(word), "{e:?} shows {word:?}");
                }
            }
        }
    }

    #[test]
    fn raftkit_errors_keep_their_meaning() {
        let not_leader = RequestError::NotLeader(LeaderHint::unknown());
        assert_eq!(
            text(failure(&not_leader, true)),
            "CLUSTERDOWN not the leader; the leader is unknown"
        );
        let timeout = RequestError::Timeout("timed out after 5s".into());
        assert_eq!(
            text(failure(&timeout, true)),
            format!("{OUTCOME_UNKNOWN}timed out after 5s")
        );
        let evicted = RequestError::UnknownSession("session 9 expired".into());
        assert!(text(failure(&evicted, true)).starts_with(OUTCOME_UNKNOWN));
        let full = RequestError::NoSpace("no space: node 1 is out of storage".into());
        assert!(text(failure(&full, true)).starts_with("OOM "));
        let big = RequestError::TooLarge("command\r\ntoo large".into());
        assert_eq!(text(failure(&big, true)), "ERR command  too large");
        let slow_read = RequestError::Timeout("timed out after 5s".into());
        assert_eq!(
            text(failure(&slow_read, false)),
            "TRYAGAIN timed out after 5s"
        );
    }

    #[test]
    fn a_write_answers_outcome_unknown_exactly_when_it_may_have_applied() {
        let errors = [
            RequestError::NotLeader(LeaderHint::unknown()),
            RequestError::NoQuorum("no quorum".into()),
            RequestError::Shutdown("the leader is shutting down".into()),
            RequestError::Timeout("timed out".into()),
            RequestError::OutcomeUnknown("leader changed".into()),
            RequestError::InvalidCommand("garbage".into()),
            RequestError::SessionExpired("forgotten".into()),
            RequestError::UnknownSession("evicted".into()),
            RequestError::TooLarge("big".into()),
            RequestError::NoSpace("full".into()),
            RequestError::Unauthenticated("who".into()),
            RequestError::PermissionDenied("no".into()),
            RequestError::Busy("backup".into()),
            RequestError::Internal {
                code: ErrorCode::Storage,
                message: "disk".into(),
            },
            RequestError::Refused {
                code: None,
                message: "no".into(),
            },
        ];
        for e in &errors {
            let reply = text(failure(e, true));
            assert_eq!(
                reply.starts_with(OUTCOME_UNKNOWN),
                e.may_have_applied(),
                "{e:?}: {reply}"
            );
        }
    }
}
