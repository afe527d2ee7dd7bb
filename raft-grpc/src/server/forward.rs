//! Forwarding: a write or membership call that reaches a follower goes to the leader — one
//! hop, carrying the caller's remaining deadline and identity — or, when forwarding is off (or,
//! for a write, the client asks), is answered with the leader's address. A linearizable read on
//! a follower fetches a read index from the leader and is answered from the follower's own
//! state machine.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::future::BoxFuture;
use raft_core::Consistency;
use raft_core::Error;
use raft_core::LeaderHint;
use raft_core::NodeId;
use raft_core::Queryable;
use raft_core::ReadIndex;
use raft_core::Role;
use raft_core::Session;
use raft_core::StateMachine;
use raft_core::types::Request as RaftRequest;
use tonic::Code;
use tonic::Request;
use tonic::Status;
use tonic::transport::Channel;

use crate::auth::Caller;
use crate::pb;
use crate::pb::cluster_client::ClusterClient as PbClusterClient;
use crate::pb::raft_internal_client::RaftInternalClient;
use crate::status;
use crate::status::ErrorCode;

use crate::server::Shared;

/// What a Write call does besides (or instead of) applying its command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// Apply the command, in the call's session if it has one.
    Apply,
    /// Open a session registered with this key; 0 is no key (see
    /// [`Node::register_session_keyed`](raft_core::Node::register_session_keyed)).
    Register(u64),
    /// Close the call's session.
    Close,
}

impl Op {
    /// The operation a Write request asks for.
    pub(crate) fn from_pb(req: &pb::WriteRequest) -> Result<Op, Status> {
        match pb::SessionOp::try_from(req.session_op) {
            Ok(pb::SessionOp::None) => Ok(Op::Apply),
            Ok(pb::SessionOp::Register) => Ok(Op::Register(req.register_key)),
            Ok(pb::SessionOp::Close) => Ok(Op::Close),
            Err(_) => Err(status::invalid(format!(
                "unknown session_op {}",
                req.session_op
            ))),
        }
    }

    /// The `session_op` and `register_key` fields of a Write request asking for it.
    pub(crate) fn to_pb(self) -> (i32, u64) {
        match self {
            Op::Apply => (pb::SessionOp::None.into(), 0),
            Op::Register(key) => (pb::SessionOp::Register.into(), key),
            Op::Close => (pb::SessionOp::Close.into(), 0),
        }
    }
}

/// Metadata marking a request a node forwarded on a client's behalf; it is not forwarded again.
const FORWARDED_KEY: &str = "x-raftkit-forwarded";

/// Whether a node forwarded this request on a client's behalf (so it is not forwarded again).
pub(super) fn is_forwarded<T>(req: &Request<T>) -> bool {
    req.metadata().contains_key(FORWARDED_KEY)
}

/// The deadline the caller gave (the `grpc-timeout` header), if any. As in gRPC's
/// specification (and tonic's own reading of it), the value has one to eight digits; a longer or
/// malformed one is ignored.
pub(super) fn caller_timeout<T>(req: &Request<T>) -> Option<Duration> {
    let v = req.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

impl<S: StateMachine> Shared<S> {
    pub(super) fn own_addr(&self) -> String {
        self.node.member_addr(self.node.id()).unwrap_or_default()
    }

    fn channel(&self, addr: &str) -> Result<Channel, Status> {
        self.pool.channel(addr)
    }

    pub(super) fn cluster_client(&self, addr: &str) -> Result<PbClusterClient<Channel>, Status> {
        let max = self.opts.max_message_bytes;
        Ok(PbClusterClient::new(self.channel(addr)?)
            .max_decoding_message_size(max)
            .max_encoding_message_size(max))
    }

    /// A request forwarded on a caller's behalf, carrying its remaining deadline and who the
    /// caller is (this node itself when `caller` is `None`).
    pub(super) fn forward_request<T>(
        &self,
        msg: T,
        timeout: Option<Duration>,
        caller: Option<&Caller>,
    ) -> Request<T> {
        let mut r = pb::request(msg, self.deadline(timeout));
        let me = self.node.id();
        match caller {
            Some(c) => self.opts.auth.stamp_forward(r.metadata_mut(), me, c),
            None => self.opts.auth.stamp_peer(r.metadata_mut(), me),
        }
        r.metadata_mut().insert(
            FORWARDED_KEY,
            tonic::metadata::MetadataValue::from_static("1"),
        );
        self.stats.forwarded.fetch_add(1, Ordering::Relaxed);
        r
    }

    /// The caller's deadline, or the node's request timeout if it gave none.
    fn deadline(&self, caller: Option<Duration>) -> Duration {
        caller.unwrap_or(self.node.config().request_timeout)
    }

    /// Runs `local` on this node; if it is not the leader, forwards with `forward` (once).
    pub(super) async fn on_leader<T, L, LF, F, FF>(
        &self,
        forwarded: bool,
        local: L,
        forward: F,
    ) -> Result<T, Status>
    where
        L: FnOnce() -> LF,
        LF: Future<Output = raft_core::Result<T>>,
        F: FnOnce(PbClusterClient<Channel>) -> FF,
        FF: Future<Output = Result<T, Status>>,
    {
        let e = match local().await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        if let Error::NotLeader(hint) = &e
            && hint.is_known()
            && !forwarded
            && self.opts.forward_to_leader
            && let Some(addr) = hint.addr()
        {
            return forward(self.cluster_client(addr)?).await;
        }
        Err(status::from_error(&e))
    }

    /// Applies an encoded write (or opens or closes a session, as `op` says) on this node if it
    /// leads, or forwards it once to the leader on behalf of `caller`.
    pub(super) async fn write(
        &self,
        session: Option<Session>,
        command: bytes::Bytes,
        op: Op,
        forwarded: bool,
        timeout: Option<Duration>,
        caller: Option<&Caller>,
    ) -> Result<pb::WriteReply, Status> {
        let request = RaftRequest {
            session,
            command: command.clone(),
        };
        let (session_op, register_key) = op.to_pb();
        let forward_msg = pb::WriteRequest {
            command,
            session: session.map(Into::into),
            no_forward: true,
            session_op,
            register_key,
        };
        self.on_leader(
            forwarded,
            || async {
                let (output, session_id) = match op {
                    Op::Apply => (self.node.write_encoded(request).await?, 0),
                    Op::Register(0) => (bytes::Bytes::new(), self.node.register_session().await?),
                    Op::Register(key) => (
                        bytes::Bytes::new(),
                        self.node.register_session_keyed(key).await?,
                    ),
                    Op::Close => {
                        let id = session.map(|s| s.client_id).ok_or_else(|| {
                            raft_core::Error::Config("closing a session needs its client id".into())
                        })?;
                        self.node.close_session(id).await?;
                        (bytes::Bytes::new(), 0)
                    }
                };
                Ok(pb::WriteReply {
                    output,
                    leader_id: self.node.id(),
                    // Filled in by the cluster service, the one caller that sends it on.
                    leader_addr: String::new(),
                    session_id,
                })
            },
            |mut c| async move {
                Ok(c.write(self.forward_request(forward_msg, timeout, caller))
                    .await?
                    .into_inner())
            },
        )
        .await
    }

    /// Asks the leader for the position a linearizable read must wait for.
    pub(super) async fn leader_read_index(
        &self,
        consistency: Consistency,
        timeout: Option<Duration>,
    ) -> Result<ReadIndex, Status> {
        let hint = self.node.leader();
        let (Some(leader), Some(addr)) = (hint.id(), hint.addr()) else {
            return Err(status::not_leader(&LeaderHint::unknown()));
        };
        let mut client = RaftInternalClient::new(self.channel(addr)?);
        let req = pb::ReadIndexRequest {
            target: leader,
            consistency: pb::Consistency::from(consistency).into(),
        };
        let mut req = pb::request(req, self.deadline(timeout));
        crate::transport::stamp_internal(
            req.metadata_mut(),
            &self.opts.auth,
            self.node.id(),
            self.handler.cluster_id(),
        );
        let r = client.read_index(req).await?.into_inner();
        Ok(ReadIndex {
            term: r.term,
            index: r.index,
            time_ms: r.time_ms,
        })
    }
}

impl<S: Queryable> Shared<S> {
    /// Answers a query from this node's state machine at `consistency`; a linearizable read on
    /// a follower waits for the leader's read index.
    pub(super) async fn read(
        &self,
        query: S::Query,
        c: Consistency,
        timeout: Option<Duration>,
    ) -> Result<S::Reply, Status> {
        let node = &self.node;
        let answer = if c == Consistency::Local || node.role() == Role::Leader {
            // If leadership moved between the check and the read, the error redirects the
            // client to the new leader.
            node.query(c, query).await
        } else {
            let at = self.leader_read_index(c, timeout).await?;
            node.query_at(at, query).await
        };
        answer.map_err(|e| status::from_error(&e))
    }
}

/// The cluster service's `Read` for a [`Queryable`] state machine: decodes the query (once, up
/// front, so a bad one is refused before any coordination), answers it and encodes the reply.
pub(super) fn serve_query<S: Queryable>(
    shared: &Shared<S>,
    r: pb::ReadRequest,
    timeout: Option<Duration>,
) -> BoxFuture<'_, Result<pb::ReadReply, Status>> {
    Box::pin(async move {
        let c = pb::consistency(r.consistency)?;
        let query: S::Query = raft_core::codec::decode_input(&r.query).map_err(|e| {
            status::status(
                Code::InvalidArgument,
                ErrorCode::InvalidCommand,
                format!("bad query: {e}"),
            )
        })?;
        let reply = shared.read(query, c, timeout).await?;
        // A reply over the message limit is refused as soon as its encoding passes the limit:
        // its parts may share one large value many times over, so its encoding can be far
        // larger than the reply. The limit applies to the whole `ReadReply` message, so its own
        // fields count too.
        let max = shared.opts.max_message_bytes;
        let served_by = shared.node.id();
        let too_large = |what: String| {
            status::status(
                Code::ResourceExhausted,
                ErrorCode::TooLarge,
                format!("{what} exceeds the message limit of {max} bytes"),
            )
        };
        let bytes = raft_core::codec::encode_within(&reply, max)
            .map_err(|e| status::status(Code::Internal, ErrorCode::OutputEncoding, e.to_string()))?
            .ok_or_else(|| too_large("the reply".into()))?;
        let size = read_reply_len(bytes.len(), served_by);
        if size > max {
            return Err(too_large(format!("the reply of {size} bytes")));
        }
        Ok(pb::ReadReply {
            reply: bytes.into(),
            served_by,
        })
    })
}

/// The encoded size of a `ReadReply` whose answer takes `answer` bytes, from `served_by`.
fn read_reply_len(answer: usize, served_by: NodeId) -> usize {
    use prost::encoding::encoded_len_varint;
    use prost::encoding::key_len;
    // Fields equal to their default are not encoded.
    let answer_field = match answer {
        0 => 0,
        n => key_len(1) + encoded_len_varint(n as u64) + n,
    };
    let served_by_field = match served_by {
        0 => 0,
        id => key_len(2) + encoded_len_varint(id),
    };
    answer_field.saturating_add(served_by_field)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_reply_len_is_what_prost_encodes() {
        use prost::Message;
        for answer in [0, 1, 127, 128, 16_383, 16_384, 1 << 20, (1 << 21) + 3] {
            for served_by in [0, 1, 127, 128, u64::MAX] {
                let reply = pb::ReadReply {
                    reply: vec![7u8; answer].into(),
                    served_by,
                };
                assert_eq!(
                    read_reply_len(answer, served_by),
                    reply.encoded_len(),
                    "answer {answer} bytes, served by {served_by}"
                );
            }
        }
    }

    #[test]
    fn caller_deadlines_parse() {
        let mut r = Request::new(());
        assert_eq!(caller_timeout(&r), None);
        r.metadata_mut()
            .insert("grpc-timeout", "250m".parse().unwrap());
        assert_eq!(caller_timeout(&r), Some(Duration::from_millis(250)));
        r.metadata_mut()
            .insert("grpc-timeout", "3S".parse().unwrap());
        assert_eq!(caller_timeout(&r), Some(Duration::from_secs(3)));
        r.metadata_mut()
            .insert("grpc-timeout", "x".parse().unwrap());
        assert_eq!(caller_timeout(&r), None);
        r.metadata_mut()
            .insert("grpc-timeout", "99999999H".parse().unwrap());
        assert_eq!(
            caller_timeout(&r),
            Some(Duration::from_secs(99_999_999 * 3600))
        );
        for bad in ["100000000H", "360000000000S", "+5S", "S", "-1m"] {
            r.metadata_mut()
                .insert("grpc-timeout", bad.parse().unwrap());
            assert_eq!(caller_timeout(&r), None, "{bad}");
        }
    }

    #[test]
    fn any_caller_deadline_can_be_forwarded() {
        // The longest deadline a caller can give goes out again as a valid header.
        let r = pb::request((), Duration::from_secs(99_999_999 * 3600));
        let mut fwd = Request::new(());
        fwd.metadata_mut().insert(
            "grpc-timeout",
            r.metadata().get("grpc-timeout").unwrap().clone(),
        );
        assert!(caller_timeout(&fwd).is_some());
        // And a longer one (a caller of the library) is capped rather than refused.
        let long = pb::request((), Duration::MAX);
        assert!(long.metadata().get("grpc-timeout").is_some());
    }
}
