//! Work requests in flight on a chunk: the per-chunk count, and the token a
//! work request holds until its completion.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use smallvec::SmallVec;

/// How a chunk is used by work requests in flight.
///
/// The count only grows under the region's table lock while the chunk is
/// in the table; once an invalidation has taken it out (`retired`), it
/// only shrinks, so waiting for zero terminates once the requests finish.
#[derive(Debug, Default)]
pub(super) struct ChunkUse {
    in_flight: AtomicUsize,
    retired: AtomicBool,
    lock: Mutex<()>,
    idle: Condvar,
}

impl ChunkUse {
    /// One more request uses the chunk. Called under the table lock, with
    /// the chunk in the table.
    pub(super) fn acquire(self: &Arc<Self>) -> Arc<Self> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        Arc::clone(self)
    }

    /// Marks the chunk as taken out of the table: releases now wake its
    /// waiter. Called under the table lock.
    pub(super) fn retire(&self) {
        self.retired.store(true, Ordering::SeqCst);
    }

    pub(super) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    fn release(&self) {
        // SeqCst on both sides: either this release sees `retired` and
        // wakes the waiter, or the waiter, which stores `retired` before it
        // reads the count, sees this decrement.
        if self.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 && self.retired.load(Ordering::SeqCst)
        {
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
}

impl Drop for InFlight {
    fn drop(&mut self) {
        for chunk in self.chunks.drain(..) {
            chunk.release();
        }
    }
}
