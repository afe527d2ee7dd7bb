//! Operations on hash values. A hash's fields expire with its key; an emptied hash is removed.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::Deserialize;
use serde::Deserializer;
use serde::Serialize;
use serde::Serializer;
use serde::ser::SerializeMap;

use super::Data;
use super::Error;
use super::Glob;
use super::ReadOp;
use super::Reply;
use super::Store;
use super::glob::matches_bounded;
use super::strings::Integers;
use super::strings::add_float;
use super::strings::add_int;
use crate::slots::Slot;
use crate::slots::scan_step;

/// A hash's fields and their values, ordered by each field's [`Slot`] (a stable 64-bit hash of
/// the field, then the field), the same on every replica and the order the keyspace has. So
/// `HSCAN`'s cursor is the hash of the next field, which stays valid whatever fields come and
/// go, and a step costs O(log n + count). In a snapshot it is a plain map of fields to values,
/// as earlier versions wrote it (they read this one, and this reads theirs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct HashMap(BTreeMap<Slot, Bytes>);

impl HashMap {
    /// The value of `field`.
    pub fn get(&self, field: &Bytes) -> Option<&Bytes> {
        self.0.get(&Slot::of(field))
    }

    /// Whether `field` is set.
    pub fn contains_key(&self, field: &Bytes) -> bool {
        self.0.contains_key(&Slot::of(field))
    }

    /// Sets `field`, answering its previous value.
    pub fn insert(&mut self, field: Bytes, value: Bytes) -> Option<Bytes> {
        self.0.insert(Slot::new(field), value)
    }

    /// Removes `field`, answering its value.
    pub fn remove(&mut self, field: &Bytes) -> Option<Bytes> {
        self.0.remove(&Slot::of(field))
    }

    /// How many fields there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no fields.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Every field and its value, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (&Bytes, &Bytes)> {
        self.0.iter().map(|(slot, v)| (&slot.1, v))
    }

    /// Every field, in slot order.
    pub fn keys(&self) -> impl Iterator<Item = &Bytes> {
        self.0.keys().map(|slot| &slot.1)
    }

    /// Every value, in the order of their fields.
    pub fn values(&self) -> impl Iterator<Item = &Bytes> {
        self.0.values()
    }

    /// The fields whose slot's hash is at least `hash`, in slot order.
    fn starting_at(&self, hash: u64) -> impl Iterator<Item = (&Slot, &Bytes)> {
        self.0.range(Slot(hash, Bytes::new())..)
    }
}

impl Serialize for HashMap {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.len()))?;
        for (field, value) in self.iter() {
            map.serialize_entry(field, value)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for HashMap {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<HashMap, D::Error> {
        let fields = BTreeMap::<Bytes, Bytes>::deserialize(deserializer)?;
        Ok(HashMap(
            fields
                .into_iter()
                .map(|(field, value)| (Slot::new(field), value))
                .collect(),
        ))
    }
}

impl Store {
    /// The hash at `key`: `Ok(None)` if there is none, an error if the key holds another type.
    fn hash(&self, key: &Bytes, now: u64) -> Result<Option<&HashMap>, Error> {
        self.open(key, now, |d| match d {
            Data::Hash(h) => Some(&**h),
            _ => None,
        })
    }

    /// Changes the hash at `key` (see [`Store::edit`]).
    fn edit_hash<T>(&mut self, key: Bytes, now: u64, edit: impl FnOnce(&mut HashMap) -> T) -> T {
        self.edit(
            key,
            now,
            |d| match d {
                Data::Hash(h) => Some(h),
                _ => None,
            },
            Data::Hash,
            edit,
        )
    }

    pub(super) fn hset(
        &mut self,
        key: Bytes,
        pairs: Vec<(Bytes, Bytes)>,
        nx: bool,
        now: u64,
    ) -> Reply {
        if let Err(e) = self.hash(&key, now) {
            return Reply::Fault(e);
        }
        if nx
            && let Ok(Some(h)) = self.hash(&key, now)
            && pairs.iter().all(|(f, _)| h.contains_key(f))
        {
            return Reply::Int(0);
        }
        let added = self.edit_hash(key, now, |h| {
            let mut added = 0;
            for (f, v) in pairs {
                if nx && h.contains_key(&f) {
                    continue;
                }
                if h.insert(f, v).is_none() {
                    added += 1;
                }
            }
            added
        });
        Reply::Int(added)
    }

    pub(super) fn hdel(&mut self, key: Bytes, fields: Vec<Bytes>, now: u64) -> Reply {
        match self.hash(&key, now) {
            Err(e) => return Reply::Fault(e),
            Ok(None) => return Reply::Int(0),
            Ok(Some(h)) if !fields.iter().any(|f| h.contains_key(f)) => return Reply::Int(0),
            Ok(Some(_)) => {}
        }
        let removed = self.edit_hash(key, now, |h| {
            fields.iter().filter(|f| h.remove(f).is_some()).count()
        });
        Reply::Int(removed as i64)
    }

    pub(super) fn hincr_by(
        &mut self,
        key: Bytes,
        field: Bytes,
        by: i64,
        read: Integers,
        now: u64,
    ) -> Reply {
        let next = self.hash(&key, now).and_then(|h| {
            let current = h.and_then(|h| h.get(&field));
            add_int(current, by, read, Error::HashNotInteger)
        });
        match next {
            Ok(next) => {
                self.edit_hash(key, now, |h| h.insert(field, Bytes::from(next.to_string())));
                Reply::Int(next)
            }
            Err(e) => Reply::Fault(e),
        }
    }

    pub(super) fn hincr_by_float(&mut self, key: Bytes, field: Bytes, by: f64, now: u64) -> Reply {
        let next = self
            .hash(&key, now)
            .and_then(|h| add_float(h.and_then(|h| h.get(&field)), by, Error::HashNotFloat));
        match next {
            Ok(text) => {
                self.edit_hash(key, now, |h| h.insert(field, text.clone()));
                Reply::Bulk(text)
            }
            Err(e) => Reply::Fault(e),
        }
    }

    /// Answers a hash read at `now`; `seed` draws `HRANDFIELD`'s fields (see [`rand_fields`]).
    pub(super) fn hash_read(&self, op: ReadOp, now: u64, seed: u64) -> Reply {
        let key = match &op {
            ReadOp::HGet { key, .. }
            | ReadOp::HMGet { key, .. }
            | ReadOp::HGetAll(key)
            | ReadOp::HLen(key)
            | ReadOp::HStrlen { key, .. }
            | ReadOp::HExists { key, .. }
            | ReadOp::HKeys(key)
            | ReadOp::HVals(key)
            | ReadOp::HRandField { key, .. }
            | ReadOp::HScan { key, .. } => key,
            _ => return Reply::Nil,
        };
        let h = match self.hash(key, now) {
            Err(e) => return Reply::Fault(e),
            Ok(h) => h,
        };
        let empty = HashMap::default();
        let h = h.unwrap_or(&empty);
        let bulk = |b: &Bytes| Reply::Bulk(b.clone());
        match op {
            ReadOp::HGet { field, .. } => h.get(&field).map_or(Reply::Nil, bulk),
            ReadOp::HMGet { fields, .. } => Reply::Array(
                fields
                    .iter()
                    .map(|f| h.get(f).map_or(Reply::Nil, bulk))
                    .collect(),
            ),
            ReadOp::HGetAll(_) => Reply::Map(h.iter().map(|(f, v)| (bulk(f), bulk(v))).collect()),
            ReadOp::HLen(_) => Reply::Int(h.len() as i64),
            ReadOp::HStrlen { field, .. } => {
                Reply::Int(h.get(&field).map_or(0, |v| v.len() as i64))
            }
            ReadOp::HExists { field, .. } => Reply::Int(i64::from(h.contains_key(&field))),
            ReadOp::HKeys(_) => Reply::Array(h.keys().map(bulk).collect()),
            ReadOp::HVals(_) => Reply::Array(h.values().map(bulk).collect()),
            ReadOp::HRandField {
                count, with_values, ..
            } => rand_fields(h, count, with_values, seed),
            ReadOp::HScan {
                cursor,
                pattern,
                count,
                novalues,
                ..
            } => {
                // As SCAN steps through keys: from the first field whose hash is at least the
                // cursor, and the next cursor is the hash of the first field not examined.
                let mut out = Vec::new();
                // Compiled once for the step, not for each field it examines.
                let glob = pattern.as_ref().map(|p| Glob::new(p));
                let mut costly = None;
                let next = scan_step(h.starting_at(cursor), count, |Slot(_, f), v| {
                    if costly.is_none() && matches_bounded(glob.as_ref(), f, &mut costly) {
                        out.push(bulk(f));
                        if !novalues {
                            out.push(bulk(v));
                        }
                    }
                });
                if let Some(e) = costly {
                    return Reply::error(e.to_string());
                }
                Reply::Array(vec![
                    Reply::Bulk(Bytes::from(next.to_string())),
                    Reply::Array(out),
                ])
            }
            _ => Reply::Nil,
        }
    }
}

/// `HRANDFIELD`: without a count one field (nil for no hash); a positive count gives distinct
/// fields (at most all of them), a negative one that many fields, possibly repeated.
///
/// The fields are drawn from `seed` alone, by [`Draws`]: a query passes a random seed, and a
/// transaction one derived from its entry, so every replica applying an `EXEC` answers the same
/// fields (its reply is what a session remembers, and what counts towards the session table's
/// bytes). Costs O(n + |count|) for a hash of `n` fields: each form walks the hash at most once.
fn rand_fields(h: &HashMap, count: Option<i64>, with_values: bool, seed: u64) -> Reply {
    let mut draws = Draws(seed);
    let Some(count) = count else {
        if h.is_empty() {
            return Reply::Nil;
        }
        let i = draws.below(h.len());
        return h
            .iter()
            .nth(i)
            .map_or(Reply::Nil, |(f, _)| Reply::Bulk(f.clone()));
    };
    if h.is_empty() || count == 0 {
        return Reply::Array(Vec::new());
    }
    let fields: Vec<(&Bytes, &Bytes)> = h.iter().collect();
    let chosen: Vec<(&Bytes, &Bytes)> = if count > 0 {
        // The first `k` places of a Fisher-Yates shuffle: `k` distinct fields.
        let k = usize::try_from(count).map_or(fields.len(), |c| c.min(fields.len()));
        let mut order: Vec<usize> = (0..fields.len()).collect();
        for i in 0..k {
            let j = i + draws.below(fields.len() - i);
            order.swap(i, j);
        }
        order[..k].iter().map(|&i| fields[i]).collect()
    } else {
        let n = usize::try_from(count.unsigned_abs()).unwrap_or(usize::MAX);
        (0..n).map(|_| fields[draws.below(fields.len())]).collect()
    };
    let bulk = |b: &Bytes| Reply::Bulk(b.clone());
    if with_values {
        Reply::Pairs(
            chosen
                .into_iter()
                .map(|(f, v)| (bulk(f), bulk(v)))
                .collect(),
        )
    } else {
        Reply::Array(chosen.into_iter().map(|(f, _)| bulk(f)).collect())
    }
}

/// A fixed sequence of draws from a seed: the same on every replica and in every version,
/// whatever random-number library is in use (a 64-bit linear congruential generator, each draw
/// scaled from its high bits).
pub(super) struct Draws(pub(super) u64);

impl Draws {
    /// The next draw, below `n` (which must not be 0).
    pub(super) fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((u128::from(self.0) * n as u128) >> 64) as usize
    }
}
