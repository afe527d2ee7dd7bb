//! The server's HTTP/2 limits, measured with a hand-written HTTP/2 client that does what a
//! well-behaved one would not: it opens more streams than the server allows on one connection,
//! or stops answering the server's pings.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;
use std::time::Instant;

use common::GrpcCluster;
use common::h2::ACK;
use common::h2::DATA;
use common::h2::END_HEADERS;
use common::h2::GOAWAY;
use common::h2::HEADERS;
use common::h2::PING;
use common::h2::PREFACE;
use common::h2::RST_STREAM;
use common::h2::SETTINGS;
use common::h2::frame;
use common::h2::header_block;
use common::h2::read_frame;
use raft_grpc::GrpcOptions;
use raft_grpc::pb;
use raft_grpc::pb::cluster_client::ClusterClient as PbClusterClient;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const REFUSED_STREAM: u32 = 7;

/// A connection past the HTTP/2 handshake: our settings sent, the server's acknowledged.
async fn connect(addr: &str) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(PREFACE).await.unwrap();
    tcp.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    loop {
        let f = tokio::time::timeout(Duration::from_secs(5), read_frame(&mut tcp))
            .await
            .expect("the server's settings within 5 s")
            .expect("the server's settings");
        if f.kind == SETTINGS && f.flags & ACK == 0 {
            tcp.write_all(&frame(SETTINGS, ACK, 0, &[])).await.unwrap();
            return tcp;
        }
    }
}

/// The server's `SETTINGS_MAX_CONCURRENT_STREAMS` as it announces it.
fn announced_max_streams(settings: &[u8]) -> Option<u32> {
    settings.chunks_exact(6).find_map(|s| {
        (u16::from_be_bytes([s[0], s[1]]) == 3)
            .then(|| u32::from_be_bytes([s[2], s[3], s[4], s[5]]))
    })
}

async fn status_within(addr: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    let mut c = PbClusterClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy(),
    );
    let mut req = tonic::Request::new(pb::StatusRequest {});
    req.set_timeout(limit);
    c.status(req).await.expect("a status answer");
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_beyond_the_cap_are_refused_and_others_are_served() {
    const CAP: u32 = 8;
    const OPENED: u32 = CAP + 100;
    let opts = GrpcOptions::default().with_max_concurrent_streams(CAP);
    let c = GrpcCluster::start(1, opts, |c| c).await;
    let addr = c.addrs[&1].clone();

    let mut tcp = TcpStream::connect(&addr).await.unwrap();
    tcp.write_all(PREFACE).await.unwrap();
    tcp.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    let announced = loop {
        let f = read_frame(&mut tcp).await.expect("server settings");
        if f.kind == SETTINGS && f.flags & ACK == 0 {
            tcp.write_all(&frame(SETTINGS, ACK, 0, &[])).await.unwrap();
            break announced_max_streams(&f.payload);
        }
    };
    assert_eq!(announced, Some(CAP), "the server announces its cap");

    // Calls whose bodies never come: each holds its stream open. All sent at once, ignoring
    // the announced cap.
    let block = header_block(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/raftkit.v1.RaftInternal/Vote"),
        (":authority", "node"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]);
    let mut burst = Vec::new();
    for i in 0..OPENED {
        burst.extend(frame(HEADERS, END_HEADERS, 2 * i + 1, &block));
    }
    tcp.write_all(&burst).await.unwrap();

    // Every stream past the cap is refused; none within it is.
    let mut refused = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while refused.len() < (OPENED - CAP) as usize {
        let f = tokio::time::timeout_at(deadline, read_frame(&mut tcp))
            .await
            .unwrap_or_else(|_| panic!("only {} refusals within 10 s", refused.len()))
            .expect("the connection stays open");
        if f.kind == RST_STREAM {
            let code = u32::from_be_bytes(f.payload[..4].try_into().unwrap());
            assert_eq!(code, REFUSED_STREAM, "stream {}", f.stream);
            refused.insert(f.stream);
        }
        assert_ne!(f.kind, GOAWAY, "the server closed the whole connection");
    }
    let expected: BTreeSet<u32> = (CAP..OPENED).map(|i| 2 * i + 1).collect();
    assert_eq!(
        refused, expected,
        "exactly the streams past the cap are refused"
    );

    // The node still answers everyone else promptly, and still commits.
    let took = status_within(&addr, Duration::from_secs(2)).await;
    assert!(took < Duration::from_secs(2), "status took {took:?}");
    c.nodes[&1]
        .node()
        .write(common::Cmd::Put("k".into(), "v".into()))
        .await
        .expect("a write commits while the connection holds its streams");

    // A stream freed on the crowded connection makes room for one more there.
    tcp.write_all(&frame(RST_STREAM, 0, 1, &8u32.to_be_bytes()))
        .await
        .unwrap();
    let next = 2 * OPENED + 1;
    tcp.write_all(&frame(HEADERS, END_HEADERS, next, &block))
        .await
        .unwrap();
    // The request is answered (it has no body: the server ends it), not refused.
    tcp.write_all(&frame(DATA, 1, next, &[])).await.unwrap();
    loop {
        let f = tokio::time::timeout(Duration::from_secs(5), read_frame(&mut tcp))
            .await
            .expect("an answer within 5 s")
            .expect("the connection stays open");
        if f.stream == next {
            assert_ne!(f.kind, RST_STREAM, "the freed slot was not given back");
            assert_eq!(f.kind, HEADERS);
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_stops_answering_pings_is_dropped() {
    let interval = Duration::from_millis(300);
    let timeout = Duration::from_millis(300);
    let opts = GrpcOptions::default()
        .with_keepalive_interval(interval)
        .with_keepalive_timeout(timeout);
    let c = GrpcCluster::start(1, opts, |c| c).await;
    let addr = c.addrs[&1].clone();

    // A peer that answers pings keeps its connection.
    let mut polite = connect(&addr).await;
    let start = Instant::now();
    let mut pings = 0;
    while start.elapsed() < (interval + timeout) * 3 {
        let f = tokio::time::timeout(Duration::from_secs(5), read_frame(&mut polite))
            .await
            .expect("a frame within 5 s")
            .expect("a peer that answers pings is not dropped");
        if f.kind == PING && f.flags & ACK == 0 {
            pings += 1;
            polite
                .write_all(&frame(PING, ACK, 0, &f.payload))
                .await
                .unwrap();
        }
    }
    assert!(
        pings >= 2,
        "the server pings every {interval:?}: {pings} pings"
    );

    // One that goes silent is closed within the keepalive bound.
    let mut silent = connect(&addr).await;
    let start = Instant::now();
    let mut pinged = None;
    let closed = loop {
        let f = tokio::time::timeout(Duration::from_secs(10), read_frame(&mut silent))
            .await
            .expect("closed within 10 s");
        match f {
            None => break start.elapsed(),
            Some(f) if f.kind == PING && pinged.is_none() => pinged = Some(start.elapsed()),
            Some(_) => {}
        }
    };
    let pinged = pinged.expect("the server pinged before closing");
    assert!(
        pinged >= interval.mul_f32(0.9),
        "pinged after {pinged:?}, interval {interval:?}"
    );
    // Closed once the ping goes unanswered for `timeout` (with scheduling slack).
    assert!(
        closed >= pinged + timeout.mul_f32(0.9)
            && closed <= pinged + timeout + Duration::from_secs(1),
        "pinged at {pinged:?}, closed at {closed:?}, timeout {timeout:?}"
    );
}
