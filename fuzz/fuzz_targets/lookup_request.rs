//! Fuzz target `lookup_request`: the property is [`ipam_bindings::robustness::lookup_request`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ipam_bindings::robustness::lookup_request(data));
