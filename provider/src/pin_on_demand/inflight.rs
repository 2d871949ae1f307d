//! Work requests in flight on a chunk: the per-chunk count, and the token a
//! work request holds until its completion.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use smallvec::SmallVec;

use super::sync::{AtomicUsize, Condvar, Mutex};

/// How a chunk is used by work requests in flight.
///
/// The count only grows under the region's table lock while the chunk is
/// in the table; once an invalidation has taken it out (retired it), it
/// only shrinks, so waiting for zero terminates once the requests finish.
#[derive(Debug)]
pub(super) struct ChunkUse {
    /// The count, and [`RETIRED`]. One atomic, so that a release and the
    /// retirement are ordered by the variable's own modification order:
    /// either the release sees the flag and wakes the waiter, or the
    /// waiter, which sets the flag before it reads the count, sees the
    /// release.
    state: AtomicUsize,
    lock: Mutex<()>,
    idle: Condvar,
}

/// The chunk is out of the table: a release that empties it wakes the
/// waiter.
const RETIRED: usize = 1 << (usize::BITS - 1);

impl ChunkUse {
    pub(super) fn new() -> Self {
        Self {
            state: AtomicUsize::new(0),
            lock: Mutex::new(()),
            idle: Condvar::new(),
        }
    }

    /// One more request uses the chunk. Called under the table lock, with
    /// the chunk in the table.
    pub(super) fn acquire(self: &Arc<Self>) -> Arc<Self> {
        self.state.fetch_add(1, Ordering::Relaxed);
        Arc::clone(self)
    }

    /// Marks the chunk as taken out of the table: releases now wake its
    /// waiter. Called under the table lock.
    pub(super) fn retire(&self) {
        self.state.fetch_or(RETIRED, Ordering::AcqRel);
    }

    /// Requests that use the chunk.
    pub(super) fn in_flight(&self) -> usize {
        self.state.load(Ordering::Acquire) & !RETIRED
    }

    fn release(&self) {
        if self.state.fetch_sub(1, Ordering::AcqRel) == RETIRED | 1 {
            let _guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
            self.idle.notify_all();
        }
    }

    /// Waits until no request uses the chunk, calling `drain` between
    /// short sleeps, until `deadline`. Returns whether the chunk is idle.
    pub(super) fn wait_idle(
        &self,
        deadline: Instant,
        interval: Duration,
        drain: &dyn Fn(),
    ) -> bool {
        loop {
            if self.in_flight() == 0 {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            drain();
            let guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
            // Checked under the lock that `release` notifies under: no
            // wakeup is lost between this check and the wait.
            if self.in_flight() == 0 {
                return true;
            }
            let timeout = interval.min(deadline - now);
            drop(self.idle.wait_timeout(guard, timeout));
        }
    }
}

/// References on the chunks a work request uses; dropping it (or
/// [`Self::complete`]) releases them and wakes an invalidation that waits
/// for those chunks.
///
/// A token may hold chunks of several regions (see [`Self::merge`]).
#[derive(Debug, Default)]
#[must_use = "dropping the token at once releases the chunks"]
pub(crate) struct InFlight {
    chunks: SmallVec<[Arc<ChunkUse>; 4]>,
}

impl InFlight {
    /// A token holding nothing.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(super) fn push(&mut self, chunk: Arc<ChunkUse>) {
        self.chunks.push(chunk);
    }

    /// Number of chunk references held.
    pub(crate) fn len(&self) -> usize {
        self.chunks.len()
    }

    /// Whether the token holds nothing (zero-length entries).
    pub(crate) fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Takes over the references of `other` (for a work request whose
    /// entries lie in several regions).
    pub(crate) fn merge(&mut self, mut other: InFlight) {
        self.chunks.extend(other.chunks.drain(..));
    }

    /// The work request completed: releases the chunks.
    pub(crate) fn complete(self) {
        drop(self);
    }

    /// A token holding one reference on a chunk of no region, and a probe
    /// of that chunk's in-flight count (for the tests of code that keeps
    /// tokens, outside this module).
    #[cfg(test)]
    pub(crate) fn for_test() -> (InFlight, impl Fn() -> usize) {
        let chunk = Arc::new(ChunkUse::new());
        let mut token = InFlight::new();
        token.push(chunk.acquire());
        (token, move || chunk.in_flight())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        for chunk in self.chunks.drain(..) {
            chunk.release();
        }
    }
}
