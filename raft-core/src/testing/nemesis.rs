//! Faults applied to a running [`Cluster`] on a schedule.
//!
//! Each [`Step`] applies one [`Fault`], holds it, and undoes it: the network is healed and
//! crashed nodes are restarted from their data directories. [`Nemesis::restore`] brings the
//! cluster back to full strength at the end (all nodes running and voting, network whole), so a
//! test can wait for convergence and compare the replicas.
//!
//! Fault choices (which node, which side) come from a seeded generator, so a schedule replays
//! the same way for the same seed — up to the timing of the system under test.

use std::collections::BTreeSet;
use std::time::Duration;

use rand::Rng;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use super::cluster::Cluster;
use super::cluster::address;
use crate::error::Error;
use crate::error::Result;
use crate::metrics::Role;
use crate::state_machine::StateMachine;
use crate::types::NodeId;

/// One kind of fault.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Split the nodes into a random majority and minority.
    PartitionRandom,
    /// Cut the current leader off from everyone.
    IsolateLeader,
    /// Two sides that cannot talk to each other, and one node that talks to both.
    Bridge,
    /// Drop every message from one node to another, in one direction only.
    OneWayDrop,
    /// Lose a fraction of all messages and delay the rest.
    LossyNetwork {
        /// Probability of losing each message.
        loss: f64,
        /// Longest delay of a message, in milliseconds.
        max_delay_ms: u64,
    },
    /// Crash one node and restart it from its data directory.
    CrashRestart,
    /// Crash a minority as a power cut would — appends not yet fdatasynced are lost — then
    /// restart them.
    PowerLossMinority,
    /// Hand leadership to another voter.
    TransferLeader,
    /// Remove a follower from the cluster, then add it back (as a learner, then a voter).
    MembershipChange,
}

impl Fault {
    /// Every fault kind, with moderate parameters.
    pub fn all() -> Vec<Fault> {
        vec![
            Fault::PartitionRandom,
            Fault::IsolateLeader,
            Fault::Bridge,
            Fault::OneWayDrop,
            Fault::LossyNetwork {
                loss: 0.2,
                max_delay_ms: 20,
            },
            Fault::CrashRestart,
            Fault::PowerLossMinority,
            Fault::TransferLeader,
            Fault::MembershipChange,
        ]
    }
}

/// A fault and how long it lasts before it is undone.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Step {
    /// What happens.
    pub fault: Fault,
    /// How long it lasts.
    pub hold: Duration,
}

/// A sequence of faults.
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub struct Schedule {
    /// The steps, in order.
    pub steps: Vec<Step>,
}

impl Step {
    /// `fault`, undone after `hold`.
    pub fn new(fault: Fault, hold: Duration) -> Step {
        Step { fault, hold }
    }
}

impl Schedule {
    /// `steps`, in order.
    pub fn new(steps: impl IntoIterator<Item = Step>) -> Schedule {
        Schedule {
            steps: steps.into_iter().collect(),
        }
    }

    /// Each of `faults` in turn, each held for `hold`.
    pub fn of(faults: impl IntoIterator<Item = Fault>, hold: Duration) -> Schedule {
        Schedule {
            steps: faults
                .into_iter()
                .map(|fault| Step { fault, hold })
                .collect(),
        }
    }

    /// `len` faults drawn from [`Fault::all`] with `seed`, each held between `min` and `max`.
    pub fn random(seed: u64, len: usize, min: Duration, max: Duration) -> Schedule {
        let mut rng = StdRng::seed_from_u64(seed);
        let all = Fault::all();
        let span = (max.saturating_sub(min)).as_millis() as u64;
        Schedule {
            steps: (0..len)
                .map(|_| Step {
                    fault: all[rng.random_range(0..all.len())].clone(),
                    hold: min
                        + Duration::from_millis(if span == 0 {
                            0
                        } else {
                            rng.random_range(0..=span)
                        }),
                })
                .collect(),
        }
    }

    /// The total time the faults are held.
    pub fn duration(&self) -> Duration {
        self.steps.iter().map(|s| s.hold).sum()
    }
}

/// Applies faults to a cluster.
pub struct Nemesis<'a, S: StateMachine> {
    cluster: &'a Cluster<S>,
    rng: StdRng,
    /// The voters the cluster had at the start; [`Nemesis::restore`] brings it back to them.
    voters: BTreeSet<NodeId>,
}

impl<'a, S: StateMachine> Nemesis<'a, S> {
    /// A nemesis for `cluster`, drawing its choices from `seed`.
    pub fn new(cluster: &'a Cluster<S>, seed: u64) -> Self {
        let voters = cluster
            .metrics()
            .values()
            .map(|m| m.voters.clone())
            .max_by_key(|v| v.len())
            .unwrap_or_default();
        Nemesis {
            cluster,
            rng: StdRng::seed_from_u64(seed ^ 0x6e65_6d65_7369_7321),
            voters,
        }
    }

    fn leader(&self) -> Option<NodeId> {
        self.cluster
            .metrics()
            .values()
            .filter(|m| m.role == Role::Leader)
            .max_by_key(|m| m.term)
            .map(|m| m.id)
    }

    fn shuffled_nodes(&mut self) -> Vec<NodeId> {
        let mut nodes: Vec<NodeId> = self.voters.iter().copied().collect();
        nodes.shuffle(&mut self.rng);
        nodes
    }

    /// Runs every step of `schedule`: apply, hold, undo, and wait until the cluster has a
    /// leader again before the next fault (a cluster that cannot recover is an error). Returns
    /// how many of the faults took effect (a crash can fail, a transfer can be refused, …).
    pub async fn run(&mut self, schedule: &Schedule) -> Result<usize> {
        let mut took_effect = 0;
        for step in &schedule.steps {
            tracing::info!(fault = ?step.fault, hold = ?step.hold, "nemesis: applying");
            let (undo, applied) = self.apply(&step.fault).await;
            took_effect += usize::from(applied);
            // Holding a fault for a while is the point of the fault, not a wait for something.
            tokio::time::sleep(step.hold).await;
            self.undo(undo).await?;
            self.cluster.wait_for_leader().await?;
        }
        Ok(took_effect)
    }

    /// Applies `fault`; returns how to undo it and whether it took effect.
    async fn apply(&mut self, fault: &Fault) -> (Undo, bool) {
        let router = self.cluster.router().clone();
        match fault {
            Fault::PartitionRandom => {
                let nodes = self.shuffled_nodes();
                let majority = nodes.len() / 2 + 1;
                router.partition(&[&nodes[..majority], &nodes[majority..]]);
                (Undo::Heal, true)
            }
            Fault::IsolateLeader => {
                let target = match self.leader() {
                    Some(l) => l,
                    None => self.shuffled_nodes()[0],
                };
                router.isolate(target);
                (Undo::Heal, true)
            }
            Fault::Bridge => {
                let nodes = self.shuffled_nodes();
                let applies = nodes.len() >= 3;
                if applies {
                    let rest = &nodes[1..];
                    let half = rest.len() / 2;
                    router.partition(&[&rest[..half], &rest[half..]]);
                }
                (Undo::Heal, applies)
            }
            Fault::OneWayDrop => {
                let nodes = self.shuffled_nodes();
                let applies = nodes.len() >= 2;
                if applies {
                    router.block(nodes[0], nodes[1]);
                }
                (Undo::Heal, applies)
            }
            Fault::LossyNetwork { loss, max_delay_ms } => {
                router.set_loss(*loss);
                router.set_delay(Duration::ZERO, Duration::from_millis(*max_delay_ms));
                (Undo::Heal, true)
            }
            Fault::CrashRestart => {
                let target = self.shuffled_nodes()[0];
                match self.cluster.crash(target).await {
                    Ok(()) => (Undo::Restart(vec![target]), true),
                    Err(e) => {
                        tracing::warn!(error = %e, "nemesis: crash failed");
                        (Undo::Nothing, false)
                    }
                }
            }
            Fault::PowerLossMinority => {
                let nodes = self.shuffled_nodes();
                let minority = (nodes.len() - 1) / 2;
                let mut crashed = Vec::new();
                for id in nodes.into_iter().take(minority) {
                    if self.cluster.crash_power_loss(id).await.is_ok() {
                        crashed.push(id);
                    }
                }
                let applied = !crashed.is_empty();
                (Undo::Restart(crashed), applied)
            }
            Fault::TransferLeader => {
                let Some(l) = self.leader() else {
                    return (Undo::Nothing, false);
                };
                let to = self.shuffled_nodes().into_iter().find(|n| *n != l);
                let result = match (self.cluster.node(l), to) {
                    (Ok(node), Some(to)) => node.transfer_leader(to).await,
                    _ => return (Undo::Nothing, false),
                };
                if let Err(e) = &result {
                    tracing::info!(error = %e, "nemesis: leader transfer did not complete");
                }
                (Undo::Nothing, result.is_ok())
            }
            Fault::MembershipChange => {
                let leader = self.leader();
                let target = self
                    .shuffled_nodes()
                    .into_iter()
                    .find(|n| Some(*n) != leader);
                let result = match (leader.map(|l| self.cluster.node(l)), target) {
                    (Some(Ok(node)), Some(t)) => node.remove_node(t).await,
                    _ => return (Undo::Rejoin, false),
                };
                if let Err(e) = &result {
                    tracing::info!(error = %e, "nemesis: removing a node did not complete");
                }
                (Undo::Rejoin, result.is_ok())
            }
        }
    }

    async fn undo(&mut self, undo: Undo) -> Result<()> {
        match undo {
            Undo::Nothing => Ok(()),
            Undo::Heal => {
                self.cluster.router().heal();
                Ok(())
            }
            Undo::Restart(ids) => {
                for id in ids {
                    self.cluster.restart(id).await?;
                }
                Ok(())
            }
            Undo::Rejoin => self.ensure_membership().await,
        }
    }

    /// Heals the network, restarts every node of the original cluster that is down, and makes
    /// every original node a voter again. Retries through leader changes up to the harness
    /// timeout.
    pub async fn restore(&mut self) -> Result<()> {
        self.cluster.router().heal();
        let running: BTreeSet<NodeId> = self.cluster.running().into_iter().collect();
        for id in self.voters.clone() {
            if !running.contains(&id) {
                self.cluster.restart(id).await?;
            }
        }
        self.ensure_membership().await
    }

    async fn ensure_membership(&mut self) -> Result<()> {
        let deadline = tokio::time::Instant::now() + self.cluster.timeout();
        loop {
            let leader = self.cluster.wait_for_leader().await?;
            let node = self.cluster.node(leader)?;
            let m = node.metrics();
            if m.voters == self.voters && !m.joint {
                return Ok(());
            }
            let mut outcome = Ok(());
            for id in self
                .voters
                .iter()
                .filter(|v| !m.voters.contains(v) && !m.learners.contains(v))
            {
                if let Err(e) = node.add_learner(*id, address(*id)).await {
                    outcome = Err(e);
                }
            }
            if outcome.is_ok() {
                outcome = node.change_membership(self.voters.clone()).await;
            }
            match outcome {
                Ok(()) => {}
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::info!(error = %e, "nemesis: restoring membership, retrying");
                    // Retry once the leader's view moves on (or after a pause).
                    let _ = node
                        .wait_for(Duration::from_millis(200), |now| {
                            now.term != m.term
                                || now.role != m.role
                                || now.voters != m.voters
                                || now.joint != m.joint
                        })
                        .await;
                }
                Err(e) => {
                    return Err(Error::Membership(format!(
                        "could not restore the original voters: {e}"
                    )));
                }
            }
        }
    }
}

/// How to take a fault back.
enum Undo {
    Nothing,
    Heal,
    Restart(Vec<NodeId>),
    Rejoin,
}
