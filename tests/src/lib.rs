//! The workspace's test machinery that belongs to no single crate:
//!
//! - the rxe lab ([`lab`], the `rxe-lab` and `lab-datacheck` binaries, and
//!   the scripts in `tests/lab/`): the project's tools against real
//!   perftest on a real kernel rxe in a qemu guest, run by
//!   `bash tests/lab/lab.sh` as root;
//! - the fuzz runner (`tests/fuzz/run.sh`) and the replay of fuzz inputs
//!   (`tests/fuzz/replay.rs`), which the `fuzz_regressions` tests of
//!   `provider` and `examples` include.
//!
//! Tests that exercise several crates live in the crate highest in the
//! dependency order they use (`provider/tests/` for the provider with
//! `odp`, `examples/tests/` for the tools): each crate's `cargo test` then
//! covers what it builds on. README.md's Testing section gives the
//! convention for test files.

pub mod lab;
