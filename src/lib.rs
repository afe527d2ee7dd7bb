//! raftkit: an embeddable Raft library — bring a state machine, get it replicated.
//!
//! Implement [`StateMachine`] for your state, start a [`Node`] per machine, and every write you
//! make through the leader is applied to every replica in the same order, durably, through
//! crashes and partitions. This crate gathers the pieces:
//!
//! * [`raft_core`], re-exported at the top level: [`StateMachine`], [`Node`], [`Config`], the
//!   durable log and snapshots. With the `testing` feature, `testing` adds an in-process
//!   network (`testing::Router`) and a fault-injection harness
//!   with a linearizability checker.
//! * [`grpc`] ([`raft_grpc`]): nodes on a network — the gRPC transport and server
//!   ([`grpc::GrpcNode`]) and a client that finds the leader ([`grpc::ClusterClient`]).
//!
//! # Thirty lines
//!
//! A replicated, durable counter on three nodes in one process (`examples/counter.rs`; `cargo
//! run --example counter`). With `raftkit::grpc` the nodes would be three machines, and only
//! how they are started changes:
//!
//! ```no_run
#![doc = include_str!("../examples/counter.rs")]
//! ```
//!
//! The README has the quick start, the kv server and how to run a cluster.

pub use raft_core::*;
pub use raft_grpc as grpc;
