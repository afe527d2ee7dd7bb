//! Recording what clients did: each operation's invocation and completion, with timestamps.
//!
//! A [`Recorder`] is shared by every client of a test. A client calls [`Recorder::invoke`] just
//! before sending an operation and completes the returned [`Pending`] when the answer arrives:
//!
//! * [`Pending::ok`] with the output — the operation took effect, exactly once;
//! * [`Pending::failed`] — it definitely did not take effect (refused before being applied);
//! * [`Pending::unknown`] — it may or may not have taken effect (timed out, connection lost).
//!
//! A `Pending` dropped without an answer counts as unknown. Timestamps come from one monotonic
//! clock, taken before the request leaves and after the answer arrives, so the recorded interval
//! always contains the real one.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Instant;

/// How an operation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<O> {
    /// It took effect and returned this.
    Ok(O),
    /// It definitely did not take effect.
    Failed,
    /// It may or may not have taken effect.
    Unknown,
}

/// One operation of a history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation<I, O> {
    /// Position in the history (in invocation order).
    pub id: usize,
    /// Which client issued it.
    pub client: usize,
    /// What was asked.
    pub input: I,
    /// When it was invoked, in nanoseconds since the recorder started.
    pub call: u64,
    /// When the answer arrived (`None` while pending, and for unknown outcomes).
    pub ret: Option<u64>,
    /// How it ended.
    pub outcome: Outcome<O>,
}

/// A complete history: every operation clients issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct History<I, O> {
    /// The operations, in invocation order.
    pub ops: Vec<Operation<I, O>>,
}

impl<I, O> History<I, O> {
    /// A history made directly from operations (for tests of the checker itself).
    pub fn from_ops(ops: Vec<Operation<I, O>>) -> Self {
        History { ops }
    }

    /// Counts of (ok, failed, unknown) operations.
    pub fn counts(&self) -> (usize, usize, usize) {
        let mut c = (0, 0, 0);
        for op in &self.ops {
            match op.outcome {
                Outcome::Ok(_) => c.0 += 1,
                Outcome::Failed => c.1 += 1,
                Outcome::Unknown => c.2 += 1,
            }
        }
        c
    }
}

struct Inner<I, O> {
    ops: Vec<Operation<I, O>>,
}

/// Records operations from many clients into one history. Cheap to clone.
pub struct Recorder<I, O> {
    inner: Arc<Mutex<Inner<I, O>>>,
    start: Instant,
}

impl<I, O> Clone for Recorder<I, O> {
    fn clone(&self) -> Self {
        Recorder {
            inner: self.inner.clone(),
            start: self.start,
        }
    }
}

impl<I: Clone, O: Clone> Default for Recorder<I, O> {
    fn default() -> Self {
        Self::new()
    }
}

impl<I: Clone, O: Clone> Recorder<I, O> {
    /// An empty recorder; its clock starts now.
    pub fn new() -> Self {
        Recorder {
            inner: Arc::new(Mutex::new(Inner { ops: Vec::new() })),
            start: Instant::now(),
        }
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<I, O>> {
        crate::sync::lock(&self.inner)
    }

    /// Records that `client` is about to issue `input`.
    pub fn invoke(&self, client: usize, input: I) -> Pending<I, O> {
        let mut g = self.lock();
        let call = self.now();
        let id = g.ops.len();
        g.ops.push(Operation {
            id,
            client,
            input,
            call,
            ret: None,
            outcome: Outcome::Unknown,
        });
        Pending {
            recorder: self.clone(),
            id,
            done: false,
        }
    }

    fn complete(&self, id: usize, outcome: Outcome<O>) {
        let ret = self.now();
        let mut g = self.lock();
        if let Some(op) = g.ops.get_mut(id) {
            op.ret = match outcome {
                Outcome::Unknown => None,
                _ => Some(ret),
            };
            op.outcome = outcome;
        }
    }

    /// Runs `op` as one recorded operation: `Ok` is recorded as ok; an error is recorded as
    /// unknown if `may_have_applied` says so, else as failed. Returns what `op` returned.
    pub async fn record<T, E>(
        &self,
        client: usize,
        input: I,
        op: impl Future<Output = Result<T, E>>,
        output: impl FnOnce(&T) -> O,
        may_have_applied: impl FnOnce(&E) -> bool,
    ) -> Result<T, E> {
        let pending = self.invoke(client, input);
        let result = op.await;
        match &result {
            Ok(v) => pending.ok(output(v)),
            Err(e) if may_have_applied(e) => pending.unknown(),
            Err(_) => pending.failed(),
        }
        result
    }

    /// The history so far (pending operations count as unknown).
    pub fn history(&self) -> History<I, O> {
        History {
            ops: self.lock().ops.clone(),
        }
    }
}

/// An operation that was invoked and awaits its answer.
pub struct Pending<I: Clone, O: Clone> {
    recorder: Recorder<I, O>,
    id: usize,
    done: bool,
}

impl<I: Clone, O: Clone> Pending<I, O> {
    /// It took effect and returned `output`.
    pub fn ok(mut self, output: O) {
        self.done = true;
        self.recorder.complete(self.id, Outcome::Ok(output));
    }

    /// It definitely did not take effect.
    pub fn failed(mut self) {
        self.done = true;
        self.recorder.complete(self.id, Outcome::Failed);
    }

    /// It may or may not have taken effect.
    pub fn unknown(mut self) {
        self.done = true;
        self.recorder.complete(self.id, Outcome::Unknown);
    }
}

impl<I: Clone, O: Clone> Drop for Pending<I, O> {
    fn drop(&mut self) {
        if !self.done {
            self.recorder.complete(self.id, Outcome::Unknown);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_outcomes_in_order() {
        let r: Recorder<&str, u32> = Recorder::new();
        let a = r.invoke(0, "a");
        let b = r.invoke(1, "b");
        let c = r.invoke(2, "c");
        b.failed();
        a.ok(7);
        drop(c);
        let h = r.history();
        assert_eq!(h.ops.len(), 3);
        assert_eq!(h.ops[0].outcome, Outcome::Ok(7));
        assert_eq!(h.ops[1].outcome, Outcome::Failed);
        assert_eq!(h.ops[2].outcome, Outcome::Unknown);
        assert!(h.ops[0].ret.is_some_and(|t| t >= h.ops[0].call));
        assert_eq!(h.ops[2].ret, None);
        assert_eq!(h.counts(), (1, 1, 1));
    }
}
