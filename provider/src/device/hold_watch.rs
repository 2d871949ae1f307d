//! Held acknowledgements against the progress thread's long sleeps.
//!
//! A thread that holds acknowledgements back (see `progress`) counts on
//! the progress thread to send them within `MANUAL_GRACE` if nothing else
//! does; while application threads receive, the progress thread sleeps
//! longer than that. Before a long sleep it announces the sleep, then
//! looks whether acknowledgements are held; a thread that starts holding
//! them marks them held, then looks whether a long sleep is announced,
//! and wakes the sleeper if so. Each side's write and its read are
//! separated by a sequentially consistent fence (a Dekker handshake): of
//! two such fences one comes first, and the read after the second sees
//! the write before the first. So either the sleeper sees the hold and
//! sleeps short, or the holder sees the announcement and wakes it (the
//! model tests below check every interleaving).

use std::sync::atomic::Ordering::{Relaxed, SeqCst};

#[cfg(all(loom, test))]
use loom::sync::atomic::{AtomicBool, fence};
#[cfg(not(all(loom, test)))]
use std::sync::atomic::{AtomicBool, fence};

/// The two flags of the handshake (see the module docs).
#[derive(Default)]
pub(crate) struct HoldWatch {
    /// The progress thread sleeps longer than held acknowledgements may
    /// wait.
    long_park: AtomicBool,
    /// The receive side holds acknowledgements back.
    held: AtomicBool,
}

impl HoldWatch {
    /// The progress thread is about to sleep long: returns whether it may,
    /// or (acknowledgements are held) withdraws the announcement and
    /// returns false.
    pub(crate) fn announce_long_park(&self) -> bool {
        self.long_park.store(true, Relaxed);
        fence(SeqCst);
        if self.held.load(Relaxed) {
            self.long_park.store(false, Relaxed);
            return false;
        }
        true
    }

    /// The progress thread is awake again.
    pub(crate) fn park_ended(&self) {
        self.long_park.store(false, Relaxed);
    }

    /// Acknowledgements are held back now: returns whether the progress
    /// thread announced a long sleep and must be woken. A hold while
    /// others are held asks nothing: the first one did.
    pub(crate) fn hold(&self) -> bool {
        if self.held.swap(true, Relaxed) {
            return false;
        }
        fence(SeqCst);
        self.long_park.load(Relaxed)
    }

    /// Nothing is held back any more (sent, or there was nothing).
    pub(crate) fn clear(&self) {
        self.held.store(false, Relaxed);
    }

    /// Whether acknowledgements are held back.
    pub(crate) fn held(&self) -> bool {
        self.held.load(Relaxed)
    }
}

#[cfg(all(loom, test))]
mod model {
    //! `RUSTFLAGS="--cfg loom" cargo test -p provider --release --lib
    //! device::hold_watch::model`

    use loom::sync::Arc;
    use loom::thread;

    use super::HoldWatch;

    /// Runs `holders` threads doing `hold` while the progress thread
    /// announces a long sleep; returns whether it may sleep long, and what
    /// each holder returned.
    fn against_a_long_park<T: Send + 'static>(
        holders: usize,
        hold: fn(&HoldWatch) -> T,
    ) -> (bool, Vec<T>) {
        let watch = Arc::new(HoldWatch::default());
        let threads: Vec<_> = (0..holders)
            .map(|_| {
                let watch = Arc::clone(&watch);
                thread::spawn(move || hold(&watch))
            })
            .collect();
        let sleeps_long = watch.announce_long_park();
        (
            sleeps_long,
            threads.into_iter().map(|t| t.join().unwrap()).collect(),
        )
    }

    #[test]
    fn a_hold_is_seen_by_the_sleeper_or_wakes_it() {
        loom::model(|| {
            let (sleeps_long, wakes) = against_a_long_park(1, HoldWatch::hold);
            assert!(!sleeps_long || wakes[0], "a long sleep nobody wakes");
        });
    }

    #[test]
    fn of_two_holders_one_is_seen_or_wakes_the_sleeper() {
        // The second hold asks nothing when it finds the first: the first
        // must then have been seen, or have woken the sleeper.
        loom::model(|| {
            let (sleeps_long, wakes) = against_a_long_park(2, HoldWatch::hold);
            assert!(
                !sleeps_long || wakes.contains(&true),
                "a long sleep nobody wakes"
            );
        });
    }

    #[test]
    fn a_hold_after_a_send_is_seen_or_wakes_the_sleeper() {
        // Held, sent, held again: the second hold is never sent, so a long
        // sleep must see it or be woken by it, whatever the first did.
        loom::model(|| {
            let (sleeps_long, wakes) = against_a_long_park(1, |watch| {
                watch.hold();
                watch.clear();
                watch.hold()
            });
            assert!(!sleeps_long || wakes[0], "a long sleep past a hold");
        });
    }
}
