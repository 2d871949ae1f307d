//! Race stress test: device accesses, faults and prefetches against threads
//! that unmap, replace, discard and protect the same pages, checked against
//! a shadow model.
//!
//! Every page holds a pattern that names the page and its generation, except
//! for a few token words that device writers own. A mutation bumps the
//! page's `pending` generation before the change and its `done` generation
//! after it, so an access that read `done = d0` before and `pending = p1`
//! after overlapped exactly the mutations `d0 + 1 ..= p1`. The checks:
//!
//! - a device read of a page returns one whole version of it (a pattern of a
//!   generation in `d0 ..= p1`, or zeros if a discard is in that window):
//!   never a mix, which would mean the page changed during the access;
//! - a read or write fails only if a hole or protection change overlapped it;
//! - a device write that overlapped no mutation is found in memory at the
//!   end unless the page changed later (no lost write);
//! - under the driver lock, every present page is mapped
//!   ([`Umem::verify_mapped`]): no stale translation;
//! - the process survives; the counters add up.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread;

use odp::{AddressSpace, Advice, OdpError, Umem, UmemOptions, page_size};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const PAGES: usize = 24;
/// Words at the start of each page that belong to device writers.
const TOKEN_WORDS: usize = 4;
const WORD: usize = 8;

fn pattern(page: usize, generation: u64) -> u64 {
    ((page as u64 + 1) << 40) | (generation << 1) | 1
}

/// How a mutation reaches the kernel (and so which event source sees it).
trait Source: Send + Sync {
    /// # Safety
    /// As the system call.
    unsafe fn munmap(&self, addr: usize, len: usize);
    /// Moves `[from, from + len)` onto `to`, replacing what was there.
    /// # Safety
    /// As the system call.
    unsafe fn move_onto(&self, from: usize, len: usize, to: usize);
    /// # Safety
    /// As the system call.
    unsafe fn discard(&self, addr: usize, len: usize);
    /// # Safety
    /// As the system call.
    unsafe fn protect(&self, addr: usize, len: usize, prot: libc::c_int);
}

/// The explicit wrappers of [`AddressSpace`].
struct Explicit(Arc<AddressSpace>);

impl Source for Explicit {
    unsafe fn munmap(&self, addr: usize, len: usize) {
        // SAFETY: the caller's contract.
        unsafe { self.0.munmap(addr as *mut libc::c_void, len) }.expect("munmap");
    }
    unsafe fn move_onto(&self, from: usize, len: usize, to: usize) {
        let flags = libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED;
        // SAFETY: the caller's contract.
        unsafe {
            self.0.mremap(
                from as *mut libc::c_void,
                len,
                len,
                flags,
                to as *mut libc::c_void,
            )
        }
        .expect("mremap");
    }
    unsafe fn discard(&self, addr: usize, len: usize) {
        // SAFETY: the caller's contract.
        unsafe {
            self.0
                .madvise(addr as *mut libc::c_void, len, libc::MADV_DONTNEED)
        }
        .expect("madvise");
    }
    unsafe fn protect(&self, addr: usize, len: usize, prot: libc::c_int) {
        // SAFETY: the caller's contract.
        unsafe { self.0.mprotect(addr as *mut libc::c_void, len, prot) }.expect("mprotect");
    }
}

/// Direct calls into libc: reported only if something interposes them (or
/// sees them in the kernel).
struct Libc;

fn ok(rc: libc::c_int, what: &str) {
    assert_eq!(rc, 0, "{what}: {}", std::io::Error::last_os_error());
}

impl Source for Libc {
    unsafe fn munmap(&self, addr: usize, len: usize) {
        // SAFETY: the caller's contract.
        ok(
            unsafe { libc::munmap(addr as *mut libc::c_void, len) },
            "munmap",
        );
    }
    unsafe fn move_onto(&self, from: usize, len: usize, to: usize) {
        let flags = libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED;
        // SAFETY: the caller's contract.
        let p = unsafe {
            libc::mremap(
                from as *mut libc::c_void,
                len,
                len,
                flags,
                to as *mut libc::c_void,
            )
        };
        assert_eq!(
            p as usize,
            to,
            "mremap: {}",
            std::io::Error::last_os_error()
        );
    }
    unsafe fn discard(&self, addr: usize, len: usize) {
        // SAFETY: the caller's contract.
        ok(
            unsafe { libc::madvise(addr as *mut libc::c_void, len, libc::MADV_DONTNEED) },
            "madvise",
        );
    }
    unsafe fn protect(&self, addr: usize, len: usize, prot: libc::c_int) {
        // SAFETY: the caller's contract.
        ok(
            unsafe { libc::mprotect(addr as *mut libc::c_void, len, prot) },
            "mprotect",
        );
    }
}

/// Raw system calls: no interposition sees them; only userfaultfd does.
struct Raw;

fn sys_ok(rc: libc::c_long, what: &str) {
    assert!(rc >= 0, "{what}: {}", std::io::Error::last_os_error());
}

impl Source for Raw {
    unsafe fn munmap(&self, addr: usize, len: usize) {
        // SAFETY: the caller's contract.
        sys_ok(
            unsafe { libc::syscall(libc::SYS_munmap, addr, len) },
            "munmap",
        );
    }
    unsafe fn move_onto(&self, from: usize, len: usize, to: usize) {
        let flags = libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED;
        // SAFETY: the caller's contract.
        let rc = unsafe { libc::syscall(libc::SYS_mremap, from, len, len, flags, to) };
        assert_eq!(
            rc as usize,
            to,
            "mremap: {}",
            std::io::Error::last_os_error()
        );
    }
    unsafe fn discard(&self, addr: usize, len: usize) {
        // SAFETY: the caller's contract.
        let rc = unsafe { libc::syscall(libc::SYS_madvise, addr, len, libc::MADV_DONTNEED) };
        sys_ok(rc, "madvise");
    }
    unsafe fn protect(&self, addr: usize, len: usize, prot: libc::c_int) {
        // SAFETY: the caller's contract.
        sys_ok(
            unsafe { libc::syscall(libc::SYS_mprotect, addr, len, prot) },
            "mprotect",
        );
    }
}

/// What the source promises.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Promise {
    /// Every change is invalidated before it happens (wrappers,
    /// interposition): no access ever overlaps a change.
    Before,
    /// Unmaps and remaps are reported after they happen (userfaultfd): an
    /// access that overlaps such a change may see the page change under it,
    /// and the table may hold a stale entry until the monitor catches up.
    AfterTheFact,
}

/// The last device write to one token word.
#[derive(Clone, Copy)]
enum Token {
    /// Written while no mutation of the page ran, at this generation.
    Clean { value: u64, generation: u64 },
    /// Overlapped a mutation: may or may not have survived it.
    Unknown,
}

struct Page {
    pending: AtomicU64,
    done: AtomicU64,
    /// Latest generation whose mutation discarded the page (zeros).
    last_zero: AtomicU64,
    /// Latest generation whose mutation left a hole for a while.
    last_hole: AtomicU64,
    /// Protection changes started and finished (read-only windows).
    protect_started: AtomicU64,
    protect_done: AtomicU64,
    tokens: Mutex<[Option<Token>; TOKEN_WORDS]>,
}

struct World {
    promise: Promise,
    aspace: Arc<AddressSpace>,
    source: Box<dyn Source>,
    base: usize,
    umem: Umem,
    pages: Vec<Page>,
    stop: AtomicBool,
    violations: Mutex<Vec<String>>,
    /// Invalidations the mutator caused over the umem.
    expected_invalidations: AtomicU64,
    accesses: AtomicU64,
    tolerated_errors: AtomicU64,
}

impl World {
    fn addr(&self, page: usize) -> usize {
        self.base + page * page_size()
    }

    fn violation(&self, what: String) {
        self.violations.lock().unwrap().push(what);
    }

    /// A fresh page outside the umem holding `pattern(page, generation)`.
    fn prepared_page(&self, page: usize, generation: u64) -> usize {
        let map = self.aspace.map_anonymous(page_size(), 0).expect("scratch");
        let words = page_size() / WORD;
        let p = map.ptr().cast::<u64>();
        for w in TOKEN_WORDS..words {
            // SAFETY: `w` is inside the fresh scratch page we own.
            unsafe { p.add(w).write(pattern(page, generation)) };
        }
        map.into_raw().0
    }

    fn mutate(&self, rng: &mut StdRng) {
        let page = rng.random_range(0..PAGES);
        let state = &self.pages[page];
        let addr = self.addr(page);
        let ps = page_size();
        if rng.random_range(0..5) == 0 {
            state.protect_started.fetch_add(1, SeqCst);
            // SAFETY: a page of the test's own mapping.
            unsafe { self.source.protect(addr, ps, libc::PROT_READ) };
            thread::yield_now();
            // SAFETY: as above.
            unsafe {
                self.source
                    .protect(addr, ps, libc::PROT_READ | libc::PROT_WRITE)
            };
            state.protect_done.fetch_add(1, SeqCst);
            self.expected_invalidations.fetch_add(2, SeqCst);
            return;
        }
        let generation = state.done.load(SeqCst) + 1;
        state.pending.store(generation, SeqCst);
        match rng.random_range(0..3) {
            0 => {
                let scratch = self.prepared_page(page, generation);
                // SAFETY: replaces one page of the test's mapping.
                unsafe { self.source.move_onto(scratch, ps, addr) };
                self.expected_invalidations.fetch_add(1, SeqCst);
            }
            1 => {
                state.last_zero.store(generation, SeqCst);
                // SAFETY: discards one page of the test's mapping.
                unsafe { self.source.discard(addr, ps) };
                self.expected_invalidations.fetch_add(1, SeqCst);
            }
            _ => {
                // Prepared first: once the hole exists, a new mapping could
                // land in it.
                let scratch = self.prepared_page(page, generation);
                state.last_hole.store(generation, SeqCst);
                // SAFETY: unmaps one page of the test's mapping; it is
                // mapped again below before the generation completes.
                unsafe { self.source.munmap(addr, ps) };
                thread::yield_now();
                // SAFETY: fills the hole with a prepared page.
                unsafe { self.source.move_onto(scratch, ps, addr) };
                self.expected_invalidations.fetch_add(2, SeqCst);
            }
        }
        state.done.store(generation, SeqCst);
    }

    /// Whether an error of an access to `page` that started at generation
    /// `done_before` (and protection count `protect_before`) is explained by
    /// a mutation that overlapped it.
    fn error_explained(
        &self,
        page: usize,
        err: OdpError,
        done_before: u64,
        protect_before: u64,
    ) -> bool {
        let state = &self.pages[page];
        match err {
            OdpError::Unmapped { .. } => state.last_hole.load(SeqCst) > done_before,
            OdpError::AccessDenied { write: true, .. } => {
                state.protect_started.load(SeqCst) > protect_before
                    || state.protect_done.load(SeqCst) != state.protect_started.load(SeqCst)
            }
            _ => false,
        }
    }

    fn device_read(&self, rng: &mut StdRng) {
        let page = rng.random_range(0..PAGES);
        let state = &self.pages[page];
        let words = page_size() / WORD - TOKEN_WORDS;
        let first = rng.random_range(0..words);
        let count = rng.random_range(1..=words - first);
        let mut buf = vec![0u64; count];
        let done_before = state.done.load(SeqCst);
        let protect_before = state.protect_done.load(SeqCst);
        // SAFETY: u64 has no invalid bit patterns; the byte view is the
        // buffer's exact extent.
        let bytes =
            unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<u8>(), count * WORD) };
        let va = self.addr(page) + (TOKEN_WORDS + first) * WORD;
        let result = self.umem.read(va, bytes);
        let pending_after = state.pending.load(SeqCst);
        self.accesses.fetch_add(1, SeqCst);
        match result {
            Err(e) if self.error_explained(page, e, done_before, protect_before) => {
                self.tolerated_errors.fetch_add(1, SeqCst);
            }
            Err(e) => self.violation(format!("page {page}: read failed: {e}")),
            Ok(()) => {
                let v = buf[0];
                let torn = buf.iter().any(|&w| w != v);
                if torn && self.promise == Promise::AfterTheFact && pending_after > done_before {
                    // The page changed under the access, reported later.
                    self.tolerated_errors.fetch_add(1, SeqCst);
                } else if torn {
                    self.violation(format!(
                        "page {page}: torn read (page changed during access)"
                    ));
                } else if v == 0 {
                    if state.last_zero.load(SeqCst) < done_before {
                        self.violation(format!("page {page}: zeros with no discard in window"));
                    }
                } else {
                    let generation = (v & ((1 << 40) - 1)) >> 1;
                    if v != pattern(page, generation)
                        || generation < done_before
                        || generation > pending_after
                    {
                        self.violation(format!(
                            "page {page}: stale or foreign data {v:#x} (window {done_before}..={pending_after})"
                        ));
                    }
                }
            }
        }
    }

    fn device_write(&self, rng: &mut StdRng, slot: usize) {
        let page = rng.random_range(0..PAGES);
        let state = &self.pages[page];
        let value: u64 = rng.random::<u64>() | 1;
        let pending_before = state.pending.load(SeqCst);
        let done_before = state.done.load(SeqCst);
        let protect_before = state.protect_done.load(SeqCst);
        let result = self
            .umem
            .write(self.addr(page) + slot * WORD, &value.to_ne_bytes());
        let pending_after = state.pending.load(SeqCst);
        self.accesses.fetch_add(1, SeqCst);
        let clean = pending_before == pending_after && done_before == pending_before;
        let mut tokens = state.tokens.lock().unwrap();
        match result {
            Ok(()) if clean => {
                tokens[slot] = Some(Token::Clean {
                    value,
                    generation: done_before,
                });
            }
            Ok(()) => tokens[slot] = Some(Token::Unknown),
            Err(e) if self.error_explained(page, e, done_before, protect_before) => {
                self.tolerated_errors.fetch_add(1, SeqCst);
            }
            Err(e) => self.violation(format!("page {page}: write failed: {e}")),
        }
    }

    fn prefetch(&self, rng: &mut StdRng) {
        let first = rng.random_range(0..PAGES);
        let count = rng.random_range(1..=(PAGES - first).min(4));
        let advice = [
            Advice::Prefetch,
            Advice::PrefetchWrite,
            Advice::PrefetchNoFault,
        ][rng.random_range(0..3)];
        match self
            .umem
            .advise(self.addr(first), count * page_size(), advice)
        {
            Ok(()) | Err(OdpError::Unmapped { .. } | OdpError::AccessDenied { .. }) => {}
            Err(e) => self.violation(format!("prefetch failed: {e}")),
        }
    }

    fn audit(&self) {
        if self.promise == Promise::AfterTheFact && !self.stop.load(SeqCst) {
            // Entries may be stale until the monitor catches up; checked
            // at the end instead.
            return;
        }
        if let Err(e) = self.umem.verify_mapped() {
            self.violation(format!("stale translation: {e}"));
        }
    }

    /// After all threads stopped: clean device writes survived.
    fn check_tokens(&self) {
        for (page, state) in self.pages.iter().enumerate() {
            let final_generation = state.done.load(SeqCst);
            for (slot, token) in state.tokens.lock().unwrap().iter().enumerate() {
                let Some(Token::Clean { value, generation }) = *token else {
                    continue;
                };
                if generation != final_generation {
                    continue;
                }
                let mut got = [0u8; WORD];
                self.umem
                    .read(self.addr(page) + slot * WORD, &mut got)
                    .expect("final read");
                if u64::from_ne_bytes(got) != value {
                    self.violation(format!("page {page} slot {slot}: lost write"));
                }
            }
        }
    }
}

fn run(
    source_of: impl FnOnce(Arc<AddressSpace>) -> Box<dyn Source>,
    promise: Promise,
    seed: u64,
    mutations: usize,
) {
    // One run at a time: a run punches one-page holes, which another run's
    // mappings must not fill.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let aspace = AddressSpace::process();
    let ps = page_size();
    let (base, len) = aspace
        .map_anonymous(PAGES * ps, 0)
        .expect("mmap")
        .into_raw();
    for page in 0..PAGES {
        let p = (base + page * ps) as *mut u64;
        for w in TOKEN_WORDS..ps / WORD {
            // SAFETY: inside the mapping we just created.
            unsafe { p.add(w).write(pattern(page, 0)) };
        }
    }
    let umem = Umem::new(&aspace, base, len, UmemOptions::default()).expect("umem");
    let world = Arc::new(World {
        promise,
        source: source_of(Arc::clone(&aspace)),
        aspace,
        base,
        umem,
        pages: (0..PAGES)
            .map(|_| Page {
                pending: AtomicU64::new(0),
                done: AtomicU64::new(0),
                last_zero: AtomicU64::new(0),
                last_hole: AtomicU64::new(0),
                protect_started: AtomicU64::new(0),
                protect_done: AtomicU64::new(0),
                tokens: Mutex::new([None; TOKEN_WORDS]),
            })
            .collect(),
        stop: AtomicBool::new(false),
        violations: Mutex::new(Vec::new()),
        expected_invalidations: AtomicU64::new(0),
        accesses: AtomicU64::new(0),
        tolerated_errors: AtomicU64::new(0),
    });

    type Role = fn(&World, &mut StdRng, usize);
    let roles: [(Role, usize); 4] = [
        (|w, r, _| w.device_read(r), 2),
        (|w, r, slot| w.device_write(r, slot), 2),
        (|w, r, _| w.prefetch(r), 1),
        (|w, _, _| w.audit(), 1),
    ];
    let threads: usize = roles.iter().map(|r| r.1).sum();
    let start = Arc::new(std::sync::Barrier::new(threads + 1));
    let mut handles = Vec::new();
    for (role_index, (role, threads)) in roles.into_iter().enumerate() {
        for t in 0..threads {
            let world = Arc::clone(&world);
            let start = Arc::clone(&start);
            let mut rng = StdRng::seed_from_u64(seed ^ ((role_index as u64) << 16) ^ t as u64);
            handles.push(thread::spawn(move || {
                start.wait();
                while !world.stop.load(SeqCst) {
                    role(&world, &mut rng, t);
                }
            }));
        }
    }
    start.wait();
    while world.accesses.load(SeqCst) == 0 {
        thread::yield_now();
    }
    let mut rng = StdRng::seed_from_u64(seed);
    for _ in 0..mutations {
        world.mutate(&mut rng);
        thread::yield_now();
    }
    world.stop.store(true, SeqCst);
    for h in handles {
        h.join().expect("stress thread panicked");
    }
    // Any device access now starts after the monitor has handled every
    // event of the mutations (their system calls have returned).
    world.check_tokens();
    world.audit();

    let violations = world.violations.lock().unwrap();
    assert!(
        violations.is_empty(),
        "seed {seed}: {} violations, first: {:?}",
        violations.len(),
        &violations[..violations.len().min(5)]
    );
    let c = world.umem.counters();
    if promise == Promise::Before {
        assert_eq!(
            c.invalidations,
            world.expected_invalidations.load(SeqCst),
            "seed {seed}"
        );
        assert_eq!(c.stale_pages, 0, "seed {seed}: a change went unreported");
    } else {
        assert!(
            c.pages_invalidated > 0,
            "seed {seed}: the monitor invalidated nothing"
        );
    }
    assert_eq!(
        c.pages_faulted - c.pages_invalidated - c.stale_pages,
        world.umem.present_pages() as u64,
        "seed {seed}: every page made present is present or was invalidated"
    );
    assert!(world.accesses.load(SeqCst) > 0);
    drop(violations);
    let world = Arc::into_inner(world).expect("threads joined");
    let World {
        aspace, base, umem, ..
    } = world;
    drop(umem);
    // SAFETY: the test's mapping, no longer used.
    unsafe { aspace.munmap(base as *mut libc::c_void, PAGES * ps) }.expect("munmap");
}

#[test]
fn explicit_wrappers_keep_device_accesses_coherent() {
    for seed in 0..4 {
        run(
            |aspace| Box::new(Explicit(aspace)),
            Promise::Before,
            seed,
            400,
        );
    }
}

#[test]
fn interposed_libc_calls_keep_device_accesses_coherent() {
    common::assert_child_passed(&common::run_child(
        "child_interposed_race",
        common::Preload::Yes,
    ));
}

#[test]
#[ignore = "runs as a child of interposed_libc_calls_keep_device_accesses_coherent"]
fn child_interposed_race() {
    assert!(AddressSpace::process().interposition_active());
    for seed in 10..14 {
        run(|_| Box::new(Libc), Promise::Before, seed, 400);
    }
}

#[test]
fn userfaultfd_reports_raw_syscalls_without_crashes_or_lost_writes() {
    common::assert_child_passed(&common::run_child(
        "child_userfaultfd_race",
        common::Preload::No,
    ));
}

#[test]
#[ignore = "runs as a child of userfaultfd_reports_raw_syscalls_without_crashes_or_lost_writes"]
fn child_userfaultfd_race() {
    let aspace = AddressSpace::process();
    aspace.enable_userfaultfd().expect("userfaultfd");
    for seed in 20..24 {
        run(|_| Box::new(Raw), Promise::AfterTheFact, seed, 400);
    }
    let stats = aspace.userfaultfd_stats().expect("enabled");
    // Replacements move unregistered scratch pages, so no remap events.
    assert!(stats.unmaps > 0 && stats.removes > 0, "{stats:?}");
    assert!(stats.watched > 0);
    assert_eq!(stats.uncovered, 0, "{stats:?}");
}
