//! `--maxmemory`: the memory limit behind `-OOM` ([`raft_core::QuotaOptions::max_memory_bytes`])
//! and its default, three quarters of the memory this process may use.
//!
//! Every replica holds the whole data set, so a data set that outgrows memory would have the
//! kernel kill every node at once, and a node could not start again on its own data. With the
//! limit, writes that grow the data are refused (`-OOM`) once a node's resident memory passes
//! it, cluster-wide as for a full disk, while reads and deletes go on.

use std::path::Path;
use std::path::PathBuf;

/// The share of the usable memory the default limit takes: the rest is room for what one
/// check interval of writes, a snapshot and the allocator can add before the alarm bites.
const AUTO_SHARE: (u64, u64) = (3, 4);

/// The value of `--maxmemory`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxMemory {
    /// Three quarters of the memory this process may use: the machine's, or its control
    /// group's limit (a container's) if lower.
    Auto,
    /// This many bytes; `0`: no limit, as Redis's default.
    Bytes(u64),
}

impl MaxMemory {
    /// Parses `auto` or a size (`0`, `512MiB`, `4G`, …).
    pub fn parse(s: &str) -> Result<MaxMemory, String> {
        if s.trim().eq_ignore_ascii_case("auto") {
            return Ok(MaxMemory::Auto);
        }
        crate::storage::parse_size(s).map(MaxMemory::Bytes)
    }

    /// The limit in bytes (`0`: none). `Auto` where the usable memory cannot be read is no
    /// limit, said once in the log.
    pub fn resolve(self) -> u64 {
        match self {
            MaxMemory::Bytes(b) => b,
            MaxMemory::Auto => match usable_memory() {
                Some(usable) => usable / AUTO_SHARE.1 * AUTO_SHARE.0,
                None => {
                    tracing::warn!(
                        "cannot read this machine's memory: --maxmemory auto sets no limit; set one with --maxmemory"
                    );
                    0
                }
            },
        }
    }
}

/// The memory this process may use: the machine's (`MemTotal`), or less if a control group
/// it belongs to (or one above it) is limited.
fn usable_memory() -> Option<u64> {
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| mem_total(&m))?;
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let limit = cgroup_limit_files(&cgroups, Path::new("/sys/fs/cgroup"))
        .into_iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .filter_map(|v| v.trim().parse::<u64>().ok())
        .min();
    Some(limit.map_or(total, |l| l.min(total)))
}

/// `MemTotal` from `/proc/meminfo`, in bytes.
fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_ascii_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// The files that may hold a memory limit on this process, from `/proc/self/cgroup`: under
/// cgroup v2 (`0::/path`) `memory.max`, under v1 (a `memory` controller line)
/// `memory.limit_in_bytes`, of its group and of each group above it up to the mount's root. The
/// root's own file counts too: a container whose cgroup file system is mounted at its own group
/// (v1, or v2 without a cgroup namespace) sees the host's path in `/proc/self/cgroup`, and its
/// limit at the mount's root. A file that is missing or reads `max` sets no limit.
fn cgroup_limit_files(cgroups: &str, root: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let (mount, file) = if controllers.is_empty() {
            (root.to_path_buf(), "memory.max")
        } else if controllers.split(',').any(|c| c == "memory") {
            (root.join("memory"), "memory.limit_in_bytes")
        } else {
            continue;
        };
        let mut dir = mount.join(path.trim_start_matches('/'));
        loop {
            files.push(dir.join(file));
            if dir == mount || !dir.pop() {
                break;
            }
        }
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_auto_and_sizes() {
        assert_eq!(MaxMemory::parse("auto"), Ok(MaxMemory::Auto));
        assert_eq!(MaxMemory::parse("AUTO"), Ok(MaxMemory::Auto));
        assert_eq!(MaxMemory::parse("0"), Ok(MaxMemory::Bytes(0)));
        assert_eq!(MaxMemory::parse("2GiB"), Ok(MaxMemory::Bytes(2 << 30)));
        assert!(MaxMemory::parse("lots").is_err());
        assert_eq!(MaxMemory::Bytes(5).resolve(), 5);
    }

    #[test]
    fn reads_mem_total() {
        let meminfo = "MemTotal:        8000000 kB\nMemFree:         100 kB\n";
        assert_eq!(mem_total(meminfo), Some(8_000_000 * 1024));
        assert_eq!(mem_total("MemFree: 1 kB\n"), None);
    }

    #[test]
    fn finds_the_limit_files_of_both_cgroup_versions() {
        let root = Path::new("/cg");
        assert_eq!(
            cgroup_limit_files("0::/kubepods/pod1/c1\n", root),
            [
                "/cg/kubepods/pod1/c1",
                "/cg/kubepods/pod1",
                "/cg/kubepods",
                "/cg"
            ]
            .map(|d| PathBuf::from(d).join("memory.max"))
        );
        // Inside a container's own namespace the group is the root.
        assert_eq!(
            cgroup_limit_files("0::/\n", root),
            [PathBuf::from("/cg/memory.max")]
        );
        // v1 inside a container: the host's path, the container's limit at the mount's root.
        assert_eq!(
            cgroup_limit_files("5:cpu,cpuacct:/a\n4:memory:/docker/abc\n", root),
            ["/cg/memory/docker/abc", "/cg/memory/docker", "/cg/memory"]
                .map(|d| PathBuf::from(d).join("memory.limit_in_bytes"))
        );
        assert!(cgroup_limit_files("garbage\n", root).is_empty());
    }

    #[test]
    fn auto_is_three_quarters_of_at_most_the_machine() {
        let total = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| mem_total(&m))
            .unwrap();
        let auto = MaxMemory::Auto.resolve();
        assert!(auto > 0 && auto <= total / 4 * 3, "{auto} of {total}");
    }
}
