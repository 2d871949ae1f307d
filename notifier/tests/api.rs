//! Behaviour of the public API, one rule per test.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use notifier::{
    Event, IntervalNotifier, IntervalSubscription, NotifierError, NotifierRange, Subscriptions,
};

const PAGE: usize = 0x1000;

/// What one subscription's callback saw.
#[derive(Default)]
struct Log {
    calls: Mutex<Vec<(usize, usize, Event, u64)>>,
}

impl Log {
    fn events(&self) -> Vec<(usize, usize, Event, u64)> {
        self.calls.lock().unwrap().clone()
    }
}

fn logging(mm: &Arc<Subscriptions>, start: usize, len: usize) -> (IntervalSubscription, Arc<Log>) {
    let log = Arc::new(Log::default());
    let l = Arc::clone(&log);
    let sub = mm
        .insert(
            start,
            len,
            move |sub: &IntervalNotifier, range: &NotifierRange, seq| {
                sub.set_seq(seq);
                l.calls
                    .lock()
                    .unwrap()
                    .push((range.start(), range.end(), range.event(), seq));
                true
            },
        )
        .unwrap();
    (sub, log)
}

fn noop(mm: &Arc<Subscriptions>, start: usize, len: usize) -> IntervalSubscription {
    mm.insert(
        start,
        len,
        |sub: &IntervalNotifier, _: &NotifierRange, seq| {
            sub.set_seq(seq);
            true
        },
    )
    .unwrap()
}

fn range(start: usize, end: usize) -> NotifierRange {
    NotifierRange::new(start, end, Event::Unmap).unwrap()
}

fn invalidate(mm: &Subscriptions, start: usize, end: usize) {
    mm.invalidate_range_start(&range(start, end)).unwrap().end();
}

/// Runs `f` on another thread and reports whether it finished within a
/// grace period; the handle lets the caller join it later.
fn spawn_and_check_blocked<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> (thread::JoinHandle<T>, mpsc::Receiver<()>) {
    let (tx, rx) = mpsc::channel();
    let handle = thread::spawn(move || {
        let out = f();
        let _ = tx.send(());
        out
    });
    (handle, rx)
}

fn still_blocked(rx: &mpsc::Receiver<()>) -> bool {
    rx.recv_timeout(Duration::from_millis(100)).is_err()
}

#[test]
fn insert_rejects_zero_length_and_overflow() {
    let mm = Subscriptions::new();
    let ok = |_: &IntervalNotifier, _: &NotifierRange, _| true;
    assert_eq!(
        mm.insert(PAGE, 0, ok).unwrap_err(),
        NotifierError::ZeroLength { start: PAGE }
    );
    assert_eq!(
        mm.insert(usize::MAX - PAGE + 1, PAGE, ok).unwrap_err(),
        NotifierError::Overflow {
            start: usize::MAX - PAGE + 1,
            length: PAGE
        }
    );
    assert!(mm.insert(usize::MAX, 2, ok).is_err());
    // The largest interval that fits ends just below the top.
    let top = mm.insert(usize::MAX - PAGE, PAGE, ok).unwrap();
    assert_eq!(top.last(), usize::MAX - 1);
    assert_eq!(mm.stats().linked, 1);
}

#[test]
fn only_overlapping_subscriptions_are_called_with_the_range_and_event() {
    let mm = Subscriptions::new();
    let (a, log_a) = logging(&mm, 0x10000, 0x2000); // [0x10000, 0x11fff]
    let (b, log_b) = logging(&mm, 0x12000, 0x1000); // [0x12000, 0x12fff]
    let (_c, log_c) = logging(&mm, 0x40000, 0x1000);

    // Touches the last byte of `a` and the first of `b`.
    let r = NotifierRange::new(0x11fff, 0x12001, Event::Clear).unwrap();
    mm.invalidate_range_start(&r).unwrap().end();
    assert_eq!(log_a.events().len(), 1);
    assert_eq!(log_b.events().len(), 1);
    assert!(log_c.events().is_empty());
    let (start, end, event, seq) = log_a.events()[0];
    assert_eq!((start, end, event), (0x11fff, 0x12001, Event::Clear));
    // Every callback of one invalidation gets the same odd sequence.
    assert_eq!(seq % 2, 1);
    assert_eq!(log_b.events()[0].3, seq);

    // End is exclusive: [0x12000 - 1 ...) up to 0x12000 does not reach `b`.
    invalidate(&mm, 0x11000, 0x12000);
    assert_eq!(log_a.events().len(), 2);
    assert_eq!(log_b.events().len(), 1);

    // A range nobody subscribed to leaves the sequence even.
    invalidate(&mm, 0x20000, 0x30000);
    let stats = mm.stats();
    assert_eq!(stats.invalidate_seq % 2, 0);
    assert_eq!(stats.invalidations, 3);
    assert_eq!(stats.invalidations_hit, 2);
    assert_eq!(stats.callbacks, 3);
    drop((a, b));
}

#[test]
fn read_retry_reports_collisions_only() {
    let mm = Subscriptions::new();
    let sub = noop(&mm, 0x10000, PAGE);
    let seq = sub.read_begin();
    assert_eq!(seq % 2, 1, "subscription sequences are odd");
    assert!(!sub.read_retry(seq));
    invalidate(&mm, 0x20000, 0x21000);
    assert!(
        !sub.read_retry(seq),
        "a disjoint invalidation is no collision"
    );
    invalidate(&mm, 0x10000, 0x11000);
    assert!(sub.read_retry(seq));
    assert!(sub.check_retry(seq));
    let seq2 = sub.read_begin();
    assert_ne!(seq, seq2);
    assert!(!sub.read_retry(seq2));
}

#[test]
fn read_begin_sleeps_while_an_invalidation_covers_the_interval() {
    let mm = Subscriptions::new();
    let sub = Arc::new(noop(&mm, 0x10000, PAGE));
    let inv = mm.invalidate_range_start(&range(0x10000, 0x11000)).unwrap();
    let s = Arc::clone(&sub);
    let (reader, rx) = spawn_and_check_blocked(move || s.read_begin());
    assert!(
        still_blocked(&rx),
        "read_begin returned during the invalidation"
    );
    let seq_during = mm.stats().invalidate_seq;
    inv.end();
    let seq = reader.join().unwrap();
    // It returns the invalidation's sequence, which is now stable.
    assert_eq!(seq, seq_during);
    assert!(!sub.read_retry(seq));
    assert_eq!(mm.stats().read_begin_waits, 1);
}

#[test]
fn insert_during_an_invalidation_is_deferred_to_the_last_end() {
    let mm = Subscriptions::new();
    let _a = noop(&mm, 0x10000, PAGE);
    let outer = mm.invalidate_range_start(&range(0x10000, 0x11000)).unwrap();
    let inner = mm.invalidate_range_start(&range(0x10000, 0x11000)).unwrap();

    let (b, log_b) = logging(&mm, 0x10000, PAGE);
    let stats = mm.stats();
    assert_eq!((stats.linked, stats.deferred_pending), (1, 1));
    assert_eq!(stats.deferred_inserts, 1);
    // Not in the tree yet: a new invalidation does not see it.
    invalidate(&mm, 0x10000, 0x11000);
    assert!(log_b.events().is_empty());

    let b = Arc::new(b);
    let b2 = Arc::clone(&b);
    let (reader, rx) = spawn_and_check_blocked(move || b2.read_begin());
    assert!(still_blocked(&rx));
    outer.end();
    assert!(still_blocked(&rx), "woke before the last end");
    assert_eq!(mm.stats().deferred_pending, 1);
    inner.end();
    let seq = reader.join().unwrap();
    let stats = mm.stats();
    assert_eq!((stats.linked, stats.deferred_pending), (2, 0));
    assert!(!b.read_retry(seq));
    invalidate(&mm, 0x10000, 0x11000);
    assert_eq!(log_b.events().len(), 1);
}

#[test]
fn insert_during_a_missed_invalidation_is_linked_at_once_but_waits() {
    let mm = Subscriptions::new();
    // An invalidation that hits nothing: the sequence stays even.
    let inv = mm.invalidate_range_start(&range(0x90000, 0x91000)).unwrap();
    assert_eq!(mm.stats().invalidate_seq % 2, 0);
    let (sub, log) = logging(&mm, 0x10000, PAGE);
    let stats = mm.stats();
    assert_eq!((stats.linked, stats.deferred_pending), (1, 0));
    assert_eq!(
        stats.invalidate_seq % 2,
        1,
        "insert must assume the range is covered"
    );
    // Linked, so another invalidation reaches it.
    invalidate(&mm, 0x10000, 0x11000);
    assert_eq!(log.events().len(), 1);

    let sub = Arc::new(sub);
    let s = Arc::clone(&sub);
    let (reader, rx) = spawn_and_check_blocked(move || s.read_begin());
    assert!(still_blocked(&rx));
    inv.end();
    reader.join().unwrap();
    assert_eq!(mm.stats().invalidate_seq % 2, 0);
}

#[test]
fn remove_during_an_invalidation_waits_and_callbacks_stop() {
    let mm = Subscriptions::new();
    let removed = Arc::new(AtomicBool::new(false));
    let late_calls = Arc::new(AtomicU64::new(0));
    let (r, l) = (Arc::clone(&removed), Arc::clone(&late_calls));
    let sub = mm
        .insert(
            0x10000,
            PAGE,
            move |_: &IntervalNotifier, _: &NotifierRange, _| {
                if r.load(Ordering::SeqCst) {
                    l.fetch_add(1, Ordering::SeqCst);
                }
                true
            },
        )
        .unwrap();
    let inv = mm.invalidate_range_start(&range(0x10000, 0x11000)).unwrap();
    let r = Arc::clone(&removed);
    let (remover, rx) = spawn_and_check_blocked(move || {
        sub.remove();
        r.store(true, Ordering::SeqCst);
    });
    assert!(
        still_blocked(&rx),
        "remove returned while its callback could run"
    );
    assert_eq!(mm.stats().deferred_pending, 1);
    inv.end();
    remover.join().unwrap();
    invalidate(&mm, 0x10000, 0x11000);
    assert_eq!(late_calls.load(Ordering::SeqCst), 0);
    let stats = mm.stats();
    assert_eq!((stats.linked, stats.deferred_pending), (0, 0));
    assert_eq!((stats.deferred_removes, stats.remove_waits), (1, 1));
}

#[test]
fn removing_a_deferred_insert_is_immediate() {
    let mm = Subscriptions::new();
    let _a = noop(&mm, 0x10000, PAGE);
    let inv = mm.invalidate_range_start(&range(0x10000, 0x11000)).unwrap();
    let b = noop(&mm, 0x10000, PAGE);
    assert_eq!(mm.stats().deferred_pending, 1);
    b.remove(); // would hang the test if it waited
    assert_eq!(mm.stats().deferred_pending, 0);
    inv.end();
    assert_eq!(mm.stats().linked, 1);
}

#[test]
fn nonblocking_refusal_fails_cleanly_and_stops_the_walk() {
    let mm = Subscriptions::new();
    let driver_lock = Arc::new(Mutex::new(()));
    let dl = Arc::clone(&driver_lock);
    let _busy = mm
        .insert(
            0x10000,
            PAGE,
            move |sub: &IntervalNotifier, range: &NotifierRange, seq| {
                let _guard = if range.is_blockable() {
                    dl.lock().unwrap()
                } else {
                    match dl.try_lock() {
                        Ok(g) => g,
                        Err(_) => return false,
                    }
                };
                sub.set_seq(seq);
                true
            },
        )
        .unwrap();
    let (_after, log_after) = logging(&mm, 0x11000, PAGE);

    let held = driver_lock.lock().unwrap();
    let r = range(0x10000, 0x12000).nonblocking();
    assert_eq!(
        mm.invalidate_range_start(&r).unwrap_err(),
        NotifierError::WouldBlock
    );
    assert!(log_after.events().is_empty(), "walk went on past a refusal");
    let stats = mm.stats();
    assert_eq!(stats.active_invalidate_ranges, 0);
    assert_eq!(stats.invalidate_seq % 2, 0);
    assert_eq!(stats.would_block, 1);
    drop(held);

    // Without contention the same non-blocking invalidation succeeds.
    mm.invalidate_range_start(&r).unwrap().end();
    assert_eq!(log_after.events().len(), 1);
}

#[test]
fn blockable_refusal_is_counted_and_the_walk_goes_on() {
    let mm = Subscriptions::new();
    let _refuses = mm
        .insert(
            0x10000,
            PAGE,
            |_: &IntervalNotifier, _: &NotifierRange, _| false,
        )
        .unwrap();
    let (_after, log_after) = logging(&mm, 0x11000, PAGE);
    invalidate(&mm, 0x10000, 0x12000);
    assert_eq!(log_after.events().len(), 1);
    assert_eq!(mm.stats().blockable_refusals, 1);
}

#[test]
fn nested_invalidations_keep_the_sequence_odd_until_the_last_end() {
    let mm = Subscriptions::new();
    let _a = noop(&mm, 0x10000, PAGE);
    let _b = noop(&mm, 0x20000, PAGE);
    let first = mm.invalidate_range_start(&range(0x10000, 0x11000)).unwrap();
    let seq = mm.stats().invalidate_seq;
    let second = mm.invalidate_range_start(&range(0x20000, 0x21000)).unwrap();
    let missed = mm.invalidate_range_start(&range(0x50000, 0x51000)).unwrap();
    assert_eq!(
        mm.stats().invalidate_seq,
        seq,
        "one odd value for all holders"
    );
    assert_eq!(mm.stats().active_invalidate_ranges, 3);
    first.end();
    missed.end();
    assert_eq!(mm.stats().invalidate_seq, seq);
    second.end();
    assert_eq!(mm.stats().invalidate_seq, seq + 1);
}

#[test]
fn release_invalidates_everything_once_and_refuses_inserts() {
    let mm = Subscriptions::new();
    let (_low, log_low) = logging(&mm, 0, PAGE);
    let (_high, log_high) = logging(&mm, usize::MAX - 2 * PAGE, PAGE);
    assert!(!mm.is_released());
    mm.release();
    assert!(mm.is_released());
    for log in [&log_low, &log_high] {
        let events = log.events();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].2, Event::Release);
    }
    mm.release();
    assert_eq!(log_low.events().len(), 1, "release runs once");
    assert_eq!(
        mm.insert(
            0x1000,
            PAGE,
            |_: &IntervalNotifier, _: &NotifierRange, _| true
        )
        .unwrap_err(),
        NotifierError::Released
    );
    // Existing subscriptions are still removed normally.
    assert_eq!(mm.stats().linked, 2);
}

#[test]
fn a_panicking_callback_ends_its_invalidation() {
    let mm = Subscriptions::new();
    let _bad = mm
        .insert(
            0x10000,
            PAGE,
            |_: &IntervalNotifier, _: &NotifierRange, _| panic!("driver bug"),
        )
        .unwrap();
    let result = std::panic::catch_unwind(|| invalidate(&mm, 0x10000, 0x11000));
    assert!(result.is_err());
    let stats = mm.stats();
    assert_eq!(stats.active_invalidate_ranges, 0);
    assert_eq!(stats.invalidate_seq % 2, 0);
    // The address space keeps working.
    let (_ok, log) = logging(&mm, 0x20000, PAGE);
    invalidate(&mm, 0x20000, 0x21000);
    assert_eq!(log.events().len(), 1);
}

#[test]
fn many_subscriptions_each_get_exactly_their_hits() {
    let mm = Subscriptions::new();
    let subs: Vec<_> = (0..1000)
        .map(|i| logging(&mm, i * 2 * PAGE, PAGE))
        .collect();
    // Invalidate every 4th slot; each covers one subscription exactly.
    for i in (0..1000).step_by(4) {
        invalidate(&mm, i * 2 * PAGE, i * 2 * PAGE + PAGE);
    }
    for (i, (_, log)) in subs.iter().enumerate() {
        assert_eq!(
            log.events().len(),
            usize::from(i % 4 == 0),
            "subscription {i}"
        );
    }
    // One range over everything hits all of them once more.
    invalidate(&mm, 0, 2000 * PAGE);
    assert_eq!(mm.stats().callbacks, 250 + 1000);
}
