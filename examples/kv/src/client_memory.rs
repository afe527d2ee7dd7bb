//! The bound on what all of a node's client connections buffer together (`--maxmemory-clients`).
//!
//! Each connection is bounded on its own (a command by `--client-query-buffer-limit`, its unsent
//! replies by `--client-output-buffer-limit`), but ten thousand connections each part-way
//! through a 64 MiB command would still hold 640 GB. So a connection's buffers beyond its first
//! [`FREE_BYTES`] are covered by a share of one node-wide [`ClientMemory`]: a connection that
//! needs more than the rest of the node's clients leave is closed (after an error reply, when
//! it was sending a command). Connections with small commands and replies never take a share,
//! so they are served whatever the large ones hold, and their path touches no shared counter.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;

/// What a connection's buffers may hold without a share: a read's room and the reply buffer
/// a connection keeps between replies, with room to spare, and all that a client that has not
/// authenticated may send (ten arguments of 16 KiB), so strangers take nothing from the bound.
pub const FREE_BYTES: usize = 256 << 10;

/// Shares are taken in steps of this size, so that a large command arriving read by read
/// touches the node-wide counter once per step, not once per read.
const STEP: usize = 1 << 20;

/// The node-wide bound on the bytes connections' buffers hold beyond [`FREE_BYTES`] each.
#[derive(Debug)]
pub struct ClientMemory {
    /// Most bytes all shares together may hold (`usize::MAX`: no bound).
    limit: usize,
    /// Bytes the shares hold now.
    used: AtomicUsize,
}

impl ClientMemory {
    /// A bound of `limit` bytes; 0 means no bound (as Redis' `maxmemory-clients 0`).
    pub fn new(limit: usize) -> Arc<ClientMemory> {
        Arc::new(ClientMemory {
            limit: if limit == 0 { usize::MAX } else { limit },
            used: AtomicUsize::new(0),
        })
    }

    /// The bound, in bytes (0: none).
    pub fn limit(&self) -> usize {
        if self.limit == usize::MAX {
            0
        } else {
            self.limit
        }
    }

    /// Bytes all connections' shares hold now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Takes `bytes` more, if they fit under the bound.
    fn take(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&u| u <= self.limit)
            })
            .is_ok()
    }

    fn give_back(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// One connection's share of its node's [`ClientMemory`]; given back when dropped.
#[derive(Debug)]
pub struct Share {
    pool: Arc<ClientMemory>,
    /// Bytes this share holds.
    held: usize,
}

impl Share {
    /// An empty share of `pool`.
    pub fn new(pool: Arc<ClientMemory>) -> Share {
        Share { pool, held: 0 }
    }

    /// Makes the share cover buffers of `bytes` in all, growing or shrinking it (in steps of
    /// [`STEP`]). `false` if it would have to grow past what the node's bound leaves: the
    /// share is then unchanged, and the connection must not keep buffers that large.
    pub fn cover(&mut self, bytes: usize) -> bool {
        let need = bytes
            .saturating_sub(FREE_BYTES)
            .div_ceil(STEP)
            .saturating_mul(STEP);
        if need > self.held {
            if !self.pool.take(need - self.held) {
                return false;
            }
        } else if need < self.held {
            self.pool.give_back(self.held - need);
        }
        self.held = need;
        true
    }

    /// Grows the share, if needed, to cover buffers of `bytes`; never shrinks it (the
    /// connection may hold more than it measured here). `false` as for [`Share::cover`].
    pub fn reserve(&mut self, bytes: usize) -> bool {
        bytes <= FREE_BYTES.saturating_add(self.held) || self.cover(bytes)
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        self.pool.give_back(self.held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    #[test]
    fn small_buffers_take_nothing_from_the_node() {
        let pool = ClientMemory::new(4 * MIB);
        let mut s = Share::new(pool.clone());
        assert!(s.cover(FREE_BYTES));
        assert_eq!(pool.used(), 0);
    }

    #[test]
    fn shares_grow_and_shrink_in_steps_and_are_given_back() {
        let pool = ClientMemory::new(4 * MIB);
        let mut a = Share::new(pool.clone());
        assert!(a.cover(FREE_BYTES + 1));
        assert_eq!(pool.used(), MIB);
        assert!(a.cover(FREE_BYTES + 3 * MIB));
        assert_eq!(pool.used(), 3 * MIB);
        assert!(a.cover(0));
        assert_eq!(pool.used(), 0);
        assert!(a.cover(FREE_BYTES + 2 * MIB));
        drop(a);
        assert_eq!(pool.used(), 0);
    }

    #[test]
    fn a_share_past_the_bound_is_refused_and_others_go_on() {
        let pool = ClientMemory::new(4 * MIB);
        let mut a = Share::new(pool.clone());
        let mut b = Share::new(pool.clone());
        assert!(a.cover(FREE_BYTES + 3 * MIB));
        assert!(!b.cover(FREE_BYTES + 2 * MIB), "only 1 MiB is left");
        assert_eq!(pool.used(), 3 * MIB, "a refused share takes nothing");
        assert!(!b.reserve(FREE_BYTES + 2 * MIB));
        assert!(b.reserve(FREE_BYTES + MIB));
        assert_eq!(pool.used(), 4 * MIB);
        assert!(b.reserve(FREE_BYTES), "reserving never shrinks");
        assert_eq!(pool.used(), 4 * MIB);
        // Small buffers are still served with the bound reached.
        let mut c = Share::new(pool.clone());
        assert!(c.cover(FREE_BYTES));
        // Room comes back as shares shrink.
        assert!(a.cover(FREE_BYTES));
        assert!(b.cover(FREE_BYTES + 4 * MIB));
    }

    #[test]
    fn zero_means_no_bound() {
        let pool = ClientMemory::new(0);
        assert_eq!(pool.limit(), 0);
        let mut a = Share::new(pool.clone());
        assert!(a.cover(1 << 40));
        assert_eq!(pool.used(), 1 << 40);
    }
}
