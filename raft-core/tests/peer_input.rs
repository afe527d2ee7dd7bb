//! Arbitrary peer input, delivered straight to a node's `RpcHandler` as any transport would: the
//! node never panics, and never persists anything that its next start fails to recover.
//!
//! The requests are drawn so that many are well-formed (contiguous entries, sensible terms) and
//! reach the log, and many are not: gaps, terms beyond the sender's vote, indexes at `u64::MAX`,
//! memberships naming voters without an address, snapshots whose membership is malformed or
//! whose state machine part does not decode. Without the checks in `raft_core`'s handler, openraft
//! panics on some of these requests within the default number of cases.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use openraft::BasicNode;
use proptest::prelude::*;
use raft_core::Config;
use raft_core::Consistency;
use raft_core::Node;
use raft_core::testing::PanicWatch;
use raft_core::testing::Router;
use raft_core::testing::kv::KvCommand;
use raft_core::testing::kv::KvStore;
use raft_core::transport::RpcHandlerError;
use raft_core::transport::SharedRpcHandler;
use raft_core::transport::rpc;
use raft_core::types::Entry;
use raft_core::types::LeaderId;
use raft_core::types::LogId;
use raft_core::types::Membership;
use raft_core::types::Payload;
use raft_core::types::Proposal;
use raft_core::types::SnapshotMeta;
use raft_core::types::StoredMembership;
use raft_core::types::Vote;

/// A term or index: mostly small, sometimes at the edge of the type.
fn number() -> impl Strategy<Value = u64> {
    prop_oneof![8 => 0u64..8, 1 => Just(u64::MAX - 1), 1 => Just(u64::MAX)]
}

fn node_id() -> impl Strategy<Value = u64> {
    1u64..=4
}

fn log_id(term: u64, node: u64, index: u64) -> LogId {
    openraft::LogId::new(
        LeaderId {
            term,
            node_id: node,
        },
        index,
    )
}

fn vote() -> impl Strategy<Value = Vote> {
    (number(), node_id(), any::<bool>()).prop_map(|(term, node_id, committed)| Vote {
        leader_id: LeaderId { term, node_id },
        committed,
    })
}

/// A membership as a forged request could carry it: serde does not validate, so voters may lack
/// an address and voter sets may be empty.
fn membership() -> impl Strategy<Value = Membership> {
    let ids = || proptest::collection::btree_set(node_id(), 0..4);
    (proptest::collection::vec(ids(), 0..3), ids()).prop_map(|(configs, nodes)| {
        let nodes: BTreeMap<u64, BasicNode> = nodes
            .into_iter()
            .map(|n| (n, BasicNode::new(format!("node-{n}"))))
            .collect();
        let bytes = raft_core::codec::encode(&(configs, nodes)).expect("encodes");
        raft_core::codec::decode(&bytes).expect("decodes as a membership")
    })
}

#[derive(Debug, Clone)]
enum Body {
    Blank,
    Command(u8),
    Garbage(Vec<u8>),
    Membership(Membership),
}

fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        1 => Just(Body::Blank),
        4 => any::<u8>().prop_map(Body::Command),
        1 => proptest::collection::vec(any::<u8>(), 0..8).prop_map(Body::Garbage),
        2 => membership().prop_map(Body::Membership),
    ]
}

fn payload(b: Body) -> Payload {
    let request = |command: Vec<u8>| Payload::Normal(Proposal::Write(Bytes::from(command)));
    match b {
        Body::Blank => Payload::Blank,
        Body::Command(n) => request(
            raft_core::codec::encode(&KvCommand::Append(format!("k{}", n % 4), n.to_string()))
                .expect("encodes"),
        ),
        Body::Garbage(bytes) => request(bytes),
        Body::Membership(m) => Payload::Membership(m),
    }
}

#[derive(Debug, Clone)]
enum Op {
    Append {
        vote: Vote,
        prev: Option<(u64, u64)>,
        /// Per entry: how much the term rises, whether the index skips one, the payload.
        entries: Vec<(u64, bool, Body)>,
        commit: Option<(u64, u64)>,
    },
    /// Requests of one vote on one replication stream, sent back to back.
    Stream { vote: Vote, requests: Vec<Parts> },
    Vote {
        vote: Vote,
        last: Option<(u64, u64)>,
        pre: bool,
    },
    Snapshot {
        vote: Vote,
        last: Option<(u64, u64)>,
        /// Added to the sender's node id for the leader of `last`: above 0 in the vote's term,
        /// a later leader than the sender.
        later_leader: u64,
        membership: Option<Membership>,
        state_decodes: bool,
    },
}

/// A replication request's previous log id, entries and commit index.
type Parts = (
    Option<(u64, u64)>,
    Vec<(u64, bool, Body)>,
    Option<(u64, u64)>,
);

fn op() -> impl Strategy<Value = Op> {
    let pair = || proptest::option::of((number(), number()));
    let parts = move || {
        (
            pair(),
            proptest::collection::vec((0u64..2, proptest::bool::weighted(0.1), body()), 0..6),
            pair(),
        )
    };
    prop_oneof![
        5 => (vote(), parts())
            .prop_map(|(vote, (prev, entries, commit))| Op::Append { vote, prev, entries, commit }),
        2 => (vote(), proptest::collection::vec(parts(), 2..5))
            .prop_map(|(vote, requests)| Op::Stream { vote, requests }),
        2 => (vote(), pair(), any::<bool>())
            .prop_map(|(vote, last, pre)| Op::Vote { vote, last, pre }),
        2 => (
            vote(),
            pair(),
            prop_oneof![3 => Just(0u64), 1 => 1u64..3],
            proptest::option::of(membership()),
            proptest::bool::weighted(0.8),
        )
            .prop_map(|(vote, last, later_leader, membership, state_decodes)| Op::Snapshot {
                vote, last, later_leader, membership, state_decodes,
            }),
    ]
}

fn append_request(
    vote: Vote,
    prev: Option<(u64, u64)>,
    entries: Vec<(u64, bool, Body)>,
    commit: Option<(u64, u64)>,
) -> rpc::AppendEntriesRequest {
    let leader = vote.leader_id.node_id;
    let prev = prev.map(|(t, i)| log_id(t, leader, i));
    let (mut term, mut index) =
        prev.map_or((0, 0), |p| (p.leader_id.term, p.index.wrapping_add(1)));
    let entries = entries
        .into_iter()
        .map(|(rise, skip, b)| {
            term = term.saturating_add(rise);
            if skip {
                index = index.wrapping_add(1);
            }
            let e = Entry {
                log_id: log_id(term, leader, index),
                payload: payload(b),
            };
            index = index.wrapping_add(1);
            e
        })
        .collect();
    rpc::AppendEntriesRequest {
        vote,
        prev_log_id: prev,
        leader_commit: commit.map(|(t, i)| log_id(t, leader, i)),
        entries,
    }
}

async fn deliver(handler: &SharedRpcHandler, op: Op) {
    // Every outcome is allowed but a panic: refusals are typed errors.
    match op {
        Op::Append {
            vote,
            prev,
            entries,
            commit,
        } => {
            let _ = handler
                .append_entries(append_request(vote, prev, entries, commit))
                .await;
        }
        Op::Stream { vote, requests } => {
            let requests: Vec<_> = requests
                .into_iter()
                .map(|(prev, entries, commit)| append_request(vote, prev, entries, commit))
                .collect();
            let _ = stream(handler, requests).await;
        }
        Op::Vote { vote, last, pre } => {
            let req = rpc::VoteRequest::new(
                vote,
                last.map(|(t, i)| log_id(t, vote.leader_id.node_id, i)),
            );
            let _ = if pre {
                handler.pre_vote(req).await
            } else {
                handler.vote(req).await
            };
        }
        Op::Snapshot {
            vote,
            last,
            later_leader,
            membership,
            state_decodes,
        } => {
            let leader = vote.leader_id.node_id + later_leader;
            let last = last.map(|(t, i)| log_id(t, leader, i));
            let last_membership = match membership {
                Some(m) => StoredMembership::new(last, m),
                None => StoredMembership::default(),
            };
            let meta = SnapshotMeta {
                last_log_id: last,
                last_membership,
            };
            let Ok(bytes) = raft_core::testing::snapshot_bytes(&meta, |w| {
                if state_decodes {
                    raft_core::write_serde(&BTreeMap::from([("k0", "v")]), w)
                } else {
                    w.write_all(&[0xff; 3])
                }
            }) else {
                return;
            };
            let Ok(raft_core::transport::SnapshotReceive::Receive(mut sink)) =
                handler.snapshot_sink(&vote, Some(bytes.len() as u64))
            else {
                return;
            };
            if sink.write(&bytes).is_err() {
                return;
            }
            if let Ok((meta, data)) = sink.finish() {
                let _ = handler.install_snapshot(vote, meta, data).await;
            }
        }
    }
}

fn config(dir: &Path) -> Config {
    Config::durable(1, dir)
        .with_timing(Duration::from_millis(20), Duration::from_millis(100))
        .with_request_timeout(Duration::from_secs(2))
}

async fn start(dir: &Path, router: &Router) -> Node<KvStore> {
    let node = Node::start(config(dir), KvStore::default(), router.transport(1))
        .await
        .unwrap_or_else(|e| panic!("node does not start from its data dir: {e}"));
    router.register(node.rpc_handler());
    node
}

/// Node 1 of a three-node cluster whose other members do not exist, so it never leads.
async fn follower(dir: &Path, router: &Router) -> Node<KvStore> {
    let node = start(dir, router).await;
    node.initialize([(1, "node-1"), (2, "node-2"), (3, "node-3")])
        .await
        .expect("initialize");
    node
}

/// Sends `requests` back to back on one replication stream and collects its answers, within ten
/// seconds.
async fn stream(
    handler: &SharedRpcHandler,
    requests: Vec<rpc::AppendEntriesRequest>,
) -> Vec<Result<rpc::StreamAppendResult, RpcHandlerError>> {
    use futures_util::StreamExt;
    let answers = handler
        .stream_append(futures_util::stream::iter(requests).boxed())
        .collect::<Vec<_>>();
    tokio::time::timeout(Duration::from_secs(10), answers)
        .await
        .expect("bounded")
}

/// A panic watch started first, then a [`follower`] in a fresh data directory, and its handler.
/// The first item keeps the directory and the router: bind it for as long as the node runs.
async fn watched_follower() -> (
    (tempfile::TempDir, Router),
    PanicWatch,
    Node<KvStore>,
    SharedRpcHandler,
) {
    let watch = PanicWatch::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let router = Router::new(0);
    let node = follower(dir.path(), &router).await;
    let handler = node.rpc_handler();
    ((dir, router), watch, node, handler)
}

/// Delivers `ops` to a node that is a follower of a three-node cluster, then checks that it is
/// still running and that a restart recovers what it persisted.
async fn run(ops: Vec<Op>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let router = Router::new(0);
    let node = follower(dir.path(), &router).await;
    let handler = node.rpc_handler();
    for op in ops {
        deliver(&handler, op).await;
    }
    node.read(Consistency::Local, |_| ())
        .await
        .unwrap_or_else(|e| panic!("the node stopped on peer input: {e}"));
    node.shutdown().await.expect("shutdown");
    drop(node);

    let node = start(dir.path(), &router).await;
    node.read(Consistency::Local, |_| ())
        .await
        .unwrap_or_else(|e| panic!("the restarted node is not serving: {e}"));
    node.shutdown().await.expect("shutdown after restart");
}

/// The panics `watch` saw, but two of openraft's debug checks that a request raftkit cannot
/// refuse trips:
/// - that the log a leader has written only moves forward (`io_progress.rs`). A forged leader
///   that rewrites its own earlier entries under the same vote trips it, and no check on one
///   request can tell such a rewrite from an honest resend: the log does not record which vote
///   wrote an entry. Release builds skip the check and take the rewrite as what it is, a
///   truncation of entries that were never committed;
/// - that a snapshot ending past the log ends at a later log id than the log's last entry
///   (`log_id_list.rs`). An honest one can fail it: a follower that was briefly leader holds an
///   entry of its own term that was never committed, and a later leader's snapshot may end at an
///   older term's entry past it (committed after that follower's term). Release builds skip the
///   check and replace the log with the snapshot, as they should.
fn panics(watch: &PanicWatch) -> Vec<String> {
    let mut seen = watch.panics();
    seen.retain(|at| !at.contains("io_state/io_progress.rs") && !at.contains("log_id_list.rs"));
    seen
}

/// A few dozen cases by default; `RAFTKIT_SOAK=1` runs many more.
fn cases() -> u32 {
    if std::env::var("RAFTKIT_SOAK").is_ok_and(|v| v != "0") {
        1000
    } else {
        32
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_peer_requests_never_panic_or_break_recovery(
        ops in proptest::collection::vec(op(), 1..10)
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let watch = PanicWatch::start();
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(30), run(ops))
                .await
                .expect("bounded");
        });
        drop(rt);
        let panics = panics(&watch);
        prop_assert!(panics.is_empty(), "a task of the node panicked at {:?}", panics);
    }
}

#[test]
fn voter_sets_helper_is_exercised() {
    // The strategy above must be able to forge each malformed shape it claims to.
    let forged: Membership = {
        let configs: Vec<BTreeSet<u64>> = vec![[1, 2].into()];
        let nodes: BTreeMap<u64, BasicNode> = [(1, BasicNode::new("a"))].into();
        let bytes = raft_core::codec::encode(&(configs, nodes)).expect("encodes");
        raft_core::codec::decode(&bytes).expect("decodes")
    };
    assert_eq!(forged.voter_ids().collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(forged.nodes().count(), 1, "voter 2 has no address");
}

/// A peer that speaks as the receiving node (a forged vote naming node 1, to node 1) is refused:
/// openraft asserts that a leader it hears from is not itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_speak_as_the_receiver_are_refused() {
    let me = Vote {
        leader_id: LeaderId {
            term: 7,
            node_id: 1,
        },
        committed: true,
    };
    let members: Membership = {
        let configs: Vec<BTreeSet<u64>> = vec![[1, 2, 3].into()];
        let nodes: BTreeMap<u64, BasicNode> = (1..=3)
            .map(|n| (n, BasicNode::new(format!("node-{n}"))))
            .collect();
        let bytes = raft_core::codec::encode(&(configs, nodes)).expect("encodes");
        raft_core::codec::decode(&bytes).expect("decodes")
    };
    let ops = vec![
        Op::Snapshot {
            vote: me,
            last: Some((7, 5)),
            later_leader: 0,
            membership: Some(members),
            state_decodes: true,
        },
        Op::Append {
            vote: me,
            prev: None,
            entries: vec![(7, false, Body::Blank)],
            commit: None,
        },
        Op::Vote {
            vote: me,
            last: Some((7, 9)),
            pre: false,
        },
    ];
    // Delivered to node 1 as a follower (of a cluster it cannot elect in) and as the leader of
    // a one-node cluster, the state in which openraft asserts.
    tokio::time::timeout(Duration::from_secs(30), run(ops.clone()))
        .await
        .expect("bounded");
    let dir = tempfile::tempdir().expect("tempdir");
    let router = Router::new(0);
    let node = start(dir.path(), &router).await;
    node.initialize([(1, "node-1")]).await.expect("initialize");
    node.wait_for(Duration::from_secs(10), |m| m.leader == Some(1))
        .await
        .expect("node 1 leads");
    let handler = node.rpc_handler();
    for op in ops {
        deliver(&handler, op).await;
    }
    node.read(Consistency::Linearizable, |_| ())
        .await
        .unwrap_or_else(|e| panic!("the leader stopped on a request speaking as itself: {e}"));
    node.shutdown().await.expect("shutdown");
}

/// `n` blank entries from index 0, each one term above the one before (terms 1 to `n`).
fn rising(n: usize) -> Vec<(u64, bool, Body)> {
    vec![(1, false, Body::Blank); n]
}

/// An elected leader's vote.
fn elected(term: u64, node_id: u64) -> Vote {
    Vote {
        leader_id: LeaderId { term, node_id },
        committed: true,
    }
}

/// [`run`]s `ops` and checks that no task of the node panicked.
async fn run_without_panics(ops: Vec<Op>) {
    let watch = PanicWatch::start();
    tokio::time::timeout(Duration::from_secs(30), run(ops))
        .await
        .expect("bounded");
    assert_eq!(
        panics(&watch),
        Vec::<String>::new(),
        "a task of the node panicked"
    );
}

/// A snapshot from a valid leader whose state does not decode is refused before install: the
/// node keeps serving (a failed restore would have stopped it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_whose_state_does_not_read_is_refused() {
    run_without_panics(vec![Op::Snapshot {
        vote: elected(1, 2),
        last: Some((0, 0)),
        later_leader: 0,
        membership: None,
        state_decodes: false,
    }])
    .await;
}

/// A commit index that the request's own entries contradict (index 2 under term 0, after an
/// entry at index 1 under term 2) is refused: openraft would otherwise commit, and try to apply,
/// an index the log does not hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_index_past_the_requests_entries_is_refused() {
    run_without_panics(vec![Op::Append {
        vote: elected(5, 2),
        prev: None,
        entries: vec![(1, false, Body::Blank), (1, false, Body::Blank)],
        commit: Some((0, 2)),
    }])
    .await;
}

/// Entries that contradict what the node knows committed (a later leader's entry at a committed
/// index) are refused: openraft takes entries at committed indexes as matching without comparing
/// them. The node keeps its committed entries, and keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_that_contradict_committed_ones_are_refused() {
    let (_dir, watch, node, handler) = watched_follower().await;
    // Node 2, at term 5, replicates three entries of term 1 and commits them.
    let three = vec![
        (1, false, Body::Blank),
        (0, false, Body::Blank),
        (0, false, Body::Blank),
    ];
    handler
        .append_entries(append_request(elected(5, 2), None, three, None))
        .await
        .expect("an honest leader's entries are taken");
    handler
        .append_entries(append_request(
            elected(5, 2),
            Some((1, 2)),
            Vec::new(),
            Some((1, 2)),
        ))
        .await
        .expect("and its heartbeat");
    node.wait_for(Duration::from_secs(10), |m| m.commit_index == Some(2))
        .await
        .expect("the entries are committed");
    // Node 3, at term 6, claims index 0 for itself.
    let forged = append_request(elected(6, 3), None, vec![(6, false, Body::Blank)], None);
    assert!(handler.append_entries(forged).await.is_err());
    let m = node.metrics();
    assert_eq!((m.last_log_index, m.commit_index), (Some(2), Some(2)));
    node.read(Consistency::Local, |_| ())
        .await
        .unwrap_or_else(|e| panic!("the node stopped on peer input: {e}"));
    node.shutdown().await.expect("shutdown");
    assert_eq!(
        panics(&watch),
        Vec::<String>::new(),
        "a task of the node panicked"
    );
}

/// A vote request at a term no election reaches is refused, and the node keeps its term: taking
/// it, the node would overflow `term + 1` at its next election (a panic in a debug build, a
/// term back at 0 in a release build).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_term_no_election_reaches_is_refused() {
    let (_dir, watch, node, handler) = watched_follower().await;
    let before = node.metrics().term;
    for pre in [true, false] {
        let req = rpc::VoteRequest::new(elected(u64::MAX, 2), None);
        let answer = if pre {
            handler.pre_vote(req).await
        } else {
            handler.vote(req).await
        };
        assert!(answer.is_err(), "pre-vote {pre}: {answer:?}");
    }
    assert!(node.metrics().term <= before + 1, "{:?}", node.metrics());
    node.read(Consistency::Local, |_| ())
        .await
        .unwrap_or_else(|e| panic!("the node stopped on peer input: {e}"));
    node.shutdown().await.expect("shutdown");
    assert_eq!(
        panics(&watch),
        Vec::<String>::new(),
        "a task of the node panicked"
    );
}

/// A snapshot from leader (term 5, node 2) that claims entries of leader (5, 3), a later leader
/// of the same term, is refused: openraft asserts, in release builds too, that what it installs
/// is not from a later leader than the sender, so it would stop the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_of_a_later_leader_of_the_same_term_is_refused() {
    run_without_panics(vec![Op::Snapshot {
        vote: elected(5, 2),
        last: Some((5, 9)),
        later_leader: 1,
        membership: None,
        state_decodes: true,
    }])
    .await;
}

/// Two snapshots of one index under different leaders, (3, 10) and (4, 10), installed at once:
/// both pass the checks before either is installed, and openraft stops the node (a check release
/// builds keep too) at a snapshot later than its commit but not past its index, whichever comes
/// second. Installs are taken one at a time, each checked against the one before: the second is
/// refused or covered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_snapshots_at_one_index_installed_at_once_stop_nothing() {
    for round in 0..10 {
        let (_dir, watch, node, handler) = watched_follower().await;
        let received = |term| {
            let meta = SnapshotMeta {
                last_log_id: Some(log_id(term, 2, 10)),
                last_membership: StoredMembership::default(),
            };
            let bytes = raft_core::testing::snapshot_bytes(&meta, |w| {
                raft_core::write_serde(&BTreeMap::from([("k0", "v")]), w)
            })
            .expect("snapshot bytes");
            let Ok(raft_core::transport::SnapshotReceive::Receive(mut sink)) =
                handler.snapshot_sink(&elected(5, 2), Some(bytes.len() as u64))
            else {
                panic!("the snapshot is received");
            };
            sink.write(&bytes).expect("written");
            sink.finish().expect("finished")
        };
        let (meta3, data3) = received(3);
        let (meta4, data4) = received(4);
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            futures_util::future::join(
                handler.install_snapshot(elected(5, 2), meta3, data3),
                handler.install_snapshot(elected(5, 2), meta4, data4),
            ),
        )
        .await
        .expect("bounded");
        node.wait_for(Duration::from_secs(10), |m| m.snapshot_index == Some(10))
            .await
            .unwrap_or_else(|e| panic!("round {round}: a snapshot is installed: {e}"));
        node.shutdown().await.expect("shutdown");
        assert_eq!(panics(&watch), Vec::<String>::new(), "round {round}");
    }
}

/// On one stream, a commit index (3, 2), then an entry (4, 1) that cannot be in one log with it:
/// the second request is checked before openraft has handled the first, so the commit its
/// metrics show is still (1, 0). openraft then takes (4, 1) as held, being at or below its
/// commit, and its debug check of that stopped the node. A leader's requests are also checked
/// against the commits let through from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_contradicting_a_commit_let_through_just_before_is_refused() {
    let (_dir, watch, node, handler) = watched_follower().await;
    let taken = handler
        .append_entries(append_request(elected(6, 2), None, rising(3), None))
        .await;
    assert!(taken.is_ok(), "the entries are taken: {taken:?}");
    let heartbeat = append_request(elected(6, 2), Some((1, 0)), Vec::new(), Some((1, 0)));
    let _ = handler.append_entries(heartbeat).await;
    node.wait_for(Duration::from_secs(10), |m| m.commit_index == Some(0))
        .await
        .expect("index 0 is committed");
    let requests = vec![
        append_request(elected(6, 2), Some((3, 2)), Vec::new(), Some((3, 2))),
        append_request(
            elected(6, 2),
            Some((1, 0)),
            vec![(3, false, Body::Blank)],
            None,
        ),
    ];
    let answers = stream(&handler, requests).await;
    assert!(
        matches!(answers.last(), Some(Err(RpcHandlerError::Invalid(_)))),
        "the second request is refused: {answers:?}"
    );
    node.wait_for(Duration::from_secs(10), |m| m.commit_index == Some(2))
        .await
        .expect("the first request's commit is taken");
    node.shutdown().await.expect("shutdown");
    assert_eq!(panics(&watch), Vec::<String>::new());
}

/// Peers 2 and 3 of a [`LyingPeers`] transport: they grant every pre-vote, and answer every vote
/// with a vote at term `u64::MAX`.
#[derive(Clone, Default)]
struct LyingPeers {
    votes_answered: std::sync::Arc<std::sync::atomic::AtomicU64>,
    answered: std::sync::Arc<tokio::sync::Notify>,
}

struct LyingPeer(LyingPeers, u64);

impl openraft::RaftNetworkFactory<raft_core::types::TypeConfig> for LyingPeers {
    type Network = LyingPeer;

    async fn new_client(&mut self, target: u64, _node: &BasicNode) -> LyingPeer {
        LyingPeer(self.clone(), target)
    }
}

impl LyingPeer {
    fn unreachable() -> rpc::RpcError {
        rpc::RpcError::Unreachable(rpc::Unreachable::from_string("not this request"))
    }
}

impl rpc::RaftNetworkV2<raft_core::types::TypeConfig> for LyingPeer {
    type SnapshotData = raft_core::snapshot::SnapshotData;

    async fn append_entries(
        &mut self,
        _req: rpc::AppendEntriesRequest,
        _option: rpc::RPCOption,
    ) -> Result<rpc::AppendEntriesResponse, rpc::RpcError> {
        Err(Self::unreachable())
    }

    async fn vote(
        &mut self,
        _req: rpc::VoteRequest,
        _option: rpc::RPCOption,
    ) -> Result<rpc::VoteResponse, rpc::RpcError> {
        let answer = rpc::VoteResponse {
            vote: Vote {
                leader_id: LeaderId {
                    term: u64::MAX,
                    node_id: self.1,
                },
                committed: false,
            },
            vote_granted: false,
            last_log_id: None,
        };
        self.0
            .votes_answered
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.0.answered.notify_waiters();
        Ok(answer)
    }

    async fn pre_vote(
        &mut self,
        req: rpc::VoteRequest,
        _option: rpc::RPCOption,
    ) -> Result<rpc::VoteResponse, rpc::RpcError> {
        Ok(rpc::VoteResponse {
            vote: req.vote,
            vote_granted: true,
            last_log_id: None,
        })
    }

    async fn transfer_leader(
        &mut self,
        _req: rpc::TransferLeaderRequest,
        _option: rpc::RPCOption,
    ) -> Result<rpc::TransferLeaderResponse, rpc::RpcError> {
        Err(Self::unreachable())
    }

    async fn full_snapshot(
        &mut self,
        _vote: Vote,
        _snapshot: rpc::Snapshot,
        _cancel: impl std::future::Future<Output = rpc::ReplicationClosed> + Send + 'static,
        _option: rpc::RPCOption,
    ) -> Result<rpc::SnapshotResponse, rpc::StreamingError> {
        Err(rpc::StreamingError::Unreachable(
            rpc::Unreachable::from_string("not this request"),
        ))
    }
}

/// A peer that *answers* with a term no election reaches is not believed: the node stays at
/// terms its elections reached, and keeps campaigning. Taking the answer's vote, the node's next
/// election overflowed `term + 1` (a panic in openraft's engine).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_past_the_last_term_is_dropped() {
    let watch = PanicWatch::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let peers = LyingPeers::default();
    let node = Node::start(config(dir.path()), KvStore::default(), peers.clone())
        .await
        .expect("starts");
    node.initialize([(1, "node-1"), (2, "node-2"), (3, "node-3")])
        .await
        .expect("initialize");
    // Enough elections that a node which took the first lying answer has campaigned again.
    let asked = async {
        loop {
            let answered = peers.answered.notified();
            if peers
                .votes_answered
                .load(std::sync::atomic::Ordering::SeqCst)
                >= 6
            {
                break;
            }
            answered.await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), asked)
        .await
        .expect("node 1 kept asking for votes");
    assert_eq!(
        panics(&watch),
        Vec::<String>::new(),
        "a task of the node panicked"
    );
    let term = node.metrics().term;
    assert!(term < 1_000, "node 1 took a lying peer's term: {term}");
    node.read(Consistency::Local, |_| ())
        .await
        .unwrap_or_else(|e| panic!("node 1 stopped on a lying answer: {e}"));
    node.shutdown().await.expect("shutdown");
}

/// A leader that rewrites its own earlier entries under the same vote (three entries, then one at
/// index 0) with a commit index past what the rewrite left (index 1): openraft had accepted the
/// first three under that vote and would commit index 1 of a log that now ends at 0, and its own
/// state check stopped the node. The commit is taken only up to the request's previous log id
/// (here none, so no commit at all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_past_a_same_leader_rewrite_moves_nothing() {
    run_without_panics(vec![
        Op::Append {
            vote: elected(6, 2),
            prev: None,
            entries: rising(3),
            commit: None,
        },
        Op::Append {
            vote: elected(6, 2),
            prev: None,
            entries: vec![(0, false, Body::Blank)],
            commit: Some((0, 1)),
        },
    ])
    .await;
}

/// Three entries from one leader (terms 1 to 3 at indexes 0 to 2), then requests of the same
/// leader that openraft refuses, each with a commit index: openraft had accepted index 2 under
/// that vote and moves the commit for a refused request too, so it would commit an index the log
/// no longer holds, and its own state check stopped the node. A commit index is taken only from
/// a request whose previous log id the log holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_requests_commit_index_moves_nothing() {
    let three = || Op::Append {
        vote: elected(6, 2),
        prev: None,
        entries: rising(3),
        commit: None,
    };
    let cases = [
        (
            "a previous log id that conflicts with the log, which cuts it to index 0",
            vec![Op::Append {
                vote: elected(6, 2),
                prev: Some((5, 1)),
                entries: Vec::new(),
                commit: Some((5, 1)),
            }],
        ),
        (
            "a previous log id past the log, after such a request cut it to index 0",
            vec![
                Op::Append {
                    vote: elected(6, 2),
                    prev: Some((5, 1)),
                    entries: Vec::new(),
                    commit: None,
                },
                Op::Append {
                    vote: elected(6, 2),
                    prev: Some((3, 7)),
                    entries: Vec::new(),
                    commit: Some((3, 7)),
                },
            ],
        ),
    ];
    for (what, then) in cases {
        let watch = PanicWatch::start();
        let ops = std::iter::once(three()).chain(then).collect();
        tokio::time::timeout(Duration::from_secs(30), run(ops))
            .await
            .expect("bounded");
        assert_eq!(panics(&watch), Vec::<String>::new(), "{what}");
    }
}

/// The same cut on one replication stream: openraft takes a stream's next request as soon as the
/// one before is queued, so a request with a commit index is checked before the refused request
/// just ahead of it has cut the log, while the log still holds its previous log id. It is judged
/// against the log the stream's unanswered requests will leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_index_queued_behind_a_cut_on_one_stream_moves_nothing() {
    for round in 0..5 {
        let (_dir, watch, node, handler) = watched_follower().await;
        let three = rising(3);
        let taken = handler
            .append_entries(append_request(elected(6, 2), None, three, None))
            .await;
        assert!(taken.is_ok(), "the three entries are taken: {taken:?}");
        let requests = vec![
            append_request(elected(6, 2), Some((5, 1)), Vec::new(), None),
            append_request(elected(6, 2), Some((3, 2)), Vec::new(), Some((3, 2))),
        ];
        let answers = stream(&handler, requests).await;
        assert!(!answers.is_empty(), "the stream is answered");
        // The refused request cut the log to (1, 0); a heartbeat naming it commits it.
        let heartbeat = append_request(elected(6, 2), Some((1, 0)), Vec::new(), Some((1, 0)));
        let _ = handler.append_entries(heartbeat).await;
        node.wait_for(Duration::from_secs(10), |m| m.commit_index == Some(0))
            .await
            .unwrap_or_else(|e| panic!("round {round}: the node does not commit: {e}"));
        let m = node.metrics();
        assert_eq!((m.last_log_index, m.commit_index), (Some(0), Some(0)));
        node.shutdown().await.expect("shutdown");
        assert_eq!(panics(&watch), Vec::<String>::new(), "round {round}");
    }
}
