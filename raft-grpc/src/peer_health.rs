//! Whether a peer answers, for the log: a peer that stops answering is logged once when it has
//! failed for [`DOWN_AFTER`] without a single answer, and once when it answers again.
//!
//! A single failed call is not reported. openraft gives a heartbeat three quarters of the
//! heartbeat interval (37.5 ms by default), so a slow fsync or a busy host makes an answering
//! peer miss one now and then; logging each of those as "down" and then "back" would bury the
//! lines that matter. openraft itself retries with backoff and reports each failure at debug
//! level only.

use std::fmt::Display;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use raft_core::NodeId;

/// How long a peer must fail every call, without one answer, before it is logged as not
/// answering.
pub(crate) const DOWN_AFTER: Duration = Duration::from_secs(1);

/// One peer's answering state, shared by every connection to it.
#[derive(Debug)]
pub(crate) struct PeerHealth {
    /// The node logging.
    node: NodeId,
    /// The peer.
    peer: NodeId,
    /// Set while the last call answered: the common case reads only this.
    answering: AtomicBool,
    failing: Mutex<Failing>,
}

/// What a peer's calls have done since its last answer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Failing {
    /// When the first call since the last answer failed.
    since: Option<Instant>,
    /// Whether the peer was logged as not answering.
    reported: bool,
}

/// A change worth a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Down,
    Up,
}

impl Failing {
    /// Notes a failed call at `now`; `Down` once the calls have failed for [`DOWN_AFTER`].
    fn failed(&mut self, now: Instant) -> Option<Change> {
        let since = *self.since.get_or_insert(now);
        if self.reported || now.saturating_duration_since(since) < DOWN_AFTER {
            return None;
        }
        self.reported = true;
        Some(Change::Down)
    }

    /// Notes an answer; `Up` if the peer had been logged as not answering.
    fn answered(&mut self) -> Option<Change> {
        let was = std::mem::take(self);
        was.reported.then_some(Change::Up)
    }
}

impl PeerHealth {
    /// A peer taken to be answering until a call to it fails.
    pub(crate) fn new(node: NodeId, peer: NodeId) -> PeerHealth {
        PeerHealth {
            node,
            peer,
            answering: AtomicBool::new(true),
            failing: Mutex::new(Failing::default()),
        }
    }

    /// Notes that a call to the peer at `addr` was answered; logs it if the peer had been
    /// logged as not answering.
    pub(crate) fn answered(&self, addr: &str) {
        if self.answering.load(Ordering::Relaxed) {
            return;
        }
        let change = {
            let mut failing = self.failing.lock().unwrap_or_else(|p| p.into_inner());
            self.answering.store(true, Ordering::Relaxed);
            failing.answered()
        };
        if change == Some(Change::Up) {
            tracing::info!(
                node = self.node,
                peer = self.peer,
                addr,
                "peer answers again"
            );
        }
    }

    /// Notes that a call to the peer at `addr` failed with `error`; logs it once the peer has
    /// failed every call for [`DOWN_AFTER`].
    pub(crate) fn failed(&self, addr: &str, error: &dyn Display) {
        let change = {
            let mut failing = self.failing.lock().unwrap_or_else(|p| p.into_inner());
            self.answering.store(false, Ordering::Relaxed);
            failing.failed(Instant::now())
        };
        if change == Some(Change::Down) {
            tracing::warn!(
                node = self.node,
                peer = self.peer,
                addr,
                %error,
                "peer does not answer; retrying until it does"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_is_down_only_after_failing_for_the_whole_grace() {
        let t0 = Instant::now();
        let mut f = Failing::default();
        assert_eq!(f.failed(t0), None);
        assert_eq!(f.failed(t0 + DOWN_AFTER / 2), None);
        assert_eq!(f.failed(t0 + DOWN_AFTER), Some(Change::Down));
        // Reported once, however long it goes on failing.
        assert_eq!(f.failed(t0 + DOWN_AFTER * 5), None);
        assert_eq!(f.answered(), Some(Change::Up));
        assert_eq!(f.answered(), None);
    }

    #[test]
    fn an_answer_between_failures_restarts_the_grace() {
        let t0 = Instant::now();
        let mut f = Failing::default();
        assert_eq!(f.failed(t0), None);
        // A missed heartbeat, then an answer: nothing to log either way.
        assert_eq!(f.answered(), None);
        assert_eq!(f.failed(t0 + DOWN_AFTER), None);
        assert_eq!(f.failed(t0 + DOWN_AFTER * 3 / 2), None);
        assert_eq!(f.failed(t0 + DOWN_AFTER * 2), Some(Change::Down));
    }
}
