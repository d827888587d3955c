//! Any bytes as a request head: parse, and when it parses, write the forwarded head.
//!
//! The check is `shardgate_engine::fuzz_checks::request_head`, which `cargo test --workspace` also runs
//! on every file of `corpus/request_head/`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shardgate_engine::fuzz_checks::request_head(data));
