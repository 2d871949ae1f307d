//! perftest-compatible tools: the connection exchange, flags and reports.

pub mod exchange;
pub mod report;
