//! [`LocalClient`]: reads and writes from inside a node's own process, answered the way the
//! cluster service answers remote clients, with typed errors.

use std::sync::Arc;
use std::time::Duration;

use raft_core::ApplyError;
use raft_core::Consistency;
use raft_core::Node;
use raft_core::Queryable;
use raft_core::Session;
use raft_core::StateMachine;
use tonic::Request;
use tonic::Status;
use tonic::transport::Channel;

use crate::pb;
use crate::pb::cluster_client::ClusterClient as PbClusterClient;
use crate::request_error::RequestError;
use crate::server::Op;
use crate::server::Shared;

/// Reads and writes from inside a node's own process, the way the cluster service serves remote
/// clients: a write is applied here if this node leads, otherwise forwarded once to the leader;
/// a linearizable read on a follower asks the leader for a read index and is answered locally.
///
/// Errors are [`RequestError`]s: not the leader (with a [`LeaderHint`](raft_core::LeaderHint),
/// when forwarding is off or the leader is unknown), no quorum, shut down, timeouts and other
/// unknown outcomes, limits, authentication, internal failures. A caller that retries transient
/// failures ([`RequestError::is_transient`]) paces itself with [`Backoff`](crate::Backoff), and
/// keeps a write's [`Session`] across retries so that it is applied at most once.
///
/// Cheap to clone. Get one from [`GrpcNode::client`](crate::GrpcNode::client) or
/// [`Server::local_client`](crate::Server::local_client).
pub struct LocalClient<S: StateMachine> {
    shared: Arc<Shared<S>>,
}

impl<S: StateMachine> Clone for LocalClient<S> {
    fn clone(&self) -> Self {
        LocalClient {
            shared: self.shared.clone(),
        }
    }
}

impl<S: StateMachine> LocalClient<S> {
    pub(crate) fn new(shared: Arc<Shared<S>>) -> LocalClient<S> {
        LocalClient { shared }
    }

    /// Applies `command` and returns its output. Without a session, a write retried after an
    /// unknown outcome may be applied twice; see [`LocalClient::write_in_session`].
    pub async fn write(&self, command: &S::Command) -> Result<S::Output, RequestError> {
        self.send(None, command).await
    }

    /// Applies `command` as sequence `session.sequence` of the open client session
    /// `session.client_id` (see [`LocalClient::register_session`]) and returns its output. A
    /// retry with the same session and sequence returns the first answer instead of applying
    /// again. [`RequestError::UnknownSession`] and [`RequestError::SessionExpired`] mean the
    /// session can no longer answer: the outcome is unknown, and the next write needs a new
    /// session.
    pub async fn write_in_session(
        &self,
        session: Session,
        command: &S::Command,
    ) -> Result<S::Output, RequestError> {
        self.send(Some(session), command).await
    }

    async fn send(
        &self,
        session: Option<Session>,
        command: &S::Command,
    ) -> Result<S::Output, RequestError> {
        let bytes = raft_core::codec::encode(command)
            .map_err(|e| RequestError::InvalidCommand(e.to_string()))?;
        let reply = self.op(session, bytes.into(), Op::Apply).await?;
        raft_core::codec::decode(&reply.output).map_err(|e| RequestError::Internal {
            code: crate::status::ErrorCode::OutputEncoding,
            message: ApplyError::OutputEncoding(e.to_string()).to_string(),
        })
    }

    /// Opens a client session (on the leader) and returns its client id; see
    /// [`Node::register_session`]. A caller that retries a registration after an unknown
    /// outcome opens a session per attempt that applied; [`LocalClient::register_session_keyed`]
    /// does not.
    pub async fn register_session(&self) -> Result<u64, RequestError> {
        let reply = self.op(None, bytes::Bytes::new(), Op::Register(0)).await?;
        Ok(reply.session_id)
    }

    /// Opens a client session registered with `key` (on the leader) and returns its client id:
    /// while that session is open, registering with the same key returns it again instead of
    /// opening another. Draw a random key (not 0, which means none) for each session and keep
    /// it across the retries of its registration; see [`Node::register_session_keyed`].
    pub async fn register_session_keyed(&self, key: u64) -> Result<u64, RequestError> {
        let reply = self
            .op(None, bytes::Bytes::new(), Op::Register(key))
            .await?;
        Ok(reply.session_id)
    }

    /// Closes the client session `client_id` (on the leader); see [`Node::close_session`].
    pub async fn close_session(&self, client_id: u64) -> Result<(), RequestError> {
        let session = Session {
            client_id,
            sequence: 0,
        };
        self.op(Some(session), bytes::Bytes::new(), Op::Close)
            .await
            .map(drop)
    }

    /// Runs a write (or opens or closes a session, as `op` says) here if this node leads, or
    /// forwards it to the leader, as the node itself.
    async fn op(
        &self,
        session: Option<Session>,
        command: bytes::Bytes,
        op: Op,
    ) -> Result<pb::WriteReply, RequestError> {
        self.shared
            .write(session, command, op, false, None, None)
            .await
            .map_err(|s| RequestError::from(&s))
    }

    /// The node itself.
    pub fn node(&self) -> &Node<S> {
        &self.shared.node
    }

    /// A cluster-service client of the node at `addr`, over this node's pooled connections.
    pub(crate) fn peer(&self, addr: &str) -> Result<PbClusterClient<Channel>, Status> {
        self.shared.cluster_client(addr)
    }

    /// A request to a peer's cluster service, within `timeout`, carrying this node's peer
    /// credentials.
    pub(crate) fn peer_request<T>(&self, msg: T, timeout: Duration) -> Request<T> {
        let mut r = pb::request(msg, timeout);
        self.shared
            .opts
            .auth
            .stamp_peer(r.metadata_mut(), self.shared.node.id());
        r
    }
}

impl<S: Queryable> LocalClient<S> {
    /// Answers `query` at `consistency` from this node's state machine; a linearizable (or
    /// lease) read on a follower first asks the leader how far it must have applied.
    pub async fn read(
        &self,
        query: S::Query,
        consistency: Consistency,
    ) -> Result<S::Reply, RequestError> {
        self.shared
            .read(query, consistency, None)
            .await
            .map_err(|s| RequestError::from(&s))
    }
}
