//! Fuzz target `record`: the property is [`ipam_bindings::robustness::record`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ipam_bindings::robustness::record(data));
