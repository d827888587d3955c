//! Any bytes as a Gemini event stream (`streamGenerateContent?alt=sse`) through the Gemini
//! stream translator (`provider::gemini::StreamToChat`): never a panic, output independent of
//! the cuts, every `data:` line it writes a JSON object or `[DONE]`.
//!
//! The check is `shardgate_engine::fuzz_checks::gemini_stream`, which `cargo test --workspace`
//! also runs on every file of `corpus/gemini_stream/`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shardgate_engine::fuzz_checks::gemini_stream(data));
