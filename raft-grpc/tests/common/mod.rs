//! Shared pieces of the gRPC tests: the testing key-value state machine and a cluster of real gRPC nodes
//! on 127.0.0.1 ephemeral ports with durable logs in a temporary directory.

#![allow(dead_code)]

pub mod h2;
pub mod sim;

use std::collections::BTreeMap;
use std::time::Duration;

use raft_core::Config;
use raft_core::NodeId;
use raft_core::Role;
use raft_core::testing::PanicWatch;
use raft_grpc::GrpcNode;
use raft_grpc::GrpcOptions;
use tokio::net::TcpListener;

pub use raft_core::testing::kv::KvCommand as Cmd;
pub use raft_core::testing::kv::KvQuery as Query;
pub use raft_core::testing::kv::KvReply as Reply;
pub use raft_core::testing::kv::KvStore as Kv;

pub use raft_core::testing::init_tracing;

/// Test timing: fast elections, bounded requests.
pub fn config(id: NodeId, dir: &std::path::Path) -> Config {
    Config::durable(id, dir.join(format!("n{id}")))
        .with_timing(Duration::from_millis(50), Duration::from_millis(300))
        .with_request_timeout(Duration::from_secs(5))
}

/// Real gRPC nodes on loopback.
pub struct GrpcCluster {
    pub dir: tempfile::TempDir,
    pub addrs: BTreeMap<NodeId, String>,
    pub nodes: BTreeMap<NodeId, GrpcNode<Kv>>,
    pub opts: GrpcOptions,
    /// Options of each node, when they differ (see [`GrpcCluster::start_each`]).
    pub per_node: BTreeMap<NodeId, GrpcOptions>,
    pub configure: fn(Config) -> Config,
    /// Panics since the cluster started; dropping the cluster (which first shuts the nodes down,
    /// on a multi-thread runtime) fails the test on any (a panic in a node's task never reaches
    /// the test otherwise).
    pub panics: PanicWatch,
}

impl Drop for GrpcCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let nodes = std::mem::take(&mut self.nodes);
        raft_core::testing::stop_before_teardown(async move {
            for node in nodes.into_values() {
                let _ = node.shutdown().await;
            }
        });
        let panics = self.panics.panics();
        assert!(panics.is_empty(), "a thread panicked at {panics:?}");
    }
}

pub const WAIT: Duration = Duration::from_secs(20);

impl GrpcCluster {
    /// Starts `n` nodes and forms a cluster of them.
    pub async fn start(n: u64, opts: GrpcOptions, configure: fn(Config) -> Config) -> GrpcCluster {
        Self::start_each(n, opts, BTreeMap::new(), configure).await
    }

    /// Starts `n` nodes, node `id` with `per_node[id]` if given, else with `opts`.
    pub async fn start_each(
        n: u64,
        opts: GrpcOptions,
        per_node: BTreeMap<NodeId, GrpcOptions>,
        configure: fn(Config) -> Config,
    ) -> GrpcCluster {
        init_tracing();
        let mut c = GrpcCluster {
            dir: tempfile::tempdir().unwrap(),
            addrs: BTreeMap::new(),
            nodes: BTreeMap::new(),
            opts,
            per_node,
            configure,
            panics: PanicWatch::start(),
        };
        for id in 1..=n {
            c.launch(id).await;
        }
        let members: Vec<(NodeId, String)> = c.addrs.iter().map(|(i, a)| (*i, a.clone())).collect();
        c.nodes[&1].node().initialize(members).await.unwrap();
        c.leader().await;
        c
    }

    /// Starts node `id` — on its old address if it ran before.
    pub async fn launch(&mut self, id: NodeId) {
        let bind = self
            .addrs
            .get(&id)
            .cloned()
            .unwrap_or_else(|| "127.0.0.1:0".to_string());
        let listener = TcpListener::bind(&bind).await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        self.addrs.insert(id, addr);
        let config = (self.configure)(config(id, self.dir.path()));
        let opts = self.per_node.get(&id).unwrap_or(&self.opts).clone();
        let node = GrpcNode::start(config, Kv::default(), listener, opts)
            .await
            .unwrap();
        self.nodes.insert(id, node);
    }

    /// Shuts node `id` down (its data directory stays).
    pub async fn stop(&mut self, id: NodeId) {
        let node = self.nodes.remove(&id).unwrap();
        node.shutdown().await.unwrap();
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.addrs.values().cloned().collect()
    }

    /// Waits until the running nodes agree on a leader; returns it.
    pub async fn leader(&self) -> NodeId {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            for n in self.nodes.values() {
                let m = n.node().metrics();
                if m.role == Role::Leader {
                    let followers = self
                        .nodes
                        .values()
                        .filter(|o| {
                            let om = o.node().metrics();
                            om.leader == Some(m.id) && om.term == m.term
                        })
                        .count();
                    if followers * 2 > m.voters.len() {
                        return m.id;
                    }
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no leader within {WAIT:?}"
            );
            // Wake on the first metrics change of any node.
            let mut watches: Vec<_> = self.nodes.values().map(|n| n.node().subscribe()).collect();
            let changed = watches.iter_mut().map(|w| Box::pin(w.changed()));
            let _ =
                tokio::time::timeout_at(deadline, futures_util::future::select_all(changed)).await;
        }
    }

    /// Waits until `cond` holds, re-checking whenever a node's metrics change.
    pub async fn wait_until(&self, what: &str, cond: impl Fn(&GrpcCluster) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let mut watches: Vec<_> = self.nodes.values().map(|n| n.node().subscribe()).collect();
            if cond(self) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not within {WAIT:?}: {what}"
            );
            let changed = watches.iter_mut().map(|w| Box::pin(w.changed()));
            let _ =
                tokio::time::timeout_at(deadline, futures_util::future::select_all(changed)).await;
        }
    }

    /// Waits until every running member has applied the leader's whole log; returns the states.
    pub async fn converged(&self) -> BTreeMap<NodeId, Kv> {
        let leader = self.leader().await;
        let lm = self.nodes[&leader].node().metrics();
        let members: Vec<NodeId> = lm
            .voters
            .iter()
            .chain(lm.learners.iter())
            .copied()
            .collect();
        let target = lm.last_log_index.unwrap();
        let mut out = BTreeMap::new();
        for id in members {
            let Some(n) = self.nodes.get(&id) else {
                continue;
            };
            n.node()
                .wait_for(WAIT, |m| m.applied_index >= Some(target))
                .await
                .unwrap_or_else(|e| panic!("node {id} did not catch up: {e}"));
            out.insert(
                id,
                n.node()
                    .read(raft_core::Consistency::Local, |kv| kv.clone())
                    .await
                    .unwrap(),
            );
        }
        out
    }
}
