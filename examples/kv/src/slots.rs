//! Keys in a stable hash order, kept in copy-on-write shards so a snapshot costs O(shards).
//!
//! A [`Slot`] sorts by a 64-bit FNV-1a hash of its key, then by the key; SCAN cursors are hash
//! values, so a cursor stays valid across writes and processes. A [`SlotMap`] splits the slots by
//! the top bits of their hash into [`SHARDS`] ordered maps, each behind an `Arc`. Cloning the map
//! (a snapshot) copies only the `Arc`s; a later write to a shard that a snapshot still holds
//! copies that one shard first. So instead of one pause that copies the whole state on the apply
//! path, each shard is copied at most once per snapshot, by the first write that touches it —
//! about 1/1024 of the state at a time.

use std::collections::BTreeMap;
use std::collections::btree_map;
use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;

/// Where a key (or a hash's field) sorts: by a stable hash, then by the key itself.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Slot(pub u64, pub Bytes);

/// FNV-1a, 64 bits: stable across processes and versions.
fn hash(key: &[u8]) -> u64 {
    key.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Slot {
    /// The slot of `key`.
    pub fn new(key: Bytes) -> Slot {
        Slot(hash(&key), key)
    }

    /// The slot of `key`, which is cloned (a reference count).
    pub fn of(key: &Bytes) -> Slot {
        Slot::new(key.clone())
    }
}

/// One SCAN step over `entries` (in slot order, from a cursor): hands at least `count` (at
/// least one) of them to `visit` and returns the next cursor, the hash of the first entry not
/// visited, or 0 when none is left. A step ends only between two hashes, since the next one
/// restarts at the first entry of its cursor's hash: entries that share a hash (a collision)
/// are visited together, and every step moves on.
pub fn scan_step<'a, V>(
    entries: impl Iterator<Item = (&'a Slot, V)>,
    count: usize,
    mut visit: impl FnMut(&'a Slot, V),
) -> u64 {
    let mut last = None;
    for (i, (slot, v)) in entries.enumerate() {
        if i >= count.max(1) && last != Some(slot.0) {
            return slot.0;
        }
        last = Some(slot.0);
        visit(slot, v);
    }
    0
}

const SHARD_BITS: u32 = 10;
/// How many shards a [`SlotMap`] has.
pub const SHARDS: usize = 1 << SHARD_BITS;

fn shard_of(hash: u64) -> usize {
    (hash >> (64 - SHARD_BITS)) as usize
}

/// An ordered map from slots to values whose clones share storage until written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotMap<V> {
    shards: Vec<Arc<BTreeMap<Slot, V>>>,
}

impl<V> Default for SlotMap<V> {
    fn default() -> Self {
        SlotMap {
            shards: (0..SHARDS).map(|_| Arc::new(BTreeMap::new())).collect(),
        }
    }
}

impl<V: Clone> SlotMap<V> {
    fn shard(&self, slot: &Slot) -> &BTreeMap<Slot, V> {
        &self.shards[shard_of(slot.0)]
    }

    /// The shard of `slot`, for writing: copied first if a clone of this map still shares it.
    fn shard_mut(&mut self, slot: &Slot) -> &mut BTreeMap<Slot, V> {
        Arc::make_mut(&mut self.shards[shard_of(slot.0)])
    }

    /// The value at `slot`.
    pub fn get(&self, slot: &Slot) -> Option<&V> {
        self.shard(slot).get(slot)
    }

    /// Whether writing `slot` would have to copy its shard for nothing: a clone shares the
    /// shard and `slot` is not in it.
    fn shared_without(&mut self, slot: &Slot) -> bool {
        let shard = &mut self.shards[shard_of(slot.0)];
        Arc::get_mut(shard).is_none() && !shard.contains_key(slot)
    }

    /// The value at `slot`, to change in place.
    pub fn get_mut(&mut self, slot: &Slot) -> Option<&mut V> {
        if self.shared_without(slot) {
            return None;
        }
        self.shard_mut(slot).get_mut(slot)
    }

    /// The entry at `slot`, for a read-modify-write in one lookup.
    pub fn entry(&mut self, slot: Slot) -> btree_map::Entry<'_, Slot, V> {
        self.shard_mut(&slot).entry(slot)
    }

    /// Inserts `value` at `slot`, returning the value it replaced.
    pub fn insert(&mut self, slot: Slot, value: V) -> Option<V> {
        self.shard_mut(&slot).insert(slot, value)
    }

    /// Removes and returns the value at `slot`.
    pub fn remove(&mut self, slot: &Slot) -> Option<V> {
        if self.shared_without(slot) {
            return None;
        }
        self.shard_mut(slot).remove(slot)
    }

    /// Removes everything.
    pub fn clear(&mut self) {
        *self = SlotMap::default();
    }

    /// How many slots hold a value.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.len()).sum()
    }

    /// Every slot and value, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (&Slot, &V)> {
        self.shards.iter().flat_map(|s| s.iter())
    }

    /// The slots whose hash is at least `hash`, in slot order.
    pub fn starting_at(&self, hash: u64) -> impl Iterator<Item = (&Slot, &V)> {
        let first = shard_of(hash);
        let start = Bound::Included(Slot(hash, Bytes::new()));
        self.shards[first]
            .range((start, Bound::Unbounded))
            .chain(self.shards[first + 1..].iter().flat_map(|s| s.iter()))
    }
}

impl<V: Clone> FromIterator<(Slot, V)> for SlotMap<V> {
    fn from_iter<I: IntoIterator<Item = (Slot, V)>>(iter: I) -> Self {
        let mut map = SlotMap::default();
        for (slot, value) in iter {
            map.insert(slot, value);
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> Bytes {
        Bytes::from(format!("key-{i}"))
    }

    #[test]
    fn iterates_in_slot_order_across_shards() {
        let map: SlotMap<u32> = (0..5_000).map(|i| (Slot::new(key(i)), i)).collect();
        assert_eq!(map.len(), 5_000);
        let slots: Vec<&Slot> = map.iter().map(|(s, _)| s).collect();
        assert!(slots.windows(2).all(|w| w[0] < w[1]), "in order");
        // starting_at starts at the first slot with that hash or more, wherever it lives.
        for probe in [0, u64::MAX / 3, slots[2_500].0, u64::MAX] {
            let expected: Vec<&Slot> = slots.iter().copied().filter(|s| s.0 >= probe).collect();
            let got: Vec<&Slot> = map.starting_at(probe).map(|(s, _)| s).collect();
            assert_eq!(got, expected, "from {probe}");
        }
    }

    #[test]
    fn a_clone_keeps_its_contents_while_the_original_changes() {
        let mut map: SlotMap<u32> = (0..2_000).map(|i| (Slot::new(key(i)), i)).collect();
        let before = map.clone();
        let frozen: Vec<(Slot, u32)> = before.iter().map(|(s, v)| (s.clone(), *v)).collect();
        for i in 0..2_000 {
            *map.get_mut(&Slot::new(key(i))).unwrap() += 1;
        }
        map.remove(&Slot::new(key(7)));
        map.insert(Slot::new(key(9_999)), 0);
        if let btree_map::Entry::Occupied(mut e) = map.entry(Slot::new(key(8))) {
            e.insert(100);
        }
        let after: Vec<(Slot, u32)> = before.iter().map(|(s, v)| (s.clone(), *v)).collect();
        assert_eq!(after, frozen, "the clone did not change");
        assert_eq!(map.get(&Slot::new(key(8))), Some(&100));
        assert_eq!(map.get(&Slot::new(key(7))), None);
        assert_eq!(map.get(&Slot::new(key(3))), Some(&4));
        assert_eq!(map.len(), 2_000);
        map.clear();
        assert_eq!(map.len(), 0);
        assert_eq!(before.len(), 2_000);
    }

    #[test]
    fn reads_and_misses_do_not_unshare_shards() {
        let mut map: SlotMap<u32> = (0..100).map(|i| (Slot::new(key(i)), i)).collect();
        let snapshot = map.clone();
        let shared = |map: &SlotMap<u32>| {
            map.shards
                .iter()
                .zip(&snapshot.shards)
                .filter(|(a, b)| Arc::ptr_eq(a, b))
                .count()
        };
        assert_eq!(map.get_mut(&Slot::new(key(1_000))), None);
        assert_eq!(map.remove(&Slot::new(key(1_000))), None);
        assert_eq!(shared(&map), SHARDS);
        map.insert(Slot::new(key(1)), 5);
        assert_eq!(shared(&map), SHARDS - 1, "a write copies one shard");
    }
}
