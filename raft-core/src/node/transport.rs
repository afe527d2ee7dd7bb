//! The part of [`Node`] that transports use: what a transport calls to deliver a peer's RPCs,
//! forward a client's write from a follower, serve a follower read, and collect its peers'
//! storage alarms. An application embedding a node with an existing transport (raftkit's gRPC
//! one, or the in-process router of `testing`) does not need these.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use openraft::ReadPolicy;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::errors::LinearizableReadError;
use openraft::errors::RaftError;

use super::Consistency;
use super::Node;
use super::ReadIndex;
use super::errors;
use super::handler::Handler;
use crate::error::Error;
use crate::error::Result;
use crate::metrics::Role;
use crate::state_machine::Queryable;
use crate::state_machine::ReadContext;
use crate::state_machine::StateMachine;
use crate::transport::SharedRpcHandler;
use crate::types::NodeId;
use crate::types::Request;
use crate::types::TypeConfig;

/// For transport implementers: delivering RPCs, forwarding writes, follower reads, storage
/// alarms. Like [`crate::transport`], these follow the engine underneath and are outside
/// raftkit's semver promise.
impl<S: StateMachine> Node<S> {
    /// The address member `id` was added with, if it is a member.
    pub fn member_addr(&self, id: NodeId) -> Option<String> {
        self.addr_in(&self.inner.raft.metrics().borrow_watched(), id)
    }

    /// Writes an already-encoded command and returns the encoded output. For transports that
    /// forward writes without knowing the state machine's types.
    pub async fn write_encoded(&self, request: Request) -> Result<Bytes> {
        let limit = self.inner.config.max_command_bytes;
        if request.command.len() > limit {
            return Err(Error::CommandTooLarge {
                size: request.command.len(),
                limit,
            });
        }
        if self.inner.space.refusing() {
            self.check_space(&request)?;
        }
        self.propose_combining(request)
            .await?
            .into_output("a normal entry")
    }

    /// For transports: one round of the leader asking its voters for their storage alarms.
    /// `answers` holds each voter that answered, with its alarm (`None`: no alarm); a voter
    /// that did not answer keeps the alarm it last reported for three check intervals. While
    /// any voter is in alarm this leader refuses writes that grow the state
    /// ([`Error::NoSpace`]). Ignored unless this node leads. Call it once per
    /// [`QuotaOptions::check_interval`](crate::QuotaOptions::check_interval).
    pub fn report_peer_alarms(&self, answers: BTreeMap<NodeId, Option<String>>) {
        if self.role() != Role::Leader {
            self.inner.space.forget_peers();
            return;
        }
        let expire = self.inner.config.quota.check_interval.saturating_mul(3);
        self.inner
            .space
            .report_peers(self.inner.id, answers, expire);
    }

    /// Answers `query` ([`Queryable::query_at`]) once this node has applied up to `at` (see
    /// [`Node::read_at`]).
    pub async fn query_at(&self, at: ReadIndex, query: S::Query) -> Result<S::Reply>
    where
        S: Queryable,
    {
        self.read_at_timed(at, |sm, ctx| sm.query_at(query, ctx))
            .await
    }

    /// On the leader: confirms leadership as `consistency` requires (a quorum round for
    /// `Linearizable`, the lease for `Lease`) and returns the log position a read must wait for.
    /// `Local` needs no position and returns this node's applied index.
    pub async fn read_index(&self, consistency: Consistency) -> Result<ReadIndex> {
        let raft = &self.inner.raft;
        let linearizer = match consistency {
            Consistency::Local => {
                let time_ms = self.local_time();
                let rx = raft.metrics();
                let m = rx.borrow_watched();
                return Ok(ReadIndex {
                    term: m.current_term,
                    index: m.last_applied.map_or(0, |a| a.index),
                    time_ms,
                });
            }
            Consistency::Linearizable => {
                self.with_timeout(async {
                    raft.get_read_linearizer(ReadPolicy::ReadIndex)
                        .await
                        .map_err(errors::linearizable_read)
                })
                .await?
            }
            Consistency::Lease => {
                self.with_timeout(async {
                    match raft.get_read_linearizer(ReadPolicy::LeaseRead).await {
                        Ok(l) => Ok(l),
                        // The lease lapsed: confirm leadership the slow way instead.
                        Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(_))) => raft
                            .get_read_linearizer(ReadPolicy::ReadIndex)
                            .await
                            .map_err(errors::linearizable_read),
                        Err(e) => Err(errors::linearizable_read(e)),
                    }
                })
                .await?
            }
        };
        let id = linearizer.read_log_id().log_id();
        Ok(ReadIndex {
            term: id.leader_id.term,
            index: id.index,
            // Read after leadership was confirmed: the read is ordered no earlier than this.
            time_ms: self.stamp(),
        })
    }

    /// Waits until this node has applied up to `at` (from [`Node::read_index`] on the leader),
    /// then runs `f` on its state machine. This is how a follower serves a linearizable read.
    pub async fn read_at<T>(&self, at: ReadIndex, f: impl FnOnce(&S) -> T) -> Result<T> {
        self.read_at_timed(at, |sm, _| f(sm)).await
    }

    /// Like [`Node::read_at`], and `f` also learns the read's time: the leader's time in `at`,
    /// raised to the time of the state read ([`ReadContext`]).
    pub async fn read_at_timed<T>(
        &self,
        at: ReadIndex,
        f: impl FnOnce(&S, &ReadContext) -> T,
    ) -> Result<T> {
        let applied = |m: &openraft::RaftMetrics<TypeConfig>| {
            m.last_applied.is_some_and(|a| a.index >= at.index)
        };
        let reached = self.with_timeout(async {
            Ok(self
                .wait_raw(|m| applied(m) || Role::of(m) == Role::Shutdown)
                .await)
        });
        if !reached.await? || self.role() == Role::Shutdown {
            return Err(Error::Shutdown);
        }
        self.restored().await?;
        self.read_local(at.time_ms, f)
    }

    /// The receiving side of this node's internal RPCs, for a transport to deliver to.
    pub fn rpc_handler(&self) -> SharedRpcHandler {
        Arc::new(Handler::new(&self.inner))
    }
}
