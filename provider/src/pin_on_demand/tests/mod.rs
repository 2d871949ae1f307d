//! Tests of pin on demand, with a real pinner (`mlock`) and real address
//! space changes. No RDMA device is needed.
//!
//! Most tests use a private address space (only its explicit wrappers
//! report changes), so they cannot disturb the rest of this test binary;
//! the tests of the userfaultfd monitor and the interposition library run
//! in child processes on the process address space.

mod basic;
mod events;
mod pinner;
#[allow(dead_code)] // the helpers of odp's own tests too
#[path = "../../../../odp/tests/common/mod.rs"]
mod preload;
mod stress;
mod waits;

use std::sync::Arc;

use odp::{AddressSpace, Mapping};

use super::{InFlight, Piece, PinOnDemandRegion, PodOptions};
use pinner::{MlockPinner, page};

/// The chunk size of most tests: four pages, so that a few pages of memory
/// make several chunks.
fn chunk() -> usize {
    4 * page()
}

/// Anonymous memory of `chunks` chunks, aligned to the chunk size: the
/// mapping (which owns one chunk more) and the aligned base.
fn aligned(aspace: &Arc<AddressSpace>, chunks: usize) -> (Mapping, usize) {
    let map = aspace
        .map_anonymous((chunks + 1) * chunk(), 0)
        .expect("mmap");
    let base = (map.addr() + chunk() - 1) & !(chunk() - 1);
    (map, base)
}

type Region = PinOnDemandRegion<MlockPinner>;

/// A region over `[addr, addr + len)` with the test chunk size and a drain
/// hook that does nothing.
fn region(aspace: &Arc<AddressSpace>, addr: usize, len: usize) -> (Region, Arc<MlockPinner>) {
    region_with(aspace, addr, len, Box::new(|| {}))
}

fn region_with(
    aspace: &Arc<AddressSpace>,
    addr: usize,
    len: usize,
    drain: super::DrainHook,
) -> (Region, Arc<MlockPinner>) {
    let pinner = Arc::new(MlockPinner::new(aspace.frames_visible()));
    let options = PodOptions {
        chunk_size: chunk(),
        ..PodOptions::default()
    };
    let region = PinOnDemandRegion::new(aspace, addr, len, Arc::clone(&pinner), options, drain)
        .expect("region");
    (region, pinner)
}

/// Maps `[va, va + len)`; returns the pieces and the token.
fn map(region: &Region, va: usize, len: usize) -> (Vec<Piece>, InFlight) {
    let mut pieces = Vec::new();
    let token = region
        .map_sge(va as u64, len as u32, &mut pieces)
        .expect("map_sge");
    (pieces, token)
}

/// The lkey the region uses for the chunk holding `va` now.
fn lkey_at(region: &Region, va: usize) -> u32 {
    let (pieces, _token) = map(region, va, 1);
    pieces[0].lkey
}

/// Replaces `[addr, addr + len)` with new memory holding `fill`, through
/// the explicit wrapper of `mremap` (a new mapping moved onto the range):
/// the old pages go and new ones appear at the same address, with no hole
/// in between that another thread could map.
fn replace(aspace: &Arc<AddressSpace>, addr: usize, len: usize, fill: u8) {
    let fresh = aspace.map_anonymous(len, 0).expect("mmap");
    // SAFETY: the new mapping, which nothing else uses.
    unsafe { std::ptr::write_bytes(fresh.ptr(), fill, len) };
    let (from, _) = fresh.into_raw();
    let flags = libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED;
    // SAFETY: moves the test's own new mapping over a range of the test's
    // own mapping, whose old contents nothing uses any more.
    let to = unsafe { aspace.mremap(from as *mut _, len, len, flags, addr as *mut _) };
    assert_eq!(to.expect("mremap") as usize, addr);
}

/// Drops the region and checks that every pin was unpinned exactly once,
/// and that the region's counters agree with the pinner's records.
fn drop_and_check(region: Region, pinner: &MlockPinner) -> super::PodCounters {
    let inner = Arc::clone(&region.inner);
    drop(region);
    let counters = inner.counters.snapshot();
    let (made, live, double) = pinner.totals();
    assert_eq!((live, double), (0, 0), "pins left or unpinned twice");
    assert_eq!(
        made as u64,
        counters.faults + counters.retries + counters.lost_races,
        "every pin is committed or thrown away: {counters:?}"
    );
    assert_eq!(counters.unpins, counters.faults, "{counters:?}");
    assert_eq!((counters.chunks_pinned, counters.bytes_pinned), (0, 0));
    counters
}
