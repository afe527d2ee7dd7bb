//! The one serialisation format raftkit uses for bytes it keeps or sends: [postcard].
//!
//! postcard is a compact serde format with a documented, stable wire format — which matters
//! because these bytes live on disk (the write-ahead log, snapshots) and cross versions of a
//! cluster. Every encode and decode in raftkit goes through this module. What clients send
//! (commands and queries) is decoded with [`decode_input`], which bounds how deeply a value may
//! nest ([`MAX_DEPTH`]).
//!
//! [postcard]: https://docs.rs/postcard

mod depth;

pub use depth::MAX_DEPTH;

use std::io;
use std::io::BufRead;
use std::io::BufReader;
use std::io::Read;

use serde::Serialize;
use serde::de::DeserializeOwned;

use depth::Limited;

/// A value could not be encoded or decoded.
#[derive(Debug, Clone, thiserror::Error)]
#[error("codec error: {0}")]
pub struct CodecError(#[source] Failure);

/// What went wrong, inside a [`CodecError`].
#[derive(Debug, Clone, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Format(postcard::Error),
    #[error("the value nests more than {MAX_DEPTH} levels deep")]
    TooDeep,
}

impl From<postcard::Error> for CodecError {
    fn from(e: postcard::Error) -> CodecError {
        CodecError(Failure::Format(e))
    }
}

/// Decodes a `T` from `de`, at most [`MAX_DEPTH`] levels deep.
fn deserialize_within<'de, T, F>(de: &mut postcard::Deserializer<'de, F>) -> Result<T, CodecError>
where
    T: serde::Deserialize<'de>,
    F: postcard::de_flavors::Flavor<'de>,
{
    let tripped = std::cell::Cell::new(false);
    T::deserialize(Limited::new(de, depth::Depth::new(&tripped))).map_err(|e| {
        if tripped.get() {
            CodecError(Failure::TooDeep)
        } else {
            CodecError::from(e)
        }
    })
}

/// Decodes what a client sent (a command, a query) as [`decode`] does, refusing a value that
/// nests more than [`MAX_DEPTH`] levels deep (see the `depth` module): decoding recurses once
/// per level, so a short input nested thousands deep would otherwise overflow the stack and
/// abort the process. The refusal depends only on the bytes, so every replica agrees.
///
/// Values raftkit or the state machine built itself (outputs, snapshots, the log's records)
/// are decoded without the bound: they are as deep as the state they came from, which the
/// process that built them held without trouble.
pub fn decode_input<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let mut de = postcard::Deserializer::from_bytes(bytes);
    let value = deserialize_within(&mut de)?;
    if !de.finalize()?.is_empty() {
        return Err(CodecError::from(postcard::Error::DeserializeBadEncoding));
    }
    Ok(value)
}

/// Encodes `value` into a fresh buffer of exactly its encoded length: counted first, then
/// built in one allocation (a buffer grown as it is written reallocates a 256-byte write four
/// times).
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    build(value, encoded_len(value)?)
}

/// Encodes `value`, whose encoding is `len` bytes long, into one allocation of that length.
fn build<T: Serialize + ?Sized>(value: &T, len: usize) -> Result<Vec<u8>, CodecError> {
    let mut buf = Vec::with_capacity(len);
    encode_into(value, &mut buf)?;
    Ok(buf)
}

/// How many bytes [`encode`] would produce for `value`, counted without building them.
pub fn encoded_len<T: Serialize + ?Sized>(value: &T) -> Result<usize, CodecError> {
    Ok(postcard::experimental::serialized_size(value)?)
}

/// Encodes `value` into a fresh buffer unless its encoding is longer than `max` bytes: then
/// `Ok(None)`, found as soon as the count passes `max`, so no more than `max` bytes are counted
/// and none built however long the whole encoding would be (a value may share one large part
/// many times over). Otherwise the buffer is built as [`encode`] builds it, in one allocation
/// of its length.
pub fn encode_within<T: Serialize + ?Sized>(
    value: &T,
    max: usize,
) -> Result<Option<Vec<u8>>, CodecError> {
    let len = match postcard::serialize_with_flavor(value, CountWithin { len: 0, max }) {
        Ok(len) => len,
        // Only `CountWithin` reports a full buffer.
        Err(postcard::Error::SerializeBufferFull) => return Ok(None),
        Err(e) => return Err(CodecError::from(e)),
    };
    build(value, len).map(Some)
}

/// Counts an encoding's bytes, refusing to count past `max`.
struct CountWithin {
    len: usize,
    max: usize,
}

impl postcard::ser_flavors::Flavor for CountWithin {
    type Output = usize;

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        if data.len() > self.max - self.len {
            return Err(postcard::Error::SerializeBufferFull);
        }
        self.len += data.len();
        Ok(())
    }

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.try_extend(&[data])
    }

    fn finalize(self) -> postcard::Result<usize> {
        Ok(self.len)
    }
}

/// Appends the encoding of `value` to `buf`, reusing its allocation.
pub fn encode_into<T: Serialize + ?Sized>(value: &T, buf: &mut Vec<u8>) -> Result<(), CodecError> {
    postcard::to_io(value, &mut *buf)?;
    Ok(())
}

/// Decodes a `T` that must span all of `bytes`; trailing bytes are an error. For what a client
/// sent, use [`decode_input`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, rest) = decode_prefix(bytes)?;
    if !rest.is_empty() {
        return Err(CodecError::from(postcard::Error::DeserializeBadEncoding));
    }
    Ok(value)
}

/// Decodes a `T` that must span all of `bytes`, like [`decode`], and also says how many bytes
/// the decoder read before it succeeded or gave up. Decoding does work (copies, collection
/// inserts) in proportion to the bytes it reads, so the count bounds what the attempt cost
/// whatever the bytes were.
pub(crate) fn decode_counting<T: DeserializeOwned>(bytes: &[u8]) -> (Result<T, CodecError>, usize) {
    let mut de = postcard::Deserializer::from_flavor(CountingSlice { bytes, read: 0 });
    let result = T::deserialize(&mut de).map_err(CodecError::from);
    // Finalizing a `CountingSlice` cannot fail; it hands back the count.
    let read = de.finalize().unwrap_or(bytes.len());
    let result = match result {
        Ok(_) if read != bytes.len() => {
            Err(CodecError::from(postcard::Error::DeserializeBadEncoding))
        }
        result => result,
    };
    (result, read)
}

/// A byte slice as postcard reads it, counting the bytes handed out.
struct CountingSlice<'de> {
    bytes: &'de [u8],
    read: usize,
}

impl<'de> postcard::de_flavors::Flavor<'de> for CountingSlice<'de> {
    type Remainder = usize;
    type Source = &'de [u8];

    fn pop(&mut self) -> postcard::Result<u8> {
        let b = *self
            .bytes
            .get(self.read)
            .ok_or(postcard::Error::DeserializeUnexpectedEnd)?;
        self.read += 1;
        Ok(b)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.bytes.len() - self.read)
    }

    fn try_take_n(&mut self, ct: usize) -> postcard::Result<&'de [u8]> {
        let end = self
            .read
            .checked_add(ct)
            .filter(|end| *end <= self.bytes.len())
            .ok_or(postcard::Error::DeserializeUnexpectedEnd)?;
        let taken = &self.bytes[self.read..end];
        self.read = end;
        Ok(taken)
    }

    fn finalize(self) -> postcard::Result<usize> {
        Ok(self.read)
    }
}

/// Decodes a `T` from the start of `bytes` and returns it with the bytes after it.
pub fn decode_prefix<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, &[u8]), CodecError> {
    Ok(postcard::take_from_bytes(bytes)?)
}

/// How much of a byte string or text value is read ahead at a time: a damaged length cannot make
/// the decoder allocate much more than the bytes that are really there.
const TAKE_STEP: usize = 16 << 20;
/// A scratch buffer above this size is released before a smaller value is read.
const SCRATCH_KEEP: usize = 1 << 20;

/// Decodes values one after another from a byte stream, holding at most one value's encoding
/// (the longest byte string or text in it) in memory, never the whole stream.
///
/// Types that borrow from their input (`&str`, `&[u8]`) cannot be decoded this way; owned ones
/// (`String`, `Vec<u8>`, `bytes::Bytes`, numbers, collections, derived structs and enums) can.
pub(crate) struct StreamDecoder<'r> {
    reader: BufReader<&'r mut dyn Read>,
    scratch: Vec<u8>,
}

impl<'r> StreamDecoder<'r> {
    /// A decoder over `input`, read through a 64 KiB buffer.
    pub fn new(input: &'r mut dyn Read) -> Self {
        StreamDecoder {
            reader: BufReader::with_capacity(64 << 10, input),
            scratch: Vec::new(),
        }
    }

    /// Decodes the next value. A stream that ends inside it is an `UnexpectedEof` error, bytes
    /// that do not decode an `InvalidData` one.
    pub fn next<T: DeserializeOwned>(&mut self) -> io::Result<T> {
        let mut failure = None;
        let flavor = ReadFlavor {
            reader: &mut self.reader,
            scratch: &mut self.scratch,
            failure: &mut failure,
        };
        let mut de = postcard::Deserializer::from_flavor(flavor);
        let result = T::deserialize(&mut de);
        match (result, failure) {
            (_, Some(e)) => Err(e),
            (Ok(v), None) => Ok(v),
            (Err(e), None) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                CodecError::from(e),
            )),
        }
    }

    /// Whether the stream has no bytes left.
    pub fn at_end(&mut self) -> io::Result<bool> {
        Ok(self.reader.fill_buf()?.is_empty())
    }
}

/// postcard's view of a [`StreamDecoder`]'s reader.
struct ReadFlavor<'a, 'r> {
    reader: &'a mut BufReader<&'r mut dyn Read>,
    scratch: &'a mut Vec<u8>,
    failure: &'a mut Option<io::Error>,
}

impl ReadFlavor<'_, '_> {
    fn fail(&mut self, e: io::Error) -> postcard::Error {
        *self.failure = Some(e);
        postcard::Error::DeserializeUnexpectedEnd
    }
}

impl<'de, 'a: 'de, 'r: 'de> postcard::de_flavors::Flavor<'de> for ReadFlavor<'a, 'r> {
    type Remainder = ();
    type Source = ();

    fn pop(&mut self) -> postcard::Result<u8> {
        let mut b = [0u8; 1];
        match self.reader.read_exact(&mut b) {
            Ok(()) => Ok(b[0]),
            Err(e) => Err(self.fail(e)),
        }
    }

    fn try_take_n(&mut self, _ct: usize) -> postcard::Result<&'de [u8]> {
        Err(self.fail(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a type that borrows from its input cannot be decoded from a stream",
        )))
    }

    fn try_take_n_temp<'b>(&'b mut self, ct: usize) -> postcard::Result<&'b [u8]>
    where
        'de: 'b,
    {
        if self.scratch.capacity() > SCRATCH_KEEP && ct <= SCRATCH_KEEP {
            *self.scratch = Vec::new();
        }
        self.scratch.clear();
        // Grow step by step as the bytes really arrive.
        while self.scratch.len() < ct {
            let step = (ct - self.scratch.len()).min(TAKE_STEP);
            self.scratch.reserve_exact(step);
            let got = match (&mut *self.reader)
                .take(step as u64)
                .read_to_end(self.scratch)
            {
                Ok(n) => n,
                Err(e) => return Err(self.fail(e)),
            };
            if got < step {
                return Err(self.fail(io::ErrorKind::UnexpectedEof.into()));
            }
        }
        Ok(&self.scratch[..ct])
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_trailing_bytes() {
        let v = (7u64, String::from("x"));
        let mut bytes = encode(&v).unwrap();
        assert_eq!(decode::<(u64, String)>(&bytes).unwrap(), v);
        bytes.push(0);
        assert!(decode::<(u64, String)>(&bytes).is_err());
    }

    #[test]
    fn encode_within_builds_at_most_max_bytes() {
        let part = vec![7u8; 1000];
        let v: Vec<&Vec<u8>> = vec![&part; 50];
        let whole = encode(&v).unwrap();
        assert_eq!(encode_within(&v, whole.len()).unwrap(), Some(whole.clone()));
        assert_eq!(encode_within(&v, usize::MAX).unwrap(), Some(whole.clone()));
        assert_eq!(encode_within(&v, whole.len() - 1).unwrap(), None);
        assert_eq!(encode_within(&v, 0).unwrap(), None);
        assert_eq!(encode_within(&(), 0).unwrap(), Some(Vec::new()));
        // One MiB shared a million times over: a TiB if it were all built.
        let mib = vec![1u8; 1 << 20];
        let huge: Vec<&[u8]> = vec![&mib[..]; 1_000_000];
        assert_eq!(encode_within(&huge, 4 << 20).unwrap(), None);
    }

    #[test]
    fn encodings_are_built_in_one_allocation_of_their_length() {
        let v = (
            7u64,
            bytes::Bytes::from(vec![1u8; 300]),
            String::from("key"),
        );
        let whole = encode(&v).unwrap();
        assert_eq!(decode::<(u64, bytes::Bytes, String)>(&whole).unwrap(), v);
        assert_eq!(whole.capacity(), whole.len());
        let within = encode_within(&v, whole.len()).unwrap().unwrap();
        assert_eq!(within, whole);
        assert_eq!(within.capacity(), within.len());
    }

    #[test]
    fn encoded_len_counts_what_encode_writes() {
        let shared = bytes::Bytes::from(vec![1u8; 300]);
        let v = (
            7u64,
            String::from("x"),
            vec![shared.clone(), shared],
            Some(-5i32),
        );
        assert_eq!(encoded_len(&v).unwrap(), encode(&v).unwrap().len());
    }

    #[test]
    fn a_stream_decodes_value_after_value() {
        let big = vec![7u8; 3 * TAKE_STEP + 5];
        let mut bytes = Vec::new();
        encode_into(&(1u64, String::from("one")), &mut bytes).unwrap();
        encode_into(&serde_bytes_like(&big), &mut bytes).unwrap();
        encode_into(&(-3i128, 2.5f64, 'x', Some(9u8)), &mut bytes).unwrap();
        let mut input = bytes.as_slice();
        let mut d = StreamDecoder::new(&mut input);
        assert_eq!(d.next::<(u64, String)>().unwrap(), (1, "one".into()));
        assert_eq!(d.next::<bytes::Bytes>().unwrap(), big);
        assert_eq!(
            d.next::<(i128, f64, char, Option<u8>)>().unwrap(),
            (-3, 2.5, 'x', Some(9))
        );
        assert!(d.at_end().unwrap());
        assert_eq!(
            d.next::<u8>().unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
    }

    #[test]
    fn counting_decodes_like_decode_and_counts_what_it_read() {
        let v = (7u64, bytes::Bytes::from(vec![1u8; 1000]));
        let mut bytes = encode(&v).unwrap();
        let (got, read) = decode_counting::<(u64, bytes::Bytes)>(&bytes);
        assert_eq!(got.unwrap(), v);
        assert_eq!(read, bytes.len());
        // A length beyond the input fails after reading only the fields before the bytes.
        bytes.truncate(500);
        let (got, read) = decode_counting::<(u64, bytes::Bytes)>(&bytes);
        assert!(got.is_err());
        assert_eq!(read, 3);
        // Trailing bytes fail after the value was read in full.
        let mut bytes = encode(&v).unwrap();
        bytes.push(0);
        let (got, read) = decode_counting::<(u64, bytes::Bytes)>(&bytes);
        assert!(got.is_err());
        assert_eq!(read, bytes.len() - 1);
    }

    fn serde_bytes_like(b: &[u8]) -> bytes::Bytes {
        bytes::Bytes::copy_from_slice(b)
    }

    #[test]
    fn a_stream_cut_short_or_damaged_is_an_error_not_an_allocation() {
        let mut bytes = Vec::new();
        encode_into(&bytes::Bytes::from(vec![1u8; 1000]), &mut bytes).unwrap();
        for cut in 0..bytes.len() {
            let mut input = &bytes[..cut];
            let err = StreamDecoder::new(&mut input)
                .next::<bytes::Bytes>()
                .unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "cut at {cut}");
        }
        // A length of 2^60 bytes with nothing behind it fails without allocating it.
        let mut huge = Vec::new();
        encode_into(&(1u64 << 60), &mut huge).unwrap();
        let mut input = huge.as_slice();
        let err = StreamDecoder::new(&mut input)
            .next::<bytes::Bytes>()
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        // Bytes that are not the type asked for.
        let mut input: &[u8] = &[0x02];
        let err = StreamDecoder::new(&mut input).next::<bool>().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn encode_into_appends() {
        let mut buf = vec![1, 2];
        encode_into(&5u8, &mut buf).unwrap();
        assert_eq!(buf, vec![1, 2, 5]);
    }
}
