//! The cluster-wide storage alarm over gRPC: the leader asks every other voter for its NOSPACE
//! alarm (the `space_alarm` of its `Status` reply) once per quota check interval and reports
//! the answers to its node ([`Node::report_peer_alarms`]), which then refuses writes that grow
//! the state while any voter is in alarm. See raft-core's `space.rs` for the whole design.
//!
//! Followers ask nobody; a question costs one small unary call per voter per interval on the
//! pooled connections, and each is bounded by the interval.

use std::collections::BTreeMap;

use futures_util::future::join_all;
use raft_core::Node;
use raft_core::NodeId;
use raft_core::Role;
use raft_core::StateMachine;

use crate::pb;
use crate::server::LocalClient;

/// Runs until the node stops.
pub(crate) async fn run<S: StateMachine>(client: LocalClient<S>) {
    let node = client.node().clone();
    let every = node.config().quota.check_interval;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match node.role() {
            Role::Shutdown => return,
            Role::Leader => {}
            // A node that does not lead forgets what it gathered.
            _ => {
                node.report_peer_alarms(BTreeMap::new());
                continue;
            }
        }
        let answers = ask_voters(&client, &node).await;
        node.report_peer_alarms(answers);
    }
}

/// Each other voter that answered within the interval, with its alarm.
async fn ask_voters<S: StateMachine>(
    client: &LocalClient<S>,
    node: &Node<S>,
) -> BTreeMap<NodeId, Option<String>> {
    let m = node.metrics();
    let timeout = node.config().quota.check_interval;
    let asks = m
        .voters
        .iter()
        .filter(|id| **id != m.id)
        .filter_map(|id| Some((*id, m.members.get(id)?.clone())))
        .map(|(id, addr)| async move {
            let mut c = client.peer(&addr).ok()?;
            let reply = c
                .status(client.peer_request(pb::StatusRequest {}, timeout))
                .await
                .ok()?
                .into_inner();
            let alarm = (!reply.space_alarm.is_empty()).then_some(reply.space_alarm);
            Some((id, alarm))
        });
    join_all(asks).await.into_iter().flatten().collect()
}
