//! Fuzz target `fields`: the property is [`ipam_bindings::robustness::request_fields`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ipam_bindings::robustness::request_fields(data));
