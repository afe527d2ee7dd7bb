//! `kv node --join` against real processes: two nodes joining at the same time both end as
//! voters, a join interrupted after the node became a learner resumes when it restarts, and a
//! node whose data was wiped cannot join again under its old id.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::Ports;
use common::Proc;
use common::spawn;
use raft_grpc::pb;
use raft_grpc::pb::cluster_client::ClusterClient;

/// Polls node `addr` until its view of the cluster satisfies `done`.
async fn wait_for(dir: &Path, addr: &str, what: &str, done: impl Fn(&pb::StatusReply) -> bool) {
    common::poll(what, dir, &[1, 2, 3], || async {
        common::status(addr).await.filter(|s| done(s)).map(|_| ())
    })
    .await
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

/// Node 1, then nodes 2 and 3 joining it at the same time; returns once all three are voters.
async fn three_by_joining(dir: &Path) -> [(Ports, Proc); 3] {
    let p1 = Ports::new();
    let n1 = first_node(dir, &p1).await;
    let join = ["--join".to_string(), p1.raft_addr()];
    let (p2, p3) = (Ports::new(), Ports::new());
    let n2 = spawn(dir, 2, &p2, &join);
    let n3 = spawn(dir, 3, &p3, &join);
    wait_for(dir, &p1.raft_addr(), "both joiners are voters", |s| {
        voters(s) == BTreeSet::from([1, 2, 3]) && s.learners.is_empty()
    })
    .await;
    [(p1, n1), (p2, n2), (p3, n3)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_joining_at_once_both_become_voters() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let [(_p1, _n1), (_p2, mut n2), (_p3, mut n3)] = three_by_joining(dir).await;
    for (id, n) in [(2, &mut n2), (3, &mut n3)] {
        assert!(
            n.running(),
            "node {id} exited after joining\n{}",
            common::logs(dir, [1, 2, 3])
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
            incarnation: 0,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_cannot_join_again_under_its_old_id() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let [(p1, _n1), (p2, n2), (_p3, _n3)] = three_by_joining(dir).await;
    let join = ["--join".to_string(), p1.raft_addr()];

    // Node 2 loses its data and comes back under the same id: the cluster refuses it, and the
    // node stops with a message that says what to do.
    drop(n2);
    std::fs::remove_dir_all(dir.join("n2")).expect("wipe node 2");
    let mut again = spawn(dir, 2, &p2, &join);
    common::poll("the wiped node 2 gives up", dir, &[1, 2, 3], || {
        let exited = !again.running();
        async move { exited.then_some(()) }
    })
    .await;
    let log = std::fs::read_to_string(dir.join("n2.log")).unwrap_or_default();
    assert!(
        log.contains("its data was wiped") && log.contains("join under a new id"),
        "{}",
        common::logs(dir, [1, 2, 3])
    );
    // The others carry on.
    wait_for(
        dir,
        &p1.raft_addr(),
        "nodes 1 and 3 still lead and follow",
        |s| s.role == "leader" && voters(s) == BTreeSet::from([1, 2, 3]),
    )
    .await;
}
