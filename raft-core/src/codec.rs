//! The one serialisation format raftkit uses for bytes it keeps or sends: [postcard].
//!
//! postcard is a compact serde format with a documented, stable wire format — which matters
//! because these bytes live on disk (the write-ahead log, snapshots) and cross versions of a
//! cluster. Every encode and decode in raftkit goes through this module.
//!
//! [postcard]: https://docs.rs/postcard

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A value could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[error("codec error: {0}")]
pub struct CodecError(#[from] postcard::Error);

/// Encodes `value` into a fresh buffer.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    Ok(postcard::to_stdvec(value)?)
}

/// Appends the encoding of `value` to `buf`, reusing its allocation.
pub fn encode_into<T: Serialize + ?Sized>(value: &T, buf: &mut Vec<u8>) -> Result<(), CodecError> {
    postcard::to_io(value, &mut *buf)?;
    Ok(())
}

/// Decodes a `T` that must span all of `bytes`; trailing bytes are an error.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, rest) = postcard::take_from_bytes(bytes)?;
    if !rest.is_empty() {
        return Err(CodecError(postcard::Error::DeserializeBadEncoding));
    }
    Ok(value)
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
    fn encode_into_appends() {
        let mut buf = vec![1, 2];
        encode_into(&5u8, &mut buf).unwrap();
        assert_eq!(buf, vec![1, 2, 5]);
    }
}
