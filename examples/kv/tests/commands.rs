//! The Redis commands beyond plain strings, through real `kv node` processes and the Rust
//! `redis` client: hashes, lists, sets, the newer string and key commands, transactions whose
//! WATCH is checked across nodes, and CONFIG.

mod common;

use std::time::Duration;
use std::time::Instant;

use common::Ports;
use common::Proc;
use common::q;
use common::q_err;
use redis::Value;
use redis::aio::MultiplexedConnection;

/// Three nodes of one cluster, killed when dropped.
struct Cluster {
    _dir: tempfile::TempDir,
    _procs: Vec<Proc>,
    ports: Vec<Ports>,
}

impl Cluster {
    fn start() -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let ports: Vec<Ports> = (0..3).map(|_| Ports::new()).collect();
        let members = common::members(&ports);
        let procs = ports
            .iter()
            .enumerate()
            .map(|(i, p)| {
                common::spawn(
                    dir.path(),
                    i as u64 + 1,
                    p,
                    &["--initial-members".to_string(), members.clone()],
                )
            })
            .collect();
        Cluster {
            _dir: dir,
            _procs: procs,
            ports,
        }
    }

    /// A connection to node `i` (0-based) once it serves writes.
    async fn connect(&self, i: usize) -> MultiplexedConnection {
        let url = format!("redis://127.0.0.1:{}/", self.ports[i].resp);
        let client = redis::Client::open(url).expect("client");
        let deadline = Instant::now() + common::WAIT;
        loop {
            if let Ok(mut c) = client.get_multiplexed_async_connection().await {
                let probe: redis::RedisResult<String> = redis::cmd("SET")
                    .arg("probe")
                    .arg("1")
                    .query_async(&mut c)
                    .await;
                if probe.is_ok() {
                    return c;
                }
            }
            assert!(Instant::now() < deadline, "node {i} never served a write");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn strings(c: &mut MultiplexedConnection) {
    assert_eq!(q::<String>(c, &["SET", "s", "Hello World"]).await, "OK");
    assert_eq!(q::<String>(c, &["GETRANGE", "s", "0", "4"]).await, "Hello");
    assert_eq!(q::<String>(c, &["SUBSTR", "s", "-5", "-1"]).await, "World");
    assert_eq!(q::<String>(c, &["GETRANGE", "s", "0", "-100"]).await, "H");
    assert_eq!(q::<i64>(c, &["SETRANGE", "s", "6", "Redis"]).await, 11);
    assert_eq!(q::<String>(c, &["GETDEL", "s"]).await, "Hello Redis");
    assert_eq!(q::<Option<String>>(c, &["GET", "s"]).await, None);
    assert_eq!(q::<String>(c, &["SETEX", "e", "100", "v"]).await, "OK");
    assert_eq!(q::<String>(c, &["GETEX", "e", "PERSIST"]).await, "v");
    assert_eq!(q::<i64>(c, &["TTL", "e"]).await, -1);
    assert_eq!(q::<String>(c, &["GETEX", "e", "PX", "50000"]).await, "v");
    let pttl: i64 = q(c, &["PTTL", "e"]).await;
    assert!((1..=50_000).contains(&pttl), "{pttl}");
    assert_eq!(q::<String>(c, &["PSETEX", "p", "100000", "v"]).await, "OK");
    assert_eq!(q::<i64>(c, &["MSETNX", "m1", "a", "m2", "b"]).await, 1);
    assert_eq!(q::<i64>(c, &["MSETNX", "m2", "x", "m3", "y"]).await, 0);
    assert_eq!(q::<i64>(c, &["EXISTS", "m3"]).await, 0);
    assert_eq!(q::<String>(c, &["INCRBYFLOAT", "f", "10.5"]).await, "10.5");
    assert_eq!(q::<String>(c, &["INCRBYFLOAT", "f", "0.1"]).await, "10.6");
    assert!(
        q_err(c, &["INCRBYFLOAT", "f", "+inf"])
            .await
            .contains("would produce")
    );
    assert_eq!(q::<i64>(c, &["SETBIT", "b", "7", "1"]).await, 0);
    assert_eq!(q::<i64>(c, &["SETBIT", "b", "7", "1"]).await, 1);
    assert_eq!(q::<i64>(c, &["GETBIT", "b", "7"]).await, 1);
    assert_eq!(q::<i64>(c, &["GETBIT", "b", "100"]).await, 0);
    assert_eq!(q::<String>(c, &["SET", "bits", "foobar"]).await, "OK");
    assert_eq!(q::<i64>(c, &["BITCOUNT", "bits"]).await, 26);
    assert_eq!(q::<i64>(c, &["BITCOUNT", "bits", "1", "1"]).await, 6);
    assert_eq!(
        q::<i64>(c, &["BITCOUNT", "bits", "5", "30", "BIT"]).await,
        17
    );
    q::<String>(c, &["MSET", "l1", "ohmytext", "l2", "mynewtext"]).await;
    assert_eq!(q::<String>(c, &["LCS", "l1", "l2"]).await, "mytext");
    assert_eq!(q::<i64>(c, &["LCS", "l1", "l2", "LEN"]).await, 6);
    let idx: Value = q(
        c,
        &["LCS", "l1", "l2", "IDX", "MINMATCHLEN", "4", "WITHMATCHLEN"],
    )
    .await;
    let idx = format!("{idx:?}");
    assert!(
        idx.contains("[int(4), int(7)]")
            && idx.contains("[int(5), int(8)]")
            && idx.ends_with("int(6)])"),
        "{idx}"
    );
}

async fn keys_and_types(c: &mut MultiplexedConnection) {
    q::<String>(c, &["SET", "k", "v"]).await;
    q::<i64>(c, &["HSET", "h", "f", "1"]).await;
    q::<i64>(c, &["RPUSH", "l", "a"]).await;
    q::<i64>(c, &["SADD", "set", "a"]).await;
    for (key, kind) in [
        ("k", "string"),
        ("h", "hash"),
        ("l", "list"),
        ("set", "set"),
        ("no", "none"),
    ] {
        assert_eq!(q::<String>(c, &["TYPE", key]).await, kind);
    }
    let wrong = q_err(c, &["GET", "h"]).await;
    assert!(wrong.starts_with("WRONGTYPE"), "{wrong}");
    assert!(q_err(c, &["HGET", "k", "f"]).await.starts_with("WRONGTYPE"));
    assert!(
        q_err(c, &["LPUSH", "set", "x"])
            .await
            .starts_with("WRONGTYPE")
    );
    assert!(q_err(c, &["INCR", "l"]).await.starts_with("WRONGTYPE"));
    assert_eq!(q::<String>(c, &["RENAME", "k", "k2"]).await, "OK");
    assert!(
        q_err(c, &["RENAME", "k", "k3"])
            .await
            .contains("no such key")
    );
    assert_eq!(q::<i64>(c, &["RENAMENX", "k2", "h"]).await, 0);
    assert_eq!(q::<i64>(c, &["COPY", "h", "h2"]).await, 1);
    assert_eq!(q::<i64>(c, &["COPY", "h", "h2"]).await, 0);
    assert_eq!(q::<i64>(c, &["COPY", "k2", "h2", "REPLACE"]).await, 1);
    assert_eq!(q::<String>(c, &["TYPE", "h2"]).await, "string");
    assert_eq!(q::<i64>(c, &["EXPIRE", "k2", "100", "NX"]).await, 1);
    assert_eq!(q::<i64>(c, &["EXPIRE", "k2", "200", "NX"]).await, 0);
    assert_eq!(q::<i64>(c, &["EXPIRE", "k2", "50", "GT"]).await, 0);
    assert_eq!(q::<i64>(c, &["EXPIRE", "k2", "50", "LT"]).await, 1);
    assert_eq!(q::<i64>(c, &["EXPIRE", "h", "50", "LT", "XX"]).await, 0);
    let at: i64 = q(c, &["EXPIRETIME", "k2"]).await;
    let pat: i64 = q(c, &["PEXPIRETIME", "k2"]).await;
    assert_eq!(at, (pat + 500) / 1000);
    assert_eq!(q::<i64>(c, &["EXPIRETIME", "h"]).await, -1);
    assert_eq!(
        q::<i64>(c, &["PEXPIREAT", "h", "1"]).await,
        1,
        "a past time deletes"
    );
    assert_eq!(q::<i64>(c, &["EXISTS", "h"]).await, 0);
    assert_eq!(q::<i64>(c, &["TOUCH", "k2", "l", "none"]).await, 2);
    assert_eq!(q::<i64>(c, &["UNLINK", "k2", "none"]).await, 1);
    let random: Option<String> = q(c, &["RANDOMKEY"]).await;
    assert!(random.is_some());
    let (_, typed): (String, Vec<String>) =
        q(c, &["SCAN", "0", "TYPE", "list", "COUNT", "1000"]).await;
    assert_eq!(typed, vec!["l".to_string()]);
    let usage: i64 = q(c, &["MEMORY", "USAGE", "l"]).await;
    assert!(usage > 0);
    assert_eq!(q::<String>(c, &["FLUSHALL"]).await, "OK");
    assert_eq!(q::<String>(c, &["FUNCTION", "FLUSH"]).await, "OK");
    assert_eq!(q::<i64>(c, &["DBSIZE"]).await, 0);
    assert_eq!(q::<Option<String>>(c, &["RANDOMKEY"]).await, None);
}

async fn hashes_lists_sets(c: &mut MultiplexedConnection) {
    assert_eq!(q::<i64>(c, &["HSET", "h", "a", "1", "b", "2"]).await, 2);
    assert_eq!(q::<String>(c, &["HMSET", "h", "c", "3"]).await, "OK");
    assert_eq!(q::<i64>(c, &["HSETNX", "h", "a", "9"]).await, 0);
    assert_eq!(q::<String>(c, &["HGET", "h", "a"]).await, "1");
    let got: Vec<Option<String>> = q(c, &["HMGET", "h", "a", "zz", "c"]).await;
    assert_eq!(got, vec![Some("1".into()), None, Some("3".into())]);
    let all: std::collections::BTreeMap<String, String> = q(c, &["HGETALL", "h"]).await;
    assert_eq!(all.len(), 3);
    assert_eq!(q::<i64>(c, &["HLEN", "h"]).await, 3);
    assert_eq!(q::<i64>(c, &["HSTRLEN", "h", "a"]).await, 1);
    assert_eq!(q::<i64>(c, &["HEXISTS", "h", "b"]).await, 1);
    // Fields come in no particular order (as in Redis), but HKEYS and HVALS agree on it.
    let keys: Vec<String> = q(c, &["HKEYS", "h"]).await;
    let values: Vec<String> = q(c, &["HVALS", "h"]).await;
    let mut pairs: Vec<(String, String)> = keys.into_iter().zip(values).collect();
    pairs.sort();
    assert_eq!(
        pairs,
        [("a", "1"), ("b", "2"), ("c", "3")].map(|(f, v)| (f.to_string(), v.to_string()))
    );
    assert_eq!(q::<i64>(c, &["HINCRBY", "h", "a", "10"]).await, 11);
    assert_eq!(
        q::<String>(c, &["HINCRBYFLOAT", "h", "b", "0.5"]).await,
        "2.5"
    );
    assert!(
        q_err(c, &["HINCRBY", "h", "b", "1"])
            .await
            .contains("hash value is not an integer")
    );
    let one: String = q(c, &["HRANDFIELD", "h"]).await;
    assert!(["a", "b", "c"].contains(&one.as_str()));
    assert_eq!(
        q::<Vec<String>>(c, &["HRANDFIELD", "h", "5"]).await.len(),
        3
    );
    assert_eq!(
        q::<Vec<String>>(c, &["HRANDFIELD", "h", "-5"]).await.len(),
        5
    );
    let (_, fields): (String, Vec<String>) = q(c, &["HSCAN", "h", "0", "MATCH", "a"]).await;
    assert_eq!(fields, ["a", "11"]);
    assert_eq!(q::<i64>(c, &["HDEL", "h", "a", "b", "c", "zz"]).await, 3);
    assert_eq!(
        q::<i64>(c, &["EXISTS", "h"]).await,
        0,
        "an emptied hash is gone"
    );
    // A hash's fields expire with its key.
    q::<i64>(c, &["HSET", "hx", "f", "v"]).await;
    assert_eq!(q::<i64>(c, &["PEXPIRE", "hx", "1"]).await, 1);
    let deadline = Instant::now() + common::WAIT;
    while q::<Option<String>>(c, &["HGET", "hx", "f"]).await.is_some() {
        assert!(Instant::now() < deadline, "the hash never expired");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(q::<i64>(c, &["HLEN", "hx"]).await, 0);

    assert_eq!(q::<i64>(c, &["RPUSH", "l", "b", "c"]).await, 2);
    assert_eq!(q::<i64>(c, &["LPUSH", "l", "a"]).await, 3);
    assert_eq!(q::<i64>(c, &["LPUSHX", "nolist", "a"]).await, 0);
    assert_eq!(
        q::<Vec<String>>(c, &["LRANGE", "l", "0", "-1"]).await,
        ["a", "b", "c"]
    );
    assert_eq!(q::<String>(c, &["LINDEX", "l", "-1"]).await, "c");
    assert_eq!(q::<i64>(c, &["LLEN", "l"]).await, 3);
    assert_eq!(q::<String>(c, &["LPOP", "l"]).await, "a");
    assert_eq!(q::<Vec<String>>(c, &["RPOP", "l", "5"]).await, ["c", "b"]);
    assert_eq!(q::<i64>(c, &["EXISTS", "l"]).await, 0);

    assert_eq!(q::<i64>(c, &["SADD", "s", "x", "y", "x"]).await, 2);
    assert_eq!(q::<i64>(c, &["SCARD", "s"]).await, 2);
    assert_eq!(q::<i64>(c, &["SISMEMBER", "s", "y"]).await, 1);
    assert_eq!(q::<Vec<String>>(c, &["SMEMBERS", "s"]).await, ["x", "y"]);
    assert_eq!(q::<i64>(c, &["SREM", "s", "x", "z"]).await, 1);
    assert_eq!(q::<i64>(c, &["RPUSHX", "nolist", "a"]).await, 0);
    assert_eq!(q::<i64>(c, &["RPUSH", "l2", "a"]).await, 1);
    assert_eq!(q::<i64>(c, &["RPUSHX", "l2", "b", "c"]).await, 3);
    assert_eq!(q::<i64>(c, &["DEL", "l2"]).await, 1);
    // SPOP removes the members it returns; every replica removes the same ones.
    assert_eq!(q::<i64>(c, &["SADD", "sp", "1", "2", "3", "4"]).await, 4);
    let popped: Vec<String> = q(c, &["SPOP", "sp", "3"]).await;
    assert_eq!(popped.len(), 3);
    let left: Vec<String> = q(c, &["SMEMBERS", "sp"]).await;
    assert_eq!(left.len(), 1);
    assert!(!popped.contains(&left[0]));
    let last: String = q(c, &["SPOP", "sp"]).await;
    assert_eq!(last, left[0]);
    assert_eq!(q::<Option<String>>(c, &["SPOP", "sp"]).await, None);
    // TIME: seconds and microseconds, as two strings.
    let time: Vec<String> = q(c, &["TIME"]).await;
    let secs: u64 = time[0].parse().unwrap();
    let micros: u64 = time[1].parse().unwrap();
    assert!(secs > 1_600_000_000 && micros < 1_000_000, "{time:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_answers_as_redis_does_through_leader_and_followers() {
    let cluster = Cluster::start();
    for node in 0..3 {
        let mut c = cluster.connect(node).await;
        q::<String>(&mut c, &["FLUSHALL"]).await;
        strings(&mut c).await;
        q::<String>(&mut c, &["FLUSHALL"]).await;
        hashes_lists_sets(&mut c).await;
        keys_and_types(&mut c).await;
    }
    // CONFIG is each node's own.
    let mut c = cluster.connect(0).await;
    assert_eq!(
        q::<String>(&mut c, &["CONFIG", "SET", "hash-max-ziplist-entries", "7"]).await,
        "OK"
    );
    let got: Vec<String> = q(&mut c, &["CONFIG", "GET", "hash-max-ziplist-entries"]).await;
    assert_eq!(got, ["hash-max-ziplist-entries", "7"]);
    let unknown = q_err(&mut c, &["CONFIG", "SET", "no-such-thing", "1"]).await;
    assert!(
        unknown.contains("Unknown option or number of arguments for CONFIG SET - 'no-such-thing'"),
        "{unknown}"
    );
    // A CLIENT name belongs to its connection, inside MULTI too; CLIENT ID tells them apart.
    let mut other = cluster.connect(0).await;
    let name = |c: &mut MultiplexedConnection| {
        let mut c = c.clone();
        async move { q::<Option<String>>(&mut c, &["CLIENT", "GETNAME"]).await }
    };
    assert_eq!(
        q::<String>(&mut c, &["CLIENT", "SETNAME", "w1"]).await,
        "OK"
    );
    assert_eq!(name(&mut c).await.as_deref(), Some("w1"));
    assert_eq!(name(&mut other).await, None);
    let replies = transaction(
        &mut other,
        &[&["CLIENT", "SETNAME", "w2"], &["CLIENT", "GETNAME"]],
    )
    .await;
    assert_eq!(
        replies,
        Value::Array(vec![Value::Okay, Value::BulkString(b"w2".to_vec())])
    );
    assert_eq!(name(&mut c).await.as_deref(), Some("w1"));
    // INFO is queued and answered at EXEC, as in Redis, after the transaction's writes.
    let replies = transaction(&mut other, &[&["SET", "in-tx", "1"], &["INFO", "keyspace"]]).await;
    let Value::Array(replies) = replies else {
        panic!("{replies:?}")
    };
    let Value::BulkString(info) = &replies[1] else {
        panic!("{replies:?}")
    };
    let info = String::from_utf8_lossy(info);
    assert!(info.starts_with("# Keyspace\r\ndb0:keys="), "{info}");
    info_sections_and_counters(&mut c).await;
    // HELLO's SETNAME names the connection too.
    let _: Value = q(&mut other, &["HELLO", "2", "SETNAME", "via-hello"]).await;
    assert_eq!(name(&mut other).await.as_deref(), Some("via-hello"));
    let id: i64 = q(&mut c, &["CLIENT", "ID"]).await;
    let other_id: i64 = q(&mut other, &["CLIENT", "ID"]).await;
    assert!(id > 0 && other_id > 0 && id != other_id, "{id} {other_id}");
    // RESET takes the name and RESP3 away (the connection's id stays).
    let _: Value = q(&mut other, &["HELLO", "3"]).await;
    let _: i64 = q(&mut other, &["HSET", "reset-h", "f", "v"]).await;
    let map: Value = q(&mut other, &["HGETALL", "reset-h"]).await;
    assert!(matches!(map, Value::Map(_)), "{map:?}");
    assert_eq!(q::<String>(&mut other, &["RESET"]).await, "RESET");
    assert_eq!(name(&mut other).await, None);
    let array: Value = q(&mut other, &["HGETALL", "reset-h"]).await;
    assert!(matches!(array, Value::Array(_)), "{array:?}");
    assert_eq!(q::<i64>(&mut other, &["CLIENT", "ID"]).await, other_id);
}

/// INFO answers the sections named (any case, several at once) in Redis's order, all of them
/// for none, `all` or `default`; its counters count what the connection did.
async fn info_sections_and_counters(c: &mut MultiplexedConnection) {
    let headers = |text: &str| -> Vec<String> {
        text.lines()
            .filter_map(|l| l.strip_prefix("# "))
            .map(str::to_string)
            .collect()
    };
    let every = [
        "Server",
        "Clients",
        "Memory",
        "Persistence",
        "Stats",
        "Replication",
        "CPU",
        "Keyspace",
    ];
    for args in [&["INFO"][..], &["INFO", "all"], &["INFO", "cpu", "DEFAULT"]] {
        assert_eq!(headers(&q::<String>(c, args).await), every, "{args:?}");
    }
    let two = q::<String>(c, &["INFO", "CPU", "server", "cpu"]).await;
    assert_eq!(headers(&two), ["Server", "CPU"]);
    assert_eq!(q::<String>(c, &["INFO", "no-such-section"]).await, "");
    let field = |text: &str, name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no number {name} in {text}"))
    };
    // Present, as a number (`field` panics otherwise).
    field(&two, "uptime_in_seconds");
    let replication = q::<String>(c, &["INFO", "replication"]).await;
    assert!(
        field(&replication, "master_repl_offset") >= 1.0,
        "{replication}"
    );
    let cpu = field(&two, "used_cpu_user") + field(&two, "used_cpu_sys");
    assert!(
        cpu > 0.0,
        "a node that has served writes has used CPU: {two}"
    );
    // Every command counts, the INFO that reads the counter included.
    let before = q::<String>(c, &["INFO", "stats"]).await;
    for _ in 0..5 {
        assert_eq!(q::<String>(c, &["PING"]).await, "PONG");
    }
    let after = q::<String>(c, &["INFO", "stats"]).await;
    let counted = |name| field(&after, name) - field(&before, name);
    assert_eq!(counted("total_commands_processed"), 6.0, "{before}{after}");
    assert_eq!(counted("rejected_connections"), 0.0);
    assert!(
        field(&after, "total_connections_received") >= 2.0,
        "{after}"
    );
}

/// Runs `MULTI`, the commands (each answered `QUEUED`) and `EXEC`; EXEC's raw reply.
async fn transaction(c: &mut MultiplexedConnection, cmds: &[&[&str]]) -> Value {
    assert_eq!(q::<String>(c, &["MULTI"]).await, "OK");
    for cmd in cmds {
        assert_eq!(q::<String>(c, cmd).await, "QUEUED");
    }
    q(c, &["EXEC"]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_key_changed_through_another_node_aborts_exec() {
    let cluster = Cluster::start();
    let mut a = cluster.connect(0).await;
    let mut b = cluster.connect(1).await;
    q::<String>(&mut a, &["SET", "balance", "10"]).await;

    // Unchanged: EXEC applies every command, in one entry, each with its own reply.
    q::<String>(&mut a, &["WATCH", "balance"]).await;
    let replies = transaction(
        &mut a,
        &[
            &["INCRBY", "balance", "5"],
            &["HSET", "profile", "f", "v"],
            &["GET", "balance"],
        ],
    )
    .await;
    let Value::Array(results) = replies else {
        panic!("{replies:?}")
    };
    assert_eq!(results[0], Value::Int(15));
    assert_eq!(results[1], Value::Int(1));
    assert_eq!(results[2], Value::BulkString(b"15".to_vec()));

    // Changed by another client through another node: EXEC aborts, nothing applied.
    q::<String>(&mut a, &["WATCH", "balance", "absent"]).await;
    q::<i64>(&mut b, &["INCR", "balance"]).await;
    let replies = transaction(&mut a, &[&["SET", "balance", "0"]]).await;
    assert_eq!(replies, Value::Nil);
    assert_eq!(q::<String>(&mut b, &["GET", "balance"]).await, "16");

    // An absent watched key created and deleted again through the other node aborts too.
    q::<String>(&mut a, &["WATCH", "absent"]).await;
    q::<String>(&mut b, &["SET", "absent", "1"]).await;
    q::<i64>(&mut b, &["DEL", "absent"]).await;
    let replies = transaction(&mut a, &[&["SET", "balance", "0"]]).await;
    assert_eq!(replies, Value::Nil);

    // UNWATCH forgets the watched keys: a change made meanwhile no longer aborts.
    q::<String>(&mut a, &["WATCH", "balance"]).await;
    assert_eq!(q::<String>(&mut a, &["UNWATCH"]).await, "OK");
    q::<i64>(&mut b, &["INCR", "balance"]).await;
    let replies = transaction(&mut a, &[&["DECR", "balance"]]).await;
    assert_eq!(replies, Value::Array(vec![Value::Int(16)]));

    // A mistake seen while queueing discards the whole transaction.
    assert_eq!(q::<String>(&mut a, &["MULTI"]).await, "OK");
    assert_eq!(
        q::<String>(&mut a, &["SET", "balance", "1"]).await,
        "QUEUED"
    );
    assert!(
        q_err(&mut a, &["SET", "balance"])
            .await
            .contains("wrong number of arguments")
    );
    assert!(
        q_err(&mut a, &["EXEC"])
            .await
            .contains("Transaction discarded because of previous errors")
    );
    assert_eq!(q::<String>(&mut a, &["GET", "balance"]).await, "16");
    assert!(
        q_err(&mut a, &["EXEC"])
            .await
            .contains("EXEC without MULTI")
    );
    assert!(
        q_err(&mut a, &["DISCARD"])
            .await
            .contains("DISCARD without MULTI")
    );
    assert_eq!(q::<String>(&mut a, &["MULTI"]).await, "OK");
    assert!(
        q_err(&mut a, &["WATCH", "x"])
            .await
            .contains("inside MULTI")
    );
    assert_eq!(q::<String>(&mut a, &["DISCARD"]).await, "OK");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_keys_are_swept_faster_than_one_batch_a_second() {
    // Keys with short expiries, as sessions or rate-limit counters have: they must not pile
    // up in memory until a write happens to touch them.
    const KEYS: usize = 30_000;
    let cluster = Cluster::start();
    let mut c = cluster.connect(0).await;
    let before: i64 = q(&mut c, &["DBSIZE"]).await;
    for chunk in 0..KEYS / 1000 {
        let mut pipe = redis::pipe();
        for i in chunk * 1000..(chunk + 1) * 1000 {
            pipe.cmd("SET")
                .arg(format!("short-{i}"))
                .arg("v")
                .arg("PX")
                .arg(1)
                .ignore();
        }
        let () = pipe.query_async(&mut c).await.expect("pipelined SETs");
    }
    // DBSIZE counts keys that expired but are not swept yet, as Redis does.
    let started = Instant::now();
    let mut size: i64 = q(&mut c, &["DBSIZE"]).await;
    while size > before {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{} expired keys left after {:?}",
            size - before,
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        size = q(&mut c, &["DBSIZE"]).await;
    }
}
