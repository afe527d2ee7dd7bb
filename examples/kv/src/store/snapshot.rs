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
    let header = read(input, |key, value| {
        // `put` gives a value the current write's number: the snapshot's version.
        store.writes = value.version;
        store.put(Slot::new(key), value);
        Ok(())
    })?;
    if let Some(h) = header {
        store.writes = h.writes;
        store.removed = h.removed;
    }
    Ok(())
}

/// Reads a snapshot of any format this build reads exactly as [`restore`] does, and fails
/// where it would, keeping nothing: each record is decoded and dropped, so the check needs
/// memory for one record, not for the store.
pub(super) fn check(input: &mut dyn Read) -> io::Result<()> {
    read(input, |_, _| Ok(())).map(drop)
}

/// Decodes a snapshot of any format this build reads, handing each key and its value to
/// `each` as soon as it is decoded; returns the write counters of a version 2 snapshot.
fn read(
    input: &mut dyn Read,
    mut each: impl FnMut(Bytes, Value) -> io::Result<()>,
) -> io::Result<Option<Header>> {
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
            2 => read_v2(input, each).map(Some),
            v => Err(invalid(format!(
                "the snapshot has format version {v}; this kv reads versions 1 and {FORMAT}"
            ))),
        };
    }
    // Version 1: what was read is the start of the sequence.
    let mut whole = (&head[..got]).chain(input);
    raft_core::read_serde_each(&mut whole, |(key, v): (Bytes, ValueV1)| {
        each(
            key,
            Value {
                data: Data::Str(v.data),
                expires_at: v.expires_at,
                version: 0,
            },
        )
    })?;
    Ok(None)
}

fn read_v2(
    input: &mut dyn Read,
    mut each: impl FnMut(Bytes, Value) -> io::Result<()>,
) -> io::Result<Header> {
    let mut header = None;
    raft_core::read_serde_each(input, |record: Record| match record {
        Record::Header(h) if header.is_none() => {
            header = Some(h);
            Ok(())
        }
        Record::Header(_) => Err(invalid("a second snapshot header".into())),
        Record::Key(key, value) => {
            if header.is_none() {
                return Err(invalid("a snapshot record before its header".into()));
            }
            each(key, value)
        }
    })?;
    header.ok_or_else(|| invalid("a snapshot without its header".into()))
}

#[cfg(test)]
mod tests {
    use raft_core::StateMachine;

    use super::*;

    fn snapshot_of(keys: usize) -> Vec<u8> {
        let mut store = Store::default();
        for i in 0..keys {
            store.writes += 1;
            store.put(
                Slot::new(Bytes::from(format!("key{i}"))),
                Value {
                    data: Data::Str(Bytes::from(vec![b'v'; 100])),
                    expires_at: (i % 2 == 0).then_some(1_000_000),
                    version: 0,
                },
            );
        }
        let mut bytes = Vec::new();
        Store::write_snapshot(store.snapshot(), &mut bytes).unwrap();
        bytes
    }

    #[test]
    fn the_check_fails_exactly_where_a_restore_would_and_keeps_nothing() {
        let bytes = snapshot_of(50);
        Store::check_snapshot(&mut bytes.as_slice()).unwrap();
        let mut restored = Store::default();
        restored.restore(&mut bytes.as_slice()).unwrap();

        // Cut anywhere, or with a byte after the end: both refuse.
        for cut in (0..bytes.len()).step_by(37).chain([bytes.len() - 1]) {
            let short = &bytes[..cut];
            let check = Store::check_snapshot(&mut &short[..]);
            let restore = Store::default().restore(&mut &short[..]);
            assert!(check.is_err(), "cut at {cut} passed the check");
            assert_eq!(restore.is_err(), check.is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Store::check_snapshot(&mut longer.as_slice()).is_err());

        // A newer format is refused by name.
        let mut newer = bytes.clone();
        newer[MAGIC.len()] = 9;
        let err = Store::check_snapshot(&mut newer.as_slice()).unwrap_err();
        assert!(err.to_string().contains("format version 9"), "{err}");

        // The string-only format before it still passes, as it still restores.
        let mut v1 = Vec::new();
        raft_core::write_serde(
            &vec![(Bytes::from("k"), (Bytes::from("v"), None::<u64>))],
            &mut v1,
        )
        .unwrap();
        Store::check_snapshot(&mut v1.as_slice()).unwrap();
    }
}
