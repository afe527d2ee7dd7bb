//! `kv`: a replicated, durable key-value store that speaks the Redis protocol, built on
//! raftkit's public API.
//!
//! ```text
//! kv                 a local three-node cluster in this process (RESP on 6379, 6380, 6381)
//! kv node --id 1 …   one node of a cluster of separate processes or machines
//! kv certs …         a CA, node and client certificates for a development cluster
//! kv member …        list, add, promote or remove members of a running cluster
//! kv leader transfer hand leadership to another voter
//! kv status          every node's role, term, indexes and lag
//! kv backup …        a consistent backup of a running cluster's state, to a file
//! kv restore …       a node's data directory for a new cluster holding a backup
//! ```
//!
//! # Layout
//!
//! * `store/` — the replicated state machine: keys holding strings, hashes, lists or sets with
//!   expiry, one module per data type, a protocol-neutral reply and error type, the versioned
//!   snapshot format.
//! * `resp.rs` — the RESP parser (incremental, bounded) and encoder (RESP2 and RESP3); words the
//!   store's errors as Redis does.
//! * `commands/` — the command table (name, arity, class, parser) and the parsers, one module
//!   per data type.
//! * `server.rs` — connections: run commands in order, INFO/HELLO, MULTI/EXEC/WATCH.
//! * `forward.rs` — commands into the cluster through the node's local client: retries
//!   through elections, and failures as Redis errors that say whether a write was applied.
//! * `config.rs` — `CONFIG GET`/`SET`: each node's parameters.
//! * `limits.rs` — what clients may use (maxclients, timeouts, command and reply sizes, what
//!   the raft port receives) and its flags; `docs/limits.md` lists every limit.
//! * `client_memory.rs` — the bound on what all clients' buffers hold together.
//! * `cluster.rs` — starting one node, joining, and the three-node demo.
//! * `metrics.rs` — Prometheus metrics, `/healthz` and `/readyz`.
//! * `storage.rs` — disk flags: the quota behind `-OOM`, compaction by size, WAL segments.
//! * `memory.rs` — `--maxmemory`, the memory limit behind `-OOM`, and its default.
//! * `shutdown.rs` — SIGTERM/SIGINT within a bound, and exiting non-zero when storage fails.
//! * `threads.rs` — the consensus pool and the RESP threads, and how many of each.
//! * `auth.rs` — RESP `AUTH`, users and roles (`NOAUTH`, `NOPERM`, `ACL WHOAMI`).
//! * `security.rs` — the security flags: secret, passwords, users, TLS, reload on SIGHUP.
//! * `certs.rs` — `kv certs`, a CA and certificates for a development cluster.
//! * `ctl.rs` — `kv member`, `kv leader`, `kv status`: operating a cluster over its gRPC API.
//! * `probe.rs` — before `kv member add` proposes a node: is it running at its address, as the
//!   id given, and not in another cluster?
//! * `backup.rs` — `kv backup` and `kv restore`: disaster recovery.

mod auth;
mod backup;
mod certs;
mod client_memory;
mod cluster;
mod commands;
mod config;
mod ctl;
mod forward;
mod limits;
mod memory;
mod metrics;
mod pipeline;
mod probe;
mod resp;
mod security;
mod server;
mod shutdown;
mod slots;
mod storage;
mod store;
mod threads;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use clap::Subcommand;
use clap::ValueEnum;
use raft_core::Consistency;
use raft_core::NodeId;
use raft_core::same_address;

/// mimalloc: the server allocates and frees many small buffers per request on every thread;
/// glibc's allocator showed as ~7 % of the leader's CPU under load. Built without transparent
/// huge pages (`no_thp`): with them, every page mimalloc returned to the OS and touched again
/// came back as a 2 MiB page the kernel had to zero, 3–7 % of a node's CPU in steady state.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Makes mimalloc give pages back to the OS as soon as they are free. `--maxmemory` is a limit on
/// resident memory, and by default mimalloc purges freed pages only after a delay (1 s) and only
/// when the heap that holds them runs again: once a node over its limit refuses large writes,
/// the heaps that held the deleted values may never run that purge, and the node would stay
/// over its limit, refusing writes, after its data was deleted. Measured at 256 clients, purging
/// at once took 0.014 `madvise` calls per SET and no throughput that the runs could tell.
fn purge_freed_memory_at_once() {
    // `mi_option_purge_delay` in mimalloc 3's `mimalloc.h` (the version `libmimalloc-sys` builds
    // unless asked for 2), for which the bindings name no constant. `Cargo.toml` pins the
    // bindings to the version this index was read from.
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: sets one of mimalloc's options to a value its documentation allows (0: purge at
    // once), first thing in `main`, before this process starts any other thread.
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, 0) };
}

/// A replicated key-value store speaking the Redis protocol (RESP2).
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// How log lines are written to standard error: `text` for people, `json` (one object per
    /// line) for log pipelines such as Loki or Elasticsearch.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Threads that run consensus, replication and the gRPC and metrics services (1 to 1024).
    /// Default: the `TOKIO_WORKER_THREADS` environment variable if set, else half the CPU cores
    /// this process may use (at least one).
    #[arg(long, global = true, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=i64::from(threads::MAX_THREADS)))]
    worker_threads: Option<u16>,
    /// Threads that run RESP client connections (1 to 1024). Default: the CPU cores this
    /// process may use less the `--worker-threads` default (at least one). With one, a
    /// command's own work (a large reply, say) holds up the node's other clients while it runs,
    /// as in Redis.
    #[arg(long, global = true, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=i64::from(threads::MAX_THREADS)))]
    resp_threads: Option<u16>,
}

/// The form of log lines.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, with `timestamp`, `level`, `target`, `fields` and `spans`.
    Json,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run a local three-node cluster in this process (the default).
    Demo(DemoArgs),
    /// Run one node of a cluster.
    Node(Box<NodeArgs>),
    /// Generate a CA, node and client certificates for a development cluster.
    Certs(certs::CertsArgs),
    /// List, add, promote or remove members of a running cluster.
    Member {
        #[command(subcommand)]
        cmd: ctl::MemberCmd,
        #[command(flatten)]
        conn: ctl::Conn,
    },
    /// Change the leader of a running cluster.
    Leader {
        #[command(subcommand)]
        cmd: ctl::LeaderCmd,
        #[command(flatten)]
        conn: ctl::Conn,
    },
    /// Every node's role, term, log indexes and apply lag.
    Status {
        #[command(flatten)]
        conn: ctl::Conn,
    },
    /// Write a consistent backup of a running cluster's state to a file (admin).
    Backup(backup::BackupArgs),
    /// Prepare a node's data directory for a new cluster that starts from a backup; restore
    /// every initial member from the same file with the same --initial-members, then start
    /// them with `kv node`.
    Restore(backup::RestoreArgs),
}

#[derive(Parser, Debug, Clone)]
struct DemoArgs {
    /// Where the three nodes keep their data (one directory each).
    #[arg(long, default_value = "kv-data")]
    data_dir: PathBuf,
    /// RESP port of node 1; nodes 2 and 3 use the next two (1 to 65533).
    #[arg(long, default_value_t = 6379, value_parser = clap::value_parser!(u16).range(1..=65533))]
    resp_port: u16,
    /// Raft (gRPC) port of node 1; nodes 2 and 3 use the next two (1 to 65533).
    #[arg(long, default_value_t = 16379, value_parser = clap::value_parser!(u16).range(1..=65533))]
    raft_port: u16,
    /// How reads are served.
    #[arg(long, value_enum, default_value_t = ReadConsistency::Linearizable)]
    read_consistency: ReadConsistency,
    #[command(flatten)]
    metrics: metrics::MetricsArgs,
    #[command(flatten)]
    storage: storage::StorageArgs,
    #[command(flatten)]
    shutdown: shutdown::ShutdownArgs,
    #[command(flatten)]
    limits: limits::LimitArgs,
}

#[derive(Parser, Debug, Clone)]
struct NodeArgs {
    /// This node's id (from 1): unique in the cluster, stable across restarts.
    #[arg(long, required_unless_present = "id_from_hostname", value_parser = node_id)]
    id: Option<NodeId>,
    /// Take the id from the host name's trailing number plus one (`kv-0` is node 1, `kv-2`
    /// node 3), as a Kubernetes StatefulSet names its pods.
    #[arg(long, conflicts_with = "id")]
    id_from_hostname: bool,
    /// Where this node keeps its log and snapshots.
    #[arg(long)]
    data_dir: PathBuf,
    /// Address for raft traffic and the gRPC cluster API (host:port); also how other nodes
    /// reach this one, so it must be reachable from them. A host name is fine (for example a
    /// StatefulSet pod's DNS name); then set --raft-listen-addr.
    #[arg(long)]
    raft_addr: String,
    /// Where the raft port listens, when that differs from --raft-addr (e.g. 0.0.0.0:16379
    /// while --raft-addr is a DNS name).
    #[arg(long)]
    raft_listen_addr: Option<String>,
    /// Address for Redis clients (host:port).
    #[arg(long)]
    resp_addr: String,
    /// Join the cluster these nodes belong to (raft addresses, comma-separated; any one that
    /// answers is enough): as a learner, then as a voter once caught up. Ignored once this node
    /// is a voter, and for a node listed in --initial-members; a join that a restart
    /// interrupted resumes. With --initial-members, one command line serves every node of a
    /// StatefulSet: the initial members form the cluster, later ones join it.
    #[arg(long, value_delimiter = ',')]
    join: Vec<String>,
    /// Form a new cluster of these members, as `id=host:port,...` with raft addresses (first
    /// start only; give every initial member the same list).
    #[arg(long, value_delimiter = ',')]
    initial_members: Vec<String>,
    /// How reads are served.
    #[arg(long, value_enum, default_value_t = ReadConsistency::Linearizable)]
    read_consistency: ReadConsistency,
    #[command(flatten)]
    metrics: metrics::MetricsArgs,
    #[command(flatten)]
    storage: storage::StorageArgs,
    #[command(flatten)]
    shutdown: shutdown::ShutdownArgs,
    #[command(flatten)]
    limits: limits::LimitArgs,
    #[command(flatten)]
    security: security::SecurityArgs,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum ReadConsistency {
    /// Every read sees every write acknowledged before it (ReadIndex through the leader).
    Linearizable,
    /// Linearizable under the leader's lease (fewer round trips; assumes bounded clock drift).
    Lease,
    /// Whatever the answering node has applied; may be stale, except that a connection reads
    /// its own writes (its reads after a write go at the leader's lease until one succeeds).
    Local,
}

impl From<ReadConsistency> for Consistency {
    fn from(r: ReadConsistency) -> Self {
        match r {
            ReadConsistency::Linearizable => Consistency::Linearizable,
            ReadConsistency::Lease => Consistency::Lease,
            ReadConsistency::Local => Consistency::Local,
        }
    }
}

/// The node id a StatefulSet pod's host name implies: its trailing ordinal plus one.
fn id_from_hostname() -> Result<NodeId, String> {
    let name = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .ok_or("--id-from-hostname: cannot read the host name")?;
    ordinal_id(&name).ok_or_else(|| {
        format!("--id-from-hostname: host name {name:?} does not end in -<number> (as kv-0)")
    })
}

/// `kv-0` is node 1: a pod's ordinal plus one (node ids start at 1).
fn ordinal_id(host: &str) -> Option<NodeId> {
    let short = host.split('.').next()?;
    let (_, ordinal) = short.rsplit_once('-')?;
    ordinal.parse::<NodeId>().ok()?.checked_add(1)
}

/// Parses a node id given on the command line: a whole number from 1 (raftkit has no node 0).
pub(crate) fn node_id(s: &str) -> Result<NodeId, String> {
    let id = s
        .trim()
        .parse::<NodeId>()
        .map_err(|_| format!("{s:?} is not a node id (a whole number from 1)"))?;
    if id == 0 {
        return Err("node ids start at 1, got 0".into());
    }
    Ok(id)
}

/// Parses `--initial-members` (`id=host:port` each): ids are unique and start at 1, and
/// addresses are node addresses other nodes can reach ([`cluster::check_advertised`]), no two
/// of them the same endpoint by the rule membership changes apply ([`same_address`]).
fn parse_members(list: &[String]) -> Result<BTreeMap<NodeId, String>, String> {
    let mut members: BTreeMap<NodeId, String> = BTreeMap::new();
    for m in list {
        let (id, addr) = m
            .split_once('=')
            .ok_or_else(|| format!("--initial-members: expected id=host:port, got {m:?}"))?;
        let id = node_id(id).map_err(|e| format!("--initial-members: {e}"))?;
        let addr = addr.trim();
        cluster::check_advertised(addr)
            .map_err(|e| format!("--initial-members: node {id}'s address {e}"))?;
        if members.contains_key(&id) {
            return Err(format!("--initial-members: node {id} is listed twice"));
        }
        if let Some((other, listed)) = members.iter().find(|(_, a)| same_address(a, addr)) {
            let spelt = if listed == addr {
                String::new()
            } else {
                format!(" (as {listed})")
            };
            return Err(format!(
                "--initial-members: {addr} is listed for nodes {other}{spelt} and {id}"
            ));
        }
        members.insert(id, addr.to_string());
    }
    Ok(members)
}

/// Checks `kv node`'s addresses before anything starts: `--raft-addr` is an address other nodes
/// can reach, `--initial-members` either lists this node at that same address (as
/// [`same_address`] compares them) or (with `--join`) not at all, and every `--join` entry is a
/// node address.
fn check_node_addrs(
    id: NodeId,
    args: &NodeArgs,
    members: &BTreeMap<NodeId, String>,
) -> Result<(), String> {
    cluster::check_advertised(&args.raft_addr).map_err(|e| {
        format!(
            "--raft-addr {e} (to listen on every address, give --raft-listen-addr {} as well)",
            args.raft_addr
        )
    })?;
    for addr in &args.join {
        raft_grpc::check_addr(addr).map_err(|e| format!("--join: {e}"))?;
    }
    match members.get(&id) {
        Some(listed) if !same_address(listed, &args.raft_addr) => Err(format!(
            "--initial-members lists this node ({id}) at {listed}, but --raft-addr is {}; the \
             other members reach node {id} at the address the list gives, so give the same one \
             to both",
            args.raft_addr
        )),
        None if !members.is_empty() && args.join.is_empty() => Err(format!(
            "--initial-members does not include this node ({id}); add it, or give --join to \
             join the cluster they formed"
        )),
        _ => Ok(()),
    }
}

/// Runs `cli`'s command; a node's RESP connections run on `clients`.
async fn run(cli: Cli, clients: tokio::runtime::Handle) -> Result<(), String> {
    let cmd = cli
        .command
        .unwrap_or(Cmd::Demo(DemoArgs::parse_from(["kv"])));
    match cmd {
        Cmd::Demo(args) => {
            let endpoint = metrics::prepare(&args.metrics).await?;
            let nodes = cluster::demo(
                args.data_dir.clone(),
                args.resp_port,
                args.raft_port,
                args.read_consistency.into(),
                args.storage.clone(),
                args.limits.fitted(cluster::DEMO_NODES)?,
                clients,
            )
            .await
            .map_err(|e| e.to_string())?;
            if let Some(e) = endpoint {
                e.serve(&nodes);
            }
            println!(
                "kv: a 3-node replicated cluster, data in {}",
                args.data_dir.display()
            );
            for n in &nodes {
                println!(
                    "  node {}: redis-cli -p {}   (raft {})",
                    n.spec.id,
                    n.resp_addr.port(),
                    n.node.addr()
                );
            }
            println!(
                "Writes to any node go to the leader; reads are {:?}. Ctrl-C stops all three.",
                args.read_consistency
            );
            shutdown::serve_until_stopped(nodes, &args.shutdown)
                .await
                .map_err(|e| e.to_string())
        }
        Cmd::Node(args) => {
            let id = match args.id {
                Some(id) => id,
                None => id_from_hostname()?,
            };
            let members = parse_members(&args.initial_members)?;
            check_node_addrs(id, &args, &members)?;
            let raft_listen = args
                .raft_listen_addr
                .unwrap_or_else(|| args.raft_addr.clone());
            let security = std::sync::Arc::new(
                security::Security::load(&args.security).map_err(|e| e.to_string())?,
            );
            security
                .check_exposure(&raft_listen, &args.resp_addr)
                .map_err(|e| e.to_string())?;
            security.clone().reload_on_sighup();
            let spec = cluster::NodeSpec {
                id,
                data_dir: args.data_dir,
                raft_addr: args.raft_addr,
                raft_listen,
                resp_addr: args.resp_addr,
                initial_members: members,
                join: args.join,
                consistency: args.read_consistency.into(),
                limits: args.limits.fitted(1)?,
                storage: args.storage.clone(),
                raft_flag: "--raft-addr",
                resp_flag: "--resp-addr",
                security,
                clients,
            };
            let endpoint = metrics::prepare(&args.metrics).await?;
            let node = cluster::start(spec).await.map_err(|e| e.to_string())?;
            if let Some(e) = endpoint {
                e.serve(std::slice::from_ref(&node));
            }
            println!(
                "kv node {}: RESP on {}, raft on {}",
                node.spec.id,
                node.resp_addr,
                node.node.addr()
            );
            shutdown::serve_until_stopped(vec![node], &args.shutdown)
                .await
                .map_err(|e| e.to_string())
        }
        Cmd::Certs(args) => {
            for path in certs::run(&args)? {
                println!("{}", path.display());
            }
            Ok(())
        }
        Cmd::Member { cmd, conn } => print(ctl::member(&cmd, &conn).await),
        Cmd::Leader { cmd, conn } => print(ctl::leader(&cmd, &conn).await),
        Cmd::Status { conn } => print(ctl::status(&conn).await),
        Cmd::Backup(args) => print(backup::backup(&args).await),
        Cmd::Restore(args) => {
            let members = parse_members(&args.initial_members)?;
            print(backup::restore(&args, members).await)
        }
    }
}

fn print(out: Result<String, ctl::CtlError>) -> Result<(), String> {
    print!("{}", out.map_err(|e| e.to_string())?);
    Ok(())
}

/// The consensus pool and the RESP threads, sized by `cli`'s flags (see `threads.rs`).
fn runtimes(cli: &Cli) -> Result<(tokio::runtime::Runtime, threads::Clients), String> {
    let env = std::env::var_os("TOKIO_WORKER_THREADS");
    let workers = threads::worker_threads(cli.worker_threads, env)?;
    let rt = threads::consensus(workers).map_err(|e| format!("cannot start the runtime: {e}"))?;
    let clients = threads::Clients::start(threads::resp_threads(cli.resp_threads))
        .map_err(|e| format!("cannot start the RESP threads: {e}"))?;
    Ok((rt, clients))
}

fn main() -> ExitCode {
    purge_freed_memory_at_once();
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            "warn,kv=info,raft_core=info,raft_grpc=info,openraft=error",
        )
    });
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    let (rt, clients) = match runtimes(&cli) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kv: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(run(cli, clients.handle().clone()));
    // Tasks still blocked on the disk must not hold the exit up.
    clients.stop();
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kv: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    fn members(list: &str) -> Result<Vec<(u64, String)>, String> {
        let list: Vec<String> = list.split(',').map(str::to_string).collect();
        super::parse_members(&list).map(|m| m.into_iter().collect())
    }

    #[test]
    fn initial_members_are_unique_ids_from_one_at_distinct_host_ports() {
        assert_eq!(
            members("1=127.0.0.1:1, 2 = kv-1.kv:16379,3=[::1]:7").as_deref(),
            Ok(&[
                (1, "127.0.0.1:1".to_string()),
                (2, "kv-1.kv:16379".to_string()),
                (3, "[::1]:7".to_string())
            ][..])
        );
        let refused = [
            ("1=127.0.0.1:1,1=127.0.0.1:2", "node 1 is listed twice"),
            (
                "1=127.0.0.1:1,2=127.0.0.1:1",
                "127.0.0.1:1 is listed for nodes 1 and 2",
            ),
            (
                "1=kv-0.kv:7000,2=KV-0.kv.:07000",
                "KV-0.kv.:07000 is listed for nodes 1 (as kv-0.kv:7000) and 2",
            ),
            (
                "1=[::ffff:10.0.0.1]:7,2=10.0.0.1:7",
                "10.0.0.1:7 is listed for nodes 1 (as [::ffff:10.0.0.1]:7) and 2",
            ),
            ("0=127.0.0.1:1", "node ids start at 1"),
            ("1=nohost", "\"nohost\" is not host:port"),
            ("1=:7000", "\":7000\" is not host:port"),
            ("1=host:", "\"host:\" is not host:port"),
            ("1=host:70000", "\"host:70000\" is not host:port"),
            ("1=host:0", "\"host:0\" is not host:port"),
            ("1=", "\"\" is not host:port"),
            ("x=host:1", "\"x\" is not a node id"),
            ("host:1", "expected id=host:port"),
            ("1=0.0.0.0:7", "is the any-address"),
            ("1=[::]:7", "is the any-address"),
        ];
        for (list, why) in refused {
            match members(list) {
                Err(e) => assert!(e.contains(why), "{list}: {e}"),
                Ok(m) => panic!("{list} accepted as {m:?}"),
            }
        }
    }

    #[test]
    fn the_node_is_listed_at_its_raft_address_in_any_spelling() {
        use clap::Parser;
        let check = |raft_addr: &str, list: &str, join: &[&str]| {
            let mut argv = vec!["kv", "node", "--id", "1", "--data-dir", "d"];
            argv.extend(["--resp-addr", "127.0.0.1:6379", "--raft-addr", raft_addr]);
            argv.extend(["--initial-members", list]);
            for j in join {
                argv.extend(["--join", j]);
            }
            let Some(super::Cmd::Node(args)) = super::Cli::try_parse_from(argv).unwrap().command
            else {
                unreachable!("parsed as kv node")
            };
            let members = super::parse_members(&args.initial_members)?;
            super::check_node_addrs(1, &args, &members)
        };
        let others = "2=kv-1.kv:7000,3=kv-2.kv:7000";
        for listed in ["kv-0.kv:7000", "KV-0.KV.:7000", "kv-0.kv:07000"] {
            assert_eq!(
                check("kv-0.kv:7000", &format!("1={listed},{others}"), &[]),
                Ok(())
            );
        }
        assert_eq!(check("[::1]:7", "1=[0:0::1]:7", &[]), Ok(()));
        for listed in ["kv-0.kv:7001", "kv-00.kv:7000", "127.0.0.1:7000"] {
            let e = check("kv-0.kv:7000", &format!("1={listed},{others}"), &[]).unwrap_err();
            assert!(
                e.contains(&format!("lists this node (1) at {listed}")),
                "{e}"
            );
        }
        let e = check("kv-0.kv:7000", others, &[]).unwrap_err();
        assert!(e.contains("does not include this node (1)"), "{e}");
        assert_eq!(check("kv-0.kv:7000", others, &["kv-1.kv:7000"]), Ok(()));
    }

    #[test]
    fn node_ids_start_at_one() {
        assert_eq!(super::node_id("1"), Ok(1));
        assert_eq!(super::node_id(" 42 "), Ok(42));
        assert_eq!(
            super::node_id("0"),
            Err("node ids start at 1, got 0".to_string())
        );
        for bad in ["", "-1", "x", "1.5"] {
            let e = super::node_id(bad).unwrap_err();
            assert!(e.contains("is not a node id"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn pod_names_give_ids_from_one() {
        assert_eq!(super::ordinal_id("kv-0"), Some(1));
        assert_eq!(super::ordinal_id("my-kv-12.kv.default.svc"), Some(13));
        assert_eq!(super::ordinal_id("kv"), None);
        assert_eq!(super::ordinal_id("kv-x"), None);
    }
}
