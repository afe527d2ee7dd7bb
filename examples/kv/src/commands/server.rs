//! Parsers of the commands about the connection and the server: PING, HELLO, transactions,
//! CONFIG, COMMAND, CLIENT, FUNCTION.

use bytes::Bytes;

use super::Action;
use super::Args;
use super::COMMANDS;
use super::NOT_INT;
use super::command_info;
use super::error;
use super::parse_i64;
use crate::store::Reply;

fn lower(b: &Bytes) -> String {
    super::shown(b).to_ascii_lowercase()
}

/// `AUTH` and `ACL` are answered by the connection's gate before parsing; this is what a
/// caller that skipped the gate gets.
pub(super) fn auth(_: &Args) -> Action {
    error("ERR AUTH is answered by the connection, not the command table")
}

pub(super) fn acl(a: &Args) -> Action {
    auth(a)
}

pub(super) fn ping(a: &Args) -> Action {
    match a.rest {
        [] => Action::Reply(Reply::Status("PONG".into())),
        [msg] => Action::Reply(Reply::Bulk(msg.clone())),
        _ => super::arity_error(a.name),
    }
}

pub(super) fn echo(a: &Args) -> Action {
    Action::Reply(Reply::Bulk(a.rest[0].clone()))
}

/// `HELLO [protover [AUTH user pass] [SETNAME name]]`. `AUTH` is the authentication gate's
/// (it has checked it by now); `SETNAME` names the connection as `CLIENT SETNAME` does.
pub(super) fn hello(a: &Args) -> Action {
    let proto = match a.rest.first().map(parse_i64) {
        None => None,
        Some(Some(2)) => Some(crate::resp::Proto::Resp2),
        Some(Some(3)) => Some(crate::resp::Proto::Resp3),
        Some(Some(_)) => return error("NOPROTO unsupported protocol version"),
        Some(None) => return error("ERR Protocol version is not an integer or out of range"),
    };
    let mut name = None;
    let mut options = a.rest.get(1..).unwrap_or_default();
    loop {
        options = match options {
            [] => break,
            [auth, _, _, rest @ ..] if auth.eq_ignore_ascii_case(b"auth") => rest,
            [setname, new, rest @ ..] if setname.eq_ignore_ascii_case(b"setname") => {
                if !valid_name(new) {
                    return error(BAD_NAME);
                }
                name = Some(new.clone());
                rest
            }
            _ => return error("ERR Syntax error in HELLO option"),
        }
    }
    Action::Hello { proto, name }
}

/// Why a connection name is refused.
const BAD_NAME: &str = "ERR Client names cannot contain spaces, newlines or special characters.";

/// Whether `name` may name a connection: as in Redis, printable ASCII without spaces.
fn valid_name(name: &[u8]) -> bool {
    name.iter().all(|c| (b'!'..=b'~').contains(c))
}

pub(super) fn select(a: &Args) -> Action {
    match parse_i64(&a.rest[0]) {
        Some(0) => Action::Reply(Reply::Ok),
        Some(_) => error("ERR DB index is out of range"),
        None => error(NOT_INT),
    }
}

pub(super) fn quit(_: &Args) -> Action {
    Action::Quit
}

pub(super) fn reset(_: &Args) -> Action {
    Action::Reset
}

pub(super) fn info(a: &Args) -> Action {
    Action::Info(a.rest.iter().map(lower).collect())
}

pub(super) fn multi(_: &Args) -> Action {
    Action::Multi
}

pub(super) fn exec(_: &Args) -> Action {
    Action::Exec
}

pub(super) fn discard(_: &Args) -> Action {
    Action::Discard
}

pub(super) fn watch(a: &Args) -> Action {
    Action::Watch(a.rest.to_vec())
}

pub(super) fn unwatch(_: &Args) -> Action {
    Action::Unwatch
}

/// What `CLIENT SETNAME`, `CLIENT GETNAME` and `CLIENT ID` do to the connection they are sent on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOp {
    /// Names the connection (a name already checked); an empty name removes the name.
    SetName(Bytes),
    /// Answers the connection's name, or nil.
    GetName,
    /// Answers the connection's number.
    Id,
}

impl ClientOp {
    /// Applies the operation to a connection named `name` (`None` if unnamed) whose number is
    /// `id`, and answers its reply.
    pub fn apply(self, name: &mut Option<Bytes>, id: u64) -> Reply {
        match self {
            ClientOp::SetName(new) => {
                *name = (!new.is_empty()).then_some(new);
                Reply::Ok
            }
            ClientOp::GetName => name.clone().map_or(Reply::Nil, Reply::Bulk),
            ClientOp::Id => Reply::Int(id as i64),
        }
    }
}

/// `CLIENT SETNAME`/`GETNAME`/`ID`, the subcommands that change nothing here (`SETINFO`,
/// `NO-EVICT`, `NO-TOUCH`, `REPLY ON`), and `REPLY OFF`/`SKIP`, refused. A name, as in Redis,
/// is printable ASCII without spaces.
pub(super) fn client(a: &Args) -> Action {
    let sub = lower(&a.rest[0]);
    match (sub.as_str(), &a.rest[1..]) {
        ("setname", [name]) if valid_name(name) => Action::Client(ClientOp::SetName(name.clone())),
        ("setname", [_]) => error(BAD_NAME),
        ("getname", []) => Action::Client(ClientOp::GetName),
        ("id", []) => Action::Client(ClientOp::Id),
        ("setname" | "getname" | "id", _) => error(format!(
            "ERR wrong number of arguments for 'client|{sub}' command"
        )),
        // Turning replies off would leave a pipelining client's replies out of step with what
        // it reads: refused rather than answered OK and ignored.
        ("reply", [mode]) if lower(mode) == "on" => Action::Reply(Reply::Ok),
        ("reply", [mode]) if matches!(lower(mode).as_str(), "off" | "skip") => {
            error("ERR CLIENT REPLY OFF and SKIP are not supported; every command is answered")
        }
        ("reply", [_]) => error("ERR syntax error"),
        ("reply", _) => error("ERR wrong number of arguments for 'client|reply' command"),
        ("setinfo" | "no-evict" | "no-touch", _) => Action::Reply(Reply::Ok),
        _ => error("ERR unknown subcommand for 'client'"),
    }
}

/// `CONFIG GET pattern…`, `CONFIG SET name value…`, and `RESETSTAT`/`REWRITE` (nothing to do).
pub(super) fn config(a: &Args) -> Action {
    let rest = &a.rest[1..];
    match lower(&a.rest[0]).as_str() {
        "get" if !rest.is_empty() => Action::ConfigGet(rest.to_vec()),
        "set" if !rest.is_empty() && rest.len().is_multiple_of(2) => Action::ConfigSet(
            rest.chunks(2)
                .map(|p| (p[0].clone(), p[1].clone()))
                .collect(),
        ),
        "get" | "set" => error(format!(
            "ERR wrong number of arguments for 'config|{}' command",
            lower(&a.rest[0])
        )),
        "resetstat" | "rewrite" => Action::Reply(Reply::Ok),
        other => error(format!(
            "ERR unknown subcommand '{other}'. Try CONFIG HELP."
        )),
    }
}

/// `FUNCTION FLUSH`: there are no functions, so flushing them always succeeds.
pub(super) fn function(a: &Args) -> Action {
    match lower(&a.rest[0]).as_str() {
        "flush" => Action::Reply(Reply::Ok),
        "list" => Action::Reply(Reply::Array(Vec::new())),
        other => error(format!(
            "ERR unknown subcommand '{other}'. Functions (scripting) are not supported."
        )),
    }
}

pub(super) fn command(a: &Args) -> Action {
    match a.rest.first().map(lower).as_deref() {
        None => Action::Reply(Reply::Array(COMMANDS.iter().map(command_info).collect())),
        Some("count") => Action::Reply(Reply::Int(COMMANDS.len() as i64)),
        Some("docs") => Action::Reply(Reply::Array(Vec::new())),
        Some("info") => Action::Reply(Reply::Array(
            a.rest[1..]
                .iter()
                .map(|name| super::find(name).map_or(Reply::Nil, command_info))
                .collect(),
        )),
        Some(_) => error("ERR unknown subcommand for 'command'"),
    }
}

/// `TIME`: this node's clock, as seconds and microseconds.
pub(super) fn time(a: &Args) -> Action {
    Action::Reply(Reply::Array(vec![
        Reply::Bulk(Bytes::from((a.now / 1000).to_string())),
        Reply::Bulk(Bytes::from(((a.now % 1000) * 1000).to_string())),
    ]))
}
