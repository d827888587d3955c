//! shardgate-bench: the measuring instrument behind every performance claim in
//! `docs/benchmarks.md`.
//!
//! # Layout
//! - [`upstream`]: a mock OpenAI-compatible (and Anthropic `/v1/messages`) upstream,
//!   thread-per-core, with latency, streaming, failure and echo knobs (`shardgate-bench upstream`).
//! - [`load`]: a wrk-style load generator, thread-per-core on monoio, closed-loop or open-loop
//!   (`--rate`, coordinated-omission corrected), with HdrHistogram latencies and an SSE mode
//!   (`shardgate-bench load`).
//! - [`compare`]: runs the upstream, each proxy (shardgate, nginx, HAProxy) pinned to the same
//!   core and the same load against each, and prints one table (`shardgate-bench compare`).

pub mod compare;
pub mod load;
pub mod upstream;
