//! The `shardgate-counted` binary: the engine of `shardgate` with every heap allocation counted,
//! for tests and benchmarks of memory, never for deployment.
//!
//! Its global allocator is the system allocator wrapped by `stats_alloc` (which holds the
//! `unsafe` of implementing `GlobalAlloc`; two atomic adds per call). The counts are shown on
//! the admin listener's `/metrics` as `shardgate_heap_live_bytes`,
//! `shardgate_heap_allocations_total` and `shardgate_heap_reallocations_total`, and printed at
//! exit as the `count-alloc:` line. Read by `tests/tests/stream_memory.rs` (bytes held per open
//! stream) and `bench/scripts/alloc-per-request.sh` (allocations per request).

use std::process::ExitCode;

use shardgate_engine::metrics::HeapCounts;

#[global_allocator]
static GLOBAL: stats_alloc::StatsAlloc<std::alloc::System> = stats_alloc::StatsAlloc::system();

/// The counter's totals since the process started (bytes moved by reallocations are in the
/// allocated and deallocated bytes: `stats_alloc` adds a growth to one, a shrink to the other).
fn probe() -> HeapCounts {
    let s = GLOBAL.stats();
    HeapCounts {
        allocations: s.allocations as u64,
        deallocations: s.deallocations as u64,
        reallocations: s.reallocations as u64,
        bytes_allocated: s.bytes_allocated as u64,
        bytes_deallocated: s.bytes_deallocated as u64,
    }
}

fn main() -> ExitCode {
    shardgate_engine::launch::main(Some(probe))
}
