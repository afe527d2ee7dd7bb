//! Stable on-disk forms of the openraft values raftkit persists.
//!
//! The write-ahead log, the meta file and snapshot files never store openraft's own serde
//! output: openraft is a pinned alpha whose types still move. They store these small structs,
//! whose postcard encoding is part of raftkit's file format, and convert at the boundary.
//! Conversions from disk are fallible: a value that decodes but makes no sense (say, an empty
//! membership) is reported as corruption by the caller.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::collections::BTreeSet;

use openraft::BasicNode;
use serde::Deserialize;
use serde::Serialize;

use crate::types;
use crate::types::Entry;
use crate::types::LeaderId;
use crate::types::LogId;
use crate::types::Membership;
use crate::types::NodeId;
use crate::types::Payload;
use crate::types::Proposal;
use crate::types::StoredMembership;
use crate::types::Vote;

/// A log id: the leader's term and node, and the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DiskLogId {
    pub term: u64,
    pub node: NodeId,
    pub index: u64,
}

impl From<&LogId> for DiskLogId {
    fn from(id: &LogId) -> Self {
        DiskLogId {
            term: id.leader_id.term,
            node: id.leader_id.node_id,
            index: id.index,
        }
    }
}

impl From<DiskLogId> for LogId {
    fn from(d: DiskLogId) -> Self {
        types::log_id(d.term, d.node, d.index)
    }
}

/// A vote: the candidate's term and node, and whether a quorum granted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DiskVote {
    pub term: u64,
    pub node: NodeId,
    pub committed: bool,
}

impl From<&Vote> for DiskVote {
    fn from(v: &Vote) -> Self {
        DiskVote {
            term: v.leader_id.term,
            node: v.leader_id.node_id,
            committed: v.committed,
        }
    }
}

impl From<DiskVote> for Vote {
    fn from(d: DiskVote) -> Self {
        Vote {
            leader_id: LeaderId {
                term: d.term,
                node_id: d.node,
            },
            committed: d.committed,
        }
    }
}

/// A membership config: one voter set, or two during a joint change, and every node's address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DiskMembership {
    pub configs: Vec<BTreeSet<NodeId>>,
    pub nodes: BTreeMap<NodeId, String>,
}

impl From<&Membership> for DiskMembership {
    fn from(m: &Membership) -> Self {
        DiskMembership {
            configs: m.get_joint_config().clone(),
            nodes: m.nodes().map(|(id, n)| (*id, n.addr.clone())).collect(),
        }
    }
}

impl DiskMembership {
    /// Rebuilds the openraft membership; `Err` names what is inconsistent.
    pub fn to_membership(&self) -> Result<Membership, String> {
        let nodes: BTreeMap<NodeId, BasicNode> = self
            .nodes
            .iter()
            .map(|(id, addr)| (*id, BasicNode::new(addr)))
            .collect();
        Membership::new(self.configs.clone(), nodes).map_err(|e| e.to_string())
    }
}

/// A membership together with the log id of the entry that introduced it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DiskStoredMembership {
    pub log_id: Option<DiskLogId>,
    pub membership: DiskMembership,
}

impl From<&StoredMembership> for DiskStoredMembership {
    fn from(m: &StoredMembership) -> Self {
        DiskStoredMembership {
            log_id: m.log_id().as_ref().map(DiskLogId::from),
            membership: DiskMembership::from(m.membership()),
        }
    }
}

impl DiskStoredMembership {
    /// Rebuilds the openraft stored membership; `Err` names what is inconsistent.
    pub fn to_stored(&self) -> Result<StoredMembership, String> {
        Ok(StoredMembership::new(
            self.log_id.map(LogId::from),
            self.membership.to_membership()?,
        ))
    }
}

/// The payload of a log entry. `Normal` borrows when encoding, so appending does not clone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum DiskPayload<'a> {
    Blank,
    Normal(Cow<'a, Proposal>),
    Membership(DiskMembership),
}

/// A log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DiskEntry<'a> {
    pub log_id: DiskLogId,
    pub payload: DiskPayload<'a>,
}

impl<'a> From<&'a Entry> for DiskEntry<'a> {
    fn from(e: &'a Entry) -> Self {
        let payload = match &e.payload {
            Payload::Blank => DiskPayload::Blank,
            Payload::Normal(r) => DiskPayload::Normal(Cow::Borrowed(r)),
            Payload::Membership(m) => DiskPayload::Membership(DiskMembership::from(m)),
        };
        DiskEntry {
            log_id: DiskLogId::from(&e.log_id),
            payload,
        }
    }
}

impl DiskEntry<'_> {
    /// Rebuilds the openraft entry; `Err` names what is inconsistent.
    pub fn into_entry(self) -> Result<Entry, String> {
        let payload = match self.payload {
            DiskPayload::Blank => Payload::Blank,
            DiskPayload::Normal(r) => Payload::Normal(r.into_owned()),
            DiskPayload::Membership(m) => Payload::Membership(m.to_membership()?),
        };
        Ok(Entry {
            log_id: self.log_id.into(),
            payload,
        })
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::codec;
    use crate::types::Session;

    fn round_trip(e: &Entry) -> Entry {
        let bytes = codec::encode(&DiskEntry::from(e)).unwrap();
        codec::decode::<DiskEntry>(&bytes)
            .unwrap()
            .into_entry()
            .unwrap()
    }

    #[test]
    fn entries_round_trip() {
        let normal = Entry {
            log_id: types::log_id(3, 1, 9),
            payload: Payload::Normal(Proposal::SessionWrite(
                Session {
                    client_id: 5,
                    sequence: 6,
                },
                Bytes::from_static(b"abc"),
            )),
        };
        assert_eq!(round_trip(&normal), normal);
        for p in [
            Proposal::Write(Bytes::from_static(b"x")),
            Proposal::TimedWrite(1_800_000_000_000, Bytes::from_static(b"x")),
            Proposal::TimedSessionWrite(
                crate::types::Session {
                    client_id: 1,
                    sequence: 2,
                },
                u64::MAX,
                Bytes::from_static(b"y"),
            ),
            Proposal::RegisterSession,
            Proposal::RegisterKeyedSession(0xfeed_f00d),
            Proposal::CloseSession(42),
            Proposal::SetSessionCapacity(crate::types::SessionCapacity::default()),
            Proposal::TimedBatch(
                Some(crate::types::Session {
                    client_id: 3,
                    sequence: 4,
                }),
                1_800_000_000_000,
                vec![Bytes::from_static(b"a"), Bytes::from_static(b"bc")],
            ),
            Proposal::Combined(
                1_800_000_000_000,
                vec![
                    crate::types::Request {
                        session: None,
                        command: Bytes::from_static(b"a"),
                    },
                    crate::types::Request {
                        session: Some(crate::types::Session {
                            client_id: 5,
                            sequence: 6,
                        }),
                        command: Bytes::from_static(b"bc"),
                    },
                ],
            ),
        ] {
            let e = Entry {
                log_id: types::log_id(3, 1, 10),
                payload: Payload::Normal(p),
            };
            assert_eq!(round_trip(&e), e);
        }
        let blank = Entry {
            log_id: types::log_id(1, 2, 3),
            payload: Payload::Blank,
        };
        assert_eq!(round_trip(&blank), blank);
        let nodes: BTreeMap<NodeId, BasicNode> = [
            (1, BasicNode::new("a")),
            (2, BasicNode::new("b")),
            (3, BasicNode::new("c")),
        ]
        .into();
        let membership = Membership::new(vec![[1, 2].into()], nodes).unwrap();
        let member = Entry {
            log_id: types::log_id(1, 2, 4),
            payload: Payload::Membership(membership),
        };
        assert_eq!(round_trip(&member), member);
    }

    /// A normal entry's payload as the first format wrote it.
    #[derive(Serialize)]
    struct FirstRequest {
        session: Option<Session>,
        command: Bytes,
    }

    #[derive(Serialize)]
    enum FirstPayload {
        #[allow(dead_code)]
        Blank,
        Normal(FirstRequest),
    }

    #[derive(Serialize)]
    struct FirstEntry {
        log_id: DiskLogId,
        payload: FirstPayload,
    }

    #[test]
    fn entries_of_the_first_format_still_decode() {
        let decode = |session| {
            let old = FirstEntry {
                log_id: DiskLogId::from(&types::log_id(2, 1, 7)),
                payload: FirstPayload::Normal(FirstRequest {
                    session,
                    command: Bytes::from_static(b"cmd"),
                }),
            };
            let bytes = codec::encode(&old).unwrap();
            let e = codec::decode::<DiskEntry>(&bytes)
                .unwrap()
                .into_entry()
                .unwrap();
            assert_eq!(e.log_id, types::log_id(2, 1, 7));
            e.payload
        };
        assert_eq!(
            decode(None),
            Payload::Normal(Proposal::Write(Bytes::from_static(b"cmd")))
        );
        let s = Session {
            client_id: u64::MAX - 3,
            sequence: 300,
        };
        assert_eq!(
            decode(Some(s)),
            Payload::Normal(Proposal::LegacySessionWrite(s, Bytes::from_static(b"cmd"))),
            "an old sessioned write keeps its old rules"
        );
        // And the new encoding is as compact as the old one.
        let new = codec::encode(&Proposal::SessionWrite(s, Bytes::from_static(b"cmd"))).unwrap();
        let old = codec::encode(&FirstRequest {
            session: Some(s),
            command: Bytes::from_static(b"cmd"),
        })
        .unwrap();
        assert_eq!(new.len(), old.len());
    }

    #[test]
    fn inconsistent_membership_is_an_error() {
        // Voter 9 has no address.
        let bad = DiskMembership {
            configs: vec![[9].into()],
            nodes: BTreeMap::new(),
        };
        assert!(bad.to_membership().is_err());
    }
}
