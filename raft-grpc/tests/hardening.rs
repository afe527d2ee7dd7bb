//! Hardening of the server's edges: a server told to use TLS never serves plain TCP, and a
//! snapshot sender cannot keep the node's one snapshot-receive slot by trickling chunks.
//!
//! The snapshot tests run on Tokio's paused clock against a real server (over an in-memory
//! connection), so minutes of a sender's pacing take no real time.

// Not every shared piece is used here.
#[allow(unused_imports)]
mod common;

use std::time::Duration;

use common::Kv;
use raft_core::Config;
use raft_core::Node;
use raft_core::types::Vote;
use raft_grpc::GrpcOptions;
use raft_grpc::GrpcTransport;
use raft_grpc::ReloadableTls;
use raft_grpc::ServeError;
use raft_grpc::Server;
use raft_grpc::TlsConfig;
use raft_grpc::pb;
use raft_grpc::pb::raft_internal_client::RaftInternalClient;
use rcgen::BasicConstraints;
use rcgen::CertificateParams;
use rcgen::CertifiedIssuer;
use rcgen::DnType;
use rcgen::IsCa;
use rcgen::KeyPair;
use rcgen::KeyUsagePurpose;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::Request;
use tonic::transport::Channel;
use tonic::transport::Endpoint;

const MIB: u64 = 1 << 20;

fn ca() -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "raftkit hardening CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn ca_pem() -> String {
    ca().pem()
}

/// A node that has never been initialized, and a server for it, with `opts`.
async fn node_and_server(opts: GrpcOptions) -> (Node<Kv>, Server<Kv>) {
    let transport = GrpcTransport::new(1, opts);
    // Slow timers: the paused clock runs every timer it passes.
    let config = Config::in_memory(1).with_timing(Duration::from_secs(1), Duration::from_secs(5));
    let node: Node<Kv> = Node::start(config, Kv::default(), transport.clone())
        .await
        .unwrap();
    let server = Server::new(node.clone(), &transport);
    (node, server)
}

/// Waits for a server that should refuse to start; fails if it is still serving after a while.
async fn refused(serving: impl Future<Output = Result<(), ServeError>>) -> ServeError {
    match tokio::time::timeout(Duration::from_secs(10), serving).await {
        Ok(Err(e)) => e,
        Ok(Ok(())) => panic!("the server stopped without an error"),
        Err(_) => panic!("a server whose TLS configuration has no certificate is serving"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_whose_tls_has_no_certificate_refuses_to_start() {
    common::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, ca_pem()).unwrap();

    // `serve`: a client-only configuration (a CA, no certificate and key).
    let tls = ReloadableTls::new(TlsConfig::client_only(&ca).unwrap()).unwrap();
    let (node, server) = node_and_server(GrpcOptions::default().with_tls(Some(tls))).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let e = refused(server.serve(listener, std::future::pending())).await;
    assert!(matches!(e, ServeError::TlsWithoutIdentity), "{e:?}");
    node.shutdown().await.unwrap();

    // `serve_with_incoming`: PEM in memory, without an identity.
    let tls = ReloadableTls::new(TlsConfig::from_pem(ca_pem(), None)).unwrap();
    let (node, server) = node_and_server(GrpcOptions::default().with_tls(Some(tls))).await;
    let incoming =
        futures_util::stream::pending::<Result<tokio::io::DuplexStream, std::io::Error>>();
    let e = refused(server.serve_with_incoming(incoming, std::future::pending())).await;
    assert!(matches!(e, ServeError::TlsWithoutIdentity), "{e:?}");
    node.shutdown().await.unwrap();

    // `GrpcNode::start`: refused before the node starts, not left without a server.
    let tls = ReloadableTls::new(TlsConfig::client_only(&ca).unwrap()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let started = raft_grpc::GrpcNode::start(
        Config::in_memory(1),
        Kv::default(),
        listener,
        GrpcOptions::default().with_tls(Some(tls)),
    )
    .await;
    assert!(
        matches!(
            started,
            Err(raft_grpc::StartError::Serve(ServeError::TlsWithoutIdentity))
        ),
        "{:?}",
        started.err()
    );
}

/// Serves `server` over one in-memory connection; returns a client of its internal service.
async fn connect(server: Server<Kv>) -> RaftInternalClient<Channel> {
    let (client_io, server_io) = tokio::io::duplex(1 << 20);
    let incoming = futures_util::StreamExt::chain(
        futures_util::stream::once(async move { Ok::<_, std::io::Error>(server_io) }),
        futures_util::stream::pending(),
    );
    tokio::spawn(server.serve_with_incoming(incoming, std::future::pending()));
    let mut client_io = Some(client_io);
    let channel = Endpoint::from_static("http://in-memory")
        .connect_with_connector(tower::service_fn(move |_: tonic::codegen::http::Uri| {
            let io = client_io.take();
            async move {
                io.map(hyper_util::rt::TokioIo::new)
                    .ok_or_else(|| std::io::Error::other("the in-memory connection is used"))
            }
        }))
        .await
        .unwrap();
    RaftInternalClient::new(channel)
}

/// A chunk of a snapshot of `total` bytes sent by node 2, leader of term 1.
fn chunk(offset: u64, data: Vec<u8>, total: u64, last: bool) -> pb::SnapshotChunk {
    pb::SnapshotChunk {
        target: 1,
        vote: if offset == 0 {
            raft_core::codec::encode(&Vote::new_committed(1, 2))
                .unwrap()
                .into()
        } else {
            Default::default()
        },
        offset,
        data: data.into(),
        last,
        total_bytes: if offset == 0 { total } else { 0 },
    }
}

/// Sends a snapshot whose first chunk is 1 byte, then `next(i)` every 29 s (under the 30 s
/// idle timeout) for about ten minutes, and waits for the server's answer. Returns the answer's
/// code and the (paused-clock) time from the first chunk to the answer.
async fn trickle(
    client: &mut RaftInternalClient<Channel>,
    total: u64,
    next: fn(u64) -> pb::SnapshotChunk,
) -> (Code, Duration) {
    let (tx, rx) = mpsc::channel(1);
    let start = Instant::now();
    tx.send(chunk(0, vec![7], total, false)).await.unwrap();
    let sender = tokio::spawn(async move {
        for i in 1..=20 {
            tokio::time::sleep(Duration::from_secs(29)).await;
            if tx.send(next(i)).await.is_err() {
                return; // the server ended the call
            }
        }
    });
    let result = client
        .install_snapshot(Request::new(ReceiverStream::new(rx)))
        .await;
    let elapsed = start.elapsed();
    sender.abort();
    let code = match result {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    };
    (code, elapsed)
}

/// Whether the receive slot is free: a new one-chunk (garbage) snapshot is received and then
/// refused as corrupt, rather than refused as busy.
async fn slot_is_free(client: &mut RaftInternalClient<Channel>) -> bool {
    let s = client
        .install_snapshot(Request::new(tokio_stream::iter([chunk(
            0,
            vec![1; 16],
            16,
            true,
        )])))
        .await
        .unwrap_err();
    match s.code() {
        Code::InvalidArgument => true,
        Code::ResourceExhausted => false,
        _ => panic!("unexpected answer: {s:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn an_empty_chunk_does_not_keep_a_snapshot_stream_alive() {
    common::init_tracing();
    let (node, server) = node_and_server(GrpcOptions::default()).await;
    let mut client = connect(server).await;
    // After a first byte, an empty chunk every 29 s: refused at the first one, not kept for
    // ten minutes (before the fix each one restarted the 30 s idle timer).
    let (code, elapsed) = trickle(&mut client, 64 * MIB, |_| chunk(1, Vec::new(), 0, false)).await;
    assert_eq!(code, Code::InvalidArgument, "after {elapsed:?}");
    assert!(
        elapsed < Duration::from_secs(30),
        "refused after {elapsed:?}"
    );
    assert!(slot_is_free(&mut client).await);
    node.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_snapshot_trickled_a_byte_at_a_time_loses_the_slot_within_its_allowance() {
    common::init_tracing();
    let (node, server) = node_and_server(GrpcOptions::default()).await;
    let mut client = connect(server).await;
    // 64 GiB announced, which would allow 30 s plus one second per 8 MiB (over two hours) for
    // the whole. One byte every 29 s never trips the idle timeout, but what arrived must keep
    // up with 8 MiB/s beyond 30 s (the longer of that and the node's 10 s request timeout):
    // the stream loses the slot at 30 s.
    let bound = Duration::from_secs(30);
    let (code, elapsed) = trickle(&mut client, 64 << 30, |i| chunk(i, vec![7], 0, false)).await;
    assert_eq!(code, Code::DeadlineExceeded, "after {elapsed:?}");
    assert!(elapsed >= bound, "cut after {elapsed:?}, before {bound:?}");
    assert!(
        elapsed < bound + Duration::from_secs(5),
        "held the slot for {elapsed:?}, past {bound:?}"
    );
    assert!(slot_is_free(&mut client).await);
    node.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_snapshot_sent_at_the_minimum_rate_keeps_the_slot() {
    common::init_tracing();
    // A minimum rate of 1 MiB/s, and 40 s of 128 KiB chunks at that rate after a first byte:
    // past the 30 s allowance the pace rule applies, and the snapshot must still be received
    // whole (then refused as no snapshot, since it is garbage), not cut.
    const RATE: u64 = MIB;
    const CHUNK: u64 = RATE / 8;
    let opts = GrpcOptions::default().with_min_transfer_rate(RATE);
    let (node, server) = node_and_server(opts).await;
    let mut client = connect(server).await;
    let chunks = 40 * 8;
    let total = 1 + chunks * CHUNK;
    let (tx, rx) = mpsc::channel(1);
    tx.send(chunk(0, vec![7], total, false)).await.unwrap();
    let sender = tokio::spawn(async move {
        for i in 0..chunks {
            tokio::time::sleep(Duration::from_millis(125)).await;
            let data = vec![7; CHUNK as usize];
            if tx
                .send(chunk(1 + i * CHUNK, data, 0, i + 1 == chunks))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let result = client
        .install_snapshot(Request::new(ReceiverStream::new(rx)))
        .await;
    sender.abort();
    let code = result.map_or_else(|s| s.code(), |_| Code::Ok);
    assert_eq!(code, Code::InvalidArgument, "received whole, then refused");
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_served_by_tonics_tls_that_never_says_hello_is_closed() {
    common::init_tracing();
    let ca = ca();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let tls = TlsConfig::from_pem(
        ca.pem(),
        Some((cert.pem().into(), key.serialize_pem().into())),
    );
    let handshake_timeout = Duration::from_secs(1);
    let opts = GrpcOptions::default()
        .with_tls(Some(ReloadableTls::new(tls).unwrap()))
        .with_tls_handshake_timeout(handshake_timeout);
    let (node, server) = node_and_server(opts).await;
    let (mut client_io, server_io) = tokio::io::duplex(1 << 16);
    let incoming = futures_util::StreamExt::chain(
        futures_util::stream::once(async move { Ok::<_, std::io::Error>(server_io) }),
        futures_util::stream::pending(),
    );
    let serving = tokio::spawn(server.serve_with_incoming(incoming, std::future::pending()));
    // The connection sends nothing: the server gives up on it after the handshake timeout.
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(
        handshake_timeout * 10,
        tokio::io::AsyncReadExt::read(&mut client_io, &mut buf),
    )
    .await
    .expect("a connection that never starts its handshake is closed");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    serving.abort();
    node.shutdown().await.unwrap();
}
