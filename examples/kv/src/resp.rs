//! RESP2: parsing client commands and encoding replies.
//!
//! A command is an array of bulk strings (`*2\r\n$3\r\nGET\r\n$1\r\nk\r\n`) or an inline line
//! (`GET k\r\n`, as typed into telnet). Parsing is incremental — a half-sent command waits for
//! more bytes — and bounded: a bulk string, an argument count or an inline line beyond the
//! [`Limits`] is a protocol error, so one connection can never make the server buffer without
//! limit.

use bytes::Buf;
use bytes::BufMut;
use bytes::Bytes;
use bytes::BytesMut;

use crate::store::Reply;

/// What a connection may send.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest bulk string, in bytes.
    pub max_bulk: usize,
    /// Most arguments in one command.
    pub max_args: usize,
    /// Longest inline command or header line, in bytes.
    pub max_line: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bulk: 64 << 20,
            max_args: 1 << 20,
            max_line: 64 << 10,
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

/// Finds the end of the line starting at `from` (the index of `\r`).
fn line_end(buf: &[u8], from: usize) -> Option<usize> {
    buf[from..]
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|p| from + p)
}

fn parse_int(bytes: &[u8], what: &str) -> Result<i64, ProtocolError> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .map_or_else(|| err(format!("invalid {what}")), Ok)
}

/// Takes one complete command off the front of `buf`: `Ok(None)` if more bytes are needed,
/// `Ok(Some(args))` (possibly empty, for blank lines) when one was parsed.
pub fn parse_command(
    buf: &mut BytesMut,
    limits: &Limits,
) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    if buf.is_empty() {
        return Ok(None);
    }
    if buf[0] != b'*' {
        return parse_inline(buf, limits);
    }
    // Walk the whole command first; only consume it once it is complete.
    let Some(end) = line_end(buf, 1) else {
        return if buf.len() > limits.max_line {
            err("too big array header")
        } else {
            Ok(None)
        };
    };
    let count = parse_int(&buf[1..end], "multibulk length")?;
    let mut pos = end + 2;
    if count <= 0 {
        buf.advance(pos);
        return Ok(Some(Vec::new()));
    }
    if count as usize > limits.max_args {
        return err("invalid multibulk length");
    }
    let mut spans = Vec::with_capacity((count as usize).min(1024));
    for _ in 0..count {
        if pos >= buf.len() {
            return Ok(None);
        }
        if buf[pos] != b'$' {
            return err(format!("expected '$', got '{}'", buf[pos] as char));
        }
        let Some(end) = line_end(buf, pos + 1) else {
            return if buf.len() - pos > limits.max_line {
                err("too big bulk header")
            } else {
                Ok(None)
            };
        };
        let len = parse_int(&buf[pos + 1..end], "bulk length")?;
        if len < 0 || len as usize > limits.max_bulk {
            return err("invalid bulk length");
        }
        let start = end + 2;
        let stop = start + len as usize;
        if buf.len() < stop + 2 {
            return Ok(None);
        }
        if &buf[stop..stop + 2] != b"\r\n" {
            return err("bulk string not terminated by CRLF");
        }
        spans.push((start, stop));
        pos = stop + 2;
    }
    let frame = buf.split_to(pos).freeze();
    Ok(Some(
        spans.into_iter().map(|(a, b)| frame.slice(a..b)).collect(),
    ))
}

fn parse_inline(buf: &mut BytesMut, limits: &Limits) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    let Some(end) = buf.iter().position(|b| *b == b'\n') else {
        return if buf.len() > limits.max_line {
            err("too big inline request")
        } else {
            Ok(None)
        };
    };
    let line = buf.split_to(end + 1).freeze();
    let text = line.slice(..end);
    let text = text
        .strip_suffix(b"\r")
        .map_or(text.clone(), |t| line.slice(..t.len()));
    let mut args = Vec::new();
    let mut i = 0;
    while i < text.len() {
        while i < text.len() && text[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= text.len() {
            break;
        }
        if text[i] == b'"' || text[i] == b'\'' {
            // A quoted argument, as redis-cli and telnet users write them.
            let quote = text[i];
            let mut arg = Vec::new();
            i += 1;
            loop {
                match text.get(i) {
                    None => return err("unbalanced quotes in request"),
                    Some(c) if *c == quote => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') if quote == b'"' && i + 1 < text.len() => {
                        arg.push(match text[i + 1] {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            c => c,
                        });
                        i += 2;
                    }
                    Some(c) => {
                        arg.push(*c);
                        i += 1;
                    }
                }
            }
            args.push(Bytes::from(arg));
        } else {
            let start = i;
            while i < text.len() && !text[i].is_ascii_whitespace() {
                i += 1;
            }
            args.push(text.slice(start..i));
        }
    }
    Ok(Some(args))
}

/// The protocol a connection speaks: RESP2 until the client sends `HELLO 3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Resp2,
    Resp3,
}

/// Appends a type mark, a number and CRLF (`:42\r\n`, `$5\r\n`, …) without allocating.
fn line(out: &mut BytesMut, mark: u8, n: impl itoa::Integer) {
    out.put_u8(mark);
    out.put_slice(itoa::Buffer::new().format(n).as_bytes());
    out.put_slice(b"\r\n");
}

/// Appends `reply` to `out` in the connection's protocol.
pub fn encode(reply: &Reply, out: &mut BytesMut, proto: Proto) {
    match reply {
        Reply::Ok => out.put_slice(b"+OK\r\n"),
        Reply::Nil if proto == Proto::Resp3 => out.put_slice(b"_\r\n"),
        Reply::Nil => out.put_slice(b"$-1\r\n"),
        Reply::Int(n) => line(out, b':', *n),
        Reply::Bulk(b) => {
            line(out, b'$', b.len());
            out.put_slice(b);
            out.put_slice(b"\r\n");
        }
        Reply::Array(items) => {
            line(out, b'*', items.len());
            for item in items {
                encode(item, out, proto);
            }
        }
        Reply::Map(pairs) => {
            let (mark, n) = match proto {
                Proto::Resp3 => (b'%', pairs.len()),
                Proto::Resp2 => (b'*', pairs.len() * 2),
            };
            line(out, mark, n);
            for (k, v) in pairs {
                encode(k, out, proto);
                encode(v, out, proto);
            }
        }
        Reply::Error(e) => {
            out.put_u8(b'-');
            // An error is one line: never let a message break the framing.
            for c in e.bytes() {
                out.put_u8(if c == b'\r' || c == b'\n' { b' ' } else { c });
            }
            out.put_slice(b"\r\n");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(input: &[u8]) -> Result<Vec<Vec<Bytes>>, ProtocolError> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(cmd) = parse_command(&mut buf, &Limits::default())? {
            out.push(cmd);
        }
        Ok(out)
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
    fn half_sent_commands_wait_at_every_split() {
        let full = b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n";
        for cut in 0..full.len() {
            let mut buf = BytesMut::from(&full[..cut]);
            assert_eq!(
                parse_command(&mut buf, &Limits::default()),
                Ok(None),
                "cut at {cut}"
            );
            assert_eq!(buf.len(), cut, "nothing consumed at {cut}");
            buf.extend_from_slice(&full[cut..]);
            let cmd = parse_command(&mut buf, &Limits::default())
                .unwrap()
                .unwrap();
            assert_eq!(cmd.len(), 3);
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn garbage_and_oversize_are_protocol_errors() {
        let limits = Limits {
            max_bulk: 10,
            max_args: 4,
            max_line: 32,
        };
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
                parse_command(&mut buf, &limits).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut long = BytesMut::from(&[b'a'; 100][..]);
        assert!(
            parse_command(&mut long, &limits).is_err(),
            "an endless inline line"
        );
        let mut quote = BytesMut::from(&b"SET \"abc\r\n"[..]);
        assert!(parse_command(&mut quote, &limits).is_err());
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
