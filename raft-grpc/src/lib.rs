//! raft-grpc: raftkit nodes over gRPC.
//!
//! Everything that crosses a socket lives here; raft-core stays free of networking.
//!
//! # Layout
//!
//! * `proto/raft.proto` — the wire protocol: the internal `RaftInternal` service between nodes
//!   and the public `Cluster` service for clients, on one port. Generated code is in [`pb`].
//! * `transport.rs` — [`GrpcTransport`], openraft's network factory over pooled channels:
//!   deadlines, failure classification for backoff, pipelined replication, chunked snapshots.
//! * `server/` — [`Server`]: both services on one port (`internal.rs`, `cluster.rs`), input
//!   validation, forwarding to the leader and follower reads (`forward.rs`), and
//!   [`LocalClient`] for code in the node's own process (`local.rs`).
//! * `request_error.rs` — [`RequestError`]: why a call to a node failed, typed, with whether a
//!   retry can help and whether a write may have been applied.
//! * `client.rs` — [`ClusterClient`]: finds the leader, retries with a session for exactly-once
//!   writes, spreads reads by a [`ReadPolicy`].
//! * `backup.rs` — the `Backup` stream: a node's export in bounded chunks, and the client
//!   side that writes and verifies it ([`ClusterClient::backup`]).
//! * `grpc_node.rs` — [`GrpcNode`]: node, transport and server started together.
//! * `alarms.rs` — the cluster-wide storage alarm: the leader asks its voters for theirs.
//! * [`auth`] — peer authentication (cluster secret or node certificates) and client roles.
//! * `addr.rs` — [`check_addr`]: what a node address is, for the server, the pool and tools.
//! * `net.rs` — the injectable [`Connector`] and the channel pool; `tls.rs` — [`TlsConfig`]
//!   and the reloadable [`ReloadableTls`]; `accept.rs` — the server's TLS accept loop, one
//!   bounded handshake task per connection; `status.rs` — errors on the wire; `options.rs` — [`GrpcOptions`]; `wire.rs` — payload
//!   encoding.
//!
//! ```no_run
//! # use raft_core::{Config, Queryable};
//! # use raft_grpc::{GrpcNode, GrpcOptions};
//! # async fn demo<S: Queryable + Default>() -> Result<(), Box<dyn std::error::Error>> {
//! let listener = tokio::net::TcpListener::bind("10.0.0.1:7000").await?;
//! let node = GrpcNode::start(Config::durable(1, "/var/lib/app"), S::default(), listener, GrpcOptions::default()).await?;
//! if !node.node().is_initialized().await? {
//!     node.node().initialize([(1, "10.0.0.1:7000"), (2, "10.0.0.2:7000"), (3, "10.0.0.3:7000")]).await?;
//! }
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod accept;
mod addr;
mod alarms;
pub mod auth;
mod backoff;
mod backup;
mod budget;
mod client;
mod grpc_node;
mod net;
mod options;
pub mod pb;
mod peer_health;
mod request_error;
mod server;
pub mod status;
mod tls;
mod transport;
mod wire;

pub use crate::accept::ConnectionLimits;
pub use crate::accept::ConnectionPlace;
pub use crate::addr::AddrError;
pub use crate::addr::check_addr;
pub use crate::auth::Auth;
pub use crate::auth::AuthConfig;
pub use crate::auth::ClusterSecret;
pub use crate::auth::Credentials;
pub use crate::auth::Role;
pub use crate::auth::User;
pub use crate::backoff::Backoff;
pub use crate::backup::CHUNK_BYTES as BACKUP_CHUNK_BYTES;
pub use crate::client::ClientError;
pub use crate::client::ClientOptions;
pub use crate::client::ClusterClient;
pub use crate::client::NodeStatus;
pub use crate::client::ReadPolicy;
pub use crate::client::StatusReplyError;
pub use crate::grpc_node::GrpcNode;
pub use crate::grpc_node::StartError;
pub use crate::net::ChannelOptions;
pub use crate::net::Connector;
pub use crate::net::Io;
pub use crate::options::GrpcOptions;
pub use crate::options::LimitsError;
pub use crate::options::MESSAGE_FRAMING;
pub use crate::request_error::RequestError;
pub use crate::server::LocalClient;
pub use crate::server::ServeError;
pub use crate::server::Server;
pub use crate::server::ServerStats;
pub use crate::tls::ReloadableTls;
pub use crate::tls::TlsConfig;
pub use crate::tls::TlsError;
pub use crate::transport::GrpcConnection;
pub use crate::transport::GrpcTransport;
