//! Symbol interposition: a program that calls libc directly, started with
//! `libodp_preload.so`, has its address-space changes reported before they
//! happen.

mod common;

use odp::{AddressSpace, OdpError, Umem, UmemOptions, page_size};

fn libc_mmap(addr: usize, len: usize, flags: libc::c_int) -> usize {
    // SAFETY: anonymous memory, at a fixed address only where the test owns
    // the range.
    let p = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | flags,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    p as usize
}

#[test]
fn libc_calls_are_reported_when_the_library_is_preloaded() {
    common::assert_child_passed(&common::run_child("child_libc_calls", common::Preload::Yes));
}

#[test]
fn without_the_library_nothing_is_interposed() {
    assert!(!AddressSpace::process().interposition_active());
}

#[test]
#[ignore = "runs as a child of libc_calls_are_reported_when_the_library_is_preloaded"]
fn child_libc_calls() {
    let aspace = AddressSpace::process();
    assert!(
        aspace.interposition_active(),
        "libodp_preload.so is not attached"
    );
    let ps = page_size();
    let base = libc_mmap(0, 6 * ps, 0);
    let umem = Umem::new(&aspace, base, 6 * ps, UmemOptions::default()).unwrap();
    let fill = |umem: &Umem| {
        for page in 0..6 {
            let va = base + page * ps;
            if umem.entry(va).unwrap().is_present() {
                continue;
            }
            let _ = umem.write(va, &[0xa0 + page as u8; 16]);
        }
    };
    fill(&umem);
    assert_eq!(umem.present_pages(), 6);
    let page = |n: usize| (base + n * ps) as *mut libc::c_void;

    // SAFETY: page 5 of the test's own mapping.
    let rc = unsafe { libc::munmap(page(5), ps) };
    assert_eq!(rc, 0);
    assert_eq!(umem.present_pages(), 5, "munmap");
    // SAFETY: page 4 of the test's own mapping.
    let rc = unsafe { libc::madvise(page(4), ps, libc::MADV_WILLNEED) };
    assert_eq!(rc, 0);
    assert_eq!(umem.present_pages(), 5, "advice that keeps contents");
    // SAFETY: as above.
    let rc = unsafe { libc::madvise(page(4), ps, libc::MADV_DONTNEED) };
    assert_eq!(rc, 0);
    assert_eq!(umem.present_pages(), 4, "madvise(DONTNEED)");
    // SAFETY: page 3 of the test's own mapping.
    let rc = unsafe { libc::mprotect(page(3), ps, libc::PROT_READ) };
    assert_eq!(rc, 0);
    assert_eq!(umem.present_pages(), 3, "mprotect");
    assert!(matches!(
        umem.write(base + 3 * ps, &[1]),
        Err(OdpError::AccessDenied { .. })
    ));
    assert_eq!(libc_mmap(base + 2 * ps, ps, libc::MAP_FIXED), base + 2 * ps);
    assert_eq!(umem.present_pages(), 2, "mmap(MAP_FIXED)");
    let mut got = [0xffu8; 16];
    umem.read(base + 2 * ps, &mut got).unwrap();
    assert_eq!(got, [0; 16], "the replacing mapping's zero page");
    // Shrink pages 0..2 to one page: page 1 is cut off.
    // SAFETY: our mapping.
    let p = unsafe { libc::mremap(page(0), 2 * ps, ps, 0) };
    assert_eq!(p as usize, base);
    assert!(
        !umem.entry(base + ps).unwrap().is_present(),
        "mremap shrink"
    );
    assert!(umem.entry(base).unwrap().is_present());
    let c = umem.counters();
    assert_eq!(c.invalidations, 5);
    assert_eq!(
        c.stale_pages, 0,
        "every change was reported before it happened"
    );
    drop(umem);

    // SysV shared memory: shmdt names only the address.
    // SAFETY: a private segment, attached and detached by this test only.
    unsafe {
        let id = libc::shmget(libc::IPC_PRIVATE, 3 * ps, libc::IPC_CREAT | 0o600);
        assert!(id >= 0);
        let addr = libc::shmat(id, std::ptr::null(), 0) as usize;
        libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut());
        let shm = Umem::new(&aspace, addr, 3 * ps, UmemOptions::default()).unwrap();
        shm.write(addr + ps, b"shared").unwrap();
        assert_eq!(shm.present_pages(), 1);
        assert_eq!(libc::shmdt(addr as *const libc::c_void), 0);
        assert_eq!(shm.present_pages(), 0, "shmdt");
    }

    // The program break: grow it well above what malloc may take meanwhile,
    // then shrink it with sbrk and brk.
    // SAFETY: the break above malloc's own top belongs to this test.
    unsafe {
        let gap = 4 << 20;
        let top = libc::sbrk(0) as usize + gap;
        let heap = Umem::new(&aspace, top, 2 * ps, UmemOptions::default()).unwrap();
        assert_eq!(libc::brk((top + 2 * ps) as *mut libc::c_void), 0);
        heap.write(top, &vec![7u8; 2 * ps]).unwrap();
        assert_eq!(heap.present_pages(), 2);
        assert_eq!(libc::sbrk(-(ps as isize)) as usize, top + 2 * ps);
        assert_eq!(heap.present_pages(), 1, "sbrk shrink");
        assert_eq!(libc::brk(top as *mut libc::c_void), 0);
        assert_eq!(heap.present_pages(), 0, "brk shrink");
    }
}
