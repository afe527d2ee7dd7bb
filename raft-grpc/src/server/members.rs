//! Keeps the server's [`MemberSources`] current: the addresses of the cluster's members, as the
//! membership names them, looked up again every [`REFRESH`]. A connection from one of them may
//! go past the total connection limit (see [`crate::accept`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use futures_util::future::join_all;
use raft_core::Node;
use raft_core::StateMachine;
use tokio::time::Instant;

use crate::accept::MemberSources;

/// How often the members' addresses are looked up again: the membership changes, and a name
/// may come to resolve to another address (a rescheduled pod, say).
const REFRESH: Duration = Duration::from_secs(5);

/// How often a node that knows no members yet (it has not joined a cluster) checks again.
const UNINITIALIZED_REFRESH: Duration = Duration::from_millis(500);

/// The longest one lookup may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a member whose lookups fail keeps the addresses it last resolved to: a passing
/// resolver failure does not cost it its places, and a name that is gone (a deleted pod, whose
/// address may go to someone else) loses them.
const KEEP_UNRESOLVED: Duration = Duration::from_secs(60);

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

/// What a member's address last resolved to, and when.
struct Resolved {
    ips: Vec<IpAddr>,
    at: Instant,
}

/// Looks up the members of `node`'s membership now and every [`REFRESH`] after, into `sources`.
async fn track<S: StateMachine>(node: Node<S>, sources: MemberSources) {
    let mut known: HashMap<String, Resolved> = HashMap::new();
    loop {
        let mut addrs: Vec<String> = node.metrics().members.into_values().collect();
        addrs.sort();
        addrs.dedup();
        if addrs.is_empty() {
            tokio::time::sleep(UNINITIALIZED_REFRESH).await;
            continue;
        }
        let found = join_all(addrs.iter().map(|a| lookup(a))).await;
        let now = Instant::now();
        let mut current = HashMap::new();
        for (addr, found) in addrs.into_iter().zip(found) {
            let resolved = match found {
                Some(ips) => Some(Resolved { ips, at: now }),
                None => known
                    .remove(&addr)
                    .filter(|r| now.duration_since(r.at) < KEEP_UNRESOLVED),
            };
            if let Some(r) = resolved {
                current.insert(addr, r);
            }
        }
        sources.set(current.values().flat_map(|r| r.ips.iter().copied()));
        known = current;
        tokio::time::sleep(REFRESH).await;
    }
}

/// The addresses `addr` ("host:port") resolves to, or `None` if it cannot be looked up. An IP
/// literal needs no resolver; a name goes to the system's.
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
