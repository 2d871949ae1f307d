//! One registered range of user memory (the kernel's `ib_umem_odp`): a
//! notifier subscription, a device page table and the driver lock that
//! device accesses, faults and invalidations all take.
//!
//! Registration pins nothing and faults nothing in. Pages become present
//! on first device access ([`crate::access`]) or by prefetch
//! ([`crate::fault`]), and invalidations clear them again.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};

use notifier::{IntervalNotifier, IntervalSubscription, NotifierRange};

use crate::OdpError;
use crate::address_space::{AddressSpace, page_span};
use crate::counters::{Counters, OdpCounters};
use crate::page_table::{PageEntry, PageTable};
use crate::sys;

/// How a umem is registered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UmemOptions {
    /// The device may write (the MR has local or remote write access).
    pub writable: bool,
    /// Lock faulted pages in memory (`mlock`) until they are invalidated:
    /// the userspace stand-in for pinning. Locked ranges refuse
    /// `MADV_DONTNEED` from anyone but the wrappers, which unlock first by
    /// invalidating.
    pub pin: bool,
    /// Record page frame numbers from `/proc/self/pagemap` (real ones need
    /// `CAP_SYS_ADMIN`; without it they read as zero).
    pub record_frames: bool,
}

impl Default for UmemOptions {
    fn default() -> Self {
        Self {
            writable: true,
            pin: false,
            record_frames: false,
        }
    }
}

/// A registered range of user memory with on-demand paging.
///
/// Dropping it clears the page table (unlocking pinned pages) and removes
/// the subscription; once the drop returns, no invalidation callback of
/// this umem runs any more.
pub struct Umem {
    // Declared first so it is dropped before `inner`: removal waits for any
    // running callback, which uses `inner` through its own reference.
    pub(crate) sub: IntervalSubscription,
    pub(crate) inner: Arc<UmemInner>,
}

/// The state the invalidation callback shares with the umem.
pub(crate) struct UmemInner {
    pub(crate) aspace: Arc<AddressSpace>,
    /// Page-aligned bounds of the registration.
    pub(crate) start: usize,
    pub(crate) len: usize,
    pub(crate) page_shift: u32,
    pub(crate) options: UmemOptions,
    /// The driver lock (`umem_mutex`) and what it guards.
    table: Mutex<PageTable>,
    /// Invalidations waiting for the driver lock. Device accesses and
    /// faults let them in first: the lock is not fair, and a device that
    /// accesses memory back to back would otherwise hold off an unmap
    /// indefinitely.
    invalidations_waiting: AtomicUsize,
    /// Incremented when an invalidation empties the table (implicit
    /// children only: the parent frees idle children).
    pub(crate) emptied: Option<Arc<AtomicUsize>>,
    /// The region cannot be registered for userfaultfd events as a whole.
    pub(crate) span_unwatchable: AtomicBool,
    pub(crate) counters: Counters,
}

impl std::fmt::Debug for Umem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Umem")
            .field("start", &format_args!("{:#x}", self.inner.start))
            .field("len", &format_args!("{:#x}", self.inner.len))
            .field("options", &self.inner.options)
            .finish()
    }
}

impl Umem {
    /// Registers `[addr, addr + len)` of `aspace` (widened to whole pages;
    /// huge pages when hugetlbfs memory backs the whole range).
    ///
    /// Nothing is faulted or pinned; the memory need not even be mapped
    /// yet (an access to a hole fails with [`OdpError::Unmapped`]).
    ///
    /// # Errors
    /// [`OdpError::InvalidRange`] for an empty or wrapping range;
    /// [`OdpError::Notifier`] if the address space was released.
    pub fn new(
        aspace: &Arc<AddressSpace>,
        addr: usize,
        len: usize,
        options: UmemOptions,
    ) -> Result<Umem, OdpError> {
        Self::register(aspace, addr, len, options, None)
    }

    /// [`Self::new`] for a child of an implicit umem: `emptied` counts the
    /// invalidations that leave this umem with no present page.
    pub(crate) fn register(
        aspace: &Arc<AddressSpace>,
        addr: usize,
        len: usize,
        options: UmemOptions,
        emptied: Option<Arc<AtomicUsize>>,
    ) -> Result<Umem, OdpError> {
        let (start, end) = page_span(addr, len).ok_or(OdpError::InvalidRange { addr, len })?;
        // Huge pages where the range is backed by them (hugetlbfs): one
        // entry, one fault and one invalidation per huge page. Implicit
        // children use base pages, as the kernel's do.
        let page = if emptied.is_some() {
            sys::page_size()
        } else {
            sys::backing_page_size(start, end - start)
        };
        let start = start & !(page - 1);
        let end = end
            .checked_add(page - 1)
            .ok_or(OdpError::InvalidRange { addr, len })?
            & !(page - 1);
        let page_shift = page.trailing_zeros();
        let pages = (end - start) >> page_shift;
        let inner = Arc::new(UmemInner {
            aspace: Arc::clone(aspace),
            start,
            len: end - start,
            page_shift,
            options,
            table: Mutex::new(PageTable::new(pages)),
            invalidations_waiting: AtomicUsize::new(0),
            emptied,
            span_unwatchable: AtomicBool::new(false),
            counters: Counters::default(),
        });
        let callback_inner = Arc::clone(&inner);
        let sub = aspace.subscriptions().insert(
            start,
            end - start,
            move |sub: &IntervalNotifier, range: &NotifierRange, cur_seq| {
                callback_inner.invalidate(sub, range, cur_seq)
            },
        )?;
        Ok(Umem { sub, inner })
    }

    /// First address (page-aligned).
    pub fn start(&self) -> usize {
        self.inner.start
    }

    /// Length in bytes (whole pages).
    pub fn len(&self) -> usize {
        self.inner.len
    }

    /// Always false: registration rejects empty ranges.
    pub fn is_empty(&self) -> bool {
        self.inner.len == 0
    }

    /// The page size the table is kept at.
    pub fn page_size(&self) -> usize {
        1 << self.inner.page_shift
    }

    /// The registration options.
    pub fn options(&self) -> UmemOptions {
        self.inner.options
    }

    /// The address space the umem belongs to.
    pub fn address_space(&self) -> &Arc<AddressSpace> {
        &self.inner.aspace
    }

    /// A snapshot of the counters.
    pub fn counters(&self) -> OdpCounters {
        self.inner.counters.read()
    }

    /// Number of pages currently present in the device page table.
    pub fn present_pages(&self) -> usize {
        self.inner.lock().present()
    }

    /// The device page-table entry of the page holding `va`.
    ///
    /// # Errors
    /// [`OdpError::OutOfRange`] if `va` is outside the umem.
    pub fn entry(&self, va: usize) -> Result<PageEntry, OdpError> {
        let (first, _) = self.inner.pages_of(va, 1)?;
        Ok(self.inner.lock().entry(first))
    }
}

impl Umem {
    /// Checks, under the driver lock, that every present page is still
    /// mapped: a debugging aid in the manner of UCX's PFN check. A failure
    /// means an address-space change was not reported to the notifier (for
    /// example a raw `munmap` with no event source watching).
    ///
    /// # Errors
    /// [`OdpError::Unmapped`] with the first present run that is unmapped.
    pub fn verify_mapped(&self) -> Result<(), OdpError> {
        let table = self.inner.lock();
        let mut page = 0;
        while page < table.len() {
            if !table.entry(page).is_present() {
                page += 1;
                continue;
            }
            let run_start = page;
            while page < table.len() && table.entry(page).is_present() {
                page += 1;
            }
            let va = self.inner.page_addr(run_start);
            let len = (page - run_start) << self.inner.page_shift;
            if !sys::is_mapped(va, len) {
                return Err(OdpError::Unmapped { va, len });
            }
        }
        Ok(())
    }
}

impl Drop for Umem {
    fn drop(&mut self) {
        // Tear down the device's view first (ib_umem_odp_release): only
        // pinned pages need work. The subscription is removed when `sub`
        // drops right after.
        if self.inner.options.pin {
            let mut table = self.inner.lock();
            let last = table.len() - 1;
            table.clear(0, last, |p, n| self.inner.unpin(p, n));
        }
    }
}

impl UmemInner {
    /// The driver lock. A panic while it was held (in a device closure)
    /// leaves the table consistent, so poisoning is ignored.
    #[inline]
    pub(crate) fn lock(&self) -> MutexGuard<'_, PageTable> {
        while self.invalidations_waiting.load(Ordering::Acquire) > 0 {
            std::thread::yield_now();
        }
        self.lock_for_invalidation()
    }

    #[inline]
    fn lock_for_invalidation(&self) -> MutexGuard<'_, PageTable> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    #[inline]
    pub(crate) fn page_addr(&self, page: usize) -> usize {
        self.start + (page << self.page_shift)
    }

    /// The pages `[first, last]` covering `[va, va + len)`.
    #[inline]
    pub(crate) fn pages_of(&self, va: usize, len: usize) -> Result<(usize, usize), OdpError> {
        let end = va.checked_add(len);
        match end {
            Some(end) if len > 0 && va >= self.start && end <= self.start + self.len => Ok((
                (va - self.start) >> self.page_shift,
                (end - 1 - self.start) >> self.page_shift,
            )),
            _ => Err(OdpError::OutOfRange {
                va,
                len,
                start: self.start,
                end: self.start + self.len,
            }),
        }
    }

    /// Clears entries a device access found stale (its copy faulted on a
    /// present page), under the driver lock the caller holds.
    pub(crate) fn drop_stale(&self, table: &mut PageTable, first: usize, last: usize) {
        let cleared = table.clear(first, last, |p, n| self.unpin(p, n));
        self.counters.stale(cleared.pages);
    }

    fn unpin(&self, first_page: usize, pages: usize) {
        sys::munlock(self.page_addr(first_page), pages << self.page_shift);
    }

    /// The invalidation callback (rxe's `rxe_ib_invalidate_range`): under the
    /// driver lock, record the collision and clear the overlap. Every event
    /// kind drops the pages; a device access after it faults them back with
    /// whatever the address space holds then.
    fn invalidate(&self, sub: &IntervalNotifier, range: &NotifierRange, cur_seq: u64) -> bool {
        let mut table = if range.is_blockable() {
            self.invalidations_waiting.fetch_add(1, Ordering::AcqRel);
            let table = self.lock_for_invalidation();
            self.invalidations_waiting.fetch_sub(1, Ordering::AcqRel);
            table
        } else {
            match self.table.try_lock() {
                Ok(guard) => guard,
                Err(TryLockError::Poisoned(p)) => p.into_inner(),
                Err(TryLockError::WouldBlock) => return false,
            }
        };
        sub.set_seq(cur_seq);
        let first = (range.start().max(self.start) - self.start) >> self.page_shift;
        let last = (range.last().min(self.start + self.len - 1) - self.start) >> self.page_shift;
        let cleared = table.clear(first, last, |p, n| self.unpin(p, n));
        self.counters.invalidation(cleared.pages, cleared.dirty);
        if let Some(emptied) = &self.emptied
            && cleared.pages > 0
            && table.present() == 0
        {
            emptied.fetch_add(1, Ordering::Relaxed);
        }
        true
    }
}
