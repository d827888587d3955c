//! Any bytes as a chunked body, fed in two pieces: the decoder never panics, never reports
//! data outside what it consumed, and never consumes more than it was given.
//!
//! The check is `shardgate_engine::fuzz_checks::chunked`, which `cargo test --workspace` also runs
//! on every file of `corpus/chunked/`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shardgate_engine::fuzz_checks::chunked(data));
