//! The userfaultfd source: changes that no interposition can see (raw
//! system calls, glibc's own munmap in free) still invalidate.

mod common;

use odp::{AddressSpace, Umem, UmemOptions, page_size};

#[test]
fn raw_syscalls_and_glibc_internal_unmaps_are_reported() {
    common::assert_child_passed(&common::run_child("child_raw_changes", common::Preload::No));
}

/// A device access takes the gate, which the monitor holds while it
/// handles a batch: once the changing call has returned (its event was
/// read), an access made afterwards waits for the invalidation.
fn after_monitor(umem: &Umem, va: usize) {
    let mut byte = [0u8; 1];
    umem.read(va, &mut byte).expect("read of a mapped page");
}

#[test]
#[ignore = "runs as a child of raw_syscalls_and_glibc_internal_unmaps_are_reported"]
fn child_raw_changes() {
    let aspace = AddressSpace::process();
    aspace.enable_userfaultfd().expect("userfaultfd");
    let ps = page_size();
    let map = aspace.map_anonymous(8 * ps, 0).unwrap();
    let base = map.addr();
    let umem = Umem::new(&aspace, base, 8 * ps, UmemOptions::default()).unwrap();
    umem.write(base, &vec![1u8; 8 * ps]).unwrap();
    assert_eq!(umem.present_pages(), 8);

    // SAFETY: page 1 of our own mapping.
    let rc = unsafe { libc::syscall(libc::SYS_madvise, base + ps, ps, libc::MADV_DONTNEED) };
    assert_eq!(rc, 0);
    after_monitor(&umem, base);
    assert!(!umem.entry(base + ps).unwrap().is_present(), "raw madvise");

    // SAFETY: as above.
    let rc = unsafe { libc::syscall(libc::SYS_munmap, base + 7 * ps, ps) };
    assert_eq!(rc, 0);
    after_monitor(&umem, base);
    assert!(
        !umem.entry(base + 7 * ps).unwrap().is_present(),
        "raw munmap"
    );

    // Move page 5 onto page 6: the moved range is reported (remap), and the
    // destination's old page (unmap).
    let flags = libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED;
    // SAFETY: as above.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mremap,
            base + 5 * ps,
            ps,
            ps,
            flags,
            base + 6 * ps,
        )
    };
    assert_eq!(rc as usize, base + 6 * ps);
    after_monitor(&umem, base);
    assert!(
        !umem.entry(base + 5 * ps).unwrap().is_present(),
        "raw mremap source"
    );
    assert!(
        !umem.entry(base + 6 * ps).unwrap().is_present(),
        "raw mremap destination"
    );
    assert_eq!(
        umem.counters().stale_pages,
        0,
        "every change invalidated first"
    );
    let stats = aspace.userfaultfd_stats().unwrap();
    assert!(
        stats.removes >= 1 && stats.unmaps >= 2 && stats.remaps >= 1,
        "{stats:?}"
    );
    drop(umem);
    // Pages 5 and 7 are gone: unmap the rest ourselves.
    let (base, _) = map.into_raw();
    for page in [0, 1, 2, 3, 4, 6] {
        // SAFETY: our own remaining pages.
        unsafe { libc::munmap((base + page * ps) as *mut libc::c_void, ps) };
    }

    // glibc's free of a large block unmaps through its internal alias,
    // which no symbol interposition sees.
    let probe = aspace.map_anonymous(ps, 0).unwrap();
    let probe_umem = Umem::new(&aspace, probe.addr(), ps, UmemOptions::default()).unwrap();
    let block = vec![7u8; 16 << 20];
    let start = block.as_ptr() as usize;
    let heap = Umem::new(&aspace, start, block.len(), UmemOptions::default()).unwrap();
    let mut got = [0u8; 16];
    heap.read(start + (8 << 20), &mut got).unwrap();
    assert_eq!(got, [7; 16]);
    assert_eq!(heap.present_pages(), 1);
    drop(block);
    after_monitor(&probe_umem, probe.addr());
    assert_eq!(heap.present_pages(), 0, "free() of a large block");
}
