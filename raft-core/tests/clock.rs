//! Leader-stamped time: with followers' clocks a minute off either way, every node agrees on
//! whether a lease has expired at the same logical point, because writes apply at the time the
//! leader stamped and reads are answered at the time the leader ordered them. Time never goes
//! backwards in the log, across leader changes and restarts from a snapshot.

use std::collections::BTreeMap;
use std::io;
use std::io::Read;
use std::io::Write;

use raft_core::ApplyContext;
use raft_core::Consistency;
use raft_core::Node;
use raft_core::Queryable;
use raft_core::ReadContext;
use raft_core::StateMachine;
use raft_core::testing::Cluster;
use raft_core::testing::ClusterOptions;
use raft_core::testing::ManualClock;
use raft_core::types::NodeId;
use serde::Deserialize;
use serde::Serialize;

const T0: u64 = 1_800_000_000_000;
const SKEW: u64 = 60_000;

/// Leases that expire a given time after they are granted.
#[derive(Default)]
struct Leases(BTreeMap<String, u64>);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Grant {
    key: String,
    ttl_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Ask {
    /// Whether the lease is alive.
    Alive(String),
    /// The read's time.
    Now,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Answer {
    Alive(bool),
    Now(u64),
}

impl StateMachine for Leases {
    type Command = Grant;
    /// The time the grant applied at.
    type Output = u64;
    type Snapshot = BTreeMap<String, u64>;

    fn apply(&mut self, _: Grant) -> u64 {
        unreachable!("every entry this test writes carries the leader's time")
    }
    fn apply_at(&mut self, g: Grant, ctx: &ApplyContext) -> u64 {
        let Some(now) = ctx.time_ms() else {
            return 0;
        };
        self.0.insert(g.key, now + g.ttl_ms);
        now
    }
    fn snapshot(&self) -> Self::Snapshot {
        self.0.clone()
    }
    fn write_snapshot(s: Self::Snapshot, out: &mut dyn Write) -> io::Result<()> {
        raft_core::write_serde(&s, out)
    }
    fn restore(&mut self, input: &mut dyn Read) -> io::Result<()> {
        self.0 = raft_core::read_serde(input)?;
        Ok(())
    }
}

impl Queryable for Leases {
    type Query = Ask;
    type Reply = Answer;

    fn query(&self, _: Ask) -> Answer {
        unreachable!("raftkit answers queries with query_at")
    }
    fn query_at(&self, q: Ask, ctx: &ReadContext) -> Answer {
        match q {
            Ask::Alive(k) => Answer::Alive(self.0.get(&k).is_some_and(|at| *at > ctx.time_ms())),
            Ask::Now => Answer::Now(ctx.time_ms()),
        }
    }
}

struct Fixture {
    cluster: Cluster<Leases>,
    clocks: BTreeMap<NodeId, ManualClock>,
}

async fn start() -> Fixture {
    let clocks: BTreeMap<NodeId, ManualClock> =
        (1..=3).map(|id| (id, ManualClock::at(T0))).collect();
    let for_config = clocks.clone();
    let options = ClusterOptions::default().with_configure(move |c| {
        let clock = for_config[&c.id].clone();
        c.with_snapshots(0, 0).with_clock(clock)
    });
    let cluster = Cluster::start(3, options, |_| Leases::default())
        .await
        .unwrap();
    Fixture { cluster, clocks }
}

/// Reads `q` linearizably through node `via`: on the leader directly, elsewhere as a transport
/// does (the leader's read index, then a read on `via` once it has applied it).
async fn read_via(f: &Fixture, leader: NodeId, via: NodeId, q: Ask, c: Consistency) -> Answer {
    let node: Node<Leases> = f.cluster.node(via).unwrap();
    if via == leader {
        return node.query(c, q).await.unwrap();
    }
    let at = f.cluster.node(leader).unwrap().read_index(c).await.unwrap();
    node.query_at(at, q).await.unwrap()
}

async fn all_agree(f: &Fixture, leader: NodeId, key: &str) -> bool {
    let mut seen = Vec::new();
    for via in 1..=3 {
        for c in [Consistency::Linearizable, Consistency::Lease] {
            seen.push(read_via(f, leader, via, Ask::Alive(key.into()), c).await);
        }
    }
    assert!(seen.windows(2).all(|w| w[0] == w[1]), "{seen:?}");
    seen[0] == Answer::Alive(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_decides_expiry_by_the_leaders_clock() {
    let f = start().await;
    let leader = f.cluster.wait_for_leader().await.unwrap();
    let followers: Vec<NodeId> = (1..=3).filter(|id| *id != leader).collect();
    f.clocks[&followers[0]].set(T0 + SKEW);
    f.clocks[&followers[1]].set(T0 - SKEW);

    let node = f.cluster.node(leader).unwrap();
    let granted = node
        .write(Grant {
            key: "k".into(),
            ttl_ms: 10_000,
        })
        .await
        .unwrap();
    assert_eq!(granted, T0, "the write applies at the leader's time");
    f.cluster.wait_converged().await.unwrap();
    // A follower's own clock would call it expired (+60 s) or far from it (-60 s); every node
    // answers with the leader's time instead.
    assert!(all_agree(&f, leader, "k").await);
    f.clocks[&leader].set(T0 + 9_999);
    assert!(all_agree(&f, leader, "k").await);
    f.clocks[&leader].set(T0 + 10_000);
    assert!(!all_agree(&f, leader, "k").await);
    f.cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_never_goes_backwards_across_leaders_and_snapshots() {
    let f = start().await;
    let old = f.cluster.wait_for_leader().await.unwrap();
    let node = f.cluster.node(old).unwrap();
    f.clocks[&old].set(T0 + SKEW);
    let first = node
        .write(Grant {
            key: "a".into(),
            ttl_ms: 1,
        })
        .await
        .unwrap();
    assert_eq!(first, T0 + SKEW);
    // The leader's clock stepping back does not move its stamps back.
    f.clocks[&old].set(T0);
    let second = node
        .write(Grant {
            key: "b".into(),
            ttl_ms: 1,
        })
        .await
        .unwrap();
    assert_eq!(second, T0 + SKEW);

    // A new leader whose clock is a minute behind orders writes and reads no earlier than the
    // state it took over.
    let new = (1..=3).find(|id| *id != old).unwrap();
    f.cluster.wait_converged().await.unwrap();
    f.clocks[&new].set(T0);
    node.transfer_leader(new).await.unwrap();
    let leader = f.cluster.node(new).unwrap();
    let third = leader
        .write(Grant {
            key: "c".into(),
            ttl_ms: 1,
        })
        .await
        .unwrap();
    assert_eq!(third, T0 + SKEW);
    for via in 1..=3 {
        let now = read_via(&f, new, via, Ask::Now, Consistency::Linearizable).await;
        assert_eq!(now, Answer::Now(T0 + SKEW), "via node {via}");
    }
    f.clocks[&new].set(T0 + SKEW + 5);
    assert_eq!(
        leader
            .write(Grant {
                key: "d".into(),
                ttl_ms: 1,
            })
            .await
            .unwrap(),
        T0 + SKEW + 5
    );

    // A node restarted from a snapshot keeps the applied time: with its clock at 0, a local read
    // is still ordered at the time of the last entry.
    let applied = f.cluster.wait_converged().await.unwrap();
    let other = (1..=3).find(|id| *id != new).unwrap();
    f.cluster.node(other).unwrap().snapshot().await.unwrap();
    f.cluster.crash(other).await.unwrap();
    f.clocks[&other].set(0);
    let back = f.cluster.restart(other).await.unwrap();
    back.wait_for(f.cluster.timeout(), |m| {
        m.snapshot_index.is_some() && m.applied_index >= Some(applied)
    })
    .await
    .unwrap();
    assert_eq!(
        back.query(Consistency::Local, Ask::Now).await.unwrap(),
        Answer::Now(T0 + SKEW + 5)
    );

    // So does a new cluster restored from a backup, on a node whose clock reads 0.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup");
    leader
        .export_snapshot(std::fs::File::create(&file).unwrap())
        .await
        .unwrap();
    let members: BTreeMap<NodeId, String> = [(7, "restored".to_string())].into();
    let data = dir.path().join("data");
    raft_core::backup::restore_data_dir(&file, &data, 7, &members, None).unwrap();
    let router = raft_core::testing::Router::new(7);
    let config = raft_core::Config::durable(7, &data).with_clock(ManualClock::at(0));
    let restored = Node::start(config, Leases::default(), router.transport(7))
        .await
        .unwrap();
    router.register(restored.rpc_handler());
    assert_eq!(
        restored.query(Consistency::Local, Ask::Now).await.unwrap(),
        Answer::Now(T0 + SKEW + 5)
    );
    restored.shutdown().await.unwrap();
    f.cluster.shutdown().await.unwrap();
}
