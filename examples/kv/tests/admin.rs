//! `kv member`, `kv leader transfer` and `kv status` against real `kv node` processes.

mod common;

use std::path::Path;
use std::process::Command;
use std::process::Output;
use std::time::Duration;
use std::time::Instant;

use common::Ports;
use common::Proc;
use common::json_output as json;
use common::poll;
use common::spawn;
use serde_json::Value;

/// Runs `kv <args> --endpoints <endpoints>`.
fn kv(args: &[&str], endpoints: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kv"))
        .args(args)
        .args(["--endpoints", endpoints, "--timeout", "10s"])
        .output()
        .expect("run kv")
}

/// Runs `kv <args> --endpoints <endpoints>` with a `--timeout` of `timeout`.
fn kv_within(args: &[&str], endpoints: &str, timeout: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kv"))
        .args(args)
        .args(["--endpoints", endpoints, "--timeout", timeout])
        .output()
        .expect("run kv")
}

/// `(id, role)` of every member, by `kv member list --json`.
fn members(endpoints: &str, extra: &[&str]) -> Vec<(u64, String)> {
    let args = [&["member", "list", "--json"], extra].concat();
    let v = json(&kv(&args, endpoints));
    let rows = v.as_array().expect("an array");
    rows.iter()
        .map(|r| {
            (
                r["id"].as_u64().unwrap_or(0),
                r["role"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn three_nodes(dir: &Path, extra: &[String]) -> (Vec<Proc>, Vec<Ports>, String) {
    let ports: Vec<Ports> = (0..3).map(|_| Ports::new()).collect();
    let mut args = vec!["--initial-members".to_string(), common::members(&ports)];
    args.extend_from_slice(extra);
    let procs = (0..3)
        .map(|i| spawn(dir, i as u64 + 1, &ports[i], &args))
        .collect();
    let endpoints = ports
        .iter()
        .map(Ports::raft_addr)
        .collect::<Vec<_>>()
        .join(",");
    (procs, ports, endpoints)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_lists_adds_promotes_transfers_and_removes_members() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_procs, _ports, endpoints) = three_nodes(dir.path(), &[]);
    let ids = [1, 2, 3, 4];

    // Status: every node reachable, one leader, nothing left to apply.
    let rows = poll("a leader known to all", dir.path(), &ids, || async {
        let out = kv(&["status", "--json"], &endpoints);
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        let rows = v.as_array()?.clone();
        let leaders = rows.iter().filter(|r| r["role"] == "leader").count();
        let agreed = rows
            .iter()
            .all(|r| r["leader"] == rows[0]["leader"] && !r["leader"].is_null());
        (rows.len() == 3 && leaders == 1 && agreed).then_some(rows)
    })
    .await;
    assert!(rows.iter().all(|r| r["reachable"] == true));

    // A fourth node, started without members, added as a learner, then promoted.
    let p4 = Ports::new();
    let _n4 = spawn(dir.path(), 4, &p4, &[]);
    let at4 = p4.raft_addr();
    // `member add` refuses an address where no node answers yet.
    poll("node 4 answers", dir.path(), &[4], || async {
        common::status(&at4).await.map(|_| ())
    })
    .await;
    let out = kv(&["member", "add", "4", &at4, "--learner"], &endpoints);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(members(&endpoints, &[]).contains(&(4, "learner".into())));
    let out = kv(&["member", "promote", "4"], &endpoints);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(members(&endpoints, &[]).contains(&(4, "voter".into())));

    // Leadership moves to the new voter.
    let out = kv(&["leader", "transfer", "4"], &endpoints);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all = format!("{endpoints},{}", p4.raft_addr());
    let v = json(&kv(&["member", "list", "--json"], &all));
    let leader: Vec<u64> = v
        .as_array()
        .expect("an array")
        .iter()
        .filter(|r| r["leader"] == true)
        .filter_map(|r| r["id"].as_u64())
        .collect();
    assert_eq!(leader, vec![4]);

    // Node 3 leaves; removing a node that is not a member fails and changes nothing.
    let out = kv(&["member", "remove", "3"], &all);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = kv(&["member", "remove", "9"], &all);
    assert!(!out.status.success());
    let now = members(&all, &[]);
    assert_eq!(
        now,
        vec![
            (1, "voter".into()),
            (2, "voter".into()),
            (4, "voter".into())
        ]
    );
}

/// `kv member list` of a cluster of nodes 1 to 3, all voters.
fn three_voters() -> Vec<(u64, String)> {
    (1..=3).map(|id| (id, "voter".to_string())).collect()
}

/// Waits until `kv member list` shows a leader.
async fn leader_known(dir: &Path, endpoints: &str) {
    poll("a leader known to the cluster", dir, &[1, 2, 3], || async {
        let out = kv(&["member", "list", "--json"], endpoints);
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        v.as_array()?
            .iter()
            .any(|r| r["leader"] == true)
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_add_refuses_what_is_in_use_and_tells_of_a_learner_left_behind() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_procs, ports, endpoints) = three_nodes(dir.path(), &[]);
    let voters = three_voters();
    leader_known(dir.path(), &endpoints).await;
    let stderr = |o: &Output| String::from_utf8_lossy(&o.stderr).into_owned();

    // Node 2 at another address: refused, naming where it is; nothing changes.
    let elsewhere = format!("127.0.0.1:{}", common::free_port());
    let out = kv(&["member", "add", "2", &elsewhere], &endpoints);
    assert!(!out.status.success());
    let err = stderr(&out);
    let at = ports[1].raft_addr();
    assert!(
        err.contains(&format!("node 2 is already a voter at {at}")),
        "{err}"
    );
    assert!(err.contains("remove it first, or use a new id"), "{err}");

    // Node 2 at its own address: answered as it stands.
    let out = kv(&["member", "add", "2", &at], &endpoints);
    assert!(out.status.success(), "{}", stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(said, format!("node 2 ({at}) is already a voter\n"));

    // A new id at node 1's address: refused, naming node 1.
    let out = kv(&["member", "add", "7", &ports[0].raft_addr()], &endpoints);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("is already the address of node 1"), "{err}");
    assert_eq!(members(&endpoints, &[]), voters);

    // A node that answers, but that the leader cannot replicate to (it holds a cluster secret
    // the cluster does not use): the learner is added, and the command says so once, with how
    // to undo it, rather than retrying the add until it gives up.
    let secret = dir.path().join("secret-5");
    std::fs::write(&secret, "a-secret-this-cluster-does-not-use-0123456789").expect("secret");
    let p5 = Ports::new();
    let _n5 = spawn(
        dir.path(),
        5,
        &p5,
        &["--cluster-secret-file".into(), secret.display().to_string()],
    );
    let at5 = p5.raft_addr();
    let token = ["--token-file", secret.to_str().expect("utf-8 path")];
    poll("node 5 answers", dir.path(), &[5], || async {
        let out = kv(&[&["status", "--json"][..], &token].concat(), &at5);
        out.status.success().then_some(())
    })
    .await;
    let out = kv_within(
        &[&["member", "add", "5", &at5][..], &token].concat(),
        &endpoints,
        "40s",
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!("node 5 was added as a learner at {at5}")),
        "{err}"
    );
    assert!(err.contains("`kv member remove 5`"), "{err}");
    assert!(
        !err.contains("did not answer") && !err.contains("in transit"),
        "{err}"
    );
    let now = members(&endpoints, &[]);
    assert!(now.contains(&(5, "learner".into())), "{now:?}");

    // Removing it undoes the add.
    let out = kv(&["member", "remove", "5"], &endpoints);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(members(&endpoints, &[]), voters);
}

/// Runs `kv member add <id> <addr>` against `endpoints` and checks that it is refused, saying
/// each of `says`, before anything is proposed: well within the 10 s the leader would wait for
/// a learner that does not catch up, and with the membership still `voters`.
fn refused_at_once(
    id: &str,
    addr: &str,
    endpoints: &str,
    voters: &[(u64, String)],
    says: &[String],
) {
    let start = Instant::now();
    let out = kv(&["member", "add", id, addr], endpoints);
    let took = start.elapsed();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for said in says {
        assert!(err.contains(said.as_str()), "{err}");
    }
    assert!(took < Duration::from_secs(8), "took {took:?}: {err}");
    assert_eq!(members(endpoints, &[]), voters);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_add_refuses_at_once_a_node_not_running_another_node_or_another_clusters() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_procs, _ports, endpoints) = three_nodes(dir.path(), &[]);
    let voters = three_voters();
    leader_known(dir.path(), &endpoints).await;

    // Nothing at the address.
    let nobody = format!("127.0.0.1:{}", common::free_port());
    refused_at_once(
        "5",
        &nobody,
        &endpoints,
        &voters,
        &[
            format!("no node answers at {nobody}"),
            "start node 5 there first".into(),
        ],
    );

    // Node 6 at the address.
    let p6 = Ports::new();
    let _n6 = spawn(dir.path(), 6, &p6, &[]);
    let at6 = p6.raft_addr();
    poll("node 6 answers", dir.path(), &[6], || async {
        common::status(&at6).await.map(|_| ())
    })
    .await;
    refused_at_once(
        "5",
        &at6,
        &endpoints,
        &voters,
        &[
            format!("the node at {at6} is node 6, not node 5"),
            format!("`kv member add 6 {at6}`"),
        ],
    );

    // Node 7 at the address, leading a cluster of its own.
    let p7 = Ports::new();
    let at7 = p7.raft_addr();
    let _n7 = spawn(
        dir.path(),
        7,
        &p7,
        &["--initial-members".into(), format!("7={at7}")],
    );
    poll("node 7 leads its own cluster", dir.path(), &[7], || async {
        common::status(&at7)
            .await
            .filter(|s| s.role == "leader" && !s.cluster_id.is_empty())
            .map(|_| ())
    })
    .await;
    refused_at_once(
        "7",
        &at7,
        &endpoints,
        &voters,
        &[
            format!("node 7 at {at7} belongs to another cluster"),
            "empty --data-dir".into(),
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_need_admin_credentials() {
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "a-cluster-secret-of-some-length-0123456789").expect("secret");
    let users = dir.path().join("users");
    std::fs::write(&users, "reader read reader-password\n").expect("users");
    let reader = dir.path().join("reader-token");
    std::fs::write(&reader, "reader-password").expect("token");
    let extra = [
        "--cluster-secret-file".to_string(),
        secret.display().to_string(),
        "--users-file".to_string(),
        users.display().to_string(),
    ];
    let (_procs, _ports, endpoints) = three_nodes(dir.path(), &extra);
    let admin = ["--token-file", secret.to_str().expect("utf-8 path")];
    let read = ["--token-file", reader.to_str().expect("utf-8 path")];
    let voters = || {
        vec![
            (1, "voter".to_string()),
            (2, "voter".into()),
            (3, "voter".into()),
        ]
    };
    poll("the cluster formed", dir.path(), &[1, 2, 3], || async {
        let out = kv(
            &[&["member", "list", "--json"][..], &admin].concat(),
            &endpoints,
        );
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        let leaders = v.as_array()?.iter().filter(|r| r["leader"] == true).count();
        (leaders == 1).then_some(())
    })
    .await;

    // Without credentials, and with a read-only user's: refused, and nothing changes.
    // The operator is told what to fix.
    let out = kv(&["member", "remove", "3"], &endpoints);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--token-file"));
    // The nodes refuse even the look at the cluster an add starts with: said as such, not as
    // nodes that do not answer.
    let p4 = Ports::new();
    let out = kv(&["member", "add", "4", &p4.raft_addr()], &endpoints);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--token-file") && !err.contains("no node answered"),
        "{err}"
    );
    let out = kv(
        &[&["member", "remove", "3"][..], &read].concat(),
        &endpoints,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("admin role"));
    let out = kv(
        &[&["leader", "transfer", "3"][..], &read].concat(),
        &endpoints,
    );
    assert!(!out.status.success());
    assert_eq!(members(&endpoints, &admin), voters());
    // A reader may look.
    assert_eq!(members(&endpoints, &read), voters());

    // The cluster secret is an admin credential.
    let out = kv(
        &[&["member", "remove", "3"][..], &admin].concat(),
        &endpoints,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(members(&endpoints, &admin), voters()[..2].to_vec());
}
