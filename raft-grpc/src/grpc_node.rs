//! [`GrpcNode`]: a node, its gRPC transport and its server, started together.

use std::net::SocketAddr;
use std::sync::Arc;

use raft_core::Config;
use raft_core::Node;
use raft_core::Queryable;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::options::GrpcOptions;
use crate::server::NodeClient;
use crate::server::ServeError;
use crate::server::Server;
use crate::server::ServerStats;
use crate::transport::GrpcTransport;

/// A [`GrpcNode`] could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The node itself could not start (storage, configuration).
    #[error(transparent)]
    Node(#[from] raft_core::Error),
    /// The listener has no local address.
    #[error("listener address: {0}")]
    Listener(std::io::Error),
}

/// A node serving gRPC: other nodes replicate to it and clients call it at [`GrpcNode::addr`].
pub struct GrpcNode<S: Queryable> {
    node: Node<S>,
    client: NodeClient<S>,
    addr: SocketAddr,
    stats: Arc<ServerStats>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServeError>>>,
}

impl<S: Queryable> GrpcNode<S> {
    /// Starts a node that sends over gRPC and serves on `listener`. The addresses given to
    /// `initialize` and `add_learner` are the nodes' listener addresses.
    pub async fn start(
        config: Config,
        state_machine: S,
        listener: TcpListener,
        opts: GrpcOptions,
    ) -> Result<Self, StartError> {
        let addr = listener.local_addr().map_err(StartError::Listener)?;
        let transport = GrpcTransport::new(config.id, opts);
        let node = Node::start(config, state_machine, transport.clone()).await?;
        let server = Server::new(node.clone(), &transport);
        let stats = server.stats();
        let client = server.local_client();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(listener, async {
            let _ = stopped.await;
        }));
        Ok(GrpcNode {
            node,
            client,
            addr,
            stats,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// The node.
    pub fn node(&self) -> &Node<S> {
        &self.node
    }

    /// Reads and writes from this process that work on any node (see [`NodeClient`]).
    pub fn client(&self) -> &NodeClient<S> {
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

    /// Stops serving, then shuts the node down (flushing its log).
    pub async fn shutdown(mut self) -> raft_core::Result<()> {
        self.stop_serving().await;
        self.node.shutdown().await
    }

    async fn stop_serving(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "gRPC server stopped with an error"),
                Err(e) => tracing::warn!(error = %e, "gRPC server task failed"),
            }
        }
    }
}

impl<S: Queryable> Drop for GrpcNode<S> {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
