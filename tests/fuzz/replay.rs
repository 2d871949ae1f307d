//! Replaying fuzz inputs under `cargo test`, shared by the regression
//! tests of the crates that have fuzz targets (`provider`, `examples`):
//! included with `#[path]`, so `CARGO_MANIFEST_DIR` is the including
//! crate's.

use std::path::{Path, PathBuf};

/// Every file in `<crate>/fuzz/<dir>`, sorted by name.
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
pub fn replay(dir: &str, check: fn(&[u8])) {
    let inputs = inputs(dir);
    assert!(!inputs.is_empty(), "no inputs in {dir}");
    for (path, bytes) in inputs {
        eprintln!("{}", path.display());
        check(&bytes);
    }
}
