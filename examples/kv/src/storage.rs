//! Storage flags: the quota and the memory limit behind the NOSPACE alarm, compaction by log
//! size, and the WAL's preallocated segment size. See the README's "Disk" section for how much disk a node needs.

use std::time::Duration;

use clap::Args;
use raft_core::Config;
use raft_core::QuotaOptions;

use crate::memory::MaxMemory;

/// How a node uses its disk.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct StorageArgs {
    /// Refuse writes that grow the data (replying `-OOM`) while the file system holding the data
    /// directory has less than this free; reads and deletes still work, and writes resume by
    /// themselves once space is freed. Also `-OOM` cluster-wide while any voter is low. `0`
    /// disables the check. Sizes take B, K/KiB, M/MiB, G/GiB suffixes.
    #[arg(long, default_value = "256MiB", value_parser = parse_size)]
    pub quota_min_free: u64,
    /// Refuse writes the same way while the data directory itself uses more than this
    /// (preallocated WAL segments count in full), like etcd's `--quota-backend-bytes`. `0`: no
    /// limit of its own.
    #[arg(long, default_value = "0", value_parser = parse_size)]
    pub quota_max_used: u64,
    /// How often the data directory and the node's memory are measured, and the leader asks
    /// its voters for their alarms. The free-space reserve (and the room above `--maxmemory`)
    /// must absorb the writes of one or two intervals.
    #[arg(long, default_value = "1s", value_parser = crate::shutdown::parse_duration)]
    pub quota_check_interval: Duration,
    /// Refuse writes that grow the data (replying `-OOM`, as Redis's `noeviction` policy)
    /// while this node's resident memory is above this; reads and deletes still work. Also
    /// `-OOM` cluster-wide while any voter is over its own. `auto`: three quarters of the
    /// memory this node may use (the machine's, or its container's limit if lower). `0`: no
    /// limit. `CONFIG SET maxmemory` changes it until the node restarts.
    #[arg(long, default_value = "auto", value_parser = MaxMemory::parse)]
    pub maxmemory: MaxMemory,
    /// Take a snapshot once the log has grown by this much since the last one (or by the last
    /// snapshot's size, if larger), so the log stays within about twice the data's size. `0`
    /// snapshots by entry count only.
    #[arg(long, default_value = "64MiB", value_parser = parse_size)]
    pub snapshot_log_bytes: u64,
    /// Also take a snapshot after this many log entries since the last one (etcd's
    /// `--snapshot-count`; one entry is one write, or writes pipelined or combined together).
    /// `0` snapshots by log size only.
    #[arg(long, default_value_t = Config::in_memory(1).snapshot_every)]
    pub snapshot_every: u64,
    /// Size of each preallocated write-ahead log segment file (at least 4 KiB). The disk a
    /// node needs grows with it; see the README.
    #[arg(long, default_value = "64MiB", value_parser = parse_size)]
    pub wal_segment_size: u64,
}

impl Default for StorageArgs {
    fn default() -> Self {
        StorageArgs {
            quota_min_free: QuotaOptions::default().min_free_bytes,
            quota_max_used: 0,
            quota_check_interval: QuotaOptions::default().check_interval,
            maxmemory: MaxMemory::Auto,
            snapshot_log_bytes: 64 << 20,
            snapshot_every: Config::in_memory(1).snapshot_every,
            wal_segment_size: 64 << 20,
        }
    }
}

impl StorageArgs {
    /// `config` with these settings.
    pub fn apply(&self, mut config: Config) -> Config {
        config.quota.min_free_bytes = self.quota_min_free;
        config.quota.max_used_bytes = self.quota_max_used;
        config.quota.check_interval = self.quota_check_interval;
        config.quota.max_memory_bytes = self.maxmemory.resolve();
        config.snapshot_log_bytes = self.snapshot_log_bytes;
        config.snapshot_every = self.snapshot_every;
        config.wal.segment_size = self.wal_segment_size;
        config
    }
}

/// Parses `1048576`, `512K`, `64MiB`, `1.5G`, … (binary units; `B` optional).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        other => {
            return Err(format!(
                "unknown size unit {other:?} in {s:?} (use K, M, G or T)"
            ));
        }
    };
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (for example 64MiB)"))?;
    let bytes = value * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes >= u64::MAX as f64 {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1.5g"), Ok(3 << 29));
        assert_eq!(parse_size(" 2 GB "), Ok(2 << 30));
        assert!(parse_size("ten").is_err());
        assert!(parse_size("5X").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999T").is_err());
    }

    #[test]
    fn flag_defaults_are_the_defaults() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            storage: StorageArgs,
        }
        assert_eq!(Cli::parse_from(["kv"]).storage, StorageArgs::default());
        let set = Cli::parse_from(["kv", "--quota-min-free", "1G", "--wal-segment-size", "1M"]);
        assert_eq!(set.storage.quota_min_free, 1 << 30);
        assert_eq!(set.storage.wal_segment_size, 1 << 20);
    }

    #[test]
    fn defaults_match_the_library() {
        let c = StorageArgs {
            maxmemory: MaxMemory::Bytes(0),
            ..StorageArgs::default()
        }
        .apply(Config::in_memory(1));
        let d = Config::in_memory(1);
        assert_eq!(c.quota, d.quota);
        assert_eq!(c.snapshot_log_bytes, d.snapshot_log_bytes);
        assert_eq!(c.snapshot_every, d.snapshot_every);
        assert_eq!(c.wal, d.wal);
    }
}
