//! Fuzz target `lookup_batch`: the property is [`ipam_bindings::robustness::lookup_batch`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ipam_bindings::robustness::lookup_batch(data));
