//! Adding members: an id or address already in use is refused or answered as it stands, and a
//! learner that cannot catch up is reported as added-but-behind. Changing voters: a voter set
//! whose majority is down is refused before it could stop the cluster. In-process clusters on the
//! router; every wait is bounded by the request timeout, never a sleep.

use std::collections::BTreeMap;
use std::time::Duration;

use raft_core::Error;
use raft_core::Node;
use raft_core::NodeId;
use raft_core::testing::Cluster;
use raft_core::testing::ClusterOptions;
use raft_core::testing::address;
use raft_core::testing::init_tracing;
use raft_core::testing::kv::KvStore;

/// How long the leader waits for a new learner in these tests.
const WAIT: Duration = Duration::from_millis(800);

async fn three() -> (Cluster<KvStore>, Node<KvStore>) {
    init_tracing();
    let options = ClusterOptions::default().with_configure(|c| c.with_request_timeout(WAIT));
    let c = Cluster::start(3, options, |_| KvStore::default())
        .await
        .expect("cluster starts");
    let leader = c.wait_for_leader().await.expect("a leader");
    let node = c.node(leader).expect("the leader runs");
    (c, node)
}

fn members(node: &Node<KvStore>) -> BTreeMap<NodeId, String> {
    node.metrics().members
}

fn refusal(r: Result<(), Error>) -> String {
    match r {
        Err(Error::Membership(m)) => m,
        other => panic!("expected a membership refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_or_address_in_use_is_refused_and_the_same_member_is_answered_as_it_is() {
    let (c, leader) = three().await;
    let before = members(&leader);
    let voter = if leader.id() == 1 { 2 } else { 1 };

    // A voter's id at another address: refused, naming where it is and what to do.
    let m = refusal(leader.add_learner(voter, "elsewhere:1").await);
    assert!(
        m.contains(&format!(
            "node {voter} is already a voter at {}",
            address(voter)
        )),
        "{m}"
    );
    assert!(m.contains("remove it first, or use a new id"), "{m}");
    assert_eq!(members(&leader), before);

    // The same voter at its own address: nothing to do, and it stays a voter.
    leader
        .add_learner(voter, address(voter))
        .await
        .expect("idempotent");
    assert_eq!(members(&leader), before);
    assert!(leader.metrics().voters.contains(&voter));
    // Spelt with other case, a host name is the same address: the same answer.
    leader
        .add_learner(voter, address(voter).to_uppercase())
        .await
        .expect("the same address");
    assert_eq!(members(&leader), before);

    // A new id at an address another member uses, however its host name is spelt: refused,
    // naming that member.
    c.launch(4).await.expect("node 4 starts");
    for taken in [address(voter), address(voter).to_uppercase()] {
        let m = refusal(leader.add_learner(4, taken.clone()).await);
        assert!(
            m.contains(&format!("{taken} is already the address of node {voter}")),
            "{m}"
        );
        // Spelt otherwise than it is stored, the refusal shows the stored spelling.
        assert_eq!(
            m.contains(&format!("as {}", address(voter))),
            taken != address(voter),
            "{m}"
        );
        assert_eq!(members(&leader), before);
    }

    // A learner: added once; again at its address is fine; at another address is refused.
    leader
        .add_learner(4, address(4))
        .await
        .expect("learner 4 added");
    leader.add_learner(4, address(4)).await.expect("idempotent");
    let m = refusal(leader.add_learner(4, "elsewhere:4").await);
    assert!(
        m.contains(&format!("node 4 is already a learner at {}", address(4))),
        "{m}"
    );
    let after = members(&leader);
    assert_eq!(after.get(&4), Some(&address(4)));
    assert_eq!(after.len(), before.len() + 1);
    assert!(leader.metrics().learners.contains(&4));
    c.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_that_cannot_catch_up_is_reported_as_added_and_behind() {
    let (c, leader) = three().await;

    // Node 5 is not running: the learner is added, but nothing reaches it.
    let e = leader
        .add_learner(5, address(5))
        .await
        .expect_err("cannot catch up");
    match &e {
        Error::LearnerNotCaughtUp { id, addr, waited } => {
            assert_eq!(
                (*id, addr.as_str(), *waited),
                (5, address(5).as_str(), WAIT)
            );
        }
        other => panic!("expected LearnerNotCaughtUp, got {other:?}"),
    }
    let text = e.to_string();
    assert!(text.contains("node 5 was added as a learner"), "{text}");
    assert!(text.contains("until it is removed"), "{text}");
    assert!(e.may_have_applied());
    assert!(leader.metrics().learners.contains(&5));

    // Asking again does not pretend it worked: it is still behind.
    let again = leader.add_learner(5, address(5)).await;
    assert!(
        matches!(again, Err(Error::LearnerNotCaughtUp { id: 5, .. })),
        "{again:?}"
    );

    // Once it runs, the same call succeeds; removing it undoes the add.
    c.launch(5).await.expect("node 5 starts");
    leader.add_learner(5, address(5)).await.expect("caught up");
    leader.remove_node(5).await.expect("removed");
    assert!(!members(&leader).contains_key(&5));
    c.shutdown().await.expect("shutdown");
}

/// With one voter of three down, removing another would leave voters of which only the leader
/// answers: the joint configuration could never commit, nor anything after it. The change is
/// refused at once, and the cluster keeps writing; removing the node that is down works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voter_set_whose_majority_is_down_is_refused_and_the_cluster_keeps_writing() {
    // Slower elections than the other tests': a re-election on a loaded machine would answer
    // the changes below with NotLeader.
    init_tracing();
    let options = ClusterOptions::default().with_configure(|c| {
        c.with_request_timeout(WAIT)
            .with_timing(Duration::from_millis(100), Duration::from_secs(1))
    });
    let c = Cluster::start(3, options, |_| KvStore::default())
        .await
        .expect("cluster starts");
    let leader = c
        .node(c.wait_for_leader().await.expect("a leader"))
        .expect("runs");
    let me = leader.id();
    let mut others = [1, 2, 3].into_iter().filter(|id| *id != me);
    let (up, down) = (others.next().unwrap(), others.next().unwrap());
    c.crash(down).await.expect("crash");
    // The rule under test is time-based: a member that has not answered the leader for two
    // election timeouts counts as down. Its last answer came before the crash.
    let window = leader.config().election_timeout * 2;
    tokio::time::sleep(window).await;

    let voters = leader.metrics().voters;
    let why = refusal(leader.remove_node(up).await);
    assert!(why.contains(&format!("{{{down}}}")), "{why}");
    let why = refusal(leader.change_membership([me, down]).await);
    assert!(why.contains(&format!("{{{down}}}")), "{why}");
    let m = leader.metrics();
    assert_eq!((m.voters, m.joint), (voters, false));
    let written = tokio::time::timeout(
        WAIT * 8,
        c.write(raft_core::testing::kv::KvCommand::Put(
            "k".into(),
            "v".into(),
        )),
    )
    .await;
    assert!(
        matches!(written, Ok(Ok(_))),
        "the cluster stopped writing: {written:?}"
    );

    leader
        .remove_node(down)
        .await
        .expect("the node that is down is removed");
    assert_eq!(leader.metrics().voters, [me, up].into());
    c.shutdown().await.expect("shutdown");
}
