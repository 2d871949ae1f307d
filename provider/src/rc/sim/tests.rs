//! The seeded runs: many seeds in the default suite, more with
//! `SIM_SEEDS=<n>`, one with `SIM_SEED=<n>` (verbose).

use super::run_seed;

fn env(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
fn every_operation_is_exact_over_a_faulty_link_for_every_seed() {
    if let Some(seed) = env("SIM_SEED") {
        match run_seed(seed) {
            Ok(summary) => println!("seed {seed}: {summary}"),
            Err(e) => panic!("seed {seed}: {e}"),
        }
        return;
    }
    let seeds = env("SIM_SEEDS").unwrap_or(2000);
    let failures: Vec<String> = (0..seeds)
        .filter_map(|seed| match std::panic::catch_unwind(|| run_seed(seed)) {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(format!("seed {seed}: {e}")),
            Err(_) => Some(format!("seed {seed}: panicked")),
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {seeds} seeds failed (replay one with SIM_SEED=<n>):\n{}",
        failures.len(),
        failures.join("\n")
    );
}
