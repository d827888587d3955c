//! The `shardgate` binary: mimalloc as the global allocator, then the engine's
//! [`shardgate_engine::launch::main`] (command line, config, shards, drain).

use std::process::ExitCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    shardgate_engine::launch::main(None)
}
