//! The server holds a bounded number of connections: at most `max_connections` in all and
//! `max_connections_per_ip` from one address. Connections past either are closed at once, the
//! cluster keeps replicating while the server is full, places come back when connections
//! close, and a member's address still gets a place when strangers have filled the rest.
//!
//! Connections come from several loopback source addresses (127.0.0.x), which Linux routes.
#![cfg(target_os = "linux")]

mod common;

use std::net::Ipv4Addr;
use std::net::SocketAddr;
use std::time::Duration;
use std::time::Instant;

use common::Cmd;
use common::GrpcCluster;
use common::WAIT;
use common::h2::ACK;
use common::h2::DATA;
use common::h2::END_HEADERS;
use common::h2::HEADERS;
use common::h2::PING;
use common::h2::PREFACE;
use common::h2::SETTINGS;
use common::h2::frame;
use common::h2::header_block;
use common::h2::read_frame;
use raft_core::NodeId;
use raft_grpc::Auth;
use raft_grpc::AuthConfig;
use raft_grpc::ClusterSecret;
use raft_grpc::GrpcOptions;
use raft_grpc::Role;
use raft_grpc::User;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpSocket;
use tokio::net::TcpStream;

const MAX_CONNECTIONS: usize = 40;
const PER_IP: usize = 8;

/// A TCP connection to `to` from the loopback address `from`.
async fn tcp_from(from: Ipv4Addr, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from.into(), 0)).unwrap();
    tokio::time::timeout(WAIT, socket.connect(to))
        .await
        .expect("connect timed out")
        .expect("connect failed")
}

/// Connects to `to` from the loopback address `from` and returns the connection if the server
/// admitted it (it answers the preface with its settings), `None` if the server closed it.
async fn connect_from(from: Ipv4Addr, to: SocketAddr) -> Option<TcpStream> {
    let mut s = tcp_from(from, to).await;
    if s.write_all(PREFACE).await.is_err()
        || s.write_all(&frame(SETTINGS, 0, 0, &[])).await.is_err()
    {
        return None;
    }
    tokio::time::timeout(WAIT, read_frame(&mut s))
        .await
        .expect("the server neither answered nor closed the connection")
        .map(|_| s)
}

/// Whether the server answers a PING on `s` (reading past its other frames).
async fn answers_ping(s: &mut TcpStream) -> bool {
    if s.write_all(&frame(PING, 0, 0, &[1, 2, 3, 4, 5, 6, 7, 8]))
        .await
        .is_err()
    {
        return false;
    }
    while let Some(f) = read_frame(s).await {
        if f.kind == PING && f.flags & ACK != 0 {
            return true;
        }
    }
    false
}

/// Fills `to` with connections from 127.0.0.`first_host` on, `PER_IP` from each address, until
/// three in a row are refused (the total limit), and returns those admitted.
async fn fill_from(first_host: u8, to: SocketAddr) -> Vec<TcpStream> {
    let mut held = Vec::new();
    let mut refused_in_a_row = 0;
    let mut host = first_host;
    while refused_in_a_row < 3 {
        assert!(host < 250, "the total limit never refused a connection");
        let from = Ipv4Addr::new(127, 0, 0, host);
        for _ in 0..PER_IP {
            match connect_from(from, to).await {
                Some(s) => {
                    held.push(s);
                    refused_in_a_row = 0;
                }
                None => refused_in_a_row += 1,
            }
        }
        host += 1;
    }
    held
}

/// Waits for the server to close each of `conns` (reading past its frames to the end) and
/// checks that it did so `timeout` after `start`, give or take the scheduling.
async fn closed_at(conns: &mut [TcpStream], start: Instant, timeout: Duration, what: &str) {
    for s in conns.iter_mut() {
        tokio::time::timeout(WAIT, async { while read_frame(s).await.is_some() {} })
            .await
            .unwrap_or_else(|_| panic!("{what}: not closed"));
    }
    let closed = start.elapsed();
    assert!(
        closed >= timeout.mul_f32(0.9) && closed <= timeout + Duration::from_secs(2),
        "{what}: closed after {closed:?}, timeout {timeout:?}"
    );
}

/// `n` connections from `from`, admitted as places come back (within [`WAIT`]).
async fn admitted_again(from: Ipv4Addr, to: SocketAddr, n: usize) -> Vec<TcpStream> {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut admitted = Vec::new();
    while admitted.len() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "places did not come back"
        );
        admitted.extend(connect_from(from, to).await);
    }
    admitted
}

/// File descriptors this process has open (the test's client sockets and the nodes' own).
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Held by each test that fills a server or opens and closes connections: one counts this
/// process's descriptors, which the others' connections would change.
static FILLING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The [`FILLING`] guard, a three-node cluster under the test's limits, its leader, and a
/// follower's address (the leader's replication arrives there). Keepalive is slow enough
/// that the test's connections, which answer no pings, are not closed while a test runs.
async fn limited_cluster() -> (
    tokio::sync::MutexGuard<'static, ()>,
    GrpcCluster,
    NodeId,
    SocketAddr,
) {
    let filling = FILLING.lock().await;
    let opts = GrpcOptions::default()
        .with_max_connections(MAX_CONNECTIONS)
        .with_max_connections_per_ip(PER_IP)
        .with_keepalive_interval(Duration::from_secs(600))
        .with_auth_timeout(Duration::from_secs(600));
    let c = GrpcCluster::start(3, opts, |c| c).await;
    let leader = c.leader().await;
    let follower = *c.nodes.keys().find(|id| **id != leader).unwrap();
    let addr: SocketAddr = c.addrs[&follower].parse().unwrap();
    // The guard first: it is dropped after the cluster.
    (filling, c, leader, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_past_the_limits_are_closed_and_the_cluster_keeps_replicating() {
    let (_filling, c, leader, addr) = limited_cluster().await;
    let node = c.nodes[&leader].node();
    node.write(Cmd::Put("before".into(), "1".into()))
        .await
        .unwrap();
    let fds_before = open_fds();

    // One address gets its share and no more.
    let mut held = Vec::new();
    let from = Ipv4Addr::new(127, 0, 0, 2);
    for _ in 0..PER_IP + 4 {
        held.extend(connect_from(from, addr).await);
    }
    assert_eq!(held.len(), PER_IP, "admitted from one address");

    // Other addresses take what is left of the total (the peers, from 127.0.0.1, hold some).
    held.extend(fill_from(3, addr).await);
    assert!(
        held.len() <= MAX_CONNECTIONS && held.len() >= MAX_CONNECTIONS - 12,
        "admitted {} connections with a limit of {MAX_CONNECTIONS}",
        held.len()
    );
    // Refused connections are not held on either side: descriptors grew by the admitted
    // connections' two ends (and a few of the nodes' own at most).
    let grown = open_fds().saturating_sub(fds_before);
    assert!(
        grown <= 2 * held.len() + 8,
        "{grown} descriptors opened for {} admitted connections",
        held.len()
    );

    // The leader's connection to the full follower is unaffected: writes commit and reach
    // every node.
    for i in 0..20 {
        node.write(Cmd::Put(format!("k{i}"), i.to_string()))
            .await
            .unwrap();
    }
    let states = c.converged().await;
    assert!(
        states
            .values()
            .all(|kv| kv.0.get("k19").map(String::as_str) == Some("19"))
    );

    // Places come back when connections close.
    drop(held);
    admitted_again(from, addr, PER_IP).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_is_admitted_to_a_port_that_strangers_have_filled() {
    let (_filling, _c, _, addr) = limited_cluster().await;

    let _strangers = fill_from(2, addr).await;
    assert!(
        connect_from(Ipv4Addr::new(127, 0, 0, 250), addr)
            .await
            .is_none(),
        "another stranger is refused"
    );

    // Every member's address here is 127.0.0.1: a peer reconnecting from it gets a place. The
    // server may not have looked up the members since the cluster formed, hence the retries;
    // without the exception none succeeds while the strangers hold their places.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if connect_from(Ipv4Addr::LOCALHOST, addr).await.is_some() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a connection from the members' address was refused for {WAIT:?}"
        );
        // Paces the attempts; each refused one is logged by the server.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        connect_from(Ipv4Addr::new(127, 0, 0, 251), addr)
            .await
            .is_none(),
        "strangers are still refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_speaks_is_closed_and_gives_its_place_back() {
    let _opening = FILLING.lock().await;
    let timeout = Duration::from_secs(2);
    let opts = GrpcOptions::default()
        .with_max_connections_per_ip(2)
        .with_preface_timeout(timeout)
        .with_auth_timeout(Duration::from_secs(600));
    let c = GrpcCluster::start(1, opts, |c| c).await;
    let addr: SocketAddr = c.addrs[&1].parse().unwrap();
    let from = Ipv4Addr::new(127, 0, 0, 2);

    // Two connections that send nothing take the address's two places...
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(tcp_from(from, addr).await);
    }
    let start = Instant::now();
    assert!(
        connect_from(from, addr).await.is_none(),
        "a third is refused"
    );

    // ...until the server closes them for want of a preface.
    closed_at(&mut silent, start, timeout, "a silent connection").await;

    // A connection that speaks keeps its place past the timeout: the places came back, and
    // the two admitted now still answer a ping after the timeout has run out for them (the
    // wait is the behaviour under test: nothing to wait on but the time).
    let mut speaking = admitted_again(from, addr, 2).await;
    tokio::time::sleep(timeout + Duration::from_secs(1)).await;
    for s in &mut speaking {
        let answered = tokio::time::timeout(WAIT, answers_ping(s))
            .await
            .expect("an answer to the ping or the connection closed");
        assert!(answered, "a connection that sent its preface was closed");
    }
}

/// Makes a `Status` call on stream `stream` of `s` with `token`, and reads until its answer ends
/// (refused or served). Returns whether an answer came before the connection closed.
async fn status_call(s: &mut TcpStream, stream: u32, token: &str) -> bool {
    let bearer = format!("Bearer {token}");
    let block = header_block(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/raftkit.v1.Cluster/Status"),
        (":authority", "node"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("authorization", &bearer),
    ]);
    const END_STREAM: u8 = 1;
    let mut call = frame(HEADERS, END_HEADERS, stream, &block);
    // An empty `StatusRequest`: not compressed, zero bytes long.
    call.extend(frame(DATA, END_STREAM, stream, &[0, 0, 0, 0, 0]));
    if s.write_all(&call).await.is_err() {
        return false;
    }
    while let Some(f) = read_frame(s).await {
        if f.stream == stream && f.flags & END_STREAM != 0 {
            return true;
        }
    }
    false
}

/// A connection that speaks HTTP/2 (and would answer pings) but makes no call that passes
/// authentication holds its place only until `auth_timeout`: one that never calls and one whose
/// call is refused are closed then, and their places come back. One that made a call that
/// passed keeps its place past the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_without_an_authenticated_call_is_closed_and_gives_its_place_back() {
    let _opening = FILLING.lock().await;
    let timeout = Duration::from_secs(2);
    let secret = ClusterSecret::new("a cluster secret for the tests, long enough").unwrap();
    let auth = AuthConfig::default()
        .with_cluster_secret(Some(secret))
        .with_users([User::new("reader", "reader-token", Role::Read)]);
    let opts = GrpcOptions::default()
        .with_auth(Auth::new(auth))
        .with_max_connections_per_ip(3)
        .with_auth_timeout(timeout)
        .with_keepalive_interval(Duration::from_secs(600));
    let c = GrpcCluster::start(1, opts, |c| c).await;
    let addr: SocketAddr = c.addrs[&1].parse().unwrap();
    let from = Ipv4Addr::new(127, 0, 0, 2);

    // Three connections take the address's three places: one only speaks, one calls with a
    // token no one has (and is answered, refused), one calls as a user.
    let start = Instant::now();
    let silent = connect_from(from, addr).await.expect("admitted");
    let mut refused = connect_from(from, addr).await.expect("admitted");
    assert!(status_call(&mut refused, 1, "a-token-no-one-has").await);
    let mut proven = connect_from(from, addr).await.expect("admitted");
    assert!(status_call(&mut proven, 1, "reader-token").await);
    assert!(
        connect_from(from, addr).await.is_none(),
        "a fourth is refused"
    );

    // The two that made no authenticated call are closed at the timeout, and their places
    // come back.
    let what = "a connection without an authenticated call";
    closed_at(&mut [silent, refused], start, timeout, what).await;
    let _admitted = admitted_again(from, addr, 2).await;

    // The one that proved itself is still served past its own timeout (the wait is the
    // behaviour under test: nothing to wait on but the time).
    tokio::time::sleep_until((start + timeout + Duration::from_secs(1)).into()).await;
    let answered = tokio::time::timeout(WAIT, answers_ping(&mut proven))
        .await
        .expect("an answer to the ping or the connection closed");
    assert!(
        answered,
        "a connection that made an authenticated call was closed"
    );
    assert!(status_call(&mut proven, 3, "reader-token").await);
}
