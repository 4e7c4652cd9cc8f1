//! Fuzz target `stream_message`: the property is [`ipam_bindings::robustness::stream_message`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ipam_bindings::robustness::stream_message(data));
