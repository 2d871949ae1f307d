//! A userspace port of the Linux kernel's `mmu_interval_notifier`
//! (`mm/mmu_notifier.c`, introduced by commit 99cb252f5e68, "mm/mmu_notifier:
//! add an interval tree notifier").
//!
//! A subscriber (a device that mirrors part of an address space in its own
//! page table) registers an interval with [`Subscriptions::insert`]. Whoever
//! changes the address space (unmap, remap, discard, protection change) calls
//! [`Subscriptions::invalidate_range_start`] before the change and ends the
//! returned [`Invalidation`] after it; every subscription that overlaps the
//! range gets its [`IntervalNotifierOps::invalidate`] callback first. The
//! subscriptions live in an augmented interval tree, so an invalidation costs
//! O(log n + k) for n subscriptions and k hits.
//!
//! Faults follow the kernel's collision-retry pattern: make pages present
//! without any lock, then commit only if no invalidation collided.
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use notifier::{Event, NotifierRange, Subscriptions};
//!
//! # fn main() -> Result<(), notifier::NotifierError> {
//! // The device page table and its lock (the driver lock): one entry per page.
//! let device_pt = Arc::new(Mutex::new(vec![None::<u64>; 4]));
//! let mm = Subscriptions::new();
//! let pt = Arc::clone(&device_pt);
//! let sub = mm.insert(0x10000, 0x4000, move |sub: &notifier::IntervalNotifier,
//!                                           range: &NotifierRange, cur_seq| {
//!     let mut pt = pt.lock().unwrap();
//!     sub.set_seq(cur_seq); // always, under the driver lock
//!     let first = (range.start().max(sub.start()) - sub.start()) >> 12;
//!     let last = (range.last().min(sub.last()) - sub.start()) >> 12;
//!     pt[first..=last].fill(None);
//!     true
//! })?;
//!
//! // Fault path.
//! let frame = loop {
//!     let seq = sub.read_begin();
//!     let frame = 0xabc; // make the page present and look it up, unlocked
//!     let mut pt = device_pt.lock().unwrap();
//!     if sub.read_retry(seq) {
//!         continue; // an invalidation collided: start over
//!     }
//!     pt[0] = Some(frame); // commit inside the same critical section
//!     break frame;
//! };
//! assert_eq!(device_pt.lock().unwrap()[0], Some(frame));
//!
//! // Event source: munmap of the first page.
//! let range = NotifierRange::new(0x10000, 0x11000, Event::Unmap)?;
//! let invalidation = mm.invalidate_range_start(&range)?;
//! // ... the actual munmap happens here ...
//! invalidation.end();
//! assert_eq!(device_pt.lock().unwrap()[0], None);
//! # Ok(()) }
//! ```

mod interval;
mod interval_tree;
mod range;
mod spinlock;
mod subscriptions;
mod sync;
mod wait_queue;

pub use interval::{IntervalNotifier, IntervalNotifierOps, IntervalSubscription};
pub use range::{Event, NotifierRange};
pub use subscriptions::{Invalidation, NotifierStats, Subscriptions};

/// Errors of the notifier API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotifierError {
    /// An interval of length zero was inserted.
    #[error("interval at {start:#x} has length zero")]
    ZeroLength {
        /// Requested start.
        start: usize,
    },
    /// `start + length` does not fit in the address space.
    #[error("interval {start:#x} + {length:#x} overflows the address space")]
    Overflow {
        /// Requested start.
        start: usize,
        /// Requested length.
        length: usize,
    },
    /// A range with `start >= end`.
    #[error("range [{start:#x}, {end:#x}) is empty")]
    EmptyRange {
        /// Requested start.
        start: usize,
        /// Requested end (exclusive).
        end: usize,
    },
    /// A non-blockable invalidation met a callback that would have to sleep.
    /// The invalidation has been ended; the address space must not change.
    #[error("invalidation would block")]
    WouldBlock,
    /// The address space has been released; nothing can be inserted.
    #[error("address space released")]
    Released,
}
