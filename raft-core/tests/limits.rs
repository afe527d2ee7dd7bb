//! Limits of one node: a failed snapshot does not stop it, and the client session table stays
//! within its byte bound and never answers a retry wrongly.

use std::io;
use std::io::Read;
use std::io::Write;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use bytes::Bytes;
use raft_core::ApplyError;
use raft_core::Config;
use raft_core::Error;
use raft_core::Node;
use raft_core::Role;
use raft_core::Session;
use raft_core::StateMachine;
use raft_core::snapshot::SnapshotError;

/// Fails every snapshot while `FAIL_SNAPSHOTS` is set.
static FAIL_SNAPSHOTS: AtomicBool = AtomicBool::new(true);

/// A state machine whose output is as large as its command asks for.
#[derive(Default)]
struct Echo(u64);

impl StateMachine for Echo {
    /// How many bytes of output to produce.
    type Command = usize;
    type Output = Bytes;
    type Snapshot = u64;

    fn apply(&mut self, n: usize) -> Bytes {
        self.0 += 1;
        Bytes::from(vec![b'x'; n])
    }
    fn snapshot(&self) -> u64 {
        self.0
    }
    fn write_snapshot(s: u64, out: &mut dyn Write) -> io::Result<()> {
        if FAIL_SNAPSHOTS.load(Ordering::SeqCst) {
            return Err(io::Error::other("the disk said no"));
        }
        raft_core::write_serde(&s, out)
    }
    fn restore(&mut self, input: &mut dyn Read) -> io::Result<()> {
        self.0 = raft_core::read_serde(input)?;
        Ok(())
    }
}

async fn leader(config: Config) -> Node<Echo> {
    raft_core::testing::lone_leader(config, Echo::default())
        .await
        .unwrap()
}

fn config() -> Config {
    Config::in_memory(1)
        .with_timing(Duration::from_millis(20), Duration::from_millis(100))
        .with_request_timeout(Duration::from_secs(5))
}

#[tokio::test]
async fn a_failed_snapshot_is_retried_and_the_node_keeps_serving() {
    let node = leader(config().with_snapshots(10, 0)).await;
    // Snapshots fail: every write still commits, the failures are counted.
    for _ in 0..60 {
        node.write(1).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.snapshot_stats().failures == 0 {
        assert!(Instant::now() < deadline, "no snapshot was attempted");
        node.write(1).await.unwrap();
    }
    let stats = node.snapshot_stats();
    assert!(stats.last_error.unwrap().contains("the disk said no"));
    let m = node.metrics();
    assert_eq!(m.role, Role::Leader, "the node did not stop");
    assert_eq!(m.snapshot_index, None);
    // Backoff: a burst of writes does not make a snapshot attempt each.
    let failures = node.snapshot_stats().failures;
    for _ in 0..100 {
        node.write(1).await.unwrap();
    }
    assert!(
        node.snapshot_stats().failures <= failures + 2,
        "retries are paced: {} failures after 100 more writes",
        node.snapshot_stats().failures - failures
    );
    // A snapshot asked for now is built at once, pause or not, and its failure is the answer
    // (not a timeout: the request timeout is 5 s).
    let asked = Instant::now();
    match node.snapshot().await {
        Err(Error::Snapshot(SnapshotError::BuildFailed(reason))) => {
            assert!(reason.contains("the disk said no"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        asked.elapsed() < Duration::from_secs(4),
        "{:?}",
        asked.elapsed()
    );
    // Once the cause is gone, asking again succeeds at once, within the pause the failures
    // set.
    FAIL_SNAPSHOTS.store(false, Ordering::SeqCst);
    node.snapshot().await.unwrap();
    assert!(node.metrics().snapshot_index.is_some());
    assert_eq!(node.snapshot_stats().last_error, None);
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn large_responses_are_not_kept_and_a_retry_learns_the_outcome_is_unknown() {
    let mut c = config();
    c.max_session_response_bytes = 1_000;
    let node = leader(c).await;
    let id = node.register_session().await.unwrap();
    let small = Session {
        client_id: id,
        sequence: 1,
    };
    assert_eq!(node.write_in_session(small, 10).await.unwrap().len(), 10);
    assert_eq!(
        node.write_in_session(small, 10).await.unwrap().len(),
        10,
        "a retry of a small write gets its answer"
    );
    let big = Session {
        client_id: id,
        sequence: 2,
    };
    assert_eq!(
        node.write_in_session(big, 5_000).await.unwrap().len(),
        5_000
    );
    match node.write_in_session(big, 5_000).await {
        Err(Error::Rejected(ApplyError::ResponseNotKept {
            client_id,
            sequence: 2,
        })) if client_id == id => {}
        other => panic!("a retry of a large write must not be answered: {other:?}"),
    }
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_session_table_is_bounded_in_bytes() {
    let mut c = config();
    c.max_session_bytes = 100 * 1_064;
    c.max_session_response_bytes = 1_000;
    let node = leader(c).await;
    // 300 clients with responses just under 1,000 bytes: only the newest ~100 fit.
    let mut clients = Vec::new();
    for _ in 1..=300u64 {
        let client_id = node.register_session().await.unwrap();
        clients.push(client_id);
        let s = Session {
            client_id,
            sequence: 1,
        };
        node.write_in_session(s, 990).await.unwrap();
    }
    let retry = |client_id| Session {
        client_id,
        sequence: 1,
    };
    assert_eq!(
        node.write_in_session(retry(clients[299]), 990)
            .await
            .unwrap()
            .len(),
        990,
        "the newest client is remembered"
    );
    let mut remembered = 0;
    for &client_id in &clients {
        // A fresh sequence 2 for an evicted client is refused; a remembered one applies.
        let s = Session {
            client_id,
            sequence: 2,
        };
        match node.write_in_session(s, 0).await {
            Ok(_) => remembered += 1,
            Err(Error::Rejected(ApplyError::UnknownSession { .. })) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert!(
        (90..=101).contains(&remembered),
        "{remembered} of 300 clients remembered within 100 × 1,064 bytes"
    );
    node.shutdown().await.unwrap();
}

mod append_budget {
    use bytes::Bytes;
    use openraft::RaftLogReader;
    use openraft::storage::RaftLogStorage;
    use raft_core::log::LogStore;
    use raft_core::log::entry_cost;
    use raft_core::types::Entry;
    use raft_core::types::LeaderId;
    use raft_core::types::Payload;
    use raft_core::types::Proposal;

    fn entry(index: u64, size: usize) -> Entry {
        Entry {
            log_id: openraft::LogId::new(
                LeaderId {
                    term: 1,
                    node_id: 1,
                },
                index,
            ),
            payload: Payload::Normal(Proposal::Write(Bytes::from(vec![1u8; size]))),
        }
    }

    async fn batch(log: &mut LogStore, start: u64, end: u64) -> Vec<Entry> {
        let mut reader = log.get_log_reader().await;
        reader.limited_get_log_entries(start, end).await.unwrap()
    }

    /// The cost a replication batch is bounded by is an upper bound of what an entry takes
    /// encoded, for entries of many small writes too, with every number at its widest.
    #[test]
    fn an_entrys_cost_bounds_its_encoded_size() {
        use raft_core::Session;
        use raft_core::types::Request;
        let session = Session {
            client_id: u64::MAX,
            sequence: u64::MAX,
        };
        let combined = (0..2048)
            .map(|_| Request {
                session: Some(session),
                command: Bytes::new(),
            })
            .collect();
        let proposals = [
            Proposal::Combined(u64::MAX, combined),
            Proposal::TimedBatch(Some(session), u64::MAX, vec![Bytes::new(); 2048]),
            Proposal::TimedSessionWrite(session, u64::MAX, Bytes::from(vec![1u8; 100])),
        ];
        for p in proposals {
            let e = Entry {
                log_id: openraft::LogId::new(
                    LeaderId {
                        term: u64::MAX,
                        node_id: u64::MAX,
                    },
                    u64::MAX,
                ),
                payload: Payload::Normal(p),
            };
            let encoded = raft_core::codec::encode(&e).unwrap().len();
            assert!(
                encoded <= entry_cost(&e),
                "{encoded} bytes encoded, cost {}",
                entry_cost(&e)
            );
        }
    }

    #[tokio::test]
    async fn a_replication_batch_stays_within_the_byte_budget() {
        let mut log = LogStore::memory();
        log.set_append_budget(3 << 20);
        let mut entries: Vec<Entry> = (1..=10).map(|i| entry(i, 1 << 20)).collect();
        entries.push(entry(11, 5 << 20));
        entries.extend((12..=400).map(|i| entry(i, 100)));
        log.append_with(entries, |r| r.unwrap()).unwrap();

        // 1 MiB entries: as many as fit in 3 MiB with their framing, i.e. two.
        let got = batch(&mut log, 1, 11).await;
        assert_eq!(got.len(), 2);
        assert!(got.iter().map(entry_cost).sum::<usize>() <= 3 << 20);
        // An entry larger than the budget still goes, alone.
        let got = batch(&mut log, 11, 20).await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].log_id.index, 11);
        // Small writes are not cut: openraft's 300-entry batches pass whole.
        let got = batch(&mut log, 12, 312).await;
        assert_eq!(got.len(), 300);
    }

    #[tokio::test]
    async fn a_durable_log_applies_the_same_budget() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogStore::open(dir.path(), 1, Default::default()).unwrap();
        log.set_append_budget(3 << 20);
        let entries: Vec<Entry> = (1..=10).map(|i| entry(i, 1 << 20)).collect();
        let (tx, rx) = std::sync::mpsc::channel();
        log.append_with(entries, move |r| tx.send(r.is_ok()).unwrap())
            .unwrap();
        assert!(rx.recv().unwrap());
        assert_eq!(batch(&mut log, 1, 11).await.len(), 2);
        assert_eq!(batch(&mut log, 10, 11).await.len(), 1);
        let small: Vec<Entry> = (11..=400).map(|i| entry(i, 100)).collect();
        let (tx, rx) = std::sync::mpsc::channel();
        log.append_with(small, move |r| tx.send(r.is_ok()).unwrap())
            .unwrap();
        assert!(rx.recv().unwrap());
        let got = batch(&mut log, 11, 311).await;
        assert_eq!(got.len(), 300, "small entries batch whole");
        assert!(
            got.windows(2)
                .all(|w| w[1].log_id.index == w[0].log_id.index + 1)
        );
        // Large entries then small ones: the small ones fill what the budget has left.
        let got = batch(&mut log, 9, 311).await;
        assert_eq!(got.len(), 302);
        assert!(got.iter().map(entry_cost).sum::<usize>() <= 3 << 20);
    }
}
