//! A 3-node gRPC cluster on loopback with durable logs: clients at any node, the leader shut
//! down and restarted, everything converging.

mod common;

use common::Cmd;
use common::GrpcCluster;
use common::Kv;
use common::Query;
use common::Reply;
use raft_core::Consistency;
use raft_grpc::ClientOptions;
use raft_grpc::ClusterClient;
use raft_grpc::GrpcOptions;
use raft_grpc::ReadPolicy;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_shutdown_and_restart_over_grpc() {
    let mut c = GrpcCluster::start(3, GrpcOptions::default(), |c| c).await;
    let client = ClusterClient::<Kv>::new(c.endpoints(), ClientOptions::default()).unwrap();
    for i in 0..30 {
        let out = client
            .write(Cmd::Put(format!("k{i}"), format!("v{i}")))
            .await
            .unwrap();
        assert_eq!(out, Some(format!("v{i}")));
    }

    // A client that only knows a follower: its writes are forwarded, its linearizable reads are
    // answered by the follower itself.
    let leader = c.leader().await;
    let follower = *c.addrs.keys().find(|id| **id != leader).unwrap();
    let via_follower = ClusterClient::<Kv>::new(
        [c.addrs[&follower].clone()],
        ClientOptions::default().with_read_policy(ReadPolicy::RoundRobin),
    )
    .unwrap();
    assert_eq!(
        via_follower
            .write(Cmd::Append("f".into(), "x".into()))
            .await
            .unwrap()
            .as_deref(),
        Some("x")
    );
    assert!(
        c.nodes[&follower].stats().forwarded() > 0,
        "the follower forwarded the write"
    );
    let (reply, served_by) = via_follower
        .read_from(Query::Get("f".into()), Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(served_by, follower);
    assert_eq!(
        reply,
        Reply::Value(Some("x".into())),
        "a follower read sees the acknowledged write"
    );

    // The leader goes away; the others elect a new one and writes carry on.
    c.stop(leader).await;
    let new_leader = c.leader().await;
    assert_ne!(new_leader, leader);
    assert_eq!(
        client.leader().await.unwrap(),
        (new_leader, c.addrs[&new_leader].clone()),
        "the client finds the new leader"
    );
    // A read pinned to the stopped node fails rather than moving elsewhere.
    let pinned = ClusterClient::<Kv>::new(
        c.endpoints(),
        ClientOptions::default().with_total_timeout(std::time::Duration::from_millis(300)),
    )
    .unwrap();
    let down = pinned
        .read_on(
            &c.addrs[&leader],
            Query::Get("f".into()),
            Consistency::Local,
        )
        .await;
    assert!(
        matches!(down, Err(raft_grpc::ClientError::GaveUp { .. })),
        "{down:?}"
    );
    for i in 30..60 {
        client
            .write(Cmd::Put(format!("k{i}"), format!("v{i}")))
            .await
            .unwrap();
    }

    // The old leader restarts from its data directory and catches up: a linearizable read
    // pinned to it sees the last write made while it was down.
    c.launch(leader).await;
    assert_eq!(
        client
            .read_on(
                &c.addrs[&leader],
                Query::Get("k59".into()),
                Consistency::Linearizable
            )
            .await
            .unwrap(),
        Reply::Value(Some("v59".into()))
    );
    let states = c.converged().await;
    assert_eq!(states.len(), 3);
    let first = states.values().next().unwrap();
    for (id, s) in &states {
        assert_eq!(s, first, "node {id} diverged");
    }
    for i in 0..60 {
        assert_eq!(
            first.0.get(&format!("k{i}")),
            Some(&format!("v{i}")),
            "write {i} lost"
        );
    }
    assert_eq!(first.0.get("f").map(String::as_str), Some("x"));

    let status = client.status(&c.addrs[&leader]).await.unwrap();
    assert_eq!(status.voters.len(), 3);
}
