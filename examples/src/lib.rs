//! Tools built on the provider: perftest-style benchmarks (`write_bw`,
//! `read_bw`, `send_bw`, latency tools) and capture tools. They arrive with
//! the soft-RoCE device; until then this crate holds no code.
