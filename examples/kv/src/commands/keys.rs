//! Parsers of the commands on whole keys: deletion, expiry, renaming, iteration.

use bytes::Bytes;

use super::Action;
use super::Args;
use super::MAX_EXPIRE_AT;
use super::NOT_INT;
use super::error;
use super::parse_i64;
use super::syntax;
use super::upper;
use super::write;
use crate::store::ExpireIf;
use crate::store::Kind;
use crate::store::ReadOp;
use crate::store::Reply;
use crate::store::WriteOp;

/// Most keys one SCAN step (and one step of KEYS) examines.
pub const SCAN_STEP: usize = 10_000;

/// `DEL` and `UNLINK` (which frees memory in the background in Redis; here deleting is already
/// cheap).
pub(super) fn del(a: &Args) -> Action {
    write(WriteOp::Del(a.rest.to_vec()))
}

/// `EXISTS` and `TOUCH` (which counts the keys that exist; access times are not tracked).
pub(super) fn exists(a: &Args) -> Action {
    Action::Read(ReadOp::Exists(a.rest.to_vec()))
}

/// `EXPIRE`, `PEXPIRE`, `EXPIREAT`, `PEXPIREAT`, with Redis 7's `NX`/`XX`/`GT`/`LT`.
pub(super) fn expire(a: &Args) -> Action {
    // As in Redis, the options are read before the time.
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for opt in &a.rest[2..] {
        match upper(opt).as_str() {
            "NX" => nx = true,
            "XX" => xx = true,
            "GT" => gt = true,
            "LT" => lt = true,
            _ => {
                return error(format!("ERR Unsupported option {}", super::shown(opt)));
            }
        }
    }
    if nx && (xx || gt || lt) {
        return error("ERR NX and XX, GT or LT options at the same time are not compatible");
    }
    if gt && lt {
        return error("ERR GT and LT options at the same time are not compatible");
    }
    let Some(t) = parse_i64(&a.rest[1]) else {
        return error(NOT_INT);
    };
    let when = match (nx, xx, gt, lt) {
        (true, ..) => ExpireIf::NoExpiry,
        (_, _, true, _) => ExpireIf::Later,
        (_, _, _, true) => ExpireIf::Sooner,
        (_, true, ..) => ExpireIf::HasExpiry,
        _ => ExpireIf::Always,
    };
    // As in Redis, a time past what PTTL can answer is refused, not saturated.
    let ms = match a.name {
        "expire" | "expireat" => t.checked_mul(1000),
        _ => Some(t),
    };
    let at = match a.name {
        "expire" | "pexpire" => ms.and_then(|ms| (a.now as i64).checked_add(ms)),
        _ => ms,
    };
    // EXPIRE and PEXPIRE stay relative: the store resolves them at the leader's time when the
    // write applies. The accepting node's clock only decides whether the time is too large.
    let relative = matches!(a.name, "expire" | "pexpire");
    match (at, ms) {
        // LT with XX: sooner, and only if there is an expiry to be sooner than.
        (Some(at), Some(ms)) if at <= MAX_EXPIRE_AT as i64 && lt && xx => write(if relative {
            WriteOp::ExpireSoonerIfSetIn { key: a.key(), ms }
        } else {
            WriteOp::ExpireSoonerIfSet {
                key: a.key(),
                at: at.max(0) as u64,
            }
        }),
        (Some(at), Some(ms)) if at <= MAX_EXPIRE_AT as i64 => write(if relative {
            WriteOp::ExpireIn {
                key: a.key(),
                ms,
                when,
            }
        } else {
            WriteOp::ExpireAt {
                key: a.key(),
                at: at.max(0) as u64,
                when,
            }
        }),
        _ => error(format!("ERR invalid expire time in '{}' command", a.name)),
    }
}

pub(super) fn persist(a: &Args) -> Action {
    write(WriteOp::Expire {
        key: a.key(),
        at: None,
    })
}

pub(super) fn ttl(a: &Args) -> Action {
    Action::Read(ReadOp::Ttl {
        key: a.key(),
        millis: a.name == "pttl",
    })
}

pub(super) fn expiretime(a: &Args) -> Action {
    Action::Read(ReadOp::ExpireTime {
        key: a.key(),
        millis: a.name == "pexpiretime",
    })
}

/// `MEMORY USAGE key [SAMPLES n]…`: about how many bytes the key takes. `SAMPLES` (a count
/// not below 0; it may be given again) is checked as Redis checks it, and changes nothing, as
/// the size is counted whole.
pub(super) fn memory(a: &Args) -> Action {
    match (upper(&a.rest[0]).as_str(), &a.rest[1..]) {
        ("USAGE", [key, opts @ ..]) => {
            for pair in opts.chunks(2) {
                match pair {
                    [o, n] if o.eq_ignore_ascii_case(b"SAMPLES") => match parse_i64(n) {
                        Some(n) if n >= 0 => {}
                        Some(_) => return syntax(),
                        None => return error(NOT_INT),
                    },
                    _ => return syntax(),
                }
            }
            Action::Read(ReadOp::MemoryUsage(key.clone()))
        }
        ("USAGE", []) => error("ERR wrong number of arguments for 'memory|usage' command"),
        (other, _) => error(format!(
            "ERR unknown subcommand '{}'. Try MEMORY HELP.",
            other.to_ascii_lowercase()
        )),
    }
}

pub(super) fn type_(a: &Args) -> Action {
    Action::Read(ReadOp::Type(a.key()))
}

pub(super) fn keys(a: &Args) -> Action {
    Action::Read(ReadOp::Keys(a.key()))
}

pub(super) fn dbsize(_: &Args) -> Action {
    Action::Read(ReadOp::DbSize)
}

pub(super) fn randomkey(_: &Args) -> Action {
    Action::Read(ReadOp::RandomKey)
}

/// `FLUSHDB` and `FLUSHALL`, with `SYNC` or `ASYNC` (both flush at once).
pub(super) fn flush(a: &Args) -> Action {
    match a.rest {
        [] => write(WriteOp::FlushDb),
        [mode] if matches!(upper(mode).as_str(), "SYNC" | "ASYNC") => write(WriteOp::FlushDb),
        _ => syntax(),
    }
}

/// `RENAME` and `RENAMENX`.
pub(super) fn rename(a: &Args) -> Action {
    write(WriteOp::Rename {
        from: a.key(),
        to: a.rest[1].clone(),
        nx: a.name == "renamenx",
    })
}

/// `COPY source destination [DB 0] [REPLACE]`; a key copied to itself is refused, as in
/// Redis, once the options are known to be good.
pub(super) fn copy(a: &Args) -> Action {
    let mut replace = false;
    let mut i = 2;
    while i < a.rest.len() {
        match upper(&a.rest[i]).as_str() {
            "REPLACE" => replace = true,
            "DB" => match a.rest.get(i + 1).map(parse_i64) {
                Some(Some(0)) => i += 1,
                Some(Some(_)) => return error("ERR DB index is out of range"),
                Some(None) => return error(NOT_INT),
                None => return syntax(),
            },
            _ => return syntax(),
        }
        i += 1;
    }
    if a.rest[0] == a.rest[1] {
        return error("ERR source and destination objects are the same");
    }
    write(WriteOp::Copy {
        from: a.key(),
        to: a.rest[1].clone(),
        replace,
    })
}

/// `MATCH`, `COUNT` and (for `SCAN`) `TYPE` options, from `opts`.
pub(super) struct ScanOpts {
    pub pattern: Option<Bytes>,
    pub count: usize,
    pub kind: Option<Option<Kind>>,
    pub novalues: bool,
}

/// Parses a cursor and SCAN-style options; `extra` names the one flag option allowed
/// (`NOVALUES` for `HSCAN`).
pub(super) fn scan_opts(
    opts: &[Bytes],
    types: bool,
    flag: Option<&str>,
) -> Result<ScanOpts, Action> {
    let mut o = ScanOpts {
        pattern: None,
        count: 10,
        kind: None,
        novalues: false,
    };
    let mut i = 0;
    while i < opts.len() {
        let opt = upper(&opts[i]);
        if Some(opt.as_str()) == flag {
            o.novalues = true;
            i += 1;
            continue;
        }
        let Some(value) = opts.get(i + 1) else {
            return Err(syntax());
        };
        match opt.as_str() {
            "MATCH" => o.pattern = Some(value.clone()),
            "COUNT" => match parse_i64(value) {
                // COUNT is a hint: one step walks at most SCAN_STEP keys, so it never holds the
                // state machine for long.
                Some(c) if c >= 1 => o.count = (c as usize).min(SCAN_STEP),
                Some(_) => return Err(syntax()),
                None => return Err(error(NOT_INT)),
            },
            "TYPE" if types => {
                o.kind = Some(match super::shown(value).to_ascii_lowercase().as_str() {
                    "string" => Some(Kind::String),
                    "hash" => Some(Kind::Hash),
                    "list" => Some(Kind::List),
                    "set" => Some(Kind::Set),
                    _ => None,
                })
            }
            _ => return Err(syntax()),
        }
        i += 2;
    }
    Ok(o)
}

/// A `SCAN`/`HSCAN` cursor, read as Redis reads one (C's `strtoul`): an optional sign, then
/// decimal digits within 64 bits; a negative number wraps around (`-1` is the largest cursor),
/// and an empty cursor is 0. Anything else, spaces included, is `None`.
pub(super) fn parse_cursor(b: &Bytes) -> Option<u64> {
    let (negative, digits) = match b.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, &b[..]),
    };
    if b.is_empty() {
        return Some(0);
    }
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(if negative { n.wrapping_neg() } else { n })
}

pub(super) fn scan(a: &Args) -> Action {
    let Some(cursor) = parse_cursor(&a.rest[0]) else {
        return error("ERR invalid cursor");
    };
    let o = match scan_opts(&a.rest[1..], true, None) {
        Ok(o) => o,
        Err(e) => return e,
    };
    match o.kind {
        None => Action::Read(ReadOp::Scan {
            cursor,
            pattern: o.pattern,
            count: o.count,
        }),
        Some(Some(kind)) => Action::Read(ReadOp::ScanKind {
            cursor,
            pattern: o.pattern,
            count: o.count,
            kind,
        }),
        // A type no key can have.
        Some(None) => Action::Reply(Reply::Array(vec![
            Reply::text("0"),
            Reply::Array(Vec::new()),
        ])),
    }
}
