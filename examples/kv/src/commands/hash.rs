//! Parsers of the hash commands.

use super::Action;
use super::Args;
use super::NOT_INT;
use super::Post;
use super::after_key;
use super::error;
use super::parse_i64;
use super::syntax;
use super::upper;
use super::write;
use crate::store::Kind;
use crate::store::ReadOp;
use crate::store::Reply;
use crate::store::WriteOp;
use crate::store::parse_float;

/// The most fields `HRANDFIELD` with a negative count (repeats allowed) returns.
pub const MAX_RANDOM_FIELDS: i64 = 1 << 20;

/// `HSET` (replies with the number of new fields) and `HMSET` (replies `OK`).
pub(super) fn hset(a: &Args) -> Action {
    if a.rest.len() % 2 != 1 {
        return super::arity_error(a.name);
    }
    let pairs = a.rest[1..]
        .chunks(2)
        .map(|p| (p[0].clone(), p[1].clone()))
        .collect();
    Action::Write {
        op: WriteOp::HSet {
            key: a.key(),
            pairs,
            nx: false,
        },
        post: if a.name == "hmset" {
            Post::IntToOk
        } else {
            Post::None
        },
    }
}

pub(super) fn hsetnx(a: &Args) -> Action {
    write(WriteOp::HSet {
        key: a.key(),
        pairs: vec![(a.rest[1].clone(), a.rest[2].clone())],
        nx: true,
    })
}

pub(super) fn hdel(a: &Args) -> Action {
    write(WriteOp::HDel {
        key: a.key(),
        fields: a.rest[1..].to_vec(),
    })
}

pub(super) fn hincrby(a: &Args) -> Action {
    match parse_i64(&a.rest[2]) {
        Some(by) => write(WriteOp::HIncrByStrict {
            key: a.key(),
            field: a.rest[1].clone(),
            by,
        }),
        None => error(NOT_INT),
    }
}

pub(super) fn hincrbyfloat(a: &Args) -> Action {
    match parse_float(&a.rest[2]) {
        Some(by) if by.is_infinite() => error("ERR value is NaN or Infinity"),
        Some(by) => write(WriteOp::HIncrByFloat {
            key: a.key(),
            field: a.rest[1].clone(),
            by: by.to_bits(),
        }),
        None => error("ERR value is not a valid float"),
    }
}

pub(super) fn hget(a: &Args) -> Action {
    Action::Read(ReadOp::HGet {
        key: a.key(),
        field: a.rest[1].clone(),
    })
}

pub(super) fn hmget(a: &Args) -> Action {
    Action::Read(ReadOp::HMGet {
        key: a.key(),
        fields: a.rest[1..].to_vec(),
    })
}

pub(super) fn hgetall(a: &Args) -> Action {
    Action::Read(ReadOp::HGetAll(a.key()))
}

pub(super) fn hlen(a: &Args) -> Action {
    Action::Read(ReadOp::HLen(a.key()))
}

pub(super) fn hkeys(a: &Args) -> Action {
    Action::Read(ReadOp::HKeys(a.key()))
}

pub(super) fn hvals(a: &Args) -> Action {
    Action::Read(ReadOp::HVals(a.key()))
}

pub(super) fn hstrlen(a: &Args) -> Action {
    Action::Read(ReadOp::HStrlen {
        key: a.key(),
        field: a.rest[1].clone(),
    })
}

pub(super) fn hexists(a: &Args) -> Action {
    Action::Read(ReadOp::HExists {
        key: a.key(),
        field: a.rest[1].clone(),
    })
}

/// `HRANDFIELD key [count [WITHVALUES]]`.
pub(super) fn hrandfield(a: &Args) -> Action {
    let (count, with_values) = match &a.rest[1..] {
        [] => (None, false),
        [c, rest @ ..] if rest.len() <= 1 => {
            let with_values = match rest.first().map(upper).as_deref() {
                None => false,
                Some("WITHVALUES") => true,
                Some(_) => return syntax(),
            };
            match parse_i64(c) {
                // A bound on repeats: the reply is built whole before it is sent.
                // (Checked after the key, so a missing key answers empty, as in Redis.)
                Some(c) if c < -MAX_RANDOM_FIELDS => {
                    let out_of_range = error("ERR value is out of range");
                    return after_key(a, Kind::Hash, Reply::Array(Vec::new()), out_of_range);
                }
                Some(c) => (Some(c), with_values),
                None => return error(NOT_INT),
            }
        }
        _ => return syntax(),
    };
    Action::Read(ReadOp::HRandField {
        key: a.key(),
        count,
        with_values,
    })
}

/// `HSCAN key cursor [MATCH pattern] [COUNT count] [NOVALUES]`.
pub(super) fn hscan(a: &Args) -> Action {
    let Some(cursor) = super::keys::parse_cursor(&a.rest[1]) else {
        return error("ERR invalid cursor");
    };
    match super::keys::scan_opts(&a.rest[2..], false, Some("NOVALUES")) {
        Ok(o) => Action::Read(ReadOp::HScan {
            key: a.key(),
            cursor,
            pattern: o.pattern,
            count: o.count,
            novalues: o.novalues,
        }),
        // As in Redis, the options are read after the key is looked up.
        Err(e) => {
            let empty = Reply::Array(vec![Reply::text("0"), Reply::Array(Vec::new())]);
            after_key(a, Kind::Hash, empty, e)
        }
    }
}
