//! One process address space as the ODP layer sees it: the notifier
//! subscriptions of every umem in it, and the explicit wrappers of the
//! system calls that change it (`munmap`, `mremap`, `madvise`, `mprotect`),
//! which report the change before making it. The other event sources in
//! [`crate::events`] report changes made around the library.

use std::io;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLockReadGuard};

use notifier::{Event, Invalidation, NotifierRange, Subscriptions};

use crate::events::Change;
use crate::events::uffd::{UffdSource, UserfaultfdStats, Watched};
use crate::sys::{Pagemap, page_size};

/// The address space of this process (or, for tests, a private stand-in).
#[derive(Debug)]
pub struct AddressSpace {
    subscriptions: Arc<Subscriptions>,
    pagemap: Pagemap,
    /// The userfaultfd source, once enabled.
    uffd: OnceLock<UffdSource>,
    uffd_start: Mutex<()>,
}

impl AddressSpace {
    /// The address space of this process: the one the event sources report
    /// to. Created on first use and never freed.
    pub fn process() -> Arc<AddressSpace> {
        static PROCESS: OnceLock<Arc<AddressSpace>> = OnceLock::new();
        Arc::clone(PROCESS.get_or_init(|| {
            let aspace = Arc::new(AddressSpace::new_private());
            crate::events::interpose::attach(&aspace);
            aspace
        }))
    }

    /// A private address space that no event source reports to: changes are
    /// seen only through its own wrappers. For tests and tools that want
    /// isolation from the rest of the process.
    pub fn new_private() -> AddressSpace {
        AddressSpace {
            subscriptions: Subscriptions::new(),
            pagemap: Pagemap::open(),
            uffd: OnceLock::new(),
            uffd_start: Mutex::new(()),
        }
    }

    /// Starts the userfaultfd monitor for this address space (idempotent):
    /// from now on, faulted pages are registered for unmap, remap and
    /// discard events, which the monitor turns into invalidations. This
    /// covers changes no other source sees (raw system calls, glibc's
    /// internal `munmap` in `free`), with the windows described in
    /// [`crate::events`].
    ///
    /// # Errors
    /// The kernel refused a userfaultfd (disabled, or too old for the
    /// unmap/remove/remap events).
    pub fn enable_userfaultfd(self: &Arc<Self>) -> io::Result<()> {
        let _once = self
            .uffd_start
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self.uffd.get().is_none() {
            let source = UffdSource::start(self)?;
            let _ = self.uffd.set(source);
        }
        Ok(())
    }

    /// Counters of the userfaultfd source, if enabled.
    pub fn userfaultfd_stats(&self) -> Option<UserfaultfdStats> {
        self.uffd.get().map(UffdSource::stats)
    }

    /// The userfaultfd gate, shared, for a device access (`None` when the
    /// monitor is off).
    #[inline]
    pub(crate) fn device_gate(&self) -> Option<RwLockReadGuard<'_, ()>> {
        self.uffd.get().map(UffdSource::device_gate)
    }

    /// Registers faulted pages (with the rest of `span` where possible)
    /// with the userfaultfd source, if enabled.
    pub(crate) fn watch(
        &self,
        addr: usize,
        len: usize,
        span: Option<(usize, usize)>,
    ) -> Result<Watched, crate::OdpError> {
        self.uffd
            .get()
            .map_or(Ok(Watched::NotAtAll), |u| u.watch(addr, len, span))
    }

    /// Registers `[addr, addr + len)` (widened to pages) with the
    /// userfaultfd source, if it runs, so that unmaps, remaps and discards
    /// of it become invalidations.
    ///
    /// For subscribers outside this crate that make translations of their
    /// own (for instance registrations that pin chunks of memory for a
    /// device): call it on the fault path after
    /// [`notifier::IntervalNotifier::read_begin`] and before looking the
    /// memory up, as [`crate::Umem`]'s faults do. The kernel registers
    /// mappings, not addresses, and a mapping made at the same address
    /// after an earlier registration is a new one, so every fault must
    /// register what it is about to use.
    ///
    /// Returns whether the range is now watched: `false` when the monitor
    /// is off ([`Self::enable_userfaultfd`]), or the kernel cannot register
    /// this kind of mapping, or the process is close to its mapping limit
    /// (see [`UserfaultfdStats::uncovered`] and
    /// [`UserfaultfdStats::vma_limited`]).
    ///
    /// # Errors
    /// [`crate::OdpError::InvalidRange`] for an empty or wrapping range;
    /// [`crate::OdpError::Unmapped`] if part of it is not mapped (only
    /// detected while the monitor runs).
    pub fn watch_range(&self, addr: usize, len: usize) -> Result<bool, crate::OdpError> {
        let (start, end) =
            page_span(addr, len).ok_or(crate::OdpError::InvalidRange { addr, len })?;
        let watched = self.watch(start, end - start, None)?;
        Ok(watched != Watched::NotAtAll)
    }

    /// The notifier subscriptions of this address space.
    pub fn subscriptions(&self) -> &Arc<Subscriptions> {
        &self.subscriptions
    }

    pub(crate) fn pagemap(&self) -> &Pagemap {
        &self.pagemap
    }

    /// Whether `/proc/self/pagemap` shows real frame numbers (it needs
    /// `CAP_SYS_ADMIN`).
    pub fn frames_visible(&self) -> bool {
        self.pagemap.frames_visible()
    }

    /// Starts an invalidation of the pages overlapping `[addr, addr + len)`;
    /// `None` for an empty range.
    pub(crate) fn invalidate(
        &self,
        addr: usize,
        len: usize,
        event: Event,
    ) -> Option<Invalidation<'_>> {
        let (start, end) = page_span(addr, len)?;
        let range = NotifierRange::new(start, end, event).ok()?;
        // A blockable invalidation cannot fail.
        self.subscriptions.invalidate_range_start(&range).ok()
    }

    /// Maps `len` bytes of anonymous read-write memory, unmapped on drop
    /// through [`Self::munmap`].
    ///
    /// # Errors
    /// The `mmap` error.
    pub fn map_anonymous(
        self: &Arc<Self>,
        len: usize,
        extra_flags: libc::c_int,
    ) -> io::Result<Mapping> {
        // SAFETY: a fresh anonymous mapping chosen by the kernel aliases
        // nothing.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | extra_flags,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            aspace: Arc::clone(self),
            addr: ptr as usize,
            len,
        })
    }
}

// The explicit wrappers: system calls that change the address space, made
// through the library so that the change is reported before it happens
// (one of the sources in `crate::events`).
impl AddressSpace {
    /// `munmap` with the invalidation around it.
    ///
    /// # Safety
    /// As `munmap(2)`: nothing may use the range afterwards.
    ///
    /// # Errors
    /// The `munmap` error.
    pub unsafe fn munmap(&self, addr: *mut libc::c_void, len: usize) -> io::Result<()> {
        let change = Change::Munmap {
            addr: addr as usize,
            len,
        };
        self.around(change, || {
            // SAFETY: the caller's contract.
            check(unsafe { libc::munmap(addr, len) })
        })
    }

    /// `mremap` with invalidations of what moves or disappears: the whole
    /// old range when the kernel may move it, else the part cut off; and
    /// the destination of `MREMAP_FIXED`, whose old contents are replaced.
    ///
    /// # Safety
    /// As `mremap(2)`.
    ///
    /// # Errors
    /// The `mremap` error.
    pub unsafe fn mremap(
        &self,
        old: *mut libc::c_void,
        old_len: usize,
        new_len: usize,
        flags: libc::c_int,
        new_addr: *mut libc::c_void,
    ) -> io::Result<*mut libc::c_void> {
        let change = Change::Mremap {
            old: old as usize,
            old_len,
            new_len,
            flags,
            new_addr: new_addr as usize,
        };
        self.around(change, || {
            // SAFETY: the caller's contract.
            let ptr = unsafe { libc::mremap(old, old_len, new_len, flags, new_addr) };
            if ptr == libc::MAP_FAILED {
                Err(io::Error::last_os_error())
            } else {
                Ok(ptr)
            }
        })
    }

    /// `madvise`, with an invalidation when the advice discards or replaces
    /// contents (`MADV_DONTNEED`, `MADV_DONTNEED_LOCKED`, `MADV_FREE`,
    /// `MADV_REMOVE`). Other advice changes no contents a device could see.
    ///
    /// # Safety
    /// As `madvise(2)`: discarding advice zeroes or drops the contents.
    ///
    /// # Errors
    /// The `madvise` error.
    pub unsafe fn madvise(
        &self,
        addr: *mut libc::c_void,
        len: usize,
        advice: libc::c_int,
    ) -> io::Result<()> {
        let change = Change::Madvise {
            addr: addr as usize,
            len,
            advice,
        };
        self.around(change, || {
            // SAFETY: the caller's contract.
            check(unsafe { libc::madvise(addr, len, advice) })
        })
    }

    /// `mprotect`, with an invalidation (device translations are rebuilt
    /// with the new permissions on the next access).
    ///
    /// # Safety
    /// As `mprotect(2)`.
    ///
    /// # Errors
    /// The `mprotect` error.
    pub unsafe fn mprotect(
        &self,
        addr: *mut libc::c_void,
        len: usize,
        prot: libc::c_int,
    ) -> io::Result<()> {
        let change = Change::Mprotect {
            addr: addr as usize,
            len,
        };
        self.around(change, || {
            // SAFETY: the caller's contract.
            check(unsafe { libc::mprotect(addr, len, prot) })
        })
    }
}

/// `Ok` for a system call's 0, else the error `errno` holds.
fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `[addr, addr + len)` widened to page boundaries; `None` if empty or if
/// it would wrap.
pub(crate) fn page_span(addr: usize, len: usize) -> Option<(usize, usize)> {
    if len == 0 {
        return None;
    }
    let mask = page_size() - 1;
    let end = addr.checked_add(len)?.checked_add(mask)? & !mask;
    Some((addr & !mask, end))
}

/// Anonymous memory owned by the caller and unmapped, with invalidation,
/// when dropped.
#[derive(Debug)]
pub struct Mapping {
    aspace: Arc<AddressSpace>,
    addr: usize,
    len: usize,
}

impl Mapping {
    /// First address.
    pub fn addr(&self) -> usize {
        self.addr
    }

    /// First address as a pointer.
    pub fn ptr(&self) -> *mut u8 {
        self.addr as *mut u8
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: `mmap` rejects empty mappings.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Gives up ownership without unmapping (for callers that unmap or
    /// remap the range themselves).
    pub fn into_raw(self) -> (usize, usize) {
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: `this` is never used or dropped again, so the address
        // space reference is moved out (and released) exactly once.
        drop(unsafe { std::ptr::read(&this.aspace) });
        (this.addr, this.len)
    }
}

impl Mapping {
    /// Unmaps the mapping after its owner unmapped (or moved away) the
    /// ranges `holes` itself. `mmap` may have handed a hole to someone
    /// else since (another thread, the allocator), and unmapping it again
    /// would pull memory from under its new owner; so a hole is unmapped
    /// only if it can be mapped back here first (`MAP_FIXED_NOREPLACE`),
    /// and otherwise left alone.
    pub fn unmap_around(self, holes: &[(usize, usize)]) {
        let aspace = Arc::clone(&self.aspace);
        let (addr, len) = self.into_raw();
        let mut taken: Vec<(usize, usize)> = holes
            .iter()
            .copied()
            .filter(|&(hole, hole_len)| !map_back(hole, hole_len))
            .collect();
        taken.sort_unstable();
        let mut at = addr;
        for (hole, hole_len) in taken.into_iter().chain([(addr + len, 0)]) {
            if hole > at {
                // SAFETY: a part of this mapping between holes that others
                // may own; nothing uses it after this call. An error
                // (already unmapped) changes nothing.
                let _ = unsafe { aspace.munmap(at as *mut libc::c_void, hole - at) };
            }
            at = at.max(hole.saturating_add(hole_len));
        }
    }
}

/// Maps `[addr, addr + len)` anew unless something else is mapped there;
/// whether it is mapped (for the caller) now.
fn map_back(addr: usize, len: usize) -> bool {
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE;
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping.
    let got = unsafe { libc::mmap(addr as *mut libc::c_void, len, prot, flags, -1, 0) };
    if got == libc::MAP_FAILED {
        return false;
    }
    if got as usize != addr {
        // A kernel that takes the flag as a hint put it elsewhere.
        // SAFETY: the mapping just made, which nothing uses.
        unsafe { libc::munmap(got, len) };
        return false;
    }
    true
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping is owned by this value and nothing uses it
        // after the drop; an error (already unmapped) changes nothing.
        let _ = unsafe { self.aspace.munmap(self.addr as *mut libc::c_void, self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unmap_around_leaves_a_hole_someone_else_took_and_unmaps_the_rest() {
        let ps = page_size();
        let aspace = AddressSpace::process();
        let mapping = aspace.map_anonymous(6 * ps, 0).unwrap();
        let base = mapping.addr();
        // Two holes: one stays free, the other is mapped by "someone
        // else" (as another thread's mmap may be given it).
        let (free, taken) = (base + ps, base + 3 * ps);
        for hole in [free, taken] {
            // SAFETY: a page of this test's own mapping, unused.
            assert_eq!(unsafe { libc::munmap(hole as *mut libc::c_void, ps) }, 0);
        }
        assert!(map_back(taken, ps), "the hole is free");
        // SAFETY: the page just mapped as the other owner's.
        unsafe { (taken as *mut u8).write(0x5a) };
        mapping.unmap_around(&[(free, ps), (taken, ps)]);
        // The rest of the range is unmapped now, but another test of this
        // binary may be given it at once, so only the other owner's page
        // is checked: still mapped, still its contents.
        assert!(
            crate::sys::is_mapped(taken, ps),
            "the other owner's page stays"
        );
        // SAFETY: as above.
        assert_eq!(unsafe { (taken as *const u8).read() }, 0x5a);
        // SAFETY: the page this test mapped as the other owner.
        assert_eq!(unsafe { libc::munmap(taken as *mut libc::c_void, ps) }, 0);
    }
}
