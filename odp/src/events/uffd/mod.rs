//! The userfaultfd monitor: the event source that sees every unmap, remap
//! and discard of registered memory, including raw system calls and glibc's
//! internal ones, which symbol interposition cannot see.
//!
//! # How it works
//!
//! * [`fd::Userfaultfd::open`] creates the fd with the raw syscall
//!   `userfaultfd(O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY)` (works
//!   unprivileged with `vm.unprivileged_userfaultfd = 0`), retries without
//!   `UFFD_USER_MODE_ONLY` on kernels before 5.11, and tries
//!   `/dev/userfaultfd` last. The handshake asks for `EVENT_UNMAP |
//!   EVENT_REMOVE | EVENT_REMAP`, and `PAGEFAULT_FLAG_WP` when offered.
//!   `EVENT_FORK` is not requested: it needs `CAP_SYS_PTRACE`, and with it a
//!   child's `munmap` blocks until someone reads the child's new fd.
//! * Ranges are registered in **write-protect-only** mode and never
//!   write-protected: no page fault is ever trapped (no zero-page
//!   installation, no fault taken by the monitor itself, no `EFAULT` on
//!   kernel accesses to unpopulated pages), yet the events are delivered.
//! * [`monitor::Monitor`] runs one thread that polls the fd with a shutdown
//!   eventfd. When the fd is readable it takes the sink's gate
//!   ([`monitor::EventSink::begin_batch`]) while the changing threads are
//!   still blocked in the kernel, reads up to 64 messages into a stack
//!   buffer, delivers them, and releases the gate.
//!
//! # Kernel ordering (measured on 6.18)
//!
//! `REMOVE` is sent before the pages are zapped, `UNMAP` and `REMAP` after
//! the change. The changing thread sleeps until the monitor has **read** the
//! message, not until it has been handled; an observer that takes the gate
//! after the changing call returned sees the event handled.
//!
//! # Rules (deadlock hazards)
//!
//! * Never change a registered mapping while holding the gate: the changing
//!   thread waits for the monitor, and the monitor waits for the gate. The
//!   sink must not change one either.
//! * `fork()`: the child is unmonitored. Its inherited copy of the fd would
//!   keep the parent's registrations alive after the parent dropped its
//!   monitor; a `pthread_atfork` child handler neutralises that copy.

mod budget;
mod fd;
mod monitor;
mod raw;
#[cfg(test)]
mod tests;

use budget::VmaBudget;
use fd::{Event, RegisterError};
use monitor::{EventSink, Monitor, Stats};

use std::io;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};

use notifier::Event as NotifierEvent;

use crate::OdpError;
use crate::address_space::AddressSpace;

/// The userfaultfd source of one address space: the monitor, and the gate
/// that device accesses hold shared and the monitor exclusively.
///
/// The gate closes the window between the kernel queuing an event and its
/// invalidation: the monitor takes it before `read()` (while the changing
/// thread is still blocked in the kernel) and keeps it until every event of
/// the batch is invalidated. A device access therefore either finished
/// before the change became visible to the application, or starts after the
/// invalidation. What remains:
///
/// - an unmap or remap has already happened when its event is queued: an
///   access that runs before the monitor takes the gate may touch memory
///   that is gone (the copy then fails, [`crate::Umem::read`]) or a new
///   mapping at the same address;
/// - a discard's pages are zapped after `read()`, possibly after the gate is
///   released: an access right then may fault the old page back in and see
///   it zapped under it.
pub(crate) struct UffdSource {
    gate: Arc<RwLock<()>>,
    monitor: Monitor,
    budget: VmaBudget,
    watched: AtomicU64,
    coalesced: AtomicU64,
    uncovered: AtomicU64,
    vma_limited: AtomicU64,
}

impl std::fmt::Debug for UffdSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UffdSource")
            .field("stats", &self.stats())
            .finish()
    }
}

/// The sink: every event becomes an invalidation of its range.
struct Invalidator {
    gate: Arc<RwLock<()>>,
    aspace: Weak<AddressSpace>,
}

impl EventSink for Invalidator {
    type Guard<'a> = RwLockWriteGuard<'a, ()>;

    fn begin_batch(&self) -> RwLockWriteGuard<'_, ()> {
        self.gate.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn event(&self, _gate: &mut RwLockWriteGuard<'_, ()>, event: &Event) {
        let Some(aspace) = self.aspace.upgrade() else {
            return;
        };
        let (start, end, kind) = match *event {
            Event::Remove { start, end } => (start, end, NotifierEvent::Clear),
            Event::Unmap { start, end } => (start, end, NotifierEvent::Unmap),
            Event::Remap { from, len, .. } => {
                (from, from.saturating_add(len), NotifierEvent::Remap)
            }
            Event::Pagefault { .. } | Event::Fork => return,
        };
        // Start and end at once: the change has happened (unmap, remap) or
        // happens as soon as the batch lets the changing thread go.
        drop(aspace.invalidate(start, end.saturating_sub(start), kind));
    }
}

/// What [`UffdSource::watch`] registered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Watched {
    /// The run with the rest of its span.
    Span,
    /// The run alone; no span was asked for.
    Run,
    /// The run alone: its span could not be registered (a mapping in it
    /// does not support userfaultfd).
    RunOnly,
    /// Nothing (see the counters).
    NotAtAll,
}

/// Counters of the userfaultfd source.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UserfaultfdStats {
    /// Discard events (`madvise` DONTNEED/FREE/REMOVE).
    pub removes: u64,
    /// Unmap events.
    pub unmaps: u64,
    /// Remap events.
    pub remaps: u64,
    /// Batches the monitor handled under the gate.
    pub batches: u64,
    /// Faulted ranges registered for events.
    pub watched: u64,
    /// Of those, ranges registered with the rest of their span (the whole
    /// region, or for implicit regions the 2 MiB around them), so that
    /// scattered faults do not split mappings into many VMAs.
    pub coalesced: u64,
    /// Faulted ranges that could not be registered (mapping type without
    /// userfaultfd support, such as private file mappings and SysV shared
    /// memory, or a range another userfaultfd owns): no event will come for
    /// them from this source.
    pub uncovered: u64,
    /// Faulted ranges left unregistered because the process is close to
    /// `vm.max_map_count` (registering splits mappings): device copies
    /// rely on their copy-time checks there.
    pub vma_limited: u64,
}

impl UffdSource {
    /// Starts the monitor for `aspace`.
    pub(crate) fn start(aspace: &Arc<AddressSpace>) -> io::Result<UffdSource> {
        let gate = Arc::new(RwLock::new(()));
        let sink = Arc::new(Invalidator {
            gate: Arc::clone(&gate),
            aspace: Arc::downgrade(aspace),
        });
        Ok(UffdSource {
            gate,
            monitor: Monitor::start(sink)?,
            budget: VmaBudget::new(),
            watched: AtomicU64::new(0),
            coalesced: AtomicU64::new(0),
            uncovered: AtomicU64::new(0),
            vma_limited: AtomicU64::new(0),
        })
    }

    /// The gate, shared, for a device access.
    #[inline]
    pub(crate) fn device_gate(&self) -> RwLockReadGuard<'_, ()> {
        self.gate.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers the faulted pages `[addr, addr + len)` for events, with
    /// the rest of `span` (which contains them) if every mapping there can
    /// be registered. Registration is per mapping, and a mapping made after
    /// an earlier registration (a remap at the same address) is new, so
    /// every fault registers what it faulted.
    ///
    /// Nothing is registered while the process is close to its VMA limit
    /// ([`budget`]); the pages are then only covered by copy-time checks.
    pub(crate) fn watch(
        &self,
        addr: usize,
        len: usize,
        span: Option<(usize, usize)>,
    ) -> Result<Watched, OdpError> {
        if !self.budget.admit() {
            self.vma_limited.fetch_add(1, Relaxed);
            return Ok(Watched::NotAtAll);
        }
        let run = (addr, addr.saturating_add(len));
        let span = span.filter(|&s| s != run);
        if let Some((span_start, span_end)) = span
            && self
                .monitor
                .register_span(span_start, span_end - span_start)
                .is_ok()
        {
            // Registered first, checked second: an unmap of the run
            // after the check is reported; one before it is caught here.
            if !crate::sys::is_mapped(addr, len) {
                return Err(OdpError::Unmapped { va: addr, len });
            }
            self.watched.fetch_add(1, Relaxed);
            self.coalesced.fetch_add(1, Relaxed);
            return Ok(Watched::Span);
        }
        let watched = if span.is_some() {
            Watched::RunOnly
        } else {
            Watched::Run
        };
        // A second attempt settles a range that was unmapped and mapped
        // again during the first: the kernel's answer then (EINVAL) reads
        // like an unsupported mapping.
        let mut result = self.monitor.register(addr, len);
        if let Err(RegisterError::Unsupported { .. }) = result {
            result = self.monitor.register(addr, len);
        }
        match result {
            Ok(()) => {
                self.watched.fetch_add(1, Relaxed);
                Ok(watched)
            }
            // Unmapped since it was faulted: the caller's retry finds out.
            Err(RegisterError::Unmapped { .. }) => Err(OdpError::Unmapped { va: addr, len }),
            Err(RegisterError::VmaLimit) => {
                self.vma_limited.fetch_add(1, Relaxed);
                Ok(Watched::NotAtAll)
            }
            Err(_) => {
                self.uncovered.fetch_add(1, Relaxed);
                Ok(Watched::NotAtAll)
            }
        }
    }

    pub(crate) fn stats(&self) -> UserfaultfdStats {
        let m: Stats = self.monitor.stats();
        UserfaultfdStats {
            removes: m.remove,
            unmaps: m.unmap,
            remaps: m.remap,
            batches: m.batches,
            watched: self.watched.load(Relaxed),
            coalesced: self.coalesced.load(Relaxed),
            uncovered: self.uncovered.load(Relaxed),
            vma_limited: self.vma_limited.load(Relaxed),
        }
    }
}
