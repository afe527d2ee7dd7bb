//! Real `kv node` processes for the process-level tests: ports, spawning, logs, and a node's
//! view of the cluster over the gRPC cluster service.

#![allow(dead_code)] // Each test file uses its own part of this.

use std::net::TcpListener;
use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use raft_grpc::pb;
use raft_grpc::pb::cluster_client::ClusterClient;

/// How long a process test waits for the cluster to reach a state before failing.
pub const WAIT: Duration = Duration::from_secs(30);

/// A port that is free now, chosen below the kernel's ephemeral range so that the outgoing
/// connections of other tests cannot take it before the process we start binds it.
pub fn free_port() -> u16 {
    use std::sync::atomic::AtomicU16;
    use std::sync::atomic::Ordering;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let start = (std::process::id() % 1000) as u16 * 10;
    (0..12_000)
        .map(|_| 20_000 + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % 12_000)
        .find(|port| TcpListener::bind(("127.0.0.1", *port)).is_ok())
        .expect("a free port in 20000-31999")
}

/// One node's ports.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub raft: u16,
    pub resp: u16,
}

impl Ports {
    pub fn new() -> Ports {
        Ports {
            raft: free_port(),
            resp: free_port(),
        }
    }
    pub fn raft_addr(&self) -> String {
        format!("127.0.0.1:{}", self.raft)
    }
}

/// The `--initial-members` list of nodes `1..` with these ports.
pub fn members(ports: &[Ports]) -> String {
    ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}={}", i + 1, p.raft_addr()))
        .collect::<Vec<_>>()
        .join(",")
}

/// One `kv node` process, killed (`kill -9`) when dropped. Dropping it also fails the test if
/// the node's log shows a panic (see [`no_panics`]).
pub struct Proc(pub Child, PathBuf);

impl Proc {
    /// Sends `signal` (e.g. `STOP`, `CONT`) to the process.
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([format!("-{signal}"), self.0.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{signal} {}", self.0.id());
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.0.try_wait().is_ok_and(|s| s.is_none())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        no_panics(&self.1);
    }
}

/// Fails the test if the node log at `log` shows a panic. A panic in one of a node's tasks does
/// not stop the process (the runtime catches it), so nothing else the test checks may notice it.
/// Does nothing while the test is already failing.
pub fn no_panics(log: &Path) {
    if std::thread::panicking() {
        return;
    }
    let text = std::fs::read_to_string(log).unwrap_or_default();
    if let Some(at) = text.find("panicked at") {
        let end = text[at..].find('\n').map_or(text.len(), |n| at + n);
        panic!("a kv node panicked ({}): {}", log.display(), &text[at..end]);
    }
}

/// Starts node `id` with its data in `dir/n<id>` and its log appended to `dir/n<id>.log`.
pub fn spawn(dir: &Path, id: u64, ports: &Ports, extra: &[String]) -> Proc {
    spawn_as(dir, id, ports, extra, None)
}

/// Like [`spawn`], as user `uid` (root only) when given: its own user lets a test filter the
/// node's traffic.
pub fn spawn_as(dir: &Path, id: u64, ports: &Ports, extra: &[String], uid: Option<u32>) -> Proc {
    let data = dir.join(format!("n{id}"));
    std::fs::create_dir_all(&data).expect("data dir");
    let log = dir.join(format!("n{id}.log"));
    let mut cmd = match uid {
        None => Command::new(env!("CARGO_BIN_EXE_kv")),
        Some(uid) => {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
            let owned = Command::new("chown")
                .args(["-R", &format!("{uid}:{uid}")])
                .arg(&data)
                .status()
                .is_ok_and(|s| s.success());
            assert!(owned, "chown {} to {uid}", data.display());
            let mut c = Command::new("setpriv");
            c.args([
                format!("--reuid={uid}"),
                format!("--regid={uid}"),
                "--clear-groups".into(),
                env!("CARGO_BIN_EXE_kv").into(),
            ]);
            c
        }
    };
    cmd.args(["node", "--id", &id.to_string()])
        .arg("--data-dir")
        .arg(&data)
        .args(["--raft-addr", &ports.raft_addr()])
        .args(["--resp-addr", &format!("127.0.0.1:{}", ports.resp)])
        .args(extra);
    run(cmd, &log)
}

/// Runs a prepared `kv` command with the tests' log filter, its log appended to the file `log`.
pub fn run(mut cmd: Command, log: &Path) -> Proc {
    let file = std::fs::File::options()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    let child = cmd
        .env("RUST_LOG", "warn,kv=info")
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .expect("spawn kv");
    Proc(child, log.to_path_buf())
}

/// The JSON a successful `kv` command printed; fails the test with its error output otherwise.
pub fn json_output(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "kv failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON output")
}

/// Every node's log, for a failure message.
pub fn logs(dir: &Path, ids: impl IntoIterator<Item = u64>) -> String {
    ids.into_iter()
        .map(|id| {
            let log = std::fs::read_to_string(dir.join(format!("n{id}.log"))).unwrap_or_default();
            format!("--- node {id}\n{log}")
        })
        .collect()
}

/// Node `addr`'s view of the cluster, if it answers within a second.
pub async fn status(addr: &str) -> Option<pb::StatusReply> {
    let ask = async {
        let mut c = ClusterClient::connect(format!("http://{addr}"))
            .await
            .ok()?;
        c.status(pb::StatusRequest {})
            .await
            .ok()
            .map(|r| r.into_inner())
    };
    tokio::time::timeout(Duration::from_secs(1), ask)
        .await
        .ok()
        .flatten()
}

/// A `/proc/<pid>/status` field, in bytes.
pub fn status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Polls `check` until it returns `Some`; panics with `what` and the nodes' logs after [`WAIT`].
pub async fn poll<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    dir: &Path,
    ids: &[u64],
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {WAIT:?}\n{}",
            logs(dir, ids.iter().copied())
        );
        // Another process's progress: there is nothing in this process to wait on.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs one command; panics (naming it) on an error reply.
pub async fn q<T: redis::FromRedisValue>(
    con: &mut redis::aio::MultiplexedConnection,
    args: &[&str],
) -> T {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async(con)
        .await
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// Runs one command that must fail; its error, as text.
pub async fn q_err(con: &mut redis::aio::MultiplexedConnection, args: &[&str]) -> String {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    match cmd.query_async::<redis::Value>(con).await {
        Ok(v) => panic!("{args:?} should fail, got {v:?}"),
        Err(e) => e.to_string(),
    }
}
