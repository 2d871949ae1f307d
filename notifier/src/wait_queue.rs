//! The notifier's wait queue (the kernel's `wait_queue_head_t` with
//! `wait_event` / `wake_up_all`).
//!
//! Waiters register and re-check their condition under the queue's mutex, and
//! wakers take that mutex after changing the state the condition reads.
//! Either the waiter sees the new state before sleeping, or it is registered
//! and asleep on the condvar when the waker looks: no wake-up is lost. A
//! waker that finds nobody registered skips the condvar, whose notify is a
//! system call even when nobody waits.

use std::sync::PoisonError;

use crate::sync::{Condvar, Mutex};

pub(crate) struct WaitQueue {
    /// Number of registered waiters.
    waiters: Mutex<usize>,
    cond: Condvar,
}

impl core::fmt::Debug for WaitQueue {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("WaitQueue")
    }
}

impl WaitQueue {
    pub(crate) fn new() -> Self {
        Self {
            waiters: Mutex::new(0),
            cond: Condvar::new(),
        }
    }

    /// Sleeps until `done()` returns true. `done` must read state that is
    /// changed before [`WaitQueue::wake_all`] is called.
    pub(crate) fn wait_until(&self, mut done: impl FnMut() -> bool) {
        // The count stays right across a panic in `done`, so a poisoned lock
        // is still usable.
        let mut waiters = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
        if done() {
            return;
        }
        *waiters += 1;
        while !done() {
            waiters = self
                .cond
                .wait(waiters)
                .unwrap_or_else(PoisonError::into_inner);
        }
        *waiters -= 1;
    }

    /// Wakes every waiter so it re-checks its condition.
    pub(crate) fn wake_all(&self) {
        let waiters = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
        if *waiters > 0 {
            self.cond.notify_all();
        }
    }
}
