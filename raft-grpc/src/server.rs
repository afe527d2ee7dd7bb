//! The incoming side: the internal Raft service and the public cluster service, on one port.
//!
//! Everything that arrives is validated before it reaches the node: the target node id, every
//! payload's encoding, the shape of replicated entries, snapshot chunk order and size. A bad
//! request gets `InvalidArgument` (or `OutOfRange` for size limits) and the server carries on.
//!
//! Writes and membership calls that reach a follower are forwarded to the leader — one hop,
//! carrying the caller's remaining deadline — or, when forwarding is off (or, for a write, the
//! client asks), answered with the leader's address. Linearizable reads on a follower fetch a
//! read index from the leader and are answered from the follower's own state machine.

use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use raft_core::Consistency;
use raft_core::Error;
use raft_core::LeaderHint;
use raft_core::Node;
use raft_core::NodeId;
use raft_core::Queryable;
use raft_core::ReadIndex;
use raft_core::Role;
use raft_core::Session;
use raft_core::StateMachine;
use raft_core::cluster_id::ClusterIdError;
use raft_core::snapshot::SnapshotError;
use raft_core::transport::RpcHandlerError;
use raft_core::transport::SharedRpcHandler;
use raft_core::transport::SnapshotReceive;
use raft_core::transport::rpc;
use raft_core::types::Request as RaftRequest;
use tokio::io::AsyncRead;
use tokio::io::AsyncWrite;
use tokio::net::TcpListener;
use tonic::Code;
use tonic::Request;
use tonic::Response;
use tonic::Status;
use tonic::Streaming;
use tonic::transport::Channel;
use tonic::transport::server::Connected;

use crate::auth;
use crate::auth::Caller;
use crate::auth::ClientCheck;
use crate::auth::PeerCheck;
use crate::auth::Role as AuthRole;
use crate::local::LocalClient;
use crate::net::Pool;
use crate::options::GrpcOptions;
use crate::pb;
use crate::pb::cluster_client::ClusterClient as PbClusterClient;
use crate::pb::cluster_server::ClusterServer;
use crate::pb::raft_internal_client::RaftInternalClient;
use crate::pb::raft_internal_server::RaftInternalServer;
use crate::status;
use crate::status::ErrorCode;
use crate::transport::GrpcTransport;
use crate::wire;

/// Metadata marking a request a node forwarded on a client's behalf; it is not forwarded again.
const FORWARDED_KEY: &str = "x-raftkit-forwarded";

/// Counters of what a server received.
#[derive(Debug, Default)]
pub struct ServerStats {
    snapshot_chunks: AtomicU64,
    largest_snapshot_chunk: AtomicU64,
    snapshots_received: AtomicU64,
    forwarded: AtomicU64,
    largest_append_message: AtomicU64,
}

impl ServerStats {
    /// Snapshot chunks received.
    pub fn snapshot_chunks(&self) -> u64 {
        self.snapshot_chunks.load(Ordering::Relaxed)
    }

    /// The largest snapshot chunk received, in bytes: the most snapshot data the server ever
    /// held in memory at once.
    pub fn largest_snapshot_chunk(&self) -> u64 {
        self.largest_snapshot_chunk.load(Ordering::Relaxed)
    }

    /// Complete snapshots received and handed to the node.
    pub fn snapshots_received(&self) -> u64 {
        self.snapshots_received.load(Ordering::Relaxed)
    }

    /// Requests forwarded to the leader.
    pub fn forwarded(&self) -> u64 {
        self.forwarded.load(Ordering::Relaxed)
    }

    /// The largest replication message received, in bytes (its encoded payload).
    pub fn largest_append_message(&self) -> u64 {
        self.largest_append_message.load(Ordering::Relaxed)
    }

    fn append_message(&self, bytes: usize) {
        self.largest_append_message
            .fetch_max(bytes as u64, Ordering::Relaxed);
    }
}

/// The server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The TLS configuration was refused.
    #[error("TLS configuration refused: {0}")]
    Tls(tonic::transport::Error),
    /// Serving failed.
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
}

/// How a server answers the cluster service's `Read` call (decode the query, answer it, encode
/// the reply), fixed when it is built: only a [`Queryable`] state machine has one.
type QueryFn<S> = for<'a> fn(
    &'a Shared<S>,
    pb::ReadRequest,
    Option<Duration>,
) -> BoxFuture<'a, Result<pb::ReadReply, Status>>;

/// What a server's services and its local clients share.
pub(crate) struct Shared<S: StateMachine> {
    pub(crate) node: Node<S>,
    handler: SharedRpcHandler,
    pool: Pool,
    pub(crate) opts: Arc<GrpcOptions>,
    stats: Arc<ServerStats>,
    /// Set when the server starts shutting down: long-lived streams end, so the graceful drain
    /// does not wait for a leader that never closes its replication stream.
    stopping: tokio::sync::watch::Sender<bool>,
    /// Answers remote queries; `None` when the state machine serves none (`Read` is refused).
    queries: Option<QueryFn<S>>,
}

impl<S: StateMachine> Shared<S> {
    /// Completes once the server has begun shutting down.
    fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.stopping.subscribe();
        async move {
            let _ = rx.wait_for(|stopping| *stopping).await;
        }
    }
}

/// A node's gRPC server: the internal Raft service and the cluster service.
pub struct Server<S: StateMachine> {
    shared: Arc<Shared<S>>,
}

impl<S: Queryable> Server<S> {
    /// A server for `node`, which was started with `transport` (or a clone of it). The server
    /// takes its options (TLS, limits, forwarding) from the transport, and forwards to the
    /// leader over the transport's connections. It answers remote queries (the cluster
    /// service's `Read`) with [`Queryable::query_at`].
    pub fn new(node: Node<S>, transport: &GrpcTransport) -> Server<S> {
        Server::build(node, transport, Some(serve_query::<S>))
    }
}

impl<S: StateMachine> Server<S> {
    /// Like [`Server::new`], for a state machine that answers no remote queries: the cluster
    /// service refuses `Read` (`Unimplemented`); everything else, in-process reads through
    /// [`Node::read`] included, works the same.
    pub fn without_queries(node: Node<S>, transport: &GrpcTransport) -> Server<S> {
        Server::build(node, transport, None)
    }

    fn build(node: Node<S>, transport: &GrpcTransport, queries: Option<QueryFn<S>>) -> Server<S> {
        debug_assert_eq!(
            transport.id(),
            node.id(),
            "a transport made for another node"
        );
        transport.attach(node.rpc_handler());
        Server {
            shared: Arc::new(Shared {
                handler: node.rpc_handler(),
                node,
                pool: transport.pool().clone(),
                opts: transport.options().clone(),
                stats: Arc::default(),
                stopping: tokio::sync::watch::Sender::new(false),
                queries,
            }),
        }
    }

    /// A client of this node for code running in the same process (see [`LocalClient`]).
    pub fn local_client(&self) -> LocalClient<S> {
        LocalClient::new(self.shared.clone())
    }

    /// Counters of what this server received.
    pub fn stats(&self) -> Arc<ServerStats> {
        self.shared.stats.clone()
    }

    /// The services behind their interceptors; with `tonic_tls`, tonic does the TLS handshakes
    /// (with the configuration in force at start).
    fn router(self, tonic_tls: bool) -> Result<tonic::transport::server::Router, ServeError> {
        let max = self.shared.opts.max_message_bytes;
        let o = &self.shared.opts;
        let mut builder = tonic::transport::Server::builder()
            .max_concurrent_streams(Some(o.max_concurrent_streams))
            .http2_keepalive_interval(Some(o.keepalive_interval))
            .http2_keepalive_timeout(Some(o.keepalive_timeout))
            // Clients that time out reset streams the server has not accepted yet. h2 closes
            // the whole connection (which a peer's replication shares) past 20 such resets;
            // allowing as many as there may be streams keeps the rapid-reset bound without
            // dropping a busy peer's connection.
            .http2_max_pending_accept_reset_streams(Some(o.max_concurrent_streams as usize));
        if tonic_tls
            && let Some(tls) = self
                .shared
                .opts
                .tls
                .as_ref()
                .and_then(|t| t.config().tonic_server())
        {
            builder = builder.tls_config(tls).map_err(ServeError::Tls)?;
        }
        // The interceptors run on a call's headers, before its message is decoded.
        let auth = self.shared.opts.auth.clone();
        let internal = RaftInternalServer::new(Internal(self.shared.clone()))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
        let internal =
            tonic::service::interceptor::InterceptedService::new(internal, PeerCheck(auth.clone()));
        let cluster = ClusterServer::new(Cluster(self.shared.clone()))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
        let cluster =
            tonic::service::interceptor::InterceptedService::new(cluster, ClientCheck(auth));
        Ok(builder.add_service(internal).add_service(cluster))
    }

    /// Says loudly when this server faces a network without authenticating peers.
    fn warn_if_open(&self, addr: Option<std::net::SocketAddr>) {
        let Some(addr) = addr else { return };
        if addr.ip().is_loopback() {
            return;
        }
        let opts = &self.shared.opts;
        let auth = opts.auth.current();
        if !auth.authenticates_peers() {
            tracing::warn!(
                %addr,
                "SECURITY: serving raft and the cluster API on a non-loopback address without \
                 peer authentication: anyone who can reach {addr} can change membership and \
                 rewrite the log. Set a cluster secret or mutual TLS with node certificates \
                 (GrpcOptions::auth)."
            );
        } else if opts.tls.is_none() {
            tracing::warn!(
                %addr,
                "serving on a non-loopback address without TLS: the cluster secret keeps out \
                 callers who do not know it, but not eavesdroppers, who see all data and the \
                 peer token"
            );
        }
    }

    /// Serves on `listener` until `shutdown` completes. With TLS, each connection's handshake
    /// runs in a task of its own, within [`GrpcOptions::tls_handshake_timeout`] and at most
    /// [`GrpcOptions::max_tls_handshakes`] at once, with the certificate in force when the
    /// connection arrives (see [`crate::ReloadableTls::reload`]).
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServeError> {
        self.warn_if_open(listener.local_addr().ok());
        let opts = self.shared.opts.clone();
        match opts.tls.clone().filter(|t| t.serves()) {
            Some(tls) => {
                let incoming = crate::accept::tls_incoming(listener, tls, &opts);
                self.serve_accepted(incoming, false, shutdown).await
            }
            None => {
                // Small messages (heartbeats, acks) must not wait for Nagle's algorithm.
                let incoming =
                    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|conn| {
                        if let Ok(s) = &conn {
                            crate::accept::nodelay(s);
                        }
                        conn
                    });
                self.serve_accepted(incoming, false, shutdown).await
            }
        }
    }

    /// Serves connections from `incoming` (for example a simulated network's listener) until
    /// `shutdown` completes. With TLS, tonic does the handshakes, with the certificate in force
    /// when this is called: a reload does not reach a server started this way.
    pub async fn serve_with_incoming<I, IO, E>(
        self,
        incoming: I,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServeError>
    where
        I: futures_util::Stream<Item = Result<IO, E>> + Send + 'static,
        IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
        IO::ConnectInfo: Clone + Send + Sync + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.serve_accepted(incoming, true, shutdown).await
    }

    async fn serve_accepted<I, IO, E>(
        self,
        incoming: I,
        tonic_tls: bool,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServeError>
    where
        I: futures_util::Stream<Item = Result<IO, E>> + Send + 'static,
        IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
        IO::ConnectInfo: Clone + Send + Sync + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let shared = self.shared.clone();
        let shutdown = async move {
            shutdown.await;
            shared.stopping.send_replace(true);
        };
        self.router(tonic_tls)?
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await?;
        Ok(())
    }
}

fn is_forwarded<T>(req: &Request<T>) -> bool {
    req.metadata().contains_key(FORWARDED_KEY)
}

/// The deadline the caller gave (the `grpc-timeout` header), if any.
fn caller_timeout<T>(req: &Request<T>) -> Option<Duration> {
    let v = req.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
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

    fn own_addr(&self) -> String {
        self.node.member_addr(self.node.id()).unwrap_or_default()
    }

    fn channel(&self, addr: &str) -> Result<Channel, Status> {
        self.pool.channel(addr)
    }

    pub(crate) fn cluster_client(&self, addr: &str) -> Result<PbClusterClient<Channel>, Status> {
        let max = self.opts.max_message_bytes;
        Ok(PbClusterClient::new(self.channel(addr)?)
            .max_decoding_message_size(max)
            .max_encoding_message_size(max))
    }

    /// A request forwarded on a caller's behalf, carrying its remaining deadline and who the
    /// caller is (this node itself when `caller` is `None`).
    fn forward_request<T>(
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
    async fn on_leader<T, L, LF, F, FF>(
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
        match local().await {
            Ok(v) => Ok(v),
            Err(Error::NotLeader(hint))
                if hint.is_known() && !forwarded && self.opts.forward_to_leader =>
            {
                match hint.addr() {
                    Some(addr) => forward(self.cluster_client(addr)?).await,
                    None => Err(status::not_leader(&hint)),
                }
            }
            Err(e) => Err(status::from_error(&e)),
        }
    }

    /// Checks the cluster id an internal call carries (adopting it on a node that has none).
    async fn check_cluster<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let theirs = match req.metadata().get(auth::CLUSTER_ID_KEY) {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| status::invalid("malformed cluster id"))?,
            ),
        };
        self.handler
            .check_cluster(theirs)
            .await
            .map_err(handler_status)?;
        let meta = req.metadata();
        if let Some(from) = crate::transport::metadata_u64(meta, auth::FROM_KEY, 10) {
            self.handler
                .check_incarnation(
                    from,
                    crate::transport::metadata_u64(meta, crate::transport::INCARNATION_KEY, 16),
                    crate::transport::metadata_u64(meta, crate::transport::EXPECT_KEY, 16),
                )
                .map_err(handler_status)?;
        }
        Ok(())
    }

    /// Applies an encoded write (or opens or closes a session, as `op` says) on this node if it
    /// leads, or forwards it once to the leader on behalf of `caller`.
    pub(crate) async fn write(
        &self,
        session: Option<Session>,
        command: bytes::Bytes,
        op: pb::SessionOp,
        forwarded: bool,
        timeout: Option<Duration>,
        caller: Option<&Caller>,
    ) -> Result<pb::WriteReply, Status> {
        let request = RaftRequest {
            session,
            command: command.clone(),
        };
        let forward_msg = pb::WriteRequest {
            command,
            session: session.map(Into::into),
            no_forward: true,
            session_op: op.into(),
        };
        self.on_leader(
            forwarded,
            || async {
                let (output, session_id) = match op {
                    pb::SessionOp::None => (self.node.write_encoded(request).await?, 0),
                    pb::SessionOp::Register => {
                        (bytes::Bytes::new(), self.node.register_session().await?)
                    }
                    pb::SessionOp::Close => {
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
                    leader_addr: self.own_addr(),
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
    async fn leader_read_index(
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
    pub(crate) async fn read(
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
fn serve_query<S: Queryable>(
    shared: &Shared<S>,
    r: pb::ReadRequest,
    timeout: Option<Duration>,
) -> BoxFuture<'_, Result<pb::ReadReply, Status>> {
    Box::pin(async move {
        let c = pb::consistency(r.consistency)?;
        let query: S::Query = raft_core::codec::decode(&r.query).map_err(|e| {
            status::status(
                Code::InvalidArgument,
                ErrorCode::InvalidCommand,
                format!("bad query: {e}"),
            )
        })?;
        let reply = shared.read(query, c, timeout).await?;
        let bytes = raft_core::codec::encode(&reply).map_err(|e| {
            status::status(Code::Internal, ErrorCode::OutputEncoding, e.to_string())
        })?;
        Ok(pb::ReadReply {
            reply: bytes.into(),
            served_by: shared.node.id(),
        })
    })
}

// ---- the internal service -------------------------------------------------------------------

struct Internal<S: StateMachine>(Arc<Shared<S>>);

impl<S: StateMachine> Internal<S> {
    fn decode_request<T: serde::de::DeserializeOwned>(
        &self,
        r: &pb::RaftRequest,
        what: &str,
    ) -> Result<T, Status> {
        self.0.check_target(r.target)?;
        wire::decode(&r.payload, what)
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

    /// Decodes a peer's request (`what` names it in errors), answers it with `handle` and
    /// encodes the answer.
    async fn unary<Req, Resp, F, Fut>(
        &self,
        req: Request<pb::RaftRequest>,
        what: &str,
        handle: F,
    ) -> Result<Response<pb::RaftReply>, Status>
    where
        Req: serde::de::DeserializeOwned,
        Resp: serde::Serialize,
        F: FnOnce(Req) -> Fut,
        Fut: Future<Output = Result<Resp, RpcHandlerError>>,
    {
        self.0.check_cluster(&req).await?;
        let msg = self.decode_request(req.get_ref(), what)?;
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
        self.0.check_cluster(&req).await?;
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
                    wire::decode::<rpc::AppendEntriesRequest>(&r.payload, "append request")
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
        self.0.check_cluster(&req).await?;
        let shared = &self.0;
        let max_chunk = shared.opts.max_snapshot_chunk_bytes;
        let mut chunks = req.into_inner();
        let first = chunks
            .message()
            .await?
            .ok_or_else(|| status::invalid("empty snapshot stream"))?;
        shared.check_target(first.target)?;
        let vote: raft_core::types::Vote = wire::decode(&first.vote, "snapshot vote")?;
        // The vote, the size and the one-at-a-time rule are checked before any data is written.
        // Dropping the sink on any early return deletes what was received.
        let size = (first.total_bytes > 0).then_some(first.total_bytes);
        let mut sink = match shared
            .handler
            .snapshot_sink(&vote, size)
            .map_err(handler_status)?
        {
            SnapshotReceive::Receive(sink) => sink,
            SnapshotReceive::Refuse(answer) => return self.reply(&answer),
        };
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
            chunk = chunks
                .message()
                .await?
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

// ---- the cluster service --------------------------------------------------------------------

struct Cluster<S: StateMachine>(Arc<Shared<S>>);

impl<S: StateMachine> Cluster<S> {
    /// Runs a membership or leadership call: `local` (not yet started) if this node leads,
    /// otherwise `forward` of the same request, once, to the leader, within the caller's
    /// deadline.
    async fn admin<R, L, F, FF>(
        &self,
        req: Request<R>,
        caller: Caller,
        local: L,
        forward: F,
    ) -> Result<Response<pb::Empty>, Status>
    where
        L: Future<Output = raft_core::Result<()>>,
        F: FnOnce(PbClusterClient<Channel>, Request<R>) -> FF,
        FF: Future<Output = Result<Response<pb::Empty>, Status>>,
    {
        let shared = &self.0;
        let (forwarded, timeout) = (is_forwarded(&req), caller_timeout(&req));
        let msg = req.into_inner();
        shared
            .on_leader(
                forwarded,
                || local,
                |c| async move {
                    forward(c, shared.forward_request(msg, timeout, Some(&caller)))
                        .await
                        .map(|_| ())
                },
            )
            .await?;
        Ok(Response::new(pb::Empty {}))
    }
}

#[tonic::async_trait]
impl<S: StateMachine> pb::cluster_server::Cluster for Cluster<S> {
    async fn write(
        &self,
        req: Request<pb::WriteRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let caller = auth::require(&req, AuthRole::Write, "Write")?;
        let forwarded = is_forwarded(&req) || req.get_ref().no_forward;
        let timeout = caller_timeout(&req);
        let w = req.into_inner();
        tracing::trace!(forwarded, session = ?w.session, "write received");
        let op = pb::SessionOp::try_from(w.session_op)
            .map_err(|_| status::invalid(format!("unknown session_op {}", w.session_op)))?;
        self.0
            .write(
                w.session.map(Into::into),
                w.command,
                op,
                forwarded,
                timeout,
                Some(&caller),
            )
            .await
            .map(Response::new)
    }

    async fn read(&self, req: Request<pb::ReadRequest>) -> Result<Response<pb::ReadReply>, Status> {
        auth::require(&req, AuthRole::Read, "Read")?;
        let Some(answer) = self.0.queries else {
            return Err(status::status(
                Code::Unimplemented,
                ErrorCode::InvalidRequest,
                "this node's state machine answers no remote queries",
            ));
        };
        let timeout = caller_timeout(&req);
        answer(&self.0, req.into_inner(), timeout)
            .await
            .map(Response::new)
    }

    async fn add_learner(
        &self,
        req: Request<pb::AddLearnerRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let caller = auth::require(&req, AuthRole::Admin, "AddLearner")?;
        let r = req.get_ref();
        if crate::net::split_addr(&r.addr).is_none() {
            return Err(status::invalid(format!(
                "bad node address {:?}: expected host:port",
                r.addr
            )));
        }
        let incarnation = (r.incarnation != 0).then_some(r.incarnation);
        let local = self
            .0
            .node
            .add_learner_as(r.node_id, r.addr.clone(), incarnation);
        self.admin(req, caller, local, |mut c, r| async move {
            c.add_learner(r).await
        })
        .await
    }

    async fn change_membership(
        &self,
        req: Request<pb::ChangeMembershipRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let caller = auth::require(&req, AuthRole::Admin, "ChangeMembership")?;
        let voters = req.get_ref().voters.clone();
        if voters.is_empty() {
            return Err(status::invalid("a cluster needs at least one voter"));
        }
        let local = self.0.node.change_membership(voters);
        self.admin(req, caller, local, |mut c, r| async move {
            c.change_membership(r).await
        })
        .await
    }

    async fn add_voter(
        &self,
        req: Request<pb::AddVoterRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let caller = auth::require(&req, AuthRole::Admin, "AddVoter")?;
        let local = self.0.node.add_voter(req.get_ref().node_id);
        self.admin(req, caller, local, |mut c, r| async move {
            c.add_voter(r).await
        })
        .await
    }

    async fn remove_node(
        &self,
        req: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let caller = auth::require(&req, AuthRole::Admin, "RemoveNode")?;
        let local = self.0.node.remove_node(req.get_ref().node_id);
        self.admin(req, caller, local, |mut c, r| async move {
            c.remove_node(r).await
        })
        .await
    }

    async fn transfer_leader(
        &self,
        req: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let caller = auth::require(&req, AuthRole::Admin, "TransferLeader")?;
        let local = self.0.node.transfer_leader(req.get_ref().to);
        self.admin(req, caller, local, |mut c, r| async move {
            c.transfer_leader(r).await
        })
        .await
    }

    async fn set_session_capacity(
        &self,
        req: Request<pb::SessionCapacity>,
    ) -> Result<Response<pb::Empty>, Status> {
        let caller = auth::require(&req, AuthRole::Admin, "SetSessionCapacity")?;
        let c = req.get_ref();
        let capacity =
            raft_core::SessionCapacity::new(c.max_sessions, c.max_bytes, c.max_response_bytes);
        let local = self.0.node.set_session_capacity(capacity);
        self.admin(req, caller, local, |mut c, r| async move {
            c.set_session_capacity(r).await
        })
        .await
    }

    type BackupStream = BoxStream<'static, Result<pb::BackupChunk, Status>>;

    /// Any node serves a backup, at a linearizable read index from the leader; the stream ends
    /// (incomplete) if the server shuts down.
    async fn backup(
        &self,
        req: Request<pb::BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        auth::require(&req, AuthRole::Admin, "Backup")?;
        let shared = &self.0;
        let node = &shared.node;
        let at = if node.role() == Role::Leader {
            node.read_index(Consistency::Linearizable)
                .await
                .map_err(|e| status::from_error(&e))?
        } else {
            shared
                .leader_read_index(Consistency::Linearizable, caller_timeout(&req))
                .await?
        };
        let chunks = crate::backup::stream(node.clone(), at).take_until(shared.stopped());
        Ok(Response::new(chunks.boxed()))
    }

    async fn status(
        &self,
        req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        auth::require(&req, AuthRole::Read, "Status")?;
        let m = self.0.node.metrics();
        let member = |id: &NodeId| pb::Member {
            id: *id,
            addr: m.members.get(id).cloned().unwrap_or_default(),
        };
        Ok(Response::new(pb::StatusReply {
            id: m.id,
            role: m.role.to_string(),
            term: m.term,
            leader_id: m.leader,
            leader_addr: m.leader_addr.clone().unwrap_or_default(),
            last_log_index: m.last_log_index,
            commit_index: m.commit_index,
            applied_index: m.applied_index,
            snapshot_index: m.snapshot_index,
            voters: m.voters.iter().map(member).collect(),
            learners: m.learners.iter().map(member).collect(),
            space_alarm: self.0.node.storage().local_alarm.unwrap_or_default(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
