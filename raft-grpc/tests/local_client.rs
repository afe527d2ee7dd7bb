//! `LocalClient` through real gRPC nodes: its errors are typed (a redirect names the leader, a
//! write that cannot reach a quorum has an unknown outcome, a read without quorum says so), and
//! a state machine that answers no remote queries still gets a `GrpcNode` that writes.

mod common;

use std::time::Duration;
use std::time::Instant;

use common::Cmd;
use common::GrpcCluster;
use common::Query;
use common::Reply;
use raft_core::Consistency;
use raft_core::Role;
use raft_core::testing::Sum;
use raft_grpc::ClientError;
use raft_grpc::ClientOptions;
use raft_grpc::ClusterClient;
use raft_grpc::GrpcNode;
use raft_grpc::GrpcOptions;
use raft_grpc::RequestError;
use tokio::net::TcpListener;

fn no_forwarding() -> GrpcOptions {
    GrpcOptions::default().with_forward_to_leader(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_that_does_not_forward_names_the_leader() {
    let c = GrpcCluster::start(3, no_forwarding(), |c| c).await;
    let leader = c.leader().await;
    let follower = *c.addrs.keys().find(|id| **id != leader).unwrap();
    c.wait_until("the follower knows the leader's address", |c| {
        c.nodes[&follower].node().leader().addr() == Some(c.addrs[&leader].as_str())
    })
    .await;
    let client = c.nodes[&follower].client();

    let err = client
        .write(&Cmd::Put("k".into(), "v".into()))
        .await
        .unwrap_err();
    let RequestError::NotLeader(hint) = &err else {
        panic!("expected a redirect, got {err:?}");
    };
    assert_eq!(hint.id(), Some(leader));
    assert_eq!(hint.addr(), Some(c.addrs[&leader].as_str()));
    assert!(err.is_transient() && !err.may_have_applied(), "{err:?}");
    // Opening a session is a write too: refused the same way.
    assert!(matches!(
        client.register_session().await,
        Err(RequestError::NotLeader(_))
    ));

    // Refused means not applied: `k` is absent on the leader, and the leader's write after it
    // is the only entry for `k`.
    let on_leader = c.nodes[&leader].client();
    assert_eq!(
        on_leader
            .read(Query::Get("k".into()), Consistency::Linearizable)
            .await
            .unwrap(),
        Reply::Value(None)
    );
    on_leader
        .write(&Cmd::Put("k".into(), "from-leader".into()))
        .await
        .unwrap();
    let states = c.converged().await;
    for (id, kv) in &states {
        assert_eq!(
            kv.0.get("k").map(String::as_str),
            Some("from-leader"),
            "node {id}"
        );
    }
    // A follower still answers reads: it asks the leader for a read index.
    let r = client
        .read(Query::Get("k".into()), Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(r, Reply::Value(Some("from-leader".into())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_on_a_leader_without_quorum_has_an_unknown_outcome() {
    let mut c = GrpcCluster::start(3, GrpcOptions::default(), |c| {
        c.with_request_timeout(Duration::from_millis(1500))
    })
    .await;
    let leader = c.leader().await;
    let client = c.nodes[&leader].client().clone();
    // A session opened while the cluster is whole.
    let id = client.register_session().await.unwrap();
    let followers: Vec<_> = c.addrs.keys().copied().filter(|f| *f != leader).collect();
    for f in &followers {
        c.stop(*f).await;
    }

    let started = Instant::now();
    let session = raft_core::Session {
        client_id: id,
        sequence: 1,
    };
    let err = client
        .write_in_session(session, &Cmd::Put("k".into(), "v".into()))
        .await
        .unwrap_err();
    let took = started.elapsed();
    // The leader appended the write but could not commit it: it may still be applied (if a
    // later leader keeps the entry), so the outcome is unknown, never a refusal.
    assert!(
        matches!(
            err,
            RequestError::Timeout(_) | RequestError::OutcomeUnknown(_)
        ),
        "{err:?}"
    );
    assert!(err.may_have_applied() && err.is_transient(), "{err:?}");
    assert!(took < Duration::from_secs(10), "took {took:?}");

    // A linearizable read cannot confirm leadership without a quorum: nothing changed, and the
    // error says why (or the node has stepped down and names no leader).
    if c.nodes[&leader].node().role() == Role::Leader {
        let err = client
            .read(Query::Get("k".into()), Consistency::Linearizable)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                RequestError::NoQuorum(_) | RequestError::Timeout(_) | RequestError::NotLeader(_)
            ),
            "{err:?}"
        );
        assert!(err.is_transient(), "{err:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_state_machine_without_queries_runs_on_grpc_nodes() {
    common::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = Vec::new();
    let mut members = Vec::new();
    for id in 1..=3 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        members.push((id, listener.local_addr().unwrap().to_string()));
        let config = common::config(id, dir.path());
        let node = GrpcNode::start_without_queries(
            config,
            Sum::default(),
            listener,
            GrpcOptions::default(),
        )
        .await
        .unwrap();
        nodes.push(node);
    }
    nodes[0].node().initialize(members.clone()).await.unwrap();

    // Writes through any node: a follower forwards to the leader.
    let mut total = 0;
    for (i, node) in nodes.iter().enumerate() {
        let add = i as u64 + 1;
        let mut backoff = raft_grpc::Backoff::new(common::WAIT);
        total = loop {
            match node.client().write(&add).await {
                Ok(t) => break t,
                // The cluster is still electing its first leader.
                Err(e) if e.is_transient() && backoff.pause().await => {}
                Err(e) => panic!("write through node {}: {e:?}", i + 1),
            }
        };
    }
    assert_eq!(total, 6);
    // In-process reads need no `Queryable`: every node reaches the same count.
    let leader = nodes
        .iter()
        .find(|n| n.node().role() == Role::Leader)
        .expect("a leader answered the writes");
    let end = leader.node().metrics().last_log_index;
    for node in &nodes {
        node.node()
            .wait_for(common::WAIT, |m| m.applied_index >= end)
            .await
            .unwrap();
        let local = node
            .node()
            .read(Consistency::Local, |c: &Sum| c.0)
            .await
            .unwrap();
        assert_eq!(local, 6, "node {}", node.node().id());
    }

    // The cluster API's Read is refused as unimplemented, as a refusal retrying cannot fix;
    // the node carries on serving writes.
    let opts = ClientOptions::default().with_total_timeout(Duration::from_secs(5));
    let client = ClusterClient::<common::Kv>::new([members[0].1.clone()], opts).unwrap();
    let err = client
        .read_on(&members[0].1, Query::Get("k".into()), Consistency::Local)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Refused(r) if !r.is_transient()),
        "{err:?}"
    );
    assert_eq!(nodes[0].client().write(&4).await.unwrap(), 10);
    for node in nodes {
        node.shutdown().await.unwrap();
    }
}
