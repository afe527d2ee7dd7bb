//! Accepting TLS connections for the server, with the certificate in force at each connection.
//!
//! The accept loop only accepts: each connection's handshake runs in a task of its own, within
//! a timeout, and at most [`GrpcOptions::max_tls_handshakes`] at once — a connection that
//! arrives while that many are under way is closed at once. A slow or silent client therefore
//! costs one task and one permit until its timeout, and cannot stall anyone else's accept.
//! Handshaken connections go to tonic, which sees their peer certificates (the interceptors
//! check node and user identities in them).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;

use crate::options::GrpcOptions;
use crate::tls::ReloadableTls;

/// How long the loop pauses after `accept` fails (for example out of file descriptors), so a
/// persistent failure does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// The shortest pause between two warnings about refused connections.
const WARN_EVERY: Duration = Duration::from_secs(1);

/// Small messages (heartbeats, acks) must not wait for Nagle's algorithm.
pub(crate) fn nodelay(s: &TcpStream) {
    if let Err(e) = s.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
}

/// The TLS connections accepted on `listener`, handshaken with `tls` as it is when each
/// arrives. The accept task ends when the stream is dropped.
pub(crate) fn tls_incoming(
    listener: TcpListener,
    tls: ReloadableTls,
    opts: &GrpcOptions,
) -> impl Stream<Item = Result<TlsStream<TcpStream>, io::Error>> + Send + 'static {
    let limit = opts.max_tls_handshakes.max(1);
    let timeout = opts.tls_handshake_timeout;
    let (tx, rx) = mpsc::channel(limit);
    let permits = Arc::new(Semaphore::new(limit));
    tokio::spawn(async move {
        // Refusals are logged at most once a second, with how many there were.
        let mut refused = 0u64;
        let mut last_warning: Option<tokio::time::Instant> = None;
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = tx.closed() => return,
            };
            let (tcp, from) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                refused += 1;
                if last_warning.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                    tracing::warn!(
                        %from,
                        limit,
                        refused,
                        "closing new connections: too many TLS handshakes under way"
                    );
                    last_warning = Some(tokio::time::Instant::now());
                    refused = 0;
                }
                continue;
            };
            let Some(acceptor) = tls.acceptor() else {
                return;
            };
            nodelay(&tcp);
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        // The permit is held until tonic takes the connection, so finished
                        // handshakes cannot pile up either.
                        let _ = tx.send(Ok(stream)).await;
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
