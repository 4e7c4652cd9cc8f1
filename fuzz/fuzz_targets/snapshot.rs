//! Fuzz target `snapshot`: the property is [`ipam_bindings::robustness::snapshot`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ipam_bindings::robustness::snapshot(data));
