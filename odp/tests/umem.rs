//! Umem behaviour on real memory with real system calls: faults,
//! invalidation through the explicit wrappers, errors, counters, prefetch.

use std::sync::Arc;

use odp::{
    Access, AddressSpace, Advice, AtomicOp, Mapping, OdpError, Umem, UmemOptions, page_size,
};

fn setup(pages: usize) -> (Arc<AddressSpace>, Mapping, Umem) {
    let aspace = AddressSpace::process();
    let map = aspace.map_anonymous(pages * page_size(), 0).expect("mmap");
    let umem = Umem::new(&aspace, map.addr(), map.len(), UmemOptions::default()).expect("umem");
    (aspace, map, umem)
}

fn cpu_read(addr: usize, len: usize) -> Vec<u8> {
    // SAFETY: tests only call this on live mappings they own.
    unsafe { std::slice::from_raw_parts(addr as *const u8, len) }.to_vec()
}

fn cpu_write(addr: usize, data: &[u8]) {
    // SAFETY: tests only call this on live, writable mappings they own.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), addr as *mut u8, data.len()) }
}

#[test]
fn registration_faults_nothing_and_first_touch_faults_only_what_is_touched() {
    let (_aspace, map, umem) = setup(16);
    assert_eq!(umem.present_pages(), 0);
    assert_eq!(umem.counters().faults, 0);
    umem.write(map.addr() + 3 * page_size() + 5, &[1, 2, 3])
        .unwrap();
    assert_eq!(umem.present_pages(), 1);
    let entry = umem.entry(map.addr() + 3 * page_size()).unwrap();
    assert!(entry.is_present() && entry.is_writable() && entry.is_dirty());
    assert!(!umem.entry(map.addr()).unwrap().is_present());
    let c = umem.counters();
    assert_eq!((c.faults, c.pages_faulted), (1, 1));
    // A second access to a present page faults nothing.
    umem.write(map.addr() + 3 * page_size(), &[9]).unwrap();
    assert_eq!(umem.counters().faults, 1);
}

#[test]
fn device_writes_land_in_the_page_the_cpu_sees_and_back() {
    let (_aspace, map, umem) = setup(4);
    umem.write(map.addr() + 100, b"from the device").unwrap();
    assert_eq!(cpu_read(map.addr() + 100, 15), b"from the device");
    cpu_write(map.addr() + 2 * page_size(), b"from the cpu");
    let mut got = [0u8; 12];
    umem.read(map.addr() + 2 * page_size(), &mut got).unwrap();
    assert_eq!(&got, b"from the cpu");
}

#[test]
fn copies_are_byte_exact_at_every_offset_and_length() {
    let pages = 6;
    let (_aspace, map, umem) = setup(pages);
    let ps = page_size();
    let mut shadow = vec![0u8; pages * ps];
    let mut seed = 0x1234_5678u32;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        seed
    };
    for round in 0..400 {
        let offset = next() as usize % (pages * ps);
        let max = pages * ps - offset;
        // Mix tiny, page-sized and page-crossing lengths.
        let len = match round % 4 {
            0 => 1 + next() as usize % 16,
            1 => ps,
            2 => (ps - offset % ps) + 1 + next() as usize % 64,
            _ => 1 + next() as usize % (3 * ps),
        }
        .min(max);
        let data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        umem.write(map.addr() + offset, &data).unwrap();
        shadow[offset..offset + len].copy_from_slice(&data);
        let roff = next() as usize % (pages * ps);
        let rlen = (1 + next() as usize % (2 * ps)).min(pages * ps - roff);
        let mut got = vec![0u8; rlen];
        umem.read(map.addr() + roff, &mut got).unwrap();
        assert_eq!(
            got,
            shadow[roff..roff + rlen],
            "round {round}: read {roff:#x}+{rlen}"
        );
    }
    assert_eq!(cpu_read(map.addr(), pages * ps), shadow);
}

#[test]
fn dontneed_drops_translations_and_the_device_then_reads_zeros() {
    let (aspace, map, umem) = setup(8);
    umem.write(map.addr(), &[0xab; 4096]).unwrap();
    umem.write(map.addr() + 5 * page_size(), &[0xcd; 10])
        .unwrap();
    assert_eq!(umem.present_pages(), 2);
    // SAFETY: the mapping is ours; discarding its first 4 pages is fine.
    unsafe { aspace.madvise(map.ptr().cast(), 4 * page_size(), libc::MADV_DONTNEED) }.unwrap();
    assert_eq!(umem.present_pages(), 1, "only the discarded page went");
    let c = umem.counters();
    assert_eq!(
        (
            c.invalidations,
            c.pages_invalidated,
            c.dirty_pages_invalidated
        ),
        (1, 1, 1)
    );
    let mut got = [0xffu8; 64];
    umem.read(map.addr(), &mut got).unwrap();
    assert_eq!(got, [0; 64]);
    let mut kept = [0u8; 10];
    umem.read(map.addr() + 5 * page_size(), &mut kept).unwrap();
    assert_eq!(kept, [0xcd; 10]);
}

#[test]
fn munmap_of_a_middle_part_leaves_a_hole_and_the_rest_working() {
    let (aspace, map, umem) = setup(8);
    let ps = page_size();
    umem.write(map.addr(), &vec![7u8; 8 * ps]).unwrap();
    // SAFETY: pages 3 and 4 of our mapping are not used afterwards.
    unsafe { aspace.munmap((map.addr() + 3 * ps) as *mut libc::c_void, 2 * ps) }.unwrap();
    assert_eq!(umem.present_pages(), 6);
    let mut buf = [0u8; 16];
    let err = umem.read(map.addr() + 3 * ps, &mut buf).unwrap_err();
    assert!(matches!(err, OdpError::Unmapped { .. }), "{err}");
    let err = umem.write(map.addr() + 3 * ps - 8, &[1; 16]).unwrap_err();
    assert!(
        matches!(err, OdpError::Unmapped { .. }),
        "spanning into the hole: {err}"
    );
    umem.read(map.addr() + 2 * ps, &mut buf).unwrap();
    assert_eq!(buf, [7; 16]);
    umem.read(map.addr() + 5 * ps, &mut buf).unwrap();
    assert_eq!(buf, [7; 16]);
    // Nothing was written into the hole's neighbour by the failed write.
    assert_eq!(cpu_read(map.addr() + 3 * ps - 8, 8), [7; 8]);
}

#[test]
fn mprotect_to_read_only_blocks_device_writes_but_not_reads() {
    let (aspace, map, umem) = setup(2);
    umem.write(map.addr(), b"before").unwrap();
    // SAFETY: our mapping; we only read it afterwards.
    unsafe { aspace.mprotect(map.ptr().cast(), map.len(), libc::PROT_READ) }.unwrap();
    assert_eq!(umem.present_pages(), 0);
    let err = umem.write(map.addr(), b"after").unwrap_err();
    assert!(
        matches!(err, OdpError::AccessDenied { write: true, .. }),
        "{err}"
    );
    let mut got = [0u8; 6];
    umem.read(map.addr(), &mut got).unwrap();
    assert_eq!(&got, b"before");
    // SAFETY: our mapping again.
    unsafe { aspace.mprotect(map.ptr().cast(), map.len(), libc::PROT_NONE) }.unwrap();
    let err = umem.read(map.addr(), &mut got).unwrap_err();
    assert!(
        matches!(err, OdpError::AccessDenied { write: false, .. }),
        "{err}"
    );
}

#[test]
fn mremap_move_invalidates_the_old_range_and_the_data_moves() {
    let aspace = AddressSpace::process();
    let ps = page_size();
    let (old, len) = aspace.map_anonymous(4 * ps, 0).unwrap().into_raw();
    let umem = Umem::new(&aspace, old, len, UmemOptions::default()).unwrap();
    umem.write(old + ps, b"moving").unwrap();
    let target = aspace.map_anonymous(8 * ps, 0).unwrap();
    // SAFETY: `old` is ours; the target is ours and replaced by the move.
    let new = unsafe {
        aspace.mremap(
            old as *mut libc::c_void,
            len,
            len,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            target.ptr().cast(),
        )
    }
    .unwrap() as usize;
    assert_eq!(new, target.addr());
    assert_eq!(umem.present_pages(), 0);
    assert!(matches!(
        umem.read(old + ps, &mut [0; 6]),
        Err(OdpError::Unmapped { .. })
    ));
    let moved = Umem::new(&aspace, new, len, UmemOptions::default()).unwrap();
    let mut got = [0u8; 6];
    moved.read(new + ps, &mut got).unwrap();
    assert_eq!(&got, b"moving");
}

#[test]
fn mremap_growth_invalidates_what_may_move_and_keeps_the_data() {
    let aspace = AddressSpace::process();
    let ps = page_size();
    let (old, len) = aspace.map_anonymous(4 * ps, 0).unwrap().into_raw();
    let umem = Umem::new(&aspace, old, len, UmemOptions::default()).unwrap();
    umem.write(old + 3 * ps, b"grown").unwrap();
    // SAFETY: our mapping; the kernel may move it.
    let new = unsafe {
        aspace.mremap(
            old as *mut libc::c_void,
            len,
            2 * len,
            libc::MREMAP_MAYMOVE,
            std::ptr::null_mut(),
        )
    }
    .unwrap() as usize;
    assert_eq!(
        umem.present_pages(),
        0,
        "a growth that may move invalidates the old range"
    );
    let grown = Umem::new(&aspace, new, 2 * len, UmemOptions::default()).unwrap();
    let mut got = [0u8; 5];
    grown.read(new + 3 * ps, &mut got).unwrap();
    assert_eq!(&got, b"grown");
    grown.read(new + 7 * ps, &mut got).unwrap();
    assert_eq!(got, [0; 5], "the new part is zero-filled");
    drop((umem, grown));
    // SAFETY: the grown mapping is ours.
    unsafe { aspace.munmap(new as *mut libc::c_void, 2 * len) }.unwrap();
}

#[test]
fn read_only_registrations_refuse_writes_and_bad_ranges_are_errors() {
    let aspace = AddressSpace::process();
    let map = aspace.map_anonymous(2 * page_size(), 0).unwrap();
    let ro = UmemOptions {
        writable: false,
        ..UmemOptions::default()
    };
    let umem = Umem::new(&aspace, map.addr(), map.len(), ro).unwrap();
    assert!(matches!(
        umem.write(map.addr(), &[1]),
        Err(OdpError::AccessDenied { .. })
    ));
    assert!(matches!(
        umem.advise(map.addr(), 1, Advice::PrefetchWrite),
        Err(OdpError::AccessDenied { .. })
    ));
    assert!(matches!(
        umem.read(map.addr() + map.len() - 1, &mut [0; 2]),
        Err(OdpError::OutOfRange { .. })
    ));
    assert!(matches!(
        umem.read(map.addr() - 1, &mut [0; 1]),
        Err(OdpError::OutOfRange { .. })
    ));
    assert!(matches!(
        umem.read(map.addr(), &mut []),
        Err(OdpError::OutOfRange { .. })
    ));
    assert!(matches!(
        umem.with_range(usize::MAX - 4, 8, Access::Read, |_, _| ()),
        Err(OdpError::OutOfRange { .. })
    ));
    assert!(matches!(
        Umem::new(&aspace, 0x1000, 0, UmemOptions::default()),
        Err(OdpError::InvalidRange { .. })
    ));
    assert!(matches!(
        Umem::new(&aspace, usize::MAX - 10, 100, UmemOptions::default()),
        Err(OdpError::InvalidRange { .. })
    ));
}

#[test]
fn prefetch_makes_pages_present_and_no_fault_maps_only_what_is_there() {
    let (_aspace, map, umem) = setup(8);
    let ps = page_size();
    umem.advise(map.addr(), 2 * ps, Advice::Prefetch).unwrap();
    assert_eq!(umem.present_pages(), 2);
    assert!(!umem.entry(map.addr()).unwrap().is_writable());
    umem.advise(map.addr() + 2 * ps, ps, Advice::PrefetchWrite)
        .unwrap();
    assert!(umem.entry(map.addr() + 2 * ps).unwrap().is_writable());
    // The CPU touches pages 5 and 6; no-fault prefetch of 4..8 finds them.
    cpu_write(map.addr() + 5 * ps, &[1]);
    cpu_write(map.addr() + 6 * ps, &[1]);
    umem.advise(map.addr() + 4 * ps, 4 * ps, Advice::PrefetchNoFault)
        .unwrap();
    assert_eq!(umem.present_pages(), 5);
    assert!(!umem.entry(map.addr() + 4 * ps).unwrap().is_present());
    let c = umem.counters();
    assert_eq!((c.prefetches, c.pages_prefetched), (3, 5));
    // A write to a page prefetched read-only upgrades it by faulting.
    let faults = c.faults;
    umem.write(map.addr(), &[2]).unwrap();
    assert_eq!(umem.counters().faults, faults + 1);
    assert!(umem.entry(map.addr()).unwrap().is_writable());
}

#[test]
fn a_released_address_space_fails_accesses_cleanly() {
    let aspace = Arc::new(AddressSpace::new_private());
    let map = aspace.map_anonymous(page_size(), 0).unwrap();
    let umem = Umem::new(&aspace, map.addr(), map.len(), UmemOptions::default()).unwrap();
    umem.write(map.addr(), &[1]).unwrap();
    aspace.subscriptions().release();
    assert_eq!(umem.present_pages(), 0);
    assert_eq!(umem.write(map.addr(), &[1]), Err(OdpError::Released));
    assert!(matches!(
        Umem::new(&aspace, map.addr(), map.len(), UmemOptions::default()),
        Err(OdpError::Notifier(_))
    ));
}

#[test]
fn frames_change_when_a_page_is_replaced() {
    let aspace = AddressSpace::process();
    let map = aspace.map_anonymous(page_size(), 0).unwrap();
    let opts = UmemOptions {
        record_frames: true,
        ..UmemOptions::default()
    };
    let umem = Umem::new(&aspace, map.addr(), map.len(), opts).unwrap();
    umem.write(map.addr(), &[1]).unwrap();
    let before = umem.entry(map.addr()).unwrap().frame();
    if !aspace.frames_visible() {
        assert_eq!(before, 0, "hidden frames read as zero");
        return;
    }
    assert_ne!(before, 0);
    // Keep the old page busy so the kernel cannot hand it straight back.
    let hold = aspace.map_anonymous(page_size(), 0).unwrap();
    // SAFETY: our mapping.
    unsafe { aspace.madvise(map.ptr().cast(), map.len(), libc::MADV_DONTNEED) }.unwrap();
    cpu_write(hold.addr(), &[1]);
    umem.write(map.addr(), &[2]).unwrap();
    let after = umem.entry(map.addr()).unwrap().frame();
    assert_ne!(after, 0);
    assert_ne!(before, after, "a discarded page comes back as a new frame");
}

#[test]
fn fork_child_writes_do_not_reach_the_parents_device_view() {
    let (_aspace, map, umem) = setup(2);
    umem.write(map.addr(), b"parent data").unwrap();
    // SAFETY: the child only writes to memory and exits with _exit, both
    // async-signal-safe.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: the child's private copy of our mapping.
        unsafe {
            std::ptr::copy_nonoverlapping(b"child!!".as_ptr(), map.ptr(), 7);
            libc::_exit(0);
        }
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    let mut got = [0u8; 11];
    umem.read(map.addr(), &mut got).unwrap();
    assert_eq!(&got, b"parent data");
    // And the parent device still writes into the parent's pages.
    umem.write(map.addr(), b"PARENT").unwrap();
    assert_eq!(cpu_read(map.addr(), 6), b"PARENT");
}

/// Locked memory of this process, in KiB (`VmLck` in /proc/self/status).
fn locked_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmLck:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmLck line")
}

#[test]
fn pinned_pages_are_locked_until_invalidated() {
    let aspace = AddressSpace::process();
    let ps = page_size();
    let map = aspace.map_anonymous(8 * ps, 0).unwrap();
    let opts = UmemOptions {
        pin: true,
        ..UmemOptions::default()
    };
    let umem = Umem::new(&aspace, map.addr(), map.len(), opts).unwrap();
    let before = locked_kib();
    umem.write(map.addr(), &vec![1u8; 4 * ps]).unwrap();
    assert!(umem.entry(map.addr()).unwrap().is_pinned());
    let pinned = locked_kib();
    assert!(
        pinned >= before + (4 * ps / 1024) as u64,
        "{before} -> {pinned} KiB"
    );
    // The wrapper invalidates first, which unlocks, so the discard works
    // (madvise(DONTNEED) refuses locked ranges).
    // SAFETY: our mapping.
    unsafe { aspace.madvise(map.ptr().cast(), map.len(), libc::MADV_DONTNEED) }.unwrap();
    assert!(locked_kib() < pinned);
    assert_eq!(umem.present_pages(), 0);
}

#[test]
fn an_unreported_unmap_makes_device_copies_fail_instead_of_crashing() {
    let aspace = AddressSpace::process();
    let ps = page_size();
    // Owned by hand: once the hole exists, another test's mapping may land
    // in it, so only our own pages are unmapped at the end.
    let (base, len) = aspace.map_anonymous(4 * ps, 0).unwrap().into_raw();
    let umem = Umem::new(&aspace, base, len, UmemOptions::default()).unwrap();
    umem.write(base, &vec![5u8; 4 * ps]).unwrap();
    let hole = base + ps;
    // A raw munmap that no event source sees: the page table still says
    // present.
    // SAFETY: page 1 of our mapping, not used by anything else.
    assert_eq!(unsafe { libc::munmap(hole as *mut libc::c_void, ps) }, 0);
    assert!(umem.entry(hole).unwrap().is_present());
    assert!(
        umem.verify_mapped().is_err(),
        "the auditor sees the stale entry"
    );
    let mut buf = vec![0u8; 2 * ps];
    let err = umem.read(base, &mut buf).unwrap_err();
    assert_eq!(err, OdpError::Unmapped { va: hole, len: ps });
    assert_eq!(
        &buf[..ps],
        &vec![5u8; ps][..],
        "the part before the hole was copied"
    );
    assert_eq!(
        umem.counters().stale_pages,
        2,
        "the access's stale entries were dropped"
    );
    umem.verify_mapped().unwrap();
    // The next access faults afresh and finds the hole.
    assert!(matches!(
        umem.write(hole, &[1]),
        Err(OdpError::Unmapped { .. })
    ));
    // A protection change nobody reported fails the same way, as a denial.
    let last = base + 3 * ps;
    // SAFETY: our own last page.
    let rc = unsafe { libc::mprotect(last as *mut libc::c_void, ps, libc::PROT_NONE) };
    assert_eq!(rc, 0);
    let err = umem.read(last, &mut buf[..8]).unwrap_err();
    assert!(
        matches!(err, OdpError::AccessDenied { write: false, .. }),
        "{err}"
    );
    drop(umem);
    for page in [0, 2, 3] {
        // SAFETY: our own pages; the hole is left alone.
        unsafe { libc::munmap((base + page * ps) as *mut libc::c_void, ps) };
    }
}

#[test]
fn an_unreported_unmap_makes_device_atomics_fail_instead_of_crashing() {
    let aspace = AddressSpace::process();
    let ps = page_size();
    let (base, len) = aspace.map_anonymous(3 * ps, 0).unwrap().into_raw();
    let umem = Umem::new(&aspace, base, len, UmemOptions::default()).unwrap();
    let add = |va, n| umem.atomic(va, AtomicOp::FetchAdd { add: n });
    assert_eq!(add(base + ps, 3), Ok(0));
    assert_eq!(add(base + ps, 4), Ok(3));
    assert_eq!(
        add(base + ps + 4, 1),
        Err(OdpError::Misaligned { va: base + ps + 4 })
    );
    let cas = AtomicOp::CompareSwap {
        compare: 7,
        swap: 1,
    };
    assert_eq!(
        umem.atomic(base + 2 * ps, cas),
        Ok(0),
        "no swap on a mismatch"
    );
    // SAFETY: page 1 of our own mapping; nothing reports the unmap.
    let rc = unsafe { libc::munmap((base + ps) as *mut libc::c_void, ps) };
    assert_eq!(rc, 0);
    assert!(umem.entry(base + ps).unwrap().is_present(), "stale entry");
    assert_eq!(
        add(base + ps, 1),
        Err(OdpError::Unmapped {
            va: base + ps,
            len: 8
        })
    );
    assert_eq!(
        umem.counters().stale_pages,
        1,
        "the stale entry was dropped"
    );
    assert!(matches!(
        umem.atomic(base + ps, cas),
        Err(OdpError::Unmapped { .. })
    ));
    // A protection change nobody reported: a denial, and memory unchanged.
    // SAFETY: our own last page.
    let rc = unsafe { libc::mprotect((base + 2 * ps) as *mut libc::c_void, ps, libc::PROT_READ) };
    assert_eq!(rc, 0);
    let cas = AtomicOp::CompareSwap {
        compare: 0,
        swap: 9,
    };
    assert!(matches!(
        umem.atomic(base + 2 * ps, cas),
        Err(OdpError::AccessDenied { write: true, .. })
    ));
    assert_eq!(cpu_read(base + 2 * ps, 8), [0; 8]);
    assert_eq!(add(base, 1), Ok(0), "the rest of the umem keeps working");
    drop(umem);
    for page in [0, 2] {
        // SAFETY: our own pages; the hole is left alone.
        unsafe { libc::munmap((base + page * ps) as *mut libc::c_void, ps) };
    }
}

#[test]
fn hugetlb_memory_is_paged_in_huge_pages() {
    const HUGE: usize = 2 << 20;
    let aspace = AddressSpace::process();
    let map = match aspace.map_anonymous(2 * HUGE, libc::MAP_HUGETLB) {
        Ok(map) => map,
        Err(e) => {
            // CI reserves huge pages and requires this test to run.
            assert!(
                std::env::var_os("ODP_REQUIRE_HUGETLB").is_none(),
                "no huge pages: {e}"
            );
            eprintln!("skipped: no huge pages reserved ({e})");
            return;
        }
    };
    let umem = Umem::new(&aspace, map.addr(), map.len(), UmemOptions::default()).unwrap();
    assert_eq!(umem.page_size(), HUGE);
    umem.write(map.addr() + HUGE + 12345, b"huge").unwrap();
    assert_eq!(umem.present_pages(), 1, "one entry for the whole huge page");
    assert_eq!(umem.counters().pages_faulted, 1);
    // SAFETY: the second huge page of our mapping.
    unsafe {
        aspace.madvise(
            (map.addr() + HUGE) as *mut libc::c_void,
            HUGE,
            libc::MADV_DONTNEED,
        )
    }
    .unwrap();
    assert_eq!(umem.present_pages(), 0);
    let mut got = [1u8; 4];
    umem.read(map.addr() + HUGE + 12345, &mut got).unwrap();
    assert_eq!(got, [0; 4]);
}
