//! Stopping a node: every caller that needs the engine stopped shares one stop. A binary of
//! its own, so that no other test's nodes stop threads while this one counts them.

use raft_core::testing::Cluster;
use raft_core::testing::ClusterOptions;
use raft_core::testing::kv::KvStore as Kv;

/// Threads of this process named `name`, now.
fn threads_named(name: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|tasks| {
            tasks
                .flatten()
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|comm| comm.trim() == name)
                })
                .count()
        })
        .unwrap_or(0)
}

/// Every caller that needs a node's engine stopped waits for the same stop: fifty shutdowns at
/// once start one stopping thread, not fifty, and all of them, and one after, succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_shutdowns_at_once_share_one_stop() {
    let cluster = Cluster::start(3, ClusterOptions::default(), |_| Kv::default())
        .await
        .expect("cluster starts");
    let node = cluster.node(2).unwrap();
    let shutdowns: Vec<_> = (0..50)
        .map(|_| {
            let n = node.clone();
            tokio::spawn(async move { n.shutdown().await })
        })
        .collect();
    let mut most = 0;
    while !shutdowns.iter().all(|s| s.is_finished()) {
        most = most.max(threads_named("raft-stop"));
        tokio::task::yield_now().await;
    }
    for s in shutdowns {
        s.await.unwrap().expect("shutdown");
    }
    node.shutdown().await.expect("a shutdown after the stop");
    assert!(most <= 1, "{most} stopping threads at once");
    cluster.shutdown().await.unwrap();
}
