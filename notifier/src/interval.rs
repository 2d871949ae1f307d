//! One interval subscription (the kernel's `struct mmu_interval_notifier`)
//! and its read side: `read_begin`, `read_retry`, `check_retry`, `set_seq`.

use core::ops::Deref;
use core::ptr::NonNull;
use std::sync::Arc;

use crate::interval_tree::{IntervalNode, TreeLinks};
use crate::range::NotifierRange;
use crate::subscriptions::{NodeState, Subscriptions};
use crate::sync::{AtomicU64, Ordering, UnsafeCell};

/// What a subscriber does when part of its interval is invalidated (the
/// kernel's `mmu_interval_notifier_ops`).
pub trait IntervalNotifierOps: Send + Sync {
    /// Called once per invalidation that overlaps `sub`'s interval, before
    /// the address space changes.
    ///
    /// A subscriber that mirrors pages must, under the same lock its fault
    /// path holds around [`IntervalNotifier::read_retry`]:
    /// call [`IntervalNotifier::set_seq`]`(cur_seq)` unconditionally, then tear
    /// down its translations for `range ∩ [sub.start(), sub.last()]`, and
    /// finish with them before returning.
    ///
    /// Return `false` only when `range` is not blockable and the work would
    /// have to sleep (for instance, the driver lock is contended). The
    /// invalidation then fails with [`crate::NotifierError::WouldBlock`] and
    /// the address space must not change. For a blockable range the return
    /// value is ignored apart from a counter
    /// ([`crate::NotifierStats::blockable_refusals`]), as in the kernel, so
    /// the teardown must really have happened.
    ///
    /// The callback must not remove any subscription (removal waits for the
    /// invalidation that is calling it).
    fn invalidate(&self, sub: &IntervalNotifier, range: &NotifierRange, cur_seq: u64) -> bool;
}

impl<F> IntervalNotifierOps for F
where
    F: Fn(&IntervalNotifier, &NotifierRange, u64) -> bool + Send + Sync,
{
    fn invalidate(&self, sub: &IntervalNotifier, range: &NotifierRange, cur_seq: u64) -> bool {
        self(sub, range, cur_seq)
    }
}

/// A subscribed interval `[start, last]` of one address space.
///
/// Obtained through [`Subscriptions::insert`] as an owning
/// [`IntervalSubscription`]; callbacks receive it by reference.
///
/// Layout: the fields a tree walk reads (`start`, `last`, the links) come
/// first and the node is cache-line aligned, so each node visited costs one
/// cache line.
#[repr(C, align(64))]
pub struct IntervalNotifier {
    start: usize,
    last: usize,
    pub(crate) tree_links: TreeLinks<IntervalNotifier>,
    /// Tree and deferred-list membership; guarded by the subscriptions lock.
    pub(crate) state: UnsafeCell<NodeState>,
    /// Always odd: the sequence of the last invalidation that hit this
    /// interval (or the starting value chosen at insert).
    invalidate_seq: AtomicU64,
    ops: Box<dyn IntervalNotifierOps>,
    subscriptions: Arc<Subscriptions>,
}

// SAFETY: `start`, `last` and `ops` are immutable after construction and
// `ops` is `Send + Sync`; `invalidate_seq` is atomic; `state` is only touched
// under the subscriptions lock, and `tree_links` only by the interval tree
// under the protocol in `subscriptions.rs` (mutation under the lock while no
// invalidation walks the tree, lock-free reads only during such a walk).
unsafe impl Sync for IntervalNotifier {}
// SAFETY: as above; nothing in the node is tied to a thread.
unsafe impl Send for IntervalNotifier {}

// SAFETY: `tree_links` is a field of the node, and `start`/`last` are set at
// construction and never changed.
unsafe impl IntervalNode for IntervalNotifier {
    fn start(&self) -> usize {
        self.start
    }
    fn last(&self) -> usize {
        self.last
    }
    fn tree_links(&self) -> &TreeLinks<Self> {
        &self.tree_links
    }
}

impl core::fmt::Debug for IntervalNotifier {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("IntervalNotifier")
            .field("start", &format_args!("{:#x}", self.start))
            .field("last", &format_args!("{:#x}", self.last))
            .field(
                "invalidate_seq",
                &self.invalidate_seq.load(Ordering::Relaxed),
            )
            .finish()
    }
}

impl IntervalNotifier {
    pub(crate) fn new(
        start: usize,
        last: usize,
        ops: Box<dyn IntervalNotifierOps>,
        subscriptions: Arc<Subscriptions>,
    ) -> Self {
        Self {
            start,
            last,
            tree_links: TreeLinks::new(),
            state: UnsafeCell::new(NodeState::default()),
            invalidate_seq: AtomicU64::new(0),
            ops,
            subscriptions,
        }
    }

    /// First address of the interval.
    pub fn start(&self) -> usize {
        self.start
    }

    /// Last address of the interval (inclusive).
    pub fn last(&self) -> usize {
        self.last
    }

    /// The address space this interval belongs to.
    pub fn subscriptions(&self) -> &Arc<Subscriptions> {
        &self.subscriptions
    }

    pub(crate) fn ops(&self) -> &dyn IntervalNotifierOps {
        &*self.ops
    }

    pub(crate) fn seq(&self) -> u64 {
        self.invalidate_seq.load(Ordering::Relaxed)
    }

    pub(crate) fn init_seq(&self, seq: u64) {
        self.invalidate_seq.store(seq, Ordering::Relaxed);
    }

    /// Begins a read-side critical section (the kernel's
    /// `mmu_interval_read_begin`).
    ///
    /// Returns the sequence to pass to [`Self::read_retry`]. If an
    /// invalidation covering this interval is running, sleeps until every
    /// running invalidation of the address space has ended. It does not loop:
    /// `read_retry` may already be true when it returns, which lets callers
    /// bound their total retry time.
    ///
    /// Must not be called while holding a lock that invalidate callbacks take
    /// (the driver lock): the sleep waits for those callbacks.
    pub fn read_begin(&self) -> u64 {
        self.subscriptions.read_begin(self)
    }

    /// Whether an invalidation has hit this interval since `seq` was returned
    /// by [`Self::read_begin`] (the kernel's `mmu_interval_read_retry`).
    ///
    /// Call it under the driver lock that the invalidate callback holds
    /// around [`Self::set_seq`], and commit translations inside that same
    /// critical section: the lock is what orders this check against a
    /// concurrent invalidation. `false` then means "nothing collided; commit".
    pub fn read_retry(&self, seq: u64) -> bool {
        self.seq() != seq
    }

    /// The same test as [`Self::read_retry`] without the driver lock (the
    /// kernel's `mmu_interval_check_retry`): a hint for long-running work.
    /// `true` is reliable (give up early); `false` proves nothing.
    pub fn check_retry(&self, seq: u64) -> bool {
        self.seq() != seq
    }

    /// Records the invalidation's sequence in this interval (the kernel's
    /// `mmu_interval_set_seq`). Call it from
    /// [`IntervalNotifierOps::invalidate`], unconditionally, under the driver
    /// lock, with the `cur_seq` the callback received; this is what makes a
    /// concurrent fault path's [`Self::read_retry`] return `true`.
    pub fn set_seq(&self, cur_seq: u64) {
        self.invalidate_seq.store(cur_seq, Ordering::Relaxed);
    }
}

/// Owning handle of an inserted [`IntervalNotifier`] (derefs to it).
///
/// Dropping it removes the interval, exactly like [`Self::remove`].
pub struct IntervalSubscription {
    node: NonNull<IntervalNotifier>,
}

// SAFETY: the handle owns the node (a `Box` in all but type), which is
// `Send + Sync`.
unsafe impl Send for IntervalSubscription {}
// SAFETY: as above.
unsafe impl Sync for IntervalSubscription {}

impl IntervalSubscription {
    /// Wraps a node that [`Subscriptions::insert`] leaked from a `Box` and
    /// linked (or queued to link).
    ///
    /// # Safety
    /// `node` must come from `Box::into_raw`, be inserted into its
    /// subscriptions, and be owned by nobody else.
    pub(crate) unsafe fn from_inserted(node: NonNull<IntervalNotifier>) -> Self {
        Self { node }
    }

    /// Removes the interval (the kernel's `mmu_interval_notifier_remove`).
    ///
    /// If an invalidation is running over the interval, waits for every
    /// running invalidation of the address space to end. Once it returns, no
    /// callback of this interval is running or will run.
    ///
    /// Must not be called from an invalidate callback, nor while holding a
    /// lock that callbacks take: both deadlock, as in the kernel.
    pub fn remove(self) {
        drop(self);
    }
}

impl Deref for IntervalSubscription {
    type Target = IntervalNotifier;
    fn deref(&self) -> &IntervalNotifier {
        // SAFETY: the node lives until this handle's drop frees it.
        unsafe { self.node.as_ref() }
    }
}

impl core::fmt::Debug for IntervalSubscription {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        (**self).fmt(f)
    }
}

impl Drop for IntervalSubscription {
    fn drop(&mut self) {
        self.subscriptions.remove(self.node);
        // SAFETY: `remove` returned, so the node is in neither the tree nor
        // the deferred list and no callback is running on it: this handle is
        // its only owner, and it came from `Box::into_raw`.
        drop(unsafe { Box::from_raw(self.node.as_ptr()) });
    }
}
