//! The internal `RaftInternal` service between nodes: replication (unary and streamed), votes,
//! leader transfer, snapshots in bounded chunks, and read indexes for follower reads. Every call
//! is checked for its cluster id and the sender's incarnation, and every payload for its target
//! and encoding, before the node sees it.

use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use raft_core::NodeId;
use raft_core::StateMachine;
use raft_core::cluster_id::ClusterIdError;
use raft_core::snapshot::SnapshotError;
use raft_core::transport::RpcHandlerError;
use raft_core::transport::SnapshotReceive;
use raft_core::transport::rpc;
use raft_core::types::Vote;
use tonic::Code;
use tonic::Request;
use tonic::Response;
use tonic::Status;
use tonic::Streaming;

use crate::auth;
use crate::budget::arrival_limit;
use crate::pb;
use crate::status;
use crate::status::ErrorCode;
use crate::wire;

use crate::server::Shared;

fn handler_status(e: RpcHandlerError) -> Status {
    match e {
        RpcHandlerError::Shutdown(_) => {
            status::status(Code::Unavailable, ErrorCode::Shutdown, e.to_string())
        }
        RpcHandlerError::Invalid(m) => status::invalid(m),
        RpcHandlerError::Snapshot(SnapshotError::TooLarge { .. }) => {
            status::status(Code::OutOfRange, ErrorCode::TooLarge, e.to_string())
        }
        RpcHandlerError::Snapshot(SnapshotError::Corrupt { .. })
        | RpcHandlerError::Snapshot(SnapshotError::LongerThanAnnounced { .. }) => {
            status::invalid(e.to_string())
        }
        // The sender backs off and retries (a `Network` error on its side).
        RpcHandlerError::Snapshot(SnapshotError::Busy)
        | RpcHandlerError::Snapshot(SnapshotError::NoSpace { .. }) => {
            status::status(Code::ResourceExhausted, ErrorCode::Storage, e.to_string())
        }
        RpcHandlerError::Snapshot(_) => {
            status::status(Code::Internal, ErrorCode::Storage, e.to_string())
        }
        RpcHandlerError::Cluster(
            ClusterIdError::Mismatch { .. } | ClusterIdError::Missing { .. },
        ) => status::status(
            Code::FailedPrecondition,
            ErrorCode::WrongCluster,
            e.to_string(),
        ),
        RpcHandlerError::Cluster(_) => {
            status::status(Code::Internal, ErrorCode::Storage, e.to_string())
        }
        RpcHandlerError::Incarnation(_) => status::status(
            Code::FailedPrecondition,
            ErrorCode::WipedNode,
            e.to_string(),
        ),
        _ => status::status(Code::Internal, ErrorCode::Internal, e.to_string()),
    }
}

impl<S: StateMachine> Shared<S> {
    /// Checks the cluster id an internal call carries (adopting it on a node that has none) and,
    /// when the call names its sender, that sender's incarnation. Returns the sender it named
    /// (`x-raftkit-from`; with peer certificates, one of the ids the caller's certificate
    /// names), read once here for the whole call.
    async fn check_cluster<T>(&self, req: &Request<T>) -> Result<Option<NodeId>, Status> {
        let meta = req.metadata();
        let theirs = match meta.get(auth::CLUSTER_ID_KEY) {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| status::invalid("malformed cluster id"))?,
            ),
        };
        let from = crate::transport::metadata_u64(meta, auth::FROM_KEY, 10);
        let expects = crate::transport::metadata_u64(meta, crate::transport::EXPECT_KEY, 16);
        // A call meant for this node's wiped predecessor is refused before its cluster id is
        // adopted: a fresh node must not be bound to the cluster of a request it refuses (it
        // would then form its own new cluster under that id, or refuse the one it joins).
        if let (Some(from), Some(_)) = (from, expects) {
            self.handler
                .check_incarnation(from, None, expects)
                .map_err(handler_status)?;
        }
        self.handler
            .check_cluster(theirs)
            .await
            .map_err(handler_status)?;
        if let Some(from) = from {
            self.handler
                .check_incarnation(
                    from,
                    crate::transport::metadata_u64(meta, crate::transport::INCARNATION_KEY, 16),
                    expects,
                )
                .map_err(handler_status)?;
        }
        Ok(from)
    }
}

/// A request from a peer whose payload may speak for a node: a vote's candidate, or the leader
/// of an append, a snapshot or a leadership transfer, is its sender.
trait FromSender {
    /// The vote naming the node the payload speaks for, if it names one.
    fn sender_vote(&self) -> Option<&Vote>;
}

impl FromSender for rpc::AppendEntriesRequest {
    fn sender_vote(&self) -> Option<&Vote> {
        Some(&self.vote)
    }
}

impl FromSender for rpc::VoteRequest {
    fn sender_vote(&self) -> Option<&Vote> {
        Some(&self.vote)
    }
}

/// A snapshot's vote, sent in its first chunk.
impl FromSender for Vote {
    fn sender_vote(&self) -> Option<&Vote> {
        Some(self)
    }
}

/// The leader that hands its leadership on sends the request.
impl FromSender for rpc::TransferLeaderRequest {
    fn sender_vote(&self) -> Option<&Vote> {
        Some(self.from_leader())
    }
}

/// Decodes a peer's `payload` (`what` names it in errors) and refuses it if it speaks for
/// another node than `from`, the sender the call named.
fn decode_from<T>(from: Option<NodeId>, payload: &[u8], what: &str) -> Result<T, Status>
where
    T: FromSender + serde::de::DeserializeOwned,
{
    let m: T = wire::decode(payload, what)?;
    match (from, m.sender_vote()) {
        (Some(from), Some(vote)) if vote.leader_id.node_id != from => {
            Err(status::invalid(format!(
                "{what} speaks for node {}, but comes from node {from}",
                vote.leader_id.node_id
            )))
        }
        _ => Ok(m),
    }
}

/// How long a snapshot stream may go without a chunk before it is dropped (the node receives
/// one snapshot at a time, so a stalled sender would keep the leader's out). Only a chunk that
/// carries data (or the last chunk) is awaited this long: an empty chunk before the last is
/// refused, so it cannot keep a stream alive.
const SNAPSHOT_CHUNK_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) struct Internal<S: StateMachine>(pub(super) Arc<Shared<S>>);

impl<S: StateMachine> Internal<S> {
    /// Decodes a request for this node from `from` (see [`decode_from`]).
    fn decode_request<T>(
        &self,
        from: Option<NodeId>,
        r: &pb::RaftRequest,
        what: &str,
    ) -> Result<T, Status>
    where
        T: FromSender + serde::de::DeserializeOwned,
    {
        self.0.check_target(r.target)?;
        decode_from(from, &r.payload, what)
    }

    /// An answer, carrying this node's incarnation.
    fn reply<T: serde::Serialize>(&self, value: &T) -> Result<Response<pb::RaftReply>, Status> {
        let mut r = Response::new(pb::RaftReply {
            payload: wire::encode(value)?,
        });
        crate::transport::stamp_incarnation(
            r.metadata_mut(),
            crate::transport::INCARNATION_KEY,
            self.0.handler.incarnation(),
        );
        Ok(r)
    }

    /// Checks a peer's call, decodes its request (`what` names it in errors) and checks that it
    /// speaks for its sender, answers it with `handle` and encodes the answer.
    async fn unary<Req, Resp, F, Fut>(
        &self,
        req: Request<pb::RaftRequest>,
        what: &str,
        handle: F,
    ) -> Result<Response<pb::RaftReply>, Status>
    where
        Req: FromSender + serde::de::DeserializeOwned,
        Resp: serde::Serialize,
        F: FnOnce(Req) -> Fut,
        Fut: Future<Output = Result<Resp, RpcHandlerError>>,
    {
        let from = self.0.check_cluster(&req).await?;
        let msg = self.decode_request(from, req.get_ref(), what)?;
        let resp = handle(msg).await.map_err(handler_status)?;
        self.reply(&resp)
    }
}

#[tonic::async_trait]
impl<S: StateMachine> pb::raft_internal_server::RaftInternal for Internal<S> {
    async fn append_entries(
        &self,
        req: Request<pb::RaftRequest>,
    ) -> Result<Response<pb::RaftReply>, Status> {
        self.0.stats.append_message(req.get_ref().payload.len());
        self.unary(req, "append request", |m| self.0.handler.append_entries(m))
            .await
    }

    type StreamAppendStream = BoxStream<'static, Result<pb::RaftReply, Status>>;

    async fn stream_append(
        &self,
        req: Request<Streaming<pb::RaftRequest>>,
    ) -> Result<Response<Self::StreamAppendStream>, Status> {
        let from = self.0.check_cluster(&req).await?;
        let shared = self.0.clone();
        // A bad request ends the input; the caller learns why after the answers so far.
        let failure: Arc<Mutex<Option<Status>>> = Arc::default();
        let fail = failure.clone();
        let input = futures_util::stream::unfold(req.into_inner(), move |mut s| {
            let shared = shared.clone();
            let fail = fail.clone();
            async move {
                let r = match s.message().await {
                    Ok(Some(r)) => r,
                    Ok(None) | Err(_) => return None,
                };
                shared.stats.append_message(r.payload.len());
                let checked = shared.check_target(r.target).and_then(|_| {
                    decode_from::<rpc::AppendEntriesRequest>(from, &r.payload, "append request")
                });
                match checked {
                    Ok(m) => Some((m, s)),
                    Err(status) => {
                        *fail.lock().unwrap_or_else(|p| p.into_inner()) = Some(status);
                        None
                    }
                }
            }
        });
        // The stream ends when the server shuts down; the leader reconnects to whoever serves.
        let answers = self
            .0
            .handler
            .stream_append(input.take_until(self.0.stopped()).boxed())
            .take_until(self.0.stopped())
            .map(|r| match r {
                Ok(res) => wire::encode(&res).map(|payload| pb::RaftReply { payload }),
                Err(e) => Err(handler_status(e)),
            });
        let tail = futures_util::stream::once(async move {
            failure.lock().unwrap_or_else(|p| p.into_inner()).take()
        })
        .filter_map(|f| async move { f.map(Err) });
        let mut r = Response::new(answers.chain(tail).boxed());
        crate::transport::stamp_incarnation(
            r.metadata_mut(),
            crate::transport::INCARNATION_KEY,
            self.0.handler.incarnation(),
        );
        Ok(r)
    }

    async fn vote(&self, req: Request<pb::RaftRequest>) -> Result<Response<pb::RaftReply>, Status> {
        self.unary(req, "vote request", |m| self.0.handler.vote(m))
            .await
    }

    async fn pre_vote(
        &self,
        req: Request<pb::RaftRequest>,
    ) -> Result<Response<pb::RaftReply>, Status> {
        self.unary(req, "pre-vote request", |m| self.0.handler.pre_vote(m))
            .await
    }

    async fn transfer_leader(
        &self,
        req: Request<pb::RaftRequest>,
    ) -> Result<Response<pb::RaftReply>, Status> {
        self.unary(req, "transfer-leader request", |m| {
            self.0.handler.transfer_leader(m)
        })
        .await
    }

    async fn install_snapshot(
        &self,
        req: Request<Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<pb::RaftReply>, Status> {
        let from = self.0.check_cluster(&req).await?;
        let shared = &self.0;
        let max_chunk = shared.opts.max_snapshot_chunk_bytes;
        let mut chunks = req.into_inner();
        let first = chunks
            .message()
            .await?
            .ok_or_else(|| status::invalid("empty snapshot stream"))?;
        shared.check_target(first.target)?;
        let vote: Vote = decode_from(from, &first.vote, "snapshot vote")?;
        // The vote, the size and the one-at-a-time rule are checked before any data is written.
        // Dropping the sink on any early return deletes what was received.
        if first.total_bytes == 0 {
            return Err(status::invalid(
                "a snapshot stream must announce its size in its first chunk",
            ));
        }
        let mut sink = match shared
            .handler
            .snapshot_sink(&vote, Some(first.total_bytes))
            .map_err(handler_status)?
        {
            SnapshotReceive::Receive(sink) => sink,
            SnapshotReceive::Refuse(answer) => return self.reply(&answer),
        };
        // The one receive slot is held from here, so the data must keep coming: by any moment,
        // what arrived must be worth the time since the start, at `min_transfer_rate`, beyond
        // the allowance of an empty message (30 s, or the request timeout if longer). A sender
        // that trickles data (one byte every 29 s keeps SNAPSHOT_CHUNK_TIMEOUT from firing)
        // loses the slot within that allowance, however large a size it announced; an honest
        // sender at the rate never meets this bound, and gives up on its own (after its soft
        // TTL plus the size at the same rate) before the whole snapshot's bound here.
        let total = first.total_bytes;
        let request_timeout = shared.node.config().request_timeout;
        let min_rate = shared.opts.min_transfer_rate;
        let started = tokio::time::Instant::now();
        let mut chunk = first;
        loop {
            shared.check_target(chunk.target)?;
            if chunk.offset != sink.written() {
                return Err(status::invalid(format!(
                    "snapshot chunk out of order: offset {}, but {} bytes were received",
                    chunk.offset,
                    sink.written()
                )));
            }
            // Our sender never sends one (it reads the file in chunks until the announced size,
            // and only an empty snapshot, which is refused above, would start empty); a peer that
            // did could hold the receive slot without sending anything.
            if chunk.data.is_empty() && !chunk.last {
                return Err(status::invalid(format!(
                    "empty snapshot chunk at offset {} before the last",
                    chunk.offset
                )));
            }
            if chunk.data.len() > max_chunk {
                return Err(status::status(
                    Code::OutOfRange,
                    ErrorCode::TooLarge,
                    format!(
                        "snapshot chunk of {} bytes exceeds {max_chunk}",
                        chunk.data.len()
                    ),
                ));
            }
            shared.stats.snapshot_chunks.fetch_add(1, Ordering::Relaxed);
            shared
                .stats
                .largest_snapshot_chunk
                .fetch_max(chunk.data.len() as u64, Ordering::Relaxed);
            let last = chunk.last;
            let data = chunk.data;
            sink = tokio::task::spawn_blocking(move || sink.write(&data).map(|_| sink))
                .await
                .map_err(|e| status::status(Code::Internal, ErrorCode::Internal, e.to_string()))?
                .map_err(|e| handler_status(RpcHandlerError::Snapshot(e)))?;
            if last {
                break;
            }
            let now = tokio::time::Instant::now();
            let idle = now + SNAPSHOT_CHUNK_TIMEOUT;
            // `None` only past what the clock can represent: no bound then but the idle one.
            let paced = arrival_limit(sink.written(), request_timeout, min_rate);
            let deadline = started.checked_add(paced);
            let wait_until = deadline.map_or(idle, |d| d.min(idle));
            let timed_out = || {
                let why = if wait_until < idle {
                    format!(
                        "snapshot of {total} bytes arriving slower than {min_rate} bytes/s: {} \
                         received in {:?}",
                        sink.written(),
                        tokio::time::Instant::now().saturating_duration_since(started)
                    )
                } else {
                    format!("no snapshot chunk for {SNAPSHOT_CHUNK_TIMEOUT:?}")
                };
                status::status(Code::DeadlineExceeded, ErrorCode::Timeout, why)
            };
            // Past the deadline (the last write took the rest of it), even a chunk already
            // waiting is not taken.
            if wait_until <= now {
                return Err(timed_out());
            }
            chunk = tokio::time::timeout_at(wait_until, chunks.message())
                .await
                .map_err(|_| timed_out())??
                .ok_or_else(|| status::invalid("snapshot stream ended before its last chunk"))?;
        }
        let (meta, data) = tokio::task::spawn_blocking(move || sink.finish())
            .await
            .map_err(|e| status::status(Code::Internal, ErrorCode::Internal, e.to_string()))?
            .map_err(|e| handler_status(RpcHandlerError::Snapshot(e)))?;
        shared
            .stats
            .snapshots_received
            .fetch_add(1, Ordering::Relaxed);
        let resp = shared
            .handler
            .install_snapshot(vote, meta, data)
            .await
            .map_err(handler_status)?;
        self.reply(&resp)
    }

    async fn read_index(
        &self,
        req: Request<pb::ReadIndexRequest>,
    ) -> Result<Response<pb::ReadIndexReply>, Status> {
        self.0.check_cluster(&req).await?;
        let r = req.into_inner();
        self.0.check_target(r.target)?;
        let c = pb::consistency(r.consistency)?;
        let at = self
            .0
            .node
            .read_index(c)
            .await
            .map_err(|e| status::from_error(&e))?;
        Ok(Response::new(pb::ReadIndexReply {
            term: at.term,
            index: at.index,
            time_ms: at.time_ms,
        }))
    }
}

impl<S: StateMachine> Shared<S> {
    fn check_target(&self, target: NodeId) -> Result<(), Status> {
        let me = self.node.id();
        if target != me {
            return Err(status::status(
                Code::FailedPrecondition,
                ErrorCode::InvalidRequest,
                format!("request for node {target} reached node {me}"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GrpcOptions;
    use crate::budget::snapshot_send_limit;

    #[test]
    fn an_honest_sender_gives_up_before_the_receiver_does() {
        for rate in [0, 1, 64 << 10, 1 << 20, 8 << 20, 1 << 30, u64::MAX] {
            for rt in [1, 10, 40, 120, 3600].map(Duration::from_secs) {
                for total in [1, 8 << 20, 1 << 30, 64 << 30, u64::MAX] {
                    let ours = arrival_limit(total, rt, rate);
                    // The sender's RPC deadline is its soft TTL, ¾ of its request timeout.
                    let sender = snapshot_send_limit(rt * 3 / 4, total, rate);
                    assert!(ours >= sender, "{total} bytes, {rt:?}, {rate} B/s");
                    assert!(ours >= SNAPSHOT_CHUNK_TIMEOUT);
                }
            }
        }
        // And it is a bound: 64 GiB (the default largest snapshot) in at most 8,222 s at the
        // default rate, and proportionally longer at a lower one.
        let default_rate = GrpcOptions::default().min_transfer_rate;
        assert_eq!(
            arrival_limit(64 << 30, Duration::from_secs(10), default_rate),
            Duration::from_secs(30 + 8192)
        );
        assert_eq!(
            arrival_limit(64 << 30, Duration::from_secs(10), 1 << 20),
            Duration::from_secs(30 + 65536)
        );
    }
}
