//! The smallest embedding: a replicated, durable counter on three nodes.
//!
//! The three nodes run in one process and talk over raftkit's in-process router; with
//! raft-grpc they would be three machines. State lives in `./counter-data`: run it twice and the
//! count carries on from where it stopped, with no `initialize` the second time.
//!
//!     cargo run --example counter

use std::io::{self, Read, Write};
use std::time::Duration;

use raftkit::testing::Router;
use raftkit::{Config, Consistency, Node, StateMachine};

// ---- the user's part: the state and how it changes ----------------------------------------

#[derive(Default)]
struct Counter(i64);

impl StateMachine for Counter {
    type Command = i64; // add this much
    type Output = i64; // the new total
    type Snapshot = i64;

    fn apply(&mut self, add: i64) -> i64 {
        self.0 += add;
        self.0
    }
    fn snapshot(&self) -> i64 {
        self.0
    }
    fn write_snapshot(total: i64, out: &mut dyn Write) -> io::Result<()> {
        raftkit::write_serde(&total, out)
    }
    fn restore(&mut self, input: &mut dyn Read) -> io::Result<()> {
        self.0 = raftkit::read_serde(input)?;
        Ok(())
    }
}

// ---- running it -----------------------------------------------------------------------------

#[tokio::main]
async fn main() -> raftkit::Result<()> {
    let network = Router::new(0);
    let mut nodes = Vec::new();
    for id in 1..=3 {
        let config = Config::durable(id, format!("counter-data/node-{id}"));
        let node = Node::start(config, Counter::default(), network.transport(id)).await?;
        network.register(node.rpc_handler());
        nodes.push(node);
    }
    if !nodes[0].is_initialized().await? {
        nodes[0]
            .initialize((1..=3).map(|id| (id, format!("node-{id}"))))
            .await?;
    }

    let wait = Duration::from_secs(10);
    let leader_id = nodes[0]
        .wait_for(wait, |m| m.leader.is_some())
        .await?
        .leader;
    let leader = nodes
        .iter()
        .find(|n| Some(n.id()) == leader_id)
        .expect("the leader is one of ours");
    println!("node {} leads", leader.id());

    for add in [5, 10, -3] {
        let total = leader.write(add).await?;
        println!("add {add:>3} -> {total}");
    }
    let total = leader.read(Consistency::Linearizable, |c| c.0).await?;

    let committed = leader.metrics().applied_index;
    for node in &nodes {
        node.wait_for(wait, |m| m.applied_index >= committed)
            .await?;
        let local = node.read(Consistency::Local, |c| c.0).await?;
        println!("node {}: counter = {local}", node.id());
        assert_eq!(local, total, "every replica holds the same total");
    }
    for node in &nodes {
        node.shutdown().await?;
    }
    Ok(())
}
