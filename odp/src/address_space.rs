//! One process address space as the ODP layer sees it: the notifier
//! subscriptions of every umem in it, and the explicit wrappers that change
//! the address space with an invalidation around the change.
//!
//! Every change to memory a umem covers must be reported to the notifier
//! *before* it happens, so that device translations are gone before the
//! pages are. The wrappers here do that for callers that use them; the
//! interposition hooks and the userfaultfd monitor cover callers that do not.

use std::io;
use std::sync::{Arc, OnceLock};

use notifier::{Event, Invalidation, NotifierRange, Subscriptions};

use crate::sys::{Pagemap, page_size};

/// The address space of this process (or, for tests, a private stand-in).
#[derive(Debug)]
pub struct AddressSpace {
    subscriptions: Arc<Subscriptions>,
    pagemap: Pagemap,
}

impl AddressSpace {
    /// The address space of this process: the one the event sources report
    /// to. Created on first use and never freed.
    pub fn process() -> Arc<AddressSpace> {
        static PROCESS: OnceLock<Arc<AddressSpace>> = OnceLock::new();
        Arc::clone(PROCESS.get_or_init(|| Arc::new(AddressSpace::new_private())))
    }

    /// A private address space that no event source reports to: changes are
    /// seen only through its own wrappers. For tests and tools that want
    /// isolation from the rest of the process.
    pub fn new_private() -> AddressSpace {
        AddressSpace {
            subscriptions: Subscriptions::new(),
            pagemap: Pagemap::open(),
        }
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

    /// `munmap` with the invalidation around it.
    ///
    /// # Safety
    /// As `munmap(2)`: nothing may use the range afterwards.
    ///
    /// # Errors
    /// The `munmap` error.
    pub unsafe fn munmap(&self, addr: *mut libc::c_void, len: usize) -> io::Result<()> {
        let _inv = self.invalidate(addr as usize, len, Event::Unmap);
        // SAFETY: the caller's contract.
        check(unsafe { libc::munmap(addr, len) })
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
        let old = old as usize;
        let _moved = if flags & libc::MREMAP_MAYMOVE != 0 {
            self.invalidate(old, old_len, Event::Remap)
        } else if new_len < old_len {
            self.invalidate(old + new_len, old_len - new_len, Event::Remap)
        } else {
            None
        };
        let _replaced = if flags & libc::MREMAP_FIXED != 0 {
            self.invalidate(new_addr as usize, new_len, Event::Unmap)
        } else {
            None
        };
        // SAFETY: the caller's contract.
        let ptr =
            unsafe { libc::mremap(old as *mut libc::c_void, old_len, new_len, flags, new_addr) };
        if ptr == libc::MAP_FAILED {
            Err(io::Error::last_os_error())
        } else {
            Ok(ptr)
        }
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
        let _inv = discards_contents(advice)
            .then(|| self.invalidate(addr as usize, len, Event::Clear))
            .flatten();
        // SAFETY: the caller's contract.
        check(unsafe { libc::madvise(addr, len, advice) })
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
        let _inv = self.invalidate(addr as usize, len, Event::ProtectionVma);
        // SAFETY: the caller's contract.
        check(unsafe { libc::mprotect(addr, len, prot) })
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

/// Whether `madvise` with `advice` discards or replaces page contents.
pub(crate) fn discards_contents(advice: libc::c_int) -> bool {
    matches!(
        advice,
        libc::MADV_DONTNEED | libc::MADV_DONTNEED_LOCKED | libc::MADV_FREE | libc::MADV_REMOVE
    )
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

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
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

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping is owned by this value and nothing uses it
        // after the drop; an error (already unmapped) changes nothing.
        let _ = unsafe { self.aspace.munmap(self.addr as *mut libc::c_void, self.len) };
    }
}
