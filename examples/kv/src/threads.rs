//! The threads a `kv` process runs on: one pool for consensus, replication and the gRPC and
//! metrics services, and its own threads for RESP client connections. A node's channels to
//! other nodes run on the pool even when a client's write is the first to use one.
//!
//! A write crosses from its connection to the consensus tasks and back. On one shared pool
//! each crossing tended to wake the pool's other worker, which found the task already taken
//! and went back to sleep: on a 2-core machine running three nodes, 39 context switches per
//! single-client write across the three processes, against 23 with the connections on a
//! thread of their own; pipelined writes from one connection gained a fifth and a
//! linearizable GET took a sixth less CPU (`bench/compare.sh`, `docs/operations.md`).

use std::io;
use std::num::NonZeroUsize;
use std::time::Duration;

use tokio::runtime::Builder;
use tokio::runtime::Handle;
use tokio::runtime::Runtime;

/// The most threads `--worker-threads`, `--resp-threads` or `TOKIO_WORKER_THREADS` may ask for.
pub const MAX_THREADS: u16 = 1024;

/// How long stopping waits for tasks still blocked (on the disk, say) before leaving them.
const STOP_WITHIN: Duration = Duration::from_secs(1);

/// The CPU cores this process may use (at least one).
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, NonZeroUsize::get)
}

/// The default split of `cores` between the consensus pool and the RESP threads: half each,
/// the consensus pool taking the smaller half, and at least one each.
fn split(cores: usize) -> (usize, usize) {
    let workers = (cores / 2).max(1);
    (workers, cores.saturating_sub(workers).max(1))
}

/// The consensus pool's worker threads: `flag` (`--worker-threads`) if given, else `env` (the
/// value of `TOKIO_WORKER_THREADS`) if set, else half the usable cores (at least one). `Err`
/// names a malformed `env`, which would otherwise stop the runtime from starting.
pub fn worker_threads(flag: Option<u16>, env: Option<std::ffi::OsString>) -> Result<usize, String> {
    if let Some(n) = flag {
        return Ok(usize::from(n));
    }
    let Some(env) = env else {
        return Ok(split(cores()).0);
    };
    env.to_str()
        .and_then(|v| v.trim().parse::<u16>().ok())
        .filter(|n| (1..=MAX_THREADS).contains(n))
        .map(usize::from)
        .ok_or_else(|| {
            format!(
                "TOKIO_WORKER_THREADS must be a whole number from 1 to {MAX_THREADS}, not {env:?}; \
                 unset it or pass --worker-threads"
            )
        })
}

/// The RESP threads: `flag` (`--resp-threads`) if given, else the usable cores the consensus
/// pool's default leaves (at least one).
pub fn resp_threads(flag: Option<u16>) -> usize {
    flag.map_or_else(|| split(cores()).1, usize::from)
}

/// A pool of `threads` worker threads named `name`, with timers and I/O.
fn pool(threads: usize, name: &str) -> io::Result<Runtime> {
    Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(name)
        .enable_all()
        .build()
}

/// The consensus pool: `workers` worker threads named `kv-node`.
pub fn consensus(workers: usize) -> io::Result<Runtime> {
    pool(workers, "kv-node")
}

/// The threads RESP connections run on, named `kv-resp`. One thread runs a single-threaded
/// runtime (like Redis's one command thread: a command's own work, such as a large reply, holds
/// up the node's other clients while it runs); more run a pool. Stopped by [`Clients::stop`] or
/// when dropped.
pub struct Clients {
    handle: Handle,
    threads: Threads,
}

enum Threads {
    /// A single-threaded runtime driven by its own thread until `stop` is sent or dropped;
    /// `ended` hears when the thread is done.
    One {
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        ended: std::sync::mpsc::Receiver<()>,
    },
    /// A pool of more than one worker.
    Pool(Option<Runtime>),
}

impl Clients {
    /// Starts `threads` RESP threads (one if given 0).
    pub fn start(threads: usize) -> io::Result<Clients> {
        if threads > 1 {
            let rt = pool(threads, "kv-resp")?;
            return Ok(Clients {
                handle: rt.handle().clone(),
                threads: Threads::Pool(Some(rt)),
            });
        }
        let rt = Builder::new_current_thread().enable_all().build()?;
        let handle = rt.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (done, ended) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("kv-resp".into())
            .spawn(move || {
                // Runs the connections' tasks until told to stop (or the sender is dropped).
                let _ = rt.block_on(stopped);
                rt.shutdown_timeout(STOP_WITHIN);
                let _ = done.send(());
            })?;
        Ok(Clients {
            handle,
            threads: Threads::One {
                stop: Some(stop),
                ended,
            },
        })
    }

    /// Where connection tasks are spawned.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Stops the threads, as dropping does: running connections end; a task that does not
    /// yield (blocked on a lock, say) or one blocked on the disk is left behind after about a
    /// second. Must not be called from within a runtime (it waits for the threads).
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        match &mut self.threads {
            Threads::One { stop, ended } => {
                if let Some(stop) = stop.take() {
                    let _ = stop.send(());
                    // Ends, or a panic there has already been reported by the panic hook.
                    let _ = ended.recv_timeout(STOP_WITHIN * 2);
                }
            }
            Threads::Pool(rt) => {
                if let Some(rt) = rt.take() {
                    rt.shutdown_timeout(STOP_WITHIN);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cores_are_split_in_halves_with_at_least_one_each() {
        assert_eq!(split(1), (1, 1));
        assert_eq!(split(2), (1, 1));
        assert_eq!(split(3), (1, 2));
        assert_eq!(split(8), (4, 4));
    }

    #[test]
    fn worker_threads_come_from_the_flag_then_the_environment_then_half_the_cores() {
        let env = |v: &str| Some(std::ffi::OsString::from(v));
        assert_eq!(worker_threads(Some(3), env("x")), Ok(3), "the flag wins");
        assert_eq!(worker_threads(None, env("5")), Ok(5));
        assert_eq!(worker_threads(None, env(" 2 ")), Ok(2));
        assert_eq!(worker_threads(None, None), Ok(split(cores()).0));
        for bad in ["", "0", "-1", "two", "1025", "99999999999"] {
            assert!(worker_threads(None, env(bad)).is_err(), "{bad:?} accepted");
        }
        assert_eq!(resp_threads(Some(4)), 4);
        assert_eq!(resp_threads(None), split(cores()).1);
    }

    /// Both kinds of RESP threads run what is spawned on them, off the caller's thread, and
    /// stop when asked.
    #[test]
    fn resp_threads_run_tasks_on_their_own_threads_and_stop() {
        for n in [1, 2] {
            let clients = Clients::start(n).unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            clients.handle().spawn(async move {
                tokio::task::yield_now().await;
                let _ = tx.send(std::thread::current().name().map(str::to_string));
            });
            let name = rx.recv_timeout(Duration::from_secs(10)).unwrap();
            assert_eq!(name.as_deref(), Some("kv-resp"), "{n} thread(s)");
            let stopped = std::time::Instant::now();
            clients.stop();
            assert!(stopped.elapsed() < Duration::from_secs(5), "{n} thread(s)");
        }
    }

    /// A connection task stuck without yielding does not hold up stopping the one RESP thread
    /// (the process can exit).
    #[test]
    fn a_stuck_task_does_not_hold_up_stopping() {
        let clients = Clients::start(1).unwrap();
        let (started, running) = std::sync::mpsc::channel();
        let (release, stuck) = std::sync::mpsc::channel::<()>();
        clients.handle().spawn(async move {
            let _ = started.send(());
            let _ = stuck.recv(); // blocks the thread until `release` is dropped
        });
        running.recv_timeout(Duration::from_secs(10)).unwrap();
        let stopping = std::time::Instant::now();
        clients.stop();
        let took = stopping.elapsed();
        assert!(took < Duration::from_secs(5), "stopping took {took:?}");
        drop(release);
    }
}
