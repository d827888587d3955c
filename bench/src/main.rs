//! `shardgate-bench`: see the library's `# Layout` for what each command does.

use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Load generator, mock LLM upstream and side-by-side proxy comparison for shardgate.
#[derive(Debug, Parser)]
#[command(name = "shardgate-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate HTTP load against a URL (wrk-style; closed-loop, or open-loop with --rate).
    Load(shardgate_bench::load::LoadArgs),
    /// Run a mock OpenAI-compatible upstream.
    Upstream(shardgate_bench::upstream::UpstreamArgs),
    /// Compare shardgate with nginx and HAProxy side by side and print one table.
    Compare(shardgate_bench::compare::CompareArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Load(args) => shardgate_bench::load::run(args),
        Command::Upstream(args) => shardgate_bench::upstream::run(args),
        Command::Compare(args) => shardgate_bench::compare::run(args),
    }
}
