//! Panics anywhere in the process, a node's own tasks included.

use std::sync::Mutex;
use std::sync::Once;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;

/// Locations kept, at most; later panics are only counted.
const KEPT: usize = 1024;

static COUNT: AtomicUsize = AtomicUsize::new(0);
static LOCATIONS: Mutex<Vec<String>> = Mutex::new(Vec::new());
static HOOK: Once = Once::new();

/// Watches for panics on every thread of the process from the moment it starts.
///
/// A panic in a task a node spawned (openraft's core, the state machine worker, a replication
/// stream, a state machine's own `apply`) never reaches the test: the runtime catches it, and
/// the node may go on answering some requests. A test that only checks replies and histories
/// passes over it; one that holds a `PanicWatch` can assert there was none.
///
/// The first watch installs a process-wide panic hook that records each panic's location and
/// then reports it as the hook before it did. Watches count every thread, so a test that expects
/// panics should not run beside watched ones in the same test binary.
///
/// ```
/// # use raft_core::testing::PanicWatch;
/// let watch = PanicWatch::start();
/// // … run a cluster …
/// assert!(watch.panics().is_empty(), "{:?}", watch.panics());
/// ```
#[derive(Debug)]
pub struct PanicWatch {
    from: usize,
}

impl PanicWatch {
    /// Starts watching.
    pub fn start() -> PanicWatch {
        HOOK.call_once(|| {
            let report = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                let at = info
                    .location()
                    .map_or_else(|| "an unknown location".to_owned(), |l| l.to_string());
                let mut kept = LOCATIONS.lock().unwrap_or_else(|e| e.into_inner());
                if kept.len() < KEPT {
                    kept.push(at);
                }
                COUNT.fetch_add(1, Ordering::SeqCst);
                drop(kept);
                report(info);
            }));
        });
        PanicWatch {
            from: COUNT.load(Ordering::SeqCst),
        }
    }

    /// Where each panic since [`PanicWatch::start`] happened (`file:line:column`), oldest first.
    /// Past the process's first 1,024 panics, the rest are counted as one entry saying how many.
    pub fn panics(&self) -> Vec<String> {
        let kept = LOCATIONS.lock().unwrap_or_else(|e| e.into_inner());
        let count = COUNT.load(Ordering::SeqCst);
        let mut out: Vec<String> = kept.iter().skip(self.from).cloned().collect();
        let unkept = count.saturating_sub(kept.len().max(self.from));
        if unkept > 0 {
            out.push(format!("{unkept} more, not kept"));
        }
        out
    }
}

/// Runs `stop` to completion from a `Drop` impl before a multi-thread Tokio runtime tears down
/// the nodes it stops, blocking the dropping thread meanwhile; returns whether it ran. On any
/// other thread (a current-thread runtime, or none) it returns `false` at once, `stop` not run:
/// such a runtime never polls one task while it drops another.
///
/// Why: a multi-thread runtime that ends while a node runs drops the node's tasks while others
/// still run. If it drops the task that was joining openraft's core, a task still waiting for
/// that core panics ("RaftCore should have already quit", in openraft's `raft_inner.rs`), and a
/// [`PanicWatch`] of any test in the process sees it. [`Cluster`](super::Cluster) stops its
/// nodes with this when dropped; harnesses of other transports can do the same.
pub fn stop_before_teardown<F: std::future::Future>(stop: F) -> bool {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return false;
    };
    if rt.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
        return false;
    }
    tokio::task::block_in_place(|| rt.block_on(stop));
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_in_a_spawned_task_is_seen_with_its_location() {
        let watch = PanicWatch::start();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let joined = rt.block_on(async { tokio::spawn(async { panic!("in a task") }).await });
        assert!(joined.is_err_and(|e| e.is_panic()));
        let seen = watch.panics();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert!(seen[0].contains("testing/panics.rs"), "{seen:?}");
        assert!(PanicWatch::start().panics().is_empty());
    }
}
