//! A `testing::Cluster` fails the test that drops it if a thread panicked while it ran. This
//! binary holds the one test that panics on purpose, so no other test sees its panics.

use std::panic::AssertUnwindSafe;

use raft_core::testing::Cluster;
use raft_core::testing::ClusterOptions;
use raft_core::testing::Sum;

async fn started() -> Cluster<Sum> {
    Cluster::start(3, ClusterOptions::default(), |_| Sum::default())
        .await
        .expect("cluster starts")
}

/// Panics in a task of its own, as a node's task would: the runtime catches it.
async fn panic_in_a_task() {
    let joined = tokio::spawn(async { panic!("injected") }).await;
    assert!(joined.is_err_and(|e| e.is_panic()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_cluster_fails_on_panics_unless_they_were_taken() {
    // A panic while the cluster ran fails its drop, naming where.
    let cluster = started().await;
    panic_in_a_task().await;
    let dropped = std::panic::catch_unwind(AssertUnwindSafe(|| drop(cluster)));
    let message = dropped
        .expect_err("the drop must fail")
        .downcast::<String>()
        .map(|m| *m)
        .unwrap_or_default();
    assert!(
        message.contains("tests/panics.rs"),
        "the failure names the location: {message}"
    );

    // Taken panics are the caller's: the drop passes.
    let cluster = started().await;
    panic_in_a_task().await;
    let taken = cluster.take_panics();
    assert_eq!(taken.len(), 1, "{taken:?}");
    assert!(cluster.take_panics().is_empty(), "taken once");
    drop(cluster);

    // A cluster during which nothing panicked drops quietly.
    drop(started().await);
}
