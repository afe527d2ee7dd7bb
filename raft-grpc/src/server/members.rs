//! Keeps the server's [`MemberSources`] current: the addresses of the cluster's members, as the
//! membership names them, looked up again every [`REFRESH`]. A connection from one of them may
//! go past the total connection limit (see [`crate::accept`]).

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::time::Duration;

use futures_util::future::join_all;
use raft_core::Node;
use raft_core::StateMachine;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::accept::MemberSources;

/// How often the members' addresses are looked up again: the membership changes, and a name
/// may come to resolve to another address (a rescheduled pod, say).
const REFRESH: Duration = Duration::from_secs(5);

/// How often a node that knows no members yet (it has not joined a cluster) checks again.
const UNINITIALIZED_REFRESH: Duration = Duration::from_millis(500);

/// The longest a refresh waits for one lookup. A lookup that takes longer is not abandoned (the
/// system resolver cannot be interrupted): the next refresh waits for it again instead of
/// starting another, so a hung resolver holds at most one thread per name.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a member whose lookups fail keeps the addresses it last resolved to: a passing
/// resolver failure does not cost it its places, and a name that is gone (a deleted pod, whose
/// address may go to someone else) loses them.
const KEEP_UNRESOLVED: Duration = Duration::from_secs(60);

/// The task that keeps a [`MemberSources`] current; it stops when this is dropped (it holds a
/// handle on the node, which must not outlive the server that started it).
pub(crate) struct Tracker(JoinHandle<()>);

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
    let mut lookups = Lookups::new(system_lookup);
    loop {
        let addrs: Vec<String> = node.metrics().members.into_values().collect();
        if addrs.is_empty() {
            tokio::time::sleep(UNINITIALIZED_REFRESH).await;
            continue;
        }
        sources.set(lookups.refresh(addrs).await);
        tokio::time::sleep(REFRESH).await;
    }
}

/// What a member's address last resolved to, and when.
struct Resolved {
    ips: Vec<IpAddr>,
    at: Instant,
}

/// The members' addresses as last looked up, and the lookups still running.
struct Lookups<L> {
    lookup: L,
    known: HashMap<String, Resolved>,
    /// Lookups that outlasted [`LOOKUP_TIMEOUT`], by address: the next refresh waits for them.
    running: HashMap<String, JoinHandle<Option<Vec<IpAddr>>>>,
}

impl<L, F> Lookups<L>
where
    L: Fn(String) -> F,
    F: Future<Output = Option<Vec<IpAddr>>> + Send + 'static,
{
    fn new(lookup: L) -> Lookups<L> {
        Lookups {
            lookup,
            known: HashMap::new(),
            running: HashMap::new(),
        }
    }

    /// Looks up every address of `addrs` ("host:port") concurrently, each within
    /// [`LOOKUP_TIMEOUT`], and returns the IPs the members are known by: what each resolved to
    /// now, or, for one that did not resolve, what it last resolved to within
    /// [`KEEP_UNRESOLVED`].
    async fn refresh(&mut self, mut addrs: Vec<String>) -> Vec<IpAddr> {
        addrs.sort();
        addrs.dedup();
        // A name no longer in the membership: its lookup is left to finish on its own.
        self.running.retain(|a, _| addrs.binary_search(a).is_ok());
        for a in &addrs {
            if !self.running.contains_key(a) {
                let found = tokio::spawn((self.lookup)(a.clone()));
                self.running.insert(a.clone(), found);
            }
        }
        let waits = self.running.iter_mut().map(|(addr, found)| async move {
            let done = tokio::time::timeout(LOOKUP_TIMEOUT, found).await.ok();
            if done.is_none() {
                tracing::debug!(%addr, "looking up a member's address is taking long; waiting for it at the next refresh");
            }
            (addr.clone(), done)
        });
        let waited = join_all(waits).await;
        let now = Instant::now();
        let mut current = HashMap::new();
        for (addr, done) in waited {
            let found = match done {
                Some(found) => {
                    self.running.remove(&addr);
                    found.ok().flatten()
                }
                None => None,
            };
            let resolved = match found {
                Some(ips) => Some(Resolved { ips, at: now }),
                None => self
                    .known
                    .remove(&addr)
                    .filter(|r| now.duration_since(r.at) < KEEP_UNRESOLVED),
            };
            if let Some(r) = resolved {
                current.insert(addr, r);
            }
        }
        self.known = current;
        self.known
            .values()
            .flat_map(|r| r.ips.iter().copied())
            .collect()
    }
}

/// The addresses `addr` ("host:port") resolves to, or `None` if it cannot be looked up. An IP
/// literal needs no resolver; a name goes to the system's (on a blocking thread).
async fn system_lookup(addr: String) -> Option<Vec<IpAddr>> {
    match tokio::net::lookup_host(addr.as_str()).await {
        Ok(found) => Some(found.map(|a| a.ip()).collect()),
        Err(e) => {
            tracing::debug!(%addr, error = %e, "cannot look up a member's address");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::sync::Arc;
    use std::sync::Mutex;

    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    /// A resolver whose answers the test sets, by name; a lookup of a name with no answer yet
    /// waits until it gets one. Counts the lookups started per name.
    #[derive(Clone, Default)]
    struct FakeResolver {
        answers: Arc<Mutex<HashMap<String, Option<Vec<IpAddr>>>>>,
        changed: Arc<tokio::sync::Notify>,
        started: Arc<Mutex<HashMap<String, usize>>>,
    }

    type Lookup = futures_util::future::BoxFuture<'static, Option<Vec<IpAddr>>>;

    impl FakeResolver {
        fn answer(&self, addr: &str, ips: Option<Vec<IpAddr>>) {
            self.answers.lock().unwrap().insert(addr.to_string(), ips);
            self.changed.notify_waiters();
        }

        fn started(&self, addr: &str) -> usize {
            self.started.lock().unwrap().get(addr).copied().unwrap_or(0)
        }

        fn lookups(&self) -> Lookups<impl Fn(String) -> Lookup> {
            let r = self.clone();
            Lookups::new(move |addr: String| -> Lookup {
                *r.started.lock().unwrap().entry(addr.clone()).or_default() += 1;
                let r = r.clone();
                Box::pin(async move {
                    loop {
                        let changed = r.changed.notified();
                        if let Some(a) = r.answers.lock().unwrap().get(&addr) {
                            return a.clone();
                        }
                        changed.await;
                    }
                })
            })
        }
    }

    fn names(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_lookup_is_waited_for_not_started_again() {
        let r = FakeResolver::default();
        r.answer("a:1", Some(vec![ip(1)]));
        let mut lookups = r.lookups();
        for _ in 0..4 {
            let ips = lookups.refresh(names(&["a:1", "hung:1"])).await;
            assert_eq!(ips, vec![ip(1)]);
            tokio::time::sleep(REFRESH).await;
        }
        assert_eq!(r.started("a:1"), 4);
        assert_eq!(r.started("hung:1"), 1, "one lookup in flight per name");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_lookup_counts_when_it_finishes() {
        let r = FakeResolver::default();
        let mut lookups = r.lookups();
        assert!(lookups.refresh(names(&["b:1"])).await.is_empty());
        // The lookup started above answers after its refresh gave up waiting: the next
        // refresh takes that answer rather than asking again.
        r.answer("b:1", Some(vec![ip(2)]));
        tokio::time::sleep(REFRESH).await;
        assert_eq!(lookups.refresh(names(&["b:1"])).await, vec![ip(2)]);
        assert_eq!(r.started("b:1"), 1, "no second lookup while the first ran");
        assert_eq!(lookups.refresh(names(&["b:1"])).await, vec![ip(2)]);
        assert_eq!(r.started("b:1"), 2, "a finished lookup is started afresh");
    }

    #[tokio::test(start_paused = true)]
    async fn an_unresolved_name_keeps_its_last_addresses_for_a_while() {
        let r = FakeResolver::default();
        r.answer("c:1", Some(vec![ip(3)]));
        let mut lookups = r.lookups();
        assert_eq!(lookups.refresh(names(&["c:1"])).await, vec![ip(3)]);
        r.answer("c:1", None);
        tokio::time::sleep(REFRESH).await;
        assert_eq!(lookups.refresh(names(&["c:1"])).await, vec![ip(3)]);
        tokio::time::sleep(KEEP_UNRESOLVED).await;
        assert!(lookups.refresh(names(&["c:1"])).await.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_name_that_leaves_the_membership_loses_its_addresses() {
        let r = FakeResolver::default();
        r.answer("d:1", Some(vec![ip(4)]));
        r.answer("e:1", Some(vec![ip(5)]));
        let mut lookups = r.lookups();
        let mut ips = lookups.refresh(names(&["e:1", "d:1", "d:1"])).await;
        ips.sort();
        assert_eq!(ips, vec![ip(4), ip(5)]);
        assert_eq!(r.started("d:1"), 1, "a name listed twice is looked up once");
        assert_eq!(lookups.refresh(names(&["e:1"])).await, vec![ip(5)]);
    }
}
