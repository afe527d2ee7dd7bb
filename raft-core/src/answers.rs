//! Peers' answers, checked before the consensus engine reads them.
//!
//! An answer carries the peer's vote, and openraft adopts a vote higher than its own (a vote
//! reply, a `HigherVote` from replication, a snapshot reply). Requests are checked on arrival
//! (`crate::validate`); answers arrive through the transport, so [`Node::start`] wraps every
//! transport in a [`CheckedTransport`] that applies the same bound to what comes back: a vote
//! whose term is past [`MAX_TERM`] would make this node's next election overflow `term + 1`
//! (a panic in a debug build, term 0 in a release build). Such an answer becomes an
//! `Unreachable` error — openraft backs off as from a peer that did not answer — and a warning
//! naming the peer.
//!
//! [`Node::start`]: crate::Node::start

use std::future::Future;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use openraft::BasicNode;
use openraft::RaftNetworkFactory;
use openraft::network::NetBackoff;
use openraft::network::NetSnapshot;
use openraft::network::NetStreamAppend;
use openraft::network::NetTransferLeader;
use openraft::network::NetVote;
use openraft::raft::StreamAppendError;
use openraft::raft::TransferLeaderError;

use crate::snapshot::SnapshotData;
use crate::transport::Transport;
use crate::transport::rpc;
use crate::types::NodeId;
use crate::types::TypeConfig;
use crate::types::Vote;
use crate::validate::MAX_TERM;

/// A transport whose connections check every answer (see the module documentation).
pub(crate) struct CheckedTransport<T>(pub(crate) T);

/// One connection of a [`CheckedTransport`].
pub(crate) struct CheckedConnection<N> {
    inner: N,
    target: NodeId,
}

impl<T: Transport> RaftNetworkFactory<TypeConfig> for CheckedTransport<T> {
    type Network = CheckedConnection<T::Network>;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        CheckedConnection {
            inner: self.0.new_client(target, node).await,
            target,
        }
    }

    async fn new_heartbeat_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        CheckedConnection {
            inner: self.0.new_heartbeat_client(target, node).await,
            target,
        }
    }

    async fn new_snapshot_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        CheckedConnection {
            inner: self.0.new_snapshot_client(target, node).await,
            target,
        }
    }
}

/// Why `vote`, answered by `peer`, is refused; `None` if it is acceptable.
fn refused(peer: NodeId, vote: &Vote) -> Option<String> {
    (vote.leader_id.term > MAX_TERM).then(|| {
        let why = format!(
            "node {peer} answered with the vote {vote}, whose term is past {MAX_TERM}, which no election reaches"
        );
        tracing::warn!(peer, "{why}; the answer is dropped");
        why
    })
}

fn check(peer: NodeId, vote: &Vote) -> Result<(), rpc::RpcError> {
    match refused(peer, vote) {
        Some(why) => Err(rpc::RpcError::Unreachable(rpc::Unreachable::from_string(
            why,
        ))),
        None => Ok(()),
    }
}

/// A vote (or pre-vote) answer from `peer`, if its vote passes [`check`].
fn vote_answer(
    peer: NodeId,
    answer: rpc::VoteResponse,
) -> Result<rpc::VoteResponse, rpc::RpcError> {
    check(peer, &answer.vote)?;
    Ok(answer)
}

fn check_append(peer: NodeId, answer: &rpc::StreamAppendResult) -> Result<(), rpc::RpcError> {
    match answer {
        Err(StreamAppendError::HigherVote(vote)) => check(peer, vote),
        Ok(_) | Err(StreamAppendError::Conflict(_)) => Ok(()),
    }
}

impl<N: NetBackoff<TypeConfig>> NetBackoff<TypeConfig> for CheckedConnection<N> {
    fn backoff(&self) -> Option<rpc::Backoff> {
        self.inner.backoff()
    }
}

impl<N: NetVote<TypeConfig>> NetVote<TypeConfig> for CheckedConnection<N> {
    async fn vote(
        &mut self,
        req: rpc::VoteRequest,
        option: rpc::RPCOption,
    ) -> Result<rpc::VoteResponse, rpc::RpcError> {
        vote_answer(self.target, self.inner.vote(req, option).await?)
    }

    async fn pre_vote(
        &mut self,
        req: rpc::VoteRequest,
        option: rpc::RPCOption,
    ) -> Result<rpc::VoteResponse, rpc::RpcError> {
        vote_answer(self.target, self.inner.pre_vote(req, option).await?)
    }
}

impl<N: NetStreamAppend<TypeConfig>> NetStreamAppend<TypeConfig> for CheckedConnection<N> {
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: rpc::RPCOption,
    ) -> BoxFuture<
        's,
        Result<BoxStream<'s, Result<rpc::StreamAppendResult, rpc::RpcError>>, rpc::RpcError>,
    >
    where
        S: futures_util::Stream<Item = rpc::AppendEntriesRequest> + Send + Unpin + 'static,
    {
        let target = self.target;
        let replies = self.inner.stream_append(input, option);
        Box::pin(async move {
            let replies = replies.await?;
            Ok(replies
                .map(move |reply| {
                    let answer = reply?;
                    check_append(target, &answer)?;
                    Ok(answer)
                })
                .boxed())
        })
    }
}

impl<N> NetSnapshot<TypeConfig> for CheckedConnection<N>
where
    N: NetSnapshot<TypeConfig, SnapshotData = SnapshotData>,
{
    type SnapshotData = SnapshotData;

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: rpc::Snapshot,
        cancel: impl Future<Output = rpc::ReplicationClosed> + Send + 'static,
        option: rpc::RPCOption,
    ) -> Result<rpc::SnapshotResponse, rpc::StreamingError> {
        let answer = self
            .inner
            .full_snapshot(vote, snapshot, cancel, option)
            .await?;
        if let Some(why) = refused(self.target, &answer.vote) {
            return Err(rpc::StreamingError::Unreachable(
                rpc::Unreachable::from_string(why),
            ));
        }
        Ok(answer)
    }
}

impl<N: NetTransferLeader<TypeConfig>> NetTransferLeader<TypeConfig> for CheckedConnection<N> {
    async fn transfer_leader(
        &mut self,
        req: rpc::TransferLeaderRequest,
        option: rpc::RPCOption,
    ) -> Result<rpc::TransferLeaderResponse, rpc::RpcError> {
        let answer = self.inner.transfer_leader(req, option).await?;
        if let Err(TransferLeaderError::VoteChanged { actual, .. }) = &answer {
            check(self.target, actual)?;
        }
        Ok(answer)
    }
}
