//! The linearizability checker: Wing & Gong's search with Lowe's memoisation.
//!
//! A history is linearizable if its operations can be put in one order that (1) respects real
//! time — an operation that returned before another was invoked comes first — and (2) gives every
//! operation the answer the [`Model`] gives in that order. The checker searches for such an
//! order:
//!
//! * operations are split by [`Model::partition`] and each part is checked alone, on as many
//!   threads as the machine has cores; the first violation (or the budget running out) stops
//!   every thread;
//! * failed operations are dropped (they did not happen), unknown reads are dropped (they changed
//!   nothing), unknown writes may take effect at any point after their invocation — or never,
//!   which is the same as last;
//! * the search remembers every (set of linearized operations, model state) it has explored and
//!   never explores one twice, which makes typical histories fast;
//! * a time budget bounds the search: past it the answer is [`CheckResult::Unknown`], not a guess.
//!
//! When no order exists, the [`Violation`] names the deepest point the search reached: the state
//! there and the operations none of which could come next.

use std::collections::BTreeMap;
use std::collections::HashSet;
use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use super::history::History;
use super::history::Operation;
use super::history::Outcome;
use super::model::Model;

/// The verdict on a history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckResult<I, O> {
    /// An order exists for every partition.
    Linearizable,
    /// Some partition has no valid order.
    Violation(Box<Violation<I, O>>),
    /// The time budget ran out first.
    Unknown {
        /// Why no verdict was reached.
        reason: String,
    },
}

impl<I, O> CheckResult<I, O> {
    /// Whether the history was found linearizable.
    pub fn is_linearizable(&self) -> bool {
        matches!(self, CheckResult::Linearizable)
    }

    /// Whether a violation was found.
    pub fn is_violation(&self) -> bool {
        matches!(self, CheckResult::Violation(_))
    }
}

/// Where the search for a valid order got stuck.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation<I, O> {
    /// The partition without a valid order.
    pub partition: u64,
    /// The longest prefix the search could order (operation ids, in order).
    pub linearized: Vec<usize>,
    /// The model state after that prefix.
    pub state: String,
    /// The operations that were candidates to come next; each was impossible there.
    pub candidates: Vec<Operation<I, O>>,
}

fn fmt_op<I: fmt::Debug, O: fmt::Debug>(
    f: &mut fmt::Formatter<'_>,
    op: &Operation<I, O>,
) -> fmt::Result {
    let ms = |t: u64| t as f64 / 1e6;
    write!(f, "  #{} client {} {:?} -> ", op.id, op.client, op.input)?;
    match &op.outcome {
        Outcome::Ok(o) => write!(f, "{o:?}")?,
        Outcome::Failed => write!(f, "failed")?,
        Outcome::Unknown => write!(f, "unknown")?,
    }
    match op.ret {
        Some(r) => writeln!(f, "   [{:.3} ms .. {:.3} ms]", ms(op.call), ms(r)),
        None => writeln!(f, "   [{:.3} ms .. ?]", ms(op.call)),
    }
}

impl<I: fmt::Debug, O: fmt::Debug> fmt::Display for Violation<I, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "not linearizable (partition {:#x}): after ordering {} operation(s) the state is {}",
            self.partition,
            self.linearized.len(),
            self.state
        )?;
        let tail = &self.linearized[self.linearized.len().saturating_sub(5)..];
        writeln!(f, "last ordered: {tail:?}")?;
        writeln!(f, "none of these can come next:")?;
        for op in &self.candidates {
            fmt_op(f, op)?;
        }
        Ok(())
    }
}

const NIL: usize = usize::MAX;

type OpOf<M> = Operation<<M as Model>::Input, <M as Model>::Output>;

/// The entry list of Wing & Gong's algorithm: calls and returns in time order, doubly linked
/// so that an operation's pair can be lifted out and put back.
struct Entries {
    next: Vec<usize>,
    prev: Vec<usize>,
    /// For entry `e`: the operation index (into the partition's ops).
    op: Vec<usize>,
    /// For a call entry: its return entry; for a return entry: `NIL`.
    ret_of: Vec<usize>,
}

impl Entries {
    /// Entry 0 is the head sentinel.
    fn new(times: &[(u64, u64)]) -> Entries {
        // (time, is_return, op): calls sort before returns at equal times (concurrent).
        let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(times.len() * 2);
        for (i, (call, ret)) in times.iter().enumerate() {
            events.push((*call, false, i));
            events.push((*ret, true, i));
        }
        events.sort();
        let n = events.len() + 1;
        let mut e = Entries {
            next: vec![NIL; n],
            prev: vec![NIL; n],
            op: vec![NIL; n],
            ret_of: vec![NIL; n],
        };
        let mut call_entry = vec![NIL; times.len()];
        for (k, (_, is_ret, op)) in events.iter().enumerate() {
            let idx = k + 1;
            e.op[idx] = *op;
            e.prev[idx] = k;
            e.next[k] = idx;
            if *is_ret {
                e.ret_of[call_entry[*op]] = idx;
            } else {
                call_entry[*op] = idx;
            }
        }
        e
    }

    fn is_call(&self, e: usize) -> bool {
        self.ret_of[e] != NIL
    }

    fn unlink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = n;
        if n != NIL {
            self.prev[n] = p;
        }
    }

    fn relink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = e;
        if n != NIL {
            self.prev[n] = e;
        }
    }

    /// Takes a call entry and its return out of the list.
    fn lift(&mut self, call: usize) {
        self.unlink(call);
        self.unlink(self.ret_of[call]);
    }

    /// Puts them back (in reverse order of removal).
    fn unlift(&mut self, call: usize) {
        self.relink(self.ret_of[call]);
        self.relink(call);
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Bits {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

enum Partial {
    Ok,
    Violation {
        linearized: Vec<usize>,
        state: String,
        candidates: Vec<usize>,
    },
    OutOfTime,
    /// Another partition already decided the verdict.
    Cancelled,
}

/// Checks one partition's operations (already filtered: ok ops, and unknown non-reads with
/// return time `u64::MAX`).
fn check_partition<M: Model>(
    ops: &[&Operation<M::Input, M::Output>],
    deadline: Instant,
    cancelled: &AtomicBool,
) -> Partial {
    let times: Vec<(u64, u64)> = ops
        .iter()
        .map(|o| (o.call, o.ret.unwrap_or(u64::MAX)))
        .collect();
    let mut list = Entries::new(&times);
    let mut state = M::init();
    let mut linearized = Bits::new(ops.len());
    let mut seen: HashSet<(Bits, M)> = HashSet::new();
    let mut stack: Vec<(usize, M)> = Vec::new();
    let mut entry = list.next[0];
    let mut best: Option<(Vec<usize>, String, Vec<usize>)> = None;
    let mut steps: u64 = 0;

    loop {
        if list.next[0] == NIL {
            return Partial::Ok;
        }
        steps += 1;
        if steps.is_multiple_of(4096) {
            if cancelled.load(Ordering::Relaxed) {
                return Partial::Cancelled;
            }
            if Instant::now() >= deadline {
                return Partial::OutOfTime;
            }
        }
        if entry != NIL && list.is_call(entry) {
            let i = list.op[entry];
            let op = ops[i];
            let output = match &op.outcome {
                Outcome::Ok(o) => Some(o),
                _ => None,
            };
            if let Some(next_state) = state.step(&op.input, output) {
                let mut next_bits = linearized.clone();
                next_bits.set(i);
                if seen.insert((next_bits.clone(), next_state.clone())) {
                    stack.push((entry, state));
                    state = next_state;
                    linearized = next_bits;
                    list.lift(entry);
                    entry = list.next[0];
                    continue;
                }
            }
            entry = list.next[entry];
        } else {
            // A return (or the end) was reached with its operation still unordered: every
            // candidate before it failed from this state. Remember the deepest such point.
            if best.as_ref().is_none_or(|(l, _, _)| stack.len() > l.len()) {
                let mut candidates = Vec::new();
                let mut e = list.next[0];
                while e != NIL && e != entry {
                    if list.is_call(e) {
                        candidates.push(list.op[e]);
                    }
                    e = list.next[e];
                }
                if e != NIL && !candidates.contains(&list.op[e]) {
                    candidates.push(list.op[e]);
                }
                let prefix = stack.iter().map(|(c, _)| list.op[*c]).collect();
                best = Some((prefix, format!("{state:?}"), candidates));
            }
            let Some((call, prev_state)) = stack.pop() else {
                let (linearized, state, candidates) = best.unwrap_or_default();
                return Partial::Violation {
                    linearized,
                    state,
                    candidates,
                };
            };
            state = prev_state;
            linearized.clear(list.op[call]);
            list.unlift(call);
            entry = list.next[call];
        }
    }
}

/// Checks `history` against model `M` within `budget`.
pub fn check<M: Model>(
    history: &History<M::Input, M::Output>,
    budget: Duration,
) -> CheckResult<M::Input, M::Output> {
    let deadline = Instant::now() + budget;
    let mut partitions: BTreeMap<u64, Vec<&OpOf<M>>> = BTreeMap::new();
    for op in &history.ops {
        let keep = match op.outcome {
            Outcome::Ok(_) => true,
            Outcome::Failed => false,
            Outcome::Unknown => !M::is_read(&op.input),
        };
        if keep {
            partitions
                .entry(M::partition(&op.input))
                .or_default()
                .push(op);
        }
    }
    // Largest partitions first, so one big partition does not start last.
    let mut parts: Vec<(u64, Vec<&OpOf<M>>)> = partitions.into_iter().collect();
    parts.sort_by_key(|(key, ops)| (std::cmp::Reverse(ops.len()), *key));
    let next = AtomicUsize::new(0);
    let cancelled = AtomicBool::new(false);
    let verdict: Mutex<Option<CheckResult<M::Input, M::Output>>> = Mutex::new(None);
    let work = || {
        while let Some((key, ops)) = parts.get(next.fetch_add(1, Ordering::Relaxed)) {
            let found = match check_partition::<M>(ops, deadline, &cancelled) {
                Partial::Ok | Partial::Cancelled => continue,
                Partial::OutOfTime => CheckResult::Unknown {
                    reason: format!(
                        "the {budget:?} budget ran out while checking partition {key:#x} ({} operations)",
                        ops.len()
                    ),
                },
                Partial::Violation {
                    linearized,
                    state,
                    candidates,
                } => CheckResult::Violation(Box::new(Violation {
                    partition: *key,
                    linearized: linearized.iter().map(|i| ops[*i].id).collect(),
                    state,
                    candidates: candidates.iter().map(|i| ops[*i].clone()).collect(),
                })),
            };
            cancelled.store(true, Ordering::Relaxed);
            let mut v = crate::sync::lock(&verdict);
            // A violation outranks running out of time elsewhere.
            if v.is_none()
                || (found.is_violation() && !v.as_ref().is_some_and(|v| v.is_violation()))
            {
                *v = Some(found);
            }
            return;
        }
    };
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(parts.len());
    if threads <= 1 {
        work();
    } else {
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(work);
            }
        });
    }
    verdict
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .unwrap_or(CheckResult::Linearizable)
}

/// A naive exhaustive check, for cross-checking [`check`] on small histories (a dozen
/// operations at most): tries every real-time-respecting order.
pub fn check_brute_force<M: Model>(history: &History<M::Input, M::Output>) -> bool {
    let ops: Vec<&Operation<M::Input, M::Output>> = history
        .ops
        .iter()
        .filter(|o| !matches!(o.outcome, Outcome::Failed))
        .collect();
    fn search<M: Model>(
        ops: &[&Operation<M::Input, M::Output>],
        done: &mut Vec<bool>,
        state: &M,
    ) -> bool {
        // Finished once every known operation is placed; unknown ones may never have happened.
        if ops
            .iter()
            .zip(done.iter())
            .all(|(o, d)| *d || matches!(o.outcome, Outcome::Unknown))
        {
            return true;
        }
        for i in 0..ops.len() {
            if done[i] {
                continue;
            }
            // `i` may go next only if no pending operation returned before `i` was invoked.
            let blocked = ops
                .iter()
                .enumerate()
                .any(|(j, o)| !done[j] && j != i && o.ret.is_some_and(|r| r < ops[i].call));
            if blocked {
                continue;
            }
            let output = match &ops[i].outcome {
                Outcome::Ok(o) => Some(o),
                _ => None,
            };
            if let Some(next) = state.step(&ops[i].input, output) {
                done[i] = true;
                if search(ops, done, &next) {
                    return true;
                }
                done[i] = false;
            }
        }
        false
    }
    let mut done = vec![false; ops.len()];
    search(&ops, &mut done, &M::init())
}
