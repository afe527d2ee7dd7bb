//! The receiving side of a node's internal RPCs ([`RpcHandler`]): every message a peer sends is
//! validated here, before openraft sees it, so a transport written by a user is as safe as
//! raftkit's own.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::Mutex;

use futures_util::FutureExt;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use openraft::async_runtime::watch::WatchReceiver;

use super::Inner;
use super::RaftHandle;
use crate::apply::SmShared;
use crate::cluster_id::ClusterId;
use crate::cluster_id::ClusterIdentity;
use crate::incarnation::IncarnationError;
use crate::log::LogIds;
use crate::metrics::Role;
use crate::snapshot::SnapshotData;
use crate::snapshot::SnapshotStore;
use crate::state_machine::StateMachine;
use crate::transport::RpcHandler;
use crate::transport::RpcHandlerError;
use crate::transport::SnapshotReceive;
use crate::transport::rpc;
use crate::types::LogId;
use crate::types::NodeId;
use crate::types::Proposal;
use crate::types::Snapshot;
use crate::types::SnapshotMeta;
use crate::types::Vote;
use crate::validate;

/// A node's metrics feed, as openraft publishes it.
type MetricsFeed = openraft::type_config::alias::WatchReceiverOf<
    crate::types::TypeConfig,
    openraft::RaftMetrics<crate::types::TypeConfig>,
>;

/// The vote and the committed log id of one metrics snapshot.
fn known(metrics: &MetricsFeed) -> validate::Known {
    let m = metrics.borrow_watched();
    validate::Known {
        vote: m.vote,
        committed: m.local_committed,
    }
}

/// Serves incoming RPCs for one node.
pub(super) struct Handler<S: StateMachine> {
    id: NodeId,
    raft: RaftHandle<S>,
    snapshots: Arc<SnapshotStore>,
    cluster: Arc<ClusterIdentity>,
    sm: Arc<SmShared<S>>,
    incarnation: u64,
    binding: Arc<Mutex<BTreeSet<NodeId>>>,
    log: LogIds,
    installed: Arc<tokio::sync::Mutex<Option<LogId>>>,
    let_through: Arc<super::shadow::LetThrough>,
}

impl<S: StateMachine> Handler<S> {
    /// The handler of the node `inner`.
    pub(super) fn new(inner: &Inner<S>) -> Handler<S> {
        Handler {
            id: inner.id,
            raft: inner.raft.clone(),
            snapshots: inner.snapshots.clone(),
            cluster: inner.cluster.clone(),
            sm: inner.sm.clone(),
            incarnation: inner.incarnation,
            binding: inner.binding.clone(),
            log: inner.log_ids.clone(),
            installed: inner.installed.clone(),
            let_through: inner.let_through.clone(),
        }
    }

    /// This node's vote and the log id it knows committed.
    fn known(&self) -> validate::Known {
        known(&self.raft.metrics())
    }

    fn stopped(&self) -> RpcHandlerError {
        RpcHandlerError::Shutdown(self.id)
    }

    /// Checks `peer`'s incarnation against its binding; an unbound member's is learnt.
    fn check_peer(&self, peer: NodeId, theirs: Option<u64>) -> Result<(), RpcHandlerError> {
        let Some(theirs) = theirs else {
            return Ok(());
        };
        match self.sm.binding(peer) {
            Some(bound) if bound != theirs => Err(IncarnationError::PeerWiped {
                peer,
                bound,
                actual: theirs,
            }
            .into()),
            Some(_) => Ok(()),
            None => {
                self.learn(peer, theirs);
                Ok(())
            }
        }
    }

    /// On the leader: proposes the bindings of `peer` (if it is a member) and of this node, if
    /// they are not bound yet. Runs in the background; a failed proposal is retried on a later
    /// message.
    fn learn(&self, peer: NodeId, theirs: u64) {
        let wanted: Vec<(NodeId, u64)> = {
            let rx = self.raft.metrics();
            let m = rx.borrow_watched();
            if Role::of(&m) != Role::Leader {
                return;
            }
            let member = m.membership_config.membership().get_node(&peer).is_some();
            [(peer, theirs, member), (self.id, self.incarnation, true)]
                .into_iter()
                .filter(|(id, _, member)| *member && self.sm.binding(*id).is_none())
                .map(|(id, inc, _)| (id, inc))
                .collect()
        };
        for (id, incarnation) in wanted {
            if !crate::sync::lock(&self.binding).insert(id) {
                continue;
            }
            let raft = self.raft.clone();
            let pending = self.binding.clone();
            tokio::spawn(async move {
                let result = raft
                    .client_write(Proposal::BindIncarnation(id, incarnation))
                    .await;
                crate::sync::lock(&pending).remove(&id);
                if let Err(error) = result {
                    tracing::debug!(node = id, %error, "incarnation binding not proposed; retried on a later message");
                }
            });
        }
    }
}

/// Asks the state machine to read a peer's snapshot before it is installed
/// ([`StateMachine::check_snapshot`]): a snapshot it cannot read is refused, rather than
/// stopping the node at install.
async fn check_snapshot_state<S: StateMachine>(data: &SnapshotData) -> Result<(), RpcHandlerError> {
    let data = data.clone();
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let parsed = crate::snapshot::parse(&data)?;
        let mut input = std::io::BufReader::with_capacity(64 << 10, parsed.user_data(&data));
        S::check_snapshot(&mut input)
    })
    .await
    .map_err(|e| RpcHandlerError::Invalid(format!("checking the snapshot failed: {e}")))?
    .map_err(|e| RpcHandlerError::Invalid(format!("the snapshot's state does not read: {e}")))
}

impl<S: StateMachine> RpcHandler for Handler<S> {
    fn node_id(&self) -> NodeId {
        self.id
    }

    fn incarnation(&self) -> u64 {
        self.incarnation
    }

    fn expected_incarnation(&self, peer: NodeId) -> Option<u64> {
        self.sm.binding(peer)
    }

    fn check_incarnation(
        &self,
        from: NodeId,
        theirs: Option<u64>,
        expects: Option<u64>,
    ) -> Result<(), RpcHandlerError> {
        if let Some(expected) = expects
            && expected != self.incarnation
        {
            return Err(IncarnationError::Wiped {
                node: self.id,
                expected,
                actual: self.incarnation,
            }
            .into());
        }
        self.check_peer(from, theirs)
    }

    fn check_answer(&self, peer: NodeId, theirs: Option<u64>) -> Result<(), RpcHandlerError> {
        self.check_peer(peer, theirs)
    }

    fn cluster_id(&self) -> Option<ClusterId> {
        self.cluster.get()
    }

    fn check_cluster(
        &self,
        theirs: Option<ClusterId>,
    ) -> BoxFuture<'_, Result<(), RpcHandlerError>> {
        let ours = self.cluster.get();
        if ours.is_some() || theirs.is_none() {
            // Decided without touching the disk: the common case, on every call.
            return futures_util::future::ready(
                self.cluster.check_or_adopt(theirs).map_err(Into::into),
            )
            .boxed();
        }
        let cluster = self.cluster.clone();
        async move {
            tokio::task::spawn_blocking(move || cluster.check_or_adopt(theirs))
                .await
                .map_err(|_| self.stopped())?
                .map_err(Into::into)
        }
        .boxed()
    }

    fn append_entries(
        &self,
        mut req: rpc::AppendEntriesRequest,
    ) -> BoxFuture<'_, Result<rpc::AppendEntriesResponse, RpcHandlerError>> {
        async move {
            validate::append(&req, self.id)?;
            let known = self.let_through.known(&req.vote, self.known());
            validate::agrees_with_committed(&req, &known)?;
            // A single request is judged against the log as it is (see `shadow` for what that
            // leaves open).
            let _ = validate::limit_commit(&mut req, |index| self.log.at(index));
            self.let_through.record(&req);
            self.raft
                .append_entries(req)
                .await
                .map_err(|_| self.stopped())
        }
        .boxed()
    }

    fn vote(
        &self,
        req: rpc::VoteRequest,
    ) -> BoxFuture<'_, Result<rpc::VoteResponse, RpcHandlerError>> {
        async move {
            validate::vote(&req, self.id)?;
            self.raft.vote(req).await.map_err(|_| self.stopped())
        }
        .boxed()
    }

    fn pre_vote(
        &self,
        req: rpc::VoteRequest,
    ) -> BoxFuture<'_, Result<rpc::VoteResponse, RpcHandlerError>> {
        async move {
            validate::vote(&req, self.id)?;
            self.raft.pre_vote(req).await.map_err(|_| self.stopped())
        }
        .boxed()
    }

    fn transfer_leader(
        &self,
        req: rpc::TransferLeaderRequest,
    ) -> BoxFuture<'_, Result<rpc::TransferLeaderResponse, RpcHandlerError>> {
        async move {
            validate::transfer_leader(&req, self.id)?;
            self.raft
                .handle_transfer_leader(req)
                .await
                .map_err(|_| self.stopped())
        }
        .boxed()
    }

    fn stream_append(
        &self,
        input: BoxStream<'static, rpc::AppendEntriesRequest>,
    ) -> BoxStream<'static, Result<rpc::StreamAppendResult, RpcHandlerError>> {
        let id = self.id;
        let metrics = self.raft.metrics();
        // A malformed request ends the input; the sender learns why after the answers so far.
        let failure: Arc<Mutex<Option<RpcHandlerError>>> = Arc::default();
        let fail = failure.clone();
        let mut shadow = super::shadow::Shadow::new(self.log.clone());
        let answers = shadow.answers();
        let let_through = self.let_through.clone();
        let checked_through = self.let_through.clone();
        let input = input
            .take_while(move |req| {
                let checked = validate::append(req, id).and_then(|()| {
                    let known = checked_through.known(&req.vote, known(&metrics));
                    validate::agrees_with_committed(req, &known)
                });
                let ok = checked.is_ok();
                if let Err(e) = checked {
                    *crate::sync::lock(&fail) = Some(e);
                }
                futures_util::future::ready(ok)
            })
            .map(move |mut req| {
                shadow.forward(&mut req);
                let_through.record(&req);
                req
            })
            .boxed();
        let tail = futures_util::stream::once(async move { crate::sync::lock(&failure).take() })
            .filter_map(|f| async move { f.map(Err) });
        self.raft
            .stream_append(input)
            .map(move |r| {
                answers.fetch_add(1, std::sync::atomic::Ordering::Release);
                r.map_err(|_| RpcHandlerError::Shutdown(id))
            })
            .chain(tail)
            .boxed()
    }

    fn snapshot_sink(
        &self,
        vote: &Vote,
        size: Option<u64>,
    ) -> Result<SnapshotReceive, RpcHandlerError> {
        validate::not_from_me(vote, self.id)?;
        let current = self.raft.metrics().borrow_watched().vote;
        if !validate::at_least(vote, &current) {
            return Ok(SnapshotReceive::Refuse(rpc::SnapshotResponse {
                vote: current,
            }));
        }
        Ok(SnapshotReceive::Receive(self.snapshots.sink(size)?))
    }

    fn install_snapshot(
        &self,
        vote: Vote,
        meta: SnapshotMeta,
        data: SnapshotData,
    ) -> BoxFuture<'_, Result<rpc::SnapshotResponse, RpcHandlerError>> {
        async move {
            // openraft panics on a snapshot no honest leader could send; refuse it here instead.
            validate::snapshot(&vote, &meta, self.id)?;
            check_snapshot_state::<S>(&data).await?;
            // One install at a time, checked against what openraft has committed when it takes
            // it: openraft stops at a snapshot later than its commit but not past its index. Its
            // metrics show an install only after answering it, so the last snapshot installed
            // here counts as committed as well.
            let mut installed = self.installed.lock().await;
            let mut known = self.known();
            known.committed = std::cmp::max(known.committed, *installed);
            validate::snapshot_agrees_with_committed(&meta, &known)?;
            let last = meta.last_log_id;
            let answer = self
                .raft
                .install_full_snapshot(
                    vote,
                    Snapshot {
                        meta,
                        snapshot: data,
                    },
                )
                .await
                .map_err(|_| self.stopped())?;
            // Answered with the sender's vote: taken (or already covered by the commit).
            if answer.vote == vote {
                *installed = std::cmp::max(*installed, last);
            }
            Ok(answer)
        }
        .boxed()
    }
}
