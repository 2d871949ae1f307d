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

use std::sync::{MutexGuard, RwLockReadGuard};

use crate::OdpError;
use crate::page_table::PageTable;
use crate::safe_atomic::{AtomicOp, atomic_nofault};
use crate::safe_copy::{CopyFault, FaultKind, copy_nofault};
use crate::umem::Umem;

/// The direction of a device access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// The device reads the memory.
    Read,
    /// The device writes the memory.
    Write,
}

/// What a device access holds while it touches memory.
struct DeviceView<'a> {
    table: MutexGuard<'a, PageTable>,
    _gate: Option<RwLockReadGuard<'a, ()>>,
}

impl Umem {
    /// Takes the driver lock with every page of `[first, last]` present
    /// (and writable for `write`), faulting with the lock dropped as often
    /// as needed (rxe's `rxe_odp_map_range_and_lock`).
    ///
    /// With the userfaultfd source on, the gate is taken (shared) before the
    /// driver lock, and never while faulting: a fault may sleep in
    /// `read_begin` on an invalidation whose system call is waiting for the
    /// monitor, which waits for the gate.
    // Inlined: its result, read back from the stack right after it was
    // written, stalled every device access.
    #[inline(always)]
    fn lock_present(
        &self,
        first: usize,
        last: usize,
        write: bool,
    ) -> Result<DeviceView<'_>, OdpError> {
        loop {
            let gate = self.inner.aspace.device_gate();
            let table = self.inner.lock();
            if table.all_present(first, last, write) {
                return Ok(DeviceView { table, _gate: gate });
            }
            drop(table);
            drop(gate);
            self.fault_pages(first, last, write)?;
        }
    }

    /// Runs `f(ptr, len)` for `[va, va + len)` under the driver lock, with
    /// every page present for `access`. `ptr` is `va` as a pointer; `f` may
    /// read (and, for [`Access::Write`], write) `len` bytes from it, and
    /// must not fault pages of this umem or block on another umem's lock.
    ///
    /// `f` touches the memory directly, so it is only safe against changes
    /// that are reported before they happen (the wrappers, interposition,
    /// userfaultfd's discard); handing the range to the kernel (`sendmsg`,
    /// `writev`) is safe in any case, since the kernel reports `EFAULT`.
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
        let mut view = self.lock_present(first, last, write)?;
        let result = f(va as *mut u8, len);
        if write {
            view.table.mark_dirty(first, last);
        }
        Ok(result)
    }

    /// Copies `dst.len()` bytes of the umem at `va` into `dst` (the device
    /// reads memory: an RDMA READ response, a SEND payload).
    ///
    /// # Errors
    /// As [`Self::with_range`], and [`OdpError::Unmapped`] or
    /// [`OdpError::AccessDenied`] if the memory went away during the copy
    /// without an invalidation first.
    pub fn read(&self, va: usize, dst: &mut [u8]) -> Result<(), OdpError> {
        let dst_ptr = dst.as_mut_ptr();
        self.copy(va, dst.len(), Access::Read, |mr, len| {
            // SAFETY: `dst` is a distinct buffer of `len` bytes owned by the
            // caller; the umem side may fault, which copy_nofault reports.
            unsafe { copy_nofault(dst_ptr, mr, len) }
        })
    }

    /// Copies `src` into the umem at `va` (the device writes memory: an
    /// RDMA WRITE, a received SEND).
    ///
    /// # Errors
    /// As [`Self::read`].
    pub fn write(&self, va: usize, src: &[u8]) -> Result<(), OdpError> {
        self.copy(va, src.len(), Access::Write, |mr, len| {
            // SAFETY: `src` is a distinct buffer of `len` bytes; the umem side
            // may fault, which copy_nofault reports.
            unsafe { copy_nofault(mr, src.as_ptr(), len) }
        })
    }

    /// Runs the RDMA atomic `op` on the 8 bytes at `va` (a remote
    /// FETCH_ADD or COMPARE_SWAP); returns the old value.
    ///
    /// # Errors
    /// [`OdpError::Misaligned`] unless `va` is 8-byte aligned; otherwise as
    /// [`Self::write`]: memory that went away without an invalidation gives
    /// an error, never a crash, and is left unchanged.
    pub fn atomic(&self, va: usize, op: AtomicOp) -> Result<u64, OdpError> {
        if !va.is_multiple_of(8) {
            return Err(OdpError::Misaligned { va });
        }
        self.copy(va, 8, Access::Write, |mr, _| {
            // SAFETY: `mr` is 8-byte aligned (checked above) application
            // memory, not a Rust object; other writers to it are expected
            // to use atomics too, as with hardware RDMA atomics. It may
            // fault, which atomic_nofault reports.
            unsafe { atomic_nofault(mr.cast(), op) }.map_err(|kind| CopyFault { copied: 0, kind })
        })
    }

    /// A device copy under the driver lock with every page present. A fault
    /// there means the address space changed without an invalidation
    /// first: an event source that reports after the fact (userfaultfd's
    /// unmap), or none at all. The copy then fails instead of crashing, and
    /// the stale entries are dropped so that the next access faults afresh.
    fn copy<R>(
        &self,
        va: usize,
        len: usize,
        access: Access,
        copy: impl FnOnce(*mut u8, usize) -> Result<R, CopyFault>,
    ) -> Result<R, OdpError> {
        let (first, last) = self.inner.pages_of(va, len)?;
        let write = access == Access::Write;
        self.check_write(va, len, write)?;
        let mut view = self.lock_present(first, last, write)?;
        let fault = match copy(va as *mut u8, len) {
            Ok(result) => {
                if write {
                    view.table.mark_dirty(first, last);
                }
                return Ok(result);
            }
            Err(fault) => fault,
        };
        self.inner.drop_stale(&mut view.table, first, last);
        drop(view);
        let va = va + fault.copied;
        let len = len - fault.copied;
        Err(match fault.kind {
            FaultKind::Denied => OdpError::AccessDenied { va, len, write },
            FaultKind::Unmapped | FaultKind::Bus | FaultKind::NoHandler => {
                OdpError::Unmapped { va, len }
            }
        })
    }
}
