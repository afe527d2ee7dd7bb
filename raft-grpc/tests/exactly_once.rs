//! A write whose reply is lost on the way back is retried by `ClusterClient` with the same
//! session and applied exactly once; a session registration whose reply is lost opens one
//! session.

mod common;

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::task::Context;
use std::task::Poll;
use std::time::Duration;

use common::Cmd;
use common::GrpcCluster;
use common::Kv;
use common::Query;
use common::Reply;
use raft_core::ApplyError;
use raft_core::Consistency;
use raft_grpc::ClientError;
use raft_grpc::ClientOptions;
use raft_grpc::ClusterClient;
use raft_grpc::Connector;
use raft_grpc::GrpcOptions;
use tokio::io::AsyncRead;
use tokio::io::AsyncWrite;
use tokio::io::ReadBuf;
use tokio::net::TcpStream;

const MARKER: &[u8] = b"LOSE-THIS-REPLY";

/// A TCP stream that breaks the connection the first time a reply carrying `marker` arrives —
/// after the server has applied the write, before the client sees the answer.
struct LossyStream {
    inner: TcpStream,
    marker: &'static [u8],
    fired: Arc<AtomicBool>,
    /// Break on every such reply, not only the first.
    always: bool,
}

impl AsyncRead for LossyStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res {
            let fresh = &buf.filled()[before..];
            if (self.always || !self.fired.load(Ordering::SeqCst))
                && fresh.windows(self.marker.len()).any(|w| w == self.marker)
            {
                self.fired.store(true, Ordering::SeqCst);
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "reply lost",
                )));
            }
        }
        res
    }
}

impl AsyncWrite for LossyStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A connector whose connections break on replies carrying `MARKER` (the first, or all).
fn lossy(fired: Arc<AtomicBool>, always: bool) -> Connector {
    lossy_on(MARKER, fired, always)
}

/// A connector whose connections break on replies carrying `marker` (the first, or all).
fn lossy_on(marker: &'static [u8], fired: Arc<AtomicBool>, always: bool) -> Connector {
    Connector::custom(move |host, port| {
        let fired = fired.clone();
        async move {
            let inner = TcpStream::connect((host.as_str(), port)).await?;
            inner.set_nodelay(true)?;
            Ok(LossyStream {
                inner,
                marker,
                fired,
                always,
            })
        }
    })
}

/// Opens six sessions through `client` and writes in each: more than the tests' session
/// capacity of four, so older idle sessions are evicted.
async fn push_out_sessions(client: &ClusterClient<Kv>) {
    for i in 0..6 {
        let s = raft_core::Session {
            client_id: client.register_session().await.unwrap(),
            sequence: 1,
        };
        client
            .write_in_session(s, Cmd::Append(format!("o{i}"), "y".into()))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_whose_reply_is_lost_is_applied_once() {
    let c = GrpcCluster::start(3, GrpcOptions::default(), |c| c).await;
    let fired = Arc::new(AtomicBool::new(false));
    let connector = lossy(fired.clone(), false);
    let client = ClusterClient::<Kv>::new(
        c.endpoints(),
        ClientOptions::default().with_connector(connector),
    )
    .unwrap();

    let marker = String::from_utf8(MARKER.to_vec()).unwrap();
    let out = client
        .write(Cmd::Append("k".into(), marker.clone()))
        .await
        .unwrap();
    assert!(fired.load(Ordering::SeqCst), "the first reply was lost");
    assert_eq!(
        out.as_ref(),
        Some(&marker),
        "the retry returns the first attempt's answer"
    );

    let value = client
        .read(Query::Get("k".into()), Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(
        value,
        Reply::Value(Some(marker.clone())),
        "applied exactly once"
    );
    for (id, s) in c.converged().await {
        assert_eq!(s.0.get("k"), Some(&marker), "node {id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_reply_retried_after_its_session_was_evicted_is_not_applied_again() {
    let c = GrpcCluster::start(3, GrpcOptions::default(), |c| c).await;
    let client = ClusterClient::<Kv>::new(c.endpoints(), ClientOptions::default()).unwrap();
    client
        .set_session_capacity(raft_core::SessionCapacity::default().with_max_sessions(4))
        .await
        .unwrap();
    // A client that never hears an answer: it gives up with the outcome unknown.
    let fired = Arc::new(AtomicBool::new(false));
    let deaf = ClusterClient::<Kv>::new(
        c.endpoints(),
        ClientOptions::default()
            .with_connector(lossy(fired.clone(), true))
            .with_attempt_timeout(Duration::from_millis(500))
            .with_total_timeout(Duration::from_secs(2)),
    )
    .unwrap();
    let marker = String::from_utf8(MARKER.to_vec()).unwrap();
    let cmd = Cmd::Append("k".into(), marker.clone());
    let session = raft_core::Session {
        client_id: client.register_session().await.unwrap(),
        sequence: 1,
    };
    let err = deaf
        .write_in_session(session, cmd.clone())
        .await
        .unwrap_err();
    assert!(fired.load(Ordering::SeqCst), "the replies were lost");
    assert!(err.outcome_unknown(), "{err:?}");
    // Eviction pressure from other clients pushes the session out.
    push_out_sessions(&client).await;
    // The retry is refused — outcome unknown — and not applied a second time.
    match client.write_in_session(session, cmd).await {
        Err(e @ ClientError::Rejected(ApplyError::UnknownSession { .. })) => {
            assert!(e.outcome_unknown())
        }
        other => panic!("the retry must be refused, got {other:?}"),
    }
    for (id, s) in c.converged().await {
        assert_eq!(s.0.get("k"), Some(&marker), "applied once on node {id}");
    }
    // The client's own writes open a fresh session and go on working.
    client
        .write(Cmd::Append("after".into(), "z".into()))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_whose_idle_session_was_evicted_is_applied_in_a_new_one() {
    let c = GrpcCluster::start(3, GrpcOptions::default(), |c| c).await;
    let client = ClusterClient::<Kv>::new(c.endpoints(), ClientOptions::default()).unwrap();
    client
        .set_session_capacity(raft_core::SessionCapacity::default().with_max_sessions(4))
        .await
        .unwrap();
    client
        .write(Cmd::Append("idle".into(), "a".into()))
        .await
        .unwrap();
    // While the client's session sits idle, other clients push it out of the table.
    let others = ClusterClient::<Kv>::new(c.endpoints(), ClientOptions::default()).unwrap();
    push_out_sessions(&others).await;
    // The next write is refused at once on the evicted session — not applied — and the
    // client writes it again in a new session.
    client
        .write(Cmd::Append("idle".into(), "b".into()))
        .await
        .unwrap();
    for (id, s) in c.converged().await {
        assert_eq!(s.0.get("idle").map(String::as_str), Some("ab"), "node {id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_registration_whose_reply_is_lost_opens_one_session() {
    let c = GrpcCluster::start(3, GrpcOptions::default(), |c| c).await;
    let leader = c.leader().await;
    let open = |id| c.nodes[&id].node().open_sessions();
    let before = open(leader);
    // Every reply to a Write names the leader's address, and the registration's is the first
    // reply this client gets: its connection breaks after the registration was applied.
    assert!(c.endpoints().iter().all(|e| e.starts_with("127.0.0.1:")));
    let fired = Arc::new(AtomicBool::new(false));
    let client = ClusterClient::<Kv>::new(
        c.endpoints(),
        ClientOptions::default().with_connector(lossy_on(b"127.0.0.1:", fired.clone(), false)),
    )
    .unwrap();

    let id = client.register_session().await.unwrap();
    assert!(fired.load(Ordering::SeqCst), "the first reply was lost");
    assert_eq!(
        open(leader),
        before + 1,
        "the retry got the session its lost attempt opened"
    );
    let s = raft_core::Session {
        client_id: id,
        sequence: 1,
    };
    client
        .write_in_session(s, Cmd::Append("k".into(), "v".into()))
        .await
        .unwrap();
    client.close_session(id).await.unwrap();
    assert_eq!(open(leader), before);
}
