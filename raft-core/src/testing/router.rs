//! An in-process network that can fail the ways real networks do.
//!
//! Every node registers its [`RpcHandler`] with a [`Router`] and sends through the
//! [`RouterTransport`] the router gives it. Between sender and receiver the router applies the
//! current faults:
//!
//! * **partitions** — nodes in different groups cannot talk; nodes in no group talk to everyone
//!   (so a node placed in two groups' view is a bridge);
//! * **isolation** of single nodes, and **one-way blocks** (`from → to` only);
//! * **loss** — each message is dropped with a probability;
//! * **delay** — each message waits a random time in a range.
//!
//! A blocked request fails at once as unreachable (like a refused connection). A blocked *reply*
//! means the receiver acted but the sender never hears back: the sender sees an error, as over a
//! real network. Faults are drawn from a seeded generator, so a run can be repeated.

use std::collections::HashMap;
use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::RwLock;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;

use openraft::BasicNode;
use openraft::RaftNetworkFactory;
use openraft::errors::ReplicationClosed;
use rand::Rng;
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::snapshot::SnapshotData;
use crate::sync::lock;
use crate::transport::RpcHandlerError;
use crate::transport::SharedRpcHandler;
use crate::transport::rpc;
use crate::transport::rpc::Backoff;
use crate::transport::rpc::RPCOption;
use crate::transport::rpc::RaftNetworkV2;
use crate::types::NodeId;
use crate::types::TypeConfig;
use crate::types::Vote;

/// Bytes per snapshot chunk sent through the router.
const SNAPSHOT_CHUNK: usize = 64 << 10;

#[derive(Default)]
struct Faults {
    /// Node → group; two nodes in different groups cannot talk.
    groups: HashMap<NodeId, usize>,
    isolated: HashSet<NodeId>,
    /// One-way blocks `(from, to)`.
    blocked: HashSet<(NodeId, NodeId)>,
    loss: f64,
    delay: Option<(Duration, Duration)>,
}

impl Faults {
    fn can_send(&self, from: NodeId, to: NodeId) -> bool {
        if from == to {
            return true;
        }
        if self.isolated.contains(&from)
            || self.isolated.contains(&to)
            || self.blocked.contains(&(from, to))
        {
            return false;
        }
        match (self.groups.get(&from), self.groups.get(&to)) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        }
    }
}

/// Counters of what crossed the router.
#[derive(Debug, Default)]
struct Counters {
    delivered: AtomicU64,
    refused: AtomicU64,
    snapshots: AtomicU64,
    snapshot_chunks: AtomicU64,
}

struct Inner {
    nodes: RwLock<HashMap<NodeId, SharedRpcHandler>>,
    faults: Mutex<Faults>,
    rng: Mutex<StdRng>,
    counters: Counters,
}

/// An in-process network between nodes, with injectable faults. Clones share the network.
#[derive(Clone)]
pub struct Router {
    inner: Arc<Inner>,
}

impl Default for Router {
    fn default() -> Self {
        Router::new(0)
    }
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router").finish_non_exhaustive()
    }
}

impl Router {
    /// A network with no faults; `seed` drives message loss and delay.
    pub fn new(seed: u64) -> Router {
        Router {
            inner: Arc::new(Inner {
                nodes: RwLock::new(HashMap::new()),
                faults: Mutex::new(Faults::default()),
                rng: Mutex::new(StdRng::seed_from_u64(seed)),
                counters: Counters::default(),
            }),
        }
    }

    /// The transport node `from` sends through; pass it to [`Node::start`](crate::Node::start).
    pub fn transport(&self, from: NodeId) -> RouterTransport {
        RouterTransport {
            from,
            router: self.clone(),
        }
    }

    /// Connects a node's receiving side (from [`Node::rpc_handler`](crate::Node::rpc_handler)).
    pub fn register(&self, handler: SharedRpcHandler) {
        let id = handler.node_id();
        crate::sync::write(&self.inner.nodes).insert(id, handler);
    }

    /// Disconnects a node's receiving side (it crashed or shut down).
    pub fn unregister(&self, id: NodeId) {
        crate::sync::write(&self.inner.nodes).remove(&id);
    }

    /// Splits the network: nodes in different `groups` cannot talk. Nodes named in no group can
    /// talk to everyone (a bridge). Replaces any earlier partition.
    pub fn partition(&self, groups: &[&[NodeId]]) {
        let mut f = lock(&self.inner.faults);
        f.groups.clear();
        for (g, members) in groups.iter().enumerate() {
            for id in members.iter() {
                f.groups.insert(*id, g);
            }
        }
    }

    /// Cuts `id` off from every other node.
    pub fn isolate(&self, id: NodeId) {
        lock(&self.inner.faults).isolated.insert(id);
    }

    /// Drops every message from `from` to `to` (not the other way).
    pub fn block(&self, from: NodeId, to: NodeId) {
        lock(&self.inner.faults).blocked.insert((from, to));
    }

    /// Drops each message with probability `p` (0.0–1.0).
    pub fn set_loss(&self, p: f64) {
        lock(&self.inner.faults).loss = p.clamp(0.0, 1.0);
    }

    /// Delays each message by a random time in `[min, max]`.
    pub fn set_delay(&self, min: Duration, max: Duration) {
        lock(&self.inner.faults).delay = Some((min, max.max(min)));
    }

    /// Removes every fault: partitions, isolation, blocks, loss and delay.
    pub fn heal(&self) {
        *lock(&self.inner.faults) = Faults::default();
    }

    /// Whether a message from `from` to `to` would currently get through (ignoring loss).
    pub fn connected(&self, from: NodeId, to: NodeId) -> bool {
        lock(&self.inner.faults).can_send(from, to)
    }

    /// Snapshots transferred completely (and handed to the receiver to install) so far.
    pub fn snapshots_delivered(&self) -> u64 {
        self.inner.counters.snapshots.load(Ordering::Relaxed)
    }

    /// Snapshot chunks delivered so far.
    pub fn snapshot_chunks_delivered(&self) -> u64 {
        self.inner.counters.snapshot_chunks.load(Ordering::Relaxed)
    }

    /// Messages delivered and refused so far.
    pub fn message_counts(&self) -> (u64, u64) {
        let c = &self.inner.counters;
        (
            c.delivered.load(Ordering::Relaxed),
            c.refused.load(Ordering::Relaxed),
        )
    }

    /// Decides the fate of one message: `Ok(delay)` to deliver after `delay`, or `Err` to drop.
    fn admit(&self, from: NodeId, to: NodeId) -> Result<Option<Duration>, &'static str> {
        let f = lock(&self.inner.faults);
        if !f.can_send(from, to) {
            return Err("partitioned");
        }
        let mut rng = lock(&self.inner.rng);
        if f.loss > 0.0 && rng.random_bool(f.loss) {
            return Err("message lost");
        }
        Ok(f.delay.map(|(min, max)| {
            let span = (max - min).as_micros() as u64;
            min + Duration::from_micros(if span == 0 {
                0
            } else {
                rng.random_range(0..=span)
            })
        }))
    }

    /// What a real transport does with the incarnations every request carries.
    fn check_incarnations(
        &self,
        sender: Option<&SharedRpcHandler>,
        receiver: &SharedRpcHandler,
    ) -> Result<(), RpcHandlerError> {
        match sender {
            Some(s) => receiver.check_incarnation(
                s.node_id(),
                Some(s.incarnation()),
                s.expected_incarnation(receiver.node_id()),
            ),
            None => Ok(()),
        }
    }

    fn handler(&self, id: NodeId) -> Option<SharedRpcHandler> {
        crate::sync::read(&self.inner.nodes).get(&id).cloned()
    }

    /// Delivers one request from `from` to `to` and its reply back, subject to the faults.
    async fn call<T, F, Fut>(&self, from: NodeId, to: NodeId, f: F) -> Result<T, rpc::RpcError>
    where
        F: FnOnce(SharedRpcHandler) -> Fut,
        Fut: Future<Output = Result<T, RpcHandlerError>>,
    {
        let refused = |why: String| {
            self.inner.counters.refused.fetch_add(1, Ordering::Relaxed);
            rpc::RpcError::Unreachable(rpc::Unreachable::from_string(format!(
                "{from} -> {to}: {why}"
            )))
        };
        let delay = self
            .admit(from, to)
            .map_err(|why| refused(why.to_string()))?;
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        let handler = self
            .handler(to)
            .ok_or_else(|| refused("node is down".into()))?;
        let sender = self.handler(from);
        self.check_incarnations(sender.as_ref(), &handler)
            .map_err(|e| refused(e.to_string()))?;
        let reply = f(handler.clone())
            .await
            .map_err(|e| refused(e.to_string()))?;
        if let Some(s) = &sender {
            s.check_answer(to, Some(handler.incarnation()))
                .map_err(|e| refused(e.to_string()))?;
        }
        // The reply crosses the network too.
        let delay = self
            .admit(to, from)
            .map_err(|why| refused(format!("reply {why}")))?;
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        self.inner
            .counters
            .delivered
            .fetch_add(1, Ordering::Relaxed);
        Ok(reply)
    }

    /// Streams a snapshot to `to` in chunks; every chunk must get through.
    async fn send_snapshot(
        &self,
        from: NodeId,
        to: NodeId,
        vote: Vote,
        data: SnapshotData,
    ) -> Result<rpc::SnapshotResponse, rpc::StreamingError> {
        let unreachable = |why: String| {
            rpc::StreamingError::Unreachable(rpc::Unreachable::from_string(format!(
                "{from} -> {to}: {why}"
            )))
        };
        let handler = self
            .handler(to)
            .ok_or_else(|| unreachable("node is down".into()))?;
        self.check_incarnations(self.handler(from).as_ref(), &handler)
            .map_err(|e| unreachable(e.to_string()))?;
        let mut sink = match handler
            .snapshot_sink(&vote, Some(data.len()))
            .map_err(|e| unreachable(e.to_string()))?
        {
            crate::transport::SnapshotReceive::Receive(sink) => sink,
            crate::transport::SnapshotReceive::Refuse(answer) => return Ok(answer),
        };
        let mut buf = vec![0u8; SNAPSHOT_CHUNK];
        let mut offset = 0u64;
        loop {
            let n = data
                .read_at(offset, &mut buf)
                .map_err(|e| unreachable(format!("reading snapshot: {e}")))?;
            if n == 0 {
                break;
            }
            if let Some(d) = self
                .admit(from, to)
                .map_err(|why| unreachable(why.to_string()))?
            {
                tokio::time::sleep(d).await;
            }
            sink.write(&buf[..n])
                .map_err(|e| unreachable(e.to_string()))?;
            self.inner
                .counters
                .snapshot_chunks
                .fetch_add(1, Ordering::Relaxed);
            offset += n as u64;
        }
        let (meta, received) = tokio::task::spawn_blocking(move || sink.finish())
            .await
            .map_err(|e| unreachable(e.to_string()))?
            .map_err(|e| unreachable(e.to_string()))?;
        self.inner
            .counters
            .snapshots
            .fetch_add(1, Ordering::Relaxed);
        let resp = handler
            .install_snapshot(vote, meta, received)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        self.admit(to, from)
            .map_err(|why| unreachable(format!("reply {why}")))?;
        Ok(resp)
    }
}

/// The sending side of one node on a [`Router`].
pub struct RouterTransport {
    from: NodeId,
    router: Router,
}

impl RaftNetworkFactory<TypeConfig> for RouterTransport {
    type Network = RouterConnection;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> RouterConnection {
        RouterConnection {
            from: self.from,
            to: target,
            router: self.router.clone(),
        }
    }
}

/// A connection from one node to another over a [`Router`].
pub struct RouterConnection {
    from: NodeId,
    to: NodeId,
    router: Router,
}

impl RaftNetworkV2<TypeConfig> for RouterConnection {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        req: rpc::AppendEntriesRequest,
        _option: RPCOption,
    ) -> Result<rpc::AppendEntriesResponse, rpc::RpcError> {
        self.router
            .call(self.from, self.to, |h| async move {
                h.append_entries(req).await
            })
            .await
    }

    async fn vote(
        &mut self,
        req: rpc::VoteRequest,
        _option: RPCOption,
    ) -> Result<rpc::VoteResponse, rpc::RpcError> {
        self.router
            .call(self.from, self.to, |h| async move { h.vote(req).await })
            .await
    }

    async fn pre_vote(
        &mut self,
        req: rpc::VoteRequest,
        _option: RPCOption,
    ) -> Result<rpc::VoteResponse, rpc::RpcError> {
        self.router
            .call(self.from, self.to, |h| async move { h.pre_vote(req).await })
            .await
    }

    async fn transfer_leader(
        &mut self,
        req: rpc::TransferLeaderRequest,
        _option: RPCOption,
    ) -> Result<rpc::TransferLeaderResponse, rpc::RpcError> {
        self.router
            .call(self.from, self.to, |h| async move {
                h.transfer_leader(req).await
            })
            .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: rpc::Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<rpc::SnapshotResponse, rpc::StreamingError> {
        let send = self
            .router
            .send_snapshot(self.from, self.to, vote, snapshot.snapshot);
        tokio::select! {
            r = send => r,
            closed = cancel => Err(rpc::StreamingError::Closed(closed)),
        }
    }

    fn backoff(&self) -> Option<Backoff> {
        // In-process, a peer that is down comes back quickly: retry soon.
        Some(Backoff::new(
            [20u64, 40, 80, 160]
                .into_iter()
                .chain(std::iter::repeat(200))
                .map(Duration::from_millis),
        ))
    }
}
