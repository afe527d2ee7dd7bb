//! From a client's arguments to what to do: answer at once, replicate a write, or read.
//!
//! [`COMMANDS`] is the one table of every command this server knows: its name, arity, flags
//! and parser. Arity is checked from the table before the parser runs, so every mistake gets
//! the reply a Redis client expects (`-ERR wrong number of arguments for 'get' command`), and
//! each parser handles only its own options. Parsers live by data type: [`strings`], [`keys`],
//! [`hash`], [`list`] (lists and sets), and [`server`] for commands about the connection and the server.

mod hash;
mod keys;
mod list;
mod server;
mod strings;

use bytes::Bytes;
pub use keys::SCAN_STEP;
pub use server::ClientOp;

use crate::store::Kind;
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
    /// `INFO [section …]`, the section names in lower case (none: the default sections).
    Info(Vec<String>),
    /// `HELLO [2|3] [SETNAME name]`: switch protocol (if given), name the connection (if a
    /// name is given; an empty one removes the name) and report server facts.
    Hello {
        proto: Option<crate::resp::Proto>,
        name: Option<Bytes>,
    },
    /// `QUIT`: answer `+OK`, then close.
    Quit,
    /// `RESET`: the connection's state as Redis's RESET leaves it (run at once, inside MULTI
    /// too).
    Reset,
    /// `MULTI`: start queueing commands.
    Multi,
    /// `EXEC`: apply the queued commands as one write.
    Exec,
    /// `DISCARD`: drop the queued commands.
    Discard,
    /// `WATCH key…`: remember the keys' versions for the next `EXEC`.
    Watch(Vec<Bytes>),
    /// `UNWATCH`.
    Unwatch,
    /// `CONFIG GET pattern…`: this node's parameters.
    ConfigGet(Vec<Bytes>),
    /// `CONFIG SET name value…`: change this node's parameters.
    ConfigSet(Vec<(Bytes, Bytes)>),
    /// `CLIENT SETNAME`, `GETNAME`, `ID`: about the connection itself.
    Client(ClientOp),
}

/// How a write's reply is reshaped for the command that issued it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Post {
    /// As is.
    None,
    /// `SETNX`: `OK` becomes 1, nil becomes 0.
    OkToOne,
    /// `HMSET`: a count becomes `OK`.
    IntToOk,
    /// `SMEMBERS`, `SPOP` with a count: an array becomes a set (which RESP3 marks as one).
    ArrayToSet,
    /// `LCS`: a key of another type than a string is refused in LCS's own words, as in Redis.
    LcsWrongType,
}

impl Post {
    /// The command's reply, from the store's.
    pub fn apply(self, r: Reply) -> Reply {
        match (self, r) {
            (Post::OkToOne, Reply::Ok) => Reply::Int(1),
            (Post::OkToOne, Reply::Nil) => Reply::Int(0),
            (Post::IntToOk, Reply::Int(_)) => Reply::Ok,
            (Post::ArrayToSet, Reply::Array(items)) => Reply::Set(items),
            (Post::LcsWrongType, Reply::Fault(crate::store::Error::WrongType)) => {
                Reply::error("ERR The specified keys must contain string values")
            }
            (_, r) => r,
        }
    }

    /// How the reply to the read `op` is reshaped for its command.
    pub fn of_read(op: &ReadOp) -> Post {
        match op {
            ReadOp::SMembers(_) => Post::ArrayToSet,
            ReadOp::Lcs { .. } => Post::LcsWrongType,
            _ => Post::None,
        }
    }
}

/// What a command does, for `COMMAND` and for the role it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Reads data.
    Read,
    /// Changes data.
    Write,
    /// Changes the whole data set or the node (`FLUSHALL`, `CONFIG`): needs the admin role.
    Admin,
    /// Neither: about the connection or the server (`PING`, `MULTI`).
    Other,
}

/// One command: everything the server knows about it.
pub struct Spec {
    /// Canonical (lower-case) name.
    pub name: &'static str,
    /// Redis' arity: the exact argument count with the name if positive, the least if negative.
    pub arity: i64,
    /// What it does.
    pub class: Class,
    /// Whether it is O(1) (Redis' `fast` flag).
    pub fast: bool,
    /// First key, last key (negative: from the end) and step, as `COMMAND` reports them.
    pub keys: (i64, i64, i64),
    /// The parser: arity has been checked.
    parse: fn(&Args) -> Action,
}

/// What a parser gets: the arguments after the name, and the context.
pub struct Args<'a> {
    /// The canonical name.
    pub name: &'static str,
    /// The arguments after the name (as many as the arity allows).
    pub rest: &'a [Bytes],
    /// The accepting node's time, in ms since the epoch.
    pub now: u64,
    /// The longest string a write may build (`proto-max-bulk-len`).
    pub max_value: usize,
}

impl Args<'_> {
    fn key(&self) -> Bytes {
        self.rest[0].clone()
    }
}

pub(crate) fn error(msg: impl Into<String>) -> Action {
    Action::Reply(Reply::Error(msg.into()))
}

/// `bad`, the reply to a wrong argument of a command that Redis checks only after looking up
/// the key: so a missing key answers `missing`, and a key of another type than `kind`
/// `WRONGTYPE`, as in Redis.
pub(crate) fn after_key(a: &Args, kind: Kind, missing: Reply, bad: Action) -> Action {
    match bad {
        Action::Reply(error) => Action::Read(ReadOp::ArgumentError {
            key: a.key(),
            kind,
            missing,
            error,
        }),
        other => other,
    }
}

pub(crate) fn arity_error(name: &str) -> Action {
    error(format!(
        "ERR wrong number of arguments for '{name}' command"
    ))
}

pub(crate) fn syntax() -> Action {
    error("ERR syntax error")
}

/// An integer argument, read as Redis reads one (see [`crate::store::parse_int`]).
pub(crate) fn parse_i64(b: &Bytes) -> Option<i64> {
    crate::store::parse_int(b)
}

pub(crate) const NOT_INT: &str = "ERR value is not an integer or out of range";

pub(crate) fn write(op: WriteOp) -> Action {
    Action::Write {
        op,
        post: Post::None,
    }
}

/// Which of the option words `known` (upper case) `b` is, whatever its case; no allocation.
fn one_of(b: &[u8], known: &[&'static str]) -> Option<&'static str> {
    known
        .iter()
        .copied()
        .find(|k| b.eq_ignore_ascii_case(k.as_bytes()))
}

/// The most of an argument an error reply echoes (as Redis does): a keyword is never this long,
/// so matching on a shortened argument changes nothing, and a 64 MiB argument that is not one
/// is not copied into the error (its invalid bytes would even triple in size).
const SHOWN_BYTES: usize = 128;

/// At most [`SHOWN_BYTES`] of `b`, as text, for matching keywords and wording errors.
pub(crate) fn shown(b: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(&b[..b.len().min(SHOWN_BYTES)])
}

fn upper(b: &Bytes) -> String {
    shown(b).to_ascii_uppercase()
}

/// The latest expiry time a key can have: what `PTTL` can still answer.
const MAX_EXPIRE_AT: u64 = i64::MAX as u64;

/// Parses the arguments of one command; `now` is the accepting node's time in milliseconds.
#[cfg(test)]
pub fn parse(args: &[Bytes], now: u64) -> Action {
    let max_value = crate::resp::Limits::default().max_bulk;
    parse_as(args.first().and_then(|a| find(a)), args, now, max_value)
}

/// Like `parse` (in tests), for a caller that already looked the command up with [`find`];
/// `max_value` is the longest string APPEND or SETRANGE may build (`proto-max-bulk-len`).
pub fn parse_as(spec: Option<&'static Spec>, args: &[Bytes], now: u64, max_value: usize) -> Action {
    let Some(first) = args.first() else {
        return Action::Reply(Reply::Ok);
    };
    let Some(spec) = spec else {
        return unknown_command(first, &args[1..]);
    };
    let n = args.len() as i64;
    if (spec.arity > 0 && n != spec.arity) || (spec.arity < 0 && n < -spec.arity) {
        return arity_error(spec.name);
    }
    (spec.parse)(&Args {
        name: spec.name,
        rest: &args[1..],
        now,
        max_value,
    })
}

fn unknown_command(name: &Bytes, rest: &[Bytes]) -> Action {
    let preview: Vec<String> = rest
        .iter()
        .take(3)
        .map(|a| format!("'{}'", shown(a)))
        .collect();
    error(format!(
        "ERR unknown command '{}', with args beginning with: {}",
        shown(name),
        preview.join(" ")
    ))
}

/// The longest command name in [`COMMANDS`].
const LONGEST_NAME: usize = 16;

/// The command named `name`, whatever case it is in: a binary search of the sorted table.
pub fn find(name: &[u8]) -> Option<&'static Spec> {
    if name.len() > LONGEST_NAME {
        return None;
    }
    let mut buf = [0u8; LONGEST_NAME];
    let lower = &mut buf[..name.len()];
    lower.copy_from_slice(name);
    lower.make_ascii_lowercase();
    COMMANDS
        .binary_search_by(|c| c.name.as_bytes().cmp(lower))
        .ok()
        .map(|i| &COMMANDS[i])
}

impl Spec {
    /// Whether the command changes data.
    pub fn is_write(&self) -> bool {
        matches!(self.class, Class::Write | Class::Admin)
    }

    /// Whether the command needs the admin role.
    pub fn is_admin(&self) -> bool {
        self.class == Class::Admin
    }
}

const fn cmd(
    name: &'static str,
    arity: i64,
    class: Class,
    fast: bool,
    keys: (i64, i64, i64),
    parse: fn(&Args) -> Action,
) -> Spec {
    Spec {
        name,
        arity,
        class,
        fast,
        keys,
        parse,
    }
}

use Class::Admin;
use Class::Other;
use Class::Read;
use Class::Write;

const NONE: (i64, i64, i64) = (0, 0, 0);
const ONE: (i64, i64, i64) = (1, 1, 1);
const ALL: (i64, i64, i64) = (1, -1, 1);
const TWO: (i64, i64, i64) = (1, 2, 1);

/// Every command this server knows, sorted by name (for [`find`]).
pub static COMMANDS: &[Spec] = &[
    cmd("acl", -2, Other, false, NONE, server::acl),
    cmd("append", 3, Write, true, ONE, strings::append),
    cmd("auth", -2, Other, true, NONE, server::auth),
    cmd("bitcount", -2, Read, false, ONE, strings::bitcount),
    cmd("client", -2, Other, false, NONE, server::client),
    cmd("command", -1, Other, false, NONE, server::command),
    cmd("config", -2, Admin, false, NONE, server::config),
    cmd("copy", -3, Write, false, TWO, keys::copy),
    cmd("dbsize", 1, Read, true, NONE, keys::dbsize),
    cmd("decr", 2, Write, true, ONE, strings::incr),
    cmd("decrby", 3, Write, true, ONE, strings::incrby),
    cmd("del", -2, Write, false, ALL, keys::del),
    cmd("discard", 1, Other, true, NONE, server::discard),
    cmd("echo", 2, Other, true, NONE, server::echo),
    cmd("exec", 1, Other, false, NONE, server::exec),
    cmd("exists", -2, Read, true, ALL, keys::exists),
    cmd("expire", -3, Write, true, ONE, keys::expire),
    cmd("expireat", -3, Write, true, ONE, keys::expire),
    cmd("expiretime", 2, Read, true, ONE, keys::expiretime),
    cmd("flushall", -1, Admin, false, NONE, keys::flush),
    cmd("flushdb", -1, Admin, false, NONE, keys::flush),
    cmd("function", -2, Admin, false, NONE, server::function),
    cmd("get", 2, Read, true, ONE, strings::get),
    cmd("getbit", 3, Read, true, ONE, strings::getbit),
    cmd("getdel", 2, Write, true, ONE, strings::getdel),
    cmd("getex", -2, Write, true, ONE, strings::getex),
    cmd("getrange", 4, Read, false, ONE, strings::getrange),
    cmd("getset", 3, Write, true, ONE, strings::getset),
    cmd("hdel", -3, Write, true, ONE, hash::hdel),
    cmd("hello", -1, Other, true, NONE, server::hello),
    cmd("hexists", 3, Read, true, ONE, hash::hexists),
    cmd("hget", 3, Read, true, ONE, hash::hget),
    cmd("hgetall", 2, Read, false, ONE, hash::hgetall),
    cmd("hincrby", 4, Write, true, ONE, hash::hincrby),
    cmd("hincrbyfloat", 4, Write, true, ONE, hash::hincrbyfloat),
    cmd("hkeys", 2, Read, false, ONE, hash::hkeys),
    cmd("hlen", 2, Read, true, ONE, hash::hlen),
    cmd("hmget", -3, Read, true, ONE, hash::hmget),
    cmd("hmset", -4, Write, true, ONE, hash::hset),
    cmd("hrandfield", -2, Read, false, ONE, hash::hrandfield),
    cmd("hscan", -3, Read, false, ONE, hash::hscan),
    cmd("hset", -4, Write, true, ONE, hash::hset),
    cmd("hsetnx", 4, Write, true, ONE, hash::hsetnx),
    cmd("hstrlen", 3, Read, true, ONE, hash::hstrlen),
    cmd("hvals", 2, Read, false, ONE, hash::hvals),
    cmd("incr", 2, Write, true, ONE, strings::incr),
    cmd("incrby", 3, Write, true, ONE, strings::incrby),
    cmd("incrbyfloat", 3, Write, true, ONE, strings::incrbyfloat),
    cmd("info", -1, Other, false, NONE, server::info),
    cmd("keys", 2, Read, false, NONE, keys::keys),
    cmd("lcs", -3, Read, false, TWO, strings::lcs),
    cmd("lindex", 3, Read, false, ONE, list::lindex),
    cmd("llen", 2, Read, true, ONE, list::llen),
    cmd("lpop", -2, Write, true, ONE, list::pop),
    cmd("lpush", -3, Write, true, ONE, list::push),
    cmd("lpushx", -3, Write, true, ONE, list::push),
    cmd("lrange", 4, Read, false, ONE, list::lrange),
    cmd("memory", -2, Read, false, NONE, keys::memory),
    cmd("mget", -2, Read, true, ALL, strings::mget),
    cmd("mset", -3, Write, false, (1, -1, 2), strings::mset),
    cmd("msetnx", -3, Write, false, (1, -1, 2), strings::mset),
    cmd("multi", 1, Other, true, NONE, server::multi),
    cmd("persist", 2, Write, true, ONE, keys::persist),
    cmd("pexpire", -3, Write, true, ONE, keys::expire),
    cmd("pexpireat", -3, Write, true, ONE, keys::expire),
    cmd("pexpiretime", 2, Read, true, ONE, keys::expiretime),
    cmd("ping", -1, Other, true, NONE, server::ping),
    cmd("psetex", 4, Write, false, ONE, strings::setex),
    cmd("pttl", 2, Read, true, ONE, keys::ttl),
    cmd("quit", -1, Other, true, NONE, server::quit),
    cmd("randomkey", 1, Read, false, NONE, keys::randomkey),
    cmd("rename", 3, Write, false, TWO, keys::rename),
    cmd("renamenx", 3, Write, true, TWO, keys::rename),
    cmd("reset", 1, Other, true, NONE, server::reset),
    cmd("rpop", -2, Write, true, ONE, list::pop),
    cmd("rpush", -3, Write, true, ONE, list::push),
    cmd("rpushx", -3, Write, true, ONE, list::push),
    cmd("sadd", -3, Write, true, ONE, list::sadd),
    cmd("scan", -2, Read, false, NONE, keys::scan),
    cmd("scard", 2, Read, true, ONE, list::scard),
    cmd("select", 2, Other, true, NONE, server::select),
    cmd("set", -3, Write, false, ONE, strings::set),
    cmd("setbit", 4, Write, false, ONE, strings::setbit),
    cmd("setex", 4, Write, false, ONE, strings::setex),
    cmd("setnx", 3, Write, true, ONE, strings::setnx),
    cmd("setrange", 4, Write, false, ONE, strings::setrange),
    cmd("sismember", 3, Read, true, ONE, list::sismember),
    cmd("smembers", 2, Read, false, ONE, list::smembers),
    cmd("spop", -2, Write, true, ONE, list::spop),
    cmd("srem", -3, Write, true, ONE, list::srem),
    cmd("strlen", 2, Read, true, ONE, strings::strlen),
    cmd("substr", 4, Read, false, ONE, strings::getrange),
    cmd("time", 1, Other, true, NONE, server::time),
    cmd("touch", -2, Read, true, ALL, keys::exists),
    cmd("ttl", 2, Read, true, ONE, keys::ttl),
    cmd("type", 2, Read, true, ONE, keys::type_),
    cmd("unlink", -2, Write, true, ALL, keys::del),
    cmd("unwatch", 1, Other, true, NONE, server::unwatch),
    cmd("watch", -2, Other, true, ALL, server::watch),
];

fn command_info(c: &Spec) -> Reply {
    let mut flags = vec![match c.class {
        Class::Read => "readonly",
        Class::Write => "write",
        Class::Admin => "admin",
        Class::Other => "stale",
    }];
    if c.fast {
        flags.push("fast");
    }
    Reply::Array(vec![
        Reply::Bulk(Bytes::from(c.name)),
        Reply::Int(c.arity),
        Reply::Array(flags.into_iter().map(Reply::text).collect()),
        Reply::Int(c.keys.0),
        Reply::Int(c.keys.1),
        Reply::Int(c.keys.2),
    ])
}

#[cfg(test)]
mod tests;
