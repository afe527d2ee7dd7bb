//! A client caught between nodes that name each other as leader (stale views during an
//! election) paces its retries instead of bouncing between them as fast as the network allows.

mod common;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use common::Cmd;
use common::Kv;
use raft_core::LeaderHint;
use raft_grpc::ClientError;
use raft_grpc::ClientOptions;
use raft_grpc::ClusterClient;
use raft_grpc::pb;
use raft_grpc::pb::cluster_server::ClusterServer;
use raft_grpc::status;
use raft_grpc::status::ErrorCode;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::Request;
use tonic::Response;
use tonic::Status;

/// A node that answers every write with "not the leader; the leader is at `leader`" — and,
/// with `register_after`, opens sessions (as session 1) that long after they are asked for.
struct Redirector {
    leader: String,
    writes: Arc<AtomicU64>,
    register_after: Option<Duration>,
}

type Answer<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl pb::cluster_server::Cluster for Redirector {
    async fn write(&self, req: Request<pb::WriteRequest>) -> Answer<pb::WriteReply> {
        if let Some(after) = self.register_after
            && req.get_ref().session_op == pb::SessionOp::Register as i32
        {
            tokio::time::sleep(after).await;
            return Ok(Response::new(pb::WriteReply {
                session_id: 1,
                ..Default::default()
            }));
        }
        self.writes.fetch_add(1, Ordering::Relaxed);
        Err(status::not_leader(&LeaderHint::new(
            Some(7),
            Some(self.leader.clone()),
        )))
    }
    async fn read(&self, _: Request<pb::ReadRequest>) -> Answer<pb::ReadReply> {
        Err(Status::unimplemented("read"))
    }
    async fn add_learner(&self, _: Request<pb::AddLearnerRequest>) -> Answer<pb::Empty> {
        Err(Status::unimplemented("add_learner"))
    }
    async fn change_membership(
        &self,
        _: Request<pb::ChangeMembershipRequest>,
    ) -> Answer<pb::Empty> {
        Err(Status::unimplemented("change_membership"))
    }
    async fn add_voter(&self, _: Request<pb::AddVoterRequest>) -> Answer<pb::Empty> {
        Err(Status::unimplemented("add_voter"))
    }
    async fn remove_node(&self, _: Request<pb::RemoveNodeRequest>) -> Answer<pb::Empty> {
        Err(Status::unimplemented("remove_node"))
    }
    async fn transfer_leader(&self, _: Request<pb::TransferLeaderRequest>) -> Answer<pb::Empty> {
        Err(Status::unimplemented("transfer_leader"))
    }
    async fn status(&self, _: Request<pb::StatusRequest>) -> Answer<pb::StatusReply> {
        Err(Status::unimplemented("status"))
    }
    async fn set_session_capacity(&self, _: Request<pb::SessionCapacity>) -> Answer<pb::Empty> {
        Err(Status::unimplemented("set_session_capacity"))
    }
    type BackupStream = futures_util::stream::BoxStream<'static, Result<pb::BackupChunk, Status>>;
    async fn backup(&self, _: Request<pb::BackupRequest>) -> Answer<Self::BackupStream> {
        Err(Status::unimplemented("backup"))
    }
}

/// A write that must fail, and how long it took to.
async fn failed_write(client: &ClusterClient<Kv>) -> (ClientError, Duration) {
    let started = Instant::now();
    let err = client
        .write(Cmd::Put("k".into(), "v".into()))
        .await
        .unwrap_err();
    (err, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_between_two_nodes_are_paced() {
    let a = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (addr_a, addr_b) = (
        a.local_addr().unwrap().to_string(),
        b.local_addr().unwrap().to_string(),
    );
    let writes = Arc::new(AtomicU64::new(0));
    for (listener, leader) in [(a, addr_b.clone()), (b, addr_a.clone())] {
        let svc = ClusterServer::new(Redirector {
            leader,
            writes: writes.clone(),
            register_after: None,
        });
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
    }

    let budget = Duration::from_secs(1);
    let client = ClusterClient::<Kv>::new(
        [addr_a.clone()],
        ClientOptions::default()
            .with_attempt_timeout(budget)
            .with_total_timeout(budget),
    )
    .unwrap();
    let (err, took) = failed_write(&client).await;

    // The client's first write opens its session first: that is what went round, so the
    // write itself was never sent.
    assert!(!err.outcome_unknown(), "{err:?}");
    let ClientError::NoSession(err) = err else {
        panic!("{err:?}");
    };
    match &*err {
        ClientError::GaveUp { last, .. } => {
            assert_eq!(last.code(), Some(ErrorCode::NotLeader), "{last:?}");
            // The redirect's hint reaches the caller typed.
            let raft_grpc::RequestError::NotLeader(hint) = last else {
                panic!("{last:?}");
            };
            assert_eq!(hint.id(), Some(7));
            assert!(
                [&addr_a, &addr_b]
                    .map(String::as_str)
                    .contains(&hint.addr().unwrap())
            );
        }
        other => panic!("expected the client to give up, got {other:?}"),
    }
    assert!(took < budget + Duration::from_secs(2), "took {took:?}");
    // Pauses of 20 ms doubling to 500 ms fit about seven attempts into a second; unpaced, a
    // loopback ping-pong makes hundreds.
    let n = writes.load(Ordering::Relaxed);
    assert!((3..=12).contains(&n), "{n} attempts within {budget:?}");
}

/// A write keeps to its total timeout whatever it spends it on: opening its session took 1.9 s
/// of a 2 s budget here, and the write then had what was left, not a second budget of its own
/// (it gave up after about 3.8 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_keeps_to_its_total_timeout_across_its_session_and_its_attempts() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let svc = ClusterServer::new(Redirector {
        leader: addr.clone(),
        writes: Arc::default(),
        register_after: Some(Duration::from_millis(1900)),
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let budget = Duration::from_secs(2);
    let client =
        ClusterClient::<Kv>::new([addr], ClientOptions::default().with_total_timeout(budget))
            .unwrap();
    let (err, took) = failed_write(&client).await;
    assert!(matches!(err, ClientError::GaveUp { .. }), "{err:?}");
    assert!(
        took < budget + Duration::from_millis(1200),
        "a write with a {budget:?} budget took {took:?}"
    );
}
