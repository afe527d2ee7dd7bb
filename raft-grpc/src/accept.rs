//! Accepting connections for the server, within the connection limits, and with TLS the
//! certificate in force at each connection.
//!
//! The accept loop only accepts. A connection past [`GrpcOptions::max_connections`], or past
//! [`GrpcOptions::max_connections_per_ip`] from its address, is closed at once; an admitted one
//! holds its place until it closes, whoever ends it. Connections from the cluster's members'
//! addresses ([`MemberSources`]) may go past the total by one address's share
//! ([`GrpcOptions::max_connections_per_ip`]) and need no handshake permit, so strangers who fill
//! the port cannot keep a reconnecting peer out. With TLS each connection's handshake runs
//! in a task of its own, within a timeout, and at most [`GrpcOptions::max_tls_handshakes`] at
//! once — a stranger's connection that arrives while that many are under way is closed at once
//! too. A slow or silent stranger therefore costs one task and one permit until its timeout,
//! and cannot stall anyone else's accept. Handshaken connections go to tonic, which sees their peer
//! certificates (the interceptors check node and user identities in them). A connection that
//! does not send the HTTP/2 preface within [`GrpcOptions::preface_timeout`] is closed, so
//! silent connections cannot hold places either. Nor can connections that speak HTTP/2 but make
//! no call that passes authentication: one that has made none within
//! [`GrpcOptions::auth_timeout`] of being admitted is closed ([`Unproven`]).

use std::collections::HashMap;
use std::collections::HashSet;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::net::Ipv6Addr;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::sync::RwLock;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::task::Context;
use std::task::Poll;
use std::time::Duration;

use futures_util::Stream;
use tokio::io::AsyncRead;
use tokio::io::AsyncWrite;
use tokio::io::ReadBuf;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

use crate::options::GrpcOptions;
use crate::tls::ReloadableTls;

/// How long the loop pauses after `accept` fails (for example out of file descriptors), so a
/// persistent failure does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// The shortest pause between two warnings about refused connections.
const WARN_EVERY: Duration = Duration::from_secs(1);

/// Small messages (heartbeats, acks) must not wait for Nagle's algorithm.
fn nodelay(s: &TcpStream) {
    if let Err(e) = s.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
}

/// Why a new connection was closed at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// [`GrpcOptions::max_connections`] are open.
    Connections,
    /// [`GrpcOptions::max_connections_per_ip`] are open from the connection's address.
    ConnectionsFromAddress,
    /// [`GrpcOptions::max_tls_handshakes`] are under way.
    Handshakes,
}

impl Refusal {
    fn reason(self) -> &'static str {
        match self {
            Refusal::Connections => "too many connections (max_connections)",
            Refusal::ConnectionsFromAddress => {
                "too many connections from one address (max_connections_per_ip)"
            }
            Refusal::Handshakes => "too many TLS handshakes under way (max_tls_handshakes)",
        }
    }
}

/// Counts refused connections and warns about them at most once a second, with how many were
/// refused for each reason since the last warning (refusals after the last warning are counted
/// in the next one).
#[derive(Default)]
struct Refusals {
    connections: u64,
    from_one_address: u64,
    handshakes: u64,
    last_warning: Option<tokio::time::Instant>,
}

impl Refusals {
    fn note(&mut self, from: SocketAddr, why: Refusal) {
        *match why {
            Refusal::Connections => &mut self.connections,
            Refusal::ConnectionsFromAddress => &mut self.from_one_address,
            Refusal::Handshakes => &mut self.handshakes,
        } += 1;
        if self.last_warning.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            tracing::warn!(
                %from,
                refused_max_connections = self.connections,
                refused_max_connections_per_ip = self.from_one_address,
                refused_max_tls_handshakes = self.handshakes,
                "closing new connections: {} (counts since the last warning)",
                why.reason()
            );
            *self = Refusals {
                last_warning: Some(tokio::time::Instant::now()),
                ..Refusals::default()
            };
        }
    }
}

/// The address a connection counts against for the per-address limit: an IPv4 address
/// (IPv4-mapped IPv6 included) as it is, an IPv6 address by its /64 network, which is what one
/// host is usually given.
fn source_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let network = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(network))
        }
        v4 => v4,
    }
}

/// The source addresses ([`source_of`]) of the cluster's members, as the server last looked
/// them up: connections from them may go past [`GrpcOptions::max_connections`] by one
/// address's share (they still hold places, and the per-address limit holds for them). Cheap
/// to clone; clones share one set.
#[derive(Clone, Default)]
pub(crate) struct MemberSources(Arc<RwLock<HashSet<IpAddr>>>);

impl MemberSources {
    /// Replaces the set with the sources of `ips`.
    pub(crate) fn set(&self, ips: impl IntoIterator<Item = IpAddr>) {
        let sources = ips.into_iter().map(source_of).collect();
        // Nothing panics while holding it; recover the guard rather than propagate poison.
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = sources;
    }

    fn contains(&self, source: &IpAddr) -> bool {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(source)
    }
}

/// A connection's addresses: the server's end, then the client's. Unique among the open
/// connections (the sockets hold them), where the client's address alone is not: one client
/// address and port may reach two of the host's addresses at once.
type Ends = (SocketAddr, SocketAddr);

/// The connections a server admitted that have not yet made a call that passed authentication
/// (a peer's check or a client's), by their addresses: the interceptors mark a connection
/// proven ([`Unproven::prove`]) on its first call that passes, and a connection still unproven
/// [`GrpcOptions::auth_timeout`] after it was admitted is closed. Without it, a stranger who
/// sends the HTTP/2 preface and answers pings would hold a place for ever. Cheap to clone;
/// clones share one registry. Proving costs one atomic load per call while no connection
/// waits for proof, and a shared read lock while some do.
#[derive(Clone, Default)]
pub(crate) struct Unproven(Arc<UnprovenInner>);

#[derive(Default)]
struct UnprovenInner {
    /// How many connections wait for proof (the map's length), read without the lock.
    waiting: AtomicUsize,
    by_ends: RwLock<HashMap<Ends, Arc<AtomicBool>>>,
}

impl Unproven {
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Ends, Arc<AtomicBool>>> {
        // Nothing panics while holding it; recover the guard rather than propagate poison.
        self.0.by_ends.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a connection as waiting for proof; the flag is set when it proves itself. An
    /// entry left by a closed connection with the same addresses is replaced.
    fn register(&self, ends: Ends) -> Arc<AtomicBool> {
        let proven = Arc::new(AtomicBool::new(false));
        let mut waiting = self.write();
        if waiting.insert(ends, proven.clone()).is_none() {
            self.0.waiting.store(waiting.len(), Ordering::Release);
        }
        proven
    }

    /// Marks the connection that carried `req` (if it waits for proof) as proven: it stays
    /// open for as long as its client and keepalive keep it.
    pub(crate) fn prove<T>(&self, req: &tonic::Request<T>) {
        if self.0.waiting.load(Ordering::Acquire) == 0 {
            return;
        }
        if let (Some(local), Some(remote)) = (req.local_addr(), req.remote_addr()) {
            self.prove_ends((local, remote));
        }
    }

    fn prove_ends(&self, ends: Ends) {
        let waits = {
            let waiting = self.0.by_ends.read().unwrap_or_else(|p| p.into_inner());
            waiting.contains_key(&ends)
        };
        if !waits {
            return;
        }
        let mut waiting = self.write();
        if let Some(proven) = waiting.remove(&ends) {
            proven.store(true, Ordering::Release);
            self.0.waiting.store(waiting.len(), Ordering::Release);
        }
    }

    /// Forgets a connection that closes unproven, unless its entry was already replaced.
    fn forget(&self, ends: Ends, proven: &Arc<AtomicBool>) {
        let mut waiting = self.write();
        if waiting.get(&ends).is_some_and(|p| Arc::ptr_eq(p, proven)) {
            waiting.remove(&ends);
            self.0.waiting.store(waiting.len(), Ordering::Release);
        }
    }
}

/// An admitted connection's wait for its first authenticated call.
struct Proof {
    proven: Arc<AtomicBool>,
    deadline: Pin<Box<tokio::time::Sleep>>,
    ends: Ends,
    unproven: Unproven,
}

impl Proof {
    /// Whether the connection must close now: `auth_timeout` has passed and it has made no
    /// call that passed authentication. Polling the deadline also wakes the task when it
    /// passes.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        !self.proven.load(Ordering::Acquire) && self.deadline.as_mut().poll(cx).is_ready()
    }
}

impl Drop for Proof {
    fn drop(&mut self) {
        if !self.proven.load(Ordering::Acquire) {
            self.unproven.forget(self.ends, &self.proven);
        }
    }
}

/// The connections held, in all and per source address.
#[derive(Default)]
struct Counts {
    total: usize,
    per_source: HashMap<IpAddr, usize>,
}

type SharedCounts = Arc<Mutex<Counts>>;

fn lock(counts: &Mutex<Counts>) -> MutexGuard<'_, Counts> {
    // Nothing panics while holding it; recover the guard rather than propagate poison.
    counts.lock().unwrap_or_else(|p| p.into_inner())
}

/// The server's connection limits: in all (members' addresses get one address's share more),
/// and per source address.
struct Admission {
    counts: SharedCounts,
    max_total: usize,
    max_per_source: usize,
    members: MemberSources,
}

/// An admitted connection's place under the limits, given back when it is dropped.
pub(crate) struct Place {
    source: IpAddr,
    /// Whether the source was a member's address when the place was given.
    member: bool,
    counts: SharedCounts,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut counts = lock(&self.counts);
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.per_source.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.per_source.remove(&self.source);
            }
        }
    }
}

impl Admission {
    fn new(opts: &GrpcOptions, members: MemberSources) -> Admission {
        Admission::with_limits(opts.max_connections, opts.max_connections_per_ip, members)
    }

    fn with_limits(total: usize, per_source: usize, members: MemberSources) -> Admission {
        Admission {
            counts: SharedCounts::default(),
            max_total: total.max(1),
            max_per_source: per_source.max(1),
            members,
        }
    }

    /// A place for a connection from `ip`, or why there is none. A member's address may take
    /// places past the total limit, up to one address's share more in all (the places it takes
    /// still count, so strangers get fewer): the server never holds more than
    /// `max_total + max_per_source`.
    fn admit(&self, ip: IpAddr) -> Result<Place, Refusal> {
        let source = source_of(ip);
        let member = self.members.contains(&source);
        let limit = if member {
            self.max_total.saturating_add(self.max_per_source)
        } else {
            self.max_total
        };
        {
            let mut counts = lock(&self.counts);
            if counts.total >= limit {
                return Err(Refusal::Connections);
            }
            let n = counts.per_source.entry(source).or_insert(0);
            if *n >= self.max_per_source {
                return Err(Refusal::ConnectionsFromAddress);
            }
            *n += 1;
            counts.total += 1;
        }
        Ok(Place {
            source,
            member,
            counts: self.counts.clone(),
        })
    }
}

/// The raft port's connection limits, for a listener of an application's own (kv's metrics
/// port): at most `total` connections, at most `per_address` of them from one IPv4 address or
/// IPv6 /64.
pub struct ConnectionLimits(Admission);

/// A connection's place under [`ConnectionLimits`], given back when it is dropped.
pub struct ConnectionPlace {
    _place: Place,
}

impl ConnectionLimits {
    /// Limits of `total` connections, `per_address` from one address (each at least 1).
    pub fn new(total: usize, per_address: usize) -> ConnectionLimits {
        ConnectionLimits(Admission::with_limits(
            total,
            per_address,
            MemberSources::default(),
        ))
    }

    /// A place for a connection from `ip`, or `None` if either limit is reached: close the
    /// connection then.
    pub fn admit(&self, ip: IpAddr) -> Option<ConnectionPlace> {
        self.0
            .admit(ip)
            .ok()
            .map(|place| ConnectionPlace { _place: place })
    }
}

/// Accepts TCP connections within the limits.
struct Acceptor {
    listener: TcpListener,
    admission: Admission,
    refusals: Refusals,
}

impl Acceptor {
    fn new(listener: TcpListener, opts: &GrpcOptions, members: MemberSources) -> Acceptor {
        Acceptor {
            listener,
            admission: Admission::new(opts, members),
            refusals: Refusals::default(),
        }
    }

    /// The next admitted connection, its addresses and its place; connections past the limits
    /// are closed on the way.
    async fn next(&mut self) -> (TcpStream, Ends, Place) {
        loop {
            let (tcp, from) = match self.listener.accept().await {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            };
            let local = match tcp.local_addr() {
                Ok(local) => local,
                Err(e) => {
                    // Only a connection already gone has no address; it is closed.
                    tracing::debug!(%from, error = %e, "an accepted connection has no local address");
                    continue;
                }
            };
            match self.admission.admit(from.ip()) {
                Ok(place) => {
                    nodelay(&tcp);
                    return (tcp, (local, from), place);
                }
                Err(why) => self.refusals.note(from, why),
            }
        }
    }
}

/// Length of the HTTP/2 client connection preface.
const PREFACE_BYTES: usize = 24;

/// The client's HTTP/2 preface still to come, and when it must have come.
struct Preface {
    deadline: Pin<Box<tokio::time::Sleep>>,
    missing: usize,
}

/// How long an admitted connection may go without the client preface, and without a call that
/// passes authentication, and where it registers for proof.
#[derive(Clone)]
struct Deadlines {
    preface: Duration,
    auth: Duration,
    unproven: Unproven,
}

impl Deadlines {
    fn new(opts: &GrpcOptions, unproven: Unproven) -> Deadlines {
        Deadlines {
            preface: opts.preface_timeout,
            auth: opts.auth_timeout,
            unproven,
        }
    }
}

/// A connection holding its place under the server's limits until it is dropped, and failing
/// its reads once [`GrpcOptions::preface_timeout`] has passed without the client preface, or
/// [`GrpcOptions::auth_timeout`] without a call that passed authentication.
pub(crate) struct Limited<IO> {
    preface: Option<Preface>,
    // Before `io`: an unproven connection leaves the registry before its socket closes.
    proof: Option<Proof>,
    io: IO,
    _place: Place,
}

impl<IO> Limited<IO> {
    fn new(io: IO, ends: Ends, place: Place, deadlines: &Deadlines) -> Limited<IO> {
        Limited {
            preface: Some(Preface {
                deadline: Box::pin(tokio::time::sleep(deadlines.preface)),
                missing: PREFACE_BYTES,
            }),
            proof: Some(Proof {
                proven: deadlines.unproven.register(ends),
                deadline: Box::pin(tokio::time::sleep(deadlines.auth)),
                ends,
                unproven: deadlines.unproven.clone(),
            }),
            io,
            _place: place,
        }
    }
}

impl<IO> Limited<IO> {
    /// The error that closes the connection once [`GrpcOptions::auth_timeout`] has passed
    /// without a call that passed authentication. Checked on writes as well as reads: a client
    /// that stops reading stalls the server's writes, and may no longer be read from.
    fn unproven_too_long(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        let proof = self.proof.as_mut()?;
        if proof.proven.load(Ordering::Acquire) {
            self.proof = None;
            return None;
        }
        proof.expired(cx).then(|| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                "no call passed authentication within auth_timeout",
            )
        })
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Limited<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Read first: a preface already waiting is taken even if the task runs late.
        let before = buf.filled().len();
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Some(p) = &mut this.preface {
            if let Poll::Ready(Ok(())) = &read {
                p.missing = p.missing.saturating_sub(buf.filled().len() - before);
            }
            if p.missing == 0 {
                this.preface = None;
            } else if p.deadline.as_mut().poll(cx).is_ready() {
                // Polling the deadline also wakes this task when it passes.
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no HTTP/2 preface within preface_timeout",
                )));
            }
        }
        if let Some(e) = this.unproven_too_long(cx) {
            return Poll::Ready(Err(e));
        }
        read
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Limited<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(e) = this.unproven_too_long(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(e) = this.unproven_too_long(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(e) = this.unproven_too_long(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl<IO: Connected> Connected for Limited<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// The plain TCP connections accepted on `listener`, within the limits of `opts` (the
/// addresses in `members` may go past the total by one address's share).
pub(crate) fn tcp_incoming(
    listener: TcpListener,
    opts: &GrpcOptions,
    members: MemberSources,
    unproven: Unproven,
) -> impl Stream<Item = Result<Limited<TcpStream>, io::Error>> + Send + 'static {
    let deadlines = Deadlines::new(opts, unproven);
    futures_util::stream::unfold(
        Acceptor::new(listener, opts, members),
        move |mut acceptor| {
            let deadlines = deadlines.clone();
            async move {
                let (io, ends, place) = acceptor.next().await;
                Some((Ok(Limited::new(io, ends, place, &deadlines)), acceptor))
            }
        },
    )
}

/// The TLS connections accepted on `listener`, within the limits of `opts` (the addresses in
/// `members` may go past the total by one address's share, and need no handshake permit),
/// handshaken with `tls` as it is when each arrives. The accept task ends when the stream is
/// dropped.
pub(crate) fn tls_incoming(
    listener: TcpListener,
    tls: ReloadableTls,
    opts: &GrpcOptions,
    members: MemberSources,
    unproven: Unproven,
) -> impl Stream<Item = Result<Limited<TlsStream<TcpStream>>, io::Error>> + Send + 'static {
    let limit = opts.max_tls_handshakes.max(1);
    let timeout = opts.tls_handshake_timeout;
    let deadlines = Deadlines::new(opts, unproven);
    let (tx, rx) = mpsc::channel(limit);
    let permits = Arc::new(Semaphore::new(limit));
    let mut acceptor = Acceptor::new(listener, opts, members);
    tokio::spawn(async move {
        loop {
            let (tcp, ends, place) = tokio::select! {
                a = acceptor.next() => a,
                _ = tx.closed() => return,
            };
            let from = ends.1;
            // A member's handshake needs no permit: strangers who hold every permit must not
            // keep a peer out, and the member's places are bounded already.
            let wanted = (!place.member).then(|| permits.clone().try_acquire_owned());
            let Ok(permit) = wanted.transpose() else {
                acceptor.refusals.note(from, Refusal::Handshakes);
                continue;
            };
            let Some(tls_acceptor) = tls.acceptor() else {
                return;
            };
            let tx = tx.clone();
            let deadlines = deadlines.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(timeout, tls_acceptor.accept(tcp)).await {
                    Ok(Ok(io)) => {
                        // A stranger's permit is held until tonic takes the connection, so
                        // finished handshakes cannot pile up either.
                        let limited = Limited::new(io, ends, place, &deadlines);
                        let _ = tx.send(Ok(limited)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%from, error = %e, "TLS handshake failed"),
                    Err(_) => {
                        tracing::debug!(%from, ?timeout, "TLS handshake timed out; closing")
                    }
                }
                drop(permit);
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(total: usize, per_ip: usize) -> Admission {
        admission_with(total, per_ip, MemberSources::default())
    }

    fn admission_with(total: usize, per_ip: usize, members: MemberSources) -> Admission {
        Admission::new(
            &GrpcOptions::default()
                .with_max_connections(total)
                .with_max_connections_per_ip(per_ip),
            members,
        )
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn places_are_bounded_per_address_and_in_all_and_come_back_when_dropped() {
        let a = admission(3, 2);
        let p1 = a.admit(ip("10.0.0.1")).unwrap();
        let p2 = a.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(
            a.admit(ip("10.0.0.1")).err(),
            Some(Refusal::ConnectionsFromAddress)
        );
        let p3 = a.admit(ip("10.0.0.2")).unwrap();
        assert_eq!(a.admit(ip("10.0.0.3")).err(), Some(Refusal::Connections));
        drop(p1);
        let p4 = a.admit(ip("10.0.0.1")).unwrap();
        drop((p2, p3, p4));
        let counts = lock(&a.counts);
        assert!(counts.per_source.is_empty());
        assert_eq!(counts.total, 0);
    }

    #[test]
    fn an_ipv6_network_counts_as_one_address_and_mapped_ipv4_as_its_ipv4() {
        let a = admission(10, 1);
        let _p = a.admit(ip("2001:db8:1:2::1")).unwrap();
        assert!(a.admit(ip("2001:db8:1:2:ffff::9")).is_err());
        assert!(a.admit(ip("2001:db8:1:3::1")).is_ok());
        let _q = a.admit(ip("192.0.2.7")).unwrap();
        assert!(a.admit(ip("::ffff:192.0.2.7")).is_err());
    }

    #[test]
    fn a_members_address_is_admitted_past_the_total() {
        let members = MemberSources::default();
        let a = admission_with(2, 2, members.clone());
        let _full = [
            a.admit(ip("10.0.0.1")).unwrap(),
            a.admit(ip("10.0.0.2")).unwrap(),
        ];
        assert_eq!(a.admit(ip("10.0.0.9")).err(), Some(Refusal::Connections));

        // The member set is read at each admission, so a change applies at once; an IPv6
        // member stands for its /64, as the per-address limit counts it.
        members.set([ip("10.0.0.9"), ip("2001:db8:1:2::5")]);
        let _m1 = a.admit(ip("10.0.0.9")).unwrap();
        let _m2 = a.admit(ip("2001:db8:1:2::77")).unwrap();
        // Strangers are still refused, and the members' places count.
        assert_eq!(a.admit(ip("10.0.0.3")).err(), Some(Refusal::Connections));
        assert_eq!(lock(&a.counts).total, 4);

        members.set([]);
        assert_eq!(
            a.admit(ip("2001:db8:1:2::78")).err(),
            Some(Refusal::Connections)
        );
    }

    #[test]
    fn members_keep_to_their_share_and_go_past_the_total_by_one_share_in_all() {
        let members = MemberSources::default();
        members.set([ip("::ffff:10.0.0.7"), ip("10.0.0.8"), ip("10.0.0.9")]);
        let a = admission_with(4, 2, members);
        // A member's address keeps to its share; a mapped IPv4 member counts as its IPv4.
        let _m1 = a.admit(ip("10.0.0.7")).unwrap();
        let _m2 = a.admit(ip("::ffff:10.0.0.7")).unwrap();
        assert_eq!(
            a.admit(ip("10.0.0.7")).err(),
            Some(Refusal::ConnectionsFromAddress)
        );
        let _s = [
            a.admit(ip("10.0.0.1")).unwrap(),
            a.admit(ip("10.0.0.2")).unwrap(),
        ];
        assert_eq!(a.admit(ip("10.0.0.3")).err(), Some(Refusal::Connections));
        // Past the total, the members share one address's worth of places.
        let _m3 = a.admit(ip("10.0.0.8")).unwrap();
        let _m4 = a.admit(ip("10.0.0.9")).unwrap();
        assert_eq!(a.admit(ip("10.0.0.9")).err(), Some(Refusal::Connections));
        assert_eq!(lock(&a.counts).total, 6);
    }

    #[test]
    fn a_connection_is_proven_once_and_forgotten_only_by_itself() {
        let unproven = Unproven::default();
        let server: SocketAddr = "10.0.0.9:7000".parse().unwrap();
        let other_server: SocketAddr = "10.0.0.10:7000".parse().unwrap();
        let client: SocketAddr = "10.0.0.1:4000".parse().unwrap();
        let a = (server, client);
        // The same client address and port reaching another of the host's addresses.
        let b = (other_server, client);
        let pa = unproven.register(a);
        let pb = unproven.register(b);
        assert_eq!(unproven.0.waiting.load(Ordering::Acquire), 2);

        unproven.prove_ends(a);
        assert!(pa.load(Ordering::Acquire));
        assert!(
            !pb.load(Ordering::Acquire),
            "only the connection that called"
        );
        assert_eq!(unproven.0.waiting.load(Ordering::Acquire), 1);

        // A later connection with b's addresses replaces an entry its predecessor left; the
        // predecessor's forgetting leaves the new one waiting.
        let pb2 = unproven.register(b);
        unproven.forget(b, &pb);
        assert_eq!(unproven.0.waiting.load(Ordering::Acquire), 1);
        unproven.prove_ends(b);
        assert!(pb2.load(Ordering::Acquire) && !pb.load(Ordering::Acquire));
        assert_eq!(unproven.0.waiting.load(Ordering::Acquire), 0);
        assert!(unproven.write().is_empty());
    }
}
