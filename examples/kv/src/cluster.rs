//! Starting nodes: one node of a multi-process cluster, or the local three-node demo.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use raft_core::Config;
use raft_core::Consistency;
use raft_core::NodeId;
use raft_core::Role;
use raft_grpc::ClientError;
use raft_grpc::ClusterClient;
use raft_grpc::GrpcNode;
use tokio::net::TcpListener;

use crate::limits::ConnLimits;
use crate::security::Security;
use crate::server;
use crate::server::Ctx;
use crate::store::Command;
use crate::store::Reply;
use crate::store::Store;
use crate::store::WriteOp;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A port is taken (or cannot be bound); names the flag that changes it.
    #[error("cannot listen on {addr} ({what}): {source}; choose another with {flag}")]
    Bind {
        addr: String,
        what: String,
        flag: &'static str,
        #[source]
        source: io::Error,
    },
    /// The node itself could not start (storage, configuration).
    #[error(transparent)]
    Node(#[from] raft_grpc::StartError),
    /// Joining an existing cluster failed.
    #[error("could not join the cluster at {addr}: {reason}")]
    Join { addr: String, reason: String },
}

/// How one node runs.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub id: NodeId,
    pub data_dir: PathBuf,
    /// The raft address other nodes reach this one at (a host name is fine).
    pub raft_addr: String,
    /// Where the raft port listens (by default `raft_addr`).
    pub raft_listen: String,
    pub resp_addr: String,
    /// Form a new cluster of these members (only if this node has no state yet).
    pub initial_members: BTreeMap<NodeId, String>,
    /// If this node is not among `initial_members`: join the cluster through any of these raft
    /// addresses, until it is a voter (a restart resumes an interrupted join).
    pub join: Vec<String>,
    pub consistency: Consistency,
    pub limits: ConnLimits,
    /// Quota, compaction and WAL segment settings.
    pub storage: crate::storage::StorageArgs,
    /// Flag names for error messages.
    pub raft_flag: &'static str,
    pub resp_flag: &'static str,
    /// Authentication and TLS.
    pub security: Arc<Security>,
    /// Where the RESP connections run (see `threads.rs`).
    pub clients: tokio::runtime::Handle,
}

/// Checks an address other nodes are to reach a node at (a `--raft-addr`, an
/// `--initial-members` entry, the address given to `kv member add`): a node address
/// ([`raft_grpc::check_addr`]) naming one host. The any-address (`0.0.0.0`, `[::]`) is refused:
/// it only says where to listen, and a member recorded at it is reached by each node on its own
/// machine. The error completes a sentence that starts with the address's name.
pub fn check_advertised(addr: &str) -> Result<(), String> {
    let (host, _) = raft_grpc::check_addr(addr).map_err(|e| e.to_string())?;
    if host
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_unspecified())
    {
        return Err(format!(
            "{addr:?} is the any-address, which says where to listen, not where other nodes \
             reach the node; give the node's own host name or IP address"
        ));
    }
    Ok(())
}

/// A running node: raft over gRPC, and the RESP front end.
pub struct Running {
    pub node: GrpcNode<Store>,
    pub resp_addr: SocketAddr,
    pub spec: NodeSpec,
}

async fn bind(addr: &str, what: String, flag: &'static str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind {
            addr: addr.to_string(),
            what,
            flag,
            source,
        })
}

/// Starts one node and its RESP listener.
pub async fn start(spec: NodeSpec) -> Result<Running, StartError> {
    // Bind both ports first, so a taken port fails before anything touches the data directory.
    let raft_listener = bind(
        &spec.raft_listen,
        format!("raft port of node {}", spec.id),
        spec.raft_flag,
    )
    .await?;
    let resp_listener = bind(
        &spec.resp_addr,
        format!("RESP port of node {}", spec.id),
        spec.resp_flag,
    )
    .await?;
    let resp_addr = resp_listener
        .local_addr()
        .map_err(|source| StartError::Bind {
            addr: spec.resp_addr.clone(),
            what: "RESP port".into(),
            flag: spec.resp_flag,
            source,
        })?;
    // A follower refuses to vote while it may still hear from the old leader (its lease, the
    // longest election timeout), so a crashed leader is replaced after 1 to 2 s with these.
    let config = spec.storage.apply(
        Config::durable(spec.id, &spec.data_dir)
            .with_timing(Duration::from_millis(100), Duration::from_millis(500)),
    );
    let node = GrpcNode::start(
        config,
        Store::default(),
        raft_listener,
        spec.limits.raft_port.apply(spec.security.grpc_options()),
    )
    .await?;

    let initialized = node
        .node()
        .is_initialized()
        .await
        .map_err(raft_grpc::StartError::Node)?;
    if !spec.join.is_empty() && !spec.initial_members.contains_key(&spec.id) {
        // Also on a restart: a join interrupted after the node became a learner resumes.
        if !node.node().metrics().voters.contains(&spec.id) {
            join(&spec, node.node().incarnation()).await?;
        }
    } else if !initialized && spec.initial_members.keys().next() == Some(&spec.id) {
        // One member forms the cluster; the others learn it from their first heartbeat.
        node.node()
            .initialize(spec.initial_members.clone())
            .await
            .map_err(raft_grpc::StartError::Node)?;
    }

    let ctx = Ctx::new(
        node.client().clone(),
        spec.consistency,
        spec.limits,
        &spec.security,
    );
    // The RESP port is moved to the clients' runtime, so its connections are driven there.
    let resp_listener = {
        let _clients = spec.clients.enter();
        resp_listener
            .into_std()
            .and_then(TcpListener::from_std)
            .map_err(|source| StartError::Bind {
                addr: spec.resp_addr.clone(),
                what: "RESP port".into(),
                flag: spec.resp_flag,
                source,
            })?
    };
    spec.clients
        .spawn(server::serve(resp_listener, ctx.clone()));
    tokio::spawn(sweep_expired(ctx));
    tracing::info!(id = spec.id, raft = %node.addr(), resp = %resp_addr, "node running");
    Ok(Running {
        node,
        resp_addr,
        spec,
    })
}

/// Asks the cluster at `addr` to add this node as a learner and, once it has caught up, to make
/// it a voter. The node says which incarnation of its data directory it is: a node whose id is
/// bound to another one (its data was wiped) is refused and must join under a new id. Both steps are idempotent and incremental: a restart repeats them safely, and
/// nodes joining at the same time do not undo each other's promotion.
async fn join(spec: &NodeSpec, incarnation: u64) -> Result<(), StartError> {
    let addr = spec.join.join(",");
    let fail = |e: ClientError| StartError::Join {
        addr: addr.clone(),
        reason: join_failure(e),
    };
    let client: ClusterClient<Store> =
        ClusterClient::new(spec.join.clone(), spec.security.client_options()).map_err(fail)?;
    client
        .add_learner_as(spec.id, spec.raft_addr.clone(), Some(incarnation))
        .await
        .map_err(fail)?;
    client.add_voter(spec.id).await.map_err(fail)?;
    tracing::info!(id = spec.id, cluster = addr, "joined as a voter");
    Ok(())
}

/// Why a join failed, in the operator's terms.
fn join_failure(e: ClientError) -> String {
    crate::ctl::explain(
        e,
        "this node's",
        "is --cluster-secret-file the cluster's secret (and the TLS certificate from the \
         cluster's CA)?",
        "the cluster refused to add this node",
    )
}

/// How often the leader looks for expired keys (Redis's active expiry runs 10 times a second).
const SWEEP_EVERY: Duration = Duration::from_millis(100);

/// Expired keys one sweep write removes: its apply holds the state for about a millisecond.
const SWEEP_KEYS: usize = 1000;

/// Sweep writes per look, at most: up to 100,000 keys a second, so keys written with short
/// expiries at any rate the cluster takes do not pile up, while a backlog (after a leader
/// change, say) is worked off in steps that let other writes through.
const SWEEPS_PER_LOOK: usize = 10;

/// On the leader, removes expired keys (a replicated write, so every replica frees the same
/// keys).
async fn sweep_expired(ctx: Arc<Ctx>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let node = ctx.client.node();
        if node.role() != Role::Leader {
            continue;
        }
        for _ in 0..SWEEPS_PER_LOOK {
            let now = server::now_ms();
            let expired = node
                .read(Consistency::Local, |s| s.expired_count(now, 1))
                .await
                .unwrap_or(0);
            if expired == 0 {
                break;
            }
            let cmd = Command {
                now,
                op: WriteOp::PurgeExpired { limit: SWEEP_KEYS },
            };
            match node.write(cmd).await {
                Ok(Reply::Int(n)) => tracing::debug!(removed = n, "expired keys swept"),
                _ => break,
            }
        }
    }
}

/// How many nodes the local demo runs.
pub const DEMO_NODES: u64 = 3;

/// The local demo: [`DEMO_NODES`] nodes in this process, durable under `data_dir`. Node `i`
/// (from 1) serves RESP on `resp_port + i - 1` and raft on `raft_port + i - 1`.
pub async fn demo(
    data_dir: PathBuf,
    resp_port: u16,
    raft_port: u16,
    consistency: Consistency,
    storage: crate::storage::StorageArgs,
    limits: ConnLimits,
    clients: tokio::runtime::Handle,
) -> Result<Vec<Running>, StartError> {
    // Node `id`'s port counted from a base port.
    let addr = |base: u16, id: NodeId| format!("127.0.0.1:{}", u64::from(base) + id - 1);
    let members: BTreeMap<NodeId, String> = (1..=DEMO_NODES)
        .map(|id| (id, addr(raft_port, id)))
        .collect();
    let mut nodes = Vec::new();
    for id in 1..=DEMO_NODES {
        let spec = NodeSpec {
            id,
            data_dir: data_dir.join(format!("node-{id}")),
            raft_addr: members[&id].clone(),
            raft_listen: members[&id].clone(),
            resp_addr: addr(resp_port, id),
            initial_members: members.clone(),
            join: Vec::new(),
            consistency,
            limits,
            storage: storage.clone(),
            raft_flag: "--raft-port",
            resp_flag: "--resp-port",
            security: Arc::new(Security::open()),
            clients: clients.clone(),
        };
        nodes.push(start(spec).await?);
    }
    Ok(nodes)
}
