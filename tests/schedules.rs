//! Property: under any schedule of faults and any operation mix, the history stays
//! linearizable and the replicas agree. proptest picks the schedules and, on failure, shrinks
//! to a short one; failures are kept in `proptest-regressions/schedules.txt`.
//!
//! A few cases run by default; `RAFTKIT_SOAK=1` runs many more, with longer schedules.

use std::time::Duration;

use proptest::prelude::*;
use raftkit::testing::Fault;
use raftkit::testing::RunOptions;
use raftkit::testing::Schedule;
use raftkit::testing::Step;
use raftkit::testing::kv::KvWorkload;
use raftkit::testing::run;

fn soak() -> bool {
    std::env::var("RAFTKIT_SOAK").is_ok_and(|v| v != "0")
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        Just(Fault::PartitionRandom),
        Just(Fault::IsolateLeader),
        Just(Fault::Bridge),
        Just(Fault::OneWayDrop),
        (0.05f64..0.3, 1u64..30)
            .prop_map(|(loss, max_delay_ms)| Fault::LossyNetwork { loss, max_delay_ms }),
        Just(Fault::CrashRestart),
        Just(Fault::PowerLossMinority),
        Just(Fault::TransferLeader),
        Just(Fault::MembershipChange),
    ]
}

fn schedule() -> impl Strategy<Value = Schedule> {
    let len = if soak() { 1..8usize } else { 1..3usize };
    prop::collection::vec((fault(), 200u64..900), len).prop_map(|steps| {
        Schedule::new(
            steps
                .into_iter()
                .map(|(fault, ms)| Step::new(fault, Duration::from_millis(ms))),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: if soak() { 40 } else { 3 },
        max_shrink_iters: 64,
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_schedule_keeps_the_history_linearizable(
        schedule in schedule(),
        keys in 1usize..6,
        read_percent in 0u32..80,
        clients in 1usize..6,
        seed in any::<u64>(),
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap();
        let opts = RunOptions::default().with_seed(seed).with_clients(clients).with_schedule(schedule.clone());
        let report = rt.block_on(run(KvWorkload { keys, read_percent, deletes: true }, opts)).expect("the run completes");
        prop_assert!(
            report.check.is_linearizable(),
            "seed {seed}, schedule {schedule:?}: {:?}",
            report.check
        );
        prop_assert!(report.replicas_agree(), "seed {seed}, schedule {schedule:?}: replicas diverged");
        prop_assert!(report.panics.is_empty(), "seed {seed}, schedule {schedule:?}: panicked at {:?}", report.panics);
        let (ok, failed, unknown) = report.history.counts();
        prop_assert!(ok > 0, "seed {seed}, schedule {schedule:?}: nothing succeeded ({failed} failed, {unknown} unknown)");
    }
}
