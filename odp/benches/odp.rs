//! Benchmarks of the ODP layer against the bare system operations it
//! stands for. `cargo bench -p odp`.
//!
//! - `register`: an ODP registration of 64 GiB (nothing is touched) against
//!   what a pinned registration must do: make the range present and lock it.
//!   This machine cannot lock 64 GiB (24 GiB of RAM), so the pinned side is
//!   measured on 1 GiB; pinning is linear in the size.
//! - `first_touch`: faulting a fresh 64 MiB range in through a umem against a
//!   bare `MADV_POPULATE_WRITE` of the same kind of range.
//! - `present_access`: a device read or write of 4 KiB of present pages
//!   against a bare `memcpy` of 4 KiB.
//! - `monitor`: what the userfaultfd monitor costs: first touch of 64 MiB
//!   and a device read of 4 KiB of present pages in an address space with
//!   the monitor on and in one without.

use std::hint::black_box;
use std::sync::Arc;

use divan::Bencher;
use divan::counter::BytesCount;
use odp::{AddressSpace, Advice, Mapping, Umem, UmemOptions};

fn main() {
    divan::main();
}

const GIB: usize = 1 << 30;

fn aspace() -> Arc<AddressSpace> {
    AddressSpace::process()
}

mod register {
    use super::*;

    /// Registering 64 GiB on demand: a notifier insert and a lazily zeroed
    /// page table.
    #[divan::bench(sample_count = 20)]
    fn odp_64_gib(bencher: Bencher) {
        let aspace = aspace();
        let map = aspace
            .map_anonymous(64 * GIB, libc::MAP_NORESERVE)
            .expect("64 GiB of address space");
        bencher.bench_local(|| {
            Umem::new(&aspace, map.addr(), map.len(), UmemOptions::default()).expect("umem")
        });
    }

    /// What pinning 1 GiB costs: fault every page in for writing and lock it.
    #[divan::bench(sample_count = 5, sample_size = 1)]
    fn populate_and_lock_1_gib(bencher: Bencher) {
        let aspace = aspace();
        bencher
            .with_inputs(|| aspace.map_anonymous(GIB, 0).expect("1 GiB"))
            .bench_local_refs(|map: &mut Mapping| {
                // SAFETY: a fresh mapping owned by the benchmark.
                unsafe {
                    let ptr = map.ptr().cast();
                    assert_eq!(libc::madvise(ptr, map.len(), libc::MADV_POPULATE_WRITE), 0);
                    assert_eq!(libc::mlock(ptr, map.len()), 0);
                }
            });
    }
}

mod first_touch {
    use super::*;

    const LEN: usize = 64 << 20;

    /// Faulting a fresh range in through a umem (collision-retry, 512-page
    /// chunks, page-table commit).
    #[divan::bench(sample_count = 20, sample_size = 1)]
    fn umem_prefetch_write(bencher: Bencher) {
        let aspace = aspace();
        bencher
            .counter(BytesCount::new(LEN))
            .with_inputs(|| {
                let map = aspace.map_anonymous(LEN, 0).expect("mapping");
                let umem =
                    Umem::new(&aspace, map.addr(), LEN, UmemOptions::default()).expect("umem");
                (umem, map)
            })
            .bench_local_refs(|(umem, map)| {
                umem.advise(map.addr(), LEN, Advice::PrefetchWrite)
                    .expect("fault");
            });
    }

    /// The same pages made present by the bare system call.
    #[divan::bench(sample_count = 20, sample_size = 1)]
    fn bare_populate_write(bencher: Bencher) {
        let aspace = aspace();
        bencher
            .counter(BytesCount::new(LEN))
            .with_inputs(|| aspace.map_anonymous(LEN, 0).expect("mapping"))
            .bench_local_refs(|map: &mut Mapping| {
                // SAFETY: a fresh mapping owned by the benchmark.
                let rc = unsafe { libc::madvise(map.ptr().cast(), LEN, libc::MADV_POPULATE_WRITE) };
                assert_eq!(rc, 0);
            });
    }
}

mod present_access {
    use super::*;

    const LEN: usize = 4096;

    fn present_umem() -> (Umem, Mapping) {
        let aspace = aspace();
        let map = aspace.map_anonymous(16 * LEN, 0).expect("mapping");
        let umem = Umem::new(&aspace, map.addr(), map.len(), UmemOptions::default()).expect("umem");
        umem.advise(map.addr(), map.len(), Advice::PrefetchWrite)
            .expect("fault");
        (umem, map)
    }

    /// A device read of one present, page-aligned 4 KiB page.
    #[divan::bench(sample_size = 1000)]
    fn umem_read_4k(bencher: Bencher) {
        let (umem, map) = present_umem();
        let mut buf = vec![0u8; LEN];
        bencher.counter(BytesCount::new(LEN)).bench_local(|| {
            umem.read(black_box(map.addr() + LEN), &mut buf)
                .expect("read")
        });
    }

    /// A device write of one present, page-aligned 4 KiB page.
    #[divan::bench(sample_size = 1000)]
    fn umem_write_4k(bencher: Bencher) {
        let (umem, map) = present_umem();
        let buf = vec![0x5au8; LEN];
        bencher.counter(BytesCount::new(LEN)).bench_local(|| {
            umem.write(black_box(map.addr() + LEN), &buf)
                .expect("write")
        });
    }

    /// The bare copy of the same 4 KiB.
    #[divan::bench(sample_size = 1000)]
    fn bare_memcpy_4k(bencher: Bencher) {
        let (_umem, map) = present_umem();
        let mut buf = vec![0u8; LEN];
        bencher.counter(BytesCount::new(LEN)).bench_local(|| {
            let src = black_box(map.addr() + LEN) as *const u8;
            // SAFETY: a present page of the benchmark's own mapping, and a
            // distinct buffer of the same length.
            unsafe { std::ptr::copy_nonoverlapping(src, buf.as_mut_ptr(), LEN) };
        });
    }

    /// The instruction device copies use (`rep movsb`), bare, on the same 4 KiB.
    #[divan::bench(sample_size = 1000)]
    fn bare_rep_movsb_4k(bencher: Bencher) {
        let (_umem, map) = present_umem();
        let mut buf = vec![0u8; LEN];
        bencher.counter(BytesCount::new(LEN)).bench_local(|| {
            let src = black_box(map.addr() + LEN) as *const u8;
            // SAFETY: copies LEN bytes from a present page of the
            // benchmark's mapping into a distinct buffer of LEN bytes.
            unsafe {
                std::arch::asm!(
                    "rep movsb",
                    inout("rcx") LEN => _,
                    inout("rsi") src => _,
                    inout("rdi") buf.as_mut_ptr() => _,
                );
            }
        });
    }
}

mod monitor {
    use super::*;
    use std::sync::OnceLock;

    const TOUCH_LEN: usize = 64 << 20;
    const READ_LEN: usize = 4096;

    /// A private address space (nothing else in the process reports to
    /// it), with the userfaultfd monitor on or off. The monitor is started
    /// once: registrations made through it are per process.
    fn space(with_monitor: bool) -> Arc<AddressSpace> {
        static WITH: OnceLock<Arc<AddressSpace>> = OnceLock::new();
        static WITHOUT: OnceLock<Arc<AddressSpace>> = OnceLock::new();
        if with_monitor {
            Arc::clone(WITH.get_or_init(|| {
                let aspace = Arc::new(AddressSpace::new_private());
                aspace.enable_userfaultfd().expect("userfaultfd");
                aspace
            }))
        } else {
            Arc::clone(WITHOUT.get_or_init(|| Arc::new(AddressSpace::new_private())))
        }
    }

    fn first_touch(bencher: Bencher, with_monitor: bool) {
        let aspace = space(with_monitor);
        bencher
            .counter(BytesCount::new(TOUCH_LEN))
            .with_inputs(|| {
                let map = aspace.map_anonymous(TOUCH_LEN, 0).expect("mapping");
                let umem = Umem::new(&aspace, map.addr(), TOUCH_LEN, UmemOptions::default())
                    .expect("umem");
                (umem, map)
            })
            .bench_local_refs(|(umem, map)| {
                umem.advise(map.addr(), TOUCH_LEN, Advice::PrefetchWrite)
                    .expect("fault");
            });
    }

    fn present_read(bencher: Bencher, with_monitor: bool) {
        let aspace = space(with_monitor);
        let map = aspace.map_anonymous(16 * READ_LEN, 0).expect("mapping");
        let umem = Umem::new(&aspace, map.addr(), map.len(), UmemOptions::default()).expect("umem");
        umem.advise(map.addr(), map.len(), Advice::PrefetchWrite)
            .expect("fault");
        let mut buf = vec![0u8; READ_LEN];
        bencher.counter(BytesCount::new(READ_LEN)).bench_local(|| {
            umem.read(black_box(map.addr() + READ_LEN), &mut buf)
                .expect("read")
        });
    }

    /// First touch of 64 MiB, faulted pages registered for events.
    #[divan::bench(sample_count = 20, sample_size = 1)]
    fn first_touch_with_monitor(bencher: Bencher) {
        first_touch(bencher, true);
    }

    /// First touch of 64 MiB, no monitor.
    #[divan::bench(sample_count = 20, sample_size = 1)]
    fn first_touch_without_monitor(bencher: Bencher) {
        first_touch(bencher, false);
    }

    /// A device read of 4 KiB of present pages, taking the monitor's gate.
    #[divan::bench(sample_size = 1000)]
    fn read_4k_with_monitor(bencher: Bencher) {
        present_read(bencher, true);
    }

    /// A device read of 4 KiB of present pages, no monitor.
    #[divan::bench(sample_size = 1000)]
    fn read_4k_without_monitor(bencher: Bencher) {
        present_read(bencher, false);
    }
}
