//! Replication always makes progress over real gRPC: the largest command a node accepts is
//! replicated, a follower far behind on large writes catches up, a misconfiguration is refused
//! at start, and the snapshot receive path checks the sender before taking any data. A read's
//! reply fits the message limit to the byte, and one past it is refused with a typed error.

mod common;

use std::time::Duration;
use std::time::Instant;

use common::Cmd;
use common::GrpcCluster;
use common::Query;
use raft_core::Config;
use raft_core::Consistency;
use raft_core::types::Vote;
use raft_grpc::ClientError;
use raft_grpc::ClientOptions;
use raft_grpc::ClusterClient;
use raft_grpc::GrpcNode;
use raft_grpc::GrpcOptions;
use raft_grpc::LimitsError;
use raft_grpc::RequestError;
use raft_grpc::ServeError;
use raft_grpc::StartError;
use raft_grpc::pb;
use raft_grpc::pb::raft_internal_client::RaftInternalClient;
use tokio::net::TcpListener;
use tonic::Code;
use tonic::Request;

const MIB: usize = 1 << 20;

/// A `Put` of key `key` whose encoding is exactly `size` bytes.
fn put_of_size(key: &str, size: usize) -> Cmd {
    let encoded = |len: usize| {
        raft_core::codec::encode(&Cmd::Put(key.into(), "v".repeat(len)))
            .unwrap()
            .len()
    };
    let len = (size - 16..size)
        .find(|len| encoded(*len) == size)
        .expect("a value length with that encoded size");
    Cmd::Put(key.into(), "v".repeat(len))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_command_of_exactly_the_limit_commits_and_replicates() {
    // The smallest message size the start-up check allows for a 2 MiB command.
    let opts = GrpcOptions::default().with_max_message_bytes(
        2 * MIB + raft_core::log::ENTRY_FRAMING + raft_grpc::MESSAGE_FRAMING,
    );
    let c = GrpcCluster::start(3, opts, |mut c| {
        c.max_command_bytes = 2 * MIB;
        c.max_append_bytes = MIB;
        c
    })
    .await;
    let leader = c.leader().await;
    let started = Instant::now();
    let cmd = put_of_size("k", 2 * MIB);
    assert_eq!(raft_core::codec::encode(&cmd).unwrap().len(), 2 * MIB);
    let Cmd::Put(_, value) = cmd.clone() else {
        unreachable!()
    };
    let node = c.nodes[&leader].node();
    node.write(cmd).await.unwrap();
    // One byte more is refused up front, with a typed error.
    let over = Cmd::Put("k".into(), format!("{value}x"));
    assert!(matches!(
        node.write(over).await,
        Err(raft_core::Error::CommandTooLarge { .. })
    ));
    // Followers applied it: it crossed the transport.
    let states = c.converged().await;
    for (id, kv) in &states {
        assert_eq!(
            kv.0.get("k").map(String::len),
            Some(value.len()),
            "node {id}"
        );
    }
    // And a follower forwards one just as large to the leader.
    let follower = *c.addrs.keys().find(|id| **id != leader).unwrap();
    let forwarded = put_of_size("f", 2 * MIB);
    c.nodes[&follower].client().write(&forwarded).await.unwrap();
    c.converged().await;
    assert!(started.elapsed() < Duration::from_secs(20));
}

/// The size of the `Read` reply message node `served_by` sends for `reply`.
fn read_reply_len(reply: &common::Reply, served_by: u64) -> usize {
    let reply = raft_core::codec::encode(reply).unwrap();
    prost::Message::encoded_len(&pb::ReadReply {
        reply: reply.into(),
        served_by,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_reply_fits_the_message_limit_to_the_byte_and_one_past_it_is_refused() {
    const MAX: usize = MIB;
    let opts = GrpcOptions::default().with_max_message_bytes(MAX);
    let c = GrpcCluster::start(3, opts, |mut c| {
        c.max_command_bytes = MAX / 2;
        c.max_append_bytes = MAX / 2;
        c
    })
    .await;
    let leader = c.leader().await;
    let node = c.nodes[&leader].node();
    // Two large values, and a third sized so that the whole map's reply message is exactly the
    // limit (node ids 1 to 3 take the same room in it).
    let mut state = std::collections::BTreeMap::new();
    for key in ["a", "b"] {
        let value = "v".repeat(400 << 10);
        node.write(Cmd::Put(key.into(), value.clone()))
            .await
            .unwrap();
        state.insert(key.to_string(), value);
    }
    let all_with = |len: usize| {
        let mut s = state.clone();
        s.insert("c".into(), "v".repeat(len));
        common::Reply::All(s)
    };
    let estimate = MAX - read_reply_len(&all_with(0), 1);
    let fits = (estimate - 16..=estimate)
        .find(|len| read_reply_len(&all_with(*len), 1) == MAX)
        .expect("a value length that makes the reply exactly the limit");
    assert_eq!(read_reply_len(&all_with(fits + 1), 1), MAX + 1);
    node.write(Cmd::Put("c".into(), "v".repeat(fits)))
        .await
        .unwrap();

    let client: ClusterClient<common::Kv> =
        ClusterClient::new(c.endpoints(), ClientOptions::default()).unwrap();
    // Every node, leader and followers, answers a reply of exactly the limit.
    for addr in c.endpoints() {
        let reply = client
            .read_on(&addr, Query::All, Consistency::Linearizable)
            .await
            .unwrap_or_else(|e| panic!("{addr}: {e:?}"));
        assert_eq!(reply, all_with(fits), "{addr}");
    }

    // One byte more: every node refuses it with raftkit's typed error, not a transport one.
    node.write(Cmd::Put("c".into(), "v".repeat(fits + 1)))
        .await
        .unwrap();
    for addr in c.endpoints() {
        match client
            .read_on(&addr, Query::All, Consistency::Linearizable)
            .await
        {
            Err(ClientError::Refused(RequestError::TooLarge(m))) => {
                assert!(
                    m.contains(&format!("exceeds the message limit of {MAX} bytes")),
                    "{addr}: {m}"
                );
            }
            other => panic!("{addr}: expected a too-large refusal, got {other:?}"),
        }
        // A smaller read still succeeds.
        let reply = client
            .read_on(&addr, Query::Get("c".into()), Consistency::Linearizable)
            .await
            .unwrap_or_else(|e| panic!("{addr}: {e:?}"));
        assert_eq!(
            reply,
            common::Reply::Value(Some("v".repeat(fits + 1))),
            "{addr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_behind_by_40_large_writes_catches_up_in_bounded_messages() {
    // Default limits: 40 entries of 1 MiB would be a 40 MiB message; batches stay under 8 MiB.
    let mut c = GrpcCluster::start(3, GrpcOptions::default(), |c| c.with_snapshots(0, 0)).await;
    let leader = c.leader().await;
    let lagging = *c.addrs.keys().find(|id| **id != leader).unwrap();
    c.stop(lagging).await;
    let value = "x".repeat(MIB);
    let node = c.nodes[&leader].node().clone();
    for i in 0..40 {
        node.write(Cmd::Put(format!("k{i}"), value.clone()))
            .await
            .unwrap();
    }
    let started = Instant::now();
    c.launch(lagging).await;
    let target = node.metrics().last_log_index.unwrap();
    c.nodes[&lagging]
        .node()
        .wait_for(Duration::from_secs(120), |m| {
            m.applied_index >= Some(target)
        })
        .await
        .expect("the follower caught up");
    let took = started.elapsed();
    let kv = c.nodes[&lagging]
        .node()
        .read(raft_core::Consistency::Local, |kv| kv.0.len())
        .await
        .unwrap();
    assert_eq!(kv, 40);
    let largest = c.nodes[&lagging].stats().largest_append_message();
    assert!(
        largest <= (8 * MIB + raft_grpc::MESSAGE_FRAMING) as u64,
        "largest replication message {largest} bytes"
    );
    eprintln!("caught up on 40 MiB in {took:?}; largest message {largest} bytes");
}

#[tokio::test]
async fn a_command_limit_the_transport_cannot_carry_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = Config::durable(1, dir.path());
    config.max_command_bytes = 64 * MIB;
    let opts = GrpcOptions::default().with_max_message_bytes(64 * MIB);
    match GrpcNode::start(config, common::Kv::default(), listener, opts).await {
        Err(StartError::Limits(LimitsError::CommandTooLarge { .. })) => {}
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a node that could never replicate its largest command started"),
    }
    // Nothing was created: the check runs before storage is opened.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn a_connection_timeout_of_zero_is_refused_at_start() {
    for (name, opts) in [
        (
            "preface_timeout",
            GrpcOptions::default().with_preface_timeout(Duration::ZERO),
        ),
        (
            "auth_timeout",
            GrpcOptions::default().with_auth_timeout(Duration::ZERO),
        ),
        (
            "tls_handshake_timeout",
            GrpcOptions::default().with_tls_handshake_timeout(Duration::ZERO),
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let config = Config::durable(1, dir.path());
        match GrpcNode::start(config, common::Kv::default(), listener, opts).await {
            Err(StartError::Serve(ServeError::ZeroTimeout(n))) => assert_eq!(n, name),
            Err(e) => panic!("{name}: wrong error: {e}"),
            Ok(_) => panic!("a node whose {name} closes every connection started"),
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshot_receive_checks_the_sender_before_taking_data() {
    let opts = GrpcOptions::default().with_max_snapshot_chunk_bytes(64 << 10);
    let c = GrpcCluster::start(3, opts, |mut c| {
        c.max_snapshot_bytes = 10 * MIB as u64;
        c
    })
    .await;
    let leader = c.leader().await;
    let target = *c.addrs.keys().find(|id| **id != leader).unwrap();
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", c.addrs[&target]))
        .unwrap()
        .connect()
        .await
        .unwrap();
    // Every internal call carries the cluster id.
    let cluster: tonic::metadata::AsciiMetadataValue = c.nodes[&target]
        .node()
        .cluster_id()
        .unwrap()
        .to_string()
        .parse()
        .unwrap();
    let mut internal = RaftInternalClient::with_interceptor(ch, move |mut r: tonic::Request<()>| {
        r.metadata_mut()
            .insert("x-raftkit-cluster-id", cluster.clone());
        Ok(r)
    });
    let term = c.nodes[&leader].node().metrics().term;
    let chunk = |vote: Vote, total: u64, last: bool| pb::SnapshotChunk {
        target,
        vote: raft_core::codec::encode(&vote).unwrap().into(),
        offset: 0,
        data: vec![1u8; 1000].into(),
        last,
        total_bytes: total,
    };
    let snapshots_dir = c.dir.path().join(format!("n{target}/snapshots"));
    let received = || c.nodes[&target].stats().snapshot_chunks();

    // A sender with an older vote is answered with the newer vote, and nothing is written.
    let stale = Vote::new_committed(term.saturating_sub(1), leader);
    let before = received();
    let reply = internal
        .install_snapshot(Request::new(tokio_stream::iter([chunk(
            stale, 1000, false,
        )])))
        .await
        .unwrap()
        .into_inner();
    let answer: raft_core::transport::rpc::SnapshotResponse =
        raft_core::codec::decode(&reply.payload).unwrap();
    assert!(answer.vote > stale);
    assert_eq!(received(), before, "no chunk of a stale sender was taken");

    // An announced size beyond the limit is refused before any data.
    let current = Vote::new_committed(term, leader);
    let s = internal
        .install_snapshot(Request::new(tokio_stream::iter([chunk(
            current,
            11 * MIB as u64,
            false,
        )])))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::OutOfRange, "{s:?}");
    assert_eq!(received(), before);

    // One receive at a time: a second stream is refused while the first is open.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(chunk(current, 5 * MIB as u64, false))
        .await
        .unwrap();
    let mut first_client = internal.clone();
    let first = tokio::spawn(async move {
        first_client
            .install_snapshot(Request::new(tokio_stream::wrappers::ReceiverStream::new(
                rx,
            )))
            .await
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while received() == before {
        assert!(Instant::now() < deadline, "the first stream never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let s = internal
        .install_snapshot(Request::new(tokio_stream::iter([chunk(
            current, 1000, true,
        )])))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    drop(tx);
    let _ = first.await.unwrap();
    // The abandoned receive left nothing behind, and a new one may start.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let tmp = std::fs::read_dir(&snapshots_dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".tmp")
            })
            .count();
        if tmp == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "a half-received snapshot stayed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The node still replicates: a new write reaches it (whoever leads by now).
    let leader = c.leader().await;
    c.nodes[&leader]
        .node()
        .write(Cmd::Put("after".into(), "1".into()))
        .await
        .unwrap();
    let states = c.converged().await;
    assert_eq!(
        states[&target].0.get("after").map(String::as_str),
        Some("1")
    );
}
