//! A learner that joins a cluster with a large state catches up by a snapshot streamed in
//! bounded chunks, then becomes a voter; one behind a slow link catches up once
//! `GrpcOptions::min_transfer_rate` allows for it.

mod common;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::task::Context;
use std::task::Poll;
use std::task::ready;
use std::time::Duration;

use common::Cmd;
use common::GrpcCluster;
use common::Kv;
use futures_util::StreamExt;
use raft_grpc::ClientOptions;
use raft_grpc::ClusterClient;
use raft_grpc::Connector;
use raft_grpc::GrpcOptions;
use tokio::io::AsyncRead;
use tokio::io::AsyncWrite;
use tokio::io::ReadBuf;
use tokio::time::Instant;

const CHUNK: usize = 64 << 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_learner_catches_up_by_a_chunked_snapshot_then_votes() {
    let opts = GrpcOptions::default()
        .with_snapshot_chunk_bytes(CHUNK)
        .with_max_snapshot_chunk_bytes(CHUNK);
    let mut c = GrpcCluster::start(3, opts, |c| c.with_snapshots(200, 20)).await;
    let client = ClusterClient::<Kv>::new(c.endpoints(), ClientOptions::default()).unwrap();

    // About 2 MiB of state, so the snapshot needs dozens of chunks.
    let value = "v".repeat(2048);
    let writes: Vec<_> = futures_util::stream::iter(0..1000)
        .map(|i| client.write(Cmd::Put(format!("key-{i:04}"), value.clone())))
        .buffer_unordered(16)
        .collect()
        .await;
    for w in writes {
        w.unwrap();
    }
    let leader = c.leader().await;
    c.nodes[&leader].node().snapshot().await.unwrap();
    let purged = c.nodes[&leader].node().metrics().purged_index;
    assert!(
        purged.is_some_and(|p| p > 100),
        "the leader purged its log: {purged:?}"
    );

    c.launch(4).await;
    let addr4 = c.addrs[&4].clone();
    client.add_learner(4, addr4).await.unwrap();
    let stats = c.nodes[&4].stats().clone();
    assert!(
        stats.snapshots_received() >= 1,
        "the learner was sent a snapshot"
    );
    assert!(
        stats.snapshot_chunks() >= 8,
        "the snapshot came in many chunks: {}",
        stats.snapshot_chunks()
    );
    assert!(
        stats.largest_snapshot_chunk() <= CHUNK as u64,
        "no chunk above the bound: {}",
        stats.largest_snapshot_chunk()
    );

    client.change_membership([1, 2, 3, 4]).await.unwrap();
    let states = c.converged().await;
    assert_eq!(states.len(), 4);
    let first = states.values().next().unwrap();
    assert_eq!(first.0.len(), 1000);
    for (id, s) in &states {
        assert_eq!(s, first, "node {id} diverged");
    }
    let m = c.nodes[&4].node().metrics();
    assert!(m.voters.contains(&4), "node 4 votes: {m:?}");
}

/// A connection whose writes leave at most `rate` bytes per second, in steps of 4 KiB: a slow
/// link.
struct Paced {
    io: tokio::net::TcpStream,
    rate: u64,
    /// When the link is free to carry the next step.
    free_at: Instant,
    wait: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl AsyncRead for Paced {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Paced {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        loop {
            if let Some(wait) = this.wait.as_mut() {
                ready!(wait.as_mut().poll(cx));
                this.wait = None;
            }
            let now = Instant::now();
            if this.free_at > now {
                this.wait = Some(Box::pin(tokio::time::sleep_until(this.free_at)));
                continue;
            }
            let step = buf.len().min(4 << 10);
            let written = ready!(Pin::new(&mut this.io).poll_write(cx, &buf[..step]))?;
            this.free_at = now + Duration::from_secs_f64(written as f64 / this.rate as f64);
            return Poll::Ready(Ok(written));
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// How fast the leader's link to the learner carries bytes.
const LINK: u64 = 512 << 10;
/// The leader's state: 2 MiB, four seconds over the link.
const STATE: usize = 2 << 20;

/// A one-node cluster holding [`STATE`] bytes with its log purged, sending to its peers over
/// [`LINK`], with `min_transfer_rate` on the leader and on node 2 (not yet started).
async fn leader_behind_a_slow_link(min_transfer_rate: u64) -> GrpcCluster {
    let opts = GrpcOptions::default()
        .with_snapshot_chunk_bytes(CHUNK)
        .with_min_transfer_rate(min_transfer_rate);
    let paced = opts
        .clone()
        .with_connector(Connector::custom(|host, port| async move {
            let io = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            io.set_nodelay(true)?;
            Ok(Paced {
                io,
                rate: LINK,
                free_at: Instant::now(),
                wait: None,
            })
        }));
    // The sender gives up on a snapshot after ¾ of its request timeout (1.5 s here) plus its
    // size at `min_transfer_rate`.
    let c = GrpcCluster::start_each(1, opts, BTreeMap::from([(1, paced)]), |c| {
        c.with_snapshots(200, 20)
            .with_request_timeout(Duration::from_secs(2))
    })
    .await;
    let node = c.nodes[&1].node();
    let value = "v".repeat(8 << 10);
    for i in 0..STATE / value.len() {
        node.write(Cmd::Put(format!("key-{i:04}"), value.clone()))
            .await
            .unwrap();
    }
    node.snapshot().await.unwrap();
    assert!(node.metrics().purged_index.is_some(), "the log is purged");
    c
}

/// Adds node 2 as a learner; whether it caught up within the request timeout does not matter
/// here.
async fn add_learner(c: &mut GrpcCluster) {
    c.launch(2).await;
    match c.nodes[&1].node().add_learner(2, c.addrs[&2].clone()).await {
        Ok(()) | Err(raft_core::Error::LearnerNotCaughtUp { .. }) => {}
        Err(e) => panic!("adding the learner: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_snapshot_slower_than_the_min_transfer_rate_is_cut_every_time() {
    // The default 8 MiB/s: the sender allows 1.5 s + 0 s for 2 MiB, which takes 4 s.
    let mut c = leader_behind_a_slow_link(GrpcOptions::default().min_transfer_rate).await;
    add_learner(&mut c).await;
    let stats = c.nodes[&2].stats().clone();
    // More chunks than one snapshot has, and none installed: attempts were cut and retried.
    let size = c.nodes[&1].node().snapshot_stats().last_bytes.unwrap();
    let one_snapshot = size.div_ceil(CHUNK as u64);
    c.wait_until("the leader retried the snapshot", |_| {
        stats.snapshot_chunks() > one_snapshot
    })
    .await;
    assert_eq!(stats.snapshots_received(), 0, "no attempt arrived whole");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_snapshot_over_a_slow_link_arrives_once_the_min_transfer_rate_allows_it() {
    // 128 KiB/s: the sender allows 1.5 s + 16 s, the learner 30 s + 16 s.
    let mut c = leader_behind_a_slow_link(128 << 10).await;
    let started = Instant::now();
    add_learner(&mut c).await;
    let stats = c.nodes[&2].stats().clone();
    c.wait_until("the learner installed the snapshot", |_| {
        stats.snapshots_received() >= 1
    })
    .await;
    let took = started.elapsed();
    let link_time = Duration::from_secs_f64(STATE as f64 / LINK as f64);
    assert!(took >= link_time, "the link was not slow: {took:?}");
    let states = c.converged().await;
    assert_eq!(states[&2], states[&1]);
    assert_eq!(states[&2].0.len(), STATE / (8 << 10));
}
