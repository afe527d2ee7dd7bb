//! Keeps the server's [`MemberSources`] current: the addresses of the cluster's members, as the
//! membership names them, looked up again every [`REFRESH`]. A connection from one of them is
//! not refused for the total connection limit (see [`crate::accept`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use raft_core::Node;
use raft_core::StateMachine;

use crate::accept::MemberSources;

/// How often the members' addresses are looked up again: the membership changes, and a name
/// may come to resolve to another address (a rescheduled pod, say).
const REFRESH: Duration = Duration::from_secs(5);

/// The longest one lookup may take; a member whose lookup fails keeps the addresses it last
/// resolved to.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// The task that keeps a [`MemberSources`] current; it stops when this is dropped (it holds a
/// handle on the node, which must not outlive the server that started it).
pub(crate) struct Tracker(tokio::task::JoinHandle<()>);

impl Tracker {
    /// Starts tracking `node`'s members into `sources`.
    pub(crate) fn start<S: StateMachine>(node: Node<S>, sources: MemberSources) -> Tracker {
        Tracker(tokio::spawn(track(node, sources)))
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Looks up the members of `node`'s membership now and every [`REFRESH`] after, into `sources`.
async fn track<S: StateMachine>(node: Node<S>, sources: MemberSources) {
    let mut tick = tokio::time::interval(REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut known: HashMap<String, Vec<IpAddr>> = HashMap::new();
    loop {
        tick.tick().await;
        let mut now = HashMap::new();
        for addr in node.metrics().members.into_values() {
            let ips = match lookup(&addr).await {
                Some(ips) => ips,
                None => known.remove(&addr).unwrap_or_default(),
            };
            now.insert(addr, ips);
        }
        sources.set(now.values().flatten().copied());
        known = now;
    }
}

/// The addresses `addr` ("host:port") resolves to, or `None` if it cannot be looked up.
async fn lookup(addr: &str) -> Option<Vec<IpAddr>> {
    match tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host(addr)).await {
        Ok(Ok(found)) => Some(found.map(|a| a.ip()).collect()),
        Ok(Err(e)) => {
            tracing::debug!(%addr, error = %e, "cannot look up a member's address");
            None
        }
        Err(_) => {
            tracing::debug!(%addr, "looking up a member's address timed out");
            None
        }
    }
}
