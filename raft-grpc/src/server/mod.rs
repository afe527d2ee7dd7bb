//! The incoming side: a node's gRPC [`Server`], serving the internal Raft service and the
//! public cluster service on one port.
//!
//! Everything that arrives is validated before it reaches the node: the target node id, every
//! payload's encoding, the shape of replicated entries, snapshot chunk order and size. A bad
//! request gets `InvalidArgument` (or `OutOfRange` for size limits) and the server carries on.
//!
//! * `mod.rs` — the [`Server`]: what its services share, its options, the accept loop.
//! * `forward.rs` — forwarding writes and membership calls to the leader, and follower reads.
//! * `internal.rs` — the internal `RaftInternal` service between nodes.
//! * `cluster.rs` — the public `Cluster` service (writes, reads, membership, status, backup).
//! * `local.rs` — [`LocalClient`], the same operations for code in the node's own process.

mod cluster;
mod forward;
mod internal;
mod local;
mod members;

pub(crate) use forward::Op;

pub use self::local::LocalClient;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::future::BoxFuture;
use raft_core::Node;
use raft_core::Queryable;
use raft_core::StateMachine;
use raft_core::transport::SharedRpcHandler;
use tokio::io::AsyncRead;
use tokio::io::AsyncWrite;
use tokio::net::TcpListener;
use tonic::Status;
use tonic::transport::server::Connected;

use crate::auth::ClientCheck;
use crate::auth::PeerCheck;
use crate::budget::ReceiveBudget;
use crate::budget::Receiving;
use crate::net::Pool;
use crate::options::GrpcOptions;
use crate::pb;
use crate::pb::cluster_server::ClusterServer;
use crate::pb::raft_internal_server::RaftInternalServer;
use crate::transport::GrpcTransport;

use self::cluster::Cluster;
use self::forward::serve_query;
use self::internal::Internal;

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
    /// TLS is configured ([`GrpcOptions::tls`]) but its configuration has no certificate and
    /// key to serve with (it was made with [`crate::TlsConfig::client_only`], or
    /// [`crate::TlsConfig::from_pem`] without an identity). The server refuses to start rather
    /// than serve plain TCP: it has accepted no connection.
    #[error(
        "TLS is configured but has no certificate and key to serve with; refusing to serve \
         without TLS"
    )]
    TlsWithoutIdentity,
    /// A connection timeout of the options is zero, which would close every connection as it
    /// arrives: the server refuses to start. Names the option.
    #[error("GrpcOptions::{0} is zero, which would close every connection; refusing to serve")]
    ZeroTimeout(&'static str),
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
    node: Node<S>,
    handler: SharedRpcHandler,
    pool: Pool,
    opts: Arc<GrpcOptions>,
    stats: Arc<ServerStats>,
    /// Set when the server starts shutting down: long-lived streams end, so the graceful drain
    /// does not wait for a leader that never closes its replication stream.
    stopping: tokio::sync::watch::Sender<bool>,
    /// Answers remote queries; `None` when the state machine serves none (`Read` is refused).
    queries: Option<QueryFn<S>>,
    /// The accepted connections that have made no authenticated call yet.
    unproven: crate::accept::Unproven,
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
                unproven: crate::accept::Unproven::default(),
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
        if tonic_tls && let Some(tls) = self.shared.opts.tls.as_ref() {
            let tls = tls
                .config()
                .tonic_server()
                .ok_or(ServeError::TlsWithoutIdentity)?
                // A connection that never finishes its handshake would hold tonic's task for
                // it for ever.
                .timeout(o.tls_handshake_timeout);
            builder = builder.tls_config(tls).map_err(ServeError::Tls)?;
        }
        // The interceptors run on a call's headers, before its message is decoded.
        let auth = self.shared.opts.auth.clone();
        let internal = RaftInternalServer::new(Internal(self.shared.clone()))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
        // A message's bytes are metered once its call is authenticated (the interceptors run
        // first), so callers who fail the check take nothing from the budgets.
        let request_timeout = self.shared.node.config().request_timeout;
        let budget = || {
            ReceiveBudget::new(
                o.max_receiving_bytes,
                max,
                request_timeout,
                o.min_transfer_rate,
            )
        };
        let internal = Receiving::new(internal, budget());
        let unproven = &self.shared.unproven;
        let internal = tonic::service::interceptor::InterceptedService::new(
            internal,
            PeerCheck(auth.clone(), unproven.clone()),
        );
        let cluster = ClusterServer::new(Cluster(self.shared.clone()))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
        // Each cluster call carries one message (a write, a read, a membership change): it stays
        // counted until answered, so the budget also bounds writes being replicated.
        let cluster = Receiving::until_answered(cluster, budget());
        let cluster =
            crate::auth::MethodRole(tonic::service::interceptor::InterceptedService::new(
                cluster,
                ClientCheck(auth, unproven.clone()),
            ));
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

    /// Serves on `listener` until `shutdown` completes, holding at most
    /// [`GrpcOptions::max_connections`] connections, and at most
    /// [`GrpcOptions::max_connections_per_ip`] from one address: a connection past either is
    /// closed at once, one that does not send the HTTP/2 preface within
    /// [`GrpcOptions::preface_timeout`] is closed then, and so is one that has made no call
    /// that passes authentication within [`GrpcOptions::auth_timeout`]. With TLS, each
    /// connection's handshake runs in a task of its own, within
    /// [`GrpcOptions::tls_handshake_timeout`] and at most [`GrpcOptions::max_tls_handshakes`]
    /// at once, with the certificate in force when the connection arrives (see
    /// [`crate::ReloadableTls::reload`]). Connections from the
    /// addresses of the cluster's members (their names in the membership, looked up every 5 s)
    /// need no handshake permit and may go past the total by one address's share, so a member
    /// can reconnect to a port that strangers have filled.
    ///
    /// With [`GrpcOptions::tls`] set, every connection is TLS. A TLS configuration without a
    /// certificate and key to serve with is refused before anything is accepted
    /// ([`ServeError::TlsWithoutIdentity`]), never served as plain TCP.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServeError> {
        check_serving(&self.shared.opts)?;
        self.warn_if_open(listener.local_addr().ok());
        let opts = self.shared.opts.clone();
        let sources = crate::accept::MemberSources::default();
        // Stops with this future, however it ends.
        let _tracker = members::Tracker::start(self.shared.node.clone(), sources.clone());
        let unproven = self.shared.unproven.clone();
        match opts.tls.clone() {
            Some(tls) => {
                let incoming = crate::accept::tls_incoming(listener, tls, &opts, sources, unproven);
                self.serve_accepted(incoming, false, shutdown).await
            }
            None => {
                let incoming = crate::accept::tcp_incoming(listener, &opts, sources, unproven);
                self.serve_accepted(incoming, false, shutdown).await
            }
        }
    }

    /// Serves connections from `incoming` (for example a simulated network's listener) until
    /// `shutdown` completes. With TLS, tonic does the handshakes, with the certificate in force
    /// when this is called: a reload does not reach a server started this way. A handshake
    /// not done within [`GrpcOptions::tls_handshake_timeout`] closes its connection; the
    /// connection limits, [`GrpcOptions::preface_timeout`] and [`GrpcOptions::auth_timeout`]
    /// are `incoming`'s to keep. As with [`Server::serve`], a TLS configuration without
    /// a certificate and key is refused ([`ServeError::TlsWithoutIdentity`]) before any
    /// connection is taken from `incoming`.
    pub async fn serve_with_incoming<I, IO, E>(
        self,
        incoming: I,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServeError>
    where
        I: futures_util::Stream<Item = Result<IO, E>> + Send + 'static,
        IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        check_serving(&self.shared.opts)?;
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

/// Refuses to serve when TLS is configured but cannot serve ([`ServeError::TlsWithoutIdentity`]):
/// a node told to use TLS never falls back to plain TCP. [`Server::serve`] and
/// [`crate::GrpcNode::start`] check this before anything starts. A configuration that serves
/// keeps serving, since [`crate::ReloadableTls::reload`] refuses one without an identity.
/// Also refuses connection timeouts of zero ([`ServeError::ZeroTimeout`]).
pub(crate) fn check_serving(opts: &GrpcOptions) -> Result<(), ServeError> {
    let timeouts = [
        ("tls_handshake_timeout", opts.tls_handshake_timeout),
        ("preface_timeout", opts.preface_timeout),
        ("auth_timeout", opts.auth_timeout),
    ];
    if let Some((name, _)) = timeouts.into_iter().find(|(_, t)| t.is_zero()) {
        tracing::error!(
            "not serving: GrpcOptions::{name} is zero, which would close every connection"
        );
        return Err(ServeError::ZeroTimeout(name));
    }
    match &opts.tls {
        Some(tls) if !tls.serves() => {
            tracing::error!(
                "not serving: GrpcOptions::tls has no certificate and key to serve with \
                 (a client-only TLS configuration); give the node its certificate and key, \
                 or no TLS configuration to serve plain TCP"
            );
            Err(ServeError::TlsWithoutIdentity)
        }
        _ => Ok(()),
    }
}
