//! Operations on whole keys, whatever they hold: deletion, expiry, renaming, iteration.

use bytes::Bytes;

use super::Error;
use super::ExpireIf;
use super::Glob;
use super::Kind;
use super::Reply;
use super::Store;
use super::glob::TooCostly;
use super::glob::matches_bounded;
use super::reindex;
use crate::slots::Slot;
use crate::slots::scan_step;

/// Milliseconds as whole seconds, rounded to the nearest (half up), as Redis' `TTL` and
/// `EXPIRETIME` answer.
fn to_seconds(ms: u64) -> i64 {
    (ms.saturating_add(500) / 1000) as i64
}

/// `ms` as a reply's integer. An expiry time can pass `i64::MAX` (a deadline set near the top
/// of the range, stamped a little later by the leader): it is answered as `i64::MAX`, never as
/// a negative number.
fn saturating_i64(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// `SCAN`'s reply to one step ([`Store::scan_keys`]): the next cursor and the keys, or why the
/// step was refused.
pub(super) fn scan_reply(step: Result<(u64, Vec<Reply>), TooCostly>) -> Reply {
    match step {
        Ok((next, keys)) => Reply::Array(vec![
            Reply::Bulk(Bytes::from(next.to_string())),
            Reply::Array(keys),
        ]),
        Err(e) => Reply::error(e.to_string()),
    }
}

impl Store {
    pub(super) fn del(&mut self, keys: Vec<Bytes>, now: u64) -> Reply {
        let mut n = 0;
        for k in keys {
            // An expired value goes too, but does not count as deleted.
            if self.take(&Slot::new(k)).is_some_and(|v| v.live(now)) {
                n += 1;
            }
        }
        Reply::Int(n)
    }

    /// `EXPIRE` with a time (`Some`) or `PERSIST` (`None`).
    pub(super) fn expire(&mut self, key: Bytes, at: Option<u64>, now: u64) -> Reply {
        let slot = Slot::new(key);
        let Some(v) = self.live_for_write(&slot, now) else {
            return Reply::Int(0);
        };
        let old = v.expires_at;
        match at {
            None if old.is_none() => Reply::Int(0),
            Some(at) if at <= now => {
                self.take(&slot);
                Reply::Int(1)
            }
            at => {
                v.expires_at = at;
                reindex(&mut self.expiring, &slot, old, at);
                Reply::Int(1)
            }
        }
    }

    pub(super) fn expire_at(&mut self, key: Bytes, at: u64, when: ExpireIf, now: u64) -> Reply {
        let Some(current) = self.live(&key, now).map(|v| v.expires_at) else {
            return Reply::Int(0);
        };
        let allowed = match (when, current) {
            (ExpireIf::Always, _) => true,
            (ExpireIf::NoExpiry, c) => c.is_none(),
            (ExpireIf::HasExpiry, c) => c.is_some(),
            // No expiry is an infinite one: never sooner, always later.
            (ExpireIf::Later, c) => c.is_some_and(|c| at > c),
            (ExpireIf::Sooner, c) => c.is_none_or(|c| at < c),
        };
        if !allowed {
            return Reply::Int(0);
        }
        self.expire(key, Some(at), now)
    }

    /// `TTL` (seconds, rounded to the nearest as Redis does) or `PTTL`; -2 for no key, -1 for
    /// a key without an expiry.
    pub(super) fn ttl(&self, key: &Bytes, millis: bool, now: u64) -> Reply {
        match self.live(key, now).map(|v| v.expires_at) {
            None => Reply::Int(-2),
            Some(None) => Reply::Int(-1),
            Some(Some(at)) => {
                let left = at - now;
                Reply::Int(if millis {
                    saturating_i64(left)
                } else {
                    to_seconds(left)
                })
            }
        }
    }

    /// `EXPIRETIME` (seconds, rounded to the nearest as Redis does) or `PEXPIRETIME`; -2 for no
    /// key, -1 for a key without an expiry.
    pub(super) fn expire_time(&self, key: &Bytes, millis: bool, now: u64) -> Reply {
        match self.live(key, now).map(|v| v.expires_at) {
            None => Reply::Int(-2),
            Some(None) => Reply::Int(-1),
            Some(Some(at)) => Reply::Int(if millis {
                saturating_i64(at)
            } else {
                to_seconds(at)
            }),
        }
    }

    /// One SCAN step from `cursor` over about `count` keys: the live keys it examined that are
    /// of `kind` and match `pattern` (each at most [`Glob::matches_bounded`]'s steps), and the
    /// next cursor (0 at the end).
    pub(super) fn scan_keys(
        &self,
        cursor: u64,
        pattern: Option<&Bytes>,
        count: usize,
        kind: Option<Kind>,
        now: u64,
    ) -> Result<(u64, Vec<Reply>), TooCostly> {
        let mut keys = Vec::new();
        // Compiled once for the step, not for each key it examines.
        let glob = pattern.map(|p| Glob::new(p));
        let mut costly = None;
        let next = scan_step(self.map.starting_at(cursor), count, |slot, v| {
            if costly.is_none()
                && v.live(now)
                && kind.is_none_or(|k| v.data.kind() == k)
                && matches_bounded(glob.as_ref(), &slot.1, &mut costly)
            {
                keys.push(Reply::Bulk(slot.1.clone()));
            }
        });
        match costly {
            Some(e) => Err(e),
            None => Ok((next, keys)),
        }
    }

    /// `RENAME`/`RENAMENX`: the value and its expiry move to `to`.
    pub(super) fn rename(&mut self, from: Bytes, to: Bytes, nx: bool, now: u64) -> Reply {
        if self.live(&from, now).is_none() {
            return Reply::Fault(Error::NoSuchKey);
        }
        if nx && self.live(&to, now).is_some() {
            return Reply::Int(0);
        }
        if from == to {
            return if nx { Reply::Int(0) } else { Reply::Ok };
        }
        let Some(value) = self.take(&Slot::new(from)) else {
            return Reply::Fault(Error::NoSuchKey);
        };
        self.take(&Slot::of(&to));
        self.put(Slot::new(to), value);
        if nx { Reply::Int(1) } else { Reply::Ok }
    }

    /// `COPY`: the value and its expiry, copied (a hash is shared until either is written).
    pub(super) fn copy(&mut self, from: Bytes, to: Bytes, replace: bool, now: u64) -> Reply {
        let Some(value) = self.live(&from, now).cloned() else {
            return Reply::Int(0);
        };
        if from == to || (!replace && self.live(&to, now).is_some()) {
            return Reply::Int(0);
        }
        self.take(&Slot::of(&to));
        self.put(Slot::new(to), value);
        Reply::Int(1)
    }

    /// `RANDOMKEY`: the first live key at or after the point `seed` names in the key order (a
    /// query passes a random seed, a transaction one derived from its entry).
    pub(super) fn random_key(&self, now: u64, seed: u64) -> Reply {
        let start = seed;
        let live = |(s, v): (&Slot, &super::Value)| v.live(now).then(|| s.1.clone());
        self.map
            .starting_at(start)
            .find_map(live)
            .or_else(|| self.map.iter().find_map(live))
            .map_or(Reply::Nil, Reply::Bulk)
    }
}
