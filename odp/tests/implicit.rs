//! Implicit ODP: one region over the whole address space, children made
//! on first access and freed when idle.

use std::collections::BTreeSet;

use odp::{
    AddressSpace, Advice, IMPLICIT_CHILD_SHIFT, ImplicitUmem, OdpError, UmemOptions, page_size,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const GIB: usize = 1 << 30;

#[test]
fn a_sparse_terabyte_is_paged_in_only_where_touched() {
    let aspace = AddressSpace::process();
    let len = 1usize << 40;
    let map = aspace
        .map_anonymous(len, libc::MAP_NORESERVE)
        .expect("1 TiB of address space");
    let implicit = ImplicitUmem::new(&aspace, UmemOptions::default());
    let ps = page_size();
    let mut rng = StdRng::seed_from_u64(1);
    let mut touched = BTreeSet::new();
    for _ in 0..1500 {
        let page = rng.random_range(0..len / ps);
        touched.insert(page);
        let va = map.addr() + page * ps;
        implicit.write(va, &(page as u64).to_ne_bytes()).unwrap();
    }
    for &page in &touched {
        let mut got = [0u8; 8];
        implicit.read(map.addr() + page * ps, &mut got).unwrap();
        assert_eq!(u64::from_ne_bytes(got), page as u64);
        // The CPU sees what the device wrote.
        // SAFETY: a page of our live mapping.
        let cpu = unsafe { ((map.addr() + page * ps) as *const u64).read() };
        assert_eq!(cpu, page as u64);
    }
    let children: BTreeSet<usize> = touched
        .iter()
        .map(|&p| (map.addr() + p * ps) >> IMPLICIT_CHILD_SHIFT)
        .collect();
    let stats = implicit.stats();
    assert_eq!(stats.live, children.len());
    assert_eq!(stats.created, children.len() as u64);
    assert_eq!(implicit.present_pages(), touched.len());
    let c = implicit.counters();
    assert_eq!(c.pages_faulted, touched.len() as u64);
}

#[test]
fn accesses_across_a_child_boundary_are_byte_exact() {
    let aspace = AddressSpace::process();
    let map = aspace.map_anonymous(3 * GIB, libc::MAP_NORESERVE).unwrap();
    let implicit = ImplicitUmem::new(&aspace, UmemOptions::default());
    // The first child boundary inside the mapping.
    let boundary = (map.addr() + GIB) & !(GIB - 1);
    let data: Vec<u8> = (0..3 * page_size() + 17)
        .map(|i| (i * 7 + 3) as u8)
        .collect();
    let va = boundary - page_size() - 5;
    implicit.write(va, &data).unwrap();
    let mut got = vec![0u8; data.len()];
    implicit.read(va, &mut got).unwrap();
    assert_eq!(got, data);
    assert_eq!(implicit.stats().live, 2);
    let mut pieces = Vec::new();
    implicit
        .with_pieces(va, data.len(), odp::Access::Read, |_, len, offset| {
            pieces.push((offset, len))
        })
        .unwrap();
    assert_eq!(
        pieces,
        vec![
            (0, page_size() + 5),
            (page_size() + 5, data.len() - page_size() - 5)
        ]
    );
}

#[test]
fn idle_children_are_freed_and_holes_are_errors() {
    let aspace = AddressSpace::process();
    let map = aspace.map_anonymous(2 * GIB, libc::MAP_NORESERVE).unwrap();
    let implicit = ImplicitUmem::new(&aspace, UmemOptions::default());
    let ps = page_size();
    let a = map.addr();
    let b = map.addr() + GIB + 3 * ps;
    implicit.write(a, &[1; 64]).unwrap();
    implicit.write(b, &[2; 64]).unwrap();
    assert_eq!(implicit.stats().live, 2);
    // Discard the page in `a`'s child: that child becomes empty.
    // SAFETY: a page of our mapping.
    unsafe { aspace.madvise(a as *mut libc::c_void, ps, libc::MADV_DONTNEED) }.unwrap();
    // The next access frees it (and creates it again if it needs it).
    let mut got = [0u8; 64];
    implicit.read(b, &mut got).unwrap();
    assert_eq!(got, [2; 64]);
    let stats = implicit.stats();
    assert_eq!((stats.live, stats.freed), (1, 1));
    // Counters of freed children are kept.
    assert_eq!(implicit.counters().pages_invalidated, 1);

    // Unmapped memory inside the implicit region is an access error.
    // SAFETY: the page of `a` is not used afterwards.
    unsafe { aspace.munmap(a as *mut libc::c_void, ps) }.unwrap();
    assert!(matches!(
        implicit.read(a, &mut got),
        Err(OdpError::Unmapped { .. })
    ));
    assert!(matches!(
        implicit.advise(a, ps, Advice::Prefetch),
        Err(OdpError::Unmapped { .. })
    ));
    assert!(matches!(
        implicit.read(usize::MAX - 2, &mut got),
        Err(OdpError::OutOfRange { .. })
    ));
}
