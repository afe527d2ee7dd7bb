//! Operations on list values: pushes and pops at either end, lengths and ranges. An emptied
//! list is removed.

use std::collections::VecDeque;

use bytes::Bytes;

use super::Data;
use super::Error;
use super::Reply;
use super::Store;

type List = VecDeque<Bytes>;

fn open(d: &Data) -> Option<&List> {
    match d {
        Data::List(l) => Some(l),
        _ => None,
    }
}

/// The positions `start..=end` of a list `len` long, as `LRANGE` picks them in Redis: negative
/// offsets count from the end, the start is clamped to the list and the end to its last
/// element; `None` when no element is in the range (an end before the first element included).
fn range(start: i64, end: i64, len: usize) -> Option<(usize, usize)> {
    let len = len as i64;
    let from_end = |i: i64| if i < 0 { len.saturating_add(i) } else { i };
    let (start, end) = (from_end(start).max(0), from_end(end).min(len - 1));
    (start <= end).then_some((start as usize, end as usize))
}

impl Store {
    fn list(&self, key: &Bytes, now: u64) -> Result<Option<&List>, Error> {
        self.open(key, now, open)
    }

    fn edit_list<T>(&mut self, key: Bytes, now: u64, edit: impl FnOnce(&mut List) -> T) -> T {
        self.edit(
            key,
            now,
            |d| match d {
                Data::List(l) => Some(l),
                _ => None,
            },
            Data::List,
            edit,
        )
    }

    /// `LPUSH`/`RPUSH` (and `LPUSHX`/`RPUSHX` with `existing`): replies with the new length.
    pub(super) fn push(
        &mut self,
        key: Bytes,
        values: Vec<Bytes>,
        left: bool,
        existing: bool,
        now: u64,
    ) -> Reply {
        match self.list(&key, now) {
            Err(e) => return Reply::Fault(e),
            Ok(None) if existing => return Reply::Int(0),
            Ok(_) => {}
        }
        let len = self.edit_list(key, now, |l| {
            for v in values {
                if left {
                    l.push_front(v);
                } else {
                    l.push_back(v);
                }
            }
            l.len()
        });
        Reply::Int(len as i64)
    }

    /// `LPOP`/`RPOP`: one value (or nil), or with a count up to that many (or a nil array).
    pub(super) fn pop(&mut self, key: Bytes, left: bool, count: Option<u64>, now: u64) -> Reply {
        match self.list(&key, now) {
            Err(e) => return Reply::Fault(e),
            Ok(None) => {
                return if count.is_some() {
                    Reply::NilArray
                } else {
                    Reply::Nil
                };
            }
            Ok(Some(_)) => {}
        }
        let n = count.unwrap_or(1) as usize;
        let popped: Vec<Bytes> = self.edit_list(key, now, |l| {
            let n = n.min(l.len());
            if left {
                l.drain(..n).collect()
            } else {
                let mut tail: Vec<Bytes> = l.drain(l.len() - n..).collect();
                tail.reverse();
                tail
            }
        });
        match count {
            None => popped.into_iter().next().map_or(Reply::Nil, Reply::Bulk),
            Some(_) => Reply::Array(popped.into_iter().map(Reply::Bulk).collect()),
        }
    }

    pub(super) fn llen(&self, key: &Bytes, now: u64) -> Reply {
        match self.list(key, now) {
            Err(e) => Reply::Fault(e),
            Ok(l) => Reply::Int(l.map_or(0, |l| l.len() as i64)),
        }
    }

    pub(super) fn lrange(&self, key: &Bytes, start: i64, end: i64, now: u64) -> Reply {
        match self.list(key, now) {
            Err(e) => Reply::Fault(e),
            Ok(None) => Reply::Array(Vec::new()),
            Ok(Some(l)) => match range(start, end, l.len()) {
                Some((s, e)) => Reply::Array(l.range(s..=e).cloned().map(Reply::Bulk).collect()),
                None => Reply::Array(Vec::new()),
            },
        }
    }

    pub(super) fn lindex(&self, key: &Bytes, index: i64, now: u64) -> Reply {
        match self.list(key, now) {
            Err(e) => Reply::Fault(e),
            Ok(None) => Reply::Nil,
            Ok(Some(l)) => {
                let i = if index < 0 {
                    l.len() as i64 + index
                } else {
                    index
                };
                usize::try_from(i)
                    .ok()
                    .and_then(|i| l.get(i))
                    .map_or(Reply::Nil, |v| Reply::Bulk(v.clone()))
            }
        }
    }
}
