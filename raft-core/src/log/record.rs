//! Checksummed record framing: `[len: u32 LE][crc: u32 LE][payload: len bytes]`.
//!
//! `crc` is CRC-32C (Castagnoli) over the four `len` bytes followed by the payload, so a torn or
//! zeroed length is caught as surely as a damaged payload. `len` is never zero: an all-zero
//! header marks the end of the written part of a preallocated segment.

/// Bytes before the payload of every record.
pub(crate) const HEADER_LEN: usize = 8;

/// The largest payload a record may carry. Larger writes are refused before they reach the disk.
pub(crate) const MAX_PAYLOAD: usize = 256 << 20;

/// Appends one framed record to `buf`; `write_payload` appends the payload bytes.
///
/// Returns the payload length. Fails if the payload is empty or larger than [`MAX_PAYLOAD`]; on
/// failure `buf` is left as it was.
pub(crate) fn append_framed<E>(
    buf: &mut Vec<u8>,
    write_payload: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
) -> Result<Result<usize, FrameError>, E> {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; HEADER_LEN]);
    if let Err(e) = write_payload(buf) {
        buf.truncate(start);
        return Err(e);
    }
    let len = buf.len() - start - HEADER_LEN;
    if len == 0 || len > MAX_PAYLOAD {
        buf.truncate(start);
        return Ok(Err(FrameError::BadLength(len)));
    }
    let len_bytes = (len as u32).to_le_bytes();
    let crc = crc32c::crc32c_append(crc32c::crc32c(&len_bytes), &buf[start + HEADER_LEN..]);
    buf[start..start + 4].copy_from_slice(&len_bytes);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(Ok(len))
}

/// A record could not be framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FrameError {
    /// The payload is empty or exceeds [`MAX_PAYLOAD`].
    #[error("record payload of {0} bytes is outside 1..={MAX_PAYLOAD}")]
    BadLength(usize),
}

/// What is found at some offset of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// A record whose checksum holds; its payload is `len` bytes after the header.
    Record { len: usize },
    /// An all-zero header: nothing was written here.
    End,
    /// Something that is not a valid record (torn, damaged or garbage).
    Invalid(&'static str),
}

/// Parses the record at the start of `bytes` (which may extend past it).
pub(crate) fn parse(bytes: &[u8]) -> Parsed {
    if bytes.len() < HEADER_LEN {
        if bytes.iter().all(|b| *b == 0) {
            return Parsed::End;
        }
        return Parsed::Invalid("truncated record header");
    }
    let len_bytes: [u8; 4] = [bytes[0], bytes[1], bytes[2], bytes[3]];
    let len = u32::from_le_bytes(len_bytes) as usize;
    let crc = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    if len == 0 {
        if crc == 0 {
            return Parsed::End;
        }
        return Parsed::Invalid("zero length with a non-zero checksum");
    }
    if len > MAX_PAYLOAD {
        return Parsed::Invalid("record length exceeds the maximum");
    }
    if bytes.len() < HEADER_LEN + len {
        return Parsed::Invalid("record extends past the end of the segment");
    }
    let payload = &bytes[HEADER_LEN..HEADER_LEN + len];
    if crc32c::crc32c_append(crc32c::crc32c(&len_bytes), payload) != crc {
        return Parsed::Invalid("checksum mismatch");
    }
    Parsed::Record { len }
}

/// Verifies the checksum of one record read back in full (header and payload).
pub(crate) fn verify(record: &[u8]) -> bool {
    matches!(parse(record), Parsed::Record { len } if len + HEADER_LEN == record.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(payload: &[u8]) -> Vec<u8> {
        let mut buf = Vec::new();
        let res: Result<_, ()> = append_framed(&mut buf, |b| {
            b.extend_from_slice(payload);
            Ok(())
        });
        res.unwrap().unwrap();
        buf
    }

    #[test]
    fn frames_and_parses() {
        let r = framed(b"hello");
        assert_eq!(parse(&r), Parsed::Record { len: 5 });
        assert!(verify(&r));
    }

    #[test]
    fn every_damage_is_detected() {
        let r = framed(b"hello world");
        for i in 0..r.len() {
            for bit in 0..8 {
                let mut d = r.clone();
                d[i] ^= 1 << bit;
                assert!(
                    !matches!(parse(&d), Parsed::Record { len: 11 }),
                    "flip at {i}:{bit}"
                );
            }
        }
        for cut in 0..r.len() {
            assert!(
                !matches!(parse(&r[..cut]), Parsed::Record { .. }),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn zeros_are_the_end() {
        assert_eq!(parse(&[0u8; 64]), Parsed::End);
        assert_eq!(parse(&[0u8; 3]), Parsed::End);
        assert_eq!(parse(&[]), Parsed::End);
    }

    #[test]
    fn empty_payload_is_refused() {
        let mut buf = vec![9];
        let res: Result<_, ()> = append_framed(&mut buf, |_| Ok(()));
        assert_eq!(res.unwrap(), Err(FrameError::BadLength(0)));
        assert_eq!(buf, vec![9]);
    }
}
