//! Settings shared by a node's transport and server.

use crate::net::ChannelOptions;
use crate::net::Connector;
use crate::tls::TlsConfig;

/// How a node talks gRPC: TLS, connections, limits.
#[derive(Clone, Debug)]
pub struct GrpcOptions {
    /// TLS for peers and clients alike; with `require_client_cert`, mutual TLS. The node's
    /// certificate doubles as its client certificate towards peers.
    pub tls: Option<TlsConfig>,
    /// How outgoing connections are made (TCP unless testing over a simulated network).
    pub connector: Connector,
    /// Connection tuning.
    pub channel: ChannelOptions,
    /// Largest message sent or accepted, in bytes. Default 64 MiB.
    pub max_message_bytes: usize,
    /// Bytes per snapshot chunk sent. Default 1 MiB.
    pub snapshot_chunk_bytes: usize,
    /// Largest snapshot chunk accepted, in bytes. Default 4 MiB.
    pub max_snapshot_chunk_bytes: usize,
    /// Forward writes and membership calls that reach a follower to the leader (default), or
    /// answer them with the leader's address.
    pub forward_to_leader: bool,
}

impl Default for GrpcOptions {
    fn default() -> Self {
        GrpcOptions {
            tls: None,
            connector: Connector::default(),
            channel: ChannelOptions::default(),
            max_message_bytes: 64 << 20,
            snapshot_chunk_bytes: 1 << 20,
            max_snapshot_chunk_bytes: 4 << 20,
            forward_to_leader: true,
        }
    }
}
