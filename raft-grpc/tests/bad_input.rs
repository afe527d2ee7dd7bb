//! Garbage, wrong targets, oversized messages and out-of-order snapshot chunks get the
//! documented statuses — never a panic or a hang — and the cluster keeps serving.

mod common;

use std::time::Duration;

use common::Cmd;
use common::GrpcCluster;
use common::Kv;
use raft_core::types::Vote;
use raft_grpc::ClientOptions;
use raft_grpc::ClusterClient;
use raft_grpc::GrpcOptions;
use raft_grpc::pb;
use raft_grpc::pb::cluster_client::ClusterClient as PbCluster;
use raft_grpc::pb::raft_internal_client::RaftInternalClient;
use raft_grpc::status::ErrorCode;
use tonic::Code;
use tonic::Request;
use tonic::Status;
use tonic::transport::Channel;

const LIMIT: usize = 1 << 20;

async fn channel(addr: &str) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// The cluster id every internal call carries (set once the cluster is formed).
static CLUSTER_ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn timed<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    if let Some(id) = CLUSTER_ID.get() {
        r.metadata_mut()
            .insert("x-raftkit-cluster-id", id.parse().unwrap());
    }
    r.set_timeout(Duration::from_secs(5));
    r
}

fn assert_status(s: &Status, code: Code, raftkit: ErrorCode) {
    assert_eq!(s.code(), code, "{s:?}");
    assert_eq!(ErrorCode::of(s), Some(raftkit), "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_gets_clear_statuses_and_the_cluster_carries_on() {
    let opts = GrpcOptions::default()
        .with_max_message_bytes(LIMIT)
        .with_max_snapshot_chunk_bytes(64 << 10);
    let c = GrpcCluster::start(3, opts, |mut c| {
        c.max_command_bytes = LIMIT / 2;
        c.max_append_bytes = LIMIT / 2;
        c
    })
    .await;
    let id = c.nodes[&1].node().cluster_id().unwrap();
    CLUSTER_ID.set(id.to_string()).unwrap();
    let leader = c.leader().await;
    let target = *c.addrs.keys().find(|id| **id != leader).unwrap();
    let addr = c.addrs[&target].clone();
    let ch = channel(&addr).await;
    let mut internal = RaftInternalClient::new(ch.clone()).max_encoding_message_size(4 * LIMIT);
    let mut cluster = PbCluster::new(ch.clone());

    let garbage = bytes::Bytes::from_static(&[0xff; 64]);
    let req = |target: u64, payload: bytes::Bytes| timed(pb::RaftRequest { target, payload });

    // Undecodable payloads.
    let s = internal
        .append_entries(req(target, garbage.clone()))
        .await
        .unwrap_err();
    assert_status(&s, Code::InvalidArgument, ErrorCode::InvalidRequest);
    let s = internal
        .vote(req(target, garbage.clone()))
        .await
        .unwrap_err();
    assert_status(&s, Code::InvalidArgument, ErrorCode::InvalidRequest);
    let s = internal
        .pre_vote(req(target, bytes::Bytes::new()))
        .await
        .unwrap_err();
    assert_status(&s, Code::InvalidArgument, ErrorCode::InvalidRequest);
    let s = internal
        .transfer_leader(req(target, garbage.clone()))
        .await
        .unwrap_err();
    assert_status(&s, Code::InvalidArgument, ErrorCode::InvalidRequest);

    // A request meant for a node that is not this one.
    let vote = openraft::impls::Vote::new(1, 99);
    let vote_req = raft_core::transport::rpc::VoteRequest::new(vote, None);
    let payload: bytes::Bytes = raft_core::codec::encode(&vote_req).unwrap().into();
    let s = internal.vote(req(999, payload)).await.unwrap_err();
    assert_status(&s, Code::FailedPrecondition, ErrorCode::InvalidRequest);
    assert!(s.message().contains("999"), "{s:?}");

    // Entries that decode but could not have come from a leader.
    let blank = |index| openraft::Entry {
        log_id: openraft::LogId::new(
            raft_core::types::LeaderId {
                term: 1,
                node_id: leader,
            },
            index,
        ),
        payload: openraft::EntryPayload::Blank,
    };
    let bad_append = raft_core::transport::rpc::AppendEntriesRequest {
        vote: openraft::impls::Vote::new_committed(1, leader),
        prev_log_id: None,
        entries: vec![blank(5), blank(3)],
        leader_commit: None,
    };
    let payload: bytes::Bytes = raft_core::codec::encode(&bad_append).unwrap().into();
    let s = internal
        .append_entries(req(target, payload))
        .await
        .unwrap_err();
    assert_status(&s, Code::InvalidArgument, ErrorCode::InvalidRequest);

    // Oversized: refused by the server's decode limit.
    let big = bytes::Bytes::from(vec![0u8; 2 * LIMIT]);
    let s = internal.append_entries(req(target, big)).await.unwrap_err();
    assert_eq!(s.code(), Code::OutOfRange, "{s:?}");

    // A garbage pipelined append stream ends with an error.
    let mut replies = internal
        .stream_append(timed(tokio_stream::iter([pb::RaftRequest {
            target,
            payload: garbage.clone(),
        }])))
        .await
        .unwrap()
        .into_inner();
    let s = replies.message().await.unwrap_err();
    assert_status(&s, Code::InvalidArgument, ErrorCode::InvalidRequest);

    // Snapshot streams: out of order, over the chunk bound, cut short, empty.
    let term = c.nodes[&leader].node().metrics().term;
    let vote_bytes: bytes::Bytes = raft_core::codec::encode(&Vote::new_committed(term, leader))
        .unwrap()
        .into();
    let chunk = |offset: u64, len: usize, last: bool| pb::SnapshotChunk {
        target,
        vote: vote_bytes.clone(),
        offset,
        data: vec![1u8; len].into(),
        last,
        total_bytes: if offset == 0 { len as u64 } else { 0 },
    };
    let s = internal
        .install_snapshot(timed(tokio_stream::iter([
            chunk(0, 10, false),
            chunk(5, 10, true),
        ])))
        .await
        .unwrap_err();
    assert_status(&s, Code::InvalidArgument, ErrorCode::InvalidRequest);
    assert!(s.message().contains("out of order"), "{s:?}");
    let s = internal
        .install_snapshot(timed(tokio_stream::iter([chunk(0, 100 << 10, true)])))
        .await
        .unwrap_err();
    assert_status(&s, Code::OutOfRange, ErrorCode::TooLarge);
    let s = internal
        .install_snapshot(timed(tokio_stream::iter([chunk(0, 10, false)])))
        .await
        .unwrap_err();
    assert_status(&s, Code::InvalidArgument, ErrorCode::InvalidRequest);
    let s = internal
        .install_snapshot(timed(tokio_stream::iter([chunk(0, 10, true)])))
        .await
        .unwrap_err();
    assert_status(&s, Code::InvalidArgument, ErrorCode::InvalidRequest);
    assert!(
        s.message().contains("corrupt"),
        "a non-snapshot fails verification: {s:?}"
    );
    let unannounced = pb::SnapshotChunk {
        total_bytes: 0,
        ..chunk(0, 10, true)
    };
    let s = internal
        .install_snapshot(timed(tokio_stream::iter([unannounced])))
        .await
        .unwrap_err();
    assert_status(&s, Code::InvalidArgument, ErrorCode::InvalidRequest);
    assert!(s.message().contains("announce its size"), "{s:?}");
    let s = internal
        .install_snapshot(timed(tokio_stream::iter(Vec::<pb::SnapshotChunk>::new())))
        .await
        .unwrap_err();
    assert_status(&s, Code::InvalidArgument, ErrorCode::InvalidRequest);
    let leftovers: Vec<_> = std::fs::read_dir(c.dir.path().join(format!("n{target}/snapshots")))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "half-received snapshots are cleaned up: {leftovers:?}"
    );

    // The cluster API refuses garbage commands and queries.
    let s = cluster
        .write(timed(pb::WriteRequest {
            command: garbage.clone(),
            session: None,
            no_forward: false,
            session_op: 0,
            register_key: 0,
        }))
        .await
        .unwrap_err();
    assert_status(&s, Code::InvalidArgument, ErrorCode::InvalidCommand);
    let s = cluster
        .read(timed(pb::ReadRequest {
            query: garbage.clone(),
            consistency: 0,
        }))
        .await
        .unwrap_err();
    assert_status(&s, Code::InvalidArgument, ErrorCode::InvalidCommand);
    let s = cluster
        .read(timed(pb::ReadRequest {
            query: raft_core::codec::encode(&common::Query::All)
                .unwrap()
                .into(),
            consistency: 42,
        }))
        .await
        .unwrap_err();
    assert_status(&s, Code::InvalidArgument, ErrorCode::InvalidRequest);
    let s = cluster
        .change_membership(timed(pb::ChangeMembershipRequest { voters: vec![] }))
        .await
        .unwrap_err();
    assert_status(&s, Code::InvalidArgument, ErrorCode::InvalidRequest);
    let s = cluster
        .add_learner(timed(pb::AddLearnerRequest {
            node_id: 9,
            addr: "not an address".into(),
            incarnation: 0,
        }))
        .await
        .unwrap_err();
    assert_status(&s, Code::InvalidArgument, ErrorCode::InvalidRequest);

    // Everyone still serves.
    let client = ClusterClient::<Kv>::new(c.endpoints(), ClientOptions::default()).unwrap();
    client
        .write(Cmd::Put("after".into(), "ok".into()))
        .await
        .unwrap();
    let states = c.converged().await;
    assert_eq!(states.len(), 3);
    for s in states.values() {
        assert_eq!(s.0.get("after").map(String::as_str), Some("ok"));
    }
}
