//! Any UTF-8 text as a config file: `Config::from_toml_without_secrets` never panics, and a
//! config it validates round-trips through the config message (`encode`, `decode`,
//! `Config::from_message`) into the same config.
//!
//! The check is `shardgate_engine::fuzz_checks::config_toml`, which `cargo test --workspace` also runs
//! on every file of `corpus/config_toml/`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shardgate_engine::fuzz_checks::config_toml(data));
