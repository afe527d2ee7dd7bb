//! `Cluster.Backup` over real sockets: any node streams a backup that holds every acknowledged
//! write, the client verifies it, and it restores into a working node.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::Cmd;
use common::GrpcCluster;
use common::Kv;
use raft_core::BackupError;
use raft_core::Consistency;
use raft_core::Error;
use raft_core::Node;
use raft_core::Role;
use raft_grpc::BACKUP_CHUNK_BYTES;
use raft_grpc::ClientError;
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

/// A writer that takes nothing and never wakes: a backup written into it stops reading its
/// stream, so the node's export stalls once the stream's buffers are full. Its first write is
/// reported: the node's export is running by then.
struct Stalled(Option<tokio::sync::oneshot::Sender<()>>);

impl tokio::io::AsyncWrite for Stalled {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        _: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if let Some(started) = self.0.take() {
            let _ = started.send(());
        }
        std::task::Poll::Pending
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Pending
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Pending
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_busy_with_a_backup_is_passed_over_for_another() {
    let mut c = GrpcCluster::start(3, GrpcOptions::default(), |c| c).await;
    let writer: ClusterClient<Kv> =
        ClusterClient::new(c.endpoints(), ClientOptions::default()).unwrap();
    // About 12 MiB of state: far more than a stalled stream buffers (its queue and HTTP/2
    // windows), so a backup nobody reads keeps its node's export running.
    let value = "v".repeat(256 << 10);
    for i in 0..48 {
        writer
            .write(Cmd::Put(format!("k{i}"), format!("{i}{value}")))
            .await
            .unwrap();
    }
    let busy = c.leader().await;
    let other = *c.addrs.keys().find(|id| **id != busy).unwrap();
    let (busy_addr, other_addr) = (c.addrs[&busy].clone(), c.addrs[&other].clone());

    let (started, first_write) = tokio::sync::oneshot::channel();
    let stalled_client: ClusterClient<Kv> =
        ClusterClient::new([busy_addr.clone()], ClientOptions::default()).unwrap();
    let stalled = tokio::spawn(async move {
        let mut out = Stalled(Some(started));
        stalled_client.backup(&mut out).await
    });
    tokio::time::timeout(common::WAIT, first_write)
        .await
        .expect("the stalled backup started")
        .unwrap();

    // Asked alone, the busy node is all there is: a typed refusal, at once.
    let only_busy: ClusterClient<Kv> =
        ClusterClient::new([busy_addr.clone()], ClientOptions::default()).unwrap();
    let refused = tokio::time::timeout(common::WAIT, only_busy.backup(&mut tokio::io::sink()))
        .await
        .expect("refused within the wait");
    assert!(
        matches!(refused, Err(ClientError::AllBusy { ref nodes }) if nodes.as_slice() == [busy_addr.as_str()]),
        "{refused:?}"
    );

    // The busy node first, then another: the other one serves the backup.
    let client: ClusterClient<Kv> =
        ClusterClient::new([busy_addr.clone(), other_addr], ClientOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("backup");
    let mut file = tokio::fs::File::create(&path).await.unwrap();
    let info = tokio::time::timeout(common::WAIT, client.backup(&mut file))
        .await
        .expect("the backup completed within the wait")
        .unwrap();
    file.sync_all().await.unwrap();
    drop(file);
    assert_eq!(raft_core::backup::inspect(&path).unwrap(), info);
    assert!(info.bytes > 48 * (256 << 10), "{info:?}");

    // The first node was busy all along: its export is still held up by the stalled reader.
    let again = c.nodes[&busy]
        .node()
        .export_snapshot(std::io::sink())
        .await
        .map(|(info, _)| info);
    assert!(
        matches!(again, Err(Error::Backup(BackupError::Busy))),
        "{again:?}"
    );

    // The busy node and one that is down: once the budget runs out, the error names the busy
    // one rather than only the last failure.
    let down = *c
        .addrs
        .keys()
        .find(|id| **id != busy && **id != other)
        .unwrap();
    let down_addr = c.addrs[&down].clone();
    c.stop(down).await;
    let budget = Duration::from_secs(2);
    let mixed: ClusterClient<Kv> = ClusterClient::new(
        [busy_addr.clone(), down_addr],
        ClientOptions::default().with_total_timeout(budget),
    )
    .unwrap();
    let refused = tokio::time::timeout(common::WAIT, mixed.backup(&mut tokio::io::sink()))
        .await
        .expect("refused within the wait");
    assert!(
        matches!(&refused, Err(ClientError::BusyOrFailed { busy, attempts, last })
            if busy.as_slice() == [busy_addr.as_str()] && *attempts >= 2 && last.is_transient()),
        "{refused:?}"
    );
    stalled.abort();
}
