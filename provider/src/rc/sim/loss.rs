//! The cost of loss, measured: the same seeded workloads (every operation
//! in both directions, receives posted up front) over links that drop,
//! duplicate and reorder 0, 1, 3 and 5 % of the packets and corrupt half
//! that, counting what the link carried. A measurement, not a check: it
//! prints a table and asserts only that every run finished correctly.
//!
//! `cargo test -p provider --lib loss_efficiency -- --ignored --nocapture`
//! (`LOSS_SEEDS=<n>` seeds per rate, 400 by default).

use std::time::Duration;

use super::{LinkStats, Workload, run_with_faults};

const RATES: [f64; 4] = [0.0, 0.01, 0.03, 0.05];

/// The totals over `seeds` runs of `workload` at `rate`: what the links
/// carried, and the virtual time the runs took.
fn totals(rate: f64, seeds: u64, workload: Workload) -> (LinkStats, Duration) {
    (0..seeds).fold(
        (LinkStats::default(), Duration::ZERO),
        |(stats, time), seed| match run_with_faults(seed, rate, workload) {
            Ok((s, t)) => (stats.add(&s), time + t),
            Err(e) => panic!("rate {rate}, seed {seed}: {e}"),
        },
    )
}

#[test]
#[ignore = "a measurement: run with --ignored --nocapture"]
fn loss_efficiency() {
    let seeds = std::env::var("LOSS_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    println!("{seeds} seeds per rate and workload");
    println!(
        "| workload | faults | packets offered | offered / clean | data packets needed | retransmitted | retransmitted per delivered | floor | virtual time / clean |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for workload in [Workload::Mixed, Workload::Bulk] {
        let (clean, clean_time) = totals(0.0, seeds, workload);
        for rate in RATES {
            let (s, time) = if rate == 0.0 {
                (clean, clean_time)
            } else {
                totals(rate, seeds, workload)
            };
            // Each transmission is lost with probability `rate` (drop) plus
            // `rate / 2` (corruption): the fewest retransmissions a sender
            // repeating only what was lost would need per packet delivered.
            let lost = 1.5 * rate;
            println!(
                "| {workload:?} | {:.0} % | {} | {:.2} | {} | {} | {:.3} | {:.3} | {:.2} |",
                rate * 100.0,
                s.sent,
                s.sent as f64 / clean.sent as f64,
                s.data_first,
                s.retransmitted(),
                s.retransmitted() as f64 / s.data_first as f64,
                lost / (1.0 - lost),
                time.as_secs_f64() / clean_time.as_secs_f64(),
            );
        }
    }
}
