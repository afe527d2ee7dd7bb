//! The cluster id: which cluster a node belongs to.
//!
//! [`Node::initialize`](crate::Node::initialize) draws a random [`ClusterId`]. Every other
//! member learns it from the first internal RPC it accepts (a fresh node has none) and keeps it
//! for good: it is stored in `<data dir>/cluster-id` (32 hex digits and a newline, replaced
//! atomically) and from then on a node refuses RPCs that carry another cluster's id. So when an
//! address is reused, a node of one cluster cannot be driven by another cluster's leader.
//!
//! Nodes whose data predates cluster ids have none and accept requests without one; they adopt
//! the id of the first request that carries one.

use std::fmt;
use std::path::Path;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Mutex;
use std::sync::OnceLock;

use serde::Deserialize;
use serde::Serialize;

use crate::fsutil;
use crate::fsutil::PathError;

/// The file in a node's data directory that holds its cluster id.
pub const FILE_NAME: &str = "cluster-id";

/// A cluster's identity: 128 random bits, written as 32 lower-case hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ClusterId(u128);

impl ClusterId {
    /// A new random id.
    pub fn random() -> ClusterId {
        ClusterId(rand::random())
    }

    /// The id as a number.
    pub fn as_u128(self) -> u128 {
        self.0
    }
}

impl From<u128> for ClusterId {
    fn from(v: u128) -> Self {
        ClusterId(v)
    }
}

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterId({self})")
    }
}

/// A string that is not 32 hex digits.
#[derive(Debug, thiserror::Error)]
#[error("not a cluster id (expected 32 hex digits): {0:?}")]
pub struct ParseClusterIdError(String);

impl FromStr for ClusterId {
    type Err = ParseClusterIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if t.len() != 32 {
            return Err(ParseClusterIdError(s.chars().take(64).collect()));
        }
        u128::from_str_radix(t, 16)
            .map(ClusterId)
            .map_err(|_| ParseClusterIdError(s.chars().take(64).collect()))
    }
}

/// Why a node refused a request's cluster id, or could not keep its own.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterIdError {
    /// The request comes from another cluster.
    #[error("request from cluster {theirs} refused by a node of cluster {ours}")]
    Mismatch {
        /// This node's cluster.
        ours: ClusterId,
        /// The sender's cluster.
        theirs: ClusterId,
    },
    /// The request carries no cluster id, but this node belongs to a cluster.
    #[error("request without a cluster id refused by a node of cluster {ours}")]
    Missing {
        /// This node's cluster.
        ours: ClusterId,
    },
    /// The id could not be read or stored.
    #[error(transparent)]
    Io(#[from] PathError),
    /// The stored id is damaged.
    #[error("{path}: {source}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: ParseClusterIdError,
    },
}

/// A node's cluster id: unknown until initialize or the first accepted RPC, then fixed.
pub(crate) struct ClusterIdentity {
    dir: Option<PathBuf>,
    id: OnceLock<ClusterId>,
    adopting: Mutex<()>,
}

impl ClusterIdentity {
    /// The identity stored in `dir` (none yet if the file is missing); `None` keeps it in memory.
    pub fn open(dir: Option<&Path>) -> Result<ClusterIdentity, ClusterIdError> {
        let identity = ClusterIdentity {
            dir: dir.map(Path::to_path_buf),
            id: OnceLock::new(),
            adopting: Mutex::new(()),
        };
        if let Some(dir) = dir {
            let path = dir.join(FILE_NAME);
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    let id = text
                        .parse()
                        .map_err(|source| ClusterIdError::Corrupt { path, source })?;
                    let _ = identity.id.set(id);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(fsutil::at("read", &path)(e).into()),
            }
        }
        Ok(identity)
    }

    /// The id, once known.
    pub fn get(&self) -> Option<ClusterId> {
        self.id.get().copied()
    }

    /// Accepts a request carrying `theirs`: true if it matches, adopting it (durably, before
    /// returning) when this node has no id yet. Blocking when it adopts.
    pub fn check_or_adopt(&self, theirs: Option<ClusterId>) -> Result<(), ClusterIdError> {
        match (self.get(), theirs) {
            (Some(ours), Some(theirs)) if ours == theirs => Ok(()),
            (Some(ours), Some(theirs)) => Err(ClusterIdError::Mismatch { ours, theirs }),
            (Some(ours), None) => Err(ClusterIdError::Missing { ours }),
            (None, None) => Ok(()),
            (None, Some(theirs)) => self.adopt(theirs),
        }
    }

    /// Takes `id` as this node's cluster id (durably) unless it already has another one.
    pub fn adopt(&self, id: ClusterId) -> Result<(), ClusterIdError> {
        let _one_at_a_time = crate::sync::lock(&self.adopting);
        if let Some(ours) = self.get() {
            return if ours == id {
                Ok(())
            } else {
                Err(ClusterIdError::Mismatch { ours, theirs: id })
            };
        }
        if let Some(dir) = &self.dir {
            fsutil::ensure_dir(dir)?;
            fsutil::write_atomically(dir, FILE_NAME, format!("{id}\n").as_bytes())?;
        }
        let _ = self.id.set(id);
        tracing::info!(cluster = %id, "cluster id set");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_print_and_parse() {
        let id = ClusterId::random();
        assert_eq!(id.to_string().len(), 32);
        assert_eq!(id.to_string().parse::<ClusterId>().unwrap(), id);
        assert!("xyz".parse::<ClusterId>().is_err());
        assert!("0".repeat(31).parse::<ClusterId>().is_err());
    }

    #[test]
    fn adopted_once_stored_and_enforced() {
        let dir = tempfile::tempdir().unwrap();
        let a = ClusterId::random();
        let b = ClusterId::random();
        let ident = ClusterIdentity::open(Some(dir.path())).unwrap();
        assert_eq!(ident.get(), None);
        ident.check_or_adopt(None).unwrap();
        ident.check_or_adopt(Some(a)).unwrap();
        assert_eq!(ident.get(), Some(a));
        let err = ident.check_or_adopt(Some(b)).unwrap_err();
        assert!(err.to_string().contains(&a.to_string()), "{err}");
        assert!(err.to_string().contains(&b.to_string()), "{err}");
        assert!(matches!(
            ident.check_or_adopt(None),
            Err(ClusterIdError::Missing { .. })
        ));

        let reopened = ClusterIdentity::open(Some(dir.path())).unwrap();
        assert_eq!(reopened.get(), Some(a), "the id survives a restart");
        assert!(reopened.check_or_adopt(Some(b)).is_err());

        std::fs::write(dir.path().join(FILE_NAME), "garbage").unwrap();
        assert!(matches!(
            ClusterIdentity::open(Some(dir.path())),
            Err(ClusterIdError::Corrupt { .. })
        ));
    }
}
