//! The fuzz targets' checks (examples/fuzz/src), run under `cargo test` on
//! every input the fuzzers found failing (examples/fuzz/regressions) and
//! on the committed seed corpora (examples/fuzz/corpus), so a fixed crash
//! stays fixed without the nightly toolchain.

use std::path::{Path, PathBuf};

#[path = "../fuzz/src/capture_check.rs"]
mod capture_check;
#[path = "../fuzz/src/exchange_check.rs"]
mod exchange_check;

/// Every file in `examples/fuzz/<dir>`, sorted by name.
fn inputs(dir: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

/// Runs `check` on every input of `dir`, naming each before it runs (a
/// panic then points at its file).
fn replay(dir: &str, check: fn(&[u8])) {
    let inputs = inputs(dir);
    assert!(!inputs.is_empty(), "no inputs in {dir}");
    for (path, bytes) in inputs {
        eprintln!("{}", path.display());
        check(&bytes);
    }
}

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
