//! A write whose reply is lost on the way back is retried by `ClusterClient` with the same
//! session and applied exactly once.

mod common;

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::task::Context;
use std::task::Poll;

use common::Cmd;
use common::GrpcCluster;
use common::Kv;
use common::Query;
use common::Reply;
use raft_core::Consistency;
use raft_grpc::ClientOptions;
use raft_grpc::ClusterClient;
use raft_grpc::Connector;
use raft_grpc::GrpcOptions;
use tokio::io::AsyncRead;
use tokio::io::AsyncWrite;
use tokio::io::ReadBuf;
use tokio::net::TcpStream;

const MARKER: &[u8] = b"LOSE-THIS-REPLY";

/// A TCP stream that breaks the connection the first time a reply carrying `MARKER` arrives —
/// after the server has applied the write, before the client sees the answer.
struct LossyStream {
    inner: TcpStream,
    fired: Arc<AtomicBool>,
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
            if !self.fired.load(Ordering::SeqCst)
                && fresh.windows(MARKER.len()).any(|w| w == MARKER)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_whose_reply_is_lost_is_applied_once() {
    let c = GrpcCluster::start(3, GrpcOptions::default(), |c| c).await;
    let fired = Arc::new(AtomicBool::new(false));
    let f = fired.clone();
    let connector = Connector::custom(move |host, port| {
        let fired = f.clone();
        async move {
            let inner = TcpStream::connect((host.as_str(), port)).await?;
            inner.set_nodelay(true)?;
            Ok(LossyStream { inner, fired })
        }
    });
    let client = ClusterClient::<Kv>::new(
        c.endpoints(),
        ClientOptions {
            connector,
            ..ClientOptions::default()
        },
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
