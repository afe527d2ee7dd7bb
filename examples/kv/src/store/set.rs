//! Operations on set values: adding, removing, membership. An emptied set is removed.

use std::collections::BTreeSet;

use bytes::Bytes;

use super::Data;
use super::Error;
use super::Reply;
use super::Store;

type Set = BTreeSet<Bytes>;

fn open(d: &Data) -> Option<&Set> {
    match d {
        Data::Set(s) => Some(s),
        _ => None,
    }
}

impl Store {
    fn set_at(&self, key: &Bytes, now: u64) -> Result<Option<&Set>, Error> {
        self.open(key, now, open)
    }

    fn edit_set<T>(&mut self, key: Bytes, now: u64, edit: impl FnOnce(&mut Set) -> T) -> T {
        self.edit(
            key,
            now,
            |d| match d {
                Data::Set(s) => Some(s),
                _ => None,
            },
            Data::Set,
            edit,
        )
    }

    /// `SADD`: replies with the number of members added.
    pub(super) fn sadd(&mut self, key: Bytes, members: Vec<Bytes>, now: u64) -> Reply {
        match self.set_at(&key, now) {
            Err(e) => return Reply::Fault(e),
            Ok(Some(s)) if members.iter().all(|m| s.contains(m)) => return Reply::Int(0),
            Ok(_) => {}
        }
        let added = self.edit_set(key, now, |s| {
            members.into_iter().filter(|m| s.insert(m.clone())).count()
        });
        Reply::Int(added as i64)
    }

    /// `SREM`: replies with the number of members removed.
    pub(super) fn srem(&mut self, key: Bytes, members: Vec<Bytes>, now: u64) -> Reply {
        match self.set_at(&key, now) {
            Err(e) => return Reply::Fault(e),
            Ok(None) => return Reply::Int(0),
            Ok(Some(s)) if !members.iter().any(|m| s.contains(m)) => return Reply::Int(0),
            Ok(Some(_)) => {}
        }
        let removed = self.edit_set(key, now, |s| {
            members.iter().filter(|m| s.remove(*m)).count()
        });
        Reply::Int(removed as i64)
    }

    /// `SPOP`: removes members at positions drawn from the write's number and applied time,
    /// so every replica removes the same ones.
    ///
    /// The draws are exactly those of every earlier version (see [`draw_positions`]), so an
    /// entry applies the same on replicas of different versions and when a log is replayed; the
    /// reply lists the members in the order they were drawn. Costs O(n + k log n) for `k`
    /// members popped from a set of `n`.
    pub(super) fn spop(&mut self, key: Bytes, count: Option<u64>, now: u64) -> Reply {
        match self.set_at(&key, now) {
            Err(e) => return Reply::Fault(e),
            Ok(None) => {
                return if count.is_some() {
                    Reply::Array(Vec::new())
                } else {
                    Reply::Nil
                };
            }
            Ok(Some(_)) => {}
        }
        let seed = self.writes.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ now;
        let n = count.unwrap_or(1);
        let popped: Vec<Bytes> = self.edit_set(key, now, |s| pop_drawn(s, n, seed));
        match count {
            None => popped.into_iter().next().map_or(Reply::Nil, Reply::Bulk),
            Some(_) => Reply::Array(popped.into_iter().map(Reply::Bulk).collect()),
        }
    }

    pub(super) fn smembers(&self, key: &Bytes, now: u64) -> Reply {
        match self.set_at(key, now) {
            Err(e) => Reply::Fault(e),
            Ok(s) => Reply::Array(
                s.into_iter()
                    .flatten()
                    .map(|m| Reply::Bulk(m.clone()))
                    .collect(),
            ),
        }
    }

    pub(super) fn scard(&self, key: &Bytes, now: u64) -> Reply {
        match self.set_at(key, now) {
            Err(e) => Reply::Fault(e),
            Ok(s) => Reply::Int(s.map_or(0, |s| s.len() as i64)),
        }
    }

    pub(super) fn sismember(&self, key: &Bytes, member: &Bytes, now: u64) -> Reply {
        match self.set_at(key, now) {
            Err(e) => Reply::Fault(e),
            Ok(s) => Reply::Int(i64::from(s.is_some_and(|s| s.contains(member)))),
        }
    }
}

/// The positions, in a set of `len` members, of the members `SPOP` removes from it for `seed`,
/// in the order they are drawn: `min(count, len)` distinct positions in `0..len`.
///
/// Every version draws them the same way, one at a time from a linear congruential sequence:
/// each draw is an index among the members still in the set, in their order, and removes that
/// member. Earlier versions found each by walking the set (O(len) a draw); this keeps the
/// members already drawn in a Fenwick tree over the original positions, so a draw's index is
/// turned into its original position in O(log len), and the whole draw costs O(len) time (a
/// zeroed allocation) and memory plus O(k log len) for `k` draws.
pub(super) fn draw_positions(len: usize, count: u64, mut seed: u64) -> Vec<usize> {
    let draws = usize::try_from(count).map_or(len, |c| c.min(len));
    // `removed[j]` (1-based) counts the drawn positions among the `j & j.wrapping_neg()`
    // positions ending at `j - 1` (0-based).
    let mut removed = vec![0usize; len + 1];
    let top = if len == 0 { 0 } else { 1 << len.ilog2() };
    let mut out = Vec::with_capacity(draws);
    for drawn in 0..draws {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let mut rank = ((seed >> 33) % (len - drawn) as u64) as usize;
        // The position of the `rank`-th (0-based) member not yet drawn: descend the tree,
        // skipping every block whose remaining members all come before it.
        let mut pos = 0;
        let mut step = top;
        while step > 0 {
            let next = pos + step;
            if next <= len {
                let remaining = step - removed[next];
                if remaining <= rank {
                    pos = next;
                    rank -= remaining;
                }
            }
            step >>= 1;
        }
        out.push(pos);
        let mut j = pos + 1;
        while j <= len {
            removed[j] += 1;
            j += j & j.wrapping_neg();
        }
    }
    out
}

/// Removes from `s` the members at the positions [`draw_positions`] draws for `count` and
/// `seed`, answering them in the order they were drawn. O(n + k log n) for `k` of `n` members.
fn pop_drawn(s: &mut Set, count: u64, seed: u64) -> Vec<Bytes> {
    let positions = draw_positions(s.len(), count, seed);
    if positions.is_empty() {
        return Vec::new();
    }
    // Resolve every position in one walk of the set, in position order.
    let mut wanted: Vec<(usize, usize)> = positions
        .iter()
        .enumerate()
        .map(|(drawn, &pos)| (pos, drawn))
        .collect();
    wanted.sort_unstable();
    let mut out = vec![Bytes::new(); positions.len()];
    let mut next = wanted.iter().peekable();
    for (pos, member) in s.iter().enumerate() {
        let Some(&&(want, drawn)) = next.peek() else {
            break;
        };
        if pos == want {
            out[drawn] = member.clone();
            next.next();
        }
    }
    if out.len() == s.len() {
        s.clear();
    } else {
        for m in &out {
            s.remove(m);
        }
    }
    out
}
