//! `shardgate-bench load` (being written).

/// Command-line arguments of `shardgate-bench load`.
#[derive(Debug, clap::Args)]
pub struct LoadArgs {}

/// Run `shardgate-bench load`.
pub fn run(_args: LoadArgs) -> anyhow::Result<()> {
    anyhow::bail!("shardgate-bench load is not written yet")
}
