//! [`Backoff`]: the pacing of retries within a deadline, shared by every retrying caller.

use std::time::Duration;

use tokio::time::Instant;

/// Paces the retries of one operation: pauses start at 20 ms and double up to 500 ms, and no
/// pause runs past the operation's deadline.
///
/// ```
/// # async fn demo() {
/// use std::time::Duration;
/// use raft_grpc::Backoff;
///
/// let mut backoff = Backoff::new(Duration::from_secs(2));
/// let mut tries = 0;
/// loop {
///     tries += 1;
///     if tries == 3 {
///         break; // the attempt succeeded
///     }
///     if !backoff.pause().await {
///         break; // out of time: give up
///     }
/// }
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Backoff {
    deadline: Instant,
    next: Duration,
}

impl Backoff {
    /// The first pause, and the longest.
    const FIRST: Duration = Duration::from_millis(20);
    const MAX: Duration = Duration::from_millis(500);

    /// Retries for at most `budget` from now (a budget past what the clock can hold: for
    /// about thirty years).
    pub fn new(budget: Duration) -> Backoff {
        let now = Instant::now();
        Backoff::until(
            now.checked_add(budget)
                .unwrap_or_else(|| now + Duration::from_secs(30 * 365 * 86_400)),
        )
    }

    /// Retries until `deadline`.
    pub fn until(deadline: Instant) -> Backoff {
        Backoff {
            deadline,
            next: Backoff::FIRST,
        }
    }

    /// When the operation's time runs out.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The time left before the deadline (zero once it has passed).
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Waits before the next attempt and returns `true`, or returns `false` at once if the
    /// pause would end at or after the deadline (the caller gives up).
    pub async fn pause(&mut self) -> bool {
        if Instant::now() + self.next >= self.deadline {
            return false;
        }
        // Pacing retries through an outage is the point here, not synchronisation.
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(Backoff::MAX);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tokio's clock runs from the process's start: a budget past what it can hold (a
    /// `--timeout` of 1e19 s) is a long one, not an overflow.
    #[test]
    fn a_budget_past_the_clock_is_a_long_one_not_a_panic() {
        let b = Backoff::new(Duration::MAX);
        assert!(b.remaining() > Duration::from_secs(20 * 365 * 86_400));
    }

    #[tokio::test(start_paused = true)]
    async fn pauses_double_up_to_the_cap_and_stop_at_the_deadline() {
        let start = Instant::now();
        let mut b = Backoff::new(Duration::from_secs(3));
        let mut pauses = Vec::new();
        let mut last = start;
        while b.pause().await {
            pauses.push(Instant::now() - last);
            last = Instant::now();
        }
        let ms: Vec<u128> = pauses.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms[..6], [20, 40, 80, 160, 320, 500]);
        assert!(ms[6..].iter().all(|&p| p == 500), "{ms:?}");
        // It never sleeps past the deadline, and gives up less than one pause before it.
        let end = Instant::now() - start;
        assert!(end <= Duration::from_secs(3), "{end:?}");
        assert!(end > Duration::from_millis(2500), "{end:?}");
        assert_eq!(b.remaining(), Duration::from_secs(3) - end);
    }
}
