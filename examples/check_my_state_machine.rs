//! Testing your own state machine under faults, with every history checked for
//! linearizability. The walk-through is docs/testing.md.
//!
//!     cargo run --example check_my_state_machine
//!     RAFTKIT_SEED=7 cargo run --example check_my_state_machine   # another seed

use std::io::{self, Read, Write};
use std::time::Duration;

use raftkit::testing::{Fault, Model, RunOptions, Schedule, Workload, run};
use raftkit::{Queryable, StateMachine};
use rand::Rng;
use rand::rngs::StdRng;

// ---- 1. The state machine under test: a counter ------------------------------------------------

#[derive(Default, Clone, Debug, PartialEq)]
struct Counter(u64);

impl StateMachine for Counter {
    type Command = u64; // add
    type Output = u64; // the new total
    type Snapshot = u64;

    fn apply(&mut self, add: u64) -> u64 {
        self.0 += add;
        self.0
    }
    fn snapshot(&self) -> u64 {
        self.0
    }
    fn write_snapshot(total: u64, out: &mut dyn Write) -> io::Result<()> {
        raftkit::write_serde(&total, out)
    }
    fn restore(&mut self, input: &mut dyn Read) -> io::Result<()> {
        self.0 = raftkit::read_serde(input)?;
        Ok(())
    }
}

/// Reads: the only question is "what is the total?".
impl Queryable for Counter {
    type Query = ();
    type Reply = u64;

    fn query(&self, _: ()) -> u64 {
        self.0
    }
}

// ---- 2. Its sequential specification -----------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct CounterModel(u64);

#[derive(Clone, Debug)]
enum Op {
    Add(u64),
    Read,
}

impl Model for CounterModel {
    type Input = Op;
    type Output = u64; // the total after an add, or the total read

    fn init() -> Self {
        CounterModel(0)
    }

    fn step(&self, op: &Op, output: Option<&u64>) -> Option<Self> {
        let next = match op {
            Op::Add(n) => self.0 + n,
            Op::Read => self.0,
        };
        // `None`: the answer is unknown (a timed-out add), so any answer fits.
        output
            .is_none_or(|o| *o == next)
            .then_some(CounterModel(next))
    }

    fn is_read(op: &Op) -> bool {
        matches!(op, Op::Read)
    }
}

// ---- 3. How clients exercise it --------------------------------------------------------------

struct CounterWorkload;

impl Workload for CounterWorkload {
    type Sm = Counter;
    type Model = CounterModel;

    fn state_machine(&self) -> Counter {
        Counter::default()
    }
    fn generate(&self, rng: &mut StdRng) -> Op {
        if rng.random_bool(0.5) {
            Op::Read
        } else {
            Op::Add(rng.random_range(1..10))
        }
    }
    fn command(&self, op: &Op) -> Option<u64> {
        match op {
            Op::Add(n) => Some(*n),
            Op::Read => None,
        }
    }
    fn write_output(&self, _op: &Op, total: u64) -> u64 {
        total
    }
    fn query(&self, _op: &Op) {}
    fn read_output(&self, _op: &Op, total: u64) -> u64 {
        total
    }
}

// ---- 4. Run it under faults ----------------------------------------------------------------------

#[tokio::main]
async fn main() -> raftkit::Result<()> {
    let opts = RunOptions::default().with_schedule(Schedule::of(
        [
            Fault::IsolateLeader,
            Fault::CrashRestart,
            Fault::PowerLossMinority,
            Fault::PartitionRandom,
        ],
        Duration::from_millis(700),
    ));
    println!(
        "seed {} — 3 nodes, 4 clients, faults: {:?}",
        opts.seed,
        opts.schedule
            .steps
            .iter()
            .map(|s| &s.fault)
            .collect::<Vec<_>>()
    );
    let report = run(CounterWorkload, opts).await?;
    // e.g. "seed 7: 412 ok, 3 failed, 5 unknown; 4 faults; linearizable; replicas agree"
    println!("{report}");
    report.assert_ok();
    Ok(())
}
