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

struct Links<N> {
    parent: Link<N>,
    left: Link<N>,
    right: Link<N>,
    color: Color,
    subtree_last: usize,
}

/// The tree links embedded in a node. Only the tree touches them.
pub(crate) struct TreeLinks<N>(UnsafeCell<Links<N>>);

impl<N> TreeLinks<N> {
    pub(crate) const fn new() -> Self {
        Self(UnsafeCell::new(Links {
            parent: None,
            left: None,
            right: None,
            color: Color::Black,
            subtree_last: 0,
        }))
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
    left, set_left, left: Link<N>;
    right, set_right, right: Link<N>;
    color, set_color, color: Color;
    subtree_last, set_subtree_last, subtree_last: usize;
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
                left: None,
                right: None,
                color: Color::Red,
                subtree_last: node_last,
            };
            match parent {
                None => self.root = Some(node),
                Some(p) if go_left => set_left(p, Some(node)),
                Some(p) => set_right(p, Some(node)),
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
                if left(g) == Some(p) {
                    let uncle = right(g);
                    if let Some(u) = uncle.filter(|&u| color(u) == Color::Red) {
                        set_color(p, Color::Black);
                        set_color(u, Color::Black);
                        set_color(g, Color::Red);
                        z = g;
                        continue;
                    }
                    if right(p) == Some(z) {
                        z = p;
                        self.rotate_left(z);
                        p = parent(z).expect("rotated node has a parent");
                    }
                    set_color(p, Color::Black);
                    set_color(g, Color::Red);
                    self.rotate_right(g);
                } else {
                    let uncle = left(g);
                    if let Some(u) = uncle.filter(|&u| color(u) == Color::Red) {
                        set_color(p, Color::Black);
                        set_color(u, Color::Black);
                        set_color(g, Color::Red);
                        z = g;
                        continue;
                    }
                    if left(p) == Some(z) {
                        z = p;
                        self.rotate_right(z);
                        p = parent(z).expect("rotated node has a parent");
                    }
                    set_color(p, Color::Black);
                    set_color(g, Color::Red);
                    self.rotate_left(g);
                }
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
                        set_right(y, Some(zr));
                        set_parent(zr, Some(y));
                    }
                    self.transplant(z, Some(y));
                    set_left(y, Some(zl));
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
            *links(z) = Links {
                parent: None,
                left: None,
                right: None,
                color: Color::Black,
                subtree_last: 0,
            };
        }
        self.len -= 1;
    }

    /// Restores the red-black properties after a black node was removed
    /// above `x` (which may be nil, hence its parent is passed separately).
    unsafe fn remove_fixup(&mut self, mut x: Link<N>, mut x_parent: Link<N>) {
        // SAFETY: all nodes touched are in this tree; `&mut self` is exclusive.
        // The sibling `w` exists whenever `x` is doubly black: its side has a
        // black height of at least one.
        unsafe {
            while x != self.root && !is_red(x) {
                let Some(p) = x_parent else { break };
                if x == left(p) {
                    let mut w = right(p).expect("doubly black node has a sibling");
                    if color(w) == Color::Red {
                        set_color(w, Color::Black);
                        set_color(p, Color::Red);
                        self.rotate_left(p);
                        w = right(p).expect("doubly black node has a sibling");
                    }
                    if !is_red(left(w)) && !is_red(right(w)) {
                        set_color(w, Color::Red);
                        x = Some(p);
                        x_parent = parent(p);
                    } else {
                        if !is_red(right(w)) {
                            if let Some(wl) = left(w) {
                                set_color(wl, Color::Black);
                            }
                            set_color(w, Color::Red);
                            self.rotate_right(w);
                            w = right(p).expect("doubly black node has a sibling");
                        }
                        set_color(w, color(p));
                        set_color(p, Color::Black);
                        if let Some(wr) = right(w) {
                            set_color(wr, Color::Black);
                        }
                        self.rotate_left(p);
                        x = self.root;
                        break;
                    }
                } else {
                    let mut w = left(p).expect("doubly black node has a sibling");
                    if color(w) == Color::Red {
                        set_color(w, Color::Black);
                        set_color(p, Color::Red);
                        self.rotate_right(p);
                        w = left(p).expect("doubly black node has a sibling");
                    }
                    if !is_red(right(w)) && !is_red(left(w)) {
                        set_color(w, Color::Red);
                        x = Some(p);
                        x_parent = parent(p);
                    } else {
                        if !is_red(left(w)) {
                            if let Some(wr) = right(w) {
                                set_color(wr, Color::Black);
                            }
                            set_color(w, Color::Red);
                            self.rotate_left(w);
                            w = left(p).expect("doubly black node has a sibling");
                        }
                        set_color(w, color(p));
                        set_color(p, Color::Black);
                        if let Some(wl) = left(w) {
                            set_color(wl, Color::Black);
                        }
                        self.rotate_right(p);
                        x = self.root;
                        break;
                    }
                }
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
                Some(p) if left(p) == Some(old) => set_left(p, new),
                Some(p) => set_right(p, new),
            }
        }
    }

    /// Left rotation at `x`. The rotated pair covers the same set of nodes as
    /// before, so the new top inherits `x`'s old `subtree_last` and only `x`
    /// is recomputed (the kernel's `augment_rotate`).
    unsafe fn rotate_left(&mut self, x: NonNull<N>) {
        // SAFETY: `x` and its right child are in this tree; exclusive access.
        unsafe {
            let y = right(x).expect("rotate_left needs a right child");
            let y_left = left(y);
            set_right(x, y_left);
            if let Some(yl) = y_left {
                set_parent(yl, Some(x));
            }
            let xp = parent(x);
            set_parent(y, xp);
            self.replace_child(xp, x, Some(y));
            set_left(y, Some(x));
            set_parent(x, Some(y));
            set_subtree_last(y, subtree_last(x));
            set_subtree_last(x, compute_subtree_last(x));
        }
    }

    /// Mirror image of [`Self::rotate_left`].
    unsafe fn rotate_right(&mut self, x: NonNull<N>) {
        // SAFETY: `x` and its left child are in this tree; exclusive access.
        unsafe {
            let y = left(x).expect("rotate_right needs a left child");
            let y_right = right(y);
            set_left(x, y_right);
            if let Some(yr) = y_right {
                set_parent(yr, Some(x));
            }
            let xp = parent(x);
            set_parent(y, xp);
            self.replace_child(xp, x, Some(y));
            set_right(y, Some(x));
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
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    struct TestNode {
        start: usize,
        last: usize,
        id: usize,
        links: TreeLinks<TestNode>,
    }

    // SAFETY: `links` is a field of the node; `start`/`last` are never changed.
    unsafe impl IntervalNode for TestNode {
        fn start(&self) -> usize {
            self.start
        }
        fn last(&self) -> usize {
            self.last
        }
        fn tree_links(&self) -> &TreeLinks<Self> {
            &self.links
        }
    }

    /// A tree plus the boxed nodes it links, and the brute-force model: the
    /// list of linked `(start, last, id)`.
    struct Harness {
        tree: IntervalTree<TestNode>,
        nodes: Vec<Option<Box<TestNode>>>,
        linked: Vec<usize>,
    }

    impl Harness {
        fn new() -> Self {
            Self {
                tree: IntervalTree::new(),
                nodes: Vec::new(),
                linked: Vec::new(),
            }
        }

        fn insert(&mut self, start: usize, last: usize) {
            let id = self.nodes.len();
            let node = Box::new(TestNode {
                start,
                last,
                id,
                links: TreeLinks::new(),
            });
            let ptr = NonNull::from(&*node);
            self.nodes.push(Some(node));
            // SAFETY: the box stays in `nodes` until after it is removed.
            unsafe { self.tree.insert(ptr) };
            self.linked.push(id);
        }

        fn remove_at(&mut self, index: usize) {
            let id = self.linked.swap_remove(index);
            let node = self.nodes[id].take().expect("linked node is present");
            // SAFETY: the node is linked into `tree`.
            unsafe { self.tree.remove(NonNull::from(&*node)) };
        }

        fn query(&self, start: usize, last: usize) -> Vec<usize> {
            let mut hits = Vec::new();
            let mut cur = self.tree.iter_first(start, last);
            while let Some(n) = cur {
                // SAFETY: `n` came from this tree, which `self` borrows.
                let node = unsafe { n.as_ref() };
                hits.push(node.id);
                // SAFETY: `n` is in the tree and overlaps the query.
                cur = unsafe { self.tree.iter_next(n, start, last) };
            }
            hits
        }

        fn model_query(&self, start: usize, last: usize) -> Vec<usize> {
            let mut hits: Vec<(usize, usize)> = self
                .linked
                .iter()
                .map(|&id| self.nodes[id].as_ref().expect("linked node is present"))
                .filter(|n| n.start <= last && start <= n.last)
                .map(|n| (n.start, n.id))
                .collect();
            hits.sort_unstable();
            hits.into_iter().map(|(_, id)| id).collect()
        }
    }

    fn random_interval(rng: &mut StdRng, space: usize, max_len: usize) -> (usize, usize) {
        let start = rng.random_range(0..space);
        let len = rng.random_range(0..max_len);
        (start, start.saturating_add(len))
    }

    /// Random inserts, removes and overlap queries, checked against the
    /// brute-force model after every step.
    fn run_seed(seed: u64, steps: usize, space: usize, max_len: usize) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut h = Harness::new();
        for step in 0..steps {
            let op = rng.random_range(0..10);
            if op < 4 || h.linked.is_empty() {
                let (s, l) = random_interval(&mut rng, space, max_len);
                h.insert(s, l);
            } else if op < 7 {
                let i = rng.random_range(0..h.linked.len());
                h.remove_at(i);
            } else {
                let (s, l) = random_interval(&mut rng, space, max_len);
                let mut got = h.query(s, l);
                // Order among equal starts is unspecified: compare as sets,
                // after checking that hits come in non-decreasing start order.
                let starts: Vec<usize> = got
                    .iter()
                    .map(|&id| h.nodes[id].as_ref().expect("hit is linked").start)
                    .collect();
                assert!(
                    starts.windows(2).all(|w| w[0] <= w[1]),
                    "seed {seed} step {step}: hits out of order"
                );
                let mut want = h.model_query(s, l);
                got.sort_unstable();
                want.sort_unstable();
                assert_eq!(got, want, "seed {seed} step {step}: query [{s:#x}, {l:#x}]");
            }
            if let Err(e) = h.tree.check() {
                panic!("seed {seed} step {step}: {e}");
            }
        }
        while !h.linked.is_empty() {
            let i = rng.random_range(0..h.linked.len());
            h.remove_at(i);
            h.tree.check().expect("invariants hold while draining");
        }
        assert_eq!(h.tree.len(), 0);
        assert!(h.tree.iter_first(0, usize::MAX).is_none());
    }

    #[test]
    fn randomized_against_brute_force_many_seeds() {
        for seed in 0..200 {
            // Small spaces force heavy overlap and many equal starts.
            run_seed(seed, 400, 64, 8);
            run_seed(seed + 10_000, 400, 1 << 20, 1 << 16);
        }
    }

    #[test]
    fn large_tree_against_brute_force() {
        run_seed(424242, 20_000, 1 << 30, 1 << 20);
    }

    #[test]
    fn inclusive_last_and_extreme_bounds() {
        let mut h = Harness::new();
        h.insert(0x1000, 0x1fff);
        h.insert(usize::MAX - 1, usize::MAX);
        h.insert(0, 0);
        assert_eq!(h.query(0x1fff, 0x1fff), vec![0]);
        assert!(h.query(0x2000, 0x2fff).is_empty());
        assert!(h.query(0x1, 0xfff).is_empty());
        assert_eq!(h.query(0xfff, 0x1000), vec![0]);
        assert_eq!(h.query(usize::MAX, usize::MAX), vec![1]);
        assert_eq!(h.query(0, usize::MAX), vec![2, 0, 1]);
    }

    #[test]
    fn ascending_and_descending_inserts_stay_balanced() {
        for descending in [false, true] {
            let mut h = Harness::new();
            let n = 1 << 12;
            for i in 0..n {
                let s = if descending { n - i } else { i } * 16;
                h.insert(s, s + 15);
            }
            h.tree.check().expect("balanced");
            // A red-black tree's height is at most 2 log2(n + 1).
            let height = tree_height(h.tree.root);
            assert!(height <= 2 * 13, "height {height} for {n} nodes");
        }
    }

    /// Overlap queries look at O(log n + k) nodes: for trees from 2^8 to 2^18
    /// nodes, no single-hit query looks at more than 4 log2(n) nodes, and the
    /// full walk of a k-hit query at most 4 log2(n) + 3k.
    #[test]
    fn queries_visit_logarithmically_many_nodes() {
        let mut rng = StdRng::seed_from_u64(7);
        for bits in [8u32, 12, 16, 18] {
            let n = 1usize << bits;
            let mut h = Harness::new();
            // Disjoint 16-byte intervals, 32 bytes apart, inserted in random order.
            let mut order: Vec<usize> = (0..n).collect();
            for i in (1..n).rev() {
                order.swap(i, rng.random_range(0..=i));
            }
            for &i in &order {
                h.insert(i * 32, i * 32 + 15);
            }
            let log = u64::from(bits);
            for _ in 0..1000 {
                let i = rng.random_range(0..n);
                let k = rng.random_range(1..=8).min(n - i);
                QUERY_VISITS.with(|v| v.set(0));
                let hits = h.query(i * 32 + 8, (i + k - 1) * 32 + 8);
                let visits = QUERY_VISITS.with(|v| v.get());
                assert_eq!(hits.len(), k);
                let k = k as u64;
                assert!(
                    visits <= 4 * log + 3 * k,
                    "n = 2^{bits}, k = {k}: {visits} visits"
                );
            }
            // Misses (a query in a gap) are bounded the same way.
            QUERY_VISITS.with(|v| v.set(0));
            assert!(h.query(16, 31).is_empty());
            assert!(QUERY_VISITS.with(|v| v.get()) <= 4 * log);
        }
    }

    fn tree_height(n: Link<TestNode>) -> usize {
        match n {
            None => 0,
            // SAFETY: `n` is in a tree the test owns and does not change here.
            Some(n) => unsafe { 1 + tree_height(left(n)).max(tree_height(right(n))) },
        }
    }
}
