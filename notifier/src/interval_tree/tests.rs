//! The interval tree against a brute-force model.
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
