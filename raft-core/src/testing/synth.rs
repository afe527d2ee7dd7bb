//! Synthetic key-value histories with a known verdict, for testing and benchmarking the checker.
//!
//! [`kv_history`] plays `clients` clients issuing gets, puts and appends over `keys` keys. Each
//! operation takes effect at a random point inside its interval, so the history is linearizable,
//! unless a [`Fault`] is injected: a read that returns a value already overwritten before it was
//! invoked, or an acknowledged append that later reads do not see.

use std::collections::BTreeMap;

use rand::Rng;
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::history::History;
use super::history::Operation;
use super::history::Outcome;
use super::model::KvOp;
use super::model::KvResult;

/// A bug to plant in a generated history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// None: the history is linearizable.
    None,
    /// One read returns the value its key had before a write that completed before the read
    /// was invoked.
    StaleRead,
    /// One acknowledged append is missing from every later read of its key.
    LostAppend,
}

struct Planned {
    op: Operation<KvOp, KvResult>,
    /// When the operation takes effect, inside `[call, ret]`.
    point: u64,
}

/// A history of `ops` operations over `keys` keys from `clients` clients, with `fault` planted.
/// The same arguments give the same history. If the fault has nowhere to go (a tiny history),
/// the history is returned without it; [`check`](super::check) tells which.
pub fn kv_history(
    seed: u64,
    ops: usize,
    keys: usize,
    clients: usize,
    fault: Fault,
) -> History<KvOp, KvResult> {
    let mut rng = StdRng::seed_from_u64(seed);
    let clients = clients.max(1);
    let keys = keys.max(1);
    let mut clock = vec![0u64; clients];
    let mut planned: Vec<Planned> = (0..ops)
        .map(|id| {
            let c = id % clients;
            let call = clock[c] + rng.random_range(0..50);
            let ret = call + rng.random_range(10..400);
            clock[c] = ret;
            let key = format!("k{}", rng.random_range(0..keys));
            let input = match rng.random_range(0..4) {
                0 | 1 => KvOp::Get(key),
                2 => KvOp::Put(key, format!("{id}")),
                _ => KvOp::Append(key, format!("{}", id % 10)),
            };
            Planned {
                point: rng.random_range(call..=ret),
                op: Operation {
                    id,
                    client: c,
                    input,
                    call,
                    ret: Some(ret),
                    outcome: Outcome::Ok(KvResult::Done),
                },
            }
        })
        .collect();
    planned.sort_by_key(|p| (p.point, p.op.id));

    // An append whose effect is lost: one followed, on its key, by a read invoked after the
    // append returned and before any other write of that key.
    let lost = match fault {
        Fault::LostAppend => lost_append_candidate(&planned, &mut rng),
        _ => None,
    };

    // Apply in effect order. Per key, each write's (call, return, value before it).
    let mut state: BTreeMap<String, String> = BTreeMap::new();
    let mut writes: BTreeMap<String, Vec<(u64, u64, Option<String>)>> = BTreeMap::new();
    let mut stale: Vec<(usize, Option<String>)> = Vec::new();
    for (pos, p) in planned.iter_mut().enumerate() {
        let key = p.op.input.key().to_string();
        let current = state.get(&key).cloned();
        let answer = match &p.op.input {
            KvOp::Get(_) => {
                if let Some(before) = overwritten(writes.get(&key), p.op.call)
                    && before != current
                {
                    stale.push((pos, before));
                }
                KvResult::Value(current.clone())
            }
            KvOp::Put(_, v) => {
                state.insert(key.clone(), v.clone());
                KvResult::Done
            }
            KvOp::Append(_, v) => {
                let next = format!("{}{v}", current.clone().unwrap_or_default());
                if lost != Some(pos) {
                    state.insert(key.clone(), next.clone());
                }
                KvResult::Value(Some(next))
            }
            KvOp::Delete(_) => {
                state.remove(&key);
                KvResult::Done
            }
        };
        if !matches!(p.op.input, KvOp::Get(_)) {
            writes
                .entry(key)
                .or_default()
                .push((p.op.call, p.op.ret.unwrap_or(u64::MAX), current));
        }
        p.op.outcome = Outcome::Ok(answer);
    }
    if fault == Fault::StaleRead && !stale.is_empty() {
        let (pos, value) = stale.swap_remove(rng.random_range(0..stale.len()));
        planned[pos].op.outcome = Outcome::Ok(KvResult::Value(value));
    }
    let mut ops: Vec<_> = planned.into_iter().map(|p| p.op).collect();
    ops.sort_by_key(|o| o.id);
    History::from_ops(ops)
}

/// A value no read invoked at `call` can return: the one before the latest write `w` that
/// returned before `call`, provided the write before `w` returned before `w` was invoked (so no
/// order puts it after `w`). Writes are `(call, return, value before)` in effect order.
fn overwritten(
    writes: Option<&Vec<(u64, u64, Option<String>)>>,
    call: u64,
) -> Option<Option<String>> {
    let writes = writes?;
    let j = writes.iter().rposition(|(_, ret, _)| *ret < call)?;
    let (w_call, _, before) = &writes[j];
    let settled = j == 0 || writes[j - 1].1 < *w_call;
    settled.then(|| before.clone())
}

/// Positions (in effect order) of appends that some later read must see.
fn lost_append_candidate(planned: &[Planned], rng: &mut StdRng) -> Option<usize> {
    let mut candidates = Vec::new();
    for (pos, p) in planned.iter().enumerate() {
        let KvOp::Append(key, _) = &p.op.input else {
            continue;
        };
        let ret = p.op.ret.unwrap_or(u64::MAX);
        let seen_later = planned[pos + 1..]
            .iter()
            .filter(|q| q.op.input.key() == key)
            .take_while(|q| matches!(q.op.input, KvOp::Get(_)))
            .any(|q| q.op.call > ret);
        if seen_later {
            candidates.push(pos);
        }
    }
    (!candidates.is_empty()).then(|| candidates[rng.random_range(0..candidates.len())])
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::testing::KvMap;
    use crate::testing::check;

    #[test]
    fn generated_histories_have_the_verdict_their_fault_implies() {
        for seed in 0..20 {
            let ok = kv_history(seed, 400, 8, 4, Fault::None);
            assert!(check::<KvMap>(&ok, Duration::from_secs(10)).is_linearizable());
            for fault in [Fault::StaleRead, Fault::LostAppend] {
                let bad = kv_history(seed, 400, 8, 4, fault);
                assert_ne!(bad, ok, "seed {seed}: {fault:?} planted");
                let verdict = check::<KvMap>(&bad, Duration::from_secs(10));
                assert!(
                    verdict.is_violation(),
                    "seed {seed}, {fault:?}: {verdict:?}"
                );
            }
        }
    }
}
