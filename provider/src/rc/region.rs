//! Access to registered memory as the engine needs it: regions looked up
//! by key, checked for range and rights, and read, written and updated
//! atomically through the ODP layer. The device's key table provides the
//! regions; the verbs API's memory regions implement [`Region`].

use std::cell::RefCell;
use std::sync::Arc;

pub(crate) use odp::AtomicOp;

bitflags::bitflags! {
    /// Access rights of a memory region (verbs' `IBV_ACCESS_*`, same bit
    /// values).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
    pub struct AccessFlags: u32 {
        /// The local device may write (receives, read results).
        const LOCAL_WRITE = 1;
        /// Peers may RDMA WRITE.
        const REMOTE_WRITE = 2;
        /// Peers may RDMA READ.
        const REMOTE_READ = 4;
        /// Peers may run atomics.
        const REMOTE_ATOMIC = 8;
        /// On-demand paging: nothing is pinned or faulted at registration.
        const ON_DEMAND = 0x40;
    }
}

/// Why an access to a region failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RegionError {
    /// Outside the region, wrong protection domain, or missing right.
    #[error("outside the region, wrong protection domain or missing right")]
    Protection,
    /// The memory is unmapped or protected (a fault the ODP layer
    /// reported).
    #[error("memory unmapped or protected")]
    Fault,
    /// A misaligned atomic.
    #[error("misaligned atomic")]
    Misaligned,
}

impl From<odp::OdpError> for RegionError {
    fn from(_: odp::OdpError) -> Self {
        RegionError::Fault
    }
}

/// A registered memory region as the engine accesses it.
pub(crate) trait Region: Send + Sync {
    /// The region's local and remote key.
    fn key(&self) -> u32;

    /// Checks that `[va, va + len)` lies in the region, that it belongs to
    /// `pd`, and that it grants `need`.
    fn check(&self, pd: u32, va: u64, len: u64, need: AccessFlags) -> Result<(), RegionError>;

    /// Copies memory at `va` into `dst`.
    fn read(&self, va: u64, dst: &mut [u8]) -> Result<(), RegionError>;

    /// Copies `src` into memory at `va`.
    fn write(&self, va: u64, src: &[u8]) -> Result<(), RegionError>;

    /// Runs `op` atomically on the 8 bytes at `va` (8-byte aligned, else
    /// [`RegionError::Misaligned`]); returns the old value. Memory that
    /// vanished without an invalidation gives [`RegionError::Fault`],
    /// never a crash.
    fn atomic(&self, va: u64, op: AtomicOp) -> Result<u64, RegionError>;

    /// Prefetches `[va, va + len)` as `advice` says (`ibv_advise_mr`).
    fn advise(&self, va: u64, len: u64, advice: odp::Advice) -> Result<(), odp::OdpError>;
}

/// What the engine needs from the device: memory regions by key.
pub(crate) trait Regions {
    /// The region with local/remote key `key`, if registered. A region is
    /// not torn down while a returned reference is alive.
    fn lookup_mr(&self, key: u32) -> Option<Arc<dyn Region>>;
}

/// [`Regions`] that remember the last region found, for a batch of work
/// whose pieces name the same key (one received batch, one post call): a
/// table lookup costs a read lock, which dominates a small packet's
/// handling. Keep one only for that batch: it holds a reference, which
/// a deregistration waits for.
pub(crate) struct CachedRegions<'a> {
    regions: &'a dyn Regions,
    last: RefCell<Option<Arc<dyn Region>>>,
}

impl<'a> CachedRegions<'a> {
    pub(crate) fn new(regions: &'a dyn Regions) -> Self {
        Self {
            regions,
            last: RefCell::new(None),
        }
    }
}

impl Regions for CachedRegions<'_> {
    fn lookup_mr(&self, key: u32) -> Option<Arc<dyn Region>> {
        let mut last = self.last.borrow_mut();
        if let Some(mr) = last.as_ref()
            && mr.key() == key
        {
            return Some(Arc::clone(mr));
        }
        let mr = self.regions.lookup_mr(key)?;
        *last = Some(Arc::clone(&mr));
        Some(mr)
    }
}
