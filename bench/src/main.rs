//! `shardgate-bench`: a wrk-style load generator and a mock LLM upstream.
//!
//! # Layout
//! - `main.rs`: the command line. The load generator, the mock upstream and the side-by-side
//!   comparison arrive with issue 3; until then `bench/scripts/` holds the wrk-based scripts
//!   that produced the figures in `docs/benchmarks.md`.

use clap::Parser;

/// Load generator and mock upstream for benchmarking shardgate against its peers.
#[derive(Debug, Parser)]
#[command(name = "shardgate-bench", version, arg_required_else_help = true)]
struct Cli {
    /// Target URL of a load run.
    url: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    anyhow::bail!(
        "shardgate-bench: nothing to run for {:?} yet (see --help)",
        cli.url
    )
}
