//! The fuzz targets' checks (examples/fuzz/src), run under `cargo test` on
//! every input the fuzzers found failing (examples/fuzz/regressions) and
//! on the committed seed corpora (examples/fuzz/corpus), so a fixed crash
//! stays fixed without the nightly toolchain.

#[path = "../fuzz/src/capture_check.rs"]
mod capture_check;
#[path = "../fuzz/src/exchange_check.rs"]
mod exchange_check;
#[path = "../../tests/fuzz/replay.rs"]
mod replay;

use replay::replay;

#[test]
fn capture_crashes_found_by_fuzzing_stay_fixed() {
    replay("regressions/capture", capture_check::check);
}

#[test]
fn capture_seed_corpus_passes() {
    replay("corpus/capture", capture_check::check);
}

#[test]
fn exchange_seed_corpus_passes() {
    replay("corpus/exchange", exchange_check::check);
}
