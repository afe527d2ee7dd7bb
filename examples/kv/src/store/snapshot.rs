//! The store's snapshot format, versioned.
//!
//! * Version 1 (string-only stores): a sequence of `(key, (value, expires_at))`, with no header.
//! * Version 2: [`MAGIC`], the version byte, then a sequence whose first record is the store's
//!   write counters and whose other records are `(key, value)`.
//!
//! The magic's nine bytes all have their top bit set: a version 1 snapshot starts with the
//! sequence's length as a varint, which would need a length of 2^63 or more to start so. A
//! snapshot with the magic and an unknown version is refused with an error naming the version.

use std::io;
use std::io::Read;
use std::io::Write;

use bytes::Bytes;
use serde::Deserialize;
use serde::Serialize;

use super::Data;
use super::Store;
use super::Value;
use crate::slots::Slot;
use crate::slots::SlotMap;

/// How a versioned snapshot starts.
const MAGIC: [u8; 9] = [0xFF, 0xEB, 0xF6, 0xD3, 0xCE, 0xC1, 0xD0, 0xB2, 0x80];
/// The format this build writes.
pub const FORMAT: u8 = 2;

/// A point-in-time view of the store's values, taken on the apply path for a snapshot; it
/// shares storage with the live store (see [`SlotMap`]): taking it copies 1024 shard pointers,
/// and serialising it walks the shards without any lock, so neither the apply path nor readers
/// wait for a snapshot, and no second copy of the values is made.
pub struct StoreSnapshot {
    map: SlotMap<Value>,
    header: Header,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Header {
    writes: u64,
    removed: u64,
}

/// One record of a version 2 snapshot, as written.
#[derive(Serialize)]
enum RecordRef<'a> {
    Header(Header),
    Key(&'a Bytes, &'a Value),
}

/// One record of a version 2 snapshot, as read.
#[derive(Deserialize)]
enum Record {
    Header(Header),
    Key(Bytes, Value),
}

/// A version 1 value: a string and its expiry.
#[derive(Deserialize)]
struct ValueV1 {
    data: Bytes,
    expires_at: Option<u64>,
}

/// Serialises as a sequence of records without collecting them first.
impl Serialize for StoreSnapshot {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        // The length up front: compact formats write it before the elements.
        let mut seq = serializer.serialize_seq(Some(self.map.len() + 1))?;
        seq.serialize_element(&RecordRef::Header(self.header))?;
        for (slot, value) in self.map.iter() {
            seq.serialize_element(&RecordRef::Key(&slot.1, value))?;
        }
        seq.end()
    }
}

impl StoreSnapshot {
    pub(super) fn of(store: &Store) -> StoreSnapshot {
        StoreSnapshot {
            map: store.map.clone(),
            header: Header {
                writes: store.writes,
                removed: store.removed,
            },
        }
    }

    pub(super) fn write(self, out: &mut dyn Write) -> io::Result<()> {
        out.write_all(&MAGIC)?;
        out.write_all(&[FORMAT])?;
        raft_core::write_serde(&self, out)
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Restores `store` (empty) from a snapshot of any format this build reads.
pub(super) fn restore(store: &mut Store, input: &mut dyn Read) -> io::Result<()> {
    let mut head = [0u8; MAGIC.len()];
    let mut got = 0;
    while got < head.len() {
        match input.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if got == MAGIC.len() && head == MAGIC {
        let mut version = [0u8];
        input.read_exact(&mut version)?;
        return match version[0] {
            2 => restore_v2(store, input),
            v => Err(invalid(format!(
                "the snapshot has format version {v}; this kv reads versions 1 and {FORMAT}"
            ))),
        };
    }
    // Version 1: what was read is the start of the sequence.
    let mut whole = (&head[..got]).chain(input);
    raft_core::read_serde_each(&mut whole, |(key, v): (Bytes, ValueV1)| {
        store.put(
            Slot::new(key),
            Value {
                data: Data::Str(v.data),
                expires_at: v.expires_at,
                version: 0,
            },
        );
        Ok(())
    })?;
    Ok(())
}

fn restore_v2(store: &mut Store, input: &mut dyn Read) -> io::Result<()> {
    let mut header = None;
    raft_core::read_serde_each(input, |record: Record| {
        match record {
            Record::Header(h) if header.is_none() => header = Some(h),
            Record::Header(_) => return Err(invalid("a second snapshot header".into())),
            Record::Key(key, value) => {
                if header.is_none() {
                    return Err(invalid("a snapshot record before its header".into()));
                }
                // `put` gives a value the current write's number: the snapshot's version.
                store.writes = value.version;
                store.put(Slot::new(key), value);
            }
        }
        Ok(())
    })?;
    let h = header.ok_or_else(|| invalid("a snapshot without its header".into()))?;
    store.writes = h.writes;
    store.removed = h.removed;
    Ok(())
}
