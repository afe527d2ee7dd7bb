//! A state machine whose `restore` panics part-way through a snapshot: its node stops, and
//! the half-restored state is never served.

use std::collections::BTreeMap;
use std::io;
use std::io::Read;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
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

/// What a cluster's restores do: on node `panics`, clear the state and panic; on node `slow`,
/// work for [`SLOW_RESTORE`] first (0: no node).
#[derive(Default)]
struct Plan {
    panics: AtomicU64,
    slow: AtomicU64,
    slow_started: AtomicBool,
    /// Set when the slow restore's work is done, before it releases the state.
    slow_finished: AtomicBool,
    /// The node whose snapshot builds wait in `write_snapshot` until `release` (0: none).
    held_build: AtomicU64,
    build_started: AtomicBool,
    release: AtomicBool,
    build_written: AtomicBool,
}

const SLOW_RESTORE: Duration = Duration::from_secs(3);

/// One test at a time: a cluster counts every panic in the process while it runs.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The test kv, whose `restore` follows its cluster's [`Plan`].
struct Fragile {
    id: NodeId,
    plan: Arc<Plan>,
    kv: KvStore,
}

impl StateMachine for Fragile {
    type Command = Cmd;
    type Output = Option<String>;
    type Snapshot = (Option<Arc<Plan>>, BTreeMap<String, String>);

    fn apply(&mut self, command: Cmd) -> Option<String> {
        self.kv.apply(command)
    }
    fn snapshot(&self) -> Self::Snapshot {
        let held = self.plan.held_build.load(Ordering::SeqCst) == self.id;
        (held.then(|| self.plan.clone()), self.kv.snapshot())
    }
    fn write_snapshot((held, kv): Self::Snapshot, out: &mut dyn Write) -> io::Result<()> {
        if let Some(plan) = held {
            plan.build_started.store(true, Ordering::SeqCst);
            while !plan.release.load(Ordering::SeqCst) {
                std::thread::park_timeout(Duration::from_millis(1));
            }
            let written = KvStore::write_snapshot(kv, out);
            plan.build_written.store(true, Ordering::SeqCst);
            return written;
        }
        KvStore::write_snapshot(kv, out)
    }
    fn restore(&mut self, input: &mut dyn Read) -> io::Result<()> {
        self.kv.0.clear();
        if self.plan.slow.load(Ordering::SeqCst) == self.id {
            self.plan.slow_started.store(true, Ordering::SeqCst);
            // Restoring a large state: this thread is busy throughout.
            std::thread::sleep(SLOW_RESTORE);
            self.plan.slow_finished.store(true, Ordering::SeqCst);
        }
        if self.plan.panics.load(Ordering::SeqCst) == self.id {
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

/// A cluster of three following `plan`, holding 10 keys everywhere, and a follower's id.
async fn cluster_and_follower(
    plan: &Arc<Plan>,
    options: ClusterOptions,
) -> (Cluster<Fragile>, NodeId) {
    init_tracing();
    let plan = plan.clone();
    let cluster = Cluster::start(3, options, move |id| Fragile {
        id,
        plan: plan.clone(),
        kv: KvStore::default(),
    })
    .await
    .expect("cluster starts");
    put_many(&cluster, 0..10).await;
    cluster.wait_converged().await.unwrap();
    let leader = cluster.wait_for_leader().await.unwrap();
    let follower = cluster
        .running()
        .into_iter()
        .find(|id| *id != leader)
        .unwrap();
    (cluster, follower)
}

/// A cluster of three whose node `behind` (returned) is down while the others write 400 keys
/// and purge their logs past it: once restarted, it can only catch up by a snapshot.
async fn one_node_behind_a_snapshot(plan: &Arc<Plan>) -> (Cluster<Fragile>, NodeId) {
    let options = ClusterOptions::default().with_configure(|c: Config| c.with_snapshots(100, 10));
    let (cluster, behind) = cluster_and_follower(plan, options).await;
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
    (cluster, behind)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restore_that_panics_leaves_no_state_served() {
    let _serial = SERIAL.lock().await;
    let plan = Arc::new(Plan::default());
    let (cluster, behind) = one_node_behind_a_snapshot(&plan).await;
    plan.panics.store(behind, Ordering::SeqCst);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_wait_for_a_long_restore_without_holding_threads() {
    let _serial = SERIAL.lock().await;
    let plan = Arc::new(Plan::default());
    let (cluster, behind) = one_node_behind_a_snapshot(&plan).await;
    plan.slow.store(behind, Ordering::SeqCst);
    let node = cluster.restart(behind).await.unwrap();
    let started = std::time::Instant::now();
    while !plan.slow_started.load(Ordering::SeqCst) {
        assert!(started.elapsed() < Duration::from_secs(30), "no restore");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // More readers than the runtime has threads, while the restore holds the state.
    let reads: Vec<_> = (0..4)
        .map(|_| {
            let node = node.clone();
            tokio::spawn(async move { node.read(Consistency::Local, |sm| sm.kv.0.len()).await })
        })
        .collect();
    // And what a metrics sampler or INFO asks, on the runtime's threads.
    let figures: Vec<_> = (0..2)
        .map(|_| {
            let node = node.clone();
            tokio::spawn(async move { (node.open_sessions(), node.session_capacity()) })
        })
        .collect();
    tokio::task::yield_now().await;
    // The runtime still runs other tasks meanwhile: the node's own, a transport's. A runtime
    // whose threads were blocked on the state would run this one only once the restore is
    // over (and a loaded machine delays it by far less than the restore's 3 s).
    let asked = std::time::Instant::now();
    tokio::spawn(async {}).await.unwrap();
    let waited = asked.elapsed();
    assert!(
        !plan.slow_finished.load(Ordering::SeqCst),
        "a task waited {waited:?}, until the restore was over, while reads waited for it"
    );
    for read in reads {
        let keys = read
            .await
            .unwrap()
            .expect("a read once the restore is over");
        assert_eq!(keys, 400, "the restored state");
    }
    for figures in figures {
        figures.await.unwrap();
    }
}

/// Waits, polling, until `done` holds.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !done() {
        assert!(started.elapsed() < Duration::from_secs(30), "never: {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The names in `dir` that end with `suffix`.
fn files(dir: &std::path::Path, suffix: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(suffix))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_build_that_outlives_its_stopped_node_places_nothing() {
    let _serial = SERIAL.lock().await;
    let plan = Arc::new(Plan::default());
    let (cluster, id) = cluster_and_follower(&plan, ClusterOptions::default()).await;
    let node = cluster.node(id).unwrap();
    let snapshots = cluster.data_dir(id).unwrap().join("snapshots");
    let before = files(&snapshots, ".snap");

    // A build under way when the node stops after a failed fdatasync. The build is let go
    // however the test ends, so a failing assertion fails rather than hangs.
    struct Release(Arc<Plan>);
    impl Drop for Release {
        fn drop(&mut self) {
            self.0.release.store(true, Ordering::SeqCst);
        }
    }
    let _release = Release(plan.clone());
    plan.held_build.store(id, Ordering::SeqCst);
    let building = tokio::spawn({
        let node = node.clone();
        async move { node.snapshot().await }
    });
    until("the build started", || {
        plan.build_started.load(Ordering::SeqCst)
    })
    .await;
    node.simulate_fsync_failure(true);
    let _ = cluster.write(Cmd::Put("after".into(), "stop".into())).await;
    let stopped = tokio::time::timeout(Duration::from_secs(30), node.stopped())
        .await
        .expect("the node stops");
    assert!(stopped.is_err(), "a fatal stop: {stopped:?}");

    // The build finishes after the stop: the store it would place its file in is closed.
    plan.release.store(true, Ordering::SeqCst);
    until("the build wrote its snapshot", || {
        plan.build_written.load(Ordering::SeqCst)
    })
    .await;
    until("the build's temporary file is gone", || {
        files(&snapshots, ".tmp").is_empty()
    })
    .await;
    assert_eq!(files(&snapshots, ".snap"), before, "a snapshot was placed");
    let _ = tokio::time::timeout(Duration::from_secs(30), building).await;
}
