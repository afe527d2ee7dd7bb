//! The seam between a node and the network.
//!
//! raft-core has no socket code. A transport plugs in on two sides:
//!
//! * **Outgoing**: a [`Transport`] — openraft's `RaftNetworkFactory` over [`TypeConfig`], whose
//!   connections send snapshots as [`SnapshotData`] — is given to [`Node::start`]. openraft's
//!   request and response types are re-exported in [`rpc`] so a transport can name them.
//! * **Incoming**: a transport delivers what it receives to the target node's [`RpcHandler`]
//!   (from [`Node::rpc_handler`]), which is not generic over the user's state machine.
//!
//! The node checks both directions: a request is refused before the consensus engine sees it if
//! it is inconsistent ([`RpcHandlerError::Invalid`]), and an answer whose vote has a term no
//! election reaches is dropped as if the peer had not answered (an `Unreachable` error and a
//! warning). A transport only moves bytes.
//!
//! **Stability.** This module, [`rpc`] and the openraft aliases in [`crate::types`] are the
//! surface for writing a transport. They name openraft's message types, so they follow the
//! pinned openraft version and are exempt from raftkit's semver promise: a raftkit release that
//! moves to a newer openraft may change them. Applications — everything that embeds a node,
//! writes and reads through it, and uses raft-grpc as the transport — never name an openraft
//! type.
//!
//! [`Node::start`]: crate::Node::start
//! [`Node::rpc_handler`]: crate::Node::rpc_handler

use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use openraft::RaftNetworkFactory;
use openraft::network::NetSnapshot;

use crate::cluster_id::ClusterId;
use crate::cluster_id::ClusterIdError;
use crate::snapshot::SnapshotData;
use crate::snapshot::SnapshotError;
use crate::snapshot::SnapshotSink;
use crate::types::NodeId;
use crate::types::TypeConfig;
use crate::types::Vote;

/// openraft's internal RPC types under [`TypeConfig`], for transport implementations.
pub mod rpc {
    use crate::types::TypeConfig;

    /// Replicates entries (or a heartbeat).
    pub type AppendEntriesRequest = openraft::raft::AppendEntriesRequest<TypeConfig>;
    /// The follower's answer to [`AppendEntriesRequest`].
    pub type AppendEntriesResponse = openraft::raft::AppendEntriesResponse<TypeConfig>;
    /// Asks for a vote (or a pre-vote).
    pub type VoteRequest = openraft::raft::VoteRequest<TypeConfig>;
    /// The answer to [`VoteRequest`].
    pub type VoteResponse = openraft::raft::VoteResponse<TypeConfig>;
    /// Announces a leadership transfer.
    pub type TransferLeaderRequest = openraft::raft::TransferLeaderRequest<TypeConfig>;
    /// The answer to [`TransferLeaderRequest`].
    pub type TransferLeaderResponse = openraft::raft::TransferLeaderResponse<TypeConfig>;
    /// The answer to one request of a pipelined append stream.
    pub type StreamAppendResult = openraft::raft::StreamAppendResult<TypeConfig>;
    /// The answer to a completed snapshot transfer.
    pub type SnapshotResponse = openraft::raft::SnapshotResponse<TypeConfig>;
    /// A transport failure as openraft classifies it (unreachable, timeout, network).
    pub type RpcError = openraft::errors::RPCError<TypeConfig>;
    /// A snapshot transfer failure as openraft classifies it.
    pub type StreamingError = openraft::errors::StreamingError<TypeConfig>;
    /// The peer cannot be reached; openraft backs off before retrying.
    pub type Unreachable = openraft::errors::Unreachable<TypeConfig>;
    /// A transient network failure; openraft retries soon.
    pub type NetworkError = openraft::errors::NetworkError<TypeConfig>;
    /// The RPC ran out of time.
    pub type Timeout = openraft::errors::Timeout<TypeConfig>;
    /// A snapshot as openraft hands it to a transport.
    pub type Snapshot = crate::types::Snapshot;
    pub use openraft::RPCTypes;
    pub use openraft::errors::ReplicationClosed;
    pub use openraft::network::Backoff;
    pub use openraft::network::RPCOption;
    pub use openraft::network::RaftNetworkV2;
}

/// An outgoing transport: openraft's network factory whose connections carry raftkit snapshots.
///
/// Implemented automatically for every suitable `RaftNetworkFactory`.
pub trait Transport:
    RaftNetworkFactory<TypeConfig, Network: NetSnapshot<TypeConfig, SnapshotData = SnapshotData>>
{
}

impl<T> Transport for T where
    T: RaftNetworkFactory<
            TypeConfig,
            Network: NetSnapshot<TypeConfig, SnapshotData = SnapshotData>,
        >
{
}

/// Why a node could not serve an incoming RPC.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RpcHandlerError {
    /// The node is shut down or stopped after a fatal error.
    #[error("node {0} is shut down")]
    Shutdown(NodeId),
    /// The request is inconsistent and was refused before reaching the consensus engine.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// A received snapshot could not be stored or verified.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// The request belongs to another cluster (or this node could not store the cluster id).
    #[error(transparent)]
    Cluster(#[from] ClusterIdError),
    /// The request, or a peer's answer, comes from or is meant for a wiped node (see
    /// [`crate::incarnation`]).
    #[error(transparent)]
    Incarnation(#[from] crate::incarnation::IncarnationError),
}

/// The receiving side of a node's internal RPCs, independent of the user's state machine type.
pub trait RpcHandler: Send + Sync + 'static {
    /// The node this handler serves.
    fn node_id(&self) -> NodeId;

    /// The node's cluster id, once known; a transport sends it with every request.
    fn cluster_id(&self) -> Option<ClusterId>;

    /// Checks the cluster id an incoming request carries, before anything else is done with
    /// the request: another cluster's id is refused, naming both. A node that has no id yet
    /// takes (and stores) the first one it is sent.
    fn check_cluster(
        &self,
        theirs: Option<ClusterId>,
    ) -> BoxFuture<'_, Result<(), RpcHandlerError>>;

    /// This node's incarnation (see [`crate::incarnation`]); a transport sends it with every
    /// request and every answer.
    fn incarnation(&self) -> u64;

    /// The incarnation this node's applied state binds to `peer`, if any; a transport sends it
    /// with every request to `peer` as the incarnation the request is meant for.
    fn expected_incarnation(&self, peer: NodeId) -> Option<u64>;

    /// Checks the incarnations an incoming request from `from` carries — `theirs`, the
    /// sender's, and `expects`, the one it meant to reach — after the cluster id and before
    /// anything else is done with the request. A request meant for an earlier incarnation of
    /// this node, or from a node whose incarnation is not the one bound to its id, is refused;
    /// a leader that learns the incarnation of a member not yet bound proposes the binding.
    fn check_incarnation(
        &self,
        from: NodeId,
        theirs: Option<u64>,
        expects: Option<u64>,
    ) -> Result<(), RpcHandlerError>;

    /// Checks the incarnation `theirs` in `peer`'s answer to a request this node sent, as
    /// [`RpcHandler::check_incarnation`] checks a sender's: a transport reports an answer that
    /// fails it as a failed call.
    fn check_answer(&self, peer: NodeId, theirs: Option<u64>) -> Result<(), RpcHandlerError>;

    /// Handles a replication (or heartbeat) request.
    fn append_entries(
        &self,
        req: rpc::AppendEntriesRequest,
    ) -> BoxFuture<'_, Result<rpc::AppendEntriesResponse, RpcHandlerError>>;

    /// Handles a vote request.
    fn vote(
        &self,
        req: rpc::VoteRequest,
    ) -> BoxFuture<'_, Result<rpc::VoteResponse, RpcHandlerError>>;

    /// Handles a pre-vote request (asks whether a vote would be granted, changes nothing).
    fn pre_vote(
        &self,
        req: rpc::VoteRequest,
    ) -> BoxFuture<'_, Result<rpc::VoteResponse, RpcHandlerError>>;

    /// Handles a leadership-transfer announcement.
    fn transfer_leader(
        &self,
        req: rpc::TransferLeaderRequest,
    ) -> BoxFuture<'_, Result<rpc::TransferLeaderResponse, RpcHandlerError>>;

    /// Handles a pipelined stream of replication requests, answering each in order.
    fn stream_append(
        &self,
        input: BoxStream<'static, rpc::AppendEntriesRequest>,
    ) -> BoxStream<'static, Result<rpc::StreamAppendResult, RpcHandlerError>>;

    /// Starts receiving a snapshot sent under `vote`, of `size` bytes if the sender announced
    /// it. Call it on the first chunk, before writing any data: a sender whose vote is older
    /// than this node's is answered at once ([`SnapshotReceive::Refuse`]); otherwise the sink
    /// receives the bytes — one snapshot at a time per node, within the size limit and the free
    /// disk space — and the finished data goes to [`RpcHandler::install_snapshot`].
    fn snapshot_sink(
        &self,
        vote: &Vote,
        size: Option<u64>,
    ) -> Result<SnapshotReceive, RpcHandlerError>;

    /// Installs a snapshot received completely (and verified by [`SnapshotSink::finish`]).
    fn install_snapshot(
        &self,
        vote: Vote,
        meta: crate::types::SnapshotMeta,
        data: SnapshotData,
    ) -> BoxFuture<'_, Result<rpc::SnapshotResponse, RpcHandlerError>>;
}

/// How a node answers the first chunk of a snapshot.
pub enum SnapshotReceive {
    /// Receive the snapshot into this sink.
    Receive(SnapshotSink),
    /// The sender's vote is older than this node's: send it this answer (which carries the
    /// newer vote, so the sender steps down) and discard the snapshot.
    Refuse(rpc::SnapshotResponse),
}

/// A shared [`RpcHandler`].
pub type SharedRpcHandler = Arc<dyn RpcHandler>;
