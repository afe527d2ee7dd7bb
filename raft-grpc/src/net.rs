//! Outgoing connections: an injectable connector and a pool of one channel per peer.
//!
//! A [`Connector`] makes the byte streams gRPC runs over — TCP by default, or anything that
//! reads and writes (a simulated network in tests). The pool keeps one multiplexed, lazily
//! connecting [`Channel`] per address and hands out clones, so RPCs never open a connection of
//! their own; tonic reconnects a channel whose connection dropped, and HTTP/2 keepalive notices
//! a connection that silently died.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncRead;
use tokio::io::AsyncWrite;
use tonic::Status;
use tonic::transport::Channel;
use tonic::transport::Endpoint;
use tonic::transport::Uri;

use crate::status;
use crate::tls::ReloadableTls;

/// A byte stream gRPC can run over.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

type ConnectFn = dyn Fn(String, u16) -> BoxFuture<'static, io::Result<Box<dyn Io>>> + Send + Sync;

/// How outgoing connections are made: TCP, or a custom function of `(host, port)`.
#[derive(Clone, Default)]
pub struct Connector(Option<Arc<ConnectFn>>);

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Connector(custom)"
        } else {
            "Connector(tcp)"
        })
    }
}

impl Connector {
    /// Plain TCP (the default).
    pub fn tcp() -> Connector {
        Connector(None)
    }

    /// Connections made by `connect(host, port)` — for example over a simulated network.
    pub fn custom<F, Fut, T>(connect: F) -> Connector
    where
        F: Fn(String, u16) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = io::Result<T>> + Send + 'static,
        T: Io,
    {
        Connector(Some(Arc::new(move |host, port| {
            connect(host, port)
                .map(|r| r.map(|io| Box::new(io) as Box<dyn Io>))
                .boxed()
        })))
    }
}

/// Connection tuning shared by peers and clients. Start from [`ChannelOptions::default`] and
/// adjust with the `with_*` methods.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ChannelOptions {
    /// How long establishing a connection may take. Default 2 s.
    pub connect_timeout: Duration,
    /// How often an HTTP/2 ping checks a connection. Default 1 s.
    pub keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection is dropped. Default 2 s.
    pub keepalive_timeout: Duration,
}

impl Default for ChannelOptions {
    fn default() -> Self {
        ChannelOptions {
            connect_timeout: Duration::from_secs(2),
            keepalive_interval: Duration::from_secs(1),
            keepalive_timeout: Duration::from_secs(2),
        }
    }
}

impl ChannelOptions {
    /// Sets how long establishing a connection may take (default 2 s).
    #[must_use]
    pub fn with_connect_timeout(mut self, timeout: Duration) -> ChannelOptions {
        self.connect_timeout = timeout;
        self
    }

    /// Sets how often an HTTP/2 ping checks a connection (default 1 s).
    #[must_use]
    pub fn with_keepalive_interval(mut self, interval: Duration) -> ChannelOptions {
        self.keepalive_interval = interval;
        self
    }

    /// Sets how long a ping may go unanswered before the connection is dropped (default 2 s).
    #[must_use]
    pub fn with_keepalive_timeout(mut self, timeout: Duration) -> ChannelOptions {
        self.keepalive_timeout = timeout;
        self
    }
}

/// Most addresses a pool keeps a channel to. Past it, the channel asked for least recently is
/// dropped (a call holding it finishes; its connection closes once nothing holds it), so a
/// long-lived client that is sent to ever new addresses (redirects, replaced members) keeps a
/// bounded number of connections and keepalive pings.
const MAX_CHANNELS: usize = 256;

/// A pooled channel and when it was last asked for (a count of lookups).
struct Pooled {
    channel: Channel,
    used: u64,
}

/// The pool's channels by address.
#[derive(Default)]
struct Channels {
    by_addr: HashMap<String, Pooled>,
    /// Lookups so far: the clock of [`Pooled::used`].
    lookups: u64,
}

impl Channels {
    /// The channel to `addr`, marked as just used.
    fn get(&mut self, addr: &str) -> Option<Channel> {
        self.lookups += 1;
        let now = self.lookups;
        self.by_addr.get_mut(addr).map(|p| {
            p.used = now;
            p.channel.clone()
        })
    }

    /// Adds `channel` for `addr`, first dropping the least recently used channels while the
    /// pool holds [`MAX_CHANNELS`].
    fn insert(&mut self, addr: &str, channel: Channel) {
        while self.by_addr.len() >= MAX_CHANNELS {
            let Some(oldest) = self
                .by_addr
                .iter()
                .min_by_key(|(_, p)| p.used)
                .map(|(a, _)| a.clone())
            else {
                break;
            };
            self.by_addr.remove(&oldest);
        }
        self.by_addr.insert(
            addr.to_string(),
            Pooled {
                channel,
                used: self.lookups,
            },
        );
    }
}

struct PoolInner {
    channels: Mutex<Channels>,
    /// The runtime the pool was made on, where its channels' tasks run (see [`SpawnOn`]).
    runtime: Option<tokio::runtime::Handle>,
    backoff: Arc<ReconnectBackoff>,
    tls: Option<ReloadableTls>,
    connector: Connector,
    opts: ChannelOptions,
}

/// Runs a channel's tasks (its HTTP/2 connection and its request buffer) on one runtime.
///
/// A channel is made on first use, and tonic would spawn its tasks on the runtime of whoever
/// used it first: for a node's transport, possibly an application's client thread (a follower
/// forwarding its first client write to the leader), whose load would then hold up the
/// replication and votes that share the channel. The pool's channels run where the pool was
/// made instead.
#[derive(Clone)]
struct SpawnOn(tokio::runtime::Handle);

impl<F> hyper::rt::Executor<F> for SpawnOn
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        self.0.spawn(fut);
    }
}

/// One reusable channel per address, for at most [`MAX_CHANNELS`] addresses.
#[derive(Clone)]
pub(crate) struct Pool {
    inner: Arc<PoolInner>,
}

impl Pool {
    /// A pool whose channels run on the current runtime, if any (else where first used).
    pub fn new(tls: Option<ReloadableTls>, connector: Connector, opts: ChannelOptions) -> Pool {
        Pool {
            inner: Arc::new(PoolInner {
                channels: Mutex::new(Channels::default()),
                runtime: tokio::runtime::Handle::try_current().ok(),
                backoff: Arc::default(),
                tls,
                connector,
                opts,
            }),
        }
    }

    /// The channel to `addr` (`host:port`), created on first use.
    pub fn channel(&self, addr: &str) -> Result<Channel, Status> {
        let mut channels = self
            .inner
            .channels
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(c) = channels.get(addr) {
            return Ok(c);
        }
        let channel = self.connect(addr)?;
        channels.insert(addr, channel.clone());
        Ok(channel)
    }

    fn connect(&self, addr: &str) -> Result<Channel, Status> {
        let bad = |why: String| status::invalid(format!("bad node address {addr:?}: {why}"));
        crate::addr::check_addr(addr)
            .map_err(|e| status::invalid(format!("bad node address: {e}")))?;
        let o = &self.inner.opts;
        // TLS, when on, is set up by the connector below (not by tonic), so every new
        // connection uses the configuration in force when it is made.
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| bad(e.to_string()))?
            .connect_timeout(o.connect_timeout)
            .http2_keep_alive_interval(o.keepalive_interval)
            .keep_alive_timeout(o.keepalive_timeout)
            .keep_alive_while_idle(true)
            .tcp_nodelay(true);
        let endpoint = match &self.inner.runtime {
            Some(rt) => endpoint.executor(SpawnOn(rt.clone())),
            None => endpoint,
        };
        let connect = self.inner.connector.0.clone();
        let backoff = self.inner.backoff.clone();
        let tls = self.inner.tls.clone();
        let timeout = o.connect_timeout;
        Ok(
            endpoint.connect_with_connector_lazy(tower::service_fn(move |uri: Uri| {
                let connect = connect.clone();
                let backoff = backoff.clone();
                let tls = tls.clone();
                async move {
                    let host = uri.host().unwrap_or_default().to_string();
                    let port = uri.port_u16().unwrap_or(80);
                    let key = format!("{host}:{port}");
                    backoff.check(&key)?;
                    let attempt = async {
                        let io = match &connect {
                            None => {
                                let s =
                                    tokio::net::TcpStream::connect((host.as_str(), port)).await?;
                                s.set_nodelay(true)?;
                                Box::new(s) as Box<dyn Io>
                            }
                            Some(f) => f(host.clone(), port).await?,
                        };
                        match &tls {
                            None => Ok(io),
                            Some(tls) => handshake(tls, &host, io).await,
                        }
                    };
                    let result = match tokio::time::timeout(timeout, attempt).await {
                        Ok(r) => r,
                        Err(_) => Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("connecting to {key} timed out"),
                        )),
                    };
                    backoff.record(&key, result.is_ok());
                    result.map(TokioIo::new)
                }
            })),
        )
    }
}

/// The client side of a TLS handshake over `io`, with the configuration in force now.
async fn handshake(tls: &ReloadableTls, host: &str, io: Box<dyn Io>) -> io::Result<Box<dyn Io>> {
    let (connector, name) = tls
        .connector(host)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let stream = connector.connect(name, io).await?;
    Ok(Box::new(stream))
}

/// Paces reconnection to addresses that recently refused or timed out: after `n` failures in a
/// row, no attempt is made for `min(50 ms * 2^n, 2 s)`; one success resets it. Calls in the
/// meantime fail at once as unavailable, which openraft and the client back off on. Once it
/// remembers [`MAX_CHANNELS`] addresses, those whose pause is over are forgotten.
#[derive(Default)]
struct ReconnectBackoff {
    failures: Mutex<HashMap<String, (u32, tokio::time::Instant)>>,
}

impl ReconnectBackoff {
    const FIRST: Duration = Duration::from_millis(50);
    const MAX: Duration = Duration::from_secs(2);

    fn check(&self, key: &str) -> io::Result<()> {
        let failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        match failures.get(key) {
            Some((n, until)) if tokio::time::Instant::now() < *until => Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("not reconnecting to {key} yet after {n} failed attempts"),
            )),
            _ => Ok(()),
        }
    }

    fn record(&self, key: &str, ok: bool) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if ok {
            failures.remove(key);
            return;
        }
        let now = tokio::time::Instant::now();
        if failures.len() >= MAX_CHANNELS {
            // Forget addresses whose pause is over (their next failure pauses 50 ms again), so
            // ever new failing addresses do not grow the map.
            failures.retain(|_, (_, until)| *until > now);
        }
        let n = failures.get(key).map_or(0, |(n, _)| *n) + 1;
        let wait = Self::FIRST.saturating_mul(1 << n.min(16)).min(Self::MAX);
        failures.insert(key.to_string(), (n, now + wait));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn failed_connections_back_off() {
        let b = ReconnectBackoff::default();
        b.check("a:1").unwrap();
        b.record("a:1", false);
        assert!(b.check("a:1").is_err());
        assert!(b.check("b:1").is_ok(), "per address");
        tokio::time::advance(Duration::from_millis(101)).await;
        b.check("a:1").unwrap();
        b.record("a:1", false);
        tokio::time::advance(Duration::from_millis(101)).await;
        assert!(b.check("a:1").is_err(), "the pause doubles");
        b.record("a:1", true);
        b.check("a:1").unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn addresses_whose_pause_is_over_are_forgotten_once_many_failed() {
        let b = ReconnectBackoff::default();
        for i in 0..MAX_CHANNELS + 10 {
            b.record(&format!("a:{i}"), false);
        }
        let held = |b: &ReconnectBackoff| b.failures.lock().unwrap().len();
        assert_eq!(
            held(&b),
            MAX_CHANNELS + 10,
            "every pause is still on: none forgotten"
        );
        tokio::time::advance(ReconnectBackoff::MAX).await;
        for i in 0..MAX_CHANNELS {
            b.record(&format!("b:{i}"), false);
        }
        assert!(
            held(&b) <= MAX_CHANNELS,
            "{} addresses remembered",
            held(&b)
        );
        assert!(b.check("b:0").is_err(), "a pause still on is kept");
    }

    /// A channel made from another runtime (a client's thread, say) runs on the pool's: it
    /// keeps working after that runtime is gone.
    #[test]
    fn channels_run_on_the_pools_runtime_whoever_makes_them() {
        use tower::ServiceExt;
        let runtime = |threads| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .enable_all()
                .build()
                .unwrap()
        };
        let home = runtime(1);
        let pool =
            home.block_on(async { Pool::new(None, Connector::tcp(), ChannelOptions::default()) });
        let other = runtime(1);
        // Lazy: nothing listens there and nothing is dialled until a call.
        let channel = other
            .block_on(async { pool.channel("127.0.0.1:9") })
            .unwrap();
        other.shutdown_timeout(Duration::from_secs(1));
        let ready = home.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), channel.ready_oneshot()).await
        });
        assert!(
            matches!(ready, Ok(Ok(_))),
            "the channel stopped with the runtime that made it: {ready:?}"
        );
    }

    #[tokio::test]
    async fn the_pool_keeps_the_most_recently_used_channels() {
        let pool = Pool::new(None, Connector::tcp(), ChannelOptions::default());
        // Channels connect lazily: nothing listens at these ports, nothing is dialled.
        let addr = |i: usize| format!("127.0.0.1:{}", 20_000 + i);
        for i in 0..MAX_CHANNELS {
            pool.channel(&addr(i)).unwrap();
        }
        pool.channel(&addr(0)).unwrap();
        pool.channel(&addr(MAX_CHANNELS)).unwrap();
        let channels = pool.inner.channels.lock().unwrap();
        assert_eq!(channels.by_addr.len(), MAX_CHANNELS);
        assert!(channels.by_addr.contains_key(&addr(0)), "used again: kept");
        assert!(
            !channels.by_addr.contains_key(&addr(1)),
            "the least recently used: dropped"
        );
        assert!(channels.by_addr.contains_key(&addr(MAX_CHANNELS)));
    }
}
