//! Stopping openraft's core from a thread of its own, so that no caller can cancel the join.
//!
//! openraft records how its core ended in a state that one caller — the first to join the core
//! task — moves from "joining" to "done". If that caller's future is dropped while it waits (a
//! timeout around a shutdown, or the runtime itself shutting down and cancelling the task that
//! was stopping a node), every other caller waiting for the core finds the state still
//! "joining" and panics (`raft_inner.rs`, "RaftCore should have already quit"). A join run on a
//! thread that nothing cancels always records the result, whatever happens to the callers.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::Context;
use std::task::Poll;
use std::task::Wake;
use std::thread::Thread;

use super::RaftHandle;
use crate::error::Error;
use crate::error::Result;
use crate::snapshot::SnapshotStore;
use crate::state_machine::StateMachine;

/// Wakes the thread that polls the future.
struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs `future` to completion on the calling thread. Only for futures that need no runtime
/// services (timers, I/O): the core's join handle and channels wake through their wakers alone.
fn block_on<F: Future>(future: F) -> F::Output {
    let waker = Arc::new(Unpark(std::thread::current())).into();
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}

/// How a node's stop ended, once it has: its error as text, or nothing.
type Outcome = Option<std::result::Result<(), String>>;

/// The one stop of a node. Every caller that needs the engine stopped (a shutdown, or each
/// request that finds the engine dead) waits for the same stop: only the first starts a
/// thread, so a thousand requests waiting when the engine fails make one thread, not a
/// thousand.
#[derive(Default)]
pub(crate) struct Stop {
    done: std::sync::Mutex<Option<tokio::sync::watch::Receiver<Outcome>>>,
}

impl Stop {
    /// Stops `raft` (sends its shutdown signal and joins its core and tick tasks) on a thread
    /// of its own, then closes `snapshots` there (waiting for a placement under way): a build or
    /// install that outlives the engine places nothing. Resolves when both are done (at once,
    /// with the same answer, for every call after the first one ended); dropping the returned
    /// future stops neither.
    pub(super) async fn shutdown<S: StateMachine>(
        &self,
        raft: &RaftHandle<S>,
        snapshots: &Arc<SnapshotStore>,
    ) -> Result<()> {
        let mut done = {
            let mut slot = crate::sync::lock(&self.done);
            match &*slot {
                Some(done) => done.clone(),
                None => {
                    let (tx, rx) = tokio::sync::watch::channel(None);
                    let (raft, snapshots) = (raft.clone(), snapshots.clone());
                    std::thread::Builder::new()
                        .name("raft-stop".into())
                        .spawn(move || {
                            let r = block_on(raft.shutdown()).map_err(|e| e.to_string());
                            snapshots.close();
                            let _ = tx.send(Some(r));
                        })
                        .map_err(|e| {
                            Error::Fatal(format!(
                                "shutdown: starting a thread to stop the node: {e}"
                            ))
                        })?;
                    *slot = Some(rx.clone());
                    rx
                }
            }
        };
        let outcome = done
            .wait_for(Option::is_some)
            .await
            .map(|o| o.clone())
            .ok()
            .flatten();
        match outcome {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(Error::Fatal(format!("shutdown: {e}"))),
            None => Err(Error::Fatal(
                "shutdown: the thread stopping the node ended without an answer".into(),
            )),
        }
    }
}
