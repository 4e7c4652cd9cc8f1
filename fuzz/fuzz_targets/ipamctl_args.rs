//! Fuzz target `ipamctl_args`: ipamctl's command line (its whole argument definition, compiled
//! from `src/bin/ipamctl/cli.rs`); the property is `cli::check_arguments` there.
#![no_main]

#[allow(dead_code)]
#[path = "../../src/bin/ipamctl/cli.rs"]
mod cli;

libfuzzer_sys::fuzz_target!(|data: &[u8]| cli::check_arguments(data));
