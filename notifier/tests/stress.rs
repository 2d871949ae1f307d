//! Randomised multi-thread stress test against a shadow page table.
//!
//! The shadow "CPU page table" is one generation number per page; an
//! address-space change bumps the generations of its pages strictly between
//! `invalidate_range_start` and its end, as the kernel changes PTEs. Drivers
//! mirror page ranges in a device table under their own lock and follow the
//! collision-retry pattern. Threads of every kind run at once:
//!
//! - faulters: `read_begin`, snapshot the generations, lock, `read_retry`,
//!   commit; at commit the snapshot must still be current;
//! - device users: under the driver lock, read and write through every present
//!   translation; a translation that is not current is a stale read, and a
//!   write through it a lost write;
//! - invalidators: blockable and non-blockable (which may fail and must then
//!   leave the pages alone), single and nested;
//! - churners: insert and remove drivers while all of the above runs; a
//!   callback that runs after its `remove` returned is an error.
//!
//! Every violation is counted, and the test asserts that all counts are zero
//! and that the notifier's own counters agree with what the threads did.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;

use notifier::{
    Event, IntervalNotifier, IntervalSubscription, NotifierError, NotifierRange, Subscriptions,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const PAGE: usize = 0x1000;
const PAGES: usize = 64;
const SLOTS: usize = 8;
const BASE: usize = 0x7000_0000;

fn page_addr(page: usize) -> usize {
    BASE + page * PAGE
}

/// The CPU side: a generation per page, and the words written through the
/// device, tagged by the generation they were written to.
struct Cpu {
    generation: Vec<AtomicU64>,
}

#[derive(Default)]
struct Violations {
    stale_commits: AtomicU64,
    stale_device_reads: AtomicU64,
    lost_writes: AtomicU64,
    callbacks_after_remove: AtomicU64,
}

impl Violations {
    fn total(&self) -> u64 {
        self.stale_commits.load(SeqCst)
            + self.stale_device_reads.load(SeqCst)
            + self.lost_writes.load(SeqCst)
            + self.callbacks_after_remove.load(SeqCst)
    }
}

#[derive(Default)]
struct Work {
    commits: AtomicU64,
    retries: AtomicU64,
    device_accesses: AtomicU64,
    invalidations: AtomicU64,
    would_block: AtomicU64,
    callbacks: AtomicU64,
    inserts: AtomicU64,
    removes: AtomicU64,
}

/// One mirroring driver: its range and its device page table.
struct DriverState {
    first_page: usize,
    pages: usize,
    /// The driver lock and what it guards: per page, the generation the
    /// device translation points at.
    table: Mutex<Vec<Option<u64>>>,
    removed: AtomicBool,
}

struct Driver {
    state: Arc<DriverState>,
    /// Taken only by `drop`.
    sub: Option<IntervalSubscription>,
}

impl Driver {
    fn sub(&self) -> &IntervalSubscription {
        self.sub.as_ref().expect("present until drop")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(sub) = self.sub.take() {
            sub.remove();
        }
        // From here on, a callback of this driver is a violation.
        self.state.removed.store(true, SeqCst);
    }
}

struct World {
    mm: Arc<Subscriptions>,
    cpu: Cpu,
    slots: Vec<Mutex<Option<Arc<Driver>>>>,
    violations: Violations,
    work: Work,
}

impl World {
    fn new() -> Self {
        Self {
            mm: Subscriptions::new(),
            cpu: Cpu {
                generation: (0..PAGES).map(|_| AtomicU64::new(0)).collect(),
            },
            slots: (0..SLOTS).map(|_| Mutex::new(None)).collect(),
            violations: Violations::default(),
            work: Work::default(),
        }
    }

    fn new_driver(self: &Arc<Self>, rng: &mut StdRng) -> Driver {
        let first_page = rng.random_range(0..PAGES);
        let pages = rng.random_range(1..=(PAGES - first_page).min(16));
        let state = Arc::new(DriverState {
            first_page,
            pages,
            table: Mutex::new(vec![None; pages]),
            removed: AtomicBool::new(false),
        });
        let (s, world) = (Arc::clone(&state), Arc::clone(self));
        let sub = self
            .mm
            .insert(
                page_addr(first_page),
                pages * PAGE,
                move |sub: &IntervalNotifier, range: &NotifierRange, cur_seq| {
                    world.invalidate_callback(&s, sub, range, cur_seq)
                },
            )
            .expect("insert");
        self.work.inserts.fetch_add(1, SeqCst);
        Driver {
            state,
            sub: Some(sub),
        }
    }

    fn invalidate_callback(
        &self,
        state: &DriverState,
        sub: &IntervalNotifier,
        range: &NotifierRange,
        cur_seq: u64,
    ) -> bool {
        self.work.callbacks.fetch_add(1, SeqCst);
        if state.removed.load(SeqCst) {
            self.violations.callbacks_after_remove.fetch_add(1, SeqCst);
        }
        let mut table = if range.is_blockable() {
            state.table.lock().unwrap()
        } else {
            match state.table.try_lock() {
                Ok(t) => t,
                Err(_) => return false,
            }
        };
        sub.set_seq(cur_seq);
        let first = (range.start().max(sub.start()) - sub.start()) / PAGE;
        let last = (range.last().min(sub.last()) - sub.start()) / PAGE;
        table[first..=last].fill(None);
        true
    }

    fn random_driver(&self, rng: &mut StdRng) -> Option<Arc<Driver>> {
        self.slots[rng.random_range(0..SLOTS)]
            .lock()
            .unwrap()
            .clone()
    }

    /// The collision-retry fault of a random sub-range of a driver.
    fn fault(&self, driver: &Driver, rng: &mut StdRng) {
        let state = &driver.state;
        let first = rng.random_range(0..state.pages);
        let count = rng.random_range(1..=state.pages - first);
        let mut snapshot = Vec::with_capacity(count);
        loop {
            let seq = driver.sub().read_begin();
            snapshot.clear();
            snapshot.extend(
                (first..first + count)
                    .map(|i| self.cpu.generation[state.first_page + i].load(SeqCst)),
            );
            // Making pages present takes time; give invalidations a window.
            if rng.random_bool(0.5) {
                thread::yield_now();
            }
            let mut table = state.table.lock().unwrap();
            if driver.sub().read_retry(seq) {
                self.work.retries.fetch_add(1, SeqCst);
                continue;
            }
            for (k, &generation) in snapshot.iter().enumerate() {
                let page = state.first_page + first + k;
                if self.cpu.generation[page].load(SeqCst) != generation {
                    self.violations.stale_commits.fetch_add(1, SeqCst);
                }
                table[first + k] = Some(generation);
            }
            self.work.commits.fetch_add(1, SeqCst);
            return;
        }
    }

    /// A device access through every present translation of a driver.
    fn device_access(&self, driver: &Driver, write: bool) {
        let state = &driver.state;
        let table = state.table.lock().unwrap();
        for (i, entry) in table.iter().enumerate() {
            let Some(generation) = *entry else { continue };
            if self.cpu.generation[state.first_page + i].load(SeqCst) != generation {
                if write {
                    self.violations.lost_writes.fetch_add(1, SeqCst);
                } else {
                    self.violations.stale_device_reads.fetch_add(1, SeqCst);
                }
            }
            self.work.device_accesses.fetch_add(1, SeqCst);
        }
    }

    fn random_range(&self, rng: &mut StdRng) -> (usize, usize) {
        let first = rng.random_range(0..PAGES);
        let count = rng.random_range(1..=(PAGES - first).min(8));
        (first, count)
    }

    /// The address-space change itself (the syscall between start and end).
    fn bump(&self, first: usize, count: usize) {
        thread::yield_now();
        for page in first..first + count {
            self.cpu.generation[page].fetch_add(1, SeqCst);
        }
    }

    fn notifier_range(first: usize, count: usize, event: Event) -> NotifierRange {
        NotifierRange::new(page_addr(first), page_addr(first + count), event).expect("range")
    }

    /// One address-space change: blockable, non-blockable (falling back to
    /// blockable after would-block, without touching the pages in between)
    /// or two nested ones.
    fn change(&self, rng: &mut StdRng) {
        let (first, count) = self.random_range(rng);
        let event = [
            Event::Unmap,
            Event::Remap,
            Event::Clear,
            Event::ProtectionVma,
        ][rng.random_range(0..4)];
        let range = Self::notifier_range(first, count, event);
        match rng.random_range(0..3) {
            0 => {
                let inv = self.mm.invalidate_range_start(&range).expect("blockable");
                self.work.invalidations.fetch_add(1, SeqCst);
                self.bump(first, count);
                inv.end();
            }
            1 => {
                self.work.invalidations.fetch_add(1, SeqCst);
                match self.mm.invalidate_range_start(&range.nonblocking()) {
                    Ok(inv) => {
                        self.bump(first, count);
                        inv.end();
                    }
                    Err(NotifierError::WouldBlock) => {
                        self.work.would_block.fetch_add(1, SeqCst);
                        let inv = self.mm.invalidate_range_start(&range).expect("blockable");
                        self.work.invalidations.fetch_add(1, SeqCst);
                        self.bump(first, count);
                        inv.end();
                    }
                    Err(e) => panic!("unexpected error {e}"),
                }
            }
            _ => {
                let (first2, count2) = self.random_range(rng);
                let outer = self.mm.invalidate_range_start(&range).expect("blockable");
                let inner = self
                    .mm
                    .invalidate_range_start(&Self::notifier_range(first2, count2, event))
                    .expect("blockable");
                self.work.invalidations.fetch_add(2, SeqCst);
                self.bump(first, count);
                self.bump(first2, count2);
                if rng.random_bool(0.5) {
                    outer.end();
                    inner.end();
                } else {
                    inner.end();
                    outer.end();
                }
            }
        }
    }

    /// Replace the driver of a random slot (removing the old one).
    fn churn(self: &Arc<Self>, rng: &mut StdRng) {
        let slot = rng.random_range(0..SLOTS);
        let new = if rng.random_bool(0.8) {
            Some(Arc::new(self.new_driver(rng)))
        } else {
            None
        };
        let old = std::mem::replace(&mut *self.slots[slot].lock().unwrap(), new);
        if old.is_some() {
            self.work.removes.fetch_add(1, SeqCst);
        }
        // The last `Arc` may be held by a faulter; whoever drops it removes.
        drop(old);
    }
}

/// Runs one seeded round; returns (collisions retried, deferred inserts and
/// removes, would-block invalidations).
fn run(seed: u64, ops_per_thread: usize) -> (u64, u64, u64) {
    let world = Arc::new(World::new());
    let mut rng = StdRng::seed_from_u64(seed);
    for _ in 0..SLOTS / 2 {
        world.churn(&mut rng);
    }
    type Role = fn(&Arc<World>, &mut StdRng);
    // (name, one operation, threads). The faulters run `ops_per_thread`
    // operations; every other thread runs until the last faulter is done,
    // so all kinds overlap for the whole run.
    let faulters = 3;
    let roles: [(&str, Role, usize); 5] = [
        (
            "faulter",
            |w, r| {
                if let Some(d) = w.random_driver(r) {
                    w.fault(&d, r);
                }
            },
            faulters,
        ),
        (
            "device",
            |w, r| {
                if let Some(d) = w.random_driver(r) {
                    w.device_access(&d, r.random_bool(0.5));
                }
            },
            1,
        ),
        ("invalidator", |w, r| w.change(r), 2),
        ("churner", |w, r| w.churn(r), 1),
        (
            "observer",
            |w, _| {
                // Reading stats takes the state lock from yet another thread.
                let _ = w.mm.stats();
            },
            1,
        ),
    ];
    let threads: usize = roles.iter().map(|r| r.2).sum();
    let start = Arc::new(Barrier::new(threads));
    let faulters_running = Arc::new(AtomicU64::new(faulters as u64));
    let mut handles = Vec::new();
    for (role_index, (name, role, threads)) in roles.into_iter().enumerate() {
        for t in 0..threads {
            let world = Arc::clone(&world);
            let start = Arc::clone(&start);
            let faulters_running = Arc::clone(&faulters_running);
            let thread_seed = seed ^ ((role_index as u64) << 32) ^ t as u64;
            handles.push(
                thread::Builder::new()
                    .name(format!("{name}-{t}"))
                    .spawn(move || {
                        let mut rng = StdRng::seed_from_u64(thread_seed);
                        start.wait();
                        if role_index == 0 {
                            for _ in 0..ops_per_thread {
                                role(&world, &mut rng);
                            }
                            faulters_running.fetch_sub(1, SeqCst);
                        } else {
                            while faulters_running.load(SeqCst) > 0 {
                                role(&world, &mut rng);
                                // Let the faulters, which yield, keep up.
                                thread::yield_now();
                            }
                        }
                    })
                    .expect("spawn"),
            );
        }
    }
    for h in handles {
        h.join().expect("stress thread panicked");
    }
    for slot in &world.slots {
        if slot.lock().unwrap().take().is_some() {
            world.work.removes.fetch_add(1, SeqCst);
        }
    }

    let v = &world.violations;
    assert_eq!(
        v.total(),
        0,
        "seed {seed}: stale commits {}, stale device reads {}, lost writes {}, callbacks after remove {}",
        v.stale_commits.load(SeqCst),
        v.stale_device_reads.load(SeqCst),
        v.lost_writes.load(SeqCst),
        v.callbacks_after_remove.load(SeqCst),
    );
    let w = &world.work;
    let stats = world.mm.stats();
    assert_eq!(stats.active_invalidate_ranges, 0, "seed {seed}");
    assert_eq!(stats.invalidate_seq % 2, 0, "seed {seed}");
    assert_eq!(
        (stats.linked, stats.deferred_pending),
        (0, 0),
        "seed {seed}"
    );
    assert_eq!(
        stats.invalidations,
        w.invalidations.load(SeqCst),
        "seed {seed}"
    );
    assert_eq!(stats.would_block, w.would_block.load(SeqCst), "seed {seed}");
    assert_eq!(stats.callbacks, w.callbacks.load(SeqCst), "seed {seed}");
    assert_eq!(stats.blockable_refusals, 0, "seed {seed}");
    assert_eq!(
        w.inserts.load(SeqCst),
        w.removes.load(SeqCst),
        "seed {seed}"
    );
    // The run must have exercised the races, not just the easy paths.
    assert!(w.commits.load(SeqCst) > 0 && w.device_accesses.load(SeqCst) > 0);
    assert!(stats.invalidations_hit > 0);
    (
        w.retries.load(SeqCst),
        stats.deferred_inserts + stats.deferred_removes,
        stats.would_block,
    )
}

#[test]
fn concurrent_faults_invalidations_and_churn_never_leave_stale_translations() {
    let (mut retries, mut deferred, mut would_block) = (0, 0, 0);
    for seed in 0..8 {
        let (r, d, w) = run(seed, 20_000);
        retries += r;
        deferred += d;
        would_block += w;
    }
    // The races the test is about happened, or a pass would prove nothing.
    assert!(retries > 0, "no fault ever collided");
    assert!(deferred > 0, "no insert or remove was ever deferred");
    assert!(
        would_block > 0,
        "no non-blockable invalidation ever backed out"
    );
}
