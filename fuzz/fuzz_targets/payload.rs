//! Fuzz target `payload`: the check lives in tests/fuzzcheck (shared with the
//! corpus replay of `cargo test`).
#![no_main]

#[path = "../../tests/fuzzcheck/mod.rs"]
mod fuzzcheck;

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzzcheck::run("payload", data));
