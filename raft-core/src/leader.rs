//! [`LeaderHint`]: who leads the cluster, as far as a node knows.

use std::fmt;

use crate::types::NodeId;

/// The leader a node knows of: its id and the address it was added with, either of which may be
/// unknown (during an election, or on a node that has not heard from a leader yet).
///
/// It is what [`Node::leader`](crate::Node::leader) returns and what
/// [`Error::NotLeader`](crate::Error::NotLeader) carries; a transport carries the same pair to
/// remote clients with a redirect. It displays as `the leader is node 3 at 10.0.0.3:7000`,
/// `the leader is node 3`, or `the leader is unknown`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct LeaderHint {
    id: Option<NodeId>,
    addr: Option<String>,
}

impl LeaderHint {
    /// A hint naming leader `id` (if known) at `addr` (if known). An address without an id is
    /// kept, but the hint displays as unknown: a client cannot check whom it reaches there.
    pub fn new(id: Option<NodeId>, addr: Option<String>) -> LeaderHint {
        LeaderHint { id, addr }
    }

    /// A hint that names no leader.
    pub fn unknown() -> LeaderHint {
        LeaderHint::default()
    }

    /// The leader's node id, if known.
    pub fn id(&self) -> Option<NodeId> {
        self.id
    }

    /// The leader's address (the one it was added to the cluster with), if known.
    pub fn addr(&self) -> Option<&str> {
        self.addr.as_deref()
    }

    /// Whether the hint names a leader.
    pub fn is_known(&self) -> bool {
        self.id.is_some()
    }

    /// The id and the address, taken apart.
    pub fn into_parts(self) -> (Option<NodeId>, Option<String>) {
        (self.id, self.addr)
    }
}

impl fmt::Display for LeaderHint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.id, &self.addr) {
            (Some(id), Some(a)) => write!(f, "the leader is node {id} at {a}"),
            (Some(id), None) => write!(f, "the leader is node {id}"),
            (None, _) => f.write_str("the leader is unknown"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_what_is_known() {
        let both = LeaderHint::new(Some(3), Some("10.0.0.3:7000".into()));
        assert_eq!(both.to_string(), "the leader is node 3 at 10.0.0.3:7000");
        assert_eq!((both.id(), both.addr()), (Some(3), Some("10.0.0.3:7000")));
        assert_eq!(
            LeaderHint::new(Some(2), None).to_string(),
            "the leader is node 2"
        );
        let unknown = LeaderHint::unknown();
        assert!(!unknown.is_known());
        assert_eq!(unknown.to_string(), "the leader is unknown");
        assert_eq!(
            LeaderHint::new(None, Some("x:1".into())).to_string(),
            "the leader is unknown"
        );
    }
}
