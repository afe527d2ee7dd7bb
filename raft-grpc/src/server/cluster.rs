//! The public `Cluster` service: writes (forwarded from a follower to the leader), reads at each
//! consistency, membership and leadership changes (admin), session capacity, status and the
//! backup stream. Each call takes its caller as the interceptor found it and checked its role.

use std::future::Future;
use std::sync::Arc;

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use raft_core::Consistency;
use raft_core::NodeId;
use raft_core::Role;
use raft_core::StateMachine;
use tonic::Code;
use tonic::Request;
use tonic::Response;
use tonic::Status;
use tonic::transport::Channel;

use crate::auth;
use crate::auth::Caller;
use crate::auth::Method;
use crate::pb;
use crate::pb::cluster_client::ClusterClient as PbClusterClient;
use crate::status;
use crate::status::ErrorCode;

use crate::server::Op;
use crate::server::Shared;
use crate::server::forward::caller_timeout;
use crate::server::forward::is_forwarded;

pub(super) struct Cluster<S: StateMachine>(pub(super) Arc<Shared<S>>);

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
        mut req: Request<pb::WriteRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let caller = auth::checked_caller(&mut req, Method::Write)?;
        let forwarded = is_forwarded(&req) || req.get_ref().no_forward;
        let timeout = caller_timeout(&req);
        let w = req.into_inner();
        tracing::trace!(forwarded, session = ?w.session, "write received");
        let op = Op::from_pb(&w)?;
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
            .map(|mut reply| {
                if reply.leader_id == self.0.node.id() {
                    reply.leader_addr = self.0.own_addr();
                }
                Response::new(reply)
            })
    }

    async fn read(
        &self,
        mut req: Request<pb::ReadRequest>,
    ) -> Result<Response<pb::ReadReply>, Status> {
        auth::checked_caller(&mut req, Method::Read)?;
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
        mut req: Request<pb::AddLearnerRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let caller = auth::checked_caller(&mut req, Method::AddLearner)?;
        let r = req.get_ref();
        if let Err(e) = crate::addr::check_addr(&r.addr) {
            return Err(status::invalid(format!("bad node address: {e}")));
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
        mut req: Request<pb::ChangeMembershipRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let caller = auth::checked_caller(&mut req, Method::ChangeMembership)?;
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
        mut req: Request<pb::AddVoterRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let caller = auth::checked_caller(&mut req, Method::AddVoter)?;
        let local = self.0.node.add_voter(req.get_ref().node_id);
        self.admin(req, caller, local, |mut c, r| async move {
            c.add_voter(r).await
        })
        .await
    }

    async fn remove_node(
        &self,
        mut req: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let caller = auth::checked_caller(&mut req, Method::RemoveNode)?;
        let local = self.0.node.remove_node(req.get_ref().node_id);
        self.admin(req, caller, local, |mut c, r| async move {
            c.remove_node(r).await
        })
        .await
    }

    async fn transfer_leader(
        &self,
        mut req: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let caller = auth::checked_caller(&mut req, Method::TransferLeader)?;
        let local = self.0.node.transfer_leader(req.get_ref().to);
        self.admin(req, caller, local, |mut c, r| async move {
            c.transfer_leader(r).await
        })
        .await
    }

    async fn set_session_capacity(
        &self,
        mut req: Request<pb::SessionCapacity>,
    ) -> Result<Response<pb::Empty>, Status> {
        let caller = auth::checked_caller(&mut req, Method::SetSessionCapacity)?;
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
    /// (incomplete) if the server shuts down. A node already writing a backup answers `Busy`
    /// as the call's status, before any stream, so the client tries another node.
    async fn backup(
        &self,
        mut req: Request<pb::BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        auth::checked_caller(&mut req, Method::Backup)?;
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
        let chunks = crate::backup::start(node.clone(), at, shared.opts.min_transfer_rate)?
            .take_until(shared.stopped());
        Ok(Response::new(chunks.boxed()))
    }

    async fn status(
        &self,
        mut req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        auth::checked_caller(&mut req, Method::Status)?;
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
            cluster_id: self
                .0
                .node
                .cluster_id()
                .map(|c| c.to_string())
                .unwrap_or_default(),
        }))
    }
}
