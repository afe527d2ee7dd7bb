//! Operations on string values: SET and its relatives, counters, ranges and bits.

use std::collections::btree_map::Entry;

use bytes::Bytes;
use bytes::BytesMut;

use super::Condition;
use super::Data;
use super::Error;
use super::Expiry;
use super::LcsMode;
use super::Reply;
use super::Store;
use super::Value;
use super::reindex;
use crate::slots::Slot;

/// The most cells (`len(a) × len(b)`) `LCS` works through: its table costs 4 bytes a cell.
pub const LCS_MAX_CELLS: u64 = 16 << 20;

/// Parses a Redis float argument or value: no spaces, not NaN (an infinite increment is
/// refused when it is applied, as the result would be infinite).
pub fn parse_float(b: &[u8]) -> Option<f64> {
    let s = std::str::from_utf8(b).ok()?;
    if s.is_empty() || s.bytes().any(|c| c.is_ascii_whitespace()) {
        return None;
    }
    let f: f64 = s.parse().ok()?;
    (!f.is_nan()).then_some(f)
}

/// How Redis prints a float it stored: the shortest text that reads back as the same number.
pub fn format_float(f: f64) -> Bytes {
    if f == 0.0 {
        return Bytes::from_static(b"0");
    }
    Bytes::from(format!("{f}"))
}

/// Parses an integer as Redis reads one (`string2ll`): an optional `-`, then decimal digits
/// with no leading zero ("0" itself aside), within the 64-bit range. A `+`, spaces and "-0"
/// are refused.
pub fn parse_int(b: &[u8]) -> Option<i64> {
    let digits = b.strip_prefix(b"-").unwrap_or(b);
    let well_formed = match digits {
        [b'0'] => digits.len() == b.len(),
        [b'1'..=b'9', rest @ ..] => rest.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    if !well_formed {
        return None;
    }
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// How a counter reads the integer it stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Integers {
    /// As Redis does ([`parse_int`]).
    Strict,
    /// As writes logged by earlier versions did: a `+`, leading zeros and "-0" pass too.
    Lenient,
}

impl Integers {
    fn parse(self, b: &[u8]) -> Option<i64> {
        match self {
            Integers::Strict => parse_int(b),
            Integers::Lenient => std::str::from_utf8(b).ok()?.parse().ok(),
        }
    }
}

/// `current` (0 if absent) plus `by`, as INCRBY and HINCRBY compute it; `not_number` if
/// `current` is not an integer as `read` reads one.
pub fn add_int(
    current: Option<&Bytes>,
    by: i64,
    read: Integers,
    not_number: Error,
) -> Result<i64, Error> {
    let current = match current {
        None => 0,
        Some(v) => read.parse(v).ok_or(not_number)?,
    };
    current.checked_add(by).ok_or(Error::Overflow)
}

/// `current` (0 if absent) plus `by`, as INCRBYFLOAT and HINCRBYFLOAT compute it, in the form
/// it is stored; `not_number` if `current` is not a number.
pub fn add_float(current: Option<&Bytes>, by: f64, not_number: Error) -> Result<Bytes, Error> {
    let current = match current {
        None => 0.0,
        Some(v) => parse_float(v).ok_or(not_number)?,
    };
    let next = current + by;
    if !next.is_finite() {
        return Err(Error::NanOrInfinity);
    }
    Ok(format_float(next))
}

/// A string value's bytes, to change in place while nothing else shares them.
fn unshare(data: &mut Bytes) -> BytesMut {
    std::mem::take(data)
        .try_into_mut()
        .unwrap_or_else(|shared| BytesMut::from(&shared[..]))
}

/// The positions `start..=end` of a string `len` bytes (or bits) long, as Redis 7 picks them
/// for `GETRANGE` and `BITCOUNT`: two negative ends with the start after the end are empty;
/// otherwise negative offsets count from the end, and both ends are clamped into the string, so
/// an end before its first position still takes that position. `None` when the range is empty.
/// (Redis 8 answers an empty `GETRANGE` for an end before the string; this keeps Redis 7's rule.)
pub fn string_range(start: i64, end: i64, len: usize) -> Option<(usize, usize)> {
    if start < 0 && end < 0 && start > end {
        return None;
    }
    let len = len as i64;
    let from_end = |i: i64| if i < 0 { (len + i).max(0) } else { i };
    let (start, end) = (from_end(start), from_end(end).min(len - 1));
    (start <= end).then_some((start as usize, end as usize))
}

impl Store {
    pub(super) fn set(
        &mut self,
        key: Bytes,
        value: Bytes,
        expiry: Expiry,
        condition: Condition,
        get: bool,
        now: u64,
    ) -> Reply {
        // One lookup: the entry serves the condition, the old value and the update.
        let version = self.writes;
        let slot = Slot::new(key);
        let expiring = &mut self.expiring;
        let entry = self.map.entry(slot);
        let stored_expiry = match &entry {
            Entry::Occupied(e) => e.get().expires_at,
            Entry::Vacant(_) => None,
        };
        let old = match &entry {
            Entry::Occupied(e) if e.get().live(now) => Some(e.get()),
            _ => None,
        };
        let allowed = match condition {
            Condition::Always => true,
            Condition::IfAbsent => old.is_none(),
            Condition::IfPresent => old.is_some(),
        };
        let old_expiry = old.and_then(|v| v.expires_at);
        let reply = match (get, allowed, old) {
            (
                true,
                _,
                Some(Value {
                    data: Data::Str(s), ..
                }),
            ) => Reply::Bulk(s.clone()),
            (true, _, Some(_)) => return Reply::Fault(Error::WrongType),
            (true, _, None) => Reply::Nil,
            (false, true, _) => Reply::Ok,
            (false, false, _) => Reply::Nil,
        };
        let expires_at = match expiry {
            Expiry::Clear => None,
            Expiry::Keep => old_expiry,
            Expiry::At(at) => Some(at),
            // Relative: from the write's applied time.
            Expiry::In(ms) => Some(now.saturating_add(ms)),
        };
        let was_live = old.is_some();
        let value = Value {
            data: Data::Str(value),
            expires_at,
            version,
        };
        if allowed && expires_at.is_none_or(|at| at > now) {
            reindex(expiring, entry.key(), stored_expiry, expires_at);
            match entry {
                Entry::Occupied(mut e) => {
                    e.insert(value);
                }
                Entry::Vacant(v) => {
                    v.insert(value);
                }
            }
        } else if allowed || !was_live {
            // Set to an expiry already past, or an expired value a write now sees as
            // absent: either way the key is gone.
            if let Entry::Occupied(e) = entry {
                reindex(expiring, e.key(), stored_expiry, None);
                let (_, old) = e.remove_entry();
                self.removed = self.removed.max(old.version).max(version);
            }
        }
        reply
    }

    pub(super) fn incr_by(&mut self, key: Bytes, by: i64, read: Integers, now: u64) -> Reply {
        match self
            .string(&key, now)
            .and_then(|v| add_int(v, by, read, Error::NotInteger))
        {
            Ok(next) => {
                self.replace_string(key, Bytes::from(next.to_string()), now);
                Reply::Int(next)
            }
            Err(e) => Reply::Fault(e),
        }
    }

    pub(super) fn incr_by_float(&mut self, key: Bytes, by: f64, now: u64) -> Reply {
        match self
            .string(&key, now)
            .and_then(|v| add_float(v, by, Error::NotFloat))
        {
            Ok(text) => {
                self.replace_string(key, text.clone(), now);
                Reply::Bulk(text)
            }
            Err(e) => Reply::Fault(e),
        }
    }

    /// The length of the string at `key` (0 if absent), or an error if it holds another type.
    fn string_len(&self, key: &Bytes, now: u64) -> Result<usize, Error> {
        Ok(self.string(key, now)?.map_or(0, |v| v.len()))
    }

    /// Sets the string at `key` (already checked to be a string or absent), keeping a live
    /// key's expiry.
    fn replace_string(&mut self, key: Bytes, data: Bytes, now: u64) {
        let slot = Slot::new(key);
        match self.live_for_write(&slot, now) {
            Some(v) => v.data = Data::Str(data),
            None => self.put(slot, Value::string(data)),
        }
    }

    /// `APPEND`, in amortised O(appended bytes): the value's buffer grows by doubling and is
    /// extended in place while nothing else (a snapshot, a reply in flight) shares it.
    pub(super) fn append(&mut self, key: Bytes, suffix: Bytes, max: u64, now: u64) -> Reply {
        let current = match self.string_len(&key, now) {
            Ok(len) => len,
            Err(e) => return Reply::Fault(e),
        };
        let len = current + suffix.len();
        if len as u64 > max {
            return Reply::Fault(Error::TooLong);
        }
        self.edit_string(key, now, |data| {
            if data.capacity() - data.len() < suffix.len() {
                data.reserve(suffix.len().max(data.len()));
            }
            data.extend_from_slice(&suffix);
        });
        Reply::Int(len as i64)
    }

    /// `SETRANGE`, in place while nothing shares the value (see [`Store::append`]).
    pub(super) fn set_range(
        &mut self,
        key: Bytes,
        offset: u64,
        value: Bytes,
        max: u64,
        now: u64,
    ) -> Reply {
        let current = match self.string_len(&key, now) {
            Ok(len) => len,
            Err(e) => return Reply::Fault(e),
        };
        if value.is_empty() {
            // Changes nothing, creates nothing (as in Redis).
            return Reply::Int(current as i64);
        }
        let Some(end) = offset.checked_add(value.len() as u64).filter(|e| *e <= max) else {
            return Reply::Fault(Error::TooLong);
        };
        let (start, end) = (offset as usize, end as usize);
        self.edit_string(key, now, |data| {
            if data.len() < end {
                data.resize(end, 0);
            }
            data[start..end].copy_from_slice(&value);
        });
        Reply::Int(current.max(end) as i64)
    }

    /// Changes the string at `key` (already checked to be a string or absent) in place,
    /// creating it empty first if absent.
    fn edit_string(&mut self, key: Bytes, now: u64, edit: impl FnOnce(&mut BytesMut)) {
        let slot = Slot::new(key);
        match self.live_for_write(&slot, now) {
            Some(Value {
                data: Data::Str(d), ..
            }) => {
                let mut data = unshare(d);
                edit(&mut data);
                *d = data.freeze();
            }
            _ => {
                let mut data = BytesMut::new();
                edit(&mut data);
                self.put(slot, Value::string(data.freeze()));
            }
        }
    }

    pub(super) fn set_bit(
        &mut self,
        key: Bytes,
        offset: u64,
        bit: bool,
        max: u64,
        now: u64,
    ) -> Reply {
        if let Err(e) = self.string(&key, now) {
            return Reply::Fault(e);
        }
        let byte = (offset / 8) as usize;
        if byte as u64 >= max {
            return Reply::Fault(Error::TooLong);
        }
        let mask = 0x80u8 >> (offset % 8);
        let mut old = false;
        self.edit_string(key, now, |data| {
            if data.len() <= byte {
                data.resize(byte + 1, 0);
            }
            old = data[byte] & mask != 0;
            if bit {
                data[byte] |= mask;
            } else {
                data[byte] &= !mask;
            }
        });
        Reply::Int(i64::from(old))
    }

    pub(super) fn get_ex(&mut self, key: Bytes, expiry: Expiry, now: u64) -> Reply {
        let value = match self.string(&key, now) {
            Err(e) => return Reply::Fault(e),
            Ok(None) => return Reply::Nil,
            Ok(Some(v)) => v.clone(),
        };
        match expiry {
            Expiry::Keep => {}
            Expiry::Clear => {
                self.expire(key, None, now);
            }
            Expiry::At(at) => {
                self.expire(key, Some(at), now);
            }
            // Relative: from the write's applied time.
            Expiry::In(ms) => {
                self.expire(key, Some(now.saturating_add(ms)), now);
            }
        }
        Reply::Bulk(value)
    }

    pub(super) fn get_del(&mut self, key: Bytes, now: u64) -> Reply {
        match self.string(&key, now) {
            Err(e) => Reply::Fault(e),
            Ok(None) => Reply::Nil,
            Ok(Some(v)) => {
                let v = v.clone();
                self.take(&Slot::new(key));
                Reply::Bulk(v)
            }
        }
    }

    pub(super) fn mset_nx(&mut self, pairs: Vec<(Bytes, Bytes)>, now: u64) -> Reply {
        if pairs.iter().any(|(k, _)| self.live(k, now).is_some()) {
            return Reply::Int(0);
        }
        for (k, v) in pairs {
            self.put(Slot::new(k), Value::string(v));
        }
        Reply::Int(1)
    }

    pub(super) fn get_range(&self, key: &Bytes, start: i64, end: i64, now: u64) -> Reply {
        match self.string(key, now) {
            Err(e) => Reply::Fault(e),
            Ok(None) => Reply::text(""),
            Ok(Some(v)) => match string_range(start, end, v.len()) {
                Some((s, e)) => Reply::Bulk(v.slice(s..=e)),
                None => Reply::text(""),
            },
        }
    }

    pub(super) fn get_bit(&self, key: &Bytes, offset: u64, now: u64) -> Reply {
        match self.string(key, now) {
            Err(e) => Reply::Fault(e),
            Ok(v) => {
                let byte = (offset / 8) as usize;
                let set = v
                    .and_then(|v| v.get(byte))
                    .is_some_and(|b| b & (0x80 >> (offset % 8)) != 0);
                Reply::Int(i64::from(set))
            }
        }
    }

    pub(super) fn bit_count(
        &self,
        key: &Bytes,
        range: Option<(i64, i64)>,
        bits: bool,
        now: u64,
    ) -> Reply {
        let v = match self.string(key, now) {
            Err(e) => return Reply::Fault(e),
            Ok(None) => return Reply::Int(0),
            Ok(Some(v)) => v,
        };
        let ones = |bytes: &[u8]| bytes.iter().map(|b| b.count_ones() as i64).sum::<i64>();
        let Some((start, end)) = range else {
            return Reply::Int(ones(v));
        };
        if !bits {
            return Reply::Int(
                string_range(start, end, v.len()).map_or(0, |(s, e)| ones(&v[s..=e])),
            );
        }
        let Some((s, e)) = string_range(start, end, v.len() * 8) else {
            return Reply::Int(0);
        };
        let n = (s..=e)
            .filter(|i| v[i / 8] & (0x80 >> (i % 8)) != 0)
            .count();
        Reply::Int(n as i64)
    }

    pub(super) fn lcs(&self, a: &Bytes, b: &Bytes, mode: LcsMode, now: u64) -> Reply {
        let (a, b) = match (self.string(a, now), self.string(b, now)) {
            (Err(e), _) | (_, Err(e)) => return Reply::Fault(e),
            (Ok(a), Ok(b)) => (
                a.cloned().unwrap_or_default(),
                b.cloned().unwrap_or_default(),
            ),
        };
        if (a.len() as u64 + 1) * (b.len() as u64 + 1) > LCS_MAX_CELLS {
            return Reply::Fault(Error::LcsTooLarge);
        }
        lcs(&a, &b, mode)
    }
}

/// A run of matching bytes: its range in `a` and in `b`, both inclusive.
type Run = ((usize, usize), (usize, usize));

/// The longest common subsequence of `a` and `b`, as Redis' `LCS` reports it.
fn lcs(a: &[u8], b: &[u8], mode: LcsMode) -> Reply {
    let w = b.len() + 1;
    let mut t = vec![0u32; (a.len() + 1) * w];
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            t[i * w + j] = if a[i - 1] == b[j - 1] {
                t[(i - 1) * w + j - 1] + 1
            } else {
                t[(i - 1) * w + j].max(t[i * w + j - 1])
            };
        }
    }
    let len = t[a.len() * w + b.len()] as usize;
    if mode == LcsMode::Len {
        return Reply::Int(len as i64);
    }
    // Walk back from the end, collecting the subsequence and the ranges that match.
    let mut out = vec![0u8; len];
    let mut idx = len;
    let mut matches = Vec::new();
    let (mut i, mut j) = (a.len(), b.len());
    let mut run: Option<Run> = None;
    let (min_len, with_len) = match mode {
        LcsMode::Idx { min_len, with_len } => (min_len as usize, with_len),
        _ => (0, false),
    };
    let flush = |run: &mut Option<Run>, matches: &mut Vec<Reply>| {
        if let Some(((a0, a1), (b0, b1))) = run.take() {
            let n = a1 - a0 + 1;
            if n >= min_len {
                let mut m = vec![
                    Reply::Array(vec![Reply::Int(a0 as i64), Reply::Int(a1 as i64)]),
                    Reply::Array(vec![Reply::Int(b0 as i64), Reply::Int(b1 as i64)]),
                ];
                if with_len {
                    m.push(Reply::Int(n as i64));
                }
                matches.push(Reply::Array(m));
            }
        }
    };
    while i > 0 && j > 0 {
        if a[i - 1] == b[j - 1] {
            idx -= 1;
            out[idx] = a[i - 1];
            let (ai, bj) = (i - 1, j - 1);
            run = match run {
                Some(((a0, a1), (b0, b1))) if a0 == ai + 1 && b0 == bj + 1 => {
                    Some(((ai, a1), (bj, b1)))
                }
                other => {
                    let mut other = other;
                    flush(&mut other, &mut matches);
                    Some(((ai, ai), (bj, bj)))
                }
            };
            i -= 1;
            j -= 1;
        } else if t[(i - 1) * w + j] > t[i * w + j - 1] {
            i -= 1;
        } else {
            j -= 1;
        }
    }
    flush(&mut run, &mut matches);
    match mode {
        LcsMode::Idx { .. } => Reply::Map(vec![
            (Reply::text("matches"), Reply::Array(matches)),
            (Reply::text("len"), Reply::Int(len as i64)),
        ]),
        _ => Reply::Bulk(Bytes::from(out)),
    }
}
