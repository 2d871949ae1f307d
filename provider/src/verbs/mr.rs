//! Protection domains and memory regions.

use std::sync::Arc;

use odp::{AddressSpace, Advice, ImplicitUmem, OdpError, Umem, UmemOptions};

use super::qp::QueuePairBuilder;
use super::{CompletionQueue, MrOptions, OdpMode, Sge, VerbsError};
use crate::device::{Device, before_odp_registration};
use crate::rc::{AccessFlags, AtomicOp, Region, RegionError};
#[cfg(feature = "rdma-core")]
use crate::rdma_core::{RdmaMr, RdmaPd};

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
    pub(crate) imp: PdImpl,
}

/// The backend of a protection domain.
#[derive(Clone)]
pub(crate) enum PdImpl {
    /// A domain of the userspace device.
    User { dev: Arc<Device>, id: u32 },
    /// A verbs device's `ibv_pd`.
    #[cfg(feature = "rdma-core")]
    Rdma(Arc<RdmaPd>),
}

impl std::fmt::Debug for ProtectionDomain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("ProtectionDomain");
        match &self.imp {
            PdImpl::User { id, .. } => d.field("id", id),
            #[cfg(feature = "rdma-core")]
            PdImpl::Rdma(pd) => d.field("device", &pd.ctx.name),
        };
        d.finish()
    }
}

impl ProtectionDomain {
    /// A new domain of the userspace device `dev`.
    pub(crate) fn user(dev: &Arc<Device>) -> ProtectionDomain {
        ProtectionDomain {
            imp: PdImpl::User {
                id: dev.new_pd(),
                dev: Arc::clone(dev),
            },
        }
    }

    /// A new domain of the verbs device `ctx`.
    #[cfg(feature = "rdma-core")]
    pub(crate) fn rdma(
        ctx: &Arc<crate::rdma_core::RdmaContext>,
    ) -> Result<ProtectionDomain, VerbsError> {
        Ok(ProtectionDomain {
            imp: PdImpl::Rdma(RdmaPd::new(ctx)?),
        })
    }

    /// Registers `[addr, addr + len)` with `access` (`ibv_reg_mr`), with
    /// the default [`MrOptions`].
    ///
    /// With [`AccessFlags::ON_DEMAND`] nothing is touched now: pages are
    /// faulted in when the device first reaches them, and `addr = 0`,
    /// `len = usize::MAX` registers the whole address space (implicit ODP).
    /// Without it the region is pinned: every page is made present
    /// (writable if any write right is given) and locked now, which fails
    /// on unmapped memory or beyond `RLIMIT_MEMLOCK`.
    ///
    /// On a verbs device an `ON_DEMAND` region takes the mode the device
    /// chooses (see [`Self::reg_mr_with`]).
    ///
    /// # Safety
    /// Peers holding the rkey, and local work requests, can read and (with
    /// write rights) change this memory at any time until the region is
    /// dropped: it must not back Rust objects that other code relies on.
    ///
    /// # Errors
    /// [`VerbsError::InvalidArgument`] for an empty range, or implicit
    /// registration without `ON_DEMAND`; [`VerbsError::Odp`] if pinning
    /// fails; as [`Self::reg_mr_with`] on a verbs device.
    pub unsafe fn reg_mr(
        &self,
        addr: usize,
        len: usize,
        access: AccessFlags,
    ) -> Result<MemoryRegion, VerbsError> {
        // SAFETY: the caller's promise, passed on.
        unsafe { self.reg_mr_with(addr, len, access, &MrOptions::default()) }
    }

    /// Registers `[addr, addr + len)` with `access` and `options`.
    ///
    /// The userspace device serves `ON_DEMAND` regions with its own ODP
    /// ([`OdpMode::Native`]). On a verbs device an `ON_DEMAND` region is
    /// [`OdpMode::PassThrough`] if the device's RC ODP covers the access
    /// and its self-check passed (the check runs at the first such
    /// registration); otherwise local-only access gives
    /// [`OdpMode::PinOnDemand`], and remote access is refused with
    /// [`VerbsError::OdpUnavailable`] unless `pin_whole_fallback` asks for
    /// [`OdpMode::PinnedWhole`]. A forced `odp_mode` skips the self-check's
    /// verdict (so a test can show a device's ODP corrupting data); a mode
    /// the device cannot do is refused. Implicit ODP exists on a verbs
    /// device only by pass-through, where the device reports it.
    ///
    /// # Safety
    /// As [`Self::reg_mr`].
    ///
    /// # Errors
    /// As [`Self::reg_mr`]; [`VerbsError::OdpUnavailable`] as above;
    /// [`VerbsError::DeviceCall`] when the verbs device refuses.
    pub unsafe fn reg_mr_with(
        &self,
        addr: usize,
        len: usize,
        access: AccessFlags,
        options: &MrOptions,
    ) -> Result<MemoryRegion, VerbsError> {
        match &self.imp {
            PdImpl::User { dev, id } => {
                let on_demand = access.contains(AccessFlags::ON_DEMAND);
                if on_demand && !matches!(options.odp_mode, None | Some(OdpMode::Native)) {
                    return Err(VerbsError::OdpUnavailable(
                        "the userspace device serves ON_DEMAND regions with its own ODP only",
                    ));
                }
                let mr = UserMr::register(dev, *id, addr, len, access)?;
                Ok(MemoryRegion {
                    imp: MrImpl::User(mr),
                })
            }
            #[cfg(feature = "rdma-core")]
            PdImpl::Rdma(pd) => Ok(MemoryRegion {
                // SAFETY: the caller's promise, passed on.
                imp: MrImpl::Rdma(unsafe { RdmaMr::register(pd, addr, len, access, options) }?),
            }),
        }
    }

    /// Prefetches the memory named by `sges` (`ibv_advise_mr`): `Prefetch`
    /// and `PrefetchWrite` fault pages in, `PrefetchNoFault` records the
    /// pages the CPU already maps.
    ///
    /// # Errors
    /// [`VerbsError::InvalidArgument`] for an unknown lkey or a range
    /// outside its region; [`VerbsError::Odp`] if faulting fails; on a
    /// verbs device [`VerbsError::OdpUnavailable`] if it does not
    /// implement advise_mr (kernel rxe), else its error.
    pub fn advise_mr(&self, advice: Advice, sges: &[Sge]) -> Result<(), VerbsError> {
        let (dev, id) = match &self.imp {
            PdImpl::User { dev, id } => (dev, *id),
            #[cfg(feature = "rdma-core")]
            PdImpl::Rdma(pd) => return crate::rdma_core::advise(pd, advice, sges),
        };
        for sge in sges {
            let mr = dev
                .lookup_mr(sge.lkey)
                .filter(|mr| {
                    mr.check(id, sge.addr, u64::from(sge.length), AccessFlags::empty())
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

/// A region of the userspace device; dropping it deregisters it.
struct UserMr {
    inner: Arc<MrInner>,
    dev: Arc<Device>,
}

impl UserMr {
    /// Registers with the userspace device's key table.
    fn register(
        dev: &Arc<Device>,
        pd: u32,
        addr: usize,
        len: usize,
        access: AccessFlags,
    ) -> Result<UserMr, VerbsError> {
        if len == 0 {
            return Err(VerbsError::InvalidArgument("zero-length memory region"));
        }
        if access.contains(AccessFlags::ON_DEMAND) {
            before_odp_registration(dev.odp_events);
        }
        let memory = MrMemory::new(addr, len, access)?;
        let inner = dev
            .register_mr(|key| MrInner {
                key,
                pd,
                addr: addr as u64,
                len: len as u64,
                access,
                memory,
            })
            .ok_or(VerbsError::InvalidArgument("every memory key is in use"))?;
        Ok(UserMr {
            inner,
            dev: Arc::clone(dev),
        })
    }
}

impl Drop for UserMr {
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

/// A registered memory region; dropping it deregisters it (`ibv_dereg_mr`).
pub struct MemoryRegion {
    imp: MrImpl,
}

/// The backend of a region.
enum MrImpl {
    User(UserMr),
    #[cfg(feature = "rdma-core")]
    Rdma(RdmaMr),
}

impl std::fmt::Debug for MemoryRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryRegion")
            .field("lkey", &format_args!("{:#x}", self.lkey()))
            .field("addr", &format_args!("{:#x}", self.addr()))
            .field("len", &self.len())
            .field("odp_mode", &self.odp_mode())
            .finish()
    }
}

impl MemoryRegion {
    /// Local key, for SGEs.
    pub fn lkey(&self) -> u32 {
        match &self.imp {
            MrImpl::User(u) => u.inner.key,
            #[cfg(feature = "rdma-core")]
            MrImpl::Rdma(r) => r.lkey(),
        }
    }

    /// Remote key, for peers.
    pub fn rkey(&self) -> u32 {
        match &self.imp {
            MrImpl::User(u) => u.inner.key,
            #[cfg(feature = "rdma-core")]
            MrImpl::Rdma(r) => r.rkey(),
        }
    }

    /// Start address.
    pub fn addr(&self) -> u64 {
        match &self.imp {
            MrImpl::User(u) => u.inner.addr,
            #[cfg(feature = "rdma-core")]
            MrImpl::Rdma(r) => r.addr,
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        match &self.imp {
            MrImpl::User(u) => u.inner.len,
            #[cfg(feature = "rdma-core")]
            MrImpl::Rdma(r) => r.len,
        }
    }

    /// Always false: registration rejects empty regions.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The access rights.
    pub fn access(&self) -> AccessFlags {
        match &self.imp {
            MrImpl::User(u) => u.inner.access,
            #[cfg(feature = "rdma-core")]
            MrImpl::Rdma(r) => r.access,
        }
    }

    /// How the region's pages are served: `None` for a plain pinned
    /// registration, else its [`OdpMode`].
    pub fn odp_mode(&self) -> Option<OdpMode> {
        match &self.imp {
            MrImpl::User(u) => u
                .inner
                .access
                .contains(AccessFlags::ON_DEMAND)
                .then_some(OdpMode::Native),
            #[cfg(feature = "rdma-core")]
            MrImpl::Rdma(r) => r.odp_mode(),
        }
    }

    /// ODP counters (faults, invalidations, ...) of the region; zeros for
    /// a verbs device's region other than pin-on-demand (the kernel keeps
    /// its own).
    pub fn odp_counters(&self) -> odp::OdpCounters {
        match &self.imp {
            MrImpl::User(u) => u.inner.counters(),
            #[cfg(feature = "rdma-core")]
            MrImpl::Rdma(r) => r.odp_counters(),
        }
    }

    /// An SGE covering `len` bytes at `offset` of the region.
    pub fn sge(&self, offset: u64, len: u32) -> Sge {
        Sge {
            addr: self.addr() + offset,
            length: len,
            lkey: self.lkey(),
        }
    }
}
