//! The fault path (the kernel's `ib_umem_odp_map_dma_and_lock` with
//! `hmm_range_fault`) and prefetch (`ibv_advise_mr`).
//!
//! Collision-retry: take the sequence with `read_begin`, make the pages
//! present with no lock held, take the driver lock, and commit the entries
//! only if `read_retry` says no invalidation hit the umem meanwhile;
//! otherwise start over. A commit therefore never records a page that an
//! invalidation has already torn down.

use std::sync::atomic::Ordering;

use crate::OdpError;
use crate::events::uffd::Watched;
use crate::page_table::PageTable;
use crate::sys::{self, Pagemap, PopulateError};
use crate::umem::{Umem, UmemInner};

/// Pages faulted per collision-retry round: bounds the lock hold time of
/// one commit and the frame buffer, and lets invalidations in between.
const FAULT_CHUNK_PAGES: usize = 512;

/// The window around a faulted run of an implicit child that is registered
/// for userfaultfd events with it (a huge page's worth): scattered faults
/// then share registrations instead of splitting mappings at every run.
const IMPLICIT_WATCH_WINDOW: usize = 2 << 20;

impl UmemInner {
    /// Registers the faulted run `[addr, addr + len)` with the userfaultfd
    /// source (if on), together with its span: the whole region (the
    /// application registered all of it), or for an implicit child, which
    /// spans 1 GiB of whatever the process maps there, the
    /// [`IMPLICIT_WATCH_WINDOW`]s around the run. A region whose span
    /// cannot be registered (a mapping in it does not support
    /// userfaultfd) registers runs alone from then on: trying again would
    /// walk every mapping of the region at each fault.
    fn watch(&self, addr: usize, len: usize) -> Result<(), OdpError> {
        let (start, end) = (self.start, self.start + self.len);
        let span = if self.emptied.is_some() {
            let mask = IMPLICIT_WATCH_WINDOW - 1;
            let lo = addr & !mask;
            let hi = (addr + len).saturating_add(mask) & !mask;
            Some((lo.max(start), hi.min(end)))
        } else if self.span_unwatchable.load(Ordering::Relaxed) {
            None
        } else {
            Some((start, end))
        };
        let watched = self.aspace.watch(addr, len, span)?;
        if watched == Watched::RunOnly && self.emptied.is_none() {
            self.span_unwatchable.store(true, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// What [`Umem::advise`] should do (`ibv_advise_mr`'s advice).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Advice {
    /// Make the pages present for reading.
    Prefetch,
    /// Make the pages present for writing (the umem must be writable).
    PrefetchWrite,
    /// Record the pages that are already present in the CPU page table,
    /// without faulting anything in.
    PrefetchNoFault,
}

impl Umem {
    /// Makes `[va, va + len)` present for the device, for writing if
    /// `write`.
    ///
    /// # Errors
    /// [`OdpError::OutOfRange`], [`OdpError::AccessDenied`] (write to a
    /// read-only umem or mapping, `PROT_NONE`, an I/O mapping),
    /// [`OdpError::Unmapped`], [`OdpError::Released`], [`OdpError::Pin`].
    pub fn fault(&self, va: usize, len: usize, write: bool) -> Result<(), OdpError> {
        let (first, last) = self.inner.pages_of(va, len)?;
        self.check_write(va, len, write)?;
        self.fault_pages(first, last, write)?;
        Ok(())
    }

    /// Prefetches `[va, va + len)` (`ibv_advise_mr`).
    ///
    /// # Errors
    /// As [`Self::fault`]; [`Advice::PrefetchNoFault`] fails only on a bad
    /// range.
    pub fn advise(&self, va: usize, len: usize, advice: Advice) -> Result<(), OdpError> {
        let (first, last) = self.inner.pages_of(va, len)?;
        let new = match advice {
            Advice::Prefetch => self.fault_pages(first, last, false)?,
            Advice::PrefetchWrite => {
                self.check_write(va, len, true)?;
                self.fault_pages(first, last, true)?
            }
            Advice::PrefetchNoFault => self.snapshot_pages(first, last)?,
        };
        self.inner.counters.prefetch(new);
        Ok(())
    }

    #[inline]
    pub(crate) fn check_write(&self, va: usize, len: usize, write: bool) -> Result<(), OdpError> {
        if write && !self.inner.options.writable {
            return Err(OdpError::AccessDenied { va, len, write });
        }
        Ok(())
    }

    /// Faults `[first, last]` in chunks; returns how many pages became
    /// present.
    pub(crate) fn fault_pages(
        &self,
        first: usize,
        last: usize,
        write: bool,
    ) -> Result<usize, OdpError> {
        let mut new = 0;
        let mut frames = Vec::new();
        let mut chunk_first = first;
        while chunk_first <= last {
            let chunk_last = last.min(chunk_first + FAULT_CHUNK_PAGES - 1);
            new += self.fault_chunk(chunk_first, chunk_last, write, &mut frames)?;
            chunk_first = chunk_last + 1;
        }
        Ok(new)
    }

    fn fault_chunk(
        &self,
        first: usize,
        last: usize,
        write: bool,
        frames: &mut Vec<u64>,
    ) -> Result<usize, OdpError> {
        let inner = &self.inner;
        let addr = inner.page_addr(first);
        let len = (last - first + 1) << inner.page_shift;
        let pin = inner.options.pin;
        frames.clear();
        frames.resize(last - first + 1, 0);
        let new = self.collision_retry(
            frames,
            |frames| {
                sys::populate(addr, len, write).map_err(|e| populate_error(e, addr, len, write))?;
                inner.watch(addr, len)?;
                if pin {
                    // Not undone on a retry: mlock does not nest, so
                    // unlocking could unpin pages a concurrent fault has
                    // committed. The next round commits them, or an
                    // invalidation unlocks them.
                    sys::mlock(addr, len).map_err(|e| OdpError::Pin {
                        va: addr,
                        len,
                        errno: e.raw_os_error().unwrap_or(0),
                    })?;
                }
                if inner.options.record_frames && !self.read_pagemap(first, frames, Pagemap::read) {
                    frames.fill(0);
                }
                Ok(())
            },
            |table, frames| {
                (first..=last)
                    .zip(frames.iter())
                    .filter(|&(page, &frame)| table.commit(page, write, pin, frame))
                    .count()
            },
        )?;
        inner.counters.fault(new);
        Ok(new)
    }

    /// Commits the pages of `[first, last]` that the CPU page table already
    /// maps, read-only, faulting nothing (`PREFETCH_NO_FAULT`, and rxe's
    /// registration snapshot).
    fn snapshot_pages(&self, first: usize, last: usize) -> Result<usize, OdpError> {
        let inner = &self.inner;
        let mut present = vec![0u64; last - first + 1];
        let new = self.collision_retry(
            &mut present,
            |present| {
                if !self.read_pagemap(first, present, Pagemap::present) {
                    present.fill(0);
                }
                for (run_first, run_len) in present_runs(present) {
                    let addr = inner.page_addr(first + run_first);
                    let len = run_len << inner.page_shift;
                    inner.watch(addr, len)?;
                }
                Ok(())
            },
            |table, present| {
                (first..=last)
                    .zip(present.iter())
                    .filter(|&(page, &p)| p != 0 && table.commit(page, false, false, 0))
                    .count()
            },
        )?;
        inner.counters.snapshot(new);
        Ok(new)
    }

    /// The collision-retry loop: `prepare` runs after `read_begin` with no
    /// lock held (making pages present, looking them up into `per_page`);
    /// `commit` runs under the driver lock, only if no invalidation hit the
    /// umem since `read_begin`. Otherwise the round is thrown away and
    /// repeated.
    fn collision_retry<R>(
        &self,
        per_page: &mut [u64],
        mut prepare: impl FnMut(&mut [u64]) -> Result<(), OdpError>,
        commit: impl FnOnce(&mut PageTable, &[u64]) -> R,
    ) -> Result<R, OdpError> {
        loop {
            let seq = self.sub.read_begin();
            // After read_begin, as the kernel checks mmget_not_zero.
            if self.inner.aspace.subscriptions().is_released() {
                return Err(OdpError::Released);
            }
            prepare(per_page)?;
            let mut table = self.inner.lock();
            if self.sub.read_retry(seq) {
                drop(table);
                self.inner.counters.retry();
                continue;
            }
            return Ok(commit(&mut table, per_page));
        }
    }

    /// Reads one pagemap entry per umem page from page `first` on (the
    /// entry of each page's first base page, so huge pages work too).
    fn read_pagemap(
        &self,
        first: usize,
        out: &mut [u64],
        read: fn(&Pagemap, usize, &mut [u64]) -> bool,
    ) -> bool {
        let inner = &self.inner;
        let pagemap = inner.aspace.pagemap();
        if inner.page_shift == sys::page_size().trailing_zeros() {
            return read(pagemap, inner.page_addr(first), out);
        }
        out.iter_mut().enumerate().all(|(i, entry)| {
            read(
                pagemap,
                inner.page_addr(first + i),
                std::slice::from_mut(entry),
            )
        })
    }
}

/// The runs `(first index, length)` of non-zero entries.
fn present_runs(present: &[u64]) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut i = 0;
    std::iter::from_fn(move || {
        while i < present.len() && present[i] == 0 {
            i += 1;
        }
        let start = i;
        while i < present.len() && present[i] != 0 {
            i += 1;
        }
        (i > start).then_some((start, i - start))
    })
}

fn populate_error(e: PopulateError, va: usize, len: usize, write: bool) -> OdpError {
    match e {
        PopulateError::Unmapped => OdpError::Unmapped { va, len },
        PopulateError::Denied => OdpError::AccessDenied { va, len, write },
    }
}
