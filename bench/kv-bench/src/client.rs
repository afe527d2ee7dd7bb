//! One benchmark client: a Redis connection or an etcd KV stub.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncBufReadExt;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::io::BufReader;
use tokio::net::TcpStream;
use tonic::transport::Channel;
use tonic::transport::Endpoint;

use super::Protocol;
use crate::etcdserverpb::PutRequest;
use crate::etcdserverpb::RangeRequest;
use crate::etcdserverpb::kv_client::KvClient;

/// How many etcd clients share one HTTP/2 connection (streams are multiplexed, as etcd's own
/// benchmark tool does with `--clients` over fewer `--conns`).
const CLIENTS_PER_CHANNEL: usize = 16;

/// Opens connections, sharing etcd channels between clients.
#[derive(Default)]
pub(crate) struct Connector {
    channels: HashMap<(String, usize), Channel>,
}

impl Connector {
    /// Connects client number `i` to `addr`.
    pub(crate) async fn connect(
        &mut self,
        protocol: Protocol,
        addr: &str,
        i: usize,
    ) -> Result<Client, String> {
        match protocol {
            Protocol::Resp => Ok(Client::Resp(RespConn {
                conn: Some(connect_resp(addr).await?),
                addr: addr.to_string(),
                out: Vec::with_capacity(512),
                line: Vec::with_capacity(64),
            })),
            Protocol::Etcd => {
                let key = (addr.to_string(), i / CLIENTS_PER_CHANNEL);
                let channel = match self.channels.get(&key) {
                    Some(c) => c.clone(),
                    None => {
                        let c = Endpoint::from_shared(format!("http://{addr}"))
                            .map_err(|e| format!("bad address {addr}: {e}"))?
                            .tcp_nodelay(true)
                            .connect()
                            .await
                            .map_err(|e| format!("connect {addr}: {e}"))?;
                        self.channels.insert(key, c.clone());
                        c
                    }
                };
                Ok(Client::Etcd(KvClient::new(channel)))
            }
        }
    }
}

/// A connected client that sends one request at a time.
pub(crate) enum Client {
    Resp(RespConn),
    Etcd(KvClient<Channel>),
}

/// A Redis-protocol connection with its reusable buffers.
pub(crate) struct RespConn {
    /// `None` after the connection failed; the next request reconnects.
    conn: Option<BufReader<TcpStream>>,
    addr: String,
    out: Vec<u8>,
    line: Vec<u8>,
}

impl RespConn {
    async fn command(&mut self, args: &[&[u8]]) -> Result<(), String> {
        self.out.clear();
        encode_command(&mut self.out, args);
        round_trip(&mut self.conn, &self.addr, &self.out, &mut self.line).await
    }
}

impl Client {
    /// Writes `value` at `key`; Ok once the server acknowledged it.
    pub(crate) async fn set(&mut self, key: &[u8], value: &Bytes) -> Result<(), String> {
        match self {
            Client::Resp(c) => c.command(&[b"SET", key, value]).await,
            Client::Etcd(kv) => {
                let req = PutRequest {
                    key: Bytes::copy_from_slice(key),
                    value: value.clone(),
                    ..Default::default()
                };
                kv.put(req).await.map(|_| ()).map_err(|s| s.to_string())
            }
        }
    }

    /// Reads `key` (linearizably where the server offers a choice).
    pub(crate) async fn get(&mut self, key: &[u8]) -> Result<(), String> {
        match self {
            Client::Resp(c) => c.command(&[b"GET", key]).await,
            Client::Etcd(kv) => {
                let req = RangeRequest {
                    key: Bytes::copy_from_slice(key),
                    serializable: false,
                    ..Default::default()
                };
                kv.range(req).await.map(|_| ()).map_err(|s| s.to_string())
            }
        }
    }
}

fn encode_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    let mut n = itoa::Buffer::new();
    out.push(b'*');
    out.extend_from_slice(n.format(args.len()).as_bytes());
    out.extend_from_slice(b"\r\n");
    for a in args {
        out.push(b'$');
        out.extend_from_slice(n.format(a.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

async fn connect_resp(addr: &str) -> Result<BufReader<TcpStream>, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_nodelay(true)
        .map_err(|e| format!("connect {addr}: {e}"))?;
    Ok(BufReader::new(stream))
}

/// How long a client waits before reconnecting after it failed to connect, so a dead server
/// does not turn the benchmark into a busy loop of refused connections.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);

/// Sends `out` and reads one reply; an error reply is an `Err` with its text. A failed
/// connection is dropped and reopened by the next request (the failure counts as an error).
async fn round_trip(
    conn: &mut Option<BufReader<TcpStream>>,
    addr: &str,
    out: &[u8],
    line: &mut Vec<u8>,
) -> Result<(), String> {
    let c = match conn {
        Some(c) => c,
        None => match connect_resp(addr).await {
            Ok(c) => conn.insert(c),
            Err(e) => {
                tokio::time::sleep(RECONNECT_PAUSE).await;
                return Err(e);
            }
        },
    };
    let result = match c.get_mut().write_all(out).await {
        Ok(()) => read_reply(c, line).await,
        Err(e) => Err(Failure::Connection(format!("send: {e}"))),
    };
    match result {
        Ok(()) => Ok(()),
        Err(Failure::Reply(e)) => Err(e),
        Err(Failure::Connection(e)) => {
            *conn = None;
            Err(e)
        }
    }
}

/// The largest bulk reply the benchmark accepts (Redis's own limit).
const MAX_BULK: i64 = 512 << 20;

enum Failure {
    /// The server answered with an error; the connection is fine.
    Reply(String),
    /// The connection is broken or out of step.
    Connection(String),
}

/// Reads one RESP2/RESP3 reply of the kinds SET and GET produce.
async fn read_reply(conn: &mut BufReader<TcpStream>, line: &mut Vec<u8>) -> Result<(), Failure> {
    let broken = |why: String| Failure::Connection(why);
    line.clear();
    let n = conn
        .read_until(b'\n', line)
        .await
        .map_err(|e| broken(format!("receive: {e}")))?;
    if n == 0 {
        return Err(broken("connection closed by the server".into()));
    }
    let text = line
        .strip_suffix(b"\r\n")
        .ok_or_else(|| broken("reply line without CRLF".into()))?;
    let (kind, rest) = text
        .split_first()
        .ok_or_else(|| broken("empty reply line".into()))?;
    match kind {
        b'+' | b':' | b'_' => Ok(()),
        b'-' => Err(Failure::Reply(String::from_utf8_lossy(rest).into_owned())),
        b'$' => {
            let len: i64 = std::str::from_utf8(rest)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| broken("bad bulk length".into()))?;
            if len > MAX_BULK {
                return Err(broken(format!("bulk reply of {len} bytes is too large")));
            }
            if len >= 0 {
                // The body and its CRLF, into the reused line buffer.
                line.clear();
                line.resize(len as usize + 2, 0);
                conn.read_exact(line)
                    .await
                    .map_err(|e| broken(format!("receive: {e}")))?;
            }
            Ok(())
        }
        other => Err(broken(format!(
            "unexpected reply type {:?}",
            *other as char
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_encode_as_resp_arrays() {
        let mut out = Vec::new();
        encode_command(&mut out, &[b"SET", b"k", &[b'x'; 12]]);
        assert_eq!(
            out,
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$12\r\nxxxxxxxxxxxx\r\n"
        );
    }
}
