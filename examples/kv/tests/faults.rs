//! Faults only real processes have, under a concurrent workload whose history is checked for
//! linearizability: SIGSTOP/SIGCONT of the leader and of a follower, `kill -9` of all three
//! nodes at once followed by a restart, and a network partition between the processes (root
//! only: each node runs as its own user and iptables cuts one user's loopback traffic off;
//! skipped with a message where that is not possible). After the faults heal, every replica must answer every
//! key the same way (a follower answers a read from its own state machine).
//!
//! Clients APPEND unique tokens and GET over a few keys, on every node; a GET shows every token
//! applied to its key, so a lost or duplicated append, or a stale read, breaks the history.
//! Any error or timeout is recorded as an unknown outcome.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::Ports;
use common::Proc;
use raft_core::testing::Model;
use raft_core::testing::Recorder;
use raft_core::testing::check;
use rand::Rng;
use redis::aio::MultiplexedConnection;

const KEYS: u8 = 4;
const OP_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a client waits after a failure before its next operation.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Append-only strings per key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
struct Appends(BTreeMap<u8, String>);

#[derive(Debug, Clone)]
enum Op {
    Get(u8),
    Append(u8, String),
}

#[derive(Debug, Clone, PartialEq)]
enum Out {
    Value(Option<String>),
    /// APPEND answers the value's new length.
    Len(usize),
}

impl Model for Appends {
    type Input = Op;
    type Output = Out;

    fn init() -> Self {
        Appends::default()
    }

    fn step(&self, input: &Op, output: Option<&Out>) -> Option<Self> {
        match (input, output) {
            (Op::Get(_), None) => Some(self.clone()),
            (Op::Get(k), Some(Out::Value(v))) => {
                (self.0.get(k) == v.as_ref()).then(|| self.clone())
            }
            (Op::Append(k, token), out) => {
                let mut next = self.clone();
                let value = next.0.entry(*k).or_default();
                value.push_str(token);
                match out {
                    None => Some(next),
                    Some(Out::Len(n)) if *n == value.len() => Some(next),
                    Some(_) => None,
                }
            }
            (Op::Get(_), Some(Out::Len(_))) => None,
        }
    }

    fn partition(input: &Op) -> u64 {
        match input {
            Op::Get(k) | Op::Append(k, _) => *k as u64,
        }
    }

    fn is_read(input: &Op) -> bool {
        matches!(input, Op::Get(_))
    }
}

fn key(k: u8) -> String {
    format!("fault:{k}")
}

/// Three `kv node` processes on loopback.
struct Cluster {
    dir: tempfile::TempDir,
    ports: BTreeMap<u64, Ports>,
    procs: BTreeMap<u64, Proc>,
    members: String,
    /// Each node's user, when each runs as its own.
    uids: Option<BTreeMap<u64, u32>>,
}

impl Cluster {
    fn start() -> Cluster {
        Cluster::start_as(None)
    }

    fn start_as(uids: Option<BTreeMap<u64, u32>>) -> Cluster {
        let ports: BTreeMap<u64, Ports> = (1..=3).map(|id| (id, Ports::new())).collect();
        let members = ports
            .iter()
            .map(|(id, p)| format!("{id}={}", p.raft_addr()))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = Cluster {
            dir: tempfile::tempdir().expect("temp dir"),
            ports,
            procs: BTreeMap::new(),
            members,
            uids,
        };
        for id in 1..=3 {
            c.launch(id);
        }
        c
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn launch(&mut self, id: u64) {
        let args = ["--initial-members".to_string(), self.members.clone()];
        let uid = self.uids.as_ref().map(|u| u[&id]);
        let p = common::spawn_as(self.dir.path(), id, &self.ports[&id], &args, uid);
        self.procs.insert(id, p);
    }

    fn resp_ports(&self) -> Vec<u16> {
        self.ports.values().map(|p| p.resp).collect()
    }

    /// The leader that every node in `among` agrees on.
    async fn leader_among(&self, among: &[u64]) -> u64 {
        let addrs: Vec<String> = among.iter().map(|id| self.ports[id].raft_addr()).collect();
        common::poll(
            "the nodes agree on a leader",
            self.dir(),
            &[1, 2, 3],
            || {
                let addrs = addrs.clone();
                async move {
                    let mut leader = None;
                    for a in &addrs {
                        let s = common::status(a).await?;
                        let l = s.leader_id?;
                        if leader.is_some_and(|x| x != l) {
                            return None;
                        }
                        leader = Some(l);
                    }
                    leader.filter(|l| among.contains(l))
                }
            },
        )
        .await
    }
}

async fn connect(port: u16) -> Option<MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).ok()?;
    tokio::time::timeout(OP_TIMEOUT, client.get_multiplexed_async_connection())
        .await
        .ok()?
        .ok()
}

/// One client: random operations on random nodes until `stop`.
async fn client(id: usize, ports: Vec<u16>, rec: Recorder<Op, Out>, stop: Arc<AtomicBool>) {
    let mut conns: Vec<Option<MultiplexedConnection>> = vec![None; ports.len()];
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let (node, k, append) = {
            let mut rng = rand::rng();
            (
                rng.random_range(0..ports.len()),
                rng.random_range(0..KEYS),
                rng.random_bool(0.5),
            )
        };
        if conns[node].is_none() {
            conns[node] = connect(ports[node]).await;
        }
        let Some(con) = conns[node].as_mut() else {
            // The node is down: try another rather than spin on this one.
            tokio::time::sleep(RETRY_PAUSE).await;
            continue;
        };
        n += 1;
        let token = format!("c{id}.{n};");
        let (input, cmd) = if append {
            let mut c = redis::cmd("APPEND");
            c.arg(key(k)).arg(&token);
            (Op::Append(k, token), c)
        } else {
            let mut c = redis::cmd("GET");
            c.arg(key(k));
            (Op::Get(k), c)
        };
        let pending = rec.invoke(id, input.clone());
        let answer = tokio::time::timeout(OP_TIMEOUT, cmd.query_async::<redis::Value>(con)).await;
        match (answer, &input) {
            (Ok(Ok(redis::Value::Int(len))), Op::Append(..)) => pending.ok(Out::Len(len as usize)),
            (Ok(Ok(redis::Value::BulkString(b))), Op::Get(_)) => {
                pending.ok(Out::Value(Some(String::from_utf8_lossy(&b).into_owned())))
            }
            (Ok(Ok(redis::Value::Nil)), Op::Get(_)) => pending.ok(Out::Value(None)),
            (Ok(Ok(_)), _) => pending.unknown(),
            (Ok(Err(_)) | Err(_), _) => {
                // An error reply, a lost connection or a timeout: the outcome is unknown. Start
                // this node's connection afresh (a late reply may still be on its way) and pause,
                // so a dead node does not fill the history with unknown operations.
                pending.unknown();
                conns[node] = None;
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}

/// Runs the workload around `faults`, then checks the history and compares the replicas.
async fn with_workload(c: &mut Cluster, faults: impl AsyncFnOnce(&mut Cluster)) {
    let rec = Recorder::<Op, Out>::new();
    let stop = Arc::new(AtomicBool::new(false));
    let ports = c.resp_ports();
    let clients: Vec<_> = (0..3)
        .map(|id| tokio::spawn(client(id, ports.clone(), rec.clone(), stop.clone())))
        .collect();
    faults(c).await;
    // The healed cluster keeps serving: the workload goes on until enough has succeeded for the
    // history to say something, however slow the machine is (on a fast one it already has).
    let dir = c.dir().to_path_buf();
    common::poll("100 operations succeed", &dir, &[1, 2, 3], || {
        let (ok, _, _) = rec.history().counts();
        async move { (ok > 100).then_some(()) }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for cl in clients {
        cl.await.expect("client task");
    }

    let history = rec.history();
    let (ok, _, unknown) = history.counts();
    eprintln!("{ok} operations ok, {unknown} unknown");
    let verdict = check::<Appends>(&history, Duration::from_secs(60));
    assert!(verdict.is_linearizable(), "{verdict:?}");

    // Healed: every node answers every key the same.
    let mut answers: BTreeMap<u16, Vec<Option<String>>> = BTreeMap::new();
    for port in c.resp_ports() {
        let dir = c.dir().to_path_buf();
        let got = common::poll(
            "a node answers every key",
            &dir,
            &[1, 2, 3],
            || async move {
                let mut con = connect(port).await?;
                let mut values = Vec::new();
                for k in 0..KEYS {
                    let mut get = redis::cmd("GET");
                    get.arg(key(k));
                    let v: Option<String> =
                        tokio::time::timeout(OP_TIMEOUT, get.query_async(&mut con))
                            .await
                            .ok()?
                            .ok()?;
                    values.push(v);
                }
                Some(values)
            },
        )
        .await;
        answers.insert(port, got);
    }
    let first = answers.values().next().cloned();
    for (port, a) in &answers {
        assert_eq!(
            Some(a),
            first.as_ref(),
            "the node at RESP port {port} diverged"
        );
    }
}

async fn run_for(d: Duration) {
    // The workload runs meanwhile; nothing to wait on but time.
    tokio::time::sleep(d).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigstop_of_the_leader_and_of_a_follower() {
    let mut c = Cluster::start();
    let leader = c.leader_among(&[1, 2, 3]).await;
    with_workload(&mut c, async |c: &mut Cluster| {
        run_for(Duration::from_secs(1)).await;
        c.procs[&leader].signal("STOP");
        let others: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
        let new_leader = c.leader_among(&others).await;
        assert_ne!(new_leader, leader, "a paused leader is replaced");
        run_for(Duration::from_secs(1)).await;
        c.procs[&leader].signal("CONT");

        let follower = *others
            .iter()
            .find(|id| **id != new_leader)
            .expect("a follower");
        c.procs[&follower].signal("STOP");
        run_for(Duration::from_secs(2)).await;
        c.procs[&follower].signal("CONT");
        run_for(Duration::from_secs(1)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_every_node_at_once_then_restart() {
    let mut c = Cluster::start();
    c.leader_among(&[1, 2, 3]).await;
    with_workload(&mut c, async |c: &mut Cluster| {
        run_for(Duration::from_secs(2)).await;
        c.procs.clear(); // kill -9 of all three
        for id in 1..=3 {
            c.launch(id);
        }
        c.leader_among(&[1, 2, 3]).await;
        run_for(Duration::from_secs(2)).await;
    })
    .await;
}

/// Cuts nodes off on loopback with iptables: every packet a node's user sends marks its
/// connection, and every marked connection's packets are dropped, so no connection to or from
/// the node makes progress (its clients time out too). Rules are removed on heal and on drop.
struct Firewall {
    active: Vec<u32>,
}

impl Firewall {
    fn rules(uid: u32) -> [Vec<String>; 2] {
        let tag = format!("raftkit-test-{uid}");
        let common = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let mut drop = common(&["OUTPUT", "-o", "lo", "-m", "connmark", "--mark"]);
        drop.extend([
            uid.to_string(),
            "-m".into(),
            "comment".into(),
            "--comment".into(),
        ]);
        drop.extend([tag.clone(), "-j".into(), "DROP".into()]);
        let mut mark = common(&["OUTPUT", "-o", "lo", "-m", "owner", "--uid-owner"]);
        mark.extend([
            uid.to_string(),
            "-m".into(),
            "comment".into(),
            "--comment".into(),
        ]);
        mark.extend([tag, "-j".into(), "CONNMARK".into(), "--set-mark".into()]);
        mark.push(uid.to_string());
        [drop, mark]
    }

    fn iptables(op: &str, rule: &[String]) -> Result<(), String> {
        let out = Command::new("iptables")
            .arg("-w")
            .arg(op)
            .args(rule)
            .output()
            .map_err(|e| format!("iptables: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "iptables {op}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// A firewall, or why this machine cannot have one.
    fn new() -> Result<Firewall, String> {
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        if !root {
            return Err("not running as root".into());
        }
        Command::new("setpriv")
            .arg("--version")
            .output()
            .map_err(|e| format!("setpriv: {e}"))?;
        // Probe: add and remove a rule that matches nothing.
        let probe = Firewall::rules(u32::MAX - 1);
        Firewall::iptables("-I", &probe[0])?;
        Firewall::iptables("-D", &probe[0])?;
        Ok(Firewall { active: Vec::new() })
    }

    fn isolate(&mut self, uid: u32) {
        let [drop, mark] = Firewall::rules(uid);
        // Inserted at the top, the mark comes first and the drop right after it.
        Firewall::iptables("-I", &drop).expect("add drop rule");
        Firewall::iptables("-I", &mark).expect("add mark rule");
        self.active.push(uid);
    }

    fn heal(&mut self) {
        for uid in std::mem::take(&mut self.active) {
            for rule in Firewall::rules(uid) {
                let _ = Firewall::iptables("-D", &rule);
            }
        }
    }
}

impl Drop for Firewall {
    fn drop(&mut self) {
        self.heal();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_leader_and_a_partitioned_follower() {
    let mut fw = match Firewall::new() {
        Ok(fw) => fw,
        Err(why) => {
            eprintln!(
                "SKIPPED: a partition between processes needs root, setpriv and iptables: {why}"
            );
            return;
        }
    };
    // Users of their own, unlikely to exist, distinct per test process.
    let base = 40_000 + (std::process::id() % 5_000) * 4;
    let uids: BTreeMap<u64, u32> = (1..=3).map(|id| (id, base + id as u32)).collect();
    let mut c = Cluster::start_as(Some(uids.clone()));
    let leader = c.leader_among(&[1, 2, 3]).await;
    with_workload(&mut c, async |c: &mut Cluster| {
        run_for(Duration::from_secs(1)).await;
        fw.isolate(uids[&leader]);
        let others: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
        let new_leader = c.leader_among(&others).await;
        assert_ne!(new_leader, leader, "the majority side elects a new leader");
        run_for(Duration::from_secs(1)).await;
        fw.heal();

        let follower = *others
            .iter()
            .find(|id| **id != new_leader)
            .expect("a follower");
        fw.isolate(uids[&follower]);
        run_for(Duration::from_secs(2)).await;
        fw.heal();
        c.leader_among(&[1, 2, 3]).await;
        run_for(Duration::from_secs(1)).await;
    })
    .await;
}
