//! `shardgate-ctl`: the control plane. It validates config and pushes it to a running engine's
//! shards over shared memory, and reads their counters back for status and stats.
//!
//! # Layout
//! - `main.rs`: the command line. The commands arrive with the control-plane work (issue 4);
//!   for now the binary parses its command line and prints its help.

use clap::Parser;

/// Control a running shardgate instance: check and apply config, show status and live stats.
#[derive(Debug, Parser)]
#[command(name = "shardgate-ctl", version, arg_required_else_help = true)]
struct Cli {
    /// The engine instance to talk to (`[server] instance`).
    #[arg(long, default_value = "default")]
    instance: String,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    anyhow::bail!(
        "shardgate-ctl: no command for instance {:?} yet (see --help)",
        cli.instance
    )
}
