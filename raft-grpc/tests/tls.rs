//! Mutual TLS: a cluster whose nodes and clients hold certificates from one CA works; a client
//! or peer without a valid certificate is refused.

mod common;

use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

use common::Cmd;
use common::GrpcCluster;
use common::Kv;
use common::Query;
use common::Reply;
use raft_core::Consistency;
use raft_grpc::ClientError;
use raft_grpc::ClientOptions;
use raft_grpc::ClusterClient;
use raft_grpc::GrpcOptions;
use raft_grpc::ReloadableTls;
use raft_grpc::TlsConfig;
use raft_grpc::pb;
use raft_grpc::pb::raft_internal_client::RaftInternalClient;
use raft_grpc::status::ErrorCode;
use rcgen::BasicConstraints;
use rcgen::CertificateParams;
use rcgen::CertifiedIssuer;
use rcgen::DnType;
use rcgen::ExtendedKeyUsagePurpose;
use rcgen::IsCa;
use rcgen::KeyPair;
use rcgen::KeyUsagePurpose;
use tonic::transport::Certificate;
use tonic::transport::ClientTlsConfig;
use tonic::transport::Endpoint;
use tonic::transport::Identity;

fn make_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// A certificate for `sans`, usable as server and client; `(cert PEM, key PEM)`.
fn make_leaf(ca: &CertifiedIssuer<'static, KeyPair>, cn: &str, sans: &[&str]) -> (String, String) {
    make_leaf_for_nodes(ca, cn, sans, &[])
}

/// Like [`make_leaf`], also naming nodes `ids` (URI SANs `urn:raftkit:node:<id>`).
fn make_leaf_for_nodes(
    ca: &CertifiedIssuer<'static, KeyPair>,
    cn: &str,
    sans: &[&str],
    ids: &[u64],
) -> (String, String) {
    let mut params =
        CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    for id in ids {
        params.subject_alt_names.push(rcgen::SanType::URI(
            raft_grpc::auth::node_uri(*id).try_into().unwrap(),
        ));
    }
    params.distinguished_name.push(DnType::CommonName, cn);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, ca).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn write(dir: &Path, name: &str, pem: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, pem).unwrap();
    p
}

struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    node: (PathBuf, PathBuf),
    client: (PathBuf, PathBuf),
    rogue: (String, String),
    ca_pem: String,
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let ca = make_ca("raftkit test CA");
    let (node_cert, node_key) = make_leaf(&ca, "node", &["localhost", "127.0.0.1"]);
    let (client_cert, client_key) = make_leaf(&ca, "client", &["client.local"]);
    let rogue = make_leaf(&make_ca("another CA"), "rogue", &["localhost", "127.0.0.1"]);
    Pki {
        ca: write(dir.path(), "ca.pem", &ca.pem()),
        node: (
            write(dir.path(), "node.pem", &node_cert),
            write(dir.path(), "node.key", &node_key),
        ),
        client: (
            write(dir.path(), "client.pem", &client_cert),
            write(dir.path(), "client.key", &client_key),
        ),
        rogue,
        ca_pem: ca.pem(),
        _dir: dir,
    }
}

/// A client of `addr`'s internal service presenting `identity`, trusting `ca_pem`.
fn internal_client(
    addr: &str,
    ca_pem: &str,
    identity: Identity,
) -> RaftInternalClient<tonic::transport::Channel> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .identity(identity)
        .domain_name("127.0.0.1");
    let ch = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_lazy();
    RaftInternalClient::new(ch)
}

fn short(tls: Option<TlsConfig>) -> ClientOptions {
    ClientOptions::default()
        .with_tls(tls)
        .with_attempt_timeout(Duration::from_millis(500))
        .with_total_timeout(Duration::from_secs(2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mutual_tls_admits_certified_clients_and_peers_only() {
    let pki = pki();
    let node_tls = TlsConfig::from_pem_files(&pki.ca, &pki.node.0, &pki.node.1)
        .unwrap()
        .require_client_cert(true);
    let opts = GrpcOptions::default().with_tls(Some(ReloadableTls::new(node_tls).unwrap()));
    let c = GrpcCluster::start(3, opts, |c| c).await;

    // A client with a certificate from the cluster's CA works, through every node.
    let client_tls = TlsConfig::from_pem_files(&pki.ca, &pki.client.0, &pki.client.1).unwrap();
    let client = ClusterClient::<Kv>::new(c.endpoints(), short(Some(client_tls))).unwrap();
    client
        .write(Cmd::Put("k".into(), "v".into()))
        .await
        .unwrap();
    let r = client
        .read(Query::Get("k".into()), Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(r, Reply::Value(Some("v".into())));

    // No client certificate: refused.
    let no_cert = ClusterClient::<Kv>::new(
        c.endpoints(),
        short(Some(TlsConfig::client_only(&pki.ca).unwrap())),
    )
    .unwrap();
    let err = no_cert
        .write(Cmd::Put("x".into(), "y".into()))
        .await
        .unwrap_err();
    // Its session could not be opened, so the write was never sent.
    assert!(
        matches!(&err, ClientError::NoSession(e) if matches!(**e, ClientError::GaveUp { .. })),
        "{err:?}"
    );
    assert!(!err.outcome_unknown());

    // A certificate from another CA: refused.
    let rogue = TlsConfig::from_pem(
        pki.ca_pem.clone(),
        Some((pki.rogue.0.clone().into(), pki.rogue.1.clone().into())),
    );
    let rogue_client = ClusterClient::<Kv>::new(c.endpoints(), short(Some(rogue))).unwrap();
    assert!(
        rogue_client
            .write(Cmd::Put("x".into(), "y".into()))
            .await
            .is_err()
    );

    // Plain text: refused.
    let plain = ClusterClient::<Kv>::new(c.endpoints(), short(None)).unwrap();
    assert!(plain.write(Cmd::Put("x".into(), "y".into())).await.is_err());

    // A would-be peer without a valid certificate cannot reach the internal service either.
    let addr = c.addrs[&1].clone();
    let peer_with = |identity: Identity| internal_client(&addr, &pki.ca_pem, identity);
    let cluster_id = c.nodes[&1].node().cluster_id().unwrap().to_string();
    let vote_to = |target| {
        let vote =
            raft_core::transport::rpc::VoteRequest::new(openraft::impls::Vote::new(100, 9), None);
        let mut req = tonic::Request::new(pb::RaftRequest {
            target,
            payload: raft_core::codec::encode(&vote).unwrap().into(),
        });
        req.set_timeout(Duration::from_secs(2));
        req.metadata_mut()
            .insert("x-raftkit-cluster-id", cluster_id.parse().unwrap());
        req
    };
    // Control: with the node's own certificate the same channel reaches the server, which
    // answers a vote for an unknown target with its own error.
    let node_identity = Identity::from_pem(
        std::fs::read(&pki.node.0).unwrap(),
        std::fs::read(&pki.node.1).unwrap(),
    );
    let answered = peer_with(node_identity)
        .vote(vote_to(999))
        .await
        .expect_err("no node 999");
    assert_eq!(
        ErrorCode::of(&answered),
        Some(ErrorCode::InvalidRequest),
        "{answered:?}"
    );
    let mut rogue_peer = peer_with(Identity::from_pem(&pki.rogue.0, &pki.rogue.1));
    for target in [999, 1] {
        let refused = rogue_peer
            .vote(vote_to(target))
            .await
            .expect_err("a peer with a foreign certificate is refused");
        assert_eq!(
            ErrorCode::of(&refused),
            None,
            "refused before reaching the server: {refused:?}"
        );
    }

    // Nothing the refused parties sent got in; the cluster still agrees.
    for (id, s) in c.converged().await {
        assert_eq!(s.0.get("x"), None, "node {id}");
        assert_eq!(s.0.get("k").map(String::as_str), Some("v"), "node {id}");
    }
    let m = c.nodes[&1].node().metrics();
    assert!(
        m.term < 100,
        "the rogue vote request had no effect: term {}",
        m.term
    );
}

/// A node certificate naming nodes `ids`, for loopback.
fn make_node_cert(ca: &CertifiedIssuer<'static, KeyPair>, ids: &[u64]) -> (String, String) {
    make_leaf_for_nodes(ca, "node", &["localhost", "127.0.0.1"], ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_certificate_is_not_a_peer() {
    let ca = make_ca("raftkit test CA");
    let (node_cert, node_key) = make_node_cert(&ca, &[1, 2, 3]);
    // A client certificate from the same CA, valid for TLS client use, naming no node.
    let (client_cert, client_key) = make_leaf(&ca, "alice", &["client.local"]);
    let tls = TlsConfig::from_pem(
        ca.pem(),
        Some((node_cert.clone().into(), node_key.clone().into())),
    )
    .require_client_cert(true);
    let opts = GrpcOptions::default()
        .with_tls(Some(ReloadableTls::new(tls).unwrap()))
        .with_auth(raft_grpc::Auth::new(
            raft_grpc::AuthConfig::default()
                .with_peer_certs(true)
                .with_users(vec![raft_grpc::User::new(
                    "alice",
                    "alice-token",
                    raft_grpc::Role::Write,
                )])
                .with_cert_users(true),
        ));
    // The nodes' own certificates pass: the cluster forms and replicates.
    let c = GrpcCluster::start(3, opts, |c| c).await;
    let cluster_id = c.nodes[&1].node().cluster_id().unwrap().to_string();
    let addr = c.addrs[&1].clone();
    let ca_pem = ca.pem();
    let peer_with =
        |cert: &str, key: &str| internal_client(&addr, &ca_pem, Identity::from_pem(cert, key));
    // A vote request whose payload speaks for `candidate`, naming `from` as its sender.
    let vote_as = |candidate: u64, from: Option<u64>| {
        let v = raft_core::transport::rpc::VoteRequest::new(
            openraft::impls::Vote::new(1 << 50, candidate),
            None,
        );
        let mut req = tonic::Request::new(pb::RaftRequest {
            target: 1,
            payload: raft_core::codec::encode(&v).unwrap().into(),
        });
        req.set_timeout(Duration::from_secs(2));
        let meta = req.metadata_mut();
        meta.insert("x-raftkit-cluster-id", cluster_id.parse().unwrap());
        if let Some(from) = from {
            meta.insert("x-raftkit-from", from.to_string().parse().unwrap());
        }
        req
    };
    let vote = |from: u64| vote_as(from, Some(from));
    let s = peer_with(&client_cert, &client_key)
        .vote(vote(2))
        .await
        .expect_err("a client certificate is refused on RaftInternal");
    assert_eq!(s.code(), tonic::Code::Unauthenticated, "{s:?}");
    assert!(s.message().contains("does not name a node"), "{s:?}");
    // A node certificate used by a node it does not name is refused as well.
    let (other_cert, other_key) = make_node_cert(&ca, &[7]);
    let s = peer_with(&other_cert, &other_key)
        .vote(vote(2))
        .await
        .expect_err("node 7's certificate cannot speak for node 2");
    assert_eq!(s.code(), tonic::Code::Unauthenticated, "{s:?}");
    // Nor by leaving its sender out, or by naming itself while its payload speaks for node 2.
    let s = peer_with(&other_cert, &other_key)
        .vote(vote_as(2, None))
        .await
        .expect_err("a call under a node certificate names its sender");
    assert_eq!(s.code(), tonic::Code::Unauthenticated, "{s:?}");
    let s = peer_with(&other_cert, &other_key)
        .vote(vote_as(2, Some(7)))
        .await
        .expect_err("a vote from node 7 cannot be node 2's");
    assert!(s.message().contains("speaks for node 2"), "{s:?}");
    // Nor can it hand on node 2's leadership.
    let transfer = raft_core::transport::rpc::TransferLeaderRequest::new(
        openraft::impls::Vote::new_committed(1 << 50, 2),
        3,
        None,
    );
    let mut req = tonic::Request::new(pb::RaftRequest {
        target: 1,
        payload: raft_core::codec::encode(&transfer).unwrap().into(),
    });
    req.set_timeout(Duration::from_secs(2));
    req.metadata_mut()
        .insert("x-raftkit-cluster-id", cluster_id.parse().unwrap());
    req.metadata_mut()
        .insert("x-raftkit-from", "7".parse().unwrap());
    let s = peer_with(&other_cert, &other_key)
        .transfer_leader(req)
        .await
        .expect_err("a transfer from node 7 cannot be node 2's");
    assert!(s.message().contains("speaks for node 2"), "{s:?}");

    // The client certificate still works where it belongs: on the cluster service, as alice.
    let client_tls = TlsConfig::from_pem(
        ca.pem(),
        Some((client_cert.into_bytes(), client_key.into_bytes())),
    );
    let client = ClusterClient::<Kv>::new(c.endpoints(), short(Some(client_tls))).unwrap();
    client
        .write(Cmd::Put("k".into(), "v".into()))
        .await
        .unwrap();
    match client.remove_node(3).await {
        Err(ClientError::Refused(raft_grpc::RequestError::PermissionDenied(_))) => {}
        other => panic!("alice (write) removed a node: {other:?}"),
    }
    for (id, n) in &c.nodes {
        let m = n.node().metrics();
        assert!(m.term < 1 << 50, "node {id}: term {}", m.term);
        assert_eq!(m.voters.len(), 3, "node {id}");
    }
}

/// The leaf certificate `addr` serves to a new connection (DER), connecting with `identity`
/// and trusting `ca_pem`.
async fn served_leaf(addr: &str, ca_pem: &str, identity: &(String, String)) -> Vec<u8> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let chain = CertificateDer::pem_slice_iter(identity.0.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(identity.1.as_bytes()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(name, tcp),
    )
    .await
    .expect("handshake within 5 s")
    .expect("handshake");
    let (_, conn) = tls.get_ref();
    conn.peer_certificates().unwrap()[0].to_vec()
}

/// The serial number of a certificate, PEM or DER.
fn serial(cert: &[u8]) -> Vec<u8> {
    let der = match x509_parser::pem::parse_x509_pem(cert) {
        Ok((_, pem)) => pem.contents,
        Err(_) => cert.to_vec(),
    };
    let (_, c) = x509_parser::parse_x509_certificate(&der).unwrap();
    c.raw_serial().to_vec()
}

/// Writes `key` = `value` through `client` and waits until every node has applied it.
async fn committed_everywhere(
    c: &GrpcCluster,
    client: &ClusterClient<Kv>,
    key: &str,
    value: &str,
) -> std::collections::BTreeMap<u64, Kv> {
    client
        .write(Cmd::Put(key.into(), value.into()))
        .await
        .unwrap();
    let states = c.converged().await;
    for (id, s) in &states {
        assert_eq!(s.0.get(key).map(String::as_str), Some(value), "node {id}");
    }
    states
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reloaded_certificate_serves_new_connections_both_ways() {
    let old_ca = make_ca("raftkit test CA");
    let old = make_node_cert(&old_ca, &[1, 2, 3]);
    let tls_for = |ca: &CertifiedIssuer<'static, KeyPair>, (cert, key): &(String, String)| {
        TlsConfig::from_pem(ca.pem(), Some((cert.clone().into(), key.clone().into())))
            .require_client_cert(true)
    };
    // One handle for the three nodes: reloading it is every node reloading.
    let live = ReloadableTls::new(tls_for(&old_ca, &old)).unwrap();
    let opts = GrpcOptions::default()
        .with_tls(Some(live.clone()))
        .with_auth(raft_grpc::Auth::new(
            raft_grpc::AuthConfig::default().with_peer_certs(true),
        ));
    let mut c = GrpcCluster::start(3, opts, |c| c).await;
    let addr = c.addrs[&1].clone();
    assert_eq!(
        serial(&served_leaf(&addr, &old_ca.pem(), &old).await),
        serial(old.0.as_bytes())
    );

    // A new CA, trusted alone from now on, and a new leaf from it.
    let new_ca = make_ca("raftkit test CA, second generation");
    let new = make_node_cert(&new_ca, &[1, 2, 3]);
    live.reload(tls_for(&new_ca, &new)).unwrap();
    let served = serial(&served_leaf(&addr, &new_ca.pem(), &new).await);
    assert_eq!(served, serial(new.0.as_bytes()));
    assert_ne!(served, serial(old.0.as_bytes()));

    // The connections open before the reload still carry writes.
    let endpoints = c.endpoints();
    let client_with = |ca: &CertifiedIssuer<'static, KeyPair>, id: &(String, String)| {
        ClusterClient::<Kv>::new(endpoints.clone(), short(Some(tls_for(ca, id)))).unwrap()
    };
    let client = client_with(&new_ca, &new);
    client
        .write(Cmd::Put("a".into(), "1".into()))
        .await
        .unwrap();
    // Node 3 restarts: every connection to and from it is new, so it only rejoins if both
    // sides present (and check) the new certificates, node identity included.
    c.stop(3).await;
    c.launch(3).await;
    committed_everywhere(&c, &client, "b", "2").await;
    // A client still holding the old generation's certificate is refused.
    let stale = client_with(&old_ca, &old);
    assert!(stale.write(Cmd::Put("x".into(), "y".into())).await.is_err());

    // A reload with a garbage key fails and changes nothing.
    let garbage = TlsConfig::from_pem(
        new_ca.pem(),
        Some((new.0.clone().into(), b"not a key".to_vec())),
    )
    .require_client_cert(true);
    assert!(live.reload(garbage).is_err());
    assert_eq!(
        serial(&served_leaf(&addr, &new_ca.pem(), &new).await),
        serial(new.0.as_bytes())
    );
    for (id, s) in committed_everywhere(&c, &client, "c", "3").await {
        assert_eq!(s.0.get("x"), None, "node {id}");
    }
}

/// A one-node cluster serving TLS under `opts`; its address, CA and node certificate.
#[cfg(target_os = "linux")]
async fn tls_node(
    opts: GrpcOptions,
) -> (
    GrpcCluster,
    String,
    CertifiedIssuer<'static, KeyPair>,
    (String, String),
) {
    let ca = make_ca("raftkit test CA");
    let cert = make_node_cert(&ca, &[1]);
    let tls = TlsConfig::from_pem(
        ca.pem(),
        Some((cert.0.clone().into(), cert.1.clone().into())),
    );
    let opts = opts.with_tls(Some(ReloadableTls::new(tls).unwrap()));
    let c = GrpcCluster::start(1, opts, |c| c).await;
    let addr = c.addrs[&1].clone();
    (c, addr, ca, cert)
}

/// 127.0.0.2: no member's address (the node's own is 127.0.0.1), so connections from it need
/// a handshake permit.
#[cfg(target_os = "linux")]
const STRANGER: std::net::Ipv4Addr = std::net::Ipv4Addr::new(127, 0, 0, 2);

/// A connection to `addr` from [`STRANGER`].
#[cfg(target_os = "linux")]
async fn stranger(addr: &str) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(std::net::SocketAddr::new(STRANGER.into(), 0))
        .unwrap();
    socket.connect(addr.parse().unwrap()).await.unwrap()
}

/// `n` connections to `addr` from [`STRANGER`], which say nothing.
#[cfg(target_os = "linux")]
async fn strangers(addr: &str, n: usize) -> Vec<tokio::net::TcpStream> {
    let mut all = Vec::with_capacity(n);
    for _ in 0..n {
        all.push(stranger(addr).await);
    }
    all
}

/// A channel to `addr` over TLS with `cert`, from the address `from`; it connects at its first
/// call.
#[cfg(target_os = "linux")]
fn tls_channel(
    addr: &str,
    from: std::net::Ipv4Addr,
    ca: &CertifiedIssuer<'static, KeyPair>,
    cert: &(String, String),
) -> tonic::transport::Channel {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.pem()))
        .identity(Identity::from_pem(&cert.0, &cert.1))
        .domain_name("127.0.0.1");
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .local_address(Some(from.into()))
        .tls_config(tls)
        .unwrap()
        .connect_lazy()
}

/// A status call on `channel` within `within`.
#[cfg(target_os = "linux")]
async fn status_on(
    channel: &tonic::transport::Channel,
    within: Duration,
) -> Result<(), tonic::Status> {
    let mut req = tonic::Request::new(pb::StatusRequest {});
    req.set_timeout(within);
    pb::cluster_client::ClusterClient::new(channel.clone())
        .status(req)
        .await
        .map(|_| ())
}

/// A status call to `addr` over TLS with `cert`, from the address `from`, within `within`: a
/// whole call, so the server has finished with the handshake when it returns.
#[cfg(target_os = "linux")]
async fn status_over_tls(
    addr: &str,
    from: std::net::Ipv4Addr,
    ca: &CertifiedIssuer<'static, KeyPair>,
    cert: &(String, String),
    within: Duration,
) -> Result<(), tonic::Status> {
    status_on(&tls_channel(addr, from, ca, cert), within).await
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn silent_connections_cannot_stall_handshakes() {
    const LIMIT: usize = 4;
    // Long enough that a debug build's handshake on a busy host fits in half of it.
    let handshake_timeout = Duration::from_secs(2);
    let (_c, addr, ca, cert) = tls_node(
        GrpcOptions::default()
            .with_tls_handshake_timeout(handshake_timeout)
            .with_max_tls_handshakes(LIMIT),
    )
    .await;

    // Connections that never say hello, one short of the limit: a real handshake still
    // completes at once beside them.
    let mut silent = strangers(&addr, LIMIT - 1).await;
    let start = std::time::Instant::now();
    status_over_tls(&addr, STRANGER, &ca, &cert, handshake_timeout)
        .await
        .expect("a status answer over TLS beside silent connections");
    assert!(
        start.elapsed() < handshake_timeout / 2,
        "a handshake beside silent connections took {:?}",
        start.elapsed()
    );

    // At the limit, a further connection is closed at once rather than queued.
    silent.push(stranger(&addr).await);
    let mut extra = stranger(&addr).await;
    let start = std::time::Instant::now();
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(
        handshake_timeout / 2,
        tokio::io::AsyncReadExt::read(&mut extra, &mut buf),
    )
    .await
    .expect("a connection past the handshake limit is closed at once");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    assert!(start.elapsed() < handshake_timeout / 2);

    // The silent ones are closed after the handshake timeout, not before.
    let start = std::time::Instant::now();
    for mut s in silent {
        let n = tokio::time::timeout(
            handshake_timeout * 3,
            tokio::io::AsyncReadExt::read(&mut s, &mut buf),
        )
        .await
        .expect("a silent connection is closed within the handshake timeout");
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    }
    assert!(start.elapsed() <= handshake_timeout + Duration::from_millis(500));
    // And the slots are free again.
    status_over_tls(&addr, STRANGER, &ca, &cert, handshake_timeout)
        .await
        .expect("a status answer over TLS once the silent connections are closed");
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_handshakes_while_strangers_hold_every_permit() {
    const LIMIT: usize = 2;
    let handshake_timeout = Duration::from_secs(10);
    let (_c, addr, ca, cert) = tls_node(
        GrpcOptions::default()
            .with_tls_handshake_timeout(handshake_timeout)
            .with_max_tls_handshakes(LIMIT),
    )
    .await;
    let silent = strangers(&addr, LIMIT).await;

    // The strangers hold every permit for the next 10 s. The node's own address (127.0.0.1,
    // its address in the membership) needs none. The server may not have looked the
    // membership up since the cluster formed, hence the retries, all well inside the
    // strangers' 10 s: without the exception none succeeds.
    let start = std::time::Instant::now();
    let member = std::net::Ipv4Addr::LOCALHOST;
    while let Err(e) = status_over_tls(&addr, member, &ca, &cert, Duration::from_secs(1)).await {
        assert!(
            start.elapsed() < handshake_timeout / 2,
            "no handshake from the member's address beside strangers holding every permit: {e}"
        );
        // Paces the attempts; each refused one is logged by the server.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(silent);
}

/// A TLS connection that has made a call that passes authentication keeps its place past
/// `auth_timeout` (the server finds it by the address the TLS layer reports): while it is open,
/// its address's one place stays taken.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tls_connection_that_made_an_authenticated_call_keeps_its_place() {
    let timeout = Duration::from_secs(1);
    let (_c, addr, ca, cert) = tls_node(
        GrpcOptions::default()
            .with_auth_timeout(timeout)
            .with_max_connections_per_ip(1),
    )
    .await;
    let from = std::net::Ipv4Addr::new(127, 0, 0, 3);
    let first = tls_channel(&addr, from, &ca, &cert);
    status_on(&first, Duration::from_secs(5))
        .await
        .expect("the first connection is served");
    // The rule under test is time-based: nothing to wait on but the time. The connection's
    // deadline started before the call returned.
    tokio::time::sleep(timeout + Duration::from_secs(1)).await;
    assert!(
        status_over_tls(&addr, from, &ca, &cert, Duration::from_secs(2))
            .await
            .is_err(),
        "a second connection from the address was admitted: the first one was closed"
    );
    status_on(&first, Duration::from_secs(5))
        .await
        .expect("the first connection is still served");
}
