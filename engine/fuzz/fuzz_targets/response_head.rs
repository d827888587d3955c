//! Any bytes as an upstream response head: parse, choose framing, write the client head.
//!
//! The check is `shardgate_engine::fuzz_checks::response_head`, which `cargo test --workspace` also runs
//! on every file of `corpus/response_head/`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shardgate_engine::fuzz_checks::response_head(data));
