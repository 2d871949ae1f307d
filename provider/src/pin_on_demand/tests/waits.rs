//! Invalidations and work requests in flight: the wait, its bound, the
//! drain hook, and non-blockable invalidations.

use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use odp::AddressSpace;
use odp::notifier::{Event, NotifierError, NotifierRange};

use super::{aligned, chunk, drop_and_check, lkey_at, map, region, region_with};
use crate::pin_on_demand::{InFlight, PinError};

/// Unmaps `[addr, addr + len)` through the explicit wrapper.
fn munmap(aspace: &AddressSpace, addr: usize, len: usize) {
    // SAFETY: a range of the test's own mapping that nothing uses after.
    unsafe { aspace.munmap(addr as *mut libc::c_void, len) }.expect("munmap");
}

#[test]
fn an_unmap_waits_for_the_work_request_that_uses_the_chunk() {
    let aspace = Arc::new(AddressSpace::new_private());
    let (mapping, base) = aligned(&aspace, 2);
    let c = chunk();
    let (region, pinner) = region(&aspace, base, 2 * c);
    let (pieces, token) = map(&region, base + c, 8);
    let old = pieces[0].lkey;

    let unmapper = {
        let aspace = Arc::clone(&aspace);
        thread::spawn(move || munmap(&aspace, base + c, c))
    };
    // The unmap cannot finish while the token is held (a sleep can only
    // make this check pass wrongly, never fail wrongly).
    thread::sleep(Duration::from_millis(100));
    assert!(
        !unmapper.is_finished(),
        "munmap returned under a work request"
    );
    assert!(pinner.is_live(old));
    token.complete();
    unmapper.join().unwrap();
    assert!(!pinner.is_live(old), "unpinned once the request completed");
    let counters = region.counters();
    assert_eq!((counters.forced_unpins, counters.unpins), (0, 1));

    // The hole is not mapped for the device either. Other tests of this
    // binary map memory concurrently and may be given the hole: a pin
    // that succeeds is right only if the range is mapped again.
    let mut pieces = vec![];
    match region.map_sge((base + c) as u64, 8, &mut pieces) {
        Err(e) => assert_eq!(
            e,
            PinError::Unmapped {
                addr: base + c,
                len: c
            }
        ),
        Ok(token) => {
            assert!(odp::is_mapped(base + c, c), "the hole was pinned");
            drop(token);
        }
    }
    drop_and_check(region, &pinner);
    mapping.unmap_around(&[(base + c, c)]);
}

#[test]
fn a_request_that_never_completes_delays_the_unmap_only_up_to_the_bound() {
    let aspace = Arc::new(AddressSpace::new_private());
    let (mapping, base) = aligned(&aspace, 1);
    let (region, pinner) = region(&aspace, base, chunk());
    let (pieces, stuck) = map(&region, base, 8);
    munmap(&aspace, base, chunk());
    // munmap returned with the request still in flight: forced.
    assert!(!pinner.is_live(pieces[0].lkey));
    let counters = region.counters();
    assert_eq!((counters.forced_unpins, counters.unpins), (1, 1));
    assert!(counters.drain_calls > 0);
    // The late completion unpins nothing a second time.
    drop(stuck);
    drop_and_check(region, &pinner);
    mapping.unmap_around(&[(base, chunk())]);
}

#[test]
fn the_drain_hook_releases_what_the_unmapping_thread_would_reap() {
    let aspace = Arc::new(AddressSpace::new_private());
    let (mapping, base) = aligned(&aspace, 1);
    // A software completion queue: the token of a request whose completion
    // only the drain hook would poll.
    let completions: Arc<Mutex<Option<InFlight>>> = Arc::default();
    let polled = Arc::clone(&completions);
    let drain = Box::new(move || drop(polled.lock().unwrap().take()));
    let (region, pinner) = region_with(&aspace, base, chunk(), drain);
    let (pieces, token) = map(&region, base, 8);
    *completions.lock().unwrap() = Some(token);
    // This thread is the poller, and it unmaps: no deadlock, no force.
    munmap(&aspace, base, chunk());
    assert!(!pinner.is_live(pieces[0].lkey));
    let counters = region.counters();
    assert_eq!((counters.forced_unpins, counters.unpins), (0, 1));
    assert!(counters.drain_calls >= 1);
    drop_and_check(region, &pinner);
    mapping.unmap_around(&[(base, chunk())]);
}

#[test]
fn a_nonblockable_invalidation_is_refused_while_a_chunk_is_in_use() {
    let aspace = Arc::new(AddressSpace::new_private());
    let (_map, base) = aligned(&aspace, 2);
    let c = chunk();
    let (region, pinner) = region(&aspace, base, 2 * c);
    let (pieces, token) = map(&region, base, 2 * c);
    let range = NotifierRange::new(base, base + c, Event::Unmap)
        .unwrap()
        .nonblocking();
    let subs = aspace.subscriptions();
    assert_eq!(
        subs.invalidate_range_start(&range).err(),
        Some(NotifierError::WouldBlock)
    );
    assert!(pinner.is_live(pieces[0].lkey), "nothing changed");
    assert_eq!(region.counters().nonblocking_refusals, 1);
    drop(token);
    subs.invalidate_range_start(&range).expect("idle now").end();
    assert!(!pinner.is_live(pieces[0].lkey));
    assert!(pinner.is_live(pieces[1].lkey), "outside the range");
    // The invalidated chunk is faulted again.
    assert_ne!(lkey_at(&region, base), pieces[0].lkey);
    assert_eq!(lkey_at(&region, base + c), pieces[1].lkey);
    assert_eq!(region.counters().forced_unpins, 0);
    drop_and_check(region, &pinner);
}

#[test]
fn dropping_the_region_waits_for_requests_in_flight() {
    let aspace = Arc::new(AddressSpace::new_private());
    let (_map, base) = aligned(&aspace, 1);
    let (region, pinner) = region(&aspace, base, chunk());
    let (pieces, token) = map(&region, base, 8);
    let releaser = thread::spawn(move || {
        thread::sleep(Duration::from_millis(50));
        token.complete();
    });
    let counters = drop_and_check(region, &pinner);
    assert_eq!(counters.forced_unpins, 0);
    assert!(!pinner.is_live(pieces[0].lkey));
    releaser.join().unwrap();
}
