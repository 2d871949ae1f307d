//! Benchmarks of the notifier's hot paths.
//!
//! `cargo bench -p notifier` runs them all. The invalidation benchmarks use N
//! subscriptions of 4 KiB each, 8 KiB apart, and invalidate one 4 KiB range
//! per iteration, cycling through targets spread over the whole set (so the
//! walk is not always down the same cached path):
//!
//! - `invalidate_hit`: the range overlaps one subscription (interval tree);
//! - `invalidate_hit_same_target`: the same, always on one target, so the
//!   tree path stays cached;
//! - `invalidate_miss`: the range falls in a gap (the common case of an unmap
//!   nobody mirrors);
//! - `naive_list_hit`: the same hit against a plain list that offers every
//!   invalidation to every subscription, which filters by range itself: the
//!   design the kernel's interval notifier replaced. The list is walked with
//!   no lock at all, the cheapest such baseline can be.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use divan::Bencher;
use notifier::{Event, IntervalNotifier, IntervalSubscription, NotifierRange, Subscriptions};

fn main() {
    divan::main();
}

const PAGE: usize = 0x1000;
const BASE: usize = 0x1000_0000;
const SIZES: [usize; 4] = [1, 1_000, 100_000, 1_000_000];

/// The callback every benchmark uses: what a driver does at minimum.
fn callback(sub: &IntervalNotifier, _: &NotifierRange, cur_seq: u64) -> bool {
    sub.set_seq(cur_seq);
    true
}

fn subscribe_all(n: usize) -> (Arc<Subscriptions>, Vec<IntervalSubscription>) {
    let mm = Subscriptions::new();
    let subs = (0..n)
        .map(|i| {
            mm.insert(BASE + i * 2 * PAGE, PAGE, callback)
                .expect("insert")
        })
        .collect();
    (mm, subs)
}

/// The i-th target among n, spread by a multiplicative hash.
fn target(i: u64, n: usize) -> usize {
    (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 20) as usize % n
}

#[divan::bench]
fn read_begin_and_retry(bencher: Bencher) {
    let (_mm, subs) = subscribe_all(1);
    let sub = &subs[0];
    bencher.bench_local(|| {
        let seq = sub.read_begin();
        black_box(sub.read_retry(black_box(seq)))
    });
}

fn bench_invalidate(bencher: Bencher, n: usize, offset: usize, spread: bool) {
    let (mm, _subs) = subscribe_all(n);
    let mut i = 0u64;
    bencher.bench_local(|| {
        i += u64::from(spread);
        let start = BASE + target(i, n) * 2 * PAGE + offset;
        let range = NotifierRange::new(start, start + PAGE, Event::Unmap).expect("range");
        mm.invalidate_range_start(&range).expect("blockable").end();
    });
}

// A fixed sample size: divan sizes samples from the first (cold) run, which
// for the large trees would leave 100 iterations per sample.
#[divan::bench(args = SIZES, sample_size = 1000)]
fn invalidate_hit(bencher: Bencher, n: usize) {
    bench_invalidate(bencher, n, 0, true);
}

/// The same target every time: the tree path stays in cache, so this shows
/// the algorithmic cost (tree depth) without the memory latency of a cold
/// path.
#[divan::bench(args = SIZES, sample_size = 1000)]
fn invalidate_hit_same_target(bencher: Bencher, n: usize) {
    bench_invalidate(bencher, n, 0, false);
}

#[divan::bench(args = SIZES, sample_size = 1000)]
fn invalidate_miss(bencher: Bencher, n: usize) {
    bench_invalidate(bencher, n, PAGE, true);
}

/// One entry of the baseline list.
struct NaiveEntry {
    start: usize,
    last: usize,
    seq: AtomicU64,
}

#[divan::bench(args = SIZES)]
fn naive_list_hit(bencher: Bencher, n: usize) {
    let list: Vec<NaiveEntry> = (0..n)
        .map(|i| NaiveEntry {
            start: BASE + i * 2 * PAGE,
            last: BASE + i * 2 * PAGE + PAGE - 1,
            seq: AtomicU64::new(1),
        })
        .collect();
    let mut i = 0u64;
    bencher.bench_local(|| {
        i += 1;
        let start = BASE + target(i, n) * 2 * PAGE;
        let range = NotifierRange::new(start, start + PAGE, Event::Unmap).expect("range");
        for entry in &list {
            // Each subscriber checks the range itself.
            if entry.start <= range.last() && range.start() <= entry.last {
                entry.seq.store(3, Ordering::Relaxed);
            }
        }
        black_box(&list);
    });
}
