//! The device's receive path fed datagrams in-process (see
//! `provider_fuzz::device_harness` for the input format).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| provider_fuzz::device_harness::run(data));
