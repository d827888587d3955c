//! Any bytes as a request body filled by a fixed template (both modes): `fill`,
//! `strip_variables` and `selector` never panic; an `Ok` fill is valid JSON to our validator,
//! and to serde_json whenever the input was; an error leaves `out` alone.
//!
//! The check is `shardgate_engine::fuzz_checks::template`, which `cargo test --workspace` also runs
//! on every file of `corpus/template/`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shardgate_engine::fuzz_checks::template(data));
