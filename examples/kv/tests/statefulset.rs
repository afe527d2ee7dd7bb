//! The Kubernetes StatefulSet's bootstrap, emulated with local processes: every "pod" runs the
//! command line of `deploy/kubernetes/statefulset.yaml` with the environment the StatefulSet
//! gives it (its host name), on its own loopback address in place of its pod IP and DNS name.
//! Three pods form a cluster, a pod restarts, and a fourth pod (a scale-up) joins.

mod common;

use std::io::BufRead;
use std::io::BufReader;
use std::io::Read;
use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::Proc;
use common::free_port;
use common::poll;

/// The container's arguments, from the manifest.
fn manifest_args() -> Vec<String> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/kubernetes/statefulset.yaml");
    let text = std::fs::read_to_string(&path).expect("deploy/kubernetes/statefulset.yaml");
    let mut lines = text.lines().skip_while(|l| l.trim() != "args:").skip(1);
    let mut args = Vec::new();
    for l in lines.by_ref() {
        match l.trim().strip_prefix("- ") {
            Some(a) => args.push(a.to_string()),
            None => break,
        }
    }
    assert!(args.len() > 5, "no container args in {}", path.display());
    args
}

/// Where the emulated pods live: their addresses, ports and files.
struct Pods {
    dir: PathBuf,
    raft: u16,
    resp: u16,
    metrics: u16,
}

impl Pods {
    fn ip(ordinal: u32) -> String {
        format!("127.0.0.{}", 10 + ordinal)
    }

    /// The manifest's arguments for pod `ordinal`, its DNS names and mounts made local.
    fn args(&self, ordinal: u32) -> Vec<String> {
        let me = Self::ip(ordinal);
        let mut out = Vec::new();
        for a in manifest_args() {
            let mut a = a
                .replace("$(POD_NAME).$(PEERS):16379", &format!("{me}:{}", self.raft))
                .replace("0.0.0.0:16379", &format!("{me}:{}", self.raft))
                .replace("0.0.0.0:6379", &format!("{me}:{}", self.resp))
                .replace("0.0.0.0:9100", &format!("{me}:{}", self.metrics))
                .replace("/etc/kv/auth", &self.dir.join("auth").display().to_string())
                .replace(
                    "/data",
                    &self.dir.join(format!("kv-{ordinal}")).display().to_string(),
                );
            for peer in 0..3 {
                a = a.replace(
                    &format!("kv-{peer}.$(PEERS):16379"),
                    &format!("{}:{}", Self::ip(peer), self.raft),
                );
            }
            assert!(!a.contains("$("), "an unexpanded variable in {a}");
            out.push(a);
        }
        out
    }

    fn start(&self, ordinal: u32) -> Proc {
        let log = self.dir.join(format!("n{}.log", ordinal + 1));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kv"));
        cmd.args(self.args(ordinal))
            .env("HOSTNAME", format!("kv-{ordinal}"));
        common::run(cmd, &log)
    }

    /// Whether pod `ordinal`'s readiness probe passes.
    fn ready(&self, ordinal: u32) -> bool {
        let probe = || -> Option<bool> {
            let mut s = TcpStream::connect((Self::ip(ordinal).as_str(), self.metrics)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
            s.write_all(b"GET /readyz HTTP/1.0\r\n\r\n").ok()?;
            let mut out = String::new();
            s.read_to_string(&mut out).ok()?;
            Some(out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200"))
        };
        probe().unwrap_or(false)
    }

    /// Runs `AUTH <password>` then `args` on pod `ordinal`; the first line of the reply.
    fn command(&self, ordinal: u32, args: &[&str]) -> Option<String> {
        let mut s = TcpStream::connect((Self::ip(ordinal).as_str(), self.resp)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        let mut req = String::new();
        for cmd in [&["AUTH", "pod-password"][..], args] {
            req += &format!("*{}\r\n", cmd.len());
            for a in cmd {
                req += &format!("${}\r\n{a}\r\n", a.len());
            }
        }
        s.write_all(req.as_bytes()).ok()?;
        let mut r = BufReader::new(s);
        let mut auth = String::new();
        r.read_line(&mut auth).ok()?;
        let mut line = String::new();
        r.read_line(&mut line).ok()?;
        if line.starts_with('$') && line.trim() != "$-1" {
            line.clear();
            r.read_line(&mut line).ok()?;
        }
        Some(line.trim_end().to_string())
    }

    /// `(id, role)` of every member, as `kv member list` prints them.
    fn members(&self) -> Option<Vec<(u64, String)>> {
        let endpoints: Vec<String> = (0..3)
            .map(|o| format!("{}:{}", Self::ip(o), self.raft))
            .collect();
        let out = Command::new(env!("CARGO_BIN_EXE_kv"))
            .args(["member", "list", "--json", "--timeout", "5s", "--endpoints"])
            .arg(endpoints.join(","))
            .arg("--token-file")
            .arg(self.dir.join("auth/cluster-secret"))
            .output()
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        Some(
            v.as_array()?
                .iter()
                .map(|r| {
                    (
                        r["id"].as_u64().unwrap_or(0),
                        r["role"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect(),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_form_the_cluster_restart_and_scale_up_with_one_command_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let auth = dir.path().join("auth");
    std::fs::create_dir_all(&auth).expect("auth dir");
    std::fs::write(
        auth.join("cluster-secret"),
        "a-secret-shared-by-the-pods-0123456789",
    )
    .expect("secret");
    std::fs::write(auth.join("requirepass"), "pod-password").expect("password");
    let pods = Pods {
        dir: dir.path().to_path_buf(),
        raft: free_port(),
        resp: free_port(),
        metrics: free_port(),
    };
    let ids = [1, 2, 3, 4];
    let mut running: Vec<Proc> = (0..3).map(|o| pods.start(o)).collect();

    // The three pods form one cluster and all become ready.
    poll("three pods ready", dir.path(), &ids, || async {
        (0..3).all(|o| pods.ready(o)).then_some(())
    })
    .await;
    assert_eq!(
        pods.command(1, &["SET", "k", "before"]).as_deref(),
        Some("+OK")
    );

    // A pod restarts (killed, as on a node failure) with the same command line: it comes back
    // as the same member with its data.
    running.remove(1);
    running.insert(1, pods.start(1));
    poll("the restarted pod ready", dir.path(), &ids, || async {
        pods.ready(1).then_some(())
    })
    .await;
    let got = poll("the restarted pod serves", dir.path(), &ids, || async {
        pods.command(1, &["GET", "k"])
    })
    .await;
    assert_eq!(got, "before");

    // Scale-up: a fourth pod with the same command line joins as a voter.
    running.push(pods.start(3));
    let members = poll("the fourth pod a voter", dir.path(), &ids, || async {
        pods.members()
            .filter(|m| m.iter().filter(|(_, r)| r == "voter").count() == 4)
    })
    .await;
    assert_eq!(
        members.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    poll("the fourth pod ready", dir.path(), &ids, || async {
        pods.ready(3).then_some(())
    })
    .await;
    assert_eq!(pods.command(3, &["GET", "k"]).as_deref(), Some("before"));
}
