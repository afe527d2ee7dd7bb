//! The storage alarm is cluster-wide over gRPC: a follower low on space (simulated through the
//! quota's test seam), or over its memory limit, makes the leader refuse writes that grow the
//! state, with a `no-space` status naming the follower, until the follower is back within its
//! limits. The leader asks with its
//! peer credentials, so the same holds in a cluster whose calls need a cluster secret.

mod common;

use std::time::Duration;
use std::time::Instant;

use common::Cmd;
use common::GrpcCluster;
use common::Kv;
use common::Query;
use common::Reply;
use raft_core::Config;
use raft_core::Consistency;
use raft_core::QuotaOptions;
use raft_grpc::AuthConfig;
use raft_grpc::ClientError;
use raft_grpc::ClientOptions;
use raft_grpc::ClusterClient;
use raft_grpc::ClusterSecret;
use raft_grpc::Credentials;
use raft_grpc::GrpcOptions;
use raft_grpc::RequestError;
use raft_grpc::auth::Auth;

fn fast_quota(c: Config) -> Config {
    c.with_quota(
        QuotaOptions::default()
            .with_min_free_bytes(1 << 20)
            .with_max_used_bytes(0)
            .with_check_interval(Duration::from_millis(50)),
    )
}

/// Waits at most 10 s for `condition` (disk samples and the leader's questions announce
/// themselves through no metrics change).
async fn eventually(what: &str, condition: impl Fn() -> bool) {
    raft_core::testing::eventually(Duration::from_secs(10), condition)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
}

/// What puts the follower in alarm.
#[derive(Clone, Copy)]
enum Alarm {
    /// Its file system reports 1,000 bytes free.
    Disk,
    /// Its memory limit is set to 1 byte: any process holds more.
    Memory,
}

impl Alarm {
    fn raise(self, node: &raft_core::Node<Kv>) {
        match self {
            Alarm::Disk => node.simulate_free_bytes(Some(1000)),
            Alarm::Memory => node.set_memory_limit(1),
        }
    }

    fn clear(self, node: &raft_core::Node<Kv>) {
        match self {
            Alarm::Disk => node.simulate_free_bytes(None),
            Alarm::Memory => node.set_memory_limit(0),
        }
    }

    /// Words the refusal's reason must hold.
    fn words(self) -> &'static str {
        match self {
            Alarm::Disk => "free on the data directory",
            Alarm::Memory => "of memory, above its limit",
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_in_alarm_makes_the_leader_refuse_growing_writes() {
    a_follower_in_alarm(
        GrpcOptions::default(),
        ClientOptions::default(),
        Alarm::Disk,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_over_its_memory_limit_makes_the_leader_refuse_growing_writes() {
    a_follower_in_alarm(
        GrpcOptions::default(),
        ClientOptions::default(),
        Alarm::Memory,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_alarm_travels_between_nodes_that_need_a_cluster_secret() {
    const SECRET: &str = "a cluster secret for the alarm test";
    let secret = ClusterSecret::new(SECRET).unwrap();
    let opts = GrpcOptions::default().with_auth(Auth::new(
        AuthConfig::default().with_cluster_secret(Some(secret)),
    ));
    let client =
        ClientOptions::default().with_credentials(Some(Credentials::bearer(SECRET).unwrap()));
    a_follower_in_alarm(opts, client, Alarm::Disk).await;
}

async fn a_follower_in_alarm(opts: GrpcOptions, client: ClientOptions, alarm: Alarm) {
    let c = GrpcCluster::start(3, opts, fast_quota).await;
    let client = ClusterClient::<Kv>::new(c.endpoints(), client).unwrap();
    client
        .write(Cmd::Put("a".into(), "1".into()))
        .await
        .unwrap();
    client
        .write(Cmd::Put("b".into(), "1".into()))
        .await
        .unwrap();

    let leader = c.leader().await;
    let follower = *c.addrs.keys().find(|id| **id != leader).unwrap();
    alarm.raise(c.nodes[&follower].node());
    let leader_node = c.nodes[&leader].node().clone();
    eventually("the leader learns of the follower's alarm", || {
        leader_node.storage().peer_alarms.contains_key(&follower)
    })
    .await;

    let started = Instant::now();
    match client.write(Cmd::Put("c".into(), "1".into())).await {
        Err(ClientError::Refused(RequestError::NoSpace(message))) => {
            assert!(message.contains(&format!("node {follower}")), "{message}");
            assert!(message.contains(alarm.words()), "{message}");
        }
        other => panic!("expected a no-space refusal, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the refusal is not retried: {:?}",
        started.elapsed()
    );
    // Reads and deletes go on.
    assert_eq!(
        client
            .read(Query::Get("a".into()), Consistency::Linearizable)
            .await
            .unwrap(),
        Reply::Value(Some("1".into()))
    );
    client.write(Cmd::Delete("b".into())).await.unwrap();

    // The follower is back within its limits: writes resume without a restart.
    alarm.clear(c.nodes[&follower].node());
    eventually("the leader hears the alarm cleared", || {
        !leader_node.storage().refusing_writes
    })
    .await;
    client
        .write(Cmd::Put("c".into(), "1".into()))
        .await
        .unwrap();
    let states = c.converged().await;
    for (id, kv) in states {
        assert_eq!(kv.0.get("c").map(String::as_str), Some("1"), "node {id}");
        assert_eq!(kv.0.get("b"), None, "node {id}");
    }
}
