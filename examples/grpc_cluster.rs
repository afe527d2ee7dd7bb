//! Three nodes talking gRPC on localhost, a client that finds the leader, and a leader that goes
//! away. In production each node runs in its own process on its own machine; only the
//! addresses change.
//!
//!     cargo run --example grpc_cluster

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::time::Duration;

use raftkit::grpc::{ClientOptions, ClusterClient, GrpcNode, GrpcOptions};
use raftkit::{Config, Consistency, Queryable, StateMachine};
use serde::{Deserialize, Serialize};

// ---- the user's part: a replicated map -------------------------------------------------------

#[derive(Default)]
struct Map(BTreeMap<String, String>);

#[derive(Serialize, Deserialize)]
struct Set(String, String);

impl StateMachine for Map {
    type Command = Set;
    type Output = Option<String>; // the previous value
    type Snapshot = BTreeMap<String, String>;

    fn apply(&mut self, Set(k, v): Set) -> Option<String> {
        self.0.insert(k, v)
    }
    fn snapshot(&self) -> Self::Snapshot {
        self.0.clone()
    }
    fn write_snapshot(map: Self::Snapshot, out: &mut dyn Write) -> io::Result<()> {
        raftkit::write_serde(&map, out)
    }
    fn restore(&mut self, input: &mut dyn Read) -> io::Result<()> {
        self.0 = raftkit::read_serde(input)?;
        Ok(())
    }
}

impl Queryable for Map {
    type Query = String; // a key
    type Reply = Option<String>;

    fn query(&self, key: String) -> Option<String> {
        self.0.get(&key).cloned()
    }
}

// ---- running it -----------------------------------------------------------------------------

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Each node listens on its own port; the addresses are how the nodes and clients find it.
    let mut listeners = Vec::new();
    for _ in 0..3 {
        listeners.push(tokio::net::TcpListener::bind("127.0.0.1:0").await?);
    }
    let addrs: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.to_string()))
        .collect::<Result<_, _>>()?;

    let mut nodes = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let config = Config::in_memory(i as u64 + 1); // Config::durable(id, dir) to survive restarts
        nodes
            .push(GrpcNode::start(config, Map::default(), listener, GrpcOptions::default()).await?);
    }
    let members = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| (i as u64 + 1, a.clone()));
    nodes[0].node().initialize(members).await?;

    // A client needs only some of the addresses; it finds the leader itself.
    let client = ClusterClient::<Map>::new(addrs.clone(), ClientOptions::default())?;
    client.write(Set("greeting".into(), "hello".into())).await?;
    let (value, served_by) = client
        .read_from("greeting".into(), Consistency::Linearizable)
        .await?;
    println!("greeting = {value:?} (answered by node {served_by})");

    // Take the leader away; the other two elect a new one and the client follows.
    let leader = nodes[0]
        .node()
        .wait_for(Duration::from_secs(10), |m| m.leader.is_some())
        .await?
        .leader;
    let at = nodes
        .iter()
        .position(|n| Some(n.node().id()) == leader)
        .expect("a known node leads");
    let old = nodes.remove(at);
    println!("shutting down the leader, node {}", old.node().id());
    old.shutdown().await?;

    let previous = client
        .write(Set("greeting".into(), "hello again".into()))
        .await?;
    let (value, served_by) = client
        .read_from("greeting".into(), Consistency::Linearizable)
        .await?;
    println!("greeting = {value:?} (was {previous:?}; answered by node {served_by})");
    for n in nodes {
        n.shutdown().await?;
    }
    Ok(())
}
