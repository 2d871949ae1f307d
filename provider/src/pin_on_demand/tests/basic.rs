//! Faults, splitting at chunk boundaries, and bad input.
//!
//! Bad input comes from the application that posts work requests: its
//! scatter/gather entries name addresses, lengths and regions. A peer
//! never reaches this code (regions refuse remote access).

use std::sync::Arc;

use odp::AddressSpace;

use super::pinner::{MlockPinner, page};
use super::{aligned, chunk, drop_and_check, map, region};
use crate::pin_on_demand::{Piece, PinError, PinOnDemandRegion, PodOptions, SgeRef, map_sges};

#[test]
fn an_entry_over_three_chunks_is_split_into_three_pieces_with_their_chunks_lkeys() {
    let aspace = Arc::new(AddressSpace::new_private());
    let (_map, base) = aligned(&aspace, 3);
    let c = chunk();
    // Unaligned bytes: the first and last chunks are clipped to the pages.
    let (addr, len) = (base + 1000, 3 * c - 1500);
    let (region, pinner) = region(&aspace, addr, len);
    assert_eq!(region.counters().chunks_pinned, 0, "nothing pinned yet");

    let (pieces, token) = map(&region, addr, len);
    assert_eq!(token.len(), 3);
    let spans: Vec<(u64, u32)> = pieces.iter().map(|p| (p.addr, p.len)).collect();
    let expected = [
        (addr, base + c - addr),
        (base + c, c),
        (base + 2 * c, addr + len - (base + 2 * c)),
    ];
    let expected: Vec<(u64, u32)> = expected
        .iter()
        .map(|&(a, l)| (a as u64, l as u32))
        .collect();
    assert_eq!(spans, expected);
    // Each piece has the lkey of the pin of its (page-clipped) chunk.
    for (i, piece) in pieces.iter().enumerate() {
        let record = pinner.record(piece.lkey);
        assert_eq!((record.addr, record.len), (base + i * c, c), "chunk {i}");
        assert!(!record.unpinned);
        if pinner.frames_visible() {
            assert_eq!(record.frames, pinner.frames_now(record.addr, c));
            assert!(
                record.frames.iter().all(|&f| f != 0),
                "pinned pages present"
            );
        }
    }
    let lkeys: std::collections::HashSet<u32> = pieces.iter().map(|p| p.lkey).collect();
    assert_eq!(lkeys.len(), 3, "one registration per chunk");
    let counters = region.counters();
    assert_eq!((counters.faults, counters.chunks_pinned), (3, 3));
    assert_eq!(counters.bytes_pinned, 3 * c as u64);

    // A second entry in the middle chunk uses the same registration.
    let (again, token2) = map(&region, base + c + 5, 10);
    assert_eq!(
        again,
        [Piece {
            addr: (base + c + 5) as u64,
            len: 10,
            lkey: pieces[1].lkey
        }]
    );
    assert_eq!(region.counters().faults, 3);
    drop((token, token2));
    let counters = drop_and_check(region, &pinner);
    assert_eq!(counters.unpins, 3);
}

#[test]
fn entries_outside_the_region_are_refused_before_anything_is_pinned() {
    let aspace = Arc::new(AddressSpace::new_private());
    let (_map, base) = aligned(&aspace, 2);
    let (addr, len) = (base + 100, 2 * chunk() - 200);
    let (region, pinner) = region(&aspace, addr, len);
    let end = addr + len;
    let out_of_range = |va: u64, l: u32| PinError::OutOfRange {
        va,
        len: l.into(),
        start: addr,
        end,
    };
    let mut pieces = vec![];
    for (va, l) in [
        (addr as u64 - 1, 2),        // starts before
        (end as u64 - 1, 2),         // ends after
        (end as u64, 1),             // starts at the end
        (u64::MAX - 1, 4),           // wraps
        (base as u64, 1),            // in the same page, not registered
        (addr as u64 + 1, u32::MAX), // far too long
    ] {
        assert_eq!(
            region.map_sge(va, l, &mut pieces).unwrap_err(),
            out_of_range(va, l),
            "{va:#x} + {l:#x}"
        );
    }
    assert!(pieces.is_empty());
    assert_eq!(pinner.totals().0, 0, "nothing pinned");

    // Zero-length entries at either end are fine and use no chunk.
    for va in [addr, end] {
        let token = region.map_sge(va as u64, 0, &mut pieces).unwrap();
        assert!(token.is_empty() && pieces.is_empty());
    }
    drop_and_check(region, &pinner);
}

#[test]
fn a_chunk_that_is_not_mapped_fails_cleanly_and_the_others_still_work() {
    let aspace = Arc::new(AddressSpace::new_private());
    let (mapping, base) = aligned(&aspace, 3);
    let c = chunk();
    let (region, pinner) = region(&aspace, base, 3 * c);
    // A page in the middle chunk goes, behind the region's back.
    // SAFETY: a page of this test's mapping, which nothing uses.
    let rc = unsafe { libc::munmap((base + c + page()) as *mut _, page()) };
    assert_eq!(rc, 0);

    let mut pieces = vec![Piece {
        addr: 1,
        len: 1,
        lkey: 1,
    }];
    let err = region
        .map_sge((base + c - 10) as u64, 20, &mut pieces)
        .unwrap_err();
    assert_eq!(
        err,
        PinError::Unmapped {
            addr: base + c,
            len: c
        }
    );
    assert_eq!(pieces.len(), 1, "out is left as it was");
    let (ok, token) = map(&region, base + 2 * c, 10);
    assert_eq!(ok.len(), 1);
    drop(token);
    let counters = drop_and_check(region, &pinner);
    // The first chunk was pinned before the middle one failed.
    assert_eq!(counters.faults, 2);
    mapping.unmap_around(&[(base + c + page(), page())]);
}

#[test]
fn a_refused_pin_is_reported_and_nothing_is_committed() {
    let aspace = Arc::new(AddressSpace::new_private());
    let (_map, base) = aligned(&aspace, 1);
    let (region, pinner) = region(&aspace, base, chunk());
    pinner.refuse(Some(libc::EPERM));
    let mut pieces = vec![];
    assert_eq!(
        region.map_sge(base as u64, 8, &mut pieces).unwrap_err(),
        PinError::PinRefused {
            addr: base,
            len: chunk(),
            errno: libc::EPERM
        }
    );
    pinner.refuse(None);
    let (ok, token) = map(&region, base, 8);
    assert_eq!(ok.len(), 1);
    drop(token);
    assert_eq!(drop_and_check(region, &pinner).faults, 1);
}

#[test]
fn a_list_that_splits_into_too_many_pieces_is_refused_before_pinning() {
    let aspace = Arc::new(AddressSpace::new_private());
    let (_map, base) = aligned(&aspace, 4);
    let c = chunk();
    let (r1, p1) = region(&aspace, base, 2 * c);
    let (r2, p2) = region(&aspace, base + 2 * c, 2 * c);
    let list = [
        SgeRef {
            region: &r1,
            va: (base + c - 4) as u64,
            len: 8,
        },
        SgeRef {
            region: &r2,
            va: (base + 2 * c) as u64,
            len: 16,
        },
    ];
    let mut pieces = vec![];
    assert_eq!(
        map_sges(&list, 2, &mut pieces).unwrap_err(),
        PinError::TooManyPieces { pieces: 3, max: 2 }
    );
    assert_eq!((p1.totals().0, p2.totals().0), (0, 0));
    // Within the limit: one token holds the chunks of both regions.
    let token = map_sges(&list, 3, &mut pieces).unwrap();
    assert_eq!((pieces.len(), token.len()), (3, 3));
    assert_eq!(p1.record(pieces[1].lkey).addr, base + c);
    assert_eq!(p2.record(pieces[2].lkey).addr, base + 2 * c);
    drop(token);
    drop_and_check(r1, &p1);
    drop_and_check(r2, &p2);
}

#[test]
fn remote_access_bad_chunk_sizes_and_bad_ranges_are_refused() {
    let aspace = Arc::new(AddressSpace::new_private());
    let pinner = Arc::new(MlockPinner::new(false));
    let new = |addr: usize, len: usize, options: PodOptions| {
        PinOnDemandRegion::new(
            &aspace,
            addr,
            len,
            Arc::clone(&pinner),
            options,
            Box::new(|| {}),
        )
        .err()
    };
    let remote = PodOptions {
        remote_access: true,
        ..PodOptions::default()
    };
    assert_eq!(new(0x10000, 4096, remote), Some(PinError::RemoteAccess));
    for size in [0, page() / 2, 3 * page(), usize::MAX] {
        let options = PodOptions {
            chunk_size: size,
            ..PodOptions::default()
        };
        assert_eq!(
            new(0x10000, 4096, options),
            Some(PinError::BadChunkSize(size))
        );
    }
    let d = PodOptions::default();
    assert_eq!(
        new(0x10000, 0, d),
        Some(PinError::InvalidRange {
            addr: 0x10000,
            len: 0
        })
    );
    assert_eq!(
        new(usize::MAX - 10, 100, d),
        Some(PinError::InvalidRange {
            addr: usize::MAX - 10,
            len: 100
        })
    );
    // The topmost page cannot be widened to whole pages.
    assert!(matches!(
        new(usize::MAX - 10, 5, d),
        Some(PinError::InvalidRange { .. })
    ));
    assert_eq!(pinner.totals().0, 0);
}
