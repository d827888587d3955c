//! Any bytes as the words of a config ring (a scribbled-on or truncated shared region): a
//! reader never panics, terminates, and never delivers (or allocates for) a message larger than
//! the ring allows.
//!
//! The check is `shardgate_engine::fuzz_checks::ring_frames`, which `cargo test --workspace` also runs
//! on every file of `corpus/ring_frames/`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shardgate_engine::fuzz_checks::ring_frames(data));
