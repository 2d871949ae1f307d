//! Implicit ODP: one memory region over the whole address space, made of
//! child umems created on first access and freed when idle (mlx5's implicit
//! MR, with its 1 GiB children).
//!
//! Each child is an ordinary [`Umem`] with its own notifier subscription, so
//! an invalidation costs only the children it overlaps. A child whose last
//! present page an invalidation clears is counted as emptied; the parent
//! frees such children (if nobody is using them) on its next access.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::OdpError;
use crate::access::Access;
use crate::address_space::AddressSpace;
use crate::counters::OdpCounters;
use crate::fault::Advice;
use crate::safe_atomic::AtomicOp;
use crate::umem::{Umem, UmemOptions};

/// Each child covers `1 << IMPLICIT_CHILD_SHIFT` bytes (1 GiB).
pub const IMPLICIT_CHILD_SHIFT: u32 = 30;
const CHILD_SIZE: usize = 1 << IMPLICIT_CHILD_SHIFT;

/// Child bookkeeping of an [`ImplicitUmem`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImplicitStats {
    /// Children alive now.
    pub live: usize,
    /// Children created so far.
    pub created: u64,
    /// Children freed because they were idle.
    pub freed: u64,
}

/// A memory region over the whole address space (`addr = 0`,
/// `len = usize::MAX` in verbs terms), paged on demand.
pub struct ImplicitUmem {
    aspace: Arc<AddressSpace>,
    options: UmemOptions,
    children: Mutex<BTreeMap<usize, Arc<Umem>>>,
    /// Invalidations that left a child with no present page.
    emptied: Arc<AtomicUsize>,
    /// Counters of children already freed.
    retired: Mutex<OdpCounters>,
    created: AtomicU64,
    freed: AtomicU64,
}

impl std::fmt::Debug for ImplicitUmem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImplicitUmem")
            .field("options", &self.options)
            .field("stats", &self.stats())
            .finish()
    }
}

impl ImplicitUmem {
    /// An implicit region of `aspace`. Creates no children yet.
    pub fn new(aspace: &Arc<AddressSpace>, options: UmemOptions) -> Self {
        Self {
            aspace: Arc::clone(aspace),
            options,
            children: Mutex::new(BTreeMap::new()),
            emptied: Arc::new(AtomicUsize::new(0)),
            retired: Mutex::new(OdpCounters::default()),
            created: AtomicU64::new(0),
            freed: AtomicU64::new(0),
        }
    }

    fn map(&self) -> MutexGuard<'_, BTreeMap<usize, Arc<Umem>>> {
        self.children.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The child covering `va`, created if needed.
    fn child(&self, va: usize) -> Result<Arc<Umem>, OdpError> {
        if self.emptied.load(Relaxed) > 0 {
            self.reap_idle();
        }
        let index = va >> IMPLICIT_CHILD_SHIFT;
        let mut map = self.map();
        if let Some(child) = map.get(&index) {
            return Ok(Arc::clone(child));
        }
        let start = index << IMPLICIT_CHILD_SHIFT;
        // The topmost child stops a page short of the end of the address
        // space, which no user mapping reaches anyway.
        let len = CHILD_SIZE.min(usize::MAX - start + 1 - crate::page_size());
        let child = Arc::new(Umem::register(
            &self.aspace,
            start,
            len,
            self.options,
            Some(Arc::clone(&self.emptied)),
        )?);
        map.insert(index, Arc::clone(&child));
        self.created.fetch_add(1, Relaxed);
        Ok(child)
    }

    /// Splits `[va, va + len)` at child boundaries and runs `f` on each piece
    /// with its child, in address order, stopping at the first error.
    fn for_each_piece(
        &self,
        va: usize,
        len: usize,
        mut f: impl FnMut(&Umem, usize, usize, usize) -> Result<(), OdpError>,
    ) -> Result<(), OdpError> {
        let end = va
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(OdpError::OutOfRange {
                va,
                len,
                start: 0,
                end: usize::MAX,
            })?;
        let mut at = va;
        while at < end {
            let piece_end = end.min((at | (CHILD_SIZE - 1)).saturating_add(1));
            let child = self.child(at)?;
            f(&child, at, piece_end - at, at - va)?;
            at = piece_end;
        }
        Ok(())
    }

    /// Copies memory at `va` into `dst` (see [`Umem::read`]).
    ///
    /// # Errors
    /// As [`Umem::read`], for the first piece that fails.
    pub fn read(&self, va: usize, dst: &mut [u8]) -> Result<(), OdpError> {
        self.for_each_piece(va, dst.len(), |child, at, len, offset| {
            child.read(at, &mut dst[offset..offset + len])
        })
    }

    /// Copies `src` to memory at `va` (see [`Umem::write`]).
    ///
    /// # Errors
    /// As [`Umem::write`], for the first piece that fails.
    pub fn write(&self, va: usize, src: &[u8]) -> Result<(), OdpError> {
        self.for_each_piece(va, src.len(), |child, at, len, offset| {
            child.write(at, &src[offset..offset + len])
        })
    }

    /// Runs the RDMA atomic `op` on the 8 bytes at `va` (see
    /// [`Umem::atomic`]; an aligned 8-byte range never crosses children).
    ///
    /// # Errors
    /// As [`Umem::atomic`].
    pub fn atomic(&self, va: usize, op: AtomicOp) -> Result<u64, OdpError> {
        let mut old = 0;
        self.for_each_piece(va, 8, |child, at, _, _| {
            old = child.atomic(at, op)?;
            Ok(())
        })?;
        Ok(old)
    }

    /// Runs `f(ptr, len, offset)` on each child-sized piece of
    /// `[va, va + len)` under that child's lock (see [`Umem::with_range`]).
    ///
    /// # Errors
    /// As [`Umem::with_range`], for the first piece that fails.
    pub fn with_pieces(
        &self,
        va: usize,
        len: usize,
        access: Access,
        mut f: impl FnMut(*mut u8, usize, usize),
    ) -> Result<(), OdpError> {
        self.for_each_piece(va, len, |child, at, len, offset| {
            child.with_range(at, len, access, |ptr, len| f(ptr, len, offset))
        })
    }

    /// Prefetches `[va, va + len)` (see [`Umem::advise`]).
    ///
    /// # Errors
    /// As [`Umem::advise`], for the first piece that fails.
    pub fn advise(&self, va: usize, len: usize, advice: Advice) -> Result<(), OdpError> {
        self.for_each_piece(va, len, |child, at, len, _| child.advise(at, len, advice))
    }

    /// Frees the children that have no present page and that no access is
    /// using. Returns how many were freed.
    pub fn reap_idle(&self) -> usize {
        self.emptied.store(0, Relaxed);
        let idle: Vec<Arc<Umem>> = {
            let mut map = self.map();
            let keys: Vec<usize> = map
                .iter()
                .filter(|(_, c)| Arc::strong_count(c) == 1 && c.present_pages() == 0)
                .map(|(&k, _)| k)
                .collect();
            keys.iter().filter_map(|k| map.remove(k)).collect()
        };
        // Dropped outside the map lock: removal may wait for a running
        // invalidation of the child.
        let freed = idle.len();
        let mut retired = self.retired.lock().unwrap_or_else(PoisonError::into_inner);
        for child in idle {
            *retired = *retired + child.counters();
        }
        drop(retired);
        self.freed.fetch_add(freed as u64, Relaxed);
        freed
    }

    /// The sum of the counters of all children, live and freed.
    pub fn counters(&self) -> OdpCounters {
        let retired = *self.retired.lock().unwrap_or_else(PoisonError::into_inner);
        self.map()
            .values()
            .fold(retired, |sum, child| sum + child.counters())
    }

    /// Present pages over all live children.
    pub fn present_pages(&self) -> usize {
        self.map().values().map(|c| c.present_pages()).sum()
    }

    /// Child bookkeeping.
    pub fn stats(&self) -> ImplicitStats {
        ImplicitStats {
            live: self.map().len(),
            created: self.created.load(Relaxed),
            freed: self.freed.load(Relaxed),
        }
    }
}
