//! Sequential specifications that histories are checked against.
//!
//! A [`Model`] says what a single, correct copy of the state would answer. The checker looks
//! for an order of the operations — consistent with real time — in which every answer matches
//! the model; if there is none, the system was not linearizable.
//!
//! Two models ship: [`Register`] (read, write, compare-and-set of one value) and [`KvMap`]
//! (get, put, append, delete on string keys, checked key by key).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::hash::Hash;

/// A sequential specification of a state machine, for the linearizability checker.
pub trait Model: Clone + Eq + Hash + Debug + Send + 'static {
    /// An operation as clients issue it.
    type Input: Clone + Debug + Send + Sync + 'static;
    /// What the operation returned.
    type Output: Clone + Debug + PartialEq + Send + Sync + 'static;

    /// The state before any operation.
    fn init() -> Self;

    /// Applies `input` to this state. `output` is what the system answered, or `None` when
    /// the answer is unknown (then any answer is acceptable). Returns the next state, or `None`
    /// if the answer is impossible from this state.
    fn step(&self, input: &Self::Input, output: Option<&Self::Output>) -> Option<Self>;

    /// Operations in different partitions never affect each other and are checked separately
    /// (for example, one partition per key). Default: everything in one partition.
    fn partition(_input: &Self::Input) -> u64 {
        0
    }

    /// Whether the operation leaves the state unchanged (an unknown read can then be ignored).
    fn is_read(_input: &Self::Input) -> bool {
        false
    }
}

/// A single register of `u64` values, initially empty.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Register(pub Option<u64>);

/// An operation on a [`Register`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RegisterOp {
    /// Read the value.
    Read,
    /// Set the value.
    Write(u64),
    /// Set the value to `to` if it is `from`.
    Cas {
        /// The expected value.
        from: u64,
        /// The new value.
        to: u64,
    },
}

/// What a [`RegisterOp`] returned.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RegisterResult {
    /// The value read.
    Value(Option<u64>),
    /// The write was done.
    Written,
    /// Whether the compare-and-set succeeded.
    Swapped(bool),
}

impl Model for Register {
    type Input = RegisterOp;
    type Output = RegisterResult;

    fn init() -> Self {
        Register(None)
    }

    fn step(&self, input: &RegisterOp, output: Option<&RegisterResult>) -> Option<Self> {
        match (input, output) {
            (RegisterOp::Read, None) => Some(self.clone()),
            (RegisterOp::Read, Some(RegisterResult::Value(v))) => {
                (*v == self.0).then(|| self.clone())
            }
            (RegisterOp::Write(v), None | Some(RegisterResult::Written)) => {
                Some(Register(Some(*v)))
            }
            (RegisterOp::Cas { from, to }, out) => {
                let swapped = self.0 == Some(*from);
                match out {
                    None => Some(if swapped {
                        Register(Some(*to))
                    } else {
                        self.clone()
                    }),
                    Some(RegisterResult::Swapped(s)) if *s == swapped => Some(if swapped {
                        Register(Some(*to))
                    } else {
                        self.clone()
                    }),
                    Some(_) => None,
                }
            }
            _ => None,
        }
    }

    fn is_read(input: &RegisterOp) -> bool {
        matches!(input, RegisterOp::Read)
    }
}

/// A map from string keys to string values, checked one key at a time.
///
/// The state of a partition holds only the keys of that partition.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct KvMap(pub BTreeMap<String, String>);

/// An operation on a [`KvMap`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KvOp {
    /// Read a key.
    Get(String),
    /// Set a key.
    Put(String, String),
    /// Append to a key's value (an absent key counts as empty).
    Append(String, String),
    /// Remove a key.
    Delete(String),
}

impl KvOp {
    /// The key the operation touches.
    pub fn key(&self) -> &str {
        match self {
            KvOp::Get(k) | KvOp::Put(k, _) | KvOp::Append(k, _) | KvOp::Delete(k) => k,
        }
    }
}

/// What a [`KvOp`] returned.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KvResult {
    /// The value read, or the value after an append.
    Value(Option<String>),
    /// A put or delete was done.
    Done,
}

/// FNV-1a: a stable hash, so partitions do not depend on the process.
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Model for KvMap {
    type Input = KvOp;
    type Output = KvResult;

    fn init() -> Self {
        KvMap::default()
    }

    fn step(&self, input: &KvOp, output: Option<&KvResult>) -> Option<Self> {
        let current = self.0.get(input.key());
        match input {
            KvOp::Get(_) => match output {
                None => Some(self.clone()),
                Some(KvResult::Value(v)) => (v.as_ref() == current).then(|| self.clone()),
                Some(KvResult::Done) => None,
            },
            KvOp::Put(k, v) => match output {
                None | Some(KvResult::Done) => {
                    let mut next = self.clone();
                    next.0.insert(k.clone(), v.clone());
                    Some(next)
                }
                Some(KvResult::Value(_)) => None,
            },
            KvOp::Append(k, v) => {
                let new = format!("{}{v}", current.map(String::as_str).unwrap_or(""));
                match output {
                    None => {}
                    Some(KvResult::Value(Some(got))) if *got == new => {}
                    Some(_) => return None,
                }
                let mut next = self.clone();
                next.0.insert(k.clone(), new);
                Some(next)
            }
            KvOp::Delete(k) => match output {
                None | Some(KvResult::Done) => {
                    let mut next = self.clone();
                    next.0.remove(k);
                    Some(next)
                }
                Some(KvResult::Value(_)) => None,
            },
        }
    }

    fn partition(input: &KvOp) -> u64 {
        fnv(input.key())
    }

    fn is_read(input: &KvOp) -> bool {
        matches!(input, KvOp::Get(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_steps() {
        let r = Register::init();
        assert_eq!(
            r.step(&RegisterOp::Read, Some(&RegisterResult::Value(None))),
            Some(Register(None))
        );
        assert_eq!(
            r.step(&RegisterOp::Read, Some(&RegisterResult::Value(Some(1)))),
            None
        );
        let w = r
            .step(&RegisterOp::Write(3), Some(&RegisterResult::Written))
            .unwrap();
        assert_eq!(w, Register(Some(3)));
        let cas = RegisterOp::Cas { from: 3, to: 4 };
        assert_eq!(
            w.step(&cas, Some(&RegisterResult::Swapped(true))),
            Some(Register(Some(4)))
        );
        assert_eq!(w.step(&cas, Some(&RegisterResult::Swapped(false))), None);
        assert_eq!(w.step(&cas, None), Some(Register(Some(4))));
    }

    #[test]
    fn kv_steps() {
        let m = KvMap::init();
        let m = m
            .step(
                &KvOp::Append("a".into(), "x".into()),
                Some(&KvResult::Value(Some("x".into()))),
            )
            .unwrap();
        assert!(
            m.step(
                &KvOp::Append("a".into(), "y".into()),
                Some(&KvResult::Value(Some("y".into())))
            )
            .is_none()
        );
        let m = m.step(&KvOp::Append("a".into(), "y".into()), None).unwrap();
        assert!(
            m.step(
                &KvOp::Get("a".into()),
                Some(&KvResult::Value(Some("xy".into())))
            )
            .is_some()
        );
        let m = m
            .step(&KvOp::Delete("a".into()), Some(&KvResult::Done))
            .unwrap();
        assert!(
            m.step(&KvOp::Get("a".into()), Some(&KvResult::Value(None)))
                .is_some()
        );
        assert_ne!(
            KvMap::partition(&KvOp::Get("a".into())),
            KvMap::partition(&KvOp::Get("b".into()))
        );
    }
}
