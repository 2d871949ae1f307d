//! perftest's peak bandwidth: the fewest nanoseconds per message over any
//! window of messages `i..=j`, from the posting of `i` to the completion
//! of `j`, where `j` is a message whose completion was reaped (every
//! `cq_mod`th, and the last).
//!
//! perftest tries every pair, which is quadratic: a run of ten million
//! messages never finished its report. Here, for each reaped `j`, the best
//! `i` is found on the upper convex hull of the points `(i - 1, posted[i])`:
//! the time per message of a window is the slope from `(i - 1, posted[i])`
//! to `(j, completed[j])`, and the smallest slope from a point to points
//! on its left is its tangent to their upper hull. The hull grows by one
//! point per message and the tangent is found by bisection: O(n log n),
//! with the same result as perftest's search.

/// Nanoseconds per message of the best window (see the module docs), at
/// least 0; the one-message window `0..=0` counts whatever `cq_mod` says,
/// as in perftest.
///
/// # Panics
/// If the slices differ in length or are empty.
pub fn best_ns_per_message(posted: &[u64], completed: &[u64], cq_mod: usize) -> f64 {
    assert!(!posted.is_empty() && posted.len() == completed.len());
    let n = posted.len();
    let cq_mod = cq_mod.max(1);
    let mut best = window(posted, completed, 0, 0);
    let mut hull = UpperHull::default();
    for j in 0..n {
        hull.push(Point::new(j as i128 - 1, posted[j]));
        let reaped = j % cq_mod == cq_mod - 1 || j == n - 1;
        if reaped {
            let i = hull.tangent_from(Point::new(j as i128, completed[j]));
            best = best.min(window(posted, completed, i, j));
        }
    }
    best.max(0.0)
}

/// Nanoseconds per message from posting `i` to completing `j`, as
/// perftest computes them (a completion before the posting counts 0).
fn window(posted: &[u64], completed: &[u64], i: usize, j: usize) -> f64 {
    completed[j].saturating_sub(posted[i]) as f64 / (j - i + 1) as f64
}

/// A point with exact coordinates (nanoseconds fit an i128 product).
#[derive(Clone, Copy)]
struct Point {
    x: i128,
    y: i128,
}

impl Point {
    fn new(x: i128, y: u64) -> Self {
        Self {
            x,
            y: i128::from(y),
        }
    }
}

/// Whether `b` lies on or below the line from `a` to `c` (`a.x < b.x <
/// c.x`): the turn `a, b, c` is not clockwise.
fn on_or_below(a: Point, b: Point, c: Point) -> bool {
    (b.x - a.x) * (c.y - a.y) >= (b.y - a.y) * (c.x - a.x)
}

/// The upper convex hull of points added in increasing `x`, each with the
/// message index it stands for (`x + 1`).
#[derive(Default)]
struct UpperHull {
    points: Vec<Point>,
}

impl UpperHull {
    fn push(&mut self, p: Point) {
        while let [.., a, b] = self.points[..] {
            if on_or_below(a, b, p) {
                self.points.pop();
            } else {
                break;
            }
        }
        self.points.push(p);
    }

    /// The message index of the hull point with the smallest slope to `q`,
    /// a point right of every hull point. Along an upper hull, that slope
    /// falls while the next edge is steeper than the line to `q`, then
    /// rises: the first vertex whose next edge is not steeper is the one.
    fn tangent_from(&self, q: Point) -> usize {
        let p = &self.points;
        // Edge k (from p[k] to p[k + 1]) not steeper than the line p[k]-q.
        let flattens = |k: usize| {
            let (a, b) = (p[k], p[k + 1]);
            (b.y - a.y) * (q.x - a.x) <= (q.y - a.y) * (b.x - a.x)
        };
        let (mut lo, mut hi) = (0, p.len() - 1);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if flattens(mid) {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        (p[lo].x + 1) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// perftest's search over every pair.
    fn every_pair(posted: &[u64], completed: &[u64], cq_mod: usize) -> f64 {
        let n = posted.len();
        let mut best = window(posted, completed, 0, 0);
        for i in 0..n {
            let mut j = (i + 1).div_ceil(cq_mod) * cq_mod - 1;
            while j < n {
                best = best.min(window(posted, completed, i, j));
                j += cq_mod;
            }
            if !n.is_multiple_of(cq_mod) {
                best = best.min(window(posted, completed, i, n - 1));
            }
        }
        best.max(0.0)
    }

    /// Times from a seeded generator: posts in bursts and completions that
    /// lag by varying amounts, or (`wild`) any values at all, completions
    /// before postings included.
    fn times(seed: u64, n: usize, wild: bool) -> (Vec<u64>, Vec<u64>) {
        let mut s = seed | 1;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        if wild {
            let posted = (0..n).map(|_| next() % 1000).collect();
            let completed = (0..n).map(|_| next() % 1000).collect();
            return (posted, completed);
        }
        let (mut t, mut posted, mut completed) = (0u64, Vec::new(), Vec::new());
        for _ in 0..n {
            t += if next() % 8 == 0 {
                next() % 5000
            } else {
                next() % 50
            };
            posted.push(t);
        }
        let mut done = 0u64;
        for &p in &posted {
            done = done.max(p + 100 + next() % 3000);
            completed.push(done);
        }
        (posted, completed)
    }

    #[test]
    fn the_hull_finds_what_every_pair_finds() {
        for seed in 0..300u64 {
            let n = 1 + (seed as usize * 37) % 400;
            for wild in [false, true] {
                let (posted, completed) = times(seed, n, wild);
                for cq_mod in [1, 2, 7, 100] {
                    assert_eq!(
                        best_ns_per_message(&posted, &completed, cq_mod),
                        every_pair(&posted, &completed, cq_mod),
                        "seed {seed}, n {n}, wild {wild}, cq_mod {cq_mod}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_long_run_is_searched_whole() {
        // Two million messages: every pair would be 4e10 windows.
        let n = 2_000_000;
        let posted: Vec<u64> = (0..n).map(|i| i * 10).collect();
        let completed: Vec<u64> = posted.iter().map(|p| p + 1000).collect();
        // A window of L messages takes 10 (L - 1) + 1000 ns: the longest
        // (first posting to last completion) is the best.
        let best = best_ns_per_message(&posted, &completed, 100);
        assert_eq!(best, (10 * (n - 1) + 1000) as f64 / n as f64);
    }
}
