//! perftest's result tables, computed and printed as perftest 4.5 does
//! (`print_report_bw`, `print_report_lat` and the `RESULT_FMT*` /
//! `REPORT_FMT*` formats of perftest v4.5-0.17 `src/perftest_parameters.[ch]`),
//! from timestamps in nanoseconds instead of CPU cycles.

/// The line above and below a table (87 dashes).
pub const RESULT_LINE: &str =
    "---------------------------------------------------------------------------------------";

/// Bandwidth units.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Units {
    /// 2^20 bytes per second, printed "MB/sec" as perftest 4.5 does.
    #[default]
    MegaBytes,
    /// 10^9 bits per second (`--report_gbits`).
    GigaBits,
}

impl Units {
    /// Bytes per second in one unit (perftest's `format_factor`).
    fn factor(self) -> f64 {
        match self {
            Units::MegaBytes => 1_048_576.0,
            Units::GigaBits => 125_000_000.0,
        }
    }
}

/// The header of a bandwidth table.
pub fn bw_header(units: Units) -> &'static str {
    match units {
        Units::MegaBytes => {
            " #bytes     #iterations    BW peak[MB/sec]    BW average[MB/sec]   MsgRate[Mpps]"
        }
        Units::GigaBits => {
            " #bytes     #iterations    BW peak[Gb/sec]    BW average[Gb/sec]   MsgRate[Mpps]"
        }
    }
}

/// The header of a latency table.
pub const LAT_HEADER: &str = " #bytes #iterations    t_min[usec]    t_max[usec]  t_typical[usec]    \
     t_avg[usec]    t_stdev[usec]   99% percentile[usec]   99.9% percentile[usec] ";

/// The header of a latency table in duration mode (`-D`).
pub const LAT_DURATION_HEADER: &str = " #bytes        #iterations       t_avg[usec]    tps average";

/// A latency row in duration mode (perftest's `REPORT_FMT_LAT_DUR`):
/// `iters` round trips in `elapsed`; SEND and WRITE report half of each.
pub fn lat_duration_row(
    size: u64,
    iters: u64,
    elapsed: std::time::Duration,
    tool: super::Tool,
) -> String {
    let iters_f = iters.max(1) as f64;
    let factor = if matches!(tool, super::Tool::WriteLat | super::Tool::SendLat) {
        2.0
    } else {
        1.0
    };
    let t_avg = elapsed.as_secs_f64() * 1e6 / iters_f / factor;
    let tps = iters_f / elapsed.as_secs_f64().max(1e-9);
    format!(
        " {:<7}       {}            {}        {}",
        size,
        iters,
        left(t_avg, 7, 2),
        left(tps, 7, 2)
    )
}

/// One bandwidth result.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BwReport {
    /// Message size.
    pub size: u64,
    /// Messages.
    pub iters: u64,
    /// Best bandwidth over any window of completions, in `units`.
    pub peak: f64,
    /// Average bandwidth, in `units`.
    pub average: f64,
    /// Messages per second, in millions.
    pub msg_rate: f64,
}

/// Computes a bandwidth result from when each message was posted and
/// completed (nanoseconds from any origin). With `peak_every`, completions
/// were reaped every that many messages (perftest's `-Q`), which bounds the
/// windows the peak is taken over, as in perftest (see [`super::peak`]);
/// without it the peak is not computed and reported as 0 (perftest's
/// duration mode).
///
/// # Panics
/// If the two slices differ in length or are empty.
pub fn bw(
    size: u64,
    posted: &[u64],
    completed: &[u64],
    peak_every: Option<usize>,
    units: Units,
) -> BwReport {
    assert!(!posted.is_empty() && posted.len() == completed.len());
    let n = posted.len();
    let peak = peak_every.map_or(0.0, |cq_mod| {
        let best = super::peak::best_ns_per_message(posted, completed, cq_mod);
        size as f64 / (best.max(1.0) / 1e9) / units.factor()
    });
    let total = completed[n - 1].saturating_sub(posted[0]).max(1) as f64 / 1e9;
    let per_second = |x: f64| x / total;
    BwReport {
        size,
        iters: n as u64,
        peak,
        average: per_second((size * n as u64) as f64) / units.factor(),
        msg_rate: per_second(n as f64) / 1e6,
    }
}

/// C's `%-W.Pf`: left-justified in `width`, `precision` decimals.
fn left(x: f64, width: usize, precision: usize) -> String {
    format!("{x:<width$.precision$}")
}

impl BwReport {
    /// The table row (perftest's `REPORT_FMT`).
    pub fn row(&self) -> String {
        format!(
            " {:<7}    {:<10}       {}            {}\t\t   {}",
            self.size,
            self.iters,
            left(self.peak, 7, 2),
            left(self.average, 7, 2),
            left(self.msg_rate, 7, 6)
        )
    }
}

/// One latency result, in microseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LatReport {
    /// Message size.
    pub size: u64,
    /// Iterations.
    pub iters: u64,
    /// Smallest sample.
    pub min: f64,
    /// Second-largest sample (perftest drops the largest two).
    pub max: f64,
    /// Median.
    pub typical: f64,
    /// Mean.
    pub average: f64,
    /// Standard deviation, with perftest's integer truncation.
    pub stdev: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p99_9: f64,
}

/// Computes a latency result from the post times of a ping-pong (each
/// sample is the time between two posts: one round trip) or, with
/// `one_way`, halves them as perftest does for SEND and WRITE
/// (`rtt_factor` 2; READ and atomics report the full round trip).
/// Returns `None` with fewer than 4 posts (perftest drops 2 samples).
pub fn lat(size: u64, posted: &[u64], one_way: bool) -> Option<LatReport> {
    if posted.len() < 4 {
        return None;
    }
    let factor = if one_way { 2.0 } else { 1.0 };
    let mut delta: Vec<u64> = posted.windows(2).map(|w| w[1] - w[0]).collect();
    delta.sort_unstable();
    let n = delta.len() - 2;
    let us = |x: u64| x as f64 / 1000.0 / factor;
    let median = if (n - 1) % 2 == 1 {
        (delta[n / 2] + delta[n / 2 - 1]) / 2
    } else {
        delta[n / 2]
    };
    let average = delta[..n].iter().map(|&d| us(d)).sum::<f64>() / n as f64;
    // perftest truncates each deviation and its square to int.
    let stdev_sum: f64 = delta[..n]
        .iter()
        .map(|&d| {
            let dev = (average - us(d)) as i32;
            f64::from(dev.saturating_mul(dev))
        })
        .sum();
    let at = |q: f64| delta[((n as f64 * q).ceil() as usize).min(delta.len() - 1)];
    Some(LatReport {
        size,
        iters: posted.len() as u64,
        min: us(delta[0]),
        max: us(delta[n]),
        typical: us(median),
        average,
        stdev: (stdev_sum / n as f64).sqrt(),
        p99: us(at(0.99)),
        p99_9: us(at(0.999)),
    })
}

impl LatReport {
    /// The table row (perftest's `REPORT_FMT_LAT`).
    pub fn row(&self) -> String {
        format!(
            " {:<7} {}          {}        {}      {}  \t       {}     \t{}\t\t{} \t\t{}",
            self.size,
            self.iters,
            left(self.min, 7, 2),
            left(self.max, 7, 2),
            left(self.typical, 7, 2),
            left(self.average, 7, 2),
            left(self.stdev, 7, 2),
            left(self.p99, 7, 2),
            left(self.p99_9, 7, 2),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_match_perftests_printf_formats() {
        let r = BwReport {
            size: 65536,
            iters: 5000,
            peak: 2740.15,
            average: 2739.76,
            msg_rate: 0.043836,
        };
        // printf(" %-7lu    %-10lu       %-7.2lf            %-7.2lf\t\t   %-7.6lf", ...)
        assert_eq!(
            r.row(),
            " 65536      5000             2740.15            2739.76\t\t   0.043836"
        );
        let l = LatReport {
            size: 2,
            iters: 1000,
            min: 3.5,
            max: 12.25,
            typical: 4.0,
            average: 4.1,
            stdev: 0.5,
            p99: 7.0,
            p99_9: 12.0,
        };
        assert_eq!(
            l.row(),
            " 2       1000          3.50           12.25        4.00     \t       4.10        \t0.50   \t\t7.00    \t\t12.00  "
        );
        assert_eq!(RESULT_LINE.len(), 87);
    }

    #[test]
    fn bandwidth_average_rate_and_peak() {
        // 4 messages of 1 MiB: posted at 0, completed 1 ms apart.
        let posted = [0, 0, 0, 0];
        let completed = [1_000_000, 2_000_000, 3_000_000, 4_000_000];
        let r = bw(1 << 20, &posted, &completed, Some(1), Units::MegaBytes);
        assert_eq!(r.iters, 4);
        assert!((r.average - 1000.0).abs() < 1e-9, "{r:?}");
        assert!((r.msg_rate - 0.001).abs() < 1e-12);
        // Best window: every window ends 1 ms per message later: 1000 MB/s.
        assert!((r.peak - 1000.0).abs() < 1e-9, "{r:?}");
        let g = bw(1 << 20, &posted, &completed, Some(1), Units::GigaBits);
        assert_eq!(
            bw(1 << 20, &posted, &completed, None, Units::MegaBytes).peak,
            0.0
        );
        assert!((g.average - 8.388608).abs() < 1e-9, "{g:?}");
    }

    #[test]
    fn latency_drops_the_two_largest_and_halves_for_one_way() {
        // Posts 10 us apart, with two outliers.
        let mut posted = vec![0u64];
        for gap in [10_000, 10_000, 10_000, 12_000, 500_000, 900_000, 10_000] {
            posted.push(posted.last().unwrap() + gap);
        }
        let r = lat(2, &posted, false).unwrap();
        // Sorted: 10,10,10,10,12,500,900 us; kept: 10,10,10,10,12.
        assert_eq!((r.min, r.max, r.typical), (10.0, 500.0, 10.0));
        assert!((r.average - 10.4).abs() < 1e-9);
        let half = lat(2, &posted, true).unwrap();
        assert_eq!((half.min, half.typical), (5.0, 5.0));
        assert!(lat(2, &posted[..3], false).is_none());
    }
}
