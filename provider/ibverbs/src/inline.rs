//! Inline sends (`IBV_SEND_INLINE`): the payload is copied out of the
//! application's buffers when the request is posted, so those buffers
//! need no memory key and may be reused at once.
//!
//! Each queue pair that asks for inline data gets a ring of
//! `max_send_wr + 1` slots in a region of its own. RC completes requests
//! in order and at most `max_send_wr` are outstanding, so the slot about
//! to be filled belonged to a request that has completed, even when the
//! post then fails because the queue is full.

use std::sync::atomic::{AtomicUsize, Ordering};

use provider::{AccessFlags, MemoryRegion, ProtectionDomain, Sge};

use crate::sys::ibv_sge;

/// The largest inline payload.
pub(crate) const MAX_INLINE: u32 = 256;

/// Heap memory reached only through its pointer, never as a Rust
/// reference (the device reads it concurrently).
struct RawBytes {
    base: *mut u8,
    len: usize,
}

impl RawBytes {
    fn new(len: usize) -> RawBytes {
        let base = Box::into_raw(vec![0u8; len].into_boxed_slice()).cast::<u8>();
        RawBytes { base, len }
    }
}

impl Drop for RawBytes {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` as a boxed slice of `len` bytes.
        drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(self.base, self.len)) });
    }
}

/// A ring of inline payload slots.
pub(crate) struct InlineRing {
    /// Registered over `memory`; declared first so that it is dropped (the
    /// device done with the memory) before the memory is freed.
    mr: MemoryRegion,
    memory: RawBytes,
    slots: usize,
    next: AtomicUsize,
}

// SAFETY: the ring's memory is only written through `base` in slots that
// no outstanding request uses, and `next` hands each slot to one poster.
unsafe impl Send for InlineRing {}
// SAFETY: as above.
unsafe impl Sync for InlineRing {}

impl InlineRing {
    /// A ring for a queue of `max_send_wr` requests.
    pub(crate) fn new(pd: &ProtectionDomain, max_send_wr: u32) -> Result<InlineRing, i32> {
        let slots = max_send_wr as usize + 1;
        let len = slots * MAX_INLINE as usize;
        let memory = RawBytes::new(len);
        let addr = memory.base as usize;
        // SAFETY: the memory is ours, only reached through its pointer by
        // this ring, and freed after the region.
        let mr = unsafe { pd.reg_mr(addr, len, AccessFlags::empty()) }
            // SAFETY: as above; ODP when pinning is refused (memlock limit).
            .or_else(|_| unsafe { pd.reg_mr(addr, len, AccessFlags::ON_DEMAND) })
            .map_err(|e| crate::errno::errno_of(&e))?;
        Ok(InlineRing {
            mr,
            memory,
            slots,
            next: AtomicUsize::new(0),
        })
    }

    /// Copies the payload the SGEs name into the next slot; the SGE that
    /// covers it. `EINVAL` if it exceeds [`MAX_INLINE`].
    ///
    /// # Safety
    /// Every SGE names readable memory of the application.
    pub(crate) unsafe fn stage(&self, sges: &[ibv_sge]) -> Result<Sge, i32> {
        let total: u64 = sges.iter().map(|s| u64::from(s.length)).sum();
        if total > u64::from(MAX_INLINE) {
            return Err(libc::EINVAL);
        }
        let slot = self.next.fetch_add(1, Ordering::Relaxed) % self.slots;
        // SAFETY: the slot lies inside the ring's allocation.
        let dst = unsafe { self.memory.base.add(slot * MAX_INLINE as usize) };
        let mut offset = 0;
        for s in sges {
            // SAFETY: the caller vouches for the source; the destination
            // slot has MAX_INLINE bytes and total fits.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    s.addr as *const u8,
                    dst.add(offset),
                    s.length as usize,
                )
            };
            offset += s.length as usize;
        }
        Ok(Sge {
            addr: dst as u64,
            length: total as u32,
            lkey: self.mr.lkey(),
        })
    }
}
