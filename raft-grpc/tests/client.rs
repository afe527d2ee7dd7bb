//! `ClusterClient` against real nodes: it finds the leader within one attempt timeout however
//! many of its listed addresses never answer, closing it closes the sessions its writes opened,
//! and a membership change the leader works on for longer than an attempt timeout gets the
//! leader's answer.

mod common;

use std::time::Duration;
use std::time::Instant;

use common::Cmd;
use common::GrpcCluster;
use common::Kv;
use raft_core::Consistency;
use raft_grpc::ClientError;
use raft_grpc::ClientOptions;
use raft_grpc::ClusterClient;
use raft_grpc::GrpcOptions;
use raft_grpc::RequestError;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// An address on 127.0.0.1 that accepts connections and never answers on them; it stops when
/// the task is aborted (or the test's runtime ends).
async fn black_hole() -> (String, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_is_found_past_black_holed_addresses_within_one_attempt_timeout() {
    // Long enough that a debug build on a busy host (a whole test suite on two cores) answers
    // well inside it; the black holes never answer, so waiting for them one after another would
    // take three of them.
    const ATTEMPT: Duration = Duration::from_secs(10);
    // For gathering every node's view, which waits for the black holes: one attempt timeout.
    const GATHER: Duration = Duration::from_secs(3);
    let c = GrpcCluster::start(3, GrpcOptions::default(), |c| c).await;
    let leader = c.leader().await;
    let follower = *c.addrs.keys().find(|id| **id != leader).unwrap();
    let mut holes = Vec::new();
    for _ in 0..3 {
        holes.push(black_hole().await);
    }
    // The three black holes first, then one follower, which names the leader.
    let client_with = |attempt: Duration| -> ClusterClient<Kv> {
        let mut endpoints: Vec<String> = holes.iter().map(|(a, _)| a.clone()).collect();
        endpoints.push(c.addrs[&follower].clone());
        let opts = ClientOptions::default()
            .with_attempt_timeout(attempt)
            .with_total_timeout(attempt * 10);
        ClusterClient::new(endpoints, opts).unwrap()
    };
    let client = client_with(ATTEMPT);

    let started = Instant::now();
    let (id, addr) = client.leader().await.unwrap();
    let took = started.elapsed();
    assert_eq!((id, addr.as_str()), (leader, c.addrs[&leader].as_str()));
    eprintln!(
        "leader found past 3 black-holed addresses in {took:?} (attempt timeout {ATTEMPT:?})"
    );
    assert!(
        took < ATTEMPT,
        "finding the leader took {took:?}, more than one attempt timeout"
    );

    // The answer is remembered: a write goes straight to the leader, not through a follower.
    let forwarded_before = c.nodes[&follower].stats().forwarded();
    client
        .write(Cmd::Put("k".into(), "v".into()))
        .await
        .unwrap();
    assert_eq!(c.nodes[&follower].stats().forwarded(), forwarded_before);

    // Every listed node's view is gathered in one attempt timeout too: the holes are waited for
    // together, not one after another.
    let client = client_with(GATHER);
    let started = Instant::now();
    let views = client.statuses().await;
    let took = started.elapsed();
    eprintln!("statuses of 4 addresses, 3 black-holed, in {took:?}");
    assert_eq!(
        views.keys().collect::<Vec<_>>(),
        vec![&c.addrs[&follower]],
        "only the follower answers"
    );
    assert!(
        took < GATHER * 2,
        "gathering the statuses took {took:?}, more than one attempt timeout"
    );
    for (_, hole) in holes {
        hole.abort();
    }
}

/// A three-node cluster, its leader, and a client of it with the default options.
async fn cluster_and_client() -> (GrpcCluster, u64, ClusterClient<Kv>) {
    let c = GrpcCluster::start(3, GrpcOptions::default(), |c| c).await;
    let leader = c.leader().await;
    let client = ClusterClient::new(c.endpoints(), ClientOptions::default()).unwrap();
    (c, leader, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_client_closes_the_sessions_its_writes_opened() {
    let (c, leader, client) = cluster_and_client().await;
    let open = |id| c.nodes[&id].node().open_sessions();
    let before = open(leader);

    // Four writes at once: each opens a session of its own, and the cluster holds all four.
    let writes = (0..4).map(|i| client.write(Cmd::Put(format!("k{i}"), "v".into())));
    for r in futures_util::future::join_all(writes).await {
        r.unwrap();
    }
    assert_eq!(open(leader), before + 4);

    // A write through a clone is in flight (it has taken a session) when the client closes.
    let clone = client.clone();
    let mut in_flight = Box::pin(clone.write(Cmd::Put("late".into(), "v".into())));
    // Polled exactly once: a write over gRPC cannot finish within one poll. (A zero timeout
    // is not one poll: tokio's timer rounds it up to its next millisecond tick, and a fast
    // write could finish in that time.)
    if let std::task::Poll::Ready(done) = futures_util::poll!(&mut in_flight) {
        panic!("the write should be under way, but it ended at its first poll: {done:?}");
    }
    let later = client.clone();
    client.close().await.unwrap();
    // The three idle sessions are gone; the one in use stays until its write ends.
    assert_eq!(open(leader), before + 1);
    assert_eq!(in_flight.await.unwrap(), Some("v".into()));
    assert_eq!(
        open(leader),
        before,
        "the write closed its session as it ended"
    );
    c.wait_until("every node dropped the client's sessions", |c| {
        c.nodes.values().all(|n| n.node().open_sessions() == before)
    })
    .await;

    // A write after close is refused without opening a session; reads still work.
    assert!(matches!(
        later.write(Cmd::Put("after".into(), "v".into())).await,
        Err(ClientError::Closed)
    ));
    assert_eq!(open(leader), before);
    assert_eq!(
        later
            .read(common::Query::Get("late".into()), Consistency::Linearizable)
            .await
            .unwrap(),
        common::Reply::Value(Some("v".into()))
    );
}

/// A write whose future is dropped while it is in flight (a timeout or a `select!` around it)
/// gives its session back: the next write reuses it instead of opening another, and closing
/// the client closes it. Left behind, each such write held a session the cluster replicates
/// until eviction, and the next one registered a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_dropped_in_flight_gives_its_session_back() {
    let (c, leader, client) = cluster_and_client().await;
    let open = |id| c.nodes[&id].node().open_sessions();
    let before = open(leader);
    client
        .write(Cmd::Put("a".into(), "1".into()))
        .await
        .unwrap();
    assert_eq!(open(leader), before + 1);

    for i in 0..3 {
        let mut dropped = Box::pin(client.write(Cmd::Put(format!("dropped{i}"), "v".into())));
        // Polled once, so it has taken the session and sent the write (see above), then dropped.
        if let std::task::Poll::Ready(done) = futures_util::poll!(&mut dropped) {
            panic!("the write should be under way, but it ended at its first poll: {done:?}");
        }
        drop(dropped);
    }
    client
        .write(Cmd::Put("b".into(), "2".into()))
        .await
        .unwrap();
    assert_eq!(open(leader), before + 1, "a dropped write kept its session");

    client.close().await.unwrap();
    c.wait_until("every node dropped the client's session", |c| {
        c.nodes.values().all(|n| n.node().open_sessions() == before)
    })
    .await;
}

/// A learner that cannot catch up is reported as such: the leader waits its request timeout for
/// it, longer than the client's default attempt timeout (5 s), and the attempt outlasts that
/// wait rather than being cut off and sent again until the client gives up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_that_cannot_catch_up_is_reported_not_retried_until_the_client_gives_up() {
    const LEADER_WAITS: Duration = Duration::from_secs(7);
    let c = GrpcCluster::start(1, GrpcOptions::default(), |c| {
        c.with_request_timeout(LEADER_WAITS)
    })
    .await;
    c.leader().await;
    // An address where nothing listens: the learner never receives the log.
    let nobody = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = nobody.local_addr().unwrap().to_string();
    drop(nobody);
    let opts = ClientOptions::default().with_total_timeout(Duration::from_secs(20));
    let client: ClusterClient<Kv> = ClusterClient::new(c.endpoints(), opts).unwrap();
    let start = Instant::now();
    let added = client.add_learner(9, addr).await;
    let took = start.elapsed();
    assert!(
        matches!(
            added,
            Err(ClientError::Refused(RequestError::LearnerNotCaughtUp(_)))
        ),
        "{added:?} after {took:?}"
    );
    assert!(
        took >= LEADER_WAITS && took < LEADER_WAITS + Duration::from_secs(5),
        "answered after {took:?}"
    );
}
