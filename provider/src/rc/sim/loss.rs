//! The cost of loss, measured: the same seeded workloads (every operation
//! in both directions, receives posted up front) over links that drop,
//! duplicate and reorder 0, 1, 3 and 5 % of the packets and corrupt half
//! that, counting what the link carried. A measurement, not a check: it
//! prints a table and asserts only that every run finished correctly.
//!
//! `cargo test -p provider --lib loss_efficiency -- --ignored --nocapture`
//! (`LOSS_SEEDS=<n>` seeds per rate, 400 by default).

use super::{LinkStats, Workload, run_with_faults};

const RATES: [f64; 4] = [0.0, 0.01, 0.03, 0.05];

/// The totals over `seeds` runs of `workload` at `rate`.
fn totals(rate: f64, seeds: u64, workload: Workload) -> LinkStats {
    (0..seeds).fold(LinkStats::default(), |sum, seed| {
        match run_with_faults(seed, rate, workload) {
            Ok(stats) => sum.add(&stats),
            Err(e) => panic!("rate {rate}, seed {seed}: {e}"),
        }
    })
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
        "| workload | faults | packets offered | offered / clean | data packets needed | retransmitted | retransmitted per delivered | floor |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for workload in [Workload::Mixed, Workload::Bulk] {
        let clean = totals(0.0, seeds, workload);
        for rate in RATES {
            let s = if rate == 0.0 {
                clean
            } else {
                totals(rate, seeds, workload)
            };
            // Each transmission is lost with probability `rate` (drop) plus
            // `rate / 2` (corruption): the fewest retransmissions a sender
            // repeating only what was lost would need per packet delivered.
            let lost = 1.5 * rate;
            println!(
                "| {workload:?} | {:.0} % | {} | {:.2} | {} | {} | {:.3} | {:.3} |",
                rate * 100.0,
                s.sent,
                s.sent as f64 / clean.sent as f64,
                s.data_first,
                s.retransmitted(),
                s.retransmitted() as f64 / s.data_first as f64,
                lost / (1.0 - lost),
            );
        }
    }
}
