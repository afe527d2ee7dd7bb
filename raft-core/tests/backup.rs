//! Backup and restore: a consistent export at a linearizable index, restored into a new
//! cluster that holds exactly that state; damaged files and occupied directories are refused;
//! neither side holds the state in memory.

use std::alloc::GlobalAlloc;
use std::alloc::Layout;
use std::alloc::System;
use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::io::Read;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::time::Duration;

use raft_core::Config;
use raft_core::Consistency;
use raft_core::Error;
use raft_core::Node;
use raft_core::Role;
use raft_core::StateMachine;
use raft_core::backup;
use raft_core::backup::BackupError;
use raft_core::testing::Cluster;
use raft_core::testing::ClusterOptions;
use raft_core::testing::Router;
use raft_core::testing::kv::KvCommand;
use raft_core::testing::kv::KvStore;

/// Counts live heap bytes and their peak, so a test can measure what an operation allocates.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The heap counters are process-wide: the tests of this file run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs `f` and returns how far the heap grew above where it was when `f` started.
async fn peak_growth<T>(f: impl std::future::Future<Output = T>) -> (T, usize) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let out = f.await;
    (out, PEAK.load(Ordering::Relaxed).saturating_sub(base))
}

fn config(id: u64, dir: &Path) -> Config {
    Config::durable(id, dir)
        .with_timing(Duration::from_millis(30), Duration::from_millis(250))
        .with_request_timeout(Duration::from_secs(5))
}

/// Starts nodes from restored (or fresh) data directories on a new router.
async fn start_nodes<S: StateMachine + Default>(
    router: &Router,
    dirs: &BTreeMap<u64, std::path::PathBuf>,
) -> BTreeMap<u64, Node<S>> {
    let mut nodes = BTreeMap::new();
    for (id, dir) in dirs {
        let node = Node::start(config(*id, dir), S::default(), router.transport(*id))
            .await
            .unwrap();
        router.register(node.rpc_handler());
        nodes.insert(*id, node);
    }
    nodes
}

async fn leader_of<S: StateMachine>(nodes: &BTreeMap<u64, Node<S>>) -> Node<S> {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            for n in nodes.values() {
                if n.role() == Role::Leader {
                    return n.clone();
                }
            }
            let any = nodes.values().next().unwrap();
            any.wait_for(Duration::from_millis(500), |m| m.leader.is_some())
                .await
                .ok();
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("a leader within 20 s")
}

fn members(ids: &[u64]) -> BTreeMap<u64, String> {
    ids.iter().map(|i| (*i, format!("node-{i}"))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_during_writes_restores_into_a_new_cluster_with_exactly_its_state() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(3, ClusterOptions::default(), |_| KvStore::default())
        .await
        .unwrap();
    for i in 0..50 {
        cluster
            .write(KvCommand::Put(format!("before{i}"), format!("v{i}")))
            .await
            .unwrap();
    }
    let leader = cluster
        .node(cluster.wait_for_leader().await.unwrap())
        .unwrap();

    // A writer keeps writing while the backup is taken.
    let stop = Arc::new(AtomicBool::new(false));
    let (acked, mut acks) = tokio::sync::watch::channel(0u64);
    let writer = {
        let (leader, stop) = (leader.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                leader
                    .write(KvCommand::Put(format!("during{i}"), i.to_string()))
                    .await
                    .unwrap();
                i += 1;
                acked.send_replace(i);
            }
        })
    };
    tokio::time::timeout(Duration::from_secs(10), acks.wait_for(|n| *n >= 10))
        .await
        .expect("writes within 10 s")
        .unwrap();
    let acked_before = *acks.borrow();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup.rksnap");
    // Exported by a follower, at the leader's read index.
    let follower = cluster
        .running()
        .into_iter()
        .find(|id| *id != leader.id())
        .unwrap();
    let at = leader.read_index(Consistency::Linearizable).await.unwrap();
    let follower = cluster.node(follower).unwrap();
    let (info, out) = follower
        .export_snapshot_at(at, io::BufWriter::new(fs::File::create(&file).unwrap()))
        .await
        .unwrap();
    out.into_inner().unwrap().sync_all().unwrap();
    let acked_during = *acks.borrow();
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    for i in 0..20 {
        cluster
            .write(KvCommand::Put(format!("after{i}"), "x".into()))
            .await
            .unwrap();
    }
    // A client of the source cluster opens a session after the backup, and writes in it.
    let late_session = leader.register_session().await.unwrap();
    let in_late_session = |sequence| raft_core::Session {
        client_id: late_session,
        sequence,
    };
    leader
        .write_in_session(
            in_late_session(1),
            KvCommand::Put("late".into(), "1".into()),
        )
        .await
        .unwrap();

    assert!(
        info.index >= at.index,
        "{info:?} covers the read index {at:?}"
    );
    assert_eq!(info.cluster, follower.cluster_id());
    assert_eq!(info.bytes, fs::metadata(&file).unwrap().len());
    assert_eq!(backup::inspect(&file).unwrap(), info);

    // Restore into three fresh directories of a new cluster with other ids.
    let new_members = members(&[11, 12, 13]);
    let restore_root = tempfile::tempdir().unwrap();
    let dirs: BTreeMap<u64, _> = new_members
        .keys()
        .map(|id| (*id, restore_root.path().join(format!("n{id}"))))
        .collect();
    let mut ids = Vec::new();
    for (id, d) in &dirs {
        let r = backup::restore_data_dir(&file, d, *id, &new_members, None).unwrap();
        assert_eq!(r.backup, info);
        ids.push(r.cluster);
    }
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "one id: {ids:?}");
    assert_ne!(Some(ids[0]), info.cluster, "a new cluster gets a new id");
    cluster.shutdown().await.unwrap();

    let router = Router::new(1);
    let nodes = start_nodes::<KvStore>(&router, &dirs).await;
    for n in nodes.values() {
        assert!(n.is_initialized().await.unwrap());
        assert_eq!(n.cluster_id(), Some(ids[0]));
    }
    let new_leader = leader_of(&nodes).await;
    assert!(matches!(
        new_leader.initialize(new_members.clone()).await,
        Err(Error::AlreadyInitialized)
    ));
    let state = new_leader
        .read(Consistency::Linearizable, |s| s.0.clone())
        .await
        .unwrap();
    for i in 0..50 {
        assert_eq!(state.get(&format!("before{i}")), Some(&format!("v{i}")));
    }
    for i in 0..acked_before {
        assert_eq!(state.get(&format!("during{i}")), Some(&i.to_string()));
    }
    assert!(state.keys().all(|k| !k.starts_with("after")), "{state:?}");
    // Writes acknowledged only after the backup's read index may or may not be in it; none
    // acknowledged after the export returned can be beyond what it covers.
    let during = state.keys().filter(|k| k.starts_with("during")).count() as u64;
    assert!(
        during >= acked_before && during <= acked_during + 1,
        "{during} writes of the writer"
    );

    // The new cluster's sessions never get an id the source cluster gave after the backup: a
    // client still holding such a session (its cluster restored at the same addresses) is told
    // its session is unknown, rather than writing in another client's.
    // Sessions are opened until the log passes the stale session's id (one at least).
    let mut opened = Vec::new();
    loop {
        opened.push(new_leader.register_session().await.unwrap());
        if new_leader.metrics().last_log_index.unwrap_or(0) > late_session {
            break;
        }
        assert!(opened.len() < 1_000, "the log does not move");
    }
    assert!(
        !opened.contains(&late_session),
        "the restored cluster gave out session {late_session} again"
    );
    assert!(
        opened
            .iter()
            .all(|id| *id > info.index + backup::RESTORE_INDEX_GAP)
    );
    let stale = new_leader
        .write_in_session(
            in_late_session(2),
            KvCommand::Put("late".into(), "2".into()),
        )
        .await;
    assert!(
        matches!(
            stale,
            Err(Error::Rejected(
                raft_core::ApplyError::UnknownSession { .. }
            ))
        ),
        "{stale:?}"
    );

    // The new cluster takes writes after the backup's index, and every node agrees.
    new_leader
        .write(KvCommand::Put("new".into(), "1".into()))
        .await
        .unwrap();
    // The write's entry is in the leader's log (its applied index may not show it yet).
    let applied = new_leader.metrics().last_log_index;
    assert!(applied > Some(info.index));
    for n in nodes.values() {
        n.wait_for(Duration::from_secs(10), |m| m.applied_index >= applied)
            .await
            .unwrap();
        let local = n.read(Consistency::Local, |s| s.0.clone()).await.unwrap();
        let mut expected = state.clone();
        expected.insert("new".into(), "1".into());
        assert_eq!(local, expected, "node {}", n.id());
    }

    // A node added later gets the state from the leader's snapshot.
    let late_dir = restore_root.path().join("n14");
    let late = start_nodes::<KvStore>(&router, &BTreeMap::from([(14, late_dir)])).await;
    new_leader.add_learner(14, "node-14").await.unwrap();
    let late = &late[&14];
    late.wait_for(Duration::from_secs(10), |m| m.applied_index >= applied)
        .await
        .unwrap();
    assert_eq!(
        late.read(Consistency::Local, |s| s.0.len()).await.unwrap(),
        state.len() + 1
    );
    assert_eq!(late.cluster_id(), Some(ids[0]));
    for n in nodes.values().chain([late]) {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_refuses_damage_an_occupied_directory_and_strangers() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(1, ClusterOptions::default(), |_| KvStore::default())
        .await
        .unwrap();
    cluster
        .write(KvCommand::Put("k".into(), "v".repeat(5000)))
        .await
        .unwrap();
    let (info, bytes) = cluster
        .node(1)
        .unwrap()
        .export_snapshot(Vec::new())
        .await
        .unwrap();
    assert_eq!(info.bytes, bytes.len() as u64);

    // One backup at a time per node: a second one is refused while the first is written.
    let node = cluster.node(1).unwrap();
    let (entered_tx, mut entered) = tokio::sync::mpsc::unbounded_channel();
    let (release, gate) = std::sync::mpsc::channel::<()>();
    let first = tokio::spawn({
        let node = node.clone();
        async move {
            node.export_snapshot(Gated {
                entered: Some(entered_tx),
                gate,
            })
            .await
            .map(|(info, _)| info)
        }
    });
    entered
        .recv()
        .await
        .expect("the first backup started writing");
    assert!(matches!(
        node.export_snapshot(Vec::new()).await,
        Err(Error::Backup(BackupError::Busy))
    ));
    release.send(()).unwrap();
    assert_eq!(first.await.unwrap().unwrap().bytes, info.bytes);
    node.export_snapshot(Vec::new()).await.unwrap();
    cluster.shutdown().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good");
    fs::write(&good, &bytes).unwrap();
    let m = members(&[1, 2, 3]);

    // Every byte flipped in turn (a sample of positions) is refused, and nothing is written.
    for pos in (0..bytes.len()).step_by(bytes.len() / 37 + 1) {
        let mut bad = bytes.clone();
        bad[pos] ^= 0x40;
        let path = dir.path().join("bad");
        fs::write(&path, &bad).unwrap();
        let target = dir.path().join(format!("flip{pos}"));
        let err = backup::restore_data_dir(&path, &target, 1, &m, None).unwrap_err();
        assert!(matches!(err, BackupError::Invalid(_)), "byte {pos}: {err}");
        assert!(!target.exists(), "byte {pos}: nothing written");
    }
    let truncated = dir.path().join("short");
    fs::write(&truncated, &bytes[..bytes.len() - 1]).unwrap();
    assert!(matches!(
        backup::inspect(&truncated),
        Err(BackupError::Invalid(_))
    ));

    // An occupied directory is left exactly as it was.
    let occupied = dir.path().join("occupied");
    fs::create_dir(&occupied).unwrap();
    fs::write(occupied.join("keep"), b"precious").unwrap();
    let err = backup::restore_data_dir(&good, &occupied, 1, &m, None).unwrap_err();
    assert!(matches!(err, BackupError::NotEmpty { .. }), "{err}");
    assert_eq!(fs::read_dir(&occupied).unwrap().count(), 1);
    assert_eq!(fs::read(occupied.join("keep")).unwrap(), b"precious");

    // A node that is not one of the members.
    let err = backup::restore_data_dir(&good, &dir.path().join("x"), 9, &m, None).unwrap_err();
    assert!(
        matches!(err, BackupError::NotAMember { id: 9, .. }),
        "{err}"
    );

    // An empty directory (a fresh volume with lost+found) is fine; an explicit id is used, but
    // not the id of the cluster the backup came from, which would let the two talk.
    let fresh = dir.path().join("fresh");
    fs::create_dir_all(fresh.join("lost+found")).unwrap();
    let source = backup::inspect(&good)
        .unwrap()
        .cluster
        .expect("the source has an id");
    let err = backup::restore_data_dir(&good, &fresh, 2, &m, Some(source)).unwrap_err();
    assert!(
        matches!(err, BackupError::SameCluster { cluster } if cluster == source),
        "{err}"
    );
    assert_eq!(fs::read_dir(&fresh).unwrap().count(), 1, "nothing written");
    let id = raft_core::ClusterId::random();
    let r = backup::restore_data_dir(&good, &fresh, 2, &m, Some(id)).unwrap();
    assert_eq!(r.cluster, id);
    // Restoring twice into the same directory is refused.
    assert!(matches!(
        backup::restore_data_dir(&good, &fresh, 2, &m, None),
        Err(BackupError::NotEmpty { .. })
    ));
}

/// A writer that says when it is first written to, then waits to be released.
struct Gated {
    entered: Option<tokio::sync::mpsc::UnboundedSender<()>>,
    gate: std::sync::mpsc::Receiver<()>,
}

impl Write for Gated {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(tx) = self.entered.take() {
            let _ = tx.send(());
            self.gate.recv().map_err(io::Error::other)?;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A state machine whose state is a size: its snapshot is generated, never held, so any
/// buffering of a backup shows as heap growth.
#[derive(Default)]
struct Generated {
    chunks: u64,
    restored_bytes: u64,
}

const CHUNK: usize = 64 << 10;

fn pattern(i: u64) -> Vec<u8> {
    (0..CHUNK).map(|j| (i as usize * 31 + j) as u8).collect()
}

impl StateMachine for Generated {
    type Command = u64;
    type Output = u64;
    type Snapshot = u64;

    fn apply(&mut self, c: u64) -> u64 {
        self.chunks = c;
        c
    }
    fn snapshot(&self) -> u64 {
        self.chunks
    }
    fn write_snapshot(chunks: u64, out: &mut dyn Write) -> io::Result<()> {
        out.write_all(&chunks.to_le_bytes())?;
        for i in 0..chunks {
            out.write_all(&pattern(i))?;
        }
        Ok(())
    }
    fn restore(&mut self, input: &mut dyn Read) -> io::Result<()> {
        let mut n = [0u8; 8];
        input.read_exact(&mut n)?;
        let chunks = u64::from_le_bytes(n);
        let mut buf = vec![0u8; CHUNK];
        for i in 0..chunks {
            input.read_exact(&mut buf)?;
            if buf != pattern(i) {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "chunk differs"));
            }
        }
        self.chunks = chunks;
        self.restored_bytes = 8 + chunks * CHUNK as u64;
        Ok(())
    }
}

/// Counts bytes and the largest single write.
#[derive(Default)]
struct Sink {
    bytes: u64,
    largest: usize,
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.bytes += buf.len() as u64;
        self.largest = self.largest.max(buf.len());
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_and_restore_stream_a_large_state_without_holding_it() {
    let _serial = SERIAL.lock().await;
    const CHUNKS: u64 = 512; // 32 MiB of state
    let dir = tempfile::tempdir().unwrap();
    let router = Router::new(2);
    let dirs = BTreeMap::from([(1, dir.path().join("n1"))]);
    let nodes = start_nodes::<Generated>(&router, &dirs).await;
    let node = &nodes[&1];
    node.initialize([(1, "node-1")]).await.unwrap();
    leader_of(&nodes).await;
    node.write(CHUNKS).await.unwrap();

    let (exported, growth) = peak_growth(node.export_snapshot(Sink::default())).await;
    let (info, sink) = exported.unwrap();
    let state = 8 + CHUNKS * CHUNK as u64;
    assert!(sink.bytes > state, "{} bytes exported", sink.bytes);
    assert_eq!(info.bytes, sink.bytes);
    assert!(growth < 4 << 20, "export grew the heap by {growth} bytes");
    assert!(
        sink.largest <= CHUNK,
        "writes are passed through, not gathered"
    );

    // To a file, then restored: the restore copies without buffering either.
    let file = dir.path().join("big.rksnap");
    let (_, out) = node
        .export_snapshot(io::BufWriter::new(fs::File::create(&file).unwrap()))
        .await
        .unwrap();
    out.into_inner().unwrap().sync_all().unwrap();
    node.shutdown().await.unwrap();
    let m = members(&[5]);
    let target = dir.path().join("n5");
    let (restored, growth) =
        peak_growth(async { backup::restore_data_dir(&file, &target, 5, &m, None) }).await;
    restored.unwrap();
    assert!(growth < 4 << 20, "restore grew the heap by {growth} bytes");

    let router = Router::new(3);
    let nodes = start_nodes::<Generated>(&router, &BTreeMap::from([(5, target)])).await;
    let leader = leader_of(&nodes).await;
    let (chunks, restored_bytes) = leader
        .read(Consistency::Linearizable, |s| (s.chunks, s.restored_bytes))
        .await
        .unwrap();
    assert_eq!((chunks, restored_bytes), (CHUNKS, state));
    leader.shutdown().await.unwrap();
}

/// A small backup of a one-node cluster, written to `dir/good`: its path and bytes.
async fn small_backup(dir: &Path) -> (std::path::PathBuf, Vec<u8>) {
    let cluster = Cluster::start(1, ClusterOptions::default(), |_| KvStore::default())
        .await
        .unwrap();
    for i in 0..20 {
        cluster
            .write(KvCommand::Put(format!("k{i}"), "v".repeat(500)))
            .await
            .unwrap();
    }
    let (_, bytes) = cluster
        .node(1)
        .unwrap()
        .export_snapshot(Vec::new())
        .await
        .unwrap();
    cluster.shutdown().await.unwrap();
    let path = dir.join("good");
    fs::write(&path, &bytes).unwrap();
    (path, bytes)
}

/// `bytes` with the last `cut` bytes before the trailer removed and the checksum made right
/// again: a file whose checksum holds but whose state does not decode.
fn resealed_short(bytes: &[u8], cut: usize) -> Vec<u8> {
    let mut out = bytes[..bytes.len() - 4 - cut].to_vec();
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checked_restore_refuses_state_the_machine_cannot_read_and_writes_nothing() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (good, bytes) = small_backup(dir.path()).await;
    let m = members(&[1]);
    for cut in [1, 7, 300] {
        let bad = dir.path().join(format!("short{cut}"));
        fs::write(&bad, resealed_short(&bytes, cut)).unwrap();
        // The checksum holds: the file as such is a valid backup.
        backup::inspect(&bad).unwrap();
        let target = dir.path().join(format!("t{cut}"));
        let err =
            backup::restore_data_dir_checked::<KvStore>(&bad, &target, 1, &m, None).unwrap_err();
        assert!(
            matches!(&err, BackupError::Unreadable { path, .. } if path == &bad),
            "cut {cut}: {err}"
        );
        assert!(
            err.to_string().contains(&bad.display().to_string()),
            "{err}"
        );
        assert!(!target.exists(), "cut {cut}: nothing written");
    }
    let target = dir.path().join("ok");
    backup::restore_data_dir_checked::<KvStore>(&good, &target, 1, &m, None).unwrap();
    assert_complete(&target);
}

/// The backup a [`Tampering`] check damages once it has read it.
static TAMPER: std::sync::Mutex<Option<std::path::PathBuf>> = std::sync::Mutex::new(None);

/// A state machine whose check flips a byte of the backup's state in the file after reading
/// it: the file changes between the restore's reads, as on a flaky disk.
#[derive(Default)]
struct Tampering;

impl StateMachine for Tampering {
    type Command = ();
    type Output = ();
    type Snapshot = ();
    fn apply(&mut self, _: ()) {}
    fn snapshot(&self) {}
    fn write_snapshot(_: (), _: &mut dyn Write) -> io::Result<()> {
        Ok(())
    }
    fn restore(&mut self, _: &mut dyn Read) -> io::Result<()> {
        Ok(())
    }
    fn check_snapshot(input: &mut dyn Read) -> io::Result<()> {
        io::copy(input, &mut io::sink())?;
        if let Some(path) = TAMPER.lock().unwrap().take() {
            let mut bytes = fs::read(&path)?;
            let at = bytes.len() - 10;
            bytes[at] ^= 0x01;
            fs::write(&path, &bytes)?;
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_that_changes_while_it_is_restored_is_not_sealed_under_a_new_checksum() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (good, _) = small_backup(dir.path()).await;
    let m = members(&[1]);
    *TAMPER.lock().unwrap() = Some(good.clone());
    // Under two parent directories the restore creates, and removes again.
    let target = dir.path().join("x/y/t");
    let err =
        backup::restore_data_dir_checked::<Tampering>(&good, &target, 1, &m, None).unwrap_err();
    assert!(
        matches!(&err, BackupError::Changed { path } if path == &good),
        "{err}"
    );
    assert!(!dir.path().join("x").exists(), "nothing written");
    assert!(TAMPER.lock().unwrap().is_none(), "the check ran");
}

/// Fails unless `dir` is a complete restored data directory: one verified snapshot, the log's
/// meta and the cluster id, and nothing else (an empty `lost+found` aside).
fn assert_complete(dir: &Path) {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lost+found")
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["cluster-id", "snapshots", "wal"],
        "{}",
        dir.display()
    );
    let snaps: Vec<_> = fs::read_dir(dir.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    backup::inspect(&snaps[0]).unwrap();
    assert!(dir.join("wal/meta").is_file());
}

/// The names in `dir`, `lost+found` aside.
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lost+found")
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_restores_into_one_directory_at_once_leave_one_complete_restore() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (good, _) = small_backup(dir.path()).await;
    let m = members(&[1, 2, 3]);
    let root = dir.path().join("race");
    fs::create_dir(&root).unwrap();
    let mut restored = Vec::new();
    for trial in 0..30 {
        // A missing target, and an existing empty one (a mount point).
        let existing = trial % 2 == 1;
        let target = root.join(format!("t{trial}"));
        if existing {
            fs::create_dir_all(target.join("lost+found")).unwrap();
        }
        let start = std::sync::Barrier::new(2);
        let results: Vec<Result<backup::Restored, BackupError>> = std::thread::scope(|s| {
            let runs: Vec<_> = (0..2)
                .map(|_| {
                    s.spawn(|| {
                        start.wait();
                        backup::restore_data_dir(&good, &target, 1, &m, None)
                    })
                })
                .collect();
            runs.into_iter().map(|r| r.join().unwrap()).collect()
        });
        let ok = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(ok, 1, "trial {trial}: exactly one succeeds: {results:?}");
        for r in &results {
            if let Err(e) = r {
                assert!(
                    matches!(
                        e,
                        BackupError::NotEmpty { .. } | BackupError::RestoreRunning { .. }
                    ),
                    "trial {trial}: {e}"
                );
            }
        }
        // The winner's directory is complete, and the loser left nothing behind.
        assert_complete(&target);
        let beside = names_in(&root);
        assert!(
            beside.len() == trial + 1 && beside.iter().all(|n| !n.contains("restore")),
            "trial {trial}: only the targets are in the parent: {beside:?}"
        );
        restored.push(target);
    }

    // A restored directory opens as an initialised node.
    let router = Router::new(4);
    let nodes = start_nodes::<KvStore>(&router, &BTreeMap::from([(1, restored[0].clone())])).await;
    assert!(nodes[&1].is_initialized().await.unwrap());
    nodes[&1].shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_an_interrupted_restore_left_is_removed_or_named_never_restored_over() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (good, _) = small_backup(dir.path()).await;
    let m = members(&[1]);

    // Into an existing directory, stopped before it moved anything in: only its work
    // directory is there, and the next restore clears it.
    let mount = dir.path().join("mount");
    fs::create_dir_all(mount.join("lost+found")).unwrap();
    fs::create_dir_all(mount.join(".restore-4242-0/snapshots")).unwrap();
    fs::write(mount.join(".restore-4242-0/snapshots/build-1.tmp"), b"half").unwrap();
    backup::restore_data_dir(&good, &mount, 1, &m, None).unwrap();
    assert_complete(&mount);

    // Stopped while moving its entries in: the next restore refuses, says why, changes nothing.
    let torn = dir.path().join("torn");
    fs::create_dir_all(torn.join(".restore-4242-0/wal")).unwrap();
    fs::create_dir_all(torn.join("snapshots")).unwrap();
    let err = backup::restore_data_dir(&good, &torn, 1, &m, None).unwrap_err();
    assert!(
        matches!(&err, BackupError::Interrupted { dir, leftover }
            if dir == &torn && leftover == ".restore-4242-0"),
        "{err}"
    );
    assert!(err.to_string().contains("interrupted restore"), "{err}");
    assert_eq!(names_in(&torn), [".restore-4242-0", "snapshots"]);

    // Into a missing directory: its work directory beside the target is removed by the next
    // restore of that target; one a running restore holds is not.
    let parent = dir.path().join("p");
    fs::create_dir(&parent).unwrap();
    let stale = parent.join("n1.restore-4242-0");
    fs::create_dir_all(stale.join("snapshots")).unwrap();
    let live = parent.join("n1.restore-4242-1");
    fs::create_dir_all(live.join("snapshots")).unwrap();
    let held = fs::File::open(&live).unwrap();
    rustix::fs::flock(&held, rustix::fs::FlockOperation::LockExclusive).unwrap();
    let other = parent.join("n10.restore-4242-0");
    fs::create_dir_all(other.join("snapshots")).unwrap();
    backup::restore_data_dir(&good, &parent.join("n1"), 1, &m, None).unwrap();
    assert_complete(&parent.join("n1"));
    assert_eq!(
        names_in(&parent),
        ["n1", "n1.restore-4242-1", "n10.restore-4242-0"]
    );
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_does_not_start_on_a_directory_a_restore_is_filling_or_left_half_built() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (good, _) = small_backup(dir.path()).await;
    let router = Router::new(4);
    let start = |data: &Path| Node::start(config(1, data), KvStore::default(), router.transport(1));

    // A restore into an existing directory holds the directory's lock while it fills it.
    let mount = dir.path().join("mount");
    fs::create_dir_all(mount.join(".restore-4242-0/snapshots")).unwrap();
    let held = fs::File::open(&mount).unwrap();
    rustix::fs::flock(&held, rustix::fs::FlockOperation::LockExclusive).unwrap();
    let err = start(&mount).await.unwrap_err();
    assert!(
        matches!(&err, Error::Backup(BackupError::RestoreRunning { dir }) if dir == &mount),
        "{err}"
    );
    assert!(!err.may_have_applied());
    assert_eq!(names_in(&mount), [".restore-4242-0"], "nothing created");

    // Stopped while moving its entries in: the node refuses what it left.
    drop(held);
    fs::create_dir_all(mount.join("snapshots")).unwrap();
    let err = start(&mount).await.unwrap_err();
    assert!(
        matches!(&err, Error::Backup(BackupError::Interrupted { dir, leftover })
            if dir == &mount && leftover == ".restore-4242-0"),
        "{err}"
    );
    assert_eq!(names_in(&mount), [".restore-4242-0", "snapshots"]);

    // Emptied and restored again, it starts, and a restore into it is refused as occupied.
    fs::remove_dir_all(mount.join(".restore-4242-0")).unwrap();
    fs::remove_dir_all(mount.join("snapshots")).unwrap();
    backup::restore_data_dir(&good, &mount, 1, &members(&[1]), None).unwrap();
    let node = start(&mount).await.unwrap();
    assert!(node.is_initialized().await.unwrap());
    let err = backup::restore_data_dir(&good, &mount, 1, &members(&[1]), None).unwrap_err();
    assert!(matches!(err, BackupError::NotEmpty { .. }), "{err}");
    node.shutdown().await.unwrap();
}
