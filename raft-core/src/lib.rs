//! raft-core: a replicated state machine on a durable log.
//!
//! You implement [`StateMachine`] for your state, start a [`Node`] per machine with a
//! [`Config`] and a transport, and call [`Node::write`] and [`Node::read`]. raft-core runs
//! consensus (on [openraft], kept behind these types), keeps the log durable, takes snapshots and
//! makes retried writes idempotent. It contains no networking code: the gRPC transport lives in
//! `raft-grpc`, and an in-process one for tests in [`testing`] (feature `testing`).
//!
//! # Layout
//!
//! * `state_machine.rs` — [`StateMachine`], the only trait a user implements.
//! * `node.rs` — [`Node`]: start, initialize, write, read, membership, leader transfer,
//!   metrics, shutdown.
//! * `cluster_id.rs` — [`ClusterId`]: drawn at initialize, stored with the node's data, carried
//!   by every internal RPC and recorded in every snapshot file; a node refuses another cluster's
//!   requests and snapshots.
//! * `clock.rs` — [`Clock`]: the leader's time, stamped on writes and reads (for expiry), and
//!   the clock assumption that remains.
//! * `incarnation.rs` — a wiped node must come back under a new id: each data directory's
//!   incarnation, bound to its member id in the replicated state and checked on every RPC.
//! * `addr.rs` — [`same_address`]: when two member addresses name one endpoint.
//! * `config.rs` — [`Config`] and its defaults; `error.rs` — the one [`Error`] enum;
//!   `leader.rs` — [`LeaderHint`], the one answer to "who leads";
//!   `metrics.rs` — [`Metrics`].
//! * `apply.rs` — the bridge from [`StateMachine`] to openraft: decoding commands, client
//!   sessions (`session.rs`), building and installing snapshots.
//! * `space.rs` — the storage quota and the cluster-wide NOSPACE alarm ([`QuotaOptions`]);
//!   `housekeeping.rs` — the node's background task: disk sampling and snapshots by log size.
//! * `log/` — the durable segmented write-ahead log with group commit, and an in-memory log. The
//!   on-disk format is documented in [`log`].
//! * `backup.rs` — online backup ([`Node::export_snapshot`]) and disaster recovery
//!   ([`restore_data_dir`]): a new cluster that starts from a backup.
//! * `snapshot.rs` — snapshot files: format (with the cluster id), checksum, streaming reads,
//!   receiving, and what a snapshot costs in memory (never a second copy of the state).
//! * `transport.rs` — the seam a transport implements ([`Transport`], [`RpcHandler`]).
//! * `types.rs` — the types openraft is instantiated with; `disk.rs` — their stable on-disk
//!   forms; `codec.rs` — the one serialisation format (postcard), including the stream decoder
//!   behind [`read_serde`] and [`read_serde_each`].
//! * `testing/` — the in-process router and cluster harness (feature `testing`).
//!
//! [openraft]: https://docs.rs/openraft

#![warn(missing_docs)]

mod addr;
mod answers;
mod apply;
pub mod backup;
mod clock;
pub mod cluster_id;
pub mod codec;
mod config;
mod disk;
mod error;
mod fsutil;
mod housekeeping;
pub mod incarnation;
mod leader;
pub mod log;
mod metrics;
mod node;
mod session;
pub mod snapshot;
mod space;
mod state_machine;
mod sync;
#[cfg(feature = "testing")]
pub mod testing;
pub mod transport;
pub mod types;
mod validate;

pub use crate::addr::same_address;
pub use crate::apply::SnapshotStats;
pub use crate::backup::BackupError;
pub use crate::backup::BackupInfo;
pub use crate::backup::restore_data_dir;
pub use crate::clock::Clock;
pub use crate::clock::SystemClock;
pub use crate::cluster_id::ClusterId;
pub use crate::config::Config;
pub use crate::config::Storage;
pub use crate::error::Error;
pub use crate::error::Result;
pub use crate::leader::LeaderHint;
pub use crate::metrics::Metrics;
pub use crate::metrics::MetricsWatch;
pub use crate::metrics::Role;
pub use crate::metrics::UnknownRole;
pub use crate::node::Consistency;
pub use crate::node::Node;
pub use crate::node::ReadIndex;
pub use crate::space::DiskUsage;
pub use crate::space::QuotaOptions;
pub use crate::space::StorageStatus;
pub use crate::state_machine::ApplyContext;
pub use crate::state_machine::Queryable;
pub use crate::state_machine::ReadContext;
pub use crate::state_machine::StateMachine;
pub use crate::state_machine::read_serde;
pub use crate::state_machine::read_serde_each;
pub use crate::state_machine::write_serde;
pub use crate::transport::RpcHandler;
pub use crate::transport::Transport;
pub use crate::types::ApplyError;
pub use crate::types::NodeId;
pub use crate::types::Session;
pub use crate::types::SessionCapacity;
