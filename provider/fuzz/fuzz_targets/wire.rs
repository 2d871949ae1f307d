//! The wire parser: view and repr agree, and what parses re-emits exactly
//! (see `provider_fuzz::wire_check`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| provider_fuzz::wire_check::check(data));
