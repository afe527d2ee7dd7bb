use super::*;
use crate::store::Condition;
use crate::store::Expiry;

fn known(name: &[u8]) -> Option<&'static str> {
    find(name).map(|c| c.name)
}

#[test]
fn known_names_are_canonical_and_unknown_ones_are_not() {
    assert_eq!(known(b"SeT"), Some("set"));
    assert_eq!(known(b"getset"), Some("getset"));
    assert_eq!(known(b"HGETALL"), Some("hgetall"));
    assert_eq!(known(b"zadd"), None);
    assert_eq!(known(b"averyveryverylongcommandname"), None);
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
    let is_write = |name: &str| find(name.as_bytes()).is_some_and(Spec::is_write);
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
            // Relative: resolved at the leader's time when it applies, not at 5_000.
            expiry: Expiry::In(10_000),
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
            op: WriteOp::ExpireIn { ms: -5000, .. },
            ..
        }
    ));
}

#[test]
fn hello_negotiates_the_protocol() {
    use crate::resp::Proto;
    let hello = |proto, name: Option<&str>| Action::Hello {
        proto,
        name: name.map(|n| Bytes::copy_from_slice(n.as_bytes())),
    };
    assert_eq!(parse(&args("HELLO"), 0), hello(None, None));
    assert_eq!(parse(&args("HELLO 2"), 0), hello(Some(Proto::Resp2), None));
    assert_eq!(parse(&args("HELLO 3"), 0), hello(Some(Proto::Resp3), None));
    // SETNAME names the connection, after AUTH or alone; a bad name or option is refused.
    assert_eq!(
        parse(&args("HELLO 3 AUTH u p SETNAME app"), 0),
        hello(Some(Proto::Resp3), Some("app"))
    );
    assert_eq!(
        parse(&args("HELLO 2 setname app"), 0),
        hello(Some(Proto::Resp2), Some("app"))
    );
    for bad in ["HELLO 3 SETNAME", "HELLO 3 FOO bar", "HELLO 3 AUTH u"] {
        assert!(
            matches!(parse(&args(bad), 0), Action::Reply(Reply::Error(e)) if e.contains("Syntax error in HELLO option")),
            "{bad}"
        );
    }
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

#[test]
fn the_table_is_sorted_and_every_name_is_found() {
    assert!(COMMANDS.windows(2).all(|w| w[0].name < w[1].name));
    for c in COMMANDS {
        assert!(c.name.len() <= LONGEST_NAME, "{}", c.name);
        assert_eq!(known(c.name.to_ascii_uppercase().as_bytes()), Some(c.name));
    }
}

#[test]
fn arity_comes_from_the_table() {
    for (cmd, name) in [
        ("HSET h f", "hset"),
        ("HSET h f v f2", "hset"),
        ("GETRANGE k 0", "getrange"),
        ("MSETNX a 1 b", "msetnx"),
        ("RENAME a", "rename"),
        ("WATCH", "watch"),
        ("LPOP l 1 2", "lpop"),
        ("RPOP l 1 2", "rpop"),
    ] {
        assert_eq!(
            parse(&args(cmd), 0),
            Action::Reply(Reply::Error(format!(
                "ERR wrong number of arguments for '{name}' command"
            ))),
            "{cmd}"
        );
    }
}

#[test]
fn expire_options_follow_redis_7() {
    // Relative times come out as their offset, absolute ones as their time.
    let when = |cmd: &str| match parse(&args(cmd), 1_000) {
        Action::Write {
            op: WriteOp::ExpireAt { at, when, .. },
            ..
        } => Ok((at as i64, when)),
        Action::Write {
            op: WriteOp::ExpireIn { ms, when, .. },
            ..
        } => Ok((ms, when)),
        Action::Reply(Reply::Error(e)) => Err(e),
        other => panic!("{other:?}"),
    };
    use crate::store::ExpireIf;
    assert_eq!(when("EXPIRE k 10 NX"), Ok((10_000, ExpireIf::NoExpiry)));
    assert_eq!(when("PEXPIRE k 10 xx"), Ok((10, ExpireIf::HasExpiry)));
    assert_eq!(when("EXPIREAT k 10 GT"), Ok((10_000, ExpireIf::Later)));
    assert_eq!(when("PEXPIREAT k 10 LT"), Ok((10, ExpireIf::Sooner)));
    assert!(
        when("EXPIRE k 10 NX XX")
            .unwrap_err()
            .contains("not compatible")
    );
    assert!(
        when("EXPIRE k 10 GT LT")
            .unwrap_err()
            .contains("not compatible")
    );
    assert_eq!(
        when("EXPIRE k 10 FOO"),
        Err("ERR Unsupported option FOO".into())
    );
    // As in Redis: options before the time, and the option as it was written.
    assert_eq!(
        when("EXPIRE k abc fOo"),
        Err("ERR Unsupported option fOo".into())
    );
    assert_eq!(
        when("EXPIRE k abc NX XX"),
        Err("ERR NX and XX, GT or LT options at the same time are not compatible".into())
    );
}

#[test]
fn string_command_arguments_are_checked_before_replication() {
    let err = |cmd: &str| refusal(&cmd.split_whitespace().collect::<Vec<_>>());
    assert_eq!(err("INCRBYFLOAT k abc"), "ERR value is not a valid float");
    assert_eq!(err("INCRBYFLOAT k nan"), "ERR value is not a valid float");
    assert_eq!(
        err("SETBIT k -1 1"),
        "ERR bit offset is not an integer or out of range"
    );
    assert_eq!(
        err("SETBIT k 4294967296 1"),
        "ERR bit offset is not an integer or out of range"
    );
    assert_eq!(
        err("SETBIT k 1 2"),
        "ERR bit is not an integer or out of range"
    );
    // As in Redis, an offset past the longest value (proto-max-bulk-len) is out of range, for
    // GETBIT too; the bit just before it is not.
    let max_value = crate::resp::Limits::default().max_bulk as u64;
    for cmd in ["SETBIT k {} 1", "GETBIT k {}"] {
        let past = cmd.replace("{}", &(max_value * 8).to_string());
        assert_eq!(
            err(&past),
            "ERR bit offset is not an integer or out of range",
            "{past}"
        );
        let last = cmd.replace("{}", &(max_value * 8 - 1).to_string());
        let argv: Vec<Bytes> = last
            .split_whitespace()
            .map(|a| Bytes::from(a.to_string()))
            .collect();
        assert!(
            !matches!(parse(&argv, 0), Action::Reply(Reply::Error(_))),
            "{last}"
        );
    }
    assert_eq!(
        err("GETEX k EX 0"),
        "ERR invalid expire time in 'getex' command"
    );
    assert_eq!(err("GETEX k PERSIST EX 1"), "ERR syntax error");
    assert_eq!(err("BITCOUNT k 0"), "ERR syntax error");
    assert_eq!(
        err("LCS a b LEN IDX"),
        "ERR If you want both the length and indexes, please just use IDX."
    );
    assert_eq!(
        err("HRANDFIELD h -9223372036854770000"),
        "ERR value is out of range"
    );
    assert_eq!(err("COPY a b DB 1"), "ERR DB index is out of range");
    assert!(matches!(parse(&args("MULTI"), 0), Action::Multi));
    assert!(matches!(
        parse(&args("CONFIG SET a"), 0),
        Action::Reply(Reply::Error(_))
    ));
}

/// The error a command's arguments get (for a key of the command's type, when the command
/// checks them after its key), or a panic if they are accepted.
fn refusal(argv: &[&str]) -> String {
    let argv: Vec<Bytes> = argv.iter().map(|a| Bytes::from(a.to_string())).collect();
    match parse(&argv, 0) {
        Action::Reply(Reply::Error(e))
        | Action::Read(ReadOp::ArgumentError {
            error: Reply::Error(e),
            ..
        }) => e,
        other => panic!("{argv:?} accepted: {other:?}"),
    }
}

#[test]
fn integer_arguments_are_read_as_redis_reads_them() {
    // Redis' rule: an optional '-', digits without a leading zero ("0" aside), no '+', no "-0",
    // no spaces, in the 64-bit range.
    let bad = [
        "+1",
        "+0",
        "01",
        "00",
        "-0",
        "-01",
        " 1",
        "1 ",
        "",
        "-",
        "9223372036854775808",
        "-9223372036854775809",
        "1e3",
        "0x1",
    ];
    for n in bad {
        for argv in [
            vec!["INCRBY", "k", n],
            vec!["DECRBY", "k", n],
            vec!["SETEX", "k", n, "v"],
            vec!["SET", "k", "v", "PX", n],
            vec!["EXPIRE", "k", n],
            vec!["LRANGE", "l", n, "-1"],
            vec!["GETRANGE", "s", "0", n],
            vec!["SETRANGE", "s", n, "v"],
            vec!["HINCRBY", "h", "f", n],
            vec!["HRANDFIELD", "h", n],
            vec!["BITCOUNT", "s", n, "1"],
            vec!["SCAN", "0", "COUNT", n],
            vec!["SELECT", n],
        ] {
            assert_eq!(refusal(&argv), NOT_INT, "{argv:?}");
        }
        assert_eq!(
            refusal(&["GETBIT", "k", n]),
            "ERR bit offset is not an integer or out of range",
            "{n:?}"
        );
        assert_eq!(
            refusal(&["LPOP", "l", n]),
            "ERR value is out of range, must be positive",
            "{n:?}"
        );
    }
    for (text, n) in [
        ("0", 0),
        ("7", 7),
        ("-1", -1),
        ("10", 10),
        ("9223372036854775807", i64::MAX),
        ("-9223372036854775808", i64::MIN),
    ] {
        assert_eq!(
            parse(&args(&format!("INCRBY k {text}")), 0),
            write(WriteOp::IncrByStrict {
                key: "k".into(),
                by: n
            }),
        );
    }
}

#[test]
fn copy_to_itself_is_refused_as_in_redis() {
    let same = "ERR source and destination objects are the same";
    assert_eq!(refusal(&["COPY", "a", "a"]), same);
    assert_eq!(refusal(&["COPY", "a", "a", "REPLACE"]), same);
    assert_eq!(refusal(&["COPY", "a", "a", "DB", "0"]), same);
    // Options are checked first.
    assert_eq!(refusal(&["COPY", "a", "a", "FOO"]), "ERR syntax error");
    assert_eq!(
        refusal(&["COPY", "a", "a", "DB", "1"]),
        "ERR DB index is out of range"
    );
    assert!(matches!(
        parse(&args("COPY a A"), 0),
        Action::Write {
            op: WriteOp::Copy { .. },
            ..
        }
    ));
}

/// The `SET` a command line becomes.
fn set_op(line: &str) -> (Expiry, Condition, bool) {
    match parse(&args(line), 0) {
        Action::Write {
            op:
                WriteOp::Set {
                    expiry,
                    condition,
                    get,
                    ..
                },
            ..
        } => (expiry, condition, get),
        other => panic!("{line}: {other:?}"),
    }
}

/// The expiry a `GETEX` command line sets.
fn getex_expiry(line: &str) -> Expiry {
    match parse(&args(line), 0) {
        Action::Write {
            op: WriteOp::GetEx { expiry, .. },
            ..
        } => expiry,
        other => panic!("{line}: {other:?}"),
    }
}

#[test]
fn set_and_getex_options_may_repeat_and_the_last_one_counts() {
    use Condition::*;
    assert_eq!(
        set_op("SET k v EX 100 EX 200"),
        (Expiry::In(200_000), Always, false)
    );
    // As in Redis, only the expiry finally given is checked.
    assert_eq!(
        set_op("SET k v EX abc EX 100"),
        (Expiry::In(100_000), Always, false)
    );
    assert_eq!(set_op("SET k v NX NX"), (Expiry::Clear, IfAbsent, false));
    assert_eq!(
        set_op("SET k v XX XX GET GET"),
        (Expiry::Clear, IfPresent, true)
    );
    assert_eq!(
        set_op("SET k v KEEPTTL KEEPTTL"),
        (Expiry::Keep, Always, false)
    );
    assert_eq!(
        set_op("SET k v PXAT 5 NX PXAT 7"),
        (Expiry::At(7), IfAbsent, false)
    );
    assert_eq!(getex_expiry("GETEX k EX 100 EX 200"), Expiry::In(200_000));
    assert_eq!(getex_expiry("GETEX k EX abc EX 5"), Expiry::In(5_000));
    assert_eq!(getex_expiry("GETEX k PERSIST PERSIST"), Expiry::Clear);
    assert_eq!(getex_expiry("GETEX k"), Expiry::Keep);
    // Options that contradict each other are still a syntax error, before any time is read.
    for line in [
        "SET k v NX XX",
        "SET k v XX NX",
        "SET k v EX 1 PX 1",
        "SET k v EX 1 KEEPTTL",
        "SET k v KEEPTTL EX 1",
        "SET k v EXAT -1 FOO",
        "SET k v EX",
        "SET k v PERSIST",
        "GETEX k PERSIST EX 1",
        "GETEX k EX 1 PERSIST",
        "GETEX k EX 1 PXAT 1",
        "GETEX k NX",
        "GETEX k GET",
        "GETEX k KEEPTTL",
        "GETEX k EX",
    ] {
        let argv: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(refusal(&argv), "ERR syntax error", "{line}");
    }
    assert_eq!(
        refusal(&["GETEX", "k", "EX", "5", "EX", "0"]),
        "ERR invalid expire time in 'getex' command"
    );
    assert_eq!(refusal(&["SET", "k", "v", "EX", "5", "EX", "x"]), NOT_INT);
}

#[test]
fn scan_cursors_are_read_as_redis_reads_them() {
    let cursor = |c: &str| {
        let argv = [Bytes::from("SCAN"), Bytes::from(c.to_string())];
        match parse(&argv, 0) {
            Action::Read(ReadOp::Scan { cursor, .. }) => Some(cursor),
            Action::Reply(Reply::Error(e)) if e == "ERR invalid cursor" => None,
            other => panic!("{c:?}: {other:?}"),
        }
    };
    // Redis reads a cursor with C's strtoul: a sign and leading zeros pass, a negative number
    // wraps around.
    assert_eq!(cursor("-1"), Some(u64::MAX));
    assert_eq!(cursor("+1"), Some(1));
    assert_eq!(cursor("007"), Some(7));
    assert_eq!(cursor("-0"), Some(0));
    assert_eq!(cursor(""), Some(0));
    assert_eq!(cursor("18446744073709551615"), Some(u64::MAX));
    assert_eq!(cursor("-18446744073709551615"), Some(1));
    for bad in [
        "18446744073709551616",
        " 1",
        "1 ",
        "+",
        "-",
        "0x1",
        "--1",
        "1e3",
    ] {
        assert_eq!(cursor(bad), None, "{bad:?}");
    }
    assert!(matches!(
        parse(&args("HSCAN h -1"), 0),
        Action::Read(ReadOp::HScan {
            cursor: u64::MAX,
            ..
        })
    ));
}

#[test]
fn client_names_and_ids_belong_to_the_connection() {
    let client = |line: &[&str]| {
        let argv: Vec<Bytes> = line.iter().map(|a| Bytes::from(a.to_string())).collect();
        match parse(&argv, 0) {
            Action::Client(op) => op,
            other => panic!("{line:?}: {other:?}"),
        }
    };
    let (mut name, id) = (None, 42);
    let mut run = |line: &[&str]| client(line).apply(&mut name, id);
    assert_eq!(run(&["CLIENT", "GETNAME"]), Reply::Nil);
    assert_eq!(run(&["CLIENT", "SETNAME", "worker-1"]), Reply::Ok);
    assert_eq!(run(&["client", "getname"]), Reply::Bulk("worker-1".into()));
    assert_eq!(run(&["CLIENT", "ID"]), Reply::Int(42));
    // An empty name removes the name.
    assert_eq!(run(&["CLIENT", "SETNAME", ""]), Reply::Ok);
    assert_eq!(run(&["CLIENT", "GETNAME"]), Reply::Nil);
    for bad in ["a b", "a\nb", "tab\there", "\u{e9}", "\u{7f}"] {
        assert_eq!(
            refusal(&["CLIENT", "SETNAME", bad]),
            "ERR Client names cannot contain spaces, newlines or special characters.",
            "{bad:?}"
        );
    }
    assert_eq!(
        refusal(&["CLIENT", "SETNAME"]),
        "ERR wrong number of arguments for 'client|setname' command"
    );
    assert_eq!(
        refusal(&["CLIENT", "GETNAME", "x"]),
        "ERR wrong number of arguments for 'client|getname' command"
    );
    assert_eq!(
        refusal(&["CLIENT", "ID", "x"]),
        "ERR wrong number of arguments for 'client|id' command"
    );
    // Replies cannot be turned off: a client that believed they were would read them out of
    // step.
    assert_eq!(parse(&args("CLIENT REPLY on"), 0), Action::Reply(Reply::Ok));
    for line in [
        "CLIENT REPLY OFF",
        "CLIENT REPLY skip",
        "CLIENT REPLY maybe",
    ] {
        refusal(&line.split(' ').collect::<Vec<_>>());
    }
    for wrong in [&["CLIENT", "REPLY"][..], &["CLIENT", "REPLY", "on", "x"]] {
        assert_eq!(
            refusal(wrong),
            "ERR wrong number of arguments for 'client|reply' command"
        );
    }
}

#[test]
fn errors_echo_at_most_128_bytes_of_an_argument() {
    let long = Bytes::from(vec![0xff; 1 << 20]);
    for line in [
        vec![long.clone(), Bytes::from("x")],
        vec![Bytes::from("nosuchcommand"), long.clone(), long.clone()],
        vec![
            Bytes::from("EXPIRE"),
            Bytes::from("k"),
            Bytes::from("1"),
            long.clone(),
        ],
        vec![Bytes::from("CLIENT"), long.clone()],
    ] {
        let Action::Reply(Reply::Error(e)) = parse(&line, 0) else {
            panic!("{:?} refused", &line[0][..line[0].len().min(16)]);
        };
        // 128 bytes of the argument, each invalid byte shown as three.
        assert!(e.len() < 1024, "a {} byte error", e.len());
    }
}

#[test]
fn memory_usage_checks_its_options_as_redis_does() {
    let usage = |line: &str| {
        assert_eq!(
            parse(&args(line), 0),
            Action::Read(ReadOp::MemoryUsage("a".into())),
            "{line}"
        );
    };
    usage("MEMORY USAGE a");
    usage("MEMORY usage a samples 5");
    usage("MEMORY USAGE a SAMPLES 0 SAMPLES 7");
    assert_eq!(
        refusal(&["MEMORY", "USAGE", "a", "SAMPLES", "abc"]),
        NOT_INT
    );
    assert_eq!(refusal(&["MEMORY", "USAGE", "a", "SAMPLES", "+1"]), NOT_INT);
    for bad in [
        "MEMORY USAGE a FOO 1",
        "MEMORY USAGE a SAMPLES",
        "MEMORY USAGE a SAMPLES -1",
        "MEMORY USAGE a SAMPLES 1 FOO",
    ] {
        let argv: Vec<&str> = bad.split_whitespace().collect();
        assert_eq!(refusal(&argv), "ERR syntax error", "{bad}");
    }
    assert_eq!(
        refusal(&["MEMORY", "USAGE"]),
        "ERR wrong number of arguments for 'memory|usage' command"
    );
}

/// Runs each command line against `store` at time 1000, as a node would: a write is applied
/// and reshaped by its `post`, a read is answered; the replies in order.
fn run_on(store: &mut crate::store::Store, lines: &[&str]) -> Vec<Reply> {
    use raft_core::Queryable;
    use raft_core::StateMachine;
    let now = 1_000;
    lines
        .iter()
        .map(|line| match parse(&args(line), now) {
            Action::Reply(r) => r,
            Action::Read(op) => {
                let post = Post::of_read(&op);
                post.apply(store.query(crate::store::Query { now, op }))
            }
            Action::Write { op, post } => {
                post.apply(store.apply(crate::store::Command { now, op }))
            }
            other => panic!("{line}: {other:?}"),
        })
        .collect()
}

/// The reply to the last of `lines`, run on an empty store.
fn last_reply(lines: &[&str]) -> Reply {
    let mut store = crate::store::Store::default();
    run_on(&mut store, lines).pop().unwrap_or(Reply::Nil)
}

#[test]
fn arguments_redis_checks_after_the_key_are_checked_after_the_key() {
    let wrong_type = Reply::Fault(crate::store::Error::WrongType);
    let not_int = Reply::error(NOT_INT);
    let syntax_error = Reply::error("ERR syntax error");
    let not_float = Reply::error("ERR value is not a valid float");
    let empty_scan = Reply::Array(vec![Reply::text("0"), Reply::Array(Vec::new())]);
    // (command, reply for a missing key, reply for a key of the command's type)
    let cases = [
        ("LINDEX k abc", Reply::Nil, not_int.clone(), "RPUSH k x"),
        (
            "BITCOUNT k 1",
            Reply::Int(0),
            syntax_error.clone(),
            "SET k x",
        ),
        ("BITCOUNT k x y", Reply::Int(0), not_int.clone(), "SET k x"),
        (
            "BITCOUNT k 1 2 FOO",
            Reply::Int(0),
            syntax_error.clone(),
            "SET k x",
        ),
        // As in Redis, the ends are read before the unit.
        (
            "BITCOUNT k x y FOO",
            Reply::Int(0),
            not_int.clone(),
            "SET k x",
        ),
        (
            "BITCOUNT k 1 2 3 4",
            Reply::Int(0),
            syntax_error.clone(),
            "SET k x",
        ),
        (
            "HSCAN k 0 FOO",
            empty_scan.clone(),
            syntax_error.clone(),
            "HSET k f v",
        ),
        (
            "HSCAN k 0 COUNT x",
            empty_scan,
            not_int.clone(),
            "HSET k f v",
        ),
        (
            "GETEX k EX 0",
            Reply::Nil,
            Reply::error("ERR invalid expire time in 'getex' command"),
            "SET k x",
        ),
        ("GETEX k PX x", Reply::Nil, not_int, "SET k x"),
        ("INCRBYFLOAT k abc", not_float.clone(), not_float, "SET k 1"),
        (
            "HRANDFIELD k -2000000",
            Reply::Array(Vec::new()),
            Reply::error("ERR value is out of range"),
            "HSET k f v",
        ),
    ];
    for (cmd, missing, of_type, make) in cases {
        assert_eq!(last_reply(&[cmd]), missing, "{cmd} on a missing key");
        assert_eq!(last_reply(&[make, cmd]), of_type, "{cmd} after {make}");
        let other = if make.starts_with("SET") {
            "RPUSH k x"
        } else {
            "SET k x"
        };
        assert_eq!(last_reply(&[other, cmd]), wrong_type, "{cmd} after {other}");
    }
    // Mistakes Redis finds before the key still answer at once, whatever the key holds.
    assert_eq!(parse(&args("GETEX k EX"), 0), syntax());
    assert_eq!(parse(&args("HSCAN k x"), 0), error("ERR invalid cursor"));
    assert_eq!(parse(&args("HRANDFIELD k x"), 0), error(NOT_INT));
    assert_eq!(parse(&args("HRANDFIELD k 1 FOO"), 0), syntax());
    assert_eq!(parse(&args("SPOP k 1 2"), 0), syntax());
    // A key that expired is missing.
    let mut store = crate::store::Store::default();
    run_on(&mut store, &["SET k 1 PXAT 1000"]);
    assert_eq!(
        run_on(&mut store, &["INCRBYFLOAT k abc"]),
        [Reply::error("ERR value is not a valid float")]
    );
    assert_eq!(run_on(&mut store, &["BITCOUNT k x y"]), [Reply::Int(0)]);
}

#[test]
fn set_replies_are_sets_in_resp3_and_arrays_in_resp2() {
    use crate::resp::Proto;
    let mut store = crate::store::Store::default();
    let lines = [
        "SMEMBERS s",
        "SPOP s 2",
        "SADD s a",
        "SMEMBERS s",
        "SPOP s 1",
        "SPOP s",
        "SPOP s 0",
        "SET k v",
        "SPOP k 2",
    ];
    let replies = run_on(&mut store, &lines);
    let encoded = |proto| -> Vec<String> {
        replies
            .iter()
            .map(|r| {
                let mut out = bytes::BytesMut::new();
                crate::resp::encode(r, &mut out, proto);
                String::from_utf8_lossy(&out).into_owned()
            })
            .collect()
    };
    let wrong_type = "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n";
    assert_eq!(
        encoded(Proto::Resp3),
        [
            "~0\r\n",
            "~0\r\n",
            ":1\r\n",
            "~1\r\n$1\r\na\r\n",
            "~1\r\n$1\r\na\r\n",
            "_\r\n",
            "~0\r\n",
            "+OK\r\n",
            wrong_type,
        ]
    );
    assert_eq!(
        encoded(Proto::Resp2),
        [
            "*0\r\n",
            "*0\r\n",
            ":1\r\n",
            "*1\r\n$1\r\na\r\n",
            "*1\r\n$1\r\na\r\n",
            "$-1\r\n",
            "*0\r\n",
            "+OK\r\n",
            wrong_type,
        ]
    );
    // A queued SMEMBERS takes the same post, which EXEC applies to its reply.
    assert_eq!(
        Post::of_read(&ReadOp::SMembers("s".into())),
        Post::ArrayToSet
    );
}

#[test]
fn lcs_refuses_keys_of_other_types_in_its_own_words() {
    let not_strings = Reply::error("ERR The specified keys must contain string values");
    for (make, cmd) in [
        ("HSET h f v", "LCS h h"),
        ("HSET h f v", "LCS missing h"),
        ("RPUSH l x", "LCS l missing LEN"),
        ("SADD s x", "LCS s s IDX"),
    ] {
        assert_eq!(last_reply(&[make, cmd]), not_strings, "{cmd} after {make}");
    }
    assert_eq!(
        last_reply(&["SET a ab", "SET b b", "LCS a b"]),
        Reply::text("b")
    );
    assert_eq!(last_reply(&["LCS a b LEN"]), Reply::Int(0));
}
