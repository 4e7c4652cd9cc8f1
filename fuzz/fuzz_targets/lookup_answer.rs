//! Fuzz target `lookup_answer`: the property is [`ipam_bindings::robustness::lookup_answer`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ipam_bindings::robustness::lookup_answer(data));
