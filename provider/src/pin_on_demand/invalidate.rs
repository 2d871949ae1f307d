//! The invalidation callback and the region's teardown: take chunks out of
//! the table, wait for the work requests that use them, unpin.

use std::mem::ManuallyDrop;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, TryLockError};
use std::time::Instant;

use odp::notifier::{IntervalNotifier, NotifierRange};

use super::ChunkPinner;
use super::region::{Chunk, Inner, PinOnDemandRegion, Slot};

impl<P: ChunkPinner> Inner<P> {
    /// The chunks `[first, last]` that `range` overlaps.
    fn chunks_in(&self, range: &NotifierRange) -> (usize, usize) {
        let g = &self.geometry;
        let first = range.start().max(g.start);
        let last = range.last().min(g.end - 1);
        (g.chunk_of(first), g.chunk_of(last))
    }

    /// The invalidate callback (`IntervalNotifierOps`): under the table
    /// lock, record the collision and retire every overlapping chunk (so
    /// new work faults a fresh registration of whatever is mapped next);
    /// then, without the lock, wait for each retired chunk's work requests
    /// and unpin it. Returns only when the chunks are unpinned.
    pub(super) fn invalidate(
        &self,
        sub: &IntervalNotifier,
        range: &NotifierRange,
        cur_seq: u64,
    ) -> bool {
        self.counters.invalidations.fetch_add(1, Relaxed);
        let (first, last) = self.chunks_in(range);
        if !range.is_blockable() {
            return self.invalidate_nonblocking(sub, first, last, cur_seq);
        }
        {
            let mut table = self.lock();
            sub.set_seq(cur_seq);
            for slot in &mut table[first..=last] {
                if let Slot::Pinned(chunk) = slot {
                    chunk.usage.retire();
                    let chunk = Arc::clone(chunk);
                    *slot = Slot::Retiring(chunk);
                }
            }
        }
        // Also the chunks another invalidation retired and is still
        // unpinning: this one must not return before they are unpinned.
        let deadline = Self::wait_deadline();
        for idx in first..=last {
            self.retire_slot(idx, deadline);
        }
        true
    }

    /// Waits for and unpins the chunk retiring in slot `idx`, if any, then
    /// empties the slot.
    fn retire_slot(&self, idx: usize, deadline: Instant) {
        let chunk = match &self.lock()[idx] {
            Slot::Retiring(chunk) => Arc::clone(chunk),
            _ => return,
        };
        let idle = self.wait_idle(&chunk, deadline);
        self.unpin(&chunk, idle);
        let mut table = self.lock();
        if let Slot::Retiring(c) = &table[idx]
            && Arc::ptr_eq(c, &chunk)
        {
            table[idx] = Slot::Empty;
        }
    }

    /// A non-blockable invalidation: refused (nothing changed) if the table
    /// lock is contended or a chunk of the range is in use or still being
    /// unpinned; otherwise the chunks are unpinned at once.
    fn invalidate_nonblocking(
        &self,
        sub: &IntervalNotifier,
        first: usize,
        last: usize,
        cur_seq: u64,
    ) -> bool {
        let mut table = match self.table.try_lock() {
            Ok(table) => table,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return self.refuse(),
        };
        let busy = table[first..=last].iter().any(|slot| match slot {
            Slot::Empty => false,
            Slot::Pinned(chunk) => chunk.usage.in_flight() > 0,
            Slot::Retiring(_) => true,
        });
        if busy {
            return self.refuse();
        }
        sub.set_seq(cur_seq);
        for slot in &mut table[first..=last] {
            if let Slot::Pinned(chunk) = std::mem::replace(slot, Slot::Empty) {
                chunk.usage.retire();
                // Idle, and out of the table, so it stays idle.
                self.unpin(&chunk, true);
            }
        }
        true
    }

    fn refuse(&self) -> bool {
        self.counters.nonblocking_refusals.fetch_add(1, Relaxed);
        false
    }
}

impl<P: ChunkPinner> Drop for PinOnDemandRegion<P> {
    fn drop(&mut self) {
        // SAFETY: `sub` is taken exactly once, here, and not used after.
        let sub = unsafe { ManuallyDrop::take(&mut self.sub) };
        // Removal waits for a running callback: none runs after this.
        sub.remove();
        let inner = &*self.inner;
        let chunks: Vec<Arc<Chunk<P::Pin>>> = inner
            .lock()
            .iter_mut()
            .filter_map(|slot| match std::mem::replace(slot, Slot::Empty) {
                Slot::Pinned(chunk) | Slot::Retiring(chunk) => {
                    chunk.usage.retire();
                    Some(chunk)
                }
                Slot::Empty => None,
            })
            .collect();
        let deadline = Inner::<P>::wait_deadline();
        for chunk in chunks {
            let idle = inner.wait_idle(&chunk, deadline);
            inner.unpin(&chunk, idle);
        }
    }
}
