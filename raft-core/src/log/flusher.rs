//! Group commit: one thread that makes written records durable and only then acknowledges them.
//!
//! `append` writes records with a plain `pwrite` and hands the flusher a waiter. The flusher
//! takes *every* waiter queued so far, fdatasyncs the files they wrote to, and completes them
//! all: one fdatasync acknowledges every append that arrived while the previous one was running.
//! There is no timer and no artificial delay — a lone writer pays exactly one fdatasync.
//!
//! The flusher also holds the log's one failed state. A failed fdatasync fails the log for good:
//! after such a failure the kernel may have dropped the dirty pages, and Linux reports the error
//! to one fdatasync only, so the next one on the same file can succeed although pages were lost.
//! Nothing written before can be trusted to be durable. The writer records its own failures here
//! too ([`Flusher::fail`]). The failed state is the first failure itself, a [`LogError`]. Once
//! failed, every pending waiter gets that failure, every later one [`LogError::Failed`] naming
//! it (both with its kind), no round already running completes its waiters, and the writer
//! refuses further writes.
//!
//! The fdatasyncs of the file appends write to run on this thread, the one that seals a segment
//! included, so no two of them race on one file descriptor, where only one would see an error.
//! (Truncation fsyncs the segment it cuts through a descriptor of its own, and fails the log
//! itself if that fails.)

use std::io;
use std::sync::Arc;
use std::sync::Condvar;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Instant;

use super::LogError;
use super::LogStatsCounters;
use super::segment::Segment;
use super::sim::Simulation;
use crate::fsutil::at;

/// Runs once the data written before it was queued is durable (or with the error that stopped it).
pub(crate) type Waiter = Box<dyn FnOnce(io::Result<()>) + Send>;

#[derive(Default)]
struct Queue {
    /// The segments written to since the last round.
    segments: Vec<Segment>,
    waiters: Vec<Waiter>,
    stop: bool,
    /// Stop without syncing what is queued (simulated power loss in tests).
    abandon: bool,
    /// The log's first failure.
    failure: Option<Arc<LogError>>,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    stats: Arc<LogStatsCounters>,
    sim: Option<Simulation>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding this lock can only come from a waiter callback, which runs
        // outside it; recover the guard rather than propagate poison.
        crate::sync::lock(&self.queue)
    }
}

/// Handle to the flusher thread. Dropping it flushes what is queued and joins the thread.
pub(crate) struct Flusher {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// What a waiter queued after the log failed gets: [`LogError::Failed`], of the first failure's
/// kind.
fn refusal(failure: &Arc<LogError>) -> io::Error {
    io::Error::new(
        failure.io_kind(),
        LogError::Failed {
            earlier: failure.clone(),
        },
    )
}

/// What a waiter pending when the log failed gets: the failure itself.
fn failed(failure: &Arc<LogError>) -> io::Error {
    io::Error::new(failure.io_kind(), failure.clone())
}

impl Flusher {
    /// Starts the flusher thread.
    pub fn spawn(
        name: String,
        stats: Arc<LogStatsCounters>,
        sim: Option<Simulation>,
    ) -> io::Result<Flusher> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            stats,
            sim,
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || run(&s))?;
        Ok(Flusher {
            shared,
            thread: Some(thread),
        })
    }

    /// The log's first failure, if it has failed.
    pub fn failure(&self) -> Option<Arc<LogError>> {
        self.shared.lock().failure.clone()
    }

    /// Fails the log for good with `error` (unless it failed before: the first failure is the
    /// one kept). Every queued waiter fails with it now; later ones are refused.
    pub fn fail(&self, error: LogError) {
        let (failure, pending) = {
            let mut q = self.shared.lock();
            if q.failure.is_some() {
                return;
            }
            let failure = Arc::new(error);
            q.failure = Some(failure.clone());
            q.segments.clear();
            (failure, std::mem::take(&mut q.waiters))
        };
        tracing::error!(error = %failure, "the write-ahead log failed; it accepts no more writes");
        for w in pending {
            w(Err(failed(&failure)));
        }
    }

    /// Queues `waiter` to run once everything written so far — to `segment`, and to every
    /// segment queued before — is durable.
    pub fn enqueue(&self, segment: Option<&Segment>, waiter: Waiter) {
        let mut q = self.shared.lock();
        if let Some(f) = &q.failure {
            let err = refusal(f);
            drop(q);
            waiter(Err(err));
            return;
        }
        if let Some(segment) = segment
            && !q
                .segments
                .iter()
                .any(|s| Arc::ptr_eq(&s.file, &segment.file))
        {
            q.segments.push(segment.clone());
        }
        q.waiters.push(waiter);
        drop(q);
        self.shared.wake.notify_one();
    }

    /// Waits until everything written to `segment` so far is durable. Fails with
    /// [`LogError::Failed`] if the log has failed (before or while waiting).
    pub async fn barrier(&self, segment: &Segment) -> Result<(), LogError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.enqueue(
            Some(segment),
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        let r = rx
            .await
            .unwrap_or_else(|_| Err(io::Error::other("write-ahead log flusher stopped")));
        self.barrier_result(r, segment)
    }

    /// Blocking form of [`Flusher::barrier`], for synchronous contexts.
    pub fn barrier_blocking(&self, segment: &Segment) -> Result<(), LogError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.enqueue(
            Some(segment),
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        let r = rx
            .recv()
            .unwrap_or_else(|_| Err(io::Error::other("write-ahead log flusher stopped")));
        self.barrier_result(r, segment)
    }

    /// What a barrier on `segment` that ended with `r` returns: the log's failure if it has
    /// failed, else (the flusher stopped or lost power) the error it was given.
    fn barrier_result(&self, r: io::Result<()>, segment: &Segment) -> Result<(), LogError> {
        r.map_err(|e| match self.failure() {
            Some(earlier) => LogError::Failed { earlier },
            None => LogError::Io(at("fdatasync", &segment.path)(e)),
        })
    }
}

impl Flusher {
    /// Stops the thread without making queued writes durable, as a power cut would: a sync
    /// already running completes (its waiters learn so), everything queued after it fails.
    /// Returns once the thread has exited.
    pub fn abandon(&mut self) {
        {
            let mut q = self.shared.lock();
            q.abandon = true;
            q.stop = true;
        }
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(shared: &Shared) {
    loop {
        let (segments, waiters) = {
            let mut q = shared.lock();
            while q.waiters.is_empty() && !q.stop {
                q = shared.wake.wait(q).unwrap_or_else(|p| p.into_inner());
            }
            if q.abandon {
                let lost = std::mem::take(&mut q.waiters);
                drop(q);
                for w in lost {
                    w(Err(io::Error::other(
                        "power lost before the write was made durable",
                    )));
                }
                return;
            }
            if q.waiters.is_empty() {
                return;
            }
            (
                std::mem::take(&mut q.segments),
                std::mem::take(&mut q.waiters),
            )
        };

        let started = Instant::now();
        let mut result = Ok(());
        for s in &segments {
            shared.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
            let synced = match &shared.sim {
                Some(sim) => sim.before_sync().and_then(|()| s.file.sync_data()),
                None => s.file.sync_data(),
            };
            if let Err(e) = synced {
                result = Err(LogError::Io(at("fdatasync", &s.path)(e)));
                break;
            }
        }
        shared
            .stats
            .record_flush(started.elapsed().as_micros() as u64);

        match result {
            Ok(()) => {
                // The writer may have failed the log while this round ran (a write or an
                // fdatasync of its own): then what these waiters wrote is not known durable.
                let failed = shared.lock().failure.clone();
                for w in waiters {
                    w(match &failed {
                        None => Ok(()),
                        Some(f) => Err(refusal(f)),
                    });
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "fdatasync of the write-ahead log failed; the log accepts no more writes");
                // The first failure is the one kept: the writer's, if it failed meanwhile.
                let (failure, pending) = {
                    let mut q = shared.lock();
                    let failure = q.failure.get_or_insert_with(|| Arc::new(e)).clone();
                    q.segments.clear();
                    (failure, std::mem::take(&mut q.waiters))
                };
                for w in waiters.into_iter().chain(pending) {
                    w(Err(failed(&failure)));
                }
            }
        }
    }
}
