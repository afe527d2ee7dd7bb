//! Authentication and authorization: peers prove they know the cluster secret, calls from
//! another cluster are refused, and callers of the cluster service need the right role.

mod common;

use std::time::Duration;

use common::Cmd;
use common::GrpcCluster;
use common::Kv;
use common::Query;
use common::Reply;
use raft_core::Consistency;
use raft_core::NodeId;
use raft_grpc::AuthConfig;
use raft_grpc::ClientError;
use raft_grpc::ClientOptions;
use raft_grpc::ClusterClient;
use raft_grpc::ClusterSecret;
use raft_grpc::Credentials;
use raft_grpc::GrpcOptions;
use raft_grpc::RequestError;
use raft_grpc::Role;
use raft_grpc::User;
use raft_grpc::auth::Auth;
use raft_grpc::pb;
use raft_grpc::pb::raft_internal_client::RaftInternalClient;
use raft_grpc::status::ErrorCode;
use tonic::Code;
use tonic::Request;
use tonic::transport::Channel;

const SECRET: &str = "a cluster secret for the tests, long enough";
/// A term no election in a test ever reaches.
const HUGE_TERM: u64 = 1 << 60;

fn secured(users: Vec<User>) -> GrpcOptions {
    GrpcOptions::default().with_auth(Auth::new(
        AuthConfig::default()
            .with_cluster_secret(Some(ClusterSecret::new(SECRET).unwrap()))
            .with_users(users),
    ))
}

fn user(name: &str, role: Role) -> User {
    User::new(name, format!("{name}-token"), role)
}

fn client(c: &GrpcCluster, token: Option<&str>) -> ClusterClient<Kv> {
    let opts = ClientOptions::default()
        .with_credentials(token.map(|t| Credentials::bearer(t).unwrap()))
        .with_attempt_timeout(Duration::from_secs(2))
        .with_total_timeout(Duration::from_secs(5));
    ClusterClient::new(c.endpoints(), opts).unwrap()
}

fn channel(addr: &str) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy()
}

/// A well-formed vote request from a made-up candidate with a huge term.
fn huge_vote(target: NodeId) -> Request<pb::RaftRequest> {
    let vote = raft_core::transport::rpc::VoteRequest::new(
        openraft::impls::Vote::new(HUGE_TERM, 99),
        None,
    );
    let mut req = Request::new(pb::RaftRequest {
        target,
        payload: raft_core::codec::encode(&vote).unwrap().into(),
    });
    req.set_timeout(Duration::from_secs(5));
    req
}

/// A heartbeat from a made-up leader with a huge term.
fn huge_append(target: NodeId) -> Request<pb::RaftRequest> {
    let append = raft_core::transport::rpc::AppendEntriesRequest {
        vote: openraft::impls::Vote::new_committed(HUGE_TERM, 99),
        prev_log_id: None,
        entries: vec![],
        leader_commit: None,
    };
    let mut req = Request::new(pb::RaftRequest {
        target,
        payload: raft_core::codec::encode(&append).unwrap().into(),
    });
    req.set_timeout(Duration::from_secs(5));
    req
}

fn unauthenticated<T: std::fmt::Debug>(r: Result<T, tonic::Status>) {
    let s = r.expect_err("an unauthenticated call is refused");
    assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unauthenticated_peers_change_nothing_even_after_a_restart() {
    // Control: without a secret, the very same request takes effect (the term jumps), so the
    // refusal below is the secret's doing.
    let open = GrpcCluster::start(1, GrpcOptions::default(), |c| c).await;
    let mut raw = RaftInternalClient::new(channel(&open.addrs[&1]));
    let mut req = huge_append(1);
    let id = open.nodes[&1].node().cluster_id().unwrap().to_string();
    req.metadata_mut()
        .insert("x-raftkit-cluster-id", id.parse().unwrap());
    raw.append_entries(req).await.unwrap();
    open.nodes[&1]
        .node()
        .wait_for(common::WAIT, |m| m.term >= HUGE_TERM)
        .await
        .expect("an unauthenticated heartbeat moves an open node's term");

    let mut c = GrpcCluster::start(3, secured(vec![]), |c| c).await;
    let leader = c.leader().await;
    let target = *c.addrs.keys().find(|id| **id != leader).unwrap();
    let mut raw = RaftInternalClient::new(channel(&c.addrs[&target]));
    unauthenticated(raw.vote(huge_vote(target)).await);
    unauthenticated(raw.append_entries(huge_append(target)).await);
    unauthenticated(raw.pre_vote(huge_vote(target)).await);
    // A wrong token is no better than none.
    let mut wrong = huge_vote(target);
    let other = ClusterSecret::new("some other secret, long enough").unwrap();
    wrong
        .metadata_mut()
        .insert("x-raftkit-peer-token", other.peer_token().parse().unwrap());
    unauthenticated(raw.vote(wrong).await);

    // Restart the node: its persisted term is the cluster's, not the attacker's.
    // (A graceful shutdown waits for open connections, so close ours first.)
    drop(raw);
    c.stop(target).await;
    c.launch(target).await;
    c.leader().await;
    for (id, n) in &c.nodes {
        let term = n.node().metrics().term;
        assert!(term < 1000, "node {id} has term {term}");
    }
    // The cluster still works for a caller with the secret.
    let admin = client(&c, Some(SECRET));
    admin.write(Cmd::Put("k".into(), "v".into())).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn calls_from_another_cluster_are_refused_naming_both_ids() {
    let c = GrpcCluster::start(3, secured(vec![]), |c| c).await;
    let ours = c.nodes[&1]
        .node()
        .cluster_id()
        .expect("initialize draws an id");
    // Every member learnt the same id.
    c.wait_until("every node knows the cluster id", |c| {
        c.nodes
            .values()
            .all(|n| n.node().cluster_id() == Some(ours))
    })
    .await;
    let before = c.nodes[&2].node().metrics().term;

    // A peer that knows the secret but belongs to another cluster (say, after an address was
    // reused) is refused, and the error names both clusters.
    let theirs = raft_core::ClusterId::random();
    let mut raw = RaftInternalClient::new(channel(&c.addrs[&2]));
    let mut req = huge_vote(2);
    let token = ClusterSecret::new(SECRET).unwrap();
    let meta = req.metadata_mut();
    meta.insert("x-raftkit-peer-token", token.peer_token().parse().unwrap());
    meta.insert("x-raftkit-cluster-id", theirs.to_string().parse().unwrap());
    let s = raw.vote(req).await.unwrap_err();
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    assert_eq!(ErrorCode::of(&s), Some(ErrorCode::WrongCluster), "{s:?}");
    assert!(s.message().contains(&ours.to_string()), "{s:?}");
    assert!(s.message().contains(&theirs.to_string()), "{s:?}");
    // No cluster id at all is refused too, by a node that has one.
    let mut req = huge_vote(2);
    req.metadata_mut()
        .insert("x-raftkit-peer-token", token.peer_token().parse().unwrap());
    let s = raw.vote(req).await.unwrap_err();
    assert_eq!(ErrorCode::of(&s), Some(ErrorCode::WrongCluster), "{s:?}");
    let after = c.nodes[&2].node().metrics().term;
    assert!(after < 1000 && after >= before, "term {before} -> {after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_calls_need_the_admin_role() {
    let c = GrpcCluster::start(
        3,
        secured(vec![
            user("reader", Role::Read),
            user("writer", Role::Write),
        ]),
        |c| c,
    )
    .await;
    let leader = c.leader().await;
    let follower = *c.addrs.keys().find(|id| **id != leader).unwrap();
    let members = |c: &GrpcCluster| {
        let m = c.nodes[&leader].node().metrics();
        (m.voters.clone(), m.learners.clone(), m.leader)
    };
    let before = members(&c);

    for token in [Some("writer-token"), Some("reader-token")] {
        let cl = client(&c, token);
        let denied = |r: Result<(), ClientError>, what: &str| match r {
            Err(ClientError::Refused(RequestError::PermissionDenied(_))) => {}
            other => panic!("{what} with {token:?}: {other:?}"),
        };
        denied(cl.add_learner(99, "127.0.0.1:1").await, "AddLearner");
        denied(cl.change_membership([leader]).await, "ChangeMembership");
        denied(cl.remove_node(follower).await, "RemoveNode");
        denied(cl.transfer_leader(follower).await, "TransferLeader");
        let tiny = raft_core::SessionCapacity::default().with_max_sessions(1);
        denied(cl.set_session_capacity(tiny).await, "SetSessionCapacity");
        let mut out = Vec::new();
        denied(cl.backup(&mut out).await.map(drop), "Backup");
        assert!(out.is_empty(), "nothing of the state leaks");
    }
    let capacity = c.nodes[&leader].node().session_capacity();
    assert_eq!(capacity, raft_core::SessionCapacity::default());
    // Without credentials, or with wrong ones: unauthenticated.
    for token in [None, Some("nonsense")] {
        match client(&c, token).remove_node(follower).await {
            Err(ClientError::Refused(RequestError::Unauthenticated(_))) => {}
            other => panic!("{token:?}: {other:?}"),
        }
    }
    // A reader reads but cannot write.
    let reader = client(&c, Some("reader-token"));
    match reader.write(Cmd::Put("r".into(), "x".into())).await {
        Err(ClientError::Refused(RequestError::PermissionDenied(_))) => {}
        other => panic!("{other:?}"),
    }
    // A reader's write is refused on its headers, before its message is read: one larger
    // than a node decodes at all is refused for the role, not for its size.
    let big_reader = ClusterClient::<Kv>::new(
        c.endpoints(),
        ClientOptions::default()
            .with_credentials(Some(Credentials::bearer("reader-token").unwrap()))
            .with_max_message_bytes(128 << 20)
            .with_total_timeout(Duration::from_secs(10)),
    )
    .unwrap();
    let session = raft_core::Session {
        client_id: 1,
        sequence: 1,
    };
    let huge = Cmd::Put("r".into(), "x".repeat(70 << 20));
    match big_reader.write_in_session(session, huge).await {
        Err(ClientError::Refused(RequestError::PermissionDenied(_))) => {}
        other => panic!("a reader's 70 MiB write: {other:?}"),
    }
    // A writer writes, through the follower too (forwarded under the writer's identity).
    let writer = ClusterClient::<Kv>::new(
        [c.addrs[&follower].clone()],
        ClientOptions::default()
            .with_credentials(Some(Credentials::bearer("writer-token").unwrap())),
    )
    .unwrap();
    writer
        .write(Cmd::Put("w".into(), "1".into()))
        .await
        .unwrap();
    assert_eq!(
        reader
            .read(Query::Get("w".into()), Consistency::Linearizable)
            .await
            .unwrap(),
        Reply::Value(Some("1".into()))
    );
    assert_eq!(members(&c), before, "membership and leadership unchanged");
    for (id, s) in c.converged().await {
        assert_eq!(s.0.get("r"), None, "node {id}");
    }

    // The cluster secret is an admin credential.
    let admin = client(&c, Some(SECRET));
    let changed = raft_core::SessionCapacity::default().with_max_sessions(500);
    admin.set_session_capacity(changed).await.unwrap();
    assert_eq!(c.nodes[&leader].node().session_capacity(), changed);
    admin.transfer_leader(follower).await.unwrap();
    c.wait_until("leadership moved", |c| {
        c.nodes[&follower].node().metrics().role == raft_core::Role::Leader
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reloaded_secret_takes_effect() {
    let c = GrpcCluster::start(3, secured(vec![]), |c| c).await;
    let old = client(&c, Some(SECRET));
    old.write(Cmd::Put("a".into(), "1".into())).await.unwrap();

    // Every node shares `c.opts.auth` here, so one reload changes the secret everywhere (kv
    // nodes each reload their own file).
    let new_secret = "the rotated cluster secret, also long";
    c.opts.auth.reload(
        AuthConfig::default().with_cluster_secret(Some(ClusterSecret::new(new_secret).unwrap())),
    );
    match old.write(Cmd::Put("b".into(), "2".into())).await {
        Err(ClientError::Refused(RequestError::Unauthenticated(_))) => {}
        other => panic!("the old secret still works: {other:?}"),
    }
    let new = client(&c, Some(new_secret));
    new.write(Cmd::Put("c".into(), "3".into())).await.unwrap();
    // Replication carries on under the new secret: every node applies the new write.
    for (id, s) in c.converged().await {
        assert_eq!(s.0.get("c").map(String::as_str), Some("3"), "node {id}");
        assert_eq!(s.0.get("b"), None, "node {id}");
    }
}

/// Whether node `target` (at `addr`) accepts `token` as a peer's: a vote for a node that does
/// not exist passes the peer check and is then refused by the server as invalid.
async fn accepts_peer_token(addr: &str, cluster_id: &str, target: NodeId, token: &str) -> bool {
    let mut raw = RaftInternalClient::new(channel(addr));
    let mut req = huge_vote(target + 1000);
    let meta = req.metadata_mut();
    meta.insert("x-raftkit-cluster-id", cluster_id.parse().unwrap());
    meta.insert("x-raftkit-peer-token", token.parse().unwrap());
    let s = raw.vote(req).await.expect_err("no such node");
    match s.code() {
        Code::Unauthenticated => false,
        _ => {
            assert_eq!(ErrorCode::of(&s), Some(ErrorCode::InvalidRequest), "{s:?}");
            true
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_secret_rotates_one_node_at_a_time_without_refusals() {
    const NEW: &str = "the cluster secret after the rotation";
    let (old, new) = (
        ClusterSecret::new(SECRET).unwrap(),
        ClusterSecret::new(NEW).unwrap(),
    );
    let writer = user("writer", Role::Write);
    let config = |send: &ClusterSecret, also: Option<&ClusterSecret>| {
        AuthConfig::default()
            .with_cluster_secret(Some(send.clone()))
            .with_previous_secret(also.cloned())
            .with_users(vec![writer.clone()])
    };
    // Each node its own settings, as kv nodes each read their own file.
    let auths: std::collections::BTreeMap<NodeId, Auth> = (1..=3)
        .map(|id| (id, Auth::new(config(&old, None))))
        .collect();
    let per_node = auths
        .iter()
        .map(|(id, auth)| {
            let opts = GrpcOptions::default().with_auth(auth.clone());
            (*id, opts)
        })
        .collect();
    let c = GrpcCluster::start_each(3, GrpcOptions::default(), per_node, |c| c).await;
    let cluster_id = c.nodes[&1].node().cluster_id().unwrap().to_string();
    let writes = client(&c, Some("writer-token"));

    // The three passes of SECURITY.md's procedure, each node in turn, leader first.
    let leader = c.leader().await;
    let mut order: Vec<NodeId> = vec![leader];
    order.extend((1..=3).filter(|id| *id != leader));
    let passes: [(&ClusterSecret, Option<&ClusterSecret>); 3] =
        [(&old, Some(&new)), (&new, Some(&old)), (&new, None)];
    let mut step = 0;
    for (send, also) in passes {
        for id in &order {
            auths[id].reload(config(send, also));
            step += 1;
            // Every node accepts the token every node now sends.
            let sent: Vec<String> = auths
                .values()
                .map(|a| {
                    let cfg = a.current();
                    cfg.cluster_secret
                        .as_ref()
                        .unwrap()
                        .peer_token()
                        .to_string()
                })
                .collect();
            for (target, addr) in &c.addrs {
                for token in &sent {
                    assert!(
                        accepts_peer_token(addr, &cluster_id, *target, token).await,
                        "step {step}: node {target} refuses a token a peer sends"
                    );
                }
            }
            // And the cluster commits a write, on every node.
            let key = format!("k{step}");
            writes
                .write(Cmd::Put(key.clone(), step.to_string()))
                .await
                .unwrap_or_else(|e| panic!("step {step}: {e:?}"));
            for (n, s) in c.converged().await {
                assert_eq!(
                    s.0.get(&key),
                    Some(&step.to_string()),
                    "step {step}, node {n}"
                );
            }
        }
    }
    // After the rotation, the old secret opens nothing: not as a peer, not as a bearer.
    for (target, addr) in &c.addrs {
        assert!(
            !accepts_peer_token(addr, &cluster_id, *target, old.peer_token()).await,
            "node {target} still accepts the old secret"
        );
    }
    match client(&c, Some(SECRET))
        .write(Cmd::Put("x".into(), "y".into()))
        .await
    {
        Err(ClientError::Refused(RequestError::Unauthenticated(_))) => {}
        other => panic!("the old secret still works as a bearer: {other:?}"),
    }
    client(&c, Some(NEW))
        .write(Cmd::Put("z".into(), "1".into()))
        .await
        .unwrap();
}
