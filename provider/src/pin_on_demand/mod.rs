//! Pin on demand: on-demand paging emulated for *local* access on devices
//! that have none (kernel rxe, most NICs), device-independent.
//!
//! A [`PinOnDemandRegion`] covers `[addr, addr + len)` of an
//! [`odp::AddressSpace`] without pinning anything at registration. Its page
//! table has one slot per aligned *chunk* (2 MiB by default; the first and
//! last chunk are clipped to the region's pages), and a slot holds either
//! nothing or a registration of that chunk made by a [`ChunkPinner`] (in
//! production `ibv_reg_mr`, which pins). A work request's scatter/gather
//! entries are split at chunk boundaries ([`PinOnDemandRegion::map_sge`],
//! [`map_sges`]); each piece carries the lkey of its chunk's registration,
//! and missing chunks are pinned first.
//!
//! A chunk is pinned whole (within the region): an entry fails with
//! [`PinError::Unmapped`] or [`PinError::PinRefused`] when any page of its
//! chunks cannot be pinned (a hole in the region, a read-only page of a
//! writable region), even if the entry itself avoids that page.
//!
//! # Coherence
//! The region subscribes to the address space's interval notifier like an
//! ODP umem ([`odp::Umem`]), and follows the kernel's collision-retry
//! pattern: a fault takes `read_begin`, pins with no lock held, and commits
//! under the table lock only if `read_retry` says no invalidation hit the
//! region meanwhile. The invalidation callback takes every chunk that
//! overlaps the range out of the table (new work then pins the new pages),
//! waits until no work request in flight uses them ([`InFlight`] tokens),
//! and unpins them. So once an `munmap`, `mremap` or discarding `madvise`
//! has been reported, no new work request uses the old pages, and none
//! still running does either once the invalidation returns.
//!
//! The wait is bounded ([`INVALIDATE_WAIT_LIMIT`]): past it the chunk is
//! unpinned anyway and counted ([`PodCounters::forced_unpins`]). The device
//! then fails the work request that still uses it with a protection error,
//! which is safe; waiting forever would wedge the `munmap` (a stalled peer
//! once wedged deregistration in this project). While it waits, the
//! invalidation calls the region's *drain* hook: the thread that unmaps
//! may be the one that would reap the completions, so the hook polls the
//! device's completion queues into software queues and the tokens of the
//! completed requests are released.
//!
//! A thread may still wait for an invalidation while it holds tokens of
//! earlier requests (a fault's `read_begin` sleeps while an invalidation
//! of its region runs, and that invalidation may wait for those tokens).
//! [`map_sges`] never holds a token of its own request while it faults;
//! for the earlier ones, the drain hook (which completes them from the
//! invalidating thread) and the bound are what keep this from wedging.
//!
//! # Event sources
//! Invalidations come from the address space's event sources, as for ODP
//! umems: `odp`'s explicit wrappers, the interposition library, and the
//! userfaultfd monitor. Each fault registers its chunk with the monitor
//! ([`odp::AddressSpace::watch_range`]). The backend starts the monitor
//! before creating a region exactly as the soft device does for its ODP
//! registrations, by calling `crate::device::before_odp_registration` with
//! the device's [`crate::OdpEvents`] choice. Unmaps and remaps reach the
//! monitor only after the change: a request posted in between uses the old
//! (still pinned, so never reused) pages, as with ODP umems.
//!
//! # Why only local access
//! A peer holds one rkey for the whole region and uses it for as long as
//! it likes; there is no per-chunk key to hand out, and no way to tell a
//! peer that part of a region moved. A device without ODP checks remote
//! accesses against one registration, so emulating remote ODP would mean
//! pinning the whole region up front, which is not on demand. A region
//! refuses remote access ([`PinError::RemoteAccess`]); the backend
//! registers remotely accessible memory with a plain pinned registration.

mod inflight;
mod invalidate;
#[cfg(all(test, loom))]
#[path = "tests/model.rs"]
mod model;
mod region;
mod sync;
#[cfg(all(test, not(loom)))]
mod tests;

use std::time::Duration;

pub(crate) use inflight::InFlight;
pub(crate) use region::{PinOnDemandRegion, SgeRef, map_sges};

/// Default chunk size: one registration per 2 MiB (a huge page).
pub(crate) const DEFAULT_CHUNK_SIZE: usize = 2 << 20;

/// How long an invalidation waits for work requests in flight before it
/// unpins their chunks anyway.
pub(crate) const INVALIDATE_WAIT_LIMIT: Duration = Duration::from_secs(2);

/// How often a waiting invalidation calls the drain hook while nothing
/// wakes it.
pub(crate) const DRAIN_INTERVAL: Duration = Duration::from_millis(1);

/// How long a fault keeps retrying while invalidations collide with it
/// (the kernel's `HMM_RANGE_DEFAULT_TIMEOUT` is 1 s).
pub(crate) const FAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// Pins a chunk of memory for a device and gives the key that SGEs use
/// (`ibv_reg_mr` / `ibv_dereg_mr`).
pub(crate) trait ChunkPinner: Send + Sync + 'static {
    /// The registration (an `ibv_mr` wrapper).
    type Pin: Send + Sync + 'static;

    /// Pins `[addr, addr + len)` (page-aligned), for device writes too if
    /// `writable`. Called with no lock of the region held.
    ///
    /// # Errors
    /// [`PinError::Unmapped`] when part of the range is not mapped;
    /// [`PinError::PinRefused`] for any other refusal.
    fn pin(&self, addr: usize, len: usize, writable: bool) -> Result<Self::Pin, PinError>;

    /// The local key of a registration.
    fn lkey(pin: &Self::Pin) -> u32;

    /// Deregisters; called exactly once per successful [`Self::pin`]. It
    /// may run inside an invalidation, also a non-blockable one, so it must
    /// not wait for other threads of the process.
    fn unpin(&self, pin: Self::Pin);
}

/// One piece of a scatter/gather entry, within one chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Piece {
    /// First address.
    pub(crate) addr: u64,
    /// Length in bytes (never zero).
    pub(crate) len: u32,
    /// The lkey of the chunk's registration.
    pub(crate) lkey: u32,
}

/// Called while an invalidation waits for work requests in flight: polls
/// the device's completions so that their tokens are released. It must
/// not change the address space.
pub(crate) type DrainHook = Box<dyn Fn() + Send + Sync>;

/// How a region is created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PodOptions {
    /// The device may write into the memory.
    pub(crate) writable: bool,
    /// Peers may access the memory: always refused (module comment).
    pub(crate) remote_access: bool,
    /// A power of two, at least the page size.
    pub(crate) chunk_size: usize,
}

impl Default for PodOptions {
    fn default() -> Self {
        Self {
            writable: true,
            remote_access: false,
            chunk_size: DEFAULT_CHUNK_SIZE,
        }
    }
}

/// Errors of pin-on-demand regions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PinError {
    /// An empty region, or one that wraps around the address space.
    #[error("invalid region {addr:#x} + {len:#x}")]
    InvalidRange {
        /// Requested address.
        addr: usize,
        /// Requested length.
        len: usize,
    },
    /// A chunk size that is not a power of two of at least a page.
    #[error("chunk size {0:#x} is not a power of two of at least a page")]
    BadChunkSize(usize),
    /// Remote access asked of a region that can only emulate local ODP.
    #[error("pin on demand cannot give peers access (one rkey covers the whole region)")]
    RemoteAccess,
    /// A scatter/gather entry outside the region.
    #[error("{va:#x} + {len:#x} lies outside the region [{start:#x}, {end:#x})")]
    OutOfRange {
        /// Entry address.
        va: u64,
        /// Entry length.
        len: u64,
        /// First address of the region.
        start: usize,
        /// End of the region (exclusive).
        end: usize,
    },
    /// Part of a chunk is not mapped.
    #[error("{addr:#x} + {len:#x} is not mapped")]
    Unmapped {
        /// First address of the chunk.
        addr: usize,
        /// Length of the chunk.
        len: usize,
    },
    /// The device refused the registration.
    #[error("pinning {addr:#x} + {len:#x} failed with errno {errno}")]
    PinRefused {
        /// First address of the chunk.
        addr: usize,
        /// Length of the chunk.
        len: usize,
        /// The errno of the registration.
        errno: i32,
    },
    /// A list of entries needs more pieces than the work request may carry
    /// once split at chunk boundaries.
    #[error("the entries split into {pieces} pieces, more than the {max} allowed")]
    TooManyPieces {
        /// Pieces needed.
        pieces: usize,
        /// Pieces allowed.
        max: usize,
    },
    /// Invalidations kept colliding with a fault for [`FAULT_TIMEOUT`].
    #[error("chunk at {addr:#x} kept being invalidated while it was pinned")]
    Busy {
        /// First address of the chunk.
        addr: usize,
    },
    /// The address space has been released.
    #[error("address space released")]
    Released,
    /// The notifier refused the subscription.
    #[error(transparent)]
    Notifier(#[from] odp::notifier::NotifierError),
    /// The userfaultfd source failed otherwise.
    #[error("watching {addr:#x} for unmaps failed: {error}")]
    Watch {
        /// First address of the chunk.
        addr: usize,
        /// The error.
        error: odp::OdpError,
    },
}

/// A snapshot of a region's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct PodCounters {
    /// Chunks pinned and committed.
    pub(crate) faults: u64,
    /// Pins thrown away because an invalidation collided.
    pub(crate) retries: u64,
    /// Pins thrown away because another thread committed the chunk first.
    pub(crate) lost_races: u64,
    /// Invalidate callbacks that found the region's chunks (including
    /// empty ones).
    pub(crate) invalidations: u64,
    /// Non-blockable invalidations refused (they would have had to wait).
    pub(crate) nonblocking_refusals: u64,
    /// Chunks pinned now.
    pub(crate) chunks_pinned: u64,
    /// Bytes pinned now.
    pub(crate) bytes_pinned: u64,
    /// Committed chunks unpinned (by invalidations or the region's drop).
    pub(crate) unpins: u64,
    /// Of those, chunks unpinned while work requests still used them.
    pub(crate) forced_unpins: u64,
    /// Calls of the drain hook.
    pub(crate) drain_calls: u64,
}
