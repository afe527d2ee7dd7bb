//! A peer that stops answering is logged once when it goes and once when it comes back, not on
//! every heartbeat in between.

mod common;

use std::io::Write;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use common::Cmd;
use common::GrpcCluster;
use common::Kv;
use raft_core::NodeId;
use raft_grpc::ClientOptions;
use raft_grpc::ClusterClient;
use raft_grpc::GrpcOptions;
use tokio::time::Instant;

/// Every log line, kept for the test to count.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// How many lines say `what` about `peer`, from `node` or from any node.
    fn count(&self, what: &str, node: Option<NodeId>, peer: NodeId) -> usize {
        let peer = format!(" peer={peer} ");
        let node = node.map(|n| format!(" node={n} "));
        self.text()
            .lines()
            .filter(|l| l.contains(what) && l.contains(&peer))
            .filter(|l| node.as_ref().is_none_or(|n| l.contains(n.as_str())))
            .count()
    }

    /// Everything logged, for a failed assertion to show.
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// Waits until some node says `what` about `peer`.
    async fn wait_for(&self, what: &str, peer: NodeId) {
        let deadline = Instant::now() + common::WAIT;
        while self.count(what, None, peer) == 0 {
            assert!(
                Instant::now() < deadline,
                "no {what:?} logged:\n{}",
                self.text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Checks that no node said `what` about `peer` more than once.
    fn at_most_once_per_node(&self, what: &str, nodes: &[NodeId], peer: NodeId) {
        for &n in nodes {
            let count = self.count(what, Some(n), peer);
            assert!(
                count <= 1,
                "node {n} said {what:?} {count} times:\n{}",
                self.text()
            );
        }
    }
}

/// Every node logs what it sees of the stopped one: a leader change while it is down makes a
/// second node report it, which is right; one node reporting it twice is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_going_down_and_coming_back_is_logged_once_each_way() {
    const DOWN: &str = "peer does not answer";
    const UP: &str = "peer answers again";
    let logs = Captured::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_env_filter("warn,raft_grpc=info,openraft=error")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let mut c = GrpcCluster::start(3, GrpcOptions::default(), |c| c).await;
    let nodes: Vec<NodeId> = c.addrs.keys().copied().collect();
    let leader = c.leader().await;
    let follower = *c.addrs.keys().find(|id| **id != leader).unwrap();
    c.stop(follower).await;

    // The leader keeps heartbeating (every 50 ms) at the stopped node for a second.
    logs.wait_for(DOWN, follower).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    logs.at_most_once_per_node(DOWN, &nodes, follower);

    // Writes go on meanwhile, with a majority.
    let client = ClusterClient::<Kv>::new(c.endpoints(), ClientOptions::default()).unwrap();
    client
        .write(Cmd::Put("k".into(), "v".into()))
        .await
        .unwrap();

    c.launch(follower).await;
    logs.wait_for(UP, follower).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    logs.at_most_once_per_node(UP, &nodes, follower);
    logs.at_most_once_per_node(DOWN, &nodes, follower);
    // Only a node that reported the peer gone reports it back.
    for &n in &nodes {
        assert!(
            logs.count(UP, Some(n), follower) <= logs.count(DOWN, Some(n), follower),
            "node {n} reported {follower} back without reporting it gone:\n{}",
            logs.text()
        );
    }
}
