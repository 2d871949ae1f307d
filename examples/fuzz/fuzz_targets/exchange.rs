//! The perftest exchange's message decoders (see
//! `examples_fuzz::exchange_check` for the input format).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| examples_fuzz::exchange_check::check(data));
