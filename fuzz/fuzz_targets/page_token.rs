//! Fuzz target `page_token`: the property is [`ipam_bindings::robustness::page_token`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ipam_bindings::robustness::page_token(data));
