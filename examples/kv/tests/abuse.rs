//! The abuse suite: a real `kv node` process and clients that push every client-facing limit.
//! Each test measures what the limit protects — the node's memory, whether writes still commit,
//! whether a connection is closed — rather than matching an error's wording alone.
//!
//! The replication and session limits are exercised below the RESP layer, where they live:
//! `raft-grpc/tests/limits.rs` (the largest command replicates; a follower behind by 100 × 1 MiB
//! catches up; misconfiguration is refused at start; snapshot receive checks) and
//! `raft-core/tests/limits.rs` (failed snapshots are retried and the node serves on; the session
//! table's byte bound; replication batches by bytes).

mod common;

use std::io::BufRead;
use std::io::BufReader;
use std::io::Read;
use std::io::Write;
use std::net::TcpStream;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use common::WAIT;
use common::free_port;

const MIB: usize = 1 << 20;

/// A one-node `kv` cluster with small limits; killed when dropped.
struct Node {
    dir: tempfile::TempDir,
    child: Child,
    port: u16,
    /// The raft port (peers' and the cluster service's gRPC).
    raft: u16,
    /// The password clients must give, if the node requires one.
    password: Option<&'static str>,
    /// The file that holds it, kept for as long as the node may read it again (reloads).
    password_file: Option<tempfile::NamedTempFile>,
}

/// The password of [`Node::start_with_password`].
const PASSWORD: &str = "abuse-suite-password";

impl Node {
    fn start(extra: &[&str]) -> Node {
        Node::start_under(extra, Command::new(env!("CARGO_BIN_EXE_kv")))
    }

    /// Like [`Node::start`], for a node that requires [`PASSWORD`].
    fn start_with_password(extra: &[&str]) -> Node {
        let file = tempfile::NamedTempFile::new().expect("password file");
        std::fs::write(file.path(), PASSWORD).expect("password");
        let path = file.path().to_string_lossy().into_owned();
        let mut args = vec!["--requirepass-file", path.as_str()];
        args.extend_from_slice(extra);
        let mut node = Node::start_inner(
            &args,
            Command::new(env!("CARGO_BIN_EXE_kv")),
            Some(PASSWORD),
        );
        node.password = Some(PASSWORD);
        node.password_file = Some(file);
        node
    }

    /// Like [`Node::start`], in a process that may open at most `files` descriptors.
    fn start_with_open_files(extra: &[&str], files: u64) -> Node {
        let mut sh = Command::new("sh");
        sh.args(["-c", &format!("ulimit -n {files} && exec \"$0\" \"$@\"")])
            .arg(env!("CARGO_BIN_EXE_kv"));
        Node::start_under(extra, sh)
    }

    /// Starts the node with `cmd`, which runs `kv` with the arguments it is given.
    fn start_under(extra: &[&str], cmd: Command) -> Node {
        Node::start_inner(extra, cmd, None)
    }

    fn start_inner(extra: &[&str], mut cmd: Command, password: Option<&'static str>) -> Node {
        let dir = tempfile::tempdir().expect("temp dir");
        let (resp, raft) = (free_port(), free_port());
        let log = std::fs::File::create(dir.path().join("kv.log")).expect("log");
        cmd.args(["node", "--id", "1", "--data-dir"])
            .arg(dir.path().join("n1"))
            .args(["--raft-addr", &format!("127.0.0.1:{raft}")])
            .args(["--resp-addr", &format!("127.0.0.1:{resp}")])
            .args(["--initial-members", &format!("1=127.0.0.1:{raft}")])
            .args(extra);
        // Small command limits, unless the test sets its own.
        for (flag, value) in [
            ("--proto-max-bulk-len", MIB),
            ("--client-query-buffer-limit", 4 * MIB),
        ] {
            if !extra.contains(&flag) {
                cmd.args([flag, &value.to_string()]);
            }
        }
        let child = cmd
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn kv");
        let node = Node {
            dir,
            child,
            port: resp,
            raft,
            password,
            password_file: None,
        };
        // Ready once a write commits.
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(mut c) = node.try_connect()
                && password.is_none_or(|p| c.call(&[b"AUTH", p.as_bytes()]) == "+OK")
                && c.call(&[b"SET", b"ready", b"1"]) == "+OK"
            {
                return node;
            }
            assert!(Instant::now() < deadline, "the node did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn try_connect(&self) -> std::io::Result<Client> {
        let s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(WAIT))?;
        s.set_nodelay(true)?;
        Ok(Client {
            reader: BufReader::new(s.try_clone()?),
            stream: s,
        })
    }

    /// A connection, authenticated if the node requires a password.
    fn connect(&self) -> Client {
        let mut c = self.try_connect().expect("connect");
        if let Some(p) = self.password {
            assert_eq!(c.call(&[b"AUTH", p.as_bytes()]), "+OK");
        }
        c
    }

    /// The node process's resident memory, in bytes.
    fn rss(&self) -> usize {
        self.memory("VmRSS:")
    }

    /// Asserts that the node's resident memory grew by less than `most` bytes since it was
    /// `before`, while `what` happened.
    fn assert_grew_less_than(&self, before: usize, most: usize, what: &str) {
        let grew = self.rss().saturating_sub(before);
        assert!(
            grew < most,
            "RSS grew {} MiB (at most {} MiB) with {what}",
            grew / MIB,
            most / MIB
        );
    }

    /// The most resident memory the node process has had, in bytes.
    fn peak_rss(&self) -> usize {
        self.memory("VmHWM:")
    }

    /// The node process's `/proc/<pid>/status` line `field` (a size in kB), in bytes.
    fn memory(&self, field: &str) -> usize {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("status");
        let kib: usize = status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect(field);
        kib * 1024
    }

    /// `connected_clients` from INFO, asked on a fresh connection (which counts itself).
    fn clients(&self) -> usize {
        self.info_field("connected_clients")
    }

    /// A number from `INFO clients`, asked on a fresh connection.
    fn info_field(&self, field: &str) -> usize {
        let info = self.connect().call(&[b"INFO", b"clients"]);
        info.lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in INFO clients"))
    }

    /// Waits until `cond` holds, polling (the node is another process).
    fn wait_until(&self, what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + WAIT;
        while !cond() {
            assert!(Instant::now() < deadline, "not within {WAIT:?}: {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        common::no_panics(&self.dir.path().join("kv.log"));
    }
}

struct Client {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

impl Client {
    fn send(&mut self, args: &[&[u8]]) -> std::io::Result<()> {
        self.stream.write_all(&encode(args))
    }

    /// Reads one reply: a status, error or integer line as is; a bulk as its contents; an
    /// array as its elements joined by newlines; "" at the end of the stream.
    fn reply(&mut self) -> String {
        let mut line = String::new();
        if self.reader.read_line(&mut line).unwrap_or(0) == 0 {
            return String::new();
        }
        let line = line.trim_end().to_string();
        match line.as_bytes().first() {
            Some(b'$') => {
                let n: i64 = line[1..].parse().expect("bulk length");
                if n < 0 {
                    return "(nil)".into();
                }
                let mut buf = vec![0u8; n as usize + 2];
                self.reader.read_exact(&mut buf).expect("bulk");
                buf.truncate(n as usize);
                String::from_utf8_lossy(&buf).into_owned()
            }
            Some(b'*') => {
                let n: i64 = line[1..].parse().expect("array length");
                (0..n.max(0))
                    .map(|_| self.reply())
                    .collect::<Vec<_>>()
                    .join("\n")
            }
            _ => line,
        }
    }

    fn call(&mut self, args: &[&[u8]]) -> String {
        self.send(args).expect("send");
        self.reply()
    }

    /// Whether the server closed the connection: reading sees the end of the stream or a reset
    /// (rather than the read timeout).
    fn closed_by_server(&mut self) -> bool {
        let mut rest = Vec::new();
        match self.reader.read_to_end(&mut rest) {
            Ok(_) => true,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        }
    }
}

#[test]
fn an_endless_command_is_cut_off_at_the_query_buffer_limit_and_memory_stays_flat() {
    let node = Node::start(&[]);
    let before = node.rss();
    let mut c = node.connect();
    c.stream.set_write_timeout(Some(WAIT)).expect("timeout");
    // A multi-bulk command that would be 8 GiB: bulks of 1 MiB, each within the bulk limit.
    // The node refuses it once it passes 4 MiB and does not buffer it: it reads and drops
    // what follows for at most a second (so a client that stops sending reads the error),
    // then closes the connection on a client that goes on.
    let started = Instant::now();
    let mut sent = 0;
    let mut bulk = format!("${MIB}\r\n").into_bytes();
    bulk.extend_from_slice(&vec![b'x'; MIB]);
    bulk.extend_from_slice(b"\r\n");
    let mut result = c.stream.write_all(b"*8192\r\n");
    while result.is_ok() && sent < 8192 {
        result = c.stream.write_all(&bulk);
        sent += 1;
    }
    assert!(
        result.is_err(),
        "the node read all {sent} MiB of one command"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the connection ended {:?} after the command started",
        started.elapsed()
    );
    let grew = node.rss().saturating_sub(before);
    assert!(
        grew < 64 * MIB,
        "RSS grew {} MiB while a client sent {sent} MiB of one command",
        grew / MIB
    );
    // The node still commits writes.
    assert_eq!(node.connect().call(&[b"SET", b"after", b"1"]), "+OK");
}

#[test]
fn a_bulk_of_exactly_the_limit_commits_and_one_byte_more_is_refused() {
    let node = Node::start(&[]);
    let mut c = node.connect();
    let value = vec![b'v'; MIB];
    assert_eq!(c.call(&[b"SET", b"big", &value]), "+OK");
    assert_eq!(c.call(&[b"STRLEN", b"big"]), format!(":{MIB}"));
    let over = vec![b'v'; MIB + 1];
    let _ = c.send(&[b"SET", b"big2", &over]);
    // The node hears the rest of the command out before it closes, so the client reads the
    // error rather than a reset.
    let reply = c.reply();
    assert_eq!(reply, "-ERR Protocol error: invalid bulk length");
    assert!(c.closed_by_server());
    // So too when what the client goes on sending is far more than the sockets' buffers hold
    // (here 16 MiB): it is read and dropped, and the client's writes complete.
    let mut c = node.connect();
    c.stream.set_write_timeout(Some(WAIT)).expect("timeout");
    let header = format!("*3\r\n$3\r\nSET\r\n$4\r\nbig3\r\n${}\r\n", MIB + 1);
    c.stream.write_all(header.as_bytes()).expect("send");
    c.stream
        .write_all(&vec![b'v'; 16 * MIB])
        .expect("the node reads what follows");
    assert_eq!(c.reply(), "-ERR Protocol error: invalid bulk length");
    // Later writes on other connections commit at once.
    let started = Instant::now();
    let mut other = node.connect();
    for i in 0..20 {
        assert_eq!(
            other.call(&[b"SET", format!("k{i}").as_bytes(), b"v"]),
            "+OK"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(other.call(&[b"GET", b"big2"]), "(nil)");
    // APPEND cannot grow a value past the limit either, and the value is unchanged.
    let reply = other.call(&[b"APPEND", b"big", b"x"]);
    assert_eq!(
        reply,
        "-ERR string exceeds maximum allowed size (proto-max-bulk-len)"
    );
    assert_eq!(other.call(&[b"STRLEN", b"big"]), format!(":{MIB}"));
    assert_eq!(other.call(&[b"APPEND", b"small", b"abc"]), ":3");
    // Nor can SETRANGE, however far the offset.
    let offset = MIB.to_string();
    assert_eq!(
        other.call(&[b"SETRANGE", b"small", offset.as_bytes(), b"x"]),
        "-ERR string exceeds maximum allowed size (proto-max-bulk-len)"
    );
    assert_eq!(
        other.call(&[b"SETRANGE", b"small", b"9223372036854775807", b"x"]),
        "-ERR string exceeds maximum allowed size (proto-max-bulk-len)"
    );
    assert_eq!(other.call(&[b"STRLEN", b"small"]), ":3");
    let last = (MIB - 1).to_string();
    assert_eq!(
        other.call(&[b"SETRANGE", b"small", last.as_bytes(), b"x"]),
        format!(":{MIB}")
    );
}

#[test]
fn maxclients_refuses_the_next_client_as_redis_does() {
    let node = Node::start(&["--maxclients", "4"]);
    // INFO itself uses a connection; wait until the readiness probe's connection is gone.
    // Connections of earlier probes close asynchronously: take the four places as they free up.
    let mut held: Vec<Client> = Vec::new();
    node.wait_until("four clients connected", || {
        if let Ok(mut c) = node.try_connect()
            && c.call(&[b"PING"]) == "+PONG"
        {
            held.push(c);
        }
        held.len() == 4
    });
    let mut extra = node.connect();
    assert_eq!(extra.reply(), "-ERR max number of clients reached");
    assert!(extra.closed_by_server());
    // A client that leaves makes room for another.
    held.pop();
    node.wait_until("a slot is free", || {
        node.try_connect()
            .map(|mut c| c.call(&[b"PING"]) == "+PONG")
            .unwrap_or(false)
    });
}

#[test]
fn maxclients_fits_the_open_files_limit_so_clients_past_it_are_refused_not_stalled() {
    // 320 descriptors: fewer than the default maxclients, and fewer than the clients below.
    let node = Node::start_with_open_files(&[], 320);
    let mut probe = node.connect();
    let maxclients: usize = probe
        .call(&[b"CONFIG", b"GET", b"maxclients"])
        .lines()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("maxclients");
    assert!(maxclients < 320, "maxclients {maxclients} was not lowered");
    // Every client is either served or refused at once; none waits on a node that ran out of
    // descriptors (which would also starve its log and snapshot files).
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..400 {
        let mut c = node.connect();
        c.send(&[b"PING"]).expect("send");
        let mut line = String::new();
        match c.reader.read_line(&mut line) {
            Ok(_) if line == "+PONG\r\n" => held.push(c),
            Ok(_) => {
                assert!(line.is_empty() || line.starts_with("-ERR max"), "{line:?}");
                refused += 1;
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => refused += 1,
            Err(e) => panic!(
                "client {} neither served nor refused: {e}",
                held.len() + refused + 1
            ),
        }
    }
    assert!(held.len() < maxclients, "{} clients held", held.len());
    assert!(refused > 400 - maxclients, "{refused} refused");
    // With every client place taken, the node still writes: its storage kept its descriptors.
    for i in 0..200 {
        let key = format!("k{i}");
        assert_eq!(probe.call(&[b"SET", key.as_bytes(), &[b'v'; 1000]]), "+OK");
    }
    assert_eq!(held[0].call(&[b"GET", b"k199"]).len(), 1000);
}

#[test]
fn an_idle_client_is_closed_after_the_timeout_and_a_busy_one_is_not() {
    let node = Node::start(&["--timeout", "1"]);
    let mut idle = node.connect();
    let mut busy = node.connect();
    assert_eq!(idle.call(&[b"PING"]), "+PONG");
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(2_500) {
        assert_eq!(busy.call(&[b"PING"]), "+PONG");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(idle.closed_by_server(), "the idle client was closed");
    assert_eq!(busy.call(&[b"PING"]), "+PONG", "the busy client was not");
}

#[test]
fn a_client_that_never_reads_is_disconnected_and_memory_stays_bounded() {
    let node = Node::start(&["--client-output-timeout", "2"]);
    let mut c = node.connect();
    let value = vec![b'v'; 512 << 10];
    assert_eq!(c.call(&[b"SET", b"v", &value]), "+OK");
    let before = node.rss();
    // 4,000 GETs of 512 KiB: 2 GiB of replies the client never reads.
    let get = encode(&[b"GET", b"v"]);
    let pipeline: Vec<u8> = get
        .iter()
        .copied()
        .cycle()
        .take(get.len() * 4_000)
        .collect();
    c.stream
        .set_write_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let started = Instant::now();
    let _ = c.stream.write_all(&pipeline);
    node.wait_until("the non-reading client is gone", || node.clients() == 1);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(20),
        "disconnected after {took:?}"
    );
    let grew = node.rss().saturating_sub(before);
    assert!(grew < 64 * MIB, "RSS grew {} MiB", grew / MIB);
    // Everything it was sent before the cut is fine; the rest never came.
    let mut received = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    while let Ok(n) = c.reader.read(&mut buf) {
        if n == 0 {
            break;
        }
        received += n;
    }
    assert!(received < 4_000 * value.len(), "the server stopped sending");
}

#[test]
fn connections_give_back_the_buffers_of_large_commands_and_replies() {
    const VALUE: usize = 24 * MIB;
    const CONNECTIONS: usize = 10;
    // No bound on all clients' buffers: what is measured is the connections' own.
    let node = node_with_client_memory(0);
    let value = vec![b'v'; VALUE];
    assert_eq!(node.connect().call(&[b"SET", b"big", &value]), "+OK");
    let before = node.rss();
    // Each connection sends one large command and is sent one large reply, then stays open,
    // idle. Kept with them, their buffers would come to about 10 × 48 MiB.
    let idle: Vec<Client> = (0..CONNECTIONS)
        .map(|_| {
            let mut c = node.connect();
            assert_eq!(c.call(&[b"SET", b"scratch", &value]), "+OK");
            assert_eq!(c.call(&[b"GET", b"big"]).len(), VALUE);
            c
        })
        .collect();
    // What stays: the two stored values, the log's cache of recent entries (at most 64 MiB)
    // and what the allocator keeps, not the connections' buffers (measured: 184 MiB in all,
    // and 612 MiB with the buffers kept).
    node.assert_grew_less_than(before, 280 * MIB, "idle connections");
    for mut c in idle {
        assert_eq!(c.call(&[b"STRLEN", b"scratch"]), format!(":{VALUE}"));
    }
}

/// A node taking values of up to 32 MiB, with `--maxmemory-clients` at `bound` (0: none).
fn node_with_client_memory(bound: usize) -> Node {
    Node::start(&[
        "--proto-max-bulk-len",
        &(32 * MIB).to_string(),
        "--client-query-buffer-limit",
        &(64 * MIB).to_string(),
        "--maxmemory-clients",
        &bound.to_string(),
    ])
}

#[test]
fn commands_part_way_through_hold_at_most_maxmemory_clients_in_all() {
    const BULK: usize = 30 * MIB;
    let node = node_with_client_memory(128 * MIB);
    let before = node.rss();
    // Eight connections each send all but the last MiB of a 30 MiB value, one after another.
    // A refused one is heard out (its bytes read and dropped), so its writes succeed too.
    let data = vec![b'v'; BULK - MIB];
    let mut conns: Vec<Client> = (0..8)
        .map(|i| {
            let mut c = node.connect();
            c.stream.set_write_timeout(Some(WAIT)).expect("timeout");
            let head = format!("*3\r\n$3\r\nSET\r\n$4\r\nk{i:03}\r\n${BULK}\r\n");
            let _ = c.stream.write_all(head.as_bytes());
            let _ = c.stream.write_all(&data);
            c
        })
        .collect();
    // 128 MiB holds four such commands (30 MiB each, beyond 256 KiB per connection); the
    // others were refused as their headers arrived, and hold nothing. INFO says so.
    assert_eq!(node.info_field("client_buffers_shared"), 4 * BULK);
    node.assert_grew_less_than(before, 160 * MIB, "commands part-way through");
    // Small commands are served all the while, on a new connection too.
    assert_eq!(node.connect().call(&[b"SET", b"small", b"1"]), "+OK");
    // The held commands complete and commit; the refused ones read their error.
    let outcomes: Vec<String> = conns
        .iter_mut()
        .map(|c| {
            let _ = c.stream.write_all(&[b'v'; MIB]);
            let _ = c.stream.write_all(b"\r\n");
            let reply = c.reply();
            match reply.as_str() {
                "+OK" => "held".to_string(),
                r if r.starts_with("-ERR this command does not fit") => "refused".to_string(),
                r => r.chars().take(80).collect(),
            }
        })
        .collect();
    let held = ["held"; 4];
    let refused = ["refused"; 4];
    assert_eq!(outcomes, [&held[..], &refused[..]].concat());
    assert_eq!(
        node.connect().call(&[b"STRLEN", b"k003"]),
        format!(":{BULK}")
    );
    // Once they are done, the room is back: a fifth large command fits.
    node.wait_until("the finished commands' shares are given back", || {
        node.info_field("client_buffers_shared") == 0
    });
    let value = vec![b'v'; BULK];
    assert_eq!(node.connect().call(&[b"SET", b"k999", &value]), "+OK");
}

#[test]
fn commands_queued_in_transactions_count_against_maxmemory_clients() {
    let node = node_with_client_memory(64 * MIB);
    let value = vec![b'v'; 24 * MIB];
    // Each transaction holds a queued 24 MiB SET until its EXEC: two fit under 64 MiB.
    let mut open: Vec<Client> = Vec::new();
    let mut outcomes = Vec::new();
    for key in [&b"t1"[..], b"t2", b"t3"] {
        let mut c = node.connect();
        assert_eq!(c.call(&[b"MULTI"]), "+OK");
        outcomes.push(c.call(&[b"SET", key, &value]));
        open.push(c);
    }
    assert_eq!(outcomes[..2], ["+QUEUED", "+QUEUED"]);
    assert!(
        outcomes[2].starts_with("-ERR this command does not fit"),
        "{}",
        &outcomes[2][..outcomes[2].len().min(80)]
    );
    for c in &mut open[..2] {
        assert_eq!(c.call(&[b"EXEC"]), "+OK");
    }
    assert_eq!(
        node.connect().call(&[b"STRLEN", b"t2"]),
        format!(":{}", value.len())
    );
}

#[test]
fn watched_keys_and_client_names_keep_only_their_own_bytes() {
    const BULK: usize = 16 * MIB;
    let node = node_with_client_memory(64 * MIB);
    let before = node.rss();
    let mut c = node.connect();
    c.stream.set_write_timeout(Some(WAIT)).expect("timeout");
    // A large bulk gets a read buffer of its own, and the commands sent right after it in the
    // same write are parsed out of that buffer: a key WATCH keeps, or a name CLIENT SETNAME
    // keeps, must not keep the buffer (and the 16 MiB in it) alive with it.
    let big = vec![b'v'; BULK];
    for i in 0..16 {
        let key = format!("w{i}");
        let name = format!("n{i}");
        let mut write = encode(&[b"ECHO", &big]);
        write.extend(encode(&[b"WATCH", key.as_bytes()]));
        write.extend(encode(&[b"CLIENT", b"SETNAME", name.as_bytes()]));
        c.stream.write_all(&write).expect("send");
        assert_eq!(c.reply().len(), BULK);
        assert_eq!(c.reply(), "+OK");
        assert_eq!(c.reply(), "+OK");
    }
    // Sixteen such buffers would be 256 MiB; what the connection keeps is a few bytes (and
    // the allocator some of the buffers it was given back).
    node.assert_grew_less_than(
        before,
        128 * MIB,
        "16 watched keys and names after 16 MiB bulks",
    );
    assert_eq!(c.call(&[b"CLIENT", b"GETNAME"]), "n15");
}

#[test]
fn a_reply_past_maxmemory_clients_closes_its_connection_and_is_not_built() {
    let bound = 16 * MIB;
    let node = Node::start(&["--maxmemory-clients", &bound.to_string()]);
    let value = vec![b'v'; MIB];
    assert_eq!(node.connect().call(&[b"SET", b"v", &value]), "+OK");
    let before = node.rss();
    // A reply of 200 MiB: within the connection's own output limit (256 MiB), far past what
    // all clients may buffer together. It closes the connection after the replies before it.
    let mut c = node.connect();
    let mut mget: Vec<&[u8]> = vec![b"MGET"];
    mget.extend(std::iter::repeat_n(&b"v"[..], 200));
    let mut pipeline = encode(&[b"PING"]);
    pipeline.extend(encode(&mget));
    c.stream.write_all(&pipeline).expect("send");
    assert_eq!(c.reply(), "+PONG");
    let reply = c.reply().len();
    assert_eq!(reply, 0, "no reply, the connection is closed");
    node.assert_grew_less_than(before, 3 * bound, "a reply past maxmemory-clients");
    // A reply within the bound is answered, and the node serves on.
    let mut mget: Vec<&[u8]> = vec![b"MGET"];
    mget.extend(std::iter::repeat_n(&b"v"[..], 8));
    let mut c = node.connect();
    assert_eq!(
        c.call(&mget).len(),
        8 * MIB + 7,
        "eight values, newline-joined"
    );
    assert_eq!(c.call(&[b"SET", b"after", b"1"]), "+OK");
}

#[test]
fn expire_times_past_what_pttl_can_answer_are_refused() {
    let node = Node::start(&[]);
    let mut c = node.connect();
    assert_eq!(
        c.call(&[b"SET", b"k", b"v", b"EXAT", b"9223372036854775807"]),
        "-ERR invalid expire time in 'set' command"
    );
    assert_eq!(c.call(&[b"GET", b"k"]), "(nil)", "nothing was written");
    assert_eq!(
        c.call(&[b"SET", b"k", b"v", b"PXAT", b"9223372036854775807"]),
        "+OK"
    );
    let pttl: i64 = c.call(&[b"PTTL", b"k"])[1..].parse().unwrap();
    assert!(pttl > 0, "PTTL {pttl}");
}

#[test]
fn keys_over_a_large_store_does_not_hold_up_writes() {
    let node = Node::start(&[]);
    let mut loader = node.connect();
    // 200,000 keys, loaded 1,000 per MSET.
    let n = 200_000;
    for batch in 0..n / 1_000 {
        let mut args: Vec<Vec<u8>> = vec![b"MSET".to_vec()];
        for i in 0..1_000 {
            args.push(format!("key:{}", batch * 1_000 + i).into_bytes());
            args.push(b"v".to_vec());
        }
        let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        assert_eq!(loader.call(&refs), "+OK");
    }
    assert_eq!(loader.call(&[b"DBSIZE"]), format!(":{}", n + 1));
    // SETs on one connection while another runs KEYS over every key.
    let port = node.port;
    let keys = std::thread::spawn(move || {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut c = Client {
            reader: BufReader::new(s.try_clone().unwrap()),
            stream: s,
        };
        let started = Instant::now();
        let found = c.call(&[b"KEYS", b"key:*"]).lines().count();
        (found, started.elapsed())
    });
    let mut writer = node.connect();
    let mut latencies = Vec::new();
    while !keys.is_finished() {
        let started = Instant::now();
        assert_eq!(writer.call(&[b"SET", b"during", b"keys"]), "+OK");
        latencies.push(started.elapsed());
    }
    let (found, took) = keys.join().unwrap();
    assert_eq!(found, n);
    latencies.sort();
    let median = latencies[latencies.len() / 2];
    let worst = latencies[latencies.len() - 1];
    eprintln!(
        "KEYS over {n} keys took {took:?}; {} SETs meanwhile, median {median:?}, slowest {worst:?}",
        latencies.len()
    );
    // Had KEYS held the state machine for its whole walk, the SETs during it would have waited
    // for all of it: one or two would fit, each taking most of the walk. (The median, not the
    // slowest: on a busy machine one fdatasync can take as long as the walk.)
    assert!(
        latencies.len() >= 5,
        "only {} SETs during a {took:?} KEYS",
        latencies.len()
    );
    assert!(
        median < took / 4,
        "the median SET took {median:?} during a {took:?} KEYS: the walk held up writes"
    );
}

#[test]
fn a_client_that_has_not_authenticated_holds_kilobytes_and_is_closed_in_time() {
    let node = Node::start_with_password(&["--auth-timeout", "2"]);
    let before = node.rss();
    // Strangers each start an AUTH of three 1 MiB arguments (within the bulk and command limits
    // of an authenticated client) and stop one byte short.
    let partial = {
        let mut b = b"*4\r\n$4\r\nAUTH\r\n".to_vec();
        for i in 0..3 {
            b.extend_from_slice(format!("${MIB}\r\n").as_bytes());
            b.extend_from_slice(&vec![b'p'; if i == 2 { MIB - 1 } else { MIB }]);
            if i < 2 {
                b.extend_from_slice(b"\r\n");
            }
        }
        b
    };
    let mut strangers: Vec<Client> = (0..16)
        .map(|_| node.try_connect().expect("connect"))
        .collect();
    for c in &mut strangers {
        // The node may close the connection while the rest is still being sent.
        let _ = c.stream.write_all(&partial);
    }
    for c in &mut strangers {
        let reply = c.reply();
        assert!(
            reply.is_empty() || reply.starts_with("-ERR Protocol error"),
            "{reply:?}"
        );
        assert!(
            c.closed_by_server(),
            "a stranger's oversized AUTH is cut off"
        );
    }
    let grew = node.rss().saturating_sub(before);
    assert!(
        grew < 16 * MIB,
        "RSS grew {} MiB for 16 strangers' 3 MiB commands",
        grew / MIB
    );
    // A stranger that says nothing is closed once the auth timeout has passed.
    let started = Instant::now();
    let mut silent = node.try_connect().expect("connect");
    assert!(silent.closed_by_server(), "closed, not left open");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(2) && waited < WAIT,
        "closed after {waited:?}"
    );
    // An authenticated client sends full-size commands and is not held to the auth timeout.
    let mut c = node.connect();
    let value = vec![b'v'; MIB];
    assert_eq!(c.call(&[b"SET", b"big", &value]), "+OK");
    // Past the auth timeout (the time passing is what this checks, not a wait for an event).
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(c.call(&[b"STRLEN", b"big"]), format!(":{MIB}"));
    // A client that sends a full-size command right behind its AUTH, in one write, has both
    // answered: its limits rise as soon as it has authenticated.
    let mut c = node.try_connect().expect("connect");
    let mut pipeline = encode(&[b"AUTH", PASSWORD.as_bytes()]);
    pipeline.extend(encode(&[b"SET", b"big", &value]));
    c.stream.write_all(&pipeline).expect("send");
    assert_eq!(c.reply(), "+OK", "AUTH");
    assert_eq!(c.reply(), "+OK", "the full-size SET behind it");
}

#[test]
fn a_single_value_past_the_output_limit_closes_the_connection_after_the_replies_before_it() {
    let limit = 4096;
    let node = Node::start(&["--client-output-buffer-limit", &limit.to_string()]);
    let mut c = node.connect();
    assert_eq!(c.call(&[b"SET", b"big", &vec![b'v'; 2 * limit]]), "+OK");
    assert_eq!(c.call(&[b"SET", b"small", b"s"]), "+OK");
    let mut pipeline = encode(&[b"PING"]);
    pipeline.extend(encode(&[b"GET", b"big"]));
    pipeline.extend(encode(&[b"PING"]));
    c.stream.write_all(&pipeline).expect("send");
    assert_eq!(c.reply(), "+PONG", "the reply before the large one is sent");
    assert_eq!(c.reply(), "", "then the connection is closed");
    assert!(c.closed_by_server());
    // A value within the limit is answered, and the node serves on.
    let mut c = node.connect();
    assert_eq!(c.call(&[b"GET", b"small"]), "s");
}

#[test]
fn a_reply_past_the_output_limit_is_not_built() {
    let limit = 16 * MIB;
    let node = Node::start(&["--client-output-buffer-limit", &limit.to_string()]);
    let mut c = node.connect();
    let value = vec![b'v'; MIB];
    assert_eq!(c.call(&[b"SET", b"v", &value]), "+OK");
    assert_eq!(c.call(&[b"HSET", b"h", b"f", &value]), ":1");
    let before = node.rss();
    // Small commands whose replies repeat one 1 MiB value 200 times: 200 MiB each.
    let mut mget: Vec<&[u8]> = vec![b"MGET"];
    mget.extend(std::iter::repeat_n(&b"v"[..], 200));
    for cmd in [mget, vec![&b"HRANDFIELD"[..], b"h", b"-200", b"WITHVALUES"]] {
        let mut c = node.connect();
        c.send(&cmd).expect("send");
        assert_eq!(c.reply(), "", "no reply, the connection is closed");
        assert!(c.closed_by_server());
    }
    node.assert_grew_less_than(before, 3 * limit, "replies past the output limit");
    // A reply within the limit is answered, and the node serves on.
    let mut c = node.connect();
    let mut mget: Vec<&[u8]> = vec![b"MGET"];
    mget.extend(std::iter::repeat_n(&b"v"[..], 8));
    c.send(&mget).expect("send");
    assert_eq!(c.reply().len(), 8 * MIB + 7, "eight values, newline-joined");
    assert_eq!(c.call(&[b"SET", b"after", b"1"]), "+OK");
}

#[test]
fn a_transaction_that_reads_one_value_many_times_builds_no_giant_reply() {
    let node = Node::start(&[]);
    let mut c = node.connect();
    assert_eq!(c.call(&[b"SET", b"big", &vec![b'v'; MIB]]), "+OK");
    let before = node.peak_rss();
    // A command of a few kilobytes whose reply repeats a 1 MiB value 1,000 times. Inside MULTI
    // it is answered as the transaction applies, on every replica, as the entry's output.
    let mut mget: Vec<&[u8]> = vec![b"MGET"];
    mget.extend(std::iter::repeat_n(&b"big"[..], 1000));
    assert_eq!(c.call(&[b"MULTI"]), "+OK");
    assert_eq!(c.call(&mget), "+QUEUED");
    assert_eq!(c.call(&[b"SET", b"after", b"1"]), "+QUEUED");
    assert_eq!(c.call(&[b"CLIENT", b"SETNAME", b"reader"]), "+QUEUED");
    let reply = c.call(&[b"EXEC"]);
    let grew = node.peak_rss().saturating_sub(before);
    assert!(
        grew < 160 * MIB,
        "peak RSS grew {} MiB for a transaction's reply",
        grew / MIB
    );
    assert!(
        reply.starts_with('-'),
        "answered with an error, not 1 GiB: {reply}"
    );
    assert_eq!(c.call(&[b"GET", b"after"]), "1", "the transaction applied");
    assert_eq!(
        c.call(&[b"CLIENT", b"GETNAME"]),
        "reader",
        "with its commands about the connection"
    );
    // A transaction whose reply fits is answered whole.
    assert_eq!(c.call(&[b"MULTI"]), "+OK");
    assert_eq!(c.call(&[b"GET", b"big"]), "+QUEUED");
    assert_eq!(c.call(&[b"EXEC"]).len(), MIB);
}

#[test]
fn replies_queued_in_a_transaction_count_at_their_size() {
    // `COMMAND` is a few bytes and its reply, built when it is queued, tens of kilobytes.
    // The queue's limit (4 MiB here) must hold against what is kept, not what was sent.
    const QUEUED: usize = 5_000;
    let node = Node::start(&[]);
    let before = node.peak_rss();
    let mut c = node.connect();
    c.stream.set_write_timeout(Some(WAIT)).expect("timeout");
    let mut all = encode(&[b"MULTI"]);
    for _ in 0..QUEUED {
        all.extend(encode(&[b"COMMAND"]));
    }
    all.extend(encode(&[b"EXEC"]));
    c.stream.write_all(&all).expect("send");
    assert_eq!(c.reply(), "+OK");
    let queued = (0..QUEUED).filter(|_| c.reply() == "+QUEUED").count();
    assert!((1..QUEUED).contains(&queued), "{queued} of {QUEUED} queued");
    assert!(c.reply().starts_with("-EXECABORT"));
    let grew = node.peak_rss().saturating_sub(before);
    assert!(
        grew < 32 * MIB,
        "peak RSS grew {} MiB with {queued} replies queued",
        grew / MIB
    );
    assert_eq!(c.call(&[b"PING"]), "+PONG", "the connection goes on");
}

/// INFO and CONFIG GET queued after MULTI are answered at EXEC, each from a command of a few
/// bytes: they count against the transaction's bound (the node's 4 MiB command limit here) at
/// what their replies can take, so EXEC's reply stays within it however many are queued.
#[test]
fn queued_info_and_config_get_count_at_what_their_replies_take() {
    let node = Node::start(&[]);
    let mut c = node.connect();
    for cmd in [&[&b"INFO"[..]][..], &[b"CONFIG", b"GET", b"*"]] {
        // As many as one transaction takes: the next is refused, and the transaction with it.
        assert_eq!(c.call(&[b"MULTI"]), "+OK");
        let mut queued = 0;
        while c.call(cmd) == "+QUEUED" {
            queued += 1;
            assert!(queued < 200_000, "{cmd:?} queued without bound");
        }
        assert!(c.call(&[b"EXEC"]).starts_with("-EXECABORT"));
        // That many, less one, are answered.
        assert_eq!(c.call(&[b"MULTI"]), "+OK");
        for _ in 1..queued {
            assert_eq!(c.call(cmd), "+QUEUED");
        }
        let answered = c.call(&[b"EXEC"]);
        assert!(
            answered.len() > queued * 100 && answered.len() <= 4 * MIB,
            "{queued} of {cmd:?} answered with {} bytes",
            answered.len()
        );
    }
}

/// RESET, as in Redis, ends a transaction (inside MULTI it runs at once) and the connection's
/// authentication, and needs none itself. The connection then has `--auth-timeout` from the
/// RESET to authenticate again, not from when it connected.
#[test]
fn reset_ends_the_transaction_and_the_authentication() {
    let node = Node::start_with_password(&["--auth-timeout", "1"]);
    let mut c = node.connect();
    // Once the node closes a connection opened after `c` that never authenticates, `c` too is
    // older than the auth timeout.
    let mut stranger = node.try_connect().expect("connect");
    assert!(
        stranger.closed_by_server(),
        "a stranger outlived the auth timeout"
    );
    assert_eq!(c.call(&[b"AUTH", PASSWORD.as_bytes()]), "+OK");
    assert_eq!(c.call(&[b"SET", b"a", b"1"]), "+OK");
    assert_eq!(c.call(&[b"MULTI"]), "+OK");
    assert_eq!(c.call(&[b"SET", b"a", b"2"]), "+QUEUED");
    assert_eq!(c.call(&[b"RESET"]), "+RESET");
    assert!(c.call(&[b"GET", b"a"]).starts_with("-NOAUTH"));
    assert_eq!(
        c.call(&[b"RESET"]),
        "+RESET",
        "RESET needs no authentication"
    );
    assert_eq!(c.call(&[b"AUTH", PASSWORD.as_bytes()]), "+OK");
    assert!(c.call(&[b"EXEC"]).starts_with("-ERR EXEC without MULTI"));
    assert_eq!(
        c.call(&[b"GET", b"a"]),
        "1",
        "the transaction RESET ended applied"
    );
    // A connection left unauthenticated by a RESET is closed in time.
    assert_eq!(c.call(&[b"RESET"]), "+RESET");
    let reset_at = Instant::now();
    assert!(c.closed_by_server(), "left unauthenticated after RESET");
    let closed_after = reset_at.elapsed();
    assert!(
        closed_after >= Duration::from_millis(900) && closed_after < Duration::from_secs(5),
        "closed {closed_after:?} after the RESET"
    );
}

#[test]
fn a_command_refused_for_permissions_inside_multi_discards_the_transaction() {
    let users = tempfile::NamedTempFile::new().expect("users file");
    std::fs::write(users.path(), "writer write writer-password\n").expect("users");
    let path = users.path().to_string_lossy().into_owned();
    let node = Node::start_with_password(&["--users-file", &path]);
    let mut c = node.connect();
    assert_eq!(c.call(&[b"AUTH", b"writer", b"writer-password"]), "+OK");
    assert_eq!(c.call(&[b"MULTI"]), "+OK");
    assert_eq!(c.call(&[b"SET", b"a", b"1"]), "+QUEUED");
    assert!(c.call(&[b"FLUSHDB"]).starts_with("-NOPERM"));
    assert!(c.call(&[b"EXEC"]).starts_with("-EXECABORT"));
    assert_eq!(c.call(&[b"GET", b"a"]), "(nil)", "nothing of it applied");
    // Without the refused command the same transaction applies.
    assert_eq!(c.call(&[b"MULTI"]), "+OK");
    assert_eq!(c.call(&[b"SET", b"a", b"1"]), "+QUEUED");
    assert_eq!(c.call(&[b"EXEC"]), "+OK");
    assert_eq!(c.call(&[b"GET", b"a"]), "1");
}

/// Users removed from the users file, or whose password changed, lose the connections they
/// already have at the next reload (`SIGHUP`), without their commands running; a changed role
/// applies to connections as they are.
#[test]
fn a_reload_closes_the_connections_of_removed_users_and_changes_roles_in_place() {
    let users = tempfile::NamedTempFile::new().expect("users file");
    std::fs::write(
        users.path(),
        "alice write apw\nbob write bpw\ncarol read cpw\ndave admin dpw\n",
    )
    .expect("users");
    let path = users.path().to_string_lossy().into_owned();
    let node = Node::start_with_password(&["--users-file", &path]);
    let login = |user: &str, password: &str| {
        let mut c = node.connect();
        let reply = c.call(&[b"AUTH", user.as_bytes(), password.as_bytes()]);
        (c, reply)
    };
    let (mut alice, _) = login("alice", "apw");
    let (mut bob, _) = login("bob", "bpw");
    let (mut carol, _) = login("carol", "cpw");
    assert_eq!(alice.call(&[b"SET", b"k", b"1"]), "+OK");
    assert!(carol.call(&[b"SET", b"k", b"2"]).starts_with("-NOPERM"));
    // dave queues a transaction that needs the admin role.
    let (mut dave, _) = login("dave", "dpw");
    assert_eq!(dave.call(&[b"MULTI"]), "+OK");
    assert_eq!(dave.call(&[b"FLUSHDB"]), "+QUEUED");

    std::fs::write(
        users.path(),
        "bob write bpw-rotated\ncarol write cpw\ndave read dpw\n",
    )
    .expect("users");
    let hup = Command::new("kill")
        .args(["-HUP", &node.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(hup.success());
    node.wait_until("the new users file is in force", || {
        login("bob", "bpw-rotated").1 == "+OK"
    });

    assert!(alice.call(&[b"SET", b"k", b"3"]).starts_with("-NOAUTH"));
    assert!(
        alice.closed_by_server(),
        "a removed user's connection stays open"
    );
    assert!(bob.call(&[b"SET", b"k", b"4"]).starts_with("-NOAUTH"));
    assert!(
        bob.closed_by_server(),
        "a connection with the old password stays open"
    );
    assert_eq!(
        node.connect().call(&[b"GET", b"k"]),
        "1",
        "a refused write applied"
    );
    // dave may now only read: the transaction queued before is refused whole.
    assert!(dave.call(&[b"EXEC"]).starts_with("-EXECABORT"));
    assert_eq!(node.connect().call(&[b"GET", b"k"]), "1", "the flush ran");
    assert_eq!(
        carol.call(&[b"SET", b"k", b"5"]),
        "+OK",
        "the new role does not apply"
    );
    assert_eq!(
        login("alice", "apw").1,
        "-WRONGPASS invalid username-password pair or user is disabled."
    );
}

#[test]
fn a_transaction_with_its_watched_keys_is_at_most_one_command() {
    // The query limit is 4 MiB here, bulks 1 MiB. EXEC replicates the queued commands and the
    // watched keys as one command, so the two together must fit in the limit: three 1 MiB
    // keys watched leave no room for a 1 MiB value.
    let node = Node::start(&[]);
    let mut c = node.connect();
    let key = |n: u8| vec![n; MIB];
    let value = vec![b'v'; MIB];
    assert_eq!(c.call(&[b"WATCH", &key(1), &key(2), &key(3)]), "+OK");
    assert_eq!(c.call(&[b"MULTI"]), "+OK");
    assert!(c.call(&[b"SET", b"small", &value]).starts_with("-ERR"));
    assert!(c.call(&[b"EXEC"]).starts_with("-EXECABORT"));
    assert_eq!(
        c.call(&[b"STRLEN", b"small"]),
        ":0",
        "nothing of it applied"
    );
    // One watched key leaves room: the same transaction applies.
    assert_eq!(c.call(&[b"WATCH", &key(1)]), "+OK");
    assert_eq!(c.call(&[b"MULTI"]), "+OK");
    assert_eq!(c.call(&[b"SET", b"small", &value]), "+QUEUED");
    assert_eq!(c.call(&[b"EXEC"]), "+OK");
    assert_eq!(c.call(&[b"STRLEN", b"small"]), format!(":{MIB}"));
}

#[test]
fn keys_past_the_output_limit_closes_the_connection_and_keys_within_it_answer() {
    let limit = 64 << 10;
    let node = Node::start(&["--client-output-buffer-limit", &limit.to_string()]);
    let mut loader = node.connect();
    for batch in 0..10 {
        let mut args: Vec<Vec<u8>> = vec![b"MSET".to_vec()];
        for i in 0..1_000 {
            args.push(format!("k{}", batch * 1_000 + i).into_bytes());
            args.push(b"v".to_vec());
        }
        let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        assert_eq!(loader.call(&refs), "+OK");
    }
    // Ten thousand keys do not fit in 64 KiB of replies: no reply, the connection is closed.
    let mut c = node.connect();
    c.send(&[b"KEYS", b"k*"]).expect("send");
    assert_eq!(c.reply(), "", "no reply");
    assert!(c.closed_by_server());
    // The thousand-odd that start with k1 do, and the node serves on.
    let mut c = node.connect();
    assert_eq!(c.call(&[b"KEYS", b"k1*"]).lines().count(), 1_111);
    assert_eq!(c.call(&[b"SET", b"after", b"1"]), "+OK");
}

/// Calls that start large messages on the raft port and never finish them hold at most the
/// node's receive budget (`GrpcOptions::max_receiving_bytes`, 256 MiB by default): however
/// many such calls one connection opens, the node takes what fits and refuses the rest at
/// their first bytes, its memory grows by the budget at most, and it serves on. A closed
/// connection gives its calls' share back.
#[test]
fn unfinished_large_messages_on_the_raft_port_hold_at_most_the_receive_budget() {
    const BUDGET: usize = 256 * MIB;
    const CALLS: usize = 24;
    const DECLARED: u32 = 40 << 20;
    const SENT: usize = 39 * MIB;
    let fits = BUDGET / DECLARED as usize;
    let node = Node::start(&[]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let before = node.rss();
    let (held, first) = rt.block_on(unfinished_calls(node.raft, CALLS, DECLARED, SENT));
    let grew = node.rss().saturating_sub(before);
    assert_eq!(
        held, fits,
        "as many calls as the budget fits hold their messages; the rest are refused"
    );
    assert!(
        grew < BUDGET + 64 * MIB,
        "{CALLS} unfinished {} MiB messages grew the node by {} MiB",
        DECLARED >> 20,
        grew / MIB
    );
    assert_eq!(node.connect().call(&[b"SET", b"after", b"1"]), "+OK");
    drop(first);
    node.wait_until("the closed connection's share is given back", || {
        let (again, _conn) = rt.block_on(unfinished_calls(node.raft, fits, DECLARED, SENT));
        again == fits
    });
}

/// Calls left open by [`unfinished_calls`], and the task driving their connection (aborted
/// when dropped, which closes the connection).
struct OpenCalls {
    _calls: Vec<(h2::SendStream<bytes::Bytes>, h2::client::ResponseFuture)>,
    connection: tokio::task::JoinHandle<()>,
}

impl Drop for OpenCalls {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

/// Opens one HTTP/2 connection to the raft port and starts `calls` cluster-service `Write`
/// calls on it, each declaring a `declared`-byte message and sending `sent` bytes of it.
/// Returns how many calls had all `sent` bytes taken by the node (the others were answered
/// before that: refused), with those calls left open.
async fn unfinished_calls(
    port: u16,
    calls: usize,
    declared: u32,
    sent: usize,
) -> (usize, OpenCalls) {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to the raft port");
    let (client, connection) = h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
    let connection = tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut start = vec![0u8];
    start.extend(declared.to_be_bytes());
    let start = bytes::Bytes::from(start);
    let payload = bytes::Bytes::from(vec![7u8; sent]);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..calls {
        let client = client.clone();
        let (start, payload) = (start.clone(), payload.clone());
        tasks.spawn(async move {
            let mut client = client.ready().await.ok()?;
            let request =
                http::Request::post(format!("http://127.0.0.1:{port}/raftkit.v1.Cluster/Write"))
                    .header("content-type", "application/grpc")
                    .header("te", "trailers")
                    .body(())
                    .expect("request");
            let (mut response, mut body) = client.send_request(request, false).ok()?;
            let sending =
                async { send_all(&mut body, start).await && send_all(&mut body, payload).await };
            tokio::select! {
                sent = sending => if !sent { return None },
                // Answered before its message was whole: refused.
                _ = &mut response => return None,
            }
            Some((body, response))
        });
    }
    let open: Vec<_> = tokio::time::timeout(WAIT, tasks.join_all())
        .await
        .expect("every call is taken or refused in time")
        .into_iter()
        .flatten()
        .collect();
    (
        open.len(),
        OpenCalls {
            _calls: open,
            connection,
        },
    )
}

/// Sends `data` on `stream` as HTTP/2 flow control allows; false if the stream closed first.
async fn send_all(stream: &mut h2::SendStream<bytes::Bytes>, mut data: bytes::Bytes) -> bool {
    while !data.is_empty() {
        stream.reserve_capacity(data.len());
        let Some(Ok(room)) = std::future::poll_fn(|cx| stream.poll_capacity(cx)).await else {
            return false;
        };
        let chunk = data.split_to(room.min(data.len()));
        if stream.send_data(chunk, false).is_err() {
            return false;
        }
    }
    true
}

/// The node's last log index, from INFO.
fn last_log_index(c: &mut Client) -> u64 {
    let info = c.call(&[b"INFO", b"replication"]);
    info.lines()
        .find_map(|l| l.strip_prefix("raft_last_log_index:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no last log index in {info}"))
}

/// A transaction of reads is answered as one read and writes nothing to the log, so a user
/// allowed only to read cannot make the cluster store anything: twenty transactions queuing 1
/// MiB each leave the log where it was. WATCH still aborts one whose key changed, and a
/// transaction with a write is replicated as before.
#[test]
fn a_transaction_of_reads_writes_no_log_entry() {
    let users = tempfile::NamedTempFile::new().expect("users file");
    std::fs::write(
        users.path(),
        "writer write writer-password\nreader read reader-password\n",
    )
    .expect("users");
    let path = users.path().to_string_lossy().into_owned();
    let node = Node::start_with_password(&["--users-file", &path]);
    let mut w = node.connect();
    assert_eq!(w.call(&[b"AUTH", b"writer", b"writer-password"]), "+OK");
    assert_eq!(w.call(&[b"SET", b"k", b"v"]), "+OK");
    let mut r = node.connect();
    assert_eq!(r.call(&[b"AUTH", b"reader", b"reader-password"]), "+OK");

    let before = last_log_index(&mut r);
    let big = vec![b'x'; MIB];
    for _ in 0..20 {
        assert_eq!(r.call(&[b"MULTI"]), "+OK");
        assert_eq!(r.call(&[b"GET", b"k"]), "+QUEUED");
        assert_eq!(r.call(&[b"EXISTS", &big]), "+QUEUED");
        assert_eq!(r.call(&[b"PING"]), "+QUEUED");
        assert_eq!(r.call(&[b"EXEC"]), "v\n:0\n+PONG");
    }
    assert_eq!(last_log_index(&mut r), before, "reads wrote to the log");

    // A watched key written meanwhile aborts the transaction.
    assert_eq!(r.call(&[b"WATCH", b"k"]), "+OK");
    assert_eq!(w.call(&[b"SET", b"k", b"w"]), "+OK");
    assert_eq!(r.call(&[b"MULTI"]), "+OK");
    assert_eq!(r.call(&[b"GET", b"k"]), "+QUEUED");
    assert_eq!(r.call(&[b"EXEC"]), "", "a null array");
    assert_eq!(r.call(&[b"MULTI"]), "+OK");
    assert_eq!(r.call(&[b"GET", b"k"]), "+QUEUED");
    assert_eq!(r.call(&[b"EXEC"]), "w");

    // A transaction that writes goes through the log.
    let before = last_log_index(&mut w);
    assert_eq!(w.call(&[b"MULTI"]), "+OK");
    assert_eq!(w.call(&[b"SET", b"a", b"1"]), "+QUEUED");
    assert_eq!(w.call(&[b"GET", b"a"]), "+QUEUED");
    assert_eq!(w.call(&[b"EXEC"]), "+OK\n1");
    assert!(last_log_index(&mut w) > before);
}

/// The metrics port holds at most 32 connections, 4 from one address: 200 idle ones from one
/// address cost the process about 4 file descriptors, the rest are closed at once, and once they
/// go a probe is answered. Unbounded, anyone who can reach the port could take every
/// descriptor, and the log's next segment with them.
#[test]
fn the_metrics_port_holds_a_bounded_number_of_connections() {
    const CAP: usize = 4;
    let addr = format!("127.0.0.1:{}", free_port());
    let node = Node::start(&["--metrics-addr", &addr]);
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", node.child.id()))
            .expect("the process's descriptors")
            .count()
    };
    let before = fds();
    let held: Vec<TcpStream> = (0..200)
        .map(|_| {
            let s = TcpStream::connect(&addr).expect("connect");
            s.set_nonblocking(true).expect("nonblocking");
            s
        })
        .collect();
    let closed = |s: &TcpStream| {
        let mut b = [0u8; 1];
        match (&*s).read(&mut b) {
            Ok(0) => true,
            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            Ok(_) => false,
        }
    };
    // Well within the 10 s an idle connection is given to send its request: the ones past the
    // bound are closed at once, not timed out.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let open = held.iter().filter(|s| !closed(s)).count();
        if open <= CAP {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{open} of 200 idle connections still open"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let grew = fds().saturating_sub(before);
    assert!(
        grew <= CAP + 32,
        "the process holds {grew} more descriptors"
    );
    assert_eq!(node.connect().call(&[b"SET", b"k", b"v"]), "+OK");

    drop(held);
    let deadline = Instant::now() + WAIT;
    loop {
        let mut probe = TcpStream::connect(&addr).expect("connect");
        probe.set_read_timeout(Some(WAIT)).expect("timeout");
        let _ = probe.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let mut reply = String::new();
        let _ = probe.read_to_string(&mut reply);
        if reply.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "no probe answered: {reply:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
