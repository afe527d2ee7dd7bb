//! From a client's arguments to what to do: answer at once, replicate a write, or read.
//!
//! Each command is parsed here, arity and syntax included, so every mistake gets the reply a
//! Redis client expects (`-ERR wrong number of arguments for 'get' command`, `-ERR syntax
//! error`, …) and only well-formed work reaches the cluster.

use bytes::Bytes;

use crate::store::Condition;
use crate::store::Expiry;
use crate::store::ReadOp;
use crate::store::Reply;
use crate::store::WriteOp;

/// What the server does with a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Answer right away.
    Reply(Reply),
    /// Replicate a write; `post` adjusts the store's reply to the command's own reply shape.
    Write { op: WriteOp, post: Post },
    /// Read from the store.
    Read(ReadOp),
    /// `INFO [section]`.
    Info(Option<String>),
    /// `HELLO [2|3]`: switch protocol (if given) and report server facts.
    Hello(Option<crate::resp::Proto>),
    /// `QUIT`: answer `+OK`, then close.
    Quit,
}

/// How a write's reply is reshaped for the command that issued it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Post {
    /// As is.
    None,
    /// `SETNX`: `OK` becomes 1, nil becomes 0.
    OkToOne,
}

impl Post {
    pub fn apply(self, r: Reply) -> Reply {
        match (self, r) {
            (Post::OkToOne, Reply::Ok) => Reply::Int(1),
            (Post::OkToOne, Reply::Nil) => Reply::Int(0),
            (_, r) => r,
        }
    }
}

fn error(msg: impl Into<String>) -> Action {
    Action::Reply(Reply::Error(msg.into()))
}

fn arity(name: &str) -> Action {
    error(format!(
        "ERR wrong number of arguments for '{name}' command"
    ))
}

fn syntax() -> Action {
    error("ERR syntax error")
}

fn parse_i64(b: &Bytes) -> Option<i64> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

const NOT_INT: &str = "ERR value is not an integer or out of range";

/// Parses the arguments of one command; `now` is the accepting node's time in milliseconds.
#[cfg(test)]
pub fn parse(args: &[Bytes], now: u64) -> Action {
    let max_value = crate::resp::Limits::default().max_bulk;
    parse_as(args.first().and_then(|a| known(a)), args, now, max_value)
}

/// The latest expiry time a key can have: what `PTTL` can still answer.
const MAX_EXPIRE_AT: u64 = i64::MAX as u64;

/// Like `parse` (in tests), for a caller that already looked the command's name up with [`known`];
/// `max_value` is the longest string APPEND or SETRANGE may build (`proto-max-bulk-len`).
pub fn parse_as(name: Option<&'static str>, args: &[Bytes], now: u64, max_value: usize) -> Action {
    let Some(first) = args.first() else {
        return Action::Reply(Reply::Ok);
    };
    let rest = &args[1..];
    let Some(name) = name else {
        return unknown_command(first, rest);
    };
    let n = rest.len();
    let write = |op| Action::Write {
        op,
        post: Post::None,
    };
    match name {
        "ping" => match n {
            0 => Action::Reply(Reply::Bulk(Bytes::from_static(b"PONG"))),
            1 => Action::Reply(Reply::Bulk(rest[0].clone())),
            _ => arity(name),
        },
        "echo" if n == 1 => Action::Reply(Reply::Bulk(rest[0].clone())),
        "hello" => match rest.first().map(parse_i64) {
            None => Action::Hello(None),
            Some(Some(2)) => Action::Hello(Some(crate::resp::Proto::Resp2)),
            Some(Some(3)) => Action::Hello(Some(crate::resp::Proto::Resp3)),
            Some(Some(_)) => error("NOPROTO unsupported protocol version"),
            Some(None) => error("ERR Protocol version is not an integer or out of range"),
        },
        "select" if n == 1 => match parse_i64(&rest[0]) {
            Some(0) => Action::Reply(Reply::Ok),
            Some(_) => error("ERR DB index is out of range"),
            None => error(NOT_INT),
        },
        "quit" => Action::Quit,
        "get" if n == 1 => Action::Read(ReadOp::Get(rest[0].clone())),
        "set" if n >= 2 => parse_set(&rest[0], &rest[1], &rest[2..], now),
        "getset" if n == 2 => write(WriteOp::Set {
            key: rest[0].clone(),
            value: rest[1].clone(),
            expiry: Expiry::Clear,
            condition: Condition::Always,
            get: true,
        }),
        "setnx" if n == 2 => Action::Write {
            op: WriteOp::Set {
                key: rest[0].clone(),
                value: rest[1].clone(),
                expiry: Expiry::Clear,
                condition: Condition::IfAbsent,
                get: false,
            },
            post: Post::OkToOne,
        },
        // SETEX key seconds value: SET key value EX seconds (and PSETEX with PX), with Redis's
        // own error for a time that is not positive.
        "setex" | "psetex" if n == 3 => match parse_i64(&rest[1]) {
            Some(t) if t > 0 => {
                let unit = if name == "setex" { "EX" } else { "PX" };
                parse_set(
                    &rest[0],
                    &rest[2],
                    &[Bytes::from_static(unit.as_bytes()), rest[1].clone()],
                    now,
                )
            }
            Some(_) => error(format!("ERR invalid expire time in '{name}' command")),
            None => error(NOT_INT),
        },
        // UNLINK frees memory in the background in Redis; here deleting is already cheap.
        "del" | "unlink" if n >= 1 => write(WriteOp::Del(rest.to_vec())),
        // TOUCH counts the keys that exist (access times are not tracked).
        "exists" | "touch" if n >= 1 => Action::Read(ReadOp::Exists(rest.to_vec())),
        "incr" if n == 1 => write(WriteOp::IncrBy(rest[0].clone(), 1)),
        "decr" if n == 1 => write(WriteOp::IncrBy(rest[0].clone(), -1)),
        "incrby" | "decrby" if n == 2 => match parse_i64(&rest[1]) {
            Some(by) if name == "incrby" => write(WriteOp::IncrBy(rest[0].clone(), by)),
            Some(by) => match by.checked_neg() {
                Some(neg) => write(WriteOp::IncrBy(rest[0].clone(), neg)),
                None => error("ERR decrement would overflow"),
            },
            None => error(NOT_INT),
        },
        "append" if n == 2 => write(WriteOp::AppendAtMost {
            key: rest[0].clone(),
            suffix: rest[1].clone(),
            max: max_value as u64,
        }),
        "setrange" if n == 3 => match parse_i64(&rest[1]) {
            Some(offset) if offset < 0 => error("ERR offset is out of range"),
            Some(offset) => write(WriteOp::SetRange {
                key: rest[0].clone(),
                offset: offset as u64,
                value: rest[2].clone(),
                max: max_value as u64,
            }),
            None => error(NOT_INT),
        },
        "strlen" if n == 1 => Action::Read(ReadOp::Strlen(rest[0].clone())),
        "mget" if n >= 1 => Action::Read(ReadOp::MGet(rest.to_vec())),
        "mset" if n >= 2 && n.is_multiple_of(2) => write(WriteOp::MSet(
            rest.chunks(2)
                .map(|p| (p[0].clone(), p[1].clone()))
                .collect(),
        )),
        "expire" | "pexpire" if n == 2 => match parse_i64(&rest[1]) {
            Some(t) => {
                // As in Redis, a time past what PTTL can answer is refused, not saturated.
                let ms = if name == "expire" {
                    t.checked_mul(1000)
                } else {
                    Some(t)
                };
                match ms.and_then(|ms| (now as i64).checked_add(ms)) {
                    Some(at) => write(WriteOp::Expire {
                        key: rest[0].clone(),
                        at: Some(at.max(0) as u64),
                    }),
                    None => error(format!("ERR invalid expire time in '{name}' command")),
                }
            }
            None => error(NOT_INT),
        },
        "persist" if n == 1 => write(WriteOp::Expire {
            key: rest[0].clone(),
            at: None,
        }),
        "ttl" | "pttl" if n == 1 => Action::Read(ReadOp::Ttl {
            key: rest[0].clone(),
            millis: name == "pttl",
        }),
        "keys" if n == 1 => Action::Read(ReadOp::Keys(rest[0].clone())),
        "scan" if n >= 1 => parse_scan(rest),
        "dbsize" if n == 0 => Action::Read(ReadOp::DbSize),
        "flushdb" | "flushall" if n <= 1 => write(WriteOp::FlushDb),
        "info" if n <= 1 => Action::Info(
            rest.first()
                .map(|s| String::from_utf8_lossy(s).to_ascii_lowercase()),
        ),
        "command" => parse_command_cmd(rest),
        "client" if n >= 1 => parse_client(rest),
        "config" if n >= 1 => match String::from_utf8_lossy(&rest[0])
            .to_ascii_lowercase()
            .as_str()
        {
            "get" => Action::Reply(Reply::Map(Vec::new())),
            "set" | "resetstat" | "rewrite" => Action::Reply(Reply::Ok),
            _ => syntax(),
        },
        _ => arity(name),
    }
}

fn unknown_command(name: &Bytes, rest: &[Bytes]) -> Action {
    let preview: Vec<String> = rest
        .iter()
        .take(3)
        .map(|a| format!("'{}'", String::from_utf8_lossy(a)))
        .collect();
    error(format!(
        "ERR unknown command '{}', with args beginning with: {}",
        String::from_utf8_lossy(name),
        preview.join(" ")
    ))
}

fn parse_set(key: &Bytes, value: &Bytes, opts: &[Bytes], now: u64) -> Action {
    let mut expiry = Expiry::Clear;
    let mut condition = Condition::Always;
    let mut get = false;
    let mut seen_expiry = false;
    let mut i = 0;
    while i < opts.len() {
        let opt = String::from_utf8_lossy(&opts[i]).to_ascii_uppercase();
        match opt.as_str() {
            "NX" | "XX" if condition == Condition::Always => {
                condition = if opt == "NX" {
                    Condition::IfAbsent
                } else {
                    Condition::IfPresent
                };
            }
            "GET" => get = true,
            "KEEPTTL" if !seen_expiry => {
                expiry = Expiry::Keep;
                seen_expiry = true;
            }
            "EX" | "PX" | "EXAT" | "PXAT" if !seen_expiry => {
                let Some(t) = opts.get(i + 1).and_then(parse_i64) else {
                    return match opts.get(i + 1) {
                        Some(_) => error(NOT_INT),
                        None => syntax(),
                    };
                };
                if t <= 0 {
                    return error("ERR invalid expire time in 'set' command");
                }
                let t = t as u64;
                let at = match opt.as_str() {
                    "EX" => t.checked_mul(1000).and_then(|ms| now.checked_add(ms)),
                    "PX" => now.checked_add(t),
                    "EXAT" => t.checked_mul(1000),
                    _ => Some(t),
                };
                // As in Redis: a time that overflows, or that PTTL could not answer, is refused.
                let Some(at) = at.filter(|at| *at <= MAX_EXPIRE_AT) else {
                    return error("ERR invalid expire time in 'set' command");
                };
                expiry = Expiry::At(at);
                seen_expiry = true;
                i += 1;
            }
            _ => return syntax(),
        }
        i += 1;
    }
    Action::Write {
        op: WriteOp::Set {
            key: key.clone(),
            value: value.clone(),
            expiry,
            condition,
            get,
        },
        post: Post::None,
    }
}

/// Most keys one SCAN step (and one step of KEYS) examines.
pub const SCAN_STEP: usize = 10_000;

fn parse_scan(args: &[Bytes]) -> Action {
    let Some(cursor) = std::str::from_utf8(&args[0])
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    else {
        return error("ERR invalid cursor");
    };
    let mut pattern = None;
    let mut count = 10usize;
    let mut i = 1;
    while i < args.len() {
        let opt = String::from_utf8_lossy(&args[i]).to_ascii_uppercase();
        let Some(value) = args.get(i + 1) else {
            return syntax();
        };
        match opt.as_str() {
            "MATCH" => pattern = Some(value.clone()),
            "COUNT" => match parse_i64(value) {
                // COUNT is a hint: one step walks at most SCAN_STEP keys, so it never holds the
                // state machine for long.
                Some(c) if c >= 1 => count = (c as usize).min(SCAN_STEP),
                Some(_) => return syntax(),
                None => return error(NOT_INT),
            },
            "TYPE" => {
                // Every value is a string.
                if !value.eq_ignore_ascii_case(b"string") {
                    return Action::Reply(Reply::Array(vec![
                        Reply::Bulk(Bytes::from_static(b"0")),
                        Reply::Array(Vec::new()),
                    ]));
                }
            }
            _ => return syntax(),
        }
        i += 2;
    }
    Action::Read(ReadOp::Scan {
        cursor,
        pattern,
        count,
    })
}

fn parse_client(args: &[Bytes]) -> Action {
    match String::from_utf8_lossy(&args[0])
        .to_ascii_lowercase()
        .as_str()
    {
        "setname" | "setinfo" | "no-evict" | "no-touch" | "reply" => Action::Reply(Reply::Ok),
        "getname" => Action::Reply(Reply::Nil),
        "id" => Action::Reply(Reply::Int(0)),
        _ => error("ERR unknown subcommand for 'client'"),
    }
}

/// The canonical (lower-case) name of a command this server knows, whatever case `name` is in.
pub fn known(name: &[u8]) -> Option<&'static str> {
    COMMANDS
        .iter()
        .map(|c| c.0)
        .find(|c| c.as_bytes().eq_ignore_ascii_case(name))
}

/// `(name, arity, flags, first key, last key, step)` — what `COMMAND` reports.
type CommandSpec = (&'static str, i64, &'static [&'static str], i64, i64, i64);

/// Whether the command `name` (canonical) changes data.
pub fn is_write(name: &str) -> bool {
    COMMANDS
        .iter()
        .find(|c| c.0 == name)
        .is_some_and(|c| c.2.contains(&"write"))
}

const COMMANDS: &[CommandSpec] = &[
    (
        "acl",
        -2,
        &["admin", "noscript", "loading", "stale"],
        0,
        0,
        0,
    ),
    ("append", 3, &["write"], 1, 1, 1),
    (
        "auth",
        -2,
        &["noscript", "loading", "stale", "fast"],
        0,
        0,
        0,
    ),
    ("client", -2, &["admin"], 0, 0, 0),
    ("command", -1, &["loading", "stale"], 0, 0, 0),
    ("config", -2, &["admin"], 0, 0, 0),
    ("dbsize", 1, &["readonly", "fast"], 0, 0, 0),
    ("decr", 2, &["write", "fast"], 1, 1, 1),
    ("decrby", 3, &["write", "fast"], 1, 1, 1),
    ("del", -2, &["write"], 1, -1, 1),
    ("echo", 2, &["fast"], 0, 0, 0),
    ("exists", -2, &["readonly", "fast"], 1, -1, 1),
    ("expire", 3, &["write", "fast"], 1, 1, 1),
    ("flushall", -1, &["write"], 0, 0, 0),
    ("flushdb", -1, &["write"], 0, 0, 0),
    ("get", 2, &["readonly", "fast"], 1, 1, 1),
    ("getset", 3, &["write"], 1, 1, 1),
    ("hello", -1, &["fast"], 0, 0, 0),
    ("incr", 2, &["write", "fast"], 1, 1, 1),
    ("incrby", 3, &["write", "fast"], 1, 1, 1),
    ("info", -1, &["loading", "stale"], 0, 0, 0),
    ("keys", 2, &["readonly"], 0, 0, 0),
    ("mget", -2, &["readonly", "fast"], 1, -1, 1),
    ("mset", -3, &["write"], 1, -1, 2),
    ("persist", 2, &["write", "fast"], 1, 1, 1),
    ("pexpire", 3, &["write", "fast"], 1, 1, 1),
    ("psetex", 4, &["write"], 1, 1, 1),
    ("ping", -1, &["fast", "stale"], 0, 0, 0),
    ("pttl", 2, &["readonly", "fast"], 1, 1, 1),
    ("quit", -1, &["fast"], 0, 0, 0),
    ("scan", -2, &["readonly"], 0, 0, 0),
    ("select", 2, &["fast"], 0, 0, 0),
    ("set", -3, &["write"], 1, 1, 1),
    ("setex", 4, &["write"], 1, 1, 1),
    ("setnx", 3, &["write", "fast"], 1, 1, 1),
    ("setrange", 4, &["write"], 1, 1, 1),
    ("strlen", 2, &["readonly", "fast"], 1, 1, 1),
    ("touch", -2, &["readonly", "fast"], 1, -1, 1),
    ("ttl", 2, &["readonly", "fast"], 1, 1, 1),
    ("unlink", -2, &["write", "fast"], 1, -1, 1),
];

fn command_info(c: &CommandSpec) -> Reply {
    Reply::Array(vec![
        Reply::Bulk(Bytes::from(c.0)),
        Reply::Int(c.1),
        Reply::Array(c.2.iter().map(|f| Reply::Bulk(Bytes::from(*f))).collect()),
        Reply::Int(c.3),
        Reply::Int(c.4),
        Reply::Int(c.5),
    ])
}

fn parse_command_cmd(args: &[Bytes]) -> Action {
    let sub = args
        .first()
        .map(|s| String::from_utf8_lossy(s).to_ascii_lowercase());
    match sub.as_deref() {
        None => Action::Reply(Reply::Array(COMMANDS.iter().map(command_info).collect())),
        Some("count") => Action::Reply(Reply::Int(COMMANDS.len() as i64)),
        Some("docs") => Action::Reply(Reply::Array(Vec::new())),
        Some("info") => Action::Reply(Reply::Array(
            args[1..]
                .iter()
                .map(|name| {
                    let name = String::from_utf8_lossy(name).to_ascii_lowercase();
                    COMMANDS
                        .iter()
                        .find(|c| c.0 == name)
                        .map_or(Reply::Nil, command_info)
                })
                .collect(),
        )),
        Some(_) => error("ERR unknown subcommand for 'command'"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_names_are_canonical_and_unknown_ones_are_not() {
        assert_eq!(known(b"SeT"), Some("set"));
        assert_eq!(known(b"getset"), Some("getset"));
        assert_eq!(known(b"hgetall"), None);
        assert_eq!(known(b""), None);
    }

    fn args(s: &str) -> Vec<Bytes> {
        s.split_whitespace()
            .map(|a| Bytes::copy_from_slice(a.as_bytes()))
            .collect()
    }

    #[test]
    fn arity_and_unknown_commands() {
        assert_eq!(
            parse(&args("GET"), 0),
            Action::Reply(Reply::Error(
                "ERR wrong number of arguments for 'get' command".into()
            ))
        );
        assert!(
            matches!(parse(&args("FOO bar"), 0), Action::Reply(Reply::Error(e)) if e.starts_with("ERR unknown command 'FOO'"))
        );
        assert!(matches!(
            parse(&args("SELECT 1"), 0),
            Action::Reply(Reply::Error(_))
        ));
        assert_eq!(parse(&args("SELECT 0"), 0), Action::Reply(Reply::Ok));
    }

    #[test]
    fn setex_psetex_unlink_and_touch_are_their_set_del_and_exists_forms() {
        assert_eq!(
            parse(&args("SETEX k 10 v"), 5_000),
            parse(&args("SET k v EX 10"), 5_000)
        );
        assert_eq!(
            parse(&args("PSETEX k 10 v"), 5_000),
            parse(&args("SET k v PX 10"), 5_000)
        );
        for bad in ["SETEX k 0 v", "PSETEX k -1 v"] {
            assert!(
                matches!(parse(&args(bad), 0), Action::Reply(Reply::Error(e)) if e.starts_with("ERR invalid expire time")),
                "{bad}"
            );
        }
        assert_eq!(parse(&args("UNLINK a b"), 0), parse(&args("DEL a b"), 0));
        assert_eq!(parse(&args("TOUCH a b"), 0), parse(&args("EXISTS a b"), 0));
        assert!(is_write("setex") && is_write("psetex") && is_write("unlink"));
        assert!(!is_write("touch"));
    }

    #[test]
    fn set_options() {
        let Action::Write { op, .. } = parse(&args("SET k v EX 10 NX GET"), 5_000) else {
            panic!()
        };
        assert_eq!(
            op,
            WriteOp::Set {
                key: "k".into(),
                value: "v".into(),
                expiry: Expiry::At(15_000),
                condition: Condition::IfAbsent,
                get: true,
            }
        );
        assert!(
            matches!(parse(&args("SET k v EX"), 0), Action::Reply(Reply::Error(e)) if e == "ERR syntax error")
        );
        assert!(matches!(
            parse(&args("SET k v EX 0"), 0),
            Action::Reply(Reply::Error(_))
        ));
        assert!(matches!(
            parse(&args("SET k v NX XX"), 0),
            Action::Reply(Reply::Error(_))
        ));
        assert!(matches!(
            parse(&args("SET k v EX 1 PX 1"), 0),
            Action::Reply(Reply::Error(_))
        ));
    }

    #[test]
    fn expire_times_that_overflow_are_refused_as_in_redis() {
        let now = 1_700_000_000_000;
        for cmd in [
            "SET k v EXAT 9223372036854775807",
            "SET k v EX 9223372036854775807",
            "SET k v PX 9223372036854775807",
            "SET k v EX 9223372036854775",
        ] {
            let got = parse(&args(cmd), now);
            assert!(
                matches!(&got, Action::Reply(Reply::Error(e)) if e == "ERR invalid expire time in 'set' command"),
                "{cmd}: {got:?}"
            );
        }
        // The largest PXAT is i64::MAX ms, what PTTL can answer.
        assert!(matches!(
            parse(&args("SET k v PXAT 9223372036854775807"), now),
            Action::Write { .. }
        ));
        assert!(matches!(
            parse(&args("EXPIRE k 9223372036854775807"), now),
            Action::Reply(Reply::Error(e)) if e == "ERR invalid expire time in 'expire' command"
        ));
        assert!(matches!(
            parse(&args("PEXPIRE k 9223372036854775807"), now),
            Action::Reply(Reply::Error(e)) if e == "ERR invalid expire time in 'pexpire' command"
        ));
        assert!(matches!(
            parse(&args("EXPIRE k -5"), now),
            Action::Write {
                op: WriteOp::Expire { at: Some(_), .. },
                ..
            }
        ));
    }

    #[test]
    fn hello_negotiates_the_protocol() {
        use crate::resp::Proto;
        assert_eq!(parse(&args("HELLO"), 0), Action::Hello(None));
        assert_eq!(
            parse(&args("HELLO 2"), 0),
            Action::Hello(Some(Proto::Resp2))
        );
        assert_eq!(
            parse(&args("HELLO 3"), 0),
            Action::Hello(Some(Proto::Resp3))
        );
        assert!(
            matches!(parse(&args("HELLO 4"), 0), Action::Reply(Reply::Error(e)) if e.starts_with("NOPROTO"))
        );
    }

    #[test]
    fn setnx_reply_is_an_integer() {
        let Action::Write { post, .. } = parse(&args("SETNX a b"), 0) else {
            panic!()
        };
        assert_eq!(post.apply(Reply::Ok), Reply::Int(1));
        assert_eq!(post.apply(Reply::Nil), Reply::Int(0));
    }
}
