//! `shardgate-tune`: measures a machine and recommends the shard count and core set.
//!
//! # Layout
//! - `main.rs`: the command line. The host checks and the shard-count sweep arrive with issue 8;
//!   for now the binary parses its command line and prints its help.

use clap::Parser;

/// Find the best shard count and core set for this machine, and write `tuning.toml`.
#[derive(Debug, Parser)]
#[command(name = "shardgate-tune", version, arg_required_else_help = true)]
struct Cli {
    /// A short sweep (under two minutes on a 2-core machine).
    #[arg(long)]
    quick: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    anyhow::bail!(
        "shardgate-tune: the sweep is not available yet (quick = {})",
        cli.quick
    )
}
