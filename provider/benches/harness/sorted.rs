//! Order statistics of a benchmark's samples, sorted once.

/// Samples in ascending order (NaN last, by `f64::total_cmp`).
pub struct Sorted(Vec<f64>);

impl Sorted {
    /// Sorts `samples`; there must be at least one.
    pub fn new(mut samples: Vec<f64>) -> Self {
        assert!(!samples.is_empty(), "no samples");
        samples.sort_by(f64::total_cmp);
        Self(samples)
    }

    /// The sample at `fraction` of the way from the smallest (0.0) to the
    /// largest (1.0), rounding down: perftest's percentiles.
    pub fn at(&self, fraction: f64) -> f64 {
        self.0[((self.0.len() - 1) as f64 * fraction) as usize]
    }

    /// The upper median (the middle sample of an odd count).
    pub fn median(&self) -> f64 {
        self.0[self.0.len() / 2]
    }

    /// The first and third quartiles.
    pub fn quartiles(&self) -> (f64, f64) {
        let n = self.0.len();
        (self.0[n / 4], self.0[3 * n / 4])
    }

    /// The 95 % confidence interval of the median: the order statistics
    /// `n/2 -+ 0.98 sqrt(n)` (the normal approximation to the binomial
    /// count of samples below the median; independent of the samples'
    /// distribution).
    pub fn median_interval(&self) -> (f64, f64) {
        let n = self.0.len() as f64;
        let reach = 0.98 * n.sqrt();
        let low = (n / 2.0 - reach).floor().max(0.0) as usize;
        let high = ((n / 2.0 + reach).ceil() as usize).min(self.0.len() - 1);
        (self.0[low], self.0[high])
    }
}
