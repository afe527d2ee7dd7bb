//! A small replicated map of strings and its [`Workload`]: a ready-made state machine for tests
//! of the cluster, the transport or the harness itself, checked against the [`KvMap`] model.

use std::collections::BTreeMap;
use std::io;
use std::io::Read;
use std::io::Write;

use rand::Rng;
use rand::rngs::StdRng;
use serde::Deserialize;
use serde::Serialize;

use super::driver::Workload;
use super::model::KvMap;
use super::model::KvOp;
use super::model::KvResult;
use crate::Queryable;
use crate::StateMachine;

/// A replicated map of strings.
#[derive(Default, Clone, Debug, PartialEq, Eq)]
pub struct KvStore(pub BTreeMap<String, String>);

/// A change to a [`KvStore`]. `Append` is deliberately not idempotent, so a duplicate shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvCommand {
    /// Sets a key.
    Put(String, String),
    /// Appends to a key's value (an absent key counts as empty).
    Append(String, String),
    /// Removes a key.
    Delete(String),
}

/// A question to a [`KvStore`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum KvQuery {
    /// One key's value.
    Get(String),
    /// The whole map.
    All,
}

/// The answer to a [`KvQuery`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvReply {
    /// The key's value, if present.
    Value(Option<String>),
    /// The whole map.
    All(BTreeMap<String, String>),
}

impl StateMachine for KvStore {
    type Command = KvCommand;
    /// The key's value after the command.
    type Output = Option<String>;
    type Snapshot = BTreeMap<String, String>;

    fn apply(&mut self, cmd: KvCommand) -> Option<String> {
        match cmd {
            KvCommand::Put(k, v) => {
                self.0.insert(k, v.clone());
                Some(v)
            }
            KvCommand::Append(k, v) => {
                let e = self.0.entry(k).or_default();
                e.push_str(&v);
                Some(e.clone())
            }
            KvCommand::Delete(k) => {
                self.0.remove(&k);
                None
            }
        }
    }
    fn snapshot(&self) -> Self::Snapshot {
        self.0.clone()
    }
    fn allowed_in_space_alarm(cmd: &KvCommand) -> bool {
        matches!(cmd, KvCommand::Delete(_))
    }
    fn write_snapshot(s: Self::Snapshot, out: &mut dyn Write) -> io::Result<()> {
        crate::write_serde(&s, out)
    }
    fn restore(&mut self, input: &mut dyn Read) -> io::Result<()> {
        self.0 = crate::read_serde(input)?;
        Ok(())
    }
    fn check_snapshot(input: &mut dyn Read) -> io::Result<()> {
        crate::read_serde::<BTreeMap<String, String>>(input).map(|_| ())
    }
}

impl Queryable for KvStore {
    type Query = KvQuery;
    type Reply = KvReply;

    fn query(&self, q: KvQuery) -> KvReply {
        match q {
            KvQuery::Get(k) => KvReply::Value(self.0.get(&k).cloned()),
            KvQuery::All => KvReply::All(self.0.clone()),
        }
    }
}

/// Random gets, appends (60 % of writes), puts and deletes over a few keys; appended values are
/// unique, so a lost or duplicated append shows.
#[derive(Clone, Debug)]
pub struct KvWorkload {
    /// How many distinct keys.
    pub keys: usize,
    /// Percentage of operations that are reads.
    pub read_percent: u32,
    /// Whether one write in ten is a delete.
    pub deletes: bool,
}

impl Default for KvWorkload {
    fn default() -> Self {
        KvWorkload {
            keys: 4,
            read_percent: 40,
            deletes: true,
        }
    }
}

impl Workload for KvWorkload {
    type Sm = KvStore;
    type Model = KvMap;

    fn state_machine(&self) -> KvStore {
        KvStore::default()
    }

    fn generate(&self, rng: &mut StdRng) -> KvOp {
        let key = format!("k{}", rng.random_range(0..self.keys));
        if rng.random_range(0..100) < self.read_percent {
            return KvOp::Get(key);
        }
        let token = format!("{:04x},", rng.random::<u16>());
        match rng.random_range(0..10) {
            0..=5 => KvOp::Append(key, token),
            9 if self.deletes => KvOp::Delete(key),
            _ => KvOp::Put(key, token),
        }
    }

    fn command(&self, input: &KvOp) -> Option<KvCommand> {
        match input {
            KvOp::Get(_) => None,
            KvOp::Put(k, v) => Some(KvCommand::Put(k.clone(), v.clone())),
            KvOp::Append(k, v) => Some(KvCommand::Append(k.clone(), v.clone())),
            KvOp::Delete(k) => Some(KvCommand::Delete(k.clone())),
        }
    }

    fn write_output(&self, input: &KvOp, output: Option<String>) -> KvResult {
        match input {
            KvOp::Append(..) => KvResult::Value(output),
            _ => KvResult::Done,
        }
    }

    fn query(&self, input: &KvOp) -> KvQuery {
        KvQuery::Get(input.key().to_string())
    }

    fn read_output(&self, input: &KvOp, reply: KvReply) -> KvResult {
        match reply {
            KvReply::Value(v) => KvResult::Value(v),
            KvReply::All(all) => KvResult::Value(all.get(input.key()).cloned()),
        }
    }
}
