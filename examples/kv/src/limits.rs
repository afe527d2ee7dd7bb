//! What one node lets its clients (and its raft port's peers and callers) use, and the flags
//! that set it.
//!
//! The names and defaults follow Redis where Redis has the knob (`maxclients`, `timeout`,
//! `proto-max-bulk-len`, `client-query-buffer-limit`; `maxmemory-clients` is on by default);
//! `docs/limits.md` lists every limit and what a client sees when it reaches one.

use std::time::Duration;

use raft_grpc::GrpcOptions;

use crate::resp;

/// Client limits of a node (`kv node` and the demo), its raft port's among them.
#[derive(clap::Args, Debug, Clone)]
pub struct LimitArgs {
    /// Most clients connected at once; the next one is answered `-ERR max number of clients
    /// reached` and closed. Lowered at start, with a warning, when the open-files limit
    /// (`ulimit -n`) cannot be raised to fit it.
    #[arg(long, default_value_t = 10_000)]
    pub maxclients: usize,
    /// Close a client that sends nothing for this many seconds (0: never, as in Redis).
    #[arg(long, default_value_t = 0)]
    pub timeout: u64,
    /// When the node requires a password or users: close a client that has not authenticated
    /// this many seconds after connecting, or after its authentication ended (a RESET, or a
    /// reload that removed its user). Until it does, its commands are held to ten arguments of
    /// at most 16 KiB.
    #[arg(long, default_value_t = ConnLimits::default().auth_timeout.as_secs())]
    pub auth_timeout: u64,
    /// Largest bulk string a client may send, and the largest string value APPEND or SETRANGE
    /// may build, in bytes.
    #[arg(long, default_value_t = resp::Limits::default().max_bulk)]
    pub proto_max_bulk_len: usize,
    /// Largest command a client may send, in bytes (its arguments plus 32 bytes each); a longer
    /// one is a protocol error and closes the connection.
    #[arg(long, default_value_t = resp::Limits::default().max_frame)]
    pub client_query_buffer_limit: usize,
    /// Close a client whose unsent replies would pass this many bytes.
    #[arg(long, default_value_t = ConnLimits::default().output_bytes)]
    pub client_output_buffer_limit: usize,
    /// Most bytes all clients' buffers may hold together beyond 256 KiB each (commands
    /// part-way through, unsent replies); 0: no bound, as Redis' default. A client whose
    /// command or reply would pass it is closed, the command refused with an error first:
    /// unlike Redis, which then evicts the clients holding the most, the one that asks for
    /// more is refused.
    #[arg(long, default_value_t = ConnLimits::default().client_memory)]
    pub maxmemory_clients: usize,
    /// Close a client that has not taken any of its pending replies for this many seconds.
    #[arg(long, default_value_t = ConnLimits::default().output_timeout.as_secs())]
    pub client_output_timeout: u64,
    /// Most pipelined commands of one connection replicated together as one log entry (see
    /// `pipeline`); 1 replicates every command on its own.
    #[arg(long, default_value_t = ConnLimits::default().max_batch)]
    pub pipeline_batch: usize,
    /// Most bytes of partly received messages the raft port holds at once, for peers and for
    /// cluster-API callers each (at least the largest message, 65 MiB): a message that finds
    /// it spent is refused as busy, nothing applied. Sizes take B, K/KiB, M/MiB, G/GiB
    /// suffixes.
    #[arg(long, default_value = "256MiB", value_parser = crate::storage::parse_size)]
    pub raft_max_receiving_bytes: u64,
    /// The slowest average rate, per second, at which a snapshot or a large message may move
    /// between nodes, and a `kv backup` may read a backup: a transfer slower than this is given
    /// up (a snapshot is retried, and fails again). Lower it, on every node alike, when nodes
    /// are linked by less than about 64 Mbit/s, or a node that falls behind never catches up.
    /// Sizes take the same suffixes.
    #[arg(long, default_value = "8MiB", value_parser = crate::storage::parse_size)]
    pub raft_min_transfer_rate: u64,
}

/// The limits every connection of a node runs under.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// What a command may be.
    pub resp: resp::Limits,
    /// Most clients connected at once.
    pub max_clients: usize,
    /// Close a client idle this long.
    pub idle: Option<Duration>,
    /// Close a client that has not authenticated this long after connecting, or after its
    /// authentication ended (a RESET, or a reload that removed its user), when the node
    /// requires authentication.
    pub auth_timeout: Duration,
    /// Close a client whose unsent replies would pass this many bytes.
    pub output_bytes: usize,
    /// Close a client that takes none of its replies for this long.
    pub output_timeout: Duration,
    /// Most bytes all connections' buffers hold together beyond their first 256 KiB each (0:
    /// no bound); see `client_memory`.
    pub client_memory: usize,
    /// Most pipelined commands replicated together as one log entry.
    pub max_batch: usize,
    /// What the raft port lets peers and cluster-API callers send.
    pub raft_port: RaftPortLimits,
}

/// What a node's raft port (gRPC) lets peers and cluster-API callers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftPortLimits {
    /// `GrpcOptions::max_receiving_bytes`.
    pub max_receiving_bytes: usize,
    /// `GrpcOptions::min_transfer_rate`, in bytes per second.
    pub min_transfer_rate: u64,
}

impl Default for RaftPortLimits {
    fn default() -> Self {
        let grpc = GrpcOptions::default();
        RaftPortLimits {
            max_receiving_bytes: grpc.max_receiving_bytes,
            min_transfer_rate: grpc.min_transfer_rate,
        }
    }
}

impl RaftPortLimits {
    /// `opts` with these limits and the raft port's connection bounds
    /// ([`RAFT_PORT_CONNECTIONS`], [`RAFT_PORT_CONNECTIONS_PER_IP`]).
    pub fn apply(&self, opts: GrpcOptions) -> GrpcOptions {
        opts.with_max_connections(RAFT_PORT_CONNECTIONS)
            .with_max_connections_per_ip(RAFT_PORT_CONNECTIONS_PER_IP)
            .with_max_receiving_bytes(self.max_receiving_bytes)
            .with_min_transfer_rate(self.min_transfer_rate)
    }
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            resp: resp::Limits::default(),
            max_clients: 10_000,
            idle: None,
            auth_timeout: Duration::from_secs(30),
            output_bytes: 256 << 20,
            output_timeout: Duration::from_secs(60),
            client_memory: 1 << 30,
            max_batch: 128,
            raft_port: RaftPortLimits::default(),
        }
    }
}

/// Most connections a node's raft port holds (peers and admin tools); one past it is closed at
/// once, unless it comes from a member's address, which may take
/// [`RAFT_PORT_CONNECTIONS_PER_IP`] more in all (so a peer can reconnect to a full port).
/// Peers hold a few each, an admin command one while it runs.
pub const RAFT_PORT_CONNECTIONS: usize = 128;

/// Most of [`RAFT_PORT_CONNECTIONS`] one address (IPv6: one /64) may hold: it takes eight
/// addresses to fill the port.
pub const RAFT_PORT_CONNECTIONS_PER_IP: usize = 16;

/// File descriptors a process keeps per node beyond its clients: the raft port's connections
/// (at most [`RAFT_PORT_CONNECTIONS`] + [`RAFT_PORT_CONNECTIONS_PER_IP`]), the WAL's segments,
/// snapshot and backup files, connections to the other nodes, the metrics listener (at most
/// 32 connections), and the refusals under way past `maxclients`.
const RESERVED_FDS: u64 = 256;

/// How `maxclients` fits the open-files limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fit {
    /// The soft limit to set, when it must be raised.
    raise_to: Option<u64>,
    /// `maxclients` per node once fitted.
    max_clients: usize,
}

/// Fits `max_clients` per node for `nodes` nodes in one process under the open-files limits
/// `soft` and `hard` (`None`: unlimited): the soft limit is raised as far as needed and allowed,
/// and `max_clients` lowered to what the rest leaves. `Err` when not even one client fits.
fn fit(
    max_clients: usize,
    nodes: u64,
    soft: Option<u64>,
    hard: Option<u64>,
) -> Result<Fit, String> {
    let need = nodes * (max_clients as u64 + RESERVED_FDS);
    let soft = soft.unwrap_or(u64::MAX);
    if soft >= need {
        return Ok(Fit {
            raise_to: None,
            max_clients,
        });
    }
    let got = hard.map_or(need, |h| h.min(need)).max(soft);
    let fits = (got / nodes).saturating_sub(RESERVED_FDS);
    if fits == 0 {
        return Err(format!(
            "the open-files limit ({got}) leaves no room for clients: each node needs \
             {RESERVED_FDS} descriptors for itself; raise it (ulimit -n, LimitNOFILE=)"
        ));
    }
    Ok(Fit {
        raise_to: (got > soft).then_some(got),
        max_clients: max_clients.min(fits as usize),
    })
}

impl ConnLimits {
    /// Fits `maxclients` to the process's open-files limit, as Redis does, so that clients can
    /// never take the descriptors a node's storage needs: the soft limit is raised towards
    /// `nodes × (maxclients + RESERVED_FDS)` (up to the hard limit), and when that is not enough
    /// `maxclients` is lowered and a warning logged. `Err` when not even one client fits.
    fn fit_open_files(&mut self, nodes: u64) -> Result<(), String> {
        use rustix::process::Resource;
        let limit = rustix::process::getrlimit(Resource::Nofile);
        let mut fitted = fit(self.max_clients, nodes, limit.current, limit.maximum)?;
        if let Some(raise_to) = fitted.raise_to {
            let raised = rustix::process::Rlimit {
                current: Some(raise_to),
                maximum: limit.maximum,
            };
            if let Err(e) = rustix::process::setrlimit(Resource::Nofile, raised) {
                tracing::warn!(error = %e, "cannot raise the open-files limit");
                fitted = fit(self.max_clients, nodes, limit.current, limit.current)?;
            }
        }
        if fitted.max_clients < self.max_clients {
            tracing::warn!(
                requested = self.max_clients,
                maxclients = fitted.max_clients,
                "maxclients lowered to fit the open-files limit; raise it (ulimit -n, LimitNOFILE=) to allow more clients"
            );
            self.max_clients = fitted.max_clients;
        }
        Ok(())
    }
}

impl LimitArgs {
    /// The limits of `nodes` nodes run by this process, checked ([`LimitArgs::to_limits`]) and
    /// fitted to its open-files limit ([`ConnLimits::fit_open_files`]).
    pub fn fitted(&self, nodes: u64) -> Result<ConnLimits, String> {
        let mut limits = self.to_limits()?;
        limits.fit_open_files(nodes)?;
        Ok(limits)
    }

    /// The limits, checked: `Err` names the flags that contradict each other.
    pub fn to_limits(&self) -> Result<ConnLimits, String> {
        // kv's nodes replicate commands of raft-core's default largest size.
        let replicated = raft_core::Config::in_memory(1).max_command_bytes;
        if self.client_query_buffer_limit > replicated {
            return Err(format!(
                "--client-query-buffer-limit ({}) must not exceed {replicated}, the largest \
                 command a node replicates: a write it accepted could not be applied",
                self.client_query_buffer_limit
            ));
        }
        if self.proto_max_bulk_len > self.client_query_buffer_limit {
            return Err(format!(
                "--proto-max-bulk-len ({}) must not exceed --client-query-buffer-limit ({})",
                self.proto_max_bulk_len, self.client_query_buffer_limit
            ));
        }
        if self.maxclients == 0
            || self.client_output_timeout == 0
            || self.pipeline_batch == 0
            || self.auth_timeout == 0
        {
            return Err(
                "--maxclients, --client-output-timeout, --pipeline-batch and --auth-timeout must be at least 1"
                    .into(),
            );
        }
        if self.raft_min_transfer_rate == 0 {
            return Err("--raft-min-transfer-rate must be at least 1 byte per second".into());
        }
        let max_receiving_bytes = usize::try_from(self.raft_max_receiving_bytes)
            .map_err(|_| "--raft-max-receiving-bytes is past this machine's address space")?;
        Ok(ConnLimits {
            resp: resp::Limits {
                max_bulk: self.proto_max_bulk_len,
                max_frame: self.client_query_buffer_limit,
                ..resp::Limits::default()
            },
            max_clients: self.maxclients,
            idle: (self.timeout > 0).then(|| Duration::from_secs(self.timeout)),
            auth_timeout: Duration::from_secs(self.auth_timeout),
            output_bytes: self.client_output_buffer_limit,
            output_timeout: Duration::from_secs(self.client_output_timeout),
            client_memory: self.maxmemory_clients,
            max_batch: self.pipeline_batch,
            raft_port: RaftPortLimits {
                max_receiving_bytes,
                min_transfer_rate: self.raft_min_transfer_rate,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The limits `argv` (flags after `kv`) set, checked.
    fn limits(argv: &[&str]) -> Result<ConnLimits, String> {
        use clap::Parser;
        #[derive(Parser)]
        struct Args {
            #[command(flatten)]
            limits: LimitArgs,
        }
        let argv = std::iter::once("kv").chain(argv.iter().copied());
        Args::parse_from(argv).limits.to_limits()
    }

    #[test]
    fn a_command_the_node_accepts_is_one_it_can_replicate() {
        assert!(limits(&[]).is_ok(), "the defaults fit");
        assert!(limits(&["--client-query-buffer-limit", "67108864"]).is_ok());
        let e = limits(&["--client-query-buffer-limit", "67108865"]).unwrap_err();
        assert!(e.contains("--client-query-buffer-limit"), "{e}");
        let e = limits(&[
            "--proto-max-bulk-len",
            "2000",
            "--client-query-buffer-limit",
            "1000",
        ])
        .unwrap_err();
        assert!(e.contains("--proto-max-bulk-len"), "{e}");
    }

    #[test]
    fn the_raft_port_limits_default_to_the_transport_s_and_take_sizes() {
        let defaults = limits(&[]).unwrap().raft_port;
        assert_eq!(defaults, RaftPortLimits::default());
        assert_eq!(defaults.min_transfer_rate, 8 << 20);
        let set = limits(&[
            "--raft-min-transfer-rate",
            "512KiB",
            "--raft-max-receiving-bytes",
            "1GiB",
        ])
        .unwrap()
        .raft_port;
        assert_eq!(set.min_transfer_rate, 512 << 10);
        assert_eq!(set.max_receiving_bytes, 1 << 30);
        let opts = set.apply(GrpcOptions::default());
        assert_eq!(opts.min_transfer_rate, 512 << 10);
        assert_eq!(opts.max_receiving_bytes, 1 << 30);
        assert_eq!(opts.max_connections, RAFT_PORT_CONNECTIONS);
        let e = limits(&["--raft-min-transfer-rate", "0"]).unwrap_err();
        assert!(e.contains("--raft-min-transfer-rate"), "{e}");
    }

    #[test]
    fn maxclients_fits_the_open_files_limit() {
        let need = 10_000 + RESERVED_FDS;
        // Enough already: nothing changes.
        let ok = fit(10_000, 1, Some(need), Some(need));
        assert_eq!(
            ok,
            Ok(Fit {
                raise_to: None,
                max_clients: 10_000
            })
        );
        assert_eq!(fit(10_000, 1, None, None), ok);
        // A low soft limit under a high hard one is raised just enough.
        assert_eq!(
            fit(10_000, 1, Some(1024), Some(1 << 20)),
            Ok(Fit {
                raise_to: Some(need),
                max_clients: 10_000
            })
        );
        assert_eq!(
            fit(10_000, 3, Some(1024), None),
            Ok(Fit {
                raise_to: Some(3 * need),
                max_clients: 10_000
            })
        );
        // A hard limit below the need: raised to it, and maxclients lowered to what is left.
        assert_eq!(
            fit(10_000, 1, Some(1024), Some(4096)),
            Ok(Fit {
                raise_to: Some(4096),
                max_clients: 4096 - RESERVED_FDS as usize
            })
        );
        assert_eq!(
            fit(10_000, 3, Some(3000), Some(3000)),
            Ok(Fit {
                raise_to: None,
                max_clients: 1000 - RESERVED_FDS as usize
            })
        );
        // No room for a single client.
        assert!(fit(10, 1, Some(RESERVED_FDS), Some(RESERVED_FDS)).is_err());
    }
}
