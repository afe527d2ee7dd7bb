//! [`GrpcNode`]: a node, its gRPC transport and its server, started together.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use raft_core::Config;
use raft_core::Node;
use raft_core::Queryable;
use raft_core::StateMachine;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::options::GrpcOptions;
use crate::server::LocalClient;
use crate::server::ServeError;
use crate::server::Server;
use crate::server::ServerStats;
use crate::transport::GrpcTransport;

/// A [`GrpcNode`] could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The node itself could not start (storage, configuration).
    #[error(transparent)]
    Node(#[from] raft_core::Error),
    /// The listener has no local address.
    #[error("listener address: {0}")]
    Listener(std::io::Error),
    /// The node's limits and the transport's message size do not fit together.
    #[error(transparent)]
    Limits(#[from] crate::options::LimitsError),
    /// The server could not start (a TLS configuration without a certificate to serve with,
    /// [`ServeError::TlsWithoutIdentity`], or a connection timeout of zero,
    /// [`ServeError::ZeroTimeout`]); the node was not started.
    #[error(transparent)]
    Serve(#[from] ServeError),
}

/// How long a stopping server waits for in-flight calls before closing their connections.
const DRAIN: Duration = Duration::from_secs(2);

/// A node serving gRPC: other nodes replicate to it and clients call it at [`GrpcNode::addr`].
///
/// Stop it with [`GrpcNode::shutdown`]. Dropping it (or abandoning a `shutdown` before it
/// completes) stops it too, in a background task on the current Tokio runtime: the server stops
/// accepting and the node's consensus stops, so the node cannot go on leading with no server
/// behind it. Only `shutdown` lets the caller wait for the log to be flushed.
pub struct GrpcNode<S: StateMachine> {
    node: Node<S>,
    client: LocalClient<S>,
    addr: SocketAddr,
    stats: Arc<ServerStats>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServeError>>>,
    /// Whether the node was shut down (by `shutdown`); if not, drop stops it.
    node_stopped: bool,
    /// The task that asks the voters for their storage alarms (see `alarms.rs`).
    alarms: JoinHandle<()>,
}

impl<S: Queryable> GrpcNode<S> {
    /// Starts a node that sends over gRPC and serves on `listener`, remote queries included.
    /// The addresses given to `initialize` and `add_learner` are the nodes' listener addresses.
    pub async fn start(
        config: Config,
        state_machine: S,
        listener: TcpListener,
        opts: GrpcOptions,
    ) -> Result<Self, StartError> {
        GrpcNode::launch(config, state_machine, listener, opts, Server::new).await
    }
}

impl<S: StateMachine> GrpcNode<S> {
    /// Like [`GrpcNode::start`], for a state machine that answers no remote queries (it need
    /// not implement [`Queryable`]): writes, sessions, membership and in-process reads
    /// ([`Node::read`]) work as usual; a remote `Read` call is refused as unimplemented.
    pub async fn start_without_queries(
        config: Config,
        state_machine: S,
        listener: TcpListener,
        opts: GrpcOptions,
    ) -> Result<Self, StartError> {
        GrpcNode::launch(
            config,
            state_machine,
            listener,
            opts,
            Server::without_queries,
        )
        .await
    }

    async fn launch(
        config: Config,
        state_machine: S,
        listener: TcpListener,
        opts: GrpcOptions,
        server: fn(Node<S>, &GrpcTransport) -> Server<S>,
    ) -> Result<Self, StartError> {
        opts.check_limits(&config)?;
        crate::server::check_serving(&opts)?;
        let addr = listener.local_addr().map_err(StartError::Listener)?;
        let transport = GrpcTransport::new(config.id, opts);
        let node = Node::start(config, state_machine, transport.clone()).await?;
        let server = server(node.clone(), &transport);
        let stats = server.stats();
        let client = server.local_client();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(listener, async {
            let _ = stopped.await;
        }));
        let alarms = tokio::spawn(crate::alarms::run(client.clone()));
        Ok(GrpcNode {
            node,
            client,
            addr,
            stats,
            stop: Some(stop),
            task: Some(task),
            node_stopped: false,
            alarms,
        })
    }

    /// The node.
    pub fn node(&self) -> &Node<S> {
        &self.node
    }

    /// Reads and writes from this process that work on any node (see [`LocalClient`]).
    pub fn client(&self) -> &LocalClient<S> {
        &self.client
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Counters of what the server received.
    pub fn stats(&self) -> &Arc<ServerStats> {
        &self.stats
    }

    /// Resolves when the node stops: `Ok(())` after a shutdown, or the error that stopped it (a
    /// storage failure, such as a full disk). See [`Node::stopped`]; an application should exit
    /// or restart when it resolves with an error.
    pub async fn stopped(&self) -> raft_core::Result<()> {
        self.node.stopped().await
    }

    /// Stops serving, then shuts the node down (flushing its log). Bounded: calls still in flight
    /// after a short drain have their connections closed, and streams (a leader's replication
    /// stream) end as soon as the shutdown begins.
    pub async fn shutdown(mut self) -> raft_core::Result<()> {
        self.alarms.abort();
        if let Some(task) = self.stop_serving() {
            drain(task).await;
        }
        let result = self.node.shutdown().await;
        self.node_stopped = true;
        result
    }

    /// Tells the server to stop; returns its task to wait for.
    fn stop_serving(&mut self) -> Option<JoinHandle<Result<(), ServeError>>> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.take()
    }
}

/// Waits for a stopping server, for at most [`DRAIN`]; then aborts it.
async fn drain(mut task: JoinHandle<Result<(), ServeError>>) {
    match tokio::time::timeout(DRAIN, &mut task).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "gRPC server stopped with an error"),
        Ok(Err(e)) => tracing::warn!(error = %e, "gRPC server task failed"),
        Err(_) => {
            tracing::warn!(
                "gRPC server still draining after {DRAIN:?}; closing its remaining connections"
            );
            task.abort();
        }
    }
}

impl<S: StateMachine> Drop for GrpcNode<S> {
    fn drop(&mut self) {
        self.alarms.abort();
        let task = self.stop_serving();
        if self.node_stopped {
            return;
        }
        let node = self.node.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    if let Some(task) = task {
                        drain(task).await;
                    }
                    if let Err(e) = node.shutdown().await {
                        tracing::warn!(error = %e, "dropped node did not shut down cleanly");
                    }
                });
            }
            Err(_) => tracing::warn!(
                node = node.id(),
                "GrpcNode dropped outside a Tokio runtime: its node stops with the runtime"
            ),
        }
    }
}
