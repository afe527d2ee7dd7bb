//! Checksummed record framing, in two formats.
//!
//! **Salted** (segments of format `RKWAL002`, the only format new records are written in):
//!
//! ```text
//! [len: u32 LE][payload crc: u32 LE][header crc: u32 LE][payload: len bytes]
//! payload crc = crc32c(payload)
//! header crc  = crc32c(salt ++ len ++ payload crc)
//! ```
//!
//! `salt` is the four bytes (LE) of a random number drawn when the segment is created and kept in
//! its header (see `segment.rs`); it is never written anywhere else. Two consequences:
//!
//! * No data can contain a valid record of the segment it is written to, short of guessing the
//!   salt (one chance in 2^32 per try, with no way to observe a miss): a client's value that
//!   embeds the bytes of a record framed for any other salt is not a record here. Recovery relies
//!   on this to tell a torn tail from damage in the middle of the log (`recovery.rs`).
//! * Whether a record can start at some offset is decided from its 12 header bytes alone, so a
//!   search for records costs O(1) per offset; the payload is checksummed only where the header
//!   check passes, which bytes not written as this segment's header do with probability 2^-32.
//!
//! **Legacy** (segments of format `RKWAL001`, read but never written to any more, and the meta
//! file, which holds no client data):
//!
//! ```text
//! [len: u32 LE][crc32c(len ++ payload): u32 LE][payload: len bytes]
//! ```
//!
//! In both formats `len` is never zero: an all-zero header marks the end of the written part of a
//! preallocated segment.

/// Bytes before the payload of a legacy record.
pub(crate) const LEGACY_HEADER_LEN: usize = 8;

/// Bytes before the payload of a salted record.
pub(crate) const SALTED_HEADER_LEN: usize = 12;

/// The largest payload a record may carry. Larger writes are refused before they reach the disk.
pub(crate) const MAX_PAYLOAD: usize = 256 << 20;

/// CRC-32C of `bytes` continuing from `seed`; every checksum of this module goes through here so
/// that tests can measure how many bytes recovery checksums.
fn crc(seed: u32, bytes: &[u8]) -> u32 {
    #[cfg(test)]
    work::add(bytes.len());
    crc32c::crc32c_append(seed, bytes)
}

/// How a segment's records are framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// `[len][crc32c(len ++ payload)][payload]`: segments of format `RKWAL001`.
    Legacy,
    /// `[len][payload crc][header crc][payload]` keyed by the segment's salt: `RKWAL002`.
    Salted(Salt),
}

/// The per-segment secret of the salted framing, as the CRC state it seeds header checksums with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Salt {
    seed: u32,
}

impl Salt {
    /// The framing keyed by the salt `salt` (the number kept in a segment's header).
    pub fn new(salt: u32) -> Salt {
        Salt {
            seed: crc(0, &salt.to_le_bytes()),
        }
    }

    /// The header checksum of a record with these length and payload checksum fields.
    fn header_crc(&self, len: [u8; 4], payload_crc: [u8; 4]) -> u32 {
        let mut fields = [0u8; 8];
        fields[..4].copy_from_slice(&len);
        fields[4..].copy_from_slice(&payload_crc);
        crc(self.seed, &fields)
    }

    /// Whether `bytes` start with a header written with this salt. O(1): reads 12 bytes and
    /// checksums 8, whatever length the header claims.
    pub fn header_matches(&self, bytes: &[u8]) -> bool {
        let Some(h) = bytes.get(..SALTED_HEADER_LEN) else {
            return false;
        };
        let stored = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
        self.header_crc([h[0], h[1], h[2], h[3]], [h[4], h[5], h[6], h[7]]) == stored
    }

    /// Re-keys a record framed for another salt (its first [`SALTED_HEADER_LEN`] bytes) to this
    /// one: the payload checksum does not depend on the salt, so only the header checksum is
    /// recomputed. Used when an entry framed for a full segment moves to the next one.
    pub fn restamp(&self, record: &mut [u8]) {
        if record.len() < SALTED_HEADER_LEN {
            return;
        }
        let len = [record[0], record[1], record[2], record[3]];
        let payload_crc = [record[4], record[5], record[6], record[7]];
        let header_crc = self.header_crc(len, payload_crc);
        record[8..12].copy_from_slice(&header_crc.to_le_bytes());
    }
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
    /// A record whose checksums hold; its payload is `len` bytes after the header.
    Record { len: usize },
    /// An all-zero header: nothing was written here.
    End,
    /// Something that is not a valid record (torn, damaged or garbage).
    Invalid(&'static str),
}

impl Framing {
    /// Bytes before the payload of a record in this framing.
    pub fn header_len(self) -> usize {
        match self {
            Framing::Legacy => LEGACY_HEADER_LEN,
            Framing::Salted(_) => SALTED_HEADER_LEN,
        }
    }

    /// Appends one record framed this way to `buf`; `write_payload` appends the payload bytes
    /// after room for the header, which is filled in once the payload's length and checksum are
    /// known. The payload is written in place: nothing is copied.
    ///
    /// Returns the payload length. Fails if the payload is empty or larger than [`MAX_PAYLOAD`];
    /// on any failure `buf` is left as it was.
    pub fn append_framed<E>(
        self,
        buf: &mut Vec<u8>,
        write_payload: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<Result<usize, FrameError>, E> {
        let header_len = self.header_len();
        let start = buf.len();
        buf.resize(start + header_len, 0);
        if let Err(e) = write_payload(buf) {
            buf.truncate(start);
            return Err(e);
        }
        let len = buf.len() - start - header_len;
        if len == 0 || len > MAX_PAYLOAD {
            buf.truncate(start);
            return Ok(Err(FrameError::BadLength(len)));
        }
        let (header, payload) = buf[start..].split_at_mut(header_len);
        let len_bytes = (len as u32).to_le_bytes();
        header[..4].copy_from_slice(&len_bytes);
        match self {
            Framing::Legacy => {
                let crc = crc(crc(0, &len_bytes), payload);
                header[4..8].copy_from_slice(&crc.to_le_bytes());
            }
            Framing::Salted(salt) => {
                let payload_crc = crc(0, payload).to_le_bytes();
                header[4..8].copy_from_slice(&payload_crc);
                let header_crc = salt.header_crc(len_bytes, payload_crc);
                header[8..12].copy_from_slice(&header_crc.to_le_bytes());
            }
        }
        Ok(Ok(len))
    }

    /// Parses the record at the start of `bytes` (which may extend past it). A salted header is
    /// checked before anything else, so a payload is only checksummed behind a header written
    /// with this segment's salt.
    pub fn parse(self, bytes: &[u8]) -> Parsed {
        let header_len = self.header_len();
        let Some(header) = bytes.get(..header_len) else {
            if bytes.iter().all(|b| *b == 0) {
                return Parsed::End;
            }
            return Parsed::Invalid("truncated record header");
        };
        if header.iter().all(|b| *b == 0) {
            return Parsed::End;
        }
        if let Framing::Salted(salt) = self
            && !salt.header_matches(header)
        {
            return Parsed::Invalid("record header checksum mismatch");
        }
        self.parse_after_header(bytes)
    }

    /// [`Framing::parse`] from the point where the header has passed the checks that need no
    /// payload: `bytes` start with a header that is not all zero and, in the salted framing,
    /// that [`Salt::header_matches`]. Checks the length and the payload's checksum.
    pub fn parse_after_header(self, bytes: &[u8]) -> Parsed {
        let header_len = self.header_len();
        if bytes.len() < header_len {
            return Parsed::Invalid("truncated record header");
        }
        let len_bytes = [bytes[0], bytes[1], bytes[2], bytes[3]];
        let len = u32::from_le_bytes(len_bytes) as usize;
        if len == 0 {
            return Parsed::Invalid("zero length with a non-zero checksum");
        }
        if len > MAX_PAYLOAD {
            return Parsed::Invalid("record length exceeds the maximum");
        }
        let Some(payload) = bytes.get(header_len..header_len + len) else {
            return Parsed::Invalid("record extends past the end of the segment");
        };
        let stored = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        let computed = match self {
            Framing::Legacy => crc(crc(0, &len_bytes), payload),
            Framing::Salted(_) => crc(0, payload),
        };
        if computed != stored {
            return Parsed::Invalid("checksum mismatch");
        }
        Parsed::Record { len }
    }

    /// Verifies the checksums of one record read back in full (header and payload).
    pub fn verify(self, record: &[u8]) -> bool {
        matches!(self.parse(record), Parsed::Record { len } if len + self.header_len() == record.len())
    }
}

/// Test-only accounting of the bytes checksummed on the current thread, with a tripwire: a test
/// that bounds the work of recovery fails at once when the bound is passed, instead of running
/// for as long as unbounded work takes.
#[cfg(test)]
pub(crate) mod work {
    use std::cell::Cell;

    thread_local! {
        static CHECKSUMMED: Cell<u64> = const { Cell::new(0) };
        static LIMIT: Cell<u64> = const { Cell::new(u64::MAX) };
    }

    /// Counts `n` more bytes checksummed; panics past the limit set by [`start`].
    pub(super) fn add(n: usize) {
        let total = CHECKSUMMED.get() + n as u64;
        CHECKSUMMED.set(total);
        let limit = LIMIT.get();
        assert!(
            total <= limit,
            "{total} bytes checksummed on this thread, over the limit of {limit}"
        );
    }

    /// Starts counting from zero on this thread, failing once more than `limit` bytes are
    /// checksummed.
    pub fn start(limit: u64) {
        CHECKSUMMED.set(0);
        LIMIT.set(limit);
    }

    /// Bytes checksummed on this thread since [`start`]; lifts the limit.
    pub fn stop() -> u64 {
        LIMIT.set(u64::MAX);
        CHECKSUMMED.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn salted(salt: u32, payload: &[u8]) -> Vec<u8> {
        let mut buf = Vec::new();
        let res: Result<_, ()> = Framing::Salted(Salt::new(salt)).append_framed(&mut buf, |b| {
            b.extend_from_slice(payload);
            Ok(())
        });
        res.unwrap().unwrap();
        buf
    }

    fn legacy(payload: &[u8]) -> Vec<u8> {
        let mut buf = Vec::new();
        let res: Result<_, ()> = Framing::Legacy.append_framed(&mut buf, |b| {
            b.extend_from_slice(payload);
            Ok(())
        });
        res.unwrap().unwrap();
        buf
    }

    #[test]
    fn frames_and_parses_in_both_formats() {
        let salt = Framing::Salted(Salt::new(0x1234_5678));
        let r = salted(0x1234_5678, b"hello");
        assert_eq!(r.len(), SALTED_HEADER_LEN + 5);
        assert_eq!(salt.parse(&r), Parsed::Record { len: 5 });
        assert!(salt.verify(&r));
        let r = legacy(b"hello");
        assert_eq!(r.len(), LEGACY_HEADER_LEN + 5);
        assert_eq!(Framing::Legacy.parse(&r), Parsed::Record { len: 5 });
        assert!(Framing::Legacy.verify(&r));
    }

    #[test]
    fn both_framings_write_the_documented_bytes() {
        let payload = b"hello";
        let len = 5u32.to_le_bytes();
        // Legacy: [len][crc32c(len ++ payload)][payload].
        let mut expected = len.to_vec();
        expected.extend_from_slice(&crc32c::crc32c(&[&len[..], payload].concat()).to_le_bytes());
        expected.extend_from_slice(payload);
        assert_eq!(legacy(payload), expected);
        assert_eq!(
            legacy(payload),
            [
                0x05, 0x00, 0x00, 0x00, 0xa1, 0xb1, 0x17, 0x4e, b'h', b'e', b'l', b'l', b'o'
            ]
        );
        // Salted: [len][crc32c(payload)][crc32c(salt ++ len ++ payload crc)][payload].
        let salt = 0x1234_5678u32;
        let payload_crc = crc32c::crc32c(payload).to_le_bytes();
        let header_crc = crc32c::crc32c(&[&salt.to_le_bytes()[..], &len, &payload_crc].concat());
        let mut expected = len.to_vec();
        expected.extend_from_slice(&payload_crc);
        expected.extend_from_slice(&header_crc.to_le_bytes());
        expected.extend_from_slice(payload);
        assert_eq!(salted(salt, payload), expected);
        assert_eq!(
            salted(salt, payload),
            [
                0x05, 0x00, 0x00, 0x00, 0x4c, 0xbb, 0x71, 0x9a, 0x1c, 0xaa, 0xda, 0x42, b'h', b'e',
                b'l', b'l', b'o'
            ]
        );
    }

    #[test]
    fn a_record_of_another_salt_or_format_is_not_a_record() {
        let mine = Framing::Salted(Salt::new(7));
        for other in [salted(8, b"payload"), legacy(b"payload")] {
            assert!(matches!(mine.parse(&other), Parsed::Invalid(_)));
        }
        // The frame the legacy format reads as a commit marker of log id (1, 1, 1).
        let marker = legacy(&[1, 1, 1, 1]);
        assert_eq!(
            marker,
            [4, 0, 0, 0, 0x55, 0x13, 0xf8, 0x34, 1, 1, 1, 1],
            "the legacy framing is unchanged"
        );
        assert!(matches!(mine.parse(&marker), Parsed::Invalid(_)));
    }

    #[test]
    fn restamping_moves_a_record_to_another_salt() {
        let mut r = salted(1, b"moving");
        let to = Salt::new(2);
        assert!(!to.header_matches(&r));
        to.restamp(&mut r);
        assert_eq!(Framing::Salted(to).parse(&r), Parsed::Record { len: 6 });
        assert_eq!(r, salted(2, b"moving"));
    }

    #[test]
    fn every_damage_is_detected() {
        for (framing, r) in [
            (Framing::Legacy, legacy(b"hello world")),
            (Framing::Salted(Salt::new(99)), salted(99, b"hello world")),
        ] {
            for i in 0..r.len() {
                for bit in 0..8 {
                    let mut d = r.clone();
                    d[i] ^= 1 << bit;
                    assert!(
                        !matches!(framing.parse(&d), Parsed::Record { len: 11 }),
                        "{framing:?}: flip at {i}:{bit}"
                    );
                }
            }
            for cut in 0..r.len() {
                assert!(
                    !matches!(framing.parse(&r[..cut]), Parsed::Record { .. }),
                    "{framing:?}: cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn zeros_are_the_end() {
        for framing in [Framing::Legacy, Framing::Salted(Salt::new(3))] {
            assert_eq!(framing.parse(&[0u8; 64]), Parsed::End);
            assert_eq!(framing.parse(&[0u8; 3]), Parsed::End);
            assert_eq!(framing.parse(&[]), Parsed::End);
        }
    }

    #[test]
    fn the_salted_header_check_reads_no_payload() {
        let salt = Salt::new(5);
        // A header claiming 200 MiB: whether it matches is decided without reading them.
        let mut header = vec![0u8; SALTED_HEADER_LEN];
        header[..4].copy_from_slice(&(200u32 << 20).to_le_bytes());
        header[4] = 1;
        work::start(u64::MAX);
        assert!(!salt.header_matches(&header));
        assert!(matches!(
            Framing::Salted(salt).parse(&header),
            Parsed::Invalid(_)
        ));
        assert_eq!(work::stop(), 16);
    }

    #[test]
    fn empty_payload_is_refused() {
        let mut buf = vec![9];
        for framing in [Framing::Legacy, Framing::Salted(Salt::new(1))] {
            let res: Result<_, ()> = framing.append_framed(&mut buf, |_| Ok(()));
            assert_eq!(res.unwrap(), Err(FrameError::BadLength(0)));
            let res: Result<_, &str> = framing.append_framed(&mut buf, |b| {
                b.push(1);
                Err("payload failed")
            });
            assert_eq!(res, Err("payload failed"));
            assert_eq!(buf, vec![9]);
        }
    }
}
