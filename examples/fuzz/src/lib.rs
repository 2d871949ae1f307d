//! The checks behind the tools' fuzz targets, shared with the regression
//! tests that replay saved inputs under `cargo test`.

pub mod capture_check;
pub mod exchange_check;
