//! Before `kv member add` proposes a node: is node `id` running at the address given, and free
//! to join this cluster? The node's own status answers (its id and its cluster id), so a node
//! that is not running, is another node, or belongs to another cluster is refused at once and
//! no learner is left behind.

use raft_core::ClusterId;
use raft_core::NodeId;
use raft_grpc::ClientError;
use raft_grpc::NodeStatus;
use raft_grpc::RequestError;

/// Why a node was refused before anything was proposed. Every message says what was found at
/// the address and what to do.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// No kv node answered at the address.
    #[error(
        "no node answers at {addr}; start node {id} there first (`kv node --id {id} \
         --raft-addr {addr} …`, without --initial-members), then run this again; nothing was \
         changed"
    )]
    NotRunning {
        /// The id to add.
        id: NodeId,
        /// Where it was looked for.
        addr: String,
    },
    /// The node at the address refused the credentials the command was given.
    #[error(
        "the node at {addr} refused these credentials ({why}); start it with the cluster's \
         --cluster-secret-file (and --users-file), or check --token-file; nothing was changed"
    )]
    Credentials {
        /// The address asked.
        addr: String,
        /// What the node said.
        why: String,
    },
    /// Another node answered at the address.
    #[error("the node at {addr} is node {found}, not node {id}; {advice}; nothing was changed")]
    OtherNode {
        /// The id to add.
        id: NodeId,
        /// The address asked.
        addr: String,
        /// The id of the node that answered there.
        found: NodeId,
        /// What to do instead.
        advice: String,
    },
    /// The node at the address belongs to another cluster.
    #[error(
        "node {id} at {addr} belongs to another cluster ({theirs}; this cluster is {ours}); a \
         node stays in the cluster it first joined: check the address, or stop that node and \
         start it again with an empty --data-dir (discarding its data) and without \
         --initial-members; nothing was changed"
    )]
    OtherCluster {
        /// The id to add.
        id: NodeId,
        /// The address asked.
        addr: String,
        /// The cluster the node at `addr` belongs to.
        theirs: ClusterId,
        /// This cluster.
        ours: ClusterId,
    },
    /// Something answered at the address, but not with a status a kv node gives.
    #[error(
        "the node at {addr} did not answer as a kv node ({why}); check the address; nothing \
         was changed"
    )]
    Unreadable {
        /// The address asked.
        addr: String,
        /// What went wrong.
        why: String,
    },
}

/// Whether node `id` may be proposed at `addr`, given `cluster` (the cluster's view, from its
/// leader if it answered) and `answer` (the status asked of `addr`, or why it did not come).
/// A node that answers as `id` and has no cluster id, or this cluster's, may be proposed; so
/// may one whose cluster cannot be compared (the cluster, or the node, predates cluster ids).
pub fn check(
    id: NodeId,
    addr: &str,
    cluster: &NodeStatus,
    answer: Result<NodeStatus, ClientError>,
) -> Result<(), Refusal> {
    let addr = addr.to_string();
    let found = match answer {
        Ok(s) => s,
        Err(e) => return Err(unanswered(id, addr, e)),
    };
    if found.id != id {
        let advice = match member_addr(cluster, found.id) {
            Some(at) => format!(
                "node {} is already a member (at {at}): give node {id} an address of its own",
                found.id
            ),
            None => format!(
                "to add that node, run `kv member add {} {addr}`; to add node {id}, start it \
                 at an address of its own",
                found.id
            ),
        };
        return Err(Refusal::OtherNode {
            id,
            addr,
            found: found.id,
            advice,
        });
    }
    match (found.cluster_id, cluster.cluster_id) {
        (Some(theirs), Some(ours)) if theirs != ours => Err(Refusal::OtherCluster {
            id,
            addr,
            theirs,
            ours,
        }),
        _ => Ok(()),
    }
}

/// The refusal for a status that did not come back.
fn unanswered(id: NodeId, addr: String, e: ClientError) -> Refusal {
    let last = match &e {
        ClientError::GaveUp { last, .. } | ClientError::Refused(last) => last,
        _ => {
            return Refusal::Unreadable {
                addr,
                why: e.to_string(),
            };
        }
    };
    match last {
        RequestError::Unauthenticated(m) | RequestError::PermissionDenied(m) => {
            Refusal::Credentials {
                addr,
                why: m.clone(),
            }
        }
        RequestError::Transport { .. } | RequestError::Timeout(_) | RequestError::Shutdown(_) => {
            Refusal::NotRunning { id, addr }
        }
        other => Refusal::Unreadable {
            addr,
            why: other.to_string(),
        },
    }
}

/// Where member `id` of `cluster` is, if it is a member.
fn member_addr(cluster: &NodeStatus, id: NodeId) -> Option<&str> {
    cluster
        .voters
        .get(&id)
        .or_else(|| cluster.learners.get(&id))
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use raft_grpc::pb;

    use super::*;

    const ADDR: &str = "10.0.0.4:16379";

    /// Node `id`'s status: a member of cluster `cluster` (none if 0) with voters 1 to 3.
    fn status(id: NodeId, cluster: u128) -> NodeStatus {
        let voters = (1..=3)
            .map(|v| pb::Member {
                id: v,
                addr: format!("10.0.0.{v}:16379"),
            })
            .collect();
        NodeStatus::try_from(pb::StatusReply {
            id,
            role: "follower".into(),
            voters,
            cluster_id: match cluster {
                0 => String::new(),
                c => ClusterId::from(c).to_string(),
            },
            ..pb::StatusReply::default()
        })
        .expect("a readable status")
    }

    fn gave_up(last: RequestError) -> ClientError {
        ClientError::GaveUp { attempts: 1, last }
    }

    #[test]
    fn a_new_node_or_one_of_this_cluster_may_be_proposed() {
        let cluster = status(1, 7);
        assert!(check(4, ADDR, &cluster, Ok(status(4, 0))).is_ok());
        assert!(check(4, ADDR, &cluster, Ok(status(4, 7))).is_ok());
        // Nodes that predate cluster ids cannot be compared.
        assert!(check(4, ADDR, &status(1, 0), Ok(status(4, 9))).is_ok());
    }

    #[test]
    fn a_node_not_running_there_is_refused_with_how_to_start_it() {
        let cluster = status(1, 7);
        for e in [
            gave_up(RequestError::Transport {
                detail: "connection refused".into(),
                retriable: true,
            }),
            gave_up(RequestError::Timeout("no answer".into())),
            gave_up(RequestError::Shutdown("stopping".into())),
        ] {
            let r = check(4, ADDR, &cluster, Err(e)).unwrap_err();
            assert!(matches!(r, Refusal::NotRunning { id: 4, .. }), "{r:?}");
            let said = r.to_string();
            assert!(said.contains("start node 4 there first"), "{said}");
            assert!(!said.contains("transit"), "{said}");
        }
    }

    #[test]
    fn another_node_there_is_refused_naming_it() {
        let cluster = status(1, 7);
        let r = check(4, ADDR, &cluster, Ok(status(5, 0))).unwrap_err();
        assert!(matches!(r, Refusal::OtherNode { found: 5, .. }), "{r:?}");
        assert!(
            r.to_string().contains("`kv member add 5 10.0.0.4:16379`"),
            "{r}"
        );
        let r = check(4, "10.0.0.2:16379", &cluster, Ok(status(2, 7))).unwrap_err();
        assert!(
            r.to_string()
                .contains("node 2 is already a member (at 10.0.0.2:16379)"),
            "{r}"
        );
    }

    #[test]
    fn a_node_of_another_cluster_is_refused_naming_both() {
        let r = check(4, ADDR, &status(1, 7), Ok(status(4, 9))).unwrap_err();
        assert!(
            matches!(r, Refusal::OtherCluster { theirs, ours, .. }
                if theirs == ClusterId::from(9) && ours == ClusterId::from(7)),
            "{r:?}"
        );
        assert!(r.to_string().contains("empty --data-dir"), "{r}");
    }

    #[test]
    fn credentials_or_an_unreadable_answer_are_refused_as_such() {
        let cluster = status(1, 7);
        let r = check(
            4,
            ADDR,
            &cluster,
            Err(gave_up(RequestError::Unauthenticated("invalid".into()))),
        )
        .unwrap_err();
        assert!(matches!(r, Refusal::Credentials { .. }), "{r:?}");
        let r = check(
            4,
            ADDR,
            &cluster,
            Err(ClientError::Refused(RequestError::Refused {
                code: None,
                message: "unknown role".into(),
            })),
        )
        .unwrap_err();
        assert!(matches!(r, Refusal::Unreadable { .. }), "{r:?}");
    }
}
