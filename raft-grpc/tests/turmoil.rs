//! The real gRPC stack on turmoil's simulated network: partition the leader from the majority,
//! check that the majority elects a new leader and keeps accepting writes while nothing sent to
//! the isolated old leader is acknowledged, then repair and check that every replica converges.
//!
//! Runs under several seeds; `RAFTKIT_TURMOIL_SEEDS=1,2,3,...` picks others. (Message timing
//! follows the seed; openraft's own election timers draw from the thread RNG, so a seed fixes
//! the network's behaviour, not every interleaving.)

mod common;

use std::net::Ipv4Addr;
use std::pin::Pin;
use std::task::Context;
use std::task::Poll;
use std::time::Duration;

use common::Cmd;
use common::Kv;
use common::Query;
use common::Reply;
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

const PORT: u16 = 7000;

/// A turmoil stream the gRPC server can serve (tonic needs `Connected`).
struct SimStream(turmoil::net::TcpStream);

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

fn sim_connector() -> Connector {
    Connector::custom(|host, port| async move {
        turmoil::net::TcpStream::connect((host.as_str(), port)).await
    })
}

fn opts() -> GrpcOptions {
    GrpcOptions {
        connector: sim_connector(),
        channel: raft_grpc::ChannelOptions {
            connect_timeout: Duration::from_millis(500),
            keepalive_interval: Duration::from_millis(300),
            keepalive_timeout: Duration::from_millis(500),
        },
        ..GrpcOptions::default()
    }
}

fn host(id: NodeId) -> String {
    format!("n{id}")
}

fn addr(id: NodeId) -> String {
    format!("n{id}:{PORT}")
}

async fn run_node(id: NodeId) -> turmoil::Result {
    let config = Config::in_memory(id)
        .with_timing(Duration::from_millis(50), Duration::from_millis(300))
        .with_request_timeout(Duration::from_secs(3))
        .with_snapshots(0, 0);
    let node: Node<Kv> = Node::start(config, Kv::default(), GrpcTransport::new(id, opts())).await?;
    let listener = turmoil::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, PORT)).await?;
    let incoming = futures_util::stream::unfold(listener, |l| async move {
        let conn = l.accept().await.map(|(s, _)| SimStream(s));
        Some((conn, l))
    });
    if id == 1 {
        node.initialize((1..=3).map(|i| (i, addr(i)))).await?;
    }
    Server::new(node, opts())
        .serve_with_incoming(incoming, std::future::pending())
        .await?;
    Ok(())
}

fn client_for(ids: &[NodeId], total: Duration) -> ClusterClient<Kv> {
    ClusterClient::new(
        ids.iter().map(|i| addr(*i)),
        ClientOptions {
            connector: sim_connector(),
            attempt_timeout: Duration::from_millis(800),
            total_timeout: total,
            ..ClientOptions::default()
        },
    )
    .expect("client")
}

/// Polls node statuses (simulated time) until `done` holds or `limit` passes.
async fn until(
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

fn leader_of(seen: &[(NodeId, NodeStatus)]) -> Option<NodeId> {
    let leaders: Vec<&NodeStatus> = seen
        .iter()
        .map(|(_, s)| s)
        .filter(|s| s.role == "leader")
        .collect();
    let top = leaders.iter().max_by_key(|s| s.term)?;
    let agree = seen
        .iter()
        .filter(|(_, s)| s.leader_id == Some(top.id) && s.term == top.term)
        .count();
    (agree >= 2).then_some(top.id)
}

fn scenario(seed: u64) -> turmoil::Result {
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .simulation_duration(Duration::from_secs(120))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(10))
        .build();
    for id in 1..=3 {
        sim.host(host(id), move || run_node(id));
    }
    sim.client("client", async move {
        let all = [1, 2, 3];
        let client = client_for(&all, Duration::from_secs(20));
        for i in 0..10 {
            client
                .write(Cmd::Put(format!("before-{i}"), "x".into()))
                .await?;
        }
        let seen = until(&client, &all, Duration::from_secs(10), "a leader", |s| {
            leader_of(s).is_some()
        })
        .await?;
        let old = leader_of(&seen).ok_or("no leader")?;
        let majority: Vec<NodeId> = all.iter().copied().filter(|i| *i != old).collect();

        for other in &majority {
            turmoil::partition(host(old), host(*other));
        }

        // The majority elects a new leader and keeps accepting writes.
        let seen = until(
            &client,
            &majority,
            Duration::from_secs(15),
            "a new leader",
            |s| leader_of(s).is_some_and(|l| l != old),
        )
        .await?;
        let new = leader_of(&seen).ok_or("no new leader")?;
        let to_majority = client_for(&majority, Duration::from_secs(20));
        for i in 0..10 {
            to_majority
                .write(Cmd::Put(format!("during-{i}"), "y".into()))
                .await?;
        }

        // Writes that can only reach the isolated old leader are never acknowledged.
        let to_old = client_for(&[old], Duration::from_secs(3));
        for i in 0..3 {
            let r = to_old
                .write(Cmd::Put(format!("lost-{i}"), "z".into()))
                .await;
            if let Ok(v) = r {
                return Err(
                    format!("the isolated old leader acknowledged write lost-{i}: {v}").into(),
                );
            }
        }

        // Heal: everyone converges on the majority's history.
        for other in &majority {
            turmoil::repair(host(old), host(*other));
        }
        to_majority
            .write(Cmd::Put("after".into(), "w".into()))
            .await?;
        until(&client, &all, Duration::from_secs(20), "convergence", |s| {
            s.len() == 3
                && leader_of(s).is_some()
                && s.iter().all(|(_, st)| {
                    st.applied_index.is_some() && st.applied_index == s[0].1.applied_index
                })
                && s.iter()
                    .all(|(_, st)| st.last_log_index == st.applied_index)
        })
        .await?;
        let mut states = Vec::new();
        for id in all {
            let one = client_for(&[id], Duration::from_secs(5));
            match one.read(Query::All, Consistency::Local).await? {
                Reply::All(m) => states.push((id, m)),
                other => return Err(format!("unexpected reply {other:?}").into()),
            }
        }
        let first = &states[0].1;
        for (id, s) in &states {
            if s != first {
                return Err(format!("node {id} diverged: {s:?} vs {first:?}").into());
            }
        }
        for i in 0..10 {
            for k in [format!("before-{i}"), format!("during-{i}")] {
                if !first.contains_key(&k) {
                    return Err(format!("acknowledged write {k} lost").into());
                }
            }
        }
        if first.keys().any(|k| k.starts_with("lost-")) {
            return Err(format!(
                "an unacknowledged write on the isolated leader survived: {first:?}"
            )
            .into());
        }
        tracing::info!(seed, old, new, "partition scenario passed");
        Ok(())
    });
    sim.run()
}

fn seeds() -> Vec<u64> {
    std::env::var("RAFTKIT_TURMOIL_SEEDS")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 2, 3])
}

#[test]
fn leader_partition_on_simulated_network() {
    common::init_tracing();
    for seed in seeds() {
        if let Err(e) = scenario(seed) {
            panic!("seed {seed} failed (rerun with RAFTKIT_TURMOIL_SEEDS={seed}): {e}");
        }
    }
}
