//! The userfaultfd source: changes that no interposition can see (raw
//! system calls, glibc's own munmap in free) still invalidate.

mod common;

use odp::{AddressSpace, ImplicitUmem, Umem, UmemOptions, page_size};

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

#[test]
fn scattered_faults_do_not_exhaust_the_vma_limit() {
    common::assert_child_passed(&common::run_child(
        "child_scattered_faults",
        common::Preload::No,
    ));
}

/// Runs of one faulted page with one untouched page between them.
const SCATTERED_RUNS: usize = 100_000;

/// The mappings of this process (lines of `/proc/self/maps`).
fn vma_count() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .expect("/proc/self/maps")
        .lines()
        .count()
}

fn max_map_count() -> usize {
    std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(65530)
}

/// Maps `pages` pages of anonymous memory without reserving swap.
fn map_noreserve(pages: usize) -> usize {
    // SAFETY: a fresh anonymous mapping at an address the kernel picks.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            pages * page_size(),
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    p as usize
}

/// Reads one byte of every other page of `[base, base + 2 * runs pages)`
/// through the umem: `runs` scattered faults (of the zero page).
fn fault_scattered(umem: &Umem, base: usize, runs: usize) {
    let ps = page_size();
    let mut byte = [1u8; 1];
    for run in 0..runs {
        umem.read(base + 2 * run * ps, &mut byte)
            .expect("read of a mapped page");
        assert_eq!(byte, [0]);
    }
}

/// Plain libc munmap of one page, then a device read of the page before it
/// (which waits for the monitor's handling of the unmap).
fn unmap_page(umem: &Umem, va: usize) {
    // SAFETY: a page of this test's own mapping, which nothing else uses.
    let rc = unsafe { libc::munmap(va as *mut libc::c_void, page_size()) };
    assert_eq!(rc, 0);
    after_monitor(umem, va - 2 * page_size());
}

#[test]
#[ignore = "runs as a child of scattered_faults_do_not_exhaust_the_vma_limit"]
fn child_scattered_faults() {
    let aspace = AddressSpace::process();
    aspace.enable_userfaultfd().expect("userfaultfd");
    let ps = page_size();
    let pages = 2 * SCATTERED_RUNS;
    let limit = max_map_count();
    let before = vma_count();

    // A region of anonymous memory: its runs are registered with the whole
    // region, so the mapping is split at most at the region's ends.
    let base = map_noreserve(pages);
    let umem = Umem::new(&aspace, base, pages * ps, UmemOptions::default()).unwrap();
    fault_scattered(&umem, base, SCATTERED_RUNS);
    let stats = aspace.userfaultfd_stats().unwrap();
    assert!(stats.coalesced >= SCATTERED_RUNS as u64, "{stats:?}");
    assert_eq!(stats.vma_limited, 0, "{stats:?}");
    assert!(vma_count() < before + 16, "{} -> {}", before, vma_count());
    unmap_page(&umem, base + 2000 * ps);
    assert!(!umem.entry(base + 2000 * ps).unwrap().is_present());
    assert_eq!(umem.counters().stale_pages, 0);
    drop(umem);
    // SAFETY: the test's own mapping (one page of it is gone already).
    unsafe { libc::munmap(base as *mut libc::c_void, pages * ps) };

    // Implicit ODP: runs are registered with the 2 MiB around them, and
    // neighbouring windows merge into one registered mapping.
    let implicit_runs = SCATTERED_RUNS / 10;
    let base = map_noreserve(2 * implicit_runs);
    let implicit = ImplicitUmem::new(&aspace, UmemOptions::default());
    let before_implicit = (aspace.userfaultfd_stats().unwrap(), vma_count());
    let mut byte = [1u8; 1];
    for run in 0..implicit_runs {
        implicit.read(base + 2 * run * ps, &mut byte).unwrap();
    }
    let stats = aspace.userfaultfd_stats().unwrap();
    let coalesced = stats.coalesced - before_implicit.0.coalesced;
    assert!(coalesced >= implicit_runs as u64, "{stats:?}");
    assert!(vma_count() < before_implicit.1 + 16, "{} VMAs", vma_count());
    drop(implicit);
    // SAFETY: the test's own mapping.
    unsafe { libc::munmap(base as *mut libc::c_void, 2 * implicit_runs * ps) };

    // The same with a private file mapping at the end, which userfaultfd
    // cannot register: every run is registered alone and splits the
    // mapping, until the VMA budget stops the registrations.
    let base = map_noreserve(pages + 1);
    let file = tempfile_page();
    // SAFETY: replaces the last page of the test's own mapping.
    let p = unsafe {
        libc::mmap(
            (base + pages * ps) as *mut libc::c_void,
            ps,
            libc::PROT_READ,
            libc::MAP_PRIVATE | libc::MAP_FIXED,
            std::os::fd::AsRawFd::as_raw_fd(&file),
            0,
        )
    };
    assert_eq!(p as usize, base + pages * ps);
    let umem = Umem::new(&aspace, base, (pages + 1) * ps, UmemOptions::default()).unwrap();
    let limited_before = aspace.userfaultfd_stats().unwrap().vma_limited;
    fault_scattered(&umem, base, SCATTERED_RUNS);
    let stats = aspace.userfaultfd_stats().unwrap();
    let peak = vma_count();
    let needed = before + 2 * SCATTERED_RUNS;
    if needed > limit {
        assert!(stats.vma_limited > limited_before, "{stats:?}");
        assert!(peak <= limit * 3 / 4 + 64, "{peak} VMAs of {limit}");
    }
    // The program can still map memory.
    let extra: Vec<_> = (0..256)
        .map(|_| aspace.map_anonymous(ps, 0).unwrap())
        .collect();
    drop(extra);
    // Every fault worked; an early run is watched, so unmapping it
    // invalidates; a late one may not be, and the device copy then finds
    // the page gone (an error, the stale entry dropped).
    unmap_page(&umem, base + 2000 * ps);
    assert!(!umem.entry(base + 2000 * ps).unwrap().is_present());
    let late = base + 2 * (SCATTERED_RUNS - 10) * ps;
    // SAFETY: a page of the test's own mapping.
    assert_eq!(unsafe { libc::munmap(late as *mut libc::c_void, ps) }, 0);
    let mut byte = [0u8; 1];
    assert!(
        umem.read(late, &mut byte).is_err(),
        "read of an unmapped page"
    );
    assert!(!umem.entry(late).unwrap().is_present());
    eprintln!("scattered runs: {stats:?}, peak {peak} VMAs of {limit}");
    drop(umem);
    // SAFETY: the test's own mapping.
    unsafe { libc::munmap(base as *mut libc::c_void, (pages + 1) * ps) };
}

/// A temporary file of one page (unlinked at once; the fd keeps it).
fn tempfile_page() -> std::fs::File {
    let path = std::env::temp_dir().join(format!("odp-uffd-{}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .expect("temporary file");
    std::fs::remove_file(&path).expect("unlink");
    file.set_len(page_size() as u64).expect("set_len");
    file
}

#[test]
fn watch_range_lets_subscribers_outside_odp_see_raw_unmaps() {
    common::assert_child_passed(&common::run_child("child_watch_range", common::Preload::No));
}

#[test]
#[ignore = "runs as a child of watch_range_lets_subscribers_outside_odp_see_raw_unmaps"]
fn child_watch_range() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let ps = page_size();
    let aspace = AddressSpace::process();
    let base = map_noreserve(4);
    // Monitor off: nothing is registered, and nothing fails.
    assert_eq!(aspace.watch_range(base, ps), Ok(false));
    aspace.enable_userfaultfd().expect("userfaultfd");

    // A subscriber with translations of its own, not a umem.
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&hits);
    let sub = aspace
        .subscriptions()
        .insert(
            base,
            4 * ps,
            move |sub: &notifier::IntervalNotifier, _: &notifier::NotifierRange, seq| {
                sub.set_seq(seq);
                counted.fetch_add(1, Ordering::SeqCst);
                true
            },
        )
        .unwrap();
    assert_eq!(aspace.watch_range(base + ps, 10), Ok(true));

    // SAFETY: a page of the test's own mapping.
    assert_eq!(unsafe { libc::syscall(libc::SYS_munmap, base + ps, ps) }, 0);
    // The unmap is reported after the change: wait for the monitor.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while hits.load(Ordering::SeqCst) == 0 {
        assert!(std::time::Instant::now() < deadline, "no invalidation");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    // Page 1 is a hole now.
    assert_eq!(
        aspace.watch_range(base, 2 * ps),
        Err(odp::OdpError::Unmapped {
            va: base,
            len: 2 * ps
        })
    );
    assert!(matches!(
        aspace.watch_range(base, 0),
        Err(odp::OdpError::InvalidRange { .. })
    ));
    drop(sub);
    // SAFETY: the test's own mapping (one page of it is gone already).
    unsafe { libc::munmap(base as *mut libc::c_void, 4 * ps) };
}
