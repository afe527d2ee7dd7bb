//! `CONFIG GET` and `CONFIG SET`: the parameters clients and tools ask about.
//!
//! Each node keeps its own values, as a Redis server does. [`PARAMS`] lists every parameter
//! known: the limits this node was started with are reported as they are and cannot be changed
//! at run time (they are flags, see `docs/limits.md`); the others are accepted so that clients
//! and tools which set them keep working, are reported back by `CONFIG GET`, and change nothing:
//! encodings, eviction, replication and persistence work differently here (see the README's
//! compatibility section). An unknown parameter gets Redis' own error.

use std::collections::BTreeMap;
use std::sync::Mutex;

use bytes::Bytes;

use crate::limits::ConnLimits;
use crate::store::Glob;
use crate::store::Reply;

/// What values a parameter takes, checked as Redis 7 checks them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `yes` or `no`, in any case; reported in lower case.
    Bool,
    /// An integer in this range, written as Redis reads one (no `+`, no leading zero).
    Int(i64, i64),
    /// A number of bytes up to this many, with an optional unit (`100mb`, `1k`); reported in
    /// bytes.
    Memory(u64),
    /// One of these words, in any case; reported in lower case.
    OneOf(&'static [&'static str]),
    /// Any text.
    Text,
    /// Set at start by a flag; `CONFIG SET` refuses it.
    Fixed,
}

const COUNT: Kind = Kind::Int(0, i64::MAX);
const INT: Kind = Kind::Int(i32::MIN as i64, i32::MAX as i64);
const BYTES: Kind = Kind::Memory(i64::MAX as u64);

/// Every parameter: name, default, kind.
const PARAMS: &[(&str, &str, Kind)] = &[
    ("active-expire-enabled", "yes", Kind::Bool),
    ("appenddirname", "", Kind::Fixed),
    ("appendfilename", "", Kind::Fixed),
    (
        "appendfsync",
        "always",
        Kind::OneOf(&["everysec", "always", "no"]),
    ),
    ("appendonly", "yes", Kind::Bool),
    ("busy-reply-threshold", "5000", COUNT),
    ("client-output-buffer-limit", "normal 0 0 0", Kind::Text),
    ("client-query-buffer-limit", "", Kind::Fixed),
    ("databases", "1", Kind::Fixed),
    ("dir", "", Kind::Fixed),
    ("hash-max-listpack-entries", "128", COUNT),
    ("hash-max-listpack-value", "64", BYTES),
    ("hash-max-ziplist-entries", "128", COUNT),
    ("hash-max-ziplist-value", "64", BYTES),
    ("hz", "10", Kind::Int(0, i32::MAX as i64)),
    ("latency-tracking", "no", Kind::Bool),
    ("lazyfree-lazy-expire", "no", Kind::Bool),
    ("lazyfree-lazy-server-del", "no", Kind::Bool),
    ("lazyfree-lazy-user-del", "no", Kind::Bool),
    ("lazyfree-lazy-user-flush", "no", Kind::Bool),
    ("list-compress-depth", "0", Kind::Int(0, i32::MAX as i64)),
    ("list-max-listpack-size", "-2", INT),
    ("list-max-ziplist-size", "-2", INT),
    ("lua-time-limit", "5000", COUNT),
    ("maxclients", "", Kind::Fixed),
    ("maxmemory", "", Kind::Memory(u64::MAX)),
    ("maxmemory-clients", "", Kind::Fixed),
    (
        "maxmemory-policy",
        "noeviction",
        // A replicated store does not evict: past `maxmemory` growing writes are refused.
        Kind::OneOf(&["noeviction"]),
    ),
    ("min-replicas-to-write", "0", Kind::Int(0, i32::MAX as i64)),
    ("notify-keyspace-events", "", Kind::Text),
    ("proto-max-bulk-len", "", Kind::Fixed),
    (
        "repl-ping-replica-period",
        "10",
        Kind::Int(1, i32::MAX as i64),
    ),
    ("replica-read-only", "yes", Kind::Bool),
    ("replica-serve-stale-data", "yes", Kind::Bool),
    ("save", "", Kind::Text),
    ("set-max-intset-entries", "512", COUNT),
    ("set-max-listpack-entries", "128", COUNT),
    ("set-max-listpack-value", "64", BYTES),
    ("slowlog-log-slower-than", "10000", Kind::Int(-1, i64::MAX)),
    ("slowlog-max-len", "128", COUNT),
    ("timeout", "", Kind::Fixed),
    ("zset-max-listpack-entries", "128", COUNT),
    ("zset-max-listpack-value", "64", BYTES),
    ("zset-max-ziplist-entries", "128", COUNT),
    ("zset-max-ziplist-value", "64", BYTES),
];

/// One node's parameters.
pub struct NodeConfig {
    values: Mutex<BTreeMap<&'static str, String>>,
    /// Puts a new `maxmemory` in force (the node's memory limit).
    set_maxmemory: Box<dyn Fn(u64) + Send + Sync>,
}

fn kind_of(name: &str) -> Option<(&'static str, Kind)> {
    PARAMS.iter().find(|p| p.0 == name).map(|p| (p.0, p.2))
}

/// A number of bytes as Redis reads one (`memtoull`): decimal digits (none reads as 0), then
/// an optional unit, in any case: `b`, `k` (1000), `kb` (1024), `m`, `mb`, `g`, `gb`. Digits past
/// the 64-bit range read as the largest value; `None` if the product passes it.
fn parse_memory(v: &str) -> Option<u64> {
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (digits, unit) = v.split_at(split);
    let unit = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" => 1000,
        "kb" => 1024,
        "m" => 1000 * 1000,
        "mb" => 1024 * 1024,
        "g" => 1000 * 1000 * 1000,
        "gb" => 1024 * 1024 * 1024,
        _ => return None,
    };
    let n = if digits.is_empty() {
        0
    } else {
        digits.parse::<u64>().unwrap_or(u64::MAX)
    };
    n.checked_mul(unit)
}

/// `value` checked for a parameter of `kind`: the text `CONFIG GET` reports, or why it is
/// refused (in Redis's words).
fn check(kind: Kind, value: &str) -> Result<String, String> {
    match kind {
        Kind::Fixed => Err("can't set immutable config (set it with a flag at start)".into()),
        Kind::Text => Ok(value.to_string()),
        Kind::Bool => match value.to_ascii_lowercase().as_str() {
            v @ ("yes" | "no") => Ok(v.to_string()),
            _ => Err("argument must be 'yes' or 'no'".into()),
        },
        Kind::OneOf(words) => {
            let lower = value.to_ascii_lowercase();
            match words.iter().find(|w| **w == lower) {
                Some(w) => Ok(w.to_string()),
                None => Err(format!(
                    "argument(s) must be one of the following: {}",
                    words.join(", ")
                )),
            }
        }
        Kind::Int(min, max) => match crate::store::parse_int(value.as_bytes()) {
            None => Err("argument couldn't be parsed into an integer".into()),
            Some(n) if n < min || n > max => Err(format!(
                "argument must be between {min} and {max} inclusive"
            )),
            Some(n) => Ok(n.to_string()),
        },
        Kind::Memory(max) => match parse_memory(value) {
            None => Err("argument must be a memory value".into()),
            Some(n) if n > max => Err(format!("argument must be between 0 and {max} inclusive")),
            Some(n) => Ok(n.to_string()),
        },
    }
}

impl NodeConfig {
    /// The defaults, with the limits this node was started with: its connection limits, and
    /// its memory limit `maxmemory`, which `set_maxmemory` changes.
    pub fn new(
        limits: &ConnLimits,
        maxmemory: u64,
        set_maxmemory: impl Fn(u64) + Send + Sync + 'static,
    ) -> NodeConfig {
        let mut values: BTreeMap<&'static str, String> =
            PARAMS.iter().map(|p| (p.0, p.1.to_string())).collect();
        values.insert("maxmemory", maxmemory.to_string());
        values.insert("maxclients", limits.max_clients.to_string());
        values.insert("proto-max-bulk-len", limits.resp.max_bulk.to_string());
        values.insert("maxmemory-clients", limits.client_memory.to_string());
        values.insert(
            "client-query-buffer-limit",
            limits.resp.max_frame.to_string(),
        );
        values.insert(
            "timeout",
            limits.idle.map_or(0, |d| d.as_secs()).to_string(),
        );
        NodeConfig {
            values: Mutex::new(values),
            set_maxmemory: Box::new(set_maxmemory),
        }
    }

    /// `CONFIG GET pattern…`: every parameter matching any pattern, with its value.
    pub fn get(&self, patterns: &[Bytes]) -> Reply {
        // Each pattern compiled once, not for each parameter, and before taking the lock.
        let globs: Vec<Glob> = patterns
            .iter()
            .map(|p| Glob::new(&String::from_utf8_lossy(p).to_ascii_lowercase().into_bytes()))
            .collect();
        let values = self.values.lock().unwrap_or_else(|p| p.into_inner());
        Reply::Map(
            values
                .iter()
                .filter(|(name, _)| globs.iter().any(|g| g.matches(name.as_bytes())))
                .map(|(name, v)| {
                    (
                        Reply::Bulk(Bytes::from_static(name.as_bytes())),
                        Reply::Bulk(Bytes::from(v.clone())),
                    )
                })
                .collect(),
        )
    }

    /// The most a `CONFIG GET` reply can take now: every parameter, name and value, with room
    /// for each one's framing. What a transaction is charged for one it queues.
    pub fn reply_bound(&self) -> usize {
        let values = self.values.lock().unwrap_or_else(|p| p.into_inner());
        values
            .iter()
            .map(|(name, v)| name.len() + v.len() + 32)
            .sum::<usize>()
            + 16
    }

    /// `CONFIG SET name value…`: all or nothing.
    pub fn set(&self, pairs: &[(Bytes, Bytes)]) -> Reply {
        let mut checked = Vec::with_capacity(pairs.len());
        for (name, value) in pairs {
            let name = crate::commands::shown(name).to_ascii_lowercase();
            let value = String::from_utf8_lossy(value).into_owned();
            let Some((name, kind)) = kind_of(&name) else {
                return Reply::error(format!(
                    "ERR Unknown option or number of arguments for CONFIG SET - '{name}'"
                ));
            };
            match check(kind, &value) {
                Ok(value) => checked.push((name, value)),
                Err(why) => {
                    return Reply::error(format!(
                        "ERR CONFIG SET failed (possibly related to argument '{name}') - {why}"
                    ));
                }
            }
        }
        let mut values = self.values.lock().unwrap_or_else(|p| p.into_inner());
        for (name, value) in checked {
            // Under the lock, so the limit in force is the value reported.
            if name == "maxmemory"
                && let Ok(bytes) = value.parse()
            {
                (self.set_maxmemory)(bytes);
            }
            values.insert(name, value);
        }
        Reply::Ok
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;
    use std::sync::atomic::Ordering;

    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn config() -> NodeConfig {
        NodeConfig::new(&ConnLimits::default(), 0, |_| {})
    }

    #[test]
    fn maxmemory_reports_the_limit_in_force_and_puts_a_new_one_in_force() {
        let set = Arc::new(AtomicU64::new(u64::MAX));
        let seen = set.clone();
        let c = NodeConfig::new(&ConnLimits::default(), 3 << 30, move |b| {
            seen.store(b, Ordering::Relaxed)
        });
        let get = |c: &NodeConfig| c.get(&[b("maxmemory")]);
        let value = |v: &str| Reply::Map(vec![(Reply::Bulk(b("maxmemory")), Reply::Bulk(b(v)))]);
        assert_eq!(get(&c), value("3221225472"));
        assert_eq!(c.set(&[(b("maxmemory"), b("100mb"))]), Reply::Ok);
        assert_eq!(set.load(Ordering::Relaxed), 100 << 20);
        assert_eq!(get(&c), value("104857600"));
        // Refused as a whole: nothing put in force.
        let r = c.set(&[(b("maxmemory"), b("1mb")), (b("no-such"), b("1"))]);
        assert!(matches!(r, Reply::Error(_)), "{r:?}");
        assert_eq!(set.load(Ordering::Relaxed), 100 << 20);
        // Other parameters leave it alone.
        assert_eq!(c.set(&[(b("hash-max-ziplist-entries"), b("5"))]), Reply::Ok);
        assert_eq!(
            c.set(&[(b("maxmemory-policy"), b("noeviction"))]),
            Reply::Ok
        );
        assert_eq!(set.load(Ordering::Relaxed), 100 << 20);
    }

    #[test]
    fn set_then_get_and_unknown_names_are_refused_whole() {
        let c = config();
        assert_eq!(c.set(&[(b("hash-max-ziplist-entries"), b("5"))]), Reply::Ok);
        assert_eq!(
            c.get(&[b("hash-max-ziplist-*")]),
            Reply::Map(vec![
                (
                    Reply::Bulk(b("hash-max-ziplist-entries")),
                    Reply::Bulk(b("5"))
                ),
                (
                    Reply::Bulk(b("hash-max-ziplist-value")),
                    Reply::Bulk(b("64"))
                ),
            ])
        );
        let r = c.set(&[(b("maxmemory"), b("1mb")), (b("no-such"), b("1"))]);
        assert_eq!(
            r,
            Reply::error("ERR Unknown option or number of arguments for CONFIG SET - 'no-such'")
        );
        assert_eq!(
            c.get(&[b("maxmemory")]),
            Reply::Map(vec![(Reply::Bulk(b("maxmemory")), Reply::Bulk(b("0")))]),
            "nothing was set"
        );
        assert!(c.set(&[(b("appendonly"), b("maybe"))]).is_error());
        assert!(c.set(&[(b("maxclients"), b("5"))]).is_error());
    }

    #[test]
    fn values_are_checked_and_reported_as_redis_checks_and_reports_them() {
        let c = config();
        let set_get = |name: &str, value: &str| -> Result<String, String> {
            match c.set(&[(b(name), b(value))]) {
                Reply::Ok => match c.get(&[b(name)]) {
                    Reply::Map(pairs) => match &pairs[..] {
                        [(_, Reply::Bulk(v))] => Ok(String::from_utf8_lossy(v).into_owned()),
                        other => panic!("{other:?}"),
                    },
                    other => panic!("{other:?}"),
                },
                Reply::Error(e) => {
                    let prefix =
                        format!("ERR CONFIG SET failed (possibly related to argument '{name}') - ");
                    Err(e.strip_prefix(&prefix).unwrap_or(&e).to_string())
                }
                other => panic!("{other:?}"),
            }
        };
        let ok = |v: &str| Ok(v.to_string());
        let err = |e: &str| Err(e.to_string());
        let policies = "argument(s) must be one of the following: noeviction";
        let not_int = "argument couldn't be parsed into an integer";
        let not_memory = "argument must be a memory value";
        let cases = [
            ("maxmemory-policy", "nonsense", err(policies)),
            ("maxmemory-policy", "ALLKEYS-LRU", err(policies)),
            ("maxmemory-policy", "NoEviction", ok("noeviction")),
            (
                "appendfsync",
                "sometimes",
                err("argument(s) must be one of the following: everysec, always, no"),
            ),
            ("appendfsync", "EVERYSEC", ok("everysec")),
            ("appendonly", "YES", ok("yes")),
            ("appendonly", "maybe", err("argument must be 'yes' or 'no'")),
            ("maxmemory", "100mb", ok("104857600")),
            ("maxmemory", "1k", ok("1000")),
            ("maxmemory", "1KB", ok("1024")),
            ("maxmemory", "2G", ok("2000000000")),
            ("maxmemory", "007", ok("7")),
            ("maxmemory", "", ok("0")),
            (
                "maxmemory",
                "99999999999999999999",
                ok("18446744073709551615"),
            ),
            ("maxmemory", "-1", err(not_memory)),
            ("maxmemory", "1.5mb", err(not_memory)),
            ("maxmemory", "1tb", err(not_memory)),
            ("maxmemory", " 5", err(not_memory)),
            ("maxmemory", "99999999999gb", err(not_memory)),
            ("hash-max-listpack-value", "1k", ok("1000")),
            (
                "hash-max-listpack-value",
                "18446744073709551615",
                err("argument must be between 0 and 9223372036854775807 inclusive"),
            ),
            ("hash-max-listpack-entries", "1k", err(not_int)),
            ("hash-max-listpack-entries", "+5", err(not_int)),
            ("hash-max-listpack-entries", "007", err(not_int)),
            (
                "hash-max-listpack-entries",
                "-1",
                err("argument must be between 0 and 9223372036854775807 inclusive"),
            ),
            ("list-max-listpack-size", "-6", ok("-6")),
            (
                "list-max-listpack-size",
                "-9223372036854775808",
                err("argument must be between -2147483648 and 2147483647 inclusive"),
            ),
            (
                "repl-ping-replica-period",
                "0",
                err("argument must be between 1 and 2147483647 inclusive"),
            ),
            (
                "slowlog-log-slower-than",
                "-5",
                err("argument must be between -1 and 9223372036854775807 inclusive"),
            ),
            ("slowlog-log-slower-than", "-1", ok("-1")),
        ];
        for (name, value, want) in cases {
            assert_eq!(set_get(name, value), want, "CONFIG SET {name} {value:?}");
        }
    }
}
