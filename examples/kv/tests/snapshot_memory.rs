//! A large store's snapshot does not double a node's memory: a `kv node` process restarted on a
//! snapshot of S bytes of values peaks (VmHWM) at about its empty size plus S, not plus 2S.
//!
//! The state is 192 MiB by default; `KV_SNAPSHOT_MEMORY_MIB=400` (for example) runs it larger.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use common::Ports;
use common::Proc;
use common::spawn;
use common::status_bytes;
use redis::aio::MultiplexedConnection;

const MIB: u64 = 1 << 20;
/// Each value's size: large values make the store's size what the values weigh.
const VALUE: usize = MIB as usize;
/// What a restore may use beyond the restored state: buffers, the log's tail, allocator slack.
const SLACK: u64 = 64 * MIB;
/// The node snapshots after this many writes.
const SNAPSHOT_EVERY: u64 = 1_500;
/// Entries a snapshot leaves in the log (`Config::keep_after_snapshot`).
const KEEP: u64 = 1_000;

async fn connect(dir: &Path, port: u16) -> MultiplexedConnection {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).expect("client");
    common::poll("the node accepts clients", dir, &[1], || async {
        client.get_multiplexed_async_connection().await.ok()
    })
    .await
}

async fn info(con: &mut MultiplexedConnection) -> BTreeMap<String, u64> {
    let text: String = redis::cmd("INFO")
        .arg("replication")
        .query_async(con)
        .await
        .expect("INFO");
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .filter_map(|(k, v)| Some((k.to_string(), v.trim().parse().ok()?)))
        .collect()
}

fn value(i: u64, round: u8) -> Vec<u8> {
    let mut v = vec![round; VALUE];
    v[..8].copy_from_slice(&i.to_le_bytes());
    v
}

fn start(dir: &Path, ports: &Ports) -> Proc {
    spawn(
        dir,
        1,
        ports,
        &[
            "--initial-members".into(),
            format!("1={}", ports.raft_addr()),
            // Small segments: recovery reads one at a time, and purges free them soon.
            "--wal-segment-size".into(),
            "8MiB".into(),
            "--snapshot-every".into(),
            SNAPSHOT_EVERY.to_string(),
            // One entry per pipelined SET: the test counts entries to reach a snapshot.
            "--pipeline-batch".into(),
            "1".into(),
        ],
    )
}

/// Waits until the node leads and has applied at least `index`.
async fn ready(dir: &Path, con: &mut MultiplexedConnection, index: u64) {
    common::poll("the node leads and has applied", dir, &[1], || {
        let mut con = con.clone();
        async move {
            let i = info(&mut con).await;
            (i.get("raft_applied_index").copied().unwrap_or(0) >= index
                && redis::cmd("SET")
                    .arg("probe")
                    .arg("x")
                    .query_async::<String>(&mut con)
                    .await
                    .is_ok())
            .then_some(())
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restoring_a_large_snapshot_costs_the_state_once() {
    let mib: u64 = std::env::var("KV_SNAPSHOT_MEMORY_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(192);
    let keys = mib; // one MiB each
    let state = keys * MIB;
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let ports = Ports::new();

    // The size of an empty node that has served a few writes.
    let mut node = start(dir, &ports);
    let mut con = connect(dir, ports.resp).await;
    ready(dir, &mut con, 0).await;
    let empty_peak = status_bytes(node.0.id(), "VmHWM");

    let t = Instant::now();
    for i in 0..keys {
        let _: String = redis::cmd("SET")
            .arg(format!("k{i}"))
            .arg(value(i, 1))
            .query_async(&mut con)
            .await
            .expect("SET");
    }
    // Small writes until a snapshot (by count) covers the load with more than the kept 1000
    // entries after it: the log then no longer holds the large values, so what the restarted
    // node holds beyond its empty size is the restored state, not a log cache.
    let loaded = info(&mut con).await["raft_applied_index"];
    let mut small = 0u64;
    while info(&mut con).await["raft_snapshot_index"] <= loaded + KEEP {
        let mut pipe = redis::pipe();
        for _ in 0..100 {
            small += 1;
            pipe.cmd("SET").arg("probe").arg(small).ignore();
        }
        let () = pipe.query_async(&mut con).await.expect("small writes");
        assert!(
            small < 20 * SNAPSHOT_EVERY,
            "no snapshot after {small} small writes"
        );
    }
    let last = info(&mut con).await["raft_applied_index"];
    let snap_dir = dir.join("n1/snapshots");
    let build_peak = status_bytes(node.0.id(), "VmHWM");
    let snap_bytes: u64 = std::fs::read_dir(&snap_dir)
        .expect("snapshots dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "snap"))
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .max()
        .unwrap_or(0);
    assert!(snap_bytes >= state, "snapshot of {snap_bytes} bytes");
    let loaded_in = t.elapsed();

    // kill -9 and restart: the node restores the snapshot, then replays the log's short tail.
    drop(con);
    drop(node);
    let t = Instant::now();
    node = start(dir, &ports);
    let mut con = connect(dir, ports.resp).await;
    ready(dir, &mut con, last).await;
    let restored_in = t.elapsed();
    let peak = status_bytes(node.0.id(), "VmHWM");
    let rss = status_bytes(node.0.id(), "VmRSS");

    // The state really came back.
    let size: u64 = redis::cmd("DBSIZE")
        .query_async(&mut con)
        .await
        .expect("DBSIZE");
    assert_eq!(size, keys + 1, "every key and the probe");
    for i in [0, keys / 2, keys - 1] {
        let v: Vec<u8> = redis::cmd("GET")
            .arg(format!("k{i}"))
            .query_async(&mut con)
            .await
            .expect("GET");
        assert_eq!(v.len(), VALUE);
        assert_eq!(v[..8], i.to_le_bytes());
    }

    let growth = peak.saturating_sub(empty_peak);
    eprintln!(
        "state {} MiB, snapshot {} MiB, {small} small writes; empty node peak {} MiB; while loading and snapshotting \
         peak {} MiB ({loaded_in:?}); after the restore peak {} MiB, resident {} MiB, growth {} \
         MiB ({restored_in:?})",
        state / MIB,
        snap_bytes / MIB,
        empty_peak / MIB,
        build_peak / MIB,
        peak / MIB,
        rss / MIB,
        growth / MIB,
    );
    assert!(
        growth <= state + SLACK,
        "restoring {} MiB grew the node's peak by {} MiB (limit {} MiB)",
        state / MIB,
        growth / MIB,
        (state + SLACK) / MIB
    );
    // And the bound is not vacuous: the state itself is resident.
    assert!(rss >= state, "resident {} MiB", rss / MIB);

    // A fresh node joins: the leader's log no longer reaches back, so it streams its snapshot,
    // which the new node receives into a file and installs. Neither side holds it in memory.
    let leader_before = status_bytes(node.0.id(), "VmHWM");
    let p2 = Ports::new();
    let t = Instant::now();
    let joiner = spawn(dir, 2, &p2, &["--join".to_string(), ports.raft_addr()]);
    let mut con2 = connect(dir, p2.resp).await;
    common::poll(
        "node 2 installs the snapshot and catches up",
        dir,
        &[1, 2],
        || {
            let mut con2 = con2.clone();
            async move {
                let i = info(&mut con2).await;
                (i.get("raft_applied_index").copied().unwrap_or(0) >= last).then_some(())
            }
        },
    )
    .await;
    let installed_in = t.elapsed();
    let leader_growth = status_bytes(node.0.id(), "VmHWM").saturating_sub(leader_before);
    let joiner_growth = status_bytes(joiner.0.id(), "VmHWM").saturating_sub(empty_peak);
    let received: u64 = redis::cmd("DBSIZE")
        .query_async(&mut con2)
        .await
        .expect("DBSIZE on node 2");
    eprintln!(
        "join: node 2 peak grew by {} MiB, the leader's by {} MiB ({installed_in:?})",
        joiner_growth / MIB,
        leader_growth / MIB
    );
    assert_eq!(received, keys + 1);
    assert!(
        joiner_growth <= state + SLACK,
        "installing {} MiB grew node 2's peak by {} MiB",
        state / MIB,
        joiner_growth / MIB
    );
    assert!(
        leader_growth <= SLACK,
        "sending the snapshot grew the leader's peak by {} MiB",
        leader_growth / MIB
    );
}
