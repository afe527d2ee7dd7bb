//! Pipelining through real `kv` processes: clients send many commands before reading any reply.
//! Replies come in order, each command gets its own, a read sees the writes sent before it, and
//! the history of pipelined SET/INCR/APPEND/GET through a follower and across `kill -9` of the
//! leader is linearizable.

mod common;

use std::collections::BTreeMap;
use std::hash::Hash;
use std::hash::Hasher;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::Ports;
use common::Proc;
use raft_core::testing::Model;
use raft_core::testing::Pending;
use raft_core::testing::Recorder;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// How long one reply may take: the server itself retries through an election for 10 s.
const REPLY_WITHIN: Duration = Duration::from_secs(20);

/// A reply, as RESP2 sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum R {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Option<String>),
    Array(Option<Vec<R>>),
}

/// One reply from the front of `buf`, and its length; `None` if it is not complete yet.
fn parse(buf: &[u8]) -> Option<(R, usize)> {
    let end = buf.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&buf[1..end]).expect("reply header is text");
    let after = end + 2;
    let n = || line.parse::<i64>().expect("a number");
    match buf[0] {
        b'+' => Some((R::Status(line.to_string()), after)),
        b'-' => Some((R::Error(line.to_string()), after)),
        b':' => Some((R::Int(n()), after)),
        b'$' if n() < 0 => Some((R::Bulk(None), after)),
        b'$' => {
            let len = n() as usize;
            let body = buf.get(after..after + len)?;
            buf.get(after + len..after + len + 2)?;
            let text = String::from_utf8(body.to_vec()).expect("text value");
            Some((R::Bulk(Some(text)), after + len + 2))
        }
        b'*' if n() < 0 => Some((R::Array(None), after)),
        b'*' => {
            let mut at = after;
            let mut items = Vec::new();
            for _ in 0..n() {
                let (item, used) = parse(&buf[at..])?;
                items.push(item);
                at += used;
            }
            Some((R::Array(Some(items)), at))
        }
        other => panic!("not a RESP reply: {:?}", other as char),
    }
}

/// A raw connection: pipelines are written in one go, replies read one by one.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(port: u16) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: Vec::new(),
        })
    }

    /// Sends every command without waiting for any reply.
    async fn send(&mut self, cmds: &[Vec<String>]) -> std::io::Result<()> {
        let mut out = Vec::new();
        for c in cmds {
            out.extend_from_slice(format!("*{}\r\n", c.len()).as_bytes());
            for a in c {
                out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
            }
        }
        self.stream.write_all(&out).await
    }

    async fn reply(&mut self) -> std::io::Result<R> {
        loop {
            if let Some((r, used)) = parse(&self.buf) {
                self.buf.drain(..used);
                return Ok(r);
            }
            let mut chunk = [0u8; 16 << 10];
            let read = tokio::time::timeout(REPLY_WITHIN, self.stream.read(&mut chunk));
            let n = read.await.map_err(|_| std::io::ErrorKind::TimedOut)??;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Sends `cmds` as one pipeline and reads their replies.
    async fn pipeline(&mut self, cmds: &[&[&str]]) -> Vec<R> {
        let cmds: Vec<Vec<String>> = cmds
            .iter()
            .map(|c| c.iter().map(|a| a.to_string()).collect())
            .collect();
        self.run(&cmds).await
    }

    /// Like [`Conn::pipeline`], for commands built at run time.
    async fn run(&mut self, cmds: &[Vec<String>]) -> Vec<R> {
        self.send(cmds).await.expect("send");
        let mut replies = Vec::new();
        for _ in cmds {
            replies.push(self.reply().await.expect("reply"));
        }
        replies
    }
}

/// A cluster of `n` kv processes; killed when dropped.
struct Cluster {
    dir: tempfile::TempDir,
    ports: Vec<Ports>,
    procs: BTreeMap<u64, Proc>,
}

impl Cluster {
    fn start(n: u64, extra: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let ports: Vec<Ports> = (0..n).map(|_| Ports::new()).collect();
        let mut args = vec!["--initial-members".to_string(), common::members(&ports)];
        args.extend(extra.iter().map(|s| s.to_string()));
        let procs = (1..=n)
            .map(|id| {
                let p = common::spawn(dir.path(), id, &ports[id as usize - 1], &args);
                (id, p)
            })
            .collect();
        Cluster { dir, ports, procs }
    }

    fn resp(&self, id: u64) -> u16 {
        self.ports[id as usize - 1].resp
    }

    /// The leader every live node agrees on.
    async fn leader(&self) -> u64 {
        let ids: Vec<u64> = self.procs.keys().copied().collect();
        common::poll("an agreed leader", self.dir.path(), &ids, || async {
            let mut leaders = Vec::new();
            for id in &ids {
                let s = common::status(&self.ports[*id as usize - 1].raft_addr()).await?;
                leaders.push(s.leader_id?);
            }
            let first = *leaders.first()?;
            leaders.iter().all(|l| *l == first).then_some(first)
        })
        .await
    }

    /// A connection to node `id` once a write through it commits.
    async fn ready(&self, id: u64) -> Conn {
        let ids: Vec<u64> = self.procs.keys().copied().collect();
        common::poll("a write to commit", self.dir.path(), &ids, || async {
            let mut c = Conn::open(self.resp(id)).await.ok()?;
            let r = c.pipeline(&[&["SET", "ready", "1"]]).await;
            (r == [R::Status("OK".into())]).then_some(c)
        })
        .await
    }

    /// The last log index node `id` reports.
    async fn last_index(&self, id: u64) -> u64 {
        common::status(&self.ports[id as usize - 1].raft_addr())
            .await
            .and_then(|s| s.last_log_index)
            .expect("status")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_mid_pipeline_answers_only_its_command_and_multi_stays_atomic() {
    let c = Cluster::start(1, &["--pipeline-batch", "4"]);
    let mut con = c.ready(1).await;
    let ok = || R::Status("OK".into());
    let queued = || R::Status("QUEUED".into());
    let bulk = |s: &str| R::Bulk(Some(s.into()));

    // A failing command answers only itself; the writes around it apply, in order.
    let r = con
        .pipeline(&[
            &["SET", "k", "v"],
            &["INCR", "k"],
            &["APPEND", "k", "w"],
            &["NOSUCH", "k"],
            &["GET", "k"],
            &["LPUSH", "k", "x"],
            &["GET", "k"],
        ])
        .await;
    assert_eq!(r[0], ok());
    assert!(
        matches!(&r[1], R::Error(e) if e.contains("not an integer")),
        "{r:?}"
    );
    assert_eq!(r[2], R::Int(2));
    assert!(
        matches!(&r[3], R::Error(e) if e.starts_with("ERR unknown command")),
        "{r:?}"
    );
    assert_eq!(r[4], bulk("vw"));
    assert!(
        matches!(&r[5], R::Error(e) if e.starts_with("WRONGTYPE")),
        "{r:?}"
    );
    assert_eq!(r[6], bulk("vw"));

    // MULTI/EXEC inside a pipeline: the transaction applies as a whole, between its neighbours.
    let r = con
        .pipeline(&[
            &["SET", "a", "1"],
            &["MULTI"],
            &["INCR", "a"],
            &["SET", "b", "x"],
            &["EXEC"],
            &["GET", "a"],
            &["GET", "b"],
        ])
        .await;
    assert_eq!(
        r,
        vec![
            ok(),
            ok(),
            queued(),
            queued(),
            R::Array(Some(vec![R::Int(2), ok()])),
            bulk("2"),
            bulk("x")
        ]
    );
    // A transaction refused while queueing applies none of its commands.
    let r = con
        .pipeline(&[
            &["SET", "t", "before"],
            &["MULTI"],
            &["SET", "t", "inside"],
            &["GET"],
            &["EXEC"],
            &["GET", "t"],
        ])
        .await;
    assert!(
        matches!(&r[4], R::Error(e) if e.starts_with("EXECABORT")),
        "{r:?}"
    );
    assert_eq!(r[5], bulk("before"));

    // A pipeline longer than --pipeline-batch (4) is split, its replies still in order.
    let incrs: Vec<&[&str]> = (0..50).map(|_| &["INCR", "n"][..]).collect();
    let r = con.pipeline(&incrs).await;
    assert_eq!(r, (1..=50).map(R::Int).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_writes_travel_as_few_log_entries() {
    let c = Cluster::start(1, &[]);
    let mut con = c.ready(1).await;
    let before = c.last_index(1).await;
    let sets: Vec<Vec<String>> = (0..64)
        .map(|i| vec!["SET".into(), format!("k{i}"), format!("v{i}")])
        .collect();
    let r = con.run(&sets).await;
    assert!(r.iter().all(|r| *r == R::Status("OK".into())), "{r:?}");
    let entries = c.last_index(1).await - before;
    // One entry per batch of what arrived together (the 64 commands may arrive in a few reads).
    assert!(entries <= 8, "64 pipelined SETs took {entries} log entries");
    let gets: Vec<Vec<String>> = (0..64)
        .map(|i| vec!["GET".into(), format!("k{i}")])
        .collect();
    let r = con.run(&gets).await;
    let want: Vec<R> = (0..64).map(|i| R::Bulk(Some(format!("v{i}")))).collect();
    assert_eq!(r, want);
}

/// What the history test's clients do.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Op {
    Set(String, String),
    Append(String, String),
    Incr(String),
    Get(String),
}

impl Op {
    fn key(&self) -> &str {
        match self {
            Op::Set(k, _) | Op::Append(k, _) | Op::Incr(k) | Op::Get(k) => k,
        }
    }

    fn args(&self) -> Vec<String> {
        match self {
            Op::Set(k, v) => vec!["SET".into(), k.clone(), v.clone()],
            Op::Append(k, v) => vec!["APPEND".into(), k.clone(), v.clone()],
            Op::Incr(k) => vec!["INCR".into(), k.clone()],
            Op::Get(k) => vec!["GET".into(), k.clone()],
        }
    }
}

/// What a command answered.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Out {
    Done,
    Int(i64),
    Value(Option<String>),
}

/// Redis strings, one key at a time: SET, APPEND (answers the new length), INCR (answers the
/// new number) and GET.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
struct Strings(BTreeMap<String, String>);

impl Model for Strings {
    type Input = Op;
    type Output = Out;

    fn init() -> Self {
        Strings::default()
    }

    fn step(&self, op: &Op, out: Option<&Out>) -> Option<Self> {
        let current = self.0.get(op.key());
        let mut next = self.clone();
        match op {
            Op::Get(_) => match out {
                None => {}
                Some(Out::Value(v)) if v.as_ref() == current => {}
                Some(_) => return None,
            },
            Op::Set(k, v) => {
                if out.is_some_and(|o| *o != Out::Done) {
                    return None;
                }
                next.0.insert(k.clone(), v.clone());
            }
            Op::Append(k, v) => {
                let new = format!("{}{v}", current.map_or("", String::as_str));
                if out.is_some_and(|o| *o != Out::Int(new.len() as i64)) {
                    return None;
                }
                next.0.insert(k.clone(), new);
            }
            Op::Incr(k) => {
                let n = current.map_or(Some(0), |c| c.parse::<i64>().ok())? + 1;
                if out.is_some_and(|o| *o != Out::Int(n)) {
                    return None;
                }
                next.0.insert(k.clone(), n.to_string());
            }
        }
        Some(next)
    }

    fn partition(op: &Op) -> u64 {
        let mut h = std::hash::DefaultHasher::new();
        op.key().hash(&mut h);
        h.finish()
    }

    fn is_read(op: &Op) -> bool {
        matches!(op, Op::Get(_))
    }
}

/// The `i`th command of a client's round: counters get INCR, strings SET and APPEND, and both
/// are read, all interleaved.
fn op(client: usize, round: usize, i: usize) -> Op {
    let n = client * 7 + round * 3 + i;
    // Every client uses the same few keys for four rounds, then moves on: the clients contend
    // on each key, and each key's history stays small enough to check quickly.
    let string = format!("s{}.{}", round / 4, n % 2);
    let counter = format!("c{}.{}", round / 4, n % 2);
    match n % 6 {
        0 => Op::Set(string, format!("{client}.{round}.{i}")),
        1 => Op::Append(string, format!("+{client}.{round}.{i}")),
        2 => Op::Incr(counter),
        3 => Op::Get(string),
        4 => Op::Get(counter),
        _ => Op::Incr(counter),
    }
}

/// Whether a reply has the shape of the command's reply (not another command's).
fn answer(op: &Op, r: &R) -> Result<Out, String> {
    match (op, r) {
        (Op::Set(..), R::Status(s)) if s == "OK" => Ok(Out::Done),
        (Op::Append(..) | Op::Incr(_), R::Int(n)) => Ok(Out::Int(*n)),
        (Op::Get(_), R::Bulk(v)) => Ok(Out::Value(v.clone())),
        (_, R::Error(e)) => Err(e.clone()),
        _ => panic!("{op:?} got {r:?}: a reply out of order"),
    }
}

/// Runs `rounds` pipelines of `depth` commands on `ports` (the next port after a lost
/// connection), recording every command. Returns how many commands were answered after `after`
/// was set.
async fn client(
    id: usize,
    ports: Vec<u16>,
    rounds: usize,
    depth: usize,
    rec: Recorder<Op, Out>,
    done: Arc<(AtomicUsize, Notify)>,
    after: Arc<AtomicBool>,
) -> usize {
    let mut at = 0;
    let mut conn: Option<Conn> = None;
    let mut answered_after = 0;
    for round in 0..rounds {
        if conn.is_none() {
            // A node that is down refuses at once; the others are tried in turn.
            for _ in 0..ports.len() {
                if let Ok(c) = Conn::open(ports[at % ports.len()]).await {
                    conn = Some(c);
                    break;
                }
                at += 1;
            }
        }
        let Some(c) = conn.as_mut() else {
            panic!("client {id}: no node accepts connections");
        };
        let ops: Vec<Op> = (0..depth).map(|i| op(id, round, i)).collect();
        let cmds: Vec<Vec<String>> = ops.iter().map(Op::args).collect();
        let pending: Vec<Pending<Op, Out>> =
            ops.iter().map(|o| rec.invoke(id, o.clone())).collect();
        if c.send(&cmds).await.is_err() {
            conn = None;
            at += 1;
            continue; // every command's outcome is unknown (the pendings drop as unknown)
        }
        for (op, p) in ops.iter().zip(pending) {
            let r = match c.reply().await {
                Ok(r) => r,
                Err(_) => {
                    // The rest stay unknown.
                    conn = None;
                    at += 1;
                    break;
                }
            };
            match answer(op, &r) {
                Ok(out) => {
                    if after.load(Ordering::Acquire) {
                        answered_after += 1;
                    }
                    p.ok(out)
                }
                // A read that failed changed nothing; a write that failed may have applied.
                Err(_) if Strings::is_read(op) => p.failed(),
                Err(_) => p.unknown(),
            }
        }
        done.0.fetch_add(1, Ordering::AcqRel);
        done.1.notify_one();
    }
    answered_after
}

/// With `--read-consistency local`, a follower's connection still reads its own writes, as a
/// Redis connection does, although the follower may not have applied them yet when the
/// leader's answer comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_reading_locally_on_a_follower_sees_its_own_writes() {
    let c = Cluster::start(3, &["--read-consistency", "local"]);
    let leader = c.leader().await;
    drop(c.ready(leader).await);
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let mut conn = c.ready(follower).await;
    let mut stale = Vec::new();
    for i in 1..=50i64 {
        let v = i.to_string();
        let piped = conn.pipeline(&[&["SET", "k", &v], &["GET", "k"]]).await;
        assert_eq!(piped[0], R::Status("OK".into()));
        if piped[1] != R::Bulk(Some(v.clone())) {
            stale.push(format!("GET after SET {v} in one pipeline: {:?}", piped[1]));
        }
        assert_eq!(conn.pipeline(&[&["INCR", "n"]]).await, [R::Int(i)]);
        let read = conn.pipeline(&[&["GET", "n"]]).await;
        if read != [R::Bulk(Some(v.clone()))] {
            stale.push(format!("GET after INCR to {v}: {read:?}"));
        }
    }
    assert!(stale.is_empty(), "{} stale reads: {stale:?}", stale.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_through_a_follower_and_a_leader_change_are_linearizable() {
    let started = std::time::Instant::now();
    let mut c = Cluster::start(3, &[]);
    let leader = c.leader().await;
    drop(c.ready(leader).await);
    let followers: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let rec: Recorder<Op, Out> = Recorder::new();
    let done = Arc::new((AtomicUsize::new(0), Notify::new()));
    let after = Arc::new(AtomicBool::new(false));
    const ROUNDS: usize = 40;
    const DEPTH: usize = 16;
    // Two clients on followers (forwarded writes, follower reads), one on the leader; each
    // moves to the next node when its node goes away.
    let starts = [followers[0], followers[1], leader];
    let mut tasks = Vec::new();
    for (i, first) in starts.iter().enumerate() {
        let ports: Vec<u16> = (0..3).map(|k| c.resp((first - 1 + k) % 3 + 1)).collect();
        tasks.push(tokio::spawn(client(
            i,
            ports,
            ROUNDS,
            DEPTH,
            rec.clone(),
            done.clone(),
            after.clone(),
        )));
    }
    // Once a third of the rounds are done, kill -9 the leader.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while done.0.load(Ordering::Acquire) < ROUNDS {
        let progress = tokio::time::timeout_at(deadline, done.1.notified()).await;
        assert!(progress.is_ok(), "the clients made no progress");
    }
    c.procs.remove(&leader);
    after.store(true, Ordering::Release);
    let mut answered_after = 0;
    for t in tasks {
        answered_after += tokio::time::timeout(Duration::from_secs(180), t)
            .await
            .expect("the clients finish")
            .expect("client task");
    }
    let history = rec.history();
    let (ok, failed, unknown) = history.counts();
    eprintln!(
        "{ok} ok, {failed} failed, {unknown} unknown, {answered_after} after the kill, clients done {:?} after the start",
        started.elapsed()
    );
    assert!(
        answered_after >= DEPTH,
        "only {answered_after} commands were answered after the leader was killed"
    );
    assert!(
        ok >= ROUNDS * DEPTH,
        "{ok} ok, {failed} failed, {unknown} unknown"
    );
    let verdict = raft_core::testing::check::<Strings>(&history, Duration::from_secs(60));
    assert!(
        verdict.is_linearizable(),
        "{verdict:?}\n{ok} ok, {failed} failed, {unknown} unknown"
    );
}
