//! Parsers of the string commands.

use bytes::Bytes;

use super::Action;
use super::Args;
use super::MAX_EXPIRE_AT;
use super::NOT_INT;
use super::Post;
use super::after_key;
use super::error;
use super::one_of;
use super::parse_i64;
use super::syntax;
use super::upper;
use super::write;
use crate::store::Condition;
use crate::store::Expiry;
use crate::store::Kind;
use crate::store::LcsMode;
use crate::store::ReadOp;
use crate::store::Reply;
use crate::store::WriteOp;
use crate::store::parse_float;

/// The largest bit offset `SETBIT`/`GETBIT` take, as in Redis (a 512 MiB string).
const MAX_BIT_OFFSET: i64 = (512 << 20) * 8 - 1;

pub(super) fn get(a: &Args) -> Action {
    Action::Read(ReadOp::Get(a.key()))
}

pub(super) fn set(a: &Args) -> Action {
    parse_set(a.name, &a.rest[0], &a.rest[1], &a.rest[2..], a.now)
}

pub(super) fn getset(a: &Args) -> Action {
    write(WriteOp::Set {
        key: a.key(),
        value: a.rest[1].clone(),
        expiry: Expiry::Clear,
        condition: Condition::Always,
        get: true,
    })
}

pub(super) fn setnx(a: &Args) -> Action {
    Action::Write {
        op: WriteOp::Set {
            key: a.key(),
            value: a.rest[1].clone(),
            expiry: Expiry::Clear,
            condition: Condition::IfAbsent,
            get: false,
        },
        post: Post::OkToOne,
    }
}

/// `SETEX key seconds value`: `SET key value EX seconds` (and `PSETEX` with `PX`), with Redis'
/// own error for a time that is not positive.
pub(super) fn setex(a: &Args) -> Action {
    let unit = if a.name == "setex" { "EX" } else { "PX" };
    match deadline(a.name, unit, &a.rest[1], a.now) {
        Ok(expiry) => write(WriteOp::Set {
            key: a.key(),
            value: a.rest[2].clone(),
            expiry,
            condition: Condition::Always,
            get: false,
        }),
        Err(e) => e,
    }
}

fn invalid_expire(name: &str) -> Action {
    error(format!("ERR invalid expire time in '{name}' command"))
}

/// An `EX`/`PX`/`EXAT`/`PXAT` time as an expiry, or the error reply. `EX` and `PX` stay
/// relative: the store resolves them at the leader's time when the write applies. `now` (the
/// accepting node's clock) only decides whether the time is too large, as Redis refuses it.
fn deadline(name: &str, unit: &str, arg: &Bytes, now: u64) -> Result<Expiry, Action> {
    let Some(t) = parse_i64(arg) else {
        return Err(error(NOT_INT));
    };
    if t <= 0 {
        return Err(invalid_expire(name));
    }
    let t = t as u64;
    let (expiry, at) = match unit {
        "EX" => match t.checked_mul(1000) {
            Some(ms) => (Expiry::In(ms), now.checked_add(ms)),
            None => return Err(invalid_expire(name)),
        },
        "PX" => (Expiry::In(t), now.checked_add(t)),
        "EXAT" => match t.checked_mul(1000) {
            Some(at) => (Expiry::At(at), Some(at)),
            None => return Err(invalid_expire(name)),
        },
        _ => (Expiry::At(t), Some(t)),
    };
    // As in Redis: a time that overflows, or that PTTL could not answer, is refused.
    match at {
        Some(at) if at <= MAX_EXPIRE_AT => Ok(expiry),
        _ => Err(invalid_expire(name)),
    }
}

/// The options of `SET` or `GETEX`, as read before any of them is checked further.
struct StringOptions<'a> {
    condition: Condition,
    get: bool,
    keep_ttl: bool,
    persist: bool,
    /// The unit (`EX`, `PX`, `EXAT`, `PXAT`) and the time last given.
    expiry: Option<(&'static str, &'a Bytes)>,
}

/// Reads the options of `SET` (`set`) or `GETEX` as Redis does: an option given again counts
/// the last time it is given, and options that contradict each other (`NX` and `XX`, two units
/// of time, a time and `KEEPTTL` or `PERSIST`) are `None`, a syntax error. The time itself is
/// not read here, so a syntax error anywhere comes before a bad time.
fn string_options(opts: &[Bytes], set: bool) -> Option<StringOptions<'_>> {
    let mut o = StringOptions {
        condition: Condition::Always,
        get: false,
        keep_ttl: false,
        persist: false,
        expiry: None,
    };
    let mut i = 0;
    while i < opts.len() {
        const OPTIONS: [&str; 9] = [
            "NX", "XX", "GET", "KEEPTTL", "PERSIST", "EX", "PX", "EXAT", "PXAT",
        ];
        match one_of(&opts[i], &OPTIONS) {
            Some("NX") if set && o.condition != Condition::IfPresent => {
                o.condition = Condition::IfAbsent;
            }
            Some("XX") if set && o.condition != Condition::IfAbsent => {
                o.condition = Condition::IfPresent;
            }
            Some("GET") if set => o.get = true,
            Some("KEEPTTL") if set && o.expiry.is_none() => o.keep_ttl = true,
            Some("PERSIST") if !set && o.expiry.is_none() => o.persist = true,
            Some(unit @ ("EX" | "PX" | "EXAT" | "PXAT"))
                if !o.keep_ttl
                    && !o.persist
                    && o.expiry.is_none_or(|(u, _)| u == unit)
                    && i + 1 < opts.len() =>
            {
                o.expiry = Some((unit, &opts[i + 1]));
                i += 1;
            }
            _ => return None,
        }
        i += 1;
    }
    Some(o)
}

fn parse_set(name: &str, key: &Bytes, value: &Bytes, opts: &[Bytes], now: u64) -> Action {
    let Some(o) = string_options(opts, true) else {
        return syntax();
    };
    let expiry = match o.expiry {
        Some((unit, t)) => match deadline(name, unit, t, now) {
            Ok(e) => e,
            Err(e) => return e,
        },
        None if o.keep_ttl => Expiry::Keep,
        None => Expiry::Clear,
    };
    write(WriteOp::Set {
        key: key.clone(),
        value: value.clone(),
        expiry,
        condition: o.condition,
        get: o.get,
    })
}

/// `GETEX key [EX|PX|EXAT|PXAT time | PERSIST]`, its options read as `SET`'s are. As in
/// Redis, the time is checked after the key is looked up.
pub(super) fn getex(a: &Args) -> Action {
    let Some(o) = string_options(&a.rest[1..], false) else {
        return syntax();
    };
    let expiry = match o.expiry {
        Some((unit, t)) => match deadline(a.name, unit, t, a.now) {
            Ok(e) => e,
            Err(e) => return after_key(a, Kind::String, Reply::Nil, e),
        },
        None if o.persist => Expiry::Clear,
        None => Expiry::Keep,
    };
    write(WriteOp::GetEx {
        key: a.key(),
        expiry,
    })
}

pub(super) fn getdel(a: &Args) -> Action {
    write(WriteOp::GetDel(a.key()))
}

pub(super) fn incr(a: &Args) -> Action {
    let by = if a.name == "incr" { 1 } else { -1 };
    write(WriteOp::IncrByStrict { key: a.key(), by })
}

pub(super) fn incrby(a: &Args) -> Action {
    match parse_i64(&a.rest[1]) {
        Some(by) if a.name == "incrby" => write(WriteOp::IncrByStrict { key: a.key(), by }),
        Some(by) => match by.checked_neg() {
            Some(by) => write(WriteOp::IncrByStrict { key: a.key(), by }),
            None => error("ERR decrement would overflow"),
        },
        None => error(NOT_INT),
    }
}

pub(super) fn incrbyfloat(a: &Args) -> Action {
    match parse_float(&a.rest[1]) {
        Some(by) => write(WriteOp::IncrByFloat {
            key: a.key(),
            by: by.to_bits(),
        }),
        // As in Redis, a key of another type answers WRONGTYPE first.
        None => {
            let not_float = Reply::error("ERR value is not a valid float");
            after_key(a, Kind::String, not_float.clone(), Action::Reply(not_float))
        }
    }
}

pub(super) fn append(a: &Args) -> Action {
    write(WriteOp::AppendAtMost {
        key: a.key(),
        suffix: a.rest[1].clone(),
        max: a.max_value as u64,
    })
}

pub(super) fn setrange(a: &Args) -> Action {
    match parse_i64(&a.rest[1]) {
        Some(offset) if offset < 0 => error("ERR offset is out of range"),
        Some(offset) => write(WriteOp::SetRange {
            key: a.key(),
            offset: offset as u64,
            value: a.rest[2].clone(),
            max: a.max_value as u64,
        }),
        None => error(NOT_INT),
    }
}

pub(super) fn getrange(a: &Args) -> Action {
    match (parse_i64(&a.rest[1]), parse_i64(&a.rest[2])) {
        (Some(start), Some(end)) => Action::Read(ReadOp::GetRange {
            key: a.key(),
            start,
            end,
        }),
        _ => error(NOT_INT),
    }
}

pub(super) fn strlen(a: &Args) -> Action {
    Action::Read(ReadOp::Strlen(a.key()))
}

pub(super) fn mget(a: &Args) -> Action {
    Action::Read(ReadOp::MGet(a.rest.to_vec()))
}

/// `MSET` and `MSETNX`.
pub(super) fn mset(a: &Args) -> Action {
    if !a.rest.len().is_multiple_of(2) {
        return super::arity_error(a.name);
    }
    let pairs = a
        .rest
        .chunks(2)
        .map(|p| (p[0].clone(), p[1].clone()))
        .collect();
    write(if a.name == "mset" {
        WriteOp::MSet(pairs)
    } else {
        WriteOp::MSetNx(pairs)
    })
}

/// A bit offset, as Redis reads one: at most [`MAX_BIT_OFFSET`], and in a string no longer
/// than `max_value` bytes (`proto-max-bulk-len`).
fn bit_offset(b: &Bytes, max_value: usize) -> Option<u64> {
    parse_i64(b)
        .filter(|o| (0..=MAX_BIT_OFFSET).contains(o))
        .map(|o| o as u64)
        .filter(|o| o >> 3 < max_value as u64)
}

pub(super) fn setbit(a: &Args) -> Action {
    let Some(offset) = bit_offset(&a.rest[1], a.max_value) else {
        return error("ERR bit offset is not an integer or out of range");
    };
    let bit = match &a.rest[2][..] {
        b"0" => false,
        b"1" => true,
        _ => return error("ERR bit is not an integer or out of range"),
    };
    write(WriteOp::SetBit {
        key: a.key(),
        offset,
        bit,
        max: a.max_value as u64,
    })
}

pub(super) fn getbit(a: &Args) -> Action {
    match bit_offset(&a.rest[1], a.max_value) {
        Some(offset) => Action::Read(ReadOp::GetBit {
            key: a.key(),
            offset,
        }),
        None => error("ERR bit offset is not an integer or out of range"),
    }
}

/// `BITCOUNT key [start end [BYTE|BIT]]`. As in Redis, the range is read after the key is
/// looked up, its ends before the unit.
pub(super) fn bitcount(a: &Args) -> Action {
    let bad = |e| after_key(a, Kind::String, Reply::Int(0), e);
    let (range, bits) = match &a.rest[1..] {
        [] => (None, false),
        [s, e, unit @ ..] if unit.len() <= 1 => {
            let (Some(s), Some(e)) = (parse_i64(s), parse_i64(e)) else {
                return bad(error(NOT_INT));
            };
            let bits = match unit.first().map(upper).as_deref() {
                None | Some("BYTE") => false,
                Some("BIT") => true,
                Some(_) => return bad(syntax()),
            };
            (Some((s, e)), bits)
        }
        _ => return bad(syntax()),
    };
    Action::Read(ReadOp::BitCount {
        key: a.key(),
        range,
        bits,
    })
}

pub(super) fn lcs(a: &Args) -> Action {
    let (mut len, mut idx, mut with_len, mut min_len) = (false, false, false, 0u64);
    let mut i = 2;
    while i < a.rest.len() {
        match upper(&a.rest[i]).as_str() {
            "LEN" => len = true,
            "IDX" => idx = true,
            "WITHMATCHLEN" => with_len = true,
            "MINMATCHLEN" => {
                let Some(n) = a.rest.get(i + 1) else {
                    return syntax();
                };
                match parse_i64(n) {
                    Some(n) => min_len = n.max(0) as u64,
                    None => return error(NOT_INT),
                }
                i += 1;
            }
            _ => return syntax(),
        }
        i += 1;
    }
    if len && idx {
        return error("ERR If you want both the length and indexes, please just use IDX.");
    }
    let mode = match (len, idx) {
        (true, _) => LcsMode::Len,
        (_, true) => LcsMode::Idx { min_len, with_len },
        _ => LcsMode::String,
    };
    Action::Read(ReadOp::Lcs {
        a: a.key(),
        b: a.rest[1].clone(),
        mode,
    })
}
