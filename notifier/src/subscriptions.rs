//! The interval subscriptions of one address space (the kernel's
//! `struct mmu_notifier_subscriptions`, interval-tree part): the tree, the
//! collision sequence, the deferred insert/remove list and the wait queue.
//!
//! # The collision-retry "lock"
//!
//! `invalidate_seq` works like a seqcount that any number of writers may hold
//! at once. The write side protects the address space's page-table entries:
//! while a writer exists, no subscriber may copy an entry into its own
//! (device) page table. Address-space changes nest and run in parallel on
//! several threads, and none of them ever waits for a reader.
//!
//! The write side has two states:
//! - *fully excluded*: `active_invalidate_ranges != 0` and the sequence is
//!   **odd**. Some running invalidation hit a subscription. The tree must not
//!   change, which is what lets invalidations walk it without the lock.
//! - *partially excluded*: `active_invalidate_ranges != 0` and the sequence is
//!   **even**. Invalidations are running, but none hit a subscription, so the
//!   tree may still change. This keeps the common case (an unmap nobody
//!   subscribed to) cheap at `invalidate_range_end`.
//!
//! Writers only ever do `seq |= 1` (begin) and `seq += 1` (the last end), both
//! under the lock. Subscriptions always store odd values, so an idle (even)
//! global sequence never equals one of them.
//!
//! # Who may touch the tree
//!
//! - Mutation: under the lock, and only while the sequence is even (or in the
//!   critical section that makes it odd). Inserts and removes that arrive
//!   while it is odd are queued on the deferred list and applied by the last
//!   `invalidate_range_end`, in the manner of `rtnl_unlock()`: start never has
//!   to wait for a tree writer, and the outcome is deterministic (no retry
//!   loop that could live-lock).
//! - Lock-free reads: only by an invalidation that made (or found) the
//!   sequence odd and has not ended. The sequence cannot become even, and so
//!   the tree cannot change, before that invalidation's own end.

use core::ptr::NonNull;
use std::sync::Arc;

use crate::NotifierError;
use crate::interval::{IntervalNotifier, IntervalNotifierOps, IntervalSubscription};
use crate::interval_tree::IntervalTree;
use crate::range::{Event, NotifierRange};
use crate::spinlock::StateLock;
use crate::sync::{AtomicU64, Ordering, UnsafeCell};
use crate::wait_queue::WaitQueue;

/// The kernel starts the sequence at 2: even (idle), with an odd value below
/// it for the first subscriptions.
const INITIAL_SEQ: u64 = 2;

#[inline]
fn is_odd(seq: u64) -> bool {
    seq & 1 == 1
}

/// Per-node membership, guarded by the subscriptions lock.
#[derive(Debug, Default)]
pub(crate) struct NodeState {
    in_tree: bool,
    on_deferred: bool,
    deferred_prev: Option<NonNull<IntervalNotifier>>,
    deferred_next: Option<NonNull<IntervalNotifier>>,
}

/// Everything the lock guards apart from the tree itself.
#[derive(Debug, Default)]
struct LockedState {
    active_invalidate_ranges: usize,
    /// Intrusive doubly-linked list through [`NodeState`]. A node on it that
    /// is not in the tree waits to be inserted; one that is in the tree waits
    /// to be removed.
    deferred_head: Option<NonNull<IntervalNotifier>>,
    deferred_len: usize,
    released: bool,
    counters: Counters,
}

// SAFETY: the raw pointers name nodes owned by `IntervalSubscription`s, which
// are `Send + Sync`; they are only followed under the lock.
unsafe impl Send for LockedState {}

#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    invalidations: u64,
    invalidations_hit: u64,
    callbacks: u64,
    would_block: u64,
    blockable_refusals: u64,
    deferred_inserts: u64,
    deferred_removes: u64,
    read_begin_waits: u64,
    remove_waits: u64,
}

/// What one invalidation's walk did, added to the counters at its end.
#[derive(Debug, Default, Clone, Copy)]
struct WalkCounts {
    callbacks: u64,
    refusals: u64,
}

/// A snapshot of the notifier's state and counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NotifierStats {
    /// The global collision sequence (odd while an invalidation that hit a
    /// subscription is running).
    pub invalidate_seq: u64,
    /// `invalidate_range_start` calls not yet matched by an end.
    pub active_invalidate_ranges: usize,
    /// Intervals linked into the tree.
    pub linked: usize,
    /// Inserts and removes waiting for the last running invalidation to end.
    pub deferred_pending: usize,
    /// Invalidations started (including would-block ones).
    pub invalidations: u64,
    /// Invalidations that overlapped at least one subscription.
    pub invalidations_hit: u64,
    /// Invalidate callbacks invoked.
    pub callbacks: u64,
    /// Non-blockable invalidations that failed because a callback refused.
    pub would_block: u64,
    /// Callbacks that returned `false` for a blockable range (a subscriber
    /// bug, which the kernel warns about; the invalidation went on).
    pub blockable_refusals: u64,
    /// Inserts queued on the deferred list.
    pub deferred_inserts: u64,
    /// Removals queued on the deferred list.
    pub deferred_removes: u64,
    /// `read_begin` calls that slept on a running invalidation.
    pub read_begin_waits: u64,
    /// Removals that slept on a running invalidation.
    pub remove_waits: u64,
}

/// The interval subscriptions of one address space.
///
/// One instance stands for one address space (the kernel keeps one per
/// `mm_struct`). Event sources call [`Self::invalidate_range_start`] before
/// they change a range and end the returned [`Invalidation`] afterwards;
/// subscribers register with [`Self::insert`] and follow the read side on
/// [`IntervalNotifier`].
pub struct Subscriptions {
    lock: StateLock<LockedState>,
    /// Written only under `lock`; read without it by sleepers and stats.
    invalidate_seq: AtomicU64,
    /// See the module comment for who may touch it, and when.
    itree: UnsafeCell<IntervalTree<IntervalNotifier>>,
    wq: WaitQueue,
}

// SAFETY: the tree's node pointers are `Send + Sync` nodes; the tree is
// mutated only under `lock` with no lock-free reader present, and read
// lock-free only while the odd sequence freezes it (module comment).
unsafe impl Sync for Subscriptions {}
// SAFETY: as above; nothing is tied to a thread.
unsafe impl Send for Subscriptions {}

// A panic in a callback unwinds through `Invalidation`'s drop, which ends the
// invalidation; user code never runs under the state lock. So the state is
// consistent after any unwind.
impl std::panic::RefUnwindSafe for Subscriptions {}
impl std::panic::UnwindSafe for Subscriptions {}

impl core::fmt::Debug for Subscriptions {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Subscriptions")
            .field("stats", &self.stats())
            .finish()
    }
}

impl Subscriptions {
    /// An address space with no subscriptions.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            lock: StateLock::new(LockedState::default()),
            invalidate_seq: AtomicU64::new(INITIAL_SEQ),
            itree: UnsafeCell::new(IntervalTree::new()),
            wq: WaitQueue::new(),
        })
    }

    fn seq(&self) -> u64 {
        self.invalidate_seq.load(Ordering::Relaxed)
    }

    /// Subscribes `[start, start + length)` (the kernel's
    /// `mmu_interval_notifier_insert`).
    ///
    /// `ops` is called for every invalidation that overlaps the interval. On
    /// return the interval may not be in the tree yet (an invalidation was
    /// running): use [`IntervalNotifier::read_begin`] before creating any
    /// translation, as always; it waits for that invalidation.
    ///
    /// # Errors
    /// [`NotifierError::ZeroLength`]; [`NotifierError::Overflow`] when
    /// `start + length` does not fit in `usize` (so the topmost address can
    /// never be subscribed; on Linux it belongs to the kernel anyway);
    /// [`NotifierError::Released`] after [`Self::release`].
    pub fn insert(
        self: &Arc<Self>,
        start: usize,
        length: usize,
        ops: impl IntervalNotifierOps + 'static,
    ) -> Result<IntervalSubscription, NotifierError> {
        if length == 0 {
            return Err(NotifierError::ZeroLength { start });
        }
        let end = start
            .checked_add(length)
            .ok_or(NotifierError::Overflow { start, length })?;
        let boxed = Box::new(IntervalNotifier::new(
            start,
            end - 1,
            Box::new(ops),
            Arc::clone(self),
        ));
        let node = NonNull::from(Box::leak(boxed));

        let mut state = self.lock.lock();
        if state.released {
            drop(state);
            // SAFETY: `node` came from `Box::leak` above and was never linked.
            drop(unsafe { Box::from_raw(node.as_ptr()) });
            return Err(NotifierError::Released);
        }
        // SAFETY: `node` is live and unlinked; we hold the lock.
        let sub = unsafe { node.as_ref() };
        if state.active_invalidate_ranges > 0 {
            // Running invalidations may cover the new interval: we cannot
            // know which ranges they touch, so assume they do.
            if is_odd(self.seq()) {
                // The tree is frozen; link it at the last end.
                // SAFETY: lock held; `node` is on no list.
                unsafe { deferred_push(&mut state, node) };
                state.counters.deferred_inserts += 1;
            } else {
                // Nobody walks the tree while the sequence is even; making it
                // odd now means the running invalidations' ends will bump it
                // and wake this subscription's first reader.
                self.invalidate_seq.store(self.seq() | 1, Ordering::Relaxed);
                // SAFETY: lock held, no walker (sequence was even).
                unsafe { self.tree_link(node) };
            }
            // The first read_begin sleeps until those invalidations end.
            sub.init_seq(self.seq());
        } else {
            debug_assert!(!is_odd(self.seq()), "odd sequence with no invalidation");
            // Odd, different from the idle global sequence, and not reached
            // by it before ~2^63 invalidations.
            sub.init_seq(self.seq() - 1);
            // SAFETY: lock held, no invalidation running.
            unsafe { self.tree_link(node) };
        }
        drop(state);
        // SAFETY: `node` came from `Box::leak`, is inserted, and the handle
        // becomes its only owner.
        Ok(unsafe { IntervalSubscription::from_inserted(node) })
    }

    /// Removes `node` from the tree or the deferred list; on return no
    /// callback runs on it. Called by `IntervalSubscription`'s drop.
    pub(crate) fn remove(&self, node: NonNull<IntervalNotifier>) {
        let mut wait_for = None;
        {
            let mut state = self.lock.lock();
            // SAFETY: lock held; `node` belongs to these subscriptions.
            let in_tree = unsafe { node_state(node, |s| s.in_tree) };
            if is_odd(self.seq()) {
                if in_tree {
                    // An invalidation may be walking onto this node: queue
                    // the unlink for the last end and wait for it.
                    // SAFETY: lock held; a linked node is on no list.
                    unsafe { deferred_push(&mut state, node) };
                    state.counters.deferred_removes += 1;
                    state.counters.remove_waits += 1;
                    wait_for = Some(self.seq());
                } else {
                    // Inserted during this invalidation and never linked: no
                    // walker can reach it.
                    // SAFETY: lock held; an unlinked node of a live handle is
                    // on the deferred list.
                    unsafe { deferred_unlink(&mut state, node) };
                }
            } else {
                debug_assert!(in_tree, "idle tree lost a node");
                // SAFETY: lock held, sequence even so no walker, node linked.
                unsafe { self.tree_unlink(node) };
            }
        }
        if let Some(seq) = wait_for {
            // Check under the lock: the last end bumps the sequence and
            // applies the deferred list in one critical section, so seeing
            // the new sequence there means the node is unlinked. A lock-free
            // read could see the bump while the unlink is still in progress.
            self.wq.wait_until(|| {
                let _state = self.lock.lock();
                self.seq() != seq
            });
        }
    }

    /// See [`IntervalNotifier::read_begin`].
    pub(crate) fn read_begin(&self, sub: &IntervalNotifier) -> u64 {
        // If the subscription's sequence differs from the one returned here
        // when the caller checks under its driver lock, it collided. If it
        // equals the global sequence now, an invalidation that hit it (or
        // that was running when it was inserted) has not ended yet:
        //
        //   invalidate_range_start        read_begin
        //                                  lock; seq = sub.seq; unlock
        //   lock; global |= 1; unlock
        //   callback: driver lock;
        //     set_seq(global); unlock
        //                                  [read_retry(seq) is now true]
        //   last end: lock; global += 1
        //                                  driver lock; read_retry(seq)
        //
        // The driver lock orders set_seq against read_retry, so that check
        // needs no barriers. The wait below does: see `inv_end`.
        let (seq, is_invalidating) = {
            let mut state = self.lock.lock();
            let seq = sub.seq();
            let is_invalidating = seq == self.seq();
            if is_invalidating {
                state.counters.read_begin_waits += 1;
            }
            (seq, is_invalidating)
        };
        if is_invalidating {
            // `seq` is odd and the idle global sequence even, so this ends
            // even if the counter ever wrapped.
            self.wq
                .wait_until(|| self.invalidate_seq.load(Ordering::Acquire) != seq);
        }
        // No loop: read_retry may already be true, which lets the caller
        // bound the time it spends retrying.
        seq
    }

    /// Starts invalidating `range` (the kernel's
    /// `mmu_notifier_invalidate_range_start`, or `_nonblock` when the range
    /// is not blockable).
    ///
    /// Calls the callback of every subscription that overlaps `range`, then
    /// returns an [`Invalidation`] that must be ended (or dropped) after the
    /// address space has changed; until then, readers of the hit
    /// subscriptions cannot commit.
    ///
    /// For a non-blockable range, a callback that returns `false` stops the
    /// walk: the invalidation is ended here, the call fails with
    /// [`NotifierError::WouldBlock`], and the caller must not change the
    /// address space (it may retry, for instance blockably).
    ///
    /// Never allocates. It takes the short state lock twice and otherwise
    /// only what the callbacks take.
    ///
    /// # Errors
    /// [`NotifierError::WouldBlock`], only for a non-blockable range.
    pub fn invalidate_range_start(
        &self,
        range: &NotifierRange,
    ) -> Result<Invalidation<'_>, NotifierError> {
        let (mut next, cur_seq) = self.inv_start_range(range);
        // Dropping the guard ends the invalidation, also if a callback panics.
        let mut guard = Invalidation {
            subscriptions: self,
            walk: WalkCounts::default(),
        };
        while let Some(node) = next {
            // SAFETY: `node` is in the tree, which stays frozen (and so keeps
            // the node linked and alive) until this invalidation ends.
            let sub = unsafe { node.as_ref() };
            guard.walk.callbacks += 1;
            if !sub.ops().invalidate(sub, range, cur_seq) {
                if range.is_blockable() {
                    guard.walk.refusals += 1;
                } else {
                    // The caller must not call end: the guard does it now.
                    drop(guard);
                    self.lock.lock().counters.would_block += 1;
                    return Err(NotifierError::WouldBlock);
                }
            }
            // SAFETY: as above; `node` came from a walk with these bounds.
            next = unsafe { self.inv_next(node, range) };
        }
        Ok(guard)
    }

    /// Counts the invalidation in and finds its first hit (`mn_itree_inv_start_range`).
    fn inv_start_range(&self, range: &NotifierRange) -> (Option<NonNull<IntervalNotifier>>, u64) {
        let mut state = self.lock.lock();
        state.active_invalidate_ranges += 1;
        state.counters.invalidations += 1;
        // SAFETY: lock held, so no mutation runs concurrently; lock-free
        // readers only read.
        let first = self
            .itree
            .with(|tree| unsafe { (*tree).iter_first(range.start(), range.last()) });
        if first.is_some() {
            self.invalidate_seq.store(self.seq() | 1, Ordering::Relaxed);
            state.counters.invalidations_hit += 1;
        }
        (first, self.seq())
    }

    /// The next hit after `node`, read without the lock.
    ///
    /// # Safety
    /// The caller is an active invalidation whose walk found `node`.
    unsafe fn inv_next(
        &self,
        node: NonNull<IntervalNotifier>,
        range: &NotifierRange,
    ) -> Option<NonNull<IntervalNotifier>> {
        // SAFETY: the caller's invalidation made the sequence odd and has not
        // ended, so no one mutates the tree; `node` is in it and overlaps.
        self.itree
            .with(|tree| unsafe { (*tree).iter_next(node, range.start(), range.last()) })
    }

    /// Ends one invalidation (`mn_itree_inv_end`). The last one to end while
    /// the sequence is odd makes it even, applies the deferred list and wakes
    /// sleepers.
    fn inv_end(&self, walk: WalkCounts) {
        let mut state = self.lock.lock();
        state.counters.callbacks += walk.callbacks;
        state.counters.blockable_refusals += walk.refusals;
        state.active_invalidate_ranges -= 1;
        if state.active_invalidate_ranges > 0 || !is_odd(self.seq()) {
            return;
        }
        // Release pairs with the Acquire in `read_begin`'s lock-free wait: a
        // reader that sees this end also sees every address-space change the
        // invalidations made before ending. (The kernel gets this ordering
        // from mmap_lock, which both the change and the fault path take;
        // here the subscriber's fault path may take no lock the event
        // source also holds.)
        self.invalidate_seq.store(self.seq() + 1, Ordering::Release);
        // SAFETY: lock held, and the sequence just became even with no
        // invalidation active, so no walker exists.
        unsafe { self.apply_deferred(&mut state) };
        drop(state);
        self.wq.wake_all();
    }

    /// Links or unlinks every node on the deferred list.
    ///
    /// # Safety
    /// Lock held (`state` is its guard) and no walker on the tree.
    unsafe fn apply_deferred(&self, state: &mut LockedState) {
        while let Some(node) = state.deferred_head {
            // SAFETY: lock held; `node` heads the deferred list.
            unsafe {
                deferred_unlink(state, node);
                if node_state(node, |s| s.in_tree) {
                    self.tree_unlink(node);
                } else {
                    self.tree_link(node);
                }
            }
        }
    }

    /// # Safety
    /// Lock held, no walker on the tree, `node` live and not linked.
    unsafe fn tree_link(&self, node: NonNull<IntervalNotifier>) {
        // SAFETY: exclusive tree access per the caller's contract; the node
        // stays alive until `remove` unlinks it.
        unsafe {
            self.itree.with_mut(|tree| (*tree).insert(node));
            node_state(node, |s| s.in_tree = true);
        }
    }

    /// # Safety
    /// Lock held, no walker on the tree, `node` linked.
    unsafe fn tree_unlink(&self, node: NonNull<IntervalNotifier>) {
        // SAFETY: exclusive tree access per the caller's contract.
        unsafe {
            self.itree.with_mut(|tree| (*tree).remove(node));
            node_state(node, |s| s.in_tree = false);
        }
    }

    /// Invalidates every subscription because the address space is going
    /// away (the kernel's `mn_itree_release`), with [`Event::Release`].
    ///
    /// Afterwards [`Self::insert`] fails and [`Self::is_released`] is true;
    /// fault paths should check it after `read_begin` (the kernel's
    /// `mmget_not_zero` failing). Subscriptions stay inserted until their
    /// handles are dropped. Calling it again does nothing.
    pub fn release(&self) {
        {
            let mut state = self.lock.lock();
            if state.released {
                return;
            }
            state.released = true;
        }
        let range = NotifierRange::whole_address_space(Event::Release);
        // A blockable invalidation always succeeds.
        if let Ok(invalidation) = self.invalidate_range_start(&range) {
            invalidation.end();
        }
    }

    /// Whether [`Self::release`] has run.
    pub fn is_released(&self) -> bool {
        self.lock.lock().released
    }

    /// A snapshot of the state and counters.
    pub fn stats(&self) -> NotifierStats {
        let state = self.lock.lock();
        // SAFETY: lock held, so no mutation runs concurrently.
        let linked = self.itree.with(|tree| unsafe { (*tree).len() });
        let c = state.counters;
        NotifierStats {
            invalidate_seq: self.seq(),
            active_invalidate_ranges: state.active_invalidate_ranges,
            linked,
            deferred_pending: state.deferred_len,
            invalidations: c.invalidations,
            invalidations_hit: c.invalidations_hit,
            callbacks: c.callbacks,
            would_block: c.would_block,
            blockable_refusals: c.blockable_refusals,
            deferred_inserts: c.deferred_inserts,
            deferred_removes: c.deferred_removes,
            read_begin_waits: c.read_begin_waits,
            remove_waits: c.remove_waits,
        }
    }
}

/// A running invalidation; ending it (or dropping it) is the kernel's
/// `mmu_notifier_invalidate_range_end`.
#[must_use = "dropping an Invalidation ends it at once"]
pub struct Invalidation<'a> {
    subscriptions: &'a Subscriptions,
    walk: WalkCounts,
}

impl Invalidation<'_> {
    /// Ends the invalidation: call it once the address space has changed.
    pub fn end(self) {
        drop(self);
    }
}

impl Drop for Invalidation<'_> {
    fn drop(&mut self) {
        self.subscriptions.inv_end(self.walk);
    }
}

impl core::fmt::Debug for Invalidation<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Invalidation")
            .field("callbacks", &self.walk.callbacks)
            .finish()
    }
}

/// Runs `f` on `node`'s membership state.
///
/// # Safety
/// The subscriptions lock must be held and `node` live.
unsafe fn node_state<R>(node: NonNull<IntervalNotifier>, f: impl FnOnce(&mut NodeState) -> R) -> R {
    // SAFETY: the lock serialises all access to the state (caller).
    unsafe { node.as_ref() }
        .state
        .with_mut(|s| f(unsafe { &mut *s }))
}

/// Pushes `node` at the head of the deferred list.
///
/// # Safety
/// Lock held (`state` is its data); `node` live and not on the list.
unsafe fn deferred_push(state: &mut LockedState, node: NonNull<IntervalNotifier>) {
    let old_head = state.deferred_head;
    // SAFETY: lock held; `node` and the old head are live.
    unsafe {
        node_state(node, |s| {
            debug_assert!(!s.on_deferred);
            s.on_deferred = true;
            s.deferred_prev = None;
            s.deferred_next = old_head;
        });
        if let Some(h) = old_head {
            node_state(h, |s| s.deferred_prev = Some(node));
        }
    }
    state.deferred_head = Some(node);
    state.deferred_len += 1;
}

/// Unlinks `node` from the deferred list.
///
/// # Safety
/// Lock held (`state` is its data); `node` live and on the list.
unsafe fn deferred_unlink(state: &mut LockedState, node: NonNull<IntervalNotifier>) {
    // SAFETY: lock held; `node` and its neighbours are live list members.
    unsafe {
        let (prev, next) = node_state(node, |s| {
            debug_assert!(s.on_deferred);
            s.on_deferred = false;
            (s.deferred_prev.take(), s.deferred_next.take())
        });
        match prev {
            Some(p) => node_state(p, |s| s.deferred_next = next),
            None => state.deferred_head = next,
        }
        if let Some(n) = next {
            node_state(n, |s| s.deferred_prev = prev);
        }
    }
    state.deferred_len -= 1;
}
