//! The `Cluster.Backup` stream: a node's backup ([`Node::export_snapshot_at`]) sent in bounded
//! chunks, and the client side that writes it to a file.
//!
//! The export runs on a blocking thread and writes into a [`ChunkWriter`], which cuts the bytes
//! into messages of at most [`CHUNK_BYTES`] and hands them to the response stream through a
//! channel of [`QUEUE`] messages: a slow client slows the export down instead of making the node
//! buffer the backup. A client that goes away ends the export (its next send fails), and so
//! does one that takes no message for [`READER_STALL`] (60 s), or one that keeps the export
//! waiting longer than [`READER_GRACE`] (30 s) plus what it took at
//! [`GrpcOptions::min_transfer_rate`](crate::GrpcOptions::min_transfer_rate): a reader that
//! takes a message every 59 s would otherwise hold the node's one backup slot, a blocking
//! thread and the state's point-in-time view for hours.

use std::collections::BTreeSet;
use std::future::Future;
use std::io;
use std::io::Write;
use std::sync::Mutex;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use bytes::BytesMut;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use raft_core::BackupInfo;
use raft_core::Node;
use raft_core::ReadIndex;
use raft_core::StateMachine;
use tokio::sync::mpsc;
use tonic::Status;

use crate::client::ClientError;
use crate::pb;
use crate::status;
use crate::status::ErrorCode;

/// The largest piece of a backup one message carries.
pub const CHUNK_BYTES: usize = 256 << 10;
/// Messages queued between the export and the response stream: with [`CHUNK_BYTES`], at most
/// about 1 MiB of a backup is in flight per stream.
const QUEUE: usize = 4;

type Item = Result<pb::BackupChunk, Status>;

/// How long the export waits for its reader to take a message before it gives up: a client
/// that keeps its connection open but stops reading would otherwise hold the node's one backup
/// permit, a blocking thread and a point-in-time view of the state for ever.
const READER_STALL: Duration = Duration::from_secs(60);

/// How long in all the export may wait for its reader beyond the time what the reader took
/// needs at the minimum transfer rate (see the module docs).
const READER_GRACE: Duration = Duration::from_secs(30);

/// A `Write` that sends what it is given as backup chunks; blocking, for the export's thread.
struct ChunkWriter {
    tx: mpsc::Sender<Item>,
    buf: BytesMut,
    /// The runtime the response stream's reader runs on, whose timers bound each send.
    runtime: tokio::runtime::Handle,
    /// How long one send may wait for room ([`READER_STALL`]).
    stall: Duration,
    /// The reader's pace: how long sends may wait in all.
    pace: Pace,
}

/// How long a backup's sends may wait for the reader in all: [`READER_GRACE`] plus the
/// transfer time of what was sent at the minimum rate. Only waiting counts, so a state machine
/// slow to write its snapshot is not taken for a slow reader.
struct Pace {
    grace: Duration,
    min_rate: u64,
    sent: u64,
    waited: Duration,
}

impl Pace {
    fn new(grace: Duration, min_rate: u64) -> Pace {
        Pace {
            grace,
            min_rate,
            sent: 0,
            waited: Duration::ZERO,
        }
    }

    /// How much longer the next send may wait.
    fn left(&self) -> Duration {
        self.grace
            .saturating_add(crate::budget::transfer_time(self.sent, self.min_rate))
            .saturating_sub(self.waited)
    }
}

impl ChunkWriter {
    /// Sends what is buffered; fails if the reader left, or took nothing for `stall`.
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = self.buf.split().freeze();
        let len = data.len() as u64;
        let chunk = Ok(pb::BackupChunk { data, done: None });
        let left = self.pace.left();
        let wait = self.stall.min(left);
        let started = std::time::Instant::now();
        let sent = self.runtime.block_on(self.tx.send_timeout(chunk, wait));
        self.pace.waited += started.elapsed();
        match sent {
            Ok(()) => {
                self.pace.sent += len;
                Ok(())
            }
            Err(mpsc::error::SendTimeoutError::Timeout(_)) if wait < self.stall => {
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "the backup's reader took {} bytes in more than {:?}: slower than the \
                         minimum transfer rate of {} bytes/s",
                        self.pace.sent, self.pace.waited, self.pace.min_rate
                    ),
                ))
            }
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the backup's reader took nothing for {:?}", self.stall),
            )),
            Err(mpsc::error::SendTimeoutError::Closed(_)) => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the backup's reader left",
            )),
        }
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK_BYTES - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK_BYTES {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

/// The message that ends a complete backup stream.
fn done(info: &BackupInfo) -> pb::BackupChunk {
    pb::BackupChunk {
        data: Bytes::new(),
        done: Some(pb::BackupDone {
            index: info.index,
            term: info.term,
            bytes: info.bytes,
            checksum: info.checksum,
            cluster_id: info.cluster.map(|c| c.to_string()).unwrap_or_default(),
        }),
    }
}

/// Starts `node`'s backup at read index `at` and returns its stream: the file's bytes, then the
/// `done` message, or an error status if the export fails part-way. `min_rate` (bytes per
/// second) is the slowest pace the reader may keep ([`Pace`]).
///
/// An export that fails before it starts (the node is already writing a backup, or cannot wait
/// for `at`) is answered here, as the call's status, so a client moves on to another node
/// instead of receiving a stream that only carries the refusal. [`Node::export_snapshot_at`]
/// takes the node's backup permit before it first waits ("another fails at once"), so one poll
/// is enough to know.
pub(crate) fn start<S: StateMachine>(
    node: Node<S>,
    at: ReadIndex,
    min_rate: u64,
) -> Result<BoxStream<'static, Item>, Status> {
    let (tx, rx) = mpsc::channel(QUEUE);
    let writer = ChunkWriter {
        tx: tx.clone(),
        buf: BytesMut::with_capacity(CHUNK_BYTES),
        runtime: tokio::runtime::Handle::current(),
        stall: READER_STALL,
        pace: Pace::new(READER_GRACE, min_rate),
    };
    let mut export = Box::pin(async move { node.export_snapshot_at(at, writer).await });
    let waker = futures_util::task::noop_waker();
    let first = export
        .as_mut()
        .poll(&mut std::task::Context::from_waker(&waker));
    let finished = match first {
        Poll::Ready(Err(e)) => {
            tracing::debug!(error = %e, "backup refused");
            return Err(status::from_error(&e));
        }
        Poll::Ready(Ok(exported)) => Some(exported),
        Poll::Pending => None,
    };
    tokio::spawn(async move {
        let result = match finished {
            Some(exported) => Ok(exported),
            None => export.await,
        };
        let last = match result {
            Ok((info, _)) => {
                tracing::info!(
                    index = info.index,
                    term = info.term,
                    bytes = info.bytes,
                    "backup sent"
                );
                Ok(done(&info))
            }
            Err(e) => {
                tracing::warn!(error = %e, "backup failed");
                Err(status::from_error(&e))
            }
        };
        send_last(&tx, last, READER_STALL).await;
    });
    Ok(tokio_stream::wrappers::ReceiverStream::new(rx).boxed())
}

/// Sends a backup's last message (its `done`, or why it failed) unless the reader takes nothing
/// for `stall`: it may have left already, or stopped reading, and then there is nobody to tell.
/// Without the bound, a reader that keeps its connection but stops reading would keep this
/// task for ever. (The messages already queued stay with the response stream until the client
/// resets it or its connection ends: at most [`QUEUE`] of [`CHUNK_BYTES`].)
async fn send_last(tx: &mpsc::Sender<Item>, last: Item, stall: Duration) {
    let _ = tx.send_timeout(last, stall).await;
}

/// The nodes whose latest answer to a client's backup request was busy (each writes one backup
/// at a time). A node that answers anything else since, or cannot be reached, is no longer
/// counted, so a refusal names only nodes that were busy when last asked.
#[derive(Debug, Default)]
pub(crate) struct BusyNodes(Mutex<BTreeSet<String>>);

impl BusyNodes {
    /// Records `addr`'s latest answer; `true` once every one of `nodes` was busy when last
    /// asked.
    pub(crate) fn answered(&self, addr: &str, busy: bool, nodes: &BTreeSet<&String>) -> bool {
        let mut set = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if busy {
            set.insert(addr.to_string());
        } else {
            set.remove(addr);
        }
        nodes.iter().all(|n| set.contains(n.as_str()))
    }

    /// The nodes that were busy when last asked.
    pub(crate) fn list(&self) -> Vec<String> {
        let set = self.0.lock().unwrap_or_else(|p| p.into_inner());
        set.iter().cloned().collect()
    }
}

/// How long a backup stream may go without a message.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Before the first message: the node may first wait to apply the backup's read index.
    pub first: Duration,
    /// Between two messages.
    pub idle: Duration,
}

/// Writes the backup stream from the node at `addr` into `out`, checking its size and checksum
/// against the final `done` message. The first message must arrive within `limits.first`, each
/// later one within `limits.idle` of the previous one. Failures are described in terms of the
/// backup (which node, how far it got), not of the transport.
pub(crate) async fn receive<W: tokio::io::AsyncWrite + Unpin>(
    mut stream: tonic::Streaming<pb::BackupChunk>,
    out: &mut W,
    addr: &str,
    limits: Limits,
) -> Result<BackupInfo, ClientError> {
    use tokio::io::AsyncWriteExt;
    let incomplete = |why: String| ClientError::BackupIncomplete(why);
    let mut verifier = raft_core::backup::Verifier::default();
    let mut limit = limits.first;
    loop {
        let got = verifier.bytes();
        let msg = match tokio::time::timeout(limit, stream.message()).await {
            Err(_) => {
                return Err(incomplete(format!(
                    "no data from {addr} for {limit:?} after {got} bytes"
                )));
            }
            // The node's own error: its message says what failed.
            Ok(Err(status)) if ErrorCode::of(&status).is_some() => {
                return Err(incomplete(format!("{addr}: {}", status.message())));
            }
            Ok(Err(status)) => {
                tracing::debug!(%addr, %status, "backup stream broke off");
                return Err(incomplete(format!(
                    "the connection to {addr} broke off after {got} bytes"
                )));
            }
            Ok(Ok(None)) => {
                return Err(incomplete(format!(
                    "{addr} ended the stream after {got} bytes without its final message \
                     (is it shutting down?)"
                )));
            }
            Ok(Ok(Some(msg))) => msg,
        };
        limit = limits.idle;
        if !msg.data.is_empty() {
            verifier.update(&msg.data);
            out.write_all(&msg.data)
                .await
                .map_err(ClientError::Output)?;
        }
        let Some(done) = msg.done else { continue };
        out.flush().await.map_err(ClientError::Output)?;
        let checksum = verifier.finish().map_err(|e| incomplete(e.to_string()))?;
        if checksum != done.checksum || verifier.bytes() != done.bytes {
            return Err(incomplete(format!(
                "received {} bytes with checksum {checksum:08x}; the node sent {} bytes with {:08x}",
                verifier.bytes(),
                done.bytes,
                done.checksum
            )));
        }
        let cluster = match done.cluster_id.as_str() {
            "" => None,
            s => Some(
                s.parse()
                    .map_err(|e| incomplete(format!("bad cluster id: {e}")))?,
            ),
        };
        return Ok(BackupInfo {
            index: done.index,
            term: done.term,
            cluster,
            bytes: done.bytes,
            checksum,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An export of `messages` whole messages into a queue of one, on a blocking thread, with
    /// the given stall and pace.
    fn export(
        messages: usize,
        stall: Duration,
        pace: Pace,
    ) -> (
        mpsc::Receiver<Item>,
        tokio::task::JoinHandle<io::Result<()>>,
    ) {
        let (tx, rx) = mpsc::channel(1);
        let mut writer = ChunkWriter {
            tx,
            buf: BytesMut::new(),
            runtime: tokio::runtime::Handle::current(),
            stall,
            pace,
        };
        let export = tokio::task::spawn_blocking(move || {
            for _ in 0..messages {
                writer.write_all(&[7; CHUNK_BYTES])?;
            }
            writer.flush()
        });
        (rx, export)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn an_export_whose_reader_stops_taking_messages_ends() {
        // Far more than the queue holds; nobody reads after the first message.
        let pace = Pace::new(Duration::from_secs(3600), 1);
        let (mut rx, export) = export(8, Duration::from_millis(200), pace);
        let first = rx.recv().await;
        assert!(matches!(first, Some(Ok(ref c)) if c.data.len() == CHUNK_BYTES));
        let ended = tokio::time::timeout(Duration::from_secs(10), export)
            .await
            .expect("the export ended instead of waiting for ever")
            .unwrap();
        assert_eq!(ended.unwrap_err().kind(), io::ErrorKind::TimedOut);
        // The reader still holds its end: the export gave up on its own.
        drop(rx);
    }

    /// An export of 40 messages to a reader that takes one per `every`, with a grace of
    /// `grace` and a minimum rate of 1 MiB/s (a message per 250 ms): how many messages the
    /// reader got, and how the export ended.
    async fn export_to_a_reader_taking_one_per(
        every: Duration,
        grace: Duration,
    ) -> (usize, io::Result<()>) {
        let (mut rx, export) = export(40, Duration::from_secs(60), Pace::new(grace, 1 << 20));
        let reader = tokio::spawn(async move {
            let mut got = 0;
            // The paced reader: the waits are the slow client being emulated.
            while rx.recv().await.is_some() {
                got += 1;
                tokio::time::sleep(every).await;
            }
            got
        });
        let ended = tokio::time::timeout(Duration::from_secs(60), export)
            .await
            .expect("the export ended")
            .unwrap();
        (reader.await.unwrap(), ended)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_export_ends_when_its_reader_is_slower_than_the_minimum_rate() {
        // Twice as slow as the minimum rate: 250 ms short per message, past the 200 ms grace
        // by the second message it waits for.
        let (got, ended) = export_to_a_reader_taking_one_per(
            Duration::from_millis(500),
            Duration::from_millis(200),
        )
        .await;
        let e = ended.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        assert!(got < 10, "the reader got {got} of 40 messages");
        // A reader that takes each message at once gets them all, however long the grace.
        let (got, ended) =
            export_to_a_reader_taking_one_per(Duration::ZERO, Duration::from_secs(2)).await;
        ended.unwrap();
        assert_eq!(got, 40);
    }

    #[tokio::test]
    async fn the_last_message_to_a_reader_that_stopped_reading_is_given_up() {
        let (tx, rx) = mpsc::channel(1);
        tx.send(Ok(pb::BackupChunk::default())).await.unwrap();
        let last = Ok(pb::BackupChunk::default());
        tokio::time::timeout(
            Duration::from_secs(10),
            send_last(&tx, last, Duration::from_millis(200)),
        )
        .await
        .expect("the last message was given up instead of waiting for ever");
        // The reader still holds its end, full.
        assert_eq!(rx.len(), 1);
    }

    #[test]
    fn only_nodes_busy_when_last_asked_count_as_busy() {
        let (a, b) = ("a:1".to_string(), "b:1".to_string());
        let nodes: BTreeSet<&String> = [&a, &b].into();
        let busy = BusyNodes::default();
        assert!(!busy.answered(&a, true, &nodes));
        assert_eq!(busy.list(), ["a:1"]);
        assert!(!busy.answered(&b, false, &nodes));
        assert!(busy.answered(&b, true, &nodes), "both busy when last asked");
        // `a` is then down: it is no longer busy, and no longer all are.
        assert!(!busy.answered(&a, false, &nodes));
        assert_eq!(busy.list(), ["b:1"]);
        assert!(!busy.answered(&b, false, &nodes));
        assert!(busy.list().is_empty());
    }
}
