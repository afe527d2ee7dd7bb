//! Incarnations: a wiped node must come back under a new id.
//!
//! A Raft node's vote is part of its durable state: a node that forgets it (its data directory
//! was lost or deleted) could grant a second vote in a term it already voted in, and two leaders
//! could be elected in one term; and a wiped voter that is counted towards a quorum no longer
//! holds the entries it acknowledged, so a committed entry could be lost. raftkit's rule: **a
//! wiped node cannot take part under its old id — it must come back with a new id.**
//!
//! # How it is enforced
//!
//! * Every data directory has an *incarnation*: 64 random bits drawn when the directory is
//!   first used and kept in `<data dir>/incarnation` (16 hex digits and a newline, written to a
//!   temporary file, fsynced and renamed, the directory fsynced). A wiped directory gets a new
//!   one, and so does one whose log lost its meta file (the vote) or the whole `wal/`
//!   directory while the incarnation file survived: that node forgot its vote and its entries
//!   just as a wiped one did. An in-memory node draws a new one each time it starts — it forgets
//!   its votes too.
//! * The cluster binds each member id to its incarnation in the **replicated** state: the leader
//!   proposes a binding entry the first time it learns a member's incarnation (from a request or
//!   an answer of that member), and a binding, once applied, never changes. Bindings are part of
//!   snapshots.
//! * Every internal request carries the sender's incarnation and the incarnation the sender's
//!   applied state binds to the receiver; every answer carries the answerer's incarnation. The
//!   receiving node refuses ([`IncarnationError`]), before the request reaches consensus:
//!   - a request that expects another incarnation of it (it was wiped: it must not vote or
//!     acknowledge entries it does not hold), and
//!   - a request from, or an answer by, a node whose incarnation differs from the one bound to
//!     its id (a wiped node campaigning or answering).
//!
//! So a wiped node's vote request is refused by every node that has applied its binding, and a
//! vote request for it is refused by the wiped node itself: it cannot vote twice in a term, and
//! the acknowledgements of a node that lost its log are never counted. It learns nothing from the
//! cluster either, and stays out until an operator removes its old id and adds it under a new
//! one. Bindings are never dropped, so an id whose node was wiped cannot be used again, even
//! after it was removed; a node that joins by itself says which incarnation it is
//! ([`Node::add_learner_as`](crate::Node::add_learner_as)) and is refused at once with a clear
//! error. (A removed node whose data is intact may be added back under its id.)
//!
//! # Where no binding exists yet
//!
//! A member is bound once the leader has exchanged one message with it (in practice within the
//! first heartbeat after it joins or after a cluster is formed, or after an upgrade from a
//! version without incarnations). Until then, requests carry no expectation and are checked as
//! before; a node wiped in that window is not detected. Transports that do not send
//! incarnations (written against an older `RpcHandler`) are not checked.
//!
//! # Recovery
//!
//! To bring back a node whose data is lost: remove its id from the cluster, wipe its data
//! directory, start it with a **new** id and add it (as a learner, then a voter once caught up).

use std::path::Path;

use crate::fsutil;
use crate::fsutil::PathError;
use crate::types::NodeId;

/// The file in a node's data directory that holds its incarnation.
pub const FILE_NAME: &str = "incarnation";

/// Why a request or an answer was refused for its incarnations.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IncarnationError {
    /// The request was meant for an earlier incarnation of this node: its data was wiped since,
    /// so it must not vote or acknowledge entries under this id.
    #[error(
        "node {node} was wiped: the request expects its incarnation {expected:016x}, it is {actual:016x}; remove node {node} and add it back under a new id"
    )]
    Wiped {
        /// This node.
        node: NodeId,
        /// The incarnation the sender expected.
        expected: u64,
        /// This node's incarnation.
        actual: u64,
    },
    /// The peer's incarnation is not the one bound to its id: its data was wiped since.
    #[error(
        "node {peer} was wiped: its id is bound to incarnation {bound:016x}, it is {actual:016x}; remove node {peer} and add it back under a new id"
    )]
    PeerWiped {
        /// The peer.
        peer: NodeId,
        /// The incarnation bound to its id.
        bound: u64,
        /// The incarnation it sent.
        actual: u64,
    },
}

/// Reads this data directory's incarnation, or draws and stores one (durably) if it has none,
/// or if `log_kept` is false: the log's durable state (its vote) is gone, so the node is a wiped
/// one whatever the file says. `None` (an in-memory node): a new one each time.
pub(crate) fn open(dir: Option<&Path>, log_kept: bool) -> Result<u64, PathError> {
    let Some(dir) = dir else {
        return Ok(draw());
    };
    let path = dir.join(FILE_NAME);
    match std::fs::read_to_string(&path) {
        Ok(text) if !log_kept => {
            let v = draw();
            fsutil::write_atomically(dir, FILE_NAME, format!("{v:016x}\n").as_bytes())?;
            tracing::error!(
                old = %text.trim(),
                incarnation = %format!("{v:016x}"),
                "this data directory's log is missing (no vote, no entries) although it has an incarnation: the node counts as wiped, under a new incarnation; if it was a member, the cluster refuses it until its id is removed and it is added back under a new id"
            );
            Ok(v)
        }
        Ok(text) => u64::from_str_radix(text.trim(), 16)
            .ok()
            .filter(|v| *v != 0 && text.trim().len() == 16)
            .ok_or_else(|| {
                fsutil::at("read", &path)(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "not an incarnation (16 hex digits): {:?}",
                        text.chars().take(40).collect::<String>()
                    ),
                ))
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let v = draw();
            fsutil::ensure_dir(dir)?;
            fsutil::write_atomically(dir, FILE_NAME, format!("{v:016x}\n").as_bytes())?;
            tracing::info!(incarnation = %format!("{v:016x}"), "new data directory: incarnation drawn");
            Ok(v)
        }
        Err(e) => Err(fsutil::at("read", &path)(e)),
    }
}

/// A random, non-zero incarnation.
fn draw() -> u64 {
    loop {
        let v: u64 = rand::random();
        if v != 0 {
            return v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drawn_once_kept_and_new_after_a_wipe() {
        let dir = tempfile::tempdir().unwrap();
        let first = open(Some(dir.path()), false).unwrap();
        assert_eq!(open(Some(dir.path()), true).unwrap(), first);
        std::fs::remove_file(dir.path().join(FILE_NAME)).unwrap();
        let second = open(Some(dir.path()), true).unwrap();
        assert_ne!(second, first);
        // The log lost while the file stayed: a new one, kept from then on.
        let third = open(Some(dir.path()), false).unwrap();
        assert_ne!(third, second);
        assert_eq!(open(Some(dir.path()), true).unwrap(), third);
        std::fs::write(dir.path().join(FILE_NAME), "zz\n").unwrap();
        assert!(open(Some(dir.path()), true).is_err());
    }
}
