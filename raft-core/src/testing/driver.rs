//! The test driver: concurrent clients run random operations while a nemesis breaks the
//! cluster; afterwards the history is checked for linearizability and the replicas compared.
//!
//! A user describes their state machine's operations once, as a [`Workload`]: how to generate a
//! random one, how to perform it (a command, or a query answered by the state machine's
//! [`Queryable`] impl) and how its result maps to the [`Model`]. [`run`] does the rest on an in-process [`Cluster`]; [`run_clients`]
//! drives any other [`Target`] (for example a cluster over gRPC on a simulated network).
//!
//! Everything random comes from one seed. A failing run reports the seed and how to rerun it.

use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

use futures_util::future::join_all;
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::checker;
use super::checker::CheckResult;
use super::cluster::Cluster;
use super::cluster::ClusterOptions;
use super::history::History;
use super::history::Recorder;
use super::model::Model;
use super::nemesis::Nemesis;
use super::nemesis::Schedule;
use super::panics::PanicWatch;
use crate::error::Error;
use crate::error::Result;
use crate::metrics::Role;
use crate::node::Consistency;
use crate::node::Node;
use crate::state_machine::Queryable;
use crate::state_machine::StateMachine;
use crate::types::ApplyError;
use crate::types::NodeId;
use crate::types::Session;

/// Input type of a workload's model.
pub type InputOf<W> = <<W as Workload>::Model as Model>::Input;
/// Output type of a workload's model.
pub type OutputOf<W> = <<W as Workload>::Model as Model>::Output;
/// The history a workload produces.
pub type HistoryOf<W> = History<InputOf<W>, OutputOf<W>>;

/// A user's state machine and its sequential model, as the driver exercises them.
pub trait Workload: Send + Sync + 'static {
    /// The state machine under test. Reads go through its [`Queryable`] impl, as they do in
    /// production. Replicas are compared with `PartialEq` after the run.
    type Sm: Queryable + Clone + PartialEq + Debug;
    /// Its sequential specification.
    type Model: Model;

    /// A fresh, empty state machine.
    fn state_machine(&self) -> Self::Sm;

    /// A random operation.
    fn generate(&self, rng: &mut StdRng) -> InputOf<Self>;

    /// The command that performs `input`, or `None` if it is a read.
    fn command(&self, input: &InputOf<Self>) -> Option<<Self::Sm as StateMachine>::Command>;

    /// What a write returned, in the model's terms.
    fn write_output(
        &self,
        input: &InputOf<Self>,
        output: <Self::Sm as StateMachine>::Output,
    ) -> OutputOf<Self>;

    /// The query that performs `input`, a read (called for the inputs [`Workload::command`]
    /// maps to `None`).
    fn query(&self, input: &InputOf<Self>) -> <Self::Sm as Queryable>::Query;

    /// What a read returned, in the model's terms.
    fn read_output(
        &self,
        input: &InputOf<Self>,
        reply: <Self::Sm as Queryable>::Reply,
    ) -> OutputOf<Self>;
}

/// The result of one attempt at an operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt<T> {
    /// It took effect and returned this.
    Ok(T),
    /// It definitely did not take effect.
    Failed,
    /// It may have taken effect.
    Unknown,
    /// It may have taken effect, and its session is gone (evicted): retrying cannot tell.
    SessionLost,
}

/// Something the driver's clients can send operations to.
pub trait Target {
    /// The workload it runs.
    type W: Workload;

    /// Opens a client session for `client`'s writes; `None` if that failed.
    fn register_session(&self, client: usize) -> impl Future<Output = Option<u64>>;

    /// One attempt at a write, stamped with `session` (retries of one operation reuse it).
    fn write(
        &self,
        client: usize,
        session: Session,
        command: <<Self::W as Workload>::Sm as StateMachine>::Command,
        input: &InputOf<Self::W>,
    ) -> impl Future<Output = Attempt<OutputOf<Self::W>>>;

    /// One attempt at a read.
    fn read(
        &self,
        client: usize,
        input: &InputOf<Self::W>,
    ) -> impl Future<Output = Attempt<OutputOf<Self::W>>>;
}

/// How clients read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadMode {
    /// Linearizable reads at the leader (the correct mode).
    Linearizable,
    /// **Unsafe, for testing the checker:** each client reads locally, without coordination,
    /// from the node it first saw as leader — even after that node was partitioned away.
    UnsafeLocal,
}

/// How a driver run goes. Start from [`RunOptions::default`] and adjust with the `with_*`
/// methods.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RunOptions {
    /// Seeds the clients, the nemesis and the network. Also taken from `RAFTKIT_SEED`.
    pub seed: u64,
    /// Nodes in the cluster.
    pub nodes: u64,
    /// Concurrent clients.
    pub clients: usize,
    /// The faults, applied one after another while the clients run.
    pub schedule: Schedule,
    /// How long the clients keep going after the last fault was healed.
    pub after: Duration,
    /// How long one operation may take, retries included, before it counts as unknown (or
    /// failed, if no attempt can have applied it).
    pub op_timeout: Duration,
    /// How long one attempt may take before the client tries again (with the same session).
    pub attempt_timeout: Duration,
    /// How clients read.
    pub reads: ReadMode,
    /// Time budget of the linearizability check.
    pub check_budget: Duration,
    /// Cluster settings.
    pub cluster: ClusterOptions,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            seed: seed_from_env().unwrap_or(1),
            nodes: 3,
            clients: 4,
            schedule: Schedule::default(),
            after: Duration::from_millis(500),
            op_timeout: Duration::from_secs(3),
            attempt_timeout: Duration::from_millis(600),
            reads: ReadMode::Linearizable,
            check_budget: Duration::from_secs(30),
            cluster: ClusterOptions::default(),
        }
    }
}

impl RunOptions {
    /// Sets the seed of the clients, the nemesis and the network (default `RAFTKIT_SEED`, or 1).
    #[must_use]
    pub fn with_seed(mut self, seed: u64) -> RunOptions {
        self.seed = seed;
        self
    }

    /// Sets the number of nodes (default 3).
    #[must_use]
    pub fn with_nodes(mut self, nodes: u64) -> RunOptions {
        self.nodes = nodes;
        self
    }

    /// Sets the number of concurrent clients (default 4).
    #[must_use]
    pub fn with_clients(mut self, clients: usize) -> RunOptions {
        self.clients = clients;
        self
    }

    /// Sets the faults applied while the clients run (default none).
    #[must_use]
    pub fn with_schedule(mut self, schedule: Schedule) -> RunOptions {
        self.schedule = schedule;
        self
    }

    /// Sets how long the clients keep going after the last fault was healed (default 500 ms).
    #[must_use]
    pub fn with_after(mut self, after: Duration) -> RunOptions {
        self.after = after;
        self
    }

    /// Sets the bound on one operation, retries included (default 3 s).
    #[must_use]
    pub fn with_op_timeout(mut self, timeout: Duration) -> RunOptions {
        self.op_timeout = timeout;
        self
    }

    /// Sets the bound on one attempt (default 600 ms).
    #[must_use]
    pub fn with_attempt_timeout(mut self, timeout: Duration) -> RunOptions {
        self.attempt_timeout = timeout;
        self
    }

    /// Sets how clients read (default [`ReadMode::Linearizable`]).
    #[must_use]
    pub fn with_reads(mut self, reads: ReadMode) -> RunOptions {
        self.reads = reads;
        self
    }

    /// Sets the time budget of the linearizability check (default 30 s).
    #[must_use]
    pub fn with_check_budget(mut self, budget: Duration) -> RunOptions {
        self.check_budget = budget;
        self
    }

    /// Sets the cluster settings (default [`ClusterOptions::default`]).
    #[must_use]
    pub fn with_cluster(mut self, cluster: ClusterOptions) -> RunOptions {
        self.cluster = cluster;
        self
    }

    /// The client settings of this run.
    fn client_options(&self) -> ClientOptions {
        ClientOptions {
            clients: self.clients,
            seed: self.seed,
            op_timeout: self.op_timeout,
            attempt_timeout: self.attempt_timeout,
        }
    }
}

/// The seed in `RAFTKIT_SEED`, if set.
pub fn seed_from_env() -> Option<u64> {
    std::env::var("RAFTKIT_SEED").ok()?.parse().ok()
}

/// What a run found.
#[derive(Debug, Clone)]
pub struct Report<W: Workload> {
    /// The run's seed.
    pub seed: u64,
    /// Every operation the clients issued.
    pub history: HistoryOf<W>,
    /// The checker's verdict.
    pub check: CheckResult<InputOf<W>, OutputOf<W>>,
    /// Each member's final state machine, after the faults were healed and the cluster
    /// converged.
    pub replicas: Vec<(NodeId, W::Sm)>,
    /// How many of the schedule's faults took effect.
    pub faults_applied: usize,
    /// Where a thread of this process panicked during the run (see [`PanicWatch`]): a node's
    /// tasks, the state machine's `apply` among them, catch their panics, so a run can look
    /// fine otherwise. Runs beside each other in one test binary see each other's panics.
    pub panics: Vec<String>,
}

impl<W: Workload> std::fmt::Display for Report<W> {
    /// One line: the seed, the operations by outcome, the faults that took effect, the
    /// verdict and whether the replicas agree. An unknown count of 0 under faults means the
    /// model's unknown-outcome branch was not exercised.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (ok, failed, unknown) = self.history.counts();
        let verdict = match &self.check {
            CheckResult::Linearizable => "linearizable",
            CheckResult::Violation(_) => "NOT linearizable",
            CheckResult::Unknown { .. } => "no verdict",
        };
        write!(
            f,
            "seed {}: {ok} ok, {failed} failed, {unknown} unknown; {} faults; {verdict}; replicas {}",
            self.seed,
            self.faults_applied,
            if self.replicas_agree() {
                "agree"
            } else {
                "DIVERGED"
            },
        )?;
        if !self.panics.is_empty() {
            write!(f, "; {} PANICS", self.panics.len())?;
        }
        Ok(())
    }
}

impl<W: Workload> Report<W> {
    /// Operations by outcome: (succeeded, definitely failed, unknown).
    pub fn outcomes(&self) -> (usize, usize, usize) {
        self.history.counts()
    }

    /// Whether every replica ended with the same state.
    pub fn replicas_agree(&self) -> bool {
        self.replicas.windows(2).all(|w| w[0].1 == w[1].1)
    }

    /// Panics, naming the seed and how to rerun it, unless the history is linearizable, the
    /// replicas agree, operations actually succeeded, and nothing panicked during the run.
    pub fn assert_ok(&self) {
        let rerun = format!("rerun with RAFTKIT_SEED={}", self.seed);
        let (ok, failed, unknown) = self.history.counts();
        match &self.check {
            CheckResult::Linearizable => {}
            CheckResult::Violation(v) => panic!(
                "linearizability violation (seed {}; {rerun}):\n{v}",
                self.seed
            ),
            CheckResult::Unknown { reason } => {
                panic!("no verdict (seed {}; {rerun}): {reason}", self.seed)
            }
        }
        assert!(
            self.replicas_agree(),
            "replicas diverged (seed {}; {rerun}): {:?}",
            self.seed,
            self.replicas
        );
        assert!(
            ok > 0,
            "no operation succeeded (seed {}; {rerun}): {failed} failed, {unknown} unknown",
            self.seed
        );
        assert!(
            self.panics.is_empty(),
            "a thread panicked during the run (seed {}; {rerun}) at {:?}",
            self.seed,
            self.panics
        );
    }
}

/// How the driver's clients behave. Start from [`ClientOptions::default`] and adjust with the
/// `with_*` methods.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct ClientOptions {
    /// Concurrent clients.
    pub clients: usize,
    /// Seed of their operation choices (client `c` draws from `seed + c`).
    pub seed: u64,
    /// Bound on one operation, retries included.
    pub op_timeout: Duration,
    /// Bound on one attempt.
    pub attempt_timeout: Duration,
}

impl Default for ClientOptions {
    /// Four clients, seed `RAFTKIT_SEED` (or 1), 3 s per operation, 600 ms per attempt: the
    /// same as [`RunOptions::default`].
    fn default() -> Self {
        RunOptions::default().client_options()
    }
}

impl ClientOptions {
    /// Sets the number of concurrent clients (default 4).
    #[must_use]
    pub fn with_clients(mut self, clients: usize) -> ClientOptions {
        self.clients = clients;
        self
    }

    /// Sets the seed of the clients' operation choices (default `RAFTKIT_SEED`, or 1).
    #[must_use]
    pub fn with_seed(mut self, seed: u64) -> ClientOptions {
        self.seed = seed;
        self
    }

    /// Sets the bound on one operation, retries included (default 3 s).
    #[must_use]
    pub fn with_op_timeout(mut self, timeout: Duration) -> ClientOptions {
        self.op_timeout = timeout;
        self
    }

    /// Sets the bound on one attempt (default 600 ms).
    #[must_use]
    pub fn with_attempt_timeout(mut self, timeout: Duration) -> ClientOptions {
        self.attempt_timeout = timeout;
        self
    }
}

/// Runs clients against `target` until `stop` is set: each picks random operations from
/// `workload`, records them in `recorder`, and retries an operation until it succeeds,
/// definitely fails, or the operation timeout passes (then it is unknown if any attempt might
/// have applied it, failed otherwise).
pub async fn run_clients<T: Target>(
    target: &T,
    workload: &T::W,
    recorder: &Recorder<InputOf<T::W>, OutputOf<T::W>>,
    opts: ClientOptions,
    stop: &std::sync::atomic::AtomicBool,
) {
    let ClientOptions {
        clients,
        seed,
        op_timeout,
        attempt_timeout,
    } = opts;
    let client = |c: usize| async move {
        let mut rng = StdRng::seed_from_u64(
            seed.wrapping_add(c as u64)
                .wrapping_mul(0x9e37_79b9_7f4a_7c15),
        );
        // The client's open session and the sequence its last write used.
        let mut session: Option<Session> = None;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let mut op_session: Option<Session> = None;
            let input = workload.generate(&mut rng);
            let pending = recorder.invoke(c, input.clone());
            let deadline = tokio::time::Instant::now() + op_timeout;
            let mut maybe_applied = false;
            let mut pause = Duration::from_millis(10);
            let result = loop {
                let attempt_deadline = deadline.min(tokio::time::Instant::now() + attempt_timeout);
                let attempt = match workload.command(&input) {
                    Some(cmd) => {
                        if session.is_none() {
                            session = tokio::time::timeout_at(
                                attempt_deadline,
                                target.register_session(c),
                            )
                            .await
                            .ok()
                            .flatten()
                            .map(|client_id| Session {
                                client_id,
                                sequence: 0,
                            });
                        }
                        // Every attempt of one operation carries the same sequence.
                        match (op_session, session.as_mut()) {
                            (Some(op), _) => Some(op),
                            (None, Some(s)) => {
                                s.sequence += 1;
                                op_session = Some(*s);
                                op_session
                            }
                            (None, None) => None,
                        }
                        .map(|op| {
                            tokio::time::timeout_at(
                                attempt_deadline,
                                target.write(c, op, cmd, &input),
                            )
                        })
                        .map(|f| async move { f.await.unwrap_or(Attempt::Unknown) })
                    }
                    None => None,
                };
                let attempt = match (attempt, workload.command(&input).is_some()) {
                    (Some(write), _) => write.await,
                    // No session could be opened: nothing was written.
                    (None, true) => Attempt::Failed,
                    (None, false) => {
                        match tokio::time::timeout_at(attempt_deadline, target.read(c, &input))
                            .await
                        {
                            Ok(a) => a,
                            Err(_) => Attempt::Failed,
                        }
                    }
                };
                match attempt {
                    Attempt::Ok(out) => break Some(out),
                    Attempt::Unknown => maybe_applied = true,
                    Attempt::SessionLost => {
                        // A retry cannot be recognised any more: the outcome stays unknown, and
                        // the next write opens a new session.
                        session = None;
                        maybe_applied = true;
                        break None;
                    }
                    Attempt::Failed => {}
                }
                if tokio::time::Instant::now() + pause >= deadline {
                    break None;
                }
                // Pacing retries through an outage is client behaviour, not synchronisation.
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(200));
            };
            match result {
                Some(out) => pending.ok(out),
                None if maybe_applied => pending.unknown(),
                None => pending.failed(),
            }
        }
    };
    join_all((0..clients).map(client)).await;
}

/// The in-process cluster as a driver target.
pub struct ClusterTarget<'a, W: Workload> {
    cluster: &'a Cluster<W::Sm>,
    workload: &'a W,
    reads: ReadMode,
    /// For [`ReadMode::UnsafeLocal`]: the node each client first saw as leader.
    sticky: std::sync::Mutex<std::collections::HashMap<usize, NodeId>>,
}

impl<'a, W: Workload> ClusterTarget<'a, W> {
    /// Sends operations to `cluster`'s current leader.
    pub fn new(cluster: &'a Cluster<W::Sm>, workload: &'a W, reads: ReadMode) -> Self {
        ClusterTarget {
            cluster,
            workload,
            reads,
            sticky: Default::default(),
        }
    }

    /// The node that leads in the highest term, as far as the running nodes say.
    fn leader(&self) -> Option<Node<W::Sm>> {
        let m = self.cluster.metrics();
        let id = m
            .values()
            .filter(|m| m.role == Role::Leader)
            .max_by_key(|m| m.term)?
            .id;
        self.cluster.node(id).ok()
    }
}

impl<W: Workload> Target for ClusterTarget<'_, W> {
    type W = W;

    async fn write(
        &self,
        _client: usize,
        session: Session,
        command: <W::Sm as StateMachine>::Command,
        input: &InputOf<W>,
    ) -> Attempt<OutputOf<W>> {
        let Some(node) = self.leader() else {
            return Attempt::Failed;
        };
        match node.write_in_session(session, command).await {
            Ok(out) => Attempt::Ok(self.workload.write_output(input, out)),
            Err(Error::Rejected(ApplyError::UnknownSession { .. })) => Attempt::SessionLost,
            Err(e) if e.may_have_applied() => Attempt::Unknown,
            Err(_) => Attempt::Failed,
        }
    }

    async fn register_session(&self, _client: usize) -> Option<u64> {
        self.leader()?.register_session().await.ok()
    }

    async fn read(&self, client: usize, input: &InputOf<W>) -> Attempt<OutputOf<W>> {
        let node = match self.reads {
            ReadMode::Linearizable => self.leader(),
            ReadMode::UnsafeLocal => {
                let known = crate::sync::lock(&self.sticky).get(&client).copied();
                match known {
                    Some(id) => self.cluster.node(id).ok(),
                    None => {
                        let l = self.leader();
                        if let Some(n) = &l {
                            crate::sync::lock(&self.sticky).insert(client, n.id());
                        }
                        l
                    }
                }
            }
        };
        let Some(node) = node else {
            return Attempt::Failed;
        };
        let consistency = match self.reads {
            ReadMode::Linearizable => Consistency::Linearizable,
            ReadMode::UnsafeLocal => Consistency::Local,
        };
        match node.query(consistency, self.workload.query(input)).await {
            Ok(reply) => Attempt::Ok(self.workload.read_output(input, reply)),
            Err(_) => Attempt::Failed,
        }
    }
}

/// Runs `workload` on an in-process cluster under `opts.schedule`, then heals everything, waits
/// for convergence, checks the history and collects every replica's state.
pub async fn run<W: Workload>(workload: W, opts: RunOptions) -> Result<Report<W>> {
    let cluster_opts = ClusterOptions {
        seed: opts.seed,
        ..opts.cluster.clone()
    };
    let make = {
        let sm = workload.state_machine();
        move |_id: NodeId| sm.clone()
    };
    let watch = PanicWatch::start();
    let cluster = Cluster::start(opts.nodes, cluster_opts, make).await?;
    // The run reports panics (from its own watch, which covers the start) instead of failing.
    cluster.take_panics();
    let recorder: Recorder<InputOf<W>, OutputOf<W>> = Recorder::new();
    let target = ClusterTarget::new(&cluster, &workload, opts.reads);
    let mut nemesis = Nemesis::new(&cluster, opts.seed);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let client_opts = opts.client_options();
    let clients = run_clients(&target, &workload, &recorder, client_opts, &stop);
    let faults = async {
        let result = nemesis.run(&opts.schedule).await;
        // Keep the clients going a little after the last fault, then stop them.
        tokio::time::sleep(opts.after).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        result
    };
    let (_, faults) = tokio::join!(clients, faults);
    let faults_applied = faults?;
    nemesis.restore().await?;
    cluster.wait_converged().await?;

    let leader = cluster.wait_for_leader().await?;
    let members = cluster.node(leader)?.metrics();
    let mut replicas = Vec::new();
    for id in members.voters.iter().chain(members.learners.iter()) {
        let node = cluster.node(*id)?;
        replicas.push((*id, node.read(Consistency::Local, |sm| sm.clone()).await?));
    }
    let history = recorder.history();
    let check = checker::check::<W::Model>(&history, opts.check_budget);
    cluster.shutdown().await?;
    Ok(Report {
        seed: opts.seed,
        history,
        check,
        replicas,
        faults_applied,
        panics: watch.panics(),
    })
}
