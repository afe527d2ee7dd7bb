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

    /// `SPOP`: removes members at positions drawn from the write's number, so every replica
    /// removes the same ones.
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
        let mut seed = self.writes.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ now;
        let n = count.unwrap_or(1);
        let popped: Vec<Bytes> = self.edit_set(key, now, |s| {
            let mut out = Vec::new();
            while (out.len() as u64) < n && !s.is_empty() {
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                let i = ((seed >> 33) % s.len() as u64) as usize;
                if let Some(m) = s.iter().nth(i).cloned() {
                    s.remove(&m);
                    out.push(m);
                }
            }
            out
        });
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
