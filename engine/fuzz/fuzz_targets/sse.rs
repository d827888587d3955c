//! Any bytes as an upstream event stream, whole and cut in three, through every SSE parser (the
//! usage scanner, the SSE filter, the translators' event reader, `StreamToChat`,
//! `StreamToMessages`): never a panic, output independent of the cuts, every `data:` line the
//! translators write (but `[DONE]`) a JSON object, and each translator's output read back by
//! the other.
//!
//! The check is `shardgate_engine::fuzz_checks::sse`, which `cargo test --workspace` also runs
//! on every file of `corpus/sse/`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shardgate_engine::fuzz_checks::sse(data));
