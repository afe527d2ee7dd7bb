//! In-process cluster tests: durable nodes in temporary directories on the fault-injecting
//! router. Every wait is on metrics or a condition with a bound — never a sleep.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use futures_util::StreamExt;
use raft_core::ApplyError;
use raft_core::Config;
use raft_core::Consistency;
use raft_core::Error;
use raft_core::NodeId;
use raft_core::Role;
use raft_core::Session;
use raft_core::testing::Cluster;
use raft_core::testing::ClusterOptions;
use raft_core::testing::address;

use raft_core::testing::init_tracing;
use raft_core::testing::kv::KvCommand as Cmd;
use raft_core::testing::kv::KvStore as Kv;

fn options(configure: impl Fn(Config) -> Config + Send + Sync + 'static) -> ClusterOptions {
    ClusterOptions::default().with_configure(configure)
}

async fn start(
    n: u64,
    configure: impl Fn(Config) -> Config + Send + Sync + 'static,
) -> Cluster<Kv> {
    init_tracing();
    Cluster::start(n, options(configure), |_| Kv::default())
        .await
        .expect("cluster starts")
}

/// The state machine contents of every running node, after they converged.
async fn contents(cluster: &Cluster<Kv>) -> BTreeMap<NodeId, Kv> {
    cluster.wait_converged().await.expect("cluster converges");
    let leader = cluster.wait_for_leader().await.unwrap();
    let members = cluster.node(leader).unwrap().metrics();
    let mut out = BTreeMap::new();
    for id in cluster.running() {
        if members.voters.contains(&id) || members.learners.contains(&id) {
            let node = cluster.node(id).unwrap();
            out.insert(
                id,
                node.read(Consistency::Local, |kv| kv.clone())
                    .await
                    .unwrap(),
            );
        }
    }
    out
}

fn assert_all_equal(states: &BTreeMap<NodeId, Kv>, expected: &Kv) {
    for (id, kv) in states {
        assert_eq!(kv, expected, "node {id} diverged");
    }
}

/// Writes `keys` as `Put(key-i, value-i)` with up to 32 in flight.
async fn put_many(cluster: &Cluster<Kv>, keys: std::ops::Range<u64>, expected: &mut Kv) {
    let results: Vec<_> = futures_util::stream::iter(keys.clone())
        .map(|i| cluster.write(Cmd::Put(format!("key-{i}"), format!("value-{i}"))))
        .buffer_unordered(32)
        .collect()
        .await;
    for r in results {
        r.expect("write acknowledged");
    }
    for i in keys {
        expected.0.insert(format!("key-{i}"), format!("value-{i}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn isolated_leader_is_replaced_and_rejoins() {
    let cluster = start(3, |c| c).await;
    let mut expected = Kv::default();
    put_many(&cluster, 0..20, &mut expected).await;

    let old = cluster.wait_for_leader().await.unwrap();
    let others: Vec<NodeId> = cluster
        .running()
        .into_iter()
        .filter(|id| *id != old)
        .collect();
    let election_bound = cluster.config(old).election_timeout * 2 * 4;
    let started = Instant::now();
    cluster.router().isolate(old);

    // A write sent to the isolated leader must never be acknowledged.
    let stale_write = {
        let old_node = cluster.node(old).unwrap().clone();
        tokio::spawn(async move {
            tokio::time::timeout(
                Duration::from_secs(2),
                old_node.write(Cmd::Put("lost".into(), "never".into())),
            )
            .await
        })
    };

    let new = cluster.wait_for_leader_among(&others).await.unwrap();
    let took = started.elapsed();
    assert!(
        took < election_bound,
        "new leader after {took:?}, bound {election_bound:?}"
    );
    assert_ne!(new, old);
    put_many(&cluster, 20..60, &mut expected).await;
    match stale_write.await.unwrap() {
        Ok(Ok(v)) => panic!("isolated leader acknowledged a write: {v:?}"),
        Ok(Err(e)) => assert!(
            matches!(
                e,
                Error::NotLeader { .. } | Error::Timeout(_) | Error::OutcomeUnknown { .. }
            ),
            "{e}"
        ),
        Err(_elapsed) => {}
    }

    cluster.router().heal();
    let states = contents(&cluster).await;
    assert_eq!(states.len(), 3);
    // The unacknowledged write may or may not have survived; everything acknowledged has.
    let mut with_lost = expected.clone();
    with_lost.0.insert("lost".into(), "never".into());
    let first = states.values().next().unwrap();
    assert!(
        first == &expected || first == &with_lost,
        "acknowledged writes missing"
    );
    assert_all_equal(&states, first);
    assert!(cluster.node(old).unwrap().metrics().term > 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_restart_recovers_without_initialize() {
    let cluster = start(3, |c| c.with_snapshots(300, 100)).await;
    let mut expected = Kv::default();
    put_many(&cluster, 0..1000, &mut expected).await;
    let before = contents(&cluster).await;
    assert_all_equal(&before, &expected);
    let snapshotted = cluster
        .metrics()
        .values()
        .all(|m| m.snapshot_index.is_some());
    assert!(
        snapshotted,
        "the snapshot policy ran: {:?}",
        cluster.metrics()
    );

    for id in cluster.running() {
        cluster.crash(id).await.unwrap();
    }
    for id in 1..=3 {
        let node = cluster.restart(id).await.unwrap();
        assert!(
            node.is_initialized().await.unwrap(),
            "node {id} recovered its membership"
        );
        assert!(matches!(
            node.initialize([(1, address(1))]).await,
            Err(Error::AlreadyInitialized)
        ));
    }
    cluster.wait_for_leader().await.unwrap();
    assert_all_equal(&contents(&cluster).await, &expected);
    put_many(&cluster, 1000..1010, &mut expected).await;
    assert_all_equal(&contents(&cluster).await, &expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_behind_a_purged_log_catches_up_by_snapshot() {
    let cluster = start(3, |c| c.with_snapshots(100, 10)).await;
    let mut expected = Kv::default();
    put_many(&cluster, 0..10, &mut expected).await;
    let leader = cluster.wait_for_leader().await.unwrap();
    let down = cluster
        .running()
        .into_iter()
        .find(|id| *id != leader)
        .unwrap();
    cluster.wait_converged().await.unwrap();
    let down_last = cluster
        .node(down)
        .unwrap()
        .metrics()
        .last_log_index
        .unwrap();
    cluster.crash(down).await.unwrap();

    put_many(&cluster, 10..400, &mut expected).await;
    let leader = cluster.wait_for_leader().await.unwrap();
    let snap = cluster.node(leader).unwrap().snapshot().await;
    snap.unwrap_or_else(|e| panic!("snapshot on leader {leader}: {e}; {:?}", cluster.metrics()));
    let purged = cluster
        .wait_until("the leader purged past the down node", |all| {
            all.get(&leader)
                .and_then(|m| m.purged_index)
                .is_some_and(|p| p > down_last)
        })
        .await
        .unwrap();
    assert!(purged[&leader].purged_index.unwrap() > down_last);

    // While it is down, it cannot catch up; only the leader can tell; 9 is no member.
    let on_leader = cluster.node(leader).unwrap();
    let short = Duration::from_millis(200);
    assert!(matches!(
        on_leader.wait_caught_up(down, short).await,
        Err(raft_core::Error::Timeout(_))
    ));
    assert!(matches!(
        on_leader.wait_caught_up(9, short).await,
        Err(raft_core::Error::Membership(_))
    ));
    let other = cluster
        .running()
        .into_iter()
        .find(|id| *id != leader)
        .unwrap();
    assert!(matches!(
        cluster
            .node(other)
            .unwrap()
            .wait_caught_up(down, short)
            .await,
        Err(raft_core::Error::NotLeader { .. })
    ));

    let snapshots_before = cluster.router().snapshots_delivered();
    cluster.restart(down).await.unwrap();
    let committed = on_leader.metrics().commit_index;
    on_leader
        .wait_caught_up(down, cluster.timeout())
        .await
        .unwrap();
    let m = cluster.node(down).unwrap().metrics();
    assert!(m.last_log_index >= committed, "{m:?} vs {committed:?}");
    assert_all_equal(&contents(&cluster).await, &expected);
    assert!(
        cluster.router().snapshots_delivered() > snapshots_before,
        "node {down} must have been sent a snapshot"
    );
    let m = cluster.node(down).unwrap().metrics();
    assert!(m.snapshot_index.unwrap() > down_last, "{m:?}");
}

/// Runs a membership operation on whichever node leads, following leader changes.
async fn on_leader<F, Fut>(cluster: &Cluster<Kv>, op: F)
where
    F: Fn(raft_core::Node<Kv>) -> Fut,
    Fut: std::future::Future<Output = raft_core::Result<()>>,
{
    let deadline = Instant::now() + cluster.timeout();
    loop {
        let leader = cluster.wait_for_leader().await.unwrap();
        match op(cluster.node(leader).unwrap().clone()).await {
            Ok(()) => return,
            Err(
                e @ (Error::NotLeader { .. } | Error::OutcomeUnknown { .. } | Error::Timeout(_)),
            ) => {
                assert!(
                    Instant::now() < deadline,
                    "membership change kept failing: {e}"
                );
                let stale = cluster.node(leader).unwrap().metrics();
                let _ = cluster
                    .node(leader)
                    .unwrap()
                    .wait_for(Duration::from_millis(500), |m| {
                        m.term != stale.term || m.role != stale.role
                    })
                    .await;
            }
            Err(e) => panic!("membership change failed: {e}"),
        }
    }
}

/// Adds nodes 4 and 5 (already launched) as learners, through whichever node leads.
async fn add_learners_4_and_5(cluster: &Cluster<Kv>) {
    for id in [4, 5] {
        on_leader(
            cluster,
            |n| async move { n.add_learner(id, address(id)).await },
        )
        .await;
    }
}

/// A cluster of voters 1–3 and learners 4 and 5.
async fn voters_1_to_3_learners_4_and_5() -> Cluster<Kv> {
    let cluster = start(3, |c| c).await;
    cluster.launch(4).await.unwrap();
    cluster.launch(5).await.unwrap();
    add_learners_4_and_5(&cluster).await;
    cluster
}

/// Two learners promoted at the same time both become voters: the second change comes between
/// the first one's joint and final configurations, and the first is proposed again from there
/// rather than failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_promotions_both_take_effect() {
    for round in 0..5 {
        let cluster = voters_1_to_3_learners_4_and_5().await;
        let leader = cluster
            .node(cluster.wait_for_leader().await.unwrap())
            .unwrap();
        let (a, b) = tokio::join!(leader.add_voter(4), leader.add_voter(5));
        assert!(a.is_ok() && b.is_ok(), "round {round}: {a:?} {b:?}");
        let m = leader.metrics();
        assert_eq!(m.voters, [1, 2, 3, 4, 5].into(), "round {round}");
        assert!(!m.joint, "round {round}");
    }
}

/// Two voters removed at the same time both leave, and no other member is touched: each
/// removal applies to the configuration in force when it is proposed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_removals_both_take_effect() {
    for round in 0..3 {
        let cluster = voters_1_to_3_learners_4_and_5().await;
        let leader_id = cluster.wait_for_leader().await.unwrap();
        let leader = cluster.node(leader_id).unwrap();
        let (a, b) = tokio::join!(leader.add_voter(4), leader.add_voter(5));
        assert!(a.is_ok() && b.is_ok(), "round {round}: {a:?} {b:?}");
        let leaving: Vec<NodeId> = (1..=5).filter(|id| *id != leader_id).take(2).collect();
        let (a, b) = tokio::join!(
            leader.remove_node(leaving[0]),
            leader.remove_node(leaving[1])
        );
        assert!(a.is_ok() && b.is_ok(), "round {round}: {a:?} {b:?}");
        let m = leader.metrics();
        let staying: BTreeSet<NodeId> = (1..=5).filter(|id| !leaving.contains(id)).collect();
        assert_eq!(m.voters, staying, "round {round}");
        assert!(m.learners.is_empty(), "round {round}: {:?}", m.learners);
        assert!(!m.joint, "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn membership_changes_three_to_five_to_three_under_writes() {
    let cluster = start(3, |c| c).await;
    cluster.launch(4).await.unwrap();
    cluster.launch(5).await.unwrap();

    let stop = AtomicBool::new(false);
    let acked = AtomicU64::new(0);
    let writer = async {
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            cluster
                .write(Cmd::Put(format!("w-{i}"), format!("{i}")))
                .await
                .expect("writes keep succeeding through membership changes");
            acked.fetch_add(1, Ordering::Relaxed);
            i += 1;
        }
        i
    };
    let changes = async {
        add_learners_4_and_5(&cluster).await;
        on_leader(&cluster, |n| async move {
            n.change_membership([1, 2, 3, 4, 5]).await
        })
        .await;
        let five = cluster
            .wait_until("five voters", |all| {
                all.values()
                    .filter(|m| m.voters.len() == 5 && !m.joint)
                    .count()
                    == 5
            })
            .await
            .unwrap();
        assert!(five.values().all(|m| m.voters.len() == 5));
        on_leader(
            &cluster,
            |n| async move { n.change_membership([3, 4, 5]).await },
        )
        .await;
        stop.store(true, Ordering::Relaxed);
    };
    let (written, ()) = tokio::join!(writer, changes);
    assert!(written > 0 && acked.load(Ordering::Relaxed) == written);

    let leader = cluster.wait_for_leader_among(&[3, 4, 5]).await.unwrap();
    let m = cluster.node(leader).unwrap().metrics();
    assert_eq!(m.voters, [3, 4, 5].into());
    let states = contents(&cluster).await;
    assert_eq!(states.keys().copied().collect::<Vec<_>>(), vec![3, 4, 5]);
    let first = states.values().next().unwrap().clone();
    assert_all_equal(&states, &first);
    for i in 0..written {
        assert_eq!(
            first.0.get(&format!("w-{i}")),
            Some(&format!("{i}")),
            "write {i} lost"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retried_write_is_applied_once() {
    let cluster = start(3, |c| c).await;
    let leader = cluster.wait_for_leader().await.unwrap();
    let node = cluster.node(leader).unwrap();
    let id = node.register_session().await.unwrap();
    let s1 = Session {
        client_id: id,
        sequence: 1,
    };
    let cmd = Cmd::Append("k".into(), "x".into());
    assert_eq!(
        node.write_in_session(s1, cmd.clone()).await.unwrap(),
        Some("x".to_string())
    );
    assert_eq!(
        node.write_in_session(s1, cmd.clone()).await.unwrap(),
        Some("x".to_string()),
        "the retry gets the first answer"
    );

    // The retry also works through another leader: sessions are replicated state.
    let other = cluster
        .running()
        .into_iter()
        .find(|id| *id != leader)
        .unwrap();
    node.transfer_leader(other).await.unwrap();
    let new_leader = cluster.wait_for_leader().await.unwrap();
    assert_eq!(new_leader, other);
    let new_node = cluster.node(new_leader).unwrap();
    assert_eq!(
        new_node.write_in_session(s1, cmd.clone()).await.unwrap(),
        Some("x".to_string())
    );

    let s2 = Session {
        client_id: id,
        sequence: 2,
    };
    assert_eq!(
        new_node.write_in_session(s2, cmd.clone()).await.unwrap(),
        Some("xx".to_string())
    );
    match new_node.write_in_session(s1, cmd.clone()).await {
        Err(Error::Rejected(ApplyError::SessionExpired {
            client_id,
            sequence: 1,
        })) if client_id == id => {}
        other => panic!("an outdated sequence must be refused, got {other:?}"),
    }
    let states = contents(&cluster).await;
    let mut expected = Kv::default();
    expected.0.insert("k".into(), "xx".into());
    assert_all_equal(&states, &expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_respect_their_consistency_level() {
    let cluster = start(3, |c| c).await;
    cluster
        .write(Cmd::Put("a".into(), "1".into()))
        .await
        .unwrap();
    let leader = cluster.wait_for_leader().await.unwrap();
    let follower = cluster
        .running()
        .into_iter()
        .find(|id| *id != leader)
        .unwrap();

    let v = cluster
        .node(leader)
        .unwrap()
        .read(Consistency::Linearizable, |kv| kv.0.get("a").cloned())
        .await
        .unwrap();
    assert_eq!(v.as_deref(), Some("1"));
    let v = cluster
        .node(leader)
        .unwrap()
        .read(Consistency::Lease, |kv| kv.0.get("a").cloned())
        .await
        .unwrap();
    assert_eq!(v.as_deref(), Some("1"));
    match cluster
        .node(follower)
        .unwrap()
        .read(Consistency::Linearizable, |kv| kv.0.len())
        .await
    {
        Err(Error::NotLeader(hint)) => {
            assert_eq!(hint.id(), Some(leader));
            assert_eq!(hint.addr(), Some(address(leader).as_str()));
        }
        other => panic!("a follower must redirect linearizable reads, got {other:?}"),
    }
    // A follower read: the leader issues the read index, the follower waits for it.
    cluster
        .write(Cmd::Put("b".into(), "2".into()))
        .await
        .unwrap();
    let at = cluster
        .node(leader)
        .unwrap()
        .read_index(Consistency::Linearizable)
        .await
        .unwrap();
    let v = cluster
        .node(follower)
        .unwrap()
        .read_at(at, |kv| kv.0.get("b").cloned())
        .await
        .unwrap();
    assert_eq!(
        v.as_deref(),
        Some("2"),
        "a follower read sees the acknowledged write"
    );

    cluster.wait_converged().await.unwrap();
    let local = cluster
        .node(follower)
        .unwrap()
        .read(Consistency::Local, |kv| kv.0.get("a").cloned())
        .await
        .unwrap();
    assert_eq!(local.as_deref(), Some("1"));
    assert_eq!(
        cluster.node(follower).unwrap().metrics().role,
        Role::Follower
    );
}

/// A running node other than `id`.
fn another_node(cluster: &Cluster<Kv>, id: NodeId) -> NodeId {
    cluster
        .running()
        .into_iter()
        .find(|n| *n != id)
        .expect("another running node")
}

/// Waits until every running node has applied a session capacity of `max_sessions`.
async fn wait_for_capacity(cluster: &Cluster<Kv>, max_sessions: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let ids = cluster.running();
        let lagging = ids
            .iter()
            .copied()
            .find(|id| cluster.node(*id).unwrap().session_capacity().max_sessions != max_sessions);
        let Some(id) = lagging else { return };
        assert!(
            tokio::time::Instant::now() < deadline,
            "node {id} never applied a session capacity of {max_sessions}"
        );
        // Wait for that node to apply something more.
        let node = cluster.node(id).unwrap();
        let applied = node.metrics().applied_index;
        let _ = node
            .wait_for(Duration::from_secs(1), |m| m.applied_index != applied)
            .await;
    }
}

/// A capacity that would keep a response larger than the whole table (so that keeping it
/// evicts every other session) is refused, and the capacity in force stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_capacity_keeping_responses_larger_than_the_table_is_refused() {
    let cluster = start(1, |c| c).await;
    let node = cluster
        .node(cluster.wait_for_leader().await.unwrap())
        .unwrap();
    let before = node.session_capacity();
    let too_large = raft_core::SessionCapacity::default()
        .with_max_bytes(1 << 20)
        .with_max_response_bytes((1 << 20) + 1);
    let refused = node.set_session_capacity(too_large).await;
    assert!(matches!(refused, Err(Error::Config(_))), "{refused:?}");
    assert_eq!(node.session_capacity(), before);
    let fits = too_large.with_max_response_bytes(1 << 20);
    node.set_session_capacity(fits).await.unwrap();
    assert_eq!(node.session_capacity(), fits);
}

/// A capacity set once the cluster leads stays: the configured one, which initialization
/// proposes in the background as soon as the node leads, never replaces it afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_explicit_session_capacity_is_not_undone_by_the_configured_one() {
    // The configured capacity is proposed within milliseconds of leading; this is far beyond.
    const LATER: Duration = Duration::from_millis(500);
    for round in 0..4 {
        let cluster = start(1, |c| c.with_max_sessions(5)).await;
        let node = cluster
            .node(cluster.wait_for_leader().await.unwrap())
            .unwrap();
        let explicit = raft_core::SessionCapacity::default().with_max_sessions(100);
        node.set_session_capacity(explicit).await.unwrap();
        // Writes for a while, each applied after whatever was proposed before it.
        let until = Instant::now() + LATER;
        while Instant::now() < until {
            node.write(Cmd::Put("k".into(), "v".into())).await.unwrap();
            assert_eq!(node.session_capacity(), explicit, "round {round}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_after_its_session_was_evicted_is_never_applied_again() {
    let cluster = start(3, |c| c).await;
    let leader = cluster.wait_for_leader().await.unwrap();
    let node = cluster.node(leader).unwrap();
    node.set_session_capacity(raft_core::SessionCapacity::default().with_max_sessions(3))
        .await
        .unwrap();
    let a = node.register_session().await.unwrap();
    let first = Session {
        client_id: a,
        sequence: 1,
    };
    let cmd = Cmd::Append("k".into(), "x".into());
    // Applied; the client never learns it (its reply is lost).
    node.write_in_session(first, cmd.clone()).await.unwrap();
    // Other clients push session `a` out of the table.
    for i in 0..5 {
        let id = node.register_session().await.unwrap();
        let s = Session {
            client_id: id,
            sequence: 1,
        };
        node.write_in_session(s, Cmd::Append(format!("o{i}"), "y".into()))
            .await
            .unwrap();
    }
    assert_eq!(node.open_sessions(), 3);
    // The retry — and any sequence of the forgotten session, 1 included — is refused as
    // "outcome unknown", never applied as fresh.
    for sequence in [1, 2] {
        let s = Session {
            client_id: a,
            sequence,
        };
        match node.write_in_session(s, cmd.clone()).await {
            Err(e @ Error::Rejected(ApplyError::UnknownSession { .. })) => {
                assert!(e.may_have_applied(), "the outcome is unknown")
            }
            other => panic!("an evicted session must be refused, got {other:?}"),
        }
    }
    // A session nobody registered is refused the same way, even at sequence 1.
    let never = Session {
        client_id: u64::MAX - 7,
        sequence: 1,
    };
    assert!(matches!(
        node.write_in_session(never, cmd.clone()).await,
        Err(Error::Rejected(ApplyError::UnknownSession { .. }))
    ));
    // A closed session too.
    let b = node.register_session().await.unwrap();
    node.close_session(b).await.unwrap();
    let closed = Session {
        client_id: b,
        sequence: 1,
    };
    assert!(matches!(
        node.write_in_session(closed, cmd.clone()).await,
        Err(Error::Rejected(ApplyError::UnknownSession { .. }))
    ));
    // Unsessioned writes still work.
    node.write(Cmd::Append("free".into(), "z".into()))
        .await
        .unwrap();
    let states = contents(&cluster).await;
    for (id, kv) in &states {
        assert_eq!(kv.0.get("k"), Some(&"x".to_string()), "node {id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_configured_differently_keep_identical_session_tables() {
    // Only node 1 initializes, so its 10 is the cluster's capacity; 1,000 elsewhere is ignored.
    let cluster = start(3, |c| {
        let max = if c.id == 1 { 10 } else { 1_000 };
        c.with_snapshots(25, 5).with_max_sessions(max)
    })
    .await;
    wait_for_capacity(&cluster, 10).await;
    let mut leader = cluster
        .node(cluster.wait_for_leader().await.unwrap())
        .unwrap();
    for round in 0..2 {
        for i in 0..30 {
            let id = leader.register_session().await.unwrap();
            for sequence in 1..=2 {
                let s = Session {
                    client_id: id,
                    sequence,
                };
                leader
                    .write_in_session(s, Cmd::Append(format!("k{i}"), "v".into()))
                    .await
                    .unwrap();
            }
        }
        if round == 0 {
            // Lead from a node whose own configuration says 1,000.
            let other = another_node(&cluster, leader.id());
            leader.transfer_leader(other).await.unwrap();
            leader = cluster
                .node(cluster.wait_for_leader().await.unwrap())
                .unwrap();
        }
    }
    // A node restarted from its snapshot and log rebuilds the same table.
    let follower = another_node(&cluster, leader.id());
    cluster.crash(follower).await.unwrap();
    cluster.restart(follower).await.unwrap();
    contents(&cluster).await;
    let tables: BTreeMap<NodeId, Vec<u8>> = cluster
        .running()
        .into_iter()
        .map(|id| {
            let node = cluster.node(id).unwrap();
            assert_eq!(node.open_sessions(), 10, "node {id}");
            assert_eq!(node.session_capacity().max_sessions, 10, "node {id}");
            (id, node.session_table_bytes().unwrap())
        })
        .collect();
    let first = tables.values().next().unwrap();
    for (id, t) in &tables {
        assert_eq!(t, first, "node {id}'s session table diverged");
    }
    assert!(
        cluster
            .node(follower)
            .unwrap()
            .metrics()
            .snapshot_index
            .is_some(),
        "the restarted node went through a snapshot"
    );
}

/// A write running in a task of its own.
type Write = tokio::task::JoinHandle<raft_core::Result<Option<String>>>;

/// A leader cut off from its quorum, with its proposal slots held by writes it cannot commit and
/// `queue` more writes queued behind them.
struct CutOff {
    node: raft_core::Node<Kv>,
    config: raft_core::Config,
    isolated: Instant,
    stuck: Vec<Write>,
    queued: Vec<Write>,
}

impl Drop for CutOff {
    fn drop(&mut self) {
        for s in &self.stuck {
            s.abort();
        }
    }
}

async fn cut_off_leader(cluster: &Cluster<Kv>, queue: usize) -> CutOff {
    let mut expected = Kv::default();
    put_many(cluster, 0..20, &mut expected).await;
    let old = cluster.wait_for_leader().await.unwrap();
    let node = cluster.node(old).unwrap();
    let config = cluster.config(old);
    let appended = node.metrics().last_log_index.unwrap_or(0);
    let isolated = Instant::now();
    cluster.router().isolate(old);
    let write = |name: String| {
        let node = node.clone();
        tokio::spawn(async move { node.write(Cmd::Put(name, "x".into())).await })
    };
    // Writes sent as the partition begins take every proposal slot: each is appended to the
    // leader's log and cannot commit.
    let slots = config.combine_writes_after;
    let stuck: Vec<_> = (0..slots).map(|i| write(format!("stuck-{i}"))).collect();
    node.wait_for(config.request_timeout, |m| {
        m.last_log_index.unwrap_or(0) >= appended + slots as u64
    })
    .await
    .expect("the first writes are proposed");
    let queued = (0..queue).map(|i| write(format!("queued-{i}"))).collect();
    CutOff {
        node,
        config,
        isolated,
        stuck,
        queued,
    }
}

/// Each of `queued` is refused as not applied by `deadline`.
async fn refused_by(queued: Vec<Write>, deadline: Instant) {
    for q in queued {
        let answered = tokio::time::timeout_at(deadline.into(), q).await;
        let e = answered
            .expect("a queued write left waiting")
            .expect("write task")
            .expect_err("an isolated leader acknowledged a queued write");
        assert!(
            matches!(e, Error::NotLeader(_)) && !e.may_have_applied(),
            "{e}"
        );
    }
}

/// A leader cut off from its quorum refuses new writes at once, as not applied, once it has
/// heard from no quorum for two election timeouts, and with them the writes already queued.
/// Before, they queued behind the proposals stuck in its slots and waited for those to time out
/// (the request timeout, 5 s here).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_isolated_leader_refuses_new_writes_at_once_as_not_applied() {
    let cluster = start(3, |c| c).await;
    let mut cut = cut_off_leader(&cluster, 12).await;
    let (node, config, isolated) = (cut.node.clone(), cut.config.clone(), cut.isolated);
    // Probe until a write is answered. A probe that queues and is given up is never proposed
    // (nothing frees a slot before the stuck writes time out). One that finds a free slot is
    // refused by the lease check within an election timeout; it gets two.
    let probe_for = config.election_timeout * 2;
    let refused = loop {
        let probe = node.write(Cmd::Put("late".into(), "x".into()));
        match tokio::time::timeout(probe_for, probe).await {
            Ok(Ok(v)) => panic!("an isolated leader acknowledged a write: {v:?}"),
            Ok(Err(e)) => break e,
            Err(_) => assert!(
                isolated.elapsed() < config.request_timeout / 2,
                "no write refused {:?} after the leader was cut off",
                isolated.elapsed()
            ),
        }
    };
    assert!(matches!(refused, Error::NotLeader(_)), "{refused}");
    assert!(!refused.may_have_applied(), "{refused}");
    // The writes queued behind the stuck ones are refused with it, not left to time out (their
    // own check, below, would come a second after they queued at the earliest).
    let queued = std::mem::take(&mut cut.queued);
    refused_by(queued, Instant::now() + config.election_timeout).await;
}

/// The writes queued on a cut-off leader are refused as not applied once its lease has
/// lapsed, also when no new write comes to find it so: each asks at its stop check (every
/// second). Before, they waited for the request timeout (5 s here) and learned nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_queued_on_an_isolated_leader_are_refused_without_a_new_write() {
    let cluster = start(3, |c| c).await;
    let mut cut = cut_off_leader(&cluster, 12).await;
    let queued = std::mem::take(&mut cut.queued);
    refused_by(queued, cut.isolated + cut.config.request_timeout / 2).await;
}
