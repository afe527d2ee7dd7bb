//! Panics in the state machine's code: one in `apply` stops the node; one in `snapshot` fails
//! that snapshot and the node goes on. A binary of its own: the panics are on purpose, and a
//! `testing::Cluster` in another test of the same process would see them.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;

use raft_core::Consistency;
use raft_core::testing::lone_leader;

/// [`Sum`](raft_core::testing::Sum), except that its `apply` panics part-way on the command
/// 13, after changing the total.
#[derive(Debug, Default)]
struct Brittle(raft_core::testing::Sum);

impl raft_core::StateMachine for Brittle {
    type Command = u64;
    type Output = u64;
    type Snapshot = u64;

    fn apply(&mut self, c: u64) -> u64 {
        self.0.apply(1000);
        assert_ne!(c, 13, "the state machine cannot take 13");
        self.0.apply(c)
    }

    fn snapshot(&self) -> u64 {
        self.0.snapshot()
    }

    fn write_snapshot(s: u64, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        raft_core::testing::Sum::write_snapshot(s, out)
    }

    fn restore(&mut self, input: &mut dyn std::io::Read) -> std::io::Result<()> {
        self.0.restore(input)
    }
}

/// A panic in the state machine's `apply` stops the node at once, loudly, and its half-applied
/// state is never served. Before, the panic ended openraft's apply task but not the node: it
/// kept leading and answered local reads with the total the panic left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_apply_stops_the_node_and_its_state_is_not_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = raft_core::Config::durable(1, dir.path())
        .with_timing(Duration::from_millis(20), Duration::from_millis(100));
    let node = lone_leader(config, Brittle::default())
        .await
        .expect("node 1 leads");
    assert_eq!(node.write(1).await.expect("a write"), 1001);

    let refused = node.write(13).await.expect_err("the write of 13");
    assert!(refused.may_have_applied(), "{refused}");
    let stopped = tokio::time::timeout(Duration::from_secs(5), node.stopped())
        .await
        .expect("the node stops");
    let why = stopped.expect_err("it stops with an error").to_string();
    assert!(why.contains("panicked"), "{why}");
    let read = node.read(Consistency::Local, |s| s.0.0).await;
    assert!(read.is_err(), "the half-applied state was served: {read:?}");
}

/// Makes [`Camera::write_snapshot`] panic while set.
static WRITE_FAILS: AtomicBool = AtomicBool::new(false);

/// [`Sum`](raft_core::testing::Sum), except that its `snapshot` panics while `fail` is set, and
/// its `write_snapshot` while [`WRITE_FAILS`] is.
#[derive(Debug, Default)]
struct Camera {
    sum: raft_core::testing::Sum,
    fail: Arc<AtomicBool>,
}

impl raft_core::StateMachine for Camera {
    type Command = u64;
    type Output = u64;
    type Snapshot = u64;

    fn apply(&mut self, c: u64) -> u64 {
        self.sum.apply(c)
    }

    fn snapshot(&self) -> u64 {
        assert!(!self.fail.load(Ordering::SeqCst), "no snapshot now");
        self.sum.snapshot()
    }

    fn write_snapshot(s: u64, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        assert!(!WRITE_FAILS.load(Ordering::SeqCst), "no writing now");
        raft_core::testing::Sum::write_snapshot(s, out)
    }

    fn restore(&mut self, input: &mut dyn std::io::Read) -> std::io::Result<()> {
        self.sum.restore(input)
    }
}

/// A panic in the state machine's `snapshot` (which only reads the state) fails that snapshot
/// and that backup, and nothing else: the node goes on leading and applying, and snapshots once
/// the state machine lets it. Before, the panic ended openraft's state-machine task: the next
/// write never applied, and the node never stopped either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_snapshot_fails_that_snapshot_and_the_node_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = raft_core::Config::durable(1, dir.path())
        .with_timing(Duration::from_millis(20), Duration::from_millis(100))
        .with_request_timeout(Duration::from_secs(5));
    let fail = Arc::new(AtomicBool::new(true));
    let sm = Camera {
        sum: raft_core::testing::Sum::default(),
        fail: fail.clone(),
    };
    let node = lone_leader(config, sm).await.expect("node 1 leads");
    assert_eq!(node.write(5).await.expect("a write"), 5);

    let built = node
        .snapshot()
        .await
        .expect_err("the snapshot cannot be taken");
    assert!(built.to_string().contains("panicked"), "{built}");
    let backup = node.export_snapshot(Vec::new()).await;
    assert!(backup.is_err(), "a backup without a handle: {backup:?}");

    // The node goes on: writes apply and reads are served.
    assert_eq!(node.write(6).await.expect("a write after the panic"), 11);
    let total = node.read(Consistency::Linearizable, |s| s.sum.0).await;
    assert_eq!(total.expect("a read after the panic"), 11);

    fail.store(false, Ordering::SeqCst);
    let applied = node.metrics().applied_index;
    node.snapshot()
        .await
        .expect("a snapshot once it can be taken");
    assert!(node.metrics().snapshot_index >= applied);

    // A panic writing a backup fails that backup as a storage error, not as a stopped node.
    WRITE_FAILS.store(true, Ordering::SeqCst);
    let backup = node.export_snapshot(Vec::new()).await;
    WRITE_FAILS.store(false, Ordering::SeqCst);
    match backup {
        Err(raft_core::Error::Storage(why)) => assert!(why.contains("panicked"), "{why}"),
        other => panic!("expected a storage error: {other:?}"),
    }
    assert_eq!(node.write(1).await.expect("a write after it"), 12);
}
