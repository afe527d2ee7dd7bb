//! The real gRPC stack on turmoil's simulated network: partition the leader from the majority,
//! check that the majority elects a new leader and keeps accepting writes while nothing sent to
//! the isolated old leader is acknowledged, then repair and check that every replica converges.
//!
//! Runs under several seeds; `RAFTKIT_TURMOIL_SEEDS=1,2,3,...` picks others. (Message timing
//! follows the seed; openraft's own election timers draw from the thread RNG, so a seed fixes
//! the network's behaviour, not every interleaving.)

mod common;

use std::time::Duration;

use common::Cmd;
use common::sim::client_for;
use common::sim::converged;
use common::sim::for_each_seed;
use common::sim::host;
use common::sim::leader_of;
use common::sim::three_nodes;
use common::sim::until;
use raft_core::NodeId;

fn scenario(seed: u64) -> turmoil::Result {
    let mut sim = three_nodes(seed, Duration::from_secs(120));
    sim.client("client", async move {
        let all = [1, 2, 3];
        let client = client_for(&all, Duration::from_secs(20));
        for i in 0..10 {
            client
                .write(Cmd::Put(format!("before-{i}"), "x".into()))
                .await?;
        }
        let seen = until(&client, &all, Duration::from_secs(10), "a leader", |s| {
            leader_of(s).is_some()
        })
        .await?;
        let old = leader_of(&seen).ok_or("no leader")?;
        let majority: Vec<NodeId> = all.iter().copied().filter(|i| *i != old).collect();

        for other in &majority {
            turmoil::partition(host(old), host(*other));
        }

        // The majority elects a new leader and keeps accepting writes.
        let seen = until(
            &client,
            &majority,
            Duration::from_secs(15),
            "a new leader",
            |s| leader_of(s).is_some_and(|l| l != old),
        )
        .await?;
        let new = leader_of(&seen).ok_or("no new leader")?;
        let to_majority = client_for(&majority, Duration::from_secs(20));
        for i in 0..10 {
            to_majority
                .write(Cmd::Put(format!("during-{i}"), "y".into()))
                .await?;
        }

        // Writes that can only reach the isolated old leader are never acknowledged.
        let to_old = client_for(&[old], Duration::from_secs(3));
        for i in 0..3 {
            let r = to_old
                .write(Cmd::Put(format!("lost-{i}"), "z".into()))
                .await;
            if let Ok(v) = r {
                return Err(
                    format!("the isolated old leader acknowledged write lost-{i}: {v:?}").into(),
                );
            }
        }

        // Heal: everyone converges on the majority's history.
        for other in &majority {
            turmoil::repair(host(old), host(*other));
        }
        to_majority
            .write(Cmd::Put("after".into(), "w".into()))
            .await?;
        let first = converged(&client, &all).await?;
        for i in 0..10 {
            for k in [format!("before-{i}"), format!("during-{i}")] {
                if !first.contains_key(&k) {
                    return Err(format!("acknowledged write {k} lost").into());
                }
            }
        }
        if first.keys().any(|k| k.starts_with("lost-")) {
            return Err(format!(
                "an unacknowledged write on the isolated leader survived: {first:?}"
            )
            .into());
        }
        tracing::info!(seed, old, new, "partition scenario passed");
        Ok(())
    });
    sim.run()
}

#[test]
fn leader_partition_on_simulated_network() {
    for_each_seed(&[1, 2, 3], scenario);
}
