//! Single-node behaviour: bad input gets typed errors, a damaged data directory refuses to
//! start with a clear error, and nothing panics.

use std::fs;
use std::io;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use raft_core::ApplyError;
use raft_core::Config;
use raft_core::Consistency;
use raft_core::Error;
use raft_core::Node;
use raft_core::Role;
use raft_core::log::LogError;
use raft_core::snapshot::SnapshotError;
use raft_core::testing::PanicWatch;
use raft_core::testing::Router;
use raft_core::testing::Sum;
use raft_core::types::Request;

fn config(dir: &Path) -> Config {
    Config::durable(1, dir)
        .with_timing(Duration::from_millis(20), Duration::from_millis(100))
        .with_request_timeout(Duration::from_secs(5))
}

async fn start(dir: &Path) -> Result<Node<Sum>, Error> {
    start_with(config(dir)).await
}

async fn start_with(config: Config) -> Result<Node<Sum>, Error> {
    let router = Router::new(0);
    let node = Node::start(config, Sum::default(), router.transport(1)).await?;
    router.register(node.rpc_handler());
    Ok(node)
}

/// A one-node cluster that has written `1..=n` and been shut down.
async fn written(dir: &Path, n: u64) {
    let node = start(dir).await.unwrap();
    node.initialize([(1, "node-1")]).await.unwrap();
    node.wait_for(Duration::from_secs(5), |m| m.role == Role::Leader)
        .await
        .unwrap();
    for i in 1..=n {
        node.write(i).await.unwrap();
    }
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_single_node_restarts_with_its_state() {
    let dir = tempfile::tempdir().unwrap();
    written(dir.path(), 10).await;
    let node = restarted(dir.path()).await;
    assert_eq!(
        node.read(Consistency::Linearizable, |s| s.0).await.unwrap(),
        55
    );
    assert_eq!(node.write(1).await.unwrap(), 56);
}

#[tokio::test]
async fn bad_commands_get_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    written(dir.path(), 1).await;
    let node = start(dir.path()).await.unwrap();
    node.wait_for(Duration::from_secs(5), |m| m.role == Role::Leader)
        .await
        .unwrap();

    // Bytes that are not a `u64` in the codec: refused identically by every replica.
    let garbage = Request {
        session: None,
        command: Bytes::from_static(&[
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ]),
    };
    match node.write_encoded(garbage).await {
        Err(Error::Rejected(ApplyError::InvalidCommand(_))) => {}
        other => panic!("expected InvalidCommand, got {other:?}"),
    }
    let huge = Request {
        session: None,
        command: Bytes::from(vec![0u8; node.config().max_command_bytes + 1]),
    };
    assert!(matches!(
        node.write_encoded(huge).await,
        Err(Error::CommandTooLarge { .. })
    ));
    // The node carries on.
    assert_eq!(node.write(2).await.unwrap(), 3);
}

/// A command type that holds itself, as JSON-like values and syntax trees do.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
enum Expr {
    Num(u64),
    Neg(Box<Expr>),
}

impl Expr {
    /// How many `Neg`s wrap the number, and the number.
    fn eval(&self) -> (u64, u64) {
        let mut negs = 0;
        let mut at = self;
        while let Expr::Neg(inner) = at {
            negs += 1;
            at = inner;
        }
        match at {
            Expr::Num(n) => (negs, *n),
            Expr::Neg(_) => unreachable!("the loop unwraps every Neg"),
        }
    }
}

/// Keeps the last command's evaluation.
#[derive(Debug, Default)]
struct Calc((u64, u64));

impl raft_core::StateMachine for Calc {
    type Command = Expr;
    type Output = (u64, u64);
    type Snapshot = (u64, u64);

    fn apply(&mut self, c: Expr) -> (u64, u64) {
        self.0 = c.eval();
        self.0
    }

    fn snapshot(&self) -> (u64, u64) {
        self.0
    }

    fn write_snapshot(s: (u64, u64), out: &mut dyn Write) -> io::Result<()> {
        out.write_all(&raft_core::codec::encode(&s).map_err(io::Error::other)?)
    }

    fn restore(&mut self, input: &mut dyn io::Read) -> io::Result<()> {
        let mut bytes = Vec::new();
        input.read_to_end(&mut bytes)?;
        self.0 = raft_core::codec::decode(&bytes).map_err(io::Error::other)?;
        Ok(())
    }
}

/// A command nested a million levels deep, a couple of megabytes long, would overflow the stack
/// of every replica decoding it (a process abort, not a panic) and, being in the log, again at
/// every restart. It is refused as not applied, like any command that does not decode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_nested_past_the_decoding_bound_is_refused_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let node = raft_core::testing::lone_leader(config(dir.path()), Calc::default())
        .await
        .unwrap();
    let shallow = Expr::Neg(Box::new(Expr::Neg(Box::new(Expr::Num(7)))));
    assert_eq!(node.write(shallow).await.unwrap(), (2, 7));

    // `Neg` is variant 1 and `Num` variant 0 in the codec: 1, 1, …, 0, 7.
    for levels in [200, 1_000_000] {
        let mut bytes = vec![1u8; levels];
        bytes.extend_from_slice(&[0, 7]);
        let deep = Request {
            session: None,
            command: Bytes::from(bytes),
        };
        match node.write_encoded(deep).await {
            Err(Error::Rejected(ApplyError::InvalidCommand(why))) => {
                assert!(why.contains("levels deep"), "{why}")
            }
            other => panic!("expected InvalidCommand for {levels} levels, got {other:?}"),
        }
    }
    // The node carries on, and commands within the bound apply.
    let mut nested = Expr::Num(3);
    for _ in 0..40 {
        nested = Expr::Neg(Box::new(nested));
    }
    assert_eq!(node.write(nested).await.unwrap(), (40, 3));
}

#[tokio::test]
async fn a_damaged_log_refuses_to_start_and_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    written(dir.path(), 50).await;
    let wal = dir.path().join("wal");
    let seg = fs::read_dir(&wal)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "wal"))
        .unwrap();
    let mut bytes = fs::read(&seg).unwrap();
    // Flip a bit in the first record after the header: damage with valid records after it.
    bytes[24 + 10] ^= 0x04;
    fs::write(&seg, &bytes).unwrap();
    match start(dir.path()).await {
        Err(Error::Log(LogError::Corrupt { file, offset, .. })) => {
            assert_eq!(file, seg);
            assert_eq!(offset, 24);
        }
        other => panic!("expected a corruption error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_damaged_snapshot_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    written(dir.path(), 5).await;
    {
        let node = start(dir.path()).await.unwrap();
        node.wait_for(Duration::from_secs(5), |m| m.role == Role::Leader)
            .await
            .unwrap();
        node.snapshot().await.unwrap();
        node.shutdown().await.unwrap();
    }
    let snap = fs::read_dir(dir.path().join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "snap"))
        .unwrap();
    let mut bytes = fs::read(&snap).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    fs::write(&snap, &bytes).unwrap();
    match start(dir.path()).await {
        Err(Error::Snapshot(SnapshotError::Corrupt { what, .. })) => {
            assert!(what.contains(snap.to_str().unwrap()), "{what}");
        }
        other => panic!("expected a snapshot corruption error, got {other:?}"),
    }
}

/// A one-node cluster that wrote `1..=20`, took a snapshot and purged its log up to it.
async fn purged_to_a_snapshot(dir: &Path) {
    written(dir, 20).await;
    let node = start_with(config(dir).with_keep_after_snapshot(0))
        .await
        .unwrap();
    node.wait_for(Duration::from_secs(5), |m| m.role == Role::Leader)
        .await
        .unwrap();
    node.snapshot().await.unwrap();
    node.wait_for(Duration::from_secs(5), |m| {
        m.purged_index.is_some() && m.purged_index == m.snapshot_index
    })
    .await
    .unwrap();
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_lost_log_meta_file_refuses_to_start_rather_than_forget_the_vote() {
    // Beside the log's segments.
    let dir = tempfile::tempdir().unwrap();
    written(dir.path(), 5).await;
    let meta = dir.path().join("wal").join("meta");
    fs::remove_file(&meta).unwrap();
    match start(dir.path()).await {
        Err(Error::Log(LogError::Corrupt { file, .. })) => assert_eq!(file, meta),
        other => panic!("expected the missing meta file to be named, got {other:?}"),
    }
    assert!(!meta.exists(), "nothing was recreated");

    // Beside a snapshot, with the whole log directory gone: refused on every start (a
    // supervisor restarts a node that fails), not only the first.
    let dir = tempfile::tempdir().unwrap();
    purged_to_a_snapshot(dir.path()).await;
    fs::remove_dir_all(dir.path().join("wal")).unwrap();
    let meta = dir.path().join("wal").join("meta");
    for attempt in 0..2 {
        match start(dir.path()).await {
            Err(Error::Log(LogError::Corrupt { file, .. })) => assert_eq!(file, meta),
            other => panic!("start {attempt}: expected the missing meta file, got {other:?}"),
        }
        assert!(!meta.exists(), "start {attempt} recreated it");
    }
}

#[tokio::test]
async fn a_log_purged_past_its_lost_snapshot_refuses_to_start_and_names_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    purged_to_a_snapshot(dir.path()).await;
    for snap in snap_files(dir.path()) {
        fs::remove_file(snap).unwrap();
    }
    match start(dir.path()).await {
        Err(Error::Snapshot(SnapshotError::Corrupt { what, reason })) => {
            assert_eq!(what, dir.path().join("snapshots").display().to_string());
            assert!(reason.contains("purged up to index"), "{reason}");
        }
        other => panic!("expected the snapshot directory to be named, got {other:?}"),
    }
}

/// A one-node cluster that wrote `1..=n`, took a snapshot and was shut down; its snapshot file.
async fn snapshotted(dir: &Path, n: u64) -> std::path::PathBuf {
    written(dir, n).await;
    let node = start(dir).await.unwrap();
    node.wait_for(Duration::from_secs(5), |m| m.role == Role::Leader)
        .await
        .unwrap();
    node.snapshot().await.unwrap();
    node.shutdown().await.unwrap();
    snap_files(dir).pop().unwrap()
}

fn snap_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = fs::read_dir(dir.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "snap"))
        .collect();
    files.sort();
    files
}

fn cluster_of(dir: &Path) -> raft_core::ClusterId {
    fs::read_to_string(dir.join("cluster-id"))
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn another_clusters_snapshot_in_the_data_dir_is_refused_and_changes_nothing() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a_snap = snapshotted(a_dir.path(), 30).await; // covers more log than B's
    snapshotted(b_dir.path(), 4).await;
    let (a, b) = (cluster_of(a_dir.path()), cluster_of(b_dir.path()));
    assert_ne!(a, b);
    // Copied in under a name that sorts after B's own snapshot.
    let stray = b_dir.path().join("snapshots/00000000000000099999.snap");
    fs::copy(&a_snap, &stray).unwrap();
    let before = snap_files(b_dir.path());

    match start(b_dir.path()).await {
        Err(e @ Error::Snapshot(SnapshotError::WrongCluster { .. })) => {
            let text = e.to_string();
            assert!(text.contains(&a.to_string()), "{text}");
            assert!(text.contains(&b.to_string()), "{text}");
        }
        other => panic!("expected WrongCluster, got {:?}", other.map(|_| ())),
    }
    assert_eq!(snap_files(b_dir.path()), before, "no snapshot was purged");
    assert_eq!(cluster_of(b_dir.path()), b);

    // Without the stray file, B starts with its own state.
    fs::remove_file(&stray).unwrap();
    let node = start(b_dir.path()).await.unwrap();
    node.wait_for(Duration::from_secs(5), |m| m.role == Role::Leader)
        .await
        .unwrap();
    assert_eq!(
        node.read(Consistency::Linearizable, |s| s.0).await.unwrap(),
        10
    );
    assert_eq!(node.cluster_id(), Some(b));
}

/// A one-node cluster that wrote `1..=4` (a sum of 10), restarted and leading.
async fn leading(dir: &Path) -> Node<Sum> {
    written(dir, 4).await;
    restarted(dir).await
}

/// The node of `dir` started again, once it leads.
async fn restarted(dir: &Path) -> Node<Sum> {
    restarted_with(config(dir)).await
}

async fn restarted_with(config: Config) -> Node<Sum> {
    let node = start_with(config).await.unwrap();
    node.wait_for(Duration::from_secs(5), |m| m.role == Role::Leader)
        .await
        .unwrap();
    node
}

/// The vote of a peer (node 2, term 1000) that sends `node` a snapshot. Not node 1 itself:
/// openraft asserts on a snapshot that names this very node as a leader it does not know of.
fn peer_vote() -> raft_core::types::Vote {
    raft_core::types::Vote {
        leader_id: raft_core::types::LeaderId {
            term: 1_000,
            node_id: 2,
        },
        committed: true,
    }
}

/// Sends `node` a snapshot of `cluster` from [`peer_vote`], 100 entries ahead of it, whose state
/// part is what `user` writes; the received snapshot, as its sink's `finish` returns it.
fn offer_snapshot(
    node: &Node<Sum>,
    cluster: Option<raft_core::ClusterId>,
    user: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> Result<
    (
        raft_core::types::SnapshotMeta,
        raft_core::snapshot::SnapshotData,
    ),
    SnapshotError,
> {
    let vote = peer_vote();
    let meta = raft_core::types::SnapshotMeta {
        last_log_id: Some(openraft::LogId::new(
            vote.leader_id,
            node.metrics().applied_index.unwrap_or(0) + 100,
        )),
        last_membership: raft_core::types::StoredMembership::default(),
    };
    let bytes = raft_core::testing::snapshot_bytes_of(cluster, &meta, user).unwrap();
    let Ok(raft_core::transport::SnapshotReceive::Receive(mut sink)) = node
        .rpc_handler()
        .snapshot_sink(&vote, Some(bytes.len() as u64))
    else {
        panic!("the sink should open");
    };
    sink.write(&bytes).unwrap();
    sink.finish()
}

#[tokio::test]
async fn another_clusters_snapshot_sent_to_a_node_is_refused_before_it_is_installed() {
    let dir = tempfile::tempdir().unwrap();
    let node = leading(dir.path()).await;
    let ours = node.cluster_id().unwrap();
    let theirs = raft_core::ClusterId::random();
    // A snapshot that would set the sum to 1000 if it were installed.
    match offer_snapshot(&node, Some(theirs), |w| {
        raft_core::write_serde(&1_000u64, w)
    }) {
        Err(SnapshotError::WrongCluster {
            ours: o, theirs: t, ..
        }) => assert_eq!((o, t), (ours, theirs)),
        other => panic!("expected WrongCluster, got {:?}", other.map(|_| ())),
    }
    // The node is unchanged and carries on.
    assert_eq!(
        node.read(Consistency::Linearizable, |s| s.0).await.unwrap(),
        10
    );
    assert_eq!(node.write(1).await.unwrap(), 11);
    assert_eq!(node.cluster_id(), Some(ours));
}

#[tokio::test]
async fn a_restore_that_fails_part_way_stops_the_node_and_its_state_is_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let node = leading(dir.path()).await;
    // Checksummed and of this cluster, but its state part is cut short.
    let (meta, data) = offer_snapshot(&node, node.cluster_id(), |w| w.write_all(&[0xff])).unwrap();
    let installed = node
        .rpc_handler()
        .install_snapshot(peer_vote(), meta, data)
        .await;
    assert!(installed.is_err());
    // The node stops (`wait_for` reports a stopped node as `Shutdown`).
    match node
        .wait_for(Duration::from_secs(5), |m| m.role == Role::Shutdown)
        .await
    {
        Ok(_) | Err(Error::Shutdown) => {}
        Err(e) => panic!("the node should stop: {e}"),
    }
    match node.read(Consistency::Local, |s| s.0).await {
        Err(Error::Storage(_)) => {}
        other => panic!("expected a storage error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_data_dir_belongs_to_one_node() {
    let dir = tempfile::tempdir().unwrap();
    written(dir.path(), 1).await;
    let router = Router::new(0);
    let other = Config::durable(2, dir.path());
    match Node::start(other, Sum::default(), router.transport(2)).await {
        Err(Error::Log(LogError::WrongNode {
            expected: 2,
            found: 1,
            ..
        })) => {}
        other => panic!("expected WrongNode, got {other:?}"),
    }
}

#[tokio::test]
async fn invalid_configuration_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let router = Router::new(0);
    let bad =
        config(dir.path()).with_timing(Duration::from_millis(100), Duration::from_millis(150));
    assert!(matches!(
        Node::start(bad, Sum::default(), router.transport(1)).await,
        Err(Error::Config(_))
    ));
}

#[tokio::test]
async fn a_batch_is_one_entry_applied_in_order_once_and_kept_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let node =
        written_and_leading(dir.path(), config(dir.path()).with_max_command_bytes(1_000)).await;
    let session = raft_core::Session {
        client_id: node.register_session().await.unwrap(),
        sequence: 1,
    };
    let last = |n: &Node<Sum>| n.metrics().last_log_index.unwrap_or(0);

    // Outputs in order, from one log entry.
    let before = last(&node);
    assert_eq!(node.write_many(vec![1, 2, 3]).await.unwrap(), vec![2, 4, 7]);
    assert_eq!(last(&node), before + 1, "a batch is one entry");

    // In a session: a retry of the batch answers the first outputs and applies nothing.
    let first = node
        .write_many_in_session(session, vec![10, 20])
        .await
        .unwrap();
    assert_eq!(first, vec![17, 37]);
    let retry = node
        .write_many_in_session(session, vec![10, 20])
        .await
        .unwrap();
    assert_eq!(retry, first);
    assert_eq!(
        node.read(Consistency::Linearizable, |s| s.0).await.unwrap(),
        37
    );

    // Empty: nothing proposed. Too large: refused before anything is proposed.
    let before = last(&node);
    assert_eq!(
        node.write_many(Vec::new()).await.unwrap(),
        Vec::<u64>::new()
    );
    match node.write_many(vec![1; 200]).await {
        Err(Error::CommandTooLarge { limit: 1_000, .. }) => {}
        other => panic!("expected CommandTooLarge, got {other:?}"),
    }
    assert_eq!(last(&node), before);
    node.shutdown().await.unwrap();

    // After a restart the batches' effects and the session's record are still there.
    let node = restarted(dir.path()).await;
    assert_eq!(
        node.read(Consistency::Linearizable, |s| s.0).await.unwrap(),
        37
    );
    assert_eq!(
        node.write_many_in_session(session, vec![10, 20])
            .await
            .unwrap(),
        vec![17, 37],
        "the retry after a restart still answers the first outputs"
    );
    let next = raft_core::Session {
        sequence: 2,
        ..session
    };
    assert_eq!(
        node.write_many_in_session(next, vec![3]).await.unwrap(),
        vec![40]
    );
}

/// A one-node cluster that has written `1`, restarted with `config` and leading.
async fn written_and_leading(dir: &Path, config: Config) -> Node<Sum> {
    written(dir, 1).await;
    restarted_with(config).await
}

/// Issues `writes` all at once and returns each one's result, in the order given.
async fn concurrently(
    node: &Node<Sum>,
    writes: Vec<(Option<raft_core::Session>, u64)>,
) -> Vec<Result<u64, Error>> {
    let tasks = writes.into_iter().map(|(session, c)| {
        let node = node.clone();
        tokio::spawn(async move {
            match session {
                Some(s) => node.write_in_session(s, c).await,
                None => node.write(c).await,
            }
        })
    });
    let mut out = Vec::new();
    for r in futures_util::future::join_all(tasks).await {
        out.push(r.unwrap());
    }
    out
}

/// Checks that `(command, output)` pairs are a running total from `start`: sorted by output,
/// each output is the previous one plus its own command. Returns the final total.
fn running_total(start: u64, mut pairs: Vec<(u64, u64)>) -> u64 {
    pairs.sort_by_key(|&(_, out)| out);
    let mut total = start;
    for (c, out) in pairs {
        total += c;
        assert_eq!(out, total, "each write answers the total after itself");
    }
    total
}

/// A leader that is the only voter never waits for an answer, so openraft never refreshes its
/// quorum time: writes that queue on it must not be refused as if it were cut off from a
/// quorum, however long it has led.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_voter_leader_takes_queued_writes_however_long_it_has_led() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path()).with_combine_writes_after(1);
    let window = config.election_timeout * 2;
    let node = written_and_leading(dir.path(), config).await;
    // The rule concerned is time-based: lead past the window a cut-off leader is refused after.
    tokio::time::sleep(window * 2).await;
    let results = concurrently(&node, (1..=50).map(|c| (None, c)).collect()).await;
    let refused: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        refused.is_empty(),
        "{} of 50 refused: {refused:?}",
        refused.len()
    );
}

#[tokio::test]
async fn writes_queued_behind_a_busy_leader_share_entries_and_keep_their_own_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let node =
        written_and_leading(dir.path(), config(dir.path()).with_combine_writes_after(1)).await;
    let last = |n: &Node<Sum>| n.metrics().last_log_index.unwrap_or(0);
    let mut sessions = Vec::new();
    for _ in 0..20 {
        sessions.push(raft_core::Session {
            client_id: node.register_session().await.unwrap(),
            sequence: 1,
        });
    }

    // 200 writes at once: 20 of them in sessions, the first session's twice (a retry racing
    // its original), and one in a session that was never opened.
    let mut writes: Vec<(Option<raft_core::Session>, u64)> = (1..=180).map(|c| (None, c)).collect();
    writes.extend(sessions.iter().map(|&s| (Some(s), 1_000)));
    writes.push((Some(sessions[0]), 1_000));
    let unknown = raft_core::Session {
        client_id: 999_999,
        sequence: 1,
    };
    writes.push((Some(unknown), 7));
    let before = last(&node);
    let results = concurrently(&node, writes).await;
    let entries = last(&node) - before;
    assert!(
        entries <= 20,
        "202 concurrent writes took {entries} entries; queued writes should share them"
    );

    // Every write got its own output: together they are a running total, with the retried
    // session write counted once and both its attempts answered alike.
    let mut pairs: Vec<(u64, u64)> = (1..=180)
        .zip(&results[..180])
        .map(|(c, r)| (c, *r.as_ref().unwrap()))
        .collect();
    pairs.extend(
        results[180..200]
            .iter()
            .map(|r| (1_000, *r.as_ref().unwrap())),
    );
    assert_eq!(
        results[200].as_ref().unwrap(),
        results[180].as_ref().unwrap()
    );
    let total = running_total(1, pairs);
    assert_eq!(total, 1 + 180 * 181 / 2 + 20 * 1_000);
    match &results[201] {
        Err(Error::Rejected(ApplyError::UnknownSession {
            client_id: 999_999, ..
        })) => {}
        other => panic!("expected UnknownSession, got {other:?}"),
    }
    assert_eq!(
        node.read(Consistency::Linearizable, |s| s.0).await.unwrap(),
        total
    );
    node.shutdown().await.unwrap();

    // The combined entries replay from the log after a restart.
    let node = restarted(dir.path()).await;
    assert_eq!(
        node.read(Consistency::Linearizable, |s| s.0).await.unwrap(),
        total
    );
    // The sessions' records survived too: a retry answers the first output.
    assert_eq!(
        node.write_in_session(sessions[0], 1_000).await.unwrap(),
        *results[180].as_ref().unwrap()
    );
}

#[tokio::test]
async fn without_combining_every_write_is_its_own_entry() {
    let dir = tempfile::tempdir().unwrap();
    let node =
        written_and_leading(dir.path(), config(dir.path()).with_combine_writes_after(0)).await;
    let before = node.metrics().last_log_index.unwrap_or(0);
    let results = concurrently(&node, (1..=50).map(|c| (None, c)).collect()).await;
    assert_eq!(node.metrics().last_log_index.unwrap_or(0) - before, 50);
    let pairs = (1..=50)
        .zip(results)
        .map(|(c, r)| (c, r.unwrap()))
        .collect();
    assert_eq!(running_total(1, pairs), 1 + 50 * 51 / 2);
}

/// A shutdown whose caller gives up (a timeout around it) still stops the node, and the
/// callers still writing get errors, not panics. openraft records how its core ended from the
/// first caller that joins it; were that the cancelled shutdown, every other caller would panic.
/// And a write in flight as the node stops ends promptly, not at its request timeout.
#[test]
fn a_cancelled_shutdown_still_stops_the_node_without_panics() {
    let panics = PanicWatch::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // The cancellation point moves through the shutdown from one round to the next.
    for round in 0..200u64 {
        rt.block_on(async {
            // Longer than the writers are given to see the node refuse them three times.
            let config = Config::in_memory(1)
                .with_timing(Duration::from_millis(20), Duration::from_millis(100))
                .with_request_timeout(Duration::from_secs(60));
            let node = start_with(config).await.unwrap();
            node.initialize([(1, "node-1")]).await.unwrap();
            node.wait_for(Duration::from_secs(5), |m| m.role == Role::Leader)
                .await
                .unwrap();
            let writers: Vec<_> = (0..8)
                .map(|_| {
                    let node = node.clone();
                    tokio::spawn(async move {
                        // Until the node has refused this writer a few times.
                        let mut refused = 0;
                        while refused < 3 {
                            if node.write(1).await.is_err() {
                                refused += 1;
                            }
                        }
                    })
                })
                .collect();
            let cancel_after = Duration::from_micros(round % 13 * 20);
            let _ = tokio::time::timeout(cancel_after, node.shutdown()).await;
            for w in writers {
                tokio::time::timeout(Duration::from_secs(10), w)
                    .await
                    .unwrap_or_else(|_| {
                        panic!("round {round}: the node did not stop, or a write waited on")
                    })
                    .expect("no writer panics");
            }
        });
    }
    drop(rt);
    assert_eq!(panics.panics(), Vec::<String>::new());
}

#[tokio::test]
async fn a_request_timeout_past_what_an_instant_holds_never_ends_requests() {
    let config = Config::in_memory(1)
        .with_timing(Duration::from_millis(20), Duration::from_millis(100))
        .with_request_timeout(Duration::MAX);
    let node = start_with(config).await.unwrap();
    node.initialize([(1, "node-1")]).await.unwrap();
    node.wait_for(Duration::from_secs(5), |m| m.role == Role::Leader)
        .await
        .unwrap();
    assert_eq!(node.write(5).await.unwrap(), 5);
    assert_eq!(
        node.read(Consistency::Linearizable, |s| s.0).await.unwrap(),
        5
    );
    node.shutdown().await.unwrap();
}

/// A command that encodes as its number, and does not decode when the number is 13 (as a
/// serde form that does not round-trip would).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Picky(u64);

impl serde::Serialize for Picky {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Picky {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match u64::deserialize(d)? {
            13 => Err(serde::de::Error::custom("13 is not a command")),
            n => Ok(Picky(n)),
        }
    }
}

/// [`Sum`] of [`Picky`] commands.
#[derive(Debug, Default)]
struct PickySum(Sum);

impl raft_core::StateMachine for PickySum {
    type Command = Picky;
    type Output = u64;
    type Snapshot = u64;

    fn apply(&mut self, c: Picky) -> u64 {
        self.0.apply(c.0)
    }

    fn snapshot(&self) -> u64 {
        self.0.snapshot()
    }

    fn write_snapshot(s: u64, out: &mut dyn Write) -> io::Result<()> {
        Sum::write_snapshot(s, out)
    }

    fn restore(&mut self, input: &mut dyn io::Read) -> io::Result<()> {
        self.0.restore(input)
    }
}

/// A batch one of whose commands does not decode applies the others, and says so: the caller
/// is told the batch may have applied, never that nothing did. Before, it got the refused
/// command's `InvalidCommand`, which says nothing was applied, and could send the batch again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_a_command_that_does_not_decode_says_the_rest_applied() {
    let dir = tempfile::tempdir().unwrap();
    let router = Router::new(0);
    let node = Node::start(config(dir.path()), PickySum::default(), router.transport(1))
        .await
        .unwrap();
    router.register(node.rpc_handler());
    node.initialize([(1, "node-1")]).await.unwrap();
    node.wait_for(Duration::from_secs(10), |m| m.leader == Some(1))
        .await
        .unwrap();

    let e = node
        .write_many(vec![Picky(1), Picky(13), Picky(2)])
        .await
        .unwrap_err();
    assert!(e.may_have_applied(), "{e}");
    assert!(
        matches!(
            &e,
            Error::PartlyApplied {
                index: 1,
                error: ApplyError::InvalidCommand(_)
            }
        ),
        "{e:?}"
    );
    assert_eq!(
        node.read(Consistency::Linearizable, |s| s.0.0)
            .await
            .unwrap(),
        3
    );

    // A batch of nothing but such commands applied nothing, and says that.
    let e = node
        .write_many(vec![Picky(13), Picky(13)])
        .await
        .unwrap_err();
    assert!(!e.may_have_applied(), "{e}");
    assert_eq!(
        node.read(Consistency::Linearizable, |s| s.0.0)
            .await
            .unwrap(),
        3
    );
    node.shutdown().await.unwrap();
}
