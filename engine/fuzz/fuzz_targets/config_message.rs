//! Any bytes as a config message body: the decoder never panics; whatever it accepts is
//! validated from its own table, or refused with errors (never a panic).
//!
//! The check is `shardgate_engine::fuzz_checks::config_message`, which `cargo test --workspace` also runs
//! on every file of `corpus/config_message/`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shardgate_engine::fuzz_checks::config_message(data));
