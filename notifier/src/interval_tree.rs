//! Augmented red-black interval tree over intrusive nodes, in the manner of
//! the kernel's `interval_tree` (`include/linux/interval_tree_generic.h`).
//!
//! Each node covers `[start, last]` with an **inclusive** `last`, is ordered
//! by `start` (equal starts allowed), and carries `subtree_last`: the largest
//! `last` in its subtree. Overlap queries prune every subtree whose
//! `subtree_last` is below the query start, so finding the first overlap costs
//! O(log n) and each further overlap O(log n) amortised over the walk
//! (O(log n + k) for k hits). Insert and remove are O(log n).
//!
//! The links live inside the nodes (the caller allocates them), so insert and
//! remove never allocate. Access to every node's links is governed by access
//! to the tree: `&IntervalTree` permits reading the links of its nodes, and
//! `&mut IntervalTree` permits changing them.

use core::cell::UnsafeCell;
use core::ptr::NonNull;

type Link<N> = Option<NonNull<N>>;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Color {
    Red,
    Black,
}

/// Index of a child in [`Links::child`]; `1 - dir` is the mirror side.
type Dir = usize;
const LEFT: Dir = 0;
const RIGHT: Dir = 1;

struct Links<N> {
    parent: Link<N>,
    /// `[left, right]`, indexed by [`Dir`] so that each rebalancing case is
    /// written once for both mirror images.
    child: [Link<N>; 2],
    color: Color,
    subtree_last: usize,
}

impl<N> Links<N> {
    const UNLINKED: Self = Self {
        parent: None,
        child: [None, None],
        color: Color::Black,
        subtree_last: 0,
    };
}

/// The tree links embedded in a node. Only the tree touches them.
pub(crate) struct TreeLinks<N>(UnsafeCell<Links<N>>);

impl<N> TreeLinks<N> {
    pub(crate) const fn new() -> Self {
        Self(UnsafeCell::new(Links::UNLINKED))
    }
}

impl<N> core::fmt::Debug for TreeLinks<N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("TreeLinks")
    }
}

/// A node that can be linked into an [`IntervalTree`].
///
/// # Safety
/// `tree_links` must return the same `TreeLinks` for the node's whole life,
/// and `start`/`last` must never change while the node is in a tree.
pub(crate) unsafe trait IntervalNode: Sized {
    /// First address covered.
    fn start(&self) -> usize;
    /// Last address covered (inclusive).
    fn last(&self) -> usize;
    /// The node's embedded links.
    fn tree_links(&self) -> &TreeLinks<Self>;
}

/// Raw access to a node's links.
///
/// # Safety
/// `n` must be live. Reads need the tree borrowed shared, writes exclusive.
#[inline]
unsafe fn links<N: IntervalNode>(n: NonNull<N>) -> *mut Links<N> {
    // SAFETY: `n` is live (caller); a shared reference to the node is fine
    // because the links sit behind an `UnsafeCell`.
    unsafe { n.as_ref() }.tree_links().0.get()
}

// Field accessors. Each is `unsafe` with the contract of `links`.
macro_rules! accessors {
    ($($get:ident, $set:ident, $field:ident: $ty:ty;)*) => {$(
        #[inline]
        unsafe fn $get<N: IntervalNode>(n: NonNull<N>) -> $ty {
            // SAFETY: see `links`; the caller holds the needed tree borrow.
            unsafe { (*links(n)).$field }
        }
        #[inline]
        unsafe fn $set<N: IntervalNode>(n: NonNull<N>, value: $ty) {
            // SAFETY: see `links`; the caller holds the tree exclusively.
            unsafe { (*links(n)).$field = value }
        }
    )*};
}

accessors! {
    parent, set_parent, parent: Link<N>;
    color, set_color, color: Color;
    subtree_last, set_subtree_last, subtree_last: usize;
}

#[inline]
unsafe fn child<N: IntervalNode>(n: NonNull<N>, dir: Dir) -> Link<N> {
    // SAFETY: see `links`; the caller holds the needed tree borrow.
    unsafe { (*links(n)).child[dir] }
}

#[inline]
unsafe fn set_child<N: IntervalNode>(n: NonNull<N>, dir: Dir, value: Link<N>) {
    // SAFETY: see `links`; the caller holds the tree exclusively.
    unsafe { (*links(n)).child[dir] = value }
}

#[inline]
unsafe fn left<N: IntervalNode>(n: NonNull<N>) -> Link<N> {
    // SAFETY: contract of `child`.
    unsafe { child(n, LEFT) }
}

#[inline]
unsafe fn right<N: IntervalNode>(n: NonNull<N>) -> Link<N> {
    // SAFETY: contract of `child`.
    unsafe { child(n, RIGHT) }
}

/// Which side of its parent `n` hangs on.
#[inline]
unsafe fn side_of<N: IntervalNode>(parent: NonNull<N>, n: Link<N>) -> Dir {
    // SAFETY: contract of `child`.
    if unsafe { left(parent) } == n {
        LEFT
    } else {
        RIGHT
    }
}

/// # Safety
/// `n` must be live.
#[inline]
unsafe fn start_of<N: IntervalNode>(n: NonNull<N>) -> usize {
    // SAFETY: `n` is live (caller).
    unsafe { n.as_ref() }.start()
}

/// # Safety
/// `n` must be live.
#[inline]
unsafe fn last_of<N: IntervalNode>(n: NonNull<N>) -> usize {
    // SAFETY: `n` is live (caller).
    unsafe { n.as_ref() }.last()
}

/// Nil children count as black.
#[inline]
unsafe fn is_red<N: IntervalNode>(n: Link<N>) -> bool {
    // SAFETY: contract of `links`.
    n.is_some_and(|n| unsafe { color(n) } == Color::Red)
}

/// `subtree_last` from the node's own `last` and its children's values.
#[inline]
unsafe fn compute_subtree_last<N: IntervalNode>(n: NonNull<N>) -> usize {
    // SAFETY: contract of `links`.
    unsafe {
        let mut max = last_of(n);
        if let Some(l) = left(n) {
            max = max.max(subtree_last(l));
        }
        if let Some(r) = right(n) {
            max = max.max(subtree_last(r));
        }
        max
    }
}

#[cfg(test)]
thread_local! {
    /// Nodes looked at by overlap queries on this thread (tests measure the
    /// O(log n + k) bound with it).
    static QUERY_VISITS: core::cell::Cell<u64> = const { core::cell::Cell::new(0) };
}

#[inline]
fn count_visit() {
    #[cfg(test)]
    QUERY_VISITS.with(|v| v.set(v.get() + 1));
}

/// An augmented red-black tree of intrusive interval nodes.
pub(crate) struct IntervalTree<N: IntervalNode> {
    root: Link<N>,
    len: usize,
}

impl<N: IntervalNode> core::fmt::Debug for IntervalTree<N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("IntervalTree")
            .field("len", &self.len)
            .finish()
    }
}

impl<N: IntervalNode> IntervalTree<N> {
    pub(crate) const fn new() -> Self {
        Self { root: None, len: 0 }
    }

    /// Number of linked nodes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Links `node` into the tree.
    ///
    /// # Safety
    /// `node` must be live, in no tree, and stay live and unmoved until it is
    /// removed from this tree.
    pub(crate) unsafe fn insert(&mut self, node: NonNull<N>) {
        // SAFETY: every node reached is in this tree (live), and `&mut self`
        // gives exclusive access to all links; `node` is live (caller).
        unsafe {
            let (node_start, node_last) = (start_of(node), last_of(node));
            let mut parent = None;
            let mut go_left = false;
            let mut cur = self.root;
            while let Some(c) = cur {
                // The new node lands in `c`'s subtree.
                if subtree_last(c) < node_last {
                    set_subtree_last(c, node_last);
                }
                parent = Some(c);
                go_left = node_start < start_of(c);
                cur = if go_left { left(c) } else { right(c) };
            }
            *links(node) = Links {
                parent,
                child: [None, None],
                color: Color::Red,
                subtree_last: node_last,
            };
            match parent {
                None => self.root = Some(node),
                Some(p) => set_child(p, if go_left { LEFT } else { RIGHT }, Some(node)),
            }
            self.insert_fixup(node);
        }
        self.len += 1;
    }

    /// Restores the red-black properties after linking the red node `z`.
    unsafe fn insert_fixup(&mut self, mut z: NonNull<N>) {
        // SAFETY: all nodes touched are in this tree; `&mut self` is exclusive.
        unsafe {
            while let Some(mut p) = parent(z) {
                if color(p) == Color::Black {
                    break;
                }
                // A red node is never the root, so `p` has a parent.
                let Some(g) = parent(p) else { break };
                let dir = side_of(g, Some(p));
                if let Some(uncle) = child(g, 1 - dir).filter(|&u| color(u) == Color::Red) {
                    // Red uncle: push the blackness down from `g`, go up.
                    set_color(p, Color::Black);
                    set_color(uncle, Color::Black);
                    set_color(g, Color::Red);
                    z = g;
                    continue;
                }
                if child(p, 1 - dir) == Some(z) {
                    // Inner grandchild: rotate it to the outside first.
                    z = p;
                    self.rotate(z, dir);
                    p = parent(z).expect("rotated node has a parent");
                }
                set_color(p, Color::Black);
                set_color(g, Color::Red);
                self.rotate(g, 1 - dir);
            }
            if let Some(root) = self.root {
                set_color(root, Color::Black);
            }
        }
    }

    /// Unlinks `node`.
    ///
    /// # Safety
    /// `node` must be in this tree.
    pub(crate) unsafe fn remove(&mut self, z: NonNull<N>) {
        // SAFETY: `z` and every node reached are in this tree; `&mut self`
        // gives exclusive access to their links.
        unsafe {
            let mut removed_color = color(z);
            let x;
            // The deepest node whose subtree lost a member.
            let x_parent;
            match (left(z), right(z)) {
                (None, child) | (child, None) => {
                    x = child;
                    x_parent = parent(z);
                    self.transplant(z, child);
                }
                (Some(zl), Some(zr)) => {
                    // Replace `z` by its successor `y`, the minimum of its
                    // right subtree (which has no left child).
                    let mut y = zr;
                    while let Some(l) = left(y) {
                        y = l;
                    }
                    removed_color = color(y);
                    x = right(y);
                    if y == zr {
                        x_parent = Some(y);
                    } else {
                        x_parent = parent(y);
                        self.transplant(y, x);
                        set_child(y, RIGHT, Some(zr));
                        set_parent(zr, Some(y));
                    }
                    self.transplant(z, Some(y));
                    set_child(y, LEFT, Some(zl));
                    set_parent(zl, Some(y));
                    set_color(y, color(z));
                }
            }
            // Every node whose subtree changed is `x_parent` or above it.
            let mut up = x_parent;
            while let Some(n) = up {
                set_subtree_last(n, compute_subtree_last(n));
                up = parent(n);
            }
            if removed_color == Color::Black {
                self.remove_fixup(x, x_parent);
            }
            *links(z) = Links::UNLINKED;
        }
        self.len -= 1;
    }

    /// Restores the red-black properties after a black node was removed
    /// above `x` (which may be nil, hence its parent is passed separately).
    unsafe fn remove_fixup(&mut self, mut x: Link<N>, mut x_parent: Link<N>) {
        // SAFETY: all nodes touched are in this tree; `&mut self` is exclusive.
        // The sibling `w` exists whenever `x` is doubly black: its side has a
        // black height of at least one. When `x` is nil, it is the nil child
        // of `x_parent` (the other child is that sibling).
        unsafe {
            while x != self.root && !is_red(x) {
                let Some(p) = x_parent else { break };
                let dir = side_of(p, x);
                let other = 1 - dir;
                let mut w = child(p, other).expect("doubly black node has a sibling");
                if color(w) == Color::Red {
                    set_color(w, Color::Black);
                    set_color(p, Color::Red);
                    self.rotate(p, dir);
                    w = child(p, other).expect("doubly black node has a sibling");
                }
                if !is_red(child(w, dir)) && !is_red(child(w, other)) {
                    // Both nephews black: move the extra black up.
                    set_color(w, Color::Red);
                    x = Some(p);
                    x_parent = parent(p);
                    continue;
                }
                if !is_red(child(w, other)) {
                    // Only the near nephew is red: rotate it outside.
                    if let Some(near) = child(w, dir) {
                        set_color(near, Color::Black);
                    }
                    set_color(w, Color::Red);
                    self.rotate(w, other);
                    w = child(p, other).expect("doubly black node has a sibling");
                }
                set_color(w, color(p));
                set_color(p, Color::Black);
                if let Some(far) = child(w, other) {
                    set_color(far, Color::Black);
                }
                self.rotate(p, dir);
                x = self.root;
                break;
            }
            if let Some(x) = x {
                set_color(x, Color::Black);
            }
        }
    }

    /// Puts `new` where `old` hangs from its parent (or the root).
    unsafe fn transplant(&mut self, old: NonNull<N>, new: Link<N>) {
        // SAFETY: `old` is in this tree; `&mut self` is exclusive.
        unsafe {
            let p = parent(old);
            self.replace_child(p, old, new);
            if let Some(n) = new {
                set_parent(n, p);
            }
        }
    }

    unsafe fn replace_child(&mut self, parent: Link<N>, old: NonNull<N>, new: Link<N>) {
        // SAFETY: `parent` is in this tree; `&mut self` is exclusive.
        unsafe {
            match parent {
                None => self.root = new,
                Some(p) => set_child(p, side_of(p, Some(old)), new),
            }
        }
    }

    /// Rotation at `x` that moves `x` down to side `dir` and its child on
    /// the other side up into its place. The rotated pair covers the same set
    /// of nodes as before, so the new top inherits `x`'s old `subtree_last`
    /// and only `x` is recomputed (the kernel's `augment_rotate`).
    unsafe fn rotate(&mut self, x: NonNull<N>, dir: Dir) {
        // SAFETY: `x` and its child on the other side are in this tree;
        // exclusive access.
        unsafe {
            let y = child(x, 1 - dir).expect("rotation needs the rising child");
            let inner = child(y, dir);
            set_child(x, 1 - dir, inner);
            if let Some(i) = inner {
                set_parent(i, Some(x));
            }
            let xp = parent(x);
            set_parent(y, xp);
            self.replace_child(xp, x, Some(y));
            set_child(y, dir, Some(x));
            set_parent(x, Some(y));
            set_subtree_last(y, subtree_last(x));
            set_subtree_last(x, compute_subtree_last(x));
        }
    }

    /// The first node, in `start` order, that overlaps `[start, last]`.
    pub(crate) fn iter_first(&self, start: usize, last: usize) -> Option<NonNull<N>> {
        let root = self.root?;
        // SAFETY: `root` is in this tree, which `&self` borrows.
        unsafe {
            if subtree_last(root) < start {
                return None;
            }
            subtree_search(root, start, last)
        }
    }

    /// The next node after `node`, in `start` order, that overlaps
    /// `[start, last]`. Walks up through parents and down into right
    /// subtrees, pruning by `subtree_last`.
    ///
    /// # Safety
    /// `node` must be in this tree and overlap `[start, last]` (it came from
    /// `iter_first`/`iter_next` with the same bounds).
    pub(crate) unsafe fn iter_next(
        &self,
        mut node: NonNull<N>,
        start: usize,
        last: usize,
    ) -> Option<NonNull<N>> {
        // SAFETY: `node` and all nodes reached are in this tree, borrowed by
        // `&self`.
        unsafe {
            let mut right_child = right(node);
            loop {
                // Invariant: start_of(node) <= last, right_child == right(node).
                if let Some(r) = right_child
                    && start <= subtree_last(r)
                {
                    return subtree_search(r, start, last);
                }
                // Climb until we arrive from a left child: that parent is the
                // next node in order.
                loop {
                    count_visit();
                    let p = parent(node)?;
                    let came_from = node;
                    node = p;
                    right_child = right(node);
                    if right_child != Some(came_from) {
                        break;
                    }
                }
                if last < start_of(node) {
                    return None;
                }
                if start <= last_of(node) {
                    return Some(node);
                }
            }
        }
    }

    /// Checks every structural invariant; returns a description of the first
    /// violation. Used by tests.
    #[cfg(test)]
    pub(crate) fn check(&self) -> Result<(), String> {
        // Returns (black height, node count).
        unsafe fn walk<N: IntervalNode>(
            n: Link<N>,
            expected_parent: Link<N>,
            lo: usize,
        ) -> Result<(usize, usize), String> {
            let Some(n) = n else { return Ok((1, 0)) };
            // SAFETY: `n` is in the tree under check, borrowed by the caller.
            unsafe {
                if parent(n) != expected_parent {
                    return Err("bad parent pointer".into());
                }
                if start_of(n) < lo {
                    return Err("start order violated".into());
                }
                if color(n) == Color::Red && (is_red(left(n)) || is_red(right(n))) {
                    return Err("red node with red child".into());
                }
                if subtree_last(n) != compute_subtree_last(n) {
                    return Err(format!("stale subtree_last at start {:#x}", start_of(n)));
                }
                if let Some(l) = left(n)
                    && start_of(l) > start_of(n)
                {
                    return Err("left child starts after parent".into());
                }
                let (lh, lc) = walk(left(n), Some(n), lo)?;
                let (rh, rc) = walk(right(n), Some(n), start_of(n))?;
                if lh != rh {
                    return Err("black heights differ".into());
                }
                Ok((lh + usize::from(color(n) == Color::Black), lc + rc + 1))
            }
        }
        if is_red_root(self.root) {
            return Err("red root".into());
        }
        // SAFETY: the tree is borrowed for the whole walk.
        let (_, count) = unsafe { walk(self.root, None, 0)? };
        if count != self.len {
            return Err(format!("len {} but {} nodes linked", self.len, count));
        }
        Ok(())
    }
}

#[cfg(test)]
fn is_red_root<N: IntervalNode>(root: Link<N>) -> bool {
    // SAFETY: the root is in the tree the caller borrows.
    unsafe { is_red(root) }
}

/// Leftmost node of the subtree at `node` that overlaps `[start, last]`.
///
/// Precondition (kernel's loop invariant): `start <= subtree_last(node)`, so
/// some node of the subtree ends at or after `start`. The search finds the
/// leftmost such node; if it begins after `last`, every later node does too.
///
/// # Safety
/// `node` must be in a tree the caller borrows.
unsafe fn subtree_search<N: IntervalNode>(
    mut node: NonNull<N>,
    start: usize,
    last: usize,
) -> Option<NonNull<N>> {
    // SAFETY: all nodes reached are in the caller's borrowed tree.
    unsafe {
        loop {
            count_visit();
            if let Some(l) = left(node)
                && start <= subtree_last(l)
            {
                node = l;
                continue;
            }
            if start_of(node) <= last {
                if start <= last_of(node) {
                    return Some(node);
                }
                if let Some(r) = right(node)
                    && start <= subtree_last(r)
                {
                    node = r;
                    continue;
                }
            }
            return None;
        }
    }
}

#[cfg(test)]
mod tests;
