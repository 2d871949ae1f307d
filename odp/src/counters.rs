//! Per-umem counters of the work the ODP layer did.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Live counters; updated with relaxed atomics (each is independent).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    faults: AtomicU64,
    pages_faulted: AtomicU64,
    retries: AtomicU64,
    invalidations: AtomicU64,
    pages_invalidated: AtomicU64,
    dirty_pages_invalidated: AtomicU64,
    prefetches: AtomicU64,
    pages_prefetched: AtomicU64,
    stale_pages: AtomicU64,
}

/// A snapshot of a umem's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OdpCounters {
    /// Fault operations that committed (each may cover many pages).
    pub faults: u64,
    /// Pages that became present: through faults, prefetches and no-fault
    /// snapshots. `pages_faulted - pages_invalidated - stale_pages` is the
    /// number of present pages.
    pub pages_faulted: u64,
    /// Fault attempts thrown away because an invalidation collided.
    pub retries: u64,
    /// Invalidation callbacks that overlapped the umem.
    pub invalidations: u64,
    /// Present pages that invalidations cleared.
    pub pages_invalidated: u64,
    /// Of those, pages the device had written.
    pub dirty_pages_invalidated: u64,
    /// Prefetch (advise) calls.
    pub prefetches: u64,
    /// Of `pages_faulted`, the pages prefetches made present.
    pub pages_prefetched: u64,
    /// Present pages a device copy found gone (the change was reported
    /// after the fact, or not at all) and dropped. Not counted in
    /// `pages_invalidated`.
    pub stale_pages: u64,
}

impl Counters {
    pub(crate) fn fault(&self, new_pages: usize) {
        self.faults.fetch_add(1, Relaxed);
        self.pages_faulted.fetch_add(new_pages as u64, Relaxed);
    }

    /// Pages made present without a fault (a no-fault prefetch snapshot).
    pub(crate) fn snapshot(&self, new_pages: usize) {
        self.pages_faulted.fetch_add(new_pages as u64, Relaxed);
    }

    pub(crate) fn stale(&self, pages: usize) {
        self.stale_pages.fetch_add(pages as u64, Relaxed);
    }

    pub(crate) fn retry(&self) {
        self.retries.fetch_add(1, Relaxed);
    }

    pub(crate) fn invalidation(&self, pages: usize, dirty: usize) {
        self.invalidations.fetch_add(1, Relaxed);
        self.pages_invalidated.fetch_add(pages as u64, Relaxed);
        self.dirty_pages_invalidated
            .fetch_add(dirty as u64, Relaxed);
    }

    pub(crate) fn prefetch(&self, new_pages: usize) {
        self.prefetches.fetch_add(1, Relaxed);
        self.pages_prefetched.fetch_add(new_pages as u64, Relaxed);
    }

    pub(crate) fn read(&self) -> OdpCounters {
        OdpCounters {
            faults: self.faults.load(Relaxed),
            pages_faulted: self.pages_faulted.load(Relaxed),
            retries: self.retries.load(Relaxed),
            invalidations: self.invalidations.load(Relaxed),
            pages_invalidated: self.pages_invalidated.load(Relaxed),
            dirty_pages_invalidated: self.dirty_pages_invalidated.load(Relaxed),
            prefetches: self.prefetches.load(Relaxed),
            pages_prefetched: self.pages_prefetched.load(Relaxed),
            stale_pages: self.stale_pages.load(Relaxed),
        }
    }
}

impl std::ops::Add for OdpCounters {
    type Output = Self;
    fn add(self, o: Self) -> Self {
        Self {
            faults: self.faults + o.faults,
            pages_faulted: self.pages_faulted + o.pages_faulted,
            retries: self.retries + o.retries,
            invalidations: self.invalidations + o.invalidations,
            pages_invalidated: self.pages_invalidated + o.pages_invalidated,
            dirty_pages_invalidated: self.dirty_pages_invalidated + o.dirty_pages_invalidated,
            prefetches: self.prefetches + o.prefetches,
            pages_prefetched: self.pages_prefetched + o.pages_prefetched,
            stale_pages: self.stale_pages + o.stale_pages,
        }
    }
}
