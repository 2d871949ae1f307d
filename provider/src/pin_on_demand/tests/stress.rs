//! Seeded stress test with a shadow model: worker threads map entries and
//! hold their tokens for a while, one thread replaces chunks with new
//! memory (`mremap` of a new mapping onto them) and discards them, through
//! the explicit wrappers.
//!
//! Each thread's sequence of operations comes from the seed, so a failing
//! seed replays the same operations (`POD_STRESS_SEED=<n>`), though not
//! the same interleaving. `POD_STRESS_SEEDS=<n>` runs more seeds.
//!
//! Invariants checked:
//! - every token's chunks stay pinned while it is held (no registration is
//!   used after its invalidation completed);
//! - at any time, the tokens held for one chunk all name the same
//!   registration (never two committed registrations of a chunk in use);
//! - by the end every pin was unpinned exactly once, and the counters
//!   agree with the pinner's records.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use odp::AddressSpace;

use super::pinner::MlockPinner;
use super::{Region, aligned, chunk, drop_and_check, region, replace};
use crate::pin_on_demand::{Piece, PinError};

const CHUNKS: usize = 12;
const WORKERS: u64 = 3;
const OPS_PER_WORKER: usize = 400;

/// The shadow: per chunk, the registration that held tokens name, and how
/// many tokens hold it.
struct Shadow {
    seed: u64,
    chunks: Mutex<HashMap<usize, (u32, usize)>>,
}

impl Shadow {
    /// Records a token's pieces (after `map_sge` returned).
    fn acquire(&self, base: usize, pieces: &[Piece]) {
        let mut chunks = self.chunks.lock().unwrap();
        for piece in pieces {
            let idx = (piece.addr as usize - base) / chunk();
            let entry = chunks.entry(idx).or_insert((piece.lkey, 0));
            assert!(
                entry.1 == 0 || entry.0 == piece.lkey,
                "seed {}: chunk {idx}: registration {} in use while {} is held",
                self.seed,
                piece.lkey,
                entry.0
            );
            *entry = (piece.lkey, entry.1 + 1);
        }
    }

    /// Forgets a token's pieces (before the token is dropped).
    fn release(&self, base: usize, pieces: &[Piece]) {
        let mut chunks = self.chunks.lock().unwrap();
        for piece in pieces {
            let idx = (piece.addr as usize - base) / chunk();
            chunks.get_mut(&idx).expect("acquired").1 -= 1;
        }
    }
}

/// What the workers saw.
#[derive(Default)]
struct Tally {
    mapped: AtomicU64,
    unmapped_errors: AtomicU64,
    busy_errors: AtomicU64,
}

fn worker(
    seed: u64,
    region: &Region,
    pinner: &MlockPinner,
    shadow: &Shadow,
    tally: &Tally,
    base: usize,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let span = CHUNKS * chunk();
    let mut pieces = Vec::new();
    for _ in 0..OPS_PER_WORKER {
        let va = base + rng.random_range(0..span);
        let len = rng.random_range(1..=(3 * chunk()).min(base + span - va));
        pieces.clear();
        let token = match region.map_sge(va as u64, len as u32, &mut pieces) {
            Ok(token) => token,
            Err(PinError::Unmapped { .. }) => {
                tally.unmapped_errors.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Err(PinError::Busy { .. }) => {
                tally.busy_errors.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Err(e) => panic!("seed {seed}: {e}"),
        };
        tally.mapped.fetch_add(1, Ordering::Relaxed);
        shadow.acquire(base, &pieces);
        let live = |pieces: &[Piece]| pieces.iter().all(|p| pinner.is_live(p.lkey));
        assert!(
            live(&pieces),
            "seed {seed}: a registration in use was unpinned"
        );
        // The "device" works on the request for a while.
        for _ in 0..rng.random_range(0..4) {
            thread::yield_now();
        }
        assert!(
            live(&pieces),
            "seed {seed}: unpinned under a request in flight"
        );
        shadow.release(base, &pieces);
        token.complete();
    }
}

fn changer(seed: u64, aspace: &Arc<AddressSpace>, base: usize, stop: &AtomicBool) -> u64 {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut changes = 0;
    while !stop.load(Ordering::Relaxed) {
        let first = rng.random_range(0..CHUNKS);
        let chunks = rng.random_range(1..=2).min(CHUNKS - first);
        let (addr, len) = (base + first * chunk(), chunks * chunk());
        let ptr = addr as *mut libc::c_void;
        if rng.random_bool(0.5) {
            replace(aspace, addr, len, changes as u8);
        } else {
            // SAFETY: chunks of the test's own mapping, whose contents
            // nothing reads. DONTNEED_LOCKED: racing faults may have
            // mlocked the pages (plain DONTNEED fails on locked pages).
            unsafe { aspace.madvise(ptr, len, libc::MADV_DONTNEED_LOCKED) }.expect("madvise");
        }
        changes += 1;
        thread::yield_now();
    }
    changes
}

fn run(seed: u64) {
    eprintln!("pin-on-demand stress: POD_STRESS_SEED={seed}");
    let aspace = Arc::new(AddressSpace::new_private());
    let (map, base) = aligned(&aspace, CHUNKS);
    let (region, pinner) = region(&aspace, base, CHUNKS * chunk());
    let shadow = Shadow {
        seed,
        chunks: Mutex::default(),
    };
    let (tally, stop) = (Tally::default(), AtomicBool::new(false));
    let changes = thread::scope(|s| {
        let changer = s.spawn(|| changer(seed, &aspace, base, &stop));
        let workers: Vec<_> = (1..=WORKERS)
            .map(|w| {
                let (region, pinner, shadow, tally) = (&region, &*pinner, &shadow, &tally);
                s.spawn(move || worker(seed.wrapping_add(w), region, pinner, shadow, tally, base))
            })
            .collect();
        let results: Vec<_> = workers.into_iter().map(|w| w.join()).collect();
        // Stop the changer before a worker's panic is passed on: the scope
        // waits for every thread.
        stop.store(true, Ordering::Relaxed);
        let changes = changer.join().expect("changer");
        for result in results {
            result.expect("worker");
        }
        changes
    });
    let during = region.counters();
    assert!(during.chunks_pinned <= CHUNKS as u64, "{during:?}");
    let counters = drop_and_check(region, &pinner);
    assert_eq!(counters.forced_unpins, 0, "seed {seed}: {counters:?}");
    let mapped = tally.mapped.load(Ordering::Relaxed);
    assert!(mapped > 0, "seed {seed}: nothing mapped");
    eprintln!(
        "seed {seed}: {mapped} mapped, {} unmapped, {} busy, {changes} changes, {counters:?}",
        tally.unmapped_errors.load(Ordering::Relaxed),
        tally.busy_errors.load(Ordering::Relaxed),
    );
    drop(map);
}

fn env(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
fn seeded_stress_with_a_shadow_model() {
    if let Some(seed) = env("POD_STRESS_SEED") {
        return run(seed);
    }
    let first = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_secs());
    for seed in first..first + env("POD_STRESS_SEEDS").unwrap_or(3) {
        run(seed);
    }
}
