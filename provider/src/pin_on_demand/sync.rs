//! The synchronisation primitives of pin on demand, swapped for loom's in
//! the model tests (`RUSTFLAGS="--cfg loom" cargo test -p provider --lib
//! pin_on_demand`), so that loom explores the interleavings of the
//! region's table lock, in-flight counts and wakeups together with the
//! notifier's own (which swaps its primitives the same way).

#[cfg(all(loom, test))]
pub(super) use loom::sync::{Condvar, Mutex, MutexGuard, atomic::AtomicUsize};

#[cfg(not(all(loom, test)))]
pub(super) use std::sync::{Condvar, Mutex, MutexGuard, atomic::AtomicUsize};
