//! What a node reports about itself.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use std::time::Duration;

use openraft::Instant as _;
use openraft::RaftMetrics;
use openraft::ServerState;

use crate::types::NodeId;
use crate::types::TypeConfig;

/// A node's role in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Role {
    /// Accepts writes and replicates them.
    Leader,
    /// A voter following a leader.
    Follower,
    /// A voter campaigning to become leader.
    Candidate,
    /// Receives the log but does not vote.
    Learner,
    /// Shut down or stopped by a fatal error.
    Shutdown,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Learner => "learner",
            Role::Shutdown => "shutdown",
        })
    }
}

impl std::str::FromStr for Role {
    type Err = UnknownRole;

    /// Parses what [`Role`]'s `Display` writes.
    fn from_str(s: &str) -> Result<Role, UnknownRole> {
        Ok(match s {
            "leader" => Role::Leader,
            "follower" => Role::Follower,
            "candidate" => Role::Candidate,
            "learner" => Role::Learner,
            "shutdown" => Role::Shutdown,
            other => return Err(UnknownRole(other.to_string())),
        })
    }
}

/// A role name that [`Role`] does not know (from a newer node, or not a role at all).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}")]
pub struct UnknownRole(pub String);

/// A point-in-time view of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metrics {
    /// This node's id.
    pub id: NodeId,
    /// This node's role.
    pub role: Role,
    /// The current term.
    pub term: u64,
    /// The leader this node knows of.
    pub leader: Option<NodeId>,
    /// The leader's address, from the membership config.
    pub leader_addr: Option<String>,
    /// Index of the last entry in this node's log.
    pub last_log_index: Option<u64>,
    /// Index of the last entry known committed.
    pub commit_index: Option<u64>,
    /// Index of the last entry applied to the state machine.
    pub applied_index: Option<u64>,
    /// Index of the last entry covered by the current snapshot.
    pub snapshot_index: Option<u64>,
    /// Entries up to this index have been purged from the log.
    pub purged_index: Option<u64>,
    /// Voting members (the union of both configs during a joint change).
    pub voters: BTreeSet<NodeId>,
    /// Non-voting members.
    pub learners: BTreeSet<NodeId>,
    /// Every member's address.
    pub members: BTreeMap<NodeId, String>,
    /// Whether the membership is in a joint (two-config) transition.
    pub joint: bool,
    /// On the leader: the last log index each other member is known to hold (`None` while
    /// unknown). Empty on other nodes.
    pub replication: BTreeMap<NodeId, Option<u64>>,
}

impl Role {
    /// The role openraft's metrics describe.
    pub(crate) fn of(m: &RaftMetrics<TypeConfig>) -> Role {
        if m.running_state.is_err() {
            return Role::Shutdown;
        }
        match m.state {
            ServerState::Leader => Role::Leader,
            ServerState::Follower => Role::Follower,
            ServerState::Candidate => Role::Candidate,
            ServerState::Learner => Role::Learner,
            ServerState::Shutdown => Role::Shutdown,
        }
    }
}

impl Metrics {
    pub(crate) fn from_raft(m: &RaftMetrics<TypeConfig>) -> Metrics {
        let membership = m.membership_config.membership();
        let members: BTreeMap<NodeId, String> = membership
            .nodes()
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect();
        Metrics {
            id: m.id,
            role: Role::of(m),
            term: m.current_term,
            leader: m.current_leader,
            leader_addr: m.current_leader.and_then(|l| members.get(&l).cloned()),
            last_log_index: m.last_log_index,
            commit_index: m.local_committed.map(|c| c.index),
            applied_index: m.last_applied.map(|a| a.index),
            snapshot_index: m.snapshot.map(|s| s.index),
            purged_index: m.purged.map(|p| p.index),
            voters: membership.voter_ids().collect(),
            learners: membership.learner_ids().collect(),
            joint: membership.get_joint_config().len() > 1,
            replication: m
                .replication
                .as_ref()
                .map(|r| r.iter().map(|(id, l)| (*id, l.map(|l| l.index))).collect())
                .unwrap_or_default(),
            members,
        }
    }
}

/// A live feed of one node's [`Metrics`].
pub struct MetricsWatch {
    rx: openraft::type_config::alias::WatchReceiverOf<TypeConfig, RaftMetrics<TypeConfig>>,
}

impl MetricsWatch {
    pub(crate) fn new(
        rx: openraft::type_config::alias::WatchReceiverOf<TypeConfig, RaftMetrics<TypeConfig>>,
    ) -> Self {
        MetricsWatch { rx }
    }

    /// The latest metrics.
    pub fn current(&self) -> Metrics {
        use openraft::async_runtime::watch::WatchReceiver;
        Metrics::from_raft(&self.rx.borrow_watched())
    }

    /// Waits until the metrics change; `None` once the node has stopped for good.
    pub async fn changed(&mut self) -> Option<Metrics> {
        use openraft::async_runtime::watch::WatchReceiver;
        self.rx.changed().await.ok()?;
        Some(self.current())
    }
}

/// How long since a member last answered the leader that it still counts as up: two election
/// timeouts, several heartbeats.
pub(crate) fn answer_window(election_timeout: Duration) -> Duration {
    election_timeout.saturating_mul(2)
}

/// Whether the node whose metrics are `m` leads but heard from no quorum within `window` (the
/// send time of the last request a quorum acknowledged). Never for a leader that is its own
/// quorum (the only voter): openraft does not refresh the time for it, since it needs no
/// answer.
pub(crate) fn leads_without_quorum(m: &RaftMetrics<TypeConfig>, window: Duration) -> bool {
    m.state == ServerState::Leader
        && m.membership_config
            .membership()
            .voter_ids()
            .any(|id| id != m.id)
        && m.last_quorum_acked
            .as_ref()
            .is_some_and(|sent| sent.elapsed() >= window)
}

/// On a leader whose metrics are `m`: whether member `id` answered it within `window` (the
/// send time of the last request it acknowledged). `false` on other nodes.
pub(crate) fn answered_within(m: &RaftMetrics<TypeConfig>, id: NodeId, window: Duration) -> bool {
    m.heartbeat
        .as_ref()
        .and_then(|acked| acked.get(&id).cloned().flatten())
        .is_some_and(|sent| sent.elapsed() < window)
}
