//! Real `kv` processes — three nodes on loopback with their own data directories — driven with
//! the `redis` crate: every command against a follower and the leader, `kill -9` of the leader,
//! restart, convergence, and clients that misbehave.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::io::Write;
use std::net::TcpListener;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use common::free_port;
use common::q;
use common::q_err;
use redis::Value;
use redis::aio::MultiplexedConnection;

const WAIT: Duration = Duration::from_secs(30);

struct NodeProc {
    id: u64,
    resp: u16,
    raft: u16,
    /// The metrics listener's port, if the node serves one.
    metrics: Option<u16>,
    dir: PathBuf,
    child: Option<Child>,
}

/// Three `kv node` processes; killed when dropped.
struct Procs {
    tmp: tempfile::TempDir,
    nodes: BTreeMap<u64, NodeProc>,
    members: String,
    /// Flags every node is started with, after the usual ones.
    extra: Vec<String>,
    /// File systems mounted on the data directories, unmounted when dropped.
    mounts: Vec<PathBuf>,
}

impl Procs {
    fn start() -> Procs {
        Procs::start_with(&[], None, false).expect("no mounts to fail")
    }

    /// Like [`Procs::start`], with `extra` flags for every node, if `tmpfs` names a size each
    /// data directory on its own tmpfs of that size, and with `metrics` a metrics listener per
    /// node. `None` if mounting is not permitted here.
    fn start_with(extra: &[&str], tmpfs: Option<&str>, metrics: bool) -> Option<Procs> {
        let tmp = tempfile::tempdir().expect("temp dir");
        let mut nodes = BTreeMap::new();
        for id in 1..=3 {
            nodes.insert(
                id,
                NodeProc {
                    id,
                    resp: free_port(),
                    raft: free_port(),
                    metrics: metrics.then(free_port),
                    dir: tmp.path().join(format!("n{id}")),
                    child: None,
                },
            );
        }
        let members = nodes
            .values()
            .map(|n| format!("{}=127.0.0.1:{}", n.id, n.raft))
            .collect::<Vec<_>>()
            .join(",");
        let mut p = Procs {
            tmp,
            nodes,
            members,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            mounts: Vec::new(),
        };
        if let Some(size) = tmpfs {
            for n in p.nodes.values() {
                std::fs::create_dir_all(&n.dir).expect("data dir");
                let mounted = Command::new("mount")
                    .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                    .arg(&n.dir)
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if !mounted {
                    return None;
                }
                p.mounts.push(n.dir.clone());
            }
        }
        for id in 1..=3 {
            p.spawn(id);
        }
        Some(p)
    }

    fn spawn(&mut self, id: u64) {
        let members = self.members.clone();
        let n = self.nodes.get_mut(&id).expect("known node");
        std::fs::create_dir_all(&n.dir).expect("data dir");
        let log = std::fs::File::create(n.dir.with_extension("log")).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_kv"))
            .args(["node", "--id", &id.to_string()])
            .arg("--data-dir")
            .arg(&n.dir)
            .args(["--raft-addr", &format!("127.0.0.1:{}", n.raft)])
            .args(["--resp-addr", &format!("127.0.0.1:{}", n.resp)])
            .args(["--initial-members", &members])
            .args(&self.extra)
            .args(
                n.metrics
                    .map(|m| vec!["--metrics-addr".to_string(), format!("127.0.0.1:{m}")])
                    .unwrap_or_default(),
            )
            .env("RUST_LOG", "warn,kv=info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn kv");
        n.child = Some(child);
    }

    /// `kill -9`.
    fn kill(&mut self, id: u64) {
        if let Some(mut c) = self.nodes.get_mut(&id).and_then(|n| n.child.take()) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn port(&self, id: u64) -> u16 {
        self.nodes[&id].resp
    }

    /// Sends `signal` (`TERM`, `INT`) to node `id`.
    fn signal(&self, id: u64, signal: &str) {
        let pid = self.nodes[&id].child.as_ref().expect("running").id();
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .expect("kill");
        assert!(sent.success(), "kill -{signal} {pid}");
    }

    /// Waits up to `limit` for node `id` to exit; its exit status, or `None` if it still runs.
    async fn exited(&mut self, id: u64, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        let n = self.nodes.get_mut(&id).expect("known node");
        let child = n.child.as_mut()?;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                n.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            poll_pause("exit").await;
        }
    }

    /// Every node's log, for a failure message.
    fn logs(&self) -> String {
        common::logs(self.tmp.path(), self.nodes.keys().copied())
    }

    fn log(&self, id: u64) -> String {
        std::fs::read_to_string(self.nodes[&id].dir.with_extension("log")).unwrap_or_default()
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for id in 1..=3 {
            self.kill(id);
        }
        for m in &self.mounts {
            let _ = Command::new("umount").arg(m).status();
        }
    }
}

async fn connect(port: u16) -> MultiplexedConnection {
    let deadline = Instant::now() + WAIT;
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).expect("client");
    loop {
        match client.get_multiplexed_async_connection().await {
            Ok(c) => return c,
            Err(e) if Instant::now() < deadline => {
                poll_pause(&e.to_string()).await;
            }
            Err(e) => panic!("cannot connect to port {port}: {e}"),
        }
    }
}

/// The interval between polls of another process (there is nothing to subscribe to).
async fn poll_pause(_why: &str) {
    tokio::time::sleep(Duration::from_millis(50)).await;
}

async fn info(con: &mut MultiplexedConnection) -> BTreeMap<String, String> {
    info_section(con, "replication").await
}

/// One section of INFO, as its `key:value` lines.
async fn info_section(con: &mut MultiplexedConnection, section: &str) -> BTreeMap<String, String> {
    let text: String = redis::cmd("INFO")
        .arg(section)
        .query_async(con)
        .await
        .expect("INFO");
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

/// Waits until some node reports itself leader and the others follow it; returns its id.
async fn leader(p: &Procs, alive: &[u64]) -> u64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut views = BTreeMap::new();
        for id in alive {
            let mut c = connect(p.port(*id)).await;
            views.insert(*id, info(&mut c).await);
        }
        let leaders: Vec<u64> = views
            .iter()
            .filter(|(_, v)| v.get("raft_role").map(String::as_str) == Some("leader"))
            .map(|(id, _)| *id)
            .collect();
        if let [l] = leaders[..] {
            let agree = views
                .values()
                .filter(|v| v.get("raft_leader_id") == Some(&l.to_string()))
                .count();
            if agree == alive.len() {
                return l;
            }
        }
        assert!(Instant::now() < deadline, "no agreed leader: {views:?}");
        poll_pause("leader").await;
    }
}

/// Every supported command, through one node.
async fn exercise(con: &mut MultiplexedConnection, tag: &str) {
    let k = |s: &str| format!("{tag}:{s}");
    assert_eq!(q::<String>(con, &["PING"]).await, "PONG");
    assert_eq!(q::<String>(con, &["ECHO", "hi"]).await, "hi");
    let hello: Value = q(con, &["HELLO", "2"]).await;
    assert!(matches!(hello, Value::Array(_)), "{hello:?}");
    assert_eq!(q::<String>(con, &["SELECT", "0"]).await, "OK");
    assert!(q_err(con, &["SELECT", "3"]).await.contains("out of range"));

    assert_eq!(q::<String>(con, &["SET", &k("s"), "v1"]).await, "OK");
    assert_eq!(q::<String>(con, &["GET", &k("s")]).await, "v1");
    assert_eq!(
        q::<Option<String>>(con, &["SET", &k("s"), "v2", "GET"])
            .await
            .as_deref(),
        Some("v1")
    );
    assert_eq!(
        q::<Option<String>>(con, &["SET", &k("s"), "x", "NX"]).await,
        None
    );
    assert_eq!(
        q::<Option<String>>(con, &["SET", &k("absent"), "x", "XX"]).await,
        None
    );
    assert_eq!(
        q::<String>(con, &["SET", &k("ex"), "v", "EX", "100"]).await,
        "OK"
    );
    let ttl: i64 = q(con, &["TTL", &k("ex")]).await;
    assert!((99..=100).contains(&ttl), "ttl {ttl}");
    assert_eq!(
        q::<String>(con, &["SET", &k("px"), "v", "PX", "100000"]).await,
        "OK"
    );
    let pttl: i64 = q(con, &["PTTL", &k("px")]).await;
    assert!(pttl > 99_000 && pttl <= 100_000, "pttl {pttl}");
    assert_eq!(q::<String>(con, &["GETSET", &k("s"), "v3"]).await, "v2");
    assert_eq!(q::<i64>(con, &["SETNX", &k("s"), "no"]).await, 0);
    assert_eq!(q::<i64>(con, &["SETNX", &k("nx"), "yes"]).await, 1);
    assert_eq!(q::<i64>(con, &["INCR", &k("n")]).await, 1);
    assert_eq!(q::<i64>(con, &["INCRBY", &k("n"), "10"]).await, 11);
    assert_eq!(q::<i64>(con, &["DECR", &k("n")]).await, 10);
    assert_eq!(q::<i64>(con, &["DECRBY", &k("n"), "4"]).await, 6);
    assert!(
        q_err(con, &["INCR", &k("s")])
            .await
            .contains("not an integer")
    );
    assert_eq!(q::<i64>(con, &["APPEND", &k("a"), "ab"]).await, 2);
    assert_eq!(q::<i64>(con, &["APPEND", &k("a"), "cd"]).await, 4);
    assert_eq!(q::<i64>(con, &["STRLEN", &k("a")]).await, 4);
    assert_eq!(
        q::<String>(con, &["MSET", &k("m1"), "1", &k("m2"), "2"]).await,
        "OK"
    );
    let got: Vec<Option<String>> = q(con, &["MGET", &k("m1"), &k("nope"), &k("m2")]).await;
    assert_eq!(got, vec![Some("1".into()), None, Some("2".into())]);
    assert_eq!(
        q::<i64>(con, &["EXISTS", &k("m1"), &k("m2"), &k("nope")]).await,
        2
    );
    assert_eq!(q::<i64>(con, &["EXPIRE", &k("m1"), "50"]).await, 1);
    assert_eq!(q::<i64>(con, &["PEXPIRE", &k("m2"), "50000"]).await, 1);
    assert_eq!(q::<i64>(con, &["PERSIST", &k("m1")]).await, 1);
    assert_eq!(q::<i64>(con, &["TTL", &k("m1")]).await, -1);
    assert_eq!(q::<i64>(con, &["TTL", &k("nope")]).await, -2);
    assert_eq!(
        q::<i64>(con, &["DEL", &k("m1"), &k("m2"), &k("nope")]).await,
        2
    );
    let keys: Vec<String> = q(con, &["KEYS", &format!("{tag}:*")]).await;
    assert!(keys.contains(&k("s")) && keys.contains(&k("n")), "{keys:?}");
    let mut scanned = Vec::new();
    let mut cursor = "0".to_string();
    loop {
        let (next, batch): (String, Vec<String>) = q(
            con,
            &["SCAN", &cursor, "MATCH", &format!("{tag}:*"), "COUNT", "3"],
        )
        .await;
        scanned.extend(batch);
        if next == "0" {
            break;
        }
        cursor = next;
    }
    scanned.sort();
    let mut keys_sorted = keys.clone();
    keys_sorted.sort();
    assert_eq!(scanned, keys_sorted, "SCAN sees what KEYS sees");
    let size: i64 = q(con, &["DBSIZE"]).await;
    assert!(size >= keys.len() as i64);
    let info = info(con).await;
    assert!(
        info.contains_key("raft_term") && info.contains_key("raft_members"),
        "{info:?}"
    );
    let commands: Value = q(con, &["COMMAND"]).await;
    assert!(matches!(commands, Value::Array(ref v) if v.len() > 20));
    assert!(
        q_err(con, &["NOSUCHCMD", "x"])
            .await
            .contains("unknown command")
    );
    assert!(
        q_err(con, &["GET"])
            .await
            .contains("wrong number of arguments")
    );
    assert!(
        q_err(con, &["SET", "a"])
            .await
            .contains("wrong number of arguments")
    );
    assert!(
        q_err(con, &["SET", "a", "b", "BOGUS"])
            .await
            .contains("syntax error")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_three_process_cluster_survives_kill_9_of_its_leader() {
    let mut p = Procs::start();
    let alive = [1, 2, 3];
    let l = leader(&p, &alive).await;
    let f = *alive.iter().find(|id| **id != l).expect("a follower");

    // Every command through the leader and through a follower.
    exercise(&mut connect(p.port(l)).await, "leader").await;
    exercise(&mut connect(p.port(f)).await, "follower").await;

    // Acknowledged writes, half through each.
    let mut acked = BTreeMap::new();
    let mut via_leader = connect(p.port(l)).await;
    let mut via_follower = connect(p.port(f)).await;
    for i in 0..200 {
        let (key, value) = (format!("before:{i}"), format!("v{i}"));
        let con = if i % 2 == 0 {
            &mut via_leader
        } else {
            &mut via_follower
        };
        let ok: String = q(con, &["SET", &key, &value]).await;
        assert_eq!(ok, "OK");
        acked.insert(key, value);
    }

    // kill -9 the leader; the other two elect one and serve.
    p.kill(l);
    let rest: Vec<u64> = alive.iter().copied().filter(|id| *id != l).collect();
    let l2 = leader(&p, &rest).await;
    assert_ne!(l2, l);
    for id in &rest {
        let mut c = connect(p.port(*id)).await;
        for i in 0..50 {
            let (key, value) = (format!("after:{id}:{i}"), format!("w{i}"));
            let ok: String = q(&mut c, &["SET", &key, &value]).await;
            assert_eq!(ok, "OK");
            acked.insert(key, value);
        }
    }

    // The killed node restarts from its data directory and catches up.
    p.spawn(l);
    leader(&p, &alive).await;
    let mut sizes = BTreeMap::new();
    for id in alive {
        let mut c = connect(p.port(id)).await;
        let deadline = Instant::now() + WAIT;
        // A restarted node answers once it has caught up with the leader's read index.
        loop {
            let size: i64 = q(&mut c, &["DBSIZE"]).await;
            if size >= acked.len() as i64 {
                sizes.insert(id, size);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {id} holds {size} keys of the {} acknowledged after {WAIT:?}; log:\n{}",
                acked.len(),
                p.log(id)
            );
            poll_pause("catch up").await;
        }
        for (key, value) in &acked {
            let got: Option<String> = q(&mut c, &["GET", key]).await;
            assert_eq!(
                got.as_ref(),
                Some(value),
                "node {id} lost {key}; log:\n{}",
                p.log(id)
            );
        }
    }
    let first = sizes.values().next().copied();
    assert!(
        sizes.values().all(|s| Some(*s) == first),
        "DBSIZE differs: {sizes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn misbehaving_clients_get_errors_and_others_carry_on() {
    let p = Procs::start();
    let l = leader(&p, &[1, 2, 3]).await;
    let port = p.port(l);
    let exchange = |bytes: &[u8]| -> String {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.write_all(bytes).expect("write");
        let mut out = Vec::new();
        // The server closes the connection after a protocol error.
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    };
    let reply = exchange(b"*1\r\n$999999999999\r\n");
    assert!(reply.starts_with("-ERR Protocol error"), "{reply:?}");
    let reply = exchange(b"*2\r\n:1\r\n");
    assert!(reply.starts_with("-ERR Protocol error"), "{reply:?}");
    let reply = exchange(b"*x\r\n");
    assert!(reply.starts_with("-ERR Protocol error"), "{reply:?}");
    let reply = exchange(b"GET \"unterminated\r\n");
    assert!(reply.starts_with("-ERR Protocol error"), "{reply:?}");
    let mut endless = vec![b'A'; 200 << 10];
    endless.push(b'\n');
    let reply = exchange(&endless);
    assert!(reply.starts_with("-ERR Protocol error"), "{reply:?}");

    // A half-sent command, then a disconnect mid-pipeline.
    {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.write_all(b"*3\r\n$3\r\nSET\r\n$1\r\nh\r\n$5\r\nhal")
            .expect("write");
    }
    {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let mut pipeline = Vec::new();
        for i in 0..100 {
            pipeline.extend_from_slice(
                format!("*3\r\n$3\r\nSET\r\n$4\r\np{i:03}\r\n$1\r\nx\r\n").as_bytes(),
            );
        }
        s.write_all(&pipeline).expect("write");
    }

    // Pipelined commands on one connection keep their order.
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(b"SET order 1\r\nAPPEND order 2\r\nGET order\r\nINCR order\r\nGET order\r\n")
        .expect("write");
    let mut buf = Vec::new();
    let expected = "+OK\r\n:2\r\n$2\r\n12\r\n:13\r\n$2\r\n13\r\n";
    while buf.len() < expected.len() {
        let mut chunk = [0u8; 256];
        let n = s.read(&mut chunk).expect("read");
        assert!(
            n > 0,
            "connection closed early: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(String::from_utf8_lossy(&buf), expected);

    // Everyone else is still served.
    for id in [1, 2, 3] {
        let mut c = connect(p.port(id)).await;
        assert_eq!(q::<String>(&mut c, &["PING"]).await, "PONG");
        let _: String = q(&mut c, &["SET", &format!("still:{id}"), "up"]).await;
    }
}

#[tokio::test]
async fn a_taken_port_is_a_clear_error() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let tmp = tempfile::tempdir().expect("dir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_kv"))
        .args(["node", "--id", "1"])
        .arg("--data-dir")
        .arg(tmp.path())
        .args(["--raft-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--resp-addr", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kv");
    // It must exit by itself; a kv that starts anyway is a failure, not a hang.
    let deadline = Instant::now() + WAIT;
    while child.try_wait().expect("wait for kv").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("kv kept running with its RESP port taken");
        }
        poll_pause("kv to exit").await;
    }
    let out = child.wait_with_output().expect("kv output");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&port.to_string()) && err.contains("--resp-addr"),
        "{err}"
    );
}

/// A plain HTTP GET of `path` on node `id`'s metrics listener: the status code and the body.
fn http_get(p: &Procs, id: u64, path: &str) -> (u16, String) {
    let port = p.nodes[&id].metrics.expect("node serves metrics");
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to metrics");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read reply");
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string());
    (code, body.unwrap_or_default())
}

/// Fills the file system under `dir` with a file until it is full (or `limit` bytes).
fn fill(dir: &std::path::Path, name: &str, limit: u64) {
    let mut f = std::fs::File::create(dir.join(name)).expect("filler");
    let chunk = vec![7u8; 1 << 20];
    let mut written = 0;
    while written < limit {
        match f.write_all(&chunk) {
            Ok(()) => written += chunk.len() as u64,
            Err(_) => break,
        }
    }
    let _ = f.sync_all();
}

/// Flags that make the disk tests quick: small segments, compaction after 2 MiB of log, a
/// quota sampled five times a second.
const SMALL_DISK: [&str; 6] = [
    "--wal-segment-size",
    "1MiB",
    "--snapshot-log-bytes",
    "2MiB",
    "--quota-check-interval",
    "200ms",
];

/// Three nodes with [`SMALL_DISK`] and `--quota-min-free quota`, each data directory on its
/// own 64 MiB tmpfs, and their leader; `None` (saying so) where mounting is not permitted.
async fn small_disk_cluster(quota: &str, metrics: bool) -> Option<(Procs, u64)> {
    let mut flags: Vec<&str> = SMALL_DISK.to_vec();
    flags.extend(["--quota-min-free", quota]);
    let Some(p) = Procs::start_with(&flags, Some("64m"), metrics) else {
        eprintln!(
            "SKIPPED: mounting a tmpfs is not permitted here (run as root); the simulated-ENOSPC \
             tests in raft-core/tests/disk.rs and raft-grpc/tests/space_alarm.rs cover the logic"
        );
        return None;
    };
    let l = leader(&p, &[1, 2, 3]).await;
    Some((p, l))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn past_the_quota_writes_get_oom_reads_work_and_freeing_space_resumes_them() {
    let Some((mut p, l)) = small_disk_cluster("24MiB", true).await else {
        return;
    };
    let alive = [1, 2, 3];
    // Something else takes most of each disk: 36 MiB of 64, leaving ~26 MiB over the reserve.
    for n in p.nodes.values() {
        fill(&n.dir, "other-data", 36 << 20);
    }
    let mut con = connect(p.port(l)).await;
    let value = "x".repeat(16 << 10);
    let mut acked = 0;
    let mut refusal = None;
    // ~2 MiB of data (plus its log and snapshot) crosses the reserve; 26 MiB would fill the disk.
    for i in 0..1600 {
        let r: redis::RedisResult<String> = redis::cmd("SET")
            .arg(format!("k{i}"))
            .arg(&value)
            .query_async(&mut con)
            .await;
        match r {
            Ok(_) => acked = i + 1,
            Err(e) => {
                refusal = Some(e.to_string());
                break;
            }
        }
    }
    let refusal = refusal.expect("the quota refused a write before the disk filled");
    assert!(
        refusal.contains("OOM") && refusal.contains("free"),
        "a clear refusal: {refusal}"
    );
    assert!(acked > 10, "only {acked} writes before the refusal");
    // Something else takes 4 MiB more, so that the alarm stays raised while it is looked at:
    // otherwise a node in alarm may free enough by compacting its log (a snapshot, then a
    // purge) to clear it by itself.
    for n in p.nodes.values() {
        fill(&n.dir, "more-other-data", 4 << 20);
    }
    // Nobody ran out of disk: every node is alive and serving reads.
    for id in alive {
        assert!(
            p.exited(id, Duration::ZERO).await.is_none(),
            "node {id} died:\n{}",
            p.log(id)
        );
        let mut c = connect(p.port(id)).await;
        let got: Option<String> = q(&mut c, &["GET", "k0"]).await;
        assert_eq!(
            got.as_deref(),
            Some(value.as_str()),
            "node {id} serves reads"
        );
        // And every node refuses growing writes, whichever disk is lowest.
        let e = q_err(&mut c, &["SET", "more", "x"]).await;
        assert!(e.contains("OOM"), "node {id}: {e}");
    }
    // The alarm shows in INFO, /readyz and /metrics.
    let persistence = info_section(&mut con, "persistence").await;
    assert!(
        persistence
            .get("storage_alarm")
            .is_some_and(|a| a.starts_with("nospace")),
        "{persistence:?}"
    );
    let (code, body) = http_get(&p, l, "/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("NOSPACE"), "{body}");
    assert_eq!(http_get(&p, l, "/healthz").0, 200);
    // The gauges are refreshed once a second.
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, metrics) = http_get(&p, l, "/metrics");
        if metrics
            .lines()
            .any(|m| m.starts_with("storage_refusing_writes") && m.ends_with(" 1"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "{metrics}");
        poll_pause("metrics").await;
    }
    // Deletes still work.
    let removed: i64 = q(&mut con, &["DEL", "k0"]).await;
    assert_eq!(removed, 1);

    // The operator frees space: writes resume, without a restart.
    for n in p.nodes.values() {
        for name in ["other-data", "more-other-data"] {
            std::fs::remove_file(n.dir.join(name)).expect("free space");
        }
    }
    let deadline = Instant::now() + WAIT;
    loop {
        let r: redis::RedisResult<String> = redis::cmd("SET")
            .arg("after")
            .arg("ok")
            .query_async(&mut con)
            .await;
        match r {
            Ok(ok) => {
                assert_eq!(ok, "OK");
                break;
            }
            Err(e) => {
                assert!(e.to_string().contains("OOM"), "{e}");
                assert!(Instant::now() < deadline, "writes did not resume: {e}");
                poll_pause("alarm to clear").await;
            }
        }
    }
    assert_eq!(http_get(&p, l, "/readyz").0, 200);
    let got: Option<String> = q(&mut con, &["GET", "after"]).await;
    assert_eq!(got.as_deref(), Some("ok"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_whose_disk_fills_anyway_exits_non_zero_and_recovers_after_a_restart() {
    // The quota is off, so nothing stops the leader's disk from filling.
    let Some((mut p, l)) = small_disk_cluster("0", false).await else {
        return;
    };
    let alive = [1, 2, 3];
    let mut acked: BTreeMap<String, String> = BTreeMap::new();
    let mut con = connect(p.port(l)).await;
    for i in 0..20 {
        let (k, v) = (format!("before:{i}"), format!("v{i}"));
        let _: String = q(&mut con, &["SET", &k, &v]).await;
        acked.insert(k, v);
    }
    // Something else fills the leader's disk.
    fill(&p.nodes[&l].dir, "other-data", u64::MAX);
    let rest: Vec<u64> = alive.iter().copied().filter(|id| *id != l).collect();
    let mut other = connect(p.port(rest[0])).await;
    let value = "y".repeat(16 << 10);
    let mut status = None;
    for i in 0..400 {
        let (k, v) = (format!("during:{i}"), format!("{value}{i}"));
        // Through a follower: writes keep coming while the leader fails and is replaced.
        let r: redis::RedisResult<String> = redis::cmd("SET")
            .arg(&k)
            .arg(&v)
            .query_async(&mut other)
            .await;
        if r.is_ok() {
            acked.insert(k, v);
        }
        status = p.exited(l, Duration::ZERO).await;
        if status.is_some() {
            break;
        }
    }
    let status = match status {
        Some(s) => s,
        None => p
            .exited(l, WAIT)
            .await
            .unwrap_or_else(|| panic!("the leader did not exit:\n{}", p.log(l))),
    };
    assert!(!status.success(), "exit status {status:?}");
    let log = p.log(l);
    assert!(
        log.contains("No space left on device") && log.contains("exiting"),
        "the log says why:\n{log}"
    );
    // The other two carry on.
    leader(&p, &rest).await;
    for i in 0..20 {
        let (k, v) = (format!("after:{i}"), format!("w{i}"));
        let _: String = q(&mut other, &["SET", &k, &v]).await;
        acked.insert(k, v);
    }
    for id in &rest {
        assert!(
            p.exited(*id, Duration::ZERO).await.is_none(),
            "node {id} died too"
        );
    }
    // Space is freed and the node restarted: it has every acknowledged write.
    std::fs::remove_file(p.nodes[&l].dir.join("other-data")).expect("free space");
    p.spawn(l);
    leader(&p, &alive).await;
    let mut c = connect(p.port(l)).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let size: i64 = q(&mut c, &["DBSIZE"]).await;
        if size >= acked.len() as i64 {
            break;
        }
        assert!(Instant::now() < deadline, "{size} of {} keys", acked.len());
        poll_pause("catch up").await;
    }
    for (k, v) in &acked {
        let got: Option<String> = q(&mut c, &["GET", k]).await;
        assert_eq!(got.as_ref(), Some(v), "lost {k}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_and_sigint_stop_a_node_in_every_role_within_the_bound() {
    let mut p =
        Procs::start_with(&["--shutdown-timeout", "5s"], None, false).expect("no mounts to fail");
    let alive = [1, 2, 3];
    let l = leader(&p, &alive).await;
    let followers: Vec<u64> = alive.iter().copied().filter(|id| *id != l).collect();
    let mut con = connect(p.port(l)).await;
    for i in 0..50 {
        let _: String = q(&mut con, &["SET", &format!("k{i}"), "v"]).await;
    }
    // The bound: the 5 s shutdown timeout, plus process start-up slack.
    let bound = Duration::from_secs(8);
    let stop = |p: &mut Procs, id: u64, sig: &'static str| {
        let started = Instant::now();
        p.signal(id, sig);
        started
    };
    // A follower.
    let t = stop(&mut p, followers[0], "TERM");
    let s = p.exited(followers[0], bound).await.expect("follower stops");
    assert!(s.success(), "{s:?}:\n{}", p.log(followers[0]));
    eprintln!("follower stopped in {:?}", t.elapsed());
    // The leader.
    let t = stop(&mut p, l, "TERM");
    let s = p.exited(l, bound).await.expect("leader stops");
    assert!(s.success(), "{s:?}:\n{}", p.log(l));
    eprintln!("leader stopped in {:?}", t.elapsed());
    // The last node has lost its quorum (its leader is gone and no vote can succeed), and gets
    // SIGINT rather than SIGTERM.
    let last = followers[1];
    let mut c = connect(p.port(last)).await;
    let role = info(&mut c).await.get("raft_role").cloned();
    assert_ne!(role.as_deref(), Some("leader"));
    let t = stop(&mut p, last, "INT");
    let s = p.exited(last, bound).await.expect("leaderless node stops");
    assert!(s.success(), "{s:?}:\n{}", p.log(last));
    eprintln!("leaderless node stopped in {:?}", t.elapsed());
    // Everything written survives the stops.
    for id in alive {
        p.spawn(id);
    }
    leader(&p, &alive).await;
    let mut c = connect(p.port(last)).await;
    let size: i64 = q(&mut c, &["DBSIZE"]).await;
    assert_eq!(size, 50);
}

/// Bytes allocated to the files under `dir`.
fn allocated(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.blocks() * 512)
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_wal_stays_bounded_relative_to_the_live_data() {
    // One entry per SET, so that the entries kept behind a snapshot (counted in entries) are
    // of known size: pipelined SETs would otherwise travel 128 to an entry.
    let mut flags = SMALL_DISK.to_vec();
    flags.extend(["--pipeline-batch", "1"]);
    let p = Procs::start_with(&flags, None, false).expect("no mounts to fail");
    let l = leader(&p, &[1, 2, 3]).await;
    // 500 keys of 2 KiB (1 MiB live) overwritten 8 times: 8 MiB through the log, with
    // compaction after 2 MiB of log and 1 MiB segments. Four connections, a quarter each.
    let value = "z".repeat(2 << 10);
    let writers = (0..4).map(|w| {
        let value = value.clone();
        let port = p.port(l);
        tokio::spawn(async move {
            let mut con = connect(port).await;
            for round in 0..8 {
                let mut pipe = redis::pipe();
                for k in (w..500).step_by(4) {
                    pipe.cmd("SET")
                        .arg(format!("k{k}"))
                        .arg(format!("{round}{value}"))
                        .ignore();
                }
                let () = pipe.query_async(&mut con).await.expect("writes");
            }
        })
    });
    for w in writers {
        w.await.expect("writer");
    }
    let mut con = connect(p.port(l)).await;
    // The log since the last snapshot (about 2 MiB), the 1 000 entries kept behind it for slow
    // followers (2 MiB) and a preallocated segment, in whole segments; without compaction by
    // size the WAL would hold all 8 MiB and more.
    let bound = 13u64 << 19;
    let deadline = Instant::now() + WAIT;
    loop {
        let sizes: Vec<u64> = p
            .nodes
            .values()
            .map(|n| allocated(&n.dir.join("wal")))
            .collect();
        if sizes.iter().all(|s| *s <= bound) {
            eprintln!("WAL sizes after 8 MiB of writes: {sizes:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "WAL sizes {sizes:?} above {bound}"
        );
        poll_pause("compaction").await;
    }
    let got: Option<String> = q(&mut con, &["GET", "k7"]).await;
    assert_eq!(got, Some(format!("7{value}")));
}

/// One short-lived client: connects, writes one key, reads the reply, disconnects. The reply,
/// or what went wrong.
async fn one_shot_write(port: u16, key: String) -> Result<String, String> {
    use tokio::io::AsyncReadExt;
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let cmd = format!("*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n$1\r\nv\r\n", key.len());
    s.write_all(cmd.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut reply = Vec::new();
    while !reply.ends_with(b"\r\n") {
        let mut b = [0u8; 256];
        let n = s.read(&mut b).await.map_err(|e| format!("reply: {e}"))?;
        if n == 0 {
            return Err("closed before replying".into());
        }
        reply.extend_from_slice(&b[..n]);
    }
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connection_churn_does_not_evict_a_long_lived_clients_session() {
    let p = Procs::start();
    let l = leader(&p, &[1, 2, 3]).await;
    let port = p.port(l);
    let mut long = connect(port).await;
    let mut incrs = 0i64;
    let n: i64 = q(&mut long, &["INCR", "counter"]).await;
    incrs += 1;
    assert_eq!(n, incrs);
    let capacity: u64 = info_section(&mut long, "clients").await["client_session_capacity"]
        .parse()
        .unwrap();
    // More short-lived connections than the session table holds, a few hundred at a time,
    // while the long-lived connection is idle — its session is the oldest, the first to go if
    // the table filled. Each short-lived session is closed when its connection ends.
    let total = 20_000u64;
    assert!(
        total > capacity,
        "{total} connections vs a capacity of {capacity}"
    );
    let started = Instant::now();
    let wave = 250u64;
    for w in 0..total / wave {
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..wave {
            tasks.spawn(one_shot_write(port, format!("c{}", w * wave + i)));
        }
        while let Some(r) = tasks.join_next().await {
            let reply = r.expect("task");
            assert!(
                reply.as_deref() == Ok("+OK\r\n"),
                "wave {w}: {reply:?}\n{}",
                p.logs()
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "churn too slow: {w} waves in {:?}",
            started.elapsed()
        );
    }
    // Closed sessions are gone: the table holds only sessions of live connections (closes of
    // the last wave may still be in flight for a moment).
    let deadline = Instant::now() + WAIT;
    loop {
        let open: u64 = info_section(&mut long, "clients").await["client_sessions"]
            .parse()
            .unwrap();
        if open <= 5 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{open} sessions still open after the churn"
        );
        poll_pause("sessions").await;
    }
    // The long-lived session still works after all the churn: had it been evicted, this write
    // would be answered -TRYAGAIN (outcome unknown), not with the next count.
    let n: i64 = q(&mut long, &["INCR", "counter"]).await;
    incrs += 1;
    assert_eq!(n, incrs, "every increment applied exactly once");
    let last: String = q(&mut long, &["GET", &format!("c{}", total - 1)]).await;
    assert_eq!(last, "v");
    eprintln!(
        "{total} connections (write + close each) in {:?}",
        started.elapsed()
    );
}
