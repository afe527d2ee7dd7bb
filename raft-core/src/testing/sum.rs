//! [`Sum`]: the smallest useful state machine, for tests that need one but test something else.

use std::io;
use std::io::Read;
use std::io::Write;

use crate::state_machine::StateMachine;

/// A running total: each command (a `u64`) is added to it, and the output of a write is the
/// total after it. Snapshots hold the total.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sum(pub u64);

impl StateMachine for Sum {
    type Command = u64;
    type Output = u64;
    type Snapshot = u64;

    fn apply(&mut self, c: u64) -> u64 {
        self.0 = self.0.wrapping_add(c);
        self.0
    }

    fn snapshot(&self) -> u64 {
        self.0
    }

    fn write_snapshot(s: u64, out: &mut dyn Write) -> io::Result<()> {
        crate::write_serde(&s, out)
    }

    fn restore(&mut self, input: &mut dyn Read) -> io::Result<()> {
        self.0 = crate::read_serde(input)?;
        Ok(())
    }
}
