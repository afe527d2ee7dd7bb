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
use crate::store::Reply;
use crate::store::glob_match;

/// What values a parameter takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `yes` or `no`.
    Bool,
    /// An integer (memory sizes may carry a unit: `100mb`).
    Int,
    /// Any text.
    Text,
    /// Set at start by a flag; `CONFIG SET` refuses it.
    Fixed,
}

/// Every parameter: name, default, kind.
const PARAMS: &[(&str, &str, Kind)] = &[
    ("active-expire-enabled", "yes", Kind::Bool),
    ("appenddirname", "", Kind::Fixed),
    ("appendfilename", "", Kind::Fixed),
    ("appendfsync", "always", Kind::Text),
    ("appendonly", "yes", Kind::Bool),
    ("busy-reply-threshold", "5000", Kind::Int),
    ("client-output-buffer-limit", "normal 0 0 0", Kind::Text),
    ("client-query-buffer-limit", "", Kind::Fixed),
    ("databases", "1", Kind::Fixed),
    ("dir", "", Kind::Fixed),
    ("hash-max-listpack-entries", "128", Kind::Int),
    ("hash-max-listpack-value", "64", Kind::Int),
    ("hash-max-ziplist-entries", "128", Kind::Int),
    ("hash-max-ziplist-value", "64", Kind::Int),
    ("latency-tracking", "no", Kind::Bool),
    ("lazyfree-lazy-expire", "no", Kind::Bool),
    ("lazyfree-lazy-server-del", "no", Kind::Bool),
    ("lazyfree-lazy-user-del", "no", Kind::Bool),
    ("lazyfree-lazy-user-flush", "no", Kind::Bool),
    ("list-max-listpack-size", "-2", Kind::Int),
    ("list-max-ziplist-size", "-2", Kind::Int),
    ("lua-time-limit", "5000", Kind::Int),
    ("maxclients", "", Kind::Fixed),
    ("maxmemory", "0", Kind::Int),
    ("maxmemory-policy", "noeviction", Kind::Text),
    ("min-replicas-to-write", "0", Kind::Int),
    ("notify-keyspace-events", "", Kind::Text),
    ("proto-max-bulk-len", "", Kind::Fixed),
    ("repl-ping-replica-period", "10", Kind::Int),
    ("replica-read-only", "yes", Kind::Bool),
    ("replica-serve-stale-data", "yes", Kind::Bool),
    ("save", "", Kind::Text),
    ("set-max-intset-entries", "512", Kind::Int),
    ("set-max-listpack-entries", "128", Kind::Int),
    ("slowlog-log-slower-than", "10000", Kind::Int),
    ("slowlog-max-len", "128", Kind::Int),
    ("timeout", "", Kind::Fixed),
    ("zset-max-listpack-entries", "128", Kind::Int),
    ("zset-max-ziplist-entries", "128", Kind::Int),
    ("zset-max-ziplist-value", "64", Kind::Int),
];

/// One node's parameters.
pub struct NodeConfig {
    values: Mutex<BTreeMap<&'static str, String>>,
}

fn kind_of(name: &str) -> Option<(&'static str, Kind)> {
    PARAMS.iter().find(|p| p.0 == name).map(|p| (p.0, p.2))
}

/// Whether `v` reads as an integer, with an optional memory unit.
fn is_int(v: &str) -> bool {
    let lower = v.to_ascii_lowercase();
    let digits = ["kb", "mb", "gb", "k", "m", "g", "b"]
        .iter()
        .find_map(|u| lower.strip_suffix(u))
        .unwrap_or(&lower);
    digits.parse::<i64>().is_ok()
}

impl NodeConfig {
    /// The defaults, with the limits this node was started with.
    pub fn new(limits: &ConnLimits) -> NodeConfig {
        let mut values: BTreeMap<&'static str, String> =
            PARAMS.iter().map(|p| (p.0, p.1.to_string())).collect();
        values.insert("maxclients", limits.max_clients.to_string());
        values.insert("proto-max-bulk-len", limits.resp.max_bulk.to_string());
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
        }
    }

    /// `CONFIG GET pattern…`: every parameter matching any pattern, with its value.
    pub fn get(&self, patterns: &[Bytes]) -> Reply {
        let values = self.values.lock().unwrap_or_else(|p| p.into_inner());
        Reply::Map(
            values
                .iter()
                .filter(|(name, _)| {
                    patterns.iter().any(|p| {
                        glob_match(
                            &String::from_utf8_lossy(p).to_ascii_lowercase().into_bytes(),
                            name.as_bytes(),
                        )
                    })
                })
                .map(|(name, v)| {
                    (
                        Reply::Bulk(Bytes::from_static(name.as_bytes())),
                        Reply::Bulk(Bytes::from(v.clone())),
                    )
                })
                .collect(),
        )
    }

    /// `CONFIG SET name value…`: all or nothing.
    pub fn set(&self, pairs: &[(Bytes, Bytes)]) -> Reply {
        let mut checked = Vec::with_capacity(pairs.len());
        for (name, value) in pairs {
            let name = String::from_utf8_lossy(name).to_ascii_lowercase();
            let value = String::from_utf8_lossy(value).into_owned();
            let Some((name, kind)) = kind_of(&name) else {
                return Reply::error(format!(
                    "ERR Unknown option or number of arguments for CONFIG SET - '{name}'"
                ));
            };
            let refused = |why: &str| {
                Reply::error(format!(
                    "ERR CONFIG SET failed (possibly related to argument '{name}') - {why}"
                ))
            };
            match kind {
                Kind::Fixed => {
                    return refused("can't set immutable config (set it with a flag at start)");
                }
                Kind::Bool if !matches!(value.to_ascii_lowercase().as_str(), "yes" | "no") => {
                    return refused("argument must be 'yes' or 'no'");
                }
                Kind::Int if !is_int(&value) => {
                    return refused("argument couldn't be parsed into an integer");
                }
                _ => {}
            }
            checked.push((name, value));
        }
        let mut values = self.values.lock().unwrap_or_else(|p| p.into_inner());
        for (name, value) in checked {
            values.insert(name, value);
        }
        Reply::Ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn set_then_get_and_unknown_names_are_refused_whole() {
        let c = NodeConfig::new(&ConnLimits::default());
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
}
