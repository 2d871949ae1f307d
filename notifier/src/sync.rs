//! Synchronisation primitives, swapped for loom's under `--cfg loom`.
//!
//! Production builds use std's futex-based `Mutex`/`Condvar` (no allocation on
//! lock, wait or wake) and std atomics. Model tests build the crate with
//! `RUSTFLAGS="--cfg loom"`, which swaps in loom's versions so that every
//! interleaving of the notifier's own code is explored.
//!
//! `UnsafeCell` offers loom's closure API (`with`, `with_mut`) in both builds,
//! so loom can check that the lock and sequence protocol really keeps readers
//! and writers of the shared cells apart.

#[cfg(loom)]
pub(crate) use loom::{
    cell::UnsafeCell,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    sync::{Condvar, Mutex},
};

#[cfg(not(loom))]
pub(crate) use std::sync::{
    Condvar, Mutex,
    atomic::{AtomicBool, AtomicU64, Ordering},
};

/// Back off inside a spin loop.
///
/// Under loom every spin iteration must yield so the model can schedule the
/// lock holder; in production we spin briefly and then give the core away,
/// since the holder of a userspace spinlock may have been preempted.
#[inline]
#[cfg_attr(loom, allow(dead_code))]
pub(crate) fn spin_backoff(spins: &mut u32) {
    #[cfg(loom)]
    {
        let _ = spins;
        loom::thread::yield_now();
    }
    #[cfg(not(loom))]
    {
        if *spins < 64 {
            *spins += 1;
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

/// `core::cell::UnsafeCell` with loom's access API.
#[cfg(not(loom))]
#[derive(Debug, Default)]
pub(crate) struct UnsafeCell<T>(core::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    pub(crate) const fn new(value: T) -> Self {
        Self(core::cell::UnsafeCell::new(value))
    }

    /// Runs `f` with a shared pointer to the contents.
    #[inline]
    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    /// Runs `f` with an exclusive pointer to the contents.
    #[inline]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    /// An exclusive pointer whose access lasts as long as the returned value
    /// (loom tracks it for that long).
    #[inline]
    pub(crate) fn get_mut(&self) -> MutPtr<T> {
        MutPtr(self.0.get())
    }
}

/// A tracked exclusive pointer into an [`UnsafeCell`].
#[cfg(not(loom))]
#[derive(Debug)]
pub(crate) struct MutPtr<T>(*mut T);

#[cfg(not(loom))]
impl<T> MutPtr<T> {
    /// # Safety
    /// The caller must have exclusive access to the cell for the lifetime of
    /// the returned reference.
    #[inline]
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn deref(&self) -> &mut T {
        // SAFETY: exclusivity is the caller's contract; the pointer came from
        // a live `UnsafeCell`.
        unsafe { &mut *self.0 }
    }
}

#[cfg(loom)]
pub(crate) use loom::cell::MutPtr;
