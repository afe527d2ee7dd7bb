//! Running out of disk, in process: compaction by log size, the NOSPACE alarm (raised by a
//! simulated low free space, through the quota's test seam), and a node whose log writes fail
//! with ENOSPC (through the log's fault seam). Tests on real small file systems are in the kv
//! process tests.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use raft_core::Config;
use raft_core::Consistency;
use raft_core::Error;
use raft_core::Node;
use raft_core::QuotaOptions;
use raft_core::Role;
use raft_core::log::WalOptions;
use raft_core::testing::Cluster;
use raft_core::testing::ClusterOptions;
use raft_core::testing::init_tracing;
use raft_core::testing::kv::KvCommand as Cmd;
use raft_core::testing::kv::KvStore as Kv;

async fn start(configure: impl Fn(Config) -> Config + Send + Sync + 'static) -> Cluster<Kv> {
    init_tracing();
    let options = ClusterOptions::default().with_configure(configure);
    Cluster::start(3, options, |_| Kv::default())
        .await
        .expect("cluster starts")
}

/// A quota that samples often and reserves 1 MiB, so only the simulated free space raises it.
fn fast_quota(c: Config) -> Config {
    c.with_quota(
        QuotaOptions::default()
            .with_min_free_bytes(1 << 20)
            .with_max_used_bytes(0)
            .with_check_interval(Duration::from_millis(50)),
    )
}

/// Bytes allocated to the files under `dir`.
fn allocated(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else {
                total += m.blocks() * 512;
            }
        }
    }
    total
}

/// Waits at most `limit` for `condition` (a disk sample announces itself through no metrics
/// change).
async fn eventually(limit: Duration, what: &str, condition: impl Fn() -> bool) {
    raft_core::testing::eventually(limit, condition)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
}

async fn leader(cluster: &Cluster<Kv>) -> Node<Kv> {
    let id = cluster.wait_for_leader().await.expect("a leader");
    cluster.node(id).unwrap()
}

async fn get(node: &Node<Kv>, key: &str) -> Option<String> {
    node.read(Consistency::Linearizable, |kv| kv.0.get(key).cloned())
        .await
        .expect("linearizable read")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_log_is_compacted_by_size_not_only_by_count() {
    const THRESHOLD: u64 = 256 << 10;
    const SEGMENT: u64 = 64 << 10;
    let cluster = start(|c| {
        c.with_snapshots(0, 8)
            .with_snapshot_log_bytes(THRESHOLD)
            .with_wal(WalOptions::default().with_segment_size(SEGMENT))
    })
    .await;
    // 40 keys of 4 KiB overwritten 20 times: 160 KiB of live data, 3.2 MiB of log. Written
    // without sessions: a session remembers its last output, and 800 of them holding a 4 KiB
    // value each would make the state (and the snapshot) 3.2 MiB too.
    let value = "v".repeat(4096);
    let node = leader(&cluster).await;
    let results: Vec<_> = futures_util::stream::iter(0..800u64)
        .map(|i| node.write(Cmd::Put(format!("key-{}", i % 40), value.clone())))
        .buffer_unordered(16)
        .collect()
        .await;
    for r in results {
        r.expect("write acknowledged");
    }
    // Entry count alone never snapshots here (snapshot_every is 0); the size trigger must have.
    // Each node's WAL must come down to about the threshold plus a segment and the 8 entries
    // kept behind the snapshot (writes that queued behind the leader's proposals share an
    // entry of up to 16 KiB), while 3.2 MiB were written.
    let bound = THRESHOLD + 4 * SEGMENT + 8 * (16 << 10) + (64 << 10);
    let dirs: BTreeMap<u64, std::path::PathBuf> = (1..=3)
        .map(|id| (id, cluster.data_dir(id).unwrap().join("wal")))
        .collect();
    // Each node must also have taken a snapshot past its log's first half (writes that queued
    // behind the leader's proposals share entries, so there are fewer entries than writes).
    // Both are waited for: a node's metrics are published when its engine next wakes, which can
    // be after its purge shrank the WAL.
    let recent = |m: &raft_core::Metrics| {
        let last = m.last_log_index.unwrap_or(0);
        last > 100 && m.snapshot_index.is_some_and(|s| s > last / 2)
    };
    let compacted =
        || dirs.values().all(|d| allocated(d) <= bound) && cluster.metrics().values().all(recent);
    if tokio::time::timeout(Duration::from_secs(20), async {
        while !compacted() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .is_err()
    {
        let sizes: Vec<u64> = dirs.values().map(|d| allocated(d)).collect();
        panic!(
            "the WAL stayed above its bound or a node took no recent snapshot: WAL sizes \
             {sizes:?}, bound {bound}, metrics {:?}",
            cluster.metrics()
        );
    }
    let sizes: Vec<u64> = dirs.values().map(|d| allocated(d)).collect();
    eprintln!("WAL sizes after 3.2 MiB of writes: {sizes:?} (bound {bound})");
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_alarm_refuses_growing_writes_keeps_reads_and_deletes_and_clears_by_itself() {
    let cluster = start(fast_quota).await;
    let node = leader(&cluster).await;
    cluster
        .write(Cmd::Put("kept".into(), "1".into()))
        .await
        .unwrap();
    cluster
        .write(Cmd::Put("doomed".into(), "1".into()))
        .await
        .unwrap();

    node.simulate_free_bytes(Some(1000));
    eventually(Duration::from_secs(5), "alarm raised", || {
        node.storage().refusing_writes
    })
    .await;
    let status = node.storage();
    assert!(
        status
            .local_alarm
            .as_deref()
            .is_some_and(|r| r.contains("free")),
        "{status:?}"
    );
    // A write that grows the state is refused before it is proposed…
    let last_before = node.metrics().last_log_index;
    match node.write(Cmd::Put("new".into(), "x".into())).await {
        Err(Error::NoSpace { node: n, reason }) => {
            assert_eq!(n, node.id());
            assert!(reason.contains("free"), "{reason}");
        }
        other => panic!("expected NoSpace, got {other:?}"),
    }
    assert_eq!(
        node.metrics().last_log_index,
        last_before,
        "nothing proposed"
    );
    assert!(
        !Error::NoSpace {
            node: 1,
            reason: String::new()
        }
        .may_have_applied()
    );
    // …while reads and deletes go on.
    assert_eq!(get(&node, "kept").await.as_deref(), Some("1"));
    node.write(Cmd::Delete("doomed".into())).await.unwrap();
    assert_eq!(get(&node, "doomed").await, None);
    assert_eq!(get(&node, "new").await, None);

    // Space comes back: writes resume without a restart.
    node.simulate_free_bytes(None);
    eventually(Duration::from_secs(5), "alarm cleared", || {
        !node.storage().refusing_writes
    })
    .await;
    node.write(Cmd::Put("new".into(), "x".into()))
        .await
        .unwrap();
    assert_eq!(get(&node, "new").await.as_deref(), Some("x"));
    cluster.shutdown().await.unwrap();
}

/// A data directory over its quota comes back under it once the keys are deleted, with no
/// write that grows the log: while its disk is in alarm a node snapshots what was applied and
/// purges its log up to the snapshot. The size trigger (64 MiB by default) never fires here, and
/// the default 1,000 entries kept behind a snapshot would keep every entry written.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleting_the_keys_clears_a_quota_alarm_without_any_growing_write() {
    const QUOTA: u64 = 1 << 20;
    let cluster = start(|c| {
        c.with_wal(WalOptions::default().with_segment_size(64 << 10))
            .with_quota(
                QuotaOptions::default()
                    .with_min_free_bytes(0)
                    .with_max_used_bytes(QUOTA)
                    .with_check_interval(Duration::from_millis(50)),
            )
    })
    .await;
    let node = leader(&cluster).await;
    let value = "v".repeat(4096);
    let mut keys = 0;
    loop {
        match node
            .write(Cmd::Put(format!("key-{keys}"), value.clone()))
            .await
        {
            Ok(_) => keys += 1,
            Err(Error::NoSpace { .. }) => break,
            Err(e) => panic!("write failed: {e}"),
        }
        assert!(keys < 10_000, "the quota never raised the alarm");
    }
    assert!(keys > 100, "the alarm came after only {keys} writes");
    for k in 0..keys {
        node.write(Cmd::Delete(format!("key-{k}"))).await.unwrap();
    }
    eventually(
        Duration::from_secs(20),
        "every node's alarm cleared",
        || {
            cluster
                .running()
                .iter()
                .all(|id| cluster.node(*id).unwrap().storage().local_alarm.is_none())
                && !node.storage().refusing_writes
        },
    )
    .await;
    node.write(Cmd::Put("after".into(), "x".into()))
        .await
        .unwrap();
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_voter_in_alarm_stops_the_leader_until_it_reports_clear() {
    let cluster = start(fast_quota).await;
    let node = leader(&cluster).await;
    let follower = (1..=3).find(|id| *id != node.id()).unwrap();

    // What a transport reports after asking the voters: one is in alarm.
    node.report_peer_alarms([(follower, Some("disk full".to_string()))].into());
    assert!(node.storage().refusing_writes);
    match node.write(Cmd::Put("k".into(), "v".into())).await {
        Err(Error::NoSpace { node: n, .. }) => assert_eq!(n, follower),
        other => panic!("expected NoSpace naming node {follower}, got {other:?}"),
    }
    node.write(Cmd::Delete("k".into())).await.unwrap();
    // A follower ignores such reports: only the leader gathers them.
    let f = cluster.node(follower).unwrap();
    f.report_peer_alarms([(node.id(), Some("disk full".to_string()))].into());
    assert!(!f.storage().refusing_writes);

    node.report_peer_alarms([(follower, None)].into());
    assert!(!node.storage().refusing_writes);
    node.write(Cmd::Put("k".into(), "v".into())).await.unwrap();
    cluster.shutdown().await.unwrap();
}

/// Fails the disk of the leader (or of a follower) with `inject`, checks that the node stops
/// and says why (`expect` in the error) while the others carry on, then restarts it and checks
/// that every acknowledged write is on every node.
async fn a_failed_disk_stops_the_node_and_a_restart_recovers(
    victim_leads: bool,
    inject: fn(&Node<Kv>),
    expect: &str,
) {
    let cluster = start(|c| c).await;
    let leader_id = cluster.wait_for_leader().await.unwrap();
    let victim_id = match victim_leads {
        true => leader_id,
        false => (1..=3).find(|id| *id != leader_id).unwrap(),
    };
    let victim = cluster.node(victim_id).unwrap();
    let mut acknowledged: BTreeMap<String, String> = BTreeMap::new();
    for i in 0..50 {
        let (k, v) = (format!("key-{i}"), format!("value-{i}"));
        cluster.write(Cmd::Put(k.clone(), v.clone())).await.unwrap();
        acknowledged.insert(k, v);
    }

    inject(&victim);
    let stopped = tokio::spawn({
        let n = victim.clone();
        async move { n.stopped().await }
    });
    // Writes go on; the victim's next log write fails and it stops rather than lingering.
    let mut i = 50;
    while !stopped.is_finished() {
        assert!(i < 5000, "node {victim_id} still runs after {i} writes");
        let (k, v) = (format!("key-{i}"), format!("value-{i}"));
        if cluster.write(Cmd::Put(k.clone(), v.clone())).await.is_ok() {
            acknowledged.insert(k, v);
        }
        i += 1;
    }
    let outcome = tokio::time::timeout(Duration::from_secs(10), stopped)
        .await
        .expect("the node reports its failure")
        .unwrap();
    match outcome {
        Err(e @ (Error::Storage(_) | Error::Log(_))) => {
            assert!(e.to_string().contains(expect), "{e}");
        }
        other => panic!("expected a storage failure, got {other:?}"),
    }
    assert_eq!(victim.role(), Role::Shutdown);
    assert!(matches!(
        victim.write(Cmd::Put("late".into(), "x".into())).await,
        Err(Error::Storage(_) | Error::Shutdown)
    ));

    // The others carry on (under a new leader if the victim led).
    for i in 10_000..10_030 {
        let (k, v) = (format!("key-{i}"), format!("value-{i}"));
        cluster.write(Cmd::Put(k.clone(), v.clone())).await.unwrap();
        acknowledged.insert(k, v);
    }
    // Restarted (with a working disk again), the failed node recovers and catches up.
    cluster.crash(victim_id).await.unwrap();
    cluster.restart(victim_id).await.unwrap();
    cluster.wait_converged().await.unwrap();
    for id in 1..=3 {
        let node = cluster.node(id).unwrap();
        let state = node
            .read(Consistency::Local, |kv| kv.0.clone())
            .await
            .unwrap();
        for (k, v) in &acknowledged {
            assert_eq!(state.get(k), Some(v), "node {id} lost acknowledged {k}");
        }
    }
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_whose_disk_fills_stops_loudly_and_recovers_every_acknowledged_write() {
    a_failed_disk_stops_the_node_and_a_restart_recovers(
        true,
        |n| n.simulate_disk_full(true),
        "No space left on device",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_whose_fdatasync_fails_stops_loudly_and_recovers() {
    a_failed_disk_stops_the_node_and_a_restart_recovers(
        false,
        |n| n.simulate_fsync_failure(true),
        "fdatasync",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stopped_resolves_ok_after_a_requested_shutdown() {
    let cluster = start(|c| c).await;
    let node = cluster.node(2).unwrap();
    let waiting = tokio::spawn({
        let n = node.clone();
        async move { n.stopped().await }
    });
    cluster.crash(2).await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("stopped() resolves after shutdown")
        .unwrap();
    assert!(r.is_ok(), "{r:?}");
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_every_handle_still_stops_the_node() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let router = raft_core::testing::Router::new(0);
    let config = Config::durable(1, dir.path())
        .with_timing(Duration::from_millis(20), Duration::from_millis(100))
        .with_quota(QuotaOptions::default().with_check_interval(Duration::from_millis(10)));
    let node = Node::start(config, Kv::default(), router.transport(1))
        .await
        .unwrap();
    node.initialize([(1, "node-1")]).await.unwrap();
    node.wait_for(Duration::from_secs(5), |m| m.role == Role::Leader)
        .await
        .unwrap();
    node.write(Cmd::Put("k".into(), "v".into())).await.unwrap();
    let mut watch = node.subscribe();
    // The background task (disk samples, snapshots by size) must not keep the node alive.
    drop(node);
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while watch.changed().await.is_some() {}
    })
    .await;
    assert!(
        ended.is_ok(),
        "the node kept running after its last handle was dropped"
    );
    // Its log was closed: the directory opens again.
    let router = raft_core::testing::Router::new(0);
    let again = Node::start(
        Config::durable(1, dir.path()),
        Kv::default(),
        router.transport(1),
    )
    .await
    .unwrap();
    again.shutdown().await.unwrap();
}
