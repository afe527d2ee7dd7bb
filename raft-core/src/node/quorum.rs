//! The check before a membership change: the new voters must be able to commit it.
//!
//! A change runs through a joint configuration, which commits only when a majority of the old
//! voters *and* a majority of the new ones hold it; every later entry, and every election, waits
//! for it. A voter set most of whose members are down would therefore stop the cluster for
//! good: every write would time out, with no word of why. So, like etcd's strict
//! reconfiguration check, the leader refuses such a change at once, naming who did not answer.

use std::collections::BTreeSet;
use std::time::Duration;

use openraft::async_runtime::watch::WatchReceiver;

use super::Node;
use crate::error::Error;
use crate::error::Result;
use crate::metrics::Role;
use crate::metrics::answered_within;
use crate::state_machine::StateMachine;
use crate::types::NodeId;

impl<S: StateMachine> Node<S> {
    /// How recently a member must have answered the leader to count as up: two election
    /// timeouts, several heartbeats.
    fn answer_window(&self) -> Duration {
        crate::metrics::answer_window(self.inner.config.election_timeout)
    }

    /// The members of `voters` that answered this leader within [`Node::answer_window`] (the
    /// leader itself included, if it is one of them).
    fn answering(&self, voters: &BTreeSet<NodeId>) -> BTreeSet<NodeId> {
        let window = self.answer_window();
        let rx = self.inner.raft.metrics();
        let m = rx.borrow_watched();
        voters
            .iter()
            .copied()
            .filter(|id| *id == self.inner.id || answered_within(&m, *id, window))
            .collect()
    }

    /// Waits (at most [`Node::answer_window`], so a node that was just added or a leader that
    /// was just elected has heard from everyone) until a majority of `voters` answers this
    /// leader; otherwise fails with [`Error::Membership`] naming those that did not.
    pub(super) async fn require_majority_answering(&self, voters: &BTreeSet<NodeId>) -> Result<()> {
        let enough = |up: &BTreeSet<NodeId>| up.len() * 2 > voters.len();
        let window = self.answer_window();
        let mut rx = self.inner.raft.metrics();
        let _ = tokio::time::timeout(window, async {
            while !enough(&self.answering(voters)) {
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        let up = self.answering(voters);
        if enough(&up) {
            return Ok(());
        }
        // Leadership moved meanwhile, or the node stopped: that is the answer, not the check's
        // (a stopped node is let through, so the change reports why it stopped).
        if self.role() != Role::Leader {
            return self.require_leader();
        }
        let down: BTreeSet<NodeId> = voters.difference(&up).copied().collect();
        Err(Error::Membership(format!(
            "the new voters {voters:?} need {} of them to commit the change, but {down:?} did not answer the leader within {window:?}: the change, and every write after it, could never commit; bring those nodes back first",
            voters.len() / 2 + 1
        )))
    }
}
