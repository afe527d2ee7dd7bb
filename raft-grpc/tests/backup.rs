//! `Cluster.Backup` over real sockets: any node streams a backup that holds every acknowledged
//! write, the client verifies it, and it restores into a working node.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::Cmd;
use common::GrpcCluster;
use common::Kv;
use raft_core::Consistency;
use raft_core::Node;
use raft_core::Role;
use raft_grpc::BACKUP_CHUNK_BYTES;
use raft_grpc::ClientOptions;
use raft_grpc::ClusterClient;
use raft_grpc::GrpcOptions;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_streams_a_verified_backup_that_restores() {
    let c = GrpcCluster::start(3, GrpcOptions::default(), |c| c).await;
    let leader = c.leader().await;
    let writer: ClusterClient<Kv> =
        ClusterClient::new(c.endpoints(), ClientOptions::default()).unwrap();
    // Values large enough that the backup takes several chunks.
    let value = "v".repeat(20_000);
    for i in 0..100 {
        writer
            .write(Cmd::Put(format!("k{i}"), format!("{i}{value}")))
            .await
            .unwrap();
    }
    let follower = *c.addrs.keys().find(|id| **id != leader).unwrap();
    let client: ClusterClient<Kv> =
        ClusterClient::new([c.addrs[&follower].clone()], ClientOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("backup");
    let mut file = tokio::fs::File::create(&path).await.unwrap();
    let info = client.backup(&mut file).await.unwrap();
    file.sync_all().await.unwrap();
    drop(file);

    assert!(info.bytes > 100 * 20_000, "{info:?}");
    assert!(
        info.bytes as usize > 4 * BACKUP_CHUNK_BYTES,
        "several chunks"
    );
    assert_eq!(info.cluster, c.nodes[&leader].node().cluster_id());
    assert_eq!(raft_core::backup::inspect(&path).unwrap(), info);
    // The follower served it without becoming leader.
    assert_eq!(c.nodes[&follower].node().role(), Role::Follower);

    // Restored as a one-node cluster, it holds every acknowledged write.
    let target = dir.path().join("restored");
    let members = BTreeMap::from([(7, "node-7".to_string())]);
    raft_core::restore_data_dir(&path, &target, 7, &members, None).unwrap();
    let router = raft_core::testing::Router::new(0);
    let config = raft_core::Config::durable(7, &target)
        .with_timing(Duration::from_millis(50), Duration::from_millis(300))
        .with_request_timeout(Duration::from_secs(5));
    let node = Node::start(config, Kv::default(), router.transport(7))
        .await
        .unwrap();
    router.register(node.rpc_handler());
    node.wait_for(Duration::from_secs(20), |m| m.role == Role::Leader)
        .await
        .unwrap();
    let state = node
        .read(Consistency::Linearizable, |s| s.0.clone())
        .await
        .unwrap();
    assert_eq!(state.len(), 100);
    for i in 0..100 {
        assert_eq!(state[&format!("k{i}")], format!("{i}{value}"));
    }
    node.shutdown().await.unwrap();
}
