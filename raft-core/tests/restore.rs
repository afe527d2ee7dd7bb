//! A state machine whose `restore` panics part-way through a snapshot: its node stops, and
//! the half-restored state is never served.

use std::collections::BTreeMap;
use std::io;
use std::io::Read;
use std::io::Write;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use raft_core::Config;
use raft_core::Consistency;
use raft_core::NodeId;
use raft_core::StateMachine;
use raft_core::testing::Cluster;
use raft_core::testing::ClusterOptions;
use raft_core::testing::init_tracing;
use raft_core::testing::kv::KvCommand as Cmd;
use raft_core::testing::kv::KvStore;

/// The node whose restores panic (0: none).
static PANICS_ON_RESTORE: AtomicU64 = AtomicU64::new(0);

/// The test kv, whose `restore` on [`PANICS_ON_RESTORE`] clears the state, then panics.
struct Fragile {
    id: NodeId,
    kv: KvStore,
}

impl StateMachine for Fragile {
    type Command = Cmd;
    type Output = Option<String>;
    type Snapshot = BTreeMap<String, String>;

    fn apply(&mut self, command: Cmd) -> Option<String> {
        self.kv.apply(command)
    }
    fn snapshot(&self) -> Self::Snapshot {
        self.kv.snapshot()
    }
    fn write_snapshot(snapshot: Self::Snapshot, out: &mut dyn Write) -> io::Result<()> {
        KvStore::write_snapshot(snapshot, out)
    }
    fn restore(&mut self, input: &mut dyn Read) -> io::Result<()> {
        self.kv.0.clear();
        if PANICS_ON_RESTORE.load(Ordering::SeqCst) == self.id {
            panic!("a restore gives up part-way");
        }
        self.kv.restore(input)
    }
    fn check_snapshot(input: &mut dyn Read) -> io::Result<()> {
        KvStore::check_snapshot(input)
    }
}

async fn put_many(cluster: &Cluster<Fragile>, keys: std::ops::Range<u64>) {
    let results: Vec<_> = futures_util::stream::iter(keys)
        .map(|i| cluster.write(Cmd::Put(format!("key-{i}"), format!("value-{i}"))))
        .buffer_unordered(32)
        .collect()
        .await;
    for r in results {
        r.expect("write acknowledged");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restore_that_panics_leaves_no_state_served() {
    init_tracing();
    let options = ClusterOptions::default().with_configure(|c: Config| c.with_snapshots(100, 10));
    let cluster = Cluster::start(3, options, |id| Fragile {
        id,
        kv: KvStore::default(),
    })
    .await
    .expect("cluster starts");
    put_many(&cluster, 0..10).await;
    cluster.wait_converged().await.unwrap();
    let leader = cluster.wait_for_leader().await.unwrap();
    let behind = cluster
        .running()
        .into_iter()
        .find(|id| *id != leader)
        .unwrap();
    let behind_last = cluster.node(behind).unwrap().metrics().last_log_index;
    cluster.crash(behind).await.unwrap();

    // The others go on and purge their logs past it: it can only catch up by a snapshot.
    put_many(&cluster, 10..400).await;
    let leader = cluster.wait_for_leader().await.unwrap();
    cluster.node(leader).unwrap().snapshot().await.unwrap();
    cluster
        .wait_until("the leader purged past the crashed node", |all| {
            all.get(&leader)
                .and_then(|m| m.purged_index)
                .is_some_and(|p| Some(p) > behind_last)
        })
        .await
        .unwrap();

    PANICS_ON_RESTORE.store(behind, Ordering::SeqCst);
    let node = cluster.restart(behind).await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), node.stopped())
        .await
        .expect("a node whose restore panicked stops")
        .ok();
    let read = node.read(Consistency::Local, |sm| sm.kv.0.len()).await;
    assert!(
        read.is_err(),
        "a half-restored state was served: {read:?} keys"
    );
    let panics = cluster.take_panics();
    assert!(
        panics.iter().all(|p| p.contains("restore.rs")),
        "{panics:?}"
    );
    assert!(!panics.is_empty(), "the restore ran");
}
