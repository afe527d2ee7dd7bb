//! Pieces for running gRPC nodes on turmoil's simulated network.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::pin::Pin;
use std::task::Context;
use std::task::Poll;
use std::time::Duration;

use raft_core::Config;
use raft_core::Consistency;
use raft_core::Node;
use raft_core::NodeId;
use raft_grpc::ClientOptions;
use raft_grpc::ClusterClient;
use raft_grpc::Connector;
use raft_grpc::GrpcOptions;
use raft_grpc::GrpcTransport;
use raft_grpc::NodeStatus;
use raft_grpc::Server;
use tokio::io::AsyncRead;
use tokio::io::AsyncWrite;
use tokio::io::ReadBuf;
use tonic::transport::server::Connected;
use tonic::transport::server::TcpConnectInfo;

use super::Kv;
use super::Query;
use super::Reply;

pub const PORT: u16 = 7000;

/// A turmoil stream the gRPC server can serve (tonic needs `Connected`).
pub struct SimStream(pub turmoil::net::TcpStream);

impl Connected for SimStream {
    type ConnectInfo = TcpConnectInfo;
    fn connect_info(&self) -> TcpConnectInfo {
        TcpConnectInfo {
            local_addr: self.0.local_addr().ok(),
            remote_addr: self.0.peer_addr().ok(),
        }
    }
}

impl AsyncRead for SimStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for SimStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

pub fn sim_connector() -> Connector {
    Connector::custom(|host, port| async move {
        turmoil::net::TcpStream::connect((host.as_str(), port)).await
    })
}

pub fn opts() -> GrpcOptions {
    GrpcOptions::default()
        .with_connector(sim_connector())
        .with_channel(
            raft_grpc::ChannelOptions::default()
                .with_connect_timeout(Duration::from_millis(500))
                .with_keepalive_interval(Duration::from_millis(300))
                .with_keepalive_timeout(Duration::from_millis(500)),
        )
}

pub fn host(id: NodeId) -> String {
    format!("n{id}")
}

pub fn addr(id: NodeId) -> String {
    format!("n{id}:{PORT}")
}

pub async fn run_node(id: NodeId) -> turmoil::Result {
    let config = Config::in_memory(id)
        .with_timing(Duration::from_millis(50), Duration::from_millis(300))
        .with_request_timeout(Duration::from_secs(3))
        .with_snapshots(0, 0);
    let transport = GrpcTransport::new(id, opts());
    let node: Node<Kv> = Node::start(config, Kv::default(), transport.clone()).await?;
    let listener = turmoil::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, PORT)).await?;
    let incoming = futures_util::stream::unfold(listener, |l| async move {
        let conn = l.accept().await.map(|(s, _)| SimStream(s));
        Some((conn, l))
    });
    if id == 1 {
        node.initialize((1..=3).map(|i| (i, addr(i)))).await?;
    }
    Server::new(node, &transport)
        .serve_with_incoming(incoming, std::future::pending())
        .await?;
    Ok(())
}

pub fn client_for(ids: &[NodeId], total: Duration) -> ClusterClient<Kv> {
    ClusterClient::new(
        ids.iter().map(|i| addr(*i)),
        ClientOptions::default()
            .with_connector(sim_connector())
            .with_attempt_timeout(Duration::from_millis(800))
            .with_total_timeout(total),
    )
    .expect("client")
}

/// Polls node statuses (simulated time) until `done` holds or `limit` passes.
pub async fn until(
    client: &ClusterClient<Kv>,
    ids: &[NodeId],
    limit: Duration,
    what: &str,
    done: impl Fn(&[(NodeId, NodeStatus)]) -> bool,
) -> Result<Vec<(NodeId, NodeStatus)>, String> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let mut seen = Vec::new();
        for id in ids {
            if let Ok(s) = client.status(&addr(*id)).await {
                seen.push((*id, s));
            }
        }
        if done(&seen) {
            return Ok(seen);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("{what} not reached within {limit:?}: {seen:?}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn leader_of(seen: &[(NodeId, NodeStatus)]) -> Option<NodeId> {
    let leaders: Vec<&NodeStatus> = seen
        .iter()
        .map(|(_, s)| s)
        .filter(|s| s.role == raft_core::Role::Leader)
        .collect();
    let top = leaders.iter().max_by_key(|s| s.term)?;
    let agree = seen
        .iter()
        .filter(|(_, s)| s.leader_id == Some(top.id) && s.term == top.term)
        .count();
    (agree >= 2).then_some(top.id)
}

/// Waits (simulated time) until every node in `ids` follows one leader and has applied its whole
/// log, then reads each node's contents locally and checks they are all equal; returns them.
pub async fn converged(
    admin: &ClusterClient<Kv>,
    ids: &[NodeId],
) -> Result<BTreeMap<String, String>, Box<dyn std::error::Error>> {
    until(admin, ids, Duration::from_secs(20), "convergence", |s| {
        s.len() == ids.len()
            && leader_of(s).is_some()
            && s.iter().all(|(_, st)| {
                st.applied_index.is_some() && st.applied_index == s[0].1.applied_index
            })
            && s.iter()
                .all(|(_, st)| st.last_log_index == st.applied_index)
    })
    .await?;
    let mut first: Option<(NodeId, BTreeMap<String, String>)> = None;
    for id in ids {
        let state = match client_for(&[*id], Duration::from_secs(5))
            .read(Query::All, Consistency::Local)
            .await?
        {
            Reply::All(m) => m,
            other => return Err(format!("unexpected reply {other:?}").into()),
        };
        match &first {
            None => first = Some((*id, state)),
            Some((f, m)) if *m != state => {
                return Err(format!("node {id} diverged: {state:?} vs node {f}: {m:?}").into());
            }
            Some(_) => {}
        }
    }
    first.map(|(_, m)| m).ok_or_else(|| "no nodes".into())
}

/// A simulation of three gRPC nodes (hosts `node-1`..`node-3`) with 1–10 ms of latency, seeded,
/// ending with an error after `limit` of simulated time.
pub fn three_nodes<'a>(seed: u64, limit: Duration) -> turmoil::Sim<'a> {
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .simulation_duration(limit)
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(10))
        .build();
    for id in 1..=3 {
        sim.host(host(id), move || run_node(id));
    }
    sim
}

/// Runs `scenario` for each seed in `RAFTKIT_TURMOIL_SEEDS` (comma separated), or for
/// `defaults`; a failure names its seed and how to rerun it.
pub fn for_each_seed(defaults: &[u64], scenario: impl Fn(u64) -> turmoil::Result) {
    super::init_tracing();
    let seeds: Vec<u64> = std::env::var("RAFTKIT_TURMOIL_SEEDS")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| defaults.to_vec());
    for seed in seeds {
        if let Err(e) = scenario(seed) {
            panic!("seed {seed} failed (rerun with RAFTKIT_TURMOIL_SEEDS={seed}): {e}");
        }
    }
}
