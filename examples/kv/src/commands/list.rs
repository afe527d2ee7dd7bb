//! Parsers of the list and set commands.

use super::Action;
use super::Args;
use super::NOT_INT;
use super::Post;
use super::after_key;
use super::error;
use super::parse_i64;
use super::write;
use crate::store::Kind;
use crate::store::ReadOp;
use crate::store::Reply;
use crate::store::WriteOp;

/// The optional count of `LPOP`, `RPOP` and `SPOP`: `key [count]`.
fn count(a: &Args) -> Result<Option<u64>, Action> {
    if a.rest.len() > 2 {
        return Err(super::syntax());
    }
    match a.rest.get(1).map(parse_i64) {
        None => Ok(None),
        Some(Some(c)) if c >= 0 => Ok(Some(c as u64)),
        Some(_) => Err(error("ERR value is out of range, must be positive")),
    }
}

/// `LPUSH`, `RPUSH`, `LPUSHX`, `RPUSHX`.
pub(super) fn push(a: &Args) -> Action {
    write(WriteOp::Push {
        key: a.key(),
        values: a.rest[1..].to_vec(),
        left: a.name.starts_with('l'),
        existing: a.name.ends_with('x'),
    })
}

/// `LPOP key [count]`, `RPOP key [count]`.
pub(super) fn pop(a: &Args) -> Action {
    // Redis answers more arguments with the arity error here (SPOP's is a syntax error).
    if a.rest.len() > 2 {
        return super::arity_error(a.name);
    }
    let count = match count(a) {
        Ok(c) => c,
        Err(e) => return e,
    };
    write(WriteOp::Pop {
        key: a.key(),
        left: a.name == "lpop",
        count,
    })
}

pub(super) fn llen(a: &Args) -> Action {
    Action::Read(ReadOp::LLen(a.key()))
}

pub(super) fn lrange(a: &Args) -> Action {
    match (parse_i64(&a.rest[1]), parse_i64(&a.rest[2])) {
        (Some(start), Some(end)) => Action::Read(ReadOp::LRange {
            key: a.key(),
            start,
            end,
        }),
        _ => error(NOT_INT),
    }
}

pub(super) fn lindex(a: &Args) -> Action {
    match parse_i64(&a.rest[1]) {
        Some(index) => Action::Read(ReadOp::LIndex {
            key: a.key(),
            index,
        }),
        None => after_key(a, Kind::List, Reply::Nil, error(NOT_INT)),
    }
}

pub(super) fn sadd(a: &Args) -> Action {
    write(WriteOp::SAdd {
        key: a.key(),
        members: a.rest[1..].to_vec(),
    })
}

pub(super) fn srem(a: &Args) -> Action {
    write(WriteOp::SRem {
        key: a.key(),
        members: a.rest[1..].to_vec(),
    })
}

pub(super) fn smembers(a: &Args) -> Action {
    Action::Read(ReadOp::SMembers(a.key()))
}

pub(super) fn scard(a: &Args) -> Action {
    Action::Read(ReadOp::SCard(a.key()))
}

pub(super) fn sismember(a: &Args) -> Action {
    Action::Read(ReadOp::SIsMember {
        key: a.key(),
        member: a.rest[1].clone(),
    })
}

/// `SPOP key [count]`.
pub(super) fn spop(a: &Args) -> Action {
    let count = match count(a) {
        Ok(c) => c,
        Err(e) => return e,
    };
    let post = match count {
        Some(_) => Post::ArrayToSet,
        None => Post::None,
    };
    Action::Write {
        op: WriteOp::SPop {
            key: a.key(),
            count,
        },
        post,
    }
}
