//! Shared pieces of the gRPC tests: a key-value state machine and a cluster of real gRPC nodes
//! on 127.0.0.1 ephemeral ports with durable logs in a temporary directory.

#![allow(dead_code)]

pub mod sim;

use std::collections::BTreeMap;
use std::io;
use std::io::Read;
use std::io::Write;
use std::time::Duration;

use raft_core::Config;
use raft_core::NodeId;
use raft_core::Queryable;
use raft_core::Role;
use raft_core::StateMachine;
use raft_grpc::GrpcNode;
use raft_grpc::GrpcOptions;
use serde::Deserialize;
use serde::Serialize;
use tokio::net::TcpListener;

/// A key-value store; `Append` is deliberately not idempotent.
#[derive(Default, Clone, Debug, PartialEq, Eq)]
pub struct Kv(pub BTreeMap<String, String>);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Cmd {
    Put(String, String),
    Append(String, String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Query {
    Get(String),
    All,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    Value(Option<String>),
    All(BTreeMap<String, String>),
}

impl StateMachine for Kv {
    type Command = Cmd;
    type Output = String;
    type Snapshot = BTreeMap<String, String>;

    fn apply(&mut self, cmd: Cmd) -> String {
        match cmd {
            Cmd::Put(k, v) => {
                self.0.insert(k, v.clone());
                v
            }
            Cmd::Append(k, v) => {
                let e = self.0.entry(k).or_default();
                e.push_str(&v);
                e.clone()
            }
        }
    }
    fn snapshot(&self) -> Self::Snapshot {
        self.0.clone()
    }
    fn write_snapshot(s: Self::Snapshot, out: &mut dyn Write) -> io::Result<()> {
        raft_core::write_serde(&s, out)
    }
    fn restore(&mut self, input: &mut dyn Read) -> io::Result<()> {
        self.0 = raft_core::read_serde(input)?;
        Ok(())
    }
}

impl Queryable for Kv {
    type Query = Query;
    type Reply = Reply;

    fn query(&self, q: Query) -> Reply {
        match q {
            Query::Get(k) => Reply::Value(self.0.get(&k).cloned()),
            Query::All => Reply::All(self.0.clone()),
        }
    }
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

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
    pub configure: fn(Config) -> Config,
}

pub const WAIT: Duration = Duration::from_secs(20);

impl GrpcCluster {
    /// Starts `n` nodes and forms a cluster of them.
    pub async fn start(n: u64, opts: GrpcOptions, configure: fn(Config) -> Config) -> GrpcCluster {
        init_tracing();
        let mut c = GrpcCluster {
            dir: tempfile::tempdir().unwrap(),
            addrs: BTreeMap::new(),
            nodes: BTreeMap::new(),
            opts,
            configure,
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
        let node = GrpcNode::start(config, Kv::default(), listener, self.opts.clone())
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

/// The driver's workload for [`Kv`] over gRPC: random gets, puts and (unique) appends.
#[derive(Clone)]
pub struct KvWorkload {
    pub keys: usize,
    pub read_percent: u32,
}

impl raft_core::testing::Workload for KvWorkload {
    type Sm = Kv;
    type Model = raft_core::testing::KvMap;

    fn state_machine(&self) -> Kv {
        Kv::default()
    }

    fn generate(&self, rng: &mut rand::rngs::StdRng) -> raft_core::testing::KvOp {
        use rand::Rng;
        let key = format!("k{}", rng.random_range(0..self.keys));
        if rng.random_range(0..100) < self.read_percent {
            return raft_core::testing::KvOp::Get(key);
        }
        let token = format!("{:04x},", rng.random::<u16>());
        if rng.random_bool(0.6) {
            raft_core::testing::KvOp::Append(key, token)
        } else {
            raft_core::testing::KvOp::Put(key, token)
        }
    }

    fn command(&self, input: &raft_core::testing::KvOp) -> Option<Cmd> {
        use raft_core::testing::KvOp;
        match input {
            KvOp::Put(k, v) => Some(Cmd::Put(k.clone(), v.clone())),
            KvOp::Append(k, v) => Some(Cmd::Append(k.clone(), v.clone())),
            KvOp::Get(_) | KvOp::Delete(_) => None,
        }
    }

    fn write_output(
        &self,
        input: &raft_core::testing::KvOp,
        output: String,
    ) -> raft_core::testing::KvResult {
        match input {
            raft_core::testing::KvOp::Append(..) => {
                raft_core::testing::KvResult::Value(Some(output))
            }
            _ => raft_core::testing::KvResult::Done,
        }
    }

    fn read(&self, input: &raft_core::testing::KvOp, sm: &Kv) -> raft_core::testing::KvResult {
        raft_core::testing::KvResult::Value(sm.0.get(input.key()).cloned())
    }
}
