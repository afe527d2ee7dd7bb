//! raftkit: an embeddable Raft library — bring a state machine, get it replicated.
//!
//! This crate gathers the pieces:
//!
//! * [`raft_core`], re-exported at the top level: [`StateMachine`], [`Node`], [`Config`], the
//!   durable log and snapshots. With the `testing` feature, [`testing`] adds an in-process
//!   cluster harness.
//! * [`grpc`] ([`raft_grpc`]): nodes on a network — the gRPC transport and server
//!   ([`grpc::GrpcNode`]) and a client that finds the leader ([`grpc::ClusterClient`]).
//!
//! See the README for a quick start.

pub use raft_core::*;
pub use raft_grpc as grpc;
