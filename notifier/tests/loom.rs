//! Model tests: loom explores the interleavings of the notifier's own locks,
//! atomics and tree accesses against a minimal mirroring driver.
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test -p notifier --test loom --release`
//! (`.ci/run` does, with a separate target directory).
//!
//! Each model has one page per subscription: `pte` stands for the CPU page
//! table entry and changes only inside an invalidation (between start and
//! end, as the kernel changes PTEs); `spte` is the device's copy under the
//! driver lock. The property checked everywhere: a committed `spte` equals the
//! current `pte`, at commit time and at the end. Loom also checks that no
//! tree access races with a tree mutation, through the crate's `UnsafeCell`.
#![cfg(loom)]

use loom::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use loom::sync::{Arc, Mutex};
// The notifier hands out std `Arc`s; their counts are not what is modelled.
use loom::thread;
use notifier::{Event, IntervalSubscription, NotifierError, NotifierRange, Subscriptions};
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::sync::Arc as StdArc;

const PAGE: usize = 0x1000;

/// How the model driver gets the protocol wrong, if at all.
#[derive(Clone, Copy, PartialEq)]
enum Driver {
    Correct,
    /// The invalidate callback forgets `set_seq`.
    SkipSetSeq,
    /// The fault path checks `read_retry`, drops the driver lock, and commits
    /// under a second acquisition.
    RetryOutsideLock,
}

struct Mirror {
    pte: AtomicU64,
    spte: Mutex<Option<u64>>,
    driver: Driver,
}

impl Mirror {
    fn new(driver: Driver) -> Arc<Self> {
        Arc::new(Self {
            pte: AtomicU64::new(0),
            spte: Mutex::new(None),
            driver,
        })
    }

    fn check_coherent(&self) {
        if let Some(v) = *self.spte.lock().unwrap() {
            assert_eq!(v, self.pte.load(SeqCst), "stale translation survived");
        }
    }
}

fn subscribe(
    mm: &StdArc<Subscriptions>,
    page: usize,
    mirror: &Arc<Mirror>,
) -> IntervalSubscription {
    let m = Arc::clone(mirror);
    mm.insert(
        page * PAGE,
        PAGE,
        move |sub: &notifier::IntervalNotifier, range: &NotifierRange, cur_seq| {
            let mut spte = if range.is_blockable() {
                m.spte.lock().unwrap()
            } else {
                match m.spte.try_lock() {
                    Ok(guard) => guard,
                    Err(_) => return false,
                }
            };
            if m.driver != Driver::SkipSetSeq {
                sub.set_seq(cur_seq);
            }
            *spte = None;
            true
        },
    )
    .unwrap()
}

/// The collision-retry fault path (hmm.rst's pattern).
fn fault(sub: &IntervalSubscription, mirror: &Mirror) {
    loop {
        let seq = sub.read_begin();
        let value = mirror.pte.load(SeqCst);
        let mut spte = mirror.spte.lock().unwrap();
        if sub.read_retry(seq) {
            reached("fault retried");
            continue;
        }
        if mirror.driver == Driver::RetryOutsideLock {
            drop(spte);
            spte = mirror.spte.lock().unwrap();
        }
        assert_eq!(
            value,
            mirror.pte.load(SeqCst),
            "stale translation committed"
        );
        *spte = Some(value);
        return;
    }
}

fn range(first_page: usize, pages: usize) -> NotifierRange {
    NotifierRange::new(first_page * PAGE, (first_page + pages) * PAGE, Event::Unmap).unwrap()
}

/// An address-space change of `pages` pages: invalidate, change the PTEs,
/// end.
fn change(mm: &Subscriptions, first_page: usize, mirrors: &[&Mirror]) {
    let inv = mm
        .invalidate_range_start(&range(first_page, mirrors.len()))
        .unwrap();
    for m in mirrors {
        m.pte.fetch_add(1, SeqCst);
    }
    inv.end();
}

fn assert_idle(mm: &Subscriptions) {
    let stats = mm.stats();
    assert_eq!(stats.active_invalidate_ranges, 0);
    assert_eq!(stats.invalidate_seq % 2, 0, "sequence left odd");
    assert_eq!(stats.deferred_pending, 0);
}

thread_local! {
    /// Schedules the current model reached (loom runs a model's threads on
    /// the test's own OS thread).
    static REACHED: RefCell<BTreeSet<&'static str>> = const { RefCell::new(BTreeSet::new()) };
}

fn reached(what: &'static str) {
    REACHED.with(|r| r.borrow_mut().insert(what));
}

/// Records which interesting schedules an execution went through.
fn note_stats(mm: &Subscriptions) {
    let stats = mm.stats();
    if stats.read_begin_waits > 0 {
        reached("read_begin slept");
    }
    if stats.deferred_inserts > 0 {
        reached("insert deferred");
    }
    if stats.deferred_removes > 0 {
        reached("remove deferred");
    }
}

/// Explores `f` and then checks that the schedules named in `expect` were
/// among those explored, so a pass cannot come from a model too small to
/// reach the case it is about.
fn model(expect: &'static [&'static str], f: impl Fn() + Sync + Send + 'static) {
    REACHED.with(|r| r.borrow_mut().clear());
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(3);
    }
    builder.check(f);
    let seen = REACHED.with(|r| r.borrow().clone());
    for what in expect {
        assert!(seen.contains(what), "no explored schedule reached: {what}");
    }
}

/// When the single subscription of [`one_page_model`] is inserted.
#[derive(Clone, Copy)]
enum Insert {
    /// Before the faulting thread starts.
    Before,
    /// By the faulting thread, racing the change.
    Concurrently,
}

/// One page: a second thread faults it while this thread changes it with
/// `change_page`; afterwards the mirror must be coherent and the notifier
/// idle.
fn one_page_model(
    expect: &'static [&'static str],
    driver: Driver,
    insert: Insert,
    change_page: fn(&Subscriptions, &Mirror),
) {
    model(expect, move || {
        let mm = Subscriptions::new();
        let mirror = Mirror::new(driver);
        let early = matches!(insert, Insert::Before).then(|| subscribe(&mm, 0, &mirror));
        let faulter = {
            let (mm, mirror) = (StdArc::clone(&mm), Arc::clone(&mirror));
            thread::spawn(move || {
                let sub = early.unwrap_or_else(|| subscribe(&mm, 0, &mirror));
                fault(&sub, &mirror);
                sub
            })
        };
        change_page(&mm, &mirror);
        let sub = faulter.join().unwrap();
        mirror.check_coherent();
        note_stats(&mm);
        assert_idle(&mm);
        drop(sub);
    });
}

fn change_page(mm: &Subscriptions, mirror: &Mirror) {
    change(mm, 0, &[mirror]);
}

fn fault_vs_invalidate(driver: Driver) {
    one_page_model(
        &["fault retried", "read_begin slept"],
        driver,
        Insert::Before,
        change_page,
    );
}

#[test]
fn read_begin_retry_vs_invalidate() {
    fault_vs_invalidate(Driver::Correct);
}

/// Proves the models can fail: without `set_seq` a fault that raced an
/// invalidation commits a translation of the old page.
#[test]
#[should_panic(expected = "stale translation")]
fn broken_driver_without_set_seq_is_caught() {
    fault_vs_invalidate(Driver::SkipSetSeq);
}

/// Proves the models can fail: checking `read_retry` in one critical section
/// and committing in another lets an invalidation slip in between.
#[test]
#[should_panic(expected = "stale translation")]
fn broken_driver_committing_outside_the_retry_lock_is_caught() {
    fault_vs_invalidate(Driver::RetryOutsideLock);
}

/// An interval inserted while an invalidation covers its range goes to the
/// deferred list, and its first `read_begin` waits for that invalidation, so
/// its first translation is never of the page being replaced.
#[test]
fn insert_during_invalidation_is_deferred_and_waits() {
    model(&["insert deferred", "read_begin slept"], || {
        let mm = Subscriptions::new();
        let m0 = Mirror::new(Driver::Correct);
        let m1 = Mirror::new(Driver::Correct);
        let s0 = subscribe(&mm, 0, &m0);
        let inserter = {
            let (mm, m1) = (StdArc::clone(&mm), Arc::clone(&m1));
            thread::spawn(move || {
                let s1 = subscribe(&mm, 1, &m1);
                fault(&s1, &m1);
                s1
            })
        };
        change(&mm, 0, &[&m0, &m1]);
        let s1 = inserter.join().unwrap();
        m0.check_coherent();
        m1.check_coherent();
        note_stats(&mm);
        assert_idle(&mm);
        assert_eq!(mm.stats().linked, 2);
        drop((s0, s1));
    });
}

/// An interval inserted while an invalidation that hit nothing is running
/// (the sequence is even, the tree may change) is linked at once, but the
/// sequence turns odd so its first `read_begin` waits for that invalidation,
/// which may be changing the interval's pages.
#[test]
fn insert_during_a_missed_invalidation_waits_for_it() {
    one_page_model(
        &["read_begin slept"],
        Driver::Correct,
        Insert::Concurrently,
        change_page,
    );
}

/// Removal while an invalidation walks the tree is deferred and waits; once
/// `remove` returns, the callback never runs again. Removing an interval
/// whose insert is still deferred is immediate.
#[test]
fn remove_during_invalidation_waits_for_it() {
    model(&["remove deferred", "insert deferred"], || {
        let mm = Subscriptions::new();
        let removed = Arc::new(AtomicBool::new(false));
        let r = Arc::clone(&removed);
        let s0 = mm
            .insert(
                0,
                PAGE,
                move |_: &notifier::IntervalNotifier, _: &NotifierRange, _| {
                    assert!(!r.load(SeqCst), "callback ran after remove returned");
                    true
                },
            )
            .unwrap();
        let remover = {
            let (mm, removed) = (StdArc::clone(&mm), Arc::clone(&removed));
            thread::spawn(move || {
                // Insert and remove at once, possibly inside the invalidation.
                mm.insert(
                    0,
                    PAGE,
                    |_: &notifier::IntervalNotifier, _: &NotifierRange, _| true,
                )
                .unwrap()
                .remove();
                s0.remove();
                removed.store(true, SeqCst);
            })
        };
        let inv = mm.invalidate_range_start(&range(0, 1)).unwrap();
        inv.end();
        remover.join().unwrap();
        note_stats(&mm);
        assert_idle(&mm);
        assert_eq!(mm.stats().linked, 0);
    });
}

/// Nested invalidations in one thread and a parallel one in another share
/// the odd sequence: it turns even only at the last end, and a fault cannot
/// commit while any of them runs.
#[test]
fn nested_and_parallel_invalidations_hold_the_sequence_together() {
    model(&["fault retried", "read_begin slept"], || {
        let mm = Subscriptions::new();
        let m0 = Mirror::new(Driver::Correct);
        let m1 = Mirror::new(Driver::Correct);
        let s0 = subscribe(&mm, 0, &m0);
        let s1 = subscribe(&mm, 1, &m1);
        let nested = {
            let (mm, m0, m1) = (StdArc::clone(&mm), Arc::clone(&m0), Arc::clone(&m1));
            thread::spawn(move || {
                let outer = mm.invalidate_range_start(&range(0, 1)).unwrap();
                let inner = mm.invalidate_range_start(&range(1, 1)).unwrap();
                m0.pte.fetch_add(1, SeqCst);
                m1.pte.fetch_add(1, SeqCst);
                outer.end();
                // Still inside `inner`: the sequence must still be odd.
                assert_eq!(mm.stats().invalidate_seq % 2, 1);
                inner.end();
            })
        };
        let parallel = {
            let (mm, m1) = (StdArc::clone(&mm), Arc::clone(&m1));
            thread::spawn(move || change(&mm, 1, &[&m1]))
        };
        fault(&s1, &m1);
        nested.join().unwrap();
        parallel.join().unwrap();
        m0.check_coherent();
        m1.check_coherent();
        note_stats(&mm);
        assert_idle(&mm);
        drop((s0, s1));
    });
}

/// A non-blockable invalidation that meets a held driver lock fails with
/// would-block, leaves the state consistent, and the caller (who must not
/// change the PTE) retries blockably.
#[test]
fn nonblocking_invalidation_backs_out_cleanly() {
    one_page_model(
        &["would block", "fault retried"],
        Driver::Correct,
        Insert::Before,
        |mm, mirror| match mm.invalidate_range_start(&range(0, 1).nonblocking()) {
            Ok(inv) => {
                mirror.pte.fetch_add(1, SeqCst);
                inv.end();
            }
            Err(NotifierError::WouldBlock) => {
                reached("would block");
                change_page(mm, mirror);
            }
            Err(e) => panic!("unexpected {e}"),
        },
    );
}
