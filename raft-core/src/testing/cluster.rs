//! [`Cluster`]: N nodes in one process on a [`Router`], with crash and restart.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::time::Duration;

use futures_util::future::select_all;

use super::PanicWatch;
use super::Router;
use crate::config::Config;
use crate::error::Error;
use crate::error::Result;
use crate::metrics::Metrics;
use crate::metrics::Role;
use crate::node::Node;
use crate::state_machine::StateMachine;
use crate::types::NodeId;
use crate::types::Session;

/// How a [`Cluster`] builds its nodes. Start from [`ClusterOptions::default`] and adjust with
/// the `with_*` methods.
#[derive(Clone)]
#[non_exhaustive]
pub struct ClusterOptions {
    /// Durable nodes in a temporary directory (deleted with the cluster), or in-memory nodes.
    pub durable: bool,
    /// Seed for the router's message loss and delay.
    pub seed: u64,
    /// How long the harness waits for leaders, convergence and writes before failing.
    pub timeout: Duration,
    /// Adjusts each node's configuration (applied to the harness's defaults).
    pub configure: Arc<dyn Fn(Config) -> Config + Send + Sync>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            durable: true,
            seed: 0,
            timeout: Duration::from_secs(20),
            configure: Arc::new(|c| c),
        }
    }
}

impl ClusterOptions {
    /// Sets whether nodes are durable, in a temporary directory (default), or in memory.
    #[must_use]
    pub fn with_durable(mut self, durable: bool) -> ClusterOptions {
        self.durable = durable;
        self
    }

    /// Sets the seed of the router's message loss and delay (default 0).
    #[must_use]
    pub fn with_seed(mut self, seed: u64) -> ClusterOptions {
        self.seed = seed;
        self
    }

    /// Sets how long the harness waits for leaders, convergence and writes (default 20 s).
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> ClusterOptions {
        self.timeout = timeout;
        self
    }

    /// Sets how each node's configuration is adjusted from the harness's defaults (default:
    /// unchanged).
    #[must_use]
    pub fn with_configure(
        mut self,
        configure: impl Fn(Config) -> Config + Send + Sync + 'static,
    ) -> ClusterOptions {
        self.configure = Arc::new(configure);
        self
    }
}

impl std::fmt::Debug for ClusterOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterOptions")
            .field("durable", &self.durable)
            .field("seed", &self.seed)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The address a harness node is known by.
pub fn address(id: NodeId) -> String {
    format!("node-{id}")
}

/// Starts `sm` as the only member of a new cluster (node `config.id`, on a [`Router`] of its
/// own), initializes it and waits, up to 10 s, until it leads: the shortest way to a node that
/// takes writes.
pub async fn lone_leader<S: StateMachine>(config: Config, sm: S) -> Result<Node<S>> {
    let id = config.id;
    let router = Router::new(0);
    let node = Node::start(config, sm, router.transport(id)).await?;
    router.register(node.rpc_handler());
    node.initialize([(id, address(id))]).await?;
    node.wait_for(Duration::from_secs(10), |m| m.leader == Some(id))
        .await?;
    Ok(node)
}

/// N nodes in one process connected by a [`Router`].
///
/// Nodes are numbered from 1. Durable nodes keep their data in a temporary directory per node,
/// so [`Cluster::crash`] followed by [`Cluster::restart`] recovers a node from its own disk.
///
/// A cluster watches for panics from its start (see [`PanicWatch`]): dropping it panics, and so
/// fails the test that ran it, if any thread of the process panicked meanwhile, a node's own
/// tasks included, naming where. A test already failing is left to its own message. A test
/// that expects panics takes them with [`Cluster::take_panics`], which ends the check. On a
/// multi-thread runtime, dropping it first shuts its running nodes down (see
/// [`stop_before_teardown`](super::stop_before_teardown)).
pub struct Cluster<S: StateMachine> {
    router: Router,
    dir: Option<tempfile::TempDir>,
    options: ClusterOptions,
    make: Arc<dyn Fn(NodeId) -> S + Send + Sync>,
    nodes: Mutex<BTreeMap<NodeId, Node<S>>>,
    /// Checked on drop, unless taken.
    watch: Mutex<Option<PanicWatch>>,
}

impl<S: StateMachine> Drop for Cluster<S> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let running = std::mem::take(self.nodes.get_mut().unwrap_or_else(|e| e.into_inner()));
        super::stop_before_teardown(async move {
            for node in running.into_values() {
                let _ = node.shutdown().await;
            }
        });
        let panics = self.take_panics();
        assert!(
            panics.is_empty(),
            "a thread panicked while the cluster ran, at {panics:?}"
        );
    }
}

impl<S: StateMachine> Cluster<S> {
    /// Starts `voters` nodes (ids `1..=voters`), forms a cluster of them and waits for a leader.
    /// `make` builds each node's empty state machine.
    pub async fn start(
        voters: u64,
        options: ClusterOptions,
        make: impl Fn(NodeId) -> S + Send + Sync + 'static,
    ) -> Result<Cluster<S>> {
        let dir = if options.durable {
            Some(
                tempfile::tempdir()
                    .map_err(|e| Error::Config(format!("temporary directory: {e}")))?,
            )
        } else {
            None
        };
        let cluster = Cluster {
            router: Router::new(options.seed),
            dir,
            options,
            make: Arc::new(make),
            nodes: Mutex::new(BTreeMap::new()),
            watch: Mutex::new(Some(PanicWatch::start())),
        };
        for id in 1..=voters {
            cluster.launch(id).await?;
        }
        let first = cluster.node(1)?;
        first
            .initialize((1..=voters).map(|id| (id, address(id))))
            .await?;
        cluster.wait_for_leader().await?;
        Ok(cluster)
    }

    /// Where threads of the process panicked since the cluster started (see
    /// [`PanicWatch::panics`]), and, from then on, no check when the cluster is dropped: the
    /// caller has taken the panics over. Empty if they were taken before.
    pub fn take_panics(&self) -> Vec<String> {
        self.watch
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .map_or_else(Vec::new, |w| w.panics())
    }

    /// The network between the nodes.
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// The harness's wait bound.
    pub fn timeout(&self) -> Duration {
        self.options.timeout
    }

    /// The data directory of node `id` (durable clusters only).
    pub fn data_dir(&self, id: NodeId) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.path().join(format!("n{id}")))
    }

    /// The configuration node `id` runs with.
    pub fn config(&self, id: NodeId) -> Config {
        let base = match self.data_dir(id) {
            Some(dir) => Config::durable(id, dir),
            None => Config::in_memory(id),
        };
        let base = base
            .with_timing(Duration::from_millis(30), Duration::from_millis(250))
            .with_request_timeout(Duration::from_secs(5));
        (self.options.configure)(base)
    }

    /// Starts node `id` — fresh, or from its data directory if it ran before — and connects it.
    /// A fresh node is not a member until the leader adds it.
    pub async fn launch(&self, id: NodeId) -> Result<Node<S>> {
        if self.nodes().contains_key(&id) {
            return Err(Error::Config(format!("node {id} is already running")));
        }
        let node = Node::start(self.config(id), (self.make)(id), self.router.transport(id)).await?;
        self.router.register(node.rpc_handler());
        self.nodes().insert(id, node.clone());
        Ok(node)
    }

    fn nodes(&self) -> MutexGuard<'_, BTreeMap<NodeId, Node<S>>> {
        crate::sync::lock(&self.nodes)
    }

    /// Restarts a crashed node from its data directory.
    pub async fn restart(&self, id: NodeId) -> Result<Node<S>> {
        self.launch(id).await
    }

    /// Stops node `id` abruptly: it disappears from the network and its consensus task stops.
    /// Its data directory stays for [`Cluster::restart`].
    pub async fn crash(&self, id: NodeId) -> Result<()> {
        self.router.unregister(id);
        let node = self
            .nodes()
            .remove(&id)
            .ok_or_else(|| Error::Config(format!("node {id} is not running")))?;
        node.shutdown().await
    }

    /// Stops node `id` as a power cut would: appends it had not yet made durable are lost.
    /// Its data directory stays for [`Cluster::restart`]. In-memory nodes just stop.
    pub async fn crash_power_loss(&self, id: NodeId) -> Result<()> {
        self.router.unregister(id);
        let node = self
            .nodes()
            .remove(&id)
            .ok_or_else(|| Error::Config(format!("node {id} is not running")))?;
        node.crash_losing_unsynced().await
    }

    /// The running node `id`.
    pub fn node(&self, id: NodeId) -> Result<Node<S>> {
        self.nodes()
            .get(&id)
            .cloned()
            .ok_or_else(|| Error::Config(format!("node {id} is not running")))
    }

    /// Ids of the running nodes.
    pub fn running(&self) -> Vec<NodeId> {
        self.nodes().keys().copied().collect()
    }

    /// Current metrics of every running node.
    pub fn metrics(&self) -> BTreeMap<NodeId, Metrics> {
        let nodes: Vec<Node<S>> = self.nodes().values().cloned().collect();
        nodes.iter().map(|n| (n.id(), n.metrics())).collect()
    }

    /// Waits (at most the harness timeout) until `condition` holds for the running nodes'
    /// metrics, re-checking whenever any node's metrics change.
    pub async fn wait_until(
        &self,
        what: &str,
        condition: impl Fn(&BTreeMap<NodeId, Metrics>) -> bool,
    ) -> Result<BTreeMap<NodeId, Metrics>> {
        let wait = async {
            loop {
                // Subscribed before the check, so no change after it is missed; re-subscribed
                // each round, so nodes crashed or restarted meanwhile are followed too.
                let mut watches: Vec<_> = self.nodes().values().map(|n| n.subscribe()).collect();
                let all = self.metrics();
                if condition(&all) {
                    return all;
                }
                if watches.is_empty() {
                    std::future::pending::<()>().await;
                }
                let changed = watches.iter_mut().map(|w| Box::pin(w.changed()));
                let _ = select_all(changed).await;
            }
        };
        tokio::time::timeout(self.options.timeout, wait)
            .await
            .map_err(|_| {
                tracing::error!(what, metrics = ?self.metrics(), "cluster condition not reached");
                Error::Timeout(self.options.timeout)
            })
    }

    /// Waits until one running node leads and a majority of its voters follow it in its term;
    /// returns the leader's id.
    pub async fn wait_for_leader(&self) -> Result<NodeId> {
        let all = self
            .wait_until("a leader", |all| stable_leader(all).is_some())
            .await?;
        stable_leader(&all).ok_or(Error::Timeout(self.options.timeout))
    }

    /// Like [`Cluster::wait_for_leader`], but the leader must be one of `among`.
    pub async fn wait_for_leader_among(&self, among: &[NodeId]) -> Result<NodeId> {
        let pick =
            |all: &BTreeMap<NodeId, Metrics>| stable_leader(all).filter(|l| among.contains(l));
        let all = self
            .wait_until("a leader among the given nodes", |all| pick(all).is_some())
            .await?;
        pick(&all).ok_or(Error::Timeout(self.options.timeout))
    }

    /// Writes through the current leader, following leader changes and retrying until the
    /// harness timeout. Each call opens its own client session (left to eviction), so a retry is
    /// applied at most once.
    pub async fn write(&self, command: S::Command) -> Result<S::Output>
    where
        S::Command: Clone,
    {
        let mut session: Option<Session> = None;
        let deadline = tokio::time::Instant::now() + self.options.timeout;
        let mut last_error = Error::Timeout(self.options.timeout);
        while tokio::time::Instant::now() < deadline {
            let leader = match self.wait_for_leader().await {
                Ok(l) => l,
                Err(e) => {
                    last_error = e;
                    continue;
                }
            };
            let Ok(node) = self.node(leader) else {
                continue;
            };
            let result = match session {
                Some(s) => node.write_in_session(s, command.clone()).await,
                None => match node.register_session().await {
                    Ok(client_id) => {
                        let s = Session {
                            client_id,
                            sequence: 1,
                        };
                        session = Some(s);
                        node.write_in_session(s, command.clone()).await
                    }
                    Err(e) => Err(e),
                },
            };
            match result {
                Ok(out) => return Ok(out),
                Err(
                    e @ (Error::NotLeader { .. }
                    | Error::Timeout(_)
                    | Error::OutcomeUnknown { .. }
                    | Error::Shutdown),
                ) => {
                    tracing::debug!(error = %e, "harness write retried");
                    last_error = e;
                    // Wait for the metrics to move on before retrying.
                    let stale = node.metrics();
                    let _ = node
                        .wait_for(Duration::from_millis(500), |m| {
                            m.term != stale.term || m.leader != stale.leader || m.role != stale.role
                        })
                        .await;
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_error)
    }

    /// Waits until every running node that is a member has applied everything the leader has in
    /// its log, and all agree on it.
    pub async fn wait_converged(&self) -> Result<u64> {
        let all = self
            .wait_until("convergence", |all| converged(all).is_some())
            .await?;
        converged(&all).ok_or(Error::Timeout(self.options.timeout))
    }

    /// Shuts every node down.
    pub async fn shutdown(self) -> Result<()> {
        for id in self.running() {
            self.crash(id).await?;
        }
        Ok(())
    }
}

/// The leader that a majority of its voters follow in its term, if any.
fn stable_leader(all: &BTreeMap<NodeId, Metrics>) -> Option<NodeId> {
    all.values()
        .filter(|m| m.role == Role::Leader)
        .find_map(|l| {
            let following = l
                .voters
                .iter()
                .filter(|v| {
                    all.get(v)
                        .is_some_and(|m| m.term == l.term && m.leader == Some(l.id))
                })
                .count();
            (following * 2 > l.voters.len()).then_some(l.id)
        })
}

/// The applied index every running member agrees on, once they all match the leader's log.
fn converged(all: &BTreeMap<NodeId, Metrics>) -> Option<u64> {
    let leader = all.get(&stable_leader(all)?)?;
    let target = leader.last_log_index?;
    let members: Vec<&Metrics> = all
        .values()
        .filter(|m| leader.voters.contains(&m.id) || leader.learners.contains(&m.id))
        .collect();
    members
        .iter()
        .all(|m| m.applied_index == Some(target) && m.last_log_index == Some(target))
        .then_some(target)
}
