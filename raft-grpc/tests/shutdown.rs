//! Stopping a node is bounded and leaves nothing running: a follower's shutdown finishes while its
//! leader keeps streaming to it, and a dropped `GrpcNode` stops its node, so the rest of the
//! cluster elects a new leader instead of following one with no server.

mod common;

use std::time::Duration;

use common::Cmd;
use common::GrpcCluster;
use common::Kv;
use raft_grpc::ClientOptions;
use raft_grpc::ClusterClient;
use raft_grpc::GrpcOptions;
use tokio::time::Instant;

/// How long a shutdown may take, with open replication streams.
const SHUTDOWN_BOUND: Duration = Duration::from_secs(5);

async fn write_some(client: &ClusterClient<Kv>, from: usize, to: usize) {
    for i in from..to {
        client
            .write(Cmd::Put(format!("k{i}"), format!("v{i}")))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_followers_shutdown_is_bounded_and_flushes_its_log() {
    let mut c = GrpcCluster::start(3, GrpcOptions::default(), |c| c).await;
    let client = ClusterClient::<Kv>::new(c.endpoints(), ClientOptions::default()).unwrap();
    write_some(&client, 0, 20).await;
    let leader = c.leader().await;
    let follower = *c.addrs.keys().find(|id| **id != leader).unwrap();

    let started = Instant::now();
    tokio::time::timeout(SHUTDOWN_BOUND, c.stop(follower))
        .await
        .unwrap_or_else(|_| panic!("a follower's shutdown took longer than {SHUTDOWN_BOUND:?}"));
    eprintln!("follower shut down in {:?}", started.elapsed());

    // It restarts with every write it had acknowledged, and catches up with the rest.
    write_some(&client, 20, 30).await;
    c.launch(follower).await;
    let states = c.converged().await;
    for i in 0..30 {
        assert_eq!(
            states[&follower].0.get(&format!("k{i}")),
            Some(&format!("v{i}"))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dropped_leader_stops_and_the_others_elect_a_new_one() {
    let mut c = GrpcCluster::start(3, GrpcOptions::default(), |c| c).await;
    let client = ClusterClient::<Kv>::new(c.endpoints(), ClientOptions::default()).unwrap();
    write_some(&client, 0, 10).await;
    let leader = c.leader().await;
    let dropped = c.nodes.remove(&leader).unwrap();
    let node = dropped.node().clone();
    let started = Instant::now();
    drop(dropped);

    // The dropped node's own consensus stops too: it does not keep heartbeating without a server.
    tokio::time::timeout(SHUTDOWN_BOUND, async {
        let mut watch = node.subscribe();
        while node.role() != raft_core::Role::Shutdown {
            if watch.changed().await.is_none() {
                break;
            }
        }
    })
    .await
    .expect("the dropped node's consensus stops");

    let new_leader = c.leader().await;
    assert_ne!(new_leader, leader);
    eprintln!("new leader after {:?}", started.elapsed());
    // Election timeout 300 ms: a new leader well within a few election rounds.
    assert!(
        started.elapsed() < SHUTDOWN_BOUND,
        "a new leader took {:?}",
        started.elapsed()
    );
    write_some(&client, 10, 20).await;
}
