//! RESP2: parsing client commands and encoding replies.
//!
//! A command is an array of bulk strings (`*2\r\n$3\r\nGET\r\n$1\r\nk\r\n`) or an inline line
//! (`GET k\r\n`, as typed into telnet). Parsing is incremental: a [`Parser`] takes each header
//! line and each complete bulk off the input as soon as it has arrived and remembers where it is
//! in the command, so a command trickled in over many reads is walked once, not once per read.
//! It is bounded: a bulk longer than [`Limits::max_bulk`] (Redis' `proto-max-bulk-len`), a
//! command larger than [`Limits::max_frame`] (Redis' `client-query-buffer-limit`), too many
//! arguments or an overlong line is a protocol error, so one connection can never make the
//! server buffer without limit.

use bytes::Buf;
use bytes::BufMut;
use bytes::Bytes;
use bytes::BytesMut;

use crate::store::Error;
use crate::store::Reply;

/// What a connection may send.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest bulk string, in bytes; also the largest string value APPEND may build.
    pub max_bulk: usize,
    /// Largest command, in bytes: its bulks plus [`ARG_OVERHEAD`] per argument.
    pub max_frame: usize,
    /// Most arguments in one command.
    pub max_args: usize,
    /// Longest inline command or header line, in bytes.
    pub max_line: usize,
}

/// What each argument costs besides its bytes, counted against [`Limits::max_frame`]: the
/// memory of its handle, so a command of a million empty arguments is as bounded as one of
/// large ones.
pub const ARG_OVERHEAD: usize = 32;

/// Room a connection's input buffer keeps free for the next read, and its size to start with.
pub const READ_ROOM: usize = 16 << 10;

/// Bulks from this size on get an input buffer of their own size (see [`Parser::next`]).
const LARGE_BULK: usize = 32 << 10;

/// Free space below which [`Parser::make_room`] grows the input buffer.
const LOW_ROOM: usize = 4 << 10;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bulk: 32 << 20,
            max_frame: 64 << 20,
            max_args: 1 << 20,
            max_line: 64 << 10,
        }
    }
}

impl Limits {
    /// What a connection may send before it has authenticated, when the node requires it (as
    /// Redis: ten arguments of 16 KiB): enough for `AUTH` and `HELLO … AUTH …`, and a stranger
    /// holds a few kilobytes of the node's memory, not a whole command's limit.
    pub fn unauthenticated(self) -> Limits {
        Limits {
            max_bulk: self.max_bulk.min(16 << 10),
            max_frame: self.max_frame.min(10 * ((16 << 10) + ARG_OVERHEAD)),
            max_args: self.max_args.min(10),
            max_line: self.max_line.min(16 << 10),
        }
    }
}

/// The client broke the protocol; the connection gets `-ERR Protocol error: …` and is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Protocol error: {0}")]
pub struct ProtocolError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, ProtocolError> {
    Err(ProtocolError(msg.into()))
}

fn parse_int(bytes: &[u8], what: &str) -> Result<i64, ProtocolError> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .map_or_else(|| err(format!("invalid {what}")), Ok)
}

/// A multi-bulk command part-way through.
#[derive(Debug, Default)]
struct Partial {
    /// Arguments still to come.
    remaining: usize,
    args: Vec<Bytes>,
    /// What the command has cost so far (see [`Limits::max_frame`]).
    size: usize,
    /// The length of the bulk whose header was read and whose data has not all arrived.
    bulk: Option<usize>,
}

/// One connection's parser: call [`Parser::make_room`] before every read and [`Parser::next`]
/// after it.
#[derive(Debug)]
pub struct Parser {
    limits: Limits,
    partial: Option<Partial>,
    /// How much of the input a line search already looked at without finding its end.
    scanned: usize,
    /// The input buffer was sized for a large bulk (see [`Parser::next`]): once that bulk is
    /// taken, [`Parser::make_room`] gives the buffer back.
    sized_for_bulk: bool,
}

impl Parser {
    /// A parser enforcing `limits`.
    pub fn new(limits: Limits) -> Parser {
        Parser {
            limits,
            partial: None,
            scanned: 0,
            sized_for_bulk: false,
        }
    }

    /// Makes room in a connection's input buffer for the next read.
    ///
    /// A buffer sized for a large bulk keeps [`READ_ROOM`] free to its end, so it is never
    /// grown again while that bulk arrives: a connection holds one command's bytes plus one
    /// read, not a doubled buffer. Once the bulk has been taken off it, the buffer is replaced
    /// by one of [`READ_ROOM`]: the large one would otherwise stay with the connection for as
    /// long as it is open (what is left of it is where the next reads go), so every
    /// connection that ever sent a large command would keep that command's size.
    pub fn make_room(&mut self, buf: &mut BytesMut) {
        if self.sized_for_bulk && !self.awaiting_large_bulk(buf) {
            self.sized_for_bulk = false;
            let mut fresh = BytesMut::with_capacity(READ_ROOM.max(buf.len() + LOW_ROOM));
            fresh.extend_from_slice(buf);
            *buf = fresh;
        }
        if buf.capacity() - buf.len() < LOW_ROOM {
            buf.reserve(READ_ROOM);
        }
    }

    /// Bytes of the command part-way through that the parser has taken off the input and
    /// holds (its complete arguments, with [`ARG_OVERHEAD`] each).
    pub fn held(&self) -> usize {
        self.partial
            .as_ref()
            .map_or(0, |p| p.size - p.bulk.map_or(0, |len| len + ARG_OVERHEAD))
    }

    /// Whether a bulk large enough to have sized the buffer is still arriving in `buf`.
    fn awaiting_large_bulk(&self, buf: &BytesMut) -> bool {
        matches!(
            self.partial,
            Some(Partial { bulk: Some(len), .. }) if len >= LARGE_BULK && buf.len() < len + 2
        )
    }

    /// Enforces `limits` from the next command on (a command part-way through keeps the
    /// checks it has passed).
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// Finds the end of a line at the start of `buf`, resuming where the last search stopped.
    fn line(&mut self, buf: &[u8], max: usize, what: &str) -> Result<Option<usize>, ProtocolError> {
        let from = self.scanned.saturating_sub(1);
        match memchr(b'\n', &buf[from..]) {
            // However it arrived: one read can bring a long line whole.
            Some(p) if from + p > max => err(format!("too big {what}")),
            Some(p) => {
                self.scanned = 0;
                let nl = from + p;
                if nl == 0 || buf[nl - 1] != b'\r' {
                    return err(format!("{what} not terminated by CRLF"));
                }
                Ok(Some(nl - 1))
            }
            None if buf.len() > max => err(format!("too big {what}")),
            None => {
                self.scanned = buf.len();
                Ok(None)
            }
        }
    }

    /// Takes one complete command off the front of `buf`: `Ok(None)` if more bytes are needed
    /// (whatever complete parts arrived are consumed and kept), `Ok(Some(args))` (possibly
    /// empty, for blank lines) when one was parsed.
    pub fn next(&mut self, buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        if self.partial.is_none() {
            if buf.is_empty() {
                return Ok(None);
            }
            if buf[0] != b'*' {
                return self.inline(buf);
            }
            let Some(end) = self.line(buf, self.limits.max_line, "array header")? else {
                return Ok(None);
            };
            let count = parse_int(&buf[1..end], "multibulk length")?;
            buf.advance(end + 2);
            if count <= 0 {
                return Ok(Some(Vec::new()));
            }
            let count = count as usize;
            if count > self.limits.max_args
                || count.saturating_mul(ARG_OVERHEAD) > self.limits.max_frame
            {
                return err("invalid multibulk length");
            }
            self.partial = Some(Partial {
                remaining: count,
                args: Vec::with_capacity(count.min(1024)),
                size: 0,
                bulk: None,
            });
        }
        let limits = self.limits;
        loop {
            let Some(p) = self.partial.as_mut() else {
                return Ok(None);
            };
            if p.remaining == 0 {
                let args = std::mem::take(&mut p.args);
                self.partial = None;
                return Ok(Some(args));
            }
            let len = match p.bulk {
                Some(len) => len,
                None => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    if buf[0] != b'$' {
                        return err(format!("expected '$', got '{}'", buf[0] as char));
                    }
                    let Some(end) = self.line(buf, limits.max_line, "bulk header")? else {
                        return Ok(None);
                    };
                    let len = parse_int(&buf[1..end], "bulk length")?;
                    if len < 0 || len as usize > limits.max_bulk {
                        return err("invalid bulk length");
                    }
                    let len = len as usize;
                    let p = self.partial.as_mut().expect("a command is in progress");
                    p.size += len + ARG_OVERHEAD;
                    if p.size > limits.max_frame {
                        return err(format!(
                            "too big command (over the {} byte query buffer limit)",
                            limits.max_frame
                        ));
                    }
                    buf.advance(end + 2);
                    p.bulk = Some(len);
                    len
                }
            };
            if buf.len() < len + 2 {
                // A large bulk: make room for all of it at once rather than growing by reads,
                // plus one read's room, so `make_room` never grows the buffer again before
                // the bulk is complete.
                if len >= LARGE_BULK {
                    buf.reserve(len + 2 - buf.len() + READ_ROOM);
                    self.sized_for_bulk = true;
                }
                return Ok(None);
            }
            if &buf[len..len + 2] != b"\r\n" {
                return err("bulk string not terminated by CRLF");
            }
            let arg = buf.split_to(len).freeze();
            buf.advance(2);
            let p = self.partial.as_mut().expect("a command is in progress");
            p.args.push(arg);
            p.remaining -= 1;
            p.bulk = None;
        }
    }

    fn inline(&mut self, buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        let from = self.scanned;
        let Some(p) = memchr(b'\n', &buf[from..]) else {
            if buf.len() > self.limits.max_line {
                return err("too big inline request");
            }
            self.scanned = buf.len();
            return Ok(None);
        };
        // However it arrived: one read can bring a long line whole, and its arguments (up to
        // one per two bytes) are bounded by the line's limit alone.
        if from + p > self.limits.max_line {
            return err("too big inline request");
        }
        self.scanned = 0;
        parse_inline_line(buf, from + p)
    }
}

fn memchr(needle: u8, haystack: &[u8]) -> Option<usize> {
    haystack.iter().position(|b| *b == needle)
}

/// Takes the inline command ending at `end` (the index of its `\n`) off `buf`.
fn parse_inline_line(buf: &mut BytesMut, end: usize) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    let line = buf.split_to(end + 1).freeze();
    let text = line.slice(..end);
    let text = text
        .strip_suffix(b"\r")
        .map_or(text.clone(), |t| line.slice(..t.len()));
    split_inline(&text).map(Some)
}

/// Splits an inline command into its arguments as Redis does (its `sdssplitargs`), so that what
/// redis-cli and telnet users type means the same here:
/// - arguments are separated by spaces, tabs, CR or LF;
/// - a quote, even in the middle of an argument, starts a quoted part: `a"b c"` is `ab c`;
/// - in double quotes, `\n`, `\r`, `\t`, `\b`, `\a` and `\xHH` are escapes and a backslash
///   before any other character stands for that character; in single quotes, only `\'` is;
/// - a closing quote must end the argument (a space or the end of the line follows it), and a
///   quote must be closed: otherwise the line is a protocol error, "unbalanced quotes".
///
/// An argument with no quote is a slice of `text`, not a copy.
fn split_inline(text: &Bytes) -> Result<Vec<Bytes>, ProtocolError> {
    #[derive(PartialEq)]
    enum In {
        Plain,
        Double,
        Single,
    }
    let hex = |c: u8| char::from(c).to_digit(16);
    // C's `isspace`, which Redis skips between arguments and wants after a closing quote.
    let space = |c: u8| matches!(c, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r');
    // What ends an argument outside quotes: all of it is skipped as space before an argument,
    // so every argument takes at least one byte. (A NUL, which ends a C string and so Redis's
    // arguments, is a byte like any other here.)
    let ends_argument = |c: u8| matches!(c, b' ' | b'\n' | b'\r' | b'\t');
    let mut args = Vec::new();
    let mut i = 0;
    loop {
        while i < text.len() && space(text[i]) {
            i += 1;
        }
        if i >= text.len() {
            return Ok(args);
        }
        let start = i;
        // The argument's bytes once a quote has begun (then they differ from the line's).
        let mut owned: Option<Vec<u8>> = None;
        let mut state = In::Plain;
        loop {
            let Some(&c) = text.get(i) else {
                if state != In::Plain {
                    return err("unbalanced quotes in request");
                }
                break;
            };
            match state {
                In::Plain if ends_argument(c) => break,
                // The argument so far is kept; the quoted part is added to it.
                In::Plain if c == b'"' || c == b'\'' => {
                    owned = Some(text[start..i].to_vec());
                    state = if c == b'"' { In::Double } else { In::Single };
                }
                In::Plain => {}
                In::Double | In::Single => {
                    let arg = owned.get_or_insert_with(Vec::new);
                    let quote = if state == In::Double { b'"' } else { b'\'' };
                    let next = text.get(i + 1).copied();
                    if c == quote {
                        // The quoted part ends the argument.
                        if next.is_some_and(|n| !space(n)) {
                            return err("unbalanced quotes in request");
                        }
                        i += 1;
                        break;
                    }
                    if state == In::Double && c == b'\\' && next == Some(b'x') {
                        let digits = (text.get(i + 2).copied().and_then(hex))
                            .zip(text.get(i + 3).copied().and_then(hex));
                        if let Some((high, low)) = digits {
                            // Two hex digits make at most 0xff.
                            arg.push(u8::try_from(high * 16 + low).unwrap_or(u8::MAX));
                            i += 4;
                            continue;
                        }
                    }
                    match (&state, c, next) {
                        (In::Double, b'\\', Some(n)) => {
                            arg.push(match n {
                                b'n' => b'\n',
                                b'r' => b'\r',
                                b't' => b'\t',
                                b'b' => 0x08,
                                b'a' => 0x07,
                                other => other,
                            });
                            i += 1;
                        }
                        (In::Single, b'\\', Some(b'\'')) => {
                            arg.push(b'\'');
                            i += 1;
                        }
                        _ => arg.push(c),
                    }
                }
            }
            i += 1;
        }
        debug_assert!(i > start, "an argument takes at least one byte");
        args.push(owned.map_or_else(|| text.slice(start..i), Bytes::from));
    }
}

/// The protocol a connection speaks: RESP2 until the client sends `HELLO 3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Resp2,
    Resp3,
}

/// A reply's encoding would take more bytes than it was allowed ([`encode_within`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the reply takes more than {budget} bytes")]
pub struct TooLarge {
    /// The bytes it was allowed.
    pub budget: usize,
}

/// An array whose length is known only once its last element is: its elements are encoded
/// straight into the output buffer, behind room kept for the header, and the header is written
/// last. So a reply of many parts found step by step (`KEYS`) is held once, as its encoding:
/// never as [`Reply`] values, and never copied into a second buffer.
#[derive(Debug)]
pub struct ArrayInPlace {
    /// Where the room for the header starts in the output buffer.
    start: usize,
    count: usize,
}

/// The longest array header: `*`, up to 20 digits and CRLF.
const ARRAY_HEADER_ROOM: usize = 23;

impl ArrayInPlace {
    /// Starts an array at the end of `out`.
    pub fn begin(out: &mut BytesMut) -> ArrayInPlace {
        let start = out.len();
        out.put_bytes(0, ARRAY_HEADER_ROOM);
        ArrayInPlace { start, count: 0 }
    }

    /// Appends one element.
    pub fn push(&mut self, item: &Reply, out: &mut BytesMut, proto: Proto) {
        encode(item, out, proto);
        self.count += 1;
    }

    /// What the whole array will take once `more` elements of `more_bytes` encoded bytes
    /// are pushed: its header and every element.
    pub fn len_with(&self, out: &BytesMut, more: usize, more_bytes: usize) -> usize {
        let elements = out.len() - self.start - ARRAY_HEADER_ROOM;
        Reply::header_bytes(self.count.saturating_add(more))
            .saturating_add(elements)
            .saturating_add(more_bytes)
    }

    /// Writes the header, and gives up the room it did not take: `out` then holds the
    /// array's encoding exactly as [`encode`] would have written it. Nothing is allocated: when
    /// the array starts the buffer, the buffer just starts later; otherwise the elements move
    /// once, in place, next to what came before.
    pub fn finish(self, out: &mut BytesMut) {
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(self.count).as_bytes();
        let len = digits.len() + 3;
        // The header goes at the end of its room, against the first element.
        let at = self.start + ARRAY_HEADER_ROOM - len;
        out[at] = b'*';
        out[at + 1..at + 1 + digits.len()].copy_from_slice(digits);
        out[at + len - 2..at + len].copy_from_slice(b"\r\n");
        let unused = ARRAY_HEADER_ROOM - len;
        if self.start == 0 {
            out.advance(unused);
        } else {
            out.copy_within(at.., self.start);
            out.truncate(out.len() - unused);
        }
    }

    /// Takes the array out of `out` again, leaving what came before it.
    pub fn abandon(self, out: &mut BytesMut) {
        out.truncate(self.start);
    }
}

/// Appends `reply` to `out` in the connection's protocol.
pub fn encode(reply: &Reply, out: &mut BytesMut, proto: Proto) {
    // With no end to the room, nothing is refused.
    let _ = Writer {
        out,
        end: usize::MAX,
    }
    .reply(reply, proto);
}

/// Appends `reply` to `out` in the connection's protocol unless its encoding takes more than
/// `budget` bytes: then `out` is left as it was. The encoding stops as soon as it would pass the
/// budget, so `out` never holds more than its bytes before plus `budget`: a reply's parts may
/// share one stored value many times over (`MGET k k k …`), so its encoding can be far larger
/// than the reply itself.
pub fn encode_within(
    reply: &Reply,
    out: &mut BytesMut,
    proto: Proto,
    budget: usize,
) -> Result<(), TooLarge> {
    let before = out.len();
    let written = Writer {
        out: &mut *out,
        end: before.saturating_add(budget),
    }
    .reply(reply, proto);
    written.map_err(|Full| {
        out.truncate(before);
        TooLarge { budget }
    })
}

/// A [`Writer`] reached the end of its room.
struct Full;

/// Appends an encoding to `out`, refusing any piece that would take `out` past `end` bytes.
struct Writer<'a> {
    out: &'a mut BytesMut,
    /// At least `out.len()`.
    end: usize,
}

impl Writer<'_> {
    /// Whether `n` more bytes fit.
    fn room(&self, n: usize) -> Result<(), Full> {
        if n > self.end - self.out.len() {
            return Err(Full);
        }
        Ok(())
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), Full> {
        self.room(bytes.len())?;
        self.out.put_slice(bytes);
        Ok(())
    }

    /// A type mark, a number and CRLF (`:42\r\n`, `$5\r\n`, …), without allocating.
    fn line(&mut self, mark: u8, n: impl itoa::Integer) -> Result<(), Full> {
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(n).as_bytes();
        self.room(digits.len() + 3)?;
        self.out.put_u8(mark);
        self.out.put_slice(digits);
        self.out.put_slice(b"\r\n");
        Ok(())
    }

    /// A simple string or error: one line, whatever the text holds, so a message never breaks
    /// the framing.
    fn simple(&mut self, mark: u8, text: &str) -> Result<(), Full> {
        self.room(text.len() + 3)?;
        self.out.put_u8(mark);
        for c in text.bytes() {
            self.out
                .put_u8(if c == b'\r' || c == b'\n' { b' ' } else { c });
        }
        self.out.put_slice(b"\r\n");
        Ok(())
    }

    fn pair(&mut self, (k, v): &(Reply, Reply), proto: Proto) -> Result<(), Full> {
        self.reply(k, proto)?;
        self.reply(v, proto)
    }

    fn reply(&mut self, reply: &Reply, proto: Proto) -> Result<(), Full> {
        match reply {
            Reply::Ok => self.put(b"+OK\r\n"),
            Reply::Nil if proto == Proto::Resp3 => self.put(b"_\r\n"),
            Reply::Nil => self.put(b"$-1\r\n"),
            Reply::Int(n) => self.line(b':', *n),
            Reply::Bulk(b) => {
                self.line(b'$', b.len())?;
                self.room(b.len().saturating_add(2))?;
                self.out.put_slice(b);
                self.out.put_slice(b"\r\n");
                Ok(())
            }
            Reply::Array(items) => {
                self.line(b'*', items.len())?;
                items.iter().try_for_each(|item| self.reply(item, proto))
            }
            Reply::Set(items) => {
                let mark = match proto {
                    Proto::Resp3 => b'~',
                    Proto::Resp2 => b'*',
                };
                self.line(mark, items.len())?;
                items.iter().try_for_each(|item| self.reply(item, proto))
            }
            Reply::Map(pairs) => {
                let (mark, n) = match proto {
                    Proto::Resp3 => (b'%', pairs.len()),
                    Proto::Resp2 => (b'*', pairs.len() * 2),
                };
                self.line(mark, n)?;
                pairs.iter().try_for_each(|p| self.pair(p, proto))
            }
            Reply::Pairs(pairs) if proto == Proto::Resp3 => {
                self.line(b'*', pairs.len())?;
                pairs.iter().try_for_each(|p| {
                    self.put(b"*2\r\n")?;
                    self.pair(p, proto)
                })
            }
            Reply::Pairs(pairs) => {
                self.line(b'*', pairs.len() * 2)?;
                pairs.iter().try_for_each(|p| self.pair(p, proto))
            }
            Reply::Status(s) => self.simple(b'+', s),
            Reply::NilArray if proto == Proto::Resp3 => self.put(b"_\r\n"),
            Reply::NilArray => self.put(b"*-1\r\n"),
            Reply::Error(e) => self.simple(b'-', e),
            Reply::Fault(e) => self.simple(b'-', error_text(e)),
        }
    }
}

/// How Redis words each of the store's errors.
pub fn error_text(e: &Error) -> &'static str {
    match e {
        Error::WrongType => "WRONGTYPE Operation against a key holding the wrong kind of value",
        Error::NotInteger => "ERR value is not an integer or out of range",
        Error::NotFloat => "ERR value is not a valid float",
        Error::Overflow => "ERR increment or decrement would overflow",
        Error::NanOrInfinity => "ERR increment would produce NaN or Infinity",
        Error::TooLong => "ERR string exceeds maximum allowed size (proto-max-bulk-len)",
        Error::NoSuchKey => "ERR no such key",
        Error::HashNotInteger => "ERR hash value is not an integer",
        Error::HashNotFloat => "ERR hash value is not a float",
        Error::LcsTooLarge => "ERR strings too long for LCS on this server",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(input: &[u8]) -> Result<Vec<Vec<Bytes>>, ProtocolError> {
        let mut buf = BytesMut::from(input);
        let mut parser = Parser::new(Limits::default());
        let mut out = Vec::new();
        while let Some(cmd) = parser.next(&mut buf)? {
            out.push(cmd);
        }
        Ok(out)
    }

    fn limits() -> Limits {
        Limits {
            max_bulk: 10,
            max_frame: 200,
            max_args: 4,
            max_line: 32,
        }
    }

    #[test]
    fn a_large_bulk_arriving_in_reads_is_held_in_one_buffer_of_its_size() {
        // A connection's read loop: make room, read what fits (a few KiB at a time, as a slow
        // socket delivers it, so the last reads of the bulk find little room left), parse.
        let bulk = 8 << 20;
        let mut wire = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n".to_vec();
        wire.extend_from_slice(format!("${bulk}\r\n").as_bytes());
        wire.extend(std::iter::repeat_n(b'v', bulk));
        wire.extend_from_slice(b"\r\n");
        let mut parser = Parser::new(Limits::default());
        let mut buf = BytesMut::with_capacity(READ_ROOM);
        let (mut sent, mut most, mut got) = (0, 0, None);
        while got.is_none() && sent < wire.len() {
            parser.make_room(&mut buf);
            let n = (buf.capacity() - buf.len())
                .min(3000)
                .min(wire.len() - sent);
            buf.extend_from_slice(&wire[sent..sent + n]);
            sent += n;
            most = most.max(buf.capacity());
            got = parser.next(&mut buf).unwrap();
        }
        let args = got.expect("the command is complete");
        assert_eq!(args[2].len(), bulk);
        assert!(
            most <= bulk + 2 * READ_ROOM,
            "a {bulk}-byte bulk grew the buffer to {most} bytes"
        );
    }

    #[test]
    fn an_array_built_in_place_is_what_encode_writes() {
        let bulk = |i: usize| Reply::Bulk(Bytes::from(format!("key:{i}").into_bytes()));
        for proto in [Proto::Resp2, Proto::Resp3] {
            for n in [0, 1, 9, 10, 11, 1000, 12_345] {
                let items: Vec<Reply> = (0..n).map(bulk).collect();
                for before in [&b""[..], b"+OK\r\n:1\r\n"] {
                    let mut want = BytesMut::from(before);
                    encode(&Reply::Array(items.clone()), &mut want, proto);
                    let mut out = BytesMut::from(before);
                    let mut array = ArrayInPlace::begin(&mut out);
                    let (half, rest) = items.split_at(n / 2);
                    let rest_bytes = rest.iter().map(Reply::encoded_bytes).sum();
                    half.iter().for_each(|r| array.push(r, &mut out, proto));
                    let predicted = array.len_with(&out, rest.len(), rest_bytes);
                    rest.iter().for_each(|r| array.push(r, &mut out, proto));
                    array.finish(&mut out);
                    assert_eq!(out, want, "{n} items after {} bytes", before.len());
                    assert_eq!(before.len() + predicted, want.len(), "{n} items");
                    // A second array behind the first, in the same buffer.
                    encode(&Reply::Array(items[..n / 3].to_vec()), &mut want, proto);
                    let mut array = ArrayInPlace::begin(&mut out);
                    items[..n / 3]
                        .iter()
                        .for_each(|r| array.push(r, &mut out, proto));
                    array.finish(&mut out);
                    assert_eq!(out, want, "a second array of {} items", n / 3);
                }
            }
        }
    }

    #[test]
    fn an_abandoned_array_leaves_what_came_before() {
        let mut out = BytesMut::from(&b"+OK\r\n"[..]);
        let mut array = ArrayInPlace::begin(&mut out);
        array.push(&Reply::Int(7), &mut out, Proto::Resp2);
        array.abandon(&mut out);
        assert_eq!(&out[..], b"+OK\r\n");
    }

    #[test]
    fn a_reply_is_encoded_within_its_budget_or_not_at_all() {
        let bulk = |s: &str| Reply::Bulk(Bytes::copy_from_slice(s.as_bytes()));
        let replies = [
            Reply::Ok,
            Reply::Nil,
            Reply::NilArray,
            Reply::Int(0),
            Reply::Int(-1234567),
            Reply::Int(i64::MIN),
            bulk(""),
            bulk("hello world"),
            Reply::Status("QUEUED".into()),
            Reply::Error("ERR bad\r\nthing".into()),
            Reply::Fault(Error::WrongType),
            Reply::Array(vec![]),
            Reply::Array(vec![
                bulk("a"),
                Reply::Nil,
                Reply::Array(vec![Reply::Int(7)]),
            ]),
            Reply::Map(vec![(bulk("k"), bulk("v")), (bulk("n"), Reply::Int(12))]),
            Reply::Pairs(vec![(bulk("f"), bulk("value")), (bulk("g"), Reply::Nil)]),
            Reply::Set(vec![]),
            Reply::Set(vec![bulk("a"), bulk("bc")]),
            Reply::Array((0..1000).map(|i| bulk(&"x".repeat(i))).collect()),
        ];
        for proto in [Proto::Resp2, Proto::Resp3] {
            for r in &replies {
                let mut whole = BytesMut::new();
                encode(r, &mut whole, proto);
                let len = whole.len();
                // After earlier replies, a budget of exactly its size takes the whole reply;
                // one byte less takes none of it.
                const EARLIER: &[u8] = b"+earlier\r\n";
                let mut out = BytesMut::from(EARLIER);
                encode_within(r, &mut out, proto, len).unwrap();
                assert_eq!(&out[EARLIER.len()..], &whole[..], "{r:?} in {proto:?}");
                let mut out = BytesMut::from(EARLIER);
                assert_eq!(
                    encode_within(r, &mut out, proto, len - 1),
                    Err(TooLarge { budget: len - 1 }),
                    "{r:?} in {proto:?}"
                );
                assert_eq!(&out[..], EARLIER, "{r:?} in {proto:?}");
            }
        }
        // A reply repeating one large value stops at its budget, not at its size.
        let big = Reply::Bulk(Bytes::from(vec![b'v'; 1 << 20]));
        let many = Reply::Array(vec![big; 1000]);
        let mut out = BytesMut::new();
        assert!(encode_within(&many, &mut out, Proto::Resp2, 4 << 20).is_err());
        assert!(out.is_empty());
        assert!(out.capacity() <= 8 << 20, "grew to {}", out.capacity());
    }

    #[test]
    fn arrays_and_inline() {
        let cmds = parse_all(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\nSET a \"b c\"\r\n").unwrap();
        assert_eq!(
            cmds,
            vec![
                vec![Bytes::from("GET"), Bytes::from("k")],
                vec![Bytes::from("SET"), Bytes::from("a"), Bytes::from("b c")]
            ]
        );
    }

    #[test]
    fn inline_arguments_split_as_redis_splits_them() {
        // Each line and what Redis 7.0 made of it, as `ECHO <line>` showed; but for the NUL
        // case, which Redis does not answer at all and kv keeps as a byte of its argument.
        let split = |line: &[u8]| split_inline(&Bytes::copy_from_slice(line));
        let ok = |line: &[u8], args: &[&[u8]]| {
            let want: Vec<Bytes> = args.iter().map(|a| Bytes::copy_from_slice(a)).collect();
            assert_eq!(split(line), Ok(want), "{}", String::from_utf8_lossy(line));
        };
        ok(b"set a \"b c\"", &[b"set", b"a", b"b c"]);
        ok(b"a\"b c\"", &[b"ab c"]);
        ok(b"x'y'", &[b"xy"]);
        ok(b"\"a\\x41\\n\"", &[b"aA\n"]);
        ok(b"\"\\x4\" \"\\x4g\" \"\\q\"", &[b"x4", b"x4g", b"q"]);
        ok(b"\"\\t\\r\\b\\a\\\"\"", &[b"\t\r\x08\x07\""]);
        ok(b"'it\\'s' 'a\\nb'", &[b"it's", b"a\\nb"]);
        ok(b"\"\" ''", &[b"", b""]);
        ok(b"\"a\"\tb \"c\"\x0bd", &[b"a", b"b", b"c", b"d"]);
        ok(b"  \t ", &[]);
        ok(b"a\0b \0 \"\0\"", &[b"a\0b", b"\0", b"\0"]);
        for bad in [
            &b"\"a\"b"[..],
            b"\"abc",
            b"'abc",
            b"set \"\"\"test-key\"\"\" test-value",
            b"\"ends in a backslash\\",
        ] {
            assert_eq!(
                split(bad),
                err("unbalanced quotes in request"),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn every_short_inline_line_splits_into_at_most_one_argument_per_two_bytes() {
        // Every line of up to five of these bytes: each split ends, and each argument but the
        // last is followed by a separator, so a line of n bytes has at most (n + 1) / 2.
        const BYTES: &[u8] = b" a\"'\\\0x\t";
        let mut line = Vec::new();
        let mut lines = vec![Vec::new()];
        for _ in 0..5 {
            lines = lines
                .into_iter()
                .flat_map(|l: Vec<u8>| {
                    BYTES.iter().map(move |b| {
                        let mut l = l.clone();
                        l.push(*b);
                        l
                    })
                })
                .collect();
            for l in &lines {
                line.clear();
                line.extend_from_slice(l);
                if let Ok(args) = split_inline(&Bytes::copy_from_slice(&line)) {
                    assert!(args.len() <= line.len().div_ceil(2), "{line:?}: {args:?}");
                }
            }
        }
    }

    #[test]
    fn an_unquoted_inline_argument_is_a_slice_of_the_line() {
        let line = Bytes::from_static(b"SET key value");
        let args = split_inline(&line).unwrap();
        assert_eq!(args[2], "value");
        assert_eq!(args[2].as_ptr(), line[8..].as_ptr());
    }

    #[test]
    fn half_sent_commands_wait_at_every_split() {
        let full = b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n";
        for cut in 0..full.len() {
            let mut parser = Parser::new(Limits::default());
            let mut buf = BytesMut::from(&full[..cut]);
            assert_eq!(parser.next(&mut buf), Ok(None), "cut at {cut}");
            buf.extend_from_slice(&full[cut..]);
            let cmd = parser.next(&mut buf).unwrap().unwrap();
            assert_eq!(
                cmd,
                vec![Bytes::from("SET"), Bytes::from("key"), Bytes::from("value")]
            );
            assert!(buf.is_empty());
        }
        // Byte by byte, too.
        let mut parser = Parser::new(Limits::default());
        let mut buf = BytesMut::new();
        let mut got = None;
        for b in full {
            assert!(got.is_none());
            buf.extend_from_slice(&[*b]);
            got = parser.next(&mut buf).unwrap();
        }
        assert_eq!(got.unwrap().len(), 3);
    }

    #[test]
    fn garbage_and_oversize_are_protocol_errors() {
        let limits = limits();
        for bad in [
            &b"*1\r\n$99999999999\r\n"[..],
            b"*1\r\n$-5\r\n",
            b"*1\r\n$11\r\nhello world\r\n",
            b"*9\r\n",
            b"*x\r\n",
            b"*1\r\n:3\r\n",
            b"*1\r\n$3\r\nabcXY",
        ] {
            let mut buf = BytesMut::from(bad);
            assert!(
                Parser::new(limits).next(&mut buf).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut long = BytesMut::from(&[b'a'; 100][..]);
        assert!(
            Parser::new(limits).next(&mut long).is_err(),
            "an endless inline line"
        );
        let mut quote = BytesMut::from(&b"SET \"abc\r\n"[..]);
        assert!(Parser::new(limits).next(&mut quote).is_err());
        // A line past the limit is refused even when it arrives whole, in one read.
        let mut line = b"DEL".to_vec();
        line.extend(std::iter::repeat_n(&b" a"[..], 20).flatten());
        line.extend_from_slice(b"\r\n");
        let mut whole = BytesMut::from(&line[..]);
        assert!(
            Parser::new(limits).next(&mut whole).is_err(),
            "a long inline line"
        );
        let mut header = BytesMut::from(&b"*0000000000000000000000000000000000000000001\r\n"[..]);
        assert!(
            Parser::new(limits).next(&mut header).is_err(),
            "a long header"
        );
        // A line of the limit is not.
        let mut line = b"DEL".to_vec();
        line.extend(std::iter::repeat_n(&b" a"[..], 14).flatten());
        assert_eq!(line.len(), limits.max_line - 1);
        line.extend_from_slice(b"\r\n");
        let mut whole = BytesMut::from(&line[..]);
        assert_eq!(
            Parser::new(limits).next(&mut whole).unwrap().unwrap().len(),
            15
        );
    }

    #[test]
    fn consumed_bulks_leave_the_buffer_and_are_not_walked_again() {
        // A command of 10,000 bulks sent one bulk per read: after each read the buffer holds
        // nothing the parser has seen, so the total work is linear in the command's size.
        let n = 10_000;
        let mut parser = Parser::new(Limits::default());
        let mut buf = BytesMut::from(format!("*{n}\r\n").as_bytes());
        assert_eq!(parser.next(&mut buf), Ok(None));
        assert!(buf.is_empty());
        for i in 0..n {
            buf.extend_from_slice(b"$5\r\nabcde\r\n");
            let r = parser.next(&mut buf).unwrap();
            assert_eq!(buf.len(), 0, "bulk {i} was consumed");
            assert_eq!(r.is_some(), i == n - 1);
        }
        // A header or bulk arriving in pieces: only the unfinished part stays.
        let mut parser = Parser::new(Limits::default());
        let mut buf = BytesMut::from(&b"*1\r\n$10\r\n01234"[..]);
        assert_eq!(parser.next(&mut buf), Ok(None));
        assert_eq!(&buf[..], b"01234", "the header was consumed");
        buf.extend_from_slice(b"56789\r\n");
        assert_eq!(
            parser.next(&mut buf).unwrap().unwrap()[0],
            Bytes::from("0123456789")
        );
        // An inline line trickled in is searched once per new byte, not from its start.
        let mut parser = Parser::new(Limits::default());
        let mut buf = BytesMut::new();
        for b in b"PING" {
            buf.extend_from_slice(&[*b]);
            assert_eq!(parser.next(&mut buf), Ok(None));
            assert_eq!(parser.scanned, buf.len());
        }
        buf.extend_from_slice(b"\r\n");
        assert_eq!(
            parser.next(&mut buf).unwrap().unwrap(),
            vec![Bytes::from("PING")]
        );
    }

    #[test]
    fn the_whole_command_is_bounded_not_just_each_bulk() {
        let limits = limits();
        // Each bulk is within max_bulk, but together they pass max_frame: refused as soon as
        // the header of the bulk that crosses it arrives.
        let mut parser = Parser::new(Limits {
            max_args: 1_000,
            ..limits
        });
        let mut buf = BytesMut::from(&b"*100\r\n"[..]);
        let mut sent = 0;
        let outcome = loop {
            buf.extend_from_slice(b"$10\r\n0123456789\r\n");
            sent += 1;
            match parser.next(&mut buf) {
                Ok(None) => continue,
                other => break other,
            }
        };
        assert!(outcome.is_err(), "{outcome:?}");
        assert!(sent * (10 + ARG_OVERHEAD) <= limits.max_frame + 10 + ARG_OVERHEAD);
        // Many empty arguments count too.
        let mut parser = Parser::new(Limits {
            max_args: 1 << 20,
            ..limits
        });
        assert!(parser.next(&mut BytesMut::from(&b"*1000\r\n"[..])).is_err());
    }

    #[test]
    fn replies_encode() {
        let mut out = BytesMut::new();
        encode(
            &Reply::Array(vec![
                Reply::Ok,
                Reply::Nil,
                Reply::Int(-3),
                Reply::Bulk(Bytes::from("x")),
                Reply::Error("ERR a\r\nb".into()),
            ]),
            &mut out,
            Proto::Resp2,
        );
        assert_eq!(
            &out[..],
            b"*5\r\n+OK\r\n$-1\r\n:-3\r\n$1\r\nx\r\n-ERR a  b\r\n"
        );
    }

    #[test]
    fn resp3_nulls_and_maps() {
        let map = Reply::Map(vec![(Reply::Bulk(Bytes::from("proto")), Reply::Int(3))]);
        let mut out = BytesMut::new();
        encode(
            &Reply::Array(vec![Reply::Nil, map.clone()]),
            &mut out,
            Proto::Resp3,
        );
        assert_eq!(&out[..], b"*2\r\n_\r\n%1\r\n$5\r\nproto\r\n:3\r\n");
        let mut out = BytesMut::new();
        encode(&map, &mut out, Proto::Resp2);
        assert_eq!(&out[..], b"*2\r\n$5\r\nproto\r\n:3\r\n");
    }
}
