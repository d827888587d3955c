//! Any bytes as an LLM request body and as a response body: `inspect` and `with_include_usage`
//! never panic and a rewrite reads back with `include_usage`; the usage scanner and the SSE
//! filter give the same answer and output when the bytes arrive in two pieces as in one.
//!
//! The check is `shardgate_engine::fuzz_checks::llm`, which `cargo test --workspace` also runs
//! on every file of `corpus/llm/`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shardgate_engine::fuzz_checks::llm(data));
