//! A bound on how deeply the store's recursive types nest when they are decoded.
//!
//! [`Reply`](super::Reply) holds replies, and a transaction's [`Queued`](super::Queued) commands
//! hold writes and reads that can hold transactions and replies again. Decoding recurses once per
//! level, so a command or query a few kilobytes long, nested thousands deep, would overflow the
//! decoding thread's stack and abort the process — on every replica, for a command in the log,
//! and again at each restart. The server never builds more than a few levels (a transaction's
//! reply holding `COMMAND`'s); decoding refuses more than [`MAX_NESTING`], an ordinary decode
//! error that the node answers like any other.

use std::cell::Cell;

/// The most levels of [`Reply`](super::Reply) and [`Queued`](super::Queued) one decoded value
/// may nest.
pub(crate) const MAX_NESTING: u32 = 32;

thread_local! {
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// One level of nesting being decoded on this thread; leaving it (however decoding ends) gives
/// the level back.
pub(crate) struct Level(());

impl Level {
    /// Enters a level, or fails past [`MAX_NESTING`].
    pub(crate) fn enter<E: serde::de::Error>() -> Result<Level, E> {
        DEPTH.with(|depth| {
            let now = depth.get();
            if now >= MAX_NESTING {
                return Err(E::custom(format_args!(
                    "values nested more than {MAX_NESTING} deep"
                )));
            }
            depth.set(now + 1);
            Ok(Level(()))
        })
    }
}

impl Drop for Level {
    fn drop(&mut self) {
        DEPTH.with(|depth| depth.set(depth.get().saturating_sub(1)));
    }
}

/// Implements `Serialize` and `Deserialize` for a type whose derived implementations serde made
/// inherent (`#[serde(remote = "Self")]`): the same encoding, with decoding counted in
/// [`Level`]s.
macro_rules! bounded_nesting {
    ($ty:ty) => {
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                <$ty>::serialize(self, s)
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let _level = $crate::store::nesting::Level::enter::<D::Error>()?;
                <$ty>::deserialize(d)
            }
        }
    };
}
pub(crate) use bounded_nesting;
