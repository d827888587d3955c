//! Any bytes as a Bedrock ConverseStream body (AWS's binary event stream), and as lines
//! `NAME JSON` framed into one, through `bedrock::StreamToChat`: never a panic, output
//! independent of the cuts, every `data:` line a JSON object or `[DONE]`, once and last.
//!
//! The check is `shardgate_engine::fuzz_checks::bedrock_stream`, which `cargo test --workspace`
//! also runs on every file of `corpus/bedrock_stream/`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shardgate_engine::fuzz_checks::bedrock_stream(data));
