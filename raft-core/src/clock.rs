//! [`Clock`]: where the leader reads the time it stamps on writes and reads.
//!
//! The leader stamps every user write with its clock when it proposes it, and every
//! linearizable read with its clock when it confirms its leadership for the read; the state
//! machine sees those times through [`ApplyContext`](crate::ApplyContext) and
//! [`ReadContext`](crate::ReadContext). Only the leader's clock is ever read for ordered
//! operations, so a follower whose clock is off changes nothing. Time never goes backwards in
//! the log: an entry applies at the larger of its stamp and the time of the entry before it, and
//! a read at no less than the time of the state it reads.
//!
//! The one assumption left is the one etcd's leases make: clocks of successive leaders do not
//! drift apart by more than the precision an application needs of its expiry times. A new
//! leader whose clock is behind its predecessor's stamps the time of the last applied entry
//! until its own clock catches up, so no write is ordered before one already applied; a read
//! served just after the change may see an earlier time than one served by the old leader just
//! before it, by at most the skew between the two clocks.

use std::fmt;
use std::time::SystemTime;
use std::time::UNIX_EPOCH;

/// A source of wall-clock time in milliseconds since the Unix epoch.
///
/// The default, [`SystemClock`], reads the system clock. Set another with
/// [`Config::with_clock`](crate::Config::with_clock) — to test behaviour under clock skew, or
/// to read a disciplined time source (`testing::ManualClock`, feature `testing`, is one a test
/// sets by hand).
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The time now, in milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The system's wall clock ([`SystemTime::now`]); a clock set before 1970 reads as 0.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}
