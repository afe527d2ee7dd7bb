//! A key-value state machine and its workload, shared by the cluster-level tests.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io;
use std::io::Read;
use std::io::Write;

use raftkit::StateMachine;
use raftkit::testing::KvMap;
use raftkit::testing::KvOp;
use raftkit::testing::KvResult;
use raftkit::testing::Workload;
use rand::Rng;
use rand::rngs::StdRng;
use serde::Deserialize;
use serde::Serialize;

/// A replicated map of strings.
#[derive(Default, Clone, Debug, PartialEq, Eq)]
pub struct Kv(pub BTreeMap<String, String>);

/// A change to a [`Kv`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum KvCommand {
    Put(String, String),
    Append(String, String),
    Delete(String),
}

impl StateMachine for Kv {
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
    fn write_snapshot(s: Self::Snapshot, out: &mut dyn Write) -> io::Result<()> {
        raftkit::write_serde(&s, out)
    }
    fn restore(&mut self, input: &mut dyn Read) -> io::Result<()> {
        self.0 = raftkit::read_serde(input)?;
        Ok(())
    }
}

/// Random gets, puts, appends and deletes over a few keys; appended values are unique, so a
/// lost or duplicated append shows.
#[derive(Clone)]
pub struct KvWorkload {
    /// How many distinct keys.
    pub keys: usize,
    /// Percentage of operations that are reads.
    pub read_percent: u32,
}

impl Default for KvWorkload {
    fn default() -> Self {
        KvWorkload {
            keys: 4,
            read_percent: 40,
        }
    }
}

impl Workload for KvWorkload {
    type Sm = Kv;
    type Model = KvMap;

    fn state_machine(&self) -> Kv {
        Kv::default()
    }

    fn generate(&self, rng: &mut StdRng) -> KvOp {
        let key = format!("k{}", rng.random_range(0..self.keys));
        if rng.random_range(0..100) < self.read_percent {
            return KvOp::Get(key);
        }
        let token = format!("{:04x},", rng.random::<u16>());
        match rng.random_range(0..10) {
            0..=5 => KvOp::Append(key, token),
            6..=8 => KvOp::Put(key, token),
            _ => KvOp::Delete(key),
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

    fn read(&self, input: &KvOp, sm: &Kv) -> KvResult {
        KvResult::Value(sm.0.get(input.key()).cloned())
    }
}
