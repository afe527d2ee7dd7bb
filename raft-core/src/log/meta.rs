//! The log's meta file: the node id, the vote and the purge point.
//!
//! Layout of `<wal dir>/meta`: the 8 magic bytes `RKMETA01`, then one record in the legacy
//! framing (see `record.rs`) whose payload is the postcard encoding of [`Meta`]. The meta file
//! holds no client data, so it needs no salt. The file is only ever replaced whole with
//! `fsutil::write_atomically`, so it is either the old or the new version; a damaged file is
//! corruption, never a torn write.

use std::fs;
use std::io;
use std::path::Path;

use serde::Deserialize;
use serde::Serialize;

use super::LogError;
use super::record;
use crate::codec;
use crate::disk::DiskLogId;
use crate::disk::DiskVote;
use crate::fsutil;
use crate::types::NodeId;

const MAGIC: &[u8; 8] = b"RKMETA01";
pub(crate) const FILE_NAME: &str = "meta";

/// What the log keeps beside its segments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Meta {
    /// The node this log belongs to; a log is never opened as another node.
    pub node_id: NodeId,
    /// The last vote this node saved.
    pub vote: Option<DiskVote>,
    /// Entries up to and including this log id have been purged.
    pub purged: Option<DiskLogId>,
}

/// The refusal of a log directory `dir` whose meta file is missing although `beside` (what
/// shows the node ran before: its segments, a snapshot) is there: the node's vote and purge
/// point are lost, so it must not start.
pub(crate) fn lost(dir: &Path, beside: impl std::fmt::Display) -> LogError {
    LogError::Corrupt {
        file: dir.join(FILE_NAME),
        offset: 0,
        reason: format!(
            "missing, yet {beside}: this node's vote and purge point are lost, so it must not \
             start; replace the node (docs/operations.md, \"Replace a failed node\")"
        ),
    }
}

impl Meta {
    /// Reads the meta file in `dir`; `Ok(None)` if there is none yet.
    pub fn load(dir: &Path) -> Result<Option<Meta>, LogError> {
        let path = dir.join(FILE_NAME);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(fsutil::at("read", &path)(e).into()),
        };
        let corrupt = |reason: String| LogError::Corrupt {
            file: path.clone(),
            offset: 0,
            reason,
        };
        if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
            return Err(corrupt("not a raftkit meta file (bad magic)".into()));
        }
        let rest = &bytes[MAGIC.len()..];
        match record::Framing::Legacy.parse(rest) {
            record::Parsed::Record { len } if record::LEGACY_HEADER_LEN + len == rest.len() => {
                let meta = codec::decode(&rest[record::LEGACY_HEADER_LEN..])
                    .map_err(|e| corrupt(format!("undecodable meta: {e}")))?;
                Ok(Some(meta))
            }
            record::Parsed::Record { .. } => {
                Err(corrupt("trailing bytes after the meta record".into()))
            }
            record::Parsed::End => Err(corrupt("empty meta record".into())),
            record::Parsed::Invalid(why) => Err(corrupt(why.into())),
        }
    }

    /// Replaces the meta file in `dir` atomically and durably.
    pub fn store(&self, dir: &Path) -> Result<(), LogError> {
        let mut buf = MAGIC.to_vec();
        record::Framing::Legacy
            .append_framed(&mut buf, |b| codec::encode_into(self, b))
            .map_err(|e| LogError::Encode(e.to_string()))?
            .map_err(|e| LogError::Encode(e.to_string()))?;
        fsutil::write_atomically(dir, FILE_NAME, &buf)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_detects_damage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Meta::load(dir.path()).unwrap(), None);
        let meta = Meta {
            node_id: 3,
            vote: Some(DiskVote {
                term: 2,
                node: 1,
                committed: true,
            }),
            purged: Some(DiskLogId {
                term: 1,
                node: 1,
                index: 10,
            }),
        };
        meta.store(dir.path()).unwrap();
        assert_eq!(Meta::load(dir.path()).unwrap(), Some(meta));

        let path = dir.path().join(FILE_NAME);
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        fs::write(&path, &bytes).unwrap();
        let err = Meta::load(dir.path()).unwrap_err();
        assert!(matches!(err, LogError::Corrupt { .. }), "{err}");
    }
}
