//! Device accesses to a umem (rxe's `rxe_odp_mr_copy`).
//!
//! An access runs under the driver lock with every page it touches present
//! (and writable, for writes). Invalidations take the same lock, so an
//! access never overlaps the teardown of its pages: a change reported
//! before it happens (wrappers, interposition) waits for the access to
//! finish. Missing pages are faulted with the lock dropped, then the check
//! is repeated.
//!
//! Copies are byte-exact: they start at the in-page offset of `va` and
//! advance both sides by exactly what was copied, across page boundaries.

use crate::OdpError;
use crate::umem::Umem;

/// The direction of a device access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// The device reads the memory.
    Read,
    /// The device writes the memory.
    Write,
}

impl Umem {
    /// Runs `f(ptr, len)` for `[va, va + len)` under the driver lock, with
    /// every page present for `access`. `ptr` is `va` as a pointer; `f` may
    /// read (and, for [`Access::Write`], write) `len` bytes from it, and
    /// must not fault pages of this umem or block on another umem's lock.
    ///
    /// # Errors
    /// [`OdpError::OutOfRange`] outside the umem; otherwise the errors of
    /// [`Umem::fault`] for pages that cannot be made present. `f` does not
    /// run then, so an unmapped or protected target is never touched.
    pub fn with_range<R>(
        &self,
        va: usize,
        len: usize,
        access: Access,
        f: impl FnOnce(*mut u8, usize) -> R,
    ) -> Result<R, OdpError> {
        let (first, last) = self.inner.pages_of(va, len)?;
        let write = access == Access::Write;
        self.check_write(va, len, write)?;
        loop {
            let mut table = self.inner.lock();
            if table.all_present(first, last, write) {
                let result = f(va as *mut u8, len);
                if write {
                    table.mark_dirty(first, last);
                }
                return Ok(result);
            }
            drop(table);
            self.fault_pages(first, last, write)?;
        }
    }

    /// Copies `dst.len()` bytes of the umem at `va` into `dst` (the device
    /// reads memory: an RDMA READ response, a SEND payload).
    ///
    /// # Errors
    /// As [`Self::with_range`].
    pub fn read(&self, va: usize, dst: &mut [u8]) -> Result<(), OdpError> {
        self.with_range(va, dst.len(), Access::Read, |src, len| {
            // SAFETY: `with_range` holds the driver lock with every page of
            // `[va, va + len)` present, and `dst` is a distinct buffer of
            // `len` bytes owned by the caller.
            unsafe { std::ptr::copy_nonoverlapping(src, dst.as_mut_ptr(), len) }
        })
    }

    /// Copies `src` into the umem at `va` (the device writes memory: an
    /// RDMA WRITE, a received SEND).
    ///
    /// # Errors
    /// As [`Self::with_range`].
    pub fn write(&self, va: usize, src: &[u8]) -> Result<(), OdpError> {
        self.with_range(va, src.len(), Access::Write, |dst, len| {
            // SAFETY: `with_range` holds the driver lock with every page of
            // `[va, va + len)` present and writable, and `src` is a distinct
            // buffer of `len` bytes.
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, len) }
        })
    }
}
