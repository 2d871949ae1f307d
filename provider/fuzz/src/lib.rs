//! The checks behind the provider's fuzz targets, shared with the
//! regression tests that replay saved inputs under `cargo test`.

pub mod device_harness;
pub mod wire_check;
