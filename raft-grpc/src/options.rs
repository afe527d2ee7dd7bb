//! Settings shared by a node's transport and server.

use std::time::Duration;

use crate::auth::Auth;
use crate::net::ChannelOptions;
use crate::net::Connector;
use crate::tls::ReloadableTls;

/// How a node talks gRPC: TLS, connections, limits. Start from [`GrpcOptions::default`] and
/// adjust with the `with_*` methods.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct GrpcOptions {
    /// TLS for peers and clients alike; with `require_client_cert`, mutual TLS. The node's
    /// certificate doubles as its client certificate towards peers. Reloading it
    /// ([`ReloadableTls::reload`]) changes the certificate served to new connections and
    /// presented on new connections to peers, without a restart.
    pub tls: Option<ReloadableTls>,
    /// How long a connection to the server may take to complete its TLS handshake before it
    /// is closed. Default 10 s; zero is refused at start ([`crate::ServeError::ZeroTimeout`]).
    pub tls_handshake_timeout: Duration,
    /// Most TLS handshakes the server runs at once; a connection arriving while that many are
    /// under way is closed at once, so slow or idle connections cannot hold the accept loop
    /// or grow memory. Connections from a member's address need no permit (their places are
    /// bounded by [`GrpcOptions::max_connections`]'s exception). Default 256.
    pub max_tls_handshakes: usize,
    /// How long a new connection may take to send the HTTP/2 client preface (its first 24
    /// bytes) once accepted (with TLS, once handshaken) before it is closed: a connection that
    /// never speaks gives its place under [`GrpcOptions::max_connections`] back. Once the
    /// preface is in, [`GrpcOptions::auth_timeout`] and keepalive pings take over. Default 10 s;
    /// zero is refused at start ([`crate::ServeError::ZeroTimeout`]).
    pub preface_timeout: Duration,
    /// How long a new connection may stay open, once accepted (with TLS, once handshaken),
    /// before making a call that passes authentication (a peer's check, or a client's token or
    /// certificate): a connection that speaks HTTP/2 and answers pings but never calls, or
    /// whose calls are all refused, is closed then and gives its place under
    /// [`GrpcOptions::max_connections`] back. A connection that has made one such call stays
    /// for as long as keepalive keeps it. Where peers are not authenticated (no cluster
    /// secret, no peer certificates) any call to the internal service passes, and where
    /// clients are not (no users) any call to the cluster service does. Default 10 s; zero is
    /// refused at start ([`crate::ServeError::ZeroTimeout`]).
    pub auth_timeout: Duration,
    /// Most connections the server holds at once, from peers and clients together; a
    /// connection arriving past it is closed at once, so connections cannot take the file
    /// descriptors the node's log and snapshots need. Every peer holds a few (replication,
    /// forwarded writes, snapshots) and every client process one per node it talks to.
    /// Connections from a member's address (the membership's names for the members, looked
    /// up every 5 s; an IPv6 address stands for its /64) may go past it by one address's share
    /// ([`GrpcOptions::max_connections_per_ip`]) in all, and need no TLS handshake permit, so
    /// strangers who fill the server cannot keep a peer that reconnects out. The server holds
    /// at most this many plus one address's share. The exception goes by source address: it
    /// also covers anything else on a member's host (or behind the same NAT, or in its IPv6
    /// /64), and misses a peer whose connections come from another address than its name
    /// resolves to. Applies to [`Server::serve`](crate::Server::serve). Default 512; at least
    /// 1.
    pub max_connections: usize,
    /// Most connections the server holds from one IP address (for IPv6, one /64 network); a
    /// connection past it is closed at once, so one address cannot take every place of
    /// [`GrpcOptions::max_connections`]: with the defaults it takes eight addresses to fill
    /// the server for strangers (members' addresses go past the total, see there). Default 64;
    /// at least 1.
    pub max_connections_per_ip: usize,
    /// How outgoing connections are made (TCP unless testing over a simulated network).
    pub connector: Connector,
    /// Connection tuning.
    pub channel: ChannelOptions,
    /// Largest message sent or accepted, in bytes. Default 65 MiB: a command of the node's
    /// default `max_command_bytes` (64 MiB) plus framing. A node refuses to start unless its
    /// largest command and its replication batch (`max_append_bytes`) fit, with
    /// [`MESSAGE_FRAMING`] to spare.
    pub max_message_bytes: usize,
    /// Most bytes of partly received messages the server holds at once, for each of its two
    /// services: peers' replication, votes and snapshots share one such budget, and calls to
    /// the cluster service (clients', and the writes and membership calls followers forward to
    /// the leader) the other, so clients cannot crowd replication out. A message not whole in
    /// its first chunk takes its declared length from the budget until its last byte has
    /// arrived. One that finds the budget spent, or is not whole within 30 s (or the node's
    /// request timeout, if longer) plus its declared length at the
    /// [`GrpcOptions::min_transfer_rate`] (8 MiB/s by default), fails at once with
    /// [`ErrorCode::Busy`](crate::status::ErrorCode::Busy) — nothing was applied, a later
    /// attempt may succeed. So does a call whose first message has not started within 30 s
    /// (or the request timeout) of the call's start. It fails rather than waits, so its unread bytes never hold its
    /// connection's HTTP/2 window from other calls. This bounds what callers that start large
    /// messages and never finish them can make the node hold, however many streams and
    /// connections they open. On
    /// the cluster service, whose calls carry one message each, every message counts (small
    /// ones too) until its call is answered, so the budget also bounds the writes a leader
    /// holds while it replicates them (counted by their encoded size).
    /// Raised to [`GrpcOptions::max_message_bytes`] if smaller, so every accepted message can
    /// arrive. Default 256 MiB.
    pub max_receiving_bytes: usize,
    /// The slowest average rate, in bytes per second, that a snapshot or a large message may
    /// move at between nodes, or from a client, and that a client may read a backup at (a
    /// backup's export ends once it has waited for its reader 30 s more than what the reader
    /// took needs at this rate). A snapshot sent to a peer is given up after
    /// three quarters of `Config::request_timeout` plus its size at this rate (the leader
    /// retries it later); the server drops a snapshot, or a message not whole in its first
    /// chunk, that has not arrived within 30 s (or `Config::request_timeout`, if longer) plus
    /// its size at this rate. Transfers over links slower than this, on average, never
    /// complete: a peer behind one never catches up by snapshot. Lower it for such links; the
    /// cost is that a caller trickling data holds its share of
    /// [`GrpcOptions::max_receiving_bytes`], or the one snapshot receive slot, for longer.
    /// Give every node the same value: a receiver with a higher rate than its sender may cut
    /// off a transfer the sender would still wait for. Default 8 MiB/s (a 64 MiB message may
    /// take 30 s + 8 s, a 1 GiB snapshot 30 s + 128 s); `0` is taken as 1 byte per second.
    pub min_transfer_rate: u64,
    /// Bytes per snapshot chunk sent. Default 1 MiB.
    pub snapshot_chunk_bytes: usize,
    /// Largest snapshot chunk accepted, in bytes. Default 4 MiB.
    pub max_snapshot_chunk_bytes: usize,
    /// Forward writes and membership calls that reach a follower to the leader (default), or
    /// answer them with the leader's address.
    pub forward_to_leader: bool,
    /// Most HTTP/2 streams (concurrent RPCs) one connection may open to this server. Default
    /// 1,024: room for a follower forwarding many clients' writes, a bound on what one
    /// connection can make the server hold.
    pub max_concurrent_streams: u32,
    /// The server pings a connection idle this long, and closes it if the ping is not answered
    /// within [`GrpcOptions::keepalive_timeout`]: dead peers and clients do not hold streams.
    /// Default 10 s.
    pub keepalive_interval: Duration,
    /// How long the server waits for a keepalive ping's answer. Default 20 s.
    pub keepalive_timeout: Duration,
    /// Who may call: peer authentication (cluster secret, node certificates) and the users of
    /// the cluster service with their roles. Default: nobody is authenticated (see
    /// [`crate::auth`]); a node serving a non-loopback address without peer authentication
    /// logs a warning.
    pub auth: Auth,
}

/// Bytes a replication message adds around its entries (vote, log ids, lengths), with room to
/// spare; see [`GrpcOptions::max_message_bytes`].
pub const MESSAGE_FRAMING: usize = 16 << 10;

/// Why a node's limits cannot work together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LimitsError {
    /// A command the node accepts would not fit in one message.
    #[error(
        "max_command_bytes ({command}) plus framing ({framing}) exceeds the transport's max_message_bytes ({message}): an accepted write could never be replicated; raise max_message_bytes or lower max_command_bytes"
    )]
    CommandTooLarge {
        /// `Config::max_command_bytes`.
        command: usize,
        /// Framing added to the largest command.
        framing: usize,
        /// `GrpcOptions::max_message_bytes`.
        message: usize,
    },
    /// A replication batch would not fit in one message.
    #[error(
        "max_append_bytes ({append}) plus framing ({framing}) exceeds the transport's max_message_bytes ({message}); lower max_append_bytes"
    )]
    BatchTooLarge {
        /// `Config::max_append_bytes`.
        append: usize,
        /// Framing added to a batch.
        framing: usize,
        /// `GrpcOptions::max_message_bytes`.
        message: usize,
    },
}

impl GrpcOptions {
    /// Checks that everything `config` lets a node accept can be sent in one message: the
    /// largest command, alone in a replication message or forwarded, and a full batch.
    pub fn check_limits(&self, config: &raft_core::Config) -> Result<(), LimitsError> {
        let message = self.max_message_bytes;
        let framing = raft_core::log::ENTRY_FRAMING + MESSAGE_FRAMING;
        if config.max_command_bytes.saturating_add(framing) > message {
            return Err(LimitsError::CommandTooLarge {
                command: config.max_command_bytes,
                framing,
                message,
            });
        }
        if config.max_append_bytes.saturating_add(MESSAGE_FRAMING) > message {
            return Err(LimitsError::BatchTooLarge {
                append: config.max_append_bytes,
                framing: MESSAGE_FRAMING,
                message,
            });
        }
        Ok(())
    }
}

impl Default for GrpcOptions {
    fn default() -> Self {
        GrpcOptions {
            tls: None,
            tls_handshake_timeout: Duration::from_secs(10),
            max_tls_handshakes: 256,
            preface_timeout: Duration::from_secs(10),
            auth_timeout: Duration::from_secs(10),
            max_connections: 512,
            max_connections_per_ip: 64,
            connector: Connector::default(),
            channel: ChannelOptions::default(),
            max_message_bytes: 65 << 20,
            max_receiving_bytes: 256 << 20,
            min_transfer_rate: 8 << 20,
            snapshot_chunk_bytes: 1 << 20,
            max_snapshot_chunk_bytes: 4 << 20,
            forward_to_leader: true,
            max_concurrent_streams: 1024,
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(20),
            auth: Auth::default(),
        }
    }
}

impl GrpcOptions {
    /// Sets TLS for peers and clients (default none: plain TCP); see [`GrpcOptions::tls`].
    #[must_use]
    pub fn with_tls(mut self, tls: Option<ReloadableTls>) -> GrpcOptions {
        self.tls = tls;
        self
    }

    /// Sets how long a TLS handshake may take before the connection is closed (default 10 s).
    #[must_use]
    pub fn with_tls_handshake_timeout(mut self, timeout: Duration) -> GrpcOptions {
        self.tls_handshake_timeout = timeout;
        self
    }

    /// Sets the most TLS handshakes the server runs at once (default 256).
    #[must_use]
    pub fn with_max_tls_handshakes(mut self, handshakes: usize) -> GrpcOptions {
        self.max_tls_handshakes = handshakes;
        self
    }

    /// Sets how long a new connection may take to send the HTTP/2 preface (default 10 s); see
    /// [`GrpcOptions::preface_timeout`].
    #[must_use]
    pub fn with_preface_timeout(mut self, timeout: Duration) -> GrpcOptions {
        self.preface_timeout = timeout;
        self
    }

    /// Sets how long a new connection may stay open without a call that passes authentication
    /// (default 10 s); see [`GrpcOptions::auth_timeout`].
    #[must_use]
    pub fn with_auth_timeout(mut self, timeout: Duration) -> GrpcOptions {
        self.auth_timeout = timeout;
        self
    }

    /// Sets the most connections the server holds at once (default 512); see
    /// [`GrpcOptions::max_connections`].
    #[must_use]
    pub fn with_max_connections(mut self, connections: usize) -> GrpcOptions {
        self.max_connections = connections;
        self
    }

    /// Sets the most connections the server holds from one IP address (default 64); see
    /// [`GrpcOptions::max_connections_per_ip`].
    #[must_use]
    pub fn with_max_connections_per_ip(mut self, connections: usize) -> GrpcOptions {
        self.max_connections_per_ip = connections;
        self
    }

    /// Sets how outgoing connections are made (default TCP).
    #[must_use]
    pub fn with_connector(mut self, connector: Connector) -> GrpcOptions {
        self.connector = connector;
        self
    }

    /// Sets the connection tuning (default [`ChannelOptions::default`]).
    #[must_use]
    pub fn with_channel(mut self, channel: ChannelOptions) -> GrpcOptions {
        self.channel = channel;
        self
    }

    /// Sets the largest message sent or accepted (default 65 MiB); see
    /// [`GrpcOptions::max_message_bytes`].
    #[must_use]
    pub fn with_max_message_bytes(mut self, bytes: usize) -> GrpcOptions {
        self.max_message_bytes = bytes;
        self
    }

    /// Sets the most bytes of partly received messages the server holds per service (default
    /// 256 MiB); see [`GrpcOptions::max_receiving_bytes`].
    #[must_use]
    pub fn with_max_receiving_bytes(mut self, bytes: usize) -> GrpcOptions {
        self.max_receiving_bytes = bytes;
        self
    }

    /// Sets the slowest average rate, in bytes per second, at which snapshots and large
    /// messages may move (default 8 MiB/s); see [`GrpcOptions::min_transfer_rate`].
    #[must_use]
    pub fn with_min_transfer_rate(mut self, bytes_per_sec: u64) -> GrpcOptions {
        self.min_transfer_rate = bytes_per_sec;
        self
    }

    /// Sets the bytes per snapshot chunk sent (default 1 MiB).
    #[must_use]
    pub fn with_snapshot_chunk_bytes(mut self, bytes: usize) -> GrpcOptions {
        self.snapshot_chunk_bytes = bytes;
        self
    }

    /// Sets the largest snapshot chunk accepted (default 4 MiB).
    #[must_use]
    pub fn with_max_snapshot_chunk_bytes(mut self, bytes: usize) -> GrpcOptions {
        self.max_snapshot_chunk_bytes = bytes;
        self
    }

    /// Sets whether a follower forwards writes and membership calls to the leader (default
    /// yes) or answers them with the leader's address.
    #[must_use]
    pub fn with_forward_to_leader(mut self, forward: bool) -> GrpcOptions {
        self.forward_to_leader = forward;
        self
    }

    /// Sets the most concurrent RPCs one connection may open (default 1,024).
    #[must_use]
    pub fn with_max_concurrent_streams(mut self, streams: u32) -> GrpcOptions {
        self.max_concurrent_streams = streams;
        self
    }

    /// Sets how long a connection may idle before the server pings it (default 10 s).
    #[must_use]
    pub fn with_keepalive_interval(mut self, interval: Duration) -> GrpcOptions {
        self.keepalive_interval = interval;
        self
    }

    /// Sets how long the server waits for a keepalive ping's answer (default 20 s).
    #[must_use]
    pub fn with_keepalive_timeout(mut self, timeout: Duration) -> GrpcOptions {
        self.keepalive_timeout = timeout;
        self
    }

    /// Sets who may call (default: nobody is authenticated); see [`GrpcOptions::auth`].
    #[must_use]
    pub fn with_auth(mut self, auth: Auth) -> GrpcOptions {
        self.auth = auth;
        self
    }
}
