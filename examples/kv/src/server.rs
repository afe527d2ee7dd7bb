//! The RESP front end: accepts connections and runs each client's commands in order.
//!
//! Every connection is its own task with a bounded read buffer (see [`ConnLimits`]) and writes
//! its replies before reading more once a batch of replies passes 1 MiB, so a client cannot make
//! the server hold unbounded memory. A protocol error gets `-ERR Protocol error: …` and the
//! connection is closed; other clients are unaffected. Past `maxclients` a new client is
//! answered `-ERR max number of clients reached`; a client idle past `timeout`, or one that
//! takes none of its replies for `client-output-timeout`, is closed.
//!
//! Writes carry a client session (one per connection), so the retries this server makes
//! through a leader change apply each command once. A connection registers its session with
//! its first write (one replicated entry) and closes it when the connection ends (best effort;
//! the cluster's bounded session table evicts sessions of connections that vanished). A write
//! whose session was evicted meanwhile gets `-TRYAGAIN … outcome is unknown` and the connection
//! registers a new session for its next write.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;
use std::time::Instant;
use std::time::SystemTime;
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use bytes::BytesMut;
use raft_core::Consistency;
use raft_core::Role;
use raft_core::Session;
use raft_grpc::LocalClient;
use tokio::io::AsyncRead;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWrite;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::net::TcpStream;

use crate::auth;
use crate::auth::ConnAuth;
use crate::auth::Gate;
use crate::auth::SharedAccounts;
use crate::client_memory::ClientMemory;
use crate::client_memory::Share;
use crate::commands;
use crate::commands::Action;
use crate::forward;
use crate::forward::Walk;
use crate::forward::keys;
use crate::forward::read;
use crate::forward::retrying_for;
use crate::forward::write;
use crate::limits::ConnLimits;
use crate::pipeline;
use crate::pipeline::Batch;
use crate::pipeline::Plan;
use crate::resp;
use crate::resp::ArrayInPlace;
use crate::security::Security;
use crate::security::SharedTls;
use crate::store::Command;
use crate::store::Queued;
use crate::store::ReadOp;
use crate::store::Reply;
use crate::store::Store;
use crate::store::Watched;
use crate::store::WriteOp;

/// Replies are sent once this many bytes are waiting, even mid-pipeline: within what a
/// connection holds without a share of `--maxmemory-clients`
/// ([`crate::client_memory::FREE_BYTES`]), so a client with small replies is served however
/// long its pipeline.
const FLUSH_AT: usize = 64 << 10;
/// A connection's reply buffer, as it starts.
const OUTPUT_BYTES: usize = 16 << 10;
/// Largest reply buffer a connection keeps once its replies are sent: a buffer that large
/// replies (or a long pipeline's) grew past it is given back, so an idle connection holds
/// kilobytes whatever it was once sent.
const KEEP_OUTPUT_BYTES: usize = 64 << 10;
/// How long a client may take over its TLS handshake.
const TLS_HANDSHAKE: Duration = Duration::from_secs(10);
/// How long telling a client past `maxclients` may take, TLS handshake included.
const REFUSAL: Duration = Duration::from_secs(1);
/// Refusals under way at once; past this a connection is closed without a word, so a flood of
/// connections cannot make the node hold more than this many refusals.
const MAX_REFUSALS: usize = 64;

/// Milliseconds since the Unix epoch on this machine.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What every connection of one node shares.
pub struct Ctx {
    pub client: LocalClient<Store>,
    pub consistency: Consistency,
    pub limits: ConnLimits,
    /// Who may connect (`AUTH`), reloadable.
    pub accounts: SharedAccounts,
    /// TLS for clients, if on.
    pub tls: Option<SharedTls>,
    /// This node's `CONFIG` parameters.
    pub config: crate::config::NodeConfig,
    next_conn: AtomicU64,
    /// Clients connected now.
    clients: AtomicUsize,
    /// Connections refused for `maxclients`, since the node started.
    rejected: AtomicU64,
    /// Known commands let through authentication since the node started (INFO's
    /// `total_commands_processed`).
    commands: AtomicU64,
    /// When the node started serving, for INFO's uptime.
    started: std::time::Instant,
    /// Places for clients being told they are past `maxclients`.
    refusals: Arc<tokio::sync::Semaphore>,
    /// What all connections' buffers may hold together (`--maxmemory-clients`).
    pub client_memory: Arc<ClientMemory>,
}

impl Ctx {
    pub fn new(
        client: LocalClient<Store>,
        consistency: Consistency,
        limits: ConnLimits,
        security: &Security,
    ) -> Arc<Ctx> {
        let node = client.node().clone();
        let config = crate::config::NodeConfig::new(
            &limits,
            node.storage().memory_limit_bytes,
            move |bytes| node.set_memory_limit(bytes),
        );
        Arc::new(Ctx {
            client,
            consistency,
            limits,
            accounts: security.accounts.clone(),
            tls: security.resp_tls.clone(),
            config,
            next_conn: AtomicU64::new(1),
            clients: AtomicUsize::new(0),
            rejected: AtomicU64::new(0),
            commands: AtomicU64::new(0),
            started: std::time::Instant::now(),
            refusals: Arc::new(tokio::sync::Semaphore::new(MAX_REFUSALS)),
            client_memory: ClientMemory::new(limits.client_memory),
        })
    }

    /// Clients connected now.
    pub fn clients(&self) -> usize {
        self.clients.load(Ordering::Relaxed)
    }
}

/// Counts a connection for as long as it lives.
struct Counted(Arc<Ctx>);

impl Counted {
    fn new(ctx: Arc<Ctx>) -> Counted {
        metrics::gauge!("kv_connected_clients").increment(1.0);
        Counted(ctx)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!("kv_connected_clients").decrement(1.0);
    }
}

/// Tells a client past `maxclients` so, as Redis does, and closes once the client has read it
/// — over TLS when the port speaks TLS, so the client reads the error rather than a broken
/// handshake. At most [`MAX_REFUSALS`] at once, each within [`REFUSAL`].
fn refuse(socket: TcpStream, ctx: &Ctx) {
    let Ok(permit) = ctx.refusals.clone().try_acquire_owned() else {
        return;
    };
    let acceptor = ctx.tls.as_ref().map(crate::security::acceptor);
    tokio::spawn(async move {
        let _ = tokio::time::timeout(REFUSAL, async move {
            match acceptor {
                None => say_refused(socket).await,
                Some(acceptor) => say_refused(acceptor.accept(socket).await?).await,
            }
        })
        .await;
        drop(permit);
    });
}

async fn say_refused<S: AsyncRead + AsyncWrite + Unpin>(mut socket: S) -> std::io::Result<()> {
    socket
        .write_all(b"-ERR max number of clients reached\r\n")
        .await?;
    // Clients (redis-py among them) send a first command before they read.
    close_unread(socket).await
}

/// Closes a connection after a refusal it may not have read yet: shuts the write side, then
/// reads and drops what the client still sends until it closes, within [`REFUSAL`]. Closing
/// with the client's input unread would reset the connection, and the reset can fail the
/// client's write or discard the error before the client reads it. What is read is dropped at
/// once, into a small buffer.
async fn close_unread<S: AsyncRead + AsyncWrite + Unpin>(mut socket: S) -> std::io::Result<()> {
    let drain = async move {
        socket.shutdown().await?;
        let mut sink = [0u8; 4096];
        while socket.read(&mut sink).await? > 0 {}
        std::io::Result::Ok(())
    };
    match tokio::time::timeout(REFUSAL, drain).await {
        Ok(done) => done,
        Err(_) => Ok(()),
    }
}

/// Serves RESP on `listener` until the process ends.
pub async fn serve(listener: TcpListener, ctx: Arc<Ctx>) {
    loop {
        match listener.accept().await {
            Ok((socket, peer)) => {
                if ctx.clients.fetch_add(1, Ordering::Relaxed) >= ctx.limits.max_clients {
                    ctx.clients.fetch_sub(1, Ordering::Relaxed);
                    ctx.rejected.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("kv_rejected_connections_total").increment(1);
                    refuse(socket, &ctx);
                    continue;
                }
                let counted = Counted::new(ctx.clone());
                tokio::spawn(async move {
                    let ctx = &counted.0;
                    if let Err(e) = socket.set_nodelay(true) {
                        tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
                    }
                    let ended = match &ctx.tls {
                        None => connection(socket, peer, ctx).await,
                        Some(tls) => {
                            let acceptor = crate::security::acceptor(tls);
                            match tokio::time::timeout(TLS_HANDSHAKE, acceptor.accept(socket)).await
                            {
                                Ok(Ok(stream)) => connection(stream, peer, ctx).await,
                                Ok(Err(e)) => Err(e),
                                Err(_) => Err(std::io::Error::new(
                                    std::io::ErrorKind::TimedOut,
                                    "TLS handshake timed out",
                                )),
                            }
                        }
                    };
                    if let Err(e) = ended {
                        tracing::debug!(%peer, error = %e, "connection ended");
                    }
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: pause rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// How long a closing connection waits for its session to be closed.
const CLOSE_SESSION_WITHIN: Duration = Duration::from_secs(2);

struct Conn {
    id: u64,
    /// The connection's session, once its first write registered one.
    session: Option<Session>,
    proto: resp::Proto,
    auth: ConnAuth,
    /// The transaction being queued, between `MULTI` and `EXEC`/`DISCARD`.
    tx: Option<Transaction>,
    /// The keys `WATCH`ed for the next `EXEC`, as they were then.
    watched: Vec<Watched>,
    /// What the watched keys cost (see [`resp::ARG_OVERHEAD`]), bounded like a command.
    watched_bytes: usize,
    /// The name `CLIENT SETNAME` gave the connection.
    name: Option<Bytes>,
    /// A write of this connection applied (or may have) since its last read that succeeded
    /// (see [`Conn::read_consistency`]).
    wrote: bool,
    /// What its buffers hold of the node's `--maxmemory-clients`.
    share: Share,
}

impl Conn {
    /// The consistency of the connection's next read: the node's, except that a node reading
    /// locally reads at the leader's lease after a write of this connection. The write was
    /// answered once the leader applied it, but this node (a follower) may not have yet, and a
    /// Redis connection reads its own writes. The read index the leader gives covers the write.
    fn read_consistency(&self, ctx: &Ctx) -> Consistency {
        if self.wrote && ctx.consistency == Consistency::Local {
            Consistency::Lease
        } else {
            ctx.consistency
        }
    }

    /// Reads `op` at [`Conn::read_consistency`]: `Err` with the reply that says why it failed.
    /// Reads after a write go at the lease until one succeeds: a local read before that could
    /// miss the write, so while the leader is out of reach they fail, and say so.
    async fn read(&mut self, ctx: &Ctx, op: ReadOp) -> Result<Reply, Reply> {
        let r = forward::read_checked_at(ctx, op, self.read_consistency(ctx)).await;
        if r.is_ok() {
            self.wrote = false;
        }
        r
    }
}

/// Commands queued after `MULTI`.
#[derive(Default)]
struct Transaction {
    ops: Vec<Queued>,
    /// How each queued write's reply is reshaped.
    posts: Vec<commands::Post>,
    /// What the queued commands cost (see [`resp::ARG_OVERHEAD`]): bounded like one command,
    /// since the transaction becomes one log entry.
    bytes: usize,
    /// A command was refused while queueing: `EXEC` answers `EXECABORT`.
    dirty: bool,
    /// Commands about this node or connection (`CONFIG`, `CLIENT`), answered in their place
    /// when `EXEC` is.
    local: Vec<(usize, Action)>,
    /// The highest role a queued command needs, checked again at `EXEC` in case a reload
    /// lowered the user's role meanwhile.
    needs: Option<raft_grpc::Role>,
}

async fn connection<S: AsyncRead + AsyncWrite + Unpin>(
    socket: S,
    peer: SocketAddr,
    ctx: &Ctx,
) -> std::io::Result<()> {
    let id = ctx.next_conn.fetch_add(1, Ordering::Relaxed);
    let mut conn = Conn {
        id,
        session: None,
        proto: resp::Proto::Resp2,
        auth: ConnAuth::new(&ctx.accounts),
        tx: None,
        watched: Vec::new(),
        watched_bytes: 0,
        name: None,
        wrote: false,
        share: Share::new(ctx.client_memory.clone()),
    };
    tracing::debug!(%peer, id, "client connected");
    let result = serve_connection(socket, peer, ctx, &mut conn).await;
    if let Some(s) = conn.session {
        // Best effort: a session left open is evicted once the table is full.
        let close = ctx.client.close_session(s.client_id);
        match tokio::time::timeout(CLOSE_SESSION_WITHIN, close).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(id, error = %e, "session not closed"),
            Err(_) => tracing::debug!(id, "session not closed in time"),
        }
    }
    result
}

/// When a connection stops waiting for its client to send more, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadDeadline {
    /// The client has sent nothing for `timeout`.
    Idle(tokio::time::Instant),
    /// The client has not authenticated within `--auth-timeout` of connecting.
    Auth(tokio::time::Instant),
}

impl ReadDeadline {
    /// The deadline that comes first of an idle deadline and an authentication deadline (each
    /// if any); on a tie, the authentication deadline.
    fn first(
        idle_by: Option<tokio::time::Instant>,
        auth_by: Option<tokio::time::Instant>,
    ) -> Option<ReadDeadline> {
        match (idle_by, auth_by) {
            (Some(idle_by), Some(auth_by)) if idle_by < auth_by => {
                Some(ReadDeadline::Idle(idle_by))
            }
            (_, Some(auth_by)) => Some(ReadDeadline::Auth(auth_by)),
            (idle_by, None) => idle_by.map(ReadDeadline::Idle),
        }
    }

    fn at(self) -> tokio::time::Instant {
        match self {
            ReadDeadline::Idle(at) | ReadDeadline::Auth(at) => at,
        }
    }
}

async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin>(
    mut socket: S,
    peer: SocketAddr,
    ctx: &Ctx,
    conn: &mut Conn,
) -> std::io::Result<()> {
    let id = conn.id;
    let limits = &ctx.limits;
    // A client that must authenticate does so with small commands; the limits change when its
    // authentication does, which only a command it sends can change.
    let command_limits = |authenticated: bool| {
        if authenticated {
            limits.resp
        } else {
            limits.resp.unauthenticated()
        }
    };
    let mut authenticated = conn.auth.authenticated();
    let mut parser = resp::Parser::new(command_limits(authenticated));
    let mut input = BytesMut::with_capacity(resp::READ_ROOM);
    let mut out = BytesMut::with_capacity(OUTPUT_BYTES);
    // The commands of the read buffer gathered so far, replicated together (see `pipeline`).
    let mut batch = Batch::default();
    // A client that must authenticate does so by then (counted again from a RESET that takes
    // its authentication away).
    let mut auth_by = tokio::time::Instant::now() + limits.auth_timeout;
    loop {
        loop {
            match parser.next(&mut input) {
                Ok(Some(args)) if args.is_empty() => continue,
                Ok(Some(args)) => {
                    let quit = execute(&args, conn, ctx, &mut batch, &mut out).await;
                    if conn.auth.authenticated() != authenticated {
                        authenticated = !authenticated;
                        parser.set_limits(command_limits(authenticated));
                        if !authenticated {
                            auth_by = tokio::time::Instant::now() + limits.auth_timeout;
                        }
                    }
                    if quit || out.len() >= FLUSH_AT {
                        flush(&mut socket, &mut out, limits).await?;
                    }
                    if quit {
                        return Ok(());
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    // The commands before the malformed one are answered first.
                    run_batch(&mut batch, conn, ctx, &mut out).await;
                    metrics::counter!("kv_protocol_errors_total").increment(1);
                    resp::encode(&Reply::Error(format!("ERR {e}")), &mut out, conn.proto);
                    flush(&mut socket, &mut out, limits).await?;
                    // The client may still be sending the command: heard out, so that it
                    // reads the error rather than a reset.
                    drop((parser, input, out));
                    conn.share.cover(0);
                    return close_unread(socket).await;
                }
            }
        }
        run_batch(&mut batch, conn, ctx, &mut out).await;
        flush(&mut socket, &mut out, limits).await?;
        parser.make_room(&mut input);
        // A command part-way through must fit, as it arrives, under the node's bound on all
        // clients' buffers: a large bulk's buffer is sized when its header arrives, so this
        // is checked before its data is read.
        let queued = conn.tx.as_ref().map_or(0, |tx| tx.bytes)
            + conn.watched_bytes
            + conn.name.as_ref().map_or(0, Bytes::len);
        if !conn
            .share
            .cover(parser.held() + input.capacity() + out.capacity() + queued)
        {
            past_client_memory(id, ctx);
            let e = format!(
                "ERR this command does not fit in what the node's clients may buffer together (maxmemory-clients {} bytes)",
                ctx.client_memory.limit()
            );
            resp::encode(&Reply::Error(e), &mut out, conn.proto);
            flush(&mut socket, &mut out, limits).await?;
            // What the command took is given back before the client is heard out.
            drop((parser, input, out));
            conn.share.cover(0);
            return close_unread(socket).await;
        }
        let read = socket.read_buf(&mut input);
        let idle_by = limits.idle.map(|idle| tokio::time::Instant::now() + idle);
        let n = match ReadDeadline::first(idle_by, (!authenticated).then_some(auth_by)) {
            None => read.await?,
            Some(deadline) => match tokio::time::timeout_at(deadline.at(), read).await {
                Ok(n) => n?,
                Err(_) => {
                    match deadline {
                        ReadDeadline::Auth(_) => {
                            metrics::counter!("kv_auth_timeouts_total").increment(1);
                            tracing::debug!(%peer, id, "client closed: it did not authenticate in time");
                        }
                        ReadDeadline::Idle(_) => tracing::debug!(%peer, id, "idle client closed"),
                    }
                    return Ok(());
                }
            },
        };
        if n == 0 {
            return Ok(());
        }
    }
}

/// The session for the connection's next write, with its sequence advanced: registered with
/// the connection's first write (or after the previous session expired). `Err` is the reply
/// when no session could be opened; the write was then not applied.
async fn next_session(conn: &mut Conn, ctx: &Ctx) -> Result<Session, Reply> {
    let session = match &mut conn.session {
        Some(s) => s,
        None => {
            // One key for every attempt: a retry after an attempt whose answer was lost gets
            // that attempt's session instead of opening a second one.
            let key = Session::random_key();
            let id = retrying_for(|| ctx.client.register_session_keyed(key))
                .await
                .map_err(|_| {
                    Reply::Error(
                        "TRYAGAIN the command was not applied: the connection could not open a client session".into(),
                    )
                })?;
            conn.session.insert(Session {
                client_id: id,
                sequence: 0,
            })
        }
    };
    session.sequence += 1;
    Ok(*session)
}

/// Sends the pending replies. A client whose replies would pass the output limit, or that takes
/// none of them for the output timeout, is disconnected (an error ends the connection).
async fn flush<S: AsyncWrite + Unpin>(
    socket: &mut S,
    out: &mut BytesMut,
    limits: &ConnLimits,
) -> std::io::Result<()> {
    if out.len() > limits.output_bytes {
        metrics::counter!("kv_output_limit_disconnects_total").increment(1);
        return Err(std::io::Error::other(format!(
            "{} bytes of replies pass the client output buffer limit of {}",
            out.len(),
            limits.output_bytes
        )));
    }
    let timed_out = || {
        metrics::counter!("kv_output_limit_disconnects_total").increment(1);
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the client took none of its replies within the output timeout",
        )
    };
    let mut sent = 0;
    while sent < out.len() {
        let write = socket.write(&out[sent..]);
        let n = match tokio::time::timeout(limits.output_timeout, write).await {
            Ok(n) => n?,
            Err(_) => return Err(timed_out()),
        };
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        sent += n;
    }
    // A TLS stream takes the last replies into its own buffer when the socket is full and
    // sends them only when written to or flushed again: without this they could wait there
    // while the connection goes back to reading, and the client for them. A plain socket (and
    // a TLS stream with room) flushes at once, without a timer.
    let at_once =
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *socket).poll_flush(cx))).await;
    match at_once {
        Poll::Ready(r) => r?,
        Poll::Pending => match tokio::time::timeout(limits.output_timeout, socket.flush()).await {
            Ok(r) => r?,
            Err(_) => return Err(timed_out()),
        },
    }
    if out.capacity() > KEEP_OUTPUT_BYTES {
        // A large reply grew the buffer: give it back rather than keep it with the connection.
        *out = BytesMut::with_capacity(OUTPUT_BYTES);
    } else {
        out.clear();
    }
    Ok(())
}

/// Commands whose arguments the connection may keep after it has answered them.
const KEEPS_ARGUMENTS: [&str; 3] = ["watch", "client", "hello"];

/// Copies `args` into one buffer of their own size.
fn compact(args: &[Bytes]) -> Vec<Bytes> {
    let mut all = BytesMut::with_capacity(args.iter().map(Bytes::len).sum());
    args.iter()
        .map(|a| {
            all.extend_from_slice(a);
            all.split().freeze()
        })
        .collect()
}

/// Runs one command, or adds it to `batch` to be replicated with the commands around it, and
/// appends its reply (after those of the batch it ends); `true` when the connection should
/// close.
async fn execute(
    args: &[Bytes],
    conn: &mut Conn,
    ctx: &Ctx,
    batch: &mut Batch,
    out: &mut BytesMut,
) -> bool {
    // Only known command names become metric labels, so clients cannot create unbounded series.
    let spec = commands::find(&args[0]);
    let name = spec.map_or("unknown", |s| s.name);
    metrics::counter!("kv_requests_total", "command" => name).increment(1);
    let (reply, refused) = match auth::gate(spec, args, &mut conn.auth, &ctx.accounts) {
        Gate::Pass => {
            // As Redis's count, only commands that may run: not unknown ones, nor those
            // refused for authentication or permission.
            if spec.is_some() {
                ctx.commands.fetch_add(1, Ordering::Relaxed);
            }
            (None, false)
        }
        Gate::Reply(r) => (Some(r), false),
        Gate::Refused(r) => (Some(r), true),
        Gate::Revoked(r) => {
            run_batch(batch, conn, ctx, out).await;
            resp::encode(&r, out, conn.proto);
            return true;
        }
    };
    if let Some(r) = reply {
        run_batch(batch, conn, ctx, out).await;
        // As in Redis, a command refused before it could be queued discards the transaction.
        if refused && let Some(tx) = conn.tx.as_mut() {
            tx.dirty = true;
        }
        resp::encode(&r, out, conn.proto);
        return false;
    }
    // Arguments the connection keeps past the command (queued after MULTI, WATCHed keys, a
    // CLIENT SETNAME name) are copied out of the read buffer: a slice of it would keep the
    // whole buffer, a large bulk's included, while only its own bytes are counted.
    let owned;
    let args = if conn.tx.is_some() || spec.is_some_and(|s| KEEPS_ARGUMENTS.contains(&s.name)) {
        owned = compact(args);
        &owned[..]
    } else {
        args
    };
    // One clock reading: EX/PX deadlines and the write's stamp are the same instant.
    let now = now_ms();
    let action = commands::parse_as(spec, args, now, ctx.limits.resp.max_bulk);
    if conn.tx.is_none()
        && Batch::joins(&action)
        && let Action::Write { op, post } = action
    {
        let cost = pipeline::cost(args);
        if !batch.is_empty() && !batch.fits(cost, &ctx.limits) {
            run_batch(batch, conn, ctx, out).await;
        }
        batch.push(op, post, cost, now);
        return false;
    }
    run_batch(batch, conn, ctx, out).await;
    let reply = match conn.tx.as_mut() {
        Some(tx) if queues(&action) => {
            tx.needs = std::cmp::max(tx.needs, spec.map(auth::role_for));
            queue(tx, conn.watched_bytes, action, args, ctx)
        }
        _ => match action {
            Action::Reply(r) => r,
            Action::Quit => {
                resp::encode(&Reply::Ok, out, conn.proto);
                return true;
            }
            Action::Reset => {
                // As Redis's RESET: the transaction and the watched keys go, and the name,
                // RESP3 and the authentication. The connection's session (its exactly-once
                // writes) and its reading of its own writes stay: they are the server's
                // promises, not state the client set.
                conn.tx = None;
                unwatch(conn);
                conn.name = None;
                conn.proto = resp::Proto::Resp2;
                conn.auth = ConnAuth::new(&ctx.accounts);
                Reply::Status("RESET".into())
            }
            Action::Hello { proto, name } => {
                if let Some(p) = proto {
                    conn.proto = p;
                }
                if let Some(name) = name {
                    commands::ClientOp::SetName(name).apply(&mut conn.name, conn.id);
                }
                hello(conn, ctx)
            }
            Action::Info(sections) => info(ctx, &sections).await,
            Action::Write { op, post } => post.apply(replicate(conn, ctx, op, now).await),
            Action::Read(ReadOp::Keys(pattern)) => {
                let limit = ctx.limits.output_bytes;
                let consistency = conn.read_consistency(ctx);
                let (mut node_full, before) = (false, out.len());
                let (share, proto) = (&mut conn.share, conn.proto);
                // The keys are encoded into the reply as each step finds them, and must fit
                // both limits as they are found.
                let mut array = ArrayInPlace::begin(out);
                let found = |keys: Vec<Reply>| {
                    let bytes = keys.iter().map(Reply::encoded_bytes).sum();
                    let total = before.saturating_add(array.len_with(out, keys.len(), bytes));
                    node_full = total <= limit && !share.reserve(total);
                    if total > limit || node_full {
                        return false;
                    }
                    keys.iter().for_each(|k| array.push(k, out, proto));
                    true
                };
                match keys(ctx, consistency, pattern, found).await {
                    Walk::Done => {
                        array.finish(out);
                        conn.wrote = false;
                        return false;
                    }
                    Walk::Stopped if node_full => {
                        array.abandon(out);
                        return past_client_memory(conn.id, ctx);
                    }
                    Walk::Stopped => {
                        array.abandon(out);
                        return past_output_limit(conn.id, limit);
                    }
                    Walk::Failed(reply) => {
                        array.abandon(out);
                        reply
                    }
                }
            }
            Action::Read(op) => {
                let post = commands::Post::of_read(&op);
                post.apply(conn.read(ctx, op).await.unwrap_or_else(|failed| failed))
            }
            Action::Multi if conn.tx.is_some() => Reply::error("ERR MULTI calls can not be nested"),
            Action::Multi => {
                conn.tx = Some(Transaction::default());
                Reply::Ok
            }
            Action::Exec => exec(conn, ctx, now).await,
            Action::Discard => match conn.tx.take() {
                Some(_) => {
                    unwatch(conn);
                    Reply::Ok
                }
                None => Reply::error("ERR DISCARD without MULTI"),
            },
            Action::Watch(_) if conn.tx.is_some() => {
                Reply::error("ERR WATCH inside MULTI is not allowed")
            }
            Action::Watch(keys) => watch(conn, ctx, keys).await,
            Action::Unwatch => {
                unwatch(conn);
                Reply::Ok
            }
            Action::ConfigGet(patterns) => ctx.config.get(&patterns),
            Action::ConfigSet(pairs) => ctx.config.set(&pairs),
            Action::Client(op) => op.apply(&mut conn.name, conn.id),
        },
    };
    // A reply that would pass the output limit is not sent, and the client is closed, as
    // `flush` closes one whose unsent replies pass the limit. It is encoded within the room
    // left, and given up as soon as it runs out: an aggregate's parts may repeat one large
    // value many times (`MGET k k …`, `HRANDFIELD h -N WITHVALUES`), so it is never built
    // whole first.
    //
    // Under `--maxmemory-clients`, the reply's share is taken before it is built, from the
    // most its encoding can take ([`Reply::encoded_bytes`]): a reply that does not fit is
    // never built, and two connections cannot both count on the same room. A small reply
    // fits what every connection holds without a share, and takes nothing.
    if !conn
        .share
        .reserve(out.len().saturating_add(reply.encoded_bytes()))
    {
        return past_client_memory(conn.id, ctx);
    }
    let limit = ctx.limits.output_bytes;
    let room = limit.saturating_sub(out.len());
    if resp::encode_within(&reply, out, conn.proto, room).is_err() {
        return past_output_limit(conn.id, limit);
    }
    false
}

/// Counts and logs a connection closed because its buffers would pass what the node lets all
/// clients buffer together (`--maxmemory-clients`); `true`, for [`execute`] to answer.
fn past_client_memory(id: u64, ctx: &Ctx) -> bool {
    metrics::counter!("kv_client_memory_disconnects_total").increment(1);
    tracing::debug!(
        id,
        limit = ctx.client_memory.limit(),
        used = ctx.client_memory.used(),
        "the connection's buffers would pass maxmemory-clients; closing it"
    );
    true
}

/// Counts and logs a connection closed because its next reply would pass the output limit;
/// `true`, for [`execute`] to answer.
fn past_output_limit(id: u64, limit: usize) -> bool {
    metrics::counter!("kv_output_limit_disconnects_total").increment(1);
    tracing::debug!(
        id,
        limit,
        "a reply would pass the client output buffer limit; closing the connection"
    );
    true
}

/// Runs the commands gathered in `batch` (if any) and appends their replies in order.
async fn run_batch(batch: &mut Batch, conn: &mut Conn, ctx: &Ctx, out: &mut BytesMut) {
    let Some(plan) = batch.take() else {
        return;
    };
    match plan {
        Plan::Write { op, post, now } => {
            let r = post.apply(replicate(conn, ctx, op, now).await);
            resp::encode(&r, out, conn.proto);
        }
        Plan::Together { op, posts, now } => {
            let r = replicate(conn, ctx, op, now).await;
            for r in pipeline::split(r, posts) {
                resp::encode(&r, out, conn.proto);
            }
        }
    }
}

/// Replicates one write under the connection's session and answers the store's reply.
async fn replicate(conn: &mut Conn, ctx: &Ctx, op: WriteOp, now: u64) -> Reply {
    replicated(conn, ctx, op, now)
        .await
        .unwrap_or_else(|failed| failed)
}

/// Replicates `op`: `Ok` with the store's reply once it applied, `Err` with the reply that
/// says it did not (or may not have).
async fn replicated(conn: &mut Conn, ctx: &Ctx, op: WriteOp, now: u64) -> Result<Reply, Reply> {
    let started = Instant::now();
    let r = match next_session(conn, ctx).await {
        Ok(session) => {
            let written = write(ctx, session, Command { now, op }).await;
            // Applied, or maybe: the next read must see it.
            conn.wrote |= written
                .as_ref()
                .map_or_else(|f| f.outcome_unknown, |_| true);
            written.map_err(|failed| {
                if failed.outcome_unknown {
                    // The session may not answer again: the next write registers a new
                    // one. The old one is left to eviction (it may be gone already).
                    conn.session = None;
                }
                failed.reply
            })
        }
        Err(refused) => Err(refused),
    };
    metrics::histogram!("kv_write_duration_seconds").record(started.elapsed().as_secs_f64());
    r
}

/// What INFO's reply takes at most, beyond its members line: every section, with numbers at
/// their widest (about 1.5 KiB are used).
const INFO_REPLY_BOUND: usize = 4096;

/// What one member takes at most in INFO's members line: its id, an address whose host name has
/// the longest a DNS name can, its port and kind.
const INFO_MEMBER_BOUND: usize = 300;

/// The most the reply of a command about this node or connection, queued after `MULTI` and
/// answered at `EXEC`, can take (`CLIENT` and `CONFIG SET` answer little more than their
/// arguments, which are counted already).
fn local_reply_bound(action: &Action, ctx: &Ctx) -> usize {
    match action {
        Action::Info(_) => {
            let members = ctx.client.node().metrics().members.len();
            INFO_REPLY_BOUND + members * INFO_MEMBER_BOUND
        }
        Action::ConfigGet(_) => ctx.config.reply_bound(),
        _ => 0,
    }
}

/// Whether a command given inside `MULTI` is queued (or refused) rather than run at once.
fn queues(action: &Action) -> bool {
    !matches!(
        action,
        Action::Exec
            | Action::Discard
            | Action::Multi
            | Action::Watch(_)
            | Action::Quit
            | Action::Reset
    )
}

/// Queues a command of a transaction, or refuses it (and the transaction with it) as Redis 7
/// does for a mistake it can see before `EXEC`.
fn queue(
    tx: &mut Transaction,
    watched_bytes: usize,
    action: Action,
    args: &[Bytes],
    ctx: &Ctx,
) -> Reply {
    // A reply built at once (`COMMAND`, `COMMAND INFO …`) can be far larger than the command
    // that asked for it; it is held, and replicated, until `EXEC`, so it counts at its size.
    let mut built = 0;
    let (op, post) = match action {
        Action::Reply(r) if r.is_error() => {
            tx.dirty = true;
            return r;
        }
        Action::Reply(r) => {
            built = r.footprint();
            (Queued::Reply(r), commands::Post::None)
        }
        Action::Write { op, post } => (Queued::Write(op), post),
        Action::Read(op) => {
            let post = commands::Post::of_read(&op);
            (Queued::Read(op), post)
        }
        Action::Unwatch => (Queued::Reply(Reply::Ok), commands::Post::None),
        local @ (Action::ConfigGet(_)
        | Action::ConfigSet(_)
        | Action::Client(_)
        | Action::Info(_)) => {
            // Its reply is built at EXEC, from a command of a few bytes: it counts at the most
            // that reply can take, so that a transaction of many cannot build more than its bound.
            built = local_reply_bound(&local, ctx);
            tx.local.push((tx.ops.len(), local));
            (Queued::Reply(Reply::Nil), commands::Post::None)
        }
        _ => {
            tx.dirty = true;
            return Reply::error("ERR this command is not allowed inside a transaction");
        }
    };
    // EXEC replicates the queued commands and the watched keys as one command, so together
    // they must fit in one.
    let cost = pipeline::cost(args).max(built);
    let max = ctx.limits.resp.max_frame;
    if tx.bytes + watched_bytes + cost > max {
        tx.dirty = true;
        return Reply::error(format!(
            "ERR the transaction and its watched keys would pass the {max} byte limit of one command (client-query-buffer-limit)"
        ));
    }
    tx.bytes += cost;
    tx.ops.push(op);
    tx.posts.push(post);
    Reply::Status("QUEUED".into())
}

/// `EXEC`: the queued commands, with the watched keys' versions, as one replicated write.
async fn exec(conn: &mut Conn, ctx: &Ctx, now: u64) -> Reply {
    let Some(tx) = conn.tx.take() else {
        return Reply::error("ERR EXEC without MULTI");
    };
    let watched = std::mem::take(&mut conn.watched);
    conn.watched_bytes = 0;
    if tx.dirty {
        return Reply::error("EXECABORT Transaction discarded because of previous errors.");
    }
    if tx.needs.is_some_and(|role| !conn.auth.may(role)) {
        return Reply::error(
            "EXECABORT Transaction discarded: the user's rights changed since it was queued (NOPERM).",
        );
    }
    if tx.ops.is_empty() && watched.is_empty() {
        return Reply::Array(Vec::new());
    }
    let outcome = if tx.ops.iter().any(|q| matches!(q, Queued::Write(_))) {
        let op = WriteOp::ExecStrict {
            watched,
            ops: tx.ops,
        };
        replicated(conn, ctx, op, now).await
    } else {
        exec_reads(conn, ctx, watched, tx.ops).await
    };
    let reply = match outcome {
        // Not applied, or a watched key changed: nothing of the transaction ran.
        Err(failed) => return failed,
        Ok(Reply::NilArray) => return Reply::NilArray,
        Ok(applied) => applied,
    };
    // Applied: the commands about this node or connection run too, even when the replies are
    // not returned (past the transaction's reply or read bounds).
    let mut local: Vec<(usize, Reply)> = Vec::with_capacity(tx.local.len());
    for (i, action) in tx.local {
        let r = match action {
            Action::ConfigGet(patterns) => ctx.config.get(&patterns),
            Action::ConfigSet(pairs) => ctx.config.set(&pairs),
            Action::Client(op) => op.apply(&mut conn.name, conn.id),
            Action::Info(sections) => info(ctx, &sections).await,
            _ => continue,
        };
        local.push((i, r));
    }
    let Reply::Array(replies) = reply else {
        return reply;
    };
    let mut replies: Vec<Reply> = replies
        .into_iter()
        .zip(tx.posts)
        .map(|(r, post)| post.apply(r))
        .collect();
    for (i, r) in local {
        if let Some(slot) = replies.get_mut(i) {
            *slot = r;
        }
    }
    Reply::Array(replies)
}

/// `EXEC` of a transaction that queued no write: one read that runs its reads together
/// ([`ReadOp::Transaction`]), at the node's consistency like any read, answered by this node's
/// own store (after a read index from the leader, if linearizable). It writes no log entry, so
/// a user allowed only to read cannot make one, not even while the storage alarm is raised.
async fn exec_reads(
    conn: &mut Conn,
    ctx: &Ctx,
    watched: Vec<Watched>,
    ops: Vec<Queued>,
) -> Result<Reply, Reply> {
    conn.read(ctx, ReadOp::Transaction { watched, ops }).await
}

/// `WATCH`: reads the keys' versions (at the node's consistency) for the next `EXEC` to check.
async fn watch(conn: &mut Conn, ctx: &Ctx, keys: Vec<Bytes>) -> Reply {
    let cost = pipeline::cost(&keys);
    let max = ctx.limits.resp.max_frame;
    if conn.watched_bytes + cost > max {
        return Reply::error(format!(
            "ERR the watched keys would pass the {max} byte limit of one command (client-query-buffer-limit)"
        ));
    }
    let versions = match conn.read(ctx, ReadOp::Versions(keys.clone())).await {
        Ok(Reply::Array(v)) => v,
        Ok(other) | Err(other) => return other,
    };
    let number = |r: Option<&Reply>| match r {
        Some(Reply::Int(n)) => Some(*n as u64),
        _ => None,
    };
    let Some(seen) = number(versions.first()) else {
        return Reply::error("ERR internal error: malformed versions");
    };
    for (key, v) in keys.into_iter().zip(versions.iter().skip(1)) {
        let Some(version) = number(Some(v)) else {
            return Reply::error("ERR internal error: malformed versions");
        };
        conn.watched.push(Watched { key, version, seen });
    }
    conn.watched_bytes += cost;
    Reply::Ok
}

fn unwatch(conn: &mut Conn) {
    conn.watched.clear();
    conn.watched_bytes = 0;
}

/// INFO's memory section: the node's resident memory at the latest sample (Redis's
/// `used_memory` is its allocator's count; here both lines report the resident memory, which
/// is what `maxmemory` is compared with) and the limit.
fn memory_info(s: &raft_core::StorageStatus) -> String {
    let mut text = String::from("# Memory\r\n");
    // No line rather than a false 0 before the first sample, or where it cannot be read.
    if let Some(used) = s.memory_bytes {
        let human = human_bytes(used);
        text.push_str(&format!(
            "used_memory:{used}\r\nused_memory_human:{human}\r\nused_memory_rss:{used}\r\nused_memory_rss_human:{human}\r\n"
        ));
    }
    let max = s.memory_limit_bytes;
    text.push_str(&format!(
        "maxmemory:{max}\r\nmaxmemory_human:{}\r\nmaxmemory_policy:noeviction\r\n\r\n",
        human_bytes(max)
    ));
    text
}

/// Bytes as Redis's INFO writes them for people: `512B`, `1.50K`, `3.00M`, `1.25G`.
fn human_bytes(b: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1 << 40, "T"),
        (1 << 30, "G"),
        (1 << 20, "M"),
        (1 << 10, "K"),
    ];
    match UNITS.iter().find(|(size, _)| b >= *size) {
        Some((size, unit)) => format!("{:.2}{unit}", b as f64 / *size as f64),
        None => format!("{b}B"),
    }
}

/// The storage lines of INFO's persistence section: the NOSPACE alarm and the latest sample.
fn storage_info(s: &raft_core::StorageStatus) -> String {
    let alarm = match (&s.local_alarm, s.peer_alarms.iter().next()) {
        (Some(_), _) => "nospace",
        (None, Some(_)) => "nospace_on_voter",
        (None, None) => "none",
    };
    let reason = match (&s.local_alarm, s.peer_alarms.iter().next()) {
        (Some(r), _) => r.clone(),
        (None, Some((id, r))) => format!("node {id}: {r}"),
        (None, None) => String::new(),
    };
    let mut text = format!(
        "storage_alarm:{alarm}\r\nstorage_alarm_reason:{}\r\nstorage_refusing_writes:{}\r\n",
        reason.replace(['\r', '\n'], " "),
        u8::from(s.refusing_writes)
    );
    if let Some(u) = s.usage {
        text.push_str(&format!(
            "storage_used_bytes:{}\r\nstorage_free_bytes:{}\r\nstorage_total_bytes:{}\r\n",
            u.used_bytes, u.free_bytes, u.total_bytes
        ));
    }
    text
}

fn bulk(s: impl Into<String>) -> Reply {
    Reply::Bulk(Bytes::from(s.into()))
}

fn hello(conn: &Conn, ctx: &Ctx) -> Reply {
    let role = match ctx.client.node().role() {
        Role::Leader => "master",
        _ => "replica",
    };
    let proto = match conn.proto {
        resp::Proto::Resp2 => 2,
        resp::Proto::Resp3 => 3,
    };
    Reply::Map(vec![
        (bulk("server"), bulk("redis")),
        (bulk("version"), bulk("7.0.0")),
        (bulk("proto"), Reply::Int(proto)),
        (bulk("id"), Reply::Int(conn.id as i64)),
        (bulk("mode"), bulk("standalone")),
        (bulk("role"), bulk(role)),
        (bulk("modules"), Reply::Array(Vec::new())),
    ])
}

/// INFO: the sections asked for, in Redis's order. No name, `default`, `all` and `everything`
/// ask for every section (kv has none outside Redis's default set); names are matched in lower
/// case (the parser lowers them), and an unknown one adds nothing, as in Redis.
async fn info(ctx: &Ctx, sections: &[String]) -> Reply {
    let node = ctx.client.node();
    let m = node.metrics();
    let want = |s: &str| {
        sections.is_empty()
            || sections
                .iter()
                .any(|w| w == s || w == "all" || w == "everything" || w == "default")
    };
    let mut text = String::new();
    if want("server") {
        text.push_str("# Server\r\n");
        text.push_str("redis_version:7.0.0\r\nredis_mode:standalone\r\n");
        text.push_str(&format!(
            "raftkit_version:{}\r\n",
            env!("CARGO_PKG_VERSION")
        ));
        let uptime = ctx.started.elapsed().as_secs();
        text.push_str(&format!(
            "raftkit_node_id:{}\r\nprocess_id:{}\r\nuptime_in_seconds:{uptime}\r\nuptime_in_days:{}\r\n\r\n",
            m.id,
            std::process::id(),
            uptime / 86_400
        ));
    }
    if want("clients") {
        text.push_str(&format!(
            "# Clients\r\nconnected_clients:{}\r\nmaxclients:{}\r\n",
            ctx.clients(),
            ctx.limits.max_clients
        ));
        // What connections' buffers hold of `--maxmemory-clients` (beyond each one's first
        // 256 KiB), and the bound (0: none).
        text.push_str(&format!(
            "client_buffers_shared:{}\r\nmaxmemory_clients:{}\r\n",
            ctx.client_memory.used(),
            ctx.client_memory.limit()
        ));
        // The cluster's session table, as this node has applied it.
        text.push_str(&format!(
            "client_sessions:{}\r\nclient_session_capacity:{}\r\n\r\n",
            node.open_sessions(),
            node.session_capacity().max_sessions
        ));
    }
    if want("memory") {
        text.push_str(&memory_info(&node.storage()));
    }
    if want("persistence") {
        let s = node.log_stats();
        text.push_str("# Persistence\r\n");
        text.push_str(&format!(
            "wal_entries:{}\r\nwal_bytes:{}\r\nwal_fsyncs:{}\r\nwal_fsync_micros_total:{}\r\n",
            s.entries, s.bytes, s.fsyncs, s.fsync_micros
        ));
        text.push_str(&storage_info(&node.storage()));
        text.push_str(&format!(
            "snapshot_failures:{}\r\n\r\n",
            node.snapshot_stats().failures
        ));
    }
    if want("stats") {
        // Connection ids are handed out from 1, one per connection accepted.
        text.push_str(&format!(
            "# Stats\r\ntotal_connections_received:{}\r\ntotal_commands_processed:{}\r\nrejected_connections:{}\r\n\r\n",
            ctx.next_conn.load(Ordering::Relaxed).saturating_sub(1),
            ctx.commands.load(Ordering::Relaxed),
            ctx.rejected.load(Ordering::Relaxed)
        ));
    }
    if want("replication") {
        let role = if m.role == Role::Leader {
            "master"
        } else {
            "slave"
        };
        text.push_str("# Replication\r\n");
        text.push_str(&format!(
            "role:{role}\r\nraft_role:{}\r\nraft_term:{}\r\n",
            m.role, m.term
        ));
        text.push_str(&format!(
            "raft_leader_id:{}\r\nraft_leader_addr:{}\r\n",
            m.leader.map_or("none".to_string(), |l| l.to_string()),
            m.leader_addr.clone().unwrap_or_default()
        ));
        let idx = |i: Option<u64>| i.map_or("none".to_string(), |i| i.to_string());
        text.push_str(&format!(
            "raft_last_log_index:{}\r\nraft_commit_index:{}\r\nraft_applied_index:{}\r\nraft_snapshot_index:{}\r\n",
            idx(m.last_log_index),
            idx(m.commit_index),
            idx(m.applied_index),
            idx(m.snapshot_index)
        ));
        let members: Vec<String> = m
            .members
            .iter()
            .map(|(id, addr)| {
                let kind = if m.voters.contains(id) {
                    "voter"
                } else {
                    "learner"
                };
                format!("{id}={addr}({kind})")
            })
            .collect();
        // Redis's replication offset counts bytes of its replication stream; a node's place in
        // the raft log is its last index, which tools comparing offsets across nodes can use.
        text.push_str(&format!(
            "raft_members:{}\r\nconnected_slaves:{}\r\nmaster_repl_offset:{}\r\n\r\n",
            members.join(","),
            m.voters.len().saturating_sub(1),
            m.last_log_index.unwrap_or(0)
        ));
    }
    if want("cpu") {
        text.push_str(&cpu_info());
    }
    if want("keyspace")
        && let Reply::Int(n) = read(ctx, ReadOp::DbSize).await
    {
        text.push_str(&format!(
            "# Keyspace\r\ndb0:keys={n},expires=0,avg_ttl=0\r\n\r\n"
        ));
    }
    Reply::Bulk(Bytes::from(text))
}

/// INFO's CPU section: the CPU time this process and the children it has waited for have used,
/// in seconds, from `/proc/self/stat`. Just the header where that cannot be read.
fn cpu_info() -> String {
    let mut text = String::from("# CPU\r\n");
    let stat = std::fs::read_to_string("/proc/self/stat").ok();
    if let Some(t) = stat.as_deref().and_then(cpu_times) {
        let hz = rustix::param::clock_ticks_per_second().max(1) as f64;
        let secs = |ticks: u64| ticks as f64 / hz;
        text.push_str(&format!(
            "used_cpu_sys:{:.6}\r\nused_cpu_user:{:.6}\r\nused_cpu_sys_children:{:.6}\r\nused_cpu_user_children:{:.6}\r\n",
            secs(t.sys),
            secs(t.user),
            secs(t.children_sys),
            secs(t.children_user)
        ));
    }
    text.push_str("\r\n");
    text
}

/// CPU time in clock ticks, from a `/proc/<pid>/stat` line.
#[derive(Debug, PartialEq, Eq)]
struct CpuTimes {
    user: u64,
    sys: u64,
    children_user: u64,
    children_sys: u64,
}

/// Reads fields 14 to 17 (utime, stime, cutime, cstime) of a `/proc/<pid>/stat` line. The
/// second field, the command name in parentheses, may hold spaces and parentheses itself, so
/// the fields are counted from after its last `)`.
fn cpu_times(stat: &str) -> Option<CpuTimes> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // `rest` starts at field 3, so field 14 is at index 11.
    let mut fields = rest.split_whitespace().skip(14 - 3);
    let mut next = || fields.next()?.parse::<u64>().ok();
    Some(CpuTimes {
        user: next()?,
        sys: next()?,
        children_user: next()?,
        children_sys: next()?,
    })
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::Context;
    use std::task::Poll;
    use std::time::Duration;

    use bytes::BytesMut;
    use tokio::io::AsyncWrite;
    use tokio::time::Instant;

    use super::CpuTimes;
    use super::ReadDeadline;
    use super::cpu_times;
    use super::human_bytes;

    #[test]
    fn cpu_times_are_counted_from_after_the_command_name() {
        // A command name may hold spaces and parentheses; fields 14 to 17 follow it.
        let line = "4242 (kv (a) b) S 1 4242 4242 0 -1 4194560 900 0 0 0 123 45 6 7 20 0 9 0";
        assert_eq!(
            cpu_times(line),
            Some(CpuTimes {
                user: 123,
                sys: 45,
                children_user: 6,
                children_sys: 7
            })
        );
        assert_eq!(cpu_times("4242 (kv) S 1 2"), None);
        assert_eq!(cpu_times("no parenthesis"), None);
    }

    /// A writer that, like a TLS stream over a full socket, takes every write into a buffer
    /// of its own and sends what it holds only when flushed.
    #[derive(Default)]
    struct Buffering {
        held: Vec<u8>,
        sent: Vec<u8>,
    }

    impl AsyncWrite for Buffering {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.held.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            let held = std::mem::take(&mut self.held);
            self.sent.extend_from_slice(&held);
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            self.poll_flush(cx)
        }
    }

    #[tokio::test]
    async fn replies_are_sent_not_left_in_the_streams_buffer() {
        let mut socket = Buffering::default();
        let mut out = BytesMut::from(&b"+OK\r\n$1\r\nv\r\n"[..]);
        let limits = crate::limits::ConnLimits::default();
        super::flush(&mut socket, &mut out, &limits).await.unwrap();
        assert_eq!(socket.sent, b"+OK\r\n$1\r\nv\r\n");
        assert!(socket.held.is_empty() && out.is_empty());
    }

    #[test]
    fn sizes_read_as_redis_writes_them() {
        assert_eq!(human_bytes(0), "0B");
        assert_eq!(human_bytes(1023), "1023B");
        assert_eq!(human_bytes(1536), "1.50K");
        assert_eq!(human_bytes(3 << 20), "3.00M");
        assert_eq!(human_bytes(5 << 29), "2.50G");
        assert_eq!(human_bytes(1 << 40), "1.00T");
    }

    #[test]
    fn the_read_deadline_is_the_first_one_and_names_its_cause() {
        let now = Instant::now();
        let soon = now + Duration::from_secs(1);
        let later = now + Duration::from_secs(2);
        assert_eq!(ReadDeadline::first(None, None), None);
        assert_eq!(
            ReadDeadline::first(Some(soon), None),
            Some(ReadDeadline::Idle(soon))
        );
        assert_eq!(
            ReadDeadline::first(None, Some(soon)),
            Some(ReadDeadline::Auth(soon))
        );
        // An idle timeout sooner than the authentication deadline ends the wait as idle.
        assert_eq!(
            ReadDeadline::first(Some(soon), Some(later)),
            Some(ReadDeadline::Idle(soon))
        );
        assert_eq!(
            ReadDeadline::first(Some(later), Some(soon)),
            Some(ReadDeadline::Auth(soon))
        );
        assert_eq!(
            ReadDeadline::first(Some(soon), Some(soon)),
            Some(ReadDeadline::Auth(soon))
        );
        assert_eq!(ReadDeadline::Idle(later).at(), later);
    }
}
