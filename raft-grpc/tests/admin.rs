//! Membership and leadership calls that reach a follower: forwarded once to the leader by
//! default, answered with the leader's id and address when forwarding is off.

mod common;

use std::time::Duration;

use common::GrpcCluster;
use raft_core::LeaderHint;
use raft_core::NodeId;
use raft_core::Role;
use raft_grpc::GrpcOptions;
use raft_grpc::pb;
use raft_grpc::pb::cluster_client::ClusterClient as PbCluster;
use raft_grpc::status::ErrorCode;
use raft_grpc::status::leader_hint;
use tonic::Code;
use tonic::transport::Channel;

async fn cluster_client(addr: &str) -> PbCluster<Channel> {
    PbCluster::connect(format!("http://{addr}")).await.unwrap()
}

fn timed<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(Duration::from_secs(10));
    r
}

/// The leader and the two followers of a three-node cluster, once both followers know the
/// leader (a majority may agree on it before the other follower has heard from it).
async fn roles(c: &GrpcCluster) -> (NodeId, NodeId, NodeId) {
    let leader = c.leader().await;
    c.wait_until("every node knows the leader", |c| {
        c.nodes
            .values()
            .all(|n| n.node().leader().id() == Some(leader))
    })
    .await;
    let mut followers = c.addrs.keys().copied().filter(|id| *id != leader);
    (leader, followers.next().unwrap(), followers.next().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_calls_on_a_follower_are_forwarded_to_the_leader() {
    let c = GrpcCluster::start(3, GrpcOptions::default(), |c| c).await;
    let (old_leader, f1, f2) = roles(&c).await;
    let mut via_f1 = cluster_client(&c.addrs[&f1]).await;

    via_f1
        .transfer_leader(timed(pb::TransferLeaderRequest { to: f2 }))
        .await
        .unwrap();
    c.wait_until("every node follows the other follower", |c| {
        c.nodes[&f2].node().role() == Role::Leader
            && c.nodes.values().all(|n| n.node().leader().id() == Some(f2))
    })
    .await;
    assert_eq!(c.nodes[&f1].stats().forwarded(), 1);

    // f1 is still a follower, now of f2: removing the old leader is forwarded there.
    via_f1
        .remove_node(timed(pb::RemoveNodeRequest {
            node_id: old_leader,
        }))
        .await
        .unwrap();
    assert_eq!(c.nodes[&f1].stats().forwarded(), 2);
    c.wait_until("the old leader is no longer a voter", |c| {
        [f1, f2].iter().all(|id| {
            let m = c.nodes[id].node().metrics();
            m.voters.len() == 2 && !m.voters.contains(&old_leader)
        })
    })
    .await;

    // Adding it back, as a learner and then as a voter, goes the same way; so does setting the
    // voters it already has.
    via_f1
        .add_learner(timed(pb::AddLearnerRequest {
            node_id: old_leader,
            addr: c.addrs[&old_leader].clone(),
            incarnation: 0,
        }))
        .await
        .unwrap();
    via_f1
        .add_voter(timed(pb::AddVoterRequest {
            node_id: old_leader,
        }))
        .await
        .unwrap();
    via_f1
        .change_membership(timed(pb::ChangeMembershipRequest {
            voters: vec![f1, f2, old_leader],
        }))
        .await
        .unwrap();
    assert_eq!(c.nodes[&f1].stats().forwarded(), 5);
    c.wait_until("all three vote again", |c| {
        c.nodes[&f2].node().metrics().voters.len() == 3
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_forwarding_a_follower_names_the_leader() {
    let opts = GrpcOptions::default().with_forward_to_leader(false);
    let c = GrpcCluster::start(3, opts, |c| c).await;
    let (leader, f1, f2) = roles(&c).await;
    // A follower learns the leader's id from its messages and its address from the applied
    // membership, which may come a moment later.
    c.wait_until("the follower knows the leader's address", |c| {
        c.nodes[&f1].node().leader().addr().is_some()
    })
    .await;
    let mut via_f1 = cluster_client(&c.addrs[&f1]).await;
    let expected_hint = LeaderHint::new(Some(leader), Some(c.addrs[&leader].clone()));

    let refusals = [
        via_f1
            .transfer_leader(timed(pb::TransferLeaderRequest { to: f2 }))
            .await
            .map(|_| ()),
        via_f1
            .remove_node(timed(pb::RemoveNodeRequest { node_id: f2 }))
            .await
            .map(|_| ()),
        via_f1
            .write(timed(pb::WriteRequest {
                command: raft_core::codec::encode(&common::Cmd::Put("k".into(), "v".into()))
                    .unwrap()
                    .into(),
                session: None,
                no_forward: false,
                session_op: 0,
                register_key: 0,
            }))
            .await
            .map(|_| ()),
    ];
    for r in refusals {
        let s = r.unwrap_err();
        assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
        assert_eq!(ErrorCode::of(&s), Some(ErrorCode::NotLeader), "{s:?}");
        assert_eq!(leader_hint(&s), expected_hint);
    }
    assert_eq!(c.nodes[&f1].stats().forwarded(), 0);
    // Nothing changed: the same leader, three voters.
    assert_eq!(c.leader().await, leader);
    assert_eq!(c.nodes[&leader].node().metrics().voters.len(), 3);
}
