//! A wiped node cannot vote twice in a term, cannot disturb the cluster, and comes back only
//! under a new id (see `raft_core::incarnation`).

use std::collections::BTreeSet;
use std::time::Duration;

use raft_core::Error;
use raft_core::incarnation::IncarnationError;
use raft_core::testing::Cluster;
use raft_core::testing::ClusterOptions;
use raft_core::testing::address;
use raft_core::testing::eventually;
use raft_core::testing::kv::KvCommand;
use raft_core::testing::kv::KvStore;
use raft_core::transport::RpcHandlerError;
use raft_core::transport::rpc::VoteRequest;
use raft_core::types::NodeId;
use raft_core::types::Vote;

fn put(k: &str) -> KvCommand {
    KvCommand::Put(k.into(), "v".into())
}

/// Waits until every running node has applied a binding for each of `ids`.
async fn all_bound(c: &Cluster<KvStore>, ids: &[NodeId]) {
    eventually(Duration::from_secs(10), || {
        c.running().iter().all(|n| {
            let node = c.node(*n).unwrap();
            ids.iter().all(|id| node.bound_incarnation(*id).is_some())
        })
    })
    .await
    .unwrap();
}

/// Three nodes, each bound to its incarnation in every node's state, and the leader.
async fn bound_cluster() -> (Cluster<KvStore>, NodeId) {
    let c = Cluster::start(3, ClusterOptions::default(), |_| KvStore::default())
        .await
        .unwrap();
    c.write(put("before")).await.unwrap();
    all_bound(&c, &[1, 2, 3]).await;
    let leader = c.wait_for_leader().await.unwrap();
    (c, leader)
}

/// Checks that node `at` refuses requests from node `x` under incarnation `now`, because `x`'s
/// id is bound to incarnation `old`.
fn refused_as_wiped(c: &Cluster<KvStore>, at: NodeId, x: NodeId, now: u64, old: u64) {
    let refused = c
        .node(at)
        .unwrap()
        .rpc_handler()
        .check_incarnation(x, Some(now), None)
        .unwrap_err();
    assert!(
        matches!(refused, RpcHandlerError::Incarnation(IncarnationError::PeerWiped { peer, bound, .. }) if peer == x && bound == old),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_cannot_vote_again_and_comes_back_under_a_new_id() {
    let (c, leader) = bound_cluster().await;
    let (x, b) = {
        let f: Vec<NodeId> = (1..=3).filter(|id| *id != leader).collect();
        (f[0], f[1])
    };
    let old = c.node(x).unwrap().incarnation();
    let term = c.node(x).unwrap().metrics().term;
    assert!(term > 0);

    // Wipe x and start it again under the same id: a new incarnation, no vote, no log.
    c.crash(x).await.unwrap();
    std::fs::remove_dir_all(c.data_dir(x).unwrap()).unwrap();
    let wiped = c.restart(x).await.unwrap();
    assert_ne!(wiped.incarnation(), old);

    // Another candidate asks x for its vote in the term x already voted in: refused at the seam,
    // because the request is meant for the incarnation x was.
    let from_b = c.node(b).unwrap().rpc_handler();
    let at_x = wiped.rpc_handler();
    assert_eq!(from_b.expected_incarnation(x), Some(old));
    let refused = at_x
        .check_incarnation(
            b,
            Some(from_b.incarnation()),
            from_b.expected_incarnation(x),
        )
        .unwrap_err();
    assert!(
        matches!(
            refused,
            RpcHandlerError::Incarnation(IncarnationError::Wiped { expected, .. }) if expected == old
        ),
        "{refused:?}"
    );
    // Without that check the wiped node would grant it: the check is what prevents the second
    // vote.
    let granted = at_x
        .vote(VoteRequest::new(Vote::new(term, b), None))
        .await
        .unwrap();
    assert!(granted.is_granted_to(&Vote::new(term, b)));

    // x asking for votes is refused by the others: its id is bound to its old incarnation.
    refused_as_wiped(&c, b, x, wiped.incarnation(), old);

    // The other two carry on; the wiped node receives nothing.
    for i in 0..20 {
        c.write(put(&format!("k{i}"))).await.unwrap();
    }
    assert_eq!(c.node(x).unwrap().metrics().applied_index, None);
    assert_eq!(c.wait_for_leader().await.unwrap(), leader);

    // The documented procedure: remove the old id, wipe, add the node under a new id.
    let l = c.node(leader).unwrap();
    l.remove_node(x).await.unwrap();
    // Joining again under the old id, as the wiped node it is, is refused at once.
    let again = l
        .add_learner_as(x, address(x), Some(wiped.incarnation()))
        .await
        .unwrap_err();
    assert!(
        matches!(&again, Error::Membership(m) if m.contains("new id")),
        "{again}"
    );
    c.crash(x).await.unwrap();
    let new_id = 4;
    c.launch(new_id).await.unwrap();
    l.add_learner(new_id, address(new_id)).await.unwrap();
    l.add_voter(new_id).await.unwrap();
    assert_eq!(
        l.metrics().voters,
        BTreeSet::from([leader, b, new_id]),
        "the node is a voter again, under its new id"
    );
    c.write(put("after")).await.unwrap();
    all_bound(&c, &[leader, b, new_id]).await;
    c.wait_converged().await.unwrap();
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_log_was_lost_counts_as_wiped() {
    let (c, leader) = bound_cluster().await;
    let x = (1..=3).find(|id| *id != leader).unwrap();
    let old = c.node(x).unwrap().incarnation();

    // Only the log goes (its vote and its entries); the incarnation file stays. There is no
    // snapshot, so nothing else in the directory tells that anything is missing.
    c.crash(x).await.unwrap();
    let dir = c.data_dir(x).unwrap();
    assert!(dir.join(raft_core::incarnation::FILE_NAME).exists());
    assert!(
        !dir.join("snapshots").read_dir().unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".snap"))
    );
    std::fs::remove_dir_all(dir.join("wal")).unwrap();
    let restarted = c.restart(x).await.unwrap();
    assert_ne!(
        restarted.incarnation(),
        old,
        "a node that forgot its vote kept its incarnation"
    );

    // So the others refuse it as they refuse a wiped node, and carry on without it.
    refused_as_wiped(&c, leader, x, restarted.incarnation(), old);
    for i in 0..10 {
        c.write(put(&format!("k{i}"))).await.unwrap();
    }
    assert_eq!(c.node(x).unwrap().metrics().applied_index, None);
    // A restart with its (new) log kept keeps the new incarnation.
    c.crash(x).await.unwrap();
    let again = c.restart(x).await.unwrap();
    assert_eq!(again.incarnation(), restarted.incarnation());
    c.shutdown().await.unwrap();
}
