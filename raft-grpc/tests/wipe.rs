//! Over gRPC: every member's incarnation gets bound, and a node wiped and restarted under its old
//! id is kept out — the leader's requests reach it and are refused, so it holds no entries —
//! while the others carry on undisturbed.

mod common;

use common::Cmd;
use common::GrpcCluster;
use raft_grpc::GrpcOptions;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_is_kept_out_over_grpc() {
    let mut c = GrpcCluster::start(3, GrpcOptions::default(), |c| c).await;
    let all_bound = |c: &GrpcCluster| {
        c.nodes
            .values()
            .all(|n| (1..=3).all(|id| n.node().bound_incarnation(id).is_some()))
    };
    c.wait_until("every member bound on every node", all_bound)
        .await;
    let leader = c.leader().await;
    let x = (1..=3).find(|id| *id != leader).unwrap();
    let old = c.nodes[&x].node().incarnation();
    for (id, n) in &c.nodes {
        assert_eq!(n.node().bound_incarnation(x), Some(old), "on node {id}");
    }

    c.stop(x).await;
    std::fs::remove_dir_all(c.dir.path().join(format!("n{x}"))).unwrap();
    c.launch(x).await;
    let wiped = c.nodes[&x].node().clone();
    assert_ne!(wiped.incarnation(), old);

    let l = c.nodes[&leader].node().clone();
    let term = l.metrics().term;
    for i in 0..30 {
        l.write(Cmd::Put(format!("k{i}"), "v".into()))
            .await
            .unwrap();
    }
    // The leader's requests do reach it (it takes the cluster id they carry, which is checked
    // first), and are refused.
    raft_core::testing::eventually(common::WAIT, || wiped.cluster_id().is_some())
        .await
        .unwrap();
    l.write(Cmd::Put("last".into(), "v".into())).await.unwrap();
    assert_eq!(
        wiped.metrics().applied_index,
        None,
        "the wiped node got no entries"
    );
    let m = l.metrics();
    assert_eq!(
        (m.term, m.role),
        (term, raft_core::Role::Leader),
        "nobody was disturbed"
    );
    c.stop(x).await;
    for id in (1..=3).filter(|id| *id != x) {
        c.stop(id).await;
    }
}
