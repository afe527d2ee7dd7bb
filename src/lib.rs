//! raftkit: an embeddable Raft library — bring a state machine, get it replicated.
//!
//! This crate re-exports the pieces:
//!
//! * [`raft_core`] (everything at the top level): [`StateMachine`], [`Node`], [`Config`], the
//!   durable log and snapshots. With the `testing` feature, [`testing`] adds an in-process
//!   cluster harness.
//!
//! See the README for a quick start.

pub use raft_core::*;
