//! The in-process cluster under each kind of fault: every history is checked for
//! linearizability and every replica must agree after the faults are healed. A failure prints
//! its seed; `RAFTKIT_SEED=<seed>` reruns it.

use std::time::Duration;

use raftkit::testing::Fault;
use raftkit::testing::ReadMode;
use raftkit::testing::RunOptions;
use raftkit::testing::Schedule;
use raftkit::testing::init_tracing;
use raftkit::testing::kv::KvWorkload;
use raftkit::testing::run;

/// One fault held twice, with the workload running throughout.
async fn under(fault: Fault) {
    init_tracing();
    let opts = RunOptions::default().with_schedule(Schedule::of(
        [fault.clone(), fault.clone()],
        Duration::from_millis(800),
    ));
    let report = run(KvWorkload::default(), opts)
        .await
        .expect("the run completes");
    report.assert_ok();
    assert!(report.faults_applied > 0, "no {fault:?} took effect");
    let (ok, failed, unknown) = report.history.counts();
    eprintln!(
        "{ok} ok, {failed} failed, {unknown} unknown; {} replicas agree",
        report.replicas.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_partitions() {
    under(Fault::PartitionRandom).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_isolation() {
    under(Fault::IsolateLeader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bridge_partitions() {
    under(Fault::Bridge).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_way_drops() {
    under(Fault::OneWayDrop).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn message_loss_and_delay() {
    under(Fault::LossyNetwork {
        loss: 0.2,
        max_delay_ms: 20,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_and_restart() {
    under(Fault::CrashRestart).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn power_loss_of_a_minority() {
    under(Fault::PowerLossMinority).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_transfers() {
    under(Fault::TransferLeader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn membership_changes_under_load() {
    under(Fault::MembershipChange).await;
}

/// The checker must catch a broken system: reads served locally by the node each client first
/// saw as leader, which keeps answering after it has been cut off and replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unsafe_local_reads_on_an_isolated_leader_are_caught() {
    init_tracing();
    let opts = RunOptions::default()
        .with_schedule(Schedule::of(
            [Fault::IsolateLeader],
            Duration::from_millis(2500),
        ))
        .with_reads(ReadMode::UnsafeLocal)
        .with_clients(4);
    let workload = KvWorkload {
        keys: 1,
        read_percent: 50,
        deletes: true,
    };
    let report = run(workload, opts).await.expect("the run completes");
    assert!(
        report.check.is_violation(),
        "stale reads from an isolated leader must be reported (seed {}): {:?}",
        report.seed,
        report.check
    );
    if let raftkit::testing::CheckResult::Violation(v) = &report.check {
        eprintln!("caught, as it should be:\n{v}");
    }
}
