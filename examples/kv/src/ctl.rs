//! `kv member …`, `kv leader transfer` and `kv status`: operating a running cluster over its gRPC
//! cluster API, in the manner of `etcdctl`.
//!
//! Every command takes `--endpoints` (raft addresses of some of the nodes; any one that answers
//! is enough) and, on a secured cluster, `--token-file` (a user's password or the cluster
//! secret; membership changes need the admin role) and the TLS flags. Output is a table, or
//! JSON with `--json`. A command that fails prints why and exits non-zero.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use clap::Subcommand;
use raft_core::NodeId;
use raft_core::Role;
use raft_grpc::ClientError;
use raft_grpc::ClientOptions;
use raft_grpc::ClusterClient;
use raft_grpc::Credentials;
use raft_grpc::NodeStatus;
use raft_grpc::RequestError;
use raft_grpc::TlsConfig;
use serde::Serialize;

use crate::store::Store;

/// How to reach and authenticate to the cluster; accepted before or after the subcommand.
#[derive(Args, Debug, Clone)]
pub struct Conn {
    /// Raft (gRPC) addresses of some of the cluster's nodes, comma-separated.
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        default_value = "127.0.0.1:16379,127.0.0.1:16380,127.0.0.1:16381"
    )]
    endpoints: Vec<String>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// A file holding the credential to call with: a user's password from the nodes'
    /// `--users-file`, or the cluster secret (an admin credential).
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
    /// CA certificate that signed the nodes' certificates (the raft port uses TLS).
    #[arg(long, global = true)]
    tls_ca_cert_file: Option<PathBuf>,
    /// Client certificate, where the nodes require one (with --tls-key-file).
    #[arg(long, global = true, requires = "tls_key_file")]
    tls_cert_file: Option<PathBuf>,
    /// The client certificate's private key.
    #[arg(long, global = true, requires = "tls_cert_file")]
    tls_key_file: Option<PathBuf>,
    /// How long a command keeps trying (through elections and unreachable nodes).
    #[arg(long, global = true, default_value = "30s", value_parser = crate::shutdown::parse_duration)]
    timeout: Duration,
}

/// `kv member …`
#[derive(Subcommand, Debug, Clone)]
pub enum MemberCmd {
    /// List the members: id, raft address, voter or learner, and which one leads.
    List,
    /// Add node `id` at `raft-addr`: first as a learner, then, once it has caught up, as a
    /// voter (unless --learner).
    Add {
        /// The new node's id (from 1; unique, never reused after a removal).
        #[arg(value_parser = crate::node_id)]
        id: NodeId,
        /// The new node's raft address, reachable from every member.
        raft_addr: String,
        /// Leave it a learner (it receives the log but does not vote).
        #[arg(long)]
        learner: bool,
    },
    /// Make learner `id` a voter once it has caught up with the leader.
    Promote {
        /// The learner's id.
        #[arg(value_parser = crate::node_id)]
        id: NodeId,
    },
    /// Remove node `id` from the cluster (voter or learner).
    Remove {
        /// The member's id.
        #[arg(value_parser = crate::node_id)]
        id: NodeId,
    },
}

/// `kv leader …`
#[derive(Subcommand, Debug, Clone)]
pub enum LeaderCmd {
    /// Hand leadership to voter `id` and wait until it leads.
    Transfer {
        /// The voter to lead next.
        #[arg(value_parser = crate::node_id)]
        id: NodeId,
    },
}

/// What a command can fail with, in an operator's terms.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// A flag or file is wrong.
    #[error("{0}")]
    Config(String),
    /// No endpoint answered.
    #[error("no node answered at {0}")]
    Unreachable(String),
    /// The cluster refused or failed the request.
    #[error("{0}")]
    Failed(String),
    /// `kv member add` refused the node before proposing it.
    #[error(transparent)]
    NotAdded(#[from] crate::probe::Refusal),
}

/// How long a quick call (a node's status) may take, within `--timeout`.
const QUICK: Duration = Duration::from_secs(5);

impl Conn {
    /// Node `addr`'s status, within [`QUICK`] (and `--timeout`) whatever `client`'s attempt
    /// timeout; no answer in that time is a [`RequestError::Timeout`].
    async fn quick_status(
        &self,
        client: &ClusterClient<Store>,
        addr: &str,
    ) -> Result<NodeStatus, ClientError> {
        let limit = QUICK.min(self.timeout);
        tokio::time::timeout(limit, client.status(addr))
            .await
            .unwrap_or_else(|_| {
                Err(ClientError::GaveUp {
                    attempts: 1,
                    last: RequestError::Timeout(format!("{addr} did not answer within {limit:?}")),
                })
            })
    }

    /// A client whose attempts each take at most [`QUICK`] (within `--timeout`); the client
    /// gives a membership change's attempts as long as a leader works on one.
    pub(crate) fn client(&self) -> Result<ClusterClient<Store>, CtlError> {
        let credentials =
            match &self.token_file {
                None => None,
                Some(p) => {
                    let token = std::fs::read_to_string(p).map_err(|e| {
                        CtlError::Config(format!("cannot read --token-file {}: {e}", p.display()))
                    })?;
                    Some(Credentials::bearer(token).map_err(|e| {
                        CtlError::Config(format!("--token-file {}: {e}", p.display()))
                    })?)
                }
            };
        let tls = match (
            &self.tls_ca_cert_file,
            &self.tls_cert_file,
            &self.tls_key_file,
        ) {
            (None, None, None) => None,
            (Some(ca), Some(cert), Some(key)) => Some(TlsConfig::from_pem_files(ca, cert, key)),
            (Some(ca), None, None) => Some(TlsConfig::client_only(ca)),
            _ => {
                return Err(CtlError::Config(
                    "--tls-cert-file and --tls-key-file need --tls-ca-cert-file".into(),
                ));
            }
        }
        .transpose()
        .map_err(|e| CtlError::Config(e.to_string()))?;
        let opts = ClientOptions::default()
            .with_tls(tls)
            .with_credentials(credentials)
            .with_total_timeout(self.timeout)
            .with_attempt_timeout(QUICK.min(self.timeout));
        ClusterClient::new(self.endpoints.clone(), opts)
            .map_err(|e| CtlError::Config(e.to_string()))
    }

    /// [`CtlError::Unreachable`] if none of the endpoints answers a status call now (each is
    /// asked once, at the same time); `None` if one does.
    pub(crate) async fn none_answers(&self, client: &ClusterClient<Store>) -> Option<CtlError> {
        client
            .statuses()
            .await
            .is_empty()
            .then(|| CtlError::Unreachable(self.endpoints.join(",")))
    }

    /// The view of the first endpoint that answers, then the leader's view if that node is not
    /// the leader and the leader answers. When none answers, a refusal of the credentials is
    /// reported as such rather than as no answer.
    async fn view(&self, client: &ClusterClient<Store>) -> Result<NodeStatus, CtlError> {
        let mut first = None;
        let mut refused = None;
        for e in &self.endpoints {
            match self.quick_status(client, e).await {
                Ok(s) => {
                    first = Some(s);
                    break;
                }
                Err(e) if credentials_refused(&e) => refused = Some(e),
                Err(_) => {}
            }
        }
        let Some(first) = first else {
            return Err(match refused {
                Some(e) => failure(e),
                None => CtlError::Unreachable(self.endpoints.join(",")),
            });
        };
        let leader = match &first.leader_addr {
            Some(addr) if first.role != Role::Leader => addr.clone(),
            _ => return Ok(first),
        };
        Ok(self.quick_status(client, &leader).await.unwrap_or(first))
    }
}

/// Why a cluster call failed, in an operator's terms and without transport wording: `who`
/// names whose credentials were refused ("the", "this node's"), `fix` says what to check, and
/// `refused` introduces a refusal for lack of rights.
pub fn explain(e: ClientError, who: &str, fix: &str, refused: &str) -> String {
    let last = match &e {
        ClientError::Refused(r) | ClientError::GaveUp { last: r, .. } => r,
        _ => return e.to_string(),
    };
    match last {
        RequestError::Unauthenticated(m) => {
            format!("the cluster refused {who} credentials ({m}); {fix}")
        }
        RequestError::PermissionDenied(m) => format!("{refused}: {m}"),
        RequestError::Transport { .. }
        | RequestError::Timeout(_)
        | RequestError::Shutdown(_)
        | RequestError::NoQuorum(_) => format!("the cluster did not answer in time: {e}"),
        other => other.to_string(),
    }
}

/// Whether a node refused the caller's credentials (or their role).
fn credentials_refused(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Refused(RequestError::Unauthenticated(_) | RequestError::PermissionDenied(_))
            | ClientError::GaveUp {
                last: RequestError::Unauthenticated(_) | RequestError::PermissionDenied(_),
                ..
            }
    )
}

fn failure(e: ClientError) -> CtlError {
    CtlError::Failed(explain(
        e,
        "the",
        "pass --token-file with a user's password or the cluster secret",
        "not allowed; membership and leadership changes need the admin role",
    ))
}

/// One row of `kv member list`.
#[derive(Debug, Serialize)]
struct MemberRow {
    id: NodeId,
    raft_addr: String,
    role: &'static str,
    leader: bool,
}

fn members(s: &NodeStatus) -> Vec<MemberRow> {
    let voters = s.voters.iter().map(|m| (m, "voter"));
    let learners = s.learners.iter().map(|m| (m, "learner"));
    let mut rows: Vec<MemberRow> = voters
        .chain(learners)
        .map(|((id, addr), role)| MemberRow {
            id: *id,
            raft_addr: addr.clone(),
            role,
            leader: s.leader_id == Some(*id),
        })
        .collect();
    rows.sort_by_key(|r| r.id);
    rows
}

/// One row of `kv status`: a node's own view.
#[derive(Debug, Serialize)]
struct StatusRow {
    id: NodeId,
    raft_addr: String,
    reachable: bool,
    role: String,
    term: u64,
    leader: Option<NodeId>,
    last_log_index: Option<u64>,
    commit_index: Option<u64>,
    applied_index: Option<u64>,
    snapshot_index: Option<u64>,
    /// Entries the leader has committed that this node has not applied.
    lag: Option<u64>,
    space_alarm: Option<String>,
}

fn table<const N: usize>(header: [&str; N], rows: Vec<[String; N]>) -> String {
    let mut width = header.map(str::len);
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(width)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for r in &rows {
        out += &line(r.iter().map(String::as_str).collect());
    }
    out
}

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

pub(crate) fn json<T: Serialize>(v: &T) -> Result<String, CtlError> {
    serde_json::to_string_pretty(v)
        .map(|s| s + "\n")
        .map_err(|e| CtlError::Failed(format!("cannot encode the answer: {e}")))
}

/// Runs `kv member …`; returns what to print.
pub async fn member(cmd: &MemberCmd, conn: &Conn) -> Result<String, CtlError> {
    let client = conn.client()?;
    match cmd {
        MemberCmd::List => {
            let rows = members(&conn.view(&client).await?);
            if conn.json {
                return json(&rows);
            }
            Ok(table(
                ["ID", "RAFT ADDRESS", "ROLE", "LEADER"],
                rows.into_iter()
                    .map(|r| {
                        let leader = if r.leader { "*" } else { "" };
                        [r.id.to_string(), r.raft_addr, r.role.into(), leader.into()]
                    })
                    .collect(),
            ))
        }
        MemberCmd::Add {
            id,
            raft_addr,
            learner,
        } => add(*id, raft_addr, *learner, conn, &client).await,
        MemberCmd::Promote { id } => {
            client.add_voter(*id).await.map_err(failure)?;
            Ok(format!("node {id} is a voter\n"))
        }
        MemberCmd::Remove { id } => {
            client.remove_node(*id).await.map_err(failure)?;
            Ok(format!("node {id} removed\n"))
        }
    }
}

/// `kv member add`: adds `id` at `addr` as a learner, then (unless `learner`) makes it a voter.
/// A node that is neither a member nor at a member's address is asked first who it is: one that
/// does not answer, is another node or belongs to another cluster is refused before anything is
/// proposed ([`crate::probe`]). A member already at `addr` is reported as it is. A learner that
/// was added but has not caught up is reported as such, with how to undo it, and is not
/// promoted.
async fn add(
    id: NodeId,
    addr: &str,
    learner: bool,
    conn: &Conn,
    client: &ClusterClient<Store>,
) -> Result<String, CtlError> {
    crate::cluster::check_advertised(addr)
        .map_err(|e| CtlError::Config(format!("the new node's raft address {e}")))?;
    let view = conn.view(client).await?;
    // What `id` already is at `addr`, to say so rather than "added".
    let before = if view.voters.get(&id).is_some_and(|a| a == addr) {
        Some("voter")
    } else if view.learners.get(&id).is_some_and(|a| a == addr) {
        Some("learner")
    } else {
        None
    };
    // The leader answers for an id or address that is in use (as it stands, or with a
    // refusal); any other node is asked who it is before it is proposed.
    let mut members = view.voters.iter().chain(&view.learners);
    if !members.any(|(m, a)| *m == id || a == addr) {
        crate::probe::check(id, addr, &view, conn.quick_status(client, addr).await)?;
    }
    let behind = |message: String| {
        CtlError::Failed(format!("{message}; `kv member remove {id}` undoes the add"))
    };
    match client.add_learner(id, addr.to_string()).await {
        Ok(()) => {}
        Err(ClientError::Refused(RequestError::LearnerNotCaughtUp(m)))
        | Err(ClientError::GaveUp {
            last: RequestError::LearnerNotCaughtUp(m),
            ..
        }) => return Err(behind(m)),
        Err(e) if e.outcome_unknown() => {
            // The add may have been committed although no answer said so: tell what happened.
            let added = conn
                .view(client)
                .await
                .is_ok_and(|v| v.learners.get(&id).is_some_and(|a| a == addr));
            if added {
                return Err(behind(format!(
                    "node {id} was added as a learner at {addr} but has not caught up (is {addr} reachable from the leader?); it stays a member until it is removed"
                )));
            }
            return Err(failure(e));
        }
        Err(e) => return Err(failure(e)),
    }
    match before {
        Some("voter") => return Ok(format!("node {id} ({addr}) is already a voter\n")),
        Some(_) if learner => return Ok(format!("node {id} ({addr}) is already a learner\n")),
        _ => {}
    }
    if learner {
        return Ok(format!("node {id} ({addr}) added as a learner\n"));
    }
    client.add_voter(id).await.map_err(failure)?;
    Ok(format!("node {id} ({addr}) added as a voter\n"))
}

/// Runs `kv leader …`; returns what to print.
pub async fn leader(cmd: &LeaderCmd, conn: &Conn) -> Result<String, CtlError> {
    let client = conn.client()?;
    match cmd {
        LeaderCmd::Transfer { id } => {
            client.transfer_leader(*id).await.map_err(failure)?;
            Ok(format!("node {id} leads\n"))
        }
    }
}

/// Runs `kv status`: every member's own view (and every endpoint's, if it is not a member).
pub async fn status(conn: &Conn) -> Result<String, CtlError> {
    let client = conn.client()?;
    let view = conn.view(&client).await?;
    let mut addrs: BTreeMap<NodeId, String> = view
        .voters
        .iter()
        .chain(&view.learners)
        .map(|(id, addr)| (*id, addr.clone()))
        .collect();
    let mut rows = Vec::new();
    for (id, addr) in &addrs {
        rows.push(match client.status(addr).await {
            Ok(s) => row(&s, addr, view.commit_index),
            Err(_) => StatusRow {
                id: *id,
                raft_addr: addr.clone(),
                reachable: false,
                role: "unreachable".into(),
                term: 0,
                leader: None,
                last_log_index: None,
                commit_index: None,
                applied_index: None,
                snapshot_index: None,
                lag: None,
                space_alarm: None,
            },
        });
    }
    // Endpoints that are not (or not yet) members, such as a node waiting to be added.
    for e in &conn.endpoints {
        if addrs.values().any(|a| a == e) {
            continue;
        }
        if let Ok(s) = client.status(e).await
            && !addrs.contains_key(&s.id)
        {
            addrs.insert(s.id, e.clone());
            rows.push(row(&s, e, view.commit_index));
        }
    }
    if conn.json {
        return json(&rows);
    }
    Ok(table(
        [
            "ID",
            "RAFT ADDRESS",
            "ROLE",
            "TERM",
            "LEADER",
            "LAST",
            "COMMIT",
            "APPLIED",
            "LAG",
            "ALARM",
        ],
        rows.into_iter()
            .map(|r| {
                [
                    r.id.to_string(),
                    r.raft_addr,
                    r.role,
                    if r.reachable {
                        r.term.to_string()
                    } else {
                        "-".into()
                    },
                    opt(r.leader),
                    opt(r.last_log_index),
                    opt(r.commit_index),
                    opt(r.applied_index),
                    opt(r.lag),
                    r.space_alarm.unwrap_or_default(),
                ]
            })
            .collect(),
    ))
}

fn row(s: &NodeStatus, addr: &str, leader_commit: Option<u64>) -> StatusRow {
    StatusRow {
        id: s.id,
        raft_addr: addr.to_string(),
        reachable: true,
        role: s.role.to_string(),
        term: s.term,
        leader: s.leader_id,
        last_log_index: s.last_log_index,
        commit_index: s.commit_index,
        applied_index: s.applied_index,
        snapshot_index: s.snapshot_index,
        lag: leader_commit.map(|c| c.saturating_sub(s.applied_index.unwrap_or(0))),
        space_alarm: s.space_alarm.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let t = table(
            ["ID", "ADDR"],
            vec![
                ["1".into(), "a:1".into()],
                ["10".into(), "long-host:2".into()],
            ],
        );
        assert_eq!(t, "ID  ADDR\n1   a:1\n10  long-host:2\n");
    }
}
