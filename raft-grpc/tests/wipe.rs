//! Over gRPC: every member's incarnation gets bound, and a node wiped and restarted under its old
//! id is kept out — the leader's requests reach it and are refused, so it holds no entries and
//! takes no cluster id from them — while the others carry on undisturbed.

mod common;

use common::Cmd;
use common::GrpcCluster;
use raft_grpc::GrpcOptions;
use raft_grpc::pb;
use raft_grpc::pb::raft_internal_client::RaftInternalClient;
use raft_grpc::status::ErrorCode;

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
    // A request as the leader sends it, to the incarnation it knew, is refused as meant for
    // the node that was wiped, and binds the new node to no cluster.
    let mut raw = RaftInternalClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://{}", c.addrs[&x]))
            .unwrap()
            .connect_lazy(),
    );
    let mut req = tonic::Request::new(pb::RaftRequest {
        target: x,
        payload: Default::default(),
    });
    let cluster = l.cluster_id().unwrap().to_string();
    for (key, value) in [
        ("x-raftkit-cluster-id", cluster),
        ("x-raftkit-from", leader.to_string()),
        ("x-raftkit-expect-incarnation", format!("{old:x}")),
    ] {
        req.metadata_mut().insert(key, value.parse().unwrap());
    }
    let refused = raw.vote(req).await.unwrap_err();
    assert_eq!(
        ErrorCode::of(&refused),
        Some(ErrorCode::WipedNode),
        "{refused:?}"
    );
    l.write(Cmd::Put("last".into(), "v".into())).await.unwrap();
    assert_eq!(
        wiped.metrics().applied_index,
        None,
        "the wiped node got no entries"
    );
    assert_eq!(
        wiped.cluster_id(),
        None,
        "it took no cluster id from requests it refused"
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
