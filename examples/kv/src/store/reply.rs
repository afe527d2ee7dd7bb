//! What the store answers: a protocol-neutral reply and the store's own errors.
//!
//! The store never words an error for a protocol: it returns an [`Error`], and the RESP layer
//! (`resp::encode`) renders it in the form Redis clients expect.

use bytes::Bytes;
use serde::Deserialize;
use serde::Serialize;

/// A reply: a value, a shape of values, or an error. Decoding refuses more than
/// [`MAX_NESTING`](super::nesting::MAX_NESTING) levels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub enum Reply {
    /// Success with nothing to say (`+OK`).
    Ok,
    /// A short status word (`+QUEUED`, `+string`).
    Status(String),
    /// No value (a null).
    Nil,
    /// No array (an aborted transaction, a null array).
    NilArray,
    /// An integer.
    Int(i64),
    /// A byte string.
    Bulk(Bytes),
    /// An ordered list of replies.
    Array(Vec<Reply>),
    /// Pairs of keys and values: a map in RESP3, a flat array in RESP2.
    Map(Vec<(Reply, Reply)>),
    /// An error already worded for the client by the command layer or the server (the text
    /// after `-`): arity and syntax mistakes, cluster failures.
    Error(String),
    /// An error from the store, worded by the protocol layer.
    Fault(Error),
    /// Pairs that RESP3 sends as two-element arrays and RESP2 as one flat array
    /// (`HRANDFIELD … WITHVALUES`).
    Pairs(Vec<(Reply, Reply)>),
    /// A set of replies: a set in RESP3, an array in RESP2 (`SMEMBERS`). Made from the store's
    /// array by the node that answers the client ([`crate::commands::Post`]); the store never
    /// returns one, so no other node ever has to read one.
    Set(Vec<Reply>),
}

super::nesting::bounded_nesting!(Reply);

/// What went wrong applying a command to the store. Each is deterministic: every replica
/// reaches the same error for the same command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Error {
    /// The key holds a value of another type than the command works on.
    #[error("the key holds a value of another type")]
    WrongType,
    /// The value (or an argument) is not a 64-bit integer.
    #[error("the value is not an integer or is out of range")]
    NotInteger,
    /// The value (or an argument) is not a finite number.
    #[error("the value is not a valid float")]
    NotFloat,
    /// An integer increment would leave the 64-bit range.
    #[error("the increment or decrement would overflow")]
    Overflow,
    /// A float increment would make NaN or an infinity.
    #[error("the increment would produce NaN or infinity")]
    NanOrInfinity,
    /// A string would pass the largest value allowed (`proto-max-bulk-len`).
    #[error("the string would exceed the maximum allowed size")]
    TooLong,
    /// The key does not exist (`RENAME`).
    #[error("no such key")]
    NoSuchKey,
    /// A hash field does not hold an integer (`HINCRBY`).
    #[error("the hash field's value is not an integer")]
    HashNotInteger,
    /// A hash field does not hold a float (`HINCRBYFLOAT`).
    #[error("the hash field's value is not a float")]
    HashNotFloat,
    /// The strings are too long to compare (`LCS`).
    #[error("the strings are too long to compare")]
    LcsTooLarge,
}

impl Reply {
    /// An error reply worded by the command layer (the text after `-`).
    pub fn error(msg: impl Into<String>) -> Reply {
        Reply::Error(msg.into())
    }

    /// A bulk reply from a static string.
    pub fn text(s: &'static str) -> Reply {
        Reply::Bulk(Bytes::from_static(s.as_bytes()))
    }

    /// Whether this reply is an error of either kind.
    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error(_) | Reply::Fault(_))
    }

    /// The bytes this reply holds in memory, about: each reply's own size plus its strings
    /// (counted even where several replies share one value). Saturates instead of overflowing.
    pub fn footprint(&self) -> usize {
        let own = std::mem::size_of::<Reply>();
        let sum = |items: &mut dyn Iterator<Item = &Reply>| {
            items.fold(own, |total, r| total.saturating_add(r.footprint()))
        };
        match self {
            Reply::Bulk(b) => own.saturating_add(b.len()),
            Reply::Status(s) | Reply::Error(s) => own.saturating_add(s.len()),
            Reply::Array(items) | Reply::Set(items) => sum(&mut items.iter()),
            Reply::Map(pairs) | Reply::Pairs(pairs) => {
                sum(&mut pairs.iter().flat_map(|(k, v)| [k, v]))
            }
            Reply::Ok | Reply::Nil | Reply::NilArray | Reply::Int(_) | Reply::Fault(_) => own,
        }
    }

    /// The bytes of a header line for `n` (`*n`, `$n`, `%n` …): a type byte, `n` in decimal and
    /// CRLF.
    pub fn header_bytes(n: usize) -> usize {
        3 + n.checked_ilog10().map_or(1, |d| d as usize + 1)
    }

    /// An upper bound on the bytes this reply takes once encoded, in either protocol, and
    /// within a few bytes of it: a type byte, a length and the line ends for each element,
    /// plus its strings. It walks the reply without building anything, so a reply that repeats
    /// one large value many times is measured without being copied. Saturates instead of
    /// overflowing.
    pub fn encoded_bytes(&self) -> usize {
        let header = Reply::header_bytes;
        let sum = |n: usize, items: &mut dyn Iterator<Item = &Reply>| {
            items.fold(header(n), |total, r| {
                total.saturating_add(r.encoded_bytes())
            })
        };
        match self {
            Reply::Ok | Reply::Nil | Reply::NilArray => 5,
            // `:` and up to 20 characters.
            Reply::Int(_) => 23,
            // A fault's wording is one of a few short sentences.
            Reply::Fault(_) => 3 + 80,
            Reply::Status(s) | Reply::Error(s) => s.len().saturating_add(3),
            Reply::Bulk(b) => header(b.len()).saturating_add(b.len()).saturating_add(2),
            Reply::Array(items) | Reply::Set(items) => sum(items.len(), &mut items.iter()),
            // RESP2 sends the pairs as one flat array of twice as many; RESP3 sends `Pairs`
            // as two-element arrays (`*2` and CRLF each).
            Reply::Map(pairs) | Reply::Pairs(pairs) => sum(
                pairs.len().saturating_mul(2),
                &mut pairs.iter().flat_map(|(k, v)| [k, v]),
            )
            .saturating_add(if matches!(self, Reply::Pairs(_)) {
                pairs.len().saturating_mul(4)
            } else {
                0
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use super::*;
    use crate::resp::Proto;

    #[test]
    fn the_size_estimate_is_never_below_the_encoding() {
        let big = Reply::Bulk(Bytes::from(vec![b'v'; 1000]));
        let replies = [
            Reply::Ok,
            Reply::Nil,
            Reply::NilArray,
            Reply::Int(i64::MIN),
            Reply::Status("QUEUED".into()),
            Reply::error("ERR something"),
            Reply::Fault(Error::WrongType),
            Reply::Fault(Error::TooLong),
            Reply::Fault(Error::LcsTooLarge),
            Reply::Bulk(Bytes::new()),
            Reply::Array(vec![Reply::Int(1); 10]),
            Reply::Pairs(vec![(Reply::Nil, Reply::Int(i64::MAX)); 12]),
            big.clone(),
            Reply::Array(vec![big.clone(), Reply::Int(-1), Reply::Array(vec![])]),
            Reply::Set(vec![big.clone(); 3]),
            Reply::Map(vec![(Reply::text("k"), big.clone()); 2]),
            Reply::Pairs(vec![(big.clone(), Reply::Nil); 2]),
        ];
        for r in &replies {
            for proto in [Proto::Resp2, Proto::Resp3] {
                let mut out = BytesMut::new();
                crate::resp::encode(r, &mut out, proto);
                assert!(r.encoded_bytes() >= out.len(), "{r:?} in {proto:?}");
            }
        }
        // Close to the encoding: within a few bytes per element (KEYS stops at the output
        // limit by it, so a large overestimate would refuse a reply that fits).
        let keys = Reply::Array(
            (0..10_000)
                .map(|i| Reply::Bulk(format!("key:{i}").into()))
                .collect(),
        );
        let mut out = BytesMut::new();
        crate::resp::encode(&keys, &mut out, Proto::Resp2);
        assert!(
            keys.encoded_bytes() <= out.len() + out.len() / 10,
            "{} for {}",
            keys.encoded_bytes(),
            out.len()
        );
        // Counted by walking: a million references to one value are not copied to be measured.
        let many = Reply::Array(vec![big; 1 << 20]);
        assert!(many.encoded_bytes() > 1000 << 20);
    }
}
