//! The point of the feature: after memory is unmapped and mapped anew at
//! the same address, or discarded, the next work request gets a new
//! registration of the new pages, and the old one was unpinned; with each
//! event source (explicit wrappers, userfaultfd, interposition).

use std::sync::Arc;
use std::time::{Duration, Instant};

use odp::AddressSpace;

use super::preload::{Preload, assert_child_passed, run_child};
use super::{Region, aligned, chunk, drop_and_check, lkey_at, map, region, replace};
use crate::pin_on_demand::tests::pinner::MlockPinner;

/// How a test changes the address space: new memory at the same address
/// (an unmap and a new mapping), discard.
struct Changes<'a> {
    replace: &'a dyn Fn(usize, usize),
    discard: &'a dyn Fn(usize, usize),
    /// The source reports after the call returned (userfaultfd): wait for
    /// the invalidation.
    reports_late: bool,
}

/// Waits (bounded) until the pin `lkey` is unpinned.
fn wait_unpinned(pinner: &MlockPinner, lkey: u32, late: bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while late && pinner.is_live(lkey) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(!pinner.is_live(lkey), "the old registration is unpinned");
}

/// Checks that chunk `idx`'s registration is new (not `old`) and pins the
/// pages mapped there now.
fn assert_new_pin(region: &Region, pinner: &MlockPinner, addr: usize, old: u32) {
    let new = lkey_at(region, addr);
    assert_ne!(new, old, "a new registration");
    let record = pinner.record(new);
    assert_eq!((record.addr, record.len), (addr, chunk()));
    if pinner.frames_visible() {
        let now = pinner.frames_now(addr, chunk());
        assert!(now.iter().all(|&f| f != 0));
        assert_eq!(
            record.frames, now,
            "the new registration pins the new pages"
        );
    }
}

/// Three chunks are pinned; chunk 1 is replaced by new memory, chunk 2 is
/// discarded; chunk 0 keeps its registration.
fn remap_and_discard(aspace: &Arc<AddressSpace>, changes: Changes<'_>) {
    let (_map, base) = aligned(aspace, 3);
    let c = chunk();
    let (region, pinner) = region(aspace, base, 3 * c);
    let (pieces, token) = map(&region, base, 3 * c);
    drop(token);
    let old: Vec<u32> = pieces.iter().map(|p| p.lkey).collect();

    (changes.replace)(base + c, c);
    wait_unpinned(&pinner, old[1], changes.reports_late);
    assert_new_pin(&region, &pinner, base + c, old[1]);

    (changes.discard)(base + 2 * c, c);
    wait_unpinned(&pinner, old[2], changes.reports_late);
    assert_new_pin(&region, &pinner, base + 2 * c, old[2]);

    assert!(pinner.is_live(old[0]), "an untouched chunk keeps its pin");
    assert_eq!(lkey_at(&region, base), old[0]);
    let counters = drop_and_check(region, &pinner);
    assert_eq!(counters.forced_unpins, 0);
}

/// Plain libc `mmap(MAP_FIXED)`: fresh memory (filled with 0x5a) replaces
/// `[addr, addr + len)` in one call, the kernel unmapping the old pages
/// first (the monitor reports an unmap, as for `munmap`). Not `munmap` and
/// then a mapping in the hole: on a busy machine the hole was taken in
/// between by a guard page and 12 KiB of read-write memory, what a newly
/// started thread maps for its signal stack (the monitor's thread starts
/// just before), where the kernel found room first.
fn raw_map_over(addr: usize, len: usize) {
    // SAFETY: replaces a range of the test's own mapping that nothing
    // else uses; MAP_FIXED at the range's own address.
    let ptr = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
            -1,
            0,
        )
    };
    assert_eq!(ptr as usize, addr, "mmap over the chunk");
    // SAFETY: the mapping just made.
    unsafe { std::ptr::write_bytes(addr as *mut u8, 0x5a, len) };
}

fn raw_madvise(addr: usize, len: usize, advice: libc::c_int) {
    // SAFETY: a range of the test's own mapping; discarding zeroes
    // memory nothing reads.
    let rc = unsafe { libc::madvise(addr as *mut libc::c_void, len, advice) };
    assert_eq!(rc, 0);
}

#[test]
fn explicit_wrappers_give_the_new_pages_a_new_registration() {
    let aspace = Arc::new(AddressSpace::new_private());
    // In the shared test binary: a replacement with no hole (mremap).
    let replace = |addr, len| replace(&aspace, addr, len, 0x5a);
    let discard = |addr: usize, len: usize| {
        // SAFETY: as raw_madvise.
        unsafe { aspace.madvise(addr as *mut libc::c_void, len, libc::MADV_DONTNEED) }.unwrap();
    };
    remap_and_discard(
        &aspace,
        Changes {
            replace: &replace,
            discard: &discard,
            reports_late: false,
        },
    );
}

#[test]
fn the_userfaultfd_monitor_gives_the_new_pages_a_new_registration() {
    assert_child_passed(&run_child(
        "pin_on_demand::tests::events::child_userfaultfd",
        Preload::No,
    ));
}

#[test]
#[ignore = "runs as a child of the_userfaultfd_monitor_gives_the_new_pages_a_new_registration"]
fn child_userfaultfd() {
    // As the backend does before it creates a region.
    crate::device::before_odp_registration(crate::OdpEvents::Userfaultfd);
    let aspace = AddressSpace::process();
    assert!(aspace.userfaultfd_stats().is_some(), "monitor started");
    // Plain libc calls, which only the monitor sees. The test pinner's
    // mlock makes plain MADV_DONTNEED fail (EINVAL on locked pages), so
    // the discard uses MADV_DONTNEED_LOCKED; real registrations do not
    // lock the mapping.
    let discard = |addr, len| raw_madvise(addr, len, libc::MADV_DONTNEED_LOCKED);
    remap_and_discard(
        &aspace,
        Changes {
            replace: &raw_map_over,
            discard: &discard,
            reports_late: true,
        },
    );
    let stats = aspace.userfaultfd_stats().unwrap();
    assert!(stats.unmaps >= 1 && stats.removes >= 1, "{stats:?}");
}

#[test]
fn the_interposition_library_gives_the_new_pages_a_new_registration() {
    assert_child_passed(&run_child(
        "pin_on_demand::tests::events::child_interposition",
        Preload::Yes,
    ));
}

#[test]
#[ignore = "runs as a child of the_interposition_library_gives_the_new_pages_a_new_registration"]
fn child_interposition() {
    let aspace = AddressSpace::process();
    assert!(aspace.interposition_active(), "run with libodp_preload.so");
    assert!(aspace.userfaultfd_stats().is_none(), "no monitor");
    // Plain libc calls, interposed: reported before the change.
    let discard = |addr, len| raw_madvise(addr, len, libc::MADV_DONTNEED);
    remap_and_discard(
        &aspace,
        Changes {
            replace: &raw_map_over,
            discard: &discard,
            reports_late: false,
        },
    );
}
