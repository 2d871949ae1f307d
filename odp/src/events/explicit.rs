//! The explicit wrappers: system calls that change the address space, made
//! through the library so that the change is reported before it happens.

use std::io;

use super::Change;
use crate::address_space::AddressSpace;

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

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
