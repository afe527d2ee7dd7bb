//! A learner that joins a cluster with a large state catches up by a snapshot streamed in
//! bounded chunks, then becomes a voter.

mod common;

use common::Cmd;
use common::GrpcCluster;
use common::Kv;
use futures_util::StreamExt;
use raft_grpc::ClientOptions;
use raft_grpc::ClusterClient;
use raft_grpc::GrpcOptions;

const CHUNK: usize = 64 << 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_learner_catches_up_by_a_chunked_snapshot_then_votes() {
    let opts = GrpcOptions::default()
        .with_snapshot_chunk_bytes(CHUNK)
        .with_max_snapshot_chunk_bytes(CHUNK);
    let mut c = GrpcCluster::start(3, opts, |c| c.with_snapshots(200, 20)).await;
    let client = ClusterClient::<Kv>::new(c.endpoints(), ClientOptions::default()).unwrap();

    // About 2 MiB of state, so the snapshot needs dozens of chunks.
    let value = "v".repeat(2048);
    let writes: Vec<_> = futures_util::stream::iter(0..1000)
        .map(|i| client.write(Cmd::Put(format!("key-{i:04}"), value.clone())))
        .buffer_unordered(16)
        .collect()
        .await;
    for w in writes {
        w.unwrap();
    }
    let leader = c.leader().await;
    c.nodes[&leader].node().snapshot().await.unwrap();
    let purged = c.nodes[&leader].node().metrics().purged_index;
    assert!(
        purged.is_some_and(|p| p > 100),
        "the leader purged its log: {purged:?}"
    );

    c.launch(4).await;
    let addr4 = c.addrs[&4].clone();
    client.add_learner(4, addr4).await.unwrap();
    let stats = c.nodes[&4].stats().clone();
    assert!(
        stats.snapshots_received() >= 1,
        "the learner was sent a snapshot"
    );
    assert!(
        stats.snapshot_chunks() >= 8,
        "the snapshot came in many chunks: {}",
        stats.snapshot_chunks()
    );
    assert!(
        stats.largest_snapshot_chunk() <= CHUNK as u64,
        "no chunk above the bound: {}",
        stats.largest_snapshot_chunk()
    );

    client.change_membership([1, 2, 3, 4]).await.unwrap();
    let states = c.converged().await;
    assert_eq!(states.len(), 4);
    let first = states.values().next().unwrap();
    assert_eq!(first.0.len(), 1000);
    for (id, s) in &states {
        assert_eq!(s, first, "node {id} diverged");
    }
    let m = c.nodes[&4].node().metrics();
    assert!(m.voters.contains(&4), "node 4 votes: {m:?}");
}
