//! A node's background task: it samples the data directory and the process's memory for the
//! storage quota and the memory limit, takes a
//! snapshot when the log has grown by [`Config::snapshot_log_bytes`] (and, while its disk is in
//! alarm, whenever entries were applied since the last one, purging the log up to it), forgets
//! voters' alarms
//! when the node stops leading, and logs a fatal stop loudly (and closes the snapshot store
//! then). It ends when the node stops or every handle to it is dropped.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Weak;
use std::time::Duration;
use std::time::Instant;

use openraft::ServerState;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::errors::Fatal;

use crate::config::Config;
use crate::log::LogStatsHandle;
use crate::node::Inner;
use crate::node::RaftHandle;
use crate::snapshot::SnapshotStore;
use crate::space::Space;
use crate::state_machine::StateMachine;

/// How often the log size is compared with the snapshot threshold.
const SNAPSHOT_CHECK: Duration = Duration::from_millis(200);
/// A snapshot asked for but not seen land is asked for again after this long.
const SNAPSHOT_RETRY: Duration = Duration::from_secs(10);

/// While a node's own disk is in alarm, how many check intervals apart it asks for snapshots.
const ALARM_SNAPSHOT_INTERVALS: u32 = 10;

/// Compaction while this node's disk is in alarm. The writes it still takes are the ones that
/// free space (deletes), but their space comes back only once a snapshot covers them and the
/// log before it is purged; the size trigger, waiting for the log to grow, would not come.
#[derive(Debug, Default)]
struct AlarmCompaction {
    /// When a snapshot was last asked for.
    asked: Option<Instant>,
    /// The snapshot index the log was last purged up to.
    purged_to: Option<u64>,
}

/// What the task needs from its node (besides the node itself, held weakly).
pub(crate) struct Housekeeping {
    pub config: Config,
    pub dir: Option<PathBuf>,
    pub space: Arc<Space>,
    pub log_stats: LogStatsHandle,
    pub snapshots: Arc<SnapshotStore>,
}

/// Decides when the log has grown enough since the last snapshot to take another.
#[derive(Debug)]
pub(crate) struct SizeTrigger {
    /// Log bytes written (since open, plus those found at open) when the snapshot index last
    /// moved.
    mark: u64,
    snapshot_index: Option<u64>,
    /// When a snapshot was last asked for, and the log bytes written by then: the snapshot that
    /// lands covers at least what was applied at that point, so the count restarts from there.
    asked: Option<(Instant, u64)>,
}

impl SizeTrigger {
    pub fn new(snapshot_index: Option<u64>) -> SizeTrigger {
        SizeTrigger {
            mark: 0,
            snapshot_index,
            asked: None,
        }
    }

    /// Whether to ask for a snapshot now, given the log bytes written so far, the current
    /// snapshot index, and the threshold (`0`: never).
    pub fn due(
        &mut self,
        written: u64,
        snapshot_index: Option<u64>,
        threshold: u64,
        now: Instant,
    ) -> bool {
        if snapshot_index != self.snapshot_index {
            self.snapshot_index = snapshot_index;
            // A snapshot this trigger asked for covers the log up to about when it asked; one
            // taken otherwise (by count, by hand, installed from the leader) counts from now.
            self.mark = match self.asked.take() {
                Some((_, at)) => at.min(written),
                None => written,
            };
        }
        if threshold == 0 || written.saturating_sub(self.mark) < threshold {
            return false;
        }
        if self
            .asked
            .is_some_and(|(at, _)| now.duration_since(at) < SNAPSHOT_RETRY)
        {
            return false;
        }
        self.asked = Some((now, written));
        true
    }
}

impl Housekeeping {
    /// Runs until the node stops or is dropped.
    pub async fn run<S: StateMachine>(self, node: Weak<Inner<S>>) {
        let id = self.config.id;
        let raft = |node: &Weak<Inner<S>>| node.upgrade().map(|n| n.raft.clone());
        let Some(first) = raft(&node) else { return };
        let mut trigger =
            SizeTrigger::new(first.metrics().borrow_watched().snapshot.map(|s| s.index));
        drop(first);
        let mut snapshot_tick = tokio::time::interval(SNAPSHOT_CHECK);
        snapshot_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut disk_tick = tokio::time::interval(self.config.quota.check_interval);
        disk_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut memory_unreadable = false;
        let mut alarm_compaction = AlarmCompaction::default();
        loop {
            let check_size = tokio::select! {
                _ = snapshot_tick.tick() => true,
                _ = disk_tick.tick() => false,
            };
            let Some(raft) = raft(&node) else { return };
            match check_size {
                true => self.check_log_size(&raft, &mut trigger).await,
                false => {
                    self.sample_memory(&mut memory_unreadable);
                    self.sample_disk().await;
                    self.compact_in_alarm(&raft, &mut alarm_compaction).await;
                }
            }
            let (state, running) = {
                let m = raft.metrics();
                let m = m.borrow_watched();
                (m.state, m.running_state.clone())
            };
            match running {
                Ok(()) => {}
                Err(Fatal::Stopped) => return,
                Err(e) => {
                    tracing::error!(node = id, error = %e, "the node has stopped after a fatal error; it serves nothing until restarted");
                    // A build or receive still under way places nothing from here on, so the
                    // node can be restarted on its data dir, in this process too.
                    let snapshots = self.snapshots.clone();
                    let _ = tokio::task::spawn_blocking(move || snapshots.close()).await;
                    return;
                }
            }
            if state != ServerState::Leader {
                self.space.forget_peers();
            }
        }
    }

    async fn check_log_size<S: StateMachine>(
        &self,
        raft: &RaftHandle<S>,
        trigger: &mut SizeTrigger,
    ) {
        let stats = self.log_stats.get();
        let written = stats.recovered_bytes.saturating_add(stats.bytes);
        let snapshot_index = raft.metrics().borrow_watched().snapshot.map(|s| s.index);
        let threshold = match self.config.snapshot_log_bytes {
            0 => 0,
            t => t.max(self.snapshots.current_len()),
        };
        if trigger.due(written, snapshot_index, threshold, Instant::now()) {
            tracing::info!(
                node = self.config.id,
                log_bytes = written.saturating_sub(trigger.mark),
                threshold,
                "the log has grown past the snapshot threshold; taking a snapshot"
            );
            let _ = raft.trigger().snapshot().await;
        }
    }

    /// While this node's disk is in alarm: purges the log up to the latest snapshot (not
    /// keeping [`Config::keep_after_snapshot`] entries; on the leader, keeping what the
    /// furthest-behind member that answered lately still needs, so only members that stopped
    /// answering need a snapshot to catch up), and asks for a new snapshot when entries were
    /// applied since the last one, at most once per [`ALARM_SNAPSHOT_INTERVALS`] check
    /// intervals.
    async fn compact_in_alarm<S: StateMachine>(
        &self,
        raft: &RaftHandle<S>,
        state: &mut AlarmCompaction,
    ) {
        if !self.space.disk_alarm() {
            *state = AlarmCompaction::default();
            return;
        }
        let window = crate::metrics::answer_window(self.config.election_timeout);
        let (applied, snapshot, purged, needed) = {
            let m = raft.metrics();
            let m = m.borrow_watched();
            // On the leader: the next entry the furthest-behind member that answered lately
            // needs. The log is kept from there, so a follower catching up (or one that just
            // restarted) is not sent a snapshot for every one this alarm takes; members that
            // stopped answering hold nothing back.
            let needed = m.replication.as_ref().and_then(|matched| {
                matched
                    .iter()
                    .filter(|(id, _)| {
                        **id != self.config.id && crate::metrics::answered_within(&m, **id, window)
                    })
                    .map(|(_, l)| l.map_or(0, |l| l.index))
                    .min()
            });
            (
                m.last_applied.map(|l| l.index),
                m.snapshot.map(|l| l.index),
                m.purged.map(|l| l.index),
                needed,
            )
        };
        let snapshot = match (snapshot, needed) {
            (Some(s), Some(n)) => Some(s.min(n)),
            (s, _) => s,
        };
        if let Some(upto) = snapshot
            && purged < Some(upto)
            && state.purged_to != Some(upto)
        {
            state.purged_to = Some(upto);
            tracing::info!(
                node = self.config.id,
                upto,
                "the disk is in alarm; purging the log up to the latest snapshot"
            );
            let _ = raft.trigger().purge_log(upto).await;
        }
        let every = self
            .config
            .quota
            .check_interval
            .saturating_mul(ALARM_SNAPSHOT_INTERVALS);
        if applied > snapshot && state.asked.is_none_or(|at| at.elapsed() >= every) {
            state.asked = Some(Instant::now());
            tracing::info!(
                node = self.config.id,
                "the disk is in alarm and entries were applied since the last snapshot; taking a snapshot so the log can be purged"
            );
            let _ = raft.trigger().snapshot().await;
        }
    }

    /// Reads the process's resident memory for the memory limit. One it cannot read leaves the
    /// limit unenforced until it can (said once), not decided by an older sample.
    fn sample_memory(&self, unreadable: &mut bool) {
        match crate::space::resident_memory() {
            Ok(resident) => {
                *unreadable = false;
                self.space.record_memory(self.config.id, resident);
            }
            Err(e) => {
                self.space.forget_memory(self.config.id);
                if !*unreadable {
                    *unreadable = true;
                    tracing::warn!(node = self.config.id, error = %e, "cannot measure the process's memory: the memory limit is not enforced until it can");
                }
            }
        }
    }

    async fn sample_disk(&self) {
        let Some(dir) = self.dir.clone() else { return };
        let space = self.space.clone();
        let id = self.config.id;
        let quota = self.config.quota.clone();
        let sampled = tokio::task::spawn_blocking(move || {
            let usage = space.sample(&dir);
            if let Ok(u) = &usage {
                space.record(id, &quota, *u);
            }
            usage
        })
        .await;
        match sampled {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(node = id, error = %e, "cannot measure the data directory")
            }
            Err(e) => tracing::warn!(node = id, error = %e, "disk sampling task failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_trigger_fires_once_per_threshold_and_rearms_on_a_new_snapshot() {
        let t0 = Instant::now();
        let mut t = SizeTrigger::new(Some(10));
        assert!(!t.due(99, Some(10), 100, t0));
        assert!(t.due(100, Some(10), 100, t0));
        // Asked already: not again until it lands or the retry time passes.
        assert!(!t.due(150, Some(10), 100, t0));
        assert!(t.due(150, Some(10), 100, t0 + SNAPSHOT_RETRY));
        // The snapshot lands: the count starts again from when it was asked for (150).
        assert!(!t.due(200, Some(20), 100, t0 + SNAPSHOT_RETRY));
        assert!(!t.due(249, Some(20), 100, t0 + SNAPSHOT_RETRY));
        assert!(t.due(250, Some(20), 100, t0 + SNAPSHOT_RETRY));
        // A snapshot nobody asked for counts from when it is seen.
        let mut u = SizeTrigger::new(None);
        assert!(!u.due(90, None, 100, t0));
        assert!(!u.due(95, Some(5), 100, t0));
        assert!(!u.due(194, Some(5), 100, t0));
        assert!(u.due(195, Some(5), 100, t0));
        // Zero disables it.
        let mut off = SizeTrigger::new(None);
        assert!(!off.due(u64::MAX, None, 0, t0));
    }
}
