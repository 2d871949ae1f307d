//! Protection domains and memory regions.

use std::sync::Arc;

use odp::{AddressSpace, Advice, ImplicitUmem, OdpError, Umem, UmemOptions};

use super::qp::QueuePairBuilder;
use super::{CompletionQueue, Sge, VerbsError};
use crate::device::{Device, before_odp_registration};
use crate::rc::{AccessFlags, AtomicOp, Region, RegionError};

/// The memory behind a region: a umem (ODP, or pinned: made present and
/// locked at registration), or an implicit region of the whole address
/// space.
enum MrMemory {
    Umem(Umem),
    Implicit(ImplicitUmem),
}

impl MrMemory {
    /// The memory of a registration of `[addr, addr + len)` with `access`
    /// (see [`ProtectionDomain::reg_mr`]).
    fn new(addr: usize, len: usize, access: AccessFlags) -> Result<MrMemory, VerbsError> {
        let aspace = AddressSpace::process();
        let writable = access.contains(AccessFlags::LOCAL_WRITE)
            || access.contains(AccessFlags::REMOTE_WRITE)
            || access.contains(AccessFlags::REMOTE_ATOMIC);
        let options = UmemOptions {
            writable,
            pin: !access.contains(AccessFlags::ON_DEMAND),
            record_frames: false,
        };
        let memory = if addr == 0 && len == usize::MAX {
            if !access.contains(AccessFlags::ON_DEMAND) {
                return Err(VerbsError::InvalidArgument(
                    "implicit registration needs ON_DEMAND",
                ));
            }
            MrMemory::Implicit(ImplicitUmem::new(&aspace, options))
        } else {
            let umem = Umem::new(&aspace, addr, len, options)?;
            if options.pin {
                let advice = if writable {
                    Advice::PrefetchWrite
                } else {
                    Advice::Prefetch
                };
                umem.advise(addr, len, advice)?;
            }
            MrMemory::Umem(umem)
        };
        Ok(memory)
    }
}

/// A registered region, as the device's key table holds it.
pub(crate) struct MrInner {
    pub(crate) key: u32,
    pub(crate) pd: u32,
    pub(crate) addr: u64,
    pub(crate) len: u64,
    pub(crate) access: AccessFlags,
    memory: MrMemory,
}

impl MrInner {
    /// A region with key `key` over `[addr, addr + len)`, registered as
    /// [`ProtectionDomain::reg_mr`] does but outside any device's key table
    /// (the engine's deterministic tests keep their own).
    #[cfg(test)]
    pub(crate) fn new(
        key: u32,
        pd: u32,
        addr: usize,
        len: usize,
        access: AccessFlags,
    ) -> Result<MrInner, VerbsError> {
        Ok(MrInner {
            key,
            pd,
            addr: addr as u64,
            len: len as u64,
            access,
            memory: MrMemory::new(addr, len, access)?,
        })
    }

    /// ODP counters of the region.
    fn counters(&self) -> odp::OdpCounters {
        match &self.memory {
            MrMemory::Umem(u) => u.counters(),
            MrMemory::Implicit(i) => i.counters(),
        }
    }
}

impl Region for MrInner {
    fn key(&self) -> u32 {
        self.key
    }

    /// Checks that `[va, va + len)` lies in the region, that it belongs to
    /// `pd`, and that it grants `need`.
    fn check(&self, pd: u32, va: u64, len: u64, need: AccessFlags) -> Result<(), RegionError> {
        let in_range = va >= self.addr
            && va
                .checked_add(len)
                .is_some_and(|end| end <= self.addr.saturating_add(self.len));
        if self.pd != pd || !in_range || !self.access.contains(need) {
            return Err(RegionError::Protection);
        }
        Ok(())
    }

    /// Copies memory at `va` into `dst`.
    fn read(&self, va: u64, dst: &mut [u8]) -> Result<(), RegionError> {
        if dst.is_empty() {
            return Ok(());
        }
        match &self.memory {
            MrMemory::Umem(u) => u.read(va as usize, dst)?,
            MrMemory::Implicit(i) => i.read(va as usize, dst)?,
        }
        Ok(())
    }

    /// Copies `src` into memory at `va`.
    fn write(&self, va: u64, src: &[u8]) -> Result<(), RegionError> {
        if src.is_empty() {
            return Ok(());
        }
        match &self.memory {
            MrMemory::Umem(u) => u.write(va as usize, src)?,
            MrMemory::Implicit(i) => i.write(va as usize, src)?,
        }
        Ok(())
    }

    /// Runs `op` atomically on the 8 bytes at `va`; returns the old value.
    /// Memory that vanished without an invalidation gives
    /// [`RegionError::Fault`], never a crash (the ODP layer's atomics
    /// recover from the fault as its copies do).
    fn atomic(&self, va: u64, op: AtomicOp) -> Result<u64, RegionError> {
        if !va.is_multiple_of(8) {
            return Err(RegionError::Misaligned);
        }
        // Values travel big-endian on the wire but are stored in host order
        // in memory, as rxe stores them.
        let old = match &self.memory {
            MrMemory::Umem(u) => u.atomic(va as usize, op)?,
            MrMemory::Implicit(i) => i.atomic(va as usize, op)?,
        };
        Ok(old)
    }

    fn advise(&self, va: u64, len: u64, advice: Advice) -> Result<(), OdpError> {
        match &self.memory {
            MrMemory::Umem(u) => u.advise(va as usize, len as usize, advice),
            MrMemory::Implicit(i) => i.advise(va as usize, len as usize, advice),
        }
    }
}

/// A protection domain: memory regions and queue pairs of one domain only
/// work together.
#[derive(Clone)]
pub struct ProtectionDomain {
    pub(crate) dev: Arc<Device>,
    pub(crate) id: u32,
}

impl std::fmt::Debug for ProtectionDomain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProtectionDomain")
            .field("id", &self.id)
            .finish()
    }
}

impl ProtectionDomain {
    /// Registers `[addr, addr + len)` with `access` (`ibv_reg_mr`).
    ///
    /// With [`AccessFlags::ON_DEMAND`] nothing is touched now: pages are
    /// faulted in when the device first reaches them, and `addr = 0`,
    /// `len = usize::MAX` registers the whole address space (implicit ODP).
    /// Without it the region is pinned: every page is made present
    /// (writable if any write right is given) and locked now, which fails
    /// on unmapped memory or beyond `RLIMIT_MEMLOCK`.
    ///
    /// # Safety
    /// Peers holding the rkey, and local work requests, can read and (with
    /// write rights) change this memory at any time until the region is
    /// dropped: it must not back Rust objects that other code relies on.
    ///
    /// # Errors
    /// [`VerbsError::InvalidArgument`] for an empty range, or implicit
    /// registration without `ON_DEMAND`; [`VerbsError::Odp`] if pinning
    /// fails.
    pub unsafe fn reg_mr(
        &self,
        addr: usize,
        len: usize,
        access: AccessFlags,
    ) -> Result<MemoryRegion, VerbsError> {
        if len == 0 {
            return Err(VerbsError::InvalidArgument("zero-length memory region"));
        }
        if access.contains(AccessFlags::ON_DEMAND) {
            before_odp_registration(self.dev.odp_events);
        }
        let memory = MrMemory::new(addr, len, access)?;
        let inner = self
            .dev
            .register_mr(|key| MrInner {
                key,
                pd: self.id,
                addr: addr as u64,
                len: len as u64,
                access,
                memory,
            })
            .ok_or(VerbsError::InvalidArgument("every memory key is in use"))?;
        Ok(MemoryRegion {
            inner,
            dev: Arc::clone(&self.dev),
        })
    }

    /// Prefetches the memory named by `sges` (`ibv_advise_mr`): `Prefetch`
    /// and `PrefetchWrite` fault pages in, `PrefetchNoFault` records the
    /// pages the CPU already maps.
    ///
    /// # Errors
    /// [`VerbsError::InvalidArgument`] for an unknown lkey or a range
    /// outside its region; [`VerbsError::Odp`] if faulting fails.
    pub fn advise_mr(&self, advice: Advice, sges: &[Sge]) -> Result<(), VerbsError> {
        for sge in sges {
            let mr = self
                .dev
                .lookup_mr(sge.lkey)
                .filter(|mr| {
                    mr.check(
                        self.id,
                        sge.addr,
                        u64::from(sge.length),
                        AccessFlags::empty(),
                    )
                    .is_ok()
                })
                .ok_or(VerbsError::InvalidArgument("SGE outside its memory region"))?;
            if sge.length > 0 {
                mr.advise(sge.addr, u64::from(sge.length), advice)?;
            }
        }
        Ok(())
    }

    /// Starts building a reliable-connected queue pair on this domain.
    pub fn create_qp<'a>(
        &'a self,
        send_cq: &'a CompletionQueue,
        recv_cq: &'a CompletionQueue,
    ) -> QueuePairBuilder<'a> {
        QueuePairBuilder::new(self, send_cq, recv_cq)
    }
}

/// A registered memory region; dropping it deregisters it (`ibv_dereg_mr`).
pub struct MemoryRegion {
    inner: Arc<MrInner>,
    dev: Arc<Device>,
}

impl std::fmt::Debug for MemoryRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryRegion")
            .field("key", &format_args!("{:#x}", self.inner.key))
            .field("addr", &format_args!("{:#x}", self.inner.addr))
            .field("len", &self.inner.len)
            .finish()
    }
}

impl MemoryRegion {
    /// Local key, for SGEs.
    pub fn lkey(&self) -> u32 {
        self.inner.key
    }

    /// Remote key, for peers.
    pub fn rkey(&self) -> u32 {
        self.inner.key
    }

    /// Start address.
    pub fn addr(&self) -> u64 {
        self.inner.addr
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.inner.len
    }

    /// Always false: registration rejects empty regions.
    pub fn is_empty(&self) -> bool {
        self.inner.len == 0
    }

    /// The access rights.
    pub fn access(&self) -> AccessFlags {
        self.inner.access
    }

    /// ODP counters (faults, invalidations, ...) of the region.
    pub fn odp_counters(&self) -> odp::OdpCounters {
        self.inner.counters()
    }

    /// An SGE covering `len` bytes at `offset` of the region.
    pub fn sge(&self, offset: u64, len: u32) -> Sge {
        Sge {
            addr: self.inner.addr + offset,
            length: len,
            lkey: self.inner.key,
        }
    }
}

impl Drop for MemoryRegion {
    fn drop(&mut self) {
        // No new lookups, then wait for the ones in flight (a packet being
        // processed holds a reference): after this, the device never
        // touches the memory again.
        self.dev.deregister_mr(self.inner.key);
        while Arc::strong_count(&self.inner) > 1 {
            std::thread::yield_now();
        }
    }
}
