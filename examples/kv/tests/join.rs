//! `kv node --join` against real processes: two nodes joining at the same time both end as
//! voters, and a join interrupted after the node became a learner resumes when it restarts.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::Path;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use raft_grpc::pb;
use raft_grpc::pb::cluster_client::ClusterClient;

const WAIT: Duration = Duration::from_secs(30);

/// A port that is free now, chosen below the kernel's ephemeral range so that the outgoing
/// connections of other tests cannot take it before the process we start binds it.
fn free_port() -> u16 {
    use std::sync::atomic::AtomicU16;
    use std::sync::atomic::Ordering;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let start = (std::process::id() % 1000) as u16 * 10;
    (0..12_000)
        .map(|_| 20_000 + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % 12_000)
        .find(|port| TcpListener::bind(("127.0.0.1", *port)).is_ok())
        .expect("a free port in 20000-31999")
}

/// One `kv node` process, killed (`kill -9`) when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Ports {
    raft: u16,
    resp: u16,
}

impl Ports {
    fn new() -> Ports {
        Ports {
            raft: free_port(),
            resp: free_port(),
        }
    }
    fn raft_addr(&self) -> String {
        format!("127.0.0.1:{}", self.raft)
    }
}

fn spawn(dir: &Path, id: u64, ports: &Ports, extra: &[String]) -> Proc {
    let data = dir.join(format!("n{id}"));
    std::fs::create_dir_all(&data).expect("data dir");
    let log = std::fs::File::options()
        .create(true)
        .append(true)
        .open(dir.join(format!("n{id}.log")))
        .expect("log file");
    let child = Command::new(env!("CARGO_BIN_EXE_kv"))
        .args(["node", "--id", &id.to_string()])
        .arg("--data-dir")
        .arg(&data)
        .args(["--raft-addr", &ports.raft_addr()])
        .args(["--resp-addr", &format!("127.0.0.1:{}", ports.resp)])
        .args(extra)
        .env("RUST_LOG", "warn,kv=info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn kv");
    Proc(child)
}

fn logs(dir: &Path) -> String {
    (1..=3)
        .map(|id| {
            let log = std::fs::read_to_string(dir.join(format!("n{id}.log"))).unwrap_or_default();
            format!("--- node {id}\n{log}")
        })
        .collect()
}

async fn status(addr: &str) -> Option<pb::StatusReply> {
    let mut c = ClusterClient::connect(format!("http://{addr}"))
        .await
        .ok()?;
    c.status(pb::StatusRequest {})
        .await
        .ok()
        .map(|r| r.into_inner())
}

/// Polls node `addr` until its view of the cluster satisfies `done`; panics with every node's
/// log after [`WAIT`].
async fn wait_for(dir: &Path, addr: &str, what: &str, done: impl Fn(&pb::StatusReply) -> bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(s) = status(addr).await
            && done(&s)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {WAIT:?}\n{}",
            logs(dir)
        );
        // Another process's progress: there is nothing in this process to wait on.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn voters(s: &pb::StatusReply) -> BTreeSet<u64> {
    s.voters.iter().map(|m| m.id).collect()
}

/// Node 1 alone, initialized as a one-node cluster and leading.
async fn first_node(dir: &Path, ports: &Ports) -> Proc {
    let p = spawn(
        dir,
        1,
        ports,
        &[
            "--initial-members".into(),
            format!("1={}", ports.raft_addr()),
        ],
    );
    wait_for(dir, &ports.raft_addr(), "node 1 leads", |s| {
        s.role == "leader"
    })
    .await;
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_joining_at_once_both_become_voters() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let p1 = Ports::new();
    let _n1 = first_node(dir, &p1).await;
    let join = ["--join".to_string(), p1.raft_addr()];
    let (p2, p3) = (Ports::new(), Ports::new());
    let mut n2 = spawn(dir, 2, &p2, &join);
    let mut n3 = spawn(dir, 3, &p3, &join);
    wait_for(dir, &p1.raft_addr(), "both joiners are voters", |s| {
        voters(s) == BTreeSet::from([1, 2, 3]) && s.learners.is_empty()
    })
    .await;
    for (id, n) in [(2, &mut n2), (3, &mut n3)] {
        assert!(
            n.0.try_wait().expect("process state").is_none(),
            "node {id} exited after joining\n{}",
            logs(dir)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_interrupted_after_the_learner_step_resumes_on_restart() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let p1 = Ports::new();
    let _n1 = first_node(dir, &p1).await;

    // Node 2 is added as a learner, as a join does first, and is killed before its promotion.
    let p2 = Ports::new();
    let n2 = spawn(dir, 2, &p2, &[]);
    let mut admin = ClusterClient::connect(format!("http://{}", p1.raft_addr()))
        .await
        .expect("connect to node 1");
    admin
        .add_learner(pb::AddLearnerRequest {
            node_id: 2,
            addr: p2.raft_addr(),
        })
        .await
        .expect("add node 2 as a learner");
    wait_for(dir, &p2.raft_addr(), "node 2 is a learner", |s| {
        s.role == "learner"
    })
    .await;
    drop(n2);

    // Restarted with --join, it finishes the join.
    let _n2 = spawn(dir, 2, &p2, &["--join".to_string(), p1.raft_addr()]);
    wait_for(dir, &p1.raft_addr(), "node 2 became a voter", |s| {
        voters(s) == BTreeSet::from([1, 2]) && s.learners.is_empty()
    })
    .await;
}
