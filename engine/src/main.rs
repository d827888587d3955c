//! The `shardgate` binary: mimalloc as the global allocator (run again with its options set
//! where the environment does not: [`shardgate_engine::launch::ALLOCATOR_ENV`]), then the engine's
//! [`shardgate_engine::launch::main`] (command line, config, shards, drain).

use std::process::ExitCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    shardgate_engine::launch::exec_with_env(&shardgate_engine::launch::ALLOCATOR_ENV);
    shardgate_engine::launch::main(None)
}
