//! Tools built on the provider: perftest-style benchmarks (`write_bw`,
//! `read_bw`, `send_bw`, latency tools) and `roce-dump`, which decodes and
//! verifies RoCEv2 captures.

pub mod dump;
pub mod perftest;
