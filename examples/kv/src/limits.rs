//! What one node lets its clients use, and the flags that set it.
//!
//! The names and defaults follow Redis where Redis has the knob (`maxclients`, `timeout`,
//! `proto-max-bulk-len`, `client-query-buffer-limit`); `docs/limits.md` lists every limit and
//! what a client sees when it reaches one.

use std::time::Duration;

use crate::resp;

/// Client limits of a node (`kv node` and the demo).
#[derive(clap::Args, Debug, Clone)]
pub struct LimitArgs {
    /// Most clients connected at once; the next one is answered `-ERR max number of clients
    /// reached` and closed.
    #[arg(long, default_value_t = 10_000)]
    pub maxclients: usize,
    /// Close a client that sends nothing for this many seconds (0: never, as in Redis).
    #[arg(long, default_value_t = 0)]
    pub timeout: u64,
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
    /// Close a client that has not taken any of its pending replies for this many seconds.
    #[arg(long, default_value_t = ConnLimits::default().output_timeout.as_secs())]
    pub client_output_timeout: u64,
    /// Most pipelined commands of one connection replicated together as one log entry (see
    /// `pipeline`); 1 replicates every command on its own.
    #[arg(long, default_value_t = ConnLimits::default().max_batch)]
    pub pipeline_batch: usize,
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
    /// Close a client whose unsent replies would pass this many bytes.
    pub output_bytes: usize,
    /// Close a client that takes none of its replies for this long.
    pub output_timeout: Duration,
    /// Most pipelined commands replicated together as one log entry.
    pub max_batch: usize,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            resp: resp::Limits::default(),
            max_clients: 10_000,
            idle: None,
            output_bytes: 256 << 20,
            output_timeout: Duration::from_secs(60),
            max_batch: 128,
        }
    }
}

impl LimitArgs {
    /// The limits, checked: `Err` names the flags that contradict each other.
    pub fn to_limits(&self) -> Result<ConnLimits, String> {
        if self.proto_max_bulk_len > self.client_query_buffer_limit {
            return Err(format!(
                "--proto-max-bulk-len ({}) must not exceed --client-query-buffer-limit ({})",
                self.proto_max_bulk_len, self.client_query_buffer_limit
            ));
        }
        if self.maxclients == 0 || self.client_output_timeout == 0 || self.pipeline_batch == 0 {
            return Err(
                "--maxclients, --client-output-timeout and --pipeline-batch must be at least 1"
                    .into(),
            );
        }
        Ok(ConnLimits {
            resp: resp::Limits {
                max_bulk: self.proto_max_bulk_len,
                max_frame: self.client_query_buffer_limit,
                ..resp::Limits::default()
            },
            max_clients: self.maxclients,
            idle: (self.timeout > 0).then(|| Duration::from_secs(self.timeout)),
            output_bytes: self.client_output_buffer_limit,
            output_timeout: Duration::from_secs(self.client_output_timeout),
            max_batch: self.pipeline_batch,
        })
    }
}
