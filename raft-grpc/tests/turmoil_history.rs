//! The linearizability driver over the real gRPC stack on turmoil: clients write and read
//! through `ClusterClient` while the network is partitioned in several ways; the history must be
//! linearizable and the replicas equal after repair. Seeds as in `turmoil.rs`
//! (`RAFTKIT_TURMOIL_SEEDS`).

mod common;

use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::Kv;

use common::sim::client_for;
use common::sim::converged;
use common::sim::for_each_seed;
use common::sim::host;
use common::sim::leader_of;
use common::sim::three_nodes;
use common::sim::until;
use raft_core::Consistency;
use raft_core::NodeId;
use raft_core::Session;
use raft_core::testing::Attempt;
use raft_core::testing::ClientOptions;
use raft_core::testing::KvOp;
use raft_core::testing::KvResult;
use raft_core::testing::Recorder;
use raft_core::testing::Target;
use raft_core::testing::Workload;
use raft_core::testing::kv::KvWorkload;
use raft_core::testing::run_clients;
use raft_grpc::ClientError;
use raft_grpc::ClusterClient;

/// The cluster as the driver sees it: a `ClusterClient` that knows every node.
struct GrpcTarget {
    client: ClusterClient<Kv>,
    workload: KvWorkload,
}

impl Target for GrpcTarget {
    type W = KvWorkload;

    async fn write(
        &self,
        _client: usize,
        session: Session,
        command: common::Cmd,
        input: &KvOp,
    ) -> Attempt<KvResult> {
        match self.client.write_in_session(session, command).await {
            Ok(out) => Attempt::Ok(self.workload.write_output(input, out)),
            Err(ClientError::Rejected(raft_core::ApplyError::UnknownSession { .. })) => {
                Attempt::SessionLost
            }
            // The client gave up, or a node failed the write after it may have been applied.
            Err(e) if e.outcome_unknown() => Attempt::Unknown,
            Err(_) => Attempt::Failed,
        }
    }

    async fn register_session(&self, _client: usize) -> Option<u64> {
        self.client.register_session().await.ok()
    }

    async fn read(&self, _client: usize, input: &KvOp) -> Attempt<KvResult> {
        let query = self.workload.query(input);
        match self.client.read(query, Consistency::Linearizable).await {
            Ok(reply) => Attempt::Ok(self.workload.read_output(input, reply)),
            Err(_) => Attempt::Failed,
        }
    }
}

fn scenario(seed: u64) -> turmoil::Result {
    let mut sim = three_nodes(seed, Duration::from_secs(180));
    sim.client("driver", async move {
        let all: [NodeId; 3] = [1, 2, 3];
        let workload = KvWorkload {
            keys: 3,
            read_percent: 40,
            deletes: false,
        };
        let target = GrpcTarget {
            client: client_for(&all, Duration::from_secs(2)),
            workload: workload.clone(),
        };
        let admin = client_for(&all, Duration::from_secs(5));
        until(&admin, &all, Duration::from_secs(10), "a leader", |s| {
            leader_of(s).is_some()
        })
        .await?;

        let recorder = Recorder::new();
        let stop = AtomicBool::new(false);
        let opts = ClientOptions::default()
            .with_clients(4)
            .with_seed(seed)
            .with_op_timeout(Duration::from_secs(6))
            .with_attempt_timeout(Duration::from_secs(3));
        let clients = run_clients(&target, &workload, &recorder, opts, &stop);
        let nemesis = async {
            // Isolate the leader, split one follower off, then cut one node off one way.
            let seen = until(&admin, &all, Duration::from_secs(10), "a leader", |s| {
                leader_of(s).is_some()
            })
            .await?;
            let leader = leader_of(&seen).ok_or("no leader")?;
            for other in all.iter().filter(|n| **n != leader) {
                turmoil::partition(host(leader), host(*other));
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            for other in all.iter().filter(|n| **n != leader) {
                turmoil::repair(host(leader), host(*other));
            }
            let follower = *all.iter().find(|n| **n != leader).ok_or("no follower")?;
            turmoil::partition(host(follower), host(leader));
            tokio::time::sleep(Duration::from_secs(1)).await;
            turmoil::repair(host(follower), host(leader));
            turmoil::partition_oneway(host(3), host(1));
            tokio::time::sleep(Duration::from_secs(1)).await;
            turmoil::repair_oneway(host(3), host(1));
            tokio::time::sleep(Duration::from_millis(500)).await;
            stop.store(true, Ordering::Relaxed);
            Ok::<(), Box<dyn std::error::Error>>(())
        };
        let ((), faults) = tokio::join!(clients, nemesis);
        faults?;

        // Everyone converges on one state.
        converged(&admin, &all).await?;

        let history = recorder.history();
        let (ok, failed, unknown) = history.counts();
        let verdict = raft_core::testing::check::<<KvWorkload as Workload>::Model>(
            &history,
            Duration::from_secs(30),
        );
        match verdict {
            raft_core::testing::CheckResult::Linearizable => {}
            other => return Err(format!("seed {seed}: {other:?}").into()),
        }
        if ok < 20 {
            return Err(format!(
                "too little got done: {ok} ok, {failed} failed, {unknown} unknown"
            )
            .into());
        }
        tracing::info!(
            seed,
            ok,
            failed,
            unknown,
            "history over gRPC is linearizable"
        );
        Ok(())
    });
    sim.run()
}

#[test]
fn histories_over_grpc_on_a_simulated_network_are_linearizable() {
    for_each_seed(&[11, 12], scenario);
}
