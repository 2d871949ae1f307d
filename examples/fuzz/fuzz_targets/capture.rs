//! roce-dump on arbitrary capture bytes (see `examples_fuzz::capture_check`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| examples_fuzz::capture_check::check(data));
