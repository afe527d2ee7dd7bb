//! What operators rely on: the metrics the dashboard and the alerts query exist, JSON logs are
//! one object per line, and a malformed runtime thread count or a node id of 0 is refused with an
//! error before anything is created.

mod common;

use std::collections::BTreeSet;
use std::io::BufRead;
use std::io::BufReader;
use std::io::Read;
use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use common::Ports;
use common::free_port;
use common::poll;
use common::spawn;

/// Sends one command and returns the first line of the reply.
fn command(port: u16, args: &[&str]) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req += &format!("${}\r\n{a}\r\n", a.len());
    }
    s.write_all(req.as_bytes()).ok()?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).ok()?;
    Some(line.trim_end().to_string())
}

/// The body of `GET path` on `port`.
fn get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_once("\r\n\r\n").map(|(_, body)| body.to_string())
}

/// Metric names in a PromQL text: identifiers with one of the kv's prefixes.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut word = String::new();
    for c in text.chars().chain([' ']) {
        if c.is_ascii_alphanumeric() || c == '_' {
            word.push(c);
            continue;
        }
        let known = ["raft_", "kv_", "wal_", "storage_", "memory_"]
            .iter()
            .any(|p| word.starts_with(p));
        if known {
            out.insert(std::mem::take(&mut word));
        }
        word.clear();
    }
    out
}

/// Names of the series in a Prometheus text exposition.
fn exported(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

fn queried() -> BTreeSet<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
    let dashboard = std::fs::read_to_string(root.join("grafana/raftkit-kv.json"))
        .expect("deploy/grafana/raftkit-kv.json");
    let alerts = std::fs::read_to_string(root.join("prometheus/alerts.yml"))
        .expect("deploy/prometheus/alerts.yml");
    let exprs: Vec<String> = dashboard
        .lines()
        .chain(alerts.lines())
        .filter(|l| l.contains("\"expr\"") || l.trim_start().starts_with("expr:"))
        .map(str::to_string)
        .collect();
    metric_names(&exprs.join("\n"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_alerts_query_is_exported() {
    let wanted = queried();
    assert!(wanted.len() >= 15, "the dashboard queries {wanted:?}");
    let dir = tempfile::tempdir().expect("temp dir");
    // A healthy one-node cluster, and one whose quota refuses every write (for the failure
    // counters).
    let (p1, p2) = (Ports::new(), Ports::new());
    let (m1, m2) = (free_port(), free_port());
    let node = |p: &Ports, m: u16, extra: &[&str]| {
        let mut args = vec![
            "--initial-members".to_string(),
            format!("1={}", p.raft_addr()),
            "--metrics-addr".into(),
            format!("127.0.0.1:{m}"),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let d1 = dir.path().join("healthy");
    let d2 = dir.path().join("full");
    let _a = spawn(&d1, 1, &p1, &node(&p1, m1, &[]));
    let _b = spawn(
        &d2,
        1,
        &p2,
        &node(
            &p2,
            m2,
            &["--quota-max-used", "1", "--quota-check-interval", "100ms"],
        ),
    );
    poll("a write on the healthy node", &d1, &[1], || async {
        (command(p1.resp, &["SET", "k", "v"]).as_deref() == Some("+OK")).then_some(())
    })
    .await;
    assert_eq!(command(p1.resp, &["GET", "k"]).as_deref(), Some("$1"));
    poll("a write refused by the quota", &d2, &[1], || async {
        command(p2.resp, &["SET", "k", "v"]).filter(|r| r.starts_with("-OOM"))
    })
    .await;

    // The gauges are sampled once a second: wait for a sample, then name what is missing.
    let deadline = std::time::Instant::now() + common::WAIT;
    loop {
        let mut have = exported(&get(m1, "/metrics").unwrap_or_default());
        have.extend(exported(&get(m2, "/metrics").unwrap_or_default()));
        let missing: Vec<&String> = wanted
            .iter()
            .filter(|w| !have.contains(*w) && !have.contains(&format!("{w}_bucket")))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "queried but not exported: {missing:?}"
        );
        // Another process's sampling: there is nothing in this process to wait on.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let p = Ports::new();
    let args = [
        "--initial-members".to_string(),
        format!("1={}", p.raft_addr()),
        "--log-format".into(),
        "json".into(),
    ];
    let _n = spawn(dir.path(), 1, &p, &args);
    let log = dir.path().join("n1.log");
    let lines = poll("the node's start logged", dir.path(), &[1], || async {
        let text = std::fs::read_to_string(&log).ok()?;
        text.contains("node running")
            .then(|| text.lines().map(str::to_string).collect::<Vec<_>>())
    })
    .await;
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
        assert!(v["fields"].is_object(), "{line}");
    }
}

/// `kv certs` in `dir` with `TOKIO_WORKER_THREADS` set to `env` and the extra arguments.
fn certs_with_workers(dir: &Path, env: &str, extra: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_kv"))
        .env("TOKIO_WORKER_THREADS", env)
        .args(extra)
        .args(["certs", "--node", "1=127.0.0.1", "--dir"])
        .arg(dir)
        .output()
        .expect("run kv")
}

#[test]
fn a_malformed_worker_thread_count_is_refused_cleanly_and_the_flag_overrides_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    for bad in ["", "0", "many"] {
        let refused = dir.path().join("refused");
        let out = certs_with_workers(&refused, bad, &[]);
        // A clean refusal exits 1; a panic would exit 101.
        assert_eq!(
            out.status.code(),
            Some(1),
            "TOKIO_WORKER_THREADS={bad:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!refused.exists(), "the command ran anyway");
    }
    let ran = dir.path().join("ran");
    let out = certs_with_workers(&ran, "many", &["--worker-threads", "2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(ran.join("ca.pem").is_file());
    let out = certs_with_workers(&dir.path().join("zero"), "2", &["--worker-threads", "0"]);
    assert_eq!(out.status.code(), Some(2), "clap refuses a zero count");
}

/// Runs `kv node --id <id>` with its data in `data`; its exit status and standard error, or
/// `None` if it was still running after 20 s (then it is killed).
fn node_with_id(id: &str, data: &Path) -> Option<(std::process::ExitStatus, String)> {
    let raft = format!("127.0.0.1:{}", free_port());
    node_with_args(data, &["--id", id, "--raft-addr", &raft])
}

/// Starts `kv node` with `args`, its data in `data` and RESP on a free port, its standard
/// output going to `stdout` and its standard error piped.
fn spawn_node(data: &Path, args: &[&str], stdout: std::process::Stdio) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_kv"))
        .arg("node")
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .args(["--resp-addr", &format!("127.0.0.1:{}", free_port())])
        .stdout(stdout)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run kv")
}

/// Runs `kv node` with `args` and its data in `data` until it says it is running (then it is
/// killed); what it wrote to standard error if it exited first or did not start within 20 s.
fn node_started(data: &Path, args: &[&str]) -> Result<(), String> {
    let mut child = spawn_node(data, args, std::process::Stdio::piped());
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    // Reading blocks until the node writes or exits; the line comes back over the channel.
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    if line.contains("RESP on") {
        return Ok(());
    }
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    Err(err)
}

/// Runs `kv node` with `args` and its data in `data`, listening for RESP on a free port; its
/// exit status and standard error, or `None` if it was still running after 20 s (then it is
/// killed).
fn node_with_args(data: &Path, args: &[&str]) -> Option<(std::process::ExitStatus, String)> {
    let mut child = spawn_node(data, args, std::process::Stdio::null());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for kv") {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        // Another process's exit: there is nothing in this process to wait on.
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    status.map(|s| (s, err))
}

#[test]
fn node_addresses_others_cannot_use_are_refused_before_anything_is_created() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let (p, q) = (free_port(), free_port());
    let me = format!("127.0.0.1:{p}");
    let any = format!("0.0.0.0:{p}");
    let elsewhere = format!("1=127.0.0.1:{q},2=127.0.0.1:{}", free_port());
    let listed_elsewhere = format!("1=127.0.0.1:{q},2={me}");
    let listed_here = format!("1={me}");
    let refused: [&[&str]; 5] = [
        // Advertising the any-address: each node would reach its own machine there.
        &["--id", "1", "--raft-addr", &any],
        &[
            "--id",
            "1",
            "--raft-addr",
            &me,
            "--initial-members",
            &format!("1={me},2={any}"),
        ],
        // This node listed at another address than the one it gives.
        &[
            "--id",
            "1",
            "--raft-addr",
            &me,
            "--initial-members",
            &elsewhere,
        ],
        // Not a node address at all.
        &["--id", "1", "--raft-addr", &format!("127.0.0.1:{p}/x")],
        &["--id", "3", "--raft-addr", &me, "--join", "127.0.0.1"],
    ];
    for args in refused {
        let (status, err) = node_with_args(&data, args).expect("kv node still running");
        assert!(!status.success(), "{args:?} accepted: {err}");
        assert!(!data.exists(), "{args:?}: the data directory was created");
    }
    // The same node, listed where it says it is, starts (and is stopped here).
    let listens = [
        &[
            "--id",
            "2",
            "--raft-addr",
            &me,
            "--initial-members",
            &listed_elsewhere,
        ][..],
        &[
            "--id",
            "1",
            "--raft-addr",
            &me,
            "--initial-members",
            &listed_here,
        ],
        // Listening on every address (open, so without credentials it needs --insecure).
        &[
            "--id",
            "1",
            "--raft-addr",
            &me,
            "--raft-listen-addr",
            &any,
            "--insecure",
        ],
    ];
    for args in listens {
        if let Err(err) = node_started(&data, args) {
            panic!("{args:?} refused: {err}");
        }
        assert!(data.join("wal").exists(), "{args:?}: no log was created");
        std::fs::remove_dir_all(&data).expect("remove the data directory");
    }
}

#[test]
fn node_id_0_is_refused_before_anything_is_created() {
    let dir = tempfile::tempdir().expect("temp dir");
    // A data directory that does not exist yet, and one that exists, empty.
    let missing = dir.path().join("missing");
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).expect("data dir");
    for data in [&missing, &empty] {
        let (status, err) = node_with_id("0", data).expect("kv node --id 0 still running");
        assert_eq!(status.code(), Some(2), "a usage error: {err}");
        assert!(err.contains("node ids start at 1, got 0"), "{err}");
    }
    assert!(!missing.exists(), "a data directory was created");
    let left: Vec<_> = std::fs::read_dir(&empty)
        .expect("data dir")
        .map(|e| e.map(|e| e.file_name()))
        .collect();
    assert!(left.is_empty(), "the data directory was written: {left:?}");
}
