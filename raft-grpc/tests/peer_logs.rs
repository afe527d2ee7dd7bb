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
    fn count(&self, what: &str) -> usize {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|l| l.contains(what))
            .count()
    }

    /// Everything logged, for a failed assertion to show.
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    async fn wait_for(&self, what: &str) {
        let deadline = Instant::now() + common::WAIT;
        while self.count(what) == 0 {
            assert!(
                Instant::now() < deadline,
                "no {what:?} logged:\n{}",
                self.text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_going_down_and_coming_back_is_logged_once_each_way() {
    let logs = Captured::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_env_filter("warn,raft_grpc=info,openraft=error")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let mut c = GrpcCluster::start(3, GrpcOptions::default(), |c| c).await;
    let leader = c.leader().await;
    let follower = *c.addrs.keys().find(|id| **id != leader).unwrap();
    c.stop(follower).await;

    // The leader keeps heartbeating (every 50 ms) at the stopped node for a second.
    logs.wait_for("peer does not answer").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(logs.count("peer does not answer"), 1, "{}", logs.text());

    // Writes go on meanwhile, with a majority.
    let client = ClusterClient::<Kv>::new(c.endpoints(), ClientOptions::default()).unwrap();
    client
        .write(Cmd::Put("k".into(), "v".into()))
        .await
        .unwrap();

    c.launch(follower).await;
    logs.wait_for("peer answers again").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(logs.count("peer answers again"), 1, "{}", logs.text());
    assert_eq!(logs.count("peer does not answer"), 1, "{}", logs.text());
}
