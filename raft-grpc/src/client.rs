//! [`ClusterClient`]: talks to a cluster through whichever nodes it can reach.
//!
//! Given any subset of the nodes' addresses, the client finds the leader (following redirects),
//! remembers it, and retries through leader changes. Every write carries a client session, and
//! a retry reuses it, so a write whose reply was lost is applied exactly once. Reads are spread
//! over the nodes by a [`ReadPolicy`]; followers serve linearizable reads by asking the leader
//! for a read index.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::time::Duration;

use raft_core::ApplyError;
use raft_core::ClusterId;
use raft_core::Consistency;
use raft_core::LeaderHint;
use raft_core::NodeId;
use raft_core::Queryable;
use raft_core::Role;
use raft_core::UnknownRole;
use raft_core::codec::CodecError;
use rand::Rng;
use tonic::Status;
use tonic::transport::Channel;

use crate::auth::Credentials;
use crate::backoff::Backoff;
use crate::net::ChannelOptions;
use crate::net::Connector;
use crate::net::Pool;
use crate::pb;
use crate::pb::cluster_client::ClusterClient as PbClusterClient;
use crate::request_error::RequestError;
use crate::server::Op;
use crate::tls::TlsConfig;

/// How reads are spread over the nodes.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ReadPolicy {
    /// Always the leader.
    Leader,
    /// Each node in turn.
    RoundRobin,
    /// A node picked at random each time.
    Random,
    /// Nodes picked at random in proportion to their weights (`(address, weight)`); addresses
    /// not listed get no reads.
    Weighted(Vec<(String, u32)>),
}

/// Settings of a [`ClusterClient`]. Start from [`ClientOptions::default`] and adjust with the
/// `with_*` methods.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ClientOptions {
    /// TLS towards the nodes (a client certificate is needed under mutual TLS).
    pub tls: Option<TlsConfig>,
    /// How connections are made.
    pub connector: Connector,
    /// Connection tuning.
    pub channel: ChannelOptions,
    /// Deadline of each attempt. Default 5 s. An attempt of adding or promoting a learner
    /// ([`ClusterClient::add_learner`], [`ClusterClient::add_voter`]) gets at least 15 s: the
    /// leader waits up to its request timeout (10 s by default) for the learner to catch up
    /// before it answers. A backup ([`ClusterClient::backup`]) also fails if, once its first
    /// chunk has arrived, no further data arrives for this long.
    pub attempt_timeout: Duration,
    /// How long a backup ([`ClusterClient::backup`]) waits for its first chunk once a node has
    /// started the stream. The node first waits until it has applied the backup's read index,
    /// up to its request timeout ([`raft_core::Config::request_timeout`], 10 s by default) when
    /// it lags behind the leader, so this should exceed the nodes' request timeout; the node's
    /// own error then arrives rather than a client-side one. Default 15 s.
    pub backup_start_timeout: Duration,
    /// How long an operation keeps retrying through failures before giving up. Default 30 s.
    pub total_timeout: Duration,
    /// Where reads go. Default round-robin.
    pub read_policy: ReadPolicy,
    /// Largest message sent or accepted, in bytes. Default 65 MiB, the node's own default
    /// ([`GrpcOptions::max_message_bytes`](crate::GrpcOptions::max_message_bytes)), so a
    /// command of the default `max_command_bytes` can be sent with its framing, and any reply a
    /// node with default limits sends can be decoded (a larger one it refuses itself, with
    /// `RequestError::TooLarge`).
    pub max_message_bytes: usize,
    /// Who the client is, on clusters that authenticate callers (see [`crate::auth`]): a
    /// user's token or the cluster secret. Default none.
    pub credentials: Option<Credentials>,
}

/// Adds the client's credentials to each call.
#[derive(Clone)]
struct Stamp(Option<Credentials>);

impl tonic::service::Interceptor for Stamp {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(c) = &self.0 {
            c.stamp(req.metadata_mut());
        }
        Ok(req)
    }
}

type Client = PbClusterClient<tonic::service::interceptor::InterceptedService<Channel, Stamp>>;

/// The least time [`ClusterClient`] gives one attempt of adding or promoting a learner: a
/// node's default request timeout ([`raft_core::Config::request_timeout`], the longest a leader
/// waits for the learner to catch up before answering) and 5 s for the answer to travel. Nodes
/// configured with a longer request timeout need a client with an
/// [`ClientOptions::attempt_timeout`] longer still.
fn catch_up_attempt_timeout() -> Duration {
    raft_core::Config::in_memory(1).request_timeout + Duration::from_secs(5)
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            tls: None,
            connector: Connector::default(),
            channel: ChannelOptions::default(),
            attempt_timeout: Duration::from_secs(5),
            backup_start_timeout: Duration::from_secs(15),
            total_timeout: Duration::from_secs(30),
            read_policy: ReadPolicy::RoundRobin,
            max_message_bytes: 65 << 20,
            credentials: None,
        }
    }
}

impl ClientOptions {
    /// Sets TLS towards the nodes (default none: plain TCP).
    #[must_use]
    pub fn with_tls(mut self, tls: Option<TlsConfig>) -> ClientOptions {
        self.tls = tls;
        self
    }

    /// Sets how connections are made (default TCP).
    #[must_use]
    pub fn with_connector(mut self, connector: Connector) -> ClientOptions {
        self.connector = connector;
        self
    }

    /// Sets the connection tuning (default [`ChannelOptions::default`]).
    #[must_use]
    pub fn with_channel(mut self, channel: ChannelOptions) -> ClientOptions {
        self.channel = channel;
        self
    }

    /// Sets the deadline of each attempt (default 5 s).
    #[must_use]
    pub fn with_attempt_timeout(mut self, timeout: Duration) -> ClientOptions {
        self.attempt_timeout = timeout;
        self
    }

    /// Sets how long a backup waits for its first chunk once a node has started the stream
    /// (default 15 s; see [`ClientOptions::backup_start_timeout`]).
    #[must_use]
    pub fn with_backup_start_timeout(mut self, timeout: Duration) -> ClientOptions {
        self.backup_start_timeout = timeout;
        self
    }

    /// Sets how long an operation keeps retrying before giving up (default 30 s). A
    /// [`ClusterClient::write`] counts all of its calls against it: opening its session as
    /// well as its own attempts.
    #[must_use]
    pub fn with_total_timeout(mut self, timeout: Duration) -> ClientOptions {
        self.total_timeout = timeout;
        self
    }

    /// Sets where reads go (default [`ReadPolicy::RoundRobin`]).
    #[must_use]
    pub fn with_read_policy(mut self, policy: ReadPolicy) -> ClientOptions {
        self.read_policy = policy;
        self
    }

    /// Sets the largest message sent or accepted (default 64 MiB).
    #[must_use]
    pub fn with_max_message_bytes(mut self, bytes: usize) -> ClientOptions {
        self.max_message_bytes = bytes;
        self
    }

    /// Sets who the client is on clusters that authenticate callers (default none).
    #[must_use]
    pub fn with_credentials(mut self, credentials: Option<Credentials>) -> ClientOptions {
        self.credentials = credentials;
        self
    }
}

/// What a [`ClusterClient`] operation can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The client was given no usable address.
    #[error("invalid client configuration: {0}")]
    Config(String),
    /// raftkit could not apply the command or cannot answer for it (see
    /// [`raft_core::Error::Rejected`]); [`ApplyError`] says why. A business error of the state
    /// machine is not one of these: it arrives inside the `Output`.
    #[error(transparent)]
    Rejected(#[from] ApplyError),
    /// The operation kept failing until the retry budget ran out, or an attempt was refused
    /// after an earlier one whose outcome is unknown (a timeout, a lost connection, a leader
    /// change). For a write, the outcome is unknown; retrying it later is safe only in the same
    /// session, or as a new write.
    #[error("gave up after {attempts} attempts: {last}")]
    GaveUp {
        /// How many attempts were made.
        attempts: u32,
        /// The last failure.
        last: RequestError,
    },
    /// A node refused the request for a reason retrying will not fix.
    #[error("request refused: {0}")]
    Refused(RequestError),
    /// A command, query or answer could not be encoded or decoded.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// A backup stream broke off, stalled or did not check out; what was written is not a
    /// backup.
    #[error("backup incomplete: {0}")]
    BackupIncomplete(String),
    /// Writing a received backup failed.
    #[error("writing the backup failed: {0}")]
    Output(#[source] std::io::Error),
    /// Every configured node answered that it is already writing a backup (a node writes one
    /// at a time); nothing was written. A later attempt can succeed.
    #[error("every node ({}) is already writing a backup; try again later", nodes.join(", "))]
    AllBusy {
        /// The nodes asked, by address.
        nodes: Vec<String>,
    },
    /// No node started the backup before the retry budget ran out: the nodes in `busy`
    /// answered that they are already writing one, the others failed. Nothing was written; a
    /// later attempt can succeed.
    #[error(
        "no node started the backup: {} already writing one, the others failed \
         ({attempts} attempts; last: {last}); try again later",
        busy.join(", ")
    )]
    BusyOrFailed {
        /// The nodes that answered busy when last asked, by address.
        busy: Vec<String>,
        /// How many attempts were made.
        attempts: u32,
        /// The last failure.
        last: RequestError,
    },
    /// The client was closed ([`ClusterClient::close`]): a write was refused before anything
    /// was sent.
    #[error("the client was closed")]
    Closed,
    /// A write needed a new session and registering one failed in a way whose outcome is
    /// unknown (the inner error, a [`ClientError::GaveUp`] say), so the write itself was never
    /// sent: it was not applied. (A registration that was plainly refused, for lack of rights
    /// say, is returned as that refusal.) The registration may have opened a session nobody
    /// uses; the cluster evicts it in time.
    #[error("the write was not sent: no session could be opened for it: {0}")]
    NoSession(Box<ClientError>),
    /// The operation's total timeout ran out (or had less than a millisecond left) before this
    /// call was sent (a write whose session registration took the whole budget): nothing was
    /// sent, so nothing was applied.
    #[error("the total timeout ran out before the request was sent; nothing was applied")]
    OutOfTime,
}

impl ClientError {
    /// Whether a failed write may have been applied: the client gave up
    /// ([`ClientError::GaveUp`]), the write's session can no longer recognise a retry
    /// ([`ApplyError::UnknownSession`], [`ApplyError::SessionExpired`]), or a node failed it in
    /// a way that may follow its commit ([`RequestError::may_have_applied`]: a storage failure
    /// on the leader, an output that could not be encoded or decoded, a connection lost before
    /// the answer). Such a write may be retried — as a new write, knowing it may apply twice.
    /// `false` means the write was not applied.
    pub fn outcome_unknown(&self) -> bool {
        match self {
            ClientError::GaveUp { .. } => true,
            ClientError::Rejected(e) => !matches!(e, ApplyError::InvalidCommand(_)),
            ClientError::Refused(e) => e.may_have_applied(),
            _ => false,
        }
    }
}

/// A failed write's error, with a session refusal made typed (whether it came at once or after
/// attempts whose outcome is unknown: either way the session can no longer answer).
fn write_error(e: ClientError, session: raft_core::Session) -> ClientError {
    let raft_core::Session {
        client_id,
        sequence,
    } = session;
    match e {
        ClientError::Refused(RequestError::UnknownSession(_))
        | ClientError::GaveUp {
            last: RequestError::UnknownSession(_),
            ..
        } => ClientError::Rejected(ApplyError::UnknownSession {
            client_id,
            sequence,
        }),
        ClientError::Refused(RequestError::SessionExpired(_))
        | ClientError::GaveUp {
            last: RequestError::SessionExpired(_),
            ..
        } => ClientError::Rejected(ApplyError::SessionExpired {
            client_id,
            sequence,
        }),
        other => other,
    }
}

/// One node's view of the cluster, as [`ClusterClient::status`] returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeStatus {
    /// The node's id.
    pub id: NodeId,
    /// Its role.
    pub role: Role,
    /// Its current term.
    pub term: u64,
    /// The leader it follows (itself, when it leads), if it knows one.
    pub leader_id: Option<NodeId>,
    /// That leader's raft address, if known.
    pub leader_addr: Option<String>,
    /// The index of its last log entry.
    pub last_log_index: Option<u64>,
    /// The highest index it knows to be committed.
    pub commit_index: Option<u64>,
    /// The highest index its state machine has applied.
    pub applied_index: Option<u64>,
    /// The index its latest snapshot covers.
    pub snapshot_index: Option<u64>,
    /// The voters of the membership it holds, with their raft addresses.
    pub voters: BTreeMap<NodeId, String>,
    /// The learners of that membership, with their raft addresses.
    pub learners: BTreeMap<NodeId, String>,
    /// Why its storage (NOSPACE) alarm is raised, when it is.
    pub space_alarm: Option<String>,
    /// The cluster it belongs to; `None` until it has one (a new node that has not joined a
    /// cluster yet), and from nodes that predate cluster ids or do not report it.
    pub cluster_id: Option<ClusterId>,
}

/// Why a node's status reply could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StatusReplyError {
    /// The role is not one this client knows.
    #[error(transparent)]
    Role(#[from] UnknownRole),
    /// The cluster id is not 32 hex digits.
    #[error("{0}")]
    ClusterId(String),
}

impl TryFrom<pb::StatusReply> for NodeStatus {
    type Error = StatusReplyError;

    fn try_from(r: pb::StatusReply) -> Result<NodeStatus, StatusReplyError> {
        let members = |ms: Vec<pb::Member>| ms.into_iter().map(|m| (m.id, m.addr)).collect();
        let cluster_id = match r.cluster_id.as_str() {
            "" => None,
            id => Some(
                id.parse::<ClusterId>()
                    .map_err(|e| StatusReplyError::ClusterId(e.to_string()))?,
            ),
        };
        Ok(NodeStatus {
            cluster_id,
            id: r.id,
            role: r.role.parse()?,
            term: r.term,
            leader_id: r.leader_id,
            leader_addr: Some(r.leader_addr).filter(|a| !a.is_empty()),
            last_log_index: r.last_log_index,
            commit_index: r.commit_index,
            applied_index: r.applied_index,
            snapshot_index: r.snapshot_index,
            voters: members(r.voters),
            learners: members(r.learners),
            space_alarm: Some(r.space_alarm).filter(|a| !a.is_empty()),
        })
    }
}

/// The least time left in an operation's budget for which a call is still sent.
const MIN_ATTEMPT: Duration = Duration::from_millis(1);

tokio::task_local! {
    /// The deadline of the operation the current call belongs to, when one operation makes
    /// several retried calls ([`ClusterClient::write`]): they share its total timeout.
    static OPERATION_DEADLINE: tokio::time::Instant;
}

/// A write's session slot: one registered session used for one write at a time.
#[derive(Clone, Copy)]
struct Slot {
    client_id: u64,
    next: u64,
}

/// The slot of a write in flight. A write whose future is dropped part-way (a timeout or a
/// `select!` around it) still gives its slot back: the sequence it sent was spent before it
/// was sent, so the session's next write is newer than anything that write may still apply.
struct SlotInUse<'a, S: Queryable> {
    client: &'a ClusterClient<S>,
    slot: Slot,
    /// Whether dropping this gives the slot back.
    armed: bool,
}

impl<'a, S: Queryable> SlotInUse<'a, S> {
    fn new(client: &'a ClusterClient<S>, slot: Slot) -> Self {
        SlotInUse {
            client,
            slot,
            armed: true,
        }
    }

    /// The slot, for the caller to give back or discard itself.
    fn take(mut self) -> Slot {
        self.armed = false;
        self.slot
    }
}

impl<S: Queryable> Drop for SlotInUse<'_, S> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        {
            let mut slots = self
                .client
                .inner
                .slots
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if !slots.closed {
                slots.free.push(self.slot);
                return;
            }
        }
        // The client was closed meanwhile: close the session in the background, as the write
        // would have as it ended.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let client = self.client.clone();
            let client_id = self.slot.client_id;
            runtime.spawn(async move {
                if let Err(e) = client.close_session(client_id).await {
                    tracing::debug!(client_id, error = %e, "closing a session failed");
                }
            });
        }
    }
}

/// The sessions of [`ClusterClient::write`] that no write is using, and whether the client was
/// closed (then a session is closed when its write ends, rather than kept).
#[derive(Default)]
struct Slots {
    free: Vec<Slot>,
    closed: bool,
}

struct Inner {
    endpoints: Vec<String>,
    pool: Pool,
    opts: ClientOptions,
    leader: Mutex<Option<String>>,
    slots: Mutex<Slots>,
    next_endpoint: AtomicUsize,
}

/// A client of a raftkit cluster running state machine `S`. Cheap to clone; clones share
/// connections and the known leader.
pub struct ClusterClient<S> {
    inner: Arc<Inner>,
    _sm: PhantomData<fn() -> S>,
}

impl<S> Clone for ClusterClient<S> {
    fn clone(&self) -> Self {
        ClusterClient {
            inner: self.inner.clone(),
            _sm: PhantomData,
        }
    }
}

/// What to do after a failed attempt that may be retried.
enum Next {
    /// Try this address now (a redirect).
    Redirect(String),
    /// Try another node after a pause.
    Elsewhere,
}

/// What to do after an attempt failed with `s`, and the failure in typed form; `Err` gives up.
fn classify(s: &Status) -> Result<(Next, RequestError), ClientError> {
    let e = RequestError::from(s);
    let next = match &e {
        RequestError::NotLeader(hint) => match hint.addr() {
            Some(addr) => Next::Redirect(addr.to_string()),
            None => Next::Elsewhere,
        },
        RequestError::InvalidCommand(m) => {
            return Err(ClientError::Rejected(ApplyError::InvalidCommand(m.clone())));
        }
        e if e.is_transient() => Next::Elsewhere,
        _ => return Err(ClientError::Refused(e)),
    };
    Ok((next, e))
}

impl<S: Queryable> ClusterClient<S> {
    /// A client of the cluster whose nodes include `endpoints` (`host:port` each). Connections
    /// are made lazily; they run on the runtime this is called on, if any (else on the one
    /// first using each).
    pub fn new<A: Into<String>>(
        endpoints: impl IntoIterator<Item = A>,
        opts: ClientOptions,
    ) -> Result<ClusterClient<S>, ClientError> {
        let endpoints: Vec<String> = endpoints.into_iter().map(Into::into).collect();
        if endpoints.is_empty() {
            return Err(ClientError::Config("no node addresses".into()));
        }
        let tls = opts
            .tls
            .clone()
            .map(crate::tls::ReloadableTls::new)
            .transpose()
            .map_err(|e| ClientError::Config(e.to_string()))?;
        let pool = Pool::new(tls, opts.connector.clone(), opts.channel.clone());
        for e in &endpoints {
            pool.channel(e)
                .map_err(|s| ClientError::Config(s.message().to_string()))?;
        }
        Ok(ClusterClient {
            inner: Arc::new(Inner {
                endpoints,
                pool,
                opts,
                leader: Mutex::new(None),
                slots: Mutex::default(),
                next_endpoint: AtomicUsize::new(0),
            }),
            _sm: PhantomData,
        })
    }

    fn client(&self, addr: &str) -> Result<Client, Status> {
        let max = self.inner.opts.max_message_bytes;
        let stamp = Stamp(self.inner.opts.credentials.clone());
        Ok(
            PbClusterClient::with_interceptor(self.inner.pool.channel(addr)?, stamp)
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
    }

    fn next_endpoint(&self) -> String {
        let i = self.inner.next_endpoint.fetch_add(1, Ordering::Relaxed);
        self.inner.endpoints[i % self.inner.endpoints.len()].clone()
    }

    fn leader_guess(&self) -> String {
        let known = self
            .inner
            .leader
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        known.unwrap_or_else(|| self.next_endpoint())
    }

    fn remember_leader(&self, addr: Option<String>) {
        *self.inner.leader.lock().unwrap_or_else(|p| p.into_inner()) = addr;
    }

    /// A free session slot, or a newly registered session when none is free (`true` with a
    /// reused slot). Sessions are kept until the client is closed, one per write it ever had in
    /// flight at once. Refused once the client is closed.
    async fn take_slot(&self) -> Result<(Slot, bool), ClientError> {
        let free = {
            let mut slots = self.inner.slots.lock().unwrap_or_else(|p| p.into_inner());
            if slots.closed {
                return Err(ClientError::Closed);
            }
            slots.free.pop()
        };
        match free {
            Some(slot) => Ok((slot, true)),
            None => Ok((self.new_slot().await?, false)),
        }
    }

    /// A slot with a newly registered session, for a write that is then sent in it. A failure
    /// whose outcome is unknown becomes [`ClientError::NoSession`]: whatever happened to the
    /// registration, that write was never sent.
    async fn new_slot(&self) -> Result<Slot, ClientError> {
        let client_id = self.register_session().await.map_err(|e| {
            if e.outcome_unknown() {
                ClientError::NoSession(Box::new(e))
            } else {
                e
            }
        })?;
        Ok(Slot { client_id, next: 1 })
    }

    /// Keeps `slot` for the next write, or closes its session if the client was closed
    /// meanwhile (a failure to close it is logged: the cluster evicts the session in time).
    async fn return_slot(&self, slot: Slot) {
        {
            let mut slots = self.inner.slots.lock().unwrap_or_else(|p| p.into_inner());
            if !slots.closed {
                slots.free.push(slot);
                return;
            }
        }
        if let Err(e) = self.close_session(slot.client_id).await {
            tracing::debug!(client_id = slot.client_id, error = %e, "closing a session failed");
        }
    }

    /// Closes the client sessions that [`ClusterClient::write`] opened — this client's and its
    /// clones', which share them — so the cluster's session table no longer holds them.
    ///
    /// Writes through any clone that start after this are refused with
    /// [`ClientError::Closed`] (nothing is sent). A write already in flight finishes as usual,
    /// its session kept open until then; that write's call closes its session before it
    /// returns. Sessions opened with [`ClusterClient::register_session`] are the caller's to
    /// close, and reads, statuses and admin calls keep working.
    ///
    /// The idle sessions are closed at once, each retried like a write until the total timeout;
    /// every one is tried, and the first failure is returned. A session that could not be
    /// closed stays in the table until the cluster evicts it. Dropping a client without
    /// closing it leaves its sessions to eviction too.
    pub async fn close(self) -> Result<(), ClientError> {
        let idle = {
            let mut slots = self.inner.slots.lock().unwrap_or_else(|p| p.into_inner());
            slots.closed = true;
            std::mem::take(&mut slots.free)
        };
        let closes = idle.iter().map(|slot| self.close_session(slot.client_id));
        futures_util::future::join_all(closes)
            .await
            .into_iter()
            .collect()
    }

    /// Runs `attempt` against the leader (or whoever the policy picks), following redirects and
    /// retrying elsewhere until the total timeout. A refusal that follows an attempt whose
    /// outcome is unknown is [`ClientError::GaveUp`]: the earlier attempt may still apply.
    async fn retry<T, F, Fut>(&self, target: String, mut attempt: F) -> Result<T, ClientError>
    where
        F: FnMut(Client, Duration) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let timeout = self.inner.opts.attempt_timeout;
        self.retry_at(target, timeout, |c, t, _| attempt(c, t))
            .await
    }

    /// [`ClusterClient::retry`], telling each attempt the address it goes to, each attempt
    /// taking at most `attempt_timeout`.
    async fn retry_at<T, F, Fut>(
        &self,
        mut target: String,
        attempt_timeout: Duration,
        mut attempt: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(Client, Duration, &str) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let o = &self.inner.opts;
        // Within an operation of several calls (a write that opens its session first), the
        // operation's deadline; otherwise a budget of its own.
        let mut backoff = OPERATION_DEADLINE
            .try_with(|deadline| Backoff::until(*deadline))
            .unwrap_or_else(|_| Backoff::new(o.total_timeout));
        let mut attempts = 0;
        let mut redirected = false;
        // Whether an attempt so far may have been applied.
        let mut in_doubt = false;
        loop {
            if attempts == 0 && backoff.remaining() < MIN_ATTEMPT {
                // An operation's earlier call (opening a write's session) spent its budget:
                // nothing is sent, so nothing can apply. A call sent with less time than that
                // would almost surely time out, with its outcome unknown.
                return Err(ClientError::OutOfTime);
            }
            attempts += 1;
            let per_attempt = attempt_timeout.min(backoff.remaining());
            let outcome = match self.client(&target) {
                Ok(c) => attempt(c, per_attempt, &target).await,
                Err(s) => Err(s),
            };
            let status = match outcome {
                Ok(v) => return Ok(v),
                Err(s) => s,
            };
            tracing::debug!(target = %target, %status, "cluster client attempt failed");
            let (next, last) = match classify(&status) {
                Ok(next) => next,
                Err(_) if in_doubt => {
                    let last = RequestError::from(&status);
                    return Err(ClientError::GaveUp { attempts, last });
                }
                Err(refused) => return Err(refused),
            };
            in_doubt |= last.may_have_applied();
            let (wait, next_target) = match next {
                Next::Redirect(addr) => {
                    self.remember_leader(Some(addr.clone()));
                    // The first redirect is followed at once. Further ones (nodes whose views
                    // of an election disagree can point at each other) are paced like any retry.
                    let wait = redirected;
                    redirected = true;
                    (wait, addr)
                }
                Next::Elsewhere => {
                    redirected = false;
                    self.remember_leader(None);
                    (true, self.next_endpoint())
                }
            };
            if wait && !backoff.pause().await {
                return Err(ClientError::GaveUp { attempts, last });
            }
            target = next_target;
            if backoff.remaining().is_zero() {
                return Err(ClientError::GaveUp {
                    attempts,
                    last: RequestError::Timeout("retry budget exhausted".into()),
                });
            }
        }
    }

    /// Applies `command` and returns its output. Retries through leader changes and lost replies
    /// with one client session, so the command is applied exactly once.
    ///
    /// The client opens sessions as it needs them (one replicated entry each, once per write
    /// it has in flight at the same time) and reuses them. A reused session that the cluster
    /// evicted while it was idle is replaced before the write is applied (it was refused at
    /// once, so nothing was applied). If the cluster evicted the session while the write was
    /// being retried, the write fails with [`ApplyError::UnknownSession`]: its outcome is
    /// unknown ([`ClientError::outcome_unknown`]); the next write opens a new session. The
    /// sessions stay open until [`ClusterClient::close`]; once the client is closed, a write is
    /// refused with [`ClientError::Closed`]. A write whose future is dropped before it ends (a
    /// timeout around it) gives its session back for the next write, as one that ends does;
    /// its outcome is unknown to the caller, and whatever it may still apply comes before that
    /// next write in the session's order.
    pub async fn write(&self, command: S::Command) -> Result<S::Output, ClientError> {
        // One budget for all of it: opening a session, the write's attempts, opening another
        // session if an idle one was evicted.
        let deadline = Backoff::new(self.inner.opts.total_timeout).deadline();
        let (result, held) = OPERATION_DEADLINE
            .scope(deadline, self.write_in_budget(command))
            .await;
        if let Some(held) = held {
            self.return_slot(held.take()).await;
        }
        result
    }

    /// The write within its deadline, and the slot to give back after it (outside the
    /// deadline: closing the session of a client closed meanwhile gets a budget of its own).
    async fn write_in_budget(
        &self,
        command: S::Command,
    ) -> (Result<S::Output, ClientError>, Option<SlotInUse<'_, S>>) {
        let (slot, mut reused) = match self.take_slot().await {
            Ok(taken) => taken,
            Err(e) => return (Err(e), None),
        };
        let mut held = SlotInUse::new(self, slot);
        loop {
            let session = raft_core::Session {
                client_id: held.slot.client_id,
                sequence: held.slot.next,
            };
            // Whatever happens, this sequence is used up (even if this call is dropped while
            // the write is in flight): the next write of the slot is newer.
            held.slot.next += 1;
            let result = self.write_attempts(session, &command).await;
            match result {
                // Refused at once, with no attempt in doubt: not applied. The session went
                // while the slot was idle; write again in a new one.
                Err(ClientError::Refused(RequestError::UnknownSession(_))) if reused => {
                    held.take();
                    match self.new_slot().await {
                        Ok(slot) => held = SlotInUse::new(self, slot),
                        Err(e) => return (Err(e), None),
                    }
                    reused = false;
                }
                Err(e) => {
                    let e = write_error(e, session);
                    // A session that can no longer answer spends its slot.
                    if matches!(
                        e,
                        ClientError::Rejected(
                            ApplyError::UnknownSession { .. } | ApplyError::SessionExpired { .. }
                        )
                    ) {
                        held.take();
                        return (Err(e), None);
                    }
                    return (Err(e), Some(held));
                }
                Ok(output) => return (Ok(output), Some(held)),
            }
        }
    }

    /// Opens a client session for [`ClusterClient::write_in_session`] and returns its client
    /// id (one replicated entry). Close it with [`ClusterClient::close_session`]. The
    /// registration carries a random key kept across this call's retries, so an attempt
    /// whose answer was lost and a retry that applies open one session between them (see
    /// [`ClusterClient::register_session_keyed`]).
    pub async fn register_session(&self) -> Result<u64, ClientError> {
        self.register_session_keyed(raft_core::Session::random_key())
            .await
    }

    /// Opens a client session registered with `key` and returns its client id: while that
    /// session is open, registering with the same key returns it again instead of opening
    /// another (see [`Node::register_session_keyed`](raft_core::Node::register_session_keyed)).
    /// For callers that retry [`ClientError::outcome_unknown`] registrations themselves: draw
    /// one random key per session (0 means none) and pass it to every attempt.
    pub async fn register_session_keyed(&self, key: u64) -> Result<u64, ClientError> {
        self.session_op(Op::Register(key), None).await
    }

    /// Closes the session `client_id`; closing one that is not open succeeds.
    pub async fn close_session(&self, client_id: u64) -> Result<(), ClientError> {
        let session = pb::Session {
            client_id,
            sequence: 0,
        };
        self.session_op(Op::Close, Some(session)).await.map(drop)
    }

    async fn session_op(&self, op: Op, session: Option<pb::Session>) -> Result<u64, ClientError> {
        let (session_op, register_key) = op.to_pb();
        let reply = self
            .retry(self.leader_guess(), |mut c, timeout| {
                let req = pb::WriteRequest {
                    command: bytes::Bytes::new(),
                    session,
                    no_forward: false,
                    session_op,
                    register_key,
                };
                async move {
                    c.write(pb::request(req, timeout))
                        .await
                        .map(|r| r.into_inner())
                }
            })
            .await?;
        Ok(reply.session_id)
    }

    /// Sets the cluster-wide bounds of the session table (admin role).
    pub async fn set_session_capacity(
        &self,
        capacity: raft_core::SessionCapacity,
    ) -> Result<(), ClientError> {
        self.admin(|mut c, t| {
            let req = pb::SessionCapacity {
                max_sessions: capacity.max_sessions,
                max_bytes: capacity.max_bytes,
                max_response_bytes: capacity.max_response_bytes,
            };
            async move {
                c.set_session_capacity(pb::request(req, t))
                    .await
                    .map(|_| ())
            }
        })
        .await
    }

    /// Applies `command` in a session the caller manages (opened with
    /// [`ClusterClient::register_session`]): retrying with the same `session` (here or in a
    /// later call) applies the command at most once. One session must have at most one write
    /// outstanding, with sequences increasing from 1. A session the cluster no longer has fails
    /// with [`ApplyError::UnknownSession`] (outcome unknown).
    pub async fn write_in_session(
        &self,
        session: raft_core::Session,
        command: S::Command,
    ) -> Result<S::Output, ClientError> {
        self.write_attempts(session, &command)
            .await
            .map_err(|e| write_error(e, session))
    }

    /// Applies `command` as `session`, retrying; session refusals are left as the node gave
    /// them (see [`write_error`]).
    async fn write_attempts(
        &self,
        session: raft_core::Session,
        command: &S::Command,
    ) -> Result<S::Output, ClientError> {
        let bytes: bytes::Bytes = raft_core::codec::encode(command)?.into();
        let session = pb::Session::from(session);
        let reply = self
            .retry(self.leader_guess(), |mut c, timeout| {
                let req = pb::WriteRequest {
                    command: bytes.clone(),
                    session: Some(session),
                    no_forward: false,
                    session_op: pb::SessionOp::None.into(),
                    register_key: 0,
                };
                async move {
                    c.write(pb::request(req, timeout))
                        .await
                        .map(|r| r.into_inner())
                }
            })
            .await?;
        if !reply.leader_addr.is_empty() {
            self.remember_leader(Some(reply.leader_addr.clone()));
        }
        // The write was applied: an output this client cannot decode is the node's answer to a
        // write that happened, not a failure to send it.
        raft_core::codec::decode(&reply.output).map_err(|e| {
            ClientError::Refused(RequestError::Internal {
                code: crate::status::ErrorCode::OutputEncoding,
                message: ApplyError::OutputEncoding(e.to_string()).to_string(),
            })
        })
    }

    fn read_target(&self) -> String {
        match &self.inner.opts.read_policy {
            ReadPolicy::Leader => self.leader_guess(),
            ReadPolicy::RoundRobin => self.next_endpoint(),
            ReadPolicy::Random => {
                let eps = &self.inner.endpoints;
                eps[rand::rng().random_range(0..eps.len())].clone()
            }
            ReadPolicy::Weighted(weights) => {
                let total: u64 = weights.iter().map(|(_, w)| *w as u64).sum();
                if total == 0 {
                    return self.next_endpoint();
                }
                let mut pick = rand::rng().random_range(0..total);
                for (addr, w) in weights {
                    if pick < *w as u64 {
                        return addr.clone();
                    }
                    pick -= *w as u64;
                }
                self.next_endpoint()
            }
        }
    }

    /// Answers `query` at `consistency` from a node chosen by the read policy.
    pub async fn read(
        &self,
        query: S::Query,
        consistency: Consistency,
    ) -> Result<S::Reply, ClientError> {
        Ok(self.read_from(query, consistency).await?.0)
    }

    /// Like [`ClusterClient::read`], also returning which node answered.
    pub async fn read_from(
        &self,
        query: S::Query,
        consistency: Consistency,
    ) -> Result<(S::Reply, NodeId), ClientError> {
        let bytes: bytes::Bytes = raft_core::codec::encode(&query)?.into();
        let c = pb::Consistency::from(consistency);
        let reply = self
            .retry(self.read_target(), |mut client, timeout| {
                let req = pb::ReadRequest {
                    query: bytes.clone(),
                    consistency: c.into(),
                };
                async move {
                    client
                        .read(pb::request(req, timeout))
                        .await
                        .map(|r| r.into_inner())
                }
            })
            .await?;
        Ok((raft_core::codec::decode(&reply.reply)?, reply.served_by))
    }

    /// Like [`ClusterClient::read`], but asks exactly the node at `addr`, whatever the read
    /// policy: for reading one replica's view, or for checking that a node has caught up.
    /// Failures that may pass (an election, a restart) are retried on that node until the
    /// total timeout; the read never moves to another node.
    pub async fn read_on(
        &self,
        addr: &str,
        query: S::Query,
        consistency: Consistency,
    ) -> Result<S::Reply, ClientError> {
        let bytes: bytes::Bytes = raft_core::codec::encode(&query)?.into();
        let c = pb::Consistency::from(consistency);
        let o = &self.inner.opts;
        let mut backoff = Backoff::new(o.total_timeout);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let timeout = o.attempt_timeout.min(backoff.remaining());
            let req = pb::ReadRequest {
                query: bytes.clone(),
                consistency: c.into(),
            };
            let outcome = match self.client(addr) {
                Ok(mut client) => client.read(pb::request(req, timeout)).await,
                Err(s) => Err(s),
            };
            let status = match outcome {
                Ok(reply) => return Ok(raft_core::codec::decode(&reply.into_inner().reply)?),
                Err(s) => s,
            };
            let (_, last) = classify(&status)?;
            if !backoff.pause().await {
                return Err(ClientError::GaveUp { attempts, last });
            }
        }
    }

    /// Adds node `id` at `addr` as a learner, waiting until it has caught up.
    pub async fn add_learner(
        &self,
        id: NodeId,
        addr: impl Into<String>,
    ) -> Result<(), ClientError> {
        self.add_learner_as(id, addr, None).await
    }

    /// [`ClusterClient::add_learner`] for a node joining by itself, saying which `incarnation`
    /// it is: refused if its id is bound to another incarnation (its data was wiped; see
    /// `raft_core::incarnation`).
    pub async fn add_learner_as(
        &self,
        id: NodeId,
        addr: impl Into<String>,
        incarnation: Option<u64>,
    ) -> Result<(), ClientError> {
        let addr = addr.into();
        self.admin_after_catch_up(|mut c, t| {
            let req = pb::AddLearnerRequest {
                node_id: id,
                addr: addr.clone(),
                incarnation: incarnation.unwrap_or(0),
            };
            async move { c.add_learner(pb::request(req, t)).await.map(|_| ()) }
        })
        .await
    }

    /// Makes `voters` the voting members.
    pub async fn change_membership(
        &self,
        voters: impl IntoIterator<Item = NodeId>,
    ) -> Result<(), ClientError> {
        let voters: Vec<NodeId> = voters.into_iter().collect();
        self.admin(|mut c, t| {
            let req = pb::ChangeMembershipRequest {
                voters: voters.clone(),
            };
            async move { c.change_membership(pb::request(req, t)).await.map(|_| ()) }
        })
        .await
    }

    /// Makes learner `id` a voter once it has caught up, leaving the other members as they are;
    /// concurrent promotions of different learners all take effect.
    pub async fn add_voter(&self, id: NodeId) -> Result<(), ClientError> {
        self.admin_after_catch_up(|mut c, t| {
            let req = pb::AddVoterRequest { node_id: id };
            async move { c.add_voter(pb::request(req, t)).await.map(|_| ()) }
        })
        .await
    }

    /// Removes node `id` from the cluster.
    pub async fn remove_node(&self, id: NodeId) -> Result<(), ClientError> {
        self.admin(|mut c, t| {
            let req = pb::RemoveNodeRequest { node_id: id };
            async move { c.remove_node(pb::request(req, t)).await.map(|_| ()) }
        })
        .await
    }

    /// Hands leadership to node `to`.
    pub async fn transfer_leader(&self, to: NodeId) -> Result<(), ClientError> {
        self.admin(|mut c, t| {
            let req = pb::TransferLeaderRequest { to };
            async move { c.transfer_leader(pb::request(req, t)).await.map(|_| ()) }
        })
        .await
    }

    /// Runs an administrative change on the leader.
    async fn admin<F, Fut>(&self, attempt: F) -> Result<(), ClientError>
    where
        F: FnMut(Client, Duration) -> Fut,
        Fut: std::future::Future<Output = Result<(), Status>>,
    {
        self.retry(self.leader_guess(), attempt).await
    }

    /// [`ClusterClient::admin`] for a change the leader makes only once a learner has caught
    /// up (adding a learner, promoting one). Each attempt may take the longer of
    /// [`ClientOptions::attempt_timeout`] and [`catch_up_attempt_timeout`]: the leader waits up
    /// to its request timeout for the learner, and its answer —
    /// [`RequestError::LearnerNotCaughtUp`], say — must arrive before the client's deadline,
    /// which would send the change again and end with an unknown outcome.
    async fn admin_after_catch_up<F, Fut>(&self, mut attempt: F) -> Result<(), ClientError>
    where
        F: FnMut(Client, Duration) -> Fut,
        Fut: std::future::Future<Output = Result<(), Status>>,
    {
        let timeout = self
            .inner
            .opts
            .attempt_timeout
            .max(catch_up_attempt_timeout());
        self.retry_at(self.leader_guess(), timeout, |c, t, _| attempt(c, t))
            .await
    }

    /// The current leader's id and address, as the leader itself confirms: the nodes are asked
    /// whom they follow until the node named answers that it leads. Retries through an
    /// election until the total timeout. The answer is remembered for later calls.
    ///
    /// The configured nodes (and the leader remembered from earlier calls) are asked at once,
    /// and a leader they name is asked as soon as it is named, so one round takes at most
    /// [`ClientOptions::attempt_timeout`] however many listed nodes do not answer, and ends as
    /// soon as one node confirms that it leads. A round makes at most one call per configured
    /// address and one per other leader address named. A node that refuses the client for a
    /// reason retrying will not fix (its credentials, say) ends the search with that refusal.
    pub async fn leader(&self) -> Result<(NodeId, String), ClientError> {
        let mut backoff = Backoff::new(self.inner.opts.total_timeout);
        let mut attempts = 0;
        let mut last = RequestError::NotLeader(LeaderHint::unknown());
        loop {
            let round = self.inner.opts.attempt_timeout.min(backoff.remaining());
            let found = tokio::time::timeout(round, self.leader_round(&mut attempts, &mut last))
                .await
                .unwrap_or_else(|_| {
                    last = RequestError::Timeout(format!(
                        "no node confirmed it leads within {round:?}"
                    ));
                    Ok(None)
                })?;
            if let Some((id, addr)) = found {
                self.remember_leader(Some(addr.clone()));
                return Ok((id, addr));
            }
            if !backoff.pause().await {
                return Err(ClientError::GaveUp { attempts, last });
            }
        }
    }

    /// One round of [`ClusterClient::leader`]: asks every configured node, and the remembered
    /// leader, at once; asks each leader they name that is not already being asked; returns the
    /// first node that answers that it leads (`None` if none does). Counts the calls in
    /// `attempts` and keeps the last transient failure in `last`.
    async fn leader_round(
        &self,
        attempts: &mut u32,
        last: &mut RequestError,
    ) -> Result<Option<(NodeId, String)>, ClientError> {
        use futures_util::StreamExt;
        use futures_util::stream::FuturesUnordered;

        /// Why an address is asked: it is configured, or a node named it as the leader.
        #[derive(Clone, Copy, PartialEq)]
        enum Asked {
            Configured,
            Named,
        }
        let ask = |addr: String, why: Asked| async move {
            let answer = self.status(&addr).await;
            (addr, why, answer)
        };
        let remembered = self
            .inner
            .leader
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut asked: std::collections::HashSet<String> = std::collections::HashSet::new();
        let mut pending = FuturesUnordered::new();
        for addr in remembered
            .into_iter()
            .chain(self.inner.endpoints.iter().cloned())
        {
            if asked.insert(addr.clone()) {
                let why = if self.inner.endpoints.contains(&addr) {
                    Asked::Configured
                } else {
                    Asked::Named
                };
                *attempts += 1;
                pending.push(ask(addr, why));
            }
        }
        while let Some((addr, why, answer)) = pending.next().await {
            match answer {
                Ok(s) if s.role == Role::Leader => {
                    let addr = s.leader_addr.unwrap_or(addr);
                    return Ok(Some((s.id, addr)));
                }
                Ok(NodeStatus {
                    leader_addr: Some(named),
                    ..
                }) => {
                    if asked.insert(named.clone()) {
                        *attempts += 1;
                        pending.push(ask(named, Asked::Named));
                    }
                }
                Ok(_) => {}
                Err(ClientError::GaveUp { last: e, .. }) if e.is_transient() => *last = e,
                // A leader named by a node, or remembered, may have moved or gone: not an answer.
                Err(_) if why == Asked::Named => {}
                Err(ClientError::GaveUp { last: e, .. }) => return Err(ClientError::Refused(e)),
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Streams a consistent backup of the cluster's state into `out` and returns what it covers
    /// (see [`raft_core::backup`]; restore it with [`raft_core::restore_data_dir`]). Needs the
    /// admin role on a cluster that authenticates callers.
    ///
    /// The nodes are tried in turn until one starts the stream (any node serves a backup, at a
    /// linearizable read index from the leader). A node writes one backup at a time; one that
    /// is busy is passed over, and once every configured node has answered busy the backup
    /// fails with [`ClientError::AllBusy`]. If the retry budget runs out while some nodes
    /// answer busy and the others fail, it fails with [`ClientError::BusyOrFailed`], naming
    /// the ones that were busy when last asked. The transfer itself has no overall deadline, so a
    /// large state can take as long as it needs, but it fails if the first chunk does not
    /// arrive within [`ClientOptions::backup_start_timeout`], or a later one within
    /// [`ClientOptions::attempt_timeout`] of the one before. The size and checksum are
    /// verified as the bytes arrive; on any error, what was written to `out` is not a backup
    /// and must be discarded.
    pub async fn backup<W: tokio::io::AsyncWrite + Unpin>(
        &self,
        out: &mut W,
    ) -> Result<raft_core::BackupInfo, ClientError> {
        let nodes: BTreeSet<&String> = self.inner.endpoints.iter().collect();
        let busy = crate::backup::BusyNodes::default();
        let (nodes_ref, busy) = (&nodes, &busy);
        let started = self
            .retry_at(
                self.next_endpoint(),
                self.inner.opts.attempt_timeout,
                |mut c, t, addr| {
                    let addr = addr.to_string();
                    async move {
                        let call = c.backup(tonic::Request::new(pb::BackupRequest {}));
                        let status = match tokio::time::timeout(t, call).await {
                            Ok(Ok(r)) => return Ok(Some((r.into_inner(), addr))),
                            Ok(Err(status)) => status,
                            Err(_) => Status::deadline_exceeded("the backup did not start in time"),
                        };
                        let is_busy = matches!(RequestError::from(&status), RequestError::Busy(_));
                        if busy.answered(&addr, is_busy, nodes_ref) {
                            return Ok(None);
                        }
                        Err(status)
                    }
                },
            )
            .await
            .map_err(|e| match e {
                // Only when the budget ran out: a refusal retrying will not fix stays as it is.
                ClientError::GaveUp { attempts, last } => {
                    let busy = busy.list();
                    if busy.is_empty() || !last.is_transient() {
                        ClientError::GaveUp { attempts, last }
                    } else {
                        ClientError::BusyOrFailed {
                            busy,
                            attempts,
                            last,
                        }
                    }
                }
                e => e,
            })?;
        let Some((stream, addr)) = started else {
            return Err(ClientError::AllBusy {
                nodes: nodes.into_iter().cloned().collect(),
            });
        };
        let limits = crate::backup::Limits {
            first: self.inner.opts.backup_start_timeout,
            idle: self.inner.opts.attempt_timeout,
        };
        crate::backup::receive(stream, out, &addr, limits).await
    }

    /// One node's view of the cluster (no retries: it asks exactly `addr`).
    pub async fn status(&self, addr: &str) -> Result<NodeStatus, ClientError> {
        let mut c = self
            .client(addr)
            .map_err(|s| ClientError::Refused(RequestError::from(&s)))?;
        let req = pb::request(pb::StatusRequest {}, self.inner.opts.attempt_timeout);
        let reply = c
            .status(req)
            .await
            .map_err(|s| ClientError::GaveUp {
                attempts: 1,
                last: RequestError::from(&s),
            })?
            .into_inner();
        NodeStatus::try_from(reply).map_err(|e| {
            ClientError::Refused(RequestError::Refused {
                code: None,
                message: format!(
                    "node at {addr} answered with a status this client cannot read: {e}"
                ),
            })
        })
    }

    /// The views of every configured node that answers, by address. The nodes are asked at
    /// once, so this takes at most [`ClientOptions::attempt_timeout`] however many do not
    /// answer.
    pub async fn statuses(&self) -> HashMap<String, NodeStatus> {
        let asks = self
            .inner
            .endpoints
            .iter()
            .map(|e| async move { (e, self.status(e).await) });
        futures_util::future::join_all(asks)
            .await
            .into_iter()
            .filter_map(|(e, s)| Some((e.clone(), s.ok()?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use raft_core::testing::kv::KvStore;
    use tonic::Code;

    use super::*;
    use crate::status::ErrorCode;
    use crate::status::status;

    /// A client whose calls never connect: each test's attempts answer from a script.
    fn client() -> ClusterClient<KvStore> {
        ClusterClient::new(["127.0.0.1:9"], ClientOptions::default()).unwrap()
    }

    /// Runs `retry` with attempts that fail with `script`'s statuses in turn, then succeed.
    async fn run(script: Vec<Status>) -> (Result<u32, ClientError>, usize) {
        let c = client();
        let script = Arc::new(Mutex::new(VecDeque::from(script)));
        let calls = Arc::new(AtomicUsize::new(0));
        let result = c
            .retry("127.0.0.1:9".into(), |_, _| {
                let script = script.clone();
                let calls = calls.clone();
                async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    match script.lock().unwrap().pop_front() {
                        Some(s) => Err(s),
                        None => Ok(7),
                    }
                }
            })
            .await;
        (result, calls.load(Ordering::SeqCst))
    }

    fn no_space() -> Status {
        status(Code::ResourceExhausted, ErrorCode::NoSpace, "disk full")
    }

    /// A call of an operation whose budget an earlier call spent is not sent: before, it went
    /// out with a zero timeout and failed as given up, outcome unknown.
    #[tokio::test(start_paused = true)]
    async fn a_call_with_no_budget_left_is_not_sent_and_not_applied() {
        let spent = tokio::time::Instant::now();
        let (r, calls) = OPERATION_DEADLINE.scope(spent, run(Vec::new())).await;
        assert_eq!(calls, 0, "sent with no time left");
        let e = r.unwrap_err();
        assert!(matches!(e, ClientError::OutOfTime), "{e:?}");
        assert!(!e.outcome_unknown());
        // Nor with less than a millisecond left.
        let almost = spent + MIN_ATTEMPT / 2;
        let (r, calls) = OPERATION_DEADLINE.scope(almost, run(Vec::new())).await;
        assert_eq!(calls, 0, "sent with {:?} left", MIN_ATTEMPT / 2);
        assert!(matches!(r, Err(ClientError::OutOfTime)), "{r:?}");
        // With time left it is sent.
        let later = spent + Duration::from_secs(1);
        let (r, calls) = OPERATION_DEADLINE.scope(later, run(Vec::new())).await;
        assert_eq!((r.ok(), calls), (Some(7), 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_after_an_attempt_in_doubt_leaves_the_outcome_unknown() {
        for doubt in [
            status(Code::DeadlineExceeded, ErrorCode::Timeout, "slow"),
            status(Code::Unavailable, ErrorCode::Shutdown, "stopping"),
            status(
                Code::Unavailable,
                ErrorCode::OutcomeUnknown,
                "leader changed",
            ),
            Status::unavailable("connection reset"),
        ] {
            let (r, calls) = run(vec![doubt.clone(), no_space()]).await;
            assert_eq!(calls, 2);
            let e = r.unwrap_err();
            assert!(e.outcome_unknown(), "{doubt:?} then no space: {e:?}");
            assert!(
                matches!(
                    &e,
                    ClientError::GaveUp {
                        last: RequestError::NoSpace(_),
                        ..
                    }
                ),
                "{e:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_write_that_could_not_open_a_session_was_not_applied() {
        // Nothing listens: every registration attempt fails until the budget runs out.
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = free.local_addr().unwrap().to_string();
        drop(free);
        let opts = ClientOptions::default().with_total_timeout(Duration::from_millis(300));
        let c: ClusterClient<KvStore> = ClusterClient::new([addr], opts).unwrap();
        let e = c
            .write(raft_core::testing::kv::KvCommand::Put(
                "k".into(),
                "v".into(),
            ))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, ClientError::NoSession(inner) if inner.outcome_unknown()),
            "{e:?}"
        );
        assert!(!e.outcome_unknown(), "the write itself was never sent");
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_with_nothing_in_doubt_is_not_applied() {
        // A leader change before anything was proposed is not in doubt.
        let not_leader = status(Code::Unavailable, ErrorCode::NotLeader, "no leader");
        let (r, calls) = run(vec![not_leader, no_space()]).await;
        assert_eq!(calls, 2);
        let e = r.unwrap_err();
        assert!(!e.outcome_unknown(), "{e:?}");
        assert!(matches!(e, ClientError::Refused(RequestError::NoSpace(_))));
        let (r, _) = run(vec![status(
            Code::DeadlineExceeded,
            ErrorCode::Timeout,
            "slow",
        )])
        .await;
        assert_eq!(r.unwrap(), 7, "a transient failure alone is retried");
    }

    #[test]
    fn a_status_reply_carries_the_cluster_id_when_the_node_has_one() {
        let reply = |cluster_id: &str| pb::StatusReply {
            id: 4,
            role: "learner".into(),
            cluster_id: cluster_id.into(),
            ..pb::StatusReply::default()
        };
        let id = ClusterId::from(0xabc_u128);
        let s = NodeStatus::try_from(reply(&id.to_string())).unwrap();
        assert_eq!((s.id, s.cluster_id), (4, Some(id)));
        let none = NodeStatus::try_from(reply("")).unwrap();
        assert_eq!(
            none.cluster_id, None,
            "a node without one, or an older node"
        );
        assert!(matches!(
            NodeStatus::try_from(reply("not-an-id")),
            Err(StatusReplyError::ClusterId(_))
        ));
    }

    #[test]
    fn outcome_unknown_follows_may_have_applied() {
        let storage = RequestError::Internal {
            code: ErrorCode::Storage,
            message: "fdatasync failed".into(),
        };
        assert!(storage.may_have_applied());
        assert!(ClientError::Refused(storage).outcome_unknown());
        let output = RequestError::Internal {
            code: ErrorCode::OutputEncoding,
            message: "applied".into(),
        };
        assert!(ClientError::Refused(output).outcome_unknown());
        assert!(
            ClientError::Refused(RequestError::Transport {
                detail: "reply too large".into(),
                retriable: false
            })
            .outcome_unknown()
        );
        for (e, unknown) in [
            (
                ApplyError::SessionExpired {
                    client_id: 1,
                    sequence: 2,
                },
                true,
            ),
            (
                ApplyError::ResponseNotKept {
                    client_id: 1,
                    sequence: 2,
                },
                true,
            ),
            (ApplyError::OutputEncoding("x".into()), true),
            (ApplyError::InvalidCommand("x".into()), false),
        ] {
            assert_eq!(
                ClientError::Rejected(e.clone()).outcome_unknown(),
                unknown,
                "{e:?}"
            );
        }
        for refused in [
            RequestError::NoSpace("full".into()),
            RequestError::TooLarge("big".into()),
            RequestError::Unauthenticated("who".into()),
        ] {
            assert!(!ClientError::Refused(refused).outcome_unknown());
        }
    }
}
