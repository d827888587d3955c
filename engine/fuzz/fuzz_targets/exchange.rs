//! Any bytes as the world around one request's attempt loop: the groups' health, quotas,
//! hedges and how each attempt ends. Every reservation is settled exactly once, every upstream
//! slot released, and retries stay within the group's budget.
//!
//! The check is `shardgate_engine::fuzz_checks::exchange`, which `cargo test --workspace` also
//! runs on every file of `corpus/exchange/`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shardgate_engine::fuzz_checks::exchange(data));
