//! Any bytes as a Responses API event stream, whole and cut in three, through the Responses
//! translator (`provider::responses::StreamToChat`): never a panic, output and usage
//! independent of the cuts, every `data:` line it writes a JSON object but the one `[DONE]`,
//! last; the SSE filter removes exactly its usage chunk and the usage scanner reads the usage
//! it reported.
//!
//! The check is `shardgate_engine::fuzz_checks::responses_stream`, which `cargo test
//! --workspace` also runs on every file of `corpus/responses_stream/`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shardgate_engine::fuzz_checks::responses_stream(data));
