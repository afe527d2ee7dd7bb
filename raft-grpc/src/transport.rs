//! The outgoing side: openraft's network factory over pooled tonic channels.
//!
//! Every RPC carries a deadline (openraft's soft TTL). Failures are classified the way openraft
//! backs off on them: a peer that cannot be reached or refuses is `Unreachable` (back off), a
//! deadline is a `Timeout`, anything transient is a `NetworkError` (retry soon). Replication
//! runs as one pipelined bidirectional stream per peer; snapshots stream in bounded chunks read
//! from disk as they are sent.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::OnceLock;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use openraft::BasicNode;
use openraft::RaftNetworkFactory;
use raft_core::ClusterId;
use raft_core::NodeId;
use raft_core::snapshot::SnapshotData;
use raft_core::transport::SharedRpcHandler;
use raft_core::transport::rpc;
use raft_core::transport::rpc::RPCOption;
use raft_core::transport::rpc::RaftNetworkV2;
use raft_core::types::TypeConfig;
use raft_core::types::Vote;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::Request;
use tonic::Status;
use tonic::metadata::AsciiMetadataValue;
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;

use crate::auth;
use crate::auth::Auth;
use crate::budget::snapshot_send_limit;
use crate::net::Pool;
use crate::options::GrpcOptions;
use crate::pb;
use crate::pb::raft_internal_client::RaftInternalClient;
use crate::peer_health::PeerHealth;
use crate::wire;

/// The transport a node sends through: pass a clone of it to [`raft_core::Node::start`] and a
/// reference to [`crate::Server::new`], so replication and forwarded requests share one
/// connection per peer and one reconnect backoff (clones share the connections). Forwarded
/// requests therefore also share each peer's HTTP/2 flow-control window with snapshot streams.
#[derive(Clone)]
pub struct GrpcTransport {
    id: NodeId,
    pool: Pool,
    opts: Arc<GrpcOptions>,
    /// The node's handler, once its server is made: the source of the cluster id to send.
    local: Arc<OnceLock<SharedRpcHandler>>,
    /// Whether each peer answers, so that a peer going down and coming back is logged once
    /// each way rather than on every heartbeat.
    peers: Arc<Mutex<HashMap<NodeId, Arc<PeerHealth>>>>,
}

/// The metadata key of the sender's incarnation (16 hex digits), on requests and answers.
pub(crate) const INCARNATION_KEY: &str = "x-raftkit-incarnation";
/// The metadata key of the incarnation a request is meant for (16 hex digits).
pub(crate) const EXPECT_KEY: &str = "x-raftkit-expect-incarnation";

/// Adds an incarnation to a request's or an answer's metadata under `key` (the sender's:
/// [`INCARNATION_KEY`]; the one a request is meant for: [`EXPECT_KEY`]).
pub(crate) fn stamp_incarnation(meta: &mut MetadataMap, key: &'static str, incarnation: u64) {
    if let Ok(v) = AsciiMetadataValue::try_from(format!("{incarnation:016x}")) {
        meta.insert(key, v);
    }
}

/// A number in metadata under `key`, in `radix`; absent or malformed reads as `None`.
pub(crate) fn metadata_u64(meta: &MetadataMap, key: &str, radix: u32) -> Option<u64> {
    let v = meta.get(key)?.to_str().ok()?;
    u64::from_str_radix(v, radix).ok()
}

/// Adds what every internal call carries: peer credentials, the sender's id and its cluster id.
pub(crate) fn stamp_internal(
    meta: &mut MetadataMap,
    auth: &Auth,
    from: NodeId,
    cluster: Option<ClusterId>,
) {
    auth.stamp_peer(meta, from);
    if let Some(id) = cluster
        && let Ok(v) = AsciiMetadataValue::try_from(id.to_string())
    {
        meta.insert(auth::CLUSTER_ID_KEY, v);
    }
}

impl GrpcTransport {
    /// The transport for node `id`.
    pub fn new(id: NodeId, opts: GrpcOptions) -> GrpcTransport {
        GrpcTransport {
            id,
            pool: Pool::new(
                opts.tls.clone(),
                opts.connector.clone(),
                opts.channel.clone(),
            ),
            opts: Arc::new(opts),
            local: Arc::default(),
            peers: Arc::default(),
        }
    }

    /// Tells the transport which node it sends for, so its calls carry the node's cluster id.
    pub(crate) fn attach(&self, handler: SharedRpcHandler) {
        let _ = self.local.set(handler);
    }

    /// The connections to peers, one per address.
    pub(crate) fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The node the transport sends for.
    pub(crate) fn id(&self) -> NodeId {
        self.id
    }

    /// The options the transport was made with.
    pub(crate) fn options(&self) -> &Arc<GrpcOptions> {
        &self.opts
    }
}

impl RaftNetworkFactory<TypeConfig> for GrpcTransport {
    type Network = GrpcConnection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> GrpcConnection {
        let health = self
            .peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(target)
            .or_insert_with(|| Arc::new(PeerHealth::new(self.id, target)))
            .clone();
        GrpcConnection {
            health,
            id: self.id,
            target,
            addr: node.addr.clone(),
            client: self.pool.channel(&node.addr).map(|c| self.client(c)),
            snapshot_chunk_bytes: self.opts.snapshot_chunk_bytes.max(1),
            min_transfer_rate: self.opts.min_transfer_rate,
            auth: self.opts.auth.clone(),
            local: self.local.clone(),
        }
    }
}

impl GrpcTransport {
    fn client(&self, channel: Channel) -> RaftInternalClient<Channel> {
        RaftInternalClient::new(channel)
            .max_decoding_message_size(self.opts.max_message_bytes)
            .max_encoding_message_size(self.opts.max_message_bytes)
    }
}

/// A connection from this node to one peer.
pub struct GrpcConnection {
    /// Whether the peer answers (shared by every connection to it).
    health: Arc<PeerHealth>,
    id: NodeId,
    target: NodeId,
    addr: String,
    client: Result<RaftInternalClient<Channel>, Status>,
    snapshot_chunk_bytes: usize,
    /// `GrpcOptions::min_transfer_rate`: how much longer than the soft TTL a snapshot may take.
    min_transfer_rate: u64,
    auth: Auth,
    local: Arc<OnceLock<SharedRpcHandler>>,
}

/// Whether a status is tonic's own "deadline passed" (reported as `Cancelled`).
fn is_deadline(s: &Status) -> bool {
    s.code() == Code::DeadlineExceeded
        || (s.code() == Code::Cancelled && s.message().contains("Timeout expired"))
}

impl GrpcConnection {
    /// Adds credentials and the cluster id to an outgoing call.
    fn stamp<T>(&self, req: &mut Request<T>) {
        let local = self.local.get();
        let cluster = local.and_then(|h| h.cluster_id());
        stamp_internal(req.metadata_mut(), &self.auth, self.id, cluster);
        if let Some(h) = local {
            stamp_incarnation(req.metadata_mut(), INCARNATION_KEY, h.incarnation());
            if let Some(expected) = h.expected_incarnation(self.target) {
                stamp_incarnation(req.metadata_mut(), EXPECT_KEY, expected);
            }
        }
    }

    /// Checks the incarnation in the peer's answer (see `raft_core::incarnation`).
    fn check_answer(&self, meta: &MetadataMap) -> Result<(), rpc::RpcError> {
        let Some(h) = self.local.get() else {
            return Ok(());
        };
        h.check_answer(self.target, metadata_u64(meta, INCARNATION_KEY, 16))
            .map_err(|e| self.unreachable(&Status::failed_precondition(e.to_string())))
    }

    fn client(&self) -> Result<RaftInternalClient<Channel>, rpc::RpcError> {
        self.client.clone().map_err(|s| self.unreachable(&s))
    }

    /// Notes that the peer answered (see [`PeerHealth`]).
    fn answered(&self) {
        self.health.answered(&self.addr);
    }

    /// Notes that a call to the peer failed (see [`PeerHealth`]).
    fn failed(&self, error: &rpc::RpcError) {
        self.health.failed(&self.addr, error);
    }

    fn unreachable(&self, s: &Status) -> rpc::RpcError {
        let e = self.unreachable_quiet(s);
        self.failed(&e);
        e
    }

    fn unreachable_quiet(&self, s: &Status) -> rpc::RpcError {
        rpc::RpcError::Unreachable(rpc::Unreachable::from_string(format!(
            "node {} at {}: {}: {}",
            self.target,
            self.addr,
            s.code(),
            s.message()
        )))
    }

    /// Classifies a failed RPC for openraft's backoff.
    fn rpc_error(&self, s: Status, action: rpc::RPCTypes, timeout: Duration) -> rpc::RpcError {
        let e = if is_deadline(&s) {
            rpc::RpcError::Timeout(rpc::Timeout {
                action,
                id: self.id,
                target: self.target,
                timeout,
            })
        } else {
            match s.code() {
                Code::Cancelled | Code::Aborted | Code::ResourceExhausted => {
                    rpc::RpcError::Network(rpc::NetworkError::from_string(format!(
                        "node {} at {}: {}",
                        self.target, self.addr, s
                    )))
                }
                // Unavailable: cannot connect. Anything else: the peer refused the request.
                _ => self.unreachable_quiet(&s),
            }
        };
        self.failed(&e);
        e
    }

    async fn unary<Req, Resp, F, Fut>(
        &self,
        req: &Req,
        action: rpc::RPCTypes,
        option: &RPCOption,
        call: F,
    ) -> Result<Resp, rpc::RpcError>
    where
        Req: serde::Serialize,
        Resp: serde::de::DeserializeOwned,
        F: FnOnce(RaftInternalClient<Channel>, Request<pb::RaftRequest>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<pb::RaftReply>, Status>>,
    {
        let client = self.client()?;
        let payload = wire::encode(req).map_err(|s| self.unreachable(&s))?;
        let timeout = option.soft_ttl();
        let msg = pb::RaftRequest {
            target: self.target,
            payload,
        };
        let mut req = pb::request(msg, timeout);
        self.stamp(&mut req);
        let reply = call(client, req)
            .await
            .map_err(|s| self.rpc_error(s, action, timeout))?;
        self.check_answer(reply.metadata())?;
        self.answered();
        wire::decode(&reply.into_inner().payload, "reply").map_err(|s| self.unreachable(&s))
    }
}

impl RaftNetworkV2<TypeConfig> for GrpcConnection {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        req: rpc::AppendEntriesRequest,
        option: RPCOption,
    ) -> Result<rpc::AppendEntriesResponse, rpc::RpcError> {
        self.unary(
            &req,
            rpc::RPCTypes::AppendEntries,
            &option,
            |mut c, r| async move { c.append_entries(r).await },
        )
        .await
    }

    async fn vote(
        &mut self,
        req: rpc::VoteRequest,
        option: RPCOption,
    ) -> Result<rpc::VoteResponse, rpc::RpcError> {
        self.unary(&req, rpc::RPCTypes::Vote, &option, |mut c, r| async move {
            c.vote(r).await
        })
        .await
    }

    async fn pre_vote(
        &mut self,
        req: rpc::VoteRequest,
        option: RPCOption,
    ) -> Result<rpc::VoteResponse, rpc::RpcError> {
        self.unary(&req, rpc::RPCTypes::Vote, &option, |mut c, r| async move {
            c.pre_vote(r).await
        })
        .await
    }

    async fn transfer_leader(
        &mut self,
        req: rpc::TransferLeaderRequest,
        option: RPCOption,
    ) -> Result<rpc::TransferLeaderResponse, rpc::RpcError> {
        self.unary(
            &req,
            rpc::RPCTypes::TransferLeader,
            &option,
            |mut c, r| async move { c.transfer_leader(r).await },
        )
        .await
    }

    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<
        's,
        Result<BoxStream<'s, Result<rpc::StreamAppendResult, rpc::RpcError>>, rpc::RpcError>,
    >
    where
        S: futures_util::Stream<Item = rpc::AppendEntriesRequest> + Send + Unpin + 'static,
    {
        async move {
            // Pull the first request before connecting: openraft paces retries (its backoff)
            // inside the request stream, so a transport that fails before polling it would
            // make replication retry in a tight loop.
            let mut input = input;
            let Some(first) = input.next().await else {
                return Ok(futures_util::stream::empty().boxed());
            };
            let mut client = self.client()?;
            let target = self.target;
            // The requests end as soon as the replies end or are dropped (or this call fails):
            // openraft's request stream holds the replication state's lock while it waits for
            // more to send, and the HTTP/2 layer may keep polling a request body after the
            // response has ended. A body left waiting would hold that lock, and the next
            // stream to this peer would wait for it for ever.
            let (replies_done, requests_end) = tokio::sync::oneshot::channel::<()>();
            let requests = futures_util::stream::once(async move { first }).chain(input).take_until(requests_end).filter_map(move |req| async move {
                match raft_core::codec::encode(&req) {
                    Ok(payload) => Some(pb::RaftRequest {
                        target,
                        payload: payload.into(),
                    }),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot encode an append request; ending the stream");
                        None
                    }
                }
            });
            let setup = option.soft_ttl();
            let mut req = Request::new(requests);
            self.stamp(&mut req);
            let response = tokio::time::timeout(setup, client.stream_append(req))
                .await
                .map_err(|_| self.rpc_error(Status::deadline_exceeded("stream setup"), rpc::RPCTypes::AppendEntries, setup))?
                .map_err(|s| self.rpc_error(s, rpc::RPCTypes::AppendEntries, setup))?;
            self.check_answer(response.metadata())?;
            self.answered();
            let this: &'s GrpcConnection = self;
            let replies = response.into_inner().map(move |item| {
                // Held by the reply stream: dropping it ends the requests (see above).
                let _ends_requests = &replies_done;
                let reply = item.map_err(|s| this.rpc_error(s, rpc::RPCTypes::AppendEntries, setup))?;
                wire::decode::<rpc::StreamAppendResult>(&reply.payload, "append reply").map_err(|s| this.unreachable(&s))
            });
            Ok(replies.boxed())
        }
        .boxed()
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: rpc::Snapshot,
        cancel: impl Future<Output = rpc::ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<rpc::SnapshotResponse, rpc::StreamingError> {
        let to_streaming = |e: rpc::RpcError| match e {
            rpc::RpcError::Timeout(t) => rpc::StreamingError::Timeout(t),
            rpc::RpcError::Network(n) => rpc::StreamingError::Network(n),
            rpc::RpcError::Unreachable(u) => rpc::StreamingError::Unreachable(u),
            rpc::RpcError::RemoteError(r) => {
                rpc::StreamingError::Unreachable(rpc::Unreachable::from_string(r.to_string()))
            }
        };
        let mut client = self.client().map_err(to_streaming)?;
        let data = snapshot.snapshot;
        let total = data.len();
        let vote_bytes = wire::encode(&vote).map_err(|s| to_streaming(self.unreachable(&s)))?;
        // Reading runs on a blocking thread, one chunk ahead of the network: the channel of
        // two chunks is the whole buffer on this side.
        let (tx, rx) = mpsc::channel::<pb::SnapshotChunk>(2);
        let chunk = self.snapshot_chunk_bytes;
        let target = self.target;
        let reader = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let mut offset = 0u64;
            loop {
                let mut buf = vec![0u8; chunk];
                let n = data.read_at(offset, &mut buf)?;
                buf.truncate(n);
                let last = offset + n as u64 >= total;
                let msg = pb::SnapshotChunk {
                    target,
                    vote: if offset == 0 {
                        vote_bytes.clone()
                    } else {
                        Default::default()
                    },
                    offset,
                    data: buf.into(),
                    last,
                    total_bytes: if offset == 0 { total } else { 0 },
                };
                if tx.blocking_send(msg).is_err() {
                    return Ok(()); // the call ended; the error is reported there
                }
                offset += n as u64;
                if last {
                    return Ok(());
                }
            }
        });
        // A deadline that grows with the snapshot: the soft TTL plus its size at the slowest
        // rate allowed, which the receiver allows too (`server::internal`).
        let timeout = snapshot_send_limit(option.soft_ttl(), total, self.min_transfer_rate);
        let mut req = pb::request(ReceiverStream::new(rx), timeout);
        self.stamp(&mut req);
        let call = client.install_snapshot(req);
        let reply = tokio::select! {
            r = call => r.map_err(|s| to_streaming(self.rpc_error(s, rpc::RPCTypes::InstallSnapshot, timeout)))?,
            closed = cancel => return Err(rpc::StreamingError::Closed(closed)),
        };
        match reader.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(rpc::StreamingError::Unreachable(
                    rpc::Unreachable::from_string(format!("reading the local snapshot: {e}")),
                ));
            }
            Err(e) => {
                return Err(rpc::StreamingError::Unreachable(
                    rpc::Unreachable::from_string(format!("snapshot reader task: {e}")),
                ));
            }
        }
        wire::decode(&reply.into_inner().payload, "snapshot reply")
            .map_err(|s| to_streaming(self.unreachable(&s)))
    }
}
