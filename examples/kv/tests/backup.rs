//! `kv backup` during writes and `kv restore` into a fresh three-node cluster, with real `kv`
//! processes: what was acknowledged before the backup is there (with its TTL), what was written
//! after it is not, every restored node answers the same, and restore refuses a damaged file
//! and an occupied directory.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::process::Output;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use common::Ports;
use common::Proc;
use common::json_output as ok;
use common::poll;
use common::spawn;
use redis::aio::MultiplexedConnection;

/// The crc32c (Castagnoli) of `data`, as a backup's trailer holds it.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for byte in data {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Runs `kv <args>`.
fn kv(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kv"))
        .args(args)
        .output()
        .expect("run kv")
}

/// Three nodes with ids `ids`, their data in `dir/n<id>`; returns the processes, their ports
/// and the `--initial-members` list.
fn start(dir: &Path, ids: [u64; 3], ports: &[Ports; 3]) -> (Vec<Proc>, String) {
    let members: Vec<String> = ids
        .iter()
        .zip(ports)
        .map(|(id, p)| format!("{id}={}", p.raft_addr()))
        .collect();
    let members = members.join(",");
    let args = vec!["--initial-members".to_string(), members.clone()];
    let procs = ids
        .iter()
        .zip(ports)
        .map(|(id, p)| spawn(dir, *id, p, &args))
        .collect();
    (procs, members)
}

/// A connection to `port` once the node there serves reads (a leader is known).
async fn ready(port: u16, dir: &Path, ids: &[u64]) -> MultiplexedConnection {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).expect("client");
    poll("a node that serves reads", dir, ids, || async {
        let mut con = client.get_multiplexed_async_connection().await.ok()?;
        let r: redis::RedisResult<Option<String>> =
            redis::cmd("GET").arg("probe").query_async(&mut con).await;
        r.ok().map(|_| con)
    })
    .await
}

async fn set(con: &mut MultiplexedConnection, args: &[&str]) -> redis::RedisResult<()> {
    let mut cmd = redis::cmd("SET");
    for a in args {
        cmd.arg(*a);
    }
    cmd.query_async(con).await
}

/// Every key and its value, as node `con` answers (linearizable reads).
async fn contents(con: &mut MultiplexedConnection) -> BTreeMap<String, String> {
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(con)
        .await
        .expect("KEYS");
    keys.sort();
    if keys.is_empty() {
        return BTreeMap::new();
    }
    let values: Vec<Option<String>> = redis::cmd("MGET")
        .arg(&keys)
        .query_async(con)
        .await
        .expect("MGET");
    keys.into_iter()
        .zip(values)
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect()
}

/// One write of the background writer: its key, when it started and when it was acknowledged.
struct Write {
    i: u64,
    started: Instant,
    acked: Option<Instant>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_during_writes_restores_into_a_new_cluster() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ports = [Ports::new(), Ports::new(), Ports::new()];
    let (procs, _) = start(dir.path(), [1, 2, 3], &ports);
    let endpoints: Vec<String> = ports.iter().map(Ports::raft_addr).collect();
    let endpoints = endpoints.join(",");
    let mut con = ready(ports[0].resp, dir.path(), &[1, 2, 3]).await;

    for i in 0..100 {
        set(&mut con, &[&format!("before:{i}"), &format!("v{i}")])
            .await
            .expect("SET");
    }
    const LONG_TTL_MS: u64 = 600_000;
    set(&mut con, &["ttl:long", "x", "PX", &LONG_TTL_MS.to_string()])
        .await
        .expect("SET PX");
    let long_set_at = Instant::now();
    // Still alive when the backup is taken; expired by the time the restored cluster is read.
    set(&mut con, &["ttl:short", "x", "PX", "1500"])
        .await
        .expect("SET PX");
    let short_set_at = Instant::now();

    // A writer that keeps writing, through another node, while the backup is taken.
    let log: Arc<Mutex<Vec<Write>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (log, stop) = (log.clone(), stop.clone());
        let mut con = ready(ports[1].resp, dir.path(), &[1, 2, 3]).await;
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let r = set(&mut con, &[&format!("during:{i}"), &i.to_string()]).await;
                log.lock().unwrap().push(Write {
                    i,
                    started,
                    acked: r.ok().map(|_| Instant::now()),
                });
                i += 1;
            }
        })
    };
    poll("the writer is writing", dir.path(), &[1, 2, 3], || async {
        (log.lock().unwrap().len() >= 20).then_some(())
    })
    .await;

    let file = dir.path().join("backups").join("kv.backup");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    let backup_started = Instant::now();
    let out = {
        let (file, endpoints) = (file.clone(), endpoints.clone());
        tokio::task::spawn_blocking(move || {
            kv(&[
                "backup",
                "--out",
                file.to_str().unwrap(),
                "--endpoints",
                &endpoints,
                "--json",
            ])
        })
        .await
        .unwrap()
    };
    let backup_finished = Instant::now();
    let report = ok(&out);
    // The writer goes on for a while after the backup, then the cluster takes a last write.
    poll(
        "writes after the backup",
        dir.path(),
        &[1, 2, 3],
        || async {
            let log = log.lock().unwrap();
            let after = log.iter().filter(|w| w.started > backup_finished).count();
            (after >= 20).then_some(())
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    set(&mut con, &["after", "1"]).await.expect("SET after");
    drop(procs);

    let bytes = std::fs::metadata(&file).unwrap().len();
    assert_eq!(report["bytes"].as_u64(), Some(bytes), "{report}");
    assert!(report["index"].as_u64().unwrap() > 100, "{report}");
    let leftovers: Vec<_> = std::fs::read_dir(file.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "no temporary file left: {leftovers:?}");

    // Restore into three fresh directories of a new cluster, with new ids.
    let new_dir = tempfile::tempdir().expect("temp dir");
    let new_ports = [Ports::new(), Ports::new(), Ports::new()];
    let new_ids = [4, 5, 6];
    let members: Vec<String> = new_ids
        .iter()
        .zip(&new_ports)
        .map(|(id, p)| format!("{id}={}", p.raft_addr()))
        .collect();
    let members = members.join(",");
    let restore = |id: u64, data: &Path, from: &Path| {
        kv(&[
            "restore",
            "--from",
            from.to_str().unwrap(),
            "--id",
            &id.to_string(),
            "--data-dir",
            data.to_str().unwrap(),
            "--initial-members",
            &members,
            "--json",
        ])
    };
    // A damaged copy is refused, and leaves nothing behind.
    let mut damaged = std::fs::read(&file).unwrap();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x01;
    let bad = new_dir.path().join("damaged.backup");
    std::fs::write(&bad, &damaged).unwrap();
    let target = new_dir.path().join("from-damaged");
    let out = restore(4, &target, &bad);
    assert!(!out.status.success(), "a damaged backup was restored");
    assert!(!target.exists(), "nothing written for a damaged backup");
    // A backup whose checksum holds but whose store does not decode (cut short inside the
    // store's bytes, then sealed again) is refused by name, and leaves nothing behind.
    let whole = std::fs::read(&file).unwrap();
    let mut resealed = whole[..whole.len() - 4 - 40].to_vec();
    let crc = crc32c(&resealed);
    resealed.extend_from_slice(&crc.to_le_bytes());
    let cut = new_dir.path().join("resealed.backup");
    std::fs::write(&cut, &resealed).unwrap();
    let target = new_dir.path().join("from-resealed");
    let out = restore(4, &target, &cut);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an undecodable store was restored");
    assert!(
        stderr.contains(cut.to_str().unwrap()) && stderr.contains("cannot be read"),
        "{stderr}"
    );
    assert!(!target.exists(), "nothing written for an undecodable store");
    // An occupied directory is refused and left as it was.
    let occupied = new_dir.path().join("occupied");
    std::fs::create_dir_all(occupied.join("wal")).unwrap();
    std::fs::write(occupied.join("wal").join("meta"), b"someone's log").unwrap();
    let out = restore(4, &occupied, &file);
    assert!(!out.status.success(), "restored over an existing node");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not empty"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(occupied.join("wal").join("meta")).unwrap(),
        b"someone's log"
    );
    assert_eq!(std::fs::read_dir(&occupied).unwrap().count(), 1);

    let mut cluster_ids = Vec::new();
    for id in new_ids {
        let r = ok(&restore(id, &new_dir.path().join(format!("n{id}")), &file));
        assert_eq!(r["index"], report["index"]);
        cluster_ids.push(r["cluster_id"].as_str().unwrap().to_string());
    }
    assert!(cluster_ids.iter().all(|c| *c == cluster_ids[0]));
    assert_ne!(Some(cluster_ids[0].as_str()), report["cluster_id"].as_str());
    let (_procs, _) = start(new_dir.path(), new_ids, &new_ports);

    // Wall-clock time must pass the short key's expiry; the long one's is minutes away.
    tokio::time::sleep_until((short_set_at + Duration::from_millis(1600)).into()).await;
    let mut views = Vec::new();
    for p in &new_ports {
        let mut c = ready(p.resp, new_dir.path(), &new_ids).await;
        views.push(contents(&mut c).await);
        let pttl: i64 = redis::cmd("PTTL")
            .arg("ttl:long")
            .query_async(&mut c)
            .await
            .expect("PTTL");
        let expected = LONG_TTL_MS as i64 - long_set_at.elapsed().as_millis() as i64;
        assert!(
            pttl <= expected + 1_000 && pttl >= expected - 5_000,
            "PTTL {pttl}, expected about {expected}"
        );
    }
    let state = &views[0];
    assert!(
        views.iter().all(|v| v == state),
        "the restored nodes differ"
    );
    for i in 0..100 {
        assert_eq!(state.get(&format!("before:{i}")), Some(&format!("v{i}")));
    }
    assert!(state.contains_key("ttl:long"));
    assert!(!state.contains_key("ttl:short"), "an expired key came back");
    assert!(!state.contains_key("after"));
    let log = log.lock().unwrap();
    let (mut before, mut after) = (0, 0);
    for w in log.iter() {
        let key = format!("during:{}", w.i);
        if w.acked.is_some_and(|a| a < backup_started) {
            before += 1;
            assert_eq!(
                state.get(&key),
                Some(&w.i.to_string()),
                "{key} was acknowledged"
            );
        }
        if w.started > backup_finished {
            after += 1;
            assert!(
                !state.contains_key(&key),
                "{key} was written after the backup"
            );
        }
    }
    assert!(
        before >= 20 && after >= 20,
        "{before} before, {after} after"
    );
}
