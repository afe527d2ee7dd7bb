//! The linearizability checker itself: it rejects known-bad histories, agrees with a brute-force
//! search on small random ones, and handles a large key-value history within its budget.

use std::time::Duration;
use std::time::Instant;

use proptest::prelude::*;
use raftkit::testing::History;
use raftkit::testing::KvMap;
use raftkit::testing::KvOp;
use raftkit::testing::KvResult;
use raftkit::testing::Model;
use raftkit::testing::Operation;
use raftkit::testing::Outcome;
use raftkit::testing::Register;
use raftkit::testing::RegisterOp;
use raftkit::testing::RegisterResult;
use raftkit::testing::check;
use raftkit::testing::checker::check_brute_force;
use raftkit::testing::synth;
use raftkit::testing::synth::Fault;
use rand::Rng;
use rand::SeedableRng;
use rand::rngs::StdRng;

const BUDGET: Duration = Duration::from_secs(10);

fn op<I, O>(
    id: usize,
    client: usize,
    input: I,
    call: u64,
    ret: Option<u64>,
    outcome: Outcome<O>,
) -> Operation<I, O> {
    Operation {
        id,
        client,
        input,
        call,
        ret,
        outcome,
    }
}

fn write(id: usize, v: u64, call: u64, ret: u64) -> Operation<RegisterOp, RegisterResult> {
    op(
        id,
        id,
        RegisterOp::Write(v),
        call,
        Some(ret),
        Outcome::Ok(RegisterResult::Written),
    )
}

fn read(id: usize, v: Option<u64>, call: u64, ret: u64) -> Operation<RegisterOp, RegisterResult> {
    op(
        id,
        id,
        RegisterOp::Read,
        call,
        Some(ret),
        Outcome::Ok(RegisterResult::Value(v)),
    )
}

fn verdict(ops: Vec<Operation<RegisterOp, RegisterResult>>) -> (bool, bool) {
    let h = History::from_ops(ops);
    let fast = check::<Register>(&h, BUDGET);
    assert!(!matches!(
        fast,
        raftkit::testing::CheckResult::Unknown { .. }
    ));
    (fast.is_linearizable(), check_brute_force::<Register>(&h))
}

#[test]
fn a_stale_read_is_rejected() {
    let h = vec![
        write(0, 1, 0, 10),
        write(1, 2, 20, 30),
        read(2, Some(1), 40, 50),
    ];
    assert_eq!(verdict(h.clone()), (false, false));
    let result = check::<Register>(&History::from_ops(h), BUDGET);
    let raftkit::testing::CheckResult::Violation(v) = result else {
        panic!("expected a violation")
    };
    let text = v.to_string();
    assert!(
        text.contains("Read"),
        "the explanation names the stuck read: {text}"
    );
    assert!(v.candidates.iter().any(|o| o.id == 2), "{text}");
}

#[test]
fn a_lost_acknowledged_write_is_rejected() {
    assert_eq!(
        verdict(vec![write(0, 1, 0, 10), read(1, None, 20, 30)]),
        (false, false)
    );
}

#[test]
fn a_read_of_a_value_never_written_is_rejected() {
    assert_eq!(
        verdict(vec![write(0, 1, 0, 10), read(1, Some(7), 5, 30)]),
        (false, false)
    );
}

#[test]
fn concurrent_and_uncertain_operations_are_accepted() {
    // A read concurrent with a write may see either value.
    assert_eq!(
        verdict(vec![write(0, 1, 0, 10), read(1, Some(1), 5, 8)]),
        (true, true)
    );
    assert_eq!(
        verdict(vec![write(0, 1, 0, 10), read(1, None, 5, 8)]),
        (true, true)
    );
    // An unknown write may have happened, or not.
    let unknown = |id, v, call| op(id, id, RegisterOp::Write(v), call, None, Outcome::Unknown);
    assert_eq!(
        verdict(vec![unknown(0, 1, 0), read(1, Some(1), 20, 30)]),
        (true, true)
    );
    assert_eq!(
        verdict(vec![unknown(0, 1, 0), read(1, None, 20, 30)]),
        (true, true)
    );
    // ... but once seen, it cannot be unseen.
    assert_eq!(
        verdict(vec![
            unknown(0, 1, 0),
            read(1, Some(1), 20, 30),
            read(2, None, 40, 50)
        ]),
        (false, false)
    );
    // A failed write did not happen.
    let failed = op(0, 0, RegisterOp::Write(1), 0, Some(5), Outcome::Failed);
    assert_eq!(
        verdict(vec![failed.clone(), read(1, None, 20, 30)]),
        (true, true)
    );
    assert_eq!(
        verdict(vec![failed, read(1, Some(1), 20, 30)]),
        (false, false)
    );
}

/// A random register history: each client runs operations back to back; every operation takes
/// effect at a random point inside its interval, so the history is linearizable unless `corrupt`
/// changes an answer. Some operations end unknown (and may or may not have taken effect) or
/// failed (and did not).
fn register_history(
    seed: u64,
    n: usize,
    clients: usize,
    corrupt: bool,
) -> History<RegisterOp, RegisterResult> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut clock = vec![0u64; clients];
    struct Planned {
        op: Operation<RegisterOp, RegisterResult>,
        point: u64,
        applies: bool,
    }
    let mut planned = Vec::new();
    for id in 0..n {
        let c = rng.random_range(0..clients);
        let call = clock[c] + rng.random_range(0..5);
        let ret = call + rng.random_range(1..20);
        clock[c] = ret + 1;
        let input = match rng.random_range(0..3) {
            0 => RegisterOp::Read,
            1 => RegisterOp::Write(rng.random_range(0..3)),
            _ => RegisterOp::Cas {
                from: rng.random_range(0..3),
                to: rng.random_range(0..3),
            },
        };
        let fate = rng.random_range(0..10);
        let (outcome, ret, applies) = match fate {
            0 => (Outcome::Unknown, None, rng.random_bool(0.5)),
            1 => (Outcome::Failed, Some(ret), false),
            _ => (Outcome::Ok(RegisterResult::Written), Some(ret), true),
        };
        planned.push(Planned {
            op: op(id, c, input, call, ret, outcome),
            point: rng.random_range(call..=call + 19),
            applies,
        });
    }
    // Apply in order of the effect points to compute the answers.
    let mut order: Vec<usize> = (0..planned.len()).collect();
    order.sort_by_key(|i| {
        let p = &planned[*i];
        (p.point.min(p.op.ret.unwrap_or(u64::MAX)), *i)
    });
    let mut state = Register::init();
    for i in order {
        let p = &mut planned[i];
        if !p.applies {
            continue;
        }
        let answer = match (&p.op.input, &state) {
            (RegisterOp::Read, Register(v)) => RegisterResult::Value(*v),
            (RegisterOp::Write(_), _) => RegisterResult::Written,
            (RegisterOp::Cas { from, .. }, Register(v)) => {
                RegisterResult::Swapped(*v == Some(*from))
            }
        };
        state = state.step(&p.op.input, Some(&answer)).unwrap_or(state);
        if matches!(p.op.outcome, Outcome::Ok(_)) {
            p.op.outcome = Outcome::Ok(answer);
        }
    }
    let mut ops: Vec<_> = planned.into_iter().map(|p| p.op).collect();
    if corrupt {
        let reads: Vec<usize> = (0..ops.len())
            .filter(|i| matches!(ops[*i].outcome, Outcome::Ok(RegisterResult::Value(_))))
            .collect();
        if !reads.is_empty() {
            let i = reads[rng.random_range(0..reads.len())];
            ops[i].outcome = Outcome::Ok(RegisterResult::Value(Some(rng.random_range(0..4))));
        }
    }
    History::from_ops(ops)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// The memoised search and the exhaustive one agree, on linearizable and broken histories.
    #[test]
    fn checker_agrees_with_brute_force(seed in any::<u64>(), n in 1usize..8, clients in 1usize..4, corrupt in any::<bool>()) {
        let h = register_history(seed, n, clients, corrupt);
        let fast = check::<Register>(&h, BUDGET);
        let decided = !matches!(fast, raftkit::testing::CheckResult::Unknown { .. });
        prop_assert!(decided, "the checker gave up on a tiny history");
        prop_assert_eq!(fast.is_linearizable(), check_brute_force::<Register>(&h), "history: {:?}", h);
        if !corrupt {
            prop_assert!(fast.is_linearizable(), "an uncorrupted history is linearizable: {:?}", h);
        }
    }
}

/// 10,000 operations over 100 keys from 5 clients, checked key by key: the valid history, and
/// the same workload with a stale read, a lost append or a value never written.
#[test]
fn a_large_key_value_history_is_checked_within_budget() {
    let budget = Duration::from_secs(60);
    let history = synth::kv_history(7, 10_000, 100, 5, Fault::None);
    let started = Instant::now();
    let result = check::<KvMap>(&history, budget);
    let took = started.elapsed();
    eprintln!("checked 10,000 operations over 100 keys from 5 clients in {took:?}");
    assert!(result.is_linearizable(), "{result:?}");
    assert!(took < budget);

    for fault in [Fault::StaleRead, Fault::LostAppend] {
        let bad = synth::kv_history(7, 10_000, 100, 5, fault);
        let started = Instant::now();
        let verdict = check::<KvMap>(&bad, budget);
        eprintln!("{fault:?} found in {:?}", started.elapsed());
        assert!(verdict.is_violation(), "{fault:?}: {verdict:?}");
    }

    // The same history with one read changed to a value nobody wrote is caught.
    let mut bad = history.clone();
    let i = bad
        .ops
        .iter()
        .rposition(|o| {
            matches!(o.input, KvOp::Get(_))
                && matches!(o.outcome, Outcome::Ok(KvResult::Value(Some(_))))
        })
        .expect("a read of a present key");
    bad.ops[i].outcome = Outcome::Ok(KvResult::Value(Some("never written".into())));
    assert!(check::<KvMap>(&bad, budget).is_violation());
}

#[test]
fn the_budget_yields_unknown_rather_than_a_guess() {
    // Many concurrent writes of distinct values and one impossible read make the search
    // exhaust every order; with no time at all it must give up, not guess.
    let mut ops: Vec<_> = (0..40).map(|i| write(i, i as u64, 0, 1000)).collect();
    ops.push(read(40, Some(999), 2000, 2001));
    let h = History::from_ops(ops);
    let r = check::<Register>(&h, Duration::ZERO);
    assert!(
        matches!(r, raftkit::testing::CheckResult::Unknown { .. }),
        "{r:?}"
    );
}
