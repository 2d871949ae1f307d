//! A short-critical-section lock in the role of the kernel's `spinlock_t`.
//!
//! The notifier's state lock is held only for O(log n) tree updates and a few
//! counter changes, and it is taken on the invalidate path, which event sources
//! may reach from inside the allocator (an interposed `munmap` called by
//! `free`). It therefore must neither allocate nor depend on thread-local
//! parking state: it is an atomic flag with spin-then-yield back-off.

use core::mem::ManuallyDrop;
use core::ops::{Deref, DerefMut};

use crate::sync::{AtomicBool, MutPtr, Ordering, UnsafeCell, spin_backoff};

/// Test-and-test-and-set lock around a `T`.
#[derive(Debug)]
#[cfg_attr(loom, allow(dead_code))]
pub(crate) struct SpinLock<T> {
    locked: AtomicBool,
    data: UnsafeCell<T>,
}

// SAFETY: the lock hands out access to `T` to one thread at a time, so `T`
// only has to be `Send` for the lock to be shared, exactly like `Mutex<T>`.
unsafe impl<T: Send> Sync for SpinLock<T> {}
// SAFETY: moving the lock moves the `T` it owns.
unsafe impl<T: Send> Send for SpinLock<T> {}

#[cfg_attr(loom, allow(dead_code))]
impl<T> SpinLock<T> {
    pub(crate) fn new(value: T) -> Self {
        Self {
            locked: AtomicBool::new(false),
            data: UnsafeCell::new(value),
        }
    }

    /// Acquires the lock, spinning (then yielding) while another thread holds it.
    pub(crate) fn lock(&self) -> SpinLockGuard<'_, T> {
        let mut spins = 0;
        // Acquire pairs with the Release store in the guard's drop: whatever the
        // previous holder wrote to `data` is visible to us.
        while self
            .locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            while self.locked.load(Ordering::Relaxed) {
                spin_backoff(&mut spins);
            }
        }
        SpinLockGuard {
            lock: self,
            data: ManuallyDrop::new(self.data.get_mut()),
        }
    }
}

/// Exclusive access to a [`SpinLock`]'s data; unlocks on drop.
#[cfg_attr(loom, allow(dead_code))]
pub(crate) struct SpinLockGuard<'a, T> {
    lock: &'a SpinLock<T>,
    /// Dropped by hand before the unlock, so that (under loom) the tracked
    /// access ends before another thread can start its own.
    data: ManuallyDrop<MutPtr<T>>,
}

impl<T> Deref for SpinLockGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard exists only while `locked` is held by this thread,
        // so no other reference to the data exists.
        unsafe { MutPtr::deref(&self.data) }
    }
}

impl<T> DerefMut for SpinLockGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`; `&mut self` makes this the only borrow.
        unsafe { MutPtr::deref(&self.data) }
    }
}

impl<T> Drop for SpinLockGuard<'_, T> {
    fn drop(&mut self) {
        // SAFETY: `data` is dropped exactly once, here, and not used afterwards.
        unsafe { ManuallyDrop::drop(&mut self.data) };
        self.lock.locked.store(false, Ordering::Release);
    }
}

/// The lock type guarding the notifier state. Model tests swap in loom's
/// mutex: it is one scheduling point per acquisition instead of a spin loop
/// per contended attempt, which keeps the models small enough to explore.
/// The spin lock itself has its own model test below.
#[cfg(not(loom))]
pub(crate) type StateLock<T> = SpinLock<T>;

/// See the non-loom definition.
#[cfg(loom)]
pub(crate) struct StateLock<T>(loom::sync::Mutex<T>);

#[cfg(loom)]
impl<T> StateLock<T> {
    pub(crate) fn new(value: T) -> Self {
        Self(loom::sync::Mutex::new(value))
    }

    pub(crate) fn lock(&self) -> loom::sync::MutexGuard<'_, T> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(all(test, loom))]
mod model {
    use super::SpinLock;
    use loom::sync::Arc;

    /// Two threads doing a read-modify-write on unsynchronised data: loom
    /// flags any overlap of the two critical sections.
    #[test]
    fn spin_lock_excludes() {
        loom::model(|| {
            let lock = Arc::new(SpinLock::new(0u32));
            let other = {
                let lock = Arc::clone(&lock);
                loom::thread::spawn(move || *lock.lock() += 1)
            };
            *lock.lock() += 1;
            other.join().unwrap();
            assert_eq!(*lock.lock(), 2);
        });
    }
}
